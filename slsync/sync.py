"""The sync engine: claim -> lock -> fetch pages -> save each page -> advance the cursor -> record.

It knows no platform's JSON and no SQL: connectors yield pages, db.py stores them.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from slsync import analysis, coverage, db, refresh, retention
from slsync.budget import RateBudgets
from slsync.config import Settings
from slsync.connect import context_for
from slsync.connectors import connector_class
from slsync.connectors.base import Connector
from slsync.errors import (
    AuthError,
    ConnectorError,
    DatabaseError,
    NotFound,
    OutOfTime,
    QuotaSpent,
    RateLimited,
    Retriable,
    SetupError,
    UsageError,
)
from slsync.models import Gap, Mention, Page, RateLimit, Source, SyncResult
from slsync.terminal import counted

if TYPE_CHECKING:
    import ssl

    import httpx

log = logging.getLogger("slsync.sync")

BACKFILL = timedelta(days=7)
# The furthest `sync source --since` reaches back on a platform that states no limit of its own: a wrong
# year must not become a run that pages for hours.
MAX_LOOKBACK = timedelta(days=365)
# Pages are written together until this many mentions or this many seconds have gathered: a backfill
# writes ~1,000 rows a transaction (near COPY's rate, benchmarks/save_path.py), an incremental sync of
# one page writes it at once, and a crash loses at most a second of fetching, never a saved mention.
WRITE_MENTIONS = 1000
WRITE_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 24 * 3600
# Runs that stopped early: they kept their pages and continue later; not failures. `stopped`: by a
# database error, which is the database's trouble and never the source's.
CUT_SHORT = frozenset({"rate_limited", "partial", "stopped"})


def is_failure(result: SyncResult) -> bool:
    """A run that failed: neither a success, nor skipped, nor cut short (by time, a rate limit or a stop)."""
    return not result.success and not result.skipped and result.status not in CUT_SHORT


class Progress(Protocol):
    """What a terminal shows while a command runs (the CLI's live display); called from the workers' threads."""

    def planned(self, total: int) -> None:
        """The number of sources the command will run."""

    def page(self, source: Source, pages: int, fetched: int) -> None:
        """After each saved page: the source, its pages so far, the mentions it fetched so far."""

    def finished(self, result: SyncResult) -> None:
        """A source's run ended, whatever its outcome."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Stop(threading.Event):
    """Set when a command's runs must stop between pages; says why."""

    reason = "interrupted"

    def because(self, reason: str) -> None:
        self.reason = reason
        self.set()


@dataclass(frozen=True)
class RunOptions:
    trigger: str
    # a `sync due` run: skip the source if another run synced it since it was claimed
    require_due: bool = False
    since: datetime | None = None
    progress: Progress | None = None
    # time.monotonic() by which the command must be done
    deadline: float | None = None
    # rate-limit windows per credential, shared by all the command's workers
    budgets: RateBudgets = field(default_factory=lambda: RateBudgets(lambda: utcnow()))
    # the HTTP client of this thread (keeps connections alive across sources); the workers of `sync due`
    # each make their own sharing `tls`: on one shared client, every request checked every idle
    # connection of the pool under the pool's lock, a syscall each, and the workers queued on that lock
    http: httpx.Client | None = None
    tls: ssl.SSLContext | None = None
    # set when the operator interrupts a parallel command, or the database failed one of its runs: the
    # other runs stop between pages, as out of time
    stop: Stop = field(default_factory=Stop)

    def out_of_time(self) -> str | None:
        """Why runs must stop now, or None."""
        if self.stop.is_set():
            return self.stop.reason
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "time budget spent"
        return None


@dataclass
class BatchResult:
    """One result per source the command took on: synced + cut short + failed + skipped = claimed."""

    results: list[SyncResult] = field(default_factory=list)
    # what the post-sync analysis did with the new mentions
    analysis: dict[str, Any] | None = None
    # the database failure that ended the command early; the results before it stand
    error: DatabaseError | None = None
    # the workers that ran: fewer than asked when the database had fewer connections to give
    workers: int = 1
    # what reading stored posts again did, after the syncs (sync due only)
    refresh: dict[str, Any] | None = None
    # what retention deleted and dropped, last (sync due only; None when no retention is set)
    retention: dict[str, Any] | None = None

    @property
    def failed(self) -> list[SyncResult]:
        return [r for r in self.results if is_failure(r)]

    @property
    def cut_short(self) -> list[SyncResult]:
        return [r for r in self.results if not r.success and not r.skipped and r.status in CUT_SHORT]

    def as_json(self) -> dict[str, Any]:
        return {
            "sources_claimed": len(self.results),
            "sources_synced": sum(1 for r in self.results if r.success),
            "sources_cut_short": len(self.cut_short),
            "sources_failed": len(self.failed),
            "sources_skipped": sum(1 for r in self.results if r.skipped),
            "sources_deferred": sum(1 for r in self.results if r.status == "deferred"),
            "sources_rate_limited": sum(1 for r in self.results if r.status == "rate_limited"),
            "sources_partial": sum(1 for r in self.results if r.status == "partial"),
            "total_mentions_saved": sum(r.mentions_saved for r in self.results),
            "results": [r.as_json() for r in self.results],
            "analysis": self.analysis,
            "workers": self.workers,
            "error": str(self.error) if self.error else None,
            "refresh": self.refresh,
            "retention": self.retention,
        }

    def add_analysis(self, report: dict[str, Any]) -> None:
        if self.analysis is None:
            self.analysis = dict(report)
            return
        self.analysis["analyzed"] += report["analyzed"]
        self.analysis["error"] = self.analysis["error"] or report["error"]
        if report.get("stopped"):
            self.analysis["stopped"] = report["stopped"]


def backoff_seconds(interval_minutes: int, failures: int, rng: random.Random | None = None) -> float:
    """interval x 2^failures, capped at 24 h, with jitter so failing sources spread out."""
    base = min(interval_minutes * 60 * 2 ** min(failures, 20), MAX_BACKOFF_SECONDS)
    return base * (rng or random).uniform(0.5, 1.0)


@contextmanager
def _command(settings: Settings, trigger: str, *, stop: Stop | None = None, **options: Any) -> Iterator[RunOptions]:
    """What the runs of one command share: its deadline, rate-limit budgets, TLS context and (outside the
    workers of `sync due`, which make their own) HTTP client."""
    from slsync import http

    # A sync allocates millions of short-lived objects (decoded pages, mentions, rows) that reference
    # counting frees at once. At the cyclic collector's default pace (a pass every 700 allocations,
    # now and then over every object) a 200-source `sync due` spent ~0.6 s in it, holding the GIL.
    gc.set_threshold(10_000, 10, 10)
    tls = http.tls_context()
    with http.client(timeout=settings.http_timeout_seconds, tls=tls) as client:
        deadline = time.monotonic() + settings.time_budget_seconds
        yield RunOptions(trigger, deadline=deadline, http=client, tls=tls, stop=stop or Stop(), **options)


def sync_source(
    settings: Settings,
    source_id: int,
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> SyncResult:
    """`sync source`: run one source now, whatever its schedule (rate limits still hold)."""
    if since is not None and since > utcnow():
        raise UsageError("--since is in the future")
    with (
        db.connect(settings, for_sync=True) as conn,
        _command(settings, "manual", since=since, progress=progress, stop=stop) as options,
    ):
        source = db.get_source(conn, source_id)
        connector_cls = connector_class(source.platform)
        if refusal := _refused(connector_cls, source, settings):
            raise UsageError(refusal)
        reach = connector_cls.reach(source.config) or MAX_LOOKBACK
        if since is not None and since < utcnow() - reach:
            raise UsageError(
                f"--since {since:%Y-%m-%d} reaches back more than {round(reach / timedelta(days=1))} days, the most "
                f"{source.platform} sources reach back"
            )
        if progress:
            progress.planned(1)
        result = _run_and_tell(conn, settings, source_id, options)
    if isinstance(result.stopped_by, DatabaseError):
        result.stopped_by = _command_stopped(result.stopped_by)  # the caller reports the result, then this
    return result


def sync_tenant(
    settings: Settings,
    tenant_id: int,
    *,
    concurrency: int = 1,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> BatchResult:
    """`sync tenant`: every source of one tenant, and nothing of any other."""
    with (
        db.connect(settings, for_sync=True) as conn,
        _command(settings, "tenant", progress=progress, stop=stop) as options,
    ):
        ids = db.tenant_source_ids(conn, tenant_id)
        if not ids:
            raise NotFound(f"tenant {tenant_id} has no sources to sync")
        if progress:
            progress.planned(len(ids))
        return _run_many(conn, settings, ids, options, concurrency)


def sync_due(
    settings: Settings,
    *,
    limit: int,
    concurrency: int,
    progress: Progress | None = None,
    stop: Stop | None = None,
) -> BatchResult:
    """`sync due`: claim due sources and sync them with at most `concurrency` workers, then label what is
    left unlabelled (a crash's or a cut-short run's mentions) while the budget lasts.

    The claim lives as long as this connection; workers each use their own connection, which holds
    the source's advisory lock while it works.
    """
    with (
        db.connect(settings, for_sync=True) as conn,
        _command(settings, "due", require_due=True, progress=progress, stop=stop) as options,
    ):
        claimed = db.claim_due(conn, limit)
        log.info("claimed %d due sources", len(claimed), extra={"event": "claimed", "count": len(claimed)})
        try:
            ids, deferred = _prioritize(conn, settings, claimed)
            if progress:
                progress.planned(len(ids))
            batch = _run_many(conn, settings, ids, options, concurrency)
            batch.results += deferred
        except BaseException:
            if not conn.closed:
                with suppress(DatabaseError):
                    db.release_claims(conn, claimed)
            raise
        _then(batch, lambda: db.release_claims(conn, claimed))
        _then(batch, lambda: _prune(conn, settings))
        _then(batch, lambda: _label_backlog(conn, settings, options, batch))
        # after every source's sync and their labels, within what is left of the command's time and the windows'
        # shares: the stored posts due to be read again
        if settings.refresh_share > 0 and settings.refresh_steps:
            _then(batch, lambda: _refresh(conn, settings, options, batch))
        # then a bounded piece of the retention, when one is set
        if settings.retention_days is not None or settings.raw_retention_days is not None:
            _then(batch, lambda: _retain(conn, settings, options, batch))
        return batch


def _then(batch: BatchResult, step: Callable[[], object]) -> None:
    """A step after the runs, unless the database already failed the command; its failure is reported after
    the results, like a run's."""
    if batch.error is not None:
        return
    try:
        step()
    except DatabaseError as exc:
        batch.error = _command_stopped(exc)


def _prune(conn: db.Connection, settings: Settings) -> None:
    db.prune_gaps(conn, keep_days=settings.run_log_days)  # gaps go with the runs that met them
    pruned = db.prune_runs(conn, keep_days=settings.run_log_days)
    if pruned:
        log.info("deleted %d old run records", pruned, extra={"event": "pruned", "count": pruned})


def _label_backlog(conn: db.Connection, settings: Settings, options: RunOptions, batch: BatchResult) -> None:
    """Mentions still `new` from any source (a run killed before its labels, one cut short by the budget):
    labelled now if time is left, so a backlog never waits for its source to be synced again."""
    if options.stop.is_set():
        return
    report = analysis.analyze_backlog(conn, settings.analyzer, deadline=options.deadline)
    if report.analyzed or report.error or batch.analysis is not None:
        batch.add_analysis(report.as_json())


def _refresh(conn: db.Connection, settings: Settings, options: RunOptions, batch: BatchResult) -> None:
    batch.refresh = refresh.refresh(
        conn, settings, now=utcnow, budgets=options.budgets, deadline=options.deadline, http=options.http,
        skip_due=True, stop=options.stop,
    ).as_json()  # fmt: skip


def _retain(conn: db.Connection, settings: Settings, options: RunOptions, batch: BatchResult) -> None:
    batch.retention = retention.prune(
        conn, settings, batches=retention.SYNC_DUE_BATCHES, deadline=options.deadline, stop=options.stop
    ).as_json()


def _command_stopped(exc: DatabaseError) -> DatabaseError:
    """The one line a command ends with when the database failed it."""
    return DatabaseError(
        f"{exc}; the sync stopped, no source is charged with it and the next run continues", sqlstate=exc.sqlstate
    )


def _prioritize(conn: db.Connection, settings: Settings, ids: list[int]) -> tuple[list[int], list[SyncResult]]:
    """Where a credential's rate-limit window or daily quota cannot pay for every due source that uses it,
    the sources most at risk of a coverage gap go first and those it cannot pay for are deferred (they stay
    due, and the result names each with the reason). Elsewhere the claim's order stands."""
    if not ids:
        return ids, []
    now = utcnow()
    sources = db.sources_to_plan(conn, ids)
    found = {s.id: s for s in sources}
    keys = {s.id: _credential_key(s, settings) for s in sources}
    budgets: dict[str, coverage.Budget | None] = {}
    candidates = []
    for source_id in ids:
        source = found.get(source_id)
        if source is None:  # removed since the claim: its run says so
            candidates.append(coverage.Candidate(source_id, 0, 0.0, 0.0, None))
            continue
        connector = connector_class(source.platform)
        key = keys[source_id]
        budget = None
        if key is not None:
            if key not in budgets:
                budgets[key] = _budget(
                    conn, settings, connector, source, key, [s for s in sources if keys[s.id] == key]
                )
            budget = budgets[key]
        behind = (now - source.covered_until).total_seconds() / 60 if source.covered_until else 0.0
        cost = connector.run_cost(source.config, (source.mention_rate or 0.0) * max(behind, 0.0))
        at_risk = coverage.risk(now, source.covered_until, connector.reach(source.config), source.mention_rate,
                                connector.listing_cap)  # fmt: skip
        candidates.append(coverage.Candidate(source_id, cost, at_risk, source.mention_rate or 0.0, budget))
    order, deferrals = coverage.plan(candidates)
    deferred = []
    for deferral in deferrals:
        db.defer_source(conn, deferral.source_id, "quota" if deferral.budget.unit != "calls" else "rate_limited")
        log.info(deferral.message, extra={"source": deferral.source_id, "event": "deferred", "reported": True})
        deferred.append(
            SyncResult(source_id=deferral.source_id, success=False, skipped=True, status="deferred",
                       message=deferral.message)
        )  # fmt: skip
    return order, deferred


def _credential_key(source: Source, settings: Settings) -> str | None:
    """The key of the app credential a source's runs spend (shared with the other sources on it); None for a
    source on its own user token, or whose credentials are missing (its run says why)."""
    if source.connection_type == "user":
        return None
    try:
        credentials = connector_class(source.platform).app_credentials(source, settings)
    except UsageError:  # a platform setting with a bad value: the run reports it
        return None
    return credentials.key if credentials is not None else None


def _budget(
    conn: db.Connection, settings: Settings, connector: type[Connector], source: Source, key: str, sharing: list[Source]
) -> coverage.Budget | None:
    """What the credential `key` can still spend: its daily quota where the platform counts one, else its
    rate-limit window as the last answers to the sources on it reported it; None when nothing is known."""
    now = utcnow()
    credentials = connector.app_credentials(source, settings)
    quota = connector.daily_quota(credentials, settings, now) if credentials is not None else None
    if quota is not None:
        ledger, limit, day = quota
        left = db.quota_left(conn, ledger, day, limit)
        unit = connector.quota_unit
        return coverage.Budget(
            key, left, unit, f"{connector.title} daily quota: {left:,} of {limit:,} {unit} left today"
        )
    seen = [s for s in sharing if s.rate_limit_reset_at is not None and s.rate_limit_remaining is not None]
    current = [s for s in seen if s.rate_limit_reset_at > now]
    if current:
        reset = max(s.rate_limit_reset_at for s in current)
        left = min(s.rate_limit_remaining for s in current if s.rate_limit_reset_at == reset)
        until = f"{reset.astimezone(UTC):%H:%M} UTC"
        calls = "call" if left == 1 else "calls"
        return coverage.Budget(key, left, "calls", f"{connector.title} rate limit: {left:,} {calls} left until {until}")
    sizes = [s.rate_limit_limit for s in sharing if s.rate_limit_limit]
    if sizes:  # the last window known has ended: a new one holds what the platform said a window holds
        size = min(sizes)
        return coverage.Budget(key, size, "calls", f"{connector.title} rate limit: a new window of {size:,} calls")
    return None


def refresh_now(
    settings: Settings, *, tenant_id: int | None = None, source_id: int | None = None, everything: bool = False
) -> refresh.RefreshReport:
    """`slsync refresh`: the same pass as `sync due`'s, on demand (`everything`: every stored mention)."""
    if settings.refresh_share == 0:
        raise UsageError("SLSYNC_REFRESH_SHARE is 0, which leaves the refresh no calls: set it above 0 (up to 1)")
    with db.connect(settings, for_sync=True) as conn, _command(settings, "refresh") as options:
        return refresh.refresh(
            conn, settings, now=utcnow, budgets=options.budgets, deadline=options.deadline, http=options.http,
            tenant_id=tenant_id, source_id=source_id, everything=everything, stop=options.stop,
        )  # fmt: skip


def _run_many(
    conn: db.Connection, settings: Settings, ids: list[int], options: RunOptions, concurrency: int
) -> BatchResult:
    batch = BatchResult()
    if concurrency <= 1 or len(ids) <= 1:
        results, error = _run_in_turn(conn, settings, ids, options)
    else:
        results, error, batch.workers = _run_pool(conn, settings, ids, options, concurrency)
    done = {r.source_id for r in results}
    # sources the command claimed but did not start, because the database failed it: they keep their place
    results += [
        _skipped(source_id, "not_started", f"source {source_id} waits for the next run (the sync stopped)")
        for source_id in ids
        if source_id not in done
    ]
    order = {source_id: n for n, source_id in enumerate(ids)}
    results.sort(key=lambda r: order[r.source_id])
    batch.results = results
    batch.error = _command_stopped(error) if error is not None else None
    for report in (r.extra["analysis"] for r in results if "analysis" in r.extra):
        batch.add_analysis(report)
    return batch


def _run_in_turn(
    conn: db.Connection, settings: Settings, ids: list[int], options: RunOptions
) -> tuple[list[SyncResult], DatabaseError | None]:
    """The sources one after another on the command's own connection, each analysed after its run."""
    results = []
    for source_id in ids:
        result = _run_and_tell(conn, settings, source_id, options)
        results.append(result)
        if isinstance(result.stopped_by, DatabaseError):
            return results, result.stopped_by
    return results, None


def _run_and_tell(
    conn: db.Connection, settings: Settings, source_id: int, options: RunOptions, *, analyze: bool = True
) -> SyncResult:
    result = run_source(conn, settings, source_id, options, analyze=analyze)
    if options.progress:
        options.progress.finished(result)
    return result


def connections_needed(workers: int) -> int:
    """What `sync due --concurrency N` opens: its own connection (the claims), one a worker, and one for each
    labelling thread (a quarter as many as workers, at least one)."""
    return 1 + workers + labellers_for(workers)


def labellers_for(workers: int) -> int:
    return max(1, workers // 4)


def _run_pool(
    conn: db.Connection, settings: Settings, ids: list[int], options: RunOptions, concurrency: int
) -> tuple[list[SyncResult], DatabaseError | None, int]:
    """`concurrency` workers sync the sources; the post-sync analysis of what they saved runs beside them
    in a quarter as many labelling threads, so a worker goes on to its next source at once (the
    analysis is CPU and database work, the sync mostly waiting on the network).

    With fewer connections than that to be had, as many workers as they allow; with fewer than three,
    the sources run in turn on the command's own connection. A database failure in any thread stops the
    others between pages: (the results so far, the failure, the workers that ran)."""
    size = min(concurrency, len(ids))
    try:
        opened = db.open_connections(settings, connections_needed(size) - 1)
    except DatabaseError as exc:
        return [], exc, 0
    workers = size
    while workers > 1 and workers + labellers_for(workers) > len(opened):
        workers -= 1
    if workers < size:
        what = f"{workers} workers" if workers > 1 else "one source at a time"
        log.warning(
            "PostgreSQL gave %d of the %d connections --concurrency %d needs (1 + %d + %d); syncing with %s",
            len(opened) + 1, connections_needed(size), size, size, labellers_for(size), what,
            extra={"event": "fewer_connections", "count": len(opened) + 1},
        )  # fmt: skip
    try:
        if workers > 1:
            results, error = _run_workers(settings, ids, options, opened[:workers], opened[workers:])
    finally:
        for extra in opened:
            extra.close()  # ends its session: a source lock it still held goes with it
    if workers < 2:
        results, error = _run_in_turn(conn, settings, ids, options)
    return results, error, workers


def _run_workers(
    settings: Settings,
    ids: list[int],
    options: RunOptions,
    worker_connections: list[db.Connection],
    labeller_connections: list[db.Connection],
) -> tuple[list[SyncResult], DatabaseError | None]:
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for source_id in ids:
        work.put(source_id)
    saved: queue.SimpleQueue[SyncResult | None] = queue.SimpleQueue()
    results: list[SyncResult] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    failures: list[DatabaseError] = []

    def stopped(exc: DatabaseError) -> None:
        with lock:
            failures.append(exc)
        options.stop.because("the sync stopped on a database error")

    from slsync import http

    # Set by each worker as it ends. The main thread waits on these rather than in Thread.join: Ctrl-C
    # during a join marks the joined thread as ended while it still runs (Python 3.11's threading), so
    # the process could exit in the middle of that worker's run and leave it unrecorded.
    ended = [threading.Event() for _ in worker_connections]

    def worker(conn: db.Connection, done: threading.Event) -> None:
        try:
            # One connection and one HTTP client for the worker's whole life.
            with http.client(timeout=settings.http_timeout_seconds, tls=options.tls) as client:
                own = dataclasses.replace(options, http=client)
                while True:
                    try:
                        source_id = work.get_nowait()
                    except queue.Empty:
                        return
                    result = _run_and_tell(conn, settings, source_id, own, analyze=False)
                    with lock:
                        results.append(result)
                    if isinstance(result.stopped_by, DatabaseError):
                        stopped(result.stopped_by)
                    elif result.mentions_saved:
                        saved.put(result)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
            if isinstance(exc, SetupError):  # a configuration error ends the command: the others stop too
                options.stop.because("the sync stopped on a configuration error")
        finally:
            done.set()

    def labeller(conn: db.Connection) -> None:
        try:
            while (result := saved.get()) is not None:
                if not options.stop.is_set():  # interrupted: what is left stays `new` for the next run
                    result.extra["analysis"] = _analyze(conn, settings, result.source_id, options)
        except DatabaseError as exc:
            stopped(exc)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=worker, args=(c, ended[n]), name=f"slsync-worker-{n}")
        for n, c in enumerate(worker_connections)
    ]
    labellers = [
        threading.Thread(target=labeller, args=(c,), name=f"slsync-labeller-{n}")
        for n, c in enumerate(labeller_connections)
    ]
    for thread in workers + labellers:
        thread.start()
    try:
        for done in ended:
            done.wait()
    except KeyboardInterrupt:
        # Ctrl-C: every run writes what it fetched and stops after its current page (recorded as
        # partial, continued by the next run); the sources not started keep their place.
        log.warning("interrupted: the runs stop after their current page", extra={"event": "interrupted"})
        options.stop.set()
        for done in ended:
            done.wait()
        raise
    finally:
        for _ in labellers:
            saved.put(None)
        for thread in labellers:
            thread.join()
    if errors:
        raise errors[0]
    return results, failures[0] if failures else None


def run_source(
    conn: db.Connection, settings: Settings, source_id: int, options: RunOptions, *, analyze: bool = True
) -> SyncResult:
    """Sync one source on this connection, holding its lock for the whole run; then (unless the caller
    analyzes elsewhere) label what it saved."""
    if reason := options.out_of_time():
        # The budget is spent: an overlapping run may take the source at once. (Interrupted, or stopped by
        # the database, the command ends now and its claims with its session.)
        if options.require_due and not options.stop.is_set():
            db.release_claim(conn, source_id)
        return _skipped(source_id, "out_of_time", f"source {source_id} waits for the next run ({reason})")
    result = None
    try:
        if not db.try_lock_source(conn, source_id):
            return _skipped(source_id, "busy", f"source {source_id} is already being synced by another process")
        try:
            result = _run_locked(conn, settings, source_id, options)
        finally:
            with suppress(DatabaseError):  # failing, the lock ends with the session at the latest
                db.unlock_source(conn, source_id)
        if analyze and result.mentions_saved and result.stopped_by is None:
            result.extra["analysis"] = _analyze(conn, settings, source_id, options)
    except DatabaseError as exc:
        return _stopped(source_id, exc, result)
    return result


def _stopped(source_id: int, exc: DatabaseError, result: SyncResult | None = None) -> SyncResult:
    """A run the database stopped: its source keeps its status, failure count, schedule and the in-flight
    cursor of its last saved page; the command ends with `exc`."""
    if result is None:
        result = SyncResult(source_id=source_id, success=False, status="stopped")
    if not result.success:
        result.status = "stopped"
        saved = f" after {result.mentions_saved} new mentions" if result.mentions_saved else ""
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        result.message = f"stopped by a database error{saved}{state}; the next run continues"
    result.stopped_by = exc
    log.info(result.message, extra={"source": source_id, "event": "stopped", "reported": True, **_counts(result)})
    return result


def _analyze(conn: db.Connection, settings: Settings, source_id: int, options: RunOptions) -> dict[str, Any]:
    """The post-sync step for one source's new mentions. A failing analyzer is reported and leaves the
    mentions `new`; the sync stands."""
    return analysis.analyze_backlog(
        conn, settings.analyzer, source_ids=[source_id], deadline=options.deadline
    ).as_json()


def _refused(connector_cls: type[Connector], source: Source, settings: Settings) -> str | None:
    """Why this source is not synced here at all, or None."""
    if connector_cls.development_only and settings.is_production:
        return (
            f"source {source.id} is a {source.platform} source, not synced when SLSYNC_ENV=production (made-up posts)"
        )
    return None


def save_mentions(conn: db.Connection, source: Source, mentions: Iterable[Mention]) -> int:
    """Mentions that come from no run (`slsync mock`), saved the way a run saves its pages: WRITE_MENTIONS at a
    time, a transaction each, so any number of them needs little memory. How many were new."""
    saved = 0
    batch: list[Mention] = []
    for mention in mentions:
        batch.append(mention)
        if len(batch) >= WRITE_MENTIONS:
            saved += db.insert_mentions(conn, source, batch)
            batch.clear()
    if batch:
        saved += db.insert_mentions(conn, source, batch)
    return saved


def _skipped(source_id: int, status: str, message: str) -> SyncResult:
    log.info(message, extra={"source": source_id, "event": "skipped"})
    return SyncResult(source_id=source_id, success=False, skipped=True, status=status, message=message)


def _run_locked(conn: db.Connection, settings: Settings, source_id: int, options: RunOptions) -> SyncResult:
    try:
        source, due, now = db.source_for_run(conn, source_id)
    except NotFound:
        return _skipped(source_id, "removed", f"source {source_id} was removed")
    # Checked again under the lock: another process may have synced it since it was claimed.
    if options.require_due and not due:
        db.release_claim(conn, source_id)
        return _skipped(source_id, "not_due", f"source {source_id} is not due any more")
    if source.status == "pending":
        return _skipped(source_id, "pending", f"source {source_id} is not connected yet")
    if source.rate_limit_remaining == 0 and source.rate_limit_reset_at and source.rate_limit_reset_at > now:
        until = source.rate_limit_reset_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        db.release_claim(conn, source_id)
        message = f"source {source_id} is rate limited until {until}; it may run after that"
        return _skipped(source_id, "rate_limited", message)

    connector_cls = connector_class(source.platform)
    if refusal := _refused(connector_cls, source, settings):
        db.release_claim(conn, source_id)
        return _skipped(source_id, "refused", refusal)
    context = context_for(
        conn, connector_cls, source, settings, now=utcnow, deadline=options.deadline, budgets=options.budgets,
        quota=db.QuotaLedger(conn), http=options.http,
    )  # fmt: skip
    try:
        # when a new mention's counts are read again (never, on a platform that has no lookup)
        schedule = settings.refresh_steps if connector_cls.lookup_size else None
        return _fetch_and_save(conn, connector_cls(source, context), source, options, now, schedule)
    finally:
        context.close()


def _fetch_and_save(
    conn: db.Connection,
    connector: Connector,
    source: Source,
    options: RunOptions,
    now: datetime,
    schedule: Sequence[timedelta] | None = None,
) -> SyncResult:
    # An explicit --since starts afresh; otherwise an interrupted run is continued where it stopped.
    since = options.since
    resume = source.inflight_cursor if since is None else None
    result = SyncResult(source_id=source.id, success=False, status="running")
    reach = connector.reach(source.config)
    gaps: list[Gap] = []  # met by this run, recorded (or widened) before anything past them is saved
    if gap := coverage.reach_gap(source.covered_until, now, reach, source.behind_reason, source.mention_rate):
        _record_gap(conn, source, gap, result)
        gaps.append(gap)
        resume = None  # what was in flight began beyond the reach too: begin again from the reach
    # where this sync's coverage begins: the start of the run an interrupted one continues, else now
    begun = (source.inflight_started_at or now) if resume else now
    if since is None and source.committed_cursor is None and not resume:
        since = utcnow() - BACKFILL
    run_id = db.begin_run(conn, source, options.trigger)
    started = time.monotonic()
    log.info(
        "sync started" + (" (resuming an interrupted run)" if resume else ""),
        extra={"source": source.id, "event": "started", "trigger": options.trigger},
    )
    last_cursor = None
    pages = connector.pages(source.committed_cursor, since=since, resume=resume)
    unwritten: list[Page] = []
    gathering_since = 0.0

    def write() -> None:
        """The gathered pages in one transaction, with the in-flight cursor the last one reached."""
        if not unwritten:
            return
        saved = db.save_pages(conn, source, run_id, unwritten, schedule=schedule)
        fetched = sum(len(p.mentions) for p in unwritten)
        result.mentions_saved += saved
        result.duplicates += fetched - saved
        unwritten.clear()

    try:
        try:
            while True:
                # Between pages, not inside one: what is saved stays consistent with the in-flight cursor.
                if result.pages and (reason := options.out_of_time()):
                    write()
                    raise OutOfTime(f"stopped after {counted(result.pages, 'page')}: {reason}; the next run continues")
                page = next(pages, None)
                if page is None:
                    break
                for gap in page.gaps:
                    _record_gap(conn, source, gap, result)
                    gaps.append(gap)
                if not unwritten:
                    gathering_since = time.monotonic()
                unwritten.append(page)
                last_cursor = page.cursor
                result.pages += 1
                result.mentions_fetched += len(page.mentions)
                result.errors += page.errors
                gathered = sum(len(p.mentions) for p in unwritten)
                if gathered >= WRITE_MENTIONS or time.monotonic() - gathering_since >= WRITE_SECONDS:
                    write()
                if options.progress:
                    options.progress.page(source, result.pages, result.mentions_fetched)
            write()
        except ConnectorError as exc:
            write()  # the pages fetched before the failure are whole and good: keep them
            return _record_failure(conn, source, run_id, result, exc, started, begun)
        except SetupError as exc:
            # A configuration error (the token store, session pooling): nothing the source did. The run is closed
            # with the message, the source keeps its schedule and record, and the command ends with it.
            write()
            db.finish_failure(
                conn, source, run_id, run_status="failed", message=str(exc), source_status=source.status,
                retry_in_seconds=None, count_failure=False, keep_inflight=True, inflight_started_at=begun,
            )  # fmt: skip
            raise
        except DatabaseError:
            raise
        except Exception as exc:
            log.exception("sync crashed", extra={"source": source.id, "event": "crashed"})
            failure = ConnectorError(f"internal error: {type(exc).__name__}: {exc}")
            return _record_failure(conn, source, run_id, result, failure, started, begun)
        finally:
            pages.close()
        message = (
            f"saved {result.mentions_saved} new of {result.mentions_fetched} fetched in {counted(result.pages, 'page')}"
            if result.mentions_fetched
            else "nothing new"
        )
        cut = [g for g in gaps if g.reason == "cap"]
        # a --since backfill says nothing of the volume (it saves what earlier syncs may have missed)
        schedule = {} if options.since is not None else _schedule(source, result, begun, since, reach, cut, connector)
        db.finish_success(
            conn, source, run_id, last_cursor, message, covered_until=begun,
            scheduled_from=source.claimed_at if options.require_due else None, **schedule,
        )  # fmt: skip
    except DatabaseError as exc:
        # The database's trouble, never the source's: the run is closed if the database still answers, and
        # the source stays as its last saved page left it (status, failures, schedule, in-flight cursor).
        db.abandon_run(conn, run_id, f"stopped by a database error: {exc}")
        result.duration_ms = int((time.monotonic() - started) * 1000)
        return _stopped(source.id, exc, result)
    result.success = True
    result.status = "active"
    result.message = message
    result.duration_ms = int((time.monotonic() - started) * 1000)
    log.info(result.message, extra={"source": source.id, "event": "finished", **_counts(result)})
    return result


def _record_gap(conn: db.Connection, source: Source, gap: Gap, result: SyncResult) -> None:
    """Record a coverage gap; a new one gets one warning line (the result lists it too)."""
    if not db.record_gap(conn, source, gap):
        return
    doc = coverage.gap_json(gap)
    result.extra.setdefault("gaps_recorded", []).append(doc)
    missed = f"; about {gap.missed_estimate:,} mentions may be missed" if gap.missed_estimate else ""
    where = f" of {gap.stream}" if gap.stream else ""
    log.warning(
        "coverage gap%s: what was published from %s to %s could not be read (%s)%s; see slsync status %d",
        where, _utc(gap.start), _utc(gap.end), coverage.REASONS[gap.reason], missed, source.id,
        extra={"source": source.id, "event": "coverage_gap"},
    )  # fmt: skip


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _schedule(
    source: Source,
    result: SyncResult,
    begun: datetime,
    backfill: datetime | None,
    reach: timedelta | None,
    cut: list[Gap],
    connector: Connector,
) -> dict[str, Any]:
    """What a finished sync says of the source's volume (new mentions a minute, smoothed) and, for an auto
    source, the interval to its next sync; `backfill` is where a first sync began."""
    start = source.covered_until or backfill
    if start is None:
        return {}
    missed = sum(g.missed_estimate or 0 for g in cut)
    rate = coverage.smoothed_rate(source.mention_rate, result.mentions_saved + missed, begun - start)
    schedule: dict[str, Any] = {"mention_rate": rate}
    if source.interval_mode == "auto" and source.min_interval_minutes and source.max_interval_minutes:
        interval = coverage.next_interval(
            current=source.sync_interval_minutes, rate=rate, lowest=source.min_interval_minutes,
            highest=source.max_interval_minutes, reach=reach, cut_by_cap=bool(cut),
        )  # fmt: skip
        schedule["interval_minutes"] = result.extra["next_interval_minutes"] = interval
        cap = connector.listing_cap
        if cap and rate * interval > coverage.CAP_SHARE * cap:
            log.warning(
                "about %d new mentions gather in %d minutes, the shortest interval allowed, and %s's listings end "
                "near %d: lower --min-interval, or narrow the search", rate * interval, interval, connector.title,
                cap, extra={"source": source.id, "event": "near_cap"},
            )  # fmt: skip
    return schedule


def _record_failure(
    conn: db.Connection,
    source: Source,
    run_id: int,
    result: SyncResult,
    exc: ConnectorError,
    started: float,
    begun: datetime,
) -> SyncResult:
    message = str(exc)
    finish = {"conn": conn, "source": source, "run_id": run_id, "inflight_started_at": begun}
    if isinstance(exc, RateLimited):
        # Not a failure of the source: stop now, keep the pages and the in-flight cursor, come back after reset.
        reset_at = exc.reset_at or utcnow() + timedelta(minutes=15)
        retry_in = max((reset_at - utcnow()).total_seconds(), 0.0)
        db.finish_failure(
            **finish, run_status="rate_limited", message=message, source_status=source.status,
            retry_in_seconds=retry_in, count_failure=False, keep_inflight=True,
            rate_limit=RateLimit(remaining=0, reset_at=reset_at),
            behind_reason="quota" if isinstance(exc, QuotaSpent) else "rate_limited",
        )  # fmt: skip
        result.status = "rate_limited"
    elif isinstance(exc, OutOfTime):
        # Not a failure either: due again at once, so the next cron run continues from the in-flight cursor.
        db.finish_failure(
            **finish, run_status="partial", message=message, source_status=source.status,
            retry_in_seconds=0.0, count_failure=False, keep_inflight=True, behind_reason="cut_short",
        )  # fmt: skip
        result.status = "partial"
    elif isinstance(exc, AuthError):
        message = f"{message}; {connector_class(source.platform).reconnect_advice(source.id)}"
        db.finish_failure(
            **finish, run_status="failed", message=message, source_status="error",
            retry_in_seconds=None, count_failure=True, keep_inflight=False, behind_reason="failing",
        )  # fmt: skip
        result.status = "error"
    else:
        retry_in = backoff_seconds(source.sync_interval_minutes, source.consecutive_failures + 1)
        db.finish_failure(
            **finish, run_status="failed", message=message, source_status="failing",
            retry_in_seconds=retry_in, count_failure=True, keep_inflight=isinstance(exc, Retriable),
            behind_reason="failing",
        )  # fmt: skip
        result.status = "failing"
    result.message = message
    result.duration_ms = int((time.monotonic() - started) * 1000)
    cut_short = result.status in CUT_SHORT
    event = result.status if cut_short else "failed"
    # `reported`: the command prints this result itself; text logs do not say it twice
    log.log(
        logging.INFO if cut_short else logging.WARNING,
        message,
        extra={"source": source.id, "event": event, "reported": True, **_counts(result)},
    )
    return result


def _counts(result: SyncResult) -> dict[str, int]:
    return {
        "pages": result.pages,
        "fetched": result.mentions_fetched,
        "saved": result.mentions_saved,
        "duplicates": result.duplicates,
        "errors": result.errors,
    }
