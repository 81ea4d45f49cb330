"""Normalizers fed hostile input: missing fields, wrong types, huge and hostile strings.

Whatever arrives, normalizing never raises, and what it returns PostgreSQL accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from slsync import db, http
from slsync.connectors.mock import build_post
from slsync.connectors.twitter import normalize_page
from tests.conftest import add_mock_source

EXAMPLES = settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

hostile_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(["\x00", "\ud800", "\udfff", "\u202e", "\u200f", "\x07", "\n", "🙂", "مرحبا", "a"])).map(
        "".join
    ),
    st.builds(lambda ch, n: ch * n, st.sampled_from(["x", "é", "\x00", "🙂"]), st.integers(90_000, 110_000)),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), hostile_text)
# counts as an API might really send them: usual, at PostgreSQL's bigint edges, negative, or not numbers
count = st.one_of(st.integers(0, 10**9), st.sampled_from([-1, 2**63 - 1, 2**63, 2**70, -(2**70)]), scalar)
json_value = st.recursive(
    scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the expected shape, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_value)


tweet = st.fixed_dictionaries(
    {},
    optional={
        "id": maybe(st.one_of(st.integers(0, 2**63).map(str), st.text(max_size=25))),
        "text": maybe(hostile_text),
        "author_id": maybe(st.sampled_from(["1", "2", "3"])),
        "created_at": maybe(st.sampled_from(["2024-01-01T00:00:00.000Z", "not a date", "2024-13-45T99:00:00Z", ""])),
        "lang": maybe(st.sampled_from(["en", "ar", "und", ""])),
        "public_metrics": maybe(
            st.dictionaries(st.sampled_from(["like_count", "reply_count", "retweet_count", "quote_count"]), count)
        ),  # fmt: skip
        "attachments": maybe(st.fixed_dictionaries({"media_keys": maybe(st.lists(st.sampled_from(["m1", "m2"])))})),
        "geo": maybe(st.fixed_dictionaries({"place_id": maybe(st.sampled_from(["p1", "p2"]))})),
        "entities": maybe(
            st.fixed_dictionaries(
                {"urls": maybe(st.lists(st.fixed_dictionaries({"expanded_url": maybe(hostile_text)}), max_size=3))}
            )
        ),  # fmt: skip
        "note_tweet": maybe(st.fixed_dictionaries({"text": maybe(hostile_text)})),
    },
)
user = st.fixed_dictionaries(
    {"id": st.sampled_from(["1", "2", "3"])},
    optional={
        "name": maybe(hostile_text),
        "username": maybe(hostile_text),
        "verified": maybe(st.booleans()),
        "public_metrics": maybe(st.fixed_dictionaries({"followers_count": count})),
    },
)
page = st.fixed_dictionaries(
    {},
    optional={
        "data": maybe(st.lists(maybe(tweet), max_size=5)),
        "includes": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "users": maybe(st.lists(maybe(user), max_size=4)),
                    "media": maybe(
                        st.lists(
                            st.fixed_dictionaries(
                                {"media_key": st.sampled_from(["m1", "m2"])},
                                optional={"type": scalar, "url": maybe(hostile_text)},
                            )
                        )
                    ),
                    "places": maybe(
                        st.lists(
                            st.fixed_dictionaries(
                                {"id": st.sampled_from(["p1", "p2"])}, optional={"full_name": maybe(hostile_text)}
                            )
                        )
                    ),
                },
            )
        ),  # fmt: skip
        "errors": maybe(st.lists(json_value, max_size=3)),
        "meta": maybe(st.fixed_dictionaries({}, optional={"next_token": maybe(st.text(max_size=10))})),
    },
)


def as_received(body: object) -> object:
    """The body as slsync receives it: JSON text on the wire (lone surrogates as \\u escapes), decoded once."""
    wire = json.dumps(body, ensure_ascii=True).encode()
    return http.decode_json(httpx.Response(200, content=wire), "X")


@EXAMPLES
@given(body=page)
def test_the_x_normalizer_never_raises_and_returns_storable_mentions(conn, body: dict) -> None:
    received = as_received(body)
    mentions, errors = normalize_page(received)
    assert errors >= 0
    if not mentions:
        return
    source = db.get_source(conn, _x_source(conn))
    # storable: PostgreSQL takes every field; the transaction is rolled back to keep examples independent
    try:
        with conn.transaction(force_rollback=True):
            db.insert_mentions(conn, source, list({m.external_id: m for m in mentions}.values()))
    except Exception as exc:  # pragma: no cover - the assertion below explains
        raise AssertionError(f"not storable: {exc}") from exc


@EXAMPLES
@given(text=hostile_text)
def test_hostile_text_in_a_mock_post_is_stored_cleaned_once(conn, text: str) -> None:
    import random
    from datetime import UTC, datetime

    source = db.get_source(conn, _mock_source(conn))
    clean = http.storable(text)
    assert "\x00" not in clean and not any("\ud800" <= ch <= "\udfff" for ch in clean)
    post = build_post("mock", clean, "hostile-1", datetime(2026, 1, 1, tzinfo=UTC), random.Random(1))
    with conn.transaction(force_rollback=True):
        assert db.insert_mentions(conn, source, [post]) == 1
        row = conn.execute("SELECT content FROM sl_mentions WHERE external_id = 'hostile-1'").fetchone()
        assert clean in row["content"]  # stored as cleaned, RTL marks, emoji and all


_SOURCES: dict[tuple[int, str], int] = {}


def _x_source(conn: db.Connection) -> int:
    from slsync.connectors.twitter import TwitterConnector

    key = (id(conn), "twitter")
    if key not in _SOURCES:
        config = TwitterConnector.build_config({"keywords": ["acme"]}, {})
        _SOURCES[key] = db.add_source(
            conn, tenant_id=1, platform="twitter", name="hostile", connection_type="app", config=config,
            interval_minutes=15,
        )  # fmt: skip
    return _SOURCES[key]


def _mock_source(conn: db.Connection) -> int:
    key = (id(conn), "mock")
    if key not in _SOURCES:
        _SOURCES[key] = add_mock_source(conn, name="hostile")
    return _SOURCES[key]


any_json = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), hostile_text,
        st.sampled_from([1e308, 1e300, -1e308, 2.5e-300]),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@example(value=[float("nan")], ascii_only=True, encoding="utf-8", huge="")
@example(value=[float("inf"), -float("inf")], ascii_only=True, encoding="utf-8", huge="")
@example(value={"t": "a\x00b", "s": "\ud800", "e": "🙂"}, ascii_only=True, encoding="utf-8", huge="")
@example(value={"s": "\udfff"}, ascii_only=False, encoding="utf-8", huge="")
@example(value=["plain"], ascii_only=False, encoding="utf-16", huge="")
@example(value=None, ascii_only=True, encoding="utf-8", huge='{"n": 1e400}')
@given(
    value=any_json,
    ascii_only=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32"]),
    huge=st.sampled_from(["", '{"n": 1e400}', '{"n": -1E+999}', '{"n": ' + "9" * 310 + ".5}"]),
)
def test_decoding_skips_the_cleaning_walk_only_for_bodies_with_nothing_to_clean(
    value: object, ascii_only: bool, encoding: str, huge: str
) -> None:
    """The fast path of http.decode_json gives exactly what cleaning every value gives, whatever the body."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    if huge:
        text = f"[{text}, {huge}]"
    body = text.encode(encoding, "surrogatepass")
    decoded = http.decode_json(httpx.Response(200, content=body), "X")
    expected = http.storable(json.loads(body))
    assert json.dumps(decoded, sort_keys=True) == json.dumps(expected, sort_keys=True)
    json.dumps(decoded, allow_nan=False)  # raises on a non-finite number
    assert "\x00" not in json.dumps(decoded, ensure_ascii=False)


storable_json = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**80),
        st.integers(min_value=-(2**80), max_value=-(2**63) + 2), st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(exclude_categories=["Cs"])), st.datetimes(timezones=st.just(UTC)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), inner, max_size=4),
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@example(value=[2**64])  # beyond what orjson encodes: the standard library takes it
@example(value={1: "a key that is not text"})
@example(value=[datetime(2026, 12, 2, tzinfo=UTC)])
@given(value=storable_json)
def test_json_text_writes_what_the_standard_library_writes(value: object) -> None:
    """The rows of a write are encoded by orjson where it can; the text must mean what json.dumps says."""
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    assert json.loads(db.json_text(value)) == json.loads(expected)
