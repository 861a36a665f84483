"""Fixtures for the service tests: the real engine on the default model, served by a real
grpc.aio server on a loopback port. The model loads once per session."""

from __future__ import annotations

import pytest

# The sibling helper module: importable through pytest's `pythonpath` setting (pyproject.toml).
from svc_helpers import LoopThread, start_server


@pytest.fixture(scope="session")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def engine(loop_thread):
    """The real engine on the default model (SmolLM2-135M-Instruct), shared by the session."""
    from seedstream.server.engine import EngineConfig, load_engine

    eng = load_engine(EngineConfig())
    loop_thread.run(eng.start())
    yield eng
    loop_thread.run(eng.stop())


@pytest.fixture(scope="session")
def small_engine(loop_thread):
    """A second real engine with one slot and a one-request queue: overload and slot tests."""
    from seedstream.server.engine import EngineConfig, load_engine

    eng = load_engine(EngineConfig(max_batch_size=1, max_queue=1))
    loop_thread.run(eng.start())
    yield eng
    loop_thread.run(eng.stop())


@pytest.fixture(scope="session")
def server(loop_thread, engine):
    """A running server on the shared engine; `server.address` is host:port."""
    srv = start_server(loop_thread, engine)
    yield srv
    loop_thread.run(srv.shutdown(5.0, stop_engine=False))


@pytest.fixture(scope="session")
def small_server(loop_thread, small_engine):
    srv = start_server(loop_thread, small_engine)
    yield srv
    loop_thread.run(srv.shutdown(5.0, stop_engine=False))


@pytest.fixture
def client(server):
    from seedstream.client import Client

    with Client(server.address, timeout=120) as c:
        yield c


@pytest.fixture
def channel(server):
    import grpc

    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    from seedstream.v1 import textgen_pb2_grpc

    return textgen_pb2_grpc.TextGenerationStub(channel)
