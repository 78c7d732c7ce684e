"""The sharded transformer and T5 against the unsharded models, on the real neuronx-distributed (CPU mode).

Each tensor-parallel degree spawns its gloo workers once. Every worker does what the neuron backend
does to a component: builds it without weights and gives it this rank's structure
(``model.tensor_parallel.shard_module``), then takes this rank's weights out of the unsharded checkpoint
with neuronx-distributed's own ``shard_checkpoint``, exactly as the weights artifact holds them, loads
them strictly (the very names and shapes the rank's graph takes) and runs random inputs. The reference
is the tiny model (8 heads in both components, so degrees up to 8 split it) with its weights, in float32.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.shapes import Shape
from model import tiny
from model.components import TENSOR_PARALLEL_COMPONENTS, TEXT_ENCODER_2, TRANSFORMER, GraphSpec, graph_specs
from model.sources import TinySource
from model.tensor_parallel import check_tp_degree, shard_module
from tests.model.nxd_cpu import NXD_COMMIT, NXD_REPOSITORY, NXD_SOURCE_ENV, nxd_source, run_tensor_parallel

SHAPE = Shape(32, 48)
TEXT_LENGTH = 8
# Megatron-style sharding splits every block weight but replicates a few vectors (biases added
# after a reduction, per-head norms): per rank at most this much over 1/TP of the blocks.
MAX_BLOCK_WEIGHT_OVERHEAD = 1.25


def _specs() -> list[GraphSpec]:
    specs = graph_specs(TinySource(), SHAPE, torch.float32, TEXT_LENGTH, tiny.CLIP_MAX_LENGTH)
    return [spec for spec in specs if spec.tensor_parallel]


def _random_inputs(spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(
        torch.randint(0, tiny.t5_config().vocab_size, example.shape, generator=generator)
        if example.dtype == torch.int64
        else torch.rand(example.shape, generator=generator, dtype=example.dtype)
        for example in spec.example_inputs
    )


def _blocks(module: nn.Module, component: str) -> list[nn.Module]:
    if component == TRANSFORMER:
        return [*module.transformer.transformer_blocks, *module.transformer.single_transformer_blocks]
    return list(module.encoder.block)


def _heads(module: nn.Module, component: str) -> list[int]:
    if component == TRANSFORMER:
        return [block.attn.heads for block in _blocks(module, component)]
    return [block.layer[0].SelfAttention.n_heads for block in _blocks(module, component)]


def _block_parameters(module: nn.Module, component: str) -> int:
    return sum(parameter.numel() for block in _blocks(module, component) for parameter in block.parameters())


def shard_and_run(cases: list[tuple[GraphSpec, tuple[torch.Tensor, ...]]]) -> dict[str, dict]:
    """In each worker: this rank's structure and weights of each component, what it computes, its shape."""
    from neuronx_distributed.parallel_layers import parallel_state
    from neuronx_distributed.trace.functions import shard_checkpoint

    rank = parallel_state.get_tensor_model_parallel_rank()
    results = {}
    for spec, inputs in cases:
        checkpoint = dict(spec.build(True).state_dict())
        module = shard_module(spec.build(False), spec.component)
        (weights,) = shard_checkpoint(checkpoint, module, start_rank=rank, end_rank=rank)
        module.load_state_dict(weights, strict=True)
        with torch.no_grad():
            output = module(*inputs)
        results[spec.component] = {
            "output": output,
            "heads": _heads(module, spec.component),
            "block_parameters": _block_parameters(module, spec.component),
            "plain_linears_in_blocks": [
                name
                for block in _blocks(module, spec.component)
                for name, layer in block.named_modules()
                if type(layer) is nn.Linear
            ],
        }
    return results


@pytest.fixture(scope="module", params=[2, 8], ids=lambda tp: f"tp{tp}")
def sharded(request: pytest.FixtureRequest) -> dict:
    tp_degree = request.param
    cases = [(spec, _random_inputs(spec)) for spec in _specs()]
    by_rank = run_tensor_parallel(tp_degree, shard_and_run, cases)
    unsharded = {}
    for spec, inputs in cases:
        module = spec.build(True)
        with torch.no_grad():
            unsharded[spec.component] = {
                "output": module(*inputs),
                "heads": _heads(module, spec.component),
                "block_parameters": _block_parameters(module, spec.component),
            }
    return {"tp_degree": tp_degree, "by_rank": by_rank, "unsharded": unsharded}


@pytest.mark.parametrize("component", TENSOR_PARALLEL_COMPONENTS)
def test_every_rank_with_its_sharded_weights_computes_what_the_unsharded_model_does(sharded: dict,
                                                                                    component: str) -> None:
    expected = sharded["unsharded"][component]["output"]
    assert expected.abs().max() > 0
    for rank, results in enumerate(sharded["by_rank"]):
        output = results[component]["output"]
        assert output.shape == expected.shape
        relative = ((output - expected).abs().max() / expected.abs().max()).item()
        assert relative <= 1e-4, f"rank {rank}: {component} differs by {relative:.2e} relative"


@pytest.mark.parametrize("component", TENSOR_PARALLEL_COMPONENTS)
def test_each_rank_holds_its_share_of_the_heads_and_weights(sharded: dict, component: str) -> None:
    tp_degree, unsharded = sharded["tp_degree"], sharded["unsharded"][component]
    ceiling = MAX_BLOCK_WEIGHT_OVERHEAD / tp_degree * unsharded["block_parameters"]
    for results in sharded["by_rank"]:
        shard = results[component]
        assert shard["heads"] == [heads // tp_degree for heads in unsharded["heads"]]
        assert shard["block_parameters"] <= ceiling
        assert shard["plain_linears_in_blocks"] == [], "every Linear in the blocks is tensor-parallel"


FLUX_1_DEV_CONFIGS = {  # black-forest-labs/FLUX.1-dev transformer/ and text_encoder_2/ config.json
    TRANSFORMER: {"num_attention_heads": 24},
    TEXT_ENCODER_2: {"num_heads": 64, "d_ff": 10240},
}


@pytest.mark.parametrize("tp_degree", [1, 2, 4, 8])
def test_degrees_that_split_flux_1_dev_evenly_are_accepted(tp_degree: int) -> None:
    check_tp_degree(tp_degree, FLUX_1_DEV_CONFIGS)


@pytest.mark.parametrize(
    "tp_degree, named", [(3, "text_encoder_2 num_heads=64"), (16, "transformer num_attention_heads=24"), (6, "d_ff")]
)
def test_degrees_that_do_not_split_the_heads_are_refused_in_one_line(tp_degree: int, named: str) -> None:
    with pytest.raises(ValueError, match=f"--tp-degree {tp_degree} does not divide .*{named}") as refused:
        check_tp_degree(tp_degree, FLUX_1_DEV_CONFIGS)
    assert str(refused.value).endswith("allowed degrees are 1, 2, 4, 8")
    assert "\n" not in str(refused.value)


def test_the_tiny_model_splits_at_every_degree_up_to_8() -> None:
    source = TinySource()
    for tp_degree in (1, 2, 4, 8):
        check_tp_degree(tp_degree, {name: source.config(name) for name in TENSOR_PARALLEL_COMPONENTS})


def test_without_the_neuronx_distributed_source_the_tests_fail_saying_where_to_get_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NXD_SOURCE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{NXD_REPOSITORY} at commit {NXD_COMMIT}"):
        nxd_source()
