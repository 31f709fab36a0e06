"""A throwaway PostgreSQL server for tests and benchmarks: initdb in a temporary directory, a
free port on 127.0.0.1, stopped (and its files deleted) on exit.

It runs the system's server binaries (Debian's `postgresql` package: `make postgres` installs it).
initdb refuses to run as root, so as root (CI) the server runs as the `postgres` user the
package creates, in a directory handed to that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from serve_app.devtools.ports import free_port

DB_USER = "zsc"


def server_bin_dir() -> Path:
    """The directory of initdb/pg_ctl: pg_config's answer, else Debian's newest version."""
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not versions:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb): run `make postgres` "
            "(apt-get install postgresql) first"
        )
    return Path(versions[-1]).parent


@contextmanager
def temporary_postgres() -> Iterator[str]:
    """Start a server; yields its `postgresql://` URL (user `zsc`, database `zsc`, no password)."""
    bindir = server_bin_dir()
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="zsc-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    prefix: list[str] = []
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(sockets, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, cwd=base)

    try:
        run(
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            DB_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        options = f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c max_connections=100"
        run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
            str(base / "log"), "start")  # fmt: skip
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, "zsc")
            yield f"postgresql://{DB_USER}@127.0.0.1:{port}/zsc"
        finally:
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)
