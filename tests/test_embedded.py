"""The embedded PostgreSQL: the README's demo, data that survives, processes that share one server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli, base_env


def embedded_cli(tmp_path: Path) -> Cli:
    env = base_env(tmp_path)  # no SLSYNC_DATABASE_URL: the embedded server under SLSYNC_DATA_DIR
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return Cli(env, work)


def test_demo_runs_on_the_embedded_database_and_its_data_survives(tmp_path: Path) -> None:
    cli = embedded_cli(tmp_path)
    first = cli.ok("demo")
    assert "Demo: Acme Coffee" in first.stdout and "mentions" in first.stdout
    assert "sentiment of the last 7 days, Demo: Acme Coffee: positive" in first.stdout
    assert "saved 10" in first.stdout  # the 7-day backfill: about 1,008 posts
    assert first.stderr == ""  # no third-party warnings on a user's terminal or in cron mail
    pgdata = tmp_path / "data" / "pgdata"
    assert (pgdata / "PG_VERSION").exists()
    assert not (pgdata / "postmaster.pid").exists()  # the last process out stopped the server

    status = cli.ok("status", "--json").json()["sources"]
    assert len(status) == 1 and status[0]["stats"]["total_mentions"] >= 1000
    again = cli.ok("demo")
    assert "created tenant" not in again.stdout and "ok:" in again.stdout
    assert (
        cli.ok("status", "--json").json()["sources"][0]["stats"]["total_mentions"]
        >= status[0]["stats"]["total_mentions"]
    )


def test_concurrent_processes_share_one_embedded_server(tmp_path: Path) -> None:
    cli = embedded_cli(tmp_path)
    ids = []
    for n in range(4):
        doc = cli.ok(
            "source",
            "add",
            "mock",
            "--tenant",
            "1",
            "--name",
            f"s{n}",
            "--keyword",
            "k",
            "--option",
            "page_delay=0.02",
            "--json",
        ).json()
        ids.append(doc["id"])
    runs = [cli.popen("sync", "due", "--json") for _ in range(3)]
    synced = []
    for process in runs:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert err == ""
        synced += [r["source_id"] for r in json.loads(out)["results"] if r["success"]]
    assert sorted(synced) == ids
    assert not (tmp_path / "data" / "pgdata" / "postmaster.pid").exists()
