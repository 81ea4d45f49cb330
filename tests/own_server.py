"""A PostgreSQL server of a test's own, for the faults that would harm the shared one: stopped, killed,
restarted, refusing, out of disk space.

Built from pgserver's binaries (the same PostgreSQL as the embedded database). PostgreSQL refuses to run
as root: under root the server runs as pgserver's system user, as pgserver itself does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR at pgserver's import
    from pgserver._commands import POSTGRES_BIN_PATH
    from pgserver.utils import ensure_prefix_permissions, ensure_user_exists


class OwnServer:
    def __init__(self) -> None:
        # a short path: a unix socket's path is limited to ~107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="slsync-pg-"))
        self.pgdata = self.root / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            import pwd

            self.user = "pgserver"
            ensure_user_exists(self.user)
            account = pwd.getpwnam(self.user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            ensure_prefix_permissions(self.root)
        self._run("initdb", "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "-E", "utf8", "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / program), *args], user=self.user, check=True, capture_output=True, timeout=60
        )

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{dbname}?host={self.root}"

    def start(self) -> None:
        # fsync off: these servers hold throwaway data, and a crash here is a test's own doing
        options = f"-h '' -k {self.root} -c fsync=off -c max_connections=40"
        for _ in range(50):  # after a kill, orphaned backends hold the old shared memory for a moment
            try:
                self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-l", str(self.root / "log"), "-o", options, "start")
                return
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        raise RuntimeError(f"the test server did not start: {(self.root / 'log').read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL the postmaster, as the OOM killer would; its backends end when they notice."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)

    def running(self) -> bool:
        try:
            return _alive(self.postmaster_pid())
        except (FileNotFoundError, ValueError):
            return False

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    @contextmanager
    def tiny_tablespace(self, name: str, size: str = "1m") -> Iterator[str]:
        """A tablespace on a tmpfs of `size`: writes to what lives there fail with 'No space left on device'
        (SQLSTATE 53100). Mounting needs root; raises PermissionError (or OSError) otherwise."""
        where = self.root / name
        where.mkdir()
        owner = f",uid={os.getuid() if self.user is None else _uid(self.user)}"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700{owner}", "tmpfs", str(where)],
            check=True,
            capture_output=True,
        )
        try:
            with psycopg.connect(self.url(), autocommit=True) as conn:
                conn.execute(f"CREATE TABLESPACE {name} LOCATION '{where}'")
            yield name
        finally:
            subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)

    def remove(self) -> None:
        if self.running():
            with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self.stop("immediate")
        for mount in (m for m in self.root.iterdir() if m.is_dir() and m.name != "data"):
            subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
