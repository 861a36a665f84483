"""The asyncio client."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional, Sequence, Union

import grpc

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc as pb_grpc

from . import _requests, balancing
from ._common import (HEALTH_CHECK_METHOD, HEALTH_REQUEST, HEALTH_RESPONSE, UNSET, channel_credentials, health_status,
                      with_api_key)
from ._resume import ResumePolicy, StreamResume
from .client import Metadata
from .errors import SeedstreamError, UnavailableError, from_rpc_error
from .types import GenerateChunk, GenerateResult, HealthStatus, ModelInfo, RollingScore, ScoreResults, TokenizeResult


class AsyncGenerateStream:
    """Async iterator over a streamed completion's chunks.

    `async with client.generate_stream(...) as stream: async for chunk in stream: ...`
    Leaving the block, `cancel()`, cancelling the task that iterates, or
    dropping the object cancels the RPC; the server frees the slot. A stream broken
    by UNAVAILABLE resumes on its own where it broke (see Client and ResumePolicy).
    """

    def __init__(self, call, resume: Optional[StreamResume] = None, reopen=None):
        self._call = call
        self._finished = False
        self._resume = resume
        self._reopen = reopen  # async: StreamResume -> a new call, after backoff and waiting for the server
        self.resumes = 0

    def __aiter__(self) -> "AsyncGenerateStream":
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
                break
            except asyncio.CancelledError:
                self.cancel()
                raise
            except grpc.RpcError as exc:
                if not self._finished and self._resume is not None and self._resume.should_retry(exc):
                    try:
                        self._call = await self._reopen(self._resume, exc)
                    except BaseException:
                        self._finished = True  # the server did not come back in time
                        raise
                    self.resumes += 1
                    continue
                self._finished = True
                raise from_rpc_error(exc) from None
        if self._resume is not None:
            self._resume.seen(message)
        chunk = GenerateChunk.from_pb(message)
        if chunk.finish_reason is not None:
            self._finished = True
        return chunk

    async def seed(self) -> Optional[int]:
        """The seed used, from the response headers (available before the first token)."""
        try:
            for key, value in await self._call.initial_metadata() or ():
                if key == "seedstream-seed":
                    return int(value)
        except grpc.RpcError:
            return None
        return None

    def cancel(self) -> None:
        if not self._finished:
            self._call.cancel()
            self._finished = True

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, *exc) -> None:
        self.cancel()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass


class _StatusError(grpc.RpcError):
    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class AsyncClient:
    """asyncio seedstream client; same arguments and methods as Client, awaited.

        async with AsyncClient("localhost:50051") as client:
            result = await client.generate("Once upon a time", seed=42)
            async with client.generate_stream("Once upon a time", seed=42) as stream:
                async for chunk in stream:
                    print(chunk.text, end="")
    """

    def __init__(
        self,
        target: balancing.Target = None,
        *,
        timeout: Optional[float] = None,
        secure: bool = False,
        root_certificates: Union[bytes, str, None] = None,
        private_key: Union[bytes, str, None] = None,
        certificate_chain: Union[bytes, str, None] = None,
        credentials: Optional[grpc.ChannelCredentials] = None,
        metadata: Metadata = None,
        options: Optional[Sequence[tuple[str, Any]]] = None,
        api_key: Optional[str] = None,
        resume: Optional[ResumePolicy] = ResumePolicy(),
        load_balancing: Optional[str] = None,
        max_attempts: int = 1,
    ):
        target, from_list = balancing.channel_target(target)
        self.target = target or _requests.default_target()
        self.timeout = timeout
        self.metadata = with_api_key(metadata, api_key)
        self.resume = resume
        self._credentials = channel_credentials(credentials, secure, root_certificates, private_key, certificate_chain)
        self._options = _requests.channel_options(options) + balancing.channel_options(load_balancing, max_attempts, from_list)
        self._channel: Optional[grpc.aio.Channel] = None

    def _ensure(self):
        # Created on first use, inside the running event loop.
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._stub = pb_grpc.TextGenerationStub(self._channel)
            self._health = self._channel.unary_unary(
                HEALTH_CHECK_METHOD,
                request_serializer=HEALTH_REQUEST.SerializeToString,
                response_deserializer=HEALTH_RESPONSE.FromString,
            )
        return self._stub

    def _kwargs(self, timeout, metadata) -> dict:
        return {
            "timeout": self.timeout if timeout is UNSET else timeout,
            "metadata": _requests.metadata_pairs(self.metadata, metadata),
        }

    async def _unary(self, name: str, request, timeout, metadata):
        method = getattr(self._ensure(), name)
        try:
            return await method(request, **self._kwargs(timeout, metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def generate(self, prompt: Optional[str] = None, *, timeout=UNSET, metadata: Metadata = None,
                       **kwargs) -> GenerateResult:
        """Generate a whole completion (arguments as Client.generate)."""
        request = _requests.generate_request(prompt, **kwargs)
        return GenerateResult.from_pb(await self._unary("Generate", request, timeout, metadata))

    def generate_stream(self, prompt: Optional[str] = None, *, timeout=UNSET, metadata: Metadata = None,
                        resume=UNSET, **kwargs) -> AsyncGenerateStream:
        """Stream a completion (arguments as Client.generate_stream); iterate with `async for`."""
        request = _requests.generate_request(prompt, **kwargs)
        kw = self._kwargs(timeout, metadata)
        state = StreamResume(request, self.resume if resume is UNSET else resume, kw["timeout"])
        call = self._ensure().GenerateStream(request, **kw)

        async def reopen(state: StreamResume, error: grpc.RpcError):
            await asyncio.sleep(state.backoff())
            try:
                await self.wait_until_serving(timeout=state.server_wait())
            except SeedstreamError:
                raise from_rpc_error(error) from None
            return self._ensure().GenerateStream(state.next_request(), timeout=state.remaining(), metadata=kw["metadata"])

        return AsyncGenerateStream(call, state, reopen)

    async def generate_batch(self, prompts: Sequence[Any], *, concurrency: int = 8, timeout=UNSET,
                             metadata: Metadata = None, **kwargs) -> list[GenerateResult]:
        """generate() for each prompt, `concurrency` at a time; results in order (as Client.generate_batch)."""
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency}: must be >= 1")
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt):
            extra = _requests.batch_item(prompt)
            async with gate:
                return await self.generate(timeout=timeout, metadata=metadata, **{**kwargs, **extra})

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def score(self, pairs: Sequence[_requests.Pair], *, truncate_context: bool = False, request_id: str = "",
                    timeout=UNSET, metadata: Metadata = None) -> ScoreResults:
        """Log-likelihood of (context, continuation) pairs (as Client.score)."""
        request = _requests.score_request(pairs, truncate_context=truncate_context, request_id=request_id)
        return ScoreResults.from_pb(await self._unary("Score", request, timeout, metadata))

    async def score_rolling(self, text: Optional[str] = None, *, token_ids: Optional[Sequence[int]] = None,
                            max_length: Optional[int] = None, request_id: str = "", timeout=UNSET,
                            metadata: Metadata = None) -> RollingScore:
        """Rolling log-likelihood of a text (as Client.score_rolling)."""
        request = _requests.score_rolling_request(text, token_ids=token_ids, max_length=max_length, request_id=request_id)
        return RollingScore.from_pb(await self._unary("ScoreRolling", request, timeout, metadata))

    async def tokenize(self, text: Optional[str] = None, *, messages=None, add_special_tokens: Optional[bool] = None,
                       timeout=UNSET, metadata: Metadata = None) -> TokenizeResult:
        request = _requests.tokenize_request(text, messages=messages, add_special_tokens=add_special_tokens)
        response = await self._unary("Tokenize", request, timeout, metadata)
        return TokenizeResult(tuple(response.token_ids), tuple(response.tokens))

    async def model_info(self, *, timeout=UNSET, metadata: Metadata = None) -> ModelInfo:
        return ModelInfo.from_pb(await self._unary("GetModelInfo", pb.GetModelInfoRequest(), timeout, metadata))

    async def health(self, service: str = "", *, timeout=UNSET) -> HealthStatus:
        self._ensure()
        try:
            response = await self._health(HEALTH_REQUEST(value=service), **self._kwargs(timeout, None))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from None
        return health_status(response)

    async def wait_until_serving(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = await self.health(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                if last is HealthStatus.SERVING:
                    return
            except SeedstreamError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise UnavailableError(f"{self.target} not serving after {timeout:.0f}s (last: {last})")
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
