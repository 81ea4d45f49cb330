"""Cursors stored by slsync 0.1.0 keep their place: every connector resumes them with the same calls, the
same posts and the same duplicates as 0.1.0 did, and never as a new backfill.

tests/data/cursors_0_1_0.json was written by 0.1.0 itself (`SLSYNC_CAPTURE_CURSORS=tests/data/cursors_0_1_0.json
pytest -n0 tests/test_cursor_compat.py` on that release): for each platform, a world played on a frozen clock
against the platform's stand-in (a first sync, an incremental one, a run cut short after its first call and
its continuation), the committed and in-flight cursors 0.1.0 stored on the way, and what each resumed run did.
The test plays the same world with today's code, puts 0.1.0's cursor in place of its own before each
resumed run, and asks for the same outcome: the old shape is read as it is, with no migration.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from psycopg.types.json import Jsonb

from slsync import db, sync
from slsync.config import Settings
from tests.conftest import Cli, stored_ids
from tests.contract.harness import Harness, StandInHarness
from tests.contract.test_contract import ACTIVE, HARNESSES

DATA = Path(__file__).parent / "data" / "cursors_0_1_0.json"
CAPTURE = os.environ.get("SLSYNC_CAPTURE_CURSORS")
# The world's clock: fixed, so that times inside cursors, posts and windows are the same on every replay.
WORLD_START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# LinkedIn reads the posts a page of notifications names in a second call, before it yields the page;
# Instagram reads the account's tags (none here) before the hashtag's first page
CALLS_OF_A_PAGE = {"linkedin": 2, "instagram": 2}
OUTCOME = ("status", "pages", "mentions_fetched", "mentions_saved", "duplicates", "errors")


def _recorded() -> dict[str, Any]:
    return json.loads(DATA.read_text(encoding="utf-8")) if DATA.exists() else {}


@pytest.fixture
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    with time_machine.travel(WORLD_START, tick=False) as traveller:
        instance = HARNESSES[request.param](tmp_path)
        instance.traveller = traveller  # type: ignore[attr-defined]
        instance.start()
        try:
            yield instance
        finally:
            instance.stop()


def _interrupt_after_one_page(harness: Harness) -> None:
    """The calls of the next page are answered; the one after them fails, and so do its retries (the run
    keeps its in-flight cursor)."""
    calls = CALLS_OF_A_PAGE.get(harness.platform, 1)
    if harness.platform == "mock":
        harness._options(fail_after_page=1, fail_with="retriable")  # type: ignore[attr-defined]
        return
    assert isinstance(harness, StandInHarness)
    if harness.platform in ("linkedin", "mastodon"):  # their stand-ins take no "no fault" in a fault list
        harness.api.fail_429_from_call = harness.api_calls() + calls
    else:
        harness.api.faults = [None] * calls + [503] * 6


def _run(settings: Settings, harness: Harness) -> dict[str, Any]:
    assert harness.source_id is not None
    before = harness.api_calls()
    result = sync.sync_source(settings, harness.source_id).as_json()
    return {**{k: result[k] for k in OUTCOME}, "calls": harness.api_calls() - before}


def _cursors(conn: db.Connection, source_id: int) -> dict[str, Any]:
    source = db.get_source(conn, source_id)
    return {"committed": source.committed_cursor, "inflight": source.inflight_cursor}


def _put(conn: db.Connection, source_id: int, cursors: dict[str, Any]) -> None:
    """0.1.0's cursors in place of the ones today's code stored."""
    conn.execute(
        "UPDATE sl_sources SET committed_cursor = %s, inflight_cursor = %s WHERE id = %s",
        (
            Jsonb(cursors["committed"]) if cursors["committed"] is not None else None,
            Jsonb(cursors["inflight"]) if cursors["inflight"] is not None else None,
            source_id,
        ),
    )


def play(
    harness: Harness, cli: Cli, conn: db.Connection, monkeypatch: pytest.MonkeyPatch, old: dict[str, Any] | None
) -> dict[str, Any]:
    """The world, step by step; with `old` (0.1.0's record), each resumed run starts from 0.1.0's cursors."""
    traveller = harness.traveller  # type: ignore[attr-defined]
    env = {**cli.env, **harness.env()}
    cli.env.update(harness.env())
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)
    harness.conn = conn
    added = cli.ok(
        "source", "add", harness.platform, "--tenant", "1", "--name", "compat", *harness.add_args(), "--json"
    )
    harness.source_id = source_id = added.json()["id"]
    harness.connect(cli)
    record: dict[str, Any] = {}

    harness.publish(harness.page_size + 20)
    traveller.shift(timedelta(minutes=1))
    record["first"] = _run(settings, harness)

    traveller.shift(timedelta(hours=2))
    harness.publish(5)
    if old:
        _put(conn, source_id, old["before_incremental"])
    record["before_incremental"] = _cursors(conn, source_id)
    traveller.shift(timedelta(minutes=1))
    record["incremental"] = _run(settings, harness)

    traveller.shift(timedelta(hours=2))
    harness.publish(harness.page_size + 20)
    traveller.shift(timedelta(minutes=1))
    _interrupt_after_one_page(harness)
    record["interrupted"] = _run(settings, harness)

    harness.clear()
    if harness.platform != "mock":
        harness.api.fail_429_from_call = None  # type: ignore[attr-defined]
    if old:
        _put(conn, source_id, old["before_continued"])
    record["before_continued"] = _cursors(conn, source_id)
    traveller.shift(timedelta(minutes=1))
    record["continued"] = _run(settings, harness)
    # Mastodon's ids are URIs on the stand-in's host, whose port changes from run to run
    record["stored"] = [
        re.sub(r"^http://127\.0\.0\.1:\d+/", "http://127.0.0.1/", i) for i in stored_ids(conn, source_id)
    ]
    return record


@pytest.mark.skipif(not CAPTURE, reason="SLSYNC_CAPTURE_CURSORS names the file to write")
@pytest.mark.parametrize("harness", ACTIVE, indirect=True)
def test_capture(harness: Harness, cli: Cli, conn: db.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    record = play(harness, cli, conn, monkeypatch, None)
    assert record["interrupted"]["status"] in ("rate_limited", "failing") and record["before_continued"]["inflight"]
    path = Path(CAPTURE or "")
    captured = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    captured[harness.platform] = record
    path.write_text(json.dumps(captured, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def test_every_connector_has_cursors_of_0_1_0() -> None:
    assert sorted(_recorded()) == ACTIVE


@pytest.mark.skipif(bool(CAPTURE), reason="capturing")
@pytest.mark.parametrize("harness", ACTIVE, indirect=True)
def test_cursors_of_0_1_0_resume(
    harness: Harness, cli: Cli, conn: db.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _recorded()[harness.platform]
    new = play(harness, cli, conn, monkeypatch, old)
    assert old["before_continued"]["inflight"], "0.1.0 left an in-flight cursor to resume"
    for step in ("incremental", "continued"):
        assert new[step] == old[step], step
    assert new["incremental"]["mentions_fetched"] < old["first"]["mentions_fetched"]  # not a new backfill
    assert new["stored"] == old["stored"] and len(set(new["stored"])) == len(new["stored"])  # the same posts, once
