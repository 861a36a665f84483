"""The blocking client."""

from __future__ import annotations

import concurrent.futures
import time
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
    from .options import GenerateOptions, Message, Unpack

__all__ = ["Client", "GenerateStream", "Metadata"]


class GenerateStream(StreamCore):
    """Iterator over a streamed completion's chunks.

    Breaking out of the loop, leaving a `with` block, `cancel()`, or dropping the
    object cancels the RPC, and the server frees the sequence's slot. When the
    call fails with UNAVAILABLE (server restart, dropped connection), the stream
    resumes on its own where it broke (see ResumePolicy): the iterator goes on
    with the next token, as if nothing had happened. `resumes` counts the times.
    A stream the server refused as overloaded (RESOURCE_EXHAUSTED) before its
    first message is sent again (the client's max_retries); `retries` counts those.
    """

    def __iter__(self) -> GenerateStream:
        return self

    def __next__(self) -> GenerateChunk:
        while True:
            try:
                chunk = self._chunk(next(self._call))
                self._write_record()
                return chunk
            except StopIteration:
                self._finished = True
                raise
            except grpc.RpcError as exc:
                wait = self._overload_wait(exc)
                if wait is not None:
                    self._keep_seed(self.seed)
                    time.sleep(wait)
                    self._call = self._restart(self._resume)
                    self.retries += 1
                    continue
                if not self._can_resume(exc):
                    self._failed(exc)
                with self._reopening():
                    self._call = self._reopen(self._resume, exc)

    def _write_record(self) -> None:
        record = self._finished_record()
        if record is not None and self._record_sink is not None:
            write_record(self._record_sink, record, self._identity())

    @property
    def seed(self) -> int | None:
        """The seed used, from the response headers (available before the first token); None on error."""
        try:
            return seed_from(self._call.initial_metadata())
        except grpc.RpcError:
            return None

    close = StreamCore.cancel

    def __enter__(self) -> GenerateStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Client(ClientCore):
    """Blocking seedstream client.

        with Client("localhost:50051") as client:
            result = client.generate("Once upon a time", seed=42, temperature=0.8, max_new_tokens=32)
            for chunk in client.generate_stream("Once upon a time", seed=42):
                print(chunk.text, end="")

    Constructor arguments (target, timeout, TLS, metadata, api_key, resume, load balancing): see
    ClientCore.__init__. Generation options: see GenerateOptions.
    """

    def _prepare_channel(self) -> None:
        self._channel, self._stub, self._health = self._open_channel(grpc)

    def _unary(self, method: Any, request: Any, timeout: Any, metadata: Metadata) -> Any:
        """One unary call, sent again while the server refuses it as overloaded (see max_retries)."""
        options = self._call_options(timeout, metadata)
        attempts = self.overload_retry.attempts(options["timeout"])
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=options["metadata"])
            except grpc.RpcError as exc:
                wait = attempts.wait(exc)
                if wait is None:
                    raise from_rpc_error(exc) from None
            time.sleep(wait)

    def _recorded(
        self, rpc: str, request: Any, timeout: Any, metadata: Metadata, transcript: TranscriptArg | _Unset
    ) -> Any:
        """One unary call whose request and response go to the call's transcript (if any) as a record."""
        response = self._unary(getattr(self._stub, rpc), request, timeout, metadata)
        sink = self._sink(transcript)
        if sink[0] is not None:
            write_record(sink, record_for(rpc, request, response), self._server_identity())
        return response

    def _server_identity(self) -> dict[str, str]:
        """The server's build fields for transcript records (GetModelInfo, asked once per client)."""
        if self._identity is None:
            info = self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), UNSET, None)
            self._identity = identity_of(info)
        return self._identity

    # --- calls

    def generate(
        self,
        prompt: str | None = None,
        *,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> GenerateResult:
        """Generate a whole completion.

        Input: exactly one of `prompt` (text), `messages=[{"role": ..., "content": ...}, ...]`
        (chat template applied) or `prompt_token_ids=[...]`. Options (seed, temperature,
        max_new_tokens, stop, n, ...; left out = server default): see GenerateOptions.
        transcript: where this call's record goes (default: the client's transcript; None: nowhere).
        """
        request = _requests.generate_request(prompt, **options)
        return GenerateResult.from_pb(self._recorded("Generate", request, timeout, metadata, transcript))

    def generate_stream(
        self,
        prompt: str | None = None,
        *,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        resume: ResumePolicy | None | _Unset = UNSET,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> GenerateStream:
        """Stream a completion as GenerateChunk deltas (same arguments as generate()). resume: a
        ResumePolicy for this call (default: the client's), None to not resume automatically."""
        request = _requests.generate_request(prompt, **options)
        call_options, state, attempts = self._stream_start(request, timeout, metadata, resume)
        try:
            call = self._stub.GenerateStream(request, **call_options)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

        def restart(state: StreamResume) -> Any:
            return self._stub.GenerateStream(
                state.next_request(), timeout=attempts.remaining(), metadata=call_options["metadata"]
            )

        def reopen(state: StreamResume, error: grpc.RpcError) -> Any:
            time.sleep(state.backoff())
            try:
                self.wait_until_serving(timeout=state.server_wait())
            except SeedstreamError:
                raise from_rpc_error(error) from None
            return self._stub.GenerateStream(
                state.next_request(), timeout=state.remaining(), metadata=call_options["metadata"]
            )

        stream = GenerateStream(call, state, reopen, attempts, restart)
        stream._record_to(request, self._sink(transcript), self._server_identity)
        return stream

    def generate_batch(
        self,
        prompts: Sequence[Any],
        *,
        concurrency: int = 8,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
        **options: Unpack[GenerateOptions],
    ) -> list[GenerateResult]:
        """generate() for each prompt, `concurrency` calls at a time; results in the order of `prompts`.

        A prompt is text, or a dict of per-prompt generate() arguments (e.g. {"messages": [...],
        "seed": 7}) merged over `options`. Each result is what generate() alone would return.
        """

        def one(prompt: Any) -> GenerateResult:
            item = {**options, **_requests.batch_item(prompt)}
            return self.generate(timeout=timeout, metadata=metadata, transcript=sink, **item)

        check_concurrency(concurrency)
        sink, owned = self._sink(transcript)
        try:
            with concurrent.futures.ThreadPoolExecutor(min(concurrency, max(1, len(prompts)))) as pool:
                return list(pool.map(one, prompts))
        finally:
            if owned and sink is not None:
                sink.close()

    def score(
        self,
        pairs: Sequence[_requests.Pair],
        *,
        truncate_context: bool = False,
        request_id: str = "",
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
        transcript: TranscriptArg | _Unset = UNSET,
    ) -> ScoreResults:
        """Log-likelihood of each (context, continuation) pair, both text or both token ids.

        Text pairs are tokenized the lm-evaluation-harness way. truncate_context=True drops context
        tokens from the left when a pair does not fit the model. Results keep the order of `pairs`;
        `.receipt` identifies the model build and the scored tokens.
        """
        request = _requests.score_request(pairs, truncate_context=truncate_context, request_id=request_id)
        return ScoreResults.from_pb(self._recorded("Score", request, timeout, metadata, transcript))

    def score_rolling(
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
        """Log-likelihood of every token of `text` (or `token_ids`), in windows of at most
        `max_length` predicted tokens (default: the model's context - 1), as lm-eval's
        loglikelihood_rolling defines them."""
        request = _requests.score_rolling_request(
            text, token_ids=token_ids, max_length=max_length, request_id=request_id
        )
        return RollingScore.from_pb(self._recorded("ScoreRolling", request, timeout, metadata, transcript))

    def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Iterable[Message] | None = None,
        add_special_tokens: bool | None = None,
        timeout: Timeout = UNSET,
        metadata: Metadata = None,
    ) -> TokenizeResult:
        """Token ids of `text` (or of chat `messages`), exactly as generate() would feed the model."""
        request = _requests.tokenize_request(text, messages=messages, add_special_tokens=add_special_tokens)
        return TokenizeResult.from_pb(self._unary(self._stub.Tokenize, request, timeout, metadata))

    def model_info(self, *, timeout: Timeout = UNSET, metadata: Metadata = None) -> ModelInfo:
        """The loaded model, the build that determines token streams, and the server's limits."""
        return ModelInfo.from_pb(self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout, metadata))

    def health(self, service: str = "", *, timeout: Timeout = UNSET) -> HealthStatus:
        """grpc.health.v1 status ("" = the whole server). Raises UnavailableError if unreachable."""
        try:
            return health_status(self._health(HEALTH_REQUEST(value=service), **self._call_options(timeout, None)))
        except grpc.RpcError as exc:
            return health_from_error(exc)

    def wait_until_serving(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        """Block until health is SERVING; raises UnavailableError after `timeout` seconds."""
        wait = ServingWait(self.target, timeout)
        while not wait.serving(self._probe(wait.probe_timeout())):
            time.sleep(interval)

    def _probe(self, timeout: float) -> HealthStatus | SeedstreamError:
        try:
            return self.health(timeout=timeout)
        except SeedstreamError as exc:
            return exc

    # --- lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
