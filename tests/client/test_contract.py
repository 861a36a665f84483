"""The contract's promises that need no server: optional presence, documented fields."""

from __future__ import annotations

import re
from pathlib import Path

from seedstream.v1 import textgen_pb2 as pb
from seedstream.v1.protocol import OPTIONAL_GENERATE_FIELDS

PROTO = Path(__file__).resolve().parents[2] / "proto" / "seedstream" / "v1" / "textgen.proto"


def test_unset_differs_from_zero():
    empty = pb.GenerateRequest(prompt="x")
    zeros = pb.GenerateRequest(prompt="x", **{name: 0 for name in OPTIONAL_GENERATE_FIELDS})
    for name in OPTIONAL_GENERATE_FIELDS:
        assert not empty.HasField(name)
        assert zeros.HasField(name)


def test_every_field_is_documented():
    """Each field, enum value and message of the contract has a comment just above it."""
    lines = PROTO.read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        is_decl = (
            re.match(r"^(optional |repeated )?[\w.<>, ]+ \w+ = \d+;", stripped)  # fields
            or re.match(r"^[A-Z][A-Z0-9_]* = \d+;", stripped)  # enum values
            or re.match(r"^(message|enum|rpc|service|oneof) ", stripped)
        )
        if not is_decl:
            continue
        previous = lines[i - 1].strip()
        if not previous.startswith("//"):
            missing.append(f"{i + 1}: {stripped}")
    assert not missing, "undocumented:\n" + "\n".join(missing)


def test_room_for_announced_features():
    """top_logprobs, receipts and sample_index are in the contract already."""
    request = pb.GenerateRequest(prompt="x", top_logprobs=20, sample_index=3)
    assert request.top_logprobs == 20 and request.sample_index == 3
    response = pb.GenerateResponse()
    response.top_logprobs.add().alternatives.add(token_id=1, text="a", logprob=-0.5)
    response.receipt.sampling.temperature = 0.7
    assert response.HasField("receipt")
