"""Each platform declares its settings beside its connector; config.py keeps the SLSYNC_* core and reads a
platform's settings from the same environment and .env when the platform first needs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from slsync import db
from slsync.config import Settings
from slsync.connectors import connector_class, setting_models, settings_by_variable
from slsync.connectors.twitter import TwitterSettings
from slsync.errors import UsageError
from tests.conftest import Cli

# Every variable 0.1.0 read, by the name an operator sets: none may change.
VARIABLES_0_1_0 = {
    "SLSYNC_DATABASE_URL", "SLSYNC_DATA_DIR", "SLSYNC_ENV", "SLSYNC_LOG_LEVEL", "SLSYNC_LOG_FORMAT",
    "SLSYNC_TOKEN_STORE", "SLSYNC_TIME_BUDGET_SECONDS", "SLSYNC_HTTP_TIMEOUT_SECONDS", "SLSYNC_ANALYZER",
    "SLSYNC_RUN_LOG_DAYS",
    "TWITTER_CLIENT_ID", "TWITTER_CLIENT_SECRET", "TWITTER_BEARER_TOKEN", "TWITTER_OAUTH_CALLBACK",
    "SLSYNC_TWITTER_API_URL", "SLSYNC_TWITTER_AUTHORIZE_URL", "SLSYNC_TWITTER_TOKEN_URL",
    "REDDIT_CLIENT_ID", "REDDIT_CLIENT_SECRET", "REDDIT_USER_AGENT", "SLSYNC_REDDIT_API_URL", "SLSYNC_REDDIT_TOKEN_URL",
    "YOUTUBE_API_KEY", "SLSYNC_YOUTUBE_API_URL", "SLSYNC_YOUTUBE_DAILY_QUOTA",
    "BLUESKY_HANDLE", "BLUESKY_APP_PASSWORD", "SLSYNC_BLUESKY_API_URL",
    "MASTODON_ACCESS_TOKEN", "MASTODON_TOKEN_INSTANCE", "SLSYNC_MASTODON_API_URL",
    "FACEBOOK_APP_ID", "FACEBOOK_APP_SECRET", "FACEBOOK_OAUTH_CALLBACK", "SLSYNC_FACEBOOK_API_URL",
    "SLSYNC_FACEBOOK_AUTHORIZE_URL", "SLSYNC_FACEBOOK_TOKEN_URL", "SLSYNC_INSTAGRAM_API_URL",
    "SLSYNC_INSTAGRAM_AUTHORIZE_URL", "SLSYNC_INSTAGRAM_TOKEN_URL",
    "LINKEDIN_CLIENT_ID", "LINKEDIN_CLIENT_SECRET", "LINKEDIN_OAUTH_CALLBACK", "SLSYNC_LINKEDIN_API_URL",
    "SLSYNC_LINKEDIN_AUTHORIZE_URL", "SLSYNC_LINKEDIN_TOKEN_URL", "SLSYNC_LINKEDIN_VERSION",
    "TIKTOK_CLIENT_KEY", "TIKTOK_CLIENT_SECRET", "SLSYNC_TIKTOK_API_URL", "SLSYNC_TIKTOK_TOKEN_URL",
    "SLSYNC_TIKTOK_DAILY_REQUESTS", "SLSYNC_TIKTOK_DAILY_RECORDS",
}  # fmt: skip
# And those added since, each a new name.
VARIABLES_ADDED = {
    "SLSYNC_DB_LOCK_TIMEOUT_SECONDS", "SLSYNC_DB_STATEMENT_TIMEOUT_SECONDS", "SLSYNC_TOKEN_KEY",
    "SLSYNC_REFRESH_SCHEDULE", "SLSYNC_REFRESH_SHARE", "SLSYNC_DELETED", "SLSYNC_RETENTION_DAYS",
    "SLSYNC_RAW_RETENTION_DAYS", "SLSYNC_METRICS_FILE", "SLSYNC_HEALTHCHECK_URL",
}  # fmt: skip


def test_every_setting_can_be_listed_from_code_under_the_name_0_1_0_read() -> None:
    variables = settings_by_variable()
    assert set(variables) == VARIABLES_0_1_0 | VARIABLES_ADDED
    assert setting_models()[0] is Settings  # the core first, then each platform's own
    assert connector_class("twitter").settings_model is TwitterSettings
    model, field, info = variables["SLSYNC_YOUTUBE_DAILY_QUOTA"]
    assert model.__module__ == "slsync.connectors.youtube" and field == "daily_quota" and info.default == 10_000


def test_a_platforms_settings_come_from_the_environment_and_dot_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TWITTER_CLIENT_ID=from-dot-env\nTWITTER_OAUTH_CALLBACK=  \n", encoding="utf-8")
    monkeypatch.setenv("SLSYNC_TWITTER_API_URL", "http://127.0.0.1:9/2")
    monkeypatch.setenv("CLIENT_ID", "a field name is not a variable")
    x = Settings().of(TwitterSettings)
    assert x.client_id == "from-dot-env" and x.api_url == "http://127.0.0.1:9/2"
    assert x.oauth_callback is None  # blank is unset
    assert Settings(_env_file=None).of(TwitterSettings).client_id is None
    assert Settings(_env_file=None, TWITTER_CLIENT_ID="given").of(TwitterSettings).client_id == "given"


def test_a_bad_platform_value_is_one_line_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLSYNC_YOUTUBE_DAILY_QUOTA", "-5")
    settings = Settings(_env_file=None)  # the core and the other platforms are not held up by it
    with pytest.raises(UsageError, match=r"^invalid setting SLSYNC_YOUTUBE_DAILY_QUOTA: "):
        settings.of(connector_class("youtube").settings_model)


def test_a_bad_platform_value_fails_that_platforms_sources_only(cli: Cli, conn: db.Connection) -> None:
    cli.env["SLSYNC_LINKEDIN_VERSION"] = "June 2026"
    assert cli.ok("platforms").returncode == 0
    mock = cli.ok("source", "add", "mock", "--tenant", "1", "--name", "m", "--keyword", "acme", "--json").json()
    synced = cli("sync", "source", str(mock["id"]), "--json")
    assert synced.returncode == 0 and synced.json()["success"]
    cli.ok("source", "add", "linkedin", "--tenant", "1", "--name", "li", "--option", "organization=1", "--json")
    linked = cli("connect", "2", "--no-browser", "--timeout", "1")
    assert linked.returncode == 2 and linked.stderr.count("\n") == 1
    assert "invalid setting SLSYNC_LINKEDIN_VERSION" in linked.stderr and "Traceback" not in linked.stderr
