"""Query plans and times at scale: slsync's own queries over 100,000 sources and 10,000,000 mentions.

Why: issue 5 asks that claiming due sources and `status` stay fast at that scale, with indexes that
EXPLAIN shows are used and no per-source count(*) in `status`. The data is generated in SQL
(generate_series); the queries are slsync's own: each db function is called on a connection that
first runs every statement it sends under EXPLAIN (ANALYZE, BUFFERS) in a rolled-back savepoint,
then for real. Times are medians of --repeat calls, each in a rolled-back transaction.

    /tmp/v/bin/python benchmarks/queries.py [--sources 100000] [--mentions 10000000] [--tenants 1000] [--plans]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from _common import connect, fresh_database, machine, postgres, table
from psycopg import pq, sql
from psycopg.rows import dict_row

from slsync import db
from slsync.connectors.mock import stream_post
from slsync.models import Page, RateLimit

EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
SECONDS_BETWEEN_MENTIONS = 3  # 10 M mentions span about a year


@dataclass
class Plan:
    statement: str
    root: dict[str, Any]
    text: str = ""


@dataclass
class Explaining:
    """Stands in for a connection: every statement is first explained (and rolled back), then run."""

    conn: db.Connection
    text_plans: bool = False
    plans: list[Plan] = field(default_factory=list)

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.explain(query, params)
        return self.conn.execute(query, params, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _ExplainingCursor(self, self.conn.cursor(*args, **kwargs))

    def explain(self, query: Any, params: Any) -> None:
        first = " ".join(str(query).split())[:60] if isinstance(query, str) else type(query).__name__
        with self.conn.transaction(force_rollback=True):
            row = self.conn.execute(_explained(query, EXPLAIN), params).fetchone()
            assert row is not None
            plan = Plan(first, row["QUERY PLAN"][0]["Plan"])
        if self.text_plans:
            with self.conn.transaction(force_rollback=True):
                rows = self.conn.execute(_explained(query, "EXPLAIN (ANALYZE, BUFFERS) "), params).fetchall()
                plan.text = "\n".join(r["QUERY PLAN"] for r in rows)
        self.plans.append(plan)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class _ExplainingCursor:
    """A cursor of an Explaining connection (db.status_rows reads through one): its statements explained too.
    psycopg's cursors have __slots__, so it is wrapped."""

    def __init__(self, explaining: Explaining, cursor: Any) -> None:
        self._explaining, self._cursor = explaining, cursor

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self._explaining.explain(query, params)
        self._cursor.execute(query, params, **kwargs)
        return self

    def __enter__(self) -> _ExplainingCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._cursor.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


def _explained(query: Any, prefix: str) -> Any:
    if isinstance(query, str):
        return prefix + query
    return sql.SQL(prefix) + query  # a psycopg.sql.Composable


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def describe(node: dict[str, Any]) -> str:
    kind = node["Node Type"]
    if kind == "ModifyTable":
        return f"{node.get('Operation', '')} on {node.get('Relation Name', '?')}"
    if "Index Name" in node:
        return f"{kind} using {node['Index Name']}"
    if "Relation Name" in node:
        return f"{kind} on {node['Relation Name']}"
    return kind


def scans(plans: list[Plan]) -> str:
    """The scans of slsync's tables, in plan order, each once."""
    found: list[str] = []
    for plan in plans:
        for node in nodes(plan.root):
            relation = node.get("Relation Name", "")
            ours = relation.startswith("sl_") or str(node.get("Index Name", "")).startswith("sl_")
            if "Scan" in node["Node Type"] and ours:
                text = describe(node)
                if "Seq Scan" in text:
                    text = f"SEQ SCAN on {relation}"
                if text not in found:
                    found.append(text)
    return "; ".join(found) or "-"


# --- data -------------------------------------------------------------------------------------------


def generate(conn: db.Connection, sources: int, mentions: int, tenants: int, runs: int, chunk: int) -> None:
    """Sources across tenants, a run log, and mentions, all in SQL; then VACUUM ANALYZE."""
    per_tenant = max(sources // tenants, 1)
    params = {"sources": sources, "per_tenant": per_tenant, "mentions": mentions, "runs": runs}
    step("sources", lambda: conn.execute(SOURCES, params))
    first = conn.execute("SELECT min(id) AS lo, max(id) AS hi FROM sl_sources").fetchone()
    assert first is not None and first["lo"] == 1 and first["hi"] == sources, "source ids must be 1..N"
    step(f"run log ({runs} runs per source)", lambda: conn.execute(RUNS, params))
    # The run log and mentions refer to sources that exist: skip the per-row foreign-key triggers.
    conn.execute("SET session_replication_role = replica")
    for lo in range(1, mentions + 1, chunk):
        hi = min(lo + chunk - 1, mentions)
        step(f"mentions {lo:,}..{hi:,}", lambda lo=lo, hi=hi: conn.execute(MENTIONS, {**params, "lo": lo, "hi": hi}))
    conn.execute("SET session_replication_role = DEFAULT")
    step("sources.mentions_count", lambda: conn.execute(COUNTS, params))
    step("VACUUM ANALYZE", lambda: conn.execute("VACUUM ANALYZE"))


def step(label: str, action: Callable[[], Any]) -> None:
    started = time.perf_counter()
    action()
    print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)


# Statuses: 90% active, 4% connected, 3% failing, 2% error, 1% pending. next_sync_at spreads over a
# 15-minute cycle so that about 1 in 15 sources is due; 1 in 200 was never synced; 1% are rate limited.
SOURCES = """
INSERT INTO sl_sources (tenant_id, platform, name, connection_type, config, status, sync_interval_minutes,
    last_sync_at, next_sync_at, rate_limit_limit, rate_limit_remaining, rate_limit_reset_at)
SELECT 1 + (g - 1) / %(per_tenant)s,
    CASE WHEN mod(g, 2) = 0 THEN 'twitter' ELSE 'mock' END,
    'source ' || g,
    CASE WHEN mod(g, 2) = 0 THEN 'app' ELSE 'none' END,
    jsonb_build_object('keywords', jsonb_build_array('brand ' || g), 'hashtags', '[]'::jsonb,
        'mentions', '[]'::jsonb, 'exclude', '[]'::jsonb, 'languages', '[]'::jsonb, 'options', '{}'::jsonb),
    CASE WHEN mod(g, 100) < 90 THEN 'active' WHEN mod(g, 100) < 94 THEN 'connected' WHEN mod(g, 100) < 97 THEN 'failing'
         WHEN mod(g, 100) < 99 THEN 'error' ELSE 'pending' END,
    15,
    CASE WHEN mod(g, 200) = 7 THEN NULL
         ELSE now() + make_interval(secs => mod(g * 7919, 900) - 60) - interval '15 minutes' END,
    now() + make_interval(secs => mod(g * 7919, 900) - 60),
    450,
    CASE WHEN mod(g, 100) = 42 THEN 0 ELSE 300 END,
    now() + interval '10 minutes'
FROM generate_series(1, %(sources)s) AS g
"""

RUNS = """
INSERT INTO sl_sync_runs (source_id, tenant_id, trigger, started_at, finished_at, status, pages, fetched, saved)
SELECT s.id, s.tenant_id, 'due', s.last_sync_at - make_interval(mins => 15 * (k - 1)),
    s.last_sync_at - make_interval(mins => 15 * (k - 1)) + interval '2 seconds', 'success', 1, 20, 20
FROM sl_sources s, generate_series(1, %(runs)s) AS k
WHERE s.last_sync_at IS NOT NULL
"""

# Mention g belongs to source 1 + (g - 1) % N (so every source has mentions all through the year);
# the newest 0.1% are still 'new' (not analysed), the rest 'processed' with a sentiment.
MENTIONS = """
INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, url, content, author_name, author_handle,
    author_followers, author_verified, published_at, likes_count, comments_count, shares_count, media_type,
    language, status, sentiment)
SELECT 1 + (x.s - 1) / %(per_tenant)s, x.s, CASE WHEN mod(x.s, 2) = 0 THEN 'twitter' ELSE 'mock' END,
    'p' || g, 'https://example.invalid/status/' || g, 'post ' || g || ' about brand ' || x.s,
    'Author ' || mod(g, 50000), 'author' || mod(g, 50000), mod(g, 100000), mod(g, 20) = 0,
    now() - make_interval(secs => (%(mentions)s - g) * 3), mod(g, 40), mod(g, 6), mod(g, 4), 'text', 'en',
    CASE WHEN g > %(mentions)s - %(mentions)s / 1000 THEN 'new' ELSE 'processed' END,
    CASE WHEN g > %(mentions)s - %(mentions)s / 1000 THEN NULL
         ELSE (ARRAY['positive', 'negative', 'neutral'])[1 + mod(g, 3)] END
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g, LATERAL (SELECT 1 + mod(g - 1, %(sources)s)::int AS s) AS x
"""

COUNTS = """
UPDATE sl_sources SET mentions_count = %(mentions)s / %(sources)s + CASE WHEN id <= mod(%(mentions)s, %(sources)s)
    THEN 1 ELSE 0 END
"""


# --- measuring --------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    ms: float
    rows: int
    top: str
    scans: str
    buffers: str
    plans: list[Plan]


def measure(conn: db.Connection, label: str, call: Callable[[Any], Any], repeat: int, text_plans: bool) -> Row:
    explaining = Explaining(conn, text_plans=text_plans)
    with conn.transaction(force_rollback=True):
        call(explaining)
    times, result = timed(conn, call, repeat)
    return summarize(label, times, result, explaining.plans)


def measure_generic(url: str, label: str, call: Callable[[Any], Any], repeat: int, text_plans: bool) -> Row:
    """The same call as a long-lived process may run it: prepared statements with generic plans.

    psycopg prepares a statement it has run 5 times, and PostgreSQL may then switch to a generic plan,
    which cannot see that `%(id)s IS NULL` is false. Here every statement is prepared at once and
    planned generically (plan_cache_mode = force_generic_plan); the plans are EXPLAIN (GENERIC_PLAN)
    of the prepared statements (PostgreSQL 16+), so they carry no actual times or buffers.
    """
    with psycopg.connect(url, autocommit=True, row_factory=dict_row, prepare_threshold=0) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        times, result = timed(conn, call, repeat)
        plans = []
        # psycopg forgets its prepared statements at a rollback: read them before this one ends
        with conn.transaction(force_rollback=True):
            call(conn)
            statements = conn.execute(
                "SELECT statement FROM pg_prepared_statements WHERE generic_plans > 0"
                " AND statement NOT LIKE '%pg_prepared_statements%' AND statement NOT LIKE 'SET %'"
                " ORDER BY prepare_time"
            ).fetchall()
            for row in statements:
                found = explain_text(conn, "EXPLAIN (GENERIC_PLAN, FORMAT JSON) " + row["statement"])
                if found is None:  # before PostgreSQL 16 there is no GENERIC_PLAN; the times still tell
                    break
                text = explain_text(conn, "EXPLAIN (GENERIC_PLAN) " + row["statement"]) if text_plans else ""
                first = " ".join(row["statement"].split())[:60]
                plans.append(Plan(first, json.loads(found)[0]["Plan"], text or ""))
    return summarize(label, times, result, plans)


def explain_text(conn: db.Connection, statement: str) -> str | None:
    """Run an EXPLAIN of a statement with $n placeholders over the simple query protocol (no Bind)."""
    result = conn.pgconn.exec_(statement.encode())
    if result.status != pq.ExecStatus.TUPLES_OK:
        return None
    return "\n".join((result.get_value(n, 0) or b"").decode() for n in range(result.ntuples))


def timed(conn: db.Connection, call: Callable[[Any], Any], repeat: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeat):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            result = call(conn)
            times.append((time.perf_counter() - started) * 1000)
    return times, result


def summarize(label: str, times: list[float], result: Any, plans: list[Plan]) -> Row:
    main = max(plans, key=lambda p: p.root.get("Actual Total Time", p.root.get("Total Cost", 0.0)), default=None)
    hit = sum(int(p.root.get("Shared Hit Blocks", 0)) for p in plans)
    read = sum(int(p.root.get("Shared Read Blocks", 0)) for p in plans)
    buffers = f"{hit:,}/{read:,}" if hit or read else "-"
    count = len(result) if isinstance(result, list | dict) else result if isinstance(result, int) else 1
    top = describe(main.root) if main else "-"
    return Row(label, statistics.median(times), count, top, scans(plans), buffers, plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=100_000, help="sources (default 100,000)")
    parser.add_argument("--mentions", type=int, default=10_000_000, help="mentions (default 10,000,000)")
    parser.add_argument("--tenants", type=int, default=1_000, help="tenants the sources are spread over")
    parser.add_argument("--runs", type=int, default=10, help="run-log rows per source (default 10)")
    parser.add_argument("--chunk", type=int, default=1_000_000, help="mentions per INSERT statement")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per query; the median is reported")
    parser.add_argument("--plans", action="store_true", help="also print every EXPLAIN (ANALYZE, BUFFERS) plan")
    args = parser.parse_args()

    with postgres() as admin, fresh_database(admin, "queries") as url, connect(url) as conn:
        print(machine(url))
        print(
            f"scale: {args.sources:,} sources in {args.tenants:,} tenants, {args.mentions:,} mentions, "
            f"{args.runs} run-log rows per source"
        )
        started = time.perf_counter()
        generate(conn, args.sources, args.mentions, args.tenants, args.runs, args.chunk)
        print(f"generated in {time.perf_counter() - started:.0f} s")
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('sl_mentions')) AS m,"
            " pg_size_pretty(pg_database_size(current_database())) AS d"
        ).fetchone()
        assert size is not None
        print(f"sl_mentions with its indexes: {size['m']}; database: {size['d']}")

        per_tenant = max(args.sources // args.tenants, 1)
        source_id = args.sources // 2 | 1  # an active mock source (odd ids) in the middle
        tenant_id = 1 + (source_id - 1) // per_tenant
        tenant_ids = db.tenant_source_ids(conn, tenant_id)
        all_ids = [int(r["id"]) for r in conn.execute("SELECT id FROM sl_sources").fetchall()]
        source = db.get_source(conn, source_id)

        def save(c: Any) -> int:
            run_id = db.begin_run(c, source, "manual")
            page = Page(
                mentions=tuple(stream_post(source_id, "brand", seq) for seq in range(100)),
                cursor={"since_ids": {}},
                rate_limit=RateLimit(limit=450, remaining=299, reset_at=datetime.now(UTC) + timedelta(minutes=15)),
            )
            return db.save_page(c, source, run_id, page)

        one_tenant = f"one tenant: {len(tenant_ids)} sources"
        checks: list[tuple[str, Callable[[Any], Any], bool]] = [
            ("claim_due(limit 50)", lambda c: db.claim_due(c, 50), False),
            ("  claim_due, prepared + generic plan", lambda c: db.claim_due(c, 50), True),
            ("status_rows(source_id=one)", lambda c: db.status_rows(c, source_id=source_id), False),
            ("  status_rows(one), prepared + generic plan", lambda c: db.status_rows(c, source_id=source_id), True),
            (f"status_rows(tenant_id={one_tenant})", lambda c: db.status_rows(c, tenant_id=tenant_id), False),
            ("  status_rows(tenant), prepared + generic", lambda c: db.status_rows(c, tenant_id=tenant_id), True),
            (f"status_rows() all {args.sources:,} sources", lambda c: db.status_rows(c), False),
            ("get_source(one)", lambda c: db.get_source(c, source_id), False),
            ("tenant_source_ids(one tenant)", lambda c: db.tenant_source_ids(c, tenant_id), False),
        ]
        if hasattr(db, "sentiment_breakdown"):
            checks += [
                ("sentiment_breakdown(one source)", lambda c: db.sentiment_breakdown(c, [source_id]), False),
                ("sentiment_breakdown(one tenant)", lambda c: db.sentiment_breakdown(c, tenant_ids), False),
                (f"sentiment_breakdown(all {args.sources:,})", lambda c: db.sentiment_breakdown(c, all_ids), False),
            ]
        if hasattr(db, "claim_new_mentions"):
            synced = all_ids[-200:]  # what a `sync due` of 200 sources hands to the analysis
            checks += [
                ("claim_new_mentions(limit 500)", lambda c: db.claim_new_mentions(c, limit=500), False),
                (
                    "claim_new_mentions(500, one tenant)",
                    lambda c: db.claim_new_mentions(c, limit=500, tenant_id=tenant_id),
                    False,
                ),
                (
                    "claim_new_mentions(500, 200 sources)",
                    lambda c: db.claim_new_mentions(c, limit=500, source_ids=synced),
                    False,
                ),
            ]
        if hasattr(db, "prune_runs"):
            checks.append(("prune_runs(keep 90 days)", lambda c: db.prune_runs(c, keep_days=90), False))
        checks.append(("begin_run + save_page(100 new)", save, False))

        results = []
        for label, call, generic in checks:
            if generic:
                results.append(measure_generic(url, label, call, args.repeat, args.plans))
            else:
                results.append(measure(conn, label, call, args.repeat, args.plans))
            print(f"  {label}: {results[-1].ms:.2f} ms", flush=True)

    headers = ("query", "ms", "rows", "slowest statement's top node", "scans of sl_ tables", "buffers hit/read")
    print(table(headers, [(r.label, r.ms, r.rows, r.top, r.scans, r.buffers) for r in results], "queries at scale"))
    print(
        f"\nms: median of {args.repeat} calls, each in a rolled-back transaction. 'prepared + generic plan': the same"
        " call on a connection that prepares every statement and plans it generically, as a long-lived process"
        " may after 5 executions; its plan is EXPLAIN (GENERIC_PLAN), without actual buffers."
    )
    seq = [r.label.strip() for r in results if "SEQ SCAN" in r.scans]
    print("sequential scans of slsync tables: " + (", ".join(seq) if seq else "none"))
    claim = results[0].scans
    print(f"claim_due uses sl_sources_due_idx: {'yes' if 'sl_sources_due_idx' in claim else 'NO'} ({claim})")
    if args.plans:
        for r in results:
            for plan in r.plans:
                print(f"\n--- {r.label.strip()}: {plan.statement} ...\n{plan.text}")


if __name__ == "__main__":
    main()
