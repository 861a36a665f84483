"""Transcripts: JSON Lines records of completions and scores, lossless, for `seedstream verify` (docs/transcripts.md)."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format

from seedstream.v1 import textgen_pb2 as pb

TRANSCRIPT_VERSION = 1
Record = dict[str, Any]
# GetModelInfo fields a record keeps as the server's identity (the build the promise holds for, and the key).
IDENTITY_FIELDS = (
    "model_id",
    "model_identity",
    "model_sha256",
    "engine_version",
    "sampler_version",
    "weight_format",
    "dtype",
    "device",
    "server_version",
    "receipt_public_key",
)
KINDS = {"Generate": "generate", "GenerateStream": "generate", "Score": "score", "ScoreRolling": "score_rolling"}


# --------------------------------------------------------------------------- lossless numbers


def logprob_hex(value: float) -> str:
    """The value's exact bits, big-endian hex: 8 digits when it is a float32 (what the server computes), else 16."""
    try:
        as_f32 = struct.pack(">f", value)
    except OverflowError:
        as_f32 = b""
    if as_f32 and (struct.unpack(">f", as_f32)[0] == value or math.isnan(value)):
        return as_f32.hex()
    return struct.pack(">d", value).hex()


def hex_logprob(bits: str) -> float:
    """The float a logprob_hex() string stands for (ValueError for anything else)."""
    raw = bytes.fromhex(bits)
    if len(raw) == 4:
        return float(struct.unpack(">f", raw)[0])
    if len(raw) == 8:
        return float(struct.unpack(">d", raw)[0])
    raise ValueError(f"logprob bits {bits!r}: expected 8 or 16 hex digits")


def _hexes(values: Sequence[float]) -> list[str]:
    return [logprob_hex(v) for v in values]


def message_json(message: Any) -> dict[str, Any]:
    """Protobuf JSON (proto field names) of a message."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def receipt_of(data: dict[str, Any]) -> pb.ReproducibilityReceipt:
    return json_format.ParseDict(data, pb.ReproducibilityReceipt())


def receipt_digest(receipt: pb.ReproducibilityReceipt) -> str:
    """The digest the server computes: SHA-256 of the receipt without digest, model_id and signature."""
    copy = pb.ReproducibilityReceipt()
    copy.CopyFrom(receipt)
    for name in ("digest", "model_id", "signature"):
        copy.ClearField(name)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def identity_of(info: pb.GetModelInfoResponse) -> dict[str, str]:
    """The server identity a record keeps, from GetModelInfo."""
    return {name: str(getattr(info, name)) for name in IDENTITY_FIELDS}


# --------------------------------------------------------------------------- records


def _completion(
    m: pb.GenerateResponse | pb.GenerateStreamResponse,
    tokens: list[int],
    logprobs: list[float],
    top: list[pb.TopLogprobs],
    text: str,
) -> Record:
    out: Record = {
        "sample_index": m.sample_index,
        "token_ids": tokens,
        "logprobs": _hexes(logprobs),
        "text": text,
        "finish_reason": pb.FinishReason.Name(m.finish_reason),
    }
    if top:
        out["top_logprobs"] = [[[a.token_id, logprob_hex(a.logprob)] for a in row.alternatives] for row in top]
    if m.HasField("receipt"):
        out["receipt"] = message_json(m.receipt)
    return out


def _prompt_echo(ids: Sequence[int], logprobs: Sequence[float]) -> Record | None:
    return {"token_ids": list(ids), "logprobs": _hexes(logprobs)} if ids else None


def _request_json(request: pb.GenerateRequest, seed: int) -> tuple[dict[str, Any], bool]:
    """The request as sent, with the seed the server reported filled in when it drew one."""
    drawn = not request.HasField("seed")
    copy = pb.GenerateRequest()
    copy.CopyFrom(request)
    copy.seed = seed
    return message_json(copy), drawn


def _record(rpc: str, request: dict[str, Any], outputs: list[Record], **extra: Any) -> Record:
    out: Record = {"transcript": TRANSCRIPT_VERSION, "kind": KINDS[rpc], "rpc": rpc, "request": request}
    out.update({k: v for k, v in extra.items() if v is not None})
    out["outputs"] = outputs
    return out


def generate_record(request: pb.GenerateRequest, response: pb.GenerateResponse) -> Record:
    """A unary Generate: one output per sample."""
    samples = list(response.samples) or [response]
    outputs = [_completion(s, list(s.token_ids), list(s.logprobs), list(s.top_logprobs), s.text) for s in samples]
    req, drawn = _request_json(request, response.seed)
    echo = _prompt_echo(response.prompt_token_ids, response.prompt_logprobs)
    return _record("Generate", req, outputs, seed_drawn_by_server=drawn or None, prompt_echo=echo)


class StreamRecorder:
    """Collects a GenerateStream's messages (samples interleaved, resumes joined) into one record."""

    def __init__(self, request: pb.GenerateRequest):
        self.request = request
        self.samples = request.n if request.HasField("n") else 1
        self._parts: dict[int, list[pb.GenerateStreamResponse]] = {}
        self._finished: set[int] = set()
        self._echo: Record | None = None
        self.written = False

    def seen(self, message: pb.GenerateStreamResponse) -> None:
        self._parts.setdefault(message.sample_index, []).append(message)
        if message.prompt_token_ids and self._echo is None:
            self._echo = _prompt_echo(message.prompt_token_ids, message.prompt_logprobs)
        if message.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
            self._finished.add(message.sample_index)

    @property
    def done(self) -> bool:
        return not self.written and len(self._finished) >= self.samples

    def record(self) -> Record:
        self.written = True
        outputs = []
        for index in sorted(self._parts):
            parts = self._parts[index]
            tokens = [t for m in parts for t in m.token_ids]
            logprobs = [x for m in parts for x in m.logprobs]
            top = [row for m in parts for row in m.top_logprobs]
            outputs.append(_completion(parts[-1], tokens, logprobs, top, "".join(m.text for m in parts)))
        seed = next(iter(self._parts.values()))[0].seed if self._parts else self.request.seed
        req, drawn = _request_json(self.request, seed)
        return _record("GenerateStream", req, outputs, seed_drawn_by_server=drawn or None, prompt_echo=self._echo)


def score_record(request: pb.ScoreRequest, response: pb.ScoreResponse) -> Record:
    outputs = [
        {
            "token_ids": list(r.continuation_token_ids),
            "logprobs": _hexes(r.logprobs),
            "logprob": logprob_hex(r.logprob),
            "is_greedy": r.is_greedy,
            "greedy_token_ids": list(r.greedy_token_ids),
            "context_tokens": r.context_tokens,
            "truncated_tokens": r.truncated_tokens,
        }
        for r in response.results
    ]
    return _record("Score", message_json(request), outputs, receipt=message_json(response.receipt))


def score_rolling_record(request: pb.ScoreRollingRequest, response: pb.ScoreRollingResponse) -> Record:
    output = {
        "token_ids": list(response.token_ids),
        "logprobs": _hexes(response.logprobs),
        "logprob": logprob_hex(response.logprob),
        "greedy_token_ids": list(response.greedy_token_ids),
        "num_windows": response.num_windows,
        "max_length": response.max_length,
    }
    return _record("ScoreRolling", message_json(request), [output], receipt=message_json(response.receipt))


def record_for(rpc: str, request: Any, response: Any) -> Record:
    """The record of one unary RPC's request and response."""
    if rpc == "Generate":
        return generate_record(request, response)
    if rpc == "Score":
        return score_record(request, response)
    return score_rolling_record(request, response)


# --------------------------------------------------------------------------- files


class Transcript:
    """An append-only JSON Lines file of records; thread-safe; each line is flushed when written.

    Give a Client (or one call) `transcript=Transcript("run.jsonl")`, or just the path.
    """

    def __init__(self, path: str | os.PathLike[str] | IO[str]):
        self._lock = threading.Lock()
        if isinstance(path, (str, os.PathLike)):
            self.path: Path | None = Path(path)
            self._file: IO[str] | None = None
        else:
            self.path, self._file = None, path
        self.count = 0

    def write(self, record: Record, server: dict[str, str]) -> None:
        """Append one record, stamped with the server's identity and the time."""
        full = dict(record)
        full["server"] = server
        full["recorded_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        line = json.dumps(full, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._file is None:
                assert self.path is not None
                self.path.parent.mkdir(parents=True, exist_ok=True)  # e.g. beside lm-eval's output, not yet made
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  # closed by close()
            self._file.write(line)
            self._file.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None and self.path is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Transcript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


TranscriptArg = Transcript | str | os.PathLike[str] | None


def as_transcript(value: TranscriptArg) -> Transcript | None:
    if value is None or isinstance(value, Transcript):
        return value
    return Transcript(value)


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Record]]:
    """(line number, record) for every non-empty line; ValueError naming the line for one that is not a record."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(record, dict) or record.get("transcript") != TRANSCRIPT_VERSION:
                raise ValueError(f"{path}:{number}: not a transcript record of version {TRANSCRIPT_VERSION}")
            yield number, record
