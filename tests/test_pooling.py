"""slsync behind PgBouncer (Debian's package) in front of Debian's PostgreSQL: in session pooling every due
source is synced as directly; in transaction pooling a connection's statements land in different server
sessions, which would keep neither claims nor source locks, and slsync stops with one line saying so."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slsync import db
from slsync.config import Settings
from tests.conftest import Cli, add_mock_source, base_env
from tests.real_postgres import missing, require, start_postgres, work_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server() -> Iterator[tuple[Path, str, list[subprocess.Popen[Any]]]]:
    require(missing("pgbouncer"))
    work = work_dir()
    processes: list[subprocess.Popen[Any]] = []

    def launch(args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        processes.append(subprocess.Popen(args, **kwargs))
        return processes[-1]

    try:
        url = start_postgres(work, launch, listen="", clients="127.0.0.1/32")
        yield work, url, processes
    finally:
        for process in processes:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def pgbouncer(work: Path, processes: list[subprocess.Popen[Any]], mode: str) -> str:
    """PgBouncer on 127.0.0.1 in `mode` pooling; the URL through it. In session pooling a client holds a server
    connection for its whole session, so the pool must hold `sync due`'s 1 + 4 + 1; in transaction pooling two
    server connections for its six clients make statements of one client land in different sessions."""
    from tests.real_postgres import as_postgres

    folder = work / f"pgbouncer-{mode}"
    folder.mkdir()
    port = free_port()
    (folder / "users.txt").write_text('"slsync" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\nslsync = host={work / 'pg'} port=5432 dbname=slsync user=slsync\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\npool_mode = {mode}\n"
        f"default_pool_size = {6 if mode == 'session' else 2}\nmax_client_conn = 50\n"
        # slsync's sync connections pass synchronous_commit=off as a startup option, which PgBouncer refuses
        "ignore_startup_parameters = options\n"
    )
    shutil.chown(folder, "postgres", "postgres")
    processes.append(
        subprocess.Popen(
            as_postgres("pgbouncer", folder / "pgbouncer.ini"),
            stdout=(folder / "log").open("w"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    )
    url = f"postgresql://slsync@127.0.0.1:{port}/slsync"
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return url
        processes[-1].poll()
        assert processes[-1].returncode is None, (folder / "log").read_text()
        import time

        time.sleep(0.05)
    raise AssertionError("PgBouncer did not start")


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_sync_due_works_in_session_pooling_and_stops_in_one_line_in_transaction_pooling(
    server: tuple[Path, str, list[subprocess.Popen[Any]]], tmp_path: Path, mode: str
) -> None:
    work, direct, processes = server
    settings = Settings(database_url=direct, data_dir=tmp_path / "data", _env_file=None)
    with db.connect(settings) as conn:
        ids = [add_mock_source(conn, name=f"s{n}", page_delay=0.02) for n in range(12)]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cli = Cli({**base_env(tmp_path), "SLSYNC_DATABASE_URL": pgbouncer(work, processes, mode)}, cwd)
    result = cli("sync", "due", "--concurrency", "4", "--json")
    with db.connect(settings) as conn:
        runs = conn.execute("SELECT source_id, status FROM sl_sync_runs").fetchall()
    if mode == "session":
        assert result.returncode == 0, result.stderr
        assert sorted(r["source_id"] for r in result.json()["results"] if r["success"]) == ids
        assert sorted(r["source_id"] for r in runs if r["status"] == "success") == ids
        return
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line == f"slsync: error: {db.SESSION_POOLING}"
    assert "Traceback" not in result.stderr
