"""Wrong settings, wrong files and wrong input an operator really types: one clear line and the documented exit
code, never a traceback, a database error or a half-written file."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slsync import db, sync
from slsync.config import Settings
from slsync.connectors.mock import build_post
from slsync.tokens import FileStore, Token
from tests.conftest import Cli, Result, add_mock_source
from tests.fakes.browser import free_port, start
from tests.fakes.oauth_server import XAuth, running

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")


def one_error(result: Result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("slsync: error: ")
    return line


# --- exports ------------------------------------------------------------------------------------------------


def add_posts(conn: db.Connection, source_id: int, contents: list[str]) -> None:
    source = db.get_source(conn, source_id)
    base = build_post("mock", "acme", "x", datetime(2026, 1, 1, tzinfo=UTC), random.Random(1))
    posts = [
        dataclasses.replace(base, external_id=f"csv-{n}", content=text, author_name=text, media_urls=(text,))
        for n, text in enumerate(contents)
    ]
    db.insert_mentions(conn, source, posts)


FORMULAS = ['=HYPERLINK("http://evil.example","click")', "+1+1", "-2+3", "@SUM(A1:A2)", "\tx", "\rx", "=1"]


def test_csv_cells_a_spreadsheet_would_run_are_neutralized(conn: db.Connection, cli: Cli) -> None:
    import csv

    source_id = add_mock_source(conn)
    add_posts(conn, source_id, [*FORMULAS, "plain", "a line\nbreak", "esc \x1b[2J bidi \u202e"])
    target = cli.cwd / "mentions.csv"
    cli.ok("mentions", "export", "--format", "CSV", "--source", str(source_id), "--output", str(target))  # any case
    exported = target.read_text(encoding="utf-8")
    with target.open(newline="", encoding="utf-8") as rows_file:
        rows = list(csv.DictReader(rows_file))
    contents = [row["content"] for row in rows]
    assert contents[: len(FORMULAS)] == ["'" + text for text in FORMULAS]  # OWASP: a leading quote
    assert [row["author_name"] for row in rows][: len(FORMULAS)] == ["'" + text for text in FORMULAS]
    assert [row["media_urls"] for row in rows][0] == "'" + FORMULAS[0]
    assert contents[len(FORMULAS) :] == ["plain", "a line\nbreak", "esc \\x1b[2J bidi \\u202e"]
    assert "\x1b" not in exported and "\u202e" not in exported
    # JSON lines keep the exact data
    lines = cli.ok("mentions", "export", "--format", "JSONL", "--source", str(source_id)).stdout.splitlines()
    assert [json.loads(line)["content"] for line in lines][: len(FORMULAS)] == FORMULAS
    assert "\u202e" not in "".join(lines) and "esc \x1b[2J bidi \u202e" in json.loads(lines[-1])["content"]


def test_an_export_replaces_its_file_only_when_it_succeeded(conn: db.Connection, cli: Cli, tmp_path: Path) -> None:
    source_id = add_mock_source(conn)
    add_posts(conn, source_id, ["one", "two"])
    target = tmp_path / "k.txt"
    target.write_text("what was there before\n")
    target.chmod(0o640)
    for args in (("--source", "99999"), ("--tenant", "424242"), ("--source", str(source_id), "--tenant", "7")):
        line = one_error(cli("mentions", "export", "--output", str(target), *args), 2)
        assert "no source with id" in line or "no tenant 424242" in line
        assert target.read_text() == "what was there before\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".k.txt", "k.txt"))) == ["k.txt"]
    done = cli.ok("mentions", "export", "--output", str(target), "--source", str(source_id))
    assert done.stderr == f"wrote 2 mentions to {target}\n"
    assert [json.loads(line)["content"] for line in target.read_text().splitlines()] == ["one", "two"]
    assert target.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    assert sorted(p.name for p in tmp_path.iterdir() if "k.txt" in p.name) == ["k.txt"]  # no temporary file left
    assert one_error(cli("mentions", "list", "--source", "99999"), 2) == "slsync: error: no source with id 99999"


def test_an_export_to_a_path_it_cannot_write_is_one_line_naming_it(conn: db.Connection, cli: Cli, tmp_path: Path):
    source_id = add_mock_source(conn)
    add_posts(conn, source_id, ["one"])
    export = ("mentions", "export", "--source", str(source_id), "--output")
    assert "--output /nonexistent/x: the directory /nonexistent does not exist" in one_error(
        cli(*export, "/nonexistent/x"), 2
    )
    assert "--output needs a file path" in one_error(cli(*export, ""), 2)
    assert f"--output {tmp_path}: is a directory" in one_error(cli(*export, str(tmp_path)), 2)
    full = one_error(cli(*export, "/dev/full"), 1)
    assert full == "slsync: error: could not write /dev/full: No space left on device"
    assert Path("/dev/full").is_char_device()  # written into, never replaced


def test_an_export_through_a_link_writes_where_it_leads_and_keeps_the_link(conn: db.Connection, cli: Cli, tmp_path):
    """--output /dev/stdout with stdout sent to a file was renamed over: the export replaced the link itself
    (as root, /dev/stdout for every process). A link of the test's own into /proc stands in for it."""
    import subprocess

    source_id = add_mock_source(conn)
    add_posts(conn, source_id, ["one", "two"])
    export = ("mentions", "export", "--source", str(source_id), "--output")
    to_stdout = tmp_path / "to-stdout"
    to_stdout.symlink_to("/proc/self/fd/1")
    log = tmp_path / "cron.log"
    log.write_text("earlier\n")
    with log.open("a") as appending:  # stdout as `>> cron.log` gives it
        done = subprocess.run(cli.command(*export, str(to_stdout)), env=cli.env, cwd=cli.cwd, stdout=appending,
                              stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, f"wrote 2 mentions to {to_stdout}\n")
    assert to_stdout.is_symlink()
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier" and [json.loads(line)["content"] for line in lines[1:]] == ["one", "two"]
    # a link to an ordinary file: the file it leads to is replaced whole, the link stays
    real, link = tmp_path / "real.jsonl", tmp_path / "link.jsonl"
    real.write_text("old\n")
    link.symlink_to(real)
    cli.ok(*export, str(link))
    assert link.is_symlink() and [json.loads(line)["content"] for line in real.read_text().splitlines()] == [
        "one",
        "two",
    ]


def test_an_export_whose_reader_stops_early_ends_with_1_and_no_line(conn: db.Connection, cli: Cli) -> None:
    """`slsync mentions export | head`: the same quiet end to stdout and to --output /dev/stdout."""
    source_id = add_mock_source(conn)
    cli.ok("mock", str(source_id), "--count", "2000")  # ~1.5 MB: far more than a pipe holds
    for output in ((), ("--output", "/dev/stdout")):
        export = cli.popen("mentions", "export", *output)
        assert export.stdout is not None and export.stdout.read(100)
        export.stdout.close()
        assert export.wait(timeout=60) == 1, output
        assert export.stderr is not None and export.stderr.read() == "", output


# --- settings and the token store ---------------------------------------------------------------------------


def user_source(conn: db.Connection, data_dir: Path) -> int:
    config = {"keywords": ["acme"], "hashtags": [], "mentions": [], "exclude": [], "languages": [], "options": {}}
    source_id = db.add_source(
        conn, tenant_id=1, platform="twitter", name="acme", connection_type="user", config=config,
        interval_minutes=15, status="connected",
    )  # fmt: skip
    token = Token("user-token", "refresh", datetime.now(UTC) + timedelta(hours=1))
    FileStore(data_dir / "tokens.json").put(source_id, token)
    return source_id


def schedule(conn: db.Connection, source_id: int) -> tuple:
    row = conn.execute(
        "SELECT status, next_sync_at, consecutive_failures FROM sl_sources WHERE id = %s", (source_id,)
    ).fetchone()
    return row["status"], row["next_sync_at"], row["consecutive_failures"]


def damage(path: Path, how: str) -> None:
    if how == "garbage":
        path.write_text("garbage{")
    elif how == "not a token":
        path.write_text(json.dumps({"source-1": "[]", "source-2": '{"refresh_token": 1}'}))
    else:
        shutil.chown(path, "nobody")


@pytest.mark.parametrize("how", ["garbage", "not a token", pytest.param("another owner", marks=as_root)])
@pytest.mark.parametrize("command", ["source", "due"])
def test_a_token_file_of_another_user_or_damaged_is_a_configuration_error_and_the_schedule_stays(
    conn: db.Connection, x_cli: Cli, tmp_path: Path, how: str, command: str
) -> None:
    x_cli.env["SLSYNC_TOKEN_STORE"] = "file"
    data_dir = tmp_path / "data"
    source_id = user_source(conn, data_dir)
    before = schedule(conn, source_id)
    path = data_dir / "tokens.json"
    damage(path, how)
    # sync due's workers: the others stop between pages, as after Ctrl-C
    other = add_mock_source(conn, page_delay=0.05) if command == "due" else None
    args = ("sync", "source", str(source_id)) if command == "source" else ("sync", "due", "--concurrency", "2")
    line = one_error(x_cli(*args), 2)
    if other is not None:
        statuses = conn.execute("SELECT status FROM sl_sync_runs WHERE source_id = %s", (other,)).fetchall()
        assert [r["status"] for r in statuses] in ([], ["partial"], ["success"])  # never left running
    assert str(path) in line
    if how == "another owner":
        assert "belongs to nobody" in line and "run slsync as nobody" in line and "chown" in line
    else:
        assert "is damaged; remove it and connect the sources again" in line
    assert schedule(conn, source_id) == before  # not failing, not backed off
    [run] = conn.execute("SELECT status, message FROM sl_sync_runs WHERE source_id = %s", (source_id,)).fetchall()
    assert run["status"] == "failed" and str(path) in run["message"]  # the run is closed, with the reason


def test_a_dot_env_that_is_not_utf8_is_one_line_naming_it(cli: Cli) -> None:
    (cli.cwd / ".env").write_bytes(b"SLSYNC_LOG_LEVEL=INFO\nTWITTER_CLIENT_ID=caf\xff\n")
    line = one_error(cli("status"), 2)
    assert f"{cli.cwd / '.env'} is not UTF-8 text (byte 0xff" in line


def test_an_empty_data_dir_setting_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import platformdirs

    monkeypatch.chdir(tmp_path)
    assert Settings(data_dir="", _env_file=None).data_dir == platformdirs.user_data_path("slsync")
    assert Settings(data_dir="  ", _env_file=None).data_dir != Path(".")


def test_ctrl_c_during_connect_says_nothing_was_stored(cli: Cli, conn: db.Connection, tmp_path: Path) -> None:
    config = {"keywords": ["acme"], "hashtags": [], "mentions": [], "exclude": [], "languages": [], "options": {}}
    source_id = db.add_source(
        conn, tenant_id=1, platform="twitter", name="acme", connection_type="app", config=config, interval_minutes=15
    )
    with running(XAuth()) as auth:
        env = {
            "SLSYNC_TWITTER_AUTHORIZE_URL": auth.authorize_url, "SLSYNC_TWITTER_TOKEN_URL": auth.token_url,
            "TWITTER_CLIENT_ID": auth.client_id, "SLSYNC_TOKEN_STORE": "file",
        }  # fmt: skip
        connect = start(Cli({**cli.env, **env}, cli.cwd), str(source_id), "--no-browser", "--port", str(free_port()))
        connect.url()  # waiting for the browser
        connect.process.send_signal(signal.SIGINT)
        code, _, stderr = connect.finish()
    assert code == 130, stderr
    assert stderr.strip().splitlines() == [
        f"slsync: error: interrupted; nothing was stored: to connect the source, run slsync connect {source_id}"
    ], stderr
    assert not (tmp_path / "data" / "tokens.json").exists()
    assert db.get_source(conn, source_id).status == "active"


# --- the command line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (("source", "add", "mock", "--tenant", "99999999999999999999", "--name", "n", "--keyword", "k"), "--tenant"),
        (("mentions", "list", "--source", "3000000000"), "--source"),
        (("mentions", "export", "--tenant", "-1"), "--tenant"),
        (("status", "3000000000"), "source_id"),
        (("sync", "source", "0"), "source_id"),
        (("sync", "tenant", "-1"), "tenant_id"),
        (("status", "-5"), "source_id"),
    ],
)
def test_numbers_out_of_the_databases_range_are_usage_errors(cli: Cli, args: tuple[str, ...], wanted: str) -> None:
    line = one_error(cli(*args), 2)
    assert f"Invalid value for '{wanted}'" in line and ("less than" in line or "greater than" in line)
    assert "No such option" not in line and "database" not in line


def test_an_option_given_twice_is_refused_unless_it_repeats(cli: Cli) -> None:
    add = ("source", "add", "mock", "--name", "n", "--keyword", "k")
    line = one_error(cli(*add, "--tenant", "1", "--tenant", "2"), 2)
    assert "--tenant is given more than once" in line
    assert "--name is given more than once" in one_error(cli(*add, "--tenant", "1", "--name", "m"), 2)
    doc = cli.ok(*add, "--tenant", "1", "--keyword", "k2", "--json").json()  # repeatable: both kept
    assert doc["config"]["keywords"] == ["k", "k2"]


def test_long_input_is_cut_in_the_error_line(cli: Cli) -> None:
    huge = "x" * 10_000
    add = ("source", "add", "mock", "--tenant", "1", "--name", "n", "--keyword", "k")
    for args in (("sync", "source", "1", "--since", huge), (*add, "--option", huge), (*add, "--language", huge)):
        line = one_error(cli(*args), 2)
        assert len(line) < 1_100 and "(10,0" in line and "characters)" in line
    assert len(one_error(cli("source", "add", "mock", "--tenant", "9" * 10_000), 2)) < 1_100


def test_a_value_that_is_not_utf8_is_refused_in_one_line(cli: Cli) -> None:
    name = os.fsdecode(b"caf\xff")  # what Python makes of bytes on the command line that are not UTF-8
    line = one_error(cli("source", "add", "mock", "--tenant", "1", "--name", name, "--keyword", "k"), 2)
    assert "--name" in line and "the byte 0xff is not UTF-8 text" in line


def test_one_page_is_one_page(conn: db.Connection, cli: Cli) -> None:
    source_id = add_mock_source(conn)
    since = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    result = cli.ok("sync", "source", str(source_id), "--since", since)
    assert " in 1 page (" in result.stdout and "1 pages" not in result.stdout


# --- the mock platform --------------------------------------------------------------------------------------


def test_in_production_mock_sources_are_neither_added_nor_synced(conn: db.Connection, cli: Cli) -> None:
    source_id = add_mock_source(conn)
    cli.env["SLSYNC_ENV"] = "production"
    line = one_error(cli("source", "add", "mock", "--tenant", "1", "--name", "n", "--keyword", "k"), 2)
    assert "SLSYNC_ENV=production" in line
    line = one_error(cli("sync", "source", str(source_id)), 2)
    assert "SLSYNC_ENV=production" in line
    due = cli.ok("sync", "due", "--json").json()
    assert due["sources_skipped"] == 1 and due["results"][0]["status"] == "refused"
    assert conn.execute("SELECT count(*) AS n FROM sl_mentions").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM sl_sync_runs").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("platform", "days"), [("mock", 730), ("reddit", 365), ("tiktok", 365), ("twitter", 7), ("linkedin", 60)]
)
def test_since_is_bounded_for_every_platform(conn: db.Connection, cli: Cli, platform: str, days: int) -> None:
    config = {"keywords": ["acme"], "hashtags": [], "mentions": [], "exclude": [], "languages": [], "options": {}}
    if platform == "linkedin":
        config = {**config, "keywords": [], "options": {"organization": "123"}}
    source_id = db.add_source(
        conn, tenant_id=1, platform=platform, name="n", connection_type="none", config=config, interval_minutes=15
    )
    too_far = (datetime.now(UTC) - timedelta(days=days + 1)).date().isoformat()
    line = one_error(cli("sync", "source", str(source_id), "--since", "1900-01-01"), 2)
    assert f"more than {days} days" in line
    assert f"more than {days} days" in one_error(cli("sync", "source", str(source_id), "--since", too_far), 2)
    assert conn.execute("SELECT count(*) AS n FROM sl_sync_runs").fetchone()["n"] == 0


def test_the_mock_platforms_call_window_holds_during_a_run_and_across_runs(conn, settings, clock) -> None:
    source_id = add_mock_source(conn, calls_per_window=15)
    first = sync.sync_source(settings, source_id)  # a 7-day backfill: 11 calls of the window's 15
    assert first.success and first.pages == 11
    again = sync.sync_source(settings, source_id, since=clock.now - timedelta(days=7))  # 11 more wanted
    assert again.status == "rate_limited" and again.pages == 4 and "15 calls per 15 minutes" in again.message
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at > clock.now
    assert sync.sync_source(settings, source_id).skipped  # not called again before the reset

    # the window passes (the database's clock, which the engine checks, cannot be moved: its record is)
    clock.advance(minutes=15)
    conn.execute("UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second' WHERE id = %s", (source_id,))
    resumed = sync.sync_source(settings, source_id)
    assert resumed.success and resumed.pages == 11 - 4  # the rest of the run it continues, not all over again


def test_mock_count_is_generated_and_saved_in_batches(
    conn: db.Connection, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slsync.connectors import mock

    source = db.get_source(conn, add_mock_source(conn))
    generated = mock.generate("mock", source.id, "acme", 2_500, datetime.now(UTC))
    assert not isinstance(generated, list)  # made one at a time, never all at once
    batches: list[int] = []
    insert = db.insert_mentions
    monkeypatch.setattr(db, "insert_mentions", lambda c, s, ms: batches.append(len(ms)) or insert(c, s, ms))
    assert sync.save_mentions(conn, source, generated) == 2_500
    assert batches == [1_000, 1_000, 500]
    assert db.get_source(conn, source.id).mentions_count == 2_500


def test_mock_count_saves_what_it_generates(conn: db.Connection, cli: Cli) -> None:
    source_id = add_mock_source(conn)
    assert cli.ok("mock", str(source_id), "--count", "2500", "--json").json() == {"generated": 2500, "saved": 2500}
