"""A stand-in platform that behaves like a real newest-first paged search API.

Each source sees its own deterministic stream: one post in every 10-minute slot (at a seeded
offset inside the slot), texts from positive / negative / neutral templates about the source's
keyword, varied authors and metrics. Pages hold 100 posts, newest first, and page back towards the
cursor, so a first sync backfills 7 days (about 1,000 posts) and an immediate re-sync finds only
what was posted since. Like X's recent search it allows 450 calls per 15-minute window: a run that
has used them stops as rate limited and the next continues after the reset; `--since` reaches back
at most two years. Options slow it down, break it after page k (so tests can kill or fail a run
mid-way) or change its window.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from slsync.connectors.base import Connector, CursorDoc, whole_number
from slsync.errors import AuthError, Fatal, RateLimited, Retriable
from slsync.models import Mention, Page, RateLimit

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
SLOT_SECONDS = 600
PAGE_SIZE = 100
WINDOW_CALLS = 450  # calls per 15-minute window, reported like a real API's rate-limit headers, and enforced
WINDOW = timedelta(minutes=15)
# How far `--since` reaches back (about 105,000 posts): the stream itself has no beginning.
LOOKBACK = timedelta(days=730)

POSITIVE = (
    "Loving the new {kw}! Best thing I bought this year.",
    "{kw} support sorted my problem in five minutes. Impressed.",
    "Just tried {kw} and wow, I highly recommend it.",
    "Shout-out to {kw} for the fast delivery, great service!",
    "{kw} keeps getting better. Excellent update.",
)
NEGATIVE = (
    "{kw} app keeps crashing after the update. Really frustrating.",
    "Still waiting on my {kw} refund, three weeks now. Terrible service.",
    "Why is {kw} so expensive lately? Disappointed.",
    "My {kw} order arrived broken. Not happy at all.",
    "{kw} customer service hung up on me twice. Awful.",
)
NEUTRAL = (
    "Has anyone compared {kw} with the alternatives?",
    "{kw} announced new opening hours today.",
    "Reading about the {kw} pricing change this morning.",
    "Is {kw} available in Canada yet?",
    "Where can I buy {kw} in Berlin?",
)
FIRST = ("Ana", "Ben", "Chloe", "Dev", "Emeka", "Fatima", "Goro", "Hana", "Ivan", "Julia", "Kofi", "Lena")
LAST = ("Silva", "Okafor", "Nguyen", "Schmidt", "Haddad", "Kowalski", "Tanaka", "Moreau", "Reyes", "Larsen")
CITIES = (
    "Lisbon, Portugal",
    "Lagos, Nigeria",
    "Austin, TX",
    "Berlin, Germany",
    "Osaka, Japan",
    None,
    None,
    None,
)
FAILURES = {"retriable": Retriable, "fatal": Fatal, "auth": AuthError, "rate_limit": RateLimited}


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 60:
        raise ValueError("must be between 0 and 60 seconds")
    return number


def _page_number(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _failure_kind(value: str) -> str:
    if value not in FAILURES:
        raise ValueError(f"must be one of {', '.join(FAILURES)}")
    return value


def _slot_rng(source_id: int, seq: int) -> random.Random:
    return random.Random(f"slsync-mock:{source_id}:{seq}")


def post_time(source_id: int, seq: int) -> datetime:
    offset = _slot_rng(source_id, seq).randrange(SLOT_SECONDS)
    return EPOCH + timedelta(seconds=seq * SLOT_SECONDS + offset)


def latest_seq(source_id: int, now: datetime) -> int:
    """The newest post published at or before now."""
    seq = math.floor((now - EPOCH).total_seconds() / SLOT_SECONDS)
    return seq if post_time(source_id, seq) <= now else seq - 1


def first_seq_since(source_id: int, since: datetime) -> int:
    """The oldest post published at or after since."""
    seq = math.floor((since - EPOCH).total_seconds() / SLOT_SECONDS)
    return seq if post_time(source_id, seq) >= since else seq + 1


def search_term(config: Mapping[str, Any]) -> str:
    for key, prefix in (("keywords", ""), ("hashtags", "#"), ("mentions", "@")):
        values = config.get(key) or []
        if values:
            return prefix + str(values[0]).lstrip("#@")
    return "slsync"


def build_post(platform: str, term: str, external_id: str, published_at: datetime, rng: random.Random) -> Mention:
    """One mock post; every varying field comes from rng, so a seeded rng gives the same post."""
    tone = rng.choice((POSITIVE, NEGATIVE, NEUTRAL))
    text = rng.choice(tone).format(kw=term)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    handle = f"{first.lower()}_{last.lower()}{rng.randrange(100)}"
    followers = int(10 ** rng.uniform(1, 5.7))
    media_type = rng.choices(("text", "image", "video", "link"), weights=(60, 25, 10, 5))[0]
    media_urls = (
        (f"https://media.mock.slsync.invalid/{external_id}.{'jpg' if media_type == 'image' else 'mp4'}",)
        if media_type in ("image", "video")
        else ("https://example.com/article",)
        if media_type == "link"
        else ()
    )
    likes = int(rng.expovariate(1 / 40))
    comments = int(rng.expovariate(1 / 6))
    shares = int(rng.expovariate(1 / 4))
    verified = rng.random() < 0.05
    location = rng.choice(CITIES)
    url = f"https://mock.slsync.invalid/{handle}/status/{external_id}"
    raw = {
        "id": external_id,
        "text": text,
        "created_at": published_at.isoformat(),
        "author": {"name": f"{first} {last}", "handle": handle, "followers": followers, "verified": verified},
        "metrics": {"likes": likes, "comments": comments, "shares": shares},
        "media": {"type": media_type, "urls": list(media_urls)},
        "place": location,
        "lang": "en",
    }
    return Mention(
        platform=platform,
        external_id=external_id,
        published_at=published_at,
        url=url,
        content=text,
        author_name=f"{first} {last}",
        author_handle=handle,
        author_followers=followers,
        author_verified=verified,
        likes_count=likes,
        comments_count=comments,
        shares_count=shares,
        media_type=media_type,
        media_urls=media_urls,
        location=location,
        language="en",
        raw=raw,
    )


def stream_post(source_id: int, term: str, seq: int) -> Mention:
    return build_post("mock", term, f"mock-{source_id}-{seq}", post_time(source_id, seq), _slot_rng(source_id, seq))


def generate(platform: str, source_id: int, term: str, count: int, now: datetime) -> Iterator[Mention]:
    """Random posts of the last 7 days for `slsync mock` (development data, not the stream), one at a time."""
    rng = random.SystemRandom()
    for _ in range(count):
        published = now - timedelta(seconds=rng.uniform(0, 7 * 86400))
        yield build_post(platform, term, f"gen-{source_id}-{rng.getrandbits(64):016x}", published, rng)


def window_reset(now: datetime) -> datetime:
    """When the 15-minute rate-limit window around `now` ends."""
    start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    return start + WINDOW


class MockConnector(Connector):
    platform = "mock"
    title = "Mock"
    connection_type = "none"
    development_only = True
    max_lookback = LOOKBACK
    options = {
        "page_delay": _non_negative_float,
        "fail_after_page": _page_number,
        "fail_with": _failure_kind,
        "calls_per_window": whole_number("calls", 1_000_000),
    }

    def probe(self) -> str | None:
        """Made-up mentions need no credentials."""
        return None

    def pages(self, cursor: CursorDoc, *, since: datetime | None, resume: CursorDoc) -> Iterator[Page]:
        source_id = self.source.id
        options = self.source.config.get("options") or {}
        term = search_term(self.source.config)
        now = self.context.now()
        # A run cut short after its last page left a cursor as good as a committed one.
        known = resume if since is None and resume and "newest_seq" in resume else cursor
        if since is None and resume and "next_seq" in resume:
            top, start, floor = int(resume["newest_seq"]), int(resume["next_seq"]), int(resume["floor_seq"])
        else:
            top = start = latest_seq(source_id, now)
            if since is not None:
                floor = first_seq_since(source_id, since)
            elif known and "newest_seq" in known:
                floor = int(known["newest_seq"]) + 1
            else:
                floor = first_seq_since(source_id, now - timedelta(days=7))
        committed_newest = int(known["newest_seq"]) if known and "newest_seq" in known else None
        newest = top if committed_newest is None else max(top, committed_newest)
        # The window is the platform's, not the run's: calls an earlier run made in it still count.
        allowed = options.get("calls_per_window", WINDOW_CALLS)
        reset_at = window_reset(now)
        left = allowed
        if self.source.rate_limit_reset_at == reset_at and self.source.rate_limit_remaining is not None:
            left = min(self.source.rate_limit_remaining, allowed)

        calls = 0
        # Like a real API, a run makes at least one call, even when it finds nothing.
        while start >= floor or calls == 0:
            if left <= 0:
                until = f"{reset_at:%Y-%m-%d %H:%M} UTC"
                raise RateLimited(f"mock API rate limit: {allowed} calls per 15 minutes used, until {until}", reset_at)
            if options.get("page_delay"):
                time.sleep(options["page_delay"])
            if options.get("fail_after_page") is not None and calls >= options["fail_after_page"]:
                self._fail(options.get("fail_with", "retriable"), calls, now)
            calls += 1
            left -= 1
            end = max(floor, start - PAGE_SIZE + 1)
            mentions = tuple(stream_post(source_id, term, seq) for seq in range(start, end - 1, -1))
            start = min(start, end - 1)
            more = start >= floor
            page_cursor = {"newest_seq": top, "next_seq": start, "floor_seq": floor} if more else {"newest_seq": newest}
            limits = RateLimit(limit=allowed, remaining=left, reset_at=reset_at)
            yield Page(mentions=mentions, cursor=page_cursor, rate_limit=limits)

    @staticmethod
    def _fail(kind: str, served: int, now: datetime) -> None:
        message = f"mock API failed after {served} pages (option fail_after_page)"
        if kind == "rate_limit":
            raise RateLimited(f"mock API rate limit reached after {served} pages", now + timedelta(minutes=10))
        raise FAILURES[kind](message)
