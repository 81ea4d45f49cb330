"""`slsync doctor`: what would stop the next sync, found before it runs, each check one line with its fix.

Checks, in order: the settings; the database (reachable, its version, the schema); per platform with sources,
its settings and credentials, then one cheap authenticated call per credential (the connector's `probe`);
quotas and rate limits; the token store; connections about to end; sources in error or failing; the clock
against the database's; coverage gaps. With `cron=True` (run from the crontab line), also what this
environment is: who runs it, where its data and tokens are, and whether it sees the sources at all.

A check that cannot run because an earlier one failed (no database) is left out, and the failed one says so.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from slsync import db, tokens
from slsync.auth import one_line
from slsync.budget import RateBudgets
from slsync.connect import context_for
from slsync.connectors import connector_class
from slsync.errors import SlsyncError, UsageError
from slsync.sync import utcnow
from slsync.terminal import counted, user_name

if TYPE_CHECKING:
    from slsync.config import Settings
    from slsync.models import Source

Status = Literal["ok", "warn", "fail"]

# A connection that ends this soon is a warning (as in `status`).
RECONNECT_WARNING = timedelta(days=14)
# Clock skew: tokens' expiry and rate-limit resets are read on this machine's clock, schedules on the database's.
SKEW_WARN_SECONDS = 5.0
SKEW_FAIL_SECONDS = 60.0
# A source failing this many times in a row is worth a look.
FAILING_WARN = 3
# Credentials probed at most (one call each); the others are named as not probed.
MAX_PROBES = 20
# Seconds a probe may take, retries included.
PROBE_SECONDS = 30.0
# A quota with less than this share left is a warning.
QUOTA_WARN_SHARE = 0.1
# Coverage gaps recorded or widened in this many days are reported.
GAP_DAYS = 7
# How many sources one line names before "and N more".
NAMED = 5


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "message": self.message, "fix": self.fix}


@dataclass
class Report:
    checks: list[Check]

    @property
    def failed(self) -> int:
        return sum(1 for c in self.checks if c.status == "fail")

    @property
    def warnings(self) -> int:
        return sum(1 for c in self.checks if c.status == "warn")

    @property
    def summary(self) -> str:
        """The last line: "0 failed, 1 warning, 7 checks"."""
        return f"{self.failed} failed, {counted(self.warnings, 'warning')}, {counted(len(self.checks), 'check')}"

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.failed == 0,
            "failed": self.failed,
            "warnings": self.warnings,
            "checks": [c.as_json() for c in self.checks],
        }


def diagnose(load_settings: Callable[[], Settings], *, cron: bool = False) -> Report:
    """Run every check that can run; a failing one never stops the others that do not depend on it."""
    return Report(list(_checks(load_settings, cron=cron)))


def _checks(load_settings: Callable[[], Settings], *, cron: bool) -> Iterator[Check]:
    try:
        settings = load_settings()
    except UsageError as exc:
        yield Check("settings", "fail", f"{exc} (the other checks need valid settings)", "correct the setting named")
        return
    yield Check("settings", "ok", _settings_line(settings))
    if cron:
        yield from _cron_environment(settings)
    try:
        conn = db.connect(settings, migrate_schema=False)
    except SlsyncError as exc:
        where = "SLSYNC_DATABASE_URL" if settings.database_url else f"SLSYNC_DATA_DIR ({settings.data_dir})"
        yield Check("database", "fail", f"{exc} (the checks that need the database were not run)",
                    f"check {where} and that the database is up")  # fmt: skip
        return
    with conn:
        schema = _schema(conn)
        yield schema
        if schema.status == "fail":
            return
        sources = db.sources_to_check(conn)
        if cron:
            yield _sees_sources(settings, sources)
        yield from _platforms(conn, settings, sources)
        yield from _quotas(conn, sources)
        yield from _token_store(conn, settings, sources)
        yield from _connections(conn, sources)
        yield from _errors(sources)
        yield _clock(conn)
        yield from _gaps(conn, sources)


# --- settings, environment, database ------------------------------------------------------------------


def _settings_line(settings: Settings) -> str:
    dotenv = Path(".env").resolve()
    read = f".env read from {dotenv}" if dotenv.is_file() else f"no .env in {dotenv.parent}"
    return f"valid (SLSYNC_ENV={settings.env}, SLSYNC_TOKEN_STORE={settings.token_store}; {read})"


def _token_place(settings: Settings) -> str:
    if settings.token_store == "file":
        return f"in {settings.data_dir / 'tokens.json'}"
    if settings.token_store == "database":
        key = "SLSYNC_TOKEN_KEY" if settings.token_key is not None else "the OS keyring's key"
        return f"in the database, sealed with {key}"
    return "in the OS keyring"


def _cron_environment(settings: Settings) -> Iterator[Check]:
    """What this process is: the crontab line should show the same as the shell that added the sources."""
    where = "SLSYNC_DATABASE_URL" if settings.database_url else f"the embedded PostgreSQL in {settings.data_dir}"
    home = os.environ.get("HOME", "(unset)")
    yield Check(
        "environment",
        "ok",
        f"user {user_name(os.geteuid())}, HOME {home}, working directory {Path.cwd()}, database {where}, tokens "
        + _token_place(settings),
    )
    if sys.stdin.isatty() or sys.stdout.isatty():
        yield Check(
            "cron",
            "warn",
            "run on a terminal: this shows what this shell sees, which may not be what cron sees",
            "run `slsync doctor --cron` from a crontab line (docs/how-to/cron.md) and read its output",
        )
    data_dir = settings.data_dir
    with suppress(OSError):
        owner = data_dir.stat().st_uid
        if owner != os.geteuid():
            yield Check(
                "data directory",
                "fail",
                f"{data_dir} belongs to {user_name(owner)}, and this runs as {user_name(os.geteuid())}",
                f"run cron as {user_name(owner)} (crontab -u {user_name(owner)}), the user that added the sources",
            )


def _sees_sources(settings: Settings, sources: list[Source]) -> Check:
    if sources:
        return Check("sources", "ok", f"this environment sees {len(sources):,} sources")
    where = "SLSYNC_DATABASE_URL" if settings.database_url else f"SLSYNC_DATA_DIR ({settings.data_dir})"
    return Check(
        "sources",
        "fail",
        f"this environment sees no sources in its database ({where})",
        "cron must run as the same user with the same SLSYNC_DATA_DIR (or SLSYNC_DATABASE_URL) as the commands "
        "that added the sources: set it in the crontab",
    )


def _schema(conn: db.Connection) -> Check:
    version, applied = db.schema_state(conn)
    known = {number for number, _, _ in db.migration_files()}
    where = f"PostgreSQL {version} at {conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    unknown = sorted(applied - known)
    if unknown:
        return Check(
            "database",
            "fail",
            f"{where}: its schema has migration {unknown[-1]}, newer than this slsync knows (up to {max(known)})",
            "upgrade slsync to the release that migrated this database",
        )
    pending = sorted(known - applied)
    if pending:
        db.migrate(conn)  # as every other command does on connecting
        return Check("database", "ok", f"{where}; schema migrated now to {max(known)} ({len(pending)} applied)")
    return Check("database", "ok", f"{where}; schema up to date ({max(known)})")


# --- platforms: settings, credentials, one call each --------------------------------------------------


def _platforms(conn: db.Connection, settings: Settings, sources: list[Source]) -> Iterator[Check]:
    by_platform: dict[str, list[Source]] = {}
    for source in sources:
        by_platform.setdefault(source.platform, []).append(source)
    probes: list[tuple[str, Source, int]] = []  # (credential key, its first source, sources on it)
    for platform, group in sorted(by_platform.items()):
        connector = connector_class(platform)
        pending = [s for s in group if s.status == "pending"]
        ready = [s for s in group if s.status != "pending"]
        if pending:
            yield Check(
                f"{platform} sources",
                "warn",
                f"{_named(pending)} not connected to an account yet",
                f"slsync connect {pending[0].id}",
            )
        try:
            connector.settings_of(settings)
        except UsageError as exc:
            yield Check(f"{platform} settings", "fail", str(exc), "correct the setting named")
            continue
        missing: dict[str, list[Source]] = {}
        keys: dict[str, list[Source]] = {}
        for source in ready:
            for name in connector.missing_settings(source, settings):
                missing.setdefault(name, []).append(source)
            key = _credential_key(connector, source, settings)
            if key is not None and not connector.missing_settings(source, settings):
                keys.setdefault(key, []).append(source)
        if missing:
            names = sorted(missing)
            needing = sorted({s.id: s for group in missing.values() for s in group}.values(), key=lambda s: s.id)
            yield Check(
                f"{platform} settings",
                "fail",
                f"{' and '.join(names)} not set in this environment, needed by {_named(needing)}",
                f"set {' and '.join(names)} where slsync runs (for cron: in the crontab; docs/platforms/{platform}.md)",
            )
        elif ready:
            needed = "need no credentials" if connector.connection_type == "none" else "have their settings"
            yield Check(f"{platform} settings", "ok", f"{counted(len(ready), 'source')}: {needed}")
        probes += [(key, on_key[0], len(on_key)) for key, on_key in keys.items()]
    for number, (_key, source, sharing) in enumerate(probes):
        if number == MAX_PROBES:
            yield Check(
                "calls", "warn", f"{len(probes) - MAX_PROBES} more credentials not probed (at most {MAX_PROBES})"
            )
            break
        yield _probe(conn, settings, source, sharing)


def _credential_key(connector: Any, source: Source, settings: Settings) -> str | None:
    """What the source's calls authenticate with, so that sources sharing a credential are probed once."""
    if source.connection_type == "user":
        return f"{source.platform}:user:{source.id}"
    if source.connection_type == "none":
        return None
    try:
        credentials = connector.app_credentials(source, settings)
    except UsageError:
        return None
    return credentials.key if credentials is not None else None


def _probe(conn: db.Connection, settings: Settings, source: Source, sharing: int) -> Check:
    connector_cls = connector_class(source.platform)
    name = f"{source.platform} call"
    who = f"source {source.id}" + (f" and {sharing - 1} more on its credentials" if sharing > 1 else "")
    locked = source.connection_type != "user" or db.try_lock_source(conn, source.id)
    if not locked:  # a run holds the token now, and may be renewing it
        return Check(name, "ok", f"{who}: syncing now, not probed")
    context = context_for(
        conn, connector_cls, source, settings, now=utcnow, deadline=time.monotonic() + PROBE_SECONDS,
        budgets=RateBudgets(utcnow), quota=db.QuotaLedger(conn), http=None,
    )  # fmt: skip
    try:
        said = connector_cls(source, context).probe()
    except SlsyncError as exc:
        return Check(name, "fail", f"{who}: {one_line(str(exc), 300)}", connector_cls.reconnect_advice(source.id))
    finally:
        context.close()
        if source.connection_type == "user":
            db.unlock_source(conn, source.id)
    if said is None:
        return Check(name, "ok", f"{who}: nothing to check")
    return Check(name, "ok", f"{who}: {said}")


# --- quotas, rate limits, tokens, connections, errors, clock, gaps ------------------------------------


def _quotas(conn: db.Connection, sources: list[Source]) -> Iterator[Check]:
    for row in db.quota_usage(conn):
        left = max(row["quota"] - row["used"], 0)
        period = "today" if row["period"] == "day" else f"in the rolling {row['period']}"
        message = f"{row['credential_key']}: {left:,} of {row['quota']:,} left {period}"
        if left == 0:
            frees = f" (a slot frees at {_utc(row['frees_at'])})" if row["frees_at"] else ""
            yield Check("quota", "fail", message + frees, "its sources are deferred until it resets: sync them less "
                        "often (--interval), or ask the platform for a larger quota")  # fmt: skip
        elif left < QUOTA_WARN_SHARE * row["quota"]:
            yield Check("quota", "warn", message, "sync its sources less often if it runs out every day")
        else:
            yield Check("quota", "ok", message)
    now = datetime.now(UTC)
    limited = [
        s for s in sources if s.rate_limit_remaining == 0 and s.rate_limit_reset_at and s.rate_limit_reset_at > now
    ]
    if limited:
        until = max(s.rate_limit_reset_at for s in limited if s.rate_limit_reset_at)
        yield Check("rate limits", "warn", f"{_named(limited)} rate limited, until {_utc(until)} at the latest")


def _token_store(conn: db.Connection, settings: Settings, sources: list[Source]) -> Iterator[Check]:
    connected = [s for s in sources if s.connection_type == "user" and s.status != "pending"]
    unreadable_fix = "remove the file and connect the sources again"
    if settings.token_store == "database":
        try:
            store: tokens.TokenStore = tokens.open_store(settings, database=db.TokenTable(conn))
        except UsageError as exc:
            status: Status = "fail" if connected else "warn"
            yield Check("token store", status, str(exc), "slsync tokens new-key, then set SLSYNC_TOKEN_KEY")
            return
        unreadable_fix = "give this machine the SLSYNC_TOKEN_KEY the other machines use"
    elif settings.token_store == "keyring":
        try:
            store = tokens.KeyringStore()
        except UsageError as exc:
            status = "fail" if connected else "warn"
            yield Check("token store", status, str(exc), "SLSYNC_TOKEN_STORE=file, then connect the sources again")
            return
    else:
        path = settings.data_dir / "tokens.json"
        problem = _file_problem(path)
        if problem is not None:
            yield problem
            return
        if not path.exists():
            if connected:
                yield Check(
                    "token store",
                    "fail",
                    f"no token file at {path}, and {_named(connected)} are connected",
                    "run with the SLSYNC_DATA_DIR and SLSYNC_TOKEN_STORE of `slsync connect`, or connect them again",
                )
            else:
                yield Check("token store", "ok", f"{path} (no tokens yet)")
            return
        store = tokens.FileStore(path)
    try:
        absent = [s for s in connected if store.get(s.id) is None]
    except UsageError as exc:
        yield Check("token store", "fail", one_line(str(exc), 300), unreadable_fix)
        return
    except Exception as exc:  # a keyring backend's own failure
        yield Check("token store", "fail", f"{store.where} cannot be read: {one_line(str(exc), 200)}")
        return
    if absent:
        yield Check(
            "token store",
            "fail",
            f"{store.where} has no token for {_named(absent)}",
            "run with the SLSYNC_DATA_DIR and SLSYNC_TOKEN_STORE that `slsync connect` used, or connect "
            f"again: slsync connect {absent[0].id}",
        )
    else:
        yield Check("token store", "ok", f"{store.where}: {counted(len(connected), 'connected source')}, all found")


def _file_problem(path: Path) -> Check | None:
    """A token file (or its folder) that others can read, or that belongs to another user."""
    me = os.geteuid()
    for item, private in ((path.parent, 0o077), (path, 0o077)):
        try:
            info = item.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return Check("token store", "fail", f"{item} cannot be read: {exc.strerror}")
        if info.st_uid != me:
            return Check(
                "token store",
                "fail",
                f"{item} belongs to {user_name(info.st_uid)}, and this runs as {user_name(me)}",
                f"run slsync (and cron) as {user_name(info.st_uid)}, the user that connected the sources",
            )
        if stat.S_ISREG(info.st_mode) and info.st_mode & private:
            mode = stat.S_IMODE(info.st_mode)
            return Check("token store", "fail", f"{item} is readable by others (mode {mode:04o})", f"chmod 600 {item}")
        if not os.access(item, os.R_OK):
            return Check("token store", "fail", f"{item} cannot be read by {user_name(me)}")
    return None


def _connections(conn: db.Connection, sources: list[Source]) -> Iterator[Check]:
    now = db.database_clock(conn)
    for source in sources:
        ends = source.reconnect_by
        if ends is None or ends - now > RECONNECT_WARNING:
            continue
        what = _one(source)
        if ends <= now:
            yield Check(
                "connection", "fail", f"{what}: its connection ended {_utc(ends)}", f"slsync connect {source.id}"
            )
        else:
            days = (ends - now).days
            left = f"in {days} days" if days > 1 else "within 2 days"
            yield Check(
                "connection",
                "warn",
                f"{what}: its connection ends {_utc(ends)} ({left})",
                f"slsync connect {source.id}",
            )


def _errors(sources: list[Source]) -> Iterator[Check]:
    for source in sources:
        if source.status == "error":
            yield Check(
                "source",
                "fail",
                f"{_one(source)} is in error: {one_line(source.error_message or 'no message', 300)}",
                f"fix what the message names, then: slsync sync source {source.id}",
            )
    failing = [s for s in sources if s.status == "failing" and s.consecutive_failures >= FAILING_WARN]
    for source in failing[:NAMED]:
        yield Check(
            "source",
            "warn",
            f"{_one(source)} failed {source.consecutive_failures} times in a row: "
            f"{one_line(source.error_message or 'no message', 300)}",
            "slsync status " + str(source.id),
        )
    if not any(s.status == "error" for s in sources) and not failing:
        yield Check("source", "ok", "none in error or failing")


def _clock(conn: db.Connection) -> Check:
    before = time.time()
    database = db.database_clock(conn).timestamp()
    after = time.time()
    skew = database - (before + after) / 2
    message = f"the database's clock is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} this machine's"
    fix = "synchronize both clocks (NTP: timedatectl set-ntp true)"
    if abs(skew) >= SKEW_FAIL_SECONDS:
        return Check("clock", "fail", message + ": schedules, rate limits and token expiry disagree", fix)
    if abs(skew) >= SKEW_WARN_SECONDS:
        return Check("clock", "warn", message, fix)
    return Check("clock", "ok", f"this machine and the database agree within {max(abs(skew), 0.1):.1f} s")


def _gaps(conn: db.Connection, sources: list[Source]) -> Iterator[Check]:
    """A source still beyond its platform's reach loses mentions now (fail); recent gaps are a warning."""
    now = db.database_clock(conn)
    found = db.recent_gaps(conn, days=GAP_DAYS)
    losing = []
    for source in sources:
        reach = connector_class(source.platform).reach(source.config) if source.covered_until else None
        if reach is not None and source.covered_until is not None and source.covered_until < now - reach:
            losing.append(source)
    for source in losing[:NAMED]:
        yield Check(
            "coverage",
            "fail",
            f"{_one(source)} was last covered {_utc(source.covered_until)}, beyond what the platform still serves: "
            "mentions are being lost",
            f"fix why it is not syncing (slsync status {source.id}), then: slsync sync source {source.id}",
        )
    recent = {sid: gaps for sid, gaps in found.items() if sid not in {s.id for s in losing}}
    if recent:
        count = sum(len(g) for g in recent.values())
        yield Check(
            "coverage",
            "warn",
            f"{counted(count, 'coverage gap')} in the last {GAP_DAYS} days, in sources "
            f"{', '.join(str(s) for s in sorted(recent)[:NAMED])}{' ...' if len(recent) > NAMED else ''}",
            "slsync status SOURCE_ID names each gap and its reason",
        )
    elif not losing:
        yield Check("coverage", "ok", f"no coverage gaps in the last {GAP_DAYS} days")


# --- wording -------------------------------------------------------------------------------------------


def _one(source: Source) -> str:
    return f"source {source.id} ({source.platform}: {one_line(source.name, 80)})"


def _named(sources: list[Source]) -> str:
    ids = ", ".join(str(s.id) for s in sources[:NAMED])
    more = f" and {len(sources) - NAMED} more" if len(sources) > NAMED else ""
    return f"{'source' if len(sources) == 1 else 'sources'} {ids}{more}"


def _utc(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if moment else "-"
