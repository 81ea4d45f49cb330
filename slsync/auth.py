"""Token primitives beneath the connectors: OAuth app descriptions, PKCE, the token endpoint, and the
credentials a run uses (app tokens, client-credentials grants, user tokens from the store), with the one
httpx.Auth flow that renews a refused token and sends the request again.

Refresh tokens rotate (X kills a used one, and reusing it may revoke the whole grant), so a refreshed
token is persisted before it is used and a refresh request is never retried. Nothing here logs or raises
a message holding a code, verifier, token or client secret. This module imports only http, tokens and
errors (and what lies below them): the `connect` use case lives above the connectors, in connect.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol
from urllib.parse import urlencode

import httpx

from slsync import http
from slsync.errors import AuthError, Fatal, UsageError
from slsync.tokens import Token, TokenStore

if TYPE_CHECKING:
    from pydantic import SecretStr

log = logging.getLogger("slsync.auth")

# Refresh this long before the access token expires, so a page fetched right after still gets through.
REFRESH_MARGIN = timedelta(minutes=2)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def utcnow() -> datetime:
    return datetime.now(UTC)


def one_line(text: str, limit: int = 200) -> str:
    """Platform-supplied text made safe for a terminal line: no control characters, bounded length."""
    cleaned = _CONTROL.sub(" ", text).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


# --- what a platform's OAuth app is, and what a run's credentials do --------------------------------


@dataclass(frozen=True)
class OAuthApp:
    """What `slsync connect` needs for a platform's authorization code + PKCE flow."""

    authorize_url: str
    token_url: str
    client_id: str | None
    client_secret: SecretStr | None
    scopes: tuple[str, ...]
    # the registered callback (e.g. TWITTER_OAUTH_CALLBACK); None: http://127.0.0.1:PORT/callback
    redirect_uri: str | None = None
    # the settings' names, for messages that tell an operator what to set
    client_id_setting: str = ""
    client_secret_setting: str = ""
    redirect_uri_setting: str = ""
    # how the token endpoint wants the client secret: HTTP Basic, or client_secret in the form (Meta, LinkedIn)
    client_auth: Literal["basic", "form"] = "basic"
    # Meta's token endpoint is read with GET and a query string; the others take a POSTed form
    token_method: Literal["POST", "GET"] = "POST"
    # PKCE (RFC 7636) on the code; False where the platform enables it only on request (LinkedIn), for a
    # confidential client whose secret already binds the code to the app
    pkce: bool = True


class Credentials(Protocol):
    """A bearer token for API calls, refreshed behind the connector's back where the platform allows."""

    # names the credential (never contains it): sources sharing a key share its rate-limit window
    key: str

    def access_token(self) -> str:
        """A token valid now (refreshed first when it is about to expire)."""

    def refresh(self) -> str:
        """After a 401: a new token, or AuthError when there is no way to get one."""


def refused(response: httpx.Response) -> bool:
    """What most platforms answer a token they no longer accept with."""
    return response.status_code == 401


class BearerAuth(httpx.Auth):
    """`Authorization: Bearer` from the credentials; a refused token is renewed once and the request sent
    again (httpx's auth flow, so the retry policy around a call sees one answer). A platform that says
    "refused" otherwise (Bluesky's 400 ExpiredToken, TikTok's error codes) passes its own `is_refused`.
    `refreshes` counts the renewals, for tests and logs."""

    requires_response_body = True  # is_refused may read the error body

    def __init__(self, credentials: Credentials, is_refused: Callable[[httpx.Response], bool] = refused) -> None:
        self.credentials = credentials
        self.is_refused = is_refused
        self.refreshes = 0

    def sign(self, request: httpx.Request, token: str) -> None:
        request.headers["Authorization"] = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request, self.credentials.access_token())
        response = yield request
        if self.is_refused(response):
            self.refreshes += 1
            self.sign(request, self.credentials.refresh())
            yield request


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
    reason = one_line(http.platform_message(response))
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
        raise Fatal(f"{platform} issued a token of type {one_line(str(token_type), 40)!r}, not bearer")
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
    if not app.client_id:
        # the grant is fine: this environment lacks the app's id (cron reads no shell profile), so no reconnect
        setting = app.client_id_setting or f"the {platform} client id"
        raise Fatal(
            f"{setting} is not set in this environment, and it is needed to refresh {platform} user tokens: set it "
            "where slsync runs (for cron: in the crontab), with the secret if the app has one"
        )
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
            reason = one_line(str(exc), 120) or type(exc).__name__
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
        log.info("fetched an app token for %s", self.key.split(":", 1)[0], extra={"event": "token_fetched"})

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
