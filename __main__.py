"""flux-neuron: one stack = the platform, its graph cache and its Flux endpoints."""

import pulumi

from infra.cluster import Cluster, ClusterArgs
from infra.config import load_stack_config, raw_pulumi_config
from infra.naming import PROJECT
from infra.network import Network, NetworkArgs

config = load_stack_config(raw_pulumi_config())
cluster_name = f"{PROJECT}-{pulumi.get_stack()}"

network = Network("network", NetworkArgs(cluster_name, config.network, config.existing_vpc))
cluster = Cluster("cluster", ClusterArgs(
    cluster_name=cluster_name,
    kubernetes_version=config.kubernetes_version,
    vpc_id=network.vpc_id,
    private_subnet_ids=network.private_subnet_ids,
    public_subnet_ids=network.public_subnet_ids,
    system_nodes=config.system_nodes,
))

pulumi.export("region", config.region)
pulumi.export("clusterName", cluster.name)
pulumi.export("kubeconfig", pulumi.Output.secret(cluster.kubeconfig_json))
