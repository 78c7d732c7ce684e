"""How the offline plan scales with the number of shapes a stack serves.

    .venv/bin/python -m bench.plan_scaling                 # dev with 3, 12 and 48 shapes
    .venv/bin/python -m bench.plan_scaling --stack prod --counts 3 96

Each count runs the real program once under mocks with `flux-neuron:shapes` overridden, and each Neuron pool's
`maxDevices` raised to what that many shapes need (the config refuses less), then renders the files and runs
every check, as `python -m planning --out --check` would. One run per count: the numbers are an order of
magnitude, not a benchmark to compare commits by.
"""

from __future__ import annotations

import argparse
import json
import time

from common.shapes import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE, parse_shape
from infra.config import MAX_DEVICES, load_stack_config
from planning.checks import check
from planning.offline import run_program, stack_file_config, stack_names, with_overrides
from planning.render import render_files

SHAPES_KEY = "flux-neuron:shapes"
POOLS_KEY = "flux-neuron:neuronPools"


def shapes(count: int) -> list[str]:
    """`count` distinct valid shapes, landscape and portrait, the most common sizes first."""
    sides = range(1024, MIN_SIDE - 1, -8 * SIDE_MULTIPLE)
    candidates = [f"{height}x{width}" for height in sides for width in sides]
    if count > len(candidates):
        raise SystemExit(f"at most {len(candidates)} shapes between {MIN_SIDE} and {MAX_SIDE}")
    chosen = candidates[:count]
    for shape in chosen:
        parse_shape(shape)  # the program would reject an invalid one: fail here, with its message
    return chosen


def overrides(stack: str, count: int) -> dict:
    """The stack's config with `count` shapes, and pools holding what they need."""
    raw = stack_file_config(stack)[0]
    pools = json.loads(raw[POOLS_KEY])
    roomy = {family: {**pool, "maxDevices": MAX_DEVICES} for family, pool in pools.items()}
    config = load_stack_config(with_overrides(raw, {SHAPES_KEY: shapes(count), POOLS_KEY: roomy}))
    sized = {family: {**pool, "maxDevices": max(pool["maxDevices"], config.max_devices_needed(family))}
             for family, pool in pools.items()}
    return {SHAPES_KEY: shapes(count), POOLS_KEY: sized}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", default="dev", choices=stack_names())
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 12, 48])
    args = parser.parse_args()
    # Untimed: the first run also imports the program's modules and reads the CRD schemas.
    check(run_program(args.stack))
    print(f"stack {args.stack}: one run per shape count")
    print(f"{'shapes':>6} {'resources':>9} {'program s':>9} {'render s':>8} {'check s':>7} {'total s':>7} "
          f"{'per shape ms':>12}")
    for count in args.counts:
        start = time.perf_counter()
        rendering = run_program(args.stack, overrides(args.stack, count))
        ran = time.perf_counter()
        render_files(rendering)
        rendered = time.perf_counter()
        problems = check(rendering)
        checked = time.perf_counter()
        total = checked - start
        print(f"{count:>6} {len(rendering.resources):>9} {ran - start:>9.2f} {rendered - ran:>8.2f} "
              f"{checked - rendered:>7.2f} {total:>7.2f} {1000 * total / count:>12.0f}"
              + (f"  ({len(problems)} problems)" if problems else ""))


if __name__ == "__main__":
    main()
