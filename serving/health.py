"""What runtime errors of the pipeline mean for the probes: unready, then a restart.

A runtime error is an exception from the pipeline's own ``generate`` (a device or Neuron
runtime failure, answered 500). Nothing else counts: a client error (4xx) never reaches the
pipeline, a refused (429) or not-ready (503) request never runs on it, and a request stopped
at its deadline (504) or abandoned by its client (499) stopped the pipeline on purpose.

* After ``unready_after_errors`` runtime errors in a row, ``/readyz`` answers 503: the load
  balancer and the Service stop sending this pod traffic, while its other replicas serve.
* With no traffic no generation could ever succeed again, so while unready the server runs a
  self-test (the two-step warm-up generation) every ``self_test_interval`` seconds on its worker
  thread. A success, of a self-test or of a request still routed here, resets the count and the
  pod is ready again (a transient error costs minutes of one pod, not a restart).
* After ``restart_after_self_tests`` failed self-tests in a row, ``/healthz`` answers 503 too: the
  kubelet's liveness probe restarts the container, which loads the graphs onto the cores afresh.
  If the device itself is gone, that load fails and the node's AcceleratedHardwareReady condition
  gets the node replaced (docs/upgrades.md, Node health).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from common.endpoints import UNREADY_AFTER_RUNTIME_ERRORS
from serving.metrics import Metrics

# While unready: one two-step generation every 30 s keeps the device mostly idle for requests
# still routed here, and 3 failures (about 1.5 min) tell a lasting failure from a passing one
# before the restart (minutes of loading) is paid.
DEFAULT_SELF_TEST_INTERVAL_S = 30.0
DEFAULT_RESTART_AFTER_SELF_TESTS = 3


class During(str, enum.Enum):
    """What ran when a runtime error happened: the label of the runtime-error counter."""

    GENERATION = "generation"
    SELF_TEST = "self_test"


@dataclass(frozen=True)
class HealthPolicy:
    unready_after_errors: int = UNREADY_AFTER_RUNTIME_ERRORS
    self_test_interval: float = DEFAULT_SELF_TEST_INTERVAL_S
    restart_after_self_tests: int = DEFAULT_RESTART_AFTER_SELF_TESTS

    def __post_init__(self) -> None:
        if self.unready_after_errors < 1:
            raise ValueError(f"unready after errors must be >= 1, got {self.unready_after_errors}")
        if not self.self_test_interval > 0:
            raise ValueError(f"self-test interval must be > 0 s, got {self.self_test_interval}")
        if self.restart_after_self_tests < 1:
            raise ValueError(f"restart after self-tests must be >= 1, got {self.restart_after_self_tests}")


class RuntimeHealth:
    """Consecutive runtime errors, written by the worker thread, read by the probes on the event loop."""

    def __init__(self, policy: HealthPolicy, metrics: Metrics) -> None:
        self.policy = policy
        self._metrics = metrics
        self._lock = threading.Lock()
        self._consecutive_errors = 0
        self._failed_self_tests = 0
        # Every series from the start, so the first error is an increase Prometheus can see.
        for during in During:
            metrics.runtime_errors.labels(during.value)
        metrics.unready_on_errors.set(0)

    def succeeded(self) -> None:
        with self._lock:
            self._consecutive_errors = 0
            self._failed_self_tests = 0
        self._metrics.unready_on_errors.set(0)

    def failed(self, during: During) -> None:
        self._metrics.runtime_errors.labels(during.value).inc()
        with self._lock:
            self._consecutive_errors += 1
            if during is During.SELF_TEST:
                self._failed_self_tests += 1
            unready = self._consecutive_errors >= self.policy.unready_after_errors
        self._metrics.unready_on_errors.set(1 if unready else 0)

    @property
    def unready(self) -> bool:
        with self._lock:
            return self._consecutive_errors >= self.policy.unready_after_errors

    @property
    def needs_restart(self) -> bool:
        with self._lock:
            return self._failed_self_tests >= self.policy.restart_after_self_tests

    def reason(self) -> str:
        """Why the probes fail, without the errors' text (the server log has it)."""
        with self._lock:
            errors, self_tests = self._consecutive_errors, self._failed_self_tests
        policy = self.policy
        reason = (f"{errors} consecutive generations failed with a runtime error "
                  f"(unready after {policy.unready_after_errors}; the server log has the errors)")
        if self_tests >= policy.restart_after_self_tests:
            return reason + f"; {self_tests} self-tests failed: restart the container"
        return reason + (f"; a self-test runs every {policy.self_test_interval:g} s, "
                         f"{self_tests} of {policy.restart_after_self_tests} failed so far")
