"""Mastodon's harness: a loopback instance serving the hashtag timeline (tests/fakes/mastodon_api.py).

The source is anonymous (a hashtag needs no token) and names a real-looking instance;
SLSYNC_MASTODON_API_URL points every instance at the stand-in, as a proxy would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.mastodon import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.mastodon_api import MastodonApi


class MastodonHarness(StandInHarness):
    platform = "mastodon"
    page_size = 40
    normalizer = staticmethod(normalize_page)

    def start(self) -> None:
        self.api = MastodonApi().start()

    def content_calls(self) -> list[Any]:
        return self.api.content_calls

    def env(self) -> dict[str, str]:
        return {"SLSYNC_MASTODON_API_URL": self.api.url}

    def add_args(self) -> list[str]:
        return ["--hashtag", "acme", "--language", "en", "--option", "instance=https://mastodon.example"]

    def publish(self, count: int) -> None:
        self.api.add_statuses(count, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))


HARNESS = MastodonHarness
