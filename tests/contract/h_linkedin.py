"""LinkedIn's harness: the loopback stand-in of OAuth and the Community Management API (tests/fakes/linkedin_api.py).

A LinkedIn source is a user-token source: `connect` runs the real `slsync connect` against the stand-in.
Published notifications alternate between comments on the organization's posts and posts that mention
it (every third mention without its text, so the batch get of posts is exercised), 15 minutes apart,
later than everything before and all in the past: each sync re-reads the 10 minutes before the newest
notification seen, which with this spacing is that notification alone. LinkedIn reports no rate-limit
headers (its limits are daily and shown only in the developer portal), so `status` has none to show;
its throttling signal is a 429, which holds until midnight UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from slsync.connectors.linkedin import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.browser import connect_in_browser
from tests.fakes.linkedin_api import ORGANIZATION_ID, LinkedInApi

if TYPE_CHECKING:
    from tests.conftest import Cli


class LinkedInHarness(StandInHarness):
    platform = "linkedin"
    page_size = 50
    reports_limits = False
    normalizer = staticmethod(normalize_page)
    counted = False
    refreshable = True

    def start(self) -> None:
        self.api = LinkedInApi().start()
        self.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
        self.published = 0

    def content_calls(self) -> list[Any]:
        return self.api.content_calls

    def token_requests(self) -> int:
        return sum(1 for r in self.api.requests if r.path.endswith("/accessToken"))

    def env(self) -> dict[str, str]:
        return self.api.env()

    def connect(self, cli: Cli) -> None:
        assert self.source_id is not None
        code, _, stderr, _ = connect_in_browser(cli, self.source_id)
        assert code == 0, stderr

    def add_args(self) -> list[str]:
        return ["--option", f"organization={ORGANIZATION_ID}"]

    def publish(self, count: int) -> None:
        for _ in range(count):
            self.clock += timedelta(minutes=15)
            self.published += 1
            if self.published % 2:
                self.api.add_comment(self.clock)
            else:
                self.api.add_mention(self.clock, decorated=self.published % 6 != 0)


HARNESS = LinkedInHarness
