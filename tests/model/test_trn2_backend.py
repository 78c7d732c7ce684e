"""The trn2 backend on the real NxD Inference and neuronx-distributed (their sources, NxD's CPU mode).

What runs here from source: NxD Inference's Flux application classes (create_flux_config,
get_flux_parallelism_config, the CLIP, T5, backbone and VAE decoder applications, their compile() up to HLO
generation, their shard_weights(), their load_weights()) and NxD's ModelBuilder, parallel layers and process
groups. What stands in (tests/model/neuron_standins.py, tests/model/nxdi_cpu.py): the closed Neuron modules, the
kernels the Flux forward executes (CPU code of the same meaning), and the NeuronCores: a compile cannot go past
torch-xla's HLO generation here (past it come HLO rewrites and neuronx-cc), so no NEFF exists, and loading binds
each rank's presharded weights to the module NxD Inference traces the NEFF from, on this rank's CPU.

The model is a tiny FLUX.1 snapshot built in code (tests/model/nxdi_cpu.py) with 128-dimensional attention heads,
which NxD Inference's backbone needs. Each degree publishes its artifacts in this process, then spawns its world of
gloo workers once; each loads them with the project's runtime and generates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from common.neuron import flux_world_size
from common.shapes import Shape
from model.artifacts import ArtifactError
from model.backends import BackendUnavailable, CompileSettings, NxdiSettings, get_backend
from model.backends.nxdi import (
    LOGICAL_CORE_SIZE_ENV, NEURON_CONFIG_FILE, RECORD_FILE, check_degrees, check_same_config,
)
from model.build import ensure_graphs, ensure_weights
from model.compile import main as compile_main
from model.components import (
    COMPONENTS, TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER, graph_specs,
)
from common.adapters import Adapter
from model.keys import CompileOptions, artifact_name, graphs_dir, graphs_key, weights_key, weights_name
from model.sources import HubSnapshot
from tests.model import neuron_standins, nxdi_cpu
from tests.model.nxd_cpu import run_in_world

MODEL = "test/tiny-flux-hd128"
REVISION = "0" * 40
SHAPE = Shape(64, 64)
# FluxPipeline pads T5's prompt to NxD Inference's fixed length.
TEXT_LENGTH = 512
CASE = {"prompt": "a photo of a cat sitting on the moon", "steps": 2, "guidance": 3.5, "seed": 7}
# float32 on both sides; the measured difference is about 1e-7 for the latents and 1e-6 for the image.
RELATIVE_TOLERANCE = 1e-4
DEGREES = {"tp1": (1, 1, 1), "tp2": (2, 1, 1), "cp2": (1, 2, 1), "cfg2": (1, 1, 2)}


def _options(tp_degree: int = 1, context_parallel: int = 1, cfg_parallel: int = 1, dtype: str = "float32",
             **changes) -> CompileOptions:
    return CompileOptions(MODEL, REVISION, SHAPE, dtype=dtype, backend="neuron", tp_degree=tp_degree, target="trn2",
                          context_parallel=context_parallel, cfg_parallel=cfg_parallel, **changes)


def _relative(actual, expected) -> float:
    actual, expected = torch.as_tensor(np.asarray(actual)), torch.as_tensor(np.asarray(expected))
    assert actual.shape == expected.shape
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nxdi_cpu.tiny_flux_snapshot(tmp_path_factory.mktemp("tiny-flux"))


@pytest.fixture(scope="module")
def eager(snapshot: Path) -> FluxPipeline:
    pipeline = FluxPipeline.from_pretrained(snapshot, torch_dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def expected(eager: FluxPipeline) -> dict:
    """diffusers' FluxPipeline on the snapshot, for the same case: latents and image (floats)."""
    return {output_type: eager(
        CASE["prompt"], height=SHAPE.height, width=SHAPE.width, num_inference_steps=CASE["steps"],
        guidance_scale=CASE["guidance"], generator=torch.Generator("cpu").manual_seed(CASE["seed"]),
        max_sequence_length=TEXT_LENGTH, output_type=output_type,
    ).images for output_type in ("latent", "np")}


@pytest.fixture
def sdk(snapshot: Path, neuron_site: Path):
    with nxdi_cpu.installed(snapshot, neuron_site) as stand_ins:
        yield stand_ins


# --- generation at each degree, against diffusers ------------------------------------------------------------


def _transformer_pair(eager: FluxPipeline) -> dict:
    """Two different inputs in one batch, as NxD Inference's true-CFG pipeline batches [negative, positive]."""
    generator = torch.Generator().manual_seed(3)
    config = eager.transformer.config
    latent_ids = eager._prepare_latent_image_ids(1, SHAPE.height // 16, SHAPE.width // 16, "cpu", torch.float32)
    return {
        "hidden_states": torch.randn(2, SHAPE.image_tokens, config.in_channels, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT_LENGTH, config.joint_attention_dim, generator=generator),
        "pooled_projections": torch.randn(2, config.pooled_projection_dim, generator=generator),
        "timestep": torch.tensor([0.9, 0.4]), "guidance": torch.tensor([3.5, 3.5]),
        "txt_ids": torch.zeros(TEXT_LENGTH, 3), "img_ids": latent_ids,
    }


@pytest.fixture(scope="module", params=list(DEGREES), ids=list(DEGREES))
def generated(request: pytest.FixtureRequest, snapshot: Path, neuron_site: Path, eager: FluxPipeline,
              tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Publish the degree's artifacts, then generate CASE in each rank of its world (and, with CFG parallelism,
    run the transformer on a batch of two)."""
    options = _options(*DEGREES[request.param])
    root = tmp_path_factory.mktemp(request.param)
    with nxdi_cpu.installed(snapshot, neuron_site):
        ensure_weights(options, root)
        artifact = ensure_graphs(options, root)
    pair = _transformer_pair(eager) if options.cfg_parallel > 1 else None
    by_rank = run_in_world(options.world_size, nxdi_cpu.generate_in_world, artifact, CASE, pair, platform="trn2",
                           tensor_parallel=False)
    return {"options": options, "by_rank": by_rank, "pair": pair}


@pytest.mark.parametrize("output_type", ["latent", "np"], ids=["latents", "image"])
def test_every_rank_generates_what_diffusers_does(generated: dict, expected: dict, output_type: str) -> None:
    assert np.asarray(expected["np"]).std() > 0.05, "a flat image would make the comparison meaningless"
    for rank, results in enumerate(generated["by_rank"]):
        relative = _relative(results[output_type], expected[output_type])
        assert relative <= RELATIVE_TOLERANCE, f"rank {rank}: {output_type} differs by {relative:.1e} relative"


def test_the_backbone_s_attention_is_split_as_the_degrees_say(generated: dict) -> None:
    """Tensor parallelism gives each rank its heads; context parallelism each rank half the queries (text and image
    tokens), the keys gathered whole. (CFG parallelism leaves one sample's attention whole on each half.)"""
    options = generated["options"]
    tokens, heads = TEXT_LENGTH + SHAPE.image_tokens, 2 // options.tp_degree
    queries = tokens // options.context_parallel
    for results in generated["by_rank"]:
        assert results["attention_shapes"] == {((heads, queries, 128), (heads, tokens, 128))}


@pytest.mark.parametrize("generated", ["cfg2"], indirect=True)
def test_cfg_parallel_computes_a_batch_of_two_one_sample_per_half(generated: dict, eager: FluxPipeline) -> None:
    """The honest comparison for CFG parallelism. The runtime serves guidance-distilled FLUX.1 without a negative
    prompt, so FluxPipeline asks one prediction per step and both halves of the world compute it (the test above:
    the same latents as diffusers, at twice the cores). What CFG parallelism is for is true CFG: NxD Inference's
    pipeline batches [negative, positive], which diffusers' true-CFG path computes one after the other. Here a
    batch of two different inputs must come back as diffusers' transformer gives each."""
    with torch.no_grad():
        (reference,) = eager.transformer(**generated["pair"], return_dict=False)
    for results in generated["by_rank"]:
        for sample in range(2):
            assert _relative(results["transformer"][sample], reference[sample]) <= RELATIVE_TOLERANCE


# --- compile: up to HLO generation ----------------------------------------------------------------------------


def _settings(snapshot: Path, tp_degree: int = 2, context_parallel: int = 1, cfg_parallel: int = 1,
              dtype: str = "bfloat16", shape: Shape | None = SHAPE) -> CompileSettings:
    return CompileSettings("trn2", tp_degree, nxdi=NxdiSettings(snapshot, shape, dtype, context_parallel, cfg_parallel))


def _specs(snapshot: Path):
    return {spec.component: spec for spec in graph_specs(HubSnapshot(snapshot), SHAPE, torch.bfloat16, TEXT_LENGTH, 77)}


@pytest.fixture
def traced_builders(sdk, monkeypatch: pytest.MonkeyPatch) -> list:
    """The ModelBuilders NxD Inference's compile() traces with (a spy: each is NxD's own, traced as it is)."""
    from neuronx_distributed.trace.model_builder import ModelBuilder

    builders, trace = [], ModelBuilder.trace

    def spied(builder, *args, **kwargs):
        builders.append(builder)
        return trace(builder, *args, **kwargs)

    monkeypatch.setattr(ModelBuilder, "trace", spied)
    return builders


@pytest.mark.parametrize("degrees", [(2, 1, 1), (2, 2, 1), (2, 1, 2)], ids=["tp2", "tp2-cp2", "tp2-cfg2"])
def test_compile_reaches_hlo_generation_with_what_the_config_gives(sdk, traced_builders: list, snapshot: Path,
                                                                   tmp_path: Path, degrees: tuple) -> None:
    """Each component's compile() traces NxD Inference's module with the inputs, ranks and compiler flags its
    config gives, and stops at HLO generation: past it, torch-xla rewrites the HLO and neuronx-cc compiles it,
    neither of which runs here. Whether neuronx-cc compiles these graphs is only known on a Neuron host."""
    backend = get_backend("neuron", "trn2", compiling=True)
    settings = _settings(snapshot, *degrees)
    world, batch = flux_world_size(*degrees), degrees[2]
    bf16, tokens = torch.bfloat16, SHAPE.image_tokens
    expected_inputs = {
        TEXT_ENCODER: [((1, 77), torch.int64)],
        TEXT_ENCODER_2: [((1, TEXT_LENGTH), torch.int64)],
        TRANSFORMER: [((batch, tokens, 16), bf16), ((batch, TEXT_LENGTH, 32), bf16), ((batch, 32), bf16),
                      ((batch,), bf16), ((batch,), bf16), ((tokens + TEXT_LENGTH, 128, 2), bf16)],
        VAE_DECODER: [((1, 4, SHAPE.height // 8, SHAPE.width // 8), bf16)],
    }
    ranks = {TEXT_ENCODER: 1, TEXT_ENCODER_2: world, TRANSFORMER: degrees[0], VAE_DECODER: 1}
    for component, spec in _specs(snapshot).items():
        with pytest.raises(neuron_standins.HloGenerationReached):
            backend.compile_graph(spec, tmp_path / "graphs" / component, tmp_path / "work", settings)
        traced, builder = sdk.hlo_generations[-1], traced_builders[-1]
        assert traced["inputs"] == expected_inputs[component]
        assert (traced["cpu_backend"], traced["inline_weights_to_neff"]) == (True, False)
        assert (builder.tp_degree, builder.world_size, builder.logical_nc_config) == (ranks[component], world, 2)
        assert builder.compiler_workdir == str(tmp_path / "work" / component)
        (container,) = builder.model_collection.values()
        model_type = "unet-inference" if component == VAE_DECODER else "transformer"
        assert f"--model-type={model_type}" in container.compiler_args and "--auto-cast=none" in container.compiler_args
    backbone = sdk.hlo_generations[2]["model"]
    assert backbone.transformer_blocks[0].attn.heads == 2 // degrees[0], "one rank's heads"
    assert backbone.context_parallel_enabled == (degrees[1] > 1) and backbone.cfg_parallel_enabled == (degrees[2] > 1)


def test_the_compile_wipes_its_scratch_never_its_output(sdk, snapshot: Path, tmp_path: Path) -> None:
    scratch, output = tmp_path / "work" / VAE_DECODER, tmp_path / "graphs" / VAE_DECODER
    scratch.mkdir(parents=True)
    (scratch / "left by an earlier trace").touch()
    backend = get_backend("neuron", "trn2", compiling=True)
    with pytest.raises(neuron_standins.HloGenerationReached):
        backend.compile_graph(_specs(snapshot)[VAE_DECODER], output, tmp_path / "work", _settings(snapshot))
    assert not (scratch / "left by an earlier trace").exists(), "ModelBuilder wipes BASE_COMPILE_WORK_DIR"
    assert {path.name for path in output.iterdir()} == {RECORD_FILE, NEURON_CONFIG_FILE}
    with pytest.raises(FileExistsError):
        backend.compile_graph(_specs(snapshot)[VAE_DECODER], output, tmp_path / "work", _settings(snapshot))


def test_a_retried_compile_traces_again_in_a_fresh_attempt(sdk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NeuronFluxApplication.compile skips a component whose directory exists (what a crashed compile leaves);
    the backend never calls it, and every attempt writes into a new directory."""
    import model.build

    monkeypatch.setattr(model.build, "_in_own_process", lambda work, *args: work(*args))
    for attempt in (1, 2):
        with pytest.raises(neuron_standins.HloGenerationReached):
            ensure_graphs(_options(), tmp_path)
        assert len(sdk.hlo_generations) == attempt
    artifact, _ = graphs_dir(_options(), tmp_path)
    assert not (artifact / "manifest.json").exists()


# --- weights: NxD Inference's presharding, published apart ------------------------------------------------------


def test_the_weights_are_nxd_inference_s_presharded_files_one_per_rank_of_the_world(sdk, tmp_path: Path) -> None:
    published = ensure_weights(_options(tp_degree=2, context_parallel=2), tmp_path)
    (attempt,) = published.glob("attempts/*")
    weights = json.loads((attempt / "weights.json").read_text())["components"]
    assert set(weights) == set(COMPONENTS)
    for component in COMPONENTS:
        assert weights[component]["files"] == [f"{component}/weights/tp{rank}_sharded_checkpoint.safetensors"
                                               for rank in range(4)]
    t5 = [load_file(attempt / path) for path in weights[TEXT_ENCODER_2]["files"]]
    backbone = [load_file(attempt / path) for path in weights[TRANSFORMER]["files"]]
    assert t5[0]["shared.weight"].shape[1] * 4 == 32, "T5 is sharded over all 4 ranks"
    assert not torch.equal(t5[0]["shared.weight"], t5[1]["shared.weight"])
    assert backbone[0]["x_embedder.weight"].shape[0] * 2 == 256, "the backbone over --tp-degree 2"
    assert [int(rank["global_rank.rank"]) for rank in backbone] == [0, 1, 2, 3]
    assert torch.equal(backbone[0]["x_embedder.weight"], backbone[2]["x_embedder.weight"]), "the other half's copy"


# --- load: configs rebuilt identically, LNC 2 -------------------------------------------------------------------


def test_load_refuses_a_graph_whose_config_it_cannot_rebuild_identically(sdk, snapshot: Path, tmp_path: Path) -> None:
    backend = get_backend("neuron", "trn2", compiling=True)
    graph = tmp_path / TRANSFORMER
    with pytest.raises(neuron_standins.HloGenerationReached):
        backend.compile_graph(_specs(snapshot)[TRANSFORMER], graph, tmp_path / "work", _settings(snapshot))
    config = json.loads((graph / NEURON_CONFIG_FILE).read_text())
    config["neuron_config"]["world_size"] = 4
    (graph / NEURON_CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=f"{TRANSFORMER}: the config rebuilt for loading differs .* in neuron_config"):
        backend.load_graph(graph, [tmp_path / "unread.safetensors"] * 2)


def test_a_logical_core_config_other_than_2_is_refused(sdk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOGICAL_CORE_SIZE_ENV, "1")
    with pytest.raises(BackendUnavailable, match=f"^{LOGICAL_CORE_SIZE_ENV}=1: trn2 graphs are compiled and run at "
                                                 "logical NeuronCore config 2, unset it$"):
        get_backend("neuron", "trn2")


def test_world_sizes_are_nxd_inference_s(sdk) -> None:
    from neuronx_distributed_inference.models.diffusers.flux.application import get_flux_parallelism_config

    for tp_degree in (1, 2, 4, 8):
        assert get_flux_parallelism_config(tp_degree) == flux_world_size(tp_degree)
        assert get_flux_parallelism_config(tp_degree, context_parallel_enabled=True) == flux_world_size(tp_degree, 2)
        assert get_flux_parallelism_config(tp_degree, cfg_parallel_enabled=True) == flux_world_size(tp_degree, 1, 2)
    with pytest.raises(ValueError, match="mutually exclusive"):
        get_flux_parallelism_config(2, context_parallel_enabled=True, cfg_parallel_enabled=True)


# --- options, keys and degrees, without NxD Inference ---------------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"context_parallel": 2, "cfg_parallel": 2}, "--context-parallel and --cfg-parallel exclude each other"),
    ({"context_parallel": 4}, "--context-parallel 4: NxD Inference's Flux application splits the backbone in two"),
    ({"max_text_length": 256}, "whose T5 takes exactly 512 tokens: --max-text-length 256 cannot apply"),
    ({"context_parallel": 2, "shape": Shape(80, 48)}, "80x48 has 15, choose a shape with an even count"),
    ({"cfg_parallel": 2, "target": "trn1"}, "which runs on --backend neuron --target trn2 only"),
    ({"model": "tiny", "revision": None}, "the tiny models are built in code, give a Hub model"),
    ({"loras": (Adapter("someone/lora", "d" * 40, 1.0),)}, "LoRA adapters are merged on trn1, trn1n, inf2 only"),
])
def test_options_nxd_inference_cannot_build_are_refused_in_one_line(changes: dict, message: str) -> None:
    fields = {"shape": SHAPE, "target": "trn2", "model": MODEL, "revision": REVISION, **changes}
    with pytest.raises(ValueError, match=message) as refused:
        CompileOptions(fields.pop("model"), fields.pop("revision"), fields.pop("shape"), backend="neuron", **fields)
    assert "\n" not in str(refused.value)


def test_the_degrees_are_in_both_keys_and_names_of_trn2_only(neuron_distributions) -> None:
    tp2, cp2, cfg2 = _options(2), _options(2, 2), _options(2, 1, 2)
    assert len({artifact_name(graphs_key(options)) for options in (tp2, cp2, cfg2)}) == 3
    assert len({weights_name(weights_key(options)) for options in (tp2, cp2, cfg2)}) == 3
    assert "-trn2-tp2-cp2-" in artifact_name(graphs_key(cp2)) and "-tp2-cfg2-" in weights_name(weights_key(cfg2))
    assert graphs_key(cp2)["implementation"] == weights_key(cp2)["implementation"] == "nxdi"
    assert graphs_key(cp2)["toolchain"]["neuronx-distributed-inference"] == "0.10.18399"
    trn1 = dataclasses.replace(tp2, target="trn1", max_text_length=256)
    assert "context_parallel" not in graphs_key(trn1) and "neuronx-distributed-inference" not in graphs_key(trn1)["toolchain"]


def test_the_cli_takes_the_degrees_and_refuses_both_in_one_line(neuron_distributions, tmp_path: Path, capsys) -> None:
    argv = ["--shape", "64x64", "--model", MODEL, "--revision", REVISION, "--backend", "neuron", "--target", "trn2",
            "--tp-degree", "2", "--out", str(tmp_path), "--resolve"]
    assert compile_main([*argv, "--context-parallel", "2"]) == 3
    assert capsys.readouterr().out.strip().endswith(artifact_name(graphs_key(_options(2, 2, dtype="bfloat16"))))
    with pytest.raises(SystemExit) as refused:
        compile_main([*argv, "--context-parallel", "2", "--cfg-parallel", "2"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


# FLUX.1-dev's config.json files (black-forest-labs/FLUX.1-dev: transformer/, text_encoder_2/, text_encoder/, vae/).
FLUX_1_DEV = {
    "transformer": {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64, "joint_attention_dim": 4096,
                    "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38, "patch_size": 1,
                    "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56]},
    "text_encoder_2": {"d_ff": 10240, "d_kv": 64, "d_model": 4096, "num_heads": 64, "num_layers": 24,
                       "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32,
                       "relative_attention_max_distance": 128, "is_encoder_decoder": False},
    "text_encoder": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
                     "vocab_size": 49408, "max_position_embeddings": 77, "projection_dim": 768,
                     "hidden_act": "quick_gelu"},
    "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "norm_num_groups": 32, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "use_quant_conv": False, "use_post_quant_conv": False},
}


@pytest.mark.parametrize("dtype, degrees", [("bfloat16", (2, 1, 1)), ("bfloat16", (2, 2, 1)),
                                            ("bfloat16", (8, 1, 2)), ("float32", (4, 1, 1))])
def test_flux_1_dev_degrees_that_fit_a_logical_core_are_accepted(dtype: str, degrees: tuple) -> None:
    check_degrees(_options(*degrees, dtype=dtype), FLUX_1_DEV)


@pytest.mark.parametrize("dtype, degrees, t5_heads, message", [
    ("bfloat16", (1, 1, 1), 64, r"--tp-degree 1 does not fit trn2: each of the 1 ranks would hold 33\.\d GiB"),
    ("bfloat16", (1, 2, 1), 64, r"each of the 2 ranks would hold 28\.\d GiB .*T5 4\.4.* raise --tp-degree$"),
    ("float32", (2, 1, 1), 64, r"over the 24 GiB of a logical core"),
    ("bfloat16", (16, 1, 1), 64, r"--tp-degree \(16\) does not divide transformer num_attention_heads=24"),
    ("bfloat16", (4, 2, 1), 12, r"the world of 8 ranks T5 is sharded over \(8\) does not divide text_encoder_2 num_heads=12"),
])
def test_flux_1_dev_degrees_nxd_inference_cannot_split_or_a_core_cannot_hold_are_refused(
        dtype: str, degrees: tuple, t5_heads: int, message: str) -> None:
    configs = {**FLUX_1_DEV, "text_encoder_2": {**FLUX_1_DEV["text_encoder_2"], "num_heads": t5_heads}}
    with pytest.raises(ValueError, match=message) as refused:
        check_degrees(_options(*degrees, dtype=dtype), configs)
    assert "\n" not in str(refused.value)


def test_a_vae_whose_post_quant_conv_the_decoder_would_skip_is_refused() -> None:
    with pytest.raises(ValueError, match="compiles the VAE's decoder alone"):
        check_degrees(_options(2), {**FLUX_1_DEV, "vae": {**FLUX_1_DEV["vae"], "use_post_quant_conv": True}})


def test_check_same_config_ignores_only_the_paths_the_configs_were_read_from(tmp_path: Path) -> None:
    compiled = tmp_path / NEURON_CONFIG_FILE
    compiled.write_text('{"_name_or_path": "/compile/host/transformer", "num_layers": 1}')

    class Rebuilt:
        def __init__(self, layers: int):
            self.layers = layers

        def to_json_string(self) -> str:
            return f'{{"_name_or_path": "/serving/copy/transformer", "num_layers": {self.layers}}}'

    check_same_config(Rebuilt(1), compiled)
    with pytest.raises(ArtifactError, match="differs from the one compiled .* in num_layers"):
        check_same_config(Rebuilt(2), compiled)
