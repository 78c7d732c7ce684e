"""Uvicorn as this server runs it: the port bound first, and bounded against slow, idle and
malformed clients.

* The listening socket is bound before anything else happens, so a port in use fails in
  milliseconds instead of after minutes of loading graphs onto the device.
* A connection must deliver a whole request (headers and body) within ``read_timeout``
  seconds from its first byte (or from opening): uvicorn itself has no such timeout, so
  a client that opens connections and sends nothing, or dribbles bytes, would hold a file
  descriptor forever (slowloris). A request whose headers arrived is answered 408; a
  connection that never sent a whole header section is just closed. Idle keep-alive
  connections close after ``keep_alive_timeout``.
* A connection whose client reads nothing of what it is sent (a pipelining client that never
  reads, a stream nobody consumes) is closed once the transport's output buffer has stayed
  over its high-water mark for ``write_timeout``: its buffer is bounded by that mark plus one
  response, its lifetime by the timeout.
* A header section (request line and headers) over MAX_HEADER_BYTES is refused with 431,
  whether it arrives in pieces (h11's own bound on an incomplete event) or at once (h11 parses
  a complete one whatever its size, so that is checked here).
* Requests the parser refuses (bad framing, a bad Content-Length or chunk size, the header
  limit) are answered in the API's error shape (serving/errors.py) instead of uvicorn's plain
  text, counted as ``route="malformed"`` and logged, since no route ever sees them.
* At most ``limit_concurrency`` connections and requests at once: past that, uvicorn answers
  503 at once instead of running out of file descriptors, whose soft limit is raised to fit.
  (That 503 is uvicorn's own plain text: it answers before the protocol reads the request.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.errors import ApiError, error_body
from serving.logs import REQUEST_ID_HEADER, request_id_from
from serving.metrics import LOG_FIELDS_SCOPE_KEY, OUTCOME_STATUS_SCOPE_KEY, REQUEST_TIMEOUT

DEFAULT_LIMIT_CONCURRENCY = 2048
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_WRITE_TIMEOUT_S = 30.0
# A request's header section past this is refused (431): probes, the SDK and browsers send about 1 KiB.
MAX_HEADER_BYTES = 16 * 1024
# Descriptors beyond the connections: the listener, the log, the artifact files, the device.
RESERVED_FDS = 128
# What h11 suggests for an error it gives no status for.
MALFORMED_REQUEST = HTTPStatus.BAD_REQUEST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S
    write_timeout: float = DEFAULT_WRITE_TIMEOUT_S


def header_section_bytes(request: h11.Request) -> int:
    """The size of a request's head as sent: request line, header lines, the blank line (h11 drops
    only optional whitespace around values)."""
    request_line = len(request.method) + len(request.target) + len(b"  HTTP/1.1\r\n")
    return request_line + sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items()) + 2


class LimitedHeaderConnection(h11.Connection):
    """h11's server side, refusing a complete header section over ``max_header_bytes`` the way h11
    refuses an incomplete one (431), and keeping the last protocol error for the answer."""

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.protocol_error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            event = super().next_event()
            if isinstance(event, h11.Request) and header_section_bytes(event) > self.max_header_bytes:
                raise h11.RemoteProtocolError(
                    f"header section over {self.max_header_bytes} bytes",
                    error_status_hint=HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                )
        except h11.RemoteProtocolError as error:
            self.protocol_error = error
            raise
        return event


def _protocol_refusal(status: int) -> ApiError:
    """What a request the parser refused is told: our words, never the client's bytes."""
    if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
        return ApiError(status, f"request header section over the limit of {MAX_HEADER_BYTES} bytes",
                        code="header_too_large")
    return ApiError(status, "malformed HTTP request: its request line, headers, Content-Length or chunked "
                    "framing", code="malformed_request")


class BoundedH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol with the read and write timeouts, the header limit and the answers in the
    API's error shape described above."""

    def __init__(
        self,
        *args,
        read_timeout: float,
        write_timeout: float,
        on_protocol_error: Callable[[int, str], None],
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.conn = LimitedHeaderConnection(MAX_HEADER_BYTES)
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._on_protocol_error = on_protocol_error
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read_deadline()

    def data_received(self, data: bytes) -> None:
        # Uvicorn's keep-alive timer covers an idle connection; from its first byte on, a new
        # request runs against the read deadline.
        if self._read_deadline is None:
            self._arm_read_deadline()
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel_read_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        self._cancel_write_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self._write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_deadline()
        super().resume_writing()

    def send_400_response(self, msg: str) -> None:
        """Uvicorn calls this for every h11 protocol error (its ``msg`` is always the same text)."""
        error = self.conn.protocol_error
        status = error.error_status_hint if error is not None else MALFORMED_REQUEST
        # h11's own text may quote the client's bytes: it goes to the log only.
        log.info("refused a malformed request with %d: %s", status, error)
        request_id = request_id_from(None)
        self._on_protocol_error(status, request_id)
        self._answer_and_close(_protocol_refusal(status), request_id)

    def _answer_and_close(self, error: ApiError, request_id: str) -> None:
        body = json.dumps(error_body(error)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close"), (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
        try:
            output = self.conn.send(h11.Response(status_code=error.status, headers=headers,
                                                 reason=HTTPStatus(error.status).phrase.encode()))
            output += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            output = b""  # h11 cannot answer in this state: the connection just closes.
        self.transport.write(output)
        self.transport.close()

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self._read_timeout, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _cancel_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        receiving_body = (self.cycle is not None and not self.cycle.response_started
                          and self.conn.their_state is h11.SEND_BODY)
        if not receiving_body:
            self.transport.close()  # No request arrived to answer: the connection just closes.
            return
        # The route waiting for this body sees the connection end; RequestObserver counts the server's 408.
        scope = self.cycle.scope
        scope[OUTCOME_STATUS_SCOPE_KEY] = REQUEST_TIMEOUT
        timeout = ApiError(REQUEST_TIMEOUT, f"request not received whole within {self._read_timeout:g} s",
                           code="request_timeout")
        self._answer_and_close(timeout, scope.get(LOG_FIELDS_SCOPE_KEY, {}).get("request_id", request_id_from(None)))

    def _write_timed_out(self) -> None:
        self._write_deadline = None
        log.info("closed a connection whose client read nothing for %g s", self._write_timeout)
        self.transport.abort()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now; raises OSError (e.g. address in use) naming nothing else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    return sock


def ensure_fd_limit(connections: int) -> None:
    """Raise the open-files limit to fit ``connections`` (the hard one too, where allowed);
    ValueError if it cannot be."""
    needed = connections + RESERVED_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    raised_hard = hard if hard == resource.RLIM_INFINITY else max(hard, needed)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, raised_hard))
    except (ValueError, OSError):
        raise ValueError(
            f"--limit-concurrency {connections} needs {needed} open files, the hard limit is {hard}: "
            f"lower it or raise the limit (ulimit -n)"
        ) from None


def server(app, sock: socket.socket, limits: ConnectionLimits, **config) -> uvicorn.Server:
    """A uvicorn server for ``app`` (serving.app.create_app's: the requests the HTTP layer refuses are
    counted into its metrics) on the bound ``sock``: run it with ``.run(sockets=[sock])``."""
    host, port = sock.getsockname()[:2]
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=partial(BoundedH11Protocol, read_timeout=limits.read_timeout, write_timeout=limits.write_timeout,
                         on_protocol_error=app.state.metrics.count_protocol_error),
            limit_concurrency=limits.limit_concurrency,
            timeout_keep_alive=limits.keep_alive_timeout,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            # RequestObserver writes one JSON line per request.
            access_log=False,
            **config,
        )
    )
