"""Run a function in N processes on the real neuronx-distributed, on CPU.

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


def vendored_source(env: str, default: Path, module: str, repository: str, commit: str) -> Path:
    """The source folder `env` names (else `default`), holding `module`; raises (the tests fail) when it does not."""
    source = Path(os.environ.get(env, default))
    if not (source / module).is_file():
        raise FileNotFoundError(
            f"{env}={source} does not hold {module}: the tests need the source of {repository} at commit {commit} "
            f"(its src/ folder)"
        )
    return source


def nxd_source() -> Path:
    """The folder holding ``neuronx_distributed/parallel_layers``."""
    return vendored_source(NXD_SOURCE_ENV, DEFAULT_NXD_SOURCE, "neuronx_distributed/parallel_layers/layers.py",
                           NXD_REPOSITORY, NXD_COMMIT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, source: str, platform: str, tensor_parallel: bool,
            function: Callable, args: tuple, out: str) -> None:
    os.environ.update(
        NXD_CPU_MODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        **{neuron_standins.PLATFORM_TARGET_OVERRIDE: platform},
    )
    neuron_standins.install(Path(source), world_size)
    from neuronx_distributed.parallel_layers import parallel_state

    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        if tensor_parallel:
            parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)
        torch.save(function(*args), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def run_in_world(world_size: int, function: Callable, *args: Any, platform: str = "trn1",
                 tensor_parallel: bool = True) -> list[Any]:
    """``function(*args)`` in each of ``world_size`` gloo workers, NxD laying its groups out for ``platform``
    and, with ``tensor_parallel``, its parallel state initialised as one tensor-parallel group of them all
    (without it, ``function`` sets it up itself).

    ``function`` must be importable by name (module level in an importable module) and its
    result torch.save-able; returns the results by rank.
    """
    source = nxd_source()
    with tempfile.TemporaryDirectory(prefix="nxd-cpu-") as out:
        torch.multiprocessing.spawn(
            _worker, args=(world_size, _free_port(), str(source), platform, tensor_parallel, function, args, out),
            nprocs=world_size, join=True,
        )
        return [torch.load(Path(out) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def run_tensor_parallel(tp_degree: int, function: Callable, *args: Any) -> list[Any]:
    """``function(*args)`` in each of ``tp_degree`` tensor-parallel workers (with as many ranks as the degree,
    NxD's group layout is the same on every platform)."""
    return run_in_world(tp_degree, function, *args)
