"""`seedstream verify`: check a transcript offline (digests, signatures) and by replaying it on a server."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from google.protobuf import json_format

from seedstream.v1 import signing
from seedstream.v1 import textgen_pb2 as pb

from ._common import UNSET
from .http_transcript import KIND as HTTP
from .http_transcript import HttpTarget
from .transcript import (
    Record,
    StreamRecorder,
    hex_logprob,
    identity_of,
    receipt_digest,
    receipt_of,
    record_for,
)

EQUAL, DIFFERS, CANNOT, INVALID, ERROR = "equal", "DIFFERS", "cannot verify", "INVALID", "ERROR"
VALID, CONSISTENT = "valid", "consistent"  # offline: signed by the given key / digests match (no key given)
# Build fields a record's receipts must share with its `server` block, and the server's with the record's.
BUILD_FIELDS = (
    "model_identity",
    "model_sha256",
    "engine_version",
    "sampler_version",
    "weight_format",
    "dtype",
    "device",
)
REQUESTS = {"Generate": pb.GenerateRequest, "GenerateStream": pb.GenerateRequest}
REQUESTS.update({"Score": pb.ScoreRequest, "ScoreRolling": pb.ScoreRollingRequest})  # type: ignore[dict-item]
NOT_COMPARED = {"token_ids", "logprobs", "receipt"}  # compared first, or by digest


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What verify found for one record."""

    line: int
    label: str
    status: str
    detail: str = ""

    def __str__(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"record at line {self.line} ({self.label}): {self.status}{tail}"


def label(record: Record) -> str:
    """A record named for a reader: the RPC and, for a completion, its seed."""
    request = record.get("request", {})
    if "golden" in record:  # tests/golden: named records
        return f"{record['golden'].get('name')}: {record.get('rpc')}"
    if record.get("kind") in ("generate", HTTP):
        n = request.get("n")
        return f"{record.get('rpc')} seed={request.get('seed')}" + (f" n={n}" if n else "")
    return str(record.get("rpc"))


# --------------------------------------------------------------------------- offline checks


def _floats(bits: Sequence[str]) -> list[float]:
    return [hex_logprob(b) for b in bits]


def _signed_outputs(record: Record) -> Iterator[tuple[str, dict[str, Any], str, int | None]]:
    """(where, receipt JSON, output_sha256 of what the record holds, expected sample index) per receipt."""
    kind, request = record["kind"], record["request"]
    if kind == HTTP:  # one choice per (prompt, sample): sample index (index mod n) from the request's
        n, first = int(request.get("n") or 1), int(request.get("sample_index") or 0)
        for out in record["outputs"]:
            tokens = signing.output_sha256_tokens(out["token_ids"])
            yield f"choice {out['index']}", out.get("receipt", {}), tokens, first + out["index"] % n
    elif kind == "generate":
        held = [int(t) for t in request.get("resume_token_ids", [])]
        first = int(request.get("sample_index", 0))
        for j, out in enumerate(record["outputs"]):
            where = f"sample {out.get('sample_index', j)}"
            yield where, out.get("receipt", {}), signing.output_sha256_tokens(held + out["token_ids"]), first + j
    elif kind == "score":
        results = [
            pb.ScoreResult(
                continuation_token_ids=o["token_ids"],
                logprobs=_floats(o["logprobs"]),
                is_greedy=o["is_greedy"],
                greedy_token_ids=o["greedy_token_ids"],
            )
            for o in record["outputs"]
        ]
        yield "receipt", record.get("receipt", {}), signing.output_sha256_score(results), None
    else:
        o = record["outputs"][0]
        output = signing.output_sha256_rolling(
            o["token_ids"], _floats(o["logprobs"]), o["greedy_token_ids"], o["num_windows"]
        )
        yield "receipt", record.get("receipt", {}), output, None


def _receipt_problems(record: Record, where: str, receipt: pb.ReproducibilityReceipt, index: int | None) -> list[str]:
    problems = []
    computed = receipt_digest(receipt)
    if computed != receipt.digest:
        problems.append(f"{where}: receipt digest {receipt.digest[:16]} does not match its fields ({computed[:16]})")
    server = record.get("server", {})
    for name in BUILD_FIELDS:
        mine, theirs = getattr(receipt, name), server.get(name, "")
        if mine and theirs and mine != theirs:
            problems.append(f"{where}: receipt {name} {mine!r}, but the record's server {theirs!r}")
    if index is not None:
        seed = int(record["request"].get("seed", -1))
        if receipt.seed != seed or receipt.sample_index != index:
            problems.append(
                f"{where}: receipt seed/sample {receipt.seed}/{receipt.sample_index}, request says {seed}/{index}"
            )
    return problems


def _signature_problem(where: str, receipt: pb.ReproducibilityReceipt, output: str, key: str | None) -> str | None:
    """Checks the signature against `key` (None: against the key the receipt names, if it has one)."""
    if not receipt.HasField("signature"):
        return f"{where}: the receipt is not signed" if key else None
    sig = receipt.signature
    if key and sig.public_key != key:
        return f"{where}: signed by key {sig.public_key[:16]}, not by the given key {key[:16]}"
    if sig.output_sha256 != output:
        return f"{where}: the output differs from what the server signed (output_sha256 {output[:16]}, signed {sig.output_sha256[:16]})"
    if not signing.verify(key or sig.public_key, sig.signature, receipt.digest, output):
        return f"{where}: the signature does not verify"
    return None


def offline_problems(record: Record, public_key: str | None = None) -> list[str]:
    """What is wrong with a record on its own: altered receipts, build fields that disagree, bad signatures.

    With public_key (hex), every receipt must carry a valid signature by that key. Without one, a
    signature present is checked against the key it names (when `cryptography` is installed)."""
    problems: list[str] = []
    try:
        for where, receipt_json, output, index in _signed_outputs(record):
            receipt = receipt_of(receipt_json)
            problems += _receipt_problems(record, where, receipt, index)
            if public_key is not None or _can_verify_signatures():
                problem = _signature_problem(where, receipt, output, public_key)
                problems += [problem] if problem else []
    except (KeyError, TypeError, ValueError, json_format.ParseError) as exc:
        problems.append(f"malformed record: {type(exc).__name__}: {exc}")
    return problems


def _can_verify_signatures() -> bool:
    try:
        import cryptography  # noqa: F401  # optional: the verify extra
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- identity, replay, comparison


def identity_gap(record: Record, server: dict[str, str]) -> str | None:
    """Why the server cannot replay this record (another model or build), or None."""
    mine = record.get("server", {})
    if mine.get("model_identity", "") != server.get("model_identity", ""):
        return (
            f"model {mine.get('model_id', '?')} ({mine.get('model_identity', '')[:12]}), "
            f"server serves {server.get('model_id', '?')} ({server.get('model_identity', '')[:12]})"
        )
    fields = [f for f in BUILD_FIELDS if f != "model_identity"]
    if record.get("kind") not in ("generate", HTTP):
        fields.remove("sampler_version")  # scores do not sample
    for name in fields:  # a field the server does not report (an older HTTP front) is left to the receipt digest
        if name in server and mine.get(name, "") != server.get(name, ""):
            return f"{name} {mine.get(name, '')!r}, server serves {server.get(name, '')!r}"
    return None


def replay(client: Any, record: Record) -> Record:
    """Send the record's request again (through a Client, or an HttpTarget for an HTTP record) and record
    the answer the same way."""
    if (record.get("kind") == HTTP) != isinstance(client, HttpTarget):
        raise ValueError(
            "an HTTP record replays with --target http://HOST:PORT (the HTTP front)"
            if record.get("kind") == HTTP
            else "a gRPC record replays with --target HOST:PORT (the gRPC port), not over HTTP"
        )
    if isinstance(client, HttpTarget):
        return client.replay(record)
    rpc = record["rpc"]
    request = json_format.ParseDict(record["request"], REQUESTS[rpc]())
    if rpc != "GenerateStream":
        return record_for(rpc, request, client._unary(getattr(client._stub, rpc), request, UNSET, None))
    recorder = StreamRecorder(request)
    for message in client._stub.GenerateStream(request, **client._call_options(UNSET, None)):
        recorder.seen(message)
    return recorder.record()


def _token_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    ta, tb, la, lb = a.get("token_ids", []), b.get("token_ids", []), a.get("logprobs", []), b.get("logprobs", [])
    for i in range(max(len(ta), len(tb), len(la), len(lb))):
        pair = [(t[i] if i < len(t) else None) for t in (ta, tb, la, lb)]
        if pair[0] != pair[1] or pair[2] != pair[3]:
            return f"token {i}: recorded {pair[0]} (logprob {pair[2]}), server {pair[1]} (logprob {pair[3]})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _output_difference(where: str, a: dict[str, Any], b: dict[str, Any]) -> str | None:
    found = _token_difference(a, b)
    if found:
        return f"{where}{found}"
    for key in sorted((set(a) | set(b)) - NOT_COMPARED):
        if a.get(key) != b.get(key):
            return f"{where}{key}: recorded {_short(a.get(key))}, server {_short(b.get(key))}"
    return _digest_difference(where, a.get("receipt"), b.get("receipt"))


def _digest_difference(where: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> str | None:
    da, db = (a or {}).get("digest"), (b or {}).get("digest")
    return None if da == db else f"{where}receipt digest: recorded {da}, server {db}"


def first_difference(recorded: Record, replayed: Record) -> str | None:
    """The first place where a replay differs from the record, said for a reader; None when equal."""
    ra, rb = recorded["outputs"], replayed["outputs"]
    if len(ra) != len(rb):
        return f"{len(ra)} outputs recorded, the server returned {len(rb)}"
    kind = recorded["kind"]
    for j, (a, b) in enumerate(zip(ra, rb)):
        where = {"generate": f"sample {a.get('sample_index', j)}: ", "score": f"pair {j}: "}.get(kind, "")
        where = f"choice {a.get('index', j)}: " if kind == HTTP else where
        found = _output_difference(where, a, b)
        if found:
            return found
    echo_a, echo_b = recorded.get("prompt_echo"), replayed.get("prompt_echo")
    if echo_a != echo_b:
        return _output_difference("prompt echo: ", echo_a or {}, echo_b or {}) or "prompt echo differs"
    return _digest_difference("", recorded.get("receipt"), replayed.get("receipt"))


def check_record(line: int, record: Record, client: Any, server: dict[str, str] | None, key: str | None) -> Outcome:
    """Offline checks, then (with a client) the identity check and the replay. A record that fails the
    offline checks is still replayed, so its report names the first token that differs too."""
    name = label(record)
    problems = offline_problems(record, key)
    if client is None or server is None:
        if problems:
            return Outcome(line, name, INVALID, "; ".join(problems))
        return Outcome(line, name, VALID if key else CONSISTENT, "signed by the key" if key else "digests match")
    gap = identity_gap(record, server)
    if gap:
        return Outcome(line, name, INVALID if problems else CANNOT, "; ".join(problems) or gap)
    try:
        found = first_difference(record, replay(client, record))
    except Exception as exc:  # a failed replay is reported per record; the others still run
        return Outcome(line, name, ERROR, "; ".join([f"{type(exc).__name__}: {exc}", *problems]))
    if found:
        return Outcome(line, name, DIFFERS, "; ".join([found, *problems]))
    return Outcome(line, name, INVALID if problems else EQUAL, "; ".join(problems))


# --------------------------------------------------------------------------- the command


class Progress:
    """One status line on stderr: rewritten in place on a terminal, every 10 % otherwise (long files only)."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr, min_total: int = 20):
        self.total, self.stream, self.done = total, stream, 0
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.on = total >= min_total
        self.started = time.monotonic()
        self._next = 0.1

    def step(self, counts: dict[str, int]) -> None:
        self.done += 1
        if not self.on:
            return
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        text = f"verify: {self.done}/{self.total} records ({summary}) {time.monotonic() - self.started:.0f}s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if self.done == self.total else ""))
        elif self.done / self.total >= self._next or self.done == self.total:
            self.stream.write(text + "\n")
            self._next = self.done / self.total + 0.1
        self.stream.flush()


def verify_records(
    records: Sequence[tuple[int, Record]],
    client: Any = None,
    public_key: str | None = None,
    concurrency: int = 1,
    report: Callable[[Outcome], None] = print,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Every record's outcome, reported in file order; replays run `concurrency` at a time."""
    server = None
    if isinstance(client, HttpTarget):
        server = client.identity()
    elif client is not None:
        server = identity_of(client._unary(client._stub.GetModelInfo, pb.GetModelInfoRequest(), UNSET, None))
    counts: dict[str, int] = {}
    outcomes = []
    with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(check_record, line, rec, client, server, public_key) for line, rec in records]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            report(outcome)
            if progress is not None:
                progress.step(counts)
    return outcomes


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0: every record equal (or consistent offline); 6: some only cannot be verified here; 1: anything else."""
    statuses = {o.status for o in outcomes}
    if statuses <= {EQUAL, VALID, CONSISTENT}:
        return 0
    if statuses <= {EQUAL, VALID, CONSISTENT, CANNOT}:
        return 6
    return 1
