"""Readiness, overload, timeouts and shutdown, made deterministic with a gate in front of the
real generator: a request stays in flight exactly until the test opens the gate."""

from __future__ import annotations

import openai
import pytest

from common import endpoints

IN_FLIGHT = "flux_generations_in_flight"
QUEUE_DEPTH = "flux_queue_depth"


def hold_one_running_and_one_queued(server, gated_generator, background):
    """Fill a one-slot queue behind a held generation; return both pending responses."""
    server.wait_until_settled()
    gated_generator.gate.clear()
    running = background.submit(server.generate, seed=1)
    server.wait_for_metric(IN_FLIGHT, 1)
    queued = background.submit(server.generate, seed=2)
    server.wait_for_metric(QUEUE_DEPTH, 1)
    return running, queued


def test_not_ready_until_loaded_and_warmed_up(start_server, gate, tiny_generator):
    gate.clear()

    def load():
        gate.wait()
        return tiny_generator

    server = start_server(load)
    # The event loop answers while the load is held: probes never wait for the model.
    assert server.client.get(endpoints.HEALTHZ).status_code == 200
    not_ready = server.client.get(endpoints.READYZ)
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "loading"})
    refused = server.generate()
    assert refused.status_code == 503
    assert "not ready (model loading)" in refused.json()["error"]["message"]
    gate.set()
    ready = server.wait_until_settled()
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "shape": str(tiny_generator.shape)})


def test_warm_up_runs_exactly_one_generation(start_server, gated_generator):
    server = start_server(lambda: gated_generator)
    assert server.wait_until_settled().status_code == 200
    assert gated_generator.calls == 1


def test_overload_is_refused_at_once_with_retry_after_while_admitted_requests_succeed(
    start_server, gated_generator, background, png_size
):
    server = start_server(lambda: gated_generator, queue_size=1)
    running, queued = hold_one_running_and_one_queued(server, gated_generator, background)

    # Answered while the pipeline is still held: a full queue never makes a client wait.
    refused = server.generate(seed=3)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "queue full" in refused.json()["error"]["message"]
    # The OpenAI SDK raises its own error for it, with the message and the header.
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as rate_limited:
            sdk.images.generate(prompt="a red fox", quality="low")
    assert "queue full" in rate_limited.value.message
    assert int(rate_limited.value.response.headers["Retry-After"]) >= 1

    gated_generator.gate.set()
    for admitted in (running, queued):
        response = admitted.result()
        assert response.status_code == 200
        assert png_size(response.json()["image"]) == (gated_generator.shape.width, gated_generator.shape.height)
    assert server.metric("flux_http_requests_total", route=endpoints.GENERATE, status="429") == 1
    assert server.metric("flux_http_requests_total", route=endpoints.OPENAI_IMAGES, status="429") == 1
    assert server.metric("flux_http_requests_total", route=endpoints.GENERATE, status="200") == 2


def test_timeout_is_504_and_a_job_still_queued_never_runs(start_server, gated_generator, background):
    server = start_server(lambda: gated_generator, queue_size=1, request_timeout=1.0)
    server.wait_until_settled()
    gated_generator.gate.clear()
    running = background.submit(server.generate)
    server.wait_for_metric(IN_FLIGHT, 1)

    timed_out_in_queue = server.generate()
    assert timed_out_in_queue.status_code == 504
    assert "within 1 s" in timed_out_in_queue.json()["error"]["message"]
    # Its slot is free again although the running generation still holds the pipeline.
    assert server.metric(QUEUE_DEPTH) == 0
    assert running.result().status_code == 504

    calls_so_far = gated_generator.calls
    gated_generator.gate.set()
    # The queue is FIFO: once this one is answered, the cancelled job would have run before it.
    assert server.generate().status_code == 200
    assert gated_generator.calls == calls_so_far + 1


def test_shutdown_drains_the_running_and_the_queued_request(start_server, gated_generator, background):
    server = start_server(lambda: gated_generator, queue_size=1)
    running, queued = hold_one_running_and_one_queued(server, gated_generator, background)

    server.begin_shutdown()
    server.wait_until_refusing_connections()
    gated_generator.gate.set()
    assert running.result().status_code == 200
    assert queued.result().status_code == 200
    server.thread.join(60)
    assert not server.thread.is_alive()


class FailsOnPrompt:
    """The real generator, raising for one prompt as a device error would."""

    def __init__(self, generator, failing_prompt: str):
        self._generator = generator
        self.failing_prompt = failing_prompt
        self.shape = generator.shape
        self.manifest = generator.manifest

    def generate(self, prompt, *args, **kwargs):
        if prompt == self.failing_prompt:
            raise RuntimeError("device lost at /dev/neuron0")
        return self._generator.generate(prompt, *args, **kwargs)


def test_a_failed_generation_is_a_500_without_details_and_the_server_goes_on(start_server, tiny_generator):
    server = start_server(lambda: FailsOnPrompt(tiny_generator, "explode"))
    assert server.wait_until_settled().status_code == 200
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as failed:
            sdk.images.generate(prompt="explode", quality="low")
    assert failed.value.status_code == 500
    assert failed.value.body["message"] == "internal server error (the server log has the details)"
    assert "neuron0" not in failed.value.response.text
    assert server.metric("flux_generations_total", outcome="failed") == 1
    assert server.generate().status_code == 200
