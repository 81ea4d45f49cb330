"""The token store: where OAuth tokens live, and nowhere else (never in sl_sources, logs or output).

`keyring` (default) uses the OS keyring; `file` keeps one JSON file of mode 0600 under the data
directory, rewritten atomically (temp file, fsync, rename) under a lock so concurrent processes
never lose each other's writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from slsync.config import Settings
from slsync.errors import UsageError

KEYRING_SERVICE = "slsync"


@dataclass(frozen=True)
class Token:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    scope: str | None = None
    token_type: str = "bearer"
    # when the refresh token itself dies (LinkedIn: about a year), where the platform says
    refresh_expires_at: datetime | None = None

    @property
    def reconnect_by(self) -> datetime | None:
        """When the grant ends and only `slsync connect` helps; None while it can be renewed indefinitely."""
        if self.refresh_token:
            return self.refresh_expires_at
        return self.expires_at

    def expires_within(self, margin: timedelta, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - margin <= now

    def to_json(self) -> str:
        doc = asdict(self)
        doc["expires_at"] = self.expires_at.isoformat() if self.expires_at else None
        doc["refresh_expires_at"] = self.refresh_expires_at.isoformat() if self.refresh_expires_at else None
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> Token:
        doc = json.loads(text)
        expires = doc.get("expires_at")
        refresh_expires = doc.get("refresh_expires_at")
        return cls(
            access_token=doc["access_token"],
            refresh_token=doc.get("refresh_token"),
            expires_at=datetime.fromisoformat(expires).astimezone(UTC) if expires else None,
            scope=doc.get("scope"),
            token_type=doc.get("token_type") or "bearer",
            refresh_expires_at=datetime.fromisoformat(refresh_expires).astimezone(UTC) if refresh_expires else None,
        )


class TokenStore(Protocol):
    # where the tokens are, for messages (a path or "the OS keyring"); never a token
    where: str

    def get(self, source_id: int) -> Token | None: ...
    def put(self, source_id: int, token: Token) -> None: ...
    def delete(self, source_id: int) -> None: ...


def _key(source_id: int) -> str:
    return f"source-{source_id}"


class KeyringStore:
    where = "the OS keyring"

    def __init__(self) -> None:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 1) <= 0:
            raise UsageError(
                "no usable OS keyring here (cron and servers have no desktop session): "
                "set SLSYNC_TOKEN_STORE=file to keep tokens in a 0600 file under SLSYNC_DATA_DIR"
            )
        self._keyring = keyring

    def get(self, source_id: int) -> Token | None:
        text = self._keyring.get_password(KEYRING_SERVICE, _key(source_id))
        return Token.from_json(text) if text else None

    def put(self, source_id: int, token: Token) -> None:
        self._keyring.set_password(KEYRING_SERVICE, _key(source_id), token.to_json())

    def delete(self, source_id: int) -> None:
        import keyring.errors

        with contextlib.suppress(keyring.errors.PasswordDeleteError):
            self._keyring.delete_password(KEYRING_SERVICE, _key(source_id))


# fasteners' lock is an fcntl (POSIX record) lock, which excludes other processes but not other threads of
# this one (`sync due --concurrency` refreshes tokens from several threads): pair it with a thread lock.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(path.resolve()), threading.Lock())


class FileStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def _read(self) -> dict[str, str]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            raise UsageError(
                f"the token file {self.path} is damaged; remove it and connect the sources again"
            ) from None

    def _update(self, key: str, value: str | None) -> None:
        import fasteners

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _thread_lock(self.path), fasteners.InterProcessLock(str(self.path) + ".lock"):
            tokens = self._read()
            if value is None:
                tokens.pop(key, None)
            else:
                tokens[key] = value
            fd, temp = tempfile.mkstemp(prefix=".tokens-", dir=self.path.parent)  # created 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(tokens, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temp, self.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

    def get(self, source_id: int) -> Token | None:
        text = self._read().get(_key(source_id))
        return Token.from_json(text) if text else None

    def put(self, source_id: int, token: Token) -> None:
        self._update(_key(source_id), token.to_json())

    def delete(self, source_id: int) -> None:
        self._update(_key(source_id), None)


def open_store(settings: Settings) -> TokenStore:
    if settings.token_store == "file":
        return FileStore(settings.data_dir / "tokens.json")
    return KeyringStore()
