"""The capacity table of a rendered stack: what each Neuron pod requests, how many fit a node of each
instance type its pool may launch, the nodes at min and max replicas, and their $/hour at on-demand
list prices (infra/catalog.py). `python -m planning` writes it to plans/<stack>/capacity.md, so every PR
shows what a change costs.

Everything is read from the rendering (the Jobs, Deployments, autoscalers, NodePools, the system node
group, NAT gateways and the cluster), not from the config: the table is what would be deployed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from common.neuron import flux_world_size
from infra import catalog, sizing
from infra.naming import ACTIVATOR, COMPILE, NEURON_DEVICE_RESOURCE, SERVE
from planning import REFRESH_COMMAND
from planning.checks.references import INSTANCE_FAMILY_LABEL, node_labels
from planning.offline import Rendering, manifest

FILENAME = "capacity.md"
JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
NAT_GATEWAY = "aws:ec2/natGateway:NatGateway"
FAST_SNAPSHOT_RESTORE = "aws:ebs/fastSnapshotRestore:FastSnapshotRestore"
CLUSTER = "eks:index:Cluster"


@dataclass(frozen=True)
class PodRequest:
    """What one Neuron pod asks for; pods of every shape asking the same are one row."""

    role: str
    nodepools: tuple[str, ...]  # those whose nodes its node selection accepts, by name
    instance_types: tuple[str, ...]
    tensor_parallel: int
    ranks: int  # one per (logical) NeuronCore: the TP degree, or on trn2 NxD Inference's world
    devices: int
    cpu: float
    memory_gib: float
    ephemeral_gib: float  # of the node's disk
    scratch_gib: int | None  # a gp3 volume of its own, if any

    @property
    def cores(self) -> int:
        return self.devices * catalog.cores_per_device(catalog.family_of(self.instance_types[0]))


@dataclass(frozen=True)
class CpuJob:
    """A device-less Job on the cpu NodePool (the weights Job, graphs Jobs with compile.pool cpu): the node type
    of its family that holds it, and its scratch volume."""

    what: str  # "weights", or the shape
    instance_type: str
    cpu: float
    memory_gib: float
    scratch_gib: int

    def price(self, region: str) -> float | None:
        node, gib = catalog.hourly_price(region, self.instance_type), catalog.hourly_price(region, catalog.GP3_GIB)
        return None if node is None or gib is None else node + gib * self.scratch_gib


@dataclass(frozen=True)
class Fit:
    instance_type: str
    pods: int
    limited_by: str


@dataclass(frozen=True)
class Mix:
    """Nodes of each instance type that hold a number of pods, the cheapest way."""

    nodes: tuple[tuple[str, int], ...]

    @property
    def count(self) -> int:
        return sum(count for _, count in self.nodes)

    @property
    def devices(self) -> int:
        return sum(catalog.instance(name).devices * count for name, count in self.nodes)

    def price(self, region: str) -> float | None:
        prices = [(catalog.hourly_price(region, name), count) for name, count in self.nodes]
        return None if any(price is None for price, _ in prices) else sum(price * count for price, count in prices)

    def __str__(self) -> str:
        return " + ".join(f"{count} x {name}" for name, count in self.nodes) or "0"


def _cpu(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "Ti": 1024.0}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _option(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def pods_per_node(request: PodRequest, instance_type: str) -> Fit:
    """How many such pods one node holds, and which resource runs out first: devices, CPU, memory, or the
    node's ephemeral storage (its instance store, or its root volume on a family without one: inf2)."""
    node = catalog.instance(instance_type)
    fits = {
        "devices": node.devices // request.devices,
        "cpu": math.floor((node.vcpus - sizing.NODE_RESERVED_CPU) / request.cpu),
        "memory": math.floor((node.memory_gib - sizing.NODE_RESERVED_BYTES / sizing.GIB) / request.memory_gib),
        "ephemeral storage": math.floor(sizing.node_ephemeral_gib(instance_type) / request.ephemeral_gib),
    }
    limited_by = min(fits, key=lambda resource: fits[resource])
    return Fit(instance_type, max(0, fits[limited_by]), limited_by)


def cheapest_mix(request: PodRequest, pods: int, region: str) -> Mix:
    """The nodes that hold `pods` at the lowest list price (the fewest nodes where a type has no
    price): what Karpenter's bin-packing of pending pods aims for."""
    fits = [fit for fit in (pods_per_node(request, name) for name in request.instance_types) if fit.pods]
    prices = {fit.instance_type: catalog.hourly_price(region, fit.instance_type) for fit in fits}
    priced = all(price is not None for price in prices.values())

    def weight(name: str) -> float:
        return prices[name] if priced else 1.0  # type: ignore[return-value]

    best: list[tuple[float, tuple[tuple[str, int], ...]]] = [(0.0, ())]
    for remaining in range(1, pods + 1):
        options = []
        for fit in fits:
            cost, nodes = best[max(0, remaining - fit.pods)]
            counts = dict(nodes)
            counts[fit.instance_type] = counts.get(fit.instance_type, 0) + 1
            options.append((cost + weight(fit.instance_type), tuple(sorted(counts.items()))))
        best.append(min(options))
    return Mix(best[pods][1])


@dataclass
class _Group:
    request: PodRequest
    shapes: list[str]
    min_pods: int
    max_pods: int


def _scratch_gib(pod: dict) -> int | None:
    """The size of a pod's gp3 scratch volume (a generic ephemeral volume), if it has one."""
    for volume in pod.get("volumes", []):
        if "ephemeral" in volume:
            return int(_gib(volume["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]))
    return None


def _pod_specs(rendering: Rendering) -> Iterator[tuple[str, str, dict]]:
    """(role, name, pod spec) of every Job and Deployment: Jobs compile, Deployments serve or activate."""
    for type_, role in ((JOB, COMPILE), (DEPLOYMENT, SERVE)):
        for resource in rendering.of_type(type_):
            obj = manifest(resource)
            yield role, obj["metadata"]["name"], obj["spec"]["template"]["spec"]


def _groups(rendering: Rendering) -> list[_Group]:
    nodepools = {}
    for resource in sorted(rendering.of_type(NODEPOOL), key=lambda pool: manifest(pool)["metadata"]["name"]):
        labels = node_labels(manifest(resource))
        if "node.kubernetes.io/instance-type" in labels:  # the Neuron pools name their types
            nodepools[manifest(resource)["metadata"]["name"]] = labels
    replicas = {}
    for resource in rendering.of_type(HPA):
        spec = manifest(resource)["spec"]
        replicas[spec["scaleTargetRef"]["name"]] = (spec["minReplicas"], spec["maxReplicas"])
    groups: dict[PodRequest, _Group] = {}
    for role, name, pod in _pod_specs(rendering):
        container = pod["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        if NEURON_DEVICE_RESOURCE not in limits:
            continue
        accepted = tuple(name for name, labels in nodepools.items()
                         if all(value in labels.get(key, ()) for key, value in pod["nodeSelector"].items()))
        # The pools of one family launch the same instance types.
        instance_types = tuple(sorted(nodepools[accepted[0]]["node.kubernetes.io/instance-type"]))
        command = container["command"]
        tensor_parallel = int(_option(command, "--tp-degree"))
        ranks = flux_world_size(tensor_parallel, int(_option(command, "--context-parallel") or 1),
                                int(_option(command, "--cfg-parallel") or 1))
        request = PodRequest(role, accepted, instance_types, tensor_parallel, ranks,
                             int(limits[NEURON_DEVICE_RESOURCE]), _cpu(limits["cpu"]), _gib(limits["memory"]),
                             _gib(requests["ephemeral-storage"]), _scratch_gib(pod))
        # A Job runs one pod; a Deployment what its autoscaler keeps.
        low, high = replicas.get(name, (1, 1)) if role == SERVE else (1, 1)
        group = groups.setdefault(request, _Group(request, [], 0, 0))
        # From the command: a Job's name also carries its artifact key.
        group.shapes.append(_option(container["command"], "--shape"))
        group.min_pods += low
        group.max_pods += high
    return list(groups.values())


def _cpu_jobs(rendering: Rendering) -> list[CpuJob]:
    """The device-less Jobs, each on the smallest type of the family it selects that holds it (as Karpenter
    would launch it, and as infra/sizing.py sized it)."""
    jobs = []
    for role, _, pod in _pod_specs(rendering):
        family = (pod.get("nodeSelector") or {}).get(INSTANCE_FAMILY_LABEL)
        if role != COMPILE or family is None:
            continue
        container = pod["containers"][0]
        cpu, memory = _cpu(container["resources"]["limits"]["cpu"]), _gib(container["resources"]["limits"]["memory"])
        node = next(node for node in catalog.CPU_COMPILE_INSTANCES if catalog.family_of(node.name) == family
                    and node.vcpus - sizing.CPU_NODE_RESERVED_CPU >= cpu
                    and node.memory_gib - sizing.CPU_NODE_RESERVED_BYTES / sizing.GIB >= memory)
        what = _option(container["command"], "--shape") or "weights"
        jobs.append(CpuJob(what, node.name, cpu, memory, _scratch_gib(pod) or 0))
    return sorted(jobs, key=lambda job: (job.what != "weights", job.what))


def _pods(group: _Group) -> str:
    return str(group.min_pods) if group.min_pods == group.max_pods else f"{group.min_pods}-{group.max_pods}"


def _money(value: float | None) -> str:
    return "not listed" if value is None else f"{value:,.2f}"


def _sum(values: list[float | None]) -> float | None:
    return None if any(value is None for value in values) else sum(values)  # type: ignore[arg-type]


def _platform(rendering: Rendering, region: str) -> tuple[str, float | None, float | None]:
    """The always-on part: control plane, system nodes (desired and max size), NAT gateways."""
    clusters = len(rendering.of_type(CLUSTER))
    nats = len(rendering.of_type(NAT_GATEWAY))
    parts, low, high = [f"{clusters} EKS control plane"], [], []
    control = catalog.hourly_price(region, catalog.EKS_CONTROL_PLANE)
    low.append(None if control is None else control * clusters)
    high.append(low[-1])
    for group in rendering.of_type(NODE_GROUP):
        (instance_type,) = group.inputs["instanceTypes"]
        scaling = group.inputs["scalingConfig"]
        price = catalog.hourly_price(region, instance_type)
        parts.append(f"{scaling['desiredSize']}-{scaling['maxSize']} x {instance_type} system nodes")
        low.append(None if price is None else price * scaling["desiredSize"])
        high.append(None if price is None else price * scaling["maxSize"])
    if nats:
        nat = catalog.hourly_price(region, catalog.NAT_GATEWAY)
        parts.append(f"{nats} NAT gateways (+ data)")
        low.append(None if nat is None else nat * nats)
        high.append(low[-1])
    if any(manifest(resource)["metadata"]["name"] == ACTIVATOR for resource in rendering.of_type(DEPLOYMENT)):
        parts.append(f"1 x {catalog.CPU_PLATFORM_INSTANCE} cpu node (Prometheus, the activator)")
        low.append(catalog.hourly_price(region, catalog.CPU_PLATFORM_INSTANCE))
        high.append(low[-1])
    return ", ".join(parts), _sum(low), _sum(high)


def _fast_snapshot_restore(rendering: Rendering, region: str) -> tuple[int, float | None]:
    """The zones the image-cache snapshot is fast-restored in (coldStart.fastSnapshotRestore), and their $/hour."""
    zones = len(rendering.of_type(FAST_SNAPSHOT_RESTORE))
    price = catalog.hourly_price(region, catalog.FAST_SNAPSHOT_RESTORE)
    return zones, None if price is None else price * zones


def _priced_items(rendering: Rendering, groups: list[_Group], cpu_jobs: list[CpuJob]) -> list[str]:
    """Every item the table prices, in the order it shows them."""
    items = [name for group in groups for name in group.request.instance_types]
    items += [job.instance_type for job in cpu_jobs] + ([catalog.GP3_GIB] if cpu_jobs else [])
    items.append(catalog.EKS_CONTROL_PLANE)
    items += [group.inputs["instanceTypes"][0] for group in rendering.of_type(NODE_GROUP)]
    if rendering.of_type(NAT_GATEWAY):
        items.append(catalog.NAT_GATEWAY)
    if any(manifest(resource)["metadata"]["name"] == ACTIVATOR for resource in rendering.of_type(DEPLOYMENT)):
        items.append(catalog.CPU_PLATFORM_INSTANCE)
    if rendering.of_type(FAST_SNAPSHOT_RESTORE):
        items.append(catalog.FAST_SNAPSHOT_RESTORE)
    return list(dict.fromkeys(items))


def _not_listed(region: str, items: list[str]) -> list[str]:
    """A section saying why each unpriced item is "not listed", the items of one reason together."""
    reasons: dict[str, list[str]] = {}
    for item in items:
        if catalog.hourly_price(region, item) is None:
            reasons.setdefault(catalog.not_listed_reason(region, item), []).append(item)
    if not reasons:
        return []
    return ["", "## Not listed", "", *(f"- {', '.join(unpriced)}: {reason}." for reason, unpriced in reasons.items())]


def table(rendering: Rendering) -> str:
    """plans/<stack>/capacity.md: Markdown, the same bytes on every run."""
    region = rendering.outputs["region"]
    groups = _groups(rendering)
    lines = [
        f"# Capacity and cost: {rendering.stack} ({region})",
        "",
        f"Written by `{REFRESH_COMMAND}` from the rendered objects (planning/capacity.py);",
        "the requests come from the sizing model (infra/sizing.py). $/hour: on-demand list prices as of",
        f"{catalog.PRICES_AS_OF}, Linux, {region}; not a bill (no spot, Savings Plans, data transfer, S3 or",
        "system volumes; scratch volumes counted).",
        "Sources: " + ", ".join(catalog.PRICE_SOURCES) + ".",
        "",
        "## Neuron pods",
        "",
        "Ranks: one per NeuronCore (logical on trn2, at LNC 2): the TP degree, or on trn2 NxD Inference's world "
        "(twice the TP degree with context or CFG parallelism).",
        "",
        "| pod | shapes | NodePool | TP | ranks | NeuronCores | devices | idle cores | cpu | memory | node disk "
        "| scratch | pods (min-max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for group in groups:
        request = group.request
        scratch = f"{request.scratch_gib} GiB gp3" if request.scratch_gib else "-"
        lines.append(
            f"| {request.role} | {', '.join(sorted(group.shapes))} | {', '.join(request.nodepools)} "
            f"| {request.tensor_parallel} | {request.ranks} | {request.cores} | {request.devices} "
            f"| {request.cores - request.ranks} "
            f"| {request.cpu:g} | {request.memory_gib:g} GiB | {request.ephemeral_gib:g} GiB | {scratch} "
            f"| {_pods(group)} |")
    lines += ["", "## Pods per node", "",
              "Node disk: what pods may request of a node's ephemeral storage, its instance store or, without one "
              "(inf2), its root volume, less the image and the kubelet's eviction reserve (infra/sizing.py).", "",
              "| pod | instance type | devices | node disk | pods per node | limited by | $/hour per node "
              "| $/hour per pod |",
              "|---|---|---|---|---|---|---|---|"]
    for group in groups:
        for name in group.request.instance_types:
            fit = pods_per_node(group.request, name)
            price = catalog.hourly_price(region, name)
            per_pod = None if price is None or not fit.pods else price / fit.pods
            lines.append(f"| {group.request.role} | {name} | {catalog.instance(name).devices} "
                         f"| {sizing.node_ephemeral_gib(name)} GiB | {fit.pods} | {fit.limited_by} | {_money(price)} "
                         f"| {_money(per_pod)} |")
    cpu_jobs = _cpu_jobs(rendering)
    if cpu_jobs:
        lines += ["", "## Device-less Jobs (cpu NodePool)", "",
                  "Each on a node of its own, of the type that holds it, with its scratch on a gp3 volume of its own "
                  "(deleted with its pod); while it runs.", "",
                  "| Job | instance type | cpu | memory | scratch | $/hour |", "|---|---|---|---|---|---|"]
        for job in cpu_jobs:
            lines.append(f"| {job.what} | {job.instance_type} | {job.cpu:g} | {job.memory_gib:g} GiB "
                         f"| {job.scratch_gib} GiB gp3 | {_money(job.price(region))} |")
    lines += ["", "## Nodes and $/hour", "",
              "Each row on nodes of its own (compile and serving pods may share nodes, so this is an upper bound).", "",
              "| what | nodes at min | $/hour at min | nodes at max | $/hour at max |", "|---|---|---|---|---|"]
    serving_low, serving_high, compile_cost, node_devices = [], [], [], {}
    for group in groups:
        low = cheapest_mix(group.request, group.min_pods, region)
        high = cheapest_mix(group.request, group.max_pods, region)
        what = (f"{group.request.role}: {_pods(group)} pods" if group.request.role == SERVE
                else f"{group.request.role} Jobs while they run: {_pods(group)}")
        lines.append(f"| {what} | {low} | {_money(low.price(region))} | {high} | {_money(high.price(region))} |")
        (serving_low if group.request.role == SERVE else compile_cost).append(low.price(region))
        if group.request.role == SERVE:
            serving_high.append(high.price(region))
        node_devices[group.request] = (low.devices, high.devices)
    if cpu_jobs:
        nodes = Mix(tuple(sorted(Counter(job.instance_type for job in cpu_jobs).items())))
        scratch = sum(job.scratch_gib for job in cpu_jobs)
        price = _sum([job.price(region) for job in cpu_jobs])
        lines.append(f"| device-less Jobs while they run: {len(cpu_jobs)} | {nodes} + {scratch} GiB gp3 "
                     f"| {_money(price)} | {nodes} + {scratch} GiB gp3 | {_money(price)} |")
        compile_cost.append(price)
    platform, platform_low, platform_high = _platform(rendering, region)
    lines.append(f"| platform: {platform} | | {_money(platform_low)} | | {_money(platform_high)} |")
    restore_zones, restore = _fast_snapshot_restore(rendering, region)
    if restore_zones:
        lines.append(f"| image cache: fast snapshot restore in {restore_zones} zones | | {_money(restore)} | "
                     f"| {_money(restore)} |")
    image_cache = [restore] if restore_zones else []
    total_low = _sum([*serving_low, platform_low, *image_cache])
    total_high = _sum([*serving_high, platform_high, *image_cache])
    lines.append(f"| **serving and platform** | | **{_money(total_low)}** | | **{_money(total_high)}** |")
    with_compile_low = None if total_low is None else _sum([total_low, *compile_cost])
    with_compile_high = None if total_high is None else _sum([total_high, *compile_cost])
    lines.append(f"| **while compiling too** | | **{_money(with_compile_low)}** | | **{_money(with_compile_high)}** |")
    lines += _not_listed(region, _priced_items(rendering, groups, cpu_jobs))
    lines += ["", "## NodePool limits", "",
              "Karpenter counts the devices of the nodes it launches against a NodePool's limit, and fills the "
              "pools a pod may use by weight: each set of pools that some pod may use holds, at max, the pods "
              "that may use only those pools and, at min, the pods that may use others too (a family's "
              "on-demand base holds its graphs Jobs and the serving pods at min; with its Spot pool, all of "
              "them at max).", "",
              "| NodePools | limit (devices) | node devices, by pod | within the limit |", "|---|---|---|---|"]
    limits = {manifest(resource)["metadata"]["name"]: int(manifest(resource)["spec"]["limits"][NEURON_DEVICE_RESOURCE])
              for resource in rendering.of_type(NODEPOOL)
              if NEURON_DEVICE_RESOURCE in manifest(resource)["spec"].get("limits", {})}
    for pools in dict.fromkeys(group.request.nodepools for group in groups):
        limit = sum(limits[name] for name in pools)
        held = []
        for group in groups:
            low, high = node_devices[group.request]
            if set(group.request.nodepools) <= set(pools):
                held.append((f"{group.request.role} {high} at max", high))
            elif set(group.request.nodepools) & set(pools):
                held.append((f"{group.request.role} {low} at min", low))
        total = sum(devices for _, devices in held)
        lines.append(f"| {' + '.join(pools)} | {limit} | {', '.join(text for text, _ in held)} "
                     f"| {'yes' if total <= limit else f'no: {total} needed'} |")
    return "\n".join(lines) + "\n"
