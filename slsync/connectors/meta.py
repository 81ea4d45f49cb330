"""What Facebook and Instagram share: one Meta app (Facebook Login), the Graph API's tokens, errors,
throttling headers and paging.

Meta's token endpoint is read with GET and takes the app secret in the query string, so nothing here
ever logs a URL: Graph calls carry the token in an `Authorization: Bearer` header, and the paging
links Meta returns (which hold an `access_token`) are never followed as given: only their cursor
parameters are kept (`next_params`). No message raised here holds a token, code or secret.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import Field, SecretStr

from slsync import http
from slsync.auth import BearerAuth, OAuthApp
from slsync.config import PlatformSettings
from slsync.connectors import base
from slsync.connectors.fields import mapping, normalize_each, text
from slsync.errors import AuthError, Fatal, RateLimited, Retriable, UsageError
from slsync.models import RateLimit
from slsync.tokens import Token

if TYPE_CHECKING:
    from slsync.connectors.base import Connector
    from slsync.models import Mention

log = logging.getLogger("slsync.meta")

TITLES = {"facebook": "Facebook", "instagram": "Instagram"}
# Usage headers are percentages of the platform's allowance; stop at this one, before Meta blocks the app.
USAGE_THRESHOLD = 90
# When a usage header says stop but gives no estimate: app-level usage is counted over a rolling hour,
# so an hour from now the calls counted today have left the window.
DEFAULT_BACKOFF = timedelta(hours=1)
USAGE_HEADERS = ("x-app-usage", "x-page-usage", "x-business-use-case-usage", "x-ad-account-usage")
USAGE_KEYS = ("call_count", "total_time", "total_cputime", "acc_id_util_pct")
# Graph error codes (developers.facebook.com/docs/graph-api/guides/error-handling)
AUTH_CODES = frozenset({102, 190})
THROTTLE_CODES = frozenset({4, 17, 32, 613, *range(80001, 80015)})
TRANSIENT_CODES = frozenset({1, 2})
# "Unsupported get request" / "does not exist" / "missing permissions": the object is not readable with this token
NOT_READABLE_CODES = frozenset({100, 803})
# Long-lived user tokens last about 60 days; when Meta leaves expires_in out, assume that.
LONG_LIVED = timedelta(days=60)
# GET /?ids=a,b: up to 50 objects a call ("multiple ID read requests"; Graph API 26.0 drops them: 23.0, the
# version slsync's URLs name, has them)
MULTI_READ_SIZE = 50
# the refusal of a multiple-ID read that names objects it cannot load: 803 "Some of the aliases you requested do
# not exist: a,b", or 100 (subcode 33) "Object with ID 'a' does not exist, cannot be loaded due to missing
# permissions, or does not support this operation"
MISSING_CODES = frozenset({100, 803})
_GRAPH_ID = re.compile(r"[0-9]+(?:_[0-9]+)*")


def title(platform: str) -> str:
    """The name people know ("Facebook") from the registry name ("facebook")."""
    return TITLES.get(platform, platform)


# --- the app and its tokens -----------------------------------------------------------------------


GRAPH = "https://graph.facebook.com/v23.0"
DIALOG = "https://www.facebook.com/v23.0/dialog/oauth"


class MetaSettings(PlatformSettings):
    """The one Meta app (Facebook Login) that Facebook and Instagram sources connect through, and each
    platform's Graph API and Facebook Login endpoints (the API version is part of the URL)."""

    client_id: str | None = Field(None, validation_alias="FACEBOOK_APP_ID")
    client_secret: SecretStr | None = Field(None, validation_alias="FACEBOOK_APP_SECRET")
    oauth_callback: str | None = Field(None, validation_alias="FACEBOOK_OAUTH_CALLBACK")
    facebook_api_url: str = Field(GRAPH, validation_alias="SLSYNC_FACEBOOK_API_URL")
    facebook_authorize_url: str = Field(DIALOG, validation_alias="SLSYNC_FACEBOOK_AUTHORIZE_URL")
    facebook_token_url: str = Field(f"{GRAPH}/oauth/access_token", validation_alias="SLSYNC_FACEBOOK_TOKEN_URL")
    instagram_api_url: str = Field(GRAPH, validation_alias="SLSYNC_INSTAGRAM_API_URL")
    instagram_authorize_url: str = Field(DIALOG, validation_alias="SLSYNC_INSTAGRAM_AUTHORIZE_URL")
    instagram_token_url: str = Field(f"{GRAPH}/oauth/access_token", validation_alias="SLSYNC_INSTAGRAM_TOKEN_URL")

    def url(self, platform: str, which: str) -> str:
        """A platform's `api`, `authorize` or `token` endpoint."""
        return str(getattr(self, f"{platform}_{which}_url"))


def oauth_app(settings: MetaSettings, *, platform: str, scopes: tuple[str, ...]) -> OAuthApp:
    """The Facebook Login dialog for `slsync connect`; the token endpoint is read with GET, secret in the query."""
    authorize_url, token_url = settings.url(platform, "authorize"), settings.url(platform, "token")
    return base.oauth_app(
        settings, scopes, authorize_url=authorize_url, token_url=token_url, client_auth="form", token_method="GET"
    )


def long_lived_user_token(token: Token, settings: MetaSettings, client: httpx.Client, *, platform: str) -> Token:
    """Swap the short-lived user token of the code exchange (about an hour) for a long-lived one (about
    60 days): a page token made from a long-lived user token does not expire."""
    name = title(platform)
    if not settings.client_id or settings.client_secret is None:
        raise UsageError("FACEBOOK_APP_ID and FACEBOOK_APP_SECRET must both be set to connect a Meta source")
    params = {
        "grant_type": "fb_exchange_token",
        "client_id": settings.client_id,
        "client_secret": settings.client_secret.get_secret_value(),
        "fb_exchange_token": token.access_token,
    }
    requested_at = datetime.now(UTC)
    response = _plain_get(client, settings.url(platform, "token"), f"{name} token endpoint", params=params)
    if response.status_code >= 400:
        error = read_error(response, secrets=(token.access_token, params["client_secret"]))
        if response.status_code >= 500 or error.transient:
            raise Retriable(f"{name} could not extend the user token now ({error.describe()}); try again")
        if error.code in AUTH_CODES or error.code == 101 or response.status_code == 401:
            raise AuthError(
                f"{name} refused to extend the user token ({error.describe()}); "
                "check FACEBOOK_APP_ID and FACEBOOK_APP_SECRET and connect again"
            )
        raise Fatal(f"{name} refused to extend the user token ({error.describe()})")
    doc = mapping(http.decode_json(response, f"{name} token endpoint"))
    access = text(doc.get("access_token"))
    if access is None:
        raise Fatal(f"{name} token endpoint answered the token exchange without an access token")
    lifetime = doc.get("expires_in")
    seconds = lifetime if isinstance(lifetime, int) and not isinstance(lifetime, bool) and lifetime > 0 else None
    return Token(
        access_token=access,
        expires_at=requested_at + (timedelta(seconds=seconds) if seconds else LONG_LIVED),
        scope=token.scope,
    )


def page_token(user_token: Token, page_id: str, api_url: str, client: httpx.Client, *, platform: str) -> Token:
    """The access token of the page the source names (`GET /{page-id}?fields=access_token,name`).

    Meta answers a page the user does not manage either with the public page without an access token,
    or with an error (100 / 803): both are refused with the page id named. A page token made from a
    long-lived user token has no expiry (expires_at None); only `slsync connect` replaces it.
    """
    name = title(platform)
    response = _plain_get(
        client,
        f"{api_url.rstrip('/')}/{page_id}",
        name,
        params={"fields": "access_token,name"},
        headers={"Authorization": f"Bearer {user_token.access_token}"},
    )
    if response.status_code >= 400:
        error = read_error(response, secrets=(user_token.access_token,))
        if response.status_code >= 500 or error.transient:
            raise Retriable(f"{name} could not be asked for page {page_id} now ({error.describe()}); try again")
        if error.code in AUTH_CODES or response.status_code == 401:
            raise AuthError(f"{name} refused the user token ({error.describe()})")
        if error.code in NOT_READABLE_CODES or response.status_code in (400, 403, 404):
            raise UsageError(
                f"{name} page {page_id} is not a page this account manages ({error.describe()}); nothing was stored"
            )
        raise Fatal(f"{name} refused the page token request ({error.describe()})")
    doc = mapping(http.decode_json(response, name))
    access = text(doc.get("access_token"))
    if access is None:
        raise UsageError(
            f"{name} page {page_id} is not a page this account manages (no page access token was granted); "
            "nothing was stored"
        )
    return Token(access_token=access, scope=user_token.scope)


def _plain_get(client: httpx.Client, url: str, what: str, **kwargs: Any) -> httpx.Response:
    """One GET with no retries (a token exchange is not replayed) and no URL in any error."""
    try:
        return client.get(url, **kwargs)
    except httpx.HTTPError as exc:
        raise http.transport_error(exc, what) from None


# --- throttling -----------------------------------------------------------------------------------


def _percentages(value: Any) -> list[tuple[float, float | None]]:
    """(highest usage %, minutes to regain access) of every usage object found in a decoded header.

    X-App-Usage and X-Page-Usage are one object; X-Business-Use-Case-Usage maps business ids to lists
    of objects (one per use case type)."""
    found: list[tuple[float, float | None]] = []
    if isinstance(value, dict):
        numbers = [value.get(k) for k in USAGE_KEYS]
        pcts = [float(n) for n in numbers if isinstance(n, int | float) and not isinstance(n, bool)]
        regain = value.get("estimated_time_to_regain_access")
        minutes = float(regain) if isinstance(regain, int | float) and not isinstance(regain, bool) else None
        if pcts or minutes:
            found.append((max(pcts, default=0.0), minutes))
        for nested in value.values():
            if isinstance(nested, dict | list):
                found.extend(_percentages(nested))
    elif isinstance(value, list):
        for item in value:
            found.extend(_percentages(item))
    return found


def usage_limits(
    headers: Mapping[str, str], now: datetime | None = None, *, threshold: int = USAGE_THRESHOLD
) -> RateLimit | None:
    """The throttling headers as a RateLimit of 100 (percent): remaining = 100 - the highest usage.

    At or above `threshold` (or when Meta estimates a wait), remaining is 0 and reset_at is when access
    returns, so the engine and the run's budgets stop calling before Meta blocks the app. None when no
    usage header is present or none can be read.
    """
    readings: list[tuple[float, float | None]] = []
    for name in USAGE_HEADERS:
        raw = headers.get(name)
        if not raw:
            continue
        try:
            readings.extend(_percentages(json.loads(raw)))
        except (ValueError, RecursionError):
            log.debug("ignored an unreadable %s header", name)
    if not readings:
        return None
    highest = max(p for p, _ in readings)
    wait = max((m for _, m in readings if m), default=0.0)
    now = now or datetime.now(UTC)
    if highest >= threshold or wait > 0:
        reset_at = now + (timedelta(minutes=min(wait, 7 * 24 * 60)) if wait > 0 else DEFAULT_BACKOFF)
        return RateLimit(limit=100, remaining=0, reset_at=reset_at.replace(microsecond=0))
    return RateLimit(limit=100, remaining=max(0, 100 - int(highest + 0.999)), reset_at=None)


def _until(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphError:
    """What a Graph error body says: {"error": {"message", "type", "code", "error_subcode", "is_transient"}}."""

    status: int
    code: int | None
    subcode: int | None
    message: str
    transient: bool

    def describe(self) -> str:
        codes = f"code {self.code}" + (f"/{self.subcode}" if self.subcode else "") if self.code is not None else ""
        return ", ".join(p for p in (f"HTTP {self.status}", codes) if p) + f": {self.message}"


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_error(response: httpx.Response, *, secrets: tuple[str, ...] = ()) -> GraphError:
    """Meta's error object, tolerant of any body; `secrets` are blanked from the message just in case."""
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        body = None
    error = mapping(mapping(body).get("error"))
    message = text(error.get("message")) or text(error.get("error_user_msg")) or response.reason_phrase or ""
    message = " ".join(str(http.storable(message)).split())
    for secret in secrets:
        if secret:
            message = message.replace(secret, "[redacted]")
    if len(message) > 200:
        message = message[:197] + "..."
    return GraphError(
        status=response.status_code,
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        message=message or "no message",
        transient=error.get("is_transient") is True,
    )


class GraphRefused(Fatal):
    """Meta refused the request for a reason that calling again will not change; `code` is its Graph error code."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


def raise_for_error(
    response: httpx.Response, limits: RateLimit | None, *, platform: str, token: str = "", now: datetime | None = None
) -> None:
    """Classify a Graph error: refused token -> AuthError, throttling -> RateLimited, transient -> Retriable,
    anything else -> GraphRefused (a Fatal with the error code), each one line from Meta's message."""
    status = response.status_code
    if status < 400:
        return
    name = title(platform)
    error = read_error(response, secrets=(token,))
    if error.code in AUTH_CODES or status == 401:
        raise AuthError(f"{name} refused the access token ({error.describe()})")
    if error.code in THROTTLE_CODES or status == 429:
        now = now or datetime.now(UTC)
        reset_at = limits.reset_at if limits and limits.reset_at and limits.reset_at > now else None
        retry = http.retry_after(response, now)
        if reset_at is None and retry:
            reset_at = now + timedelta(seconds=retry)
        reset_at = reset_at or (now + DEFAULT_BACKOFF).replace(microsecond=0)
        raise RateLimited(f"{name} rate limit reached until {_until(reset_at)} ({error.describe()})", reset_at)
    if error.code in TRANSIENT_CODES or error.transient or status in http.RETRIABLE_STATUS or status >= 500:
        raise Retriable(f"{name} is failing ({error.describe()})")
    raise GraphRefused(f"{name} refused the request ({error.describe()})", error.code)


# --- one Graph API call ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphResponse:
    """What graph_get returns: the decoded JSON object and the usage Meta reported with it (None: no header)."""

    body: dict[str, Any]
    limits: RateLimit | None


def graph_get(connector: Connector, url: str, params: Mapping[str, str]) -> GraphResponse:
    """One Graph API GET with the source's token, under the retry policy and the run's shared budget.

    The token travels in `Authorization: Bearer`, never in the URL; a page token cannot be renewed, so a
    refused one is an error at once. The usage headers are recorded in the run's budgets for the
    credential, so once usage passes the threshold the next call of this run (and of every worker sharing
    the credential) stops as rate limited instead of being made.
    """
    context, platform = connector.context, connector.platform
    response, limits = connector.call(
        "GET", url, read_limits=lambda headers: usage_limits(headers, context.now()),
        auth=BearerAuth(context.credentials, is_refused=lambda _: False), params=dict(params),
    )  # fmt: skip
    token = context.credentials.access_token()
    raise_for_error(response, limits, platform=platform, token=token, now=context.now())
    body = http.decode_json(response, connector.title)
    if not isinstance(body, dict):
        raise Fatal(f"{connector.title} sent an unexpected response: not a JSON object")
    if "error" in body:  # an error object with HTTP 200 (batch-style answers): classified the same way
        as_error = httpx.Response(400, content=json.dumps({"error": body["error"]}).encode())
        raise_for_error(as_error, limits, platform=platform, token=token, now=context.now())
    return GraphResponse(body, limits)


# --- paging ---------------------------------------------------------------------------------------


def next_params(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The query parameters of the next page, or None on the last page.

    Meta says a page is the last when `paging.next` is absent. The `next` link itself is not followed:
    it holds the access token and points wherever Meta says, so only its non-empty query parameters
    (cursors, `until`, `__paging_token`...) are kept, without `access_token`, for the caller to lay over
    its own; when the link names no cursor, `paging.cursors.after` is used.
    """
    paging = mapping(body.get("paging"))
    link = text(paging.get("next"))
    if link is None:
        return None
    try:
        query = dict(parse_qsl(urlsplit(link).query))
    except ValueError:
        query = {}
    query.pop("access_token", None)
    query.pop("appsecret_proof", None)
    if not any(k in query for k in ("after", "until", "__paging_token", "offset", "since")):
        after = text(mapping(paging.get("cursors")).get("after"))
        if after is None:
            return None
        query["after"] = after
    return {str(k): str(v) for k, v in query.items()}


# --- reading objects again ------------------------------------------------------------------------


def read_again(
    connector: Connector, api_url: str, ids: Sequence[str], fields: str, normalize: Callable[[dict[str, Any]], Mention]
) -> base.Looked:
    """The objects `ids` as they are now, by one multiple-ID read (`GET /?ids=...&fields=...`).

    Meta refuses the whole read when one object cannot be loaded, naming it: deleted, hidden, or no longer
    readable with this token, which its answer does not tell apart. The read is made again without the objects
    it named (one call more), and they count as gone only when that read of the others goes through: when Meta
    names every object asked for, the token may simply not read objects by id, and nothing is concluded (they
    are asked again at the next step of the schedule).
    """
    asked, gone = list(ids), []
    url = api_url.rstrip("/") + "/"
    while asked:
        response, limits = connector.call(
            "GET", url, read_limits=lambda headers: usage_limits(headers, connector.context.now()),
            auth=BearerAuth(connector.context.credentials, is_refused=lambda _: False),
            params={"ids": ",".join(asked), "fields": fields},
        )  # fmt: skip
        named = _named_missing(response, asked)
        if named is None:
            raise_for_error(
                response, limits, platform=connector.platform, token=connector.context.credentials.access_token(),
                now=connector.context.now(),
            )  # fmt: skip
            body = mapping(http.decode_json(response, connector.title))
            objects = [{**mapping(body.get(i)), "id": i} for i in asked if isinstance(body.get(i), dict)]
            found, _ = normalize_each(objects, normalize, f"an object {connector.title} sent", log)
            return base.Looked(found, gone, limits)
        if set(named) == set(asked):
            log.warning(
                "%s would load none of %d objects by id (%s): not read again this time",
                connector.title, len(asked), read_error(response).describe(), extra={"event": "lookup_refused"},
            )  # fmt: skip
            return base.Looked((), gone, limits)
        gone += named
        asked = [i for i in asked if i not in named]
    return base.Looked((), gone, None)


def _named_missing(response: httpx.Response, asked: Sequence[str]) -> list[str] | None:
    """The ids asked for that a refusal names as not loadable (None: the answer is not such a refusal)."""
    if response.status_code < 400:
        return None
    error = read_error(response)
    if error.code not in MISSING_CODES:
        return None
    try:
        message = str(mapping(mapping(json.loads(response.content)).get("error")).get("message") or "")
    except (ValueError, RecursionError):
        return None
    named = [i for i in asked if i in set(_GRAPH_ID.findall(message))]
    return named or None
