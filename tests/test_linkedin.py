"""The LinkedIn connector: its parsers, its Rest.li requests, `slsync connect` and whole syncs through the real
CLI against a loopback stand-in of LinkedIn (tests/fakes/linkedin_api.py).

There are no recorded LinkedIn payloads in the shared fixtures. The payloads here and in the stand-in are
built from LinkedIn's official reference on Microsoft Learn (LinkedIn Community Management API):
"Organization Social Action Notifications" (the criteria finder of organizationalEntityNotifications and
its notification objects: action, lastModifiedAt, sourcePost, generatedActivity, decoratedSourcePost,
decoratedGeneratedActivity, notificationId), "Posts API" (batch get `ids=List(...)`, commentary),
"Little Text Format" (mentions and hashtags in commentary), "Comments API" (comment URNs),
"Authorization Code Flow" and "Refresh Tokens with OAuth 2.0" (token answers with expires_in,
refresh_token, refresh_token_expires_in), "API Rate Limiting" (429 on daily limits, reset at midnight
UTC), "LinkedIn Marketing API Versioning" and "Protocol Versions" (LinkedIn-Version,
X-Restli-Protocol-Version: 2.0.0). Hostile input goes through the contract suite's hypothesis test.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from slsync import db
from slsync.connectors.linkedin import (
    LinkedInConnector,
    needs_post,
    newest_time,
    next_utc_midnight,
    normalize_notification,
    normalize_page,
    notifications_query,
    parse_organization,
    plain_text,
)
from slsync.errors import UsageError
from slsync.tokens import FileStore
from tests.conftest import Cli
from tests.fakes.browser import connect_in_browser
from tests.fakes.linkedin_api import CLIENT_ID, ORGANIZATION, ORGANIZATION_ID, LinkedInApi

# A COMMENT notification as the reference shows it (note the short form of the comment URN LinkedIn sends
# in generatedActivity).
COMMENT = {
    "subscriber": "urn:li:person:zLqTygBP8S",
    "lastModifiedAt": 1691574506310,
    "decoratedSourcePost": {
        "owner": "urn:li:organization:96072893",
        "mediaCategory": "NONE",
        "text": "This is my post 0008",
        "entity": "urn:li:share:7094637247487995904",
    },
    "sourcePost": "urn:li:activity:7094637247890620418",
    "decoratedGeneratedActivity": {
        "comment": {
            "owner": "urn:li:person:V9W_L_bioc",
            "text": "Great news, congrats to the team!",
            "entity": "urn:li:comment:(urn:li:activity:7094637247890620418,7094977717598625792)",
            "object": "urn:li:activity:7094637247890620418",
        }
    },
    "action": "COMMENT",
    "notificationId": 5603453321,
    "organizationalEntity": "urn:li:organization:96072893",
    "generatedActivity": "urn:li:comment:(activity:7094637247890620418,7094977717598625792)",
}
MENTION = {
    "lastModifiedAt": 1603313112000,
    "organizationalEntity": "urn:li:organization:2414183",
    "action": "SHARE_MENTION",
    "sourcePost": "urn:li:share:6725008584290988032",
    "generatedActivity": "urn:li:share:6725008584290988032",
    "decoratedGeneratedActivity": {
        "share": {
            "owner": "urn:li:person:a1b2c3",
            "mediaCategory": "ARTICLE",
            "text": "Thanks @[Devtestco](urn:li:organization:2414183) for {hashtag|\\#|coffee} \\(and tea\\)",
            "entity": "urn:li:share:6725008584290988032",
        }
    },
    "notificationId": 5603453322,
}


def utc_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


# --- parsers --------------------------------------------------------------------------------------


def test_a_comment_notification_becomes_the_comment_with_its_link_under_the_post() -> None:
    mention = normalize_notification(COMMENT)
    assert mention.platform == "linkedin"
    assert mention.external_id == "urn:li:comment:(urn:li:activity:7094637247890620418,7094977717598625792)"
    assert mention.published_at == utc_ms(1691574506310)
    assert mention.content == "Great news, congrats to the team!"
    assert mention.author_handle == "urn:li:person:V9W_L_bioc"
    assert mention.url == (
        "https://www.linkedin.com/feed/update/urn:li:activity:7094637247890620418/?commentUrn="
        "urn%3Ali%3Acomment%3A%28urn%3Ali%3Aactivity%3A7094637247890620418%2C7094977717598625792%29"
    )
    assert mention.media_type == "text" and mention.media_urls == ()
    assert mention.author_name is None and mention.likes_count is None and mention.language is None
    assert mention.raw == COMMENT


def test_a_comment_known_only_by_its_short_urn_still_gets_a_link() -> None:
    bare = {**COMMENT, "decoratedGeneratedActivity": {}}
    mention = normalize_notification(bare)
    # the same comment as when decorated: one id, however LinkedIn spells the URN
    assert mention.external_id == normalize_notification(COMMENT).external_id
    assert mention.url and mention.url.startswith("https://www.linkedin.com/feed/update/urn:li:activity:709463724")
    assert mention.content is None and mention.author_handle is None  # nothing invented


def test_a_mention_reads_as_linkedin_shows_it() -> None:
    mention = normalize_notification(MENTION)
    assert mention.external_id == "urn:li:share:6725008584290988032"
    assert mention.url == "https://www.linkedin.com/feed/update/urn:li:share:6725008584290988032/"
    assert mention.content == "Thanks Devtestco for #coffee (and tea)"
    assert mention.author_handle == "urn:li:person:a1b2c3"
    assert mention.media_type == "link"
    assert mention.published_at == utc_ms(1603313112000)


def test_a_mention_without_its_text_is_read_from_the_batch_got_post() -> None:
    bare = {k: v for k, v in MENTION.items() if k != "decoratedGeneratedActivity"}
    assert needs_post(bare) == "urn:li:share:6725008584290988032"
    assert needs_post(MENTION) is None and needs_post(COMMENT) is None
    post = {
        "id": bare["generatedActivity"],
        "author": "urn:li:organization:1",
        "commentary": "Hi @[Acme](urn:li:organization:2414183)",
    }
    mentions, errors = normalize_page({"elements": [bare]}, {bare["generatedActivity"]: post})
    assert errors == 0
    [mention] = mentions
    assert mention.content == "Hi Acme" and mention.author_handle == "urn:li:organization:1"
    assert mention.raw and mention.raw["resolvedPost"] == post


def test_a_page_passes_over_other_actions_and_counts_what_it_cannot_store() -> None:
    like = {"action": "LIKE", "lastModifiedAt": 1700000000000, "sourcePost": "urn:li:share:1"}
    no_time = {**MENTION, "lastModifiedAt": "yesterday"}
    no_urn = {"action": "COMMENT", "lastModifiedAt": 1700000000000, "generatedActivity": "comment 5"}
    body = {"paging": {"start": 0, "count": 10, "total": 6}, "elements": [COMMENT, like, no_time, no_urn, 7, MENTION]}
    mentions, errors = normalize_page(body)
    assert [m.external_id for m in mentions] == [
        "urn:li:comment:(urn:li:activity:7094637247890620418,7094977717598625792)",
        "urn:li:share:6725008584290988032",
    ]
    assert errors == 3
    assert newest_time(body) == utc_ms(1700000000000)  # every notification moves the bound, stored or not


def test_little_text_becomes_plain() -> None:
    assert plain_text("@[Acme \\[EU\\]](urn:li:organization:1) loves {hashtag|\\#|brew}") == "Acme [EU] loves #brew"
    assert plain_text("") is None and plain_text(5) is None


def test_the_finder_query_keeps_restli_structure_and_encodes_the_urn() -> None:
    query = notifications_query("urn:li:organization:2414183", 1000, 2000, 50, 50)
    assert query == (
        "q=criteria&actions=List(SHARE_MENTION,COMMENT)&organizationalEntity=urn%3Ali%3Aorganization%3A2414183"
        "&timeRange=(start:1000,end:2000)&start=50&count=50"
    )


def test_the_organization_option_and_what_a_source_cannot_ask() -> None:
    assert parse_organization("2414183") == "urn:li:organization:2414183"
    assert parse_organization(" urn:li:organization:2414183 ") == "urn:li:organization:2414183"
    assert parse_organization("urn:li:organizationBrand:77") == "urn:li:organizationBrand:77"
    for bad in ("acme", "urn:li:person:123", "https://www.linkedin.com/company/acme"):
        with pytest.raises(ValueError):
            parse_organization(bad)
    config = LinkedInConnector.build_config({"keywords": ["espresso"]}, {"organization": "2414183"})
    assert config["options"] == {"organization": "urn:li:organization:2414183"}
    with pytest.raises(UsageError, match="organization=ID"):
        LinkedInConnector.build_config({}, {})
    with pytest.raises(UsageError, match="--mention"):
        LinkedInConnector.build_config({"mentions": ["acme"]}, {"organization": "1"})
    with pytest.raises(UsageError, match="language"):
        LinkedInConnector.build_config({"languages": ["en"]}, {"organization": "1"})


def test_daily_limits_reset_at_the_next_utc_midnight() -> None:
    assert next_utc_midnight(datetime(2026, 12, 2, 23, 59, 59, tzinfo=UTC)) == datetime(2026, 12, 3, tzinfo=UTC)
    assert next_utc_midnight(datetime(2026, 12, 31, 0, 0, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


# --- through the CLI against the stand-in ---------------------------------------------------------


@pytest.fixture
def api() -> Iterator[LinkedInApi]:
    stand_in = LinkedInApi().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def li(cli: Cli, api: LinkedInApi) -> Cli:
    cli.env.update(api.env())
    return cli


def add_source(cli: Cli, *args: str) -> int:
    doc = cli.ok("source", "add", "linkedin", "--tenant", "1", "--name", "acme", *args, "--json").json()
    assert doc["status"] == "pending" and doc["connection_type"] == "user"
    return int(doc["id"])


def connected_source(cli: Cli, *args: str) -> int:
    source_id = add_source(cli, "--option", f"organization={ORGANIZATION_ID}", *args)
    code, _, stderr, _ = connect_in_browser(cli, source_id)
    assert code == 0, stderr
    return source_id


def sync(cli: Cli, source_id: int) -> tuple[int, dict[str, Any]]:
    result = cli("sync", "source", str(source_id), "--json")
    return result.returncode, json.loads(result.stdout)


def assert_nothing_secret(conn: db.Connection, api: LinkedInApi, *texts: str) -> None:
    rows = conn.execute("SELECT s::text AS row FROM sl_sources s UNION ALL SELECT r::text FROM sl_sync_runs r")
    haystacks = [r["row"] for r in rows.fetchall()] + list(texts)
    secrets = api.secret_values()
    assert len(secrets) >= 3
    for secret in secrets:
        assert all(secret not in text for text in haystacks), "a secret leaked"


def test_linkedin_is_active_and_a_source_needs_only_its_organization(li: Cli) -> None:
    platforms = {p["name"]: p for p in li.ok("platforms", "--json").json()["platforms"]}
    assert platforms["linkedin"]["state"] == "active"
    add_source(li, "--option", "organization=urn:li:organization:2414183")
    refused = li("source", "add", "linkedin", "--tenant", "1", "--name", "x", "--keyword", "acme")
    assert refused.returncode == 2 and "organization=ID" in refused.stderr


def test_connect_end_to_end_keeps_the_token_and_the_refresh_tokens_expiry(
    li: Cli, api: LinkedInApi, conn: db.Connection, tmp_path: Path
) -> None:
    source_id = add_source(li, "--option", f"organization={ORGANIZATION_ID}")
    before = datetime.now(UTC)
    code, stdout, stderr, page = connect_in_browser(li, source_id)
    assert code == 0, stderr
    assert page.status_code == 200 and "connected" in page.text
    [authorize] = [r for r in api.requests if r.path == "/oauth/v2/authorization"]
    assert "scope=r_organization_social+rw_organization_admin" in authorize.query
    # the code exchange carried the app's credentials in the form, as LinkedIn wants; no HTTP Basic
    [form] = api.token_forms
    assert form["grant_type"] == "authorization_code" and form["client_id"] == CLIENT_ID
    assert form["client_secret"] == api.client_secret and api.token_authorizations == [None]
    # no PKCE: LinkedIn enables it per app only on request
    assert "code_challenge" not in authorize.query and "code_verifier" not in form
    path = tmp_path / "data" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = FileStore(path).get(source_id)
    [grant] = api.grants.values()
    assert stored is not None and stored.access_token == api.issued[0]
    assert stored.refresh_token == grant.refresh_token
    assert stored.expires_at and abs(stored.expires_at - (before + timedelta(days=60))) < timedelta(seconds=30)
    # sl_sources.reconnect_by is when the refresh token dies (about a year), not the access token
    source = db.get_source(conn, source_id)
    assert source.status == "connected"
    assert source.reconnect_by and abs(source.reconnect_by - grant.refresh_expires_at) < timedelta(seconds=2)
    assert abs(source.reconnect_by - (before + timedelta(days=365))) < timedelta(seconds=30)
    assert_nothing_secret(conn, api, stdout, stderr, page.text)


def test_a_refresh_keeps_reconnect_by_and_a_renewed_refresh_token_moves_it(
    li: Cli, api: LinkedInApi, conn: db.Connection
) -> None:
    api.expires_in = 60  # inside the refresh margin: the next sync refreshes before its first call
    source_id = connected_source(li)
    [grant] = api.grants.values()
    connected_by = db.get_source(conn, source_id).reconnect_by
    code, result = sync(li, source_id)
    assert code == 0, result
    refreshes = [f for f in api.token_forms if f["grant_type"] == "refresh_token"]
    assert len(refreshes) == 1 and refreshes[0]["client_secret"] == api.client_secret
    kept = db.get_source(conn, source_id).reconnect_by
    assert kept and connected_by and abs(kept - connected_by) < timedelta(seconds=2)
    assert abs(kept - grant.refresh_expires_at) < timedelta(seconds=2)

    conn.execute("UPDATE sl_sources SET reconnect_by = reconnect_by - interval '30 days' WHERE id = %s", (source_id,))
    api.renew_refresh = True  # this time LinkedIn grants a new refresh token with a new year
    code, result = sync(li, source_id)
    assert code == 0, result
    [renewed] = api.grants.values()
    moved = db.get_source(conn, source_id).reconnect_by
    assert renewed.refresh_token != grant.refresh_token
    assert moved and abs(moved - renewed.refresh_expires_at) < timedelta(seconds=2)
    assert_nothing_secret(conn, api, json.dumps(result))


def test_sync_pages_resolves_mentions_and_then_reads_only_what_is_new(
    li: Cli, api: LinkedInApi, conn: db.Connection
) -> None:
    source_id = connected_source(li)
    clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    for n in range(70):
        clock += timedelta(minutes=15)
        if n % 2:
            api.add_comment(clock)
        else:
            api.add_mention(clock, decorated=n % 4 != 0)
    api.add_mention(datetime.now(UTC) - timedelta(days=9))  # older than the 7-day first reach
    code, first = sync(li, source_id)
    assert code == 0, first
    assert first["pages"] == 2 and first["mentions_saved"] == first["mentions_fetched"] == 70
    assert first["errors"] == 0
    calls = api.notification_calls
    assert [c.query.split("&start=")[1] for c in calls] == ["0&count=50", "50&count=50"]
    assert calls[0].query.split("&start=")[0] == calls[1].query.split("&start=")[0]  # one fixed range per run
    # undecorated mentions were read with one batch get per page, with encoded URNs in List(...)
    batches = [r for r in api.requests if r.path == "/rest/posts"]
    assert len(batches) == 2 and all(b.query.startswith("ids=List(urn%3Ali%3Ashare%3A") for b in batches)
    rows = conn.execute(
        "SELECT external_id, content, url, author_handle FROM sl_mentions WHERE source_id = %s", (source_id,)
    ).fetchall()
    assert len(rows) == 70 and all(r["content"] and r["url"] and r["author_handle"] for r in rows)
    assert any(r["content"].startswith("Loving the new blend from Acme Coffee #") for r in rows)
    # every call carried the version and the Rest.li protocol
    for call in api.content_calls:
        assert call.headers["linkedin-version"] == "202609"
        assert call.headers["x-restli-protocol-version"] == "2.0.0"
        assert call.headers["authorization"].startswith("Bearer ")

    newest = clock
    for _ in range(3):
        clock += timedelta(minutes=15)
        api.add_comment(clock)
    code, second = sync(li, source_id)
    assert code == 0 and second["mentions_saved"] == 3 and second["mentions_fetched"] == 4, second
    start = int(api.notification_calls[-1].query.split("timeRange=(start:")[1].split(",")[0])
    assert start == int((newest - timedelta(minutes=10)).timestamp() * 1000)  # the newest seen, less the overlap
    code, third = sync(li, source_id)
    assert code == 0 and third["mentions_saved"] == 0


def test_keywords_filter_and_exclusions_drop(li: Cli, api: LinkedInApi, conn: db.Connection) -> None:
    source_id = connected_source(li, "--keyword", "espresso", "--hashtag", "decaf", "--exclude", "jobs")
    moment = datetime.now(UTC) - timedelta(hours=1)
    api.add_comment(moment, "Best espresso in town")
    api.add_comment(moment + timedelta(minutes=1), "Loving the #decaf")
    api.add_comment(moment + timedelta(minutes=2), "Espresso jobs open?")
    api.add_comment(moment + timedelta(minutes=3), "Nice tea")
    code, result = sync(li, source_id)
    assert code == 0 and result["mentions_saved"] == 2, result
    contents = {r["content"] for r in conn.execute("SELECT content FROM sl_mentions").fetchall()}
    assert contents == {"Best espresso in town", "Loving the #decaf"}


def test_a_429_stops_the_source_until_midnight_utc(li: Cli, api: LinkedInApi, conn: db.Connection) -> None:
    source_id = connected_source(li)
    api.add_comment(datetime.now(UTC) - timedelta(hours=1))
    api.fail_429_from_call = 0
    before = datetime.now(UTC)
    code, limited = sync(li, source_id)
    after = datetime.now(UTC)
    assert code == 1 and limited["status"] == "rate_limited", limited
    source = db.get_source(conn, source_id)
    assert source.rate_limit_reset_at in {next_utc_midnight(before), next_utc_midnight(after)}
    assert source.consecutive_failures == 0
    calls = len(api.content_calls)
    again = li("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert li.ok("sync", "due", "--json").json()["results"] == []
    assert len(api.content_calls) == calls == 1  # one 429, never retried, nothing called before the reset


def test_a_retry_after_header_says_when_instead(li: Cli, api: LinkedInApi, conn: db.Connection) -> None:
    source_id = connected_source(li)
    api.fail_429_from_call, api.retry_after = 0, 3600
    before = datetime.now(UTC)
    code, limited = sync(li, source_id)
    assert code == 1 and limited["status"] == "rate_limited"
    reset_at = db.get_source(conn, source_id).rate_limit_reset_at
    assert reset_at and timedelta(minutes=59) < reset_at - before < timedelta(minutes=61)


def test_the_stand_in_refuses_calls_without_the_version_or_protocol_headers(api: LinkedInApi) -> None:
    api.access_tokens.add("token")
    query = notifications_query(ORGANIZATION, 0, 1, 0, 50)
    url = f"{api.url}/organizationalEntityNotifications?{query}"
    full = {"Authorization": "Bearer token", "LinkedIn-Version": "202609", "X-Restli-Protocol-Version": "2.0.0"}
    with httpx.Client(trust_env=False) as client:
        assert client.get(url, headers=full).status_code == 200
        no_version = client.get(url, headers={k: v for k, v in full.items() if k != "LinkedIn-Version"})
        assert no_version.status_code == 400 and no_version.json()["code"] == "VERSION_MISSING"
        no_protocol = client.get(url, headers={k: v for k, v in full.items() if k != "X-Restli-Protocol-Version"})
        assert no_protocol.status_code == 400
        assert client.get(url, headers={**full, "LinkedIn-Version": "202301"}).status_code == 426


def test_a_version_linkedin_no_longer_serves_names_the_setting(li: Cli, api: LinkedInApi) -> None:
    source_id = connected_source(li)
    li.env["SLSYNC_LINKEDIN_VERSION"] = "202301"
    code, failed = sync(li, source_id)
    assert code == 1 and failed["status"] == "failing"
    assert "SLSYNC_LINKEDIN_VERSION" in failed["message"] and "not active" in failed["message"]


def test_a_member_who_is_not_an_administrator_gets_advice(li: Cli, api: LinkedInApi, conn: db.Connection) -> None:
    source_id = connected_source(li)
    conn.execute(
        "UPDATE sl_sources SET config = jsonb_set(config, '{options,organization}', '\"urn:li:organization:1\"')"
        " WHERE id = %s",
        (source_id,),
    )
    code, refused = sync(li, source_id)
    assert code == 1 and refused["status"] == "error"
    assert "HTTP 403" in refused["message"] and f"slsync connect {source_id}" in refused["message"]


def test_a_grant_without_the_admin_scope_is_not_kept(
    li: Cli, api: LinkedInApi, conn: db.Connection, tmp_path: Path
) -> None:
    api.scope_granted = "r_organization_social"
    source_id = add_source(li, "--option", f"organization={ORGANIZATION_ID}")
    code, _, stderr, _ = connect_in_browser(li, source_id)
    assert code == 1 and "rw_organization_admin" in stderr
    assert db.get_source(conn, source_id).status == "pending"
    path = tmp_path / "data" / "tokens.json"
    assert not path.exists() or FileStore(path).get(source_id) is None
