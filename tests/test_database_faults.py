"""When the database misbehaves: every wait bounded, nothing charged to a source, one clear line.

Faults are made by the tests against a real PostgreSQL: locks held from another session, a role's own
lock timeout, a slow statement, a deadlock and a serialization failure, a backend terminated, too few
connections (all on the shared test server); the server killed, restarted, stopped, out of disk space
(on a server of the tests' own, tests/own_server.py).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from slsync import db, sync
from tests.conftest import Cli, add_mock_source, base_env, stored_ids
from tests.own_server import OwnServer
from tests.test_processes import assert_contiguous_stream, lock_released, wait_for

_roles = itertools.count()

# What a database fault must leave of a source as it was: never charged with a failure.
STATE = "status, consecutive_failures, next_sync_at, error_message, committed_cursor"


def state(conn: db.Connection, ids: list[int]) -> list[dict[str, Any]]:
    return conn.execute(f"SELECT id, {STATE} FROM sl_sources WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()


def one_line(stderr: str) -> str:
    """The one line a command that the database failed prints on stderr."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("slsync: error: ") and "Traceback" not in stderr
    return lines[0]


def run_statuses(conn: db.Connection) -> list[str]:
    return [r["status"] for r in conn.execute("SELECT status FROM sl_sync_runs ORDER BY id").fetchall()]


def no_claims_left(conn: db.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) AS n FROM sl_sources WHERE claimed_by IN (SELECT pid FROM pg_stat_activity)"
    ).fetchone()
    return row["n"] == 0


def assert_whole_after_the_next_run(conn: db.Connection, cli: Cli, ids: list[int]) -> None:
    """Once the database is well again, the next run syncs every source from where it stopped: nothing lost,
    nothing stored twice, no cursor ahead of what is stored, no run left running."""
    conn.execute("UPDATE sl_sources SET config = config - 'options'")
    doc = cli.ok("sync", "due", "--json").json()
    assert doc["sources_synced"] == len(ids) and doc["error"] is None, doc
    for source_id in ids:
        newest = db.get_source(conn, source_id).committed_cursor["newest_seq"]
        assert_contiguous_stream(conn, source_id, newest)
    assert set(run_statuses(conn)) <= {"success", "abandoned", "partial"}
    assert no_claims_left(conn)


def mentions_and_cursor_agree(conn: db.Connection, source_id: int) -> None:
    """The in-flight cursor is that of the last saved page: everything above its next_seq is stored."""
    source = db.get_source(conn, source_id)
    seqs = sorted(int(i.rsplit("-", 1)[1]) for i in stored_ids(conn, source_id))
    assert len(seqs) == len(set(seqs))
    if source.inflight_cursor and "next_seq" in source.inflight_cursor:
        cursor = source.inflight_cursor
        assert seqs == list(range(cursor["next_seq"] + 1, cursor["newest_seq"] + 1))
    elif source.inflight_cursor is None and source.committed_cursor is None:
        assert seqs == []


@pytest.fixture
def ordinary_role(database_url: str) -> Iterator[Any]:
    """make(**role settings) -> a URL for a new login role without superuser rights, as slsync runs in
    production, allowed to work in the test database."""
    made: list[str] = []
    admin = psycopg.connect(database_url, autocommit=True)

    def make(connection_limit: int = -1, **settings: str) -> str:
        name = f"slsync_role_{os.getpid()}_{next(_roles)}"
        admin.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {connection_limit}")
        for setting, value in settings.items():
            admin.execute(f"ALTER ROLE {name} SET {setting} = '{value}'")
        admin.execute(f"GRANT ALL ON SCHEMA public TO {name}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}")
        made.append(name)
        info = psycopg.conninfo.conninfo_to_dict(database_url)
        info.update(user=name, password=None)
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in info.items() if v is not None})

    yield make
    for name in made:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        admin.execute(f"DROP OWNED BY {name}")
        admin.execute(f"DROP ROLE {name}")
    admin.close()


def first_run_started(conn: db.Connection, source_id: int) -> bool:
    return conn.execute("SELECT 1 FROM sl_sync_runs WHERE source_id = %s", (source_id,)).fetchone() is not None


@contextmanager
def another_session_during_a_run(
    cli: Cli, conn: db.Connection, database_url: str, source_id: int
) -> Iterator[tuple[psycopg.Connection[Any], subprocess.Popen[str]]]:
    """`sync source` running, and another session with a transaction begun once the run is under way."""
    with psycopg.connect(database_url, autocommit=True) as other:
        process = cli.popen("sync", "source", str(source_id))
        wait_for(lambda: first_run_started(conn, source_id))
        other.execute("BEGIN")
        yield other, process


def waiting_for_a_lock(conn: db.Connection, besides: int) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND pid NOT IN (pg_backend_pid(), %s)",
        (besides,),
    ).fetchone()
    return row["pid"] if row else None


# --- locks and timeouts ---------------------------------------------------------------------------


def test_a_table_locked_by_another_session_ends_sync_due_and_status_within_their_bounds(
    conn, cli: Cli, database_url: str
) -> None:
    ids = [add_mock_source(conn, name=f"s{n}") for n in range(6)]
    before = state(conn, ids)
    with psycopg.connect(database_url, autocommit=True) as locker:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE sl_mentions IN ACCESS EXCLUSIVE MODE")
        holder = locker.info.backend_pid

        started = time.monotonic()
        due = cli("sync", "due", "--concurrency", "4", env={"SLSYNC_TIME_BUDGET_SECONDS": "10"})
        took = time.monotonic() - started
        # a 10 s budget: each statement takes at most 5 s and waits for a lock at most half of that
        assert due.returncode == 1 and took < 10 + 4, (took, due.stderr)
        line = one_line(due.stderr)
        assert line == (
            "slsync: error: database: waited 2.5 s for a lock and gave up (lock timeout): another session holds"
            f" sl_mentions (pid {holder}, AccessExclusiveLock) (SQLSTATE 55P03); the sync stopped, no source is"
            " charged with it and the next run continues"
        )
        assert due.stdout.strip().splitlines()[-1] == "0 synced, 0 failed, 4 cut short, 2 skipped of 6; 0 new mentions"

        started = time.monotonic()
        status = cli("status", env={"SLSYNC_DB_LOCK_TIMEOUT_SECONDS": "2"})
        assert status.returncode == 1 and time.monotonic() - started < 2 + 4
        assert (
            "waited 2 s for a lock and gave up (lock timeout): another session holds sl_mentions"
            in one_line(status.stderr)
            and status.stdout == ""
        )
        locker.execute("ROLLBACK")

    assert state(conn, ids) == before
    assert run_statuses(conn) == ["abandoned"] * 4
    runs = conn.execute("SELECT message FROM sl_sync_runs").fetchall()
    assert all(r["message"].startswith("stopped by a database error: database: waited 2.5 s") for r in runs)
    assert_whole_after_the_next_run(conn, cli, ids)


def test_a_lock_timeout_set_on_the_role_is_kept_and_charged_to_no_source(
    conn, cli: Cli, database_url: str, ordinary_role: Any
) -> None:
    source_id = add_mock_source(conn, page_delay=0.5)
    cli.env["SLSYNC_DATABASE_URL"] = ordinary_role(lock_timeout="1s")
    before = state(conn, [source_id])
    cli.env["SLSYNC_DB_LOCK_TIMEOUT_SECONDS"] = "30"
    with another_session_during_a_run(cli, conn, database_url, source_id) as (other, process):
        other.execute("SELECT 1 FROM sl_sources WHERE id = %s FOR UPDATE", (source_id,))  # the save waits on it
        out, err = process.communicate(timeout=60)
        other.execute("ROLLBACK")
    # the role's 1 s is stricter than slsync's 30 s: it stands
    assert process.returncode == 1 and "waited 1 s for a lock held by another session" in one_line(err)
    assert out.startswith(f"source {source_id}: stopped: stopped by a database error")
    assert state(conn, [source_id]) == before
    assert run_statuses(conn) == ["abandoned"]
    cli.env["SLSYNC_DATABASE_URL"] = database_url
    assert_whole_after_the_next_run(conn, cli, [source_id])


def test_a_statement_past_the_statement_timeout_is_cancelled_and_charged_to_no_source(conn, cli: Cli) -> None:
    source_id = add_mock_source(conn)
    conn.execute(
        "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(5); RETURN NULL;"
        " END $$; CREATE TRIGGER slow BEFORE INSERT ON sl_mentions EXECUTE FUNCTION slow_insert()"
    )
    before = state(conn, [source_id])
    started = time.monotonic()
    stopped = cli("sync", "source", str(source_id), "--json", env={"SLSYNC_DB_STATEMENT_TIMEOUT_SECONDS": "1"})
    assert stopped.returncode == 1 and time.monotonic() - started < 5
    line = one_line(stopped.stderr)
    assert "a statement ran past the statement timeout of 1 s (SQLSTATE 57014)" in line
    doc = stopped.json()  # --json still prints its one document
    assert doc["status"] == "stopped" and doc["success"] is False
    assert state(conn, [source_id]) == before and stored_ids(conn, source_id) == []
    conn.execute("DROP TRIGGER slow ON sl_mentions")
    assert_whole_after_the_next_run(conn, cli, [source_id])


# --- deadlocks, serialization failures, lost connections ------------------------------------------


def test_a_deadlock_with_another_session_is_charged_to_no_source(conn, cli: Cli, database_url: str) -> None:
    source_id = add_mock_source(conn, page_delay=0.5)
    before = state(conn, [source_id])
    cli.env["SLSYNC_DB_LOCK_TIMEOUT_SECONDS"] = "30"
    with another_session_during_a_run(cli, conn, database_url, source_id) as (other, process):
        # The other session takes the source's row, then waits for the source's lock, which the run holds;
        # the run's next save waits for the row: a cycle, which PostgreSQL breaks by cancelling the run's
        # statement (the other session does not look for deadlocks for a minute).
        other.execute("SET LOCAL deadlock_timeout = '60s'")
        other.execute("SELECT 1 FROM sl_sources WHERE id = %s FOR UPDATE", (source_id,))
        waiter = threading.Thread(
            target=other.execute, args=("SELECT pg_advisory_lock(%s, %s)", (db.LOCK_NAMESPACE, source_id))
        )
        waiter.start()
        out, err = process.communicate(timeout=60)
        waiter.join(timeout=10)
        other.execute("ROLLBACK")
    assert process.returncode == 1
    assert "a deadlock with another session" in one_line(err) and "40P01" in err
    assert state(conn, [source_id]) == before and run_statuses(conn) == ["abandoned"]
    mentions_and_cursor_agree(conn, source_id)
    assert_whole_after_the_next_run(conn, cli, [source_id])


def test_a_serialization_failure_is_charged_to_no_source(conn, cli: Cli, database_url: str, ordinary_role: Any) -> None:
    source_id = add_mock_source(conn, page_delay=0.3)
    # a role whose transactions are REPEATABLE READ: a row changed under a statement cannot be updated by it
    cli.env["SLSYNC_DATABASE_URL"] = ordinary_role(default_transaction_isolation="repeatable read")
    before = state(conn, [source_id])
    with another_session_during_a_run(cli, conn, database_url, source_id) as (other, process):
        other.execute("UPDATE sl_sources SET updated_at = now() WHERE id = %s", (source_id,))
        wait_for(lambda: waiting_for_a_lock(conn, other.info.backend_pid))
        other.execute("COMMIT")
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "could not serialize access due to concurrent update (SQLSTATE 40001)" in one_line(err)
    assert state(conn, [source_id]) == before and run_statuses(conn) == ["abandoned"]
    mentions_and_cursor_agree(conn, source_id)
    cli.env["SLSYNC_DATABASE_URL"] = database_url
    assert_whole_after_the_next_run(conn, cli, [source_id])


def test_a_terminated_connection_ends_the_command_after_printing_what_finished(conn, cli: Cli) -> None:
    fast = add_mock_source(conn, name="fast")
    slow = [add_mock_source(conn, name=f"slow{n}", page_delay=0.4) for n in range(3)]
    ids = [fast, *slow]
    process = cli.popen("sync", "due", "--concurrency", "2")

    def a_slow_run_saved_a_page() -> int | None:
        row = conn.execute(
            "SELECT l.pid FROM sl_sync_runs r JOIN pg_locks l ON l.locktype = 'advisory' AND l.objid = r.source_id"
            " AND l.objsubid = 2 AND l.granted WHERE r.status = 'running' AND r.pages >= 1 AND r.source_id <> %s",
            (fast,),
        ).fetchone()
        done = conn.execute("SELECT 1 FROM sl_sync_runs WHERE status = 'success'").fetchone()
        return row["pid"] if row and done else None

    backend = wait_for(a_slow_run_saved_a_page)
    conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    line = one_line(err)
    assert "the connection to PostgreSQL was lost (terminating connection due to administrator command)" in line
    assert f"source {fast}: ok: saved" in out  # what finished before the failure is printed
    summary = re.search(
        r"^(\d+) synced, (\d+) failed, (\d+) cut short, (\d+) skipped of 4; \d+ new mentions$", out, re.M
    )
    assert summary, out
    synced, failed, cut, skipped = map(int, summary.groups())
    assert synced >= 1 and failed == 0 and synced + cut + failed + skipped == 4
    assert [r["status"] for r in state(conn, ids)] == ["active"] * 4
    assert all(r["consecutive_failures"] == 0 for r in state(conn, ids))
    for source_id in slow:
        mentions_and_cursor_agree(conn, source_id)
    wait_for(lambda: no_claims_left(conn))
    conn.execute("UPDATE sl_sources SET next_sync_at = now()")
    assert_whole_after_the_next_run(conn, cli, ids)


def test_the_database_librarys_own_messages_reach_stderr_only_with_debug(capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    from slsync import logs

    loggers = [logging.getLogger(name) for name in ("slsync", "psycopg")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        for debug in (False, True):
            logs.setup("WARNING", "text", debug)
            logging.getLogger("psycopg").warning("error ignored in rollback on <psycopg.Connection [BAD]>")
            logging.getLogger("psycopg.pq").error("a lower logger of the library")
            err = capfd.readouterr().err
            if debug:
                assert err.count("slsync: ") == 2 and "error ignored in rollback" in err, err
            else:
                assert err == ""
    finally:
        for lg, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate


# --- connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "workers", "word"), [(4, 2, "2 workers"), (1, 1, "one source at a time")])
def test_with_fewer_connections_than_asked_sync_due_runs_with_what_it_gets(
    conn, cli: Cli, ordinary_role: Any, limit: int, workers: int, word: str
) -> None:
    ids = [add_mock_source(conn, name=f"s{n}") for n in range(10)]
    cli.env["SLSYNC_DATABASE_URL"] = ordinary_role(connection_limit=limit)
    started = time.monotonic()
    due = cli("sync", "due", "--concurrency", "8", "--json")
    assert due.returncode == 0 and time.monotonic() - started < 30
    [line] = due.stderr.strip().splitlines()
    needed = sync.connections_needed(8)
    assert needed == 1 + 8 + 2
    assert line == (
        f"slsync: warning: PostgreSQL gave {limit} of the {needed} connections --concurrency 8 needs (1 + 8 + 2);"
        f" syncing with {word}"
    )
    doc = due.json()
    assert sorted(r["source_id"] for r in doc["results"] if r["success"]) == ids and doc["workers"] == workers


# --- reporting ------------------------------------------------------------------------------------


def test_runs_cut_short_by_the_budget_are_counted_as_such_and_do_not_fail_the_command(
    conn, settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from slsync import cli

    ids = [add_mock_source(conn, name=f"s{n}", page_delay=0.2) for n in range(6)]
    # A budget of 3 s (below what SLSYNC_TIME_BUDGET_SECONDS allows, in-process only) for ~7 s of work.
    short = settings.model_copy(update={"time_budget_seconds": 3})
    batch = sync.sync_due(short, limit=50, concurrency=2)
    doc = batch.as_json()
    assert doc["sources_claimed"] == 6 and doc["sources_cut_short"] == doc["sources_partial"] >= 1
    assert doc["sources_synced"] + doc["sources_cut_short"] + doc["sources_failed"] + doc["sources_skipped"] == 6
    cli._report_batch(batch, as_json=False)  # no Exit: cut short is not failed
    out = capsys.readouterr().out
    assert "FAILED" not in out and out.count(": partial: stopped after") == doc["sources_partial"]
    assert f"of 6; {doc['total_mentions_saved']} new mentions" in out
    assert "then the time budget ran out (the rest stay new for the next sync due)" in out
    new = conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'new'").fetchone()["n"]
    assert new > 0
    # the next sync due labels that backlog, though none of those sources is due
    conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 hour' WHERE id = ANY(%s)", (ids,))
    later = sync.sync_due(settings, limit=50, concurrency=2)
    assert later.results == [] and later.analysis["analyzed"] == new


def test_the_backlog_of_a_killed_run_is_labelled_by_the_next_sync_due(conn, cli: Cli) -> None:
    source_id = add_mock_source(conn, page_delay=0.3)
    victim = cli.popen("sync", "source", str(source_id))
    wait_for(lambda: stored_ids(conn, source_id))
    victim.kill()
    victim.wait(timeout=10)
    wait_for(lambda: lock_released(conn, source_id))  # the server has ended its session: nothing more comes
    saved = len(stored_ids(conn, source_id))
    conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 hour'")  # not due: nothing to sync
    due = cli.ok("sync", "due")
    assert due.stdout.splitlines() == [
        "0 synced, 0 failed, 0 cut short, 0 skipped of 0; 0 new mentions",
        f"analysis: {saved} mentions labelled by builtin",
    ]
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'new'").fetchone()["n"] == 0


# --- the server dies, restarts, refuses, runs out of disk (a server of the tests' own) -----------


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    server = OwnServer()
    server.start()
    yield server
    server.remove()


_own_databases = itertools.count()


@pytest.fixture
def own(own_server: OwnServer, tmp_path) -> Iterator[tuple[OwnServer, Cli, db.Connection]]:
    """A fresh database on the server of the tests' own, its schema, a CLI pointed at it and a connection."""
    if not own_server.running():
        own_server.start()
    url = own_server.create_database(f"own_{os.getpid()}_{next(_own_databases)}")
    work = tmp_path / "cwd"
    work.mkdir()
    cli = Cli({**base_env(tmp_path), "SLSYNC_DATABASE_URL": url}, work)
    cli.ok("source", "list")  # migrates
    conn = _reconnecting(url)
    yield own_server, cli, conn
    conn.close()


def _reconnecting(url: str) -> db.Connection:
    return db.Connection.connect(url, autocommit=True, row_factory=dict_row)


def sources_saving(cli: Cli, conn: db.Connection, count: int) -> tuple[list[int], Any]:
    ids = [add_mock_source(conn, name=f"s{n}", page_delay=0.15) for n in range(count)]
    process = cli.popen("sync", "due", "--concurrency", "4")
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM sl_sync_runs WHERE pages >= 2").fetchone()["n"] >= 2)
    return ids, process


def ended_with_one_line(process: Any) -> str:
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1, (out, err)
    return one_line(err)


def test_a_killed_server_ends_the_command_with_one_line_and_the_next_run_loses_nothing(own) -> None:
    server, cli, conn = own
    ids, process = sources_saving(cli, conn, 6)
    server.kill()
    line = ended_with_one_line(process)
    assert "the connection to PostgreSQL was lost" in line
    server.start()
    conn = _reconnecting(conn.info.dsn)
    for source_id in ids:
        mentions_and_cursor_agree(conn, source_id)
    assert {r["status"] for r in state(conn, ids)} == {"active"}
    assert {r["consecutive_failures"] for r in state(conn, ids)} == {0}
    assert_whole_after_the_next_run(conn, cli, ids)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_restarting_server_ends_the_command_with_one_line_and_the_next_run_loses_nothing(own, mode: str) -> None:
    server, cli, conn = own
    ids, process = sources_saving(cli, conn, 6)
    server.restart(mode)
    line = ended_with_one_line(process)
    assert "the connection to PostgreSQL was lost" in line
    conn = _reconnecting(conn.info.dsn)
    assert {r["consecutive_failures"] for r in state(conn, ids)} == {0}
    for source_id in ids:
        mentions_and_cursor_agree(conn, source_id)
    assert_whole_after_the_next_run(conn, cli, ids)


def test_a_refusing_server_gives_one_line_and_exit_1(own) -> None:
    server, cli, conn = own
    add_mock_source(conn)
    conn.close()
    server.stop()
    try:
        for command in (("sync", "due"), ("status",), ("--debug", "sync", "due")):
            refused = cli(*command)
            assert refused.returncode == 1
            if "--debug" not in command:
                assert "cannot connect to PostgreSQL at " in one_line(refused.stderr)
    finally:
        server.start()


def test_a_full_disk_stops_the_command_with_one_line_and_charges_no_source(own) -> None:
    server, cli, conn = own
    try:
        tablespace = server.tiny_tablespace(f"tiny_{os.getpid()}", size="1m")
        name = tablespace.__enter__()
    except (OSError, Exception) as exc:  # mounting a tmpfs needs root (CAP_SYS_ADMIN)
        pytest.skip(f"cannot mount a small filesystem here ({exc}); see tests/own_server.py")
    try:
        # a mention's row and its raw payload's: both tables fill the disk
        tables = ("sl_mentions", "sl_mention_raw")
        indexes = [
            r["indexname"]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = ANY(%s)", (list(tables),))
        ]
        for table in tables:
            conn.execute(f"ALTER TABLE {table} SET TABLESPACE {name}")
        for index in indexes:
            conn.execute(f"ALTER INDEX {index} SET TABLESPACE {name}")
        ids = [add_mock_source(conn, name=f"s{n}") for n in range(8)]
        before = state(conn, ids)
        due = cli("sync", "due", "--concurrency", "4", "--json")
        assert due.returncode == 1
        line = one_line(due.stderr)
        assert "the database server's disk is full: could not extend file" in line and "(SQLSTATE 53100)" in line
        doc = due.json()
        assert doc["sources_failed"] == 0 and doc["error"] == line.removeprefix("slsync: error: ")
        assert state(conn, ids) == before  # not failing, no back-off, no error message: the disk's fault
        for source_id in ids:
            mentions_and_cursor_agree(conn, source_id)
        # space again: the next run continues every source where it stopped
        for table in tables:
            conn.execute(f"ALTER TABLE {table} SET TABLESPACE pg_default")
        for index in indexes:
            conn.execute(f"ALTER INDEX {index} SET TABLESPACE pg_default")
        assert_whole_after_the_next_run(conn, cli, ids)
    finally:
        with psycopg.connect(server.url(), autocommit=True) as admin:
            admin.execute(f"DROP TABLESPACE IF EXISTS {name}")
        tablespace.__exit__(None, None, None)
