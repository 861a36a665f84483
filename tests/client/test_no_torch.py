"""`pip install seedstream` without extras: the client and the CLI's client commands import and
run with torch, transformers and the server made unimportable. (Talking to a real server this
way is tested in tests/service/test_client_without_torch.py.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Shared with the other no-torch test: makes torch and the server unimportable.
BLOCKER = Path(__file__).with_name("blocker.py").read_text() + "\n"


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(body)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_blocker_blocks():
    done = _run("import torch")
    assert done.returncode != 0 and "blocked for this test: torch" in done.stderr


def test_client_imports_and_builds_requests_without_torch():
    done = _run(
        """
        import seedstream.client as c
        from seedstream.client._requests import generate_request
        req = generate_request("hi", seed=1, temperature=0.5, stop=["x"])
        assert req.seed == 1 and req.temperature == 0.5
        with c.Client("127.0.0.1:1", timeout=3) as client:
            try:
                client.generate("hi")
            except c.UnavailableError:
                print("unavailable-ok")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "numpy")
                     or m.startswith(("seedstream.server", "seedstream.sampler"))))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["unavailable-ok", "[]"]


def test_cli_without_torch():
    done = _run(
        """
        from seedstream.client.cli import main
        for args in (["--help"], ["generate", "--help"], ["serve", "--help"]):
            try:
                main(args)
            except SystemExit as e:
                assert e.code == 0, (args, e.code)
        rc = main(["generate", "hi", "--target", "127.0.0.1:1", "--timeout", "3"])
        print("rc", rc)
        rc = main(["serve", "--port", "0"])  # the server extra is missing: a clear message, no traceback
        print("serve-rc", rc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "rc 3" in done.stdout and "serve-rc 1" in done.stdout
    assert "pip install 'seedstream[server]'" in done.stderr
