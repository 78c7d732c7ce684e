"""How FLUX.1 is cut into graphs: one traceable module per component, with fixed input shapes, and
no weight that depends on the image shape.

Every backend traces exactly these modules with exactly these example inputs, so the CPU artifacts
the tests exercise have the same decomposition and calling convention as the Neuron ones. Input
shapes are frozen at compile time (one image shape, one prompt, one text length); the weights are
not: they are the modules' state dicts, published once per model (model/build.py) and bound to the
graphs when they load, so every image shape's graphs take the same weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping

import torch
from diffusers.models.embeddings import FluxPosEmbed
from torch import nn

from common.shapes import DTYPES, Shape
from model.adapters import FetchedAdapter, merge
from model.sources import ModelSource

TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
TRANSFORMER = "transformer"
VAE_DECODER = "vae_decoder"
COMPONENTS = (TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER)
# Sharded over the tensor-parallel ranks (model/tensor_parallel.py); the others run on one NeuronCore.
TENSOR_PARALLEL_COMPONENTS = (TEXT_ENCODER_2, TRANSFORMER)

# How serving assembles the pipeline from the graphs, and which weight files each graph takes: written by
# the compile (model/build.py), read by the runtime.
PIPELINE_CONFIG_NAME = "pipeline.json"
WEIGHTS_CONFIG_NAME = "weights.json"
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
VAE_SCALE_FACTOR = 8  # Shape's multiple of 16 is this times the transformer's 2x2 packing.
VAE_DTYPE = torch.float32
# FluxTransformer2DModel builds its FluxPosEmbed with this theta whatever the config says.
ROTARY_THETA = 10000


class ClipPooledEmbedding(nn.Module):
    """CLIP text encoder -> pooled embedding, the only CLIP output FLUX.1 uses."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids).pooler_output


class T5Embedding(nn.Module):
    """T5's encoder stack -> last hidden state (FLUX.1 passes no attention mask).

    Only the encoder: T5EncoderModel also holds `shared`, the same tensor as the encoder's token
    embedding, which would put one weight in the checkpoint twice."""

    def __init__(self, text_encoder_2: nn.Module):
        super().__init__()
        self.encoder = text_encoder_2.encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids).last_hidden_state


class TransformerGraph(nn.Module):
    """FluxTransformer2DModel's forward (diffusers 0.32, without ControlNet, IP-Adapter or checkpointing),
    the rotary tables given as inputs instead of computed from positions.

    The tables depend only on the image shape and the text length, so they are not weights: the runtime
    computes them once per shape with diffusers' own FluxPosEmbed (rotary_tables), which also keeps
    FluxPosEmbed's float64 arithmetic, which Neuron does not support, out of the graph. `guidance` is
    given only to models with a guidance embedding (FLUX.1-dev and its derivatives).
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        rotary_cos: torch.Tensor,
        rotary_sin: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model = self.transformer
        hidden_states = model.x_embedder(hidden_states)
        timestep = timestep.to(hidden_states.dtype) * 1000
        if guidance is None:
            temb = model.time_text_embed(timestep, pooled_projections)
        else:
            temb = model.time_text_embed(timestep, guidance.to(hidden_states.dtype) * 1000, pooled_projections)
        encoder_hidden_states = model.context_embedder(encoder_hidden_states)
        rotary = (rotary_cos, rotary_sin)
        for block in model.transformer_blocks:
            encoder_hidden_states, hidden_states = block(
                hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                image_rotary_emb=rotary)
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        for block in model.single_transformer_blocks:
            hidden_states = block(hidden_states=hidden_states, temb=temb, image_rotary_emb=rotary)
        hidden_states = hidden_states[:, encoder_hidden_states.shape[1]:, ...]
        return model.proj_out(model.norm_out(hidden_states, temb))


def rotary_tables(transformer_config: dict, txt_ids: torch.Tensor, img_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rotary tables FluxTransformer2DModel computes from the pipeline's position ids (cos, sin)."""
    position_embedding = FluxPosEmbed(theta=ROTARY_THETA, axes_dim=list(transformer_config["axes_dims_rope"]))
    return position_embedding(torch.cat((txt_ids, img_ids), dim=0))


class VaeDecoder(nn.Module):
    """VAE latents (already unscaled and shifted by the pipeline) -> image in [-1, 1], in float32.

    AutoencoderKL.decode without the encoder, whose weights the decode never reads. As in the
    walkthrough, the decoder runs in float32 whatever the pipeline's dtype: the latents are cast on the
    way in (the graph takes the pipeline's bfloat16 latents); the VAE is built in VAE_DTYPE.
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.post_quant_conv = vae.post_quant_conv
        self.decoder = vae.decoder

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(VAE_DTYPE)
        if self.post_quant_conv is not None:
            latents = self.post_quant_conv(latents)
        return self.decoder(latents)


_WRAPPERS = {TEXT_ENCODER: ("text_encoder", ClipPooledEmbedding), TEXT_ENCODER_2: ("text_encoder_2", T5Embedding),
             TRANSFORMER: ("transformer", TransformerGraph), VAE_DECODER: ("vae", VaeDecoder)}


def build_graph_module(source: ModelSource, component: str, dtype: torch.dtype, weights: bool,
                       adapters: tuple[FetchedAdapter, ...] = ()) -> nn.Module:
    """One component wrapped for tracing, in eval mode: with the model's weights (and the LoRA `adapters`
    merged into them), or (``weights=False``) with the same parameters, names, shapes and dtypes left
    uninitialised, for compiling graphs, which never read them.

    Module level (and called through functools.partial) so that it pickles into a component's process.
    """
    if component not in _WRAPPERS:
        raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")
    folder, wrapper = _WRAPPERS[component]
    component_dtype = VAE_DTYPE if component == VAE_DECODER else dtype
    if not weights:
        return wrapper(source.build_model(folder, component_dtype)).eval()
    module = wrapper(source.load_model(folder, component_dtype)).eval()
    # The wrappers keep the component's module under its folder's name, the prefix adapters name it by.
    merge(module, folder, list(adapters))
    return module


def graph_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a module's graph takes as weights: its state dict, each tensor once under its first name.
    (Built for tracing, NxD's parallel layers register their weight a second time as `master_weight`; the
    sharded checkpoints never carry that alias.)"""
    weights, seen = {}, set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            weights[name] = tensor.detach()
    return weights


def weights_layout(state: Mapping[str, torch.Tensor]) -> dict[str, list]:
    """The weights a module's graph takes (its state dict), by name: [shape, dtype], what weights must match."""
    return {name: [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")] for name, tensor in state.items()}


def layout_digest(layouts: dict[str, dict]) -> str:
    """One hash of every component's weights layout: a shape's graphs and the weights they load agree on it."""
    return hashlib.sha256(json.dumps(layouts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class GraphSpec:
    component: str
    build: Callable[[bool], nn.Module]  # picklable; build(weights) -> the module to trace or shard, in eval mode
    example_inputs: tuple[torch.Tensor, ...]

    @property
    def tensor_parallel(self) -> bool:
        return self.component in TENSOR_PARALLEL_COMPONENTS


def graph_specs(source: ModelSource, shape: Shape, dtype: torch.dtype, max_text_length: int,
                clip_length: int) -> list[GraphSpec]:
    transformer, vae = source.config("transformer"), source.config("vae")
    image_tokens = shape.image_tokens
    latent_size = (shape.height // VAE_SCALE_FACTOR, shape.width // VAE_SCALE_FACTOR)
    rotary = torch.zeros(max_text_length + image_tokens, transformer["attention_head_dim"], dtype=torch.float32)
    # The dtypes FluxPipeline feeds each component: token ids are int64, guidance is created in float32,
    # the rotary tables are FluxPosEmbed's float32, everything else follows the text encoders' dtype.
    transformer_inputs = (
        torch.zeros(1, image_tokens, transformer["in_channels"], dtype=dtype),
        torch.zeros(1, max_text_length, transformer["joint_attention_dim"], dtype=dtype),
        torch.zeros(1, transformer["pooled_projection_dim"], dtype=dtype),
        torch.ones(1, dtype=dtype),
        rotary,
        rotary.clone(),
    )
    if transformer["guidance_embeds"]:
        transformer_inputs += (torch.ones(1, dtype=torch.float32),)
    example_inputs = {
        TEXT_ENCODER: (torch.zeros(1, clip_length, dtype=torch.int64),),
        TEXT_ENCODER_2: (torch.zeros(1, max_text_length, dtype=torch.int64),),
        TRANSFORMER: transformer_inputs,
        VAE_DECODER: (torch.zeros(1, vae["latent_channels"], *latent_size, dtype=dtype),),
    }
    return [GraphSpec(component, partial(build_graph_module, source, component, dtype), example_inputs[component])
            for component in COMPONENTS]


def weight_specs(source: ModelSource, dtype: torch.dtype, adapters: tuple[FetchedAdapter, ...] = ()) -> list[GraphSpec]:
    """The components whose weights are published, with the adapters merged (no example inputs: nothing is
    traced)."""
    return [GraphSpec(component, partial(build_graph_module, source, component, dtype, adapters=adapters), ())
            for component in COMPONENTS]
