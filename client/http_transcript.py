"""Transcripts of the OpenAI-compatible HTTP front: record a request and its response, replay them over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from .transcript import IDENTITY_FIELDS, TRANSCRIPT_VERSION, Record, TranscriptArg, as_transcript, logprob_hex

KIND = "http"
PATHS = ("/v1/completions", "/v1/chat/completions")
# Per choice: what a replay must give again (the rest of a response, ids and times, may differ).
_Choice = dict[str, Any]


def _hex(value: float | None) -> str | None:
    return None if value is None else logprob_hex(float(value))


def _logprobs(block: dict[str, Any] | None) -> tuple[list[str | None], list[Any]]:
    """(logprob bits per token, top alternatives per token as [[token text, bits], ...] or None) of a
    completion's or a chat choice's `logprobs` block. JSON numbers read back as the doubles sent."""
    if not block:
        return [], []
    if "content" in block:  # chat
        rows = block["content"] or []
        tops = [[[a["token"], _hex(a["logprob"])] for a in row.get("top_logprobs") or []] for row in rows]
        return [_hex(row["logprob"]) for row in rows], tops
    values = [_hex(v) for v in block.get("token_logprobs") or []]
    rows = block.get("top_logprobs") or []
    return values, [None if row is None else [[t, _hex(v)] for t, v in row.items()] for row in rows]


def _text(part: dict[str, Any]) -> str:
    if "text" in part:
        return str(part["text"] or "")
    message = part.get("message") or part.get("delta") or {}
    return str(message.get("content") or "")


def _output(parts: list[dict[str, Any]]) -> Record:
    """One choice's record output from its parts: the unary choice, or a stream's parts in order."""
    out: Record = {"index": parts[0]["index"], "token_ids": [], "logprobs": [], "text": ""}
    tops: list[Any] = []
    for part in parts:
        values, top = _logprobs(part.get("logprobs"))
        out["token_ids"] += [int(t) for t in part.get("token_ids") or []]
        out["logprobs"] += values
        tops += top
        out["text"] += _text(part)
        for name in ("finish_reason", "receipt"):
            if part.get(name) is not None:
                out[name] = part[name]
    if any(tops):
        out["top_logprobs"] = tops
    return out


def _events(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to `data: [DONE]`; an error event raises."""
    for raw in lines:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise HttpReplayError(f"the stream ended with an error: {event['error']}")
        yield event


def http_record(path: str, request: dict[str, Any], response: dict[str, Any] | list[dict[str, Any]]) -> Record:
    """The record of one POST to `path`: `response` is the unary JSON body, or a stream's event payloads."""
    if path not in PATHS:
        raise ValueError(f"path {path!r}: recorded are {', '.join(PATHS)}")
    events = response if isinstance(response, list) else [response]
    if not events:
        raise ValueError("no response to record")
    parts: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        for part in event.get("choices") or []:
            parts.setdefault(int(part["index"]), []).append(part)
    first = events[0]
    req = dict(request)
    drawn = req.get("seed") is None
    req["seed"] = first["seed"]  # what the server used: the request's, or the one it drew
    out: Record = {"transcript": TRANSCRIPT_VERSION, "kind": KIND, "rpc": f"POST {path}", "request": req}
    if drawn:
        out["seed_drawn_by_server"] = True
    out["system_fingerprint"] = first.get("system_fingerprint", "")
    out["outputs"] = [_output(parts[k]) for k in sorted(parts)]
    return out


def http_server(record: Record) -> dict[str, str]:
    """The server block of an HTTP record: its first receipt's build fields (the front has no GetModelInfo)."""
    receipt: dict[str, Any] = next((o["receipt"] for o in record["outputs"] if o.get("receipt")), {})
    out = {name: str(receipt.get(name, "")) for name in IDENTITY_FIELDS if name in receipt}
    out["system_fingerprint"] = record.get("system_fingerprint", "")
    return out


def write_http(
    transcript: TranscriptArg, path: str, request: dict[str, Any], response: dict[str, Any] | list[dict[str, Any]]
) -> Record:
    """Append the record of one POST (see http_record) to a transcript (a Transcript or a path); returns it."""
    record = http_record(path, request, response)
    sink = as_transcript(transcript)
    if sink is None:
        raise ValueError("no transcript to write to")
    sink.write(record, http_server(record))
    if sink is not transcript:
        sink.close()
    return record


class HttpReplayError(Exception):
    """The HTTP front refused or broke off a replayed request."""


class HttpTarget:
    """A server's HTTP front for `seedstream verify --target http://HOST:PORT`: its identity and replays."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _open(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method="GET" if body is None else "POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise HttpReplayError(f"HTTP {exc.code}: {exc.read().decode('utf-8', 'replace')[:300]}") from None

    def __enter__(self) -> HttpTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def identity(self) -> dict[str, str]:
        """The served build, from GET /v1/models, as a record's `server` block has it."""
        with self._open("/v1/models") as response:
            (card,) = json.load(response)["data"]
        out = {name: str(card.get(name, "")) for name in IDENTITY_FIELDS if name in card}
        out["model_id"] = str(card.get("id", ""))
        return out

    def replay(self, record: Record) -> Record:
        """POST the recorded request again (streamed if it was) and record the answer the same way."""
        path = record["rpc"].removeprefix("POST ")
        with self._open(path, record["request"]) as response:
            if record["request"].get("stream"):
                return http_record(path, record["request"], list(_events(response)))
            return http_record(path, record["request"], json.load(response))
