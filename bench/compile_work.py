"""What compiling a stack's shapes costs, the old design against the new, side by side in one run.

    .venv/bin/python -m bench.compile_work                 # every stack
    .venv/bin/python -m bench.compile_work --stack dev

- **old**: NxD's per-rank tracing (unsupported since Neuron 2.27), as until COMPILE_CODE_VERSION 3: per shape, every tensor-parallel rank built
  the whole T5 or transformer and compiled a graph of its own, and each shape's artifact carried all the
  weights inlined in its graphs;
- **new**: ModelBuilder: per shape one build and one SPMD compile per component, graphs without weights; the
  weights sharded and published once for every shape.

Two parts. **Measured**: the tiny model is compiled for the stack's shapes with the real compile on this
machine's CPU (one weights artifact, a graphs artifact per shape) and the published bytes counted; the old
design's bytes are those same graphs with the weights inside every shape's artifact. **FLUX.1-dev**: model builds,
graph compiles, compile CPU-hours and bytes for the stack's degree and shapes, from the sizing model
(infra/sizing.py: compile_step_seconds and the pods' CPUs, estimates until real compiles log theirs). No
Neuron compile runs here: the CPU-hours are the sizing model's, not a measurement.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from common.shapes import Shape
from infra import sizing
from infra.config import load_stack_config
from infra.pods import WorkloadSettings, host_share
from model.artifacts import read_manifest
from model.build import ensure_compiled
from model.keys import CompileOptions, weights_dir
from planning.offline import stack_file_config, stack_names

GB = 10**9


@dataclass(frozen=True)
class Work:
    builds: int           # whole-component model builds
    compiles: int         # graphs neuronx-cc compiles
    cpu_hours: float      # the compiles' seconds (sizing model) times the compile pod's vCPUs
    published_gb: float   # bytes uploaded to the bucket


def _published_bytes(artifact_dir: Path) -> int:
    return sum(entry["size"] for entry in read_manifest(artifact_dir)["files"])


@dataclass(frozen=True)
class Published:
    """What a compile of several shapes uploaded: each shape's graphs, and the weights they all take."""

    graphs: tuple[int, ...]
    weights: int

    @property
    def old(self) -> int:
        """The old design's bytes: the same graphs with every shape's artifact holding the weights."""
        return sum(self.graphs) + len(self.graphs) * self.weights

    @property
    def new(self) -> int:
        return sum(self.graphs) + self.weights


def measured_tiny(shapes: tuple[Shape, ...]) -> Published:
    """The tiny model compiled for `shapes` on this machine, with the real compile."""
    with tempfile.TemporaryDirectory(prefix="bench-compile-work-") as root:
        options = [CompileOptions("tiny", None, shape, dtype="float32") for shape in shapes]
        graphs = tuple(_published_bytes(ensure_compiled(option, Path(root))) for option in options)
        return Published(graphs, _published_bytes(weights_dir(options[0], Path(root))[0]))


def flux_dev(settings: WorkloadSettings, shapes: tuple[Shape, ...]) -> tuple[Work, Work]:
    """FLUX.1-dev at the stack's degree over its shapes: (old, new)."""
    tp, dtype, text = settings.compile.tensor_parallel, settings.dtype, settings.model.max_text_length
    # The old compile pod ran on the Neuron pool with its ranks' devices, and got their share of the host's CPUs
    # (infra/pods.py before the device-less compiles: 22 of trn1.32xlarge's 128 vCPUs for dev's 4 devices).
    pool = settings.serving_pool
    old_cpus = host_share(pool, sizing.devices_for(pool.family, pool.instance_types, tp)).cpu
    new_cpus = settings.graphs_job_size.cpu
    ranks = {component.name: tp if component.sharded else 1 for component in sizing.FLUX_DEV}
    seconds = {shape: {component.name: sizing.compile_step_seconds(component, shape.image_tokens, text)
                       for component in sizing.FLUX_DEV} for shape in shapes}
    old = Work(
        builds=len(shapes) * sum(ranks.values()),
        compiles=len(shapes) * sum(ranks.values()),
        cpu_hours=sum(ranks[name] * time for by_component in seconds.values()
                      for name, time in by_component.items()) * old_cpus / 3600,
        published_gb=len(shapes) * sizing.artifact_bytes(dtype) / GB,
    )
    shard_seconds = sum(ranks[component.name] * sizing.shard_step_seconds(component, dtype, tp)
                        for component in sizing.FLUX_DEV)
    new = Work(
        builds=len(shapes) * len(sizing.FLUX_DEV) + len(sizing.FLUX_DEV),  # + the weights Job's one load each
        compiles=len(shapes) * len(sizing.FLUX_DEV),
        cpu_hours=(sum(time for by_component in seconds.values() for time in by_component.values()) * new_cpus
                   + shard_seconds * settings.weights_job_size.cpu) / 3600,
        published_gb=(sizing.weights_bytes(dtype, tp) + len(shapes) * sizing.STAGED_GRAPHS_BYTES) / GB,
    )
    return old, new


def _ratio(old: float, new: float) -> str:
    return f"{old / new:.2f}x" if new else "-"


def report(stack: str) -> list[str]:
    config = load_stack_config(stack_file_config(stack)[0])
    settings, shapes = WorkloadSettings.of(config), tuple(config.shapes)
    tiny = measured_tiny(shapes)
    old, new = flux_dev(settings, shapes)
    lines = [f"stack {stack}: {len(shapes)} shapes ({', '.join(map(str, shapes))}), TP {settings.compile.tensor_parallel}, "
             f"{settings.dtype}",
             f"  {'':34} {'old':>12} {'new':>12} {'old/new':>8}",
             f"  {'tiny model, bytes published (measured)':34} {tiny.old / 1e6:>10.2f}MB {tiny.new / 1e6:>10.2f}MB "
             f"{_ratio(tiny.old, tiny.new):>8}"]
    for label, attribute, unit in (("FLUX.1-dev model builds", "builds", ""), ("FLUX.1-dev graph compiles", "compiles", ""),
                                   ("FLUX.1-dev compile CPU-hours", "cpu_hours", "h"),
                                   ("FLUX.1-dev GB published", "published_gb", "GB")):
        before, after = getattr(old, attribute), getattr(new, attribute)
        lines.append(f"  {label:34} {before:>10.1f}{unit:2} {after:>10.1f}{unit:2} {_ratio(before, after):>8}")
    per_shape = replace(new, published_gb=sizing.STAGED_GRAPHS_BYTES / GB)
    lines.append(f"  a new shape then costs: {len(sizing.FLUX_DEV)} builds, {len(sizing.FLUX_DEV)} compiles, about "
                 f"{per_shape.published_gb:.0f} GB of graphs (estimate) and no weights")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compile_work", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=[*stack_names(), "all"], default="all")
    args = parser.parse_args(argv)
    for stack in stack_names() if args.stack == "all" else [args.stack]:
        print("\n".join(report(stack)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
