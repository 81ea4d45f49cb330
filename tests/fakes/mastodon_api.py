"""A loopback stand-in for a Mastodon instance: the hashtag timeline and full-text status search.

GET /api/v1/timelines/tag/:hashtag serves statuses newest first with since_id / max_id / min_id and a
Link header built the way Mastodon builds it (the next link keeps limit and local, and drops since_id).
GET /api/v2/search?type=statuses needs a user token, matches terms, -exclusions and language:, and
pages by offset, newest first; min_id becomes a created_at bound cut to the second, as on Mastodon.
GET /api/v1/statuses?id[]= (Mastodon 4.3) reads up to 20 statuses by id, leaving out those deleted;
`batch_lookup = False` answers it 404, as an older instance does.
Every answer carries X-RateLimit-* headers with an ISO 8601 reset; 429, 401 and other faults can be
injected. Every request is recorded so tests can assert what slsync asked.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

REMOTE = "remote.example"
_QUERY_PART = re.compile(r'-?"[^"]*"|\S+')


def snowflake(moment: datetime, sequence: int = 0) -> str:
    return str((int(moment.timestamp() * 1000) << 16) | (sequence & 0xFFFF))


def snowflake_time(status_id: str) -> datetime:
    return datetime.fromtimestamp((int(status_id) >> 16) / 1000, UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Request:
    path: str
    params: dict[str, list[str]]
    authorization: str | None
    status: int = 0

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None


@dataclass
class MastodonApi:
    tokens: set[str] = field(default_factory=lambda: {"user-token"})
    statuses: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    window_limit: int = 300
    remaining: int = 300
    reset_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(minutes=5))
    # answer 429 once N content calls were made (0: from the first), until cleared
    fail_429_from_call: int | None = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    # scripted faults, one per content call until the list is empty: an HTTP status, or "wrong_shape"
    faults: list[Any] = field(default_factory=list)
    # the instance turned public timelines off: 422 without a token, as Mastodon's require_user! answers
    timelines_need_token: bool = False
    # the largest page served, whatever slsync asks for (Mastodon: 40)
    max_limit: int = 40
    # False: an instance older than 4.3, without GET /api/v1/statuses
    batch_lookup: bool = True
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return base_url(self.server)

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def content_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path.startswith(("/api/v1/timelines/tag/", "/api/v2/search"))]

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/v1/statuses"]

    def status(self, uri: str) -> dict[str, Any]:
        return next(s for s in self.statuses if s["uri"] == uri)

    def delete(self, uri: str) -> None:
        self.statuses.remove(self.status(uri))

    def edit(self, uri: str, text: str) -> None:
        self.status(uri).update(content=f"<p>{text}</p>", edited_at=iso(datetime.now(UTC)))

    def set_likes(self, uri: str, likes: int) -> None:
        self.status(uri)["favourites_count"] = likes

    def add_statuses(
        self,
        count: int,
        *,
        tag: str | None = "acme",
        text: str = "Loving the new Acme coffee",
        language: str | None = "en",
        newest: datetime | None = None,
        spacing: timedelta = timedelta(seconds=1),
        indexable: bool = True,
    ) -> list[str]:
        """`count` statuses, the newest at `newest` (default now), one `spacing` apart; every third one
        from a remote account, every fifth with an image, every seventh with a link card."""
        newest = newest or datetime.now(UTC) - timedelta(seconds=5)
        ids = []
        for n in range(count):
            moment = newest - spacing * n
            number = len(self.statuses)
            status_id = snowflake(moment, number)
            remote = number % 3 == 0
            username = f"listener{number % 7}"
            account = {
                "id": str(1000 + number % 7), "username": username,
                "acct": f"{username}@{REMOTE}" if remote else username,
                "display_name": f"Listener {number % 7}" if number % 7 else "",
                "url": f"https://{REMOTE}/@{username}" if remote else f"{self.url}/@{username}",
                "followers_count": 10 * (number % 7), "indexable": indexable,
            }  # fmt: skip
            hashtag = (
                f' <a href="{self.url}/tags/{tag}" class="mention hashtag" rel="tag">#<span>{tag}</span></a>'
                if tag
                else ""
            )
            status = {
                "id": status_id, "created_at": iso(moment), "language": language, "visibility": "public",
                "uri": f"https://{REMOTE}/users/{username}/statuses/{number}" if remote
                else f"{self.url}/users/{username}/statuses/{status_id}",
                "url": f"https://{REMOTE}/@{username}/{number}" if remote else f"{self.url}/@{username}/{status_id}",
                "content": f"<p>{text} &amp; more, number {number}{hashtag}</p>", "spoiler_text": "",
                "replies_count": number % 3, "reblogs_count": number % 4, "favourites_count": number % 5,
                "account": account, "reblog": None, "tags": [{"name": tag}] if tag else [],
                "media_attachments": [], "card": None,
            }  # fmt: skip
            if number % 5 == 4:
                status["media_attachments"] = [
                    {"id": str(number), "type": "image", "url": f"{self.url}/media/{number}.png", "preview_url": None}
                ]
            elif number % 7 == 6:
                status["card"] = {"url": f"https://acme.example/{number}", "title": "Acme", "type": "link"}
            self.statuses.append(status)
            ids.append(status_id)
        return ids

    # --- serving ----------------------------------------------------------------------------------

    def _newest_first(self) -> list[dict[str, Any]]:
        return sorted(self.statuses, key=lambda s: int(s["id"]), reverse=True)

    def _limit(self, params: dict[str, list[str]]) -> int:
        values = params.get("limit") or ["20"]
        return max(1, min(int(values[-1]), self.max_limit))

    def tag_timeline(self, tag: str, params: dict[str, list[str]], token: str | None) -> tuple[int, dict, Any]:
        if token is not None and token not in self.tokens:
            return 401, {}, {"error": "The access token is invalid"}
        if token is None and self.timelines_need_token:
            return 422, {}, {"error": "This method requires an authenticated user"}
        found = [s for s in self._newest_first() if any(t["name"].lower() == tag.lower() for t in s["tags"])]
        one = {k: v[-1] for k, v in params.items()}
        if "max_id" in one:
            found = [s for s in found if int(s["id"]) < int(one["max_id"])]
        if "since_id" in one:
            found = [s for s in found if int(s["id"]) > int(one["since_id"])]
        limit = self._limit(params)
        if "min_id" in one:  # the page just above min_id, still newest first
            found = [s for s in found if int(s["id"]) > int(one["min_id"])][-limit:]
        page = found[:limit]
        headers = {}
        if page:
            next_max = one["max_id"] if self.repeat_pages and "max_id" in one else page[-1]["id"]
            kept = {k: one[k] for k in ("local", "limit") if k in one}  # Mastodon's pagination_params
            base = f"{self.url}/api/v1/timelines/tag/{tag}"
            headers["Link"] = (
                f'<{base}?{urlencode({**kept, "max_id": next_max})}>; rel="next", '
                f'<{base}?{urlencode({**kept, "min_id": page[0]["id"]})}>; rel="prev"'
            )
        return 200, headers, page

    def search(self, params: dict[str, list[str]], token: str | None) -> tuple[int, dict, Any]:
        if token is not None and token not in self.tokens:
            return 401, {}, {"error": "The access token is invalid"}
        one = {k: v[-1] for k, v in params.items()}
        if token is None:
            if "offset" in one:
                return 401, {}, {"error": "Search queries pagination is not supported without authentication"}
            return 200, {}, {"accounts": [], "statuses": [], "hashtags": []}  # no full-text search anonymously
        must, must_not, language = [], [], None
        for part in _QUERY_PART.findall(one.get("q", "")):
            negate = part.startswith("-")
            word = part.removeprefix("-").strip('"').lower()
            if word.startswith("language:"):
                language = word.removeprefix("language:")
            else:
                (must_not if negate else must).append(word)
        found = []
        for status in self._newest_first():
            text = re.sub(r"<[^>]*>", "", status["content"]).lower()
            if not status["account"].get("indexable") or not all(w in text for w in must):
                continue
            if any(w in text for w in must_not) or (language and status["language"] != language):
                continue
            if "min_id" in one:  # Mastodon: after:"<min_id's time, cut to the second>" on created_at
                after = snowflake_time(one["min_id"]).replace(microsecond=0)
                if datetime.fromisoformat(status["created_at"].replace("Z", "+00:00")) <= after:
                    continue
            found.append(status)
        offset = int(one.get("offset", "0"))
        return 200, {}, {"accounts": [], "statuses": found[offset : offset + self._limit(params)], "hashtags": []}

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.window_limit),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": self.reset_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }

    def statuses_by_id(self, params: dict[str, list[str]]) -> tuple[int, dict, Any]:
        ids = params.get("id[]", [])
        if not self.batch_lookup:
            return 404, {}, {"error": "Record not found"}
        if len(set(ids)) > 20:
            return 422, {}, {"error": "Validation failed"}
        if self.remaining <= 0:
            return 429, self._limit_headers(0), {"error": "Too many requests"}
        self.remaining -= 1
        return 200, self._limit_headers(self.remaining), [s for s in self.statuses if s["id"] in ids]

    def answer(self, path: str, params: dict[str, list[str]], authorization: str | None) -> tuple[int, dict, Any]:
        token = authorization.removeprefix("Bearer ") if authorization else None
        if path == "/api/v1/statuses":
            return self.statuses_by_id(params)
        if path == "/api/v1/accounts/verify_credentials":  # what `slsync doctor` asks
            if token is None or token not in self.tokens:
                return 401, {}, {"error": "The access token is invalid"}
            return 200, self._limit_headers(self.remaining), {"id": "1", "acct": "listener", "username": "listener"}
        if not path.startswith(("/api/v1/timelines/tag/", "/api/v2/search")):
            return 404, {}, {"error": "Record not found"}
        calls = len(self.content_calls) - 1  # before this one, which is recorded already
        fault = self.faults.pop(0) if self.faults else None  # None: this call is answered as usual
        if fault is not None:
            if fault == "wrong_shape":
                return 200, self._limit_headers(self.remaining), {"result": "ok"}
            return fault, {}, {"error": f"injected HTTP {fault}"}
        if (self.fail_429_from_call is not None and calls >= self.fail_429_from_call) or self.remaining <= 0:
            return 429, self._limit_headers(0), {"error": "Too many requests"}
        if path.startswith("/api/v2/search"):
            status, headers, body = self.search(params, token)
        else:
            status, headers, body = self.tag_timeline(unquote(path.rsplit("/", 1)[1]), params, token)
        if status == 200:
            self.remaining -= 1
        return status, {**headers, **self._limit_headers(self.remaining)}, body

    def start(self) -> MastodonApi:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = parse_qs(parts.query)
                auth = self.headers.get("Authorization")
                record = Request(parts.path, params, auth)
                api.requests.append(record)
                record.status, headers, body = api.answer(parts.path, params, auth)
                self.send_body(record.status, json.dumps(body).encode(), headers)

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
