"""What Client and AsyncClient share: construction, the channel, per-call options, health, waiting and streams."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import grpc

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1 import textgen_pb2_grpc as pb_grpc

from . import _requests, balancing
from ._common import (
    HEALTH_CHECK_METHOD,
    HEALTH_REQUEST,
    HEALTH_RESPONSE,
    Metadata,
    _Unset,
    channel_credentials,
    with_api_key,
)
from ._resume import ResumePolicy, StreamResume
from ._retry import DEFAULT_MAX_RETRIES, DEFAULT_RETRY_BASE_DELAY, OverloadAttempts, OverloadRetry
from .errors import SeedstreamError, UnavailableError, from_rpc_error
from .transcript import Record, StreamRecorder, Transcript, TranscriptArg, as_transcript
from .types import GenerateChunk, HealthStatus

if TYPE_CHECKING:
    from types import ModuleType

ChannelOptions = Sequence[tuple[str, Any]]
Timeout = float | None | _Unset  # seconds; None: no deadline; UNSET: the client's timeout


class CallOptions(TypedDict):
    """The keyword arguments every RPC gets: its deadline and its metadata."""

    timeout: float | None
    metadata: tuple[tuple[str, str], ...] | None


class ClientCore:
    """Connection settings and plumbing of a seedstream client; Client and AsyncClient add the calls."""

    def __init__(
        self,
        target: balancing.Target = None,
        *,
        timeout: float | None = None,
        secure: bool = False,
        root_certificates: bytes | str | None = None,
        private_key: bytes | str | None = None,
        certificate_chain: bytes | str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Metadata = None,
        options: ChannelOptions | None = None,
        api_key: str | None = None,
        resume: ResumePolicy | None = ResumePolicy(),
        load_balancing: str | None = None,
        max_attempts: int = 1,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_base_delay: float = DEFAULT_RETRY_BASE_DELAY,
        transcript: TranscriptArg = None,
    ):
        """Settings of a client (Client opens its channel here; AsyncClient on first use, in its event loop).

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
        max_retries: how many times a call the server refused with RESOURCE_EXHAUSTED (queue full) is sent
            again (0: never), after a random wait of up to retry_base_delay * 2^retry seconds (full
            jitter, at most 8 s, within the call's timeout); so is a call a proxy answered 502/503/504 (its
            replica died: gRPC's own retries count that call as answered). A stream is sent again only
            while it has yielded nothing. Other codes are never retried this way.
        transcript: a Transcript, or a file path: every completion and score this client receives is
            appended to it as one JSON line (docs/transcripts.md) that `seedstream verify` replays; each
            call also takes transcript= (None: not this call).
        """
        channel_target, from_list = balancing.channel_target(target)
        self.target: str = channel_target or _requests.default_target()
        self.timeout = timeout
        self.metadata: Metadata = with_api_key(metadata, api_key)
        self.resume = resume
        self.overload_retry = OverloadRetry(max_retries, retry_base_delay)
        self._credentials = channel_credentials(credentials, secure, root_certificates, private_key, certificate_chain)
        self._options = _requests.channel_options(options) + balancing.channel_options(
            load_balancing, max_attempts, from_list
        )
        self.transcript = as_transcript(transcript)
        self._identity: dict[str, str] | None = None  # GetModelInfo's build fields, fetched for the first record
        self._prepare_channel()

    def _prepare_channel(self) -> None:
        """Open the channel now (Client), or get ready to open it on first use (AsyncClient)."""
        raise NotImplementedError

    def _open_channel(self, channels: ModuleType) -> tuple[Any, pb_grpc.TextGenerationStub, Any]:
        """(channel, stub, health-check callable) from `grpc` or `grpc.aio`, which open channels alike."""
        if self._credentials is not None:
            channel = channels.secure_channel(self.target, self._credentials, options=self._options)
        else:
            channel = channels.insecure_channel(self.target, options=self._options)
        health = channel.unary_unary(
            HEALTH_CHECK_METHOD,
            request_serializer=HEALTH_REQUEST.SerializeToString,
            response_deserializer=HEALTH_RESPONSE.FromString,
        )
        stub = pb_grpc.TextGenerationStub(channel)  # type: ignore[no-untyped-call]  # generated without stubs
        return channel, stub, health

    def _sink(self, transcript: TranscriptArg | _Unset) -> tuple[Transcript | None, bool]:
        """Where this call's record goes (UNSET: the client's transcript), and whether the call owns it."""
        if isinstance(transcript, _Unset):
            return self.transcript, False
        if transcript is None or isinstance(transcript, Transcript):
            return transcript, False
        return Transcript(transcript), True

    def _call_options(self, timeout: Timeout, metadata: Metadata) -> CallOptions:
        return {
            "timeout": self.timeout if isinstance(timeout, _Unset) else timeout,
            "metadata": _requests.metadata_pairs(self.metadata, metadata),
        }

    def _stream_start(
        self, request: pb.GenerateRequest, timeout: Timeout, metadata: Metadata, resume: ResumePolicy | None | _Unset
    ) -> tuple[CallOptions, StreamResume, OverloadAttempts]:
        """A stream's call options, its resume state (resume=UNSET: the client's policy) and its
        overload retries."""
        call_options = self._call_options(timeout, metadata)
        policy = self.resume if isinstance(resume, _Unset) else resume
        timeout_s = call_options["timeout"]
        return call_options, StreamResume(request, policy, timeout_s), self.overload_retry.attempts(timeout_s)


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency}: must be >= 1")


def health_from_error(exc: grpc.RpcError) -> HealthStatus:
    """A failed health check: SERVICE_UNKNOWN for a service the server does not know, else the error raised."""
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return HealthStatus.SERVICE_UNKNOWN
    raise from_rpc_error(exc) from None


class ServingWait:
    """One wait_until_serving(): its deadline, each probe's timeout, and the error when time is up."""

    def __init__(self, target: str, timeout: float):
        self.target = target
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def probe_timeout(self) -> float:
        return max(0.1, min(5.0, self.deadline - time.monotonic()))

    def serving(self, last: HealthStatus | SeedstreamError) -> bool:
        """Whether the last probe found the server SERVING; raises UnavailableError once time is up."""
        if last is HealthStatus.SERVING:
            return True
        if time.monotonic() >= self.deadline:
            raise UnavailableError(f"{self.target} not serving after {self.timeout:.0f}s (last: {last})")
        return False


class StreamCore:
    """A streamed completion's state, for GenerateStream and AsyncGenerateStream: the call, whether it
    finished, resuming it after UNAVAILABLE with `reopen` (StreamResume, error -> a new call), and
    sending it again after RESOURCE_EXHAUSTED with `restart` (StreamResume -> a new call) while
    nothing has been received."""

    def __init__(
        self,
        call: Any,
        resume: StreamResume | None = None,
        reopen: Any = None,
        retry: OverloadAttempts | None = None,
        restart: Any = None,
    ):
        self._call = call
        self._finished = False
        self._received = False
        self._resume = resume
        self._reopen = reopen
        self._retry = retry
        self._restart = restart
        self.resumes = 0
        self.retries = 0  # times the stream was sent again because the server's queue was full
        self._recorder: StreamRecorder | None = None  # set with _record_to(): the stream goes to a transcript
        self._record_sink: tuple[Transcript, bool] | None = None
        self._identity: Any = None

    def _record_to(self, request: pb.GenerateRequest, sink: tuple[Transcript | None, bool], identity: Any) -> None:
        """Send this stream to a transcript; `identity` gives (or, async, awaits) the server's build fields."""
        if sink[0] is not None:
            self._recorder = StreamRecorder(request)
            self._record_sink = (sink[0], sink[1])
            self._identity = identity

    def _finished_record(self) -> Record | None:
        """The stream's record once every sample has finished (once), else None."""
        if self._recorder is None or not self._recorder.done:
            return None
        return self._recorder.record()

    def _can_resume(self, exc: grpc.RpcError) -> bool:
        return not self._finished and self._resume is not None and self._resume.should_retry(exc)

    def _overload_wait(self, exc: grpc.RpcError) -> float | None:
        """Seconds to wait before sending the stream again after an overload, or None: not this
        time (another code, no retries left, or a message already received: the caller may hold
        tokens, and only resuming may continue such a stream)."""
        if self._received or self._finished or self._retry is None or self._restart is None:
            return None
        return self._retry.wait(exc)

    def _keep_seed(self, seed: int | None) -> None:
        """Before an overload retry: the seed the refused call reported (when the caller let the
        server draw one) goes into the next request, so the `seed` a caller may have read holds."""
        if self._resume is not None and self._resume.seed is None and seed is not None:
            self._resume.seed = seed

    @contextlib.contextmanager
    def _reopening(self) -> Iterator[None]:
        """Around replacing the call: counts the resume, or finishes the stream if the server did
        not come back in time."""
        try:
            yield
        except BaseException:
            self._finished = True
            raise
        self.resumes += 1

    def _failed(self, exc: grpc.RpcError) -> NoReturn:
        self._finished = True
        raise from_rpc_error(exc) from None

    def _chunk(self, message: pb.GenerateStreamResponse) -> GenerateChunk:
        self._received = True
        if self._resume is not None:
            self._resume.seen(message)
        if self._recorder is not None:
            self._recorder.seen(message)
        chunk = GenerateChunk.from_pb(message)
        if chunk.finish_reason is not None:
            self._finished = True
        return chunk

    def cancel(self) -> None:
        """Cancel the RPC (no-op when it has finished)."""
        if not self._finished:
            self._call.cancel()
            self._finished = True

    def __del__(self) -> None:
        try:
            self.cancel()
        except Exception:
            pass


def seed_from(initial_metadata: Sequence[tuple[str, Any]] | None) -> int | None:
    """The seed the server reported in a stream's initial metadata (`seedstream-seed`)."""
    for key, value in initial_metadata or ():
        if key == "seedstream-seed":
            return int(value)
    return None


def write_record(sink: tuple[Transcript | None, bool], record: Record, identity: dict[str, str]) -> None:
    """Append a record to a call's transcript (and close it when the call opened it from a path)."""
    transcript, owned = sink
    if transcript is None:
        return
    transcript.write(record, identity)
    if owned:
        transcript.close()
