"""One worker thread in front of the pipeline, behind a bounded queue.

The generator is not thread-safe, so everything that touches it (loading, warm-up,
generations) runs on the single thread of this queue. Admission is decided at
submit time without waiting: a request either gets a slot (the running job plus
``queue_size`` waiting ones) or is refused at once, so overload never turns into a
pile of hanging connections.

A slot is given back as soon as its client can no longer use the result: a queued job
whose client left (or whose deadline passed) is cancelled before it runs, and a running
one is told to stop, which the generator does at its next denoising step.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from serving.metrics import Metrics

T = TypeVar("T")
# What a step is assumed to take before any has been measured (about inf2's at 1024x576).
INITIAL_SECONDS_PER_STEP = 1.0
# Weight of the newest measurement in the running mean of seconds per step.
STEP_TIME_SMOOTHING = 0.3


class QueueFull(Exception):
    """Every slot is taken; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected while its request waited or ran; its job was abandoned."""


def retry_after_seconds(first_slot_free_s: float, drain_s: float, rng: random.Random) -> int:
    """When a slot should free up, plus a random share of the time the admitted work takes.

    Refused clients then come back spread over the time the queue needs to drain (at least
    a 1 s window, Retry-After's resolution) instead of all at once.
    """
    return max(1, math.ceil(first_slot_free_s + rng.uniform(0.0, max(1.0, drain_s))))


class Ticket:
    """An admitted job: its future, and the stop flag the job polls at every denoising step."""

    def __init__(self, work_steps: int, deadline: float) -> None:
        self.work_steps = work_steps
        self.deadline = deadline
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.future: Future | None = None
        self._abandoned = threading.Event()

    def should_stop(self) -> bool:
        return self._abandoned.is_set() or time.monotonic() > self.deadline

    def abandon(self) -> None:
        self._abandoned.set()
        self.future.cancel()


class GenerationQueue:
    def __init__(self, queue_size: int, metrics: Metrics, rng: random.Random | None = None) -> None:
        if queue_size < 0:
            raise ValueError(f"queue size must be >= 0, got {queue_size}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._slots = threading.BoundedSemaphore(queue_size + 1)
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._admitted: list[Ticket] = []
        self._seconds_per_step = INITIAL_SECONDS_PER_STEP

    def run_exclusively(self, job: Callable[[], T]) -> Future[T]:
        """Run a job (loading, warm-up) on the worker thread without taking a request slot."""
        return self._executor.submit(job)

    def observe_step_time(self, seconds: float, steps: int) -> None:
        """Learn how long a step takes from a finished generation (for Retry-After)."""
        per_step = seconds / max(1, steps)
        with self._lock:
            self._seconds_per_step += STEP_TIME_SMOOTHING * (per_step - self._seconds_per_step)

    async def run(
        self,
        job: Callable[[Callable[[], bool]], T],
        work_steps: int,
        timeout: float,
        client_gone: Callable[[], Awaitable[object]],
    ) -> T:
        """Queue ``job(should_stop)`` and await its result.

        Raises QueueFull at once when no slot is free; TimeoutError after ``timeout``
        seconds of queueing plus running; ClientGone when ``client_gone()`` returns first.
        In both of the last cases the job is abandoned: cancelled if still queued, told to
        stop at its next step if running.
        """
        ticket = self._submit(job, work_steps, time.monotonic() + timeout)
        result = asyncio.wrap_future(ticket.future)
        gone = asyncio.ensure_future(client_gone())
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if result in done:
            return result.result()
        ticket.abandon()
        # Cancelling the wrapper keeps a job that still ends in an exception from being logged as unretrieved.
        result.cancel()
        if gone in done:
            raise ClientGone("client disconnected")
        raise TimeoutError

    def shutdown(self) -> None:
        """Finish the running and queued jobs, then stop the worker thread."""
        self._executor.shutdown(wait=True)

    def _retry_after(self) -> int:
        now = time.monotonic()
        with self._lock:
            seconds_per_step = self._seconds_per_step
            remaining = [
                max(0.0, ticket.work_steps * seconds_per_step - (now - ticket.started))
                if ticket.started is not None
                else ticket.work_steps * seconds_per_step
                for ticket in self._admitted
            ]
        first_free = min(remaining, default=0.0)
        return retry_after_seconds(first_free, sum(remaining), self._rng)

    def _submit(self, job: Callable[[Callable[[], bool]], T], work_steps: int, deadline: float) -> Ticket:
        if not self._slots.acquire(blocking=False):
            raise QueueFull(self._retry_after())
        ticket = Ticket(work_steps, deadline)
        with self._lock:
            self._admitted.append(ticket)
        self._metrics.queue_depth.inc()
        ticket.future = self._executor.submit(self._run_admitted, ticket, job)
        ticket.future.add_done_callback(lambda future: self._release(ticket, future))
        return ticket

    def _run_admitted(self, ticket: Ticket, job: Callable[[Callable[[], bool]], T]) -> T:
        ticket.started = time.monotonic()
        self._metrics.queue_depth.dec()
        self._metrics.queue_wait_seconds.observe(ticket.started - ticket.submitted)
        self._metrics.in_flight.inc()
        try:
            return job(ticket.should_stop)
        finally:
            self._metrics.in_flight.dec()

    def _release(self, ticket: Ticket, future: Future) -> None:
        if future.cancelled():
            # Cancelled before it started, so _run_admitted never took it off the queue.
            self._metrics.queue_depth.dec()
        with self._lock:
            self._admitted.remove(ticket)
        self._slots.release()
