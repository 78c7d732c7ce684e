"""What streamed previews cost a generation, on the CPU backend, side by side in one run.

    python -m bench.previews --local                       # the tiny model on the CPU (256x144)
    python -m bench.previews --graphs DIR --steps 28       # any published artifact

The server's own code path (serving.app.render) runs each generation twice over, side by side: once as
for a plain request (nobody listens: no progress, no preview), once as for a streamed request with the
most previews there are (partial_images 3, every step reported to a listener). It prints the p50 of each
and the median ratio of neighbouring runs (on a shared machine the end-to-end difference is within its
noise), and the previews' own cost measured directly (the latent->RGB map and the PNG encode of the
latents the previews were taken from), as a share of the plain generation: the budget is 2%.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

from model.runtime import load_generator
from serving.app import Images, encode, render
from serving.cli import add_artifact_arguments, artifacts_from_args
from serving.generation_queue import GenerationQueue, Ticket
from serving.health import HealthPolicy, RuntimeHealth
from serving.metrics import Metrics
from serving.previews import MAX_PARTIAL_IMAGES, preview, preview_steps

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
BUDGET = 0.02
NO_DEADLINE = 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.previews", description=__doc__.split("\n\n")[0])
    add_artifact_arguments(parser)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model family's default)")
    parser.add_argument("--iterations", type=int, default=30, help="generations of each kind (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    artifact_dir, weights_dir = artifacts_from_args(args, parser)
    generator = load_generator(artifact_dir, weights_dir)
    family = generator.family
    if args.steps is None:
        args.steps = family.default_steps
    if args.iterations < 2 or not 2 <= args.steps <= family.max_steps:
        parser.error(f"--iterations must be at least 2, --steps 2 to {family.max_steps} ({family.name})")
    metrics = Metrics()
    generations = GenerationQueue(0, metrics)
    health = RuntimeHealth(HealthPolicy(), metrics)

    def run(seed: int, streamed: bool) -> float:
        images = Images(PROMPT, args.steps, family.default_guidance, seed,
                        partial_images=MAX_PARTIAL_IMAGES if streamed else 0)
        heard: list[object] = []
        ticket = Ticket(1, args.steps, NO_DEADLINE, generations.clock, heard.append if streamed else None)
        started = time.perf_counter()
        render(generator, images, generations, metrics, health, ticket)
        return time.perf_counter() - started

    run(0, streamed=True)  # Warms the caches of both paths' code.
    plain, streamed = [], []
    for seed in range(1, args.iterations + 1):
        # ABBA: a machine that speeds up or slows down meanwhile favours neither kind.
        for kind in (False, True) if seed % 2 else (True, False):
            (streamed if kind else plain).append(run(seed, streamed=kind))
    preview_seconds = _previews_alone(generator, args.steps, args.iterations)

    plain_p50, streamed_p50 = statistics.median(plain), statistics.median(streamed)
    paired = statistics.median(one / other for one, other in zip(streamed, plain))
    print(f"artifact {artifact_dir} (shape {generator.shape}), {args.steps} steps, "
          f"{args.iterations} generations of each kind, side by side")
    print(f"plain request (no listener)           p50 {plain_p50 * 1e3:9.2f} ms")
    print(f"streamed, {MAX_PARTIAL_IMAGES} previews, every step   p50 {streamed_p50 * 1e3:9.2f} ms")
    print(f"streamed / plain: {paired:.4f} (median of the ratios of neighbouring runs)")
    share = preview_seconds / plain_p50
    print(f"the {MAX_PARTIAL_IMAGES} previews themselves: {preview_seconds * 1e3:.3f} ms a generation = "
          f"{share:.2%} of the plain p50 (budget {BUDGET:.0%}: {'within' if share <= BUDGET else 'OVER'})")
    return 0


def _previews_alone(generator, steps: int, iterations: int) -> float:
    """The median seconds the previews of one generation take: map and encode the latents they come from."""
    taken_at = preview_steps(steps, MAX_PARTIAL_IMAGES)
    captured = []
    generator.generate(PROMPT, steps, generator.family.default_guidance, 0,
                       on_step=lambda done, total, latents: done in taken_at and captured.append(latents.clone()))
    per_generation = []
    for _ in range(iterations):
        started = time.perf_counter()
        for latents in captured:
            encode(preview(latents, generator.shape), "png", 100)
        per_generation.append(time.perf_counter() - started)
    return statistics.median(per_generation)


if __name__ == "__main__":
    sys.exit(main())
