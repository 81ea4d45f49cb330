"""A loopback stand-in for what slsync asks of Instagram: the Graph API and Facebook Login.

Facebook Login: `/dialog/oauth` (the consent page; it redirects to the loopback callback with a code, or
with error=access_denied) and `/oauth/access_token` read with GET (the code exchange, with the app
secret and the PKCE verifier checked, and the `fb_exchange_token` swap for a long-lived token).

Graph API: `/{page-id}?fields=instagram_business_account`, `/{ig-user-id}`, `/ig_hashtag_search`,
`/{hashtag-id}/recent_media` (the last 24 hours only, newest first, at most 50 a page, `paging.next`
whose `access_token` slsync must never follow or log, and no `username` field) and `/{ig-user-id}/tags`
(newest first, cursors and no `next`, as Meta documents), and `/?ids=a,b` (a multiple-ID read of media, at most
50, refused whole with error 803 naming the media that are gone). Only the long-lived token is accepted on
Graph calls. Every answer carries `X-App-Usage`; the stand-in can answer Meta's throttling error
(code 4 with the usage at 100 % and `estimated_time_to_regain_access`), an expired token (code 190)
or any status on demand, and records every request.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

APP_ID = "861234567890123"
APP_SECRET = "meta-app-secret-5f4dcc3b5aa765d61d83"
PAGE_ID = "104000000000001"
IG_USER_ID = "17841400000000001"
VERSION = "/v23.0"
RECENT_REACH = timedelta(hours=24)
MAX_LIMIT = 50
SHORT_LIVED = 3600
LONG_LIVED = 5_184_000
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_INSTAGRAM_EPOCH_MS = 1_314_220_021_721
_TOP_FIELD = re.compile(r"(\w+)(\{[^}]*\})?")
MEDIA_FIELDS = {"id", "caption", "media_type", "permalink", "timestamp", "like_count", "comments_count", "media_url"}


def stamp(moment: datetime) -> str:
    """A Graph API time: 2021-03-16T12:02:14+0000."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


def shortcode(moment: datetime, sequence: int) -> str:
    """A permalink shortcode whose media id holds `moment`, as Instagram's do."""
    millis = int(moment.timestamp() * 1000) - _INSTAGRAM_EPOCH_MS
    number = (millis << 23) | (sequence % (1 << 23))
    code = ""
    while number:
        number, digit = divmod(number, 64)
        code = _ALPHABET[digit] + code
    return code


def graph_error(code: int, message: str, *, transient: bool = False, subcode: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if transient:
        error["is_transient"] = True
    return {"error": error}


EXPIRED = graph_error(190, "Error validating access token: Session has expired.", subcode=463)
UNEXPECTED = graph_error(2, "An unexpected error has occurred. Please retry your request later.", transient=True)


@dataclass
class Request:
    path: str
    params: dict[str, str]
    token: str | None
    status: int = 0


@dataclass
class InstagramApi:
    app_id: str = APP_ID
    app_secret: str = APP_SECRET
    # Facebook page -> the Instagram professional account linked to it (None: no account linked)
    pages: dict[str, str | None] = field(default_factory=lambda: {PAGE_ID: IG_USER_ID})
    hashtags: dict[str, str] = field(default_factory=dict)
    # hashtag id -> media (newest first once sorted); ig user id -> media it is tagged in
    hashtag_media: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tagged: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # hashtags Meta refuses to search (sensitive or offensive)
    refused: set[str] = field(default_factory=set)
    # the app lacks the Instagram Public Content Access feature: every hashtag search is refused (code 10)
    no_public_content_access: bool = False
    consent: Literal["grant", "deny"] = "grant"
    # the X-App-Usage call_count (percent) reported with the n-th Graph call (0-based)
    usage: Callable[[int], int] = lambda n: 5
    # scripted faults for the next Graph calls: 500 (Meta's transient code 2), 401 (an expired token, code
    # 190, answered with HTTP 400 as Meta does) or any other status
    faults: list[int] = field(default_factory=list)
    # from this Graph call on, Meta's throttling answer (code 4) until reset_at
    fail_429_from_call: int | None = None
    # a platform stuck on one page: a page asked for with a token names that same token as the next one
    repeat_pages: bool = False
    reset_at: datetime | None = None
    requests: list[Request] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    short_tokens: set[str] = field(default_factory=set)
    long_tokens: set[str] = field(default_factory=set)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (challenge, redirect_uri)
    authorize_params: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: itertools.count = field(default_factory=lambda: itertools.count(1))

    # --- where it is -------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return base_url(self.server)

    @property
    def url(self) -> str:
        return self.base + VERSION

    def env(self) -> dict[str, str]:
        return {
            "SLSYNC_INSTAGRAM_API_URL": self.url,
            "SLSYNC_INSTAGRAM_AUTHORIZE_URL": self.url + "/dialog/oauth",
            "SLSYNC_INSTAGRAM_TOKEN_URL": self.url + "/oauth/access_token",
            "FACEBOOK_APP_ID": self.app_id,
            "FACEBOOK_APP_SECRET": self.app_secret,
        }

    # --- what was asked ----------------------------------------------------------------------------

    @property
    def graph_calls(self) -> list[Request]:
        return list(self.requests)

    def calls_to(self, suffix: str) -> list[Request]:
        return [r for r in self.requests if r.path.endswith(suffix)]

    def hashtag_searches(self) -> list[Request]:
        return self.calls_to("/ig_hashtag_search")

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path == VERSION + "/" and "ids" in r.params]

    def _all_media(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for media in (*self.hashtag_media.values(), *self.tagged.values()) for m in media}

    def delete(self, media_id: str) -> None:
        for lists in (self.hashtag_media, self.tagged):
            for key, media in lists.items():
                lists[key] = [m for m in media if m["id"] != media_id]

    def edit(self, media_id: str, caption: str) -> None:
        self._all_media()[media_id]["caption"] = caption

    def set_likes(self, media_id: str, likes: int) -> None:
        self._all_media()[media_id]["like_count"] = likes

    # --- content -----------------------------------------------------------------------------------

    def hashtag_id(self, name: str) -> str:
        if name not in self.hashtags:
            self.hashtags[name] = str(17841500000000000 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))
        return self.hashtags[name]

    def _media(self, moment: datetime, caption: str, *, username: str | None) -> dict[str, Any]:
        number = next(self._serial)
        kind = ("IMAGE", "VIDEO", "CAROUSEL_ALBUM")[number % 3]
        media_id = str(17900000000000000 + number)
        item: dict[str, Any] = {
            "id": media_id,
            "caption": caption,
            "media_type": kind,
            "permalink": f"https://www.instagram.com/p/{shortcode(moment, number)}/",
            "timestamp": stamp(moment),
            "like_count": number * 3,
            "comments_count": number % 7,
            "media_url": f"https://scontent.cdninstagram.com/v/{media_id}.{'mp4' if kind == 'VIDEO' else 'jpg'}",
        }
        if kind == "CAROUSEL_ALBUM":
            item["children"] = {
                "data": [
                    {"id": f"{media_id}1", "media_type": "IMAGE", "media_url": f"https://scontent.cdninstagram.com/v/{media_id}-1.jpg"},
                    {"id": f"{media_id}2", "media_type": "VIDEO", "media_url": f"https://scontent.cdninstagram.com/v/{media_id}-2.mp4"},
                ]
            }  # fmt: skip
        if username:
            item["username"] = username
        return item

    def add_hashtag_media(
        self, hashtag: str, count: int, *, newest: datetime, spacing: timedelta = timedelta(minutes=1)
    ) -> list[str]:
        """`count` public media with #hashtag, the newest at `newest`, one `spacing` apart."""
        media = self.hashtag_media.setdefault(self.hashtag_id(hashtag), [])
        added = [
            self._media(newest - spacing * n, f"Morning cup #{hashtag} no. {n}", username=None) for n in range(count)
        ]
        media.extend(added)
        media.sort(key=lambda m: m["timestamp"], reverse=True)
        return [m["id"] for m in added]

    def add_tagged_media(
        self, count: int, *, newest: datetime, spacing: timedelta = timedelta(minutes=1), ig_user: str = IG_USER_ID
    ) -> list[str]:
        """`count` media in which other accounts tagged `ig_user`."""
        media = self.tagged.setdefault(ig_user, [])
        added = [
            self._media(newest - spacing * n, f"Thanks @acme for the beans ({n})", username=f"fan_{n % 4}")
            for n in range(count)
        ]
        media.extend(added)
        media.sort(key=lambda m: m["timestamp"], reverse=True)
        return [m["id"] for m in added]

    # --- Facebook Login ----------------------------------------------------------------------------

    def authorize(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.authorize_params.append(params)
        redirect = params.get("redirect_uri", "")
        if params.get("client_id") != self.app_id or not redirect.startswith("http://127.0.0.1:"):
            return 400, {}, b"Invalid app id or redirect_uri"
        if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256":
            return 400, {}, b"Unsupported response_type or code_challenge_method"
        query: dict[str, str] = {"state": params.get("state", "")}
        if self.consent == "deny":
            query.update(error="access_denied", error_reason="user_denied", error_description="Permissions error")
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = (params.get("code_challenge", ""), redirect)
            query["code"] = code
        return 302, {"Location": f"{redirect}?{urlencode(query)}"}, b""

    def token(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.token_requests.append(params)
        if params.get("client_id") != self.app_id or params.get("client_secret") != self.app_secret:
            return 400, graph_error(1, "Error validating client secret.")
        if params.get("grant_type") == "fb_exchange_token":
            if params.get("fb_exchange_token") not in self.short_tokens:
                return 400, EXPIRED
            access = "EAAlong" + secrets.token_urlsafe(24)
            self.long_tokens.add(access)
            return 200, {"access_token": access, "token_type": "bearer", "expires_in": LONG_LIVED}
        challenge, redirect = self.codes.pop(params.get("code", ""), ("", ""))
        verifier = params.get("code_verifier", "")
        computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not challenge or computed != challenge or params.get("redirect_uri") != redirect:
            return 400, graph_error(100, "Invalid verification code format.", subcode=36007)
        access = "EAAshort" + secrets.token_urlsafe(24)
        self.short_tokens.add(access)
        return 200, {"access_token": access, "token_type": "bearer", "expires_in": SHORT_LIVED}

    # --- the Graph API -----------------------------------------------------------------------------

    def usage_headers(self, number: int, *, throttled: bool = False) -> dict[str, str]:
        percent = 100 if throttled else self.usage(number)
        headers = {"X-App-Usage": json.dumps({"call_count": percent, "total_cputime": 1, "total_time": 2})}
        if throttled and self.reset_at is not None:
            minutes = max(math.ceil((self.reset_at - datetime.now(UTC)).total_seconds() / 60), 1)
            usage = {"call_count": 100, "total_cputime": 3, "total_time": 4, "type": "instagram",
                     "estimated_time_to_regain_access": minutes}  # fmt: skip
            headers["X-Business-Use-Case-Usage"] = json.dumps({IG_USER_ID: [usage]})
        return headers

    def graph(self, path: str, params: dict[str, str], token: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            number = len(self.requests)
            request = Request(path, params, token)
            self.requests.append(request)
            throttled = (
                self.fail_429_from_call is not None
                and number >= self.fail_429_from_call
                and (self.reset_at is None or datetime.now(UTC) < self.reset_at)
            )
            fault = self.faults.pop(0) if self.faults and not throttled else None
        headers = self.usage_headers(number, throttled=throttled)
        if throttled:
            status, body = 403, graph_error(4, "(#4) Application request limit reached", transient=True)
        elif fault == 500:
            status, body = 500, UNEXPECTED
        elif fault == 401:
            status, body = 400, EXPIRED
        elif fault is not None:
            status, body = fault, graph_error(100, f"scripted failure {fault}")
        elif token not in self.long_tokens:
            status, body = 400, graph_error(190, "Invalid OAuth access token - Cannot parse access token")
        else:
            status, body = self._content(path.removeprefix(VERSION), params)
        request.status = status
        return status, headers, body

    def _content(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        parts = path.strip("/").split("/")
        if parts == [""] and "ids" in params:
            ids = [i for i in params["ids"].split(",") if i]
            if len(ids) > 50:
                return 400, graph_error(100, f"(#100) Too many IDs. Maximum: 50. Got: {len(ids)}")
            media = self._all_media()
            missing = [i for i in ids if i not in media]
            if missing:
                return 400, graph_error(
                    803, f"(#803) Some of the aliases you requested do not exist: {','.join(missing)}"
                )
            wanted = {m.group(1) for m in _TOP_FIELD.finditer(params.get("fields", "id"))}
            return 200, {i: {k: v for k, v in media[i].items() if k in wanted or k == "id"} for i in ids}
        if parts == ["ig_hashtag_search"]:
            name = params.get("q", "").lower()
            if not params.get("user_id"):
                return 400, graph_error(100, "(#100) The parameter user_id is required")
            if self.no_public_content_access:
                message = (
                    "(#10) To use 'Instagram Public Content Access', your use of this endpoint must be reviewed "
                    "and approved by Facebook."
                )
                return 403, graph_error(10, message)
            if name in self.refused:
                return 400, graph_error(24, "The requested hashtag is not available", subcode=2207024)
            return 200, {"data": [{"id": self.hashtags[name]}] if name in self.hashtags else []}
        if len(parts) == 2 and parts[1] == "recent_media":
            if parts[0] not in self.hashtags.values():
                return 400, graph_error(100, "(#100) Unsupported get request.")
            if not params.get("user_id"):
                return 400, graph_error(100, "(#100) The parameter user_id is required")
            cutoff = stamp(datetime.now(UTC) - RECENT_REACH)
            media = [m for m in self.hashtag_media.get(parts[0], []) if m["timestamp"] >= cutoff]
            return self._listing(path, params, media, with_next=True, allowed=MEDIA_FIELDS | {"children"})
        if len(parts) == 2 and parts[1] == "tags":
            if parts[0] not in self.pages.values():
                return 400, graph_error(100, "(#100) Unsupported get request.")
            media = self.tagged.get(parts[0], [])
            return self._listing(path, params, media, with_next=False, allowed=MEDIA_FIELDS | {"children", "username"})
        if len(parts) == 1 and parts[0] in self.pages:
            linked = self.pages[parts[0]]
            body: dict[str, Any] = {"id": parts[0]}
            if linked is not None and "instagram_business_account" in params.get("fields", ""):
                body["instagram_business_account"] = {"id": linked}
            return 200, body
        if len(parts) == 1 and parts[0] in self.pages.values():
            return 200, {"id": parts[0], "username": "acme"}
        return 400, graph_error(100, "(#100) Unsupported get request.", subcode=33)

    def _listing(
        self, path: str, params: dict[str, str], media: list[dict[str, Any]], *, with_next: bool, allowed: set[str]
    ) -> tuple[int, dict[str, Any]]:
        wanted = {m.group(1) for m in _TOP_FIELD.finditer(params.get("fields", "id"))}
        if wanted - allowed:
            bad = sorted(wanted - allowed)[0]
            return 400, graph_error(100, f"(#100) Tried accessing nonexisting field ({bad})")
        try:
            limit = int(params.get("limit", "25"))
        except ValueError:
            return 400, graph_error(100, "(#100) Param limit must be a number")
        if not 1 <= limit <= MAX_LIMIT:
            return 400, graph_error(100, f"(#100) The limit parameter must be at most {MAX_LIMIT}")
        offset = 0
        if after := params.get("after"):
            try:
                offset = int(base64.urlsafe_b64decode(after.encode()).decode().removeprefix("offset:"))
            except ValueError:
                return 400, graph_error(100, "(#100) Invalid cursor")
        chunk = media[offset : offset + limit]
        data = [{k: v for k, v in m.items() if k in wanted or k == "id"} for m in chunk]
        body: dict[str, Any] = {"data": data}
        if chunk:
            cursor = base64.urlsafe_b64encode(f"offset:{offset + len(chunk)}".encode()).decode()
            paging: dict[str, Any] = {"cursors": {"after": cursor}}
            if not with_next:
                paging["cursors"]["before"] = base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()
            if with_next and offset + len(chunk) < len(media):
                after = params["after"] if self.repeat_pages and offset else cursor
                query = {**params, "access_token": "EAAtoken-in-next-link", "after": after}
                paging["next"] = f"{self.url}{path}?{urlencode(query)}"
            body["paging"] = paging
        return 200, body

    # --- the server --------------------------------------------------------------------------------

    def start(self) -> InstagramApi:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                target = urlsplit(self.path)
                params = {k: v[0] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
                if target.path == VERSION + "/dialog/oauth":
                    status, headers, payload = api.authorize(params)
                    self.send_body(status, payload, headers, content_type="text/plain")
                    return
                if target.path == VERSION + "/oauth/access_token":
                    status, doc = api.token(params)
                    self.send_body(status, json.dumps(doc).encode())
                    return
                authorization = self.headers.get("Authorization") or ""
                token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None
                status, headers, doc = api.graph(target.path, params, token or params.get("access_token"))
                self.send_body(status, json.dumps(doc).encode(), headers)

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
