"""Test fixtures: one embedded PostgreSQL per test session, a fresh database per test cloned from a
migrated template (procrastinate style), and a runner for the real `slsync` command."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from slsync import db, embedded
from slsync.config import Settings

TEMPLATE = "slsync_template"
_numbers = itertools.count()


@pytest.fixture(scope="session")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's server, started the way slsync starts its embedded one (and stopped at exit the same way):
    on a fresh machine the workers' first starts create the `pgserver` user under slsync's lock."""
    admin = embedded.database_url(tmp_path_factory.mktemp("pg"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    with psycopg.connect(_with_db(admin, TEMPLATE), autocommit=True, row_factory=dict_row) as conn:
        db.migrate(conn)
    yield admin


def _with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def database_url(admin_url: str) -> Iterator[str]:
    name = f"t_{os.getpid()}_{next(_numbers)}"
    admin = admin_url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield _with_db(admin, name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=database_url, data_dir=tmp_path / "data", _env_file=None)


@pytest.fixture
def conn(settings: Settings) -> Iterator[db.Connection]:
    with db.connect(settings) as connection:
        yield connection


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Cli:
    """Runs the installed `slsync` entry point in a subprocess, as cron or an operator would."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slsync", *args]

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env,
            cwd=self.cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **kwargs,
        )

    def __call__(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> Result:
        done = subprocess.run(
            self.command(*args),
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self(*args, **kwargs)
        assert result.returncode == 0, f"slsync {' '.join(args)} exited {result.returncode}: {result.stderr}"
        return result


def base_env(tmp_path: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["SLSYNC_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    return Cli({**base_env(tmp_path), "SLSYNC_DATABASE_URL": database_url}, work)


class Clock:
    """A settable clock for the sync engine (in-process tests)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from slsync import sync

    fixed = Clock(datetime.now(UTC).replace(microsecond=0))
    monkeypatch.setattr(sync, "utcnow", fixed)
    return fixed


def add_mock_source(conn: db.Connection, *, tenant_id: int = 1, name: str = "acme", **options: Any) -> int:
    from slsync.connectors.mock import MockConnector

    config = MockConnector.build_config({"keywords": ["Acme"]}, {k: str(v) for k, v in options.items()})
    return db.add_source(
        conn,
        tenant_id=tenant_id,
        platform="mock",
        name=name,
        connection_type="none",
        config=config,
        interval_minutes=15,
    )


def db_now(conn: db.Connection) -> datetime:
    """The database's clock, which the rows' times come from."""
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def stored_ids(conn: db.Connection, source_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT external_id FROM sl_mentions WHERE source_id = %s ORDER BY external_id", (source_id,)
    ).fetchall()
    return [r["external_id"] for r in rows]


README_EXAMPLE = {
    "keywords": ["acme", "acme coffee"],
    "hashtags": ["acmecoffee"],
    "mentions": ["acme"],
    "exclude": ["jobs"],
    "languages": ["en", "es"],
}


@pytest.fixture
def x_api() -> Iterator[Any]:
    from tests.fakes.x_api import XApi

    api = XApi().start()
    yield api
    api.stop()


@pytest.fixture
def x_cli(cli: Cli, x_api: Any) -> Cli:
    cli.env.update({"SLSYNC_TWITTER_API_URL": x_api.url, "TWITTER_BEARER_TOKEN": "app-token"})
    return cli


def add_x_source(cli: Cli, name: str = "acme") -> int:
    args = ["source", "add", "twitter", "--tenant", "1", "--name", name, "--json"]
    for flag, key in (("--keyword", "keywords"), ("--hashtag", "hashtags"), ("--mention", "mentions"),
                      ("--exclude", "exclude"), ("--language", "languages")):  # fmt: skip
        for value in README_EXAMPLE[key]:
            args += [flag, value]
    return cli.ok(*args).json()["id"]
