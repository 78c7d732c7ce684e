"""Real uvicorn servers on 127.0.0.1 for the serving tests, and a gate to hold generations.

Tests that need "the pipeline is busy" do not rely on a generation being slow: they
close a gate in front of the real generator, so a request stays in flight exactly
until the test opens it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save

from model import tiny
from model.build import ensure_compiled
from common.adapters import Adapter, adapter_argument
from model.keys import TINY_MODEL, TINY_SCHNELL, CompileOptions, graphs_dir, weights_dir
from model.runtime import FluxGenerator, ServedArtifact, load_generator
from common import endpoints
from common.shapes import Shape
from serving import http_server
from serving.app import ServerLimits, create_app
from serving.health import HealthPolicy

# A deadline for conditions that do come true, so a regression fails instead of hanging.
WAIT_S = 60.0
CLIENT_TIMEOUT_S = 120.0
REPO = Path(__file__).resolve().parents[2]
# How long `python -m serving` may take to listen, a tiny model compiled first included.
STARTUP_S = 120.0
# How long `python -m model.compile` of a tiny model may take.
COMPILE_S = 300.0


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT_S
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.02)
    return result


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The value of the sample of ``name`` with exactly these labels in a server's /metrics; 0 without one."""
    for family in text_string_to_metric_families(client.get(endpoints.METRICS).text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


class RunningServer:
    def __init__(self, app, sock: socket.socket, connection_limits: http_server.ConnectionLimits):
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = http_server.server(app, sock, connection_limits, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.client = httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S)

    def generate(self, **body) -> httpx.Response:
        """POST /generate on a connection of its own, so calls from several threads run concurrently."""
        return httpx.post(
            self.url + endpoints.GENERATE,
            json={"prompt": "a red fox", "num_inference_steps": 2, **body},
            timeout=CLIENT_TIMEOUT_S,
        )

    def metric(self, name: str, **labels: str) -> float:
        return metric(self.client, name, **labels)

    def wait_for_metric(self, name: str, value: float) -> None:
        wait_for(lambda: self.metric(name) == value, f"{name} == {value}")

    def wait_until_settled(self) -> httpx.Response:
        """The /readyz answer once loading and warm-up are over, successful or not."""

        def settled():
            response = self.client.get(endpoints.READYZ)
            return response if response.json()["status"] in ("ready", "failed") else None

        return wait_for(settled, "the model to finish loading")

    def wait_until_refusing_connections(self) -> None:
        def refused() -> bool:
            try:
                httpx.get(self.url + endpoints.HEALTHZ, timeout=5)
            # Refused once the listener is closed; a connection the kernel accepted just before that
            # is reset unanswered (ReadError) or closed mid-response: new work is not taken either way.
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
                return True
            return False

        wait_for(refused, "the server to stop accepting connections")

    def begin_shutdown(self) -> None:
        """What uvicorn's SIGTERM handler does (signals only reach the main thread)."""
        self.server.should_exit = True

    def stop(self) -> None:
        self.begin_shutdown()
        self.thread.join(WAIT_S)
        self.client.close()
        assert not self.thread.is_alive(), "the server did not shut down"


@contextmanager
def serve(app, connection_limits: http_server.ConnectionLimits | None = None) -> Iterator[RunningServer]:
    """Run ``app`` on a real uvicorn, as the CLI runs it, bound to an ephemeral port of 127.0.0.1."""
    with http_server.bind("127.0.0.1", 0) as sock:
        running = RunningServer(app, sock, connection_limits or http_server.ConnectionLimits())
        running.thread.start()
        wait_for(lambda: running.server.started, "uvicorn to start")
        try:
            yield running
        finally:
            running.stop()


class GatedGenerator:
    """The real generator, whose generations wait until ``gate`` is open."""

    def __init__(self, generator: FluxGenerator, gate: threading.Event):
        self._generator = generator
        self.gate = gate
        self.shape = generator.shape
        self.manifest = generator.manifest
        self.calls = 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        self.gate.wait()
        return self._generator.generate(*args, **kwargs)


class HeldAtStep:
    """The real generator, each of whose generations waits after denoising step ``step`` (its progress
    reported) until ``gate`` is open: a generation held mid-way, previews and all."""

    def __init__(self, generator: FluxGenerator, step: int, gate: threading.Event):
        self._generator = generator
        self.step = step
        self.gate = gate
        self.reached = threading.Event()
        self.shape = generator.shape
        self.manifest = generator.manifest

    def generate(self, prompt, steps, guidance_scale, seed, should_stop=None, on_step=None):
        def then_hold(done: int, total: int, latents) -> None:
            if on_step is not None:
                on_step(done, total, latents)
            if done == self.step:
                self.reached.set()
                self.gate.wait()

        return self._generator.generate(prompt, steps, guidance_scale, seed, should_stop, then_hold)


def server_sent_events(lines: Iterator[str]) -> Iterator[tuple[str | None, str]]:
    """(event name, data) of each event of a text/event-stream, comments as (None, text)."""
    name, data = None, []
    for line in lines:
        if line.startswith(":"):
            yield None, line[1:].strip()
        elif line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").strip())
        elif not line and data:
            yield name, "\n".join(data)
            name, data = None, []


@pytest.fixture(scope="session")
def tiny_generator(tiny_artifact_dir: Path) -> FluxGenerator:
    """One loaded generator for the tests that do not test loading; servers using it run one at a time."""
    return load_generator(tiny_artifact_dir)


@pytest.fixture(scope="session")
def serve_tiny_artifact(tiny_artifact_dir: Path, served: ServedArtifact) -> Callable[[ServerLimits], AbstractContextManager[RunningServer]]:
    """``with serve_tiny_artifact(limits) as server``: the tiny artifact served as the CLI serves it
    (loaded, verified and warmed up in the background), yielded once it has settled ready. For the
    module-scoped servers that many tests share."""

    @contextmanager
    def serving(limits: ServerLimits) -> Iterator[RunningServer]:
        with serve(create_app(partial(load_generator, tiny_artifact_dir, expected=served), served, limits)) as server:
            assert server.wait_until_settled().status_code == 200
            yield server

    return serving


@pytest.fixture(scope="session")
def served(tiny_artifact_dir: Path) -> ServedArtifact:
    """What the CLI reads from the manifests and the pipeline config before loading."""
    return ServedArtifact.read(tiny_artifact_dir)


@pytest.fixture(scope="session")
def png_size() -> Callable[[str], tuple[int, int]]:
    """Decode a base64 PNG; return its PIL size, which is (width, height)."""

    def size(b64: str) -> tuple[int, int]:
        image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        assert image.format == "PNG"
        return image.size

    return size


@pytest.fixture
def start_server(served: ServedArtifact) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(load, queue_size=, request_timeout=, ..., connection_limits=, health=, clock=, announced=)``: a
    server for this test only, announcing ``announced`` (by default the tiny artifact) before it loads."""
    with ExitStack() as servers:

        def start(
            load: Callable[[], FluxGenerator],
            *,
            queue_size: int = 2,
            request_timeout: float = 60.0,
            connection_limits: http_server.ConnectionLimits | None = None,
            health: HealthPolicy = HealthPolicy(),
            clock: Callable[[], float] = time.monotonic,
            announced: ServedArtifact = served,
            **limits,
        ):
            server_limits = ServerLimits(queue_size=queue_size, request_timeout=request_timeout, **limits)
            app = create_app(load, announced, server_limits, health, clock)
            return servers.enter_context(serve(app, connection_limits))

        yield start


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for requests that must be in flight while the test goes on."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool


@pytest.fixture
def gate(start_server, background) -> Iterator[threading.Event]:
    """Open unless a test closes it. Set up after the servers and the request threads, so it
    reopens before either is waited for, even when a test fails with the gate closed."""
    event = threading.Event()
    event.set()
    yield event
    event.set()


@pytest.fixture
def gated_generator(tiny_generator: FluxGenerator, gate: threading.Event) -> GatedGenerator:
    return GatedGenerator(tiny_generator, gate)


class ServerProcess:
    """``python -m serving`` as a user runs it, its stderr collected line by line."""

    def __init__(self, process: subprocess.Popen, stderr_lines: list[str]):
        self.process = process
        self.stderr_lines = stderr_lines
        (self.url,) = re.findall(r" on (http://127\.0\.0\.1:\d+)", "".join(stderr_lines))

    def wait_ready(self, client: httpx.Client) -> None:
        wait_for(lambda: client.get(endpoints.READYZ).status_code == 200, "the server to be ready")

    def terminate(self) -> int:
        """SIGTERM, as Kubernetes stops it; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT_S)


@contextmanager
def server_process(*argv: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Run ``python -m serving ARGV --port 0`` from the repository (in ``env``, by default this one's); yield it once
    it listens."""
    command = [sys.executable, "-m", "serving", *argv, "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr_lines: list[str] = []
    listening = threading.Event()

    def read_stderr():
        for line in process.stderr:
            stderr_lines.append(line)
            if "Application startup complete" in line:
                listening.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert listening.wait(STARTUP_S), "".join(stderr_lines)
        yield ServerProcess(process, stderr_lines)
    finally:
        process.kill()
        process.wait(WAIT_S)
        reader.join(WAIT_S)


def compile_options_argv(options: CompileOptions) -> list[str]:
    """The compile options as flags, as a compile Job and its serving pods both pass them."""
    argv = ["--shape", str(options.shape), "--model", options.model, "--dtype", options.dtype, "--backend",
            options.backend, "--tp-degree", str(options.tp_degree), "--max-text-length", str(options.max_text_length)]
    if options.revision is not None:
        argv += ["--revision", options.revision]
    for adapter in options.loras:
        argv += ["--lora", adapter_argument(adapter)]
    return argv


def graphs_root_argv(root: Path, options: CompileOptions) -> list[str]:
    """The flags a serving pod passes for the options its compile Job used."""
    return ["--graphs-root", str(root), *compile_options_argv(options)]


# --- The FLUX.1 family as a stack publishes it: the tiny schnell, the tiny dev and the tiny dev with a tiny LoRA ---

# Small (the compiles and generations take little) and not square (a swap of height and width shows).
FAMILY_SHAPE = Shape(height=80, width=64)
ADAPTER = Adapter("someone/tiny-flux-lora", "d" * 40, 0.8)


def _tiny_options(model: str, **changes) -> CompileOptions:
    return CompileOptions(model, None, FAMILY_SHAPE, dtype="float32", backend="cpu", max_text_length=32, **changes)


def write_hub_cache(cache: Path, repo: str, commit: str, files: dict[str, bytes]) -> None:
    """A repository at a commit in a HuggingFace hub cache, laid out as huggingface_hub writes it: each file a blob
    named by its hash, the snapshot's files links to the blobs, refs/main naming the commit."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)


@dataclass(frozen=True)
class PublishedFamily:
    """The artifact root of the FLUX.1 family's tiny models and how they were published: the tiny dev-like model
    (`dev`) and the tiny schnell-like one (`schnell`) compiled, and `python -m model.compile` run for the dev one
    with a LoRA adapter merged (`adapted`), offline, from a HuggingFace cache that holds the adapter."""

    root: Path
    hub_env: dict[str, str]  # the environment of the compile and serving processes: the cache, offline
    dev: CompileOptions
    schnell: CompileOptions
    adapted: CompileOptions
    graph_files_before: list[str]  # the dev graphs' files before the adapted compile
    adapted_compile: subprocess.CompletedProcess

    def graphs(self, options: CompileOptions) -> Path:
        return graphs_dir(options, self.root)[0]

    def weights(self, options: CompileOptions) -> Path:
        return weights_dir(options, self.root)[0]

    def served(self, options: CompileOptions) -> ServedArtifact:
        """What a server of these options announces before its load."""
        return ServedArtifact.read(self.graphs(options), self.weights(options))

    def load(self, options: CompileOptions) -> FluxGenerator:
        return load_generator(self.graphs(options), self.weights(options))


def files_under(directory: Path) -> list[str]:
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*"))


@pytest.fixture(scope="session")
def published_family(tmp_path_factory: pytest.TempPathFactory) -> PublishedFamily:
    home = tmp_path_factory.mktemp("hf-home")
    write_hub_cache(home / "hub", ADAPTER.repo, ADAPTER.revision, {tiny.LORA_FILE: save(tiny.lora_adapter())})
    hub_env = {**os.environ, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
    root = tmp_path_factory.mktemp("family-artifacts")
    dev, schnell, adapted = (_tiny_options(TINY_MODEL), _tiny_options(TINY_SCHNELL),
                             _tiny_options(TINY_MODEL, loras=(ADAPTER,)))
    graph_files_before = files_under(ensure_compiled(dev, root))
    command = [sys.executable, "-m", "model.compile", *compile_options_argv(adapted), "--out", str(root)]
    with subprocess.Popen(command, cwd=REPO, env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        # Meanwhile (most of the command's time is starting Python and importing torch): the schnell, in this process.
        ensure_compiled(schnell, root)
        stdout, stderr = process.communicate(timeout=COMPILE_S)
    assert process.returncode == 0, f"the adapted compile failed: {stderr[-3000:]}"
    adapted_compile = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    return PublishedFamily(root, hub_env, dev, schnell, adapted, graph_files_before, adapted_compile)


@pytest.fixture(scope="session")
def serve_published(published_family: PublishedFamily) -> Callable[..., AbstractContextManager[RunningServer]]:
    """``with serve_published(options, limits) as server``: one of the family's artifacts served as the CLI serves
    it (announced, then loaded, verified and warmed up in the background), yielded once it has settled ready."""

    @contextmanager
    def serving(options: CompileOptions, limits: ServerLimits) -> Iterator[RunningServer]:
        served = published_family.served(options)
        load = partial(load_generator, published_family.graphs(options), published_family.weights(options),
                       expected=served)
        with serve(create_app(load, served, limits)) as server:
            assert server.wait_until_settled().status_code == 200
            yield server

    return serving
