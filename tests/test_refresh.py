"""Reading stored posts again, through the real CLI against the stand-ins: counts that change, posts edited and
deleted on the platform, the schedule, and the refresh's share of rate-limit windows and quotas."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from slsync import db
from slsync.auth import StaticToken
from slsync.budget import QuotaShare, RateBudgets, ShareSpent, WindowShare
from slsync.config import Settings
from slsync.connectors.base import Context, Looked
from slsync.connectors.reddit import removed
from slsync.connectors.twitter import TwitterConnector
from slsync.models import RateLimit, Source, Stored
from tests.conftest import Cli, add_x_source
from tests.fakes.x_api import XApi

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "twitter"
REDDIT = Path(__file__).parent / "fixtures" / "real" / "reddit"


def _stored(conn: db.Connection, source_id: int) -> dict[str, dict]:
    rows = conn.execute(
        "SELECT external_id, content, likes_count, comments_count, shares_count, author_handle, url, media_urls,"
        " r.raw, status, sentiment, deleted_at, refresh_due_at, refreshed_at, published_at"
        " FROM sl_mentions m LEFT JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id)"
        " WHERE source_id = %s",
        (source_id,),
    ).fetchall()
    return {r["external_id"]: r for r in rows}


def _make_due(conn: db.Connection, source_id: int) -> None:
    """As if the first step of the schedule had come for every scheduled mention of the source."""
    conn.execute(
        "UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second'"
        " WHERE source_id = %s AND refresh_due_at IS NOT NULL",
        (source_id,),
    )


@pytest.fixture
def synced(x_cli: Cli, x_api: XApi, conn: db.Connection) -> int:
    """An X source with 250 posts of the last 42 minutes stored by a sync: each is next due an hour after its
    publication, well after the test's end."""
    x_api.add_posts(250, spacing=timedelta(seconds=10))
    source_id = add_x_source(x_cli)
    x_cli.ok("sync", "source", str(source_id))
    assert len(_stored(conn, source_id)) == 250
    return source_id


def test_counts_change_with_exactly_the_calls_the_batch_size_implies(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    _make_due(conn, synced)
    for post in x_api.posts:
        x_api.set_metrics(post["id"], like_count=1000 + int(post["id"]) % 97, reply_count=7)
    doc = x_cli.ok("refresh", "--json").json()
    assert [len(r.params["ids"].split(",")) for r in x_api.lookups] == [100, 100, 50]
    assert doc["calls"] == 3 and doc["checked"] == 250 and doc["updated"] == 250 and doc["deleted"] == 0
    assert doc["pending"] == 0
    stored = _stored(conn, synced)
    for post in x_api.posts:
        row = stored[post["id"]]
        assert row["likes_count"] == 1000 + int(post["id"]) % 97 and row["comments_count"] == 7
        assert row["refreshed_at"] is not None and row["status"] == "processed"  # counts alone: no new label
    # read again at the next step of the schedule still ahead: an hour after publication
    for row in stored.values():
        assert row["refresh_due_at"] == row["published_at"] + timedelta(hours=1)
    assert x_cli.ok("refresh", "--json").json()["calls"] == 0  # nothing due: no call


def test_a_deleted_post_becomes_a_tombstone_and_an_edited_one_gets_its_text_and_a_new_label(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    _make_due(conn, synced)
    ids = sorted(_stored(conn, synced))
    deleted, protected, edited = ids[0], ids[1], ids[2]
    x_api.delete(deleted)
    x_api.protected.add(protected)
    x_api.edit(edited, "Terrible service from Acme, never again")
    doc = x_cli.ok("refresh", "--json").json()
    assert doc["deleted"] == 2 and doc["edited"] == 1 and doc["checked"] == 250
    assert doc["analysis"]["analyzed"] == 1
    stored = _stored(conn, synced)
    for gone in (deleted, protected):
        row = stored[gone]
        assert row["deleted_at"] is not None and row["refresh_due_at"] is None
        assert (row["content"], row["author_handle"], row["url"], row["media_urls"], row["raw"]) == (None,) * 5
    row = stored[edited]
    assert row["content"] == "Terrible service from Acme, never again"
    assert row["raw"]["text"] == "Terrible service from Acme, never again"  # the payload as it is now
    assert row["status"] == "processed" and row["sentiment"] == "negative"
    # tombstones are left out of what people read unless asked for
    listed = x_cli.ok("mentions", "list", "--limit", "1000", "--json").json()["mentions"]
    assert {m["external_id"] for m in listed} == set(ids) - {deleted, protected}
    everything = x_cli.ok("mentions", "list", "--limit", "1000", "--deleted", "--json").json()["mentions"]
    assert {m["external_id"] for m in everything} == set(ids)
    exported = x_cli.ok("mentions", "export").stdout.splitlines()
    assert len(exported) == 248
    # a later sync that meets the edited post under its new id stores no second mention of it
    x_cli.ok("sync", "source", str(synced))
    assert len(_stored(conn, synced)) == 250
    # status shows what is due and what was read again
    refresh = x_cli.ok("status", str(synced), "--json").json()["refresh"]
    assert (refresh["pending"], refresh["refreshed"], refresh["deleted"]) == (0, 248, 2) and refresh["last_refresh_at"]
    _make_due(conn, synced)
    assert x_cli.ok("status", str(synced), "--json").json()["refresh"]["pending"] == 248
    assert "248 due; 248 read, 2 gone" in x_cli.ok("status").stdout
    # a removed source's mentions stay, off the schedule (nothing could read them again)
    x_cli.ok("source", "remove", str(synced))
    left = conn.execute("SELECT count(*) AS n, count(refresh_due_at) AS due FROM sl_mentions").fetchone()
    assert (left["n"], left["due"]) == (250, 0)


def test_with_deleted_remove_the_post_is_gone_for_good(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    _make_due(conn, synced)
    gone = sorted(_stored(conn, synced))[5]
    x_api.delete(gone)
    doc = x_cli.ok("refresh", "--json", env={"SLSYNC_DELETED": "remove"}).json()
    assert doc["deleted"] == 1
    stored = _stored(conn, synced)
    assert gone not in stored and len(stored) == 249
    assert x_cli.ok("status", str(synced), "--json").json()["stats"]["total_mentions"] == 249


def test_a_window_with_ten_calls_left_gives_the_refresh_two(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    _make_due(conn, synced)
    x_api.lookup_remaining = 10
    doc = x_cli.ok("refresh", "--json").json()
    assert doc["calls"] == 2 and len(x_api.lookups) == 2 and x_api.lookup_remaining == 8
    assert doc["checked"] == 200 and doc["pending"] == 50
    assert doc["sources"][0]["status"] == "share_spent"
    # a share of what is left, each time: 8 left now, 20% of 8 is one call
    assert x_cli.ok("refresh", "--json").json()["calls"] == 1


def test_sync_due_syncs_first_and_refreshes_with_what_is_left_of_the_window(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    # a second tenant's source that is due to sync but is not claimed by this run (--limit 1): its posts are
    # left alone, so that the refresh never holds the lock of a source waiting for its sync
    other = x_cli.ok(
        "source", "add", "twitter", "--tenant", "2", "--name", "other", "--keyword", "acme", "--json"
    ).json()["id"]
    x_cli.ok("sync", "source", str(other))
    _make_due(conn, synced)
    _make_due(conn, other)
    conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 minute', last_sync_at = now() - interval"
                 " '1 hour' WHERE id = %s", (synced,))  # fmt: skip
    conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 minute' WHERE id = %s", (other,))
    x_api.add_posts(5, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))
    x_api.lookup_remaining = 10
    searches_before = len(x_api.searches)
    doc = x_cli.ok("sync", "due", "--limit", "1", "--json").json()
    assert [r["source_id"] for r in doc["results"]] == [synced] and doc["total_mentions_saved"] == 5
    refresh = doc["refresh"]
    assert refresh["calls"] == 2 and refresh["checked"] == 200
    assert [s["source_id"] for s in refresh["sources"]] == [synced]
    # every search of the run came before its first lookup
    paths = [r.path for r in x_api.requests]
    assert len(x_api.searches) > searches_before
    assert max(i for i, p in enumerate(paths) if p.endswith("/search/recent")) < paths.index("/2/tweets")
    pending = db.refresh_pending(conn, [synced, other])
    assert pending == {synced: 50, other: 250}
    # the new posts are scheduled, not due yet
    new = conn.execute(
        "SELECT count(*) AS n FROM sl_mentions WHERE source_id = %s AND refresh_due_at > now()", (synced,)
    ).fetchone()["n"]
    assert new >= 5


def test_the_refresh_in_sync_due_can_be_turned_off(x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int) -> None:
    _make_due(conn, synced)
    conn.execute("UPDATE sl_sources SET next_sync_at = now()")
    doc = x_cli.ok("sync", "due", "--json", env={"SLSYNC_REFRESH_SHARE": "0"}).json()
    assert doc["refresh"] is None and not x_api.lookups


# --- the share of windows and quotas ----------------------------------------------------------------


def _calls(share: WindowShare, key: str, most: int = 100) -> int:
    made = 0
    with pytest.raises(ShareSpent):
        for _ in range(most):
            with share.call(key, "X"):
                made += 1
    return made


def test_a_window_counted_in_calls_gives_a_share_of_what_is_left() -> None:
    now = datetime.now(UTC)
    budgets = RateBudgets(lambda: now)
    budgets.record("x", RateLimit(remaining=10, reset_at=now + timedelta(minutes=5)))
    assert _calls(WindowShare(budgets, 0.2, lambda: now), "x") == 2
    # known only from before the command (the source's last sync): the same share of it
    prior = WindowShare(RateBudgets(lambda: now), 0.2, lambda: now)
    prior.learn("x", RateLimit(remaining=25, reset_at=now + timedelta(minutes=5)))
    assert _calls(prior, "x") == 5
    # a stale prior (its window has reset) is no knowledge: the first call learns the window
    stale = WindowShare(RateBudgets(lambda: now), 0.2, lambda: now)
    stale.learn("x", RateLimit(remaining=1, reset_at=now - timedelta(minutes=1)))
    with stale.call("x", "X"):
        stale.record("x", RateLimit(remaining=9, reset_at=now + timedelta(minutes=5)))
    assert _calls(stale, "x") == 1  # 20% of the 10 there were: 2 calls, one made already
    # few calls left: none for the refresh
    budgets.record("y", RateLimit(remaining=4, reset_at=now + timedelta(minutes=5)))
    assert _calls(WindowShare(budgets, 0.2, lambda: now), "y") == 0


def test_a_new_window_brings_a_new_share_and_usage_windows_are_measured_by_usage() -> None:
    clock = [datetime.now(UTC)]
    budgets = RateBudgets(lambda: clock[0])
    budgets.record("x", RateLimit(remaining=10, reset_at=clock[0] + timedelta(minutes=5)))
    share = WindowShare(budgets, 0.2, lambda: clock[0])
    assert _calls(share, "x") == 2
    clock[0] += timedelta(minutes=6)  # the window reset
    budgets.record("x", RateLimit(remaining=100, reset_at=clock[0] + timedelta(minutes=15)))
    assert _calls(share, "x") == 20
    # Meta's usage: percentages with no reset time; the share ends when usage rose by 20% of what was left
    meta = WindowShare(RateBudgets(lambda: clock[0]), 0.2, lambda: clock[0])
    used = 0
    with pytest.raises(ShareSpent):
        for remaining in (50, 48, 45, 42, 40, 39):
            with meta.call("meta", "Facebook"):
                meta.record("meta", RateLimit(limit=100, remaining=remaining))
                used += 1
    assert used == 5  # stopped before the call after the one that brought remaining to 40
    # a window never reported (LinkedIn): a share of an assumed 100 calls
    assert _calls(WindowShare(RateBudgets(lambda: clock[0]), 0.2, lambda: clock[0]), "linkedin") == 20


class _Ledger:
    def __init__(self, left: int) -> None:
        self.left = left

    def spend(self, key: str, units: int, daily_limit: int, day: object) -> int | None:
        if units > self.left:
            return None
        self.left -= units
        return self.left

    def exhaust(self, key: str, daily_limit: int, day: object) -> None:
        self.left = 0

    def use_unique(self, *args: object) -> int | None:
        return None


def test_a_quota_share_takes_a_share_of_the_units_left_and_says_when_it_refused() -> None:
    day = datetime.now(UTC).date()
    ledger = _Ledger(10)
    share = QuotaShare(ledger, 0.2)
    assert share.spend("yt", 1, 10_000, day) == 9 and share.spend("yt", 1, 10_000, day) == 8
    assert share.spend("yt", 1, 10_000, day) is None and share.refused and ledger.left == 8
    # units given back make room again
    assert share.spend("yt", -1, 10_000, day) == 9
    assert share.spend("yt", 1, 10_000, day) == 8
    # a spend larger than the share at first sight is given back at once
    small = _Ledger(50)
    assert QuotaShare(small, 0.2).spend("tt", 100, 1000, day) is None and small.left == 50
    # the quota itself spent: None, and not the share's doing
    empty = QuotaShare(_Ledger(0), 0.2)
    assert empty.spend("yt", 1, 10_000, day) is None and not empty.refused


# --- what the lookups make of real answers ------------------------------------------------------------


def _x_looking_up(body: dict, ids: list[str]) -> Looked:
    settings = Settings(_env_file=None, SLSYNC_TWITTER_API_URL="https://api.x.test/2", TWITTER_BEARER_TOKEN="t")
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    source = Source(1, 1, "twitter", "s", "app", {"keywords": ["acme"]}, "active", None, 15, None,
                    datetime.now(UTC), None, None, None, None, None, 0, 0, datetime.now(UTC))  # fmt: skip
    context = Context(
        now=lambda: datetime.now(UTC), settings=settings, http=httpx.Client(transport=transport),
        credentials=lambda: StaticToken(SecretStr("t"), "twitter"),
    )  # fmt: skip
    posts = [Stored(n, i, datetime.now(UTC)) for n, i in enumerate(ids)]
    return TwitterConnector(source, context).lookup("posts", posts)


def test_an_error_about_a_referenced_post_does_not_make_the_post_gone() -> None:
    """A recorded lookup answer: the reply is there, the post it replies to is not found (errors[0] names
    referenced_tweets.id): the reply is found, nothing is gone."""
    body = json.loads((FIXTURES / "tweets_lookup_russian_reply_deleted_parent.json").read_text(encoding="utf-8"))
    reply = body["data"][0]["id"]
    looked = _x_looking_up(body, [reply, "506694458445152256"])
    assert [m.external_id for m in looked.found] == [reply] and looked.found[0].content == body["data"][0]["text"]
    assert looked.gone == [] and looked.unknown == []  # the parent was not asked about: nothing said of it


def test_posts_named_in_errors_are_gone_or_unknown_by_the_problem() -> None:
    body = json.loads((FIXTURES / "tweets_lookup_withheld_tweet.json").read_text(encoding="utf-8"))
    withheld = body["data"][0]["id"]
    problems = {"1": "resource-not-found", "2": "not-authorized-for-resource", "3": "resource-unavailable",
                "4": "client-forbidden"}  # fmt: skip
    body["errors"] = [
        {"value": i, "resource_id": i, "parameter": "ids", "resource_type": "tweet", "title": "x",
         "type": f"https://api.twitter.com/2/problems/{problem}"}
        for i, problem in problems.items()
    ]  # fmt: skip
    looked = _x_looking_up(body, [withheld, *problems])
    assert [m.external_id for m in looked.found] == [withheld]  # withheld in one country: still there
    assert sorted(looked.gone) == ["1", "2", "3"] and looked.unknown == ["4"]


def test_an_edited_post_answered_under_its_latest_id_is_the_stored_one() -> None:
    body = json.loads((FIXTURES / "tweets_lookup_quote_edited.json").read_text(encoding="utf-8"))
    post = body["data"][0]
    post["edit_history_tweet_ids"] = ["1576995594388000700", post["id"]]
    looked = _x_looking_up(body, ["1576995594388000700"])
    assert [m.external_id for m in looked.found] == ["1576995594388000700"]
    assert looked.found[0].content == post["text"]


def test_reddit_keeps_listing_what_was_deleted_or_removed() -> None:
    body = json.loads((REDDIT / "r_askreddit_comments_listing.json").read_text(encoding="utf-8"))
    children = body["data"]["children"]
    children[0]["data"]["body"] = "[deleted]"
    children[1]["data"]["body"] = "[removed]"
    children[2]["data"]["author"] = "[deleted]"  # the account is gone, the comment stays
    assert [removed(c) for c in children[:4]] == [True, True, False, False]
    posts = json.loads((REDDIT / "r_all_search_listing.json").read_text(encoding="utf-8"))["data"]["children"]
    posts[0]["data"]["removed_by_category"] = "moderator"
    assert removed(posts[0]) and not any(removed(p) for p in posts[1:])


def test_a_daily_quota_with_ten_units_left_gives_the_refresh_two(cli: Cli, conn: db.Connection) -> None:
    """YouTube: a lookup costs 1 unit of the API key's daily quota, through the shared ledger; with 10 units
    left, 20% of them is 2 lookups."""
    from tests.fakes.youtube_api import API_KEY, YouTubeApi

    api = YouTubeApi().start()
    try:
        cli.env.update({"SLSYNC_YOUTUBE_API_URL": api.url, "YOUTUBE_API_KEY": API_KEY})
        api.add_videos(120, newest=datetime.now(UTC) - timedelta(minutes=1), spacing=timedelta(seconds=10))
        source = cli.ok("source", "add", "youtube", "--tenant", "1", "--name", "yt", "--keyword", "acme",
                        "--json").json()["id"]  # fmt: skip
        cli.ok("sync", "source", str(source))
        _make_due(conn, source)
        conn.execute("UPDATE sl_quota_ledger SET units_used = daily_limit - 10")
        doc = cli.ok("refresh", "--json").json()
        assert doc["calls"] == 2 and len(api.lookups) == 2 and doc["checked"] == 100 and doc["pending"] == 20
        assert doc["sources"][0]["status"] == "share_spent"
        left = conn.execute("SELECT daily_limit - units_used AS left FROM sl_quota_ledger").fetchone()["left"]
        assert left == 8  # the two lookups' units, and no more
    finally:
        api.stop()


def test_where_syncs_and_lookups_share_one_window_the_syncs_take_theirs_first(cli: Cli, conn: db.Connection) -> None:
    """Reddit counts search and /api/info in one window per app. With 11 calls left, `sync due` syncs first
    (one search call), then the refresh takes 20% of the 10 left: 2 calls, leaving 8 for the next syncs."""
    from tests.fakes.reddit_api import RedditApi

    api = RedditApi().start()
    try:
        cli.env.update(api.env())
        api.add_posts(250, newest=datetime.now(UTC) - timedelta(minutes=1), spacing=timedelta(seconds=10))
        source = cli.ok("source", "add", "reddit", "--tenant", "1", "--name", "r", "--keyword", "acme",
                        "--json").json()["id"]  # fmt: skip
        cli.ok("sync", "source", str(source))
        _make_due(conn, source)
        conn.execute("UPDATE sl_sources SET next_sync_at = now()")
        api.remaining = 11.0
        before = len(api.requests)
        doc = cli.ok("sync", "due", "--json").json()
        refresh = doc["refresh"]
        assert doc["sources_synced"] == 1 and refresh["calls"] == 2 and refresh["checked"] == 200
        assert refresh["pending"] == 50 and refresh["sources"][0]["status"] == "share_spent"
        paths = [r.path for r in api.requests[before:] if r.method == "GET"]
        assert paths.count("/search") == 1 and paths.index("/search") < paths.index("/api/info")
        assert api.remaining == 8.0
    finally:
        api.stop()


def test_refresh_all_reads_every_stored_mention_and_refuses_what_it_cannot(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    assert x_cli.ok("refresh", "--json").json()["checked"] == 0  # nothing due yet
    x_api.delete(sorted(_stored(conn, synced))[0])
    doc = x_cli.ok("refresh", "--all", "--source", str(synced), "--json").json()
    assert doc["checked"] == 250 and doc["calls"] == 3 and doc["deleted"] == 1
    # a tombstone is not asked about again
    assert x_cli.ok("refresh", "--all", "--json").json()["checked"] == 249
    mock = x_cli.ok("source", "add", "mock", "--tenant", "1", "--name", "m", "--keyword", "a", "--json").json()["id"]
    for args, env, expected in (
        (["--source", str(mock)], {}, "mock posts cannot be read again"),
        (["--source", "999"], {}, "no source with id 999"),
        (["--source", str(synced), "--tenant", "7"], {}, f"no source with id {synced} in tenant 7"),
        ([], {"SLSYNC_REFRESH_SHARE": "0"}, "SLSYNC_REFRESH_SHARE is 0"),
        ([], {"SLSYNC_REFRESH_SCHEDULE": "6,1"}, "SLSYNC_REFRESH_SCHEDULE"),
    ):
        refused = x_cli("refresh", *args, env=env)
        assert refused.returncode == 2 and expected in refused.stderr and "Traceback" not in refused.stderr, args


def test_a_refresh_that_fails_says_so_and_keeps_the_posts_due(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    _make_due(conn, synced)
    x_api.tokens.clear()  # the app token is refused from now on
    result = x_cli("refresh")
    assert result.returncode == 1 and "FAILED" in result.stdout and "Traceback" not in result.stderr
    assert "TWITTER_BEARER_TOKEN" in result.stdout  # the advice of the platform's connector
    assert db.refresh_pending(conn, [synced]) == {synced: 250}
    # sync due reports it, and its own exit code is still the syncs'
    conn.execute("UPDATE sl_sources SET next_sync_at = now() + interval '1 hour'")
    due = x_cli("sync", "due")
    assert due.returncode == 0 and f"refresh of source {synced}: FAILED" in due.stdout


@pytest.mark.parametrize("command", [("refresh",), ("sync", "due")])
def test_a_token_store_that_cannot_be_used_ends_the_refresh_like_a_sync_and_charges_no_source(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int, tmp_path: Path, command: tuple[str, ...]
) -> None:
    # the source now reads with a user's token from a damaged token file, its posts are due and it is not
    # due to sync itself: the refresh pass is the one that meets the token store
    conn.execute(
        "UPDATE sl_sources SET connection_type = 'user', status = 'connected',"
        " next_sync_at = now() + interval '1 hour' WHERE id = %s",
        (synced,),
    )
    _make_due(conn, synced)
    path = tmp_path / "data" / "tokens.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("garbage{")
    before = conn.execute(
        "SELECT status, next_sync_at, consecutive_failures FROM sl_sources WHERE id = %s", (synced,)
    ).fetchone()
    result = x_cli(*command, env={"SLSYNC_TOKEN_STORE": "file"})
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("slsync: error: ") and str(path) in line and "is damaged" in line
    assert not x_api.lookups
    assert db.refresh_pending(conn, [synced]) == {synced: 250}  # still due, for the run after the repair
    after = conn.execute(
        "SELECT status, next_sync_at, consecutive_failures FROM sl_sources WHERE id = %s", (synced,)
    ).fetchone()
    assert after == before


def test_status_shows_a_refresh_column_once_a_listed_source_has_posts_due_or_read_again(
    x_cli: Cli, x_api: XApi, conn: db.Connection, synced: int
) -> None:
    header = x_cli.ok("status").stdout.splitlines()[1]
    assert "refresh" not in header and "error" in header  # nothing due or read again yet: no column of dashes
    _make_due(conn, synced)
    assert "250 due" in x_cli.ok("status").stdout
    x_cli.ok("refresh")
    shown = x_cli.ok("status").stdout
    assert "refresh" in shown.splitlines()[1] and "250 read, 0 gone" in shown
