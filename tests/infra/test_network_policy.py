"""The workload namespace's NetworkPolicies as the real program renders them for every stack file.

`allowed` below evaluates NetworkPolicy v1 semantics (isolation by selection, peers, ports; a
connection needs the source's egress and the destination's ingress) over the rendered policies
and the rendered pod templates, so each expectation reads as one connection that may or may not
be made. The CNI itself (the VPC CNI's eBPF agent) only runs on AWS.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import pulumi
import pytest

from infra.cluster import ADDON_CONFIGURATION, READINESS_GATE_LABEL
from infra.naming import COMPILE, METRICS_NAMESPACE, SERVE, SYSTEM_NAMESPACE, WORKLOAD_NAMESPACE
from infra.dashboard import AGENT_KIND
from infra.network_policy import DEFAULT_DENY
from planning.offline import _Mocks, manifest, run_program
from planning.checks.objects import pod_templates
from common import endpoints

POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
PUBLIC_ELB_TAG = "kubernetes.io/role/elb"
PRIVATE_ELB_TAG = "kubernetes.io/role/internal-elb"
PORT = endpoints.DEFAULT_PORT
# As EKS's CoreDNS add-on labels its pods.
COREDNS = {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"}
INSTANCE_METADATA = "169.254.169.254"
INTERNET = "52.94.0.10"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict = field(default_factory=dict, hash=False)
    ip: str = "10.0.1.23"


@dataclass(frozen=True)
class Address:
    """Anything that is not a pod: a load balancer node, the internet, a metadata service."""

    ip: str


def _selects(selector: dict, labels: dict) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if not {"In": present and value in expression.get("values", []),
                "NotIn": not present or value not in expression.get("values", []),
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


def _peer_matches(peer: dict, other, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(excluded) for excluded in block.get("except", []))
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        namespace_ok = _selects(peer["namespaceSelector"], {NAMESPACE_NAME_LABEL: other.namespace})
    else:
        namespace_ok = other.namespace == policy_namespace
    return namespace_ok and _selects(peer.get("podSelector", {}), other.labels)


def _rule_allows(rule: dict, peers_key: str, other, port: int, protocol: str, policy_namespace: str) -> bool:
    peers_ok = not rule.get(peers_key) or any(_peer_matches(p, other, policy_namespace) for p in rule[peers_key])
    ports_ok = not rule.get("ports") or any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in rule["ports"])
    return peers_ok and ports_ok


def _direction_allows(policies: list[dict], pod, other, port: int, protocol: str, direction: str) -> bool:
    """Whether `pod` may receive from (Ingress) or send to (Egress) `other`, by the policies of its namespace."""
    if not isinstance(pod, Pod):
        return True  # nothing outside the cluster is policed
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if p["metadata"]["namespace"] == pod.namespace
                 and _selects(p["spec"]["podSelector"], pod.labels) and direction in p["spec"]["policyTypes"]]
    if not selecting:
        return True  # not isolated
    return any(_rule_allows(rule, peers_key, other, port, protocol, policy["metadata"]["namespace"])
               for policy in selecting for rule in policy["spec"].get(rules_key, []))


def allowed(policies: list[dict], source, destination, port: int, protocol: str = "TCP") -> bool:
    return (_direction_allows(policies, source, destination, port, protocol, "Egress")
            and _direction_allows(policies, destination, source, port, protocol, "Ingress"))


def policies_of(rendering) -> list[dict]:
    return [manifest(resource) for resource in rendering.of_type(POLICY)]


def workload_pods(rendering) -> dict[str, list[Pod]]:
    """The pods of every workload template in the namespace, by component."""
    pods: dict[str, list[Pod]] = {}
    for template in pod_templates([manifest(r) for r in rendering.kubernetes_objects()]):
        if template.namespace == WORKLOAD_NAMESPACE:
            component = template.labels["app.kubernetes.io/component"]
            pods.setdefault(component, []).append(Pod(WORKLOAD_NAMESPACE, template.labels))
    return pods


def subnet_cidrs(rendering, tag: str) -> list[str]:
    return [s.inputs["cidrBlock"] for s in rendering.of_type("aws:ec2/subnet:Subnet") if s.inputs["tags"].get(tag)]


def first_host(cidr: str) -> str:
    return str(next(ipaddress.ip_network(cidr).hosts()))


def prometheus_server(rendering) -> Pod:
    """A pod of the prometheus chart's server, labelled as the chart's `prometheus.server.matchLabels` do."""
    release = next(r for r in rendering.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == "prometheus")
    values = release.inputs["values"]
    assert "nameOverride" not in values and "name" not in values["server"]  # the chart's defaults name the labels
    return Pod(release.inputs["namespace"], {"app.kubernetes.io/name": "prometheus",
                                             "app.kubernetes.io/instance": release.inputs["name"],
                                             "app.kubernetes.io/component": "server"})


def test_the_cni_enforces_network_policies_and_the_namespace_gets_readiness_gates(rendering):
    vpc_cni = next(a for a in rendering.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni")
    assert json.loads(vpc_cni.inputs["configurationValues"]) == ADDON_CONFIGURATION["vpc-cni"] == {
        "enableNetworkPolicy": "true"}
    namespace = manifest(rendering.one("kubernetes:core/v1:Namespace", WORKLOAD_NAMESPACE))
    assert namespace["metadata"]["labels"] == READINESS_GATE_LABEL == {
        "elbv2.k8s.aws/pod-readiness-gate-inject": "enabled"}


def test_every_pod_is_selected_and_the_default_deny_covers_them_all(rendering):
    policies = policies_of(rendering)
    assert {p["metadata"]["namespace"] for p in policies} == {WORKLOAD_NAMESPACE}
    deny = next(p for p in policies if p["metadata"]["name"] == DEFAULT_DENY)["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    templates = [t for t in pod_templates([manifest(r) for r in rendering.kubernetes_objects()])
                 if t.namespace == WORKLOAD_NAMESPACE]
    assert {t.owner["kind"] for t in templates} == {"Job", "Deployment"}
    for template in templates:
        selecting = [p["metadata"]["name"] for p in policies if _selects(p["spec"]["podSelector"], template.labels)]
        assert DEFAULT_DENY in selecting, template.owner["metadata"]["name"]
        # And one written for its component, beyond the namespace-wide ones.
        specific = [p for p in policies if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"],
                                                                                  template.labels)]
        assert specific, template.owner["metadata"]["name"]


def test_serving_pods_accept_only_the_load_balancer_prometheus_and_the_metrics_agent_on_their_port(rendering):
    policies, pods = policies_of(rendering), workload_pods(rendering)
    prometheus = prometheus_server(rendering)
    # The CloudWatch agent feeding the dashboard, on the pod network, labelled as its resource (infra.dashboard).
    (agent,) = [manifest(r) for r in rendering.of_type(f"kubernetes:cloudwatch.aws.amazon.com/v1alpha1:{AGENT_KIND}")]
    metrics_agent = Pod(agent["metadata"]["namespace"], agent["metadata"]["labels"])
    public, private = subnet_cidrs(rendering, PUBLIC_ELB_TAG), subnet_cidrs(rendering, PRIVATE_ELB_TAG)
    assert public and private
    for serve in pods[SERVE]:
        for cidr in public:
            assert allowed(policies, Address(first_host(cidr)), serve, PORT)
            assert not allowed(policies, Address(first_host(cidr)), serve, PORT + 1)
        assert allowed(policies, prometheus, serve, PORT)
        assert not allowed(policies, prometheus, serve, 9090)
        assert allowed(policies, metrics_agent, serve, PORT)
        assert not allowed(policies, Pod("default", metrics_agent.labels), serve, PORT)
        # Nodes and pods live in the private subnets: none of them gets in.
        assert not any(allowed(policies, Address(first_host(cidr)), serve, PORT) for cidr in private)
        assert not allowed(policies, Pod("default", {}), serve, PORT)
        assert not allowed(policies, Pod(METRICS_NAMESPACE, {"app.kubernetes.io/name": "prometheus-adapter"}),
                           serve, PORT)
        assert not allowed(policies, Pod("default", prometheus.labels), serve, PORT)
        for other in (*pods[SERVE], *pods[COMPILE]):
            assert not allowed(policies, other, serve, PORT)
        assert not allowed(policies, Address(INTERNET), serve, PORT)


def test_compile_pods_accept_nothing_and_reach_only_dns_and_https(rendering):
    policies, pods = policies_of(rendering), workload_pods(rendering)
    coredns = Pod(SYSTEM_NAMESPACE, COREDNS)
    for compile_pod in pods[COMPILE]:
        for cidr in subnet_cidrs(rendering, PUBLIC_ELB_TAG):
            assert not allowed(policies, Address(first_host(cidr)), compile_pod, PORT)
        assert not allowed(policies, prometheus_server(rendering), compile_pod, PORT)
        assert allowed(policies, compile_pod, Address(INTERNET), 443)
        assert not allowed(policies, compile_pod, Address(INTERNET), 80)
        assert not allowed(policies, compile_pod, Address(INSTANCE_METADATA), 80)
        assert allowed(policies, compile_pod, coredns, 53, "UDP") and allowed(policies, compile_pod, coredns, 53)
        assert not allowed(policies, compile_pod, Pod(SYSTEM_NAMESPACE, {"app": "other"}), 53, "UDP")
        for serve in pods[SERVE]:
            assert not allowed(policies, compile_pod, serve, PORT)


def test_serving_pods_open_no_connection_but_dns(rendering):
    policies, pods = policies_of(rendering), workload_pods(rendering)
    for serve in pods[SERVE]:
        assert allowed(policies, serve, Pod(SYSTEM_NAMESPACE, COREDNS), 53, "UDP")
        assert not allowed(policies, serve, Address(INTERNET), 443)
        assert not allowed(policies, serve, Address(INSTANCE_METADATA), 80)
        assert not allowed(policies, serve, Pod(METRICS_NAMESPACE, prometheus_server(rendering).labels), 9090)


def test_with_an_existing_vpc_the_load_balancer_subnets_are_looked_up():
    existing = {"vpcId": "vpc-0123456789abcdef0",
                "privateSubnetIds": ["subnet-0000000000000000a", "subnet-0000000000000000b"],
                "publicSubnetIds": ["subnet-0000000000000000c", "subnet-0000000000000000d"]}
    rendering = run_program("dev", {"flux-neuron:existingVpc": existing})
    mocks = _Mocks("dev", "us-west-2")
    looked_up = [mocks.call(pulumi.runtime.MockCallArgs("aws:ec2/getSubnet:getSubnet", {"id": subnet}, ""))["cidrBlock"]
                 for subnet in existing["publicSubnetIds"]]
    policies = policies_of(rendering)
    serve = workload_pods(rendering)[SERVE][0]
    for cidr in looked_up:
        assert allowed(policies, Address(first_host(cidr)), serve, PORT)
    ingress = manifest(rendering.one("kubernetes:networking.k8s.io/v1:Ingress", "ingress"))
    assert ingress["metadata"]["annotations"]["alb.ingress.kubernetes.io/subnets"] == ",".join(
        existing["publicSubnetIds"])


@pytest.mark.parametrize("component", [SERVE, COMPILE])
def test_workloads_start_after_their_policies_and_the_readiness_gate_webhook(rendering, component):
    """A pod started before its policies would run unconfined; the controller's pod webhook fails
    closed, so a pod created before it is up is refused."""
    kind = {SERVE: "kubernetes:apps/v1:Deployment", COMPILE: "kubernetes:batch/v1:Job"}[component]
    policies = {r.urn for r in rendering.of_type(POLICY)}
    controller = next(r for r in rendering.of_type("kubernetes:helm.sh/v3:Release")
                      if r.inputs["name"] == "aws-load-balancer-controller")
    for workload in rendering.of_type(kind):
        assert policies <= set(workload.dependencies) and controller.urn in workload.dependencies, workload.name
