"""Fixtures for the HTTP tests: the real engine on the default model, served by one SeedstreamServer
with both fronts (gRPC and the OpenAI-compatible HTTP) on loopback ports. The model loads once."""

from __future__ import annotations

import asyncio
import threading

import pytest


class LoopThread:
    """An asyncio loop on a daemon thread: the server side of the tests."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="http-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def http_loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def engine(http_loop):
    """The default model (SmolLM2-135M-Instruct, float32), shared by the session."""
    from seedstream.server.engine import EngineConfig, load_engine

    eng = load_engine(EngineConfig(), progress=lambda msg: None)
    http_loop.run(eng.start())
    yield eng
    http_loop.run(eng.stop())


def start(loop: LoopThread, engine, **kwargs):
    from seedstream.server.app import SeedstreamServer

    server = SeedstreamServer(engine, host="127.0.0.1", port=0, http_port=0, **kwargs)
    loop.run(server.start())
    return server


@pytest.fixture(scope="session")
def server(http_loop, engine):
    """gRPC at `server.address`, HTTP at `base_url(server)`; `server.state.engine` is the engine."""
    srv = start(http_loop, engine)
    yield srv
    http_loop.run(srv.shutdown(5.0, stop_engine=False))


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.http.port}"


@pytest.fixture(scope="session")
def url(server) -> str:
    return base_url(server)


@pytest.fixture
def oai(url):
    """The official openai client, pointed at the server (no retries: a 429/503 must show)."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300) as client:
        yield client
