"""A deadline for each request's headers: a connection that sends nothing, or stops or trickles inside its
headers, is closed after serving.header_timeout_seconds instead of being held for ever.

Written here because nothing else does it: uvicorn's only timer, the keep-alive timeout, runs between
requests and every byte received resets it; ASGI middleware runs once the headers are complete; BentoML
passes uvicorn no protocol option. So the protocol class behind uvicorn's "auto" setting is wrapped, in each
worker, before its server starts (docs/decisions.md#http-limits). The body has BentoML's own timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.protocols.http.auto import AutoHTTPProtocol

LOG = logging.getLogger(__name__)
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HeaderDeadline(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol (httptools, or h11 without it) plus one timer per request's headers.

    Armed when the connection opens and when the bytes of a next request start arriving; disarmed once the
    protocol has begun a request cycle (its headers are parsed). Not reset by the bytes that arrive meanwhile.
    """

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._cycle_seen: Any = None
        self._bytes_waiting = False
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._between_requests():
            self._arm()  # a kept-alive connection's next request starts
        self._bytes_waiting = True
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._cycle_seen:
            self._cycle_seen = self.cycle
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or (self.cycle is self._cycle_seen and self.cycle.response_complete)

    def _arm(self) -> None:
        self._bytes_waiting = False
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._bytes_waiting:  # a request began but its headers never completed: say so before closing
            LOG.warning("closed a connection whose request headers took over %.0f s", self.header_timeout)
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()


def install(header_timeout: float) -> None:
    """uvicorn's "auto" HTTP protocol becomes the one with the deadline; call before the server starts."""
    HeaderDeadline.header_timeout = header_timeout
    HTTP_PROTOCOLS["auto"] = f"{__name__}:HeaderDeadline"
