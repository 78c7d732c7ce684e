"""Request ids for the server's JSON log lines (common/logs.py is the format): a request's line
carries its request id, route, status, latency, seed and steps as JSON values."""

from __future__ import annotations

import re
import uuid

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is honoured only if it is a plain token; anything else gets a fresh id.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from(header_value: str | None) -> str:
    if header_value is not None and _CLIENT_REQUEST_ID.match(header_value):
        return header_value
    return uuid.uuid4().hex
