"""Reddit's harness: the loopback stand-in of the token endpoint and search (tests/fakes/reddit_api.py).

Published posts are 15 minutes apart, later than everything before, and all in the past: each sync
re-reads the 10 minutes before the newest stored post (Reddit's search index lags), which with this
spacing is the newest stored post alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.reddit import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.reddit_api import RedditApi


class RedditHarness(StandInHarness):
    platform = "reddit"
    page_size = 100
    normalizer = staticmethod(normalize_page)
    refreshable = True

    def start(self) -> None:
        self.api = RedditApi().start()
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)

    def content_calls(self) -> list[Any]:
        return self.api.searches

    def token_requests(self) -> int:
        return len(self.api.token_calls)

    def env(self) -> dict[str, str]:
        return self.api.env()

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--exclude", "jobs"]

    def publish(self, count: int) -> None:
        for _ in range(count):
            self.clock += timedelta(minutes=15)
            self.api.add_post(self.clock)


HARNESS = RedditHarness
