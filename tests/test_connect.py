"""`slsync connect` as an operator runs it: the real CLI in a subprocess, an HTTP client playing the
browser against a loopback stand-in of X's authorization server, a real PostgreSQL and token file."""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from slsync import db
from slsync.tokens import FileStore
from tests.conftest import Cli, add_mock_source
from tests.fakes.browser import browse, free_port, start
from tests.fakes.oauth_server import XAuth, running


@pytest.fixture
def x_auth() -> Iterator[XAuth]:
    with running() as auth:
        yield auth


@pytest.fixture
def source_id(conn: db.Connection) -> int:
    config = {"keywords": ["acme"], "hashtags": [], "mentions": [], "exclude": [], "languages": [], "options": {}}
    return db.add_source(
        conn, tenant_id=1, platform="twitter", name="acme", connection_type="app", config=config, interval_minutes=15
    )


def x_cli(cli: Cli, auth: XAuth, **extra: str) -> Cli:
    env = {
        **cli.env,
        "SLSYNC_TWITTER_AUTHORIZE_URL": auth.authorize_url,
        "SLSYNC_TWITTER_TOKEN_URL": auth.token_url,
        "TWITTER_CLIENT_ID": auth.client_id,
        "SLSYNC_TOKEN_STORE": "file",
        **extra,
    }
    return Cli({k: v for k, v in env.items() if v}, cli.cwd)


def source_row(conn: db.Connection, source_id: int) -> dict:
    return conn.execute("SELECT status, connection_type FROM sl_sources WHERE id = %s", (source_id,)).fetchone()


def assert_nothing_secret(conn: db.Connection, auth: XAuth, *texts: str) -> None:
    rows = conn.execute("SELECT s::text AS row FROM sl_sources s UNION ALL SELECT r::text FROM sl_sync_runs r")
    haystacks = [r["row"] for r in rows.fetchall()] + list(texts)
    secrets = auth.secret_values()
    assert secrets
    for secret in secrets:
        assert all(secret not in text for text in haystacks), "a secret leaked"


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("slsync: error:")]


@pytest.mark.parametrize("variant", ["public", "confidential", "registered_callback"])
def test_connect_end_to_end(cli: Cli, conn: db.Connection, source_id: int, tmp_path: Path, variant: str) -> None:
    port = free_port()
    auth = XAuth()
    extra: dict[str, str] = {}
    args = [str(source_id), "--no-browser", "--timeout", "20"]
    if variant == "confidential":
        auth.client_secret = extra["TWITTER_CLIENT_SECRET"] = "confidential-s3cret"
    if variant == "registered_callback":
        # X compares callbacks exactly: the registered one is sent verbatim and its port is used
        auth.registered_redirect = extra["TWITTER_OAUTH_CALLBACK"] = f"http://127.0.0.1:{port}/oauth/x"
    else:
        args += ["--port", str(port)]
    with running(auth):
        connect = start(x_cli(cli, auth, **extra), *args)
        url = connect.url()
        assert url.startswith(auth.authorize_url + "?") and " " not in url
        page = browse(url)
        code, stdout, stderr = connect.finish()
    assert code == 0, stderr
    assert page.status_code == 200 and "connected" in page.text
    assert f"connected source {source_id} (twitter: acme)" in stdout
    assert stderr == ""
    # the stand-in verified client, redirect, scopes, S256 challenge and verifier; one exchange happened
    [call] = auth.calls
    assert call.status == 200 and call.grant_type == "authorization_code"
    assert call.basic == ((auth.client_id, auth.client_secret) if variant == "confidential" else None)
    if variant == "registered_callback":
        assert call.form["redirect_uri"] == f"http://127.0.0.1:{port}/oauth/x"
    # the token is in a 0600 file, and nowhere else
    path = tmp_path / "data" / "tokens.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = FileStore(path).get(source_id)
    [issued] = auth.issued
    assert stored is not None
    assert (stored.access_token, stored.refresh_token) == (issued.access_token, issued.refresh_token)
    assert stored.expires_at is not None
    assert source_row(conn, source_id) == {"status": "connected", "connection_type": "user"}
    assert_nothing_secret(conn, auth, stdout, stderr, page.text)


def test_a_forged_state_or_a_wrong_path_gets_400_and_the_real_callback_still_connects(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth
) -> None:
    port = free_port()
    connect = start(x_cli(cli, x_auth), str(source_id), "--no-browser", "--port", str(port), "--timeout", "20")
    url = connect.url()
    x_auth.consent = "forge"
    forged = browse(url)
    with httpx.Client(trust_env=False, timeout=5) as browser:
        wrong_path = browser.get(f"http://127.0.0.1:{port}/admin?code=planted&state=x")
    x_auth.consent = "grant"
    real = browse(url)
    code, stdout, stderr = connect.finish()
    assert (forged.status_code, wrong_path.status_code, real.status_code) == (400, 400, 200)
    assert code == 0, stderr
    assert len(x_auth.codes) == 1  # the forged redirect's code was never exchanged
    assert [c.status for c in x_auth.calls] == [200]
    warnings = stderr.splitlines()
    assert len(warnings) == 2 and all(line.startswith("slsync: warning: callback server: ignored") for line in warnings)
    assert "planted" not in stderr and "state=" not in stderr
    assert source_row(conn, source_id)["status"] == "connected"
    assert_nothing_secret(conn, x_auth, stdout, stderr)


def test_denied_consent_shows_an_escaped_page_stores_nothing_and_exits_1(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth, tmp_path: Path
) -> None:
    x_auth.consent = "deny"
    x_auth.deny_description = "<script>alert('x')</script>"
    connect = start(x_cli(cli, x_auth), str(source_id), "--no-browser", "--port", str(free_port()))
    page = browse(connect.url())
    code, _, stderr = connect.finish()
    assert code == 1
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page.text and "<script>" not in page.text
    assert stderr.splitlines() == error_lines(stderr)
    [line] = error_lines(stderr)
    assert "X (Twitter) did not authorize slsync (access_denied" in line and "nothing was stored" in line
    assert x_auth.calls == []
    assert FileStore(tmp_path / "data" / "tokens.json").get(source_id) is None
    assert source_row(conn, source_id) == {"status": "active", "connection_type": "app"}


def test_no_browser_answer_times_out_with_one_line(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth
) -> None:
    connect = start(x_cli(cli, x_auth), str(source_id), "--no-browser", "--port", str(free_port()), "--timeout", "1")
    connect.url()
    shown = time.monotonic()
    code, _, stderr = connect.finish()
    waited = time.monotonic() - shown
    assert code == 1
    assert (
        error_lines(stderr)
        == stderr.splitlines()
        == ["slsync: error: no answer from the browser within 1 s; nothing was stored"]
    )
    assert 0.8 < waited < 4
    assert source_row(conn, source_id)["status"] == "active"
    assert x_auth.authorize_requests == 0 and x_auth.calls == []


def test_without_a_usable_keyring_connect_fails_in_one_line_before_any_url(
    cli: Cli, source_id: int, x_auth: XAuth
) -> None:
    keyless = x_cli(cli, x_auth, SLSYNC_TOKEN_STORE="keyring", PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring")
    result = keyless("connect", str(source_id), "--no-browser", "--port", str(free_port()), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("slsync: error: no usable OS keyring") and "SLSYNC_TOKEN_STORE=file" in line
    assert x_auth.authorize_requests == 0


def test_a_token_exchange_refused_for_a_missing_secret_stores_nothing(
    cli: Cli, conn: db.Connection, source_id: int, tmp_path: Path
) -> None:
    with running(XAuth(client_secret="only-x-knows")) as auth:  # a confidential app, but no secret set here
        connect = start(x_cli(cli, auth), str(source_id), "--no-browser", "--port", str(free_port()))
        page = browse(connect.url())
        code, _, stderr = connect.finish()
    assert page.status_code == 200  # the browser part went fine; the exchange did not
    assert code == 1
    [line] = error_lines(stderr)
    assert "refused the app's client credentials (HTTP 401: unauthorized_client" in line
    assert "TWITTER_CLIENT_ID and TWITTER_CLIENT_SECRET" in line
    assert not (tmp_path / "data" / "tokens.json").exists()
    assert source_row(conn, source_id)["status"] == "active"
    assert_nothing_secret(conn, auth, stderr)


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("mock", 2, "slsync: error: mock sources do not need connecting"),
        ("unknown", 2, "slsync: error: no source with id 999999"),
        ("no_client_id", 2, "slsync: error: TWITTER_CLIENT_ID is not set: register an app with X (Twitter)"),
        ("port_vs_callback", 2, "slsync: error: --port 9999 disagrees with TWITTER_OAUTH_CALLBACK (port 8765)"),
        ("bad_callback", 2, "slsync: error: TWITTER_OAUTH_CALLBACK must be a loopback callback"),
    ],
)
def test_connect_refuses_what_it_cannot_do_in_one_line(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth, case: str, code: int, message: str
) -> None:
    extra, target, args = {}, str(source_id), ["--no-browser"]
    if case == "mock":
        target = str(add_mock_source(conn))
    elif case == "unknown":
        target = "999999"
    elif case == "no_client_id":
        extra["TWITTER_CLIENT_ID"] = ""
    elif case == "port_vs_callback":
        extra["TWITTER_OAUTH_CALLBACK"] = "http://127.0.0.1:8765/callback"
        args += ["--port", "9999"]
    else:
        extra["TWITTER_OAUTH_CALLBACK"] = "https://acme.example/callback"
    result = x_cli(cli, x_auth, **extra)("connect", target, *args, timeout=30)
    assert result.returncode == code
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(message)
    assert x_auth.authorize_requests == 0


def test_a_busy_callback_port_is_one_line(cli: Cli, source_id: int, x_auth: XAuth) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = x_cli(cli, x_auth)("connect", str(source_id), "--no-browser", "--port", str(port), timeout=30)
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"slsync: error: cannot listen on 127.0.0.1:{port} for the callback: the port is in use")


def test_a_source_being_synced_is_not_connected_meanwhile(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth
) -> None:
    assert db.try_lock_source(conn, source_id)  # as a running sync holds it
    try:
        result = x_cli(cli, x_auth)("connect", str(source_id), "--no-browser", "--port", str(free_port()), timeout=30)
    finally:
        db.unlock_source(conn, source_id)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"slsync: error: source {source_id} is syncing now; connect it when the run has ended"
    ]
    assert x_auth.authorize_requests == 0


def test_connect_holds_the_source_lock_while_waiting_and_releases_it(
    cli: Cli, conn: db.Connection, source_id: int, x_auth: XAuth
) -> None:
    connect = start(x_cli(cli, x_auth), str(source_id), "--no-browser", "--port", str(free_port()))
    url = connect.url()
    assert not db.try_lock_source(conn, source_id)  # a sync now would skip the source as busy
    browse(url)
    code, _, stderr = connect.finish()
    assert code == 0, stderr
    assert db.try_lock_source(conn, source_id)
    db.unlock_source(conn, source_id)
    doc = json.loads(cli.ok("status", str(source_id), "--json").stdout)
    assert doc["source"]["status"] == "connected" and doc["sync"]["syncing"] is False
