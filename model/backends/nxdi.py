"""The neuron backend on trn2: NxD Inference's own Flux application, the path Neuron supports for Flux there.

Each component is NxD Inference's application class for it (``NeuronClipApplication``, ``NeuronT5Application``,
``NeuronFluxBackboneApplication``, ``NeuronVAEDecoderApplication``), configured by ``create_flux_config`` for the
world size ``get_flux_parallelism_config`` derives: the backbone at ``--tp-degree``, T5 sharded over the whole
world, CLIP and the VAE decoder replicated on every rank. ``NeuronFluxApplication`` itself is not used: its
constructor loads the whole pipeline's weights, and its ``compile(dir)`` skips a component whose directory
exists (what a crashed compile leaves).

- Graphs: ``compile(<component dir>)`` with ``skip_sharding``, so it writes NxD Inference's ``neuron_config.json``
  and ``model.pt`` and reads no weight; beside them :data:`RECORD_FILE` records what rebuilds the configs.
  ModelBuilder wipes ``BASE_COMPILE_WORK_DIR`` when it starts tracing: it is this attempt's scratch for the
  component, never the output.
- Weights: ``shard_weights(<component dir>)``, NxD Inference's presharding (``save_sharded_checkpoint``), one
  ``weights/tp{rank}_sharded_checkpoint.safetensors`` per rank of the world, published apart from the graphs.
- Load: the serving process rebuilds the configs from the record (NxD Inference's ``load`` uses the configs in
  memory, not ``neuron_config.json``) and checks them against that file; the component directory of the local
  verified copy gets ``weights/`` linked to the verified weight files, and the application's ``load`` reads them.
  The callable it returns answers our calling convention (model/components.py), so model/runtime.py's pipeline
  is the same for every backend.

Text length is 512 (NxD Inference traces T5 for exactly that) and the logical NeuronCore config 2, in the
compile and in the serving process alike.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from common.image import NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from common.neuron import (
    GIB, LOGICAL_CORE_SIZE_ENV, TRN2_ACTIVATION_RESERVE_GIB, TRN2_HBM_GIB_PER_LOGICAL_CORE, TRN2_LOGICAL_CORE_SIZE,
    flux_world_size, trn2_rank_gib, trn2_rank_shares,
)
from model.artifacts import ArtifactError
from model.backends import WEIGHTS_FILE, BackendUnavailable, CompileSettings, Graph
from model.backends.neuron import PLATFORM_TARGET_OVERRIDE, check_visible_cores
from model.components import (
    COMPONENTS, TEXT_ENCODER, TEXT_ENCODER_2, TORCH_DTYPES, TRANSFORMER, VAE_DECODER, GraphSpec, graph_weights,
    weights_layout,
)
from model.keys import CompileError, CompileOptions
from model.sources import build_from_config

# Beside NxD Inference's files in a component's graph directory: what rebuilds its configs at load.
RECORD_FILE = "flux_application.json"
# NxD Inference's own names: its config file, and the folder of presharded weights its load() reads.
NEURON_CONFIG_FILE = "neuron_config.json"
SHARDED_WEIGHTS_DIR = "weights"
# Where the serving process writes the recorded model configs for create_flux_config.
MODEL_CONFIGS_DIR = "model_configs"
# The snapshot folder NxD Inference reads each component's config (and weights) from, and its application class,
# in create_flux_config's order.
APPLICATIONS = {
    TEXT_ENCODER: ("text_encoder", "clip.modeling_clip", "NeuronClipApplication"),
    TEXT_ENCODER_2: ("text_encoder_2", "t5.modeling_t5", "NeuronT5Application"),
    TRANSFORMER: ("transformer", "modeling_flux", "NeuronFluxBackboneApplication"),
    VAE_DECODER: ("vae", "vae.modeling_vae", "NeuronVAEDecoderApplication"),
}
FLUX_PACKAGE = "neuronx_distributed_inference.models.diffusers.flux"
# Every config preshards its weights, which load() then reads from SHARDED_WEIGHTS_DIR; a graph's compile shards
# nothing (skip_sharding), the weights artifact does.
GRAPH_NEURON_CONFIG = {"save_sharded_checkpoint": True, "skip_sharding": True}
WEIGHTS_NEURON_CONFIG = {"save_sharded_checkpoint": True, "skip_sharding": False}
# ModelBuilder's scratch, wiped when a trace starts.
COMPILE_WORK_DIR_ENV = "BASE_COMPILE_WORK_DIR"
# The weights do not depend on the image shape, but NxD Inference's configs require one: its default.
WEIGHTS_SHAPE = (1024, 1024)


def check_degrees(options: CompileOptions, configs: dict[str, dict]) -> None:
    """Refuse, in one line and before anything compiles, what NxD Inference's Flux application cannot build
    or a trn2 logical core cannot hold. `configs` are the model's, by snapshot folder."""
    transformer, t5, vae = configs["transformer"], configs["text_encoder_2"], configs["vae"]
    if vae.get("use_post_quant_conv", True):
        raise ValueError("NxD Inference compiles the VAE's decoder alone: this VAE has a post_quant_conv it would skip")
    world = options.world_size
    # NxD's parallel layers split these evenly (its divide() fails deep inside a trace otherwise): the backbone's
    # over --tp-degree, T5's over the whole world.
    split = [("--tp-degree", options.tp_degree, "transformer", {
        "num_attention_heads": transformer["num_attention_heads"],
        "output channels": transformer["patch_size"] ** 2 * (transformer.get("out_channels") or transformer["in_channels"]),
    }), (f"the world of {world} ranks T5 is sharded over", world, "text_encoder_2", {
        name: t5[name] for name in ("d_model", "num_heads", "d_ff")})]
    for what, degree, component, sizes in split:
        indivisible = [f"{name}={size}" for name, size in sizes.items() if size % degree]
        if indivisible:
            raise ValueError(f"{what} ({degree}) does not divide {component} {', '.join(indivisible)}: NxD Inference "
                             f"splits them evenly over the ranks")
    # The one fit rule the stack config applies too (common.neuron), here from the model's own configs.
    shares = trn2_rank_shares(
        clip=_parameter_bytes("text_encoder", configs, options.dtype),
        t5=_parameter_bytes("text_encoder_2", configs, options.dtype),
        transformer=_parameter_bytes("transformer", configs, options.dtype),
        vae_decoder=_parameter_bytes("vae", configs, options.dtype), backbone_tp_degree=options.tp_degree,
        world_size=world)
    needed = trn2_rank_gib(shares)
    if needed > TRN2_HBM_GIB_PER_LOGICAL_CORE:
        held = ", ".join(f"{name} {size / GIB:.1f}" for name, size in shares.items())
        raise ValueError(f"--tp-degree {options.tp_degree} does not fit trn2: each of the {world} ranks would hold "
                         f"{needed:.1f} GiB (weights in GiB: {held}; {TRN2_ACTIVATION_RESERVE_GIB} for activations), "
                         f"over the {TRN2_HBM_GIB_PER_LOGICAL_CORE} GiB of a logical core: raise --tp-degree")


def _parameter_bytes(folder: str, configs: dict[str, dict], dtype: str) -> int:
    """A component's weights in `dtype`, counted on the meta device (nothing allocated); of the VAE, the decoder
    NxD Inference compiles."""
    with torch.device("meta"):
        module = build_from_config(folder, configs[folder], TORCH_DTYPES[dtype])
    if folder == "vae":
        module = module.decoder
    return sum(parameter.numel() * parameter.element_size() for parameter in module.parameters())


def _pin_logical_core_size() -> None:
    """LNC 2 in this process, whatever the platform detection says; a conflicting setting is refused."""
    value = os.environ.setdefault(LOGICAL_CORE_SIZE_ENV, str(TRN2_LOGICAL_CORE_SIZE))
    if value != str(TRN2_LOGICAL_CORE_SIZE):
        raise BackendUnavailable(f"{LOGICAL_CORE_SIZE_ENV}={value}: trn2 graphs are compiled and run at logical "
                                 f"NeuronCore config {TRN2_LOGICAL_CORE_SIZE}, unset it")


class NxdiBackend:
    name = "neuron"

    def __init__(self, target: str | None, compiling: bool):
        if compiling:
            os.environ[PLATFORM_TARGET_OVERRIDE] = target
        _pin_logical_core_size()
        try:
            self._flux = importlib.import_module(f"{FLUX_PACKAGE}.application")
            self._classes = {component: getattr(importlib.import_module(f"{FLUX_PACKAGE}.{module}"), name)
                             for component, (_, module, name) in APPLICATIONS.items()}
        except ImportError as error:
            raise BackendUnavailable(
                f"the trn2 backend needs NxD Inference and the Neuron SDK {NEURON_SDK_VERSION} packages, which are not "
                f"on PyPI: run it inside {NEURON_DLC_IMAGE} ({error})"
            ) from None

    # --- configs ----------------------------------------------------------------------------------------------

    def _record(self, component: str, settings: CompileSettings) -> dict:
        """What create_flux_config is called with, and the model configs it reads: the serving process calls it
        again with exactly these."""
        nxdi = settings.nxdi
        world_size = self._flux.get_flux_parallelism_config(
            settings.tp_degree, context_parallel_enabled=nxdi.context_parallel > 1,
            cfg_parallel_enabled=nxdi.cfg_parallel > 1)
        expected = flux_world_size(settings.tp_degree, nxdi.context_parallel, nxdi.cfg_parallel)
        if world_size != expected:
            raise CompileError(f"NxD Inference derives a world of {world_size} ranks for --tp-degree "
                               f"{settings.tp_degree}, common.neuron.flux_world_size {expected}: update the latter")
        height, width = (nxdi.shape.height, nxdi.shape.width) if nxdi.shape is not None else WEIGHTS_SHAPE
        return {
            "component": component,
            "create_flux_config": {
                "world_size": world_size, "backbone_tp_degree": settings.tp_degree, "dtype": nxdi.dtype,
                "height": height, "width": width, "cfg_parallel_enabled": nxdi.cfg_parallel > 1,
                "context_parallel_enabled": nxdi.context_parallel > 1,
            },
            "model_configs": {folder: json.loads((nxdi.model_dir / folder / "config.json").read_text())
                              for folder, _, _ in APPLICATIONS.values()},
        }

    def _application(self, record: dict, model_dir: Path, neuron_config: dict) -> Any:
        """The component's NxD Inference application, its config built by create_flux_config from `model_dir`."""
        arguments = dict(record["create_flux_config"], dtype=TORCH_DTYPES[record["create_flux_config"]["dtype"]])
        configs = dict(zip(COMPONENTS, self._flux.create_flux_config(str(model_dir), **arguments)))
        component = record["component"]
        config = configs[component]
        for name, value in neuron_config.items():
            setattr(config.neuron_config, name, value)
        if config.neuron_config.logical_nc_config != TRN2_LOGICAL_CORE_SIZE:
            raise BackendUnavailable(f"NxD Inference configured {component} at logical NeuronCore config "
                                     f"{config.neuron_config.logical_nc_config}, trn2 runs {TRN2_LOGICAL_CORE_SIZE}")
        folder = APPLICATIONS[component][0]
        return self._classes[component](model_path=str(model_dir / folder), config=config)

    # --- compile ----------------------------------------------------------------------------------------------

    def compile_graph(self, spec: GraphSpec, destination: Path, workdir: Path, settings: CompileSettings) -> dict:
        # A fresh directory: an existing one would be a previous attempt's (NeuronFluxApplication would skip it).
        destination.mkdir(parents=True)
        scratch = workdir / spec.component
        if scratch.resolve().is_relative_to(destination.resolve()):
            raise CompileError(f"the compiler's scratch {scratch} is inside the output {destination}: ModelBuilder "
                               f"wipes it when it starts tracing")
        record = self._record(spec.component, settings)
        (destination / RECORD_FILE).write_text(json.dumps(record, indent=2))
        # Read when the application and its ModelBuilder are made, then wiped at trace start: this attempt's alone.
        os.environ[COMPILE_WORK_DIR_ENV] = str(scratch)
        application = self._application(record, settings.nxdi.model_dir, GRAPH_NEURON_CONFIG)
        application.compile(str(destination))
        return traced_weights_layout(application)

    def shard_weights(self, spec: GraphSpec, destination: Path, settings: CompileSettings,
                      on_rank_written: Callable[[int], None]) -> tuple[list[str], dict]:
        record = self._record(spec.component, settings)
        application = self._application(record, settings.nxdi.model_dir, WEIGHTS_NEURON_CONFIG)
        destination.mkdir(parents=True)
        # NxD Inference writes every rank's file in one call (holding them all in memory meanwhile).
        application.shard_weights(str(destination))
        files, layout = [], None
        for rank in range(record["create_flux_config"]["world_size"]):
            name = f"{SHARDED_WEIGHTS_DIR}/{WEIGHTS_FILE.format(rank=rank)}"
            rank_layout = weights_layout(load_file(destination / name))
            if layout not in (None, rank_layout):
                raise ArtifactError(f"{spec.component} rank {rank}: its weights differ in names or shapes from rank 0's")
            layout = rank_layout
            files.append(name)
            on_rank_written(rank)
        return files, layout

    # --- load -------------------------------------------------------------------------------------------------

    def load_graph(self, graph_dir: Path, weight_files: list[Path]) -> Graph:
        record = json.loads((graph_dir / RECORD_FILE).read_text())
        world_size = record["create_flux_config"]["world_size"]
        if len(weight_files) != world_size:
            raise ArtifactError(f"{graph_dir.name}: {len(weight_files)} weight files for a world of {world_size} ranks")
        check_visible_cores(graph_dir, world_size)
        model_dir = graph_dir / MODEL_CONFIGS_DIR
        for folder, config in record["model_configs"].items():
            (model_dir / folder).mkdir(parents=True)
            (model_dir / folder / "config.json").write_text(json.dumps(config))
        application = self._application(record, model_dir, GRAPH_NEURON_CONFIG)
        check_same_config(application.config, graph_dir / NEURON_CONFIG_FILE)
        # NxD Inference's load() reads rank r's weights from weights/tp{r}_sharded_checkpoint.safetensors.
        (graph_dir / SHARDED_WEIGHTS_DIR).mkdir()
        for rank, path in enumerate(weight_files):
            (graph_dir / SHARDED_WEIGHTS_DIR / WEIGHTS_FILE.format(rank=rank)).symlink_to(path)
        # Its warm-up runs each graph once on random inputs; serving's warm-up generation does that already.
        application.load(str(graph_dir), skip_warmup=True)
        return CALLING_CONVENTIONS[record["component"]](application, record)


def traced_weights_layout(application: Any) -> dict:
    """The weights of the module ModelBuilder traced (never inlined: the graph's inputs after the user's)."""
    builder = application.get_builder()
    (tag,) = builder.model_collection
    return weights_layout(graph_weights(builder.model_collection[tag].model_instance.module))


def comparable_config(config: dict) -> dict:
    """A config as to_json_string writes it, without the paths it was read from (they differ between the compile
    host and the serving copy)."""
    if isinstance(config, dict):
        return {key: comparable_config(value) for key, value in config.items() if key != "_name_or_path"}
    return config


def check_same_config(config: Any, compiled: Path) -> None:
    """The config rebuilt here must be the one the graph was compiled with (NxD Inference's own record of it)."""
    rebuilt, saved = (comparable_config(json.loads(text)) for text in (config.to_json_string(), compiled.read_text()))
    if rebuilt != saved:
        differing = sorted(key for key in rebuilt.keys() | saved.keys() if rebuilt.get(key) != saved.get(key))
        raise ArtifactError(f"{compiled.parent.name}: the config rebuilt for loading differs from the one compiled "
                            f"({NEURON_CONFIG_FILE}) in {', '.join(differing)}: another NxD Inference version?")


# --- our calling convention over NxD Inference's applications (model/components.py) ---------------------------


def _clip(application: Any, record: dict) -> Graph:
    """ids -> pooled embedding."""
    return lambda input_ids: application(input_ids).pooler_output


def _t5(application: Any, record: dict) -> Graph:
    """ids -> last hidden state."""
    return lambda input_ids: application(input_ids)[0]


def _vae_decoder(application: Any, record: dict) -> Graph:
    """Latents (unscaled and shifted) -> image in [-1, 1], float32 as the other backends give it."""
    return lambda latents: application(latents.to(application.dtype)).float()


class _Backbone:
    """(hidden, encoder hidden, pooled, timestep, rotary cos, rotary sin, guidance) -> noise prediction.

    The rotary tables come in, computed by the runtime from the model's axes: NxD Inference's wrapper takes them
    stacked as [tokens, head dim, 2] in its table cache, where it would otherwise compute them itself from the
    position ids with axes hard-coded to FLUX.1's 16/56/56. A CFG-parallel backbone is compiled for a batch of 2
    ([negative, positive], split over the two halves of the world); the pipeline's single prediction is then
    computed by both halves and one is returned.
    """

    def __init__(self, application: Any, record: dict):
        self._application = application
        self._batch = 2 if record["create_flux_config"]["cfg_parallel_enabled"] else 1

    def __call__(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 pooled_projections: torch.Tensor, timestep: torch.Tensor, rotary_cos: torch.Tensor,
                 rotary_sin: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        wrapper = self._application.models[0]
        wrapper.image_rotary_emb = torch.stack([rotary_cos, rotary_sin], dim=2).to(self._application.dtype)
        inputs = [hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance]
        requested = hidden_states.shape[0]
        if requested == 1 and self._batch == 2:
            inputs = [None if tensor is None else torch.cat([tensor, tensor]) for tensor in inputs]
        hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance = inputs
        noise = self._application(hidden_states, encoder_hidden_states, pooled_projections, timestep, None, None,
                                  guidance)
        return noise[:requested]


CALLING_CONVENTIONS: dict[str, Callable[[Any, dict], Graph]] = {
    TEXT_ENCODER: _clip, TEXT_ENCODER_2: _t5, TRANSFORMER: _Backbone, VAE_DECODER: _vae_decoder,
}
