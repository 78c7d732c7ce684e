"""The NetworkPolicies of the workload namespace, enforced by the VPC CNI (`enableNetworkPolicy`,
infra.cluster): every pod is denied all traffic in and out, except

- DNS: every pod may query CoreDNS (kube-system), UDP and TCP 53, and nothing else there;
- serving pods accept their HTTP port from the load balancer's subnets (target type ip: the ALB
  connects from its own addresses in those subnets, health checks included), from the
  Prometheus server that scrapes them and from the CloudWatch agent that takes their metrics to
  the stack's dashboard (infra.dashboard). They open no connection: the graphs come through the
  Mountpoint CSI driver, whose mounts run on the node outside this namespace, and the server
  never calls the Hub;
- compile pods (the weights and graphs Jobs) accept nothing and reach HTTPS (443) only: the Hub download.
  Their S3 writes go through the CSI driver too; the instance metadata service (port 80) stays out of reach;
- the activator accepts nothing and reaches HTTPS (443) only: the Kubernetes API server, whose endpoints are
  the control plane's network interfaces in the VPC (their addresses are not known to the program). Its resolves
  read the graph volume through the CSI driver.

Kubelet probes still arrive: the CNI's policy agent always admits the node's own address.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.dashboard import AGENT_LABELS
from infra.monitoring import PROMETHEUS_RELEASE
from infra.naming import ACTIVATE, COMPILE, METRICS_NAMESPACE, SERVE, SYSTEM_NAMESPACE, component_labels
from common import endpoints
from infra.options import children

DEFAULT_DENY = "default-deny"
ALLOW_DNS = "allow-dns"
SERVE_INGRESS = "serve-from-load-balancer-and-prometheus"
COMPILE_EGRESS = "compile-to-https"
ACTIVATOR_EGRESS = "activator-to-api-server"

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# EKS's CoreDNS pods (the coredns add-on) carry the upstream kube-dns label.
COREDNS_LABELS = {"k8s-app": "kube-dns"}
# The prometheus chart's server pods: its `prometheus.server.matchLabels`.
PROMETHEUS_SERVER_LABELS = {"app.kubernetes.io/name": "prometheus", "app.kubernetes.io/instance": PROMETHEUS_RELEASE,
                            "app.kubernetes.io/component": "server"}
DNS_PORT = 53
HTTPS_PORT = 443


def _in_namespace(namespace: str, pod_labels: dict[str, str]) -> dict:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
            "podSelector": {"matchLabels": pod_labels}}


def policy_specs(load_balancer_cidrs: list[str]) -> dict[str, dict]:
    """Policy name -> NetworkPolicy spec; `load_balancer_cidrs` are the subnets the ALB lives in."""
    serving_port = [{"protocol": "TCP", "port": endpoints.DEFAULT_PORT}]
    return {
        DEFAULT_DENY: {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        ALLOW_DNS: {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{"to": [_in_namespace(SYSTEM_NAMESPACE, COREDNS_LABELS)],
                        "ports": [{"protocol": protocol, "port": DNS_PORT} for protocol in ("UDP", "TCP")]}],
        },
        SERVE_INGRESS: {
            "podSelector": {"matchLabels": component_labels(SERVE)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"ipBlock": {"cidr": cidr}} for cidr in load_balancer_cidrs], "ports": serving_port},
                {"from": [_in_namespace(METRICS_NAMESPACE, PROMETHEUS_SERVER_LABELS)], "ports": serving_port},
                {"from": [_in_namespace(METRICS_NAMESPACE, AGENT_LABELS)], "ports": serving_port},
            ],
        },
        COMPILE_EGRESS: _https_egress(COMPILE),
        ACTIVATOR_EGRESS: _https_egress(ACTIVATE),
    }


def _https_egress(component: str) -> dict:
    return {"podSelector": {"matchLabels": component_labels(component)}, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "TCP", "port": HTTPS_PORT}]}]}


@dataclass
class NetworkPoliciesArgs:
    namespace: pulumi.Input[str]
    # The public subnets (infra.network), where infra.ingress places the ALB.
    load_balancer_cidrs: pulumi.Input[list[str]]


class NetworkPolicies(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider through `opts`; make the workloads depend on it,
    so that no pod of the namespace runs before its policies exist."""

    def __init__(self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:NetworkPolicies", name, None, opts)
        specs = pulumi.Output.from_input(args.load_balancer_cidrs).apply(policy_specs)
        for policy in policy_specs([]):
            k8s.networking.v1.NetworkPolicy(
                policy, metadata={"name": policy, "namespace": args.namespace},
                spec=specs.apply(lambda all_specs, policy=policy: all_specs[policy]),
                opts=children(self, opts))
        self.register_outputs({})
