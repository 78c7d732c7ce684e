"""JSON log lines, one object per line, for the whole process (uvicorn's own lines included).

Fields passed as ``extra={"fields": {...}}`` are merged into the line, so a request's line
carries its request id, route, status, latency, seed and steps as JSON values.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from datetime import datetime, timezone

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is honoured only if it is a plain token; anything else gets a fresh id.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(header_value: str | None) -> str:
    if header_value is not None and _CLIENT_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: a field the client chose can never make a line unwritable.
        return json.dumps(line, ensure_ascii=True, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr, unless the process configured logging already (an embedding app, pytest)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])
