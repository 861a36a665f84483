"""Fixtures for the HTTP tests: the real engine on the default model, served by one SeedstreamServer
with both fronts (gRPC and the OpenAI-compatible HTTP) on loopback ports. The model loads once."""

from __future__ import annotations

import pytest

# The sibling helper module: importable through pytest's `pythonpath` setting (pyproject.toml).
from http_helpers import LoopThread, base_url, start


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


@pytest.fixture(scope="session")
def server(http_loop, engine):
    """gRPC at `server.address`, HTTP at `base_url(server)`; `server.state.engine` is the engine."""
    srv = start(http_loop, engine)
    yield srv
    http_loop.run(srv.shutdown(5.0, stop_engine=False))


@pytest.fixture(scope="session")
def url(server) -> str:
    return base_url(server)


@pytest.fixture
def oai(url):
    """The official openai client, pointed at the server (no retries: a 429/503 must show)."""
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300) as client:
        yield client
