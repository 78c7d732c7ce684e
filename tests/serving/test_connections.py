"""Connection limits against idle and slow clients, on loopback only."""

from __future__ import annotations

import json
import resource
import socket

import httpx
import pytest

from common import endpoints
from serving import http_server
from serving.cli import main
from serving.metrics import MALFORMED_ROUTE

from .conftest import WAIT_S, wait_for

IDLE_CONNECTIONS = 1000
REQUESTS = "flux_http_requests_total"
# Each answer is the OpenAPI document (about 12 KB): 24 MB in all, past what loopback buffers hold.
PIPELINED_REQUESTS = 2000


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


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (a timeout fails the test instead)."""
    received = []
    while chunk := connection.recv(65536):
        received.append(chunk)
    return b"".join(received)


def error_answer(raw: bytes) -> tuple[int, dict, dict]:
    """An HTTP/1.1 answer in the API's error shape: (status, headers, its error object)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    assert headers["content-type"] == "application/json", raw
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return int(status_line.split()[1]), headers, error


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", id="half-the-headers"),
    ],
)
def test_a_client_too_slow_to_send_a_header_section_is_disconnected(start_server, tiny_generator, sent):
    server = start_server(lambda: tiny_generator, connection_limits=http_server.ConnectionLimits(read_timeout=0.5))
    with socket.create_connection(address(server), timeout=WAIT_S) as slow:
        slow.sendall(sent)
        # No request arrived to answer: the server closes it (EOF) without a word.
        assert read_until_closed(slow) == b""
    assert httpx.get(server.url + endpoints.HEALTHZ, timeout=WAIT_S).status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_a_408_counted_as_the_server_s_not_the_client_s(
    start_server, tiny_generator
):
    server = start_server(lambda: tiny_generator, connection_limits=http_server.ConnectionLimits(read_timeout=0.5))
    with socket.create_connection(address(server), timeout=WAIT_S) as slow:
        slow.sendall(
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        status, _, error = error_answer(read_until_closed(slow))
    assert (status, error["code"]) == (408, "request_timeout")
    wait_for(lambda: server.metric(REQUESTS, route=endpoints.GENERATE, status="408") == 1, "the 408 counted")
    assert server.metric(REQUESTS, route=endpoints.GENERATE, status="499") == 0


@pytest.mark.parametrize("junk_bytes", [4 * http_server.MAX_HEADER_BYTES, http_server.MAX_HEADER_BYTES + 1000])
@pytest.mark.parametrize("whole", [False, True], ids=["still-arriving", "complete"])
def test_a_header_section_past_the_limit_is_a_431_in_the_error_shape(start_server, tiny_generator, junk_bytes, whole):
    server = start_server(lambda: tiny_generator)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * junk_bytes + (b"\r\n\r\n" if whole else b"")
    with socket.create_connection(address(server), timeout=WAIT_S) as client:
        client.sendall(head)
        status, headers, error = error_answer(read_until_closed(client))
    assert (status, error["code"]) == (431, "header_too_large")
    assert f"{http_server.MAX_HEADER_BYTES} bytes" in error["message"]
    assert headers["connection"] == "close"
    assert server.metric(REQUESTS, route=MALFORMED_ROUTE, status="431") == 1


def test_a_header_section_just_under_the_limit_is_served(start_server, tiny_generator):
    server = start_server(lambda: tiny_generator)
    padding = http_server.MAX_HEADER_BYTES - 200
    response = httpx.get(server.url + endpoints.HEALTHZ, headers={"X-Junk": "j" * padding}, timeout=WAIT_S)
    assert response.status_code == 200


MALFORMED = [
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", id="negative-length"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
                 id="two-lengths"),
    pytest.param(b"POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
                 id="bad-chunk-size"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n", id="bad-header-name"),
    pytest.param(b"NOT A REQUEST LINE\r\n\r\n", id="bad-request-line"),
]


@pytest.mark.parametrize("sent", MALFORMED)
def test_malformed_http_is_a_400_in_the_error_shape_and_counted(start_server, tiny_generator, sent):
    server = start_server(lambda: tiny_generator)
    with socket.create_connection(address(server), timeout=WAIT_S) as client:
        client.sendall(sent)
        status, headers, error = error_answer(read_until_closed(client))
    assert (status, error["type"], error["code"]) == (400, "invalid_request_error", "malformed_request")
    assert "Bad Header" not in error["message"] and "zz" not in error["message"], "the input is not echoed"
    assert len(headers["x-request-id"]) == 32
    assert server.metric(REQUESTS, route=MALFORMED_ROUTE, status="400") == 1


def test_a_pipelining_client_that_never_reads_is_disconnected_after_the_write_timeout(start_server, tiny_generator):
    server = start_server(lambda: tiny_generator, connection_limits=http_server.ConnectionLimits(write_timeout=0.5))
    served = server.server.server_state.connections
    with socket.create_connection(address(server), timeout=WAIT_S) as reads_nothing:
        # Far more answers than the socket buffers on both ends hold: the server's writes stall.
        request = f"GET {endpoints.OPENAPI} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        reads_nothing.sendall(request * PIPELINED_REQUESTS)
        ours = reads_nothing.getsockname()

        def open_() -> bool:
            return any(connection.client == ours for connection in list(served))

        wait_for(open_, "the server to take the connection")
        wait_for(lambda: not open_(), "the server to drop the connection")
        # What it had written before is all there is: not every answer.
        try:
            received = read_until_closed(reads_nothing)
        except ConnectionResetError:
            received = b""
    assert received.count(b"HTTP/1.1 200 ") < PIPELINED_REQUESTS
    assert httpx.get(server.url + endpoints.HEALTHZ, timeout=WAIT_S).status_code == 200


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
