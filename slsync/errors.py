"""One exception root. Every error a user can cause or meet is an SlsyncError with a one-line message;
anything else is a bug and gets a traceback under --debug."""

from __future__ import annotations

from datetime import datetime


class SlsyncError(Exception):
    """An expected failure: printed as one line, exit code 1 unless a subclass says otherwise."""

    exit_code = 1


class UsageError(SlsyncError):
    """Bad input or configuration: the user must change something (exit 2)."""

    exit_code = 2


class SetupError(UsageError):
    """The installation cannot sync at all (the token store cannot be used, a database connection pooled by
    transaction): not a source's fault, so a sync command stops with exit 2, its other runs stop between pages,
    and no source is charged a failure."""


class TokenStoreError(SetupError):
    """The token file is another user's, unreadable or damaged; the database store's key is missing, malformed or
    not the one a token was sealed with."""


class NotFound(UsageError):
    """A named thing (source, platform) does not exist."""


class DatabaseError(SlsyncError):
    """The database failed a statement or went away (a lock or statement timeout, a full disk, a deadlock, a lost
    connection): its trouble, never charged to a source. The command ends; the next run continues."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the server said
        self.sqlstate = sqlstate


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached or started."""


class ConnectorError(SlsyncError):
    """A platform call failed; the run stops, what was saved stays saved."""


class Retriable(ConnectorError):
    """Transient: the same call may succeed later (timeouts, 5xx)."""


class Fatal(ConnectorError):
    """The same call will fail again until something changes (malformed response, bad request)."""


class AuthError(Fatal):
    """The platform refused the credentials: the source needs `slsync connect` again."""


class OutOfTime(ConnectorError):
    """The run used its time budget: it stops between pages and the next run continues."""


class RateLimited(ConnectorError):
    """The platform said stop until reset_at."""

    def __init__(self, message: str, reset_at: datetime | None) -> None:
        super().__init__(message)
        self.reset_at = reset_at


class QuotaSpent(RateLimited):
    """A daily quota is spent (YouTube's units, TikTok's requests): stop until the quota day ends."""
