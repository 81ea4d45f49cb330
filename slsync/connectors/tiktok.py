"""TikTok Research API: videos whose description matches the brand, under a daily quota of requests and
records per client.

The Research API searches by creation *day* (`start_date` / `end_date`, YYYYMMDD in UTC, at most 30
days per query), not by time, so a sync asks for whole days: the first sync from `since` (7 days
back), every later sync from the last day the previous sync reached less `overlap_days` (default 1),
through today. Videos of those days come back again and the unique key absorbs them; a longer
backfill is split into 30-day windows, oldest first. Within a window, pages follow TikTok's `cursor`
and `search_id` while `has_more`.

The quota is counted in the shared ledger before each call: a call is made only if its request and
up to `max_count` records fit in today's budget (the day ends at midnight UTC); the records it did not
use are given back afterwards. TikTok's own `daily_quota_limit_exceeded` is believed: the ledger is
marked spent until midnight UTC.

Authentication is a client access token (client-credentials grant), fetched on first use and again
before it expires or after a 401; it lives in memory only.

Comments are opt-in (`--option comments=N`): after the videos of a run are saved, the comments of at most N
of them are read through the comment list endpoint, one video at a time, each call through the same
ledger. The chosen videos are the newest ones found in this run whose `comment_count` is above the count
seen when their comments were last read (the committed cursor remembers it per video), so an unchanged
video costs nothing. The comment list has no time filter and no documented order, so a video that is read
again is read from its first comment (at most the 1,000 TikTok serves) and the unique key absorbs the
comments already stored: that re-read costs records, not rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import BearerAuth, ClientCredentials, Credentials, granted_token
from slsync.config import PlatformSettings
from slsync.connectors.base import Connector, CursorDoc, Looked, whole_number
from slsync.connectors.fields import count as _int
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import normalize_each
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Walk, check_loop
from slsync.errors import AuthError, Fatal, QuotaSpent, RateLimited, Retriable, UsageError
from slsync.models import Mention, Page, RateLimit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.models import Source, Stored

log = logging.getLogger("slsync.tiktok")

PLATFORM = "TikTok"
QUERY_PATH = "/research/video/query/"
COMMENTS_PATH = "/research/video/comment/list/"
# developers.tiktok.com/doc/research-api-specs-query-videos: max_count at most 100; a query spans at most 30 days
PAGE_SIZE = 100
WINDOW_DAYS = 30
DEFAULT_OVERLAP_DAYS = 1
MAX_OVERLAP_DAYS = 7
# Renew the client token this long before it expires (TikTok issues it for 2 hours).
TOKEN_MARGIN = timedelta(minutes=5)
# A short-window 429 (rate_limit_exceeded) without Retry-After: come back after this long.
SHORT_LIMIT = timedelta(minutes=1)
FIELDS = (
    "id,create_time,username,region_code,video_description,voice_to_text,hashtag_names,"
    "like_count,comment_count,share_count,view_count,favorites_count,music_id,playlist_id"
)
COMMENT_FIELDS = "id,video_id,text,like_count,reply_count,parent_comment_id,create_time"
# developers.tiktok.com/doc/research-api-specs-query-video-comments: max_count at most 100, and TikTok serves
# only the first 1,000 comments of a video (a cursor past them is refused)
COMMENT_CURSOR_END = 1000
# `--option comments=N`: at most this many videos' comments a run (each costs 1 to 10 requests of 1,000 a day)
MAX_COMMENTED_VIDEOS = 50
# how many videos the committed cursor remembers as read (with the comment_count seen then)
MAX_READ_VIDEOS = 2000
QUOTA_CODES = frozenset({"daily_quota_limit_exceeded"})
TOKEN_CODES = frozenset({"access_token_invalid", "invalid_token"})
REFUSED_CLIENT = frozenset({"invalid_client", "unauthorized_client", "access_denied", "invalid_grant"})
SITE = "https://www.tiktok.com"

_HASHTAG = re.compile(r"^\w{1,100}$")
_USERNAME = re.compile(r"^[A-Za-z0-9_.]{2,24}$")
_REGION = re.compile(r"^[A-Z]{2}$")
_VIDEO_ID = re.compile(r"^[0-9]{1,20}$")


# --- options and the query ------------------------------------------------------------------------


def parse_regions(value: str) -> list[str]:
    """`--option regions=US,CA`: two-letter region codes, as TikTok's region_code condition takes them."""
    regions: list[str] = []
    for part in value.split(","):
        code = part.strip().upper()
        if not code:
            continue
        if not _REGION.match(code):
            raise ValueError(f"not a two-letter region code: {part.strip()!r}")
        if code not in regions:
            regions.append(code)
    if not regions:
        raise ValueError("expected region codes separated by commas, such as regions=US,CA")
    return regions


def comment_videos(config: Mapping[str, Any]) -> int:
    """How many videos' comments a sync of this source reads (0: comments are off)."""
    wanted = _dict(config.get("options")).get("comments", 0)
    return wanted if _whole(wanted) and wanted <= MAX_COMMENTED_VIDEOS else 0


def _condition(field_name: str, values: list[str]) -> dict[str, Any]:
    return {"operation": "IN" if len(values) > 1 else "EQ", "field_name": field_name, "field_values": values}


def build_query(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `query` object of a video query: the terms OR-ed, the exclusions in `not`, the regions in `and`.

    Keywords match the video description, hashtags the video's hashtags, mentions the author's
    username (videos *by* the account: the query cannot find a name mentioned in a video).
    """
    if config.get("languages"):
        raise UsageError(
            "TikTok's Research API cannot filter videos by language; add the source without --language "
            "(--option regions=US,CA narrows by region)"
        )
    keywords = list(dict.fromkeys(k.strip() for k in config.get("keywords") or [] if k.strip()))
    hashtags: list[str] = []
    for tag in config.get("hashtags") or []:
        if not _HASHTAG.match(tag):
            raise UsageError(f"not a hashtag TikTok can search for (one word of letters, digits or _): #{tag}")
        if tag.lower() not in hashtags:
            hashtags.append(tag.lower())
    usernames: list[str] = []
    for name in config.get("mentions") or []:
        if not _USERNAME.match(name):
            raise UsageError(f"not a TikTok username (2-24 letters, digits, _ or .): @{name}")
        if name.lower() not in usernames:
            usernames.append(name.lower())
    terms = []
    if keywords:
        terms.append(_condition("keyword", keywords))
    if hashtags:
        terms.append(_condition("hashtag_name", hashtags))
    if usernames:
        terms.append(_condition("username", usernames))
    if not terms:
        raise UsageError("a TikTok source needs at least one --keyword, --hashtag or --mention")
    query: dict[str, Any] = {"or": terms}
    regions = _dict(config.get("options")).get("regions") or []
    if regions:
        query["and"] = [_condition("region_code", list(regions))]
    exclude = list(dict.fromkeys(w.strip() for w in config.get("exclude") or [] if w.strip()))
    if exclude:
        query["not"] = [_condition("keyword", exclude)]
    return query


def query_digest(query: Mapping[str, Any]) -> str:
    """Names a query in the in-flight cursor, so a run resumes only the query it was paging."""
    return hashlib.sha256(json.dumps(query, sort_keys=True).encode()).hexdigest()[:16]


def windows(start: date, end: date) -> list[tuple[date, date]]:
    """[start, end] in windows of at most WINDOW_DAYS days (both ends inclusive), oldest first."""
    spans = []
    while start <= end:
        last = min(start + timedelta(days=WINDOW_DAYS - 1), end)
        spans.append((start, last))
        start = last + timedelta(days=1)
    return spans


# --- the quota day --------------------------------------------------------------------------------


def quota_day(moment: datetime) -> tuple[date, datetime]:
    """The UTC date whose quota a call at `moment` spends, and the midnight UTC when it ends."""
    day = moment.astimezone(UTC).date()
    return day, datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# --- normalizing ----------------------------------------------------------------------------------


def _video_id(value: Any, what: str = "video") -> str:
    """TikTok sends ids as int64 numbers; a digit string is read too, anything else is no id."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**64:
        return str(value)
    if isinstance(value, str) and _VIDEO_ID.match(value) and int(value) > 0:
        return value
    raise ValueError(f"a {what} without a usable id")


def _published(value: Any, what: str = "video") -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"a {what} without create_time")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"a {what} with an impossible create_time: {value!r}") from None


def normalize_video(video: Mapping[str, Any]) -> Mention:
    """One video of a query page; raises ValueError on a video without an id or a creation time."""
    video_id = _video_id(video.get("id"))
    published = _published(video.get("create_time"))
    username = _text(video.get("username"))
    username = username if username and _USERNAME.match(username) else None
    description = _text(video.get("video_description"))
    transcript = _text(video.get("voice_to_text"))
    content = "\n\n".join(part.strip() for part in (description, transcript) if part and part.strip()) or None
    region = _text(video.get("region_code"))
    return Mention(
        platform="tiktok",
        external_id=video_id,
        published_at=published,
        url=f"{SITE}/@{username}/video/{video_id}" if username else None,
        content=content,
        author_handle=username,
        likes_count=_int(video.get("like_count")),
        comments_count=_int(video.get("comment_count")),
        shares_count=_int(video.get("share_count")),
        media_type="video",
        media_urls=(),  # the Research API gives no playable or preview URL
        location=region if region and len(region) <= 8 else None,
        raw=dict(video),
    )


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """A query page's videos as mentions, and how many of them could not be stored."""
    return normalize_each(
        _list(_dict(_dict(body).get("data")).get("videos")), normalize_video, "a video TikTok sent", log
    )


def comment_external_id(comment_id: str) -> str:
    """`comment:ID`: nothing documents that comment and video ids never meet, so a comment can never take a
    video's row under the (tenant, platform, external_id) key."""
    return f"comment:{comment_id}"


def normalize_comment(comment: Mapping[str, Any], video_url: str | None) -> Mention:
    """One comment of a comment list page; raises ValueError on a comment without an id or a creation time.

    TikTok has no comment permalink and names no commenter: the URL is the video's, the author is unknown.
    """
    comment_id = _video_id(comment.get("id"), "comment")
    published = _published(comment.get("create_time"), "comment")
    return Mention(
        platform="tiktok",
        external_id=comment_external_id(comment_id),
        published_at=published,
        url=video_url,
        content=_text(comment.get("text")),
        likes_count=_int(comment.get("like_count")),
        comments_count=_int(comment.get("reply_count")),
        media_type="text",
        raw=dict(comment),
    )


def normalize_comments_page(body: Any, video_url: str | None = None) -> tuple[list[Mention], int]:
    """A comment list page's comments as mentions, and how many of them could not be stored."""
    comments = _list(_dict(_dict(body).get("data")).get("comments"))
    return normalize_each(comments, lambda c: normalize_comment(c, video_url), "a comment TikTok sent", log)


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiError:
    """TikTok v2's error object: {"error": {"code", "message", "log_id"}} (code "ok" on success)."""

    code: str
    message: str


def read_error(response: httpx.Response) -> ApiError:
    error = http.error_object(response)
    code = error.get("code") if isinstance(error.get("code"), str) else ""
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    return ApiError(code[:60], " ".join(message.split())[:200])


class _StaleSearch(Exception):
    """TikTok no longer knows a search_id (results are cached for a while): page the window again."""


class _Unreadable(Exception):
    """TikTok would not list one video's comments (deleted, private, comments off): skip that video.

    `failing` marks a 5xx that outlived the retry policy rather than a refusal of this video."""

    def __init__(self, detail: str, *, failing: bool) -> None:
        super().__init__(detail)
        self.failing = failing
        self.limits: RateLimit | None = None


# --- credentials ----------------------------------------------------------------------------------


def key_digest(client_key: str) -> str:
    return hashlib.sha256(client_key.encode()).hexdigest()[:16]


class TikTokAppCredentials(ClientCredentials):
    """TikTok's client access token (client credentials: client_key and client_secret in the form)."""

    margin = TOKEN_MARGIN

    def __init__(
        self,
        client_key: str,
        client_secret: SecretStr,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._token_url = settings.of(TikTokSettings).token_url
        super().__init__(f"tiktok:app:{key_digest(client_key)}", now)
        self._client_key = client_key
        self._secret = client_secret
        self._settings = settings

    def grant(self) -> tuple[str, float | None]:
        where = f"{PLATFORM} token endpoint"
        check = "check TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET (the research client of an approved project)"
        with http.client(timeout=self._settings.http_timeout_seconds) as client:
            response = http.send(
                client, "POST", self._token_url, platform=where,
                data={
                    "client_key": self._client_key, "client_secret": self._secret.get_secret_value(),
                    "grant_type": "client_credentials",
                },
                headers={"Cache-Control": "no-cache", "Accept": "application/json"},
            )  # fmt: skip
        status = response.status_code
        doc: Any = None
        if status < 500:
            try:
                doc = http.decode_json(response, where)
            except Fatal:
                doc = None
        error = _dict(doc).get("error")
        reason = _text(error) if isinstance(error, str) else None
        described = _text(_dict(doc).get("error_description"))
        detail = f"{reason}: {described[:120]}" if reason and described else reason or f"HTTP {status}"
        if status in (401, 403) or (reason in REFUSED_CLIENT):
            raise AuthError(f"{PLATFORM} refused the client credentials ({detail}); {check}")
        http.raise_for_status(response, where)
        if reason:  # TikTok's OAuth errors carry {"error", "error_description", "log_id"}
            raise Fatal(f"{PLATFORM} refused the client-credentials grant ({detail})")
        return granted_token(doc, where)


class TikTokSettings(PlatformSettings):
    """TikTok Research API: client credentials; daily limits per client as TikTok granted them."""

    client_key: str | None = Field(None, validation_alias="TIKTOK_CLIENT_KEY")
    client_secret: SecretStr | None = Field(None, validation_alias="TIKTOK_CLIENT_SECRET")
    api_url: str = Field("https://open.tiktokapis.com/v2", validation_alias="SLSYNC_TIKTOK_API_URL")
    token_url: str = Field("https://open.tiktokapis.com/v2/oauth/token/", validation_alias="SLSYNC_TIKTOK_TOKEN_URL")
    daily_requests: int = Field(1_000, ge=1, validation_alias="SLSYNC_TIKTOK_DAILY_REQUESTS")
    daily_records: int = Field(100_000, ge=1, validation_alias="SLSYNC_TIKTOK_DAILY_RECORDS")


# --- the connector --------------------------------------------------------------------------------


class _Meter(BearerAuth):
    """The bearer flow, charging each request it sends one request unit of the daily ledger.

    http.send retries inside itself, and httpx runs an Auth flow for every request that leaves, so the
    ledger counts exactly the requests sent: a retry costs one more unit whether or not the retry policy
    slept before it, the request sent again after a token refresh costs one, and a call that fails after its
    retries has paid for each attempt. The first unit is paid before the call is begun (so a call that does
    not fit is never made); `prepaid` says it is still unused, and the caller gives it back when nothing
    was sent.
    """

    def __init__(self, credentials: Credentials, spend: Callable[[], RateLimit], first: RateLimit) -> None:
        super().__init__(credentials, _refused_token)
        self.limits = first
        self.prepaid = True
        self._spend = spend

    def sign(self, request: httpx.Request, token: str) -> None:
        if self.prepaid:
            self.prepaid = False
        else:
            self.limits = self._spend()  # RateLimited when it does not fit: that request is not sent
        super().sign(request, token)


def _refused_token(response: httpx.Response) -> bool:
    """A 401 that says the token expired early or was revoked (or says nothing): refresh, once more."""
    return response.status_code == 401 and read_error(response).code in TOKEN_CODES | {""}


class TikTokConnector(Connector):
    platform = "tiktok"
    settings_model = TikTokSettings
    builds = staticmethod(build_query)
    reconnect = (
        "set TIKTOK_CLIENT_KEY and TIKTOK_CLIENT_SECRET (the research client of an approved Research API "
        "project), then: slsync sync source {source_id}"
    )
    title = PLATFORM
    connection_type = "app"
    options = {
        "regions": parse_regions,
        # how many days before the last day reached each sync asks for again
        "overlap_days": whole_number("days", MAX_OVERLAP_DAYS),
        # read the comments of at most N videos a sync (0, the default, reads none)
        "comments": whole_number("videos a sync", MAX_COMMENTED_VIDEOS),
    }
    # the Research API reaches back to 2016-ish; a long --since is split into 30-day queries
    max_lookback = None
    page_size = PAGE_SIZE
    quota_unit = "requests"

    @classmethod
    def daily_quota(cls, credentials: Credentials, settings: Settings, now: datetime) -> tuple[str, int, date]:
        """Requests: each call takes one (the records a call may return are reserved as it is made)."""
        digest = credentials.key.rsplit(":", 1)[-1]
        return f"tiktok:requests:{digest}", cls.settings_of(settings).daily_requests, quota_day(now)[0]

    # a video query by video_id (IN, up to 100); it must name a span of creation days of at most 30
    lookup_size = PAGE_SIZE
    credential_fields = ("client_key", "client_secret")

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> TikTokAppCredentials | None:
        app = cls.settings_of(settings)
        if not app.client_key or app.client_secret is None:
            return None
        return TikTokAppCredentials(app.client_key, app.client_secret, settings)

    def pages(self, cursor: CursorDoc, *, since: datetime | None, resume: CursorDoc) -> Iterator[Page]:
        now = self.context.now()
        today = now.astimezone(UTC).date()
        query = build_query(self.source.config)
        digest = query_digest(query)
        committed = _dict(cursor)
        through = _day(committed.get("through"))
        newest = _later(_text(committed.get("newest")), _text(_dict(resume).get("newest")))
        wanted = comment_videos(self.source.config)
        read = _read_videos(_dict(committed.get("comments")).get("read"))
        phase = _dict(_dict(resume).get("comments"))
        reached = _day(phase.get("reached"))
        if wanted and phase.get("query") == digest and reached and "queue" in phase:
            # an interrupted run that had saved its videos: go on with their comments, query nothing again
            offset = phase.get("cursor") if _whole(phase.get("cursor")) else 0
            queue = _chosen_videos(phase.get("queue"))[:wanted]
            read = _read_videos(phase.get("read"))
            if not queue:  # nothing usable left to read: end the run on the day it had reached
                yield Page(mentions=(), cursor=_final_state(reached, newest, read))
            yield from self._comment_pages(_CommentPhase(through, newest, digest, reached, queue, offset, read))
            return

        active = _dict(_dict(resume).get("active"))
        start, end = _day(active.get("from")), _day(active.get("to"))
        chosen: list[dict[str, Any]] = []
        if active.get("query") == digest and start and end and start <= end:
            offset = active.get("cursor") if _whole(active.get("cursor")) else 0
            search_id = _text(active.get("search_id"))
            chosen = _chosen_videos(phase.get("chosen"))[:wanted]
        else:
            start, end, offset, search_id = self._span(through, since, today), today, 0, None

        def in_flight(first: date, at: int, search: str | None) -> dict[str, Any]:
            state = _active(through, newest, digest, first, end, at, search)
            if wanted:
                state["comments"] = {"chosen": chosen}
            return state

        spans = windows(start, end)
        for number, (first, last) in enumerate(spans):
            restarted, walk = False, Walk(f"{first}..{last}", None, offset, tokens=[offset])
            while True:
                try:
                    body, limits = self._query(query, first, last, offset, search_id)
                except _StaleSearch:
                    if restarted:
                        raise Fatal(f"{PLATFORM} refused the search_id of a search it had just begun") from None
                    log.info("TikTok no longer knows the search_id; querying %s..%s again", first, last)
                    offset, search_id, restarted = 0, None, True
                    walk.restart()
                    continue
                mentions, errors = normalize_page(body)
                data = _dict(body.get("data"))
                for mention in mentions:
                    newest = _later(newest, _iso(mention.published_at))
                if wanted:
                    chosen = _choose(chosen, mentions, read, wanted)
                next_offset = data.get("cursor")
                more = data.get("has_more") is True and _whole(next_offset)
                check_loop(PLATFORM, walk, next_offset if more else None, mentions[0].external_id if mentions else None)
                walk.tokens.append(next_offset)
                if more:
                    offset, search_id = int(next_offset), _text(data.get("search_id")) or search_id
                    state = in_flight(first, offset, search_id)
                elif number + 1 < len(spans):
                    offset, search_id = 0, None
                    state = in_flight(spans[number + 1][0], 0, None)
                elif chosen:
                    # the videos are saved with this page; the comments follow, and a resume starts there
                    state = _CommentPhase(through, newest, digest, end, chosen, 0, read).cursor()
                else:
                    state = _final_state(end, newest, read if wanted else None)
                yield Page(mentions=tuple(mentions), cursor=state, rate_limit=limits, errors=errors)
                if not more:
                    break
        if chosen:
            yield from self._comment_pages(_CommentPhase(through, newest, digest, end, chosen, 0, read))

    # --- reading videos again ---------------------------------------------------------------------

    @classmethod
    def lookup_kind(cls, post: Stored) -> str | None:
        """Videos, grouped by the 30-day span of their creation day (a query names at most 30 days). Comments
        cannot be looked up by id: the comment list reads a video's comments from the first, by video."""
        if not _VIDEO_ID.match(post.external_id):
            return None
        span = (post.published_at.astimezone(UTC).date() - date(1970, 1, 1)).days // WINDOW_DAYS
        return f"videos:{span}"

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """One video query by video_id over the span of creation days: the videos still there, with their counts
        now. One the query no longer returns is gone (deleted, made private, or taken down: TikTok answers them
        alike). A video's description cannot be edited on TikTok."""
        span = int(kind.split(":", 1)[1])
        first = date(1970, 1, 1) + timedelta(days=span * WINDOW_DAYS)
        ids = [p.external_id for p in posts]
        query = {"and": [_condition("video_id", ids)]}
        body, limits = self._query(query, first, first + timedelta(days=WINDOW_DAYS - 1), 0, None)
        found, _ = normalize_page(body)
        found = [m for m in found if m.external_id in ids]
        listed = {m.external_id for m in found}
        return Looked(found, [i for i in ids if i not in listed], limits)

    def _span(self, through: date | None, since: datetime | None, today: date) -> date:
        """The first day this run asks for: `since`'s day, else the last day reached less the overlap."""
        if since is not None:
            return min(since.astimezone(UTC).date(), today)
        if through is not None:
            overlap = _dict(self.source.config.get("options")).get("overlap_days", DEFAULT_OVERLAP_DAYS)
            overlap = overlap if _whole(overlap) and overlap <= MAX_OVERLAP_DAYS else DEFAULT_OVERLAP_DAYS
            return min(through - timedelta(days=overlap), today)
        return today - timedelta(days=7)  # a cursor this connector did not write

    # --- comments ---------------------------------------------------------------------------------

    def _comment_pages(self, phase: _CommentPhase) -> Iterator[Page]:
        """The comments of the chosen videos, newest video first, one page per call (an empty page for a
        video that was skipped, so that a resume does not ask for it again)."""
        failing_before = False
        while phase.queue:
            video = phase.queue[0]
            try:
                body, limits = self._list_comments(video["id"], phase.offset)
            except _Unreadable as exc:
                if exc.failing and failing_before:
                    raise Retriable(f"{PLATFORM} failed on the comments of two videos in a row ({exc})") from None
                failing_before = exc.failing
                log.warning(
                    "skipped the comments of TikTok video %s: %s", video["id"], exc, extra={"event": "comments_skipped"}
                )
                phase.done(video, read=not exc.failing)  # refused for this video: not asked again until it grows
                yield Page(mentions=(), cursor=phase.cursor(), rate_limit=exc.limits)
                continue
            failing_before = False
            mentions, errors = normalize_comments_page(body, video.get("url"))
            data = _dict(body.get("data"))
            next_offset = data.get("cursor")
            more = data.get("has_more") is True and _whole(next_offset) and next_offset > phase.offset
            if more and next_offset >= COMMENT_CURSOR_END:
                log.info("TikTok serves only the first %d comments of video %s", COMMENT_CURSOR_END, video["id"])
                more = False
            if more:
                phase.offset = int(next_offset)
            else:
                phase.done(video, read=True)
            yield Page(mentions=tuple(mentions), cursor=phase.cursor(), rate_limit=limits, errors=errors)

    def _list_comments(self, video_id: str, offset: int) -> tuple[dict[str, Any], RateLimit]:
        body = {"video_id": int(video_id), "max_count": PAGE_SIZE, "cursor": offset}
        try:
            return self._call(COMMENTS_PATH, COMMENT_FIELDS, body, "comments", _refuse_comments)
        except AuthError:
            raise
        except Fatal as exc:  # an answer about one video that cannot be read: that video, not the run
            raise _Unreadable(str(exc), failing=False) from None

    # --- one call ---------------------------------------------------------------------------------

    def _query(
        self, query: dict[str, Any], first: date, last: date, offset: int, search_id: str | None
    ) -> tuple[dict[str, Any], RateLimit]:
        body: dict[str, Any] = {
            "query": query, "start_date": f"{first:%Y%m%d}", "end_date": f"{last:%Y%m%d}", "max_count": PAGE_SIZE,
            "cursor": offset,
        }  # fmt: skip
        if search_id:
            body["search_id"] = search_id
        refuse = _refuse_paged_query if search_id else _refuse_query
        return self._call(QUERY_PATH, FIELDS, body, "videos", refuse)

    def _call(
        self,
        path: str,
        fields: str,
        body: dict[str, Any],
        listed: str,
        refuse: Callable[[httpx.Response, str], Exception],
    ) -> tuple[dict[str, Any], RateLimit]:
        """One call under the daily ledger: a request unit and max_count records are taken before it (none of
        it is sent when they do not fit), each retry takes one more request unit (see _Meter), and the records
        that did not come are given back afterwards."""
        settings = self.settings
        credentials = self.context.credentials
        digest = credentials.key.rsplit(":", 1)[-1]  # tiktok:app:<digest of the client key>
        requests_key, records_key = f"tiktok:requests:{digest}", f"tiktok:records:{digest}"
        daily_requests, daily_records = settings.daily_requests, settings.daily_records
        url = settings.api_url.rstrip("/") + path

        first = self._spend_request(requests_key, daily_requests)
        day = self._reserve_records(requests_key, records_key, daily_requests, daily_records)
        released = False

        def release(used: int) -> None:
            """Give back what the reservation of max_count records did not use (all of it on a failure)."""
            nonlocal released
            if not released:
                released = True
                self.context.quota.spend(records_key, used - PAGE_SIZE, daily_records, day)

        meter: _Meter | None = None
        try:
            meter = _Meter(credentials, lambda: self._spend_request(requests_key, daily_requests), first)
            response, _ = self.call("POST", url, auth=meter, sleep=time.sleep, params={"fields": fields}, json=body)
            self.context.budgets.record(credentials.key, meter.limits)
            self._raise_for_error(response, digest=digest, refuse=refuse, limits=meter.limits, release=release)
            doc = http.decode_json(response, PLATFORM)
            data = _dict(doc).get("data") if isinstance(doc, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get(listed, []), list):
                raise Fatal(f"{PLATFORM} sent an unexpected response to the {path.strip('/')} call: no {listed} list")
            release(len(data.get(listed) or []))
        finally:
            if meter is None or meter.prepaid:  # the token or the shared window stopped it: nothing was sent
                self.context.quota.spend(requests_key, -1, daily_requests, day)
            release(0)
        assert meter is not None
        return doc, meter.limits

    def _spend_request(self, key: str, daily: int) -> RateLimit:
        day, reset_at = quota_day(self.context.now())
        remaining = self.context.quota.spend(key, 1, daily, day)
        if remaining is None:
            raise QuotaSpent(
                f"{PLATFORM} daily request quota spent until {_utc(reset_at)} ({daily} requests a day)", reset_at
            )
        return RateLimit(limit=daily, remaining=remaining, reset_at=reset_at)

    def _reserve_records(self, requests_key: str, records_key: str, daily_requests: int, daily_records: int) -> date:
        """Up to max_count records must fit before a call is made; else the request unit goes back too."""
        day, reset_at = quota_day(self.context.now())
        if self.context.quota.spend(records_key, PAGE_SIZE, daily_records, day) is None:
            self.context.quota.spend(requests_key, -1, daily_requests, day)
            raise QuotaSpent(
                f"{PLATFORM} daily record quota spent until {_utc(reset_at)} "
                f"(a call may return {PAGE_SIZE} of {daily_records} records a day)",
                reset_at,
            )
        return day

    def _raise_for_error(
        self,
        response: httpx.Response,
        *,
        digest: str,
        refuse: Callable[[httpx.Response, str], Exception],
        limits: RateLimit,
        release: Callable[[int], None],
    ) -> None:
        """Map an error answer (an HTTP error, or 200 with an error code other than "ok") to the run's outcome;
        what concerns only this endpoint is left to `refuse`."""
        status = response.status_code
        error = read_error(response)
        if status < 400 and error.code in ("", "ok"):
            return
        release(0)  # before a spent quota is marked below, not after
        detail = f"HTTP {status} {error.code or 'no code'}: {error.message or response.reason_phrase}"
        settings = self.settings
        if error.code in QUOTA_CODES or (status == 429 and "quota" in error.message.lower()):
            # TikTok counted otherwise (another program on this client, or a lower grant): believe it
            day, reset_at = quota_day(self.context.now())
            self.context.quota.exhaust(f"tiktok:requests:{digest}", settings.daily_requests, day)
            self.context.quota.exhaust(f"tiktok:records:{digest}", settings.daily_records, day)
            raise QuotaSpent(f"{PLATFORM} daily quota spent until {_utc(reset_at)} ({detail})", reset_at)
        if status == 429:
            wait = http.retry_after(response, self.context.now())
            reset_at = self.context.now() + (timedelta(seconds=min(wait, 86400)) if wait is not None else SHORT_LIMIT)
            raise RateLimited(f"{PLATFORM} rate limit reached until {_utc(reset_at)} ({detail})", reset_at)
        # a 403 without a token or scope code refuses one video on the comment list (a private video, say):
        # the query made with the same token a moment ago went through
        forbidden = status == 403 and refuse is not _refuse_comments
        if status == 401 or forbidden or error.code in TOKEN_CODES or error.code.startswith("scope_"):
            raise AuthError(f"{PLATFORM} refused the client access token ({detail})")
        failure = refuse(response, detail)
        if isinstance(failure, _Unreadable):
            failure.limits = limits
        raise failure


def _refuse_query(response: httpx.Response, detail: str) -> Exception:
    if response.status_code in http.RETRIABLE_STATUS:
        return Retriable(f"{PLATFORM} is failing ({detail})")
    return Fatal(f"{PLATFORM} refused the video query ({detail})")


def _refuse_paged_query(response: httpx.Response, detail: str) -> Exception:
    """A later page: TikTok forgets a search_id after a while and says so with a 400."""
    lowered = detail.lower()
    if response.status_code == 400 and "search" in lowered and "id" in lowered:
        return _StaleSearch(detail)
    return _refuse_query(response, detail)


def _refuse_comments(response: httpx.Response, detail: str) -> Exception:
    """The comment list refuses one video (deleted, private, comments turned off: the reference documents no
    code of its own for these, so any refusal other than the quota, the rate limit and the token is one)."""
    return _Unreadable(detail, failing=response.status_code in http.RETRIABLE_STATUS)


def _day(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _active(
    through: date | None,
    newest: str | None,
    digest: str,
    first: date,
    end: date,
    offset: int,
    search_id: str | None,
) -> dict[str, Any]:
    """The in-flight cursor: the committed day unchanged, and where this run's query goes on."""
    return {
        "through": through.isoformat() if through else None,
        "newest": newest,
        "active": {
            "query": digest, "from": first.isoformat(), "to": end.isoformat(), "cursor": offset,
            "search_id": search_id,
        },
    }  # fmt: skip


def _later(one: str | None, other: str | None) -> str | None:
    """The later of two UTC ISO times written by _iso (they compare as text)."""
    return max((t for t in (one, other) if t), default=None)


def _read_videos(value: Any) -> dict[str, list[Any]]:
    """From a cursor: video id -> [comment_count when its comments were last read, its create_time]."""
    read: dict[str, list[Any]] = {}
    for video_id, entry in _dict(value).items():
        if (
            _VIDEO_ID.match(video_id) and isinstance(entry, list) and len(entry) == 2 and _whole(entry[0])
            and isinstance(entry[1], str)
        ):  # fmt: skip
            read[video_id] = [entry[0], entry[1]]
    return read


def _chosen_videos(value: Any) -> list[dict[str, Any]]:
    """From a cursor: the videos whose comments this run reads, as _choose wrote them."""
    chosen = []
    for video in _list(value):
        video = _dict(video)
        video_id, at, count, url = video.get("id"), video.get("at"), video.get("count"), video.get("url")
        if isinstance(video_id, str) and _VIDEO_ID.match(video_id) and isinstance(at, str) and _whole(count):
            chosen.append({"id": video_id, "at": at, "count": count, "url": url if isinstance(url, str) else None})
    return chosen


def _choose(
    chosen: list[dict[str, Any]], videos: list[Mention], read: Mapping[str, list[Any]], wanted: int
) -> list[dict[str, Any]]:
    """The newest `wanted` videos found so far whose comment_count is above the one seen at their last read
    (a video never read: above 0). A video without comments, or with no new ones, costs no request."""
    by_id = {video["id"]: video for video in chosen}
    for video in videos:
        count = _int(_dict(video.raw).get("comment_count"))
        if count is None or count <= read.get(video.external_id, [0])[0]:
            continue
        by_id[video.external_id] = {
            "id": video.external_id, "at": _iso(video.published_at), "count": count, "url": video.url,
        }  # fmt: skip
    return sorted(by_id.values(), key=lambda video: (video["at"], int(video["id"])), reverse=True)[:wanted]


@dataclass
class _CommentPhase:
    """The comment phase of a run: the committed day and newest time (unchanged until the run ends), the query,
    the day this run reached, the videos still to read (the first from `offset`) and what has been read."""

    through: date | None
    newest: str | None
    digest: str
    reached: date
    queue: list[dict[str, Any]]
    offset: int
    read: dict[str, list[Any]]

    def done(self, video: Mapping[str, Any], *, read: bool) -> None:
        """On to the next video; `read`: remember this one's comment_count, so it is read again only once it grows."""
        if read:
            self.read[video["id"]] = [video["count"], video["at"]]
        self.queue, self.offset = self.queue[1:], 0

    def cursor(self) -> dict[str, Any]:
        """In flight while videos are left; after the last, the cursor the next run starts from."""
        if not self.queue:
            return _final_state(self.reached, self.newest, self.read)
        return {
            "through": self.through.isoformat() if self.through else None,
            "newest": self.newest,
            "comments": {
                "query": self.digest, "reached": self.reached.isoformat(), "queue": self.queue, "cursor": self.offset,
                "read": _recent(self.read, self.reached),
            },
        }  # fmt: skip


def _final_state(reached: date, newest: str | None, read: dict[str, list[Any]] | None) -> dict[str, Any]:
    """The cursor the next run starts from; with comments on, it remembers which videos were read."""
    state: dict[str, Any] = {"through": reached.isoformat(), "newest": newest}
    if read is not None:
        state["comments"] = {"read": _recent(read, reached)}
    return state


def _recent(read: dict[str, list[Any]], reached: date) -> dict[str, list[Any]]:
    """The read videos a later run can still find (its days start at most MAX_OVERLAP_DAYS before the day
    reached), at most MAX_READ_VIDEOS of them, newest first."""
    oldest = (reached - timedelta(days=MAX_OVERLAP_DAYS + 1)).isoformat()
    kept = sorted(((entry[1], video_id) for video_id, entry in read.items() if entry[1] >= oldest), reverse=True)
    return {video_id: read[video_id] for _, video_id in kept[:MAX_READ_VIDEOS]}
