"""The platform layer (issue 2), as the real program registers it for every real stack file."""

import json

import pulumi.runtime.mocks as pulumi_mocks
import yaml

from infra import versions
from infra.cluster import CORE_ADDONS, EBS_CSI_ADDON, NODE_MONITORING_AGENT
from infra.iam import POD_IDENTITY_TRUST
from infra.karpenter import INTERRUPTION_EVENTS, NODE_REPAIR_GATE
from infra.naming import (
    CPU_NODEPOOL, NEURON_FAMILY_LABEL, NEURON_SCHEDULER_NAME, NEURON_TAINT_KEY, SYSTEM_NODE_LABEL, WORKLOAD_NAMESPACE,
    neuron_nodepool, neuron_spot_nodepool,
)
from infra.monitoring import FORMER_PARENT_NAME, FORMER_PARENT_TYPE
from planning.offline import REPO_ROOT, manifest, run_program

COMPONENTS = ("Network", "Cluster", "Karpenter", "Storage", "Neuron", "Observability", "NetworkPolicies",
              "LoadBalancerController", "Ingress", "Monitoring", "Workloads", "Image")
NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"
ROLE = "aws:iam/role:Role"


def release(rendering, chart_name):
    return next(r for r in rendering.of_type(RELEASE) if r.inputs["name"] == chart_name)


def role_named(rendering, role_name):
    return next(r for r in rendering.of_type(ROLE) if r.outputs["name"] == role_name)


def role_by_arn(rendering, arn):
    return next(r for r in rendering.of_type(ROLE) if r.outputs["arn"] == arn)


def test_each_capability_is_one_component_owning_its_resources(rendering):
    for component in COMPONENTS:
        assert len(rendering.of_type(f"flux-neuron:infra:{component}")) == 1, component
    component_urns = {r.urn for r in rendering.resources if r.type.startswith("flux-neuron:infra:")}
    for resource in rendering.resources:
        if not resource.type.startswith("flux-neuron:infra:"):
            assert resource.parent in component_urns, f"{resource.type} {resource.name} is not inside a component"


def test_cluster_uses_api_authentication_and_the_configured_version(rendering, stack_config):
    cluster = rendering.one("eks:index:Cluster", "cluster")
    assert cluster.inputs["authenticationMode"] == "API"
    assert cluster.inputs["version"] == stack_config.kubernetes_version
    assert cluster.inputs["skipDefaultNodeGroup"] is True
    assert cluster.inputs["name"] == rendering.outputs["clusterName"]


def test_system_node_group_is_labelled_for_controllers(rendering, stack_config):
    group = rendering.one("aws:eks/nodeGroup:NodeGroup", "cluster-system")
    assert group.inputs["labels"] == SYSTEM_NODE_LABEL
    assert group.inputs["instanceTypes"] == [stack_config.system_nodes.instance_type]
    assert group.inputs["clusterName"] == rendering.outputs["clusterName"]


def test_core_addons_are_pinned_for_the_cluster_minor(rendering, stack_config):
    addons = {a.inputs["addonName"]: a for a in rendering.of_type("aws:eks/addon:Addon")}
    pins = versions.KUBERNETES_RELEASES[stack_config.kubernetes_version]
    for name in (*CORE_ADDONS, EBS_CSI_ADDON, "aws-mountpoint-s3-csi-driver", "amazon-cloudwatch-observability"):
        assert addons[name].inputs["addonVersion"] == pins[name]
        assert addons[name].inputs["clusterName"] == rendering.outputs["clusterName"]


def test_accelerated_nodes_are_monitored_and_repaired(rendering, stack_config):
    """The node monitoring agent sets AcceleratedHardwareReady on a node whose Neuron devices fail;
    Karpenter, with its node repair gate on, replaces such a node."""
    (agent,) = [a for a in rendering.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == NODE_MONITORING_AGENT]
    assert agent.inputs["addonVersion"] == versions.KUBERNETES_RELEASES[stack_config.kubernetes_version][
        "eks-node-monitoring-agent"]
    assert agent.inputs["clusterName"] == rendering.outputs["clusterName"]
    # It calls no AWS API: no role, no Pod Identity association.
    assert not agent.inputs.get("podIdentityAssociations") and not agent.inputs.get("serviceAccountRoleArn")
    assert all(NODE_MONITORING_AGENT in pins for pins in versions.KUBERNETES_RELEASES.values())
    assert release(rendering, "karpenter").inputs["values"]["settings"]["featureGates"] == {"nodeRepair": True}


def test_kubernetes_objects_go_through_the_cluster_provider_only(rendering, stack):
    provider = rendering.one("pulumi:providers:kubernetes", "cluster-k8s")
    cluster = rendering.one("eks:index:Cluster", "cluster")
    assert provider.inputs["kubeconfig"] == cluster.outputs["kubeconfigJson"]
    for resource in rendering.resources:
        if resource.type.startswith("kubernetes:"):
            assert resource.provider.startswith(provider.urn + "::"), resource.name
    stack_file = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert "kubernetes" in stack_file["config"]["pulumi:disable-default-providers"]


def test_karpenter_settings_name_the_real_cluster_and_queue(rendering):
    values = release(rendering, "karpenter").inputs["values"]
    queue = rendering.one("aws:sqs/queue:Queue", "karpenter")
    assert values["settings"] == {"clusterName": rendering.outputs["clusterName"],
                                  "interruptionQueue": queue.outputs["name"],
                                  "featureGates": {NODE_REPAIR_GATE: True}}
    assert values["nodeSelector"] == SYSTEM_NODE_LABEL
    assert release(rendering, "karpenter").inputs["version"] == versions.KARPENTER_VERSION


def test_helm_installed_controllers_start_after_their_pod_identity_association(rendering):
    """Pod Identity only hands credentials to pods admitted after the association exists."""
    associations = {a.inputs["serviceAccount"]: a
                    for a in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")}
    for chart, service_account in (("karpenter", "karpenter"),
                                   ("aws-load-balancer-controller", "aws-load-balancer-controller")):
        assert associations[service_account].urn in release(rendering, chart).dependencies, chart


def test_interruption_events_all_reach_the_queue(rendering):
    queue = rendering.one("aws:sqs/queue:Queue", "karpenter")
    rules = rendering.of_type("aws:cloudwatch/eventRule:EventRule")
    targets = rendering.of_type("aws:cloudwatch/eventTarget:EventTarget")
    assert sorted(json.loads(rule.inputs["eventPattern"])["detail-type"][0] for rule in rules) == sorted(
        pattern["detail-type"][0] for pattern in INTERRUPTION_EVENTS.values())
    assert sorted(t.inputs["rule"] for t in targets) == sorted(r.outputs["name"] for r in rules)
    assert all(t.inputs["arn"] == queue.outputs["arn"] for t in targets)


def test_node_class_role_is_the_role_with_the_ec2_linux_access_entry(rendering):
    node_class = manifest(rendering.one(NODECLASS, "karpenter-default"))
    entry = rendering.one("aws:eks/accessEntry:AccessEntry", "karpenter-node")
    assert entry.inputs["type"] == "EC2_LINUX"
    assert role_by_arn(rendering, entry.inputs["principalArn"]).outputs["name"] == node_class["spec"]["role"]


def test_node_class_is_hardened_and_sized_for_neuron_images(rendering, stack_config):
    spec = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert spec["amiSelectorTerms"] == [
        {"alias": versions.KUBERNETES_RELEASES[stack_config.kubernetes_version]["al2023-ami-alias"]}]
    assert spec["metadataOptions"]["httpTokens"] == "required"
    # Pods cannot reach the node role through IMDS (docs/upgrades.md, "Access").
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1
    root = spec["blockDeviceMappings"][0]["ebs"]
    assert root["encrypted"] is True and root["volumeType"] == "gp3" and int(root["volumeSize"][:-2]) >= 200
    assert spec["instanceStorePolicy"] == "RAID0"



def test_karpenter_nodes_share_the_eks_security_group_with_the_system_nodes(rendering):
    """System nodes (an EKS node group) sit in the EKS-created group; so must Karpenter's, or
    their pods cannot reach CoreDNS on the system nodes."""
    cluster = rendering.one("eks:index:Cluster", "cluster")
    assert cluster.inputs["skipDefaultSecurityGroups"] is True
    eks_group = cluster.outputs["clusterSecurityGroupId"]
    spec = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert spec["securityGroupSelectorTerms"] == [{"id": eks_group}]
    tag = rendering.one("aws:ec2/tag:Tag", "cluster-karpenter-discovery").inputs
    assert tag == {"resourceId": eks_group, "key": "karpenter.sh/discovery", "value": rendering.outputs["clusterName"]}


def test_tainted_nodepools_per_neuron_family_and_a_cpu_pool(rendering, stack_config):
    """One NodePool per family, two (on-demand base and Spot) where it allows Spot: tests/infra/test_disruption.py
    has how they split the family's devices."""
    pools = {manifest(p)["metadata"]["name"]: manifest(p)["spec"] for p in rendering.of_type(NODEPOOL)}
    family_pools = {family: [neuron_nodepool(family), *([neuron_spot_nodepool(family)] if pool.allows_spot else [])]
                    for family, pool in stack_config.neuron_pools.items()}
    expected = {name for names in family_pools.values() for name in names} | {CPU_NODEPOOL}
    assert set(pools) == expected
    assert sorted(rendering.outputs["nodePools"]) == sorted(expected)
    node_class_name = manifest(rendering.one(NODECLASS, "karpenter-default"))["metadata"]["name"]
    for name, spec in pools.items():
        assert spec["template"]["spec"]["nodeClassRef"]["name"] == node_class_name
    for family, pool in stack_config.neuron_pools.items():
        for name in family_pools[family]:
            spec = pools[name]
            assert spec["template"]["metadata"]["labels"] == {NEURON_FAMILY_LABEL: family}
            assert spec["template"]["spec"]["taints"] == [{"key": NEURON_TAINT_KEY, "effect": "NoSchedule"}]
            requirements = {r["key"]: r["values"] for r in spec["template"]["spec"]["requirements"]}
            assert requirements["karpenter.k8s.aws/instance-family"] == [family]
            assert requirements["node.kubernetes.io/instance-type"] == list(pool.instance_types)
        assert sum(pools[name]["limits"]["aws.amazon.com/neuron"] for name in family_pools[family]) == pool.max_devices
    assert "taints" not in pools[CPU_NODEPOOL]["template"]["spec"]


def test_custom_resources_depend_on_the_releases_that_install_their_crds(rendering):
    crd_release = release(rendering, "karpenter-crd")
    controller = release(rendering, "karpenter")
    for resource in (*rendering.of_type(NODEPOOL), *rendering.of_type(NODECLASS)):
        assert crd_release.urn in resource.dependencies and controller.urn in resource.dependencies
    assert crd_release.urn in controller.dependencies
    assert controller.inputs["skipCrds"] is True


def test_what_a_component_waits_for_through_opts_reaches_the_children_that_must_wait(rendering):
    """Components take depends_on through opts; Pulumi does not hand it to their children, each
    component does, to the children that run in the cluster."""
    addons = {r.urn for r in rendering.of_type("aws:eks/addon:Addon") if r.inputs["addonName"] in CORE_ADDONS}
    for chart in ("karpenter-crd", "karpenter", "neuron-helm-chart", "aws-load-balancer-controller"):
        assert addons <= set(release(rendering, chart).dependencies), chart
    for addon in ("aws-mountpoint-s3-csi-driver", "amazon-cloudwatch-observability"):
        (resource,) = [r for r in rendering.of_type("aws:eks/addon:Addon") if r.inputs["addonName"] == addon]
        assert addons <= set(resource.dependencies), addon
    csi = next(r for r in rendering.of_type("aws:eks/addon:Addon")
               if r.inputs["addonName"] == "aws-mountpoint-s3-csi-driver")
    for kind in ("kubernetes:core/v1:PersistentVolume", "kubernetes:core/v1:PersistentVolumeClaim"):
        assert all(csi.urn in r.dependencies for r in rendering.of_type(kind)), kind
    # Pods (and what they use) wait for their NodePools, the scheduler, their NetworkPolicies and the
    # load balancer controller's webhook; so does the monitoring stack, whose pods run in the cluster too.
    pods_wait_for = addons | {r.urn for r in rendering.of_type(NODEPOOL)} | {
        release(rendering, "neuron-helm-chart").urn, release(rendering, "aws-load-balancer-controller").urn,
        *(r.urn for r in rendering.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy"))}
    workloads = rendering.one("flux-neuron:infra:Workloads", "workloads").urn
    monitoring = rendering.one("flux-neuron:infra:Monitoring", "monitoring").urn
    in_cluster = [r for r in rendering.resources
                  if r.parent in (workloads, monitoring) and r.type.startswith("kubernetes:")]
    assert {r.type for r in in_cluster} >= {RELEASE, "kubernetes:batch/v1:Job", "kubernetes:apps/v1:Deployment",
                                           "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"}
    for resource in in_cluster:
        assert pods_wait_for <= set(resource.dependencies), resource.name
    metrics = {release(rendering, "prometheus").urn, release(rendering, "prometheus-adapter").urn}
    for autoscaler in rendering.of_type("kubernetes:autoscaling/v2:HorizontalPodAutoscaler"):
        assert metrics <= set(autoscaler.dependencies), autoscaler.name
    # Children in AWS start at once: what the component waits for is not theirs to wait for.
    assert not addons & set(rendering.one("aws:sqs/queue:Queue", "karpenter").dependencies)


def test_the_monitoring_stack_keeps_its_urns_through_aliases_to_its_former_parent(monkeypatch, stack):
    """Prometheus, its adapter and Alertmanager's role were children of the Workloads component: on a
    stack deployed before the move, each alias names that parent, so `pulumi up` adopts the resource
    under its new parent instead of replacing it."""
    requests = []
    register = pulumi_mocks.MockMonitor.RegisterResource

    def recording(monitor, request):
        requests.append(request)
        return register(monitor, request)

    monkeypatch.setattr(pulumi_mocks.MockMonitor, "RegisterResource", recording)
    topic = "arn:aws:sns:us-west-2:123456789012:flux-alerts"
    rendering = run_program(stack, {"flux-neuron:monitoring": {"alertTopicArn": topic}})
    workloads = rendering.one(FORMER_PARENT_TYPE, FORMER_PARENT_NAME)
    monitoring = rendering.one("flux-neuron:infra:Monitoring", "monitoring")
    moved = [request for request in requests if request.parent == monitoring.urn]
    assert {request.type for request in moved} == {
        RELEASE, ROLE, "aws:iam/rolePolicy:RolePolicy", "aws:eks/podIdentityAssociation:PodIdentityAssociation"}
    for request in moved:
        # Only the parent differs: same name, same type, same stack and project.
        assert [(alias.spec.parentUrn, alias.spec.name, alias.spec.type) for alias in request.aliases] == [
            (workloads.urn, "", "")], request.name
    assert not [r for r in rendering.resources if r.parent == workloads.urn and r.type in (RELEASE, ROLE)]


def test_pod_identity_roles_trust_only_eks_pods(rendering):
    associations = [(a.inputs["roleArn"], a.inputs["namespace"], a.inputs["serviceAccount"])
                    for a in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")]
    for addon in rendering.of_type("aws:eks/addon:Addon"):
        associations += [(p["roleArn"], None, p["serviceAccount"])
                         for p in addon.inputs.get("podIdentityAssociations", [])]
    assert {sa for _, _, sa in associations} >= {"karpenter", "s3-csi-driver-sa", "cloudwatch-agent"}
    for role_arn, _, _ in associations:
        trust = json.loads(role_by_arn(rendering, role_arn).inputs["assumeRolePolicy"])
        assert trust == POD_IDENTITY_TRUST
        assert sorted(trust["Statement"][0]["Action"]) == ["sts:AssumeRole", "sts:TagSession"]


def test_graph_volumes_mount_the_bucket(rendering, stack_config):
    bucket = rendering.one("aws:s3/bucket:Bucket", "graphs").outputs["bucket"]
    assert rendering.outputs["graphsBucket"] == bucket
    volumes = {manifest(v)["metadata"]["name"]: manifest(v)["spec"]
               for v in rendering.of_type("kubernetes:core/v1:PersistentVolume")}
    claims = {manifest(c)["metadata"]["name"]: manifest(c)
              for c in rendering.of_type("kubernetes:core/v1:PersistentVolumeClaim")}
    assert set(volumes) == set(claims) == {"flux-graphs-rw", "flux-graphs-ro"}
    for name, spec in volumes.items():
        assert spec["csi"]["driver"] == "s3.csi.aws.com"
        assert spec["csi"]["volumeAttributes"]["bucketName"] == bucket
        assert f"region {stack_config.region}" in spec["mountOptions"]
        assert spec["claimRef"] == {"namespace": WORKLOAD_NAMESPACE, "name": name}
        assert claims[name]["spec"]["volumeName"] == name
        assert claims[name]["metadata"]["namespace"] == WORKLOAD_NAMESPACE
    assert "read-only" in volumes["flux-graphs-ro"]["mountOptions"]
    # One cache: the serving pod's verified copy; no Mountpoint data cache (docs/cold-start.md).
    assert "cache" not in volumes["flux-graphs-ro"]["csi"]["volumeAttributes"]
    assert "read-only" not in volumes["flux-graphs-rw"]["mountOptions"]
    assert volumes["flux-graphs-rw"]["accessModes"] == ["ReadWriteMany"]


def test_bucket_is_private_encrypted_tls_only_and_cleans_up_uploads(rendering):
    block = rendering.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "graphs").inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                          "restrictPublicBuckets"))
    encryption = rendering.one("aws:s3/bucketServerSideEncryptionConfiguration:"
                               "BucketServerSideEncryptionConfiguration", "graphs").inputs
    assert encryption["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    policy = json.loads(rendering.one("aws:s3/bucketPolicy:BucketPolicy", "graphs").inputs["policy"])
    assert policy["Statement"][0]["Effect"] == "Deny"
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    lifecycle = rendering.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "graphs").inputs
    assert lifecycle["rules"][0]["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": 1}


def test_csi_driver_role_reaches_only_the_graph_prefix(rendering):
    bucket_arn = rendering.one("aws:s3/bucket:Bucket", "graphs").outputs["arn"]
    policy = json.loads(rendering.one("aws:iam/rolePolicy:RolePolicy", "graphs-csi-inline").inputs["policy"])
    actions = {a for s in policy["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    assert {json.dumps(s["Resource"]) for s in policy["Statement"]} == {
        json.dumps(bucket_arn), json.dumps(f"{bucket_arn}/graphs/*")}


def test_neuron_scheduler_runs_on_eks_with_the_matching_kube_scheduler(rendering, stack_config):
    chart = release(rendering, "neuron-helm-chart")
    assert chart.inputs["version"] == versions.NEURON_CHART_VERSION
    values = chart.inputs["values"]
    assert values["npd"] == {"enabled": False}
    scheduler = values["scheduler"]
    assert scheduler["enabled"] is True
    assert scheduler["nodeSelector"] == SYSTEM_NODE_LABEL  # not the chart's master-node selector
    assert scheduler["customScheduler"]["fullnameOverride"] == NEURON_SCHEDULER_NAME
    tag = scheduler["customScheduler"]["image"]["tag"]
    assert tag.startswith(f"v{stack_config.kubernetes_version}.")


def test_container_insights_agent_can_publish_metrics(rendering):
    addon = next(a for a in rendering.of_type("aws:eks/addon:Addon")
                 if a.inputs["addonName"] == "amazon-cloudwatch-observability")
    role = role_by_arn(rendering, addon.inputs["podIdentityAssociations"][0]["roleArn"])
    attachments = [a.inputs["policyArn"] for a in rendering.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                   if a.inputs["role"] == role.outputs["name"]]
    assert attachments == ["arn:aws:iam::aws:policy/CloudWatchAgentServerPolicy"]


def test_network_tags_subnets_for_karpenter_and_load_balancers(rendering, stack_config):
    subnets = rendering.of_type("aws:ec2/subnet:Subnet")
    public = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/elb") == "1"]
    private = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"]
    assert len(public) == len(private) == stack_config.network.availability_zones
    assert all(s.inputs["tags"]["karpenter.sh/discovery"] == rendering.outputs["clusterName"] for s in private)
    node_class = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert sorted(term["id"] for term in node_class["subnetSelectorTerms"]) == sorted(s.id for s in private)
    assert len(rendering.of_type("aws:ec2/natGateway:NatGateway")) == stack_config.network.availability_zones


def test_existing_vpc_is_used_as_is():
    from planning.offline import run_program

    existing = {"vpcId": "vpc-0123456789abcdef0",
                "privateSubnetIds": ["subnet-0000000000000000a", "subnet-0000000000000000b"],
                "publicSubnetIds": ["subnet-0000000000000000c", "subnet-0000000000000000d"]}
    rendering = run_program("dev", {"flux-neuron:existingVpc": existing})
    assert rendering.of_type("aws:ec2/vpc:Vpc") == [] and rendering.of_type("aws:ec2/subnet:Subnet") == []
    cluster = rendering.one("eks:index:Cluster", "cluster").inputs
    assert cluster["vpcId"] == existing["vpcId"]
    assert cluster["privateSubnetIds"] == existing["privateSubnetIds"]
    node_class = manifest(rendering.one(NODECLASS, "karpenter-default"))["spec"]
    assert node_class["subnetSelectorTerms"] == [{"id": s} for s in existing["privateSubnetIds"]]


def test_stack_outputs_and_the_kubeconfig_is_secret(rendering, stack_config):
    assert {"region", "clusterName", "kubeconfig", "graphsBucket", "nodePools"} <= set(rendering.outputs)
    assert rendering.outputs["region"] == stack_config.region
    assert "kubeconfig" in rendering.secret_outputs
    assert json.loads(rendering.outputs["kubeconfig"])["kind"] == "Config"
