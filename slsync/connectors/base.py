"""The small base every platform connector stands on.

A connector turns a source's search parameters and cursor into pages of normalized mentions. It
never touches SQL, the terminal or the token store; the engine saves each page as it arrives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from slsync.errors import UsageError
from slsync.models import Page, Source

SEARCH_KEYS = ("keywords", "hashtags", "mentions", "exclude", "languages")


@dataclass(frozen=True, slots=True)
class Context:
    """What the engine lends a connector for one run."""

    now: Callable[[], datetime]


class Connector(ABC):
    platform: ClassVar[str]
    # how a source of this platform authenticates by default ('none', 'app' or 'user')
    connection_type: ClassVar[str] = "none"
    # option name -> parser; `source add --option NAME=VALUE` accepts only these
    options: ClassVar[Mapping[str, Callable[[str], Any]]] = {}

    def __init__(self, source: Source, context: Context) -> None:
        self.source = source
        self.context = context

    @classmethod
    def reconnect_advice(cls, source_id: int) -> str:
        """What an operator does after the platform refused the credentials."""
        return f"fix the {cls.platform} credentials, then: slsync sync source {source_id}"

    @classmethod
    def build_config(cls, search: Mapping[str, list[str]], options: Mapping[str, str]) -> dict[str, Any]:
        """Check search parameters and options at `source add` time; return the stored config."""
        if not any(search.get(k) for k in ("keywords", "hashtags", "mentions")):
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
        return config

    @abstractmethod
    def pages(
        self,
        cursor: Mapping[str, Any] | None,
        *,
        since: datetime | None,
        resume: Mapping[str, Any] | None,
    ) -> Iterator[Page]:
        """Yield pages from the API, one call each.

        cursor: what the last successful run committed (None on a first sync).
        since:  reach back to this time instead of the cursor (first sync, or --since).
        resume: the in-flight cursor of an interrupted run, which a connector may continue from.
        """
