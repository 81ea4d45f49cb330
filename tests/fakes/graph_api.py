"""A loopback stand-in for the parts of Meta's Graph API a Facebook source uses, with Facebook Login.

- `/v23.0/dialog/oauth`: the Login dialog; checks the app id, response type, loopback redirect and
  scopes, and redirects to the callback with a code (or a refusal).
- `/v23.0/oauth/access_token` (GET, as Meta reads it): the code exchange (code once, redirect URI and
  PKCE verifier checked, app secret required) gives a short-lived user token; `grant_type=
  fb_exchange_token` swaps a live short-lived user token for a long-lived one.
- `/v23.0/{page-id}?fields=access_token,name`: the page token, only for a page the user manages;
  a page the user does not manage answers the public page without `access_token`.
- content, with the page token as a Bearer header: `/{page-id}/feed`, `/{page-id}/tagged`,
  `/{page-id}/posts` and `/{post-id}/comments`, newest first (comments with order=reverse_chronological),
  `since` / `until` in Unix seconds (inclusive), cursor paging with `paging.cursors` and a `paging.next`
  link that carries the access token, as Meta's does;
- `/?ids=a,b&fields=...`: a multiple-ID read of posts or comments (at most 50); a post or comment that is
  gone makes Meta refuse the whole read with error 803 naming it, as Meta does, and fields of the other
  kind are refused as nonexisting fields.

Every content answer carries `X-App-Usage`; a test can set the usage percentage from a given call on,
inject HTTP faults with Graph error bodies, or throttle with error code 32 and an estimated time to
regain access. Reusable pieces for the Instagram stand-in: `usage_headers`, `graph_error`,
`FAULT_ERRORS`, `Throttle`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

VERSION = "v23.0"
APP_ID = "1234567890123456"
APP_SECRET = "canary-meta-app-s3cret"
PAGE_ID = "1000000001"
PAGE_NAME = "Acme Coffee"
FACEBOOK_SCOPES = {"pages_show_list", "pages_read_engagement", "pages_read_user_content"}


# --- reusable pieces ------------------------------------------------------------------------------


def graph_error(
    code: int, message: str, *, kind: str = "OAuthException", subcode: int | None = None, transient: bool = False
) -> dict[str, Any]:
    """A Graph error body: {"error": {"message", "type", "code", "error_subcode", "is_transient", "fbtrace_id"}}."""
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": "AbCdEfGhIjK"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    return {"error": error}


# what an injected HTTP status answers, as Meta would word it
FAULT_ERRORS: dict[int, dict[str, Any]] = {
    500: graph_error(2, "An unexpected error has occurred. Please retry your request later.", transient=True),
    503: graph_error(2, "Service temporarily unavailable", transient=True),
    401: graph_error(190, "Error validating access token: The session has been invalidated.", subcode=460),
    400: graph_error(
        100, "(#100) Tried accessing nonexisting field (foo) on node type (Page)", kind="GraphMethodException"
    ),
    403: graph_error(10, "(#10) This endpoint requires the 'pages_read_user_content' permission"),
}


def usage_headers(
    *, app: float | None = None, page: float | None = None, business: float | None = None, regain_minutes: int = 0
) -> dict[str, str]:
    """Meta's throttling headers at these percentages (call_count, total_time and total_cputime alike)."""
    headers = {}
    if app is not None:
        headers["X-App-Usage"] = json.dumps({"call_count": app, "total_time": app / 2, "total_cputime": app / 3})
    if page is not None:
        headers["X-Page-Usage"] = json.dumps({"call_count": page, "total_time": page / 2, "total_cputime": page / 3})
    if business is not None or regain_minutes:
        pct = business or 0
        usage = {
            "type": "pages", "call_count": pct, "total_time": pct, "total_cputime": pct,
            "estimated_time_to_regain_access": regain_minutes,
        }  # fmt: skip
        headers["X-Business-Use-Case-Usage"] = json.dumps({PAGE_ID: [usage]})
    return headers


@dataclass
class Throttle:
    """From content call `from_call` (0-based count of calls before it) on: the usage headers reach `percent`;
    with `error`, the call itself is refused with code 32 (page request limit) for `regain_minutes`."""

    from_call: int
    percent: float = 100
    regain_minutes: int = 0
    error: bool = False


def stamp(moment: datetime) -> str:
    """created_time as Meta writes it: 2021-07-09T19:09:52+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# --- the stand-in ---------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    params: dict[str, str]
    authorization: str | None
    status: int = 0


@dataclass
class TokenCall:
    kind: Literal["code", "fb_exchange_token", "page_token"]
    params: dict[str, str]
    status: int


@dataclass
class GraphApi:
    app_id: str = APP_ID
    app_secret: str = APP_SECRET
    scopes: set[str] = field(default_factory=lambda: set(FACEBOOK_SCOPES))
    # pages the connecting user manages: page id -> name
    managed: dict[str, str] = field(default_factory=lambda: {PAGE_ID: PAGE_NAME})
    consent: Literal["grant", "deny"] = "grant"
    feed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # page id -> posts, newest first
    tagged: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # post id -> comments
    requests: list[Request] = field(default_factory=list)
    token_calls: list[TokenCall] = field(default_factory=list)
    # scripted faults, one per content call until empty: an HTTP status (answered with FAULT_ERRORS)
    faults: list[int | None] = field(default_factory=list)
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    throttle: Throttle | None = None
    # the usage percentage every content answer reports in X-App-Usage when not throttled
    usage: float = 3
    page_size: int = 100
    # False: `since` is ignored, as Meta does on some edges
    honour_since: bool = True
    server: ThreadingHTTPServer | None = None
    codes: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # code -> (challenge, redirect)
    issued_codes: list[str] = field(default_factory=list)
    short_tokens: set[str] = field(default_factory=set)
    long_tokens: set[str] = field(default_factory=set)
    page_tokens: dict[str, str] = field(default_factory=dict)  # token -> page id
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    @property
    def base(self) -> str:
        return base_url(self.server)

    @property
    def url(self) -> str:
        return f"{self.base}/{VERSION}"

    @property
    def authorize_url(self) -> str:
        return f"{self.base}/{VERSION}/dialog/oauth"

    @property
    def token_url(self) -> str:
        return f"{self.base}/{VERSION}/oauth/access_token"

    @property
    def content_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path.rsplit("/", 1)[-1] in ("feed", "tagged", "posts", "comments")]

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path == f"/{VERSION}/" and "ids" in r.params]

    def _objects(self) -> dict[str, dict[str, Any]]:
        found = {p["id"]: p for posts in (*self.feed.values(), *self.tagged.values()) for p in posts}
        found.update({c["id"]: c for comments in self.comments.values() for c in comments})
        return found

    def delete(self, object_id: str) -> None:
        for lists in (self.feed, self.tagged, self.comments):
            for key, items in lists.items():
                lists[key] = [i for i in items if i["id"] != object_id]

    def edit(self, object_id: str, text: str) -> None:
        self._objects()[object_id]["message"] = text

    def set_likes(self, object_id: str, likes: int) -> None:
        item = self._objects()[object_id]
        if "like_count" in item:
            item["like_count"] = likes
        else:
            item["reactions"]["summary"]["total_count"] = likes

    def read_ids(self, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        """GET /?ids=: each object, or error 803 naming those that do not exist."""
        if (authorization or "").removeprefix("Bearer ") not in self.page_tokens:
            return 401, FAULT_ERRORS[401]
        ids = [i for i in params["ids"].split(",") if i]
        if len(ids) > 50:
            return 400, graph_error(100, "(#100) Too many IDs. Maximum: 50. Got: " + str(len(ids)))
        objects = self._objects()
        missing = [i for i in ids if i not in objects]
        if missing:
            return 400, graph_error(803, f"(#803) Some of the aliases you requested do not exist: {','.join(missing)}")
        fields = params.get("fields", "")
        for i in ids:
            comment = "like_count" in objects[i]
            if comment and "reactions" in fields or not comment and "like_count" in fields:
                node, bad = ("Comment", "reactions") if comment else ("Post", "like_count")
                message = f"(#100) Tried accessing nonexisting field ({bad}) on node type ({node})"
                return 400, graph_error(100, message, kind="GraphMethodException")
        return 200, {i: objects[i] for i in ids}

    def secret_values(self) -> list[str]:
        """Every value that must never show up in output, logs or sl_sources."""
        return [self.app_secret, *self.issued_codes, *self.short_tokens, *self.long_tokens, *self.page_tokens]

    def _token(self, prefix: str) -> str:
        return f"{prefix}{next(self._serial)}{secrets.token_urlsafe(24)}"

    # --- content ----------------------------------------------------------------------------------

    def add_posts(
        self,
        count: int,
        *,
        newest: datetime,
        spacing: timedelta = timedelta(seconds=1),
        page: str = PAGE_ID,
        by_page: bool = False,
        tagged: bool = False,
        text: str = "Loving the new roast from Acme",
    ) -> list[str]:
        """`count` posts on the page's feed (or tagging it), the newest at `newest`; by visitors unless by_page."""
        ids = []
        target = (self.tagged if tagged else self.feed).setdefault(page, [])
        for n in range(count):
            moment = newest - spacing * n
            post_id = f"{page if not tagged else 500000 + n % 3}_{next(self._serial) + 10**9}"
            author = {"id": page, "name": self.managed.get(page, "Page")} if by_page else {
                "id": str(7000 + n % 5), "name": f"Visitor {7000 + n % 5}",
            }  # fmt: skip
            target.append({
                "id": post_id, "created_time": stamp(moment), "updated_time": stamp(moment),
                "message": f"{text} ({post_id})", "from": author,
                "permalink_url": f"https://www.facebook.com/{post_id.replace('_', '/posts/')}",
                "comments": {"data": [], "summary": {"total_count": n % 4, "can_comment": True}},
                "reactions": {"data": [], "summary": {"total_count": n % 7}},
                "shares": {"count": n % 3},
            })  # fmt: skip
            ids.append(post_id)
        target.sort(key=lambda p: p["created_time"], reverse=True)
        return ids

    def add_comments(
        self, post_id: str, count: int, *, newest: datetime, spacing: timedelta = timedelta(seconds=1), by: str = ""
    ) -> list[str]:
        """`count` comments on a post (by visitors, or by the page itself with by=page id); the post's
        updated_time moves to the newest comment, as Meta's does."""
        ids = []
        target = self.comments.setdefault(post_id, [])
        object_id = post_id.rpartition("_")[2]
        for n in range(count):
            moment = newest - spacing * n
            comment_id = f"{object_id}_{next(self._serial) + 2 * 10**9}"
            author = by or str(8000 + n % 4)
            target.append({
                "id": comment_id, "created_time": stamp(moment), "message": f"comment {comment_id} on Acme",
                "from": {"id": author, "name": f"Commenter {author}"}, "like_count": n % 2, "comment_count": 0,
                "permalink_url": f"https://www.facebook.com/{post_id.replace('_', '/posts/')}"
                                 f"/?comment_id={comment_id.rpartition('_')[2]}",
            })  # fmt: skip
            ids.append(comment_id)
        target.sort(key=lambda c: c["created_time"], reverse=True)
        for posts in self.feed.values():
            for post in posts:
                if post["id"] == post_id:
                    post["updated_time"] = max(post["updated_time"], target[0]["created_time"])
        return ids

    def _listing(self, path: str, records: list[dict[str, Any]], params: dict[str, str]) -> dict[str, Any]:
        since, until = params.get("since"), params.get("until")
        if since and self.honour_since:
            records = [r for r in records if _epoch(r["created_time"]) >= int(since)]
        if until:
            records = [r for r in records if _epoch(r["created_time"]) <= int(until)]
        if params.get("order") == "chronological":
            records = list(reversed(records))
        size = min(int(params.get("limit", "25")), self.page_size)
        offset = _offset(params.get("after"))
        page = records[offset : offset + size]
        body: dict[str, Any] = {"data": page}
        if page:
            paging: dict[str, Any] = {"cursors": {"before": _cursor(offset), "after": _cursor(offset + len(page))}}
            if offset + size < len(records):
                token = next(iter(self.page_tokens), "no-token")
                after = params["after"] if self.repeat_pages and offset else _cursor(offset + len(page))
                query = {**params, "access_token": token, "after": after}
                paging["next"] = f"{self.url}{path}?{urlencode(query)}"
            body["paging"] = paging
        return body

    def content(self, path: str, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        token = (authorization or "").removeprefix("Bearer ")
        parts = path.removeprefix(f"/{VERSION}/").split("/")
        if parts == [""] and "ids" in params:
            return self.read_ids(params, authorization)
        if len(parts) != 2:
            return 400, graph_error(100, "Unsupported get request.", kind="GraphMethodException")
        node, edge = parts
        if token not in self.page_tokens:
            return 401, FAULT_ERRORS[401]
        if edge == "comments":
            return 200, self._listing(path, self.comments.get(node, []), params)
        if self.page_tokens[token] != node:
            return 400, graph_error(100, f"(#100) Object {node} does not exist or cannot be loaded", subcode=33)
        if edge == "feed":
            return 200, self._listing(path, self.feed.get(node, []), params)
        if edge == "tagged":
            return 200, self._listing(path, self.tagged.get(node, []), params)
        if edge == "posts":  # the page's own posts
            own = [p for p in self.feed.get(node, []) if p["from"]["id"] == node]
            return 200, self._listing(path, own, params)
        return 400, graph_error(100, f"(#100) Unknown edge {edge}", kind="GraphMethodException")

    # --- Facebook Login ---------------------------------------------------------------------------

    def dialog(self, query: dict[str, str]) -> tuple[int, dict[str, str], str]:
        problems = []
        if query.get("client_id") != self.app_id:
            problems.append("Invalid App ID")
        if query.get("response_type", "code") != "code":
            problems.append("response_type must be code")
        redirect = query.get("redirect_uri", "")
        if not redirect.startswith(("http://127.0.0.1:", "http://localhost:")):
            problems.append("URL blocked: the redirect URI is not whitelisted")
        asked = {s for s in query.get("scope", "").replace(",", " ").split() if s}
        if asked != self.scopes:
            problems.append("scopes must be " + ",".join(sorted(self.scopes)))
        if not query.get("state"):
            problems.append("state missing")
        if problems:
            return 400, {"Content-Type": "text/plain"}, "; ".join(problems)
        if self.consent == "deny":
            answer = {
                "error": "access_denied", "error_code": "200", "error_reason": "user_denied",
                "error_description": "Permissions error", "state": query["state"],
            }  # fmt: skip
        else:
            code = f"AQ{secrets.token_urlsafe(32)}"
            with self._lock:
                self.codes[code] = (query.get("code_challenge"), redirect)
                self.issued_codes.append(code)
            answer = {"code": code, "state": query["state"]}
        return 302, {"Location": redirect + ("&" if "?" in redirect else "?") + urlencode(answer)}, ""

    def access_token(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        kind: Literal["code", "fb_exchange_token"] = (
            "fb_exchange_token" if params.get("grant_type") == "fb_exchange_token" else "code"
        )
        status, body = self._access_token(kind, params)
        with self._lock:
            self.token_calls.append(TokenCall(kind, params, status))
        return status, body

    def _access_token(self, kind: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if params.get("client_id") != self.app_id or params.get("client_secret") != self.app_secret:
            return 400, graph_error(101, "Error validating client secret.")
        with self._lock:
            if kind == "fb_exchange_token":
                short = params.get("fb_exchange_token", "")
                if short not in self.short_tokens:
                    return 400, graph_error(190, "Invalid OAuth access token - Cannot parse access token")
                token = self._token("EAALONG")
                self.long_tokens.add(token)
                return 200, {"access_token": token, "token_type": "bearer", "expires_in": 5183944}
            entry = self.codes.pop(params.get("code", ""), None)
            if entry is None:
                return 400, graph_error(100, "This authorization code has been used.", subcode=36009)
            challenge, redirect = entry
            if params.get("redirect_uri") != redirect:
                message = "Error validating verification code: the redirect_uri differs from the dialog's"
                return 400, graph_error(100, message, subcode=36008)
            if challenge is not None and _s256(params.get("code_verifier", "")) != challenge:
                return 400, graph_error(100, "Invalid code verifier", subcode=36009)
            token = self._token("EAASHORT")
            self.short_tokens.add(token)
            return 200, {"access_token": token, "token_type": "bearer", "expires_in": 5183}

    def page(self, page_id: str, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        token = (authorization or "").removeprefix("Bearer ")
        status, body = self._page(page_id, params, token)
        with self._lock:
            self.token_calls.append(TokenCall("page_token", {"page": page_id, "with": token, **params}, status))
        return status, body

    def _page(self, page_id: str, params: dict[str, str], token: str) -> tuple[int, dict[str, Any]]:
        if self.page_tokens.get(token) == page_id:  # a page token reading its own page
            return 200, {"name": self.managed.get(page_id) or f"Some page {page_id}", "id": page_id}
        if token not in self.short_tokens | self.long_tokens:
            return 401, FAULT_ERRORS[401]
        if page_id not in self.managed:
            return 200, {"name": f"Some page {page_id}", "id": page_id}  # public: no access_token for this user
        body = {"name": self.managed[page_id], "id": page_id}
        if "access_token" in params.get("fields", ""):
            with self._lock:
                page_token = self._token("EAAPAGE")
                self.page_tokens[page_token] = page_id
            body["access_token"] = page_token
        return 200, body

    # --- serving ----------------------------------------------------------------------------------

    def _answer(self, path: str, params: dict[str, str], authorization: str | None) -> tuple[int, dict[str, str], Any]:
        if path == f"/{VERSION}/dialog/oauth":
            status, headers, text = self.dialog(params)
            return status, headers, text
        if path == f"/{VERSION}/oauth/access_token":
            status, body = self.access_token(params)
            return status, {}, body
        parts = path.removeprefix(f"/{VERSION}/").split("/")
        if len(parts) == 1 and not (parts == [""] and "ids" in params):
            status, body = self.page(parts[0], params, authorization)
            return status, {}, body
        with self._lock:
            calls = len(self.content_calls)
            fault = self.faults.pop(0) if self.faults else None
        throttle = self.throttle if self.throttle and calls >= self.throttle.from_call else None
        headers = usage_headers(app=self.usage)
        if throttle:
            headers = usage_headers(
                app=throttle.percent, page=throttle.percent, business=throttle.percent,
                regain_minutes=throttle.regain_minutes,
            )  # fmt: skip
        if fault is not None:
            return fault, headers, FAULT_ERRORS.get(fault, graph_error(1, "An unknown error occurred"))
        if throttle and throttle.error:
            return 400, headers, graph_error(32, "(#32) Page request limit reached", subcode=2446079)
        status, body = self.content(path, params, authorization)
        return status, headers, body

    def start(self) -> GraphApi:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                authorization = self.headers.get("Authorization")
                status, headers, body = api._answer(parts.path, params, authorization)
                if not parts.path.endswith(("/dialog/oauth", "/oauth/access_token")):
                    with api._lock:
                        api.requests.append(Request(parts.path, params, authorization, status))
                payload = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_body(status, payload, headers)

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)


def _epoch(created_time: str) -> int:
    return int(datetime.strptime(created_time, "%Y-%m-%dT%H:%M:%S%z").timestamp())


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    padded = cursor + "=" * (-len(cursor) % 4)
    return int(base64.urlsafe_b64decode(padded).decode().removeprefix("offset:"))
