"""The neuron backend's call contract, against fake torch_neuronx / neuronx_distributed / neuronxcc modules.

This is the most that can be checked without Neuron hardware and the Neuron SDK: that the
backend imports the SDK lazily and fails clearly without it, calls the documented APIs
with the documented argument conventions (keyword-only after the example inputs,
``--target`` from the options, ``tp_degree``), passes parallel_model_trace a picklable
worker function whose sharded weights add up to the original ones, publishes the files
the SDK writes, and hands parallel_model_load a directory of exactly the verified rank
files. Whether neuronx-cc compiles these graphs, and how fast they run, is only known on
a trn1/inf2 instance.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infra.versions import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from model.artifacts import read_manifest
from model.backends import BackendUnavailable, get_backend
from model.compile import CompileOptions, ensure_compiled, resolve_artifact_dir
from model.components import (
    COMPONENTS,
    PIPELINE_CONFIG_NAME,
    ClipPooledEmbedding,
    FixedShapeTransformer,
    T5Embedding,
    VaeDecoder,
    build_graph_module,
)
from model.runtime import load_generator
from model.shapes import Shape
from model.sources import TinySource

TP_DEGREE = 2
OPTIONS = CompileOptions(
    model="tiny",
    revision=None,
    shape=Shape(64, 64),
    dtype="bfloat16",
    backend="neuron",
    tp_degree=TP_DEGREE,
    max_text_length=8,
    target="trn1",
)
VERSIONS = {"torch-neuronx": "2.9.0.2.15.32035", "neuronx-distributed": "0.19.28492", "neuronx-cc": "2.26.6360.0"}


class FakeNeuronSdk:
    """Records every call; traces with torch.jit so the rest of the flow runs for real."""

    def __init__(self):
        self.traces: list[dict] = []
        self.parallel_traces: list[dict] = []
        self.parallel_loads: list[dict] = []
        self.rank = 0
        self.modules = self._modules()

    def _modules(self) -> dict[str, types.ModuleType]:
        sdk = self

        def trace(func, example_inputs, *, compiler_workdir=None, compiler_args=None, input_output_aliases=None,
                  partitioner_config=None, inline_weights_to_neff=True, cpu_backend=False):  # fmt: skip
            sdk.traces.append({"module": func, "compiler_args": compiler_args, "compiler_workdir": compiler_workdir})
            return torch.jit.trace(func, example_inputs, check_trace=False)

        def parallel_model_trace(func, example_inputs, *, states=None, compiler_workdir=None, compiler_args=None,
                                 inline_weights_to_neff=True, bucket_config=None, tp_degree=1,
                                 max_parallel_compilations=None):  # fmt: skip
            # The real one runs func in tp_degree spawned worker processes: it must pickle.
            pickle.dumps(func)
            ranks = []
            for rank in range(tp_degree):
                sdk.rank = rank  # what parallel_state reports inside the worker
                model, aliases = func()
                ranks.append((model, torch.jit.trace(model, example_inputs, check_trace=False)))
            sdk.parallel_traces.append(
                {
                    "ranks": [model for model, _ in ranks],
                    "tp_degree": tp_degree,
                    "aliases": aliases,
                    "compiler_args": compiler_args,
                    "compiler_workdir": compiler_workdir,
                }
            )
            return [traced for _, traced in ranks]

        def parallel_model_save(model, save_dir):
            for rank, traced in enumerate(model):
                torch.jit.save(traced, os.path.join(save_dir, f"tp_{rank}.pt"))

        def parallel_model_load(load_dir):
            sdk.parallel_loads.append({"directory": Path(load_dir), "files": sorted(os.listdir(load_dir))})
            return torch.jit.load(os.path.join(load_dir, "tp_0.pt"))  # the real one returns rank 0's output

        class ColumnParallelLinear(nn.Module):
            """This rank's rows; the other ranks' rows of the all-gather come back as zeros here."""

            def __init__(self, input_size, output_size, bias=True, gather_output=True, dtype=torch.float32):
                super().__init__()
                self.output_size, self.gather_output = output_size, gather_output
                rows = output_size // TP_DEGREE
                self.weight = nn.Parameter(torch.empty(rows, input_size, dtype=dtype))
                self.bias = nn.Parameter(torch.empty(rows, dtype=dtype)) if bias else None

            def forward(self, x):
                local = F.linear(x, self.weight, self.bias)
                return F.pad(local, (0, self.output_size - local.shape[-1]))

        parallel_state = types.SimpleNamespace(
            get_tensor_model_parallel_rank=lambda: sdk.rank, get_tensor_model_parallel_size=lambda: TP_DEGREE
        )
        nxd_trace = types.SimpleNamespace(
            parallel_model_trace=parallel_model_trace,
            parallel_model_save=parallel_model_save,
            parallel_model_load=parallel_model_load,
        )
        parallel_layers = types.SimpleNamespace(
            ColumnParallelLinear=ColumnParallelLinear, parallel_state=parallel_state
        )
        return {
            "torch_neuronx": types.SimpleNamespace(__version__=VERSIONS["torch-neuronx"], trace=trace),
            "neuronxcc": types.SimpleNamespace(__version__=VERSIONS["neuronx-cc"]),
            # `import a.b` also binds b as an attribute of a.
            "neuronx_distributed": types.SimpleNamespace(
                __version__=VERSIONS["neuronx-distributed"], trace=nxd_trace, parallel_layers=parallel_layers
            ),
            "neuronx_distributed.trace": nxd_trace,
            "neuronx_distributed.parallel_layers": parallel_layers,
        }


@pytest.fixture(scope="module")
def neuron(tmp_path_factory: pytest.TempPathFactory):
    """The fake SDK installed, and the tiny model compiled and published with the neuron backend."""
    sdk = FakeNeuronSdk()
    out, scratch = tmp_path_factory.mktemp("neuron-out"), tmp_path_factory.mktemp("neuron-scratch")
    with pytest.MonkeyPatch.context() as patch:
        for name, module in sdk.modules.items():
            patch.setitem(sys.modules, name, module)
        artifact_dir = ensure_compiled(OPTIONS, out, scratch)
        yield types.SimpleNamespace(sdk=sdk, artifact_dir=artifact_dir, out=out, scratch=scratch)


def _flag(compiler_args: list[str], flag: str) -> str:
    return compiler_args[compiler_args.index(flag) + 1]


def test_single_core_components_go_through_torch_neuronx_trace(neuron) -> None:
    traced = {type(call["module"]): call for call in neuron.sdk.traces}
    assert set(traced) == {ClipPooledEmbedding, VaeDecoder}
    for module_type, model_type in ((ClipPooledEmbedding, "transformer"), (VaeDecoder, "unet-inference")):
        args = traced[module_type]["compiler_args"]
        assert _flag(args, "--target") == "trn1"
        assert _flag(args, "--model-type") == model_type
        assert Path(traced[module_type]["compiler_workdir"]).is_relative_to(neuron.scratch)


def test_t5_and_transformer_go_through_parallel_model_trace_with_the_tp_degree(neuron) -> None:
    calls = {type(call["ranks"][0]): call for call in neuron.sdk.parallel_traces}
    assert set(calls) == {T5Embedding, FixedShapeTransformer}
    for call in calls.values():
        assert call["tp_degree"] == TP_DEGREE
        assert len(call["ranks"]) == TP_DEGREE
        assert call["aliases"] == {}
        assert _flag(call["compiler_args"], "--target") == "trn1"
        assert Path(call["compiler_workdir"]).is_relative_to(neuron.scratch)
    assert _flag(calls[FixedShapeTransformer]["compiler_args"], "--model-type") == "unet-inference"


@pytest.mark.parametrize("component", ["text_encoder_2", "transformer"])
def test_rank_shards_add_up_to_the_original_weights(neuron, component: str) -> None:
    original = build_graph_module(TinySource(), component, torch.bfloat16, OPTIONS.shape, OPTIONS.max_text_length)
    call = next(call for call in neuron.sdk.parallel_traces if type(call["ranks"][0]) is type(original))
    linears = {name: layer for name, layer in original.named_modules() if isinstance(layer, nn.Linear)}
    assert linears
    ranks = [dict(rank.named_modules()) for rank in call["ranks"]]
    indivisible = {name for name, layer in linears.items() if layer.out_features % TP_DEGREE}
    assert len(indivisible) < len(linears)  # tiny T5's feed-forward (37 wide) has indivisible layers
    for name, layer in linears.items():
        shards = [modules[name] for modules in ranks]
        if name in indivisible:  # kept whole on every rank
            assert all(isinstance(shard, nn.Linear) and torch.equal(shard.weight, layer.weight) for shard in shards)
            continue
        assert all(not isinstance(shard, nn.Linear) for shard in shards), f"{name} was not sharded"
        assert torch.equal(torch.cat([shard.weight for shard in shards]), layer.weight)
        if layer.bias is not None:
            assert torch.equal(torch.cat([shard.bias for shard in shards]), layer.bias)


def test_published_neuron_artifact_records_layouts_and_versions(neuron) -> None:
    manifest = read_manifest(neuron.artifact_dir)
    assert manifest["key"]["backend"] == "neuron"
    assert (manifest["key"]["target"], manifest["key"]["tp_degree"]) == ("trn1", TP_DEGREE)
    assert VERSIONS.items() <= manifest["key"]["toolchain"].items()
    assert manifest["versions"]["neuron_sdk"] == NEURON_SDK_VERSION
    assert "-neuron-trn1-tp2-" in neuron.artifact_dir.name
    graphs = json.loads((neuron.artifact_dir / manifest["attempt"] / PIPELINE_CONFIG_NAME).read_text())["graphs"]
    assert set(graphs) == set(COMPONENTS)
    ranks = [f"tp_{rank}.pt" for rank in range(TP_DEGREE)]
    assert graphs["text_encoder"] == {"layout": "torchscript", "files": ["text_encoder/model.pt"]}
    assert graphs["vae_decoder"] == {"layout": "torchscript", "files": ["vae_decoder/model.pt"]}
    for component in ("text_encoder_2", "transformer"):
        assert graphs[component] == {"layout": "tensor_parallel", "files": [f"{component}/{r}" for r in ranks]}
    assert not any(path.is_relative_to(neuron.out) for path in neuron.scratch.rglob("*")), "scratch stays apart"


def test_runtime_loads_rank_files_from_a_private_verified_copy(neuron) -> None:
    generator = load_generator(neuron.artifact_dir)
    assert [load["files"] for load in neuron.sdk.parallel_loads] == [["tp_0.pt", "tp_1.pt"]] * 2
    for load in neuron.sdk.parallel_loads:
        assert not load["directory"].is_relative_to(neuron.artifact_dir)
    # Values are meaningless with the fake all-gather; the plumbing and shapes are not.
    assert generator.generate("a cat", 1, 3.5, seed=0).size == (64, 64)


def test_without_the_neuron_sdk_the_neuron_backend_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    # None in sys.modules makes `import torch_neuronx` raise ImportError, as when the SDK
    # is absent or PyPI's placeholder package is installed.
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)
    for attempt in (
        lambda: get_backend("neuron"),
        lambda: resolve_artifact_dir(OPTIONS, tmp_path),
        lambda: ensure_compiled(OPTIONS, tmp_path),
    ):
        with pytest.raises(BackendUnavailable, match=f"Neuron SDK {NEURON_SDK_VERSION}.*{NEURON_DLC_IMAGE}"):
            attempt()
    assert list(tmp_path.iterdir()) == []
