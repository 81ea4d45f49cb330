"""Sentiment and intent for new mentions, by a pluggable analyzer.

The built-in analyzer works offline: sentiment from the VADER lexicon (English only), intent from
the transparent rules below. It labels `unknown` what it cannot judge (other languages) rather than
guess. Teams plug in their own analyzer as an entry point of the group `slsync.analyzers` and pick
it with SLSYNC_ANALYZER.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Protocol

from slsync.errors import DatabaseError, UsageError

if TYPE_CHECKING:
    from slsync import db
    from slsync.config import Settings

log = logging.getLogger("slsync.analysis")

SENTIMENTS = ("positive", "negative", "neutral", "unknown")
INTENTS = ("question", "complaint", "praise", "purchase_intent", "support_request", "other", "unknown")
ENTRY_POINT_GROUP = "slsync.analyzers"


@dataclass(frozen=True, slots=True)
class Text:
    """What an analyzer sees of a mention."""

    id: int
    content: str | None
    language: str | None


@dataclass(frozen=True, slots=True)
class Analysis:
    sentiment: str
    sentiment_score: float | None
    intent: str


class Analyzer(Protocol):
    """Labels a batch of mentions; one Analysis per Text, in order. Raising leaves them all `new`."""

    name: str

    def analyze(self, texts: Sequence[Text]) -> list[Analysis]: ...


# --- the built-in analyzer --------------------------------------------------------------------------

UNKNOWN = Analysis("unknown", None, "unknown")
# VADER's own thresholds on its compound score
POSITIVE_AT, NEGATIVE_AT = 0.05, -0.05

# Intent rules, tried in this order; the first that matches wins. Kept as plain phrases so that anyone
# can read why a mention got its label. They read lower-cased text: IGNORECASE makes every search 2-3x
# slower, and `sync due` runs five of them for every new mention.
SUPPORT = re.compile(
    r"\b(need help|please help|help me|can you help|can anyone help|how do i|how can i|can'?t log ?in|"
    r"cannot log ?in|not working|doesn'?t work|won'?t (work|load|open)|any update on my (ticket|case|order)|"
    r"dm me|contact support)\b"
)
COMPLAINT = re.compile(
    r"\b(refund|broken|crash\w*|terrible|awful|worst|disappoint\w*|frustrat\w*|still waiting|hung up|"
    r"not happy|unacceptable|rip ?off|overpriced|scam|never again)\b"
)
PURCHASE = re.compile(
    r"\b(where (can|do) i (buy|get|order)|where to buy|want to buy|going to buy|thinking (of|about) buying|"
    r"how much (is|does|are)|available in|in stock|can i order|take my money|ordering one)\b"
)
PRAISE = re.compile(
    r"\b(lov(e|ing|ed)|great|best|excellent|amazing|impressed|recommend\w*|shout-?out|awesome|fantastic|"
    r"thank(s| you))\b"
)
QUESTION = re.compile(r"\?\s*$|^\s*(who|what|when|where|why|how|is|are|does|do|can|has|have|anyone)\b")
_LETTER = re.compile(r"[^\W\d_]")


def judges_language(content: str, language: str | None) -> bool:
    """English, said by the platform, or (when it said nothing) text written almost only in ASCII letters."""
    if language:
        return language.lower().split("-")[0] == "en"
    letters = _LETTER.findall(content)
    return bool(letters) and sum(ch.isascii() for ch in letters) / len(letters) >= 0.9


def intent_of(content: str, sentiment: str) -> str:
    content = content.lower()
    if SUPPORT.search(content):
        return "support_request"
    # the sentiment first: it rules out one of these two searches for every mention
    if sentiment != "positive" and COMPLAINT.search(content):
        return "complaint"
    if PURCHASE.search(content):
        return "purchase_intent"
    if sentiment == "positive" and PRAISE.search(content):
        return "praise"
    if QUESTION.search(content):
        return "question"
    return "other"


class LexiconAnalyzer:
    """The built-in analyzer: VADER sentiment and rule-based intent, for English text only."""

    name = "builtin"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def analyze(self, texts: Sequence[Text]) -> list[Analysis]:
        return [self._one(t) for t in texts]

    def _one(self, text: Text) -> Analysis:
        content = (text.content or "").strip()
        if not content or not judges_language(content, text.language):
            return UNKNOWN
        score = round(float(self._vader.polarity_scores(content)["compound"]), 4)
        sentiment = "positive" if score >= POSITIVE_AT else "negative" if score <= NEGATIVE_AT else "neutral"
        return Analysis(sentiment, score, intent_of(content, sentiment))


# --- choosing one -----------------------------------------------------------------------------------


_loaded = threading.local()


def load(name: str) -> Analyzer:
    """The analyzer registered under `name` in the entry-point group slsync.analyzers.

    One instance per thread and name, made on first use: `sync due` analyzes in every worker after
    each source, and finding the entry point and building an analyzer (~14 ms for the built-in) once
    per source would cost a busy cycle seconds of CPU. Per thread, so an analyzer need not be
    thread-safe.
    """
    analyzers: dict[str, Analyzer] = _loaded.__dict__.setdefault("analyzers", {})
    if name not in analyzers:
        analyzer = _factory(name)()
        if not callable(getattr(analyzer, "analyze", None)):
            raise UsageError(f"the analyzer {name!r} has no analyze(texts) method")
        analyzers[name] = analyzer
    return analyzers[name]


@lru_cache(maxsize=8)
def _factory(name: str) -> Callable[[], Analyzer]:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if name == LexiconAnalyzer.name and name not in found:
        return LexiconAnalyzer  # a source checkout run without installing still has the built-in
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise UsageError(f"no analyzer named {name!r} (SLSYNC_ANALYZER; installed: {known})")
    return found[name].load()


def check(results: Sequence[Analysis], texts: Sequence[Text], name: str) -> None:
    """A plug-in's answer, checked before anything is stored."""
    if len(results) != len(texts):
        raise ValueError(f"analyzer {name!r} returned {len(results)} results for {len(texts)} mentions")
    for result in results:
        if result.sentiment not in SENTIMENTS or result.intent not in INTENTS:
            raise ValueError(f"analyzer {name!r} returned labels outside {SENTIMENTS} / {INTENTS}: {result}")


# --- working through the backlog --------------------------------------------------------------------


@dataclass
class Report:
    analyzer: str
    analyzed: int = 0
    error: str | None = None
    # why labelling stopped with mentions perhaps left `new` (the time budget), if it did
    stopped: str | None = None

    def as_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"analyzer": self.analyzer, "analyzed": self.analyzed, "error": self.error}
        return doc | ({"stopped": self.stopped} if self.stopped else {})


def analyze_backlog(
    conn: db.Connection,
    analyzer_name: str,
    *,
    tenant_id: int | None = None,
    source_ids: Sequence[int] | None = None,
    limit: int | None = None,
    deadline: float | None = None,
    batch: int = 500,
) -> Report:
    """Label `new` mentions batch by batch, each batch one transaction over rows locked SKIP LOCKED.

    Several analyzers may run at once without double work; a crash or a failing analyzer rolls its
    batch back, so no mention is left half-done and the rest stay `new` for the next run.
    """
    from slsync import db

    report = Report(analyzer_name)
    try:
        analyzer = load(analyzer_name)
    except UsageError as exc:
        return _skipped(report, exc)
    while limit is None or report.analyzed < limit:
        if deadline is not None and time.monotonic() >= deadline:
            if db.new_mentions_left(conn, tenant_id=tenant_id, source_ids=source_ids):
                report.stopped = "the time budget ran out"
            break
        size = batch if limit is None else min(batch, limit - report.analyzed)
        try:
            done = _label_batch(conn, analyzer.analyze, analyzer_name, size, tenant_id, source_ids)
        except DatabaseError:
            raise  # the database's failure, not the analyzer's: the caller ends the command
        except Exception as exc:
            _failed(report, exc)
            break
        report.analyzed += done
        if done < size:
            break  # the backlog is done: claiming once more would only find nothing
    log.info("analyzed %d mentions", report.analyzed, extra={"event": "analyzed", "count": report.analyzed})
    return report


def analyze_in_lanes(
    settings: Settings,
    analyzer_name: str,
    *,
    tenant_id: int | None = None,
    limit: int | None = None,
    lanes: int = 2,
    batch: int = 1000,
) -> Report:
    """`slsync analyze`: the backlog in `lanes` threads, each with a connection of its own, taking batches
    from one budget (`limit`); a batch is claimed, analysed and stored in one transaction, as in
    analyze_backlog. Batches of 1,000 labelled a 200,000 backlog in 6.1-6.3 s, of 500 in 6.7-6.8 s.

    A backlog of ELSEWHERE_FROM mentions or more is analysed in as many worker processes: the built-in
    analyzer's Python (~30 µs a mention) is most of a label's cost and holds the GIL, so in one process the
    lanes could only hide the database's share behind it (1.25x); in processes, one lane's analysis runs
    while another's is, and while PostgreSQL writes a third batch's labels. A smaller backlog is not worth
    the workers' start (~0.5 s)."""
    from slsync import db  # not at import: worker processes load this module for the analyzer alone

    report = Report(analyzer_name)
    try:
        load(analyzer_name)
    except UsageError as exc:
        return _skipped(report, exc)
    lock = threading.Lock()
    left = [limit]  # None: no limit
    stop = threading.Event()
    crashed: list[BaseException] = []

    def take() -> int:
        with lock:
            size = 0 if stop.is_set() else batch if left[0] is None else min(batch, left[0])
            if left[0] is not None:
                left[0] -= size
            return size

    def lane(analyze: Callable[[list[Text]], list[Analysis]]) -> None:
        try:
            with db.connect(settings, migrate_schema=False) as conn:
                while size := take():
                    try:
                        done = _label_batch(conn, analyze, analyzer_name, size, tenant_id, None)
                    except DatabaseError:
                        raise  # the database's failure, not the analyzer's: the command ends
                    except Exception as exc:
                        with lock:
                            _failed(report, exc)
                        stop.set()
                        return
                    with lock:
                        report.analyzed += done
                    if done < size:
                        stop.set()  # what is left is locked by another lane, or there is nothing left
        except BaseException as exc:
            crashed.append(exc)
            stop.set()

    with db.connect(settings, migrate_schema=False) as conn:
        backlog = db.count_new_mentions(conn, tenant_id=tenant_id)
    with contextlib.ExitStack() as stack:
        if min(backlog, limit if limit is not None else backlog) >= ELSEWHERE_FROM:
            spawn = multiprocessing.get_context("spawn")  # a fork would copy this process's connection
            pool = stack.enter_context(ProcessPoolExecutor(lanes, mp_context=spawn))

            def analyze(texts: list[Text]) -> list[Analysis]:
                rows = [(t.id, t.content, t.language) for t in texts]
                return [Analysis(*labels) for labels in pool.submit(_analyze_here, analyzer_name, rows).result()]

        else:

            def analyze(texts: list[Text]) -> list[Analysis]:
                return load(analyzer_name).analyze(texts)  # one analyzer per thread (load)

        threads = [threading.Thread(target=lane, args=(analyze,), name=f"slsync-analyze-{n}") for n in range(lanes)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            stop.set()  # Ctrl-C: each lane ends after the batch it has (a batch is one transaction)
            for thread in threads:
                thread.join()
    if crashed:
        raise crashed[0]
    log.info("analyzed %d mentions", report.analyzed, extra={"event": "analyzed", "count": report.analyzed})
    return report


# From this many mentions to label, `slsync analyze` runs the analyzer in worker processes.
ELSEWHERE_FROM = 5_000


def _analyze_here(
    analyzer_name: str, rows: list[tuple[int, str | None, str | None]]
) -> list[tuple[str, float | None, str]]:
    """In a worker process: the analyzer, made once per process (load), labels a batch. Tuples cross the
    process boundary: pickled both ways, the dataclasses cost 5.8 us a mention (1.2 s of CPU for 200,000,
    a fifth of the analysis itself)."""
    texts = [Text(*row) for row in rows]
    labelled = load(analyzer_name).analyze(texts)
    check(labelled, texts, analyzer_name)  # here, where the plug-in's own answer is (a generator fails as in-process)
    return [(a.sentiment, a.sentiment_score, a.intent) for a in labelled]


def _label_batch(
    conn: db.Connection,
    analyze: Callable[[list[Text]], list[Analysis]],
    analyzer_name: str,
    size: int,
    tenant_id: int | None,
    source_ids: Sequence[int] | None,
) -> int:
    """Claim up to `size` new mentions, label them and store the labels: one transaction; how many."""
    from slsync import db

    with conn.transaction():
        rows = db.claim_new_mentions(conn, limit=size, tenant_id=tenant_id, source_ids=source_ids)
        if not rows:
            return 0
        texts = [Text(r["id"], r["content"], r["language"]) for r in rows]
        results = analyze(texts)
        check(results, texts, analyzer_name)
        labelled = [(t.id, r.sentiment, r.sentiment_score, r.intent) for t, r in zip(texts, results, strict=True)]
        db.store_analyses(conn, labelled, analyzer_name)
    return len(rows)


def _skipped(report: Report, exc: UsageError) -> Report:
    report.error = str(exc)
    log.warning("analysis skipped: %s", exc, extra={"event": "analysis_failed"})
    return report


def _failed(report: Report, exc: Exception) -> None:
    report.error = f"analyzer {report.analyzer!r} failed: {type(exc).__name__}: {exc}"
    log.warning("%s; the mentions stay new", report.error, extra={"event": "analysis_failed"})
