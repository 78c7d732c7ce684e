"""Shard FLUX.1's transformer and T5 across tensor-parallel ranks, Megatron style, as the walkthrough does.

Every attention keeps heads/TP heads per rank: its query/key/value projections become
``ColumnParallelLinear(gather_output=False)`` holding this rank's heads, its output projection a
``RowParallelLinear(input_is_parallel=True)`` over the same heads, so each pair costs one
all-reduce. Feed-forwards and the timestep/guidance/text embedders pair up the same way. The
modulation linears (AdaLayerNorm*), whose outputs every rank needs whole, are column-parallel with
``gather_output=True``: the weight is split, the output all-gathered (one small vector per block),
and the bias is the full vector NxD adds after the gather. Norms over the head dimension act per
head and stay replicated; so do the small input/output projections outside the blocks.

``shard_module`` only changes the module's structure: every replaced layer is NxD's, of this rank's
size, with the partition attributes (dimension, stride) that neuronx-distributed's ``shard_checkpoint``
reads to cut each rank's weights out of the unsharded checkpoint. The parameter names stay those of the
unsharded module, so one checkpoint serves every degree. Under ModelBuilder's parallel state (AOT mode)
the layers allocate no weights of the whole model. ``check_tp_degree`` runs before anything compiles
and needs no Neuron package.
"""

from __future__ import annotations

import math
from functools import reduce

from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero, AdaLayerNormZeroSingle
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense, T5DenseGatedActDense

from model.components import TENSOR_PARALLEL_COMPONENTS, TEXT_ENCODER_2, TRANSFORMER


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


def _keep_uninitialised(weight) -> None:
    # The layers' own random initialisation is skipped: their weights come from shard_checkpoint.
    del weight


def shard_module(module: nn.Module, component: str) -> nn.Module:
    """Give the (wrapped) FluxTransformer2DModel or T5 encoder this rank's structure, in place."""
    from neuronx_distributed.parallel_layers import (
        ColumnParallelLinear, ParallelEmbedding, RowParallelLinear, parallel_state,
    )

    size = parallel_state.get_tensor_model_parallel_size()

    def column(linear: nn.Linear, gather_output: bool, stride: int = 1) -> nn.Module:
        return ColumnParallelLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    gather_output=gather_output, dtype=linear.weight.dtype,
                                    init_method=_keep_uninitialised, stride=stride)

    def row(linear: nn.Linear, stride: int = 1) -> nn.Module:
        # The bias is whole: added once, after the all-reduce.
        return RowParallelLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                 input_is_parallel=True, dtype=linear.weight.dtype,
                                 init_method=_keep_uninitialised, stride=stride)

    def heads_embedding(embedding: nn.Embedding) -> nn.Module:
        # One column per head: this rank keeps its heads' columns and needs nothing from the others.
        return ParallelEmbedding(embedding.num_embeddings, embedding.embedding_dim, dtype=embedding.weight.dtype,
                                 shard_across_embedding=True, collect_output=False,
                                 init_method=_keep_uninitialised)

    shard = {TRANSFORMER: _shard_flux, TEXT_ENCODER_2: _shard_t5}
    if component not in shard:
        raise ValueError(f"{component!r} is not tensor-parallel: expected one of {', '.join(shard)}")
    shard[component](module, column, row, heads_embedding, size)
    return module


def _found(module: nn.Module, types: tuple[type, ...], component: str) -> list[nn.Module]:
    found = [child for child in module.modules() if isinstance(child, types)]
    if not found:
        names = ", ".join(kind.__name__ for kind in types)
        raise ValueError(f"no {names} in {type(module).__name__}: not a {component} this code knows how to shard")
    return found


def _shard_flux(module: nn.Module, column, row, heads_embedding, size: int) -> None:
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
        # proj_out reads cat([attention (dim), MLP (ratio x dim)]). With strides, NxD cuts both in chunks
        # of dim/TP and deals them round-robin: rank r gets MLP chunks r, r+TP, ... of proj_mlp's rows
        # (stride `ratio`) and, of proj_out's columns (stride 1 + ratio), attention chunk r then the same
        # MLP chunks, which is exactly what cat([its attention, its MLP]) holds on this rank.
        dim, mlp = block.proj_out.out_features, block.mlp_hidden_dim
        if mlp % dim:
            raise ValueError(f"a single block's MLP width {mlp} is not a multiple of its width {dim}: "
                             f"its output projection cannot be split with its inputs")
        block.proj_mlp = column(block.proj_mlp, gather_output=False, stride=mlp // dim)
        block.proj_out = row(block.proj_out, stride=1 + mlp // dim)
    for norm in _found(module, (AdaLayerNormZero, AdaLayerNormZeroSingle, AdaLayerNormContinuous), TRANSFORMER):
        norm.linear = column(norm.linear, gather_output=True)
    for embedder in _found(module, (TimestepEmbedding, PixArtAlphaTextProjection), TRANSFORMER):
        embedder.linear_1 = column(embedder.linear_1, gather_output=False)
        embedder.linear_2 = row(embedder.linear_2)


def _shard_t5(module: nn.Module, column, row, heads_embedding, size: int) -> None:
    for attention in _found(module, (T5Attention,), TEXT_ENCODER_2):
        if attention.is_decoder or attention.pruned_heads:
            raise ValueError("only T5 encoders without pruned heads are sharded")
        attention.n_heads //= size
        attention.inner_dim //= size
        attention.q, attention.k, attention.v = (
            column(attention.q, gather_output=False),
            column(attention.k, gather_output=False),
            column(attention.v, gather_output=False),
        )
        attention.o = row(attention.o)
        if attention.has_relative_attention_bias:
            attention.relative_attention_bias = heads_embedding(attention.relative_attention_bias)
    for feed_forward in _found(module, (T5DenseActDense, T5DenseGatedActDense), TEXT_ENCODER_2):
        for name in ("wi", "wi_0", "wi_1"):
            if hasattr(feed_forward, name):
                setattr(feed_forward, name, column(getattr(feed_forward, name), gather_output=False))
        feed_forward.wo = row(feed_forward.wo)  # keeps wo's dtype, whatever transformers holds it in
