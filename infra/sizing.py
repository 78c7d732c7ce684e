"""One sizing model for FLUX.1-dev on Neuron: what each compile and serving pod needs, and no more.

- Component bytes by dtype (float32 doubles bfloat16; the VAE decoder always runs in float32 on ModelBuilder's
  path, in the dtype on NxD Inference's).
- One rank per NeuronCore: a pod needs as many cores as its pipeline has ranks (`Ranks`: compile.tensorParallel;
  on trn2, NxD Inference's world, twice that with context or CFG parallelism), on the smallest device count the
  Neuron scheduler extension places (trn1/trn1n/trn2: 1, 4, 8, 16; inf2: any).
- Serving fits HBM when core 0, the fullest, holds its share of the sharded transformer and T5,
  the whole CLIP and VAE decoder, and an activation margin; on trn2 by the rule NxD Inference's compile
  applies too (common.neuron.trn2_rank_gib).
- Compiling is SPMD (NxD's ModelBuilder): one trace and one neuronx-cc compile per component for every
  rank, the components one after another, each in its own process. A compile pod's memory is the
  hungriest component's: the component built once, the rank's share of it that is traced, and the
  compiler's working set. Its CPU is at least the share of its node that matches that memory.
- The weights are sharded once per (model, revision, dtype, TP degree) by their own Job: the download plus
  the staged shards on disk, one component and its rank's share in memory (NxD Inference's shard_weights holds
  every rank's share of a component at once).
- A node's ephemeral storage (images, emptyDirs) is its instance store where it has one (the
  EC2NodeClass's RAID0), else its root volume; compile scratch is a gp3 volume of its own instead, so it
  fits every family.

Facts and sources: ../shared/reference/neuron-flux-apis.md sections 7-8. Figures marked "estimate" are not
measured anywhere yet: replace them with what real compiles log (their `elapsed_s`, the pods' peaks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.neuron import NXDI, compile_api, flux_world_size, trn2_rank_gib, trn2_rank_shares
from infra import catalog

GB = 10**9
GIB = 2**30
FLOAT32 = "float32"


@dataclass(frozen=True)
class Component:
    """One traced component of FLUX.1-dev; `attention_heads` is set when it is sharded over the ranks."""

    name: str
    label: str
    bfloat16_bytes: int
    attention_heads: int | None = None
    # The walkthrough traces the VAE decoder in float32 behind a bfloat16 -> float32 cast.
    always_float32: bool = False

    @property
    def sharded(self) -> bool:
        return self.attention_heads is not None

    def bytes(self, dtype: str) -> int:
        return self.bfloat16_bytes * (2 if dtype == FLOAT32 or self.always_float32 else 1)


# FLUX.1-dev's weights in bfloat16 (model.components.COMPONENTS names them in this order).
FLUX_DEV = (
    Component("text_encoder", "CLIP-L", int(0.25 * GB)),
    Component("text_encoder_2", "T5-XXL encoder", int(9.5 * GB), attention_heads=64),
    Component("transformer", "transformer", int(23.8 * GB), attention_heads=24),
    Component("vae_decoder", "VAE decoder", int(0.2 * GB), always_float32=True),
)
# A rank holds at most this times 1/TP of a sharded component: norms, biases and some embedders
# stay whole on every rank (issue 8's bound on the per-rank weights).
SHARD_OVERHEAD = 1.25
# Activations per core: 1-2 GB at 1024x1024 (section 8); the upper end, in GiB.
ACTIVATION_MARGIN_BYTES = 2 * GIB
# Host memory of one compile process beyond the component it builds and the rank it traces: neuronx-cc's
# working set and the process's Python/torch runtime. An estimate (no Neuron compile has run here): too high
# only leaves memory of a compile node unused, too low kills an hours-long compile.
COMPILER_WORKING_SET_BYTES = 24 * GIB
# What a Neuron node keeps from pods: kubelet and system reservations, the node daemons (device
# plugin, Mountpoint, CloudWatch agent, CNI).
NODE_RESERVED_BYTES = 16 * GIB
NODE_RESERVED_CPU = 2
# The same on the CPU nodes compiles run on (no device plugin): the kubelet's reservation at their pod density
# and the same daemons. An estimate.
CPU_NODE_RESERVED_BYTES = 6 * GIB
CPU_NODE_RESERVED_CPU = 1


# A serving rollout starts this many new pods per shape before it stops an old one (infra/pods.py's
# maxSurge): a NodePool needs room for them on top of maxReplicas.
ROLLOUT_SURGE = 1
# What a process holds beyond its tensors: Python, torch, diffusers and the pipeline's CPU tensors (serving),
# the checkpoint reader (the weights Job).
PROCESS_BYTES = 8 * GIB


@dataclass(frozen=True)
class Ranks:
    """How one pipeline's weights spread over its ranks, one rank per (logical) NeuronCore.

    ModelBuilder (trn1, trn1n, inf2; `world` None): T5 and the transformer sharded over `tensor_parallel` ranks,
    CLIP and the float32 VAE decoder on one. NxD Inference (trn2): every component on each of the `world` ranks,
    T5 sharded over all of them, the transformer over `tensor_parallel` (each context- or CFG-parallel half holding
    a copy), CLIP and the VAE decoder (in the dtype) whole on every rank."""

    tensor_parallel: int
    world: int | None = None

    @classmethod
    def of(cls, family: str, tensor_parallel: int, context_parallel: int = 1, cfg_parallel: int = 1) -> Ranks:
        """The ranks of a pipeline serving on `family` (the compile API follows from it: common.neuron)."""
        if compile_api(family) != NXDI:
            return cls(tensor_parallel)
        return cls(tensor_parallel, flux_world_size(tensor_parallel, context_parallel, cfg_parallel))

    @property
    def nxdi(self) -> bool:
        return self.world is not None

    @property
    def count(self) -> int:
        """The pipeline's ranks: the NeuronCores a pod runs it on."""
        return self.world if self.world is not None else self.tensor_parallel

    def split(self, component: Component) -> int:
        """The ranks a component's weights are divided over."""
        if self.world is not None:
            return {"text_encoder_2": self.world, "transformer": self.tensor_parallel}.get(component.name, 1)
        return self.tensor_parallel if component.sharded else 1

    def holders(self, component: Component) -> int:
        """The ranks holding a share of a component (NxD Inference runs every component on every rank)."""
        return self.world if self.world is not None else self.split(component)

    def component_bytes(self, component: Component, dtype: str) -> int:
        """A component in the dtype it runs in: NxD Inference runs the VAE decoder in the pipeline's dtype."""
        if self.world is not None:
            return component.bfloat16_bytes * (2 if dtype == FLOAT32 else 1)
        return component.bytes(dtype)

    def rank_bytes(self, component: Component, dtype: str) -> int:
        """One rank's share of a component: 1/split and what stays whole (SHARD_OVERHEAD), or all of it."""
        split = self.split(component)
        whole = self.component_bytes(component, dtype)
        return whole if split == 1 else math.ceil(whole * SHARD_OVERHEAD / split)

    def copies(self, component: Component) -> int:
        """How many times the component's weights are published (and read): once, or on NxD Inference once per
        rank holding it whole, and once per context- or CFG-parallel half for the backbone."""
        return self.holders(component) // self.split(component)


def artifact_bytes(dtype: str, ranks: Ranks | None = None) -> int:
    """What a serving pod reads: the weights (every rank's shards make up each component once, or as many times
    as NxD Inference replicates it) and its graphs, which are small beside them."""
    ranks = ranks or Ranks(1)
    return sum(ranks.component_bytes(component, dtype) * ranks.copies(component) for component in FLUX_DEV)


def serving_memory_gib(dtype: str, local_copy_gib: int, shm_gib: int, ranks: Ranks | None = None) -> int:
    """A serving pod's memory at its peak, while it loads: the verified copy of its artifact in memory
    (TMPDIR, the graphs' one cache on the node: docs/cold-start.md), the graphs the process loads from
    it, /dev/shm and the process itself."""
    return math.ceil(local_copy_gib + artifact_bytes(dtype, ranks) / GIB + shm_gib + PROCESS_BYTES / GIB)


def sharded_heads() -> str:
    """The head counts every TP degree must divide, for messages: 'T5-XXL encoder 64, transformer 24'."""
    return ", ".join(f"{component.label} {component.attention_heads}" for component in FLUX_DEV if component.sharded)


def tensor_parallel_degrees() -> tuple[int, ...]:
    """TP degrees that divide the head count of every sharded component (FLUX.1-dev 24, T5-XXL 64)."""
    heads = math.gcd(*(component.attention_heads for component in FLUX_DEV if component.sharded))
    return tuple(degree for degree in range(1, heads + 1) if heads % degree == 0)


def hbm_bytes_per_core(tensor_parallel: int, dtype: str, world: int | None = None) -> int:
    """HBM core 0 needs at serving: its transformer and T5 shards, CLIP, the VAE decoder, activations. On trn2
    (`world` given) NxD Inference's compile's own rule, common.neuron.trn2_rank_gib, over FLUX.1-dev's sizes."""
    if world is not None:
        ranks = Ranks(tensor_parallel, world)
        sizes = {component.name: ranks.component_bytes(component, dtype) for component in FLUX_DEV}
        shares = trn2_rank_shares(clip=sizes["text_encoder"], t5=sizes["text_encoder_2"],
                                  transformer=sizes["transformer"], vae_decoder=sizes["vae_decoder"],
                                  backbone_tp_degree=tensor_parallel, world_size=world)
        return math.ceil(trn2_rank_gib(shares) * GIB)
    shards = sum(math.ceil(component.bytes(dtype) * SHARD_OVERHEAD / tensor_parallel)
                 for component in FLUX_DEV if component.sharded)
    whole = sum(component.bytes(dtype) for component in FLUX_DEV if not component.sharded)
    return shards + whole + ACTIVATION_MARGIN_BYTES


def hbm_bytes_of_core(family: str) -> int:
    return catalog.HBM_GIB_PER_CORE[family] * GIB


def fits_hbm(family: str, tensor_parallel: int, dtype: str, data_parallel: int = 1) -> bool:
    """Whether a rank fits a core of the family; `data_parallel` is trn2's context or CFG degree."""
    ranks = Ranks.of(family, tensor_parallel, data_parallel)
    return hbm_bytes_per_core(tensor_parallel, dtype, ranks.world) <= hbm_bytes_of_core(family)


def fitting_tensor_parallel(family: str, dtype: str, data_parallel: int = 1) -> tuple[int, ...]:
    """The TP degrees that both divide the head counts and fit this family's HBM (on trn2 with context or CFG
    parallelism `data_parallel`)."""
    return tuple(degree for degree in tensor_parallel_degrees() if fits_hbm(family, degree, dtype, data_parallel))


def devices_for(family: str, instance_types: tuple[str, ...], cores: int) -> int | None:
    """The smallest device count the scheduler extension places on these types that has `cores`."""
    needed = math.ceil(cores / catalog.cores_per_device(family))
    return next((count for count in catalog.valid_device_counts(family, instance_types) if count >= needed), None)


def rank_bytes(component: Component, dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """One rank's share of a component: of a sharded one 1/TP (on trn2 T5's 1/world) and what stays whole
    (SHARD_OVERHEAD), of another the whole component."""
    return Ranks(tensor_parallel, world).rank_bytes(component, dtype)


def compile_bytes(component: Component, dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """One component's compile process at its peak (an estimate): the component built once, the rank's share that
    ModelBuilder traces (NxD Inference traces with ModelBuilder too), and the compiler's working set."""
    ranks = Ranks(tensor_parallel, world)
    return ranks.component_bytes(component, dtype) + ranks.rank_bytes(component, dtype) + COMPILER_WORKING_SET_BYTES


def compile_memory_bytes(dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """A graphs Job's memory: its hungriest component's process (they run one after another)."""
    return max(compile_bytes(component, dtype, tensor_parallel, world) for component in FLUX_DEV)


def weights_memory_bytes(dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """The weights Job's memory: one component loaded and, at a time, one rank's shard of it (ModelBuilder's
    shard_checkpoint writes rank by rank) or every rank's (NxD Inference's shard_weights holds them all until it
    writes), and the process."""
    ranks = Ranks(tensor_parallel, world)
    held = 1 if world is None else world
    return max(ranks.component_bytes(component, dtype) + held * ranks.rank_bytes(component, dtype)
               for component in FLUX_DEV) + PROCESS_BYTES


# Compile scratch (a gp3 volume per Job, the `--scratch` directory, TMPDIR and HF_HOME): what each Job writes, a
# margin over it for what is not counted.
SCRATCH_MARGIN = 1.2
# The model configs, tokenizers and scheduler a graphs Job downloads: tens of MB; this bounds them.
CONFIG_BYTES = 1 * GB
# neuronx-cc's work directory for one component (HLO, intermediate files); an estimate. Components compile one
# after another and each cleans up, so one at a time.
COMPILER_WORKDIR_BYTES = 30 * GIB
# A shape's compiled graphs without their weights, staged before publishing; an estimate.
STAGED_GRAPHS_BYTES = 10 * GIB


def download_bytes() -> int:
    """The checkpoint the weights Job downloads: FLUX.1-dev's diffusers folders, stored in bfloat16 (~34 GB)."""
    return sum(component.bfloat16_bytes for component in FLUX_DEV)


def weights_bytes(dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """The published weights: every rank's share of each component (what stays whole is on every rank that holds
    the component)."""
    ranks = Ranks(tensor_parallel, world)
    return sum(ranks.rank_bytes(component, dtype) * ranks.holders(component) for component in FLUX_DEV)


def _scratch_gib(written: int) -> int:
    return math.ceil(written * SCRATCH_MARGIN / GIB)


def graphs_scratch_gib() -> int:
    """A graphs Job's scratch: configs, the compiler's work directory, the staged graphs."""
    return _scratch_gib(CONFIG_BYTES + COMPILER_WORKDIR_BYTES + STAGED_GRAPHS_BYTES)


def weights_scratch_gib(dtype: str, tensor_parallel: int, world: int | None = None) -> int:
    """The weights Job's scratch: the download and the staged shards."""
    return _scratch_gib(download_bytes() + weights_bytes(dtype, tensor_parallel, world))


@dataclass(frozen=True)
class PodSize:
    """A pod's CPU and memory (request = limit) and the instance type it was sized against."""

    cpu: int
    memory_gib: int
    instance_type: str


def _cpu_for_memory(vcpus: int, node_memory_gib: int, memory_gib: int) -> int:
    """At least the node's CPU share that matches the pod's memory share: a pod taking most of a node's memory
    leaves no use for its CPUs to anything else."""
    return math.ceil(vcpus * memory_gib / node_memory_gib)


def cpu_pod_size(memory_bytes: int) -> PodSize:
    """A device-less compile or weights pod: the smallest type of the CPU compile family whose memory, less the
    node's reservation, holds it (the largest holds any compile this model sizes), and its CPU share there."""
    memory_gib = math.ceil(memory_bytes / GIB)
    host = next(instance for instance in catalog.CPU_COMPILE_INSTANCES
                if instance.memory_gib * GIB - CPU_NODE_RESERVED_BYTES >= memory_gib * GIB)
    cpu = min(_cpu_for_memory(host.vcpus, host.memory_gib, memory_gib), host.vcpus - CPU_NODE_RESERVED_CPU)
    return PodSize(cpu, memory_gib, host.name)


def neuron_compile_size(instance_types: tuple[str, ...], devices: int, memory_bytes: int,
                        device_cpu: int) -> PodSize | None:
    """A compile pod on a Neuron pool: the leanest type holding its devices with memory for it, at least the CPU
    of its devices' share (`device_cpu`) and the share matching its memory; None when no type has the memory."""
    memory_gib = math.ceil(memory_bytes / GIB)
    fitting = [catalog.instance(name) for name in instance_types if catalog.instance(name).devices >= devices
               and catalog.instance(name).memory_gib * GIB - NODE_RESERVED_BYTES >= memory_gib * GIB]
    if not fitting:
        return None
    host = min(fitting, key=lambda candidate: candidate.memory_gib)
    return PodSize(max(device_cpu, _cpu_for_memory(host.vcpus, host.memory_gib, memory_gib)), memory_gib, host.name)


# A node's ephemeral storage that pods may request: the kubelet evicts below 10% free (EKS AL2023's
# evictionHard nodefs.available), and the image takes its share (the upper end of IMAGE_PULL_S's 15-20 GB class,
# infra/cold_start.py) plus the OS and logs.
EVICTION_FREE_SHARE = 0.1
IMAGE_BYTES = 20 * GB
SYSTEM_DISK_BYTES = 20 * GIB


def node_ephemeral_gib(instance_type: str) -> int:
    """What pods may request of a Neuron node's ephemeral storage: its instance store (RAID0) or its root volume."""
    node = catalog.instance(instance_type)
    capacity = node.instance_store_gb * GB if node.instance_store_gb else catalog.ROOT_VOLUME_GIB * GIB
    return math.floor((capacity * (1 - EVICTION_FREE_SHARE) - IMAGE_BYTES - SYSTEM_DISK_BYTES) / GIB)


# How long the steps of a compile take, for scripts/status's "about ... left" (planning/status.py). Estimates: no
# Neuron compile has run here, and the docs' "one to a few hours per shape" is an estimate too; replace them with
# the `elapsed_s` that real compiles log. neuronx-cc's time is taken as growing with a component's bfloat16 weights
# and its sequence (the transformer's image and text tokens, the VAE decoder's image tokens, T5's text tokens,
# CLIP's fixed 77) relative to REFERENCE_SEQUENCE.
COMPILE_SECONDS_PER_GB = 150
REFERENCE_SEQUENCE = 1024
CLIP_TOKENS = 77
# Sharding writes each rank's share to scratch and copies it to the bucket: twice its bytes at gp3's baseline.
SCRATCH_BYTES_PER_SECOND = 125 * 10**6


def _sequence(component: Component, image_tokens: int, text_tokens: int) -> int:
    return {"text_encoder": CLIP_TOKENS, "text_encoder_2": text_tokens, "transformer": image_tokens + text_tokens,
            "vae_decoder": image_tokens}[component.name]


def compile_step_seconds(component: Component, image_tokens: int, text_tokens: int) -> float:
    """The estimated compile time of one component of a shape."""
    return (COMPILE_SECONDS_PER_GB * component.bfloat16_bytes / GB
            * _sequence(component, image_tokens, text_tokens) / REFERENCE_SEQUENCE)


def shard_step_seconds(component: Component, dtype: str, tensor_parallel: int, world: int | None = None) -> float:
    """The estimated time to shard and stage one rank's share of a component."""
    return 2 * rank_bytes(component, dtype, tensor_parallel, world) / SCRATCH_BYTES_PER_SECOND


def step_component(step: str) -> Component:
    """The component a compile step is of: its name, or the name it starts with (a weights step is one rank of a
    component); the longest match, since text_encoder is a prefix of text_encoder_2."""
    return max((component for component in FLUX_DEV if step.startswith(component.name)),
               key=lambda component: len(component.name))
