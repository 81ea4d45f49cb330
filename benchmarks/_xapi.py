"""A loopback stand-in for X's recent search (GET /2/tweets/search/recent), built for load, not for faults.

Adapted from tests/fakes/x_api.py: newest-first pages with next_token, start_time / since_id,
authors joined into `includes`, a bearer-token check and x-rate-limit-* headers from ONE window
shared by every caller of the token (as X counts an app's calls). Added for benchmarks: a fixed
latency on every answer, HTTP/1.1 keep-alive, a thread-safe window, and counters of requests and
of 429 answers. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SNOWFLAKE_EPOCH_MS = 1288834974657


def snowflake(moment: datetime, sequence: int = 0) -> str:
    return str(((int(moment.timestamp() * 1000) - SNOWFLAKE_EPOCH_MS) << 22) | sequence)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many workers connect at once; the default backlog of 5 would refuse some


@dataclass
class XApi:
    token: str = "bench-app-token"
    latency: float = 0.1  # seconds added to every answer, 429s included
    window_limit: int = 10_000
    remaining: int = 10_000
    reset_at: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(minutes=15))
    posts: list[dict[str, Any]] = field(default_factory=list)  # newest first
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    answered_429: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/2"

    def reset(self, *, limit: int, remaining: int, reset_in: timedelta = timedelta(minutes=15)) -> None:
        """A new rate-limit window and zeroed counters (between scenarios)."""
        with self._lock:
            self.window_limit, self.remaining = limit, remaining
            self.reset_at = datetime.now(UTC) + reset_in
            self.requests = self.answered_429 = self.max_in_flight = 0

    def add_posts(self, count: int, *, spacing: timedelta = timedelta(minutes=1)) -> None:
        """`count` posts, the newest a few seconds ago, one `spacing` apart, by 7 authors."""
        newest = datetime.now(UTC) - timedelta(seconds=5)
        for n in range(count):
            moment = newest - spacing * n
            post_id = snowflake(moment, len(self.posts) % 4096)
            author = str(1000 + n % 7)
            self.users.setdefault(author, {
                "id": author, "name": f"Listener {author}", "username": f"listener{author}", "verified": False,
                "public_metrics": {"followers_count": int(author) * 3, "following_count": 1},
            })  # fmt: skip
            self.posts.append({
                "id": post_id, "text": f"post {post_id} about Acme", "author_id": author, "lang": "en",
                "created_at": moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "public_metrics": {"like_count": n % 5, "reply_count": 1, "retweet_count": 2, "quote_count": 1},
                "edit_history_tweet_ids": [post_id],
            })  # fmt: skip
        self.posts.sort(key=lambda p: int(p["id"]), reverse=True)

    def search(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        if authorization != f"Bearer {self.token}":
            return 401, {}, {"title": "Unauthorized", "status": 401, "detail": "Unauthorized"}
        with self._lock:
            self.requests += 1
            if self.remaining <= 0:
                self.answered_429 += 1
                return 429, self._limit_headers(0), {"title": "Too Many Requests", "detail": "Too Many Requests"}
            self.remaining -= 1
            headers = self._limit_headers(self.remaining)
        posts = self.posts
        if "since_id" in params:
            posts = [p for p in posts if int(p["id"]) > int(params["since_id"])]
        elif "start_time" in params:
            start = params["start_time"].replace("Z", ".000Z")
            posts = [p for p in posts if p["created_at"] >= start]
        size = int(params.get("max_results", "10"))
        offset = int(params["next_token"].removeprefix("page-")) if "next_token" in params else 0
        page = posts[offset : offset + size]
        meta: dict[str, Any] = {"result_count": len(page)}
        if page:
            meta.update(newest_id=page[0]["id"], oldest_id=page[-1]["id"])
        if offset + size < len(posts):
            meta["next_token"] = f"page-{offset + size}"
        body: dict[str, Any] = {"meta": meta}
        if page:
            body["data"] = page
            authors = sorted({p["author_id"] for p in page})
            body["includes"] = {"users": [self.users[a] for a in authors]}
        return 200, headers, body

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        return {
            "x-rate-limit-limit": str(self.window_limit),
            "x-rate-limit-remaining": str(remaining),
            "x-rate-limit-reset": str(int(self.reset_at.timestamp())),
        }

    def start(self) -> XApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API answers
            # headers and body leave in two writes: with Nagle's algorithm on, the body would wait for
            # the client's delayed ACK (~40 ms a response on Linux), a stall no real API adds
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802
                with api._lock:
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                try:
                    time.sleep(api.latency)
                    parts = urlsplit(self.path)
                    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                    if parts.path.endswith("/tweets/search/recent"):
                        status, headers, body = api.search(params, self.headers.get("Authorization"))
                    else:
                        status, headers, body = 404, {}, {"title": "Not Found"}
                finally:
                    with api._lock:
                        api.in_flight -= 1
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
