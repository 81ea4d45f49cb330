"""What every connector's test harness provides to the contract suite (tests/contract/test_contract.py).

A harness runs a loopback stand-in of its platform's API (nothing leaves 127.0.0.1), tells slsync
where it is, and can publish posts, fail calls and signal a rate limit or quota on demand. Each
platform has one module `h_<platform>.py` here with a module-level `HARNESS` class.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from slsync import db
from slsync.models import Mention

if TYPE_CHECKING:
    from tests.conftest import Cli


class Harness(ABC):
    platform: ClassVar[str]
    # posts per page the stand-in serves (slsync asks for its maximum; the stand-in may serve fewer)
    page_size: ClassVar[int]
    # True when every answer carries rate-limit or quota information that `status` shows
    reports_limits: ClassVar[bool] = True
    # True when the source's credentials can be renewed after a 401 (a refresh token, a session, a client grant)
    refreshable: ClassVar[bool] = False

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        # set by the suite once the source exists
        self.conn: db.Connection | None = None
        self.source_id: int | None = None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def env(self) -> dict[str, str]:
        """Settings that point slsync at the stand-in: API (and token) URLs and credentials."""

    def connect(self, cli: Cli) -> None:
        """Make the new source (`self.source_id`) ready to sync: platforms whose sources need a user token
        run the real `slsync connect` against their stand-in here (tests/fakes/browser.connect_in_browser)."""
        return None

    @abstractmethod
    def add_args(self) -> list[str]:
        """What follows `slsync source add PLATFORM --tenant 1 --name contract`: search terms, options."""

    @abstractmethod
    def publish(self, count: int) -> None:
        """`count` new posts that the source's search finds, newer than everything before."""

    @abstractmethod
    def api_calls(self) -> int:
        """Content calls made so far (search / list endpoints; not token or session calls)."""

    @abstractmethod
    def fail(self, status: int, times: int) -> None:
        """The next `times` content calls answer HTTP `status`."""

    @abstractmethod
    def limit(self, reset_in: timedelta) -> None:
        """The next content call gets the platform's rate-limit or quota signal, lifting after `reset_in`."""

    @abstractmethod
    def clear(self) -> None:
        """No more failures or limits."""

    def fail_call(self, number: int, status: int) -> None:
        """The `number`-th content call from now (1 is the next) answers HTTP `status`, once."""
        raise NotImplementedError

    def repeat_pages(self, on: bool) -> None:
        """While on, the stand-in answers a page asked for with a next-page token with that same token again
        (or, where slsync counts the pages itself, the first page again): a platform stuck on one page."""
        raise NotImplementedError

    def token_requests(self) -> int:
        """Token endpoint (or session) requests so far, for platforms whose credentials are refreshable."""
        raise NotImplementedError

    def normalize_page(self, body: Any) -> tuple[list[Mention], int] | None:
        """The connector's pure normalizer of one response body; None for a platform without payloads."""
        return None

    # --- reading stored posts again (slsync refresh) ------------------------------------------------

    # the platform lets a post's text be edited (Bluesky's and TikTok's cannot be)
    editable: ClassVar[bool] = True
    # the platform's lookup gives counts (LinkedIn's batch get of posts gives none)
    counted: ClassVar[bool] = True
    # calls a deleted post adds to its batch (Meta refuses the batch naming it, and is asked for the rest again)
    calls_per_deleted: ClassVar[int] = 0

    def lookup_calls(self) -> int:
        """Lookup calls made so far (reading stored posts again)."""
        raise NotImplementedError

    def delete(self, external_id: str) -> None:
        """The post is deleted on the platform."""
        raise NotImplementedError

    def edit(self, external_id: str, text: str) -> None:
        """The post's text is edited on the platform."""
        raise NotImplementedError

    def set_likes(self, external_id: str, likes: int) -> None:
        """The post now has `likes` likes (or its platform's equivalent: a Reddit score, reactions)."""
        raise NotImplementedError

    def recorded_pages(self) -> list[Any]:
        """Real recorded response bodies for this platform (tests/fixtures/real)."""
        return []


FIXTURES = Path(__file__).parent.parent / "fixtures" / "real"


class StandInHarness(Harness):
    """A harness over a stand-in with the X stand-in's fault interface: `faults` (statuses for the next
    calls), `fail_429_from_call`, `reset_at` and `stop()`; the harness names its content calls."""

    api: Any
    # the platform's module-level normalize_page
    normalizer: ClassVar[Callable[[Any], tuple[list[Mention], int]]]

    @abstractmethod
    def content_calls(self) -> list[Any]:
        """The stand-in's record of the content calls made so far."""

    def stop(self) -> None:
        self.api.stop()

    def api_calls(self) -> int:
        return len(self.content_calls())

    def fail(self, status: int, times: int) -> None:
        self.api.faults = [status] * times

    def limit(self, reset_in: timedelta) -> None:
        self.api.reset_at = datetime.now(UTC).replace(microsecond=0) + reset_in
        self.api.fail_429_from_call = len(self.content_calls())

    def clear(self) -> None:
        self.api.faults = []
        self.api.fail_429_from_call = None

    def fail_call(self, number: int, status: int) -> None:
        self.api.faults = [None] * (number - 1) + [status]

    def repeat_pages(self, on: bool) -> None:
        self.api.repeat_pages = on

    def normalize_page(self, body: Any) -> tuple[list[Mention], int]:
        return type(self).normalizer(body)

    def lookup_calls(self) -> int:
        return len(self.api.lookups)

    def delete(self, external_id: str) -> None:
        self.api.delete(external_id)

    def edit(self, external_id: str, text: str) -> None:
        self.api.edit(external_id, text)

    def set_likes(self, external_id: str, likes: int) -> None:
        self.api.set_likes(external_id, likes)

    def recorded_pages(self) -> list[Any]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((FIXTURES / self.platform).glob("*.json"))]
