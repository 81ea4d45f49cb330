"""Monitoring for cron: the Prometheus metrics file written after every command (read back with prometheus_client's
own parser and compared with the command's JSON), and the healthcheck pings of `sync due` (a stand-in receives
them; a dead or hanging one never fails the sync)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from slsync import db
from tests.conftest import Cli, add_mock_source
from tests.fakes.serving import base_url, serve, shutdown


def samples(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the file by name, each keyed by its sorted labels."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def of_source(found: dict[str, Any], name: str, source_id: int) -> float:
    values = [v for labels, v in found[name].items() if ("source", str(source_id)) in labels]
    assert len(values) == 1, (name, source_id, found.get(name))
    return values[0]


def test_the_metrics_file_after_sync_due_says_what_its_json_says(cli: Cli, conn: db.Connection, tmp_path: Path) -> None:
    good = add_mock_source(conn, name="good")
    bad = add_mock_source(conn, name="bad", fail_after_page=0, fail_with="fatal")
    metrics = tmp_path / "textfile" / "slsync.prom"
    cli.env["SLSYNC_METRICS_FILE"] = str(metrics)
    result = cli("sync", "due", "--json")
    assert result.returncode == 1, result.stderr  # the bad source failed
    doc = result.json()
    found = samples(metrics)
    # per command
    assert found["slsync_command_exit_code"] == {(("command", "sync due"),): 1.0}
    assert found["slsync_command_duration_seconds"][(("command", "sync due"),)] > 0
    for outcome in ("synced", "failed", "cut_short", "skipped", "claimed"):
        key = (("command", "sync due"), ("outcome", outcome))
        assert found["slsync_sync_sources"][key] == doc[f"sources_{outcome}"], outcome
    assert doc["sources_synced"] == 1 and doc["sources_failed"] == 1
    assert found["slsync_sync_mentions_saved"][(("command", "sync due"),)] == doc["total_mentions_saved"] > 0
    # per source, each matching its result
    for r in doc["results"]:
        sid = r["source_id"]
        assert of_source(found, "slsync_source_last_run_mentions_saved", sid) == r["mentions_saved"]
        assert of_source(found, "slsync_source_last_run_success", sid) == (1.0 if r["success"] else 0.0)
        assert abs(of_source(found, "slsync_source_last_run_duration_seconds", sid) - r["duration_ms"] / 1000) < 1.0
    stored = {r["id"]: r for r in conn.execute("SELECT id, mentions_count, last_sync_at, consecutive_failures,"
                                               " status FROM sl_sources").fetchall()}  # fmt: skip
    assert of_source(found, "slsync_source_mentions", good) == stored[good]["mentions_count"]
    assert of_source(found, "slsync_source_last_success_timestamp_seconds", good) == pytest.approx(
        stored[good]["last_sync_at"].timestamp(), abs=0.01
    )
    assert of_source(found, "slsync_source_consecutive_failures", bad) == 1
    assert ("status", "failing") in next(k for k in found["slsync_source_status"] if ("source", str(bad)) in k)
    assert "slsync_source_last_success_timestamp_seconds" not in found or not [
        k for k in found["slsync_source_last_success_timestamp_seconds"] if ("source", str(bad)) in k
    ]  # never succeeded: left out, not 0
    assert found["slsync_database_up"] == {(): 1.0}

    # another command: its own series, and those of sync due kept as they were
    cli.ok("status")
    after = samples(metrics)
    assert after["slsync_command_exit_code"] == {(("command", "sync due"),): 1.0, (("command", "status"),): 0.0}
    assert after["slsync_sync_sources"] == found["slsync_sync_sources"]
    assert not list(metrics.parent.glob("slsync.prom.*")), "a temporary file was left behind"


def test_an_unwritable_metrics_file_is_one_warning_and_changes_no_exit_code(
    cli: Cli, conn: db.Connection, tmp_path: Path
) -> None:
    add_mock_source(conn)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("sync", "due", env={"SLSYNC_METRICS_FILE": str(blocker / "slsync.prom")})
    assert result.returncode == 0
    assert "slsync: warning: the metrics file" in result.stderr and "was not written" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_the_database_the_sources_metrics_of_before_stay(cli: Cli, conn: db.Connection, tmp_path: Path) -> None:
    source = add_mock_source(conn)
    metrics = tmp_path / "slsync.prom"
    cli.env["SLSYNC_METRICS_FILE"] = str(metrics)
    cli.ok("sync", "due")
    before = samples(metrics)
    down = cli("status", env={"SLSYNC_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert down.returncode == 1
    after = samples(metrics)
    assert after["slsync_database_up"] == {(): 0.0}
    assert of_source(after, "slsync_source_mentions", source) == of_source(before, "slsync_source_mentions", source)
    assert after["slsync_command_exit_code"][(("command", "status"),)] == 1.0


# --- healthchecks -------------------------------------------------------------------------------------------


class Pings:
    """A healthchecks.io stand-in: records each ping's path, run id and body; can hang."""

    def __init__(self, delay: float = 0.0) -> None:
        self.received: list[tuple[str, str, str]] = []
        self.delay = delay
        pings = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                time.sleep(pings.delay)
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                pings.received.append((path, query, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = serve(Handler)
        self.url = base_url(self.server) + "/ping/0b5c6d1e-secret-uuid"

    def stop(self) -> None:
        shutdown(self.server)


@pytest.fixture
def pings() -> Any:
    stand_in = Pings()
    yield stand_in
    stand_in.stop()


def test_sync_due_pings_start_then_success_with_its_summary(cli: Cli, conn: db.Connection, pings: Pings) -> None:
    add_mock_source(conn)
    result = cli.ok("sync", "due", env={"SLSYNC_HEALTHCHECK_URL": pings.url})
    paths = [path for path, _, _ in pings.received]
    assert paths == ["/ping/0b5c6d1e-secret-uuid/start", "/ping/0b5c6d1e-secret-uuid"]
    run_ids = {query for _, query, _ in pings.received}
    assert len(run_ids) == 1 and next(iter(run_ids)).startswith("rid=")  # one run, paired
    assert pings.received[1][2].startswith("1 synced, 0 failed, 0 cut short, 0 skipped of 1;")
    assert "secret-uuid" not in result.stdout + result.stderr
    cli.ok("status", env={"SLSYNC_HEALTHCHECK_URL": pings.url})  # only the cron job pings
    assert len(pings.received) == 2


def test_a_failed_sync_due_pings_fail(cli: Cli, conn: db.Connection, pings: Pings) -> None:
    add_mock_source(conn, fail_after_page=0, fail_with="fatal")
    assert cli("sync", "due", env={"SLSYNC_HEALTHCHECK_URL": pings.url}).returncode == 1
    assert [path for path, _, _ in pings.received] == [
        "/ping/0b5c6d1e-secret-uuid/start",
        "/ping/0b5c6d1e-secret-uuid/fail",
    ]


def test_a_dead_healthcheck_service_does_not_fail_the_sync(cli: Cli, conn: db.Connection) -> None:
    add_mock_source(conn)
    dead = Pings()
    url = dead.url
    dead.stop()  # nothing listens there now
    result = cli("sync", "due", env={"SLSYNC_HEALTHCHECK_URL": url})
    assert result.returncode == 0, result.stderr
    assert "1 synced, 0 failed" in result.stdout
    assert "the healthcheck start ping failed (ConnectError); the sync goes on regardless" in result.stderr
    assert "secret-uuid" not in result.stderr


def test_a_hanging_healthcheck_service_costs_seconds_not_the_sync(cli: Cli, conn: db.Connection) -> None:
    add_mock_source(conn)
    slow = Pings(delay=30)
    try:
        started = time.monotonic()
        result = cli("sync", "due", env={"SLSYNC_HEALTHCHECK_URL": slow.url}, timeout=60)
        took = time.monotonic() - started
    finally:
        threading.Thread(target=slow.stop, daemon=True).start()  # its handlers still sleep
    assert result.returncode == 0
    assert "ReadTimeout" in result.stderr
    assert took < 20, f"sync due took {took:.1f} s with a hanging healthcheck service"
