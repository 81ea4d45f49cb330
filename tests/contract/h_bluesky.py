"""Bluesky's harness: the loopback stand-in of searchPosts and the session endpoints (tests/fakes/bluesky_api.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.bluesky import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.bluesky_api import CREATE, REFRESH, BlueskyApi

HANDLE, PASSWORD = "listener.bsky.social", "abcd-efgh-ijkl-mnop"


class BlueskyHarness(StandInHarness):
    platform = "bluesky"
    page_size = 100
    normalizer = staticmethod(normalize_page)
    editable = False
    refreshable = True

    def start(self) -> None:
        self.api = BlueskyApi(accounts={HANDLE: PASSWORD}).start()
        self.newest: datetime | None = None

    def content_calls(self) -> list[Any]:
        return self.api.searches

    def token_requests(self) -> int:
        return len(self.api.calls(CREATE)) + len(self.api.calls(REFRESH))

    def env(self) -> dict[str, str]:
        return {"SLSYNC_BLUESKY_API_URL": self.api.url, "BLUESKY_HANDLE": HANDLE, "BLUESKY_APP_PASSWORD": PASSWORD}

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--language", "en"]

    def publish(self, count: int) -> None:
        # A minute apart at most, as real posts arrive: the overlap slsync re-asks for stays small.
        now = datetime.now(UTC)
        spacing = timedelta(minutes=1)
        if self.newest is not None:
            spacing = min(spacing, (now - self.newest) / (count + 1))
        self.api.add_posts(count, newest=now, spacing=spacing, text="what a day for acme")
        self.newest = now


HARNESS = BlueskyHarness
