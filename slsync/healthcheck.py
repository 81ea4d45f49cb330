"""A dead man's switch for the cron job (SLSYNC_HEALTHCHECK_URL): `sync due` pings URL/start as it begins, and URL
(success) or URL/fail (any other exit) as it ends, the healthchecks.io convention that Cronitor, Better Stack and
others accept too. The service raises an alarm when the pings stop or say fail, so a cron job that silently no
longer runs is noticed.

A ping never fails or delays the sync for long: it has a short timeout, the start ping goes out beside the sync,
and a ping that fails is one warning line. The URL holds the check's secret id and is never printed.
"""

from __future__ import annotations

import logging
import threading
import uuid

import httpx

log = logging.getLogger("slsync.healthcheck")

# seconds one ping may take in all
TIMEOUT_SECONDS = 5.0
# the most of the run's summary sent with its last ping (the service shows it beside the ping)
BODY_LIMIT = 10_000


class Pinger:
    """The pings of one run, paired by a run id (`rid`) so the service measures the run's duration."""

    def __init__(self, url: str) -> None:
        self._url = url.rstrip("/")
        self._rid = str(uuid.uuid4())
        self._start: threading.Thread | None = None

    def start(self) -> None:
        self._start = threading.Thread(target=self._ping, args=("/start", None), name="slsync-healthcheck", daemon=True)
        self._start.start()

    def finish(self, exit_code: int, body: str | None = None) -> None:
        if self._start is not None:
            self._start.join(TIMEOUT_SECONDS)  # the start first, as the service expects
        self._ping("" if exit_code == 0 else "/fail", body)

    def _ping(self, suffix: str, body: str | None) -> None:
        what = {"/start": "start", "": "success", "/fail": "fail"}[suffix]
        try:
            with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=True) as client:
                response = client.post(
                    self._url + suffix, params={"rid": self._rid}, content=(body or "")[:BODY_LIMIT].encode()
                )
        except httpx.HTTPError as exc:
            log.warning("the healthcheck %s ping failed (%s); the sync goes on regardless", what, type(exc).__name__)
            return
        if response.status_code >= 400:
            log.warning(
                "the healthcheck %s ping was refused (HTTP %d); the sync goes on regardless", what, response.status_code
            )
