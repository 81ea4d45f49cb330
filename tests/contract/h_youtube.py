"""YouTube's harness: the loopback stand-in of the Data API v3 (tests/fakes/youtube_api.py).

The contract's source searches videos (search.list, 100 units a call); its quota signal is Google's
403 quotaExceeded, and its refused credentials are the 400 keyInvalid Google sends for a bad key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.youtube import normalize_page
from slsync.models import Mention
from tests.contract.harness import FIXTURES, Harness
from tests.fakes.youtube_api import API_KEY, YouTubeApi


class YouTubeHarness(Harness):
    platform = "youtube"
    page_size = 50

    def start(self) -> None:
        self.api = YouTubeApi().start()
        self.newest = datetime.now(UTC) - timedelta(minutes=10)

    def stop(self) -> None:
        self.api.stop()

    def env(self) -> dict[str, str]:
        return {"SLSYNC_YOUTUBE_API_URL": self.api.url, "YOUTUBE_API_KEY": API_KEY}

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--language", "en"]

    def publish(self, count: int) -> None:
        # whole seconds apart and always after the newest so far: publishedAfter has second precision
        newest = max(datetime.now(UTC), self.newest + timedelta(seconds=count + 1))
        self.api.add_videos(count, newest=newest, spacing=timedelta(seconds=1))
        self.newest = newest

    def api_calls(self) -> int:
        return len(self.api.calls)

    def fail(self, status: int, times: int) -> None:
        self.api.faults = [status] * times

    def limit(self, reset_in: timedelta) -> None:
        # YouTube's quota lifts at midnight Pacific time whatever reset_in says; slsync waits for that
        self.api.quota_exceeded = True

    def clear(self) -> None:
        self.api.faults = []
        self.api.quota_exceeded = False

    def normalize_page(self, body: Any) -> tuple[list[Mention], int]:
        return normalize_page(body)

    def recorded_pages(self) -> list[Any]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "youtube").glob("*.json"))]


HARNESS = YouTubeHarness
