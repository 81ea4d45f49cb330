"""Random hostile strings (rich markup, ANSI and OSC escapes, C1 controls, bidi controls, characters beside NUL)
as source names, search terms and so post texts, through `source add`, `sync source`, `status`, `source list`,
`mentions list` and both exports: never a traceback, only the documented exit codes, and no control character
a terminal would act on in any output.

The commands run in this process (slsync.cli.run, the console script's own entry point) against the real
PostgreSQL: hundreds of examples as subprocesses would take many minutes. The terminal and real-process
paths are covered by test_hostile_output.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slsync import cli as slsync_cli
from slsync.config import get_settings
from slsync.connectors.mock import search_term

PIECES = [
    "[/]", "[/bold]", "[bold red]", "[link=http://evil.example]", "[/link]", "[", "]", "\\[", "[[/]]",
    "\x1b[2J", "\x1b[31m", "\x1b]0;TITLE\x07", "\x1b]8;;http://evil.example\x1b\\", "\x1bP", "\x1b",
    "\x9b31m", "\x9d0;t\x9c", "\x85", "\x90",
    "\u202e", "\u202d", "\u202a", "\u2066", "\u2067", "\u2069", "\u200f", "\u061c", "\u2028",
    "\x01", "\x07", "\x08", "\x7f", "\x1f", "\r", "\n", "\t", "\x0b",
    "=1+2", "@SUM(A1)", "+", "-", "'", '"', "%", "\\", " ", "é", "🙂", "مرحبا", "x",
]  # fmt: skip
# Any text a command line can carry: no NUL (argv cannot hold it) and no lone surrogates (test_hostile_output
# and test_cli give bytes that are not UTF-8 to the real process).
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4)
hostile = st.lists(st.one_of(st.sampled_from(PIECES), ANY_TEXT), min_size=1, max_size=6).map("".join)

# What no output may hold: C0 controls but line breaks and tabs, DEL, C1 controls, bidi embeddings, overrides
# and isolates, line and paragraph separators. Tabs and line breaks appear only inside CSV's quoted cells.
FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
DOCUMENTED = {0, 1, 2}
_tenants = itertools.count(1000)


def invoke(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = slsync_cli.run(slsync_cli.app, list(args))
    return code, out.getvalue(), err.getvalue()


def checked(*args: str, codes: set[int] = DOCUMENTED) -> tuple[int, str]:
    code, out, err = invoke(*args)
    assert code in codes, (args, code, err)
    for stream in (out, err):
        assert "Traceback" not in stream and "unexpected" not in stream, (args, stream)
        stream.encode("utf-8")  # printable as it is: no lone surrogate
        outside_csv = stream if "export" not in args or "csv" not in args else ""
        bad = FORBIDDEN.search(stream) or re.search("[\t\r]", outside_csv)
        assert bad is None, (args, bad, stream)
    assert err.count("\n") <= 1, (args, err)  # an error is one line
    return code, out


@pytest.fixture
def in_process(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLSYNC_DATABASE_URL", database_url)
    monkeypatch.delenv("SLSYNC_LOG_LEVEL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(sources=[("[/bold] x", "[/] kw", "x")], as_json=False)
@example(sources=[("[link=http://evil.example]click[/link]", "\x1b]0;TITLE\x07\x1b[2J", "\u202e")], as_json=False)
@example(sources=[('=HYPERLINK("http://evil.example")', "@SUM(1)", "+1")], as_json=True)
@given(sources=st.lists(st.tuples(hostile, hostile, hostile), min_size=1, max_size=2), as_json=st.booleans())
def test_hostile_strings_through_every_command_that_shows_them(
    in_process: None, sources: list[tuple[str, str, str]], as_json: bool
) -> None:
    tenant = str(next(_tenants))
    json_flag = ("--json",) if as_json else ()
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    added: dict[int, tuple[str, str]] = {}
    for name, keyword, hashtag in sources:
        code, out = checked(
            "source", "add", "mock", "--tenant", tenant, "--name", name, "--keyword", keyword, "--hashtag", hashtag,
            "--json",
        )  # fmt: skip
        if code == 0:  # 2: a name or term with nothing but blanks in it, or a name the tenant has already
            doc = json.loads(out)
            assert doc["name"] == name.strip()
            added[doc["id"]] = (doc["name"], search_term(doc["config"]))  # what the mock's posts quote
    for source_id in added:
        code, out = checked("sync", "source", str(source_id), "--since", since, *json_flag, codes={0})
        if as_json:
            assert json.loads(out)["success"] is True

    _, status = checked("status", "--tenant", tenant, *json_flag, codes={0})
    _, listing = checked("source", "list", "--tenant", tenant, *json_flag, codes={0})
    known = {0} if added else {2}  # a tenant with no source and no mention is unknown
    _, mentions = checked("mentions", "list", "--tenant", tenant, "--limit", "50", *json_flag, codes=known)
    if as_json and added:  # JSON is the exact data
        assert {s["source"]["id"]: s["source"]["name"] for s in json.loads(status)["sources"]} == {
            k: v[0] for k, v in added.items()
        }
        assert {s["id"] for s in json.loads(listing)["sources"]} == set(added)
        for mention in json.loads(mentions)["mentions"]:
            assert added[mention["source_id"]][1] in mention["content"]
    _, jsonl = checked("mentions", "export", "--tenant", tenant, "--format", "jsonl", codes=known)
    _, exported = checked("mentions", "export", "--tenant", tenant, "--format", "csv", codes=known)
    if not added:
        return
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert len(rows) == len(list(csv.DictReader(io.StringIO(exported)))) > 0
    for cell in (c for row in csv.reader(io.StringIO(exported)) for c in row):
        if not re.fullmatch(r"-?\d+(\.\d+)?(e-?\d+)?", cell):  # a number is a number, not a formula
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell  # a spreadsheet would run it


def test_the_hostile_strings_reach_every_command(in_process: None) -> None:
    """The property above is not vacuous: a hostile name and keyword are added, synced and shown."""
    _, out = checked("source", "add", "mock", "--tenant", "999", "--name", "[/] \x1b[2J", "--keyword", "\u202e[/]")
    assert "[/] \\x1b[2J" in out
    source_id = re.search(r"source (\d+)", out).group(1)
    checked("sync", "source", source_id, "--since", (datetime.now(UTC) - timedelta(hours=1)).isoformat(), codes={0})
    _, shown = checked("mentions", "list", "--tenant", "999", codes={0})
    assert "\\u202e[/]" in shown
