"""Write docs/reference/cli.md, the `--help` of every command, with Typer's own docs generator.

Run it after changing a command, an option or a help text, and commit the page:

    .venv/bin/python scripts/cli_reference.py

tests/test_docs.py regenerates the page and fails while the checked-in one differs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "cli.md"
HEADER = (
    "<!-- Generated from the Typer app by scripts/cli_reference.py (typer slsync.cli utils docs):"
    " edit the commands' help in slsync/cli.py and run the script, never this page. -->\n\n"
)


def render() -> str:
    """The page as the generator writes it now."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "cli.md"
        subprocess.run(
            [sys.executable, "-m", "typer", "slsync.cli", "utils", "docs", "--name", "slsync", "--output", str(out)],
            check=True,
            capture_output=True,
            text=True,
        )
        return HEADER + out.read_text(encoding="utf-8")


if __name__ == "__main__":
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE}")
