"""What the store keeps, and for how long: mentions and raw payloads past their retention, an author's mentions
erased on request.

Retention (SLSYNC_RETENTION_DAYS: mentions published longer ago are deleted; SLSYNC_RAW_RETENTION_DAYS: raw
payloads of mentions fetched longer ago are dropped, their normalized columns kept) runs in batches of BATCH rows,
each one short statement that commits on its own: a million old mentions go while syncs go on writing, and no
statement holds a lock on sl_mentions for long (benchmarks/retention.py measures it). `sync due` does a bounded
piece of it every run, after its syncs; `slsync prune` does all of it at once.

Erasure (`slsync mentions forget`) deletes every mention by one author on one platform, a person's request under
GDPR article 17, and records who asked, when and how many went in sl_erasures: never the content, and not the
handle either, but its digest, which answers "was this person's data erased?" when computed again.
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from slsync import db
from slsync.config import Settings
from slsync.errors import UsageError

log = logging.getLogger("slsync.retention")

# Rows a statement deletes or clears: each statement takes well under a second (benchmarks/retention.py).
BATCH = 5000
# Statements `sync due` spends on retention each run: a bounded piece (100,000 rows) that still outpaces a
# store growing by a million mentions a day at a run every 15 minutes.
SYNC_DUE_BATCHES = 20
# An empty batch of old mentions while some are left means another transaction holds them all (an analyzer
# labelling them): wait this long and try again, up to HELD_TRIES times, before leaving them for a later run.
HELD_PAUSE = 0.2
HELD_TRIES = 25


@dataclass
class Pruned:
    mentions_deleted: int = 0
    raw_dropped: int = 0
    batches: int = 0
    # False when the run stopped (its batches, its time) with more left to do
    done: bool = True

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def prune(
    conn: db.Connection,
    settings: Settings,
    *,
    batches: int | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> Pruned:
    """Delete the mentions and drop the raw payloads past their retention, BATCH rows a statement, until none is
    left, `batches` statements were made, the deadline passed or `stop` was set."""
    result = Pruned()
    # (what a step counts, one statement of it, whether a count means nothing is left): a batch of old mentions
    # skips the rows another transaction holds (an analyzer labelling them), so only an empty one means done;
    # a batch of payloads stops where the younger ones begin
    steps: list[tuple[str, Callable[[], int], Callable[[int], bool]]] = []
    if (days := settings.retention_days) is not None:
        steps.append((
            "mentions_deleted", lambda: db.delete_old_mentions(conn, days=days, limit=BATCH),
            lambda count: count == 0 and not db.old_mentions_left(conn, days=days),
        ))  # fmt: skip
    if (raw_days := settings.raw_retention_days) is not None:
        steps.append(("raw_dropped", lambda: db.drop_old_raw(conn, days=raw_days, limit=BATCH), _short))
    for counter, step, finished in steps:
        held = 0
        while True:
            if (
                (batches is not None and result.batches >= batches)
                or (stop is not None and stop.is_set())
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                result.done = False
                return result
            count = step()
            result.batches += 1
            setattr(result, counter, getattr(result, counter) + count)
            if finished(count):
                break
            if count == 0:  # what is left is held by another transaction
                held += 1
                if held > HELD_TRIES:
                    result.done = False
                    return result
                time.sleep(HELD_PAUSE)
    if result.mentions_deleted or result.raw_dropped:
        log.info(
            "retention: %d mentions deleted, %d raw payloads dropped",
            result.mentions_deleted, result.raw_dropped, extra={"event": "pruned", **result.as_json()},
        )  # fmt: skip
    return result


def _short(count: int) -> bool:
    return count < BATCH


def author_digest(platform: str, handle: str) -> str:
    """What sl_erasures keeps of an author: sha256 of "platform:handle" (handle in lower case, without @)."""
    return hashlib.sha256(f"{platform}:{normal_handle(handle)}".encode()).hexdigest()


def normal_handle(handle: str) -> str:
    return handle.strip().removeprefix("@").strip().lower()


def requester() -> str:
    """Who asks: the operating-system user and host running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        user = f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def forget(conn: db.Connection, *, platform: str, handle: str, tenant_id: int | None = None) -> dict[str, Any]:
    """Erase every mention by `handle` on `platform` (in one tenant, or all) and record the request."""
    name = normal_handle(handle)
    if not name:
        raise UsageError("--author needs a handle, such as --author @someone")
    done = db.forget_author(
        conn, platform=platform, handle=name, tenant_id=tenant_id, requested_by=requester(),
        author_digest=author_digest(platform, name),
    )  # fmt: skip
    by_tenant: dict[int, int] = {}
    for row in done["deleted"]:
        by_tenant[row["tenant_id"]] = by_tenant.get(row["tenant_id"], 0) + 1
    log.info(
        "erased %d mentions of one %s author (erasure %s)", len(done["deleted"]), platform, done["erasure_id"],
        extra={"event": "erased"},
    )  # fmt: skip
    return {
        "erasure_id": done["erasure_id"],
        "requested_at": done["requested_at"],
        "platform": platform,
        "tenant_id": tenant_id,
        "deleted": len(done["deleted"]),
        "by_tenant": [{"tenant_id": t, "deleted": n} for t, n in sorted(by_tenant.items())],
        "mentions": [
            {"tenant_id": r["tenant_id"], "source_id": r["source_id"], "external_id": r["external_id"]}
            for r in done["deleted"]
        ],
    }
