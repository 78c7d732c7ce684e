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
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.families import Family
from common.adapters import adapter_argument
from model.keys import TINY_MODELS
from model.runtime import GenerationStopped, ServedArtifact
from common import endpoints
from serving.errors import ApiError, documented_errors, install_error_handlers, internal_error, without_node_paths
from serving.generation_queue import ClientGone, GenerationQueue, QueueFull, Ticket
from serving.health import During, HealthPolicy, RuntimeHealth
from serving.metrics import CLIENT_CLOSED_REQUEST, LOG_FIELDS_SCOPE_KEY, Metrics, RequestObserver
from serving.pages import STATIC_DIR, SecurityHeaders, StaticAssets
from serving.previews import preview, preview_steps
from serving.request_guard import DEFAULT_MAX_BODY_BYTES, JsonBodyGuard
from serving.streaming import (
    EVENT_STREAM,
    EventStream,
    ImageDone,
    NativeEvents,
    OpenAIEvents,
    Step,
    thread_safe_listener,
)
from serving.schemas import (
    GENERATE_EVENTS,
    OPENAI_IMAGE_EVENTS,
    event_stream_schema,
    DEFAULT_OUTPUT_COMPRESSION,
    MAX_SEED,
    AdapterCard,
    GenerateResponse,
    ImageData,
    ImagesResponse,
    ModelCard,
    ModelList,
    generate_request_model,
    images_request_model,
    openai_size,
)

if TYPE_CHECKING:
    from model.runtime import FluxGenerator

log = logging.getLogger(__name__)

# Every compiled graph runs in the first step, which is what pulls them onto the device; the second
# (one more transformer call) times a step apart from the fixed per-image cost, so Retry-After is right
# from the first request on.
WARMUP_STEPS = 2
WARMUP_PROMPT = "warm-up"
DEFAULT_MAX_IMAGES = 4
# The tiny models are built in code by this project: no HuggingFace organisation owns them.
TINY_MODELS_OWNER = "flux-neuron"
# Between the adapters of the info metric's label, each as --lora names it (which uses commas).
ADAPTER_SEPARATOR = ";"
# Pillow's format names and the media types of the data: URLs.
IMAGE_FORMATS = {"png": ("PNG", "image/png"), "jpeg": ("JPEG", "image/jpeg"), "webp": ("WEBP", "image/webp")}
# Statuses the JSON routes can answer with besides success, declared in the OpenAPI document.
BODY_ERRORS = (
    HTTPStatus.BAD_REQUEST,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
)
GENERATION_ERRORS = (
    HTTPStatus.TOO_MANY_REQUESTS,
    HTTPStatus.INTERNAL_SERVER_ERROR,
    HTTPStatus.SERVICE_UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT,
)


@dataclass(frozen=True)
class ServerLimits:
    queue_size: int
    request_timeout: float
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images: int = DEFAULT_MAX_IMAGES

    def __post_init__(self) -> None:
        if self.request_timeout <= 0:
            raise ValueError(f"request timeout must be > 0 s, got {self.request_timeout}")
        if self.max_images < 1:
            raise ValueError(f"max images must be >= 1, got {self.max_images}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max body bytes must be >= 1, got {self.max_body_bytes}")


class Status(str, enum.Enum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    # Loaded, but its generations keep failing (serving/health.py): what /readyz (and, at last, /healthz) says.
    FAILING = "failing"


def generate_timed(
    generator: FluxGenerator,
    generations: GenerationQueue,
    prompt: str,
    steps: int,
    guidance_scale: float | None,
    seed: int,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int, Any], None] | None = None,
):
    """One image, on the worker thread, its step-end times teaching the queue what images cost (for
    Retry-After); returns the image and the seconds it took."""
    clock = generations.clock
    step_ends: list[float] = []

    def at_step_end(done: int, total: int, latents) -> None:
        step_ends.append(clock())
        if on_step is not None:
            on_step(done, total, latents)

    started = clock()
    image = generator.generate(prompt, steps, guidance_scale, seed, should_stop, at_step_end)
    finished = clock()
    generations.costs.observe(started, step_ends, finished)
    return image, finished - started


def warm_up(generator: FluxGenerator, generations: GenerationQueue, family: Family) -> None:
    """One generation of WARMUP_STEPS: every compiled graph runs once (the warm-up, and the self-test)."""
    generate_timed(generator, generations, WARMUP_PROMPT, WARMUP_STEPS, family.default_guidance, 0)


class Pipeline:
    """The generator and where it is in its life. Written by the worker thread only."""

    def __init__(self, served: ServedArtifact) -> None:
        self.served = served
        self.status = Status.LOADING
        self.failure: str | None = None
        self.generator: FluxGenerator | None = None

    def load_and_warm_up(self, load: Callable[[], FluxGenerator], generations: GenerationQueue) -> None:
        try:
            generator = load()
            self.status = Status.WARMING_UP
            log.info("artifacts loaded and verified for shape %s; warming up", generator.shape)
            warm_up(generator, generations, self.served.family)
        except Exception as error:
            self.failure = f"{type(error).__name__}: {error}"
            self.status = Status.FAILED
            log.exception("model failed to load; this server will never be ready: %s", self.failure)
            return
        self.generator = generator
        self.status = Status.READY
        log.info("ready to serve shape %s", generator.shape)

    @property
    def public_failure(self) -> str | None:
        """Why the load failed, as probes and clients may see it: no path on the node (the log has it all)."""
        return None if self.failure is None else without_node_paths(self.failure)

    def ready_generator(self) -> FluxGenerator:
        if self.generator is None:
            detail = f"model {self.status.value}" + (f": {self.public_failure}" if self.failure else "")
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready ({detail})", code="not_ready")
        return self.generator


@dataclass(frozen=True)
class Images:
    """What one request asks the pipeline for: ``count`` images, seeds ``seed``, ``seed + 1``, ..., and for
    a streamed one ``partial_images`` previews of each."""

    prompt: str
    steps: int
    guidance_scale: float | None  # None for a model without guidance
    seed: int
    count: int = 1
    image_format: str = "png"
    compression: int = DEFAULT_OUTPUT_COMPRESSION
    partial_images: int = 0

    @property
    def seeds(self) -> list[int]:
        return [(self.seed + index) % (MAX_SEED + 1) for index in range(self.count)]


def encode(image, image_format: str, compression: int) -> bytes:
    pillow_format, _ = IMAGE_FORMATS[image_format]
    out = io.BytesIO()
    if image_format == "png":
        image.save(out, format=pillow_format)
    else:
        image.save(out, format=pillow_format, quality=compression)
    return out.getvalue()


def render(
    generator: FluxGenerator,
    request: Images,
    generations: GenerationQueue,
    metrics: Metrics,
    health: RuntimeHealth,
    ticket: Ticket,
) -> tuple[list[bytes], float]:
    """Generate on the worker thread, one image after another; return the encoded images and the seconds
    spent generating them. A listened ticket hears each image start (step 0), every step, the previews
    and each image once encoded."""
    encoded, generating = [], 0.0
    previews_at = preview_steps(request.steps, request.partial_images) if ticket.listened else {}
    for index, seed in enumerate(request.seeds):

        def report_step(done: int, total: int, latents, index=index, seed=seed) -> None:
            if done not in previews_at:
                ticket.report(Step(index, seed, done, total))
                return
            shown = encode(preview(latents, generator.shape), request.image_format, request.compression)
            ticket.report(Step(index, seed, done, total, shown, previews_at[done]))

        ticket.report(Step(index, seed, 0, request.steps))
        try:
            image, seconds = generate_timed(
                generator, generations, request.prompt, request.steps, request.guidance_scale, seed,
                ticket.should_stop, report_step if ticket.listened else None,
            )
        except GenerationStopped:
            metrics.generations.labels("stopped").inc()
            raise
        except Exception:
            metrics.generations.labels("failed").inc()
            health.failed(During.GENERATION)
            raise
        health.succeeded()
        generating += seconds
        metrics.generations.labels("completed").inc()
        metrics.generation_seconds.observe(seconds)
        encoded.append(encode(image, request.image_format, request.compression))
        ticket.report(ImageDone(index, seed, encoded[-1], seconds))
    return encoded, generating


def self_test(generator: FluxGenerator, generations: GenerationQueue, health: RuntimeHealth, family: Family) -> None:
    """The warm-up generation, on the worker thread, as the probe of a pipeline that keeps failing."""
    try:
        warm_up(generator, generations, family)
    except Exception:
        log.exception("self-test generation failed")
        health.failed(During.SELF_TEST)
        return
    log.info("self-test generation succeeded: ready again")
    health.succeeded()


async def self_test_while_unready(pipeline: Pipeline, generations: GenerationQueue, health: RuntimeHealth) -> None:
    """Forever: every interval, a self-test if runtime errors made the server unready and no restart is due."""
    while True:
        await asyncio.sleep(health.policy.self_test_interval)
        if pipeline.generator is not None and health.unready and not health.needs_restart:
            await asyncio.wrap_future(
                generations.run_exclusively(partial(self_test, pipeline.generator, generations, health,
                                                    pipeline.served.family))
            )


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read: nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _log_fields(request: Request) -> dict[str, Any]:
    return request.scope[LOG_FIELDS_SCOPE_KEY]


def create_app(
    load: Callable[[], FluxGenerator],
    served: ServedArtifact,
    limits: ServerLimits,
    health_policy: HealthPolicy = HealthPolicy(),
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """An app that loads the pipeline with ``load`` on its worker thread at startup. ``clock`` times the
    generations (deadlines, costs, execution times)."""
    metrics = Metrics()
    metrics.server.info(
        {
            "model": served.model,
            "revision": served.revision,
            "shape": str(served.shape),
            "backend": served.backend,
            "artifact": served.artifact,
            "family": served.family.name,
            "weights": served.weights,
            "adapters": ADAPTER_SEPARATOR.join(adapter_argument(adapter) for adapter in served.adapters),
        }
    )
    generations = GenerationQueue(limits.queue_size, metrics, clock=clock)
    pipeline = Pipeline(served)
    health = RuntimeHealth(health_policy, metrics)
    # The bodies are built for this server (its model's family, its size, its max n), so they are not names the
    # module's (postponed) annotations could refer to: the routes' annotations are set below.
    GenerateRequest = generate_request_model(served.model, served.family)
    ImagesGenerationRequest = images_request_model(served.shape, limits.max_images, served.model, served.family)
    size = openai_size(served.shape)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Not awaited: the server listens (and /healthz answers) while the model loads.
        generations.run_exclusively(partial(pipeline.load_and_warm_up, load, generations))
        self_tests = asyncio.create_task(self_test_while_unready(pipeline, generations, health))
        yield
        self_tests.cancel()
        # Uvicorn gets here after in-flight requests have been answered.
        await asyncio.to_thread(generations.shutdown)

    app = FastAPI(
        title="FLUX.1 on AWS Neuron",
        summary=f"Text-to-image generation for the one image shape this server was compiled for: {served.shape} (HxW).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Starlette's trailing-slash redirect builds its Location from the Host header (an open redirect),
        # and behind the load balancer it would drop the /flux/<shape> prefix and the https: none.
        redirect_slashes=False,
    )
    # The HTTP layer counts the requests it refuses into these (serving/http_server.py).
    app.state.metrics = metrics
    install_error_handlers(app)

    def admitted(http_request: Request, images: Images,
                 listener: Callable[[object], None] | None = None) -> Ticket:
        """The request's job, admitted to the queue; 503 before the model is ready, 429 when it is full."""
        _log_fields(http_request).update(seed=images.seed, steps=images.steps, images=images.count)
        job = partial(render, pipeline.ready_generator(), images, generations, metrics, health)
        try:
            return generations.submit(job, images.count, images.steps, limits.request_timeout, listener)
        except QueueFull as full:
            raise ApiError(HTTPStatus.TOO_MANY_REQUESTS, str(full), code="queue_full",
                           headers={"Retry-After": str(full.retry_after)}) from full

    async def outcome(http_request: Request, ticket: Ticket) -> tuple[list[bytes], float]:
        """The admitted job's images and seconds; 504 past the deadline; ClientGone once the client left."""
        try:
            return await generations.outcome(ticket, limits.request_timeout, partial(_client_gone, http_request))
        except TimeoutError as timeout:
            raise ApiError(HTTPStatus.GATEWAY_TIMEOUT, f"generation did not finish within {limits.request_timeout:g} s",
                           code="timeout") from timeout
        except GenerationStopped as stopped:
            raise ApiError(HTTPStatus.GATEWAY_TIMEOUT, f"generation stopped at its deadline: {stopped}",
                           code="timeout") from stopped
        except ClientGone:
            _log_fields(http_request)["client_gone"] = True
            raise

    async def generate_images(http_request: Request, images: Images) -> tuple[list[bytes], float] | Response:
        """The encoded images and the seconds generating them, or the 499 that ends a request whose client
        left (nobody reads it)."""
        try:
            return await outcome(http_request, admitted(http_request, images))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

    def stream_images(http_request: Request, images: Images, encoder: NativeEvents | OpenAIEvents) -> EventStream:
        """Admit the request (refusals are still plain HTTP errors), then answer with its events."""
        events: asyncio.Queue = asyncio.Queue()
        ticket = admitted(http_request, images, thread_safe_listener(events))
        _log_fields(http_request)["stream"] = True

        async def streamed() -> None:
            try:
                await outcome(http_request, ticket)
            except (ApiError, ClientGone):
                raise
            except Exception as error:
                # After the 200, no exception handler answers: the stream's error event does.
                log.exception("generation failed")
                raise internal_error() from error

        return EventStream(events, asyncio.ensure_future(streamed()), encoder)

    def generation_responses(events: dict[str, type]) -> dict[int, dict]:
        """The errors, and besides the JSON answer the events of a stream (stream: true)."""
        streamed = {"description": "The answer, or with stream: true its events",
                    "content": {EVENT_STREAM: {"schema": event_stream_schema(events)}}}
        return {**documented_errors(*BODY_ERRORS, *GENERATION_ERRORS), 200: streamed}

    async def generate(request, http_request: Request) -> GenerateResponse | Response:
        """Generate one PNG; the response carries the seed so it can be reproduced. With stream: true,
        server-sent events: queued, progress (step k of n, previews), completed, or error."""
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        images = Images(request.prompt, request.num_inference_steps, request.guidance_scale, seed,
                        partial_images=request.partial_images)
        if request.stream:
            return stream_images(http_request, images, NativeEvents())
        generated = await generate_images(http_request, images)
        if isinstance(generated, Response):
            return generated
        encoded, seconds = generated
        return GenerateResponse(image=base64.b64encode(encoded[0]).decode("ascii"), execution_time=seconds, seed=seed)

    generate.__annotations__["request"] = GenerateRequest
    app.post(endpoints.GENERATE, response_model=GenerateResponse, responses=generation_responses(GENERATE_EVENTS))(
        generate
    )

    async def images_generations(request, http_request: Request) -> ImagesResponse | Response:
        """OpenAI's images API: ``size`` is WIDTHxHEIGHT, the served one or ``auto``. With stream: true,
        OpenAI's image generation events (image_generation.partial_image, image_generation.completed)."""
        for end_user in ("user", "safety_identifier"):
            if getattr(request, end_user) is not None:
                _log_fields(http_request)[end_user] = getattr(request, end_user)
        image_format = request.output_format or "png"
        quality = request.quality or "auto"
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
        images = Images(
            request.prompt,
            served.family.quality_steps[quality],
            request.guidance_scale,
            seed,
            count=request.n or 1,
            image_format=image_format,
            compression=DEFAULT_OUTPUT_COMPRESSION if request.output_compression is None else request.output_compression,
            partial_images=request.partial_images or 0,
        )
        if request.stream:
            return stream_images(http_request, images, OpenAIEvents(size, quality, image_format))
        generated = await generate_images(http_request, images)
        if isinstance(generated, Response):
            return generated
        encoded, _ = generated
        media_type = IMAGE_FORMATS[image_format][1]
        data = []
        for image_seed, image in zip(images.seeds, encoded):
            b64 = base64.b64encode(image).decode("ascii")
            if request.response_format == "url":
                data.append(ImageData(url=f"data:{media_type};base64,{b64}", seed=image_seed))
            else:
                data.append(ImageData(b64_json=b64, seed=image_seed))
        return ImagesResponse(
            created=int(time.time()), data=data, size=size, quality=quality, output_format=image_format
        )

    images_generations.__annotations__["request"] = ImagesGenerationRequest
    app.post(endpoints.OPENAI_IMAGES, response_model=ImagesResponse,
             responses=generation_responses(OPENAI_IMAGE_EVENTS))(
        images_generations
    )

    @app.get(endpoints.OPENAI_MODELS, response_model=ModelList)
    async def models() -> ModelList:
        """The one model this server serves (at its revision), with its one size, its family and its adapters."""
        card = ModelCard(
            id=f"{served.model}@{served.revision}",
            created=served.created,
            owned_by=TINY_MODELS_OWNER if served.model in TINY_MODELS else served.model.split("/")[0],
            size=size,
            shape=str(served.shape),
            family=served.family,
            adapters=[AdapterCard.model_validate(adapter.key()) for adapter in served.adapters],
        )
        return ModelList(data=[card])

    @app.get(endpoints.HEALTHZ, responses={503: {"description": "Self-tests kept failing: restart the container."}})
    async def healthz() -> JSONResponse:
        """The process is alive, loaded or not (see /readyz); 503 once the self-tests of a pipeline
        that keeps failing have failed too, so the kubelet restarts the container."""
        if health.needs_restart:
            return JSONResponse({"status": Status.FAILING.value, "reason": health.reason()}, status_code=503)
        return JSONResponse({"status": "alive"})

    @app.get(endpoints.READYZ, responses={503: {"description": "Not ready: loading, warming up, failed or failing."}})
    async def readyz() -> JSONResponse:
        """200 once the artifacts are loaded, verified and warmed up; 503 before, forever if that failed,
        and while consecutive runtime errors of the generations reach the threshold."""
        status = pipeline.status
        body: dict[str, str] = {"status": status.value}
        if pipeline.generator is not None:
            body["shape"] = str(pipeline.generator.shape)
        if pipeline.failure is not None:
            body["reason"] = pipeline.public_failure
        if status is Status.READY and health.unready:
            status = Status.FAILING
            body.update(status=status.value, reason=health.reason())
        return JSONResponse(body, status_code=200 if status is Status.READY else 503)

    @app.get(
        endpoints.METRICS,
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    html = {200: {"content": {"text/html": {"schema": {"type": "string"}}}}}

    @app.get(endpoints.PLAYGROUND, response_class=FileResponse, responses=html)
    async def playground() -> FileResponse:
        """A page to try the model in a browser: prompt, steps, seed, the image and its time."""
        return FileResponse(STATIC_DIR / "playground.html", media_type="text/html")

    @app.get(endpoints.DOCS, response_class=FileResponse, responses=html)
    async def docs() -> FileResponse:
        """This API's reference, rendered in the browser from /openapi.json, offline."""
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html")

    app.mount(endpoints.STATIC, StaticAssets(directory=STATIC_DIR), name="static")

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            # Validation problems are 400 in OpenAI's shape (declared per route), never FastAPI's 422.
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(JsonBodyGuard, paths=(endpoints.GENERATE, endpoints.OPENAI_IMAGES), max_body_bytes=limits.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestObserver, metrics=metrics, routes=app.routes)
    return app
