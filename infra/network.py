"""The VPC: private subnets for nodes, public subnets for load balancers, NAT; or an existing VPC."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import ExistingVpc, NetworkSettings

# Karpenter discovers subnets and security groups by this tag; ELB roles tell the load
# balancer controller where internet-facing and internal load balancers go.
KARPENTER_DISCOVERY_TAG = "karpenter.sh/discovery"
PUBLIC_ELB_TAG = {"kubernetes.io/role/elb": "1"}
INTERNAL_ELB_TAG = {"kubernetes.io/role/internal-elb": "1"}


@dataclass
class NetworkArgs:
    cluster_name: str
    settings: NetworkSettings
    existing: ExistingVpc | None = None


class Network(pulumi.ComponentResource):
    vpc_id: pulumi.Output[str]
    private_subnet_ids: pulumi.Output[list[str]]
    public_subnet_ids: pulumi.Output[list[str]]
    # Where the load balancer lives (infra.ingress): the only addresses the serving pods admit.
    public_subnet_cidrs: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Network", name, None, opts)
        if args.existing is not None:
            self.vpc_id = pulumi.Output.from_input(args.existing.vpc_id)
            self.private_subnet_ids = pulumi.Output.from_input(list(args.existing.private_subnet_ids))
            self.public_subnet_ids = pulumi.Output.from_input(list(args.existing.public_subnet_ids))
            # Not in config: read from EC2, so they cannot disagree with the subnets themselves.
            self.public_subnet_cidrs = pulumi.Output.all(*[
                aws.ec2.get_subnet_output(id=subnet_id).cidr_block for subnet_id in args.existing.public_subnet_ids])
        else:
            self._create(name, args)
        self.register_outputs({"vpc_id": self.vpc_id, "private_subnet_ids": self.private_subnet_ids,
                               "public_subnet_ids": self.public_subnet_ids,
                               "public_subnet_cidrs": self.public_subnet_cidrs})

    def _create(self, name: str, args: NetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        tags = {"Name": name, KARPENTER_DISCOVERY_TAG: args.cluster_name}
        zones = aws.get_availability_zones(state="available").names[: args.settings.availability_zones]
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
