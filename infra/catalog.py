"""Neuron instance facts the config validation, the sizing model and the node pools rely on, and the
list prices the capacity table (planning/capacity.py) multiplies them by."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NeuronInstance:
    name: str
    devices: int
    cores_per_device: int
    vcpus: int
    memory_gib: int


# Instance families Karpenter may launch for Neuron work: devices, NeuronCores per device, and the
# host's vCPUs and GiB of memory (EC2's published sizes). trn2 counts logical cores at LNC 2 (its
# default): 8 physical cores per device run as 4, and the device plugin advertises those 4.
NEURON_FAMILIES: dict[str, tuple[NeuronInstance, ...]] = {
    "trn1": (NeuronInstance("trn1.2xlarge", 1, 2, 8, 32), NeuronInstance("trn1.32xlarge", 16, 2, 128, 512)),
    "trn1n": (NeuronInstance("trn1n.32xlarge", 16, 2, 128, 512),),
    "trn2": (NeuronInstance("trn2.3xlarge", 1, 4, 12, 128), NeuronInstance("trn2.48xlarge", 16, 4, 192, 2048)),
    "inf2": (
        NeuronInstance("inf2.xlarge", 1, 2, 4, 16),
        NeuronInstance("inf2.8xlarge", 1, 2, 32, 128),
        NeuronInstance("inf2.24xlarge", 6, 2, 96, 384),
        NeuronInstance("inf2.48xlarge", 12, 2, 192, 768),
    ),
}

# HBM each (logical) NeuronCore holds: NeuronCore-v2 (trn1, trn1n, inf2) has 16 GiB, 32 GiB per
# device; a trn2 device's 96 GiB over its 4 logical cores (neuron-flux-apis.md section 8).
HBM_GIB_PER_CORE: dict[str, int] = {"trn1": 16, "trn1n": 16, "trn2": 24, "inf2": 16}

# On the 16-device Trainium types the scheduler extension only places contiguous groups of
# 1, 4, 8 or 16 devices; inf2 accepts any contiguous count up to the instance's devices.
TRAINIUM_DEVICE_GROUPS = (1, 4, 8, 16)


# Each instance type's network bandwidth, Gbps, as EC2 publishes it (Amazon EC2 instance types, accelerated
# computing, network specifications; "up to" figures are the burst rate). What Mountpoint would target on
# the instance had it read the type from IMDS (docs/cold-start.md, "artifact read"). trn2.3xlarge has no
# entry: no figure verified here, so Mountpoint keeps its own default there.
NETWORK_GBPS: dict[str, float] = {
    "trn1.2xlarge": 12.5, "trn1.32xlarge": 800, "trn1n.32xlarge": 1600, "trn2.48xlarge": 3200,
    "inf2.xlarge": 15, "inf2.8xlarge": 25, "inf2.24xlarge": 50, "inf2.48xlarge": 100,
}


def instance(name: str) -> NeuronInstance:
    for family_instances in NEURON_FAMILIES.values():
        for candidate in family_instances:
            if candidate.name == name:
                return candidate
    raise KeyError(name)


def cores_per_device(family: str) -> int:
    return NEURON_FAMILIES[family][0].cores_per_device


def family_of(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def valid_device_counts(family: str, instance_types: tuple[str, ...]) -> tuple[int, ...]:
    """Device counts one pod may request on a pool of these instance types."""
    largest = max(instance(name).devices for name in instance_types)
    if family == "inf2":
        return tuple(range(1, largest + 1))
    return tuple(count for count in TRAINIUM_DEVICE_GROUPS if count <= largest)


# On-demand list prices, USD per hour, Linux, as of PRICES_AS_OF (EC2 instances, the EKS control
# plane in standard support, one NAT gateway without its data charges). The same in us-east-1 and
# us-west-2 for every item here. Not a bill: no Savings Plans, spot, data transfer or storage.
# trn2 has no entry (no verified list price in these regions): the capacity table says "not listed"
# rather than guess.
PRICES_AS_OF = "2025-06-01"
PRICE_SOURCES = ("https://aws.amazon.com/ec2/pricing/on-demand/", "https://aws.amazon.com/eks/pricing/",
                 "https://aws.amazon.com/vpc/pricing/", "https://aws.amazon.com/ebs/pricing/")
EKS_CONTROL_PLANE = "EKS control plane"
NAT_GATEWAY = "NAT gateway"
# EBS fast snapshot restore: one snapshot enabled in one zone for an hour (a "DSU-hour", billed per minute
# with an hour's minimum). $0.75, the us-east-1 figure of AWS's whitepaper "How AWS Pricing Works" (Amazon EBS
# section), not re-checked on the EBS pricing page at PRICES_AS_OF; us-west-2 taken as equal, as its other
# EBS list prices are.
FAST_SNAPSHOT_RESTORE = "EBS fast snapshot restore, per snapshot and zone"
_US_LIST_PRICES = {
    "trn1.2xlarge": 1.34375, "trn1.32xlarge": 21.50, "trn1n.32xlarge": 24.78,
    "inf2.xlarge": 0.7582, "inf2.8xlarge": 1.96786, "inf2.24xlarge": 6.49063, "inf2.48xlarge": 12.98127,
    "m7i.xlarge": 0.2016, "m7i.2xlarge": 0.4032,
    EKS_CONTROL_PLANE: 0.10, NAT_GATEWAY: 0.045, FAST_SNAPSHOT_RESTORE: 0.75,
}
ON_DEMAND_USD_PER_HOUR: dict[str, dict[str, float]] = {"us-east-1": _US_LIST_PRICES, "us-west-2": _US_LIST_PRICES}


def hourly_price(region: str, item: str) -> float | None:
    """The list price of an instance type (or EKS_CONTROL_PLANE, NAT_GATEWAY, FAST_SNAPSHOT_RESTORE) in a region;
    None if not listed."""
    return ON_DEMAND_USD_PER_HOUR.get(region, {}).get(item)
