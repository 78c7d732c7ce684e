"""Instance facts the config validation, the sizing model, the node pools and the graph volumes rely on (the
Neuron families, the CPU types device-less compiles run on), and the list prices the capacity table
(planning/capacity.py) multiplies them by."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NeuronInstance:
    name: str
    devices: int
    cores_per_device: int
    vcpus: int
    memory_gib: int
    # The figure Mountpoint targets on this type when it can read the type from IMDS, whole Gbps (mount-s3
    # takes an integer): what the graph volumes pass as --maximum-throughput-gbps (infra/storage.py).
    network_gbps: int
    # Local NVMe, GB; 0: EBS only. With the EC2NodeClass's RAID0 policy it holds the node's ephemeral storage
    # (images, emptyDirs), else the root volume does (ROOT_VOLUME_GIB).
    instance_store_gb: int


# Instance families Karpenter may launch for Neuron work: devices, NeuronCores per device, and the
# host's vCPUs, GiB of memory and instance store (EC2's published sizes). trn2 counts logical cores at LNC 2
# (its default): 8 physical cores per device run as 4, and the device plugin advertises those 4. Network:
# Mountpoint's own table (github.com/awslabs/mountpoint-s3 mountpoint-s3-fs/src/autoconfigure/
# instance_throughput.rs, generated from the EC2 API on 2026-08-05), rounded down; trn2.3xlarge is not in it,
# so Mountpoint's default for an unknown type, MOUNTPOINT_DEFAULT_GBPS.
MOUNTPOINT_DEFAULT_GBPS = 10
NEURON_FAMILIES: dict[str, tuple[NeuronInstance, ...]] = {
    "trn1": (NeuronInstance("trn1.2xlarge", 1, 2, 8, 32, 12, 474),
             NeuronInstance("trn1.32xlarge", 16, 2, 128, 512, 800, 7600)),
    "trn1n": (NeuronInstance("trn1n.32xlarge", 16, 2, 128, 512, 1600, 7600),),
    "trn2": (NeuronInstance("trn2.3xlarge", 1, 4, 12, 128, MOUNTPOINT_DEFAULT_GBPS, 470),
             NeuronInstance("trn2.48xlarge", 16, 4, 192, 2048, 3200, 7600)),
    "inf2": (
        NeuronInstance("inf2.xlarge", 1, 2, 4, 16, 15, 0),
        NeuronInstance("inf2.8xlarge", 1, 2, 32, 128, 25, 0),
        NeuronInstance("inf2.24xlarge", 6, 2, 96, 384, 50, 0),
        NeuronInstance("inf2.48xlarge", 12, 2, 192, 768, 100, 0),
    ),
}
# The root volume of every Karpenter node (infra/karpenter.py's EC2NodeClass): a node's ephemeral storage
# where it has no instance store (inf2).
ROOT_VOLUME_GIB = 300


@dataclass(frozen=True)
class CpuInstance:
    name: str
    vcpus: int
    memory_gib: int
    network_gbps: int  # as NeuronInstance's


# What device-less compile Jobs run on in the cpu NodePool (compile.pool `cpu`): general purpose, 4 GiB per
# vCPU, a generation the cpu NodePool launches. The sizing model picks the smallest whose memory holds one
# compile (infra/sizing.py); its pods select the family. EC2's published sizes; network as above.
CPU_COMPILE_FAMILY = "m7i"
CPU_COMPILE_INSTANCES: tuple[CpuInstance, ...] = (
    CpuInstance("m7i.large", 2, 8, 12), CpuInstance("m7i.xlarge", 4, 16, 12), CpuInstance("m7i.2xlarge", 8, 32, 12),
    CpuInstance("m7i.4xlarge", 16, 64, 12), CpuInstance("m7i.8xlarge", 32, 128, 12),
    CpuInstance("m7i.12xlarge", 48, 192, 18), CpuInstance("m7i.16xlarge", 64, 256, 25),
    CpuInstance("m7i.24xlarge", 96, 384, 37), CpuInstance("m7i.48xlarge", 192, 768, 50),
)
# What the capacity table prices the always-on cpu node at (Prometheus and the activator: infra/monitoring.py,
# infra/activation.py), and the cpu NodePool's limits count. Karpenter picks the cheapest c, m or r type that
# holds them; this is one of that size.
CPU_PLATFORM_INSTANCE = "m7i.large"


# HBM each (logical) NeuronCore holds: NeuronCore-v2 (trn1, trn1n, inf2) has 16 GiB, 32 GiB per
# device; a trn2 device's 96 GiB over its 4 logical cores (neuron-flux-apis.md section 8).
HBM_GIB_PER_CORE: dict[str, int] = {"trn1": 16, "trn1n": 16, "trn2": 24, "inf2": 16}

# On the 16-device Trainium types the scheduler extension only places contiguous groups of
# 1, 4, 8 or 16 devices; inf2 accepts any contiguous count up to the instance's devices.
TRAINIUM_DEVICE_GROUPS = (1, 4, 8, 16)


def instance(name: str) -> NeuronInstance:
    for family_instances in NEURON_FAMILIES.values():
        for candidate in family_instances:
            if candidate.name == name:
                return candidate
    raise KeyError(name)


def mountpoint_gbps(instance_types: tuple[str, ...]) -> int:
    """The throughput a Mountpoint volume mounted on any of these types may target: the smallest figure."""
    figures = {candidate.name: candidate.network_gbps
               for candidate in (*CPU_COMPILE_INSTANCES, *(i for family in NEURON_FAMILIES.values() for i in family))}
    return min(figures[name] for name in instance_types)


def cpu_instance(name: str) -> CpuInstance:
    return next(candidate for candidate in CPU_COMPILE_INSTANCES if candidate.name == name)


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
# plane in standard support, one NAT gateway without its data charges, gp3 storage per GiB-hour: $0.08 per
# GiB-month / 730 hours, at its included 3000 IOPS and 125 MB/s). The same in us-east-1 and us-west-2 for every
# item here. Not a bill: no Savings Plans, spot or data transfer.
# trn2 has no entry (NOT_LISTED_REASONS says why): the capacity table says "not listed" rather than guess.
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
GP3_GIB = "gp3 GiB"
_US_LIST_PRICES = {
    "trn1.2xlarge": 1.34375, "trn1.32xlarge": 21.50, "trn1n.32xlarge": 24.78,
    "inf2.xlarge": 0.7582, "inf2.8xlarge": 1.96786, "inf2.24xlarge": 6.49063, "inf2.48xlarge": 12.98127,
    "m7i.large": 0.1008, "m7i.xlarge": 0.2016, "m7i.2xlarge": 0.4032, "m7i.4xlarge": 0.8064, "m7i.8xlarge": 1.6128,
    "m7i.12xlarge": 2.4192, "m7i.16xlarge": 3.2256, "m7i.24xlarge": 4.8384, "m7i.48xlarge": 9.6768,
    EKS_CONTROL_PLANE: 0.10, NAT_GATEWAY: 0.045, GP3_GIB: 0.08 / 730, FAST_SNAPSHOT_RESTORE: 0.75,
}
ON_DEMAND_USD_PER_HOUR: dict[str, dict[str, float]] = {"us-east-1": _US_LIST_PRICES, "us-west-2": _US_LIST_PRICES}


# Why a family has no list price here, whatever the region: what the capacity table prints beside "not listed".
NOT_LISTED_REASONS = {
    "trn2": ("no on-demand list price committed for trn2: the on-demand price data at hand, Karpenter v1.14.1's "
             "fallback prices from the AWS Price List API (github.com/aws/karpenter-provider-aws "
             "pkg/providers/pricing/zz_generated.pricing_aws.go, us-east-1, generated 2026-07-20), lists no trn2 "
             "type; and most trn2 capacity is bought as Capacity Blocks for ML, whose reservation fee follows supply "
             "and demand (https://aws.amazon.com/ec2/capacityblocks/pricing/), or as On-Demand Capacity Reservations, "
             "billed at the on-demand rate whether instances run in them or not"),
}


def hourly_price(region: str, item: str) -> float | None:
    """The list price of an instance type (or EKS_CONTROL_PLANE, NAT_GATEWAY, GP3_GIB, FAST_SNAPSHOT_RESTORE) in a
    region; None if not listed."""
    return ON_DEMAND_USD_PER_HOUR.get(region, {}).get(item)


def not_listed_reason(region: str, item: str) -> str:
    """Why hourly_price has no price for an item in a region."""
    reason = NOT_LISTED_REASONS.get(family_of(item))
    if reason is not None:
        return reason
    if region not in ON_DEMAND_USD_PER_HOUR:
        return (f"no list prices committed for {region}: infra/catalog.py holds those of "
                f"{', '.join(sorted(ON_DEMAND_USD_PER_HOUR))}")
    return "no list price committed for it"
