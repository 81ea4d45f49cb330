"""`slsync prune` deleting 1,000,000 old mentions while `slsync sync due` keeps syncing, and how long any
statement holds a lock on sl_mentions meanwhile.

Why: issue 18 asks that retention delete a million old mentions in batches while a concurrent `sync due`
keeps syncing, with no statement holding a lock on sl_mentions for more than a second, and that the
measurement be said. Three measurements, each on its own:

1. server-side timing of every statement of the prune: its session runs with log_min_duration_statement=0
   (PGOPTIONS), so PostgreSQL logs each statement's duration; a statement's locks are held for its duration
   (each batch commits on its own, autocommit), so the longest DELETE is the longest hold by the prune;
2. lock waits: log_lock_waits=on with deadlock_timeout=100ms (ALTER SYSTEM), so any session that waits
   100 ms or more for a lock (a sync's INSERT behind the prune, say) is logged with how long it waited;
3. sampling: a connection polls pg_locks joined with pg_stat_activity every 10 ms and keeps, per
   application (the prune, the syncs, this script), the oldest transaction seen holding a lock on
   sl_mentions: an independent lower bound with 10 ms resolution, which needs no server log.

The syncs: 4 mock sources of their own tenant, each `sync due` run backfilling 7 days (about 1,000 posts a
source) after this script resets them. First `--baseline` runs without the prune, then as many as fit while
it runs; their durations are compared. The server log is read from the embedded server's data directory
(measurements 1 and 2 are skipped, and said to be, when it cannot be read, e.g. on a remote server).

    .venv/bin/python benchmarks/retention.py [--mentions 1000000] [--baseline 3]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import cli_env, connect, fresh_database, machine, median, postgres, slsync_command, table, verdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from slsync import db  # noqa: E402
from slsync.connectors.mock import MockConnector  # noqa: E402

SYNC_SOURCES = 4
CHUNK = 100_000
# a logged statement (simple protocol) or the execute step of one (extended protocol, as psycopg sends it), its
# text going on over the tab-indented lines that follow
_DURATION = re.compile(r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): (.*)", re.DOTALL)
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)
_WAIT = re.compile(r"(still waiting for|acquired) (\w+) on (.*?) after ([0-9.]+) ms")


def generate(url: str, count: int) -> float:
    """`count` mentions published 400-430 days ago under one mock source, with ~300-byte payloads, in SQL."""
    started = time.monotonic()
    config = MockConnector.build_config({"keywords": ["Acme"]}, {})
    with connect(url) as conn:
        old = db.add_source(
            conn, tenant_id=1, platform="mock", name="old", connection_type="none", config=config, interval_minutes=15
        )
        conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 year' WHERE id = %s", (old,))
        for first in range(0, count, CHUNK):
            conn.execute(
                "WITH stored AS (INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, url, content,"
                " author_name, author_handle, published_at, likes_count, comments_count, media_type, language, status)"
                " SELECT 1, %(source)s, 'mock', 'old-' || n, 'https://mock.slsync.invalid/p/' || n,"
                " 'An old post about Acme number ' || n, 'Someone ' || (n %% 1000), 'someone' || (n %% 1000),"
                " now() - interval '400 days' - make_interval(secs => n * 2.5), n %% 50, n %% 7, 'text', 'en',"
                " 'processed' FROM generate_series(%(first)s, %(last)s) AS n RETURNING id, likes_count)"
                " INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)"
                " SELECT id, 1, jsonb_build_object('id', id, 'text', repeat('x', 200), 'metrics',"
                " jsonb_build_object('likes', likes_count)) FROM stored",
                {"source": old, "first": first + 1, "last": min(first + CHUNK, count)},
            )
        conn.execute("UPDATE sl_sources SET mentions_count = %s WHERE id = %s", (count, old))
        for n in range(SYNC_SOURCES):
            db.add_source(
                conn, tenant_id=2, platform="mock", name=f"live{n}", connection_type="none", config=config,
                interval_minutes=15,
            )  # fmt: skip
        conn.execute("VACUUM ANALYZE sl_mentions")
    return time.monotonic() - started


def server_log(url: str) -> Path | None:
    """The embedded server's log file (pgserver writes it to <data directory>/log), when it can be read."""
    with connect(url) as conn:
        directory = conn.execute("SHOW data_directory").fetchone()["data_directory"]
        for setting, value in (("log_lock_waits", "on"), ("deadlock_timeout", "100ms")):
            conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
    path = Path(directory) / "log"
    try:
        path.read_bytes()
    except OSError:
        return None
    return path


class Sampler(threading.Thread):
    """Every 10 ms: per application, the oldest transaction holding a granted lock on sl_mentions, and the
    sessions waiting for a lock (relation, row or transaction) while running a statement on sl_mentions."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.longest: dict[str, tuple[float, str]] = {}
        self.waits: dict[str, float] = {}
        self.samples = 0

    def run(self) -> None:
        with connect(self.url) as conn:
            conn.execute("SET application_name = 'bench-sampler'")
            while not self.stop.is_set():
                rows = conn.execute(
                    # a session without an application name is PostgreSQL's own (autovacuum): named by its
                    # backend type and lock mode (VACUUM's ShareUpdateExclusiveLock blocks no read or write)
                    "SELECT coalesce(nullif(a.application_name, ''), a.backend_type || ' ' || l.mode) AS app,"
                    " left(min(a.query), 60) AS query,"
                    " max(extract(epoch FROM clock_timestamp() - a.xact_start)) AS held"
                    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.relation = 'sl_mentions'::regclass AND l.granted AND a.pid <> pg_backend_pid()"
                    " GROUP BY 1"
                ).fetchall()
                for row in rows:
                    if row["held"] is not None and row["held"] > self.longest.get(row["app"], (0.0, ""))[0]:
                        self.longest[row["app"]] = (float(row["held"]), row["query"])
                waiting = conn.execute(
                    "SELECT application_name AS app, max(extract(epoch FROM clock_timestamp() - query_start)) AS w"
                    " FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE '%%sl_mentions%%'"
                    " AND pid <> pg_backend_pid() GROUP BY 1"
                ).fetchall()
                for row in waiting:
                    self.waits[row["app"]] = max(self.waits.get(row["app"], 0.0), float(row["w"] or 0))
                self.samples += 1
                time.sleep(0.01)


def sync_once(url: str, env: dict[str, str]) -> tuple[float, int, int]:
    """One `slsync sync due` over the live mock sources after resetting them: (seconds, exit code, saved)."""
    with connect(url) as conn:
        conn.execute("SET application_name = 'bench-reset'")
        conn.execute("DELETE FROM sl_mentions WHERE tenant_id = 2")
        conn.execute(
            "UPDATE sl_sources SET next_sync_at = now(), committed_cursor = NULL, inflight_cursor = NULL,"
            " mentions_count = 0 WHERE tenant_id = 2"
        )
    started = time.monotonic()
    done = subprocess.run(
        slsync_command("sync", "due", "--concurrency", "2", "--json"),
        env={**env, "PGAPPNAME": "slsync-sync-due"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    saved = json.loads(done.stdout)["total_mentions_saved"] if done.stdout.strip() else 0
    return elapsed, done.returncode, saved


def read_log(path: Path | None, offset: int) -> tuple[list[tuple[float, str]], list[str]]:
    """(duration ms, statement) of every logged statement, and every lock-wait line, after `offset`."""
    if path is None:
        return [], []
    text = path.read_bytes()[offset:].decode("utf-8", "replace")
    starts = [m.start() for m in _RECORD.finditer(text)] + [len(text)]
    records = [text[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    durations = [(float(m.group(1)), m.group(2)) for r in records if (m := _DURATION.search(r))]
    waits = [r.splitlines()[0] for r in records if _WAIT.search(r)]
    return durations, waits


def _runs(label: str, runs: list[tuple[float, int, int]]) -> list[Any]:
    if not runs:
        return [label, 0, "-", "-", "-", "-"]
    times = [t for t, _, _ in runs]
    return [
        label,
        len(runs),
        all(c == 0 for _, c, _ in runs),
        median([s for _, _, s in runs]),
        median(times),
        max(times),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mentions", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=3, help="sync due runs without the prune first")
    args = parser.parse_args()

    with postgres() as admin, fresh_database(admin, "retention") as url, tempfile.TemporaryDirectory() as tmp:
        print(machine(url))
        generated = generate(url, args.mentions)
        print(f"generated {args.mentions:,} old mentions in {generated:.0f} s")
        log = server_log(url)
        # the syncs run without a retention setting: the prune alone deletes
        env = cli_env(url, Path(tmp) / "data")

        baseline = [sync_once(url, env) for _ in range(args.baseline)]
        offset = log.stat().st_size if log else 0
        sampler = Sampler(url)
        sampler.start()
        prune_env = {
            **env, "SLSYNC_RETENTION_DAYS": "365", "PGAPPNAME": "slsync-prune",
            "PGOPTIONS": "-c log_min_duration_statement=0",
        }  # fmt: skip
        started = time.monotonic()
        prune = subprocess.Popen(
            slsync_command("prune", "--json"), env=prune_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        during = []
        while prune.poll() is None:
            during.append(sync_once(url, env))
        out, err = prune.communicate()
        prune_seconds = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        durations, waits = read_log(log, offset)

        result: dict[str, Any] = json.loads(out) if out.strip() else {"error": err.strip()}
        with connect(url) as conn:
            left = conn.execute(
                "SELECT count(*) AS n FROM sl_mentions WHERE published_at < now() - interval '365 days'"
            ).fetchone()["n"]
        deletes = [ms for ms, statement in durations if "DELETE FROM sl_mentions" in statement]
        longest_delete = max(deletes, default=0.0) / 1000
        waited = [float(_WAIT.search(w).group(4)) / 1000 for w in waits]  # type: ignore[union-attr]
        held = {app: round(seconds, 3) for app, (seconds, _) in sampler.longest.items()}

        print(table(
            ["measure", "value"],
            [
                ["mentions deleted by slsync prune", result.get("mentions_deleted", 0)],
                ["batches (statements)", result.get("batches", 0)],
                ["old mentions left", left],
                ["prune wall time, s", prune_seconds],
                ["mentions deleted per second", result.get("mentions_deleted", 0) / prune_seconds],
                ["(1) prune DELETEs timed server-side", len(deletes) if log else "log not readable"],
                ["(1) longest prune DELETE, s", longest_delete if log else "-"],
                ["(1) median prune DELETE, s", median(deletes) / 1000 if deletes else "-"],
                ["(2) lock waits of 100 ms or more logged", len(waits) if log else "log not readable"],
                ["(2) longest logged lock wait, s", max(waited, default=0.0) if log else "-"],
                ["(3) samples of pg_locks", sampler.samples],
                ["(3) longest transaction holding sl_mentions, by app, s", json.dumps(held)],
                ["(3) longest lock wait on sl_mentions, by app, s", json.dumps(sampler.waits)],
            ],
            title=f"slsync prune of {args.mentions:,} old mentions (SLSYNC_RETENTION_DAYS=365) beside sync due",
        ))  # fmt: skip
        print(table(
            ["sync due over 4 mock sources", "runs", "all exit 0", "mentions saved (median)", "median s", "max s"],
            [_runs("before the prune", baseline), _runs("while the prune ran", during)],
        ))  # fmt: skip
        prune_held = held.get("slsync-prune", 0.0)
        ok = (
            result.get("mentions_deleted") == args.mentions
            and left == 0
            and bool(during)
            and all(c == 0 and s > 0 for _, c, s in during)
            and prune_held < 1.0
            and (log is None or (longest_delete < 1.0 and max(waited, default=0.0) < 1.0))
        )
        print(f"\nall deleted, syncs going on, no lock on sl_mentions held or waited for a second: {verdict(ok)}")
        for line in waits[:10]:
            print("  logged:", line.strip()[:200])


if __name__ == "__main__":
    main()
