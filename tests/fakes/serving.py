"""What every loopback stand-in shares: an HTTP server on a free port of 127.0.0.1 (or of the address a test
gives, as on a network namespace's interface), and a quiet handler."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # sync due's workers connect at once; the default backlog of 5 would refuse some


def serve(handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Answer with `handler` from a daemon thread until `shutdown`."""
    server = _Server((host, 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def base_url(server: ThreadingHTTPServer | None) -> str:
    assert server is not None, "the stand-in is not started"
    return f"http://{server.server_address[0]}:{server.server_port}"


def shutdown(server: ThreadingHTTPServer | None) -> None:
    if server:
        server.shutdown()
        server.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    # headers and body leave in two writes: without this, Nagle holds the second ~40 ms
    disable_nagle_algorithm = True

    def send_body(
        self,
        status: int,
        payload: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json; charset=UTF-8",
    ) -> None:
        """`headers` may replace Content-Type, or Content-Length to announce a body that never comes whole."""
        headers = {"Content-Type": content_type, "Content-Length": str(len(payload)), **(headers or {})}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        """Quiet: test output stays readable."""
