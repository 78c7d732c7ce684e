"""Serving that starts by itself once its artifacts are published: the activator (common/activation.py), one
small pod on the cpu NodePool, with the only Kubernetes API access of the workload namespace: listing pods and
patching them (it lifts the scheduling gate every serving pod is created with, infra/pods.py).

Why a gate and not replicas at zero: the gate holds back every pod that could need artifacts not yet published,
whoever creates it (a first deploy, a rollout to a new key while the old pods keep serving, the autoscaler, a
replacement after a node loss), and it leaves the replica count to the autoscaler alone. A gated pod is never
scheduled and Karpenter starts no node for it, so it holds no Neuron device (docs/workloads.md, "How serving
starts")."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.naming import ACTIVATOR, NOT_AWAITED
from infra.options import after, children
from infra.pods import activator_deployment_spec

# What the activator does with pods: find the gated ones, lift their gate. Nothing else, in this namespace only.
ACTIVATOR_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "patch"]}]


@dataclass
class ActivationArgs:
    image_ref: pulumi.Input[str]
    namespace: pulumi.Input[str]
    # The graph volume the publishing Jobs write: the activator resolves through it.
    read_write_claim: pulumi.Input[str]


class Activation(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what its pod waits for through `opts`."""

    def __init__(self, name: str, args: ActivationArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Activation", name, None, opts)
        in_cluster = children(self, opts)
        metadata = {"name": ACTIVATOR, "namespace": args.namespace}
        account = k8s.core.v1.ServiceAccount(ACTIVATOR, metadata=metadata, automount_service_account_token=False,
                                             opts=in_cluster)
        role = k8s.rbac.v1.Role(ACTIVATOR, metadata=metadata, rules=ACTIVATOR_RULES, opts=in_cluster)
        binding = k8s.rbac.v1.RoleBinding(
            ACTIVATOR, metadata=metadata,
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ACTIVATOR},
            subjects=[{"kind": "ServiceAccount", "name": ACTIVATOR, "namespace": args.namespace}],
            opts=after(in_cluster, role, account))
        # Not awaited: its node and the image pull take minutes, and a pod that is down only delays serving.
        k8s.apps.v1.Deployment(
            ACTIVATOR, metadata={**metadata, "annotations": NOT_AWAITED},
            spec=activator_deployment_spec(args.image_ref, args.read_write_claim, args.namespace),
            opts=after(in_cluster, binding))
        self.register_outputs({})
