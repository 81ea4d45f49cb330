"""The database token store: tokens sealed with AES-256-GCM in sl_tokens under keys that never enter the
database; several keys and `tokens rotate-key`; a wrong or missing key is one line, exit 2, nothing written;
`tokens migrate` both ways between every store; refreshes that stay single-flight across machines."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from slsync import db, tokens
from slsync.auth import OAuthSession
from slsync.config import Settings
from slsync.errors import NotFound, UsageError
from slsync.tokens import DatabaseStore, FileStore, Token, TokenCipher, key_id, parse_keys
from tests.conftest import Cli, Result, add_mock_source, add_x_source
from tests.fakes.browser import connect_in_browser
from tests.fakes.oauth_server import XAuth, running
from tests.fakes.x_api import XApi
from tests.test_user_token import IssuedTokens

ROOT = Path(__file__).resolve().parent.parent
WHEN = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
KEY_A, KEY_B, KEY_C = (tokens.new_key() for _ in range(3))


def raw(key: str) -> bytes:
    return base64.urlsafe_b64decode(key)


def token(n: int) -> Token:
    return Token(f"access-{n}-canary", f"refresh-{n}-canary", WHEN + timedelta(hours=n), "tweet.read", "bearer")


def user_source(conn: db.Connection, name: str = "acme", tenant_id: int = 1) -> int:
    config = {"keywords": ["acme"], "hashtags": [], "mentions": [], "exclude": [], "languages": [], "options": {}}
    return db.add_source(
        conn, tenant_id=tenant_id, platform="twitter", name=name, connection_type="user", config=config,
        interval_minutes=15, status="connected",
    )  # fmt: skip


def store(conn: db.Connection, *keys: str) -> DatabaseStore:
    return DatabaseStore(db.TokenTable(conn), TokenCipher([raw(k) for k in keys]))


def row(conn: db.Connection, source_id: int) -> tuple[str, bytes] | None:
    return db.TokenTable(conn).read(source_id)


def table_text(conn: db.Connection) -> str:
    """Every row of every table as PostgreSQL prints it (bytea as hex)."""
    names = [
        r["relname"]
        for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace"
        ).fetchall()
    ]
    return "\n".join(r["t"] for name in names for r in conn.execute(f"SELECT t::text AS t FROM {name} t").fetchall())


def forms(secret: str) -> list[str]:
    """A secret as text and as PostgreSQL would print its bytes."""
    return [secret, secret.encode().hex()]


# --- keys and the cipher ------------------------------------------------------------------------------------


def test_keys_are_32_bytes_in_either_base64_and_a_bad_one_is_named_never_shown() -> None:
    key = os.urandom(32)
    standard, urlsafe = base64.b64encode(key).decode(), base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert parse_keys(f"{standard}, {urlsafe}\n{KEY_A}", "SLSYNC_TOKEN_KEY") == [key, raw(KEY_A)]
    for bad in ("hunter2-not-a-key", base64.b64encode(os.urandom(16)).decode(), "", "@@@@"):
        with pytest.raises(UsageError) as error:
            parse_keys(f"{KEY_A},{bad}" if bad else bad, "SLSYNC_TOKEN_KEY")
        message = str(error.value)
        assert "SLSYNC_TOKEN_KEY: key" in message and "slsync tokens new-key" in message and "\n" not in message
        assert (bad not in message) if bad else True
        assert KEY_A not in message


def test_a_sealed_token_opens_with_any_of_the_keys_and_only_on_its_own_source() -> None:
    old, new = TokenCipher([raw(KEY_A)]), TokenCipher([raw(KEY_B), raw(KEY_A)])
    sealed = old.seal(5, token(1).to_json())
    assert sealed[0] == key_id(raw(KEY_A)) and b"canary" not in sealed[1]
    assert old.seal(5, "same")[1] != old.seal(5, "same")[1]  # a fresh nonce each time
    assert Token.from_json(new.open(5, sealed)) == token(1)
    assert new.seal(5, "x")[0] == key_id(raw(KEY_B)) == new.key_id
    with pytest.raises(UsageError, match="does not open with key .* altered or copied from another source"):
        new.open(6, sealed)
    tampered = (sealed[0], sealed[1][:-1] + bytes([sealed[1][-1] ^ 1]))
    with pytest.raises(UsageError, match="does not open"):
        old.open(5, tampered)
    with pytest.raises(UsageError, match=f"sealed with key {sealed[0]}, which SLSYNC_TOKEN_KEY does not hold"):
        TokenCipher([raw(KEY_C)]).open(5, sealed)


def test_the_key_comes_from_the_setting_or_the_keyring_and_its_absence_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import keyring
    from keyring.backends import fail

    from tests.fakes.keyring_file import FileKeyring

    settings = Settings(data_dir=tmp_path, token_store="database", token_key=f"{KEY_B},{KEY_A}", _env_file=None)
    assert tokens.token_cipher(settings).key_id == key_id(raw(KEY_B))
    assert isinstance(settings.token_key, SecretStr) and KEY_B not in repr(settings)

    monkeypatch.setenv("TEST_KEYRING_FILE", str(tmp_path / "keyring.json"))
    backend = FileKeyring()
    monkeypatch.setattr(keyring, "get_keyring", lambda: backend)
    monkeypatch.setattr(keyring, "get_password", backend.get_password)
    no_key = Settings(data_dir=tmp_path, token_store="database", _env_file=None)
    with pytest.raises(UsageError) as missing:
        tokens.token_cipher(no_key)
    assert str(missing.value) == (
        "SLSYNC_TOKEN_STORE=database needs a key: set SLSYNC_TOKEN_KEY on every machine (make one with "
        "`slsync tokens new-key`), or keep it in the OS keyring as slsync/token-key"
    )
    backend.set_password("slsync", "token-key", KEY_C)
    assert tokens.token_cipher(no_key).key_id == key_id(raw(KEY_C))
    backend.set_password("slsync", "token-key", "short")
    with pytest.raises(UsageError, match="the OS keyring's slsync/token-key: key 1 is not 32 bytes"):
        tokens.token_cipher(no_key)
    monkeypatch.setattr(keyring, "get_keyring", lambda: fail.Keyring())
    with pytest.raises(UsageError, match="needs a key"):
        tokens.token_cipher(no_key)


# --- the store on a real database ---------------------------------------------------------------------------


def test_the_database_store_keeps_one_sealed_row_per_source(conn: db.Connection) -> None:
    one, two = user_source(conn), user_source(conn, "other", tenant_id=2)
    sealed = store(conn, KEY_A)
    assert sealed.get(one) is None
    sealed.put(one, token(1))
    sealed.put(two, token(2))
    sealed.put(one, token(3))
    assert sealed.get(one) == token(3) and sealed.get(two) == token(2)
    rows = conn.execute("SELECT source_id, tenant_id, key_id FROM sl_tokens ORDER BY source_id").fetchall()
    assert [(r["source_id"], r["tenant_id"], r["key_id"]) for r in rows] == [
        (one, 1, key_id(raw(KEY_A))),
        (two, 2, key_id(raw(KEY_A))),
    ]
    text = table_text(conn)
    for secret in ("access-3-canary", "refresh-3-canary", "access-2-canary", KEY_A, raw(KEY_A).hex()):
        assert all(form not in text for form in forms(secret))
    sealed.delete(two)
    sealed.delete(two)
    assert sealed.get(two) is None
    with pytest.raises(NotFound, match="no source with id 999"):
        sealed.put(999, token(1))
    db.remove_source(conn, one)  # the token goes with its source
    assert conn.execute("SELECT count(*) AS n FROM sl_tokens").fetchone()["n"] == 0


def test_a_row_copied_onto_another_source_does_not_open(conn: db.Connection) -> None:
    victim, attacker = user_source(conn), user_source(conn, "mine")
    store(conn, KEY_A).put(victim, token(1))
    conn.execute(
        "INSERT INTO sl_tokens (source_id, tenant_id, key_id, sealed)"
        " SELECT %s, tenant_id, key_id, sealed FROM sl_tokens WHERE source_id = %s",
        (attacker, victim),
    )
    with pytest.raises(UsageError, match=f"the token of source {attacker} does not open"):
        store(conn, KEY_A).get(attacker)


def test_a_machine_with_other_keys_overwrites_nothing(conn: db.Connection) -> None:
    source_id = user_source(conn)
    store(conn, KEY_A).put(source_id, token(1))
    before = row(conn, source_id)
    stranger = store(conn, KEY_C)
    with pytest.raises(UsageError, match="which SLSYNC_TOKEN_KEY does not hold"):
        stranger.get(source_id)
    with pytest.raises(UsageError, match="sealed with a key SLSYNC_TOKEN_KEY does not hold: nothing was written"):
        stranger.put(source_id, token(2))
    assert row(conn, source_id) == before
    store(conn, KEY_C, KEY_A).put(source_id, token(2))  # holding the old key too, it may replace it
    assert store(conn, KEY_C).get(source_id) == token(2)


def test_rotation_reseals_every_row_once_and_survives_an_interruption(conn: db.Connection) -> None:
    ids = [user_source(conn, f"s{n}") for n in range(5)]
    for n, source_id in enumerate(ids):
        store(conn, KEY_A).put(source_id, token(n))
    both = TokenCipher([raw(KEY_B), raw(KEY_A)])

    class Interrupted(Exception):
        pass

    class Failing(db.TokenTable):
        replaced = 0

        def replace(self, source_id: int, old: tokens.Sealed, new: tokens.Sealed) -> bool:
            if self.replaced == 2:
                raise Interrupted
            self.replaced += 1
            return super().replace(source_id, old, new)

    with pytest.raises(Interrupted):
        tokens.reseal(Failing(conn), both)
    under = conn.execute("SELECT key_id, count(*) AS n FROM sl_tokens GROUP BY 1").fetchall()
    assert {r["key_id"]: r["n"] for r in under} == {key_id(raw(KEY_B)): 2, key_id(raw(KEY_A)): 3}
    # a refresh meanwhile seals one under the new key: the rotation leaves it alone
    DatabaseStore(db.TokenTable(conn), both).put(ids[4], token(40))
    assert tokens.reseal(db.TokenTable(conn), both) == tokens.Rotation(both.key_id, resealed=2, unreadable=[])
    assert tokens.reseal(db.TokenTable(conn), both) == tokens.Rotation(both.key_id, resealed=0, unreadable=[])
    only_new = store(conn, KEY_B)
    assert [only_new.get(i) for i in ids] == [token(0), token(1), token(2), token(3), token(40)]


def test_refreshes_on_two_machines_are_single_flight_and_never_reuse_a_refresh_token(
    conn: db.Connection, settings: Settings
) -> None:
    """Two machines each loaded the same expiring token; one holds the source's lock and refreshes, the other
    waits for the lock, reads the row again and uses the rotated token: one refresh, no dead token sent."""
    from tests.test_oauth import make_app

    source_id = user_source(conn)
    with running(XAuth()) as auth, db.connect(settings) as other_conn:
        pair = auth.issue()
        first = Token(pair.access_token, pair.refresh_token, WHEN + timedelta(minutes=1), "tweet.read")
        store(conn, KEY_A).put(source_id, first)
        clock = lambda: WHEN  # noqa: E731  both machines' clocks: the token expires within the margin
        sessions = [
            OAuthSession(store(c, KEY_A), source_id, make_app(auth), first, clock, platform="X")
            for c in (conn, other_conn)
        ]
        for machine, session in zip((conn, other_conn), sessions, strict=True):
            assert db.try_lock_source(machine, source_id)
            try:
                assert session.access_token() == auth.issued[1].access_token
            finally:
                db.unlock_source(machine, source_id)
        refreshes = auth.token_calls("refresh_token")
        assert [c.form["refresh_token"] for c in refreshes] == [pair.refresh_token]
        assert store(conn, KEY_A).get(source_id).refresh_token == auth.issued[1].refresh_token


# --- the commands ---------------------------------------------------------------------------------------------


@pytest.fixture
def keyring_cli(cli: Cli, tmp_path: Path) -> Cli:
    """The CLI with a file-backed OS keyring it can use (tests.fakes.keyring_file)."""
    cli.env.update(
        PYTHON_KEYRING_BACKEND="tests.fakes.keyring_file.FileKeyring",
        TEST_KEYRING_FILE=str(tmp_path / "keyring.json"),
        PYTHONPATH=str(ROOT),
    )
    return cli


def one_error(result, code: int) -> str:  # noqa: ANN001
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("slsync: error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_new_key_prints_a_key_the_store_takes(cli: Cli) -> None:
    keys = {cli.ok("tokens", "new-key").stdout.strip() for _ in range(2)}
    assert len(keys) == 2 and all(len(raw(k)) == 32 for k in keys)


def test_migrate_moves_the_tokens_both_ways_between_every_store_and_again_moves_nothing(
    conn: db.Connection, keyring_cli: Cli, tmp_path: Path
) -> None:
    ids = [user_source(conn, f"s{n}") for n in range(3)]
    never = user_source(conn, "never connected")
    add_mock_source(conn)
    file_path = tmp_path / "data" / "tokens.json"
    for n, source_id in enumerate(ids):
        FileStore(file_path).put(source_id, token(n))
    keyring_cli.env["SLSYNC_TOKEN_KEY"] = KEY_A

    def migrate(source: str, target: str) -> dict:
        return keyring_cli.ok("tokens", "migrate", "--to", target, "--json", env={"SLSYNC_TOKEN_STORE": source}).json()

    first = migrate("file", "database")
    assert first == {
        "from": "file", "to": "database", "moved": ids, "already": [], "missing": [never], "busy": [], "conflicts": [],
    }  # fmt: skip
    assert FileStore(file_path).get(ids[0]) is None and json.loads(file_path.read_text()) == {}
    assert [store(conn, KEY_A).get(i) for i in ids] == [token(0), token(1), token(2)]
    again = migrate("file", "database")
    assert again["moved"] == [] and again["already"] == ids

    assert migrate("database", "keyring")["moved"] == ids
    assert conn.execute("SELECT count(*) AS n FROM sl_tokens").fetchone()["n"] == 0
    entries = json.loads((tmp_path / "keyring.json").read_text())
    assert sorted(entries) == [f"slsync/source-{i}" for i in ids]
    assert migrate("keyring", "database")["moved"] == ids
    assert migrate("database", "file")["moved"] == ids
    assert [FileStore(file_path).get(i) for i in ids] == [token(0), token(1), token(2)]

    same = keyring_cli("tokens", "migrate", "--to", "file", env={"SLSYNC_TOKEN_STORE": "file"})
    assert "the tokens are in the file store already" in one_error(same, 2)
    assert "--to 'paper'" in one_error(keyring_cli("tokens", "migrate", "--to", "paper"), 2)


def test_migrate_finishes_an_interrupted_move_and_keeps_both_of_two_different_tokens(
    conn: db.Connection, cli: Cli, tmp_path: Path, settings: Settings
) -> None:
    half_moved, different, busy = (user_source(conn, f"s{n}") for n in range(3))
    file_store = FileStore(tmp_path / "data" / "tokens.json")
    for source_id in (half_moved, different, busy):
        file_store.put(source_id, token(source_id))
    store(conn, KEY_A).put(half_moved, token(half_moved))  # copied, then interrupted before the delete
    store(conn, KEY_A).put(different, token(99))
    cli.env.update(SLSYNC_TOKEN_KEY=KEY_A, SLSYNC_TOKEN_STORE="file")
    with db.connect(settings) as syncing:
        assert db.try_lock_source(syncing, busy)
        result = cli("tokens", "migrate", "--to", "database", "--json")
        assert result.returncode == 1
        doc = result.json()
        assert (doc["moved"], doc["conflicts"], doc["busy"]) == ([half_moved], [different], [busy])
    assert file_store.get(different) == token(different) and store(conn, KEY_A).get(different) == token(99)
    text = cli("tokens", "migrate", "--to", "database")
    assert text.returncode == 1 and "have a different token in each store: both were kept" in text.stdout
    assert store(conn, KEY_A).get(busy) == token(busy) and file_store.get(busy) is None


@pytest.mark.parametrize("problem", ["missing", "wrong", "malformed"])
@pytest.mark.parametrize("command", ["migrate", "migrate back", "sync source", "sync due", "rotate-key"])
def test_a_wrong_or_missing_key_is_one_line_exit_2_and_nothing_is_written(
    conn: db.Connection, x_cli: Cli, tmp_path: Path, problem: str, command: str
) -> None:
    source_id = user_source(conn)
    store(conn, KEY_A).put(source_id, token(1))
    file_path = tmp_path / "data" / "tokens.json"
    FileStore(file_path).put(source_id, token(2))
    before = (row(conn, source_id), file_path.read_bytes())
    schedule = conn.execute("SELECT status, next_sync_at, consecutive_failures FROM sl_sources").fetchall()
    env = {"SLSYNC_TOKEN_STORE": "file" if command == "migrate" else "database"}
    if problem != "missing":
        env["SLSYNC_TOKEN_KEY"] = KEY_C if problem == "wrong" else "hunter2"
    args = {
        "migrate": ("tokens", "migrate", "--to", "database"),
        "migrate back": ("tokens", "migrate", "--to", "file"),
        "sync source": ("sync", "source", str(source_id)),
        "sync due": ("sync", "due", "--concurrency", "2"),
        "rotate-key": ("tokens", "rotate-key"),
    }[command]
    result = x_cli(*args, env={**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    line = one_error(result, 2)
    if problem == "missing":
        assert "SLSYNC_TOKEN_STORE=database needs a key: set SLSYNC_TOKEN_KEY" in line
    elif problem == "malformed":
        assert "SLSYNC_TOKEN_KEY: key 1 is not 32 bytes in base64" in line and "hunter2" not in line
    elif command == "rotate-key":
        assert f"the tokens of sources {source_id} do not open with the keys given" in line
    else:
        assert f"sealed with key {key_id(raw(KEY_A))}, which SLSYNC_TOKEN_KEY does not hold" in line
    assert (row(conn, source_id), file_path.read_bytes()) == before
    assert conn.execute("SELECT status, next_sync_at, consecutive_failures FROM sl_sources").fetchall() == schedule


def test_rotate_key_reseals_under_the_new_key_and_the_old_one_can_go(conn: db.Connection, cli: Cli) -> None:
    ids = [user_source(conn, f"s{n}") for n in range(3)]
    for source_id in ids:
        store(conn, KEY_A).put(source_id, token(source_id))
    cli.env.update(SLSYNC_TOKEN_STORE="database", SLSYNC_TOKEN_KEY=f"{KEY_B},{KEY_A}")
    assert cli.ok("tokens", "rotate-key", "--json").json() == {
        "key_id": key_id(raw(KEY_B)), "resealed": 3, "unreadable": [],
    }  # fmt: skip
    assert cli.ok("tokens", "rotate-key").stdout.strip() == f"resealed 0 tokens under key {key_id(raw(KEY_B))}"
    assert [store(conn, KEY_B).get(i) for i in ids] == [token(i) for i in ids]
    cli.env["SLSYNC_TOKEN_STORE"] = "file"
    assert "rotate-key works on the database token store" in one_error(cli("tokens", "rotate-key"), 2)


def test_canary_no_token_or_key_in_the_database_in_clear_in_debug_logs_or_in_status(
    cli: Cli, conn: db.Connection, x_api: XApi, tmp_path: Path
) -> None:
    """Connect an X source into the database store, sync it through two expiries (rotating the refresh token),
    rotate the key, sync again: every token and both keys appear nowhere but sealed in sl_tokens."""
    outputs: list[Result] = []
    new_key = tokens.new_key()
    with running(XAuth(client_secret="canary-client-s3cret")) as auth:
        x_api.tokens = IssuedTokens(auth)  # type: ignore[assignment]
        x_api.add_posts(30)
        user = Cli(
            {
                **cli.env,
                "SLSYNC_TWITTER_API_URL": x_api.url,
                "SLSYNC_TWITTER_AUTHORIZE_URL": auth.authorize_url,
                "SLSYNC_TWITTER_TOKEN_URL": auth.token_url,
                "TWITTER_CLIENT_ID": auth.client_id,
                "TWITTER_CLIENT_SECRET": "canary-client-s3cret",
                "SLSYNC_TOKEN_STORE": "database",
                "SLSYNC_TOKEN_KEY": KEY_A,
                "SLSYNC_LOG_LEVEL": "DEBUG",
            },
            cli.cwd,
        )

        def run(*args: str, **env: str) -> Result:
            result = user("--debug", *args, env=env)
            outputs.append(result)
            assert result.returncode == 0, result.stderr
            return result

        source_id = add_x_source(user)
        code, stdout, stderr, page = connect_in_browser(user, source_id)
        assert code == 0, stderr
        outputs.append(Result(code, stdout + page.text, stderr))
        assert "token kept in the database (sl_tokens, encrypted)" in stdout
        assert run("sync", "source", str(source_id), "--json").json()["mentions_saved"] == 30

        for rotation in (1, 2):
            sealed = store(conn, KEY_A, new_key)
            current = sealed.get(source_id)
            assert current is not None
            sealed.put(source_id, dataclasses.replace(current, expires_at=datetime.now(UTC) - timedelta(minutes=1)))
            conn.execute("UPDATE sl_sources SET next_sync_at = now()")
            x_api.add_posts(2, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))
            keys = f"{new_key},{KEY_A}" if rotation == 2 else KEY_A
            if rotation == 2:
                run("tokens", "rotate-key", SLSYNC_TOKEN_KEY=keys)
            doc = run("sync", "due", "--json", SLSYNC_TOKEN_KEY=new_key if rotation == 2 else KEY_A).json()
            assert doc["sources_synced"] == 1 and doc["total_mentions_saved"] == 2
        assert [c.form["refresh_token"] for c in auth.token_calls("refresh_token")] == [
            i.refresh_token for i in auth.issued[:2]
        ]
        run("status", "--json")
        run("status", str(source_id), "--json")
        secrets = auth.secret_values()

    assert len(secrets) >= 7 and "slsync: debug: opening the token of source" in "".join(o.stderr for o in outputs)
    forbidden = [form for secret in [*secrets, KEY_A, new_key] for form in forms(secret)]
    forbidden += [raw(KEY_A).hex(), raw(new_key).hex(), base64.b64encode(raw(new_key)).decode()]
    haystacks = {f"output {n}": o.stdout + o.stderr for n, o in enumerate(outputs)}
    haystacks["the database"] = table_text(conn)
    haystacks |= {str(p): p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file()}
    for where, text in haystacks.items():
        for secret in forbidden:
            assert secret not in text, f"a secret leaked into {where}"
    assert store(conn, new_key).get(source_id).refresh_token == auth.issued[2].refresh_token
