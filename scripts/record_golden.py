#!/usr/bin/env python3
"""Record tests/golden/golden.json: about 30 requests on the default model, their bits and the recording CPU.

    python scripts/record_golden.py            # rewrite tests/golden/golden.json (starts two servers)
    python scripts/record_golden.py --check    # replay the file instead; exit 1 on any difference

Each record is a transcript record (docs/transcripts.md: token ids, logprob bits, receipt digests) with
`golden` = {name, server}. `servers` names the two servers' settings: `default` (speculation off) and
`options` (--activations int8, --kv-cache-dtype bfloat16, --speculative-tokens 4). tests/verify/test_golden.py
replays the file through real servers and requires identical bits. Re-record only when engine_version or
sampler_version changes on purpose, in the same commit, with a CHANGELOG entry naming the version.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "golden.json"
SERVERS: dict[str, dict[str, Any]] = {
    "default": {},
    "options": {"activations": "int8", "kv_cache_dtype": "bfloat16", "speculative_tokens": 4},
}
# CPU features that decide which kernel build runs (the bits must not depend on them: that is the claim).
CPU_FLAGS = (
    "sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512dq avx512_vnni avx_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
).split()
LONG = (
    "The lighthouse keeper kept a log of every ship that passed the point: the name, the hour, the flag, "
    "the weather and the state of the sea. In forty years he missed one night."
)
G, S = "Generate", "GenerateStream"
# (name, server, rpc, arguments of the Client method)
REQUESTS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("greedy", "default", G, dict(prompt="The capital of France is", temperature=0, max_new_tokens=16)),
    ("temperature", "default", G, dict(prompt="Once upon a time", seed=42, temperature=0.8, max_new_tokens=24)),
    ("top_k", "default", G, dict(prompt="Once upon a time", seed=43, top_k=20, max_new_tokens=16)),
    ("top_p", "default", G, dict(prompt="Once upon a time", seed=44, top_p=0.9, max_new_tokens=16)),
    ("min_p", "default", G, dict(prompt="Once upon a time", seed=45, min_p=0.1, max_new_tokens=16)),
    ("repetition_penalty", "default", G, dict(prompt="Say it again: la la la", seed=46, repetition_penalty=1.3, max_new_tokens=16)),
    ("presence_penalty", "default", G, dict(prompt="List some fruits:", seed=47, presence_penalty=1.5, max_new_tokens=16)),
    ("frequency_penalty", "default", G, dict(prompt="List some fruits:", seed=48, frequency_penalty=1.5, max_new_tokens=16)),
    ("logit_bias", "default", G, dict(prompt="My favourite colour is", seed=49, logit_bias={2: 5.0, 28: -100.0}, max_new_tokens=12)),
    ("combined", "default", G, dict(prompt="Write a haiku", seed=50, temperature=0.7, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.1, max_new_tokens=20)),
    ("stop_strings", "default", G, dict(prompt="Count: 1, 2, 3,", temperature=0, stop=[" 6", "\n"], max_new_tokens=32)),
    ("stop_token_ids_min_new", "default", G, dict(prompt="Count: 1, 2, 3,", seed=51, stop_token_ids=[28], min_new_tokens=3, max_new_tokens=16)),
    ("ignore_eos", "default", G, dict(prompt="Hi", seed=52, ignore_eos=True, max_new_tokens=12)),
    ("chat_greedy", "default", G, dict(messages=[{"role": "user", "content": "What is 2+2?"}], temperature=0, max_new_tokens=16)),
    ("chat_sampled", "default", G, dict(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a bird."}], seed=53, temperature=0.9, max_new_tokens=16)),
    ("n_samples", "default", G, dict(prompt="A good name for a cat is", seed=54, n=3, temperature=1.0, max_new_tokens=8)),
    ("sample_index", "default", G, dict(prompt="A good name for a cat is", seed=54, sample_index=2, temperature=1.0, max_new_tokens=8)),
    ("logprobs", "default", G, dict(prompt="The weather today", seed=55, top_logprobs=5, echo_prompt_logprobs=True, logprobs_mode="processed", temperature=0.8, max_new_tokens=8)),
    ("token_ids", "default", G, dict(prompt_token_ids=[1, 504, 3458, 282], seed=56, max_new_tokens=10)),
    ("stream", "default", S, dict(prompt="Once upon a time", seed=42, temperature=0.8, max_new_tokens=24)),
    ("stream_n", "default", S, dict(prompt="Tell me a joke", seed=57, n=2, max_new_tokens=10)),
    ("resumed_stream", "default", S, dict(prompt="Once upon a time", seed=42, temperature=0.8, max_new_tokens=24, resume_from=("temperature", 9))),
    ("prefix_cache_miss", "default", G, dict(prompt=LONG, seed=58, max_new_tokens=12)),
    ("prefix_cache_hit", "default", G, dict(prompt=LONG, seed=59, max_new_tokens=12)),
    ("score", "default", "Score", dict(pairs=[("The capital of France is", " Paris"), ("2 + 2 =", " 4"), ("", "Hello"), ("Roses are red,", " violets are blue")])),
    ("score_tokens", "default", "Score", dict(pairs=[([1, 504, 3458], [282, 314]), ([42], [43, 44, 45])])),
    ("score_rolling", "default", "ScoreRolling", dict(text=LONG)),
    ("score_rolling_windows", "default", "ScoreRolling", dict(text=LONG, max_length=16)),
    ("options_greedy_spec", "options", G, dict(prompt="Repeat: red green blue red green blue red green blue", temperature=0, max_new_tokens=24)),
    ("options_sampled_spec", "options", G, dict(prompt="Copy this list: apple, pear, plum, fig, apple, pear, plum, fig,", seed=60, temperature=0.5, max_new_tokens=24)),
    ("options_stream", "options", S, dict(prompt="Once upon a time", seed=42, temperature=0.8, max_new_tokens=16)),
    ("options_score", "options", "Score", dict(pairs=[("The capital of France is", " Paris")])),
]  # fmt: skip


def machine() -> dict[str, Any]:
    """The CPU this runs on: model name, the flags that pick a kernel build, and the build picked."""
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        from seedstream.server.kernels.lib import detect_isa

        isa = detect_isa()
    except Exception as exc:  # no server extra here: say so rather than guess
        isa = f"unknown ({type(exc).__name__})"
    return {
        "cpu": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "kernel_isa": os.environ.get("SEEDSTREAM_KERNEL_ISA") or isa,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
    }


def describe(m: dict[str, Any]) -> str:
    return f"{m.get('cpu')} ({m.get('machine')}, {m.get('cores')} cores), kernels {m.get('kernel_isa')}, flags {' '.join(m.get('cpu_flags', []))}"


def server_flags(settings: dict[str, Any]) -> list[str]:
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


class Server:
    """`python -m seedstream.server` on a free loopback port."""

    def __init__(self, settings: dict[str, Any]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "seedstream.server", "--port", str(port), *server_flags(settings)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> Server:
        from seedstream.client import Client

        with Client(self.address) as client:
            client.wait_until_serving(timeout=600)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def call(client: Any, rpc: str, args: dict[str, Any], done: dict[str, dict[str, Any]]) -> None:
    """One request through the client (which writes its record to the client's transcript)."""
    args = dict(args)
    if "resume_from" in args:
        name, k = args.pop("resume_from")
        args["resume_token_ids"] = done[name]["outputs"][0]["token_ids"][:k]
    if rpc == "Generate":
        client.generate(**args)
    elif rpc == "GenerateStream":
        for _ in client.generate_stream(resume=None, **args):
            pass
    elif rpc == "Score":
        client.score(args["pairs"])
    else:
        client.score_rolling(args["text"], max_length=args.get("max_length"))


def record_all() -> list[dict[str, Any]]:
    from seedstream.client import Client
    from seedstream.client.transcript import read_records

    done: dict[str, dict[str, Any]] = {}
    out = []
    for server_name, settings in SERVERS.items():
        wanted = [r for r in REQUESTS if r[1] == server_name]
        with tempfile.TemporaryDirectory() as tmp, Server(settings) as server:
            path = Path(tmp) / "t.jsonl"
            with Client(server.address, timeout=300, transcript=path) as client:
                for name, _, rpc, args in wanted:
                    before = client.transcript.count if client.transcript else 0
                    call(client, rpc, args, done)
                    assert client.transcript is not None and client.transcript.count == before + 1, name
                    client.transcript.close()
                    done[name] = list(read_records(path))[-1][1]
        for name, _, _, _ in wanted:
            record = done[name]
            record.pop("recorded_at", None)
            record["golden"] = {"name": name, "server": server_name}
            out.append(record)
    return out


def dumps(golden: dict[str, Any]) -> str:
    """JSON with one record per line (readable diffs when a version change re-records it)."""
    head = {k: v for k, v in golden.items() if k != "records"}
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2] + ',\n "records": [\n'
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in golden["records"]]
    return text + ",\n".join(lines) + "\n ]\n}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="replay the file on fresh servers instead of recording")
    p.add_argument("--out", type=Path, default=GOLDEN)
    args = p.parse_args(argv)
    if args.check:
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", str(ROOT / "tests/verify/test_golden.py")])
    records = record_all()
    golden = {
        "about": "Recorded by scripts/record_golden.py; replayed by tests/verify/test_golden.py. Do not edit by hand.",
        "recorded_on": {**machine(), "date": datetime.date.today().isoformat()},
        "servers": SERVERS,
        "records": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dumps(golden))
    print(f"wrote {args.out}: {len(records)} records on {describe(golden['recorded_on'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
