"""Cold start's storage part: the verified load serving runs against a raw read of the same bytes.

    python -m bench.cold_start --size-gb 2                  # synthetic FLUX.1-dev-shaped artifact, 2 GB
    python -m bench.cold_start --size-gb 34 --local DIR     # the real size: 2 x 34 GB of disk, 34 GB in DIR

It builds a synthetic weights artifact, the part of what a serving pod reads that carries the bytes
(a shape's graphs hold no weights), with the real layout: text_encoder/ and vae_decoder/ one file
each, text_encoder_2/ and transformer/ one per tensor-parallel rank, their sizes in FLUX.1-dev's
proportions (infra.cold_start.FLUX_DEV_GRAPH_GB), and weights.json, published by
model.artifacts.publish (so the manifest holds the real hashes). The files are random bytes, so
they are *not* deserialized: what is timed is model.artifacts.copy_verified, the step
load_generator runs before handing the backend its local copies (the backend then reads them from
memory). Each round alternates:

- raw read: every file of the manifest read sequentially into one reused buffer, nothing
  checked and nothing written: the floor of any load of these bytes;
- verified load: copy_verified into a fresh directory under --local (size + XXH3-128 of every
  byte, several files at once), then deleted. The default, /dev/shm, is memory-backed like
  the serving pod's local-artifact volume (infra/pods.py).

Before each measurement the page cache is dropped (``/proc/sys/vm/drop_caches``, root
only), so both read from the disk; without that right both read from memory, and the output
says so. Wall-clock medians over --rounds are compared, each side's CPU time (all threads)
printed beside it, since hashing competes with whatever else runs on the machine; the last
line holds ``ratio R`` (verified load / raw read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from infra.cold_start import FLUX_DEV_GRAPH_GB
from model.artifacts import copy_verified, default_readers, publish, read_manifest
from model.backends import WEIGHTS_FILE
from model.components import TENSOR_PARALLEL_COMPONENTS, WEIGHTS_CONFIG_NAME

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
# Memory-backed, as the serving pod's local copy is.
DEFAULT_LOCAL = Path("/dev/shm")
_CHUNK_BYTES = 8 << 20


def _write_random(path: Path, size: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        for start in range(0, size, _CHUNK_BYTES):
            file.write(rng.bytes(min(_CHUNK_BYTES, size - start)))


def stage_synthetic_artifact(staged: Path, size_gb: float, tp_degree: int) -> dict[str, int]:
    """Write the files of a FLUX.1-dev-shaped weights artifact of about ``size_gb`` GB; return bytes per component."""
    rng = np.random.default_rng(0)
    scale = size_gb / sum(FLUX_DEV_GRAPH_GB.values())
    components, sizes = {}, {}
    for component, full_gb in FLUX_DEV_GRAPH_GB.items():
        total = int(full_gb * scale * 1e9)
        ranks = tp_degree if component in TENSOR_PARALLEL_COMPONENTS else 1
        files = [f"{component}/{WEIGHTS_FILE.format(rank=rank)}" for rank in range(ranks)]
        for name in files:
            _write_random(staged / name, total // len(files), rng)
        components[component] = {"files": files}
        sizes[component] = total // len(files) * len(files)
    (staged / WEIGHTS_CONFIG_NAME).write_text(json.dumps({"components": components}, indent=2))
    return sizes


def raw_read(artifact_dir: Path) -> int:
    """Read every file of the manifest sequentially, unchecked; return the bytes read."""
    manifest = read_manifest(artifact_dir)
    buffer = memoryview(bytearray(_CHUNK_BYTES))
    total = 0
    for entry in manifest["files"]:
        with open(artifact_dir / manifest["attempt"] / entry["path"], "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                total += count
    return total


def drop_page_cache() -> bool:
    """Write back dirty pages and drop the clean ones; False if this process may not."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def timed(action) -> tuple[float, float]:
    """Wall-clock seconds and this process's CPU seconds (all threads, user + system) of ``action``."""
    started, cpu_started = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - cpu_started


def measure(artifact_dir: Path, local_root: Path, rounds: int, readers: int):
    """Alternate the two sides ``rounds`` times; return their (wall, cpu) timings and whether all ran cold."""
    raw, verified, cold = [], [], True
    for round_index in range(rounds):
        cold = drop_page_cache() and cold
        raw.append(timed(lambda: raw_read(artifact_dir)))
        local = local_root / f"round-{round_index}"
        cold = drop_page_cache() and cold
        verified.append(timed(lambda: copy_verified(artifact_dir, local, readers)))
        shutil.rmtree(local)
    return raw, verified, cold


def summary(label: str, timings: list[tuple[float, float]], total: int) -> tuple[float, str]:
    wall = statistics.median(seconds for seconds, _ in timings)
    cpu = statistics.median(cpu for _, cpu in timings)
    rounds = ", ".join(f"{seconds:.3f}" for seconds, _ in timings)
    return wall, f"{label:27s} {wall:7.3f} s  {total / 1e9 / wall:6.2f} GB/s  CPU {cpu:6.3f} s  (rounds: {rounds})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="total size of the synthetic artifact")
    parser.add_argument("--tp-degree", type=int, default=8, help="ranks of text_encoder_2/ and transformer/")
    parser.add_argument("--readers", type=int, default=None, help="concurrent file reads (default: as serving)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="directory for the artifact (default: TMPDIR)")
    parser.add_argument("--local", type=Path, default=DEFAULT_LOCAL if DEFAULT_LOCAL.is_dir() else None,
                        help="where the verified copies go (default: /dev/shm, memory-backed like the pod's)")
    args = parser.parse_args(argv)
    if args.size_gb <= 0:
        parser.error(f"--size-gb {args.size_gb:g}: must be more than 0")
    for flag, value in (("--tp-degree", args.tp_degree), ("--rounds", args.rounds), ("--readers", args.readers)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be at least 1")
    readers = args.readers or default_readers()
    with (tempfile.TemporaryDirectory(prefix="bench-cold-start-", dir=args.work) as work,
          tempfile.TemporaryDirectory(prefix="bench-cold-start-copies-", dir=args.local) as local):
        staged, artifact_dir = Path(work, "staged"), Path(work, "artifact")
        sizes = stage_synthetic_artifact(staged, args.size_gb, args.tp_degree)
        publish(staged, artifact_dir, {"key": {"model": "synthetic-flux-dev-layout"}, "timings": {}})
        shutil.rmtree(staged)
        manifest = read_manifest(artifact_dir)
        total = sum(entry["size"] for entry in manifest["files"])
        print(f"artifact: {len(manifest['files'])} files, {total / 1e9:.2f} GB, TP {args.tp_degree}: "
              + ", ".join(f"{component} {size / 1e9:.3f} GB" for component, size in sizes.items()))
        print("weight files are random bytes: timed is the verified read serving runs (copy_verified), "
              "not their deserialization")
        print(f"verified copies under {Path(local).parent}; {os.cpu_count()} cores, load average "
              + " ".join(f"{load:.1f}" for load in os.getloadavg()) + " (other processes slow the hashing)")
        raw_timings, verified_timings, cold = measure(artifact_dir, Path(local), args.rounds, readers)
    cache = ("page cache dropped before each measurement: both read from the disk" if cold else
             f"could not write {DROP_CACHES}: both read from the page cache (warm), the ratio is the CPU cost")
    print(cache)
    raw, raw_line = summary("raw sequential read:", raw_timings, total)
    verified, verified_line = summary(f"verified load, {readers} readers:", verified_timings, total)
    print(raw_line)
    print(verified_line)
    print(f"{args.size_gb:g} GB, {'cold' if cold else 'warm'}: verified load / raw read ratio {verified / raw:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
