"""The asyncio client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from seedstream.v1 import textgen_pb2 as pb

from . import _requests
from ._common import HEALTH_REQUEST, UNSET, Metadata, _Unset, health_status
from ._core import (
    ClientCore,
    ServingWait,
    StreamCore,
    Timeout,
    check_concurrency,
    health_from_error,
    seed_from,
    write_record,
)
from ._resume import ResumePolicy, StreamResume
from .errors import SeedstreamError, from_rpc_error
from .transcript import TranscriptArg, identity_of, record_for
from .types import GenerateChunk, GenerateResult, HealthStatus, ModelInfo, RollingScore, ScoreResults, TokenizeResult

if TYPE_CHECKING:
    from seedstream.v1 import textgen_pb2_grpc as pb_grpc

    from .options import GenerateOptions, Message, Unpack


class AsyncGenerateStream(StreamCore):
    """Async iterator over a streamed completion's chunks.

    `async with client.generate_stream(...) as stream: async for chunk in stream: ...`
    Leaving the block, `cancel()`, cancelling the task that iterates, or
    dropping the object cancels the RPC; the server frees the slot. A stream broken
    by UNAVAILABLE resumes on its own where it broke (see Client and ResumePolicy); one
    refused as overloaded before its first message is sent again (see Client).
    """

    def __aiter__(self) -> AsyncGenerateStream:
        return self

    async def __anext__(self) -> GenerateChunk:
        if self._finished:
            raise StopAsyncIteration
        while True:
            try:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    code = await self._call.code()
                    if code != grpc.StatusCode.OK:
                        raise _StatusError(code, await self._call.details())
                    self._finished = True
                    raise StopAsyncIteration
                chunk = self._chunk(message)
                await self._write_record()
                return chunk
            except asyncio.CancelledError:
                self.cancel()
                raise
            except grpc.RpcError as exc:
                wait = self._overload_wait(exc)
                if wait is not None:
                    self._keep_seed(await self.seed())
                    await asyncio.sleep(wait)
                    self._call = self._restart(self._resume)
                    self.retries += 1
                    continue
                if not self._can_resume(exc):
                    self._failed(exc)
                with self._reopening():
                    self._call = await self._reopen(self._resume, exc)

    async def _write_record(self) -> None:
        record = self._finished_record()
        if record is not None and self._record_sink is not None:
            write_record(self._record_sink, record, await self._identity())

    async def seed(self) -> int | None:
        """The seed used, from the response headers (available before the first token)."""
        try:
            return seed_from(await self._call.initial_metadata())
        except grpc.RpcError:
            return None

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> AsyncGenerateStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class _StatusError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str | None):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


class AsyncClient(ClientCore):
    """asyncio seedstream client; same arguments and methods as Client, awaited.

        async with AsyncClient("localhost:50051") as client:
            result = await client.generate("Once upon a time", seed=42)
            async with client.generate_stream("Once upon a time", seed=42) as stream:
                async for chunk in stream:
                    print(chunk.text, end="")

    Constructor arguments: see ClientCore.__init__. Generation options: see GenerateOptions.
    """

    def _prepare_channel(self) -> None:
        self._channel: grpc.aio.Channel | None = None

    def _ensure(self) -> pb_grpc.TextGenerationStub:
        # Created on first use, inside the running event loop.
        if self._channel is None:
            self._channel, self._stub, self._health = self._open_channel(grpc.aio)
        return self._stub

    async def _unary(self, name: str, request: Any, timeout: Timeout, metadata: Metadata) -> Any:
        """One unary call, sent again while the server refuses it as overloaded (see max_retries)."""
        method = getattr(self._ensure(), name)
        options = self._call_options(timeout, metadata)
        attempts = self.overload_retry.attempts(options["timeout"])
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=options["metadata"])
            except grpc.RpcError as exc:
                wait = attempts.wait(exc)
                if wait is None:
                    raise from_rpc_error(exc) from None
            await asyncio.sleep(wait)

    async def _recorded(
        self, rpc: str, request: Any, timeout: Timeout, metadata: Metadata, transcript: TranscriptArg | _Unset
    ) -> Any:
        """One unary call whose request and response go to the call's transcript (if any) as a record."""
        response = await self._unary(rpc, request, timeout, metadata)
        sink = self._sink(transcript)
        if sink[0] is not None:
            write_record(sink, record_for(rpc, request, response), await self._server_identity())
        return response

    async def _server_identity(self) -> dict[str, str]:
        """The server's build fields for transcript records (GetModelInfo, asked once per client)."""
        if self._identity is None:
            self._identity = identity_of(await self._unary("GetModelInfo", pb.GetModelInfoRequest(), UNSET, None))
        return self._identity

    async def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> GenerateResult:
        """Generate a whole completion (arguments as Client.generate)."""
        request = _requests.generate_request(prompt, **options)
        return GenerateResult.from_pb(await self._recorded("Generate", request, timeout, metadata, transcript))

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        resume: ResumePolicy | None | _Unset = UNSET,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> AsyncGenerateStream:
        """Stream a completion (arguments as Client.generate_stream); iterate with `async for`."""
        request = _requests.generate_request(prompt, **options)
        call_options, state, attempts = self._stream_start(request, timeout, metadata, resume)
        call = self._ensure().GenerateStream(request, **call_options)

        def restart(state: StreamResume) -> Any:
            return self._ensure().GenerateStream(
                state.next_request(), timeout=attempts.remaining(), metadata=call_options["metadata"]
            )

        async def reopen(state: StreamResume, error: grpc.RpcError) -> Any:
            await asyncio.sleep(state.backoff())
            try:
                await self.wait_until_serving(timeout=state.server_wait())
            except SeedstreamError:
                raise from_rpc_error(error) from None
            return self._ensure().GenerateStream(
                state.next_request(), timeout=state.remaining(), metadata=call_options["metadata"]
            )

        stream = AsyncGenerateStream(call, state, reopen, attempts, restart)
        stream._record_to(request, self._sink(transcript), self._server_identity)
        return stream

    async def generate_batch(
        self,
        prompts: Sequence[Any],
        *,
        concurrency: int = 8,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> list[GenerateResult]:
        """generate() for each prompt, `concurrency` at a time; results in order (as Client.generate_batch)."""
        check_concurrency(concurrency)
        gate = asyncio.Semaphore(concurrency)
        sink, owned = self._sink(transcript)

        async def one(prompt: Any) -> GenerateResult:
            item = {**options, **_requests.batch_item(prompt)}
            async with gate:
                return await self.generate(timeout=timeout, metadata=metadata, transcript=sink, **item)

        try:
            return list(await asyncio.gather(*(one(p) for p in prompts)))
        finally:
            if owned and sink is not None:
                sink.close()

    async def score(
        self,
        pairs: Sequence[_requests.Pair],
        *,
        truncate_context: bool = False,
        request_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
    ) -> ScoreResults:
        """Log-likelihood of (context, continuation) pairs (as Client.score)."""
        request = _requests.score_request(pairs, truncate_context=truncate_context, request_id=request_id)
        return ScoreResults.from_pb(await self._recorded("Score", request, timeout, metadata, transcript))

    async def score_rolling(
        self,
        text: str | None = None,
        *,
        token_ids: Sequence[int] | None = None,
        max_length: int | None = None,
        request_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
    ) -> RollingScore:
        """Rolling log-likelihood of a text (as Client.score_rolling)."""
        request = _requests.score_rolling_request(
            text, token_ids=token_ids, max_length=max_length, request_id=request_id
        )
        return RollingScore.from_pb(await self._recorded("ScoreRolling", request, timeout, metadata, transcript))

    async def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Iterable[Message] | None = None,
        add_special_tokens: bool | None = None,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
    ) -> TokenizeResult:
        """Token ids of a text or chat (as Client.tokenize)."""
        request = _requests.tokenize_request(text, messages=messages, add_special_tokens=add_special_tokens)
        return TokenizeResult.from_pb(await self._unary("Tokenize", request, timeout, metadata))

    async def model_info(self, *, timeout: Timeout = UNSET, metadata: Metadata = None) -> ModelInfo:
        """The loaded model and the server's limits (as Client.model_info)."""
        return ModelInfo.from_pb(await self._unary("GetModelInfo", pb.GetModelInfoRequest(), timeout, metadata))

    async def health(self, service: str = "", *, timeout: Timeout = UNSET) -> HealthStatus:
        """grpc.health.v1 status (as Client.health)."""
        self._ensure()
        try:
            return health_status(await self._health(HEALTH_REQUEST(value=service), **self._call_options(timeout, None)))
        except grpc.RpcError as exc:
            return health_from_error(exc)

    async def wait_until_serving(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        """Wait until health is SERVING; raises UnavailableError after `timeout` seconds."""
        wait = ServingWait(self.target, timeout)
        while not wait.serving(await self._probe(wait.probe_timeout())):
            await asyncio.sleep(interval)

    async def _probe(self, timeout: float) -> HealthStatus | SeedstreamError:
        try:
            return await self.health(timeout=timeout)
        except SeedstreamError as exc:
            return exc

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
