"""The embedded PostgreSQL, used when SLSYNC_DATABASE_URL is unset: pgserver's binaries, run by slsync.

Data lives in SLSYNC_DATA_DIR/pgdata and survives between runs. Processes on one data directory share one
server: under a lock file beside the data, each adds its pid to pgdata/.handle_pids.json as it starts and
removes it as it ends, and the last one out stops the server (the same files pgserver 0.1.4 keeps, so a
process of an older slsync on the same directory takes part). Started by root, PostgreSQL runs as the
system user `pgserver`, created once under a machine-wide lock.

What pgserver's own server management did not survive, and this does:
- A stale postmaster.pid (after a crash or a reboot) may name a live process that is not PostgreSQL, or a
  backend of another data directory's server (as root every embedded server runs as `pgserver`): pgserver
  took any live pid for the server and, to stop it, signalled that process. Here nothing is signalled
  but this directory's own postmaster (checked by name, owner, working directory and parent), through
  pg_ctl; a stale file is set aside once no process of the directory is left.
- A damaged .handle_pids.json (or pids of processes that were killed) is rebuilt from the live pids.
- A data directory of another user, a missing PG_VERSION, a damaged pg_control: one line naming the file,
  its owner and the fix, never initdb over existing files (whose advice is to empty the directory).
- Two first runs as root on a fresh machine ran `useradd pgserver` at once: both succeeded, the user was
  written twice, and initdb ran as a uid that no longer existed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shlex
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slsync.errors import DatabaseUnavailable, UsageError
from slsync.terminal import user_name

log = logging.getLogger("slsync.embedded")

SYSTEM_USER = "pgserver"  # the name pgserver gives it: data directories made by slsync 0.1.0 as root are its
HANDLES = ".handle_pids.json"
LOCK = "pgserver.lock"  # beside pgdata: every process on this directory takes the same one
PG_MAJOR = "16"
START_SECONDS = 120  # a first start (initdb) on a loaded machine takes several seconds; pgserver allowed 10
# A unix socket path holds at most 107 bytes: a deep data directory gets its socket in a short directory.
SOCKET_PATH_MAX = 100

_servers: dict[Path, Server] = {}
_servers_lock = threading.Lock()


def database_url(data_dir: Path) -> str:
    """Start (or join) the server for data_dir and return a URL to its unix socket."""
    pgdata = (Path(data_dir).expanduser() / "pgdata").resolve()
    with _servers_lock:
        server = _servers.get(pgdata)
        if server is None:
            server = Server(pgdata)
            server.start()
            _servers[pgdata] = server
            atexit.register(server.release)
    return server.url


def _binaries() -> Path:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR when pgserver is imported
        import pgserver  # noqa: F401  the package: its binaries are what slsync runs
    return Path(pgserver.__file__).parent / "pginstall" / "bin"


@dataclass(frozen=True)
class Postmaster:
    """What pgdata/postmaster.pid says (PostgreSQL writes it as it starts and removes it as it stops)."""

    pid: int
    socket_dir: Path | None
    port: int
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        fields = [line.strip() for line in lines] + [""] * 8
        try:
            pid, port = int(fields[0]), int(fields[3] or 5432)
        except ValueError:  # half written by a postmaster that died as it started
            return cls(0, None, 5432, "")
        return cls(pid, Path(fields[4]) if fields[4] else None, port, fields[7])


class Server:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.data_dir = pgdata.parent
        self.bin = _binaries()
        self.as_root = os.geteuid() == 0
        self.url = ""
        self._released = False

    # --- who runs PostgreSQL ------------------------------------------------------------------------

    @property
    def uid(self) -> int:
        """The user PostgreSQL runs as: this one, or the `pgserver` system user when this one is root."""
        if not self.as_root:
            return os.geteuid()
        import pwd

        return pwd.getpwnam(SYSTEM_USER).pw_uid

    def _run(self, tool: str, *args: str, timeout: float = START_SECONDS) -> subprocess.CompletedProcess[str]:
        """A PostgreSQL tool on this data directory, as the user PostgreSQL runs as."""
        as_user: dict[str, object] = {}
        if self.as_root:
            import pwd

            entry = pwd.getpwnam(SYSTEM_USER)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bin / tool), "-D", str(self.pgdata), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **as_user,  # type: ignore[arg-type]
        )

    # --- start and release --------------------------------------------------------------------------

    def start(self) -> None:
        self._check_data_dir()
        if self.as_root:
            ensure_system_user()
        with self._locked():
            self._check_pgdata()
            running = self._running()
            if running is None:
                self._set_aside_stale_pid_file()
                if self.as_root:
                    self._open_the_way()
                self._init_if_new()
                running = self._start_postmaster()
            pids = self._live_handles()
            self._write_handles([*pids, os.getpid()] if os.getpid() not in pids else pids)
        socket = running.socket_dir or self.pgdata
        self.url = f"postgresql://postgres:@/postgres?host={socket}&port={running.port}"

    def release(self) -> None:
        """This process is done with the server; the last one out stops it."""
        if self._released:
            return
        self._released = True
        try:
            with self._locked():
                others = [pid for pid in self._live_handles() if pid != os.getpid()]
                self._write_handles(others)
                if others or self._running() is None:
                    return
                stopped = self._run("pg_ctl", "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
                if stopped.returncode != 0:
                    log.warning("the embedded PostgreSQL in %s did not stop: %s", self.pgdata, _last_line(stopped))
        except (OSError, subprocess.SubprocessError, UsageError) as exc:  # at exit: say it, never raise
            log.warning("could not stop the embedded PostgreSQL in %s: %s", self.pgdata, exc)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The data directory's lock, which every start and stop on it holds."""
        import fasteners

        lock = self.data_dir / LOCK
        try:
            acquired = fasteners.InterProcessLock(str(lock))
            acquired.acquire()
        except OSError as exc:
            raise UsageError(
                f"cannot take the lock {lock} ({exc.strerror}; it belongs to {_owner(lock)}): run slsync as "
                f"{_owner(lock)}, or set SLSYNC_DATA_DIR to a directory of yours"
            ) from None
        try:
            yield
        finally:
            acquired.release()

    # --- the data directory ---------------------------------------------------------------------------

    def _check_data_dir(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            existing = next((p for p in self.data_dir.parents if p.exists()), Path("/"))
            raise UsageError(
                f"cannot create the data directory {self.data_dir}: {exc.strerror} ({existing} belongs to "
                f"{_owner(existing)}): set SLSYNC_DATA_DIR to a directory of yours"
            ) from None
        if not os.access(self.data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise UsageError(
                f"the data directory {self.data_dir} belongs to {_owner(self.data_dir)}, and "
                f"{user_name(os.geteuid())} cannot write in it: run slsync as {_owner(self.data_dir)}, "
                "or set SLSYNC_DATA_DIR to a directory of yours"
            )

    def _check_pgdata(self) -> None:
        """Refuse what slsync must not touch: a data directory of another user, or one that is not whole."""
        try:
            owner = self.pgdata.stat().st_uid
        except FileNotFoundError:
            return
        version = self.pgdata / "PG_VERSION"
        if owner != self.uid:
            if owner == 0 and self.as_root:
                if not self._contents():
                    return  # empty, made by root (a first start that stopped short): initdb takes it
                fix = f"give it to {SYSTEM_USER}, the user PostgreSQL runs as (chown -R {SYSTEM_USER} {self.pgdata})"
            elif not self.as_root and user_name(owner) == SYSTEM_USER:
                fix = "it was made by slsync running as root: run slsync as root"
            else:
                fix = f"run slsync as {user_name(owner)}"
            raise UsageError(
                f"the database directory {self.pgdata} belongs to {user_name(owner)}: {fix}, "
                "or set SLSYNC_DATA_DIR to a directory of yours"
            )
        if not version.exists() and self._contents():
            raise DatabaseUnavailable(
                f"{version} is missing, so {self.pgdata} (owner {user_name(owner)}) is not a whole PostgreSQL "
                f"data directory: restore it from a backup (the file holds just the major version, {PG_MAJOR}); "
                "slsync never initializes a database over existing files"
            )
        if version.exists():
            found = version.read_text(encoding="utf-8", errors="replace").strip()
            if found != PG_MAJOR:
                raise DatabaseUnavailable(
                    f"{self.pgdata} holds a PostgreSQL {found[:20]} database ({version}) and the embedded server is "
                    f"PostgreSQL {PG_MAJOR}: upgrade it with that version's pg_upgrade, or set SLSYNC_DATA_DIR"
                )

    def _contents(self) -> list[str]:
        """What pgdata holds besides slsync's own files (the handle list, the server log)."""
        return [p.name for p in self.pgdata.iterdir() if p.name not in (HANDLES, "log")]

    def _init_if_new(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        for ours in (HANDLES, "log"):  # initdb wants an empty directory; these are slsync's own leftovers
            (self.pgdata / ours).unlink(missing_ok=True)
        if self.as_root:
            os.chown(self.pgdata, self.uid, -1)
        done = self._run("initdb", "--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres")
        if done.returncode != 0:
            raise DatabaseUnavailable(f"could not create the embedded database in {self.pgdata}: {_last_line(done)}")

    def _open_the_way(self) -> None:
        """As root: let the `pgserver` user reach the data directory (search permission on it and every directory
        above it) and the bundled binaries (read and search permission above them, as pgserver gave), on every
        start: a data directory or an installation moved or made afresh (a new virtual environment in a 0700
        temporary directory) needs it again."""
        from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

        for directory in [self.data_dir, *self.data_dir.parents]:
            mode = directory.stat().st_mode
            if mode & 0o011 != 0o011:
                directory.chmod(mode | 0o011)
        ensure_prefix_permissions(self.bin)
        if not self.bin.joinpath("postgres").stat().st_mode & stat.S_IXOTH:
            read, run = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(self.bin, run | read)
            ensure_folder_permissions(self.bin.parent / "lib", read)

    # --- the postmaster -------------------------------------------------------------------------------

    def _running(self) -> Postmaster | None:
        """The postmaster of this data directory, when postmaster.pid names one that is running and ready."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            found = Postmaster.read(self.pgdata)
            if found is None or not _is_postmaster_of(found.pid, self.pgdata, self.uid):
                return None
            if found.status == "ready":
                return found
            if time.monotonic() > deadline:  # starting for minutes, or stopping: not usable
                raise DatabaseUnavailable(
                    f"the embedded PostgreSQL in {self.pgdata} (pid {found.pid}) stays '{found.status}': "
                    f"see its log, {self.pgdata / 'log'}"
                )
            time.sleep(0.2)

    def _set_aside_stale_pid_file(self) -> None:
        """postmaster.pid names no postmaster of this directory (a crash, a reboot): PostgreSQL itself replaces
        it only when its pid is dead, and refuses while that pid lives on in another process. Once no process of
        the directory is left (orphaned backends still hold its memory), it is renamed, never acted upon."""
        stale = Postmaster.read(self.pgdata)
        if stale is None:
            return
        left = _processes_in(self.pgdata)
        if left:
            raise DatabaseUnavailable(
                f"{self.pgdata / 'postmaster.pid'} is stale, but PostgreSQL processes of {self.pgdata} still run "
                f"(pids {', '.join(map(str, left))}, user {_owner_of_pid(left[0])}): they end when their clients "
                "disconnect; run slsync again then"
            )
        log.info("set aside a stale postmaster.pid naming pid %s in %s", stale.pid, self.pgdata)
        os.replace(self.pgdata / "postmaster.pid", self.pgdata / "postmaster.pid.stale")
        socket_dir = stale.socket_dir or self.pgdata
        lock = socket_dir / f".s.PGSQL.{stale.port}.lock"
        with contextlib.suppress(OSError):
            if lock.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip() == str(stale.pid):
                lock.unlink()
                (socket_dir / f".s.PGSQL.{stale.port}").unlink(missing_ok=True)

    def _start_postmaster(self) -> Postmaster:
        socket_dir = self._socket_dir()
        options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))}"
        log_file = self.pgdata / "log"
        logged = log_file.stat().st_size if log_file.exists() else 0
        try:
            done = self._run("pg_ctl", "-w", "-t", str(START_SECONDS), "-o", options, "-l", str(log_file), "start")
        except subprocess.TimeoutExpired:
            done = None
        running = self._running() if done is not None and done.returncode == 0 else None
        if running is None:
            said = _last_line(done) if done is not None else f"not ready within {START_SECONDS} s"
            raise DatabaseUnavailable(self._why_not_started(log_file, logged, said))
        return running

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata / ".s.PGSQL.5432")) <= SOCKET_PATH_MAX:
            return self.pgdata
        import hashlib

        short = Path("/tmp") / f"slsync-{hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]}"  # noqa: S108
        short.mkdir(mode=0o700, exist_ok=True)
        if self.as_root:
            os.chown(short, self.uid, -1)
        return short

    def _why_not_started(self, log_file: Path, logged: int, said: str) -> str:
        """One line from the server's log (else what pg_ctl said): the file it names, its owner, and what to do."""
        try:
            with log_file.open("rb") as log_text:
                log_text.seek(logged)  # what this start wrote, not an earlier run's complaints
                lines = log_text.read().decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        at = next((n for n in range(len(lines) - 1, -1, -1) if re.search(r"\b(FATAL|PANIC):", lines[n])), None)
        if at is None:
            reason, detail = said, ""
        else:  # the line and its DETAIL (PostgreSQL's HINT is left out: for a damaged pg_control it says initdb)
            reason = re.sub(r"^.*?\b(FATAL|PANIC):\s*", "", lines[at]).strip()
            detail = lines[at + 1] if at + 1 < len(lines) and "DETAIL:" in lines[at + 1] else ""
        named = re.search(r'"([^"]+)"', reason)
        target = (self.pgdata / named.group(1)) if named else None
        if target is None and re.search("control file|PG_CONTROL", reason + detail):
            target = self.pgdata / "global" / "pg_control"
        where = f" ({target} belongs to {_owner(target)})" if target is not None and target.exists() else ""
        return (
            f"the embedded PostgreSQL in {self.pgdata} did not start: {reason}{where}: if a file is damaged, "
            f"restore {self.pgdata} from a backup; the server log is {log_file}"
        )

    # --- the processes using the server -----------------------------------------------------------------

    def _live_handles(self) -> list[int]:
        """The pids in .handle_pids.json that are still running; a damaged file counts as empty (rewritten)."""
        try:
            pids = json.loads((self.pgdata / HANDLES).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError):
            pids = None
        if not isinstance(pids, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pids):
            log.info("rebuilt a damaged %s in %s", HANDLES, self.pgdata)
            return []
        return [pid for pid in dict.fromkeys(pids) if pid > 0 and _alive(pid)]

    def _write_handles(self, pids: list[int]) -> None:
        fd, temp = tempfile.mkstemp(prefix=".handles-", dir=self.pgdata)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(pids, out)
            os.replace(temp, self.pgdata / HANDLES)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


# --- processes ------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


def _is_postmaster_of(pid: int, pgdata: Path, uid: int) -> bool:
    """Whether pid is the postmaster of pgdata: a `postgres` process of the expected user whose working
    directory is pgdata (PostgreSQL runs in its data directory) and whose parent is not one (a backend's is)."""
    import psutil

    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if process.name() != "postgres" or process.uids().real != uid or Path(process.cwd()) != pgdata:
            return False
        parent = process.parent()
        return parent is None or not (parent.name() == "postgres" and Path(parent.cwd()) == pgdata)
    except (psutil.Error, OSError):
        return False


def _processes_in(pgdata: Path) -> list[int]:
    """The pids of postgres processes working in pgdata (a postmaster, or backends it left behind)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error, OSError):
            if process.info["name"] == "postgres" and Path(process.cwd()) == pgdata:
                found.append(process.pid)
    return found


def _owner(path: Path) -> str:
    try:
        return user_name(path.stat().st_uid)
    except OSError:
        return "an unknown user"


def _owner_of_pid(pid: int) -> str:
    import psutil

    try:
        return user_name(psutil.Process(pid).uids().real)
    except psutil.Error:
        return "unknown"


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


# --- the system user --------------------------------------------------------------------------------------

# Machine-wide, like the user itself: not under TMPDIR, which differs between a shell, cron and a test run.
USER_LOCK = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")  # noqa: S108


def ensure_system_user() -> None:
    """As root: the `pgserver` user PostgreSQL runs as, created once. `useradd` run twice at once for one name
    succeeds twice and writes the user twice; the first caller's uid then names nobody (initdb: "could not
    look up effective user ID"). So the check and the creation hold a machine-wide lock."""
    import pwd

    import fasteners

    with fasteners.InterProcessLock(str(USER_LOCK / "slsync-pgserver-user.lock")):
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            done = subprocess.run(
                ["useradd", "--system", "--shell", "/usr/sbin/nologin", "--user-group", SYSTEM_USER],  # noqa: S607
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise DatabaseUnavailable(
                    f"could not create the system user {SYSTEM_USER} that the embedded PostgreSQL runs as when "
                    f"slsync runs as root: {_last_line(done)}; create it (useradd --system {SYSTEM_USER}) or run "
                    "slsync as another user"
                ) from None
            pwd.getpwnam(SYSTEM_USER)
