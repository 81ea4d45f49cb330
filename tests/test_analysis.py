"""Sentiment and intent: the built-in analyzer on hand-checked mentions, plug-ins, crashes and
concurrent analyzers, and reading the data back out (list, export)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from slsync import analysis, db
from slsync.analysis import LexiconAnalyzer, Text
from slsync.connectors.mock import NEGATIVE, NEUTRAL, POSITIVE
from tests.conftest import Cli, add_mock_source

# (text, language, sentiment, intent), each checked by hand
HAND_CHECKED = [
    ("Loving the new Acme Coffee! Best thing I bought this year.", "en", "positive", "praise"),
    ("Acme Coffee support sorted my problem in five minutes. Impressed.", "en", "positive", "praise"),
    ("Just tried Acme Coffee and wow, I highly recommend it.", "en", "positive", "praise"),
    ("Shout-out to Acme Coffee for the fast delivery, great service!", "en", "positive", "praise"),
    ("Acme Coffee keeps getting better. Excellent update.", "en", "positive", "praise"),
    ("Acme Coffee app keeps crashing after the update. Really frustrating.", "en", "negative", "complaint"),
    ("Still waiting on my Acme Coffee refund, three weeks now. Terrible service.", "en", "negative", "complaint"),
    ("Why is Acme Coffee so expensive lately? Disappointed.", "en", "negative", "complaint"),
    ("My Acme Coffee order arrived broken. Not happy at all.", "en", "negative", "complaint"),
    ("Acme Coffee customer service hung up on me twice. Awful.", "en", "negative", "complaint"),
    ("Has anyone compared Acme Coffee with the alternatives?", "en", "neutral", "question"),
    ("Acme Coffee announced new opening hours today.", "en", "neutral", "other"),
    ("Reading about the Acme Coffee pricing change this morning.", "en", "neutral", "other"),
    ("Is Acme Coffee available in Canada yet?", "en", "neutral", "purchase_intent"),
    ("Where can I buy Acme Coffee in Berlin?", "en", "neutral", "purchase_intent"),
    ("@acmecoffee please help, I can't log in to my account since this morning", None, "positive", "support_request"),
    ("The Acme app is not working again. Any update on my ticket?", "en-GB", "neutral", "support_request"),
    ("How much is the new Acme grinder? Thinking of buying one.", "en", "neutral", "purchase_intent"),
    ("Thanks Acme, the new roast is fantastic", None, "positive", "praise"),
    ("What time does the Acme store on Main Street open?", "en", "neutral", "question"),
]
NOT_ENGLISH = [
    ("¡Me encanta el café de Acme! El mejor.", "es"),
    ("أحب قهوة أكمي، أفضل قهوة", None),
    ("Acmeのコーヒーは最高です", None),
    ("Кофе Acme просто ужасен", "ru"),
    ("", "en"),
]


@pytest.fixture(scope="module")
def builtin() -> LexiconAnalyzer:
    return LexiconAnalyzer()


def test_the_built_in_analyzer_labels_hand_checked_english_mentions(builtin: LexiconAnalyzer) -> None:
    texts = [Text(n, text, lang) for n, (text, lang, _, _) in enumerate(HAND_CHECKED)]
    results = builtin.analyze(texts)
    got = [(r.sentiment, r.intent) for r in results]
    assert got == [(sentiment, intent) for _, _, sentiment, intent in HAND_CHECKED]
    assert all(r.sentiment_score is not None and -1 <= r.sentiment_score <= 1 for r in results)


def test_every_mock_template_gets_its_tone(builtin: LexiconAnalyzer) -> None:
    for tone, templates in (("positive", POSITIVE), ("negative", NEGATIVE), ("neutral", NEUTRAL)):
        for template in templates:
            for brand in ("Acme", "Blue Bottle Coffee", "#acme"):
                [result] = builtin.analyze([Text(1, template.format(kw=brand), "en")])
                assert result.sentiment == tone, template


def test_text_it_cannot_judge_is_unknown_not_a_guess(builtin: LexiconAnalyzer) -> None:
    results = builtin.analyze([Text(n, text, lang) for n, (text, lang) in enumerate(NOT_ENGLISH)])
    assert all((r.sentiment, r.sentiment_score, r.intent) == ("unknown", None, "unknown") for r in results)


# --- through the database and the CLI ---------------------------------------------------------------


def labels(conn: db.Connection) -> list[dict]:
    return conn.execute(
        "SELECT id, status, sentiment, sentiment_score, intent, analyzer, analyzed_at FROM sl_mentions ORDER BY id"
    ).fetchall()


def assert_all_or_nothing(rows: list[dict]) -> None:
    for row in rows:
        if row["status"] == "new":
            assert (row["sentiment"], row["intent"], row["analyzer"], row["analyzed_at"]) == (None, None, None, None)
        else:
            assert row["status"] == "processed" and row["sentiment"] and row["intent"] and row["analyzer"]


def test_a_sync_labels_what_it_saved_and_status_shows_the_breakdown(cli: Cli, conn) -> None:
    source_id = add_mock_source(conn)
    result = cli.ok("sync", "source", str(source_id), "--json").json()
    assert result["analysis"] == {"analyzer": "builtin", "analyzed": result["mentions_saved"], "error": None}
    rows = labels(conn)
    assert rows and all(r["status"] == "processed" for r in rows)
    breakdown = cli.ok("status", str(source_id), "--json").json()["stats"]["sentiment_7d"]
    assert set(breakdown) == {"positive", "negative", "neutral"}
    assert sum(breakdown.values()) == result["mentions_saved"]
    assert min(breakdown.values()) > result["mentions_saved"] / 5  # the mock's three tones, about a third each


def write_plugin(folder: Path, body: str, name: str = "testplug") -> dict[str, str]:
    """A package with an entry point in the group slsync.analyzers, found on PYTHONPATH."""
    package = folder / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(body))
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[slsync.analyzers]\n{name} = {name}:Plugin\n")
    return {"PYTHONPATH": str(folder), "SLSYNC_ANALYZER": name}


PLUGIN = """
    import os, time
    from slsync.analysis import Analysis

    class Plugin:
        name = "testplug"

        def analyze(self, texts):
            if os.environ.get("PLUGIN_FAIL"):
                raise RuntimeError("the model service is down")
            time.sleep(float(os.environ.get("PLUGIN_DELAY", "0")))
            with open(os.environ["PLUGIN_LOG"], "a") as log:
                log.write("".join(f"{t.id}\\n" for t in texts))
            return [Analysis("positive", 0.5, "praise") for _ in texts]
"""


def test_a_plugin_registered_by_another_package_replaces_the_built_in(cli: Cli, conn, tmp_path: Path) -> None:
    env = {**write_plugin(tmp_path / "plugins", PLUGIN), "PLUGIN_LOG": str(tmp_path / "seen.log")}
    source_id = add_mock_source(conn)
    cli.ok("mock", str(source_id), "--count", "30")
    doc = cli.ok("analyze", "--json", env=env).json()
    assert doc == {"analyzer": "testplug", "analyzed": 30, "error": None, "remaining": 0}
    assert {(r["analyzer"], r["sentiment"], r["intent"]) for r in labels(conn)} == {("testplug", "positive", "praise")}
    unknown = cli("analyze", env={"SLSYNC_ANALYZER": "nope"})
    assert unknown.returncode == 1 and "no analyzer named 'nope'" in unknown.stdout + unknown.stderr


def test_a_failing_analyzer_leaves_mentions_new_and_never_blocks_ingestion(cli: Cli, conn, tmp_path: Path) -> None:
    env = {**write_plugin(tmp_path / "plugins", PLUGIN), "PLUGIN_LOG": str(tmp_path / "seen.log"), "PLUGIN_FAIL": "1"}
    source_id = add_mock_source(conn)
    synced = cli("sync", "source", str(source_id), "--json", env=env)
    assert synced.returncode == 0  # ingestion went through
    doc = synced.json()
    assert doc["mentions_saved"] > 1000 and "the model service is down" in doc["analysis"]["error"]
    assert {r["status"] for r in labels(conn)} == {"new"}
    failed = cli("analyze", env=env)
    assert failed.returncode == 1 and "the model service is down" in failed.stdout
    assert_all_or_nothing(labels(conn))


def test_a_crash_mid_analysis_leaves_nothing_half_done_and_concurrent_analyzers_share_the_work(
    cli: Cli, conn, tmp_path: Path
) -> None:
    env = write_plugin(tmp_path / "plugins", PLUGIN)
    source_id = add_mock_source(conn)
    cli.ok("mock", str(source_id), "--count", "3000")
    killed = subprocess.Popen(
        cli.command("analyze"), env={**cli.env, **env, "PLUGIN_DELAY": "0.3", "PLUGIN_LOG": str(tmp_path / "k.log")},
        cwd=cli.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(r["status"] == "processed" for r in labels(conn)):
        time.sleep(0.05)
    time.sleep(0.15)  # into the next batch
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(10)
    rows = labels(conn)
    assert_all_or_nothing(rows)
    done_before = {r["id"] for r in rows if r["status"] == "processed"}
    assert 0 < len(done_before) < 3000 and len(done_before) % 1000 == 0  # whole batches only

    logs = [tmp_path / f"a{n}.log" for n in range(2)]
    runners = [
        subprocess.Popen(cli.command("analyze", "--json"), env={**cli.env, **env, "PLUGIN_LOG": str(log)},
                         cwd=cli.cwd, stdout=subprocess.PIPE, text=True)
        for log in logs
    ]  # fmt: skip
    reports = [json.loads(p.communicate(timeout=60)[0]) for p in runners]
    seen = [{int(line) for line in log.read_text().split()} if log.exists() else set() for log in logs]
    assert not seen[0] & seen[1]  # no mention analysed by both
    assert seen[0] | seen[1] == {r["id"] for r in rows} - done_before  # and none of the first run's again
    assert sum(r["analyzed"] for r in reports) == 3000 - len(done_before)
    assert {r["status"] for r in labels(conn)} == {"processed"}


def test_mentions_list_and_export(cli: Cli, conn, tmp_path: Path) -> None:
    one = add_mock_source(conn, name="one")
    two = add_mock_source(conn, name="two", tenant_id=2)
    cli.ok("sync", "source", str(one))
    cli.ok("mock", str(two), "--count", "5")
    listed = cli.ok("mentions", "list", "--source", str(one), "--limit", "3", "--json").json()["mentions"]
    assert len(listed) == 3 and listed[0]["published_at"] >= listed[1]["published_at"]
    assert all(m["sentiment"] in ("positive", "negative", "neutral") for m in listed)
    assert "Acme" in cli.ok("mentions", "list", "--tenant", "1").stdout

    jsonl = cli.ok("mentions", "export", "--format", "jsonl", "--tenant", "2").stdout.splitlines()
    assert len(jsonl) == 5 and all(json.loads(line)["tenant_id"] == 2 for line in jsonl)
    out = tmp_path / "one.csv"
    cli.ok("mentions", "export", "--format", "csv", "--source", str(one), "--output", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == db.get_source(conn, one).mentions_count and rows[0]["platform"] == "mock"
    assert cli("mentions", "export", "--format", "xml").returncode == 2


def test_exporting_100000_mentions_streams_with_flat_memory(cli: Cli, conn, tmp_path: Path) -> None:
    source_id = add_mock_source(conn)
    conn.execute(
        "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, content, published_at)"
        " SELECT 1, %s, 'mock', 'bulk-' || n, repeat('Acme is great ', 20), now() - make_interval(secs => n)"
        " FROM generate_series(1, 100000) AS n",
        (source_id,),
    )

    def peak_rss_mb(*args: str) -> float:
        process = subprocess.Popen(cli.command(*args), env=cli.env, cwd=cli.cwd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_maxrss / 1024

    small = peak_rss_mb("mentions", "export", "--format", "jsonl", "--since", "2999-01-01")
    large = peak_rss_mb("mentions", "export", "--format", "jsonl", "--output", str(tmp_path / "all.jsonl"))
    assert sum(1 for _ in (tmp_path / "all.jsonl").open()) == 100_000
    assert large - small < 40, f"{large:.0f} MB for 100,000 rows against {small:.0f} MB for none"


def test_analyzers_are_found_by_entry_point_name() -> None:
    with pytest.raises(analysis.UsageError, match="no analyzer named"):
        analysis.load("no-such-analyzer")
    assert isinstance(analysis.load("builtin"), LexiconAnalyzer)
