"""The small base every platform connector stands on.

A connector turns a source's search parameters and cursor into pages of normalized mentions. It
never touches SQL, the terminal or the token store: the engine lends it an HTTP client and
credentials through a Context, and saves each page as it arrives.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from slsync import http
from slsync.auth import BearerAuth, ClientCredentials, Credentials, OAuthApp, StaticToken
from slsync.budget import Budgets, RateBudgets
from slsync.config import PlatformSettings
from slsync.errors import Fatal, RateLimited, UsageError
from slsync.models import Mention, Page, RateLimit, Source, Stored

if TYPE_CHECKING:
    import httpx
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.tokens import Token

SEARCH_KEYS = ("keywords", "hashtags", "mentions", "exclude", "languages")
# a cursor as stored: connector-owned JSON (None before a first sync)
CursorDoc = Mapping[str, Any] | None


# --- option parsers that several connectors share (`options = {"name": parser}`) --------------------


def flag(value: str) -> bool:
    """`--option NAME=yes|no` (also true/false, on/off, 1/0)."""
    lowered = value.strip().lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, not {value!r}")


def whole_number(unit: str, maximum: int) -> Callable[[str], int]:
    """A parser of `--option NAME=N` for a whole number of `unit` from 0 to `maximum`."""

    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"expected a number of {unit}, not {value!r}") from None
        if not 0 <= number <= maximum:
            raise ValueError(f"expected from 0 to {maximum} {unit}, not {number}")
        return number

    return parse


def _is_set(value: Any) -> bool:
    secret = getattr(value, "get_secret_value", None)
    text = secret() if secret is not None else value
    return bool(text.strip()) if isinstance(text, str) else text is not None


def window_left(what: str, limits: RateLimit | None) -> str:
    """What a probe says of a call that went through: "X search answered (449 of 450 calls left until 10:15 UTC)"."""
    if limits is None or limits.remaining is None:
        return f"{what} answered"
    of = f" of {limits.limit:,}" if limits.limit else ""
    until = f" until {limits.reset_at:%H:%M} UTC" if limits.reset_at else ""
    return f"{what} answered ({limits.remaining:,}{of} calls left{until})"


class NoSettings(PlatformSettings):
    """A platform that needs no settings."""


def oauth_app(
    settings: Any, scopes: tuple[str, ...], *, authorize_url: str = "", token_url: str = "", **options: Any
) -> OAuthApp:
    """A platform's OAuth app from its settings' client_id, client_secret, oauth_callback, authorize_url
    and token_url (unless given), with the variables that set them named for messages."""
    return OAuthApp(
        authorize_url=authorize_url or settings.authorize_url,
        token_url=token_url or settings.token_url,
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scopes=scopes,
        redirect_uri=settings.oauth_callback,
        client_id_setting=settings.env_name("client_id"),
        client_secret_setting=settings.env_name("client_secret"),
        redirect_uri_setting=settings.env_name("oauth_callback"),
        **options,
    )


class Quota(Protocol):
    """A daily quota in units per credential, shared through the database by every process."""

    def spend(self, key: str, units: int, daily_limit: int, day: date) -> int | None:
        """Take units if they fit today; the units left, or None (then make no call)."""

    def exhaust(self, key: str, daily_limit: int, day: date) -> None:
        """The platform said the quota is spent: no more calls with this credential until the day ends."""

    def use_unique(self, key: str, item: str, limit: int, window: timedelta) -> int | None:
        """Count `item` against at most `limit` distinct items per rolling `window` (Instagram: 30 hashtags
        per account per 7 days). An item already counted in the window is free and does not restart its
        window. The slots left after it, or None when it does not fit (then make no call)."""


class Context:
    """What the engine lends a connector for one run: a clock, an HTTP client, credentials."""

    def __init__(
        self,
        now: Callable[[], datetime],
        settings: Settings | None = None,
        credentials: Callable[[], Credentials] | None = None,
        deadline: float | None = None,
        budgets: Budgets | None = None,
        quota: Quota | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.now = now
        self.settings = settings
        self.budgets = budgets or RateBudgets(now)
        self._quota = quota
        # time.monotonic() by which the run must end; HTTP retries never wait past it
        self.deadline = deadline
        self._credentials_factory = credentials
        self._credentials: Credentials | None = None
        # a client lent by the command is shared by its workers (and closed by it); else one of our own
        self._http = http
        self._own_http = http is None

    @property
    def quota(self) -> Quota:
        if self._quota is None:
            raise RuntimeError("this run was given no quota ledger")
        return self._quota

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = http.client(timeout=self.settings.http_timeout_seconds if self.settings else 30.0)
        return self._http

    @property
    def credentials(self) -> Credentials:
        """Looked up on first use, so a platform that needs none never opens the token store."""
        if self._credentials is None:
            if self._credentials_factory is None:
                raise RuntimeError("this run was given no credentials")
            self._credentials = self._credentials_factory()
        return self._credentials

    def close(self) -> None:
        if self._own_http and self._http is not None:
            self._http.close()


@dataclass(frozen=True)
class Looked:
    """What one lookup learned of the posts it was given."""

    # the posts as the platform shows them now, normalized as a sync would store them, under the external id
    # they were stored with
    found: Sequence[Mention] = ()
    # external ids of posts the platform no longer shows (deleted, removed, suspended, made private)
    gone: Sequence[str] = ()
    limits: RateLimit | None = None
    # external ids the answer says nothing sure about (neither shown nor said to be gone): not read again
    unknown: Sequence[str] = ()


class Connector(ABC):
    platform: ClassVar[str]
    # the platform's name in messages ("X", "Reddit")
    title: ClassVar[str]
    # how a source of this platform authenticates by default ('none', 'app' or 'user'); a 'user' source
    # stays pending until `slsync connect`
    connection_type: ClassVar[str] = "none"
    # option name -> parser; `source add --option NAME=VALUE` accepts only these
    options: ClassVar[Mapping[str, Callable[[str], Any]]] = {}
    # how far back the platform's search reaches (--since older than this is refused); None: no limit
    max_lookback: ClassVar[timedelta | None] = None
    # the most items one pass over a stream can page through whatever its bound (Reddit's listings end near
    # 1,000): more new mentions than this between two syncs are cut off. None: no such cap
    listing_cap: ClassVar[int | None] = None
    # mentions a full page holds: what a run's calls are estimated from
    page_size: ClassVar[int] = 100
    # what daily_quota() counts
    quota_unit: ClassVar[str] = "units"
    # False where a source listens to what an option names (a page, an organization), not to search terms
    needs_search_terms: ClassVar[bool] = True
    # the platform's settings, declared beside the connector (config.Settings.of reads them)
    settings_model: ClassVar[type[PlatformSettings]] = NoSettings
    # options a source must give, and search keys the platform cannot use, each with what `source add` says
    requires: ClassVar[Mapping[str, str]] = {}
    refuses: ClassVar[Mapping[str, str]] = {}
    # what turns a source's config into the platform's queries, raising UsageError for what cannot be asked
    builds: ClassVar[Callable[[Mapping[str, Any]], Any] | None] = None
    # what an operator does after the platform refused the credentials ({source_id} is filled in)
    reconnect: ClassVar[str] = "fix the {platform} credentials, then: slsync sync source {source_id}"
    # a stand-in that makes up its posts: refused (added or synced) when SLSYNC_ENV=production
    development_only: ClassVar[bool] = False
    # posts one lookup call reads again (the platform's batch size); 0: the platform has no lookup
    lookup_size: ClassVar[int] = 0
    # whether a lookup needs the payload stored with a post (Mastodon: the instance's own status id)
    lookup_reads_raw: ClassVar[bool] = False
    # the settings (field names of settings_model) a source that is not connected authenticates with, all of
    # them needed: what `source add` and `doctor` name when they are not set
    credential_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, source: Source, context: Context) -> None:
        self.source = source
        self.context = context

    @classmethod
    def settings_of(cls, settings: Settings) -> Any:
        """The platform's settings (a bad value is a usage error naming its variable)."""
        return settings.of(cls.settings_model)

    @property
    def settings(self) -> Any:
        """The platform's settings for this run; a bad value fails the run with the variable named."""
        assert self.context.settings is not None
        try:
            return self.settings_of(self.context.settings)
        except UsageError as exc:
            raise Fatal(str(exc)) from None

    # --- what the engine plans with: reach, cost, quota -----------------------------------------------

    @classmethod
    def reach(cls, config: Mapping[str, Any]) -> timedelta | None:
        """How far back a sync of this source can still read what it missed (the oldest moment its calls ask
        for): a gap opens when the last finished sync began earlier. None: as far back as it needs."""
        return cls.max_lookback

    @classmethod
    def run_cost(cls, config: Mapping[str, Any], expected_mentions: float) -> int:
        """What a run is expected to spend of its credential's budget (calls; a quota's units where the
        platform counts those): by default a call per stream and page of `expected_mentions`."""
        planned = cls.builds(config) if cls.builds is not None else None
        streams = len(planned) if isinstance(planned, list) else 1
        return max(streams, 1) * max(1, math.ceil(expected_mentions / cls.page_size))

    @classmethod
    def daily_quota(cls, credentials: Credentials, settings: Settings, now: datetime) -> tuple[str, int, date] | None:
        """The daily quota a run spends, as the ledger counts it (its key, the day's limit, the quota day) and in
        the units of run_cost; None where the platform counts no daily quota."""
        return None

    @classmethod
    def oauth_app(cls, settings: Settings) -> OAuthApp | None:
        """The platform's OAuth app for `slsync connect`; None when sources are never connected."""
        return None

    @classmethod
    def after_connect(cls, token: Token, source: Source, settings: Settings, http: httpx.Client) -> Token:
        """The token `slsync connect` keeps, made from the one the code exchange gave.

        Meta, for example, swaps a short-lived user token for a long-lived one and then for the access
        token of the page the source names. Raise AuthError or UsageError to keep nothing.
        """
        return token

    @classmethod
    def app_token(cls, settings: Settings) -> SecretStr | None:
        """An app-only token used by sources that were not connected, when the settings have one."""
        return None

    @classmethod
    def app_credentials(cls, source: Source, settings: Settings) -> Credentials | None:
        """Credentials for a source that was not connected: by default the static app token, if any.

        A platform whose app credentials are obtained at run time (a client-credentials grant, a
        session) returns its own Credentials; None means the source cannot authenticate.
        """
        token = cls.app_token(settings)
        if token is None:
            return None
        return StaticToken(token, cls.platform)

    @classmethod
    def missing_settings(cls, source: Source, settings: Settings) -> list[str]:
        """The variables a run of `source` needs that are not set in this environment (empty: none missing).

        A connected source needs the app's client id to renew its token; any other source its app credentials.
        """
        if source.connection_type == "user":
            app = cls.oauth_app(settings)
            return [app.client_id_setting] if app is not None and not app.client_id else []
        if source.connection_type == "none" or cls.app_credentials(source, settings) is not None:
            return []
        platform = cls.settings_of(settings)
        unset = [f for f in cls.credential_fields if not _is_set(getattr(platform, f, None))]
        return [platform.env_name(f) for f in unset] or [f"the {cls.title} credentials"]

    def probe(self) -> str | None:
        """One cheap call that shows the source's credentials work now, made by `slsync doctor`: what it learned
        (an account's name, the calls left), or None where there is nothing to check. Raises as a run would
        (AuthError for refused credentials).

        By default, where the credentials come from a grant (a client-credentials token, a session), a new grant;
        a platform whose credentials are a token of their own overrides it with its cheapest authenticated call.
        """
        credentials = self.context.credentials
        if isinstance(credentials, ClientCredentials):
            credentials.refresh()
            return "the platform granted a token"
        return None

    @classmethod
    def reconnect_advice(cls, source_id: int) -> str:
        return cls.reconnect.format(platform=cls.platform, source_id=source_id)

    @classmethod
    def build_config(cls, search: Mapping[str, list[str]], options: Mapping[str, str]) -> dict[str, Any]:
        """Check search parameters and options at `source add` time; return the stored config."""
        if cls.needs_search_terms and not any(search.get(k) for k in ("keywords", "hashtags", "mentions")):
            raise UsageError("a source needs at least one --keyword, --hashtag or --mention")
        parsed: dict[str, Any] = {}
        for name, value in options.items():
            parser = cls.options.get(name)
            if parser is None:
                known = ", ".join(sorted(cls.options)) or "none"
                raise UsageError(f"unknown option {name!r} for {cls.platform} (known: {known})")
            try:
                parsed[name] = parser(value)
            except ValueError as exc:
                raise UsageError(f"option {name}: {exc}") from None
        config: dict[str, Any] = {k: list(search.get(k) or []) for k in SEARCH_KEYS}
        config["options"] = parsed
        cls.check_config(config)
        return config

    @classmethod
    def check_config(cls, config: Mapping[str, Any]) -> None:
        """Refuse (UsageError) at `source add` what the platform cannot be asked: by default what building
        the platform's queries (`builds`) refuses, else anything goes."""
        for name, reason in cls.requires.items():
            if not (config.get("options") or {}).get(name):
                raise UsageError(reason)
        for key, reason in cls.refuses.items():
            if config.get(key):
                raise UsageError(reason)
        if cls.builds is not None:
            cls.builds(config)

    # --- what every connector's calls share ------------------------------------------------------------

    def call(
        self,
        method: str,
        url: str,
        *,
        read_limits: Callable[[httpx.Headers], RateLimit | None] | None = None,
        auth: httpx.Auth | None = None,
        window: str | None = None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, RateLimit | None]:
        """One request under the retry policy and the run's deadline, counted in the credential's shared
        window (`window` names another one the platform counts apart, such as X's lookup endpoint); `auth`
        defaults to the bearer flow that renews a refused token once. Returns the answer (mapping its status
        to an error is the caller's) and the limits its headers report."""
        credentials = self.context.credentials
        key = credentials.key if window is None else f"{credentials.key}:{window}"
        with self.context.budgets.call(key, self.title):
            response = http.send(
                self.context.http, method, url, platform=self.title, read_limits=read_limits,
                deadline=self.context.deadline, auth=auth or BearerAuth(credentials), **kwargs,
            )  # fmt: skip
            limits = read_limits(response.headers) if read_limits else None
            self.context.budgets.record(key, limits)
        return response, limits

    def stop_if_spent(self, limits: RateLimit | None) -> None:
        """Before a further call: stop as rate limited when the platform said its window is spent."""
        if limits and limits.remaining == 0 and limits.reset_at and limits.reset_at > self.context.now():
            until = f"{limits.reset_at:%Y-%m-%d %H:%M:%S} UTC"
            raise RateLimited(f"{self.title} rate limit used up until {until}", limits.reset_at)

    # --- reading stored posts again (slsync refresh) ---------------------------------------------------

    @classmethod
    def lookup_kind(cls, post: Stored) -> str | None:
        """Which lookup reads this post again (posts of one kind share calls); None when none can."""
        return "posts" if cls.lookup_size else None

    def lookup(self, kind: str, posts: Sequence[Stored]) -> Looked:
        """Read up to `lookup_size` posts of one kind again, in one call: their counts and text now, and which
        of them the platform no longer shows."""
        raise NotImplementedError(f"{self.title} has no lookup")

    @abstractmethod
    def pages(self, cursor: CursorDoc, *, since: datetime | None, resume: CursorDoc) -> Iterator[Page]:
        """Yield pages from the API, one call each.

        cursor: what the last successful run committed (None on a first sync).
        since:  reach back to this time instead of the cursor (first sync, or --since).
        resume: the in-flight cursor of an interrupted run, which a connector may continue from.
        """
