"""Fixtures for transcripts, verify and the golden file: real engines served in-process on loopback.

One default server (speculation off) is shared by the session; tests that need other settings start
their own, and the golden test one more with the options its records need."""

from __future__ import annotations

import pytest
from svc_helpers import LoopThread, start_server

# Lines the golden test wants in the terminal summary (the CPU flags it ran on and the recording machine's).
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("golden file")
        for line in SUMMARY:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def golden_summary() -> list[str]:
    """The golden test's lines for the terminal summary."""
    return SUMMARY


@pytest.fixture(scope="session")
def verify_loop():
    lt = LoopThread()
    yield lt
    lt.close()


class Served:
    """An engine and its server on the shared loop; `stop()` shuts both down (a restart is a new one)."""

    def __init__(self, loop, signer=None, **config):
        from seedstream.server.engine import EngineConfig, load_engine

        self.loop = loop
        self.engine = load_engine(EngineConfig(**config))
        loop.run(self.engine.start())
        self.server = start_server(loop, self.engine, receipt_signer=signer)
        self.address = self.server.address
        self.stopped = False

    def stop(self):
        self.stopped = True
        self.loop.run(self.server.shutdown(5.0, stop_engine=False))
        self.loop.run(self.engine.stop())


@pytest.fixture(scope="session")
def serve(verify_loop):
    """Start a server with EngineConfig settings (and optionally a ReceiptSigner); stopped at the end."""
    started = []

    def start(signer=None, **config) -> Served:
        served = Served(verify_loop, signer, **config)
        started.append(served)
        return served

    yield start
    for served in started:
        if not served.stopped:
            served.stop()


@pytest.fixture(scope="session")
def default_server(serve):
    """The default model with default settings (speculation off)."""
    return serve()
