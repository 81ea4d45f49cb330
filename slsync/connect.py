"""`slsync connect` and the credentials of a run: the layer above the connectors that joins a source, its
platform's connector, the token store and the database.

`slsync connect` runs the OAuth 2.0 authorization code flow with PKCE for native apps (RFC 8252,
RFC 7636): a one-shot callback server on 127.0.0.1, a `state` checked in constant time, an S256
challenge. User tokens live in the token store only. Nothing here logs or raises a message holding a
code, verifier, token or client secret.
"""

from __future__ import annotations

import errno
import html
import logging
import secrets
import socketserver
import sys
import threading
import time
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs, urlsplit

from slsync import db, http, tokens
from slsync.auth import (
    Credentials,
    OAuthApp,
    OAuthSession,
    authorize_url,
    code_challenge,
    exchange_code,
    new_state,
    new_verifier,
    one_line,
    utcnow,
)
from slsync.connectors import PLATFORMS, connector_class
from slsync.connectors.base import Context
from slsync.errors import AuthError, Fatal, SlsyncError, UsageError
from slsync.tokens import Token, TokenStore

if TYPE_CHECKING:
    import httpx

    from slsync.budget import Budgets
    from slsync.config import Settings
    from slsync.connectors.base import Connector, Quota
    from slsync.models import Source

log = logging.getLogger("slsync.connect")

DEFAULT_PORT = 8765
CALLBACK_PATH = "/callback"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class ConsentDenied(AuthError):
    """The user (or the platform) refused the authorization: nothing was stored."""


class CallbackTimeout(SlsyncError):
    """The browser never came back to the callback in time."""


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
                    "callback server: ignored a request for %s (not the callback path)", one_line(target.path, 80)
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
        """Serve callbacks from this thread until one is answered or `timeout` has passed. A serving thread of its
        own, started just before a Ctrl-C or SIGTERM, could be left half-started and print a traceback at exit."""
        self.timeout = 0.1  # how long handle_request waits for a request before the loop looks again
        deadline = time.monotonic() + timeout
        while not self.done.is_set() and time.monotonic() < deadline:
            self.handle_request()
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
        detail = one_line(result.error + (f": {result.description}" if result.description else ""))
        raise ConsentDenied(f"{platform} did not authorize slsync ({detail}); nothing was stored")
    assert result.code is not None
    return exchange_code(
        app, code=result.code, redirect_uri=redirect.uri, verifier=verifier, platform=platform, now=now
    )


# --- the credentials of a run -----------------------------------------------------------------------


def open_token_store(settings: Settings, conn: db.Connection, kind: tokens.StoreKind | None = None) -> TokenStore:
    """The token store SLSYNC_TOKEN_STORE names (or `kind`); the database store works on `conn`, the connection
    that holds the source's lock, so a refresh reads and writes the row under that lock."""
    return tokens.open_store(settings, kind=kind, database=db.TokenTable(conn))


def credentials_for(
    connector: type[Connector],
    source: Source,
    settings: Settings,
    *,
    conn: db.Connection | None = None,
    now: Callable[[], datetime] = utcnow,
    on_refresh: Callable[[Token], None] | None = None,
) -> Credentials:
    if source.connection_type == "user":
        app = connector.oauth_app(settings)
        if app is None:
            raise AuthError(f"{source.platform} sources cannot use user tokens")
        try:
            store = tokens.open_store(settings, database=db.TokenTable(conn) if conn is not None else None)
        except UsageError as exc:
            if settings.token_store == "database":  # the key: wrong for every source, so the command stops
                raise
            raise Fatal(str(exc)) from None  # no keyring under cron: a configuration problem, not a dead grant
        token = store.get(source.id)
        if token is None:
            raise AuthError(f"no {_title(source.platform)} user token for source {source.id} in {store.where}")
        return OAuthSession(store, source.id, app, token, now, platform=_title(source.platform), on_refresh=on_refresh)
    try:
        credentials = connector.app_credentials(source, settings)
    except UsageError as exc:  # a platform setting with a bad value: this source cannot run until it is fixed
        raise Fatal(str(exc)) from None
    if credentials is not None:
        return credentials
    raise AuthError(f"no {source.platform} credentials for source {source.id}")


def context_for(
    conn: db.Connection,
    connector: type[Connector],
    source: Source,
    settings: Settings,
    *,
    now: Callable[[], datetime],
    deadline: float | None,
    budgets: Budgets,
    quota: Quota,
    http: httpx.Client | None,
) -> Context:
    """What a run over `source` lends its connector (a sync, or reading its posts again): the credentials,
    looked up when first needed (a renewal that moves the grant's end is written back), the command's clock,
    deadline, rate-limit budgets, quota ledger and HTTP client."""
    return Context(
        now=now,
        settings=settings,
        credentials=lambda: credentials_for(
            connector,
            source,
            settings,
            conn=conn,
            now=now,
            on_refresh=lambda token: db.set_reconnect_by(conn, source.id, token.reconnect_by),
        ),
        deadline=deadline,
        budgets=budgets,
        quota=quota,
        http=http,
    )


def _title(platform: str) -> str:
    """The platform's name for people ("X (Twitter)"), in messages about its tokens."""
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
        # no usable keyring, no key for the database store: one line now, not after the browser
        store = open_token_store(settings, conn)
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


# --- `slsync tokens` --------------------------------------------------------------------------------


@dataclass
class Migration:
    """What `slsync tokens migrate` did, per source."""

    source: str
    target: str
    moved: list[int] = field(default_factory=list)
    # only in the target already (moved by an earlier run)
    already: list[int] = field(default_factory=list)
    # in neither store (never connected, or disconnected)
    missing: list[int] = field(default_factory=list)
    # syncing now: moved by the next run of the command
    busy: list[int] = field(default_factory=list)
    # a different token in each store: both kept, for the operator to decide
    conflicts: list[int] = field(default_factory=list)


def migrate_tokens(settings: Settings, target: tokens.StoreKind) -> Migration:
    """Move every user token from the store SLSYNC_TOKEN_STORE names to `target`: copied, then deleted from the
    old store, under the source's lock (no refresh rotates it meanwhile). A run interrupted between the two
    finds the same token in both and finishes the move; running it again moves nothing more."""
    if target == settings.token_store:
        raise UsageError(f"the tokens are in the {target} store already (SLSYNC_TOKEN_STORE={target})")
    report = Migration(settings.token_store, target)
    with db.connect(settings) as conn:
        old = open_token_store(settings, conn)
        new = open_token_store(settings, conn, kind=target)
        for source_id in db.user_source_ids(conn):
            if not db.try_lock_source(conn, source_id):
                report.busy.append(source_id)
                continue
            try:
                _move_token(old, new, source_id, report)
            finally:
                db.unlock_source(conn, source_id)
    log.info(
        "moved %d tokens from the %s store to the %s store",
        len(report.moved), report.source, report.target, extra={"event": "tokens_migrated"},
    )  # fmt: skip
    return report


def _move_token(old: TokenStore, new: TokenStore, source_id: int, report: Migration) -> None:
    token, there = old.get(source_id), new.get(source_id)
    if token is None:
        (report.already if there is not None else report.missing).append(source_id)
        return
    if there is not None and there != token:
        report.conflicts.append(source_id)
        return
    if there is None:
        new.put(source_id, token)
    old.delete(source_id)
    report.moved.append(source_id)


def rotate_token_key(settings: Settings) -> tokens.Rotation:
    """`slsync tokens rotate-key`: reseal every token of the database store under the first key."""
    if settings.token_store != "database":
        raise UsageError(f"rotate-key works on the database token store; SLSYNC_TOKEN_STORE is {settings.token_store}")
    cipher = tokens.token_cipher(settings)
    with db.connect(settings) as conn:
        rotation = tokens.reseal(db.TokenTable(conn), cipher)
    log.info("resealed %d tokens", rotation.resealed, extra={"event": "tokens_resealed"})
    return rotation
