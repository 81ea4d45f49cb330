"""Peak memory (RSS) of `slsync sync source ID --since DATE` backfills of 1,000 to 100,000 mock posts.

Why: issue 5 asks that large backfills not need large machines: pages are saved as they arrive and
nothing accumulates, so a 100,000-post backfill must stay under 200 MB peak RSS. Each command runs
as cron would, in its own process; its peak RSS is the kernel's ru_maxrss for that child (os.wait4).
Smaller backfills and `slsync status` in the same run show whether memory grows with the backfill.

    /tmp/v/bin/python benchmarks/memory.py [--posts 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

from _common import (
    cli_workspace,
    connect,
    measure,
    slsync_command,
    table,
    verdict,
)

from slsync import db
from slsync.connectors.mock import SLOT_SECONDS, MockConnector

LIMIT_MB = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--posts", type=int, nargs="+", default=[1_000, 10_000, 100_000], help="backfill sizes (the last is judged)"
    )
    args = parser.parse_args()

    with cli_workspace("memory") as (url, work, env):
        # the mock allows 450 calls a 15-minute window, as X does: 100,000 posts need 1,000
        config = MockConnector.build_config({"keywords": ["Acme"]}, {"calls_per_window": str(max(args.posts) // 50)})
        with connect(url) as conn:
            ids = [
                db.add_source(
                    conn,
                    tenant_id=1,
                    platform="mock",
                    name=f"backfill {n}",
                    connection_type="none",
                    config=config,
                    interval_minutes=15,
                )
                for n in args.posts
            ]
        rows: list[tuple[str, int | str, float, float, float | str, int]] = []
        wall, rss, code, _ = measure(slsync_command("--help"), env, work)
        rows.append(("slsync --help", "-", wall, rss, "-", code))
        backfills: list[tuple[int, float]] = []  # (posts fetched, peak RSS MB)
        for posts, source_id in zip(args.posts, ids, strict=True):
            since = datetime.now(UTC) - timedelta(seconds=posts * SLOT_SECONDS)
            days = (datetime.now(UTC) - since).total_seconds() / 86400
            command = slsync_command(
                "sync", "source", str(source_id), "--since", since.strftime("%Y-%m-%dT%H:%M:%SZ"), "--json"
            )
            print(f"  backfilling ~{posts:,} posts (--since {days:,.1f} days ago) ...", flush=True)
            wall, rss, code, stdout = measure(command, env, work)
            fetched = int(json.loads(stdout)["mentions_fetched"]) if code == 0 else 0
            backfills.append((fetched, rss))
            rows.append((f"sync source --since {days:,.1f} days ago", fetched, wall, rss, fetched / wall, code))
        wall, rss, code, _ = measure(slsync_command("status", "--json"), env, work)
        rows.append((f"status --json ({len(ids)} sources)", "-", wall, rss, "-", code))

    print(table(("command", "posts fetched", "wall s", "peak RSS MB", "posts/s", "exit"), rows, "peak memory"))
    (small, small_rss), (posts, peak) = backfills[0], backfills[-1]
    if posts > small:
        growth = (peak - small_rss) * 1024 / (posts - small) * 1000
        print(f"\ngrowth from {small:,} to {posts:,} posts: {growth:,.0f} KB per 1,000 posts")
    ok = verdict(peak < LIMIT_MB)
    print(f"criterion: peak RSS of a {posts:,}-post backfill < {LIMIT_MB} MB: {peak:.0f} MB -> {ok}")


if __name__ == "__main__":
    main()
