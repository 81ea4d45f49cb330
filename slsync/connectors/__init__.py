"""The platform registry. A new platform is one module here and one line below."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from slsync.errors import NotFound, UsageError

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from slsync.config import PlatformSettings, Settings
    from slsync.connectors.base import Connector


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    title: str
    # "module:Class" of the connector; None while the platform is planned
    connector: str | None = None
    note: str = ""

    @property
    def state(self) -> str:
        return "active" if self.connector else "planned"


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform("twitter", "X (Twitter)", "slsync.connectors.twitter:TwitterConnector", "recent search, last 7 days"),
        Platform(
            "facebook", "Facebook", "slsync.connectors.facebook:FacebookConnector", "page visitor posts, tags, comments"
        ),
        Platform(
            "instagram", "Instagram", "slsync.connectors.instagram:InstagramConnector", "hashtags (24 h) and brand tags"
        ),
        Platform(
            "linkedin", "LinkedIn", "slsync.connectors.linkedin:LinkedInConnector", "organization mentions and comments"
        ),
        Platform("youtube", "YouTube", "slsync.connectors.youtube:YouTubeConnector", "videos and comments"),
        Platform("tiktok", "TikTok", "slsync.connectors.tiktok:TikTokConnector", "research videos, comments opt-in"),
        Platform("reddit", "Reddit", "slsync.connectors.reddit:RedditConnector", "posts, newest first"),
        Platform("bluesky", "Bluesky", "slsync.connectors.bluesky:BlueskyConnector", "post search"),
        Platform(
            "mastodon", "Mastodon", "slsync.connectors.mastodon:MastodonConnector", "hashtags; search with a token"
        ),
        Platform(
            "mock",
            "Mock",
            "slsync.connectors.mock:MockConnector",
            "deterministic development data; no credentials",
        ),
    )
}


def platform(name: str) -> Platform:
    try:
        return PLATFORMS[name]
    except KeyError:
        raise NotFound(f"unknown platform {name!r} (known: {', '.join(PLATFORMS)})") from None


def connector_class(name: str) -> type[Connector]:
    """The connector of an active platform, imported only when needed."""
    info = platform(name)
    if info.connector is None:
        raise UsageError(f"platform {name!r} is planned but not available yet (see: slsync platforms)")
    module, _, cls = info.connector.partition(":")
    return getattr(import_module(module), cls)


def setting_models() -> list[type[Settings] | type[PlatformSettings]]:
    """The core settings, then each active platform's (a model two platforms share, once)."""
    # here, not at the top: `slsync platforms` reads the registry and must not pay for pydantic
    from slsync.config import Settings

    models: list[type[Settings] | type[PlatformSettings]] = [Settings]
    for name, info in PLATFORMS.items():
        model = connector_class(name).settings_model if info.connector else None
        if model is not None and model.model_fields and model not in models:
            models.append(model)
    return models


def settings_by_variable() -> dict[str, tuple[type[Settings] | type[PlatformSettings], str, FieldInfo]]:
    """Every setting by the variable that sets it (SLSYNC_DATA_DIR, TWITTER_CLIENT_ID ...): its model, field
    and declaration (default, description, constraints)."""
    found: dict[str, tuple[type[Settings] | type[PlatformSettings], str, FieldInfo]] = {}
    for model in setting_models():
        for field, info in model.model_fields.items():
            found.setdefault(model.env_name(field), (model, field, info))
    return found
