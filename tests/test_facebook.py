"""The Facebook connector and the shared Meta module: the recorded Graph payloads it normalizes, Meta's
throttling headers and error codes, paging without the token Meta puts in its links, and whole flows
through the real CLI against the loopback Graph API stand-in: `slsync connect` (code -> long-lived
user token -> page token), two-page syncs with an incremental second one, throttling respected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from slsync import db
from slsync.config import Settings
from slsync.connectors import meta
from slsync.connectors.base import Context
from slsync.connectors.facebook import FacebookConnector, normalize_page
from slsync.errors import AuthError, Fatal, RateLimited, Retriable, UsageError
from slsync.models import Source
from slsync.tokens import FileStore
from tests.conftest import Cli, Result
from tests.fakes.browser import connect_in_browser
from tests.fakes.graph_api import (
    APP_ID,
    APP_SECRET,
    PAGE_ID,
    GraphApi,
    Throttle,
    graph_error,
    stamp,
    usage_headers,
)

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "facebook"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- recorded payloads ----------------------------------------------------------------------------


def test_a_recorded_page_feed_normalizes_with_counts_media_and_links() -> None:
    mentions, errors = normalize_page(fixture("page_feed_p1"))
    assert errors == 0 and len(mentions) == 5
    photo, link, _, _, video = mentions
    assert photo.platform == "facebook" and photo.external_id == "19292868552_10158349356748553"
    assert photo.published_at == datetime(2021, 7, 9, 19, 9, 52, tzinfo=UTC)
    assert photo.url == "https://www.facebook.com/19292868552/posts/10158349356748553/"
    assert photo.content is not None and photo.content.startswith("Singaporean logistics company Ninja Van")
    # reactions of every kind count as likes; comments and shares from their summaries
    assert (photo.likes_count, photo.comments_count, photo.shares_count) == (125, 13, 10)
    assert photo.media_type == "image" and photo.media_urls is not None and len(photo.media_urls) == 1
    assert photo.media_urls[0].startswith("https://scontent-ssn1-1.xx.fbcdn.net/v/t1.6435-9/p720x720/211801276_")
    assert photo.author_name is None and photo.author_handle is None  # the recording asked for no `from`
    # a shared link: the link out of Facebook (unshimmed_url), not Facebook's redirect
    assert link.media_type == "link" and link.media_urls is not None and len(link.media_urls) == 1
    assert link.media_urls[0].startswith("https://engineering.fb.com/2021/05/20/networking-traffic/peering-automation/")
    assert (link.likes_count, link.comments_count, link.shares_count) == (131, 17, 6)
    assert video.external_id == "19292868552_10158333323653553" and video.media_type == "video"
    assert video.media_urls and video.media_urls[0].startswith("https://scontent-ssn1-1.xx.fbcdn.net/v/t15.5256-10/")
    assert (video.likes_count, video.comments_count, video.shares_count) == (179, 49, 15)
    assert video.raw is not None and video.raw["status_type"] == "added_video"


def test_recorded_profile_and_group_posts_normalize_with_built_links() -> None:
    posts, errors = normalize_page(fixture("user_posts_p1"))
    assert errors == 0 and [m.external_id for m in posts][:2] == ["4_10113477241177441", "4_10113449068715281"]
    first = posts[0]
    assert first.content == "Happy July 4th! \U0001f1fa\U0001f1f8" and first.media_type == "text"
    assert first.published_at == datetime(2021, 7, 4, 19, 50, 58, tzinfo=UTC)
    assert first.url == "https://www.facebook.com/4/posts/10113477241177441"  # no permalink_url was asked for
    assert first.likes_count is None and first.comments_count is None and first.shares_count is None
    group, errors = normalize_page(fixture("group_feed_p1"))
    assert errors == 0 and len(group) == 5
    assert group[0].external_id == "2260975870792283_3053924814830714"
    assert group[0].content is not None and group[0].content.startswith("👋👋👋**Hello DevC Hong Kong!**")
    assert group[3].content is None  # a post with an empty message stays empty, not ""
    assert group[4].published_at == datetime(2021, 3, 10, 4, 36, 5, tzinfo=UTC)


def test_recorded_comments_without_ids_get_post_and_comment_graph_ids() -> None:
    comments, errors = normalize_page(fixture("post_comments_p1"), post_id="19292868552_10158407654328553")
    assert errors == 0 and len(comments) == 10
    first, second = comments[0], comments[1]
    assert first.external_id == "10158407654328553_10158407835073553"
    assert first.url == "https://www.facebook.com/19292868552/posts/10158407654328553/?comment_id=10158407835073553"
    assert first.published_at == datetime(2021, 8, 10, 18, 45, 3, tzinfo=UTC)
    assert first.content == "Boa noite peço ajuda  Como faço para usar a minha página como meu perfil?"
    assert (first.likes_count, first.comments_count, first.media_type) == (0, 1, "text")
    assert second.comments_count == 2
    # a reply is its own comment: the reply_comment_id names it
    assert comments[5].external_id == "10158407654328553_10158409983033553"
    assert len({c.external_id for c in comments}) == 10
    # the permalink alone is enough: the same ids without the post
    assert [c.external_id for c in normalize_page(fixture("post_comments_p1"))[0]] == [c.external_id for c in comments]


def test_odd_records_are_counted_not_stored() -> None:
    body = {
        "data": [
            {
                "id": "1_2",
                "created_time": "2026-11-30T10:00:00+0000",
                "message": "ok",
                "from": {"id": "9", "name": "A"},
            },
            {"id": "not an id", "created_time": "2026-11-30T10:00:00+0000"},
            {"id": "1_3", "created_time": "yesterday"},
            {"permalink_url": "http://[broken", "comment_count": 1, "created_time": "2026-11-30T10:00:00+0000"},
            "a string",
            {"id": "1_4", "created_time": "2026-11-30T10:00:00+0000", "shares": {"count": -3}, "reactions": [1]},
        ]
    }
    mentions, errors = normalize_page(body)
    assert errors == 4 and [m.external_id for m in mentions] == ["1_2", "1_4"]
    assert mentions[0].author_name == "A" and mentions[0].author_handle == "9"
    assert mentions[1].shares_count is None and mentions[1].likes_count is None


# --- Meta's throttling headers and errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "remaining", "wait"),
    [
        (usage_headers(app=12), 88, None),
        (usage_headers(app=12, page=40.5), 59, None),
        (usage_headers(app=89), 11, None),
        (usage_headers(app=95), 0, timedelta(hours=1)),  # past the threshold: stop before Meta blocks the app
        (usage_headers(app=3, business=97), 0, timedelta(hours=1)),
        (usage_headers(app=3, business=100, regain_minutes=17), 0, timedelta(minutes=17)),
        ({"X-App-Usage": "not json"}, None, None),
        ({"X-App-Usage": '{"call_count": "high"}'}, None, None),
        ({}, None, None),
    ],
)
def test_usage_headers_become_a_limit_of_100_percent(
    headers: dict[str, str], remaining: int | None, wait: timedelta | None
) -> None:
    limits = meta.usage_limits(httpx.Headers(headers), NOW)
    if remaining is None:
        assert limits is None
        return
    assert limits is not None and limits.limit == 100 and limits.remaining == remaining
    assert limits.reset_at == (NOW + wait if wait else None)


def response(status: int, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx.Response(status, content=content, headers=headers or {})


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (400, graph_error(190, "Error validating access token: Session has expired"), AuthError, "code 190"),
        (401, {"unexpected": True}, AuthError, "HTTP 401"),
        (400, graph_error(102, "Session key invalid"), AuthError, "code 102"),
        (400, graph_error(32, "(#32) Page request limit reached"), RateLimited, "rate limit reached until"),
        (403, graph_error(4, "(#4) Application request limit reached"), RateLimited, "code 4"),
        (400, graph_error(80001, "There have been too many calls to this Page account"), RateLimited, "80001"),
        (400, graph_error(613, "Calls to this api have exceeded the rate limit."), RateLimited, "613"),
        (500, graph_error(2, "Service temporarily unavailable", transient=True), Retriable, "code 2"),
        (400, graph_error(1, "An unknown error occurred"), Retriable, "code 1"),
        (400, graph_error(200, "Please retry", transient=True), Retriable, "is failing"),
        (502, "<html>Bad gateway</html>", Retriable, "HTTP 502"),
        (400, graph_error(100, "(#100) Unsupported get request."), meta.GraphRefused, "(#100) Unsupported get"),
        (403, graph_error(10, "(#10) Requires pages_read_user_content"), meta.GraphRefused, "code 10"),
        (400, "[]", meta.GraphRefused, "HTTP 400"),
    ],
)
def test_graph_errors_are_classified_in_one_line(status: int, body: Any, error: type, says: str) -> None:
    with pytest.raises(error) as raised:
        meta.raise_for_error(response(status, body), None, platform="facebook", now=NOW)
    assert says in str(raised.value) and "\n" not in str(raised.value)
    assert type(raised.value) is error
    if error is meta.GraphRefused:  # the code travels with the error, for callers that skip one refusal
        assert raised.value.code == (body["error"]["code"] if isinstance(body, dict) else None)


def test_a_throttling_error_waits_for_the_usage_estimate_else_an_hour() -> None:
    limits = meta.usage_limits(httpx.Headers(usage_headers(business=100, regain_minutes=25)), NOW)
    with pytest.raises(RateLimited) as raised:
        meta.raise_for_error(response(400, graph_error(32, "limit")), limits, platform="facebook", now=NOW)
    assert raised.value.reset_at == NOW + timedelta(minutes=25)
    with pytest.raises(RateLimited) as raised:
        meta.raise_for_error(response(400, graph_error(4, "limit")), None, platform="instagram", now=NOW)
    assert raised.value.reset_at == NOW + timedelta(hours=1) and str(raised.value).startswith("Instagram")


def test_an_error_message_never_carries_the_token() -> None:
    body = graph_error(100, "Malformed access token EAAPAGEsecret-value-123")
    with pytest.raises(Fatal) as raised:
        meta.raise_for_error(response(400, body), None, platform="facebook", token="EAAPAGEsecret-value-123")
    assert "EAAPAGEsecret-value-123" not in str(raised.value) and "[redacted]" in str(raised.value)


def test_next_params_keep_the_cursor_and_drop_the_token() -> None:
    recorded = fixture("page_feed_p1")
    params = meta.next_params(recorded)
    assert params is not None and params["after"] == "after" and params["limit"] == "5"
    assert "access_token" not in params
    time_based = meta.next_params(fixture("user_posts_p1"))
    assert time_based is not None and time_based["until"] == "1624385168" and "access_token" not in time_based
    assert "since" not in time_based  # empty in Meta's link: the caller's own since stays
    assert meta.next_params({"data": [], "paging": {"cursors": {"before": "a", "after": "b"}}}) is None
    assert meta.next_params({"paging": {"next": "https://graph.facebook.com/x", "cursors": {"after": "c2"}}}) == {
        "after": "c2"
    }
    assert meta.next_params({"paging": "nonsense"}) is None


# --- the connector against the stand-in, without the CLI ------------------------------------------


class PageToken:
    key = "facebook:user:1"

    def __init__(self, token: str) -> None:
        self.token = token

    def access_token(self) -> str:
        return self.token

    def refresh(self) -> str:
        raise AuthError("no refresh")


@pytest.fixture
def api() -> Iterator[GraphApi]:
    stand_in = GraphApi().start()
    yield stand_in
    stand_in.stop()


def connector(api: GraphApi, **search: Any) -> FacebookConnector:
    token = "EAAPAGE-direct"
    api.page_tokens[token] = PAGE_ID
    options = {"page": PAGE_ID, **search.pop("options", {})}
    config = FacebookConnector.build_config(search, options)
    now = datetime.now(UTC)
    source = Source(
        id=1, tenant_id=1, platform="facebook", name="acme", connection_type="user", config=config, status="active",
        error_message=None, sync_interval_minutes=15, last_sync_at=None, next_sync_at=now, committed_cursor=None,
        inflight_cursor=None, rate_limit_limit=None, rate_limit_remaining=None, rate_limit_reset_at=None,
        consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip
    settings = Settings(SLSYNC_FACEBOOK_API_URL=api.url, _env_file=None)
    context = Context(now=lambda: datetime.now(UTC), settings=settings, credentials=lambda: PageToken(token))
    return FacebookConnector(source, context)


def test_visitor_posts_tags_and_comments_each_keep_their_bound(api: GraphApi) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    visitors = api.add_posts(3, newest=now - timedelta(minutes=5))
    # the page's own posts, older than the first sync reaches: only the one with new comments is read
    own = api.add_posts(2, newest=now - timedelta(days=8), by_page=True, text="Our new roast")
    tagged = api.add_posts(2, newest=now - timedelta(minutes=7), tagged=True)
    comments = api.add_comments(own[0], 2, newest=now - timedelta(minutes=2))
    api.add_comments(own[0], 1, newest=now - timedelta(minutes=1), by=PAGE_ID)  # the page answering: not a mention
    api.add_posts(1, newest=now - timedelta(days=9))  # older than the 7-day first sync
    pages = list(connector(api).pages(None, since=now - timedelta(days=7), resume=None))
    ids = [m.external_id for p in pages for m in p.mentions]
    assert ids == [*visitors, *tagged, *comments]
    assert [r.path.rsplit("/", 1)[-1] for r in api.content_calls] == ["feed", "tagged", "posts", "comments"]
    assert api.content_calls[-1].path.endswith(f"/{own[0]}/comments")  # only the post that changed
    feed_call = api.content_calls[0].params
    assert feed_call["since"] == str(int((now - timedelta(days=7)).timestamp())) and feed_call["limit"] == "100"
    assert all(r.authorization == "Bearer EAAPAGE-direct" and "access_token" not in r.params for r in api.requests)
    cursor = pages[-1].cursor
    assert "active" not in cursor
    assert cursor["streams"]["feed"] == api.feed[PAGE_ID][0]["created_time"][:19] + "Z"
    assert cursor["streams"]["tagged"] == api.tagged[PAGE_ID][0]["created_time"][:19] + "Z"
    # the newest comment (the page's own reply) is the comments' bound
    assert cursor["streams"]["comments"] == stamp(now - timedelta(minutes=1))[:19] + "Z"

    api.requests.clear()
    newer = api.add_comments(own[1], 1, newest=now + timedelta(seconds=5))
    again = list(connector(api).pages(cursor, since=None, resume=None))
    assert [m.external_id for p in again for m in p.mentions] == [visitors[0], tagged[0], *newer]
    since = {s: str(int(utc(cursor["streams"][s]).timestamp())) for s in ("feed", "tagged", "comments")}
    calls = {r.path.rsplit("/", 1)[-1]: r.params for r in api.content_calls}
    assert calls["feed"]["since"] == since["feed"] and calls["tagged"]["since"] == since["tagged"]
    assert calls["comments"]["since"] == since["comments"] and calls["comments"]["order"] == "reverse_chronological"


def test_a_list_that_ignores_since_is_paged_only_until_a_page_is_wholly_older(api: GraphApi) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    api.honour_since = False
    new = api.add_posts(2, newest=now - timedelta(minutes=1))
    api.add_posts(350, newest=now - timedelta(days=10), spacing=timedelta(minutes=1))
    pages = list(connector(api, options={"comment_posts": "0"}).pages(None, since=now - timedelta(days=7), resume=None))
    assert [m.external_id for p in pages for m in p.mentions] == new
    # the first page mixes new and old, the second is wholly older than the bound: no third
    assert [r.path.rsplit("/", 1)[-1] for r in api.content_calls] == ["feed", "feed", "tagged"]


def test_keywords_narrow_and_excludes_drop(api: GraphApi) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    api.add_posts(2, newest=now - timedelta(minutes=5), text="Acme espresso is great")
    api.add_posts(2, newest=now - timedelta(minutes=9), text="Acme is hiring, see jobs")
    api.add_posts(2, newest=now - timedelta(minutes=12), text="Unrelated chatter")
    pages = list(connector(api, keywords=["espresso", "hiring"], exclude=["jobs"]).pages(None, since=None, resume=None))
    texts = [m.content for p in pages for m in p.mentions]
    assert len(texts) == 2 and all(t and "espresso" in t for t in texts)


def test_an_interrupted_comment_stream_resumes_at_its_post_and_cursor(api: GraphApi) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    own = api.add_posts(2, newest=now - timedelta(minutes=30), by_page=True)
    api.page_size = 100
    first = api.add_comments(own[0], 130, newest=now - timedelta(minutes=3))
    second = api.add_comments(own[1], 2, newest=now - timedelta(minutes=4))
    run = connector(api).pages(None, since=now - timedelta(days=1), resume=None)
    pages = [next(run) for _ in range(4)]  # feed, tagged, the posts list, the first page of the first post
    run.close()
    state = pages[-1].cursor
    assert state["active"]["stream"] == "comments" and state["active"]["token"]["posts"] == [own[0], own[1]]
    assert "after" in state["active"]["token"]["params"] and "access_token" not in json.dumps(state)
    api.requests.clear()
    rest = list(connector(api).pages(None, since=None, resume=state))
    resumed = [m.external_id for p in rest for m in p.mentions]
    assert resumed == [*first[100:], *second]
    # the interrupted stream first, then the others of the round, from the bounds they had reached
    paths = [r.path.removeprefix("/v23.0/") for r in api.content_calls]
    assert paths == [f"{own[0]}/comments", f"{own[1]}/comments", f"{PAGE_ID}/feed", f"{PAGE_ID}/tagged"]
    assert api.content_calls[2].params["since"] == str(int(utc(state["streams"]["feed"]).timestamp()))
    assert {"feed", "tagged", "comments"} <= set(rest[-1].cursor["streams"])


@pytest.mark.parametrize(
    ("search", "says"),
    [
        ({}, "--option page=<page id>"),
        ({"options": {"page": PAGE_ID}, "mentions": ["acme"]}, "cannot search for @mentions"),
        ({"options": {"page": PAGE_ID}, "languages": ["en"]}, "no language"),
        ({"options": {"page": "acme-coffee"}}, "not a Facebook page id"),
        ({"options": {"page": PAGE_ID, "comment_posts": "500"}}, "from 0 to 100"),
        ({"options": {"page": PAGE_ID, "colour": "red"}}, "unknown option 'colour'"),
    ],
)
def test_what_a_facebook_source_cannot_be_is_refused(search: dict[str, Any], says: str) -> None:
    options = search.pop("options", {})
    with pytest.raises(UsageError) as raised:
        FacebookConnector.build_config(search, options)
    assert says in str(raised.value)


# --- through the CLI ------------------------------------------------------------------------------


def fb_env(api: GraphApi) -> dict[str, str]:
    return {
        "SLSYNC_FACEBOOK_API_URL": api.url,
        "SLSYNC_FACEBOOK_AUTHORIZE_URL": api.authorize_url,
        "SLSYNC_FACEBOOK_TOKEN_URL": api.token_url,
        "FACEBOOK_APP_ID": APP_ID,
        "FACEBOOK_APP_SECRET": APP_SECRET,
        "SLSYNC_TOKEN_STORE": "file",
        "SLSYNC_LOG_LEVEL": "DEBUG",
    }


@pytest.fixture
def fb_cli(cli: Cli, api: GraphApi) -> Cli:
    return Cli({**cli.env, **fb_env(api)}, cli.cwd)


def add_source(cli: Cli, page: str = PAGE_ID, *args: str) -> int:
    return cli.ok(
        "source", "add", "facebook", "--tenant", "1", "--name", f"page {page}", "--option", f"page={page}", *args,
        "--json",
    ).json()["id"]  # fmt: skip


def test_connect_exchanges_tokens_in_order_and_syncs_pages_then_only_what_is_new(
    fb_cli: Cli, api: GraphApi, conn: db.Connection, tmp_path: Path
) -> None:
    outputs: list[Result] = []
    now = datetime.now(UTC).replace(microsecond=0)
    api.add_posts(130, newest=now - timedelta(minutes=5))
    source_id = add_source(fb_cli)
    added = db.get_source(conn, source_id)
    assert added.status == "pending" and added.connection_type == "user"

    code, stdout, stderr, page = connect_in_browser(fb_cli, source_id)
    assert code == 0, stderr
    outputs.append(Result(code, stdout + page.text, stderr))
    assert [c.kind for c in api.token_calls] == ["code", "fb_exchange_token", "page_token"]
    code_call, exchange, page_call = api.token_calls
    assert code_call.params["client_secret"] == APP_SECRET and code_call.params["code_verifier"]
    assert exchange.params["fb_exchange_token"] in api.short_tokens
    assert page_call.params["with"] in api.long_tokens  # the page token comes from the long-lived user token
    assert page_call.params["fields"] == "access_token,name" and page_call.params["page"] == PAGE_ID
    tokens = tmp_path / "data" / "tokens.json"
    stored = FileStore(tokens).get(source_id)
    assert stored is not None and stored.access_token in api.page_tokens and stored.expires_at is None
    assert db.get_source(conn, source_id).status == "connected"

    first = fb_cli("--debug", "sync", "source", str(source_id), "--json")
    outputs.append(first)
    doc = first.json()
    assert first.returncode == 0 and doc["success"] and doc["mentions_saved"] == 130, first.stderr
    feed = [r for r in api.content_calls if r.path.endswith("/feed")]
    assert len(feed) == 2 and "after" in feed[1].params and "access_token" not in feed[1].params
    assert {r.authorization for r in api.content_calls} == {f"Bearer {stored.access_token}"}
    post = api.feed[PAGE_ID][0]
    row = conn.execute("SELECT * FROM sl_mentions WHERE external_id = %s", (post["id"],)).fetchone()
    assert row["content"] == post["message"] and row["author_name"] == post["from"]["name"]
    assert row["author_handle"] == post["from"]["id"] and row["url"] == post["permalink_url"]
    assert row["published_at"] == datetime.strptime(post["created_time"], "%Y-%m-%dT%H:%M:%S%z")
    assert row["comments_count"] == 0 and row["likes_count"] == 0 and row["media_type"] == "text"

    api.add_posts(3, newest=now + timedelta(seconds=3))
    calls = len(api.content_calls)
    second = fb_cli("sync", "source", str(source_id), "--json")
    outputs.append(second)
    assert second.returncode == 0 and second.json()["mentions_saved"] == 3
    assert second.json()["mentions_fetched"] <= 4  # the three and at most the boundary post
    assert len(api.content_calls) == calls + 3  # feed, tagged, the posts list: one page each
    outputs.append(fb_cli("status", "--json"))
    outputs.append(fb_cli("source", "list", "--json"))

    secrets = api.secret_values()
    assert APP_SECRET in secrets and len(secrets) >= 5
    haystacks = {f"output {n}": r.stdout + r.stderr for n, r in enumerate(outputs)}
    for table in ("sl_sources", "sl_mentions", "sl_sync_runs"):
        rows = conn.execute(f"SELECT t::text AS row FROM {table} t").fetchall()
        haystacks[table] = "\n".join(r["row"] for r in rows)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path != tokens:
            haystacks[str(path)] = path.read_text(errors="replace")
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"


def test_a_page_the_user_does_not_manage_is_refused_and_nothing_is_stored(
    fb_cli: Cli, api: GraphApi, conn: db.Connection, tmp_path: Path
) -> None:
    source_id = add_source(fb_cli, "2000000002")
    code, stdout, stderr, _ = connect_in_browser(fb_cli, source_id)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("slsync: error:")]
    assert len(lines) == 1 and "2000000002" in lines[0] and "not a page this account manages" in lines[0]
    assert "Traceback" not in stderr
    assert FileStore(tmp_path / "data" / "tokens.json").get(source_id) is None
    assert db.get_source(conn, source_id).status == "pending"
    for secret in api.secret_values():
        assert secret not in stdout + stderr


def test_a_usage_header_at_95_percent_stops_the_run_before_the_next_call(
    fb_cli: Cli, api: GraphApi, conn: db.Connection
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    api.add_posts(150, newest=now - timedelta(minutes=5))
    source_id = add_source(fb_cli)
    code, _, stderr, _ = connect_in_browser(fb_cli, source_id)
    assert code == 0, stderr
    api.throttle = Throttle(from_call=0, percent=95)  # answered, but at 95 % of the allowance
    limited = fb_cli("sync", "source", str(source_id), "--json")
    doc = limited.json()
    assert limited.returncode == 1 and doc["status"] == "rate_limited", doc
    assert doc["mentions_saved"] == 100 and len(api.content_calls) == 1  # the second page was never asked for
    status = fb_cli.ok("status", str(source_id), "--json").json()
    reset_at = utc(status["rate_limit"]["reset_at"])
    assert status["rate_limit"]["remaining"] == 0
    assert timedelta(minutes=55) < reset_at - datetime.now(UTC) <= timedelta(hours=1)
    again = fb_cli("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout and len(api.content_calls) == 1
    source = db.get_source(conn, source_id)
    assert source.consecutive_failures == 0 and source.inflight_cursor is not None


def test_a_revoked_page_token_marks_the_source_error_with_reconnect_advice(
    fb_cli: Cli, api: GraphApi, conn: db.Connection
) -> None:
    api.add_posts(3, newest=datetime.now(UTC) - timedelta(minutes=5))
    source_id = add_source(fb_cli)
    code, _, stderr, _ = connect_in_browser(fb_cli, source_id)
    assert code == 0, stderr
    api.page_tokens.clear()  # the user removed the app or changed the password
    refused = fb_cli("sync", "source", str(source_id), "--json")
    doc = refused.json()
    assert refused.returncode == 1 and doc["status"] == "error"
    assert "code 190" in doc["message"] and f"slsync connect {source_id}" in doc["message"]
    assert db.get_source(conn, source_id).status == "error"
