"""The token store: where OAuth tokens live, and nowhere else (never in sl_sources, logs or output).

`keyring` (default) uses the OS keyring; `file` keeps one JSON file of mode 0600 under the data
directory, rewritten atomically (temp file, fsync, rename) under a lock so concurrent processes
never lose each other's writes; `database` keeps each token in sl_tokens sealed with AES-256-GCM under
a key that stays outside the database (SLSYNC_TOKEN_KEY or the OS keyring), so any machine holding the
key can sync the source. This module holds the cryptography; db.TokenTable holds the SQL.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, Protocol

from slsync.config import Settings
from slsync.errors import TokenStoreError, UsageError
from slsync.terminal import user_name

KEYRING_SERVICE = "slsync"

log = logging.getLogger("slsync.tokens")


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


def _usable_keyring() -> object | None:
    """The keyring module when the OS has a usable backend (cron and servers have none), else None."""
    import keyring
    from keyring.backends import fail

    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 1) <= 0:
        return None
    return keyring


class KeyringStore:
    where = "the OS keyring"

    def __init__(self) -> None:
        keyring = _usable_keyring()
        if keyring is None:
            raise UsageError(
                "no usable OS keyring here (cron and servers have no desktop session): "
                "set SLSYNC_TOKEN_STORE=file to keep tokens in a 0600 file under SLSYNC_DATA_DIR"
            )
        self._keyring = keyring

    def get(self, source_id: int) -> Token | None:
        text = self._keyring.get_password(KEYRING_SERVICE, _key(source_id))  # type: ignore[attr-defined]
        return Token.from_json(text) if text else None

    def put(self, source_id: int, token: Token) -> None:
        self._keyring.set_password(KEYRING_SERVICE, _key(source_id), token.to_json())  # type: ignore[attr-defined]

    def delete(self, source_id: int) -> None:
        import keyring.errors

        with contextlib.suppress(keyring.errors.PasswordDeleteError):
            self._keyring.delete_password(KEYRING_SERVICE, _key(source_id))  # type: ignore[attr-defined]


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
        """The stored tokens. A file of another user, one that cannot be read or one that is not what slsync
        wrote is a configuration error (exit 2) naming the file and the fix, never a failure of a source."""
        try:
            owner = self.path.stat().st_uid
            if owner != os.geteuid():
                raise TokenStoreError(
                    f"the token file {self.path} belongs to {user_name(owner)}, not to {user_name(os.geteuid())} "
                    f"who runs slsync: run slsync as {user_name(owner)}, or make the file theirs "
                    f"(chown {user_name(os.geteuid())} {self.path})"
                )
            tokens = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise TokenStoreError(
                f"the token file {self.path} cannot be read ({exc.strerror}): it must be a file its owner "
                f"can read (chmod 600 {self.path})"
            ) from None
        except ValueError:  # not JSON, or not UTF-8
            tokens = None
        if not isinstance(tokens, dict) or not all(isinstance(v, str) for v in tokens.values()):
            raise self._damaged()
        return tokens

    def _damaged(self) -> TokenStoreError:
        return TokenStoreError(f"the token file {self.path} is damaged; remove it and connect the sources again")

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
        try:
            return Token.from_json(text) if text else None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._damaged() from None

    def put(self, source_id: int, token: Token) -> None:
        self._update(_key(source_id), token.to_json())

    def delete(self, source_id: int) -> None:
        self._update(_key(source_id), None)


# --- the database store --------------------------------------------------------------------------

# The keyring entry that holds the keys when SLSYNC_TOKEN_KEY is unset.
KEY_ENTRY = "token-key"
MAKE_A_KEY = "make one with `slsync tokens new-key`"
_NONCE = 12  # bytes: AES-GCM's standard nonce, random for each seal

# (key id, nonce + ciphertext + tag) as a row of sl_tokens holds it
Sealed = tuple[str, bytes]


def new_key() -> str:
    """A fresh 256-bit key in URL-safe base64, for SLSYNC_TOKEN_KEY."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


def key_id(key: bytes) -> str:
    """Names a key in rows and messages without revealing it: an HMAC under the key itself."""
    return hmac.new(key, b"slsync token key id", hashlib.sha256).hexdigest()[:16]


def _associated_data(source_id: int) -> bytes:
    # Binds a sealed token to its row: copied onto another source it no longer opens.
    return f"slsync token of source {source_id}".encode()


def parse_keys(text: str, origin: str) -> list[bytes]:
    """Keys separated by commas or spaces, each 32 bytes in base64 (standard or URL-safe); never echoed."""
    keys: list[bytes] = []
    for n, word in enumerate(re.split(r"[\s,]+", text.strip()), start=1):
        normal = word.replace("-", "+").replace("_", "/")
        try:
            key = base64.b64decode(normal + "=" * (-len(normal) % 4), validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise TokenStoreError(f"{origin}: key {n} is not 32 bytes in base64 ({MAKE_A_KEY})")
        if key not in keys:
            keys.append(key)
    return keys


class TokenCipher:
    """AES-256-GCM (cryptography's authenticated encryption) under the first of several keys; every one of
    them opens what it sealed, so a new key goes first and the old ones stay until `tokens rotate-key`."""

    def __init__(self, keys: Sequence[bytes], origin: str = "SLSYNC_TOKEN_KEY") -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not keys:
            raise TokenStoreError(f"{origin} holds no key ({MAKE_A_KEY})")
        self.origin = origin
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self.key_id = key_id(keys[0])

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._ciphers)

    def seal(self, source_id: int, text: str) -> Sealed:
        nonce = os.urandom(_NONCE)
        sealed = self._ciphers[self.key_id].encrypt(nonce, text.encode(), _associated_data(source_id))
        return self.key_id, nonce + sealed

    def open(self, source_id: int, sealed: Sealed) -> str:
        from cryptography.exceptions import InvalidTag

        sealed_with, blob = sealed
        cipher = self._ciphers.get(sealed_with)
        if cipher is None:
            raise TokenStoreError(
                f"the token of source {source_id} is sealed with key {sealed_with}, which {self.origin} does not "
                "hold: give this machine the keys the others use (nothing was changed)"
            )
        try:
            return cipher.decrypt(blob[:_NONCE], blob[_NONCE:], _associated_data(source_id)).decode()
        except (InvalidTag, ValueError):
            raise TokenStoreError(
                f"the token of source {source_id} does not open with key {sealed_with}: its row was altered or "
                f"copied from another source; connect source {source_id} again"
            ) from None


def token_cipher(settings: Settings) -> TokenCipher:
    """The keys of the database store: SLSYNC_TOKEN_KEY, else the OS keyring's slsync/token-key."""
    if settings.token_key is not None:
        return TokenCipher(parse_keys(settings.token_key.get_secret_value(), "SLSYNC_TOKEN_KEY"))
    keyring = _usable_keyring()
    text = keyring.get_password(KEYRING_SERVICE, KEY_ENTRY) if keyring else None  # type: ignore[attr-defined]
    if not text:
        raise TokenStoreError(
            "SLSYNC_TOKEN_STORE=database needs a key: set SLSYNC_TOKEN_KEY on every machine "
            f"({MAKE_A_KEY}), or keep it in the OS keyring as {KEYRING_SERVICE}/{KEY_ENTRY}"
        )
    origin = f"the OS keyring's {KEYRING_SERVICE}/{KEY_ENTRY}"
    return TokenCipher(parse_keys(text, origin), origin)


class TokenRows(Protocol):
    """The rows of sl_tokens (db.TokenTable implements it on a connection)."""

    def read(self, source_id: int) -> Sealed | None: ...

    def write(self, source_id: int, sealed: Sealed, *, replaceable: Collection[str]) -> bool:
        """Insert, or replace a row sealed with one of the `replaceable` key ids; False (and nothing written)
        when the row there was sealed with another key."""

    def delete(self, source_id: int) -> None: ...

    def sealed_with_other_keys(self, key_id: str) -> list[tuple[int, Sealed]]: ...

    def replace(self, source_id: int, old: Sealed, new: Sealed) -> bool:
        """Replace the row if it still holds `old`; False when it changed meanwhile."""


class DatabaseStore:
    where = "the database (sl_tokens, encrypted)"

    def __init__(self, rows: TokenRows, cipher: TokenCipher) -> None:
        self._rows = rows
        self._cipher = cipher

    def get(self, source_id: int) -> Token | None:
        sealed = self._rows.read(source_id)
        if sealed is None:
            return None
        log.debug("opening the token of source %s, sealed with key %s", source_id, sealed[0])
        return Token.from_json(self._cipher.open(source_id, sealed))

    def put(self, source_id: int, token: Token) -> None:
        sealed = self._cipher.seal(source_id, token.to_json())
        log.debug("writing the token of source %s, sealed with key %s", source_id, sealed[0])
        if not self._rows.write(source_id, sealed, replaceable=self._cipher.key_ids):
            raise TokenStoreError(
                f"the token of source {source_id} in the database is sealed with a key {self._cipher.origin} does "
                "not hold: nothing was written; give this machine the keys the others use"
            )

    def delete(self, source_id: int) -> None:
        self._rows.delete(source_id)


@dataclass
class Rotation:
    """What `slsync tokens rotate-key` did."""

    key_id: str
    resealed: int = 0
    # sealed with a key this machine does not hold, or altered: left as they were
    unreadable: list[int] = field(default_factory=list)


def reseal(rows: TokenRows, cipher: TokenCipher) -> Rotation:
    """Seal every token under the first key. Each row is its own statement, replaced only if unchanged since it
    was read (a refresh meanwhile has sealed it under the first key already): safe to interrupt and rerun."""
    rotation = Rotation(cipher.key_id)
    for source_id, sealed in rows.sealed_with_other_keys(cipher.key_id):
        try:
            text = cipher.open(source_id, sealed)
        except TokenStoreError:
            rotation.unreadable.append(source_id)
            continue
        if rows.replace(source_id, sealed, cipher.seal(source_id, text)):
            rotation.resealed += 1
    return rotation


StoreKind = Literal["keyring", "file", "database"]


def open_store(settings: Settings, *, kind: StoreKind | None = None, database: TokenRows | None = None) -> TokenStore:
    """The store SLSYNC_TOKEN_STORE names (or `kind`); the database store keeps its rows in `database`."""
    kind = kind or settings.token_store
    if kind == "file":
        return FileStore(settings.data_dir / "tokens.json")
    if kind == "database":
        if database is None:
            raise TokenStoreError("the database token store needs a database connection here")
        return DatabaseStore(database, token_cipher(settings))
    return KeyringStore()
