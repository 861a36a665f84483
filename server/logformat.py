"""Log formats: the default text lines, or one JSON object per line (--log-format json)."""

from __future__ import annotations

import json
import logging
import time

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and a request's fields when it has them.

    A request's record (the servicer's `extra={"request": {...}}`) carries rpc, request_id, key_id,
    seed, token counts, ttft_s, time_s and status, so log pipelines need not parse the message.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if isinstance(request, dict):
            entry.update(request)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True, default=str)


def formatter(kind: str) -> logging.Formatter:
    if kind not in LOG_FORMATS:
        raise ValueError(f"log_format={kind!r}: allowed {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT)
