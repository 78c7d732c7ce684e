"""How FLUX.1 is cut into graphs: one traceable module per component, with fixed input shapes.

Both backends trace exactly these modules with exactly these example inputs, so the
CPU artifacts the tests exercise have the same decomposition and calling convention
as the Neuron ones. Every input shape is frozen at compile time: one image shape,
one prompt, one text length.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from diffusers import FluxPipeline
from torch import nn

from common.shapes import DTYPES, Shape
from model.sources import ModelSource

TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"
TRANSFORMER = "transformer"
VAE_DECODER = "vae_decoder"
COMPONENTS = (TEXT_ENCODER, TEXT_ENCODER_2, TRANSFORMER, VAE_DECODER)

# How serving assembles the pipeline from the graphs: written by the compile, read by the runtime.
PIPELINE_CONFIG_NAME = "pipeline.json"
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
VAE_SCALE_FACTOR = 8  # Shape's multiple of 16 is this times the transformer's 2x2 packing.
VAE_DTYPE = torch.float32


class ClipPooledEmbedding(nn.Module):
    """CLIP text encoder -> pooled embedding, the only CLIP output FLUX.1 uses."""

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids).pooler_output


class T5Embedding(nn.Module):
    """T5 encoder -> last hidden state (FLUX.1 passes no attention mask)."""

    def __init__(self, text_encoder_2: nn.Module):
        super().__init__()
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder_2(input_ids).last_hidden_state


class ConstantRotaryEmbedding(nn.Module):
    """Stands in for FluxPosEmbed once its output is known.

    The position ids depend only on the image shape and the text length, both fixed at
    compile time, so the rotary tables are computed once here. That also keeps float64
    (which FluxPosEmbed uses internally and Neuron does not support) out of the graph.
    """

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos, self.sin


class FixedShapeTransformer(nn.Module):
    """The FLUX.1 transformer for one image shape and text length, tensors in and out."""

    def __init__(self, transformer: nn.Module, shape: Shape, max_text_length: int):
        super().__init__()
        # Exactly the ids FluxPipeline builds: zeros for text, (0, row, column) per latent patch.
        txt_ids = torch.zeros(max_text_length, 3)
        img_ids = FluxPipeline._prepare_latent_image_ids(
            1, shape.height // 16, shape.width // 16, torch.device("cpu"), torch.float32
        )
        cos, sin = transformer.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        transformer.pos_embed = ConstantRotaryEmbedding(cos, sin)
        self.transformer = transformer
        self.register_buffer("txt_ids", txt_ids.to(transformer.dtype))
        self.register_buffer("img_ids", img_ids.to(transformer.dtype))

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        return self.transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=self.img_ids,
            txt_ids=self.txt_ids,
            guidance=guidance,
            return_dict=False,
        )[0]


class VaeDecoder(nn.Module):
    """VAE latents (already unscaled and shifted by the pipeline) -> image in [-1, 1], in float32.

    As in the walkthrough, the decoder runs in float32 whatever the pipeline's dtype: the
    latents are cast on the way in (the graph takes the pipeline's bfloat16 latents). ``vae``
    must be loaded in VAE_DTYPE (loading it in bfloat16 first would round its weights).
    """

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(VAE_DTYPE), return_dict=False)[0]


def build_graph_module(
    source: ModelSource, component: str, dtype: torch.dtype, shape: Shape, max_text_length: int
) -> nn.Module:
    """Load one component and wrap it for tracing.

    Module level (and called through functools.partial) so that it pickles: the Neuron
    backend runs it inside each tensor-parallel worker process.
    """
    if component == TEXT_ENCODER:
        return ClipPooledEmbedding(source.load_model("text_encoder", dtype)).eval()
    if component == TEXT_ENCODER_2:
        return T5Embedding(source.load_model("text_encoder_2", dtype)).eval()
    if component == TRANSFORMER:
        return FixedShapeTransformer(source.load_model("transformer", dtype), shape, max_text_length).eval()
    if component == VAE_DECODER:
        return VaeDecoder(source.load_model("vae", VAE_DTYPE)).eval()
    raise ValueError(f"unknown component {component!r}: expected one of {', '.join(COMPONENTS)}")


@dataclass(frozen=True)
class GraphSpec:
    component: str
    build: Callable[[], nn.Module]  # picklable; returns the module to trace, in eval mode
    example_inputs: tuple[torch.Tensor, ...]


def graph_specs(
    source: ModelSource, shape: Shape, dtype: torch.dtype, max_text_length: int, clip_length: int
) -> list[GraphSpec]:
    transformer, vae = source.config("transformer"), source.config("vae")
    image_tokens = shape.image_tokens
    latent_size = (shape.height // VAE_SCALE_FACTOR, shape.width // VAE_SCALE_FACTOR)
    # The dtypes FluxPipeline feeds each component: token ids are int64, guidance is
    # created in float32, everything else follows the text encoders' dtype.
    example_inputs = {
        TEXT_ENCODER: (torch.zeros(1, clip_length, dtype=torch.int64),),
        TEXT_ENCODER_2: (torch.zeros(1, max_text_length, dtype=torch.int64),),
        TRANSFORMER: (
            torch.zeros(1, image_tokens, transformer["in_channels"], dtype=dtype),
            torch.zeros(1, max_text_length, transformer["joint_attention_dim"], dtype=dtype),
            torch.zeros(1, transformer["pooled_projection_dim"], dtype=dtype),
            torch.ones(1, dtype=dtype),
            torch.ones(1, dtype=torch.float32),
        ),
        VAE_DECODER: (torch.zeros(1, vae["latent_channels"], *latent_size, dtype=dtype),),
    }
    return [
        GraphSpec(
            component=component,
            build=partial(build_graph_module, source, component, dtype, shape, max_text_length),
            example_inputs=example_inputs[component],
        )
        for component in COMPONENTS
    ]
