"""The TikTok connector: the query it builds, the videos it normalizes, its client access token, the daily
ledger of requests and records, and whole syncs through the CLI against a loopback stand-in of the
Research API (tests/fakes/tiktok_api.py).

There are no recorded TikTok payloads in the shared fixtures (the Research API is open to approved
research projects only), so the payloads here are built from TikTok's official reference:
developers.tiktok.com/doc/research-api-specs-query-videos (request body, fields, the response's
data.videos / cursor / has_more / search_id and its example), /doc/client-access-token-management (the
token request and answer), /doc/oauth-error-handling (the token endpoint's error object),
/doc/tiktok-api-v2-error-handling (the v2 error object and codes), /doc/research-api-faq (the daily limits
and the midnight UTC reset), /doc/research-api-codebook (field meanings) and
/doc/research-api-specs-query-video-comments (the comment list's request, Comment Object fields, its
data.comments / cursor / has_more and its example, with the redaction of personal data). Ids, names and
counts in them are made up.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from slsync import db
from slsync.config import Settings
from slsync.connectors import tiktok
from slsync.connectors.base import Context
from slsync.connectors.tiktok import (
    COMMENT_FIELDS,
    TikTokAppCredentials,
    TikTokConnector,
    build_query,
    normalize_comments_page,
    normalize_page,
    query_digest,
    quota_day,
    windows,
)
from slsync.db import QuotaLedger
from slsync.errors import AuthError, RateLimited, Retriable, UsageError
from slsync.models import Source
from tests.conftest import Cli
from tests.fakes.tiktok_api import CLIENT_KEY, CLIENT_SECRET, COMMENTS_PATH, QUERY_PATH, TikTokApi

DIGEST = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:16]
REQUESTS_KEY = f"tiktok:requests:{DIGEST}"
RECORDS_KEY = f"tiktok:records:{DIGEST}"

# A query page as the Query Videos reference describes it (its example response, with these fields asked for).
REFERENCE_PAGE: dict[str, Any] = {
    "data": {
        "videos": [
            {
                "id": 7306179836463286570,
                "create_time": 1701216000,
                "username": "acme.coffee_fan",
                "region_code": "US",
                "video_description": "Morning ritual with @acme #acmecoffee #coffeetok",
                "voice_to_text": "today we are trying the new acme cold brew",
                "hashtag_names": ["acmecoffee", "coffeetok"],
                "like_count": 1204,
                "comment_count": 38,
                "share_count": 17,
                "view_count": 20561,
                "favorites_count": 95,
                "music_id": 7286178920451787523,
                "playlist_id": 0,
            },
            {
                "id": 7306104226108968234,
                "create_time": 1701198421,
                "username": "baristalife",
                "region_code": "CA",
                "video_description": "",
                "hashtag_names": [],
                "like_count": 0,
                "comment_count": 0,
                "share_count": 0,
                "view_count": 12,
            },
        ],
        "cursor": 100,
        "has_more": True,
        "search_id": "7306190017823328299",
    },
    "error": {"code": "ok", "message": "", "log_id": "20231129024658D4E8D8F7A63F3F09C43D"},
}


# --- the query ------------------------------------------------------------------------------------


def config(options: dict[str, Any] | None = None, **search: list[str]) -> dict[str, Any]:
    return TikTokConnector.build_config(search, options or {})


def test_the_readme_example_query_is_what_tiktok_is_sent() -> None:
    built = config(
        {"regions": "us, CA"}, keywords=["acme", "acme coffee"], hashtags=["AcmeCoffee"], mentions=["acme"],
        exclude=["jobs"],
    )  # fmt: skip
    assert built["options"] == {"regions": ["US", "CA"]}
    assert build_query(built) == {
        "or": [
            {"operation": "IN", "field_name": "keyword", "field_values": ["acme", "acme coffee"]},
            {"operation": "EQ", "field_name": "hashtag_name", "field_values": ["acmecoffee"]},
            {"operation": "EQ", "field_name": "username", "field_values": ["acme"]},
        ],
        "and": [{"operation": "IN", "field_name": "region_code", "field_values": ["US", "CA"]}],
        "not": [{"operation": "EQ", "field_name": "keyword", "field_values": ["jobs"]}],
    }


@pytest.mark.parametrize(
    ("search", "options", "says"),
    [
        ({"keywords": ["acme"], "languages": ["en"]}, {}, "cannot filter videos by language"),
        ({"hashtags": ["acme coffee"]}, {}, "not a hashtag"),
        ({"mentions": ["a"]}, {}, "not a TikTok username"),
        ({"exclude": ["jobs"]}, {}, "at least one --keyword"),
        ({"keywords": ["acme"]}, {"regions": "USA"}, "not a two-letter region code"),
        ({"keywords": ["acme"]}, {"overlap_days": "9"}, "0 to 7 days"),
        ({"keywords": ["acme"]}, {"comments": "yes"}, "expected a number of videos"),
        ({"keywords": ["acme"]}, {"comments": "51"}, "0 to 50 videos a sync"),
        ({"keywords": ["acme"]}, {"replies": "1"}, "unknown option"),
    ],
)
def test_what_tiktok_cannot_be_asked_is_refused_at_source_add(search: dict, options: dict, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        config(options, **search)


def test_a_long_span_is_split_into_queries_of_at_most_30_days() -> None:
    spans = windows(date(2026, 9, 1), date(2026, 11, 5))
    assert spans == [
        (date(2026, 9, 1), date(2026, 9, 30)),
        (date(2026, 10, 1), date(2026, 10, 30)),
        (date(2026, 10, 31), date(2026, 11, 5)),
    ]
    assert windows(date(2026, 12, 2), date(2026, 12, 2)) == [(date(2026, 12, 2), date(2026, 12, 2))]


def test_the_quota_day_is_the_utc_day() -> None:
    day, reset = quota_day(datetime(2026, 12, 1, 23, 59, 59, tzinfo=UTC))
    assert day == date(2026, 12, 1) and reset == datetime(2026, 12, 2, tzinfo=UTC)


# --- normalizing ----------------------------------------------------------------------------------


def test_a_reference_page_normalizes_every_field() -> None:
    mentions, errors = normalize_page(REFERENCE_PAGE)
    assert errors == 0 and len(mentions) == 2
    first, second = mentions
    assert first.platform == "tiktok" and first.external_id == "7306179836463286570"
    assert first.published_at == datetime(2023, 11, 29, 0, 0, tzinfo=UTC)
    assert first.url == "https://www.tiktok.com/@acme.coffee_fan/video/7306179836463286570"
    assert first.content == (
        "Morning ritual with @acme #acmecoffee #coffeetok\n\ntoday we are trying the new acme cold brew"
    )
    assert (first.author_handle, first.author_name, first.author_followers) == ("acme.coffee_fan", None, None)
    assert (first.likes_count, first.comments_count, first.shares_count) == (1204, 38, 17)
    assert (first.media_type, first.media_urls, first.location, first.language) == ("video", (), "US", None)
    assert first.raw["view_count"] == 20561 and first.raw["hashtag_names"] == ["acmecoffee", "coffeetok"]
    assert second.content is None and second.location == "CA" and second.likes_count == 0


def test_broken_videos_are_skipped_and_counted_never_invented() -> None:
    page = copy.deepcopy(REFERENCE_PAGE)
    good = page["data"]["videos"][0]
    page["data"]["videos"] = [
        good,
        {**good, "id": None},
        {**good, "id": True},
        {**good, "create_time": "1701216000"},
        {**good, "create_time": None},
        "not a video",
        {**good, "id": "7306179836463286571", "username": None, "like_count": -1, "share_count": "17"},
    ]
    mentions, errors = normalize_page(page)
    assert errors == 5 and [m.external_id for m in mentions] == ["7306179836463286570", "7306179836463286571"]
    last = mentions[1]
    assert last.url is None and last.author_handle is None  # no username: no invented URL
    assert last.likes_count is None and last.shares_count is None
    assert normalize_page({"data": {}, "error": {"code": "invalid_params"}}) == ([], 0)


# --- the client access token ----------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[TikTokApi]:
    stand_in = TikTokApi().start()
    yield stand_in
    stand_in.stop()


def settings_for(api: TikTokApi, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None, "TIKTOK_CLIENT_KEY": CLIENT_KEY, "TIKTOK_CLIENT_SECRET": CLIENT_SECRET,
        "SLSYNC_TIKTOK_API_URL": api.url, "SLSYNC_TIKTOK_TOKEN_URL": api.url + "/oauth/token/",
    }  # fmt: skip
    return Settings(**{**values, **overrides})


def test_the_token_is_a_form_post_kept_in_memory_and_renewed_before_it_expires(api: TikTokApi) -> None:
    clock = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    credentials = TikTokAppCredentials(CLIENT_KEY, SecretStr(CLIENT_SECRET), settings_for(api), lambda: clock[0])
    assert credentials.key == f"tiktok:app:{DIGEST}" and CLIENT_KEY not in credentials.key
    assert not api.token_calls  # nothing is fetched before it is needed
    assert credentials.access_token() == credentials.access_token() == "clt.stand-in-1"
    clock[0] += timedelta(hours=1, minutes=54)
    assert credentials.access_token() == "clt.stand-in-1"
    clock[0] += timedelta(minutes=1, seconds=1)  # within five minutes of the two hours: renewed first
    assert credentials.access_token() == "clt.stand-in-2"
    assert credentials.refresh() == "clt.stand-in-3"  # after a 401, always a new one
    assert [c.body for c in api.token_calls] == [
        {"client_key": CLIENT_KEY, "client_secret": "[secret]", "grant_type": "client_credentials"}
    ] * 3
    assert all(c.status == 200 for c in api.token_calls)  # the stand-in checked the secret and the form type


@pytest.mark.parametrize("fault", ["refuse", "refuse_200"])
def test_a_refused_client_key_is_an_auth_error_with_advice_and_no_secret(api: TikTokApi, fault: str) -> None:
    api.token_fault = fault
    wrong = "a-wrong-secret-0123456789"
    credentials = TikTokAppCredentials(CLIENT_KEY, SecretStr(wrong), settings_for(api))
    with pytest.raises(AuthError, match="invalid_client") as refused:
        credentials.access_token()
    message = str(refused.value)
    assert "TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET" in message and wrong not in message
    assert CLIENT_SECRET not in message and "clt." not in message


def test_without_settings_a_source_has_no_credentials(api: TikTokApi) -> None:
    settings = Settings(_env_file=None, SLSYNC_TIKTOK_API_URL=api.url)
    assert TikTokConnector.app_credentials(source_for(config(keywords=["acme"])), settings) is None
    assert "TIKTOK_CLIENT_KEY" in TikTokConnector.reconnect_advice(4) and "sync source 4" in (
        TikTokConnector.reconnect_advice(4)
    )


# --- the ledger, in process (a real database, no CLI) ---------------------------------------------


def source_for(built: dict[str, Any]) -> Source:
    now = datetime.now(UTC)
    return Source(
        id=1, tenant_id=1, platform="tiktok", name="acme", connection_type="app", config=built, status="active",
        error_message=None, sync_interval_minutes=15, last_sync_at=None, next_sync_at=now, committed_cursor=None,
        inflight_cursor=None, rate_limit_limit=None, rate_limit_remaining=None, rate_limit_reset_at=None,
        consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry policy's jittered waits, skipped (the connector sleeps through its module's `time`)."""
    monkeypatch.setattr(tiktok, "time", SimpleNamespace(sleep=lambda seconds: None))


def connector(
    api: TikTokApi, conn: db.Connection, options: dict[str, str] | None = None, **overrides: Any
) -> TikTokConnector:
    settings = settings_for(api, **overrides)
    source = source_for(config(options, keywords=["acme"]))
    credentials = TikTokConnector.app_credentials(source, settings)
    context = Context(
        now=lambda: datetime.now(UTC), settings=settings, credentials=lambda: credentials, quota=QuotaLedger(conn)
    )
    return TikTokConnector(source, context)


def ledger(conn: db.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT credential_key, units_used FROM sl_quota_ledger WHERE quota_day = %s", (today(),))
    return {row["credential_key"]: row["units_used"] for row in rows.fetchall()}


def today() -> date:
    return datetime.now(UTC).date()


def test_records_are_reserved_before_a_call_and_what_did_not_come_is_given_back(
    api: TikTokApi, conn: db.Connection, no_waits: None
) -> None:
    api.add_videos(130)
    api.faults = [503]  # retried by the shared policy: two requests reach TikTok, both are counted
    pages = list(connector(api, conn).pages(None, since=datetime.now(UTC) - timedelta(days=2), resume=None))
    assert [len(p.mentions) for p in pages] == [100, 30]
    assert ledger(conn) == {REQUESTS_KEY: 3, RECORDS_KEY: 130}
    assert pages[-1].rate_limit.limit == 1000 and pages[-1].rate_limit.remaining == 997
    assert pages[-1].rate_limit.reset_at == quota_day(datetime.now(UTC))[1]


def test_a_call_whose_records_do_not_fit_is_not_made_and_its_request_goes_back(
    api: TikTokApi, conn: db.Connection
) -> None:
    api.add_videos(5)
    conn.execute(
        "INSERT INTO sl_quota_ledger (credential_key, quota_day, units_used, daily_limit) VALUES (%s, %s, 950, 1000)",
        (RECORDS_KEY, today()),
    )
    pages = connector(api, conn, SLSYNC_TIKTOK_DAILY_RECORDS=1000).pages(None, since=datetime.now(UTC), resume=None)
    with pytest.raises(RateLimited, match="record quota spent until") as limited:
        list(pages)
    assert limited.value.reset_at == quota_day(datetime.now(UTC))[1]
    assert not api.queries and not api.token_calls  # not even a token is fetched for a call that is not made
    assert ledger(conn) == {REQUESTS_KEY: 0, RECORDS_KEY: 950}


def test_a_forgotten_search_id_pages_the_window_again(api: TikTokApi, conn: db.Connection) -> None:
    api.add_videos(150, spacing=timedelta(seconds=1))
    built = connector(api, conn)
    resume = {
        "through": None, "newest": None,
        "active": {"query": query_digest(build_query(built.source.config)),
                   "from": (today() - timedelta(days=1)).isoformat(), "to": today().isoformat(), "cursor": 100,
                   "search_id": "7400000000000000999"},
    }  # fmt: skip
    pages = list(built.pages(None, since=None, resume=resume))
    bodies = [r.body for r in api.queries]
    assert [(b["cursor"], b.get("search_id")) for b in bodies] == [
        (100, "7400000000000000999"), (0, None), (100, bodies[2]["search_id"]),
    ]  # fmt: skip
    assert sum(len(p.mentions) for p in pages) == 150 and pages[-1].cursor["through"] == today().isoformat()


# --- whole syncs through the CLI ------------------------------------------------------------------


@pytest.fixture
def tiktok_cli(cli: Cli, api: TikTokApi) -> Cli:
    cli.env.update(api.env())
    return cli


def add_source(cli: Cli, *extra: str, name: str = "acme") -> int:
    args = ["source", "add", "tiktok", "--tenant", "1", "--name", name, "--keyword", "acme", *extra, "--json"]
    return cli.ok(*args).json()["id"]


def sync(cli: Cli, source_id: int, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = cli("sync", "source", str(source_id), *extra, "--json", env=env)
    assert CLIENT_SECRET not in result.stdout + result.stderr and "clt.stand-in" not in result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_two_pages_by_cursor_and_search_id_then_an_incremental_sync(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    api.add_videos(150, newest=now - timedelta(days=4), spacing=timedelta(minutes=2))
    api.add_videos(2, newest=now - timedelta(days=3), video_description="a #jobs post about acme")  # excluded
    api.add_videos(1, newest=now - timedelta(days=3), video_description="nothing to see")
    source_id = add_source(tiktok_cli, "--exclude", "jobs")
    assert tiktok_cli.ok("source", "list", "--json").json()["sources"][0]["status"] == "active"  # no connect

    code, first = sync(tiktok_cli, source_id)
    assert code == 0 and first["success"] and first["pages"] == 2 and first["mentions_saved"] == 150, first
    first_page, second_page = (r.body for r in api.queries)
    assert first_page["start_date"] == f"{now - timedelta(days=7):%Y%m%d}" and first_page["end_date"] == f"{now:%Y%m%d}"
    assert first_page["max_count"] == 100 and first_page["cursor"] == 0 and "search_id" not in first_page
    assert (second_page["cursor"], second_page["search_id"]) == (100, next(iter(api.searches)))
    assert "voice_to_text" in api.queries[0].params["fields"].split(",")
    assert all(r.authorization == "Bearer clt.stand-in-1" for r in api.queries) and len(api.token_calls) == 1
    row = conn.execute(
        "SELECT url, author_handle, published_at FROM sl_mentions WHERE external_id = %s", (str(api.videos[0]["id"]),)
    ).fetchone()
    assert row["url"] == f"https://www.tiktok.com/@{api.videos[0]['username']}/video/{api.videos[0]['id']}"
    assert row["published_at"] == datetime.fromtimestamp(api.videos[0]["create_time"], UTC)
    source = db.get_source(conn, source_id)
    assert source.committed_cursor["through"] == f"{now:%Y-%m-%d}" and source.inflight_cursor is None
    assert ledger(conn) == {REQUESTS_KEY: 2, RECORDS_KEY: 150}
    limits = tiktok_cli.ok("status", str(source_id), "--json").json()["rate_limit"]
    assert limits["remaining"] == 998 and limits["limit"] == 1000

    api.add_videos(3, newest=datetime.now(UTC) - timedelta(seconds=2))
    api.add_videos(2, newest=datetime.now(UTC) - timedelta(days=1, seconds=5))  # indexed late, on yesterday
    code, second = sync(tiktok_cli, source_id)
    assert code == 0 and second["mentions_saved"] == 5 and second["pages"] == 1, second
    incremental = api.queries[-1].body
    # a day-granular API: the day last reached less one day of overlap, through today
    assert (
        incremental["start_date"] == f"{now - timedelta(days=1):%Y%m%d}" and incremental["end_date"] == f"{now:%Y%m%d}"
    )
    code, third = sync(tiktok_cli, source_id)
    assert code == 0 and third["mentions_saved"] == 0 and third["duplicates"] == third["mentions_fetched"] >= 3


def test_a_long_since_is_split_into_30_day_queries(tiktok_cli: Cli, api: TikTokApi) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for days_back in (0, 20, 40, 64):
        api.add_video(now - timedelta(days=days_back, minutes=1))
    source_id = add_source(tiktok_cli, "--option", "overlap_days=0")
    since = (now - timedelta(days=65)).date()
    code, result = sync(tiktok_cli, source_id, "--since", since.isoformat())
    assert code == 0 and result["mentions_saved"] == 4 and result["pages"] == 3, result
    spans = [(r.body["start_date"], r.body["end_date"]) for r in api.queries]
    days = [(datetime.strptime(a, "%Y%m%d").date(), datetime.strptime(b, "%Y%m%d").date()) for a, b in spans]
    assert days[0][0] == since and days[-1][1] == now.date()
    assert all((last - first).days <= 29 for first, last in days)
    assert all(days[n + 1][0] == days[n][1] + timedelta(days=1) for n in range(len(days) - 1))

    code, again = sync(tiktok_cli, source_id)  # overlap_days=0: today only
    assert code == 0 and [api.queries[-1].body["start_date"]] == [f"{now:%Y%m%d}"]


@pytest.mark.parametrize(
    ("setting", "value", "calls", "used"),
    [
        ("SLSYNC_TIKTOK_DAILY_REQUESTS", "2", 2, {REQUESTS_KEY: 2, RECORDS_KEY: 200}),
        ("SLSYNC_TIKTOK_DAILY_RECORDS", "150", 1, {REQUESTS_KEY: 1, RECORDS_KEY: 100}),
    ],
)
def test_the_ledger_stops_before_the_limit_with_no_call_beyond_it(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection, setting: str, value: str, calls: int, used: dict
) -> None:
    api.add_videos(250, spacing=timedelta(seconds=30))
    source_id = add_source(tiktok_cli)
    env = {setting: value}
    code, limited = sync(tiktok_cli, source_id, env=env)
    assert code == 1 and limited["status"] == "rate_limited" and "quota spent until" in limited["message"], limited
    assert limited["mentions_saved"] == 100 * calls and len(api.queries) == calls
    assert ledger(conn) == used
    source = db.get_source(conn, source_id)
    assert source.inflight_cursor["active"]["cursor"] == 100 * calls  # the next day continues where this stopped
    again = tiktok_cli("sync", "source", str(source_id), env=env)
    assert again.returncode == 1 and "rate limited until" in again.stdout
    other = add_source(tiktok_cli, name="other")  # another source on the same client key shares the ledger
    code, shared = sync(tiktok_cli, other, env=env)
    assert code == 1 and shared["status"] == "rate_limited" and len(api.queries) == calls


def test_tiktoks_daily_quota_error_holds_until_midnight_utc_and_spends_the_ledger(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection
) -> None:
    api.add_videos(150)
    source_id = add_source(tiktok_cli)
    api.fail_429_from_call = 1  # the second page: TikTok counted otherwise
    code, limited = sync(tiktok_cli, source_id)
    assert code == 1 and limited["status"] == "rate_limited" and limited["mentions_saved"] == 100, limited
    assert "daily_quota_limit_exceeded" in limited["message"]
    midnight = quota_day(datetime.now(UTC))[1]
    status = tiktok_cli.ok("status", str(source_id), "--json").json()
    assert status["rate_limit"]["remaining"] == 0
    assert datetime.fromisoformat(status["rate_limit"]["reset_at"].replace("Z", "+00:00")) == midnight
    assert ledger(conn) == {REQUESTS_KEY: 1000, RECORDS_KEY: 100_000}
    calls = len(api.queries)
    assert tiktok_cli.ok("sync", "due", "--json").json()["results"] == []
    other = add_source(tiktok_cli, name="other")
    code, shared = sync(tiktok_cli, other)
    assert code == 1 and shared["status"] == "rate_limited" and len(api.queries) == calls
    assert db.get_source(conn, source_id).consecutive_failures == 0


def test_a_refused_client_key_marks_the_source_error_with_advice(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection
) -> None:
    api.add_videos(3)
    source_id = add_source(tiktok_cli)
    code, refused = sync(tiktok_cli, source_id, env={"TIKTOK_CLIENT_SECRET": "not-the-secret-42"})
    assert code == 1 and refused["status"] == "error", refused
    assert "TIKTOK_CLIENT_KEY" in refused["message"] and f"slsync sync source {source_id}" in refused["message"]
    assert "not-the-secret-42" not in refused["message"] and not api.queries
    assert ledger(conn) == {REQUESTS_KEY: 0, RECORDS_KEY: 0}  # no call was made: the reservation went back
    code, healed = sync(tiktok_cli, source_id)
    assert code == 0 and healed["mentions_saved"] == 3 and db.get_source(conn, source_id).status == "active"


def test_platforms_lists_tiktok_active_and_language_is_refused(tiktok_cli: Cli) -> None:
    platforms = {p["name"]: p for p in tiktok_cli.ok("platforms", "--json").json()["platforms"]}
    assert platforms["tiktok"]["state"] == "active"
    refused = tiktok_cli(
        "source", "add", "tiktok", "--tenant", "1", "--name", "x", "--keyword", "a", "--language", "en"
    )
    assert refused.returncode == 2 and "language" in refused.stderr


# --- comments: the normalizer ---------------------------------------------------------------------

VIDEO_URL = "https://www.tiktok.com/@acme.coffee_fan/video/7306179836463286570"

# A comment list page as the Query Video Comments reference describes it (its example response, with every
# Comment Object field asked for; the second text is the reference's example of redacted personal data).
REFERENCE_COMMENTS: dict[str, Any] = {
    "data": {
        "comments": [
            {
                "text": "AWEEEEEE 🥰🥰🥰 acme cold brew forever",
                "video_id": 7306179836463286570,
                "create_time": 1701220000,
                "id": 7306190000000000001,
                "like_count": 50,
                "parent_comment_id": 7306179836463286570,
                "reply_count": 10,
            },
            {
                "text": "Could you please contact me? 40******30 is my number.",
                "video_id": 7306179836463286570,
                "create_time": 1701223600,
                "id": 7306190000000000002,
                "like_count": 0,
                "parent_comment_id": 7306179836463286570,
                "reply_count": 0,
            },
        ],
        "has_more": True,
        "cursor": 100,
    },
    "error": {"code": "ok", "message": "", "log_id": "202207280326050102231031430C7E754E"},
}


def test_a_reference_comment_page_normalizes_every_field() -> None:
    mentions, errors = normalize_comments_page(REFERENCE_COMMENTS, VIDEO_URL)
    assert errors == 0 and len(mentions) == 2
    first, second = mentions
    assert first.platform == "tiktok" and first.external_id == "comment:7306190000000000001"
    assert first.published_at == datetime(2023, 11, 29, 1, 6, 40, tzinfo=UTC)
    assert first.url == VIDEO_URL  # TikTok has no comment permalink: the video's URL
    assert first.content == "AWEEEEEE 🥰🥰🥰 acme cold brew forever"
    assert (first.likes_count, first.comments_count, first.shares_count) == (50, 10, None)
    assert (first.author_name, first.author_handle, first.author_followers) == (None, None, None)  # not given
    assert (first.media_type, first.media_urls, first.location, first.language) == ("text", None, None, None)
    assert first.raw["parent_comment_id"] == 7306179836463286570 and first.raw["video_id"] == 7306179836463286570
    assert second.external_id == "comment:7306190000000000002" and second.likes_count == 0
    assert second.content == "Could you please contact me? 40******30 is my number."


def test_broken_comments_are_skipped_and_counted_never_invented() -> None:
    page = copy.deepcopy(REFERENCE_COMMENTS)
    good = page["data"]["comments"][0]
    page["data"]["comments"] = [
        good,
        {**good, "id": None},
        {**good, "id": -5},
        {**good, "id": 1.5},
        {**good, "create_time": None},
        {**good, "create_time": float("inf")},
        ["not", "a", "comment"],
        {**good, "id": "7306190000000000003", "text": "", "like_count": "50", "reply_count": -1},
    ]
    mentions, errors = normalize_comments_page(page, None)
    assert errors == 6 and [m.external_id for m in mentions] == [
        "comment:7306190000000000001",
        "comment:7306190000000000003",
    ]
    last = mentions[1]
    assert last.url is None and last.content is None and last.likes_count is None and last.comments_count is None
    assert normalize_comments_page({"data": {"comments": None}}, VIDEO_URL) == ([], 0)
    assert normalize_comments_page("not a page", VIDEO_URL) == ([], 0)


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(body=json_value, comment=json_value)
def test_the_comment_normalizer_tolerates_any_json(body: Any, comment: Any) -> None:
    for page in (body, {"data": {"comments": [comment]}}, {"data": {"comments": [{"id": 7, "create_time": 1, **(
        comment if isinstance(comment, dict) else {}
    )}]}}):  # fmt: skip
        mentions, errors = normalize_comments_page(page, VIDEO_URL)
        assert all(m.external_id.startswith("comment:") for m in mentions) and errors >= 0


# --- comments: the ledger and the skips, in process ------------------------------------------------


def chosen_scene(api: TikTokApi, *, old: bool = False) -> dict[str, int]:
    """Videos found by the query: one without comments (the newest), b with 3 comments, a with 150 (two comment
    pages) and, if asked, an older one with 5; comments=2 chooses b then a."""
    now = datetime.now(UTC).replace(microsecond=0)
    ids = {"zero": api.add_video(now - timedelta(minutes=30), comment_count=0)}
    ids["b"] = api.add_video(now - timedelta(hours=1))
    ids["a"] = api.add_video(now - timedelta(hours=2))
    api.add_comments(ids["b"], 3)
    api.add_comments(ids["a"], 150)
    if old:
        ids["old"] = api.add_video(now - timedelta(hours=3))
        api.add_comments(ids["old"], 5)
    return ids


def test_every_request_sent_is_counted_even_a_retry_without_a_sleep(
    api: TikTokApi, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = tiktok.http.send

    def send_without_sleeping(*args: Any, **kwargs: Any) -> Any:
        return real_send(*args, **{**kwargs, "sleep": lambda seconds: None})  # retries that never call a hook

    monkeypatch.setattr(tiktok.http, "send", send_without_sleeping)
    api.add_videos(5)
    api.faults = [503, 503]
    pages = list(connector(api, conn).pages(None, since=datetime.now(UTC) - timedelta(days=1), resume=None))
    assert [len(p.mentions) for p in pages] == [5] and len(api.queries) == 3
    assert ledger(conn) == {REQUESTS_KEY: 3, RECORDS_KEY: 5}
    assert pages[0].rate_limit.remaining == 997  # the last attempt's unit


def test_a_call_that_fails_after_its_retries_has_paid_for_each_attempt(
    api: TikTokApi, conn: db.Connection, no_waits: None
) -> None:
    api.add_videos(5)
    api.faults = [503] * 4  # the shared policy makes 4 attempts
    with pytest.raises(Retriable, match="HTTP 503"):
        list(connector(api, conn).pages(None, since=datetime.now(UTC) - timedelta(days=1), resume=None))
    assert len(api.queries) == 4 and ledger(conn) == {REQUESTS_KEY: 4, RECORDS_KEY: 0}


@pytest.mark.parametrize("failing", [["b"], ["b", "a"]])
def test_a_video_whose_comments_tiktok_keeps_failing_is_skipped_but_two_in_a_row_stop_the_run(
    api: TikTokApi, conn: db.Connection, no_waits: None, failing: list[str]
) -> None:
    ids = chosen_scene(api)
    for name in failing:
        api.comment_faults[ids[name]] = (503, "internal_error", "injected HTTP 503")
    pages = connector(api, conn, {"comments": "2"}).pages(
        None, since=datetime.now(UTC) - timedelta(days=1), resume=None
    )
    if len(failing) == 2:
        seen = []
        with pytest.raises(Retriable, match="two videos in a row"):
            seen.extend(pages)
        # the resume goes on with a, the second failing video; b stays unread (chosen again by a later run)
        assert seen[-1].cursor["comments"]["queue"][0]["id"] == str(ids["a"]) and not seen[-1].mentions
        assert str(ids["b"]) not in seen[-1].cursor["comments"]["read"]
        assert len(api.comment_calls) == 8
        return
    done = list(pages)
    assert [len(p.mentions) for p in done] == [3, 0, 100, 50]
    assert set(done[-1].cursor["comments"]["read"]) == {str(ids["a"])}  # b may be read by a later run
    assert ledger(conn)[REQUESTS_KEY] == 1 + 4 + 2  # every attempt at b was paid for


def test_a_run_interrupted_between_video_pages_keeps_the_videos_it_chose(api: TikTokApi, conn: db.Connection) -> None:
    ids = api.add_videos(150, spacing=timedelta(seconds=1), comment_count=0)
    api.add_comments(ids[-1], 2)  # the newest two videos, on the first of the two query pages
    api.add_comments(ids[-2], 1)
    since = datetime.now(UTC) - timedelta(days=1)
    first = next(connector(api, conn, {"comments": "2"}).pages(None, since=since, resume=None))
    assert [video["id"] for video in first.cursor["comments"]["chosen"]] == [str(ids[-1]), str(ids[-2])]
    rest = list(connector(api, conn, {"comments": "2"}).pages(None, since=None, resume=first.cursor))
    assert [len(p.mentions) for p in rest] == [50, 2, 1] and len(api.queries) == 2
    assert [(r.body["video_id"], r.body["cursor"]) for r in api.comment_calls] == [(ids[-1], 0), (ids[-2], 0)]
    final = rest[-1].cursor
    assert final["through"] == today().isoformat() and "active" not in final and "queue" not in final["comments"]
    assert {k: v[0] for k, v in final["comments"]["read"].items()} == {str(ids[-1]): 2, str(ids[-2]): 1}


# --- comments: whole syncs through the CLI --------------------------------------------------------


def comment_bodies(api: TikTokApi, since: int = 0) -> list[tuple[int, int]]:
    return [(r.body["video_id"], r.body["cursor"]) for r in api.comment_calls[since:]]


def test_comments_of_exactly_the_chosen_videos_over_two_comment_pages(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection
) -> None:
    ids = chosen_scene(api, old=True)
    source_id = add_source(tiktok_cli, "--option", "comments=2")
    code, first = sync(tiktok_cli, source_id)
    assert code == 0 and first["success"] and first["pages"] == 4 and first["mentions_saved"] == 4 + 153, first
    # the videos first (saved with their page), then the newest two with comments: b, then a over two pages
    assert [r.path for r in api.requests if r.path != "/v2/oauth/token/"] == [QUERY_PATH] + [COMMENTS_PATH] * 3
    assert comment_bodies(api) == [(ids["b"], 0), (ids["a"], 0), (ids["a"], 100)]
    assert all(r.body["max_count"] == 100 and r.params["fields"] == COMMENT_FIELDS for r in api.comment_calls)
    assert all(r.authorization == "Bearer clt.stand-in-1" for r in api.comment_calls)
    comment = api.comments[ids["a"]][120]
    row = conn.execute(
        "SELECT url, content, likes_count, comments_count, author_handle, published_at, raw FROM sl_mentions"
        " JOIN sl_mention_raw ON mention_id = id WHERE external_id = %s",
        (f"comment:{comment['id']}",),
    ).fetchone()
    video = next(v for v in api.videos if v["id"] == ids["a"])
    assert row["url"] == f"https://www.tiktok.com/@{video['username']}/video/{ids['a']}"
    assert (row["content"], row["likes_count"], row["comments_count"]) == (
        comment["text"], comment["like_count"], comment["reply_count"]
    )  # fmt: skip
    assert row["author_handle"] is None and row["raw"]["video_id"] == ids["a"]
    assert row["published_at"] == datetime.fromtimestamp(comment["create_time"], UTC)
    assert (
        conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE external_id LIKE 'comment:%%'").fetchone()["n"] == 153
    )
    assert ledger(conn) == {REQUESTS_KEY: 4, RECORDS_KEY: 4 + 153}
    read = db.get_source(conn, source_id).committed_cursor["comments"]["read"]
    assert {k: v[0] for k, v in read.items()} == {str(ids["b"]): 3, str(ids["a"]): 150}
    assert tiktok_cli.ok("status", str(source_id), "--json").json()["rate_limit"]["remaining"] == 996
    # the operator's status shows what is left of both daily budgets
    quotas = {q["credential"]: q for q in tiktok_cli.ok("status", "--json").json()["quotas"]}
    assert (quotas[REQUESTS_KEY]["remaining"], quotas[RECORDS_KEY]["remaining"]) == (996, 100_000 - 4 - 153)
    assert "tiktok:requests:" in tiktok_cli.ok("status").stdout

    code, second = sync(tiktok_cli, source_id)  # a and b unchanged: the older video, never read, fits now
    assert code == 0 and second["mentions_saved"] == 5 and comment_bodies(api, 3) == [(ids["old"], 0)], second
    code, third = sync(tiktok_cli, source_id)  # no comment_count grew: no comment call at all
    assert code == 0 and third["mentions_saved"] == 0 and len(api.comment_calls) == 4, third

    api.add_comments(ids["b"], 2)  # b's comment_count grows to 5: b is read again, from its first comment
    code, fourth = sync(tiktok_cli, source_id)
    assert code == 0 and fourth["mentions_saved"] == 2 and comment_bodies(api, 4) == [(ids["b"], 0)], fourth
    assert fourth["duplicates"] == 4 + 3  # the videos and b's three known comments, absorbed by the unique key


def test_comment_calls_stop_before_the_limit_and_the_next_run_resumes_inside_the_comment_phase(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection
) -> None:
    ids = chosen_scene(api)
    source_id = add_source(tiktok_cli, "--option", "comments=2")
    env = {"SLSYNC_TIKTOK_DAILY_REQUESTS": "3"}
    code, limited = sync(tiktok_cli, source_id, env=env)
    assert code == 1 and limited["status"] == "rate_limited" and "request quota spent until" in limited["message"]
    assert limited["mentions_saved"] == 3 + 3 + 100, limited  # the videos, b's comments, a's first page
    assert len(api.queries) == 1 and comment_bodies(api) == [(ids["b"], 0), (ids["a"], 0)]  # none beyond the 3
    assert ledger(conn) == {REQUESTS_KEY: 3, RECORDS_KEY: 3 + 3 + 100}
    inflight = db.get_source(conn, source_id).inflight_cursor["comments"]
    assert [v["id"] for v in inflight["queue"]] == [str(ids["a"])] and inflight["cursor"] == 100
    again = tiktok_cli("sync", "source", str(source_id), env=env)
    assert again.returncode == 1 and "rate limited until" in again.stdout and len(api.comment_calls) == 2

    # midnight UTC: a new quota day, and the source's reset has passed
    conn.execute("DELETE FROM sl_quota_ledger")
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    code, resumed = sync(tiktok_cli, source_id, env=env)
    assert code == 0 and resumed["mentions_saved"] == 50 and resumed["pages"] == 1, resumed
    assert len(api.queries) == 1 and comment_bodies(api, 2) == [(ids["a"], 100)]  # no video query again
    source = db.get_source(conn, source_id)
    assert source.inflight_cursor is None and source.committed_cursor["through"] == today().isoformat()
    assert set(source.committed_cursor["comments"]["read"]) == {str(ids["a"]), str(ids["b"])}
    assert ledger(conn) == {REQUESTS_KEY: 1, RECORDS_KEY: 50}


@pytest.mark.parametrize(
    "refusal",
    [
        (400, "invalid_params", "The video 7300000000000000002 does not exist"),  # deleted
        (403, "forbidden", "Comments are turned off for this video"),
        (404, "not_found", "video not found"),
        (200, "invalid_params", "The video is private"),  # an error object with HTTP 200
    ],
)
def test_a_video_tiktok_refuses_comments_for_is_skipped_and_logged_and_the_run_goes_on(
    tiktok_cli: Cli, api: TikTokApi, conn: db.Connection, refusal: tuple[int, str, str]
) -> None:
    ids = chosen_scene(api)
    api.comment_faults[ids["b"]] = refusal
    source_id = add_source(tiktok_cli, "--option", "comments=2")
    result = tiktok_cli("sync", "source", str(source_id), "--json")
    outcome = json.loads(result.stdout)
    assert result.returncode == 0 and outcome["status"] == "active" and outcome["mentions_saved"] == 3 + 150, outcome
    assert f"skipped the comments of TikTok video {ids['b']}" in result.stderr and refusal[2] in result.stderr
    assert comment_bodies(api) == [(ids["b"], 0), (ids["a"], 0), (ids["a"], 100)] and outcome["pages"] == 4
    assert db.get_source(conn, source_id).status == "active"
    code, again = sync(tiktok_cli, source_id)  # b is not asked again until its comment_count grows
    assert code == 0 and len(api.comment_calls) == 3, again
