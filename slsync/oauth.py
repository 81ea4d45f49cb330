"""Credentials for connectors: app-only tokens from the settings, user tokens from `slsync connect`.

`slsync connect` runs the OAuth 2.0 authorization code flow with PKCE for native apps (RFC 8252,
RFC 7636): a one-shot callback server on 127.0.0.1, a `state` checked in constant time, an S256
challenge. User tokens live in the token store only. Refresh tokens rotate (X kills a used one, and
reusing it may revoke the whole grant), so a refreshed token is persisted before it is used and a
refresh request is never retried. Nothing here logs or raises a message holding a code, verifier,
token or client secret.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import html
import logging
import re
import secrets
import socketserver
import sys
import threading
import webbrowser
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, ClassVar, TextIO
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from slsync import http, tokens
from slsync.errors import AuthError, Fatal, SlsyncError, UsageError
from slsync.tokens import Token, TokenStore

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.connectors.base import Connector, Credentials, OAuthApp
    from slsync.models import Source

log = logging.getLogger("slsync.oauth")

DEFAULT_PORT = 8765
CALLBACK_PATH = "/callback"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
# Refresh this long before the access token expires, so a page fetched right after still gets through.
REFRESH_MARGIN = timedelta(minutes=2)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def utcnow() -> datetime:
    return datetime.now(UTC)


class ConsentDenied(AuthError):
    """The user (or the platform) refused the authorization: nothing was stored."""


class CallbackTimeout(SlsyncError):
    """The browser never came back to the callback in time."""


# --- PKCE, state and the authorize URL ------------------------------------------------------------


def new_verifier() -> str:
    """A PKCE code verifier: 86 characters of base64url (RFC 7636 unreserved) from 64 CSPRNG bytes."""
    return secrets.token_urlsafe(64)


def code_challenge(verifier: str) -> str:
    """S256: base64url(sha256(verifier)) without padding (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_state() -> str:
    """256 bits from the CSPRNG: the callback must echo it, which a forged redirect cannot."""
    return secrets.token_urlsafe(32)


def authorize_url(app: OAuthApp, *, redirect_uri: str, state: str, challenge: str) -> str:
    if not app.client_id:
        raise UsageError(f"{app.client_id_setting or 'the client id'} is not set")
    params = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(app.scopes),
        "state": state,
    }
    if app.pkce:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    query = urlencode(params)
    return f"{app.authorize_url}{'&' if '?' in app.authorize_url else '?'}{query}"


@dataclass(frozen=True)
class Redirect:
    uri: str  # sent to the platform exactly as registered
    port: int  # where the callback server listens, on 127.0.0.1
    path: str  # the only path it answers


def redirect_for(app: OAuthApp, port: int | None) -> Redirect:
    """The redirect URI and callback port: the registered callback when configured, else 127.0.0.1:PORT.

    Platforms such as X compare the redirect URI with the registered callback character for character,
    so a configured one is used verbatim and the port is taken from it. A `localhost` callback is served
    on 127.0.0.1 too: browsers fall back to it when ::1 refuses.
    """
    setting = app.redirect_uri_setting
    if app.redirect_uri is None:
        chosen = DEFAULT_PORT if port is None else port
        return Redirect(f"http://127.0.0.1:{chosen}{CALLBACK_PATH}", chosen, CALLBACK_PATH)
    parts = urlsplit(app.redirect_uri)
    try:
        registered_port = 80 if parts.port is None else parts.port
    except ValueError:
        registered_port = 0
    if not registered_port:
        raise UsageError(f"{setting} {app.redirect_uri!r} has an invalid port")
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.username or parts.fragment:
        raise UsageError(
            f"{setting} must be a loopback callback such as http://127.0.0.1:{DEFAULT_PORT}{CALLBACK_PATH} "
            "(slsync listens on 127.0.0.1 only)"
        )
    if port is not None and port != registered_port:
        raise UsageError(
            f"--port {port} disagrees with {setting} (port {registered_port}); drop --port or change the callback"
        )
    return Redirect(app.redirect_uri, registered_port, parts.path or "/")


# --- the loopback callback server -----------------------------------------------------------------


@dataclass(frozen=True)
class CallbackResult:
    code: str | None = None
    error: str | None = None
    description: str | None = None


def _page(title: str, text: str) -> bytes:
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slsync</title></head>"
        f"<body style='font-family:sans-serif;margin:3em'><h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(text)}</p></body></html>"
    ).encode()


def _one_line(text: str, limit: int = 200) -> str:
    """Platform-supplied text made safe for a terminal line: no control characters, bounded length."""
    cleaned = _CONTROL.sub(" ", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class _Handler(BaseHTTPRequestHandler):
    server: _CallbackServer
    # A connection that sends nothing (a browser's preconnect) gives up its thread after this long.
    timeout = 10
    server_version = "slsync"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.handle_callback(self)

    def reply(self, status: int, title: str, text: str) -> None:
        body = _page(title, text)
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silenced: the default logs the request line, and the request line carries the code."""


class _CallbackServer(ThreadingHTTPServer):
    """Answers one authorization callback on 127.0.0.1; anything else gets a 400 and it keeps waiting."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, path: str, state: str, platform: str) -> None:
        self.path = path
        self.state = state.encode()
        self.platform = platform
        self.result: CallbackResult | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (a DNS lookup) for nothing.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_callback(self, request: _Handler) -> None:
        target = urlsplit(request.path)
        if target.path != self.path:
            if target.path != "/favicon.ico":
                log.warning(
                    "callback server: ignored a request for %s (not the callback path)", _one_line(target.path, 80)
                )
            request.reply(400, "Not the callback", "This address only answers the slsync authorization callback.")
            return
        params = parse_qs(target.query, keep_blank_values=True)
        states = params.get("state", [])
        if len(states) != 1 or not secrets.compare_digest(states[0].encode(), self.state):
            log.warning("callback server: ignored a callback with a missing or wrong state; still waiting")
            request.reply(400, "Unexpected callback", "This is not the authorization slsync is waiting for.")
            return
        error, code = _first(params, "error"), _first(params, "code")
        with self._lock:
            if self.result is not None:
                request.reply(400, "Already finished", "This authorization has already been answered.")
                return
            if error is None and not code:
                log.warning("callback server: ignored a callback with neither a code nor an error; still waiting")
                request.reply(400, "Incomplete callback", "The callback carries no authorization code.")
                return
            if error is not None:
                self.result = CallbackResult(error=error or "error", description=_first(params, "error_description"))
                detail = self.result.error + (f": {self.result.description}" if self.result.description else "")
                request.reply(
                    200,
                    "slsync was not connected",
                    f"{self.platform} answered: {detail}. Nothing was stored; you can close this tab.",
                )
            else:
                self.result = CallbackResult(code=code)
                request.reply(200, "slsync is connected", "You can close this tab and return to the terminal.")
        self.done.set()  # after the page went out, so the browser has it before the server stops

    def wait(self, timeout: float) -> CallbackResult | None:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        thread.start()
        try:
            self.done.wait(timeout)
        finally:
            self.shutdown()
            thread.join()
        return self.result


def _first(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _listen(port: int, path: str, state: str, platform: str, hint: str) -> _CallbackServer:
    try:
        return _CallbackServer(port, path, state, platform)
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or type(exc).__name__)
        raise UsageError(f"cannot listen on 127.0.0.1:{port} for the callback: {reason}; {hint}") from None


def _open_browser(url: str) -> None:
    """In a thread: a console browser (BROWSER=lynx) would otherwise hold the callback wait hostage."""

    def run() -> None:
        try:
            webbrowser.open(url)
        except Exception as exc:  # no browser is fine: the URL is on the screen
            log.debug("could not open a browser: %s", type(exc).__name__)

    threading.Thread(target=run, name="slsync-browser", daemon=True).start()


def authorize(
    app: OAuthApp,
    *,
    platform: str,
    port: int | None,
    timeout: float,
    open_browser: bool,
    out: TextIO | None = None,
    now: Callable[[], datetime] = utcnow,
) -> Token:
    """Run the browser part of the flow and exchange the code: a token, or an error and nothing kept."""
    redirect = redirect_for(app, port)
    verifier, state = new_verifier(), new_state()
    url = authorize_url(app, redirect_uri=redirect.uri, state=state, challenge=code_challenge(verifier))
    hint = (
        f"free the port or change {app.redirect_uri_setting} (and the callback registered with the platform)"
        if app.redirect_uri
        else "pass --port with a free port and register http://127.0.0.1:PORT/callback with the platform"
    )
    out = out or sys.stdout
    with _listen(redirect.port, redirect.path, state, platform, hint) as server:
        # Plain print, one line: rich would wrap the URL into pieces nobody can paste.
        print(f"Open this URL in a browser to authorize slsync with {platform}:", file=out)
        print(url, file=out, flush=True)
        print(
            f"Waiting up to {timeout:g} s for the browser to come back to {redirect.uri} on this machine "
            f"(over SSH, forward the port first: ssh -L {redirect.port}:127.0.0.1:{redirect.port} HOST).",
            file=out,
            flush=True,
        )
        if open_browser:
            _open_browser(url)
        result = server.wait(timeout)
    if result is None:
        raise CallbackTimeout(f"no answer from the browser within {timeout:g} s; nothing was stored")
    if result.error is not None:
        detail = _one_line(result.error + (f": {result.description}" if result.description else ""))
        raise ConsentDenied(f"{platform} did not authorize slsync ({detail}); nothing was stored")
    assert result.code is not None
    return exchange_code(
        app, code=result.code, redirect_uri=redirect.uri, verifier=verifier, platform=platform, now=now
    )


# --- the token endpoint ---------------------------------------------------------------------------


def _token_request(app: OAuthApp, form: dict[str, str], *, platform: str, what: str) -> Any:
    """POST to the token endpoint once (a refresh must never be replayed) and return the JSON body."""
    secret: SecretStr | None = app.client_secret
    # Confidential clients authenticate with HTTP Basic (or in the form, where the platform wants that);
    # public clients identify by client_id alone.
    auth = None
    if secret is not None and app.client_auth == "form":
        form = {**form, "client_secret": secret.get_secret_value()}
    elif secret is not None:
        auth = (form["client_id"], secret.get_secret_value())
    headers = {"Accept": "application/json"}
    try:
        with http.client() as client:
            if app.token_method == "GET":
                response = client.get(app.token_url, params=form, auth=auth, headers=headers)
            else:
                response = client.post(app.token_url, data=form, auth=auth, headers=headers)
    except httpx.HTTPError as exc:
        raise http.transport_error(exc, f"{platform} token endpoint") from None
    if response.status_code >= 400:
        _token_error(response, app, platform=platform, what=what)
    doc = http.decode_json(response, f"{platform} token endpoint")
    if not isinstance(doc, dict):
        raise Fatal(f"{platform} token endpoint answered with something that is not a token object")
    return doc


def _token_error(response: httpx.Response, app: OAuthApp, *, platform: str, what: str) -> None:
    status = response.status_code
    if status == 429 or status in http.RETRIABLE_STATUS:
        http.raise_for_status(response, f"{platform} token endpoint")
    try:
        body = response.json()
    except ValueError:
        body = None
    code = body.get("error") if isinstance(body, dict) else None
    reason = _one_line(http.platform_message(response))
    if code in ("invalid_client", "unauthorized_client") or status == 401:
        raise AuthError(
            f"{platform} refused the app's client credentials (HTTP {status}: {reason}); "
            f"check {app.client_id_setting} and {app.client_secret_setting}"
        )
    if code == "invalid_grant" or (status == 400 and what == "the refresh token"):
        # X answers a dead refresh token with invalid_request ("Value passed for the token was invalid"):
        # either way only a new `slsync connect` helps.
        raise AuthError(f"{platform} refused {what} (HTTP {status}: {reason})")
    raise Fatal(f"{platform} token endpoint refused {what} (HTTP {status}: {reason})")


def _token_from(doc: dict[str, Any], *, requested_at: datetime, platform: str, previous: Token | None) -> Token:
    access = doc.get("access_token")
    if not isinstance(access, str) or not access:
        raise Fatal(f"{platform} token endpoint answered without an access token")
    token_type = doc.get("token_type") or "bearer"
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise Fatal(f"{platform} issued a token of type {_one_line(str(token_type), 40)!r}, not bearer")
    lifetime = _seconds(doc.get("expires_in"))
    refresh = doc.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        # no new refresh token in the answer: the old one is still the one to use
        refresh = previous.refresh_token if previous else None
    scope = doc.get("scope")
    if not isinstance(scope, str) or not scope:
        scope = previous.scope if previous else None
    refresh_lifetime = _seconds(doc.get("refresh_token_expires_in"))
    refresh_expires_at = (
        requested_at + timedelta(seconds=refresh_lifetime)
        if refresh_lifetime
        else previous.refresh_expires_at
        if previous and refresh == previous.refresh_token
        else None
    )
    return Token(
        access_token=access,
        refresh_token=refresh,
        # expires_in counts from when the platform answered; counting from the request errs on the early side
        expires_at=requested_at + timedelta(seconds=lifetime) if lifetime else None,
        scope=scope,
        token_type="bearer",
        refresh_expires_at=refresh_expires_at if refresh else None,
    )


def _seconds(value: object) -> int | None:
    try:
        seconds = int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return seconds if seconds and seconds > 0 else None


def exchange_code(
    app: OAuthApp,
    *,
    code: str,
    redirect_uri: str,
    verifier: str,
    platform: str,
    now: Callable[[], datetime] = utcnow,
) -> Token:
    client_id = _client_id(app, platform)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": client_id,
    }
    if app.pkce:
        form["code_verifier"] = verifier
    requested_at = now()
    doc = _token_request(app, form, platform=platform, what="the authorization code")
    return _token_from(doc, requested_at=requested_at, platform=platform, previous=None)


def refresh_token(app: OAuthApp, token: Token, *, platform: str, now: Callable[[], datetime] = utcnow) -> Token:
    """One refresh request; the answer may carry a new refresh token (rotation) or keep the old one."""
    if not token.refresh_token:
        raise AuthError(f"the {platform} access token has expired and there is no refresh token")
    client_id = _client_id(app, platform)
    form = {"grant_type": "refresh_token", "refresh_token": token.refresh_token, "client_id": client_id}
    requested_at = now()
    doc = _token_request(app, form, platform=platform, what="the refresh token")
    return _token_from(doc, requested_at=requested_at, platform=platform, previous=token)


def _client_id(app: OAuthApp, platform: str) -> str:
    if not app.client_id:
        setting = app.client_id_setting or f"the {platform} client id"
        raise AuthError(f"{setting} is not set: it is needed to get {platform} user tokens")
    return app.client_id


# --- credentials for a run ------------------------------------------------------------------------


class OAuthSession:
    """A user token from the store, refreshed when it is about to expire or after a 401.

    The engine holds the source's advisory lock for the whole run, so one process at a time refreshes
    a source's token. The token is read again from the store before refreshing anyway: if someone else
    rotated it, the newer token is used and the dead refresh token is never sent.
    """

    def __init__(
        self,
        store: TokenStore,
        source_id: int,
        app: OAuthApp,
        token: Token,
        now: Callable[[], datetime] = utcnow,
        *,
        platform: str = "the platform",
        margin: timedelta = REFRESH_MARGIN,
        on_refresh: Callable[[Token], None] | None = None,
    ) -> None:
        self._store = store
        self._source_id = source_id
        self.key = f"{platform}:user:{source_id}"
        self._app = app
        self._token = token
        self._now = now
        self._platform = platform
        self._margin = margin
        self._on_refresh = on_refresh
        self._lock = threading.Lock()

    def access_token(self) -> str:
        with self._lock:
            if self._token.expires_within(self._margin, self._now()):
                self._refresh(forced=False)
            return self._token.access_token

    def refresh(self) -> str:
        with self._lock:
            self._refresh(forced=True)
            return self._token.access_token

    def _refresh(self, *, forced: bool) -> None:
        stored = self._store.get(self._source_id)
        if stored is None:
            raise AuthError(f"the {self._platform} token of source {self._source_id} is no longer in the token store")
        if stored != self._token:
            # Rotated elsewhere since this session read it: the stored one is newer than the one that failed.
            self._token = stored
            if forced or not stored.expires_within(self._margin, self._now()):
                return
        fresh = refresh_token(self._app, self._token, platform=self._platform, now=self._now)
        try:
            self._store.put(self._source_id, fresh)  # before use: the old refresh token is dead now
        except Exception as exc:
            reason = _one_line(str(exc), 120) or type(exc).__name__
            raise AuthError(f"the refreshed {self._platform} token could not be saved ({reason})") from None
        self._token = fresh
        log.info("refreshed the user token", extra={"source": self._source_id, "event": "token_refreshed"})
        if self._on_refresh is not None:
            self._on_refresh(fresh)


class StaticToken:
    """An app-only bearer token: nothing to refresh, so a 401 means the token itself is wrong."""

    def __init__(self, token: SecretStr, platform: str) -> None:
        self._token = token
        self._platform = platform
        # every source on this app token shares its window; a digest names it without holding it
        self.key = f"{platform}:app:{hashlib.sha256(token.get_secret_value().encode()).hexdigest()[:16]}"

    def access_token(self) -> str:
        return self._token.get_secret_value()

    def refresh(self) -> str:
        raise AuthError(f"{self._platform} refused the app token")


class ClientCredentials(ABC):
    """An app-only token from a client-credentials grant (Reddit, TikTok): fetched on first use, renewed
    `margin` before it expires and after a 401, kept in memory only. A subclass makes the platform's
    token request in `grant`; nothing here logs or raises a message holding the secret or a token."""

    margin: ClassVar[timedelta] = REFRESH_MARGIN

    def __init__(self, key: str, now: Callable[[], datetime] = utcnow) -> None:
        # names the credential (a digest), so every source on this app shares its window and quota
        self.key = key
        self._now = now
        self._token: str | None = None
        self._expires_at: datetime | None = None
        self._lock = threading.Lock()

    def access_token(self) -> str:
        with self._lock:
            if self._token is None or (self._expires_at is not None and self._expires_at - self.margin <= self._now()):
                self._fetch()
            assert self._token is not None
            return self._token

    def refresh(self) -> str:
        with self._lock:
            self._fetch()
            assert self._token is not None
            return self._token

    def _fetch(self) -> None:
        requested_at = self._now()
        token, lifetime = self.grant()
        self._token = token
        self._expires_at = requested_at + timedelta(seconds=lifetime) if lifetime else None

    @abstractmethod
    def grant(self) -> tuple[str, float | None]:
        """One token request: the access token and its lifetime in seconds (None when not said).

        Use `granted_token(doc, where)` on the decoded answer; raise AuthError for refused credentials.
        """


def granted_token(doc: Any, where: str) -> tuple[str, float | None]:
    """The access token and its lifetime (seconds, when a sane number) from a token endpoint's answer."""
    if not isinstance(doc, dict):
        raise Fatal(f"{where} answered with something that is not a token object")
    token = doc.get("access_token")
    if not isinstance(token, str) or not token:
        raise Fatal(f"{where} answered without an access token")
    lifetime = doc.get("expires_in")
    number = isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
    return token, lifetime if number and 0 < lifetime < 10**8 else None


def credentials_for(
    connector: type[Connector],
    source: Source,
    settings: Settings,
    *,
    now: Callable[[], datetime] = utcnow,
    on_refresh: Callable[[Token], None] | None = None,
) -> Credentials:
    if source.connection_type == "user":
        app = connector.oauth_app(settings)
        if app is None:
            raise AuthError(f"{source.platform} sources cannot use user tokens")
        try:
            store = tokens.open_store(settings)
        except UsageError as exc:  # no keyring under cron: a configuration problem, not a dead grant
            raise Fatal(str(exc)) from None
        token = store.get(source.id)
        if token is None:
            raise AuthError(f"no {_title(source.platform)} user token for source {source.id} in {store.where}")
        return OAuthSession(store, source.id, app, token, now, platform=_title(source.platform), on_refresh=on_refresh)
    credentials = connector.app_credentials(source, settings)
    if credentials is not None:
        return credentials
    raise AuthError(f"no {source.platform} credentials for source {source.id}")


def _title(platform: str) -> str:
    """The platform's name for people ("X (Twitter)"), in messages about its tokens."""
    from slsync.connectors import PLATFORMS

    info = PLATFORMS.get(platform)
    return info.title if info else platform


# --- `slsync connect` -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    source: Source
    where: str  # where the token was stored


def connect_source(
    settings: Settings,
    source_id: int,
    *,
    port: int | None,
    timeout: float,
    open_browser: bool,
    out: TextIO | None = None,
) -> Connected:
    """Authorize a source in a browser and keep its token, holding the source's lock throughout."""
    from slsync import db
    from slsync.connectors import connector_class

    with db.connect(settings) as conn:
        source = db.get_source(conn, source_id)
        app = connector_class(source.platform).oauth_app(settings)
        if app is None:
            raise UsageError(f"{source.platform} sources do not need connecting")
        title = _title(source.platform)
        if not app.client_id:
            raise UsageError(
                f"{app.client_id_setting or 'the client id'} is not set: register an app with {title} "
                "and set its OAuth 2.0 client id"
            )
        redirect_for(app, port)  # a bad callback setting fails here, before anything else
        store = tokens.open_store(settings)  # no usable keyring: one line now, not after the browser
        # The lock keeps a sync from refreshing (and so rotating) the token while it is being replaced.
        if not db.try_lock_source(conn, source_id):
            raise SlsyncError(f"source {source_id} is syncing now; connect it when the run has ended")
        try:
            token = authorize(app, platform=title, port=port, timeout=timeout, open_browser=open_browser, out=out)
            connector = connector_class(source.platform)
            with http.client(timeout=settings.http_timeout_seconds) as client:
                token = connector.after_connect(token, source, settings, client)
            if token.refresh_token is None and token.expires_at is not None:
                log.warning(
                    "%s issued no refresh token: source %s needs `slsync connect` again by %s",
                    title,
                    source_id,
                    f"{token.expires_at:%Y-%m-%d %H:%M} UTC",
                )
            store.put(source_id, token)
            db.mark_connected(conn, source_id, reconnect_by=token.reconnect_by)
            return Connected(db.get_source(conn, source_id), store.where)
        finally:
            if not conn.closed:
                db.unlock_source(conn, source_id)
