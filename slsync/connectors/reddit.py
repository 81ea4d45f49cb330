"""Reddit: post search, newest first, paged with `after` back to what the last run stored.

Reddit's search has no "since" parameter, so a run pages the newest-first listing and stops at a
boundary: the newest post the last run stored, less an overlap (search indexes posts with a delay,
so a post can turn up after a newer one was already seen), or `since` on a first sync. Listings end
near 1,000 items, whatever the boundary.

Authentication is app-only OAuth (client credentials): the token is fetched on first use and again
before it expires or after a 401. Reddit requires a unique User-Agent on every call.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import ClientCredentials, granted_token
from slsync.config import PlatformSettings
from slsync.connectors.base import Looked, whole_number
from slsync.connectors.fields import count as _int
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import normalize_each
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk
from slsync.coverage import estimate
from slsync.errors import AuthError, Fatal, UsageError
from slsync.models import Gap, Mention, RateLimit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.models import Source, Stored

log = logging.getLogger("slsync.reddit")

PLATFORM = "Reddit"
PAGE_SIZE = 100
# GET /api/info?id=: up to 100 fullnames a call
LOOKUP_SIZE = 100
MAX_QUERY_LENGTH = 512
# Listings end near 1,000 items (10 pages); more pages than this means the listing is looping.
LISTING_CAP = 1000
MAX_PAGES = 15
MAX_SUBREDDITS = 100
# Search indexes posts with a delay: each run re-reads this much before the newest stored post.
DEFAULT_OVERLAP_MINUTES = 10
MAX_OVERLAP_MINUTES = 24 * 60
# Renew the app token this long before it expires, so a page fetched right after still gets through.
TOKEN_MARGIN = timedelta(minutes=2)
SEARCH_PARAMS = {"sort": "new", "limit": str(PAGE_SIZE), "raw_json": "1", "type": "link"}
SITE = "https://www.reddit.com"
# one listing per source: its bound is the newest stored post and the floor of the last pass
STREAM = "search"
USER_AGENT_EXAMPLE = "linux:com.example.brandwatch:v1.0 (by /u/yourname)"

_WORD = re.compile(r"^\w+$")
_USERNAME = re.compile(r"^[A-Za-z0-9_-]{3,20}$")
_SUBREDDIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{1,20}$")
_OPERATORS = {"AND", "OR", "NOT"}
_FULLNAME = re.compile(r"^t[0-9]_[0-9a-z]{1,13}$")
_BASE36 = re.compile(r"^[0-9a-z]{1,13}$")
_IMAGE_FILE = re.compile(r"\.(jpe?g|png|gif|webp)$", re.IGNORECASE)
_REMOVED = {"[removed]", "[deleted]"}


# --- options and the query ------------------------------------------------------------------------


def parse_subreddits(value: str) -> list[str]:
    """`--option subreddits=a,b`: names without r/, each at most once."""
    names: list[str] = []
    for part in value.split(","):
        name = part.strip().removeprefix("/").removeprefix("r/").strip("/")
        if not name:
            continue
        if not _SUBREDDIT.match(name):
            raise ValueError(f"not a subreddit name: {part.strip()!r}")
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    if not names:
        raise ValueError("expected subreddit names separated by commas, such as subreddits=coffee,espresso")
    if len(names) > MAX_SUBREDDITS:
        raise ValueError(f"at most {MAX_SUBREDDITS} subreddits per source")
    return names


def _phrase(term: str) -> str:
    """A keyword as Reddit search reads it: one word bare, anything else as an exact phrase."""
    if '"' in term or "\\" in term:
        raise UsageError(f"Reddit cannot search for a term with a double quote or backslash in it: {term!r}")
    if _WORD.match(term) and term.upper() not in _OPERATORS:
        return term
    return f'"{term}"'


def _username(name: str) -> str:
    name = name.removeprefix("/").removeprefix("u/")
    if not _USERNAME.match(name):
        raise UsageError(f"not a Reddit username (3-20 letters, digits, _ or -): {name!r}")
    return name


def build_query(config: Mapping[str, Any]) -> str:
    """The Reddit search query for a source's search parameters.

    Keywords and hashtags (as plain words: Reddit has no hashtags) and mentions (`author:name`, posts
    by that account) are OR-ed; each exclusion becomes `NOT term`. Languages cannot be expressed.
    """
    if config.get("languages"):
        raise UsageError(
            "Reddit search cannot filter by language (Reddit does not record one); add the source without --language"
        )
    terms: list[str] = []
    for keyword in config.get("keywords") or []:
        terms.append(_phrase(keyword))
    for tag in config.get("hashtags") or []:
        if not _WORD.match(tag) or tag.upper() in _OPERATORS:
            raise UsageError(f"not a hashtag Reddit can search for as a word: #{tag}")
        terms.append(tag)
    for handle in config.get("mentions") or []:
        terms.append(f"author:{_username(handle)}")
    terms = list(dict.fromkeys(terms))  # a hashtag that is also a keyword is searched once
    if not terms:
        raise UsageError("a Reddit source needs at least one --keyword, --hashtag or --mention")
    head = terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"
    query = " ".join([head, *(f"NOT {_phrase(word)}" for word in config.get("exclude") or [])])
    if len(query) > MAX_QUERY_LENGTH:
        raise UsageError(
            f"this search is {len(query)} characters; Reddit allows {MAX_QUERY_LENGTH}: split it over several sources"
        )
    return query


def search_path(config: Mapping[str, Any]) -> str:
    """`/search`, or `/r/a+b/search` (with restrict_sr) when the source lists subreddits."""
    subreddits = _dict(config.get("options")).get("subreddits") or []
    return f"/r/{'+'.join(subreddits)}/search" if subreddits else "/search"


# --- normalizing ----------------------------------------------------------------------------------


def _published(data: Mapping[str, Any]) -> datetime:
    created = data.get("created_utc")
    if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created):
        raise ValueError("a post without created_utc")
    try:
        return datetime.fromtimestamp(created, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"a post with an impossible created_utc: {created!r}") from None


def _fullname(kind: str, data: Mapping[str, Any]) -> str:
    name = data.get("name")
    if isinstance(name, str) and _FULLNAME.match(name) and name.startswith(kind + "_"):
        return name
    base36 = data.get("id")
    if isinstance(base36, str) and _BASE36.match(base36):
        return f"{kind}_{base36}"
    raise ValueError(f"a {kind} without a fullname")


def _permalink(data: Mapping[str, Any]) -> str | None:
    link = data.get("permalink")
    if not isinstance(link, str) or not link.startswith("/") or link.startswith("//"):
        return None
    return SITE + link.split("?", 1)[0].split("#", 1)[0]  # search adds ?ref=search_posts


def _author(data: Mapping[str, Any]) -> str | None:
    author = _text(data.get("author"))
    return None if author is None or author in _REMOVED else author


def _gallery(data: Mapping[str, Any]) -> tuple[str, ...]:
    metadata = _dict(data.get("media_metadata"))
    order = [_dict(item).get("media_id") for item in _list(_dict(data.get("gallery_data")).get("items"))]
    urls = []
    for key in [k for k in order if isinstance(k, str)] or list(metadata):
        source = _dict(_dict(metadata.get(key)).get("s"))
        url = _text(source.get("u")) or _text(source.get("gif")) or _text(source.get("mp4"))
        if url:
            urls.append(url)
    return tuple(urls)


def _media(data: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """media_type and media_urls of a post, from post_hint, is_video, is_gallery and the link itself."""
    hint = _text(data.get("post_hint"))
    url = _text(data.get("url"))
    domain = (_text(data.get("domain")) or "").lower()
    if data.get("is_video") is True or hint in ("hosted:video", "rich:video") or domain == "v.redd.it":
        video = _dict(_dict(data.get("secure_media") or data.get("media")).get("reddit_video"))
        fallback = _text(video.get("fallback_url"))
        return "video", tuple(u for u in (fallback or url,) if u)
    if data.get("is_gallery") is True:
        return "image", _gallery(data) or tuple(u for u in (url,) if u)
    if hint == "image" or domain == "i.redd.it" or (url and _IMAGE_FILE.search(url.split("?", 1)[0])):
        return "image", tuple(u for u in (url,) if u)
    if data.get("is_self") is True or hint == "self" or url is None:
        return "text", ()
    if url.startswith(SITE) and f"/comments/{data.get('id')}/" in url:
        return "text", ()  # a self post's url is its own page
    return "link", (url,)


def normalize_post(kind: str, data: Mapping[str, Any]) -> Mention:
    """One post (t3) or comment (t1); raises ValueError on a record without a fullname or a time."""
    external_id = _fullname(kind, data)
    published = _published(data)
    author = _author(data)
    score = _int(data.get("score"))
    if kind == "t3":
        title = _text(data.get("title"))
        body = _text(data.get("selftext"))
        body = None if body in _REMOVED else body
        content = f"{title}\n\n{body}" if title and body else title or body
        media_type, media_urls = _media(data)
        comments = _int(data.get("num_comments"))
    else:
        body = _text(data.get("body"))
        content = None if body in _REMOVED else body
        media_type, media_urls = "text", ()
        comments = None  # a comment's num_comments counts its post's comments, not its replies
    return Mention(
        platform="reddit",
        external_id=external_id,
        published_at=published,
        url=_permalink(data),
        content=content,
        author_name=None,  # Reddit listings carry usernames only
        author_handle=author,
        likes_count=score,
        comments_count=comments,
        shares_count=None,
        media_type=media_type,
        media_urls=media_urls,
        language=None,  # Reddit records no language
        raw={"kind": kind, "data": dict(data)},
    )


def removed(child: Any) -> bool:
    """Whether a listed post or comment was deleted by its author or removed (by moderators, by Reddit): Reddit
    keeps listing it, with its text replaced by [deleted] or [removed] (and a post's removed_by_category
    set). An author who deleted their account leaves their posts up, shown without an author: not removed."""
    data = _dict(_dict(child).get("data"))
    if data.get("removed_by_category") is not None:
        return True
    return _text(data.get("selftext")) in _REMOVED or _text(data.get("body")) in _REMOVED


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """A listing's posts and comments as mentions, and how many of its records were skipped."""
    return normalize_each(
        _list(_dict(_dict(body).get("data")).get("children")), _normalize_thing, "a record Reddit sent", log
    )


def _normalize_thing(child: dict[str, Any]) -> Mention:
    """A listing item: {"kind": "t3" or "t1", "data": {...}}."""
    if not isinstance(child.get("data"), dict):
        raise ValueError("a listing item that is not a thing")
    kind = child.get("kind")
    if kind not in ("t3", "t1"):
        raise ValueError(f"a listing item of kind {str(kind)[:10]!r}, not a post or comment")
    return normalize_post(kind, child["data"])


# --- rate limits ----------------------------------------------------------------------------------


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(headers[name])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def rate_limit(headers: Mapping[str, str], now: datetime) -> RateLimit | None:
    """X-Ratelimit-Used / -Remaining (a float) / -Reset (SECONDS until the window ends, not a time)."""
    used = _number(headers, "x-ratelimit-used")
    remaining = _number(headers, "x-ratelimit-remaining")
    reset = _number(headers, "x-ratelimit-reset")
    if used is None and remaining is None and reset is None:
        return None
    # Windows are 10 minutes; a reset further away than a day is not Reddit's seconds-until-reset.
    reset_at = _after(now, reset) if reset is not None and reset <= 86400 else None
    return RateLimit(
        limit=round(used + remaining) if used is not None and remaining is not None else None,
        remaining=math.floor(remaining) if remaining is not None else None,
        reset_at=reset_at,
    )


def _after(now: datetime, seconds: float) -> datetime:
    """now + seconds, rounded up to a whole second (so a reset is never placed early)."""
    return datetime.fromtimestamp(math.ceil(now.timestamp() + seconds), UTC)


# --- credentials ----------------------------------------------------------------------------------


def require_user_agent(settings: RedditSettings) -> str:
    agent = (settings.user_agent or "").strip()
    if not agent:
        raise AuthError(
            "REDDIT_USER_AGENT is not set: Reddit requires a unique user agent on every call, "
            f"such as {USER_AGENT_EXAMPLE!r}"
        )
    return agent


class RedditAppCredentials(ClientCredentials):
    """Reddit's app-only token (client credentials, HTTP Basic with the app's id and secret)."""

    margin = TOKEN_MARGIN

    def __init__(
        self,
        client_id: str,
        client_secret: SecretStr,
        settings: Settings,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._platform = settings.of(RedditSettings)
        super().__init__(f"reddit:app:{hashlib.sha256(client_id.encode()).hexdigest()[:16]}", now)
        self._client_id = client_id
        self._secret = client_secret
        self._settings = settings

    def grant(self) -> tuple[str, float | None]:
        agent = require_user_agent(self._platform)
        where = f"{PLATFORM} token endpoint"
        with http.client(timeout=self._settings.http_timeout_seconds) as client:
            response = http.send(
                client, "POST", self._platform.token_url, platform=where,
                data={"grant_type": "client_credentials"},
                auth=(self._client_id, self._secret.get_secret_value()),
                headers={"User-Agent": agent, "Accept": "application/json"},
            )  # fmt: skip
        status = response.status_code
        check = "check REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET"
        if status in (401, 403):
            reason = http.platform_message(response)
            raise AuthError(f"{PLATFORM} refused the app's client credentials (HTTP {status}: {reason}); {check}")
        http.raise_for_status(response, where)
        doc = http.decode_json(response, where)
        if isinstance(doc, dict) and doc.get("error") is not None:  # some refusals come as 200 with an error
            reason = str(doc.get("error"))[:80]
            raise AuthError(f"{PLATFORM} refused the client-credentials grant ({reason}); {check}")
        return granted_token(doc, where)


class RedditSettings(PlatformSettings):
    """Reddit: app-only OAuth (client credentials); Reddit requires a unique user agent on every call."""

    client_id: str | None = Field(None, validation_alias="REDDIT_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, validation_alias="REDDIT_CLIENT_SECRET")
    user_agent: str | None = Field(None, validation_alias="REDDIT_USER_AGENT")
    api_url: str = Field("https://oauth.reddit.com", validation_alias="SLSYNC_REDDIT_API_URL")
    token_url: str = Field("https://www.reddit.com/api/v1/access_token", validation_alias="SLSYNC_REDDIT_TOKEN_URL")


# --- the connector --------------------------------------------------------------------------------


class RedditConnector(PagedConnector):
    platform = "reddit"
    settings_model = RedditSettings
    builds = staticmethod(build_query)
    reconnect = (
        "set REDDIT_CLIENT_ID, REDDIT_CLIENT_SECRET and REDDIT_USER_AGENT (a Reddit app of type script), "
        "then: slsync sync source {source_id}"
    )
    title = PLATFORM
    lookup_size = LOOKUP_SIZE
    order = staticmethod(lambda mark: mark["created_utc"])
    connection_type = "app"
    options = {"subreddits": parse_subreddits, "overlap_minutes": whole_number("minutes", MAX_OVERLAP_MINUTES)}
    # search reaches as far back as its ~1,000-item listings go; no fixed window
    max_lookback = None
    listing_cap = LISTING_CAP

    credential_fields = ("client_id", "client_secret")

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> RedditAppCredentials | None:
        app = cls.settings_of(settings)
        if not app.client_id or app.client_secret is None:
            return None
        return RedditAppCredentials(app.client_id, app.client_secret, settings)

    def streams(self) -> list[str]:
        self._agent = require_user_agent(self.settings)  # before any call, token calls included
        return [STREAM]

    def begin(self, stream: str, stored: Any, since: datetime | None) -> dict[str, Any]:
        boundary = _boundary(_dict(stored), since, self._overlap, self.context.now())
        bound = {"boundary": boundary, **self._listing}
        newest = _mark(_dict(stored).get("newest"))
        if since is None and newest is not None:
            bound["covered"] = newest["created_utc"]  # what the last pass read down to: a cap short of it is a gap
        return bound

    def resumable(self, walk: Walk) -> bool:
        bound = _dict(walk.bound)
        same = all(bound.get(k) == v for k, v in self._listing.items())  # not a listing of another query
        return same and _is_number(bound.get("boundary")) and isinstance(walk.token, str)

    def fetch(self, walk: Walk) -> Fetched:
        boundary = float(_dict(walk.bound)["boundary"])
        body, limits = self._search(self._listing["path"], self._listing["query"], walk.token)
        mentions, errors = normalize_page(body)
        next_after = _text(_dict(body.get("data")).get("after"))
        if walk.token and not walk.pages and not mentions and next_after is None:
            # the post the listing was to continue after is gone (deleted, removed): start again at the top
            log.info("the interrupted listing is gone; reading it again from the top", extra={"event": "restart"})
            walk.restart()
            return self.fetch(walk)
        kept = [m for m in mentions if m.published_at.timestamp() >= boundary]
        reached = len(kept) < len(mentions)
        number = walk.pages + 1
        more = bool(next_after) and not reached and number < MAX_PAGES
        newest = None
        for mention in kept:
            newest = _newer(newest, mention)
        gap = None
        if not more and not reached and number >= LISTING_CAP // PAGE_SIZE:
            gap = self._cut_off(walk, boundary, newest, mentions)
        return Fetched(kept, token=next_after if more else None, newest=newest, errors=errors, limits=limits, gap=gap)

    def _cut_off(
        self, walk: Walk, boundary: float, newest: Mapping[str, Any] | None, listed: list[Mention]
    ) -> Gap | None:
        """The listing ended on its ~1,000-item cap before the boundary: what lies between the newest post the
        last pass stored and the listing's oldest post is out of reach (a gap), unless the listing got back
        to that post after all (inside the overlap) or there was none (a first sync, --since)."""
        covered = _dict(walk.bound).get("covered")
        oldest = min((m.published_at for m in listed), default=None)
        if not _is_number(covered) or oldest is None:
            log.warning(
                "Reddit's listing ended before %s: posts older than its last one were not read "
                "(Reddit lists about 1,000 items; narrow the search or reach back less far)",
                f"{datetime.fromtimestamp(boundary, UTC):%Y-%m-%d %H:%M:%S} UTC",
                extra={"event": "listing_exhausted"},
            )
            return None
        start = datetime.fromtimestamp(float(covered), UTC)
        if oldest <= start:
            log.info("Reddit's listing ended inside the overlap: nothing was cut off", extra={"event": "listing_full"})
            return None
        top = _mark(_newer(_mark(walk.newest), newest))
        seen = walk.seen + len(listed)
        listed_for = (float(top["created_utc"]) - oldest.timestamp()) / 60 if top else 0.0
        rate = seen / listed_for if listed_for > 0 else None
        return Gap(start, oldest, "cap", estimate(rate, oldest - start))

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """GET /api/info?id=: the posts and comments as they are now. A deleted or removed one is still listed,
        its text [deleted] or [removed]; one Reddit no longer lists at all (a banned or private subreddit) is
        gone too."""
        self._agent = require_user_agent(self.settings)
        asked = {p.external_id for p in posts}
        params = {"id": ",".join(p.external_id for p in posts), "raw_json": "1"}
        body, limits = self._listing_call("/api/info", params)
        children = _list(_dict(body.get("data")).get("children"))
        gone = {str(_dict(c.get("data")).get("name")) for c in map(_dict, children) if removed(c)}
        found, _ = normalize_page({"data": {"children": [c for c in children if not removed(c)]}})
        listed = gone | {m.external_id for m in found}
        return Looked([m for m in found if m.external_id in asked], sorted((gone | (asked - listed)) & asked), limits)

    def reached(self, walk: Walk, stored: Any) -> dict[str, Any]:
        return {
            "newest": _newer(_mark(_dict(stored).get("newest")), walk.newest),
            "floor": _dict(walk.bound)["boundary"],
        }

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"newest": mark, "floor": seconds, "active": {"query", "path", "after", "boundary", "newest"}}."""
        stored = {k: doc[k] for k in ("newest", "floor") if k in doc}
        active, walk = _dict(doc.get("active")), None
        if active:
            bound = {"boundary": active.get("boundary"), "query": active.get("query"), "path": active.get("path")}
            walk = Walk(STREAM, bound, active.get("after"), _mark(active.get("newest")))
        return Cursor({STREAM: stored}, walk)

    @property
    def _listing(self) -> dict[str, str]:
        return {"query": build_query(self.source.config), "path": search_path(self.source.config)}

    @property
    def _overlap(self) -> int:
        overlap = _dict(self.source.config.get("options")).get("overlap_minutes", DEFAULT_OVERLAP_MINUTES)
        return overlap if isinstance(overlap, int) and not isinstance(overlap, bool) else DEFAULT_OVERLAP_MINUTES

    def _search(self, path: str, query: str, after: str | None) -> tuple[dict[str, Any], RateLimit | None]:
        params = {"q": query, **SEARCH_PARAMS}
        if path != "/search":
            params["restrict_sr"] = "1"
        if after:
            params["after"] = after
        return self._listing_call(path, params)

    def _listing_call(self, path: str, params: dict[str, str]) -> tuple[dict[str, Any], RateLimit | None]:
        """One GET of a listing (a search, or /api/info), its status mapped to the run's outcome."""
        url = self.settings.api_url.rstrip("/") + path
        # Reddit's -reset is seconds from now, not an epoch time: its own reader
        response, limits = self.call(
            "GET", url, read_limits=lambda headers: rate_limit(headers, self.context.now()), params=params,
            headers={"User-Agent": self._agent},
        )  # fmt: skip
        if response.status_code == 429 and (limits is None or limits.reset_at is None):
            wait = http.retry_after(response, self.context.now())
            if wait is not None:
                limits = RateLimit(remaining=0, reset_at=_after(self.context.now(), min(wait, 86400)))
        if 300 <= response.status_code < 400:
            where = "a subreddit in subreddits= may not exist" if path.startswith("/r/") else "the API URL may be wrong"
            raise Fatal(f"{PLATFORM} redirected the call (HTTP {response.status_code}): {where}")
        http.raise_for_status(response, PLATFORM, limits)
        body = http.decode_json(response, PLATFORM)
        data = _dict(body).get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("children"), list):
            reason = _dict(body).get("message") or _dict(body).get("error") if isinstance(body, dict) else None
            raise Fatal(f"{PLATFORM} sent an unexpected response: {str(reason)[:100] if reason else 'not a listing'}")
        return body, limits


def _mark(value: Any) -> dict[str, Any] | None:
    """A cursor's {"id", "created_utc"} mark of a post, or None when there is none (or it is not one)."""
    value = _dict(value)
    if isinstance(value.get("id"), str) and _is_number(value.get("created_utc")):
        return {"id": value["id"], "created_utc": float(value["created_utc"])}
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _boundary(committed: Mapping[str, Any], since: datetime | None, overlap: int, now: datetime) -> float:
    """Where this run stops paging back: `since`, else the newest stored post less the overlap."""
    if since is not None:
        return since.timestamp()
    newest = _mark(committed.get("newest")) or {}
    floor = float(committed["floor"]) if _is_number(committed.get("floor")) else None
    created = newest.get("created_utc")
    if _is_number(created):
        # a post dated in the future (a skewed clock) must not hide everything posted until then
        bound = min(float(created), now.timestamp()) - overlap * 60
        return max(bound, floor) if floor is not None else bound
    if floor is not None:
        return floor
    return (now - timedelta(days=7)).timestamp()  # a cursor this connector did not write


def _newer(current: Mapping[str, Any] | None, candidate: Mention | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The newer of two {"id", "created_utc"} marks (a mention counts as its mark)."""
    if isinstance(candidate, Mention):
        candidate = {"id": candidate.external_id, "created_utc": candidate.published_at.timestamp()}
    if not candidate:
        return dict(current) if current else None
    if not current or float(candidate["created_utc"]) > float(current["created_utc"]):
        return dict(candidate)
    return dict(current)
