"""Text from users and platforms printed by every command that shows it: literally (never rich markup), with
its control characters made visible (never reaching the terminal), in a terminal and not, in tables, progress
lines, errors and logs; and exact in JSON."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Cli
from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

# markup that crashed `status` for the whole database, markup that made a link, a window title and a cleared
# screen (OSC and CSI), a C1 CSI, and a right-to-left override
NAME = "[/bold] x [link=http://evil.example]click[/link] \x1b]0;TITLE\x07\x1b[2J \x9b31m \u202eevil"
KEYWORD = "[/] kw\x1b[31m"
SHOWN_NAME = "[/bold] x [link=http://evil.example]click[/link] \\x1b]0;TITLE\\x07\\x1b[2J \\x9b31m \\u202eevil"
# a table wraps a long cell at its spaces: what each line of it shows
SHOWN_NAME_PARTS = ("[/bold] x", "[link=http://evil.example]click[/link]", "\\x1b]0;TITLE\\x07\\x1b[2J", "\\x9b31m")
SHOWN_KEYWORD = "[/] kw\\x1b[31m"
# what must never reach a terminal from the values above (rich's own styling is allowed on a terminal)
RAW = ("\x1b]0;TITLE", "\x1b[2J", "\x1b[31m", "\x9b", "\u202e", "\x07", "\x1b]8;")


def assert_shown_safely(output: str, *shown: str) -> None:
    for raw in RAW:
        assert raw not in output, f"{raw!r} reached the output: {output!r}"
    for text in shown:
        assert text in output, f"{text!r} not shown in {output!r}"


def add_hostile_source(cli: Cli) -> int:
    doc = cli.ok("source", "add", "mock", "--tenant", "3", "--name", NAME, "--keyword", KEYWORD, "--json").json()
    assert doc["name"] == NAME and doc["config"]["keywords"] == [KEYWORD]  # JSON: the exact data
    return doc["id"]


def test_hostile_names_and_posts_print_literally_and_harmlessly_without_a_terminal(cli: Cli) -> None:
    added = cli.ok("source", "add", "mock", "--tenant", "4", "--name", NAME, "--keyword", KEYWORD)
    assert_shown_safely(added.stdout + added.stderr, SHOWN_NAME)
    source_id = add_hostile_source(cli)
    synced = cli.ok("sync", "source", str(source_id))
    assert_shown_safely(synced.stdout + synced.stderr, f"source {source_id}: ok:")

    for args in (("status",), ("source", "list"), ("status", str(source_id))):
        shown = cli.ok(*args)
        assert shown.stderr == ""
        assert_shown_safely(shown.stdout, *SHOWN_NAME_PARTS)
    listed = cli.ok("source", "list")
    assert_shown_safely(listed.stdout, SHOWN_KEYWORD)
    mentions = cli.ok("mentions", "list", "--source", str(source_id))
    assert_shown_safely(mentions.stdout, SHOWN_KEYWORD)  # the posts carry the keyword

    as_json = cli.ok("mentions", "list", "--source", str(source_id), "--json")
    assert "\x1b" not in as_json.stdout and "\u202e" not in as_json.stdout and "\x9b" not in as_json.stdout
    assert all(KEYWORD in m["content"] for m in as_json.json()["mentions"])  # exact data in JSON
    assert cli.ok("status", "--json").json()["sources"][0]["source"]["name"] == NAME

    removed = cli.ok("source", "remove", str(source_id))
    assert_shown_safely(removed.stdout, SHOWN_NAME)
    # the mentions holding markup stay stored after their source is gone: every command still answers
    for args in (("status",), ("mentions", "list", "--tenant", "3"), ("source", "list")):
        assert_shown_safely(cli.ok(*args).stdout)
    again = cli("source", "add", "mock", "--tenant", "4", "--name", NAME, "--keyword", "k")
    assert again.returncode == 2
    assert_shown_safely(again.stderr, "[/bold] x")  # the error line quotes the name, harmlessly


def in_a_terminal(cli: Cli, *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run slsync with stdout and stderr on a pseudo-terminal 250 columns wide, as an operator would."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    process = subprocess.Popen(
        cli.command(*args), env={**cli.env, "TERM": "xterm-256color"}, cwd=cli.cwd,
        stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal's other side is closed: the command has ended
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_hostile_names_and_posts_print_literally_and_harmlessly_in_a_terminal(cli: Cli) -> None:
    source_id = add_hostile_source(cli)
    code, out = in_a_terminal(cli, "source", "add", "mock", "--tenant", "5", "--name", NAME, "--keyword", KEYWORD)
    assert code == 0
    assert_shown_safely(out, SHOWN_NAME)
    assert source_id
    # the live progress line names the source while it syncs (pages slowed so that it is drawn)
    slow = cli.ok(
        "source", "add", "mock", "--tenant", "6", "--name", NAME, "--keyword", KEYWORD,
        "--option", "page_delay=0.1", "--json",
    ).json()["id"]  # fmt: skip
    code, out = in_a_terminal(cli, "sync", "source", str(slow))
    assert code == 0 and "Traceback" not in out
    assert_shown_safely(out, f"(mock: {SHOWN_NAME})")
    assert re.search(rf"source {slow} page \d+ \(mock: {re.escape(SHOWN_NAME)}\)", out), out
    for args in (("status",), ("source", "list"), ("mentions", "list", "--tenant", "6"), ("status", str(slow))):
        code, out = in_a_terminal(cli, *args)
        assert code == 0, out
        assert_shown_safely(out, *(SHOWN_NAME_PARTS if args[0] != "mentions" else (SHOWN_KEYWORD,)))


class _RefusingApi(QuietHandler):
    """An X stand-in that refuses every search with a hostile reason, as a broken proxy might."""

    def do_GET(self) -> None:  # noqa: N802
        body = {"title": "Bad Request", "detail": "[/] no \x1b]0;pwned\x07\x1b[2J\u202e"}
        self.send_body(400, json.dumps(body).encode())


@pytest.fixture
def refusing_api() -> Any:
    server = serve(_RefusingApi)
    yield base_url(server) + "/2"
    shutdown(server)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_platforms_hostile_error_text_is_harmless_in_result_lines_logs_and_the_status_table(
    cli: Cli, refusing_api: str, log_format: str
) -> None:
    cli.env.update({"SLSYNC_TWITTER_API_URL": refusing_api, "TWITTER_BEARER_TOKEN": "app-token"})
    cli.env.update({"SLSYNC_LOG_FORMAT": log_format, "SLSYNC_LOG_LEVEL": "INFO"})
    source_id = cli.ok("source", "add", "twitter", "--tenant", "1", "--name", NAME, "--keyword", "acme", "--json")
    source_id = source_id.json()["id"]
    result = cli("sync", "source", str(source_id))
    assert result.returncode == 1
    assert_shown_safely(result.stdout + result.stderr, "[/] no \\x1b]0;pwned\\x07\\x1b[2J\\u202e")
    if log_format == "json":
        logged = [json.loads(line) for line in result.stderr.splitlines()]
        assert any("\x1b]0;pwned\x07" in entry["message"] for entry in logged)  # exact data, escaped as JSON
    status = cli.ok("status")
    assert_shown_safely(status.stdout, "[/] no", "\\x1b]0;pwned\\x07\\x1b[2J\\u202e")


def test_the_formatters_make_control_characters_visible_in_text_and_keep_json_exact(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from slsync import logs

    hostile = "name \x1b]0;t\x07 \x9b2J \u202e [/] \x00 \ud800"
    for fmt in ("text", "json"):
        logs.setup("INFO", fmt, debug=False)
        logging.getLogger("slsync.test").warning("saw %s", hostile, extra={"source": 7})
        err = capsys.readouterr().err
        for raw in ("\x1b", "\x9b", "\u202e", "\x07", "\x00", "\ud800"):
            assert raw not in err
        if fmt == "json":
            assert json.loads(err)["message"] == f"saw {hostile}"
        else:
            assert err == "slsync: warning: source 7: saw name \\x1b]0;t\\x07 \\x9b2J \\u202e [/] \\x00 \\ud800\n"
    logs.setup("WARNING", "text", debug=False)


def test_the_status_summary_of_many_sources_shows_hostile_names_and_errors_literally(conn, cli: Cli) -> None:
    from tests.conftest import add_mock_source

    ids = [add_mock_source(conn, name=f"s{n}") for n in range(201)]  # beyond the table: the summary
    conn.execute(
        "UPDATE sl_sources SET name = %s, status = 'error', error_message = %s, consecutive_failures = 3 WHERE id = %s",
        (NAME, f"the platform said {KEYWORD}", ids[0]),
    )
    conn.commit()
    summary = cli.ok("status")
    assert "201 sources" in summary.stdout and "1 sources failing or in error" in summary.stdout
    assert_shown_safely(summary.stdout, *SHOWN_NAME_PARTS, SHOWN_KEYWORD)


# What json_escaped must escape, what merely shares their first byte (’ … © nbsp: E2 80 and C2 sequences), and
# plain text around them.
_LOOKALIKES = '\x7f\x85\x9b\u202a\u202e\u2066\u2069\u2028\u2029’…“—©\xa0\u2030\u206a é漢😀\x1b\n"\\'


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=_LOOKALIKES + "abc ", max_size=40), max_size=8))
def test_json_escaping_skips_only_text_without_the_escaped_characters(values: list[str]) -> None:
    """The memchr check before the pattern changes nothing: the JSON is the pattern's, the data exact, and no
    character a terminal would act on stays raw."""
    import orjson

    from slsync.cli import json_lines
    from slsync.terminal import _JSON_RAW_UTF8, json_escaped

    encoded = orjson.dumps(values)
    escaped = json_escaped(encoded)
    assert escaped == _JSON_RAW_UTF8.sub(lambda m: b"\\u%04x" % ord(m.group().decode()), encoded)
    assert json.loads(escaped) == values
    assert not _JSON_RAW_UTF8.search(escaped)
    lines = json_lines([{"v": value} for value in values])
    assert lines == b"".join(json_escaped(orjson.dumps({"v": value})) + b"\n" for value in values)


def test_json_lines_write_what_orjson_refuses_through_the_standard_library() -> None:
    from slsync.cli import json_lines

    documents = [{"n": 1, "s": "\u202e"}, {"n": 2**70}]  # beyond 64 bits: orjson refuses it, and so the chunk
    assert json_lines(documents) == b'{"n":1,"s":"\\u202e"}\n{"n": 1180591620717411303424}\n'
