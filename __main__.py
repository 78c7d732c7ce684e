"""flux-neuron: one stack = the platform, its graph cache and its Flux endpoints."""

import pulumi

from infra.activation import Activation, ActivationArgs
from infra.cluster import Cluster, ClusterArgs
from infra.dashboard import Dashboard, DashboardArgs
from infra.config import load_stack_config, raw_pulumi_config, validate_project_name, validate_stack_name
from infra.image import Image, ImageArgs
from infra.image_cache import ImageCache, ImageCacheArgs
from infra.ingress import Ingress, IngressArgs, LoadBalancerController, LoadBalancerControllerArgs
from infra.karpenter import Karpenter, KarpenterArgs
from infra.monitoring import Monitoring, MonitoringArgs
from infra.naming import stack_resource_name
from infra.network import Network, NetworkArgs
from infra.network_policy import NetworkPolicies, NetworkPoliciesArgs
from infra.neuron import Neuron, NeuronArgs
from infra.observability import Observability, ObservabilityArgs
from infra.pods import WorkloadSettings
from infra.storage import Storage, StorageArgs
from infra.workloads import Workloads, WorkloadsArgs

validate_project_name(pulumi.get_project())
validate_stack_name(pulumi.get_stack())
config = load_stack_config(raw_pulumi_config())
cluster_name = stack_resource_name(pulumi.get_stack())
workload_settings = WorkloadSettings.of(config)

network = Network("network", NetworkArgs(
    cluster_name, config.network, neuron_pools=config.neuron_pools_in_use, existing=config.existing_vpc))
cluster = Cluster("cluster", ClusterArgs(
    cluster_name=cluster_name,
    kubernetes_version=config.kubernetes_version,
    vpc_id=network.vpc_id,
    private_subnet_ids=network.private_subnet_ids,
    public_subnet_ids=network.public_subnet_ids,
    system_nodes=config.system_nodes,
    log_retention_days=config.observability.log_retention_days,
    access=config.cluster,
))


def in_cluster(*after: pulumi.Resource) -> pulumi.ResourceOptions:
    """A component's options: the cluster's Kubernetes provider, after the core add-ons (and `after`)."""
    return pulumi.ResourceOptions(provider=cluster.provider, depends_on=[*cluster.addons, *after])


image = Image("image", ImageArgs(config.image))
image_cache = ImageCache("image-cache", ImageCacheArgs(
    image_ref=image.image_ref,
    region=config.region,
    kubernetes_version=config.kubernetes_version,
    vpc_id=network.vpc_id,
    private_subnet_ids=network.private_subnet_ids,
    zones=network.zones,
    settings=config.cold_start,
))
karpenter = Karpenter("karpenter", KarpenterArgs(
    cluster_name=cluster.name,
    region=config.region,
    private_subnet_ids=network.private_subnet_ids,
    node_security_group_id=cluster.node_security_group_id,
    config=config,
    kubernetes_version=config.kubernetes_version,
    image_snapshot_id=image_cache.snapshot_id,
), opts=in_cluster())
storage = Storage("graphs", StorageArgs(
    cluster_name=cluster.name,
    region=config.region,
    kubernetes_version=config.kubernetes_version,
    namespace=cluster.workload_namespace,
    serving_instance_types=config.serving_pool.instance_types,
    publishing_instance_types=workload_settings.publishing_instance_types,
    cache=config.graph_cache,
), opts=in_cluster())
neuron = Neuron("neuron", NeuronArgs(config.kubernetes_version), opts=in_cluster())
load_balancer_controller = LoadBalancerController("ingress-controller", LoadBalancerControllerArgs(
    cluster_name=cluster.name,
    region=config.region,
    vpc_id=network.vpc_id,
), opts=in_cluster())
network_policies = NetworkPolicies(
    "network-policies",
    NetworkPoliciesArgs(namespace=cluster.workload_namespace, load_balancer_cidrs=network.public_subnet_cidrs),
    opts=pulumi.ResourceOptions(provider=cluster.provider))
# Pods need their NodePools and scheduler; on destroy they go first, while Karpenter can still drain.
# They start only once their NetworkPolicies exist and the load balancer controller's webhook,
# which admits every pod of the namespace (it adds the readiness gates), is up.
pods_after = (karpenter, neuron, network_policies, load_balancer_controller)
monitoring = Monitoring("monitoring", MonitoringArgs(
    settings=config.monitoring,
    workload_namespace=cluster.workload_namespace,
    compile_timeout_minutes=config.compile.timeout_minutes,
    request_timeout_seconds=config.serving.request_timeout_seconds,
    cluster_name=cluster.name,
), opts=in_cluster(*pods_after, cluster.persistent_storage))
observability = Observability("observability", ObservabilityArgs(
    cluster_name=cluster.name,
    kubernetes_version=config.kubernetes_version,
    region=config.region,
    settings=config.observability,
    monitoring=config.monitoring,
    interruption_queue_name=karpenter.queue_name,
    watched=[karpenter, monitoring.prometheus],
), opts=pulumi.ResourceOptions(depends_on=cluster.addons))
Activation("activation", ActivationArgs(
    image_ref=image.image_ref,
    namespace=cluster.workload_namespace,
    read_write_claim=storage.read_write_claim,
), opts=in_cluster(*pods_after))
workloads = Workloads("workloads", WorkloadsArgs(
    shapes=config.shapes,
    settings=workload_settings,
    image_ref=image.image_ref,
    hf_token=None if config.hf_token is None else pulumi.Output.secret(config.hf_token),
    namespace=cluster.workload_namespace,
    read_write_claim=storage.read_write_claim,
    read_only_claim=storage.read_only_claim,
    scheduler_name=neuron.scheduler_name,
    autoscaling_metrics=monitoring.autoscaling_metrics,
), opts=in_cluster(*pods_after))
# After the add-on, whose operator runs its agent, and Prometheus's kube-state-metrics, which it reads.
dashboard = Dashboard("dashboard", DashboardArgs(
    name=cluster_name,
    cluster_name=cluster.name,
    region=config.region,
    shapes=list(config.shapes),
    workload_namespace=cluster.workload_namespace,
    log_retention_days=config.observability.log_retention_days,
), opts=in_cluster(observability.addon, monitoring.prometheus))
ingress = Ingress("ingress", IngressArgs(
    namespace=cluster.workload_namespace,
    services=workloads.services,
    settings=config.ingress,
    request_timeout_seconds=config.serving.request_timeout_seconds,
    public_subnet_ids=network.public_subnet_ids,
    controller=load_balancer_controller,
), opts=pulumi.ResourceOptions(provider=cluster.provider))

pulumi.export("region", config.region)
pulumi.export("clusterName", cluster.name)
pulumi.export("availabilityZones", network.zones)
pulumi.export("kubeconfig", pulumi.Output.secret(cluster.kubeconfig_json))
pulumi.export("graphsBucket", storage.bucket_name)
pulumi.export("nodePools", karpenter.nodepool_names)
pulumi.export("image", image.image_ref)
if image.repository_name is not None:
    # What scripts/destroy records in image.repository when destroy keeps the repository.
    pulumi.export("imageRepository", image.repository_name)
pulumi.export("endpoints", ingress.endpoints)
pulumi.export("exampleRequest", ingress.example_request)
pulumi.export("dashboard", dashboard.dashboard_name)
pulumi.export("dashboardUrl", dashboard.url)
