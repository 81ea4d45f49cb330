"""Mastodon's harness: a loopback instance serving the hashtag timeline (tests/fakes/mastodon_api.py).

The source is anonymous (a hashtag needs no token) and names a real-looking instance;
SLSYNC_MASTODON_API_URL points every instance at the stand-in, as a proxy would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.mastodon import normalize_page
from slsync.models import Mention
from tests.contract.harness import FIXTURES, Harness
from tests.fakes.mastodon_api import MastodonApi


class MastodonHarness(Harness):
    platform = "mastodon"
    page_size = 40

    def start(self) -> None:
        self.api = MastodonApi().start()

    def stop(self) -> None:
        self.api.stop()

    def env(self) -> dict[str, str]:
        return {"SLSYNC_MASTODON_API_URL": self.api.url}

    def add_args(self) -> list[str]:
        return ["--hashtag", "acme", "--language", "en", "--option", "instance=https://mastodon.example"]

    def publish(self, count: int) -> None:
        self.api.add_statuses(count, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))

    def api_calls(self) -> int:
        return len(self.api.content_calls)

    def fail(self, status: int, times: int) -> None:
        self.api.faults = [status] * times

    def limit(self, reset_in: timedelta) -> None:
        self.api.reset_at = datetime.now(UTC).replace(microsecond=0) + reset_in
        self.api.fail_429_from_call = len(self.api.content_calls)

    def clear(self) -> None:
        self.api.faults = []
        self.api.fail_429_from_call = None

    def normalize_page(self, body: Any) -> tuple[list[Mention], int]:
        return normalize_page(body)

    def recorded_pages(self) -> list[Any]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / "mastodon").glob("*.json"))]


HARNESS = MastodonHarness
