"""Reading stored posts again, through the real CLI against the stand-ins: counts that change, posts edited and
deleted on the platform, the schedule, and the refresh's share of rate-limit windows and quotas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from slsync import db
from tests.conftest import Cli, add_x_source, db_now
from tests.fakes.x_api import XApi


def _stored(conn: db.Connection, source_id: int) -> dict[str, dict]:
    rows = conn.execute(
        "SELECT external_id, content, likes_count, comments_count, shares_count, author_handle, url, media_urls,"
        " raw, status, sentiment, deleted_at, refresh_due_at, refreshed_at, published_at"
        " FROM sl_mentions WHERE source_id = %s",
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
    """An X source with 250 posts stored by a sync."""
    x_api.add_posts(250, spacing=timedelta(seconds=20))
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
    # read again at the next step of the schedule still ahead (1 h after publication, or 6 h for those older)
    now = db_now(conn)
    for row in stored.values():
        steps = [row["published_at"] + timedelta(hours=h) for h in (1, 6, 24, 72)]
        assert row["refresh_due_at"] == min(step for step in steps if step > now)
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
