"""A loopback stand-in for X's OAuth 2.0 endpoints: /authorize (the consent page) and /token.

/authorize checks what X checks (client id, response type, S256, the registered redirect URI, the
scopes), remembers the PKCE challenge per issued code, and redirects to the callback with a code, a
refusal (error=access_denied) or a forged state, as the test chooses. /token checks the grant, the
PKCE verifier against the remembered challenge, the redirect URI, the client id and, for a
confidential client, HTTP Basic; it accepts each code and each refresh token exactly once (X rotates
refresh tokens: a used one is dead). Every token call is recorded, and `browse` plays the browser.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

SCOPES = {"tweet.read", "users.read", "offline.access"}


@dataclass
class TokenCall:
    grant_type: str | None
    form: dict[str, str]
    basic: tuple[str, str] | None
    status: int
    issued: Issued | None = None


@dataclass(frozen=True)
class Issued:
    access_token: str
    refresh_token: str | None


@dataclass
class XAuth:
    client_id: str = "slsync-test-client"
    client_secret: str | None = None
    # X compares redirect URIs with the registered callback exactly; None accepts any loopback URI
    registered_redirect: str | None = None
    expires_in: int = 7200
    # what /authorize does once "the user" has seen the consent page
    consent: Literal["grant", "deny", "forge"] = "grant"
    deny_description: str = "The user denied the request"
    # X's own answer to a dead refresh token is invalid_request; the RFC's is invalid_grant
    dead_token_error: str = "invalid_grant"
    rotate: bool = True
    calls: list[TokenCall] = field(default_factory=list)
    authorize_requests: int = 0
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (challenge, redirect_uri)
    live_refresh: set[str] = field(default_factory=set)
    issued: list[Issued] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    @property
    def base(self) -> str:
        return base_url(self.server)

    @property
    def authorize_url(self) -> str:
        return self.base + "/i/oauth2/authorize"

    @property
    def token_url(self) -> str:
        return self.base + "/2/oauth2/token"

    def token_calls(self, grant_type: str) -> list[TokenCall]:
        return [c for c in self.calls if c.grant_type == grant_type]

    def secret_values(self) -> list[str]:
        """Every value that must never show up in output, logs or sl_sources."""
        values = [v for i in self.issued for v in (i.access_token, i.refresh_token) if v]
        values += list(self.codes)
        return values + ([self.client_secret] if self.client_secret else [])

    def issue(self) -> Issued:
        """A fresh token pair, as if from a completed authorization."""
        n = next(self._serial)
        pair = Issued(f"AT{n}-{secrets.token_urlsafe(24)}", f"RT{n}-{secrets.token_urlsafe(24)}")
        self.live_refresh.add(pair.refresh_token or "")
        self.issued.append(pair)
        return pair

    # --- /authorize -------------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], str]:
        self.authorize_requests += 1
        problems = []
        if query.get("client_id") != self.client_id:
            problems.append("unknown client_id")
        if query.get("response_type") != "code":
            problems.append("response_type must be code")
        if query.get("code_challenge_method") != "S256" or len(query.get("code_challenge", "")) != 43:
            problems.append("PKCE S256 challenge required")
        redirect = query.get("redirect_uri", "")
        if self.registered_redirect is not None and redirect != self.registered_redirect:
            problems.append("redirect_uri does not match the registered callback")
        if not redirect.startswith(("http://127.0.0.1:", "http://localhost:")):
            problems.append("redirect_uri is not a loopback URI")
        if set(query.get("scope", "").split(" ")) != SCOPES:
            problems.append("scopes must be exactly " + " ".join(sorted(SCOPES)))
        if len(query.get("state", "")) < 22:
            problems.append("state too short")
        if problems:
            return 400, {"Content-Type": "text/plain"}, "; ".join(problems)
        if self.consent == "deny":
            answer = {"error": "access_denied", "error_description": self.deny_description, "state": query["state"]}
        else:
            code = f"code-{secrets.token_urlsafe(16)}"
            with self._lock:
                self.codes[code] = (query["code_challenge"], redirect)
            state = query["state"] if self.consent == "grant" else secrets.token_urlsafe(32)
            answer = {"code": code, "state": state}
        location = redirect + ("&" if "?" in redirect else "?") + urlencode(answer)
        return 302, {"Location": location}, ""

    # --- /token -----------------------------------------------------------------------------------

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        basic = _basic(authorization)
        grant = form.get("grant_type")
        status, body, issued = self._token(grant, form, basic)
        with self._lock:
            self.calls.append(TokenCall(grant, form, basic, status, issued))
        return status, body

    def _token(
        self, grant: str | None, form: dict[str, str], basic: tuple[str, str] | None
    ) -> tuple[int, dict[str, Any], Issued | None]:
        if self.client_secret is not None:
            if basic != (self.client_id, self.client_secret):
                return (
                    401,
                    {"error": "unauthorized_client", "error_description": "Missing valid authorization header"},
                    None,
                )
        elif basic is not None:
            return 401, {"error": "invalid_client", "error_description": "public clients send no secret"}, None
        if form.get("client_id") != self.client_id:
            return (
                400,
                {"error": "invalid_request", "error_description": "Missing required parameter [client_id]."},
                None,
            )
        with self._lock:
            if grant == "authorization_code":
                entry = self.codes.pop(form.get("code", ""), None)  # a code works once
                if entry is None:
                    return 400, {"error": "invalid_grant", "error_description": "unknown or used code"}, None
                challenge, redirect = entry
                verifier = form.get("code_verifier", "")
                if not 43 <= len(verifier) <= 128 or _s256(verifier) != challenge:
                    return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}, None
                if form.get("redirect_uri") != redirect:
                    return 400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"}, None
                pair = self.issue()
            elif grant == "refresh_token":
                used = form.get("refresh_token", "")
                if used not in self.live_refresh:
                    description = "Value passed for the token was invalid."
                    return 400, {"error": self.dead_token_error, "error_description": description}, None
                if self.rotate:
                    self.live_refresh.discard(used)
                    pair = self.issue()
                else:
                    n = next(self._serial)
                    pair = Issued(f"AT{n}-{secrets.token_urlsafe(24)}", None)
                    self.issued.append(pair)
            else:
                return 400, {"error": "unsupported_grant_type"}, None
        body: dict[str, Any] = {
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "access_token": pair.access_token,
            "scope": "tweet.read users.read offline.access",
        }
        if pair.refresh_token:
            body["refresh_token"] = pair.refresh_token
        return 200, body, pair


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


def _handler(auth: XAuth) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            target = urlsplit(self.path)
            if target.path != "/i/oauth2/authorize":
                self.send_body(404, b"not found", content_type="text/plain")
                return
            query = {k: v[0] for k, v in parse_qs(target.query).items()}
            status, headers, text = auth.authorize(query)
            self.send_body(status, text.encode(), headers)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if urlsplit(self.path).path != "/2/oauth2/token":
                self.send_body(404, b"not found", content_type="text/plain")
                return
            if not self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                self.send_body(400, b'{"error":"invalid_request"}')
                return
            form = {k: v[0] for k, v in parse_qs(raw).items()}
            status, body = auth.token(form, self.headers.get("Authorization"))
            self.send_body(status, json.dumps(body).encode())

    return Handler


@contextmanager
def running(auth: XAuth | None = None, host: str = "127.0.0.1") -> Iterator[XAuth]:
    """Serve the stand-in on a free port of `host` for the duration of the block."""
    auth = auth or XAuth()
    auth.server = serve(_handler(auth), host)
    try:
        yield auth
    finally:
        shutdown(auth.server)
