"""`slsync report`: one self-contained HTML page, opened in a real headless Chromium (Debian's `chromium`, which
.ci/run installs) with no network: no console message, every chart drawn, hostile post texts shown as text, and a
screenshot to look at."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from slsync import db
from tests.conftest import Cli, add_mock_source
from tests.real_postgres import require

HOSTILE = {
    "script": "<script>alert('xss')</script>",
    "attribute": '"><img src=x onerror=alert(1)>',
    "table": "</td></tr></table><h1>owned</h1>",
    "bidi": "abc\u202egnp.exe\x1b[31m",
}
CHARTS = ("per-platform", "sentiment", "intents")


def add_mentions(conn: db.Connection, source_id: int, platform: str, rows: list[dict]) -> None:
    for n, row in enumerate(rows):
        conn.execute(
            "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, url, content, author_name,"
            " author_handle, author_followers, published_at, likes_count, comments_count, shares_count, status,"
            " sentiment, intent) VALUES (1, %s, %s, %s, %s, %s, %s, %s, %s, now() - make_interval(hours => %s),"
            " %s, %s, %s, %s, %s, %s)",
            (source_id, platform, f"{platform}-{n}", row.get("url"), row.get("content"), row.get("author_name"),
             row.get("author_handle"), row.get("followers"), n * 7, row.get("likes", n), 1, 0,
             row.get("status", "processed"), row.get("sentiment", "positive"), row.get("intent", "praise")),
        )  # fmt: skip


@pytest.fixture
def report_page(cli: Cli, conn: db.Connection, tmp_path: Path) -> Path:
    """Mentions on two platforms, analysed and not, hostile texts, links and names among them; a source in error."""
    source = add_mock_source(conn, name=HOSTILE["table"])
    cli.ok("mock", str(source), "--count", "300")
    cli.ok("analyze")
    other = add_mock_source(conn, name="reddit-like")
    conn.execute("UPDATE sl_sources SET platform = 'reddit', status = 'error', error_message = %s WHERE id = %s",
                 (HOSTILE["script"], other))  # fmt: skip
    add_mentions(conn, other, "reddit", [
        {"content": HOSTILE["script"], "author_name": HOSTILE["attribute"], "followers": 10**9, "likes": 10**6,
         "url": "javascript:alert(1)"},
        {"content": HOSTILE["table"], "author_handle": HOSTILE["bidi"], "followers": 5, "likes": 10**5,
         "url": "https://www.reddit.com/r/x/comments/1/"},
        {"content": HOSTILE["bidi"], "status": "new", "sentiment": None, "intent": None},
    ])  # fmt: skip
    output = tmp_path / "report.html"
    done = cli.ok("report", "--output", str(output))
    assert f"wrote {output}" in done.stderr
    return output


def test_the_page_is_self_contained_small_and_escapes_every_platform_value(report_page: Path) -> None:
    page = report_page.read_text(encoding="utf-8")
    assert len(page.encode()) < 5 * 1024 * 1024
    # nothing to load, nothing to run
    assert "<script" not in page.lower() and ' src="' not in page
    links = re.findall(r'href="([^"]*)"', page)
    assert links and all(link.startswith(("https://", "http://")) for link in links), links
    assert "default-src 'none'" in page
    # hostile texts are text
    assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;/td&gt;&lt;/tr&gt;&lt;/table&gt;&lt;h1&gt;owned&lt;/h1&gt;" in page
    assert "\u202e" not in page and "\x1b" not in page
    assert "javascript:" not in page  # a link only to http(s)
    assert '<a href="https://www.reddit.com/r/x/comments/1/"' in page
    for chart in CHARTS:
        assert f'data-chart="{chart}"' in page


def test_a_long_period_of_many_long_mentions_stays_small(cli: Cli, conn: db.Connection, tmp_path: Path) -> None:
    source = add_mock_source(conn)
    conn.execute(
        "INSERT INTO sl_mentions (tenant_id, source_id, platform, external_id, content, author_handle, published_at,"
        " likes_count) SELECT 1, %s, 'mock', 'long-' || n, repeat('long text ', 2000), 'author' || (n %% 5000),"
        " now() - make_interval(hours => n), n FROM generate_series(1, 30000) AS n",
        (source,),
    )
    output = tmp_path / "report.html"
    cli.ok("report", "--output", str(output), "--since", "2020-01-01")
    page = output.read_text(encoding="utf-8")
    assert len(page.encode()) < 1024 * 1024
    assert "by month" in page  # six years in months, not 2,000 daily bars
    assert page.count('class="mark"') <= 2 * 120 + 20


def test_report_refuses_bad_input_in_one_line(cli: Cli, tmp_path: Path) -> None:
    future = cli("report", "--output", str(tmp_path / "r.html"), "--since", "2999-01-01")
    assert future.returncode == 2 and future.stderr.strip() == "slsync: error: --since is in the future"
    nowhere = cli("report", "--output", str(tmp_path / "missing" / "r.html"))
    assert nowhere.returncode == 2 and "cannot write there" in nowhere.stderr
    assert not (tmp_path / "r.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0"]  # fmt: skip


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_the_report_opens_in_headless_chromium_with_every_chart_drawn_and_no_console_message(
    report_page: Path, tmp_path: Path
) -> None:
    require(None if CHROMIUM else "needs Debian's chromium (.ci/run installs it with apt-get)")  # fails under CI
    dom = chromium(report_page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "the page logged to the console (a blocked load, an error):\n" + "\n".join(console)
    html = dom.stdout
    for chart in CHARTS:
        figure = re.search(rf'<figure class="chart" data-chart="{chart}">(.*?)</figure>', html, re.DOTALL)
        assert figure, f"chart {chart} is not on the page"
        marks = re.findall(r'<rect class="mark"[^>]* width="([\d.]+)" height="([\d.]+)"', figure.group(1))
        assert marks and all(float(w) > 0 and float(h) > 0 for w, h in marks), f"chart {chart} drew nothing"
    # the browser parsed no element out of a post text
    assert "<img" not in html and "<script" not in html and "<h1>owned" not in html
    assert html.count("<h1>") == 1

    screenshot = tmp_path / "report.png"
    shot = chromium(report_page, tmp_path / "profile-shot", "--window-size=1200,2400", f"--screenshot={screenshot}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert not [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    assert screenshot.stat().st_size > 20_000  # a page drawn, not a blank one
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"\nreport screenshot: {screenshot}")
