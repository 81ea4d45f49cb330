"""`slsync connect` driven as an operator would: the real CLI in a subprocess, an HTTP client as the browser."""

from __future__ import annotations

import queue
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.conftest import Cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Running:
    """A background `slsync connect`, its stdout read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.stdout: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def url(self, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                raise AssertionError(f"slsync connect ended without printing a URL: {self.finish()}")
            self.stdout.append(line)
            if line.startswith("http"):
                return line.rstrip("\n")

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        assert self.process.stderr is not None
        self.process.wait(timeout)
        while (line := self.lines.get(timeout=5)) is not None:
            self.stdout.append(line)
        return self.process.returncode, "".join(self.stdout), self.process.stderr.read()


def start(cli: Cli, *args: str) -> Running:
    return Running(cli.popen("connect", *args))


def browse(url: str, *, timeout: float = 10) -> httpx.Response:
    """Play the browser: open `url` and follow the consent page's redirect to the loopback callback."""
    with httpx.Client(trust_env=False, timeout=timeout, follow_redirects=False) as browser:
        response = browser.get(url)
        if response.status_code in (301, 302, 303, 307):
            response = browser.get(response.headers["Location"])
        return response


def connect_in_browser(cli: Cli, source_id: int, *, timeout: float = 20) -> tuple[int, str, str, httpx.Response]:
    """`slsync connect SOURCE_ID --no-browser` with the consent given at once: exit code, stdout, stderr, page."""
    running = start(cli, str(source_id), "--no-browser", "--port", str(free_port()), "--timeout", str(timeout))
    page = browse(running.url())
    code, stdout, stderr = running.finish()
    return code, stdout, stderr, page
