"""Server processes for the benchmarks (native llama-server, seedstream's health wait) and one OpenAI client for both.

bench_anchors.py and bench_formats.py share these: llama-server started with the same threads and slots, its
/health and version, seedstream's gRPC health, the CPU/date/commit header, and `race()`: N streamed
`/v1/completions` requests with token-id prompts started together, the same code whichever server answers.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CPU_FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_int8"]


class Skipped(Exception):
    """A system could not be measured; the message says why."""


def cpu_summary(threads: int) -> str:
    """One line: CPU model, visible cores, the SIMD flags that decide the kernels (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        return "CPU flags: /proc/cpuinfo not readable"
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    shown = " ".join(f for f in CPU_FLAGS if f in flags)
    return (
        f"CPU: {model}, {os.cpu_count()} logical cores, {threads} threads used; AVX2: "
        f"{'yes' if 'avx2' in flags else 'no'}, AVX-512: {'yes (' + ' '.join(avx512) + ')' if avx512 else 'no'}; "
        f"flags: {shown or 'none of ' + ', '.join(CPU_FLAGS)}"
    )


def run_stamp() -> str:
    """Date (UTC) and the commit measured, marked when the working tree differs from it."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def git(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return f"date: {now}; commit: unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return f"date: {now}; commit: {head.stdout.strip()}{' + uncommitted changes' if dirty else ''}"


def server_errors(server: subprocess.Popen) -> str:
    server.error_log.seek(0)
    return server.error_log.read()


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()


# ---------------------------------------------------------------- seedstream


async def wait_serving(server: subprocess.Popen, target: str, timeout: float = 600.0) -> None:
    """Wait for health SERVING; a server that exits first (e.g. a rejected flag) raises Skipped with its error."""
    from seedstream.client import AsyncClient
    from seedstream.client.errors import SeedstreamError

    deadline = time.monotonic() + timeout
    async with AsyncClient(target) as client:
        while True:
            if server.poll() is not None:
                lines = [line for line in server_errors(server).splitlines() if line.strip()]
                raise Skipped(f"server exited with {server.returncode}: {lines[-1] if lines else 'no output'}")
            try:
                await client.wait_until_serving(timeout=2.0)
                return
            except SeedstreamError:
                if time.monotonic() > deadline:
                    raise Skipped(f"server not serving after {timeout:.0f}s") from None


# ---------------------------------------------------------------- native llama.cpp


def llama_tool(bin_dir: Path, name: str) -> str:
    path = Path(bin_dir) / name
    if not os.access(path, os.X_OK):
        raise Skipped(f"{path} not found or not executable (build it as /work/shared/KERNELS.md describes)")
    return str(path)


def start_llama_server(bin_dir: Path, model: Path, threads: int, slots: int, ctx: int, port: int) -> subprocess.Popen:
    """llama-server on a loopback port: `threads` for decode and batch, `slots` parallel sequences sharing a
    `ctx`-token KV cache; its output goes to `server.error_log` (a temporary file, never a pipe that could fill)."""
    cmd = [llama_tool(bin_dir, "llama-server"), "-m", str(model), "-t", str(threads), "-tb", str(threads)]
    cmd += ["-np", str(slots), "-c", str(ctx), "--host", "127.0.0.1", "--port", str(port)]
    log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    server.error_log = log
    return server


def wait_llama_ready(server: subprocess.Popen, port: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise Skipped(f"llama-server exited with {server.returncode}: {server_errors(server)[-300:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise Skipped(f"llama-server not ready after {timeout:.0f}s")


def llama_version(bin_dir: Path) -> str:
    out = subprocess.run([llama_tool(bin_dir, "llama-server"), "--version"], capture_output=True, text=True)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "version" in line or "built" in line]
    return "; ".join(lines) or "unknown version"


def llama_build_flags(bin_dir: Path) -> str:
    """How the binaries were compiled, from the CMakeCache.txt above bin/ (llama-server logs no CPU features)."""
    cache = Path(bin_dir).resolve().parent / "CMakeCache.txt"
    try:
        lines = cache.read_text(errors="replace").splitlines()
    except OSError:
        return f"build flags unknown (no {cache})"
    keep = ("CMAKE_BUILD_TYPE:", "GGML_NATIVE:", "GGML_CPU_ALL_VARIANTS:", "BUILD_SHARED_LIBS:")
    shown = [x for x in lines if x.startswith(keep)]
    shown += [x for x in lines if x.startswith(("GGML_AVX", "GGML_FMA", "GGML_F16C")) and x.endswith("=ON")]
    return "CMake " + ", ".join(x.split(":")[0] + "=" + x.partition("=")[2] for x in shown)


def llama_bench(bin_dir: Path, model: Path, threads: int, repeats: int) -> str:
    """One llama-bench run (-p 32 -n 64): prompt processing and generation tok/s of the file."""
    cmd = [llama_tool(bin_dir, "llama-bench"), "-m", str(model), "-p", "32", "-n", "64", "-t", str(threads)]
    proc = subprocess.run([*cmd, "-r", str(repeats), "-o", "json"], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise Skipped(f"llama-bench exited with {proc.returncode}: {lines[-1] if lines else 'no output'}")
    parts = []
    for test in json.loads(proc.stdout):
        name = f"pp{test['n_prompt']}" if test["n_prompt"] else f"tg{test['n_gen']}"
        parts.append(f"{name} {test['avg_ts']:.1f} ± {test['stddev_ts']:.1f} tok/s")
    return f"{', '.join(parts)} (llama-bench -p 32 -n 64 -t {threads} -r {repeats})"


# ---------------------------------------------------------------- one OpenAI client for both servers


async def race(
    base_url: str, prompts: list[list[int]], new_tokens: int, sampling: dict, seeds: bool = False
) -> tuple[float, list[float]]:
    """N streamed /v1/completions started together through one OpenAI client: (aggregate generated tok/s, time to
    first token per stream in s). Prompts are token ids; EOS is ignored; `seeds` gives request i seed i. The model
    name is seedstream's alias; llama-server serves its one model under any name."""
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=3600) as client:

        async def one(i: int, ids: list[int]) -> float:
            extra = {k: v for k, v in sampling.items() if k not in ("temperature", "top_p")}
            started, first, used = time.perf_counter(), None, None
            stream = await client.completions.create(
                model="seedstream",
                prompt=ids,
                max_tokens=new_tokens,
                temperature=sampling["temperature"],
                top_p=sampling.get("top_p", 1.0),
                seed=i if seeds else None,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={**extra, "ignore_eos": True},
            )
            async for chunk in stream:
                if first is None and chunk.choices:
                    first = time.perf_counter() - started
                used = chunk.usage or used
            if used is None or used.completion_tokens != new_tokens:
                raise RuntimeError(f"stream {i}: {used and used.completion_tokens} tokens, expected {new_tokens}")
            return first

        start = time.perf_counter()
        ttfts = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
        return len(prompts) * new_tokens / (time.perf_counter() - start), list(ttfts)
