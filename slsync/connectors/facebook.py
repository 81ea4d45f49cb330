"""Facebook (Graph API): what others say on and about a page the brand manages.

A source names its page (`--option page=<page id>`) and is connected with Facebook Login: the
user token of the code exchange is swapped for a long-lived one and then for the page's own access
token, which is the one stored. Three "streams", each with its own time bound in the cursor:

- feed: posts on the page's feed that the page did not write itself (visitor posts), newest first,
  from `since` = the newest created_time seen;
- tagged: public posts in which the page is tagged (`/{page-id}/tagged`);
- comments: comments (and replies) on the page's most recent posts whose updated_time (which moves
  when someone comments) is newer than the bound, newest first; the page's own replies are left out.

Keywords and hashtags, when given, narrow what is kept to posts and comments that contain one of
them; --exclude drops what contains a word. Throttling follows Meta's usage headers (meta.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from slsync.connectors import meta
from slsync.connectors.base import whole_number
from slsync.connectors.fields import count, has_word, iso_time, items, mapping, normalize_each, required_time, text
from slsync.connectors.paging import Cursor, Fetched, PagedConnector, Walk, legacy_streams
from slsync.errors import UsageError
from slsync.models import Mention

if TYPE_CHECKING:
    import httpx

    from slsync.auth import OAuthApp
    from slsync.config import Settings
    from slsync.connectors.base import Looked
    from slsync.models import Source, Stored
    from slsync.tokens import Token

log = logging.getLogger("slsync.facebook")

PLATFORM = "facebook"
TITLE = "Facebook"
# pages_show_list and pages_read_engagement read the page and its posts; pages_read_user_content what
# visitors post, comment and tag it in.
SCOPES = ("pages_show_list", "pages_read_engagement", "pages_read_user_content")
BACKFILL = timedelta(days=7)
PAGE_SIZE = 100
DEFAULT_COMMENT_POSTS = 25
MAX_COMMENT_POSTS = 100
STREAMS = ("feed", "tagged", "comments")
POST_FIELDS = (
    "id,created_time,updated_time,message,story,permalink_url,from{id,name},place{name},shares,full_picture,"
    "attachments{media_type,type,url,unshimmed_url,media,subattachments},"
    "comments.summary(true).limit(0),reactions.summary(total_count).limit(0)"
)
COMMENT_FIELDS = "id,created_time,message,permalink_url,from{id,name},like_count,comment_count,attachment,parent{id}"
RECENT_POST_FIELDS = "id,created_time,updated_time"

_GRAPH_ID = re.compile(r"^[0-9]{1,40}(_[0-9]{1,40}){0,2}$")
_PAGE_ID = re.compile(r"^[0-9]{1,40}$")
_POST_PATH = re.compile(r"/posts/([0-9]{1,40})")
_DIGITS = re.compile(r"^[0-9]{1,40}$")


# --- options --------------------------------------------------------------------------------------


def _page_id(value: str) -> str:
    value = value.strip()
    if not _PAGE_ID.match(value):
        raise ValueError(f"{value!r} is not a Facebook page id (digits, as in the page's About > Page transparency)")
    return value


def _terms(config: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words one of which must appear, words none of which may appear), casefolded."""
    wanted = [k.casefold() for k in config.get("keywords") or []]
    wanted += [f"#{h.lstrip('#')}".casefold() for h in config.get("hashtags") or []]
    return tuple(wanted), tuple(w.casefold() for w in config.get("exclude") or [])


def _kept(mention: Mention, wanted: tuple[str, ...], excluded: tuple[str, ...]) -> bool:
    body = (mention.content or "").casefold()
    if wanted and not any(w in body for w in wanted):
        return False
    return not has_word(body, excluded)


# --- normalizing ----------------------------------------------------------------------------------


def _graph_id(value: Any) -> str:
    if not isinstance(value, str) or not _GRAPH_ID.match(value):
        raise ValueError("a record without a usable Graph id")
    return value


def _summary_count(value: Any) -> int | None:
    """A `{"summary": {"total_count": N}}` edge summary (comments, reactions)."""
    return count(mapping(mapping(value).get("summary")).get("total_count"))


def _post_url(post_id: str) -> str | None:
    """The post's page, from a PAGEID_POSTID id, when Meta sent no permalink_url."""
    owner, _, post = post_id.partition("_")
    return f"https://www.facebook.com/{owner}/posts/{post}" if post and "_" not in post else None


def _media(item: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """image / video / link with their URLs from the first attachment (album photos included), else text."""
    attachments = items(mapping(item.get("attachments")).get("data"))
    first = mapping(attachments[0]) if attachments else {}
    kind = str(text(first.get("media_type")) or text(first.get("type")) or "")
    parts = [first, *(mapping(s) for s in items(mapping(first.get("subattachments")).get("data")))]
    images = [src for p in parts if (src := text(mapping(mapping(p.get("media")).get("image")).get("src")))]
    if kind.startswith("video"):
        source = text(mapping(first.get("media")).get("source"))
        urls = [source] if source else images[:1]
        return "video", tuple(urls)
    if kind.startswith(("photo", "album")) and images:
        return "image", tuple(dict.fromkeys(images))
    if kind in ("link", "share") or kind.startswith("share"):
        link = text(first.get("unshimmed_url")) or text(first.get("url"))
        return "link", (link,) if link else ()
    picture = text(item.get("full_picture"))
    if images:
        return "image", tuple(dict.fromkeys(images))
    return ("image", (picture,)) if picture else ("text", ())


def normalize_post(item: Mapping[str, Any]) -> Mention:
    """A post of a page feed, a tagged post, a profile's or group's post: id PAGEID_POSTID."""
    post_id = _graph_id(item.get("id"))
    author = mapping(item.get("from"))
    media_type, media_urls = _media(item)
    return Mention(
        platform=PLATFORM,
        external_id=post_id,
        published_at=required_time(item, "created_time"),
        url=text(item.get("permalink_url")) or _post_url(post_id),
        content=text(item.get("message")) or text(item.get("story")),
        author_name=text(author.get("name")),
        author_handle=text(author.get("id")),
        likes_count=_summary_count(item.get("reactions")),
        comments_count=_summary_count(item.get("comments")),
        shares_count=count(mapping(item.get("shares")).get("count")),
        media_type=media_type,
        media_urls=media_urls,
        location=text(mapping(item.get("place")).get("name")),
        raw=dict(item),
    )


def _comment_id(item: Mapping[str, Any], post_id: str | None) -> str:
    """The comment's Graph id (POSTID_COMMENTID); when Meta left `id` out, from its permalink_url
    (…/posts/POSTID/?comment_id=C[&reply_comment_id=R]) or the post it was read from."""
    value = item.get("id")
    if isinstance(value, str) and _GRAPH_ID.match(value):
        return value
    link = text(item.get("permalink_url"))
    if link is None:
        raise ValueError("a comment without an id or a permalink")
    try:
        parts = urlsplit(link)
    except ValueError:
        raise ValueError("a comment with an unreadable permalink") from None
    query = parse_qs(parts.query)
    own = (query.get("reply_comment_id") or query.get("comment_id") or [""])[0]
    found = _POST_PATH.search(parts.path)
    post = found.group(1) if found else (post_id.rpartition("_")[2] if post_id else "")
    if not (_DIGITS.match(own) and _DIGITS.match(post)):
        raise ValueError("a comment without a usable id")
    return f"{post}_{own}"


def normalize_comment(item: Mapping[str, Any], *, post_id: str | None = None) -> Mention:
    """A comment or reply on a post; like and reply counts are the comment's own."""
    author = mapping(item.get("from"))
    attachment = mapping(item.get("attachment"))
    image = text(mapping(mapping(attachment.get("media")).get("image")).get("src"))
    return Mention(
        platform=PLATFORM,
        external_id=_comment_id(item, post_id),
        published_at=required_time(item, "created_time"),
        url=text(item.get("permalink_url")),
        content=text(item.get("message")),
        author_name=text(author.get("name")),
        author_handle=text(author.get("id")),
        likes_count=count(item.get("like_count")),
        comments_count=count(item.get("comment_count")),
        media_type="image" if image else "text",
        media_urls=(image,) if image else (),
        raw=dict(item),
    )


def _is_comment(item: Mapping[str, Any]) -> bool:
    if any(k in item for k in ("comment_count", "like_count", "parent")):
        return True
    link = item.get("permalink_url")
    return isinstance(link, str) and "comment_id=" in link


def normalize_page(body: Any, *, post_id: str | None = None) -> tuple[list[Mention], int]:
    """The posts or comments of one Graph list answer (`data`), and how many could not be normalized."""
    return normalize_each(
        items(mapping(body).get("data")),
        lambda item: normalize_comment(item, post_id=post_id) if _is_comment(item) else normalize_post(item),
        "an item Facebook sent",
        log,
    )


# --- the connector --------------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FacebookConnector(PagedConnector):
    platform = PLATFORM
    title = TITLE
    settings_model = meta.MetaSettings
    reconnect = "reconnect: slsync connect {source_id} (with an account that manages the page)"
    requires = {"page": "a Facebook source names the page it listens to: --option page=<page id>"}
    refuses = {
        "mentions": "Facebook cannot search for @mentions: the source listens to its page's feed, tags and comments",
        "languages": "Facebook posts carry no language to filter on; drop --language",
    }
    connection_type = "user"
    needs_search_terms = False
    options = {"page": _page_id, "comment_posts": whole_number("posts", MAX_COMMENT_POSTS)}
    lookup_size = meta.MULTI_READ_SIZE
    # posts and comments are read with different fields, and only the stored payload tells them apart
    lookup_reads_raw = True

    @classmethod
    def oauth_app(cls, settings: Settings) -> OAuthApp:
        return meta.oauth_app(cls.settings_of(settings), platform=PLATFORM, scopes=SCOPES)

    @classmethod
    def after_connect(cls, token: Token, source: Source, settings: Settings, http: httpx.Client) -> Token:
        """Short-lived user token -> long-lived user token -> the access token of the source's page."""
        page = mapping(source.config.get("options")).get("page")
        if not isinstance(page, str) or not _PAGE_ID.match(page):
            raise UsageError(f"source {source.id} names no Facebook page (--option page=<page id>)")
        app = cls.settings_of(settings)
        user = meta.long_lived_user_token(token, app, http, platform=PLATFORM)
        return meta.page_token(user, page, app.url(PLATFORM, "api"), http, platform=PLATFORM)

    def probe(self) -> str:
        """The page's own node, read with the page token the source holds."""
        answer = meta.graph_get(self, self._url(self._page), {"fields": "id,name"})
        return f"the page token reads page {answer.body.get('id') or self._page}"

    # --- paging -----------------------------------------------------------------------------------

    def streams(self) -> list[str]:
        return [s for s in STREAMS if s != "comments" or self._comment_posts() > 0]

    def fetch(self, walk: Walk) -> Fetched:
        bound = self.time_bound(None, walk.bound)
        if walk.stream == "comments":
            return self._comments(walk, bound)
        return self._listing(walk, bound)

    def reached(self, walk: Walk, stored: Any) -> str:
        """A finished stream's bound: the newest time it reached, never behind where it stood."""
        return self.newest(stored, walk.bound, walk.newest)

    @classmethod
    def lookup_kind(cls, post: Stored) -> str | None:
        """Posts and comments, told apart by their stored payload (None once retention dropped it)."""
        if not post.raw:
            return None
        return "comments" if _is_comment(post.raw) else "posts"

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """A multiple-ID read of posts (with their reactions, comments and shares) or comments (likes, replies)."""
        fields, normalize = (POST_FIELDS, normalize_post) if kind == "posts" else (COMMENT_FIELDS, normalize_comment)
        api = self.settings.url(PLATFORM, "api")
        return meta.read_again(self, api, [p.external_id for p in posts], fields, normalize)

    def legacy(self, doc: Mapping[str, Any]) -> Cursor:
        """0.1.0: {"streams": {name: {"after": iso}}, "active": {"stream", "bound", "newest", and "params" (feed,
        tagged) or "posts", "params", "started" (comments)}}."""
        cursor = legacy_streams(doc, token="params", bound="bound")
        active = mapping(doc.get("active"))
        if cursor.active is not None and cursor.active.stream == "comments":
            cursor.active.token = {k: active.get(k) for k in ("posts", "params", "started")}
        return cursor

    @property
    def _page(self) -> str:
        return str(mapping(self.source.config.get("options")).get("page"))

    def _comment_posts(self) -> int:
        value = mapping(self.source.config.get("options")).get("comment_posts", DEFAULT_COMMENT_POSTS)
        return value if isinstance(value, int) else DEFAULT_COMMENT_POSTS

    def _url(self, *path: str) -> str:
        return "/".join([self.settings.url(PLATFORM, "api").rstrip("/"), *path])

    def _listing(self, walk: Walk, bound: datetime) -> Fetched:
        """feed or tagged: newest first down to the bound; the page's own posts are not mentions."""
        following = {str(k): str(v) for k, v in mapping(walk.token).items()}
        params = {"fields": POST_FIELDS, "limit": str(PAGE_SIZE), "since": str(int(bound.timestamp())), **following}
        answer = meta.graph_get(self, self._url(self._page, walk.stream), params)
        mentions, errors = normalize_page(answer.body)
        upcoming = meta.next_params(answer.body)
        if mentions and all(m.published_at < bound for m in mentions):
            # `since` already bounds the list; a page wholly older than the bound means Meta did not
            # apply it (feeds are not strictly ordered by created_time, so one old post is no sign)
            upcoming = None
        kept = self._keep(m for m in mentions if m.published_at >= bound)
        return Fetched(
            kept, token=upcoming or None, newest=_newest(mentions), errors=errors, limits=answer.limits,
            first=mentions[0].external_id if mentions else None,
        )  # fmt: skip

    def _comments(self, walk: Walk, bound: datetime) -> Fetched:
        """Comments on the page's recent posts that changed since the bound, each post newest first. The pass's
        first call lists the posts; its token then holds the posts left, the paging of the first one, and
        when the pass started."""
        if walk.token is None:
            params = {"fields": RECENT_POST_FIELDS, "limit": str(self._comment_posts())}
            answer = meta.graph_get(self, self._url(self._page, "posts"), params)
            posts = []
            for post in items(answer.body.get("data")):
                post = mapping(post)
                changed = iso_time(post.get("updated_time")) or iso_time(post.get("created_time"))
                if isinstance(post.get("id"), str) and _GRAPH_ID.match(post["id"]) and changed and changed >= bound:
                    posts.append(post["id"])
            started = _iso(self.context.now())
            token = {"posts": posts, "params": {}, "started": started} if posts else None
            return Fetched((), token=token, limits=answer.limits)
        token = mapping(walk.token)
        posts = [p for p in items(token.get("posts")) if isinstance(p, str) and _GRAPH_ID.match(p)]
        if not posts:
            return Fetched(())
        following = {str(k): str(v) for k, v in mapping(token.get("params")).items()}
        params = {
            "fields": COMMENT_FIELDS, "filter": "stream", "order": "reverse_chronological",
            "limit": str(PAGE_SIZE), "since": str(int(bound.timestamp())), **following,
        }  # fmt: skip
        answer = meta.graph_get(self, self._url(posts[0], "comments"), params)
        mentions, errors = normalize_page(answer.body, post_id=posts[0])
        upcoming = meta.next_params(answer.body)
        if mentions and min(m.published_at for m in mentions) < bound:
            upcoming = None  # reverse_chronological: this page reached past the bound
        if not upcoming:
            posts, upcoming = posts[1:], {}
        # comments written while this run went through the posts may sit on posts already read: the next run
        # starts from when this one started, unless nothing newer was seen
        newest = _newest(mentions)
        started = token.get("started") if isinstance(token.get("started"), str) else newest
        return Fetched(
            self._keep(m for m in mentions if m.published_at >= bound),
            token={"posts": posts, "params": upcoming, "started": started} if posts else None,
            newest=min(newest, started) if newest and started else newest, errors=errors, limits=answer.limits,
        )  # fmt: skip

    def _keep(self, mentions: Iterable[Mention]) -> list[Mention]:
        wanted, excluded = _terms(self.source.config)
        return [m for m in mentions if m.author_handle != self._page and _kept(m, wanted, excluded)]


def _newest(mentions: Iterable[Mention]) -> str | None:
    return max((_iso(m.published_at) for m in mentions), default=None)
