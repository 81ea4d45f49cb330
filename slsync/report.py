"""`slsync report`: one self-contained HTML file to look at: mentions per day and platform, sentiment over time,
the intents, the authors with the widest reach, the most engaged mentions and the sources' health.

The charts are SVG drawn here, in Python: no script, no font, no stylesheet or image from anywhere, so the file
opens without a network and a Content-Security-Policy forbids it to load anything at all. Every value from a
platform or a user is HTML-escaped (and isolated with <bdi> against bidi tricks); only http(s) links are links.
The page holds bounded lists and at most MAX_BARS bars a chart (days, else weeks, else months), so it stays far
below MAX_BYTES whatever the database holds.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from slsync import __version__, db

MAX_BYTES = 5 * 1024 * 1024
MAX_BARS = 120
TOP = 10
CONTENT_CHARS = 280
DEFAULT_DAYS = 30

PLATFORM_COLOURS = {
    "twitter": "#1d9bf0", "reddit": "#ff4500", "youtube": "#c4302b", "bluesky": "#0a7aff", "mastodon": "#6364ff",
    "facebook": "#1877f2", "instagram": "#c13584", "linkedin": "#0a66c2", "tiktok": "#25292e", "mock": "#8a8f98",
}  # fmt: skip
SENTIMENT_COLOURS = {"positive": "#2e9e5b", "neutral": "#9aa3ad", "negative": "#d64545", "pending": "#e0c25a"}
OTHER_COLOUR = "#7b61a8"
# what a page written from data may do: nothing but show itself
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
_HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Period:
    since: datetime
    until: datetime
    bucket: str  # day, week or month

    @classmethod
    def of(cls, since: datetime | None, until: datetime) -> Period:
        since = since or until - timedelta(days=DEFAULT_DAYS)
        days = (until - since).days + 1
        bucket = "day" if days <= MAX_BARS else "week" if days <= MAX_BARS * 7 else "month"
        return cls(since, until, bucket)

    def buckets(self) -> list[date]:
        """Every bucket's first day from `since` to `until`, as date_trunc names them."""
        first = self.since.astimezone(UTC).date()
        if self.bucket == "week":
            first -= timedelta(days=first.weekday())
        elif self.bucket == "month":
            first = first.replace(day=1)
        found, day, last = [], first, self.until.astimezone(UTC).date()
        while day <= last:
            found.append(day)
            if self.bucket == "day":
                day += timedelta(days=1)
            elif self.bucket == "week":
                day += timedelta(days=7)
            else:
                day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
        return found


def build(conn: db.Connection, *, tenant_id: int | None, since: datetime | None) -> str:
    """The whole page, as text."""
    until = db.database_clock(conn)
    period = Period.of(since, until)
    data = db.report_data(conn, tenant_id=tenant_id, since=period.since, bucket=period.bucket, top=TOP)
    buckets = period.buckets()
    per_platform = _series(data["per_platform"], "platform", buckets)
    per_sentiment = _series(data["per_sentiment"], "label", buckets)
    total = sum(row["n"] for row in data["per_platform"])
    scope = f"tenant {tenant_id}" if tenant_id is not None else "all tenants"
    span = f"{_day(period.since)} to {_day(period.until)}"
    parts = [
        _head(f"slsync report: {scope}, {span}"),
        "<header>",
        f"<h1>Mentions of {_text(scope)}</h1>",
        f"<p class=meta>{total:,} mentions published from {span} (UTC), by {period.bucket}; written "
        f"{_when(until)} by slsync {_text(__version__)}.</p>",
        "</header>",
        _figure(
            "per-platform",
            f"Mentions per {period.bucket} and platform",
            per_platform,
            buckets,
            {k: PLATFORM_COLOURS.get(k, OTHER_COLOUR) for k in per_platform},
        ),  # fmt: skip
        _figure(
            "sentiment",
            f"Sentiment per {period.bucket}",
            per_sentiment,
            buckets,
            {k: SENTIMENT_COLOURS.get(k, OTHER_COLOUR) for k in per_sentiment},
            order=[k for k in (*SENTIMENT_COLOURS, "unknown") if k in per_sentiment],
        ),  # fmt: skip
        _intents(data["intents"]),
        _authors(data["authors"]),
        _engaged(data["engaged"]),
        _health(data["sources"], data["gaps"], until),
        "</body></html>\n",
    ]
    return "\n".join(parts)


# --- data shaping -----------------------------------------------------------------------------------------


def _series(rows: Sequence[Mapping[str, Any]], key: str, buckets: list[date]) -> dict[str, list[int]]:
    """Per key (a platform, a sentiment), its count in every bucket, biggest keys first."""
    index = {bucket: n for n, bucket in enumerate(buckets)}
    series: dict[str, list[int]] = {}
    for row in rows:
        name = row[key] or "unknown"
        position = index.get(row["bucket"])
        if position is not None:
            series.setdefault(name, [0] * len(buckets))[position] += row["n"]
    return dict(sorted(series.items(), key=lambda item: -sum(item[1])))


# --- HTML ---------------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """Text from a user or a platform, harmless in HTML: escaped, without control or bidi characters."""
    return html.escape(_HIDDEN.sub("", str(value)), quote=True)


def _user(value: Any) -> str:
    return f"<bdi>{_text(value)}</bdi>"


def _link(url: Any, label: str) -> str:
    """A link only to http(s); anything else (javascript:, data:) is shown as text."""
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return f'<a href="{_text(url)}" rel="noopener noreferrer nofollow">{label}</a>'
    return label


def _day(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d}"


def _when(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC" if moment else "never"


def _head(title: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 24px auto;
       max-width: 1100px; padding: 0 16px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.meta {{ color: #59636e; margin: 0; }}
figure {{ margin: 0; }} svg {{ display: block; max-width: 100%; height: auto; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 4px 14px; margin: 6px 0 0; padding: 0; list-style: none; }}
.legend i {{ display: inline-block; width: 11px; height: 11px; margin-right: 5px; vertical-align: -1px; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: 5px 8px; border-bottom: 1px solid #e5e7eb; vertical-align: top; }}
th {{ color: #59636e; font-weight: 600; }} td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.bad {{ color: #b42318; font-weight: 600; }} .warn {{ color: #9a6700; }} .empty {{ color: #59636e; }}
</style></head><body>"""


def _figure(
    name: str,
    title: str,
    series: dict[str, list[int]],
    buckets: list[date],
    colours: dict[str, str],
    order: list[str] | None = None,
) -> str:
    order = order or list(series)
    if not series:
        return f'<section id="{name}"><h2>{_text(title)}</h2><p class=empty>No mentions in this period.</p></section>'
    width, height, left, bottom, top = 1000, 260, 44, 22, 8
    totals = [sum(series[k][i] for k in order) for i in range(len(buckets))]
    peak = max(max(totals), 1)
    scale = (height - bottom - top) / peak
    slot = (width - left) / len(buckets)
    bar = max(slot * 0.8, 1.0)
    marks = [
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" stroke="#d0d7de"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11" fill="#59636e">{peak:,}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" font-size="11" fill="#59636e">0</text>',
    ]
    for i, bucket in enumerate(buckets):
        x, y = left + i * slot + (slot - bar) / 2, height - bottom
        for key in order:
            count = series[key][i]
            if not count:
                continue
            h = count * scale
            y -= h
            marks.append(
                f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colours[key]}">'
                f"<title>{_text(key)}, {bucket}: {count:,}</title></rect>"
            )
    step = max(1, len(buckets) // 8)
    for i in range(0, len(buckets), step):
        x = left + i * slot + slot / 2
        marks.append(
            f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" font-size="11" fill="#59636e">'
            f"{buckets[i]:%m-%d}</text>"
        )
    legend = "".join(f'<li><i style="background:{colours[k]}"></i>{_user(k)} {sum(series[k]):,}</li>' for k in order)
    return (
        f'<section id="{name}"><h2>{_text(title)}</h2><figure class="chart" data-chart="{name}">'
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="{_text(title)}">{"".join(marks)}</svg>'
        f'<figcaption><ul class="legend">{legend}</ul></figcaption></figure></section>'
    )


def _intents(rows: Sequence[Mapping[str, Any]]) -> str:
    title = "Intents"
    if not rows:
        return _table("intents", title, (), [], "No analysed mentions in this period.")
    peak = max(row["n"] for row in rows)
    width, row_height, label = 1000, 26, 170
    height = row_height * len(rows) + 4
    marks = []
    for i, row in enumerate(rows):
        y = 2 + i * row_height
        w = max((width - label - 80) * row["n"] / peak, 1.0)
        marks.append(
            f'<text x="{label - 8}" y="{y + 16}" text-anchor="end" font-size="12" fill="#1f2328">'
            f"{_text(row['intent'] or 'not analysed')}</text>"
            f'<rect class="mark" x="{label}" y="{y + 3}" width="{w:.1f}" height="{row_height - 8}"'
            f' fill="{OTHER_COLOUR}">'
            f"<title>{_text(row['intent'] or 'not analysed')}: {row['n']:,}</title></rect>"
            f'<text x="{label + w + 6:.1f}" y="{y + 16}" font-size="12" fill="#59636e">{row["n"]:,}</text>'
        )
    return (
        f'<section id="intents"><h2>{title}</h2><figure class="chart" data-chart="intents">'
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{title}">'
        f"{''.join(marks)}</svg></figure></section>"
    )


def _table(name: str, title: str, header: Sequence[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<section id="{name}"><h2>{title}</h2><p class=empty>{empty}</p></section>'
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<section id="{name}"><h2>{title}</h2>{table}</section>'


def _number(value: Any) -> str:
    return f'<td class="n">{value:,}</td>' if isinstance(value, int) else '<td class="n">-</td>'


def _authors(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for row in rows:
        who = f"@{row['author_handle']}" if row["author_handle"] else (row["author_name"] or "-")
        lines.append(
            f"<tr><td>{_user(who)}</td><td>{_text(row['platform'])}</td>{_number(row['reach'])}"
            f"{_number(row['mentions'])}</tr>"
        )
    return _table("authors", "Top authors by reach", ("author", "platform", "followers", "mentions"), lines,
                  "No authors in this period.")  # fmt: skip


def _engaged(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for row in rows:
        content = " ".join((row["content"] or "").split())
        if len(content) > CONTENT_CHARS:
            content = content[: CONTENT_CHARS - 1] + "…"
        who = f"@{row['author_handle']}" if row["author_handle"] else (row["author_name"] or "-")
        lines.append(
            f"<tr><td>{_link(row['url'], _when(row['published_at']))}</td><td>{_text(row['platform'])}</td>"
            f"<td>{_user(who)}</td><td>{_user(content)}</td>{_number(row['likes_count'])}"
            f"{_number(row['comments_count'])}{_number(row['shares_count'])}</tr>"
        )
    header = ("published", "platform", "author", "mention", "likes", "comments", "shares")
    return _table("engaged", "Most engaged mentions", header, lines, "No mentions in this period.")


def _health(sources: Sequence[Mapping[str, Any]], gaps: Mapping[int, int], now: datetime) -> str:
    lines = []
    for s in sources:
        state = {"error": "bad", "failing": "warn"}.get(s["status"], "")
        problem = s["error_message"] or ""
        gap_count = gaps.get(s["id"], 0)
        lines.append(
            f"<tr><td>{s['id']}</td><td>{_text(s['platform'])}</td><td>{_user(s['name'])}</td>"
            f'<td class="{state}">{_text(s["status"])}</td><td>{_when(s["last_sync_at"])}</td>'
            f"{_number(s['consecutive_failures'])}{_number(s['failed_runs'])}{_number(gap_count)}"
            f"<td>{_user(problem[:300])}</td></tr>"
        )
    header = (
        "id",
        "platform",
        "source",
        "status",
        "last sync",
        "failures in a row",
        "failed runs",
        "gaps",
        "last error",
    )
    note = (
        "<p class=meta>Failed runs are those of the period; gaps are stretches no sync could read "
        "(<code>slsync status ID</code> names each and why).</p>"
    )
    return _table("health", "Source health", header, lines, "No sources.") + note
