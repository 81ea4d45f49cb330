"""A loopback stand-in for LinkedIn: OAuth 2.0 (/oauth/v2/authorization, /oauth/v2/accessToken) and the
Community Management REST endpoints slsync reads (/rest/organizationalEntityNotifications, /rest/posts).

What it checks, as LinkedIn does (Microsoft Learn, "Authorization Code Flow", "Refresh Tokens with
OAuth 2.0", "Organization Social Action Notifications", "Posts API", "LinkedIn Marketing API
Versioning", "Protocol Versions"):

- /oauth/v2/authorization: client id, response type, the registered redirect URI, the scopes, a state;
  redirects back with a code (or error=user_cancelled_authorize).
- /oauth/v2/accessToken: a form POST with client_id and client_secret *in the form* (HTTP Basic is
  refused here); a code works once; tokens last `expires_in` (60 days), refresh tokens
  `refresh_token_expires_in` (a year) counted from the authorization: a refresh keeps the refresh
  token and answers its remaining lifetime, unless `renew_refresh` grants a new one.
- every /rest call: a live bearer token, `LinkedIn-Version` (YYYYMM; missing: 400 VERSION_MISSING, not
  active: 426 NONEXISTENT_VERSION) and `X-Restli-Protocol-Version: 2.0.0` (missing: 400); the Rest.li
  2.0 query (URNs percent-encoded, `List(...)` and `(start:..,end:..)` unescaped).

Notifications are served newest first in the requested time range, paged with start/count and a
`paging.total`. Faults: scripted statuses per content call, a 429 from the Nth content call on (no
Retry-After unless `retry_after` is set, as LinkedIn's daily limits have none), and an expired access
token at a chosen call. Every request is recorded.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from tests.fakes.serving import QuietHandler, base_url, serve, shutdown

CLIENT_ID = "86linkedinclient"
CLIENT_SECRET = "linkedin-client-s3cret-9f8e7d"
ORGANIZATION_ID = "2414183"
ORGANIZATION = f"urn:li:organization:{ORGANIZATION_ID}"
SCOPES = {"r_organization_social", "rw_organization_admin"}
ACTIVE_VERSIONS = re.compile(r"^20(2[4-9]|3\d)\d\d$")
ACCESS_LIFETIME = 5_184_000  # 60 days
REFRESH_LIFETIME = 31_536_000  # 365 days

_CRITERIA = re.compile(
    r"^q=criteria&actions=List\(([A-Z_,]+)\)&organizationalEntity=([^&()]+)"
    r"&timeRange=\(start:(\d+),end:(\d+)\)&start=(\d+)&count=(\d+)$"
)
_BATCH = re.compile(r"^ids=List\(([^()]*(?:\([^()]*\)[^()]*)*)\)$")


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class Grant:
    refresh_token: str
    refresh_expires_at: datetime


@dataclass
class LinkedInApi:
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    registered_redirect: str | None = None
    consent: str = "grant"  # or "deny"
    scope_granted: str = "r_organization_social,rw_organization_admin"
    expires_in: int = ACCESS_LIFETIME
    # a refresh grants a new refresh token with a new year (instead of keeping the old one)
    renew_refresh: bool = False
    notifications: list[dict[str, Any]] = field(default_factory=list)
    posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    token_forms: list[dict[str, str]] = field(default_factory=list)
    token_authorizations: list[str | None] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    grants: dict[str, Grant] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)  # code -> redirect_uri
    # answer 429 to the Nth content call (0-based) and after, until cleared
    fail_429_from_call: int | None = None
    # a platform stuck on one page: every page is the first
    repeat_pages: bool = False
    retry_after: int | None = None
    # the harness interface: when the limit lifts (LinkedIn's is midnight UTC; kept for the harness)
    reset_at: datetime | None = None
    # scripted faults, one per content call: an HTTP status
    faults: list[int] = field(default_factory=list)
    # all access tokens die just before the Nth content call (0-based)
    expire_tokens_at_call: int | None = None
    server: ThreadingHTTPServer | None = None
    _serial: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- addresses --------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return base_url(self.server)

    @property
    def url(self) -> str:
        return self.base + "/rest"

    @property
    def authorize_url(self) -> str:
        return self.base + "/oauth/v2/authorization"

    @property
    def token_url(self) -> str:
        return self.base + "/oauth/v2/accessToken"

    def env(self) -> dict[str, str]:
        return {
            "SLSYNC_LINKEDIN_API_URL": self.url,
            "SLSYNC_LINKEDIN_AUTHORIZE_URL": self.authorize_url,
            "SLSYNC_LINKEDIN_TOKEN_URL": self.token_url,
            "LINKEDIN_CLIENT_ID": self.client_id,
            "LINKEDIN_CLIENT_SECRET": self.client_secret,
            "SLSYNC_TOKEN_STORE": "file",
        }

    @property
    def content_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path.startswith("/rest/")]

    @property
    def lookups(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/rest/posts"]

    def delete(self, urn: str) -> None:
        del self.posts[urn]

    def edit(self, urn: str, text: str) -> None:
        self.posts[urn].update(commentary=text, lastModifiedAt=int(datetime.now(UTC).timestamp() * 1000))

    @property
    def notification_calls(self) -> list[Request]:
        return [r for r in self.requests if r.path == "/rest/organizationalEntityNotifications"]

    def secret_values(self) -> list[str]:
        """Every value that must never show up in output, logs or sl_sources."""
        return [self.client_secret, *self.issued, *(g.refresh_token for g in self.grants.values()), *self.codes]

    # --- content ----------------------------------------------------------------------------------

    def add_comment(self, moment: datetime, text: str = "", **fields: Any) -> str:
        """A COMMENT notification on one of the organization's posts, shaped like the reference sample."""
        n = next(self._serial)
        activity, comment = 7094637247890620000 + n, 7094977717598625000 + n
        urn = f"urn:li:comment:(urn:li:activity:{activity},{comment})"
        self.notifications.append({
            "subscriber": "urn:li:person:zLqTygBP8S",
            "lastModifiedAt": int(moment.timestamp() * 1000),
            "decoratedSourcePost": {"owner": ORGANIZATION, "mediaCategory": "NONE",
                                    "text": "Our new espresso blend is out", "entity": f"urn:li:share:{activity}"},
            "sourcePost": f"urn:li:activity:{activity}",
            "decoratedGeneratedActivity": {"comment": {"owner": f"urn:li:person:member{n % 5}",
                                                       "text": text or f"Comment {n} about Acme coffee",
                                                       "entity": urn, "object": f"urn:li:activity:{activity}"}},
            "action": "COMMENT",
            "notificationId": 5603453000 + n,
            "organizationalEntity": ORGANIZATION,
            "generatedActivity": f"urn:li:comment:(activity:{activity},{comment})",
            **fields,
        })  # fmt: skip
        return urn

    def add_mention(self, moment: datetime, text: str = "", *, decorated: bool = True, **fields: Any) -> str:
        """A SHARE_MENTION notification; undecorated, its text is only in the post (read by batch get)."""
        n = next(self._serial)
        urn = f"urn:li:share:{6725008584290988000 + n}"
        text = text or f"Loving the new blend from @[Acme Coffee](urn:li:organization:{ORGANIZATION_ID}) #{n}"
        notification: dict[str, Any] = {
            "lastModifiedAt": int(moment.timestamp() * 1000),
            "organizationalEntity": ORGANIZATION,
            "action": "SHARE_MENTION",
            "sourcePost": urn,
            "generatedActivity": urn,
            "notificationId": 5603454000 + n,
            **fields,
        }
        if decorated:
            notification["decoratedGeneratedActivity"] = {
                "share": {"owner": f"urn:li:person:member{n % 5}", "mediaCategory": "IMAGE", "text": text,
                          "entity": urn}
            }  # fmt: skip
        self.notifications.append(notification)
        self.posts[urn] = {
            "id": urn, "author": f"urn:li:person:member{n % 5}", "commentary": text, "visibility": "PUBLIC",
            "lifecycleState": "PUBLISHED", "createdAt": int(moment.timestamp() * 1000),
            "publishedAt": int(moment.timestamp() * 1000), "lastModifiedAt": int(moment.timestamp() * 1000),
            "distribution": {"feedDistribution": "MAIN_FEED", "thirdPartyDistributionChannels": []},
            "isReshareDisabledByAuthor": False,
        }  # fmt: skip
        return urn

    # --- OAuth ------------------------------------------------------------------------------------

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], str]:
        problems = []
        if query.get("client_id") != self.client_id:
            problems.append("invalid client_id")
        if query.get("response_type") != "code":
            problems.append("response_type must be code")
        redirect = query.get("redirect_uri", "")
        if self.registered_redirect is not None and redirect != self.registered_redirect:
            problems.append("The redirect_uri does not match the registered value")
        if not set(query.get("scope", "").split(" ")) >= SCOPES:
            problems.append("scope must include " + " ".join(sorted(SCOPES)))
        if not query.get("state"):
            problems.append("state missing")
        if problems:
            return 400, {"Content-Type": "text/plain"}, "; ".join(problems)
        if self.consent == "deny":
            answer = {"error": "user_cancelled_authorize", "error_description": "The user cancelled the authorization",
                      "state": query["state"]}  # fmt: skip
        else:
            code = f"AQ{secrets.token_urlsafe(24)}"
            with self._lock:
                self.codes[code] = redirect
            answer = {"code": code, "state": query["state"]}
        return 302, {"Location": redirect + ("&" if "?" in redirect else "?") + urlencode(answer)}, ""

    def token(self, form: dict[str, str], authorization: str | None) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_forms.append(dict(form))
            self.token_authorizations.append(authorization)
            if authorization is not None or form.get("client_secret") != self.client_secret:
                # LinkedIn wants the app's credentials in the form
                return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
            if form.get("client_id") != self.client_id:
                return 401, {"error": "invalid_client", "error_description": "Client authentication failed"}
            now = datetime.now(UTC)
            if form.get("grant_type") == "authorization_code":
                redirect = self.codes.pop(form.get("code", ""), None)
                if redirect is None or form.get("redirect_uri") != redirect:
                    return 400, {"error": "invalid_request", "error_description": "Unable to retrieve access token"}
                grant = Grant(f"AQX{secrets.token_urlsafe(30)}", now + timedelta(seconds=REFRESH_LIFETIME))
            elif form.get("grant_type") == "refresh_token":
                grant = self.grants.get(form.get("refresh_token", ""))
                if grant is None or grant.refresh_expires_at <= now:
                    return 400, {"error": "invalid_request", "error_description": "The token used in the request "
                                 "has been revoked by the user"}  # fmt: skip
                if self.renew_refresh:
                    del self.grants[grant.refresh_token]
                    grant = Grant(f"AQX{secrets.token_urlsafe(30)}", now + timedelta(seconds=REFRESH_LIFETIME))
            else:
                return 400, {"error": "unsupported_grant_type"}
            self.grants[grant.refresh_token] = grant
            access = f"AQV{secrets.token_urlsafe(40)}"
            self.issued.append(access)
            self.access_tokens.add(access)
        return 200, {
            "access_token": access,
            "expires_in": self.expires_in,
            "refresh_token": grant.refresh_token,
            "refresh_token_expires_in": int((grant.refresh_expires_at - now).total_seconds()),
            "scope": self.scope_granted,
        }

    # --- REST -------------------------------------------------------------------------------------

    def rest(self, path: str, query: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        calls = len(self.content_calls) - 1  # this call is recorded already
        if self.expire_tokens_at_call is not None and calls == self.expire_tokens_at_call:
            self.expire_tokens_at_call = None
            self.access_tokens.clear()
        status = self.faults.pop(0) if self.faults else None  # None: this call is answered as usual
        if status is not None:
            return status, {}, {"status": status, "message": f"injected HTTP {status}"}
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self.access_tokens:
            return 401, {}, {"status": 401, "serviceErrorCode": 65600, "code": "INVALID_ACCESS_TOKEN",
                             "message": "Invalid access token"}  # fmt: skip
        version = headers.get("linkedin-version")
        if not version:
            return 400, {}, {"status": 400, "code": "VERSION_MISSING",
                             "message": "A version must be present. Please specify a version by adding the "
                                        "LinkedIn-Version header."}  # fmt: skip
        if not ACTIVE_VERSIONS.match(version):
            return 426, {}, {"status": 426, "code": "NONEXISTENT_VERSION",
                             "message": f"Requested version {version} is not active"}  # fmt: skip
        if headers.get("x-restli-protocol-version") != "2.0.0":
            return 400, {}, {"status": 400, "code": "ILLEGAL_ARGUMENT",
                             "message": "Invalid query parameters passed to request"}  # fmt: skip
        if self.fail_429_from_call is not None and calls >= self.fail_429_from_call:
            extra = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
            return 429, extra, {"status": 429, "message": "Resource level throttle APPLICATION DAY limit for calls to "
                                "this resource is reached."}  # fmt: skip
        if path == "/rest/organizationalEntityNotifications":
            return self._notifications(query)
        if path == "/rest/posts":
            return self._batch_posts(query)
        if path.startswith("/rest/organizations/"):  # what `slsync doctor` asks
            organization = path.rsplit("/", 1)[1]
            return 200, {}, {"id": int(organization) if organization.isdigit() else organization,
                             "localizedName": "Acme Coffee"}  # fmt: skip
        return 404, {}, {"status": 404, "message": "No virtual resource found"}

    def _notifications(self, query: str) -> tuple[int, dict[str, str], Any]:
        match = _CRITERIA.match(query)
        if not match:
            return 400, {}, {"status": 400, "code": "ILLEGAL_ARGUMENT", "message": "Syntax exception in query"}
        actions, entity, start_ms, end_ms, start, count = match.groups()
        if "%3A" not in entity or unquote(entity) != ORGANIZATION:
            message = "Not enough permissions to access: organizationalEntityNotifications"
            return 403, {}, {"status": 403, "serviceErrorCode": 100, "code": "ACCESS_DENIED", "message": message}
        wanted = set(actions.split(","))
        found = [
            n for n in self.notifications
            if n.get("action") in wanted and int(start_ms) <= n.get("lastModifiedAt", 0) <= int(end_ms)
        ]  # fmt: skip
        found.sort(key=lambda n: n.get("lastModifiedAt", 0), reverse=True)
        first, size = 0 if self.repeat_pages else int(start), min(int(count), 100)
        page = found[first : first + size]
        body = {"paging": {"start": first, "count": size, "links": [], "total": len(found)}, "elements": page}
        return 200, {}, body

    def _batch_posts(self, query: str) -> tuple[int, dict[str, str], Any]:
        match = _BATCH.match(query)
        if not match:
            return 400, {}, {"status": 400, "code": "ILLEGAL_ARGUMENT", "message": "Syntax exception in query"}
        urns = [unquote(part) for part in match.group(1).split(",") if part]
        if any(":" in part for part in match.group(1).split(",")):
            return 400, {}, {"status": 400, "code": "ILLEGAL_ARGUMENT", "message": "URNs must be encoded"}
        results = {u: self.posts[u] for u in urns if u in self.posts}
        errors = {u: {"status": 404, "message": "Not found"} for u in urns if u not in self.posts}
        statuses = {u: 200 if u in results else 404 for u in urns}
        return 200, {}, {"results": results, "statuses": statuses, "errors": errors}

    # --- serving ----------------------------------------------------------------------------------

    def start(self) -> LinkedInApi:
        api = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Request("GET", parts.path, parts.query, headers)
                with api._lock:
                    api.requests.append(record)
                if parts.path == "/oauth/v2/authorization":
                    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    status, extra, text = api.authorize(query)
                    record.status = status
                    self.send_body(status, text.encode(), extra)
                    return
                if parts.path.startswith("/rest/"):
                    status, extra, body = api.rest(parts.path, parts.query, headers)
                else:
                    status, extra, body = 404, {}, {"status": 404, "message": "Not found"}
                record.status = status
                self.send_body(status, json.dumps(body).encode(), extra)

            def do_POST(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                headers = {k.lower(): v for k, v in self.headers.items()}
                record = Request("POST", parts.path, "", headers)
                with api._lock:
                    api.requests.append(record)
                if parts.path != "/oauth/v2/accessToken" or not headers.get("content-type", "").startswith(
                    "application/x-www-form-urlencoded"
                ):
                    status, body = 400, {"error": "invalid_request"}
                else:
                    form = {k: v[0] for k, v in parse_qs(raw).items()}
                    status, body = api.token(form, headers.get("authorization"))
                record.status = status
                self.send_body(status, json.dumps(body).encode())

        self.server = serve(Handler)
        return self

    def stop(self) -> None:
        shutdown(self.server)
