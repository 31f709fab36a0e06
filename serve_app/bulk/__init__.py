"""Classify a table of texts offline on Ray Data, with the same `Engine` as the service.

`classify_dataset` adds scoring to any `ray.data.Dataset`; `zsc bulk` (serve_app/cli/bulk.py)
reads files, runs it, and writes resumable output parts. Needs the server install plus
pyarrow (`pip install 'zsc[serve]'`).
"""

from serve_app.bulk.actor import ERROR_COLUMN, BulkClassifier, BulkTask, bulk_task
from serve_app.bulk.dataset import classify_dataset

__all__ = ["ERROR_COLUMN", "BulkClassifier", "BulkTask", "bulk_task", "classify_dataset"]
