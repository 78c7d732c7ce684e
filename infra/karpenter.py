"""Karpenter v1: controller (Pod Identity), node role with its access entry, interruption queue,
the two Helm releases, one EC2NodeClass, a NodePool per Neuron family and a CPU NodePool."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import catalog, disruption, iam, versions
from infra.image_cache import CACHE_DEVICE, CACHE_VOLUME, CACHE_VOLUME_GIB, NODE_USER_DATA
from infra.iam import Difference
from infra.config import NeuronPool, StackConfig
from infra.naming import (
    CAPACITY_TYPE_LABEL, CPU_NODEPOOL, EC2_NODECLASS, KARPENTER_NAMESPACE, NEURON_DEVICE_RESOURCE,
    NEURON_FAMILY_LABEL, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY, ON_DEMAND, SPOT, SYSTEM_NODE_LABEL, neuron_nodepool,
    neuron_spot_nodepool,
)
from infra.options import after, children
from infra.pods import WorkloadSettings, rollout_minutes

SERVICE_ACCOUNT = "karpenter"
# Root volume: the kubelet's directory on inf2 (no instance store), and containerd's images when no image-cache
# snapshot is found; graphs live in S3, compile scratch on volumes of its own.
ROOT_VOLUME = {"volumeSize": f"{catalog.ROOT_VOLUME_GIB}Gi", "volumeType": "gp3", "iops": 6000, "throughput": 500,
               "encrypted": True, "deleteOnTermination": True}
# Every event Karpenter acts on before AWS takes an instance away.
INTERRUPTION_EVENTS = {
    "health": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "instance-state": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "capacity-reservation": {"source": ["aws.ec2"],
                             "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]},
}
# The EKS-optimized AL2023 release is per Kubernetes minor: its key in versions.KUBERNETES_RELEASES.
AMI_ALIAS = "al2023-ami-alias"
# Karpenter's node repair (alpha since v1.1, off by default): its Helm value settings.featureGates.nodeRepair.
NODE_REPAIR_GATE = "nodeRepair"
NODECLASS_REF = {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": EC2_NODECLASS}
# Karpenter tries NodePools by weight, and the next once one's limit is reached: the family's on-demand
# base first, its Spot pool for what the base cannot hold.
ON_DEMAND_BASE_WEIGHT = 10
SPOT_BURST_WEIGHT = 1
# No node expires: expiry is forceful (no budget, no replacement started first), and the nodes of the
# first `up` would all expire together. Nodes are replaced through drift instead, which follows the
# budgets below and starts the replacement first: a new AMI (the alias pinned per Kubernetes minor in
# infra/versions.py), a changed NodePool template or EC2NodeClass (docs/upgrades.md, "Disruptions").
EXPIRE_AFTER = "Never"
# Accelerator nodes are expensive and slow to warm (multi-GB image, graph cache): drift and
# consolidation take one node at a time (and consolidation only empty ones: running work is never
# packed onto others); empty nodes go all at once, as removing them stops nothing.
NEURON_DISRUPTION = {
    "consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m",
    "budgets": [{"nodes": "1", "reasons": ["Drifted", "Underutilized"]}, {"nodes": "100%", "reasons": ["Empty"]}],
}
# The cpu NodePool holds this multiple of the nodes its pods are sized for: Karpenter starts a replacement before it
# removes a drifted or consolidated node, and may pick a larger type than the one sized for when the kubelet's
# reservation on the sized one leaves too little.
CPU_NODEPOOL_HEADROOM = 2


@dataclass
class KarpenterArgs:
    cluster_name: pulumi.Input[str]
    region: str
    private_subnet_ids: pulumi.Input[list[str]]
    node_security_group_id: pulumi.Input[str]
    # What the Neuron NodePools are sized and bounded from: the pools, shapes, serving and compile settings.
    config: StackConfig
    kubernetes_version: str
    # The image-cache snapshot new nodes restore containerd's root from (infra/image_cache.py); None: they pull.
    image_snapshot_id: pulumi.Input[str | None] = None


def drain_seconds(config: StackConfig, family: str, holds_compile: bool) -> int:
    """How long a node of the family's pool may take to drain, from its deletion (its terminationGracePeriod):
    - a compile Job, running under the do-not-disrupt annotation, gets to its own deadline (it started
      before the drain, so it ends by then), then its pod's grace;
    - serving pods are evicted one per shape at a time (their PodDisruptionBudget): the bound lets the
      evicted one's replacement start on a new node (the rollout time of the slowest shape), and the pods
      left keep their full grace (Karpenter deletes each that long before the bound).
    Past it Karpenter deletes what is left: on a node holding several replicas of one shape, those after
    the first go without waiting for their replacements."""
    bounds = [disruption.DEFAULT_POD_GRACE_SECONDS]
    if holds_compile:
        bounds.append(config.compile.timeout_minutes * 60 + disruption.DEFAULT_POD_GRACE_SECONDS)
    if config.serving.pool == family:
        bounds.append(max(rollout_minutes(config.serving_pool, shape) for shape in config.shapes) * 60
                      + disruption.serving_grace_seconds(config.serving.request_timeout_seconds))
    return max(bounds)


def _neuron_nodepool_spec(pool: NeuronPool, capacity_types: tuple[str, ...], max_devices: int, drain: int,
                          weight: int | None) -> dict:
    spec = {
        "template": {
            "metadata": {"labels": {NEURON_FAMILY_LABEL: pool.family}},
            "spec": {
                "nodeClassRef": NODECLASS_REF,
                "requirements": [
                    {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": [pool.family]},
                    {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(pool.instance_types)},
                    {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": list(capacity_types)},
                ],
                "taints": [{"key": NEURON_TAINT_KEY, "effect": NEURON_TAINT_EFFECT}],
                "expireAfter": EXPIRE_AFTER,
                "terminationGracePeriod": disruption.duration(drain),
            },
        },
        "limits": {NEURON_DEVICE_RESOURCE: max_devices},
        "disruption": NEURON_DISRUPTION,
    }
    return spec if weight is None else {**spec, "weight": weight}


def neuron_nodepool_specs(config: StackConfig) -> dict[str, dict]:
    """The NodePools of each Neuron family, by name: one, or where it allows Spot an on-demand base (the
    compile Jobs, serving.replicas and the rollout surge) and a Spot pool with the rest of maxDevices."""
    specs = {}
    for family, pool in config.neuron_pools.items():
        holds_compile = config.compile.pool == family
        if not pool.allows_spot:
            specs[neuron_nodepool(family)] = _neuron_nodepool_spec(
                pool, pool.capacity_types, pool.max_devices, drain_seconds(config, family, holds_compile), None)
            continue
        base = config.on_demand_base_devices(family)
        specs[neuron_nodepool(family)] = _neuron_nodepool_spec(
            pool, pool.base_capacity_types, base, drain_seconds(config, family, holds_compile), ON_DEMAND_BASE_WEIGHT)
        # Compile Jobs require on-demand capacity, so the Spot pool holds serving pods only.
        specs[neuron_spot_nodepool(family)] = _neuron_nodepool_spec(
            pool, (SPOT,), pool.max_devices - base, drain_seconds(config, family, False), SPOT_BURST_WEIGHT)
    return specs


def block_device_mappings(image_snapshot_id: str | None) -> list[dict]:
    """The root volume and, when there is an image-cache snapshot, the volume restored from it, which the node's
    user data (infra.image_cache.NODE_USER_DATA) mounts as containerd's root."""
    root = {"deviceName": "/dev/xvda", "ebs": ROOT_VOLUME}
    if image_snapshot_id is None:
        return [root]
    # No `encrypted`: a volume restored from a snapshot is encrypted as the snapshot is (the builder's volume was),
    # and the field is for blank volumes only (the CRD's description of it).
    return [root, {"deviceName": CACHE_DEVICE, "ebs": {
        "snapshotID": image_snapshot_id, "volumeSize": f"{CACHE_VOLUME_GIB}Gi", **CACHE_VOLUME,
        "deleteOnTermination": True}}]


def capacity_reservation_terms(pools: dict[str, NeuronPool]) -> dict:
    """The reservations the pools' `reserved` capacity launches into, for the EC2NodeClass they share (none:
    no field, and EC2 may still place an on-demand launch in an open reservation; with the field, Karpenter
    opts its launches out of open ones)."""
    ids = [reservation for pool in pools.values() for reservation in pool.capacity_reservation_ids]
    return {"capacityReservationSelectorTerms": [{"id": reservation} for reservation in ids]} if ids else {}


def cpu_nodepool_spec(config: StackConfig) -> dict:
    """The cpu NodePool: the device-less Jobs (the weights Job and, with compile.pool cpu, every graphs Job) and
    the platform pods that need a Karpenter node (Prometheus, the activator).

    Its limits hold every Job at once, each on a node of the type it is sized for, and the platform node, with
    CPU_NODEPOOL_HEADROOM: a Job waiting for room would spend its deadline (activeDeadlineSeconds counts from its
    start, not its pod's). The account's Standard vCPU quota must hold the CPU limit (planning/quotas.py). A node
    under a Job drains within the Job's deadline, as a Neuron node under a compile does (drain_seconds)."""
    settings = WorkloadSettings.of(config)
    jobs = [settings.weights_job_size.instance_type]
    if settings.compile_pool is None:
        jobs += [settings.graphs_job_size.instance_type] * len(config.shapes)
    nodes = [catalog.cpu_instance(name) for name in (*jobs, catalog.CPU_PLATFORM_INSTANCE)]
    cpu = CPU_NODEPOOL_HEADROOM * sum(node.vcpus for node in nodes)
    memory = CPU_NODEPOOL_HEADROOM * sum(node.memory_gib for node in nodes)
    drain = config.compile.timeout_minutes * 60 + disruption.DEFAULT_POD_GRACE_SECONDS
    return {
        "template": {
            "spec": {
                "nodeClassRef": NODECLASS_REF,
                "requirements": [
                    {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]},
                    {"key": "karpenter.k8s.aws/instance-generation", "operator": "Gt", "values": ["5"]},
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                    # What runs here must not be interrupted: hours of compiling, the activator, Prometheus.
                    {"key": CAPACITY_TYPE_LABEL, "operator": "In", "values": [ON_DEMAND]},
                ],
                "expireAfter": EXPIRE_AFTER,
                "terminationGracePeriod": disruption.duration(drain),
            },
        },
        "limits": {"cpu": str(cpu), "memory": f"{memory}Gi"},
        "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "1m",
                       "budgets": [{"nodes": "10%"}]},
    }


# How controller_policy differs from the official v1.14.1 CloudFormation's controller policies
# (planning/data/official/), beyond resources narrowed to this account: nothing.
OFFICIAL_POLICY_DIFFERENCES: tuple[Difference, ...] = ()


def controller_policy(cluster_name: str, region: str, account: str, queue_arn: str, node_role_arn: str) -> dict:
    """Karpenter v1's controller permissions: the official v1.14.1 policies (the actions and conditions of
    its CloudFormation), with resources scoped to this account as well as this cluster's tags and region."""
    ec2 = f"arn:aws:ec2:{region}"
    # Karpenter tags what it creates with both; eks:eks-cluster-name is its own to set (the EC2NodeClass
    # may not), which is why the conditions can require it.
    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned",
             "aws:RequestTag/eks:eks-cluster-name": cluster_name}
    tagged_owned = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    profile_owned = {**owned, "aws:RequestTag/topology.kubernetes.io/region": region}
    profile_tagged_owned = {**tagged_owned, "aws:ResourceTag/topology.kubernetes.io/region": region}
    cluster_arn = f"arn:aws:eks:{region}:{account}:cluster/{cluster_name}"
    instance_profile = f"arn:aws:iam::{account}:instance-profile/*"
    launched = [f"{ec2}:{account}:{kind}/*" for kind in
                ("fleet", "instance", "volume", "network-interface", "launch-template", "spot-instances-request")]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AllowScopedEC2InstanceAccessActions", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{ec2}::image/*", f"{ec2}::snapshot/*", f"{ec2}:{account}:security-group/*",
                      f"{ec2}:{account}:subnet/*", f"{ec2}:{account}:capacity-reservation/*",
                      f"{ec2}:{account}:placement-group/*"]},
        {"Sid": "AllowScopedEC2LaunchTemplateAccessActions", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet"], "Resource": f"{ec2}:{account}:launch-template/*",
         "Condition": {"StringEquals": tagged_owned,
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowScopedEC2InstanceActionsWithTags", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], "Resource": launched,
         "Condition": {"StringEquals": owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowScopedResourceCreationTagging", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": launched,
         "Condition": {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet",
                                                                       "CreateLaunchTemplate"]},
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowScopedResourceTagging", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": f"{ec2}:{account}:instance/*",
         "Condition": {"StringEquals": tagged_owned,
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                       "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim",
                                                                     "Name"]}}},
        {"Sid": "AllowScopedDeletion", "Effect": "Allow",
         "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"{ec2}:{account}:instance/*", f"{ec2}:{account}:launch-template/*"],
         "Condition": {"StringEquals": tagged_owned,
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "AllowRegionalReadActions", "Effect": "Allow",
         # DescribeInstanceStatus: instance health checks; DescribePlacementGroups: placementGroupSelector.
         "Action": ["ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
                    "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups",
                    "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets"],
         # EC2 Describe* calls have no resource-level permissions: "*" is the only valid resource.
         "Resource": "*", "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "AllowSSMReadActions", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": f"arn:aws:ssm:{region}::parameter/aws/service/*"},
        # The Price List API has no resources to scope to.
        {"Sid": "AllowPricingReadActions", "Effect": "Allow", "Action": "pricing:GetProducts", "Resource": "*"},
        {"Sid": "AllowInterruptionQueueActions", "Effect": "Allow",
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"], "Resource": queue_arn},
        {"Sid": "AllowPassingInstanceRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role_arn,
         # The official policy names the China partition's EC2 principal too; it matches nothing elsewhere.
         "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com", "ec2.amazonaws.com.cn"]}}},
        {"Sid": "AllowScopedInstanceProfileCreationActions", "Effect": "Allow",
         "Action": "iam:CreateInstanceProfile", "Resource": instance_profile,
         "Condition": {"StringEquals": profile_owned,
                       "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        # Re-tagging only profiles this cluster's Karpenter made, and only with this cluster's tags.
        {"Sid": "AllowScopedInstanceProfileTagActions", "Effect": "Allow",
         "Action": "iam:TagInstanceProfile", "Resource": instance_profile,
         "Condition": {"StringEquals": {**profile_tagged_owned, **profile_owned},
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                                      "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowScopedInstanceProfileActions", "Effect": "Allow",
         "Action": ["iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                    "iam:DeleteInstanceProfile"], "Resource": instance_profile,
         "Condition": {"StringEquals": profile_tagged_owned,
                       "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"}}},
        {"Sid": "AllowInstanceProfileReadActions", "Effect": "Allow", "Action": "iam:GetInstanceProfile",
         "Resource": instance_profile},
        # Listing finds the profiles it created and no longer needs; IAM list calls take no resource but "*".
        {"Sid": "AllowUnscopedInstanceProfileListAction", "Effect": "Allow", "Action": "iam:ListInstanceProfiles",
         "Resource": "*"},
        {"Sid": "AllowAPIServerEndpointDiscovery", "Effect": "Allow", "Action": "eks:DescribeCluster",
         "Resource": cluster_arn},
        # Whether ARC zonal shift has moved traffic away from a zone of this cluster, so Karpenter avoids it.
        {"Sid": "AllowZonalShiftStatusReadOnly", "Effect": "Allow", "Action": "arc-zonal-shift:GetManagedResource",
         "Resource": "*", "Condition": {"StringEquals": {"arc-zonal-shift:ResourceIdentifier": cluster_arn}}},
    ]}


class Karpenter(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what its Helm releases wait for through `opts`."""

    node_role_name: pulumi.Output[str]
    queue_name: pulumi.Output[str]
    nodepool_names: list[str]

    def __init__(self, name: str, args: KarpenterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Karpenter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = aws.get_caller_identity().account_id

        node_role = iam.role(f"{name}-node", trust=iam.EC2_TRUST, parent=self, managed_policies=iam.NODE_POLICIES)
        aws.eks.AccessEntry(f"{name}-node", cluster_name=args.cluster_name, principal_arn=node_role.arn,
                            type="EC2_LINUX", opts=child)

        queue = aws.sqs.Queue(name, name=args.cluster_name, message_retention_seconds=300,
                              sqs_managed_sse_enabled=True, opts=child)
        aws.sqs.QueuePolicy(name, queue_url=queue.url, policy=iam.policy_document([
            {"Sid": "EventBridgeDelivers", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": queue.arn,
             "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]}},
            {"Sid": "DenyHTTP", "Effect": "Deny", "Action": "sqs:*", "Resource": queue.arn, "Principal": "*",
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        ]), opts=child)
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern), opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{event}", rule=rule.name, arn=queue.arn, opts=child)

        controller_role = iam.pod_identity_role(
            f"{name}-controller", parent=self,
            inline_policy=pulumi.Output.all(args.cluster_name, account, queue.arn, node_role.arn).apply(
                lambda values: json.dumps(controller_policy(values[0], args.region, values[1], values[2], values[3]))))
        association = iam.pod_identity_association(
            f"{name}-controller", role_arn=controller_role.arn, cluster_name=args.cluster_name,
            namespace=KARPENTER_NAMESPACE, service_account=SERVICE_ACCOUNT, parent=self)

        in_cluster = children(self, opts)
        crds = k8s.helm.v3.Release(
            f"{name}-crd", name="karpenter-crd", chart=f"{versions.KARPENTER_CHART_REPO}/karpenter-crd",
            version=versions.KARPENTER_VERSION, namespace=KARPENTER_NAMESPACE, create_namespace=True,
            opts=in_cluster)
        controller = k8s.helm.v3.Release(
            name, name="karpenter", chart=f"{versions.KARPENTER_CHART_REPO}/karpenter",
            version=versions.KARPENTER_VERSION, namespace=KARPENTER_NAMESPACE, skip_crds=True,
            values={
                "settings": {"clusterName": args.cluster_name, "interruptionQueue": queue.name,
                             # Replace a node whose conditions stay unhealthy: AcceleratedHardwareReady (set by
                             # the node monitoring agent, infra.cluster) after 10 min, Ready after 30 min
                             # (docs/upgrades.md, Node health).
                             "featureGates": {NODE_REPAIR_GATE: True}},
                "serviceAccount": {"name": SERVICE_ACCOUNT},
                "nodeSelector": SYSTEM_NODE_LABEL,
                "replicas": 2,
                "controller": {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                             "limits": {"cpu": "1", "memory": "1Gi"}},
                               # Without it Karpenter asks IMDS for its region, which the system nodes'
                               # hop limit keeps out of its pod (infra.cluster's launch template).
                               "env": [{"name": "AWS_REGION", "value": args.region}]},
            },
            opts=after(in_cluster, crds, association))

        # Custom resources wait for the release that installs their CRDs (and are deleted before it).
        custom = after(child, crds, controller)
        node_class = k8s.apiextensions.CustomResource(
            f"{name}-{EC2_NODECLASS}", api_version="karpenter.k8s.aws/v1", kind="EC2NodeClass",
            metadata={"name": EC2_NODECLASS},
            spec={
                "role": node_role.name,
                "amiSelectorTerms": [{"alias": versions.KUBERNETES_RELEASES[args.kubernetes_version][AMI_ALIAS]}],
                "subnetSelectorTerms": pulumi.Output.from_input(args.private_subnet_ids).apply(
                    lambda ids: [{"id": subnet} for subnet in ids]),
                "securityGroupSelectorTerms": [{"id": args.node_security_group_id}],
                "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled",
                                    "httpPutResponseHopLimit": iam.IMDS_HOP_LIMIT, "httpTokens": "required"},
                "blockDeviceMappings": pulumi.Output.from_input(args.image_snapshot_id).apply(block_device_mappings),
                "userData": NODE_USER_DATA,
                # trn1.32xlarge carries 8 TB of NVMe: striped, it holds the kubelet's directory (compile scratch);
                # containerd stays on the image-cache volume (NODE_USER_DATA).
                "instanceStorePolicy": "RAID0",
                **capacity_reservation_terms(args.config.neuron_pools),
                # No tags: Karpenter tags instances itself, with eks:eks-cluster-name among others, and the
                # CRD forbids setting that tag (or kubernetes.io/cluster/*, karpenter.*) here.
            },
            opts=custom)
        nodepools = neuron_nodepool_specs(args.config)
        nodepools[CPU_NODEPOOL] = cpu_nodepool_spec(args.config)
        for pool_name, spec in nodepools.items():
            k8s.apiextensions.CustomResource(
                f"{name}-{pool_name}", api_version="karpenter.sh/v1", kind="NodePool",
                metadata={"name": pool_name}, spec=spec,
                opts=after(custom, node_class))

        self.node_role_name = node_role.name
        self.queue_name = queue.name
        self.nodepool_names = list(nodepools)
        self.register_outputs({"node_role_name": self.node_role_name, "queue_name": self.queue_name,
                               "nodepool_names": self.nodepool_names})
