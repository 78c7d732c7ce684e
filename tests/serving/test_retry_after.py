"""Retry-After against the real wait, in both regimes: where an image's fixed cost dominates (1-step
requests) and where its steps do (long ones), each after a history of the other kind. The server learns
the two costs apart, so what it tells a refused client is within twice what the client really waits.

The device's time is simulated: the real tiny pipeline runs, and a fake clock, the one the server times
its generations with, advances by what the simulated device takes (half its fixed cost before the steps,
half after, and its step cost at every step end). Waits of seconds, measured exactly, in milliseconds of
real time: no timing in the test."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import pytest

from serving.generation_queue import retry_after_seconds

IN_FLIGHT = "flux_generations_in_flight"
QUEUE_DEPTH = "flux_queue_depth"


class FakeClock:
    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class SimulatedDevice:
    """The real generator on a device whose image takes ``fixed_s`` + steps x ``step_s`` of ``clock``; each
    generation waits for ``gate`` first (the clock stands still meanwhile) and records when it ended, by seed."""

    def __init__(self, generator, clock: FakeClock, fixed_s: float, step_s: float, gate: threading.Event):
        self._generator = generator
        self.clock = clock
        self.fixed_s = fixed_s
        self.step_s = step_s
        self.gate = gate
        self.finished: dict[int, float] = {}
        self.shape = generator.shape
        self.manifest = generator.manifest

    def generate(self, prompt, steps, guidance_scale, seed, should_stop=None, on_step=None):
        self.gate.wait()
        self.clock.advance(self.fixed_s / 2)

        def after_the_step(done: int, total: int, latents) -> None:
            self.clock.advance(self.step_s)
            if on_step is not None:
                on_step(done, total, latents)

        image = self._generator.generate(prompt, steps, guidance_scale, seed, should_stop, after_the_step)
        self.clock.advance(self.fixed_s / 2)
        self.finished[seed] = self.clock()
        return image


@dataclass(frozen=True)
class Regime:
    fixed_s: float
    step_s: float
    history_steps: int  # what the server saw before
    steps: int  # what the queue holds when a client is refused


REGIMES = {
    # 1-step requests after 50-step ones: dividing 50-step generations by their steps made a step look
    # like 0.17 s and a 1-step request like 0.17 s, for 6.05 s.
    "fixed-cost-dominates": Regime(fixed_s=6.0, step_s=0.05, history_steps=50, steps=1),
    # 20-step requests after 1-step ones: a "step" of 2.5 s made one of 12 s look like 50 s.
    "step-cost-dominates": Regime(fixed_s=2.0, step_s=0.5, history_steps=1, steps=20),
}


@pytest.mark.parametrize("regime", REGIMES.values(), ids=REGIMES.keys())
def test_retry_after_is_within_twice_the_real_wait(start_server, tiny_generator, gate, background, regime):
    clock = FakeClock()
    device = SimulatedDevice(tiny_generator, clock, regime.fixed_s, regime.step_s, gate)
    server = start_server(lambda: device, queue_size=1, request_timeout=10**6, clock=clock)
    assert server.wait_until_settled().status_code == 200
    for seed in range(100, 103):
        assert server.generate(num_inference_steps=regime.history_steps, seed=seed).status_code == 200

    gate.clear()
    running = background.submit(server.generate, num_inference_steps=regime.steps, seed=1)
    server.wait_for_metric(IN_FLIGHT, 1)
    queued = background.submit(server.generate, num_inference_steps=regime.steps, seed=2)
    server.wait_for_metric(QUEUE_DEPTH, 1)
    refused_at = clock()
    refused = server.generate(num_inference_steps=regime.steps, seed=3)
    assert refused.status_code == 429
    retry_after = int(refused.headers["Retry-After"])
    gate.set()
    assert running.result().status_code == 200 and queued.result().status_code == 200

    # The refused client would have been admitted once the running request ended and freed its slot.
    real_wait = device.finished[1] - refused_at
    assert real_wait == pytest.approx(regime.fixed_s + regime.steps * regime.step_s)
    assert real_wait / 2 <= retry_after <= 2 * real_wait, (retry_after, real_wait)


def test_retry_after_spreads_clients_up_to_twice_the_wait_and_never_past_the_drain():
    rng = random.Random(7)
    answers = {retry_after_seconds(next_slot_s=3.2, drain_s=12.0, rng=rng) for _ in range(200)}
    # From when the next slot frees (3.2 s, rounded up) to twice that: spread, not one value for all.
    assert answers == {4, 5, 6}
    # Not past the time the admitted work drains.
    assert {retry_after_seconds(10.0, 12.0, rng) for _ in range(200)} == {10, 11, 12}
    # Nothing to wait for, or less than Retry-After's resolution: 1 s.
    assert {retry_after_seconds(0.0, 0.0, rng) for _ in range(50)} == {1}
    assert {retry_after_seconds(0.2, 0.4, rng) for _ in range(50)} == {1}
