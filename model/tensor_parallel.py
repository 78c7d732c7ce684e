"""Shard FLUX.1's transformer and T5 across tensor-parallel ranks, Megatron style, as the walkthrough does.

Every attention keeps heads/TP heads per rank: its query/key/value projections become
``ColumnParallelLinear(gather_output=False)`` holding this rank's heads, its output projection a
``RowParallelLinear(input_is_parallel=True)`` over the same heads, so each pair costs one
all-reduce. Feed-forwards and the timestep/guidance/text embedders pair up the same way. The
modulation linears (AdaLayerNorm*), whose outputs every rank needs whole, are column-parallel with
``gather_output=True``: the weight is split, the output all-gathered (one small vector per block),
and the bias is the full vector NxD adds after the gather. Norms over the head dimension act per
head and stay replicated; so do the small input/output projections outside the blocks.

``shard_module`` runs inside each tensor-parallel worker (neuronx-distributed's parallel state
initialised); ``check_tp_degree`` runs before anything compiles and needs no Neuron package.
"""

from __future__ import annotations

import math
from functools import reduce

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense, T5DenseGatedActDense

from model.components import TEXT_ENCODER_2, TRANSFORMER

TENSOR_PARALLEL_COMPONENTS = (TEXT_ENCODER_2, TRANSFORMER)


def sharded_sizes(component: str, config: dict) -> dict[str, int]:
    """The sizes of a component's config that every rank gets an equal part of: TP must divide each."""
    if component == TRANSFORMER:
        # Inner, MLP and modulation widths are multiples of the head count.
        return {"num_attention_heads": config["num_attention_heads"]}
    if component == TEXT_ENCODER_2:
        return {"num_heads": config["num_heads"], "d_ff": config["d_ff"]}
    raise ValueError(f"{component!r} is not tensor-parallel: expected one of {', '.join(TENSOR_PARALLEL_COMPONENTS)}")


def check_tp_degree(tp_degree: int, configs: dict[str, dict]) -> None:
    """Refuse a TP degree that does not divide every sharded size of these components' configs."""
    sizes = {f"{component} {name}": size for component, config in configs.items()
             for name, size in sharded_sizes(component, config).items()}  # fmt: skip
    indivisible = [f"{name}={size}" for name, size in sizes.items() if size % tp_degree]
    if indivisible:
        common = reduce(math.gcd, sizes.values())
        allowed = ", ".join(str(d) for d in range(1, common + 1) if common % d == 0)
        raise ValueError(
            f"--tp-degree {tp_degree} does not divide {', '.join(indivisible)}: heads and widths are split "
            f"evenly across ranks, allowed degrees are {allowed}"
        )


def _keep_uninitialised(weight: torch.Tensor) -> None:
    # The layers' own random initialisation is skipped: the model's weights are copied in right after.
    del weight


def shard_module(module: nn.Module, component: str) -> nn.Module:
    """Turn the (wrapped) FluxTransformer2DModel or T5EncoderModel into this rank's shard, in place."""
    from neuronx_distributed.parallel_layers import ColumnParallelLinear, RowParallelLinear, parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    size = parallel_state.get_tensor_model_parallel_size()

    def part(width: int) -> slice:
        if width % size:
            raise ValueError(f"tensor-parallel degree {size} does not divide a {component} width of {width}")
        return slice(rank * (width // size), (rank + 1) * (width // size))

    def column(linear: nn.Linear, gather_output: bool) -> nn.Module:
        rows = part(linear.out_features)
        layer = ColumnParallelLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            gather_output=gather_output,
            dtype=linear.weight.dtype,
            init_method=_keep_uninitialised,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight[rows])
            if linear.bias is not None:
                # Gathered outputs get the whole bias after the all-gather; sharded ones this rank's part.
                layer.bias.copy_(linear.bias if gather_output else linear.bias[rows])
        return layer

    def row(linear: nn.Linear, columns: torch.Tensor | slice | None = None) -> nn.Module:
        layer = RowParallelLinear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            input_is_parallel=True,
            dtype=linear.weight.dtype,
            init_method=_keep_uninitialised,
        )
        with torch.no_grad():
            layer.weight.copy_(linear.weight[:, part(linear.in_features) if columns is None else columns])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)  # added once, after the all-reduce
        return layer

    shard = {TRANSFORMER: _shard_flux, TEXT_ENCODER_2: _shard_t5}
    if component not in shard:
        raise ValueError(f"{component!r} is not tensor-parallel: expected one of {', '.join(shard)}")
    shard[component](module, column, row, part, size)
    return module


def _found(module: nn.Module, types: tuple[type, ...], component: str) -> list[nn.Module]:
    found = [child for child in module.modules() if isinstance(child, types)]
    if not found:
        names = ", ".join(kind.__name__ for kind in types)
        raise ValueError(f"no {names} in {type(module).__name__}: not a {component} this code knows how to shard")
    return found


def _shard_flux(module: nn.Module, column, row, part, size: int) -> None:
    for attention in _found(module, (Attention,), TRANSFORMER):
        attention.heads //= size  # FluxAttnProcessor2_0 splits projections by attn.heads
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            if getattr(attention, name, None) is not None:
                setattr(attention, name, column(getattr(attention, name), gather_output=False))
        if attention.to_out is not None:  # double blocks; single blocks project in proj_out
            attention.to_out[0] = row(attention.to_out[0])
        if attention.to_add_out is not None:
            attention.to_add_out = row(attention.to_add_out)
    for feed_forward in _found(module, (FeedForward,), TRANSFORMER):
        feed_forward.net[0].proj = column(feed_forward.net[0].proj, gather_output=False)
        feed_forward.net[2] = row(feed_forward.net[2])
    for block in _found(module, (FluxSingleTransformerBlock,), TRANSFORMER):
        # proj_out reads cat([attention (dim), MLP (mlp_hidden_dim)]); this rank holds its part of each.
        dim = block.proj_out.out_features
        attention_columns, mlp_columns = part(dim), part(block.mlp_hidden_dim)
        columns = torch.cat(
            [torch.arange(dim)[attention_columns], dim + torch.arange(block.mlp_hidden_dim)[mlp_columns]]
        )
        block.proj_mlp = column(block.proj_mlp, gather_output=False)
        block.proj_out = row(block.proj_out, columns)
    for norm in _found(module, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous), TRANSFORMER):
        norm.linear = column(norm.linear, gather_output=True)
    for embedder in _found(module, (TimestepEmbedding, PixArtAlphaTextProjection), TRANSFORMER):
        embedder.linear_1 = column(embedder.linear_1, gather_output=False)
        embedder.linear_2 = row(embedder.linear_2)


def _shard_t5(module: nn.Module, column, row, part, size: int) -> None:
    for attention in _found(module, (T5Attention,), TEXT_ENCODER_2):
        if attention.is_decoder or attention.pruned_heads:
            raise ValueError("only T5 encoders without pruned heads are sharded")
        heads = part(attention.n_heads)
        attention.n_heads //= size
        attention.inner_dim //= size
        attention.q, attention.k, attention.v = (
            column(attention.q, gather_output=False),
            column(attention.k, gather_output=False),
            column(attention.v, gather_output=False),
        )
        attention.o = row(attention.o)
        if attention.has_relative_attention_bias:
            # One column per head: this rank keeps its heads' columns, no communication needed.
            full = attention.relative_attention_bias
            bias = nn.Embedding(full.num_embeddings, attention.n_heads, dtype=full.weight.dtype)
            with torch.no_grad():
                bias.weight.copy_(full.weight[:, heads])
            attention.relative_attention_bias = bias
    for feed_forward in _found(module, (T5DenseActDense, T5DenseGatedActDense), TEXT_ENCODER_2):
        for name in ("wi", "wi_0", "wi_1"):
            if hasattr(feed_forward, name):
                setattr(feed_forward, name, column(getattr(feed_forward, name), gather_output=False))
        feed_forward.wo = row(feed_forward.wo)  # keeps wo's dtype: transformers holds it in float32
