"""Server startup: the grpc.aio server with the TextGeneration service, health and reflection.

`SeedstreamServer` is the building block (tests use it directly with an engine
they loaded); `serve(options)` is what `seedstream serve` runs:

1. bind the port and start answering at once: health NOT_SERVING, requests
   UNAVAILABLE ("the model is still loading");
2. load the engine on a background thread, logging progress;
3. report SERVING;
4. on SIGTERM or SIGINT: report NOT_SERVING, refuse new requests with
   UNAVAILABLE, let in-flight requests finish within the grace period, cancel
   whatever is left, stop the engine, exit 0. A second signal skips the rest of
   the grace period.

Only stdlib, grpc and the contract's constants are imported at module level, so
importing this module is cheap; the engine (torch) is imported when the server starts.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import grpc

from seedstream.v1.protocol import DEFAULT_MAX_REQUEST_BYTES, MAX_MESSAGE_BYTES, SERVICE_NAME, package_version

from .settings import EngineConfig, ServeOptions

if TYPE_CHECKING:
    import ssl

    from grpc_health.v1 import health

    from seedstream.server.engine import Engine
    from seedstream.server.http.front import HttpFront
    from seedstream.server.http.gate import HttpLimits
    from seedstream.server.rpc.hardening import Security
    from seedstream.server.service.metrics import ServiceMetrics
    from seedstream.server.service.receipts import ReceiptSigner

log = logging.getLogger("seedstream.server")

DEFAULT_MAX_RECEIVE_BYTES = DEFAULT_MAX_REQUEST_BYTES  # largest request accepted
CANCEL_FLUSH_S = 2.0  # after the grace period: time for cancelled calls to send their last message


class SeedstreamServer:
    """A started-on-demand grpc.aio server around an engine (which may arrive later)."""

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_max_new_tokens: int = ServeOptions.default_max_new_tokens,
        credentials: grpc.ServerCredentials | None = None,
        max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
        security: Security | None = None,
        metrics: ServiceMetrics | None = None,
        http_port: int | None = None,
        http_ssl: ssl.SSLContext | None = None,
        http_limits: HttpLimits | None = None,
        receipt_signer: ReceiptSigner | None = None,
    ) -> None:
        from seedstream.server.rpc.hardening import Security
        from seedstream.server.service.state import ServiceOptions, ServiceState

        self.host = host
        self.requested_port = port
        self.credentials = credentials
        self.max_receive_bytes = max_receive_bytes
        self.security = security or Security()  # API keys, reflection, connection and request limits
        self.state = ServiceState(
            None, ServiceOptions(default_max_new_tokens, package_version(), self.security.request_limits)
        )
        self.state.options.signer = receipt_signer  # a service.receipts.ReceiptSigner: receipts are signed
        self._pending_engine = engine
        self.metrics = metrics  # a ServiceMetrics, or None: no metrics
        if metrics is not None:
            self.state.metrics = metrics
            metrics.in_flight.set_function(lambda: self.state.in_flight)
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port: int | None = None
        self.http_port = http_port  # None: no HTTP front; 0: a free port (self.http.port once started)
        self.http_ssl = http_ssl  # an ssl.SSLContext: the HTTP front serves HTTPS
        self.http_limits = http_limits  # an http.gate.HttpLimits; None: the flags' defaults
        self.http: HttpFront | None = None

    @property
    def address(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::", "[::]", "") else self.host
        return f"{host}:{self.port}"

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Health is SERVING only once an engine is set."""
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from seedstream.server.rpc.decoding import add_text_generation_service
        from seedstream.server.rpc.servicer import TextGenerationServicer
        from seedstream.v1 import textgen_pb2

        options = [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ] + self.security.connection_limits.grpc_options()
        on_denied = self.metrics.observe_rejected if self.metrics is not None else None
        self.server = grpc.aio.server(options=options, interceptors=self.security.interceptors(on_denied))
        add_text_generation_service(TextGenerationServicer(self.state), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        service_names = (
            textgen_pb2.DESCRIPTOR.services_by_name["TextGeneration"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        if self.security.reflection:
            reflection.enable_server_reflection(service_names, self.server)
        address = f"{self.host}:{self.requested_port}"
        if self.credentials is not None:
            self.port = self.server.add_secure_port(address, self.credentials)
        else:
            self.port = self.server.add_insecure_port(address)
        await self.server.start()
        if self.http_port is not None:  # the OpenAI-compatible front, same loop and state
            from seedstream.server.http.front import HttpFront

            self.http = HttpFront(
                self.state,
                self.host,
                self.http_port,
                api_keys=self.security.api_keys,
                ssl_context=self.http_ssl,
                limits=self.http_limits,
            )
            await self.http.start()
        if self._pending_engine is not None:
            engine, self._pending_engine = self._pending_engine, None
            await self.set_engine(engine)
        return self.port

    async def _set_health(self, status: Any) -> None:  # a HealthCheckResponse.ServingStatus
        assert self.health is not None  # start() made it
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def set_engine(self, engine: Engine) -> None:
        """Start the engine's step loop and begin serving with it."""
        from grpc_health.v1 import health_pb2

        await engine.start()
        loop = asyncio.get_running_loop()
        engine.on_death(lambda exc: loop.call_soon_threadsafe(asyncio.ensure_future, self._engine_died()))
        self.state.engine = engine
        if self.metrics is not None:
            self.metrics.attach(engine)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def _engine_died(self) -> None:
        from grpc_health.v1 import health_pb2

        log.critical("the engine has stopped: health NOT_SERVING; restart the server")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def shutdown(
        self, grace: float = 30.0, *, stop_engine: bool = True, force: asyncio.Event | None = None
    ) -> None:
        """NOT_SERVING, refuse new requests, wait up to `grace` s for in-flight ones, stop."""
        self.state.draining = True
        if self.health is not None:
            await self.health.enter_graceful_shutdown()  # every service NOT_SERVING from now on
        if self.state.in_flight:
            log.info("draining %d in-flight request(s), grace %.1fs", self.state.in_flight, grace)
            waiters = [asyncio.ensure_future(self.state.wait_idle(grace))]
            if force is not None:
                waiters.append(asyncio.ensure_future(force.wait()))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self.state.in_flight and self.state.engine is not None:
                # As the proto says: the server cancels the sequences itself, so a stream still running
                # ends with FINISH_REASON_CANCELLED and status OK rather than a transport error.
                log.warning("grace period over: cancelling %d request(s)", self.state.in_flight)
                self.state.engine.cancel_all()
                await self.state.wait_idle(CANCEL_FLUSH_S)
        if self.server is not None:
            await self.server.stop(1.0)
        if self.metrics is not None:
            self.metrics.detach()
        if self.http is not None:
            await self.http.stop()
        engine = self.state.engine
        if stop_engine and engine is not None:
            await engine.stop()


def configure_logging(level: str, log_format: str = "text") -> None:
    from seedstream.server.logformat import formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])


def engine_config(opts: ServeOptions) -> EngineConfig:
    """EngineConfig from the options (raises ValueError on a bad setting)."""
    return EngineConfig(**opts.engine)


def serve(opts: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    configure_logging(opts.log_level, opts.log_format)
    single_malloc_arena()
    try:
        return asyncio.run(_serve(opts))
    except KeyboardInterrupt:
        return 130


M_ARENA_MAX = -8  # glibc's mallopt parameter


def single_malloc_arena() -> bool:
    """Have every thread allocate from glibc's main heap (unless MALLOC_ARENA_MAX is set), before any thread
    starts: the engine loads on a thread of its own and gRPC's threads allocate too, and each thread's arena
    keeps its partly used pages; one heap holds 4-8 MiB less of a served 1B model (docs/benchmarks.md).
    Whether it was set (False: not glibc, or left to the environment)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):  # not glibc
        return False


def _credentials(opts: ServeOptions) -> grpc.ServerCredentials | None:
    from seedstream.server.rpc.hardening import server_credentials

    return server_credentials(opts.tls_cert, opts.tls_key, opts.tls_client_ca)


def _receipt_signer(path: str | None) -> ReceiptSigner | None:
    from seedstream.server.service.receipts import load_signer

    signer = load_signer(path)
    if signer is not None:
        log.info("receipts are signed: Ed25519 public key %s", signer.public_key)
    return signer


def _http_limits(opts: ServeOptions) -> HttpLimits | None:
    if opts.http_port is None:
        return None
    from seedstream.server.http.gate import HttpLimits

    return HttpLimits.from_options(opts)


def _metrics(opts: ServeOptions) -> ServiceMetrics | None:
    if opts.metrics_port is None:
        return None
    from seedstream.server.service.metrics import ServiceMetrics

    return ServiceMetrics()


def _serve_metrics(metrics: ServiceMetrics | None, opts: ServeOptions) -> None:
    if metrics is None or opts.metrics_port is None:
        return
    host = opts.metrics_host or opts.host
    http = metrics.serve_http(opts.metrics_port, host)
    log.info("metrics: Prometheus text format at http://%s:%d/metrics", host, http.server_port)


def _load_in_thread(config: EngineConfig, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Engine]:
    """load_engine on a daemon thread (so a signal during loading need not wait for it)."""
    from seedstream.server.engine import load_engine

    future: asyncio.Future[Engine] = loop.create_future()

    def progress(message: str) -> None:
        log.info("loading: %s", message)

    def run() -> None:
        def settle(value: Any, failed: bool) -> None:  # the engine, or the exception
            if not future.done():
                future.set_exception(value) if failed else future.set_result(value)

        try:
            engine = load_engine(config, progress=progress)
        except BaseException as exc:  # reported on the loop; the server exits 1
            loop.call_soon_threadsafe(settle, exc, True)
        else:
            loop.call_soon_threadsafe(settle, engine, False)

    threading.Thread(target=run, name="seedstream-load", daemon=True).start()
    return future


async def _heartbeat(started: float, every: float = 5.0) -> None:
    """Every `every` s while loading: which phase is running and for how long (a first start's kernel compile or
    conversion takes minutes, and must not read as a hang)."""
    from seedstream.server.phases import current

    while True:
        await asyncio.sleep(every)
        running = current()
        if running is None:
            log.info("loading: still loading the model (%.0fs)", time.monotonic() - started)
        else:
            log.info("loading: still %s: %.0fs (%.0fs since start)", running[0], running[1], time.monotonic() - started)


async def _serve(opts: ServeOptions) -> int:
    loop = asyncio.get_running_loop()
    try:
        config = engine_config(opts)
        if not 1 <= opts.default_max_new_tokens <= config.max_new_tokens_limit:
            raise ValueError(
                f"default_max_new_tokens={opts.default_max_new_tokens}: allowed [1, max_new_tokens_limit={config.max_new_tokens_limit}]"
            )
        from seedstream.server.rpc.hardening import http_ssl_context, security_from_options

        credentials = _credentials(opts)
        server = SeedstreamServer(
            host=opts.host,
            port=opts.port,
            default_max_new_tokens=opts.default_max_new_tokens,
            credentials=credentials,
            security=security_from_options(dataclasses.asdict(opts), opts.host, tls=credentials is not None),
            metrics=_metrics(opts),
            http_port=opts.http_port,
            http_ssl=http_ssl_context(opts.http_tls_cert, opts.http_tls_key, opts.http_port),
            http_limits=_http_limits(opts),
            receipt_signer=_receipt_signer(opts.receipt_signing_key),
        )
        await server.start()
        _serve_metrics(server.metrics, opts)
    except ImportError as exc:
        log.error(
            "the server needs the server extra (torch, transformers, ...): pip install 'seedstream[server]' (%s)", exc
        )
        return 2
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("listening on %s:%d (health NOT_SERVING until the model is loaded)", opts.host, server.port)
    if server.http is not None:
        log.info(
            "HTTP (OpenAI-compatible API, playground) on %s://%s:%d/", server.http.scheme, opts.host, server.http.port
        )

    stop, force = asyncio.Event(), asyncio.Event()

    def on_signal(signame: str) -> None:
        if not stop.is_set():
            log.info("%s: shutting down", signame)
            stop.set()
        else:
            log.info("%s again: skipping the rest of the grace period", signame)
            force.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)

    started = time.monotonic()
    loading = _load_in_thread(config, loop)
    heartbeat = asyncio.ensure_future(_heartbeat(started))
    stopping = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {loading, stopping}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    heartbeat.cancel()
    if not loading.done():
        log.info("stopped before the model finished loading")
        await server.shutdown(0)
        return 0
    failure = loading.exception()
    if failure is not None:
        from seedstream.server.cachefs import CacheError

        expected = isinstance(failure, (FileNotFoundError, ValueError, ImportError, CacheError))  # message says all
        log.error(
            "model loading failed: %s: %s", type(failure).__name__, failure, exc_info=None if expected else failure
        )
        await server.shutdown(0)
        return 1
    engine = loading.result()
    await server.set_engine(engine)
    info = engine.info
    log.info(
        "ready in %.1fs: serving %s (identity %s, weights sha256 %s, %s on %s) at %s:%d",
        time.monotonic() - started,
        info.model_id,
        info.model_identity[:12],
        info.model_sha256[:12],
        info.dtype,
        info.device,
        opts.host,
        server.port,
    )
    await stopping
    await server.shutdown(opts.grace_period, force=force)
    log.info("stopped")
    return 0
