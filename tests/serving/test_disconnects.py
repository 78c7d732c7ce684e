"""Work for clients that left is dropped: a queued job is removed before it runs, a running one
stops at its next denoising step, and their places go to the next clients."""

from __future__ import annotations

import json
import socket

import pytest

from model.runtime import GenerationStopped
from common import endpoints

from .conftest import wait_for

IN_FLIGHT = "flux_generations_in_flight"
QUEUE_DEPTH = "flux_queue_depth"
REQUESTS = "flux_http_requests_total"


def test_should_stop_ends_a_generation_at_the_next_step(tiny_generator):
    asked = []

    def stop_after_two_steps() -> bool:
        asked.append(True)
        return len(asked) == 2

    with pytest.raises(GenerationStopped, match="after denoising step 2 of 8"):
        tiny_generator.generate("a red fox", 8, 3.5, 0, should_stop=stop_after_two_steps)
    assert len(asked) == 2
    # Asked at every step and never stopping, it is the same generation as without it.
    never = tiny_generator.generate("a red fox", 3, 3.5, 0, should_stop=lambda: False)
    assert never.tobytes() == tiny_generator.generate("a red fox", 3, 3.5, 0).tobytes()


def post_then_hang_up_later(server, **body) -> socket.socket:
    """Send a whole POST /generate on a raw connection; the caller closes it to hang up."""
    payload = json.dumps({"prompt": "a red fox", "num_inference_steps": 4, **body}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall(
        f"POST {endpoints.GENERATE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return connection


def test_clients_that_hang_up_free_their_places(start_server, gated_generator, background):
    server = start_server(lambda: gated_generator, queue_size=1)
    server.wait_until_settled()
    gated_generator.gate.clear()
    running = post_then_hang_up_later(server, seed=1)
    server.wait_for_metric(IN_FLIGHT, 1)
    queued = post_then_hang_up_later(server, seed=2)
    server.wait_for_metric(QUEUE_DEPTH, 1)
    assert server.generate().status_code == 429, "every place is taken"

    # The queued client leaves: its job is removed before it runs, and its place is free at once
    # although the pipeline is still held.
    queued.close()
    server.wait_for_metric(QUEUE_DEPTH, 0)
    next_client = background.submit(server.generate, seed=3)
    server.wait_for_metric(QUEUE_DEPTH, 1)

    # The running client leaves: its generation stops at its next step and the next client runs.
    running.close()
    gated_generator.gate.set()
    response = next_client.result()
    assert response.status_code == 200, response.text
    assert response.json()["seed"] == 3
    assert server.metric("flux_generations_total", outcome="stopped") == 1
    assert server.metric("flux_generations_total", outcome="completed") == 1
    # Warm-up, the running client's (stopped) and the next client's: the queued one never ran.
    assert gated_generator.calls == 3
    assert server.metric(IN_FLIGHT) == 0 and server.metric(QUEUE_DEPTH) == 0
    # Counted as clients that closed the request, not as server errors.
    wait_for(lambda: server.metric(REQUESTS, route=endpoints.GENERATE, status="499") == 2, "two 499s")
    assert server.metric(REQUESTS, route=endpoints.GENERATE, status="500") == 0


def test_a_client_that_leaves_while_sending_its_body_is_a_499_not_a_server_error(start_server, tiny_generator):
    server = start_server(lambda: tiny_generator)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as leaving:
        leaving.sendall(
            f"POST {endpoints.GENERATE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{\"prompt\"".encode()
        )
    wait_for(lambda: server.metric(REQUESTS, route=endpoints.GENERATE, status="499") == 1, "a 499")
    assert server.metric(REQUESTS, route=endpoints.GENERATE, status="500") == 0


def test_a_generation_past_its_deadline_stops_at_its_next_step(start_server, gated_generator, background):
    server = start_server(lambda: gated_generator, queue_size=0, request_timeout=1.0)
    server.wait_until_settled()
    gated_generator.gate.clear()
    held = background.submit(server.generate, num_inference_steps=50)
    server.wait_for_metric(IN_FLIGHT, 1)
    assert held.result().status_code == 504
    gated_generator.gate.set()
    # The slot is back once the generation stopped: the next request is admitted, not refused.
    server.wait_for_metric(IN_FLIGHT, 0)
    assert server.metric("flux_generations_total", outcome="stopped") == 1
    assert server.generate().status_code == 200
