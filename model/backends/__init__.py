"""Compile backends behind one protocol: each turns a component into graph files without weights, cuts
its weights into one file per tensor-parallel rank, and loads the two back as one callable.

- ``cpu`` (model/backends/cpu.py): torch.jit on this machine, the weights as graph inputs. It runs the
  tests and the local mode on the same artifact layout as the Neuron backends.
- ``neuron`` (model/backends/neuron.py): neuronx-distributed's ModelBuilder for trn1, trn1n and inf2: one
  SPMD trace and one neuronx-cc compile per graph for every rank, the weights sharded by ``shard_checkpoint``.
- ``neuron`` on trn2 (model/backends/nxdi.py): NxD Inference's own Flux application, each component compiled
  and its weights presharded by its NxD Inference application class.

The artifact layout around them (keys, manifests, the verified read) is model/artifacts.py's and
model/build.py's, the same for every backend. Neuron packages are imported only by the neuron backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from common.neuron import flux_world_size
from common.shapes import Shape
from model.components import GraphSpec
from model.keys import CPU, NEURON, NXDI, CompileError, implementation

Graph = Callable[..., torch.Tensor]
# One file per tensor-parallel rank, in neuronx-distributed's shard_checkpoint naming.
WEIGHTS_FILE = "tp{rank}_sharded_checkpoint.safetensors"


class BackendUnavailable(CompileError):
    """The chosen backend cannot run in this environment."""


@dataclass(frozen=True)
class NxdiSettings:
    """What NxD Inference's Flux application builds its modules from: a diffusers snapshot on disk (configs for
    the graphs, weights for the weights), one image shape (any, for the weights) and dtype, and the degrees
    it splits the backbone by on top of tensor parallelism."""

    model_dir: Path
    shape: Shape | None
    dtype: str
    context_parallel: int = 1
    cfg_parallel: int = 1


@dataclass(frozen=True)
class CompileSettings:
    """How a component is compiled: where its graph runs and with how many host CPUs."""

    target: str | None
    tp_degree: int
    # The pod's CPU limit: torch's and the compiler's threads (None: this process's cores).
    cpus: int | None = None
    # Set for the nxdi implementation only.
    nxdi: NxdiSettings | None = None


class Backend(Protocol):
    name: str

    def compile_graph(self, spec: GraphSpec, destination: Path, workdir: Path, settings: CompileSettings) -> dict:
        """Trace and compile `spec`'s module, built without weights, into files under `destination`
        (compiler scratch under `workdir`). Returns the layout of the weights the graph takes on each of its
        ranks (model.components.weights_layout)."""

    def shard_weights(self, spec: GraphSpec, destination: Path, settings: CompileSettings,
                      on_rank_written: Callable[[int], None]) -> tuple[list[str], dict]:
        """Write `spec`'s weights, one WEIGHTS_FILE per rank its graph runs on, under `destination`, calling
        `on_rank_written(rank)` after each. Returns the files' names by rank and their layout (the same on
        every rank)."""

    def load_graph(self, graph_dir: Path, weight_files: list[Path]) -> Graph:
        """A component's graph from its (verified, local) files, bound to its weights: one file per rank, in
        rank order."""


def ranks(spec: GraphSpec, settings: CompileSettings) -> int:
    """How many ranks a component's graph runs on: the tensor-parallel degree, or one. NxD Inference runs
    every component on every rank of its world (T5 sharded over them, CLIP and the VAE decoder replicated)."""
    if settings.nxdi is not None:
        return flux_world_size(settings.tp_degree, settings.nxdi.context_parallel, settings.nxdi.cfg_parallel)
    return settings.tp_degree if spec.tensor_parallel else 1


def get_backend(name: str, target: str | None = None, compiling: bool = False) -> Backend:
    """The backend of `name`; a neuron backend `compiling` for `target` needs no Neuron device."""
    if name == CPU:
        from model.backends.cpu import CpuBackend

        return CpuBackend()
    if name == NEURON and implementation(name, target) == NXDI:
        from model.backends.nxdi import NxdiBackend

        return NxdiBackend(target, compiling)
    if name == NEURON:
        from model.backends.neuron import ModelBuilderBackend

        return ModelBuilderBackend(target, compiling)
    raise ValueError(f"unknown backend {name!r}: expected one of {CPU}, {NEURON}")
