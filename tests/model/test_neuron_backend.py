"""The neuron backend on the real neuronx-distributed: ModelBuilder's trace and compile, NxDModel's save,
load, set_weights and to_neuron, and shard_checkpoint, all from NxD's source (NXD_SOURCE).

What cannot run here stands in at its lowest call (tests/model/neuron_standins.py): torch-xla's HLO
generation (the stand-in runs the module once on the CPU and records what it traced), neuronx-cc (records
its flags), and the Neuron runtime's classes (record what is loaded where). So these tests show the calls
NxD makes and the arguments it makes them with, and that the graphs, the weights and the loading agree;
whether neuronx-cc compiles these graphs, and how they run, is only known on a Neuron instance.

The components run in this test's process (the stand-ins live in its modules): that each runs in a process
of its own is tests/model/test_compile.py's subject, on the cpu backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import model.build
from common.shapes import Shape
from model import tiny
from model.artifacts import read_manifest
from model.backends import WEIGHTS_FILE, BackendUnavailable, CompileSettings, get_backend
from model.backends.neuron import PLATFORM_TARGET_OVERRIDE, VISIBLE_CORES_ENV, visible_neuron_cores
from model.build import ensure_compiled, ensure_weights
from model.components import (
    COMPONENTS, TENSOR_PARALLEL_COMPONENTS, TRANSFORMER, VAE_DECODER, GraphSpec, graph_specs, weight_specs,
)
from model.keys import CompileOptions, weights_dir
from model.runtime import load_generator
from model.sources import TinySource
from tests.model import neuron_standins
from tests.model.nxd_cpu import nxd_source

SHAPE = Shape(64, 48)
TEXT_LENGTH = 8
TARGET = "trn1"


@pytest.fixture
def sdk(neuron_distributions, monkeypatch: pytest.MonkeyPatch):
    """The real neuronx-distributed on the stand-ins, undone after the test; components run in this process."""
    monkeypatch.setattr(model.build, "_in_own_process", lambda work, *args: work(*args))
    with neuron_standins.installed(nxd_source()) as stand_ins:
        get_backend("neuron", TARGET, compiling=True)  # imports neuronx-distributed, which builds some closed values
        closed_code_at_import = len(neuron_standins.CLOSED_CODE_USED)
        yield stand_ins
        assert neuron_standins.CLOSED_CODE_USED[closed_code_at_import:] == [], "closed code ran without a stand-in"


def _specs(dtype: torch.dtype = torch.bfloat16, shape: Shape = SHAPE) -> dict[str, GraphSpec]:
    return {spec.component: spec for spec in graph_specs(TinySource(), shape, dtype, TEXT_LENGTH, 77)}


def _options(**changes) -> CompileOptions:
    base = CompileOptions("tiny", None, SHAPE, dtype="bfloat16", backend="neuron", tp_degree=2,
                          max_text_length=TEXT_LENGTH, target=TARGET)
    return dataclasses.replace(base, **changes)


def _flags(call: dict) -> list[str]:
    return call["flags"].split()


@pytest.mark.parametrize("tp_degree", [2, 8])
def test_each_component_is_traced_and_compiled_once_for_all_its_ranks(sdk, tmp_path: Path, tp_degree: int) -> None:
    backend = get_backend("neuron", TARGET, compiling=True)
    settings = CompileSettings(TARGET, tp_degree)
    for component, spec in _specs().items():
        layout = backend.compile_graph(spec, tmp_path / component, tmp_path / "work", settings)
        assert (tmp_path / component / "model.pt").is_file()
        traced, compiled = sdk.hlo_generations[-1], sdk.compilations[-1]
        # ModelBuilder never inlines weights, and traces for a compile without a NeuronCore.
        assert (traced["cpu_backend"], traced["inline_weights_to_neff"]) == (True, False)
        assert {name: [list(shape), str(dtype).removeprefix("torch.")]
                for name, (shape, dtype) in traced["weights"].items()} == layout, "the graph takes these weights"
        assert compiled["platform_target"] == TARGET
        assert f"--target={TARGET}" in _flags(compiled) and "--auto-cast=none" in _flags(compiled)
        assert compiled["work_dir"].is_relative_to(tmp_path / "work" / component)
        heads = [getattr(module, "heads", None) for module in traced["model"].modules()]
        if component == TRANSFORMER:
            assert set(heads) - {None} == {8 // tp_degree}, "one SPMD program of one rank's heads"
    assert len(sdk.hlo_generations) == len(sdk.compilations) == len(COMPONENTS)
    assert any(name == "all_reduce" for name, _ in sdk.collectives), "the ranks reduce their partial sums"
    assert PLATFORM_TARGET_OVERRIDE in __import__("os").environ


def test_every_float32_graph_keeps_float32_through_the_compiler(sdk, tmp_path: Path) -> None:
    backend = get_backend("neuron", TARGET, compiling=True)
    for component, spec in _specs(torch.float32).items():
        backend.compile_graph(spec, tmp_path / component, tmp_path / "work", CompileSettings(TARGET, 2))
    float32 = [call for call, traced in zip(sdk.compilations, sdk.hlo_generations)
               if torch.float32 in {dtype for _, dtype in traced["weights"].values()}]
    assert len(float32) == len(COMPONENTS)
    assert all(_flags(call).count("--auto-cast=none") == 1 and not any(
        flag.startswith("--auto-cast=") and flag != "--auto-cast=none" for flag in _flags(call)) for call in float32)


def test_the_weights_are_cut_per_rank_as_the_graphs_take_them_whatever_the_shape(sdk, tmp_path: Path) -> None:
    backend = get_backend("neuron", TARGET, compiling=True)
    settings = CompileSettings(TARGET, 8)
    small, large = _specs(shape=Shape(64, 64)), _specs(shape=Shape(96, 64))
    for spec in weight_specs(TinySource(), torch.bfloat16):
        written = []
        files, layout = backend.shard_weights(spec, tmp_path / spec.component, settings, written.append)
        ranks = 8 if spec.component in TENSOR_PARALLEL_COMPONENTS else 1
        assert files == [WEIGHTS_FILE.format(rank=rank) for rank in range(ranks)] and written == list(range(ranks))
        for shape_specs in (small, large):
            graph_layout = backend.compile_graph(shape_specs[spec.component], tmp_path / "graphs" / str(len(written))
                                                 / spec.component / str(id(shape_specs)), tmp_path / "work", settings)
            assert graph_layout == layout
        for name in files:
            shard = load_file(tmp_path / spec.component / name)
            assert {key: [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
                    for key, tensor in shard.items()} == layout


def test_a_two_shape_compile_publishes_the_weights_once_and_serving_binds_each_rank_its_own(
    sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuronx_distributed.trace import functions

    sharded_ranks = []
    real_shard = functions.shard_checkpoint
    monkeypatch.setattr(functions, "shard_checkpoint",
                        lambda checkpoint, module, **kwargs: sharded_ranks.append(kwargs["start_rank"])
                        or real_shard(checkpoint, module, **kwargs))
    first = ensure_compiled(_options(), tmp_path)
    second = ensure_compiled(_options(shape=Shape(64, 80)), tmp_path)
    assert sharded_ranks == [0, 0, 1, 0, 1, 0], "CLIP, T5 at TP 2, the transformer at TP 2, the VAE: once"
    assert len(sdk.hlo_generations) == len(sdk.compilations) == 2 * len(COMPONENTS)
    assert read_manifest(first)["weights"] == read_manifest(second)["weights"]
    weights = weights_dir(_options(), tmp_path)[0]
    assert len(list((weights / "attempts").iterdir())) == 1, "uploaded once"

    monkeypatch.setenv(VISIBLE_CORES_ENV, "0-1")
    load_generator(second)
    loaded = sdk.parallel_loads[-len(COMPONENTS):]
    assert [len(ranks) for ranks in loaded] == [1, 2, 2, 1], "set_weights gets one dict per rank"
    transformer_rank_1 = load_file(next(weights.glob("attempts/*/transformer/tp1_sharded_checkpoint.safetensors")))
    assert loaded[2][1].keys() == transformer_rank_1.keys()
    assert all(torch.equal(loaded[2][1][name], tensor) for name, tensor in transformer_rank_1.items())


def test_a_pod_with_fewer_visible_cores_than_ranks_is_told_how_many_to_request(
    sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_weights(_options(tp_degree=8), tmp_path)
    backend = get_backend("neuron", TARGET)
    monkeypatch.setenv(VISIBLE_CORES_ENV, "0-3")
    with pytest.raises(BackendUnavailable, match="gives this process 4 NeuronCores.*8 ranks.*request 8 cores"):
        backend.load_graph(tmp_path / TRANSFORMER, [tmp_path / "unread.safetensors"] * 8)


def test_a_single_core_graph_loads_on_the_first_core_beside_rank_0(sdk, tmp_path: Path) -> None:
    backend = get_backend("neuron", TARGET, compiling=True)
    settings = CompileSettings(TARGET, 2)
    spec = _specs()[VAE_DECODER]
    backend.compile_graph(spec, tmp_path / "graph", tmp_path / "work", settings)
    files, _ = backend.shard_weights(weight_specs(TinySource(), torch.bfloat16)[3], tmp_path / "weights", settings,
                                     lambda rank: None)
    graph = backend.load_graph(tmp_path / "graph", [tmp_path / "weights" / name for name in files])
    (program,) = graph.spmd_models.values()
    assert (program.world_size, program.local_ranks_size, program.start_rank) == (1, 1, 0)


@pytest.mark.parametrize("value, count", [(None, None), ("", None), ("3", 1), ("0-7", 8), ("0,1,4-5", 4)])
def test_visible_core_lists_are_counted_as_the_runtime_reads_them(value: str | None, count: int | None) -> None:
    assert visible_neuron_cores(value) == count


def test_without_the_neuron_sdk_the_neuron_backend_fails_clearly() -> None:
    with pytest.raises(BackendUnavailable, match="Neuron SDK .* not on PyPI: run it inside public.ecr.aws/neuron/"):
        get_backend("neuron", TARGET)


def test_the_tiny_model_s_configs_split_at_the_degree_the_tests_use() -> None:
    assert tiny.transformer_config()["num_attention_heads"] % 8 == 0 and tiny.t5_config().num_heads % 8 == 0
