"""Run a function in N tensor-parallel processes on the real neuronx-distributed, on CPU.

NxD's own CPU mode (``NXD_CPU_MODE=1``) builds its process groups with gloo and runs its
collectives through ``torch.distributed``, so its parallel layers, ``parallel_state`` and
``shard_checkpoint`` run here unchanged, from the vendored source (commit ``NXD_COMMIT``). The
closed modules they import stand in as tests/model/neuron_standins.py describes; in CPU mode
none of them computes anything. Recipe: ../shared/reference/neuron-flux-apis.md, section 6.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing

from tests.model import neuron_standins

REPO = Path(__file__).resolve().parents[2]
NXD_REPOSITORY = "github.com/aws-neuron/neuronx-distributed"
NXD_COMMIT = "fbac349b61a3adbb123c2983835af692840ff62f"
# Where .ci/run points the tests; by default the vendored copy beside the repository.
NXD_SOURCE_ENV = "NXD_SOURCE"
DEFAULT_NXD_SOURCE = REPO.parent / "shared" / "vendor" / "neuronx-distributed" / "src"


def nxd_source() -> Path:
    """The folder holding ``neuronx_distributed/parallel_layers``; raises (the tests fail) when it is missing."""
    source = Path(os.environ.get(NXD_SOURCE_ENV, DEFAULT_NXD_SOURCE))
    if not (source / "neuronx_distributed" / "parallel_layers" / "layers.py").is_file():
        raise FileNotFoundError(
            f"{NXD_SOURCE_ENV}={source} does not hold neuronx_distributed/parallel_layers: the tensor-parallel tests "
            f"need neuronx-distributed's source, from {NXD_REPOSITORY} at commit {NXD_COMMIT} (its src/ folder)"
        )
    return source


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, tp_degree: int, port: int, source: str, function: Callable, args: tuple, out: str) -> None:
    os.environ.update(
        NXD_CPU_MODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(tp_degree),
        # The platform NxD lays its groups out for (with as many ranks as the degree, any gives the same).
        **{neuron_standins.PLATFORM_TARGET_OVERRIDE: "trn1"},
    )
    neuron_standins.install(Path(source), tp_degree)
    from neuronx_distributed.parallel_layers import parallel_state

    torch.distributed.init_process_group("gloo", rank=rank, world_size=tp_degree)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp_degree)
        torch.save(function(*args), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_tensor_parallel(tp_degree: int, function: Callable, *args: Any) -> list[Any]:
    """``function(*args)`` in each of ``tp_degree`` gloo workers with NxD's parallel state initialised.

    ``function`` must be importable by name (module level in an importable module) and its
    result torch.save-able; returns the results by rank.
    """
    source = nxd_source()
    with tempfile.TemporaryDirectory(prefix="nxd-cpu-") as out:
        torch.multiprocessing.spawn(
            _worker, args=(tp_degree, _free_port(), str(source), function, args, out), nprocs=tp_degree, join=True
        )
        return [torch.load(Path(out) / f"rank{rank}.pt", weights_only=False) for rank in range(tp_degree)]
