"""A loopback stand-in for the Bluesky XRPC endpoints slsync uses, under /xrpc.

- com.atproto.server.createSession (POST, identifier + password) and refreshSession (POST, Bearer
  refresh JWT, single use: the PDS rotates it), issuing JWTs with an `exp` claim;
- app.bsky.feed.searchPosts (GET, Bearer access JWT): q with words, "phrases", #tags, mentions:handle
  and -exclusions, all AND-ed; lang; since (inclusive) and until (exclusive) on sortAt, the earlier of
  createdAt and indexedAt; newest first by sortAt; limit; an offset cursor;
- app.bsky.feed.getPosts (GET, Bearer access JWT): the posts of up to 25 `uris`, a deleted one left out.

It answers an expired access token with 400 ExpiredToken and an unknown one with 401, reports the
RateLimit-* headers, and can fail, rate limit or slow down on demand. Every request is recorded.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

SEARCH = "/xrpc/app.bsky.feed.searchPosts"
CREATE = "/xrpc/com.atproto.server.createSession"
REFRESH = "/xrpc/com.atproto.server.refreshSession"
GET_POSTS = "/xrpc/app.bsky.feed.getPosts"
_TOKENS = re.compile(r'-?"[^"]*"|\S+')
_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT: header.payload.signature, base64url, as a PDS issues (its signature unchecked)."""

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    return f"{part({'typ': 'at+jwt', 'alg': 'HS256'})}.{part(claims)}.{secrets.token_urlsafe(16)}"


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def sort_at(post: dict[str, Any]) -> datetime:
    times = [parse(post["indexedAt"])]
    if "createdAt" in post["record"]:
        times.append(parse(post["record"]["createdAt"]))
    return min(times)


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    authorization: str | None
    status: int = 0
    body: Any = None


@dataclass
class BlueskyApi:
    accounts: dict[str, str] = field(default_factory=lambda: {"listener.bsky.social": "abcd-efgh-ijkl-mnop"})
    access_lifetime: timedelta = timedelta(hours=2)
    posts: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    window_limit: int = 3000
    remaining: int = 3000
    reset_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5))
    # answer 429 to the Nth search call (0-based) and after, until cleared
    fail_429_from_call: int | None = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    # scripted faults, one per search call until the list is empty: an HTTP status, ("xrpc", status, error)
    faults: list[Any] = field(default_factory=list)
    # createSession answers 429 while set
    sessions_limited: bool = False
    # refreshSession refuses every refresh token while set (as after a revocation)
    refuse_refresh: bool = False
    server: ThreadingHTTPServer | None = None
    access_tokens: dict[str, datetime] = field(default_factory=dict)  # token -> expiry
    refresh_tokens: set[str] = field(default_factory=set)
    _rkeys: Any = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return base_url(self.server) + "/xrpc"

    def calls(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    @property
    def searches(self) -> list[Request]:
        return self.calls(SEARCH)

    @property
    def lookups(self) -> list[Request]:
        return self.calls(GET_POSTS)

    def delete(self, uri: str) -> None:
        self.posts = [p for p in self.posts if p["uri"] != uri]

    def set_likes(self, uri: str, likes: int) -> None:
        next(p for p in self.posts if p["uri"] == uri)["likeCount"] = likes

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now past its exp (the PDS would answer ExpiredToken)."""
        past = datetime.now(UTC) - timedelta(seconds=1)
        self.access_tokens = dict.fromkeys(self.access_tokens, past)

    # --- content ----------------------------------------------------------------------------------

    def add_post(
        self,
        *,
        indexed: datetime,
        created: datetime | None = None,
        text: str = "acme",
        handle: str = "fan.bsky.social",
        langs: list[str] | None = None,
        tags: tuple[str, ...] = (),
        mentions: tuple[str, ...] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        number = next(self._rkeys)
        rkey = "3l" + "".join(_ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(11)))
        did = f"did:plc:{handle.split('.')[0][:24].ljust(24, 'x')}"
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post", "text": text, "langs": langs or ["en"], "createdAt": iso(created or indexed),
        }  # fmt: skip
        facets = [
            {"features": [{"$type": "app.bsky.richtext.facet#tag", "tag": t}], "index": {"byteStart": 0, "byteEnd": 1}}
            for t in tags
        ] + [
            # "handle" is the stand-in's own note (a real facet names the DID only), so it can match mentions:
            {"features": [{"$type": "app.bsky.richtext.facet#mention", "did": f"did:plc:{h}"}], "handle": h}
            for h in mentions
        ]
        if facets:
            record["facets"] = facets
        post: dict[str, Any] = {
            "uri": f"at://{did}/app.bsky.feed.post/{rkey}",
            "cid": f"bafyrei{number:020d}",
            "author": {"did": did, "handle": handle, "displayName": handle.split(".")[0].title(), "labels": []},
            "record": record,
            "replyCount": number % 3,
            "repostCount": 2,
            "likeCount": number % 7,
            "quoteCount": 1,
            "indexedAt": iso(indexed),
            "labels": [],
        }
        post.update(extra)
        self.posts.append(post)
        return post

    def add_posts(
        self, count: int, *, newest: datetime | None = None, spacing: timedelta = timedelta(minutes=1), **kwargs: Any
    ) -> list[dict[str, Any]]:
        """`count` posts, the newest indexed at `newest` (default now), one `spacing` apart, by 7 authors."""
        newest = newest or datetime.now(UTC)
        return [
            self.add_post(indexed=newest - spacing * n, handle=f"fan{len(self.posts) % 7}.bsky.social", **kwargs)
            for n in range(count)
        ]

    @staticmethod
    def matches(post: dict[str, Any], q: str) -> bool:
        text = post["record"].get("text", "").lower()
        tags = {
            f["tag"].lower()
            for facet in post["record"].get("facets", [])
            for f in facet["features"]
            if f["$type"].endswith("#tag")
        }
        mentioned = {facet.get("handle") for facet in post["record"].get("facets", [])}
        for token in _TOKENS.findall(q):
            negate = token.startswith("-")
            token = token.removeprefix("-")
            if token.startswith("#"):
                found = token[1:].lower() in tags
            elif token.startswith("mentions:"):
                found = token.removeprefix("mentions:") in mentioned
            else:
                found = token.strip('"').lower() in text
            if found == negate:
                return False
        return True

    # --- serving ----------------------------------------------------------------------------------

    def _bearer(self, authorization: str | None) -> str:
        return (authorization or "").removeprefix("Bearer ")

    def create_session(self, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
        if self.sessions_limited:
            reset = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
            headers = {"RateLimit-Limit": "30", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)}
            return 429, headers, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        identifier = body.get("identifier") if isinstance(body, dict) else None
        if identifier not in self.accounts or self.accounts[identifier] != body.get("password"):
            return 401, {}, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"}
        return 200, {}, self._session(identifier)

    def refresh_session(self, authorization: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        token = self._bearer(authorization)
        if token not in self.refresh_tokens or self.refuse_refresh:
            return 400, {}, {"error": "ExpiredToken", "message": "Token has been revoked"}
        self.refresh_tokens.discard(token)  # single use
        return 200, {}, self._session(next(iter(self.accounts)))

    def _session(self, handle: str) -> dict[str, Any]:
        expires = datetime.now(UTC) + self.access_lifetime
        access = jwt({"scope": "com.atproto.appPass", "sub": "did:plc:listener", "exp": int(expires.timestamp())})
        refresh = jwt({"scope": "com.atproto.refresh", "sub": "did:plc:listener", "jti": secrets.token_hex(8)})
        self.access_tokens[access] = expires
        self.refresh_tokens.add(refresh)
        return {"accessJwt": access, "refreshJwt": refresh, "handle": handle, "did": "did:plc:listener"}

    def search(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], Any]:
        token = self._bearer(authorization)
        if token not in self.access_tokens:
            return 401, {}, {"error": "AuthenticationRequired", "message": "Authentication Required"}
        if self.access_tokens[token] <= datetime.now(UTC):
            return 400, {}, {"error": "ExpiredToken", "message": "Token has expired"}
        calls = len(self.searches)
        if (self.fail_429_from_call is not None and calls >= self.fail_429_from_call) or self.remaining <= 0:
            return 429, self._limit_headers(0), {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        self.remaining -= 1
        if not params.get("q"):
            return 400, self._limit_headers(self.remaining), {"error": "InvalidRequest", "message": "q is required"}
        found = [p for p in self.posts if self.matches(p, params["q"])]
        if "lang" in params:
            found = [p for p in found if params["lang"] in p["record"].get("langs", [])]
        if "since" in params:
            found = [p for p in found if sort_at(p) >= parse(params["since"])]
        if "until" in params:
            found = [p for p in found if sort_at(p) < parse(params["until"])]
        found.sort(key=lambda p: (sort_at(p), p["uri"]), reverse=True)
        size = min(int(params.get("limit", "25")), 100)
        offset = int(params.get("cursor", "0"))
        body: dict[str, Any] = {"posts": found[offset : offset + size]}
        if offset + size < len(found):
            body["cursor"] = params["cursor"] if self.repeat_pages and offset else str(offset + size)
        return 200, self._limit_headers(self.remaining), body

    def get_posts(self, uris: list[str], authorization: str | None) -> tuple[int, dict[str, str], Any]:
        token = self._bearer(authorization)
        if token not in self.access_tokens:
            return 401, {}, {"error": "AuthenticationRequired", "message": "Authentication Required"}
        if self.access_tokens[token] <= datetime.now(UTC):
            return 400, {}, {"error": "ExpiredToken", "message": "Token has expired"}
        if not 1 <= len(uris) <= 25:
            return 400, {}, {"error": "InvalidRequest", "message": "uris must hold 1 to 25 items"}
        if self.remaining <= 0:
            return 429, self._limit_headers(0), {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}
        self.remaining -= 1
        return 200, self._limit_headers(self.remaining), {"posts": [p for p in self.posts if p["uri"] in uris]}

    def _limit_headers(self, remaining: int) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.window_limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(int(self.reset_at.timestamp())),
            "RateLimit-Policy": f"{self.window_limit};w=300",
        }

    def start(self) -> BlueskyApi:
        api = self

        class Handler(QuietHandler):
            def _answer(self, method: str) -> None:
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                auth = self.headers.get("Authorization")
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                fault = api.faults.pop(0) if parts.path == SEARCH and api.faults else None
                if isinstance(fault, tuple) and fault[0] == "slow":
                    time.sleep(fault[1])
                    fault = None
                if isinstance(fault, int):
                    status, headers, doc = fault, {}, {"error": "Injected", "message": f"injected HTTP {fault}"}
                elif isinstance(fault, tuple) and fault[0] == "xrpc":
                    status, headers, doc = fault[1], {}, {"error": fault[2], "message": "injected"}
                elif parts.path == SEARCH and method == "GET":
                    status, headers, doc = api.search(params, auth)
                elif parts.path == GET_POSTS and method == "GET":
                    status, headers, doc = api.get_posts(parse_qs(parts.query).get("uris", []), auth)
                elif parts.path == CREATE and method == "POST":
                    status, headers, doc = api.create_session(body)
                elif parts.path == REFRESH and method == "POST":
                    status, headers, doc = api.refresh_session(auth)
                else:
                    status, headers, doc = 404, {}, {"error": "MethodNotImplemented", "message": "Not Found"}
                api.requests.append(Request(method, parts.path, params, auth, status, body))
                self.send_body(status, json.dumps(doc).encode(), headers)

            def do_GET(self) -> None:  # noqa: N802
                self._answer("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._answer("POST")

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
