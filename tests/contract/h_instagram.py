"""Instagram's harness: the loopback stand-in of the Graph API and Facebook Login (tests/fakes/instagram_api.py).

The contract's source names the Facebook page linked to the Instagram account and listens to one
hashtag and to the account's tags; it is connected with the real `slsync connect` against the stand-in's
login dialog. Published media are 11 minutes apart, later than everything before, and all within the
last 24 hours (recent_media's reach): each sync re-reads the 10 minutes before the newest stored media,
which with this spacing holds nothing already stored. The throttling signal is Meta's code 4 with the
usage headers at 100 % and `estimated_time_to_regain_access`.

Meta's usage headers are percentages with no window end while usage is low, so `status` shows a reset
time only once Meta throttles: `reports_limits` is False.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.instagram import normalize_page
from tests.conftest import Cli
from tests.contract.harness import FIXTURES, StandInHarness
from tests.fakes.browser import connect_in_browser
from tests.fakes.instagram_api import PAGE_ID, InstagramApi

SPACING = timedelta(minutes=11)


class InstagramHarness(StandInHarness):
    platform = "instagram"
    page_size = 50
    reports_limits = False
    normalizer = staticmethod(normalize_page)
    calls_per_deleted = 1

    def start(self) -> None:
        self.api = InstagramApi().start()
        self.api.hashtag_id("acme")
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=20)

    def content_calls(self) -> list[Any]:
        return self.api.graph_calls

    def env(self) -> dict[str, str]:
        return {**self.api.env(), "SLSYNC_TOKEN_STORE": "file"}

    def add_args(self) -> list[str]:
        return ["--hashtag", "acme", "--option", f"page={PAGE_ID}"]

    def connect(self, cli: Cli) -> None:
        assert self.source_id is not None
        code, stdout, stderr, _ = connect_in_browser(cli, self.source_id)
        assert code == 0, (stdout, stderr)

    def publish(self, count: int) -> None:
        newest = self.clock + SPACING * count
        self.api.add_hashtag_media("acme", count, newest=newest, spacing=SPACING)
        self.clock = newest

    def recorded_pages(self) -> list[Any]:
        """The recorded media listings (ig_hashtag_search.json holds a hashtag id, not media)."""
        names = ("hashtag_top_media_p1.json", "user_tags_media.json")
        return [json.loads((FIXTURES / "instagram" / name).read_text(encoding="utf-8")) for name in names]


HARNESS = InstagramHarness
