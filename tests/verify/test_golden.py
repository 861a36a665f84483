"""The golden file (tests/golden/golden.json, scripts/record_golden.py) replays bit for bit on this machine.

The summary names the CPU flags this ran on and those of the machine that recorded the file: the CI
logs of different machines are the cross-machine evidence for the kernels' claim (the same bits on
AVX-512, AVX2 and the portable build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import record_golden

from seedstream.client import Client
from seedstream.client import verify as v

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "golden.json"


@pytest.mark.slow
def test_golden_file_replays_bit_for_bit(serve, default_server, golden_summary):
    golden = json.loads(GOLDEN.read_text())
    here, there = record_golden.machine(), golden["recorded_on"]
    header = [
        f"golden file: {len(golden['records'])} records, recorded {there.get('date')}",
        f"  recorded on: {record_golden.describe(there)}",
        f"  replayed on: {record_golden.describe(here)}",
    ]
    golden_summary[:] = header
    print("\n".join(header))
    assert golden["servers"]["default"] == {}, "the default server of the golden file has default settings"
    servers = {"default": default_server, "options": serve(**golden["servers"]["options"])}
    records = list(enumerate(golden["records"], 1))
    failures = []
    for name, served in servers.items():
        mine = [(i, r) for i, r in records if r["golden"]["server"] == name]
        with Client(served.address, timeout=300) as client:  # one at a time: the prefix-cache hit follows its miss
            outcomes = v.verify_records(mine, client, concurrency=1, report=lambda o: None)
        failures += [str(o) for o in outcomes if o.status != v.EQUAL]
    golden_summary.append(f"  result: {len(records) - len(failures)}/{len(records)} records identical")
    assert not failures, "\n".join(header + failures)
