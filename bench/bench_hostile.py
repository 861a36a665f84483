"""Hostile mix: a canary's latency and the server's RSS growth under each kind of hostile request.

Starts `seedstream serve` (gRPC and the HTTP front, two API keys: `hostile` and `canary`) on loopback, and
for each load (slowloris connections, unread event streams, oversized bodies, prompt-list floods, 200k empty
chat messages, n=64 from one client, unread gRPC streams) runs it from the hostile key and 127.0.0.1/127.0.1.x
while the canary (the other key, HTTP from 127.0.0.2) times a few short gRPC and HTTP completions. Prints a
markdown table beside the quiet baseline. Every loop is bounded and every address is on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_e2e import free_port, start_server  # noqa: E402

from seedstream.client import Client  # noqa: E402

HOSTILE, CANARY = "hostile-key-0123456789abcdef", "canary-key-0123456789abcdef0"
CANARY_HOST = "127.0.0.2"  # HTTP from another address: the per-address caps are the hostile one's
Stop = Callable[[], None]


class CanaryFailed(Exception):
    """The HTTP canary got no 200."""


class Server:
    """A `seedstream serve` process on loopback, its ports and its RSS."""

    def __init__(self, threads: int, extra: tuple[str, ...]):
        self.keys = tempfile.NamedTemporaryFile("w", suffix=".keys", delete=False)
        self.keys.write(f"hostile {HOSTILE}\ncanary {CANARY}\n")
        self.keys.close()
        self.port, self.http_port = free_port(), free_port()
        flags = ("--http-port", str(self.http_port), "--api-key-file", self.keys.name, *extra)
        self.proc = start_server(self.port, threads, extra=flags)
        self.target = f"127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            line = next(line for line in f if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
        os.unlink(self.keys.name)


# --------------------------------------------------------------------------- raw HTTP


def _connect(server: Server, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", server.http_port))
    return s


def _head(path: str, length: int, key: str, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
        f"Authorization: Bearer {key}\r\nConnection: close\r\n{extra}\r\n"
    ).encode()


def _post(server: Server, path: str, body: bytes, key: str = HOSTILE, source: str = "127.0.0.1", timeout=30.0) -> int:
    """One request; the status, 0 when the server closed without one, -1 when none came in `timeout` s."""
    with _connect(server, source) as s:
        s.settimeout(timeout)
        try:
            s.sendall(_head(path, len(body), key) + body)
        except OSError:
            pass  # refused mid-body (413): its status is still in the socket
        try:
            data = s.recv(64)
        except TimeoutError:
            return -1
        except OSError:
            return 0
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


def http_canary(server: Server, deadline: float) -> float:
    body = json.dumps({"model": "seedstream", "prompt": "Hi", "max_tokens": 2, "seed": 1}).encode()
    started = time.perf_counter()
    status = _post(server, "/v1/completions", body, key=CANARY, source=CANARY_HOST, timeout=deadline)
    if status != 200:
        reasons = {0: "closed without a status", -1: "no answer by the deadline"}
        raise CanaryFailed(reasons.get(status, f"HTTP {status}"))
    return time.perf_counter() - started


# --------------------------------------------------------------------------- hostile loads


def _in_threads(count: int, work: Callable[[threading.Event], None]) -> Stop:
    """`count` threads running work(stop) until stop is set; the returned function sets it and joins them."""
    stop = threading.Event()
    threads = [threading.Thread(target=work, args=(stop,), daemon=True) for _ in range(count)]
    for t in threads:
        t.start()

    def finish() -> None:
        stop.set()
        for t in threads:
            t.join(60)

    return finish


def slowloris(server: Server, per_address: int = 60, addresses: int = 10) -> Stop:
    """600 connections from 10 addresses, each trickling a header line a second (reconnecting when closed)."""

    def work(stop: threading.Event) -> None:
        sockets: dict[tuple[int, int], socket.socket] = {}
        while not stop.wait(0.5):
            for a in range(addresses):
                for i in range(per_address):
                    s = sockets.get((a, i))
                    try:
                        if s is None:
                            s = sockets[(a, i)] = _connect(server, f"127.0.1.{a + 1}")
                            s.setblocking(False)
                            s.send(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        sockets.pop((a, i), None)
                        if s is not None:
                            s.close()
        for s in sockets.values():
            s.close()

    return _in_threads(1, work)


def unread_sse(server: Server, streams: int = 8) -> Stop:
    """Event streams of 2,000 tokens with a 4 KiB receive buffer, never read."""
    body = json.dumps({"prompt": "Tell me a long story.", "max_tokens": 2000, "stream": True, "seed": 3}).encode()
    opened = []
    for _ in range(streams):
        s = _connect(server, rcvbuf=4096)
        s.sendall(_head("/v1/completions", len(body), HOSTILE) + body)
        opened.append(s)

    def finish() -> None:
        for s in opened:
            s.close()

    return finish


def oversized_bodies(server: Server, threads: int = 4, size: int = 50 * 2**20) -> Stop:
    """Bodies of 50 MB, sent in 64 KiB pieces until the server answers or closes."""
    piece = b" " * 65536

    def work(stop: threading.Event) -> None:
        while not stop.is_set():
            with _connect(server) as s:
                try:
                    s.sendall(_head("/v1/completions", size, HOSTILE))
                    for _ in range(size // len(piece)):
                        if stop.is_set():
                            break
                        s.sendall(piece)
                except OSError:
                    pass  # refused: 413 and closed

    return _in_threads(threads, work)


def _flood(server: Server, path: str, body: bytes, threads: int = 2) -> Stop:
    def work(stop: threading.Event) -> None:
        while not stop.is_set():
            _post(server, path, body)

    return _in_threads(threads, work)


def prompt_list_flood(server: Server) -> Stop:
    """Completions with a list of 100,000 short prompts (0.8 MB), two at a time, again and again."""
    body = json.dumps({"prompt": ["ab"] * 100_000, "max_tokens": 1}).encode()
    return _flood(server, "/v1/completions", body)


def empty_chat_flood(server: Server) -> Stop:
    """Chat completions with 200,000 empty user messages, two at a time, again and again."""
    body = json.dumps({"messages": [{"role": "user", "content": ""}] * 200_000, "max_tokens": 1}).encode()
    return _flood(server, "/v1/chat/completions", body)


def n64(server: Server) -> Stop:
    """One gRPC request for n=64 samples of 4,096 tokens from the hostile key (read as it comes)."""
    client = Client(server.target, api_key=HOSTILE, timeout=3600)
    stream = client.generate_stream("Tell me a long story.", n=64, max_new_tokens=4096, ignore_eos=True, resume=None)
    next(iter(stream))
    reader = threading.Thread(target=lambda: _drain(stream), daemon=True)
    reader.start()

    def finish() -> None:
        stream.cancel()
        reader.join(60)
        client.close()

    return finish


def _drain(stream) -> None:
    try:
        for _ in stream:
            pass
    except Exception:
        pass  # cancelled


def unread_grpc(server: Server, streams: int = 4) -> Stop:
    """GenerateStreams of 4,096 tokens whose client reads the first message and then nothing."""
    client = Client(server.target, api_key=HOSTILE, timeout=3600)
    opened = []
    for i in range(streams):
        stream = client.generate_stream(
            "Count to a thousand.", seed=i, max_new_tokens=4096, ignore_eos=True, resume=None
        )
        next(iter(stream))
        opened.append(stream)

    def finish() -> None:
        for stream in opened:
            stream.cancel()
        client.close()

    return finish


def quiet(server: Server) -> Stop:
    return lambda: None


LOADS = {
    "quiet (baseline)": quiet,
    "slowloris: 600 trickling connections from 10 addresses": slowloris,
    "8 unread SSE streams (2,000 tokens each)": unread_sse,
    "50 MB bodies, 4 at a time": oversized_bodies,
    "prompt lists of 100,000 strings, 2 at a time": prompt_list_flood,
    "200,000 empty chat messages, 2 at a time": empty_chat_flood,
    "n=64, max_tokens=4096 from one client": n64,
    "4 unread gRPC streams (4,096 tokens each)": unread_grpc,
}


# --------------------------------------------------------------------------- measuring


class RssWatch:
    """The server's largest RSS while running (sampled every 50 ms on a thread)."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, server.rss_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05) and self.server.proc.poll() is None:
            try:
                self.peak = max(self.peak, self.server.rss_mib())
            except (OSError, StopIteration):  # the server exited between poll() and the read
                return

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def _timed(fn: Callable[[], object]) -> float | str:
    """Seconds `fn` took, or what it failed with."""
    started = time.perf_counter()
    try:
        fn()
    except CanaryFailed as exc:
        return str(exc)
    except Exception as exc:  # the client's typed errors name the status
        return type(exc).__name__
    return time.perf_counter() - started


def _summary(results: list[float | str]) -> str:
    """The median of the successes in ms, and how many failed with what."""
    times = [r for r in results if isinstance(r, float)]
    failed = sorted({str(r) for r in results if not isinstance(r, float)})
    text = f"{statistics.median(times) * 1e3:.0f} ms" if times else "no answer"
    if failed:
        text += f" ({len(results) - len(times)} of {len(results)} failed: {', '.join(failed)})"
    return text


def canaries(server: Server, client: Client, count: int, deadline: float = 20.0) -> tuple[str, str]:
    """`count` gRPC and `count` HTTP two-token completions from the canary, each summarised."""
    grpc_s, http_s = [], []
    for i in range(count):
        grpc_s.append(_timed(lambda i=i: client.generate("Hi", seed=i, max_new_tokens=2)))
        http_s.append(_timed(lambda: http_canary(server, deadline)))
    return _summary(grpc_s), _summary(http_s)


def measure(server: Server, client: Client, load, args) -> tuple[str, str, float, float]:
    """(gRPC canary, HTTP canary, peak RSS growth in MiB, RSS growth after the load in MiB)."""
    before = server.rss_mib()
    watch = RssWatch(server)
    finish = load(server)
    try:
        time.sleep(args.settle)  # the load is under way before the canary starts
        grpc_s, http_s = canaries(server, client, args.canaries, args.deadline)
    finally:
        finish()
    peak = watch.close()
    time.sleep(args.settle)  # let the server drop what the load left
    return grpc_s, http_s, peak - before, server.rss_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--canaries", type=int, default=5, help="gRPC and HTTP canary requests per load")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds a load runs before the canary starts")
    parser.add_argument("--deadline", type=float, default=20.0, help="each canary request's deadline in seconds")
    parser.add_argument("--only", default="", help="run only the loads whose name contains this (and the baseline)")
    parser.add_argument("--server-args", default="", help="more `seedstream serve` flags, e.g. '--reserved-slots 0'")
    args = parser.parse_args()

    from seedstream.server.kernels import cpu_flags_line

    server = Server(args.threads, tuple(args.server_args.split()))
    loads = {name: load for name, load in LOADS.items() if load is quiet or args.only in name}
    try:
        with Client(server.target, api_key=CANARY, timeout=args.deadline) as client:
            client.wait_until_serving(timeout=600)
            canaries(server, client, 2)  # warm-up
            rows = []
            for name, load in loads.items():
                print(f"measuring: {name}", file=sys.stderr, flush=True)
                rows.append((name, *measure(server, client, load, args)))
    finally:
        server.close()
    settings = f"serve {args.server_args}" if args.server_args else "default limits"
    head = f"{args.threads} threads, {settings}, canary: median of {args.canaries}, deadline {args.deadline:g} s"
    print(f"\n{head}; {cpu_flags_line()}\n")
    print("| load | gRPC canary | HTTP canary | RSS growth, peak | RSS growth, after |")
    print("|---|---|---|---|---|")
    for name, grpc_s, http_s, peak, after in rows:
        print(f"| {name} | {grpc_s} | {http_s} | {peak:+.0f} MiB | {after:+.0f} MiB |")


if __name__ == "__main__":
    main()
