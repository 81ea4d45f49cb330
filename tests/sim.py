"""Simulated time for whole days of cron runs in seconds: one clock for the CLI, the SQL and the stand-ins.

The sync engine reads "now" in two places: Python (`slsync.sync.utcnow`, which the connectors' contexts
and the rate-limit budgets use) and PostgreSQL (`now()` in the due check, the schedule, the run log).
A SimClock moves both by the same offset from the real clock:

- in the test's database, a schema `simclock` holds `now()` and `clock_timestamp()` that add the offset
  (kept in one row) to PostgreSQL's own, and the database's search_path puts that schema after public
  (where the tables are) and before pg_catalog, so every `now()` slsync's SQL says resolves to it; the
  columns whose default is `now()` or `clock_timestamp()` are re-pointed the same way. No slsync code
  knows about it;
- in this process, `slsync.sync.utcnow` is replaced by the clock;
- the stand-in APIs are given the clock (their posts, windows and reach follow it).

Commands run through slsync's real entry point (`slsync.cli.run`) in this process: a subprocess would
start the interpreter for every cron tick (a simulated day is 96 ticks) and could not share the clock.
"""

from __future__ import annotations

import functools
import io
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import typer

from tests.conftest import Result

CRON = timedelta(minutes=15)


class SimClock:
    """Real time plus an offset, in this process and in one database."""

    def __init__(self, database_url: str, start: datetime) -> None:
        self.url = database_url
        self.offset = start - datetime.now(UTC)
        with psycopg.connect(database_url, autocommit=True) as conn:
            name = conn.info.dbname
            conn.execute("CREATE SCHEMA simclock")
            conn.execute("CREATE TABLE simclock.shift (by_interval interval NOT NULL)")
            conn.execute("INSERT INTO simclock.shift VALUES (%s)", (self.offset,))
            conn.execute(
                "CREATE FUNCTION simclock.now() RETURNS timestamptz LANGUAGE sql STABLE"
                " AS 'SELECT pg_catalog.now() + by_interval FROM simclock.shift'"
            )
            conn.execute(
                "CREATE FUNCTION simclock.clock_timestamp() RETURNS timestamptz LANGUAGE sql VOLATILE"
                " AS 'SELECT pg_catalog.clock_timestamp() + by_interval FROM simclock.shift'"
            )
            # after public (where tables are made and found), before pg_catalog (where now() would be found)
            path = '"$user", public, simclock, pg_catalog'
            conn.execute(f"ALTER DATABASE {name} SET search_path = {path}")
            conn.execute(f"SET search_path = {path}")
            defaults = conn.execute(
                "SELECT table_name, column_name, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' AND column_default ~ '(now|clock_timestamp)\\(\\)'"
            ).fetchall()
            for table, column, default in defaults:  # bound to pg_catalog's when the table was made
                unbound = default.replace("pg_catalog.", "")
                conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT {unbound}")

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE simclock.shift SET by_interval = %s", (self.offset,))

    def advance_to(self, moment: datetime) -> None:
        self.advance(moment - self())


def next_tick(moment: datetime, startup: timedelta = timedelta(seconds=1)) -> datetime:
    """The next quarter hour after `moment` (cron's */15), plus the command's own startup."""
    base = moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)
    return base + CRON + startup


class InProcessCli:
    """`slsync ...` through the real entry point, in this process, with the environment it is given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
        self.monkeypatch = monkeypatch
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    def setenv(self, key: str, value: str) -> None:
        self.monkeypatch.setenv(key, value)

    def __call__(self, *args: str) -> Result:
        from slsync import cli
        from slsync.config import get_settings

        get_settings.cache_clear()
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.run(cli.app, list(args))
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.returncode == 0, f"slsync {' '.join(args)} exited {result.returncode}: {result.stderr}"
        return result


def simulate(monkeypatch: pytest.MonkeyPatch, database_url: str, start: datetime, **env: str) -> tuple[SimClock, Any]:
    """A clock starting at `start` for the engine and the database, and a CLI that runs under it."""
    from slsync import http, sync

    clock = SimClock(database_url, start)
    monkeypatch.setattr(sync, "utcnow", clock)
    # every command reads the CA bundle again (~50 ms): once is enough for hundreds of commands in a process
    monkeypatch.setattr(http, "tls_context", functools.lru_cache(maxsize=1)(http.tls_context))
    # and Typer builds the click command from the app every time (~25 ms)
    monkeypatch.setattr(typer.main, "get_command", functools.lru_cache(maxsize=1)(typer.main.get_command))
    return clock, InProcessCli(monkeypatch, {"SLSYNC_DATABASE_URL": database_url, **env})
