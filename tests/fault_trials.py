"""Database fault trials: `slsync sync due` against a PostgreSQL that misbehaves, repeatably, with a table.

Each trial runs on a server of its own (tests/own_server.py) and a fresh database, as an ordinary role
`slsync` (no superuser rights, as in production), with 30 mock sources whose pages take 50 ms, and
`sync due --concurrency 4`. A fault is made at a random moment once pages are being saved; then the
command's exit code, time and stderr are taken, the sources are checked (nothing charged, no cursor
ahead of its mentions, nothing stored twice), the fault is mended, and the next `sync due` must finish
every source with no run left running, no claim left, and no mention left unlabelled.

    .venv/bin/python -m tests.fault_trials [--trials 4] [--only lock,kill]

The disk-full trial mounts a 4 MB tmpfs for a tablespace, which needs root; elsewhere it is left out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from slsync import db
from tests.conftest import add_mock_source
from tests.own_server import OwnServer

SOURCES = 30
PAGE_DELAY = 0.05
BUDGET = 10
_databases = itertools.count()


@dataclass
class Trial:
    """One trial's facts, for the table."""

    exit_code: int
    seconds: float
    stderr: list[str]
    summary: str
    charged: int = 0  # sources marked failing/error, counted a failure or given an error message
    ahead: int = 0  # sources whose cursor is ahead of their stored mentions, or with gaps
    twice: int = 0  # mentions stored twice
    stuck: int = 0  # runs left `running` or claims left held after the next run
    refetched: int = 0  # mentions the next run fetched again (it continued from the in-flight cursor if 0)
    unlabelled: int = 0  # mentions left `new` after the next run
    unsynced: int = 0  # sources the next run did not sync
    notes: list[str] = field(default_factory=list)


class LeftOut(Exception):
    """A fault this machine cannot make."""


class Setup:
    """A fresh database on the trial server owned by the ordinary role `slsync`, and 30 mock sources."""

    def __init__(self, server: OwnServer, work: Path, **env: str) -> None:
        self.server = server
        name = f"trial_{os.getpid()}_{next(_databases)}"
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name} OWNER slsync")
        self.admin_url = server.url(name)
        self.url = server.url(name, user="slsync")
        self.work = work
        self.env = {
            **{k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ},
            "SLSYNC_DATABASE_URL": self.url,
            "SLSYNC_DATA_DIR": str(work / "data"),
            "SLSYNC_TIME_BUDGET_SECONDS": str(BUDGET),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.run("source", "list")  # migrates
        with self.admin() as conn:
            for n in range(SOURCES):
                add_mock_source(conn, name=f"s{n:02d}", page_delay=PAGE_DELAY)

    def admin(self) -> db.Connection:
        return psycopg.connect(self.admin_url, autocommit=True, row_factory=dict_row)  # type: ignore[return-value]

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slsync", *args],
            env={**self.env, **env},
            cwd=self.work,
            text=True,
            capture_output=True,
            timeout=300,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "slsync", *args],
            env=self.env,
            cwd=self.work,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def pages_saved(self) -> int:
        with self.admin() as conn:
            return int(conn.execute("SELECT coalesce(sum(pages), 0) AS n FROM sl_sync_runs").fetchone()["n"])


def wait_until(predicate: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("the trial's condition never came")


def check_sources(setup: Setup, trial: Trial) -> None:
    """After the fault: no source charged, no cursor ahead of its mentions, nothing stored twice.

    Read once the server has ended slsync's sessions (a statement of a killed client runs to its end), in
    one snapshot."""
    with setup.admin() as conn:
        wait_until(
            lambda: not conn.execute("SELECT 1 FROM pg_stat_activity WHERE usename = 'slsync'").fetchone(), timeout=30
        )
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        sources = conn.execute("SELECT * FROM sl_sources ORDER BY id").fetchall()
        for source in sources:
            # (a run cut short, by the budget or because another run met the fault, keeps a note of it)
            blamed = re.search(r"SQLSTATE|internal error", source["error_message"] or "")
            if source["status"] != "active" or source["consecutive_failures"] or blamed:
                trial.charged += 1
                trial.notes.append(f"charged: {source['status']}, {source['error_message']}")
            rows = conn.execute("SELECT external_id FROM sl_mentions WHERE source_id = %s", (source["id"],)).fetchall()
            seqs = sorted(int(r["external_id"].rsplit("-", 1)[1]) for r in rows)
            trial.twice += len(seqs) - len(set(seqs))
            if not _agrees(seqs, source["inflight_cursor"], source["committed_cursor"]):
                trial.ahead += 1
                trial.notes.append(f"disagrees: {_span(seqs)} {source['inflight_cursor']} {source['committed_cursor']}")


def _span(seqs: list[int]) -> str:
    return f"{len(seqs)} stored, {seqs[0]}-{seqs[-1]}" if seqs else "none stored"


def _agrees(seqs: list[int], inflight: dict[str, Any] | None, committed: dict[str, Any] | None) -> bool:
    """A first sync pages newest first: what is stored is exactly the posts from the top down to where the
    in-flight cursor says the run got, or, once it got to the end (committed or not yet), the whole window
    up to the top."""
    if inflight and "next_seq" in inflight:
        return seqs == list(range(inflight["next_seq"] + 1, inflight["newest_seq"] + 1))
    if inflight or committed:
        return bool(seqs) and seqs == list(range(seqs[0], (inflight or committed)["newest_seq"] + 1))
    return not seqs


def recover_and_check(setup: Setup, trial: Trial) -> None:
    """The next cron run, once the database is well: every source finished from where it stopped."""
    with setup.admin() as conn:
        conn.execute("UPDATE sl_sources SET config = config - 'options', next_sync_at = now()")
    after = setup.run("sync", "due", "--concurrency", "4", "--limit", str(SOURCES), "--json")
    if after.returncode != 0:
        trial.notes.append(f"next run exit {after.returncode}: {after.stderr.strip()[:200]}")
    doc = json.loads(after.stdout) if after.stdout.strip() else {"results": []}
    synced = {r["source_id"] for r in doc["results"] if r["success"]}
    trial.refetched = sum(r["duplicates"] for r in doc["results"])
    with setup.admin() as conn:
        trial.unsynced = conn.execute("SELECT count(*) AS n FROM sl_sources").fetchone()["n"] - len(synced)
        trial.stuck = conn.execute(
            "SELECT (SELECT count(*) FROM sl_sync_runs WHERE status = 'running')"
            " + (SELECT count(*) FROM sl_sources WHERE claimed_by IN (SELECT pid FROM pg_stat_activity)) AS n"
        ).fetchone()["n"]
        trial.unlabelled = conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'new'").fetchone()["n"]
        for source in conn.execute("SELECT * FROM sl_sources").fetchall():
            rows = conn.execute("SELECT external_id FROM sl_mentions WHERE source_id = %s", (source["id"],))
            seqs = sorted(int(r["external_id"].rsplit("-", 1)[1]) for r in rows.fetchall())
            trial.twice += len(seqs) - len(set(seqs))
            if not _agrees(seqs, source["inflight_cursor"], source["committed_cursor"]):
                trial.ahead += 1
                trial.notes.append(f"after: {_span(seqs)} {source['inflight_cursor']} {source['committed_cursor']}")


def finish(process: subprocess.Popen[str], started: float) -> Trial:
    out, err = process.communicate(timeout=300)
    summary = next((line for line in out.splitlines() if " synced, " in line), "")
    return Trial(process.returncode, time.monotonic() - started, err.strip().splitlines(), summary)


def under_way(setup: Setup, rng: random.Random) -> None:
    """Some pages saved, then a random moment more."""
    wait_until(lambda: setup.pages_saved() >= 4)
    time.sleep(rng.uniform(0, 1.5))


# --- the faults ------------------------------------------------------------------------------------------


def lock_table(setup: Setup, rng: random.Random) -> Trial:
    """sl_mentions locked by another session (ACCESS EXCLUSIVE) from before the command until after it and
    `status` ended (the lock would be held 90 s)."""
    with setup.admin() as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE sl_mentions IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        trial = finish(setup.start("sync", "due", "--concurrency", "4"), started)
        started = time.monotonic()
        status = setup.run("status")
        trial.notes.append(
            f"status: exit {status.returncode} in {time.monotonic() - started:.1f} s, {len(status.stderr.splitlines())}"
            " line"
        )
        locker.execute("ROLLBACK")
    check_sources(setup, trial)
    return trial


def role_lock_timeout(setup: Setup, rng: random.Random) -> Trial:
    """ALTER ROLE slsync SET lock_timeout = '1s'; sl_mentions locked (SHARE) for 5 s mid-run."""
    with setup.admin() as admin:
        admin.execute("ALTER ROLE slsync SET lock_timeout = '1s'")
    setup.env["SLSYNC_DB_LOCK_TIMEOUT_SECONDS"] = "30"
    try:
        started = time.monotonic()
        process = setup.start("sync", "due", "--concurrency", "4")
        under_way(setup, rng)
        with setup.admin() as locker:
            locker.execute("BEGIN")
            locker.execute("LOCK TABLE sl_mentions IN SHARE MODE")
            time.sleep(5)
            locker.execute("ROLLBACK")
        trial = finish(process, started)
        check_sources(setup, trial)
    finally:
        with setup.admin() as admin:
            admin.execute("ALTER ROLE slsync RESET lock_timeout")
    return trial


def statement_timeout(setup: Setup, rng: random.Random) -> Trial:
    """Inserts into sl_mentions made slow (a trigger sleeping 3 s) mid-run; statement timeout 1 s."""
    setup.env["SLSYNC_DB_STATEMENT_TIMEOUT_SECONDS"] = "1"
    started = time.monotonic()
    process = setup.start("sync", "due", "--concurrency", "4")
    under_way(setup, rng)
    with setup.admin() as admin:
        admin.execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL;"
            " END $$; CREATE TRIGGER slow BEFORE INSERT ON sl_mentions EXECUTE FUNCTION slow()"
        )
    trial = finish(process, started)
    check_sources(setup, trial)
    with setup.admin() as admin:
        admin.execute("DROP TRIGGER slow ON sl_mentions")
    return trial


def _running_source(setup: Setup) -> tuple[int, int] | None:
    """(source id, backend pid) of a run under way that has saved a page."""
    with setup.admin() as conn:
        row = conn.execute(
            "SELECT r.source_id, l.pid FROM sl_sync_runs r JOIN pg_locks l ON l.locktype = 'advisory'"
            " AND l.objid = r.source_id AND l.objsubid = 2 AND l.granted"
            " WHERE r.status = 'running' AND r.pages >= 1 LIMIT 1"
        ).fetchone()
    return (row["source_id"], row["pid"]) if row else None


def _waiting_for(setup: Setup, source_id: int) -> bool:
    """Whether the session holding the source's lock waits for a lock itself."""
    with setup.admin() as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory'"
                " AND l.objid = %s AND l.objsubid = 2 AND l.granted AND a.wait_event_type = 'Lock'",
                (source_id,),
            ).fetchone()
        )


def deadlock(setup: Setup, rng: random.Random) -> Trial:
    """Another session takes a running source's row, then waits for the source's lock: a cycle."""
    setup.env["SLSYNC_DB_LOCK_TIMEOUT_SECONDS"] = "30"
    started = time.monotonic()
    process = setup.start("sync", "due", "--concurrency", "4")
    under_way(setup, rng)
    source_id, _ = wait_until(lambda: _running_source(setup))
    with setup.admin() as other:
        other.execute("BEGIN")
        other.execute("SET LOCAL deadlock_timeout = '60s'")
        other.execute("SELECT 1 FROM sl_sources WHERE id = %s FOR UPDATE", (source_id,))
        waiter = threading.Thread(
            target=other.execute, args=("SELECT pg_advisory_lock(%s, %s)", (db.LOCK_NAMESPACE, source_id))
        )
        waiter.start()
        trial = finish(process, started)
        waiter.join(timeout=30)
        other.execute("ROLLBACK")
    check_sources(setup, trial)
    return trial


def serialization(setup: Setup, rng: random.Random) -> Trial:
    """The role's transactions REPEATABLE READ; another session updates a running source's row."""
    with setup.admin() as admin:
        admin.execute("ALTER ROLE slsync SET default_transaction_isolation = 'repeatable read'")
    try:
        started = time.monotonic()
        process = setup.start("sync", "due", "--concurrency", "4")
        under_way(setup, rng)
        with setup.admin() as other:
            while process.poll() is None:
                source_id, _ = wait_until(lambda: _running_source(setup))
                other.execute("BEGIN")
                other.execute("UPDATE sl_sources SET updated_at = now() WHERE id = %s", (source_id,))
                try:  # its next save waits for the row, unless the run has just ended: then another
                    wait_until(lambda: _waiting_for(setup, source_id), timeout=3)  # noqa: B023
                except TimeoutError:
                    other.execute("ROLLBACK")
                    continue
                other.execute("COMMIT")
                break
        trial = finish(process, started)
        check_sources(setup, trial)
    finally:
        with setup.admin() as admin:
            admin.execute("ALTER ROLE slsync RESET default_transaction_isolation")
    return trial


def terminate_backend(setup: Setup, rng: random.Random) -> Trial:
    """pg_terminate_backend() of a worker's session mid-run."""
    started = time.monotonic()
    process = setup.start("sync", "due", "--concurrency", "4")
    under_way(setup, rng)
    _, pid = wait_until(lambda: _running_source(setup))
    with setup.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    trial = finish(process, started)
    check_sources(setup, trial)
    return trial


def postmaster_killed(setup: Setup, rng: random.Random) -> Trial:
    """The postmaster SIGKILLed mid-run (its backends end when they notice); started again afterwards."""
    started = time.monotonic()
    process = setup.start("sync", "due", "--concurrency", "4")
    under_way(setup, rng)
    setup.server.kill()
    trial = finish(process, started)
    setup.server.start()
    check_sources(setup, trial)
    return trial


def _restart(mode: str) -> Callable[[Setup, random.Random], Trial]:
    def restart(setup: Setup, rng: random.Random) -> Trial:
        started = time.monotonic()
        process = setup.start("sync", "due", "--concurrency", "4")
        under_way(setup, rng)
        setup.server.restart(mode)
        trial = finish(process, started)
        check_sources(setup, trial)
        return trial

    restart.__doc__ = f"pg_ctl restart -m {mode} mid-run."
    return restart


def refusing(setup: Setup, rng: random.Random) -> Trial:
    """The server stopped: `sync due` and `status` find nothing listening."""
    setup.server.stop()
    try:
        started = time.monotonic()
        trial = finish(setup.start("sync", "due", "--concurrency", "4"), started)
        status = setup.run("status")
        trial.notes.append(f"status: exit {status.returncode}, {len(status.stderr.splitlines())} line")
    finally:
        setup.server.start()
    check_sources(setup, trial)
    return trial


def disk_full(setup: Setup, rng: random.Random) -> Trial:
    """sl_mentions and its indexes on a 4 MB tmpfs: the backfill of 30 sources (~30,000 mentions) fills it."""
    with ExitStack() as stack:
        try:
            name = stack.enter_context(setup.server.tiny_tablespace(f"tiny{next(_databases)}", size="4m"))
        except (OSError, subprocess.CalledProcessError) as exc:
            raise LeftOut(f"mounting a tmpfs needs root: {exc}") from None
        with setup.admin() as admin:
            indexes = [
                r["indexname"]
                for r in admin.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'sl_mentions'")
            ]
            admin.execute(f"ALTER TABLE sl_mentions SET TABLESPACE {name}")
            for index in indexes:
                admin.execute(f"ALTER INDEX {index} SET TABLESPACE {name}")
        started = time.monotonic()
        trial = finish(setup.start("sync", "due", "--concurrency", "4"), started)
        check_sources(setup, trial)
        with setup.admin() as admin:  # space again
            admin.execute("ALTER TABLE sl_mentions SET TABLESPACE pg_default")
            for index in indexes:
                admin.execute(f"ALTER INDEX {index} SET TABLESPACE pg_default")
        with psycopg.connect(setup.server.url(), autocommit=True) as admin:
            admin.execute(f"DROP TABLESPACE {name}")
    return trial


def few_connections(setup: Setup, rng: random.Random) -> Trial:
    """The role limited to 5 connections; `--concurrency 8` needs 11."""
    with setup.admin() as admin:
        admin.execute("ALTER ROLE slsync CONNECTION LIMIT 5")
    try:
        started = time.monotonic()
        trial = finish(setup.start("sync", "due", "--concurrency", "8", "--limit", str(SOURCES)), started)
        check_sources(setup, trial)
    finally:
        with setup.admin() as admin:
            admin.execute("ALTER ROLE slsync CONNECTION LIMIT -1")
    return trial


def slsync_killed(setup: Setup, rng: random.Random) -> Trial:
    """slsync itself SIGKILLed mid-run; its saved mentions are unlabelled until the next sync due."""
    started = time.monotonic()
    process = setup.start("sync", "due", "--concurrency", "4")
    under_way(setup, rng)
    process.kill()
    trial = finish(process, started)
    check_sources(setup, trial)
    return trial


def budget_spent(setup: Setup, rng: random.Random) -> Trial:
    """No fault: a 10 s budget ends runs (pages of 0.3 s) between pages; they count as cut short."""
    with setup.admin() as admin:
        admin.execute("UPDATE sl_sources SET config = jsonb_set(config, '{options,page_delay}', '0.3')")
    started = time.monotonic()
    trial = finish(setup.start("sync", "due", "--concurrency", "4", "--limit", str(SOURCES)), started)
    check_sources(setup, trial)
    return trial


FAULTS: dict[str, Callable[[Setup, random.Random], Trial]] = {
    "lock": lock_table,
    "role-lock-timeout": role_lock_timeout,
    "statement-timeout": statement_timeout,
    "deadlock": deadlock,
    "serialization": serialization,
    "terminate": terminate_backend,
    "kill": postmaster_killed,
    "restart-fast": _restart("fast"),
    "restart-immediate": _restart("immediate"),
    "refusing": refusing,
    "disk-full": disk_full,
    "few-connections": few_connections,
    "slsync-killed": slsync_killed,
    "budget": budget_spent,
}


def _shape(line: str) -> str:
    """A stderr line with its numbers and paths made general, so that trials of one fault compare."""
    line = re.sub(r"/tmp/\S+", "…", line)
    line = re.sub(r"\bpid \d+", "pid N", line)
    line = re.sub(r'"pg_tblspc/\S+"', '"…"', line)
    return re.sub(r"base/\d+/\d+", "…", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated faults: " + ", ".join(FAULTS))
    parser.add_argument("--seed", type=int, default=20261205)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    chosen = [f for f in (args.only.split(",") if args.only else FAULTS) if f]
    server = OwnServer()
    server.start()
    with psycopg.connect(server.url(), autocommit=True) as admin:
        admin.execute("CREATE ROLE slsync LOGIN")
    rows = []
    try:
        for name in chosen:
            trials: list[Trial] = []
            for _ in range(args.trials):
                with tempfile.TemporaryDirectory(prefix="slsync-trial-") as work:
                    setup = Setup(server, Path(work))
                    try:
                        trial = FAULTS[name](setup, rng)
                    except LeftOut as exc:
                        print(f"{name}: left out ({exc})", file=sys.stderr)
                        break
                    recover_and_check(setup, trial)
                    trials.append(trial)
                    print(f"{name}: exit {trial.exit_code} in {trial.seconds:.1f} s; {trial.stderr}", file=sys.stderr)
            if trials:
                rows.append((name, " ".join((FAULTS[name].__doc__ or "").split()), trials))
    finally:
        server.remove()
    print_table(rows)


def print_table(rows: list[tuple[str, str, list[Trial]]]) -> None:
    print("| fault | trials | stderr (lines: what it said) | exit | seconds | summary line | charged | cursor"
          " ahead / twice | next run: stuck, refetched, unlabelled, unsynced |")  # fmt: skip
    print("|---|---:|---|---|---:|---|---:|---:|---|")
    for name, doc, trials in rows:
        said = sorted({f"{len(t.stderr)}: {_shape(t.stderr[0]) if t.stderr else '(nothing)'}" for t in trials})
        exits = ",".join(sorted({str(t.exit_code) for t in trials}))
        seconds = f"{min(t.seconds for t in trials):.1f}-{max(t.seconds for t in trials):.1f}"
        summaries = sorted({t.summary for t in trials})
        notes = sorted({n for t in trials for n in t.notes})
        after = (
            f"{sum(t.stuck for t in trials)}, {sum(t.refetched for t in trials)},"
            f" {sum(t.unlabelled for t in trials)}, {sum(t.unsynced for t in trials)}"
        )
        print(
            f"| {name}: {doc.strip()} | {len(trials)} | {'<br>'.join(said)}{'<br>' + '; '.join(notes) if notes else ''}"
            f" | {exits} | {seconds} | {'<br>'.join(summaries)} | {sum(t.charged for t in trials)}"
            f" | {sum(t.ahead for t in trials)} / {sum(t.twice for t in trials)} | {after} |"
        )


if __name__ == "__main__":
    main()
