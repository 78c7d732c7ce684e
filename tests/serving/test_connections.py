"""Connection limits against idle and slow clients, on loopback only."""

from __future__ import annotations

import resource
import socket

import httpx
import pytest

from common import endpoints
from serving import http_server
from serving.cli import main

from .conftest import WAIT_S

IDLE_CONNECTIONS = 1000


@pytest.fixture
def open_files_for_both_ends():
    """The test holds both ends of every connection in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * IDLE_CONNECTIONS + 2 * http_server.RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        # Raising the hard limit too needs root (as in CI); otherwise it must already allow this.
        raised_hard = hard if hard == resource.RLIM_INFINITY else max(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, raised_hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def test_healthz_answers_while_a_thousand_connections_sit_idle(start_server, tiny_generator, open_files_for_both_ends):
    server = start_server(lambda: tiny_generator, connection_limits=http_server.ConnectionLimits(read_timeout=600))
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(address(server)))
        # A probe on a fresh connection, as kubelet's.
        probe = httpx.get(server.url + endpoints.HEALTHZ, timeout=WAIT_S)
        assert probe.status_code == 200
        assert server.wait_until_settled().status_code == 200
    finally:
        for connection in idle:
            connection.close()


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", id="half-the-headers"),
        pytest.param(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
            id="half-the-body",
        ),
    ],
)
def test_a_client_too_slow_to_send_its_request_is_disconnected(start_server, tiny_generator, sent):
    server = start_server(lambda: tiny_generator, connection_limits=http_server.ConnectionLimits(read_timeout=0.5))
    with socket.create_connection(address(server), timeout=WAIT_S) as slow:
        slow.sendall(sent)
        # The server closes it (EOF), with no answer: a timeout here would fail the test instead.
        assert slow.recv(1024) == b""
    assert httpx.get(server.url + endpoints.HEALTHZ, timeout=WAIT_S).status_code == 200


def test_a_header_section_past_the_limit_is_refused_before_it_ends(start_server, tiny_generator):
    server = start_server(lambda: tiny_generator)
    with socket.create_connection(address(server), timeout=WAIT_S) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * (4 * http_server.MAX_HEADER_BYTES))
        assert client.recv(1024).startswith(b"HTTP/1.1 400 ")


def test_a_concurrency_limit_beyond_the_open_files_allowed_exits_2_naming_the_flag(capsys):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    too_many = (hard if hard != resource.RLIM_INFINITY else 2**20) * 4
    with pytest.raises(SystemExit) as exit_:
        main(["--local", "--port", "0", "--limit-concurrency", str(too_many)])
    assert exit_.value.code == 2
    assert f"--limit-concurrency {too_many} needs {too_many + http_server.RESERVED_FDS} open files" in (
        capsys.readouterr().err
    )
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)
