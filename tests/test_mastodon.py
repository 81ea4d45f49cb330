"""The Mastodon connector: what it asks the instance, the real recorded payloads it normalizes, and
whole syncs against a loopback instance driven through the real CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from slsync import db, http
from slsync.config import Settings
from slsync.connectors.base import Context
from slsync.connectors.mastodon import (
    MastodonConnector,
    build_streams,
    html_text,
    next_max_id,
    normalize_page,
    parse_instance,
    parse_links,
    parse_reset,
    rate_limit,
    snowflake_at,
    snowflake_time,
)
from slsync.errors import AuthError, Fatal, RateLimited, UsageError
from slsync.models import RateLimit, Source
from tests.conftest import Cli
from tests.fakes.mastodon_api import MastodonApi

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "mastodon"
# The Link header of the recorded timelines_tag_p1.json answer, as quoted in fixtures/real/SOURCES.md.
RECORDED_LINK = (
    "<http://localhost:3000/api/v1/timelines/tag/fgiztsshwiaqqiztpmmjbtvmescsculuvmgjgopwoeidbcrixp"
    '?limit=10&max_id=117020582177108552>; rel="next", '
    "<http://localhost:3000/api/v1/timelines/tag/fgiztsshwiaqqiztpmmjbtvmescsculuvmgjgopwoeidbcrixp"
    '?limit=10&min_id=117020582251615632>; rel="prev"'
)
README_EXAMPLE = {
    "keywords": ["acme", "acme coffee"],
    "hashtags": ["AcmeCoffee"],
    "exclude": ["jobs", "free shipping"],
    "languages": ["en"],
}


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def created(status: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(status["created_at"].replace("Z", "+00:00"))


# --- the search parameters ------------------------------------------------------------------------


def test_the_readme_example_becomes_one_timeline_and_one_search_per_keyword() -> None:
    config = MastodonConnector.build_config(README_EXAMPLE, {"instance": "https://Mastodon.Social/"})
    assert config["options"] == {"instance": "https://mastodon.social"}
    assert build_streams(config) == [
        "tag:acmecoffee",
        'search:acme -jobs -"free shipping" language:en',
        'search:"acme coffee" -jobs -"free shipping" language:en',
    ]
    # Mastodon ANDs language: filters, so several languages are filtered after the answer, not in q
    two = {**README_EXAMPLE, "languages": ["en", "de"], "exclude": []}
    assert build_streams(two)[1:] == ["search:acme", 'search:"acme coffee"']


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("https://mastodon.social", "https://mastodon.social"),
        ("https://FOSStodon.org/", "https://fosstodon.org"),
        ("https://social.example:8443", "https://social.example:8443"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://localhost:3000/", "http://localhost:3000"),
    ],
)
def test_instances_are_https_origins(value: str, origin: str) -> None:
    assert parse_instance(value) == origin


@pytest.mark.parametrize(
    "value",
    [
        "mastodon.social",
        "http://mastodon.social",
        "ftp://mastodon.social",
        "https://mastodon.social/@acme",
        "https://user:secret@mastodon.social",
        "https://mastodon.social/?q=1",
        "https://bad host",
        "https://mastodon.social:99999",
    ],
)
def test_instances_that_are_not_an_https_origin_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_instance(value)


@pytest.mark.parametrize(
    ("search", "options", "says"),
    [
        ({"hashtags": ["acme"]}, {}, "needs its instance"),
        ({"mentions": ["acme@mastodon.social"]}, {"instance": "https://m.example"}, "mention an account"),
        ({"hashtags": ["two words"]}, {"instance": "https://m.example"}, "not a Mastodon hashtag"),
        ({"hashtags": ["2024"]}, {"instance": "https://m.example"}, "not a Mastodon hashtag"),
        ({"keywords": ['say "hi"']}, {"instance": "https://m.example"}, "double quote"),
        ({"hashtags": ["acme"], "exclude": ['"x"']}, {"instance": "https://m.example"}, "double quote"),
        ({"keywords": ["acme"]}, {"instance": "https://m.example", "anonymous": "true"}, "needs an access token"),
        ({"keywords": [f"k{n}" for n in range(11)]}, {"instance": "https://m.example"}, "at most 10"),
        ({"hashtags": ["acme"]}, {"instance": "http://m.example"}, "must use https"),
        ({"hashtags": ["acme"]}, {"instance": "https://m.example", "local": "true"}, "unknown option"),
    ],
)
def test_what_mastodon_cannot_be_asked_is_refused_at_source_add(search: dict, options: dict, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        MastodonConnector.build_config(search, options)


# --- normalizing the recorded payloads ------------------------------------------------------------


def test_the_recorded_hashtag_timeline_normalizes_field_by_field() -> None:
    body = fixture("timelines_tag_p1")
    mentions, errors = normalize_page(body, "localhost:3000")
    assert errors == 0 and len(mentions) == len(body) == 10
    for status, mention in zip(body, mentions, strict=True):
        account = status["account"]
        assert mention.platform == "mastodon"
        assert mention.external_id == status["uri"] != status["id"]  # the uri, not the instance-local id
        assert mention.url == status["url"]
        assert mention.published_at == created(status) and mention.published_at.tzinfo is not None
        assert mention.author_handle == f"{account['acct']}@localhost:3000" == "mastodonpy_test_2@localhost:3000"
        assert mention.author_name is None  # display_name is "" in the payload: not invented
        assert mention.author_followers == account["followers_count"] == 0
        assert mention.author_verified is None
        assert mention.likes_count == status["favourites_count"]
        assert mention.comments_count == status["replies_count"]
        assert mention.shares_count == status["reblogs_count"]
        assert mention.language == status["language"] == "ja"
        tag = status["tags"][0]["name"]
        assert mention.content is not None and mention.content.startswith("Toot number ")
        assert mention.content.endswith(f"! #{tag}") and "<" not in mention.content
        assert mention.media_type == "text" and mention.media_urls == ()
        assert mention.raw == status and mention.raw["content"].startswith("<p>")  # the HTML stays in raw
    # without the instance, a local account's host comes from its profile URL
    assert normalize_page(body)[0][0].author_handle == "mastodonpy_test_2@localhost:3000"


def test_the_recorded_search_answer_normalizes_its_statuses_only() -> None:
    body = fixture("search_v2_mastodon_social")
    mentions, errors = normalize_page(body, "mastodon.social")
    assert errors == 0 and len(body["accounts"]) == 18 and len(body["hashtags"]) == 1
    assert len(mentions) == len(body["statuses"]) == 2
    for status, mention in zip(body["statuses"], mentions, strict=True):
        account = status["account"]
        assert mention.external_id == status["uri"] and mention.url == status["url"]
        assert mention.published_at == created(status)
        assert mention.author_handle == account["acct"] and "@" in account["acct"]  # remote: acct has its domain
        assert mention.author_name == account["display_name"]
        assert mention.author_followers == account["followers_count"]
        assert (mention.likes_count, mention.comments_count, mention.shares_count) == (
            status["favourites_count"], status["replies_count"], status["reblogs_count"],
        )  # fmt: skip
        assert mention.language == status["language"] == "en" and mention.author_verified is None
    greg, jo = mentions
    assert greg.author_handle == "greg@icosahedron.website" and greg.author_followers == 455
    assert greg.url == "https://icosahedron.website/@greg/116388148912635764"
    assert greg.media_type == "link" and greg.media_urls == ("https://www.youtube.com/watch?v=MWCSw_cNxKc",)
    # the link's hidden "https://www." part is kept, so the text carries the whole address
    assert greg.content is not None and greg.content.startswith("@cancel @halcy not only is this the classic")
    assert greg.content.endswith("Come On My Selector https://www.youtube.com/watch?v=MWCSw_cNxKc")
    assert jo.content == "@halcy me when im riding my horse in stop and go traffic"
    assert (jo.likes_count, jo.comments_count, jo.shares_count) == (4, 0, 1) and jo.media_type == "text"


def test_html_becomes_readable_text() -> None:
    html = "<p>Hello &amp; <b>welcome</b>,<br>line two<br/>caf&#233; &lt;3</p><p>second   paragraph</p>"
    assert html_text(html) == "Hello & welcome,\nline two\ncafé <3\n\nsecond   paragraph"
    assert html_text("plain &quot;text&quot;") == 'plain "text"'
    assert html_text("<p></p>") is None and html_text("") is None and html_text(None) is None
    assert html_text(["<p>x</p>"]) is None
    assert html_text("<p>unclosed <a href='x'>link") == "unclosed link"


def status(uri: str, **fields: Any) -> dict[str, Any]:
    return {"id": "1", "uri": uri, "created_at": "2026-01-02T03:04:05.000Z", "account": {"acct": "a"}, **fields}


def test_boosts_are_stored_as_the_boosted_post_and_counted_once() -> None:
    original = status(
        "https://b.example/users/b/statuses/9", content="<p>Acme!</p>", favourites_count=3,
        account={"acct": "b@b.example", "display_name": "Bee", "followers_count": 12},
    )  # fmt: skip
    boost = status("https://a.example/users/a/statuses/1/activity", reblog=original, content="", favourites_count=0)
    mentions, errors = normalize_page([original, boost], "a.example")
    assert errors == 0 and len(mentions) == 1
    [only], _ = normalize_page([boost], "a.example")
    assert only.external_id == original["uri"] and only.author_handle == "b@b.example" and only.likes_count == 3
    assert only.content == "Acme!" and only.raw["reblog"] == original


def test_statuses_that_cannot_be_stored_are_skipped_and_counted_and_odd_fields_become_null() -> None:
    page = [
        status("https://x.example/1"),
        {"uri": "https://x.example/2"},  # no created_at
        status("", content="no uri"),
        status("https://x.example/3", created_at="yesterday"),
        "not a status",
        status(
            "https://x.example/4",
            favourites_count=-1,
            replies_count=2**70,
            reblogs_count=True,
            language=7,
            spoiler_text="CW: acme",
            content="<p>behind the warning</p>",
            account={"acct": "local", "followers_count": "12", "display_name": 5},
            media_attachments=[{"type": "audio", "url": "https://x.example/a.mp3"}, {"type": "gifv", "url": "g.mp4"}],
        ),  # fmt: skip
    ]
    mentions, errors = normalize_page(page, "x.example")
    assert errors == 4 and [m.external_id for m in mentions] == ["https://x.example/1", "https://x.example/4"]
    odd = mentions[1]
    assert odd.likes_count is None and odd.comments_count is None and odd.shares_count is None
    assert odd.language is None and odd.author_followers is None and odd.author_name is None
    assert odd.author_handle == "local@x.example" and odd.content == "CW: acme\n\nbehind the warning"
    assert odd.media_type == "video" and odd.media_urls == ("g.mp4",)  # audio is not image or video
    assert normalize_page({"statuses": "no"}) == ([], 0) and normalize_page(None) == ([], 0)


# --- paging, ids and rate limits ------------------------------------------------------------------


def test_the_recorded_link_header_gives_the_next_max_id_and_drops_since_id() -> None:
    body = fixture("timelines_tag_p1")
    links = parse_links(RECORDED_LINK)
    assert set(links) == {"next", "prev"}
    assert links["next"].endswith("?limit=10&max_id=117020582177108552")
    assert next_max_id(RECORDED_LINK) == "117020582177108552" == body[-1]["id"]
    assert "min_id=117020582251615632" in links["prev"] and body[0]["id"] == "117020582251615632"
    assert "since_id" not in links["next"]  # Mastodon's next link keeps limit and local only
    assert next_max_id(None) is None and next_max_id('<https://m.example/x>; rel="prev"') is None
    assert parse_links('<https://a/1?x=1,2>; rel="next prev"') == {
        "next": "https://a/1?x=1,2",
        "prev": "https://a/1?x=1,2",
    }


def test_status_ids_carry_the_time_they_were_numbered() -> None:
    for item in fixture("timelines_tag_p1"):  # local statuses: numbered as they were written
        assert abs(snowflake_time(item["id"]) - created(item)) < timedelta(seconds=1)
    moment = datetime(2026, 8, 1, 13, 53, 0, 548000, tzinfo=UTC)
    assert snowflake_at(moment) == str(1785592380548 << 16) and snowflake_time(snowflake_at(moment)) == moment


def test_the_iso_8601_rate_limit_reset_is_parsed() -> None:
    headers = {
        "X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "299", "X-RateLimit-Reset": "2020-09-08T13:25:00.019685Z",
    }  # fmt: skip
    parsed = rate_limit(httpx.Headers(headers))
    assert parsed == RateLimit(300, 299, datetime(2020, 9, 8, 13, 25, 0, 19685, tzinfo=UTC))
    assert http.rate_limit(httpx.Headers(headers), "x-ratelimit-").reset_at is None  # why it has its own reader
    assert parse_reset("1599571500") == datetime(2020, 9, 8, 13, 25, tzinfo=UTC)
    assert parse_reset("2020-09-08T15:25:00+02:00") == datetime(2020, 9, 8, 13, 25, tzinfo=UTC)
    assert parse_reset("soon") is None and parse_reset("") is None and parse_reset("-5") is None
    assert rate_limit(httpx.Headers({})) is None


# --- credentials ----------------------------------------------------------------------------------


def make_source(config: dict[str, Any], source_id: int = 7) -> Source:
    now = datetime.now(UTC)
    return Source(
        id=source_id, tenant_id=1, platform="mastodon", name="acme", connection_type="app", config=config,
        status="active", error_message=None, sync_interval_minutes=15, last_sync_at=None, next_sync_at=now,
        committed_cursor=None, inflight_cursor=None, rate_limit_limit=None, rate_limit_remaining=None,
        rate_limit_reset_at=None, consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip


def test_credentials_exist_without_a_token_and_never_hold_the_secret_in_their_key(tmp_path: Path) -> None:
    config = MastodonConnector.build_config({"hashtags": ["acme"]}, {"instance": "https://mastodon.social"})
    bare = Settings(data_dir=tmp_path, _env_file=None)
    anonymous = MastodonConnector.app_credentials(make_source(config), bare)
    assert anonymous.key == "mastodon:mastodon.social" and anonymous.access_token() == ""
    with pytest.raises(AuthError, match="signed-in"):
        anonymous.refresh()

    unbound = Settings(data_dir=tmp_path, _env_file=None, MASTODON_ACCESS_TOKEN="s3cret-value")
    assert MastodonConnector.app_credentials(make_source(config), unbound).access_token() == ""  # whose is it?
    token = {"MASTODON_ACCESS_TOKEN": "s3cret-value"}
    elsewhere = Settings(data_dir=tmp_path, _env_file=None, **token, MASTODON_TOKEN_INSTANCE="https://other.example")
    assert MastodonConnector.app_credentials(make_source(config), elsewhere).access_token() == ""
    with_token = Settings(
        data_dir=tmp_path, _env_file=None, **token, MASTODON_TOKEN_INSTANCE="https://Mastodon.social/"
    )
    signed = MastodonConnector.app_credentials(make_source(config), with_token)
    assert signed.key.startswith("mastodon:mastodon.social:token:") and "s3cret" not in signed.key
    assert signed.access_token() == "s3cret-value"
    with pytest.raises(AuthError) as refused:
        signed.refresh()
    assert "s3cret" not in str(refused.value)
    kept_off = MastodonConnector.build_config(
        {"hashtags": ["acme"]}, {"instance": "https://other.example", "anonymous": "yes"}
    )
    assert MastodonConnector.app_credentials(make_source(kept_off), with_token).access_token() == ""


# --- in-process runs against the stand-in ---------------------------------------------------------


@pytest.fixture
def api() -> Any:
    instance = MastodonApi().start()
    yield instance
    instance.stop()


def run(api: MastodonApi, config: dict[str, Any], tmp_path: Path, token: str | None = None) -> MastodonConnector:
    values = {"MASTODON_ACCESS_TOKEN": token, "MASTODON_TOKEN_INSTANCE": config["options"]["instance"]} if token else {}
    settings = Settings(data_dir=tmp_path, _env_file=None, SLSYNC_MASTODON_API_URL=api.url, **values)
    source = make_source(config)
    context = Context(
        now=lambda: datetime.now(UTC), settings=settings,
        credentials=lambda: MastodonConnector.app_credentials(source, settings),
    )  # fmt: skip
    return MastodonConnector(source, context)


def test_a_spent_window_stops_the_run_before_the_next_call(api: MastodonApi, tmp_path: Path) -> None:
    api.add_statuses(50)
    api.remaining = 1  # the first answer says 0 left
    api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=4)
    config = MastodonConnector.build_config({"hashtags": ["acme"]}, {"instance": "https://mastodon.social"})
    pages = run(api, config, tmp_path).pages(None, since=datetime.now(UTC) - timedelta(days=7), resume=None)
    first = next(pages)
    assert len(first.mentions) == 40 and first.rate_limit == RateLimit(300, 0, api.reset_at)
    fortieth = sorted((s["id"] for s in api.statuses), key=int, reverse=True)[39]
    assert first.cursor["active"]["token"] == fortieth and first.cursor["streams"] == {}
    with pytest.raises(RateLimited) as limited:
        next(pages)
    assert limited.value.reset_at == api.reset_at and len(api.content_calls) == 1
    # the next run continues below the page it saved, with the same lower bound
    api.remaining = 300
    resumed = list(run(api, config, tmp_path).pages(None, since=None, resume=first.cursor))
    assert [len(p.mentions) for p in resumed] == [10]
    assert api.content_calls[1].param("max_id") == first.cursor["active"]["token"]
    assert api.content_calls[1].param("since_id") == api.content_calls[0].param("since_id")
    assert resumed[-1].cursor == {"v": 2, "streams": {"tag:acme": max(s["id"] for s in api.statuses)}}


@pytest.mark.parametrize("newer", [100, 70])
def test_a_keyword_search_cut_off_by_the_search_window_carries_a_gap(
    api: MastodonApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, newer: int
) -> None:
    from slsync.connectors import mastodon

    monkeypatch.setattr(mastodon, "MAX_SEARCH_OFFSET", 80)  # two pages of 40 instead of 250
    now = datetime.now(UTC).replace(microsecond=0)
    [stored] = api.add_statuses(1, tag=None, newest=now - timedelta(minutes=30))
    api.add_statuses(newer, tag=None, newest=now - timedelta(minutes=1), spacing=timedelta(seconds=5))
    config = MastodonConnector.build_config({"keywords": ["acme"]}, {"instance": "https://mastodon.social"})
    cursor = {"v": 2, "streams": {"search:acme": stored}}
    pages = list(run(api, config, tmp_path, token="user-token").pages(cursor, since=None, resume=None))
    listed = sorted((s["id"] for s in api.statuses), key=int, reverse=True)
    if newer <= 80:  # the window reached back to the status stored last time: nothing was cut off
        assert not any(p.gaps for p in pages) and sum(len(p.mentions) for p in pages) == newer + 1
        return
    [gap] = pages[-1].gaps
    assert (gap.start, gap.end) == (snowflake_time(stored), snowflake_time(listed[79]))
    assert gap.reason == "cap" and gap.stream == "search:acme" and gap.missed_estimate
    assert not any(p.gaps for p in pages[:-1]) and sum(len(p.mentions) for p in pages) == 80


def test_instances_that_hide_timelines_or_refuse_a_token_mark_the_source_for_the_operator(
    api: MastodonApi, tmp_path: Path
) -> None:
    api.add_statuses(3)
    api.timelines_need_token = True
    config = MastodonConnector.build_config({"hashtags": ["acme"]}, {"instance": "https://mastodon.social"})
    with pytest.raises(AuthError, match="only to a signed-in account .HTTP 422: This method requires"):
        list(run(api, config, tmp_path).pages(None, since=None, resume=None))
    assert api.content_calls[-1].authorization is None
    pages = list(run(api, config, tmp_path, token="user-token").pages(None, since=None, resume=None))
    assert len(pages[0].mentions) == 3 and api.content_calls[-1].authorization == "Bearer user-token"
    with pytest.raises(AuthError, match="HTTP 401: The access token is invalid"):
        list(run(api, config, tmp_path, token="revoked").pages(None, since=None, resume=None))


def test_an_unknown_hashtag_is_empty_and_a_wrong_shape_is_fatal(api: MastodonApi, tmp_path: Path) -> None:
    config = MastodonConnector.build_config({"hashtags": ["acme"]}, {"instance": "https://mastodon.social"})
    api.faults = [404]  # older Mastodon: {"error": ...} with 404 for a hashtag nobody used yet
    [page] = run(api, config, tmp_path).pages(None, since=None, resume=None)
    assert page.mentions == () and page.cursor == {"v": 2, "streams": {}}
    api.faults = ["wrong_shape"]
    with pytest.raises(Fatal, match="not a list of statuses"):
        list(run(api, config, tmp_path).pages(None, since=None, resume=None))


# --- whole syncs through the CLI ------------------------------------------------------------------


def add_source(cli: Cli, *args: str) -> int:
    return cli.ok("source", "add", "mastodon", "--tenant", "1", "--name", "acme", *args, "--json").json()["id"]


def test_two_pages_then_only_new_statuses_with_filters_applied_here(cli: Cli, api: MastodonApi, conn) -> None:
    wanted = api.add_statuses(50)
    api.add_statuses(5, language="de")
    api.add_statuses(3, text="Acme is hiring, see our JOBS page")
    source_id = add_source(
        cli, "--hashtag", "#Acme", "--exclude", "jobs", "--language", "en", "--option", f"instance={api.url}"
    )
    first = cli.ok("sync", "source", str(source_id), "--json").json()
    assert first["success"] and first["pages"] == 2 and first["mentions_saved"] == first["mentions_fetched"] == 50
    one, two = api.content_calls
    assert one.path == two.path == "/api/v1/timelines/tag/acme"
    assert one.param("limit") == two.param("limit") == "40" and one.param("max_id") is None
    bound = snowflake_time(one.param("since_id"))
    assert timedelta(days=6, hours=23) < datetime.now(UTC) - bound <= timedelta(days=7, minutes=1)
    assert two.param("since_id") == one.param("since_id")  # kept, though the Link header's next link drops it
    newest_first = sorted(api.statuses, key=lambda s: int(s["id"]), reverse=True)
    assert two.param("max_id") == newest_first[39]["id"]
    assert one.authorization is None and two.authorization is None  # hashtags are read anonymously
    rows = conn.execute(
        "SELECT m.*, r.raw FROM sl_mentions m"
        " JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id) ORDER BY external_id"
    ).fetchall()
    by_uri = {s["uri"]: s for s in api.statuses}
    assert sorted(by_uri[r["external_id"]]["id"] for r in rows) == sorted(wanted)
    for row in rows:
        status_ = by_uri[row["external_id"]]
        acct = status_["account"]["acct"]
        assert row["author_handle"] == (acct if "@" in acct else f"{acct}@{api.host}")
        assert row["content"].startswith("Loving the new Acme coffee & more") and row["language"] == "en"
        assert row["url"] == status_["url"] and row["raw"]["content"] == status_["content"]
    assert {r["media_type"] for r in rows} == {"text", "image", "link"}

    newer = api.add_statuses(3, newest=datetime.now(UTC), spacing=timedelta(milliseconds=50))
    second = cli.ok("sync", "source", str(source_id), "--json").json()
    assert second["mentions_saved"] == second["mentions_fetched"] == 3 and second["pages"] == 1
    assert api.content_calls[-1].param("since_id") == newest_first[0]["id"]
    assert db.get_source(conn, source_id).committed_cursor == {"v": 2, "streams": {"tag:acme": max(newer, key=int)}}
    limits = cli.ok("status", str(source_id), "--json").json()["rate_limit"]
    assert limits["remaining"] == api.remaining
    assert datetime.fromisoformat(limits["reset_at"]) == api.reset_at


def test_keyword_search_needs_the_token_and_never_prints_it(cli: Cli, api: MastodonApi, conn) -> None:
    api.add_statuses(45, tag=None)
    api.add_statuses(2, tag=None, indexable=False)  # authors who did not opt in are not searchable
    api.add_statuses(2, tag=None, text="Acme coffee jobs fair")
    source_id = add_source(
        cli, "--keyword", "acme coffee", "--exclude", "jobs", "--language", "en", "--option", f"instance={api.url}"
    )
    missing = cli("sync", "source", str(source_id), "--json")
    assert missing.returncode == 1 and missing.json()["status"] == "error"
    assert "MASTODON_ACCESS_TOKEN is not set" in missing.json()["message"] and api.content_calls == []

    cli.env["MASTODON_TOKEN_INSTANCE"] = api.url  # the instance the tokens below belong to
    wrong = cli("sync", "source", str(source_id), "--json", env={"MASTODON_ACCESS_TOKEN": "wrong-secret"})
    assert wrong.returncode == 1 and "HTTP 401" in wrong.json()["message"]
    assert "wrong-secret" not in wrong.stdout + wrong.stderr

    cli.env["MASTODON_ACCESS_TOKEN"] = "user-token"
    first = cli("sync", "source", str(source_id), "--json")
    doc = first.json()
    assert first.returncode == 0 and doc["mentions_saved"] == 45 and doc["pages"] == 3, doc
    calls = api.content_calls[1:]
    assert [c.param("offset") for c in calls] == [None, "40", "80"]  # until an empty page
    for call in calls:
        assert call.path == "/api/v2/search" and call.authorization == "Bearer user-token"
        assert call.param("q") == '"acme coffee" -jobs language:en' and call.param("type") == "statuses"
        assert call.param("resolve") == "false" and call.param("limit") == "40"
    bound = snowflake_time(calls[0].param("min_id"))
    assert timedelta(days=6, hours=23) < datetime.now(UTC) - bound <= timedelta(days=7, minutes=1)

    api.add_statuses(2, tag=None, newest=datetime.now(UTC), spacing=timedelta(milliseconds=50))
    second = cli("sync", "source", str(source_id), "--json")
    assert second.json()["mentions_saved"] == 2 and len(api.content_calls) == 5  # one page: it reached the stored
    newest = db.get_source(conn, source_id).committed_cursor["streams"]['search:"acme coffee" -jobs language:en']
    assert newest == max(s["id"] for s in api.statuses)
    listed = cli.ok("source", "list", "--json")
    for result in (first, second, listed):
        assert "user-token" not in result.stdout + result.stderr


def test_a_429_ends_the_run_until_the_iso_reset_and_the_next_run_continues(cli: Cli, api: MastodonApi, conn) -> None:
    api.add_statuses(60)
    api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=4)
    api.fail_429_from_call = 1  # the second call is refused
    source_id = add_source(cli, "--hashtag", "acme", "--option", "instance=https://mastodon.social")
    cli.env["SLSYNC_MASTODON_API_URL"] = api.url
    limited = cli("sync", "source", str(source_id), "--json")
    doc = limited.json()
    assert limited.returncode == 1 and doc["status"] == "rate_limited" and doc["mentions_saved"] == 40
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at == api.reset_at
    assert source.next_sync_at >= api.reset_at - timedelta(seconds=1)
    handles = {r["author_handle"] for r in conn.execute("SELECT author_handle FROM sl_mentions").fetchall()}
    assert "listener1@mastodon.social" in handles  # local accounts get the source's instance, not the proxy

    again = cli("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert cli.ok("sync", "due", "--json").json()["results"] == [] and len(api.content_calls) == 2

    api.fail_429_from_call = None
    conn.execute(
        "UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now() WHERE id = %s",
        (source_id,),
    )
    resumed = cli.ok("sync", "due", "--json").json()["results"][0]
    assert resumed["success"] and resumed["mentions_saved"] == 20 and resumed["duplicates"] == 0
    assert api.content_calls[-1].param("max_id") == sorted((s["id"] for s in api.statuses), key=int)[-40]
    assert api.content_calls[-1].param("since_id") == api.content_calls[0].param("since_id")


def test_source_add_refuses_mentions_and_platforms_lists_mastodon(cli: Cli) -> None:
    refused = cli("source", "add", "mastodon", "--tenant", "1", "--name", "x", "--mention", "acme@mastodon.social",
                  "--option", "instance=https://mastodon.social")  # fmt: skip
    assert refused.returncode == 2 and "mention an account" in refused.stderr and "Traceback" not in refused.stderr
    platforms = {p["name"]: p for p in cli.ok("platforms", "--json").json()["platforms"]}
    assert platforms["mastodon"]["state"] == "active"


def test_statuses_are_read_again_by_the_instance_id_their_payload_holds(cli: Cli, api: MastodonApi, conn) -> None:
    """The lookup takes the instance's own ids (from the stored payloads, a boost's inner status included);
    a status whose payload retention dropped cannot be read again, and an instance older than 4.3 has no
    batch lookup: both leave the schedule instead of failing every run."""
    api.add_statuses(30, newest=datetime.now(UTC) - timedelta(minutes=2))
    source_id = add_source(cli, "--hashtag", "acme", "--option", f"instance={api.url}")
    cli.ok("sync", "source", str(source_id))
    conn.execute("UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second'")
    conn.execute("DELETE FROM sl_mention_raw WHERE mention_id IN (SELECT id FROM sl_mentions ORDER BY id LIMIT 10)")
    doc = cli.ok("refresh", "--json").json()
    assert doc["checked"] == 20 and doc["calls"] == 1 and len(api.lookups) == 1
    assert sorted(api.lookups[0].params["id[]"]) == sorted(
        r["raw"]["id"] for r in conn.execute("SELECT raw FROM sl_mention_raw").fetchall()
    )
    with_raw = "EXISTS (SELECT FROM sl_mention_raw r WHERE r.mention_id = sl_mentions.id)"
    unreadable = conn.execute(f"SELECT count(*) AS n FROM sl_mentions WHERE NOT {with_raw} AND refresh_due_at IS NULL")
    assert unreadable.fetchone()["n"] == 10
    api.batch_lookup = False
    conn.execute(f"UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second' WHERE {with_raw}")
    old = cli.ok("refresh", "--json").json()
    assert old["calls"] == 1 and old["deleted"] == 0 and old["sources_failed"] == 0
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE refresh_due_at IS NOT NULL").fetchone()["n"] == 0
