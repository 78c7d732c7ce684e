"""Real uvicorn servers on 127.0.0.1 for the serving tests, and a gate to hold generations.

Tests that need "the pipeline is busy" do not rely on a generation being slow: they
close a gate in front of the real generator, so a request stays in flight exactly
until the test opens it.
"""

from __future__ import annotations

import base64
import io
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
from functools import partial
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from model.artifacts import read_manifest
from model.runtime import FluxGenerator, load_generator
from common import endpoints
from serving import http_server
from serving.app import ServedArtifact, ServerLimits, create_app
from serving.health import HealthPolicy

# A deadline for conditions that do come true, so a regression fails instead of hanging.
WAIT_S = 60.0
CLIENT_TIMEOUT_S = 120.0
REPO = Path(__file__).resolve().parents[2]
# How long `python -m serving` may take to listen, a tiny model compiled first included.
STARTUP_S = 120.0


def wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + WAIT_S
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.02)
    return result


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
        text = self.client.get(endpoints.METRICS).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

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
        with serve(create_app(partial(load_generator, tiny_artifact_dir), served, limits)) as server:
            assert server.wait_until_settled().status_code == 200
            yield server

    return serving


@pytest.fixture(scope="session")
def served(tiny_artifact_dir: Path) -> ServedArtifact:
    """What the CLI reads from the manifest before loading."""
    return ServedArtifact.from_manifest(read_manifest(tiny_artifact_dir))


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
    """``start_server(load, queue_size=, request_timeout=, ..., connection_limits=, health=, clock=)``: a server
    for this test only."""
    with ExitStack() as servers:

        def start(
            load: Callable[[], FluxGenerator],
            *,
            queue_size: int = 2,
            request_timeout: float = 60.0,
            connection_limits: http_server.ConnectionLimits | None = None,
            health: HealthPolicy = HealthPolicy(),
            clock: Callable[[], float] = time.monotonic,
            **limits,
        ):
            server_limits = ServerLimits(queue_size=queue_size, request_timeout=request_timeout, **limits)
            app = create_app(load, served, server_limits, health, clock)
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
def server_process(*argv: str) -> Iterator[ServerProcess]:
    """Run ``python -m serving ARGV --port 0`` from the repository; yield it once it listens."""
    command = [sys.executable, "-m", "serving", *argv, "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
