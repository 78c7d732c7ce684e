"""One sizing model for FLUX.1-dev on Neuron: what each compile and serving pod needs, and no more.

- Component bytes by dtype (float32 doubles bfloat16; the VAE decoder always runs in float32).
- One tensor-parallel rank per NeuronCore: a pod needs `tensorParallel` cores, on the smallest
  device count the Neuron scheduler extension places (trn1/trn1n/trn2: 1, 4, 8, 16; inf2: any).
- Serving fits HBM when core 0, the fullest, holds its share of the sharded transformer and T5,
  the whole CLIP and VAE decoder, and an activation margin.
- Compiling builds the whole component in every tensor-parallel worker (NxD's non-SPMD
  `parallel_model_trace`), so host memory grows with the workers compiling at once: their number
  (`--max-parallel-compilations`) is the most that fit the compile instance's memory.

Facts and sources: ../shared/reference/neuron-flux-apis.md sections 7-8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
# Host memory of one compiling worker beyond the component it builds: neuronx-cc's working set and
# the process's Python/torch runtime. An estimate (no Neuron compile has run here): too high only
# leaves memory of a compile node unused, too low kills an hours-long compile.
COMPILER_BYTES_PER_WORKER = 24 * GIB
# What a Neuron node keeps from pods: kubelet and system reservations, the node daemons (device
# plugin, Mountpoint, CloudWatch agent, CNI).
NODE_RESERVED_BYTES = 16 * GIB
NODE_RESERVED_CPU = 2


# A serving rollout starts this many new pods per shape before it stops an old one (infra/pods.py's
# maxSurge): a NodePool needs room for them on top of maxReplicas.
ROLLOUT_SURGE = 1
# What a serving process holds beyond its graphs: Python, torch, diffusers and the pipeline's CPU tensors.
SERVING_PROCESS_BYTES = 8 * GIB


def artifact_bytes(dtype: str) -> int:
    """A compiled artifact's size: the weights are inlined into the graphs, whatever the shape."""
    return sum(component.bytes(dtype) for component in FLUX_DEV)


def serving_memory_gib(dtype: str, local_copy_gib: int, shm_gib: int) -> int:
    """A serving pod's memory at its peak, while it loads: the verified copy of its artifact in memory
    (TMPDIR, the graphs' one cache on the node: docs/cold-start.md), the graphs the process loads from
    it, /dev/shm and the process itself."""
    return math.ceil(local_copy_gib + artifact_bytes(dtype) / GIB + shm_gib + SERVING_PROCESS_BYTES / GIB)


def sharded_heads() -> str:
    """The head counts every TP degree must divide, for messages: 'T5-XXL encoder 64, transformer 24'."""
    return ", ".join(f"{component.label} {component.attention_heads}" for component in FLUX_DEV if component.sharded)


def tensor_parallel_degrees() -> tuple[int, ...]:
    """TP degrees that divide the head count of every sharded component (FLUX.1-dev 24, T5-XXL 64)."""
    heads = math.gcd(*(component.attention_heads for component in FLUX_DEV if component.sharded))
    return tuple(degree for degree in range(1, heads + 1) if heads % degree == 0)


def hbm_bytes_per_core(tensor_parallel: int, dtype: str) -> int:
    """HBM core 0 needs at serving: its transformer and T5 shards, CLIP, the VAE decoder, activations."""
    shards = sum(math.ceil(component.bytes(dtype) * SHARD_OVERHEAD / tensor_parallel)
                 for component in FLUX_DEV if component.sharded)
    whole = sum(component.bytes(dtype) for component in FLUX_DEV if not component.sharded)
    return shards + whole + ACTIVATION_MARGIN_BYTES


def hbm_bytes_of_core(family: str) -> int:
    return catalog.HBM_GIB_PER_CORE[family] * GIB


def fits_hbm(family: str, tensor_parallel: int, dtype: str) -> bool:
    return hbm_bytes_per_core(tensor_parallel, dtype) <= hbm_bytes_of_core(family)


def fitting_tensor_parallel(family: str, dtype: str) -> tuple[int, ...]:
    """The TP degrees that both divide the head counts and fit this family's HBM."""
    return tuple(degree for degree in tensor_parallel_degrees() if fits_hbm(family, degree, dtype))


def devices_for(family: str, instance_types: tuple[str, ...], cores: int) -> int | None:
    """The smallest device count the scheduler extension places on these types that has `cores`."""
    needed = math.ceil(cores / catalog.cores_per_device(family))
    return next((count for count in catalog.valid_device_counts(family, instance_types) if count >= needed), None)


def compile_worker_bytes(component: Component, dtype: str) -> int:
    return component.bytes(dtype) + COMPILER_BYTES_PER_WORKER


@dataclass(frozen=True)
class CompilePeak:
    """The hungriest compile process: each component compiles in its own, one after another."""

    component: Component
    workers: int      # processes building the component at once (1 unless it is sharded)
    worker_bytes: int

    @property
    def bytes(self) -> int:
        return self.workers * self.worker_bytes


def compile_peak(tensor_parallel: int, dtype: str, concurrency: int) -> CompilePeak:
    peaks = [CompilePeak(component, min(concurrency, tensor_parallel) if component.sharded else 1,
                         component.bytes(dtype) + COMPILER_BYTES_PER_WORKER)
             for component in FLUX_DEV]
    return max(peaks, key=lambda peak: peak.bytes)


@dataclass(frozen=True)
class CompilePlan:
    instance_type: str  # the compile pool's type with the most memory among those holding the devices
    concurrency: int    # tensor-parallel workers compiling at once: --max-parallel-compilations
    peak: CompilePeak

    @property
    def memory_gib(self) -> int:
        """The compile container's memory request and limit."""
        return math.ceil(self.peak.bytes / GIB)


def compile_plan(instance_types: tuple[str, ...], devices: int, tensor_parallel: int, dtype: str) -> CompilePlan | None:
    """The most workers that fit the roomiest instance type holding `devices`, less the node's
    reservation; None when not even one worker fits."""
    host = max((catalog.instance(name) for name in instance_types if catalog.instance(name).devices >= devices),
               key=lambda candidate: candidate.memory_gib)
    usable = host.memory_gib * GIB - NODE_RESERVED_BYTES
    fitting = [count for count in range(1, tensor_parallel + 1)
               if compile_peak(tensor_parallel, dtype, count).bytes <= usable]
    if not fitting:
        return None
    return CompilePlan(host.name, max(fitting), compile_peak(tensor_parallel, dtype, max(fitting)))


def compile_host_gib_needed(tensor_parallel: int, dtype: str) -> int:
    """Host memory one compile worker needs, with the node's reservation: for messages."""
    return math.ceil((compile_peak(tensor_parallel, dtype, 1).bytes + NODE_RESERVED_BYTES) / GIB)
