"""Reddit's harness: the loopback stand-in of the token endpoint and search (tests/fakes/reddit_api.py).

Published posts are 15 minutes apart, later than everything before, and all in the past: each sync
re-reads the 10 minutes before the newest stored post (Reddit's search index lags), which with this
spacing is the newest stored post alone.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.reddit import normalize_page
from slsync.models import Mention
from tests.contract.harness import FIXTURES, Harness
from tests.fakes.reddit_api import RedditApi


class RedditHarness(Harness):
    platform = "reddit"
    page_size = 100

    def start(self) -> None:
        self.api = RedditApi().start()
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)

    def stop(self) -> None:
        self.api.stop()

    def env(self) -> dict[str, str]:
        return self.api.env()

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--exclude", "jobs"]

    def publish(self, count: int) -> None:
        for _ in range(count):
            self.clock += timedelta(minutes=15)
            self.api.add_post(self.clock)

    def api_calls(self) -> int:
        return len(self.api.searches)

    def fail(self, status: int, times: int) -> None:
        self.api.faults = [status] * times

    def limit(self, reset_in: timedelta) -> None:
        self.api.reset_at = datetime.now(UTC).replace(microsecond=0) + reset_in
        self.api.fail_429_from_call = len(self.api.searches)

    def clear(self) -> None:
        self.api.faults = []
        self.api.fail_429_from_call = None

    def normalize_page(self, body: Any) -> tuple[list[Mention], int]:
        return normalize_page(body)

    def recorded_pages(self) -> list[Any]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "reddit").glob("*.json"))]


HARNESS = RedditHarness
