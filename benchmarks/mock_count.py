"""Peak memory (RSS) and rows/s of `slsync mock ID --count 100000`: streamed in batches through the save path a
sync uses, against the previous way (every mention built in a list, then one INSERT), in the same run.

Why: issue 14 found `mock --count 100000` holding everything in memory (434 MB peak) while a sync of 30,000
posts holds 70 MB. Both ways run the real command line in a child process, as cron would; the previous way is
the same command with save_mentions replaced by what it did before (a list, one insert). Each way runs
`--repeat` times, alternating, each on a fresh source; the table shows medians, the child's ru_maxrss
(os.wait4) and its wall time.

    /tmp/v/bin/python benchmarks/mock_count.py [--count 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import (
    cli_workspace,
    connect,
    median,
    slsync_command,
    table,
    verdict,
)
from memory import measure

from slsync import db
from slsync.connectors.mock import MockConnector

# The command line with the previous save: the generated mentions gathered in one list, saved by one INSERT.
ALL_AT_ONCE = (
    "import sys\n"
    "from slsync import db, sync\n"
    "sync.save_mentions = lambda conn, source, mentions: db.insert_mentions(conn, source, list(mentions))\n"
    "from slsync.cli import app\n"
    "sys.argv[0] = 'slsync'\n"
    "app()\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="mentions per command (the issue's 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each way (medians are shown)")
    args = parser.parse_args()

    with cli_workspace("mock_count") as (url, work, env):
        config = MockConnector.build_config({"keywords": ["Acme"]}, {})
        ways = {
            "streamed (1,000 a transaction)": lambda source_id: slsync_command(
                "mock", str(source_id), "--count", str(args.count), "--json"
            ),
            "all at once (previous)": lambda source_id: [
                sys.executable,
                "-c",
                ALL_AT_ONCE,
                "mock",
                str(source_id),
                "--count",
                str(args.count),
                "--json",
            ],  # fmt: skip
        }
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for attempt in range(args.repeat):
            order = list(ways) if attempt % 2 == 0 else list(reversed(ways))
            for name in order:
                with connect(url) as conn:
                    source_id = db.add_source(
                        conn, tenant_id=1, platform="mock", name=f"{name} {attempt}", connection_type="none",
                        config=config, interval_minutes=15,
                    )  # fmt: skip
                wall, rss, code, stdout = measure(ways[name](source_id), env, work)
                saved = json.loads(stdout)["saved"] if code == 0 else 0
                assert saved == args.count, f"{name}: saved {saved} of {args.count}"
                measured[name].append((wall, rss))
                print(f"  {name}, run {attempt + 1}: {wall:.1f} s, {rss:.0f} MB", flush=True)

    rows = []
    for name, runs in measured.items():
        walls, peaks = [w for w, _ in runs], [r for _, r in runs]
        rows.append((name, len(runs), median(walls), args.count / median(walls), median(peaks), min(peaks), max(peaks)))
    print(
        table(
            ("way", "runs", "median wall s", "rows/s", "median peak RSS MB", "min MB", "max MB"),
            rows,
            f"slsync mock ID --count {args.count:,}",
        )
    )
    streamed, previous = rows[0], rows[1]
    print(f"\npeak RSS: {previous[4]:.0f} MB -> {streamed[4]:.0f} MB; rows/s: {previous[3]:,.0f} -> {streamed[3]:,.0f}")
    ok = verdict(streamed[4] < 200)
    print(f"criterion: streamed peak RSS < 200 MB (what a 100,000-post sync may use): {streamed[4]:.0f} MB -> {ok}")


if __name__ == "__main__":
    main()
