"""Neuron instance facts the config validation and the node pools rely on."""

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
# host's vCPUs and GiB of memory (EC2's published sizes).
NEURON_FAMILIES: dict[str, tuple[NeuronInstance, ...]] = {
    "trn1": (NeuronInstance("trn1.2xlarge", 1, 2, 8, 32), NeuronInstance("trn1.32xlarge", 16, 2, 128, 512)),
    "trn1n": (NeuronInstance("trn1n.32xlarge", 16, 2, 128, 512),),
    "trn2": (NeuronInstance("trn2.3xlarge", 1, 8, 12, 128), NeuronInstance("trn2.48xlarge", 16, 8, 192, 2048)),
    "inf2": (
        NeuronInstance("inf2.xlarge", 1, 2, 4, 16),
        NeuronInstance("inf2.8xlarge", 1, 2, 32, 128),
        NeuronInstance("inf2.24xlarge", 6, 2, 96, 384),
        NeuronInstance("inf2.48xlarge", 12, 2, 192, 768),
    ),
}

# On the 16-device Trainium types the scheduler extension only places contiguous groups of
# 1, 4, 8 or 16 devices; inf2 accepts any contiguous count up to the instance's devices.
TRAINIUM_DEVICE_GROUPS = (1, 4, 8, 16)


def instance(name: str) -> NeuronInstance:
    for family_instances in NEURON_FAMILIES.values():
        for candidate in family_instances:
            if candidate.name == name:
                return candidate
    raise KeyError(name)


def family_of(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def valid_device_counts(family: str, instance_types: tuple[str, ...]) -> tuple[int, ...]:
    """Device counts one pod may request on a pool of these instance types."""
    largest = max(instance(name).devices for name in instance_types)
    if family == "inf2":
        return tuple(range(1, largest + 1))
    return tuple(count for count in TRAINIUM_DEVICE_GROUPS if count <= largest)
