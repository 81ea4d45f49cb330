"""The token store: a 0600 file replaced atomically that concurrent threads and processes never lose
writes to, the OS keyring when there is one, and a one-line fix when there is none."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail

from slsync import tokens
from slsync.config import Settings
from slsync.errors import UsageError
from slsync.tokens import FileStore, KeyringStore, Token

WHEN = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def token(n: int) -> Token:
    return Token(f"access-{n}", f"refresh-{n}", WHEN + timedelta(seconds=n), "tweet.read users.read", "bearer")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_token_survives_a_round_trip_and_its_repr_hides_the_secrets() -> None:
    original = token(1)
    assert Token.from_json(original.to_json()) == original
    assert Token.from_json(Token("a").to_json()) == Token("a")
    assert "access-1" not in repr(original) and "refresh-1" not in repr(original)


def test_expiry_is_judged_against_the_given_clock() -> None:
    assert token(0).expires_within(timedelta(minutes=2), WHEN - timedelta(minutes=1))
    assert not token(0).expires_within(timedelta(minutes=2), WHEN - timedelta(minutes=3))
    assert not Token("a").expires_within(timedelta(minutes=2), WHEN + timedelta(days=9999))


def test_the_file_store_writes_0600_in_a_0700_directory_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "data" / "tokens.json")
    assert store.get(1) is None
    for n in range(5):
        store.put(n, token(n))
        assert mode(store.path) == 0o600
    store.delete(3)
    store.delete(99)  # absent: fine
    assert mode(store.path) == 0o600 and mode(store.path.parent) == 0o700
    assert [store.get(n) for n in range(5)] == [token(0), token(1), token(2), None, token(4)]
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]


def test_a_failed_write_keeps_the_old_file_whole_and_removes_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path / "tokens.json")
    store.put(1, token(1))
    before = store.path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.put(2, token(2))
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.json.lock"]


def test_a_damaged_token_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UsageError, match=f"the token file {path} is damaged; remove it and connect"):
        FileStore(path).get(1)


def test_concurrent_threads_lose_no_write(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "tokens.json")
    start = threading.Barrier(8)

    def writer(worker: int) -> None:
        start.wait()
        for n in range(15):
            FileStore(store.path).put(worker * 100 + n, token(worker * 100 + n))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(store.get(w * 100 + n) == token(w * 100 + n) for w in range(8) for n in range(15))
    assert len(store._read()) == 120


def _process_writer(path: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    store = FileStore(Path(path))
    for n in range(15):
        store.put(worker * 100 + n, token(worker * 100 + n))


def test_concurrent_processes_lose_no_write(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_process_writer, args=(str(path), w, start)) for w in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = FileStore(path)
    assert all(store.get(w * 100 + n) == token(w * 100 + n) for w in range(4) for n in range(15))
    assert len(store._read()) == 60 and mode(path) == 0o600


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.passwords:
            from keyring.errors import PasswordDeleteError

            raise PasswordDeleteError(username)
        del self.passwords[(service, username)]


def test_the_keyring_store_keeps_one_entry_per_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    backend = MemoryKeyring()
    monkeypatch.setattr(keyring, "get_keyring", lambda: backend)
    monkeypatch.setattr(keyring, "get_password", backend.get_password)
    monkeypatch.setattr(keyring, "set_password", backend.set_password)
    monkeypatch.setattr(keyring, "delete_password", backend.delete_password)
    store = tokens.open_store(Settings(data_dir=tmp_path, token_store="keyring", _env_file=None))
    assert isinstance(store, KeyringStore) and store.where == "the OS keyring"
    store.put(5, token(5))
    assert store.get(5) == token(5) and store.get(6) is None
    assert list(backend.passwords) == [("slsync", "source-5")]
    store.delete(5)
    store.delete(5)
    assert backend.passwords == {}
    assert not (tmp_path / "tokens.json").exists()


def test_no_usable_keyring_is_one_line_naming_the_file_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(keyring, "get_keyring", lambda: fail.Keyring())
    with pytest.raises(UsageError) as missing:
        tokens.open_store(Settings(data_dir=tmp_path, token_store="keyring", _env_file=None))
    assert "\n" not in str(missing.value) and "SLSYNC_TOKEN_STORE=file" in str(missing.value)
    store = tokens.open_store(Settings(data_dir=tmp_path, token_store="file", _env_file=None))
    assert isinstance(store, FileStore) and store.path == tmp_path / "tokens.json"
