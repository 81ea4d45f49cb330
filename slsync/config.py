"""Settings: the only reader of the environment (and of `.env` in the working directory).

`Settings` holds the SLSYNC_* core. Each platform declares its own settings beside its connector, as a
`PlatformSettings` whose fields name their variables (TWITTER_CLIENT_ID, SLSYNC_TWITTER_API_URL ...);
`Settings.of(model)` reads one from the same environment and .env, once, when a platform first needs it.
`slsync.connectors.setting_models()` lists them all (the core first), for documentation and checks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import platformdirs
from pydantic import Field, PrivateAttr, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slsync.errors import UsageError

P = TypeVar("P", bound="PlatformSettings")


def _unset_if_blank(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


def _usage_error(exc: ValidationError, env_name: Any) -> UsageError:
    """A bad value as one line naming the variable."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first.get("loc") else ""
    return UsageError(f"invalid setting {env_name(field) if field else 'a setting'}: {first['msg']}")


class PlatformSettings(BaseSettings):
    """A platform's settings. Each field names its variable with `validation_alias`; a blank value of a
    setting that may be unset counts as unset."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object, info: ValidationInfo) -> object:
        optional = info.field_name is not None and cls.model_fields[info.field_name].default is None
        return _unset_if_blank(value) if optional else value

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias if field in cls.model_fields else None
        return alias if isinstance(alias, str) else field.upper()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLSYNC_", env_file=".env", extra="ignore")

    # Unset: the embedded PostgreSQL under data_dir.
    database_url: str | None = None
    data_dir: Path = Field(default_factory=lambda: platformdirs.user_data_path("slsync"))
    env: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    log_format: Literal["text", "json"] = "text"
    token_store: Literal["keyring", "file", "database"] = "keyring"
    # The keys of the database token store, comma-separated (the first seals, every one opens); unset: the
    # OS keyring's entry slsync/token-key. Never stored in the database.
    token_key: SecretStr | None = None
    # How long one `sync` command may run: well inside the 15-minute cron period.
    time_budget_seconds: int = Field(600, ge=10, le=3600)
    # How long one HTTP request may take before it counts as a timeout (and is retried).
    http_timeout_seconds: float = Field(30.0, gt=0, le=300)
    # How long a statement may wait for a lock, and run in all, before the command gives up on the database
    # (a sync command's sessions take at most half its time budget; a role's stricter setting wins).
    db_lock_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    db_statement_timeout_seconds: float = Field(60.0, gt=0, le=3600)
    # The analyzer that labels new mentions: an entry point of the group slsync.analyzers.
    analyzer: str = "builtin"
    # Finished runs older than this are deleted from sl_sync_runs by `sync due`.
    run_log_days: int = Field(90, ge=1, le=3650)
    # When a stored post's counts and text are read again: hours after publication, a comma-separated list
    # (empty: never on a schedule, only by `slsync refresh --all`).
    refresh_schedule: str = "1,6,24,72"
    # The most of a rate-limit window or daily quota (as left when the refresh first uses it) that the refresh
    # may take, so that finding new mentions always comes first; 0 turns the refresh in `sync due` off.
    refresh_share: float = Field(0.2, ge=0, le=1)
    # What becomes of a post the platform no longer shows: a tombstone (content, author, media and payload
    # cleared; the row stays so that no later sync stores it again) or its removal.
    deleted: Literal["tombstone", "remove"] = "tombstone"
    # Mentions published longer ago than this are deleted (unset: kept for ever).
    retention_days: int | None = Field(None, ge=1, le=36500)
    # Raw payloads of mentions fetched longer ago than this are dropped, the normalized columns kept (unset: kept).
    raw_retention_days: int | None = Field(None, ge=1, le=36500)
    # Prometheus metrics written after every command (node_exporter's textfile collector reads *.prom files).
    metrics_file: Path | None = None
    # A dead man's switch pinged at the start and the end of every `sync due` (healthchecks.io's convention).
    healthcheck_url: str | None = None

    @field_validator(
        "database_url",
        "token_key",
        "retention_days",
        "raw_retention_days",
        "metrics_file",
        "healthcheck_url",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return _unset_if_blank(value)

    @field_validator("data_dir", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        # SLSYNC_DATA_DIR= (empty) means unset: not the working directory, where it would start a new database
        if value is None or (isinstance(value, str) and not value.strip()):
            return platformdirs.user_data_path("slsync")
        return value

    @field_validator("refresh_schedule")
    @classmethod
    def _hours(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            hours = [float(p) for p in parts]
        except ValueError:
            raise ValueError("expected hours after publication separated by commas, such as 1,6,24,72") from None
        if any(not 0 < h <= 24 * 366 for h in hours) or hours != sorted(set(hours)):
            raise ValueError("expected rising hours between 0 and 8784 (a year), such as 1,6,24,72")
        return ",".join(f"{h:g}" for h in hours)

    @property
    def refresh_steps(self) -> tuple[timedelta, ...]:
        """When a post is read again, after its publication."""
        return tuple(timedelta(hours=float(h)) for h in self.refresh_schedule.split(",") if h)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    # the platforms' settings read so far; the .env file they are read from (that of the core); variables
    # given by name (Settings(TWITTER_CLIENT_ID=...)), which a platform's settings take before the environment
    _platforms: dict[type[PlatformSettings], PlatformSettings] = PrivateAttr(default_factory=dict)
    _env_file_of_platforms: Any = PrivateAttr(default=".env")
    _variables: dict[str, Any] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **values: Any) -> None:
        variables = {k: v for k, v in values.items() if k.isupper()}
        super().__init__(**{k: v for k, v in values.items() if k not in variables})
        self._env_file_of_platforms = values.get("_env_file", ".env")
        self._variables = variables

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"SLSYNC_{field.upper()}"

    def of(self, model: type[P]) -> P:
        """A platform's settings (read once; a bad value is a usage error naming its variable)."""
        with self._lock:
            if model not in self._platforms:
                try:
                    names = {model.env_name(field) for field in model.model_fields}
                    given = {k: v for k, v in self._variables.items() if k in names}
                    with _reading_env():
                        self._platforms[model] = model(_env_file=self._env_file_of_platforms, **given)
                except ValidationError as exc:
                    raise _usage_error(exc, model.env_name) from None
            return self._platforms[model]  # type: ignore[return-value]

    def using(self, *platforms: PlatformSettings) -> Settings:
        """These platforms' settings instead of the environment's (tests, embedding programs)."""
        for platform in platforms:
            self._platforms[type(platform)] = platform
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process; a bad value is a usage error naming the variable."""
    try:
        with _reading_env():
            return Settings()
    except ValidationError as exc:
        raise _usage_error(exc, Settings.env_name) from None


@contextmanager
def _reading_env() -> Iterator[None]:
    """A .env that cannot be read as text is a usage error naming it, not a traceback."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{Path('.env').resolve()} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at byte "
            f"{exc.start + 1}): save it as UTF-8"
        ) from None
    except OSError as exc:
        raise UsageError(f"{Path('.env').resolve()} cannot be read: {exc.strerror}") from None
