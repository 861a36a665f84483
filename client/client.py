"""The blocking client."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any, Mapping, Optional, Sequence, Union

import grpc

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc as pb_grpc

from . import _requests, balancing
from ._resume import ResumePolicy, StreamResume
from ._common import (
    HEALTH_CHECK_METHOD,
    HEALTH_REQUEST,
    HEALTH_RESPONSE,
    UNSET,
    channel_credentials,
    with_api_key,
    health_status,
)
from .errors import SeedstreamError, UnavailableError, from_rpc_error
from .types import GenerateChunk, GenerateResult, HealthStatus, ModelInfo, RollingScore, ScoreResults, TokenizeResult

Metadata = Union[Mapping[str, str], Sequence[tuple[str, str]], None]


class GenerateStream:
    """Iterator over a streamed completion's chunks.

    Breaking out of the loop, leaving a `with` block, `cancel()`, or dropping the
    object cancels the RPC, and the server frees the sequence's slot. When the
    call fails with UNAVAILABLE (server restart, dropped connection), the stream
    resumes on its own where it broke (see ResumePolicy): the iterator goes on
    with the next token, as if nothing had happened. `resumes` counts the times.
    """

    def __init__(self, call, resume: Optional[StreamResume] = None, reopen=None):
        self._call = call
        self._finished = False
        self._resume = resume
        self._reopen = reopen  # StreamResume -> a new call, after backoff and waiting for the server
        self.resumes = 0

    def __iter__(self) -> "GenerateStream":
        return self

    def __next__(self) -> GenerateChunk:
        while True:
            try:
                message = next(self._call)
                break
            except StopIteration:
                self._finished = True
                raise
            except grpc.RpcError as exc:
                if not self._finished and self._resume is not None and self._resume.should_retry(exc):
                    try:
                        self._call = self._reopen(self._resume, exc)
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

    @property
    def seed(self) -> Optional[int]:
        """The seed used, from the response headers (available before the first token); None on error."""
        try:
            for key, value in self._call.initial_metadata() or ():
                if key == "seedstream-seed":
                    return int(value)
        except grpc.RpcError:
            return None
        return None

    def cancel(self) -> None:
        """Cancel the RPC (no-op when it has finished)."""
        if not self._finished:
            self._call.cancel()
            self._finished = True

    close = cancel

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass


class Client:
    """Blocking seedstream client.

        with Client("localhost:50051") as client:
            result = client.generate("Once upon a time", seed=42, temperature=0.8, max_new_tokens=32)
            for chunk in client.generate_stream("Once upon a time", seed=42):
                print(chunk.text, end="")

    target: "host:port" (default: $SEEDSTREAM_TARGET, else localhost:50051).
    timeout: default deadline in seconds for every call (None: no deadline);
        each method also takes timeout=.
    TLS: secure=True uses the system roots; root_certificates / private_key /
        certificate_chain take PEM bytes or file paths (mutual TLS with the
        latter two); or pass ready grpc.ChannelCredentials as credentials.
    metadata: sent with every call (dict or pairs), merged with per-call metadata.
    api_key: sent as 'authorization: Bearer KEY' with every call (default: $SEEDSTREAM_API_KEY, if set).
    options: extra grpc channel options.
    resume: how generate_stream resumes a stream broken by UNAVAILABLE (a ResumePolicy); None
        turns automatic resuming off. The resumed stream is token for token the uninterrupted one.
    Several replicas (see seedstream.client.balancing): target may be a list of "IP:PORT" addresses
        (balanced round_robin), or one target gRPC resolves such as "dns:///NAME:PORT" with
        load_balancing="round_robin" ("pick_first" is gRPC's default). max_attempts > 1 lets gRPC
        retry calls that fail UNAVAILABLE (a replica died or is draining) on another replica.
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
        creds = channel_credentials(credentials, secure, root_certificates, private_key, certificate_chain)
        opts = _requests.channel_options(options) + balancing.channel_options(load_balancing, max_attempts, from_list)
        self._channel = (
            grpc.secure_channel(self.target, creds, options=opts) if creds else grpc.insecure_channel(self.target, options=opts)
        )
        self._stub = pb_grpc.TextGenerationStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=HEALTH_REQUEST.SerializeToString,
            response_deserializer=HEALTH_RESPONSE.FromString,
        )

    # --- plumbing

    def _kwargs(self, timeout, metadata) -> dict:
        return {
            "timeout": self.timeout if timeout is UNSET else timeout,
            "metadata": _requests.metadata_pairs(self.metadata, metadata),
        }

    def _unary(self, method, request, timeout, metadata):
        try:
            return method(request, **self._kwargs(timeout, metadata))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    # --- calls

    def generate(self, prompt: Optional[str] = None, *, timeout=UNSET, metadata: Metadata = None, **kwargs) -> GenerateResult:
        """Generate a whole completion.

        Input: exactly one of `prompt` (text), `messages=[{"role": ..., "content": ...}, ...]`
        (chat template applied) or `prompt_token_ids=[...]`.
        Sampling keywords (None = server default): seed, temperature, top_k, top_p,
        min_p, repetition_penalty, presence_penalty, frequency_penalty,
        logit_bias={token_id: bias}, max_new_tokens, min_new_tokens, stop,
        stop_token_ids, ignore_eos, top_logprobs, sample_index, request_id.
        Evaluation keywords: n (samples; result.samples holds them all), echo_prompt_logprobs,
        logprobs_mode ("raw" or "processed").
        """
        request = _requests.generate_request(prompt, **kwargs)
        return GenerateResult.from_pb(self._unary(self._stub.Generate, request, timeout, metadata))

    def generate_stream(self, prompt: Optional[str] = None, *, timeout=UNSET, metadata: Metadata = None,
                        resume=UNSET, **kwargs) -> GenerateStream:
        """Stream a completion as GenerateChunk deltas (same arguments as generate(), plus
        resume_token_ids=[...] to continue a stream by hand). resume: a ResumePolicy for this call
        (default: the client's), None to not resume automatically."""
        request = _requests.generate_request(prompt, **kwargs)
        kw = self._kwargs(timeout, metadata)
        state = StreamResume(request, self.resume if resume is UNSET else resume, kw["timeout"])
        try:
            call = self._stub.GenerateStream(request, **kw)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

        def reopen(state: StreamResume, error: grpc.RpcError):
            time.sleep(state.backoff())
            try:
                self.wait_until_serving(timeout=state.server_wait())
            except SeedstreamError:
                raise from_rpc_error(error) from None
            return self._stub.GenerateStream(state.next_request(), timeout=state.remaining(), metadata=kw["metadata"])

        return GenerateStream(call, state, reopen)

    def generate_batch(self, prompts: Sequence[Any], *, concurrency: int = 8, timeout=UNSET, metadata: Metadata = None,
                       **kwargs) -> list[GenerateResult]:
        """generate() for each prompt, `concurrency` calls at a time; results in the order of `prompts`.

        A prompt is text, or a dict of per-prompt generate() arguments (e.g. {"messages": [...],
        "seed": 7}) merged over `kwargs`. Each result is what generate() alone would return.
        """
        def one(prompt):
            extra = _requests.batch_item(prompt)
            return self.generate(timeout=timeout, metadata=metadata, **{**kwargs, **extra})

        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency}: must be >= 1")
        with concurrent.futures.ThreadPoolExecutor(min(concurrency, max(1, len(prompts)))) as pool:
            return list(pool.map(one, prompts))

    def score(self, pairs: Sequence[_requests.Pair], *, truncate_context: bool = False, request_id: str = "",
              timeout=UNSET, metadata: Metadata = None) -> ScoreResults:
        """Log-likelihood of each (context, continuation) pair, both text or both token ids.

        Text pairs are tokenized the lm-evaluation-harness way. truncate_context=True drops context
        tokens from the left when a pair does not fit the model. Results keep the order of `pairs`;
        `.receipt` identifies the model build and the scored tokens.
        """
        request = _requests.score_request(pairs, truncate_context=truncate_context, request_id=request_id)
        return ScoreResults.from_pb(self._unary(self._stub.Score, request, timeout, metadata))

    def score_rolling(self, text: Optional[str] = None, *, token_ids: Optional[Sequence[int]] = None,
                      max_length: Optional[int] = None, request_id: str = "", timeout=UNSET,
                      metadata: Metadata = None) -> RollingScore:
        """Log-likelihood of every token of `text` (or `token_ids`), in windows of at most
        `max_length` predicted tokens (default: the model's context - 1), as lm-eval's
        loglikelihood_rolling defines them."""
        request = _requests.score_rolling_request(text, token_ids=token_ids, max_length=max_length, request_id=request_id)
        return RollingScore.from_pb(self._unary(self._stub.ScoreRolling, request, timeout, metadata))

    def tokenize(self, text: Optional[str] = None, *, messages=None, add_special_tokens: Optional[bool] = None,
                 timeout=UNSET, metadata: Metadata = None) -> TokenizeResult:
        """Token ids of `text` (or of chat `messages`), exactly as generate() would feed the model."""
        request = _requests.tokenize_request(text, messages=messages, add_special_tokens=add_special_tokens)
        response = self._unary(self._stub.Tokenize, request, timeout, metadata)
        return TokenizeResult(tuple(response.token_ids), tuple(response.tokens))

    def model_info(self, *, timeout=UNSET, metadata: Metadata = None) -> ModelInfo:
        """The loaded model, the build that determines token streams, and the server's limits."""
        return ModelInfo.from_pb(self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest(), timeout, metadata))

    def health(self, service: str = "", *, timeout=UNSET) -> HealthStatus:
        """grpc.health.v1 status ("" = the whole server). Raises UnavailableError if unreachable."""
        try:
            response = self._health(HEALTH_REQUEST(value=service), **self._kwargs(timeout, None))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return HealthStatus.SERVICE_UNKNOWN
            raise from_rpc_error(exc) from None
        return health_status(response)

    def wait_until_serving(self, timeout: float = 120.0, interval: float = 0.25) -> None:
        """Block until health is SERVING; raises UnavailableError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Union[HealthStatus, SeedstreamError, None] = None
        while True:
            try:
                last = self.health(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                if last is HealthStatus.SERVING:
                    return
            except SeedstreamError as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise UnavailableError(f"{self.target} not serving after {timeout:.0f}s (last: {last})")
            time.sleep(interval)

    # --- lifecycle

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
