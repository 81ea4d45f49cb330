"""What an operator sees on a terminal: `status` at 80 columns cuts no id, platform, status, mention count or
next due (the full table where it fits), `status ID` is a panel of labelled fields, and `sync due` and `sync
tenant` show sources done of total, mentions, failures and elapsed time on a TTY, one line per source without."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time

from slsync import db
from tests.conftest import Cli, add_mock_source

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")
FULL_HEADERS = ("tenant", "last sync (UTC)", "every", "7-day sentiment", "rate limit", "syncing", "error")


def sources_of_every_width(cli: Cli, conn: db.Connection) -> list[int]:
    """The widest values each protected column takes: a long platform and status, a big count, a long name
    (with markup in it) and a long error."""
    long_name = "Acme Coffee Roasters [bold]Berlin[/bold] and every shop of the brand in Germany"
    ids = [add_mock_source(conn, name=long_name), add_mock_source(conn, name="short")]
    cli.ok("mock", str(ids[0]), "--count", "1234")
    conn.execute(
        "UPDATE sl_sources SET platform = 'instagram', status = 'connected' WHERE id = %s", (ids[1],)
    )  # a status wider than `active`, a platform wider than `mock`
    failing = add_mock_source(conn, name="failing [red]x[/red]")
    conn.execute(
        "UPDATE sl_sources SET status = 'failing', consecutive_failures = 3, error_message = %s, "
        "next_sync_at = now() + interval '1 hour' WHERE id = %s",
        ("HTTP 503 from the platform: the service is unavailable, try again later " * 2, failing),
    )
    return [*ids, failing]


def rows_of(table: str) -> list[list[str]]:
    """The table's rows as cells (the first line of each row: where no_wrap cells are whole)."""
    rows = []
    for line in table.splitlines():
        if line.startswith("│") and line.split("│")[1].strip().isdigit():
            rows.append([cell.strip() for cell in line.split("│")[1:-1]])
    return rows


def test_status_at_80_columns_cuts_no_id_platform_status_mentions_or_next_due(cli: Cli, conn: db.Connection) -> None:
    ids = sources_of_every_width(cli, conn)
    wide = cli.ok("status", "--json").json()["sources"]
    expected = {d["source"]["id"]: d for d in wide}

    shown = cli.ok("status", env={"COLUMNS": "80"}).stdout
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= 80, shown
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    header = table[1]
    assert [h.strip() for h in header.split("┃")[1:-1]] == ["id", "platform", "name", "status", "next due", "mentions"]
    rows = rows_of("\n".join(table))
    assert [int(row[0]) for row in rows] == ids
    for row in rows:
        doc = expected[int(row[0])]["source"]
        assert row[1] == doc["platform"] and row[3] == doc["status"], row
        assert row[5] == f"{expected[int(row[0])]['stats']['total_mentions']:,}", row
        next_due = doc["next_sync_at"][5:16].replace("T", " ")
        assert row[4] == next_due, (row, doc["next_sync_at"])
        assert "…" not in "".join(row)
    assert {row[1] for row in rows} == {"mock", "instagram"} and "1,234" in {row[5] for row in rows}
    # the long name wraps, whole, literally (not read as markup)
    assert "[bold]Berlin[/bold]" in shown.replace("│", " ").replace("  ", " ") or "[bold]Berlin[/bold]" in shown
    # what the narrow table leaves out of a source in trouble, under it, one line each
    failing = ids[2]
    assert f"source {failing}: failing: 3 failures: HTTP 503 from the platform" in shown


def test_status_on_a_wide_terminal_is_the_full_table(cli: Cli, conn: db.Connection) -> None:
    sources_of_every_width(cli, conn)
    wide = cli.ok("status", env={"COLUMNS": "240"}).stdout
    header = next(line for line in wide.splitlines() if line.startswith("┃"))
    assert all(name in header for name in FULL_HEADERS)
    # a pipe without COLUMNS (cron's mail) gets the full table too
    piped = cli.ok("status").stdout
    assert all(name in piped.splitlines()[1] for name in FULL_HEADERS)


def test_status_of_one_source_is_a_panel_of_labelled_fields(cli: Cli, conn: db.Connection) -> None:
    ids = sources_of_every_width(cli, conn)
    shown = cli.ok("status", str(ids[2]), env={"COLUMNS": "80"}).stdout
    lines = shown.splitlines()
    assert lines[0].startswith(f"╭─ source {ids[2]} ") and lines[-1].startswith("╰")
    assert max(len(line) for line in lines) <= 80
    fields = {}
    for line in lines[1:-1]:
        label, _, value = line.strip("│ ").partition("  ")
        if label:
            fields[label.strip()] = value.strip()
    for label in ("tenant", "platform", "name", "status", "connection", "every", "last sync", "next due", "last run",
                  "mentions", "covered until", "7-day sentiment", "rate limit", "coverage gaps", "error"):  # fmt: skip
        assert label in fields, (label, shown)
    assert fields["name"] == "failing [red]x[/red]" and fields["status"] == "failing"
    assert fields["error"].startswith("3 failures: HTTP 503 from the platform")


def on_a_terminal(cli: Cli, *args: str, columns: int = 80) -> tuple[int, str, str]:
    """Run the command with its stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, what the
    terminal received with the escape sequences removed)."""
    controller, terminal = pty.openpty()
    env = {**cli.env, "COLUMNS": str(columns), "LINES": "24", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        cli.command(*args), cwd=cli.cwd, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True
    )
    os.close(terminal)
    received = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed: the command has ended
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    stdout, _ = process.communicate(timeout=60)
    os.close(controller)
    return process.returncode, stdout, ANSI.sub("", received.decode(errors="replace"))


def test_sync_due_on_a_terminal_shows_sources_done_of_total_mentions_failures_and_time(
    cli: Cli, conn: db.Connection
) -> None:
    for n in range(3):
        add_mock_source(conn, name=f"slow {n}", page_delay=0.1)
    add_mock_source(conn, name="broken", fail_after_page=1, fail_with="fatal")
    code, stdout, shown = on_a_terminal(cli, "sync", "due", "--concurrency", "2")
    assert code == 1, (stdout, shown)
    assert "of 4 sources" in shown, shown
    assert re.search(r"4 of 4 sources\s+[\d,]+ fetched, [\d,]+ new\s+1 failed\s+\d:\d\d:\d\d", shown), shown
    running = r"[0-3] of 4 sources [\d,]+ fetched, [\d,]+ new [01] failed \d:\d\d:\d\d source \d page \d"
    assert re.search(running, shown), shown
    # the result lines themselves go to stdout, one a source, as under cron
    results = [line for line in stdout.splitlines() if line.startswith("source ")]
    assert len(results) == 4 and results[0].startswith("source 4: FAILED")


def test_sync_due_without_a_terminal_prints_one_line_a_source_and_no_progress(cli: Cli, conn: db.Connection) -> None:
    for n in range(3):
        add_mock_source(conn, name=f"source {n}")
    done = cli.ok("sync", "due")
    assert [line.split(":")[0] for line in done.stdout.splitlines()[:3]] == ["source 1", "source 2", "source 3"]
    assert done.stdout.splitlines()[3].startswith("3 synced, 0 failed")
    assert "of 3 sources" not in done.stderr + done.stdout


def test_sync_tenant_on_a_terminal_counts_its_sources(cli: Cli, conn: db.Connection) -> None:
    for n in range(2):
        add_mock_source(conn, tenant_id=7, name=f"tenant seven {n}", page_delay=0.2)
    code, _, shown = on_a_terminal(cli, "sync", "tenant", "7")
    assert code == 0 and "2 of 2 sources" in shown, shown
