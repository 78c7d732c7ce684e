"""One worker thread in front of the pipeline, behind a bounded queue.

The generator is not thread-safe, so everything that touches it (loading, warm-up,
generations) runs on the single thread of this queue. Admission is decided at
submit time without waiting: a request either gets a slot (the running job plus
``queue_size`` waiting ones) or is refused at once, so overload never turns into a
pile of hanging connections.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from serving.metrics import Metrics

T = TypeVar("T")


class QueueFull(Exception):
    """Every slot is taken; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"generation queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class GenerationQueue:
    def __init__(self, queue_size: int, metrics: Metrics) -> None:
        if queue_size < 0:
            raise ValueError(f"queue size must be >= 0, got {queue_size}")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generation")
        self._slots = threading.BoundedSemaphore(queue_size + 1)
        self._metrics = metrics
        # What a refused client should wait: about one job, the time it takes a slot to free up.
        self._last_job_seconds = 1.0

    def run_exclusively(self, job: Callable[[], T]) -> Future[T]:
        """Run a job (loading, warm-up) on the worker thread without taking a request slot."""
        return self._executor.submit(job)

    async def run(self, job: Callable[[], T], timeout: float) -> T:
        """Queue a job and await its result.

        Raises QueueFull at once when no slot is free, and TimeoutError after
        ``timeout`` seconds of queueing plus running. A job timed out while still
        queued is cancelled and never runs; one already running finishes in the
        background (the pipeline cannot be interrupted) and holds its slot until then.
        """
        future = self._submit(job)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def shutdown(self) -> None:
        """Finish the running and queued jobs, then stop the worker thread."""
        self._executor.shutdown(wait=True)

    def _submit(self, job: Callable[[], T]) -> Future[T]:
        if not self._slots.acquire(blocking=False):
            raise QueueFull(max(1, math.ceil(self._last_job_seconds)))
        self._metrics.queue_depth.inc()
        future = self._executor.submit(self._run_admitted, job)
        future.add_done_callback(self._release_slot)
        return future

    def _run_admitted(self, job: Callable[[], T]) -> T:
        self._metrics.queue_depth.dec()
        self._metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            return job()
        finally:
            self._last_job_seconds = time.perf_counter() - started
            self._metrics.in_flight.dec()

    def _release_slot(self, future: Future) -> None:
        if future.cancelled():
            # Cancelled before it started, so _run_admitted never took it off the queue.
            self._metrics.queue_depth.dec()
        self._slots.release()
