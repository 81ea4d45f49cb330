"""In-process timings for benchmarks/scale.py, run in a child process with PYTHONPATH naming the code to measure.

scale.py measures two versions of slsync on one database: the code of a baseline commit and the code of
this checkout. A database call cannot be timed from the outside, so scale.py runs this file under each
version's PYTHONPATH and reads one JSON document from its stdout. It must run on both versions: it uses
only db functions both have, and asks the function's signature where they differ.

    python benchmarks/_scale_probe.py PROBE DATABASE_URL [ARG]
"""

from __future__ import annotations

import inspect
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from slsync import db

REPEAT = 7


def connect(url: str) -> Any:
    return psycopg.connect(url, autocommit=True, row_factory=dict_row)


def timed(conn: Any, call: Callable[[], Any], repeat: int = REPEAT) -> float:
    """Median milliseconds of `repeat` calls, each in a transaction rolled back afterwards."""
    times = []
    for _ in range(repeat):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def plan_of(
    conn: Any, query: Any, params: Any = None, settings: Sequence[str] = (), *, analyze: bool = True
) -> dict[str, Any]:
    """The scans, sorts and temporary blocks of a statement's EXPLAIN (ANALYZE, BUFFERS), under the SET LOCAL
    settings the db function made before it."""
    with conn.transaction(force_rollback=True):
        for setting in settings:
            conn.execute(setting)
        options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
        row = conn.execute(f"EXPLAIN ({options}) " + _plain(query), params).fetchone()
    root = row["QUERY PLAN"][0]["Plan"]
    found: list[str] = []
    temp = fetches = 0

    def walk(node: dict[str, Any]) -> None:
        nonlocal temp, fetches
        kind = node["Node Type"]
        fetches += int(node.get("Heap Fetches", 0))
        if "Index Name" in node:
            found.append(f"{kind} using {node['Index Name']}")
        elif "Relation Name" in node and "Scan" in kind:
            found.append(f"{kind} on {node['Relation Name']}")
        elif kind in ("Sort", "Incremental Sort"):
            found.append(f"{kind} ({node.get('Sort Method', 'planned')}, {node.get('Sort Space Type', '-')})")
        temp += int(node.get("Temp Written Blocks", 0))
        for child in node.get("Plans", []):
            walk(child)

    walk(root)
    return {
        "plan": "; ".join(dict.fromkeys(found)) or root["Node Type"],
        "buffers": int(root.get("Shared Hit Blocks", 0)) + int(root.get("Shared Read Blocks", 0)),
        "temp_mb": temp * 8192 / 1e6,
        "heap_fetches": fetches,
    }


class Capture:
    """Records the statements a db function sends, to EXPLAIN the last one afterwards."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent: list[tuple[Any, Any]] = []

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.sent.append((query, params))
        return self.conn.execute(query, params, **kwargs)

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return _RecordingCursor(self.conn.cursor(*args, **kwargs), self.sent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class _RecordingCursor:
    """A cursor (psycopg's have __slots__, so it is wrapped) whose statements are recorded too."""

    def __init__(self, cursor: Any, sent: list[tuple[Any, Any]]) -> None:
        self._cursor, self._sent = cursor, sent

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self._sent.append((query, params))
        return self._cursor.execute(query, params, **kwargs)

    def stream(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self._sent.append((query, params))
        return self._cursor.stream(query, params, **kwargs)

    def __enter__(self) -> _RecordingCursor:
        self._cursor.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cursor.__exit__(*exc)

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._cursor, name, value)


def claim_release(url: str) -> dict[str, Any]:
    """claim_due(50) among the due sources, then releasing those claims as `sync due` does at its end: after
    its runs ended (each run's end cleared its source's claim already), and with every claim still held (a
    run cut short)."""
    takes_ids = len(inspect.signature(db.release_claims).parameters) > 1

    def release(conn: Any, ids: list[int]) -> None:
        db.release_claims(conn, ids) if takes_ids else db.release_claims(conn)

    claims, after_runs, held = [], [], []
    with connect(url) as conn:
        for _ in range(REPEAT):
            with conn.transaction(force_rollback=True):
                started = time.perf_counter()
                ids = db.claim_due(conn, 50)
                claims.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                release(conn, ids)
                held.append((time.perf_counter() - started) * 1000)
            with conn.transaction(force_rollback=True):
                ids = db.claim_due(conn, 50)
                conn.execute("UPDATE sl_sources SET claimed_by = NULL, claimed_at = NULL WHERE id = ANY(%s)", (ids,))
                started = time.perf_counter()
                release(conn, ids)
                after_runs.append((time.perf_counter() - started) * 1000)
        with conn.transaction(force_rollback=True):
            ids = db.claim_due(conn, 50)
            capture = Capture(conn)
            release(capture, ids)
            plan = plan_of(conn, *capture.sent[-1])
    return {
        "claim_ms": statistics.median(claims),
        "release_ms": statistics.median(after_runs),
        "release_held_ms": statistics.median(held),
        "claimed": len(ids),
        **plan,
    }


def mentions_list(url: str) -> dict[str, Any]:
    """The query of `mentions list --limit 20` with no filter (the newest 20 of every tenant), and the plan of
    the full export's (oldest first, every row; planned only)."""
    with connect(url) as conn:
        ms = timed(conn, lambda: list(db.stream_mentions(conn, limit=20, newest_first=True)))
        listed = _statement(conn, lambda c: list(db.stream_mentions(c, limit=20, newest_first=True)))
        export = _statement(conn, _first_exported)
        return {"ms": ms, **plan_of(conn, *listed), "export_plan": plan_of(conn, *export, analyze=False)["plan"]}


def _first_exported(conn: Any) -> Any:
    rows = db.stream_mentions(conn)
    try:
        return next(rows, None)
    finally:
        rows.close()


def _statement(conn: Any, call: Callable[[Any], Any]) -> tuple[Any, Any, list[str]]:
    """The statement reading sl_mentions that `call` sends, its parameters and the settings made before it."""
    capture = Capture(conn)
    call(capture)
    settings = [str(q) for q, _ in capture.sent if str(q).lstrip().upper().startswith("SET ")]
    query, params = next((q, p) for q, p in capture.sent if "FROM sl_mentions" in _plain(q))
    return query, params, settings


def breakdown(url: str, tenant: str) -> dict[str, Any]:
    """The 7-day sentiment breakdown of every source of one tenant, as `status --tenant` computes it; and
    the same with index-only scans switched off, so that every counted mention is read from the table."""
    with connect(url) as conn:
        ids = [r["id"] for r in conn.execute("SELECT id FROM sl_sources WHERE tenant_id = %s", (int(tenant),))]
        ms = timed(conn, lambda: db.sentiment_breakdown(conn, ids))
        capture = Capture(conn)
        counts = db.sentiment_breakdown(capture, ids)
        heap_only = "SET LOCAL enable_indexonlyscan = off"

        def from_the_table() -> None:
            conn.execute(heap_only)
            db.sentiment_breakdown(conn, ids)

        return {
            "ms": ms,
            "sources": len(ids),
            "mentions": sum(sum(c.values()) for c in counts.values()),
            **plan_of(conn, *capture.sent[-1]),
            "heap_ms": timed(conn, from_the_table),
            "heap_plan": plan_of(conn, *capture.sent[-1], [heap_only]),
        }


def migrate(url: str) -> dict[str, Any]:
    """db.migrate on the baseline's schema: the new migrations, the raw payloads' move among them."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="    %(message)s")
    with connect(url) as conn:
        started = time.perf_counter()
        applied = db.migrate(conn)
        return {"seconds": time.perf_counter() - started, "applied": applied}


def _plain(query: Any) -> str:
    """A statement a db function sent, as text an EXPLAIN can prefix (a DECLARE gives its query)."""
    text = (query.as_string(None) if hasattr(query, "as_string") else str(query)).lstrip()
    upper = text.upper()
    if upper.startswith("DECLARE"):
        return text[upper.index(" FOR ") + len(" FOR ") :] if " FOR " in upper else text
    return text


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "claim_release": claim_release,
    "mentions_list": mentions_list,
    "breakdown": breakdown,
    "migrate": migrate,
}

if __name__ == "__main__":
    probe, url, *rest = sys.argv[1:]
    print(json.dumps(PROBES[probe](url, *rest)))
