"""docs/reference/json.md matches what the commands print: every key a command prints is in its documented example,
and every key of the example is printed by the real command here (the few that only a situation this test does not
create prints are listed below, and the page's text must name them).

Keys are compared as paths ("results[].analysis.analyzer"): the elements of a list share one shape.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from slsync import db, tokens
from tests.conftest import Cli, add_mock_source, add_x_source
from tests.test_docs import DOCS, cli_commands, fenced_blocks

PAGE = DOCS / "reference" / "json.md"

# Documented keys that only a situation this test does not create prints; the section's text must name each (a
# part of its path, in backticks) so a reader knows when it appears. An empty object in an example ("options": {})
# is free-form: its keys are data, not documented one by one.
CONDITIONAL = {
    "sync due": {
        # a listing cap cut the pass short, and a credential too poor for every due source: tests/test_coverage.py
        "results[].gaps_recorded", "results[].gaps_recorded[].from", "results[].gaps_recorded[].to",
        "results[].gaps_recorded[].reason", "results[].gaps_recorded[].missed_estimate",
        "results[].gaps_recorded[].stream",
    },
    # a sync running at the same moment: tests/test_cli.py
    "status": {"active_syncs[].source_id", "active_syncs[].started_at", "active_syncs[].duration_ms"},
    # the analyzer could not judge a mention (an external analyzer's answer): tests/test_analysis.py
    "status SOURCE_ID": {"stats.sentiment_7d.unknown"},
}  # fmt: skip


def segments(path: str) -> list[str]:
    return [part.removesuffix("[]") for part in path.split(".")]


def shape(value: Any, path: str = "") -> set[str]:
    """Every key path of a JSON value."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            found |= {here} | shape(item, here)
    elif isinstance(value, list):
        for item in value:
            found |= shape(item, f"{path}[]")
    return found


def free_form(value: Any, path: str = "") -> set[str]:
    """The paths where an example shows an empty object: its keys are data (a connector's options), not fields."""
    found: set[str] = set()
    if isinstance(value, dict):
        if not value and path:
            found.add(path)
        for key, item in value.items():
            found |= free_form(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            found |= free_form(item, f"{path}[]")
    return found


Docs = dict[str, tuple[set[str], str, set[str]]]


def documented() -> Docs:
    """Per command heading (`status SOURCE_ID`, `sync due`...): the key paths of its example, its text, and the
    paths of its free-form objects."""
    sections = re.split(r"^## ", PAGE.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]
    found = {}
    for section in sections:
        heading = re.match(r"`slsync ([a-z -]+?(?: [A-Z_]+)?)(?: --json)?`", section.splitlines()[0])
        assert heading, section.splitlines()[0]
        blocks = [code for info, code in fenced_blocks(section) if info == "json"]
        prose = re.sub(r"^```.*?^```", "", section, flags=re.MULTILINE | re.DOTALL)
        example = json.loads(blocks[0])
        found[heading.group(1)] = (shape(example), prose, free_form(example))
    return found


def undocumented(command: str, printed: Any, docs: Docs) -> list[str]:
    shown, _, maps = docs[command]
    return sorted(p for p in shape(printed) - shown if not any(p.startswith(f"{m}.") for m in maps))


class Printed:
    """Runs commands with --json and collects each one's documents."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.documents: dict[str, list[Any]] = {}

    def __call__(self, heading: str, *args: str, code: int = 0, **env: str) -> Any:
        """Run the command the heading names (its words before a placeholder such as SOURCE_ID) with `args`."""
        command = [word for word in heading.split() if not word.isupper()]
        done = self.cli(*command, *args, "--json", env=env)
        assert done.returncode == code, (args, done.stdout, done.stderr)
        document = done.json()
        self.documents.setdefault(heading, []).append(document)
        return document


@pytest.fixture
def printed(x_cli: Cli, x_api: Any, conn: db.Connection, tmp_path: Path) -> Printed:
    """Every command that takes --json, run in the situations that print each of its documented keys."""
    cli = x_cli  # the X stand-in's settings too: an X source's posts are read again below
    run = Printed(cli)
    run("platforms")
    fixed = run("source add", "mock", "--tenant", "1", "--name", "Acme", "--keyword", "acme")["id"]
    auto = run("source add", "mock", "--tenant", "1", "--name", "Auto", "--keyword", "acme",
               "--interval", "auto")["id"]  # fmt: skip
    broken = add_mock_source(conn, name="broken", fail_after_page=0)
    run("mock", str(fixed), "--count", "5")  # mentions left `new`: the breakdown's `pending`
    run("sync source", str(fixed))  # saves, so labels: `analysis`
    run("sync source", str(auto))  # an auto interval: `next_interval_minutes`
    add_mock_source(conn, name="new")  # something new to save, so the tenant's run labels: `analysis`
    run("sync tenant", "1", code=1)  # one fails
    conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 minute' WHERE id IN (%s, %s)",
                 (fixed, broken))  # fmt: skip
    add_mock_source(conn, name="due")  # due at once, with something to save
    run("sync due", "--concurrency", "2", code=1)
    run("mock", str(fixed), "--count", "5")
    conn.execute(
        "INSERT INTO sl_coverage_gaps (source_id, tenant_id, stream, from_at, to_at, reason, missed_estimate)"
        " VALUES (%s, 1, '', now() - interval '2 days', now() - interval '1 day', 'failing', 12)",
        (fixed,),
    )
    db.spend_quota(conn, "youtube:app:0123456789abcdef", db_today(conn), 100, 10_000)
    run("status SOURCE_ID", str(fixed))
    run("status")
    run("analyze")
    run("mentions list", "--limit", "3")
    run("source list")
    key = tokens.new_key()
    run("tokens migrate", "--to", "database", SLSYNC_TOKEN_STORE="file", SLSYNC_TOKEN_KEY=key)
    run("tokens rotate-key", SLSYNC_TOKEN_STORE="database", SLSYNC_TOKEN_KEY=key)
    run("doctor")  # warnings (the failing source, the gap), no failure
    run("source remove", str(broken))
    # an X source whose posts are read again (one deleted, one edited): refresh, and sync due's refresh and retention
    x_api.add_posts(4, spacing=timedelta(seconds=10))
    x_source = add_x_source(cli)
    cli.ok("sync", "source", str(x_source))
    make_due = (
        "UPDATE sl_mentions SET refresh_due_at = now() - interval '1 second'"
        " WHERE source_id = %s AND refresh_due_at IS NOT NULL"
    )
    conn.execute(make_due, (x_source,))
    posts = [post["id"] for post in x_api.posts]
    x_api.delete(posts[0])
    x_api.edit(posts[1], "Terrible service from Acme, never again")
    run("refresh")
    conn.execute(make_due, (x_source,))
    run("sync due", SLSYNC_RETENTION_DAYS="3650")  # nothing due to sync: its refresh and retention parts
    run("prune", SLSYNC_RETENTION_DAYS="3650")
    author = conn.execute(
        "SELECT author_handle FROM sl_mentions WHERE source_id = %s AND author_handle IS NOT NULL LIMIT 1",
        (x_source,),
    ).fetchone()["author_handle"]
    run("mentions forget", "--platform", "twitter", "--author", author)
    return run


def db_today(conn: db.Connection) -> Any:
    return conn.execute("SELECT current_date AS d").fetchone()["d"]


def test_every_key_printed_is_documented_and_every_documented_key_printed(printed: Printed) -> None:
    docs = documented()
    json_commands = {name for name, takes in cli_commands().items() if takes}
    covered = {heading.split(" SOURCE_ID")[0] for heading in printed.documents}
    assert covered == json_commands, f"commands with --json this test does not run: {json_commands - covered}"
    problems = []
    for heading, documents in printed.documents.items():
        shown, prose, _ = docs[heading]
        seen: set[str] = set()
        for document in documents:
            extra = undocumented(heading, document, docs)
            if extra:
                problems.append(f"`slsync {heading} --json` prints keys docs/reference/json.md does not show: {extra}")
            seen |= shape(document)
        conditional = CONDITIONAL.get(heading, set())
        never = sorted(shown - seen - conditional)
        if never:
            problems.append(f"docs/reference/json.md shows keys `slsync {heading} --json` never printed: {never}")
        unnamed = sorted(p for p in conditional if not any(f"`{part}`" in prose for part in segments(p)))
        if unnamed:
            problems.append(f"the text of `slsync {heading}` must say when these keys appear: {unnamed}")
    assert not problems, "\n".join(problems)


def test_a_key_added_without_documentation_fails(cli: Cli, conn: db.Connection) -> None:
    """What the test above does when a release adds a key and not its documentation."""
    docs = documented()
    source = add_mock_source(conn)
    cli.ok("sync", "source", str(source))
    conn.execute(
        "INSERT INTO sl_coverage_gaps (source_id, tenant_id, from_at, to_at, reason)"
        " VALUES (%s, 1, now() - interval '2 days', now() - interval '1 day', 'failing')",
        (source,),
    )
    status = cli.ok("status", str(source), "--json").json()
    assert undocumented("status SOURCE_ID", status, docs) == []
    status["source"]["new_field"] = 1
    status["gaps"][0]["also_new"] = "x"
    assert undocumented("status SOURCE_ID", status, docs) == ["gaps[].also_new", "source.new_field"]


def test_mentions_list_prints_every_column_but_the_payload_and_refresh_schedule(cli: Cli, conn: db.Connection) -> None:
    columns = {
        row["column_name"]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sl_mentions'"
            " AND table_schema = current_schema()"
        ).fetchall()
    }
    source = add_mock_source(conn)
    cli.ok("mock", str(source), "--count", "2")
    mention = cli.ok("mentions", "list", "--json").json()["mentions"][0]
    # the raw payload has its own table; when a post is next and was last read again is the refresh's own business
    shown = columns - {"raw", "refresh_due_at", "refreshed_at"}
    assert set(mention) == shown
    assert set(db.MENTION_COLUMNS) == shown
