"""zsc's own failures answer in the JSON error envelope, so a plain-text 500 can only be Serve's
proxy (an ingress replica died), which clients resend; ours they must not.

The real app, over HTTP, with a real component failing in a way no handler expects: the
JobRunner's SQLite file is overwritten with garbage under the running replica, so its next
store call raises `sqlite3.DatabaseError` inside the runner. The answer must be the envelope's
500 `internal_error`, with nothing of the failure's internals in it, and the app must go on
classifying (the classify path never touches the job store).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from serve_app.client.http import RetryPolicy

pytestmark = pytest.mark.ray

APP = "broken-store"
INTERNAL = {
    "error": {"type": "internal_error", "message": "the server failed to answer; this is a zsc bug"}
}
CLASSIFY = {"text": "The match ended in a draw.", "labels": ["sports", "cooking"]}


def corrupt(db_path: Path) -> None:
    """Overwrite the database, its write-ahead log and its shared-memory index in place (the
    replica keeps them open), so no copy of a page is left for SQLite to read."""
    files = [Path(f"{db_path}{suffix}") for suffix in ("", "-wal", "-shm")]
    assert all(path.exists() for path in files), files  # WAL mode: all three are open
    for path in files:
        with path.open("r+b") as f:
            size = f.seek(0, 2)
            f.seek(0)
            f.write(b"\xa5" * size)


def test_an_unexpected_failure_is_a_json_500_that_clients_do_not_resend(
    deploy_app, tmp_path: Path
) -> None:
    db_path = tmp_path / "jobs.sqlite3"
    url = deploy_app(APP, jobs={"db_path": str(db_path)})
    before = httpx.get(f"{url}/v1/jobs", timeout=60)
    assert before.status_code == 200, before.text  # the store works, and the runner opened it

    corrupt(db_path)
    response = httpx.get(f"{url}/v1/jobs", timeout=60)

    assert response.status_code == 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == INTERNAL
    for internal in ("sqlite", "database", "Traceback", "DatabaseError", str(tmp_path)):
        assert internal.lower() not in response.text.lower(), internal
    assert RetryPolicy().delay(response, 0) is None  # the same request would fail the same way

    # The rest of the app never needed the store: it keeps serving.
    assert httpx.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    answer = httpx.post(f"{url}/v1/classify", json=CLASSIFY, timeout=60)
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["results"][0]["labels"]) == ["cooking", "sports"]
