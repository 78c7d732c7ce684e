"""Compile backends: trace a component into graph files, and load those files back.

``cpu`` traces with torch.jit on this machine. ``neuron`` uses the Neuron SDK 2.31.1 APIs
(see docs/model.md): ``torch_neuronx.trace`` for the single-core components and
``neuronx_distributed.trace.parallel_model_trace`` for the tensor-parallel ones. Neuron
packages are imported only when the neuron backend is chosen, so everything else runs
without them.
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from infra.versions import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from model.artifacts import ArtifactError
from model.components import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER, GraphSpec

BACKENDS = ("cpu", "neuron")
NEURON_TARGETS = ("trn1", "trn1n", "trn2", "inf2")

# Graph file layouts recorded in pipeline.json, so loading needs no guessing.
TORCHSCRIPT = "torchscript"  # one model.pt, loaded with torch.jit.load
TENSOR_PARALLEL = "tensor_parallel"  # tp_<rank>.pt files, loaded with neuronx_distributed

Graph = Callable[..., torch.Tensor]


class BackendUnavailable(Exception):
    """The chosen backend cannot run in this environment."""


class Backend(Protocol):
    name: str

    def toolchain_versions(self) -> dict[str, str]: ...

    def compile_graph(
        self, spec: GraphSpec, destination: Path, workdir: Path, target: str | None, tp_degree: int
    ) -> str:
        """Trace ``spec`` into files under ``destination``; return the layout."""

    def load_graph(self, layout: str, files: list[Path]) -> Graph:
        """Load a graph from its files (local, verified copies)."""


def _trace_quietly(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    # Shapes are static by design, so the tracer's warnings about Python values frozen
    # into the graph (sizes, asserts in diffusers code) are expected; they only add noise.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, example_inputs, check_trace=False)


class CpuBackend:
    name = "cpu"

    def toolchain_versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}

    def compile_graph(
        self, spec: GraphSpec, destination: Path, workdir: Path, target: str | None, tp_degree: int
    ) -> str:
        destination.mkdir(parents=True)
        torch.jit.save(_trace_quietly(spec.build(), spec.example_inputs), destination / "model.pt")
        return TORCHSCRIPT

    def load_graph(self, layout: str, files: list[Path]) -> Graph:
        if layout != TORCHSCRIPT:
            raise ArtifactError(f"the cpu backend cannot load {layout!r} graphs")
        (path,) = files
        return torch.jit.load(path, map_location="cpu")


# The components too large for one NeuronCore, sharded across tp_degree cores as the
# walkthrough does; CLIP and the VAE decoder fit on one core.
NEURON_TENSOR_PARALLEL = (TEXT_ENCODER_2, TRANSFORMER)
# neuronx-cc --model-type per component: the walkthrough's unet-inference for the
# transformer and the VAE decoder, transformer for the text encoders.
NEURON_MODEL_TYPES = {
    TEXT_ENCODER: "transformer",
    TEXT_ENCODER_2: "transformer",
    TRANSFORMER: "unet-inference",
    VAE_DECODER: "unet-inference",
}


def shard_linear_layers(module: nn.Module) -> nn.Module:
    """Replace every nn.Linear by a ColumnParallelLinear holding this rank's rows.

    Runs inside each parallel_model_trace worker, where neuronx_distributed's parallel
    state says which rank this is. gather_output=True all-gathers each layer's output,
    so every layer computes exactly what the original did whatever the surrounding
    code does with it (attention head counts, concatenations, norms stay untouched):
    weights and matmuls are split tp_degree ways at the cost of one all-gather per layer.
    """
    from neuronx_distributed.parallel_layers import ColumnParallelLinear, parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_size()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or child.out_features % size:
                continue
            rows = child.out_features // size
            parallel = ColumnParallelLinear(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                gather_output=True,
                dtype=child.weight.dtype,
            )
            parallel.weight.data = child.weight.data[rank * rows : (rank + 1) * rows].clone()
            if child.bias is not None:
                parallel.bias.data = child.bias.data[rank * rows : (rank + 1) * rows].clone()
            setattr(parent, name, parallel)
    return module


def _sharded_worker_model(build: Callable[[], nn.Module]) -> tuple[nn.Module, dict]:
    # parallel_model_trace's contract: a zero-argument callable run in every worker,
    # returning (model, input_output_aliases).
    return shard_linear_layers(build()), {}


class NeuronBackend:
    name = "neuron"

    def __init__(self):
        try:
            import neuronx_distributed.trace
            import neuronxcc
            import torch_neuronx
        except ImportError as error:
            raise BackendUnavailable(
                f"the neuron backend needs the Neuron SDK {NEURON_SDK_VERSION} packages (torch-neuronx, "
                f"neuronx-distributed, neuronx-cc), which are not on PyPI: run it inside {NEURON_DLC_IMAGE} "
                f"({error})"
            ) from None
        self._torch_neuronx = torch_neuronx
        self._neuronx_distributed = neuronx_distributed
        self._versions = {
            "torch": torch.__version__,
            "torch-neuronx": torch_neuronx.__version__,
            "neuronx-distributed": neuronx_distributed.__version__,
            "neuronx-cc": neuronxcc.__version__,
        }

    def toolchain_versions(self) -> dict[str, str]:
        return dict(self._versions)

    def compile_graph(
        self, spec: GraphSpec, destination: Path, workdir: Path, target: str | None, tp_degree: int
    ) -> str:
        compiler_args = [
            "--target",
            target,
            "--model-type",
            NEURON_MODEL_TYPES[spec.component],
            "--enable-fast-loading-neuron-binaries",
        ]
        # The compiler's work directory stays in scratch: it must never reach the artifact.
        compiler_workdir = str(workdir / spec.component)
        destination.mkdir(parents=True)
        if spec.component in NEURON_TENSOR_PARALLEL:
            trace = self._neuronx_distributed.trace
            traced = trace.parallel_model_trace(
                partial(_sharded_worker_model, spec.build),
                spec.example_inputs,
                compiler_workdir=compiler_workdir,
                compiler_args=compiler_args,
                tp_degree=tp_degree,
            )
            trace.parallel_model_save(traced, str(destination))
            return TENSOR_PARALLEL
        traced = self._torch_neuronx.trace(
            spec.build(), spec.example_inputs, compiler_workdir=compiler_workdir, compiler_args=compiler_args
        )
        torch.jit.save(traced, destination / "model.pt")
        return TORCHSCRIPT

    def load_graph(self, layout: str, files: list[Path]) -> Graph:
        if layout == TORCHSCRIPT:
            # torch_neuronx is imported (in __init__), which registers the neuron:: ops.
            (path,) = files
            return torch.jit.load(path)
        if layout != TENSOR_PARALLEL:
            raise ArtifactError(f"the neuron backend cannot load {layout!r} graphs")
        # parallel_model_load takes a directory and loads every file in it: the component's
        # directory of the verified copy holds exactly its rank files.
        (directory,) = {path.parent for path in files}
        return self._neuronx_distributed.trace.parallel_model_load(str(directory))


def get_backend(name: str) -> Backend:
    if name == "cpu":
        return CpuBackend()
    if name == "neuron":
        return NeuronBackend()
    raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
