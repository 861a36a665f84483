"""A served process allocates from one glibc heap: threads started after `seedstream serve` set it up (the
engine's loader, gRPC's, the executor's) add no arenas of their own, which would keep partly used pages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# Each thread mallocs a block (as the loader's tokenizer or gRPC's core do); then the heaps glibc reports.
HEAPS = textwrap.dedent(
    """
    import ctypes, json, sys, tempfile, threading
    from seedstream.server.app import single_malloc_arena
    libc = ctypes.CDLL("libc.so.6")
    set_up = single_malloc_arena() if sys.argv[1] == "serve" else False
    libc.malloc.restype = ctypes.c_void_p
    def allocate():
        for _ in range(64):
            libc.malloc(200000)
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with tempfile.TemporaryFile("w+") as out:
        libc.fdopen.restype = ctypes.c_void_p
        stream = libc.fdopen(out.fileno(), b"w")
        libc.malloc_info(0, ctypes.c_void_p(stream))
        libc.fflush(ctypes.c_void_p(stream))
        out.seek(0)
        heaps = out.read().count("<heap nr=")
    print(json.dumps({"set_up": set_up, "heaps": heaps}))
    """
)


def _heaps(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run([sys.executable, "-c", HEAPS, mode], capture_output=True, text=True, check=True, env=environ)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_threads_of_a_served_process_share_the_main_heap():
    served, plain = _heaps("serve"), _heaps("plain")
    assert served == {"set_up": True, "heaps": 1}
    assert plain["heaps"] > 1, "without the setting, threads get arenas of their own (the test would prove nothing)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_an_arena_limit_from_the_environment_is_left_alone():
    got = _heaps("serve", MALLOC_ARENA_MAX="4")
    assert got["set_up"] is False
    assert got["heaps"] > 1
