"""The docs must not rot: the CLI reference is what the generator writes now, every setting the code reads is
on the settings page (and nothing else is), the tutorial runs as written, and the README stays short and
points at pages that exist. `mkdocs build --strict` in .ci/run checks the site's links and nav."""

from __future__ import annotations

import difflib
import getpass
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from slsync.cli import app
from slsync.connectors import settings_by_variable

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SETTINGS_PAGE = DOCS / "reference" / "settings.md"
TUTORIAL = DOCS / "tutorial.md"
README = ROOT / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CRON_MARKER = "<!-- The tests play cron here"


# --- the CLI reference ------------------------------------------------------------------------------------


def _cli_reference_script():  # noqa: ANN202 - a module loaded from a path
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_what_the_generator_writes_now() -> None:
    script = _cli_reference_script()
    expected = script.render()
    checked_in = script.PAGE.read_text(encoding="utf-8") if script.PAGE.exists() else ""
    if checked_in != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    checked_in.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/reference/cli.md (checked in)",
                    "generated from slsync/cli.py now",
                )
            )[:60]
        )
        pytest.fail(
            "docs/reference/cli.md differs from the commands' --help. Fix: run"
            " `.venv/bin/python scripts/cli_reference.py` and commit docs/reference/cli.md.\n" + diff
        )


def test_the_cli_reference_covers_every_command() -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "slsync", "--help"], capture_output=True, text=True, env=_plain_env(), check=True
    )
    for group in ("source", "sync", "mentions"):
        assert f"`slsync {group}`" in page
    for command in ("platforms", "connect", "status", "analyze", "mock", "demo"):
        assert command in done.stdout
        assert f"## `slsync {command}`" in page, f"`slsync {command}` is missing from docs/reference/cli.md"


def cli_commands() -> dict[str, bool]:
    """Every command of the Typer app ("sync source", ...) and whether it takes --json."""
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    found: dict[str, bool] = {}

    def walk(command: typer.core.TyperCommand, path: list[str]) -> None:
        if isinstance(command, typer.core.TyperGroup):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*path, name])
        else:
            found[" ".join(path)] = any("--json" in getattr(p, "opts", ()) for p in command.params)

    walk(root, [])
    return found


def test_every_command_is_described_on_the_commands_page() -> None:
    page = (DOCS / "reference" / "commands.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## `slsync ([a-z -]+?)(?: [A-Z\[-].*)?`$", page, re.MULTILINE)
    missing = sorted(set(cli_commands()) - set(headings))
    assert not missing, (
        f"docs/reference/commands.md has no section for: {', '.join(missing)}."
        " Fix: add a `## `slsync COMMAND ...`` section saying what it does, prints and returns."
    )


def test_every_json_document_is_shown_once_and_parses() -> None:
    """One fenced JSON block per command that takes --json, under a heading naming it, as valid JSON."""
    page = (DOCS / "reference" / "json.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", page, flags=re.MULTILINE)[1:]
    shown: dict[str, list[str]] = {}
    for section in sections:
        heading = section.splitlines()[0]
        command = re.match(r"`slsync ([a-z -]+?)(?: [A-Z_]+)?(?: --json)?`", heading)
        assert command, f"docs/reference/json.md: a heading that names no command: {heading!r}"
        shown[command.group(1)] = [code for info, code in fenced_blocks(section) if info == "json"]
    commands = cli_commands()
    expected = {name for name, takes_json in commands.items() if takes_json}
    assert expected <= set(shown), (
        f"docs/reference/json.md shows no document for: {', '.join(sorted(expected - set(shown)))}."
        " Fix: add a `## `slsync COMMAND --json`` section with one ```json block of its real output."
    )
    assert set(shown) <= set(commands), f"docs/reference/json.md names unknown commands: {set(shown) - set(commands)}"
    for command, blocks in shown.items():
        if command in expected:
            assert len(blocks) == 1, f"docs/reference/json.md: `{command}` needs exactly one ```json block"
        for block in blocks:
            try:
                json.loads(block)
            except ValueError as exc:
                pytest.fail(f"docs/reference/json.md: the ```json block of `{command}` is not JSON: {exc}")


# --- settings ---------------------------------------------------------------------------------------------


def code_settings() -> set[str]:
    """Every variable a setting reads, core and each platform's, as the code enumerates them."""
    return set(settings_by_variable())


def documented_settings() -> set[str]:
    """The variables named in the first column of the settings page's tables."""
    names: set[str] = set()
    for line in SETTINGS_PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def test_every_setting_the_code_reads_is_documented() -> None:
    missing = sorted(code_settings() - documented_settings())
    assert not missing, (
        f"settings the code reads that docs/reference/settings.md does not document: {', '.join(missing)}."
        " Fix: add a row `| `NAME` | default | meaning |` for each to the table on that page."
    )


def test_every_documented_setting_exists() -> None:
    unknown = sorted(documented_settings() - code_settings())
    assert not unknown, (
        f"docs/reference/settings.md documents settings no settings model declares: {', '.join(unknown)}."
        " Fix: remove the row, or correct the name to the one in slsync/config.py or the connector's settings."
    )


def test_every_slsync_variable_named_anywhere_in_the_docs_exists() -> None:
    known = code_settings()
    pages = [README, *sorted(DOCS.rglob("*.md"))]
    # Python blocks are example code (the developer guide's made-up platform declares its own settings).
    prose = {
        page: FENCE.sub(lambda m: "" if m[1].strip() == "python" else m[0], page.read_text("utf-8")) for page in pages
    }
    wrong = {
        f"{page.relative_to(ROOT)}: {name}"
        for page, text in prose.items()
        for name in re.findall(r"\bSLSYNC_[A-Z0-9_]*[A-Z0-9]\b", text)
        if name not in known
    }
    assert not wrong, (
        f"pages name SLSYNC_ variables that no setting reads: {'; '.join(sorted(wrong))}."
        " Fix: correct the name (see docs/reference/settings.md)."
    )


def test_the_settings_found_include_every_kind() -> None:
    """The enumeration itself: core settings, platform credentials under their own names, endpoints."""
    found = code_settings()
    assert {"SLSYNC_DATABASE_URL", "SLSYNC_TOKEN_STORE", "TWITTER_BEARER_TOKEN", "SLSYNC_TWITTER_API_URL"} <= found
    assert {"REDDIT_USER_AGENT", "YOUTUBE_API_KEY", "TIKTOK_CLIENT_KEY", "LINKEDIN_CLIENT_ID"} <= found


# --- the tutorial -----------------------------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, code) of every fenced block, in order."""
    return [(info.strip(), code) for info, code in FENCE.findall(text)]


def tutorial_parts() -> tuple[list[str], list[str]]:
    """The tutorial's runnable blocks (info string exactly `sh`) before and after the point where cron runs."""
    text = TUTORIAL.read_text(encoding="utf-8")
    assert CRON_MARKER in text, f"docs/tutorial.md lost its marker {CRON_MARKER!r}: the test plays cron there"
    before, after = text.split(CRON_MARKER, 1)
    return (
        [code for info, code in fenced_blocks(before) if info == "sh"],
        [code for info, code in fenced_blocks(after) if info == "sh"],
    )


def _plain_env(**extra: str) -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "NO_COLOR": "1", **extra}


def _bash(blocks: list[str], *, first: int, prelude: str, cwd: Path, env: dict[str, str]) -> str:
    """Run the blocks in one shell, as a reader pastes them one after the other; stop at the first failing
    command and name its block."""
    script = [
        "trap 'echo \"tutorial block $BLOCK failed (exit $?): $BASH_COMMAND\" >&2; exit 1' ERR",
        prelude,
    ]
    for number, code in enumerate(blocks, start=first):
        script += [f"BLOCK={number}", code]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        "the tutorial's shell blocks failed as written (docs/tutorial.md). Fix the block named below, or the command"
        f" it documents, so that a reader pasting the blocks in order gets through:\n{done.stderr}\n{done.stdout}"
    )
    return done.stdout


CRONTAB_STAND_IN = """#!/bin/sh
# crontab for the tutorial test: keeps the user's crontab in a file instead of cron's spool
case "$1" in
  -l) if [ -f "$CRONTAB_FILE" ]; then cat "$CRONTAB_FILE"; else echo "no crontab for $(id -un)" >&2; exit 1; fi ;;
  -) cat > "$CRONTAB_FILE" ;;
  *) cat "$1" > "$CRONTAB_FILE" ;;
esac
"""


def play_cron(crontab: str, home: Path) -> list[str]:
    """Run every job line of a crontab once, as cron does: /bin/sh, the user's HOME as working directory,
    cron's minimal environment plus the crontab's own assignments."""
    env = {"HOME": str(home), "LOGNAME": getpass.getuser(), "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    commands = []
    for line in crontab.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", line):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip().strip("'\"")
            continue
        command = line.split(None, 5)[5]
        commands.append(command)
        subprocess.run(["/bin/sh", "-c", command], cwd=home, env=env, timeout=300, check=False)
    return commands


def test_the_tutorial_runs_as_written_from_install_to_a_source_synced_by_cron(tmp_path: Path) -> None:
    """The tutorial's `sh` blocks, in a fresh HOME on the embedded database, with the project's own virtual
    environment standing in for the install step and cron played where the tutorial waits for it."""
    before, after = tutorial_parts()
    assert any("source add mock" in code for code in before), "the tutorial no longer adds a mock source"
    assert any("crontab -" in code for code in before), "the tutorial no longer installs a crontab line"
    install = [code for info, code in fenced_blocks(TUTORIAL.read_text(encoding="utf-8")) if "pip install" in code]
    assert install and install[0].strip() in README.read_text(encoding="utf-8"), (
        "the tutorial's install command is not the README's quickstart any more"
    )

    home = tmp_path / "home"
    checkout = home / "slsync"
    checkout.mkdir(parents=True)
    # the install step's result: this test's own environment, with slsync installed in it
    (checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "crontab").write_text(CRONTAB_STAND_IN)
    (stand_ins / "crontab").chmod(0o755)
    crontab_file = tmp_path / "crontab"
    env = _plain_env(HOME=str(home), CRONTAB_FILE=str(crontab_file))
    env["PATH"] = f"{stand_ins}:{env.get('PATH', '/usr/bin:/bin')}"

    shown = _bash(before, first=1, prelude="", cwd=checkout, env=env)
    assert "added mock source 2" in shown and "source 2: ok: saved" in shown, shown

    installed = crontab_file.read_text()
    jobs = [line for line in installed.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert jobs and jobs[-1].startswith("*/15 * * * * /"), f"the crontab line is not an absolute */15 job: {jobs}"
    assert Path(jobs[-1].split()[5]).is_file(), "the crontab line names a slsync that does not exist"

    # fifteen minutes later: the source is due, and cron runs the line
    subprocess.run([sys.executable, "-c", _MAKE_DUE], cwd=home, env=_plain_env(HOME=str(home)), check=True, timeout=120)
    play_cron(installed, home)
    written = home / "slsync-sync.log"
    log = written.read_text() if written.exists() else "(cron's run wrote no ~/slsync-sync.log)"
    assert "1 synced, 0 failed" in log, f"cron's run of {jobs[-1]!r} did not sync the source:\n{log}"

    # the reader's shell still has step 1's environment
    shown = _bash(after, first=len(before) + 1, prelude=". .venv/bin/activate", cwd=checkout, env=env)
    assert "1 synced, 0 failed" in shown


_MAKE_DUE = """
from slsync import db
from slsync.config import get_settings
with db.connect(get_settings()) as conn:
    conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 second'")
"""


# --- the README -------------------------------------------------------------------------------------------


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 150, f"README.md has {lines} lines (at most 150): move the detail into a page under docs/"


def test_the_readme_links_point_at_files_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert links and not broken, f"README.md links to missing files: {broken}"


def test_the_readme_quickstart_commands_are_the_two_documented_ones() -> None:
    blocks = [code.strip() for info, code in fenced_blocks(README.read_text(encoding="utf-8")) if info == "sh"]
    assert "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/slsync demo" in blocks
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest" in blocks
