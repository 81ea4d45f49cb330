"""The thin SQL repository: the only module that imports psycopg.

Connections run in autocommit; every multi-statement write is one explicit transaction. Per-source
mutual exclusion is a session advisory lock held by the connection that does the work, so a killed
process releases it the moment PostgreSQL notices the closed socket.

Every wait on the database is bounded: each session gets a lock timeout and a statement timeout (see
connect), and a failure of the database itself (a timeout, a full disk, a deadlock, a lost connection)
comes out as DatabaseError, classified by its SQLSTATE, so that the layers above never charge it to a source.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
import weakref
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row, namedtuple_row
from psycopg.types.json import Jsonb

from slsync.config import Settings
from slsync.errors import DatabaseError, DatabaseUnavailable, NotFound, SetupError, UsageError
from slsync.models import Gap, Mention, Page, RateLimit, Source, Stored

# First key of every advisory lock slsync takes ('slsy'); the second is the source id (0: migrations).
LOCK_NAMESPACE = 0x736C7379

log = logging.getLogger("slsync.db")

# When a source is due: both the claim and the check under a source's lock read it. The claim's use must
# imply the predicate of sl_sources_due_idx for the planner to use that index. A source is due up to
# DUE_EARLY before its time: a sync is scheduled an interval after the previous one was claimed, and cron
# starts each run a little later or sooner than the last (process start, imports, connecting), so without
# it a 15-minute source under a 15-minute cron missed every tick whose start was the quicker one and
# waited 30 minutes.
DUE_EARLY_SECONDS = 60
_DUE = (
    "status IN ('active', 'connected', 'failing')"
    f" AND next_sync_at <= now() + make_interval(secs => {DUE_EARLY_SECONDS})"
)

_SOURCE_COLUMNS = """
    s.id, s.tenant_id, s.platform, s.name, s.connection_type, s.config, s.status, s.error_message,
    s.sync_interval_minutes, s.last_sync_at, s.next_sync_at, s.committed_cursor, s.inflight_cursor,
    s.rate_limit_limit, s.rate_limit_remaining, s.rate_limit_reset_at, s.consecutive_failures,
    s.mentions_count, s.created_at, s.reconnect_by, s.claimed_at, s.covered_until, s.inflight_started_at,
    s.behind_reason, s.interval_mode, s.min_interval_minutes, s.max_interval_minutes, s.mention_rate
"""

# what planning reads of a source: not its cursors, the largest columns
_PLAN_COLUMNS = _SOURCE_COLUMNS.replace(
    "s.committed_cursor, s.inflight_cursor", "NULL AS committed_cursor, NULL AS inflight_cursor"
)
assert _PLAN_COLUMNS != _SOURCE_COLUMNS


# --- connections and migrations -------------------------------------------------------------------


class Connection(psycopg.Connection[dict[str, Any]]):
    """An autocommit connection whose database failures surface as DatabaseError (see database_error)."""

    # the session's timeouts in milliseconds, as connect left them (0: none), for the messages
    timeouts: dict[str, int]

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> psycopg.Cursor[dict[str, Any]]:
        try:
            return super().execute(query, params, **kwargs)
        except psycopg.Error as exc:
            raise database_error(exc, self) from exc

    @contextmanager
    def transaction(self, savepoint_name: str | None = None, force_rollback: bool = False) -> Iterator[Any]:
        try:
            with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
        except psycopg.Error as exc:  # the COMMIT, or a server-side cursor's fetch inside the block
            raise database_error(exc, self) from exc


def resolve_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from slsync import embedded

    return embedded.database_url(settings.data_dir)


# For the connections that sync. A page's mentions and its cursor commit in one transaction, so not
# waiting for the WAL flush cannot break the guarantees: a PostgreSQL crash may lose the last
# fraction of a second of pages, cursor and mentions together, and the next run fetches them again.
SYNC_OPTIONS = "-c synchronous_commit=off"

# Each session's timeouts: slsync's value, or the server's (a role's, a database's) where that is stricter.
# pg_settings gives them in milliseconds, 0 meaning none; a wanted 0 leaves the server's setting alone.
# The same round trip puts the session in UTC, so that a datetime from the database needs no conversion
# before it is written as JSON (orjson writes the offset it finds; `status --json` writes ~500,000 of
# them at 100,000 sources). A SET rather than a startup option, which PgBouncer refuses by default.
_SESSION_SETTINGS = """
SELECT name, value, set_config(name, value::text, false) AS applied
FROM (
    SELECT name, CASE WHEN want = 0 THEN setting::bigint WHEN setting::bigint = 0 THEN want
                      ELSE least(setting::bigint, want) END AS value
    FROM pg_settings JOIN (VALUES ('lock_timeout', %s::bigint), ('statement_timeout', %s::bigint),
                                  ('idle_in_transaction_session_timeout', %s::bigint)) AS wanted (name, want)
    USING (name)
) chosen, (SELECT set_config('TimeZone', 'UTC', false)) AS utc
"""


def session_timeouts(settings: Settings, *, for_sync: bool) -> tuple[int, int, int]:
    """Milliseconds of (lock, statement, idle in transaction) a session asks for.

    A sync command's statements take at most half its time budget, so that the command ends within its
    budget and one such statement; a transaction left idle longer than the whole budget belongs to a
    process that is stuck, and the server ends its session. Other commands (status, an export that a slow
    reader paces) take the settings as they are and leave idle transactions alone. A wait for a lock
    ends within half the statement timeout, so that it is told apart from a slow statement.
    """
    statement = settings.db_statement_timeout_seconds
    idle = 0.0
    if for_sync:
        statement, idle = min(statement, settings.time_budget_seconds / 2), settings.time_budget_seconds
    lock = min(settings.db_lock_timeout_seconds, statement / 2)
    return max(1, round(lock * 1000)), max(1, round(statement * 1000)), round(idle * 1000)


def connect(settings: Settings, *, migrate_schema: bool = True, for_sync: bool = False) -> Connection:
    """Open an autocommit connection with bounded waits, and bring the schema up to date."""
    url = resolve_url(settings)
    conn = _open(url, settings, for_sync=for_sync)
    if migrate_schema:
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def _open(url: str, settings: Settings, *, for_sync: bool) -> Connection:
    extra = {"options": SYNC_OPTIONS} if for_sync else {}
    try:
        conn = Connection.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=10, **extra)
    except psycopg.ProgrammingError:
        raise UsageError("SLSYNC_DATABASE_URL is not a valid PostgreSQL connection URL") from None
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {_where(url)}: {_first_line(exc, url)}") from None
    try:
        rows = conn.execute(_SESSION_SETTINGS, session_timeouts(settings, for_sync=for_sync)).fetchall()
    except BaseException:
        conn.close()
        raise
    conn.timeouts = {row["name"]: int(row["value"]) for row in rows}
    return conn


# How PostgreSQL refuses a connection for want of slots (max_connections, a role's or a database's
# CONNECTION LIMIT). A refused connection carries no SQLSTATE in libpq, only the server's words.
_NO_SLOTS = re.compile(r"too many clients|too many connections|connection slots are reserved")


def open_connections(settings: Settings, count: int) -> list[Connection]:
    """Up to `count` sync connections, opened at once; fewer when the server has no more to give (the caller
    does with what it got and closes them). Any other refusal raises DatabaseUnavailable."""
    url = resolve_url(settings)

    def attempt(_: int) -> Connection | DatabaseError:
        try:
            return _open(url, settings, for_sync=True)
        except DatabaseError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(count, 8), thread_name_prefix="slsync-connect") as executor:
        outcomes = list(executor.map(attempt, range(count)))
    opened = [c for c in outcomes if isinstance(c, Connection)]
    refusal = next((e for e in outcomes if isinstance(e, DatabaseError) and not _NO_SLOTS.search(str(e))), None)
    if refusal is not None:
        for conn in opened:
            conn.close()
        raise refusal
    return opened


# The server session each connection had when it first reported one: claims and source locks belong to a
# session, so a connection whose statements land in different sessions (a transaction-pooling proxy such as
# PgBouncer in transaction mode) would keep neither. Checked on statements that run anyway (no extra round trip).
_sessions: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()

SESSION_POOLING = (
    "the database connection moved between server sessions from one transaction to the next, as behind a "
    "transaction-pooling proxy (PgBouncer's pool_mode = transaction): slsync's claims and source locks belong "
    "to a session, so connect directly or through session pooling (pool_mode = session)"
)


def _same_session(conn: Connection, pid: int) -> None:
    first = _sessions.setdefault(conn, pid)
    if first != pid:
        raise SetupError(SESSION_POOLING)


def _where(url: str) -> str:
    """host:port/dbname of a URL, never its password."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the configured URL"
    host = str(info.get("host") or "localhost")
    port = info.get("port")
    return f"{host}{':' + str(port) if port else ''}/{info.get('dbname') or ''}"


def _first_line(exc: BaseException, url: str) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    return text.replace(str(password), "***") if password else text


# SQLSTATEs of a database in trouble rather than of a statement or its data: connection exceptions,
# transaction rollbacks (serialization failure, deadlock), insufficient resources (disk full, too many
# connections), operator intervention (a statement timeout or cancel, a shutdown), system and internal
# errors; and a lock not granted in time, a transaction left idle too long.
_DATABASE_CLASSES = ("08", "40", "53", "57", "58", "XX")
_DATABASE_STATES = ("55P03", "55006", "25P03")
_LOST = ("57P01", "57P02", "57P03")


def database_error(exc: psycopg.Error, conn: psycopg.Connection[Any] | None = None) -> Exception:
    """`exc` as a one-line DatabaseError when the database itself failed, else `exc` unchanged: a value
    PostgreSQL refuses or a bug in a query is the run's own failure."""
    state = exc.sqlstate
    primary = exc.diag.message_primary or _first_line(exc, "")
    if state is None:
        lost = isinstance(exc, psycopg.OperationalError) or (conn is not None and conn.closed)
        return DatabaseError(f"database: the connection to PostgreSQL was lost ({primary})") if lost else exc
    if state[:2] not in _DATABASE_CLASSES and state not in _DATABASE_STATES:
        return exc
    timeouts: dict[str, int] = getattr(conn, "timeouts", {})
    if state == "55P03":
        waited = " ".join(filter(None, ("waited", _seconds(timeouts.get("lock_timeout")), "for a lock")))
        held = _lock_holders(conn)
        what = (
            f"{waited} and gave up (lock timeout): another session holds {held}"
            if held
            else f"{waited} held by another session and gave up (lock timeout)"
        )
    elif state == "57014" and "statement timeout" in primary:
        limit = _seconds(timeouts.get("statement_timeout"))
        what = "a statement ran past the statement timeout" + (f" of {limit}" if limit else "")
    elif state == "53100":
        what = f"the database server's disk is full: {primary}"
    elif state == "40P01":
        what = "a deadlock with another session, which PostgreSQL broke by cancelling slsync's statement"
    elif state[:2] == "08" or state in _LOST:
        what = f"the connection to PostgreSQL was lost ({primary})"
    else:
        what = primary
    return DatabaseError(f"database: {what} (SQLSTATE {state})", sqlstate=state)


def _seconds(milliseconds: int | None) -> str:
    return f"{milliseconds / 1000:g} s" if milliseconds else ""


# Tables of slsync that another session holds in a mode that blocks slsync's reads or writes.
_LOCK_HOLDERS = r"""
SELECT l.relation::regclass::text AS relation, l.mode, l.pid FROM pg_locks l
WHERE l.granted AND l.locktype = 'relation' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
  AND l.relation::regclass::text LIKE 'sl\_%'
ORDER BY 1, 3 LIMIT 3
"""


def _lock_holders(conn: psycopg.Connection[Any] | None) -> str:
    """'sl_mentions (pid 812, AccessExclusiveLock)': who holds what slsync waited for, when that can be told:
    only outside a transaction (inside one, the failed statement has aborted it)."""
    rows = []
    if conn is not None and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        with suppress(psycopg.Error):
            rows = psycopg.Connection.execute(conn, _LOCK_HOLDERS).fetchall()
    return ", ".join(f"{row['relation']} (pid {row['pid']}, {row['mode']})" for row in rows)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every numbered migration, in order.

    The wheel carries them as slsync/sql; a source checkout keeps them in ./sql beside the package.
    """
    packaged = resources.files("slsync") / "sql"
    folder = Path(str(packaged)) if packaged.is_dir() else Path(__file__).resolve().parent.parent / "sql"
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = re.match(r"(\d+)_", path.name)
        if match:
            found.append((int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    if not found:
        raise DatabaseUnavailable(f"no schema migrations found in {folder}: the installation is incomplete")
    return found


def migrate(conn: Connection) -> list[str]:
    """Apply missing migrations in order; returns the names applied.

    Files are applied together in one transaction under an advisory lock, so concurrent first runs apply
    each exactly once. A file that starts with ONLINE (an index built CONCURRENTLY, rows moved in batches
    that commit one by one) cannot run in a transaction, and on a large table takes minutes: it runs alone,
    under a session lock of its own, and must be safe to run again after an interruption and unneeded by
    the code (it may only make things faster or smaller). So another process that finds it running goes on
    with its command, unless a transactional file waits behind it.
    """
    applied: list[str] = []
    files = migration_files()
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, _MIGRATION_LOCK))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sl_schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            pending = [f for f in files if f[0] not in _applied_versions(conn)]
            if pending:
                # A migration may rewrite a large table: it waits for its locks no longer than any statement,
                # but once it has them it runs to the end.
                conn.execute("SET LOCAL statement_timeout = 0")
            while pending and not pending[0][2].startswith(ONLINE):
                version, name, sql = pending.pop(0)
                conn.execute(sql)
                _record(conn, version, name)
                applied.append(name)
        if not pending:
            return applied
        if not _apply_online(conn, pending):
            return applied
        applied.append(pending[0][1])


# The first line of a migration that runs outside a transaction (see migrate).
ONLINE = "-- slsync: online"
# Second keys of the advisory locks of migrations (the first is LOCK_NAMESPACE; sources use their ids >= 1).
_MIGRATION_LOCK, _ONLINE_MIGRATION_LOCK = 0, -1


def _applied_versions(conn: Connection) -> set[int]:
    return {row["version"] for row in conn.execute("SELECT version FROM sl_schema_migrations")}


def _record(conn: Connection, version: int, name: str) -> None:
    conn.execute(
        "INSERT INTO sl_schema_migrations (version, name) VALUES (%s, %s) ON CONFLICT (version) DO NOTHING",
        (version, name),
    )


def _apply_online(conn: Connection, pending: list[tuple[int, str, str]]) -> bool:
    """Run the first pending file, an online one; False if another process runs it and this one may go on.

    The lock is polled rather than waited for: a CREATE INDEX CONCURRENTLY in the other process waits for
    every running statement's snapshot to end, this one's wait included, which would never end.
    """
    version, name, sql = pending[0]
    must_wait = any(not later.startswith(ONLINE) for _, _, later in pending[1:])
    while not _try_lock(conn, _ONLINE_MIGRATION_LOCK):
        if not must_wait:
            log.info("%s is being applied by another process; going on", name)
            return False
        time.sleep(0.5)
    try:
        if version in _applied_versions(conn):
            return True
        # an online file interrupted while building an index leaves it invalid (and IF NOT EXISTS would keep
        # it): no slsync process builds one now, this lock says so
        for row in conn.execute(
            "SELECT indexrelid::regclass::text AS name FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid AND c.relname LIKE 'sl\\_%'"
        ).fetchall():
            conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{row["name"]}"')
        log.info("applying %s (online)", name)
        conn.add_notice_handler(_log_notice)
        # as in migrate: it waits for its locks no longer than any statement, then runs to the end
        row = conn.execute("SELECT current_setting('statement_timeout') AS limit").fetchone()
        conn.execute("SET statement_timeout = 0")
        try:
            conn.execute(sql)
        finally:
            conn.remove_notice_handler(_log_notice)
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (row["limit"] if row else "0",))
        _record(conn, version, name)
        return True
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, _ONLINE_MIGRATION_LOCK))


def _try_lock(conn: Connection, key: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS locked", (LOCK_NAMESPACE, key)).fetchone()
    return bool(row and row["locked"])


def _log_notice(notice: psycopg.errors.Diagnostic) -> None:
    """An online migration's progress (RAISE NOTICE) and its news for the operator (RAISE WARNING)."""
    level = logging.WARNING if notice.severity_nonlocalized == "WARNING" else logging.INFO
    log.log(level, "%s", notice.message_primary, extra={"event": "migration"})


# --- sources --------------------------------------------------------------------------------------


def _source(row: Mapping[str, Any]) -> Source:
    return Source(**row)


def add_source(
    conn: Connection,
    *,
    tenant_id: int,
    platform: str,
    name: str,
    connection_type: str,
    config: Mapping[str, Any],
    interval_minutes: int,
    status: str = "active",
    auto_interval: tuple[int, int] | None = None,
) -> int:
    """A new source; `auto_interval` (lowest, highest minutes) makes its interval follow its volume, starting
    at `interval_minutes`."""
    lowest, highest = auto_interval or (None, None)
    try:
        row = conn.execute(
            "INSERT INTO sl_sources (tenant_id, platform, name, connection_type, config, sync_interval_minutes,"
            " status, interval_mode, min_interval_minutes, max_interval_minutes)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                tenant_id,
                platform,
                name,
                connection_type,
                Jsonb(dict(config)),
                interval_minutes,
                status,
                "auto" if auto_interval else "fixed",
                lowest,
                highest,
            ),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise UsageError(f"tenant {tenant_id} already has a {platform} source named {name!r}") from None
    assert row is not None
    return int(row["id"])


def get_source(conn: Connection, source_id: int, *, tenant_id: int | None = None) -> Source:
    row = conn.execute(
        f"SELECT {_SOURCE_COLUMNS} FROM sl_sources s WHERE s.id = %s AND (%s::bigint IS NULL OR s.tenant_id = %s)",
        (source_id, tenant_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"no source with id {source_id}" + (f" in tenant {tenant_id}" if tenant_id is not None else ""))
    return _source(row)


def source_for_run(conn: Connection, source_id: int) -> tuple[Source, bool, datetime]:
    """The source, whether it is due, and the database's time: what a run reads under the source's lock,
    in one round trip."""
    row = conn.execute(
        f"SELECT {_SOURCE_COLUMNS}, {_DUE} AS due, now() AS db_now, pg_backend_pid() AS session"
        " FROM sl_sources s WHERE s.id = %s",
        (source_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no source with id {source_id}")
    _same_session(conn, row.pop("session"))  # the lock taken a statement ago is this session's
    due, now = bool(row.pop("due")), row.pop("db_now")
    return _source(row), due, now


def find_source(conn: Connection, *, tenant_id: int, platform: str, name: str) -> Source | None:
    row = conn.execute(
        f"SELECT {_SOURCE_COLUMNS} FROM sl_sources s WHERE s.tenant_id = %s AND s.platform = %s AND s.name = %s",
        (tenant_id, platform, name),
    ).fetchone()
    return _source(row) if row else None


def list_sources(conn: Connection, *, tenant_id: int | None = None) -> list[Source]:
    rows = conn.execute(
        f"SELECT {_SOURCE_COLUMNS} FROM sl_sources s WHERE (%s::bigint IS NULL OR s.tenant_id = %s)"
        " ORDER BY s.tenant_id, s.id",
        (tenant_id, tenant_id),
    ).fetchall()
    return [_source(row) for row in rows]


def remove_source(conn: Connection, source_id: int) -> None:
    """Delete a source and its run log; its mentions stay (source_id becomes NULL), off the refresh schedule."""
    with conn.transaction():
        if not try_lock_source(conn, source_id, transaction=True):
            raise UsageError(f"source {source_id} is syncing now; remove it when the run has ended")
        # without their source (and its credentials) the mentions cannot be read again: off the schedule
        conn.execute(
            "UPDATE sl_mentions SET refresh_due_at = NULL WHERE source_id = %s AND refresh_due_at IS NOT NULL",
            (source_id,),
        )
        deleted = conn.execute("DELETE FROM sl_sources WHERE id = %s", (source_id,)).rowcount
    if not deleted:
        raise NotFound(f"no source with id {source_id}")


# --- claiming and locking -------------------------------------------------------------------------


def claim_due(conn: Connection, limit: int) -> list[int]:
    """Claim up to `limit` due sources for this session, never-synced first, then the oldest.

    SKIP LOCKED lets concurrent claimers pass each other; the claim (this session's backend pid)
    keeps other `sync due` runs from taking the same sources while this one works through them,
    and lapses by itself when this session ends, however it ends.
    """
    rows = conn.execute(
        f"""
        WITH due AS (
            SELECT id FROM sl_sources
            WHERE {_DUE}
              AND (rate_limit_remaining IS DISTINCT FROM 0
                   OR rate_limit_reset_at IS NULL OR rate_limit_reset_at <= now())
              AND (claimed_by IS NULL OR claimed_by NOT IN (SELECT pid FROM pg_stat_activity))
            ORDER BY last_sync_at ASC NULLS FIRST, next_sync_at, id
            LIMIT %s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE sl_sources s SET claimed_by = pg_backend_pid(), claimed_at = now()
        FROM due WHERE s.id = due.id
        RETURNING s.id, s.last_sync_at, s.next_sync_at, pg_backend_pid() AS session
        """,
        (limit,),
    ).fetchall()
    if rows:
        _same_session(conn, rows[0]["session"])
    rows.sort(key=lambda r: (r["last_sync_at"] is not None, r["last_sync_at"] or r["next_sync_at"], r["id"]))
    return [int(r["id"]) for r in rows]


def release_claims(conn: Connection, source_ids: Sequence[int]) -> None:
    """Release this session's claims on the sources it claimed (most are released by their run's end already).

    By id, through the primary key: matching `claimed_by` alone read every source, 18 ms at 100,000. The
    claims of the session that made them, even if this statement lands in another (then reported)."""
    row = conn.execute(
        "WITH released AS (UPDATE sl_sources SET claimed_by = NULL"
        " WHERE id = ANY(%s) AND claimed_by = coalesce(%s, pg_backend_pid())) SELECT pg_backend_pid() AS session",
        (list(source_ids), _sessions.get(conn)),
    ).fetchone()
    if row:
        _same_session(conn, row["session"])


def try_lock_source(conn: Connection, source_id: int, *, transaction: bool = False) -> bool:
    func = "pg_try_advisory_xact_lock" if transaction else "pg_try_advisory_lock"
    row = conn.execute(
        f"SELECT {func}(%s, %s) AS locked, pg_backend_pid() AS session", (LOCK_NAMESPACE, source_id)
    ).fetchone()
    assert row is not None
    if not transaction:
        _same_session(conn, row["session"])
    return bool(row["locked"])


def unlock_source(conn: Connection, source_id: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_NAMESPACE, source_id))


def tenant_known(conn: Connection, tenant_id: int) -> bool:
    """Whether the tenant has a source or a stored mention (the mentions of removed sources stay)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM sl_sources WHERE tenant_id = %(t)s)"
        " OR EXISTS (SELECT 1 FROM sl_mentions WHERE tenant_id = %(t)s) AS known",
        {"t": tenant_id},
    ).fetchone()
    return bool(row and row["known"])


def tenant_source_ids(conn: Connection, tenant_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM sl_sources WHERE tenant_id = %s AND status <> 'pending'"
        " ORDER BY last_sync_at ASC NULLS FIRST, id",
        (tenant_id,),
    ).fetchall()
    return [int(r["id"]) for r in rows]


# --- runs -----------------------------------------------------------------------------------------


def begin_run(conn: Connection, source: Source, trigger: str) -> int:
    """Open a run record. Call with the source lock held: any run still 'running' is dead.

    One statement (one round trip, atomic): the INSERT's row is not seen by the UPDATE beside it."""
    row = conn.execute(
        "WITH abandoned AS (UPDATE sl_sync_runs SET status = 'abandoned', finished_at = clock_timestamp(),"
        " message = 'the process running this sync ended before it finished'"
        " WHERE source_id = %(source)s AND status = 'running')"
        " INSERT INTO sl_sync_runs (source_id, tenant_id, trigger) VALUES (%(source)s, %(tenant)s, %(trigger)s)"
        " RETURNING id",
        {"source": source.id, "tenant": source.tenant_id, "trigger": trigger},
    ).fetchone()
    assert row is not None
    return int(row["id"])


# One statement, so one round trip and one implicit transaction: the pages' mentions and their raw
# payloads, the source's counter, in-flight cursor and rate limit, and the run's counters. The page travels
# as one JSON array of positional rows (see _mention_row): no keys to write in Python or to look up in
# PostgreSQL. Measured ~10% faster than the array of objects it replaced (less CPU on both sides) and faster
# than COPY into a staging table at a page of 100, whose extra round trips cost more than COPY saves
# (benchmarks/README.md). JSON null comes out of ->> as SQL NULL; raw's NULLIF does the same for ->.
# A new mention's payload joins it by external_id, unique within a write (_save keeps the first of twins).
_SAVE = """
WITH page AS (
    SELECT r->>0 AS external_id, r->>1 AS url, r->>2 AS content, r->>3 AS author_name, r->>4 AS author_handle,
        (r->>5)::bigint AS author_followers, (r->>6)::boolean AS author_verified,
        (r->>7)::timestamptz AS published_at, (r->>8)::bigint AS likes_count, (r->>9)::bigint AS comments_count,
        (r->>10)::bigint AS shares_count, r->>11 AS media_type, (r->>12)::text[] AS media_urls,
        r->>13 AS location, r->>14 AS language, NULLIF(r->15, 'null'::jsonb) AS raw,
        (r->>16)::timestamptz AS refresh_due_at
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
), inserted AS (
    INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, url, content, author_name,
        author_handle, author_followers, author_verified, published_at, likes_count, comments_count,
        shares_count, media_type, media_urls, location, language, refresh_due_at)
    SELECT %(tenant_id)s, %(source_id)s, %(platform)s, external_id, url, content, author_name,
        author_handle, author_followers, author_verified, published_at, likes_count, comments_count,
        shares_count, media_type, media_urls, location, language, refresh_due_at
    FROM page
    ON CONFLICT (tenant_id, platform, external_id) DO NOTHING
    RETURNING id, external_id
), raw AS (
    INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)
    SELECT inserted.id, %(tenant_id)s, page.raw FROM inserted JOIN page USING (external_id) WHERE page.raw IS NOT NULL
), counted AS (
    SELECT count(*) AS saved FROM inserted
), source AS (
    UPDATE sl_sources SET
        mentions_count = mentions_count + (SELECT saved FROM counted),
        inflight_cursor = CASE WHEN %(is_page)s THEN %(cursor)s ELSE inflight_cursor END,
        rate_limit_limit = CASE WHEN %(has_limits)s THEN %(limit)s ELSE rate_limit_limit END,
        rate_limit_remaining = CASE WHEN %(has_limits)s THEN %(remaining)s ELSE rate_limit_remaining END,
        rate_limit_reset_at = CASE WHEN %(has_limits)s THEN %(reset_at)s ELSE rate_limit_reset_at END,
        updated_at = now()
    WHERE id = %(source_id)s
), run AS (
    UPDATE sl_sync_runs SET pages = pages + %(pages)s, fetched = fetched + %(fetched)s,
        saved = saved + (SELECT saved FROM counted),
        duplicates = duplicates + %(fetched)s - (SELECT saved FROM counted), errors = errors + %(errors)s
    WHERE id = %(run_id)s
)
SELECT saved FROM counted
"""


def _mention_row(m: Mention, due: datetime | None) -> tuple[Any, ...]:
    """A mention as the positional row _SAVE reads (r->>0 to r->16): keep the two in the same order."""
    return (
        m.external_id, m.url, m.content, m.author_name, m.author_handle, m.author_followers, m.author_verified,
        m.published_at.isoformat(), m.likes_count, m.comments_count, m.shares_count, m.media_type,
        _text_array(m.media_urls), m.location, m.language, m.raw, due.isoformat() if due else None,
    )  # fmt: skip


def next_refresh(published: datetime, schedule: Sequence[timedelta], now: datetime) -> datetime | None:
    """When a mention is next read again: the first step of `schedule` (rising intervals after publication)
    still ahead of `now`; None past the last. Computed here rather than in SQL: a function call per inserted
    row cost the save path ~15% of its throughput."""
    return next((published + step for step in schedule if published + step > now), None)


def json_text(value: Any) -> str:
    """`value` as compact JSON text, by orjson: the rows of a write are the largest thing slsync encodes,
    and the standard library's encoder took ~0.6 ms a page of 100 (a tenth of sync due's CPU) against
    ~0.04 ms. What orjson refuses (an integer beyond 64 bits, a key that is not text) the standard
    library encodes as before; other types (dates) become their str() in both."""
    try:
        return orjson.dumps(value, default=str, option=_AS_STR).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# orjson writes dates and dataclasses its own way; json_text gives them to default=str, as json.dumps does
_AS_STR = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def _text_array(items: Sequence[str | None] | None) -> str | None:
    """A PostgreSQL text[] literal, which one cast turns into media_urls (a JSON array would need a subquery
    per row): every element double-quoted, backslashes and quotes escaped, so commas, braces, spaces and
    the word NULL inside a URL stay text."""
    if items is None:
        return None
    quoted = ("NULL" if item is None else '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


def _save(
    conn: Connection,
    source: Source,
    mentions: Sequence[Mention],
    pages: Sequence[Page],
    run_id: int | None,
    schedule: Sequence[timedelta] | None,
) -> int:
    platforms = {m.platform for m in mentions}
    if platforms - {source.platform}:
        raise ValueError(f"mentions of {sorted(platforms)} cannot be saved for a {source.platform} source")
    # the newest word on limits and cursor is the last page's
    limits = next((p.rate_limit for p in reversed(pages) if p.rate_limit is not None), None)
    # the same post twice in one write (a paging API may repeat it): the first is stored, the second counted
    # as a duplicate, as ON CONFLICT would; without it, its payload would join the mention twice
    firsts: dict[str, Mention] = {}
    for m in mentions:
        firsts.setdefault(m.external_id, m)
    now = datetime.now(UTC)
    row = conn.execute(
        _SAVE,
        {
            "rows": json_text(
                [_mention_row(m, next_refresh(m.published_at, schedule or (), now)) for m in firsts.values()]
            ),
            "tenant_id": source.tenant_id,
            "source_id": source.id,
            "platform": source.platform,
            "is_page": bool(pages),
            "cursor": Jsonb(dict(pages[-1].cursor)) if pages else None,
            "has_limits": limits is not None,
            "limit": limits.limit if limits else None,
            "remaining": limits.remaining if limits else None,
            "reset_at": limits.reset_at if limits else None,
            "run_id": run_id,
            "pages": len(pages),
            "fetched": len(mentions),
            "errors": sum(p.errors for p in pages),
        },
    ).fetchone()
    return int(row["saved"]) if row else 0


def insert_mentions(
    conn: Connection, source: Source, mentions: Sequence[Mention], *, schedule: Sequence[timedelta] | None = None
) -> int:
    """Insert mentions for a source, skipping those already stored; returns how many were new."""
    return _save(conn, source, mentions, (), None, schedule)


def save_pages(
    conn: Connection, source: Source, run_id: int, pages: Sequence[Page], *, schedule: Sequence[timedelta] | None = None
) -> int:
    """Consecutive pages of a run: their mentions, the in-flight cursor the last one reached and the run's
    counters, atomically; how many mentions were new. `schedule`: when a new mention's counts are read again,
    after its publication (None: never, the platform has no lookup)."""
    return _save(conn, source, [m for p in pages for m in p.mentions], pages, run_id, schedule)


def save_page(conn: Connection, source: Source, run_id: int, page: Page) -> int:
    return save_pages(conn, source, run_id, (page,))


def finish_success(
    conn: Connection,
    source: Source,
    run_id: int,
    cursor: Mapping[str, Any] | None,
    message: str,
    *,
    scheduled_from: datetime | None = None,
    interval_minutes: int | None = None,
    covered_until: datetime | None = None,
    mention_rate: float | None = None,
) -> None:
    """Advance the committed cursor (only now), schedule the next run one interval after `scheduled_from` (the
    claim of a `sync due`; by default the run's start) and close the run, in one statement. `interval_minutes`
    replaces the source's interval (an auto source's next one); `covered_until` moves its coverage forward."""
    conn.execute(
        """
        WITH source AS (
            UPDATE sl_sources SET
                committed_cursor = COALESCE(%(cursor)s, committed_cursor), inflight_cursor = NULL,
                status = 'active', error_message = NULL, consecutive_failures = 0,
                sync_interval_minutes = COALESCE(%(interval)s, sync_interval_minutes),
                last_sync_at = now(),
                next_sync_at = COALESCE(%(from)s, (SELECT started_at FROM sl_sync_runs WHERE id = %(run_id)s), now())
                    + make_interval(mins => COALESCE(%(interval)s, sync_interval_minutes)),
                covered_until = GREATEST(covered_until, %(covered)s), inflight_started_at = NULL, behind_reason = NULL,
                mention_rate = COALESCE(%(rate)s, mention_rate),
                claimed_by = NULL, claimed_at = NULL, updated_at = now()
            WHERE id = %(id)s
        )
        """
        + _CLOSE_RUN,
        {
            "cursor": Jsonb(dict(cursor)) if cursor is not None else None,
            "interval": interval_minutes,
            "from": scheduled_from,
            "covered": covered_until,
            "rate": mention_rate,
            "id": source.id,
            "run_id": run_id,
            "run_status": "success",
            "message": message,
        },
    )


def finish_failure(
    conn: Connection,
    source: Source,
    run_id: int,
    *,
    run_status: str,
    message: str,
    source_status: str,
    retry_in_seconds: float | None,
    count_failure: bool,
    keep_inflight: bool,
    rate_limit: RateLimit | None = None,
    behind_reason: str | None = None,
    inflight_started_at: datetime | None = None,
) -> None:
    """Record a failed or cut-short run, in one statement; the committed cursor does not move.

    retry_in_seconds None leaves next_sync_at alone (a source in 'error' is not scheduled anyway).
    `behind_reason` says why the source is now behind (a coverage gap's reason should its platform's reach
    pass before it catches up); `inflight_started_at` when the kept in-flight sync began.
    """
    conn.execute(
        """
        WITH source AS (
            UPDATE sl_sources SET
                status = %(status)s, error_message = %(message)s,
                consecutive_failures = consecutive_failures + %(failure)s,
                inflight_cursor = CASE WHEN %(keep_inflight)s THEN inflight_cursor END,
                next_sync_at = CASE WHEN %(retry_in)s::float8 IS NULL THEN next_sync_at
                                    ELSE now() + make_interval(secs => %(retry_in)s::float8) END,
                rate_limit_remaining = CASE WHEN %(limited)s THEN %(remaining)s ELSE rate_limit_remaining END,
                rate_limit_reset_at = CASE WHEN %(limited)s THEN %(reset_at)s ELSE rate_limit_reset_at END,
                behind_reason = COALESCE(%(behind)s, behind_reason),
                inflight_started_at = CASE WHEN %(keep_inflight)s THEN %(chain)s::timestamptz END,
                claimed_by = NULL, claimed_at = NULL, updated_at = now()
            WHERE id = %(id)s
        )
        """
        + _CLOSE_RUN,
        {
            "behind": behind_reason,
            "chain": inflight_started_at,
            "status": source_status,
            "message": message,
            "failure": 1 if count_failure else 0,
            "keep_inflight": keep_inflight,
            "retry_in": retry_in_seconds,
            "limited": rate_limit is not None,
            "remaining": rate_limit.remaining if rate_limit else None,
            "reset_at": rate_limit.reset_at if rate_limit else None,
            "id": source.id,
            "run_id": run_id,
            "run_status": run_status,
        },
    )


# The end of a run: follows the source's update in the finishing statement (one round trip, atomic).
_CLOSE_RUN = (
    "UPDATE sl_sync_runs SET status = %(run_status)s, message = %(message)s, finished_at = clock_timestamp()"
    " WHERE id = %(run_id)s"
)


def abandon_run(conn: Connection, run_id: int, message: str) -> None:
    """Close a run that a database error stopped, leaving its source as the last saved page left it.

    Best effort, on a connection that may be in trouble: one short try, and if that fails too the run stays
    `running` until the source's next run marks it abandoned."""
    if conn.closed:
        return
    with suppress(DatabaseError), conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '1s'; SET LOCAL statement_timeout = '2s'")
        conn.execute(
            "UPDATE sl_sync_runs SET status = 'abandoned', message = %s, finished_at = clock_timestamp()"
            " WHERE id = %s AND status = 'running'",
            (message, run_id),
        )


def mark_connected(conn: Connection, source_id: int, *, reconnect_by: datetime | None = None) -> None:
    """After `slsync connect` stored a user token: schedule the source now, with a clean record."""
    conn.execute(
        "UPDATE sl_sources SET status = 'connected', connection_type = 'user', error_message = NULL,"
        " consecutive_failures = 0, next_sync_at = now(), reconnect_by = %s, updated_at = now() WHERE id = %s",
        (reconnect_by, source_id),
    )


def set_reconnect_by(conn: Connection, source_id: int, reconnect_by: datetime | None) -> None:
    """A refresh may move the end of the grant (or tell it for the first time)."""
    conn.execute(
        "UPDATE sl_sources SET reconnect_by = %s WHERE id = %s AND reconnect_by IS DISTINCT FROM %s",
        (reconnect_by, source_id, reconnect_by),
    )


def release_claim(conn: Connection, source_id: int) -> None:
    conn.execute("UPDATE sl_sources SET claimed_by = NULL, claimed_at = NULL WHERE id = %s", (source_id,))


# --- coverage gaps and deferrals -----------------------------------------------------------------


def record_gap(conn: Connection, source: Source, gap: Gap) -> bool:
    """Record a stretch of the source's history no sync could read; True if it is new. A run that meets the
    same gap again (retried, or still failing while the reach moves on) widens its row instead."""
    row = conn.execute(
        "INSERT INTO sl_coverage_gaps AS g (source_id, tenant_id, stream, from_at, to_at, reason, missed_estimate)"
        " VALUES (%(source)s, %(tenant)s, %(stream)s, %(start)s, %(end)s, %(reason)s, %(missed)s)"
        " ON CONFLICT (source_id, tenant_id, stream, from_at) DO UPDATE SET to_at = GREATEST(g.to_at, EXCLUDED.to_at),"
        " missed_estimate = GREATEST(g.missed_estimate, EXCLUDED.missed_estimate), updated_at = now()"
        " RETURNING (xmax = 0) AS inserted",
        {"source": source.id, "tenant": source.tenant_id, "stream": gap.stream, "start": gap.start,
         "end": gap.end, "reason": gap.reason, "missed": gap.missed_estimate},
    ).fetchone()  # fmt: skip
    return bool(row and row["inserted"])


def coverage_gaps(
    conn: Connection, *, source_ids: Sequence[int] | None = None, tenant_id: int | None = None
) -> dict[int, list[dict[str, Any]]]:
    """Per source, its coverage gaps (those the run log still keeps), oldest first."""
    rows = conn.execute(
        "SELECT source_id, stream, from_at, to_at, reason, missed_estimate, recorded_at FROM sl_coverage_gaps"
        " WHERE (%(ids)s::integer[] IS NULL OR source_id = ANY(%(ids)s))"
        " AND (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s) ORDER BY source_id, from_at, stream",
        {"ids": list(source_ids) if source_ids is not None else None, "tenant": tenant_id},
    ).fetchall()
    gaps: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        gaps.setdefault(row.pop("source_id"), []).append(row)
    return gaps


def prune_gaps(conn: Connection, *, keep_days: int) -> int:
    """Delete coverage gaps that ended before the run log's horizon (they go with the runs that met them)."""
    return conn.execute(
        "DELETE FROM sl_coverage_gaps WHERE to_at < now() - make_interval(days => %s)", (keep_days,)
    ).rowcount


def defer_source(conn: Connection, source_id: int, behind_reason: str) -> None:
    """Leave a claimed source for a later run (its credential cannot pay for it now): it stays due."""
    conn.execute(
        "UPDATE sl_sources SET claimed_by = NULL, claimed_at = NULL, behind_reason = %s WHERE id = %s",
        (behind_reason, source_id),
    )


def quota_left(conn: Connection, key: str, day: date, daily_limit: int) -> int:
    """Units of a daily quota not yet spent on `day`."""
    row = conn.execute(
        "SELECT units_used FROM sl_quota_ledger WHERE credential_key = %s AND quota_day = %s", (key, day)
    ).fetchone()
    return max(daily_limit - (int(row["units_used"]) if row else 0), 0)


def sources_to_plan(conn: Connection, source_ids: Sequence[int]) -> list[Source]:
    """The claimed sources as `sync due` plans them: everything but their cursors (which it does not read)."""
    query = f"SELECT {_PLAN_COLUMNS} FROM sl_sources s WHERE s.id = ANY(%s)"
    rows = conn.execute(query, (list(source_ids),)).fetchall()
    return [_source(row) for row in rows]


# --- sealed tokens (the database token store) -------------------------------------------------------


class TokenTable:
    """The rows of sl_tokens on one connection (tokens.TokenRows): a key id and sealed bytes per source.

    A sync writes with synchronous_commit off (SYNC_OPTIONS); a token is written with it on, since a refresh
    token the platform has rotated exists nowhere else: losing its write to a crash would end the grant.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def read(self, source_id: int) -> tuple[str, bytes] | None:
        row = self._conn.execute("SELECT key_id, sealed FROM sl_tokens WHERE source_id = %s", (source_id,)).fetchone()
        return (row["key_id"], bytes(row["sealed"])) if row else None

    def write(self, source_id: int, sealed: tuple[str, bytes], *, replaceable: Collection[str]) -> bool:
        with self._conn.transaction():
            self._conn.execute("SET LOCAL synchronous_commit = on")
            row = self._conn.execute(
                "INSERT INTO sl_tokens AS t (source_id, tenant_id, key_id, sealed)"
                " SELECT id, tenant_id, %(key_id)s, %(sealed)s FROM sl_sources WHERE id = %(id)s"
                " ON CONFLICT (source_id, tenant_id) DO UPDATE"
                " SET key_id = excluded.key_id, sealed = excluded.sealed, updated_at = now()"
                " WHERE t.key_id = ANY(%(replaceable)s)"
                " RETURNING 1",
                {"id": source_id, "key_id": sealed[0], "sealed": sealed[1], "replaceable": list(replaceable)},
            ).fetchone()
        if row is None and self.read(source_id) is None:
            raise NotFound(f"no source with id {source_id}")
        return row is not None

    def delete(self, source_id: int) -> None:
        self._conn.execute("DELETE FROM sl_tokens WHERE source_id = %s", (source_id,))

    def sealed_with_other_keys(self, key_id: str) -> list[tuple[int, tuple[str, bytes]]]:
        rows = self._conn.execute(
            "SELECT source_id, key_id, sealed FROM sl_tokens WHERE key_id <> %s ORDER BY source_id", (key_id,)
        ).fetchall()
        return [(int(r["source_id"]), (r["key_id"], bytes(r["sealed"]))) for r in rows]

    def replace(self, source_id: int, old: tuple[str, bytes], new: tuple[str, bytes]) -> bool:
        with self._conn.transaction():
            self._conn.execute("SET LOCAL synchronous_commit = on")
            return bool(
                self._conn.execute(
                    "UPDATE sl_tokens SET key_id = %s, sealed = %s, updated_at = now()"
                    " WHERE source_id = %s AND key_id = %s AND sealed = %s",
                    (new[0], new[1], source_id, old[0], old[1]),
                ).rowcount
            )


def user_source_ids(conn: Connection) -> list[int]:
    """The sources that authenticate with a user token from the token store."""
    rows = conn.execute("SELECT id FROM sl_sources WHERE connection_type = 'user' ORDER BY id").fetchall()
    return [int(r["id"]) for r in rows]


# --- status ---------------------------------------------------------------------------------------

# What `status` shows of a source, nothing more: config and cursors (jsonb) are neither read nor decoded.
# The page of sources is chosen first, so the run log is looked up for the sources listed only.
_STATUS = """
WITH held AS (
    SELECT objid::bigint AS source_id FROM pg_locks
    WHERE locktype = 'advisory' AND classid = %(ns)s::bigint::oid AND objsubid = 2 AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
), listed AS (
    SELECT id, tenant_id, platform, name, connection_type, status, error_message, sync_interval_minutes,
        last_sync_at, next_sync_at, rate_limit_limit, rate_limit_remaining, rate_limit_reset_at,
        consecutive_failures, mentions_count, reconnect_by, interval_mode, min_interval_minutes,
        max_interval_minutes, covered_until, mention_rate, last_refresh_at, refreshed_count, deleted_count
    FROM sl_sources s
    WHERE (%(id)s::integer IS NULL OR s.id = %(id)s) AND (%(tenant)s::bigint IS NULL OR s.tenant_id = %(tenant)s)
    ORDER BY s.tenant_id, s.id
    LIMIT %(limit)s OFFSET %(offset)s
)
SELECT listed.*, (held.source_id IS NOT NULL) AS syncing,
    run.started_at AS run_started_at, run.finished_at AS run_finished_at, run.status AS run_status,
    now() AS db_now
FROM listed
LEFT JOIN held ON held.source_id = listed.id
LEFT JOIN LATERAL (
    SELECT started_at, finished_at, status FROM sl_sync_runs r
    WHERE r.source_id = listed.id ORDER BY r.started_at DESC LIMIT 1
) run ON true
ORDER BY listed.tenant_id, listed.id
"""


def status_rows(conn: Connection, *, source_id: int | None = None, tenant_id: int | None = None) -> list[Any]:
    """The status rows of one source or one tenant, at once (see stream_status for many): named tuples."""
    with conn.cursor(row_factory=namedtuple_row) as cursor:
        return cursor.execute(_STATUS, _status_params(source_id, tenant_id, None, 0)).fetchall()


def stream_status(
    conn: Connection,
    *,
    tenant_id: int | None = None,
    limit: int | None = None,
    offset: int = 0,
    chunk: int = 1000,
    queries_between: bool = False,
) -> Iterator[list[Any]]:
    """Status rows in (tenant, id) order, `chunk` at a time: 100,000 sources never sit in memory at once.

    The result streams (PostgreSQL sends rows while Python writes the ones before: 0.82 s against 0.96 s for
    100,000 sources); with `queries_between` it comes from a server-side cursor instead, so that the
    connection can run other statements between chunks (their sentiment breakdown). Rows are named tuples,
    cheaper to make than dicts of 29 columns (100,000 rows: 0.50 s against 0.65 s)."""
    params = _status_params(None, tenant_id, limit, offset)
    # No transaction around either: a statement that fails in one (a lock timeout) aborts it, and the error
    # could no longer name who held the lock (database_error).
    if queries_between:
        # WITH HOLD outside a transaction: the server keeps the result (the few sources a narrowed or
        # short list holds) until the cursor closes
        with conn.cursor(name="slsync_status", withhold=True, row_factory=namedtuple_row) as cursor:
            cursor.execute(_STATUS, params)
            while rows := cursor.fetchmany(chunk):
                yield rows
    else:
        # binary: datetimes and numbers load without parsing text (100,000 rows: 0.97 s against 1.03-1.11 s)
        rows_in = conn.cursor(binary=True, row_factory=namedtuple_row).stream(_STATUS, params, size=_stream_chunk(250))
        while rows := list(itertools.islice(rows_in, chunk)):
            yield rows


def _status_params(source_id: int | None, tenant_id: int | None, limit: int | None, offset: int) -> dict[str, Any]:
    return {"ns": LOCK_NAMESPACE, "id": source_id, "tenant": tenant_id, "limit": limit, "offset": offset}


def count_sources(conn: Connection, *, tenant_id: int | None = None) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM sl_sources WHERE (%(t)s::bigint IS NULL OR tenant_id = %(t)s)", {"t": tenant_id}
    ).fetchone()
    return int(row["n"]) if row else 0


def status_summary(
    conn: Connection, *, tenant_id: int | None = None, listed: int = 20, reconnect_within: timedelta
) -> dict[str, Any]:
    """What `status` shows of many sources: how many by platform and status, the schedule, how many are
    syncing, the `listed` failing or erroring sources most in need of a look (errors first, then the most
    consecutive failures), and the first connections to end within `reconnect_within`. A few passes over
    sl_sources, whatever their number."""
    tenant = {"t": tenant_id, "ns": LOCK_NAMESPACE, "listed": listed, "within": reconnect_within}
    narrowed = "(%(t)s::bigint IS NULL OR tenant_id = %(t)s)"
    counts = conn.execute(
        f"SELECT platform, status, count(*) AS n FROM sl_sources WHERE {narrowed} GROUP BY 1, 2 ORDER BY 1, 2",
        tenant,
    ).fetchall()
    schedule = conn.execute(
        f"SELECT count(*) FILTER (WHERE {_DUE}) AS due_now,"
        " min(next_sync_at) FILTER (WHERE status IN ('active', 'connected', 'failing') AND next_sync_at > now())"
        " AS next_due,"
        " count(*) FILTER (WHERE rate_limit_remaining = 0 AND rate_limit_reset_at > now()) AS rate_limited,"
        " count(*) FILTER (WHERE status IN ('failing', 'error')) AS troubled,"
        " (SELECT count(*) FROM pg_locks l JOIN sl_sources x ON x.id = l.objid::bigint"
        "  WHERE l.locktype = 'advisory' AND l.classid = %(ns)s::bigint::oid AND l.objsubid = 2 AND l.granted"
        "  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        "  AND (%(t)s::bigint IS NULL OR x.tenant_id = %(t)s)) AS syncing,"
        f" now() AS db_now FROM sl_sources WHERE {narrowed}",
        tenant,
    ).fetchone()
    troubled = conn.execute(
        "SELECT id, tenant_id, platform, name, status, consecutive_failures, error_message, next_sync_at"
        f" FROM sl_sources WHERE status IN ('failing', 'error') AND {narrowed}"
        " ORDER BY status = 'error' DESC, consecutive_failures DESC, id LIMIT %(listed)s",
        tenant,
    ).fetchall()
    reconnect = conn.execute(
        "SELECT id, platform, name, reconnect_by, count(*) OVER () AS total FROM sl_sources"
        f" WHERE reconnect_by < now() + %(within)s AND {narrowed} ORDER BY reconnect_by, id LIMIT %(listed)s",
        tenant,
    ).fetchall()
    gaps = conn.execute(
        f"SELECT count(*) AS gaps, count(DISTINCT source_id) AS gapped FROM sl_coverage_gaps WHERE {narrowed}", tenant
    ).fetchone()
    return {
        **(schedule or {}),
        **(gaps or {}),
        "counts": counts,
        "troubled_sources": troubled,
        "reconnect": reconnect,
    }


def prune_runs(conn: Connection, *, keep_days: int, batch: int = 10_000, batches: int = 30) -> int:
    """Delete finished runs older than keep_days, `batch` rows a statement and at most `batches` statements:
    a bounded piece of work per cron run that still outpaces 100,000 sources every 15 minutes."""
    deleted = 0
    for _ in range(batches):
        count = conn.execute(
            "DELETE FROM sl_sync_runs WHERE id IN (SELECT id FROM sl_sync_runs"
            " WHERE finished_at < now() - make_interval(days => %s) LIMIT %s)",
            (keep_days, batch),
        ).rowcount
        deleted += count
        if count < batch:
            break
    return deleted


# --- analysis and reading mentions ------------------------------------------------------------------


# Unanalysed mentions, of one tenant or some sources when given: what the analysis claims, and looks for.
_NEW = (
    "status = 'new' AND (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s)"
    " AND (%(sources)s::integer[] IS NULL OR source_id = ANY(%(sources)s))"
)


def _new_of(tenant_id: int | None, source_ids: Sequence[int] | None) -> dict[str, Any]:
    return {"tenant": tenant_id, "sources": list(source_ids) if source_ids is not None else None}


def claim_new_mentions(
    conn: Connection, *, limit: int, tenant_id: int | None = None, source_ids: Sequence[int] | None = None
) -> list[dict[str, Any]]:
    """Lock up to `limit` unanalysed mentions for this transaction; other analyzers skip them."""
    return conn.execute(
        f"SELECT id, content, language FROM sl_mentions WHERE {_NEW}"
        " ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
        {**_new_of(tenant_id, source_ids), "limit": limit},
    ).fetchall()


def new_mentions_left(
    conn: Connection, *, tenant_id: int | None = None, source_ids: Sequence[int] | None = None
) -> bool:
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM sl_mentions WHERE {_NEW}) AS left", _new_of(tenant_id, source_ids)
    ).fetchone()
    return bool(row and row["left"])


def store_analyses(conn: Connection, labelled: Sequence[tuple[int, str, float | None, str]], analyzer: str) -> int:
    """(id, sentiment, score, intent) for claimed mentions; they become `processed`."""
    rows = json_text([{"id": i, "sentiment": s, "score": sc, "intent": it} for i, s, sc, it in labelled])
    return conn.execute(
        "UPDATE sl_mentions m SET status = 'processed', sentiment = r.sentiment, sentiment_score = r.score,"
        " intent = r.intent, analyzer = %s, analyzed_at = now()"
        " FROM jsonb_to_recordset(%s::jsonb) AS r(id bigint, sentiment text, score real, intent text)"
        " WHERE m.id = r.id AND m.status = 'new'",
        (analyzer, rows),
    ).rowcount


def count_new_mentions(conn: Connection, *, tenant_id: int | None = None) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM sl_mentions WHERE status = 'new' AND (%(t)s::bigint IS NULL OR tenant_id = %(t)s)",
        {"t": tenant_id},
    ).fetchone()
    return int(row["n"]) if row else 0


def sentiment_breakdown(conn: Connection, source_ids: Sequence[int], *, days: int = 7) -> dict[int, dict[str, int]]:
    """Per source, how many mentions published in the last `days` are positive, negative, ... or not yet analysed."""
    rows = conn.execute(
        "SELECT source_id, CASE WHEN status = 'new' THEN 'pending' ELSE sentiment END AS label, count(*) AS n"
        " FROM sl_mentions WHERE source_id = ANY(%s) AND published_at > now() - make_interval(days => %s)"
        " GROUP BY 1, 2",
        (list(source_ids), days),
    ).fetchall()
    breakdown: dict[int, dict[str, int]] = {}
    for row in rows:
        breakdown.setdefault(row["source_id"], {})[row["label"] or "unknown"] = int(row["n"])
    return breakdown


# Every column of sl_mentions but the raw payload (tests/test_json_docs.py checks it against the table), in the
# order of the CSV export; new columns go at the end, so a CSV reader's positions stay.
MENTION_COLUMNS = (
    "id", "tenant_id", "source_id", "platform", "external_id", "url", "published_at", "author_name",
    "author_handle", "author_followers", "author_verified", "content", "language", "likes_count",
    "comments_count", "shares_count", "media_type", "media_urls", "location", "status", "sentiment",
    "sentiment_score", "intent", "fetched_at", "analyzer", "analyzed_at", "deleted_at",
)  # fmt: skip


def stream_mentions(
    conn: Connection,
    *,
    tenant_id: int | None = None,
    source_id: int | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
    deleted: bool = False,
) -> Iterator[dict[str, Any]]:
    """Mentions in published_at order, read along an index (sl_mentions_published_idx, or the tenant's or
    source's) and streamed: PostgreSQL sends rows as it reads them, a chunk at a time (_stream_chunk), while
    Python encodes the ones before on the other core; a million rows never sit in memory, nor in a temporary
    file.

    A declared cursor fetched whole (FETCH ALL) is materialized by the server first (104 MB of temporary
    files for 300,000 mentions); fetched 2,000 at a time it waits a round trip per chunk (125,000 rows/s
    against 170,000-190,000 streamed). Binary rows load ~15% faster; the score goes through text so that
    0.4404 stays 0.4404 (a real's exact binary value is 0.44040000438690186). Tombstones (posts the platform no
    longer shows) only with `deleted`."""
    order = "published_at DESC, id DESC" if newest_first else "published_at, id"
    columns = ", ".join(c if c != "sentiment_score" else "sentiment_score::text::float8 AS sentiment_score"
                        for c in MENTION_COLUMNS)  # fmt: skip
    with conn.transaction():
        # never a sort: a whole table's spills to disk (680 MB at 2,000,000 mentions) before the first row
        conn.execute("SET LOCAL enable_sort = off")
        yield from conn.cursor(binary=True).stream(
            f"SELECT {columns} FROM sl_mentions"
            " WHERE (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s)"
            " AND (%(source)s::integer IS NULL OR source_id = %(source)s)"
            " AND (%(since)s::timestamptz IS NULL OR published_at >= %(since)s)"
            " AND (%(deleted)s OR deleted_at IS NULL)"
            f" ORDER BY {order} LIMIT %(limit)s",
            {"tenant": tenant_id, "source": source_id, "since": since, "limit": limit, "deleted": deleted},
            size=_stream_chunk(750),
        )


# A streamed result's chunk fits the socket's buffer (Linux gives a Unix socket 208 KB), so that PostgreSQL
# sends the next chunk while Python encodes this one. Exporting 2,000,000 mentions (~750 bytes a row) took
# 13.2 s in chunks of 2,000 rows (1.5 MB: the server waited for each), 9.5-9.9 s in chunks of 200-400, and
# 14 s in chunks of 50-100 (each result has a fixed cost).
_STREAM_CHUNK_BYTES = 200_000


def _stream_chunk(row_bytes: int) -> int:
    """Rows a streamed result arrives in, for rows of about `row_bytes`: chunks need libpq 17 (psycopg's
    binary wheels carry it); an older libpq sends one row at a time, slower but as correct."""
    return max(1, _STREAM_CHUNK_BYTES // row_bytes) if psycopg.capabilities.has_stream_chunked() else 1


# --- daily quotas -----------------------------------------------------------------------------------


def spend_quota(conn: Connection, key: str, day: date, units: int, daily_limit: int) -> int | None:
    """Take `units` from the credential's quota for `day` if they fit; the units left, or None if not."""
    if units > daily_limit:
        return None
    row = conn.execute(
        "INSERT INTO sl_quota_ledger AS q (credential_key, quota_day, units_used, daily_limit)"
        " VALUES (%(key)s, %(day)s, %(units)s, %(limit)s)"
        " ON CONFLICT (credential_key, quota_day) DO UPDATE"
        " SET units_used = q.units_used + %(units)s, daily_limit = %(limit)s, updated_at = now()"
        " WHERE q.units_used + %(units)s <= %(limit)s"
        " RETURNING %(limit)s - units_used AS remaining",
        {"key": key, "day": day, "units": units, "limit": daily_limit},
    ).fetchone()
    if row is None or row["remaining"] < 0:
        return None
    return int(row["remaining"])


def exhaust_quota(conn: Connection, key: str, day: date, daily_limit: int) -> None:
    """The platform said the quota is spent (e.g. another client used it): believe it until the day ends."""
    conn.execute(
        "INSERT INTO sl_quota_ledger AS q (credential_key, quota_day, units_used, daily_limit)"
        " VALUES (%(key)s, %(day)s, %(limit)s, %(limit)s)"
        " ON CONFLICT (credential_key, quota_day) DO UPDATE SET units_used = greatest(q.units_used, %(limit)s),"
        " updated_at = now()",
        {"key": key, "day": day, "limit": daily_limit},
    )


# --- distinct items per rolling window ----------------------------------------------------------------


def use_unique(conn: Connection, key: str, item: str, limit: int, window: timedelta) -> int | None:
    """Count `item` against `limit` distinct items per rolling window; the slots left, or None if it does not fit.

    Serialized per key by a transaction-scoped advisory lock, so two processes cannot both take the last slot.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_NAMESPACE + 1, key))
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE first_used_at > now() - %(window)s) AS used,"
            " bool_or(item = %(item)s AND first_used_at > now() - %(window)s) AS counted"
            " FROM sl_window_ledger WHERE credential_key = %(key)s",
            {"key": key, "item": item, "window": window},
        ).fetchone()
        assert row is not None
        used = int(row["used"])
        if row["counted"]:
            return limit - used
        if used >= limit:
            return None
        conn.execute(
            "INSERT INTO sl_window_ledger (credential_key, item, window_limit, window_length)"
            " VALUES (%(key)s, %(item)s, %(limit)s, %(window)s) ON CONFLICT (credential_key, item)"
            " DO UPDATE SET first_used_at = now(), window_limit = %(limit)s, window_length = %(window)s",
            {"key": key, "item": item, "limit": limit, "window": window},
        )
        return limit - used - 1


class QuotaLedger:
    """The connectors' view of sl_quota_ledger and sl_window_ledger (connectors.base.Quota), on one connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def spend(self, key: str, units: int, daily_limit: int, day: date) -> int | None:
        return spend_quota(self._conn, key, day, units, daily_limit)

    def exhaust(self, key: str, daily_limit: int, day: date) -> None:
        exhaust_quota(self._conn, key, day, daily_limit)

    def use_unique(self, key: str, item: str, limit: int, window: timedelta) -> int | None:
        return use_unique(self._conn, key, item, limit, window)


def quota_usage(conn: Connection) -> list[dict[str, Any]]:
    """Every ledger's current period, for `status`: daily quotas (their latest day) and rolling windows.

    A daily row from an earlier day is left out: that quota has started afresh.
    """
    return conn.execute(
        "SELECT * FROM ("
        " SELECT DISTINCT ON (credential_key) credential_key, 'day' AS period, quota_day::text AS since,"
        " units_used AS used, daily_limit AS quota, NULL::timestamptz AS frees_at"
        " FROM sl_quota_ledger WHERE quota_day >= (now() AT TIME ZONE 'UTC')::date - 1"
        " ORDER BY credential_key, quota_day DESC) daily"
        " UNION ALL"
        " SELECT credential_key, max(window_length)::text, min(first_used_at)::text, count(*), max(window_limit),"
        " min(first_used_at + window_length)"
        " FROM sl_window_ledger WHERE first_used_at + window_length > now() GROUP BY credential_key"
        " ORDER BY 1"
    ).fetchall()


# --- reading stored posts again ---------------------------------------------------------------------

# A source whose mentions are read again is one whose credentials may be used: not waiting to be connected,
# not refused (`error`, until reconnected).
_REFRESHABLE = "s.status IN ('active', 'connected', 'failing')"


def refresh_sources(
    conn: Connection,
    *,
    platforms: Sequence[str],
    tenant_id: int | None = None,
    source_id: int | None = None,
    everything: bool = False,
    skip_due: bool = False,
) -> list[Source]:
    """The sources with stored mentions to read again: due ones (`everything`: any not deleted), the source with
    the longest-waiting first. `skip_due`: leave out sources due to sync (a refresh never holds the lock of a
    source waiting for its sync)."""
    wanted = "m.deleted_at IS NULL" if everything else "m.refresh_due_at <= now()"
    rows = conn.execute(
        f"SELECT {_SOURCE_COLUMNS} FROM sl_sources s"
        f" WHERE {_REFRESHABLE} AND s.platform = ANY(%(platforms)s)"
        " AND (%(tenant)s::bigint IS NULL OR s.tenant_id = %(tenant)s)"
        " AND (%(source)s::integer IS NULL OR s.id = %(source)s)"
        f" AND NOT (%(skip_due)s AND {_DUE})"
        f" AND EXISTS (SELECT 1 FROM sl_mentions m WHERE m.source_id = s.id AND {wanted})"
        " ORDER BY (SELECT min(m.refresh_due_at) FROM sl_mentions m"
        "           WHERE m.source_id = s.id AND m.refresh_due_at IS NOT NULL) NULLS LAST, s.id",
        {"platforms": list(platforms), "tenant": tenant_id, "source": source_id, "skip_due": skip_due},
    ).fetchall()
    return [_source(row) for row in rows]


def due_mentions(conn: Connection, source_id: int, limit: int) -> list[Stored]:
    """Up to `limit` of the source's mentions whose time to be read again has come, the longest-waiting first
    (along sl_mentions_refresh_idx). Read under the source's lock: no other refresh takes them meanwhile."""
    rows = conn.execute(
        "SELECT id, external_id, published_at FROM sl_mentions WHERE source_id = %s AND refresh_due_at <= now()"
        " ORDER BY refresh_due_at, id LIMIT %s",
        (source_id, limit),
    ).fetchall()
    return [Stored(**row) for row in rows]


def stored_mentions(
    conn: Connection, source_id: int, limit: int, *, before: tuple[datetime, int] | None = None
) -> list[Stored]:
    """Up to `limit` of the source's mentions that are not tombstones, newest first, from before `before`
    ((published_at, id) of the last one read): `slsync refresh --all`, page after page."""
    published, last = before or (None, None)
    rows = conn.execute(
        "SELECT id, external_id, published_at FROM sl_mentions"
        " WHERE source_id = %(source)s AND deleted_at IS NULL"
        " AND (%(published)s::timestamptz IS NULL OR (published_at, id) < (%(published)s, %(last)s))"
        " ORDER BY published_at DESC, id DESC LIMIT %(limit)s",
        {"source": source_id, "published": published, "last": last, "limit": limit},
    ).fetchall()
    return [Stored(**row) for row in rows]


def raw_payloads(conn: Connection, mention_ids: Sequence[int]) -> dict[int, Any]:
    """The stored payloads of these mentions (those that still have one)."""
    rows = conn.execute(
        "SELECT mention_id, raw FROM sl_mention_raw WHERE mention_id = ANY(%s)", (list(mention_ids),)
    ).fetchall()
    return {row["mention_id"]: row["raw"] for row in rows}


# A refreshed mention: its counts and text as the platform shows them now (NULL: not said, keep what is
# stored). New text makes it `new` again, its labels cleared, so that the analysis labels it afresh; its
# payload is replaced only where one is still stored (a payload retention dropped stays dropped).
_REFRESHED = """
WITH seen AS (
    SELECT r.*, m.tenant_id,
        (r.content IS NOT NULL AND r.content IS DISTINCT FROM m.content) AS edited,
        (r.likes IS DISTINCT FROM m.likes_count AND r.likes IS NOT NULL
         OR r.comments IS DISTINCT FROM m.comments_count AND r.comments IS NOT NULL
         OR r.shares IS DISTINCT FROM m.shares_count AND r.shares IS NOT NULL) AS counted
    FROM jsonb_to_recordset(%(found)s::jsonb) AS r(id bigint, content text, likes bigint, comments bigint,
        shares bigint, followers bigint, raw jsonb, due timestamptz)
    JOIN sl_mentions m ON m.id = r.id AND m.deleted_at IS NULL
), refreshed AS (
    UPDATE sl_mentions m SET
        likes_count = coalesce(seen.likes, m.likes_count),
        comments_count = coalesce(seen.comments, m.comments_count),
        shares_count = coalesce(seen.shares, m.shares_count),
        author_followers = coalesce(seen.followers, m.author_followers),
        content = CASE WHEN seen.edited THEN seen.content ELSE m.content END,
        status = CASE WHEN seen.edited THEN 'new' ELSE m.status END,
        sentiment = CASE WHEN seen.edited THEN NULL ELSE m.sentiment END,
        sentiment_score = CASE WHEN seen.edited THEN NULL ELSE m.sentiment_score END,
        intent = CASE WHEN seen.edited THEN NULL ELSE m.intent END,
        analyzer = CASE WHEN seen.edited THEN NULL ELSE m.analyzer END,
        analyzed_at = CASE WHEN seen.edited THEN NULL ELSE m.analyzed_at END,
        refreshed_at = now(),
        refresh_due_at = seen.due
    FROM seen WHERE m.id = seen.id
    RETURNING seen.edited, seen.counted
), payloads AS (
    UPDATE sl_mention_raw p SET raw = seen.raw FROM seen
    WHERE p.mention_id = seen.id AND p.tenant_id = seen.tenant_id AND seen.raw IS NOT NULL
), unread AS (
    -- posts the answer said nothing of: read again at the next step of the schedule
    UPDATE sl_mentions m SET refresh_due_at = u.due
    FROM jsonb_to_recordset(%(unread)s::jsonb) AS u(id bigint, due timestamptz)
    WHERE m.id = u.id AND m.source_id = %(source)s
), unknowable AS (
    -- posts the platform cannot be asked about (or answered about ambiguously): never on the schedule again
    UPDATE sl_mentions m SET refresh_due_at = NULL WHERE m.id = ANY(%(unknown)s) AND m.source_id = %(source)s
), {gone} , counters AS (
    UPDATE sl_sources SET last_refresh_at = now(),
        refreshed_count = refreshed_count + (SELECT count(*) FROM refreshed),
        deleted_count = deleted_count + (SELECT count(*) FROM gone),
        mentions_count = greatest(mentions_count - (SELECT count(*) FROM gone WHERE %(remove)s), 0)
    WHERE id = %(source)s
)
SELECT (SELECT count(*) FROM refreshed) AS refreshed,
    (SELECT count(*) FROM refreshed WHERE edited OR counted) AS updated,
    (SELECT count(*) FROM refreshed WHERE edited) AS edited,
    (SELECT count(*) FROM gone) AS deleted
"""

# A post the platform no longer shows: removed (SLSYNC_DELETED=remove), or a tombstone that keeps only what
# identifies the post (so that no later sync stores it again), when it was published, its last counts and its
# label; there is nothing left to analyse. Its payload goes too (a removed mention's by the trigger).
_GONE_REMOVED = """gone AS (
    DELETE FROM sl_mentions WHERE id = ANY(%(gone)s) AND source_id = %(source)s RETURNING id
)"""
_GONE_TOMBSTONE = """gone AS (
    UPDATE sl_mentions SET deleted_at = now(), content = NULL, url = NULL, author_name = NULL,
        author_handle = NULL, author_followers = NULL, author_verified = NULL, media_type = NULL,
        media_urls = NULL, location = NULL, refresh_due_at = NULL,
        status = 'processed', refreshed_at = now()
    WHERE id = ANY(%(gone)s) AND source_id = %(source)s AND deleted_at IS NULL
    RETURNING id, tenant_id
), raw_dropped AS (
    DELETE FROM sl_mention_raw p USING gone WHERE p.mention_id = gone.id AND p.tenant_id = gone.tenant_id
)"""


def apply_lookup(
    conn: Connection,
    source_id: int,
    *,
    found: Sequence[tuple[Stored, Mention]],
    gone: Sequence[int],
    unknown: Sequence[int] = (),
    unread: Sequence[Stored] = (),
    schedule: Sequence[timedelta],
    remove: bool,
) -> dict[str, int]:
    """What a lookup learned, in one statement: the found mentions' counts and text, the gone ones tombstoned
    (or removed), each one's next time on the schedule, and the source's refresh counters. Returns the counts
    refreshed (found and rewritten), updated (counts or text changed), edited (text changed) and deleted."""
    now = datetime.now(UTC)

    def due(post: Stored) -> str | None:
        moment = next_refresh(post.published_at, schedule, now)
        return moment.isoformat() if moment else None

    rows = [
        {
            "id": post.id, "content": m.content, "likes": m.likes_count, "comments": m.comments_count,
            "shares": m.shares_count, "followers": m.author_followers, "raw": m.raw, "due": due(post),
        }
        for post, m in found
    ]  # fmt: skip
    statement = _REFRESHED.replace("{gone}", _GONE_REMOVED if remove else _GONE_TOMBSTONE)
    row = conn.execute(
        statement,
        {
            "found": json_text(rows), "gone": list(gone), "unknown": list(unknown), "source": source_id,
            "unread": json_text([{"id": post.id, "due": due(post)} for post in unread]), "remove": remove,
        },
    ).fetchone()  # fmt: skip
    assert row is not None
    return {k: int(v) for k, v in row.items()}


def refresh_pending(conn: Connection, source_ids: Sequence[int]) -> dict[int, int]:
    """Per source, how many mentions are due to be read again now (along sl_mentions_refresh_idx)."""
    rows = conn.execute(
        "SELECT source_id, count(*) AS n FROM sl_mentions WHERE source_id = ANY(%s) AND refresh_due_at <= now()"
        " GROUP BY source_id",
        (list(source_ids),),
    ).fetchall()
    return {row["source_id"]: int(row["n"]) for row in rows}


# --- retention and erasure --------------------------------------------------------------------------

# The deleted mentions (`gone`, their source_id) no longer counted in their sources' mentions_count.
_UNCOUNT = """UPDATE sl_sources s SET mentions_count = greatest(s.mentions_count - g.n, 0)
    FROM (SELECT source_id, count(*) AS n FROM gone WHERE source_id IS NOT NULL GROUP BY source_id) g
    WHERE s.id = g.source_id"""

# Mentions past their retention, oldest first along sl_mentions_published_idx, `limit` a statement: the
# statement holds its row locks (and the table's RowExclusiveLock, which blocks no other reader or writer)
# for a few hundred milliseconds at most, and a row another transaction holds is left for the next batch.
_PRUNE = f"""
WITH doomed AS (
    SELECT id FROM sl_mentions WHERE published_at < now() - make_interval(days => %(days)s)
    ORDER BY published_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM sl_mentions m USING doomed WHERE m.id = doomed.id RETURNING m.source_id
), counted AS ({_UNCOUNT})
SELECT count(*) AS n FROM gone
"""


def delete_old_mentions(conn: Connection, *, days: int, limit: int) -> int:
    """Delete up to `limit` mentions published more than `days` ago, in one short statement; how many went."""
    row = conn.execute(_PRUNE, {"days": days, "limit": limit}).fetchone()
    return int(row["n"]) if row else 0


def old_mentions_left(conn: Connection, *, days: int) -> bool:
    """Whether any mention published more than `days` ago is left (locked or not; along
    sl_mentions_published_idx)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM sl_mentions WHERE published_at < now() - make_interval(days => %s)) AS left",
        (days,),
    ).fetchone()
    return bool(row and row["left"])


def drop_old_raw(conn: Connection, *, days: int, limit: int) -> int:
    """Drop the raw payloads of up to `limit` mentions fetched more than `days` ago (their normalized columns
    stay), the oldest payloads first along sl_mention_raw's primary key (mention ids grow with fetched_at);
    how many were dropped. Fewer than `limit` means the payloads left are younger."""
    row = conn.execute(
        "WITH batch AS (SELECT mention_id, tenant_id FROM sl_mention_raw ORDER BY mention_id LIMIT %(limit)s),"
        " old AS (SELECT batch.* FROM batch JOIN sl_mentions m ON m.id = batch.mention_id"
        "  AND m.tenant_id = batch.tenant_id WHERE m.fetched_at < now() - make_interval(days => %(days)s)),"
        " dropped AS (DELETE FROM sl_mention_raw p USING old"
        "  WHERE p.mention_id = old.mention_id AND p.tenant_id = old.tenant_id RETURNING 1)"
        " SELECT count(*) AS n FROM dropped",
        {"days": days, "limit": limit},
    ).fetchone()
    return int(row["n"]) if row else 0


def forget_author(
    conn: Connection,
    *,
    platform: str,
    handle: str,
    tenant_id: int | None,
    requested_by: str,
    author_digest: str,
    batch: int = 1000,
) -> dict[str, Any]:
    """Delete every mention by this author (author_handle, in any case) on the platform, in one tenant or all,
    and record the request in sl_erasures, in one transaction (statements of `batch` rows). Returns the erasure's
    id, when, and what was deleted (id, tenant and external id of each mention)."""
    with conn.transaction():
        found = conn.execute(
            "SELECT id, tenant_id, source_id, external_id FROM sl_mentions"
            " WHERE platform = %(platform)s AND lower(author_handle) = lower(%(handle)s)"
            " AND (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s) ORDER BY tenant_id, id",
            {"platform": platform, "handle": handle, "tenant": tenant_id},
        ).fetchall()
        for first in range(0, len(found), batch):
            ids = [row["id"] for row in found[first : first + batch]]
            conn.execute(
                f"WITH gone AS (DELETE FROM sl_mentions WHERE id = ANY(%s) RETURNING source_id) {_UNCOUNT}", (ids,)
            )
        audit = conn.execute(
            "INSERT INTO sl_erasures (requested_by, platform, tenant_id, author_digest, mentions_deleted)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id, requested_at",
            (requested_by, platform, tenant_id, author_digest, len(found)),
        ).fetchone()
    assert audit is not None
    return {"erasure_id": audit["id"], "requested_at": audit["requested_at"], "deleted": found}


# --- what `slsync doctor` reads --------------------------------------------------------------------


def schema_state(conn: Connection) -> tuple[str, set[int]]:
    """The server's version and the migrations applied to this database (none before the first)."""
    version = conn.execute("SHOW server_version").fetchone()
    table = conn.execute("SELECT to_regclass('sl_schema_migrations') IS NOT NULL AS present").fetchone()
    applied: set[int] = set()
    if table and table["present"]:
        applied = {int(row["version"]) for row in conn.execute("SELECT version FROM sl_schema_migrations")}
    return (str(version["server_version"]) if version else "unknown"), applied


def database_clock(conn: Connection) -> datetime:
    """The database's clock now (not the transaction's start)."""
    row = conn.execute("SELECT clock_timestamp() AS now").fetchone()
    assert row is not None
    return row["now"]


def sources_to_check(conn: Connection) -> list[Source]:
    """Every source as `doctor` checks it: everything but the cursors."""
    return [_source(row) for row in conn.execute(f"SELECT {_PLAN_COLUMNS} FROM sl_sources s ORDER BY s.id")]


def recent_gaps(conn: Connection, *, days: int) -> dict[int, list[dict[str, Any]]]:
    """Per source, the coverage gaps recorded or widened in the last `days` days."""
    rows = conn.execute(
        "SELECT source_id, stream, from_at, to_at, reason, missed_estimate FROM sl_coverage_gaps"
        " WHERE updated_at > now() - make_interval(days => %s) ORDER BY source_id, from_at",
        (days,),
    ).fetchall()
    gaps: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        gaps.setdefault(row.pop("source_id"), []).append(row)
    return gaps


# --- what the metrics file shows -------------------------------------------------------------------

_METRICS = """
SELECT s.id, s.tenant_id, s.platform, s.status, s.last_sync_at, s.next_sync_at, s.mentions_count,
    s.consecutive_failures, s.rate_limit_remaining, s.rate_limit_reset_at,
    run.status AS run_status, run.finished_at AS run_finished_at, run.saved AS run_saved,
    extract(epoch FROM run.finished_at - run.started_at)::float8 AS run_seconds,
    COALESCE(gaps.n, 0) AS gaps
FROM sl_sources s
LEFT JOIN LATERAL (
    SELECT status, started_at, finished_at, saved FROM sl_sync_runs r
    WHERE r.source_id = s.id AND r.finished_at IS NOT NULL ORDER BY r.started_at DESC LIMIT 1
) run ON true
LEFT JOIN (SELECT source_id, count(*) AS n FROM sl_coverage_gaps GROUP BY source_id) gaps ON gaps.source_id = s.id
ORDER BY s.id
"""


def metrics_rows(conn: Connection) -> list[dict[str, Any]]:
    """Every source with its last finished run and its count of coverage gaps."""
    return conn.execute(_METRICS).fetchall()


# --- what `slsync report` shows ---------------------------------------------------------------------

# tombstones (posts their authors deleted) are left out, as `mentions list` leaves them out
_REPORT_MENTIONS = (
    " FROM sl_mentions WHERE published_at >= %(since)s AND (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s)"
    " AND deleted_at IS NULL"
)


def report_data(conn: Connection, *, tenant_id: int | None, since: datetime, bucket: str, top: int) -> dict[str, Any]:
    """Everything the report draws, each part one aggregate query over the period's mentions."""
    if bucket not in ("day", "week", "month"):
        raise ValueError(bucket)
    params = {"since": since, "tenant": tenant_id, "bucket": bucket, "top": top}
    when = "date_trunc(%(bucket)s, published_at AT TIME ZONE 'UTC')::date AS bucket"

    def rows(query: str) -> list[dict[str, Any]]:
        return conn.execute(query, params).fetchall()

    return {
        "per_platform": rows(f"SELECT {when}, platform, count(*)::int AS n {_REPORT_MENTIONS} GROUP BY 1, 2"),
        "per_sentiment": rows(
            f"SELECT {when}, CASE WHEN status = 'new' THEN 'pending' ELSE sentiment END AS label, count(*)::int AS n"
            f" {_REPORT_MENTIONS} GROUP BY 1, 2"
        ),
        "intents": rows(
            f"SELECT intent, count(*)::int AS n {_REPORT_MENTIONS} AND status <> 'new' GROUP BY 1 ORDER BY 2 DESC, 1"
        ),
        "authors": rows(
            "SELECT platform, author_handle, max(author_name) AS author_name, max(author_followers) AS reach,"
            f" count(*)::int AS mentions {_REPORT_MENTIONS} AND coalesce(author_handle, author_name) IS NOT NULL"
            " GROUP BY platform, author_handle, CASE WHEN author_handle IS NULL THEN author_name END"
            " ORDER BY reach DESC NULLS LAST, mentions DESC LIMIT %(top)s"
        ),
        "engaged": rows(
            "SELECT platform, url, content, author_name, author_handle, published_at, likes_count, comments_count,"
            f" shares_count {_REPORT_MENTIONS}"
            " ORDER BY coalesce(likes_count, 0) + coalesce(comments_count, 0) + coalesce(shares_count, 0) DESC,"
            " published_at DESC LIMIT %(top)s"
        ),
        "sources": rows(
            "SELECT s.id, s.platform, s.name, s.status, s.last_sync_at, s.consecutive_failures, s.error_message,"
            " (SELECT count(*)::int FROM sl_sync_runs r WHERE r.source_id = s.id AND r.status = 'failed'"
            "  AND r.started_at >= %(since)s) AS failed_runs"
            " FROM sl_sources s WHERE (%(tenant)s::bigint IS NULL OR s.tenant_id = %(tenant)s) ORDER BY s.id"
        ),
        "gaps": {
            row["source_id"]: row["n"]
            for row in rows(
                "SELECT source_id, count(*)::int AS n FROM sl_coverage_gaps WHERE to_at >= %(since)s"
                " AND (%(tenant)s::bigint IS NULL OR tenant_id = %(tenant)s) GROUP BY 1"
            )
        },
    }
