"""Parallel workers: a shared rate-limit budget per credential, worker connections that never keep a
source lock, and a run log that does not grow without end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from slsync import db, sync
from slsync.budget import RateBudgets
from slsync.errors import RateLimited
from slsync.models import RateLimit
from tests.conftest import Cli, add_mock_source, add_x_source
from tests.fakes.x_api import XApi
from tests.test_processes import lock_released, wait_for


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


def test_each_worker_keeps_its_connection_to_the_api_across_its_sources(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(150)  # 2 pages a source
    for n in range(9):
        add_x_source(x_cli, name=f"s{n}")
    conn.execute("UPDATE sl_sources SET tenant_id = id")
    doc = x_cli.ok("sync", "due", "--concurrency", "3", "--json").json()
    assert doc["sources_synced"] == 9 and len(x_api.searches) == 18
    # each worker's client keeps one connection alive across its pages and sources (a client per source
    # or per request would open 9 or 18)
    assert x_api.connections <= 3


def test_a_worker_connection_never_keeps_a_source_lock_after_the_command(conn, settings) -> None:
    source_id = add_mock_source(conn)
    workers = db.open_connections(settings, 2)
    assert len(workers) == 2 and all(c.info.transaction_status.name == "IDLE" for c in workers)
    assert db.try_lock_source(workers[0], source_id)  # as if a run forgot to unlock
    assert not db.try_lock_source(conn, source_id)
    for worker in workers:  # what sync due does with them when its workers end
        worker.close()
    wait_for(lambda: lock_released(conn, source_id), timeout=10)  # the server ends the session at once
    assert db.try_lock_source(conn, source_id)


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


# --- the save path ----------------------------------------------------------------------------------


def _stored(conn: db.Connection, external_id: str) -> dict:
    row = conn.execute(
        "SELECT url, content, author_name, author_handle, author_followers, author_verified, published_at,"
        " likes_count, comments_count, shares_count, media_type, media_urls, location, language, r.raw,"
        " r.mention_id IS NULL AS raw_is_sql_null"
        " FROM sl_mentions m LEFT JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id)"
        " WHERE external_id = %s",
        (external_id,),
    ).fetchone()
    assert row is not None, external_id
    return row


def test_a_saved_page_keeps_every_field_exactly_and_counts_new_and_duplicates_atomically(conn) -> None:
    from slsync.models import Mention, Page

    source = db.get_source(conn, add_mock_source(conn))
    run_id = db.begin_run(conn, source, "manual")
    awkward_urls = ("https://m.example/a,b{c}", 'say "hi"', "back\\slash\\", "NULL", " spaced ", "", "ünï😀")
    full = Mention(
        platform="mock", external_id="full", published_at=datetime(2026, 3, 1, 12, 30, 15, 123456,
        tzinfo=timezone(timedelta(hours=5, minutes=30))), url="https://m.example/p?q=1&r=\"2\"",
        content="Acme \u202eevil\u202c 😀 «quotes» \"double\" 'single' back\\slash\nnew line\ttab \u2028 {a,b}",
        author_name="Zoë", author_handle="zoe", author_followers=2**62, author_verified=True, likes_count=0,
        comments_count=7, shares_count=-1, media_type="image", media_urls=awkward_urls, location="Zürich",
        language="de", raw={"text": "ünï 😀", "nested": {"list": [1, None, "x"], "null": None}, "n": 1.5},
    )  # fmt: skip
    bare = Mention(platform="mock", external_id="bare", published_at=datetime(2026, 3, 1, tzinfo=UTC))
    empty = Mention(platform="mock", external_id="empty", published_at=datetime(2026, 3, 1, tzinfo=UTC),
                    media_urls=(), raw={}, author_verified=False, content="")  # fmt: skip
    page = Page(
        mentions=(full, bare, empty, bare),  # the same post twice in one page, as a paging API may return it
        cursor={"next": "abc"},
        rate_limit=RateLimit(limit=450, remaining=12, reset_at=datetime(2026, 3, 1, 13, tzinfo=UTC)),
        errors=2,
    )
    assert db.save_page(conn, source, run_id, page) == 3

    got = _stored(conn, "full")
    same = ("url", "content", "author_name", "author_handle", "author_followers", "author_verified", "likes_count")
    same += ("comments_count", "shares_count", "media_type", "location", "language", "raw")
    for field in same:
        assert got[field] == getattr(full, field), field
    assert got["published_at"] == full.published_at and got["media_urls"] == list(awkward_urls)
    got = _stored(conn, "bare")
    assert got["raw_is_sql_null"] and got["media_urls"] is None and got["content"] is None
    assert got["author_followers"] is None and got["author_verified"] is None
    got = _stored(conn, "empty")
    assert got["media_urls"] == [] and got["raw"] == {} and got["author_verified"] is False and got["content"] == ""

    counted = "SELECT pages, fetched, saved, duplicates, errors FROM sl_sync_runs WHERE id = %s"
    assert conn.execute(counted, (run_id,)).fetchone() == {
        "pages": 1, "fetched": 4, "saved": 3, "duplicates": 1, "errors": 2
    }  # fmt: skip
    after = db.get_source(conn, source.id)
    assert after.mentions_count == 3 and after.inflight_cursor == {"next": "abc"}
    assert (after.rate_limit_limit, after.rate_limit_remaining) == (450, 12)

    # the same page again: nothing new, every mention a duplicate, the source's count unchanged
    assert db.save_page(conn, source, run_id, page) == 0
    assert conn.execute(counted, (run_id,)).fetchone() == {
        "pages": 2, "fetched": 8, "saved": 3, "duplicates": 5, "errors": 4
    }  # fmt: skip
    assert db.get_source(conn, source.id).mentions_count == 3
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions").fetchone()["n"] == 3


def test_a_page_that_fails_to_save_leaves_no_mention_and_no_counter_behind(conn) -> None:
    from slsync.models import Mention, Page

    source = db.get_source(conn, add_mock_source(conn))
    run_id = db.begin_run(conn, source, "manual")
    good = Mention(platform="mock", external_id="good", published_at=datetime(2026, 3, 1, tzinfo=UTC))
    too_big = Mention(platform="mock", external_id="bad", published_at=datetime(2026, 3, 1, tzinfo=UTC),
                      likes_count=2**64)  # fmt: skip
    with pytest.raises(Exception, match="bigint"):
        db.save_page(conn, source, run_id, Page(mentions=(good, too_big), cursor={"next": "x"}))
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions").fetchone()["n"] == 0
    assert db.get_source(conn, source.id).mentions_count == 0 and db.get_source(conn, source.id).inflight_cursor is None
    run = conn.execute("SELECT pages, fetched FROM sl_sync_runs WHERE id = %s", (run_id,)).fetchone()
    assert run == {"pages": 0, "fetched": 0}


def test_concurrent_workers_saving_overlapping_pages_store_and_count_each_mention_once(settings) -> None:
    """Two sources of one tenant and platform share the unique key: eight workers race over the same posts."""
    import threading

    from slsync.connectors.mock import stream_post
    from slsync.models import Page

    with db.connect(settings) as conn:
        sources = [db.get_source(conn, add_mock_source(conn, name=f"s{n}")) for n in range(2)]
    posts = [stream_post(sources[0].id, "Acme", seq) for seq in range(1, 651)]
    saved: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        source = sources[n % 2]
        try:
            with db.connect(settings, migrate_schema=False, for_sync=True) as conn:
                run_id = db.begin_run(conn, source, "manual")
                start.wait()
                mine = posts[n * 50 : n * 50 + 300]  # each worker overlaps its neighbours by 250 posts
                for first in range(0, len(mine), 100):
                    page = Page(mentions=tuple(mine[first : first + 100]), cursor={"worker": n, "at": first})
                    saved.append(db.save_page(conn, source, run_id, page))
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    with db.connect(settings) as conn:
        stored = conn.execute("SELECT count(*) AS n, count(DISTINCT external_id) AS d FROM sl_mentions").fetchone()
        assert stored == {"n": 650, "d": 650} and sum(saved) == 650
        runs = conn.execute("SELECT source_id, sum(saved) AS saved, sum(fetched) AS fetched, sum(duplicates) AS dups"
                            " FROM sl_sync_runs GROUP BY source_id").fetchall()  # fmt: skip
        assert sum(r["saved"] for r in runs) == 650 and sum(r["fetched"] for r in runs) == 8 * 300
        assert sum(r["dups"] for r in runs) == 8 * 300 - 650
        for run in runs:
            assert db.get_source(conn, run["source_id"]).mentions_count == run["saved"]
            owned = conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE source_id = %s", (run["source_id"],))
            assert owned.fetchone()["n"] == run["saved"]
