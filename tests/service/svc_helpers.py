"""Helpers shared by the service tests (imported by the test modules and conftest)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class LoopThread:
    """An asyncio event loop on a daemon thread: the server side of every test."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 120.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_server(loop_thread, engine, **kwargs):
    from seedstream.server.app import SeedstreamServer

    server = SeedstreamServer(engine, host="127.0.0.1", port=0, **kwargs)
    loop_thread.run(server.start())
    return server


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def idle(engine) -> bool:
    load = engine.load()
    return load["running"] == 0 and load["waiting"] == 0


def cli(*args: str, env: dict | None = None, timeout: float = 120.0, **kwargs) -> subprocess.CompletedProcess:
    """Run `seedstream ARGS` in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "seedstream.client.cli", *args],
        capture_output=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )
