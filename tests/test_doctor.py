"""`slsync doctor`: every check passes on a healthy setup, and each one fails once, through the real CLI against
the real database and the loopback stand-ins; plus the cron traps it is there to catch."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from slsync import db, tokens
from slsync.tokens import DatabaseStore, FileStore, Token, TokenCipher
from tests.conftest import Cli, add_mock_source, add_x_source


def checks(cli: Cli, *args: str, expect: int | None = None, **env: str) -> list[dict[str, Any]]:
    result = cli("doctor", "--json", *args, env=env)
    doc = result.json()
    assert result.returncode == (1 if doc["failed"] else 0), result.stderr
    if expect is not None:
        assert result.returncode == expect, doc
    return doc["checks"]


def named(found: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [c for c in found if c["check"] == name]


def the(found: list[dict[str, Any]], name: str) -> dict[str, Any]:
    matching = named(found, name)
    assert len(matching) == 1, (name, found)
    return matching[0]


def failed(found: list[dict[str, Any]]) -> list[str]:
    return [c["check"] for c in found if c["status"] == "fail"]


@pytest.fixture
def healthy(x_cli: Cli, conn: db.Connection) -> Cli:
    """An X source on the stand-in and a mock source, a file token store: nothing to complain about."""
    x_cli.env["SLSYNC_TOKEN_STORE"] = "file"
    add_x_source(x_cli)
    add_mock_source(conn)
    return x_cli


def test_a_healthy_setup_passes_every_check_with_one_line_each(healthy: Cli, x_api: Any) -> None:
    found = checks(healthy, expect=0)
    assert not [c for c in found if c["status"] != "ok"], found
    assert {"settings", "database", "twitter settings", "twitter call", "mock settings", "token store", "clock"} <= {
        c["check"] for c in found
    }
    assert "schema up to date" in the(found, "database")["message"]
    # the X call: a 10-result search of the source's own query, with the window it left
    call = the(found, "twitter call")["message"]
    assert "X search answered (449 of 450 calls left until" in call, call
    assert [r.params["max_results"] for r in x_api.requests] == ["10"]
    text = healthy("doctor")
    assert text.returncode == 0
    lines = text.stdout.strip().splitlines()
    assert lines[-1] == f"0 failed, 0 warnings, {len(found)} checks"
    assert all(line.startswith("ok   ") for line in lines[:-1]), lines


def test_invalid_settings_fail_the_first_check_and_exit_1(healthy: Cli) -> None:
    found = checks(healthy, expect=1, SLSYNC_ENV="staging")
    assert failed(found) == ["settings"] and len(found) == 1
    assert "SLSYNC_ENV" in found[0]["message"]
    text = healthy("doctor", env={"SLSYNC_ENV": "staging"})
    assert text.returncode == 1 and text.stdout.startswith("fail settings: invalid setting SLSYNC_ENV")
    assert "Traceback" not in text.stderr


def test_an_unreachable_database_fails_and_names_the_setting(healthy: Cli) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    found = checks(healthy, expect=1, SLSYNC_DATABASE_URL=f"postgresql://slsync:secret@127.0.0.1:{port}/none")
    assert failed(found) == ["database"]
    database = the(found, "database")
    assert "cannot connect" in database["message"] and "secret" not in database["message"]
    assert "SLSYNC_DATABASE_URL" in database["fix"]


def test_a_schema_newer_than_this_release_fails(healthy: Cli, conn: db.Connection) -> None:
    conn.execute("INSERT INTO sl_schema_migrations (version, name) VALUES (999, '999_future.sql')")
    found = checks(healthy, expect=1)
    assert failed(found) == ["database"]
    assert "migration 999, newer than this slsync knows" in the(found, "database")["message"]


def test_missing_credentials_fail_and_source_add_names_them(cli: Cli, x_api: Any) -> None:
    cli.env["SLSYNC_TWITTER_API_URL"] = x_api.url
    added = cli.ok("source", "add", "twitter", "--tenant", "1", "--name", "acme", "--keyword", "acme")
    assert "sync it now" not in added.stdout
    assert "X needs TWITTER_BEARER_TOKEN, not set here" in added.stdout
    assert "slsync connect 1" in added.stdout  # the other way in
    reddit = cli.ok("source", "add", "reddit", "--tenant", "1", "--name", "acme", "--keyword", "acme")
    assert "Reddit needs REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET, not set here: set them" in reddit.stdout
    found = checks(cli, expect=1, REDDIT_CLIENT_ID="app")
    settings = {c["check"]: c for c in found if c["check"].endswith(" settings")}
    assert settings["twitter settings"]["status"] == "fail"
    message = "TWITTER_BEARER_TOKEN not set in this environment, needed by source 1"
    assert settings["twitter settings"]["message"] == message
    assert "crontab" in settings["twitter settings"]["fix"]
    assert settings["reddit settings"]["message"].startswith("REDDIT_CLIENT_SECRET not set")
    assert not named(found, "twitter call")  # nothing to call with


def test_a_bad_platform_setting_fails_its_platform_only(healthy: Cli) -> None:
    found = checks(healthy, expect=1, SLSYNC_TWITTER_API_URL="")
    assert failed(found) == ["twitter settings"] or "twitter call" in failed(found)
    youtube = checks(healthy, expect=0, SLSYNC_YOUTUBE_DAILY_QUOTA="lots")  # no YouTube source: not read
    assert not failed(youtube)


def test_refused_credentials_fail_the_call_with_the_fix(healthy: Cli) -> None:
    found = checks(healthy, expect=1, TWITTER_BEARER_TOKEN="revoked-token")
    assert failed(found) == ["twitter call"]
    call = the(found, "twitter call")
    assert call["message"] == "source 1: twitter refused the app token"
    assert "revoked-token" not in str(found)
    assert "TWITTER_BEARER_TOKEN" in call["fix"]


def test_a_spent_quota_fails_and_a_low_one_warns(healthy: Cli, conn: db.Connection) -> None:
    today = datetime.now(UTC).date()
    ledger = "INSERT INTO sl_quota_ledger (credential_key, quota_day, units_used, daily_limit) VALUES (%s, %s, %s, %s)"
    conn.execute(ledger, ("youtube:key:abc", today, 10_000, 10_000))
    conn.execute(ledger, ("tiktok:requests:def", today, 950, 1_000))
    found = checks(healthy, expect=1)
    quotas = {c["message"].split(":")[0] + ":" + c["message"].split(":")[1]: c for c in named(found, "quota")}
    assert quotas["youtube:key"]["status"] == "fail"
    assert "0 of 10,000 left today" in quotas["youtube:key"]["message"]
    assert quotas["tiktok:requests"]["status"] == "warn"
    assert failed(found) == ["quota"]


def test_a_token_file_readable_by_others_fails(healthy: Cli, tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data" / "tokens.json")
    store.put(99, Token(access_token="x"))
    store.path.chmod(0o644)
    found = checks(healthy, expect=1)
    assert failed(found) == ["token store"]
    assert the(found, "token store")["message"].endswith("is readable by others (mode 0644)")
    assert the(found, "token store")["fix"] == f"chmod 600 {store.path}"


def test_a_connected_source_whose_token_is_not_in_this_store_fails(healthy: Cli, conn: db.Connection) -> None:
    source_id = add_x_source(healthy, "connected")
    db.mark_connected(conn, source_id)
    found = checks(healthy, expect=1, TWITTER_CLIENT_ID="client")
    store = the(found, "token store")
    assert store["status"] == "fail" and "no token file at" in store["message"]
    assert f"source {source_id}" in store["message"] and "SLSYNC_DATA_DIR" in store["fix"]


def test_the_database_token_store_is_checked_with_its_key(healthy: Cli, conn: db.Connection, x_api: Any) -> None:
    """SLSYNC_TOKEN_STORE=database: a token that opens passes, and its call is made with it; no key, or a key the
    token was not sealed with, fails with the fix."""
    key, other = tokens.new_key(), tokens.new_key()
    x_api.tokens.add("user-sealed")
    source_id = add_x_source(healthy, "sealed")
    db.mark_connected(conn, source_id)
    sealed = DatabaseStore(db.TokenTable(conn), TokenCipher(tokens.parse_keys(key, "test")))
    sealed.put(source_id, Token(access_token="user-sealed", expires_at=datetime.now(UTC) + timedelta(hours=1)))
    database = {"SLSYNC_TOKEN_STORE": "database", "TWITTER_CLIENT_ID": "client"}

    found = checks(healthy, expect=0, SLSYNC_TOKEN_KEY=key, **database)
    store = the(found, "token store")
    assert (
        store["status"] == "ok"
        and store["message"] == "the database (sl_tokens, encrypted): 1 connected source, all found"
    )
    assert any(c["check"] == "twitter call" and f"source {source_id}: X search" in c["message"] for c in found)
    assert "Bearer user-sealed" in [r.authorization for r in x_api.requests]
    assert key not in repr(found)

    missing = checks(healthy, expect=1, **database)
    store = the(missing, "token store")
    assert store["status"] == "fail" and "needs a key: set SLSYNC_TOKEN_KEY" in store["message"]
    assert store["fix"] == "slsync tokens new-key, then set SLSYNC_TOKEN_KEY"

    wrong = checks(healthy, expect=1, SLSYNC_TOKEN_KEY=other, **database)
    store = the(wrong, "token store")
    assert store["status"] == "fail" and f"the token of source {source_id} is sealed with key" in store["message"]
    assert store["fix"] == "give this machine the SLSYNC_TOKEN_KEY the other machines use"
    assert key not in repr(wrong) and other not in repr(wrong)


def test_connections_ending_soon_warn_and_ended_ones_fail(healthy: Cli, conn: db.Connection, tmp_path: Path) -> None:
    soon, ended = add_x_source(healthy, "soon"), add_x_source(healthy, "ended")
    store = FileStore(tmp_path / "data" / "tokens.json")
    for source_id, days in ((soon, 9), (ended, -1)):
        db.mark_connected(conn, source_id, reconnect_by=datetime.now(UTC) + timedelta(days=days, hours=1))
        store.put(source_id, Token(access_token=f"user-{source_id}", expires_at=datetime.now(UTC) + timedelta(hours=1)))
    found = checks(healthy, expect=1, TWITTER_CLIENT_ID="client")
    connections = {c["status"]: c for c in named(found, "connection")}
    assert f"source {soon} (twitter: soon): its connection ends" in connections["warn"]["message"]
    assert "(in 9 days)" in connections["warn"]["message"]
    assert f"source {ended} (twitter: ended): its connection ended" in connections["fail"]["message"]
    assert connections["fail"]["fix"] == f"slsync connect {ended}"


def test_a_source_in_error_fails_and_a_failing_one_warns(healthy: Cli, conn: db.Connection) -> None:
    broken, flaky = add_mock_source(conn, name="broken"), add_mock_source(conn, name="flaky")
    conn.execute(
        "UPDATE sl_sources SET status = 'error', error_message = %s WHERE id = %s",
        ("X refused the app token; reconnect: slsync connect 3\x1b[2J", broken),
    )
    conn.execute(
        "UPDATE sl_sources SET status = 'failing', consecutive_failures = 4, error_message = 'HTTP 503' WHERE id = %s",
        (flaky,),
    )
    found = checks(healthy, expect=1)
    sources = {c["status"]: c for c in named(found, "source")}
    assert sources["fail"]["message"].startswith(f"source {broken} (mock: broken) is in error: X refused the app token")
    assert "\x1b" not in sources["fail"]["message"]
    assert sources["fail"]["fix"] == f"fix what the message names, then: slsync sync source {broken}"
    assert f"source {flaky} (mock: flaky) failed 4 times in a row: HTTP 503" == sources["warn"]["message"]


def test_a_database_clock_a_few_minutes_off_fails(healthy: Cli, database_url: str) -> None:
    from tests.sim import SimClock

    SimClock(database_url, datetime.now(UTC) + timedelta(minutes=5))
    found = checks(healthy, expect=1)
    clock = the(found, "clock")
    assert clock["status"] == "fail"
    assert clock["message"].startswith("the database's clock is 30") and "ahead of this machine's" in clock["message"]
    assert "NTP" in clock["fix"]


def test_a_source_beyond_its_platforms_reach_fails_and_recent_gaps_warn(healthy: Cli, conn: db.Connection) -> None:
    behind = add_x_source(healthy, "behind")
    conn.execute("UPDATE sl_sources SET covered_until = now() - interval '8 days' WHERE id = %s", (behind,))
    found = checks(healthy, expect=1)
    coverage = the(found, "coverage")
    assert coverage["status"] == "fail"
    assert f"source {behind} (twitter: behind) was last covered" in coverage["message"]
    assert "mentions are being lost" in coverage["message"]
    conn.execute("UPDATE sl_sources SET covered_until = now() WHERE id = %s", (behind,))
    conn.execute(
        "INSERT INTO sl_coverage_gaps (source_id, tenant_id, stream, from_at, to_at, reason)"
        " VALUES (%s, 1, '', now() - interval '9 days', now() - interval '2 days', 'failing')",
        (behind,),
    )
    found = checks(healthy, expect=0)
    assert the(found, "coverage")["status"] == "warn"
    assert the(found, "coverage")["message"] == f"1 coverage gap in the last 7 days, in sources {behind}"


# --- cron -----------------------------------------------------------------------------------------------


def test_cron_with_another_database_sees_no_sources_and_fails(healthy: Cli, tmp_path: Path) -> None:
    """cron as another user, or without SLSYNC_DATABASE_URL: another (empty) embedded database."""
    found = checks(healthy, "--cron", expect=0)
    assert the(found, "sources")["message"] == "this environment sees 2 sources"
    assert "user " in the(found, "environment")["message"]
    env = {k: v for k, v in healthy.env.items() if k != "SLSYNC_DATABASE_URL"}
    other = Cli({**env, "SLSYNC_DATA_DIR": str(tmp_path / "cron-data")}, healthy.cwd)
    found = checks(other, "--cron", expect=1)
    assert the(found, "sources")["status"] == "fail"
    assert "sees no sources" in the(found, "sources")["message"]
    assert "same SLSYNC_DATA_DIR" in the(found, "sources")["fix"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_cron_as_another_user_than_the_data_directorys_fails(healthy: Cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    os.chown(data, 65534, 65534)
    try:
        found = checks(healthy, "--cron", expect=1)
    finally:
        os.chown(data, 0, 0)
    owner = the(found, "data directory")
    assert "belongs to nobody" in owner["message"] and "crontab -u nobody" in owner["fix"]


def test_a_refresh_without_the_client_id_says_so_instead_of_reconnect(
    x_cli: Cli, conn: db.Connection, tmp_path: Path
) -> None:
    """cron without TWITTER_CLIENT_ID: the grant is fine, the environment is not; the source is not put in error."""
    x_cli.env["SLSYNC_TOKEN_STORE"] = "file"
    source_id = add_x_source(x_cli)
    db.mark_connected(conn, source_id)
    FileStore(tmp_path / "data" / "tokens.json").put(
        source_id, Token(access_token="old", refresh_token="refresh", expires_at=datetime.now(UTC) - timedelta(hours=1))
    )
    done = x_cli("sync", "source", str(source_id))
    assert done.returncode == 1
    assert "TWITTER_CLIENT_ID is not set in this environment, and it is needed to refresh X" in done.stdout
    assert "reconnect" not in done.stdout
    row = conn.execute("SELECT status FROM sl_sources WHERE id = %s", (source_id,)).fetchone()
    assert row["status"] == "failing"


def test_the_crontab_example_carries_every_credential_a_connected_x_source_needs() -> None:
    crontab = (Path(__file__).parent.parent / "crontab.example").read_text()
    for name in ("TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET", "TWITTER_BEARER_TOKEN", "SLSYNC_DATA_DIR",
                 "SLSYNC_TOKEN_STORE=file", "doctor --cron"):  # fmt: skip
        assert name in crontab, name
    assert "SAME USER" in crontab


def test_a_mastodon_token_is_checked_with_verify_credentials(cli: Cli) -> None:
    from tests.fakes.mastodon_api import MastodonApi

    api = MastodonApi().start()
    try:
        cli.env.update({"SLSYNC_MASTODON_API_URL": api.url, "MASTODON_TOKEN_INSTANCE": "https://mastodon.example"})
        cli.ok("source", "add", "mastodon", "--tenant", "1", "--name", "acme", "--keyword", "acme",
               "--option", "instance=https://mastodon.example")  # fmt: skip
        token = next(iter(api.tokens))
        found = checks(cli, MASTODON_ACCESS_TOKEN=token)
        assert the(found, "mastodon call")["message"] == "source 1: the token signs in as @listener"
        found = checks(cli, expect=1, MASTODON_ACCESS_TOKEN="revoked")
        assert the(found, "mastodon call")["status"] == "fail"
        assert "HTTP 401" in the(found, "mastodon call")["message"]
        assert [r.path for r in api.requests] == ["/api/v1/accounts/verify_credentials"] * 2
    finally:
        api.stop()
