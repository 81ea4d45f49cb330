"""Bluesky: app.bsky.feed.searchPosts through an app-password session, newest first, one query per term.

Bluesky's search reads `#tag` and `mentions:handle` as filters that every result must pass, so terms
of different kinds cannot be OR-ed into one query: each keyword, hashtag and mention is its own query
(times each language, since `lang` takes one), and the unique key absorbs posts that several find.

`since` filters on the post's sortAt, the earlier of createdAt (set by the author's client, which may
be hours ahead) and indexedAt (when the network saw it). Each query therefore keeps the next run's
`since` as the newest sortAt seen, estimated the same way, minus an overlap for the search index's
lag; never the newest createdAt, which a clock running ahead would push past posts not yet seen.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import BearerAuth, ClientCredentials
from slsync.config import PlatformSettings
from slsync.connectors.base import Looked
from slsync.connectors.fields import count as _int
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import normalize_each, total
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk
from slsync.errors import AuthError, Fatal, UsageError
from slsync.models import Mention

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.models import Source, Stored

log = logging.getLogger("slsync.bluesky")

PLATFORM = "Bluesky"
PAGE_SIZE = 100
MAX_QUERIES = 10
# The search index lags the network, and sortAt is estimated: ask again this far behind the newest seen.
OVERLAP = timedelta(minutes=10)
# A query the committed cursor does not know yet starts this far back (the engine's first-sync window).
FIRST_SYNC = timedelta(days=7)
# Renew the session this long before the access JWT's exp claim, so a page fetched right after gets through.
REFRESH_MARGIN = timedelta(minutes=2)
RATE_LIMIT_PREFIX = "ratelimit-"
READ_LIMITS = http.header_limits(RATE_LIMIT_PREFIX)
SEARCH = "app.bsky.feed.searchPosts"
# the posts of up to 25 at:// URIs, as they are now (a deleted or taken-down one is left out)
GET_POSTS = "app.bsky.feed.getPosts"
LOOKUP_SIZE = 25
CREATE_SESSION = "com.atproto.server.createSession"
REFRESH_SESSION = "com.atproto.server.refreshSession"
# XRPC errors that mean "this token is no good": get a new session and try once more
TOKEN_ERRORS = frozenset({"ExpiredToken", "InvalidToken"})
SETTINGS_NAMES = "BLUESKY_HANDLE and BLUESKY_APP_PASSWORD"

_WORD = re.compile(r"^\w+$")
_OPERATOR_WORDS = {"OR", "AND", "NOT"}
# atproto handle syntax: dot-separated labels, the last one not starting with a digit
_HANDLE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_TAG = re.compile(r"^[^\s#\"()]{1,64}$")
_RKEY = re.compile(r"^[A-Za-z0-9._:~-]{1,512}$")
_DID = re.compile(r"^did:[a-z]+:[A-Za-z0-9._:%-]{1,2048}$")
_FRACTION = re.compile(r"(\.\d{6})\d+")


# --- the queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    q: str
    lang: str | None = None

    @property
    def key(self) -> str:
        """Names the query in the cursor."""
        return f"{self.lang or '*'} {self.q}"


def _phrase(term: str, what: str) -> str:
    """A keyword as Bluesky's search reads it: one plain word bare, anything else as a quoted phrase."""
    if '"' in term:
        raise UsageError(f"Bluesky cannot search for {what} with a double quote in it: {term!r}")
    if _WORD.match(term) and term.upper() not in _OPERATOR_WORDS:
        return term
    return f'"{term}"'


def build_queries(config: Mapping[str, Any]) -> list[Query]:
    """One query per keyword, hashtag and mention, times each language; exclusions apply to all.

    Bluesky's search (Lucene-like, default AND) turns `#tag` and `mentions:handle` into filters, so
    a post must carry all of them: OR-ing terms of different kinds in one query is not possible.
    """
    terms = [_phrase(k, "a keyword") for k in config.get("keywords") or []]
    for tag in config.get("hashtags") or []:
        if not _TAG.match(tag) or tag.isdigit():
            raise UsageError(f"not a hashtag Bluesky can search for: #{tag} (no spaces, at most 64 characters)")
        terms.append(f"#{tag}")
    for handle in config.get("mentions") or []:
        if not _HANDLE.match(handle) or len(handle) > 253:
            hint = f" (a full handle such as {handle}.bsky.social)" if _WORD.match(handle) else ""
            raise UsageError(f"not a Bluesky handle: @{handle}{hint}")
        terms.append(f"mentions:{handle.lower()}")
    if not terms:
        raise UsageError("a Bluesky source needs at least one --keyword, --hashtag or --mention")
    suffix = "".join(f" -{_phrase(word, 'an exclusion')}" for word in config.get("exclude") or [])
    languages: list[str | None] = list(config.get("languages") or []) or [None]
    queries = [Query(term + suffix, lang) for term in terms for lang in languages]
    if len(queries) > MAX_QUERIES:
        raise UsageError(
            f"these search terms need {len(queries)} Bluesky queries per sync (one per term and language, "
            f"at most {MAX_QUERIES}); split them over several sources"
        )
    return queries


# --- normalizing ----------------------------------------------------------------------------------


def _http_url(value: Any) -> str | None:
    return value if isinstance(value, str) and value.startswith(("https://", "http://")) else None


def parse_time(value: Any) -> datetime | None:
    """An atproto datetime (RFC 3339, often with microseconds or more) in UTC; None when it is not one."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _FRACTION.sub(r"\1", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _iso(moment: datetime) -> str:
    """What searchPosts' since expects: an RFC 3339 datetime in UTC, cut (never rounded up) to the millisecond."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _times(post: Any) -> list[datetime]:
    post = _dict(post)
    found = (parse_time(_dict(post.get("record")).get("createdAt")), parse_time(post.get("indexedAt")))
    return [t for t in found if t is not None]


def sort_time(post: Any) -> datetime | None:
    """The post's sortAt (what `since` filters on): the earlier of createdAt and indexedAt, as the AppView
    computes it. Whatever the server's exact rule, it is never later than this, so a bound built on it
    cannot run ahead of a post."""
    return min(times) if (times := _times(post)) else None


def latest_time(post: Any) -> datetime | None:
    """The latest the post's sortAt can be: the later of createdAt and indexedAt."""
    return max(times) if (times := _times(post)) else None


def _embed_view(view: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """Media of a hydrated embed (the `#view` types); None for a quoted post or an unknown type."""
    kind = view.get("$type")
    if kind == "app.bsky.embed.images#view":
        images = [_dict(i) for i in _list(view.get("images"))]
        return "image", tuple(u for i in images if (u := _http_url(i.get("fullsize")) or _http_url(i.get("thumb"))))
    if kind == "app.bsky.embed.video#view":
        url = _http_url(view.get("playlist")) or _http_url(view.get("thumbnail"))
        return "video", (url,) if url else ()
    if kind == "app.bsky.embed.external#view":
        url = _http_url(_dict(view.get("external")).get("uri"))
        return ("link", (url,)) if url else None
    if kind == "app.bsky.embed.recordWithMedia#view":
        return _embed_view(_dict(view.get("media")))
    return None


def _embed_record(embed: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """Media of the record's own embed, when no hydrated view came with it (blobs have no URL of their own)."""
    kind = embed.get("$type")
    if kind == "app.bsky.embed.images":
        return "image", ()
    if kind == "app.bsky.embed.video":
        return "video", ()
    if kind == "app.bsky.embed.external":
        url = _http_url(_dict(embed.get("external")).get("uri"))
        return ("link", (url,)) if url else None
    if kind == "app.bsky.embed.recordWithMedia":
        return _embed_record(_dict(embed.get("media")))
    return None


def _media(post: dict[str, Any], record: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    found = _embed_view(_dict(post.get("embed"))) or _embed_record(_dict(record.get("embed")))
    if found:
        return found
    links: list[str] = []
    for facet in _list(record.get("facets")):
        for feature in _list(_dict(facet).get("features")):
            feature = _dict(feature)
            url = _http_url(feature.get("uri")) if feature.get("$type") == "app.bsky.richtext.facet#link" else None
            if url and url not in links:
                links.append(url)
    return ("link", tuple(links)) if links else ("text", ())


def _verified(author: dict[str, Any]) -> bool | None:
    status = _dict(author.get("verification")).get("verifiedStatus")
    return {"valid": True, "invalid": False, "none": False}.get(status) if isinstance(status, str) else None


def normalize_post(post: Mapping[str, Any]) -> Mention:
    """One postView; raises ValueError on a post without an at:// URI or any time."""
    uri = post.get("uri")
    if not isinstance(uri, str) or not uri.startswith("at://") or len(uri) > 8192:
        raise ValueError("a post without an at:// URI")
    record = _dict(post.get("record"))
    # createdAt is when the author says it was written; indexedAt (when the network saw it) stands in
    published = parse_time(record.get("createdAt")) or parse_time(post.get("indexedAt"))
    if published is None:
        raise ValueError("a post without createdAt or indexedAt")
    author = _dict(post.get("author"))
    handle = _text(author.get("handle"))
    if handle is not None and (handle == "handle.invalid" or not _HANDLE.match(handle)):
        handle = None  # the network could not verify it: the DID names the author in the link instead
    authority, _, path = uri[len("at://") :].partition("/")
    collection, _, rkey = path.partition("/")
    profile = handle or (authority if _DID.match(authority) else None)
    url = None
    if profile and collection == "app.bsky.feed.post" and _RKEY.match(rkey):
        url = f"https://bsky.app/profile/{profile}/post/{rkey}"
    reposts, quotes = _int(post.get("repostCount")), _int(post.get("quoteCount"))
    media_type, media_urls = _media(dict(post), record)
    language = next((lang for lang in _list(record.get("langs")) if _text(lang)), None)
    return Mention(
        platform="bluesky",
        external_id=uri,
        published_at=published,
        url=url,
        content=_text(record.get("text")),
        author_name=_text(author.get("displayName")),
        author_handle=handle,
        author_verified=_verified(author),
        likes_count=_int(post.get("likeCount")),
        comments_count=_int(post.get("replyCount")),
        shares_count=total(reposts, quotes),
        media_type=media_type,
        media_urls=media_urls,
        language=language,
        raw=dict(post),
    )


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """The page's posts as mentions, and how many records could not be normalized (skipped, logged)."""
    return normalize_each(_list(_dict(body).get("posts")), normalize_post, "a post Bluesky sent", log)


# --- the session ----------------------------------------------------------------------------------


def jwt_expiry(token: str) -> datetime | None:
    """The exp claim of a JWT, read without verifying it (only the PDS can); None when there is none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload.get("exp") if isinstance(payload, dict) else None
        if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
            return datetime.fromtimestamp(exp, UTC)
    except (ValueError, binascii.Error, OverflowError, OSError):
        pass
    return None


def _xrpc_error(response: httpx.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


class BlueskySettings(PlatformSettings):
    """Bluesky: an app password of an account; sessions are created and refreshed as needed."""

    handle: str | None = Field(None, validation_alias="BLUESKY_HANDLE")
    app_password: SecretStr | None = Field(None, validation_alias="BLUESKY_APP_PASSWORD")
    api_url: str = Field("https://bsky.social/xrpc", validation_alias="SLSYNC_BLUESKY_API_URL")


class BlueskySession(ClientCredentials):
    """An app-password session, held in memory only: created with createSession, renewed with refreshSession.

    One per handle and process, shared by every source that uses it: createSession is limited to
    30 per 5 minutes and 300 (100 at the bsky.social entryway) per day per account, so a `sync due`
    over many sources must not sign in once per source. A refresh JWT is used once (the PDS rotates
    it); when it is refused, the session is created again from the app password.
    """

    margin = REFRESH_MARGIN

    def __init__(
        self,
        api_url: str,
        handle: str,
        password: SecretStr,
        *,
        timeout: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        # sources on this account share its rate-limit window; a digest names it without holding it
        super().__init__(f"bluesky:session:{hashlib.sha256(handle.lower().encode()).hexdigest()[:16]}", now)
        self._api = api_url.rstrip("/")
        self._handle = handle
        self._password = password
        self._timeout = timeout
        self._access: str | None = None
        self._refresh: str | None = None
        # what this session did, for tests and logs: counts only, never tokens
        self.created = 0
        self.refreshed = 0

    def grant(self) -> tuple[str, float | None]:
        """A new session the first time; then the session renewed (refreshed, else created again)."""
        if self._access is None:
            self._create()
        else:
            self._renew()
        assert self._access is not None
        expiry = jwt_expiry(self._access)
        return self._access, (expiry - self._now()).total_seconds() if expiry else None

    def _renew(self) -> None:
        if self._refresh is None:
            self._create()
            return
        try:
            with http.client(timeout=self._timeout) as client:
                # never retried: a refresh JWT is single-use, and a replay could be refused
                response = client.post(
                    f"{self._api}/{REFRESH_SESSION}", headers={"Authorization": f"Bearer {self._refresh}"}
                )
        except httpx.HTTPError as exc:
            raise http.transport_error(exc, f"{PLATFORM} refreshSession") from None
        if response.status_code == 429:
            limits = http.rate_limit(response.headers, RATE_LIMIT_PREFIX)
            http.raise_for_status(response, f"{PLATFORM} refreshSession", limits)
        if response.status_code != 200:
            log.info(
                "Bluesky refused the refresh token (HTTP %s: %s); signing in again",
                response.status_code, _xrpc_error(response) or "no error name",
                extra={"event": "session_refresh_refused"},
            )  # fmt: skip
            self._create()
            return
        self._take(response, REFRESH_SESSION)
        self.refreshed += 1
        log.info("refreshed the Bluesky session", extra={"event": "token_refreshed"})

    def _create(self) -> None:
        body = {"identifier": self._handle, "password": self._password.get_secret_value()}
        with http.client(timeout=self._timeout) as client:
            response = http.send(
                client, "POST", f"{self._api}/{CREATE_SESSION}", platform=f"{PLATFORM} createSession",
                read_limits=http.header_limits(RATE_LIMIT_PREFIX), json=body,
            )  # fmt: skip
        status = response.status_code
        if status in (400, 401, 403):
            reason = self._scrub(http.platform_message(response))
            hint = ""
            if _xrpc_error(response) == "AuthFactorTokenRequired":
                hint = " (the account asks for a sign-in code: use an app password, which does not)"
            raise AuthError(f"{PLATFORM} refused the sign-in with {SETTINGS_NAMES} (HTTP {status}: {reason}){hint}")
        limits = http.rate_limit(response.headers, RATE_LIMIT_PREFIX) if status == 429 else None
        http.raise_for_status(response, f"{PLATFORM} createSession", limits)
        self._take(response, CREATE_SESSION)
        self.created += 1
        log.info("signed in to Bluesky", extra={"event": "session_created"})

    def _take(self, response: httpx.Response, method: str) -> None:
        doc = http.decode_json(response, f"{PLATFORM} {method}")
        doc = doc if isinstance(doc, dict) else {}
        access, refresh = doc.get("accessJwt"), doc.get("refreshJwt")
        if not isinstance(access, str) or not access or not isinstance(refresh, str) or not refresh:
            raise Fatal(f"{PLATFORM} {method} answered without an access and a refresh token")
        self._access, self._refresh = access, refresh

    def _scrub(self, text: str) -> str:
        """A platform message with the password taken out, should a server ever echo it."""
        secret = self._password.get_secret_value()
        return text.replace(secret, "***") if secret else text


_SESSIONS: dict[tuple[str, str, str], BlueskySession] = {}
_SESSIONS_LOCK = threading.Lock()


def session_for(settings: Settings) -> BlueskySession | None:
    """The process's session for the configured account; None when the settings name no account."""
    account = settings.of(BlueskySettings)
    handle = (account.handle or "").strip().lstrip("@")
    password = account.app_password
    if not handle or password is None or not password.get_secret_value():
        return None
    api = account.api_url.rstrip("/")
    digest = hashlib.sha256(password.get_secret_value().encode()).hexdigest()
    with _SESSIONS_LOCK:
        key = (api, handle.lower(), digest)
        if key not in _SESSIONS:
            _SESSIONS[key] = BlueskySession(api, handle, password, timeout=settings.http_timeout_seconds)
        return _SESSIONS[key]


# --- the connector --------------------------------------------------------------------------------


class BlueskyConnector(PagedConnector):
    platform = "bluesky"
    backfill = FIRST_SYNC
    time_text = staticmethod(_iso)
    settings_model = BlueskySettings
    builds = staticmethod(build_queries)
    reconnect = (
        f"set {SETTINGS_NAMES} (an app password from Bluesky's Settings > Privacy and security > "
        "App passwords), then: slsync sync source {source_id}"
    )
    title = PLATFORM
    connection_type = "app"
    page_size = PAGE_SIZE
    lookup_size = LOOKUP_SIZE

    credential_fields = ("handle", "app_password")

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> BlueskySession | None:
        return session_for(settings)

    def streams(self) -> dict[str, Query]:
        return {query.key: query for query in build_queries(self.source.config)}

    def fetch(self, walk: Walk) -> Fetched:
        query, asked = self.plan[walk.stream], self.time_bound(None, walk.bound)
        params = {"q": query.q, "sort": "latest", "limit": str(PAGE_SIZE), "since": _iso(asked)}
        if query.lang:
            params["lang"] = query.lang
        if walk.token:
            params["cursor"] = walk.token
        body, limits = self._get(SEARCH, params)
        if not isinstance(body.get("posts"), list):
            reason = _dict(body).get("message") or _dict(body).get("error")
            raise Fatal(f"Bluesky sent an unexpected response: {reason if isinstance(reason, str) else 'no posts'}")
        mentions, errors = normalize_page(body)
        sorts = [t for m in mentions if (t := sort_time(m.raw))]
        latest = [t for m in mentions if (t := latest_time(m.raw))]
        token = _text(body.get("cursor"))
        if not body["posts"] or (latest and max(latest) < asked):
            token = None  # the server ignored `since`: nothing newer follows
        newest = _iso(max(sorts)) if sorts else None
        return Fetched(mentions, token=token, newest=newest, errors=errors, limits=limits)

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """getPosts: the posts still there, with their counts now; one left out of the answer is gone (deleted by
        its author, taken down, or its author's account deactivated or blocking: Bluesky answers them alike).
        Bluesky posts cannot be edited."""
        uris = [p.external_id for p in posts]
        body, limits = self._get(GET_POSTS, {"uris": uris})
        if not isinstance(body.get("posts"), list):
            raise Fatal("Bluesky sent an unexpected answer to getPosts: no posts")
        found, _ = normalize_page(body)
        found = [m for m in found if m.external_id in uris]
        listed = {m.external_id for m in found}
        return Looked(found, [u for u in uris if u not in listed], limits)

    def _get(self, method: str, params: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
        """One XRPC GET through the session, which is renewed once when the server refuses its token."""
        url = f"{self.settings.api_url.rstrip('/')}/{method}"
        auth = BearerAuth(self.context.credentials, _refused_token)
        response, limits = self.call("GET", url, read_limits=READ_LIMITS, auth=auth, params=params)
        if _refused_token(response):
            raise AuthError(f"{PLATFORM} refused the session token (HTTP {response.status_code}: "
                            f"{http.platform_message(response)})")  # fmt: skip
        http.raise_for_status(response, PLATFORM, limits)
        body = http.decode_json(response, PLATFORM)
        if not isinstance(body, dict):
            raise Fatal(f"Bluesky sent an unexpected answer to {method}: not an object")
        return body, limits

    def reached(self, walk: Walk, stored: Any) -> str:
        asked = parse_time(walk.bound) or self.context.now() - FIRST_SYNC
        return _iso(next_since(parse_time(stored), asked, parse_time(walk.newest), self.context.now()))

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"since": {key: iso}, "start": iso, "active": {"key", "cursor", "since", "newest"}}."""
        active, walk = _dict(doc.get("active")), None
        if isinstance(active.get("key"), str) and parse_time(active.get("since")):
            walk = Walk(active["key"], active["since"], _text(active.get("cursor")), active.get("newest"))
        start = parse_time(doc.get("start"))
        return Cursor(dict(_dict(doc.get("since"))), walk, start)


def next_since(stored: datetime | None, asked: datetime, newest: datetime | None, now: datetime) -> datetime:
    """The `since` a query's next pass asks with: never later than the newest sortAt seen (nor than now, should
    a clock run ahead) minus the overlap, and never earlier than what this pass or a previous one covered."""
    candidates = [asked, *([stored] if stored is not None else [])]
    if newest is not None:
        candidates.append(min(newest, now) - OVERLAP)
    return max(candidates)


def _refused_token(response: httpx.Response) -> bool:
    """401, or the 400 the PDS answers an expired or unknown token with (ExpiredToken / InvalidToken)."""
    return response.status_code == 401 or (response.status_code == 400 and _xrpc_error(response) in TOKEN_ERRORS)
