"""A generation's progress as server-sent events (``text/event-stream``), in the two dialects the routes speak.

What the worker reports (the events below) is encoded per route:

* ``POST /generate`` with ``"stream": true`` (NativeEvents): ``queued`` ``{"position"}`` while it waits
  (1: it runs next), ``progress`` ``{"step", "steps"}`` when it starts (step 0) and after every denoising
  step, with ``"image"`` (a base64 PNG preview) and ``"partial_image_index"`` after the steps previews are
  taken at, then ``completed`` with exactly the non-streaming answer ``{"image", "execution_time", "seed"}``.
* ``POST /v1/images/generations`` with ``"stream": true`` (OpenAIEvents): OpenAI's own events, which the
  official SDK's stream iterator reads: ``image_generation.partial_image`` per preview and
  ``image_generation.completed`` per image, each ``{"type", "b64_json", "created_at", "size", "quality",
  "background", "output_format", ...}`` plus the ``seed`` extension. What OpenAI has no event for (the
  place in the queue, step k of n) goes in SSE comment lines (``: queued, position 2``), which every SSE
  client skips and which keep idle proxies from closing the stream.

An error after the stream began (the 200 is sent) is an ``error`` event whose data holds the same
``{"error": {...}}`` object the HTTP answer would have had (the SDK raises it as an APIError), and the
stream ends. A client that hangs up ends it too: its job is abandoned like any other's.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from serving.errors import ApiError, error_body
from serving.generation_queue import ClientGone, Queued
from serving.metrics import CLIENT_CLOSED_REQUEST, OUTCOME_STATUS_SCOPE_KEY
from serving.schemas import (
    CompletedImageEvent,
    ErrorResponse,
    GenerateResponse,
    PartialImageEvent,
    ProgressEvent,
    QueuedEvent,
    StreamErrorEvent,
)

EVENT_STREAM = "text/event-stream"
COMPLETED = 200


@dataclass(frozen=True)
class Step:
    """Image ``image`` (0-based in the request) has ``done`` of its ``total`` steps done; ``preview`` is the
    encoded preview taken after this step, if one was (the ``preview_index``-th)."""

    image: int
    seed: int
    done: int
    total: int
    preview: bytes | None = None
    preview_index: int | None = None


@dataclass(frozen=True)
class ImageDone:
    image: int
    seed: int
    encoded: bytes
    seconds: float


def server_sent_event(name: str, data: BaseModel) -> bytes:
    """One event; ``data`` is its event's model in serving/schemas.py (GENERATE_EVENTS, OPENAI_IMAGE_EVENTS),
    which the published schema describes."""
    return f"event: {name}\ndata: {data.model_dump_json(exclude_none=True)}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _error_response(error: ApiError) -> ErrorResponse:
    return ErrorResponse.model_validate(error_body(error))


class NativeEvents:
    """``/generate``'s events."""

    def encode(self, event: object) -> bytes:
        if isinstance(event, Queued):
            return server_sent_event("queued", QueuedEvent(position=event.position))
        if isinstance(event, Step):
            preview = None if event.preview is None else _b64(event.preview)
            return server_sent_event("progress", ProgressEvent(step=event.done, steps=event.total, image=preview,
                                                               partial_image_index=event.preview_index))
        if isinstance(event, ImageDone):
            return server_sent_event("completed", GenerateResponse(image=_b64(event.encoded),
                                                                   execution_time=event.seconds, seed=event.seed))
        raise TypeError(f"no /generate event for {event!r}")

    def error(self, error: ApiError) -> bytes:
        return server_sent_event("error", _error_response(error))


@dataclass(frozen=True)
class OpenAIEvents:
    """OpenAI's image generation stream events, for the request's size, quality and format."""

    size: str
    quality: str
    output_format: str

    def encode(self, event: object) -> bytes:
        if isinstance(event, Queued):
            return comment(f"queued, position {event.position}")
        common = {"size": self.size, "quality": self.quality, "output_format": self.output_format,
                  "created_at": int(time.time())}
        if isinstance(event, Step):
            if event.preview is None:
                return comment(f"image {event.image + 1}, step {event.done} of {event.total}")
            partial = PartialImageEvent(b64_json=_b64(event.preview), seed=event.seed,
                                        partial_image_index=event.preview_index, **common)
            return server_sent_event(partial.type, partial)
        if isinstance(event, ImageDone):
            completed = CompletedImageEvent(b64_json=_b64(event.encoded), seed=event.seed, **common)
            return server_sent_event(completed.type, completed)
        raise TypeError(f"no OpenAI image event for {event!r}")

    def error(self, error: ApiError) -> bytes:
        return server_sent_event("error", StreamErrorEvent.model_validate(error_body(error)))


class EventStream(Response):
    """A 200 ``text/event-stream`` of ``events`` (put on the queue as the job reports them) until ``outcome``
    is done: nothing more when it succeeded (the last event was the last image), an ``error`` event when it
    raised ApiError, and nothing at all once the client is gone (ClientGone: its job was abandoned).
    The status the request ended with goes in the scope, for its metrics and log line."""

    media_type = EVENT_STREAM

    def __init__(self, events: asyncio.Queue, outcome: asyncio.Future, encoder: NativeEvents | OpenAIEvents) -> None:
        # Response.__init__ would set a body, and with it a Content-Length of 0: headers only, as StreamingResponse.
        self.status_code = COMPLETED
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events
        self._outcome = outcome
        self._encoder = encoder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_body(chunk: bytes, more: bool = True) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            await self._send_events(send_body)
        finally:
            if not self._outcome.done():
                # The stream failed before its job ended: abandon the job (GenerationQueue.outcome).
                self._outcome.cancel()
        status = COMPLETED
        try:
            self._outcome.result()
        except ApiError as error:
            status = error.status
            await send_body(self._encoder.error(error))
        except ClientGone:
            status = CLIENT_CLOSED_REQUEST
        scope[OUTCOME_STATUS_SCOPE_KEY] = status
        await send_body(b"", more=False)

    async def _send_events(self, send_body: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            next_event = asyncio.ensure_future(self._events.get())
            done, _ = await asyncio.wait({next_event, self._outcome}, return_when=asyncio.FIRST_COMPLETED)
            if next_event not in done:
                next_event.cancel()
                break
            await send_body(self._encoder.encode(next_event.result()))
        # The worker's last reports were queued before its result: send what is left, in order.
        while not self._events.empty():
            await send_body(self._encoder.encode(self._events.get_nowait()))


def thread_safe_listener(events: asyncio.Queue) -> Callable[[object], None]:
    """What a worker thread calls to put an event on ``events``, which belongs to the running event loop."""
    loop = asyncio.get_running_loop()
    return lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
