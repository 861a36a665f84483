"""The state both fronts serve from (the engine once loaded, the options, in-flight accounting), and
running a request's CPU work off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import Unavailable
from .inputs import RequestLimits
from .receipts import ReceiptSigner

if TYPE_CHECKING:
    from seedstream.server.engine import Engine

    from .metrics import ServiceMetrics

T = TypeVar("T")

# Requests bigger than this many bytes (or characters) are tokenized, rendered, windowed or decoded on a
# worker thread so the event loop keeps streaming other requests meanwhile.
THREAD_REQUEST_BYTES = 8192


@dataclasses.dataclass
class ServiceOptions:
    default_max_new_tokens: int = 256  # used when a request leaves max_new_tokens unset
    server_version: str = "unknown"
    limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    signer: ReceiptSigner | None = None  # --receipt-signing-key: gRPC receipts carry a signature


class ServiceState:
    """What the handlers need: the engine once loaded, and whether we are draining."""

    def __init__(self, engine: Engine | None = None, options: ServiceOptions | None = None):
        self.engine = engine
        self.options = options or ServiceOptions()
        self.draining = False
        self.in_flight = 0
        self.metrics: ServiceMetrics | None = None  # set when the server exports metrics
        self._idle = asyncio.Event()
        self._idle.set()

    def ready_engine(self) -> Engine:
        if self.draining:
            raise Unavailable("the server is shutting down")
        if self.engine is None:
            raise Unavailable("the model is still loading")
        return self.engine

    def input_caps(self, engine: Engine) -> tuple[int, int]:
        """(characters, tokens) one request may carry."""
        limits, context = self.options.limits, engine.info.max_context
        return limits.chars(context), limits.tokens(context)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


async def maybe_threaded(size: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on a worker thread when `size` (bytes or characters of input) is big enough for its CPU
    work to stall the loop; inline otherwise (a thread hop costs more than small work)."""
    if size > THREAD_REQUEST_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)
