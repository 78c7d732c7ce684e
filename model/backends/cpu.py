"""The cpu backend: torch.jit traces of each component with its weights as graph inputs.

A traced module would carry its parameters inside the graph; tracing a function that runs the module with
the traced inputs standing in for its parameters and buffers makes every weight an input instead, so the
graph files hold no weight and the weights come from the weights artifact, as on Neuron. TP degree 1 only.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.artifacts import ArtifactError
from model.backends import WEIGHTS_FILE, CompileSettings, Graph
from model.components import GraphSpec, graph_weights, weights_layout

GRAPH_FILE = "model.pt"
# The order of the weights after the inputs, kept in the graph file.
WEIGHT_NAMES_FILE = "weight_names.json"


@contextmanager
def _weights_replaced(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """The module's parameters and buffers of these names are these tensors until the block ends.
    (torch.func.functional_call does this too, but refuses to run while tracing.)"""
    replaced = []
    for name, tensor in weights.items():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        table = owner._parameters if attribute in owner._parameters else owner._buffers
        replaced.append((table, attribute, table[attribute]))
        table[attribute] = tensor
    try:
        yield
    finally:
        for table, attribute, original in replaced:
            table[attribute] = original


class CpuBackend:
    name = "cpu"

    def compile_graph(self, spec: GraphSpec, destination: Path, workdir: Path, settings: CompileSettings) -> dict:
        module = spec.build(False)
        state = graph_weights(module)
        names = list(state)

        def with_weights_as_inputs(*inputs_then_weights: torch.Tensor) -> torch.Tensor:
            inputs = inputs_then_weights[: len(spec.example_inputs)]
            with _weights_replaced(module, dict(zip(names, inputs_then_weights[len(spec.example_inputs):]))):
                return module(*inputs)

        # Shapes are static by design, so the tracer's warnings about Python values frozen into the graph
        # (sizes, asserts in diffusers code) are expected; they only add noise.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(with_weights_as_inputs, (*spec.example_inputs, *state.values()),
                                     check_trace=False)
        destination.mkdir(parents=True)
        torch.jit.save(traced, str(destination / GRAPH_FILE), _extra_files={WEIGHT_NAMES_FILE: json.dumps(names)})
        return weights_layout(state)

    def shard_weights(self, spec: GraphSpec, destination: Path, settings: CompileSettings,
                      on_rank_written: Callable[[int], None]) -> tuple[list[str], dict]:
        module = spec.build(True)
        destination.mkdir(parents=True)
        name, state = WEIGHTS_FILE.format(rank=0), graph_weights(module)
        save_file({key: tensor.contiguous() for key, tensor in state.items()}, destination / name)
        on_rank_written(0)
        return [name], weights_layout(state)

    def load_graph(self, graph_dir: Path, weight_files: list[Path]) -> Graph:
        extra = {WEIGHT_NAMES_FILE: ""}
        graph = torch.jit.load(graph_dir / GRAPH_FILE, map_location="cpu", _extra_files=extra)
        (rank_file,) = weight_files
        rank_weights = load_file(rank_file)
        names = json.loads(extra[WEIGHT_NAMES_FILE])
        missing = [name for name in names if name not in rank_weights]
        if missing:
            raise ArtifactError(f"{graph_dir.name}: the weights lack {', '.join(missing[:3])}")
        ordered = [rank_weights[name] for name in names]
        return lambda *inputs: graph(*inputs, *ordered)
