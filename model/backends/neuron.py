"""The neuron backend for trn1, trn1n and inf2: neuronx-distributed's ModelBuilder, the tracing API of
Neuron SDK 2.31.1 (NxD's per-rank tracing API, one trace and compile per rank, is unsupported since 2.27).

ModelBuilder is SPMD: a component's module is built once, with this rank's structure (model/
tensor_parallel.py) inside NxD's parallel state, traced once and compiled once by neuronx-cc for every
rank. Its weights are never inlined: ``NxDModel.set_weights`` binds them at load, one dict per rank, from
the files ``shard_checkpoint`` cut out of the unsharded checkpoint. Neither the trace (ModelBuilder traces
with ``cpu_backend=True``) nor the compile (``--target``) nor the sharding needs a NeuronCore, so a compile
runs on any x86 host; only loading does.

The single-core components (CLIP, the VAE decoder) go through the same API with a world of one: their NxDModel
loads onto the first NeuronCore, beside rank 0 of the tensor-parallel ones, so a pod asks for exactly its
tensor-parallel degree's cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.image import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from model.artifacts import ArtifactError
from model.backends import WEIGHTS_FILE, BackendUnavailable, CompileSettings, Graph, ranks
from model.components import (
    TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER, GraphSpec, graph_weights, weights_layout,
)
from model.tensor_parallel import shard_module

GRAPH_FILE = "model.pt"
# neuronx-cc --model-type per component: the walkthrough's unet-inference for the transformer and the VAE
# decoder, transformer for the text encoders.
NEURON_MODEL_TYPES = {
    TEXT_ENCODER: "transformer",
    TEXT_ENCODER_2: "transformer",
    TRANSFORMER: "unet-inference",
    VAE_DECODER: "unet-inference",
}
# Logical NeuronCore size: trn2 pairs its physical cores (LNC 2) by default; the others have none to pair.
LOGICAL_CORE_SIZE = {"trn2": 2}
# torch-neuronx's override of the platform it would otherwise read off the instance: what lets a compile run
# where no Neuron device is (documented for Neuron's CPU compilation). neuronx-distributed asks for the
# platform as soon as it is imported, so it is set before that.
PLATFORM_TARGET_OVERRIDE = "NEURON_PLATFORM_TARGET_OVERRIDE"
# Set by the Neuron device plugin for a pod (and honoured by the runtime): the cores it may use.
VISIBLE_CORES_ENV = "NEURON_RT_VISIBLE_CORES"


def compiler_args(component: str, target: str) -> str:
    """neuronx-cc's flags for a component (ModelBuilder appends -O1 and its logging flags)."""
    return " ".join([
        f"--target={target}",
        f"--model-type={NEURON_MODEL_TYPES[component]}",
        # Every graph computes in the dtypes it was traced in: neuronx-cc's default auto-cast would run the
        # matrix multiplies of the float32 VAE decoder (and of a whole float32 compile) in bfloat16.
        "--auto-cast=none",
        "--enable-fast-loading-neuron-binaries",
    ])


def visible_neuron_cores(value: str | None) -> int | None:
    """How many cores a NEURON_RT_VISIBLE_CORES value ("3", "0-7", "0,1,4-5") names; None if unset."""
    if not value:
        return None
    count = 0
    for part in value.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def check_visible_cores(graph_dir: Path, ranks: int) -> None:
    """Refuse a graph of more ranks than the cores the device plugin gave this process, saying how many to ask for."""
    visible = visible_neuron_cores(os.environ.get(VISIBLE_CORES_ENV))
    if visible is not None and visible < ranks:
        raise BackendUnavailable(
            f"{VISIBLE_CORES_ENV}={os.environ[VISIBLE_CORES_ENV]} gives this process {visible} NeuronCores, "
            f"the graph in {graph_dir.name} has {ranks} ranks, one per core: request {ranks} cores"
        )


class ModelBuilderBackend:
    name = "neuron"

    def __init__(self, target: str | None, compiling: bool):
        if compiling:
            os.environ[PLATFORM_TARGET_OVERRIDE] = target
        try:
            import torch_neuronx  # noqa: F401 - registers the neuron:: ops and classes NxDModel loads with
            from neuronx_distributed.trace.functions import shard_checkpoint
            from neuronx_distributed.trace.model_builder_v2 import ModelBuilder
            from neuronx_distributed.trace.nxd_model import NxDModel
            from neuronx_distributed.trace.parallel_context import NxDParallelState
        except ImportError as error:
            raise BackendUnavailable(
                f"the neuron backend needs the Neuron SDK {NEURON_SDK_VERSION} packages (torch-neuronx, "
                f"neuronx-distributed, neuronx-cc), which are not on PyPI: run it inside {NEURON_DLC_IMAGE} "
                f"({error})"
            ) from None
        self._target = target
        self._model_builder = ModelBuilder
        self._nxd_model = NxDModel
        self._parallel_state = NxDParallelState
        self._shard_checkpoint = shard_checkpoint

    def _ranks_of(self, world: int):
        """NxD's parallel state for a graph of `world` tensor-parallel ranks, as ModelBuilder traces it:
        rank 0 of a mocked process group, no collective set up."""
        return self._parallel_state(world_size=world, tensor_model_parallel_size=world,
                                    lnc_size=LOGICAL_CORE_SIZE.get(self._target, 1))

    def compile_graph(self, spec: GraphSpec, destination: Path, workdir: Path, settings: CompileSettings) -> dict:
        world = ranks(spec, settings)
        with self._ranks_of(world):
            module = spec.build(False)
            if spec.tensor_parallel:
                shard_module(module, spec.component)
            graph = (self._model_builder(module)
                     .trace(args=spec.example_inputs, tag=spec.component)
                     .compile(compiler_workdir=str(workdir / spec.component),
                              compiler_args=compiler_args(spec.component, settings.target)))
            layout = weights_layout(graph_weights(module))
        destination.mkdir(parents=True)
        graph.save(str(destination / GRAPH_FILE))
        return layout

    def shard_weights(self, spec: GraphSpec, destination: Path, settings: CompileSettings,
                      on_rank_written: Callable[[int], None]) -> tuple[list[str], dict]:
        world = ranks(spec, settings)
        files = []
        with self._ranks_of(world):
            module = spec.build(True)
            # The unsharded weights, by the names the graph takes them under; the module keeps only its structure.
            checkpoint = dict(module.state_dict())
            if spec.tensor_parallel:
                shard_module(module, spec.component)
            layout = weights_layout(graph_weights(module))
            for rank in range(world):
                # One rank at a time: only the whole checkpoint and one rank's shard are in memory at once.
                (shard,) = self._shard_checkpoint(checkpoint, module, start_rank=rank, end_rank=rank,
                                                  serialize_path=str(destination))
                if weights_layout(shard) != layout:
                    raise ArtifactError(f"{spec.component} rank {rank}: the sharded weights do not match the graph's")
                files.append(WEIGHTS_FILE.format(rank=rank))
                on_rank_written(rank)
        return files, layout

    def load_graph(self, graph_dir: Path, weight_files: list[Path]) -> Graph:
        check_visible_cores(graph_dir, len(weight_files))
        graph = self._nxd_model.load(str(graph_dir / GRAPH_FILE))
        if not isinstance(graph, self._nxd_model):
            raise ArtifactError(f"{graph_dir.name}: {GRAPH_FILE} does not restore as an NxDModel with this "
                                f"neuronx-distributed (compiled by another version?)")
        # Rank i's weights go to rank i; the runtime places rank i on the i-th visible core.
        graph.set_weights([load_file(path) for path in weight_files])
        graph.to_neuron()
        return graph

