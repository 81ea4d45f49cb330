"""X (Twitter): recent search, newest first, paged with next_token down to the committed since_id.

One source may need several queries (X caps a query at 512 characters); each keeps its own
since_id in the cursor, so a query that found nothing new never drags another one's bound along.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import OAuthApp
from slsync.config import PlatformSettings
from slsync.connectors.base import Looked, oauth_app, window_left
from slsync.connectors.fields import by_key as _by_key
from slsync.connectors.fields import count as _int
from slsync.connectors.fields import items as _list
from slsync.connectors.fields import mapping as _dict
from slsync.connectors.fields import normalize_each, total
from slsync.connectors.fields import text as _text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk
from slsync.errors import Fatal, UsageError
from slsync.models import Mention, Stored

if TYPE_CHECKING:
    from slsync.config import Settings

log = logging.getLogger("slsync.twitter")

SCOPES = ("tweet.read", "users.read", "offline.access")
MAX_QUERY_LENGTH = 512
MAX_QUERIES = 10
PAGE_SIZE = 100
# X's snowflake ids carry their creation time: milliseconds since this epoch, shifted by 22 bits.
SNOWFLAKE_EPOCH_MS = 1288834974657
# Recent search reaches 7 days back; keep a margin so a request built now is still valid when it lands.
LOOKBACK = timedelta(days=7)
# X's `lang` codes that name no language: undetermined, no linguistic content, and X's own for posts of media
# only (qme), hashtags only (qht), mentions only (qam), cashtags only (qct) and very short text (qst)
NOT_A_LANGUAGE = frozenset({None, "und", "zxx", "qme", "qht", "qam", "qct", "qst"})
LOOKBACK_MARGIN = timedelta(minutes=1)
READ_LIMITS = http.header_limits("x-rate-limit-")
SEARCH_PARAMS = {
    "max_results": str(PAGE_SIZE),
    "tweet.fields": "author_id,created_at,public_metrics,entities,geo,lang,attachments,referenced_tweets,note_tweet",
    "user.fields": "username,name,public_metrics,verified",
    "media.fields": "type,url,preview_image_url",
    "place.fields": "full_name",
    "expansions": "author_id,attachments.media_keys,geo.place_id",
}
MEDIA_TYPES = {"photo": "image", "video": "video", "animated_gif": "video"}
# GET /2/tweets: up to 100 ids a call, counted in a window of its own (not search's)
LOOKUP_SIZE = 100
LOOKUP_PARAMS = {k: v for k, v in SEARCH_PARAMS.items() if k != "max_results"}
# What a lookup's `errors` say of an id asked for: gone (deleted, or its author suspended or protected); any
# other problem type tells nothing sure about the post
GONE_PROBLEMS = ("resource-not-found", "not-authorized-for-resource", "resource-unavailable")

_WORD = re.compile(r"^\w+$")
_HANDLE = re.compile(r"^[A-Za-z0-9_]{1,15}$")
_OPERATOR_WORDS = {"OR", "AND"}
_INTERNAL_LINK = re.compile(r"^https?://(www\.|mobile\.)?(twitter|x)\.com/", re.IGNORECASE)


# --- the query ------------------------------------------------------------------------------------


def _phrase(term: str) -> str:
    """A keyword as X reads it: one word bare, anything else as an exact phrase in quotes."""
    if '"' in term:
        raise UsageError(f"X cannot search for a term with a double quote in it: {term!r}")
    if _WORD.match(term) and term not in _OPERATOR_WORDS:
        return term
    return f'"{term}"'


def build_queries(config: Mapping[str, Any]) -> list[str]:
    """The X queries for a source's search parameters, each within 512 characters.

    Positive terms are OR-ed; exclusions, the language group and -is:retweet apply to every query.
    When the terms do not fit in one query they are split over several whose results are merged.
    """
    terms = [_phrase(k) for k in config.get("keywords") or []]
    for tag in config.get("hashtags") or []:
        if not _WORD.match(tag):
            raise UsageError(f"not a hashtag X can search for: #{tag}")
        terms.append(f"#{tag}")
    for handle in config.get("mentions") or []:
        if not _HANDLE.match(handle):
            raise UsageError(f"not an X username (1-15 letters, digits or _): @{handle}")
        terms.append(f"@{handle}")
    if not terms:
        raise UsageError("an X source needs at least one --keyword, --hashtag or --mention")
    suffix = [f"-{_phrase(word)}" for word in config.get("exclude") or []]
    languages = [f"lang:{code}" for code in config.get("languages") or []]
    if len(languages) == 1:
        suffix.append(languages[0])
    elif languages:
        suffix.append("(" + " OR ".join(languages) + ")")
    suffix.append("-is:retweet")
    tail = " ".join(suffix)

    def query(group: list[str]) -> str:
        head = group[0] if len(group) == 1 else "(" + " OR ".join(group) + ")"
        return f"{head} {tail}"

    queries: list[str] = []
    group: list[str] = []
    for term in terms:
        if len(query([term])) > MAX_QUERY_LENGTH:
            raise UsageError(f"{term} with the exclusions and languages is longer than X's 512-character query limit")
        if group and len(query([*group, term])) > MAX_QUERY_LENGTH:
            queries.append(query(group))
            group = []
        group.append(term)
    queries.append(query(group))
    if len(queries) > MAX_QUERIES:
        raise UsageError(f"these search terms need {len(queries)} X queries per sync; split them over several sources")
    return queries


# --- normalizing ----------------------------------------------------------------------------------


def snowflake_time(tweet_id: str) -> datetime:
    return datetime.fromtimestamp(((int(tweet_id) >> 22) + SNOWFLAKE_EPOCH_MS) / 1000, UTC)


def _published(tweet: Mapping[str, Any], tweet_id: str) -> datetime:
    created = tweet.get("created_at")
    if isinstance(created, str):
        try:
            parsed = datetime.fromisoformat(created.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    # Without created_at (default fields), the id itself says when the post was made.
    return snowflake_time(tweet_id)


def normalize_tweet(
    tweet: Mapping[str, Any],
    users: Mapping[str, dict[str, Any]],
    media: Mapping[str, dict[str, Any]],
    places: Mapping[str, dict[str, Any]],
) -> Mention:
    """One post, with its author, media and place joined from `includes`; raises on a post without an id."""
    tweet_id = str(tweet.get("id") or "")
    if not tweet_id.isdigit():
        raise ValueError("a post without a numeric id")
    # each edit of a post gets a new id; the first of its edit history names the post for good, so that the
    # version a later search finds is the mention already stored, and a lookup by it answers the latest text
    history = [str(i) for i in _list(tweet.get("edit_history_tweet_ids")) if str(i).isdigit()]
    author = users.get(str(tweet.get("author_id"))) if tweet.get("author_id") is not None else None
    author_metrics = _dict((author or {}).get("public_metrics"))
    metrics = _dict(tweet.get("public_metrics"))
    retweets, quotes = _int(metrics.get("retweet_count")), _int(metrics.get("quote_count"))
    shares = total(retweets, quotes)

    attached = [
        media[key]
        for key in _list(_dict(tweet.get("attachments")).get("media_keys"))
        if isinstance(key, str) and key in media
    ]
    links = [
        u["expanded_url"]
        for u in _list(_dict(tweet.get("entities")).get("urls"))
        if isinstance(u, dict)
        and isinstance(u.get("expanded_url"), str)
        and not u.get("media_key")
        and not _INTERNAL_LINK.match(u["expanded_url"])  # a quoted post or attached media, not a link out
    ]
    if attached:
        kinds = {MEDIA_TYPES.get(str(m.get("type")), "image") for m in attached}
        media_type = "video" if "video" in kinds else "image"
        media_urls = tuple(url for m in attached if (url := _text(m.get("url")) or _text(m.get("preview_image_url"))))
    elif links:
        media_type, media_urls = "link", tuple(links)
    else:
        media_type, media_urls = "text", ()

    place = places.get(str(_dict(tweet.get("geo")).get("place_id")))
    handle = _text((author or {}).get("username"))
    language = _text(tweet.get("lang"))
    note = _text(_dict(tweet.get("note_tweet")).get("text"))
    raw = dict(tweet)
    raw["includes"] = {"author": author, "media": attached, "place": place}
    return Mention(
        platform="twitter",
        external_id=history[0] if history else tweet_id,
        published_at=_published(tweet, tweet_id),
        url=f"https://x.com/{handle}/status/{tweet_id}" if handle else f"https://x.com/i/web/status/{tweet_id}",
        content=note or _text(tweet.get("text")),
        author_name=_text((author or {}).get("name")),
        author_handle=handle,
        author_followers=_int(author_metrics.get("followers_count")),
        author_verified=author.get("verified") if author and isinstance(author.get("verified"), bool) else None,
        likes_count=_int(metrics.get("like_count")),
        comments_count=_int(metrics.get("reply_count")),
        shares_count=shares,
        media_type=media_type,
        media_urls=media_urls,
        location=_text((place or {}).get("full_name")),
        language=None if language in NOT_A_LANGUAGE else language,
        raw=raw,
    )


def normalize_page(body: Any) -> tuple[list[Mention], int]:
    """The page's posts as mentions, and how many records or partial errors it carried."""
    body = _dict(body)
    includes = _dict(body.get("includes"))
    users = _by_key(includes.get("users"), "id")
    media = _by_key(includes.get("media"), "media_key")
    places = _by_key(includes.get("places"), "id")
    mentions, errors = normalize_each(
        _list(body.get("data")), lambda tweet: normalize_tweet(tweet, users, media, places), "a post X sent", log
    )
    partial = _list(body.get("errors"))
    for error in partial:
        detail = _dict(error).get("detail") or _dict(error).get("title") or "unknown"
        log.info("X reported a partial error: %s", detail, extra={"event": "partial_error"})
    return mentions, errors + len(partial)


class TwitterSettings(PlatformSettings):
    """X: an app's OAuth 2.0 client (user tokens through `slsync connect`) or an app-only bearer token."""

    client_id: str | None = Field(None, validation_alias="TWITTER_CLIENT_ID")
    client_secret: SecretStr | None = Field(None, validation_alias="TWITTER_CLIENT_SECRET")
    bearer_token: SecretStr | None = Field(None, validation_alias="TWITTER_BEARER_TOKEN")
    oauth_callback: str | None = Field(None, validation_alias="TWITTER_OAUTH_CALLBACK")
    api_url: str = Field("https://api.x.com/2", validation_alias="SLSYNC_TWITTER_API_URL")
    authorize_url: str = Field("https://x.com/i/oauth2/authorize", validation_alias="SLSYNC_TWITTER_AUTHORIZE_URL")
    token_url: str = Field("https://api.x.com/2/oauth2/token", validation_alias="SLSYNC_TWITTER_TOKEN_URL")


# --- the connector --------------------------------------------------------------------------------


class TwitterConnector(PagedConnector):
    platform = "twitter"
    title = "X"
    order = int
    connection_type = "app"
    max_lookback = LOOKBACK

    settings_model = TwitterSettings
    lookup_size = LOOKUP_SIZE
    builds = staticmethod(build_queries)
    reconnect = "reconnect: slsync connect {source_id} (or set TWITTER_BEARER_TOKEN for app-only access)"

    @classmethod
    def oauth_app(cls, settings: Settings) -> OAuthApp:
        return oauth_app(cls.settings_of(settings), SCOPES)

    @classmethod
    def app_token(cls, settings: Settings) -> SecretStr | None:
        return cls.settings_of(settings).bearer_token

    @classmethod
    def reach(cls, config: Mapping[str, Any]) -> timedelta:
        return LOOKBACK - LOOKBACK_MARGIN

    credential_fields = ("bearer_token",)

    def streams(self) -> list[str]:
        return build_queries(self.source.config)

    def probe(self) -> str:
        """A 10-result recent search of the source's first query (X's smallest page): the token, and the query
        as X takes it, with the window's calls left."""
        url = self.settings.api_url.rstrip("/") + "/tweets/search/recent"
        params = {"query": build_queries(self.source.config)[0], "max_results": "10"}
        response, limits = self.call("GET", url, read_limits=READ_LIMITS, params=params)
        http.raise_for_status(response, "X", limits)
        return window_left("X search", limits)

    def begin(self, stream: str, stored: Any, since: datetime | None) -> dict[str, str]:
        earliest = self.context.now() - self.reach(self.source.config)
        since_id = stored if since is None and isinstance(stored, str) and stored.isdigit() else None
        if since_id and snowflake_time(since_id) < earliest:
            since_id = None  # X refuses a since_id older than its search window
        return {"since_id": since_id} if since_id else {"start_time": _iso(max(since or earliest, earliest))}

    def fetch(self, walk: Walk) -> Fetched:
        params = {"query": walk.stream, **SEARCH_PARAMS, **_dict(walk.bound)}
        if walk.token:
            params["next_token"] = walk.token
        url = self.settings.api_url.rstrip("/") + "/tweets/search/recent"
        response, limits = self.call("GET", url, read_limits=READ_LIMITS, params=params)
        http.raise_for_status(response, "X", limits)
        body = http.decode_json(response, "X")
        if not isinstance(body, dict) or not ("data" in body or "meta" in body):
            problems = _list(_dict(body).get("errors"))
            reason = _dict(problems[0]).get("detail") or _dict(problems[0]).get("title") if problems else None
            raise Fatal(f"X sent an unexpected response: {reason or 'no data and no meta'}")
        if not isinstance(body.get("data", []), list) or not isinstance(body.get("meta", {}), dict):
            raise Fatal("X sent an unexpected response: data is not a list of posts")
        mentions, errors = normalize_page(body)
        # the cursor's bound is the newest id served (an edit's own id, not the post's first)
        newest = max((str(_dict(m.raw).get("id")) for m in mentions), key=int, default=None)
        token = _text(_dict(body.get("meta")).get("next_token"))
        return Fetched(mentions, token=token, newest=newest, errors=errors, limits=limits)

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """GET /2/tweets?ids=: the posts as they are now. A post edited since is answered in its latest version
        (its edit_history_tweet_ids starts with the id stored); a missing one is named in `errors`."""
        asked = {p.external_id for p in posts}
        url = self.settings.api_url.rstrip("/") + "/tweets"
        params = {"ids": ",".join(p.external_id for p in posts), **LOOKUP_PARAMS}
        response, limits = self.call("GET", url, read_limits=READ_LIMITS, params=params, window="lookup")
        http.raise_for_status(response, "X", limits)
        body = http.decode_json(response, "X")
        if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
            raise Fatal("X sent an unexpected answer to a post lookup: data is not a list of posts")
        includes = _dict(body.get("includes"))
        users, media = _by_key(includes.get("users"), "id"), _by_key(includes.get("media"), "media_key")
        places = _by_key(includes.get("places"), "id")
        found, _ = normalize_each(
            _list(body.get("data")), lambda tweet: normalize_tweet(tweet, users, media, places), "a post X sent", log
        )
        found = [m for mention in found if (m := _as_asked(mention, asked)) is not None]
        gone, unknown = [], []
        for error in map(_dict, _list(body.get("errors"))):
            post_id = _text(error.get("resource_id")) or _text(error.get("value"))
            if post_id not in asked or error.get("parameter") not in (None, "ids", "id"):
                continue  # a referenced post or user of a post that was found
            problem = str(error.get("type") or "")
            (gone if problem.endswith(GONE_PROBLEMS) else unknown).append(post_id)
        return Looked(found, gone, limits, unknown=unknown)

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"since_ids": {query: id}, "active": {"query", "next_token", "newest_id", "since_id" or
        "start_time"}}."""
        active, walk = _dict(doc.get("active")), None
        if isinstance(active.get("query"), str):
            bound = (
                {"since_id": active["since_id"]} if active.get("since_id") else {"start_time": active.get("start_time")}
            )
            walk = Walk(active["query"], bound, active.get("next_token"), active.get("newest_id"))
        return Cursor(dict(_dict(doc.get("since_ids"))), walk)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_asked(mention: Mention, asked: set[str]) -> Mention | None:
    """A looked-up post under the id it was stored with: an edited post comes back with its latest id, the
    stored one first in its edit history."""
    if mention.external_id in asked:
        return mention
    history = _list(_dict(mention.raw).get("edit_history_tweet_ids"))
    original = next((str(i) for i in history if str(i) in asked), None)
    return dataclasses.replace(mention, external_id=original) if original else None
