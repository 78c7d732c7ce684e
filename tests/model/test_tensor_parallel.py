"""The sharded transformer and T5 against the unsharded models, on the real NxD parallel layers (CPU mode).

Each tensor-parallel degree spawns its workers once: every worker runs exactly the function the
neuron backend hands parallel_model_trace (``sharded_worker_model``) on the graph modules the
compile traces, for both components, and runs them on random inputs. The TP-test models are
small FLUX.1 / T5 configs whose head counts divide by 8 (the default tiny model's do not).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from diffusers import FluxTransformer2DModel
from torch import nn
from transformers import T5Config, T5EncoderModel

from model import tiny
from model.backends import sharded_worker_model
from model.components import TEXT_ENCODER_2, TRANSFORMER, GraphSpec, graph_specs
from common.shapes import Shape
from model.tensor_parallel import TENSOR_PARALLEL_COMPONENTS, check_tp_degree
from tests.model.nxd_cpu import NXD_COMMIT, NXD_REPOSITORY, NXD_SOURCE_ENV, nxd_source, run_tensor_parallel

TRANSFORMER_CONFIG = dict(tiny.transformer_config(), num_attention_heads=8, attention_head_dim=16)
T5_CONFIG = T5Config(
    vocab_size=64,
    d_model=64,
    d_kv=8,
    d_ff=128,
    num_layers=2,
    num_heads=8,
    relative_attention_num_buckets=8,
    feed_forward_proj="gated-gelu",
    is_encoder_decoder=False,
)
SHAPE = Shape(32, 48)
TEXT_LENGTH = 8
# Megatron-style sharding splits every block weight but replicates a few vectors (biases added
# after a reduction, per-head norms): per rank at most this much over 1/TP of the blocks.
MAX_BLOCK_WEIGHT_OVERHEAD = 1.25


@dataclass(frozen=True)
class TensorParallelTestSource:
    """A ModelSource (picklable, like the compile's) of float32 models with 8 heads everywhere."""

    def load_model(self, name: str, dtype: torch.dtype) -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            if name == TRANSFORMER:
                return FluxTransformer2DModel(**TRANSFORMER_CONFIG).to(dtype).eval()
            return T5EncoderModel(T5_CONFIG).to(dtype).eval()

    def config(self, name: str) -> dict:
        return {TRANSFORMER: TRANSFORMER_CONFIG, TEXT_ENCODER_2: T5_CONFIG.to_dict(), "vae": tiny.vae_config()}[name]


def _specs() -> list[GraphSpec]:
    specs = graph_specs(TensorParallelTestSource(), SHAPE, torch.float32, TEXT_LENGTH, tiny.CLIP_MAX_LENGTH)
    return [spec for spec in specs if spec.component in TENSOR_PARALLEL_COMPONENTS]


def _random_inputs(spec: GraphSpec) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(
        torch.randint(0, T5_CONFIG.vocab_size, example.shape, generator=generator)
        if example.dtype == torch.int64
        else torch.rand(example.shape, generator=generator, dtype=example.dtype)
        for example in spec.example_inputs
    )


def _blocks(module: nn.Module, component: str) -> list[nn.Module]:
    if component == TRANSFORMER:
        return [*module.transformer.transformer_blocks, *module.transformer.single_transformer_blocks]
    return list(module.text_encoder_2.encoder.block)


def _heads(module: nn.Module, component: str) -> list[int]:
    if component == TRANSFORMER:
        return [block.attn.heads for block in _blocks(module, component)]
    return [block.layer[0].SelfAttention.n_heads for block in _blocks(module, component)]


def _block_parameters(module: nn.Module, component: str) -> int:
    return sum(parameter.numel() for block in _blocks(module, component) for parameter in block.parameters())


def shard_and_run(cases: list[tuple[GraphSpec, tuple[torch.Tensor, ...]]]) -> dict[str, dict]:
    """In each worker: this rank's shard of each component, what it computes, and its shape."""
    results = {}
    for spec, inputs in cases:
        model, aliases = sharded_worker_model(spec.build, spec.component)
        with torch.no_grad():
            output = model(*inputs)
        results[spec.component] = {
            "output": output,
            "aliases": aliases,
            "heads": _heads(model, spec.component),
            "block_parameters": _block_parameters(model, spec.component),
            "plain_linears_in_blocks": [
                name
                for block in _blocks(model, spec.component)
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
        module = spec.build()
        with torch.no_grad():
            unsharded[spec.component] = {
                "output": module(*inputs),
                "heads": _heads(module, spec.component),
                "block_parameters": _block_parameters(module, spec.component),
            }
    return {"tp_degree": tp_degree, "by_rank": by_rank, "unsharded": unsharded}


@pytest.mark.parametrize("component", TENSOR_PARALLEL_COMPONENTS)
def test_every_rank_computes_what_the_unsharded_model_does(sharded: dict, component: str) -> None:
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
        assert shard["aliases"] == {}, "parallel_model_trace's (model, input_output_aliases)"


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


def test_without_the_neuronx_distributed_source_the_tests_fail_saying_where_to_get_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(NXD_SOURCE_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{NXD_REPOSITORY} at commit {NXD_COMMIT}"):
        nxd_source()
