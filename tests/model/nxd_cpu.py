"""Run a function in N tensor-parallel processes on the real neuronx-distributed parallel layers, on CPU.

NxD's own CPU mode (``NXD_CPU_MODE=1``) builds its process groups with gloo and runs its
collectives through ``torch.distributed``, so ``ColumnParallelLinear``, ``RowParallelLinear``
and ``parallel_state`` run here unchanged, from the vendored source (commit ``NXD_COMMIT``).
Only modules they import unconditionally that cannot exist off Neuron get small stand-ins:
``torch_xla``, ``torch_neuronx`` and ``neuronxcc`` (constants and rank queries, no computation).
Recipe: ../shared/reference/neuron-flux-apis.md (beside the clone), section 6.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Callable

import torch
import torch.multiprocessing

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


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class _ContextParallelPairs:
    """neuronxcc's CollectivesConfig as parallel_state uses it: ring-attention partners, read but unused at CP 1."""

    def __init__(self, replica_groups: list[list[int]]):
        self.rank_src_tgt_pairs = {rank: [] for group in replica_groups for rank in group}


def _install_import_time_standins(tp_degree: int) -> None:
    """What NxD's parallel layers import at module level and never call in CPU mode for inference."""
    xla_model = _module(
        "torch_xla.core.xla_model",
        REDUCE_SUM="sum",
        REDUCE_MAX="max",
        REDUCE_MIN="min",
        xla_device=lambda: torch.device("cpu"),
        mark_step=lambda: None,
    )
    env_vars = _module("torch_xla.core.xla_env_vars", HOST_WORLD_SIZE="HOST_WORLD_SIZE")
    runtime = _module(
        "torch_xla.runtime",
        global_ordinal=torch.distributed.get_rank,
        world_size=lambda: tp_degree,
        local_process_count=lambda: tp_degree,
    )
    serialization = _module("torch_xla.utils.serialization")
    _module("torch_xla.utils", serialization=serialization)
    _module("torch_xla.core", xla_model=xla_model, xla_env_vars=env_vars)
    _module("torch_xla", core=sys.modules["torch_xla.core"], runtime=runtime, utils=sys.modules["torch_xla.utils"])
    _module("torch_neuronx.utils", get_platform_target=lambda: "trn1")
    _module("torch_neuronx", utils=sys.modules["torch_neuronx.utils"])
    collectives = _module("neuronxcc.nki._private_kernels.collectives", CollectivesConfig=_ContextParallelPairs)
    _module("neuronxcc.nki._private_kernels", collectives=collectives)
    _module("neuronxcc.nki", _private_kernels=sys.modules["neuronxcc.nki._private_kernels"])
    _module("neuronxcc", nki=sys.modules["neuronxcc.nki"])


def _import_parallel_layers(source: Path) -> None:
    # neuronx_distributed/__init__.py imports compiler kernels (neuronxcc.nki): a bare package
    # module whose __path__ is the source folder makes its subpackages importable without it.
    _module("neuronx_distributed", __path__=[str(source / "neuronx_distributed")])
    import neuronx_distributed.parallel_layers  # noqa: F401 - registers the real layers


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, tp_degree: int, port: int, source: str, function: Callable, args: tuple, out: str) -> None:
    os.environ.update(
        NXD_CPU_MODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(tp_degree)
    )
    # diffusers and transformers are already imported (unpickling `function` imported its module):
    # transformers probes for torch_xla and must not see the stand-ins.
    import diffusers  # noqa: F401
    import transformers  # noqa: F401

    _install_import_time_standins(tp_degree)
    _import_parallel_layers(Path(source))
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
