"""The EC2 vCPU quotas a stack's NodePools may need: `python -m planning.quotas --stack STACK`.

EC2 limits running instances per account and region in vCPUs, one quota per instance class and
purchase option (On-Demand, Spot). A NodePool launches no node whose Neuron devices would take it
past its `maxDevices` (kubernetes-sigs/karpenter's scheduler drops such instance types,
`filterByRemainingResources`), so the most vCPUs it can hold is the best packing of its instance types into
that many devices (instance facts from infra/catalog.py). A pool allowed both On-Demand and Spot may
launch all of it as either, so each of those quotas must hold all of it (reserved capacity counts as
On-Demand); pools of one class add up. The cpu NodePool may hold its CPU limit of Standard instances,
on-demand. The system node group draws on that quota too, at most systemNodes.maxSize nodes of a type the config
leaves open (any general-purpose type, whose vCPUs infra/catalog.py does not list): not counted here, a few vCPUs
(dev: 4 x m7i.xlarge, 16) for the quota's headroom to hold.
Instances of the class that something else in the account runs count against the same quota: these
are the stack's needs alone. scripts/deploy compares them with the account's quotas before `pulumi up`.

Prints one line per quota: region, quota code, vCPUs needed and the quota's name, tab-separated.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from infra import catalog
from infra.config import NeuronPool, StackConfig, load_stack_config
from infra.karpenter import cpu_nodepool_spec
from planning.offline import stack_file_config, stack_names


@dataclass(frozen=True)
class Quota:
    code: str
    name: str


# Codes and names as Service Quotas lists them for service `ec2` (`aws service-quotas list-service-quotas
# --service-code ec2`); the Spot names are also those of
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html. Each is in vCPUs; Trn
# covers trn1, trn1n and trn2, Inf covers inf1 and inf2.
QUOTAS: dict[tuple[str, str], Quota] = {
    ("Trn", "on-demand"): Quota("L-2C3B7624", "Running On-Demand Trn instances"),
    ("Trn", "spot"): Quota("L-6B0D517C", "All Trn Spot Instance Requests"),
    ("Inf", "on-demand"): Quota("L-1945791B", "Running On-Demand Inf instances"),
    ("Inf", "spot"): Quota("L-B5D1601B", "All Inf Spot Instance Requests"),
    # The cpu NodePool's types (c, m, r, on-demand): the device-less compile Jobs, Prometheus and the activator.
    ("Standard", "on-demand"): Quota("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
}
QUOTA_CLASS = {"trn1": "Trn", "trn1n": "Trn", "trn2": "Trn", "inf2": "Inf"}
# Instances in a capacity reservation are On-Demand instances: they count against the On-Demand quota.
PURCHASE_OPTION = {"on-demand": "on-demand", "reserved": "on-demand", "spot": "spot"}


def vcpus_at_limit(pool: NeuronPool) -> int:
    """The most vCPUs the pool's nodes can hold with at most maxDevices devices among them."""
    instances = [catalog.instance(name) for name in pool.instance_types]
    # best[d]: the most vCPUs of nodes whose devices add up to at most d (an unbounded knapsack).
    best = [0] * (pool.max_devices + 1)
    for devices in range(1, pool.max_devices + 1):
        best[devices] = max([best[devices - 1]] + [best[devices - instance.devices] + instance.vcpus
                                                   for instance in instances if instance.devices <= devices])
    return best[pool.max_devices]


def needed_vcpus(config: StackConfig) -> dict[Quota, int]:
    """Each quota the stack's NodePools draw on, and the vCPUs they may need of it at their limits: the Neuron
    pools', and the cpu NodePool's CPU limit (on-demand only)."""
    needed: dict[Quota, int] = {}
    for pool in config.neuron_pools.values():
        purchase_options = {PURCHASE_OPTION[capacity_type] for capacity_type in pool.capacity_types}
        for purchase_option in sorted(purchase_options):
            quota = QUOTAS[(QUOTA_CLASS[pool.family], purchase_option)]
            needed[quota] = needed.get(quota, 0) + vcpus_at_limit(pool)
    needed[QUOTAS[("Standard", "on-demand")]] = int(cpu_nodepool_spec(config)["limits"]["cpu"])
    return needed


def lines(stack: str) -> list[str]:
    config = load_stack_config(stack_file_config(stack)[0])
    return [f"{config.region}\t{quota.code}\t{vcpus}\t{quota.name}" for quota, vcpus in needed_vcpus(config).items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m planning.quotas", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stack", required=True, choices=stack_names())
    print("\n".join(lines(parser.parse_args(argv).stack)))


if __name__ == "__main__":
    main()
