"""A connected X source from start to end: connect, sync with the user token through two expiries
with rotation, a revoked grant; and a canary search for every secret in every output, log, table
and file, which must find them only in the token store."""

from __future__ import annotations

import dataclasses
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from slsync import db
from slsync.tokens import FileStore
from tests.conftest import Cli, Result, add_x_source
from tests.fakes.browser import browse
from tests.fakes.oauth_server import XAuth, running
from tests.fakes.x_api import XApi
from tests.test_connect import start


class IssuedTokens:
    """The X stand-in accepts exactly the access tokens the authorization stand-in has issued."""

    def __init__(self, auth: XAuth) -> None:
        self.auth = auth

    def __contains__(self, token: object) -> bool:
        return any(issued.access_token == token for issued in self.auth.issued)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expire(path: Path, source_id: int) -> None:
    store = FileStore(path)
    token = store.get(source_id)
    assert token is not None
    store.put(source_id, dataclasses.replace(token, expires_at=datetime.now(UTC) - timedelta(minutes=1)))


def test_connect_then_sync_with_the_user_token_through_two_rotations(
    cli: Cli, conn: db.Connection, x_api: XApi, tmp_path: Path
) -> None:
    outputs: list[Result] = []
    with running(XAuth(client_secret="canary-client-s3cret")) as auth:
        x_api.tokens = IssuedTokens(auth)  # type: ignore[assignment]
        x_api.add_posts(120)
        env = {
            **cli.env,
            "SLSYNC_TWITTER_API_URL": x_api.url,
            "SLSYNC_TWITTER_AUTHORIZE_URL": auth.authorize_url,
            "SLSYNC_TWITTER_TOKEN_URL": auth.token_url,
            "TWITTER_CLIENT_ID": auth.client_id,
            "TWITTER_CLIENT_SECRET": "canary-client-s3cret",
            "SLSYNC_TOKEN_STORE": "file",
            "SLSYNC_LOG_LEVEL": "DEBUG",
        }
        user = Cli(env, cli.cwd)

        def run(*args: str) -> Result:
            result = user("--debug", *args)
            outputs.append(result)
            return result

        source_id = add_x_source(user)
        connect = start(user, str(source_id), "--no-browser", "--port", str(free_port()), "--timeout", "20")
        page = browse(connect.url())
        code, stdout, stderr = connect.finish()
        assert code == 0, stderr
        outputs.append(Result(code, stdout + page.text, stderr))
        tokens = tmp_path / "data" / "tokens.json"

        first = run("sync", "source", str(source_id), "--json")
        assert first.returncode == 0 and first.json()["mentions_saved"] == 120
        assert {r.authorization for r in x_api.searches} == {f"Bearer {auth.issued[0].access_token}"}

        for rotation in (1, 2):  # the access token expires; the next sync refreshes, rotating the refresh token
            expire(tokens, source_id)
            x_api.add_posts(3, newest=datetime.now(UTC), spacing=timedelta(milliseconds=10))
            result = run("sync", "source", str(source_id), "--json")
            assert result.returncode == 0 and result.json()["mentions_saved"] == 3, result.stderr
            assert x_api.searches[-1].authorization == f"Bearer {auth.issued[rotation].access_token}"
            stored = FileStore(tokens).get(source_id)
            assert stored is not None and stored.refresh_token == auth.issued[rotation].refresh_token
        refreshes = auth.token_calls("refresh_token")
        assert [c.form["refresh_token"] for c in refreshes] == [i.refresh_token for i in auth.issued[:2]]
        assert all(c.status == 200 for c in refreshes)
        assert db.get_source(conn, source_id).status == "active"

        # the user revokes the app: X refuses the token and the refresh; the source needs reconnecting
        auth.live_refresh.clear()
        x_api.tokens = set()
        revoked = run("sync", "source", str(source_id), "--json")
        assert revoked.returncode == 1
        assert revoked.json()["status"] == "error" and f"slsync connect {source_id}" in revoked.json()["message"]
        outputs.append(run("status", "--json"))
        secrets = auth.secret_values()

    # the canary search: every secret is in the token store, and nowhere else
    assert "canary-client-s3cret" in secrets and len(secrets) >= 7
    haystacks = {f"output {n}": r.stdout + r.stderr for n, r in enumerate(outputs)}
    for table in ("sl_sources", "sl_mentions", "sl_sync_runs", "sl_schema_migrations"):
        rows = conn.execute(f"SELECT t::text AS row FROM {table} t").fetchall()
        haystacks[table] = "\n".join(r["row"] for r in rows)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file() and path != tokens:
            haystacks[str(path)] = path.read_text(errors="replace")
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"
    current = FileStore(tokens).get(source_id)
    assert current is not None and current.refresh_token in tokens.read_text()
