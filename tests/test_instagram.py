"""The Instagram connector: what a source may ask, the real recorded payloads it normalizes, the
hashtag budget Meta sets per account, and connect + whole syncs through the real CLI against a
loopback stand-in of the Graph API and Facebook Login."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from slsync import db
from slsync.connectors.base import Context
from slsync.connectors.instagram import (
    HASHTAG_LIMIT,
    Account,
    InstagramConnector,
    build_streams,
    normalize_media,
    normalize_page,
    shortcode_time,
)
from slsync.errors import UsageError
from slsync.models import Source
from slsync.tokens import FileStore
from tests.conftest import Cli
from tests.fakes.browser import connect_in_browser
from tests.fakes.instagram_api import IG_USER_ID, PAGE_ID, InstagramApi, shortcode

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "instagram"
SPACING = timedelta(minutes=11)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def config(options: dict[str, str] | None = None, **search: list[str]) -> dict[str, Any]:
    return InstagramConnector.build_config(search, {"page": PAGE_ID} if options is None else options)


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


# --- what a source may ask ------------------------------------------------------------------------


def test_a_source_reads_the_tags_and_each_hashtag_once() -> None:
    built = config(hashtags=["#Acme", "acme", "acmecoffee"], exclude=["jobs"])
    assert built["options"] == {"page": PAGE_ID}
    assert [s.name for s in build_streams(built)] == ["tags", "hashtag:acme", "hashtag:acmecoffee"]
    assert [s.name for s in build_streams(config({"ig_user": IG_USER_ID, "tags": "no"}, hashtags=["acme"]))] == [
        "hashtag:acme"
    ]
    assert [s.name for s in build_streams(config())] == ["tags"]  # no search terms needed: the brand's tags


@pytest.mark.parametrize(
    ("options", "search", "says"),
    [
        ({"page": PAGE_ID}, {"keywords": ["acme"]}, "no keyword search"),
        ({"page": PAGE_ID}, {"mentions": ["acme"]}, "@mentions of other accounts cannot be searched"),
        ({"page": PAGE_ID}, {"languages": ["en"]}, "no language"),
        ({}, {"hashtags": ["acme"]}, "names its account"),
        ({"page": PAGE_ID, "ig_user": IG_USER_ID}, {}, "not both"),
        ({"page": PAGE_ID, "tags": "no"}, {}, "needs at least one --hashtag"),
        ({"page": PAGE_ID}, {"hashtags": ["acme coffee"]}, "not a hashtag Instagram can search for"),
        ({"page": PAGE_ID}, {"hashtags": [f"tag{n}" for n in range(HASHTAG_LIMIT + 1)]}, "at most 30 distinct"),
        ({"page": "acme"}, {}, "not a Facebook page id"),
        ({"page": PAGE_ID, "overlap_minutes": "2000"}, {}, "0 to 1440"),
    ],
)
def test_what_instagram_cannot_be_asked_is_refused_with_one_line(
    options: dict[str, str], search: dict[str, list[str]], says: str
) -> None:
    with pytest.raises(UsageError, match=says):
        InstagramConnector.build_config(search, options)


def test_thirty_hashtags_fit_in_one_source() -> None:
    built = config(hashtags=[f"tag{n}" for n in range(HASHTAG_LIMIT)])
    assert len(build_streams(built)) == HASHTAG_LIMIT + 1


# --- the recorded payloads ------------------------------------------------------------------------


def test_recorded_tagged_media_become_these_mentions() -> None:
    mentions, errors = normalize_page(fixture("user_tags_media"))
    assert errors == 0 and len(mentions) == 5
    first = mentions[0]
    assert first.platform == "instagram" and first.external_id == "17892354025952911"
    assert first.published_at == utc("2021-03-16T12:02:14+00:00")
    assert first.url == "https://www.instagram.com/p/CMeo7rcJvTi/"
    assert first.content == "publish test"
    assert (first.likes_count, first.comments_count, first.shares_count) == (2, 0, None)
    assert first.media_type == "image"
    assert first.media_urls is not None and len(first.media_urls) == 1
    assert first.media_urls[0].startswith("https://scontent-gmp1-1.cdninstagram.com/v/t51.2885-15/160393555_")
    assert first.author_handle is None and first.author_name is None  # the recording asked no username
    assert first.language is None and first.location is None
    assert first.raw is not None and first.raw["id"] == "17892354025952911"
    third = mentions[2]
    assert third.content == "Cute.. #cute #loveyou  @ikroskun" and (third.likes_count, third.comments_count) == (3, 6)
    assert mentions[4].content is None  # a media without a caption keeps its other fields
    assert mentions[4].published_at == utc("2018-10-09T09:35:07+00:00") and mentions[4].likes_count == 7


def test_recorded_hashtag_media_without_timestamp_take_the_time_in_their_shortcode() -> None:
    """The recording asked no `timestamp` (slsync always does); the permalink's shortcode holds the upload time."""
    mentions, errors = normalize_page(fixture("hashtag_top_media_p1"))
    assert errors == 0 and len(mentions) == 25
    first = mentions[0]
    assert first.external_id == "18088158883149835" and first.url == "https://www.instagram.com/p/B8goRvrnwod/"
    assert first.published_at == datetime(2020, 2, 13, 14, 7, 32, 784000, UTC)
    assert (first.likes_count, first.comments_count, first.media_type) == (997, 10, "image")
    assert first.content is not None and first.content.startswith("• Our Love ❤️ is the best Love")
    carousel = mentions[10]
    assert carousel.external_id == "17881768807512229" and carousel.media_type == "carousel"
    assert carousel.media_urls is not None and len(carousel.media_urls) == 4
    assert all(".mp4?" in url for url in carousel.media_urls)  # the children's files; the album has none
    assert (carousel.likes_count, carousel.comments_count) == (1929, 19)
    assert all(
        datetime(2020, 2, 13, 13, 0, tzinfo=UTC) < m.published_at < datetime(2020, 2, 13, 15, tzinfo=UTC)
        for m in mentions
    )


def test_the_shortcode_time_agrees_with_recorded_timestamps() -> None:
    for item in fixture("user_tags_media")["data"]:
        derived = shortcode_time(item["permalink"])
        assert derived is not None
        # the upload time (in milliseconds; timestamps have whole seconds), at most minutes before publishing
        assert (
            timedelta(seconds=-1) < utc(item["timestamp"].replace("+0000", "+00:00")) - derived < timedelta(minutes=10)
        )
    moment = datetime(2026, 11, 30, 8, 15, 42, 123000, UTC)
    assert shortcode_time(f"https://www.instagram.com/reel/{shortcode(moment, 77)}/") == moment
    assert shortcode_time("https://www.instagram.com/explore/tags/acme/") is None
    assert shortcode_time("https://www.instagram.com/p/AAAAAAA/") is None  # no time in an early sequential id


def test_the_recorded_hashtag_search_gives_the_hashtag_id_slsync_caches() -> None:
    recorded = fixture("ig_hashtag_search")
    asked: list[tuple[str, dict[str, str]]] = []

    class Recorded(InstagramConnector):
        def _get(self, path: str, params: Any) -> tuple[dict[str, Any], None]:
            asked.append((path, dict(params)))
            return recorded, None

    connector = Recorded(_source({"page": PAGE_ID}, hashtags=["developers"]), Context(now=lambda: datetime.now(UTC)))
    account = Account(PAGE_ID, IG_USER_ID)
    assert connector._hashtag_id(account, "developers") == "17841562426109234"
    assert account.hashtag_ids == {"developers": "17841562426109234"}
    assert asked == [("/ig_hashtag_search", {"user_id": IG_USER_ID, "q": "developers"})]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "1", "timestamp": "2026-11-30T10:00:00+0000", "media_type": "REELS"}, ("video", ())),
        ({"id": "1", "timestamp": "2026-11-30T10:00:00+0000", "media_type": "STORY"}, (None, ())),
        ({"id": "1", "timestamp": "2026-11-30T10:00:00+0000", "media_url": "ftp://x"}, (None, ())),
        ({"id": "1", "timestamp": "2026-11-30T10:00:00+0000", "media_type": 3, "like_count": -1}, (None, ())),
    ],
)
def test_odd_values_become_empty_fields_never_invented_ones(item: dict, expected: tuple) -> None:
    mention = normalize_media(item)
    assert (mention.media_type, mention.media_urls) == expected
    assert mention.likes_count is None and mention.url is None and mention.content is None


def test_media_without_an_id_or_any_time_are_skipped_and_counted() -> None:
    body = {"data": [{"id": "1"}, {"timestamp": "2026-11-30T10:00:00+0000"}, "x", {"id": "2", "timestamp": "soon"}]}
    assert normalize_page(body) == ([], 4)


def _source(options: dict[str, str], **search: list[str]) -> Source:
    now = datetime.now(UTC)
    return Source(
        id=1, tenant_id=1, platform="instagram", name="acme", connection_type="user",
        config=InstagramConnector.build_config(search, options), status="connected", error_message=None,
        sync_interval_minutes=15, last_sync_at=None, next_sync_at=now, committed_cursor=None, inflight_cursor=None,
        rate_limit_limit=None, rate_limit_remaining=None, rate_limit_reset_at=None, consecutive_failures=0,
        mentions_count=0, created_at=now,
    )  # fmt: skip


# --- through the CLI against the stand-in ---------------------------------------------------------


@pytest.fixture
def api() -> Iterator[InstagramApi]:
    stand_in = InstagramApi().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def ig_cli(cli: Cli, api: InstagramApi) -> Cli:
    cli.env.update({**api.env(), "SLSYNC_TOKEN_STORE": "file"})
    return cli


def add_source(cli: Cli, name: str, *args: str) -> int:
    return cli.ok("source", "add", "instagram", "--tenant", "1", "--name", name, *args, "--json").json()["id"]


def connect(cli: Cli, source_id: int) -> None:
    code, stdout, stderr, _ = connect_in_browser(cli, source_id)
    assert code == 0, (stdout, stderr)


def sync(cli: Cli, source_id: int) -> tuple[dict[str, Any], str]:
    result = cli("sync", "source", str(source_id), "--json")
    return json.loads(result.stdout), result.stderr


def test_connect_keeps_the_long_lived_user_token_and_says_when_to_reconnect(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection, tmp_path: Path
) -> None:
    source_id = add_source(ig_cli, "acme", "--hashtag", "acme", "--option", f"page={PAGE_ID}")
    assert db.get_source(conn, source_id).status == "pending"
    code, stdout, stderr, page = connect_in_browser(ig_cli, source_id)
    assert code == 0 and page.status_code == 200, (stdout, stderr)

    scope = api.authorize_params[0]["scope"].split()
    assert {"instagram_basic", "instagram_manage_comments", "pages_show_list", "pages_read_engagement"} <= set(scope)
    grants = [r.get("grant_type") for r in api.token_requests]
    assert grants == ["authorization_code", "fb_exchange_token"]
    stored = json.loads((tmp_path / "data" / "tokens.json").read_text())
    kept = json.dumps(stored)
    assert any(token in kept for token in api.long_tokens) and not any(t in kept for t in api.short_tokens)
    # the page's linked account was read with the new token before anything was kept
    assert [r.path for r in api.graph_calls] == [f"/v23.0/{PAGE_ID}"]
    source = db.get_source(conn, source_id)
    assert source.status == "connected" and source.reconnect_by is not None
    assert timedelta(days=59) < source.reconnect_by - datetime.now(UTC) <= timedelta(days=60)
    for secret in [*api.long_tokens, *api.short_tokens, api.app_secret]:
        assert secret not in stdout + stderr
    assert "access_token" not in json.dumps(db.get_source(conn, source_id).config)


def test_a_page_without_a_linked_instagram_account_is_refused_at_connect(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection, tmp_path: Path
) -> None:
    api.pages["104000000000002"] = None
    source_id = add_source(ig_cli, "acme", "--option", "page=104000000000002")
    code, stdout, stderr, _ = connect_in_browser(ig_cli, source_id)
    assert code == 2 and "page 104000000000002 has no Instagram professional account linked" in stderr
    assert "nothing was stored" in stderr and db.get_source(conn, source_id).status == "pending"
    tokens = tmp_path / "data" / "tokens.json"
    assert not tokens.exists() or not any(t in tokens.read_text() for t in api.long_tokens)


def test_two_pages_of_hashtag_media_and_tags_then_only_what_is_new(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    api.hashtag_id("acme")
    api.add_hashtag_media("acme", 70, newest=start + SPACING * 70, spacing=SPACING)
    api.add_hashtag_media("acme", 5, newest=start - timedelta(hours=6), spacing=SPACING)  # older than 24 hours
    api.add_tagged_media(60, newest=start + SPACING * 60, spacing=SPACING)
    source_id = add_source(ig_cli, "acme", "--hashtag", "acme", "--option", f"page={PAGE_ID}", "--exclude", "no. 3")
    connect(ig_cli, source_id)

    first, _ = sync(ig_cli, source_id)
    # tags: 50, 10 and an empty page (the tags edge sends no `next`); #acme: 50 and 20
    assert first["success"] and first["pages"] == 5, first
    assert first["mentions_saved"] == 70 - 1 + 60  # "no. 3" is excluded; media older than 24 h never come
    assert len(api.hashtag_searches()) == 1
    recent = api.calls_to("/recent_media")
    assert [r.params.get("after") is None for r in recent] == [True, False]
    assert all(r.params["user_id"] == IG_USER_ID and r.params["limit"] == "50" for r in recent)
    assert "username" not in recent[0].params["fields"] and "username" in api.calls_to("/tags")[0].params["fields"]
    # the token went in the header only; the `next` link's access_token was never followed
    assert all(r.token in api.long_tokens and "access_token" not in r.params for r in api.graph_calls)

    rows = {
        r["external_id"]: r
        for r in conn.execute("SELECT * FROM sl_mentions WHERE source_id = %s", (source_id,)).fetchall()
    }
    tagged = rows[api.tagged[IG_USER_ID][0]["id"]]
    assert tagged["author_handle"] == "fan_0" and tagged["url"].startswith("https://www.instagram.com/p/")
    carousel = next(r for r in rows.values() if r["media_type"] == "carousel")
    assert len(carousel["media_urls"]) == 2
    assert {r["media_type"] for r in rows.values()} == {"image", "video", "carousel"}

    calls = len(api.graph_calls)
    api.add_hashtag_media("acme", 3, newest=start + SPACING * 73, spacing=SPACING)
    api.add_tagged_media(2, newest=start + SPACING * 62, spacing=SPACING)
    second, _ = sync(ig_cli, source_id)
    assert second["success"] and second["mentions_saved"] == 5, second
    # each stream reads again the 10 minutes before its newest stored media: here that media alone
    assert second["mentions_fetched"] == 7 and second["duplicates"] == 2
    # one call per stream: no page lookup and no hashtag search (both cached in the cursor)
    assert [r.path.rsplit("/", 1)[-1] for r in api.graph_calls[calls:]] == ["tags", "recent_media"]
    third, _ = sync(ig_cli, source_id)
    assert third["success"] and third["mentions_saved"] == 0
    # the stand-in reports 5 % usage: 95 of 100 left, and no reset while Meta is not throttling
    limits = ig_cli.ok("status", str(source_id), "--json").json()["rate_limit"]
    assert (limits["remaining"], limits["reset_at"]) == (95, None)


def test_the_usage_headers_stop_the_run_before_meta_blocks_the_app(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)
    api.hashtag_id("acme")
    api.add_hashtag_media("acme", 120, newest=start + timedelta(minutes=5 * 120), spacing=timedelta(minutes=5))
    source_id = add_source(ig_cli, "acme", "--hashtag", "acme", "--option", f"page={PAGE_ID}", "--option", "tags=no")
    connect(ig_cli, source_id)
    connect_calls = len(api.graph_calls)
    # the page lookup and the hashtag search report low usage; the first recent_media page reports 93 %
    api.usage = lambda n: 93 if n >= connect_calls + 2 else 20

    limited, _ = sync(ig_cli, source_id)
    assert limited["status"] == "rate_limited" and limited["mentions_saved"] == 50, limited
    assert len(api.graph_calls) == connect_calls + 3  # no call after the one that said 93 %
    again = ig_cli("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert len(api.graph_calls) == connect_calls + 3
    status = ig_cli.ok("status", str(source_id), "--json").json()["rate_limit"]
    assert status["remaining"] == 0
    assert (
        timedelta(minutes=55) < utc(status["reset_at"].replace("Z", "+00:00")) - datetime.now(UTC) <= timedelta(hours=1)
    )

    # after the reset, the run continues from the page it stopped at
    conn.execute(
        "UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now() WHERE id = %s",
        (source_id,),
    )
    api.usage = lambda n: 20
    resumed, _ = sync(ig_cli, source_id)
    assert resumed["success"] and resumed["mentions_saved"] == 70, resumed
    assert api.calls_to("/recent_media")[-2].params.get("after") is not None  # continued, not started over


def test_thirty_hashtags_per_account_in_seven_days_across_its_sources(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    names = [f"acme{n}" for n in range(HASHTAG_LIMIT + 1)]
    for name in names:
        api.hashtag_id(name)
    page = ["--option", f"page={PAGE_ID}", "--option", "tags=no"]
    first = add_source(ig_cli, "first", *page, *(a for n in names[:20] for a in ("--hashtag", n)))
    # acme0 again: a hashtag already counted is free
    second = add_source(ig_cli, "second", *page, *(a for n in [names[0], *names[20:30]] for a in ("--hashtag", n)))
    third = add_source(ig_cli, "third", "--option", f"page={PAGE_ID}", "--hashtag", names[30])
    for source_id in (first, second, third):
        connect(ig_cli, source_id)

    for source_id in (first, second):
        done, stderr = sync(ig_cli, source_id)
        assert done["success"] and done["errors"] == 0 and "not queried" not in stderr, (done, stderr)
    assert len({r.params["q"] for r in api.hashtag_searches()}) == 30

    calls = len(api.graph_calls)
    refused, stderr = sync(ig_cli, third)
    assert refused["success"] and refused["status"] == "active" and refused["errors"] == 1, refused
    line = next(line for line in stderr.splitlines() if "not queried" in line)
    assert f"#{names[30]} not queried: Instagram account {IG_USER_ID} has used its 30 hashtags" in line
    # the page's account was looked up (a first sync) and its tags read; nothing was asked about the 31st hashtag
    assert [r.path.rsplit("/", 1)[-1] for r in api.graph_calls[calls:]] == [PAGE_ID, "tags"]
    assert not any(r.params.get("q") == names[30] for r in api.hashtag_searches())
    [budget] = [q for q in ig_cli.ok("status", "--json").json()["quotas"] if q["credential"].startswith("instagram:")]
    assert (budget["period"], budget["used"], budget["limit"], budget["remaining"]) == ("7 days", 30, 30, 0)

    repeat, stderr = sync(ig_cli, second)  # every hashtag of `second` is counted already: free
    assert repeat["success"] and repeat["errors"] == 0 and "not queried" not in stderr

    key = f"instagram:hashtags:{IG_USER_ID}"
    rows = conn.execute("SELECT item FROM sl_window_ledger WHERE credential_key = %s", (key,)).fetchall()
    assert sorted(r["item"] for r in rows) == sorted(names[:30])
    conn.execute(
        "UPDATE sl_window_ledger SET first_used_at = first_used_at - interval '7 days' "
        "WHERE credential_key = %s AND item = %s",
        (key, names[5]),
    )
    calls = len(api.graph_calls)
    fits, stderr = sync(ig_cli, third)
    assert fits["success"] and fits["errors"] == 0 and "not queried" not in stderr, (fits, stderr)
    assert [r.path.rsplit("/", 1)[-1] for r in api.graph_calls[calls:]] == ["tags", "ig_hashtag_search", "recent_media"]
    counted = conn.execute(
        "SELECT item FROM sl_window_ledger WHERE credential_key = %s AND first_used_at > now() - interval '7 days'",
        (key,),
    ).fetchall()
    assert (
        len(counted) == 30
        and names[30] in {r["item"] for r in counted}
        and names[5] not in {r["item"] for r in counted}
    )


def test_more_than_thirty_hashtags_in_one_source_are_refused_at_source_add(ig_cli: Cli) -> None:
    tags = [a for n in range(HASHTAG_LIMIT + 1) for a in ("--hashtag", f"acme{n}")]
    result = ig_cli(
        "source", "add", "instagram", "--tenant", "1", "--name", "big", "--option", f"page={PAGE_ID}", *tags
    )
    assert result.returncode == 2 and "at most 30 distinct hashtags" in result.stderr


def test_an_expired_token_marks_the_source_error_with_reconnect_advice(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    source_id = add_source(ig_cli, "acme", "--option", f"page={PAGE_ID}")
    connect(ig_cli, source_id)
    api.faults = [401]
    failed, stderr = sync(ig_cli, source_id)
    assert failed["status"] == "error" and f"reconnect: slsync connect {source_id}" in failed["message"], failed
    assert "code 190" in failed["message"]
    for secret in api.long_tokens:
        assert secret not in failed["message"] + stderr


def test_a_source_naming_the_instagram_account_needs_no_page_and_a_refused_hashtag_skips_alone(
    ig_cli: Cli, api: InstagramApi
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    api.hashtag_id("acme")
    api.add_hashtag_media("acme", 4, newest=start, spacing=SPACING)
    api.refused.add("badtag")
    source_id = add_source(
        ig_cli, "acme", "--option", f"ig_user={IG_USER_ID}", "--option", "tags=no", "--hashtag", "badtag",
        "--hashtag", "acme", "--hashtag", "nosuchtag",
    )  # fmt: skip
    connect(ig_cli, source_id)
    assert [r.path for r in api.graph_calls] == [f"/v23.0/{IG_USER_ID}"]  # checked at connect

    done, stderr = sync(ig_cli, source_id)
    assert done["success"] and done["mentions_saved"] == 4 and done["errors"] == 2, (done, stderr)
    assert "#badtag skipped this run: Instagram refused the request (HTTP 400, code 24/2207024" in stderr
    assert "#nosuchtag skipped this run: Instagram knows no such hashtag" in stderr
    # no page lookup: the source names the account itself
    assert [r.path.rsplit("/", 1)[-1] for r in api.graph_calls[1:]] == [
        "ig_hashtag_search", "ig_hashtag_search", "recent_media", "ig_hashtag_search",
    ]  # fmt: skip


def test_an_app_without_public_content_access_fails_the_run_instead_of_skipping_every_hashtag(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    api.no_public_content_access = True
    source_id = add_source(ig_cli, "acme", "--option", f"page={PAGE_ID}", "--hashtag", "acme")
    connect(ig_cli, source_id)
    failed, _ = sync(ig_cli, source_id)
    assert not failed["success"] and failed["status"] == "failing", failed
    assert "code 10" in failed["message"] and "Instagram Public Content Access" in failed["message"]
    assert db.get_source(conn, source_id).committed_cursor is None


def test_a_user_token_past_its_60_days_asks_for_a_reconnect_without_calling_meta(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection, tmp_path: Path
) -> None:
    source_id = add_source(ig_cli, "acme", "--option", f"page={PAGE_ID}")
    connect(ig_cli, source_id)
    store = FileStore(tmp_path / "data" / "tokens.json")
    token = store.get(source_id)
    assert token is not None and token.refresh_token is None and token.reconnect_by == token.expires_at
    store.put(source_id, replace(token, expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    calls = len(api.graph_calls)

    failed, _ = sync(ig_cli, source_id)
    assert failed["status"] == "error" and f"reconnect: slsync connect {source_id}" in failed["message"], failed
    assert len(api.graph_calls) == calls


def test_a_read_meta_refuses_for_every_media_asked_concludes_nothing(
    ig_cli: Cli, api: InstagramApi, conn: db.Connection
) -> None:
    """Meta names every media of a multiple-ID read as not loadable: deleted, or not readable by id with this
    token at all, which its answer does not tell apart. Nothing becomes a tombstone; the media are asked again
    at the next step. Naming some of them is different: the others are read, and the named are gone."""
    api.add_hashtag_media("acme", 5, newest=datetime.now(UTC) - timedelta(minutes=1))
    source_id = add_source(ig_cli, "acme", "--hashtag", "acme", "--option", f"ig_user={IG_USER_ID}", "--option",
                           "tags=no")  # fmt: skip
    connect(ig_cli, source_id)
    assert sync(ig_cli, source_id)[0]["mentions_saved"] == 5
    stored = [r["external_id"] for r in conn.execute("SELECT external_id FROM sl_mentions ORDER BY id").fetchall()]
    conn.execute("UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second'")
    for media_id in stored:
        api.delete(media_id)
    doc = ig_cli.ok("refresh", "--json").json()
    assert doc["calls"] == 1 and doc["deleted"] == 0 and doc["pending"] == 0
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE deleted_at IS NULL AND refresh_due_at > now()"
                        ).fetchone()["n"] == 5  # fmt: skip
    api.add_hashtag_media("acme", 2, newest=datetime.now(UTC))
    assert sync(ig_cli, source_id)[0]["mentions_saved"] == 2
    conn.execute("UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second'")
    doc = ig_cli.ok("refresh", "--json").json()
    assert doc["calls"] == 2 and doc["deleted"] == 5 and doc["checked"] == 7
