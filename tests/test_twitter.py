"""The X connector: the query it builds, the real recorded payloads it normalizes, and whole syncs
against a loopback stand-in of the search API driven through the real CLI."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from slsync import db
from slsync.connectors.twitter import MAX_QUERY_LENGTH, build_queries, normalize_page, snowflake_time
from slsync.errors import UsageError
from tests.conftest import README_EXAMPLE, Cli, add_x_source
from tests.fakes.x_api import XApi

FIXTURES = Path(__file__).parent / "fixtures" / "real" / "twitter"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


# --- the query ------------------------------------------------------------------------------------


def test_the_readme_example_query_is_exactly_what_x_expects() -> None:
    assert build_queries(README_EXAMPLE) == [
        '(acme OR "acme coffee" OR #acmecoffee OR @acme) -jobs (lang:en OR lang:es) -is:retweet'
    ]
    page = (Path(__file__).parent.parent / "docs" / "platforms" / "twitter.md").read_text(encoding="utf-8")
    assert '(acme OR "acme coffee" OR #acmecoffee OR @acme) -jobs (lang:en OR lang:es) -is:retweet' in page


@pytest.mark.parametrize(
    ("config", "query"),
    [
        ({"keywords": ["acme"]}, "acme -is:retweet"),
        ({"hashtags": ["acme"], "languages": ["ar"]}, "#acme lang:ar -is:retweet"),
        ({"keywords": ["OR", "co-op", "café"]}, '("OR" OR "co-op" OR café) -is:retweet'),
        ({"mentions": ["acme_help"], "exclude": ["free shipping"]}, '@acme_help -"free shipping" -is:retweet'),
    ],
)
def test_queries_quote_phrases_and_group_terms(config: dict, query: str) -> None:
    assert build_queries(config) == [query]


def test_a_long_term_list_is_split_into_queries_within_512_characters() -> None:
    keywords = [f"brandword{n:03d}" for n in range(120)]
    config = {"keywords": keywords, "exclude": ["jobs"], "languages": ["en", "de"]}
    queries = build_queries(config)
    assert len(queries) > 1
    assert all(len(q) <= MAX_QUERY_LENGTH for q in queries)
    assert all(q.endswith(" -jobs (lang:en OR lang:de) -is:retweet") for q in queries)
    found = [term for q in queries for term in q.split(")")[0].strip("(").split(" OR ")]
    assert found == keywords


@pytest.mark.parametrize(
    "config",
    [
        {"keywords": ['say "hi"']},
        {"hashtags": ["two words"]},
        {"mentions": ["this-is-not-a-handle"]},
        {"keywords": ["x" * 520]},
        {"keywords": [f"brandword{n:03d}" for n in range(1000)]},
    ],
)
def test_search_parameters_x_cannot_express_are_refused(config: dict) -> None:
    with pytest.raises(UsageError):
        build_queries(config)


# --- normalizing the recorded payloads ------------------------------------------------------------


def test_every_recorded_search_post_becomes_a_mention_with_joined_includes() -> None:
    body = fixture("search_recent_kpop_expansions")
    mentions, errors = normalize_page(body)
    assert len(mentions) == len(body["data"]) == 100
    assert errors == 1  # the "User has been suspended" partial error, counted and not fatal
    users = {u["id"]: u for u in body["includes"]["users"]}
    for post, mention in zip(body["data"], mentions, strict=True):
        author = users[post["author_id"]]
        assert mention.external_id == post["id"] and mention.platform == "twitter"
        assert mention.author_handle == author["username"] and mention.author_name == author["name"]
        assert mention.author_followers == author["public_metrics"]["followers_count"]
        assert mention.author_verified is author["verified"]
        metrics = post["public_metrics"]
        assert mention.likes_count == metrics["like_count"] and mention.comments_count == metrics["reply_count"]
        assert mention.shares_count == metrics["retweet_count"] + metrics["quote_count"]
        assert mention.language == post["lang"]
        assert mention.url == f"https://x.com/{author['username']}/status/{post['id']}"
        assert mention.published_at == datetime.fromisoformat(post["created_at"].replace("Z", "+00:00"))
        assert mention.raw["includes"]["author"] == author
    placed = [m for m in mentions if m.location]
    assert [m.location for m in placed] == ["Soledad, Colombia"]
    images = [m for m in mentions if m.media_type == "image"]
    assert images and all(url.startswith("https://pbs.twimg.com/") for m in images for url in m.media_urls)


def test_arabic_posts_keep_their_text_language_and_media() -> None:
    body = fixture("search_recent_arabic_quotes_media")
    mentions, errors = normalize_page(body)
    assert len(mentions) == 100 and errors == 0
    assert sum(1 for m in mentions if m.language == "ar") == 10
    texts = {post["id"]: post["text"] for post in body["data"]}
    assert all(m.content == texts[m.external_id] for m in mentions)  # RTL text and emoji kept as sent
    # the Arabic posts themselves are the quoted ones in `includes`: normalized as posts, they keep their text
    quoted, _ = normalize_page({**body, "data": body["includes"]["tweets"]})
    arabic = [m for m in quoted if m.language == "ar"]
    assert len(arabic) >= 10
    assert all(any("\u0600" <= ch <= "\u06ff" for ch in m.content or "") for m in arabic)
    assert any(m.author_name and any("\u0600" <= ch <= "\u06ff" for ch in m.author_name) for m in quoted)
    assert {m.media_type for m in mentions} >= {"image", "video"}
    videos = [m for m in mentions if m.media_type == "video"]
    assert all(m.media_urls for m in videos)  # the preview image when a video has no url


def test_withheld_posts_and_missing_authors_keep_null_author_fields() -> None:
    body = fixture("tweets_lookup_withheld_tweet")
    [mention], errors = normalize_page(body)
    assert errors == 0 and mention.author_handle == body["includes"]["users"][0]["username"]
    assert mention.raw["withheld"]["country_codes"] == ["IN"]
    suspended = copy.deepcopy(body)
    suspended["includes"]["users"] = []  # the author was suspended or withheld: not in includes
    [orphan], _ = normalize_page(suspended)
    assert orphan.author_handle is None and orphan.author_name is None and orphan.author_followers is None
    assert orphan.author_verified is None and orphan.url == f"https://x.com/i/web/status/{orphan.external_id}"
    assert orphan.content == mention.content and orphan.likes_count == mention.likes_count


def test_the_other_recorded_posts() -> None:
    [reply], errors = normalize_page(fixture("tweets_lookup_russian_reply_deleted_parent"))
    assert errors == 1 and reply.language == "ru" and "Отлично" in (reply.content or "")
    [placed], _ = normalize_page(fixture("tweets_lookup_geo_place"))
    assert placed.location == "Berlin, Germany"
    [edited], _ = normalize_page(fixture("tweets_lookup_quote_edited"))
    # its only URL is the post it quotes: not a link out
    assert edited.media_type == "text" and edited.raw["edit_history_tweet_ids"]
    minimal, errors = normalize_page(fixture("search_recent_default_fields_tweepy"))
    assert len(minimal) == 10 and errors == 0
    for mention in minimal:  # no created_at, no includes: the time comes from the id, authors stay null
        assert mention.published_at == snowflake_time(mention.external_id)
        assert mention.author_handle is None and mention.likes_count is None and mention.language is None


def test_counts_that_are_not_counts_become_null() -> None:
    body = {
        "data": [{"id": "123", "author_id": "1", "public_metrics": {"like_count": 2**70, "reply_count": -4,
                                                                     "retweet_count": "7", "quote_count": True}}],
        "includes": {"users": [{"id": "1", "public_metrics": {"followers_count": 1.5}}]},
    }  # fmt: skip
    [mention], errors = normalize_page(body)
    assert errors == 0 and mention.likes_count is None and mention.comments_count is None
    assert mention.shares_count is None and mention.author_followers is None  # "7" and True are not counts


def test_snowflake_time_matches_created_at() -> None:
    body = fixture("search_recent_kpop_expansions")
    for post in body["data"][:10]:
        created = datetime.fromisoformat(post["created_at"].replace("Z", "+00:00"))
        assert abs(snowflake_time(post["id"]) - created) < timedelta(seconds=1)


# --- whole syncs against the stand-in -------------------------------------------------------------


def test_three_pages_arrive_in_one_sync_and_the_next_sync_sends_since_id(x_cli: Cli, x_api: XApi, conn) -> None:
    ids = x_api.add_posts(250)
    source_id = add_x_source(x_cli)
    first = x_cli.ok("sync", "source", str(source_id), "--json").json()
    assert first["success"] and first["mentions_saved"] == 250 and first["pages"] == 3
    assert len(x_api.searches) == 3
    query = build_queries(README_EXAMPLE)[0]
    for request in x_api.searches:
        assert request.params["query"] == query and request.params["max_results"] == "100"
        assert request.authorization == "Bearer app-token"
        assert "since_id" not in request.params
        assert "author_id" in request.params["expansions"] and "public_metrics" in request.params["tweet.fields"]
    start = datetime.fromisoformat(x_api.searches[0].params["start_time"].replace("Z", "+00:00"))
    assert timedelta(days=6, hours=23) < datetime.now(UTC) - start <= timedelta(days=7)
    assert [r.params.get("next_token") for r in x_api.searches] == [None, "page-100", "page-200"]
    stored = conn.execute("SELECT count(*) AS n, count(author_handle) AS authors FROM sl_mentions").fetchone()
    assert stored["n"] == 250 and stored["authors"] == 250

    newer = x_api.add_posts(5, newest=datetime.now(UTC), spacing=timedelta(milliseconds=100))
    second = x_cli.ok("sync", "source", str(source_id), "--json").json()
    assert second["mentions_saved"] == 5 and second["mentions_fetched"] == 5
    assert x_api.searches[-1].params["since_id"] == max(ids, key=int)
    assert "start_time" not in x_api.searches[-1].params
    source = db.get_source(conn, source_id)
    assert source.committed_cursor == {"v": 2, "streams": {query: max(newer, key=int)}}
    status = x_cli.ok("status", str(source_id), "--json").json()
    assert status["rate_limit"]["remaining"] == x_api.remaining and status["rate_limit"]["limit"] == 450


def test_a_429_ends_the_run_at_once_and_no_call_is_made_before_the_reset(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(250)
    x_api.reset_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    x_api.fail_429_from_call = 1  # the second call is refused
    source_id = add_x_source(x_cli)
    limited = x_cli("sync", "source", str(source_id), "--json")
    assert limited.returncode == 1
    doc = limited.json()
    assert doc["status"] == "rate_limited" and doc["mentions_saved"] == 100 and "rate limit" in doc["message"]
    assert len(x_api.searches) == 2
    source = db.get_source(conn, source_id)
    assert source.rate_limit_remaining == 0 and source.rate_limit_reset_at == x_api.reset_at
    assert source.next_sync_at >= x_api.reset_at - timedelta(seconds=1)

    again = x_cli("sync", "source", str(source_id))
    assert again.returncode == 1 and "rate limited until" in again.stdout
    due = x_cli.ok("sync", "due", "--json").json()
    assert due["results"] == []
    assert len(x_api.searches) == 2  # nobody called X before the reset

    # after the reset the run continues where it stopped
    x_api.fail_429_from_call = None
    conn.execute(
        "UPDATE sl_sources SET rate_limit_reset_at = now() - interval '1 second', next_sync_at = now() WHERE id = %s",
        (source_id,),
    )
    resumed = x_cli.ok("sync", "due", "--json").json()["results"][0]
    assert resumed["success"] and resumed["mentions_saved"] == 150 and resumed["duplicates"] == 0
    assert x_api.searches[2].params["next_token"] == "page-100"


def test_missing_or_refused_credentials_mark_the_source_error_with_advice(x_cli: Cli, x_api: XApi, conn) -> None:
    x_api.add_posts(3)
    source_id = add_x_source(x_cli)
    refused = x_cli("sync", "source", str(source_id), "--json", env={"TWITTER_BEARER_TOKEN": "wrong"})
    assert refused.returncode == 1
    doc = refused.json()
    assert doc["status"] == "error" and f"slsync connect {source_id}" in doc["message"]
    assert "wrong" not in refused.stdout + refused.stderr
    assert [r.authorization for r in x_api.searches] == ["Bearer wrong"]  # app tokens are not retried

    env = {k: v for k, v in x_cli.env.items() if k != "TWITTER_BEARER_TOKEN"}
    bare = Cli(env, x_cli.cwd)
    missing = bare("sync", "source", str(source_id), "--json")
    assert missing.returncode == 1 and "no twitter credentials" in missing.json()["message"]
    assert db.get_source(conn, source_id).status == "error"


def test_since_beyond_the_search_window_is_refused(x_cli: Cli) -> None:
    source_id = add_x_source(x_cli)
    old = (datetime.now(UTC) - timedelta(days=8)).date().isoformat()
    result = x_cli("sync", "source", str(source_id), "--since", old)
    assert result.returncode == 2 and "7 days" in result.stderr


def test_source_add_refuses_what_x_cannot_search(x_cli: Cli) -> None:
    result = x_cli("source", "add", "twitter", "--tenant", "1", "--name", "bad", "--keyword", 'say "hi"')
    assert result.returncode == 2 and "double quote" in result.stderr
    assert x_cli.ok("platforms", "--json").json()["platforms"][0] == {
        "name": "twitter", "title": "X (Twitter)", "state": "active", "note": "recent search, last 7 days",
    }  # fmt: skip
