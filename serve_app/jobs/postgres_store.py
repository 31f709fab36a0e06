"""The job store on PostgreSQL 15+ (`jobs.store: postgresql://...`), shared by runners on any node.

psycopg 3 with a connection pool. Claims lock the rows they take with `FOR UPDATE SKIP LOCKED`, so
runners (and, during a RayService upgrade, two clusters) never wait on each other nor take the
same chunk; a chunk's lease is a row with an expiry, so a runner that dies loses nothing.
Calls come from worker threads (`asyncio.to_thread`); the pool gives each its own connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from serve_app.jobs.sql_store import Db, SqlJobStore
from serve_app.jobs.store import StoreFull

SCHEMA = (Path(__file__).with_name("postgres_schema.sql")).read_text()
# Any fixed number: the advisory lock that makes concurrent schema creation one at a time.
_SCHEMA_LOCK = 0x7A5C_0024
POOL_SIZE = 4


class PostgresJobStore(SqlJobStore):
    _lock_row = " FOR UPDATE"
    _skip_locked = " FOR UPDATE OF j SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self.url = url
        # postgresql+psycopg:// (SQLAlchemy style) is accepted too.
        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._pool: ConnectionPool[psycopg.Connection[dict[str, object]]] = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "row_factory": dict_row},
            open=True,
            name="zsc-jobs",
        )
        self._pool.wait(timeout=30)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(SCHEMA.encode())

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _tx(self) -> Iterator[Db]:
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield Db(conn.cursor(), "%s")
        except psycopg.errors.DiskFull as exc:
            raise StoreFull(str(exc)) from exc
