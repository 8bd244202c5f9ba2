"""Bounds on clients that connect and then send their request too slowly (slowloris).

uvicorn closes a keep-alive connection that stays silent after a response, but it has no
deadline for a request's headers: a client that opens a connection and sends one header
byte every few seconds holds it forever, and enough of them exhaust the server's sockets.
``HeaderDeadlineProtocol`` is uvicorn's h11 protocol with that deadline: a request's line and
headers must arrive complete within ``HEADER_SECONDS`` of the connection opening, or of the
previous response on a kept-alive connection, else the connection is closed. Headers are
also capped in size (``MAX_HEADER_BYTES``). Bodies are not bounded in time here (a large
upload over a slow link is legitimate); they are bounded in size by ``BodyGuard``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_SECONDS = 10.0
MAX_HEADER_BYTES = 64 * 1024
KEEP_ALIVE_SECONDS = 5
UVICORN_LIMITS: dict[str, Any] = {
    "timeout_keep_alive": KEEP_ALIVE_SECONDS,
    "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
}
"""Keyword arguments for ``uvicorn.run`` besides ``http=HeaderDeadlineProtocol``."""


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are too slow."""

    header_seconds = HEADER_SECONDS
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # the request's headers are complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the next request on this connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_seconds, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
