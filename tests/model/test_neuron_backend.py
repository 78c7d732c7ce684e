"""The neuron backend's calls into the Neuron SDK, against stand-ins with the documented signatures.

What cannot run here: torch_neuronx (the compiler and the NeuronCore runtime), neuronxcc, and
neuronx_distributed.trace (parallel_model_trace needs both). Their stand-ins below only record
calls made through the signatures documented for SDK 2.31.1 (reference: neuron-flux-apis.md,
sections 2-3): everything after the example inputs is keyword-only, so a positional mistake is
a TypeError here too. What the tensor-parallel workers compute is not stood in for: it runs on
the real NxD parallel layers in test_tensor_parallel.py. Whether neuronx-cc compiles these
graphs, and how fast they run, is only known on a trn1/inf2 instance.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import pickle
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from common.image import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from model.backends import (
    NEURON_COMPILER_REPORTED,
    NEURON_TOOLCHAIN,
    TENSOR_PARALLEL,
    TORCHSCRIPT,
    VISIBLE_CORES_ENV,
    BackendUnavailable,
    compile_in_this_process,
    get_backend,
    sharded_worker_model,
    visible_neuron_cores,
)
from model.compile import MODEL_LIBRARIES, CompileOptions, cache_key, ensure_compiled, resolve_artifact_dir
from model.components import (
    TEXT_ENCODER,
    TEXT_ENCODER_2,
    TRANSFORMER,
    VAE_DECODER,
    ClipPooledEmbedding,
    VaeDecoder,
    graph_specs,
)
from common.shapes import Shape
from model.sources import TinySource

SHAPE = Shape(64, 64)
TEXT_LENGTH = 8
INSTALLED = {"torch-neuronx": "2.9.0.2.15.32035", "neuronx-distributed": "0.19.28492", "neuronx-cc": "2.26.6360.0"}
COMPILER_REPORTS = "2.26.6360.0+1a2b3c4d"
# The stand-in trace uses torch.jit.trace, whose warnings about frozen shapes are expected.
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


class NeuronSdkStandIns:
    """torch_neuronx / neuronxcc / neuronx_distributed.trace, recording every call."""

    def __init__(self):
        self.traces: list[dict] = []
        self.parallel_traces: list[dict] = []
        self.saves: list[str] = []
        self.parallel_loads: list[str] = []
        self.core_contexts: list[dict] = []
        self.active_context: dict | None = None

    def modules(self) -> dict[str, types.ModuleType]:
        sdk = self

        def trace(func, example_inputs, *, input_output_aliases={}, compiler_workdir=None, compiler_args=None,
                  partitioner_config=None, inline_weights_to_neff=True, cpu_backend=False):  # fmt: skip
            sdk.traces.append({"module": func, "compiler_args": compiler_args, "compiler_workdir": compiler_workdir})
            return torch.jit.trace(func, example_inputs, check_trace=False)

        @contextlib.contextmanager
        def neuron_cores_context(start_nc=-1, nc_count=-1):
            sdk.active_context = {"start_nc": start_nc, "nc_count": nc_count}
            try:
                yield
            finally:
                sdk.core_contexts.append(sdk.active_context)
                sdk.active_context = None

        def parallel_model_trace(func, example_inputs, *, compiler_workdir=None, compiler_args=None,
                                 inline_weights_to_neff=True, bucket_config=None, tp_degree=1,
                                 max_parallel_compilations=None):  # fmt: skip
            pickle.dumps(func)  # the real one runs func in tp_degree spawned worker processes
            sdk.parallel_traces.append(
                {
                    "func": func,
                    "example_inputs": example_inputs,
                    "compiler_args": compiler_args,
                    "compiler_workdir": compiler_workdir,
                    "tp_degree": tp_degree,
                    "max_parallel_compilations": max_parallel_compilations,
                }
            )
            return "traced"

        def parallel_model_save(model, save_dir):
            sdk.saves.append(save_dir)

        def parallel_model_load(load_dir):
            sdk.parallel_loads.append(load_dir)
            return "loaded"

        nxd_trace = types.SimpleNamespace(
            parallel_model_trace=parallel_model_trace,
            parallel_model_save=parallel_model_save,
            parallel_model_load=parallel_model_load,
        )
        return {
            "torch_neuronx": types.SimpleNamespace(trace=trace, neuron_cores_context=neuron_cores_context),
            "neuronxcc": types.SimpleNamespace(__version__=COMPILER_REPORTS),
            # `import a.b` also binds b as an attribute of a.
            "neuronx_distributed": types.SimpleNamespace(trace=nxd_trace),
            "neuronx_distributed.trace": nxd_trace,
        }


@pytest.fixture
def sdk(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> NeuronSdkStandIns:
    """The stand-ins importable, and their distributions' metadata as pip would have installed it."""
    site = tmp_path_factory.mktemp("site-packages")
    for name, version in INSTALLED.items():
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    monkeypatch.syspath_prepend(str(site))
    stand_ins = NeuronSdkStandIns()
    for name, module in stand_ins.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return stand_ins


def _specs(dtype: torch.dtype = torch.bfloat16) -> dict:
    specs = graph_specs(TinySource(), SHAPE, dtype, TEXT_LENGTH, 77)
    return {spec.component: spec for spec in specs}


def _flag(compiler_args: list[str], flag: str) -> str:
    return compiler_args[compiler_args.index(flag) + 1]


def test_single_core_components_go_through_torch_neuronx_trace(sdk, tmp_path: Path) -> None:
    backend = get_backend("neuron")
    for component, model_type in ((TEXT_ENCODER, "transformer"), (VAE_DECODER, "unet-inference")):
        layout = backend.compile_graph(_specs()[component], tmp_path / component, tmp_path / "work", "inf2", 8, None)
        assert layout == TORCHSCRIPT
        assert (tmp_path / component / "model.pt").is_file()
        call = sdk.traces[-1]
        assert _flag(call["compiler_args"], "--target") == "inf2"
        assert _flag(call["compiler_args"], "--model-type") == model_type
        assert Path(call["compiler_workdir"]).is_relative_to(tmp_path / "work")
    assert [type(call["module"]) for call in sdk.traces] == [ClipPooledEmbedding, VaeDecoder]
    assert sdk.parallel_traces == []


def test_the_vae_decoder_is_traced_in_float32_behind_a_cast_of_the_bfloat16_latents(sdk, tmp_path: Path) -> None:
    spec = _specs(torch.bfloat16)[VAE_DECODER]
    get_backend("neuron").compile_graph(spec, tmp_path / "vae", tmp_path / "work", "trn1", 8, None)
    decoder = sdk.traces[-1]["module"]
    assert {parameter.dtype for parameter in decoder.parameters()} == {torch.float32}
    (latents,) = spec.example_inputs
    assert latents.dtype == torch.bfloat16, "the graph takes what the pipeline hands it"
    graph = torch.jit.load(tmp_path / "vae" / "model.pt")
    assert graph(torch.rand_like(latents)).dtype == torch.float32


@pytest.mark.parametrize("max_parallel_compilations", [None, 2])
def test_t5_and_the_transformer_go_through_parallel_model_trace_sharded(
    sdk, tmp_path: Path, max_parallel_compilations: int | None
) -> None:
    specs = _specs()
    for component in (TEXT_ENCODER_2, TRANSFORMER):
        # What each component's compile process runs.
        layout, _ = compile_in_this_process(
            "neuron", specs[component], tmp_path / component, tmp_path / "work", "trn1", 8, max_parallel_compilations
        )
        assert layout == TENSOR_PARALLEL
        call = sdk.parallel_traces[-1]
        assert (call["tp_degree"], call["max_parallel_compilations"]) == (8, max_parallel_compilations)
        # The worker function shards the component: what it computes is test_tensor_parallel's subject.
        assert call["func"].func is sharded_worker_model
        assert call["func"].args == (specs[component].build, component)
        assert call["example_inputs"] is specs[component].example_inputs
        assert Path(call["compiler_workdir"]).is_relative_to(tmp_path / "work")
        assert sdk.saves[-1] == str(tmp_path / component)
    assert _flag(sdk.parallel_traces[-1]["compiler_args"], "--model-type") == "unet-inference"
    assert sdk.traces == []


def test_single_core_graphs_load_onto_the_first_neuroncore_only(sdk, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nn.Identity()), path)
    loaded_inside = []
    real_load = torch.jit.load

    def load_recording_placement(*args, **kwargs):
        loaded_inside.append(sdk.active_context)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", load_recording_placement)
    get_backend("neuron").load_graph(TORCHSCRIPT, [path])
    assert loaded_inside == [{"start_nc": 0, "nc_count": 1}]
    assert sdk.core_contexts == [{"start_nc": 0, "nc_count": 1}]


def test_tensor_parallel_graphs_load_from_the_directory_of_their_rank_files(sdk, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(VISIBLE_CORES_ENV, raising=False)
    files = [tmp_path / "transformer" / f"tp_{rank}.pt" for rank in range(2)]
    assert get_backend("neuron").load_graph(TENSOR_PARALLEL, files) == "loaded"
    assert sdk.parallel_loads == [str(tmp_path / "transformer")]
    assert sdk.core_contexts == [], "parallel_model_load puts rank i on visible core i itself"


def test_the_key_records_what_is_installed_and_what_the_compiler_reports(sdk) -> None:
    options = CompileOptions("tiny", None, SHAPE, backend="neuron", tp_degree=2, target="trn1")
    toolchain = cache_key(options, get_backend("neuron").toolchain_versions())["toolchain"]
    assert set(toolchain) == {*NEURON_TOOLCHAIN, NEURON_COMPILER_REPORTED, *MODEL_LIBRARIES}
    assert INSTALLED.items() <= toolchain.items()
    assert toolchain[NEURON_COMPILER_REPORTED] == COMPILER_REPORTS
    assert toolchain["torch"] == importlib.metadata.version("torch")
    assert NEURON_SDK_VERSION not in toolchain.values(), "the pinned SDK version is not what was installed"


def test_a_degree_that_does_not_split_the_model_is_refused_before_anything_compiles(
    sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import model.compile

    monkeypatch.setattr(model.compile, "_compile_in_own_process", partial(pytest.fail, "a component compiled"))
    # The default tiny T5's feed-forward is 37 wide.
    options = CompileOptions("tiny", None, SHAPE, backend="neuron", tp_degree=2, target="trn1")
    with pytest.raises(ValueError, match=r"^--tp-degree 2 does not divide text_encoder_2 d_ff=37"):
        ensure_compiled(options, tmp_path / "out", tmp_path / "scratch")
    assert not (tmp_path / "out").exists()


def test_without_the_neuron_sdk_the_neuron_backend_fails_clearly(tmp_path: Path, monkeypatch) -> None:
    # None in sys.modules makes `import torch_neuronx` raise ImportError, as when the SDK
    # is absent or PyPI's placeholder package is installed.
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)
    options = CompileOptions("tiny", None, SHAPE, backend="neuron", tp_degree=2, target="trn1")
    for attempt in (
        lambda: get_backend("neuron"),
        lambda: resolve_artifact_dir(options, tmp_path),
        lambda: ensure_compiled(options, tmp_path),
    ):
        with pytest.raises(BackendUnavailable, match=f"Neuron SDK {NEURON_SDK_VERSION}.*{NEURON_DLC_IMAGE}"):
            attempt()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value, count", [(None, None), ("", None), ("3", 1), ("0-7", 8), ("0,1,4-5", 4)])
def test_visible_core_lists_are_counted_as_the_runtime_reads_them(value: str | None, count: int | None) -> None:
    assert visible_neuron_cores(value) == count


def test_a_pod_with_fewer_visible_cores_than_ranks_is_told_how_many_to_request(sdk, tmp_path: Path, monkeypatch):
    files = [tmp_path / "transformer" / f"tp_{rank}.pt" for rank in range(8)]
    monkeypatch.setenv(VISIBLE_CORES_ENV, "0-3")
    with pytest.raises(BackendUnavailable, match="gives this process 4 NeuronCores.*8 tensor-parallel ranks.*request 8"):
        get_backend("neuron").load_graph(TENSOR_PARALLEL, files)
    monkeypatch.setenv(VISIBLE_CORES_ENV, "8-15")
    assert get_backend("neuron").load_graph(TENSOR_PARALLEL, files) == "loaded"
