"""Reading stored posts again: their engagement now, their text if it was edited, whether they still exist.

A mention is written when a sync finds it, usually minutes after it was posted, when its likes, replies and
shares are near zero. So each stored mention is read again on a decaying schedule (SLSYNC_REFRESH_SCHEDULE:
1, 6, 24 and 72 hours after publication by default; `refresh_due_at` holds the next time) through its
platform's batch lookup (`Connector.lookup`, as many posts a call as the platform allows). What the lookup
finds updates the counts; new text replaces the old one and sends the mention back to the analysis; a post the
platform no longer shows becomes a tombstone, or is removed (SLSYNC_DELETED).

The pass runs as the last step of `sync due`, after every source's sync, and on demand (`slsync refresh`).
It never takes more than SLSYNC_REFRESH_SHARE of a rate-limit window or daily quota (budget.WindowShare and
QuotaShare), stops at the command's deadline, and reads a source's posts under that source's lock, with its
credentials; in `sync due` it leaves alone the sources that are due to sync, so it never holds a lock a sync
is waiting for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from slsync import analysis, db
from slsync.budget import QuotaShare, RateBudgets, ShareSpent, WindowShare
from slsync.connect import context_for
from slsync.connectors import PLATFORMS, connector_class
from slsync.errors import AuthError, ConnectorError, Fatal, NotFound, RateLimited, UsageError
from slsync.models import Mention, RateLimit, Source, Stored

if TYPE_CHECKING:
    import httpx

    from slsync.config import Settings
    from slsync.connectors.base import Connector

log = logging.getLogger("slsync.refresh")

# Posts read from the database at a time, in lookups: one round trip feeds this many calls.
LOOKUPS_PER_READ = 10


@dataclass
class SourceRefresh:
    """What the pass did for one source."""

    source_id: int
    platform: str
    checked: int = 0
    updated: int = 0
    edited: int = 0
    deleted: int = 0
    calls: int = 0
    # done | share_spent | rate_limited | out_of_time | busy | failed
    status: str = "done"
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class RefreshReport:
    sources: list[SourceRefresh] = field(default_factory=list)
    # mentions still due after the pass (for the sources it looked at)
    pending: int = 0
    analysis: dict[str, Any] | None = None

    @property
    def failed(self) -> list[SourceRefresh]:
        return [s for s in self.sources if s.failed]

    def totals(self) -> dict[str, int]:
        keys = ("checked", "updated", "edited", "deleted", "calls")
        return {k: sum(getattr(s, k) for s in self.sources) for k in keys}

    def as_json(self) -> dict[str, Any]:
        return {
            **self.totals(),
            "pending": self.pending,
            "sources_failed": len(self.failed),
            "sources": [asdict(s) for s in self.sources],
            "analysis": self.analysis,
        }


@dataclass
class Pass:
    """What one pass shares across its sources."""

    settings: Settings
    now: Callable[[], datetime]
    deadline: float | None
    windows: WindowShare
    quota: QuotaShare
    http: httpx.Client | None
    everything: bool
    stop: threading.Event = field(default_factory=threading.Event)

    def out_of_time(self) -> bool:
        return self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline)


def refreshable_platforms() -> list[str]:
    """The platforms whose connectors can read stored posts again."""
    return [name for name, p in PLATFORMS.items() if p.connector and connector_class(name).lookup_size]


def refresh(
    conn: db.Connection,
    settings: Settings,
    *,
    now: Callable[[], datetime],
    budgets: RateBudgets,
    deadline: float | None,
    http: httpx.Client | None = None,
    tenant_id: int | None = None,
    source_id: int | None = None,
    everything: bool = False,
    skip_due: bool = False,
    stop: threading.Event | None = None,
) -> RefreshReport:
    """Read again the due mentions (`everything`: every stored one that is not a tombstone) of the matching
    sources, then label the edited ones. `skip_due`: leave out sources due to sync (`sync due`'s own pass)."""
    if source_id is not None:
        source = db.get_source(conn, source_id, tenant_id=tenant_id)
        if not connector_class(source.platform).lookup_size:
            raise UsageError(f"{source.platform} posts cannot be read again: the platform has no lookup")
    share = settings.refresh_share
    run = Pass(
        settings, now, deadline, WindowShare(budgets, share, now), QuotaShare(db.QuotaLedger(conn), share), http,
        everything, stop or threading.Event(),
    )  # fmt: skip
    report = RefreshReport()
    sources = db.refresh_sources(
        conn, platforms=refreshable_platforms(), tenant_id=tenant_id, source_id=source_id, everything=everything,
        skip_due=skip_due,
    )  # fmt: skip
    for source in sources:
        if run.out_of_time():
            report.sources.append(SourceRefresh(source.id, source.platform, status="out_of_time"))
            continue
        report.sources.append(_refresh_source(conn, source, run))
    report.pending = sum(db.refresh_pending(conn, [s.id for s in sources]).values()) if sources else 0
    edited = [s.source_id for s in report.sources if s.edited]
    if edited and not run.stop.is_set():
        report.analysis = analysis.analyze_backlog(
            conn, settings.analyzer, source_ids=edited, deadline=deadline
        ).as_json()
    return report


def _refresh_source(conn: db.Connection, source: Source, run: Pass) -> SourceRefresh:
    """One source's posts, under its lock, until none is left, the share or the time is spent, or a call fails."""
    result = SourceRefresh(source.id, source.platform)
    if not db.try_lock_source(conn, source.id):
        result.status, result.message = "busy", "the source is being synced; its posts are read in a later pass"
        return result
    connector_cls = connector_class(source.platform)
    run.quota.refused = False
    context = context_for(
        conn, connector_cls, source, run.settings, now=run.now, deadline=run.deadline, budgets=run.windows,
        quota=run.quota, http=run.http,
    )  # fmt: skip
    try:
        connector = connector_cls(source, context)
        try:
            _read_again(conn, connector, source, run, result)
        except RateLimited as exc:
            if isinstance(exc, ShareSpent) or run.quota.refused:
                share = f"{run.settings.refresh_share:.0%}"
                result.status, result.message = "share_spent", f"its share ({share}) of the window or quota is used"
            else:
                result.status, result.message = "rate_limited", str(exc)
        except AuthError as exc:
            result.status = "failed"
            result.message = f"{exc}; {connector_cls.reconnect_advice(source.id)}"
        except ConnectorError as exc:
            result.status, result.message = "failed", str(exc)
        except NotFound:  # the source was removed meanwhile
            result.status, result.message = "failed", f"source {source.id} was removed"
    finally:
        context.close()
        if not conn.closed:
            db.unlock_source(conn, source.id)
    level = logging.WARNING if result.failed else logging.INFO
    log.log(
        level,
        "refresh: %d checked, %d updated, %d deleted in %d calls%s",
        result.checked, result.updated, result.deleted, result.calls,
        f" ({result.status}: {result.message})" if result.status != "done" else "",
        extra={"source": source.id, "event": "refreshed"},
    )  # fmt: skip
    return result


def _read_again(conn: db.Connection, connector: Connector, source: Source, run: Pass, result: SourceRefresh) -> None:
    size = type(connector).lookup_size
    # the window as the source's last sync left it: a share of what was left, before any call of this pass
    run.windows.learn(
        connector.context.credentials.key,
        RateLimit(remaining=source.rate_limit_remaining, reset_at=source.rate_limit_reset_at),
    )
    seen: set[int] = set()
    before: tuple[datetime, int] | None = None
    while not run.out_of_time():
        if run.everything:
            posts = db.stored_mentions(conn, source.id, size * LOOKUPS_PER_READ, before=before)
            if posts:
                before = (posts[-1].published_at, posts[-1].id)
        else:
            posts = db.due_mentions(conn, source.id, size * LOOKUPS_PER_READ)
        posts = [p for p in posts if p.id not in seen]  # never the same post twice in a pass
        if not posts:
            return
        seen.update(p.id for p in posts)
        if type(connector).lookup_reads_raw:
            payloads = db.raw_payloads(conn, [p.id for p in posts])
            posts = [Stored(p.id, p.external_id, p.published_at, payloads.get(p.id)) for p in posts]
        kinds: dict[str, list[Stored]] = {}
        cannot: list[int] = []
        for post in posts:
            kind = connector.lookup_kind(post)
            if kind is None:
                cannot.append(post.id)
            else:
                kinds.setdefault(kind, []).append(post)
        if cannot:
            _apply(conn, source, run, result, unknown=cannot)
        for kind, group in kinds.items():
            for first in range(0, len(group), size):
                if run.out_of_time():
                    result.status, result.message = "out_of_time", "stopped at the command's time budget"
                    return
                _look_up(conn, connector, source, run, result, kind, group[first : first + size])
    result.status, result.message = "out_of_time", "stopped at the command's time budget"


def _look_up(
    conn: db.Connection,
    connector: Connector,
    source: Source,
    run: Pass,
    result: SourceRefresh,
    kind: str,
    posts: Sequence[Stored],
) -> None:
    """One lookup call and what it learned. A call the platform refuses for good (Fatal) leaves these posts
    for the next step of the schedule, so that one bad batch cannot stop a source's refresh for ever."""
    calls_before = run.windows.calls
    try:
        looked = connector.lookup(kind, posts)
    except AuthError:
        raise
    except Fatal:
        _apply(conn, source, run, result, unread=posts)
        raise
    finally:
        result.calls += run.windows.calls - calls_before
    result.checked += len(posts)
    by_id = {p.external_id: p for p in posts}
    found = [(by_id[m.external_id], m) for m in looked.found if m.external_id in by_id]
    gone = [by_id[e].id for e in looked.gone if e in by_id]
    unknown = [by_id[e].id for e in looked.unknown if e in by_id]
    answered = {p.id for p, _ in found} | set(gone) | set(unknown)
    unread = [p for p in posts if p.id not in answered]
    _apply(conn, source, run, result, found=found, gone=gone, unknown=unknown, unread=unread)


def _apply(
    conn: db.Connection,
    source: Source,
    run: Pass,
    result: SourceRefresh,
    *,
    found: Sequence[tuple[Stored, Mention]] = (),
    gone: Sequence[int] = (),
    unknown: Sequence[int] = (),
    unread: Sequence[Stored] = (),
) -> None:
    counts = db.apply_lookup(
        conn, source.id, found=found, gone=gone, unknown=unknown, unread=unread,
        schedule=run.settings.refresh_steps, remove=run.settings.deleted == "remove",
    )  # fmt: skip
    result.updated += counts["updated"]
    result.edited += counts["edited"]
    result.deleted += counts["deleted"]
