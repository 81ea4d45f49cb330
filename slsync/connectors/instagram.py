"""Instagram (Graph API with Facebook Login): hashtag listening and the media that tag the brand's account.

A source names an Instagram professional account through the Facebook page it is linked to
(`--option page=PAGE_ID`; slsync looks up `instagram_business_account` and caches the id in the
cursor) or directly (`--option ig_user=IG_USER_ID`). Each run reads up to two kinds of stream, each
with its own bound in the cursor:

- `tags`: `/{ig-user-id}/tags`, the media other accounts tagged the brand's account in, newest first.
- `hashtag:NAME` per `--hashtag`: `ig_hashtag_search` once (the hashtag id is stable and cached in the
  cursor), then `/{hashtag-id}/recent_media`, which reaches back 24 hours only.

Meta allows 30 distinct hashtags per account per rolling 7 days. Every run counts each hashtag in
the database ledger (`sl_window_ledger`, shared by all sources and processes) before it makes any
call for it; a hashtag that does not fit is not queried, the run says so in one warning line, and
the other streams still sync.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from slsync import http
from slsync.connectors import meta
from slsync.connectors.base import flag, whole_number
from slsync.connectors.fields import count as _count
from slsync.connectors.fields import has_word, normalize_each, path_match
from slsync.connectors.fields import iso_time as parse_time
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk, legacy_streams
from slsync.errors import Fatal, Retriable, UsageError
from slsync.models import Mention, RateLimit

if TYPE_CHECKING:
    import httpx

    from slsync.auth import OAuthApp
    from slsync.config import Settings
    from slsync.connectors.base import Looked
    from slsync.models import Source, Stored
    from slsync.tokens import Token

log = logging.getLogger("slsync.instagram")

PLATFORM = "Instagram"
# instagram_basic reads the account, its tags and hashtags; instagram_manage_comments is required by the
# tags edge; pages_show_list and pages_read_engagement let the user token read the linked page.
SCOPES = ("instagram_basic", "instagram_manage_comments", "pages_show_list", "pages_read_engagement")
# Meta: "You can query a maximum of 30 unique hashtags within a 7 day period" per Instagram account.
HASHTAG_LIMIT = 30
HASHTAG_WINDOW = timedelta(days=7)
# recent_media "only returns media objects published within 24 hours of query execution"
RECENT_MEDIA_REACH = timedelta(hours=24)
# recent_media pages hold at most 50; the tags edge takes the same
PAGE_SIZE = 50
BACKFILL = timedelta(days=7)
MAX_OVERLAP_MINUTES = 24 * 60
DEFAULT_OVERLAP_MINUTES = 10
MEDIA_FIELDS = (
    "id,caption,media_type,permalink,timestamp,like_count,comments_count,media_url,children{media_type,media_url}"
)
# recent_media refuses `username` ("You cannot request the username field"); the tags edge gives it
TAG_FIELDS = MEDIA_FIELDS + ",username"
MEDIA_TYPES = {"IMAGE": "image", "VIDEO": "video", "REELS": "video", "CAROUSEL_ALBUM": "carousel"}

_GRAPH_ID = re.compile(r"^[0-9]{1,30}$")
_MEDIA_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HASHTAG = re.compile(r"^\w{1,100}$")
# Instagram's media id (the "pk") is in a permalink's shortcode, base64 with this alphabet; its high bits
# are milliseconds since Instagram's epoch (the same scheme as X's snowflakes).
_SHORTCODE_ALPHABET = {c: n for n, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
_SHORTCODE_PATH = re.compile(r"^/(?:[\w.]+/)?(?:p|reel|reels|tv)/([A-Za-z0-9_-]{5,16})/?$")
_INSTAGRAM_EPOCH_MS = 1_314_220_021_721
_SHARD_AND_SEQUENCE_BITS = 23


# --- options and config -------------------------------------------------------------------------


def _graph_id(what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip()
        if not _GRAPH_ID.match(value):
            raise ValueError(f"{value!r} is not a {what} (digits only)")
        return value

    return parse


def hashtags_of(config: Mapping[str, Any]) -> list[str]:
    """The source's hashtags as Instagram names them: without '#', lower case (Instagram's are case-blind)."""
    names: list[str] = []
    for tag in config.get("hashtags") or []:
        name = str(tag).strip().lstrip("#").casefold()
        if not _HASHTAG.match(name):
            raise UsageError(f"not a hashtag Instagram can search for: #{tag} (letters, digits and _ only)")
        if name not in names:
            names.append(name)
    return names


def check(config: Mapping[str, Any]) -> None:
    """What Instagram's Graph API can be asked, refused at `source add` with one line."""
    options = config.get("options") or {}
    if config.get("keywords"):
        raise UsageError(
            "Instagram's API has no keyword search: listen to hashtags with --hashtag, and to media that tag "
            "the account (on by default)"
        )
    if config.get("mentions"):
        raise UsageError(
            "Instagram's API lists only media that tag the connected account itself (tags, on by default); "
            "@mentions of other accounts cannot be searched"
        )
    if config.get("languages"):
        raise UsageError("Instagram records no language for a post: --language cannot be applied")
    if bool(options.get("page")) == bool(options.get("ig_user")):
        raise UsageError(
            "an Instagram source names its account: --option page=FACEBOOK_PAGE_ID (the page linked to the "
            "Instagram professional account) or --option ig_user=IG_USER_ID, not both"
        )
    hashtags = hashtags_of(config)
    if len(hashtags) > HASHTAG_LIMIT:
        raise UsageError(
            f"{len(hashtags)} hashtags: Instagram allows at most {HASHTAG_LIMIT} distinct hashtags per account "
            "in 7 days (and counts those of every source of the account)"
        )
    if not hashtags and not options.get("tags", True):
        raise UsageError("with tags=no an Instagram source needs at least one --hashtag")


# --- normalizing ----------------------------------------------------------------------------------


def shortcode_time(permalink: Any) -> datetime | None:
    """When the media was created, read from its permalink's shortcode (for media sent without `timestamp`).

    The time is that of the upload, which can be a few minutes before the post was published.
    """
    match = path_match(permalink, _SHORTCODE_PATH)
    if not match:
        return None
    number = 0
    for char in match.group(1):
        number = number * 64 + _SHORTCODE_ALPHABET[char]
    since_epoch_ms = number >> _SHARD_AND_SEQUENCE_BITS
    if since_epoch_ms < 86_400_000:
        return None  # an early sequential id with no time in it
    try:
        return datetime.fromtimestamp((_INSTAGRAM_EPOCH_MS + since_epoch_ms) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _http_url(value: Any) -> str | None:
    url = _text(value)
    return url if url and url.startswith(("https://", "http://")) else None


def _media_urls(item: Mapping[str, Any]) -> tuple[str, ...]:
    """A carousel's children's files when they were sent, else the media's own file (a carousel's cover)."""
    urls = [
        url
        for child in _list(_dict(item.get("children")).get("data"))
        if (url := _http_url(_dict(child).get("media_url")))
    ]
    if not urls and (own := _http_url(item.get("media_url"))):
        urls.append(own)
    return tuple(dict.fromkeys(urls))


def normalize_media(item: Any) -> Mention:
    """One IG Media object (recent_media, top_media or tags) as a mention."""
    if not isinstance(item, dict):
        raise ValueError("an item that is not an object")
    media_id = item.get("id")
    if not isinstance(media_id, str) or not _MEDIA_ID.match(media_id):
        raise ValueError("a media object without a usable id")
    published = parse_time(item.get("timestamp")) or shortcode_time(item.get("permalink"))
    if published is None:
        raise ValueError(f"media {media_id} has no timestamp and no permalink to read its time from")
    media_type = item.get("media_type")
    return Mention(
        platform="instagram",
        external_id=media_id,
        published_at=published,
        url=_http_url(item.get("permalink")),
        content=_text(item.get("caption")),
        author_handle=_text(item.get("username")),
        likes_count=_count(item.get("like_count")),
        comments_count=_count(item.get("comments_count")),
        media_type=MEDIA_TYPES.get(media_type) if isinstance(media_type, str) else None,
        media_urls=_media_urls(item),
        raw=dict(item),
    )


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """A Graph API list of media ({"data": [...]}) as mentions, and how many items could not be stored."""
    return normalize_each(_list(_dict(body).get("data")), normalize_media, "a media object Instagram sent", log)


# --- streams and the cursor -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """One listing a run reads; its bound lives in the cursor under `name`."""

    name: str
    hashtag: str | None = None  # None: the account's tags

    @property
    def fields(self) -> str:
        return MEDIA_FIELDS if self.hashtag else TAG_FIELDS


def build_streams(config: Mapping[str, Any]) -> list[Stream]:
    check(config)
    streams = [Stream("tags")] if (config.get("options") or {}).get("tags", True) else []
    streams += [Stream(f"hashtag:{name}", name) for name in hashtags_of(config)]
    return streams


@dataclass
class Account:
    """The Instagram account a source reads, and what the cursor remembers of it."""

    page: str | None
    ig_user_id: str
    hashtag_ids: dict[str, str] = field(default_factory=dict)

    @property
    def budget_key(self) -> str:
        return f"instagram:hashtags:{self.ig_user_id}"

    def as_json(self) -> dict[str, Any]:
        return {"page": self.page, "ig_user_id": self.ig_user_id, "hashtag_ids": dict(self.hashtag_ids)}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the connector --------------------------------------------------------------------------------


class InstagramConnector(PagedConnector):
    platform = "instagram"
    title = "Instagram"
    settings_model = meta.MetaSettings
    builds = staticmethod(build_streams)
    reconnect = "reconnect: slsync connect {source_id} (Meta's user tokens last about 60 days)"
    connection_type = "user"
    needs_search_terms = False
    # tags reach back as far as the account's history; recent_media 24 hours whatever is asked (README)
    max_lookback = None
    page_size = PAGE_SIZE
    options = {
        "page": _graph_id("Facebook page id"),
        "ig_user": _graph_id("Instagram user id"),
        "tags": flag,
        "overlap_minutes": whole_number("minutes", MAX_OVERLAP_MINUTES),
    }
    lookup_size = meta.MULTI_READ_SIZE
    # the usage Meta reported last in this run, for pages that make no call (a hashtag over the budget)
    _last_limits: RateLimit | None = None

    @classmethod
    def oauth_app(cls, settings: Settings) -> OAuthApp:
        return meta.oauth_app(cls.settings_of(settings), platform="instagram", scopes=SCOPES)

    @classmethod
    def reach(cls, config: Mapping[str, Any]) -> timedelta | None:
        """recent_media serves 24 hours: a source with hashtags loses what a day without a sync leaves behind."""
        return RECENT_MEDIA_REACH if config.get("hashtags") else None

    @classmethod
    def after_connect(cls, token: Token, source: Source, settings: Settings, http_client: httpx.Client) -> Token:
        """Keep the long-lived user token (about 60 days), once it has shown it can read the source's account.

        Hashtag search and recent_media answer only a *user* token (Meta's reference), so a page token,
        which would not expire, cannot serve a hashtag source; `reconnect_by` tells `status` the end.
        """
        app = cls.settings_of(settings)
        long_lived = meta.long_lived_user_token(token, app, http_client, platform="instagram")
        options = source.config.get("options") or {}
        _look_up_account(long_lived, options, app.url("instagram", "api"), http_client)
        return long_lived

    def probe(self) -> str:
        """The account (or the page linked to it) the source names, read with the user token."""
        options = self.source.config.get("options") or {}
        page, ig_user = options.get("page"), options.get("ig_user")
        path, fields = (ig_user, "id") if ig_user else (page, "instagram_business_account")
        meta.graph_get(self, self.settings.url("instagram", "api").rstrip("/") + f"/{path}", {"fields": fields})
        what = f"Instagram account {ig_user}" if ig_user else f"Facebook page {page}"
        return f"the user token reads {what}"

    def streams(self) -> dict[str, Stream]:
        self._paths: dict[str, str | None] = {}
        self._account_cache: Account | None = None
        return {stream.name: stream for stream in build_streams(self.source.config)}

    @property
    def _overlap(self) -> timedelta:
        options = self.source.config.get("options") or {}
        return timedelta(minutes=options.get("overlap_minutes", DEFAULT_OVERLAP_MINUTES))

    def begin(self, stream: str, stored: Any, since: datetime | None) -> str:
        now, known = self.context.now(), parse_time(stored)
        bound = since or (known - self._overlap if known else now - BACKFILL)
        if self.plan[stream].hashtag is not None:
            bound = max(bound, now - RECENT_MEDIA_REACH - self._overlap)
        return _iso(bound)

    def fetch(self, walk: Walk) -> Fetched:
        stream, now = self.plan[walk.stream], self.context.now()
        if walk.stream not in self._paths:
            self._paths[walk.stream] = self._path(stream)
        path = self._paths[walk.stream]
        if path is None:  # over the hashtag budget, or a hashtag Instagram will not search: skipped this run
            return Fetched((), errors=1, limits=self._last_limits, advance=False)
        bound = parse_time(walk.bound) or now - BACKFILL
        paging = {str(k): str(v) for k, v in _dict(walk.token).items() if isinstance(v, str)}
        params = {"fields": stream.fields, "limit": str(PAGE_SIZE)}
        if stream.hashtag is not None:
            params["user_id"] = self._account.ig_user_id
        body, limits = self._get(path, {**paging, **params})
        mentions, errors = normalize_page(body)
        following = _following(body, paging, has_next_links=stream.hashtag is not None)
        # newest first (recent_media "not always": the overlap covers that): a page that reaches past the bound
        # is the last one needed
        if mentions and min(m.published_at for m in mentions) < bound:
            following = None
        first = mentions[0].external_id if mentions else None
        exclude = tuple(self.source.config.get("exclude") or [])
        mentions = [m for m in mentions if m.published_at >= bound and not has_word(m.content, exclude)]
        newest = max((m.published_at for m in mentions if m.published_at <= now + self._overlap), default=None)
        return Fetched(
            mentions, token=following, newest=_iso(newest) if newest else None, errors=errors, limits=limits,
            first=first,
        )  # fmt: skip

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """A multiple-ID read of the media: their likes, comments and caption now. Meta documents reading a
        media object by id for the account's own media; for others' (tags, hashtags) it says nothing, and a
        refusal of every media asked for concludes nothing (see meta.read_again)."""
        api = self.settings.url("instagram", "api")
        return meta.read_again(self, api, [p.external_id for p in posts], MEDIA_FIELDS, normalize_media)

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"account": {...}, "streams": {name: {"after": iso}}, "active": {"stream", "next", "bound",
        "newest"}}."""
        cursor = legacy_streams(doc, token="next", bound="bound")
        cursor.extra = {"account": _dict(doc.get("account"))}
        return cursor

    def extra(self) -> dict[str, Any]:
        return {"account": self._account.as_json()} if self._account_cache else dict(self.cursor.extra)

    @property
    def _account(self) -> Account:
        if self._account_cache is None:
            self._account_cache = self._look_up(_dict(self.cursor.extra.get("account")))
        return self._account_cache

    def _path(self, stream: Stream) -> str | None:
        """Where the stream's media are listed; None when a hashtag cannot be asked for this run."""
        account = self._account
        if stream.hashtag is None:
            return f"/{account.ig_user_id}/tags"
        left = self.context.quota.use_unique(account.budget_key, stream.hashtag, HASHTAG_LIMIT, HASHTAG_WINDOW)
        if left is None:
            log.warning(
                "#%s not queried: Instagram account %s has used its %d hashtags of the last 7 days "
                "(counted across its sources); it fits again when the oldest one is 7 days old",
                stream.hashtag, account.ig_user_id, HASHTAG_LIMIT,
                extra={"source": self.source.id, "event": "hashtag_budget"},
            )  # fmt: skip
            return None
        hashtag_id = account.hashtag_ids.get(stream.hashtag) or self._hashtag_id(account, stream.hashtag)
        return f"/{hashtag_id}/recent_media" if hashtag_id else None

    # --- calls ------------------------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str]) -> tuple[dict[str, Any], RateLimit | None]:
        url = self.settings.url("instagram", "api").rstrip("/") + path
        answer = meta.graph_get(self, url, params)
        if answer.limits is not None:
            self._last_limits = answer.limits
        return answer.body, answer.limits

    def _look_up(self, cached: Mapping[str, Any]) -> Account:
        """The account from the cursor when it names the same page or user; else looked up (one call)."""
        options = self.source.config.get("options") or {}
        page, ig_user = options.get("page"), options.get("ig_user")
        hashtag_ids = {
            name: tag_id
            for name, tag_id in _dict(cached.get("hashtag_ids")).items()
            if isinstance(tag_id, str) and _GRAPH_ID.match(tag_id)
        }
        if ig_user:
            same = cached.get("ig_user_id") == ig_user and cached.get("page") is None
            return Account(None, ig_user, hashtag_ids if same else {})
        cached_id = cached.get("ig_user_id")
        if cached.get("page") == page and isinstance(cached_id, str) and _GRAPH_ID.match(cached_id):
            return Account(page, cached_id, hashtag_ids)
        body, _ = self._get(f"/{page}", {"fields": "instagram_business_account"})
        return Account(page, _linked_account(body, page))

    def _hashtag_id(self, account: Account, hashtag: str) -> str | None:
        """ig_hashtag_search once per hashtag and account; the id is stable, so the cursor keeps it."""
        try:
            body, _ = self._get("/ig_hashtag_search", {"user_id": account.ig_user_id, "q": hashtag})
        except meta.GraphRefused as exc:
            # Meta refuses hashtags it deems sensitive or offensive with an error: skip that one, not the source.
            # A missing permission or feature (Instagram Public Content Access) fails the run: no hashtag can work.
            if exc.code is not None and (exc.code in (3, 10) or 200 <= exc.code <= 299):
                raise
            log.warning(
                "#%s skipped this run: %s", hashtag, exc, extra={"source": self.source.id, "event": "hashtag_refused"}
            )
            return None
        found = next(
            (tag_id for item in _list(body.get("data")) if _GRAPH_ID.match(tag_id := str(_dict(item).get("id")))), None
        )
        if found is None:
            log.warning(
                "#%s skipped this run: Instagram knows no such hashtag",
                hashtag, extra={"source": self.source.id, "event": "hashtag_unknown"},
            )  # fmt: skip
            return None
        account.hashtag_ids[hashtag] = found
        return found


def _following(body: Mapping[str, Any], paging: Mapping[str, str], *, has_next_links: bool) -> dict[str, str] | None:
    """The paging parameters of the next page, or None after the last one.

    recent_media sends `paging.next` while there is more (its `after` is the same on every page, so the
    whole link's cursor parameters are kept); the tags edge sends cursors and no `next`, so there a new
    `after` on a non-empty page means more.
    """
    if not _list(body.get("data")):
        return None
    if has_next_links:
        following = meta.next_params(body)
        return {k: v for k, v in following.items() if k not in ("fields", "limit", "user_id")} if following else None
    after = _text(_dict(_dict(body.get("paging")).get("cursors")).get("after"))
    if after and after != paging.get("after"):
        return {"after": after}
    return None


def _linked_account(body: Mapping[str, Any], page: str) -> str:
    linked = _text(_dict(body.get("instagram_business_account")).get("id"))
    if linked is None or not _GRAPH_ID.match(linked):
        raise Fatal(
            f"Facebook page {page} has no Instagram professional account linked to it "
            "(link one in the page's settings, or name the account with --option ig_user=IG_USER_ID)"
        )
    return linked


def _look_up_account(token: Token, options: Mapping[str, Any], api_url: str, client: httpx.Client) -> str:
    """At connect: the Instagram account the source names, read with the new token (UsageError if it cannot)."""
    page, ig_user = options.get("page"), options.get("ig_user")
    path, params = (
        (f"/{ig_user}", {"fields": "id"}) if ig_user else (f"/{page}", {"fields": "instagram_business_account"})
    )
    response = http.send(
        client, "GET", api_url.rstrip("/") + path, platform=PLATFORM, read_limits=meta.usage_limits,
        params=params, headers={"Authorization": f"Bearer {token.access_token}"},
    )  # fmt: skip
    if response.status_code >= 400:
        error = meta.read_error(response, secrets=(token.access_token,))
        if response.status_code >= 500 or error.transient:
            raise Retriable(f"{PLATFORM} could not be asked about the account now ({error.describe()}); try again")
        what = f"Instagram account {ig_user}" if ig_user else f"Facebook page {page}"
        raise UsageError(f"the new token cannot read {what} ({error.describe()}); nothing was stored")
    body = _dict(http.decode_json(response, PLATFORM))
    if ig_user:
        return ig_user
    assert page is not None
    try:
        return _linked_account(body, page)
    except Fatal as exc:
        raise UsageError(f"{exc}; nothing was stored") from None
