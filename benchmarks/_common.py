"""Shared plumbing for the benchmark scripts: a PostgreSQL to run on, fresh databases, the machine, tables.

Every script runs on its own embedded PostgreSQL (pgserver, in a temporary directory deleted at the
end) unless SLSYNC_DATABASE_URL names a server, in which case each script creates (and drops) its
own databases there. Nothing here talks to anything but the local server and 127.0.0.1.
"""

from __future__ import annotations

import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from slsync import db

BIN = Path(sys.executable).parent
_numbers = itertools.count()


@contextmanager
def postgres() -> Iterator[str]:
    """An admin URL: SLSYNC_DATABASE_URL's server, or a fresh embedded PostgreSQL deleted afterwards."""
    url = os.environ.get("SLSYNC_DATABASE_URL", "").strip()
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver / platformdirs warn about XDG_RUNTIME_DIR at import
        import pgserver

    with tempfile.TemporaryDirectory(prefix="slsync-bench-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def with_db(url: str, name: str) -> str:
    """The same server URL pointing at another database (works for socket and TCP URLs)."""
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@contextmanager
def fresh_database(admin_url: str, prefix: str = "bench") -> Iterator[str]:
    """Create an empty database, migrate it with slsync's own migrations, drop it afterwards."""
    name = f"slsync_{prefix}_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = with_db(admin_url, name)
    try:
        with connect(url) as conn:
            db.migrate(conn)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def connect(url: str) -> db.Connection:
    """A connection configured like the ones slsync syncs on (autocommit, dict rows, db.SYNC_OPTIONS)."""
    return psycopg.connect(url, autocommit=True, row_factory=dict_row, options=db.SYNC_OPTIONS)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def revision() -> str:
    """The slsync commit measured, and whether its code (slsync/, sql/) had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "slsync", "sql"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "slsync (not a git checkout)"
    return f"slsync {head}" + (" + uncommitted changes" if dirty else "")


def machine(url: str) -> str:
    """One line naming the machine (cores, CPU, OS, Python, PostgreSQL) and the code measured."""
    with connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    pg = row["server_version"] if row else "?"
    where = "SLSYNC_DATABASE_URL" if os.environ.get("SLSYNC_DATABASE_URL") else "embedded pgserver"
    return (
        f"machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg} ({where}); {revision()}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table, right-aligned numbers, that reads the same in a terminal, a log or a README."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if n else "-" * (w + 2) for w, n in zip(widths, numeric, strict=True))
    out = [line(cells[0]), rule + "|"]
    out += [line(r) for r in cells[1:]]
    return (f"\n{title}\n" if title else "\n") + "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cli_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """A minimal environment for a `slsync` subprocess, as cron would give it (no inherited settings)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(SLSYNC_DATABASE_URL=database_url, SLSYNC_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@contextmanager
def cli_workspace(prefix: str) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """What a benchmark of `slsync` commands starts from: a fresh migrated database (printed with the machine), a
    temporary folder, and the environment its commands run in (data directory inside that folder)."""
    with (
        postgres() as admin,
        fresh_database(admin, prefix) as url,
        tempfile.TemporaryDirectory(prefix=f"slsync-bench-{prefix}-") as tmp,
    ):
        print(machine(url))
        work = Path(tmp)
        yield url, work, cli_env(url, work / "data")


def slsync_command(*args: str) -> list[str]:
    """The installed `slsync` entry point beside this interpreter (what cron runs), or `python -m slsync`."""
    script = BIN / "slsync"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "slsync", *args]


# Runs a command as its child and reports the child's wall time, peak RSS and exit code. Linux gives a child
# the peak RSS of the process it was forked from (exec records the old address space's high-water mark), so
# a command started from the benchmark itself would report the benchmark's memory when that is larger; this
# small launcher stands between them.
_LAUNCHER = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as report:
    report.write(f"{time.perf_counter() - started} {usage.ru_maxrss} {code} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


def measure(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS in MB, exit code and stdout of one child process."""
    wall, rss, code, stdout, _ = measure_cpu(command, env, cwd)
    return wall, rss, code, stdout


def measure_cpu(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, int, str, float]:
    """measure(), and the CPU seconds the child used (with the processes it started and waited for)."""
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.NamedTemporaryFile(mode="r") as report:
        child = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, report.name, *command],
            env=env, cwd=cwd, stdout=out, stderr=subprocess.PIPE,
        )  # fmt: skip
        _, errors = child.communicate()
        out.seek(0)
        stdout = out.read()
        wall, maxrss, code, cpu = report.read().split()
    if child.returncode != 0:
        print(f"  {' '.join(command[-4:])} exited {child.returncode}: {errors.decode()[-1000:]}", file=sys.stderr)
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS
    rss = int(maxrss) / (1024 * 1024 if sys.platform == "darwin" else 1024)
    return float(wall), rss, int(code), stdout, float(cpu)
