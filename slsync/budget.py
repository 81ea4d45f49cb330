"""Rate-limit windows shared by the workers of one `sync` command, per platform credential.

Sources that use the same credential (an app token) share its window: without a shared count, N
parallel workers that each saw "3 calls left" would all call and draw 429s. A worker takes a call
from the budget before each request; when the window is spent, the run ends as rate limited without
calling. The platform's own headers correct the count after every response.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from slsync.errors import RateLimited
from slsync.models import RateLimit


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
