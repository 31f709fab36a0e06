"""The job store in one embedded SQLite file (`jobs.store: sqlite:///path`, the default).

One process opens it: the JobRunner pinned to the node that holds the file (`jobs.runners` must
stay 1). WAL mode lets readers run beside the writer; every transaction is BEGIN IMMEDIATE, so a
claim (read, then write) holds the write lock throughout: SQLite's equivalent of PostgreSQL's
`FOR UPDATE SKIP LOCKED`. Calls come from worker threads (`asyncio.to_thread`), one at a time.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_app.jobs.sql_store import Db, SqlJobStore
from serve_app.jobs.store import StoreFull

SCHEMA_VERSION = 2
SCHEMA = (Path(__file__).with_name("sqlite_schema.sql")).read_text()


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel/path` -> rel/path; `sqlite:////abs/path` -> /abs/path; a bare path as is."""
    if url.startswith("sqlite://"):
        rest = url.removeprefix("sqlite://")
        if not rest.startswith("/"):
            raise ValueError(f"a SQLite store URL is sqlite:///PATH, got {url!r}")
        return Path(rest[1:])
    return Path(url)


class SqliteJobStore(SqlJobStore):
    def __init__(self, url: str | Path) -> None:
        self.path = sqlite_path(str(url))
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (`_tx`), so none stays open by accident.
        # check_same_thread=False: calls come from worker threads, serialized by `_lock`.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a crash of the process (what a Serve restart is); only a
        # power loss can drop the last commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._create_schema()

    def _create_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(
                f"{self.path} has job store schema {version}, this code has {SCHEMA_VERSION}; "
                "point jobs.store at a new file (or upgrade zsc), the old one keeps its jobs"
            )
        # executescript commits on its own, so it runs outside `_tx`; every statement is idempotent.
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Db]:
        with self._lock, _full_is_store_full():
            # IMMEDIATE takes the write lock up front: a read-then-write never fails half way.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Db(self._db.cursor(), "?")
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL has already rolled it back
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


@contextmanager
def _full_is_store_full() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StoreFull(str(exc)) from exc
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreFull(str(exc)) from exc
        raise
