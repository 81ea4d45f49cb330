"""Credentials for connectors: app-only tokens from the settings, user tokens from `slsync connect`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from slsync.errors import AuthError

if TYPE_CHECKING:
    from pydantic import SecretStr

    from slsync.config import Settings
    from slsync.connectors.base import Connector, Credentials
    from slsync.models import Source


class StaticToken:
    """An app-only bearer token: nothing to refresh, so a 401 means the token itself is wrong."""

    def __init__(self, token: SecretStr, platform: str) -> None:
        self._token = token
        self._platform = platform

    def access_token(self) -> str:
        return self._token.get_secret_value()

    def refresh(self) -> str:
        raise AuthError(f"{self._platform} refused the app token")


def credentials_for(connector: type[Connector], source: Source, settings: Settings) -> Credentials:
    if source.connection_type == "user":
        raise AuthError(f"{source.platform} user tokens are not supported yet")
    token = connector.app_token(settings)
    if token is not None:
        return StaticToken(token, source.platform)
    raise AuthError(f"no {source.platform} credentials for source {source.id}")
