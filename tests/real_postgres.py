"""Debian's PostgreSQL server (and PgBouncer) started by a test on a data directory of its own, as root: for the
tests that need a server slsync did not start itself, on TCP (tests/test_real_hosts.py, tests/test_pooling.py).

They need root and Debian's packages (.ci/run installs them); without those they are skipped, except under CI
(CI=true), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
import pytest

PASSWORD = "real-postgres-test-password"

Launch = Callable[..., "subprocess.Popen[Any]"]


def postgres_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def missing(*tools: str) -> str | None:
    """Why these tests cannot run here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux"
    for tool in ("setpriv", *tools):
        if shutil.which(tool) is None:
            return f"needs {tool} (.ci/run installs it with apt-get)"
    if not postgres_bin():
        return "needs Debian's postgresql package (.ci/run installs it with apt-get)"
    return None


def require(reason: str | None) -> None:
    if reason and os.environ.get("CI"):
        pytest.fail(f"this test must run in CI: {reason}")
    if reason:
        pytest.skip(reason)


def as_postgres(*args: str | Path) -> list[str]:
    """A command run as the postgres system user (the server refuses root); setpriv execs, it does not fork."""
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *map(str, args)]


def work_dir() -> Path:
    """A directory the postgres user can reach (pytest's are root's alone)."""
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="slpg-"))
    os.chmod(work, 0o755)
    return work


def start_postgres(work: Path, launch: Launch, *, listen: str, clients: str) -> str:
    """A server on `listen`:5432 taking scram passwords from `clients` (a CIDR) and trusting its unix socket; the
    URL of role slsync's database over the socket. The role's password is PASSWORD."""
    bindir = postgres_bin()
    assert bindir is not None
    data = work / "pg"
    data.mkdir(mode=0o700)
    shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        as_postgres(bindir / "initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "--no-sync"),
        check=True, capture_output=True,
    )  # fmt: skip
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {clients} scram-sha-256\n")
    launch(
        as_postgres(bindir / "postgres", "-D", data, "-c", f"listen_addresses={listen}", "-c",
                    f"unix_socket_directories={data}", "-c", "fsync=off", "-c", "full_page_writes=off"),
        stdout=(work / "postgres.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    admin = f"postgresql://postgres@/postgres?host={data}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"CREATE ROLE slsync LOGIN PASSWORD '{PASSWORD}'")
                conn.execute("CREATE DATABASE slsync OWNER slsync")
            return f"postgresql://slsync@/slsync?host={data}"
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL did not start: {(work / 'postgres.log').read_text()}") from None
            time.sleep(0.1)
