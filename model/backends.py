"""Compile backends: trace a component into graph files, and load those files back.

``cpu`` traces with torch.jit on this machine. ``neuron`` uses the Neuron SDK 2.31.1 APIs
(see docs/model.md): ``torch_neuronx.trace`` for the single-core components and
``neuronx_distributed.trace.parallel_model_trace`` for the tensor-parallel ones, sharded by
``model.tensor_parallel``. Neuron packages are imported only when the neuron backend is
chosen, so everything else runs without them. Each component compiles in a process of its
own (``compile_in_this_process`` is what runs there).
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from functools import partial
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from common.image import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from common.neuron import NEURON_FAMILIES
from model.artifacts import ArtifactError
from model.components import TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER, GraphSpec
from model.tensor_parallel import TENSOR_PARALLEL_COMPONENTS, shard_module

BACKENDS = ("cpu", "neuron")
# neuronx-cc --target takes the family name.
NEURON_TARGETS = NEURON_FAMILIES

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
        self,
        spec: GraphSpec,
        destination: Path,
        workdir: Path,
        target: str | None,
        tp_degree: int,
        max_parallel_compilations: int | None,
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
        return installed_versions(("torch",))

    def compile_graph(
        self,
        spec: GraphSpec,
        destination: Path,
        workdir: Path,
        target: str | None,
        tp_degree: int,
        max_parallel_compilations: int | None,
    ) -> str:
        destination.mkdir(parents=True)
        torch.jit.save(_trace_quietly(spec.build(), spec.example_inputs), destination / "model.pt")
        return TORCHSCRIPT

    def load_graph(self, layout: str, files: list[Path]) -> Graph:
        if layout != TORCHSCRIPT:
            raise ArtifactError(f"the cpu backend cannot load {layout!r} graphs")
        (path,) = files
        return torch.jit.load(path, map_location="cpu")


# neuronx-cc --model-type per component: the walkthrough's unet-inference for the
# transformer and the VAE decoder, transformer for the text encoders.
NEURON_MODEL_TYPES = {
    TEXT_ENCODER: "transformer",
    TEXT_ENCODER_2: "transformer",
    TRANSFORMER: "unet-inference",
    VAE_DECODER: "unet-inference",
}
# The distributions whose code ends up in a neuron graph, as installed where it compiles.
NEURON_TOOLCHAIN = ("torch", "torch-neuronx", "neuronx-distributed", "neuronx-cc")
# The single-core graphs (CLIP, VAE decoder) share the first NeuronCore with rank 0 of the
# tensor-parallel ones: a pod asks for exactly tp_degree cores.
SINGLE_CORE = {"start_nc": 0, "nc_count": 1}
# Toolchain entry for the version string neuronxcc reports (neuronxcc.__version__).
NEURON_COMPILER_REPORTED = "neuronx-cc-reported"


# Set by the Neuron device plugin for a pod (and honoured by the runtime): the cores it may use.
VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"


def visible_neuron_cores(value: str | None) -> int | None:
    """How many cores a NEURON_RT_VISIBLE_CORES value ("3", "0-7", "0,1,4-5") names; None if unset."""
    if not value:
        return None
    count = 0
    for part in value.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def installed_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    """The versions pip installed in this environment (what the compile actually runs), by distribution name."""
    return {name: importlib.metadata.version(name) for name in distributions}


def sharded_worker_model(build: Callable[[], nn.Module], component: str) -> tuple[nn.Module, dict]:
    """parallel_model_trace's contract: a zero-argument callable (with build and component bound)
    run in every tensor-parallel worker, returning (this rank's model, input_output_aliases)."""
    return shard_module(build(), component), {}


class NeuronBackend:
    name = "neuron"

    def __init__(self):
        try:
            import neuronx_distributed.trace
            import neuronxcc
            import torch_neuronx

            # The installed distributions (PackageNotFoundError is an ImportError), plus the
            # version the compiler package reports of itself, which a patched build can change.
            versions = {**installed_versions(NEURON_TOOLCHAIN), NEURON_COMPILER_REPORTED: neuronxcc.__version__}
        except ImportError as error:
            raise BackendUnavailable(
                f"the neuron backend needs the Neuron SDK {NEURON_SDK_VERSION} packages (torch-neuronx, "
                f"neuronx-distributed, neuronx-cc), which are not on PyPI: run it inside {NEURON_DLC_IMAGE} "
                f"({error})"
            ) from None
        self._torch_neuronx = torch_neuronx
        self._neuronx_distributed = neuronx_distributed
        self._versions = versions

    def toolchain_versions(self) -> dict[str, str]:
        return dict(self._versions)

    def compile_graph(
        self,
        spec: GraphSpec,
        destination: Path,
        workdir: Path,
        target: str | None,
        tp_degree: int,
        max_parallel_compilations: int | None,
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
        if spec.component in TENSOR_PARALLEL_COMPONENTS:
            trace = self._neuronx_distributed.trace
            traced = trace.parallel_model_trace(
                partial(sharded_worker_model, spec.build, spec.component),
                spec.example_inputs,
                compiler_workdir=compiler_workdir,
                compiler_args=compiler_args,
                tp_degree=tp_degree,
                # None is NxD's default: all tp_degree ranks trace at once, each holding the whole model.
                max_parallel_compilations=max_parallel_compilations,
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
            # torch_neuronx is imported (in __init__), which registers the neuron:: ops; loading
            # inside the context places the graph on the first visible NeuronCore only.
            (path,) = files
            with self._torch_neuronx.neuron_cores_context(**SINGLE_CORE):
                return torch.jit.load(path)
        if layout != TENSOR_PARALLEL:
            raise ArtifactError(f"the neuron backend cannot load {layout!r} graphs")
        # parallel_model_load takes a directory and loads every file in it: the component's
        # directory of the verified copy holds exactly its rank files. Rank i goes to visible
        # core i (at the first forward), so the ranks take the pod's first tp_degree cores.
        visible = visible_neuron_cores(os.environ.get(VISIBLE_CORES_ENV))
        if visible is not None and visible < len(files):
            raise BackendUnavailable(
                f"{VISIBLE_CORES_ENV}={os.environ[VISIBLE_CORES_ENV]} gives this process {visible} NeuronCores, "
                f"the graph in {files[0].parent.name} has {len(files)} tensor-parallel ranks, one per core: "
                f"request {len(files)} cores"
            )
        (directory,) = {path.parent for path in files}
        return self._neuronx_distributed.trace.parallel_model_load(str(directory))


def compile_in_this_process(
    backend_name: str,
    spec: GraphSpec,
    destination: Path,
    workdir: Path,
    target: str | None,
    tp_degree: int,
    max_parallel_compilations: int | None,
) -> tuple[str, int]:
    """Compile one component; the compile runs this in a fresh process per component.

    A process per component, as the walkthrough's compile.sh does: torch_neuronx.trace
    initialises the XLA runtime, after which torch-xla refuses the xmp.spawn that
    parallel_model_trace needs; and each component's memory goes back to the OS when it ends.
    Returns the layout and this process's id.
    """
    layout = get_backend(backend_name).compile_graph(
        spec, destination, workdir, target, tp_degree, max_parallel_compilations
    )
    return layout, os.getpid()


def get_backend(name: str) -> Backend:
    if name == "cpu":
        return CpuBackend()
    if name == "neuron":
        return NeuronBackend()
    raise ValueError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
