"""Helpers shared by the HTTP tests (imported by conftest and the test modules)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request


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


def start(loop: LoopThread, engine, **kwargs):
    from seedstream.server.app import SeedstreamServer

    server = SeedstreamServer(engine, host="127.0.0.1", port=0, http_port=0, **kwargs)
    loop.run(server.start())
    return server


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.http.port}"


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def idle(server) -> bool:
    load = server.state.engine.load()
    return load["running"] == 0 and load["waiting"] == 0 and server.state.in_flight == 0


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
