"""The Neuron instance families the platform runs on, and the trn2 facts both the deploy program and the
compile need.

Each family is also a neuronx-cc `--target`, so the node pools infra/ offers and the targets model/
compiles for are the same set (infra/catalog.py describes each family's instances).
"""

from __future__ import annotations

NEURON_FAMILIES = ("trn1", "trn1n", "trn2", "inf2")

# The compile API behind a Neuron target: NxD's ModelBuilder, one SPMD trace per component of our own cut of
# FLUX (trn1, trn1n, inf2), or NxD Inference's own Flux application, the path Neuron supports for Flux on trn2
# (neuron-flux-apis.md, "The decision this forces"). Both artifact keys record it (model/keys.py), and so must
# the deploy program's names for the Jobs that publish them (infra/pods.py).
MODEL_BUILDER = "modelbuilder"
NXDI = "nxdi"

# trn2 runs FLUX.1 through NxD Inference's Flux application (model/backends/nxdi.py), at logical NeuronCore
# config 2: two physical cores act as one, so a device's 8 cores are 4 logical ones with 24 GiB of its 96 GiB
# HBM each (neuron-flux-apis.md sections 1 and 8). Compiler and runtime must agree on the LNC: both read it from
# this variable first, so every trn2 compile and serving process sets it.
TRN2 = "trn2"
TRN2_LOGICAL_CORE_SIZE = 2
LOGICAL_CORE_SIZE_ENV = "NEURON_LOGICAL_NC_CONFIG"
TRN2_LOGICAL_CORES_PER_DEVICE = 4
TRN2_HBM_GIB_PER_LOGICAL_CORE = 24
# What a logical core keeps for activations beside the weights: 1-2 GB at 1024x1024 (neuron-flux-apis.md
# section 8), the upper end.
TRN2_ACTIVATION_RESERVE_GIB = 2
# NxD Inference's Flux application traces T5 for exactly this many tokens and its pipeline asks for them: the
# compile refuses another text length on trn2, and so does the stack config.
NXDI_TEXT_LENGTH = 512
# Context and CFG parallelism each split the backbone's work in two: NxD Inference supports degree 2 only.
DATA_PARALLEL_DEGREES = (1, 2)
GIB = 2**30


def compile_api(target: str | None) -> str:
    """The compile API a Neuron target's graphs and weights are made with: NxD Inference on trn2, ModelBuilder
    elsewhere."""
    return NXDI if target == TRN2 else MODEL_BUILDER


def flux_world_size(backbone_tp_degree: int, context_parallel: int = 1, cfg_parallel: int = 1) -> int:
    """The ranks (logical cores) one trn2 pipeline runs on: NxD Inference's get_flux_parallelism_config,
    TP times 2 with context or CFG parallelism. Every component runs on all of them (T5 sharded over them,
    CLIP and the VAE decoder replicated), so a pod asks for exactly this many logical cores."""
    return backbone_tp_degree * context_parallel * cfg_parallel


def trn2_rank_shares(*, clip: float, t5: float, transformer: float, vae_decoder: float, backbone_tp_degree: int,
                     world_size: int) -> dict[str, float]:
    """The bytes of weights each rank of a trn2 pipeline holds, by component, from the components' bytes: the
    CLIP text encoder and the VAE decoder whole (replicated on every rank), T5 over the world, the backbone over
    its TP degree (each context- or CFG-parallel half holds a copy)."""
    return {"CLIP": clip, "T5": t5 / world_size, "transformer": transformer / backbone_tp_degree,
            "VAE decoder": vae_decoder}


def trn2_rank_gib(shares: dict[str, float]) -> float:
    """What one logical core must hold, GiB: its weights and the activation reserve. It fits when this is at most
    TRN2_HBM_GIB_PER_LOGICAL_CORE; the compile (model/backends/nxdi.py, from the model's configs) and the stack
    config (infra/sizing.py, from its component sizes) both refuse degrees by this one rule."""
    return sum(shares.values()) / GIB + TRN2_ACTIVATION_RESERVE_GIB
