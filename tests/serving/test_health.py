"""Runtime errors and the probes (serving/health.py): /readyz turns 503 after exactly N consecutive
runtime errors, a success makes it 200 again, nothing but a runtime error counts, self-tests bring a
pod back or, failing, turn /healthz 503 for a restart. Real uvicorn and the real tiny pipeline; the
one stand-in is the device failure, raised in front of the real generator."""

from __future__ import annotations

import threading

import httpx
import pytest

from common import endpoints
from serving.health import HealthPolicy
from .conftest import wait_for

RUNTIME_ERRORS = f"{endpoints.RUNTIME_ERRORS_METRIC}_total"
NEVER_S = 3600.0  # a self-test interval no test waits for


class BreakableDevice:
    """The real generator behind a gate, raising as a lost NeuronCore would while ``broken`` is set."""

    def __init__(self, generator, gate: threading.Event):
        self._generator = generator
        self.gate = gate
        self.broken = threading.Event()
        self.shape = generator.shape
        self.manifest = generator.manifest

    def generate(self, *args, **kwargs):
        self.gate.wait()
        if self.broken.is_set():
            raise RuntimeError("NRT_EXEC_HW_ERR on /dev/neuron0")
        return self._generator.generate(*args, **kwargs)


@pytest.fixture
def device(tiny_generator, gate) -> BreakableDevice:
    return BreakableDevice(tiny_generator, gate)


def ready_server(start_server, device, **kwargs):
    server = start_server(lambda: device, **kwargs)
    assert server.wait_until_settled().status_code == 200
    return server


def readiness(server) -> tuple[int, str]:
    response = server.client.get(endpoints.READYZ)
    return response.status_code, response.json()["status"]


@pytest.mark.parametrize("threshold", [1, 3])
def test_readiness_turns_503_at_exactly_n_consecutive_runtime_errors(start_server, device, threshold):
    server = ready_server(start_server, device,
                          health=HealthPolicy(unready_after_errors=threshold, self_test_interval=NEVER_S))
    device.broken.set()
    for failed in range(1, threshold):
        assert server.generate().status_code == 500
        assert readiness(server) == (200, "ready"), f"after {failed} of {threshold}"
    assert server.generate().status_code == 500

    response = server.client.get(endpoints.READYZ)
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["shape"]) == ("failing", str(device.shape))
    assert f"{threshold} consecutive generations failed with a runtime error" in body["reason"]
    assert "neuron0" not in response.text, "the error's text stays in the server log"
    assert server.metric(RUNTIME_ERRORS, during="generation") == threshold
    assert server.metric(RUNTIME_ERRORS, during="self_test") == 0
    assert server.metric(endpoints.UNREADY_ON_ERRORS_METRIC) == 1
    # Unready is not dead: the kubelet keeps the container.
    assert server.client.get(endpoints.HEALTHZ).status_code == 200


def test_a_success_resets_the_count_and_makes_the_server_ready_again(start_server, device):
    server = ready_server(start_server, device, health=HealthPolicy(unready_after_errors=3, self_test_interval=NEVER_S))
    device.broken.set()
    assert [server.generate().status_code for _ in range(2)] == [500, 500]
    device.broken.clear()
    assert server.generate().status_code == 200
    device.broken.set()
    assert [server.generate().status_code for _ in range(2)] == [500, 500]
    assert readiness(server) == (200, "ready"), "two in a row since the success, not four"

    assert server.generate().status_code == 500
    assert readiness(server) == (503, "failing")
    # A request still routed here (the endpoints update takes a moment) runs, and its success counts.
    device.broken.clear()
    assert server.generate().status_code == 200
    assert readiness(server) == (200, "ready")
    assert server.metric(endpoints.UNREADY_ON_ERRORS_METRIC) == 0
    assert server.metric(RUNTIME_ERRORS, during="generation") == 5


def test_client_errors_refusals_timeouts_and_clients_that_left_do_not_count(start_server, device, background):
    server = ready_server(start_server, device, queue_size=0, request_timeout=1.0,
                          health=HealthPolicy(unready_after_errors=1, self_test_interval=NEVER_S))

    def stopped() -> float:
        return server.metric("flux_generations_total", outcome="stopped")

    assert server.generate(unknown_field=1).status_code == 400
    device.gate.clear()
    running = background.submit(server.generate)
    server.wait_for_metric("flux_generations_in_flight", 1)
    assert server.generate().status_code == 429
    assert running.result().status_code == 504
    device.gate.set()
    wait_for(lambda: stopped() == 1, "the timed-out generation to stop")

    device.gate.clear()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + endpoints.GENERATE, json={"prompt": "a fox", "num_inference_steps": 2}, timeout=0.2)
    server.wait_for_metric("flux_generations_in_flight", 1)
    device.gate.set()
    wait_for(lambda: stopped() == 2, "the abandoned generation to stop")

    assert readiness(server) == (200, "ready")
    assert server.metric(RUNTIME_ERRORS, during="generation") == 0
    assert server.metric(endpoints.UNREADY_ON_ERRORS_METRIC) == 0


def test_a_self_test_brings_an_unready_server_back_once_the_device_works(start_server, device):
    server = ready_server(start_server, device, health=HealthPolicy(
        unready_after_errors=1, self_test_interval=0.05, restart_after_self_tests=1000))
    device.broken.set()
    assert server.generate().status_code == 500
    # No traffic comes while unready; failing self-tests keep it so.
    wait_for(lambda: server.metric(RUNTIME_ERRORS, during="self_test") >= 1, "a failed self-test")
    assert readiness(server) == (503, "failing")

    device.broken.clear()
    wait_for(lambda: readiness(server) == (200, "ready"), "a self-test to succeed")
    assert server.metric(endpoints.UNREADY_ON_ERRORS_METRIC) == 0
    assert server.client.get(endpoints.HEALTHZ).status_code == 200


def test_after_m_failed_self_tests_liveness_fails_and_self_tests_stop(start_server, device):
    server = ready_server(start_server, device, health=HealthPolicy(
        unready_after_errors=2, self_test_interval=0.05, restart_after_self_tests=3))
    device.broken.set()
    assert [server.generate().status_code for _ in range(2)] == [500, 500]

    alive = wait_for(lambda: (r := server.client.get(endpoints.HEALTHZ)).status_code == 503 and r,
                     "/healthz to fail")
    assert alive.json()["status"] == "failing"
    assert "3 self-tests failed: restart the container" in alive.json()["reason"]
    assert readiness(server) == (503, "failing")
    # The restart is the kubelet's; the server runs no further self-tests on a device it gave up on.
    assert server.metric(RUNTIME_ERRORS, during="self_test") == 3
    assert server.metric(RUNTIME_ERRORS, during="generation") == 2


@pytest.mark.parametrize(("policy", "message"), [
    ({"unready_after_errors": 0}, "unready after errors must be >= 1, got 0"),
    ({"self_test_interval": 0}, "self-test interval must be > 0 s, got 0"),
    ({"restart_after_self_tests": 0}, "restart after self-tests must be >= 1, got 0"),
])
def test_a_bad_policy_is_refused_naming_the_setting(policy, message):
    with pytest.raises(ValueError, match=message):
        HealthPolicy(**policy)
