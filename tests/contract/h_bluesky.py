"""Bluesky's harness: the loopback stand-in of searchPosts and the session endpoints (tests/fakes/bluesky_api.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.bluesky import normalize_page
from slsync.models import Mention
from tests.contract.harness import FIXTURES, Harness
from tests.fakes.bluesky_api import BlueskyApi

HANDLE, PASSWORD = "listener.bsky.social", "abcd-efgh-ijkl-mnop"


class BlueskyHarness(Harness):
    platform = "bluesky"
    page_size = 100

    def start(self) -> None:
        self.api = BlueskyApi(accounts={HANDLE: PASSWORD}).start()
        self.newest: datetime | None = None

    def stop(self) -> None:
        self.api.stop()

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
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "bluesky").glob("*.json"))]


HARNESS = BlueskyHarness
