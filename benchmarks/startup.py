"""CLI start time: median wall time of `slsync --help`, `platforms` and `status` against `python -c pass`.

Why: cron and operators start slsync many times a day; issue 5 asks that `slsync --help` start in
under 0.3 s (lazy imports, no work at import time). Each command runs --runs times after one
untimed warm-up (which also writes bytecode caches); `status` talks to a migrated database with a
few sources. `python -X importtime` then names the imports that cost `slsync --help` the most.

    /tmp/v/bin/python benchmarks/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import cli_workspace, connect, slsync_command, table, verdict

from slsync import db
from slsync.connectors.mock import MockConnector

LIMIT_SECONDS = 0.3
_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def timed(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return times


def import_times(command: list[str], env: dict[str, str], cwd: Path) -> list[tuple[str, float, float]]:
    """(module, cumulative ms, self ms) of every import `command` makes, as `python -X importtime` reports."""
    if Path(command[0]).name != Path(sys.executable).name:
        command = [sys.executable, *command]  # the entry-point script, run by this interpreter
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    found = []
    for line in done.stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if match:
            own, cumulative, indent, module = match.groups()
            found.append((" " * (len(indent) - 1) + module, int(cumulative) / 1000, int(own) / 1000))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per command (default 10)")
    parser.add_argument("--top", type=int, default=10, help="imports to list (default 10)")
    args = parser.parse_args()

    with cli_workspace("startup") as (url, work, env):
        config = MockConnector.build_config({"keywords": ["Acme"]}, {})
        with connect(url) as conn:
            for n in range(3):
                db.add_source(
                    conn,
                    tenant_id=1,
                    platform="mock",
                    name=f"source {n}",
                    connection_type="none",
                    config=config,
                    interval_minutes=15,
                )
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "slsync --help": slsync_command("--help"),
            "slsync platforms": slsync_command("platforms"),
            "slsync status (3 sources)": slsync_command("status"),
        }
        results = {label: timed(command, env, work, args.runs) for label, command in commands.items()}
        imports = import_times(slsync_command("--help"), env, work)

    base = statistics.median(results["python -c pass"])
    rows = [(label, statistics.median(t), min(t), max(t), statistics.median(t) - base) for label, t in results.items()]
    print(table(("command", "median s", "min s", "max s", "over python s"), rows, f"start time ({args.runs} runs)"))
    top = sorted(imports, key=lambda item: item[1], reverse=True)[: args.top]
    print(table(("module (indent = nesting)", "cumulative ms", "self ms"), top, "slowest imports of `slsync --help`"))
    help_median = statistics.median(results["slsync --help"])
    ok = verdict(help_median < LIMIT_SECONDS)
    print(f"\ncriterion: `slsync --help` median < {LIMIT_SECONDS} s: {help_median:.3f} s -> {ok}")


if __name__ == "__main__":
    main()
