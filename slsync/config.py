"""Settings: the only reader of the environment (and of `.env` in the working directory)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slsync.errors import UsageError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLSYNC_", env_file=".env", extra="ignore")

    # Unset: the embedded PostgreSQL under data_dir.
    database_url: str | None = None
    data_dir: Path = Field(default_factory=lambda: platformdirs.user_data_path("slsync"))
    env: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    log_format: Literal["text", "json"] = "text"
    token_store: Literal["keyring", "file"] = "keyring"
    # How long one `sync` command may run: well inside the 15-minute cron period.
    time_budget_seconds: int = Field(600, ge=10, le=3600)
    # How long one HTTP request may take before it counts as a timeout (and is retried).
    http_timeout_seconds: float = Field(30.0, gt=0, le=300)
    # The analyzer that labels new mentions: an entry point of the group slsync.analyzers.
    analyzer: str = "builtin"
    # Finished runs older than this are deleted from sl_sync_runs by `sync due`.
    run_log_days: int = Field(90, ge=1, le=3650)

    # X (Twitter). Credentials keep the platform's own names; endpoints can be pointed elsewhere.
    twitter_client_id: str | None = Field(None, validation_alias=AliasChoices("TWITTER_CLIENT_ID"))
    twitter_client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("TWITTER_CLIENT_SECRET"))
    twitter_bearer_token: SecretStr | None = Field(None, validation_alias=AliasChoices("TWITTER_BEARER_TOKEN"))
    twitter_oauth_callback: str | None = Field(None, validation_alias=AliasChoices("TWITTER_OAUTH_CALLBACK"))
    twitter_api_url: str = "https://api.x.com/2"
    twitter_authorize_url: str = "https://x.com/i/oauth2/authorize"
    twitter_token_url: str = "https://api.x.com/2/oauth2/token"

    # Reddit: app-only OAuth (client credentials); a unique user agent is required by Reddit.
    reddit_client_id: str | None = Field(None, validation_alias=AliasChoices("REDDIT_CLIENT_ID"))
    reddit_client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("REDDIT_CLIENT_SECRET"))
    reddit_user_agent: str | None = Field(None, validation_alias=AliasChoices("REDDIT_USER_AGENT"))
    reddit_api_url: str = "https://oauth.reddit.com"
    reddit_token_url: str = "https://www.reddit.com/api/v1/access_token"

    # YouTube Data API v3: an API key, and its daily quota in units (10,000 unless Google granted more).
    youtube_api_key: SecretStr | None = Field(None, validation_alias=AliasChoices("YOUTUBE_API_KEY"))
    youtube_api_url: str = "https://www.googleapis.com/youtube/v3"
    youtube_daily_quota: int = Field(10_000, ge=1)

    # Bluesky: an app password for an account; sessions are created and refreshed as needed.
    bluesky_handle: str | None = Field(None, validation_alias=AliasChoices("BLUESKY_HANDLE"))
    bluesky_app_password: SecretStr | None = Field(None, validation_alias=AliasChoices("BLUESKY_APP_PASSWORD"))
    bluesky_api_url: str = "https://bsky.social/xrpc"

    # Mastodon: each source names its instance; this, when set, replaces every instance (tests, proxies).
    mastodon_access_token: SecretStr | None = Field(None, validation_alias=AliasChoices("MASTODON_ACCESS_TOKEN"))
    # the instance that issued the token: it is sent to that instance's sources and to no other server
    mastodon_token_instance: str | None = Field(None, validation_alias=AliasChoices("MASTODON_TOKEN_INSTANCE"))
    mastodon_api_url: str | None = None

    # Facebook and Instagram: one Meta app (Facebook Login); Graph API endpoints carry the API version.
    facebook_app_id: str | None = Field(None, validation_alias=AliasChoices("FACEBOOK_APP_ID"))
    facebook_app_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("FACEBOOK_APP_SECRET"))
    facebook_oauth_callback: str | None = Field(None, validation_alias=AliasChoices("FACEBOOK_OAUTH_CALLBACK"))
    facebook_api_url: str = "https://graph.facebook.com/v23.0"
    facebook_authorize_url: str = "https://www.facebook.com/v23.0/dialog/oauth"
    facebook_token_url: str = "https://graph.facebook.com/v23.0/oauth/access_token"
    instagram_api_url: str = "https://graph.facebook.com/v23.0"
    instagram_authorize_url: str = "https://www.facebook.com/v23.0/dialog/oauth"
    instagram_token_url: str = "https://graph.facebook.com/v23.0/oauth/access_token"

    # LinkedIn Community Management API: a versioned REST API (LinkedIn-Version: YYYYMM).
    linkedin_client_id: str | None = Field(None, validation_alias=AliasChoices("LINKEDIN_CLIENT_ID"))
    linkedin_client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("LINKEDIN_CLIENT_SECRET"))
    linkedin_oauth_callback: str | None = Field(None, validation_alias=AliasChoices("LINKEDIN_OAUTH_CALLBACK"))
    linkedin_api_url: str = "https://api.linkedin.com/rest"
    linkedin_authorize_url: str = "https://www.linkedin.com/oauth/v2/authorization"
    linkedin_token_url: str = "https://www.linkedin.com/oauth/v2/accessToken"
    linkedin_version: str = Field("202609", pattern=r"^\d{6}$")

    # TikTok Research API: client credentials; daily limits per app as granted (requests and records).
    tiktok_client_key: str | None = Field(None, validation_alias=AliasChoices("TIKTOK_CLIENT_KEY"))
    tiktok_client_secret: SecretStr | None = Field(None, validation_alias=AliasChoices("TIKTOK_CLIENT_SECRET"))
    tiktok_api_url: str = "https://open.tiktokapis.com/v2"
    tiktok_token_url: str = "https://open.tiktokapis.com/v2/oauth/token/"
    tiktok_daily_requests: int = Field(1_000, ge=1)
    tiktok_daily_records: int = Field(100_000, ge=1)

    @field_validator(
        "database_url",
        "twitter_client_id",
        "twitter_client_secret",
        "twitter_bearer_token",
        "twitter_oauth_callback",
        "reddit_client_id",
        "reddit_client_secret",
        "reddit_user_agent",
        "youtube_api_key",
        "bluesky_handle",
        "bluesky_app_password",
        "mastodon_access_token",
        "mastodon_token_instance",
        "mastodon_api_url",
        "facebook_app_id",
        "facebook_app_secret",
        "facebook_oauth_callback",
        "linkedin_client_id",
        "linkedin_client_secret",
        "linkedin_oauth_callback",
        "tiktok_client_key",
        "tiktok_client_secret",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def is_production(self) -> bool:
        return self.env == "production"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process; a bad value is a usage error naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first.get("loc") else ""
        name = field.upper() if field.isupper() else f"SLSYNC_{field.upper()}" if field else "a setting"
        raise UsageError(f"invalid setting {name}: {first['msg']}") from None
