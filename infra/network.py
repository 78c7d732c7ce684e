"""The VPC: private subnets for nodes, public subnets for load balancers, NAT; or an existing VPC.

Its zones are where the Neuron pods can run: a zone qualifies when EC2 offers it at least one instance
type of every Neuron pool the pods use (the serving pool and the compile pool), and the VPC takes the
first network.availabilityZones qualifying zones in name order. A private subnet elsewhere would be a
zone where Karpenter can launch no node for those pods, and a Job or a spread replica could wait there
for its whole deadline. An existing VPC's private subnets are held to the same rule.

Derived, the choice is made again at every `up`, from EC2's answer then: should EC2 start offering a type
in a zone earlier in name order, the preview would show that zone's subnets added and the last one's
replaced. So a stack keeps its zones by listing them (network.zones, from the `availabilityZones` output
after the first `up`); listed zones are held to the same rule."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import ConfigError, ExistingVpc, NetworkSettings, NeuronPool
from infra.naming import PROJECT

# Karpenter discovers subnets and security groups by this tag; ELB roles tell the load
# balancer controller where internet-facing and internal load balancers go.
KARPENTER_DISCOVERY_TAG = "karpenter.sh/discovery"
PUBLIC_ELB_TAG = {"kubernetes.io/role/elb": "1"}
INTERNAL_ELB_TAG = {"kubernetes.io/role/internal-elb": "1"}


ZONES_KEY = f"{PROJECT}:network.availabilityZones"
LISTED_ZONES_KEY = f"{PROJECT}:network.zones"
PRIVATE_SUBNETS_KEY = f"{PROJECT}:existingVpc.privateSubnetIds"


@dataclass
class NetworkArgs:
    cluster_name: str
    settings: NetworkSettings
    # The pools the Neuron pods run on (serving's and compile's): the zones must offer each of them.
    neuron_pools: tuple[NeuronPool, ...]
    existing: ExistingVpc | None = None


def offered_zones(instance_types: tuple[str, ...]) -> dict[str, set[str]]:
    """Each instance type and the availability zones of the stack's region that offer it."""
    offerings = aws.ec2.get_instance_type_offerings(
        location_type="availability-zone", filters=[{"name": "instance-type", "values": list(instance_types)}])
    zones: dict[str, set[str]] = {name: set() for name in instance_types}
    for name, zone in zip(offerings.instance_types, offerings.locations):
        zones.setdefault(name, set()).add(zone)
    return zones


def qualifying_zones(zones: list[str], pools: tuple[NeuronPool, ...], offered: dict[str, set[str]]) -> list[str]:
    """The zones, in name order, that offer at least one instance type of every pool."""
    return sorted(zone for zone in zones
                  if all(any(zone in offered.get(name, ()) for name in pool.instance_types) for pool in pools))


def pool_types(pools: tuple[NeuronPool, ...]) -> str:
    """The pools and their types, for messages: "trn1 (trn1.32xlarge), inf2 (inf2.24xlarge, inf2.48xlarge)"."""
    return ", ".join(f"{pool.family} ({', '.join(pool.instance_types)})" for pool in pools)


def choose_zones(count: int, zones: list[str], pools: tuple[NeuronPool, ...], offered: dict[str, set[str]]) -> list[str]:
    """The first `count` qualifying zones; fewer qualifying is refused, naming them and the types."""
    qualifying = qualifying_zones(zones, pools, offered)
    if len(qualifying) < count:
        raise ConfigError(ZONES_KEY, count, (
            f"at most {len(qualifying)}: only {', '.join(qualifying) or 'no zone'} of {', '.join(sorted(zones))} "
            f"offer an instance type of every Neuron pool, {pool_types(pools)}; lower it, or choose instance "
            "types offered in more zones"))
    return qualifying[:count]


def check_listed_zones(listed: tuple[str, ...], zones: list[str], pools: tuple[NeuronPool, ...],
                       offered: dict[str, set[str]]) -> list[str]:
    """Zones from config, each of the region and qualifying; refused naming the first that is not."""
    qualifying = qualifying_zones(zones, pools, offered)
    for zone in listed:
        if zone not in qualifying:
            raise ConfigError(LISTED_ZONES_KEY, list(listed), (
                f"zones of the region that offer an instance type of every Neuron pool, {pool_types(pools)}: "
                f"{zone} is {'not a zone of the region' if zone not in zones else 'not one of them'}; "
                f"the zones that are: {', '.join(qualifying) or 'none'}"))
    return list(listed)


def check_subnet_zones(subnet_zones: dict[str, str], pools: tuple[NeuronPool, ...],
                       offered: dict[str, set[str]]) -> None:
    """An existing VPC's private subnets (id -> zone) must all be in qualifying zones."""
    qualifying = qualifying_zones(sorted(set().union(*offered.values())), pools, offered)
    for subnet, zone in subnet_zones.items():
        if zone not in qualifying:
            raise ConfigError(PRIVATE_SUBNETS_KEY, list(subnet_zones), (
                f"subnets in zones that offer an instance type of every Neuron pool, {pool_types(pools)}: "
                f"{subnet} is in {zone}, which does not; the zones that do: {', '.join(qualifying) or 'none'}"))


def _all_types(pools: tuple[NeuronPool, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for pool in pools for name in pool.instance_types))


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]
    # Where the load balancer lives (infra.ingress): the only addresses the serving pods admit.
    public_subnet_cidrs: pulumi.Output[list[str]]
    # The zones of the private subnets (the stack's `availabilityZones` output: what network.zones keeps).
    zones: list[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        # Checked before anything is created: a refused zone count or subnet leaves no partial network.
        offered = offered_zones(_all_types(args.neuron_pools))
        if args.existing is not None:
            subnet_zones = {subnet_id: aws.ec2.get_subnet(id=subnet_id).availability_zone
                            for subnet_id in args.existing.private_subnet_ids}
            check_subnet_zones(subnet_zones, args.neuron_pools, offered)
            zones = sorted(set(subnet_zones.values()))
        else:
            region_zones = aws.get_availability_zones(state="available").names
            zones = (check_listed_zones(args.settings.zones, region_zones, args.neuron_pools, offered)
                     if args.settings.zones is not None else
                     choose_zones(args.settings.availability_zones, region_zones, args.neuron_pools, offered))
        super().__init__("flux-neuron:infra:Network", name, None, opts)
        self.zones = zones
        if args.existing is not None:
            self.vpc_id = pulumi.Output.from_input(args.existing.vpc_id)
            self.private_subnet_ids = pulumi.Output.from_input(list(args.existing.private_subnet_ids))
            self.public_subnet_ids = pulumi.Output.from_input(list(args.existing.public_subnet_ids))
            # Not in config: read from EC2, so they cannot disagree with the subnets themselves.
            self.public_subnet_cidrs = pulumi.Output.all(*[
                aws.ec2.get_subnet_output(id=subnet_id).cidr_block for subnet_id in args.existing.public_subnet_ids])
        else:
            self._create(name, args, zones)
        self.register_outputs({"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids,
                               "public_subnet_ids": self.public_subnet_ids,
                               "public_subnet_cidrs": self.public_subnet_cidrs, "zones": self.zones})

    def _create(self, name: str, args: NetworkArgs, zones: list[str]) -> None:
        child = pulumi.ResourceOptions(parent=self)
        tags = {"Name": name, KARPENTER_DISCOVERY_TAG: args.cluster_name}
        vpc = aws.ec2.Vpc(name, cidr_block=args.settings.cidr, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=tags, opts=child)
        gateway = aws.ec2.InternetGateway(name, vpc_id=vpc.id, tags=tags, opts=child)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public", vpc_id=vpc.id, tags=tags,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)], opts=child)
        # Eight equal blocks: the first half for node (private) subnets, which need many pod IPs.
        blocks = list(ipaddress.IPv4Network(args.settings.cidr).subnets(prefixlen_diff=3))
        public_ids, public_cidrs, private_ids, private_route_table_ids = [], [], [], []
        for index, zone in enumerate(zones):
            public = aws.ec2.Subnet(
                f"{name}-public-{zone}", vpc_id=vpc.id, availability_zone=zone,
                cidr_block=str(blocks[4 + index]), map_public_ip_on_launch=False,
                tags={**tags, **PUBLIC_ELB_TAG, "Name": f"{name}-public-{zone}"}, opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-public-{zone}", subnet_id=public.id,
                                          route_table_id=public_routes.id, opts=child)
            # One NAT per zone: a zone outage must not cut image pulls and S3 for the others.
            nat_ip = aws.ec2.Eip(f"{name}-nat-{zone}", domain="vpc", tags=tags, opts=child)
            nat = aws.ec2.NatGateway(f"{name}-{zone}", subnet_id=public.id, allocation_id=nat_ip.id,
                                     tags=tags, opts=child)
            private = aws.ec2.Subnet(
                f"{name}-private-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=str(blocks[index]),
                tags={**tags, **INTERNAL_ELB_TAG, "Name": f"{name}-private-{zone}"}, opts=child)
            private_routes = aws.ec2.RouteTable(
                f"{name}-private-{zone}", vpc_id=vpc.id, tags=tags,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id)], opts=child)
            aws.ec2.RouteTableAssociation(f"{name}-private-{zone}", subnet_id=private.id,
                                          route_table_id=private_routes.id, opts=child)
            private_route_table_ids.append(private_routes.id)
            public_ids.append(public.id)
            public_cidrs.append(public.cidr_block)
            private_ids.append(private.id)
        # Compiled graphs are pulled from S3 at every serving start: keep that traffic off the NAT.
        aws.ec2.VpcEndpoint(f"{name}-s3", vpc_id=vpc.id, service_name=f"com.amazonaws.{aws.get_region().region}.s3",
                            vpc_endpoint_type="Gateway", route_table_ids=private_route_table_ids,
                            tags=tags, opts=child)
        self.vpc_id = vpc.id
        self.private_subnet_ids = pulumi.Output.all(*private_ids)
        self.public_subnet_ids = pulumi.Output.all(*public_ids)
        self.public_subnet_cidrs = pulumi.Output.all(*public_cidrs)
