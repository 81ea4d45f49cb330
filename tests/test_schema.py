"""The schema can move to a PostgreSQL distributed by tenant (Citus) without a redesign: every table a tenant
owns carries tenant_id, and every primary key, unique index and foreign key between such tables includes it."""

from __future__ import annotations

import pytest

from slsync import db
from tests.conftest import add_mock_source

# Tables that belong to no tenant (reference or local tables on Citus). Every other sl_ table is a tenant's:
# a new table is checked unless it is named here on purpose.
SHARED_TABLES = {
    "sl_schema_migrations",  # the migrations applied
    "sl_quota_ledger",  # per platform credential, which tenants may share
    "sl_window_ledger",  # per platform credential
    "sl_erasures",  # the operator's audit of erasure requests, one of which may cover every tenant
}


def tables(conn: db.Connection) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname LIKE 'sl\\_%'"
        " ORDER BY 1"
    ).fetchall()
    return [r["relname"] for r in rows]


def unique_keys_without_tenant(conn: db.Connection, table: str) -> list[str]:
    """The primary key and unique indexes (constraints or not, partial or not) of `table` lacking tenant_id."""
    rows = conn.execute(
        "SELECT i.indexrelid::regclass::text AS name FROM pg_index i"
        " WHERE i.indrelid = %s::regclass AND (i.indisunique OR i.indisprimary)"
        " AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = i.indrelid"
        "   AND a.attname = 'tenant_id' AND a.attnum = ANY(i.indkey))",
        (table,),
    ).fetchall()
    return [r["name"] for r in rows]


def foreign_keys_without_tenant(conn: db.Connection, table: str, tenant_tables: set[str]) -> list[str]:
    """Foreign keys from `table` to another tenant table that do not join tenant_id to tenant_id."""
    rows = conn.execute(
        "SELECT c.conname, c.confrelid::regclass::text AS target,"
        " EXISTS (SELECT 1 FROM unnest(c.conkey, c.confkey) AS k(mine, theirs)"
        "   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.mine"
        "   JOIN pg_attribute b ON b.attrelid = c.confrelid AND b.attnum = k.theirs"
        "   WHERE a.attname = 'tenant_id' AND b.attname = 'tenant_id') AS joins_tenant"
        " FROM pg_constraint c WHERE c.conrelid = %s::regclass AND c.contype = 'f'",
        (table,),
    ).fetchall()
    return [r["conname"] for r in rows if r["target"] in tenant_tables and not r["joins_tenant"]]


def test_every_key_of_a_tenant_table_includes_tenant_id(conn: db.Connection) -> None:
    found = tables(conn)
    assert set(found) >= SHARED_TABLES, "a shared table was renamed or dropped: update SHARED_TABLES"
    tenant_tables = set(found) - SHARED_TABLES
    assert {"sl_sources", "sl_mentions", "sl_sync_runs", "sl_tokens"} <= tenant_tables
    problems = []
    for table in sorted(tenant_tables):
        column = conn.execute(
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'tenant_id'"
            " AND NOT attisdropped",
            (table,),
        ).fetchone()
        if column is None or not column["attnotnull"]:
            problems.append(f"{table} has no NOT NULL tenant_id")
            continue
        problems += [
            f"{table}: unique index {name} lacks tenant_id" for name in unique_keys_without_tenant(conn, table)
        ]
        problems += [
            f"{table}: foreign key {name} does not join on tenant_id"
            for name in foreign_keys_without_tenant(conn, table, tenant_tables)
        ]
    assert problems == []


def test_the_check_finds_a_key_without_tenant_id(conn: db.Connection) -> None:
    """The checks above can fail: a table keyed by mention alone, as a raw-payload table might be."""
    conn.execute("CREATE TABLE sl_probe (mention_id bigint PRIMARY KEY, tenant_id bigint NOT NULL, note text)")
    conn.execute("CREATE UNIQUE INDEX sl_probe_note ON sl_probe (note) WHERE note IS NOT NULL")
    assert sorted(unique_keys_without_tenant(conn, "sl_probe")) == ["sl_probe_note", "sl_probe_pkey"]
    conn.execute("CREATE TABLE sl_probe_child (id bigint, tenant_id bigint NOT NULL, probe bigint REFERENCES sl_probe)")
    assert foreign_keys_without_tenant(conn, "sl_probe_child", {"sl_probe", "sl_probe_child"}) == [
        "sl_probe_child_probe_fkey"
    ]


@pytest.mark.parametrize("removed", [True, False])
def test_a_removed_source_keeps_its_mentions_under_its_tenant_and_drops_its_runs(
    conn: db.Connection, removed: bool
) -> None:
    source_id = add_mock_source(conn, tenant_id=7)
    other = add_mock_source(conn, tenant_id=7, name="other")
    for sid in (source_id, other):
        conn.execute("INSERT INTO sl_sync_runs (source_id, tenant_id, trigger) VALUES (%s, 7, 'manual')", (sid,))
        conn.execute(
            "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, published_at)"
            " VALUES (7, %s, 'mock', %s, now())",
            (sid, f"post-{sid}"),
        )
    if removed:
        db.remove_source(conn, source_id)
    mentions = conn.execute("SELECT tenant_id, source_id FROM sl_mentions ORDER BY external_id").fetchall()
    runs = conn.execute("SELECT source_id FROM sl_sync_runs ORDER BY source_id").fetchall()
    expected_source = None if removed else source_id
    assert [(m["tenant_id"], m["source_id"]) for m in mentions] == [(7, expected_source), (7, other)]
    assert [r["source_id"] for r in runs] == ([other] if removed else [source_id, other])
