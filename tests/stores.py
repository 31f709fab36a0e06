"""Both job stores for tests: a fresh SQLite file or a fresh PostgreSQL database per call."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

STORE_KINDS = ("sqlite", "postgres")


def fresh_store_url(kind: str, tmp_path: Path, postgres_server: str) -> str:
    """A store URL nothing else uses: a new SQLite file, or a new database on the test server."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'jobs-{uuid.uuid4().hex[:8]}.sqlite3'}"
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.rsplit("/", 1)[0] + "/" + name
