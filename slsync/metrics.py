"""Prometheus metrics after every command (SLSYNC_METRICS_FILE), in the text format node_exporter's textfile
collector reads: written whole to a temporary file beside the target and renamed over it, so a scrape never
sees half a file.

Per source: its state, last success, last finished run (mentions saved, duration, outcome), mentions stored,
failures in a row, the rate limit the platform last reported, coverage gaps and the next sync. Per quota
ledger: what is left. Per command: its exit code, duration and when it ran; for a sync command, its outcome
counts. Each file holds every command's latest series: those of the other commands are carried over from the
file before (read back with prometheus_client's parser), under a lock so that two commands ending together
do not lose each other's. When the database cannot be read, the sources' series of the file before stay, and
slsync_database_up says 0.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slsync import db
from slsync.errors import SlsyncError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from slsync.config import Settings

log = logging.getLogger("slsync.metrics")

SOURCE_LABELS = ("source", "tenant", "platform")
# name -> (help, label names beyond the source's)
SOURCE_GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "slsync_source_status": (
        "1 for the source's current status (active, connected, failing, error, pending).",
        ("status",),
    ),
    "slsync_source_last_success_timestamp_seconds": ("When the source last synced successfully.", ()),
    "slsync_source_last_run_timestamp_seconds": ("When the source's last finished run ended.", ()),
    "slsync_source_last_run_success": ("1 if the source's last finished run succeeded, else 0.", ()),
    "slsync_source_last_run_mentions_saved": ("New mentions saved by the source's last finished run.", ()),
    "slsync_source_last_run_duration_seconds": ("How long the source's last finished run took.", ()),
    "slsync_source_mentions": ("Mentions stored for the source.", ()),
    "slsync_source_consecutive_failures": ("Failed runs in a row (0 after a success).", ()),
    "slsync_source_rate_limit_remaining": ("Calls left in the rate-limit window the platform last reported.", ()),
    "slsync_source_rate_limit_reset_timestamp_seconds": ("When that rate-limit window resets.", ()),
    "slsync_source_coverage_gaps": ("Coverage gaps kept for the source (stretches no sync could read).", ()),
    "slsync_source_next_sync_timestamp_seconds": ("When the source is due next.", ()),
}
QUOTA_GAUGES = {
    "slsync_quota_remaining": "Units, requests or items left of a credential's quota in its current period.",
    "slsync_quota_limit": "The size of that quota.",
}
COMMAND_GAUGES = {
    "slsync_command_exit_code": "The exit code of the command's last run (0 ok, 1 failed, 2 usage or configuration).",
    "slsync_command_duration_seconds": "How long the command's last run took.",
    "slsync_command_last_run_timestamp_seconds": "When the command last ended.",
}
SYNC_GAUGES = {
    "slsync_sync_sources": "Sources of the sync command's last run, by outcome (synced, failed, cut_short, skipped).",
    "slsync_sync_mentions_saved": "New mentions saved by the sync command's last run.",
}
OUTCOMES = ("synced", "failed", "cut_short", "skipped", "claimed")


def write(
    settings: Settings, path: Path, *, command: str, exit_code: int, duration: float, result: Mapping[str, Any] | None
) -> None:
    """Rewrite the metrics file for a command that just ended; `result` is its JSON result where it has one."""
    import fasteners
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with fasteners.InterProcessLock(str(path.with_name(f".{path.name}.lock"))):
        before = _read(path)
        registry = CollectorRegistry()
        database_up = Gauge("slsync_database_up", "1 if the last command could read the database.", registry=registry)
        try:
            with db.connect(settings, migrate_schema=False) as conn:
                sources, quotas = db.metrics_rows(conn), db.quota_usage(conn)
        except (SlsyncError, OSError) as exc:
            log.warning("metrics: the database could not be read (%s); the sources' metrics are those of before", exc)
            database_up.set(0)
            _carry(registry, before, lambda name, labels: name.startswith(("slsync_source_", "slsync_quota_")))
        else:
            database_up.set(1)
            _sources(registry, sources)
            _quotas(registry, quotas)
        now = time.time()
        commands = {name: Gauge(name, text, ["command"], registry=registry) for name, text in COMMAND_GAUGES.items()}
        commands["slsync_command_exit_code"].labels(command).set(exit_code)
        commands["slsync_command_duration_seconds"].labels(command).set(round(duration, 3))
        commands["slsync_command_last_run_timestamp_seconds"].labels(command).set(round(now, 3))
        syncs = {
            "slsync_sync_sources": Gauge("slsync_sync_sources", SYNC_GAUGES["slsync_sync_sources"],
                                         ["command", "outcome"], registry=registry),
            "slsync_sync_mentions_saved": Gauge("slsync_sync_mentions_saved", SYNC_GAUGES["slsync_sync_mentions_saved"],
                                                ["command"], registry=registry),
        }  # fmt: skip
        if result is not None and "sources_claimed" in result:
            for outcome in OUTCOMES:
                syncs["slsync_sync_sources"].labels(command, outcome).set(result[f"sources_{outcome}"])
            syncs["slsync_sync_mentions_saved"].labels(command).set(result["total_mentions_saved"])
        # the other commands' latest series, as the file before had them
        for name, gauge in {**commands, **syncs}.items():
            for labels, value in before.get(name, []):
                if labels.get("command") != command:
                    gauge.labels(**labels).set(value)
        write_to_textfile(str(path), registry)


def _sources(registry: CollectorRegistry, rows: Iterable[Mapping[str, Any]]) -> None:
    from prometheus_client import Gauge

    gauges = {
        name: Gauge(name, text, [*SOURCE_LABELS, *extra], registry=registry)
        for name, (text, extra) in SOURCE_GAUGES.items()
    }
    for row in rows:
        labels = (str(row["id"]), str(row["tenant_id"]), row["platform"])
        run = row["run_status"] is not None
        values = {
            "slsync_source_last_success_timestamp_seconds": _seconds(row["last_sync_at"]),
            "slsync_source_last_run_timestamp_seconds": _seconds(row["run_finished_at"]),
            "slsync_source_last_run_success": (1 if row["run_status"] == "success" else 0) if run else None,
            "slsync_source_last_run_mentions_saved": row["run_saved"] if run else None,
            "slsync_source_last_run_duration_seconds": row["run_seconds"] if run else None,
            "slsync_source_mentions": row["mentions_count"],
            "slsync_source_consecutive_failures": row["consecutive_failures"],
            "slsync_source_rate_limit_remaining": row["rate_limit_remaining"],
            "slsync_source_rate_limit_reset_timestamp_seconds": _seconds(row["rate_limit_reset_at"]),
            "slsync_source_coverage_gaps": row["gaps"],
            "slsync_source_next_sync_timestamp_seconds": _seconds(row["next_sync_at"]),
        }
        gauges["slsync_source_status"].labels(*labels, row["status"]).set(1)
        for name, value in values.items():
            if value is not None:  # unknown is left out, not 0
                gauges[name].labels(*labels).set(value)


def _quotas(registry: CollectorRegistry, rows: Iterable[Mapping[str, Any]]) -> None:
    from prometheus_client import Gauge

    remaining, limit = (
        Gauge(name, text, ["credential", "period"], registry=registry) for name, text in QUOTA_GAUGES.items()
    )
    for row in rows:
        labels = (row["credential_key"], str(row["period"]))
        remaining.labels(*labels).set(max(row["quota"] - row["used"], 0))
        limit.labels(*labels).set(row["quota"])


def _seconds(moment: Any) -> float | None:
    return round(moment.timestamp(), 3) if moment is not None else None


def _read(path: Path) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of the file before, by metric name; nothing when there is none or it cannot be parsed."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not math.isnan(sample.value):
                    samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except ValueError:
        log.warning("metrics: %s could not be parsed; it is written afresh", path)
        return {}
    return samples


def _carry(registry: CollectorRegistry, before: Mapping[str, list[tuple[dict[str, str], float]]], keep: Any) -> None:
    """The series of the file before whose names `keep` accepts, as they were."""
    from prometheus_client import Gauge

    helps = {**{k: v[0] for k, v in SOURCE_GAUGES.items()}, **QUOTA_GAUGES}
    for name, samples in before.items():
        if not keep(name, None) or not samples or name not in helps:
            continue
        gauge = Gauge(name, helps[name], sorted(samples[0][0]), registry=registry)
        for labels, value in samples:
            gauge.labels(**labels).set(value)
