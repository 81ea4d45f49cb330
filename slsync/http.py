"""HTTP for connectors: one client factory, status-to-error mapping, rate-limit headers, JSON decoding.

Payloads enter the program here, so this is where text PostgreSQL cannot store (NUL, lone
surrogates) is cleaned, once. Error messages never carry request headers, URLs with credentials
or response bodies beyond a short platform message.
"""

from __future__ import annotations

import json
import math
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import tenacity

from slsync import __version__
from slsync.errors import AuthError, Fatal, RateLimited, Retriable
from slsync.models import RateLimit

USER_AGENT = f"slsync/{__version__} (+https://github.com/slsync/slsync)"
RETRIABLE_STATUS = frozenset({500, 502, 503, 504})
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What in a JSON body can decode to text PostgreSQL refuses: a \u0000 or surrogate escape (a lone
# surrogate, or half of an escaped emoji: checked, not assumed), surrogate bytes (json reads bytes with
# surrogatepass), a NUL byte (and so any UTF-16 or UTF-32 body). Numbers are made storable while decoding
# (_finite, _no_constant): every alternative here starts with a rare byte, so the search skips through a
# body ~14x faster than when it also looked for exponents and long runs of digits (1.4 ms for 30 KB).
_MAY_NEED_CLEANING = re.compile(rb"\\u0000|\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")


def _finite(text: str) -> float | None:
    """A JSON number as a float, or None where it is too large for one (jsonb has no infinity)."""
    number = float(text)
    return number if math.isfinite(number) else None


def _no_constant(_: str) -> None:
    """NaN, Infinity and -Infinity, which Python's json accepts and jsonb does not, as null."""
    return None


def client(*, timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> httpx.Client:
    """A client; clients made together share one `tls` context (from tls_context()): making one loads
    the whole CA bundle, ~20 ms of CPU."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        verify=tls if tls is not None else True,
    )


def tls_context() -> ssl.SSLContext:
    """What httpx verifies servers with by default (the certifi bundle, or SSL_CERT_FILE / SSL_CERT_DIR)."""
    return httpx.create_ssl_context()


def storable(value: Any) -> Any:
    """The same JSON value with NUL removed, lone surrogates replaced and non-finite numbers (which
    Python's json accepts and PostgreSQL's jsonb does not) made null."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def decode_json(response: httpx.Response, platform: str) -> Any:
    try:
        value = json.loads(response.content, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Fatal(
            f"{platform} sent a response that is not valid JSON (HTTP {response.status_code}, "
            f"{len(response.content)} bytes)"
        ) from None
    # Walking every value costs more than the decoding; only a body that can hold something unstorable needs it.
    return storable(value) if _MAY_NEED_CLEANING.search(response.content) else value


def header_limits(prefix: str) -> Callable[[Mapping[str, str]], RateLimit | None]:
    """A reader of `<prefix>limit`, `-remaining` and `-reset` (epoch seconds), for send(read_limits=...)."""
    return lambda headers: rate_limit(headers, prefix)


def rate_limit(headers: Mapping[str, str], prefix: str) -> RateLimit | None:
    """Read `<prefix>limit`, `<prefix>remaining` and `<prefix>reset` (epoch seconds)."""

    def number(name: str) -> int | None:
        try:
            return int(float(headers[prefix + name]))
        except (KeyError, ValueError):
            return None

    limit, remaining, reset = number("limit"), number("remaining"), number("reset")
    if limit is None and remaining is None and reset is None:
        return None
    reset_at = datetime.fromtimestamp(reset, UTC) if reset is not None and reset > 0 else None
    return RateLimit(limit=limit, remaining=remaining, reset_at=reset_at)


def platform_message(response: httpx.Response) -> str:
    """A short reason from an error body (title / detail / error fields), never the whole body."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        parts = [body.get(k) for k in ("title", "detail", "error", "error_description", "message")]
        text = ": ".join(str(p) for p in parts if isinstance(p, str | int) and str(p))
        if text:
            return storable(text)[:300]
    return response.reason_phrase or f"HTTP {response.status_code}"


def error_object(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an answer ({"error": {...}}, as Google, TikTok and others send), or {}."""
    try:
        body = json.loads(response.content)
    except (ValueError, RecursionError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return storable(error) if isinstance(error, dict) else {}


def raise_for_status(response: httpx.Response, platform: str, limits: RateLimit | None = None) -> None:
    status = response.status_code
    if status < 400:
        return
    reason = platform_message(response)
    if status == 429:
        reset_at = limits.reset_at if limits else None
        when = f" until {reset_at:%Y-%m-%d %H:%M:%S} UTC" if reset_at else ""
        raise RateLimited(f"{platform} rate limit reached{when} (HTTP 429: {reason})", reset_at)
    if status == 401:
        raise AuthError(f"{platform} refused the credentials (HTTP 401: {reason})")
    if status in RETRIABLE_STATUS:
        raise Retriable(f"{platform} is failing (HTTP {status}: {reason})")
    raise Fatal(f"{platform} refused the request (HTTP {status}: {reason})")


def transport_error(exc: httpx.HTTPError, platform: str) -> Retriable:
    """A timeout or connection failure, as a retriable error with no URL or headers in it."""
    if isinstance(exc, httpx.TimeoutException):
        kind = "timed out"
    elif isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        kind = "broke off its response"
    else:
        kind = "could not be reached"
    return Retriable(f"{platform} {kind} ({type(exc).__name__})")


# --- the retry policy every connector uses --------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retry timeouts, connection errors and 500/502/503/504; never another 4xx.

    Waits grow exponentially with full jitter (a random wait between 0 and base x 2^n, at most
    max_wait), or follow Retry-After; a 429 whose reset is at most `near_reset` away is waited out.
    A run's deadline bounds the whole: no wait that would pass it.
    """

    attempts: int = 4
    base: float = 0.5
    max_wait: float = 30.0
    near_reset: float = 30.0


DEFAULT_POLICY = RetryPolicy()


class _TryAgain(Exception):
    def __init__(self, response: httpx.Response, wait: float | None) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.wait = wait


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    platform: str,
    read_limits: Callable[[httpx.Headers], RateLimit | None] | None = None,
    deadline: float | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> httpx.Response:
    """One request under the retry policy.

    Returns the last response (the caller maps a 4xx, or a 5xx / 429 left after the retries, with
    raise_for_status); raises Retriable when the platform could not be reached at all.
    """

    def attempt() -> httpx.Response:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise transport_error(exc, platform) from None
        if response.status_code in RETRIABLE_STATUS:
            hint = retry_after(response)
            if hint is not None and hint > policy.max_wait:
                return response  # asked to come back later than a run may wait
            raise _TryAgain(response, hint)
        if response.status_code == 429 and read_limits is not None:
            limits = read_limits(response.headers)
            hint = retry_after(response)
            if hint is None and limits and limits.reset_at:
                hint = max((limits.reset_at - datetime.now(UTC)).total_seconds(), 0.0)
            if hint is not None and hint <= policy.near_reset:
                raise _TryAgain(response, hint + 1.0)
        return response

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _TryAgain) and exc.wait is not None:
            return exc.wait
        return random.uniform(0, min(policy.max_wait, policy.base * 2 ** (state.attempt_number - 1)))

    def past_deadline(state: tenacity.RetryCallState) -> bool:
        return deadline is not None and time.monotonic() + (state.upcoming_sleep or 0.0) > deadline

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts) | past_deadline,
        wait=wait,
        retry=tenacity.retry_if_exception_type((Retriable, _TryAgain)),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except _TryAgain as exc:
        return exc.response
