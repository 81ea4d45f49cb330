"""YouTube's harness: the loopback stand-in of the Data API v3 (tests/fakes/youtube_api.py).

The contract's source searches videos (search.list, 100 units a call); its quota signal is Google's
403 quotaExceeded, and its refused credentials are the 400 keyInvalid Google sends for a bad key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.youtube import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.youtube_api import API_KEY, YouTubeApi


class YouTubeHarness(StandInHarness):
    platform = "youtube"
    page_size = 50
    normalizer = staticmethod(normalize_page)

    def start(self) -> None:
        self.api = YouTubeApi().start()
        self.newest = datetime.now(UTC) - timedelta(minutes=10)

    def content_calls(self) -> list[Any]:
        return self.api.calls

    def env(self) -> dict[str, str]:
        return {"SLSYNC_YOUTUBE_API_URL": self.api.url, "YOUTUBE_API_KEY": API_KEY}

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--language", "en"]

    def publish(self, count: int) -> None:
        # whole seconds apart and always after the newest so far: publishedAfter has second precision
        newest = max(datetime.now(UTC), self.newest + timedelta(seconds=count + 1))
        self.api.add_videos(count, newest=newest, spacing=timedelta(seconds=1))
        self.newest = newest

    def limit(self, reset_in: timedelta) -> None:
        # YouTube's quota lifts at midnight Pacific time whatever reset_in says; slsync waits for that
        self.api.quota_exceeded = True

    def clear(self) -> None:
        self.api.faults = []
        self.api.quota_exceeded = False


HARNESS = YouTubeHarness
