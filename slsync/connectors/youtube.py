"""YouTube Data API v3: videos that mention the brand, and comments on the videos and channels a source
watches, under a daily quota counted in units per API key.

Two kinds of work, each a "stream" with its own bound in the cursor:

- search.list (100 units a call) for videos, newest first, from `publishedAfter` = the newest
  `publishedAt` seen; the boundary video comes back and the unique key absorbs it.
- commentThreads.list (1 unit a call) per watched video or channel and per search term, newest
  first (order=time), paged down to the newest comment time the cursor holds.

Every call first takes its units from the quota ledger shared through the database (the quota
day ends at midnight Pacific time); a call that does not fit is not made. The API key travels in the
X-Goog-Api-Key header, never in a URL, so no log line, error or proxy log can carry it.
"""

from __future__ import annotations

import hashlib
import html
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.config import PlatformSettings
from slsync.connectors.base import Looked, flag
from slsync.connectors.fields import count_in_text as _int
from slsync.connectors.fields import has_word, normalize_each, path_match, required_time
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk, legacy_streams
from slsync.errors import AuthError, Fatal, QuotaSpent, RateLimited, UsageError
from slsync.models import Mention, RateLimit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.auth import Credentials
    from slsync.config import Settings
    from slsync.models import Source, Stored

log = logging.getLogger("slsync.youtube")

PLATFORM = "YouTube"
# Quota costs in units (developers.google.com/youtube/v3/determine_quota_cost).
SEARCH_COST = 100
COMMENTS_COST = 1
SEARCH_PAGE_SIZE = 50
COMMENTS_PAGE_SIZE = 100
# videos.list and commentThreads.list by id: up to 50 ids a call, 1 unit each
LOOKUP_SIZE = 50
LOOKUP_COST = 1
BACKFILL = timedelta(days=7)
# One stream per watched video or channel and search term: each costs at least one call a run.
MAX_COMMENT_STREAMS = 50
# The quota day: "Daily quotas reset at midnight Pacific Time."
QUOTA_ZONE = "America/Los_Angeles"
# A per-minute limit (not the daily quota): come back after this long unless told otherwise.
SHORT_LIMIT = timedelta(minutes=1)

# Error reasons ({"error": {"errors": [{"reason"}], "details": [{"reason"}]}}), by what they mean for a run.
QUOTA_REASONS = frozenset({"quotaExceeded", "dailyLimitExceeded", "dailyLimitExceededUnreg"})
# Per-minute limits (Google's "Queries per minute"); RATE_LIMIT_EXCEEDED is the ErrorInfo reason for any quota
# metric, so alone it is read as the short one: the daily quota always says quotaExceeded in errors[].
SHORT_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
KEY_REASONS = frozenset({
    "keyInvalid", "keyExpired", "accessNotConfigured", "ipRefererBlocked", "forbidden", "authError",
    "unauthorized", "API_KEY_INVALID", "API_KEY_EXPIRED", "SERVICE_DISABLED", "API_KEY_SERVICE_BLOCKED",
    "API_KEY_HTTP_REFERRER_BLOCKED", "API_KEY_IP_ADDRESS_BLOCKED", "API_KEY_ANDROID_APP_BLOCKED",
    "API_KEY_IOS_APP_BLOCKED",
})  # fmt: skip
# A watched video or channel that cannot be read (comments off, deleted, private): skip it, not the source.
GONE_REASONS = frozenset({"commentsDisabled", "videoNotFound", "channelNotFound", "commentThreadNotFound"})

_VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_CHANNEL_ID = re.compile(r"^UC[A-Za-z0-9_-]{22}$")
_RECORD_ID = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_WORD = re.compile(r"^\w+$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_TAG = re.compile(r"<[^>]*>")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HANDLE_PATH = re.compile(r"^/@([^/]+)/?$")
THUMBNAILS = ("maxres", "standard", "high", "medium", "default")


# --- options and the query ------------------------------------------------------------------------


def _ids(pattern: re.Pattern[str], what: str) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        ids = []
        for part in value.split(","):
            part = part.strip()
            if not pattern.match(part):
                raise ValueError(f"{part!r} is not a {what}")
            if part not in ids:
                ids.append(part)
        return ids

    return parse


def _phrase(term: str) -> str:
    """A keyword as YouTube's q reads it: one word bare, anything else as an exact phrase in quotes."""
    if '"' in term or "|" in term:
        raise UsageError(f"YouTube cannot search for a term with a double quote or | in it: {term!r}")
    if term.startswith("-"):
        raise UsageError(f"YouTube would read a leading - as an exclusion: {term!r}")
    return term if _WORD.match(term) else f'"{term}"'


def build_query(config: Mapping[str, Any]) -> str:
    """The q of search.list: terms OR-ed with |, then the exclusions (boating|"sail boat" -fishing)."""
    if config.get("mentions"):
        raise UsageError(
            "YouTube search cannot look for @mentions: search for the name with --keyword, "
            "or watch a channel's comments with --option channels=UC..."
        )
    terms = [_phrase(k) for k in config.get("keywords") or []]
    for tag in config.get("hashtags") or []:
        if not _WORD.match(tag):
            raise UsageError(f"not a hashtag YouTube can search for: #{tag}")
        terms.append(f"#{tag}")
    if not terms:
        raise UsageError("a YouTube source needs at least one --keyword or --hashtag")
    exclusions = [f"-{_phrase(word)}" for word in config.get("exclude") or []]
    return " ".join(["|".join(terms), *exclusions])


def relevance_language(config: Mapping[str, Any]) -> str | None:
    """search.list takes one relevanceLanguage (a preference, not a filter); more cannot be asked."""
    languages = list(config.get("languages") or [])
    if len(languages) > 1:
        raise UsageError(
            "YouTube search can prefer only one language (relevanceLanguage); use one --language per source"
        )
    if languages and not _LANGUAGE.match(languages[0]):
        raise UsageError(f"YouTube's relevanceLanguage takes a two-letter ISO 639-1 code, not {languages[0]!r}")
    return languages[0] if languages else None


@dataclass(frozen=True)
class Stream:
    """One kind of call with its fixed parameters; its bound lives in the cursor under `name`."""

    name: str
    path: str
    cost: int
    params: dict[str, str]
    # comments only: words whose presence drops a comment (search.list applies -exclusions itself)
    exclude: tuple[str, ...] = field(default=())

    @property
    def is_search(self) -> bool:
        return self.path == "/search"

    @property
    def what(self) -> str:
        """The call, in messages."""
        if self.name.startswith("lookup:"):
            return "a lookup"
        return "a video search" if self.is_search else "a comment search"


# what `slsync doctor` asks: the list of interface languages, the cheapest call that needs the key (1 unit)
PROBE = Stream("probe", "/i18nLanguages", 1, {"part": "snippet"})


def build_streams(config: Mapping[str, Any]) -> list[Stream]:
    """The calls a source's sync makes: cheap comment streams first, then the 100-unit video search."""
    query = build_query(config)
    language = relevance_language(config)
    options = config.get("options") or {}
    terms = [*(config.get("keywords") or []), *(f"#{t}" for t in config.get("hashtags") or [])]
    exclude = tuple(config.get("exclude") or [])
    streams = []
    targets = [("videoId", v) for v in options.get("videos") or []]
    targets += [("allThreadsRelatedToChannelId", c) for c in options.get("channels") or []]
    for param, target in targets:
        for term in terms:
            params = {
                "part": "snippet", param: target, "searchTerms": term, "order": "time",
                "maxResults": str(COMMENTS_PAGE_SIZE), "textFormat": "plainText",
            }  # fmt: skip
            kind = "video" if param == "videoId" else "channel"
            streams.append(
                Stream(f"comments:{kind}:{target}:{term}", "/commentThreads", COMMENTS_COST, params, exclude)
            )
    if len(streams) > MAX_COMMENT_STREAMS:
        raise UsageError(
            f"these videos, channels and terms make {len(streams)} comment searches per sync "
            f"(at most {MAX_COMMENT_STREAMS}); split them over several sources"
        )
    if options.get("video_search", True):
        params = {
            "part": "snippet", "q": query, "type": "video", "order": "date", "maxResults": str(SEARCH_PAGE_SIZE),
        }  # fmt: skip
        if language:
            params["relevanceLanguage"] = language
        streams.append(Stream("search", "/search", SEARCH_COST, params))
    if not streams:
        raise UsageError("with video_search=no a YouTube source needs --option videos=... or --option channels=...")
    return streams


# --- the quota day --------------------------------------------------------------------------------


def quota_day(moment: datetime) -> tuple[date, datetime]:
    """The Pacific date whose quota a call made at `moment` spends, and when that day ends (in UTC)."""
    try:
        zone = ZoneInfo(QUOTA_ZONE)
    except ZoneInfoNotFoundError:
        raise Fatal(
            f"the time zone database has no {QUOTA_ZONE} (YouTube's quota day); install the tzdata package"
        ) from None
    local = moment.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), clock(0), tzinfo=zone)
    return local.date(), midnight.astimezone(UTC)


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# --- normalizing ----------------------------------------------------------------------------------


def _unescaped(value: Any) -> str | None:
    """search.list sends titles and descriptions HTML-escaped (World&#39;s, &amp;): store readable text."""
    text = _text(value)
    return html.unescape(text) if text else None


def _plain(value: Any) -> str | None:
    """textDisplay is HTML (links, <br>): readable text, for when textOriginal is missing."""
    text = _text(value)
    if text is None:
        return None
    return _text(html.unescape(_TAG.sub("", _BREAK.sub("\n", text))))


def _record_id(value: Any) -> str:
    if not isinstance(value, str) or not _RECORD_ID.match(value):
        raise ValueError("a record without a usable id")
    return value


def _handle(channel_url: Any) -> str | None:
    """The author's @handle from a channel URL such as https://www.youtube.com/@acme (without the @)."""
    match = path_match(channel_url, _HANDLE_PATH)
    if not match:
        return None
    # non-Latin handles come percent-encoded (/@%EB%A3%A8...): stored as the letters they are
    handle = unquote(match.group(1))
    return handle if handle.isprintable() else None


def normalize_video(item: Mapping[str, Any]) -> Mention:
    """A search result: the video's title and description are the mention; search.list has no statistics."""
    video_id = _record_id(_dict(item.get("id")).get("videoId"))
    snippet = _dict(item.get("snippet"))
    title, description = _unescaped(snippet.get("title")), _unescaped(snippet.get("description"))
    content = "\n\n".join(part for part in (title, description) if part) or None
    thumbnails = _dict(snippet.get("thumbnails"))
    thumbnail = next((url for name in THUMBNAILS if (url := _text(_dict(thumbnails.get(name)).get("url")))), None)
    return Mention(
        platform="youtube",
        external_id=video_id,
        published_at=required_time(snippet, "publishedAt"),
        url=f"https://www.youtube.com/watch?v={video_id}",
        content=content,
        author_name=_unescaped(snippet.get("channelTitle")),
        media_type="video",
        media_urls=(thumbnail,) if thumbnail else (),
        raw=dict(item),
    )


def normalize_video_resource(item: Mapping[str, Any]) -> Mention:
    """A video as videos.list sends it (snippet and statistics): search.list's mention with its counts, and
    the whole description (search.list shortens it)."""
    video_id = _record_id(item.get("id"))
    snippet = _dict(item.get("snippet"))
    statistics = _dict(item.get("statistics"))
    mention = normalize_video({"id": {"videoId": video_id}, "snippet": snippet})
    return replace(
        mention, likes_count=_int(statistics.get("likeCount")), comments_count=_int(statistics.get("commentCount")),
        raw=dict(item),
    )  # fmt: skip


def normalize_comment(comment: Mapping[str, Any], *, video_id: Any = None, replies: Any = None) -> Mention:
    """A comment (top-level or a reply); its URL opens the video at the comment (&lc=)."""
    comment_id = _record_id(comment.get("id"))
    snippet = _dict(comment.get("snippet"))
    video = _text(snippet.get("videoId")) or _text(video_id)
    return Mention(
        platform="youtube",
        external_id=comment_id,
        published_at=required_time(snippet, "publishedAt"),
        url=f"https://www.youtube.com/watch?v={video}&lc={comment_id}" if video and _VIDEO_ID.match(video) else None,
        content=_text(snippet.get("textOriginal")) or _plain(snippet.get("textDisplay")),
        author_name=_text(snippet.get("authorDisplayName")),
        author_handle=_handle(snippet.get("authorChannelUrl")),
        likes_count=_int(snippet.get("likeCount")),
        comments_count=_int(replies),
        media_type="text",
        media_urls=(),
        raw=dict(comment),
    )


def normalize_thread(item: Mapping[str, Any]) -> Mention:
    """A comment thread: its top-level comment, with the thread's reply count as comments_count."""
    snippet = _dict(item.get("snippet"))
    top = _dict(snippet.get("topLevelComment"))
    if "id" not in top and "id" in item:
        top = {**top, "id": item.get("id")}
    mention = normalize_comment(top, video_id=snippet.get("videoId"), replies=snippet.get("totalReplyCount"))
    return replace(mention, raw=dict(item))


def normalize_item(item: Any) -> Mention:
    if not isinstance(item, dict):
        raise ValueError("an item that is not an object")
    kind = item.get("kind")
    if kind == "youtube#searchResult" or (kind is None and isinstance(item.get("id"), dict)):
        return normalize_video(item)
    if kind == "youtube#commentThread" or (kind is None and "topLevelComment" in _dict(item.get("snippet"))):
        return normalize_thread(item)
    if kind in ("youtube#comment", None):
        return normalize_comment(item)
    raise ValueError(f"an item of an unexpected kind ({str(kind)[:40]})")


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """The page's videos or comments as mentions, and how many items could not be normalized.

    Reads search.list (search results), commentThreads.list (threads: the top-level comment) and
    comments.list (replies, kind youtube#comment) pages.
    """
    mentions, errors = normalize_each(_list(_dict(body).get("items")), normalize_item, "an item YouTube sent", log)
    return mentions, errors


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiError:
    """What a Google error body says: {"error": {"code", "message", "status", "errors": [...], "details": [...]}}."""

    reasons: frozenset[str]
    # errors[].domain: youtube.commentThread and the like name a resource, usageLimits / global the key
    domains: frozenset[str]
    message: str


def read_error(response: httpx.Response) -> ApiError:
    error = http.error_object(response)
    reasons = {r for e in _list(error.get("errors")) if isinstance(r := _dict(e).get("reason"), str)}
    reasons |= {r for d in _list(error.get("details")) if isinstance(r := _dict(d).get("reason"), str)}
    domains = {d for e in _list(error.get("errors")) if isinstance(d := _dict(e).get("domain"), str)}
    message = error.get("message") if isinstance(error.get("message"), str) else ""
    message = " ".join(html.unescape(_TAG.sub("", message)).split())[:200]
    return ApiError(
        frozenset(reasons), frozenset(domains), message or response.reason_phrase or f"HTTP {response.status_code}"
    )


class _Gone(Exception):
    """A watched video or channel YouTube will not list comments of; the stream is skipped this run."""


class _StaleToken(Exception):
    """YouTube no longer knows a page token (a run resumed the next day): page again from the bound."""


# --- credentials ----------------------------------------------------------------------------------


class ApiKey:
    """A YouTube Data API key: nothing to refresh; its digest names its quota in the ledger."""

    def __init__(self, secret: SecretStr) -> None:
        self._secret = secret
        digest = hashlib.sha256(secret.get_secret_value().encode()).hexdigest()[:16]
        self.key = f"youtube:key:{digest}"

    def access_token(self) -> str:
        return self._secret.get_secret_value()

    def refresh(self) -> str:
        raise AuthError("YouTube refused the API key")


class YouTubeSettings(PlatformSettings):
    """YouTube Data API v3: an API key, and its daily quota in units (10,000 unless Google granted more)."""

    api_key: SecretStr | None = Field(None, validation_alias="YOUTUBE_API_KEY")
    api_url: str = Field("https://www.googleapis.com/youtube/v3", validation_alias="SLSYNC_YOUTUBE_API_URL")
    daily_quota: int = Field(10_000, ge=1, validation_alias="SLSYNC_YOUTUBE_DAILY_QUOTA")


# --- the connector --------------------------------------------------------------------------------


class YouTubeConnector(PagedConnector):
    platform = "youtube"
    settings_model = YouTubeSettings
    builds = staticmethod(build_streams)
    reconnect = (
        "set YOUTUBE_API_KEY to a valid key of a Google Cloud project with the YouTube Data API v3 enabled, "
        "then: slsync sync source {source_id}"
    )
    title = PLATFORM
    connection_type = "app"
    lookup_size = LOOKUP_SIZE
    options = {
        "channels": _ids(_CHANNEL_ID, "YouTube channel id (UC and 22 letters, digits, - or _)"),
        "videos": _ids(_VIDEO_ID, "YouTube video id (11 letters, digits, - or _)"),
        "video_search": flag,
    }

    credential_fields = ("api_key",)

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> Credentials | None:
        secret = cls.settings_of(settings).api_key
        return ApiKey(secret) if secret is not None else None

    page_size = SEARCH_PAGE_SIZE

    @classmethod
    def run_cost(cls, config: Mapping[str, Any], expected_mentions: float) -> int:
        """In quota units: a page of each stream, and as many more video searches as the new mentions fill."""
        streams = build_streams(config)
        extra = max(0, math.ceil(expected_mentions / SEARCH_PAGE_SIZE) - 1)
        return sum(s.cost for s in streams) + extra * max((s.cost for s in streams), default=0)

    @classmethod
    def daily_quota(cls, credentials: Credentials, settings: Settings, now: datetime) -> tuple[str, int, date]:
        return credentials.key, cls.settings_of(settings).daily_quota, quota_day(now)[0]

    def streams(self) -> dict[str, Stream]:
        return {stream.name: stream for stream in build_streams(self.source.config)}

    def fetch(self, walk: Walk) -> Fetched:
        stream, bound = self.plan[walk.stream], self.time_bound(None, walk.bound)
        try:
            body, limits = self._call(stream, bound, walk.token)
        except _StaleToken:
            if walk.pages:  # a token this run was given minutes ago: forgotten again would loop
                raise Fatal(f"YouTube refused the page tokens of {stream.name} (invalidPageToken)") from None
            log.info("%s: YouTube no longer knows the page token; paging again", stream.name)
            walk.restart()
            body, limits = self._call(stream, bound, None)
        except _Gone as gone:
            return Fetched((), errors=1, limits=gone.args[1], advance=False)
        mentions, errors = normalize_page(body)
        token = _text(body.get("nextPageToken"))
        if not stream.is_search:
            # newest first: a page that reaches past the bound is the last one needed
            if mentions and mentions[-1].published_at < bound:
                token = None
            mentions = [m for m in mentions if m.published_at >= bound and not has_word(m.content, stream.exclude)]
        newest = _iso(max(m.published_at for m in mentions)) if mentions else None
        return Fetched(mentions, token=token, newest=newest, errors=errors, limits=limits)

    def reached(self, walk: Walk, stored: Any) -> Any:
        return self.newest(stored, walk.newest) or walk.bound

    @classmethod
    def lookup_kind(cls, post: Stored) -> str:
        """Videos (11-character ids) through videos.list, comments (their threads) through commentThreads.list."""
        return "videos" if _VIDEO_ID.match(post.external_id) else "comments"

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """One videos.list or commentThreads.list by id (1 unit): what is still there and its counts; an id left
        out of the answer is gone (deleted, or made private: YouTube answers both alike)."""
        ids = [p.external_id for p in posts]
        path, part = ("/videos", "snippet,statistics") if kind == "videos" else ("/commentThreads", "snippet")
        stream = Stream(f"lookup:{kind}", path, LOOKUP_COST, {"part": part, "id": ",".join(ids)})
        try:
            body, limits = self._call(stream, self.context.now(), None)
        except _Gone as gone:  # a refusal about one thing, for a batch: nothing sure about any of them
            raise Fatal(f"YouTube refused a lookup of {len(ids)} {kind} ({gone.args[0]})") from None
        normalize = normalize_video_resource if kind == "videos" else normalize_thread
        found, _ = normalize_each(_list(body.get("items")), normalize, "an item YouTube sent", log)
        found = [m for m in found if m.external_id in ids]
        listed = {m.external_id for m in found}
        return Looked(found, [i for i in ids if i not in listed], limits)

    def probe(self) -> str:
        """i18nLanguages.list, YouTube's 1-unit call, taken from the daily quota like any other."""
        _, limits = self._call(PROBE, self.context.now(), None)
        return f"the API key answered; {limits.remaining:,} of {limits.limit:,} units left today"

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"streams": {name: {"after": iso}}, "active": {"stream", "page_token", "after", "newest"}}."""
        return legacy_streams(doc, token="page_token", bound="after")

    # --- one call ---------------------------------------------------------------------------------

    def _call(self, stream: Stream, bound: datetime, token: str | None) -> tuple[dict[str, Any], RateLimit]:
        params = dict(stream.params)
        if stream.is_search:
            # whole seconds, rounded down: a video published in the bound's second is asked for again
            params["publishedAfter"] = _iso(bound)
        if token:
            params["pageToken"] = token
        settings = self.settings
        url = settings.api_url.rstrip("/") + stream.path
        credentials = self.context.credentials
        daily = settings.daily_quota
        limits: list[RateLimit] = []

        def charge() -> None:
            """Units for one attempt, before it is made (Google charges for every request it receives)."""
            limits.append(self._spend(credentials.key, stream.cost, daily, stream))

        def retry_after(seconds: float) -> None:
            charge()  # a retry is another request: it needs its units first
            time.sleep(seconds)

        charge()
        response, _ = self.call(
            "GET", url, auth=httpx.Auth(), sleep=retry_after, params=params,
            headers={"X-Goog-Api-Key": credentials.access_token()},
        )  # fmt: skip
        self.context.budgets.record(credentials.key, limits[-1])
        self._raise_for_error(response, stream, credentials, daily, limits[-1], paged=token is not None)
        body = http.decode_json(response, PLATFORM)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("items", []), list)
            or not ("items" in body or "kind" in body or "pageInfo" in body)
        ):
            raise Fatal(f"YouTube sent an unexpected response to {stream.path.strip('/')}: no list of items")
        return body, limits[-1]

    def _spend(self, key: str, units: int, daily: int, stream: Stream) -> RateLimit:
        day, reset_at = quota_day(self.context.now())
        remaining = self.context.quota.spend(key, units, daily, day)
        if remaining is None:
            raise QuotaSpent(
                f"YouTube daily quota spent until {_utc(reset_at)} ({stream.what} costs {units} of {daily} a day)",
                reset_at,
            )
        return RateLimit(limit=daily, remaining=remaining, reset_at=reset_at)

    def _raise_for_error(
        self,
        response: httpx.Response,
        stream: Stream,
        credentials: Credentials,
        daily: int,
        limits: RateLimit,
        *,
        paged: bool,
    ) -> None:
        status = response.status_code
        if status < 400:
            return
        if status in (400, 403, 404):
            error = read_error(response)
            # defence in depth: Google's messages do not echo the key, and must never carry it onward
            message = error.message.replace(credentials.access_token(), "[key]")
            detail = f"HTTP {status} {', '.join(sorted(error.reasons)) or 'no reason'}: {message}"
            if error.reasons & QUOTA_REASONS:
                day, reset_at = quota_day(self.context.now())
                self.context.quota.exhaust(credentials.key, daily, day)
                raise QuotaSpent(f"YouTube daily quota spent until {_utc(reset_at)} ({detail})", reset_at)
            if error.reasons & SHORT_LIMIT_REASONS:
                wait = http.retry_after(response)
                reset_at = self.context.now() + (timedelta(seconds=wait) if wait else SHORT_LIMIT)
                raise RateLimited(f"YouTube rate limit reached until {_utc(reset_at)} ({detail})", reset_at)
            about_resource = any(d.startswith("youtube.comment") for d in error.domains) and "API key" not in message
            if not stream.is_search and (error.reasons & GONE_REASONS or (status == 403 and about_resource)):
                log.warning(
                    "skipped %s this run: YouTube will not list its comments (%s)",
                    stream.name, detail, extra={"event": "stream_skipped"},
                )  # fmt: skip
                raise _Gone(detail, limits)
            if paged and "invalidPageToken" in error.reasons:
                raise _StaleToken(detail)
            if error.reasons & KEY_REASONS or "API key" in message:
                raise AuthError(f"YouTube refused the API key ({detail})")
            raise Fatal(f"YouTube refused the request ({detail})")
        http.raise_for_status(response, PLATFORM)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
