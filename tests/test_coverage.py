"""Coverage gaps, intervals that follow volume and priority under scarce quota, played through the CLI
against the stand-ins on a simulated clock (tests/sim.py: the CLI process, the SQL and the stand-ins
share one offset from the real clock). Cron runs `sync due` every 15 minutes; the ticks at which no
source is due are skipped, which changes nothing (such a tick claims nothing, calls nothing, writes
nothing), and is what keeps days of simulated time to seconds."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.fakes.reddit_api import RedditApi
from tests.fakes.x_api import XApi
from tests.sim import InProcessCli, SimClock, next_tick, simulate

START = datetime(2026, 3, 2, 0, 0, 0, tzinfo=UTC)
REACH = timedelta(days=7) - timedelta(minutes=1)  # what X's recent search serves, less slsync's margin


class Feed:
    """Posts one `spacing` apart from `start` on, added to a stand-in as simulated time reaches them."""

    def __init__(self, add: Callable[[datetime], str], start: datetime, spacing: timedelta) -> None:
        self.add, self.next, self.spacing = add, start, spacing
        self.posted: dict[str, datetime] = {}

    def until(self, moment: datetime) -> None:
        while self.next <= moment:
            self.posted[self.add(self.next)] = self.next
            self.next += self.spacing

    def burst(self, count: int, start: datetime, end: datetime) -> None:
        """`count` more posts spread evenly from `start` to `end`."""
        for n in range(count):
            moment = (start + (end - start) * n / count).replace(microsecond=0)
            self.posted[self.add(moment)] = moment


class World:
    """The sources' database, the CLI on the simulated clock, and the feeds that the stand-ins serve."""

    def __init__(self, clock: SimClock, cli: InProcessCli, sql: psycopg.Connection[dict[str, Any]]) -> None:
        self.clock, self.cli, self.sql = clock, cli, sql
        self.feeds: list[Feed] = []
        self.warnings: list[str] = []  # the coverage-gap lines `sync due` printed
        self.results: list[dict[str, Any]] = []  # every source's result of every `sync due`, with its time
        self.ticks = 0

    def add(self, platform: str, name: str, *args: str) -> int:
        return self.cli.ok("source", "add", platform, "--tenant", "1", "--name", name, "--keyword", "acme", *args,
                           "--json").json()["id"]  # fmt: skip

    def status(self, source_id: int) -> dict[str, Any]:
        return self.cli.ok("status", str(source_id), "--json").json()

    def tick(self, moment: datetime) -> dict[str, Any]:
        """Cron's run of `sync due` at `moment`, after the feeds have posted up to then."""
        self.clock.advance_to(moment)
        for feed in self.feeds:
            feed.until(self.clock() - timedelta(seconds=2))
        # one worker: the same runs as cron's four, without opening a pool of connections every tick
        result = self.cli("sync", "due", "--concurrency", "1", "--json")
        assert result.returncode in (0, 1), result.stderr
        self.ticks += 1
        self.warnings += [line for line in result.stderr.splitlines() if "coverage gap" in line]
        self.stderr = result.stderr
        doc = result.json() if result.stdout.strip() else {"results": []}  # nothing when the command itself broke
        self.results += [{"at": moment, **r} for r in doc["results"]]
        return doc

    def run_until(self, end: datetime, *, until: Callable[[], bool] = lambda: False) -> None:
        """Cron every 15 minutes until `end` (or until `until()`), skipping the ticks when nothing is due."""
        while not until():
            row = self.sql.execute(
                "SELECT min(next_sync_at) AS due FROM sl_sources WHERE status IN ('active', 'connected', 'failing')"
            ).fetchone()
            moment = next_tick(self.clock())
            if row["due"] is not None:
                moment = max(moment, next_tick(row["due"] - timedelta(minutes=1)))
            if moment > end:
                return
            self.tick(moment)

    def stored(self) -> set[str]:
        return {r["external_id"] for r in self.sql.execute("SELECT external_id FROM sl_mentions")}

    def gap_rows(self) -> list[dict[str, Any]]:
        return self.sql.execute("SELECT * FROM sl_coverage_gaps ORDER BY id").fetchall()


@pytest.fixture
def sql(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch, database_url: str, sql) -> World:
    clock, cli = simulate(monkeypatch, database_url, START + timedelta(seconds=1))
    return World(clock, cli, sql)


@pytest.fixture
def x_api(world: World) -> Iterator[XApi]:
    api = XApi(recent_window=timedelta(days=7), window_limit=100_000, remaining=100_000)
    api.clock, api.reset_at = world.clock, world.clock() + timedelta(minutes=15)
    api.start()
    world.cli.setenv("SLSYNC_TWITTER_API_URL", api.url)
    world.cli.setenv("TWITTER_BEARER_TOKEN", "app-token")
    yield api
    api.stop()


@pytest.fixture
def reddit_api(world: World) -> Iterator[RedditApi]:
    api = RedditApi(window=100_000, remaining=100_000)
    api.clock, api.reset_at = world.clock, world.clock() + timedelta(minutes=10)
    api.start()
    for key, value in api.env().items():
        world.cli.setenv(key, value)
    yield api
    api.stop()


def x_feed(api: XApi, start: datetime, spacing: timedelta) -> Feed:
    return Feed(lambda moment: api.add_posts(1, newest=moment)[0], start, spacing)


def reddit_feed(api: RedditApi, start: datetime, spacing: timedelta) -> Feed:
    return Feed(lambda moment: api.add_post(moment), start, spacing)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- gaps: an outage longer than the reach ------------------------------------------------------------


def test_an_x_source_failing_for_eight_days_records_exactly_one_gap_with_the_right_bounds(
    world: World, x_api: XApi
) -> None:
    source_id = world.add("twitter", "acme")
    feed = x_feed(x_api, START - timedelta(days=6), timedelta(minutes=20, seconds=7))  # a post every 20 minutes
    world.feeds.append(feed)

    world.run_until(START + timedelta(hours=2))  # a healthy start: a sync every 15 minutes
    before = world.status(source_id)
    covered = when(before["coverage"]["covered_until"])
    assert before["source"]["status"] == "active" and before["gaps"] == []

    x_api.fault_always, x_api.fault_headers = 503, {"Retry-After": "3600"}  # down, and says so
    world.run_until(world.clock() + timedelta(days=8))
    failing = world.status(source_id)
    assert failing["source"]["status"] == "failing" and failing["source"]["consecutive_failures"] >= 8
    # the gap was recorded (and said, once) as soon as a run met the passed reach, while still failing
    assert len(failing["gaps"]) == 1 and len(world.warnings) == 1 and "was failing" in world.warnings[0]

    x_api.fault_always, x_api.fault_headers = None, {}
    world.run_until(
        world.clock() + timedelta(days=1), until=lambda: world.status(source_id)["source"]["status"] == "active"
    )
    recovered = when(world.status(source_id)["coverage"]["covered_until"])  # the first sync after the outage began
    world.run_until(world.clock() + timedelta(hours=6))  # and six hours of syncs every 15 minutes after it
    after = world.status(source_id)
    assert after["source"]["status"] == "active" and when(after["coverage"]["covered_until"]) > recovered
    [gap] = after["gaps"]
    assert gap["reason"] == "failing" and gap["stream"] is None
    assert when(gap["from"]) == covered and when(gap["to"]) == recovered - REACH
    assert len(world.gap_rows()) == 1 and len(world.warnings) == 1
    # the bounds are the truth: every post outside the gap is stored, none inside it
    lost = {post for post, moment in feed.posted.items() if covered < moment < recovered - REACH}
    assert lost and world.stored() == set(feed.posted) - lost
    # the estimate comes from the rate the source showed before the outage: three posts an hour
    assert gap["missed_estimate"] == pytest.approx(len(lost), rel=0.25)
    print(f"\nX down 8 days: gap {gap['from']} to {gap['to']} ({gap['reason']}), {len(lost)} posts lost, "
          f"estimated {gap['missed_estimate']}; {world.ticks} cron runs")  # fmt: skip


# --- gaps: a burst beyond the listing cap ---------------------------------------------------------------


def test_reddit_volume_beyond_the_listing_cap_between_syncs_records_cap_gaps(
    world: World, reddit_api: RedditApi
) -> None:
    source_id = world.add("reddit", "acme", "--interval", "30")
    feed = reddit_feed(reddit_api, START - timedelta(days=1), timedelta(minutes=2, seconds=3))
    world.feeds.append(feed)
    world.run_until(START + timedelta(hours=3))
    assert world.status(source_id)["gaps"] == [] and world.stored() == set(feed.posted)

    # the volume jumps to a post a second: 1,800 between two syncs, and the listing ends 1,000 items back
    surge = world.clock() + timedelta(minutes=5)
    feed.until(surge)
    feed.next, feed.spacing = surge.replace(microsecond=0), timedelta(seconds=1)
    gaps: list[dict[str, Any]] = []
    for _ in range(2):
        stored_newest = max(moment for post, moment in feed.posted.items() if post in world.stored())
        world.run_until(world.clock() + timedelta(minutes=30), until=lambda: len(world.gap_rows()) > len(gaps))
        [*_, gap] = world.status(source_id)["gaps"]
        gaps.append(gap)
        listed = sorted(feed.posted.values(), reverse=True)[:1000]  # what the listing served, newest first
        assert gap["reason"] == "cap" and gap["stream"] == "search"
        assert when(gap["from"]) == stored_newest and when(gap["to"]) == listed[-1]
        gap["lost"] = sum(1 for moment in feed.posted.values() if stored_newest < moment < listed[-1])
    assert len(world.warnings) == 2 and all("listing ended before the last sync's bound" in w for w in world.warnings)
    # every post outside the gaps is stored, none inside them
    inside = {post for post, moment in feed.posted.items()
              if any(when(g["from"]) < moment < when(g["to"]) for g in gaps)}  # fmt: skip
    assert world.stored() == set(feed.posted) - inside
    # the estimate is the listing's density (1,000 posts over 1,000 seconds) across the stretch: an upper bound
    # when the surge began inside it, close when the volume was as high throughout
    first, second = gaps
    assert first["missed_estimate"] >= first["lost"] > 100
    assert second["missed_estimate"] == pytest.approx(second["lost"], rel=0.05) and second["lost"] > 700
    print(f"\nReddit beyond its cap: gaps {[(g['from'], g['to'], g['lost'], g['missed_estimate']) for g in gaps]}")


# --- no false alarms ------------------------------------------------------------------------------------


def test_sources_within_reach_record_no_gap_over_200_cron_runs(
    world: World, x_api: XApi, reddit_api: RedditApi
) -> None:
    """Everything that could look like a gap and is not one: X failing for hours (inside its 7 days), Reddit
    listings cut off by the cap but inside the overlap (the newest stored post was reached), bursts of
    volume just under the cap, a sync that finds nothing."""
    x_id = world.add("twitter", "x")
    reddit_id = world.add("reddit", "reddit")
    x = x_feed(x_api, START - timedelta(days=3), timedelta(minutes=7, seconds=11))
    reddit = reddit_feed(reddit_api, START - timedelta(hours=12), timedelta(minutes=3, seconds=1))
    world.feeds += [x, reddit]
    capped = 0
    for number in range(200):
        tick = next_tick(world.clock())
        if number % 48 == 20:  # X down for four hours twice a day, back off and recover
            x_api.fault_always, x_api.fault_headers = 503, {"Retry-After": "3600"}
        if number % 48 == 36:
            x_api.fault_always, x_api.fault_headers = None, {}
        if number % 25 in (10, 11, 12):  # three ticks in a row of 850 new Reddit posts, a second apart
            reddit.burst(850, tick - timedelta(seconds=880), tick - timedelta(seconds=30))
        world.tick(tick)
        capped += sum(1 for r in world.results[-2:] if r["source_id"] == reddit_id and r["pages"] >= 10)
    assert world.ticks == 200 and world.gap_rows() == [] and world.warnings == []
    assert world.status(x_id)["gaps"] == [] and world.status(reddit_id)["gaps"] == []
    # the listings did end on the cap, inside the overlap; and nothing posted was missed
    assert capped >= 10 and world.stored() == set(x.posted) | set(reddit.posted)
    failed = sum(1 for r in world.results if r["source_id"] == x_id and r["status"] == "failing")
    assert failed >= 6
    print(f"\n200 cron runs: {capped} Reddit syncs ended on the listing cap, {failed} failed X syncs; no gap")


# --- intervals that follow volume -------------------------------------------------------------------------


def test_auto_intervals_shorten_when_volume_rises_tenfold_and_drift_to_the_maximum_when_quiet(
    world: World, reddit_api: RedditApi
) -> None:
    """One simulated day, two Reddit feeds, each listened to by an auto source (tenant 1) and by a source on
    the fixed 15-minute default (tenant 2, so that each stores its own copy): the interval series of the auto
    sources and the calls each source spent."""

    def source(tenant: int, name: str, *args: str) -> int:
        return world.cli.ok("source", "add", "reddit", "--tenant", str(tenant), "--name", name, "--keyword", name,
                            "--option", f"subreddits={name.split('_')[0]}", *args, "--json").json()["id"]  # fmt: skip

    busy = source(1, "busy_auto", "--interval", "auto")
    quiet = source(1, "quiet_auto", "--interval", "auto", "--min-interval", "15", "--max-interval", "360")
    source(2, "busy_fixed"), source(2, "quiet_fixed")
    add = reddit_api.add_post
    busy_feed = Feed(lambda moment: add(moment, subreddit="busy"), START - timedelta(hours=12), timedelta(minutes=2))
    quiet_feed = Feed(lambda moment: add(moment, subreddit="quiet"), START - timedelta(days=1), timedelta(hours=3))
    world.feeds += [busy_feed, quiet_feed]

    world.run_until(START + timedelta(hours=12))
    busy_feed.spacing = timedelta(seconds=12)  # tenfold: from 30 posts an hour to 300
    world.run_until(START + timedelta(hours=24))

    def series(source_id: int) -> list[tuple[str, int]]:
        return [(f"{r['at']:%H:%M}", r["next_interval_minutes"]) for r in world.results
                if r["source_id"] == source_id and r["success"]]  # fmt: skip

    def calls(name: str) -> int:
        return sum(1 for r in reddit_api.searches if r.params.get("q") == name)

    before = [m for at, m in series(busy) if at < "12:00"]
    after = [m for at, m in series(busy) if at >= "12:30"]
    print("\nbusy (auto 15-360), interval after each sync:", " ".join(f"{at}={m}" for at, m in series(busy)))
    print("quiet (auto 15-360), interval after each sync:", " ".join(f"{at}={m}" for at, m in series(quiet)))
    spent = {name: calls(name) for name in ("busy_auto", "busy_fixed", "quiet_auto", "quiet_fixed")}
    print(f"calls over the day: busy {spent['busy_auto']} auto against {spent['busy_fixed']} every 15 minutes, "
          f"quiet {spent['quiet_auto']} against {spent['quiet_fixed']}")  # fmt: skip
    # busy: about 20 new posts a sync, 40 minutes at 30 an hour; then at the minimum of 15
    assert min(before[3:]) >= 30 and max(before[3:]) <= 50 and set(after) == {15}
    # quiet: doubling from 15 to the maximum, and staying there
    quiet_series = [m for _, m in series(quiet)]
    assert quiet_series[:5] == [30, 60, 120, 240, 360] and set(quiet_series[5:]) == {360}
    # no gap, nothing missed, and the calls: fewer for the busy source, a tenth for the quiet one
    assert world.gap_rows() == [] and world.warnings == []
    stored = world.stored()
    assert set(busy_feed.posted) <= stored and set(quiet_feed.posted) <= stored
    # every tick from the first at 00:15: one call a sync, two once 75 posts and the overlap fill two pages
    assert spent["quiet_fixed"] >= 95 and spent["busy_fixed"] >= 140
    assert spent["busy_auto"] < 0.85 * spent["busy_fixed"] and spent["quiet_auto"] <= 0.1 * spent["quiet_fixed"]


# --- priority under a scarce budget -----------------------------------------------------------------------


def test_a_window_for_half_the_due_sources_goes_to_those_nearest_their_reach_and_names_the_rest(
    world: World, x_api: XApi
) -> None:
    # four X sources on one app token, last synced 6, 1, 5 and 2 days before they all fall due at once
    x_api.window_limit = x_api.remaining = 2
    world.feeds.append(x_feed(x_api, START - timedelta(days=1), timedelta(hours=6)))
    due = START + timedelta(days=6, hours=1)
    ids = {}
    for name, days in sorted({"a": 6, "b": 1, "c": 5, "d": 2}.items(), key=lambda item: -item[1]):
        synced = next_tick(due - timedelta(days=days))
        world.clock.advance_to(synced - timedelta(minutes=5))
        ids[name] = world.add("twitter", name, "--interval", str(int((due - synced).total_seconds() // 60)))
        [result] = world.tick(synced)["results"]
        assert result["source_id"] == ids[name] and result["success"]
    names = {source_id: name for name, source_id in ids.items()}

    world.clock.advance_to(next_tick(due) - timedelta(seconds=1))
    result = world.cli("sync", "due")  # a window of two calls for four sources: the text an operator reads
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ran = [names[int(line.split(":")[0].split()[1])] for line in lines if ": ok:" in line]
    deferred = [line for line in lines if ": deferred: " in line]
    assert sorted(ran) == ["a", "c"]  # 6 and 5 days behind, of X's 7
    assert sorted(names[int(line.split(":")[0].split()[1])] for line in deferred) == ["b", "d"]
    assert all("X rate limit: a new window of 2 calls, enough for 2 of the 4 due sources" in line for line in deferred)
    assert "2 synced, 0 failed, 0 cut short, 2 skipped (2 deferred) of 4; 0 new mentions" in result.stdout
    print("\n" + result.stdout)
    # the deferred stay due: the next window takes them
    doc = world.tick(next_tick(world.clock()))
    assert sorted(names[r["source_id"]] for r in doc["results"] if r["success"]) == ["b", "d"]


# --- the schedule under cron ------------------------------------------------------------------------------


def test_a_15_minute_source_under_a_15_minute_cron_syncs_at_every_tick(world: World, x_api: XApi) -> None:
    """A sync is due an interval after the previous one was claimed, up to a minute early: a cron run that
    starts quicker than the last one (here 1.9 s, then 0.3 s after the quarter hour) or a run that takes a
    while (each answer 0.4 s late) no longer leaves the source for the tick after."""
    source_id = world.add("twitter", "acme")
    world.feeds.append(x_feed(x_api, START - timedelta(days=1), timedelta(minutes=4)))
    x_api.latency = 0.4
    for number in range(8):
        startup = timedelta(seconds=1.9 if number % 2 == 0 else 0.3)
        doc = world.tick(next_tick(world.clock(), startup))
        assert [r["source_id"] for r in doc["results"] if r["success"]] == [source_id], f"tick {number}"
    runs = world.sql.execute(
        "SELECT started_at, finished_at FROM sl_sync_runs WHERE source_id = %s ORDER BY id", (source_id,)
    ).fetchall()
    next_due = world.sql.execute("SELECT next_sync_at FROM sl_sources").fetchone()["next_sync_at"]
    assert len(runs) == 8
    # scheduled from the claim, before the run started, not from its end
    assert next_due - timedelta(minutes=15) <= runs[-1]["started_at"] < runs[-1]["finished_at"] - timedelta(seconds=0.3)


# --- a gap once, whatever happens to the run that met it ----------------------------------------------------


def test_a_retried_run_widens_the_gap_it_met_instead_of_recording_it_twice(
    world: World, reddit_api: RedditApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slsync import db

    source_id = world.add("reddit", "acme", "--interval", "30")
    feed = reddit_feed(reddit_api, START - timedelta(hours=6), timedelta(minutes=2, seconds=3))
    world.feeds.append(feed)
    world.run_until(START + timedelta(hours=1))
    surge = world.clock() + timedelta(minutes=1)
    feed.until(surge)
    feed.next, feed.spacing = surge.replace(microsecond=0), timedelta(seconds=1)

    finish = db.finish_success

    def lost_at_commit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the connection went away")

    monkeypatch.setattr(db, "finish_success", lost_at_commit)  # the capped run dies before it commits
    world.run_until(world.clock() + timedelta(minutes=30), until=lambda: bool(world.gap_rows()))
    [first] = world.gap_rows()
    assert "unexpected RuntimeError: the connection went away" in world.stderr
    monkeypatch.setattr(db, "finish_success", finish)
    world.sql.execute("UPDATE sl_sources SET inflight_cursor = NULL")  # and its in-flight cursor is lost too
    world.tick(next_tick(world.clock()))  # the retry reads the capped listing again, from the same bound

    [again] = world.gap_rows()
    assert again["id"] == first["id"] and again["from_at"] == first["from_at"] and again["to_at"] > first["to_at"]
    assert len(world.warnings) == 1 and world.status(source_id)["source"]["status"] == "active"


def test_a_run_cut_short_and_not_continued_before_the_reach_passed_records_why(
    world: World, x_api: XApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slsync import sync

    source_id = world.add("twitter", "acme")
    world.feeds.append(x_feed(x_api, START - timedelta(days=1), timedelta(minutes=3)))
    world.run_until(START + timedelta(hours=1))
    checks = iter([None])  # the run may start; after its first page the time budget is spent
    budget = sync.RunOptions.out_of_time
    monkeypatch.setattr(sync.RunOptions, "out_of_time", lambda self: next(checks, "time budget spent"))
    doc = world.tick(next_tick(world.clock() + timedelta(hours=6)))  # six hours of posts: three pages
    assert doc["sources_partial"] == 1
    monkeypatch.setattr(sync.RunOptions, "out_of_time", budget)
    assert world.status(source_id)["source"]["status"] == "active"
    stale = world.sql.execute("SELECT inflight_cursor FROM sl_sources").fetchone()["inflight_cursor"]
    assert stale["active"]["token"] is not None  # the pass it would have continued

    before = len(x_api.searches)
    world.tick(next_tick(world.clock() + timedelta(days=8)))  # cron did not run for eight days
    [gap] = world.status(source_id)["gaps"]
    assert gap["reason"] == "cut_short" and len(world.warnings) == 1
    assert "a run cut short was not continued before the platform's reach had passed" in world.warnings[0]
    # the stale pass was not continued (X refuses a next_token of days ago): the run began again at the reach
    first = x_api.searches[before].params
    assert "next_token" not in first and "start_time" in first
    assert world.status(source_id)["source"]["status"] == "active" and x_api.searches[-1].status == 200


def test_a_usage_cap_longer_than_the_reach_records_a_rate_limited_gap(world: World, x_api: XApi) -> None:
    source_id = world.add("twitter", "acme")
    world.feeds.append(x_feed(x_api, START - timedelta(days=1), timedelta(minutes=10)))
    world.run_until(START + timedelta(hours=1))
    # X's monthly usage cap: 429 with a reset nine days away
    x_api.remaining, x_api.reset_at = 0, world.clock() + timedelta(days=9)
    world.tick(next_tick(world.clock()))
    assert world.status(source_id)["rate_limit"]["remaining"] == 0
    world.run_until(world.clock() + timedelta(days=9, hours=1))
    [gap] = world.status(source_id)["gaps"]
    assert gap["reason"] == "rate_limited" and len(world.warnings) == 1


def test_a_daily_quota_for_half_the_due_sources_goes_to_the_busiest_and_names_the_rest(cli, conn) -> None:
    """YouTube search reaches back as far as it likes: among sources equally far from a reach, the busiest
    (the most new mentions waiting) go first. Real time, the real CLI in a subprocess."""
    from tests.fakes.youtube_api import API_KEY, YouTubeApi

    api = YouTubeApi().start()
    try:
        cli.env.update({"SLSYNC_YOUTUBE_API_URL": api.url, "YOUTUBE_API_KEY": API_KEY})
        volume = {"alpha": 40, "beta": 5, "gamma": 20, "delta": 1}
        ids = {}
        for name, count in volume.items():
            api.add_videos(count, title=f"{name} review", spacing=timedelta(hours=2))
            ids[name] = cli.ok("source", "add", "youtube", "--tenant", "1", "--name", name, "--keyword", name,
                               "--json").json()["id"]  # fmt: skip
            assert cli.ok("sync", "source", str(ids[name]), "--json").json()["mentions_saved"] == count
        # 400 units spent by the first syncs: 250 of 650 left, two searches of 100 for four due sources
        conn.execute("UPDATE sl_sources SET next_sync_at = now() - interval '1 second'")
        result = cli("sync", "due", env={"SLSYNC_YOUTUBE_DAILY_QUOTA": "650"})
        assert result.returncode == 0, result.stderr
        names = {source_id: name for name, source_id in ids.items()}
        ran = sorted(
            names[int(line.split(":")[0].split()[1])] for line in result.stdout.splitlines() if ": ok:" in line
        )
        deferred = [line for line in result.stdout.splitlines() if ": deferred: " in line]
        assert ran == ["alpha", "gamma"]
        assert sorted(names[int(line.split(":")[0].split()[1])] for line in deferred) == ["beta", "delta"]
        assert all("YouTube daily quota: 250 of 650 units left today, enough for 2 of the 4 due" in line
                   for line in deferred)  # fmt: skip
        assert len(api.searches()) == 4 + 2  # nothing was called for the deferred sources
        reasons = conn.execute("SELECT name, behind_reason FROM sl_sources ORDER BY name").fetchall()
        assert {r["name"]: r["behind_reason"] for r in reasons} == {"alpha": None, "beta": "quota", "delta": "quota",
                                                                    "gamma": None}  # fmt: skip
    finally:
        api.stop()


# --- the rules themselves -----------------------------------------------------------------------------------


def test_the_interval_rules() -> None:
    from slsync.coverage import next_interval

    steady = {"lowest": 15, "highest": 360}
    assert next_interval(current=60, rate=0.5, **steady) == 40  # 20 new mentions at half a minute each
    assert next_interval(current=15, rate=0.0, **steady) == 30  # quiet: doubles...
    assert next_interval(current=240, rate=0.0, **steady) == 360  # ... up to the maximum
    assert next_interval(current=60, rate=50.0, **steady) == 15  # busy: the minimum
    assert next_interval(current=60, rate=50.0, lowest=1, highest=360) == 1
    assert next_interval(current=200, rate=0.01, lowest=15, highest=1440, reach=timedelta(hours=24)) == 400
    assert next_interval(current=720, rate=0.01, lowest=15, highest=1440, reach=timedelta(hours=24)) == 720
    assert next_interval(current=60, rate=0.1, lowest=15, highest=360, cut_by_cap=True) == 30


def test_the_rate_rules() -> None:
    from slsync.coverage import smoothed_rate

    assert smoothed_rate(None, 30, timedelta(minutes=60)) == 0.5
    assert smoothed_rate(None, 3, timedelta(minutes=1)) == 0.2  # a first rate over at least 15 minutes
    assert smoothed_rate(0.5, 30, timedelta(minutes=60)) == 0.5  # steady stays steady
    assert smoothed_rate(0.5, 300, timedelta(minutes=60)) == 2.75  # a tenfold hour: half the way at once
    assert smoothed_rate(0.5, 0, timedelta(minutes=360)) == pytest.approx(0.5 * 60 / 420)


def test_the_gap_and_risk_rules() -> None:
    from slsync.coverage import reach_gap, risk

    now = START + timedelta(days=10)
    week = timedelta(days=7)
    assert reach_gap(None, now, week, "failing", 1.0) is None  # never synced: nothing was promised
    assert reach_gap(now - timedelta(days=6), now, week, "failing", 1.0) is None
    assert reach_gap(now - timedelta(days=8), now, None, "failing", 1.0) is None  # no reach: nothing lost
    gap = reach_gap(now - timedelta(days=8), now, week, None, 0.5)
    assert gap is not None and (gap.start, gap.end) == (now - timedelta(days=8), now - week)
    assert gap.reason == "not_synced" and gap.missed_estimate == 720
    assert risk(now, now - timedelta(days=7), week, None, None) == 1.0
    assert risk(now, now - timedelta(hours=1), None, 10.0, 1000) == 0.6  # 600 of a 1,000-item listing waiting
    assert risk(now, None, week, 10.0, 1000) == 0.0


def test_plenty_of_budget_changes_nothing() -> None:
    from slsync.coverage import Budget, Candidate, plan

    window = Budget("x:app", 10, "calls", "X rate limit: 10 calls left")
    candidates = [Candidate(n, 2, risk, 1.0, window) for n, risk in ((3, 0.1), (1, 0.9), (2, 0.5))]
    assert plan(candidates) == ([3, 1, 2], [])  # the claim's order
    short = Budget("x:app", 3, "calls", "X rate limit: 3 calls left")
    order, deferred = plan([Candidate(n, 2, risk, 1.0, short) for n, risk in ((3, 0.1), (1, 0.9), (2, 0.5))])
    assert order == [1] and [d.source_id for d in deferred] == [2, 3]


# --- what the operator sees ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--interval", "often"), "expected a number of minutes (1 to 10080) or auto"),
        (("--interval", "0"), "--interval 0: expected 1 to 10080 minutes"),
        (("--interval", "30", "--min-interval", "5"), "--min-interval and --max-interval go with --interval auto"),
        (("--interval", "auto", "--min-interval", "60", "--max-interval", "30"), "--min-interval 60 is more than"),
        (("--interval", "auto", "--max-interval", "99999"), "--max-interval"),
    ],
)
def test_interval_options_that_make_no_sense_are_refused(cli, args: tuple[str, ...], says: str) -> None:
    result = cli("source", "add", "mock", "--tenant", "1", "--name", "acme", "--keyword", "acme", *args)
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr


def test_auto_sources_say_so_and_gaps_show_in_status_and_the_export(cli, conn, tmp_path) -> None:
    added = cli.ok("source", "add", "mock", "--tenant", "1", "--name", "acme", "--keyword", "acme",
                   "--interval", "auto", "--json").json()  # fmt: skip
    assert (added["interval_mode"], added["sync_interval_minutes"]) == ("auto", 15)
    assert (added["min_interval_minutes"], added["max_interval_minutes"]) == (15, 360)
    fixed = cli.ok("source", "add", "mock", "--tenant", "1", "--name", "plain", "--keyword", "x", "--json").json()
    assert (fixed["interval_mode"], fixed["min_interval_minutes"], fixed["sync_interval_minutes"]) == (
        "fixed", None, 15)  # fmt: skip
    assert "auto 15-360: 15 min" in cli.ok("source", "list").stdout
    cli.ok("sync", "source", str(added["id"]))
    # a gap as the engine records it (the simulations above record real ones)
    conn.execute(
        "INSERT INTO sl_coverage_gaps (source_id, tenant_id, from_at, to_at, reason, missed_estimate)"
        " VALUES (%s, 1, now() - interval '9 days', now() - interval '7 days', 'failing', 1234)",
        (added["id"],),
    )
    one = cli.ok("status", str(added["id"]), "--json").json()
    [gap] = one["gaps"]
    assert set(gap) == {"from", "to", "reason", "missed_estimate", "stream"} and gap["missed_estimate"] == 1234
    assert one["coverage"]["covered_until"] is not None and one["coverage"]["mentions_per_hour"] > 0
    listing = cli.ok("status", "--json").json()["sources"]
    assert {d["source"]["id"]: len(d["gaps"]) for d in listing} == {added["id"]: 1, fixed["id"]: 0}
    text = cli.ok("status").stdout
    assert f"source {added['id']} (mock: acme): coverage gap from " in text
    assert "the source was failing until the platform's reach had passed; about 1,234 mentions" in text

    export = cli.ok("mentions", "export", "--source", str(added["id"]), "--output", str(tmp_path / "m.jsonl"),
                    "--metadata", str(tmp_path / "m.json"))  # fmt: skip
    assert "note: 1 coverage gaps in the exported sources" in export.stderr
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["mentions"] == len((tmp_path / "m.jsonl").read_text().splitlines()) > 0
    assert meta["filters"]["source"] == added["id"] and [g["source_id"] for g in meta["gaps"]] == [added["id"]]
    # an export of a period after the gap, or of another source, carries none
    later = cli.ok("mentions", "export", "--since", datetime.now(UTC).date().isoformat(), "--metadata",
                   str(tmp_path / "later.json"))  # fmt: skip
    assert json.loads((tmp_path / "later.json").read_text())["gaps"] == [] and "coverage gaps" not in later.stderr
    other = cli.ok("mentions", "export", "--source", str(fixed["id"]), "--metadata", str(tmp_path / "o.json"))
    assert json.loads((tmp_path / "o.json").read_text())["gaps"] == [] and "coverage gaps" not in other.stderr
