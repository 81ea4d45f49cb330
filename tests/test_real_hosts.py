"""Several machines, one database, over a real network: three hosts run `slsync sync due --concurrency 4` from
cron-like cycles against a PostgreSQL server on another host, with X's stand-ins on a fourth.

The hosts are Linux network namespaces made by the test (`ip netns`), each with one end of a veth pair whose
other end is on a bridge in a fifth namespace: 10.217.0.1 runs PostgreSQL (Debian's binaries, started by the
test on its own data directory, listening on TCP only there), 10.217.0.2 runs X's search and token endpoint
(tests/fakes/x_host.py), 10.217.0.11-13 run slsync, each with its own HOME, data directory and working
directory: nothing on disk is shared, the tokens live in the database token store under one key given to each
host as a secret in its environment. The test itself reaches PostgreSQL through the server's unix socket.

The test is the clock. Before each cycle it makes every source due (next_sync_at = now()), tells the X
stand-in the cycle number (an access token is accepted for three cycles, then X answers 401 and slsync
renews it with the refresh token, which X rotates), and adds two posts; then it starts the three hosts at
once, each claiming at most 120 of the 300 sources. In cycle KILL_CYCLE it SIGKILLs the third host once it has
finished some of its sources but not the others, measures how long the dead host's claims and locks kept its
sources from the other two, and runs the two survivors once more (the next cron tick, early). The clock
does not advance in that cycle, so no refresh is in flight when the host dies: a process killed between X's
answer to a refresh and the write of the rotated token loses the grant (X has retired the old refresh token),
a window no client can close; slsync keeps it to one round trip.

Checks: every source synced exactly once in every cycle across the three hosts, never twice; no refresh
token sent twice; every X post stored once for each X source's tenant and every mock post of each source's
stream once, with no duplicates counted by any run. Marked `realhosts`: it needs root, `ip netns` and
Debian's postgresql; it is skipped without them, except under CI (CI=true), where it fails instead.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from slsync import db, tokens
from slsync.config import Settings
from slsync.connectors.mock import MockConnector, latest_seq
from slsync.connectors.twitter import TwitterConnector
from slsync.tokens import DatabaseStore, Token, TokenCipher
from tests.real_postgres import PASSWORD, missing, require, start_postgres, work_dir

pytestmark = pytest.mark.realhosts

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.217.0"
DB_ADDRESS, API_ADDRESS = f"{SUBNET}.1", f"{SUBNET}.2"
HOSTS = {"h1": f"{SUBNET}.11", "h2": f"{SUBNET}.12", "h3": f"{SUBNET}.13"}
VICTIM = "h3"
CYCLES = 20
KILL_CYCLE = 10
MOCK_SOURCES, X_SOURCES = 240, 60
LIMIT = 120  # each host claims at most this many: 3 x 120 covers the 300 with room to spare


def missing_prerequisite() -> str | None:
    reason = missing("ip")
    if reason:
        return reason
    probe = f"sl{os.getpid() % 100000}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns is not available here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@pytest.fixture
def prerequisites() -> None:
    require(missing_prerequisite())


class Network:
    """Namespaces joined by veth pairs on a bridge; every process started in them is tracked and ended."""

    def __init__(self) -> None:
        self.prefix = f"sl{os.getpid() % 100000}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[Any]] = []
        self.switch = self._namespace("sw")
        self._ip(self.switch, "link", "add", "br0", "type", "bridge")
        self._ip(self.switch, "link", "set", "br0", "up")

    def _namespace(self, role: str) -> str:
        name = self.prefix + role
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.namespaces.append(name)
        return name

    @staticmethod
    def _ip(namespace: str, *args: str) -> None:
        subprocess.run(["ip", "-n", namespace, *args], check=True, capture_output=True)

    def host(self, role: str, address: str) -> str:
        namespace = self._namespace(role)
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                namespace,
                "type",
                "veth",
                "peer",
                "name",
                role,
                "netns",
                self.switch,
            ],
            check=True,
            capture_output=True,
        )
        self._ip(self.switch, "link", "set", role, "master", "br0", "up")
        self._ip(namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        self._ip(namespace, "link", "set", "eth0", "up")
        self._ip(namespace, "link", "set", "lo", "up")
        return namespace

    def popen(self, role: str, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(["ip", "netns", "exec", self.prefix + role, *args], **kwargs)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        for namespace in self.namespaces:
            # anything still in a namespace of this test was started by it
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class XHost:
    """The X stand-in process, driven line by line."""

    def __init__(self, net: Network, log: Path) -> None:
        self.process = net.popen(
            "api", [sys.executable, "-m", "tests.fakes.x_host", API_ADDRESS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        self.urls = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, "the X stand-in ended"
        return json.loads(line)

    def __call__(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        return self._read()


@dataclass
class Figures:
    syncs: dict[str, int] = field(default_factory=lambda: collections.Counter())
    killed_at: float = 0.0
    blocked_ms: float | None = None
    caught_up_ms: float | None = None
    killed_claims: int = 0
    cycle_seconds: list[float] = field(default_factory=list)


@pytest.fixture
def network(prerequisites: None) -> Iterator[tuple[Network, Path]]:
    work = work_dir()
    net = Network()
    try:
        net.host("db", DB_ADDRESS)
        net.host("api", API_ADDRESS)
        for role, address in HOSTS.items():
            net.host(role, address)
        yield net, work
    finally:
        net.close()
        shutil.rmtree(work, ignore_errors=True)


def host_env(work: Path, role: str, x: XHost, key: str) -> dict[str, str]:
    home = work / role
    for folder in ("home", "data", "tmp", "cwd"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home / "home"),
        "TMPDIR": str(home / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "SLSYNC_DATA_DIR": str(home / "data"),
        "SLSYNC_DATABASE_URL": f"postgresql://slsync:{PASSWORD}@{DB_ADDRESS}:5432/slsync",
        "SLSYNC_TOKEN_STORE": "database",
        "SLSYNC_TOKEN_KEY": key,
        "TWITTER_CLIENT_ID": x.urls["client_id"],
        "SLSYNC_TWITTER_API_URL": x.urls["search"],
        "SLSYNC_TWITTER_TOKEN_URL": x.urls["token"],
    }


def add_sources(conn: db.Connection, x: XHost, key: str) -> tuple[list[int], list[int]]:
    """240 mock sources whose cursors stand just behind now (no 7-day backfill), 60 connected X sources in a
    tenant each, their grants issued a cycle apart so that a third of the access tokens expire each cycle."""
    now = datetime.now(UTC)
    mock_ids = []
    for n in range(MOCK_SOURCES):
        config = MockConnector.build_config({"keywords": [f"brand{n}"]}, {"page_delay": "0.01"})
        source_id = db.add_source(
            conn, tenant_id=1 + n % 8, platform="mock", name=f"m{n}", connection_type="none", config=config,
            interval_minutes=15,
        )  # fmt: skip
        mock_ids.append(source_id)
        conn.execute(
            "UPDATE sl_sources SET committed_cursor = %s::jsonb WHERE id = %s",
            (json.dumps({"newest_seq": latest_seq(source_id, now) - 1}), source_id),
        )
    grants = x("issue", born=[-(n % 3) for n in range(X_SOURCES)])["tokens"]
    store = DatabaseStore(db.TokenTable(conn), TokenCipher(tokens.parse_keys(key, "SLSYNC_TOKEN_KEY")))
    x_ids = []
    for n, grant in enumerate(grants):
        config = TwitterConnector.build_config({"keywords": ["acme"]}, {})
        source_id = db.add_source(
            conn, tenant_id=1000 + n, platform="twitter", name=f"x{n}", connection_type="user", config=config,
            interval_minutes=15, status="pending",
        )  # fmt: skip
        store.put(source_id, Token(grant["access"], grant["refresh"], None, "tweet.read users.read offline.access"))
        db.mark_connected(conn, source_id)
        x_ids.append(source_id)
    return mock_ids, x_ids


def sync_due(net: Network, roles: list[str], envs: dict[str, dict[str, str]]) -> dict[str, subprocess.Popen[str]]:
    command = [sys.executable, "-m", "slsync", "sync", "due", "--concurrency", "4", "--limit", str(LIMIT), "--json"]
    return {
        role: net.popen(role, command, env=envs[role], cwd=Path(envs[role]["HOME"]).parent / "cwd", text=True,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for role in roles
    }  # fmt: skip


def synced_by(processes: dict[str, subprocess.Popen[str]]) -> dict[str, list[int]]:
    """The sources each host says it synced (its --json document)."""
    synced = {}
    for role, process in processes.items():
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, f"{role}: {err}"
        doc = json.loads(out)
        assert doc["sources_failed"] == 0 and doc["sources_skipped"] == 0, doc  # never busy: nothing blocked
        synced[role] = [r["source_id"] for r in doc["results"] if r["success"]]
    return synced


def victim_sessions(conn: db.Connection) -> list[int]:
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE client_addr = %s::inet", (HOSTS[VICTIM],)).fetchall()
    return [r["pid"] for r in rows]


def kill_mid_cycle(conn: db.Connection, victim: subprocess.Popen[str], figures: Figures) -> None:
    """SIGKILL the victim once it has synced some of its claimed sources and still holds others; then time
    how long its claims and locks stand in the others' way (until PostgreSQL has ended its sessions)."""
    most = 0
    deadline = time.monotonic() + 60
    while True:
        row = conn.execute(
            "SELECT count(*) AS n FROM sl_sources WHERE claimed_by IN"
            " (SELECT pid FROM pg_stat_activity WHERE client_addr = %s::inet)",
            (HOSTS[VICTIM],),
        ).fetchone()
        held = row["n"]
        most = max(most, held)
        if most >= 40 and held <= most - 8 and held >= 20:
            break
        assert victim.poll() is None and time.monotonic() < deadline, "the victim was not caught mid-cycle"
        time.sleep(0.005)
    pids = victim_sessions(conn)
    victim.send_signal(signal.SIGKILL)
    figures.killed_at = time.monotonic()
    figures.killed_claims = held
    # its claims count while its sessions live (claim_due skips a claim whose backend is alive), and its
    # source locks are session locks: both end when PostgreSQL sees the sockets close
    while conn.execute(
        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%(pids)s))"
        " + (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = ANY(%(pids)s)) AS n",
        {"pids": pids},
    ).fetchone()["n"]:
        time.sleep(0.002)
    figures.blocked_ms = (time.monotonic() - figures.killed_at) * 1000
    victim.wait(10)


def check_cycle(
    conn: db.Connection, started: datetime, all_ids: set[int], synced: dict[str, list[int]], killed: bool
) -> None:
    runs = conn.execute("SELECT source_id, status FROM sl_sync_runs WHERE started_at >= %s", (started,)).fetchall()
    successes = collections.Counter(r["source_id"] for r in runs if r["status"] == "success")
    assert set(successes) == all_ids, f"not synced this cycle: {sorted(all_ids - set(successes))[:10]}"
    assert [s for s, n in successes.items() if n > 1] == [], "synced twice in one cycle"
    others = collections.Counter(r["status"] for r in runs if r["status"] != "success")
    # only the killed host's run in progress may be left unfinished, abandoned by the run that took it over
    assert sum(others.values()) <= (4 if killed else 0) and set(others) <= {"abandoned"}, others
    said = [source_id for ids in synced.values() for source_id in ids]
    assert len(said) == len(set(said)), "two hosts both say they synced a source"


def test_three_hosts_sync_every_source_once_a_cycle_and_a_killed_one_blocks_nothing(
    network: tuple[Network, Path],
) -> None:
    net, work = network
    url = start_postgres(
        work, lambda args, **kwargs: net.popen("db", args, **kwargs), listen=DB_ADDRESS, clients=f"{SUBNET}.0/24"
    )
    x = XHost(net, work / "x_host.log")  # a killed host's connections reset: noise kept out of the output
    key = tokens.new_key()
    envs = {role: host_env(work, role, x, key) for role in HOSTS}
    settings = Settings(database_url=url, data_dir=work / "test-data", _env_file=None)
    figures = Figures()
    with db.connect(settings) as conn:
        mock_ids, x_ids = add_sources(conn, x, key)
        all_ids = set(mock_ids) | set(x_ids)
        x("posts", count=5)
        for cycle in range(1, CYCLES + 1):
            began = time.monotonic()
            x("tick", value=cycle - 1 if cycle == KILL_CYCLE else cycle)
            x("posts", count=2)
            started = conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]
            conn.execute("UPDATE sl_sources SET next_sync_at = now()")
            processes = sync_due(net, list(HOSTS), envs)
            if cycle == KILL_CYCLE:
                victim = processes.pop(VICTIM)
                kill_mid_cycle(conn, victim, figures)
                synced = synced_by(processes)
                # the next cron tick on the two survivors: every source the dead host left is theirs at once
                catch_up = synced_by(sync_due(net, [r for r in HOSTS if r != VICTIM], envs))
                figures.caught_up_ms = (time.monotonic() - figures.killed_at) * 1000
                for role, ids in catch_up.items():
                    synced[role] += ids
                dead = all_ids - {s for ids in synced.values() for s in ids}
                synced[VICTIM] = sorted(dead)  # what its runs finished before it died (from the run log below)
            else:
                synced = synced_by(processes)
            check_cycle(conn, started, all_ids, synced, killed=cycle == KILL_CYCLE)
            for role, ids in synced.items():
                figures.syncs[role] += len(ids)
            figures.cycle_seconds.append(time.monotonic() - began)

        report = x("report")
        sent = collections.Counter(r["refresh_token"] for r in report["refreshes"])
        assert [t for t, n in sent.items() if n > 1] == [], "a refresh token was sent twice"
        assert {r["status"] for r in report["refreshes"]} == {200}
        assert len(report["refreshes"]) >= X_SOURCES * (CYCLES - 2) // 3  # a third of the grants each cycle
        posts = set(report["posts"])
        stored = conn.execute(
            "SELECT tenant_id, array_agg(external_id) AS ids, count(*) AS n FROM sl_mentions"
            " WHERE platform = 'twitter' GROUP BY tenant_id"
        ).fetchall()
        assert len(stored) == X_SOURCES
        assert all(set(r["ids"]) == posts and r["n"] == len(posts) for r in stored), "an X post lost or doubled"
        for source_id in mock_ids:
            source = db.get_source(conn, source_id)
            seqs = sorted(
                int(r["external_id"].rsplit("-", 1)[1])
                for r in conn.execute("SELECT external_id FROM sl_mentions WHERE source_id = %s", (source_id,))
            )
            newest = source.committed_cursor["newest_seq"]
            assert seqs == list(range(newest - len(seqs) + 1, newest + 1)), f"mock source {source_id} lost a post"
        totals = conn.execute(
            "SELECT sum(duplicates) AS duplicates, sum(saved) AS saved, (SELECT count(*) FROM sl_mentions) AS stored"
            " FROM sl_sync_runs"
        ).fetchone()
        assert totals["duplicates"] == 0 and totals["saved"] == totals["stored"]
        statuses = conn.execute("SELECT status, count(*) AS n FROM sl_sources GROUP BY 1").fetchall()
        assert {r["status"]: r["n"] for r in statuses} == {"active": MOCK_SOURCES + X_SOURCES}

    print(
        f"\nreal hosts: {CYCLES} cycles over {len(all_ids)} sources ({MOCK_SOURCES} mock, {X_SOURCES} X); "
        f"syncs per host {dict(sorted(figures.syncs.items()))}; 0 double syncs; "
        f"{len(report['refreshes'])} refreshes, 0 refresh tokens sent twice; {len(posts)} X posts in each of "
        f"{X_SOURCES} tenants, 0 lost, 0 duplicates; host {VICTIM} killed in cycle {KILL_CYCLE} holding "
        f"{figures.killed_claims} claims, which blocked its sources for {figures.blocked_ms:.0f} ms; the "
        f"survivors had synced all it left {figures.caught_up_ms:.0f} ms after it died; cycles took "
        f"{min(figures.cycle_seconds):.1f}-{max(figures.cycle_seconds):.1f} s"
    )
