"""A loopback stand-in for the YouTube Data API v3: search.list and commentThreads.list, and the lookups by id
(videos.list with snippet and statistics, commentThreads.list with id: 50 ids, 1 unit a call; an id that is
gone is left out of `items`, as YouTube does).

It serves videos newest first (order=date) from publishedAfter (inclusive, as YouTube does), and
comment threads newest first (order=time) for a video or a channel's videos filtered by searchTerms,
in pages with nextPageToken. It checks the API key (X-Goog-Api-Key header or key parameter), keeps
its own count of quota units per day and answers Google's error bodies on demand: 403 quotaExceeded,
400 keyInvalid, 403 commentsDisabled, 500. Every request is recorded so tests can assert what slsync
asked, and where the key travelled.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

API_KEY = "AIzaSy-test-key-0123456789abcdefghijk"
QUOTA_MESSAGE = (
    'The request cannot be completed because you have exceeded your <a href="/youtube/v3/getting-started#quota">'
    "quota</a>."
)
COSTS = {"/search": 100, "/commentThreads": 1, "/videos": 1, "/i18nLanguages": 1}


def stamp(moment: datetime) -> str:
    """publishedAt as YouTube writes it (milliseconds, Z)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def google_error(code: int, reason: str, message: str, domain: str = "global") -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
        }
    }


KEY_INVALID = google_error(400, "keyInvalid", "API key not valid. Please pass a valid API key.", "usageLimits")


@dataclass
class Request:
    path: str
    raw_path: str
    params: dict[str, str]
    api_key: str | None
    status: int = 0


@dataclass
class YouTubeApi:
    keys: set[str] = field(default_factory=lambda: {API_KEY})
    videos: list[dict[str, Any]] = field(default_factory=list)
    # comment threads as the API sends them, with the owning channel under "_channel"
    threads: list[dict[str, Any]] = field(default_factory=list)
    comments_disabled: set[str] = field(default_factory=set)
    # videos.list's statistics per video (counts as strings, as YouTube sends them)
    statistics: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    units_used: int = 0
    # answer 403 quotaExceeded to every content call while set
    quota_exceeded: bool = False
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    # scripted faults, one per content call until the list is empty: an HTTP status (401 answers the
    # 400 keyInvalid Google sends for a bad key), or "forbidden" (403 forbidden for the key)
    faults: list[Any] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return base_url(self.server) + "/youtube/v3"

    @property
    def calls(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(("/search", "/commentThreads"))]

    def searches(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/search")]

    def comment_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/commentThreads")]

    @property
    def lookups(self) -> list[Request]:
        """videos.list, and commentThreads.list by id."""
        return [r for r in self.requests if r.path.endswith("/videos") or "id" in r.params]

    def video(self, video_id: str) -> dict[str, Any]:
        return next(v for v in self.videos if v["id"]["videoId"] == video_id)

    def thread(self, comment_id: str) -> dict[str, Any]:
        return next(t for t in self.threads if t["id"] == comment_id)

    def delete(self, item_id: str) -> None:
        """A video or comment thread deleted (or made private: YouTube answers both the same)."""
        self.videos = [v for v in self.videos if v["id"]["videoId"] != item_id]
        self.threads = [t for t in self.threads if t["id"] != item_id]

    def edit(self, item_id: str, text: str) -> None:
        """A video's new title (search.list sends it HTML-escaped), or a comment's new text."""
        if any(v["id"]["videoId"] == item_id for v in self.videos):
            self.video(item_id)["snippet"]["title"] = html.escape(text, quote=True)
        else:
            comment = self.thread(item_id)["snippet"]["topLevelComment"]["snippet"]
            comment.update(textOriginal=text, textDisplay=html.escape(text))

    def set_likes(self, item_id: str, likes: int) -> None:
        if any(v["id"]["videoId"] == item_id for v in self.videos):
            self.statistics.setdefault(item_id, {})["likeCount"] = str(likes)
        else:
            self.thread(item_id)["snippet"]["topLevelComment"]["snippet"]["likeCount"] = likes

    # --- content ----------------------------------------------------------------------------------

    def add_videos(
        self,
        count: int,
        *,
        newest: datetime | None = None,
        spacing: timedelta = timedelta(minutes=1),
        title: str = "Acme review",
        channel: str = "UC" + "a" * 22,
    ) -> list[str]:
        """`count` videos, the newest at `newest` (default now), one `spacing` apart."""
        newest = newest or datetime.now(UTC) - timedelta(seconds=5)
        ids = []
        for n in range(count):
            number = len(self.videos)
            video_id = f"v{number:010d}"
            moment = newest - spacing * n
            self.videos.append({
                "kind": "youtube#searchResult",
                "etag": f"etag-{number}",
                "id": {"kind": "youtube#video", "videoId": video_id},
                "snippet": {
                    "publishedAt": stamp(moment),
                    "channelId": channel,
                    # search.list escapes HTML in titles and descriptions
                    "title": html.escape(f"{title} #{number} & O'Brien's take", quote=True),
                    "description": f"All about Acme, video {number}",
                    "thumbnails": {
                        "default": {"url": f"https://i.ytimg.com/vi/{video_id}/default.jpg", "width": 120},
                        "high": {"url": f"https://i.ytimg.com/vi/{video_id}/hqdefault.jpg", "width": 480},
                    },
                    "channelTitle": f"Channel {channel[-4:]}",
                    "liveBroadcastContent": "none",
                    "publishTime": stamp(moment),
                },
            })  # fmt: skip
            ids.append(video_id)
        return ids

    def add_comments(
        self,
        video_id: str,
        count: int,
        *,
        newest: datetime | None = None,
        spacing: timedelta = timedelta(minutes=1),
        text: str = "I love my Acme mug",
        channel: str = "UC" + "b" * 22,
    ) -> list[str]:
        newest = newest or datetime.now(UTC) - timedelta(seconds=5)
        ids = []
        for n in range(count):
            number = len(self.threads)
            comment_id = f"Ugz{number:08d}AaABAg"
            moment = newest - spacing * n
            author = f"UC{number % 5:022d}"
            self.threads.append({
                "kind": "youtube#commentThread",
                "etag": f"etag-c{number}",
                "id": comment_id,
                "_channel": channel,
                "snippet": {
                    "channelId": channel,
                    "videoId": video_id,
                    "topLevelComment": {
                        "kind": "youtube#comment",
                        "etag": f"etag-t{number}",
                        "id": comment_id,
                        "snippet": {
                            "channelId": channel,
                            "videoId": video_id,
                            "textDisplay": html.escape(f"{text} ({number})"),
                            "textOriginal": f"{text} ({number})",
                            "authorDisplayName": f"@listener{number % 5}",
                            "authorProfileImageUrl": "https://yt3.ggpht.com/a/x=s48",
                            "authorChannelUrl": f"http://www.youtube.com/@listener{number % 5}",
                            "authorChannelId": {"value": author},
                            "canRate": True,
                            "viewerRating": "none",
                            "likeCount": number % 7,
                            "publishedAt": stamp(moment),
                            "updatedAt": stamp(moment),
                        },
                    },
                    "canReply": True,
                    "totalReplyCount": number % 3,
                    "isPublic": True,
                },
            })  # fmt: skip
            ids.append(comment_id)
        return ids

    # --- serving ----------------------------------------------------------------------------------

    def answer(self, path: str, params: dict[str, str], key: str | None) -> tuple[int, dict[str, Any]]:
        if key not in self.keys:
            if key is None:
                return 403, google_error(403, "forbidden", "The request is missing a valid API key.")
            return 400, KEY_INVALID
        endpoint = "/" + path.rsplit("/", 1)[-1]
        if self.quota_exceeded:
            return 403, google_error(403, "quotaExceeded", QUOTA_MESSAGE, "youtube.quota")
        self.units_used += COSTS[endpoint]
        if not params.get("pageToken", "tok-0").removeprefix("tok-").isdigit():
            return 400, google_error(400, "invalidPageToken", "The request specifies an invalid page token.")
        if endpoint == "/search":
            return 200, self.search(params)
        if endpoint == "/videos":
            return self.videos_list(params)
        if endpoint == "/i18nLanguages":  # what `slsync doctor` asks
            return 200, {"kind": "youtube#i18nLanguageListResponse", "items": [{"id": "en", "snippet": {"hl": "en"}}]}
        return self.comment_threads(params)

    def videos_list(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """videos.list by id: each video's snippet as videos.list sends it (not escaped) and its statistics."""
        ids = [i for i in params.get("id", "").split(",") if i]
        if not ids or len(ids) > 50 or set(params.get("part", "").split(",")) != {"snippet", "statistics"}:
            return 400, google_error(400, "badRequest", "videos.list: id (at most 50) and part=snippet,statistics")
        items = []
        for video in self.videos:
            video_id = video["id"]["videoId"]
            if video_id in ids:
                snippet = {k: v for k, v in video["snippet"].items() if k != "publishTime"}
                snippet.update(title=html.unescape(snippet["title"]), description=html.unescape(snippet["description"]))
                stats = {"viewCount": "100", "likeCount": "3", "favoriteCount": "0", "commentCount": "1"}
                items.append({"kind": "youtube#video", "etag": video["etag"], "id": video_id, "snippet": snippet,
                              "statistics": {**stats, **self.statistics.get(video_id, {})}})  # fmt: skip
        return 200, {"kind": "youtube#videoListResponse", "etag": "etag", "items": items,
                     "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)}}  # fmt: skip

    def search(self, params: dict[str, str]) -> dict[str, Any]:
        assert params.get("type") == "video" and params.get("order") == "date" and params.get("part") == "snippet"
        terms, exclusions = _parse_q(params.get("q", ""))
        found = []
        for video in self.videos:
            text = html.unescape(video["snippet"]["title"] + " " + video["snippet"]["description"]).casefold()
            if any(t in text for t in terms) and not any(x in text for x in exclusions):
                found.append(video)
        if "publishedAfter" in params:
            after = _time(params["publishedAfter"])
            found = [v for v in found if _time(v["snippet"]["publishedAt"]) >= after]
        found.sort(key=lambda v: v["snippet"]["publishedAt"], reverse=True)
        return self._page(found, params, 50, "youtube#searchListResponse")

    def comment_threads(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if "id" in params:  # by id: the threads that still exist
            ids = params["id"].split(",")
            if len(ids) > 50:
                return 400, google_error(400, "badRequest", "commentThreads.list: at most 50 ids")
            items = [{k: v for k, v in t.items() if k != "_channel"} for t in self.threads if t["id"] in ids]
            return 200, {"kind": "youtube#commentThreadListResponse", "etag": "etag", "items": items,
                         "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)}}  # fmt: skip
        assert params.get("order") == "time" and params.get("part") == "snippet"
        if "videoId" in params:
            if params["videoId"] in self.comments_disabled:
                message = 'The video identified by the <code><a href="/youtube/v3/docs/commentThreads/list#videoId">videoId</a></code> parameter has disabled comments.'  # noqa: E501
                return 403, google_error(403, "commentsDisabled", message, "youtube.commentThread")
            found = [t for t in self.threads if t["snippet"]["videoId"] == params["videoId"]]
        else:
            found = [t for t in self.threads if t["_channel"] == params.get("allThreadsRelatedToChannelId")]
        term = params.get("searchTerms", "").casefold()
        found = [t for t in found if term in t["snippet"]["topLevelComment"]["snippet"]["textOriginal"].casefold()]
        found.sort(key=lambda t: t["snippet"]["topLevelComment"]["snippet"]["publishedAt"], reverse=True)
        page = self._page(found, params, 100, "youtube#commentThreadListResponse")
        page["items"] = [{k: v for k, v in t.items() if k != "_channel"} for t in page["items"]]
        return 200, page

    def _page(self, found: list[dict[str, Any]], params: dict[str, str], most: int, kind: str) -> dict[str, Any]:
        size = min(int(params.get("maxResults", "5")), most)
        offset = int(params["pageToken"].removeprefix("tok-")) if "pageToken" in params else 0
        items = found[offset : offset + size]
        body: dict[str, Any] = {
            "kind": kind,
            "etag": "etag",
            "pageInfo": {"totalResults": len(found), "resultsPerPage": size},
            "items": items,
        }
        if offset + size < len(found):
            body["nextPageToken"] = params["pageToken"] if self.repeat_pages and offset else f"tok-{offset + size}"
        return body

    def start(self) -> YouTubeApi:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                key = self.headers.get("X-Goog-Api-Key") or params.get("key")
                content = parts.path.endswith(("/search", "/commentThreads", "/videos"))
                fault = api.faults.pop(0) if content and api.faults else None
                if parts.path.endswith("/i18nLanguages"):
                    status, body = api.answer(parts.path, params, key)
                elif fault == 401:
                    status, body = 400, KEY_INVALID
                elif fault == "forbidden":
                    status, body = 403, google_error(403, "forbidden", "Access forbidden.")
                elif isinstance(fault, int):
                    status, body = fault, google_error(fault, "backendError", f"injected HTTP {fault}")
                elif content:
                    status, body = api.answer(parts.path, params, key)
                else:
                    status, body = 404, google_error(404, "notFound", "Not Found")
                api.requests.append(Request(parts.path, self.path, params, key, status))
                self.send_body(status, json.dumps(body).encode())

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _parse_q(q: str) -> tuple[list[str], list[str]]:
    """Enough of YouTube's q for the tests: a|"b c"|#d -e -"f g"."""
    exclusions, rest = [], q
    while " -" in rest:
        rest, _, excluded = rest.rpartition(" -")
        exclusions.append(excluded.strip('"').casefold())
    terms = [t.strip('"').casefold() for t in rest.split("|") if t]
    return terms, exclusions
