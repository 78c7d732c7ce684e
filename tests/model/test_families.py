"""The FLUX.1 family a model is (read from its configs) and LoRA adapters merged into its weights: the tiny
FLUX.1-schnell-like model and a tiny adapter, both built in code, through compile, publish and generate.

Adapters come from a stand-in for the Hub's snapshot download (no network here) that serves a local
repository of the adapter's file, as snapshot_download would fetch it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import model.build
import model.runtime
from common.shapes import Shape
from model import tiny
from model.adapters import AdapterUnusable
from model.artifacts import ArtifactError, read_manifest
from model.build import ensure_compiled, ensure_weights
from model.components import TRANSFORMER, WEIGHTS_CONFIG_NAME
from model.families import GUIDANCE_DISTILLED, TIMESTEP_DISTILLED, UnsupportedModel, family_of
from common.adapters import Adapter, adapter_argument, parse_adapter
from model.keys import TINY_SCHNELL, CompileOptions, artifact_name, graphs_key, weights_dir, weights_key
from model.runtime import ServedArtifact, load_generator

PROMPT = "a photo of a red car in the city"
ADAPTER_REPO, ADAPTER_COMMIT = "someone/tiny-flux-lora", "d" * 40
SCALE = 0.8


def options(**changes) -> CompileOptions:
    base = CompileOptions("tiny", None, Shape(64, 80), dtype="float32", backend="cpu", max_text_length=16)
    return dataclasses.replace(base, **changes)


def adapter(scale: float = SCALE, file: str | None = None) -> Adapter:
    return Adapter(ADAPTER_REPO, ADAPTER_COMMIT, scale, file)


@pytest.fixture
def adapter_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Repositories by id, each a folder the snapshot_download stand-in serves (its allow_patterns honoured)."""
    repositories = {ADAPTER_REPO: tmp_path / "adapter"}
    repositories[ADAPTER_REPO].mkdir()
    save_file(tiny.lora_adapter(), repositories[ADAPTER_REPO] / tiny.LORA_FILE)

    def snapshot_download(repo_id, revision, allow_patterns):
        assert revision == ADAPTER_COMMIT
        snapshot = tmp_path / f"snapshot-{repo_id.replace('/', '-')}-{'-'.join(allow_patterns)}"
        snapshot.mkdir(exist_ok=True)
        for path in repositories[repo_id].iterdir():
            if any(Path(path.name).match(pattern) for pattern in allow_patterns):
                (snapshot / path.name).write_bytes(path.read_bytes())
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repositories


def _eager(timestep_distilled: bool = False) -> torch.nn.Module:
    pipeline = tiny.pipeline(torch.float32, timestep_distilled=timestep_distilled)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _image(pipeline, compiled_options: CompileOptions, steps: int, guidance: float, seed: int):
    return pipeline(PROMPT, height=compiled_options.shape.height, width=compiled_options.shape.width,
                    num_inference_steps=steps, guidance_scale=guidance, max_sequence_length=compiled_options.max_text_length,
                    generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def _differs(first, second) -> int:
    return int(np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16)).max())


# --- families --------------------------------------------------------------------------------------------

def test_the_family_is_read_from_the_model_s_configs() -> None:
    vae = tiny.vae_config()
    dev = family_of("dev", "FluxPipeline", tiny.transformer_config(), vae, dict(tiny.scheduler().config))
    schnell = family_of("schnell", "FluxPipeline", tiny.transformer_config(guidance_embeds=False), vae,
                        dict(tiny.scheduler(dynamic_shifting=False).config))
    assert (dev, schnell) == (GUIDANCE_DISTILLED, TIMESTEP_DISTILLED)
    assert schnell.max_text_length == 256 and schnell.default_steps == 4 and not schnell.guidance


@pytest.mark.parametrize("pipeline_class, transformer, scheduler, message", [
    ("FluxFillPipeline", {}, {}, "m is a FluxFillPipeline, not a text-to-image FluxPipeline"),
    ("FluxPipeline", {"in_channels": 384}, {}, "m's transformer takes 384 input channels, not the 16 of its VAE's"),
    ("FluxPipeline", {"guidance_embeds": False}, {"use_dynamic_shifting": True},
     "m has neither a guidance embedding .* nor a fixed-shift scheduler"),
])
def test_an_architecture_this_project_cannot_compile_is_refused_in_one_line(
    pipeline_class: str, transformer: dict, scheduler: dict, message: str
) -> None:
    with pytest.raises(UnsupportedModel, match=f"^{message}") as refused:
        family_of("m", pipeline_class, {**tiny.transformer_config(), **transformer}, tiny.vae_config(),
                  {**dict(tiny.scheduler().config), **scheduler})
    assert "\n" not in str(refused.value)


@pytest.fixture(scope="module")
def schnell_graphs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_compiled(options(model=TINY_SCHNELL), tmp_path_factory.mktemp("schnell"))


def test_the_tiny_schnell_compiles_and_generates_what_eager_diffusers_does(schnell_graphs: Path) -> None:
    schnell, graphs = options(model=TINY_SCHNELL), schnell_graphs
    served = ServedArtifact.read(graphs)
    assert (served.model, served.family, served.adapters) == (TINY_SCHNELL, TIMESTEP_DISTILLED, ())
    generator = load_generator(graphs, expected=served)
    assert generator.family == TIMESTEP_DISTILLED
    expected = _image(_eager(timestep_distilled=True), schnell, steps=2, guidance=0.0, seed=3)
    assert _differs(generator.generate(PROMPT, 2, 0.0, seed=3), expected) <= 1


def test_a_load_refuses_artifacts_other_than_those_expected_before_any_graph_loads(
    schnell_graphs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    announced = dataclasses.replace(ServedArtifact.read(schnell_graphs), family=GUIDANCE_DISTILLED, weights="other")
    backends = []
    monkeypatch.setattr(model.runtime, "get_backend", lambda *args: backends.append(args))
    with pytest.raises(ArtifactError, match="^the artifacts loaded are not those announced: family timestep-distilled, "
                                            "not guidance-distilled; weights tiny-schnell-tiny-2-.*, not other$"):
        load_generator(schnell_graphs, expected=announced)
    assert backends == [], "no graph was loaded"


def test_a_text_length_beyond_the_family_s_is_refused_before_anything_compiles(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="--max-text-length 300: tiny-schnell is timestep-distilled, which "
                                               "reads at most 256 T5 tokens"):
        ensure_compiled(options(model=TINY_SCHNELL, max_text_length=300), tmp_path)
    assert not any(tmp_path.iterdir())


# --- adapters --------------------------------------------------------------------------------------------

def test_an_adapter_publishes_new_weights_and_reuses_every_graph(adapter_hub, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = options()
    graphs = ensure_compiled(base, tmp_path)
    compiled = []
    real_compile = model.build._compile_graphs_into
    monkeypatch.setattr(model.build, "_compile_graphs_into", lambda *args: compiled.append(args) or real_compile(*args))

    adapted = options(loras=(adapter(),))
    assert ensure_compiled(adapted, tmp_path) == graphs
    assert compiled == [], "no graph is recompiled for an adapter"
    adapted_weights = weights_dir(adapted, tmp_path)[0]
    assert adapted_weights != weights_dir(base, tmp_path)[0] and (adapted_weights / "manifest.json").is_file()

    # The same seed: the adapter changes the image, and makes what diffusers makes with it fused.
    without = load_generator(graphs).generate(PROMPT, 2, 3.5, seed=7)
    with_adapter = load_generator(graphs, adapted_weights).generate(PROMPT, 2, 3.5, seed=7)
    assert _differs(without, with_adapter) > 8
    fused = _eager()
    fused.load_lora_weights(str(adapter_hub[ADAPTER_REPO]), weight_name=tiny.LORA_FILE)
    fused.fuse_lora(lora_scale=SCALE)
    fused.unload_lora_weights()
    assert _differs(with_adapter, _image(fused, adapted, steps=2, guidance=3.5, seed=7)) <= 1

    # The merged weights are diffusers' fusion, tensor by tensor.
    attempt = adapted_weights / read_manifest(adapted_weights)["attempt"]
    for component, module in ((TRANSFORMER, fused.transformer), ("text_encoder", fused.text_encoder)):
        merged = load_file(next(attempt.glob(f"{component}/*.safetensors")))
        expected = {f"{component}.{name}": tensor for name, tensor in module.state_dict().items()}
        assert merged.keys() == expected.keys()
        worst = max((merged[name] - expected[name]).abs().max().item() for name in merged)
        assert worst <= 1e-5, f"{component}: merged weights differ from diffusers' fusion by {worst:.2e}"
    assert read_manifest(adapted_weights)["key"]["loras"] == [adapter().key()]
    served = ServedArtifact.read(graphs, adapted_weights)
    assert (served.adapters, served.weights, served.artifact) == ((adapter(),), adapted_weights.name, graphs.name)


def test_adding_rescaling_or_removing_an_adapter_changes_the_weights_key_only() -> None:
    keys = {scale: (artifact_name(graphs_key(options(loras=(adapter(scale),)))), weights_key(options(loras=(adapter(scale),))))
            for scale in (0.5, 1.0)}
    base_graphs, base_weights = artifact_name(graphs_key(options())), weights_key(options())
    assert {graphs for graphs, _ in keys.values()} == {base_graphs}
    assert len({str(weights) for _, weights in keys.values()} | {str(base_weights)}) == 3


def test_an_adapter_of_modules_the_model_lacks_is_refused_in_one_line(adapter_hub, tmp_path: Path) -> None:
    foreign = {"transformer.transformer_blocks.9.attn.to_q.lora_A.weight": torch.zeros(4, 8),
               "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": torch.zeros(8, 4)}
    save_file(foreign, adapter_hub[ADAPTER_REPO] / tiny.LORA_FILE)
    with pytest.raises(AdapterUnusable, match=f"^adapter {ADAPTER_REPO} targets transformer.transformer_blocks.9.attn."
                                              "to_q, which this model does not have$"):
        ensure_weights(options(loras=(adapter(),)), tmp_path)


def test_an_adapter_of_t5_is_refused_before_any_weight_loads(adapter_hub, tmp_path: Path) -> None:
    t5 = {"text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": torch.zeros(4, 32),
          "text_encoder_2.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight": torch.zeros(32, 4)}
    save_file(t5, adapter_hub[ADAPTER_REPO] / tiny.LORA_FILE)
    with pytest.raises(AdapterUnusable, match="only the transformer and text_encoder take adapters"):
        ensure_weights(options(loras=(adapter(),)), tmp_path)


def test_an_adapter_repository_of_several_files_needs_one_named(adapter_hub, tmp_path: Path) -> None:
    save_file(tiny.lora_adapter(seed=6), adapter_hub[ADAPTER_REPO] / "other.safetensors")
    with pytest.raises(AdapterUnusable, match="has 2 weight files \\(other.safetensors, pytorch_lora_weights."
                                              "safetensors\\): name one with file="):
        ensure_weights(options(loras=(adapter(),)), tmp_path)
    with pytest.raises(AdapterUnusable, match="has no missing.safetensors"):
        ensure_weights(options(loras=(adapter(file="missing.safetensors"),)), tmp_path)
    named = options(loras=(adapter(file="other.safetensors"),))
    assert json_loras(ensure_weights(named, tmp_path)) == [adapter(file="other.safetensors").key()]


def json_loras(weights: Path) -> list:
    return json.loads((weights / read_manifest(weights)["attempt"] / WEIGHTS_CONFIG_NAME).read_text())["loras"]


@pytest.mark.parametrize("text, message", [
    ("id=a/b,revision=" + "d" * 40, "scale missing"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=1,weight=x", "not weight"),
    ("id=a/b,revision=main,scale=1", "full 40-character commit hash"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=0", "other than 0"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=9", "from -8 to 8"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=nan", "from -8 to 8"),
    ("id=a-b,revision=" + "d" * 40 + ",scale=1", "not a HuggingFace repository id"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=1,file=../x.safetensors", "not a .safetensors file"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=1,file=x.bin", "not a .safetensors file"),
    ("id=a/b,revision=" + "d" * 40 + ",scale=big", "scale 'big' is not a number"),
])
def test_bad_adapters_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        parse_adapter(text)
    assert "\n" not in str(refused.value)


def test_an_adapter_argument_reads_back_as_the_same_adapter() -> None:
    for original in (adapter(), adapter(-1.5, "x.safetensors"), adapter(1)):
        assert parse_adapter(adapter_argument(original)) == original
        assert parse_adapter(adapter_argument(original)).key() == original.key()
