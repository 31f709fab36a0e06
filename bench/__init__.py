"""zsc's benchmarks: `python -m bench` (the service, `zsc bench`) and one script per subject
(`python -m bench.bench_limiter`, ...), all built on bench/common.py. Run from the checkout.

Importing the package sets what every benchmark needs before its libraries load: no hub
downloads (models are built locally), quiet tokenizers, no Ray usage report.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
