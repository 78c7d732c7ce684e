"""Uvicorn as this server runs it: the port bound first, and bounded against slow or idle clients.

* The listening socket is bound before anything else happens, so a port in use fails in
  milliseconds instead of after minutes of loading graphs onto the device.
* A connection must deliver a whole request (headers and body) within ``read_timeout``
  seconds from its first byte (or from opening): uvicorn itself has no such timeout, so
  a client that opens connections and sends nothing, or dribbles bytes, would hold a file
  descriptor forever (slowloris). Idle keep-alive connections close after
  ``keep_alive_timeout``.
* At most ``limit_concurrency`` connections and requests at once: past that, uvicorn answers
  503 at once instead of running out of file descriptors, whose soft limit is raised to fit.
"""

from __future__ import annotations

import asyncio
import resource
import socket
from dataclasses import dataclass
from functools import partial

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_LIMIT_CONCURRENCY = 2048
DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5
DEFAULT_READ_TIMEOUT_S = 30.0
# Headers past this size are refused by h11 (400): probes, the SDK and browsers send about 1 KiB.
MAX_HEADER_BYTES = 16 * 1024
# Descriptors beyond the connections: the listener, the log, the artifact files, the device.
RESERVED_FDS = 128


@dataclass(frozen=True)
class ConnectionLimits:
    limit_concurrency: int = DEFAULT_LIMIT_CONCURRENCY
    keep_alive_timeout: int = DEFAULT_KEEP_ALIVE_TIMEOUT_S
    read_timeout: float = DEFAULT_READ_TIMEOUT_S


class ReadTimeoutH11Protocol(H11Protocol):
    """Uvicorn's h11 protocol, closing a connection whose request is not fully read in time."""

    def __init__(self, *args, read_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout
        self._read_deadline: asyncio.TimerHandle | None = None

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
        super().connection_lost(exc)

    def _arm_read_deadline(self) -> None:
        self._read_deadline = self.loop.call_later(self._read_timeout, self._read_timed_out)

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


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
    """A uvicorn server for ``app`` on the bound ``sock``: run it with ``.run(sockets=[sock])``."""
    host, port = sock.getsockname()[:2]
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            http=partial(ReadTimeoutH11Protocol, read_timeout=limits.read_timeout),
            limit_concurrency=limits.limit_concurrency,
            timeout_keep_alive=limits.keep_alive_timeout,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            # RequestObserver writes one JSON line per request.
            access_log=False,
            **config,
        )
    )
