"""Plain, typed, immutable values passed between connectors, the sync engine and the database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Mention:
    """One normalized post. Only platform, external_id and published_at are required."""

    platform: str
    external_id: str
    published_at: datetime
    url: str | None = None
    content: str | None = None
    author_name: str | None = None
    author_handle: str | None = None
    author_followers: int | None = None
    author_verified: bool | None = None
    likes_count: int | None = None
    comments_count: int | None = None
    shares_count: int | None = None
    media_type: str | None = None
    media_urls: tuple[str, ...] | None = None
    location: str | None = None
    language: str | None = None
    raw: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored mention as a lookup reads it again: its row, the platform's id of the post and, for a
    platform that needs it (Mastodon: the instance's own status id), the payload stored with it."""

    id: int
    external_id: str
    published_at: datetime
    raw: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int | None = None
    remaining: int | None = None
    reset_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """A stretch of a source's history that no sync could read: what was published between `start` and
    `end` may be lost for good. `stream` names the query or hashtag a cap cut short ('' for the source)."""

    start: datetime
    end: datetime
    reason: str
    missed_estimate: int | None = None
    stream: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    """One API response: its mentions, the cursor reached after it, and what the platform said of limits.

    `cursor` is connector-owned and opaque to the engine. After the last page of a run it is the
    cursor the next run starts from; after any other page it holds enough to resume the run.
    `errors` counts records in the response that could not be normalized (skipped, logged).
    """

    mentions: tuple[Mention, ...]
    cursor: Mapping[str, Any]
    rate_limit: RateLimit | None = None
    errors: int = 0
    # a pass that ended on the platform's cap before reaching its bound (recorded before the page is saved)
    gaps: tuple[Gap, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    id: int
    tenant_id: int
    platform: str
    name: str
    connection_type: str
    config: Mapping[str, Any]
    status: str
    error_message: str | None
    sync_interval_minutes: int
    last_sync_at: datetime | None
    next_sync_at: datetime
    committed_cursor: Mapping[str, Any] | None
    inflight_cursor: Mapping[str, Any] | None
    rate_limit_limit: int | None
    rate_limit_remaining: int | None
    rate_limit_reset_at: datetime | None
    consecutive_failures: int
    mentions_count: int
    created_at: datetime
    # when the connection's grant ends (only `slsync connect` renews it); None: no known end
    reconnect_by: datetime | None = None
    # when a `sync due` claimed it (None when no claim is held)
    claimed_at: datetime | None = None
    # everything published before this was read (None before a first sync); see sql/006_coverage.sql
    covered_until: datetime | None = None
    inflight_started_at: datetime | None = None
    behind_reason: str | None = None
    # 'fixed', or 'auto' (the interval follows the volume within the bounds)
    interval_mode: str = "fixed"
    min_interval_minutes: int | None = None
    max_interval_minutes: int | None = None
    # new mentions a minute, smoothed over the last syncs; None before a first sync
    mention_rate: float | None = None


@dataclass(slots=True)
class SyncResult:
    """What one source's run did; `skipped` runs made no API call and wrote no run record."""

    source_id: int
    success: bool
    status: str
    message: str = ""
    skipped: bool = False
    pages: int = 0
    mentions_fetched: int = 0
    mentions_saved: int = 0
    duplicates: int = 0
    errors: int = 0
    duration_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # the database failure that stopped this run (status `stopped`): the command ends with it
    stopped_by: Exception | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "success": self.success,
            "skipped": self.skipped,
            "mentions_fetched": self.mentions_fetched,
            "mentions_saved": self.mentions_saved,
            "duplicates": self.duplicates,
            "errors": self.errors,
            "pages": self.pages,
            "status": self.status,
            "message": self.message,
            "duration_ms": self.duration_ms,
            **self.extra,
        }
