"""Session set-up for every test folder: the kernel libraries start compiling at once, in a process of their own.

On an empty cache (CI) the first server start waits for its library (about a minute on 2 cores) and the
portable build's first test for that one (another one and a half); the suite leaves part of the second core
idle meanwhile. Built here in the background, each library is ready sooner or is being built when a test
needs it: the test's own build then waits on the cache entry's lock and loads the result
(seedstream.server.cachefs), so nothing is built twice. A process, not a thread: the tests read this
process's start-up phases (seedstream.server.phases). Whatever it fails at, the tests that need a library
build it themselves and say what went wrong.
"""

import os
import signal
import subprocess
import sys

import pytest

BUILD_EVERY_ISA = """
from seedstream.server.engine.loader import cache_root
from seedstream.server.kernels import available_isas
from seedstream.server.kernels.build import build_library
for isa in available_isas():
    build_library(isa, cache_root() / "kernels")
"""
_BUILDER = pytest.StashKey[subprocess.Popen]()  # the build's process, in the session's config


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("SEEDSTREAM_KERNELS") == "off":
        return
    session.config.stash[_BUILDER] = subprocess.Popen(
        [sys.executable, "-c", BUILD_EVERY_ISA],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its compilers too are stopped at the end (a killed build is cleaned up later)
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    builder = session.config.stash.get(_BUILDER, None)
    if builder is not None and builder.poll() is None:
        os.killpg(builder.pid, signal.SIGTERM)
        builder.wait()
