"""NxD Inference's Flux application on CPU, from its source, for the trn2 backend's tests.

NxD Inference (NXDI_SOURCE, commit NXDI_COMMIT, the closest public release to SDK 2.31.1's) runs beside the
full neuronx-distributed in NxD's CPU mode (tests/model/nxd_cpu.py), the closed Neuron modules stood in as
tests/model/neuron_standins.py describes, CPU versions of the kernels its Flux forward executes included.

- :func:`tiny_flux_snapshot`: a tiny FLUX.1 in diffusers format, built in code. Its transformer's attention
  head dimension is 128: NxD Inference's backbone hard-codes FLUX.1's rotary axes 16/56/56.
- :func:`installed`: NxD Inference and NxD from their sources on the stand-ins in this process, model/build.py's
  steps run in it, its model source a snapshot on disk.
- :func:`in_this_process`: model/build.py's step in a process of its own, run in this one instead (the stand-ins
  live in its modules). A component's compile here ends at torch-xla's HLO generation: what it wrote until then
  (the record the backend loads its configs from, NxD Inference's neuron_config.json) is the graph, and its
  weights are those the HLO generation saw. Nothing past it (neuronx-cc, model.pt) exists.
- :func:`load_on_cpu`: the NeuronCores. NxD Inference's ``load(dir)`` hands the Neuron runtime the compiled
  NEFF and, read by its own ``load_weights`` from ``dir/weights``, each rank's weights; here the NEFF is the
  module NxD Inference's ModelBuilder traces it from (the application's own model instance), built under this
  rank's process groups, and the weights ``load_weights`` read are bound to it strictly. (NxD Inference's
  ``to_cpu()`` would build the module too, but shards the HF checkpoint at load instead of taking the
  presharded weights, and builds the VAE decoder wrongly: ``Decoder(config)``.)
- :func:`generate_in_world`: what each gloo worker runs: the project's runtime (``load_generator``) over the
  published artifacts, generating the cases asked for.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel

from model import build, tiny
from model.backends.nxdi import COMPILE_WORK_DIR_ENV, LOGICAL_CORE_SIZE_ENV
from model.components import graph_weights
from model.sources import HubSnapshot
from tests.model import neuron_standins
from tests.model.nxd_cpu import REPO, nxd_source, vendored_source

NXDI_REPOSITORY = "github.com/aws-neuron/neuronx-distributed-inference"
NXDI_COMMIT = "ef2731ef8c5764953d23f95f0a8b736bcc5bc8d4"
NXDI_SOURCE_ENV = "NXDI_SOURCE"
DEFAULT_NXDI_SOURCE = REPO.parent / "shared" / "vendor" / "neuronx-distributed-inference" / "src"


def nxdi_source() -> Path:
    """The folder holding ``neuronx_distributed_inference``."""
    return vendored_source(NXDI_SOURCE_ENV, DEFAULT_NXDI_SOURCE,
                           "neuronx_distributed_inference/models/diffusers/flux/application.py", NXDI_REPOSITORY, NXDI_COMMIT)


def tiny_flux_snapshot(path: Path) -> Path:
    """The tiny model of model/tiny.py written as a diffusers snapshot, but for its transformer: 2 heads of 128
    (FLUX.1's rotary axes 16/56/56 add up to 128). CLIP's config carries `dropout`, as FLUX.1-dev's does (written by
    an older transformers): NxD Inference requires it."""
    config = dict(tiny.transformer_config(), num_attention_heads=2, attention_head_dim=128, axes_dims_rope=(16, 56, 56))
    pipeline = FluxPipeline(
        scheduler=tiny.scheduler(), vae=tiny.vae(), text_encoder=tiny.clip_text_model(),
        tokenizer=tiny.clip_tokenizer(), text_encoder_2=tiny.t5_encoder_model(), tokenizer_2=tiny.t5_tokenizer(),
        transformer=tiny._seeded(lambda: FluxTransformer2DModel(**config), 3),
    )
    pipeline.text_encoder.config.dropout = 0.0
    pipeline.save_pretrained(path)
    return path


# What NxD Inference and the trn2 backend set in the environment of the process that compiles.
COMPILE_ENVIRONMENT = (LOGICAL_CORE_SIZE_ENV, COMPILE_WORK_DIR_ENV, "LOCAL_WORLD_SIZE", "NEURON_RT_VIRTUAL_CORE_SIZE")


@contextlib.contextmanager
def installed(snapshot: Path, site: Path) -> Iterator[neuron_standins.NeuronSdk]:
    """For the block: NxD Inference and NxD from their sources on the stand-ins, the Neuron distributions' metadata
    from `site`, model/build.py's steps in this process (in_this_process) and its model source `snapshot`;
    afterwards this process is as before (modules, environment, torch.nn.GroupNorm)."""
    with pytest.MonkeyPatch.context() as patch, neuron_standins.installed(nxd_source()) as sdk:
        patch.syspath_prepend(str(site))
        patch.syspath_prepend(str(nxdi_source()))
        for name in COMPILE_ENVIRONMENT:
            patch.delenv(name, raising=False)
        # As get_backend("neuron", "trn2", compiling=True) sets it: NxD reads it when imported.
        patch.setenv(neuron_standins.PLATFORM_TARGET_OVERRIDE, "trn2")
        # NxD Inference's VAE decoder in bfloat16 replaces torch.nn.GroupNorm for the whole process.
        patch.setattr(torch.nn, "GroupNorm", torch.nn.GroupNorm)
        patch.setattr(build, "_in_own_process", in_this_process)
        patch.setattr(build, "open_source", lambda model, revision, weights: HubSnapshot(snapshot))
        yield sdk


def in_this_process(work: Callable, *args: Any) -> Any:
    """model.build._in_own_process in this process; a compile's result is what it reached (see above)."""
    try:
        return work(*args)
    except neuron_standins.HloGenerationReached as reached:
        return reached.layout, os.getpid()


class _NeuronRuntime:
    """The `traced_model.nxd_model` NxD Inference's load_weights hands every rank's weights to."""

    def __init__(self):
        self.nxd_model = self
        self.weights: list[dict[str, torch.Tensor]] = []
        self.start_rank = 0

    def initialize(self, weights: list[dict[str, torch.Tensor]], start_rank: torch.Tensor) -> None:
        self.weights, self.start_rank = weights, int(start_rank)


class _UnderParallelState(torch.nn.Module):
    """A component's module run with the process groups it was built with, as its NEFF holds them: on CPU the
    components of one pipeline (of different TP degrees) share NxD's parallel state, which some layers read."""

    def __init__(self, module: torch.nn.Module, state: dict):
        super().__init__()
        self.module = module
        self._state = state

    def forward(self, *inputs: Any) -> Any:
        from neuronx_distributed.parallel_layers import parallel_state

        vars(parallel_state).update(self._state)
        return self.module(*inputs)


def load_on_cpu(application: Any, compiled_model_path: str, start_rank_id: int | None = None,
                local_ranks_size: int | None = None, skip_warmup: bool = False) -> None:
    """NeuronApplicationBase.load with this rank's CPU for its NeuronCore (see the module's docstring)."""
    from neuronx_distributed.parallel_layers import parallel_state

    application.traced_model = runtime = _NeuronRuntime()
    application.load_weights(compiled_model_path, start_rank_id=start_rank_id, local_ranks_size=local_ranks_size)
    neuron_config = application.config.neuron_config
    # As ModelBuilder does between components: initialising alone would keep the last one's cached TP size.
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=neuron_config.tp_degree,
                                             skip_collective_init=True, lnc_size=neuron_config.logical_nc_config)
    instance = application.models[0].get_model_instance()
    instance.load_module()
    weights = runtime.weights[torch.distributed.get_rank() - runtime.start_rank]
    # Every tensor the graph takes (tied ones once, as model.components.graph_weights names them), and no other.
    taken = graph_weights(instance.module)
    if weights.keys() != taken.keys():
        raise AssertionError(f"{type(instance.module).__name__}: the weights bound lack {sorted(taken - weights.keys())} "
                             f"and add {sorted(weights.keys() - taken)}")
    instance.module.load_state_dict(weights, strict=False)
    state = {name: value for name, value in vars(parallel_state).items() if name.startswith("_") and name.isupper()}
    for wrapper in application.models:
        wrapper.model = _UnderParallelState(instance.module, state)


def generate_in_world(artifact_dir: Path, case: dict, transformer_inputs: dict | None) -> dict:
    """In a gloo worker: load the published artifact with the project's runtime, the NeuronCores stood in by
    load_on_cpu, and run `case` through its pipeline, for the latents and for the image (as floats), recording the
    shapes the backbone's attention saw; with `transformer_inputs`, also call its transformer on them."""
    sys.path.insert(0, str(nxdi_source()))
    from neuronx_distributed_inference.models.application_base import NeuronApplicationBase
    from nkilib.core.attention.attention_cte import attention_cte

    from model.runtime import load_generator

    NeuronApplicationBase.load = load_on_cpu
    generator = load_generator(artifact_dir)
    pipeline = generator._pipeline  # the runtime's FluxPipeline: generate() gives the image alone, as 8-bit PIL
    results = {output_type: pipeline(
        case["prompt"], height=generator.shape.height, width=generator.shape.width,
        num_inference_steps=case["steps"], guidance_scale=case["guidance"],
        generator=torch.Generator("cpu").manual_seed(case["seed"]), max_sequence_length=512, output_type=output_type,
    ).images for output_type in ("latent", "np")}
    results["attention_shapes"] = set(attention_cte.shapes)
    if transformer_inputs is not None:
        with torch.no_grad():
            (results["transformer"],) = pipeline.transformer(**transformer_inputs)
    return results
