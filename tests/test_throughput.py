"""Parallel workers: a shared rate-limit budget per credential, pooled connections that never keep a
source lock, and a run log that does not grow without end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from slsync import db, sync
from slsync.budget import RateBudgets
from slsync.errors import RateLimited
from slsync.models import RateLimit
from tests.conftest import Cli, add_mock_source, add_x_source
from tests.fakes.x_api import XApi


def test_the_budget_counts_calls_within_a_window_and_trusts_a_new_window() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    budgets = RateBudgets(now=lambda: now)
    with budgets.call("x:app:1", "X"):  # nothing known yet: this call learns the window
        budgets.record("x:app:1", RateLimit(limit=450, remaining=2, reset_at=now + timedelta(minutes=5)))
    for _ in range(2):
        with budgets.call("x:app:1", "X"):
            pass
    with pytest.raises(RateLimited) as spent, budgets.call("x:app:1", "X"):
        pass
    assert spent.value.reset_at == now + timedelta(minutes=5)
    with budgets.call("x:user:7", "X"):  # another credential has its own window
        pass
    budgets.record("x:app:1", RateLimit(remaining=5, reset_at=now + timedelta(minutes=5)))  # never raises the count
    with pytest.raises(RateLimited), budgets.call("x:app:1", "X"):
        pass
    budgets.record("x:app:1", RateLimit(remaining=450, reset_at=now + timedelta(minutes=20)))  # a new window
    with budgets.call("x:app:1", "X"):
        pass


def test_while_a_window_is_unknown_one_call_goes_first_and_the_others_wait() -> None:
    import threading

    budgets = RateBudgets()
    reset = datetime.now(UTC) + timedelta(minutes=5)
    order: list[str] = []
    first_in = threading.Event()

    def probe() -> None:
        with budgets.call("k", "X"):
            first_in.set()
            order.append("probe")
            budgets.record("k", RateLimit(remaining=1, reset_at=reset))

    def follower(name: str) -> None:
        first_in.wait()
        try:
            with budgets.call("k", "X"):
                order.append(name)
        except RateLimited:
            order.append(f"{name} limited")

    threads = [threading.Thread(target=probe)] + [threading.Thread(target=follower, args=(f"w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order[0] == "probe"  # the others waited for what the first call learned: one call was left
    assert sum(1 for o in order[1:] if o.endswith("limited")) == 2 and len(order) == 4


def test_parallel_workers_share_one_app_window_instead_of_racing_into_429s(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(150)  # 2 pages a source
    x_api.remaining = 7  # the app token has 7 calls left in this window
    x_api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=12)
    ids = [add_x_source(x_cli, name=f"s{n}") for n in range(8)]
    # each source in its own tenant, so every one of them has 150 posts to store
    conn.execute("UPDATE sl_sources SET tenant_id = id")
    doc = x_cli.ok("sync", "due", "--concurrency", "8", "--json").json()
    statuses = [r["status"] for r in doc["results"]]
    assert [r.status for r in x_api.searches].count(429) == 0  # the workers never ran into the limit
    assert len(x_api.searches) == 7  # and used the window to the last call
    assert doc["sources_failed"] == 0 and "rate_limited" in statuses
    assert doc["sources_rate_limited"] + doc["sources_synced"] == len(ids)
    limited = [r["source_id"] for r in doc["results"] if r["status"] == "rate_limited"]
    for source_id in limited:
        assert db.get_source(conn, source_id).next_sync_at >= x_api.reset_at - timedelta(seconds=1)


def test_a_pooled_connection_never_keeps_a_source_lock(settings) -> None:
    with db.connect(settings) as conn:
        source_id = add_mock_source(conn)
    with db.pool(settings, 1) as connections:
        with connections.connection() as conn:
            assert db.try_lock_source(conn, source_id)  # as if a run forgot to unlock
        with connections.connection() as conn:  # the same connection, reset on its way back
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert row.fetchone()["n"] == 0


def test_sync_due_prunes_old_run_records_in_bounded_batches(conn, settings) -> None:
    source_id = add_mock_source(conn)
    conn.execute(
        "INSERT INTO sl_sync_runs (source_id, tenant_id, trigger, started_at, finished_at, status)"
        " SELECT %s, 1, 'due', now() - make_interval(days => d), now() - make_interval(days => d), 'success'"
        " FROM generate_series(1, 200) AS d",
        (source_id,),
    )
    conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 hour'")
    sync.sync_due(settings.model_copy(update={"run_log_days": 30}), limit=10, concurrency=1)
    left = conn.execute(
        "SELECT min(started_at) > now() - interval '31 days' AS recent, count(*) AS n FROM sl_sync_runs"
    )
    assert left.fetchone() == {"recent": True, "n": 29}
    assert db.prune_runs(conn, keep_days=1, batch=5, batches=2) == 10  # bounded: 2 statements of 5
