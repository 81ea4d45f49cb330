"""The embedded PostgreSQL (pgserver), used when SLSYNC_DATABASE_URL is unset.

pgserver keeps one server per data directory and counts the processes using it under an
inter-process lock: two cron runs on one directory share a single server, and the last process
to exit stops it. Data lives in SLSYNC_DATA_DIR/pgdata and survives between runs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from slsync.errors import DatabaseUnavailable

_servers: dict[Path, object] = {}


def database_url(data_dir: Path) -> str:
    """Start (or join) the server for data_dir and return a URL to its unix socket."""
    pgdata = (data_dir / "pgdata").expanduser().resolve()
    server = _servers.get(pgdata)
    if server is None:
        try:
            pgdata.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot create the data directory {pgdata.parent}: {exc.strerror}") from None
        # pgserver logs the whole server log at ERROR on a failed start and platformdirs warns about
        # XDG_RUNTIME_DIR at import: neither belongs on a user's terminal or in a cron mail.
        logging.getLogger("pgserver").propagate = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import fasteners
            import pgserver

            # pgserver serializes start and stop under a lock file in the user's runtime dir, which a
            # login shell and cron resolve differently (XDG_RUNTIME_DIR is unset under cron). Keep the
            # lock beside the data so every process on this directory takes the same one.
            pgserver.PostgresServer._lock = fasteners.InterProcessLock(str(pgdata.parent / "pgserver.lock"))
            try:
                server = pgserver.get_server(pgdata, cleanup_mode="stop")
            except Exception as exc:  # pgserver raises bare subprocess/assertion errors
                raise DatabaseUnavailable(
                    f"could not start the embedded PostgreSQL in {pgdata} ({type(exc).__name__}); "
                    f"its log is {pgdata / 'log'}"
                ) from exc
        _servers[pgdata] = server
    return server.get_uri()  # type: ignore[attr-defined]
