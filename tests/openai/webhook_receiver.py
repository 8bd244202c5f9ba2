"""A local HTTP endpoint that records webhook deliveries, for the OpenAI API tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai


class Receiver:
    """Records every delivery; with ``fail_first`` it answers 500 to the first one."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append((dict(self.headers.items()), body))
                refused = fail_first and len(receiver.received) == 1
                self.send_response(500 if refused else 204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, client: openai.OpenAI, secret: str) -> list[Any]:
        """Every delivery, verified and parsed by the SDK's ``client.webhooks.unwrap``."""
        return [
            client.webhooks.unwrap(body, headers, secret=secret) for headers, body in self.received
        ]
