"""`pip install seedstream` (no extras) must give a working client: run it with torch,
transformers and the server packages made unimportable, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from svc_helpers import ROOT

# Shared with the other no-torch test: makes torch and the server unimportable.
BLOCKER = (ROOT / "tests" / "client" / "blocker.py").read_text() + "\n"

SCRIPT = BLOCKER + textwrap.dedent(
    """
    import asyncio, io, json, contextlib
    target = sys.argv[1]
    from seedstream.client import AsyncClient, Client, InvalidArgumentError
    from seedstream.client.cli import main
    out = {}
    with Client(target, timeout=120) as c:
        out["health"] = c.health().value
        r = c.generate("The capital of France is", seed=5, temperature=0.0, max_new_tokens=6)
        out["text"], out["ids"] = r.text, list(r.token_ids)
        out["stream_ids"] = [t for ch in c.generate_stream("The capital of France is", seed=5, temperature=0.0,
                                                           max_new_tokens=6) for t in ch.token_ids]
        out["tokens"] = list(c.tokenize("Hello").token_ids)
        out["model"] = c.model_info().model_id
        try:
            c.generate("x", temperature=-1)
        except InvalidArgumentError as e:
            out["error_field"] = e.field

    async def run_async():
        async with AsyncClient(target, timeout=120) as ac:
            return list((await ac.generate("The capital of France is", seed=5, temperature=0.0, max_new_tokens=6)).token_ids)

    out["async_ids"] = asyncio.run(run_async())
    out["cli_rc"] = main(["generate", "The capital of France is", "--seed", "5", "--temperature", "0",
                          "-n", "6", "--quiet", "--target", target])
    blocked = [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy")
               or m.startswith(("seedstream.server", "seedstream.sampler"))]
    out["imported_blocked"] = blocked
    sys.stderr.write("RESULT" + json.dumps(out) + "\\n")
    """
)


def test_client_and_cli_work_without_torch(server, client):
    done = subprocess.run([sys.executable, "-c", SCRIPT, server.address], capture_output=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()
    line = next(ln for ln in done.stderr.decode().splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    expected = client.generate("The capital of France is", seed=5, temperature=0.0, max_new_tokens=6)
    assert out["health"] == "SERVING"
    assert out["ids"] == out["stream_ids"] == out["async_ids"] == list(expected.token_ids)
    assert out["text"] == expected.text and done.stdout == expected.text.encode()
    assert out["tokens"] == list(client.tokenize("Hello").token_ids)
    assert out["error_field"] == "temperature"
    assert out["cli_rc"] == 0
    assert out["imported_blocked"] == []
