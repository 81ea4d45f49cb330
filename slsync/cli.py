"""The command line: parse, call a service, render (rich on a terminal, one JSON document with --json).

Exit codes: 0 success; 1 a sync or command failed; 2 usage or configuration error.
Heavy modules (psycopg, the engine) are imported inside commands so that --help starts fast.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import orjson
import typer

from slsync import __version__
from slsync.errors import NotFound, SlsyncError, UsageError
from slsync.terminal import counted, json_escaped, json_line, shortened, text, visible

if TYPE_CHECKING:
    from rich.console import Console

    from slsync.config import Settings
    from slsync.models import Source, SyncResult
    from slsync.sync import BatchResult

EXIT_CODES = "Exit codes: 0 success, 1 failed, 2 usage or configuration error."


class _Command(typer.core.TyperCommand):
    """A command that refuses an option given twice (the parser would keep the last value without a word) unless
    it is repeatable, and reads `-1` where a number argument is expected as that number, out of range, rather
    than as an unknown option."""

    def make_parser(self, ctx: Any) -> Any:
        parser = super().make_parser(ctx)
        parse = parser.parse_args

        def parse_args(args: list[str]) -> Any:
            try:
                opts, rest, order = parse(args)
            except typer._click.exceptions.NoSuchOption as exc:
                if re.fullmatch(r"-\d+", exc.option_name):
                    for param in self.get_params(ctx):
                        if isinstance(param, typer.core.TyperArgument):
                            param.process_value(ctx, exc.option_name)  # a number argument's range error
                raise
            given: set[str] = set()
            for param in order:
                if getattr(param, "multiple", True) or getattr(param, "is_flag", True):
                    continue
                if param.name in given:
                    raise typer._click.exceptions.UsageError(f"{param.opts[0]} is given more than once", ctx)
                given.add(param.name)
            return opts, rest, order

        parser.parse_args = parse_args
        return parser


class _Typer(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


class _App(_Typer):
    """Typer with one top-level error handler: one line on stderr, a traceback only with --debug."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        sys.exit(run(self, kwargs.get("args")))


class _Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM (`systemctl stop`, `timeout`, `kill`) end a command the same way.

    While sources are syncing, the first signal asks the runs to stop after their current page: each records
    what it saved (`partial`, continued by the next run) and releases its source. At any other moment, or at a
    second signal, the command is interrupted at once and its open transaction rolls back. Either way the
    process ends normally, so it stops what it started (the embedded PostgreSQL), and one line says what was
    kept: exit 130 after SIGINT, 143 after SIGTERM.
    """

    def __init__(self) -> None:
        self.stop: Any = None  # the sync's Stop while one runs
        self.received: int | None = None
        self.between_pages = False
        # what the line says was kept; a command that knows better says so (`sync`, `connect`)
        self.outcome = "interrupted"

    def handle(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum
        if self.between_pages and not self.stop.is_set():
            self.stop.because("interrupted")
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            yield
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def stopping_between_pages(self, outcome: str) -> Iterator[Any]:
        """Around a sync: the Stop its runs check between pages; interrupted when a signal set it."""
        from slsync.sync import Stop

        self.stop = Stop()
        self.outcome = outcome
        self.between_pages = True
        try:
            yield self.stop
        finally:
            self.between_pages = False
        if self.received is not None:
            raise KeyboardInterrupt

    @property
    def exit_code(self) -> int:
        return 128 + (self.received or signal.SIGINT)


_interrupts = _Interrupts()
SYNC_INTERRUPTED = "interrupted; the next sync continues where each source stopped"
_debug = False


_click_commands: dict[int, Any] = {}


def _click_command(application: typer.Typer) -> Any:
    """The parser Typer builds from the app, built once: building it reads every command's signature and type
    hints (a third of an in-process command's time)."""
    if id(application) not in _click_commands:
        _click_commands[id(application)] = typer.main.get_command(application)
    return _click_commands[id(application)]


def run(application: typer.Typer, argv: Sequence[str] | None = None) -> int:
    global _debug, _interrupts
    _interrupts = _Interrupts()
    args = list(sys.argv[1:] if argv is None else argv)
    _debug = "--debug" in args
    command = _click_command(application)
    watch = _Watch(_command_name(command, args))
    code = _run(command, args)
    watch.end(code)
    return code


def _run(command: Any, args: list[str]) -> int:
    try:
        with _interrupts.installed():
            code = command.main(args=args, prog_name="slsync", standalone_mode=False)
        if code == 130:  # the parser's answer to Ctrl-C (a KeyboardInterrupt), returned as the exit code
            _error(_interrupts.outcome)
            return _interrupts.exit_code
        return code if isinstance(code, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # the parser's usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.format_message(), file=sys.stderr)
            return 2
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _error(exc.format_message().strip().rstrip(".") + hint)
        return exc.exit_code
    except typer.Abort:
        _error("aborted")
        return 130
    except SlsyncError as exc:
        if _debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.exit_code
    except Exception as exc:
        if _debug:
            traceback.print_exc()
        if type(exc).__module__.startswith("psycopg"):  # one that db.py did not take for the database's failure
            _error(f"database error: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
        else:
            _error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return 1


def _error(message: str) -> None:
    _say(f"slsync: error: {shortened(message)}", file=sys.stderr)


def _say(line: str, file: Any = None) -> None:
    """One line for a person: every control character a value brought along is shown as an escape."""
    print(visible(line), file=file)


def _command_name(root: Any, args: list[str]) -> str | None:
    """The command the arguments name ("sync due"), None for none (--help, --version, a typo)."""
    names, group = [], root
    for arg in args:
        if arg.startswith("-"):
            continue
        found = getattr(group, "commands", {}).get(arg)
        if found is None:
            break
        names.append(arg)
        group = found
    return " ".join(names) if names and not hasattr(group, "commands") else None


# What the command that runs now produced, for the metrics and the healthcheck ping once it has ended: its JSON
# result (sync commands) and its summary line.
_outcome: dict[str, Any] = {}


class _Watch:
    """Monitoring around one command: the healthcheck's start ping as `sync due` begins; the metrics file and
    the last ping once it has ended. Neither ever changes the command's exit code."""

    def __init__(self, command: str | None) -> None:
        from slsync.config import get_settings

        _outcome.clear()
        self.command = command
        self.started = time.monotonic()
        self.pinger = None
        try:
            self.settings: Settings | None = get_settings() if command else None
        except SlsyncError:  # the command says so itself
            self.settings = None
        if self.settings is not None and self.settings.healthcheck_url and command == "sync due":
            from slsync.healthcheck import Pinger

            self.pinger = Pinger(self.settings.healthcheck_url)
            self.pinger.start()

    def end(self, code: int) -> None:
        if self.settings is None or self.command is None:
            return
        if self.settings.metrics_file is not None:
            from slsync import metrics

            try:
                metrics.write(self.settings, self.settings.metrics_file, command=self.command, exit_code=code,
                              duration=time.monotonic() - self.started, result=_outcome.get("result"))  # fmt: skip
            except Exception as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
                _say(f"slsync: warning: the metrics file {self.settings.metrics_file} was not written: {reason}",
                     file=sys.stderr)  # fmt: skip
        if self.pinger is not None:
            self.pinger.finish(code, _outcome.get("summary"))


app = _App(
    name="slsync",
    help="Keep a PostgreSQL table of brand mentions current from social platforms. " + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
source_app = _Typer(help="Add, list and remove sources (what to listen for, where).", no_args_is_help=True)
sync_app = _Typer(help="Sync sources now: one, one tenant's, or every due one (the cron job).", no_args_is_help=True)
mentions_app = _Typer(help="Read and hand off the stored mentions.", no_args_is_help=True)
tokens_app = _Typer(
    help="Manage the user tokens: move them between stores, make and rotate the database store's key.",
    no_args_is_help=True,
)
app.add_typer(source_app, name="source")
app.add_typer(sync_app, name="sync")
app.add_typer(mentions_app, name="mentions")
app.add_typer(tokens_app, name="tokens")

JsonFlag = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
# The largest ids the database holds (checked here, so an absurd number is a usage error, not a database one):
# tenant ids are bigints, source ids integers.
MAX_TENANT = 2**63 - 1
MAX_SOURCE = 2**31 - 1
SourceArgument = typer.Argument(..., min=1, max=MAX_SOURCE, help="The source id.")
TenantFilter = typer.Option(None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's mentions.")
SourceFilter = typer.Option(None, "--source", min=1, max=MAX_SOURCE, help="Only this source's mentions.")


def _version(value: bool) -> None:
    if value:
        print(f"slsync {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show debug logs and tracebacks (never secrets)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    from slsync import logs

    try:
        settings = _settings()
    except UsageError:
        if ctx.invoked_subcommand != "doctor":  # doctor reports a bad setting as its first check
            raise
        logs.setup("WARNING", "text", debug)
        return
    logs.setup(settings.log_level, settings.log_format, debug)


def _settings() -> Settings:
    from slsync.config import get_settings

    return get_settings()


# --- output helpers -------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def emit_json(document: Any) -> None:
    out = binary_stdout()
    out.write(json_bytes(document) + b"\n")
    out.flush()


def binary_stdout() -> Any:
    """Where JSON bytes go: stdout's buffer, after what was written to stdout as text; a stdout without one
    (replaced by an embedding program, an in-process test) gets them as text."""
    sys.stdout.flush()
    return getattr(sys.stdout, "buffer", None) or _TextWriter(sys.stdout)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while documents are made by the hundred thousand: they hold no cycles
    and reference counting frees them, but the collector would walk the live ones over and over (0.3 s of
    `status --json` at 100,000 sources)."""
    import gc

    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _TextWriter:
    def __init__(self, text: Any) -> None:
        self.text = text

    def write(self, data: bytes) -> None:
        self.text.write(data.decode())

    def flush(self) -> None:
        self.text.flush()


def json_bytes(value: Any) -> bytes:
    """`value` as compact JSON by orjson (~10x the standard library's speed). A datetime is written with its
    own offset: the database's are UTC (db._SESSION_SETTINGS). What orjson refuses (an integer beyond 64 bits)
    the standard library writes (a lone surrogate too). Characters a terminal would act on are \\u escapes."""
    try:
        return json_escaped(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:
        return json_line(value, default=_json_default).encode()


_LINE = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


def json_lines(documents: Sequence[Any]) -> bytes:
    """Documents as JSON lines, the bytes of json_bytes(document) + newline for each, with one call to orjson a
    document and one escaping pass for all."""
    try:
        return json_escaped(b"".join([orjson.dumps(document, option=_LINE) for document in documents]))
    except orjson.JSONEncodeError:
        return b"".join([json_bytes(document) + b"\n" for document in documents])


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # markup off: what slsync prints through rich is never read as markup, even a string that slipped past
    # _table's Text cells
    if stream.isatty():
        return Console(stderr=stderr, soft_wrap=True, markup=False)
    # Not a terminal (cron, a pipe): no colour, and wide enough that tables and URLs never wrap, unless COLUMNS
    # says how wide (`COLUMNS=80 slsync status | less`).
    columns = os.environ.get("COLUMNS", "")
    width = int(columns) if columns.isdigit() and int(columns) >= 20 else 200
    return Console(stderr=stderr, width=width, no_color=True, soft_wrap=True, highlight=False, markup=False)


def _table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> Any:
    """A rich table whose every cell is shown literally (a Text of the value, control characters escaped)."""
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(text(cell) for cell in row))
    return table


def _when(value: datetime | None, *, short: bool = False) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S UTC")


class _LiveProgress:
    """The live display of a sync on a terminal (sync.Progress): sources done of total, mentions fetched and new,
    failures, elapsed time, and what runs now; one line, cut to the terminal's width."""

    def __init__(self, progress: Any) -> None:
        import threading

        self._progress = progress
        self._task = progress.add_task("starting", total=None, fetched=0, saved=0, failed=0)
        self._fetched: dict[int, int] = {}
        self._saved = self._failed = 0
        self._lock = threading.Lock()  # the workers of `sync due` report from their own threads

    def planned(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def page(self, source: Source, pages: int, fetched: int) -> None:
        where = f"source {source.id} page {pages} ({source.platform}: {source.name})"
        with self._lock:
            self._fetched[source.id] = fetched
            self._progress.update(self._task, description=visible(where), fetched=sum(self._fetched.values()))

    def finished(self, result: SyncResult) -> None:
        from slsync.sync import is_failure

        with self._lock:
            self._fetched[result.source_id] = result.mentions_fetched
            self._saved += result.mentions_saved
            self._failed += is_failure(result)
            self._progress.update(
                self._task,
                advance=1,
                description=visible(_result_line(result)),
                fetched=sum(self._fetched.values()),
                saved=self._saved,
                failed=self._failed,
            )


@contextmanager
def _progress(enabled: bool) -> Iterator[_LiveProgress | None]:
    """A live display on a terminal's stderr; nothing under cron or with --json (the result lines say it all)."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column
    from rich.text import Text

    class Sources(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.total is None:
                return Text("claiming sources")
            return Text(f"{task.completed:,.0f} of {task.total:,.0f} sources")

    columns = (
        SpinnerColumn(),
        Sources(),
        TextColumn("{task.fields[fetched]:,} fetched, {task.fields[saved]:,} new", markup=False),
        TextColumn("{task.fields[failed]} failed", markup=False),
        TimeElapsedColumn(),
        TextColumn("{task.description}", markup=False, table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
    )
    with Progress(*columns, console=_console(stderr=True), expand=True, transient=True) as progress:
        yield _LiveProgress(progress)


@contextmanager
def _syncing(show_progress: bool) -> Iterator[tuple[_LiveProgress | None, Any]]:
    """Around a sync: the live progress display, and the event a signal sets to stop the runs between pages."""
    with _interrupts.stopping_between_pages(SYNC_INTERRUPTED) as stop, _progress(show_progress) as progress:
        yield progress, stop


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--since {value!r}: expected a date such as 2026-11-20 or 2026-11-20T08:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# --- platforms ------------------------------------------------------------------------------------


@app.command()
def platforms(as_json: bool = JsonFlag) -> None:
    """List every platform of the plan and whether it is active or planned. Exit 0."""
    from slsync.connectors import PLATFORMS

    rows = [{"name": p.name, "title": p.title, "state": p.state, "note": p.note} for p in PLATFORMS.values()]
    if as_json:
        emit_json({"platforms": rows})
        return
    _console().print(_table(("platform", "name", "state", "note"), [list(row.values()) for row in rows]))


# --- sources --------------------------------------------------------------------------------------

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _typed(value: str, flag: str) -> str:
    """A value typed on the command line, stripped; one the database cannot store (bytes that are not UTF-8,
    which Python hands over as lone surrogates) is refused."""
    if bad := _UNSTORABLE.search(value):
        char = ord(bad.group())
        what = f"the byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"the character U+{char:04X}"
        raise UsageError(f"{flag} {value!r}: {what} is not UTF-8 text")
    value = value.strip()
    if not value:
        raise UsageError(f"{flag} needs a non-empty value")
    return value


def _terms(values: list[str], flag: str, strip: str = "") -> list[str]:
    cleaned = []
    for value in values:
        term = _typed(_typed(value, flag).lstrip(strip), flag)
        if term not in cleaned:
            cleaned.append(term)
    return cleaned


def _options(values: list[str]) -> dict[str, str]:
    options = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--option {value!r}: expected NAME=VALUE")
        options[name.strip()] = setting.strip()
    return options


def _source_json(source: Source) -> dict[str, Any]:
    return {
        "id": source.id,
        "tenant_id": source.tenant_id,
        "platform": source.platform,
        "name": source.name,
        "connection_type": source.connection_type,
        "config": dict(source.config),
        "status": source.status,
        "sync_interval_minutes": source.sync_interval_minutes,
        **_schedule_json(source.interval_mode, source.min_interval_minutes, source.max_interval_minutes),
        "last_sync_at": source.last_sync_at,
        "next_sync_at": source.next_sync_at,
        "error_message": source.error_message,
        "total_mentions": source.mentions_count,
    }


def _schedule_json(mode: str, lowest: int | None, highest: int | None) -> dict[str, Any]:
    return {"interval_mode": mode, "min_interval_minutes": lowest, "max_interval_minutes": highest}


def _every(mode: str, minutes: int, lowest: int | None, highest: int | None) -> str:
    """How often a source syncs, for tables: "30 min", or "auto 15-360: 60 min"."""
    return f"auto {lowest}-{highest}: {minutes} min" if mode == "auto" else f"{minutes} min"


def _interval(value: str, lowest: int | None, highest: int | None) -> tuple[int, tuple[int, int] | None]:
    """--interval MINUTES or auto, with --min-interval/--max-interval: the first interval and the auto bounds."""
    from slsync.coverage import DEFAULT_MAX_INTERVAL, DEFAULT_MIN_INTERVAL

    text = value.strip().lower()
    if text != "auto":
        if lowest is not None or highest is not None:
            raise UsageError("--min-interval and --max-interval go with --interval auto")
        try:
            minutes = int(text)
        except ValueError:
            raise UsageError(f"--interval {value!r}: expected a number of minutes (1 to 10080) or auto") from None
        if not 1 <= minutes <= 10080:
            raise UsageError(f"--interval {minutes}: expected 1 to 10080 minutes (a week), or auto")
        return minutes, None
    lowest = DEFAULT_MIN_INTERVAL if lowest is None else lowest
    highest = max(DEFAULT_MAX_INTERVAL, lowest) if highest is None else highest
    if lowest > highest:
        raise UsageError(f"--min-interval {lowest} is more than --max-interval {highest}")
    return lowest, (lowest, highest)


@source_app.command("add")
def source_add(
    platform: str = typer.Argument(..., help="A platform name from `slsync platforms`."),
    tenant: int = typer.Option(..., "--tenant", min=0, max=MAX_TENANT, help="Tenant id (an integer of your system)."),
    name: str = typer.Option(..., "--name", help="A name for the source, unique per tenant and platform."),
    keyword: list[str] = typer.Option([], "--keyword", help="Keyword or phrase to listen for (repeatable)."),
    hashtag: list[str] = typer.Option([], "--hashtag", help="Hashtag, with or without # (repeatable)."),
    mention: list[str] = typer.Option([], "--mention", help="Account mentioned, with or without @ (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Word that excludes a post (repeatable)."),
    language: list[str] = typer.Option([], "--language", help="ISO 639-1 language code (repeatable)."),
    option: list[str] = typer.Option([], "--option", help="Connector option NAME=VALUE (repeatable)."),
    interval: str = typer.Option(
        "15", "--interval", help="Minutes between syncs (1-10080), or auto: follow the source's volume."
    ),
    min_interval: Optional[int] = typer.Option(  # noqa: UP045
        None, "--min-interval", min=1, max=10080, help="With --interval auto: the shortest interval (default 15)."
    ),
    max_interval: Optional[int] = typer.Option(  # noqa: UP045
        None, "--max-interval", min=1, max=10080, help="With --interval auto: the longest interval (default 360)."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Add a source; prints its id ({"id": ...} with --json). Exit 0, or 2 on bad input.

    With --interval auto, each sync schedules the next from the new mentions it found and how close it came
    to the platform's listing cap or reach: a busy source is synced often, a quiet one drifts to the maximum.
    """
    from slsync import db
    from slsync.connectors import connector_class

    name = _typed(name, "--name")
    languages = _terms([v.lower() for v in language], "--language")
    for code in languages:
        if not _LANGUAGE.match(code):
            raise UsageError(f"--language {code!r}: expected a two- or three-letter code such as en")
    minutes, auto = _interval(interval, min_interval, max_interval)
    connector = connector_class(platform)
    if connector.development_only and _settings().is_production:
        raise UsageError(f"{platform} sources are refused when SLSYNC_ENV=production: they make up their mentions")
    search = {
        "keywords": _terms(keyword, "--keyword"),
        "hashtags": _terms(hashtag, "--hashtag", "#"),
        "mentions": _terms(mention, "--mention", "@"),
        "exclude": _terms(exclude, "--exclude"),
        "languages": languages,
    }
    config = connector.build_config(search, _options(option))
    with db.connect(_settings()) as conn:
        source_id = db.add_source(
            conn,
            tenant_id=tenant,
            platform=platform,
            name=name,
            connection_type=connector.connection_type,
            config=config,
            interval_minutes=minutes,
            status="pending" if connector.connection_type == "user" else "active",
            auto_interval=auto,
        )
        source = db.get_source(conn, source_id)
    if as_json:
        emit_json(_source_json(source))
    else:
        _say(f"added {platform} source {source_id} ({name!r}) for tenant {tenant}")
        if source.status == "pending":
            _say(f"connect it to an account first: slsync connect {source_id}")
        elif missing := _missing_settings(connector, source):
            names = " and ".join(missing)
            _say(f"{connector.title} needs {names}, not set here: set {'them' if len(missing) > 1 else 'it'}"
                 f" (docs/platforms/{platform}.md), then: slsync sync source {source_id}")  # fmt: skip
            if connector.oauth_app(_settings()) is not None:
                _say(f"or connect it to an account instead: slsync connect {source_id}")
        else:
            _say(f"sync it now: slsync sync source {source_id}")


def _missing_settings(connector: Any, source: Source) -> list[str]:
    """The settings a new source needs that this environment lacks (a bad value: named as missing too)."""
    try:
        return connector.missing_settings(source, _settings())
    except UsageError as exc:
        return [str(exc)]


@source_app.command("list")
def source_list(
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's sources."),  # noqa: UP045
    as_json: bool = JsonFlag,
) -> None:
    """List sources with their search parameters. Exit 0."""
    from slsync import db

    with db.connect(_settings()) as conn:
        sources = db.list_sources(conn, tenant_id=tenant)
    if as_json:
        emit_json({"sources": [_source_json(s) for s in sources]})
        return
    rows = []
    for s in sources:
        terms = [*s.config.get("keywords", []), *("#" + h for h in s.config.get("hashtags", []))]
        terms += ["@" + m for m in s.config.get("mentions", [])] + ["-" + x for x in s.config.get("exclude", [])]
        every = _every(s.interval_mode, s.sync_interval_minutes, s.min_interval_minutes, s.max_interval_minutes)
        rows.append((s.id, s.tenant_id, s.platform, s.name, s.status, every, " ".join(terms)))
    _console().print(_table(("id", "tenant", "platform", "name", "status", "every", "search"), rows))


@source_app.command("remove")
def source_remove(source_id: int = SourceArgument, as_json: bool = JsonFlag) -> None:
    """Remove a source and its run log; its stored mentions are kept. Exit 0, or 2 if unknown."""
    from slsync import db

    with db.connect(_settings()) as conn:
        source = db.get_source(conn, source_id)
        db.remove_source(conn, source_id)
    if as_json:
        emit_json({"removed": source_id})
    else:
        _say(f"removed source {source_id} ({source.name!r}); its {source.mentions_count} mentions are kept")


# --- connect --------------------------------------------------------------------------------------


@app.command()
def connect(
    source_id: int = SourceArgument,
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the URL (e.g. over SSH)."),
    port: Optional[int] = typer.Option(  # noqa: UP045
        None, "--port", min=1, max=65535, help="Callback port on 127.0.0.1 (default 8765, or TWITTER_OAUTH_CALLBACK's)."
    ),
    timeout: float = typer.Option(300, "--timeout", min=1, max=3600, help="Seconds to wait for the browser."),
) -> None:
    """Connect a source to a user account, authorizing in a browser (OAuth 2.0 with PKCE).

    The callback goes to http://127.0.0.1:PORT/callback, which must be registered with the platform exactly.
    The token goes to the token store (SLSYNC_TOKEN_STORE), never to the database or the screen.

    Exit 0 connected; 1 refused, timed out, busy, or the token exchange failed; 2 usage or configuration error.
    """
    from slsync.connect import connect_source

    _interrupts.outcome = f"interrupted; nothing was stored: to connect the source, run slsync connect {source_id}"
    done = connect_source(_settings(), source_id, port=port, timeout=timeout, open_browser=not no_browser)
    source = done.source
    _say(f"connected source {source.id} ({source.platform}: {source.name}); token kept in {done.where}")
    _say(f"it syncs on the next `slsync sync due`, or now: slsync sync source {source.id}")


# --- tokens ---------------------------------------------------------------------------------------


@tokens_app.command("new-key")
def tokens_new_key() -> None:
    """Print a new random key for SLSYNC_TOKEN_KEY (32 bytes, base64). Exit 0.

    Keep it where the machines' other secrets are; never in the database. To rotate, put the new key first and
    keep the old one after it (SLSYNC_TOKEN_KEY=new,old), run `slsync tokens rotate-key`, then drop the old one.
    """
    from slsync.tokens import new_key

    print(new_key())


@tokens_app.command("migrate")
def tokens_migrate(
    to: str = typer.Option(..., "--to", help="The store to move the tokens to: database, file or keyring."),
    as_json: bool = JsonFlag,
) -> None:
    """Move every user token from the store SLSYNC_TOKEN_STORE names to another; then set SLSYNC_TOKEN_STORE to it.

    Each token is copied, then deleted from the old store, under its source's lock; running it again moves
    nothing more. Prints {"from", "to", "moved", "already", "missing", "busy", "conflicts"} with --json.
    Exit 0 all moved; 1 some source was syncing (run it again) or holds a different token in each store;
    2 usage or configuration error (a wrong or missing key: nothing is written).
    """
    from slsync.connect import migrate_tokens

    if to not in ("database", "file", "keyring"):
        raise UsageError(f"--to {to!r}: expected database, file or keyring")
    report = migrate_tokens(_settings(), to)  # type: ignore[arg-type]
    doc = {
        "from": report.source, "to": report.target, "moved": report.moved, "already": report.already,
        "missing": report.missing, "busy": report.busy, "conflicts": report.conflicts,
    }  # fmt: skip
    if as_json:
        emit_json(doc)
    else:
        print(f"moved {len(report.moved)} tokens from the {report.source} store to the {report.target} store")
        if report.already:
            print(f"{len(report.already)} were there already")
        if report.missing:
            print(f"no token for sources {_ids(report.missing)} (connect them: slsync connect SOURCE_ID)")
        if report.busy:
            print(f"sources {_ids(report.busy)} were syncing: run this command again to move theirs")
        if report.conflicts:
            print(
                f"sources {_ids(report.conflicts)} have a different token in each store: both were kept; "
                f"connect them again (slsync connect SOURCE_ID) to settle it"
            )
        if not (report.busy or report.conflicts):
            print(f"now set SLSYNC_TOKEN_STORE={report.target} wherever slsync runs")
    if report.busy or report.conflicts:
        raise typer.Exit(1)


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids))


@tokens_app.command("rotate-key")
def tokens_rotate_key(as_json: bool = JsonFlag) -> None:
    """Reseal every token of the database store under the first key of SLSYNC_TOKEN_KEY.

    Safe to interrupt and to run again. Prints {"key_id", "resealed", "unreadable"} with --json. Exit 0 when every
    token is under the first key (the others can then be dropped); 2 when some could not be opened with the keys
    given (left as they were) or on a configuration error.
    """
    from slsync.connect import rotate_token_key

    rotation = rotate_token_key(_settings())
    if as_json:
        emit_json({"key_id": rotation.key_id, "resealed": rotation.resealed, "unreadable": rotation.unreadable})
    else:
        print(f"resealed {rotation.resealed} tokens under key {rotation.key_id}")
    if rotation.unreadable:
        raise UsageError(
            f"the tokens of sources {_ids(rotation.unreadable)} do not open with the keys given and were left as "
            "they were: add the key they were sealed with after the first and run this again"
        )


# --- sync -----------------------------------------------------------------------------------------


def _result_line(r: SyncResult) -> str:
    from slsync.sync import CUT_SHORT

    if r.success:
        state = "ok"
    elif r.skipped or r.status in CUT_SHORT:
        state = r.status.replace("_", " ")
    else:
        state = "FAILED"
    return f"source {r.source_id}: {state}: {r.message}"


def _analysis_line(report: dict[str, Any] | None) -> None:
    if report is None:
        return
    if report["error"]:
        _say(f"analysis: {report['analyzed']} mentions labelled, then {report['error']} (the rest stay new)")
    elif report.get("stopped"):
        _say(
            f"analysis: {report['analyzed']} mentions labelled by {report['analyzer']}, then {report['stopped']}"
            " (the rest stay new for the next sync due)"
        )
    else:
        _say(f"analysis: {report['analyzed']} mentions labelled by {report['analyzer']}")


def _report_batch(batch: BatchResult, as_json: bool) -> None:
    doc = batch.as_json()
    deferred = f" ({doc['sources_deferred']} deferred)" if doc["sources_deferred"] else ""
    summary = (
        f"{doc['sources_synced']} synced, {doc['sources_failed']} failed, {doc['sources_cut_short']} cut short,"
        f" {doc['sources_skipped']} skipped{deferred} of {doc['sources_claimed']};"
        f" {doc['total_mentions_saved']} new mentions"
    )
    _outcome.update(result=doc, summary=summary)
    if as_json:
        emit_json(doc)
    else:
        # Failures first: under cron this is the mail an operator reads.
        failed = {id(r) for r in batch.failed}
        for r in sorted(batch.results, key=lambda r: id(r) not in failed):
            _say(_result_line(r))
        _say(summary)
        _analysis_line(batch.analysis)
        if batch.refresh is not None:
            _refresh_lines(batch.refresh)
        if batch.retention is not None:
            _retention_line(batch.retention)
    if batch.error:
        raise batch.error  # after the results that finished: one line on stderr, exit 1
    if batch.failed:
        raise typer.Exit(1)


def _retention_line(doc: dict[str, Any]) -> None:
    more = "" if doc["done"] else " (more next time)"
    deleted, dropped = counted(doc["mentions_deleted"], "old mention"), counted(doc["raw_dropped"], "raw payload")
    _say(f"retention: {deleted} deleted, {dropped} dropped{more}")


def _refresh_lines(doc: dict[str, Any], *, each: bool = False) -> None:
    """What a refresh pass did: one line (and, with `each`, one per source), then its analysis. In `sync due`'s
    output (not `each`), nothing when it had nothing to read, as cron mails stay short."""
    if not each and not (doc["checked"] or doc["pending"] or doc["sources_failed"]):
        return
    quiet = ("done", "share_spent", "out_of_time")
    for source in doc["sources"]:
        if source["status"] == "failed" or (each and (source["checked"] or source["status"] not in quiet)):
            state = "FAILED" if source["status"] == "failed" else source["status"].replace("_", " ")
            detail = f": {source['message']}" if source["message"] else ""
            _say(
                f"refresh of source {source['source_id']}: {state}: {source['checked']:,} checked, "
                f"{source['updated']:,} updated, {source['deleted']:,} deleted in {counted(source['calls'], 'call')}"
                f"{detail}"
            )
    _say(
        f"refresh: {counted(doc['checked'], 'mention')} checked, {doc['updated']:,} updated ({doc['edited']:,} "
        f"edited), {doc['deleted']:,} deleted, in {counted(doc['calls'], 'call')}; {doc['pending']:,} still due"
    )
    _analysis_line(doc["analysis"])


@sync_app.command("source")
def sync_source_command(
    source_id: int = SourceArgument,
    since: Optional[str] = typer.Option(  # noqa: UP045
        None, "--since", help="Reach back to this date (e.g. 2026-11-20) instead of the cursor."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Sync one source now, whatever its schedule. Exit 0 synced; 1 failed, busy or rate limited; 2 bad input."""
    from slsync import sync

    since_time = _parse_since(since)
    with _syncing(not as_json) as (progress, stop):
        result = sync.sync_source(_settings(), source_id, since=since_time, progress=progress, stop=stop)
    if as_json:
        emit_json(result.as_json())
    else:
        _say(_result_line(result) + f" ({result.duration_ms / 1000:.1f} s)")
        _analysis_line(result.extra.get("analysis"))
    if result.stopped_by is not None:
        raise result.stopped_by
    if not result.success:
        raise typer.Exit(1)


@sync_app.command("tenant")
def sync_tenant_command(
    tenant_id: int = typer.Argument(..., min=0, max=MAX_TENANT, help="The tenant id."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Sources synced in parallel."),
    as_json: bool = JsonFlag,
) -> None:
    """Sync every source of one tenant now. Exit 0 if none failed, 1 if any failed, 2 on bad input."""
    from slsync import sync

    with _syncing(not as_json) as (progress, stop):
        batch = sync.sync_tenant(_settings(), tenant_id, concurrency=concurrency, progress=progress, stop=stop)
    _report_batch(batch, as_json)


@sync_app.command("due")
def sync_due_command(
    limit: int = typer.Option(50, "--limit", min=1, max=10000, help="Most sources to claim in this run."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Sources synced in parallel."),
    as_json: bool = JsonFlag,
) -> None:
    """Sync the sources whose time has come (the cron job). Exit 0 if none failed, 1 if any failed."""
    from slsync import sync

    with _syncing(not as_json) as (progress, stop):
        batch = sync.sync_due(_settings(), limit=limit, concurrency=concurrency, progress=progress, stop=stop)
    _report_batch(batch, as_json)


@app.command("refresh")
def refresh_command(
    tenant: Optional[int] = TenantFilter,  # noqa: UP045
    source: Optional[int] = SourceFilter,  # noqa: UP045
    everything: bool = typer.Option(
        False, "--all", help="Every stored mention the platform can still be asked about, not only those due."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Read stored mentions again now: their counts, edited text, and whether the platform still shows them.

    The same pass `sync due` runs after its syncs (within SLSYNC_REFRESH_SHARE of each rate-limit window and
    quota, and SLSYNC_TIME_BUDGET_SECONDS). A post the platform no longer shows becomes a tombstone (or is
    removed, SLSYNC_DELETED=remove); an edited one gets its new text and is labelled again. Prints {"checked",
    "updated", "edited", "deleted", "calls", "pending", "sources", ...} with --json. Exit 0; 1 if a source's
    refresh failed; 2 on bad input.
    """
    from slsync import sync

    report = sync.refresh_now(_settings(), tenant_id=tenant, source_id=source, everything=everything)
    doc = report.as_json()
    if as_json:
        emit_json(doc)
    else:
        _refresh_lines(doc, each=True)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def prune(as_json: bool = JsonFlag) -> None:
    """Apply the retention settings now, in short batches: delete mentions published more than
    SLSYNC_RETENTION_DAYS ago, drop the raw payloads of mentions fetched more than SLSYNC_RAW_RETENTION_DAYS ago.

    `sync due` does a bounded piece of this every run. Prints {"mentions_deleted", "raw_dropped", "batches",
    "done"} with --json. Exit 0; 2 when neither setting is set.
    """
    from slsync import db, retention

    settings = _settings()
    if settings.retention_days is None and settings.raw_retention_days is None:
        raise UsageError("set SLSYNC_RETENTION_DAYS or SLSYNC_RAW_RETENTION_DAYS: with neither, everything is kept")
    with db.connect(settings) as conn:
        result = retention.prune(conn, settings)
    if as_json:
        emit_json(result.as_json())
    else:
        _retention_line(result.as_json())


# --- status ---------------------------------------------------------------------------------------


BREAKDOWN_MAX_SOURCES = 1000
# Beyond this many sources `status` prints a summary instead of a table (a row takes ~1 ms to draw).
STATUS_TABLE_ROWS = 200
# `status` warns this long before a connection's grant ends (LinkedIn's refresh token, a token without one)
RECONNECT_WARNING = timedelta(days=14)


def _status_json(
    row: Any,
    breakdown: dict[int, dict[str, int]] | None,
    gaps: dict[int, list[dict[str, Any]]] | None = None,
    pending: dict[int, int] | None = None,
) -> dict[str, Any]:
    """One source's status document from its status row (db.status_rows, a named tuple). Made 100,000 times
    by `status --json`: attribute reads and literal dicts only."""
    now, started, source_id, rate = row.db_now, row.run_started_at, row.id, row.mention_rate
    if row.syncing and started is not None:
        duration = int((now - started).total_seconds() * 1000)
    elif started is not None and row.run_finished_at is not None:
        duration = int((row.run_finished_at - started).total_seconds() * 1000)
    else:
        duration = None
    return {
        "source": {
            "id": source_id,
            "tenant_id": row.tenant_id,
            "platform": row.platform,
            "name": row.name,
            "status": row.status,
            "last_sync_at": row.last_sync_at,
            "next_sync_at": row.next_sync_at,
            "sync_interval_minutes": row.sync_interval_minutes,
            **_schedule_json(row.interval_mode, row.min_interval_minutes, row.max_interval_minutes),
            "error_message": row.error_message,
            "consecutive_failures": row.consecutive_failures,
        },
        "connection": {"type": row.connection_type, "reconnect_by": row.reconnect_by},
        "sync": {
            "syncing": row.syncing,
            "started_at": started,
            "duration_ms": duration,
            "last_run_status": row.run_status,
        },
        "rate_limit": {
            "limit": row.rate_limit_limit,
            "remaining": row.rate_limit_remaining,
            "reset_at": row.rate_limit_reset_at,
        },
        "stats": {
            "total_mentions": row.mentions_count,
            "sentiment_7d": breakdown.get(source_id, {}) if breakdown is not None else None,
        },
        "coverage": {
            "covered_until": row.covered_until,
            "mentions_per_hour": round(rate * 60, 2) if rate is not None else None,
        },
        "gaps": _gap_docs(gaps.get(source_id)) if gaps else [],
        "refresh": {
            "pending": pending.get(source_id, 0) if pending is not None else None,
            "refreshed": row.refreshed_count,
            "deleted": row.deleted_count,
            "last_refresh_at": row.last_refresh_at,
        },
    }


def _gap_docs(gaps: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if not gaps:
        return []
    from slsync.coverage import gap_json

    return [gap_json(gap) for gap in gaps]


def _breakdown_short(counts: dict[str, int] | None) -> str:
    """+positive -negative ~neutral, then what the analyzer could not judge or has not seen yet."""
    if not counts:
        return "-"
    text = f"+{counts.get('positive', 0)} -{counts.get('negative', 0)} ~{counts.get('neutral', 0)}"
    if counts.get("unknown"):
        text += f" ?{counts['unknown']}"
    if counts.get("pending"):
        text += f" ({counts['pending']} new)"
    return text


def _refresh_short(refresh: dict[str, Any]) -> str:
    """Mentions due to be read again, then how many were read again and found gone so far."""
    due = f"{refresh['pending']:,} due" if refresh["pending"] else ""
    done = f"{refresh['refreshed']:,} read, {refresh['deleted']:,} gone" if refresh["last_refresh_at"] else ""
    return "; ".join(part for part in (due, done) if part) or "-"


def _breakdown_line(counts: dict[str, int]) -> str:
    judged = sum(counts.get(k, 0) for k in ("positive", "negative", "neutral"))
    if not judged:
        return "nothing analysed yet"
    labels = ("positive", "negative", "neutral")
    parts = [f"{k} {counts.get(k, 0)} ({100 * counts.get(k, 0) / judged:.0f}%)" for k in labels]
    others = (("unknown", "unknown"), ("pending", "not analysed yet"))
    extra = [f"{counts[k]} {label}" for k, label in others if counts.get(k)]
    return ", ".join(parts) + (f"; {', '.join(extra)}" if extra else "")


def _status_cells(doc: dict[str, Any]) -> dict[str, str]:
    """Every field of one source's status line, as text, by column."""
    s, run, limit = doc["source"], doc["sync"], doc["rate_limit"]
    rate = "-"
    if limit["remaining"] is not None:
        rate = f"{limit['remaining']} left until {_when(limit['reset_at'], short=True)}"
    error = s["error_message"] or ""
    if s["consecutive_failures"]:
        error = f"{counted(s['consecutive_failures'], 'failure')}: {error}"
    return {
        "id": str(s["id"]),
        "tenant": str(s["tenant_id"]),
        "platform": s["platform"],
        "name": s["name"],
        "status": s["status"],
        "last sync (UTC)": _when(s["last_sync_at"], short=True),
        "next due": _when(s["next_sync_at"], short=True),
        "every": _every(
            s["interval_mode"], s["sync_interval_minutes"], s["min_interval_minutes"], s["max_interval_minutes"]
        ),
        "mentions": f"{doc['stats']['total_mentions']:,}",
        "7-day sentiment": _breakdown_short(doc["stats"]["sentiment_7d"]),
        "refresh": _refresh_short(doc["refresh"]),
        "rate limit": rate,
        "syncing": f"since {_when(run['started_at'], short=True)}" if run["syncing"] else "no",
        "error": error,
    }


FULL_STATUS = ("id", "tenant", "platform", "name", "status", "last sync (UTC)", "next due", "every", "mentions",
               "7-day sentiment", "refresh", "rate limit", "syncing", "error")  # fmt: skip
# What a narrow terminal shows (80 columns): the rest is one `slsync status ID` away, and errors and running syncs
# are listed under the table.
COMPACT_STATUS = ("id", "platform", "name", "status", "next due", "mentions")
RIGHT_ALIGNED = {"id", "tenant", "mentions"}
# the columns that wrap (a long name, a long error); the others are never cut
WRAPPED_STATUS = {"name", "error"}


def _status_table(docs: list[dict[str, Any]], width: int | None = None) -> tuple[Any, list[str]]:
    """The whole table if it fits `width` (its name and error wrapped), else the compact one and a line for each
    source with an error or syncing now."""
    from rich.console import Console
    from rich.table import Column, Table

    rows = [_status_cells(doc) for doc in docs]

    def table(names: Sequence[str]) -> Any:
        columns = [
            Column(
                name,
                justify="right" if name in RIGHT_ALIGNED else "left",
                no_wrap=name not in WRAPPED_STATUS,
                min_width=None if name in WRAPPED_STATUS else max(len(name), *(len(row[name]) for row in rows)),
            )
            for name in names
        ]
        grid = Table(*columns)
        for row in rows:
            grid.add_row(*(text(row[name]) for name in names))
        return grid

    # the refresh column only where a listed source has posts read again or due (a column of dashes would narrow
    # the error column, whose text must show whole)
    full = table([n for n in FULL_STATUS if n != "refresh" or any(row["refresh"] != "-" for row in rows)])
    if width is None or Console(width=10_000).measure(full).minimum <= width:
        return full, []
    notes = []
    for doc, row in zip(docs, rows, strict=True):
        s = doc["source"]
        if row["error"]:
            notes.append(f"source {s['id']}: {s['status']}: {row['error']}")
        if doc["sync"]["syncing"]:
            notes.append(f"source {s['id']}: syncing {row['syncing']}")
    return table(COMPACT_STATUS), notes


def _print_status(console: Console, docs: list[dict[str, Any]]) -> None:
    # a pipe without COLUMNS (cron's mail, a log) gets the whole table, however wide
    width = console.width if console.is_terminal or "COLUMNS" in os.environ else None
    table, notes = _status_table(docs, width)
    console.print(table)
    for line in notes:
        console.print(text(line), soft_wrap=False)


def _status_panel(doc: dict[str, Any]) -> Any:
    """One source as labelled fields in a panel: everything the table has, and what it leaves out."""
    from rich.panel import Panel
    from rich.table import Table

    s, run, connection, coverage = doc["source"], doc["sync"], doc["connection"], doc["coverage"]
    cells = _status_cells(doc)
    took = f"{run['duration_ms'] / 1000:,.1f} s" if run["duration_ms"] is not None else None
    if run["syncing"]:
        current = f"syncing {cells['syncing']} ({took} so far)"
    else:
        current = (run["last_run_status"] or "none yet") + (f" in {took}" if took else "")
    sentiment = doc["stats"]["sentiment_7d"]
    per_hour = coverage["mentions_per_hour"]
    ends = connection["reconnect_by"]
    fields = [
        ("tenant", cells["tenant"]),
        ("platform", cells["platform"]),
        ("name", cells["name"]),
        ("status", cells["status"]),
        ("connection", connection["type"] + (f", ends {_when(ends)}" if ends else "")),
        ("every", cells["every"]),
        ("last sync", _when(s["last_sync_at"])),
        ("next due", _when(s["next_sync_at"])),
        ("last run", current),
        ("mentions", cells["mentions"] + (f" (about {per_hour:,} an hour)" if per_hour is not None else "")),
        ("covered until", _when(coverage["covered_until"])),
        ("7-day sentiment", _breakdown_line(sentiment) if sentiment else "-"),
        ("read again", cells["refresh"]),
        ("rate limit", cells["rate limit"]),
        ("coverage gaps", f"{len(doc['gaps'])} open" if doc["gaps"] else "none"),
        ("error", cells["error"] or "-"),
    ]  # fmt: skip
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in fields:
        grid.add_row(label, text(value))
    return Panel(grid, title=text(f"source {s['id']}"), title_align="left", expand=False)


def _reconnect_warnings(docs: list[dict[str, Any]], now: datetime) -> list[str]:
    lines = []
    for doc in docs:
        s, ends = doc["source"], doc["connection"]["reconnect_by"]
        if ends is None or ends - now > RECONNECT_WARNING:
            continue
        what = f"source {s['id']} ({s['platform']}: {s['name']})"
        if ends <= now:
            lines.append(f"{what}: its connection ended {_when(ends)}; reconnect: slsync connect {s['id']}")
        else:
            days = (ends - now).days
            left = f"in {days} days" if days > 1 else "within 2 days"
            lines.append(
                f"{what}: its connection ends {_when(ends)} ({left}); reconnect before then: slsync connect {s['id']}"
            )
    return lines


def _gap_warnings(docs: list[dict[str, Any]]) -> list[str]:
    """One line per open coverage gap: what may be lost for good, and why."""
    from slsync.coverage import REASONS

    lines = []
    for doc in docs:
        s = doc["source"]
        for gap in doc["gaps"]:
            where = f" ({gap['stream']})" if gap["stream"] else ""
            missed = f"; about {gap['missed_estimate']:,} mentions" if gap["missed_estimate"] else ""
            lines.append(
                f"source {s['id']} ({s['platform']}: {s['name']}): coverage gap{where} from {_when(gap['from'])} "
                f"to {_when(gap['to'])}: {REASONS[gap['reason']]}{missed}"
            )
    return lines


def _quota_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "credential": row["credential_key"],
        "period": row["period"],
        "since": row["since"],
        "used": row["used"],
        "limit": row["quota"],
        "remaining": max(row["quota"] - row["used"], 0),
        "frees_at": row["frees_at"],
    }


def _quota_table(rows: list[dict[str, Any]]) -> Any:
    cells = [
        (
            row["credential"],
            "per day" if row["period"] == "day" else f"rolling {row['period']}",
            row["since"][:16],
            f"{row['used']:,}",
            f"{row['limit']:,}",
            f"{row['remaining']:,}",
            _when(row["frees_at"], short=True) if row["frees_at"] else "-",
        )
        for row in map(_quota_json, rows)
    ]
    return _table(("quota (credential)", "period", "since", "used", "limit", "remaining", "next slot frees"), cells)


@app.command()
def status(
    source_id: Optional[int] = typer.Argument(  # noqa: UP045
        None, min=1, max=MAX_SOURCE, help="One source; all sources when omitted."
    ),
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's sources."),  # noqa: UP045
    limit: Optional[int] = typer.Option(  # noqa: UP045
        None, "--limit", min=1, help="At most this many sources, in (tenant, id) order: one page."
    ),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many sources first (the next page's offset)."),
    all_rows: bool = typer.Option(
        False, "--all", help=f"Draw a row for every source, even beyond {STATUS_TABLE_ROWS} (instead of a summary)."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Show each source's state, schedule, current run, rate limit and mention count. Exit 0, or 2 if unknown.

    Beyond 200 sources the table becomes a summary: counts by platform and status, the schedule, the failing
    and erroring sources; --all draws every row, --limit and --offset a page of them. --json lists every
    source (streamed), or a page with --limit and --offset. Also warns of connections about to end (reconnect
    before then) and, unnarrowed, shows the daily and rolling quotas of the platform credentials (YouTube
    units, TikTok requests and records, Instagram hashtags).
    """
    from slsync import db

    with db.connect(_settings()) as conn:
        if source_id is not None:
            db.get_source(conn, source_id, tenant_id=tenant)
            rows = db.status_rows(conn, source_id=source_id)
            gaps = db.coverage_gaps(conn, source_ids=[source_id])
            pending = db.refresh_pending(conn, [source_id])
            doc = _status_json(rows[0], db.sentiment_breakdown(conn, [source_id]), gaps, pending)
            if as_json:
                emit_json(doc)
            else:
                _print_status_table([doc], rows[0].db_now, panel=True)
            return
        # quotas belong to credentials, which tenants may share: shown to the operator's unnarrowed view
        quotas = db.quota_usage(conn) if tenant is None else []
        total = db.count_sources(conn, tenant_id=tenant)
        listed = max(0, min(total - offset, total if limit is None else limit))
        if as_json:
            _emit_status_listing(conn, tenant, limit, offset, total, listed, quotas)
        elif not total:
            _say("no sources yet; add one: slsync source add mock --tenant 1 --name demo --keyword 'your brand'")
        elif not listed:
            _say(f"no sources after the first {offset:,} ({total:,} in all)")
        elif listed > STATUS_TABLE_ROWS and not all_rows and limit is None:
            summary = db.status_summary(conn, tenant_id=tenant, reconnect_within=RECONNECT_WARNING)
            _print_status_summary(summary, total, tenant, quotas)
        else:
            wanted = listed <= BREAKDOWN_MAX_SOURCES or tenant is not None
            for docs, now in _status_chunks(conn, tenant, limit, offset, wanted):
                _print_status_table(docs, now)
            if quotas:
                _console().print(_quota_table(quotas))


def _emit_status_listing(
    conn: Any, tenant: int | None, limit: int | None, offset: int, total: int, listed: int, quotas: list[Any]
) -> None:
    """`status --json` without an id: one JSON document, written as the sources stream in (100,000 sources
    make ~80 MB of JSON, which never sits in memory whole)."""

    wanted = listed <= BREAKDOWN_MAX_SOURCES or tenant is not None
    out = binary_stdout()
    out.write(b'{"sources":[')
    active, written = [], 0
    with _collector_paused():
        for docs, _ in _status_chunks(conn, tenant, limit, offset, wanted):
            # a chunk's list encoded at once, its brackets dropped: one call and one escaping pass a chunk
            out.write((b"," if written else b"") + json_bytes(docs)[1:-1])
            written += len(docs)
            active += [
                {"source_id": d["source"]["id"], "started_at": run["started_at"], "duration_ms": run["duration_ms"]}
                for d in docs
                if (run := d["sync"])["syncing"]
            ]
    rest: dict[str, Any] = {"active_syncs": active}
    if tenant is None:
        rest["quotas"] = [_quota_json(row) for row in quotas]
    following = offset + written if limit is not None and offset + written < total else None
    rest["paging"] = {"total": total, "offset": offset, "limit": limit, "next_offset": following}
    out.write(b"]," + json_bytes(rest)[1:] + b"\n")
    out.flush()


def _status_chunks(
    conn: Any, tenant: int | None, limit: int | None, offset: int, wanted: bool
) -> Iterator[tuple[list[dict[str, Any]], datetime]]:
    """The status documents of a listing, a chunk at a time, with the database's time.

    The sentiment breakdown reads a week of mentions per source: for thousands of sources at once that is a
    scan of the whole table, so it is left out (None) unless `wanted` (the list is narrowed). Without it
    the rows stream and no statement may run between chunks, so the coverage gaps (a table the run log's
    retention bounds) are read first, for the whole list."""
    from slsync import db

    every_gap = None if wanted else db.coverage_gaps(conn, tenant_id=tenant)
    for rows in db.stream_status(conn, tenant_id=tenant, limit=limit, offset=offset, queries_between=wanted):
        ids = [row.id for row in rows]
        breakdown = db.sentiment_breakdown(conn, ids) if wanted else None
        gaps = every_gap if every_gap is not None else db.coverage_gaps(conn, source_ids=ids, tenant_id=tenant)
        # mentions due to be read again, from the refresh index (left out of a long list, as the breakdown)
        pending = db.refresh_pending(conn, ids) if wanted else None
        yield [_status_json(row, breakdown, gaps, pending) for row in rows], rows[0].db_now


def _print_status_table(docs: list[dict[str, Any]], now: datetime, *, panel: bool = False) -> None:
    """The table (or one source's panel), then a line per connection about to end and per coverage gap."""
    console = _console()
    if panel:
        console.print(_status_panel(docs[0]))
    else:
        _print_status(console, docs)
    for line in _reconnect_warnings(docs, now) + _gap_warnings(docs):
        console.print(text(line), soft_wrap=True)


def _print_status_summary(summary: dict[str, Any], total: int, tenant: int | None, quotas: list[Any]) -> None:
    """Many sources at a glance: what a table of thousands of rows would hide."""
    console = _console()
    where = f" in tenant {tenant}" if tenant is not None else ""
    console.print(
        f"{total:,} sources{where}: {summary['due_now']:,} due now, next due {_when(summary['next_due'])},"
        f" {summary['syncing']:,} syncing, {summary['rate_limited']:,} waiting for a rate limit"
        f" (a table of every source: --all, or narrow it with --tenant; all as JSON: --json)",
        soft_wrap=True,
    )
    statuses = ("active", "connected", "failing", "error", "pending")
    by_platform: dict[str, dict[str, int]] = {}
    for row in summary["counts"]:
        by_platform.setdefault(row["platform"], {})[row["status"]] = int(row["n"])
    console.print(
        _table(
            ("platform", *statuses, "total"),
            (
                (platform, *(f"{numbers.get(s, 0):,}" for s in statuses), f"{sum(numbers.values()):,}")
                for platform, numbers in by_platform.items()
            ),
        )
    )
    troubled = summary["troubled_sources"]
    if troubled:
        shown = f"the {len(troubled)} most in need of a look" if summary["troubled"] > len(troubled) else "all"
        console.print(f"{summary['troubled']:,} sources failing or in error ({shown}):")
        rows = (
            (
                row["id"], row["tenant_id"], row["platform"], row["name"], row["status"], row["consecutive_failures"],
                "-" if row["status"] == "error" else _when(row["next_sync_at"], short=True), row["error_message"] or "",
            )
            for row in troubled
        )  # fmt: skip
        console.print(_table(("id", "tenant", "platform", "name", "status", "failures", "next try", "error"), rows))
    reconnect = summary["reconnect"]
    docs = [{"source": r, "connection": {"reconnect_by": r["reconnect_by"]}} for r in reconnect]
    for line in _reconnect_warnings(docs, summary["db_now"]):
        console.print(text(line), soft_wrap=True)
    if reconnect and reconnect[0]["total"] > len(reconnect):
        console.print(f"... and {reconnect[0]['total'] - len(reconnect):,} more connections ending within 14 days")
    if summary["gaps"]:
        console.print(
            f"{summary['gaps']:,} coverage gaps in {summary['gapped']:,} sources: mentions may be missing there"
            " (slsync status ID names a source's gaps)",
            soft_wrap=True,
        )
    if quotas:
        console.print(_quota_table(quotas))


# --- doctor ---------------------------------------------------------------------------------------


@app.command()
def doctor(
    cron: bool = typer.Option(
        False, "--cron", help="Run from the crontab line: also check that cron sees the sources, tokens and settings."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Check what the next sync needs, one line each (ok, warn or fail) with the fix. Exit 0, or 1 if any failed.

    Settings; the database (reachable, its version, the schema); per platform with sources, its credentials and
    one cheap authenticated call per credential; quotas; the token store and its permissions; connections that end
    within 14 days; sources in error; the clock against the database's; coverage gaps.
    """
    from slsync import doctor as checks

    report = checks.diagnose(_settings, cron=cron)
    if as_json:
        emit_json(report.as_json())
    else:
        _doctor_lines(report)
    if report.failed:
        raise typer.Exit(1)


def _doctor_lines(report: Any) -> None:
    from rich.text import Text

    console = _console()
    styles = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    for check in report.checks:
        line = Text(f"{check.status:<4} ", style=styles[check.status])
        line.append(visible(f"{check.name}: {check.message}"))
        if check.fix and check.status != "ok":
            line.append(visible(f"; fix: {check.fix}"), style="dim" if check.status == "warn" else None)
        console.print(line, soft_wrap=True)
    console.print(text(report.summary), soft_wrap=True)


# --- analysis and mentions ------------------------------------------------------------------------


@app.command()
def analyze(
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's mentions."),  # noqa: UP045
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Most mentions to label in this run."),  # noqa: UP045
    as_json: bool = JsonFlag,
) -> None:
    """Label new mentions with sentiment and intent (the analyzer named by SLSYNC_ANALYZER).

    Several may run at once: each takes batches the others have not locked. Prints
    {"analyzer", "analyzed", "remaining", "error"} with --json. Exit 0, 1 if the analyzer failed, 2 bad input.
    """
    from slsync import analysis, db

    settings = _settings()
    with db.connect(settings) as conn:
        report = analysis.analyze_in_lanes(settings, settings.analyzer, tenant_id=tenant, limit=limit)
        remaining = db.count_new_mentions(conn, tenant_id=tenant)
    if as_json:
        emit_json({**report.as_json(), "remaining": remaining})
    else:
        _analysis_line(report.as_json())
        _say(f"{remaining} mentions not analysed yet" if remaining else "no mentions left to analyse")
    if report.error:
        raise typer.Exit(1)


def _mention_filters(
    conn: Any, tenant: int | None, source: int | None, since: str | None, deleted: bool
) -> dict[str, Any]:
    """The filters of `mentions list` and `export`; a tenant or source that does not exist is an error (exit 2),
    not an empty answer that looks like "no mentions"."""
    from slsync import db

    if source is not None:
        db.get_source(conn, source, tenant_id=tenant)
    elif tenant is not None and not db.tenant_known(conn, tenant):
        raise NotFound(f"no tenant {tenant}: it has no sources and no mentions")
    return {"tenant_id": tenant, "source_id": source, "since": _parse_since(since), "deleted": deleted}


SinceFilter = typer.Option(None, "--since", help="Only mentions published on or after this date.")
DeletedFlag = typer.Option(
    False, "--deleted", help="Also the tombstones of posts the platform no longer shows (deleted_at set)."
)


@mentions_app.command("list")
def mentions_list(
    tenant: Optional[int] = TenantFilter,  # noqa: UP045
    source: Optional[int] = SourceFilter,  # noqa: UP045
    since: Optional[str] = SinceFilter,  # noqa: UP045
    limit: int = typer.Option(20, "--limit", min=1, max=10_000, help="How many, newest first."),
    deleted: bool = DeletedFlag,
    as_json: bool = JsonFlag,
) -> None:
    """Show the newest mentions with their sentiment and intent. {"mentions": [...]} with --json.

    Exit 0, or 2 on bad input (also an unknown tenant or source)."""
    from slsync import db

    with db.connect(_settings()) as conn:
        filters = _mention_filters(conn, tenant, source, since, deleted)
        rows = list(db.stream_mentions(conn, limit=limit, newest_first=True, **filters))
    if as_json:
        emit_json({"mentions": rows})
        return
    cells = []
    for row in rows:
        author = f"@{row['author_handle']}" if row["author_handle"] else (row["author_name"] or "-")
        sentiment = row["sentiment"] or ("new" if row["status"] == "new" else "-")
        content = " ".join((row["content"] or "").split())
        if row["deleted_at"] is not None:
            content = f"(no longer on {row['platform']} since {_when(row['deleted_at'])})"
        cells.append(
            (_when(row["published_at"]), row["platform"], author, sentiment, row["intent"] or "-", content[:120])
        )
    _console().print(_table(("published", "platform", "author", "sentiment", "intent", "content"), cells))


EXPORT_FORMATS = ("jsonl", "csv")


@mentions_app.command("export")
def mentions_export(
    format: str = typer.Option("jsonl", "--format", help="jsonl (one JSON object a line) or csv."),  # noqa: A002
    tenant: Optional[int] = TenantFilter,  # noqa: UP045
    source: Optional[int] = SourceFilter,  # noqa: UP045
    since: Optional[str] = SinceFilter,  # noqa: UP045
    output: Optional[str] = typer.Option(  # noqa: UP045
        None, "--output", help="Write to this file (replaced only when the export succeeded) instead of stdout."
    ),
    metadata: Optional[Path] = typer.Option(  # noqa: UP045
        None, "--metadata", help="Also write a JSON document of the export: its filters, count and coverage gaps."
    ),
    deleted: bool = DeletedFlag,
) -> None:
    """Write mentions, oldest first, as JSON lines or CSV; streamed, so any number of rows needs little memory.

    JSON lines hold the exact data. CSV is for spreadsheets: a cell that a spreadsheet would run as a formula
    (starting with = + - @, a tab or a carriage return) starts with ' instead, and control characters other
    than line breaks are written as escapes (\\x1b). The exported sources' open coverage gaps (stretches no
    sync could read, so mentions may be missing) are named on stderr and listed in the --metadata document.

    Exit 0; 1 if writing failed (a full disk); 2 on bad input (an unknown tenant or source, a path that
    cannot be written).
    """
    chosen = format.strip().lower()
    if chosen not in EXPORT_FORMATS:
        raise UsageError(f"--format {format!r}: expected jsonl or csv")
    path = _output_path(output)
    from slsync import db

    with db.connect(_settings()) as conn:
        filters = _mention_filters(conn, tenant, source, since, deleted)
        # the file is replaced only after the last row; the rows close before the connection, whose
        # transaction must end first, also when the reader goes away
        with _export_target(path) as target, closing(db.stream_mentions(conn, **filters)) as rows:
            count = _write_mentions(rows, chosen, target, db.MENTION_COLUMNS)
        gaps = _export_gaps(conn, filters)
    if path is not None:
        _say(f"wrote {counted(count, 'mention')} to {path}", file=sys.stderr)
    if gaps:
        where = f"; listed in {metadata}" if metadata else "; --metadata FILE lists them"
        _say(f"note: {len(gaps)} coverage gaps in the exported sources: mentions may be missing there{where}",
             file=sys.stderr)  # fmt: skip
    if metadata:
        doc = {"exported_at": datetime.now(UTC), "format": chosen, "mentions": count,
               "filters": {"tenant": tenant, "source": source, "since": filters["since"]}, "gaps": gaps}  # fmt: skip
        metadata.write_text(json.dumps(doc, default=_json_default, ensure_ascii=False, indent=2) + "\n", "utf-8")


def _export_gaps(conn: Any, filters: dict[str, Any]) -> list[dict[str, Any]]:
    """The open coverage gaps of the exported sources that reach into the exported period."""
    from slsync import db
    from slsync.coverage import gap_json

    ids = [filters["source_id"]] if filters["source_id"] is not None else None
    since = filters["since"]
    return [
        {"source_id": source_id, **gap_json(gap)}
        for source_id, gaps in db.coverage_gaps(conn, source_ids=ids, tenant_id=filters["tenant_id"]).items()
        for gap in gaps
        if since is None or gap["to_at"] >= since
    ]


def _output_path(value: str | None) -> Path | None:
    """--output as a path a file can be written to, or a usage error naming it."""
    if value is None:
        return None
    if not value.strip():
        raise UsageError("--output needs a file path")
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"--output {value}: is a directory; name a file in it")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"--output {value}: the directory {parent} does not exist")
    return path


@contextmanager
def _export_target(path: Path | None) -> Iterator[Any]:
    """Where the rows go, as bytes: stdout, or a temporary file beside `path` renamed over it only once every
    row is written (a failed export leaves the old file as it was). A link to a file: the file it leads to is
    replaced, the link stays. A device, a pipe, or a file this process holds open (/dev/stdout, a FIFO,
    /proc/self/fd/1) cannot be renamed over and is appended to where it stands."""
    if path is None:
        out = binary_stdout()
        yield out
        out.flush()
        return
    import os
    import stat
    import tempfile

    held_open = _leads_into_proc(path)
    if not held_open and path.is_symlink():
        path = path.resolve()
    try:
        existing = path.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise UsageError(f"--output {path}: {exc.strerror}") from None
    try:
        if held_open or (existing is not None and not stat.S_ISREG(existing.st_mode)):
            # appended: a file the shell opened with >> keeps what it had (a pipe or a device knows no end)
            with _writing(path), path.open("ab") as stream:
                yield stream
            return
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except (PermissionError, FileNotFoundError) as exc:
        raise UsageError(f"--output {path}: {exc.strerror}") from None
    try:
        # a new file gets the usual mode (the umask's); a replaced one keeps its own
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~umask)
        with _writing(path), os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def _leads_into_proc(path: Path) -> bool:
    """Whether `path` is in /proc or a link leading there (/dev/stdout -> /proc/self/fd/1): a file this process
    holds open. Renamed over, the link itself would be replaced (as root, /dev/stdout for every process)."""
    import os

    current = Path(os.path.abspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        if current.parts[1:2] == ("proc",):
            return True
        if not current.is_symlink():
            return False
        current = Path(os.path.abspath(current.parent / os.readlink(current)))
    return False


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A failed write (a full disk, an I/O error) as one line naming the file: exit 1. A reader that went
    away (`--output /dev/stdout | head`) ends the command as on stdout: exit 1, no line (click's way)."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        if isinstance(exc, PermissionError):
            raise UsageError(f"--output {path}: {exc.strerror}") from None
        raise SlsyncError(f"could not write {path}: {exc.strerror or exc}") from None


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_START = frozenset("=+-@\t\r")


def _csv_cells(row: dict[str, Any], columns: Sequence[str]) -> list[Any]:
    """A row's cells, in the order of `columns`, as a spreadsheet may safely open them: never a formula.
    Control characters are escaped afterwards, in the written text (_write_mentions): an escape is
    printable ASCII without a comma or a quote, so it changes no cell's quoting."""
    cells = []
    for column in columns:
        value = row[column]
        if value.__class__ is str:  # most cells, at one test each: 2,000,000 rows make 54,000,000 cells
            if value[:1] in _FORMULA_START:
                value = "'" + value
        elif isinstance(value, datetime):
            value = _json_default(value)
        elif isinstance(value, (list, tuple, str)):  # a list, or text of a str subclass
            value = value if isinstance(value, str) else " ".join(map(str, value))
            if value[:1] in _FORMULA_START:
                value = "'" + value
        cells.append(value)
    return cells


@mentions_app.command("forget")
def mentions_forget(
    platform: str = typer.Option(..., "--platform", help="The platform the author posts on (see slsync platforms)."),
    author: str = typer.Option(
        ..., "--author", help="The author's handle as stored (author_handle), with or without @."
    ),
    tenant: Optional[int] = typer.Option(  # noqa: UP045
        None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's mentions (default: all)."
    ),
    as_json: bool = JsonFlag,
) -> None:
    """Erase every stored mention by one author (a person's request under GDPR article 17) and record it.

    Deletes the author's mentions on the platform, in one tenant or all, prints what it deleted, and records
    who ran it (user@host), when, the platform, the tenant and how many went in sl_erasures: never the content,
    and a digest of the handle rather than the handle. Posts the author still has public may be stored again
    by a later sync. Prints {"erasure_id", "deleted", "by_tenant", "mentions", ...} with --json. Exit 0; 2 on
    bad input.
    """
    from slsync import db, retention
    from slsync.connectors import platform as known_platform

    known_platform(platform)
    with db.connect(_settings()) as conn:
        done = retention.forget(conn, platform=platform, handle=author, tenant_id=tenant)
    if as_json:
        emit_json(done)
        return
    from slsync.auth import one_line

    for mention in done["mentions"]:
        _say(f"deleted: tenant {mention['tenant_id']}, {platform} post {one_line(mention['external_id'])}")
    tenants = ", ".join(f"tenant {t['tenant_id']}: {t['deleted']}" for t in done["by_tenant"])
    _say(
        f"deleted {counted(done['deleted'], 'mention')} by {one_line(retention.normal_handle(author))} on {platform}"
        + (f" ({tenants})" if tenants else "")
        + f"; recorded as erasure {done['erasure_id']}"
    )


# Rows encoded and written at once: ~70 KB, under the size from which malloc maps fresh pages for every
# buffer (2,000-row chunks spent 6 s more in the kernel over 2,000,000 rows).
EXPORT_CHUNK = 100


def _write_mentions(rows: Iterator[dict[str, Any]], format: str, target: Any, columns: Sequence[str]) -> int:  # noqa: A002
    """Rows to a binary target, a chunk at a time, as JSON lines or CSV; how many."""
    import csv
    import io
    import itertools

    text = io.StringIO(newline="")
    writer = csv.writer(text)

    def csv_lines(chunk: list[dict[str, Any]]) -> bytes:
        writer.writerows([_csv_cells(row, columns) for row in chunk])
        written = visible(text.getvalue(), keep_line_breaks=True).encode()
        text.seek(0)
        text.truncate()
        return written

    encoded = csv_lines if format == "csv" else json_lines
    if format == "csv":
        writer.writerow(columns)
        target.write(csv_lines([]))  # the header, also above no rows
    count = 0
    while chunk := list(itertools.islice(rows, EXPORT_CHUNK)):
        target.write(encoded(chunk))
        count += len(chunk)
    target.flush()
    return count


# --- report -----------------------------------------------------------------------------------------


@app.command()
def report(
    output: Path = typer.Option(..., "--output", help="The HTML file to write (e.g. report.html)."),
    tenant: Optional[int] = typer.Option(  # noqa: UP045
        None, "--tenant", min=0, max=MAX_TENANT, help="Only this tenant's mentions and sources."
    ),
    since: Optional[str] = typer.Option(  # noqa: UP045
        None, "--since", help="Mentions published on or after this date (default: the last 30 days)."
    ),
) -> None:
    """Write one self-contained HTML page to look at: mentions per day and platform, sentiment over time, intents,
    top authors by reach, the most engaged mentions and the sources' health. Exit 0, or 2 on bad input.

    The page needs no network to open (its charts are SVG, nothing is loaded from anywhere) and stays under 5 MB.
    """
    import tempfile

    from slsync import db
    from slsync import report as page

    start = _parse_since(since)
    with db.connect(_settings()) as conn:
        if start is not None and start > db.database_clock(conn):
            raise UsageError("--since is in the future")
        html = page.build(conn, tenant_id=tenant, since=start)
    # a temporary file beside the target, renamed once whole: a reader never opens half a page
    target = output.expanduser()
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as exc:
        raise UsageError(f"--output {output}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(html)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _say(f"wrote {target} ({len(html.encode('utf-8')) / 1024:,.0f} KB)", file=sys.stderr)


# --- development data -----------------------------------------------------------------------------


def _refuse_in_production(command: str) -> None:
    if _settings().is_production:
        raise UsageError(f"slsync {command} is refused when SLSYNC_ENV=production: it writes made-up mentions")


@app.command()
def mock(
    source_id: int = typer.Argument(..., min=1, max=MAX_SOURCE, help="The source to fill."),
    count: int = typer.Option(20, "--count", min=1, max=100_000, help="How many mentions to generate."),
    as_json: bool = JsonFlag,
) -> None:
    """Insert COUNT random mentions for a source (development data; refused in production). Exit 0, or 2."""
    _refuse_in_production("mock")
    from slsync import db
    from slsync.connectors.mock import generate, search_term
    from slsync.sync import save_mentions, utcnow

    with db.connect(_settings()) as conn:
        source = db.get_source(conn, source_id)
        mentions = generate(source.platform, source.id, search_term(source.config), count, utcnow())
        saved = save_mentions(conn, source, mentions)
    if as_json:
        emit_json({"generated": count, "saved": saved})
    else:
        _say(f"generated {count} mentions for source {source_id}, saved {saved}")


DEMO_TENANT = 0
DEMO_SOURCE = "Demo: Acme Coffee"


@app.command()
def demo() -> None:
    """Create a demo tenant (0) with a mock source if absent, sync it, and print the status table."""
    _refuse_in_production("demo")
    from slsync import db, sync
    from slsync.connectors.mock import MockConnector

    settings = _settings()
    where = "SLSYNC_DATABASE_URL" if settings.database_url else f"embedded PostgreSQL in {settings.data_dir / 'pgdata'}"
    _say(f"database: {where}")
    with db.connect(settings) as conn:
        source = db.find_source(conn, tenant_id=DEMO_TENANT, platform="mock", name=DEMO_SOURCE)
        if source is None:
            config = MockConnector.build_config({"keywords": ["Acme Coffee"], "hashtags": ["acmecoffee"]}, {})
            source_id = db.add_source(
                conn,
                tenant_id=DEMO_TENANT,
                platform="mock",
                name=DEMO_SOURCE,
                connection_type="none",
                config=config,
                interval_minutes=15,
            )
            _say(f"created tenant {DEMO_TENANT} with mock source {source_id} ({DEMO_SOURCE!r})")
        else:
            source_id = source.id
        with _syncing(True) as (progress, stop):
            deadline = time.monotonic() + settings.time_budget_seconds
            options = sync.RunOptions("manual", progress=progress, deadline=deadline, stop=stop)
            if progress:
                progress.planned(1)
            result = sync.run_source(conn, settings, source_id, options)  # analyses what it saved
        _say(_result_line(result))
        _analysis_line(result.extra.get("analysis"))
        if result.stopped_by is not None:
            raise result.stopped_by
        rows = db.status_rows(conn, tenant_id=DEMO_TENANT)
        breakdown = db.sentiment_breakdown(conn, [row.id for row in rows])
    docs = [_status_json(row, breakdown) for row in rows]
    _print_status(_console(), docs)
    for doc in docs:
        _say(f"sentiment of the last 7 days, {doc['source']['name']}: {_breakdown_line(doc['stats']['sentiment_7d'])}")
    _say(f"next: slsync status {source_id} --json   |   slsync sync due   |   slsync source add --help")
    if not result.success:
        raise typer.Exit(1)
