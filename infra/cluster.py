"""EKS in API authentication mode with its control-plane log group, a small managed node group for
controllers (IMDS kept from its pods), core add-ons, the EBS CSI driver with an encrypted gp3
StorageClass, and the one Kubernetes provider every other component uses."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from infra import iam, versions
from infra.config import OPEN_TO_ALL, ClusterAccess, SystemNodes, admin_role_name
from infra.naming import SYSTEM_NODE_LABEL, WORKLOAD_NAMESPACE
from infra.network import KARPENTER_DISCOVERY_TAG

# The node monitoring agent (a DaemonSet tolerating every taint, so on Neuron nodes too) reads the nodes'
# kernel and Neuron driver logs and sets conditions such as AcceleratedHardwareReady, which Karpenter's node
# repair acts on (infra.karpenter; docs/upgrades.md, Node health). It calls no AWS API: no IAM.
NODE_MONITORING_AGENT = "eks-node-monitoring-agent"
CORE_ADDONS = ("vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent", NODE_MONITORING_AGENT)
CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
# The VPC CNI's node agent enforces NetworkPolicies (infra.network_policy); without it they are inert.
ADDON_CONFIGURATION = {"vpc-cni": {"enableNetworkPolicy": "true"}}
# The load balancer controller's webhook adds ALB readiness gates to pods of namespaces with this
# label: a rolling update then waits until the new pod is a healthy ALB target, not just Ready.
READINESS_GATE_LABEL = {"elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}
CONTROL_PLANE_LOG_TYPES = ["api", "audit", "authenticator"]
EBS_CSI_ADDON = "aws-ebs-csi-driver"
# The add-on's controller ServiceAccount; its node pods make no AWS calls (they read the instance's
# identity from the Node object when IMDS is out of reach: the driver's docs/install.md, "Kubernetes Metadata").
EBS_CSI_SERVICE_ACCOUNT = "ebs-csi-controller-sa"
# The AWS managed policy of the driver's docs (AmazonEBSCSIDriverPolicyV2): unlike V1, it reaches only
# volumes and snapshots the driver created and tagged, which is all this stack provisions. Unlike V1 it is
# not under service-role/: its ARN is arn:aws:iam::aws:policy/AmazonEBSCSIDriverPolicyV2 (AWS managed policy
# reference, created 2026-04-16).
EBS_CSI_POLICY = "AmazonEBSCSIDriverPolicyV2"
# What Prometheus keeps its data on: encrypted gp3 (EBS's default KMS key), created in the zone of the pod
# that first mounts it. Delete: the volume goes with its claim (the Prometheus release), not with a pod.
PERSISTENT_STORAGE_CLASS = "gp3-encrypted"


def control_plane_log_group(cluster_name: str) -> str:
    """Where EKS writes the control-plane logs of `cluster_name` (it creates the group if it is absent)."""
    return f"/aws/eks/{cluster_name}/cluster"


@dataclass
class ClusterArgs:
    cluster_name: str
    kubernetes_version: str
    vpc_id: pulumi.Input[str]
    private_subnet_ids: pulumi.Input[list[str]]
    public_subnet_ids: pulumi.Input[list[str]]
    system_nodes: SystemNodes
    # CloudWatch Logs retention of the control-plane log group.
    log_retention_days: int
    access: ClusterAccess = ClusterAccess()


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    kubeconfig_json: pulumi.Output[str]
    node_security_group_id: pulumi.Output[str]
    provider: k8s.Provider
    workload_namespace: pulumi.Output[str]
    addons: list[aws.eks.Addon]
    # What a persistent volume claim of PERSISTENT_STORAGE_CLASS waits for (the class and its driver).
    persistent_storage: k8s.storage.v1.StorageClass

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        releases = versions.KUBERNETES_RELEASES[args.kubernetes_version]
        # Declared before the cluster, so EKS writes into it instead of creating one without retention
        # that the stack would not delete.
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane", name=control_plane_log_group(args.cluster_name),
            retention_in_days=args.log_retention_days, opts=child)
        cluster = eks.Cluster(
            name,
            name=args.cluster_name,
            version=args.kubernetes_version,
            vpc_id=args.vpc_id,
            private_subnet_ids=args.private_subnet_ids,
            public_subnet_ids=args.public_subnet_ids,
            authentication_mode=eks.AuthenticationMode.API,
            endpoint_private_access=True,
            endpoint_public_access=not args.access.private_endpoint_only,
            public_access_cidrs=None if args.access.private_endpoint_only else args.access.public_access_cidrs,
            enabled_cluster_log_types=CONTROL_PLANE_LOG_TYPES,
            skip_default_node_group=True,
            create_oidc_provider=False,  # Pod Identity everywhere: no IRSA
            # The add-ons below are EKS managed add-ons with pinned versions; pulumi-eks must not manage them too.
            use_default_vpc_cni=True,
            coredns_addon_options=eks.CoreDnsAddonOptionsArgs(enabled=False),
            kube_proxy_addon_options=eks.KubeProxyAddonOptionsArgs(enabled=False),
            # One security group for the control plane and every node, the one EKS creates: system nodes
            # (EKS node group) and Karpenter nodes then reach each other's pods (CoreDNS) without extra rules.
            skip_default_security_groups=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_group]),
        )
        # pulumi-eks names the EKS cluster exactly `name=`; taking it through one of the component's
        # outputs makes everything that uses the name wait until the cluster exists.
        self.name = cluster.kubeconfig_json.apply(lambda _: args.cluster_name)
        node_role = iam.role(f"{name}-system-nodes", trust=iam.EC2_TRUST, parent=self,
                             managed_policies=iam.NODE_POLICIES)
        # EKS merges its bootstrap into this template (no AMI, instance type, IAM profile or subnet here:
        # a managed node group sets those itself). Only IMDS changes from EKS's default template.
        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-system",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_protocol_ipv6="disabled",
                http_put_response_hop_limit=iam.IMDS_HOP_LIMIT),
            opts=child)
        # The Karpenter controller and the Neuron scheduler run here, never on capacity Karpenter manages.
        system_nodes = aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=self.name,
            node_role_arn=node_role.arn,
            instance_types=[args.system_nodes.instance_type],
            ami_type="AL2023_x86_64_STANDARD",
            subnet_ids=args.private_subnet_ids,
            labels=SYSTEM_NODE_LABEL,
            # A new template version rolls the group's nodes, as a new AMI release does.
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str)),
            # Without it the group keeps the minor it was created with when the cluster moves on.
            version=args.kubernetes_version,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.system_nodes.min_size, desired_size=args.system_nodes.desired_size,
                max_size=args.system_nodes.max_size),
            opts=child,
        )
        self.addons = [
            aws.eks.Addon(
                f"{name}-{addon}", cluster_name=self.name, addon_name=addon, addon_version=releases[addon],
                resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
                configuration_values=json.dumps(ADDON_CONFIGURATION[addon]) if addon in ADDON_CONFIGURATION else None,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[system_nodes]))
            for addon in CORE_ADDONS
        ]
        if args.access.open_to_all:
            pulumi.log.warn(f"config cluster.publicAccessCidrs: the API endpoint of {args.cluster_name} is open to "
                            f"any address ({OPEN_TO_ALL}); list the networks you deploy from (docs/upgrades.md)")
        # The creator is an admin already (pulumi-eks bootstraps its access entry); these are the others.
        for arn in args.access.admin_role_arns:
            entry = aws.eks.AccessEntry(f"{name}-admin-{admin_role_name(arn)}", cluster_name=self.name,
                                        principal_arn=arn, type="STANDARD", opts=child)
            aws.eks.AccessPolicyAssociation(
                f"{name}-admin-{admin_role_name(arn)}", cluster_name=self.name, principal_arn=entry.principal_arn,
                policy_arn=CLUSTER_ADMIN_POLICY, access_scope={"type": "cluster"}, opts=child)
        self.kubeconfig_json = cluster.kubeconfig_json
        self.node_security_group_id = cluster.node_security_group_id
        aws.ec2.Tag(f"{name}-karpenter-discovery", resource_id=self.node_security_group_id,
                    key=KARPENTER_DISCOVERY_TAG, value=args.cluster_name, opts=child)
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=cluster.kubeconfig_json,
                                     enable_server_side_apply=True, opts=child)
        namespace = k8s.core.v1.Namespace(
            WORKLOAD_NAMESPACE, metadata=k8s.meta.v1.ObjectMetaArgs(name=WORKLOAD_NAMESPACE, labels=READINESS_GATE_LABEL),
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider))
        self.workload_namespace = namespace.metadata.name
        self.persistent_storage = self._persistent_storage(name, args.kubernetes_version)
        self.register_outputs({"name": self.name, "kubeconfig_json": self.kubeconfig_json})

    def _persistent_storage(self, name: str, kubernetes_version: str) -> k8s.storage.v1.StorageClass:
        """The EBS CSI driver (its controller on Pod Identity, after the agent that serves it) and the
        StorageClass that provisions through it."""
        role = iam.pod_identity_role(f"{name}-ebs-csi", parent=self, managed_policies=(EBS_CSI_POLICY,))
        driver = aws.eks.Addon(
            f"{name}-{EBS_CSI_ADDON}", cluster_name=self.name, addon_name=EBS_CSI_ADDON,
            addon_version=versions.KUBERNETES_RELEASES[kubernetes_version][EBS_CSI_ADDON],
            pod_identity_associations=[{"role_arn": role.arn, "service_account": EBS_CSI_SERVICE_ACCOUNT}],
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions(parent=self, depends_on=self.addons))
        return k8s.storage.v1.StorageClass(
            PERSISTENT_STORAGE_CLASS, metadata={"name": PERSISTENT_STORAGE_CLASS},
            provisioner="ebs.csi.aws.com", parameters={"type": "gp3", "encrypted": "true"},
            volume_binding_mode="WaitForFirstConsumer", reclaim_policy="Delete",
            # A larger monitoring.storageGi grows the volume in place.
            allow_volume_expansion=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider, depends_on=[driver]))
