"""Tolerant readers of API payloads, shared by every connector's normalizer.

A field of the wrong type is absent: it reads as None (or empty), never as an exception and never
as an invented value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from slsync.models import Mention

BIGINT_END = 2**63


def count(value: Any) -> int | None:
    """A count PostgreSQL's bigint can hold, sent as a JSON number; anything else is None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < BIGINT_END:
        return value
    return None


def total(*counts: int | None) -> int | None:
    """The sum of counts (reposts and quotes), None when none is known or the sum does not fit a bigint."""
    known = [c for c in counts if c is not None]
    return count(sum(known)) if known else None


def count_in_text(value: Any) -> int | None:
    """The same, for APIs that send counts as strings of digits (YouTube)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return count(value)


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def text(value: Any) -> str | None:
    """A non-empty string, or None."""
    return value if isinstance(value, str) and value else None


def iso_time(value: Any) -> datetime | None:
    """An ISO 8601 time (2021-07-09T19:09:52+0000, ...Z), in UTC when it names no zone; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def required_time(record: Mapping[str, Any], key: str) -> datetime:
    """The record's ISO time under `key`; ValueError (the record is skipped, not stored) when it has none."""
    moment = iso_time(record.get(key))
    if moment is None:
        raise ValueError(f"a record without a valid {key}")
    return moment


def path_match(url: Any, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """`pattern` matched against the path of a URL (a profile's handle, a post's shortcode); None when the
    value is not a URL or its path does not match."""
    text_url = text(url)
    if text_url is None:
        return None
    try:
        return pattern.match(urlsplit(text_url).path)
    except ValueError:
        return None


def normalize_each(
    records: Iterable[Any], normalize: Callable[[dict[str, Any]], Mention], what: str, log: logging.Logger
) -> tuple[list[Mention], int]:
    """A page's records through `normalize`, and how many were skipped: a record that is not an object,
    or that `normalize` refuses (ValueError, TypeError, OverflowError), is logged and counted, never stored."""
    mentions, skipped = [], 0
    for record in records:
        try:
            if not isinstance(record, dict):
                raise ValueError("not an object")
            mentions.append(normalize(record))
        except (ValueError, TypeError, OverflowError) as exc:
            skipped += 1
            log.warning("skipped %s that cannot be stored: %s", what, exc, extra={"event": "skipped_record"})
    return mentions, skipped


def has_word(text: str | None, words: Iterable[str]) -> bool:
    """Whether the text holds one of the words or phrases as a whole word, in any case (local filtering
    of --keyword and --exclude where a platform cannot be asked to)."""
    if not text:
        return False
    folded = text.casefold()
    return any(re.search(rf"(?<!\w){re.escape(w.casefold())}(?!\w)", folded) for w in words)


def by_key(values: Any, key: str) -> dict[str, dict[str, Any]]:
    """The objects of a list by one of their fields (e.g. X's includes by id), skipping what has none."""
    return {str(item[key]): item for item in items(values) if isinstance(item, dict) and item.get(key) is not None}
