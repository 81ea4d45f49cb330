"""X's stand-ins, search and token endpoint, as a process of their own: for tests in which slsync runs on other
hosts (tests/test_real_hosts.py starts it in a network namespace of its own).

    python -m tests.fakes.x_host ADDRESS

It prints one JSON line with its two URLs, then answers commands read from stdin, one JSON object a line, each
with one JSON line:

    {"op": "issue", "born": [0, -1, ...]}  a connected grant per entry: {"tokens": [{"access", "refresh"}, ...]}
    {"op": "tick", "value": N}            the clock access tokens age by (the test's cron cycles)
    {"op": "posts", "count": N}           N new posts, newest now: {"ids": [...]}
    {"op": "report"}                      every refresh token sent and its answer, every post, the searches

An access token is accepted for LIFETIME ticks after the tick it was issued at; then X's search answers 401
and slsync renews it with the refresh token, which the endpoint rotates (a used one is dead, as on X). The
endpoint records every refresh token sent, so the test can see one sent twice. It exits when stdin closes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.oauth_server import Issued, XAuth, running
from tests.fakes.x_api import XApi

LIFETIME = 3


@dataclass
class ClockedAuth(XAuth):
    tick: int = 0
    # access token -> the tick it was issued at
    born: dict[str, int] = field(default_factory=dict)

    def issue(self) -> Issued:
        pair = super().issue()
        self.born[pair.access_token] = self.tick
        return pair


class LiveTokens:
    """The access tokens X's search accepts now."""

    def __init__(self, auth: ClockedAuth) -> None:
        self.auth = auth

    def __contains__(self, token: object) -> bool:
        born = self.auth.born.get(str(token))
        return born is not None and self.auth.tick < born + LIFETIME


def answer(auth: ClockedAuth, api: XApi, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "issue":
        issued = []
        for born in command["born"]:
            pair = auth.issue()
            auth.born[pair.access_token] = int(born)
            issued.append({"access": pair.access_token, "refresh": pair.refresh_token})
        return {"tokens": issued}
    if op == "tick":
        auth.tick = int(command["value"])
        return {"tick": auth.tick}
    if op == "posts":
        return {
            "ids": api.add_posts(int(command["count"]), newest=datetime.now(UTC), spacing=timedelta(milliseconds=5))
        }
    if op == "report":
        with auth._lock:
            refreshes = [
                {"refresh_token": c.form.get("refresh_token"), "status": c.status}
                for c in auth.calls
                if c.grant_type == "refresh_token"
            ]
        with api._lock:
            searches = [r.status for r in api.searches]
        return {
            "refreshes": refreshes,
            "posts": [p["id"] for p in api.posts],
            "searches": len(searches),
            "refused": searches.count(401),
        }
    return {"error": f"unknown op {op!r}"}


def main(address: str) -> None:
    api = XApi(window_limit=10**9, remaining=10**9)
    with running(ClockedAuth(), host=address) as auth:
        assert isinstance(auth, ClockedAuth)
        api.tokens = LiveTokens(auth)  # type: ignore[assignment]
        api.start(host=address)
        try:
            print(json.dumps({"search": api.url, "token": auth.token_url, "client_id": auth.client_id}), flush=True)
            for line in sys.stdin:
                if line.strip():
                    print(json.dumps(answer(auth, api, json.loads(line))), flush=True)
        finally:
            api.stop()


if __name__ == "__main__":
    main(sys.argv[1])
