"""The command line as an operator and cron use it: real processes, a real PostgreSQL."""

from __future__ import annotations

import pytest

from slsync.errors import UsageError
from tests.conftest import Cli

PLAN = {"twitter", "facebook", "instagram", "linkedin", "youtube", "tiktok", "reddit", "bluesky", "mastodon"}
SOURCE_KEYS = {"id", "tenant_id", "platform", "name", "status", "last_sync_at", "next_sync_at"}
STATUS_SOURCE_KEYS = SOURCE_KEYS | {"sync_interval_minutes", "error_message"}
RESULT_KEYS = {
    "source_id",
    "success",
    "mentions_fetched",
    "mentions_saved",
    "duplicates",
    "errors",
    "status",
    "message",
}
BATCH_KEYS = {"sources_synced", "sources_failed", "sources_skipped", "total_mentions_saved", "results"}


def add(cli: Cli, *extra: str, tenant: int = 1, name: str = "acme") -> int:
    doc = cli.ok(
        "source", "add", "mock", "--tenant", str(tenant), "--name", name, "--keyword", "Acme", *extra, "--json"
    )
    return doc.json()["id"]


def assert_status_shape(doc: dict) -> None:
    assert set(doc["source"]) >= STATUS_SOURCE_KEYS
    assert {"syncing", "started_at", "duration_ms"} <= set(doc["sync"])
    assert {"remaining", "reset_at"} <= set(doc["rate_limit"])
    assert {"total_mentions"} <= set(doc["stats"])


def test_platforms_lists_the_whole_plan_with_true_states(cli: Cli) -> None:
    doc = cli.ok("platforms", "--json").json()
    states = {p["name"]: p["state"] for p in doc["platforms"]}
    assert set(states) >= PLAN
    assert all(states[name] == "active" for name in PLAN | {"mock"})
    text = cli.ok("platforms").stdout
    assert all(name in text for name in PLAN)


def test_a_planned_platform_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from slsync import connectors

    monkeypatch.setitem(connectors.PLATFORMS, "threads", connectors.Platform("threads", "Threads"))
    assert connectors.platform("threads").state == "planned"
    with pytest.raises(UsageError, match="planned but not available yet"):
        connectors.connector_class("threads")


def test_source_add_list_remove(cli: Cli) -> None:
    doc = cli.ok(
        "source",
        "add",
        "mock",
        "--tenant",
        "3",
        "--name",
        "Acme EU",
        "--keyword",
        "Acme Coffee",
        "--hashtag",
        "#acme",
        "--mention",
        "@acme",
        "--exclude",
        "jobs",
        "--language",
        "EN",
        "--interval",
        "30",
        "--json",
    ).json()
    assert isinstance(doc["id"], int)
    assert doc["config"]["keywords"] == ["Acme Coffee"] and doc["config"]["hashtags"] == ["acme"]
    assert doc["config"]["mentions"] == ["acme"] and doc["config"]["languages"] == ["en"]
    assert doc["sync_interval_minutes"] == 30 and doc["status"] == "active"
    other = add(cli, tenant=4, name="other")

    listed = cli.ok("source", "list", "--tenant", "3", "--json").json()["sources"]
    assert [s["id"] for s in listed] == [doc["id"]]
    assert {s["id"] for s in cli.ok("source", "list", "--json").json()["sources"]} == {doc["id"], other}
    assert "Acme EU" in cli.ok("source", "list").stdout

    duplicate = cli("source", "add", "mock", "--tenant", "3", "--name", "Acme EU", "--keyword", "x")
    assert duplicate.returncode == 2 and "already has" in duplicate.stderr

    assert cli.ok("source", "remove", str(doc["id"]), "--json").json() == {"removed": doc["id"]}
    assert cli("source", "remove", str(doc["id"])).returncode == 2


def test_sync_and_status_json_follow_the_contract(cli: Cli) -> None:
    source_id = add(cli)
    result = cli.ok("sync", "source", str(source_id), "--json").json()
    assert set(result) >= RESULT_KEYS
    assert result["success"] is True and result["source_id"] == source_id and result["mentions_saved"] >= 1000

    one = cli.ok("status", str(source_id), "--json").json()
    assert_status_shape(one)
    assert one["source"]["id"] == source_id and one["stats"]["total_mentions"] == result["mentions_saved"]
    assert one["sync"]["syncing"] is False and one["source"]["last_sync_at"] is not None

    every = cli.ok("status", "--json").json()
    assert set(every) >= {"sources", "active_syncs"} and every["active_syncs"] == []
    for doc in every["sources"]:
        assert_status_shape(doc)

    tenant = cli.ok("sync", "tenant", "1", "--json").json()
    assert set(tenant) >= BATCH_KEYS and tenant["sources_synced"] == 1
    assert set(tenant["results"][0]) >= RESULT_KEYS

    due = cli.ok("sync", "due", "--json").json()
    assert set(due) >= BATCH_KEYS and due["results"] == []  # synced a moment ago: nothing due

    table = cli.ok("status").stdout
    assert "acme" in table and f"{result['mentions_saved']:,}" in table


def test_a_failing_sync_exits_1_with_its_reason(cli: Cli) -> None:
    source_id = add(cli, "--option", "fail_after_page=1")
    failed = cli("sync", "source", str(source_id), "--json")
    assert failed.returncode == 1
    doc = failed.json()
    assert doc["success"] is False and doc["mentions_saved"] == 100 and "fail_after_page" in doc["message"]
    status = cli.ok("status", str(source_id), "--json").json()
    assert status["source"]["status"] == "failing" and status["source"]["consecutive_failures"] == 1
    tenant = cli("sync", "tenant", "1")
    assert tenant.returncode == 1 and tenant.stdout.splitlines()[0].startswith(f"source {source_id}: FAILED")
    assert tenant.stderr == ""  # under cron one mail: the failure is said once, on stdout
    logged = cli("sync", "tenant", "1", env={"SLSYNC_LOG_FORMAT": "json"})
    assert any('"event": "failed"' in line for line in logged.stderr.splitlines())  # the log pipeline gets it


def test_mock_generates_mentions_and_is_refused_in_production(cli: Cli) -> None:
    source_id = add(cli)
    assert cli.ok("mock", str(source_id), "--count", "25", "--json").json() == {"generated": 25, "saved": 25}
    status = cli.ok("status", str(source_id), "--json").json()
    assert status["stats"]["total_mentions"] == 25
    refused = cli("mock", str(source_id), env={"SLSYNC_ENV": "production"})
    assert refused.returncode == 2 and "production" in refused.stderr
    assert cli("demo", env={"SLSYNC_ENV": "production"}).returncode == 2


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (("source", "add", "nope", "--tenant", "1", "--name", "x", "--keyword", "k"), 2, "unknown platform"),
        (("source", "add", "mock", "--tenant", "1", "--name", "x"), 2, "at least one"),
        (("source", "add", "mock", "--tenant", "-1", "--name", "x", "--keyword", "k"), 2, "--tenant"),
        (
            ("source", "add", "mock", "--tenant", "1", "--name", "x", "--keyword", "k", "--interval", "0"),
            2,
            "--interval",
        ),
        (
            ("source", "add", "mock", "--tenant", "1", "--name", "x", "--keyword", "k", "--language", "english"),
            2,
            "language",
        ),
        (("source", "add", "mock", "--tenant", "1", "--name", " ", "--keyword", "k"), 2, "--name"),
        (
            ("source", "add", "mock", "--tenant", "1", "--name", "x", "--keyword", "k", "--option", "zzz"),
            2,
            "NAME=VALUE",
        ),
        (("sync", "source", "999"), 2, "no source with id 999"),
        (("sync", "source", "abc"), 2, "source_id"),
        (("sync", "source", "1", "--since", "last tuesday"), 2, "--since"),
        (("sync", "due", "--limit", "0"), 2, "--limit"),
        (("sync", "due", "--limit", "abc"), 2, "--limit"),
        (("sync", "due", "--concurrency", "0"), 2, "--concurrency"),
        (("sync", "tenant", "42"), 2, "no sources"),
        (("status", "999"), 2, "no source with id 999"),
        (("source", "remove", "999"), 2, "no source with id 999"),
        (("mock", "999"), 2, "no source with id 999"),
        (("mock", "1", "--count", "0"), 2, "--count"),
        (("frobnicate",), 2, "No such command"),
        (("sync", "due", "--bogus"), 2, "--bogus"),
    ],
)
def test_bad_input_gets_one_clear_line_and_a_nonzero_exit(cli: Cli, args: tuple, code: int, words: str) -> None:
    add(cli)  # source 1 exists, so only the argument under test is wrong
    result = cli(*args)
    assert result.returncode == code, result.stderr
    assert words in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_unreachable_database_is_one_line_without_the_password(cli: Cli) -> None:
    url = "postgresql://listener:s3cret-pw@127.0.0.1:9/nowhere"
    for args in (("status",), ("sync", "due", "--json"), ("source", "list")):
        result = cli(*args, env={"SLSYNC_DATABASE_URL": url})
        assert result.returncode == 1
        assert "cannot connect to PostgreSQL at 127.0.0.1:9/nowhere" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert "s3cret-pw" not in result.stderr + result.stdout


def test_bad_settings_are_usage_errors(cli: Cli) -> None:
    for env in ({"SLSYNC_ENV": "staging"}, {"SLSYNC_LOG_FORMAT": "xml"}, {"SLSYNC_DATABASE_URL": "not a url"}):
        result = cli("status", env=env)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_debug_shows_the_traceback(cli: Cli) -> None:
    result = cli("--debug", "status", "999")
    assert result.returncode == 2 and "Traceback" in result.stderr and "no source with id 999" in result.stderr


def test_json_logs_are_one_object_per_line_on_stderr(cli: Cli) -> None:
    import json

    source_id = add(cli)
    result = cli.ok(
        "sync", "source", str(source_id), "--json", env={"SLSYNC_LOG_FORMAT": "json", "SLSYNC_LOG_LEVEL": "info"}
    )
    assert result.json()["success"]
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"started", "finished"} <= {line.get("event") for line in lines}
    finished = next(line for line in lines if line.get("event") == "finished")
    assert finished["source"] == source_id and finished["saved"] >= 1000 and "time" in finished


def test_tenant_scoped_commands_never_show_or_touch_another_tenant(cli: Cli) -> None:
    mine = add(cli, tenant=1, name="mine")
    theirs = add(cli, tenant=2, name="theirs")
    cli.ok("mock", str(theirs), "--count", "5")
    cli.ok("sync", "tenant", "1")
    status = cli.ok("status", "--tenant", "1", "--json").json()["sources"]
    assert [s["source"]["id"] for s in status] == [mine]
    assert cli("status", str(theirs), "--tenant", "1").returncode == 2  # not in that tenant
    listed = cli.ok("source", "list", "--tenant", "2", "--json").json()["sources"]
    assert [(s["id"], s["total_mentions"]) for s in listed] == [(theirs, 5)]
    assert "theirs" not in cli.ok("status", "--tenant", "1").stdout
