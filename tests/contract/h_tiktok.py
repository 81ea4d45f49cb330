"""TikTok's harness: the loopback stand-in of the Research API's token endpoint and video query
(tests/fakes/tiktok_api.py).

The Research API searches whole UTC days and every sync asks again for the last day the previous one
reached (less one day of overlap), so the first batch is published five days back and later batches
now: an incremental sync then finds only what is new. The throttling signal is TikTok's 429
daily_quota_limit_exceeded, which holds until midnight UTC whatever `reset_in` says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.tiktok import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.tiktok_api import TikTokApi


class TikTokHarness(StandInHarness):
    platform = "tiktok"
    page_size = 100
    normalizer = staticmethod(normalize_page)
    editable = False
    refreshable = True

    def start(self) -> None:
        self.api = TikTokApi().start()
        self.published = 0

    def content_calls(self) -> list[Any]:
        return self.api.queries

    def token_requests(self) -> int:
        return len(self.api.token_calls)

    def env(self) -> dict[str, str]:
        return self.api.env()

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--exclude", "jobs"]

    def publish(self, count: int) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        newest = now - timedelta(days=5) if not self.published else now - timedelta(seconds=5)
        newest = max(newest, self.api.newest() + timedelta(seconds=count + 1)) if self.api.videos else newest
        self.api.add_videos(count, newest=min(newest, now), spacing=timedelta(seconds=1))
        self.published += count

    def limit(self, reset_in: timedelta) -> None:
        self.api.quota_exceeded = True

    def clear(self) -> None:
        self.api.faults = []
        self.api.quota_exceeded = False
        self.api.fail_429_from_call = None


HARNESS = TikTokHarness
