"""flux-neuron: one stack = the platform, its graph cache and its Flux endpoints."""

import pulumi

from infra.cluster import Cluster, ClusterArgs
from infra.config import load_stack_config, raw_pulumi_config
from infra.karpenter import Karpenter, KarpenterArgs
from infra.naming import PROJECT
from infra.network import Network, NetworkArgs
from infra.neuron import Neuron, NeuronArgs
from infra.observability import Observability, ObservabilityArgs
from infra.storage import Storage, StorageArgs

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
karpenter = Karpenter("karpenter", KarpenterArgs(
    cluster_name=cluster.name,
    region=config.region,
    private_subnet_ids=network.private_subnet_ids,
    node_security_group_id=cluster.node_security_group_id,
    neuron_pools=config.neuron_pools,
    provider=cluster.provider,
    depends_on=cluster.addons,
))
storage = Storage("graphs", StorageArgs(
    cluster_name=cluster.name,
    region=config.region,
    kubernetes_version=config.kubernetes_version,
    namespace=cluster.workload_namespace,
    provider=cluster.provider,
    depends_on=cluster.addons,
))
neuron = Neuron("neuron", NeuronArgs(config.kubernetes_version, cluster.provider, depends_on=cluster.addons))
Observability("observability", ObservabilityArgs(cluster.name, config.kubernetes_version, depends_on=cluster.addons))

pulumi.export("region", config.region)
pulumi.export("clusterName", cluster.name)
pulumi.export("kubeconfig", pulumi.Output.secret(cluster.kubeconfig_json))
pulumi.export("graphsBucket", storage.bucket_name)
pulumi.export("nodePools", karpenter.nodepool_names)
