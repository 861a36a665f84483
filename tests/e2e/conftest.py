"""End-to-end fixtures: a real `seedstream serve` process on a loopback port."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from seedstream.client import Client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m seedstream.server` in a subprocess; start, wait for SERVING, stop with SIGTERM."""

    def __init__(self, *extra: str):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.extra = extra
        self.proc = None

    def start(self) -> float:
        cmd = [sys.executable, "-m", "seedstream.server", "--host", "127.0.0.1", "--port", str(self.port), *self.extra]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        with Client(self.target) as client:
            client.wait_until_serving(timeout=300)
        return time.monotonic() - started

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.output = self.proc.stdout.read()
        return code


@pytest.fixture(scope="session")
def server_process():
    """The ServerProcess class, for tests that start and stop their own servers."""
    return ServerProcess


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess()
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()
