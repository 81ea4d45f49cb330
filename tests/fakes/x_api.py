"""A loopback stand-in for X's recent search endpoint (GET /2/tweets/search/recent) and post lookup
(GET /2/tweets?ids=).

It serves posts newest first in pages with next_token, honours since_id and start_time, joins
authors into `includes`, checks the bearer token, reports x-rate-limit-* headers from one window
shared by every caller of the token (as X counts an app's calls), and can answer 429 or 401 on
demand. The lookup has its own window, as X counts each endpoint apart; a test can edit a post (X gives
the new version a new id and answers a lookup of the old one with it), delete one or protect its author
(the lookup names it in `errors`, as X does). Every request is recorded so tests can assert what slsync
asked. For load (benchmarks/sync_due.py): a latency added to every answer, keep-alive, and the peak of
requests in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

SNOWFLAKE_EPOCH_MS = 1288834974657


def snowflake(moment: datetime, sequence: int = 0) -> str:
    return str(((int(moment.timestamp() * 1000) - SNOWFLAKE_EPOCH_MS) << 22) | sequence)


@dataclass
class Request:
    path: str
    params: dict[str, str]
    authorization: str | None
    status: int = 0


@dataclass
class XApi:
    tokens: set[str] = field(default_factory=lambda: {"app-token"})
    posts: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    window_limit: int = 450
    remaining: int = 450
    reset_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(minutes=15))
    # answer 429 to the Nth search call (1-based) and after, until cleared
    fail_429_from_call: int | None = None
    # the lookup endpoint's own window
    lookup_limit: int = 300
    lookup_remaining: int = 300
    # post ids whose author turned protected: the lookup answers them with an authorization error
    protected: set[str] = field(default_factory=set)
    # scripted faults, one per search call until the list is empty: an HTTP status, or "invalid_json",
    # "truncated" (the body stops half-way), "wrong_shape", ("slow", seconds) before a normal answer
    faults: list[Any] = field(default_factory=list)
    # the same fault on every call while set
    fault_always: Any = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    # records slipped into the first page as they are (broken posts a real API might send)
    odd_records: list[Any] = field(default_factory=list)
    # headers sent with an injected fault (a Retry-After, say)
    fault_headers: dict[str, str] = field(default_factory=dict)
    # seconds added to every answer
    latency: float = 0.0
    # the stand-in's clock (simulations move it); a spent window opens again at its reset by this clock
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # recent search's reach, when set: older posts are not served and an older since_id or start_time
    # is refused with HTTP 400, as X does
    recent_window: timedelta | None = None
    in_flight: int = 0
    max_in_flight: int = 0
    # TCP connections accepted (clients that keep connections alive open few)
    connections: int = 0
    server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return base_url(self.server) + "/2"

    @property
    def answered_429(self) -> int:
        return sum(1 for r in self.searches if r.status == 429)

    @property
    def searches(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/tweets/search/recent")]

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/2/tweets")]

    def post(self, post_id: str) -> dict[str, Any]:
        """The current version of a post, by any id of its edit history."""
        return next(p for p in self.posts if post_id in p["edit_history_tweet_ids"])

    def edit(self, post_id: str, text: str) -> str:
        """Edit a post as X does: the new version gets a new id, the old ones stay in its edit history."""
        post = self.post(post_id)
        new_id = str(int(max(p["id"] for p in self.posts)) + 1)
        post.update(id=new_id, text=text, edit_history_tweet_ids=[*post["edit_history_tweet_ids"], new_id])
        self.posts.sort(key=lambda p: int(p["id"]), reverse=True)
        return new_id

    def delete(self, post_id: str) -> None:
        self.posts.remove(self.post(post_id))

    def set_metrics(self, post_id: str, **metrics: int) -> None:
        self.post(post_id)["public_metrics"].update(metrics)

    def set_likes(self, post_id: str, likes: int) -> None:
        self.set_metrics(post_id, like_count=likes)

    def add_posts(
        self, count: int, *, newest: datetime | None = None, spacing: timedelta = timedelta(minutes=1)
    ) -> list[str]:
        """Add `count` posts, the newest at `newest` (default now), one `spacing` apart, by 7 authors."""
        newest = newest or self.clock() - timedelta(seconds=5)
        ids = []
        for n in range(count):
            moment = newest - spacing * n
            post_id = snowflake(moment, len(self.posts) % 4096)
            author = str(1000 + len(self.posts) % 7)
            self.users.setdefault(author, {
                "id": author, "name": f"Listener {author}", "username": f"listener{author}",
                "verified": author == "1000",
                "public_metrics": {"followers_count": int(author) * 3, "following_count": 1},
            })  # fmt: skip
            self.posts.append({
                "id": post_id, "text": f"post {post_id} about Acme", "author_id": author, "lang": "en",
                "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "public_metrics": {"like_count": n % 5, "reply_count": 1, "retweet_count": 2, "quote_count": 1},
                "edit_history_tweet_ids": [post_id],
            })  # fmt: skip
            ids.append(post_id)
        self.posts.sort(key=lambda p: int(p["id"]), reverse=True)
        return ids

    # --- serving ----------------------------------------------------------------------------------

    def search(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return 401, {}, {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
        if self.recent_window is not None:
            refused = self._outside_window(params)
            if refused:
                return 400, {}, {"title": "Invalid Request", "detail": refused}
        with self._lock:  # workers call at once: the window is counted one call at a time
            if self.clock() >= self.reset_at:
                self.remaining, self.reset_at = self.window_limit, self.clock() + timedelta(minutes=15)
            calls = len(self.searches)
            limited = self.fail_429_from_call is not None and calls >= self.fail_429_from_call
            if limited or self.remaining <= 0:
                return 429, self._limit_headers(0), {"title": "Too Many Requests", "detail": "Too Many Requests"}
            self.remaining -= 1
            remaining = self.remaining
        posts = self.posts  # newest first (add_posts keeps them so): a search costs the stand-in little CPU
        if self.recent_window is not None:
            oldest = snowflake(self.clock() - self.recent_window)
            posts = [p for p in posts if int(p["id"]) >= int(oldest)]
        if "since_id" in params:
            posts = [p for p in posts if int(p["id"]) > int(params["since_id"])]
        elif "start_time" in params:
            start = params["start_time"].replace("Z", ".000Z")  # the posts' own format: compared as text
            posts = [p for p in posts if p["created_at"] >= start]
        size = int(params.get("max_results", "10"))
        offset = int(params["next_token"].removeprefix("page-")) if "next_token" in params else 0
        page = posts[offset : offset + size]
        meta: dict[str, Any] = {"result_count": len(page)}
        if page:
            meta.update(newest_id=page[0]["id"], oldest_id=page[-1]["id"])
        if offset + size < len(posts):
            meta["next_token"] = params["next_token"] if self.repeat_pages and offset else f"page-{offset + size}"
        body: dict[str, Any] = {"meta": meta}
        if offset == 0 and self.odd_records:
            page = [*page, *self.odd_records]
        if page:
            body["data"] = page
            authors = {p["author_id"] for p in page if isinstance(p, dict) and "author_id" in p}
            body["includes"] = {"users": [self.users[a] for a in sorted(authors) if a in self.users]}
        return 200, self._limit_headers(remaining), body

    def _outside_window(self, params: dict[str, str]) -> str | None:
        assert self.recent_window is not None
        earliest = self.clock() - self.recent_window
        if "since_id" in params and int(params["since_id"]) < int(snowflake(earliest)):
            return f"Invalid 'since_id':'{params['since_id']}'. 'since_id' must be a post from the last 7 days"
        start = params.get("start_time")
        if start and datetime.fromisoformat(start.replace("Z", "+00:00")) < earliest:
            return f"Invalid 'start_time':'{start}'. 'start_time' must be on or after {earliest:%Y-%m-%dT%H:%MZ}"
        return None

    def lookup(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return 401, {}, {"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}
        ids = [i for i in params.get("ids", "").split(",") if i]
        if not 1 <= len(ids) <= 100:
            return 400, {}, {"title": "Invalid Request", "detail": "ids: between 1 and 100 ids"}
        with self._lock:
            if self.lookup_remaining <= 0:
                return 429, self._limit_headers(0, self.lookup_limit), {"title": "Too Many Requests"}
            self.lookup_remaining -= 1
            remaining = self.lookup_remaining
        data, errors = [], []
        for post_id in ids:
            found = next((p for p in self.posts if post_id in p["edit_history_tweet_ids"]), None)
            if found is not None and post_id not in self.protected:
                data.append(found)
                continue
            problem = "not-authorized-for-resource" if found is not None else "resource-not-found"
            title = "Authorization Error" if found is not None else "Not Found Error"
            errors.append({
                "value": post_id, "detail": f"Could not find tweet with ids: [{post_id}].", "title": title,
                "resource_type": "tweet", "parameter": "ids", "resource_id": post_id,
                "type": f"https://api.twitter.com/2/problems/{problem}",
            })  # fmt: skip
        body: dict[str, Any] = {}
        if data:
            body["data"] = data
            authors = {p["author_id"] for p in data}
            body["includes"] = {"users": [self.users[a] for a in sorted(authors) if a in self.users]}
        if errors:
            body["errors"] = errors
        return 200, self._limit_headers(remaining, self.lookup_limit), body

    def _limit_headers(self, remaining: int, limit: int | None = None) -> dict[str, str]:
        return {
            "x-rate-limit-limit": str(limit or self.window_limit),
            "x-rate-limit-remaining": str(remaining),
            "x-rate-limit-reset": str(int(self.reset_at.timestamp())),
        }

    def start(self, host: str = "127.0.0.1") -> XApi:
        api = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API answers

            def setup(self) -> None:  # one handler per connection
                super().setup()
                with api._lock:
                    api.connections += 1

            def do_GET(self) -> None:  # noqa: N802
                with api._lock:
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                try:
                    time.sleep(api.latency)
                    self._answer()
                finally:
                    with api._lock:
                        api.in_flight -= 1

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                auth = self.headers.get("Authorization")
                search = parts.path.endswith("/tweets/search/recent")
                fault = api.fault_always or (api.faults.pop(0) if search and api.faults else None)
                if isinstance(fault, tuple) and fault[0] == "slow":
                    time.sleep(fault[1])
                    fault = None
                if isinstance(fault, int):
                    status, headers, body = (
                        fault,
                        dict(api.fault_headers),
                        {"title": "Injected", "detail": f"injected HTTP {fault}"},
                    )
                elif search:
                    status, headers, body = api.search(params, auth)
                elif parts.path.endswith("/2/tweets"):
                    status, headers, body = api.lookup(params, auth)
                else:
                    status, headers, body = 404, {}, {"title": "Not Found"}
                with api._lock:
                    api.requests.append(Request(parts.path, params, auth, status))
                payload = json.dumps(body).encode()
                if fault == "invalid_json":
                    payload = b'{"data": [{"id": "1", "text": "unterminated'
                elif fault == "wrong_shape":
                    payload = b'{"result": "ok", "items": 3}'
                if fault == "truncated":  # the whole length announced, half of it sent, the connection closed
                    self.close_connection = True
                    headers = {**headers, "Content-Length": str(len(payload))}
                    payload = payload[: len(payload) // 2]
                self.send_body(status, payload, headers)

        self.server = serve(Handler, host)
        return self

    def stop(self) -> None:
        shutdown(self.server)
