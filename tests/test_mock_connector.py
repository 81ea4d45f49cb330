"""The mock platform behaves like a newest-first paged search API, deterministically."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from slsync.connectors.base import Context
from slsync.connectors.mock import (
    PAGE_SIZE,
    MockConnector,
    first_seq_since,
    latest_seq,
    post_time,
    stream_post,
)
from slsync.errors import AuthError, RateLimited, Retriable, UsageError
from slsync.models import Source

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def make_source(source_id: int = 7, **options: object) -> Source:
    config = MockConnector.build_config({"keywords": ["Acme"]}, {k: str(v) for k, v in options.items()})
    return Source(
        id=source_id,
        tenant_id=1,
        platform="mock",
        name="acme",
        connection_type="none",
        config=config,
        status="active",
        error_message=None,
        sync_interval_minutes=15,
        last_sync_at=None,
        next_sync_at=NOW,
        committed_cursor=None,
        inflight_cursor=None,
        rate_limit_limit=None,
        rate_limit_remaining=None,
        rate_limit_reset_at=None,
        consecutive_failures=0,
        mentions_count=0,
        created_at=NOW,
    )


def connector(source: Source | None = None, now: datetime = NOW) -> MockConnector:
    return MockConnector(source or make_source(), Context(now=lambda: now))


def test_stream_is_deterministic_and_one_post_per_ten_minutes() -> None:
    assert stream_post(7, "Acme", 1000) == stream_post(7, "Acme", 1000)
    assert stream_post(7, "Acme", 1000) != stream_post(8, "Acme", 1000)
    times = [post_time(7, seq) for seq in range(100_000, 100_200)]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert times[-1] - times[0] < timedelta(minutes=10 * 200)
    seq = latest_seq(7, NOW)
    assert post_time(7, seq) <= NOW < post_time(7, seq + 1)
    start = NOW - timedelta(days=7)
    first = first_seq_since(7, start)
    assert post_time(7, first - 1) < start <= post_time(7, first)


def test_first_sync_backfills_seven_days_newest_first_in_pages_of_100() -> None:
    pages = list(connector().pages(None, since=NOW - timedelta(days=7), resume=None))
    posts = [m for p in pages for m in p.mentions]
    assert 1000 <= len(posts) <= 1010
    assert all(len(p.mentions) == PAGE_SIZE for p in pages[:-1])
    published = [m.published_at for m in posts]
    assert published == sorted(published, reverse=True)
    assert published[-1] >= NOW - timedelta(days=7) and published[0] <= NOW
    assert len({m.external_id for m in posts}) == len(posts)
    assert "next_seq" not in pages[-1].cursor and all("next_seq" in p.cursor for p in pages[:-1])
    assert pages[-1].cursor == {"newest_seq": latest_seq(7, NOW)}
    assert all(p.rate_limit and p.rate_limit.remaining is not None for p in pages)


def test_resync_returns_only_what_is_newer_than_the_cursor() -> None:
    first = list(connector().pages(None, since=NOW - timedelta(days=7), resume=None))
    cursor = first[-1].cursor
    [empty] = list(connector().pages(cursor, since=None, resume=None))
    assert empty.mentions == () and empty.cursor == cursor
    later = list(connector(now=NOW + timedelta(hours=2)).pages(cursor, since=None, resume=None))
    posts = [m for p in later for m in p.mentions]
    assert len(posts) == 12
    assert all(m.published_at > NOW for m in posts)
    assert later[-1].cursor == {"newest_seq": cursor["newest_seq"] + 12}


def test_an_interrupted_run_resumes_from_its_inflight_cursor() -> None:
    full = [
        m.external_id for p in connector().pages(None, since=NOW - timedelta(days=7), resume=None) for m in p.mentions
    ]
    pages = connector().pages(None, since=NOW - timedelta(days=7), resume=None)
    head = [next(pages) for _ in range(3)]
    # an hour later, with no explicit since, the resumed run continues where page 3 ended
    resumed = list(connector(now=NOW + timedelta(hours=1)).pages(None, since=None, resume=head[-1].cursor))
    ids = [m.external_id for p in head + resumed for m in p.mentions]
    assert ids == full
    assert resumed[-1].cursor == {"newest_seq": latest_seq(7, NOW)}


def test_failure_options_break_the_run_after_page_k() -> None:
    pages = connector(make_source(fail_after_page=2)).pages(None, since=NOW - timedelta(days=7), resume=None)
    assert len(next(pages).mentions) == PAGE_SIZE
    next(pages)
    with pytest.raises(Retriable):
        next(pages)
    with pytest.raises(AuthError):
        list(connector(make_source(fail_after_page=0, fail_with="auth")).pages(None, since=NOW, resume=None))
    with pytest.raises(RateLimited) as limited:
        list(
            connector(make_source(fail_after_page=0, fail_with="rate_limit")).pages(
                None, since=NOW - timedelta(hours=1), resume=None
            )
        )
    assert limited.value.reset_at == NOW + timedelta(minutes=10)


@pytest.mark.parametrize(
    ("search", "options", "message"),
    [
        ({}, {}, "at least one"),
        ({"keywords": ["a"]}, {"nope": "1"}, "unknown option"),
        ({"keywords": ["a"]}, {"page_delay": "-1"}, "page_delay"),
        ({"keywords": ["a"]}, {"fail_with": "boom"}, "fail_with"),
        ({"keywords": ["a"]}, {"fail_after_page": "x"}, "fail_after_page"),
    ],
)
def test_bad_search_parameters_are_refused_at_add_time(search: dict, options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        MockConnector.build_config(search, options)


def test_posts_carry_every_normalized_field() -> None:
    posts = [stream_post(7, "Acme Coffee", seq) for seq in range(100_000, 100_300)]
    assert all("Acme Coffee" in (m.content or "") for m in posts)
    assert {m.media_type for m in posts} == {"text", "image", "video", "link"}
    assert len({m.author_handle for m in posts}) > 50
    assert all(m.url and m.external_id in m.url and m.language == "en" for m in posts)
    assert any(m.author_verified for m in posts) and any(m.location for m in posts)
    assert all(m.raw and m.raw["id"] == m.external_id for m in posts)
