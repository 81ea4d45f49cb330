"""Rate-limit windows shared by the workers of one `sync` command, per platform credential.

Sources that use the same credential (an app token) share its window: without a shared count, N
parallel workers that each saw "3 calls left" would all call and draw 429s. A worker takes a call
from the budget before each request; when the window is spent, the run ends as rate limited without
calling. The platform's own headers correct the count after every response.

Work that must never crowd out the syncs (reading stored posts again) takes a share of each window and of
each daily quota, and no more: `WindowShare` and `QuotaShare` below.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from slsync.errors import RateLimited
from slsync.models import RateLimit

# A window the platform never reports (LinkedIn's daily limits): a share counts as this many calls' worth.
UNKNOWN_WINDOW_CALLS = 100


class Budgets(Protocol):
    """What a connector's calls go through: a call taken from its credential's window, and what the platform
    said of the window afterwards."""

    def call(self, key: str, platform: str, *, wait: float = 60.0) -> AbstractContextManager[None]: ...

    def record(self, key: str, limits: RateLimit | None) -> None: ...


@dataclass
class _Window:
    remaining: int
    reset_at: datetime


class RateBudgets:
    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now
        self._changed = threading.Condition()
        self._windows: dict[str, _Window] = {}
        # credentials whose window is unknown and being learned by one call; the others wait for it
        self._probing: set[str] = set()

    @contextmanager
    def call(self, key: str, platform: str, *, wait: float = 60.0) -> Iterator[None]:
        """Around one request: take a call from the credential's window, or raise RateLimited.

        While nothing is known of the window, one call goes first and the others wait for what the
        platform answers, so a burst of workers cannot overrun a window none of them has seen.
        """
        probe = self._take(key, platform, wait)
        try:
            yield
        finally:
            if probe:
                with self._changed:
                    self._probing.discard(key)
                    self._changed.notify_all()

    def _take(self, key: str, platform: str, wait: float) -> bool:
        with self._changed:
            while True:
                window = self._windows.get(key)
                if window is not None and window.reset_at > self._now():
                    if window.remaining <= 0:
                        until = f"{window.reset_at:%Y-%m-%d %H:%M:%S} UTC"
                        raise RateLimited(
                            f"{platform} rate limit of this credential used up until {until}", window.reset_at
                        )
                    window.remaining -= 1
                    return False
                if key not in self._probing:
                    self._probing.add(key)
                    return True
                if not self._changed.wait(timeout=wait):
                    return False  # the probe is taking long: go on rather than stall the run

    def window(self, key: str) -> RateLimit | None:
        """The credential's current window as far as this command knows it (None: not known, or over)."""
        with self._changed:
            window = self._windows.get(key)
            if window is None or window.reset_at <= self._now():
                return None
            return RateLimit(remaining=window.remaining, reset_at=window.reset_at)

    def record(self, key: str, limits: RateLimit | None) -> None:
        """What the platform said after a call: a new window replaces the count, the same one lowers it."""
        if limits is None or limits.remaining is None or limits.reset_at is None:
            return
        with self._changed:
            window = self._windows.get(key)
            if window is None or window.reset_at != limits.reset_at:
                self._windows[key] = _Window(limits.remaining, limits.reset_at)
            else:
                window.remaining = min(window.remaining, limits.remaining)
            self._changed.notify_all()


class ShareSpent(RateLimited):
    """The share of a window or quota set aside for some work is used up; the window itself is not."""


@dataclass
class _Allowance:
    calls: int | None  # calls allowed in the window (None: a usage window, measured by `floor`)
    reset_at: datetime | None = None  # the window it belongs to; None: a usage window or one never reported
    spent: int = 0
    floor: float | None = None  # a usage window: stop once its reported remaining is at or below this
    latest: int | None = None  # the remaining the platform reported last
    reported: bool = True  # False while the platform has not said anything about the window

    def exhausted(self) -> bool:
        if self.calls is not None:
            return self.spent >= self.calls
        return self.latest is not None and self.floor is not None and self.latest <= self.floor


class WindowShare:
    """At most `share` of each credential's rate-limit window, for work that must never crowd out the syncs.

    A window counted in calls (a reset time and the calls left) allows floor(share x the calls left when this
    work first sees it): with 10 calls left and a share of 0.2, 2 calls. A window measured in usage (Meta's
    percentages: remaining but no reset time) allows its reported remaining to fall by `share` of what remained
    at first sight. A window the platform never reports allows share x UNKNOWN_WINDOW_CALLS calls. A new window
    (the old one reset) starts a new allowance. Calls go through the command's budgets as well, so the window
    itself is never overrun either.
    """

    def __init__(self, budgets: RateBudgets, share: float, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._budgets = budgets
        self._share = share
        self._now = now
        self._allowances: dict[str, _Allowance] = {}
        self._known: dict[str, RateLimit] = {}
        self._lock = threading.Lock()
        # calls made through this share, whatever their window
        self.calls = 0

    def learn(self, key: str, limits: RateLimit | None) -> None:
        """What is known of the window from before this command (the last sync of a source using it)."""
        if limits is not None and limits.remaining is not None and limits.reset_at is not None:
            with self._lock:
                self._known.setdefault(key, limits)

    @contextmanager
    def call(self, key: str, platform: str, *, wait: float = 60.0) -> Iterator[None]:
        with self._lock:
            allowance = self._allowances.get(key)
            if allowance is None or (allowance.reset_at is not None and allowance.reset_at <= self._now()):
                allowance = self._allowances[key] = self._first_sight(key)
            if allowance.exhausted():
                until = allowance.reset_at or self._now() + timedelta(minutes=15)
                raise ShareSpent(f"{platform}: the share of the rate-limit window for this work is used", until)
            allowance.spent += 1
        with self._budgets.call(key, platform, wait=wait):
            with self._lock:
                self.calls += 1
            yield

    def record(self, key: str, limits: RateLimit | None) -> None:
        self._budgets.record(key, limits)
        if limits is None or limits.remaining is None:
            return
        with self._lock:
            allowance = self._allowances.get(key)
            if limits.reset_at is not None:  # counted in calls
                if (
                    allowance is not None
                    and allowance.reported
                    and allowance.calls is not None
                    and (allowance.latest is None or limits.remaining <= allowance.latest)
                ):
                    # the window being measured: its remaining only falls (a platform that says its reset in
                    # seconds from now moves the reset time a little with every answer); this work's count goes on
                    allowance.latest, allowance.reset_at = limits.remaining, limits.reset_at
                    return
                # the first word of a window: what was left before the calls this work made in it (those made
                # before the platform said anything, or this one call of a window that just began)
                spent = allowance.spent if allowance is not None and not allowance.reported else 1
                calls = math.floor(self._share * (limits.remaining + spent))
                self._allowances[key] = _Allowance(calls, limits.reset_at, spent, latest=limits.remaining)
            elif allowance is None or allowance.calls is not None:  # a usage window, seen for the first time
                spent = allowance.spent if allowance else 1
                floor = limits.remaining * (1 - self._share)
                self._allowances[key] = _Allowance(None, None, spent, floor, limits.remaining)
            else:
                allowance.latest = limits.remaining

    def _first_sight(self, key: str) -> _Allowance:
        """The allowance of a window this work has not used yet, from what is known of it."""
        known = self._budgets.window(key)
        if known is None:
            prior = self._known.get(key)
            known = prior if prior is not None and prior.reset_at and prior.reset_at > self._now() else None
        if known is not None and known.remaining is not None:
            return _Allowance(math.floor(self._share * known.remaining), known.reset_at, latest=known.remaining)
        return _Allowance(math.floor(self._share * UNKNOWN_WINDOW_CALLS), None, reported=False)


class Ledger(Protocol):
    """The daily quotas shared through the database (connectors.base.Quota), as a share reads them."""

    def spend(self, key: str, units: int, daily_limit: int, day: date) -> int | None: ...

    def exhaust(self, key: str, daily_limit: int, day: date) -> None: ...

    def use_unique(self, key: str, item: str, limit: int, window: timedelta) -> int | None: ...


class QuotaShare:
    """At most `share` of each daily quota (YouTube's units, TikTok's requests and records) for work that must
    never crowd out the syncs: floor(share x the units left when this work first spends from it that day).
    A spend beyond the share is refused as the ledger refuses one beyond the quota (None), and `refused` says
    so, for the caller to tell the share from the quota."""

    def __init__(self, ledger: Ledger, share: float) -> None:
        self._ledger = ledger
        self._share = share
        self._allowed: dict[tuple[str, date], int] = {}
        self._spent: defaultdict[tuple[str, date], int] = defaultdict(int)
        self.refused = False

    def spend(self, key: str, units: int, daily_limit: int, day: date) -> int | None:
        quota = (key, day)
        if units <= 0:  # units given back (a reservation that was not used)
            self._spent[quota] += units
            return self._ledger.spend(key, units, daily_limit, day)
        allowed = self._allowed.get(quota)
        if allowed is not None and self._spent[quota] + units > allowed:
            self.refused = True
            return None
        left = self._ledger.spend(key, units, daily_limit, day)
        if left is None:
            return None
        if allowed is None:
            allowed = self._allowed[quota] = math.floor(self._share * (left + units))
            if units > allowed:
                self._ledger.spend(key, -units, daily_limit, day)
                self.refused = True
                return None
        self._spent[quota] += units
        return left

    def exhaust(self, key: str, daily_limit: int, day: date) -> None:
        self._ledger.exhaust(key, daily_limit, day)

    def use_unique(self, key: str, item: str, limit: int, window: timedelta) -> int | None:
        return self._ledger.use_unique(key, item, limit, window)
