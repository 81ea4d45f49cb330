"""One contract for every registered connector: paging, cursor, tolerant normalization, rate-limit
parsing and error classification, through the real CLI against each platform's loopback stand-in."""

from __future__ import annotations

import importlib
import json
import math
import pkgutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slsync import db, http
from slsync.connectors import PLATFORMS, connector_class
from slsync.models import Stored
from tests import contract
from tests.conftest import Cli
from tests.contract.harness import Harness


def _harnesses() -> dict[str, type[Harness]]:
    found = {}
    for module in pkgutil.iter_modules(contract.__path__):
        if module.name.startswith("h_"):
            harness = importlib.import_module(f"tests.contract.{module.name}").HARNESS
            found[harness.platform] = harness
    return found


HARNESSES = _harnesses()
ACTIVE = sorted(name for name, p in PLATFORMS.items() if p.state == "active")


def test_every_active_platform_has_a_harness() -> None:
    assert sorted(HARNESSES) == ACTIVE


# the connectors that follow a platform's pages (the mock platform makes its stream up as it goes)
PAGED = [name for name in ACTIVE if name != "mock"]


def _started(platform: str, tmp_path: Path) -> Iterator[Harness]:
    instance = HARNESSES[platform](tmp_path)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(params=ACTIVE)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from _started(request.param, tmp_path)


@pytest.fixture(params=PAGED)
def paged(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield from _started(request.param, tmp_path)


def _ready(cli: Cli, conn: db.Connection, harness: Harness) -> Cli:
    cli.env.update(harness.env())
    harness.conn = conn
    doc = cli.ok(
        "source", "add", harness.platform, "--tenant", "1", "--name", "contract", *harness.add_args(), "--json"
    ).json()
    harness.source_id = doc["id"]
    harness.connect(cli)
    return cli


@pytest.fixture
def run(cli: Cli, conn: db.Connection, harness: Harness) -> Cli:
    return _ready(cli, conn, harness)


@pytest.fixture
def paged_run(cli: Cli, conn: db.Connection, paged: Harness) -> Cli:
    return _ready(cli, conn, paged)


def sync(cli: Cli, harness: Harness) -> tuple[int, dict]:
    result = cli("sync", "source", str(harness.source_id), "--json")
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else {}


def test_pages_then_only_what_is_new(run: Cli, harness: Harness, conn: db.Connection) -> None:
    harness.publish(harness.page_size + 20)
    code, first = sync(run, harness)
    assert code == 0 and first["success"], first
    assert first["pages"] >= 2 and first["mentions_saved"] == first["mentions_fetched"] > harness.page_size
    source = db.get_source(conn, harness.source_id)
    assert source.committed_cursor is not None and source.inflight_cursor is None
    assert source.mentions_count == first["mentions_saved"]

    harness.publish(3)
    code, second = sync(run, harness)
    assert code == 0 and second["mentions_saved"] == 3, second
    assert second["mentions_fetched"] <= harness.page_size  # an incremental sync, not a new backfill
    code, third = sync(run, harness)
    assert code == 0 and third["mentions_saved"] == 0
    if harness.reports_limits:
        limits = run.ok("status", str(harness.source_id), "--json").json()["rate_limit"]
        assert limits["remaining"] is not None and limits["reset_at"] is not None


def test_errors_are_classified(run: Cli, harness: Harness, conn: db.Connection) -> None:
    harness.publish(5)
    harness.fail(500, times=10)
    code, failed = sync(run, harness)
    assert code == 1 and failed["status"] == "failing", failed
    source = db.get_source(conn, harness.source_id)
    assert source.committed_cursor is None and source.consecutive_failures == 1

    harness.clear()
    harness.fail(401, times=10)
    code, refused = sync(run, harness)
    assert code == 1 and refused["status"] == "error", refused
    assert db.get_source(conn, harness.source_id).status == "error"

    harness.clear()
    code, healed = sync(run, harness)  # a manual sync after the fix brings the source back
    assert code == 0 and healed["success"] and healed["mentions_saved"] >= 5
    assert db.get_source(conn, harness.source_id).status == "active"


def test_the_rate_limit_or_quota_signal_is_respected(run: Cli, harness: Harness, conn: db.Connection) -> None:
    harness.publish(5)
    harness.limit(timedelta(minutes=10))
    code, limited = sync(run, harness)
    assert code == 1 and limited["status"] == "rate_limited", limited
    calls = harness.api_calls()
    again = run("sync", "source", str(harness.source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    assert run.ok("sync", "due", "--json").json()["results"] == []
    assert harness.api_calls() == calls  # nothing called the platform before the reset
    assert db.get_source(conn, harness.source_id).consecutive_failures == 0


def test_a_page_sent_twice_stops_the_run_with_one_line_and_the_next_run_stores_everything(
    paged_run: Cli, paged: Harness, conn: db.Connection
) -> None:
    published = paged.page_size * 3 + 7
    paged.publish(published)
    paged.repeat_pages(True)  # the platform answers page 2 with the token that asked for it
    looped = paged_run("sync", "source", str(paged.source_id))
    assert looped.returncode == 1 and "Traceback" not in looped.stderr
    [line] = [line for line in looped.stdout.splitlines() if "FAILED" in line]
    assert line.startswith(f"source {paged.source_id}: FAILED: ") and "to avoid a loop" in line
    assert paged.api_calls() < 10  # stopped at once, not at the end of the window or the time budget
    source = db.get_source(conn, paged.source_id)
    assert source.committed_cursor is None and source.inflight_cursor is None  # no run finished: no cursor moves
    saved = source.mentions_count
    assert saved >= 1  # the pages before the loop are kept

    paged.repeat_pages(False)
    code, fixed = sync(paged_run, paged)
    assert code == 0 and fixed["success"], fixed
    source = db.get_source(conn, paged.source_id)
    assert source.mentions_count == published and fixed["mentions_saved"] == published - saved


def test_a_refused_token_on_page_two_is_renewed_once_and_the_call_made_once_more(
    paged_run: Cli, paged: Harness, conn: db.Connection
) -> None:
    published = paged.page_size + 20
    paged.publish(published)
    tokens = paged.token_requests() if paged.refreshable else 0
    calls = paged.api_calls()
    code, clean = sync(paged_run, paged)  # the calls (and the token requests) a first sync of this world makes
    assert code == 0 and clean["mentions_saved"] == published, clean
    clean_calls, calls = paged.api_calls() - calls, paged.api_calls()
    if paged.refreshable:
        clean_tokens, tokens = paged.token_requests() - tokens, paged.token_requests()
    conn.execute("DELETE FROM sl_mentions")
    conn.execute("UPDATE sl_sources SET committed_cursor = NULL, mentions_count = 0")

    paged.fail_call(2, 401)
    code, result = sync(paged_run, paged)
    if paged.refreshable:
        assert code == 0 and result["success"] and result["mentions_saved"] == published, result
        assert paged.token_requests() - tokens == clean_tokens + 1  # one refresh
        assert paged.api_calls() - calls == clean_calls + 1  # and the refused call made once more
    else:  # an app token, an API key, a page token: nothing to renew, so the source needs its owner
        assert code == 1 and result["status"] == "error", result
        assert paged.api_calls() - calls == 2  # no call after the refusal
        assert db.get_source(conn, paged.source_id).committed_cursor is None


def test_stored_posts_are_read_again_in_batches(paged_run: Cli, paged: Harness, conn: db.Connection) -> None:
    """Through `slsync refresh`: counts read again, an edited post's new text labelled again, a deleted one a
    tombstone, in exactly the calls the platform's batch size implies."""
    connector = connector_class(paged.platform)
    size = connector.lookup_size
    assert size, f"{paged.platform} has no lookup"
    paged.publish(size + 3)
    code, synced = sync(paged_run, paged)
    assert code == 0 and synced["success"], synced
    rows = conn.execute(
        "SELECT id, external_id, published_at, r.raw FROM sl_mentions m"
        " LEFT JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id)"
        " WHERE source_id = %s ORDER BY id",
        (paged.source_id,),
    ).fetchall()
    kinds = {r["external_id"]: connector.lookup_kind(Stored(**r)) for r in rows}
    readable = sorted(e for e, kind in kinds.items() if kind is not None)
    assert len(readable) >= 3
    conn.execute("UPDATE sl_mentions SET refresh_due_at = now() WHERE source_id = %s", (paged.source_id,))
    deleted, edited, liked = readable[0], readable[1], readable[2]
    paged.delete(deleted)
    if paged.editable:
        paged.edit(edited, "Terrible service from Acme, never again")
    if paged.counted:
        paged.set_likes(liked, 4242)
    calls = paged.lookup_calls()

    doc = paged_run.ok("refresh", "--json").json()
    batches: dict[str, int] = {}
    for external_id in readable:
        batches[kinds[external_id]] = batches.get(kinds[external_id], 0) + 1
    expected = sum(math.ceil(n / size) for n in batches.values()) + paged.calls_per_deleted
    assert paged.lookup_calls() - calls == doc["calls"] == expected, doc
    assert doc["checked"] == len(readable) and doc["deleted"] == 1, doc
    assert doc["edited"] == (1 if paged.editable else 0) and doc["pending"] == 0, doc
    stored = {
        r["external_id"]: r
        for r in conn.execute(
            "SELECT external_id, content, author_handle, r.raw, likes_count, deleted_at, status, sentiment,"
            " refresh_due_at FROM sl_mentions m"
            " LEFT JOIN sl_mention_raw r ON (r.mention_id, r.tenant_id) = (m.id, m.tenant_id) WHERE source_id = %s",
            (paged.source_id,),
        ).fetchall()
    }
    tombstone = stored[deleted]
    assert tombstone["deleted_at"] and (tombstone["content"], tombstone["author_handle"], tombstone["raw"]) == (
        None, None, None,
    )  # fmt: skip
    if paged.editable:
        assert "Terrible service from Acme, never again" in stored[edited]["content"]
        assert stored[edited]["status"] == "processed" and stored[edited]["sentiment"] == "negative"
    if paged.counted:
        assert stored[liked]["likes_count"] == 4242
    # what this platform cannot read again is off the schedule, not due for ever
    for external_id, kind in kinds.items():
        if kind is None:
            assert stored[external_id]["refresh_due_at"] is None, external_id


def test_recorded_payloads_normalize(harness: Harness) -> None:
    for body in harness.recorded_pages():
        mentions, _ = harness.normalize_page(body)  # type: ignore[misc]
        assert mentions, "a recorded page gave no mentions"
        for mention in mentions:
            assert mention.platform == harness.platform and mention.external_id and mention.published_at.tzinfo


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=25,
)


@pytest.mark.parametrize("platform", ACTIVE)
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_value)
def test_normalizers_tolerate_any_json(platform: str, tmp_path_factory: pytest.TempPathFactory, body: object) -> None:
    harness = HARNESSES[platform](tmp_path_factory.getbasetemp())
    received = http.storable(body)
    result = harness.normalize_page(received)
    if result is None:
        return
    mentions, errors = result
    assert errors >= 0 and all(m.platform == platform for m in mentions)


def test_doctor_makes_one_authenticated_call_per_credential_and_it_goes_through(run: Cli, harness: Harness) -> None:
    """Every connector's probe against its stand-in: the cheapest call that needs the source's credentials. The mock
    platform has no credentials (no call), the Mastodon harness reads hashtags anonymously (nothing to check; its
    token's call is tested in test_doctor)."""
    result = run("doctor", "--json")
    calls = [c for c in result.json()["checks"] if c["check"] == f"{harness.platform} call"]
    if harness.platform == "mock":
        assert calls == [], result.stdout
        return
    assert len(calls) == 1, result.stdout
    assert calls[0]["status"] == "ok", calls[0]
    anonymous = harness.platform == "mastodon"
    assert ("nothing to check" in calls[0]["message"]) == anonymous, calls[0]
