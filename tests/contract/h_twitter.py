"""X's harness: the loopback stand-in of recent search (tests/fakes/x_api.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.twitter import normalize_page
from slsync.models import Mention
from tests.contract.harness import FIXTURES, Harness
from tests.fakes.x_api import XApi


class TwitterHarness(Harness):
    platform = "twitter"
    page_size = 100

    def start(self) -> None:
        self.api = XApi().start()

    def stop(self) -> None:
        self.api.stop()

    def env(self) -> dict[str, str]:
        return {"SLSYNC_TWITTER_API_URL": self.api.url, "TWITTER_BEARER_TOKEN": "app-token"}

    def add_args(self) -> list[str]:
        return ["--keyword", "acme", "--language", "en"]

    def publish(self, count: int) -> None:
        self.api.add_posts(count, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))

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
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "twitter").glob("*search*.json"))]


HARNESS = TwitterHarness
