"""The `seedstream` command line.

    seedstream serve [--model PATH] [--port 50051] ...     start a server (needs seedstream[server])
    seedstream generate "prompt" --seed 42 ...              stream a completion to stdout
    seedstream tokenize "text"                              show token ids
    seedstream info                                         show the served model
    seedstream health                                       exit 0 when the server is SERVING
    seedstream verify run.jsonl --target HOST:PORT          replay a transcript; exit 0 when all is equal
    seedstream cache verify | clear                         check or empty the server's cache

Client commands need only grpcio and protobuf; `serve` hands its arguments to
the server's own command line (seedstream.server.cli), imported lazily, so
`seedstream --help` and the client commands work without torch.

The parts: the parser (client/_cli_parser.py), the arguments turned into a Client and request kwargs
(client/_cli_args.py), the commands (client/_cli_commands.py, client/_cli_verify.py,
client/_cli_server.py) and what they write (client/_cli_output.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._cli_output import (
    EXIT_CANNOT_VERIFY,
    EXIT_DEADLINE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OVERLOADED,
    EXIT_UNAVAILABLE,
)
from ._cli_parser import build_parser
from ._cli_server import serve

if TYPE_CHECKING:
    from .errors import SeedstreamError

__all__ = [
    "EXIT_CANNOT_VERIFY",
    "EXIT_DEADLINE",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OVERLOADED",
    "EXIT_UNAVAILABLE",
    "build_parser",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import SeedstreamError

    try:
        code: int = args.func(args)  # a cmd_* function
        return code
    except SeedstreamError as exc:
        prefix, code = _error_exit(exc)
        print(f"error: {prefix}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _error_exit(exc: SeedstreamError) -> tuple[str, int]:
    """The message prefix and exit code of a failed call: each kind of failure has its own code."""
    from .errors import DeadlineExceededError, InvalidArgumentError, OverloadedError, UnavailableError

    if isinstance(exc, InvalidArgumentError):
        return "invalid argument: ", EXIT_INVALID
    if isinstance(exc, UnavailableError):
        return "unavailable: ", EXIT_UNAVAILABLE
    if isinstance(exc, OverloadedError):
        return "overloaded: ", EXIT_OVERLOADED
    if isinstance(exc, DeadlineExceededError):
        return "deadline exceeded: ", EXIT_DEADLINE
    return "", EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
