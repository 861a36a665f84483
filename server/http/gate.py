"""The HTTP front's connection gate: caps on open connections (overall and per client address), and a
deadline on each request's headers, enforced below aiohttp on the raw protocol.

Why below aiohttp: aiohttp has no header timeout and no connection cap, so a client trickling headers
over 1,000 connections holds as many file descriptors for as long as it likes, and once the process runs
out of them every new connection, gRPC's included, fails. The gate wraps each connection's protocol: a
connection over the per-address cap is answered `503` and closed before aiohttp sees a byte, and one whose
headers do not end within `header_timeout` seconds (from its first byte, or from the end of the previous
response on a kept-alive connection) is closed. Bodies have their own deadline where the handler reads them
(front.py).

At the overall cap a newcomer is not refused while some open connection is still waiting for its request
headers: the one that has waited longest is closed to make room. A slowloris from many addresses, each under
the per-address cap, would otherwise fill the overall cap and shut every other client out for as long as it
likes; this way it only evicts itself, and a newcomer is refused (`503`) only when every open connection is
being served.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from aiohttp import web

if TYPE_CHECKING:
    import ssl

from seedstream.server.settings import ServeOptions as _Flags

log = logging.getLogger("seedstream.server.http")

_REFUSAL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_END_OF_HEADERS = b"\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """The HTTP front's limits (seconds, bytes, connections); the defaults are the `seedstream serve` flags'."""

    max_connections: int = _Flags.http_max_connections
    max_connections_per_client: int = _Flags.http_max_connections_per_client
    header_timeout: float = _Flags.http_header_timeout
    body_timeout: float = _Flags.http_body_timeout
    max_body_bytes: int = _Flags.http_max_body_bytes
    stall_timeout: float = _Flags.http_stall_timeout

    @classmethod
    def from_options(cls, options: _Flags) -> HttpLimits:
        """From ServeOptions (its `http_*` fields)."""
        return cls(**{f.name: getattr(options, "http_" + f.name) for f in dataclasses.fields(cls)})


class ConnectionGate:
    """Counts open connections by client address and hands out gated protocols."""

    def __init__(self, limits: HttpLimits):
        self.limits = limits
        self.open = 0
        self.by_client: collections.Counter[str] = collections.Counter()
        self.refused = 0  # connections closed at once for a cap
        self.timed_out = 0  # connections closed for slow headers
        self.evicted = 0  # connections waiting for headers, closed at the overall cap to admit a newcomer
        self.by_transport: dict[asyncio.BaseTransport, GatedProtocol] = {}  # for the middleware
        # Admitted connections waiting for request headers, the longest-waiting first (dicts keep order).
        self.waiting: dict[GatedProtocol, None] = {}

    def request_done(self, transport: asyncio.BaseTransport | None) -> None:
        """A response on `transport` is written: its next request's headers get a deadline of their own."""
        protocol = self.by_transport.get(transport) if transport is not None else None
        if protocol is not None:
            protocol.request_done()

    def admit(self, client: str) -> bool:
        if self.open >= self.limits.max_connections and self.by_client[client] < self.limits.max_connections_per_client:
            self._evict_longest_waiting(client)
        if self.open >= self.limits.max_connections or self.by_client[client] >= self.limits.max_connections_per_client:
            self.refused += 1
            log.warning(
                "http connection refused: %d open (max %d), %d from %s (max %d)",
                self.open,
                self.limits.max_connections,
                self.by_client[client],
                client,
                self.limits.max_connections_per_client,
            )
            return False
        self.open += 1
        self.by_client[client] += 1
        return True

    def _evict_longest_waiting(self, newcomer: str) -> None:
        """Close the connection that has waited longest for its request headers, if any, to make room."""
        if not self.waiting:
            return
        victim = next(iter(self.waiting))
        self.evicted += 1
        log.warning(
            "http connection from %s closed: %d connections open (max %d), it had sent no complete request "
            "headers for the longest, and %s is waiting to connect",
            victim.client,
            self.open,
            self.limits.max_connections,
            newcomer,
        )
        victim.close_now()  # released here: its connection_lost comes later, on the next loop turn

    def release(self, client: str) -> None:
        self.open -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]

    def factory(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], GatedProtocol]:
        return lambda: GatedProtocol(self, make_protocol())


class GatedProtocol(asyncio.Protocol):
    """aiohttp's protocol behind the gate: refused over a cap, closed when headers are too slow."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self.gate = gate
        self.inner = inner
        self.client = ""
        self.admitted = False
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find an end of headers split over two reads
        self.in_request = False  # headers complete; the response is not finished yet
        self.counted = False  # holds a place in the gate's counts (admitted, not yet released)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = self.transport = cast("asyncio.Transport", transport)  # a stream's: TCP or TLS
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else str(peer)
        if not self.gate.admit(self.client):
            transport.write(_REFUSAL)
            transport.close()
            return
        self.admitted = True
        self.counted = True
        self.gate.by_transport[transport] = self  # the middleware finds us through request.transport
        self.inner.connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        """Wait for request headers: a deadline, and a place at the end of the gate's waiting line."""
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.gate.limits.header_timeout, self._headers_too_slow)
        self.gate.waiting[self] = None

    def _cancel_timer(self) -> None:
        self.gate.waiting.pop(self, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        """Give back this connection's place in the gate's counts (once)."""
        self._cancel_timer()
        if self.counted:
            self.counted = False
            self.gate.release(self.client)

    def close_now(self) -> None:
        """Evicted: the place is free at once, and the transport is aborted."""
        self._release()
        if self.transport is not None:
            self.transport.abort()

    def _headers_too_slow(self) -> None:
        self._timer = None
        if self.in_request or self.transport is None or self.transport.is_closing():
            return
        self.gate.timed_out += 1
        log.warning(
            "http connection from %s closed: no complete request headers within %gs",
            self.client,
            self.gate.limits.header_timeout,
        )
        self.transport.abort()

    def request_done(self) -> None:
        """The response is written: the next request's headers get their own deadline."""
        self.in_request = False
        self._tail = b""
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if not self.in_request:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self.in_request = True
                self._cancel_timer()
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self.admitted:
            self.admitted = False
            if self.transport is not None:  # set by connection_made, which admitted it
                self.gate.by_transport.pop(self.transport, None)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


class GatedSite(web.TCPSite):
    """TCPSite whose connections pass through a ConnectionGate (aiohttp's own start, one factory changed)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        gate: ConnectionGate,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self.gate = gate

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.gate.factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            # a TLS handshake is part of a request's headers: the same deadline
            ssl_handshake_timeout=self.gate.limits.header_timeout if self._ssl_context else None,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
