"""Mastodon: hashtag timelines (public) and full-text status search (with a token), on one instance per source.

Each hashtag is read from the instance's public hashtag timeline, newest first, paged down with
`max_id` to the `since_id` the last run committed. Each keyword is a full-text search
(`/api/v2/search?type=statuses`), which Mastodon answers only to a signed-in account; search pages
are reached with `offset` down to the newest status the last run stored. Every hashtag and keyword
keeps its own bound in the cursor, like X's queries, and the unique key absorbs a status that two of
them both find. The external id is the status `uri`, the same on every instance, so a post seen
through two instances is one mention.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import one_line
from slsync.config import PlatformSettings
from slsync.connectors.base import Looked, flag
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

log = logging.getLogger("slsync.mastodon")

PLATFORM = "Mastodon"
PAGE_SIZE = 40  # the most Mastodon serves per page, for timelines and search alike
MAX_STREAMS = 10  # hashtags + keywords per source: each is at least one call per sync
# GET /api/v1/statuses?id[]= (Mastodon 4.3 and later): up to 20 statuses a call, by the instance's own ids
LOOKUP_SIZE = 20
RATE_LIMIT_PREFIX = "x-ratelimit-"
# The first sync's reach when the engine gives none (it normally passes 7 days).
BACKFILL = timedelta(days=7)
# Search filters on when a post was written, but Mastodon numbers statuses when they arrive: a post
# that reaches the instance late would fall below a bound set at the newest arrival. The bound is set
# this much earlier; paging still stops at the newest status stored, so the margin costs no calls.
SEARCH_OVERLAP = timedelta(days=1)
# Elasticsearch's default result window: offsets past it are refused by the instance.
MAX_SEARCH_OFFSET = 10_000
# Mastodon ids are snowflakes: milliseconds since the Unix epoch, shifted left by 16 bits.
SNOWFLAKE_SHIFT = 16
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MEDIA_TYPES = {"image": "image", "video": "video", "gifv": "video"}

_WORD = re.compile(r"^\w+$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,"]+))""", re.IGNORECASE)
_BLANK_LINES = re.compile(r"\n{3,}")
_TAG_RE = re.compile(r"<[^>]*>")


# --- options and the search parameters ------------------------------------------------------------


def parse_instance(value: str) -> str:
    """`--option instance=URL`: the instance's origin, https (http only on this machine, for tests)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not a URL such as https://mastodon.social") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not a URL such as https://mastodon.social")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ValueError(f"{value!r}: give only the instance's address, such as https://mastodon.social")
    host = parts.hostname.lower()
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(f"{value!r} must use https (http only for 127.0.0.1 or localhost)")
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    else:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} has an invalid host name") from None
        if not _HOST.match(host):
            raise ValueError(f"{value!r} has an invalid host name")
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def _term(word: str, *, negate: bool = False) -> str:
    """A search term as Mastodon's query syntax reads it: one word bare, anything else as a phrase."""
    if '"' in word:
        raise UsageError(f"Mastodon search cannot look for a term with a double quote in it: {word!r}")
    body = word if _WORD.match(word) else f'"{word}"'
    return f"-{body}" if negate else body


def search_query(keyword: str, config: Mapping[str, Any]) -> str:
    """The `q` of one keyword's search: the term, each exclusion as -term, and one language: filter.

    Mastodon ANDs the terms of a query and its `language:` filters, so each keyword is its own query,
    and several languages cannot be asked for at once: with more than one, languages are filtered
    here, after the answer.
    """
    parts = [_term(keyword)]
    parts += [_term(word, negate=True) for word in config.get("exclude") or []]
    languages = config.get("languages") or []
    if len(languages) == 1:
        parts.append(f"language:{languages[0]}")
    return " ".join(parts)


def build_streams(config: Mapping[str, Any]) -> list[str]:
    """The calls a source needs, each named as its cursor key: `tag:NAME` or `search:QUERY`."""
    if config.get("mentions"):
        raise UsageError(
            "Mastodon cannot search for posts that mention an account; use --hashtag, "
            "or --keyword (full-text search, with an access token)"
        )
    for word in config.get("exclude") or []:
        _term(word, negate=True)
    streams = []
    for tag in config.get("hashtags") or []:
        if not _WORD.match(tag) or not any(ch.isalpha() for ch in tag):
            raise UsageError(f"not a Mastodon hashtag (letters, digits and _, at least one letter): #{tag}")
        streams.append(f"tag:{tag.lower()}")
    streams += [f"search:{search_query(keyword, config)}" for keyword in config.get("keywords") or []]
    streams = list(dict.fromkeys(streams))  # hashtags differing only in case are one timeline
    if not streams:
        raise UsageError("a Mastodon source needs at least one --hashtag or --keyword")
    if len(streams) > MAX_STREAMS:
        raise UsageError(
            f"{len(streams)} hashtags and keywords need {len(streams)} Mastodon calls per sync; "
            f"at most {MAX_STREAMS} per source, split them over several sources"
        )
    return streams


def _exclusions(config: Mapping[str, Any]) -> list[re.Pattern[str]]:
    return [re.compile(rf"(?<!\w){re.escape(w)}(?!\w)", re.IGNORECASE) for w in config.get("exclude") or []]


def wanted(mention: Mention, exclusions: list[re.Pattern[str]], languages: set[str]) -> bool:
    """The filters Mastodon cannot apply itself: exclusions on hashtag timelines, several languages."""
    if languages and (mention.language or "").split("-")[0].lower() not in languages:
        return False
    text = mention.content or ""
    return not any(pattern.search(text) for pattern in exclusions)


# --- rate limits, links, ids ----------------------------------------------------------------------


def parse_reset(value: str | None) -> datetime | None:
    """X-RateLimit-Reset: an ISO 8601 timestamp on Mastodon ("2020-09-08T13:25:00.019685Z"); epoch
    seconds are accepted too, for proxies that rewrite it."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not 0 < seconds < 253402300800:  # before year 10000
            return None
        return datetime.fromtimestamp(seconds, UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """X-RateLimit-Limit / -Remaining / -Reset; http.rate_limit reads the reset as epoch seconds only."""

    def number(name: str) -> int | None:
        try:
            return int(float(headers[RATE_LIMIT_PREFIX + name]))
        except (KeyError, ValueError, OverflowError):
            return None

    limit, remaining = number("limit"), number("remaining")
    reset_at = parse_reset(headers.get(RATE_LIMIT_PREFIX + "reset"))
    if limit is None and remaining is None and reset_at is None:
        return None
    return RateLimit(limit=limit, remaining=remaining, reset_at=reset_at)


def parse_links(header: str | None) -> dict[str, str]:
    """An RFC 8288 Link header as {rel: url}; Mastodon pages timelines with rel="next" / "prev"."""
    links: dict[str, str] = {}
    for match in _LINK.finditer(header or ""):
        rel = _REL.search(match.group(2))
        if rel:
            for name in (rel.group(1) or rel.group(2) or "").lower().split():
                links.setdefault(name, match.group(1).strip())
    return links


def next_max_id(header: str | None) -> str | None:
    """The max_id of the rel="next" link. Only it is taken: Mastodon's next link drops since_id."""
    url = parse_links(header).get("next")
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("max_id") or []
    return values[0] if values and values[0].isdigit() else None


def snowflake_at(moment: datetime) -> str:
    """The smallest Mastodon id of a status numbered at `moment`."""
    return str(max(int(moment.timestamp() * 1000), 0) << SNOWFLAKE_SHIFT)


def snowflake_time(status_id: str) -> datetime:
    return datetime.fromtimestamp((int(status_id) >> SNOWFLAKE_SHIFT) / 1000, UTC)


# --- normalizing ----------------------------------------------------------------------------------


class _Text(HTMLParser):
    """Readable text of a status: tags dropped, <br> and </p> as line breaks, entities unescaped, and a link
    whose text is its own address cut short (other servers than Mastodon write `bsky.app/profile/h4lc...`)
    written out as its href."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._link: tuple[str, int] | None = None  # the open link's href, and where its text starts in parts

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "a":
            found = dict(attrs)
            href, kinds = found.get("href") or "", f"{found.get('class') or ''} {found.get('rel') or ''}"
            if href.startswith(("https://", "http://")) and not _MENTION_OR_TAG.search(kinds):
                self._link = (href, len(self.parts))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self.parts.append("\n\n")
        elif tag == "a" and self._link is not None:
            href, start = self._link
            self._link = None
            if _address_cut_short("".join(self.parts[start:]), href):
                self.parts[start:] = [href]

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


_MENTION_OR_TAG = re.compile(r"\b(mention|hashtag|tag)\b")


def _address_cut_short(shown: str, href: str) -> bool:
    """Whether a link's text is its address, whole or cut short (an ellipsis, no scheme, no www.)."""

    def bare(address: str) -> str:
        return re.sub(r"^(https?://)?(www\.)?", "", address.strip()).rstrip("…").removesuffix("...")

    shown_bare = bare(shown)
    return bool(shown_bare) and " " not in shown_bare and bare(href).startswith(shown_bare)


def html_text(value: Any) -> str | None:
    """Mastodon's HTML as plain text; links keep their full address (Mastodon hides part of it)."""
    if not isinstance(value, str) or not value:
        return None
    parser = _Text()
    try:
        parser.feed(value)
        parser.close()
        text = "".join(parser.parts)
    except (ValueError, AssertionError, IndexError):  # markup html.parser gives up on
        text = _TAG_RE.sub("", value)
    lines = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return _BLANK_LINES.sub("\n\n", lines).strip() or None


def _id(value: Any) -> int | None:
    """A status id as a number (Mastodon sends ids as strings of digits)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19 and int(value) < 2**63:
        return int(value)
    return None


def _published(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("a status without created_at")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _handle(account: Mapping[str, Any], instance_host: str | None) -> str | None:
    """acct carries @domain for remote accounts only; a local one gets the instance's host."""
    acct = _text(account.get("acct"))
    if acct is None or "@" in acct:
        return acct
    host = instance_host
    if host is None and isinstance(account.get("url"), str):
        try:
            host = urlsplit(account["url"]).netloc or None
        except ValueError:
            host = None
    return f"{acct}@{host}" if host else acct


def normalize_status(status: Mapping[str, Any], instance_host: str | None = None) -> Mention:
    """One status; a boost is stored as the post it boosts. Raises ValueError when it has no uri or time."""
    post = status.get("reblog") if isinstance(status.get("reblog"), dict) else status
    uri = _text(post.get("uri"))
    if uri is None:
        raise ValueError("a status without a uri")
    published = _published(post.get("created_at"))
    account = _dict(post.get("account"))

    body, warning = html_text(post.get("content")), _text(post.get("spoiler_text"))
    content = f"{warning}\n\n{body}" if warning and body else warning or body

    attached = [a for a in _list(post.get("media_attachments")) if isinstance(a, dict) and a.get("type") in MEDIA_TYPES]
    card_url = _text(_dict(post.get("card")).get("url"))
    if attached:
        kinds = {MEDIA_TYPES[a["type"]] for a in attached}
        media_type = "video" if "video" in kinds else "image"
        media_urls = tuple(
            url
            for a in attached
            if (url := _text(a.get("url")) or _text(a.get("remote_url")) or _text(a.get("preview_url")))
        )
    elif card_url:
        media_type, media_urls = "link", (card_url,)
    else:
        media_type, media_urls = "text", ()

    return Mention(
        platform="mastodon",
        external_id=uri,
        published_at=published,
        url=_text(post.get("url")),
        content=content,
        author_name=_text(account.get("display_name")),
        author_handle=_handle(account, instance_host),
        author_followers=_int(account.get("followers_count")),
        author_verified=None,  # Mastodon has no verified accounts (verified profile links are not that)
        likes_count=_int(post.get("favourites_count")),
        comments_count=_int(post.get("replies_count")),
        shares_count=_int(post.get("reblogs_count")),
        media_type=media_type,
        media_urls=media_urls,
        location=None,
        language=_text(post.get("language")),
        raw=dict(status),  # the HTML content as sent, and for a boost the boost around the post
    )


def local_id(raw: Any) -> str | None:
    """The instance's own id of a stored status (of the post a boost boosts), from its payload."""
    status = _dict(raw)
    post = status.get("reblog") if isinstance(status.get("reblog"), dict) else status
    value = _dict(post).get("id")
    return value if _id(value) is not None else None


def normalize_page(body: Any, instance_host: str | None = None) -> tuple[list[Mention], int]:
    """A hashtag timeline (a list of statuses) or a search answer (`statuses` beside accounts and
    hashtags) as mentions, and how many statuses could not be normalized."""
    statuses = body.get("statuses") if isinstance(body, dict) else body
    normalized, errors = normalize_each(
        _list(statuses), lambda status: normalize_status(status, instance_host), "a status Mastodon sent", log
    )
    unique: dict[str, Mention] = {}  # a post and a boost of it on one page are one mention
    for mention in normalized:
        unique.setdefault(mention.external_id, mention)
    return list(unique.values()), errors


class MastodonSettings(PlatformSettings):
    """Mastodon: each source names its instance; an optional access token, sent to its own instance only."""

    access_token: SecretStr | None = Field(None, validation_alias="MASTODON_ACCESS_TOKEN")
    # the instance that issued the token: it is sent to that instance's sources and to no other server
    token_instance: str | None = Field(None, validation_alias="MASTODON_TOKEN_INSTANCE")
    # when set, replaces every source's instance (tests, proxies)
    api_url: str | None = Field(None, validation_alias="SLSYNC_MASTODON_API_URL")


# --- credentials ----------------------------------------------------------------------------------


class MastodonCredentials:
    """An optional access token. Without one, hashtag timelines are read anonymously, and the
    instance counts calls per IP address: the key names the instance (and the token, by digest)."""

    def __init__(self, instance_host: str, token: SecretStr | None) -> None:
        self._token = token
        self.key = f"mastodon:{instance_host}"
        if token is not None:
            self.key += f":token:{hashlib.sha256(token.get_secret_value().encode()).hexdigest()[:16]}"

    def access_token(self) -> str:
        return self._token.get_secret_value() if self._token is not None else ""

    def refresh(self) -> str:
        if self._token is None:
            raise AuthError("Mastodon answers this only to a signed-in account (no access token is set)")
        raise AuthError("Mastodon refused the access token")


def _instance_host(source: Source) -> str:
    instance = _dict(source.config.get("options")).get("instance")
    return urlsplit(instance).netloc if isinstance(instance, str) else "unknown"


# --- the connector --------------------------------------------------------------------------------


class MastodonConnector(PagedConnector):
    platform = "mastodon"
    settings_model = MastodonSettings
    reconnect = (
        "set MASTODON_ACCESS_TOKEN to an access token of the source's instance (scopes read:statuses "
        "read:search), then: slsync sync source {source_id}"
    )
    title = PLATFORM
    order = int
    connection_type = "app"
    options = {"instance": parse_instance, "anonymous": flag}
    page_size = PAGE_SIZE
    # a keyword search pages no deeper than the instance's search window (hashtag timelines have no cap)
    listing_cap = MAX_SEARCH_OFFSET

    @classmethod
    def run_cost(cls, config: Mapping[str, Any], expected_mentions: float) -> int:
        return len(build_streams(config)) * max(1, math.ceil(expected_mentions / PAGE_SIZE))

    lookup_size = LOOKUP_SIZE
    # a status is read again by the instance's own id, which only the payload stored with it holds
    lookup_reads_raw = True

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> MastodonCredentials:
        anonymous = bool(_dict(source.config.get("options")).get("anonymous"))
        host = _instance_host(source)
        account = cls.settings_of(settings)
        token = None if anonymous else account.access_token
        # A token belongs to the instance that issued it: never hand it to another instance's server.
        owner = urlsplit(account.token_instance or "").netloc.lower()
        if token is not None and owner != host.lower():
            token = None
        return MastodonCredentials(host, token)

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        if "instance" not in config["options"]:
            raise UsageError("a Mastodon source needs its instance: --option instance=https://mastodon.social")
        build_streams(config)
        if config["options"].get("anonymous") and config.get("keywords"):
            raise UsageError("Mastodon keyword search needs an access token; drop anonymous=true or the keywords")

    @classmethod
    def missing_settings(cls, source: Source, settings: Settings) -> list[str]:
        """Keyword search needs a token of the source's own instance."""
        if not source.config.get("keywords") or cls.app_credentials(source, settings).access_token():
            return []
        account = cls.settings_of(settings)
        return ["MASTODON_ACCESS_TOKEN"] if account.access_token is None else ["MASTODON_TOKEN_INSTANCE"]

    def probe(self) -> str | None:
        """verify_credentials: the token and its account; nothing to check for a source read anonymously."""
        if not self.context.credentials.access_token():
            return None
        response, limits = self._get("/api/v1/accounts/verify_credentials", {})
        self._raise_for_status(response, limits)
        account = _text(_dict(_json_or_none(response)).get("acct")) or "an account"
        return f"the token signs in as @{one_line(account, 80)}"

    def streams(self) -> list[str]:
        streams = build_streams(self.source.config)
        if not self.context.credentials.access_token() and any(s.startswith("search:") for s in streams):
            raise AuthError(
                "Mastodon keyword search needs an access token of this instance: MASTODON_ACCESS_TOKEN is not set,"
                " or MASTODON_TOKEN_INSTANCE names another instance"
            )
        return streams

    def begin(self, stream: str, stored: Any, since: datetime | None) -> dict[str, Any]:
        """Above the committed newest id, or from `since` (first sync, --since)."""
        stored = None if since is not None or _id(stored) is None else stored
        floor = since or self.context.now() - BACKFILL
        if stream.startswith("tag:"):
            return {"since_id": stored or snowflake_at(floor)}
        if stored:  # arrival order stops the paging at `stored`; the time bound only trims the search
            floor = snowflake_time(stored) - SEARCH_OVERLAP
        return {"min_id": snowflake_at(floor), "stop_id": stored}

    def fetch(self, walk: Walk) -> Fetched:
        bound = _dict(walk.bound)
        if walk.stream.startswith("tag:"):
            body, limits, ids, token = self._tag_page(walk.stream.removeprefix("tag:"), bound, walk.token)
        else:
            body, limits, ids, token = self._search_page(walk.stream.removeprefix("search:"), bound, walk.token)
        config = self.source.config
        mentions, errors = normalize_page(body, _instance_host(self.source))
        kept = [m for m in mentions if wanted(m, _exclusions(config), set(config.get("languages") or []))]
        newest = str(max(ids)) if ids else None
        first = str(ids[0]) if ids else None
        gap = self._cut_off(walk, ids) if walk.stream.startswith("search:") and token is None else None
        return Fetched(
            kept, token=token, newest=newest, errors=errors, limits=limits, first=first, gap=gap, listed=len(ids)
        )

    def _cut_off(self, walk: Walk, ids: list[int]) -> Gap | None:
        """A search paged to the instance's search window without reaching the newest status stored: what was
        numbered between that status and the oldest one listed is out of reach."""
        stop = _id(_dict(walk.bound).get("stop_id"))
        offset = walk.token if isinstance(walk.token, int) else 0
        if stop is None or not ids or min(ids) <= stop or offset + PAGE_SIZE < MAX_SEARCH_OFFSET:
            return None
        start, end = snowflake_time(str(stop)), snowflake_time(str(min(ids)))
        newest = _id(walk.newest) or max(ids)
        listed_for = (snowflake_time(str(max(newest, max(ids)))) - end).total_seconds() / 60
        seen = walk.seen + len(ids)
        return Gap(start, end, "cap", estimate(seen / listed_for if listed_for > 0 else None, end - start))

    @classmethod
    def lookup_kind(cls, post: Stored) -> str | None:
        """Statuses whose payload (and in it the instance's id) is still stored; None once retention dropped it."""
        return "statuses" if local_id(post.raw) else None

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """GET /api/v1/statuses?id[]=: the statuses the instance still shows, with their counts and text now (an
        edited one has its new text). One left out of the answer is gone: deleted, or no longer visible to
        this account or to anonymous readers (Mastodon answers both alike). An instance older than 4.3 has no
        such call: its statuses are not read again."""
        by_local = {local: p.external_id for p in posts if (local := local_id(p.raw))}
        params = [("id[]", local) for local in by_local]
        response, limits = self._get("/api/v1/statuses", params)
        if response.status_code == 404:
            log.warning(
                "the instance answered 404 to GET /api/v1/statuses (it is older than Mastodon 4.3): its statuses"
                " cannot be read again", extra={"source": self.source.id, "event": "no_lookup"},
            )  # fmt: skip
            return Looked(unknown=list(by_local.values()), limits=limits)
        self._raise_for_status(response, limits)
        body = http.decode_json(response, PLATFORM)
        if not isinstance(body, list):
            raise Fatal(f"Mastodon sent an unexpected answer to a status lookup: {_reason(body) or 'not a list'}")
        found, _ = normalize_page(body, _instance_host(self.source))
        asked = set(by_local.values())
        found = [m for m in found if m.external_id in asked]
        listed = {m.external_id for m in found}
        return Looked(found, sorted(asked - listed), limits)

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"newest": {stream: id}, "active": {"stream", "newest_id", and "since_id", "max_id" (a hashtag)
        or "min_id", "stop_id", "offset" (a search)}}."""
        active, walk = _dict(doc.get("active")), None
        stream = active.get("stream")
        if isinstance(stream, str) and stream.startswith("tag:") and active.get("since_id"):
            walk = Walk(stream, {"since_id": active["since_id"]}, active.get("max_id"), active.get("newest_id"))
        elif isinstance(stream, str) and active.get("min_id"):
            bound = {"min_id": active["min_id"], "stop_id": active.get("stop_id")}
            walk = Walk(stream, bound, active.get("offset") or None, active.get("newest_id"))
        return Cursor({k: v for k, v in _dict(doc.get("newest")).items() if _id(v) is not None}, walk)

    def _tag_page(
        self, tag: str, bound: Mapping[str, Any], max_id: Any
    ) -> tuple[list[Any], RateLimit | None, list[int], str | None]:
        """One page of the hashtag timeline: (statuses, limits, their ids, the next page's max_id)."""
        params = {"limit": str(PAGE_SIZE), "since_id": str(bound.get("since_id"))}
        if max_id:
            params["max_id"] = str(max_id)
        response, limits = self._get(f"/api/v1/timelines/tag/{quote(tag, safe='')}", params)
        if response.status_code == 404 and "error" in _dict(_json_or_none(response)):
            log.info("the instance does not know #%s yet", tag, extra={"event": "unknown_hashtag"})
            return [], limits, [], None  # older Mastodon answers 404 for a hashtag nobody used yet
        self._raise_for_status(response, limits)
        body = http.decode_json(response, PLATFORM)
        if not isinstance(body, list):
            raise Fatal(f"Mastodon sent an unexpected response: {_reason(body) or 'not a list of statuses'}")
        ids = [i for s in body if (i := _id(_dict(s).get("id"))) is not None]
        following = _id(next_max_id(response.headers.get("link"))) or (min(ids) if ids else None)
        more = len(body) >= PAGE_SIZE and following is not None and following > int(params["since_id"])
        return body, limits, ids, str(following) if more else None

    def _search_page(
        self, query: str, bound: Mapping[str, Any], offset: Any
    ) -> tuple[dict[str, Any], RateLimit | None, list[int], int | None]:
        """One page of full-text search, newest first; paged by offset until empty or at the stored newest."""
        offset = offset if isinstance(offset, int) else 0
        params = {
            "q": query, "type": "statuses", "resolve": "false", "limit": str(PAGE_SIZE),
            "min_id": str(bound.get("min_id")),
        }  # fmt: skip
        if offset:
            params["offset"] = str(offset)
        response, limits = self._get("/api/v2/search", params)
        self._raise_for_status(response, limits)
        body = http.decode_json(response, PLATFORM)
        if not isinstance(body, dict) or not isinstance(body.get("statuses", []), list):
            raise Fatal(f"Mastodon sent an unexpected response: {_reason(body) or 'no list of statuses'}")
        statuses = body.get("statuses", [])
        ids = [i for s in statuses if (i := _id(_dict(s).get("id"))) is not None]
        stop = _id(bound.get("stop_id"))
        reached = stop is not None and any(i <= stop for i in ids)
        offset += PAGE_SIZE
        more = bool(statuses) and not reached and offset < MAX_SEARCH_OFFSET
        return body, limits, ids, offset if more else None

    def _get(self, path: str, params: Any) -> tuple[httpx.Response, RateLimit | None]:
        instance = _dict(self.source.config.get("options")).get("instance")
        base = self.settings.api_url or instance or ""
        token = self.context.credentials.access_token()
        # a token that is refused is not renewed: the call answers as it stands (see _raise_for_status)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.call(
            "GET", base.rstrip("/") + path, read_limits=rate_limit, auth=httpx.Auth(), params=params, headers=headers
        )

    def _raise_for_status(self, response: httpx.Response, limits: RateLimit | None) -> None:
        status = response.status_code
        if self.context.credentials.access_token():
            if status == 403:  # a token without the read:search / read:statuses scope, or a disabled account
                raise AuthError(f"Mastodon refused the access token (HTTP 403: {http.platform_message(response)})")
        elif status in (401, 422):
            # 422 "This method requires an authenticated user": the instance disabled public timelines
            raise AuthError(
                f"Mastodon answers this only to a signed-in account (HTTP {status}: {http.platform_message(response)})"
            )
        http.raise_for_status(response, PLATFORM, limits)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return http.decode_json(response, PLATFORM)
    except Fatal:
        return None


def _reason(body: Any) -> str | None:
    error = _dict(body).get("error")
    return error[:200] if isinstance(error, str) else None
