"""What HTTP serving adds to a generation: POST /generate end to end against an in-process call.

    python -m bench.http_latency --local                      # the tiny model on the CPU
    python -m bench.http_latency --graphs DIR --steps 10      # any published artifact

The artifact is loaded once. Uvicorn serves that generator on an ephemeral port of
127.0.0.1 through the real app (queue, validation, PNG and base64 encoding, JSON), and
the in-process calls use the same generator directly. The two alternate, one call at a
time, so both see the same machine state; the p50 of each and their ratio are printed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time

import httpx

from model.runtime import ServedArtifact, load_generator
from common import endpoints
from serving import http_server
from serving.app import ServerLimits, create_app
from serving.cli import add_artifact_arguments, artifacts_from_args

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
STARTUP_TIMEOUT_S = 600.0


def percentile(samples: list[float], fraction: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[round(fraction * 100) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_latency", description=__doc__.split("\n\n")[0])
    add_artifact_arguments(parser)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per generation (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=20, help="timed calls of each kind (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.iterations < 2:
        parser.error("--iterations must be at least 2 for percentiles")
    logging.basicConfig(level=logging.WARNING)
    artifact_dir, weights_dir = artifacts_from_args(args, parser)
    served = ServedArtifact.read(artifact_dir, weights_dir)
    if args.steps > served.family.max_steps:
        parser.error(f"--steps {args.steps}: {served.model} is {served.family.name}, at most {served.family.max_steps}")
    generator = load_generator(artifact_dir, weights_dir, expected=served)

    # The app's own loader hands over the generator already loaded: one copy on the device.
    app = create_app(lambda: generator, served, ServerLimits(queue_size=0, request_timeout=STARTUP_TIMEOUT_S))
    with http_server.bind("127.0.0.1", 0) as sock:
        server = http_server.server(app, sock, http_server.ConnectionLimits(), log_level="warning")
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            with httpx.Client(base_url=url, timeout=STARTUP_TIMEOUT_S) as client:
                in_process, over_http = _measure(client, generator, args.steps, args.iterations)
        finally:
            server.should_exit = True
            thread.join()

    in_process_p50, http_p50 = statistics.median(in_process), statistics.median(over_http)
    print(f"artifact {artifact_dir} (shape {generator.shape})")
    print(f"{args.steps} steps, {args.iterations} calls of each kind, alternating")
    for name, samples in (("in-process generate", in_process), (f"HTTP POST {endpoints.GENERATE}", over_http)):
        print(
            f"{name:<22} p50 {statistics.median(samples) * 1e3:9.1f} ms   p90 {percentile(samples, 0.9) * 1e3:9.1f} ms"
        )
    print(f"HTTP / in-process p50 ratio: {http_p50 / in_process_p50:.3f} (+{(http_p50 - in_process_p50) * 1e3:.1f} ms)")
    return 0


def _measure(client: httpx.Client, generator, steps: int, iterations: int) -> tuple[list[float], list[float]]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while client.get(endpoints.READYZ).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"server not ready after {STARTUP_TIMEOUT_S:g} s: {client.get(endpoints.READYZ).text}")
        time.sleep(0.1)
    # The model's own default guidance, if it takes any: the server's default for a body without it.
    guidance = generator.family.default_guidance
    body = {"prompt": PROMPT, "num_inference_steps": steps}
    # Opens the keep-alive connection outside the timed calls.
    client.post(endpoints.GENERATE, json={**body, "seed": 0}).raise_for_status()
    in_process, over_http = [], []
    for seed in range(1, iterations + 1):
        started = time.perf_counter()
        generator.generate(PROMPT, steps, guidance, seed)
        in_process.append(time.perf_counter() - started)
        started = time.perf_counter()
        response = client.post(endpoints.GENERATE, json={**body, "seed": seed})
        response.raise_for_status()
        response.json()
        over_http.append(time.perf_counter() - started)
    return in_process, over_http


if __name__ == "__main__":
    sys.exit(main())
