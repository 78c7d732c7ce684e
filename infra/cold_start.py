"""The cold-start budget: from a scale-up event to a serving pod's /readyz, per serving pool and shape.

One place for the numbers the serving pods are sized from (infra/pods.py: the startup
probe, the rollout deadline, the HPA's scale-up period) and that docs/cold-start.md shows
(`python -m infra.cold_start` prints its table; a test keeps the two equal). Each constant
says where it comes from; the ones marked "assumption" are not measured anywhere yet and
are the first to replace with numbers from a real cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from infra import catalog, sizing
from common import activation
from common.artifacts import MAX_READERS
from common.shapes import Shape, parse_shape

# Neuron compiles and serves bfloat16 (both stacks do); the budget is for that.
BUDGET_DTYPE = "bfloat16"
# FLUX.1-dev's weights in bf16, GB, from the sizing model: what a serving pod reads (its weights artifact; a
# shape's graphs hold no weights and add little), whatever the shape.
FLUX_DEV_GRAPH_GB = {component.name: component.bytes(BUDGET_DTYPE) / sizing.GB for component in sizing.FLUX_DEV}
ARTIFACT_GB = sizing.artifact_bytes(BUDGET_DTYPE) / sizing.GB

# Karpenter: NodeClaim created -> node Ready with the Neuron device plugin advertising devices.
# Assumption: EC2 launch + AL2023 boot + kubelet join + the device plugin DaemonSet; Karpenter gives
# up on a node that has not registered after 15 minutes, the hard upper bound.
NODE_LAUNCH_S = 120
# Pulling the image onto a node that does not have it (no image-cache snapshot found). Assumption from AWS's
# figure for deep learning images of 15-20 GB uncompressed ("4-6 minutes per instance", AWS Machine Learning
# Blog, "Reducing container cold start times using SOCI index on DLAMI and DLC"): the Neuron DLC base is of
# that class and our layers (diffusers, the server, model/) add well under 1 GB. The upper end is used.
IMAGE_PULL_S = 360
# The image already on the node's image-cache volume (infra/image_cache.py), restored with fast snapshot
# restore: fully initialized at launch, so starting the container reads local blocks. AWS's pattern for
# this (terraform-aws-eks-blueprints patterns/ml-container-cache, aws-samples bottlerocket-images-cache)
# reports about 5 s for a 20 GB image where the pull took about 334 s (as cited in issue 21; not measured here).
SNAPSHOT_FAST_RESTORE_S = 5
# The same volume restored lazily (no fast snapshot restore, or the zone's FSR credits spent): each block is
# fetched from S3 when first read. Assumption: AWS publishes no first-read rate ("a significant increase in the
# latency of I/O operations the first time each block is accessed", EBS user guide, "Initialize Amazon EBS
# volumes"); a minute for the few GB the two Python starts read (torch, torch-neuronx and their libraries).
SNAPSHOT_LAZY_RESTORE_S = 60
# How a new node comes by the image, and its seconds.
PULLED, SNAPSHOT, SNAPSHOT_FSR = "image pulled", "snapshot", "snapshot + FSR"
IMAGE_ON_NEW_NODE_S = {PULLED: IMAGE_PULL_S, SNAPSHOT: SNAPSHOT_LAZY_RESTORE_S, SNAPSHOT_FSR: SNAPSHOT_FAST_RESTORE_S}
# A serving pod is created gated (common/activation.py): for a key already published, the activator lifts the
# gate at its next look for gated pods, at most this long after the pod appears (then the node launch starts).
ACTIVATION_S = activation.INTERVAL_SECONDS
# Python start: importing torch, transformers, diffusers (and torch-neuronx on the nodes). Assumption.
PYTHON_START_S = 15
# The graph volumes set Mountpoint's throughput target to the serving types' network figure (infra/storage.py,
# catalog.mountpoint_gbps: what Mountpoint would target itself had IMDS told it the type; 10 Gbps where it
# cannot tell, mount-s3 --help, --maximum-throughput-gbps). The budget reads at that target, or at
# what the pod's verified copy keeps up with if that is less: its MAX_READERS readers, two per core, keep
# MAX_READERS / 2 cores busy, and the copy costs 0.97 CPU-seconds per GB (python -m bench.cold_start: 1.936
# CPU-seconds for 2 GB, below), so about 8.3 GB/s (66 Gbps).
VERIFIED_COPY_CPU_S_PER_GB = 1.936 / 2
VERIFIED_COPY_GBPS = MAX_READERS / 2 / VERIFIED_COPY_CPU_S_PER_GB * 8
# Loading the NEFFs and the weight shards onto the NeuronCores (NxDModel.load, set_weights, to_neuron; completed by
# the first forward). Assumption: no Neuron hardware here and no published figure; ~0.5 GB/s.
GRAPH_LOAD_S = 70
# One warm-up generation. The server warms up with one step; the walkthrough's P50 for 10 steps
# (shared/reference/NOTES.md) bounds it from above. Milliseconds, by family and image tokens.
WALKTHROUGH_P50_MS = {"trn1": {"256x144": 588, "1024x576": 3129}, "inf2": {"256x144": 3076, "1024x576": 9081}}
# trn1n has trn1's chips; trn2 is faster than trn1, so trn1's numbers bound it.
WARM_UP_FAMILY = {"trn1": "trn1", "trn1n": "trn1", "trn2": "trn1", "inf2": "inf2"}

# The goals on paper: a pod on a node that is up (issue 11), and a pod that needs a new node (issue 21).
ON_RUNNING_NODE_GOAL_S = 3 * 60
ON_NEW_NODE_GOAL_S = 4 * 60
# The startup probe allows this multiple of the in-container budget: its read and load terms are
# assumptions, and a pod killed just before it would have been ready re-reads everything.
STARTUP_PROBE_MARGIN = 3

BUDGET_SHAPES = ("256x144", "1024x576")
# The serving pools of the dev and prod stacks.
BUDGET_POOLS = (("trn1.32xlarge",), ("inf2.24xlarge", "inf2.48xlarge"))


def warm_up_seconds(family: str, shape: Shape) -> float:
    """The walkthrough's 10-step P50 for this family, interpolated linearly in image tokens."""
    measured = WALKTHROUGH_P50_MS[WARM_UP_FAMILY[family]]
    (small_tokens, small_ms), (large_tokens, large_ms) = sorted(
        (parse_shape(name).image_tokens, ms) for name, ms in measured.items())
    slope = (large_ms - small_ms) / (large_tokens - small_tokens)
    return max(small_ms, small_ms + slope * (shape.image_tokens - small_tokens)) / 1000


def artifact_read_seconds(instance_types: tuple[str, ...]) -> float:
    """The artifact read on a pool of these types: at Mountpoint's target for the slowest, or at what the
    verified copy keeps up with, whichever is slower."""
    return ARTIFACT_GB * 8 / min(catalog.mountpoint_gbps(instance_types), VERIFIED_COPY_GBPS)


@dataclass(frozen=True)
class Budget:
    instance_types: tuple[str, ...]
    shape: Shape
    steps: dict[str, float]  # step -> seconds, in the order they happen

    # Steps only a pod on a node that was just launched pays: an up node already holds the image,
    # which every Neuron pod of the stack shares.
    NEW_NODE_STEPS = ("node launch", "image on node")

    @property
    def in_container(self) -> float:
        """From the server container's start to /readyz: what the startup probe has to allow."""
        return sum(self.steps[step] for step in ("server start", "artifact read", "graph load", "warm-up"))

    @property
    def on_running_node(self) -> float:
        return sum(seconds for step, seconds in self.steps.items() if step not in self.NEW_NODE_STEPS)

    @property
    def on_new_node(self) -> float:
        return sum(self.steps.values())

    def on_new_node_with(self, image: str) -> float:
        """On a new node that comes by the image as `image` says (a key of IMAGE_ON_NEW_NODE_S)."""
        return self.on_new_node - self.steps["image on node"] + IMAGE_ON_NEW_NODE_S[image]


def budget(instance_types: tuple[str, ...], shape: Shape, fast_snapshot_restore: bool = True) -> Budget:
    """The budget of a serving pod of `shape` on a pool of these instance types (one family) whose new node
    restores the image-cache snapshot, fast or lazily."""
    return Budget(instance_types, shape, {
        "activation": ACTIVATION_S,
        "node launch": NODE_LAUNCH_S,
        "image on node": IMAGE_ON_NEW_NODE_S[SNAPSHOT_FSR if fast_snapshot_restore else SNAPSHOT],
        "server start": PYTHON_START_S,
        "artifact read": artifact_read_seconds(instance_types),
        "graph load": GRAPH_LOAD_S,
        "warm-up": warm_up_seconds(catalog.family_of(instance_types[0]), shape),
    })


def startup_probe_seconds(instance_types: tuple[str, ...], shape: Shape) -> int:
    """How long the startup probe lets a serving container take to become ready."""
    return math.ceil(budget(instance_types, shape).in_container * STARTUP_PROBE_MARGIN)


def scale_up_period_seconds(instance_types: tuple[str, ...], shape: Shape, fast_snapshot_restore: bool) -> int:
    """The HPA's scale-up period: how long pods it adds take to serve when they need a new node.

    Within one period the HPA adds at most what its policies allow; only after it have those
    pods' capacity in the metric, so a shorter period would keep adding for load they will take.
    """
    return math.ceil(budget(instance_types, shape, fast_snapshot_restore).on_new_node)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def budget_table() -> str:
    """The budget as the Markdown table docs/cold-start.md shows: the steps with the image-cache snapshot
    restored fast, then the totals on a node that is up and on a new node for each way it gets the image."""
    steps = list(budget(BUDGET_POOLS[0], parse_shape(BUDGET_SHAPES[0])).steps)
    header = ["instance types", "shape", *(f"{step} (s)" for step in steps), "node up",
              *(f"new node, {image}" for image in IMAGE_ON_NEW_NODE_S)]
    rows = []
    for pool in BUDGET_POOLS:
        for name in BUDGET_SHAPES:
            plan = budget(pool, parse_shape(name))
            totals = [(plan.on_running_node, ON_RUNNING_NODE_GOAL_S),
                      *((plan.on_new_node_with(image), ON_NEW_NODE_GOAL_S) for image in IMAGE_ON_NEW_NODE_S)]
            rows.append([", ".join(pool), name, *(f"{plan.steps[step]:.3g}" for step in steps),
                         *(f"{_minutes(total)} {'ok' if total <= goal else 'over'}" for total, goal in totals)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


if __name__ == "__main__":
    print(budget_table())
