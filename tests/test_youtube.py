"""The YouTube connector: the search parameters it builds and refuses, the real recorded payloads it
normalizes, its error classification and quota accounting, and whole syncs against a loopback
stand-in of the Data API driven through the real CLI."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from slsync import db
from slsync.config import Settings
from slsync.connectors.base import Context
from slsync.connectors.youtube import (
    SEARCH_COST,
    ApiKey,
    YouTubeConnector,
    build_query,
    build_streams,
    normalize_page,
    quota_day,
)
from slsync.errors import AuthError, Fatal, QuotaSpent, RateLimited, UsageError
from slsync.models import Source
from tests.conftest import Cli
from tests.fakes.youtube_api import API_KEY, YouTubeApi

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "youtube"
CHANNEL = "UC" + "b" * 22
VIDEO = "dQw4w9WgXcQ"
README_EXAMPLE = {
    "keywords": ["acme", "acme coffee"],
    "hashtags": ["acmecoffee"],
    "exclude": ["jobs"],
    "languages": ["en"],
}


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def config(options: dict[str, str] | None = None, **search: list[str]) -> dict[str, Any]:
    return YouTubeConnector.build_config(search, options or {})


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the query ------------------------------------------------------------------------------------


def test_the_readme_example_builds_exactly_these_calls() -> None:
    built = config({"videos": VIDEO, "channels": CHANNEL}, **README_EXAMPLE)
    assert build_query(built) == 'acme|"acme coffee"|#acmecoffee -jobs'
    streams = build_streams(built)
    assert [s.name for s in streams] == [
        f"comments:video:{VIDEO}:acme", f"comments:video:{VIDEO}:acme coffee", f"comments:video:{VIDEO}:#acmecoffee",
        f"comments:channel:{CHANNEL}:acme", f"comments:channel:{CHANNEL}:acme coffee",
        f"comments:channel:{CHANNEL}:#acmecoffee", "search",
    ]  # fmt: skip
    assert streams[-1].params == {
        "part": "snippet", "q": 'acme|"acme coffee"|#acmecoffee -jobs', "type": "video", "order": "date",
        "maxResults": "50", "relevanceLanguage": "en",
    }  # fmt: skip
    assert streams[-1].cost == SEARCH_COST == 100 and streams[0].cost == 1
    assert streams[1].params == {
        "part": "snippet", "videoId": VIDEO, "searchTerms": "acme coffee", "order": "time", "maxResults": "100",
        "textFormat": "plainText",
    }  # fmt: skip
    assert streams[3].params["allThreadsRelatedToChannelId"] == CHANNEL and "videoId" not in streams[3].params
    assert all(s.exclude == ("jobs",) for s in streams[:-1])  # comments are filtered here; q excludes itself


@pytest.mark.parametrize(
    ("search", "query"),
    [
        ({"keywords": ["acme"]}, "acme"),
        ({"hashtags": ["acme", "acmecoffee"]}, "#acme|#acmecoffee"),
        ({"keywords": ["café", "co-op"], "exclude": ["free shipping", "jobs"]}, 'café|"co-op" -"free shipping" -jobs'),
    ],
)
def test_queries_or_terms_with_a_pipe_and_quote_phrases(search: dict, query: str) -> None:
    built = config(**search)
    assert build_query(built) == query
    assert "relevanceLanguage" not in build_streams(built)[-1].params


@pytest.mark.parametrize(
    ("search", "options", "says"),
    [
        ({"keywords": ["acme"], "mentions": ["acme"]}, {}, "cannot look for @mentions"),
        ({"mentions": ["acme"]}, {}, "cannot look for @mentions"),
        ({"keywords": ["acme"], "languages": ["en", "es"]}, {}, "only one language"),
        ({"keywords": ["acme"], "languages": ["fil"]}, {}, "two-letter"),
        ({"keywords": ['say "hi"']}, {}, "double quote"),
        ({"keywords": ["a|b"]}, {}, "double quote or |"),
        ({"keywords": ["-acme"]}, {}, "exclusion"),
        ({"hashtags": ["two words"]}, {}, "not a hashtag"),
        ({"keywords": ["acme"]}, {"channels": "acme"}, "not a YouTube channel id"),
        ({"keywords": ["acme"]}, {"videos": f"{VIDEO},short"}, "not a YouTube video id"),
        ({"keywords": ["acme"]}, {"video_search": "no"}, "needs --option videos"),
        ({"keywords": ["acme"]}, {"video_search": "maybe"}, "expected yes or no"),
        ({"keywords": ["acme"]}, {"playlist": "x"}, "unknown option"),
        ({"keywords": [f"w{n}" for n in range(26)]}, {"videos": VIDEO, "channels": CHANNEL}, "52 comment searches"),
    ],
)
def test_what_youtube_cannot_express_is_refused_with_one_line(search: dict, options: dict, says: str) -> None:
    with pytest.raises(UsageError, match=says) as refused:
        config(options, **search)
    assert "\n" not in str(refused.value)


def test_comment_only_sources_make_no_100_unit_search() -> None:
    built = config({"channels": f"{CHANNEL}, {CHANNEL}", "video_search": "no"}, keywords=["acme"])
    assert built["options"] == {"channels": [CHANNEL], "video_search": False}
    assert [s.name for s in build_streams(built)] == [f"comments:channel:{CHANNEL}:acme"]


# --- normalizing the recorded payloads ------------------------------------------------------------


def test_every_recorded_search_result_becomes_a_video_mention() -> None:
    body = fixture("search_list_keywords_p1")
    mentions, errors = normalize_page(body)
    assert len(mentions) == len(body["items"]) == 25 and errors == 0
    for item, mention in zip(body["items"], mentions, strict=True):
        snippet = item["snippet"]
        assert mention.platform == "youtube" and mention.external_id == item["id"]["videoId"]
        assert mention.url == f"https://www.youtube.com/watch?v={item['id']['videoId']}"
        assert mention.published_at == utc(snippet["publishedAt"]) and mention.published_at.tzinfo
        assert mention.content == html.unescape(snippet["title"]) + "\n\n" + html.unescape(snippet["description"])
        assert mention.author_name == snippet["channelTitle"] and mention.author_handle is None
        # search.list carries no statistics and no language: nothing is invented
        assert (mention.likes_count, mention.comments_count, mention.shares_count) == (None, None, None)
        assert mention.author_followers is None and mention.author_verified is None and mention.language is None
        assert mention.media_type == "video" and mention.media_urls == (snippet["thumbnails"]["high"]["url"],)
        assert mention.raw == item
    titles = [m.content.split("\n\n")[0] for m in mentions]
    # sent HTML-escaped: World&#39;s, PIPE &amp; BACKDOOR, O&#39;Brien
    assert {"World's best surfing 2017", "SURFING PERFECT PIPE & BACKDOOR || SUNRISE SHACK!"} <= set(titles)
    assert "DANGEROUS SEWER DRAIN SURFING! | Jamie O'Brien" in titles and not any("&#" in t for t in titles)


def test_every_recorded_comment_thread_becomes_its_top_level_comment() -> None:
    body = fixture("comment_threads_list_by_video_p1")
    mentions, errors = normalize_page(body)
    assert len(mentions) == 5 and errors == 0
    for item, mention in zip(body["items"], mentions, strict=True):
        top = item["snippet"]["topLevelComment"]
        snippet = top["snippet"]
        assert mention.external_id == top["id"] == item["id"]
        assert mention.url == f"https://www.youtube.com/watch?v=F1UP7wRCPH8&lc={top['id']}"
        assert mention.content == snippet["textOriginal"]
        assert mention.author_name == snippet["authorDisplayName"]
        assert mention.author_handle is None  # 2019 payloads link /channel/UC..., not an @handle
        assert mention.likes_count == snippet["likeCount"]
        assert mention.comments_count == item["snippet"]["totalReplyCount"]
        assert mention.published_at == utc(snippet["publishedAt"])
        assert mention.media_type == "text" and mention.language is None and mention.shares_count is None
        assert mention.raw == item
    assert mentions[0].content == "Google.com"  # textOriginal, not the <a href> of textDisplay
    assert [m.comments_count for m in mentions] == [0, 0, 0, 0, 2]


def test_recorded_replies_normalize_as_comments_without_a_video_link() -> None:
    body = fixture("comments_list_by_parent_p1")
    mentions, errors = normalize_page(body)
    assert errors == 0 and [m.external_id for m in mentions] == [i["id"] for i in body["items"]]
    for item, mention in zip(body["items"], mentions, strict=True):
        assert mention.content == item["snippet"]["textOriginal"] and mention.author_name == "kun liu"
        assert mention.published_at == utc(item["snippet"]["publishedAt"]) and mention.likes_count == 0
        # a reply names its parent, not its video: no URL is made up, and replies have no reply count
        assert mention.url is None and mention.comments_count is None


def test_handles_html_only_text_and_odd_values() -> None:
    thread = fixture("comment_threads_list_by_video_p1")["items"][4]
    snippet = thread["snippet"]["topLevelComment"]["snippet"]
    original = snippet.pop("textOriginal")
    snippet.update(authorChannelUrl="http://www.youtube.com/@acme.fan", likeCount=2**70, authorDisplayName=7)
    thread["snippet"]["totalReplyCount"] = "3"
    [mention], errors = normalize_page({"items": [thread, "x", {"kind": "youtube#searchResult", "id": {}}]})
    assert errors == 2
    assert mention.author_handle == "acme.fan" and mention.author_name is None
    assert mention.likes_count is None and mention.comments_count == 3
    assert mention.content == original  # textDisplay's links and entities, made plain
    undated = {"kind": "youtube#searchResult", "id": {"videoId": VIDEO}, "snippet": {"publishedAt": "yesterday"}}
    assert normalize_page({"items": [undated]}) == ([], 1)
    bare = {
        "kind": "youtube#searchResult",
        "id": {"videoId": VIDEO},
        "snippet": {"publishedAt": "2024-01-01T00:00:00Z"},
    }
    [video], _ = normalize_page({"items": [bare]})
    assert video.content is None and video.media_urls == () and video.author_name is None


# --- the quota day --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "day", "reset"),
    [
        ("2024-01-15T07:59:59+00:00", date(2024, 1, 14), "2024-01-15T08:00:00+00:00"),  # PST: UTC-8
        ("2024-01-15T08:00:00+00:00", date(2024, 1, 15), "2024-01-16T08:00:00+00:00"),
        ("2024-07-01T06:30:00+00:00", date(2024, 6, 30), "2024-07-01T07:00:00+00:00"),  # PDT: UTC-7
        ("2024-03-10T12:00:00+00:00", date(2024, 3, 10), "2024-03-11T07:00:00+00:00"),  # a 23-hour day
        ("2024-11-03T12:00:00+00:00", date(2024, 11, 3), "2024-11-04T08:00:00+00:00"),  # a 25-hour day
    ],
)
def test_the_quota_day_ends_at_midnight_pacific(now: str, day: date, reset: str) -> None:
    assert quota_day(datetime.fromisoformat(now)) == (day, datetime.fromisoformat(reset))


# --- one connector run, in process ----------------------------------------------------------------


class Ledger:
    def __init__(self) -> None:
        self.used: dict[tuple[str, date], int] = {}

    def spend(self, key: str, units: int, daily_limit: int, day: date) -> int | None:
        used = self.used.get((key, day), 0)
        if used + units > daily_limit:
            return None
        self.used[(key, day)] = used + units
        return daily_limit - used - units

    def exhaust(self, key: str, daily_limit: int, day: date) -> None:
        self.used[(key, day)] = max(self.used.get((key, day), 0), daily_limit)


@pytest.fixture
def api() -> Iterator[YouTubeApi]:
    stand_in = YouTubeApi().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry policy's jittered waits, skipped (the connector sleeps through its module's `time`)."""
    from slsync.connectors import youtube

    monkeypatch.setattr(youtube, "time", SimpleNamespace(sleep=lambda seconds: None))


def connector(
    api: YouTubeApi, ledger: Ledger, options: dict[str, str] | None = None, **search: list[str]
) -> YouTubeConnector:
    settings = Settings(
        SLSYNC_YOUTUBE_API_URL=api.url, YOUTUBE_API_KEY=API_KEY, SLSYNC_YOUTUBE_DAILY_QUOTA=1000, _env_file=None
    )
    now = datetime.now(UTC)
    built = config(options, **(search or {"keywords": ["acme"]}))
    source = Source(
        id=1, tenant_id=1, platform="youtube", name="acme", connection_type="app", config=built, status="active",
        error_message=None, sync_interval_minutes=15,
        last_sync_at=None, next_sync_at=now, committed_cursor=None, inflight_cursor=None, rate_limit_limit=None,
        rate_limit_remaining=None, rate_limit_reset_at=None, consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip
    credentials = YouTubeConnector.app_credentials(source, settings)
    context = Context(now=lambda: datetime.now(UTC), settings=settings, credentials=lambda: credentials, quota=ledger)
    return YouTubeConnector(source, context)


def run(conn: YouTubeConnector) -> list[Any]:
    return list(conn.pages(None, since=datetime.now(UTC) - timedelta(days=7), resume=None))


def test_every_attempt_is_charged_and_the_key_travels_in_a_header(api: YouTubeApi, no_waits: None) -> None:
    api.add_videos(3)
    api.faults = [500, 503]  # retried by the shared policy: three requests reach Google, three are paid for
    ledger = Ledger()
    [page] = run(connector(api, ledger))
    assert len(page.mentions) == 3 and sum(ledger.used.values()) == 3 * SEARCH_COST
    assert page.rate_limit.limit == 1000 and page.rate_limit.remaining == 700
    assert page.rate_limit.reset_at == quota_day(datetime.now(UTC))[1]
    assert [r.api_key for r in api.calls] == [API_KEY] * 3
    assert all(API_KEY not in r.raw_path and "key" not in r.params for r in api.calls)
    key = ApiKey(SecretStr(API_KEY))
    assert key.key.startswith("youtube:key:") and API_KEY not in key.key and [*ledger.used][0][0] == key.key
    with pytest.raises(AuthError):
        key.refresh()


def test_a_retry_that_does_not_fit_the_quota_is_not_made(api: YouTubeApi, no_waits: None) -> None:
    api.faults = [500, 500]
    ledger = Ledger()
    conn = connector(api, ledger)
    ledger.used[(conn.context.credentials.key, quota_day(datetime.now(UTC))[0])] = 800
    with pytest.raises(RateLimited, match="YouTube daily quota spent until") as limited:
        run(conn)
    assert len(api.calls) == 2 and limited.value.reset_at == quota_day(datetime.now(UTC))[1]


@pytest.mark.parametrize(
    ("reason", "status", "error", "says"),
    [
        ("quotaExceeded", 403, QuotaSpent, "daily quota spent until"),
        ("dailyLimitExceeded", 403, QuotaSpent, "daily quota spent until"),
        ("rateLimitExceeded", 403, RateLimited, "rate limit reached until"),
        ("keyInvalid", 400, AuthError, "refused the API key"),
        ("forbidden", 403, AuthError, "refused the API key"),
        ("accessNotConfigured", 403, AuthError, "refused the API key"),
        ("invalidSearchFilter", 400, Fatal, "refused the request"),
    ],
)
def test_google_error_reasons_are_classified(
    api: YouTubeApi, monkeypatch: pytest.MonkeyPatch, reason: str, status: int, error: type, says: str
) -> None:
    from tests.fakes import youtube_api

    body = youtube_api.google_error(status, reason, f"{reason} said <b>so</b> about {API_KEY}")
    monkeypatch.setattr(api, "answer", lambda *args: (status, body))
    ledger = Ledger()
    conn = connector(api, ledger)
    with pytest.raises(error, match=says) as raised:
        run(conn)
    message = str(raised.value)
    assert type(raised.value) is error
    assert reason in message and "<b>" not in message and API_KEY not in message and "[key]" in message
    exhausted = reason in ("quotaExceeded", "dailyLimitExceeded")
    assert (sum(ledger.used.values()) == 1000) is exhausted  # the ledger believes Google until the day ends
    if reason == "rateLimitExceeded":
        assert raised.value.reset_at < datetime.now(UTC) + timedelta(minutes=2)


def test_a_run_resumed_with_a_page_token_youtube_forgot_pages_again(api: YouTubeApi) -> None:
    api.add_videos(3)
    ledger = Ledger()
    after = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    resume = {"streams": {}, "active": {"stream": "search", "page_token": "yesterday", "after": after}}
    [page] = connector(api, ledger).pages(None, since=None, resume=resume)
    assert (
        len(page.mentions) == 3
        and page.cursor
        == {  # 0.1.0's in-flight cursor, read as it is
            "v": 2,
            "streams": {"search": api.videos[0]["snippet"]["publishedAt"][:19] + "Z"},
        }
    )
    assert [r.params.get("pageToken") for r in api.calls] == ["yesterday", None]
    assert all(r.params["publishedAfter"] == after for r in api.calls) and sum(ledger.used.values()) == 200


def test_comments_stop_at_the_bound_and_a_closed_video_is_skipped(api: YouTubeApi) -> None:
    now = datetime.now(UTC)
    api.add_comments(VIDEO, 150, newest=now - timedelta(seconds=10), spacing=timedelta(hours=1))  # 6 days
    api.add_comments(VIDEO, 1, newest=now - timedelta(seconds=5), text="acme jobs here")  # excluded
    api.add_comments(VIDEO, 2, newest=now, text="nothing about the brand")  # not matched by searchTerms
    api.comments_disabled.add("aaaaaaaaaaa")
    options = {"videos": f"aaaaaaaaaaa,{VIDEO}", "video_search": "no"}
    conn = connector(api, Ledger(), options, keywords=["acme"], exclude=["jobs"])
    first = list(conn.pages(None, since=now - timedelta(days=2), resume=None))
    assert [len(p.mentions) for p in first] == [0, 48]
    assert first[0].errors == 1  # comments disabled: reported, not fatal
    assert len(api.comment_calls()) == 2  # one page of 100 reached past the 2-day bound: no second page
    assert all(m.published_at >= now - timedelta(days=2, seconds=1) for m in first[1].mentions)
    cursor = first[-1].cursor
    assert cursor["streams"][f"comments:video:{VIDEO}:acme"] == (now - timedelta(seconds=10)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    api.add_comments(VIDEO, 2, newest=datetime.now(UTC) + timedelta(seconds=2), spacing=timedelta(seconds=1))
    again = list(conn.pages(cursor, since=None, resume=None))
    assert [len(p.mentions) for p in again] == [0, 3]  # the two new ones and the boundary one
    assert (
        again[-1].mentions[0].url == f"https://www.youtube.com/watch?v={VIDEO}&lc={again[-1].mentions[0].external_id}"
    )
    assert again[-1].mentions[0].author_handle == again[-1].mentions[0].author_name.lstrip("@")


# --- whole syncs through the CLI ------------------------------------------------------------------


@pytest.fixture
def yt_cli(cli: Cli, api: YouTubeApi) -> Cli:
    cli.env.update({"SLSYNC_YOUTUBE_API_URL": api.url, "YOUTUBE_API_KEY": API_KEY})
    return cli


def add_source(cli: Cli, *args: str, name: str = "acme") -> int:
    base = ["source", "add", "youtube", "--tenant", "1", "--name", name, "--keyword", "acme", "--exclude", "jobs"]
    return cli.ok(*base, *args, "--json").json()["id"]


def test_two_pages_of_videos_and_comments_then_only_what_is_new(yt_cli: Cli, api: YouTubeApi, conn) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    api.add_videos(70, newest=now - timedelta(minutes=5), spacing=timedelta(seconds=30))
    api.add_videos(5, newest=now - timedelta(minutes=1), title="Acme jobs")  # excluded by q
    api.add_comments(VIDEO, 120, newest=now - timedelta(minutes=5), channel="UC" + "c" * 22)
    api.add_comments("other000000", 3, newest=now - timedelta(minutes=5), channel=CHANNEL)
    source_id = add_source(yt_cli, "--language", "en", "--option", f"videos={VIDEO}", "--option", f"channels={CHANNEL}")
    first = yt_cli.ok("sync", "source", str(source_id), "--json").json()
    assert first["success"] and first["pages"] == 5 and first["mentions_saved"] == 70 + 120 + 3
    comments, searches = api.comment_calls(), api.searches()
    assert [r.params.get("pageToken") for r in comments] == [None, "tok-100", None]
    assert [r.params.get("pageToken") for r in searches] == [None, "tok-50"]
    for request in searches:
        assert request.params["q"] == "acme -jobs" and request.params["relevanceLanguage"] == "en"
        assert request.params["maxResults"] == "50" and request.params["order"] == "date"
    after = utc(searches[0].params["publishedAfter"])
    assert timedelta(days=6, hours=23) < datetime.now(UTC) - after < timedelta(days=7, minutes=1)
    assert all(r.api_key == API_KEY and API_KEY not in r.raw_path for r in api.calls)

    video = api.videos[0]
    row = conn.execute("SELECT * FROM sl_mentions WHERE external_id = %s", (video["id"]["videoId"],)).fetchone()
    assert row["url"] == f"https://www.youtube.com/watch?v={video['id']['videoId']}" and row["media_type"] == "video"
    assert row["content"] == "Acme review #0 & O'Brien's take\n\nAll about Acme, video 0"
    assert row["published_at"] == utc(video["snippet"]["publishedAt"]) and row["likes_count"] is None
    thread = api.threads[0]
    row = conn.execute("SELECT * FROM sl_mentions WHERE external_id = %s", (thread["id"],)).fetchone()
    assert row["author_handle"] == "listener0" and row["author_name"] == "@listener0" and row["media_type"] == "text"
    assert row["likes_count"] == 0 and row["comments_count"] == 0 and row["url"].endswith(f"&lc={thread['id']}")

    newest_video = api.videos[0]["snippet"]["publishedAt"]
    api.add_videos(2, newest=now + timedelta(seconds=2))
    api.add_comments(VIDEO, 1, newest=now + timedelta(seconds=2), channel="UC" + "c" * 22)
    second = yt_cli.ok("sync", "source", str(source_id), "--json").json()
    assert second["mentions_saved"] == 3 and second["pages"] == 3
    # plus the boundary video and the boundary comment of each stream, absorbed by the unique key
    assert second["mentions_fetched"] == 6
    assert api.searches()[-1].params["publishedAfter"] == newest_video[:19] + "Z"
    assert len(api.calls) == 5 + 3
    status = yt_cli.ok("status", str(source_id), "--json").json()["rate_limit"]
    assert status["limit"] == 10_000 and status["remaining"] == 10_000 - 3 * 100 - 5 * 1
    assert utc(status["reset_at"]) == quota_day(datetime.now(UTC))[1]


def test_the_daily_quota_is_shared_by_the_key_and_respected_until_pacific_midnight(
    yt_cli: Cli, api: YouTubeApi, conn
) -> None:
    api.add_videos(120, spacing=timedelta(seconds=30))
    env = {"SLSYNC_YOUTUBE_DAILY_QUOTA": "250"}
    source_id = add_source(yt_cli)
    limited = yt_cli("sync", "source", str(source_id), "--json", env=env)
    doc = limited.json()
    reset_at = quota_day(datetime.now(UTC))[1]
    assert limited.returncode == 1 and doc["status"] == "rate_limited" and doc["mentions_saved"] == 100
    assert f"YouTube daily quota spent until {reset_at:%Y-%m-%d %H:%M:%S} UTC" in doc["message"]
    assert len(api.calls) == 2  # the third page would not fit in 250 units: not asked for
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at == reset_at

    other = add_source(yt_cli, name="acme 2")  # another source on the same key finds the quota spent
    refused = yt_cli("sync", "source", str(other), "--json", env=env).json()
    assert refused["status"] == "rate_limited" and "daily quota spent" in refused["message"]
    assert yt_cli.ok("sync", "due", "--json", env=env).json()["results"] == []
    assert len(api.calls) == 2

    # Google's own answer wins over the ledger: a 403 quotaExceeded spends the day for every source
    conn.execute("DELETE FROM sl_quota_ledger")
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now()")
    api.quota_exceeded = True
    told = yt_cli("sync", "source", str(other), "--json").json()
    assert told["status"] == "rate_limited" and "quotaExceeded" in told["message"]
    ledger = conn.execute("SELECT units_used, daily_limit FROM sl_quota_ledger").fetchall()
    assert [(r["units_used"], r["daily_limit"]) for r in ledger] == [(10_000, 10_000)]

    # a new Pacific day: the interrupted run continues from its page token
    conn.execute("DELETE FROM sl_quota_ledger")
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now()")
    api.quota_exceeded = False
    resumed = yt_cli("sync", "source", str(source_id), "--json").json()
    assert resumed["success"] and resumed["mentions_saved"] == 20
    assert api.searches()[-1].params["pageToken"] == "tok-100"


def test_a_refused_or_missing_key_marks_the_source_error_and_never_shows_the_key(
    yt_cli: Cli, api: YouTubeApi, conn
) -> None:
    api.add_videos(3)
    source_id = add_source(yt_cli)
    wrong = "AIzaSy-wrong-key-that-must-not-show"
    refused = yt_cli("--debug", "sync", "source", str(source_id), "--json", env={"YOUTUBE_API_KEY": wrong})
    doc = refused.json()
    assert refused.returncode == 1 and doc["status"] == "error" and "keyInvalid" in doc["message"]
    assert "YOUTUBE_API_KEY" in doc["message"] and f"slsync sync source {source_id}" in doc["message"]
    assert wrong not in refused.stdout + refused.stderr and API_KEY not in refused.stdout + refused.stderr
    assert [r.api_key for r in api.calls] == [wrong]  # a key is not retried
    assert db.get_source(conn, source_id).status == "error"
    row = conn.execute("SELECT config::text AS config, error_message FROM sl_sources").fetchone()
    assert wrong not in row["config"] + row["error_message"]

    bare = Cli({k: v for k, v in yt_cli.env.items() if k != "YOUTUBE_API_KEY"}, yt_cli.cwd)
    missing = bare("sync", "source", str(source_id), "--json")
    assert missing.returncode == 1 and "no youtube credentials" in missing.json()["message"]
    healed = yt_cli.ok("sync", "source", str(source_id), "--json").json()
    assert healed["success"] and healed["mentions_saved"] == 3
