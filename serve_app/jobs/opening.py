"""The one place that turns a store URL into a store: beside the protocol and the two stores,
so that neither imports the other."""

from __future__ import annotations

from serve_app.jobs.store import JobStore, is_shared


def open_store(url: str) -> JobStore:
    """The store a URL names: `sqlite:///relative/or//absolute/path` or `postgresql://...`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from serve_app.jobs.sqlite_store import SqliteJobStore

        return SqliteJobStore(url)
    if is_shared(url):
        from serve_app.jobs.postgres_store import PostgresJobStore

        return PostgresJobStore(url)
    raise ValueError(f"jobs.store must be sqlite:///PATH or postgresql://..., got {scheme}:...")
