"""X's harness: the loopback stand-in of recent search (tests/fakes/x_api.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.twitter import normalize_page
from tests.contract.harness import FIXTURES, StandInHarness
from tests.fakes.x_api import XApi


class TwitterHarness(StandInHarness):
    platform = "twitter"
    page_size = 100
    normalizer = staticmethod(normalize_page)

    def start(self) -> None:
        self.api = XApi().start()

    def content_calls(self) -> list[Any]:
        return self.api.searches

    def env(self) -> dict[str, str]:
        return {"SLSYNC_TWITTER_API_URL": self.api.url, "TWITTER_BEARER_TOKEN": "app-token"}

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--language", "en"]

    def publish(self, count: int) -> None:
        self.api.add_posts(count, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))

    def recorded_pages(self) -> list[Any]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "twitter").glob("*search*.json"))]


HARNESS = TwitterHarness
