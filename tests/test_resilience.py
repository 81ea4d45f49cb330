"""Breaking things on purpose: faults from the API, crashes, overlaps and failing sources over days."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from slsync import db, http, sync
from slsync.connectors.mock import first_seq_since, latest_seq
from slsync.errors import Retriable
from tests.conftest import Cli, Clock, add_mock_source, add_x_source, db_now, stored_ids
from tests.fakes.x_api import XApi

ALL = 250
X_LIMITS = http.header_limits("x-rate-limit-")


def stored_x_ids(conn: db.Connection, source_id: int) -> list[str]:
    return sorted(stored_ids(conn, source_id), key=int)


def next_run_stores_the_full_set(x_cli: Cli, x_api: XApi, conn: db.Connection, source_id: int) -> None:
    x_api.faults.clear()
    x_api.fault_always = None
    result = x_cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["success"], result
    assert stored_x_ids(conn, source_id) == sorted((p["id"] for p in x_api.posts), key=int)
    counts = conn.execute(
        "SELECT count(*) AS n, count(DISTINCT external_id) AS d FROM sl_mentions WHERE source_id = %s", (source_id,)
    ).fetchone()
    assert counts["n"] == counts["d"] == ALL


def test_503_twice_then_success_completes_the_run(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(ALL)
    source_id = add_x_source(x_cli)
    x_api.faults = [503, 503]
    result = x_cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["success"] and result["mentions_saved"] == ALL and result["pages"] == 3
    assert len(x_api.searches) == 5  # two refused attempts, then three pages
    assert stored_x_ids(conn, source_id) == sorted((p["id"] for p in x_api.posts), key=int)


def test_500_on_every_call_fails_cleanly_after_the_capped_retries(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(ALL)
    source_id = add_x_source(x_cli)
    x_api.fault_always = 500
    started = time.monotonic()
    failed = x_cli("sync", "source", str(source_id), "--json")
    assert failed.returncode == 1 and time.monotonic() - started < 15
    doc = failed.json()
    assert doc["success"] is False and doc["status"] == "failing" and "HTTP 500" in doc["message"]
    assert len(x_api.searches) == http.DEFAULT_POLICY.attempts
    source = db.get_source(conn, source_id)
    assert source.consecutive_failures == 1 and source.committed_cursor is None
    assert "Traceback" not in failed.stderr
    next_run_stores_the_full_set(x_cli, x_api, conn, source_id)


def test_401_is_not_retried(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(5)
    source_id = add_x_source(x_cli)
    x_api.faults = [401]
    failed = x_cli("sync", "source", str(source_id), "--json")
    assert failed.returncode == 1 and failed.json()["status"] == "error"
    assert len(x_api.searches) == 1


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("invalid_json", "not valid JSON"),
        ("wrong_shape", "unexpected response"),
        ("truncated", "broke off its response"),
    ],
)
def test_a_malformed_page_fails_the_run_with_a_clear_line_and_loses_nothing(
    x_cli: Cli, x_api: XApi, conn, fault: str, words: str
) -> None:
    x_api.add_posts(ALL)
    source_id = add_x_source(x_cli)
    x_api.faults = [None] + [fault] * http.DEFAULT_POLICY.attempts  # page 1 is fine, page 2 is broken
    failed = x_cli("sync", "source", str(source_id))
    assert failed.returncode == 1
    line, analysed = failed.stdout.strip().splitlines()  # the run's line; then the saved page was analysed
    assert words in line and "FAILED" in line and "Traceback" not in failed.stderr
    assert analysed == "analysis: 100 mentions labelled by builtin"
    assert len(stored_x_ids(conn, source_id)) == 100  # the first page stays saved
    source = db.get_source(conn, source_id)
    assert source.committed_cursor is None  # and the cursor did not move
    run = conn.execute("SELECT status, message FROM sl_sync_runs ORDER BY id DESC LIMIT 1").fetchone()
    assert run["status"] == "failed" and words in run["message"]
    next_run_stores_the_full_set(x_cli, x_api, conn, source_id)


def test_a_record_that_cannot_be_normalized_is_skipped_and_counted_and_the_rest_is_saved(
    x_cli: Cli, x_api: XApi, conn
) -> None:
    x_api.add_posts(30)
    x_api.odd_records = ["not a post", {"text": "a post without an id"}, {"id": "12ab", "text": "a bad id"}]
    source_id = add_x_source(x_cli)
    result = x_cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["success"] and result["mentions_saved"] == 30 and result["errors"] == 3
    run = conn.execute("SELECT errors, saved FROM sl_sync_runs").fetchone()
    assert run == {"errors": 3, "saved": 30}


def test_a_slow_answer_times_out_and_is_retried(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(20)
    source_id = add_x_source(x_cli)
    x_api.faults = [("slow", 2.0)]
    result = x_cli.ok("sync", "source", str(source_id), "--json", env={"SLSYNC_HTTP_TIMEOUT_SECONDS": "0.5"}).json()
    assert result["success"] and result["mentions_saved"] == 20


def test_retry_after_is_honoured_and_a_near_reset_429_is_waited_out() -> None:
    calls: list[int] = []
    waits: list[float] = []
    answers = [
        httpx.Response(503, headers={"Retry-After": "7"}),
        httpx.Response(429, headers={"x-rate-limit-reset": str(int(time.time()) + 5)}),
        httpx.Response(200, json={"ok": True}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return answers[len(calls) - 1]

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        response = http.send(client, "GET", "http://127.0.0.1/x", platform="X", read_limits=X_LIMITS,
                             sleep=waits.append)  # fmt: skip
    assert response.status_code == 200 and len(calls) == 3
    assert waits[0] == 7 and 3 <= waits[1] <= 7


def test_a_far_reset_and_a_long_retry_after_are_not_waited() -> None:
    far = httpx.Response(429, headers={"x-rate-limit-reset": str(int(time.time()) + 600)})
    long = httpx.Response(503, headers={"Retry-After": "3600"})
    for answer in (far, long):
        waits: list[float] = []
        with httpx.Client(transport=httpx.MockTransport(lambda r, a=answer: a)) as client:
            response = http.send(client, "GET", "http://127.0.0.1/x", platform="X", read_limits=X_LIMITS,
                                 sleep=waits.append)  # fmt: skip
        assert response.status_code == answer.status_code and waits == []


def test_retries_never_wait_past_the_deadline() -> None:
    waits: list[float] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with httpx.Client(transport=httpx.MockTransport(refuse)) as client, pytest.raises(Retriable):
        http.send(client, "GET", "http://127.0.0.1/x", platform="X", deadline=time.monotonic() + 0.01,
                  sleep=waits.append)  # fmt: skip
    assert all(w < 0.01 for w in waits)


def test_a_run_out_of_time_stops_between_pages_and_the_next_run_continues(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn, page_delay=0.3)
    short = settings.model_copy(update={"time_budget_seconds": 10})
    options = sync.RunOptions("manual", deadline=time.monotonic() + 1.0)
    partial = sync.run_source(conn, short, source_id, options)
    assert partial.status == "partial" and not partial.success and 2 <= partial.pages <= 5
    source = db.get_source(conn, source_id)
    assert source.committed_cursor is None and source.inflight_cursor and source.consecutive_failures == 0
    assert source.next_sync_at <= db_now(conn)  # due again at once
    conn.execute("UPDATE sl_sources SET config = config - 'options' WHERE id = %s", (source_id,))
    done = sync.sync_source(settings, source_id)
    assert done.success and done.duplicates == 0
    assert done.mentions_saved + partial.mentions_saved == len(stored_ids(conn, source_id))


# --- crashes and overlaps ---------------------------------------------------------------------------


def test_twenty_sigkills_at_random_moments_lose_nothing_and_duplicate_nothing(conn, cli: Cli) -> None:
    rng = random.Random(20261124)
    source_id = add_mock_source(conn, page_delay=0.04)
    begin = datetime.now(UTC)
    since = (begin - timedelta(days=7)).isoformat()
    kills = attempt = 0
    while kills < 20:
        attempt += 1
        # alternate runs that resume the interrupted one with fresh multi-page runs over the whole window
        args = ("sync", "source", str(source_id)) + (("--since", since) if attempt % 2 else ())
        process = cli.popen(*args)
        time.sleep(rng.uniform(0.25, 0.8))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        source = db.get_source(conn, source_id)
        seqs = sorted(int(i.rsplit("-", 1)[1]) for i in stored_ids(conn, source_id))
        assert len(seqs) == len(set(seqs))
        if source.committed_cursor:  # the committed cursor never runs ahead of what is stored
            newest = source.committed_cursor["newest_seq"]
            assert set(range(seqs[0], newest + 1)) <= set(seqs)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and db.try_lock_source(conn, source_id) is False:
            time.sleep(0.05)
        db.unlock_source(conn, source_id)
    conn.execute("UPDATE sl_sources SET config = config - 'options' WHERE id = %s", (source_id,))
    assert cli.ok("sync", "source", str(source_id), "--json").json()["success"]
    source = db.get_source(conn, source_id)
    newest = source.committed_cursor["newest_seq"]
    assert newest == latest_seq(source_id, source.last_sync_at)
    seqs = sorted(int(i.rsplit("-", 1)[1]) for i in stored_ids(conn, source_id))
    first = first_seq_since(source_id, begin - timedelta(days=7))
    assert seqs == list(range(seqs[0], newest + 1))  # 0 missing, 0 duplicates
    assert abs(seqs[0] - first) <= 1  # and it starts where the 7-day backfill begins
    statuses = {r["status"] for r in conn.execute("SELECT status FROM sl_sync_runs").fetchall()}
    assert statuses <= {"abandoned", "success"}


def test_three_overlapping_sync_due_runs_sync_each_due_source_once_in_ten_trials(conn, cli: Cli) -> None:
    ids = [add_mock_source(conn, name=f"s{n:02d}", page_delay=0.005) for n in range(20)]
    for trial in range(10):
        conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 second'")
        mark = db_now(conn)
        processes = [cli.popen("sync", "due", "--concurrency", "3", "--json") for _ in range(3)]
        synced: list[int] = []
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
            synced += [r["source_id"] for r in json.loads(out)["results"] if r["success"]]
        assert sorted(synced) == ids, f"trial {trial}"
        runs = conn.execute(
            "SELECT source_id, count(*) AS n FROM sl_sync_runs WHERE started_at >= %s GROUP BY source_id", (mark,)
        ).fetchall()
        assert sorted((r["source_id"], r["n"]) for r in runs) == [(i, 1) for i in ids], f"trial {trial}"


# --- backoff ------------------------------------------------------------------------------------------


def test_a_failing_source_backs_off_while_its_neighbours_keep_their_schedule(conn, settings, clock: Clock) -> None:
    failing = add_mock_source(conn, name="broken", fail_after_page=0, fail_with="retriable")
    healthy = [add_mock_source(conn, name=f"ok{n}") for n in range(3)]
    for _ in range(48 * 4):  # 48 hours of 15-minute cron runs
        batch = sync.sync_due(settings, limit=50, concurrency=1)
        assert not [r for r in batch.failed if r.source_id != failing]
        # time passes: everything scheduled moves 15 minutes closer
        conn.execute(
            "UPDATE sl_sources SET next_sync_at = next_sync_at - interval '15 minutes',"
            " last_sync_at = last_sync_at - interval '15 minutes'"
        )
        clock.advance(minutes=15)
    counts = dict(
        (r["source_id"], r["n"])
        for r in conn.execute("SELECT source_id, count(*) AS n FROM sl_sync_runs GROUP BY source_id").fetchall()
    )
    assert counts[failing] <= 12
    assert all(counts[h] == 48 * 4 for h in healthy)
    source = db.get_source(conn, failing)
    assert source.status == "failing" and source.consecutive_failures == counts[failing]
    status = conn.execute("SELECT error_message FROM sl_sources WHERE id = %s", (failing,)).fetchone()
    assert "fail_after_page" in status["error_message"]
