"""Many sources and mentions: the raw payloads' own table and their move, claims released by id, `status`
as a stream, a page or a summary, mentions read along an index. The big dataset lives in
benchmarks/scale.py; these tests check behaviour on small ones."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from slsync import db
from tests.conftest import Cli, _with_db, add_mock_source

RELEASE_BEFORE = 5  # the last migration of the release that stored raw payloads in sl_mentions (0.1.0)
MENTION_RAW = 9  # the migration that creates sl_mention_raw


@pytest.fixture
def old_database(admin_url: str) -> Iterator[str]:
    """A database as the release before left it: migrations up to RELEASE_BEFORE, nothing after."""
    admin = admin_url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS old_schema WITH (FORCE)")
        c.execute("CREATE DATABASE old_schema")
    url = _with_db(admin, "old_schema")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE sl_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, name, sql in db.migration_files():
            if version <= RELEASE_BEFORE:
                conn.execute(sql)
                conn.execute("INSERT INTO sl_schema_migrations VALUES (%s, %s)", (version, name))
    yield url
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute("DROP DATABASE old_schema WITH (FORCE)")


def old_mentions(conn: Any, first: int, last: int) -> None:
    """Mentions written by the release before: the payload in sl_mentions.raw, sometimes none (NULL), some
    empty, some with text PostgreSQL must keep exactly."""
    conn.execute(
        "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, content, published_at, raw)"
        " SELECT CASE WHEN n %% 5 = 0 THEN 2 ELSE 1 END, CASE WHEN n %% 5 = 0 THEN NULL ELSE 1 END,"
        " 'mock', 'p' || n, 'post ' || n, now() - make_interval(secs => n),"
        " CASE WHEN n %% 97 = 0 THEN NULL WHEN n %% 89 = 0 THEN '{}'::jsonb"
        " ELSE jsonb_build_object('id', n, 'text', 'ünï 😀 \"q\" ' || repeat('x', n %% 50),"
        " 'nested', jsonb_build_object('list', jsonb_build_array(1, NULL, n::text), 'n', n / 7.0)) END"
        " FROM generate_series(%s::int, %s::int) AS n",
        (first, last),
    )


CHECKSUM = "sum(('x' || left(md5({id}::text || ':' || tenant_id::text || ':' || raw::text), 15))::bit(60)::bigint)"


def payloads(conn: Any, where: str) -> dict[str, int]:
    """How many mentions and raw payloads there are, and a checksum of every (mention id, tenant, payload): in
    sl_mentions.raw (`column`, before the move) or in sl_mention_raw (`table`, after it)."""
    source = (
        f"SELECT count(raw) AS n, {CHECKSUM.format(id='id')} AS s FROM sl_mentions"
        if where == "column"
        else f"SELECT count(*) AS n, {CHECKSUM.format(id='mention_id')} AS s FROM sl_mention_raw"
    )
    row = conn.execute(
        f"SELECT (SELECT count(*) FROM sl_mentions) AS mentions, n AS payloads, s AS checksum FROM ({source}) AS p"
    ).fetchone()
    return {k: int(v or 0) for k, v in row.items()}


def test_moving_raw_payloads_loses_nothing_and_resumes_where_it_stopped(old_database: str) -> None:
    with psycopg.connect(old_database, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("INSERT INTO sl_sources (tenant_id, platform, name) VALUES (1, 'mock', 'old')")
        old_mentions(conn, 1, 25_000)  # more than two batches of the move
        # The upgrade's first transaction (up to sl_mention_raw's creation); then a move interrupted after its
        # first batch; then a process of the release before, still running, stores more mentions with their
        # payload in the old column.
        for version, name, sql in db.migration_files():
            if RELEASE_BEFORE < version <= MENTION_RAW:
                conn.execute(sql)
                conn.execute("INSERT INTO sl_schema_migrations VALUES (%s, %s)", (version, name))
        conn.execute(
            "INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)"
            " SELECT id, tenant_id, raw FROM sl_mentions WHERE id <= 10000 AND raw IS NOT NULL"
        )
        conn.execute("UPDATE sl_raw_move SET moved_upto = 10000")
        old_mentions(conn, 25_001, 25_300)
        before = payloads(conn, "column")
        assert before["mentions"] == 25_300 and 25_000 < before["payloads"] < 25_300

        applied = db.migrate(conn)

        assert "013_move_raw_payloads.sql" in applied
        assert payloads(conn, "table") == before
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sl_mentions'"
        ).fetchall()
        assert "raw" not in {c["column_name"] for c in columns}
        assert conn.execute("SELECT to_regclass('sl_raw_move') AS t").fetchone()["t"] is None
        assert db.migrate(conn) == []
        # a payload goes with its mention
        conn.execute("DELETE FROM sl_mentions WHERE id <= 10 OR id = 25300")
        left = conn.execute("SELECT min(mention_id) AS low, max(mention_id) AS high FROM sl_mention_raw").fetchone()
        assert left == {"low": 11, "high": 25299}
        conn.execute("TRUNCATE sl_mentions")
        assert conn.execute("SELECT count(*) AS n FROM sl_mention_raw").fetchone()["n"] == 0


def test_an_online_migration_running_elsewhere_lets_a_command_go_on_and_an_invalid_index_is_rebuilt(conn) -> None:
    online = [(v, name) for v, name, sql in db.migration_files() if sql.startswith(db.ONLINE)]
    assert online and all(v > RELEASE_BEFORE for v, _ in online)
    # as if the upgrade's online files had not run yet, and the index build had been killed half-way
    conn.execute("DELETE FROM sl_schema_migrations WHERE version = ANY(%s)", ([v for v, _ in online],))
    conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'sl_mentions_published_idx'::regclass")
    with psycopg.connect(str(conn.info.dsn), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, -1)", (db.LOCK_NAMESPACE,))  # another process applies them
        assert db.migrate(conn) == []  # only online files are left: go on without them
    assert db.migrate(conn) == [name for _, name in online]
    valid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'sl_mentions_published_idx'::regclass"
    ).fetchone()
    assert valid == {"indisvalid": True}


def test_claims_are_released_by_id_and_only_this_sessions(conn, settings) -> None:
    ids = [add_mock_source(conn, name=f"s{n}") for n in range(4)]
    with db.connect(settings) as other:
        theirs = db.claim_due(other, 1)
        mine = db.claim_due(conn, 2)
        assert len(theirs) == 1 and len(mine) == 2 and not set(theirs) & set(mine)
        db.release_claims(conn, [*mine, *theirs])  # another session's claim is not this one's to release
        claimed = conn.execute("SELECT id FROM sl_sources WHERE claimed_by IS NOT NULL ORDER BY id").fetchall()
        assert [r["id"] for r in claimed] == theirs
        assert sorted(db.claim_due(conn, 10)) == sorted(set(ids) - set(theirs))


def test_a_post_twice_in_one_write_keeps_the_first_payload_once(conn) -> None:
    from datetime import UTC, datetime

    from slsync.models import Mention, Page

    source = db.get_source(conn, add_mock_source(conn))
    run_id = db.begin_run(conn, source, "manual")
    when = datetime(2026, 3, 1, tzinfo=UTC)
    first = Mention(platform="mock", external_id="twin", published_at=when, raw={"seen": 1})
    again = Mention(platform="mock", external_id="twin", published_at=when, raw={"seen": 2})
    other = Mention(platform="mock", external_id="other", published_at=when, raw={"seen": 3})
    assert db.save_page(conn, source, run_id, Page(mentions=(first, again, other), cursor={})) == 2
    stored = conn.execute(
        "SELECT external_id, raw FROM sl_mentions m"
        " JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id) ORDER BY id"
    ).fetchall()
    assert stored == [{"external_id": "twin", "raw": {"seen": 1}}, {"external_id": "other", "raw": {"seen": 3}}]
    counted = conn.execute("SELECT fetched, saved, duplicates FROM sl_sync_runs WHERE id = %s", (run_id,)).fetchone()
    assert counted == {"fetched": 3, "saved": 2, "duplicates": 1}


def many_sources(conn: Any, count: int, *, tenant_id: int = 1, first: int = 0) -> None:
    """`count` sources in SQL (faster than `source add`), one in ten failing, one in fifty in error."""
    conn.execute(
        "INSERT INTO sl_sources (tenant_id, platform, name, status, error_message, consecutive_failures)"
        " SELECT %s, CASE WHEN n %% 2 = 0 THEN 'mock' ELSE 'twitter' END, 'brand ' || n,"
        " CASE WHEN n %% 50 = 0 THEN 'error' WHEN n %% 10 = 0 THEN 'failing' ELSE 'active' END,"
        " CASE WHEN n %% 10 = 0 THEN 'HTTP 503 from the API' END, CASE WHEN n %% 10 = 0 THEN n %% 7 ELSE 0 END"
        " FROM generate_series(%s::int, %s::int) AS n",
        (tenant_id, first + 1, first + count),
    )


def test_status_json_pages_through_every_source_with_limit_and_offset(cli: Cli, conn) -> None:
    many_sources(conn, 250)
    many_sources(conn, 5, tenant_id=2, first=1000)
    every = cli.ok("status", "--json").json()
    assert len(every["sources"]) == 255 and every["paging"] == {
        "total": 255, "offset": 0, "limit": None, "next_offset": None
    }  # fmt: skip
    ids = [d["source"]["id"] for d in every["sources"]]
    assert ids == sorted(ids, key=lambda i: (i > 250, i))  # tenant, then id
    assert every["sources"][0]["stats"]["sentiment_7d"] == {}  # 255 sources: few enough for the breakdown

    pages, offset = [], 0
    while offset is not None:
        page = cli.ok("status", "--json", "--limit", "100", "--offset", str(offset)).json()
        assert page["paging"]["total"] == 255 and page["paging"]["limit"] == 100
        pages += page["sources"]
        offset = page["paging"]["next_offset"]
    assert pages == every["sources"]
    tenant = cli.ok("status", "--json", "--tenant", "2", "--limit", "3").json()
    assert [d["source"]["tenant_id"] for d in tenant["sources"]] == [2, 2, 2] and "quotas" not in tenant
    assert tenant["paging"] == {"total": 5, "offset": 0, "limit": 3, "next_offset": 3}
    beyond = cli.ok("status", "--json", "--offset", "999").json()
    assert beyond["sources"] == [] and beyond["paging"]["next_offset"] is None
    assert cli("status", "--json", "--limit", "0").returncode == 2


def test_status_summarises_many_sources_and_draws_them_all_on_request(cli: Cli, conn) -> None:
    many_sources(conn, 300)
    full = cli.ok("status", "--all").stdout
    assert all(f"brand {n} " in full for n in (1, 150, 300)) and "due now" not in full
    narrowed = cli.ok("status", "--tenant", "1", "--limit", "5").stdout
    assert "brand 5 " in narrowed and "brand 6 " not in narrowed and "due now" not in narrowed
    page = cli.ok("status", "--limit", "250", "--offset", "50").stdout  # a page is drawn, whatever its size
    assert "brand 51 " in page and "brand 300 " in page and "brand 50 " not in page and "due now" not in page

    conn.execute("UPDATE sl_sources SET error_message = 'HTTP 503 [/] from [bold]the API' WHERE id = 300")
    summary = cli.ok("status").stdout
    assert "300 sources: 294 due now" in summary  # the 6 in error are not scheduled
    assert "brand 1 " not in summary  # no row per source
    assert "platform" in summary and "twitter" in summary and "mock" in summary
    # 24 failing and 6 erroring sources: errors first, then the most failures; at most 20 listed
    assert "30 sources failing or in error (the 20 most in need of a look)" in summary
    assert summary.index("brand 300") < summary.index("brand 90 ")
    assert "HTTP 503 [/] from [bold]the API" in summary  # text from a platform is printed as is, never as markup
    assert "coverage gaps" not in summary
    add_gaps(conn, {7: 2, 8: 1})
    assert "3 coverage gaps in 2 sources" in cli.ok("status").stdout


def add_gaps(conn: Any, per_source: dict[int, int]) -> None:
    """`count` coverage gaps of a day each, in the last days, for each source id (tenant 1)."""
    for source_id, count in per_source.items():
        conn.execute(
            "INSERT INTO sl_coverage_gaps (source_id, tenant_id, from_at, to_at, reason, missed_estimate)"
            " SELECT %s, 1, now() - make_interval(days => d + 1), now() - make_interval(days => d), 'cap', 40"
            " FROM generate_series(1, %s) AS d",
            (source_id, count),
        )


def test_status_json_of_many_sources_streams_them_with_their_gaps(cli: Cli, conn) -> None:
    """Beyond 1,000 sources no breakdown is read between chunks, so the rows stream and the gaps are read
    first: every source still carries its own."""
    many_sources(conn, 1_001)
    add_gaps(conn, {5: 2, 1_001: 1})
    listing = cli.ok("status", "--json").json()
    assert len(listing["sources"]) == 1_001
    assert all(d["stats"]["sentiment_7d"] is None for d in listing["sources"])  # too many for the breakdown
    gaps = {d["source"]["id"]: len(d["gaps"]) for d in listing["sources"] if d["gaps"]}
    assert gaps == {5: 2, 1_001: 1}
    assert listing["sources"][4]["gaps"][0]["reason"] == "cap"
    one = cli.ok("status", "5", "--json").json()
    assert len(one["gaps"]) == 2
    page = cli.ok("status", "--limit", "10", "--all").stdout  # a drawn page warns of its sources' gaps
    assert page.count("source 5 (") == 2 and "coverage gap" in page


def test_mentions_are_listed_and_exported_in_published_order_with_their_exact_values(cli: Cli, conn) -> None:
    source_id = add_mock_source(conn)
    # the command's session reads times in UTC whatever the database's zone
    zone = "ALTER DATABASE %I SET TimeZone = ''Asia/Kolkata''"
    conn.execute(f"DO $$ BEGIN EXECUTE format('{zone}', current_database()); END $$")
    conn.execute(
        "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, published_at, status, sentiment,"
        " sentiment_score, media_urls) SELECT 1, %s, 'mock', 'p' || n, timestamptz '2026-03-01 12:00:00.25+00'"
        " + make_interval(hours => (n * 7) %% 10), 'processed', 'positive', 0.4404, ARRAY['u' || n]"
        " FROM generate_series(1, 10) AS n",
        (source_id,),
    )
    newest = cli.ok("mentions", "list", "--json", "--limit", "3").json()["mentions"]
    assert [m["published_at"] for m in newest] == [
        "2026-03-01T21:00:00.250000+00:00", "2026-03-01T20:00:00.250000+00:00", "2026-03-01T19:00:00.250000+00:00"
    ]  # fmt: skip
    assert newest[0]["sentiment_score"] == 0.4404 and newest[0]["media_urls"] == ["u7"]
    exported = [json.loads(line) for line in cli.ok("mentions", "export").stdout.splitlines()]
    assert [m["external_id"] for m in exported] == [f"p{n}" for n in (10, 3, 6, 9, 2, 5, 8, 1, 4, 7)]
    assert exported[-3:] == newest[::-1]


def test_an_export_of_many_chunks_writes_every_mention_once_in_order_with_one_csv_header(cli: Cli, conn) -> None:
    """Rows arrive from the server in chunks and are written EXPORT_CHUNK at a time: across both kinds of
    boundary every mention is written once and in order, escaped and neutralised as in a one-row export."""
    import csv
    import io

    from slsync.cli import EXPORT_CHUNK

    total = 3 * EXPORT_CHUNK + 401  # past several of each kind of chunk
    source_id = add_mock_source(conn)
    conn.execute(
        "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, published_at, content, status)"
        " SELECT 1, %s, 'mock', 'p' || n, timestamptz '2026-03-01 12:00:00+00' + make_interval(secs => n),"
        " CASE WHEN n %% 7 = 0 THEN '=HYPERLINK(\"http://evil.example\")' WHEN n %% 11 = 0 THEN E'\\u202eevil'"
        " ELSE 'post ' || n END, 'new' FROM generate_series(1, %s) AS n",
        (source_id, total),
    )
    expected = [f"p{n}" for n in range(1, total + 1)]
    jsonl = cli.ok("mentions", "export").stdout
    assert "\u202e" not in jsonl
    exported = [json.loads(line) for line in jsonl.splitlines()]
    assert [m["external_id"] for m in exported] == expected
    assert exported[10]["content"] == "\u202eevil" and exported[6]["content"].startswith("=HYPERLINK")
    table = list(csv.reader(io.StringIO(cli.ok("mentions", "export", "--format", "csv").stdout)))
    assert table[0] == list(db.MENTION_COLUMNS) and len(table) == total + 1
    assert [row[4] for row in table[1:]] == expected
    content = db.MENTION_COLUMNS.index("content")
    assert table[11][content] == "\\u202eevil" and table[7][content] == '\'=HYPERLINK("http://evil.example")'


def test_analyze_shares_one_limit_between_its_lanes(cli: Cli, conn) -> None:
    source_id = add_mock_source(conn)
    cli.ok("mock", str(source_id), "--count", "3000")
    first = cli.ok("analyze", "--limit", "1234", "--json").json()
    assert (first["analyzed"], first["remaining"], first["error"]) == (1234, 1766, None)
    processed = conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'processed'").fetchone()
    assert processed == {"n": 1234}
    rest = cli.ok("analyze", "--json").json()
    assert (rest["analyzed"], rest["remaining"]) == (1766, 0)


WORKER_PLUGIN = """
    import os
    from slsync.analysis import Analysis

    class Plugin:
        name = "testplug"

        def analyze(self, texts):
            if os.environ.get("PLUGIN_FAIL"):
                raise RuntimeError("the model service is down")
            if os.environ.get("PLUGIN_GENERATOR"):  # not a list: refused as in one process
                return (Analysis("positive", 0.5, "praise") for _ in texts)
            with open(os.environ["PLUGIN_LOG"], "a") as log:
                log.write(f"{os.getpid()} {len(texts)}\\n")
            return [Analysis("positive", 0.5, "praise") for _ in texts]
"""


def test_a_large_backlog_is_analysed_in_worker_processes_and_their_failure_is_reported(
    cli: Cli, conn, tmp_path: Any
) -> None:
    from slsync.analysis import ELSEWHERE_FROM
    from tests.test_analysis import write_plugin

    source_id = add_mock_source(conn)
    count = ELSEWHERE_FROM + 700
    cli.ok("mock", str(source_id), "--count", str(count))
    log = tmp_path / "seen.log"
    env = {**write_plugin(tmp_path / "plugins", WORKER_PLUGIN), "PLUGIN_LOG": str(log), "PLUGIN_FAIL": "1"}
    failed = cli("analyze", "--json", env=env)
    assert failed.returncode == 1 and "the model service is down" in failed.json()["error"]
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'new'").fetchone() == {"n": count}
    del env["PLUGIN_FAIL"]
    refused = cli("analyze", "--json", env={**env, "PLUGIN_GENERATOR": "1"})
    assert refused.returncode == 1 and "has no len()" in refused.json()["error"]
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions WHERE status = 'new'").fetchone() == {"n": count}

    done = cli.ok("analyze", "--json", env=env).json()
    assert (done["analyzed"], done["remaining"], done["error"]) == (count, 0, None)
    batches = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(size) for _, size in batches) == [700] + [1000] * (count // 1000)  # every batch once
    assert len({pid for pid, _ in batches} | {str(os.getpid())}) > 2  # in worker processes, more than one
    analyzers = conn.execute("SELECT DISTINCT analyzer, status FROM sl_mentions").fetchall()
    assert analyzers == [{"analyzer": "testplug", "status": "processed"}]
