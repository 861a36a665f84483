"""The wrapper every RPC handler runs in: one log line, errors mapped in one place, deadlines.

- A request that did not parse (decoding.MalformedRequest) gets INVALID_ARGUMENT and one WARNING line.
- The whole call counts as in flight (so a drain waits for calls still tokenizing).
- The call may run until the earlier of the client's deadline and the server's maximum deadline
  (--max-deadline); past it the handler is cancelled (its sequences freed) and the call ends with
  DEADLINE_EXCEEDED. A deadline expiry is logged as DEADLINE_EXCEEDED, a client cancel as CANCELLED.
- Where the server exports metrics, the call is recorded once, with the status its log line names; the
  log record carries the call's fields as `extra={"request": ...}` for --log-format json.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar

import grpc

from seedstream.server.engine.types import ParamError

from .auth import CLIENT_NAME
from .decoding import MalformedRequest
from .errors import abort_with, status_for

if TYPE_CHECKING:
    from typing import TypeAlias

    from seedstream.server.service.metrics import ServiceMetrics
    from seedstream.server.service.state import ServiceState

    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class _Servicer(Protocol):
    state: ServiceState


_S = TypeVar("_S", bound=_Servicer)
_Response = TypeVar("_Response")

log = logging.getLogger("seedstream.server")

# A cancel this close to the call's deadline is the deadline's doing: the client's own timer fires
# first and its cancel reaches us before our copy of the deadline (which starts on arrival) expires.
DEADLINE_SLACK_S = 0.25


class Call:
    """Per-call facts: the one log line (and metrics) each request gets, the client's identity, the deadline."""

    def __init__(
        self, rpc: str, context: Context, max_deadline: float | None, metrics: ServiceMetrics | None = None
    ) -> None:
        self.rpc = rpc
        self.context = context
        self.metrics = metrics  # a metrics.ServiceMetrics, or None when the server exports none
        self.started = time.monotonic()
        self.request_id = ""
        self.fields: dict[str, Any] = {}
        self.first_token_at: float | None = None
        self._last_token_at: dict[int, float] = {}  # per sample, for inter-token latency
        self.key_id = CLIENT_NAME.get()  # the authenticated API key's name; empty without --api-key-file
        self.client = self.key_id or peer_host(context.peer())
        remaining = context.time_remaining()
        server_limit = max_deadline or None  # 0 or None: no server limit
        self.client_deadline = None if remaining is None else self.started + remaining
        limits = [t for t in (remaining, server_limit) if t is not None]
        self.limit = min(limits) if limits else None  # seconds this call may run
        self.server_cut = server_limit is not None and (remaining is None or server_limit < remaining)
        self.writing = False  # a stream is waiting for its client to take a message

    def tokens_arrived(self, sample: int, count: int) -> None:
        """`count` tokens of sample `sample` reached the handler (time to first token, inter-token)."""
        if not count:
            return
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
            if self.metrics is not None:
                self.metrics.observe_first_token(self.rpc, now - self.started)
        last = self._last_token_at.get(sample)
        if last is not None and self.metrics is not None:
            self.metrics.observe_inter_token(self.rpc, (now - last) / count, count)
        self._last_token_at[sample] = now

    def log_line(self, status: str, outcome: str | None = None) -> None:
        """The request ended with `status` (a grpc.StatusCode name): one log line, and metrics (`outcome`
        overrides the one the status implies: `dropped` for a stream whose client stopped reading)."""
        elapsed = time.monotonic() - self.started
        parts = [f"rpc={self.rpc}", f"id={self.request_id or '-'}"]
        parts += [f"{k}={v}" for k, v in self.fields.items()]
        parts.append(f"client={self.client}")
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        if ttft is not None:
            parts.append(f"ttft={ttft:.3f}s")
        parts += [f"time={elapsed:.3f}s", f"status={status}"]
        record = {
            "rpc": self.rpc,
            "request_id": self.request_id,
            "key_id": self.key_id,
            "client": self.client,
            **self.fields,
            "ttft_s": None if ttft is None else round(ttft, 6),
            "time_s": round(elapsed, 6),
            "status": status,
        }
        log.info(" ".join(parts), extra={"request": record})  # --log-format json writes `record` as is
        if self.metrics is not None:
            self.metrics.observe_request(self.rpc, status, elapsed, self.fields, outcome)

    def remaining(self) -> float | None:
        return None if self.limit is None else self.started + self.limit - time.monotonic()

    def cancel_reason(self) -> str:
        near = self.client_deadline is not None and time.monotonic() >= self.client_deadline - DEADLINE_SLACK_S
        return "DEADLINE_EXCEEDED" if near else "CANCELLED"

    async def deadline_passed(self, dropped: bool = False) -> None:
        """Time is up: DEADLINE_EXCEEDED; `dropped`: while waiting for the client to read (metrics: DROPPED)."""
        if dropped:
            self.fields["dropped"] = "client-not-reading"
        self.log_line("DEADLINE_EXCEEDED", outcome="dropped" if dropped else None)
        which = "the server's maximum deadline (--max-deadline)" if self.server_cut else "the call's deadline"
        if dropped:  # the status queues behind messages the client does not take: do not wait for it
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{which} passed"), 1.0)
            return
        await self.context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{which} of {self.limit:.1f}s passed")

    async def malformed(self, request: MalformedRequest) -> NoReturn:
        log.warning(
            "rpc=%s client=%s status=INVALID_ARGUMENT malformed request (%s): %s",
            self.rpc,
            self.client,
            request.message_type,
            request.reason,
        )
        if self.metrics is not None:
            self.metrics.observe_request(self.rpc, "INVALID_ARGUMENT", time.monotonic() - self.started, {})
        await abort_with(
            self.context,
            ParamError("request", f"cannot be parsed as {request.message_type}: {request.reason}"),
            self.rpc,
        )

    async def failed(self, exc: Exception) -> NoReturn:
        self.log_line(status_for(exc)[0].name)
        await abort_with(self.context, exc, self.rpc, self.request_id)


def peer_host(peer: str) -> str:
    """'ipv4:10.0.0.7:53412' -> 'ipv4:10.0.0.7': a client's identity when there is no API key, so that
    opening more connections does not buy a bigger share."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer or "unknown"


def _timed_out(call: Call) -> bool:
    remaining = call.remaining()
    return remaining is not None and remaining <= 0


def guard_unary(
    rpc: str,
) -> Callable[
    [Callable[[_S, Any, Context, Call], Awaitable[_Response]]],
    Callable[[_S, Any, Context], Coroutine[Any, Any, _Response | None]],
]:
    """Wrap a unary handler `fn(self, request, context, call)`."""

    def deco(
        fn: Callable[[_S, Any, Context, Call], Awaitable[_Response]],
    ) -> Callable[[_S, Any, Context], Coroutine[Any, Any, _Response | None]]:
        @functools.wraps(fn)
        async def wrapper(self: _S, request: Any, context: Context) -> _Response | None:
            call = Call(rpc, context, self.state.options.limits.max_deadline, self.state.metrics)
            if isinstance(request, MalformedRequest):
                return await call.malformed(request)
            with self.state.track():
                try:
                    work = fn(self, request, context, call)
                    response = await (asyncio.wait_for(work, call.limit) if call.limit is not None else work)
                except asyncio.TimeoutError as exc:
                    await (call.deadline_passed() if _timed_out(call) else call.failed(exc))
                except asyncio.CancelledError:
                    call.log_line(call.cancel_reason())
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await call.failed(exc)
                else:
                    call.log_line("OK")
                    return response
            return None  # not reached: every other path ends the call with a status (context.abort raises)

        return wrapper

    return deco


def guard_stream(
    rpc: str,
) -> Callable[
    [Callable[[_S, Any, Context, Call], AsyncGenerator[_Response, None]]],
    Callable[[_S, Any, Context], Coroutine[Any, Any, None]],
]:
    """Wrap a server-streaming handler `fn(self, request, context, call)` (an async generator).

    The wrapper writes the messages itself (`context.write`), so the call's deadline covers writing
    them too: a client that stops reading blocks a write, and at the deadline the call is ended, its
    sequences freed, and it is logged DEADLINE_EXCEEDED and counted as outcome `dropped`."""

    def deco(
        fn: Callable[[_S, Any, Context, Call], AsyncGenerator[_Response, None]],
    ) -> Callable[[_S, Any, Context], Coroutine[Any, Any, None]]:
        @functools.wraps(fn)
        async def wrapper(self: _S, request: Any, context: Context) -> None:
            call = Call(rpc, context, self.state.options.limits.max_deadline, self.state.metrics)
            if isinstance(request, MalformedRequest):
                await call.malformed(request)
                return
            with self.state.track():
                messages = fn(self, request, context, call)
                try:
                    remaining = call.remaining()
                    pumping = _pump(messages, context, call)
                    await (asyncio.wait_for(pumping, max(remaining, 0)) if remaining is not None else pumping)
                except asyncio.TimeoutError as exc:
                    if not _timed_out(call):
                        await call.failed(exc)
                    elif call.writing:
                        await messages.aclose()  # free the sequences first: ending the call may wait
                        await call.deadline_passed(dropped=True)
                    else:
                        await call.deadline_passed()
                except asyncio.CancelledError:
                    call.log_line(call.cancel_reason())
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    if not (call.writing and _connection_lost(context, exc)):
                        await call.failed(exc)
                    call.log_line("CANCELLED")  # the client went away while we wrote: not our error
                else:
                    call.log_line("OK")
                finally:
                    await messages.aclose()  # frees the sequences if we leave early

        return wrapper

    return deco


def _connection_lost(context: Context, exc: Exception) -> bool:
    """A write failed because the call is over on the wire: the client cancelled, or its connection was
    closed (a keepalive ping it never answered). grpc-core then fails the send batch (its ExecuteBatchError)
    before the handler sees a cancel, depending on timing."""
    return context.cancelled() or type(exc).__module__.startswith("grpc._cython")


async def _pump(messages: AsyncIterator[Any], context: Context, call: Call) -> None:
    """Write every message; `call.writing` says whether a write (not the engine) is what we wait for."""
    async for message in messages:
        call.writing = True
        await context.write(message)
        call.writing = False
