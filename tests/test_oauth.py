"""OAuth pieces in-process: PKCE and state, the authorize URL and redirect, the loopback callback server,
the code exchange, and user-token sessions that refresh with rotating refresh tokens (a controllable
clock, the loopback stand-in of X's token endpoint, a real file token store)."""

from __future__ import annotations

import base64
import io
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from slsync import connect
from slsync.auth import (
    OAuthApp,
    OAuthSession,
    StaticToken,
    authorize_url,
    code_challenge,
    exchange_code,
    new_state,
    new_verifier,
)
from slsync.config import Settings
from slsync.connectors.mock import MockConnector
from slsync.connectors.twitter import SCOPES, TwitterConnector
from slsync.errors import AuthError, Fatal, UsageError
from slsync.models import Source
from slsync.tokens import FileStore, Token
from tests.conftest import Clock
from tests.fakes.browser import browse
from tests.fakes.oauth_server import XAuth, running

UNRESERVED = re.compile(r"^[A-Za-z0-9\-._~]+$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens there any more and a new server can listen (as the next `slsync connect` would)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        pass
    with socket.socket() as sock:
        # SO_REUSEADDR as http.server sets it: connections the callback server closed sit in TIME_WAIT
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
        return True


def make_app(auth: XAuth | None = None, *, secret: str | None = None, redirect: str | None = None) -> OAuthApp:
    return OAuthApp(
        authorize_url=auth.authorize_url if auth else "https://x.example/i/oauth2/authorize",
        token_url=auth.token_url if auth else "https://x.example/2/oauth2/token",
        client_id=auth.client_id if auth else "client-1",
        client_secret=SecretStr(secret) if secret else None,
        scopes=SCOPES,
        redirect_uri=redirect,
        client_id_setting="TWITTER_CLIENT_ID",
        client_secret_setting="TWITTER_CLIENT_SECRET",
        redirect_uri_setting="TWITTER_OAUTH_CALLBACK",
    )


def make_source(source_id: int = 7, *, connection_type: str = "user", platform: str = "twitter") -> Source:
    now = datetime.now(UTC)
    return Source(
        id=source_id, tenant_id=1, platform=platform, name="acme", connection_type=connection_type, config={},
        status="connected", error_message=None, sync_interval_minutes=15, last_sync_at=None, next_sync_at=now,
        committed_cursor=None, inflight_cursor=None, rate_limit_limit=None, rate_limit_remaining=None,
        rate_limit_reset_at=None, consecutive_failures=0, mentions_count=0, created_at=now,
    )  # fmt: skip


@pytest.fixture
def x_auth() -> Iterator[XAuth]:
    with running() as auth:
        yield auth


# --- PKCE, state, authorize URL, redirect ---------------------------------------------------------


def test_pkce_verifiers_are_long_unreserved_and_never_repeat() -> None:
    draws = [new_verifier() for _ in range(2000)]
    assert all(43 <= len(v) <= 128 and UNRESERVED.match(v) for v in draws)
    assert len(set(draws)) == len(draws)
    # every character of the alphabet turns up: the draws use the whole unreserved range they claim
    assert set("".join(draws)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_code_challenge_matches_rfc_7636_appendix_b() -> None:
    # Appendix B's 32 octets, its verifier (their base64url) and its S256 challenge
    octets = bytes([116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186,
                    22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121])  # fmt: skip
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert base64.urlsafe_b64encode(octets).rstrip(b"=").decode() == verifier
    assert code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_state_carries_at_least_128_bits() -> None:
    states = {new_state() for _ in range(500)}
    assert len(states) == 500
    # 6 bits per base64url character: 43 characters hold 256 bits, 22 would be the floor for 128
    assert all(len(s) >= 43 and UNRESERVED.match(s) for s in states)


def test_the_authorize_url_carries_every_parameter_encoded() -> None:
    app = make_app()
    url = authorize_url(app, redirect_uri="http://127.0.0.1:8765/callback", state="s t&=", challenge="abc")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == app.authorize_url
    assert " " not in url and "\n" not in url
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "response_type": "code",
        "client_id": "client-1",
        "redirect_uri": "http://127.0.0.1:8765/callback",
        "scope": "tweet.read users.read offline.access",
        "state": "s t&=",
        "code_challenge": "abc",
        "code_challenge_method": "S256",
    }


@pytest.mark.parametrize(
    ("registered", "port", "expected"),
    [
        (None, None, ("http://127.0.0.1:8765/callback", 8765, "/callback")),
        (None, 9100, ("http://127.0.0.1:9100/callback", 9100, "/callback")),
        ("http://127.0.0.1:9200/x/cb", None, ("http://127.0.0.1:9200/x/cb", 9200, "/x/cb")),
        ("http://localhost:9300/callback", 9300, ("http://localhost:9300/callback", 9300, "/callback")),
    ],
)
def test_the_redirect_uri_is_the_registered_callback_verbatim_or_loopback_with_the_port(
    registered: str | None, port: int | None, expected: tuple[str, int, str]
) -> None:
    redirect = connect.redirect_for(make_app(redirect=registered), port)
    assert (redirect.uri, redirect.port, redirect.path) == expected


@pytest.mark.parametrize(
    ("registered", "port", "message"),
    [
        ("https://127.0.0.1:8765/callback", None, "TWITTER_OAUTH_CALLBACK must be a loopback callback"),
        ("http://example.com:8765/callback", None, "TWITTER_OAUTH_CALLBACK must be a loopback callback"),
        ("http://0.0.0.0:8765/callback", None, "TWITTER_OAUTH_CALLBACK must be a loopback callback"),
        ("http://127.0.0.1:0/callback", None, "TWITTER_OAUTH_CALLBACK 'http://127.0.0.1:0/callback' has an invalid"),
        ("http://127.0.0.1:99999/callback", None, "has an invalid port"),
        ("http://127.0.0.1:8765/callback", 9000, "--port 9000 disagrees with TWITTER_OAUTH_CALLBACK (port 8765)"),
    ],
)
def test_a_callback_slsync_cannot_serve_is_a_usage_error(registered: str, port: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        connect.redirect_for(make_app(redirect=registered), port)


# --- the loopback callback server (in-process) ----------------------------------------------------


def test_the_browser_is_opened_and_the_flow_completes_and_frees_the_port(
    x_auth: XAuth, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages: list[httpx.Response] = []
    monkeypatch.setattr("webbrowser.open", lambda url: pages.append(browse(url)) or True)
    out, port = io.StringIO(), free_port()
    token = connect.authorize(make_app(x_auth), platform="twitter", port=port, timeout=10, open_browser=True, out=out)
    [page] = pages
    assert page.status_code == 200 and "connected" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert token == Token(
        access_token=x_auth.issued[0].access_token,
        refresh_token=x_auth.issued[0].refresh_token,
        expires_at=token.expires_at,
        scope="tweet.read users.read offline.access",
    )
    assert token.expires_at is not None
    assert abs((token.expires_at - datetime.now(UTC)).total_seconds() - 7200) < 30
    [url] = [line for line in out.getvalue().splitlines() if line.startswith("http")]
    assert url.startswith(x_auth.authorize_url + "?")
    [call] = x_auth.calls
    assert call.status == 200 and call.basic is None  # public client: no Basic
    assert set(call.form) == {"grant_type", "code", "redirect_uri", "code_verifier", "client_id"}
    assert port_is_free(port)


def test_the_callback_server_listens_on_127_0_0_1_only() -> None:
    port = free_port()
    server = connect._listen(port, "/callback", new_state(), "twitter", "hint")
    try:
        assert server.socket.getsockname() == ("127.0.0.1", port)
    finally:
        server.server_close()
    assert port_is_free(port)


class _UrlCatcher(io.StringIO):
    """An `out` stream that hands the printed authorize URL to another thread."""

    def __init__(self) -> None:
        super().__init__()
        self._ready = threading.Event()
        self._url = ""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.startswith("http"):
                self._url = line
                self._ready.set()
        return super().write(text)

    def get(self) -> str:
        assert self._ready.wait(10), "no URL printed"
        return self._url


def test_wrong_path_missing_or_forged_state_get_400_and_the_server_keeps_waiting(
    x_auth: XAuth, caplog: pytest.LogCaptureFixture
) -> None:
    port, out = free_port(), _UrlCatcher()
    answers: dict[str, httpx.Response] = {}

    def user() -> None:
        url = out.get()
        state = parse_qs(urlsplit(url).query)["state"][0]
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(trust_env=False, timeout=5) as browser:
            answers["path"] = browser.get(f"{base}/elsewhere?code=stolen-code&state={state}")
            answers["no_state"] = browser.get(f"{base}/callback?code=stolen-code")
            answers["no_code"] = browser.get(f"{base}/callback?state={state}")
            answers["post"] = browser.post(f"{base}/callback?code=stolen-code&state={state}")
        x_auth.consent = "forge"
        answers["forged"] = browse(url)
        x_auth.consent = "grant"
        answers["real"] = browse(url)

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    with caplog.at_level(logging.WARNING, logger="slsync"):
        token = connect.authorize(
            make_app(x_auth), platform="twitter", port=port, timeout=10, open_browser=False, out=out
        )
    thread.join(5)
    assert {k: r.status_code for k, r in answers.items()} == {
        "path": 400,
        "no_state": 400,
        "no_code": 400,
        "post": 501,
        "forged": 400,
        "real": 200,
    }
    # the forged redirect's code was never exchanged; the real one was
    [call] = x_auth.calls
    assert token.access_token == x_auth.issued[0].access_token
    assert call.form["code"] not in answers["forged"].request.url.query.decode()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and any("/elsewhere" in w for w in warnings)
    assert not any("stolen-code" in w or "code=" in w for w in warnings)


def test_denied_consent_shows_an_escaped_page_and_raises(x_auth: XAuth) -> None:
    x_auth.consent = "deny"
    x_auth.deny_description = "<script>alert(1)</script>\nline two"
    out, pages = _UrlCatcher(), []
    thread = threading.Thread(target=lambda: pages.append(browse(out.get())), daemon=True)
    thread.start()
    with pytest.raises(connect.ConsentDenied) as denied:
        connect.authorize(
            make_app(x_auth), platform="twitter", port=free_port(), timeout=10, open_browser=False, out=out
        )
    thread.join(5)
    [page] = pages
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
    assert "access_denied" in page.text
    message = str(denied.value)
    assert "\n" not in message and "access_denied" in message and "nothing was stored" in message
    assert x_auth.calls == []


def test_no_answer_times_out_on_time_and_frees_the_port() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(connect.CallbackTimeout, match=r"no answer from the browser within 0\.5 s"):
        connect.authorize(make_app(), platform="twitter", port=port, timeout=0.5, open_browser=False, out=io.StringIO())
    assert 0.45 < time.monotonic() - started < 2.0
    assert port_is_free(port)


def test_a_busy_port_is_one_usage_error_naming_the_fix() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(UsageError) as busy:
            connect.authorize(
                make_app(), platform="twitter", port=port, timeout=5, open_browser=False, out=io.StringIO()
            )
    assert str(busy.value) == (
        f"cannot listen on 127.0.0.1:{port} for the callback: the port is in use; "
        "pass --port with a free port and register http://127.0.0.1:PORT/callback with the platform"
    )


# --- the code exchange ----------------------------------------------------------------------------


def test_a_wrong_verifier_is_refused_without_echoing_secrets(x_auth: XAuth) -> None:
    x_auth.codes["code-abc"] = (code_challenge("v" * 43), "http://127.0.0.1:8765/callback")
    with pytest.raises(AuthError) as refused:
        exchange_code(
            make_app(x_auth),
            code="code-abc",
            redirect_uri="http://127.0.0.1:8765/callback",
            verifier="w" * 43,
            platform="twitter",
        )
    assert "PKCE verification failed" in str(refused.value)
    assert "code-abc" not in str(refused.value) and "w" * 43 not in str(refused.value)


def test_a_confidential_client_authenticates_with_basic_and_a_wrong_secret_names_the_setting() -> None:
    with running(XAuth(client_secret="s3cret")) as auth:
        challenge = code_challenge("v" * 43)
        for code in ("code-1", "code-2"):
            auth.codes[code] = (challenge, "http://127.0.0.1:8765/callback")
        kwargs = {"redirect_uri": "http://127.0.0.1:8765/callback", "verifier": "v" * 43, "platform": "twitter"}
        token = exchange_code(make_app(auth, secret="s3cret"), code="code-1", **kwargs)
        assert token.access_token == auth.issued[0].access_token
        assert auth.calls[0].basic == (auth.client_id, "s3cret")
        with pytest.raises(AuthError) as refused:
            exchange_code(make_app(auth, secret="wrong-secret"), code="code-2", **kwargs)
    message = str(refused.value)
    assert "TWITTER_CLIENT_ID" in message and "TWITTER_CLIENT_SECRET" in message
    assert "Missing valid authorization header" in message and "wrong-secret" not in message


# --- user-token sessions --------------------------------------------------------------------------


class RecordingStore(FileStore):
    """A file store that records the order of puts (and can fail them), to check persist-before-use."""

    def __init__(self, path: Path, auth: XAuth) -> None:
        super().__init__(path)
        self.auth = auth
        self.events: list[tuple[str, int]] = []
        self.fail = False

    def put(self, source_id: int, token: Token) -> None:
        # the stand-in has already answered the refresh (and killed the old refresh token) at this point
        self.events.append(("put", len(self.auth.token_calls("refresh_token"))))
        if self.fail:
            raise OSError(28, "No space left on device")
        super().put(source_id, token)


def seeded(auth: XAuth, store: FileStore, clock: Clock, source_id: int = 7) -> Token:
    pair = auth.issue()
    token = Token(pair.access_token, pair.refresh_token, clock() + timedelta(hours=2), "tweet.read")
    store.put(source_id, token)
    return token


def test_two_expiries_rotate_the_refresh_token_and_persist_it_before_use(x_auth: XAuth, tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
    store = RecordingStore(tmp_path / "tokens.json", x_auth)
    first = seeded(x_auth, store, clock)
    session = OAuthSession(store, 7, make_app(x_auth), first, clock, platform="twitter")

    assert session.access_token() == first.access_token
    clock.advance(hours=1, minutes=57)  # still more than 2 minutes left
    assert session.access_token() == first.access_token
    assert x_auth.calls == []

    seen_refresh = [first.refresh_token]
    for expiry in (1, 2):
        clock.advance(minutes=2)  # now inside the 2-minute margin (first time) / past the expiry (second)
        if expiry == 2:
            clock.advance(hours=2)
        access = session.access_token()
        stored = store.get(7)
        assert stored is not None
        assert access == stored.access_token == x_auth.issued[expiry].access_token
        assert stored.refresh_token == x_auth.issued[expiry].refresh_token
        assert stored.refresh_token not in seen_refresh
        seen_refresh.append(stored.refresh_token)
        assert stored.expires_at == clock() + timedelta(seconds=7200)
        # the put came after the stand-in rotated (call N answered) and before access_token() returned
        assert store.events[-1] == ("put", expiry)
        assert session.access_token() == access  # no refresh while it is fresh
    assert len(x_auth.token_calls("refresh_token")) == 2
    assert [c.form["refresh_token"] for c in x_auth.token_calls("refresh_token")] == seen_refresh[:2]

    # the refresh tokens used so far are dead: X rejects a reuse
    for dead in seen_refresh[:2]:
        response = httpx.post(
            x_auth.token_url,
            data={"grant_type": "refresh_token", "refresh_token": dead, "client_id": x_auth.client_id},
        )
        assert response.status_code == 400 and response.json()["error"] == "invalid_grant"

    # a 401 from the API: the connector forces a refresh
    before = session.access_token()
    forced = session.refresh()
    assert forced != before and forced == x_auth.issued[-1].access_token == store.get(7).access_token


def test_a_session_holding_a_rotated_token_uses_the_stored_one_and_never_sends_the_dead_one(
    x_auth: XAuth, tmp_path: Path
) -> None:
    clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
    store = FileStore(tmp_path / "tokens.json")
    original = seeded(x_auth, store, clock)
    earlier = OAuthSession(store, 7, make_app(x_auth), original, clock, platform="twitter")
    later = OAuthSession(store, 7, make_app(x_auth), original, clock, platform="twitter")
    clock.advance(hours=2)
    rotated = earlier.access_token()
    # `later` read the token before `earlier` rotated it: it must pick up the rotation, not replay
    assert later.access_token() == rotated
    # a 401 on a token older than the stored one: the stored one is the answer, no refresh call
    assert OAuthSession(store, 7, make_app(x_auth), original, clock, platform="twitter").refresh() == rotated
    assert [c.status for c in x_auth.calls] == [200]
    assert [c.form["refresh_token"] for c in x_auth.calls] == [original.refresh_token]
    # and a session built from a dead token with nothing newer in the store gets AuthError, no retry
    store.put(7, original)
    stale = OAuthSession(store, 7, make_app(x_auth), original, clock, platform="twitter")
    with pytest.raises(AuthError):
        stale.access_token()
    assert [c.status for c in x_auth.calls] == [200, 400]


@pytest.mark.parametrize("answer", ["invalid_grant", "invalid_request"])
def test_a_dead_refresh_token_is_an_auth_error_without_secrets(tmp_path: Path, answer: str) -> None:
    with running(XAuth(dead_token_error=answer)) as auth:
        clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
        store = FileStore(tmp_path / "tokens.json")
        token = seeded(auth, store, clock)
        auth.live_refresh.clear()  # revoked at X
        session = OAuthSession(store, 7, make_app(auth), token, clock, platform="twitter")
        with pytest.raises(AuthError) as dead:
            session.refresh()
    message = str(dead.value)
    assert message == f"twitter refused the refresh token (HTTP 400: {answer}: Value passed for the token was invalid.)"
    assert store.get(7) == token  # nothing changed, nothing retried
    assert len(auth.calls) == 1


def test_a_refreshed_token_that_cannot_be_saved_is_never_used(x_auth: XAuth, tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
    store = RecordingStore(tmp_path / "tokens.json", x_auth)
    token = seeded(x_auth, store, clock)
    session = OAuthSession(store, 7, make_app(x_auth), token, clock, platform="twitter")
    store.fail = True
    clock.advance(hours=3)
    with pytest.raises(AuthError, match="could not be saved"):
        session.access_token()
    assert store.events[-1] == ("put", 1)
    # nothing handed out the new access token: the session still holds the old one (and says it is expired)
    assert session._token == token


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one(tmp_path: Path) -> None:
    with running(XAuth(rotate=False, client_secret="s3cret")) as auth:
        clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
        store = FileStore(tmp_path / "tokens.json")
        token = seeded(auth, store, clock)
        session = OAuthSession(store, 7, make_app(auth, secret="s3cret"), token, clock, platform="twitter")
        fresh = session.refresh()
        stored = store.get(7)
        assert stored is not None and stored.access_token == fresh != token.access_token
        assert stored.refresh_token == token.refresh_token and stored.scope == "tweet.read users.read offline.access"
        assert auth.calls[0].basic == (auth.client_id, "s3cret")  # confidential client: Basic on refresh too


def test_unknown_expiry_is_used_as_is_and_missing_pieces_are_auth_errors(x_auth: XAuth, tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
    store = FileStore(tmp_path / "tokens.json")
    forever = Token("at-forever", "rt-forever", expires_at=None)
    store.put(7, forever)
    session = OAuthSession(store, 7, make_app(x_auth), forever, clock, platform="twitter")
    clock.advance(days=365)
    assert session.access_token() == "at-forever"
    assert x_auth.calls == []

    no_refresh = Token("at-1", None, expires_at=clock() + timedelta(minutes=1))
    store.put(8, no_refresh)
    with pytest.raises(AuthError, match="there is no refresh token"):
        OAuthSession(store, 8, make_app(x_auth), no_refresh, clock, platform="twitter").access_token()

    app = OAuthApp(x_auth.authorize_url, x_auth.token_url, None, None, SCOPES, None, "TWITTER_CLIENT_ID")
    expiring = Token("at-2", "rt-2", expires_at=clock() + timedelta(minutes=1))
    store.put(9, expiring)
    # the grant is fine and this environment lacks the app's id: a configuration error (Fatal, the source is not put
    # in error and told to reconnect), naming the variable
    with pytest.raises(Fatal, match="TWITTER_CLIENT_ID is not set in this environment"):
        OAuthSession(store, 9, app, expiring, clock, platform="twitter").access_token()

    store.delete(9)
    with pytest.raises(AuthError, match="no longer in the token store"):
        OAuthSession(store, 9, make_app(x_auth), expiring, clock, platform="twitter").refresh()
    assert x_auth.calls == []


# --- credentials_for ------------------------------------------------------------------------------


def settings_for(tmp_path: Path, **values: str) -> Settings:
    return Settings(data_dir=tmp_path / "data", token_store="file", _env_file=None, **values)


def test_credentials_for_a_connected_source_is_a_refreshing_session(x_auth: XAuth, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        TWITTER_CLIENT_ID=x_auth.client_id,
        SLSYNC_TWITTER_TOKEN_URL=x_auth.token_url,
        TWITTER_BEARER_TOKEN="app",
    )
    clock = Clock(datetime(2026, 11, 20, 8, 0, tzinfo=UTC))
    store = FileStore(settings.data_dir / "tokens.json")
    seeded(x_auth, store, clock)
    credentials = connect.credentials_for(TwitterConnector, make_source(), settings, now=clock)
    assert isinstance(credentials, OAuthSession)
    assert credentials.access_token() == x_auth.issued[0].access_token
    clock.advance(hours=2)
    assert credentials.access_token() == x_auth.issued[1].access_token == store.get(7).access_token

    with pytest.raises(AuthError, match=r"no X \(Twitter\) user token for source 8 in .*tokens.json"):
        connect.credentials_for(TwitterConnector, make_source(8), settings)
    # a source that was never connected keeps the app-only token
    app_only = connect.credentials_for(TwitterConnector, make_source(8, connection_type="app"), settings)
    assert isinstance(app_only, StaticToken) and app_only.access_token() == "app"
    with pytest.raises(AuthError, match="refused the app token"):
        app_only.refresh()
    with pytest.raises(AuthError, match="cannot use user tokens"):
        connect.credentials_for(MockConnector, make_source(platform="mock"), settings)


def test_credentials_for_without_a_usable_keyring_names_the_file_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring
    from keyring.backends import fail

    monkeypatch.setattr(keyring, "get_keyring", lambda: fail.Keyring())
    settings = Settings(data_dir=tmp_path / "data", token_store="keyring", _env_file=None)
    with pytest.raises(Fatal, match="SLSYNC_TOKEN_STORE=file") as failed:
        connect.credentials_for(TwitterConnector, make_source(), settings)
    assert not isinstance(failed.value, AuthError)  # a setting to fix, not a grant to redo
