"""Artifact load throughput against a raw sequential read of the same files, side by side.

    python -m bench.artifact_load                       # tiny artifact + 512 MB of synthetic graphs
    python -m bench.artifact_load --artifact DIR        # an existing artifact (e.g. on a Mountpoint volume)

Two measurements, each against a raw read (each file read sequentially into memory, no
checks) of exactly the files the load reads, alternated over several rounds; medians are printed as ratios:

- load_generator on a whole artifact (the tiny model unless --artifact is given): read,
  verify, deserialize and assemble the pipeline. On the tiny model the files are small,
  so this mostly shows the fixed cost of building the pipeline.
- synthetic TorchScript graphs of --synthetic-mb in total, published like a compile
  publishes: the verified copy into local scratch (size + sha256 while copying) alone,
  an unverified torch.jit.load from the paths, and the verified copy followed by
  torch.jit.load as the runtime does it: the per-byte costs that dominate real
  multi-GB artifacts.

Files are read through the page cache, so both sides run at memory speed here and the
ratio shows the CPU cost of verification; on a Mountpoint volume the raw read itself is
slower and the ratio moves towards 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from model.artifacts import copy_verified, publish, read_manifest
from model.backends import TORCHSCRIPT, CpuBackend
from model.compile import CompileOptions, ensure_compiled
from model.runtime import load_generator
from model.shapes import Shape

def raw_read(artifact_dir: Path) -> tuple[int, float]:
    """Read every file of the manifest sequentially into memory, unchecked: the floor of any load."""
    manifest = read_manifest(artifact_dir)
    total, started = 0, time.perf_counter()
    for entry in manifest["files"]:
        total += len((artifact_dir / manifest["attempt"] / entry["path"]).read_bytes())
    return total, time.perf_counter() - started


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def verified_copy(artifact_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as local:
        copy_verified(artifact_dir, Path(local))


def unverified_graph_load(artifact_dir: Path) -> None:
    """What a loader that trusts its storage does: torch.jit.load straight from each path."""
    manifest = read_manifest(artifact_dir)
    for entry in manifest["files"]:
        torch.jit.load(artifact_dir / manifest["attempt"] / entry["path"])


def verified_graph_load(artifact_dir: Path) -> None:
    """What load_generator does per graph: verified local copy, then torch.jit.load from it."""
    with tempfile.TemporaryDirectory() as local:
        manifest = copy_verified(artifact_dir, Path(local))
        for entry in manifest["files"]:
            CpuBackend().load_graph(TORCHSCRIPT, [Path(local, entry["path"])])


class _Weights(nn.Module):
    def __init__(self, megabytes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(megabytes * (1 << 20) // 4), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[0]


def publish_synthetic_graphs(root: Path, total_mb: int, count: int = 4) -> Path:
    staged = root / "staged"
    staged.mkdir()
    for index in range(count):
        graph = torch.jit.trace(_Weights(total_mb // count), (torch.ones(1),))
        torch.jit.save(graph, staged / f"graph_{index}.pt")
    artifact_dir = root / "synthetic"
    publish(staged, artifact_dir, {"key": {"model": "synthetic-graphs"}, "timings": {}})
    return artifact_dir


def compare(name: str, artifact_dir: Path, rounds: int, loads: dict) -> None:
    raw_seconds, timings = [], {label: [] for label in loads}
    for _ in range(rounds):
        size, seconds = raw_read(artifact_dir)
        raw_seconds.append(seconds)
        for label, load in loads.items():
            timings[label].append(timed(lambda: load(artifact_dir)))
    raw = statistics.median(raw_seconds)
    megabytes = size / 1e6
    print(f"{name}: {megabytes:.1f} MB, raw sequential read {raw:.4f} s ({megabytes / raw:.0f} MB/s)")
    for label, values in timings.items():
        seconds = statistics.median(values)
        print(f"  {label}: {seconds:.4f} s ({megabytes / seconds:.0f} MB/s), {seconds / raw:.2f}x the raw read")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, help="a published artifact directory to load")
    parser.add_argument("--synthetic-mb", type=int, default=512, help="total size of the synthetic graphs")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-artifact-load-") as work:
        artifact_dir = args.artifact or ensure_compiled(
            CompileOptions(model="tiny", revision=None, shape=Shape(256, 144), dtype="bfloat16", max_text_length=64),
            Path(work),
        )
        compare(str(artifact_dir.name), artifact_dir, args.rounds, {"load_generator": load_generator})
        synthetic = publish_synthetic_graphs(Path(work), args.synthetic_mb)
        compare(
            f"synthetic graphs ({args.synthetic_mb} MB)",
            synthetic,
            args.rounds,
            {
                "verified copy": verified_copy,
                "unverified torch.jit.load(path)": unverified_graph_load,
                "verified copy + torch.jit.load": verified_graph_load,
            },
        )


if __name__ == "__main__":
    main()
