"""Upgrades and access (issue 13, item 7): nodes follow the cluster minor, the API endpoint is only as
open as configured, named roles are admins through access entries, and pods cannot reach IMDS."""

import pytest

from infra import versions
from infra.cluster import CLUSTER_ADMIN_POLICY
from infra.config import ConfigError, load_stack_config
from infra.karpenter import AMI_ALIAS
from planning.offline import manifest, run_program, stack_file_config, with_overrides

CLUSTER = "flux-neuron:cluster"
ADMIN = "arn:aws:iam::123456789012:role/platform/FluxAdmin"
AUDITOR = "arn:aws:iam::210987654321:role/Auditor"
OFFICE = "203.0.113.0/24"
SESSION = "arn:aws:sts::123456789012:assumed-role/FluxAdmin/alice"


def cluster_inputs(rendering):
    return rendering.one("eks:index:Cluster", "cluster").inputs


def test_the_system_nodes_follow_the_cluster_minor(rendering, stack_config):
    group = rendering.one("aws:eks/nodeGroup:NodeGroup", "cluster-system").inputs
    assert group["version"] == cluster_inputs(rendering)["version"] == stack_config.kubernetes_version


def test_karpenter_nodes_get_the_ami_release_pinned_for_the_cluster_minor(monkeypatch):
    minor = load_stack_config(stack_file_config("dev")[0]).kubernetes_version
    pinned = {**versions.KUBERNETES_RELEASES[minor], AMI_ALIAS: "al2023@v20990101"}
    monkeypatch.setitem(versions.KUBERNETES_RELEASES, minor, pinned)
    node_class = manifest(run_program("dev").one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "karpenter-default"))
    assert node_class["spec"]["amiSelectorTerms"] == [{"alias": "al2023@v20990101"}]


def test_every_supported_minor_pins_an_ami_release():
    for minor, pins in versions.KUBERNETES_RELEASES.items():
        assert pins[AMI_ALIAS].startswith("al2023@v"), minor


def test_by_default_the_endpoint_is_public_and_every_up_says_so(caplog):
    rendering = run_program("dev")
    inputs = cluster_inputs(rendering)
    assert (inputs["endpointPublicAccess"], inputs["endpointPrivateAccess"]) == (True, True)
    assert inputs["publicAccessCidrs"] == ["0.0.0.0/0"]
    # Under mocks Pulumi hands engine log messages to Python logging.
    assert "config cluster.publicAccessCidrs: the API endpoint of flux-neuron-dev is open to any address" in \
        caplog.text


def test_the_public_endpoint_admits_only_the_configured_networks(caplog):
    inputs = cluster_inputs(run_program("dev", {CLUSTER: {"publicAccessCidrs": [OFFICE]}}))
    assert inputs["endpointPublicAccess"] is True
    assert inputs["publicAccessCidrs"] == [OFFICE]
    assert "publicAccessCidrs" not in caplog.text


def test_a_private_only_endpoint_has_no_public_side():
    inputs = cluster_inputs(run_program("dev", {CLUSTER: {"privateEndpointOnly": True}}))
    assert inputs["endpointPublicAccess"] is False and inputs["endpointPrivateAccess"] is True
    assert "publicAccessCidrs" not in inputs


def test_named_roles_are_cluster_admins_through_access_entries():
    rendering = run_program("dev", {CLUSTER: {"adminRoleArns": [ADMIN, AUDITOR]}})
    entries = {r.inputs["principalArn"]: r.inputs for r in rendering.of_type("aws:eks/accessEntry:AccessEntry")
               if r.inputs["type"] == "STANDARD"}
    assert set(entries) == {ADMIN, AUDITOR}
    assert all(entry["clusterName"] == rendering.outputs["clusterName"] for entry in entries.values())
    associations = rendering.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    assert {a.inputs["principalArn"]: (a.inputs["policyArn"], a.inputs["accessScope"]) for a in associations} == {
        arn: (CLUSTER_ADMIN_POLICY, {"type": "cluster"}) for arn in (ADMIN, AUDITOR)}
    entry_urns = {r.urn for r in rendering.of_type("aws:eks/accessEntry:AccessEntry")}
    assert all(set(a.dependencies) & entry_urns for a in associations)


def test_by_default_only_the_creator_and_the_nodes_have_access(rendering):
    assert [r.inputs["type"] for r in rendering.of_type("aws:eks/accessEntry:AccessEntry")] == ["EC2_LINUX"]
    assert rendering.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation") == []


BAD_CLUSTERS = {
    "cidr-with-host-bits": ({"publicAccessCidrs": ["203.0.113.7/24"]}, "flux-neuron:cluster.publicAccessCidrs",
                            '["203.0.113.7/24"]', "a list of 1 to 40 IPv4 networks"),
    "no-cidrs": ({"publicAccessCidrs": []}, "flux-neuron:cluster.publicAccessCidrs", "[]",
                 "a list of 1 to 40 IPv4 networks"),
    "too-many-cidrs": ({"publicAccessCidrs": [f"10.0.{i}.0/24" for i in range(41)]},
                       "flux-neuron:cluster.publicAccessCidrs", None, "a list of 1 to 40 IPv4 networks"),
    "private-with-cidrs": ({"privateEndpointOnly": True, "publicAccessCidrs": [OFFICE]},
                           "flux-neuron:cluster.publicAccessCidrs", f'["{OFFICE}"]',
                           "unset with privateEndpointOnly true"),
    "session-not-role": ({"adminRoleArns": [SESSION]}, "flux-neuron:cluster.adminRoleArns", f'["{SESSION}"]',
                         "a list of IAM role ARNs"),
    "same-role-name-twice": ({"adminRoleArns": [ADMIN, "arn:aws:iam::210987654321:role/FluxAdmin"]},
                             "flux-neuron:cluster.adminRoleArns[1]", "'arn:aws:iam::210987654321:role/FluxAdmin'",
                             "each role name once"),
    "private-as-string": ({"privateEndpointOnly": "yes"}, "flux-neuron:cluster.privateEndpointOnly", "'yes'",
                          "true or false"),
}


@pytest.mark.parametrize(("cluster", "key", "shown", "allowed"), BAD_CLUSTERS.values(), ids=BAD_CLUSTERS)
def test_a_bad_cluster_access_names_the_key_the_value_and_what_is_allowed(cluster, key, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        load_stack_config(with_overrides(stack_file_config("dev")[0], {CLUSTER: cluster}))
    assert raised.value.key == key
    message = str(raised.value)
    assert message.startswith(f"config {key}: {shown if shown is not None else ''}"), message
    assert allowed in message.split(" is not allowed: ", 1)[1]


# What a managed node group sets itself and refuses in a launch template (EKS user guide, "Customize managed
# nodes with launch templates"): the IAM instance profile, the instance type given to the group, subnets,
# Spot requests; an AMI would turn off EKS's bootstrap.
REFUSED_IN_NODE_GROUP_TEMPLATES = ("iamInstanceProfile", "instanceType", "networkInterfaces",
                                   "instanceMarketOptions", "imageId")


def test_system_nodes_keep_imds_from_their_pods_as_karpenter_nodes_do(rendering):
    (template,) = rendering.of_type("aws:ec2/launchTemplate:LaunchTemplate")
    node_class = manifest(rendering.one("kubernetes:karpenter.k8s.aws/v1:EC2NodeClass", "karpenter-default"))
    karpenter_imds = node_class["spec"]["metadataOptions"]
    assert template.inputs["metadataOptions"] == {
        "httpEndpoint": karpenter_imds["httpEndpoint"], "httpTokens": karpenter_imds["httpTokens"],
        "httpProtocolIpv6": karpenter_imds["httpProtocolIPv6"],
        "httpPutResponseHopLimit": karpenter_imds["httpPutResponseHopLimit"]}
    assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert not set(template.inputs) & set(REFUSED_IN_NODE_GROUP_TEMPLATES)
    group = rendering.one("aws:eks/nodeGroup:NodeGroup", "cluster-system").inputs
    assert group["launchTemplate"] == {"id": template.id, "version": str(template.outputs["latestVersion"])}
    # With a launch template the root disk is the template's (or the AMI's) business, not the group's.
    assert "diskSize" not in group


def test_controllers_on_the_system_nodes_are_told_what_they_would_ask_imds(rendering, stack_config):
    """Karpenter and the load balancer controller look their region (and VPC) up in IMDS unless told;
    their pods, off the host network, no longer reach it."""
    releases = {r.inputs["name"]: r.inputs.get("values") for r in rendering.of_type("kubernetes:helm.sh/v3:Release")}
    assert {"name": "AWS_REGION", "value": stack_config.region} in releases["karpenter"]["controller"]["env"]
    controller = releases["aws-load-balancer-controller"]
    vpc = rendering.one("aws:ec2/vpc:Vpc", "network")
    assert (controller["region"], controller["vpcId"]) == (stack_config.region, vpc.id)
