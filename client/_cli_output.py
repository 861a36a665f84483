"""What the `seedstream` command line writes: its exit codes, the result's bytes on stdout, the summary line."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .types import Receipt

EXIT_ERROR, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_OVERLOADED, EXIT_DEADLINE, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
EXIT_CANNOT_VERIFY = 6  # verify: every record that could be checked was equal, but some need another model or build


def write(text: str) -> None:
    """`text` to stdout as UTF-8 bytes (whatever the terminal's encoding), flushed."""
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None
    if out is not None:
        out.write(text.encode("utf-8"))
        out.flush()
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def write_json(data: Any) -> None:
    write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def summary(seed: int, finish: str, prompt_tokens: int, completion_tokens: int, receipt: Receipt | None) -> str:
    """The line `generate` prints on stderr after a streamed completion (the seed replays it)."""
    line = f"[seed={seed} finish={finish} prompt_tokens={prompt_tokens} completion_tokens={completion_tokens}"
    if receipt is not None:
        line += f" receipt={receipt.digest[:16]}"
    return line + "]"
