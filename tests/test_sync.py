"""The engine's guarantees against a real PostgreSQL, with a settable clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from psycopg.types.json import Jsonb

from slsync import db, sync
from slsync.connectors.mock import latest_seq, stream_post
from slsync.errors import NotFound
from tests.conftest import Clock, add_mock_source, stored_ids


def expected_ids(source_id: int, first: int, last: int) -> list[str]:
    return sorted(f"mock-{source_id}-{seq}" for seq in range(first, last + 1))


def runs(conn: db.Connection, source_id: int) -> list[dict]:
    return conn.execute(
        "SELECT status, pages, fetched, saved, duplicates, errors, message FROM sl_sync_runs"
        " WHERE source_id = %s ORDER BY id",
        (source_id,),
    ).fetchall()


def test_first_sync_backfills_seven_days_and_a_resync_fetches_only_new_posts(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn)
    first = sync.sync_source(settings, source_id)
    assert first.success and 1000 <= first.mentions_saved <= 1010
    assert first.mentions_fetched == first.mentions_saved and first.duplicates == 0 and first.pages == 11
    ids = stored_ids(conn, source_id)
    assert len(ids) == first.mentions_saved
    source = db.get_source(conn, source_id)
    assert source.committed_cursor == {"newest_seq": latest_seq(source_id, clock.now)}
    assert source.inflight_cursor is None and source.mentions_count == len(ids)
    # the next sync is due one interval after this one started (not ended: a cron tick must not miss it)
    started = conn.execute("SELECT started_at FROM sl_sync_runs WHERE source_id = %s", (source_id,)).fetchone()
    assert source.last_sync_at is not None and source.next_sync_at - started["started_at"] == timedelta(minutes=15)

    again = sync.sync_source(settings, source_id)
    assert again.success and again.mentions_fetched == 0 and again.mentions_saved == 0

    before = latest_seq(source_id, clock.now)
    clock.advance(hours=1)
    posted = latest_seq(source_id, clock.now) - before  # one post per 10-minute slot: 5 to 7
    assert 5 <= posted <= 7
    later = sync.sync_source(settings, source_id)
    assert later.mentions_fetched == posted and later.mentions_saved == posted and later.duplicates == 0
    assert len(stored_ids(conn, source_id)) == len(ids) + posted


def test_the_unique_key_absorbs_refetched_posts(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn)
    sync.sync_source(settings, source_id)
    before = stored_ids(conn, source_id)
    # --since reaches back over what is stored: everything is fetched again, nothing is stored twice
    refetch = sync.sync_source(settings, source_id, since=clock.now - timedelta(days=2))
    assert refetch.success and refetch.mentions_fetched >= 280
    assert refetch.mentions_saved == 0 and refetch.duplicates == refetch.mentions_fetched
    assert stored_ids(conn, source_id) == before
    # the same post saved directly is a duplicate too
    source = db.get_source(conn, source_id)
    post = stream_post(source_id, "Acme", latest_seq(source_id, clock.now))
    with conn.transaction():
        assert db.insert_mentions(conn, source, [post, post]) == 0
    assert db.get_source(conn, source_id).mentions_count == len(before)


def test_the_same_post_in_two_tenants_is_stored_once_per_tenant(conn, settings, clock: Clock) -> None:
    one = add_mock_source(conn, tenant_id=1)
    two = add_mock_source(conn, tenant_id=2)
    post = stream_post(one, "Acme", 5)
    for source_id in (one, two):
        with conn.transaction():
            assert db.insert_mentions(conn, db.get_source(conn, source_id), [post]) == 1
    count = conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE external_id = %s", (post.external_id,)).fetchone()
    assert count["n"] == 2


def test_pages_are_written_together_up_to_a_thousand_mentions_or_a_second(
    conn, settings, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, int, dict]] = []
    save_pages = db.save_pages

    def recording(conn, source, run_id, pages, **options):  # noqa: ANN001, ANN003, ANN202
        saved = save_pages(conn, source, run_id, pages, **options)
        inflight = db.get_source(conn, source.id).inflight_cursor
        writes.append((len(pages), sum(len(p.mentions) for p in pages), inflight))
        assert inflight == dict(pages[-1].cursor)  # the cursor of the last page written, with its mentions
        return saved

    monkeypatch.setattr(db, "save_pages", recording)
    backfill = sync.sync_source(settings, add_mock_source(conn, name="fast"))
    assert backfill.success and backfill.pages == 11
    assert [(pages, mentions) for pages, mentions, _ in writes] == [(10, 1000), (1, backfill.mentions_fetched - 1000)]

    writes.clear()
    monkeypatch.setattr(sync, "WRITE_SECONDS", 0.3)
    slow_id = add_mock_source(conn, name="slow", page_delay=0.2)
    slow = sync.sync_source(settings, slow_id, since=clock.now - timedelta(hours=100))
    assert slow.success and slow.pages in (6, 7)  # 600 or 601 posts, as the clock falls
    # a slow API: pages are written once the first of them has waited its time, long before a thousand gather
    assert len(writes) >= 2 and all(pages <= 3 for pages, _, _ in writes)
    assert sum(pages for pages, _, _ in writes) == slow.pages and sum(m for _, m, _ in writes) == slow.mentions_fetched
    assert runs(conn, slow_id)[-1]["pages"] == slow.pages


def test_a_failed_run_keeps_its_pages_and_does_not_move_the_committed_cursor(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn, fail_after_page=4)
    failed = sync.sync_source(settings, source_id)
    assert not failed.success and failed.status == "failing"
    assert failed.mentions_saved == 400 and "fail_after_page" in failed.message
    source = db.get_source(conn, source_id)
    assert source.committed_cursor is None and source.consecutive_failures == 1
    assert source.status == "failing" and "fail_after_page" in (source.error_message or "")
    assert source.inflight_cursor and "next_seq" in source.inflight_cursor  # retriable: resume next time
    assert source.next_sync_at > clock.now + timedelta(minutes=14)  # backing off, at least half of 2 x 15 min
    assert runs(conn, source_id)[-1]["status"] == "failed"

    conn.execute("UPDATE sl_sources SET config = config - 'options' WHERE id = %s", (source_id,))
    healed = sync.sync_source(settings, source_id)
    assert healed.success and healed.mentions_saved + 400 == len(stored_ids(conn, source_id))
    newest = latest_seq(source_id, clock.now)
    assert stored_ids(conn, source_id) == expected_ids(source_id, newest - len(stored_ids(conn, source_id)) + 1, newest)
    source = db.get_source(conn, source_id)
    assert source.committed_cursor == {"newest_seq": newest} and source.consecutive_failures == 0
    assert source.status == "active" and source.error_message is None


def test_an_auth_failure_marks_the_source_error_with_reconnect_advice(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn, fail_after_page=0, fail_with="auth")
    result = sync.sync_source(settings, source_id)
    assert not result.success and result.status == "error"
    source = db.get_source(conn, source_id)
    assert source.status == "error" and f"then: slsync sync source {source_id}" in (source.error_message or "")
    conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 hour' WHERE id = %s", (source_id,))
    assert db.claim_due(conn, 10) == []  # not scheduled until reconnected


def test_a_rate_limited_source_is_not_called_before_its_reset(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn, fail_after_page=2, fail_with="rate_limit")
    limited = sync.sync_source(settings, source_id)
    assert limited.status == "rate_limited" and limited.mentions_saved == 200
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at == clock.now + timedelta(minutes=10)
    assert source.consecutive_failures == 0 and source.inflight_cursor is not None
    assert runs(conn, source_id)[-1]["status"] == "rate_limited"
    before = len(runs(conn, source_id))
    manual = sync.sync_source(settings, source_id)
    assert manual.skipped and not manual.success and "rate limited until" in manual.message
    assert len(runs(conn, source_id)) == before  # no call, no run
    assert db.claim_due(conn, 10) == []


def test_sync_tenant_touches_only_that_tenant(conn, settings, clock: Clock) -> None:
    mine = [add_mock_source(conn, tenant_id=1, name=f"a{n}") for n in range(2)]
    theirs = add_mock_source(conn, tenant_id=2, name="b")
    batch = sync.sync_tenant(settings, 1)
    assert sorted(r.source_id for r in batch.results) == mine and all(r.success for r in batch.results)
    assert stored_ids(conn, theirs) == [] and runs(conn, theirs) == []
    assert db.get_source(conn, theirs).last_sync_at is None
    tenants = conn.execute("SELECT DISTINCT tenant_id FROM sl_mentions").fetchall()
    assert [r["tenant_id"] for r in tenants] == [1]
    with pytest.raises(NotFound):
        sync.sync_tenant(settings, 3)


def test_sync_due_picks_never_synced_first_then_oldest_and_respects_limit(conn, settings, clock: Clock) -> None:
    ids = [add_mock_source(conn, name=f"s{n}") for n in range(4)]
    for source_id in ids[:2]:
        conn.execute(
            "UPDATE sl_sources SET last_sync_at = now() - make_interval(hours => id),"
            " next_sync_at = now() - interval '1 minute', committed_cursor = %s WHERE id = %s",
            (Jsonb({"newest_seq": latest_seq(source_id, clock.now) - 6}), source_id),
        )
    conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 hour' WHERE id = %s", (ids[3],))
    claimed = db.claim_due(conn, 2)
    assert claimed == [ids[2], ids[1]]  # never synced first, then the oldest last sync
    db.release_claims(conn, claimed)
    batch = sync.sync_due(settings, limit=50, concurrency=2)
    assert sorted(r.source_id for r in batch.results) == sorted(ids[:3])
    assert all(r.success for r in batch.results)
    assert sync.sync_due(settings, limit=50, concurrency=2).results == []
    # the labelling threads beside the workers labelled what each source saved, and reported it per source
    for result in batch.results:
        assert result.extra["analysis"] == {"analyzer": "builtin", "analyzed": result.mentions_saved, "error": None}
    assert batch.analysis == {
        "analyzer": "builtin",
        "analyzed": sum(r.mentions_saved for r in batch.results),
        "error": None,
    }
    assert db.count_new_mentions(conn) == 0


def test_backoff_grows_with_failures_and_is_capped_at_a_day() -> None:
    import random

    rng = random.Random(1)
    delays = [sync.backoff_seconds(15, n, rng) for n in range(1, 12)]
    for n, delay in enumerate(delays, start=1):
        cap = min(15 * 60 * 2**n, 86400)
        assert cap / 2 <= delay <= cap
    assert max(delays) <= 86400


def test_migrations_are_idempotent(conn) -> None:
    assert db.migrate(conn) == []
    versions = conn.execute("SELECT version FROM sl_schema_migrations").fetchall()
    assert [r["version"] for r in versions] == [v for v, _, _ in db.migration_files()]


def test_a_spent_rate_limit_keeps_a_due_source_unclaimed_until_its_reset(conn, settings, clock: Clock) -> None:
    source_id = add_mock_source(conn)
    conn.execute(
        "UPDATE sl_sources SET rate_limit_remaining = 0, rate_limit_reset_at = now() + interval '1 hour' WHERE id = %s",
        (source_id,),
    )
    assert db.claim_due(conn, 10) == []
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    assert db.claim_due(conn, 10) == [source_id]


def test_a_rate_limited_run_in_sync_due_is_not_a_failure(conn, settings, clock: Clock) -> None:
    add_mock_source(conn, fail_after_page=1, fail_with="rate_limit")
    batch = sync.sync_due(settings, limit=10, concurrency=1)
    doc = batch.as_json()
    assert batch.failed == [] and doc["sources_failed"] == 0 and doc["sources_rate_limited"] == 1
    assert doc["total_mentions_saved"] == 100
