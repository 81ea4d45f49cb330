"""LinkedIn (Community Management API): mentions of an organization and comments on its posts.

A source names one organization (`--option organization=ID` or `urn:li:organization:ID`) that the
connected member administers. One endpoint gives both kinds of mention: the organization's social
action notifications (`GET /rest/organizationalEntityNotifications?q=criteria`) with the actions
`SHARE_MENTION` (a post that mentions the organization) and `COMMENT` (a comment on one of its
posts), in a time range (`timeRange=(start:MS,end:MS)`), paged with `start`/`count`. LinkedIn keeps
notifications for 60 days. A notification carries the text of the post or comment it points at
(`decoratedGeneratedActivity`); a mention whose text is missing is read with one batch get of posts
(`GET /rest/posts?ids=List(...)`) per page.

Incremental by time: each run asks for the range from the newest notification time the last run
saw (less an overlap, for notifications that become visible late) to the moment the run started;
the range is fixed for the whole run, so `start`/`count` paging is stable, and an interrupted run
continues the same range at the same offset. Every call carries `LinkedIn-Version` (YYYYMM, from
SLSYNC_LINKEDIN_VERSION) and `X-Restli-Protocol-Version: 2.0.0`; query values use Rest.li 2.0
encoding (URNs percent-encoded, the structure of `List(...)` and `(...)` left as is).

LinkedIn answers 429 when an application's or member's daily limit is reached; limits reset at
midnight UTC, so a 429 stops the source until then unless a Retry-After header says otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import OAuthApp, one_line
from slsync.config import PlatformSettings
from slsync.connectors.base import Connector, CursorDoc, Looked, oauth_app
from slsync.connectors.fields import has_word, normalize_each
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Walk, check_loop
from slsync.errors import AuthError, Fatal, RateLimited
from slsync.models import Mention, Page

if TYPE_CHECKING:
    from slsync.config import Settings
    from slsync.models import Source, Stored
    from slsync.tokens import Token

log = logging.getLogger("slsync.linkedin")

PLATFORM = "LinkedIn"
# Reading an organization's notifications needs rw_organization_admin (an ADMINISTRATOR of the page);
# reading its posts and the posts that mention it needs r_organization_social.
SCOPES = ("r_organization_social", "rw_organization_admin")
REQUIRED_SCOPE = "rw_organization_admin"
RESTLI_PROTOCOL = "2.0.0"
# The actions that are mentions: a post that mentions the organization, a comment on one of its posts.
ACTIONS = ("SHARE_MENTION", "COMMENT")
PAGE_SIZE = 50
BATCH_GET_LIMIT = 50
BACKFILL = timedelta(days=7)
# "Notifications are retained and available to pull for 60 days."
RETENTION = timedelta(days=60)
RETENTION_MARGIN = timedelta(minutes=5)
# A notification can become visible after a later one was already read: each run re-reads this much.
OVERLAP = timedelta(minutes=10)
MEDIA_TYPES = {"IMAGE": "image", "VIDEO": "video", "LIVE_VIDEO": "video", "ARTICLE": "link", "URN_REFERENCE": "link"}

_ORGANIZATION = re.compile(r"^(?:urn:li:(organization|organizationBrand):)?(\d{1,20})$")
_URN = re.compile(r"^urn:li:[A-Za-z]+:\S{1,300}$")
# urn:li:comment:(urn:li:activity:123,456), and the short form LinkedIn also sends: (activity:123,456)
_COMMENT = re.compile(r"^urn:li:comment:\((?:urn:li:)?([A-Za-z]+):(\d+),(\d+)\)$")
# "little text" of the Posts API: @[Name](urn:li:organization:1), {hashtag|\#|tag}, backslash escapes
_LITTLE_MENTION = re.compile(r"@\[((?:[^\]\\]|\\.)*)\]\(urn:li:[A-Za-z]+:[^)]*\)")
_LITTLE_HASHTAG = re.compile(r"\{hashtag\|\\?#\|((?:[^}\\]|\\.)*)\}")
_LITTLE_ESCAPE = re.compile(r"\\([\\|{}@\[\]()<>#*_~])")


# --- options and search terms ---------------------------------------------------------------------


def parse_organization(value: str) -> str:
    """An organization id or URN, as the URN the API takes (organizationBrand URNs are organizations too)."""
    match = _ORGANIZATION.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a LinkedIn organization id (digits) or urn:li:organization:ID")
    return f"urn:li:{match.group(1) or 'organization'}:{match.group(2)}"


def _filters(config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The words a mention must contain one of (keywords and #hashtags; none: keep all), and those that drop it."""
    wanted = [*(config.get("keywords") or []), *(f"#{t.lstrip('#')}" for t in config.get("hashtags") or [])]
    return tuple(wanted), tuple(config.get("exclude") or [])


def kept(mention: Mention, wanted: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    if wanted and not has_word(mention.content, wanted):
        return False
    return not has_word(mention.content, exclude)


# --- Rest.li 2.0 ----------------------------------------------------------------------------------


def restli(value: str) -> str:
    """A URN or word as a Rest.li 2.0 query value or path key: every reserved character percent-encoded."""
    return quote(value, safe="")


def notifications_query(organization: str, start_ms: int, end_ms: int, offset: int, count: int) -> str:
    """The query string of the criteria finder, built by hand: List(...) and (...) must stay unescaped."""
    return (
        f"q=criteria&actions=List({','.join(ACTIONS)})&organizationalEntity={restli(organization)}"
        f"&timeRange=(start:{start_ms},end:{end_ms})&start={offset}&count={count}"
    )


# --- normalizing ----------------------------------------------------------------------------------


def plain_text(value: Any) -> str | None:
    """Readable text from LinkedIn's "little text": mentions as their names, hashtags as #tag, no escapes."""
    text = _text(value)
    if text is None:
        return None
    text = _LITTLE_MENTION.sub(lambda m: m.group(1), text)
    text = _LITTLE_HASHTAG.sub(lambda m: "#" + m.group(1), text)
    return _text(_LITTLE_ESCAPE.sub(lambda m: m.group(1), text))


def _millis(value: Any) -> datetime | None:
    """An epoch-milliseconds time (LinkedIn's lastModifiedAt, createdAt), or None."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _urn(value: Any) -> str | None:
    return value if isinstance(value, str) and _URN.match(value) else None


def post_url(urn: str) -> str:
    return f"https://www.linkedin.com/feed/update/{urn}/"


def canonical_urn(urn: str) -> str:
    """A comment URN in its full form (LinkedIn also sends urn:li:comment:(activity:X,Y)): one comment, one id."""
    match = _COMMENT.match(urn)
    if not match:
        return urn
    kind, thread, comment = match.groups()
    return f"urn:li:comment:(urn:li:{kind}:{thread},{comment})"


def comment_url(comment_urn: str) -> str | None:
    """The comment opened under its post: /feed/update/urn:li:activity:X/?commentUrn=...; None if unparsable."""
    match = _COMMENT.match(comment_urn)
    if not match:
        return None
    kind, thread, _ = match.groups()
    full = canonical_urn(comment_urn)
    return f"https://www.linkedin.com/feed/update/urn:li:{kind}:{thread}/?commentUrn={restli(full)}"


def _activity(notification: Mapping[str, Any]) -> dict[str, Any]:
    """The decorated post or comment the notification points at."""
    decorated = _dict(notification.get("decoratedGeneratedActivity"))
    return _dict(decorated.get("comment") or decorated.get("share"))


def normalize_notification(notification: Mapping[str, Any], post: Mapping[str, Any] | None = None) -> Mention:
    """One SHARE_MENTION or COMMENT notification; `post` is the mentioning post when it was read separately."""
    action = notification.get("action")
    if action not in ACTIONS:
        raise ValueError(f"a notification of an action slsync does not store ({str(action)[:40]})")
    activity = _activity(notification)
    urn = _urn(activity.get("entity")) or _urn(notification.get("generatedActivity"))
    if urn is None:
        raise ValueError("a notification without the URN of its post or comment")
    urn = canonical_urn(urn)
    post = _dict(post)
    published = _millis(notification.get("lastModifiedAt")) or _millis(post.get("publishedAt"))
    if published is None:
        raise ValueError("a notification without a valid lastModifiedAt")
    message = _dict(activity.get("message"))
    content = plain_text(activity.get("text")) or plain_text(message.get("text")) or plain_text(post.get("commentary"))
    author = _urn(activity.get("owner")) or _urn(activity.get("actor")) or _urn(post.get("author"))
    if action == "COMMENT":
        url, media_type = comment_url(urn), "text"
    else:
        url = post_url(urn)
        category = activity.get("mediaCategory")
        media_type = MEDIA_TYPES.get(category, "text") if isinstance(category, str) else "text"
    raw = dict(notification)
    if post:
        raw["resolvedPost"] = dict(post)
    return Mention(
        platform="linkedin",
        external_id=urn,
        published_at=published,
        url=url,
        content=content,
        author_handle=author,
        media_type=media_type,
        media_urls=(),
        raw=raw,
    )


def needs_post(notification: Any) -> str | None:
    """The URN of a mentioning post whose text the notification does not carry (to read with a batch get)."""
    if not isinstance(notification, dict) or notification.get("action") != "SHARE_MENTION":
        return None
    activity = _activity(notification)
    if plain_text(activity.get("text")) or plain_text(_dict(activity.get("message")).get("text")):
        return None
    urn = _urn(activity.get("entity")) or _urn(notification.get("generatedActivity"))
    return urn if urn and urn.split(":")[2] in ("share", "ugcPost") else None


def normalize_page(body: Any, posts: Mapping[str, Any] | None = None) -> tuple[list[Mention], int]:
    """The notifications of one finder page as mentions, and how many could not be stored.

    Notifications of other actions (likes, reshares, edits) are passed over without counting as errors.
    """
    posts = posts or {}

    def normalize(notification: dict[str, Any]) -> Mention:
        resolved = posts.get(needs_post(notification) or "")
        return normalize_notification(notification, resolved if isinstance(resolved, dict) else None)

    wanted = [n for n in _list(_dict(body).get("elements")) if not isinstance(n, dict) or n.get("action") in ACTIONS]
    return normalize_each(wanted, normalize, "a notification LinkedIn sent", log)


def newest_time(body: Any) -> datetime | None:
    """The newest lastModifiedAt among all the page's notifications, stored or not."""
    times = [_millis(_dict(n).get("lastModifiedAt")) for n in _list(_dict(body).get("elements"))]
    return max((t for t in times if t is not None), default=None)


# --- time -----------------------------------------------------------------------------------------


def next_utc_midnight(moment: datetime) -> datetime:
    """When LinkedIn's daily application and member limits reset."""
    return datetime.combine(moment.astimezone(UTC).date() + timedelta(days=1), time(0), tzinfo=UTC)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class AccessDenied(AuthError):
    """HTTP 403: the member is not an administrator of the organization, or the app lacks the product."""


class LinkedInSettings(PlatformSettings):
    """LinkedIn Community Management API: an app's OAuth client, and the API version (LinkedIn-Version: YYYYMM)."""

    client_id: str | None = Field(None, validation_alias="LINKEDIN_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, validation_alias="LINKEDIN_CLIENT_SECRET")
    oauth_callback: str | None = Field(None, validation_alias="LINKEDIN_OAUTH_CALLBACK")
    api_url: str = Field("https://api.linkedin.com/rest", validation_alias="SLSYNC_LINKEDIN_API_URL")
    authorize_url: str = Field(
        "https://www.linkedin.com/oauth/v2/authorization", validation_alias="SLSYNC_LINKEDIN_AUTHORIZE_URL"
    )
    token_url: str = Field(
        "https://www.linkedin.com/oauth/v2/accessToken", validation_alias="SLSYNC_LINKEDIN_TOKEN_URL"
    )
    version: str = Field("202609", pattern=r"^\d{6}$", validation_alias="SLSYNC_LINKEDIN_VERSION")


# --- the connector --------------------------------------------------------------------------------


class LinkedInConnector(Connector):
    platform = "linkedin"
    settings_model = LinkedInSettings
    reconnect = "reconnect as an administrator of the organization: slsync connect {source_id}"
    requires = {"organization": "a LinkedIn source names its organization: --option organization=ID"}
    refuses = {
        "mentions": "LinkedIn sources listen to one organization (--option organization=ID); --mention has no meaning",
        "languages": "LinkedIn notifications carry no language, so --language cannot be applied",
    }
    title = PLATFORM
    connection_type = "user"
    needs_search_terms = False
    max_lookback = RETENTION
    options = {"organization": parse_organization}
    page_size = PAGE_SIZE

    @classmethod
    def reach(cls, config: Mapping[str, Any]) -> timedelta:
        return RETENTION - RETENTION_MARGIN

    # the posts that mention the organization, by a batch get of posts; comments cannot be read in batches
    lookup_size = BATCH_GET_LIMIT

    @classmethod
    def oauth_app(cls, settings: Settings) -> OAuthApp:
        # LinkedIn turns PKCE on per app only on request; the web flow binds the code with the secret
        return oauth_app(cls.settings_of(settings), SCOPES, client_auth="form", pkce=False)

    @classmethod
    def after_connect(cls, token: Token, source: Source, settings: Settings, http: httpx.Client) -> Token:
        """Refuse a grant without rw_organization_admin: every sync would fail with 403."""
        granted = set(re.split(r"[\s,]+", token.scope or "")) - {""}
        if granted and REQUIRED_SCOPE not in granted:
            raise AuthError(
                f"LinkedIn granted {', '.join(sorted(granted))} but not {REQUIRED_SCOPE}: add the Community "
                "Management API product to the app and connect as an administrator of the organization"
            )
        return token

    def pages(self, cursor: CursorDoc, *, since: datetime | None, resume: CursorDoc) -> Iterator[Page]:
        now = self.context.now()
        organization = str(self.source.config["options"]["organization"])
        wanted, exclude = _filters(self.source.config)
        committed = _millis(_dict(resume or cursor).get("after"))
        window = _dict(_dict(resume).get("window"))
        start, end = _millis(window.get("start")), _millis(window.get("end"))
        offset = window.get("offset")
        if start and end and start < end and isinstance(offset, int) and offset >= 0 and since is None:
            newest = _millis(window.get("newest"))  # continue the interrupted range where it stopped
        else:
            start = since or committed or now - BACKFILL
            end, offset, newest = now, 0, None
        start = max(start, now - self.reach(self.source.config))  # LinkedIn keeps 60 days; older is refused
        if start >= end:
            start = end - OVERLAP

        walk = Walk(f"{organization} {_ms(start)}..{_ms(end)}", None, offset, tokens=[offset])
        while True:
            body = self._notifications(organization, start, end, offset)
            elements = _list(body.get("elements"))
            posts = self._posts([urn for n in elements if (urn := needs_post(n))])
            mentions, errors = normalize_page(body, posts)
            check_loop(PLATFORM, walk, None, mentions[0].external_id if mentions else None)
            mentions = [m for m in mentions if kept(m, wanted, exclude)]
            page_newest = newest_time(body)
            if page_newest and (newest is None or page_newest > newest):
                newest = page_newest
            offset += len(elements)
            total = _dict(body.get("paging")).get("total")
            more = bool(elements) and (offset < total if isinstance(total, int) else len(elements) >= PAGE_SIZE)
            if more:
                state: dict[str, Any] = {
                    "after": _ms(committed) if committed else None,
                    "window": {"start": _ms(start), "end": _ms(end), "offset": offset,
                               "newest": _ms(newest) if newest else None},
                }  # fmt: skip
            else:
                reached = [t for t in (committed, newest - OVERLAP if newest else None) if t is not None]
                state = {"after": _ms(max(reached) if reached else start)}
            yield Page(mentions=tuple(mentions), cursor=state, errors=errors)
            if not more:
                return

    # --- reading posts again ----------------------------------------------------------------------

    @classmethod
    def lookup_kind(cls, post: Stored) -> str | None:
        """Posts (share and ugcPost URNs). A comment is read only one at a time, under its post
        (GET /rest/socialActions/{post}/comments/{id}): comments are not read again."""
        return "posts" if post.external_id.split(":")[2:3] in (["share"], ["ugcPost"]) else None

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """A batch get of posts (`GET /rest/posts?ids=List(...)`): their text now (an edited post has its new
        commentary). A post LinkedIn answers 404 or 410 for is gone; one it will not show this member (403)
        tells nothing sure. LinkedIn gives no counts here (the Social Metadata API's reactions and comment
        counts need the r_organization_social_feed scope). The notification stays the stored payload."""
        stored = {p.external_id: p for p in posts}
        body = _dict(self._get("/posts", "ids=List(" + ",".join(restli(u) for u in stored) + ")"))
        results = {unquote(k): v for k, v in _dict(body.get("results")).items() if isinstance(v, dict)}
        errors = {unquote(k): _dict(v).get("status") for k, v in _dict(body.get("errors")).items()}
        found = [
            Mention(platform="linkedin", external_id=urn, published_at=stored[urn].published_at,
                    content=plain_text(post.get("commentary")))
            for urn, post in results.items() if urn in stored
        ]  # fmt: skip
        gone = [urn for urn, status in errors.items() if urn in stored and status in (404, 410)]
        unknown = [urn for urn, status in errors.items() if urn in stored and status == 403]
        return Looked(found, gone, unknown=unknown)

    # --- calls ------------------------------------------------------------------------------------

    def _notifications(self, organization: str, start: datetime, end: datetime, offset: int) -> dict[str, Any]:
        query = notifications_query(organization, _ms(start), _ms(end), offset, PAGE_SIZE)
        body = self._get("/organizationalEntityNotifications", query)
        if not isinstance(body, dict) or not isinstance(body.get("elements"), list):
            raise Fatal("LinkedIn sent an unexpected answer to organizationalEntityNotifications: no list of elements")
        return body

    def _posts(self, urns: list[str]) -> dict[str, Any]:
        """The posts that mention the organization without their text in the notification, by URN (batch get).

        A post LinkedIn will not show (deleted, not visible to the member) stays unresolved: its mention is
        stored without text.
        """
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(urns))
        for first in range(0, len(unique), BATCH_GET_LIMIT):
            chunk = unique[first : first + BATCH_GET_LIMIT]
            query = "ids=List(" + ",".join(restli(u) for u in chunk) + ")"
            try:
                body = self._get("/posts", query)
            except AccessDenied as exc:
                log.warning("LinkedIn will not show %d posts that mention the organization: %s", len(chunk), exc,
                            extra={"event": "posts_unresolved"})  # fmt: skip
                continue
            except AuthError:
                raise
            except Fatal as exc:
                log.warning("could not read %d posts that mention the organization: %s", len(chunk), exc,
                            extra={"event": "posts_unresolved"})  # fmt: skip
                continue
            results = _dict(_dict(body).get("results"))
            found.update({k: v for k, v in results.items() if isinstance(v, dict)})
        return found

    def probe(self) -> str:
        """The organization the source listens to, read with the connected member's token."""
        organization = str(self.source.config["options"]["organization"])
        body = _dict(self._get(f"/organizations/{quote(organization, safe='')}", ""))
        name = _text(body.get("localizedName"))
        return f"the token reads organization {organization}" + (f" ({one_line(name, 80)})" if name else "")

    def _get(self, path: str, query: str) -> Any:
        settings = self.settings
        url = settings.api_url.rstrip("/") + path + ("?" + query if query else "")
        headers = {"LinkedIn-Version": settings.version, "X-Restli-Protocol-Version": RESTLI_PROTOCOL,
                   "Accept": "application/json"}  # fmt: skip
        # no read_limits: a 429 means a daily limit, never one to wait out inside a run
        response, _ = self.call("GET", url, headers=headers)
        self._raise_for_error(response, settings.version)
        return http.decode_json(response, PLATFORM)

    def _raise_for_error(self, response: httpx.Response, version: str) -> None:
        status = response.status_code
        if status < 400:
            return
        reason = http.platform_message(response)
        if status == 429:
            wait = http.retry_after(response)
            now = self.context.now()
            reset_at = now + timedelta(seconds=wait) if wait is not None else next_utc_midnight(now)
            raise RateLimited(
                f"LinkedIn daily limit reached until {reset_at:%Y-%m-%d %H:%M:%S} UTC (HTTP 429: {reason})", reset_at
            )
        if status == 403:
            raise AccessDenied(
                f"LinkedIn refused access to the organization (HTTP 403: {reason}); the connected member must be "
                "an administrator of it and the app must have the Community Management API"
            )
        if status == 426:
            raise Fatal(
                f"LinkedIn no longer serves API version {version} (HTTP 426: {reason}); "
                "set SLSYNC_LINKEDIN_VERSION to a current YYYYMM version"
            )
        http.raise_for_status(response, PLATFORM)
