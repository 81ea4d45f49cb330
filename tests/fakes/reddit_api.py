"""A loopback stand-in for Reddit: the app-only token endpoint and post search.

POST /api/v1/access_token answers the client-credentials grant (HTTP Basic with the app's id and
secret) with short-lived bearer tokens. GET /api/info?id= reads posts by fullname (up to 100), as Reddit
does: a post its author deleted or a moderator removed is still listed, its text [deleted] or [removed]; a
post of a subreddit gone private is not listed. GET /search and GET /r/{a+b}/search serve posts newest first
in listings paged with `after` (a fullname), end listings near 1,000 items as Reddit does, check the
bearer token and the User-Agent, and report X-Ratelimit-Used / -Remaining (a float) / -Reset (seconds
until the window ends). It can answer 429, 401 or any status on demand, hide posts from search (as
Reddit's index does for a while after a post is made), and records every request.
"""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

CLIENT_ID = "slsync-reddit-app"
CLIENT_SECRET = "reddit-client-secret-d41d8cd98f00"
USER_AGENT = "linux:com.example.slsync-tests:v1.0 (by /u/slsync_tests)"


def base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    authorization: str | None
    user_agent: str | None
    status: int = 0


@dataclass
class RedditApi:
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    expires_in: int = 86400
    # "status:401" (wrong client credentials), "grant_error" (200 with an error field, as Reddit does)
    token_fault: str | None = None
    tokens: set[str] = field(default_factory=set)
    issued: list[str] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    # fullnames search does not show yet (Reddit's index lags behind new posts)
    hidden: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)
    listing_cap: int = 1000
    window: float = 600.0
    remaining: float = 600.0
    reset_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(minutes=10))
    # the app's tokens expire just before the Nth search call (0-based): that call gets a 401
    revoke_at_call: int | None = None
    # answer 429 to the Nth search call (0-based) and after, until cleared
    fail_429_from_call: int | None = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    # scripted faults, one per search call until the list is empty: an HTTP status, "invalid_json",
    # "wrong_shape", "redirect", ("slow", seconds) before a normal answer
    faults: list[Any] = field(default_factory=list)
    fault_always: Any = None
    # records slipped into the first page as they are (broken things a real API might send)
    odd_records: list[Any] = field(default_factory=list)
    # the stand-in's clock (simulations move it); a spent window opens again at its reset by this clock
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    server: ThreadingHTTPServer | None = None
    _sorted: tuple[int, list[dict[str, Any]]] | None = None
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return base_url(self.server)

    @property
    def token_url(self) -> str:
        return self.url + "/api/v1/access_token"

    @property
    def searches(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/search")]

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/info"]

    def post(self, name: str) -> dict[str, Any]:
        return next(p for p in self.posts if p["name"] == name)

    def delete(self, name: str) -> None:
        """The author deleted the post: listed on, [deleted]."""
        self.post(name).update(author="[deleted]", selftext="[deleted]", removed_by_category="deleted")

    def remove(self, name: str) -> None:
        """A moderator removed the post: listed on, [removed]."""
        self.post(name).update(selftext="[removed]", removed_by_category="moderator")

    def vanish(self, name: str) -> None:
        """The post's subreddit went private: not listed at all."""
        self.posts.remove(self.post(name))

    def edit(self, name: str, text: str) -> None:
        self.post(name).update(selftext=text, edited=float(int(datetime.now(UTC).timestamp())))

    def set_likes(self, name: str, score: int) -> None:
        self.post(name)["score"] = score

    @property
    def token_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/api/v1/access_token"]

    def env(self) -> dict[str, str]:
        return {
            "SLSYNC_REDDIT_API_URL": self.url,
            "SLSYNC_REDDIT_TOKEN_URL": self.token_url,
            "REDDIT_CLIENT_ID": self.client_id,
            "REDDIT_CLIENT_SECRET": self.client_secret,
            "REDDIT_USER_AGENT": USER_AGENT,
        }

    def add_post(self, moment: datetime, *, subreddit: str = "coffee", **fields: Any) -> str:
        number = next(self._serial)
        post_id = base36(36**5 + number)
        author = f"listener_{number % 7}"
        permalink = f"/r/{subreddit}/comments/{post_id}/post_{number}_about_acme/"
        post = {
            "id": post_id, "name": f"t3_{post_id}", "title": f"Post {number} about Acme", "selftext": "",
            "author": author, "subreddit": subreddit, "created_utc": float(int(moment.timestamp())),
            "permalink": permalink, "url": "https://www.reddit.com" + permalink, "is_self": True,
            "is_video": False, "score": number % 5, "num_comments": number % 3, "domain": f"self.{subreddit}",
        }  # fmt: skip
        post.update(fields)
        self.posts.append(post)
        return post["name"]

    def add_posts(
        self, count: int, *, newest: datetime | None = None, spacing: timedelta = timedelta(minutes=1), **fields: Any
    ) -> list[str]:
        """`count` posts, the newest at `newest` (default now), one `spacing` apart, oldest added first."""
        newest = newest or self.clock() - timedelta(seconds=5)
        return [self.add_post(newest - spacing * n, **fields) for n in reversed(range(count))]

    # --- serving ----------------------------------------------------------------------------------

    def token(self, form: dict[str, str], basic: tuple[str, str] | None, agent: str | None) -> tuple[int, dict]:
        if self.token_fault == "status:401" or basic != (self.client_id, self.client_secret):
            return 401, {"message": "Unauthorized", "error": 401}
        if not agent:
            return 429, {"message": "Too Many Requests", "error": 429}  # Reddit throttles anonymous agents hard
        if self.token_fault == "grant_error" or form.get("grant_type") != "client_credentials":
            return 200, {"error": "unsupported_grant_type"}
        with self._lock:
            token = f"reddit-app-token-{len(self.issued) + 1}"
            self.issued.append(token)
            self.tokens.add(token)
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in, "scope": "*"}

    def search(self, path: str, params: dict[str, str], authorization: str | None) -> tuple[int, dict, dict]:
        if self.revoke_at_call is not None and len(self.searches) == self.revoke_at_call:
            self.revoke_at_call = None
            self.tokens.clear()
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return 401, {}, {"message": "Unauthorized", "error": 401}
        calls = len(self.searches)
        if self.clock() >= self.reset_at:
            self.remaining, self.reset_at = self.window, self.clock() + timedelta(minutes=10)
        limited = self.fail_429_from_call is not None and calls >= self.fail_429_from_call
        if limited or self.remaining < 1:
            return 429, self._limit_headers(0.0), {"message": "Too Many Requests", "error": 429}
        self.remaining -= 1
        posts = [p for p in self.posts if p["name"] not in self.hidden]
        if path.startswith("/r/"):
            if params.get("restrict_sr") != "1":
                return 400, {}, {"message": "Bad Request", "error": 400}
            wanted = {s.lower() for s in path.split("/")[2].split("+")}
            posts = [p for p in posts if p["subreddit"].lower() in wanted]
        posts = self._newest_first(posts)[: self.listing_cap]
        start = 0
        if "after" in params:
            names = [p["name"] for p in posts]
            start = names.index(params["after"]) + 1 if params["after"] in names else len(posts)
        size = min(int(params.get("limit", "25")), 100)
        page = posts[start : start + size]
        more = start + size < len(posts)
        children: list[Any] = [{"kind": "t3", "data": p} for p in page]
        if start == 0 and self.odd_records:
            children += self.odd_records
        listing = {
            "kind": "Listing",
            "data": {"after": (params["after"] if self.repeat_pages and start else page[-1]["name"]) if more and page
                     else None, "dist": len(page), "modhash": None,
                     "facets": {}, "geo_filter": "", "children": children, "before": None},
        }  # fmt: skip
        return 200, self._limit_headers(self.remaining), listing

    def _newest_first(self, posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`posts` newest first. The order of the whole list is kept between calls while no post is added
        (posts are only ever added): days of simulated posts would otherwise be sorted for every page."""
        if len(posts) != len(self.posts):
            return sorted(posts, key=lambda p: (p["created_utc"], p["id"]), reverse=True)
        if self._sorted is None or self._sorted[0] != len(self.posts):
            self._sorted = (len(self.posts), sorted(posts, key=lambda p: (p["created_utc"], p["id"]), reverse=True))
        return self._sorted[1]

    def info(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict, dict]:
        if authorization is None or authorization.removeprefix("Bearer ") not in self.tokens:
            return 401, {}, {"message": "Unauthorized", "error": 401}
        names = [n for n in params.get("id", "").split(",") if n]
        if len(names) > 100:
            return 400, {}, {"message": "Bad Request", "error": 400}
        if self.remaining < 1:
            return 429, self._limit_headers(0.0), {"message": "Too Many Requests", "error": 429}
        self.remaining -= 1
        by_name = {p["name"]: p for p in self.posts}
        children = [{"kind": n.split("_", 1)[0], "data": by_name[n]} for n in names if n in by_name]
        listing = {"kind": "Listing", "data": {"after": None, "dist": len(children), "modhash": None,
                                               "geo_filter": "", "children": children, "before": None}}  # fmt: skip
        return 200, self._limit_headers(self.remaining), listing

    def _limit_headers(self, remaining: float) -> dict[str, str]:
        used = self.window - remaining
        reset = max(int((self.reset_at - self.clock()).total_seconds()), 0)
        return {"x-ratelimit-used": str(int(used)), "x-ratelimit-remaining": f"{remaining:.1f}",
                "x-ratelimit-reset": str(reset)}  # fmt: skip

    def start(self) -> RedditApi:
        api = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                basic = None
                auth = self.headers.get("Authorization") or ""
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    basic = (user, password)
                agent = self.headers.get("User-Agent")
                if parts.path == "/api/v1/access_token":
                    status, body = api.token(form, basic, agent)
                else:
                    status, body = 404, {"message": "Not Found", "error": 404}
                api.requests.append(Request("POST", parts.path, form, None, agent, status))
                self.send_body(status, json.dumps(body).encode())

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                auth = self.headers.get("Authorization")
                agent = self.headers.get("User-Agent")
                search = parts.path.endswith("/search")
                fault = api.fault_always or (api.faults.pop(0) if search and api.faults else None)
                if isinstance(fault, tuple) and fault[0] == "slow":
                    time.sleep(fault[1])
                    fault = None
                headers: dict[str, str] = {}
                if isinstance(fault, int):
                    status, body = fault, {"message": f"injected HTTP {fault}", "error": fault}
                elif fault == "redirect":
                    status, headers, body = 302, {"Location": "/subreddits/search"}, {}
                elif search:
                    status, headers, body = api.search(parts.path, params, auth)
                elif parts.path == "/api/info":
                    status, headers, body = api.info(params, auth)
                else:
                    status, body = 404, {"message": "Not Found", "error": 404}
                api.requests.append(Request("GET", parts.path, params, auth, agent, status))
                payload = json.dumps(body).encode()
                if fault == "invalid_json":
                    payload = b'{"kind": "Listing", "data": {"children": [{"kind": "t3", "data": {"id": "unter'
                elif fault == "wrong_shape":
                    payload = b'{"kind": "Listing", "data": {"after": null}}'
                self.send_body(status, payload, headers)

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
