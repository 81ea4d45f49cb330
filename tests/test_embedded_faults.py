"""The embedded PostgreSQL's data directory in the states a crash, a reboot, a second user or a damaged disk
leave it in: each gets one line naming the file, its owner and the fix, or is recovered by itself; nothing
but the directory's own postmaster is ever signalled."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from slsync import embedded
from tests.conftest import Cli, Result, base_env

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: PostgreSQL runs as another user only then")


def embedded_cli(tmp_path: Path, data_dir: Path) -> Cli:
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return Cli({**base_env(tmp_path), "SLSYNC_DATA_DIR": str(data_dir)}, work)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory made by slsync once (initdb, migrations) and stopped: each test copies it."""
    base = tmp_path_factory.mktemp("template")
    cli = embedded_cli(base, base / "data")
    cli.ok("status")
    assert not (base / "data" / "pgdata" / "postmaster.pid").exists()
    return base / "data"


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    subprocess.run(["cp", "-a", str(template), str(copy)], check=True)  # -a: the owner stays (pgserver as root)
    return copy


def one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def stale_pid_file(pgdata: Path, pid: int) -> None:
    """What a postmaster killed with SIGKILL (or a reboot) leaves behind, naming `pid`."""
    (pgdata / "postmaster.pid").write_text(
        f"{pid}\n{pgdata}\n{int(time.time()) - 3600}\n5432\n{pgdata}\n\n  5432001    0\nready   \n"
    )


@pytest.fixture
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "600"])
    yield process
    process.kill()
    process.wait()


def test_a_stale_postmaster_pid_naming_an_unrelated_live_process_is_set_aside_and_nothing_is_signalled(
    tmp_path: Path, data_dir: Path, live_process: subprocess.Popen[bytes]
) -> None:
    pgdata = data_dir / "pgdata"
    stale_pid_file(pgdata, live_process.pid)
    result = embedded_cli(tmp_path, data_dir).ok("status", "--json")
    assert result.json()["sources"] == [] and result.stderr == ""
    assert live_process.poll() is None  # never signalled
    assert (pgdata / "postmaster.pid.stale").exists()
    assert not (pgdata / "postmaster.pid").exists()  # the server it started, it stopped


@as_root
def test_a_stale_postmaster_pid_naming_a_process_of_the_postgres_user_is_set_aside(
    tmp_path: Path, data_dir: Path
) -> None:
    # As root every embedded server runs as `pgserver`: a pid of that user alive in a stale file made
    # PostgreSQL refuse to start ("lock file already exists"), and pg_ctl stop, run as pgserver, killed it.
    sleeper = subprocess.Popen(["sleep", "600"], user=embedded.SYSTEM_USER)
    try:
        stale_pid_file(data_dir / "pgdata", sleeper.pid)
        embedded_cli(tmp_path, data_dir).ok("status")
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_postmaster_pid_naming_another_servers_backend_leaves_that_connection_alone(
    tmp_path: Path, data_dir: Path, database_url: str
) -> None:
    """The cause of a setup error seen once beside other servers ("terminating connection due to administrator
    command" while a fixture set up): a stale file in one data directory whose pid had been reused by a backend
    of another server. pgserver took that backend for its postmaster and SIGTERMed it to stop it."""
    with psycopg.connect(database_url, autocommit=True) as victim:
        backend = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        stale_pid_file(data_dir / "pgdata", backend)
        embedded_cli(tmp_path, data_dir).ok("status")
        assert victim.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("content", ["garbage{", '{"pids": 1}', "[999999999, 1.5]", "\xff\xfe"], ids=repr)
def test_a_damaged_handle_file_is_rebuilt_and_the_last_process_out_still_stops_the_server(
    tmp_path: Path, data_dir: Path, content: str
) -> None:
    handles = data_dir / "pgdata" / ".handle_pids.json"
    handles.write_bytes(content.encode("latin-1"))
    cli = embedded_cli(tmp_path, data_dir)
    assert cli.ok("status", "--json").stderr == ""
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()  # stopped: no process left holding it
    assert json.loads(handles.read_text()) == []
    assert cli.ok("status", "--json").json() == cli.ok("status", "--json").json()  # and later commands work


def test_a_handle_left_by_a_killed_process_does_not_keep_the_server_up(tmp_path: Path, data_dir: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data_dir / "pgdata" / ".handle_pids.json").write_text(json.dumps([dead.pid]))
    embedded_cli(tmp_path, data_dir).ok("status")
    assert not (data_dir / "pgdata" / "postmaster.pid").exists()


def test_a_damaged_pg_control_is_one_line_naming_the_file_its_owner_and_a_restore(
    tmp_path: Path, data_dir: Path
) -> None:
    control = data_dir / "pgdata" / "global" / "pg_control"
    control.write_bytes(b"\0" * control.stat().st_size)
    result = embedded_cli(tmp_path, data_dir)("status")
    line = one_line(result)
    assert result.returncode == 1
    owner = pwd.getpwuid(control.stat().st_uid).pw_name
    assert f"{control} belongs to {owner}" in line and "restore" in line and "backup" in line
    assert "remove" not in line and "empty" not in line


def test_a_missing_pg_version_is_one_line_and_nothing_is_initialized_over_the_data(
    tmp_path: Path, data_dir: Path
) -> None:
    pgdata = data_dir / "pgdata"
    (pgdata / "PG_VERSION").unlink()
    before = sorted(p.name for p in pgdata.iterdir())
    result = embedded_cli(tmp_path, data_dir)("status")
    line = one_line(result)
    assert result.returncode == 1
    owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
    assert f"{pgdata / 'PG_VERSION'} is missing" in line and f"owner {owner}" in line and "restore" in line
    assert "remove" not in line and "empty" not in line
    assert sorted(p.name for p in pgdata.iterdir()) == before


def test_an_empty_data_dir_setting_means_the_default_not_the_working_directory(tmp_path: Path, template: Path) -> None:
    home = tmp_path / "home"
    default = home / ".local" / "share" / "slsync"
    default.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(template), str(default)], check=True)
    cli = embedded_cli(tmp_path, template)
    result = cli.ok("source", "list", "--json", env={"SLSYNC_DATA_DIR": "", "HOME": str(home)})
    assert result.json() == {"sources": []}
    assert not (cli.cwd / "pgdata").exists() and list(cli.cwd.iterdir()) == []
    assert (default / "pgdata" / "postmaster.pid.stale").exists() is False
    assert (default / "pgdata" / "log").stat().st_mtime > time.time() - 120  # the default's server ran


def test_sigterm_mid_sync_records_the_run_and_stops_the_embedded_server(tmp_path: Path, data_dir: Path) -> None:
    cli = embedded_cli(tmp_path, data_dir)
    source_id = cli.ok(
        "source", "add", "mock", "--tenant", "1", "--name", "s", "--keyword", "k",
        "--option", "page_delay=0.25", "--json",
    ).json()["id"]  # fmt: skip
    process = cli.popen("sync", "source", str(source_id))
    pgdata = data_dir / "pgdata"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket = (pgdata / "postmaster.pid").read_text().splitlines()[4]
            with psycopg.connect(f"postgresql://postgres:@/postgres?host={socket}", autocommit=True) as conn:
                pages = conn.execute("SELECT coalesce(max(pages), 0) FROM sl_sync_runs").fetchone()[0]
        except (OSError, IndexError, psycopg.OperationalError):
            pages = 0
        if pages >= 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)  # what `systemctl stop` and `timeout` send
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143 and out == ""
    assert err.strip().splitlines() == ["slsync: error: interrupted; the next sync continues where each source stopped"]
    assert not (pgdata / "postmaster.pid").exists()  # the server it started is stopped, not left up
    status = cli.ok("status", str(source_id), "--json").json()
    assert status["sync"]["last_run_status"] == "partial" and status["sync"]["syncing"] is False


# --- other users --------------------------------------------------------------------------------------------

NOBODY = "nobody"

# The command line as another user. /root is not open to other users here, nor is the interpreter under it, so
# a process started as root imports what the commands need and then gives up root for good before it runs them.
AS_ANOTHER_USER = textwrap.dedent(
    """
    import importlib, os, pkgutil, pwd, sys, warnings
    import slsync
    warnings.simplefilter("ignore")  # pgserver's import warns about XDG_RUNTIME_DIR; slsync imports it quietly
    for module in pkgutil.walk_packages(slsync.__path__, "slsync."):
        if module.name != "slsync.__main__":  # which would run the command line
            importlib.import_module(module.name)
    for name in ("rich.console", "rich.table", "rich.text", "psycopg", "fasteners", "psutil",
                 "pgserver", "pgserver.utils", "dotenv", "encodings.idna", "logging.handlers"):
        importlib.import_module(name)
    user = pwd.getpwnam(sys.argv[1])
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    from slsync.cli import app, run
    sys.exit(run(app, sys.argv[2:]))
    """
)


def as_another_user(tmp_path: Path, data_dir: Path, *args: str) -> Result:
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True, mode=0o777)
    work.chmod(0o777)
    env = {**base_env(tmp_path), "SLSYNC_DATA_DIR": str(data_dir), "HOME": str(work)}
    done = subprocess.run(
        [sys.executable, "-c", AS_ANOTHER_USER, NOBODY, *args],
        env=env, cwd=work, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


def open_to_all(path: Path) -> None:
    """Let another user reach `path` (the test's temporary directories are the owner's alone)."""
    for part in [path, *path.parents]:
        part.chmod(part.stat().st_mode | 0o011)


@as_root
def test_a_data_directory_made_by_root_is_one_line_for_another_user(tmp_path: Path, data_dir: Path) -> None:
    open_to_all(data_dir)
    data_dir.chmod(0o700)  # as slsync makes it
    result = as_another_user(tmp_path, data_dir, "status")
    line = one_line(result)
    assert result.returncode == 2
    assert f"the data directory {data_dir} belongs to root" in line and "run slsync as root" in line
    assert "SLSYNC_DATA_DIR" in line

    data_dir.chmod(0o777)  # writable by all, but its lock and its database are still root's
    result = as_another_user(tmp_path, data_dir, "status")
    line = one_line(result)
    assert result.returncode == 2
    assert f"the lock {data_dir / 'pgserver.lock'} (Permission denied; it belongs to root)" in line
    assert "run slsync as root" in line

    (data_dir / "pgserver.lock").chmod(0o666)
    result = as_another_user(tmp_path, data_dir, "status")
    line = one_line(result)
    assert result.returncode == 2
    assert f"{data_dir / 'pgdata'} belongs to {embedded.SYSTEM_USER}" in line and "run slsync as root" in line


@as_root
def test_as_root_a_database_of_another_user_is_refused_and_left_as_it_was(tmp_path: Path, data_dir: Path) -> None:
    pgdata = data_dir / "pgdata"
    shutil.chown(data_dir, NOBODY)
    subprocess.run(["chown", "-R", NOBODY, str(pgdata)], check=True)
    result = embedded_cli(tmp_path, data_dir)("status")
    line = one_line(result)
    assert result.returncode == 2
    assert f"{pgdata} belongs to {NOBODY}: run slsync as {NOBODY}" in line
    owners = {p.stat().st_uid for p in [pgdata, *pgdata.rglob("*")]}
    assert owners == {pwd.getpwnam(NOBODY).pw_uid}  # nothing was taken from its owner


SYSTEM_USER_SCRIPT = textwrap.dedent(
    """
    import pwd, sys
    from slsync import embedded
    embedded.SYSTEM_USER = sys.argv[1]
    embedded.ensure_system_user()
    print(pwd.getpwnam(sys.argv[1]).pw_uid)
    """
)


@as_root
@pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd")
def test_concurrent_first_starts_create_the_system_user_once(tmp_path: Path) -> None:
    """On a fresh machine the first runs as root (test workers, two cron jobs) create the user at once; run
    together, two `useradd` of one name both succeed and the first one's uid then names nobody (initdb: "could
    not look up effective user ID"). Here with a throwaway name, so the real user is never touched."""
    name = f"slsync-t{os.getpid() % 100000}"
    try:
        runs = [
            subprocess.Popen([sys.executable, "-c", SYSTEM_USER_SCRIPT, name], stdout=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        uids = {int(run.communicate(timeout=60)[0]) for run in runs}
        assert all(run.returncode == 0 for run in runs)
        entries = [line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith(name + ":")]
        assert len(entries) == 1 and len(uids) == 1
        assert pwd.getpwuid(uids.pop()).pw_name == name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
