"""The FastAPI application: one loaded pipeline, one shape, behind a bounded queue."""

from __future__ import annotations

import asyncio
import base64
import enum
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import endpoints
from serving.generation_queue import GenerationQueue, QueueFull
from serving.metrics import Metrics, RequestMetricsMiddleware
from serving.schemas import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_STEPS,
    MAX_SEED,
    GenerateRequest,
    GenerateResponse,
    ImageData,
    ImagesGenerationRequest,
    ImagesResponse,
)

if TYPE_CHECKING:
    from model.runtime import FluxGenerator

log = logging.getLogger(__name__)

# One step runs every compiled graph once, which is what pulls them onto the device;
# more steps would only repeat the transformer.
WARMUP_STEPS = 1
WARMUP_PROMPT = "warm-up"


class Status(str, enum.Enum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"


class Pipeline:
    """The generator and where it is in its life. Written by the worker thread only."""

    def __init__(self) -> None:
        self.status = Status.LOADING
        self.failure: str | None = None
        self.generator: FluxGenerator | None = None

    def load_and_warm_up(self, load: Callable[[], FluxGenerator]) -> None:
        try:
            generator = load()
            self.status = Status.WARMING_UP
            log.info("artifacts loaded and verified for shape %s; warming up", generator.shape)
            generator.generate(WARMUP_PROMPT, WARMUP_STEPS, DEFAULT_GUIDANCE_SCALE, 0)
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            self.status = Status.FAILED
            log.exception("model failed to load; this server will never be ready: %s", self.failure)
            return
        self.generator = generator
        self.status = Status.READY
        log.info("ready to serve shape %s", generator.shape)

    def ready_generator(self) -> FluxGenerator:
        if self.generator is None:
            detail = f"model {self.status.value}" + (f": {self.failure}" if self.failure else "")
            raise HTTPException(503, f"not ready ({detail})")
        return self.generator


def render_png(
    generator: FluxGenerator, prompt: str, steps: int, guidance_scale: float, seed: int
) -> tuple[str, float]:
    """Generate on the worker thread; return the base64 PNG and the seconds spent generating."""
    started = time.perf_counter()
    image = generator.generate(prompt, steps, guidance_scale, seed)
    generation_seconds = time.perf_counter() - started
    png = io.BytesIO()
    image.save(png, format="PNG")
    return base64.b64encode(png.getvalue()).decode("ascii"), generation_seconds


def create_app(load: Callable[[], FluxGenerator], *, queue_size: int, request_timeout: float) -> FastAPI:
    """An app that loads the pipeline with ``load`` on its worker thread at startup."""
    if request_timeout <= 0:
        raise ValueError(f"request timeout must be > 0 s, got {request_timeout}")
    metrics = Metrics()
    generations = GenerationQueue(queue_size, metrics)
    pipeline = Pipeline()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Not awaited: the server listens (and /healthz answers) while the model loads.
        generations.run_exclusively(partial(pipeline.load_and_warm_up, load))
        yield
        # Uvicorn gets here after in-flight requests have been answered; a job whose
        # request timed out may still be running and is let finish.
        await asyncio.to_thread(generations.shutdown)

    app = FastAPI(
        title="FLUX.1 on AWS Neuron",
        summary="Text-to-image generation for the one image shape this server was compiled for.",
        lifespan=lifespan,
    )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    async def generate_png(prompt: str, steps: int, guidance_scale: float, seed: int) -> tuple[str, float]:
        job = partial(render_png, pipeline.ready_generator(), prompt, steps, guidance_scale, seed)
        try:
            return await generations.run(job, request_timeout)
        except QueueFull as full:
            raise HTTPException(429, str(full), headers={"Retry-After": str(full.retry_after)}) from full
        except TimeoutError as timeout:
            raise HTTPException(504, f"generation did not finish within {request_timeout:g} s") from timeout

    @app.post(endpoints.GENERATE, response_model=GenerateResponse)
    async def generate(request: GenerateRequest) -> GenerateResponse:
        """Generate one image; the response carries the seed so it can be reproduced."""
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        image, execution_time = await generate_png(
            request.prompt, request.num_inference_steps, request.guidance_scale, seed
        )
        return GenerateResponse(image=image, execution_time=execution_time, seed=seed)

    @app.post(endpoints.OPENAI_IMAGES, response_model=ImagesResponse)
    async def images_generations(request: ImagesGenerationRequest) -> ImagesResponse:
        """The OpenAI images API subset: one b64_json image of the served shape, 'HxW' height first."""
        served_shape = str(pipeline.ready_generator().shape)
        if request.size is not None and request.size != served_shape:
            mismatch = {
                "type": "value_error",
                "loc": ("body", "size"),
                "msg": f"size must be '{served_shape}' (height x width), the only shape this server generates",
                "input": request.size,
            }
            raise RequestValidationError([mismatch])
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        image, _ = await generate_png(request.prompt, DEFAULT_STEPS, DEFAULT_GUIDANCE_SCALE, seed)
        return ImagesResponse(created=int(time.time()), data=[ImageData(b64_json=image)])

    @app.get(endpoints.HEALTHZ)
    async def healthz() -> dict[str, str]:
        """The process is alive; says nothing about the model (see /readyz)."""
        return {"status": "alive"}

    @app.get(endpoints.READYZ)
    async def readyz() -> JSONResponse:
        """200 once the artifacts are loaded, verified and warmed up; 503 before, or forever if that failed."""
        body: dict[str, str] = {"status": pipeline.status.value}
        if pipeline.generator is not None:
            body["shape"] = str(pipeline.generator.shape)
        if pipeline.failure is not None:
            body["reason"] = pipeline.failure
        return JSONResponse(body, status_code=200 if pipeline.status is Status.READY else 503)

    @app.get(endpoints.METRICS)
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
