"""The `seedstream` commands that need the server installed: serve and cache, imported only when run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ._cli_output import EXIT_ERROR


def _server_part(name: str) -> Any:
    """A module of the server, imported only for the commands that run it (the client installs without it),
    or None after saying how to install it."""
    import importlib

    try:
        return importlib.import_module(f"seedstream.server.{name}")
    except ImportError as exc:
        print(f"error: the server is not installed ({exc}); pip install 'seedstream[server]'", file=sys.stderr)
        return None


def serve(argv: Sequence[str]) -> int:
    """`seedstream serve ARGS`: the server's own command line (seedstream.server.cli) with ARGS."""
    server_cli = _server_part("cli")
    return EXIT_ERROR if server_cli is None else int(server_cli.main(argv))


def cmd_cache(args: argparse.Namespace) -> int:
    from pathlib import Path

    cachefs = _server_part("cachefs")
    if cachefs is None:
        return EXIT_ERROR
    root = Path(args.cache_dir).expanduser() if args.cache_dir else cachefs.cache_root()
    return int(cachefs.verify_cache(root) if args.action == "verify" else cachefs.clear_cache(root))
