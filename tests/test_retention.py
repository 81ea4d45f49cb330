"""Retention (`slsync prune`, and `sync due`'s bounded piece of it) and erasure (`slsync mentions forget`)
through the real CLI against the embedded PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from slsync import db, retention, sync
from slsync.config import Settings
from slsync.models import Mention
from tests.conftest import Cli, add_mock_source


def _fill(conn: db.Connection, source_id: int, count: int, *, days_ago: float, fetched_days_ago: float = 0) -> None:
    """`count` mentions of the source published `days_ago`, fetched `fetched_days_ago`, with raw payloads."""
    conn.execute(
        "WITH stored AS (INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, content,"
        " author_handle, published_at, fetched_at)"
        " SELECT s.tenant_id, s.id, s.platform, 'old-' || %(tag)s || '-' || n, 'post ' || n, 'someone',"
        " now() - make_interval(secs => %(days)s * 86400 + n), now() - make_interval(secs => %(fetched)s * 86400)"
        " FROM sl_sources s, generate_series(1, %(count)s) AS n WHERE s.id = %(source)s"
        " RETURNING id, tenant_id, external_id)"
        " INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)"
        " SELECT id, tenant_id, jsonb_build_object('n', external_id) FROM stored",
        {"tag": f"{days_ago}-{fetched_days_ago}", "days": days_ago, "fetched": fetched_days_ago, "count": count,
         "source": source_id},
    )  # fmt: skip
    conn.execute(
        "UPDATE sl_sources SET mentions_count = (SELECT count(*) FROM sl_mentions WHERE source_id = %s) WHERE id = %s",
        (source_id, source_id),
    )


NO_RAW = "NOT EXISTS (SELECT FROM sl_mention_raw r WHERE (r.mention_id, r.tenant_id) = (sl_mentions.id, tenant_id))"


def _count(conn: db.Connection, where: str = "true") -> int:
    return conn.execute(f"SELECT count(*) AS n FROM sl_mentions WHERE {where}").fetchone()["n"]


def test_prune_deletes_what_is_past_retention_in_batches_and_keeps_the_rest(cli: Cli, conn: db.Connection) -> None:
    source_id = add_mock_source(conn)
    _fill(conn, source_id, 12_000, days_ago=100)
    _fill(conn, source_id, 300, days_ago=5, fetched_days_ago=40)
    _fill(conn, source_id, 200, days_ago=1)
    doc = cli.ok("prune", "--json", env={"SLSYNC_RETENTION_DAYS": "30", "SLSYNC_RAW_RETENTION_DAYS": "30"}).json()
    # 5,000 + 5,000 + 2,000 mentions and an empty batch (rows another transaction held are skipped, so only an
    # empty batch says none is left), then 300 payloads in one batch that ends where the younger ones begin
    assert doc == {"mentions_deleted": 12_000, "raw_dropped": 300, "batches": 5, "done": True}
    assert _count(conn) == 500 and _count(conn, "published_at < now() - interval '30 days'") == 0
    # raw payloads of the mentions fetched 40 days ago are dropped, their normalized columns kept
    assert _count(conn, NO_RAW) == 300 and _count(conn, f"{NO_RAW} AND content IS NULL") == 0
    assert db.get_source(conn, source_id).mentions_count == 500
    # nothing left to do: a second run deletes nothing
    again = cli.ok("prune", env={"SLSYNC_RETENTION_DAYS": "30", "SLSYNC_RAW_RETENTION_DAYS": "30"})
    assert again.stdout.strip() == "retention: 0 old mentions deleted, 0 raw payloads dropped"


def test_prune_without_a_retention_setting_is_a_usage_error(cli: Cli) -> None:
    result = cli("prune")
    assert result.returncode == 2 and "SLSYNC_RETENTION_DAYS" in result.stderr and "Traceback" not in result.stderr
    bad = cli("prune", env={"SLSYNC_RETENTION_DAYS": "0"})
    assert bad.returncode == 2 and "SLSYNC_RETENTION_DAYS" in bad.stderr


def test_sync_due_does_a_bounded_piece_of_retention_after_its_syncs(
    settings: Settings, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_id = add_mock_source(conn)
    _fill(conn, source_id, 1_000, days_ago=100)
    monkeypatch.setattr(retention, "BATCH", 100)
    monkeypatch.setattr(retention, "SYNC_DUE_BATCHES", 3)
    kept = Settings(database_url=settings.database_url, data_dir=settings.data_dir, retention_days=30, _env_file=None)
    batch = sync.sync_due(kept, limit=10, concurrency=1)
    assert batch.results[0].success and batch.results[0].mentions_saved > 0
    assert batch.retention == {"mentions_deleted": 300, "raw_dropped": 0, "batches": 3, "done": False}
    assert _count(conn, "published_at < now() - interval '30 days'") == 700
    assert sync.sync_due(settings, limit=10, concurrency=1).retention is None  # no retention set: nothing runs


def test_retention_deletes_in_short_statements_while_syncs_go_on(
    settings: Settings, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small version of benchmarks/retention.py: old mentions deleted in batches while `sync due` keeps saving
    pages of new ones, and no transaction holds a lock on sl_mentions for a second (sampled in pg_locks)."""
    monkeypatch.setattr(retention, "BATCH", 2_000)
    old_source = add_mock_source(conn, name="old")
    _fill(conn, old_source, 30_000, days_ago=400)
    for n in range(3):
        add_mock_source(conn, tenant_id=2, name=f"live{n}")
    longest, samples, stop = [0.0], [0], threading.Event()

    def sample() -> None:
        with db.connect(settings) as watcher:
            while not stop.is_set():
                row = watcher.execute(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - a.xact_start)), 0) AS held"
                    " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.relation = 'sl_mentions'::regclass AND l.granted AND a.pid <> pg_backend_pid()"
                ).fetchone()
                longest[0] = max(longest[0], float(row["held"]))
                samples[0] += 1
                time.sleep(0.01)

    synced: list[int] = []

    def syncing() -> None:
        while not stop.is_set():
            conn2 = db.connect(settings)
            with conn2:
                conn2.execute("UPDATE sl_sources SET next_sync_at = now(), committed_cursor = NULL WHERE tenant_id = 2")
                conn2.execute("DELETE FROM sl_mentions WHERE tenant_id = 2")
            batch = sync.sync_due(settings, limit=10, concurrency=2)
            synced.append(sum(r.mentions_saved for r in batch.results))

    threads = [threading.Thread(target=sample), threading.Thread(target=syncing)]
    for thread in threads:
        thread.start()
    try:
        kept = Settings(database_url=settings.database_url, data_dir=settings.data_dir, retention_days=30,
                        _env_file=None)  # fmt: skip
        with db.connect(settings) as own:
            result = retention.prune(own, kept)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    # 15 full batches and an empty one, and more when a batch skipped rows an analyzer held
    assert result.mentions_deleted == 30_000 and result.batches >= 16 and result.done
    assert _count(conn, "published_at < now() - interval '30 days'") == 0
    assert synced and all(n > 0 for n in synced)  # the syncs kept saving throughout
    assert samples[0] > 10 and longest[0] < 1.0, f"a transaction held sl_mentions for {longest[0]:.2f} s"


def test_old_mentions_another_transaction_holds_are_waited_for_then_left_for_a_later_run(
    settings: Settings, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch skips the rows an analyzer holds: an empty batch with old mentions left is not the end."""
    monkeypatch.setattr(retention, "HELD_PAUSE", 0.01)
    monkeypatch.setattr(retention, "HELD_TRIES", 3)
    _fill(conn, add_mock_source(conn), 50, days_ago=100)
    kept = Settings(database_url=settings.database_url, data_dir=settings.data_dir, retention_days=30,
                    _env_file=None)  # fmt: skip
    with db.connect(settings) as holder, holder.transaction():
        holder.execute("SELECT id FROM sl_mentions ORDER BY id LIMIT 20 FOR UPDATE")
        held = retention.prune(conn, kept)
    assert (held.mentions_deleted, held.done, held.batches) == (30, False, 5)  # 30, then 4 empty batches
    assert _count(conn) == 20
    assert retention.prune(conn, kept) == retention.Pruned(mentions_deleted=20, batches=2, done=True)
    assert _count(conn) == 0


# --- erasure --------------------------------------------------------------------------------------


def _author_posts(conn: db.Connection, tenant_id: int, platform: str, handles: dict[str, int]) -> int:
    source_id = db.add_source(
        conn, tenant_id=tenant_id, platform=platform, name=f"{platform}-{tenant_id}", connection_type="app",
        config={"keywords": ["acme"]}, interval_minutes=15,
    )  # fmt: skip
    source = db.get_source(conn, source_id)
    now = datetime.now(UTC)
    mentions = [
        Mention(platform, f"{platform}-{tenant_id}-{handle}-{n}", now - timedelta(minutes=n), content=f"post {n}",
                author_handle=handle, author_name="A Name", raw={"text": f"post {n} by {handle}"})
        for handle, count in handles.items()
        for n in range(count)
    ]  # fmt: skip
    db.insert_mentions(conn, source, mentions)
    return source_id


def test_forget_erases_one_author_in_one_tenant_on_one_platform_and_records_it(cli: Cli, conn: db.Connection) -> None:
    one = _author_posts(conn, 1, "twitter", {"Alice_Smith": 3, "bob": 2})
    _author_posts(conn, 2, "twitter", {"alice_smith": 4})
    _author_posts(conn, 1, "reddit", {"alice_smith": 5})
    doc = cli.ok("mentions", "forget", "--platform", "twitter", "--author", "@ALICE_smith", "--tenant", "1",
                 "--json").json()  # fmt: skip
    assert doc["deleted"] == 3 and doc["by_tenant"] == [{"tenant_id": 1, "deleted": 3}]
    assert sorted(m["external_id"] for m in doc["mentions"]) == [f"twitter-1-Alice_Smith-{n}" for n in range(3)]
    # the other tenant, the other platform and the other author keep theirs
    assert _count(conn, "platform = 'twitter' AND tenant_id = 2") == 4
    assert _count(conn, "platform = 'reddit'") == 5 and _count(conn, "author_handle = 'bob'") == 2
    assert db.get_source(conn, one).mentions_count == 2
    [audit] = conn.execute("SELECT * FROM sl_erasures").fetchall()
    assert audit["id"] == doc["erasure_id"] and audit["platform"] == "twitter" and audit["tenant_id"] == 1
    assert audit["mentions_deleted"] == 3 and "@" in audit["requested_by"]
    assert audit["author_digest"] == hashlib.sha256(b"twitter:alice_smith").hexdigest()
    # never the content, never the handle
    assert not any("alice" in str(v).lower() or "post" in str(v) for v in audit.values())


def test_forget_in_every_tenant_prints_what_it_deleted(cli: Cli, conn: db.Connection) -> None:
    _author_posts(conn, 1, "twitter", {"alice": 1})
    _author_posts(conn, 2, "twitter", {"alice": 2})
    result = cli.ok("mentions", "forget", "--platform", "twitter", "--author", "alice")
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("deleted: tenant ")]) == 3
    assert lines[-1] == "deleted 3 mentions by alice on twitter (tenant 1: 1, tenant 2: 2); recorded as erasure 1"
    assert _count(conn, "author_handle = 'alice'") == 0
    [audit] = conn.execute("SELECT tenant_id, mentions_deleted FROM sl_erasures").fetchall()
    assert audit == {"tenant_id": None, "mentions_deleted": 3}
    # a request that finds nothing is recorded too
    nothing = cli.ok("mentions", "forget", "--platform", "twitter", "--author", "alice", "--json").json()
    assert nothing["deleted"] == 0 and nothing["erasure_id"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--platform", "myspace", "--author", "x"], "unknown platform"),
        (["--platform", "twitter", "--author", " @ "], "--author needs a handle"),
        (["--platform", "twitter"], "--author"),
    ],
)
def test_forget_refuses_bad_input_in_one_line(cli: Cli, args: list[str], expected: str) -> None:
    result = cli("mentions", "forget", *args)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
