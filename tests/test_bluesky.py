"""The Bluesky connector: the queries it builds, the real recorded payload it normalizes, the app-password
session it keeps, and whole syncs against a loopback stand-in of the XRPC API driven through the real CLI."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from slsync import db
from slsync.connectors.bluesky import (
    MAX_QUERIES,
    OVERLAP,
    BlueskyConnector,
    BlueskySession,
    Query,
    build_queries,
    jwt_expiry,
    next_since,
    normalize_page,
    sort_time,
)
from slsync.errors import AuthError, RateLimited, UsageError
from tests.conftest import Cli
from tests.fakes.bluesky_api import CREATE, REFRESH, BlueskyApi, iso, jwt

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "bluesky"
HANDLE, PASSWORD = "listener.bsky.social", "abcd-efgh-ijkl-mnop"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def api() -> Any:
    server = BlueskyApi(accounts={HANDLE: PASSWORD}).start()
    yield server
    server.stop()


@pytest.fixture
def bsky(cli: Cli, api: BlueskyApi) -> Cli:
    cli.env.update({"SLSYNC_BLUESKY_API_URL": api.url, "BLUESKY_HANDLE": HANDLE, "BLUESKY_APP_PASSWORD": PASSWORD})
    return cli


def add_source(conn: db.Connection, name: str = "acme", **search: list[str]) -> int:
    config = BlueskyConnector.build_config(search or {"keywords": ["acme"], "languages": ["en"]}, {})
    return db.add_source(
        conn, tenant_id=1, platform="bluesky", name=name, connection_type="app", config=config, interval_minutes=15
    )


def sync(cli: Cli, source_id: int, **kwargs: Any) -> dict:
    return cli("sync", "source", str(source_id), "--json", **kwargs).json()


# --- the queries ----------------------------------------------------------------------------------

README_EXAMPLE = {
    "keywords": ["acme", "acme coffee"],
    "hashtags": ["acmecoffee"],
    "mentions": ["acme.bsky.social"],
    "exclude": ["jobs"],
    "languages": ["en"],
}


def test_the_readme_example_is_one_query_per_term_with_the_exclusions_and_the_language() -> None:
    assert build_queries(README_EXAMPLE) == [
        Query("acme -jobs", "en"),
        Query('"acme coffee" -jobs', "en"),
        Query("#acmecoffee -jobs", "en"),
        Query("mentions:acme.bsky.social -jobs", "en"),
    ]


@pytest.mark.parametrize(
    ("config", "queries"),
    [
        ({"keywords": ["acme"]}, [Query("acme")]),
        ({"keywords": ["OR", "co-op", "café"]}, [Query('"OR"'), Query('"co-op"'), Query("café")]),
        ({"hashtags": ["AcmeCoffee"], "exclude": ["free shipping", "ad"]}, [Query('#AcmeCoffee -"free shipping" -ad')]),
        ({"mentions": ["Acme.BSKY.social"]}, [Query("mentions:acme.bsky.social")]),
        ({"keywords": ["acme"], "languages": ["en", "pt"]}, [Query("acme", "en"), Query("acme", "pt")]),
    ],
)
def test_queries_quote_phrases_and_carry_one_language_each(config: dict, queries: list[Query]) -> None:
    assert build_queries(config) == queries


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"keywords": ['say "hi"']}, "double quote"),
        ({"keywords": ["acme"], "exclude": ['"x"']}, "double quote"),
        ({"hashtags": ["two words"]}, "not a hashtag"),
        ({"hashtags": ["2025"]}, "not a hashtag"),
        ({"mentions": ["acme"]}, "acme.bsky.social"),
        ({"mentions": ["did:plc:abc123"]}, "not a Bluesky handle"),
        ({"keywords": [f"k{n}" for n in range(6)], "languages": ["en", "de"]}, f"at most {MAX_QUERIES}"),
    ],
)
def test_what_bluesky_cannot_search_is_refused(config: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build_queries(config)


def test_source_add_refuses_a_mention_that_is_not_a_handle(bsky: Cli) -> None:
    result = bsky("source", "add", "bluesky", "--tenant", "1", "--name", "bad", "--mention", "@acme")
    assert result.returncode == 2 and "a full handle such as acme.bsky.social" in result.stderr
    added = bsky.ok("source", "add", "bluesky", "--tenant", "1", "--name", "ok", "--mention", "@acme.bsky.social")
    assert "added bluesky source" in added.stdout


# --- normalizing the recorded payload -------------------------------------------------------------


def expected_media(post: dict) -> tuple[str, tuple[str, ...]]:
    """Written out from the payload independently of the connector: hydrated embed first, then link facets."""
    embed = post.get("embed") or {}
    if embed.get("$type") == "app.bsky.embed.images#view":
        return "image", tuple(i["fullsize"] for i in embed["images"])
    if embed.get("$type") == "app.bsky.embed.external#view":
        return "link", (embed["external"]["uri"],)
    links = [
        f["uri"]
        for facet in post["record"].get("facets", [])
        for f in facet["features"]
        if f["$type"] == "app.bsky.richtext.facet#link"
    ]
    return ("link", tuple(dict.fromkeys(links))) if links else ("text", ())


def test_every_recorded_post_becomes_a_mention_field_by_field() -> None:
    body = fixture("feed_search_posts")
    mentions, errors = normalize_page(body)
    assert errors == 0 and len(mentions) == len(body["posts"]) == 25
    for post, mention in zip(body["posts"], mentions, strict=True):
        author, record = post["author"], post["record"]
        assert mention.platform == "bluesky" and mention.external_id == post["uri"]
        assert mention.url == f"https://bsky.app/profile/{author['handle']}/post/{post['uri'].rsplit('/', 1)[1]}"
        assert mention.content == record["text"]
        assert mention.author_handle == author["handle"]
        assert mention.author_name == (author["displayName"] or None)
        assert mention.author_followers is None and mention.author_verified is None and mention.location is None
        assert mention.published_at == when(record["createdAt"])
        assert mention.likes_count == post["likeCount"] and mention.comments_count == post["replyCount"]
        assert mention.shares_count == post["repostCount"] + post["quoteCount"]
        assert mention.language == (record["langs"][0] if record.get("langs") else None)
        assert (mention.media_type, mention.media_urls) == expected_media(post)
        assert mention.raw == post


def test_the_recorded_oddities_keep_their_real_values() -> None:
    body = fixture("feed_search_posts")
    mentions = {m.external_id: m for m in normalize_page(body)[0]}
    by_rkey = {uri.rsplit("/", 1)[1]: m for uri, m in mentions.items()}
    # a bot's createdAt in microseconds, and another client's with an explicit +00:00 offset
    assert by_rkey["3lpk2u6qo222m"].published_at == datetime(2025, 5, 19, 17, 10, 9, 561858, tzinfo=UTC)
    assert by_rkey["3lpii6nwbyt2m"].published_at == datetime(2025, 5, 19, 2, 3, 20, 286393, tzinfo=UTC)
    # the author's clock ran ahead: createdAt after indexedAt; published_at stays createdAt, sortAt the earlier
    ahead = next(p for p in body["posts"] if p["uri"].endswith("3lpikwarowc2o"))
    assert by_rkey["3lpikwarowc2o"].published_at == when(ahead["record"]["createdAt"])
    assert sort_time(ahead) == when(ahead["indexedAt"]) < when(ahead["record"]["createdAt"])
    assert by_rkey["3lpjlye6o6c2c"].author_name is None  # displayName "" is no name
    assert by_rkey["3lpjl6vjfes2b"].media_type == "text"  # a quote post: the quoted post is not its media
    assert by_rkey["3lpk2u6qo222m"].media_urls == ("https://osf.io/v87fn",)  # a link facet, no embed
    assert by_rkey["3lpica7sxmk2u"].shares_count == 13 + 1
    assert "李之樸" in (by_rkey["3lpica7sxmk2u"].author_name or "")
    assert sum(1 for m in mentions.values() if m.language is None) == 4  # posts without langs


def test_odd_posts_are_kept_with_nulls_or_skipped_and_counted() -> None:
    good = fixture("feed_search_posts")["posts"][2]
    no_created = copy.deepcopy(good)
    del no_created["record"]["createdAt"]
    bad_counts = copy.deepcopy(good) | {"likeCount": -1, "replyCount": 2**63, "repostCount": True, "quoteCount": "3"}
    invalid_handle = copy.deepcopy(good)
    invalid_handle["author"]["handle"] = "handle.invalid"
    timeless = copy.deepcopy(good)
    del timeless["record"]["createdAt"], timeless["indexedAt"]
    video = copy.deepcopy(good) | {
        "embed": {
            "$type": "app.bsky.embed.recordWithMedia#view",
            "media": {"$type": "app.bsky.embed.video#view", "playlist": "https://video.bsky.app/watch/x/playlist.m3u8"},
        }
    }
    verified = copy.deepcopy(good)
    verified["author"]["verification"] = {"verifiedStatus": "valid", "verifications": []}
    body = {"posts": [no_created, bad_counts, invalid_handle, timeless, video, verified, "nope", {"uri": 5}]}
    mentions, errors = normalize_page(body)
    assert errors == 3 and len(mentions) == 5
    first, counts, anonymous, clip, checked = mentions
    assert first.published_at == when(good["indexedAt"])  # indexedAt stands in, never an invented time
    assert counts.likes_count is None and counts.comments_count is None and counts.shares_count is None
    did = good["author"]["did"]
    assert anonymous.author_handle is None and anonymous.url == f"https://bsky.app/profile/{did}/post/3lpjzka2pzc2l"
    assert (clip.media_type, clip.media_urls) == ("video", ("https://video.bsky.app/watch/x/playlist.m3u8",))
    assert checked.author_verified is True
    assert normalize_page({"posts": {"not": "a list"}}) == ([], 0) and normalize_page([1, 2]) == ([], 0)


# --- the session ----------------------------------------------------------------------------------


def test_the_jwt_expiry_is_read_without_verifying() -> None:
    assert jwt_expiry(jwt({"exp": 1_800_000_000})) == datetime.fromtimestamp(1_800_000_000, UTC)
    for token in ("opaque", jwt({"sub": "x"}), jwt({"exp": "soon"}), "a.!!!.c", jwt({"exp": 1e300})):
        assert jwt_expiry(token) is None


def test_the_session_refreshes_before_exp_with_each_refresh_token_once(api: BlueskyApi) -> None:
    api.access_lifetime = timedelta(seconds=60)  # inside the 2-minute margin: every use renews it
    session = BlueskySession(api.url, HANDLE, SecretStr(PASSWORD))
    tokens = [session.access_token() for _ in range(3)]
    assert len(set(tokens)) == 3 and session.created == 1 and session.refreshed == 2
    refreshes = api.calls(REFRESH)
    assert [r.status for r in refreshes] == [200, 200]
    # each refresh sent the refresh JWT of the answer before it (the PDS takes each once)
    issued = [r for r in api.requests if r.path in (CREATE, REFRESH)]
    assert len({r.authorization for r in refreshes}) == 2 and len(issued) == 3
    assert api.calls(CREATE)[0].body == {"identifier": HANDLE, "password": PASSWORD}

    api.access_lifetime = timedelta(hours=2)
    api.refuse_refresh = True  # the refresh token was revoked: sign in again with the app password
    fresh = session.refresh()
    assert session.created == 2 and fresh in api.access_tokens and session.access_token() == fresh


def test_a_refused_sign_in_names_the_settings_and_never_the_password(api: BlueskyApi) -> None:
    session = BlueskySession(api.url, HANDLE, SecretStr("wrong-pass-word"))
    with pytest.raises(AuthError) as refused:
        session.access_token()
    assert "BLUESKY_HANDLE" in str(refused.value) and "BLUESKY_APP_PASSWORD" in str(refused.value)
    assert "Invalid identifier or password" in str(refused.value) and "wrong-pass-word" not in str(refused.value)
    api.sessions_limited = True
    with pytest.raises(RateLimited) as limited:
        BlueskySession(api.url, HANDLE, SecretStr(PASSWORD)).access_token()
    assert limited.value.reset_at is not None and limited.value.reset_at > datetime.now(UTC) + timedelta(minutes=30)


# --- whole syncs against the stand-in -------------------------------------------------------------


def test_two_pages_then_an_incremental_sync_from_the_newest_sort_time(bsky: Cli, api: BlueskyApi, conn) -> None:
    posts = api.add_posts(150, newest=datetime.now(UTC) - timedelta(minutes=1), text="acme roasts")
    api.add_posts(5, text="acme roasts, in German", langs=["de"])  # another language: not asked for
    source_id = add_source(conn)
    first = sync(bsky, source_id, env={"SLSYNC_LOG_LEVEL": "DEBUG"})
    assert first["success"] and first["pages"] == 2 and first["mentions_saved"] == 150
    assert [r.params.get("cursor") for r in api.searches] == [None, "100"]
    for request in api.searches:
        assert {k: request.params[k] for k in ("q", "sort", "limit", "lang")} == {
            "q": "acme", "sort": "latest", "limit": "100", "lang": "en",
        }  # fmt: skip
        assert request.authorization == f"Bearer {next(iter(api.access_tokens))}"
    since = when(api.searches[0].params["since"])
    assert timedelta(days=6, hours=23) < datetime.now(UTC) - since <= timedelta(days=7, minutes=1)
    assert len(api.calls(CREATE)) == 1 and not api.calls(REFRESH)
    row = conn.execute("SELECT * FROM sl_mentions WHERE external_id = %s", (posts[0]["uri"],)).fetchone()
    rkey = posts[0]["uri"].rsplit("/", 1)[1]
    assert row["url"] == f"https://bsky.app/profile/{posts[0]['author']['handle']}/post/{rkey}"
    assert row["author_name"] == posts[0]["author"]["displayName"] and row["language"] == "en"
    assert row["shares_count"] == 3 and row["published_at"] == when(posts[0]["record"]["createdAt"])

    newer = api.add_posts(3, newest=datetime.now(UTC), spacing=timedelta(seconds=2), text="acme again")
    second = sync(bsky, source_id)
    assert second["success"] and second["mentions_saved"] == 3 and second["pages"] == 1
    newest_seen = when(posts[0]["indexedAt"])
    assert when(api.searches[-1].params["since"]) == newest_seen - OVERLAP  # re-asks only the overlap
    assert second["mentions_fetched"] == 3 + sum(1 for p in posts if when(p["indexedAt"]) >= newest_seen - OVERLAP)
    source = db.get_source(conn, source_id)
    assert source.committed_cursor == {"v": 2, "streams": {"en acme": iso(when(newer[0]["indexedAt"]) - OVERLAP)}}
    assert source.inflight_cursor is None
    status = bsky.ok("status", str(source_id), "--json").json()
    assert status["rate_limit"]["remaining"] == api.remaining and status["rate_limit"]["reset_at"]

    # no secret anywhere: not in what was printed (debug logs included), nor in the database
    secrets = [PASSWORD, *api.access_tokens, *(r.authorization for r in api.requests if r.authorization)]
    printed = bsky("sync", "source", str(source_id), "--json", env={"SLSYNC_LOG_LEVEL": "DEBUG"})
    stored = json.dumps(
        [conn.execute("SELECT * FROM sl_sources").fetchall(), conn.execute("SELECT * FROM sl_sync_runs").fetchall()],
        default=str,
    )
    for secret in secrets:
        for part in secret.removeprefix("Bearer ").split("."):
            assert part not in printed.stdout + printed.stderr and part not in stored


def test_the_bound_follows_sort_time_when_an_authors_clock_runs_ahead(bsky: Cli, api: BlueskyApi, conn) -> None:
    now = datetime.now(UTC)
    # indexed two minutes ago, but its author's clock said three hours from now: sortAt is the indexedAt
    api.add_post(indexed=now - timedelta(minutes=2), created=now + timedelta(hours=3), text="acme from the future")
    source_id = add_source(conn)
    assert sync(bsky, source_id)["mentions_saved"] == 1
    later = api.add_post(indexed=datetime.now(UTC), text="acme, written after the first sync")
    second = sync(bsky, source_id)
    # a bound built on createdAt would have asked since three hours ahead and never found it
    assert second["mentions_saved"] == 1 and db.get_source(conn, source_id).mentions_count == 2
    assert when(api.searches[-1].params["since"]) == now.replace(microsecond=now.microsecond // 1000 * 1000) - (
        timedelta(minutes=2) + OVERLAP
    )
    assert later["uri"] in {r["external_id"] for r in conn.execute("SELECT external_id FROM sl_mentions")}
    # without an indexedAt to bound it, a createdAt ahead of the clock is capped at now
    assert next_since(None, now - timedelta(days=7), now + timedelta(hours=3), now) == now - OVERLAP


def test_each_term_is_its_own_query_and_the_results_merge(bsky: Cli, api: BlueskyApi, conn) -> None:
    now = datetime.now(UTC)
    api.add_post(indexed=now, text="I love acme")
    api.add_post(indexed=now - timedelta(seconds=1), text="morning cup", tags=("acmecoffee",))
    api.add_post(indexed=now - timedelta(seconds=2), text="hey", mentions=("acme.bsky.social",))
    api.add_post(indexed=now - timedelta(seconds=3), text="acme, twice", tags=("acmecoffee",))
    api.add_post(indexed=now - timedelta(seconds=4), text="acme jobs board")  # excluded
    source_id = add_source(
        conn, keywords=["acme"], hashtags=["acmecoffee"], mentions=["acme.bsky.social"], exclude=["jobs"]
    )
    result = sync(bsky, source_id)
    assert [r.params["q"] for r in api.searches] == [
        "acme -jobs",
        "#acmecoffee -jobs",
        "mentions:acme.bsky.social -jobs",
    ]
    assert all("lang" not in r.params for r in api.searches)
    assert result["mentions_fetched"] == 5 and result["mentions_saved"] == 4 and result["duplicates"] == 1
    bounds = db.get_source(conn, source_id).committed_cursor["streams"]
    assert sorted(bounds) == ["* #acmecoffee -jobs", "* acme -jobs", "* mentions:acme.bsky.social -jobs"]


def test_a_429_ends_the_run_and_the_next_one_continues_after_the_reset(bsky: Cli, api: BlueskyApi, conn) -> None:
    api.add_posts(250, spacing=timedelta(seconds=20))
    api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    api.fail_429_from_call = 1  # the second call is refused
    source_id = add_source(conn)
    limited = bsky("sync", "source", str(source_id), "--json")
    doc = limited.json()
    assert limited.returncode == 1 and doc["status"] == "rate_limited" and doc["mentions_saved"] == 100
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at == api.reset_at
    assert source.consecutive_failures == 0 and source.inflight_cursor["active"]["token"] == "100"

    again = bsky("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert bsky.ok("sync", "due", "--json").json()["results"] == []
    assert len(api.searches) == 2  # nobody called Bluesky before the reset

    api.fail_429_from_call = None
    conn.execute(
        "UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now() WHERE id = %s",
        (source_id,),
    )
    resumed = bsky.ok("sync", "due", "--json").json()["results"][0]
    assert resumed["success"] and resumed["mentions_saved"] == 150 and resumed["duplicates"] == 0
    assert api.searches[2].params["cursor"] == "100"
    assert api.searches[2].params["since"] == api.searches[0].params["since"]  # the interrupted pass's bound


def test_a_spent_window_stops_the_run_before_the_next_call(bsky: Cli, api: BlueskyApi, conn) -> None:
    api.add_posts(150, spacing=timedelta(seconds=20))
    api.remaining = 1  # this call's answer says 0 left
    source_id = add_source(conn)
    doc = sync(bsky, source_id)
    assert doc["status"] == "rate_limited" and doc["mentions_saved"] == 100
    assert [r.status for r in api.searches] == [200]  # stopped on the headers, without drawing a 429


def test_one_session_serves_every_source_and_an_expired_token_is_renewed(bsky: Cli, api: BlueskyApi, conn) -> None:
    api.add_posts(3)
    first, second = add_source(conn, "one"), add_source(conn, "two", hashtags=["acme"])
    api.faults = [("xrpc", 400, "ExpiredToken")]  # the PDS's answer to an access JWT past its exp
    due = bsky.ok("sync", "due", "--concurrency", "2", "--json").json()
    assert due["sources_synced"] == 2 and due["sources_failed"] == 0
    assert len(api.calls(CREATE)) == 1  # createSession is limited per account: one sign-in per process
    assert len(api.calls(REFRESH)) == 1 and len(api.searches) == 3
    assert {db.get_source(conn, s).status for s in (first, second)} == {"active"}


def test_refused_or_missing_credentials_mark_the_source_error_with_advice(bsky: Cli, api: BlueskyApi, conn) -> None:
    api.add_posts(2)
    source_id = add_source(conn)
    refused = bsky("sync", "source", str(source_id), "--json", env={"BLUESKY_APP_PASSWORD": "not-the-password"})
    doc = refused.json()
    assert refused.returncode == 1 and doc["status"] == "error"
    assert "BLUESKY_HANDLE and BLUESKY_APP_PASSWORD" in doc["message"] and "App passwords" in doc["message"]
    assert "not-the-password" not in refused.stdout + refused.stderr and not api.searches

    bare = Cli({k: v for k, v in bsky.env.items() if not k.startswith("BLUESKY_")}, bsky.cwd)
    missing = bare("sync", "source", str(source_id), "--json").json()
    assert "no bluesky credentials" in missing["message"] and "BLUESKY_HANDLE" in missing["message"]
    assert db.get_source(conn, source_id).status == "error"
    healed = sync(bsky, source_id)
    assert healed["success"] and healed["mentions_saved"] == 2


def test_a_resumed_first_sync_keeps_its_reach_for_the_queries_left(bsky: Cli, api: BlueskyApi, conn) -> None:
    api.add_post(indexed=datetime.now(UTC) - timedelta(days=3), text="acme")
    api.add_post(indexed=datetime.now(UTC) - timedelta(days=5), text="roastery")
    api.fail_429_from_call = 1  # the first query completes, the second is refused
    api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    source_id = add_source(conn, keywords=["acme", "roastery"])
    assert sync(bsky, source_id)["status"] == "rate_limited"
    inflight = db.get_source(conn, source_id).inflight_cursor
    assert list(inflight["streams"]) == ["* acme"] and iso(when(inflight["since"])) == api.searches[0].params["since"]

    api.fail_429_from_call = None
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    resumed = sync(bsky, source_id)
    assert resumed["success"] and resumed["mentions_saved"] == 1
    assert api.searches[-1].params == {**api.searches[0].params, "q": "roastery"}  # the same reach, not a new one
    committed = db.get_source(conn, source_id).committed_cursor
    assert sorted(committed) == ["streams", "v"] and sorted(committed["streams"]) == ["* acme", "* roastery"]
