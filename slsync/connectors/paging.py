"""The paging engine: the loop every paged connector used to write, written once.

A paged connector declares its streams (one per query, hashtag, keyword, page...), where a stream begins
(`begin`: the lower bound a fresh pass asks from), how to fetch one page of a pass (`fetch`: the page's
mentions, the next page's token and the newest bound value seen) and, where the default does not fit,
which bound a finished pass leaves for the next run (`reached`). The engine owns the rest:

- the cursor's shape: `{"v": 2, "streams": {stream: bound}}` once committed; in flight also
  `"active"` (the pass to continue: its stream, bound, next token and newest value) and `"since"`
  (the run's own reach, for the streams it has not begun);
- the interrupted stream first: a resumed run continues the pass that was cut short, then the others;
- loop detection: the same next-page token, or the same first item, twice in a pass stops the run with
  one error naming the platform (the pages before it stay saved; the committed cursor does not move);
- the rate-limit stop: a window the platform says is spent ends the run as rate limited, before a call
  that could only be refused;
- the time budget: every call (`Connector.call`) runs under the run's deadline, and the sync engine
  stops between pages;
- caps: a pass that the platform's cap ended before its bound (`Fetched.gap`) carries the gap, named
  after its stream, on its last page; the sync engine records it before it saves that page.

Cursors stored by 0.1.0, each connector in its own shape, are read once by the connector's `legacy()`;
the first page a run writes is in the shape above.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from slsync.connectors.base import Connector, CursorDoc
from slsync.connectors.fields import iso_time, mapping
from slsync.errors import Fatal
from slsync.models import Gap, Mention, Page, RateLimit

VERSION = 2


class PagingLoop(Fatal):
    """The platform sent the run back to a page it had already served."""


@dataclass
class Walk:
    """One pass over a stream in this run: what an in-flight cursor holds to continue it."""

    stream: str
    bound: Any  # what the pass asks from (the stream's lower bound), as JSON
    token: Any = None  # the next page's token, as JSON; None before the first page
    newest: Any = None  # the newest bound value the pass has seen, as JSON
    # not stored: what this run's part of the pass has seen, for loop detection, and its pages
    tokens: list[Any] = field(default_factory=list, repr=False)
    firsts: set[str] = field(default_factory=set, repr=False)
    pages: int = field(default=0, repr=False)
    # items the platform listed in this run's part of the pass (kept or not), for a cap's estimate
    seen: int = field(default=0, repr=False)

    def restart(self) -> None:
        """Page the pass again from its top (the platform forgot the token)."""
        self.token, self.tokens, self.firsts = None, [], set()

    def as_json(self) -> dict[str, Any]:
        return {"stream": self.stream, "bound": self.bound, "token": self.token, "newest": self.newest}


@dataclass(frozen=True)
class Fetched:
    """What a connector makes of one page."""

    mentions: Sequence[Mention]
    token: Any = None  # the next page's token; None: the pass ends with this page
    newest: Any = None  # the newest bound value this page showed (None: none)
    errors: int = 0
    limits: RateLimit | None = None
    # the page's first item, for loop detection; None: the first mention's id
    first: str | None = None
    # False: the pass ended without reading the stream (skipped this run): its bound stays where it was
    advance: bool = True
    # the platform's cap ended the pass before its bound: what lies between could not be read
    gap: Gap | None = None
    # items the page listed, filtered or not (None: the mentions' count)
    listed: int | None = None


@dataclass
class Cursor:
    streams: dict[str, Any]
    active: Walk | None = None
    since: datetime | None = None
    # connector-owned parts kept beside the streams (Instagram's account), as JSON
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": VERSION, **self.extra, "streams": dict(self.streams)}
        if self.active is not None:
            doc["active"] = self.active.as_json()
        if self.since is not None:
            doc["since"] = self.since.astimezone(UTC).isoformat()
        return doc


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def read_cursor(doc: Any) -> Cursor | None:
    """A cursor in the engine's shape; None when `doc` is not one (absent, or written by 0.1.0)."""
    doc = mapping(doc)
    if doc.get("v") != VERSION:
        return None
    active = mapping(doc.get("active"))
    walk = None
    if isinstance(active.get("stream"), str):
        walk = Walk(active["stream"], active.get("bound"), active.get("token"), active.get("newest"))
    extra = {k: v for k, v in doc.items() if k not in ("v", "streams", "active", "since")}
    return Cursor(dict(mapping(doc.get("streams"))), walk, _time(doc.get("since")), extra)


def check_loop(platform: str, walk: Walk, token: Any, first: str | None) -> None:
    """Stop when a page sends the pass back: a next-page token it already followed, or a first item an
    earlier page of the pass began with."""
    if token is not None and token in walk.tokens:
        what = "the same next-page token twice"
    elif first is not None and first in walk.firsts:
        what = "a page it had already sent (the same first item twice)"
    else:
        if first is not None:
            walk.firsts.add(first)
        return
    raise PagingLoop(
        f"{platform} sent {what} while paging {walk.stream}: stopped to avoid a loop "
        "(the pages before it are saved; the next run starts again from the last finished sync)"
    )


def legacy_streams(doc: Mapping[str, Any], *, token: str, bound: str) -> Cursor:
    """0.1.0's cursor of YouTube, Facebook and Instagram: {"streams": {name: {"after": bound}}, "active":
    {"stream", `bound`, `token`, "newest", ...}}."""
    streams = {
        name: after for name, value in mapping(doc.get("streams")).items() if (after := mapping(value).get("after"))
    }
    active, walk = mapping(doc.get("active")), None
    if isinstance(active.get("stream"), str) and active.get(bound):
        walk = Walk(active["stream"], active[bound], active.get(token), active.get("newest"))
    return Cursor(streams, walk)


class PagedConnector(Connector):
    """A connector whose run is passes over streams, each paged newest first down to a bound."""

    # orders bound values (ids, times) so that the engine can keep the newest
    order: ClassVar[Callable[[Any], Any]] = str
    # how far back a time-bounded stream never read begins
    backfill: ClassVar[timedelta] = timedelta(days=7)

    @abstractmethod
    def streams(self) -> list[str] | Mapping[str, Any]:
        """The source's streams, in the order a run reads them: their names, or each name with what the
        connector needs to fetch it (kept in `self.plan`). Raise here what makes the run impossible."""

    def begin(self, stream: str, stored: Any, since: datetime | None) -> Any:
        """The bound a fresh pass over `stream` asks from: `since` when given, else from `stored` (the bound
        the last finished pass left, None for a stream never read). By default a time: `backfill` back from
        now for a stream never read, kept as `time_text` writes it."""
        return self.time_text(self.time_bound(since, stored, self.backfill))

    @abstractmethod
    def fetch(self, walk: Walk) -> Fetched:
        """One page of the pass: one call (or a few that belong together), normalized."""

    def reached(self, walk: Walk, stored: Any) -> Any:
        """The bound a finished pass leaves for the next run: by default the newest value seen or stored."""
        return self.newest(stored, walk.newest)

    def resumable(self, walk: Walk) -> bool:
        """Whether an interrupted pass can be continued (a connector refuses one whose query changed)."""
        return True

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """A cursor 0.1.0 stored, in its own shape for this connector, read once."""
        return Cursor({})

    def extra(self) -> dict[str, Any]:
        """Connector-owned parts to keep in every cursor written."""
        return {}

    def time_bound(self, since: datetime | None, stored: Any, back: timedelta | None = None) -> datetime:
        """A time bound: `since`, else the stored one, else `back` (the backfill) from now."""
        return since or iso_time(stored) or self.context.now() - (back or self.backfill)

    def time_text(self, moment: datetime) -> str:
        """A time bound as the cursor keeps it (and most APIs take it): ISO 8601 to the second, in UTC."""
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def newest(self, *values: Any) -> Any:
        return max((v for v in values if v is not None), key=type(self).order, default=None)

    def pages(self, cursor: CursorDoc, *, since: datetime | None, resume: CursorDoc) -> Iterator[Page]:
        self.cursor = state = self.read(resume) if resume else self.read(cursor)
        bounds = dict(state.streams)
        # an interrupted run's own reach (first sync, --since) holds for the streams it had not finished
        kept = state.since if resume and since is None else None
        planned = self.streams()
        self.plan = dict(planned) if isinstance(planned, Mapping) else {name: name for name in planned}
        streams = list(self.plan)
        active = state.active if resume else None
        if active is not None and active.stream in streams and self.resumable(active):
            streams.insert(0, streams.pop(streams.index(active.stream)))  # the interrupted stream first
        else:
            active = None
        for number, stream in enumerate(streams):
            last = number == len(streams) - 1
            if active is not None and active.stream == stream:
                walk = active
                walk.tokens = [walk.token]
            else:
                reach = since or (kept if bounds.get(stream) is None else None)
                walk = Walk(stream, self.begin(stream, bounds.get(stream), reach))
            while True:
                fetched = self.fetch(walk)
                first = fetched.first or (fetched.mentions[0].external_id if fetched.mentions else None)
                check_loop(self.title, walk, fetched.token, first)
                walk.pages += 1
                walk.seen += len(fetched.mentions) if fetched.listed is None else fetched.listed
                walk.newest = self.newest(walk.newest, fetched.newest)
                written = Cursor(bounds, None, (since or kept) if not last else None, self.extra())
                if fetched.token is not None:
                    walk.token = fetched.token
                    walk.tokens.append(fetched.token)
                    written.active, written.since = walk, since or kept
                elif fetched.advance and (reached := self.reached(walk, bounds.get(stream))) is not None:
                    bounds[stream] = reached
                gaps = (replace(fetched.gap, stream=stream),) if fetched.gap is not None else ()
                yield Page(tuple(fetched.mentions), written.as_json(), fetched.limits, fetched.errors, gaps)
                if fetched.token is not None or not last:
                    self.stop_if_spent(fetched.limits)
                if fetched.token is None:
                    break
            active = None

    def read(self, doc: Mapping[str, Any] | None) -> Cursor:
        if not doc:
            return Cursor({})
        return read_cursor(doc) or self.legacy(doc)
