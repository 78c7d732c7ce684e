"""The Neuron instance families the platform runs on, and the trn2 facts both the deploy program and the
compile need.

Each family is also a neuronx-cc `--target`, so the node pools infra/ offers and the targets model/
compiles for are the same set (infra/catalog.py describes each family's instances).
"""

NEURON_FAMILIES = ("trn1", "trn1n", "trn2", "inf2")

# trn2 runs FLUX.1 through NxD Inference's Flux application (model/backends/nxdi.py), at logical NeuronCore
# config 2: two physical cores act as one, so a device's 8 cores are 4 logical ones with 24 GiB of its 96 GiB
# HBM each (neuron-flux-apis.md sections 1 and 8). Compiler and runtime must agree on the LNC.
TRN2 = "trn2"
TRN2_LOGICAL_CORE_SIZE = 2
TRN2_LOGICAL_CORES_PER_DEVICE = 4
TRN2_HBM_GIB_PER_LOGICAL_CORE = 24
# Context and CFG parallelism each split the backbone's work in two: NxD Inference supports degree 2 only.
DATA_PARALLEL_DEGREES = (1, 2)


def flux_world_size(backbone_tp_degree: int, context_parallel: int = 1, cfg_parallel: int = 1) -> int:
    """The ranks (logical cores) one trn2 pipeline runs on: NxD Inference's get_flux_parallelism_config,
    TP times 2 with context or CFG parallelism. Every component runs on all of them (T5 sharded over them,
    CLIP and the VAE decoder replicated), so a pod asks for exactly this many logical cores."""
    return backbone_tp_degree * context_parallel * cfg_parallel
