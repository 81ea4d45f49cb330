"""Guarantees across processes: overlapping cron runs and runs killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from slsync import db
from tests.conftest import Cli, add_mock_source, stored_ids


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def lock_released(conn: db.Connection, source_id: int) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
        " AND objid = %s AND objsubid = 2",
        (db.LOCK_NAMESPACE, source_id),
    ).fetchone()
    return row["n"] == 0


def assert_contiguous_stream(conn: db.Connection, source_id: int, newest: int) -> None:
    """Stored posts are exactly every post from the oldest stored one up to `newest`: none missing, none twice."""
    ids = stored_ids(conn, source_id)
    seqs = sorted(int(i.rsplit("-", 1)[1]) for i in ids)
    assert len(seqs) == len(set(seqs))
    assert seqs == list(range(newest - len(seqs) + 1, newest + 1))
    assert len(seqs) >= 1000  # the 7-day backfill


def test_overlapping_sync_due_runs_sync_every_due_source_exactly_once(conn, cli: Cli) -> None:
    ids = [add_mock_source(conn, name=f"s{n}", page_delay=0.03) for n in range(8)]
    first = cli.popen("sync", "due", "--concurrency", "2", "--json")
    second = cli.popen("sync", "due", "--concurrency", "2", "--json")
    docs = []
    for process in (first, second):
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        docs.append(json.loads(out))
    synced = [r["source_id"] for doc in docs for r in doc["results"] if r["success"]]
    assert sorted(synced) == ids  # each once, between them
    assert all(doc["sources_failed"] == 0 for doc in docs)
    counts = conn.execute(
        "SELECT source_id, count(*) AS runs FROM sl_sync_runs GROUP BY source_id ORDER BY source_id"
    ).fetchall()
    assert [(r["source_id"], r["runs"]) for r in counts] == [(i, 1) for i in ids]
    # and nothing is due any more
    assert cli.ok("sync", "due", "--json").json()["results"] == []


@pytest.mark.parametrize("command", ["source", "due"])
def test_a_run_killed_between_pages_loses_nothing_and_blocks_nothing(conn, cli: Cli, command: str) -> None:
    source_id = add_mock_source(conn, page_delay=0.25)
    args = ("sync", "source", str(source_id)) if command == "source" else ("sync", "due", "--concurrency", "1")
    victim = cli.popen(*args)

    def pages_saved() -> int:
        row = conn.execute(
            "SELECT pages FROM sl_sync_runs WHERE source_id = %s AND status = 'running'", (source_id,)
        ).fetchone()
        return row["pages"] if row and row["pages"] >= 3 else 0

    wait_for(pages_saved)
    # Frozen mid-run (as a machine that hangs): the `status` subprocess below can take longer than the rest of
    # the run on a loaded machine, and the kill must still find the run paging. The run still holds its lock, so
    # status says it runs, from the run log and the live lock.
    os.kill(victim.pid, signal.SIGSTOP)
    status = cli.ok("status", "--json").json()
    [active] = status["active_syncs"]
    assert active["source_id"] == source_id and active["started_at"] and active["duration_ms"] > 0
    assert status["sources"][0]["sync"]["syncing"] is True
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)

    source = db.get_source(conn, source_id)
    saved = stored_ids(conn, source_id)
    assert source.committed_cursor is None  # never ran ahead of what was saved
    assert source.inflight_cursor and "next_seq" in source.inflight_cursor
    assert len(saved) % 100 == 0 and len(saved) >= 300  # whole pages only: each page is one transaction
    assert source.mentions_count == len(saved)
    top_of_killed_run = source.inflight_cursor["newest_seq"]

    wait_for(lambda: lock_released(conn, source_id), timeout=10)
    conn.execute("UPDATE sl_sources SET config = config - 'options' WHERE id = %s", (source_id,))
    # the very next run of the same kind takes the source: no lock and no claim is left behind
    if command == "source":
        result = cli.ok("sync", "source", str(source_id), "--json").json()
    else:
        [result] = cli.ok("sync", "due", "--json").json()["results"]
    assert result["success"] and result["source_id"] == source_id
    assert result["duplicates"] == 0  # resumed from the in-flight cursor, not from scratch

    source = db.get_source(conn, source_id)
    # the resumed run finished the interrupted one; posts newer than its top are the next run's work
    assert source.committed_cursor == {"newest_seq": top_of_killed_run}
    assert_contiguous_stream(conn, source_id, top_of_killed_run)
    statuses = [r["status"] for r in conn.execute("SELECT status FROM sl_sync_runs ORDER BY id").fetchall()]
    assert statuses == ["abandoned", "success"]


def test_concurrent_first_commands_apply_the_migrations_once(admin_url: str, cli: Cli) -> None:
    import psycopg

    from tests.conftest import _with_db

    admin = admin_url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS fresh_schema WITH (FORCE)")
        c.execute("CREATE DATABASE fresh_schema")
    url = _with_db(admin, "fresh_schema")
    cli.env["SLSYNC_DATABASE_URL"] = url
    processes = [cli.popen("source", "list", "--json") for _ in range(4)]
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert json.loads(out) == {"sources": []}
    with psycopg.connect(url) as c:
        applied = c.execute("SELECT version FROM sl_schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in applied] == [v for v, _, _ in db.migration_files()]


INTERRUPTED = "slsync: error: interrupted; the next sync continues where each source stopped"


@pytest.mark.parametrize("command", ["due", "source"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_at_once_and_the_next_run_continues_without_loss(
    conn, cli: Cli, command: str, signum: int, code: int
) -> None:
    ids = [add_mock_source(conn, name=f"s{n}", page_delay=0.25) for n in range(6 if command == "due" else 1)]
    args = ("sync", "due", "--concurrency", "3") if command == "due" else ("sync", "source", str(ids[0]))
    process = cli.popen(*args)
    wait_for(lambda: (conn.execute("SELECT max(pages) AS n FROM sl_sync_runs").fetchone()["n"] or 0) >= 2)
    process.send_signal(signum)  # Ctrl-C, or what `systemctl stop` and `timeout` send
    interrupted_at = time.monotonic()
    out, err = process.communicate(timeout=30)
    assert process.returncode == code and time.monotonic() - interrupted_at < 5, err
    assert err.strip().splitlines() == [INTERRUPTED] and out == ""
    for source_id in ids:
        wait_for(lambda: lock_released(conn, source_id), timeout=10)  # noqa: B023
    runs = conn.execute("SELECT source_id, status FROM sl_sync_runs").fetchall()
    assert len(runs) <= 3  # no source was started after the signal
    # every run, in a worker or in the main thread, stops between pages and records it
    assert {r["status"] for r in runs} == {"partial"}

    conn.execute("UPDATE sl_sources SET config = config - 'options', next_sync_at = now()")
    doc = cli.ok("sync", "due", "--json").json()
    assert doc["sources_synced"] == len(ids)
    interrupted = {r["source_id"] for r in runs}
    for result in doc["results"]:
        if result["source_id"] in interrupted:
            assert result["duplicates"] == 0  # continued from the page it stopped at, not from scratch
    for source_id in ids:
        newest = db.get_source(conn, source_id).committed_cursor["newest_seq"]
        assert_contiguous_stream(conn, source_id, newest)


def test_ctrl_c_waits_for_the_slowest_worker_and_records_its_run(conn, cli: Cli) -> None:
    # The first source's pages take 2 s, the others' 0.25 s: when Ctrl-C comes, the main thread waits for
    # the worker of the first source. Waiting in Thread.join, Python 3.11 marked that worker as ended at
    # the interrupt, and the process left with its run still `running`.
    ids = [add_mock_source(conn, name=f"s{n}", page_delay=2.0 if n == 0 else 0.25) for n in range(6)]
    process = cli.popen("sync", "due", "--concurrency", "3")
    wait_for(lambda: (conn.execute("SELECT max(pages) AS n FROM sl_sync_runs").fetchone()["n"] or 0) >= 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130 and err.strip().splitlines()[-1] == INTERRUPTED
    for source_id in ids:
        wait_for(lambda: lock_released(conn, source_id), timeout=10)  # noqa: B023
    runs = conn.execute("SELECT source_id, status FROM sl_sync_runs ORDER BY source_id").fetchall()
    assert runs[0]["source_id"] == ids[0]  # the slow source was among those started
    assert {r["status"] for r in runs} == {"partial"}, runs
