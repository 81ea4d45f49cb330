"""HTTP for connectors: one client factory, status-to-error mapping, rate-limit headers, JSON decoding.

Payloads enter the program here, so this is where text PostgreSQL cannot store (NUL, lone
surrogates) is cleaned, once. Error messages never carry request headers, URLs with credentials
or response bodies beyond a short platform message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from slsync import __version__
from slsync.errors import AuthError, Fatal, RateLimited, Retriable
from slsync.models import RateLimit

USER_AGENT = f"slsync/{__version__} (+https://github.com/slsync/slsync)"
RETRIABLE_STATUS = frozenset({500, 502, 503, 504})
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def client(*, timeout: float = 30.0) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=10.0),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def storable(value: Any) -> Any:
    """The same JSON value with NUL removed and lone surrogates replaced, so PostgreSQL accepts it."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def decode_json(response: httpx.Response, platform: str) -> Any:
    try:
        return storable(json.loads(response.content))
    except (ValueError, RecursionError):
        raise Fatal(
            f"{platform} sent a response that is not valid JSON (HTTP {response.status_code}, "
            f"{len(response.content)} bytes)"
        ) from None


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
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
    return Retriable(f"{platform} {kind} ({type(exc).__name__})")
