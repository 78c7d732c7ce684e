"""What a JSON body must be before any route sees it: small, JSON by content type, and JSON by content.

An ASGI middleware in front of the routes that take a body. It refuses with 415 a content
type other than ``application/json``, with 413 a body over the limit (from Content-Length
before reading anything, or as soon as the streamed body passes it), and with 400 anything
that is not strict JSON: invalid UTF-8, lone surrogates, ``NaN``/``Infinity``, numbers that
overflow a double (``1e309``), nesting deeper than the parser's limit. The body it accepted
is replayed to the route, which parses it again (cheap at this size).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from http import HTTPStatus

import pydantic_core
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ApiError, error_response

DEFAULT_MAX_BODY_BYTES = 64 * 1024
JSON_MEDIA_TYPE = "application/json"


def _non_finite_number(value: object) -> bool:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def check_json(body: bytes) -> None:
    """Raise ApiError(400) unless ``body`` is strict JSON; the message never quotes the body."""
    try:
        # jiter: rejects invalid UTF-8, lone surrogates, NaN/Infinity and nesting past 200.
        value = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as error:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {error}", code="invalid_json") from None
    if _non_finite_number(value):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "request body is not valid JSON: a number is out of the range of a double",
            code="invalid_json",
        )


def _media_type(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";")[0].strip().lower()
    return None


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class JsonBodyGuard:
    def __init__(self, app: ASGIApp, paths: Collection[str], max_body_bytes: int) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_checked_body(scope, receive)
        except ApiError as error:
            await error_response(error)(scope, receive, send)
            return
        if body is None:
            return  # The client left while sending; there is no one to answer.

        replayed = False

        async def replay_then_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # After the body, the only message left is http.disconnect: routes wait on it.
            return await receive()

        await self.app(scope, replay_then_receive, send)

    async def _read_checked_body(self, scope: Scope, receive: Receive) -> bytes | None:
        media_type = _media_type(scope)
        if media_type != JSON_MEDIA_TYPE:
            raise ApiError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"Content-Type must be {JSON_MEDIA_TYPE}",
                code="unsupported_media_type",
            )
        too_large = ApiError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"request body over the limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        check_json(body)
        return body
