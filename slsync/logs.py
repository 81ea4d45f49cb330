"""Logging to stderr (stdout belongs to results): short text lines, or one JSON object per line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

from slsync.terminal import json_line, visible

# Attributes callers pass through `extra=` that belong in a structured line.
FIELDS = ("source", "event", "trigger", "count", "pages", "fetched", "saved", "duplicates", "errors")


class JsonFormatter(logging.Formatter):
    def __init__(self, with_traceback: bool) -> None:
        super().__init__()
        self.with_traceback = with_traceback

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        doc.update({key: getattr(record, key) for key in FIELDS if hasattr(record, key)})
        if record.exc_info and self.with_traceback:
            doc["traceback"] = self.formatException(record.exc_info)
        return json_line(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, with_traceback: bool) -> None:
        super().__init__()
        self.with_traceback = with_traceback

    def format(self, record: logging.LogRecord) -> str:
        where = f"source {record.source}: " if hasattr(record, "source") else ""
        # one line whatever the message quotes (a post, a name, a platform's error text)
        line = f"slsync: {record.levelname.lower()}: {where}{visible(record.getMessage())}"
        if record.exc_info and self.with_traceback:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _not_reported(record: logging.LogRecord) -> bool:
    """Text logs leave out what the command's own output already says (a failed run's line): under cron
    both land in one mail. JSON logs keep every event for the log pipeline."""
    return not getattr(record, "reported", False)


# Libraries whose own messages say less than slsync's one line about the same failure (psycopg: "error
# ignored in rollback" when the server has gone): shown with --debug only. Without a handler of their own,
# Python would print their warnings on stderr through its last-resort handler.
LIBRARIES = ("psycopg",)


def setup(level: str, fmt: str, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(debug) if fmt == "json" else TextFormatter(debug))
    if fmt != "json":
        handler.addFilter(_not_reported)
    logger = logging.getLogger("slsync")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else getattr(logging, level))
    logger.propagate = False
    for name in LIBRARIES:
        library = logging.getLogger(name)
        library.handlers[:] = [handler] if debug else [logging.NullHandler()]
        library.propagate = False
