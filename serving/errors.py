"""Every error the server sends, on every route, in OpenAI's shape and with OpenAI's status codes.

``{"error": {"message", "type", "param", "code"}}``: the official SDK raises BadRequestError,
RateLimitError, ... with ``message``. Messages name the field and the rule, never the input:
a client's junk (50 MB, lone surrogates) is not echoed, and nothing here can fail to encode.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.schemas import NON_BLANK_PATTERN, ErrorResponse

INVALID_REQUEST = "invalid_request_error"
# OpenAI's error types for the statuses that are not the client's fault.
ERROR_TYPES = {
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.INTERNAL_SERVER_ERROR: "server_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "server_error",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout_error",
}
# A field name from the body is repeated only when it looks like one; anything else is not echoed.
_PRINTABLE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
MAX_VALIDATION_PROBLEMS = 5
# A "/" that starts a path: not inside a word or a relative path (``a/b``), up to a space or punctuation.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s:,;()'\"]*")
NODE_PATH_PLACEHOLDER = "<path on the node>"


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})


def error_body(error: ApiError) -> dict:
    """The JSON body of an error, as every route (and the HTTP layer, serving/http_server.py) sends it."""
    return ErrorResponse.model_validate(
        {
            "error": {
                "message": error.message,
                "type": ERROR_TYPES.get(error.status, INVALID_REQUEST),
                "param": error.param,
                "code": error.code,
            }
        }
    ).model_dump()


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def without_node_paths(text: str) -> str:
    """``text`` with every absolute path (an artifact file on the node, a device) replaced: errors that
    clients and probes see say what failed, not how the node is laid out (the log keeps the full text).
    A path inside the artifact (``transformer/graph.pt``) is relative and stays."""
    return _ABSOLUTE_PATH.sub(NODE_PATH_PLACEHOLDER, text)


def internal_error() -> ApiError:
    """What a client is told of an unexpected failure: nothing of it (the log has the traceback)."""
    return ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error (the server log has the details)",
                    code="server_error")


def _field_name(location: Sequence[object]) -> str | None:
    """``("body", "n")`` -> ``"n"``; None for the body as a whole or a name not safe to repeat."""
    parts = [str(part) for part in location[1:] if not isinstance(part, int)]
    name = ".".join(parts)
    return name if name and all(_PRINTABLE_NAME.match(part) for part in parts) else None


def _describe(problem: Mapping) -> str:
    name = _field_name(problem.get("loc", ()))
    kind = problem.get("type", "")
    if kind == "extra_forbidden":
        return f"unrecognized request argument {name!r}" if name else "an unrecognized request argument"
    if kind == "json_invalid":
        return "request body is not valid JSON"
    if kind == "string_pattern_mismatch" and problem.get("ctx", {}).get("pattern") == NON_BLANK_PATTERN:
        message = "must contain non-whitespace text"
    else:
        # Pydantic's messages state the rule ("Input should be less than or equal to 100"),
        # not the input; ctx (which may hold it) is left out.
        message = str(problem.get("msg", "is invalid"))
    return f"{name}: {message}" if name else f"request body: {message}"


def validation_error(problems: Sequence[Mapping]) -> ApiError:
    shown = [_describe(problem) for problem in problems[:MAX_VALIDATION_PROBLEMS]]
    if len(problems) > MAX_VALIDATION_PROBLEMS:
        shown.append(f"and {len(problems) - MAX_VALIDATION_PROBLEMS} more")
    first = problems[0] if problems else {}
    return ApiError(
        HTTPStatus.BAD_REQUEST,
        "; ".join(shown) or "invalid request",
        code="invalid_value",
        param=_field_name(first.get("loc", ())),
    )


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    async def on_validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(error.errors()))

    async def on_http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        # Routing errors: 404 for an unknown path, 405 for a known one with another method.
        phrase = HTTPStatus(error.status_code).phrase
        code = phrase.lower().replace(" ", "_")
        return error_response(ApiError(error.status_code, phrase, code=code, headers=error.headers))

    async def on_unexpected_error(_: Request, error: Exception) -> JSONResponse:
        # Uvicorn still logs the traceback; the client gets no detail of it.
        return error_response(internal_error())

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(Exception, on_unexpected_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


def documented_errors(*statuses: HTTPStatus) -> dict[int, dict]:
    """OpenAPI ``responses`` entries for these statuses, all with the one error body."""
    return {int(status): {"model": ErrorResponse, "description": status.phrase} for status in statuses}
