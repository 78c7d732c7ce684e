"""One worker thread in front of the pipeline, behind a bounded queue.

The generator is not thread-safe, so everything that touches it (loading, warm-up,
generations) runs on the single thread of this queue. Admission is decided at
submit time without waiting: a request either gets a slot (the running job plus
``queue_size`` waiting ones) or is refused at once, so overload never turns into a
pile of hanging connections.

A slot is given back as soon as its client can no longer use the result: a queued job
whose client left (or whose deadline passed) is cancelled before it runs, and a running
one is told to stop, which the generator does at its next denoising step.

A job may have a listener (a streaming request's): it hears its place in the queue
(Queued) whenever that changes, and whatever the job reports while it
runs (steps, previews, images).

Refused requests are told when to come back (Retry-After) from what the admitted work should
take. An image costs a fixed part (the text encoders, the VAE decode, encoding the image) plus
a part per denoising step, and the two are learned apart from the step-end times of finished
generations (GenerationCosts): dividing a whole generation by its steps would count the fixed
part as step time, so that after 1-step requests a 28-step one would look many times longer than
it is, and after long ones a 1-step request almost free.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from serving.metrics import Metrics

T = TypeVar("T")
# What an image is assumed to cost before any has been measured (about inf2's at 1024x576): the warm-up
# replaces both at once.
INITIAL_FIXED_SECONDS = 5.0
INITIAL_SECONDS_PER_STEP = 1.0
# Weight of the newest measurement in the running means of the two costs.
COST_SMOOTHING = 0.3


class QueueFull(Exception):
    """Every slot is taken; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client disconnected while its request waited or ran; its job was abandoned."""


@dataclass(frozen=True)
class Queued:
    """What a waiting job's listener hears when its place changes: ``position`` 1 runs next."""

    position: int


def retry_after_seconds(next_slot_s: float, drain_s: float, rng: random.Random) -> int:
    """When the next slot should free up, plus a random share of up to as long again (and not past the time
    the admitted work drains), in whole seconds, at least 1 (Retry-After's resolution).

    Refused clients then come back spread out instead of all at once, and no later than twice their wait.
    """
    earliest = max(1, math.ceil(next_slot_s))
    latest = max(earliest, math.floor(min(2 * next_slot_s, max(drain_s, next_slot_s))))
    return rng.randint(earliest, latest)


class GenerationCosts:
    """Seconds an image takes: ``fixed_s`` whatever its steps, plus ``per_step_s`` a denoising step. Each is
    the assumed value until its first measurement, which replaces it, then a running mean."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fixed_s = INITIAL_FIXED_SECONDS
        self.per_step_s = INITIAL_SECONDS_PER_STEP
        self._measured: set[str] = set()

    def _learn(self, cost: str, seconds: float) -> None:
        weight = COST_SMOOTHING if cost in self._measured else 1.0
        setattr(self, cost, getattr(self, cost) + weight * (seconds - getattr(self, cost)))
        self._measured.add(cost)

    def observe(self, started: float, step_ends: Sequence[float], finished: float) -> None:
        """Learn from one image's generation: when it started, when each of its steps ended, when it
        finished. The step cost comes from the time between step ends (2 steps or more), the fixed
        cost from what the whole took beyond its steps."""
        with self._lock:
            if len(step_ends) >= 2:
                self._learn("per_step_s", (step_ends[-1] - step_ends[0]) / (len(step_ends) - 1))
            self._learn("fixed_s", max(0.0, finished - started - len(step_ends) * self.per_step_s))

    def image_seconds(self, steps: int) -> float:
        with self._lock:
            return self.fixed_s + steps * self.per_step_s


class Ticket:
    """An admitted job: its future, the stop flag the job polls at every denoising step, and its listener."""

    def __init__(self, images: int, steps: int, deadline: float, clock: Callable[[], float],
                 listener: Callable[[object], None] | None) -> None:
        self.images = images
        self.steps = steps
        self.deadline = deadline
        self._clock = clock
        self.submitted = clock()
        self.started: float | None = None
        # Its place among the waiting jobs, as last reported to its listener.
        self.place: int | None = None
        self.future: Future | None = None
        self._listener = listener
        self._abandoned = threading.Event()

    def should_stop(self) -> bool:
        return self._abandoned.is_set() or self._clock() > self.deadline

    def abandon(self) -> None:
        self._abandoned.set()
        self.future.cancel()

    @property
    def listened(self) -> bool:
        return self._listener is not None

    def report(self, event: object) -> None:
        """Tell the job's listener (thread-safe, from the worker thread too); nobody listens to most jobs."""
        if self._listener is not None:
            self._listener(event)


class GenerationQueue:
    def __init__(self, queue_size: int, metrics: Metrics, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if queue_size < 0:
            raise ValueError(f"queue size must be >= 0, got {queue_size}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._slots = threading.BoundedSemaphore(queue_size + 1)
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._admitted: list[Ticket] = []
        # The one clock of the generations: deadlines, costs and execution times.
        self.clock = clock
        self.costs = GenerationCosts()

    def run_exclusively(self, job: Callable[[], T]) -> Future[T]:
        """Run a job (loading, warm-up) on the worker thread without taking a request slot."""
        return self._executor.submit(job)

    def submit(self, job: Callable[[Ticket], T], images: int, steps: int, timeout: float,
               listener: Callable[[object], None] | None = None) -> Ticket:
        """Admit ``job(ticket)`` for ``images`` images of ``steps`` steps, or raise QueueFull at once."""
        if not self._slots.acquire(blocking=False):
            raise QueueFull(self._retry_after())
        ticket = Ticket(images, steps, self.clock() + timeout, self.clock, listener)
        with self._lock:
            self._admitted.append(ticket)
            self._report_places()
        self._metrics.queue_depth.inc()
        ticket.future = self._executor.submit(self._run_admitted, ticket, job)
        ticket.future.add_done_callback(lambda future: self._release(ticket, future))
        return ticket

    async def outcome(self, ticket: Ticket, timeout: float, client_gone: Callable[[], Awaitable[object]]) -> T:
        """Await an admitted job's result.

        Raises TimeoutError after ``timeout`` seconds of queueing plus running; ClientGone when
        ``client_gone()`` returns first. In both cases, and when the awaiting task is cancelled, the
        job is abandoned: cancelled if still queued, told to stop at its next step if running.
        """
        result = asyncio.wrap_future(ticket.future)
        gone = asyncio.ensure_future(client_gone())
        done: set = set()
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if result not in done:
                ticket.abandon()
                # Cancelling the wrapper keeps a job that still ends in an exception from being logged as unretrieved.
                result.cancel()
        if result in done:
            return result.result()
        if gone in done:
            raise ClientGone("client disconnected")
        raise TimeoutError

    async def run(self, job: Callable[[Ticket], T], images: int, steps: int, timeout: float,
                  client_gone: Callable[[], Awaitable[object]]) -> T:
        """submit, then outcome."""
        return await self.outcome(self.submit(job, images, steps, timeout), timeout, client_gone)

    def shutdown(self) -> None:
        """Finish the running and queued jobs, then stop the worker thread."""
        self._executor.shutdown(wait=True)

    def _retry_after(self) -> int:
        now = self.clock()
        with self._lock:
            remaining = [
                max(0.0, ticket.images * self.costs.image_seconds(ticket.steps)
                    - (0.0 if ticket.started is None else now - ticket.started))
                for ticket in self._admitted
            ]
        # One worker, first in first out: the first admitted job's end frees the next slot.
        return retry_after_seconds(remaining[0] if remaining else 0.0, sum(remaining), self._rng)

    def _report_places(self) -> None:
        """Tell every waiting job's listener its place (1: runs next) when it changed. Called with the lock held."""
        waiting = [ticket for ticket in self._admitted if ticket.started is None]
        for place, ticket in enumerate(waiting, start=1):
            if ticket.place != place:
                ticket.place = place
                ticket.report(Queued(place))

    def _run_admitted(self, ticket: Ticket, job: Callable[[Ticket], T]) -> T:
        with self._lock:
            ticket.started = self.clock()
            self._report_places()
        self._metrics.queue_depth.dec()
        self._metrics.queue_wait_seconds.observe(ticket.started - ticket.submitted)
        self._metrics.queue_wait_recent.observe(ticket.started - ticket.submitted)
        self._metrics.in_flight.inc()
        try:
            return job(ticket)
        finally:
            self._metrics.in_flight.dec()

    def _release(self, ticket: Ticket, future: Future) -> None:
        if future.cancelled():
            # Cancelled before it started, so _run_admitted never took it off the queue.
            self._metrics.queue_depth.dec()
        with self._lock:
            self._admitted.remove(ticket)
            self._report_places()
        self._slots.release()
