"""Quotas and connection ends as an operator sees them: the rolling-window ledger (Instagram's 30
hashtags a week), today's daily quotas, and `status` warning before a connection's grant runs out."""

from __future__ import annotations

import threading
from datetime import date, timedelta

from slsync import db
from slsync.config import Settings
from tests.conftest import Cli, add_mock_source, db_now

WEEK = timedelta(days=7)


def test_the_window_counts_distinct_items_and_refuses_past_the_limit(conn: db.Connection) -> None:
    assert db.use_unique(conn, "ig:1", "acme", 3, WEEK) == 2
    assert db.use_unique(conn, "ig:1", "acme", 3, WEEK) == 2  # already counted: free
    assert db.use_unique(conn, "ig:1", "shoes", 3, WEEK) == 1
    assert db.use_unique(conn, "ig:1", "socks", 3, WEEK) == 0
    assert db.use_unique(conn, "ig:1", "hats", 3, WEEK) is None  # the fourth does not fit
    assert db.use_unique(conn, "ig:2", "hats", 3, WEEK) == 2  # another account has its own window
    assert db.use_unique(conn, "ig:1", "shoes", 3, WEEK) == 0  # a counted one is still free


def test_a_repeat_does_not_restart_the_window_and_a_lapsed_item_frees_its_slot(conn: db.Connection) -> None:
    db.use_unique(conn, "ig:1", "acme", 1, WEEK)
    conn.execute("UPDATE sl_window_ledger SET first_used_at = now() - interval '6 days'")
    assert db.use_unique(conn, "ig:1", "acme", 1, WEEK) == 0
    first = conn.execute("SELECT first_used_at < now() - interval '5 days' AS old FROM sl_window_ledger").fetchone()
    assert first == {"old": True}  # not moved by the repeat
    assert db.use_unique(conn, "ig:1", "shoes", 1, WEEK) is None
    conn.execute("UPDATE sl_window_ledger SET first_used_at = now() - interval '7 days 1 minute'")
    assert db.use_unique(conn, "ig:1", "shoes", 1, WEEK) == 0  # acme's week is over
    assert db.use_unique(conn, "ig:1", "acme", 1, WEEK) is None  # and acme now needs a slot again


def test_concurrent_callers_never_take_more_slots_than_the_limit(settings: Settings) -> None:
    granted: list[str] = []
    lock = threading.Lock()

    def take(items: list[str]) -> None:
        with db.connect(settings) as own:
            for item in items:
                if db.use_unique(own, "ig:race", item, 10, WEEK) is not None:
                    with lock:
                        granted.append(item)

    workers = [threading.Thread(target=take, args=([f"tag{w}_{i}" for i in range(8)],)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(granted) == 10


def test_status_shows_daily_and_rolling_quotas_to_the_operator(cli: Cli, conn: db.Connection) -> None:
    add_mock_source(conn)
    today = db_now(conn).date()
    assert db.spend_quota(conn, "tiktok:requests:ab12", today, 40, 1000) == 960
    db.spend_quota(conn, "tiktok:requests:ab12", date(2020, 1, 1), 999, 1000)  # long past: not shown
    for tag in ("acme", "shoes"):
        db.use_unique(conn, "instagram:hashtags:1784", tag, 30, WEEK)

    quotas = cli.ok("status", "--json").json()["quotas"]
    by_key = {q["credential"]: q for q in quotas}
    assert by_key["tiktok:requests:ab12"] | {"since": None} == {
        "credential": "tiktok:requests:ab12", "period": "day", "since": None, "used": 40, "limit": 1000,
        "remaining": 960, "frees_at": None,
    }  # fmt: skip
    hashtags = by_key["instagram:hashtags:1784"]
    assert (hashtags["period"], hashtags["used"], hashtags["limit"], hashtags["remaining"]) == ("7 days", 2, 30, 28)
    assert hashtags["frees_at"] is not None
    assert len(quotas) == 2

    text = cli.ok("status").stdout
    assert "tiktok:requests:ab12" in text and "rolling 7 days" in text
    # a tenant's view does not show the operator's credentials
    assert "quotas" not in cli.ok("status", "--tenant", "1", "--json").json()
    assert "tiktok" not in cli.ok("status", "--tenant", "1").stdout


def test_status_warns_before_a_connection_ends(cli: Cli, conn: db.Connection) -> None:
    soon, later, gone = (add_mock_source(conn, name=n) for n in ("soon", "later", "gone"))
    conn.execute("UPDATE sl_sources SET reconnect_by = now() + interval '9 days 1 hour' WHERE id = %s", (soon,))
    conn.execute("UPDATE sl_sources SET reconnect_by = now() + interval '200 days' WHERE id = %s", (later,))
    conn.execute("UPDATE sl_sources SET reconnect_by = now() - interval '1 day' WHERE id = %s", (gone,))

    doc = cli.ok("status", str(soon), "--json").json()
    assert doc["connection"]["type"] == "none" and doc["connection"]["reconnect_by"] is not None
    lines = [line for line in cli.ok("status").stdout.splitlines() if "connection" in line]
    assert len(lines) == 2
    assert f"source {soon} (mock: soon): its connection ends" in lines[0]
    assert "(in 9 days); reconnect before then: slsync connect" in lines[0]
    assert f"source {gone} (mock: gone): its connection ended" in lines[1]
