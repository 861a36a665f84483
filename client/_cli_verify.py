"""`seedstream verify`: check a transcript's receipts offline, and replay it on a gRPC or HTTP server."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._cli_args import api_key, client_from_args
from ._cli_output import EXIT_CANNOT_VERIFY

if TYPE_CHECKING:
    from . import verify
    from .transcript import Record


def cmd_verify(args: argparse.Namespace) -> int:
    from . import transcript, verify

    if args.concurrency < 1:
        raise SystemExit(f"error: --concurrency {args.concurrency}: must be >= 1")
    key = _public_key(args.public_key) if args.public_key else None
    try:
        records = list(transcript.read_records(args.file))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}")
    offline = args.offline or (key is not None and args.target is None)

    def report(outcome: verify.Outcome) -> None:
        if not (args.quiet and outcome.status in (verify.EQUAL, verify.VALID, verify.CONSISTENT)):
            print(outcome, flush=True)

    progress = verify.Progress(len(records))
    if offline:
        outcomes = verify.verify_records(records, None, key, report=report, progress=progress)
    else:
        outcomes = _replay(args, records, key, report, progress)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    print(f"verify: {len(outcomes)} records: " + ", ".join(f"{v} {k}" for k, v in counts.items()), file=sys.stderr)
    code = verify.exit_code(outcomes)
    return EXIT_CANNOT_VERIFY if code == 6 else code


def _public_key(path: str) -> str:
    """The Ed25519 public key that --public-key names (PEM, or 64 hex digits)."""
    from seedstream.v1 import signing

    with open(path, "rb") as fh:
        try:
            return signing.load_public_key_hex(fh.read())
        except (ValueError, signing.SigningUnavailable) as exc:
            raise SystemExit(f"error: --public-key {path}: {exc}")


def _replay(
    args: argparse.Namespace,
    records: list[tuple[int, Record]],
    key: str | None,
    report: Callable[[verify.Outcome], None],
    progress: verify.Progress,
) -> list[verify.Outcome]:
    """Each record replayed on --target: the HTTP front for an http(s):// URL, else over gRPC."""
    from . import verify
    from .http_transcript import HttpTarget

    if (args.target or "").startswith(("http://", "https://")):  # records taken through the HTTP front
        target = HttpTarget(args.target, api_key=api_key(args), timeout=args.timeout)
        return verify.verify_records(records, target, key, args.concurrency, report, progress)
    with client_from_args(args) as client:
        return verify.verify_records(records, client, key, args.concurrency, report, progress)
