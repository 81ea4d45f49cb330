"""Coverage: whether a sync can still read back to where the last finished one began, how often a source
on an automatic interval is synced, and which due sources go first when a credential cannot pay for all.

Pure functions over times and numbers; the sync engine feeds them what the database and the connectors
say (a platform's reach and listing cap are declared on its connector).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slsync.models import Gap

# Why a stretch could not be read (sl_coverage_gaps.reason):
REASONS = {
    "cap": "the platform's listing ended before the last sync's bound",
    "failing": "the source was failing until the platform's reach had passed",
    "rate_limited": "the source was rate limited until the platform's reach had passed",
    "quota": "a daily quota held the source back until the platform's reach had passed",
    "cut_short": "a run cut short was not continued before the platform's reach had passed",
    "not_synced": "no sync ran before the platform's reach had passed",
}

# --- automatic intervals ------------------------------------------------------------------------------

# An auto source is synced about as often as this many new mentions gather: a sync that finds fewer
# spends a call for little, one that finds many more leaves them waiting. It is far below every
# listing cap (Reddit's 1,000): a tenfold rise between two syncs still fits.
TARGET_MENTIONS = 20
# ... and never so rarely that more than half its platform's reach passes between two syncs (room for
# a failed run before anything is out of reach).
REACH_SHARE = 0.5
# A source whose minimum interval lets more than this share of its listing cap gather between two
# syncs is said to be at risk (the cap would cut a sync short: lower --min-interval).
CAP_SHARE = 0.5
# An interval at most doubles from one sync to the next: a quiet source drifts to its maximum.
GROWTH = 2.0
# The smoothed rate remembers about this much of what earlier syncs saw: a sync that covered as long
# counts half, a longer one more (a quiet source's rare syncs each speak for themselves).
MEMORY_MINUTES = 60.0
# A first rate is measured over at least this long: one post in the first minute is not 60 an hour.
MIN_WINDOW_MINUTES = 15.0
# Defaults of `source add --interval auto`.
DEFAULT_MIN_INTERVAL = 15
DEFAULT_MAX_INTERVAL = 360


def smoothed_rate(previous: float | None, new_mentions: float, covered: timedelta) -> float:
    """New mentions a minute after a sync that found `new_mentions` over the stretch `covered`: the earlier
    rate counts as MEMORY_MINUTES of observation beside this one (time-weighted, so unbiased on a steady
    source, and a rise shows within a sync or two)."""
    minutes = max(covered.total_seconds() / 60, 0.0)
    if previous is None:
        return max(new_mentions, 0.0) / max(minutes, MIN_WINDOW_MINUTES)
    return (max(new_mentions, 0.0) + previous * MEMORY_MINUTES) / (minutes + MEMORY_MINUTES)


def next_interval(
    *,
    current: int,
    rate: float,
    lowest: int,
    highest: int,
    reach: timedelta | None = None,
    cut_by_cap: bool = False,
) -> int:
    """Minutes to the next sync of an auto source, from its smoothed rate of new mentions a minute."""
    minutes = TARGET_MENTIONS / rate if rate > 0 else math.inf
    if reach is not None:
        minutes = min(minutes, REACH_SHARE * reach.total_seconds() / 60)
    minutes = min(minutes, GROWTH * current)
    if cut_by_cap:  # the rate seen is what the cap let through: the real one was higher
        minutes = min(minutes, current / 2)
    return int(min(max(round(minutes), lowest), highest))


# --- coverage gaps ------------------------------------------------------------------------------------


def estimate(rate: float | None, span: timedelta) -> int | None:
    """How many mentions a stretch may hold at a rate of new mentions a minute (None: no rate known)."""
    if rate is None:
        return None
    return max(round(rate * span.total_seconds() / 60), 0)


def gap_json(gap: Gap | dict[str, Any]) -> dict[str, Any]:
    """A gap as `status --json`, `sync --json` and the export's metadata show it."""
    if isinstance(gap, Gap):
        gap = {"from_at": gap.start, "to_at": gap.end, "reason": gap.reason, "missed_estimate": gap.missed_estimate,
               "stream": gap.stream}  # fmt: skip
    return {"from": gap["from_at"], "to": gap["to_at"], "reason": gap["reason"],
            "missed_estimate": gap["missed_estimate"], "stream": gap["stream"] or None}  # fmt: skip


def reach_gap(
    covered_until: datetime | None, now: datetime, reach: timedelta | None, reason: str | None, rate: float | None
) -> Gap | None:
    """The stretch a sync starting `now` cannot read any more: from where the last finished sync began to
    the oldest moment the platform still serves. None when the source is within reach (or never synced)."""
    if reach is None or covered_until is None:
        return None
    floor = now - reach
    if covered_until >= floor:
        return None
    why = reason if reason in REASONS else "not_synced"
    return Gap(covered_until, floor, why, estimate(rate, floor - covered_until))


# --- priority under a scarce budget ---------------------------------------------------------------------


def risk(
    now: datetime, covered_until: datetime | None, reach: timedelta | None, rate: float | None, cap: int | None
) -> float:
    """How close a source is to losing mentions: the share of its platform's reach already behind it, or of
    its listing cap already waiting for it, whichever is larger (1 or more: a gap opens). A source never
    synced has nothing to lose yet: 0."""
    if covered_until is None:
        return 0.0
    behind = max(now - covered_until, timedelta(0))
    shares = [0.0]
    if reach is not None and reach > timedelta(0):
        shares.append(behind / reach)
    if cap and rate:
        shares.append(rate * behind.total_seconds() / 60 / cap)
    return max(shares)


@dataclass(frozen=True)
class Budget:
    """What one credential can still spend now: `left` units, described for the operator."""

    key: str
    left: int
    unit: str  # "calls", "units", "requests"
    what: str  # "X rate limit of this credential: 12 calls left until 10:15 UTC"


@dataclass(frozen=True)
class Candidate:
    source_id: int
    cost: int  # the run's expected spend in its budget's units
    risk: float
    rate: float
    budget: Budget | None  # None: nothing known limits it


@dataclass(frozen=True)
class Deferral:
    source_id: int
    budget: Budget
    message: str


def plan(candidates: Sequence[Candidate]) -> tuple[list[int], list[Deferral]]:
    """The order in which to run the due sources, and those to leave for a later run.

    Where every credential can pay for its sources, nothing changes (the claim's order). Where one cannot,
    every source runs in order of risk (then volume) and that credential's budget goes to the sources
    most at risk first; those it cannot pay for are deferred, each with the reason."""
    demand: dict[str, int] = {}
    for c in candidates:
        if c.budget is not None:
            demand[c.budget.key] = demand.get(c.budget.key, 0) + c.cost
    short = {c.budget.key: c.budget for c in candidates if c.budget and demand[c.budget.key] > c.budget.left}
    if not short:
        return [c.source_id for c in candidates], []
    ranked = sorted(candidates, key=lambda c: (-c.risk, -c.rate))
    left = {key: budget.left for key, budget in short.items()}
    admitted: list[Candidate] = []
    refused: list[Candidate] = []
    for c in ranked:
        key = c.budget.key if c.budget else None
        if key not in left:
            admitted.append(c)
        elif c.cost <= left[key]:
            left[key] -= c.cost
            admitted.append(c)
        else:
            refused.append(c)
    deferrals = []
    for c in refused:
        assert c.budget is not None
        sharing = [x for x in candidates if x.budget and x.budget.key == c.budget.key]
        paid = sum(1 for x in admitted if x.budget and x.budget.key == c.budget.key)
        unit = c.budget.unit.removesuffix("s") if c.cost == 1 else c.budget.unit
        deferrals.append(
            Deferral(
                c.source_id,
                c.budget,
                f"{c.budget.what}, enough for {paid} of the {len(sharing)} due sources that use it; those nearest "
                f"their platform's reach or cap went first (this one needs about {c.cost:,} {unit} and is "
                f"{c.risk:.0%} of the way to a gap); it stays due",
            )
        )
    return [c.source_id for c in admitted], deferrals
