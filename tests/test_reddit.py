"""The Reddit connector: the query it builds, the real recorded listings it normalizes, its app-only
token, and whole syncs against a loopback stand-in of the token endpoint and search, through the CLI."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from slsync import db
from slsync.config import Settings
from slsync.connectors.base import Context
from slsync.connectors.reddit import (
    RedditAppCredentials,
    RedditConnector,
    build_query,
    normalize_page,
    rate_limit,
    search_path,
)
from slsync.errors import AuthError, Fatal, RateLimited, UsageError
from slsync.models import Page, RateLimit, Source
from tests.conftest import Cli
from tests.fakes.reddit_api import CLIENT_ID, CLIENT_SECRET, USER_AGENT, RedditApi

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "reddit"
EXAMPLE = {
    "keywords": ["acme", "acme coffee"],
    "hashtags": ["acmecoffee"],
    "mentions": ["acme"],
    "exclude": ["jobs"],
    "languages": [],
}
EXAMPLE_QUERY = '(acme OR "acme coffee" OR acmecoffee OR author:acme) NOT jobs'


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def when(created_utc: float) -> datetime:
    return datetime.fromtimestamp(created_utc, UTC)


# --- the query ------------------------------------------------------------------------------------


def test_the_readme_example_query_is_exactly_what_reddit_is_sent() -> None:
    assert build_query(EXAMPLE) == EXAMPLE_QUERY
    assert search_path({"options": {}}) == "/search"
    assert search_path({"options": {"subreddits": ["Coffee", "espresso"]}}) == "/r/Coffee+espresso/search"


@pytest.mark.parametrize(
    ("config", "query"),
    [
        ({"keywords": ["acme"]}, "acme"),
        ({"keywords": ["acme"], "hashtags": ["acme"]}, "acme"),  # a hashtag is a word on Reddit: searched once
        ({"keywords": ["OR", "co-op", "café", "not"]}, '("OR" OR "co-op" OR café OR "not")'),
        ({"mentions": ["u/acme_help", "acme-eu"]}, "(author:acme_help OR author:acme-eu)"),
        ({"hashtags": ["acme"], "exclude": ["free shipping", "jobs"]}, 'acme NOT "free shipping" NOT jobs'),
    ],
)
def test_queries_quote_phrases_or_terms_and_exclude_with_not(config: dict, query: str) -> None:
    assert build_query(config) == query


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({"keywords": ["acme"], "languages": ["en"]}, "cannot filter by language"),
        ({"keywords": ['say "hi"']}, "double quote"),
        ({"keywords": ["back\\slash"]}, "double quote or backslash"),
        ({"hashtags": ["two words"]}, "not a hashtag"),
        ({"mentions": ["ab"]}, "not a Reddit username"),
        ({"mentions": ["has space"]}, "not a Reddit username"),
        ({"keywords": [f"brandword{n:03d}" for n in range(60)]}, "Reddit allows 512"),
        ({"exclude": ["jobs"]}, "at least one"),
    ],
)
def test_what_reddit_cannot_search_is_refused(config: dict, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        build_query(config)


@pytest.mark.parametrize(
    ("options", "stored"),
    [
        ({"subreddits": "Coffee, r/espresso,/r/coffee"}, {"subreddits": ["Coffee", "espresso"]}),
        ({"overlap_minutes": "0"}, {"overlap_minutes": 0}),
    ],
)
def test_options_are_parsed_at_add_time(options: dict, stored: dict) -> None:
    config = RedditConnector.build_config({"keywords": ["acme"]}, options)
    assert config["options"] == stored


@pytest.mark.parametrize(
    "options",
    [{"subreddits": "coffee,no spaces"}, {"subreddits": ","}, {"overlap_minutes": "-1"}, {"overlap_minutes": "x"},
     {"subreddit": "coffee"}],
)  # fmt: skip
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(UsageError):
        RedditConnector.build_config({"keywords": ["acme"]}, options)


# --- normalizing the recorded payloads ------------------------------------------------------------


def test_every_recorded_new_post_becomes_a_mention_field_by_field() -> None:
    body = fixture("r_askreddit_new_listing")
    mentions, errors = normalize_page(body)
    children = body["data"]["children"]
    assert errors == 0 and len(mentions) == len(children) == 100
    for child, mention in zip(children, mentions, strict=True):
        post = child["data"]
        assert mention.platform == "reddit" and mention.external_id == post["name"] == f"t3_{post['id']}"
        assert mention.published_at == when(post["created_utc"]) and mention.published_at.tzinfo is UTC
        assert mention.url == "https://www.reddit.com" + post["permalink"]
        assert mention.content == post["title"]  # AskReddit posts have no selftext
        assert mention.author_handle == post["author"] and mention.author_name is None
        assert mention.likes_count == post["score"] and mention.comments_count == post["num_comments"]
        assert mention.shares_count is None and mention.language is None and mention.location is None
        assert mention.author_followers is None and mention.author_verified is None
        assert mention.media_type == "text" and mention.media_urls == ()
        assert mention.raw == {"kind": "t3", "data": post}
    first = mentions[0]
    assert first.external_id == "t3_hozvuc" and first.published_at == datetime(2020, 7, 10, 23, 44, 45, tzinfo=UTC)
    assert first.author_handle == "p1aguedoc" and first.likes_count == 3 and first.comments_count == 3


def test_recorded_search_results_keep_title_and_selftext_and_drop_the_search_ref() -> None:
    body = fixture("r_all_search_listing")
    mentions, errors = normalize_page(body)
    assert errors == 0 and len(mentions) == 6
    for child, mention in zip(body["data"]["children"], mentions, strict=True):
        post = child["data"]
        assert post["permalink"].endswith("?ref=search_posts")
        assert mention.url == "https://www.reddit.com" + post["permalink"].removesuffix("?ref=search_posts")
        assert mention.content == f"{post['title']}\n\n{post['selftext']}"
        assert mention.external_id == post["name"] and mention.author_handle == post["author"]
        assert mention.published_at == when(post["created_utc"])
        assert mention.likes_count == post["score"] and mention.comments_count == post["num_comments"]
        assert mention.media_type == "text"
    assert mentions[0].external_id == "t3_3gpbiu" and mentions[0].likes_count == 0
    assert "connexion…" in (mentions[0].content or "")  # raw_json text as sent, no HTML entities


def test_recorded_comments_normalize_without_their_posts_comment_count() -> None:
    body = fixture("r_askreddit_comments_listing")
    mentions, errors = normalize_page(body)
    assert errors == 0 and len(mentions) == 100
    for child, mention in zip(body["data"]["children"], mentions, strict=True):
        comment = child["data"]
        assert child["kind"] == "t1" and mention.external_id == comment["name"]
        assert mention.content == comment["body"] and mention.author_handle == comment["author"]
        assert mention.url == "https://www.reddit.com" + comment["permalink"]
        assert mention.published_at == when(comment["created_utc"])
        assert mention.likes_count == comment["score"]
        assert mention.comments_count is None  # num_comments of a comment counts its post's comments
        assert mention.media_type == "text" and mention.language is None


def _post(**changes: Any) -> dict[str, Any]:
    child = copy.deepcopy(fixture("r_askreddit_new_listing")["data"]["children"][0])
    child["data"].update(changes)
    return child


def _one(child: Any) -> Any:
    mentions, errors = normalize_page({"kind": "Listing", "data": {"children": [child]}})
    assert errors == 0, child
    return mentions[0]


def test_media_types_follow_post_hint_video_gallery_and_links() -> None:
    image = _one(_post(post_hint="image", is_self=False, url="https://i.redd.it/abc.jpg", domain="i.redd.it"))
    assert image.media_type == "image" and image.media_urls == ("https://i.redd.it/abc.jpg",)
    dash = "https://v.redd.it/xyz/DASH_720.mp4"
    video = _one(_post(is_video=True, is_self=False, url="https://v.redd.it/xyz", post_hint="hosted:video",
                       secure_media={"reddit_video": {"fallback_url": dash}}))  # fmt: skip
    assert video.media_type == "video" and video.media_urls == (dash,)
    gallery = _one(_post(
        is_gallery=True, is_self=False, url="https://www.reddit.com/gallery/hozvuc",
        gallery_data={"items": [{"media_id": "b"}, {"media_id": "a"}]},
        media_metadata={"a": {"s": {"u": "https://preview.redd.it/a.jpg"}}, "b": {"s": {"u": "https://preview.redd.it/b.png"}}},
    ))  # fmt: skip
    assert gallery.media_type == "image"
    assert gallery.media_urls == ("https://preview.redd.it/b.png", "https://preview.redd.it/a.jpg")
    link = _one(_post(is_self=False, post_hint="link", url="https://acme.example/launch", domain="acme.example"))
    assert link.media_type == "link" and link.media_urls == ("https://acme.example/launch",)
    text = _one(_post(is_self=None))  # no is_self: its url is its own page, so a text post
    assert text.media_type == "text" and text.media_urls == ()


def test_deleted_authors_removed_text_and_negative_scores_become_null() -> None:
    removed = _one(_post(author="[deleted]", selftext="[removed]", score=-3, num_comments=True))
    assert removed.author_handle is None and removed.content == removed.raw["data"]["title"]
    assert removed.likes_count is None and removed.comments_count is None
    nameless = _one(_post(name=None, title=None, selftext="only a body", permalink="javascript:alert(1)"))
    assert nameless.external_id == "t3_hozvuc" and nameless.content == "only a body" and nameless.url is None


def test_records_that_cannot_be_stored_are_skipped_and_counted() -> None:
    children = [
        _post(),
        _post(created_utc=None),  # no time: never invented
        _post(created_utc=1e300),
        _post(name="t3_!!", id="NOT base36"),
        {"kind": "t5", "data": {"name": "t5_2qh1i", "created_utc": 1.0}},  # a subreddit, not a mention
        {"kind": "t3", "data": "not an object"},
        "junk",
    ]
    mentions, errors = normalize_page({"kind": "Listing", "data": {"children": children}})
    assert [m.external_id for m in mentions] == ["t3_hozvuc"] and errors == 6
    for body in (None, [], "x", {"data": []}, {"data": {"children": {}}}, {"data": {"children": [None]}}):
        mentions, _ = normalize_page(body)
        assert mentions == []


def test_rate_limit_headers_count_seconds_until_the_reset() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, 300000, tzinfo=UTC)
    limits = rate_limit({"x-ratelimit-used": "12", "x-ratelimit-remaining": "588.0", "x-ratelimit-reset": "275"}, now)
    assert limits == RateLimit(limit=600, remaining=588, reset_at=datetime(2024, 5, 1, 12, 4, 36, tzinfo=UTC))
    fraction = rate_limit({"x-ratelimit-remaining": "0.4", "x-ratelimit-reset": "1700000000"}, now)
    assert fraction == RateLimit(limit=None, remaining=0, reset_at=None)  # an epoch time is not Reddit's reset
    assert rate_limit({"x-ratelimit-remaining": "nan"}, now) is None and rate_limit({}, now) is None


# --- the app-only token ---------------------------------------------------------------------------


@pytest.fixture
def reddit_api() -> Iterator[RedditApi]:
    api = RedditApi().start()
    yield api
    api.stop()


def _settings(api: RedditApi, **overrides: Any) -> Settings:
    values = {**api.env(), **overrides}
    return Settings(
        _env_file=None,
        REDDIT_CLIENT_ID=values["REDDIT_CLIENT_ID"],
        REDDIT_CLIENT_SECRET=values["REDDIT_CLIENT_SECRET"],
        REDDIT_USER_AGENT=values["REDDIT_USER_AGENT"],
        SLSYNC_REDDIT_API_URL=values["SLSYNC_REDDIT_API_URL"],
        SLSYNC_REDDIT_TOKEN_URL=values["SLSYNC_REDDIT_TOKEN_URL"],
    )


def test_the_app_token_is_fetched_once_renewed_before_expiry_and_after_a_401(reddit_api: RedditApi) -> None:
    reddit_api.expires_in = 3600
    clock = [datetime(2024, 5, 1, 12, 0, tzinfo=UTC)]
    credentials = RedditAppCredentials(CLIENT_ID, SecretStr(CLIENT_SECRET), _settings(reddit_api), lambda: clock[0])
    assert credentials.key == "reddit:app:" + hashlib.sha256(CLIENT_ID.encode()).hexdigest()[:16]
    assert not reddit_api.token_calls  # nothing is fetched before it is needed
    assert credentials.access_token() == credentials.access_token() == "reddit-app-token-1"
    clock[0] += timedelta(minutes=57)
    assert credentials.access_token() == "reddit-app-token-1"
    clock[0] += timedelta(minutes=1, seconds=1)  # within two minutes of the hour: renewed first
    assert credentials.access_token() == "reddit-app-token-2"
    assert credentials.refresh() == "reddit-app-token-3"  # after a 401, always a new one
    calls = reddit_api.token_calls
    assert len(calls) == 3 and all(c.params == {"grant_type": "client_credentials"} for c in calls)
    assert all(c.user_agent == USER_AGENT and c.status == 200 for c in calls)


@pytest.mark.parametrize(
    ("fault", "says"),
    [("status:401", "refused the app's client credentials (HTTP 401"), ("grant_error", "unsupported_grant_type")],
)
def test_a_refused_grant_is_an_auth_error_without_the_secret(reddit_api: RedditApi, fault: str, says: str) -> None:
    reddit_api.token_fault = fault
    credentials = RedditAppCredentials(CLIENT_ID, SecretStr(CLIENT_SECRET), _settings(reddit_api))
    with pytest.raises(AuthError, match=re.escape(says)) as refused:
        credentials.access_token()
    assert CLIENT_SECRET not in str(refused.value) and "REDDIT_CLIENT_SECRET" in str(refused.value)


# --- the connector in process: paging decisions ---------------------------------------------------


def _source(config: dict[str, Any]) -> Source:
    now = datetime.now(UTC)
    return Source(
        id=7, tenant_id=1, platform="reddit", name="acme", connection_type="app", config=config, status="active",
        error_message=None, sync_interval_minutes=15, last_sync_at=None, next_sync_at=now, committed_cursor=None,
        inflight_cursor=None, rate_limit_limit=None, rate_limit_remaining=None, rate_limit_reset_at=None,
        consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip


def _pages(api: RedditApi, cursor: Any = None, *, since: datetime | None = None, resume: Any = None,
           config: dict[str, Any] | None = None) -> Iterator[Page]:  # fmt: skip
    settings = _settings(api)
    source = _source(config or RedditConnector.build_config({"keywords": ["acme"]}, {}))
    context = Context(
        now=lambda: datetime.now(UTC),
        settings=settings,
        credentials=lambda: RedditConnector.app_credentials(source, settings),  # type: ignore[arg-type,return-value]
    )
    yield from RedditConnector(source, context).pages(cursor, since=since, resume=resume)
    context.close()


def test_a_resumed_listing_whose_post_is_gone_is_read_again_from_the_top(reddit_api: RedditApi) -> None:
    names = reddit_api.add_posts(30)
    week = datetime.now(UTC) - timedelta(days=7)
    resume = {"newest": None, "active": {"query": "acme", "path": "/search", "after": "t3_gone",
                                         "boundary": week.timestamp(), "newest": None}}  # fmt: skip
    pages = list(_pages(reddit_api, since=None, resume=resume))
    assert [r.params.get("after") for r in reddit_api.searches] == ["t3_gone", None]
    assert sorted(m.external_id for p in pages for m in p.mentions) == sorted(names)
    assert pages[-1].cursor["streams"]["search"]["newest"]["id"] == names[-1]


def test_a_resume_of_another_query_starts_afresh(reddit_api: RedditApi) -> None:
    reddit_api.add_posts(3)
    resume = {"active": {"query": "something else", "path": "/search", "after": "t3_abc", "boundary": 0.0}}
    [page] = list(_pages(reddit_api, since=datetime.now(UTC) - timedelta(days=1), resume=resume))
    assert "after" not in reddit_api.searches[0].params and len(page.mentions) == 3


def test_the_listing_cap_ends_a_run_and_its_last_page_carries_the_gap(reddit_api: RedditApi) -> None:
    reddit_api.listing_cap = 1000
    reddit_api.add_posts(1050, spacing=timedelta(seconds=30))
    stored = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    cursor = {"newest": {"id": "t3_old", "created_utc": stored.timestamp()}}
    pages = list(_pages(reddit_api, cursor))
    assert len(pages) == 10 and sum(len(p.mentions) for p in pages) == 1000
    assert pages[-1].cursor["streams"]["search"]["newest"]["id"] == reddit_api.posts[-1]["name"]
    # between the newest post the last run stored and the oldest the listing reached: out of reach
    assert all(not p.gaps for p in pages[:-1])
    [gap] = pages[-1].gaps
    oldest = datetime.fromtimestamp(reddit_api.posts[50]["created_utc"], UTC)
    assert (gap.start, gap.end, gap.reason, gap.stream) == (stored, oldest, "cap", "search")
    # 1,000 posts listed over 999 half-minutes: about 2 a minute across the stretch not read
    assert gap.missed_estimate == round(1000 / (999 * 0.5) * (oldest - stored).total_seconds() / 60)


def test_a_capped_listing_that_reaches_the_stored_post_leaves_no_gap(
    reddit_api: RedditApi, caplog: pytest.LogCaptureFixture
) -> None:
    # the listing ends on its cap inside the overlap: two minutes past the newest post the last run stored,
    # but short of the boundary ten minutes before it. Nothing was cut off: no gap, no warning
    reddit_api.add_posts(1050, spacing=timedelta(seconds=30))
    stored = reddit_api.posts[54]
    cursor = {"newest": {"id": stored["name"], "created_utc": stored["created_utc"]}}
    with caplog.at_level(logging.INFO, logger="slsync.reddit"):
        pages = list(_pages(reddit_api, cursor))
    assert sum(len(p.mentions) for p in pages) == 1000 and not any(p.gaps for p in pages)
    assert "nothing was cut off" in caplog.text and "WARNING" not in caplog.text


def test_a_capped_first_sync_says_what_it_could_not_read(
    reddit_api: RedditApi, caplog: pytest.LogCaptureFixture
) -> None:
    # nothing was covered before a first sync: its backfill falls short, which is said, not recorded as a gap
    reddit_api.add_posts(1050, spacing=timedelta(minutes=5))
    with caplog.at_level(logging.WARNING, logger="slsync.reddit"):
        pages = list(_pages(reddit_api, since=datetime.now(UTC) - timedelta(days=7)))
    assert sum(len(p.mentions) for p in pages) == 1000 and not any(p.gaps for p in pages)
    assert "were not read" in caplog.text


def test_the_window_used_up_stops_before_the_next_page(reddit_api: RedditApi) -> None:
    reddit_api.add_posts(150)
    reddit_api.remaining = 1.0
    pages = _pages(reddit_api, since=datetime.now(UTC) - timedelta(days=1))
    first = next(pages)
    assert len(first.mentions) == 100 and first.rate_limit is not None and first.rate_limit.remaining == 0
    assert first.cursor["active"]["token"] == reddit_api.posts[50]["name"]
    with pytest.raises(RateLimited, match="Reddit rate limit used up until") as limited:
        next(pages)
    assert limited.value.reset_at is not None and len(reddit_api.searches) == 1  # no call into a 429


@pytest.mark.parametrize(
    ("fault", "says"),
    [("redirect", "a subreddit in subreddits= may not exist"), ("wrong_shape", "not a listing"),
     ("invalid_json", "not valid JSON"), (403, "refused the request (HTTP 403")],
)  # fmt: skip
def test_unexpected_answers_are_fatal(reddit_api: RedditApi, fault: Any, says: str) -> None:
    reddit_api.faults = [fault]
    config = RedditConnector.build_config({"keywords": ["acme"]}, {"subreddits": "nosuchsub"})
    with pytest.raises(Fatal, match=re.escape(says)):
        list(_pages(reddit_api, config=config))


# --- whole syncs through the CLI ------------------------------------------------------------------


@pytest.fixture
def reddit_cli(cli: Cli, reddit_api: RedditApi) -> Cli:
    cli.env.update(reddit_api.env())
    return cli


def add_source(cli: Cli, *extra: str) -> int:
    args = ["source", "add", "reddit", "--tenant", "1", "--name", "acme", "--json"]
    for flag, key in (("--keyword", "keywords"), ("--hashtag", "hashtags"), ("--mention", "mentions"),
                      ("--exclude", "exclude")):  # fmt: skip
        for value in EXAMPLE[key]:
            args += [flag, value]
    return cli.ok(*args, *extra).json()["id"]


def test_two_pages_then_an_incremental_sync_that_rereads_only_the_overlap(
    reddit_cli: Cli, reddit_api: RedditApi, conn: db.Connection
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reddit_api.add_posts(30, newest=now - timedelta(days=8))  # older than the first sync's 7 days
    names = reddit_api.add_posts(150, newest=now - timedelta(hours=1))
    late = names[-3]  # made 2 minutes before the newest post, but not in the search index yet
    reddit_api.hidden.add(late)
    source_id = add_source(reddit_cli)
    first = reddit_cli.ok("sync", "source", str(source_id), "--json").json()
    assert first["success"] and first["pages"] == 2 and first["mentions_saved"] == first["mentions_fetched"] == 149
    searches = reddit_api.searches
    for request in searches:
        assert request.path == "/search" and request.user_agent == USER_AGENT
        assert request.authorization == "Bearer reddit-app-token-1"
        assert {k: v for k, v in request.params.items() if k != "after"} == {
            "q": EXAMPLE_QUERY, "sort": "new", "limit": "100", "raw_json": "1", "type": "link"}  # fmt: skip
    listed = [n for n in reversed(names) if n != late]
    assert [r.params.get("after") for r in searches] == [None, listed[99]]
    assert len(reddit_api.token_calls) == 1 and reddit_api.token_calls[0].user_agent == USER_AGENT
    source = db.get_source(conn, source_id)
    newest = reddit_api.posts[-1]
    assert source.committed_cursor is not None and source.inflight_cursor is None
    assert source.committed_cursor["streams"]["search"]["newest"] == {
        "id": newest["name"],
        "created_utc": newest["created_utc"],
    }
    assert (
        abs(source.committed_cursor["streams"]["search"]["floor"] - (now - timedelta(days=7)).timestamp()) < 60
    )  # the 7-day reach
    assert source.mentions_count == 149 and source.rate_limit_remaining == 598

    reddit_api.hidden.clear()  # the late post reaches the index
    newer = reddit_api.add_posts(5, newest=now - timedelta(minutes=5), spacing=timedelta(minutes=1))
    second = reddit_cli.ok("sync", "source", str(source_id), "--json").json()
    # 5 new + the late one + the 10 minutes before the newest stored post (11 posts a minute apart) again
    assert second["mentions_saved"] == 6 and second["mentions_fetched"] == 5 + 11 and second["pages"] == 1
    assert len(reddit_api.searches) == 3
    stored = {r["external_id"] for r in conn.execute("SELECT external_id FROM sl_mentions").fetchall()}
    assert stored == set(names) | set(newer)
    assert db.get_source(conn, source_id).committed_cursor["streams"]["search"]["newest"]["id"] == newer[-1]
    status = reddit_cli.ok("status", str(source_id), "--json").json()
    assert status["rate_limit"]["remaining"] == 597 and status["rate_limit"]["reset_at"]


def test_listed_subreddits_are_searched_with_restrict_sr(reddit_cli: Cli, reddit_api: RedditApi) -> None:
    wanted = reddit_api.add_posts(3, subreddit="Coffee") + reddit_api.add_posts(2, subreddit="espresso")
    reddit_api.add_posts(4, subreddit="tea")
    source_id = add_source(reddit_cli, "--option", "subreddits=coffee,r/espresso", "--option", "overlap_minutes=0")
    result = reddit_cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["mentions_saved"] == 5
    [request] = reddit_api.searches
    assert request.path == "/r/coffee+espresso/search" and request.params["restrict_sr"] == "1"
    assert len(wanted) == 5


def test_a_429_ends_the_run_and_no_call_is_made_before_the_reset(
    reddit_cli: Cli, reddit_api: RedditApi, conn: db.Connection
) -> None:
    names = reddit_api.add_posts(250)
    reddit_api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=9)
    reddit_api.fail_429_from_call = 1  # the second call is refused
    source_id = add_source(reddit_cli)
    limited = reddit_cli("sync", "source", str(source_id), "--json")
    doc = limited.json()
    assert limited.returncode == 1 and doc["status"] == "rate_limited" and doc["mentions_saved"] == 100
    assert len(reddit_api.searches) == 2
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0
    assert abs(source.rate_limit_reset_at - reddit_api.reset_at) <= timedelta(seconds=2)  # seconds, not epoch
    assert source.next_sync_at >= reddit_api.reset_at - timedelta(seconds=2)

    again = reddit_cli("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert reddit_cli.ok("sync", "due", "--json").json()["results"] == []
    assert len(reddit_api.searches) == 2  # nobody called Reddit before the reset

    reddit_api.fail_429_from_call = None
    conn.execute(
        "UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now() WHERE id = %s",
        (source_id,),
    )
    resumed = reddit_cli.ok("sync", "due", "--json").json()["results"][0]
    assert resumed["success"] and resumed["mentions_saved"] == 150 and resumed["duplicates"] == 0
    assert reddit_api.searches[2].params["after"] == names[-100]  # continued where it stopped


def test_an_expired_token_is_renewed_once_and_the_run_goes_on(
    reddit_cli: Cli, reddit_api: RedditApi, conn: db.Connection
) -> None:
    reddit_api.add_posts(150)
    reddit_api.revoke_at_call = 1
    source_id = add_source(reddit_cli)
    result = reddit_cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["success"] and result["mentions_saved"] == 150
    assert [r.authorization for r in reddit_api.searches] == [
        "Bearer reddit-app-token-1", "Bearer reddit-app-token-1", "Bearer reddit-app-token-2"]  # fmt: skip
    assert [r.status for r in reddit_api.searches] == [200, 401, 200]
    row = conn.execute("SELECT config::text || coalesce(committed_cursor::text, '') AS t FROM sl_sources").fetchone()
    assert "reddit-app-token" not in row["t"] and CLIENT_SECRET not in row["t"]


def test_refused_or_missing_credentials_mark_the_source_error_and_never_print_secrets(
    reddit_cli: Cli, reddit_api: RedditApi, conn: db.Connection
) -> None:
    reddit_api.add_posts(3)
    source_id = add_source(reddit_cli)
    wrong = reddit_cli("sync", "source", str(source_id), "--json", env={"REDDIT_CLIENT_SECRET": "wrong-secret-xyz"})
    doc = wrong.json()
    assert wrong.returncode == 1 and doc["status"] == "error"
    assert (
        "REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET" in doc["message"] and f"sync source {source_id}" in doc["message"]
    )
    assert "wrong-secret-xyz" not in wrong.stdout + wrong.stderr and not reddit_api.searches

    no_agent = reddit_cli("sync", "source", str(source_id), "--json", env={"REDDIT_USER_AGENT": ""})
    assert no_agent.returncode == 1 and no_agent.json()["status"] == "error"
    assert "REDDIT_USER_AGENT is not set" in no_agent.json()["message"]
    assert len(reddit_api.requests) == 1  # only the refused token call above: nothing goes out without the agent

    env = {k: v for k, v in reddit_cli.env.items() if k != "REDDIT_CLIENT_ID"}
    missing = Cli(env, reddit_cli.cwd)("sync", "source", str(source_id), "--json")
    assert missing.returncode == 1 and "no reddit credentials" in missing.json()["message"]

    healed = reddit_cli.ok("sync", "source", str(source_id), "--json").json()
    assert healed["success"] and healed["mentions_saved"] == 3
    assert db.get_source(conn, source_id).status == "active"
    shown = reddit_cli.ok("status", str(source_id), "--json")
    for result in (wrong, no_agent, missing, shown):
        assert CLIENT_SECRET not in result.stdout + result.stderr
        assert "reddit-app-token" not in result.stdout + result.stderr


def test_source_add_refuses_languages_and_reddit_is_listed_active(reddit_cli: Cli) -> None:
    result = reddit_cli("source", "add", "reddit", "--tenant", "1", "--name", "x", "--keyword", "acme",
                        "--language", "en")  # fmt: skip
    assert result.returncode == 2 and "cannot filter by language" in result.stderr
    platforms = {p["name"]: p for p in reddit_cli.ok("platforms", "--json").json()["platforms"]}
    assert platforms["reddit"]["state"] == "active"
