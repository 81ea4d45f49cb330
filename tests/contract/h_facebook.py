"""Facebook's harness: the loopback Graph API stand-in with Facebook Login (tests/fakes/graph_api.py).

The contract's source listens to one managed page and is connected through the real `slsync
connect` (code -> long-lived user token -> page token). Published posts are visitor posts on the
page's feed. Meta's throttling signal is error code 32 with an estimated time to regain access in
X-Business-Use-Case-Usage; its refused token is HTTP 401 code 190. Meta's usage headers give a
percentage, not a reset time, while access is not throttled, so `reports_limits` is False.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from slsync.connectors.facebook import normalize_page
from tests.contract.harness import StandInHarness
from tests.fakes.browser import connect_in_browser
from tests.fakes.graph_api import APP_ID, APP_SECRET, PAGE_ID, GraphApi, Throttle

if TYPE_CHECKING:
    from tests.conftest import Cli


class FacebookHarness(StandInHarness):
    platform = "facebook"
    page_size = 100
    reports_limits = False
    normalizer = staticmethod(normalize_page)
    calls_per_deleted = 1

    def start(self) -> None:
        self.api = GraphApi().start()
        self.newest = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    def content_calls(self) -> list[Any]:
        return self.api.content_calls

    def env(self) -> dict[str, str]:
        return {
            "SLSYNC_FACEBOOK_API_URL": self.api.url,
            "SLSYNC_FACEBOOK_AUTHORIZE_URL": self.api.authorize_url,
            "SLSYNC_FACEBOOK_TOKEN_URL": self.api.token_url,
            "FACEBOOK_APP_ID": APP_ID,
            "FACEBOOK_APP_SECRET": APP_SECRET,
            "SLSYNC_TOKEN_STORE": "file",
        }

    def connect(self, cli: Cli) -> None:
        assert self.source_id is not None
        code, _, stderr, _ = connect_in_browser(cli, self.source_id)
        assert code == 0, stderr

    def add_args(self) -> list[str]:
        return ["--option", f"page={PAGE_ID}"]

    def publish(self, count: int) -> None:
        # whole seconds apart and after the newest so far: `since` has second precision
        newest = max(datetime.now(UTC).replace(microsecond=0), self.newest + timedelta(seconds=count + 1))
        self.api.add_posts(count, newest=newest, spacing=timedelta(seconds=1))
        self.newest = newest

    def limit(self, reset_in: timedelta) -> None:
        minutes = max(1, int(reset_in.total_seconds() // 60))
        self.api.throttle = Throttle(from_call=len(self.content_calls()), regain_minutes=minutes, error=True)

    def clear(self) -> None:
        self.api.faults = []
        self.api.throttle = None


HARNESS = FacebookHarness
