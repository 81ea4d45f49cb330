"""The mock platform's harness: its stream is made by time, so publishing rolls the cursor back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb

from slsync.connectors.mock import latest_seq, post_time
from tests.contract.harness import Harness

QUIET_SECONDS = 20  # no post of the stream's own may appear while a test's next syncs run


class MockHarness(Harness):
    platform = "mock"
    page_size = 100
    reports_limits = True

    def start(self) -> None:
        self._calls = 0

    def stop(self) -> None:
        pass

    def env(self) -> dict[str, str]:
        return {}

    def add_args(self) -> list[str]:
        return ["--keyword", "Acme"]

    def publish(self, count: int) -> None:
        """Forget the newest `count` posts: to the next sync they are new, exactly as published ones.

        The stream also publishes by itself, one post every 10 minutes; publishing waits until none
        is due within QUIET_SECONDS, so a test's next syncs see exactly `count` new posts."""
        assert self.conn is not None
        source = self.conn.execute(
            "SELECT committed_cursor FROM sl_sources WHERE id = %s", (self.source_id,)
        ).fetchone()
        if not source["committed_cursor"]:
            return  # before the first sync the 7-day stream is there already
        now = datetime.now(UTC)
        upcoming = post_time(self.source_id, latest_seq(self.source_id, now) + 1)
        if upcoming - now < timedelta(seconds=QUIET_SECONDS):
            time.sleep((upcoming - now).total_seconds() + 1)
        newest = latest_seq(self.source_id, datetime.now(UTC))
        forgotten = self.conn.execute(
            "DELETE FROM sl_mentions WHERE source_id = %s AND split_part(external_id, '-', 3)::int > %s",
            (self.source_id, newest - count),
        ).rowcount
        self.conn.execute(
            "UPDATE sl_sources SET committed_cursor = %s, mentions_count = mentions_count - %s WHERE id = %s",
            (Jsonb({"newest_seq": newest - count}), forgotten, self.source_id),
        )

    def api_calls(self) -> int:
        assert self.conn is not None
        row = self.conn.execute("SELECT coalesce(sum(pages), 0) AS n FROM sl_sync_runs").fetchone()
        return int(row["n"])

    def _options(self, **options: object) -> None:
        assert self.conn is not None
        self.conn.execute(
            "UPDATE sl_sources SET config = jsonb_set(config, '{options}', %s) WHERE id = %s",
            (Jsonb(options), self.source_id),
        )

    def fail(self, status: int, times: int) -> None:
        self._options(fail_after_page=0, fail_with="auth" if status == 401 else "retriable")

    def limit(self, reset_in: timedelta) -> None:
        self._options(fail_after_page=0, fail_with="rate_limit")

    def clear(self) -> None:
        self._options()


HARNESS = MockHarness
