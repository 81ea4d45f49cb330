"""A loopback stand-in for TikTok's Research API: the client-credentials token endpoint and the video query.

POST /v2/oauth/token/ takes the form client_key, client_secret, grant_type=client_credentials and answers
{"access_token", "expires_in", "token_type"} or, for a refused client, TikTok's OAuth error object
{"error", "error_description", "log_id"}. POST /v2/research/video/query/?fields=... takes the JSON body of
the reference (query with and/or/not conditions, start_date / end_date as YYYYMMDD in UTC at most 30 days
apart, max_count at most 100, cursor, search_id), checks the bearer token, filters its videos by the
conditions and days, and pages them with cursor + search_id while has_more, in TikTok's envelope
{"data": {...}, "error": {"code": "ok", "message", "log_id"}}. Shapes follow
developers.tiktok.com/doc/research-api-specs-query-videos, /doc/client-access-token-management and
/doc/tiktok-api-v2-error-handling. It can answer any status, the 429 daily_quota_limit_exceeded, forget
search ids, and records every request.

POST /v2/research/video/comment/list/?fields=... takes {"video_id", "max_count" (at most 100), "cursor"} and
answers {"data": {"comments": [...], "cursor", "has_more"}, "error": {...}} as
/doc/research-api-specs-query-video-comments shows (comment objects: id, video_id, text, like_count,
reply_count, parent_comment_id, create_time; only the first 1,000 comments of a video can be paged: a cursor
past them is refused with 400 invalid_params "Invalid count or cursor", the answer researchers report).
The reference documents no answer for a deleted video or one whose comments are turned off; the stand-in
answers a video it does not know with 400 invalid_params, and `comment_faults` scripts any other answer
for a given video.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

CLIENT_KEY = "awtiktokresearchkey01"
CLIENT_SECRET = "tiktok-client-secret-5f4dcc3b5aa7"
QUERY_PATH = "/v2/research/video/query/"
COMMENTS_PATH = "/v2/research/video/comment/list/"
COMMENT_CURSOR_END = 1000
TOKEN_PATH = "/v2/oauth/token/"
FIRST_ID = 7_300_000_000_000_000_000


@dataclass
class Request:
    path: str
    params: dict[str, str]
    body: Any
    authorization: str | None
    status: int = 0


def _day(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) != 8 or not value.isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None


def _matches(condition: dict[str, Any], video: dict[str, Any]) -> bool:
    values = [str(v).lower() for v in condition.get("field_values") or []]
    name = condition.get("field_name")
    if name == "keyword":
        text = (video.get("video_description") or "").lower()
        return any(v in text for v in values)
    if name == "hashtag_name":
        return any(h.lower() in values for h in video.get("hashtag_names") or [])
    if name == "username":
        return (video.get("username") or "").lower() in values
    if name == "region_code":
        return (video.get("region_code") or "").lower() in values
    if name == "video_id":
        return str(video.get("id")) in values
    raise ValueError(f"unknown field_name {name!r}")


def matches(query: dict[str, Any], video: dict[str, Any]) -> bool:
    """TikTok's condition groups: every `and`, at least one `or` (when given), no `not`."""
    if not all(_matches(c, video) for c in query.get("and") or []):
        return False
    if query.get("or") and not any(_matches(c, video) for c in query["or"]):
        return False
    return not any(_matches(c, video) for c in query.get("not") or [])


@dataclass
class TikTokApi:
    client_key: str = CLIENT_KEY
    client_secret: str = CLIENT_SECRET
    expires_in: int = 7200
    # "refuse" answers the token request with 401 invalid_client; "refuse_200" with 200 and an error field
    token_fault: str | None = None
    tokens: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)
    videos: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    # videos per page at most (TikTok may serve fewer than max_count)
    page_cap: int = 100
    # answer the Nth query (0-based) and later with 429 daily_quota_limit_exceeded, until cleared
    fail_429_from_call: int | None = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    quota_exceeded: bool = False
    reset_at: datetime | None = None
    # scripted faults, one per query until the list is empty: an HTTP status, or "forget_searches"
    faults: list[Any] = field(default_factory=list)
    # search_id -> the ids the search found, as TikTok caches them
    searches: dict[str, list[int]] = field(default_factory=dict)
    # video id -> its comments, in the order the comment list serves them
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # video id -> (HTTP status, error code, message) answered to every comment call for that video
    comment_faults: dict[int, tuple[int, str, str]] = field(default_factory=dict)
    # comments per page at most (TikTok may serve fewer than max_count)
    comment_page_cap: int = 100
    server: ThreadingHTTPServer | None = None
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return base_url(self.server) + "/v2"

    @property
    def queries(self) -> list[Request]:
        return [r for r in self.requests if r.path == QUERY_PATH]

    @property
    def lookups(self) -> list[Request]:
        """Video queries by video_id (reading stored videos again)."""
        return [r for r in self.queries if "video_id" in json.dumps(r.body)]

    def delete(self, video_id: str) -> None:
        self.videos = [v for v in self.videos if str(v["id"]) != video_id]

    def set_likes(self, video_id: str, likes: int) -> None:
        next(v for v in self.videos if str(v["id"]) == video_id)["like_count"] = likes

    @property
    def comment_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path == COMMENTS_PATH]

    @property
    def token_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path == TOKEN_PATH]

    def env(self) -> dict[str, str]:
        return {
            "SLSYNC_TIKTOK_API_URL": self.url,
            "SLSYNC_TIKTOK_TOKEN_URL": self.url + "/oauth/token/",
            "TIKTOK_CLIENT_KEY": self.client_key,
            "TIKTOK_CLIENT_SECRET": self.client_secret,
        }

    def add_video(self, moment: datetime, **fields: Any) -> int:
        """A video as the reference's fields describe it (id int64, create_time epoch seconds, ...)."""
        number = next(self._serial)
        video = {
            "id": FIRST_ID + number, "create_time": int(moment.timestamp()), "username": f"creator_{number % 5}",
            "region_code": "US", "video_description": f"Video {number} about acme coffee #acme",
            "hashtag_names": ["acme"], "like_count": number * 3, "comment_count": number % 4,
            "share_count": number % 2, "view_count": number * 40, "favorites_count": number % 6,
            "voice_to_text": None, "music_id": 6_000_000_000_000_000_000 + number, "playlist_id": 0,
        }  # fmt: skip
        video.update(fields)
        if video.get("voice_to_text") is None:
            video.pop("voice_to_text")
        self.videos.append(video)
        return int(video["id"])

    def add_comments(self, video_id: int, count: int, **fields: Any) -> list[int]:
        """Comments on a video as the reference's Comment Object describes them; the video's comment_count
        grows with them, as TikTok's does."""
        made = self.comments.setdefault(video_id, [])
        video = next((v for v in self.videos if v["id"] == video_id), None)
        base = video["create_time"] if video else int(datetime.now(UTC).timestamp()) - 3600
        ids = []
        for _ in range(count):
            number = next(self._serial)
            comment = {
                "id": 7_350_000_000_000_000_000 + number, "video_id": video_id, "text": f"Comment {number} on acme",
                "like_count": number % 7, "reply_count": number % 3, "parent_comment_id": video_id,
                "create_time": base + 60 + len(made),
            }  # fmt: skip
            comment.update(fields)
            made.append(comment)
            ids.append(int(comment["id"]))
        if video is not None:
            video["comment_count"] = len(made)
        return ids

    def newest(self) -> datetime:
        return datetime.fromtimestamp(max(v["create_time"] for v in self.videos), UTC)

    def add_videos(
        self, count: int, *, newest: datetime | None = None, spacing: timedelta = timedelta(minutes=1), **fields: Any
    ) -> list[int]:
        newest = newest or datetime.now(UTC) - timedelta(seconds=5)
        return [self.add_video(newest - spacing * n, **fields) for n in reversed(range(count))]

    # --- serving ----------------------------------------------------------------------------------

    def token(self, form: dict[str, str], content_type: str) -> tuple[int, dict]:
        refused = {
            "error": "invalid_client", "error_description": "Client key or secret is incorrect.",
            "log_id": "20261202000000TOKEN",
        }  # fmt: skip
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return 400, {"error": "invalid_request", "error_description": "Content type is not supported."}
        if self.token_fault == "refuse":
            return 401, refused
        if (form.get("client_key"), form.get("client_secret")) != (self.client_key, self.client_secret):
            return (200 if self.token_fault == "refuse_200" else 401), refused
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type", "error_description": "grant_type is not supported."}
        with self._lock:
            token = f"clt.stand-in-{len(self.issued) + 1}"
            self.issued.append(token)
            self.tokens.add(token)
        return 200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}

    @staticmethod
    def error(status: int, code: str, message: str) -> tuple[int, dict]:
        return status, {"data": {}, "error": {"code": code, "message": message, "log_id": "20261202000000QUERY"}}

    def query(self, params: dict[str, str], body: Any, authorization: str | None) -> tuple[int, dict]:
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return self.error(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        calls = len(self.queries)
        if self.quota_exceeded or (self.fail_429_from_call is not None and calls >= self.fail_429_from_call):
            return self.error(429, "daily_quota_limit_exceeded", "API daily quota limit exceeded")
        if not params.get("fields") or "id" not in params["fields"].split(","):
            return self.error(400, "invalid_params", "fields is required")
        if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
            return self.error(400, "invalid_params", "query is required")
        start, end = _day(body.get("start_date")), _day(body.get("end_date"))
        if start is None or end is None or end < start or (end - start).days > 30:
            return self.error(400, "invalid_params", "start_date and end_date must be YYYYMMDD, at most 30 days apart")
        count = body.get("max_count", 20)
        if not isinstance(count, int) or not 1 <= count <= 100:
            return self.error(400, "invalid_params", "max_count must be between 1 and 100")
        cursor = body.get("cursor", 0)
        search_id = body.get("search_id")
        if search_id:
            if search_id not in self.searches:
                return self.error(400, "invalid_params", f"Search Id {search_id} is invalid or expired")
            found = self.searches[search_id]
        else:
            low = datetime.combine(start, datetime.min.time(), tzinfo=UTC).timestamp()
            high = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC).timestamp()
            try:
                hits = [v for v in self.videos if low <= v["create_time"] < high and matches(body["query"], v)]
            except ValueError as exc:
                return self.error(400, "invalid_params", str(exc))
            found = [v["id"] for v in sorted(hits, key=lambda v: v["create_time"], reverse=True)]
            search_id = str(7_400_000_000_000_000_000 + len(self.searches) + 1)
            self.searches[search_id] = found
        by_id = {v["id"]: v for v in self.videos}
        size = min(count, self.page_cap)
        page = [by_id[i] for i in found[cursor : cursor + size] if i in by_id]
        fields = set(params["fields"].split(","))
        videos = [{k: v for k, v in video.items() if k in fields} for video in page]
        more = cursor + size < len(found)
        following = cursor if self.repeat_pages and cursor else cursor + len(found[cursor : cursor + size])
        data = {"videos": videos, "cursor": following, "has_more": more,
                "search_id": search_id}  # fmt: skip
        return 200, {"data": data, "error": {"code": "ok", "message": "", "log_id": "20261202000000QUERY"}}

    def comment_list(self, params: dict[str, str], body: Any, authorization: str | None) -> tuple[int, dict]:
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return self.error(401, "access_token_invalid", "The access token is invalid or not found in the request.")
        if self.quota_exceeded:
            return self.error(429, "daily_quota_limit_exceeded", "API daily quota limit exceeded")
        if not params.get("fields") or "id" not in params["fields"].split(","):
            return self.error(400, "invalid_params", "fields is required")
        video_id = body.get("video_id") if isinstance(body, dict) else None
        if not isinstance(video_id, int) or isinstance(video_id, bool):
            return self.error(400, "invalid_params", "video_id is required")
        if video_id in self.comment_faults:
            return self.error(*self.comment_faults[video_id])
        if video_id not in {v["id"] for v in self.videos}:
            return self.error(400, "invalid_params", f"video_id {video_id} is invalid")
        count, cursor = body.get("max_count", 10), body.get("cursor", 0)
        if not isinstance(count, int) or not 1 <= count <= 100 or not isinstance(cursor, int) or cursor < 0:
            return self.error(400, "invalid_params", "Invalid count or cursor")
        if cursor >= COMMENT_CURSOR_END:
            return self.error(400, "invalid_params", "Invalid count or cursor")
        served = self.comments.get(video_id, [])[:COMMENT_CURSOR_END]
        size = min(count, self.comment_page_cap)
        fields = set(params["fields"].split(","))
        page = [{k: v for k, v in c.items() if k in fields} for c in served[cursor : cursor + size]]
        data = {"comments": page, "cursor": cursor + len(page), "has_more": cursor + size < len(served)}
        return 200, {"data": data, "error": {"code": "ok", "message": "", "log_id": "20261202000000COMMENT"}}

    def start(self) -> TikTokApi:
        api = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                auth = self.headers.get("Authorization")
                body: Any
                if parts.path == TOKEN_PATH:
                    body = {k: v[-1] for k, v in parse_qs(raw).items()}
                    status, answer = api.token(body, self.headers.get("Content-Type") or "")
                    body = {k: ("[secret]" if k == "client_secret" else v) for k, v in body.items()}
                elif parts.path == QUERY_PATH:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    fault = api.faults.pop(0) if api.faults else None
                    if fault == "forget_searches":
                        api.searches.clear()
                        fault = None
                    if isinstance(fault, int):
                        status, answer = api.error(fault, "internal_error", f"injected HTTP {fault}")
                        if fault == 401:
                            answer["error"]["code"] = "access_token_invalid"
                    else:
                        status, answer = api.query(params, body, auth)
                elif parts.path == COMMENTS_PATH:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    fault = api.faults.pop(0) if api.faults else None
                    if isinstance(fault, int):
                        status, answer = api.error(fault, "internal_error", f"injected HTTP {fault}")
                    else:
                        status, answer = api.comment_list(params, body, auth)
                else:
                    body, (status, answer) = None, api.error(404, "not_found", "no such path")
                api.requests.append(Request(parts.path, params, body, auth, status))
                self.send_body(status, json.dumps(answer).encode())

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
