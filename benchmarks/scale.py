"""Scale: 100,000 sources and 2,000,000 mentions, every command of issue 21 before and after, in one run.

Why: issue 21 asks that `status`, `sync due`'s claims, `mentions list` / `export`, `status --tenant` and
`analyze` stay fast with memory flat at 100,000 sources over 5,000 tenants and 2,000,000 mentions with a
realistic raw payload (~1 KB). The dataset is generated in SQL on the schema of a baseline commit (the
code before the change, taken with `git archive` into a temporary folder); each command then runs
--repeat times as a child process (wall time, peak RSS, output size, WAL written, temporary files) with
PYTHONPATH naming the baseline's code. Then the code of this checkout migrates the same database (the new
migrations, the raw payloads' batched move among them: timed, and checked by counts and a checksum of
every raw payload) and the same commands run again. Database calls that a process's start would hide
(releasing claims, the query of `mentions list`, the tenant's breakdown) are timed in-process by
_scale_probe.py under each version. The table at the end has both columns.

    /tmp/v/bin/python benchmarks/scale.py [--sources 100000] [--tenants 5000] [--mentions 2000000]
        [--backlog 200000] [--repeat 3] [--baseline-ref REF]

About 11 GB of disk at 2,000,000 mentions (the table, the moved payloads, WAL, one export file, the
compaction's copy), ~5.5 KB a mention: the script refuses to start when the disk has less than 1.5
times that plus 10 GB free.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from _common import cli_env, connect, machine, measure_cpu, postgres, revision, table, verdict, with_db

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "_scale_probe.py"
# The code before the scale work: the "before" column (main when the scale work was rebased on it; 0211cc8,
# main before issues 17, 20 and 22, works too). Any commit or branch name works.
BASELINE = "02bbac8"
BIG_TENANT_SOURCES = 100  # tenant 1, whose week of mentions `status --tenant 1` breaks down
PLATFORMS = "ARRAY['twitter','reddit','youtube','bluesky','mastodon','facebook','instagram','linkedin','tiktok','mock']"
BYTES_PER_MENTION = 5_500  # disk the run needs per mention, all told (see the module docstring)


# --- the dataset ----------------------------------------------------------------------------------------

# Tenant 1 has BIG_TENANT_SOURCES sources, the other tenants share the rest evenly. Statuses: 90% active,
# 4% connected, 3% failing, 2% error, 1% pending; next_sync_at spreads over a 15-minute cycle (about 1 in
# 15 due); search terms in config and a cursor as a sync leaves them.
SOURCES = f"""
INSERT INTO sl_sources (tenant_id, platform, name, connection_type, config, status, error_message,
    sync_interval_minutes, last_sync_at, next_sync_at, committed_cursor, inflight_cursor, rate_limit_limit,
    rate_limit_remaining, rate_limit_reset_at, consecutive_failures, reconnect_by)
SELECT CASE WHEN g <= %(big)s THEN 1 ELSE 2 + (g - %(big)s - 1) / %(per_tenant)s END,
    ({PLATFORMS})[1 + mod(g, 10)],
    'Brand ' || g || ' listening',
    CASE WHEN mod(g, 3) = 0 THEN 'user' ELSE 'app' END,
    jsonb_build_object('keywords', jsonb_build_array('brand ' || g, 'brand ' || g || ' coffee'),
        'hashtags', jsonb_build_array('brand' || g), 'mentions', jsonb_build_array('brand' || g),
        'exclude', jsonb_build_array('jobs', 'free shipping'), 'languages', jsonb_build_array('en', 'es'),
        'options', '{{}}'::jsonb),
    st.status,
    CASE st.status WHEN 'failing' THEN 'HTTP 503 from the platform; retrying with backoff'
                   WHEN 'error' THEN 'the access token was revoked; reconnect: slsync connect ' || g END,
    15,
    CASE WHEN mod(g, 200) = 7 THEN NULL
         ELSE now() + make_interval(secs => mod(g * 7919, 900) - 60) - interval '15 minutes' END,
    now() + make_interval(secs => mod(g * 7919, 900) - 60),
    jsonb_build_object('since_id', (1890000000000000000 + g * 1000)::text, 'newest_seen_at', now()::text,
        'pages', 3),
    CASE WHEN mod(g, 100) = 5 THEN jsonb_build_object('next_token', md5(g::text), 'since_id',
        (1890000000000000000 + g * 1000)::text) END,
    450, CASE WHEN mod(g, 100) = 42 THEN 0 ELSE 300 END, now() + interval '10 minutes',
    CASE st.status WHEN 'failing' THEN 1 + mod(g, 5) ELSE 0 END,
    CASE WHEN mod(g, 500) = 3 THEN now() + interval '5 days' END
FROM generate_series(1, %(sources)s) AS g,
    LATERAL (SELECT CASE WHEN mod(g, 100) < 90 THEN 'active' WHEN mod(g, 100) < 94 THEN 'connected'
                         WHEN mod(g, 100) < 97 THEN 'failing' WHEN mod(g, 100) < 99 THEN 'error'
                         ELSE 'pending' END AS status) AS st
"""

RUNS = """
INSERT INTO sl_sync_runs (source_id, tenant_id, trigger, started_at, finished_at, status, pages, fetched, saved)
SELECT s.id, s.tenant_id, 'due', s.last_sync_at - make_interval(mins => 15 * (k - 1)),
    s.last_sync_at - make_interval(mins => 15 * (k - 1)) + interval '2 seconds',
    CASE WHEN s.status = 'failing' AND k = 1 THEN 'failed' ELSE 'success' END, 1, 25, 25
FROM sl_sources s, generate_series(1, %(runs)s) AS k
WHERE s.last_sync_at IS NOT NULL
"""

# Mentions arrive as a sync writes them: batches of 25 of one source, fetched in order over 30 days (the
# physical order), each published up to ~15 minutes before it was fetched. One batch in ten belongs to
# tenant 1 (so ~47,000 of its mentions fall in the last 7 days at 2,000,000). The raw payload is an X API
# v2 post with its author joined in, as the X connector stores it (~1,070 bytes of jsonb). The newest 0.1%
# are not analysed yet.
MENTIONS = f"""
INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, url, content, author_name, author_handle,
    author_followers, author_verified, published_at, likes_count, comments_count, shares_count, media_type,
    media_urls, location, language, status, sentiment, sentiment_score, intent, analyzer, analyzed_at, raw,
    fetched_at)
SELECT CASE WHEN x.s <= %(big)s THEN 1 ELSE 2 + (x.s - %(big)s - 1) / %(per_tenant)s END,
    x.s, ({PLATFORMS})[1 + mod(x.s, 10)], x.ext, 'https://x.com/' || x.handle || '/status/' || x.ext, x.text,
    x.author, x.handle, x.followers, mod(g, 20) = 0, x.published, x.likes, mod(g, 6), mod(g, 4),
    CASE WHEN mod(g, 4) = 0 THEN 'image' ELSE 'text' END,
    CASE WHEN mod(g, 4) = 0 THEN ARRAY['https://pbs.twimg.com/media/' || md5(x.ext) || '.jpg'] END,
    CASE WHEN mod(g, 3) = 0 THEN (ARRAY['Berlin', 'Lagos', 'São Paulo', 'Osaka', 'Toronto'])[1 + mod(g, 5)] END,
    'en',
    CASE WHEN x.done THEN 'processed' ELSE 'new' END,
    CASE WHEN x.done THEN (ARRAY['positive', 'negative', 'neutral'])[1 + mod(g, 3)] END,
    CASE WHEN x.done THEN round((mod(g, 200) - 100) / 100.0, 4) END,
    CASE WHEN x.done THEN (ARRAY['other', 'praise', 'question', 'complaint'])[1 + mod(g, 4)] END,
    CASE WHEN x.done THEN 'builtin' END,
    CASE WHEN x.done THEN x.fetched + interval '1 second' END,
    jsonb_build_object(
        'id', x.ext, 'text', x.text, 'author_id', x.author_id, 'created_at', x.published,
        'conversation_id', x.ext, 'lang', 'en', 'edit_history_tweet_ids', jsonb_build_array(x.ext),
        'public_metrics', jsonb_build_object('retweet_count', mod(g, 4), 'reply_count', mod(g, 6),
            'like_count', x.likes, 'quote_count', 0, 'impression_count', mod(g, 5000)),
        'entities', jsonb_build_object(
            'hashtags', jsonb_build_array(jsonb_build_object('start', 0, 'end', 10, 'tag', 'brand' || x.s)),
            'urls', jsonb_build_array(jsonb_build_object('start', 40, 'end', 63,
                'url', 'https://t.co/' || left(md5(x.ext), 10),
                'expanded_url', 'https://brand' || x.s || '.example.com/news/' || left(md5(x.ext), 12),
                'display_url', 'brand' || x.s || '.example.com/news/…'))),
        'includes', jsonb_build_object('author', jsonb_build_object(
            'id', x.author_id, 'name', x.author, 'username', x.handle, 'verified', false,
            'created_at', '2014-06-02T10:11:12.000Z', 'description', 'Coffee lover, runner, opinions my own',
            'public_metrics', jsonb_build_object('followers_count', x.followers, 'following_count', mod(g, 900),
                'tweet_count', mod(g, 40000), 'listed_count', mod(g, 30), 'like_count', mod(g, 9000))),
            'media', '[]'::jsonb, 'place', NULL)),
    x.fetched
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g,
    LATERAL (SELECT (g - 1) / 25 AS b) AS bb,
    LATERAL (SELECT CASE WHEN mod(hashint8(bb.b) & 2147483647, 10) = 0
                         THEN 1 + mod(hashint8(bb.b + 7) & 2147483647, %(big)s)
                         ELSE %(big)s + 1 + mod(hashint8(bb.b + 7) & 2147483647, %(sources)s - %(big)s) END AS s,
                    now() - make_interval(secs => (%(batches)s - bb.b) * 2592000.0 / %(batches)s) AS fetched) AS f,
    LATERAL (SELECT f.s, f.fetched, (1890000000000000000 + g)::text AS ext,
        f.fetched - make_interval(secs => mod(g, 25) * 30 + mod(hashint8(g) & 2147483647, 60)) AS published,
        replace((ARRAY[
            'Loving the new {{kw}}! Best thing I bought this year.',
            '{{kw}} support sorted my problem in five minutes. Impressed.',
            'Just tried {{kw}} and wow, I highly recommend it to everyone at work.',
            '{{kw}} app keeps crashing after the update. Really frustrating.',
            'Still waiting on my {{kw}} refund, three weeks now. Terrible service.',
            'Why is {{kw}} so expensive lately? Disappointed with the new pricing.',
            'Has anyone compared {{kw}} with the alternatives? Looking for advice.',
            '{{kw}} announced new opening hours today, see the thread below.',
            'Where can I buy {{kw}} in Berlin? Asking for a friend who needs it.'
        ])[1 + mod(g, 9)], '{{kw}}', 'Brand ' || f.s) AS text,
        'Author ' || mod(g, 50000) AS author, 'author_' || mod(g, 50000) AS handle,
        (20000000 + mod(g, 50000))::text AS author_id, mod(g * 37, 100000) AS followers, mod(g, 40) AS likes,
        g <= %(mentions)s - %(mentions)s / 1000 AS done) AS x
"""

COUNTS = """
UPDATE sl_sources s SET mentions_count = c.n
FROM (SELECT source_id, count(*) AS n FROM sl_mentions GROUP BY source_id) AS c WHERE c.source_id = s.id
"""


def generate(conn: Any, args: argparse.Namespace) -> None:
    per_tenant = -(-(args.sources - BIG_TENANT_SOURCES) // (args.tenants - 1))
    batches = -(-args.mentions // 25)
    params = {
        "sources": args.sources, "big": BIG_TENANT_SOURCES, "per_tenant": per_tenant, "runs": 3,
        "mentions": args.mentions, "batches": batches,
    }  # fmt: skip
    step("sources", lambda: conn.execute(SOURCES, params))
    found = conn.execute("SELECT min(id) AS lo, max(id) AS hi, max(tenant_id) AS t FROM sl_sources").fetchone()
    assert found["lo"] == 1 and found["hi"] == args.sources, "source ids must be 1..N"
    step(f"run log (3 runs a source), {found['t']:,} tenants", lambda: conn.execute(RUNS, params))
    conn.execute("SET session_replication_role = replica")  # the sources exist: skip the foreign-key triggers
    chunk = 250_000
    for lo in range(1, args.mentions + 1, chunk):
        hi = min(lo + chunk - 1, args.mentions)
        step(f"mentions {lo:,}..{hi:,}", lambda lo=lo, hi=hi: conn.execute(MENTIONS, {**params, "lo": lo, "hi": hi}))
    conn.execute("SET session_replication_role = DEFAULT")
    step("sl_sources.mentions_count", lambda: conn.execute(COUNTS))
    step("VACUUM ANALYZE, CHECKPOINT", lambda: (conn.execute("VACUUM ANALYZE"), conn.execute("CHECKPOINT")))


def step(label: str, action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return seconds


# --- measuring ----------------------------------------------------------------------------------------------


@dataclass
class Code:
    """One version of slsync: its source folder (PYTHONPATH) and how it is named in the table."""

    label: str
    root: Path

    def env(self, base: dict[str, str]) -> dict[str, str]:
        return {**base, "PYTHONPATH": str(self.root)}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slsync", *args]

    def probe(self, base: dict[str, str], name: str, url: str, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(PROBE), name, url, *args],
            env=self.env(base), capture_output=True, text=True, check=False,
        )  # fmt: skip
        sys.stderr.write(done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"probe {name} failed under {self.label} ({done.returncode})")
        return json.loads(done.stdout)


@dataclass
class Run:
    wall: float
    rss: float
    out_bytes: int
    wal: int
    temp: int
    cpu: float  # slsync's CPU seconds (with its worker processes)
    server_cpu: float  # PostgreSQL's: its backends that ended meanwhile (the command's own among them)
    stdout: str = ""


@dataclass
class Phase:
    """What one version measured."""

    code: Code
    runs: dict[str, list[Run]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)

    def median(self, key: str, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs[key])


class Bench:
    def __init__(self, url: str, base_env: dict[str, str], work: Path, repeat: int) -> None:
        self.url, self.base_env, self.work, self.repeat = url, base_env, work, repeat
        self.conn = connect(url)
        self.conn.execute("SET TIME ZONE 'UTC'")

    def lsn(self) -> str:
        return self.conn.execute("SELECT pg_current_wal_lsn() AS l").fetchone()["l"]

    def wal_since(self, lsn: str) -> int:
        return int(self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s) AS d", (lsn,)).fetchone()["d"])

    def temp_bytes(self) -> int:
        # the backend of a finished command reports its counters as it exits; give it a moment
        time.sleep(0.5)
        row = self.conn.execute("SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row["temp_bytes"])

    def server_cpu(self) -> float:
        """CPU seconds of the PostgreSQL backends that have ended so far (the postmaster reaps them), or 0
        where the server's processes cannot be read (another machine)."""
        try:
            directory = self.conn.execute("SHOW data_directory").fetchone()["data_directory"]
            postmaster = Path(directory, "postmaster.pid").read_text().split()[0]
            fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, psycopg.Error):
            return 0.0
        return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime

    def cli(self, code: Code, *args: str, output: Path | None = None) -> Run:
        temp, lsn, server = self.temp_bytes(), self.lsn(), self.server_cpu()
        wall, rss, exit_code, stdout, cpu = measure_cpu(code.command(*args), code.env(self.base_env), self.work)
        if exit_code != 0:
            raise SystemExit(f"slsync {' '.join(args)} exited {exit_code} under {code.label}")
        out = output.stat().st_size if output else len(stdout.encode())
        server_cpu = self.server_cpu() - server
        return Run(wall, rss, out, self.wal_since(lsn), self.temp_bytes() - temp, cpu, server_cpu, stdout)

    def repeat_cli(self, phase: Phase, key: str, *args: str, times: int | None = None) -> None:
        runs = []
        for _ in range(times or self.repeat):
            runs.append(self.cli(phase.code, *args))
            runs[-1].stdout = ""  # its size is kept; the benchmark need not hold 60 MB of JSON
            print(f"    {key}: {runs[-1].wall:.2f} s, {runs[-1].rss:.0f} MB", flush=True)
        phase.runs[key] = runs

    def export(self, phase: Phase) -> None:
        runs = []
        target = self.work / "export.jsonl"
        for _ in range(self.repeat):
            run = self.cli(phase.code, "mentions", "export", "--output", str(target), output=target)
            with target.open("rb") as f:
                run.stdout = str(sum(1 for _ in f))
            target.unlink()
            runs.append(run)
            rate = int(run.stdout) / run.wall
            print(f"    export: {run.wall:.1f} s, {rate:,.0f} rows/s, temp {run.temp / 1e6:,.0f} MB", flush=True)
        phase.runs["export"] = runs

    def analyze(self, phase: Phase, backlog: int) -> None:
        """`analyze` of a fresh backlog each time: the newest `backlog` mentions reset to new, vacuumed,
        then a checkpoint, so that every run starts from the same state (the same full-page images)."""
        runs = []
        for _ in range(self.repeat):
            self.conn.execute(
                "UPDATE sl_mentions SET status = 'new', sentiment = NULL, sentiment_score = NULL, intent = NULL,"
                " analyzer = NULL, analyzed_at = NULL WHERE id > (SELECT max(id) FROM sl_mentions) - %s",
                (backlog,),
            )
            self.conn.execute("VACUUM ANALYZE sl_mentions")
            self.conn.execute("CHECKPOINT")
            run = self.cli(phase.code, "analyze", "--limit", str(backlog), "--json")
            run.stdout = str(json.loads(run.stdout)["analyzed"])
            runs.append(run)
            rate = int(run.stdout) / run.wall
            print(f"    analyze: {run.wall:.1f} s, {rate:,.0f} rows/s, WAL {run.wal / 1e6:,.0f} MB", flush=True)
        phase.runs["analyze"] = runs

    def sizes(self) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM sl_mentions) AS mentions,"
            " pg_relation_size('sl_mentions') AS heap,"
            " pg_table_size('sl_mentions') - pg_relation_size('sl_mentions') AS toast,"
            " pg_indexes_size('sl_mentions') AS indexes,"
            " coalesce(pg_total_relation_size(to_regclass('sl_mention_raw')), 0) AS raw_table"
        ).fetchone()
        row["per_mention"] = (row["heap"] + row["toast"] + row["indexes"] + row["raw_table"]) / row["mentions"]
        row["mentions_row"] = (row["heap"] + row["toast"] + row["indexes"]) / row["mentions"]
        return dict(row)

    def raw_checksum(self) -> dict[str, Any]:
        """How many mentions and raw payloads, and an order-independent checksum of every (id, payload)."""
        digest = "sum(('x' || left(md5({id}::text || ':' || raw::text), 15))::bit(60)::bigint)"
        has_column = self.conn.execute(
            "SELECT count(*) AS n FROM information_schema.columns"
            " WHERE table_name = 'sl_mentions' AND column_name = 'raw'"
        ).fetchone()["n"]
        parts = []
        if has_column:
            parts.append(f"SELECT count(raw) AS n, {digest.format(id='id')} AS s FROM sl_mentions")
        if self.conn.execute("SELECT to_regclass('sl_mention_raw') AS t").fetchone()["t"]:
            parts.append(f"SELECT count(*) AS n, {digest.format(id='mention_id')} AS s FROM sl_mention_raw")
        row = self.conn.execute(
            f"SELECT (SELECT count(*) FROM sl_mentions) AS mentions, sum(n) AS payloads, sum(s) AS checksum"
            f" FROM ({' UNION ALL '.join(parts)}) AS p"
        ).fetchone()
        return {k: int(v or 0) for k, v in row.items()}


def measure_phase(bench: Bench, phase: Phase, args: argparse.Namespace) -> None:
    code = phase.code
    print(f"\n{code.label}: measuring ({code.root})", flush=True)
    phase.sizes = bench.sizes()
    bench.repeat_cli(phase, "status_json", "status", "--json")
    bench.repeat_cli(phase, "status_table", "status", times=args.table_repeat)
    bench.repeat_cli(phase, "status_tenant", "status", "--tenant", "1", "--json")
    phase.probes["breakdown"] = code.probe(bench.base_env, "breakdown", bench.url, "1")
    phase.probes["claims"] = code.probe(bench.base_env, "claim_release", bench.url)
    bench.repeat_cli(phase, "list", "mentions", "list", "--limit", "20", "--json")
    phase.probes["list"] = code.probe(bench.base_env, "mentions_list", bench.url)
    bench.export(phase)
    bench.analyze(phase, args.backlog)


def baseline_tree(ref: str, into: Path) -> Path:
    """The baseline's slsync/ and sql/ (what PYTHONPATH needs), exported from git without touching the checkout."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "slsync", "sql"], capture_output=True, check=True)
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def check_disk(path: Path, mentions: int) -> None:
    need = mentions * BYTES_PER_MENTION
    free = shutil.disk_usage(path).free
    print(f"disk: {free / 1e9:,.0f} GB free at {path}; this run needs about {need / 1e9:,.1f} GB")
    if free < need * 1.5 + 10e9:
        raise SystemExit(f"not enough free disk for {mentions:,} mentions: need {need * 1.5 / 1e9 + 10:,.0f} GB free")


# --- the report ----------------------------------------------------------------------------------------------


def report(before: Phase, after: Phase, migration: dict[str, Any], args: argparse.Namespace) -> None:
    b, a = before, after
    rows: list[Sequence[Any]] = []

    def add(what: str, old: float | str, new: float | str, unit: str, target: str = "", ok: bool | None = None) -> None:
        # how many times better: smaller for times, sizes and WAL, larger for rates
        numbers = isinstance(old, float | int) and isinstance(new, float | int) and old and new
        change = f"{(new / old if unit == 'rows/s' else old / new):,.1f}x" if numbers else ""
        rows.append((what, _fmt(old, unit), _fmt(new, unit), change, target, "" if ok is None else verdict(ok)))

    n = f"{args.sources:,}"
    for key, label, wall_limit, rss_limit in (
        ("status_json", f"status --json ({n} sources)", 1.5, 150),
        ("status_table", f"status (table, {n} sources)", 2.0, None),
    ):
        wall, rss = a.median(key, "wall"), a.median(key, "rss")
        add(f"{label}: wall", b.median(key, "wall"), wall, "s", f"< {wall_limit} s", wall < wall_limit)
        rss_ok = None if rss_limit is None else rss < rss_limit
        add(f"{label}: peak RSS", b.median(key, "rss"), rss, "MB", f"< {rss_limit} MB" if rss_limit else "", rss_ok)
        add(f"{label}: output", b.median(key, "out_bytes") / 1e6, a.median(key, "out_bytes") / 1e6, "MB")
    claims_b, claims_a = b.probes["claims"], a.probes["claims"]
    add("sync due: claim_due(50)", claims_b["claim_ms"], claims_a["claim_ms"], "ms")
    add(
        "sync due: releasing the claims (after the runs)", claims_b["release_ms"], claims_a["release_ms"], "ms",
        "< 1 ms", claims_a["release_ms"] < 1,
    )  # fmt: skip
    add(f"  with all {claims_a['claimed']} still held (a run cut short)", claims_b["release_held_ms"],
        claims_a["release_held_ms"], "ms")  # fmt: skip
    add("  releasing: plan", claims_b["plan"], claims_a["plan"], "")
    add("mentions list --limit 20: query", b.probes["list"]["ms"], a.probes["list"]["ms"], "ms", "< 50 ms",
        a.probes["list"]["ms"] < 50)  # fmt: skip
    add("  query plan", b.probes["list"]["plan"], a.probes["list"]["plan"], "")
    add("mentions export: plan", b.probes["list"]["export_plan"], a.probes["list"]["export_plan"], "")
    add("mentions list --limit 20: command wall", b.median("list", "wall"), a.median("list", "wall"), "s")
    rows_b, rows_a = (int(p.runs["export"][0].stdout) for p in (b, a))
    rate_b = rows_b / b.median("export", "wall")
    rate_a = rows_a / a.median("export", "wall")
    add(f"mentions export (all {rows_a:,}): wall", b.median("export", "wall"), a.median("export", "wall"), "s")
    add("mentions export: rows/s", rate_b, rate_a, "rows/s", ">= 100,000", rate_a >= 100_000)
    add("mentions export: CPU s, slsync + PostgreSQL", *(cpu_split(p, "export") for p in (b, a)), "")
    temp_a = a.median("export", "temp")
    add("mentions export: temporary files", b.median("export", "temp") / 1e6, temp_a / 1e6, "MB", "none", temp_a == 0)
    add("mentions export: peak RSS", b.median("export", "rss"), a.median("export", "rss"), "MB")
    bd_b, bd_a = b.probes["breakdown"], a.probes["breakdown"]
    add(
        f"status --tenant 1 ({bd_a['sources']} sources, {bd_a['mentions']:,} mentions in 7 days): wall",
        b.median("status_tenant", "wall"), a.median("status_tenant", "wall"), "s",
    )  # fmt: skip
    add("  its breakdown query", bd_b["ms"], bd_a["ms"], "ms")

    def plan(p: dict[str, Any]) -> str:
        return f"{p['plan']} ({p['buffers']:,} buffers)"

    add("  its plan", plan(bd_b), plan(bd_a), "")
    add("  the same read from the table (no index-only scan)", bd_b["heap_ms"], bd_a["heap_ms"], "ms")
    add("  its plan", plan(bd_b["heap_plan"]), plan(bd_a["heap_plan"]), "")
    labelled = int(a.runs["analyze"][0].stdout)
    wall_b, wall_a = b.median("analyze", "wall"), a.median("analyze", "wall")
    wal_b, wal_a = b.median("analyze", "wal"), a.median("analyze", "wal")
    add(f"analyze ({labelled:,} backlog): wall", wall_b, wall_a, "s", ">= 1.5x faster", wall_b / wall_a >= 1.5)
    add("analyze: rows/s", labelled / wall_b, labelled / wall_a, "rows/s")
    add("analyze: CPU s, slsync + PostgreSQL", *(cpu_split(p, "analyze") for p in (b, a)), "")
    add("analyze: WAL", wal_b / 1e6, wal_a / 1e6, "MB", ">= 2x less", wal_b / wal_a >= 2)
    add("analyze: WAL per 1,000 labels", wal_b / labelled * 1000 / 1e6, wal_a / labelled * 1000 / 1e6, "MB")
    sb, sa = b.sizes, a.sizes
    add("bytes per mention (sl_mentions + indexes + sl_mention_raw)", sb["per_mention"], sa["per_mention"], "B")
    add("  of which sl_mentions and its indexes", sb["mentions_row"], sa["mentions_row"], "B")
    if "compacted" in migration:
        sc = migration["compacted"]
        add("  after VACUUM FULL sl_mentions (optional)", sb["per_mention"], sc["per_mention"], "B")
        add("    sl_mentions and its indexes", sb["mentions_row"], sc["mentions_row"], "B")

    title = f"scale: {args.sources:,} sources, {args.tenants:,} tenants, {rows_a:,} mentions (median of {args.repeat})"
    headers = ("measure", f"before ({b.code.label})", f"after ({a.code.label})", "change", "target", "")
    print(table(headers, rows, title))
    print(
        f"\nmigration (the new migrations on the baseline's database): {migration['seconds']:.1f} s;"
        f" {', '.join(migration['applied'])}"
    )
    print(f"raw payloads before: {migration['before']}; after: {migration['after']} -> "
          f"{'identical' if migration['before'] == migration['after'] else 'DIFFERENT'}")  # fmt: skip
    if "compaction_seconds" in migration:
        seconds = migration["compaction_seconds"]
        print(f"VACUUM FULL sl_mentions afterwards (optional, locks the table): {seconds:.1f} s")


def cpu_split(phase: Phase, key: str) -> str:
    return f"{phase.median(key, 'cpu'):.1f} + {phase.median(key, 'server_cpu'):.1f}"


def _fmt(value: Any, unit: str) -> str:
    if isinstance(value, str):
        return value
    if unit == "ms":
        return f"{value:,.2f} ms" if value < 10 else f"{value:,.0f} ms"
    if unit == "s":
        return f"{value:,.2f} s" if value < 10 else f"{value:,.1f} s"
    if unit in ("rows/s", "B"):
        return f"{value:,.0f}" + (" B" if unit == "B" else "")
    return f"{value:,.1f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=100_000, help="sources (default 100,000)")
    parser.add_argument("--tenants", type=int, default=5_000, help="tenants the sources are spread over")
    parser.add_argument("--mentions", type=int, default=2_000_000, help="mentions (default 2,000,000)")
    parser.add_argument("--backlog", type=int, default=200_000, help="mentions `analyze` labels each run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the median is reported")
    parser.add_argument("--table-repeat", type=int, default=None, help="runs of the status table (default --repeat)")
    parser.add_argument("--baseline-ref", default=BASELINE, help=f"the code before (default {BASELINE})")
    parser.add_argument("--no-compact", action="store_true", help="skip the VACUUM FULL after the measurements")
    args = parser.parse_args()
    args.table_repeat = args.table_repeat or args.repeat

    with tempfile.TemporaryDirectory(prefix="slsync-scale-") as tmp, postgres() as admin:
        work = Path(tmp)
        check_disk(work, args.mentions)
        before = Phase(Code(f"{args.baseline_ref}", baseline_tree(args.baseline_ref, work / "baseline")))
        after = Phase(Code(revision().removeprefix("slsync "), REPO))
        name = f"slsync_scale_{os.getpid()}"
        with connect(admin) as c:
            c.execute(f"CREATE DATABASE {name}")
        url = with_db(admin, name)
        try:
            print(machine(url))
            base_env = cli_env(url, work / "data")
            (work / "cwd").mkdir()
            # the baseline's own migrations make the "before" schema
            before.code.probe(base_env, "migrate", url)
            started = time.perf_counter()
            with connect(url) as conn:
                generate(conn, args)
            print(f"generated in {time.perf_counter() - started:.0f} s")
            bench = Bench(url, base_env, work / "cwd", args.repeat)
            measure_phase(bench, before, args)

            print("\nmigrating to this checkout's schema", flush=True)
            migration: dict[str, Any] = {"before": bench.raw_checksum()}
            migration.update(after.code.probe(base_env, "migrate", url))
            migration["after"] = bench.raw_checksum()
            step("VACUUM ANALYZE", lambda: bench.conn.execute("VACUUM ANALYZE"))
            measure_phase(bench, after, args)
            if not args.no_compact:
                migration["compaction_seconds"] = step(
                    "VACUUM FULL sl_mentions", lambda: bench.conn.execute("VACUUM FULL sl_mentions")
                )
                migration["compacted"] = bench.sizes()
            bench.conn.close()
            report(before, after, migration, args)
        finally:
            with connect(admin) as c:
                c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
