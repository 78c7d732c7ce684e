"""IAM building blocks shared by the components: one way to write a role, one way to trust a pod."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import pulumi
import pulumi_aws as aws

# EKS Pod Identity assumes roles with both actions; the agent tags the session with pod attributes.
POD_IDENTITY_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": "pods.eks.amazonaws.com"},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
    }],
}

EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}

# IMDSv2 only, and its token answers one hop: it cannot leave the host's network namespace, so pods
# (on the pod network) cannot take the node role's credentials; host-network agents and the kubelet
# still can. Every node the stack launches answers so (docs/upgrades.md, "Access").
IMDS_HOP_LIMIT = 1

AWS_MANAGED_POLICY = "arn:aws:iam::aws:policy/"
# What every EKS node needs: join the cluster, pod networking, image pulls, SSM for debugging.
NODE_POLICIES = (
    "AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryPullOnly",
    "AmazonSSMManagedInstanceCore",
)


def policy_document(statements: Sequence[dict[str, Any]]) -> pulumi.Output[str]:
    """A policy document from statements whose values may be Outputs."""
    return pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": list(statements)})


def role(
    name: str,
    *,
    trust: dict[str, Any],
    parent: pulumi.Resource,
    managed_policies: Sequence[str] = (),
    inline_policy: pulumi.Input[str] | None = None,
    aliases: Sequence[pulumi.Alias] = (),
) -> aws.iam.Role:
    """A role with AWS managed policies (by name) and at most one inline policy, children of `parent`
    (`aliases`: where they were before, for each of them)."""
    opts = pulumi.ResourceOptions(parent=parent, aliases=list(aliases))
    created = aws.iam.Role(name, assume_role_policy=json.dumps(trust), opts=opts)
    for policy in managed_policies:
        aws.iam.RolePolicyAttachment(
            f"{name}-{policy.lower()}", role=created.name, policy_arn=AWS_MANAGED_POLICY + policy, opts=opts)
    if inline_policy is not None:
        aws.iam.RolePolicy(f"{name}-inline", role=created.id, policy=inline_policy, opts=opts)
    return created


def pod_identity_role(
    name: str,
    *,
    parent: pulumi.Resource,
    managed_policies: Sequence[str] = (),
    inline_policy: pulumi.Input[str] | None = None,
    aliases: Sequence[pulumi.Alias] = (),
) -> aws.iam.Role:
    """A role a Kubernetes ServiceAccount assumes through EKS Pod Identity.

    EKS add-ons take the association in their own `pod_identity_associations`; for anything
    else, declare it with `pod_identity_association`.
    """
    return role(name, trust=POD_IDENTITY_TRUST, parent=parent,
                managed_policies=managed_policies, inline_policy=inline_policy, aliases=aliases)


def pod_identity_association(
    name: str,
    *,
    role_arn: pulumi.Input[str],
    cluster_name: pulumi.Input[str],
    namespace: str,
    service_account: str,
    parent: pulumi.Resource,
    aliases: Sequence[pulumi.Alias] = (),
) -> aws.eks.PodIdentityAssociation:
    """Hands the role to the ServiceAccount's pods. Pods admitted before it exists get no
    credentials, so whatever installs those pods should depend on it."""
    return aws.eks.PodIdentityAssociation(
        name, cluster_name=cluster_name, namespace=namespace, service_account=service_account,
        role_arn=role_arn, opts=pulumi.ResourceOptions(parent=parent, aliases=list(aliases)))


# How a controller policy may differ from the controller's official one; planning.official_iam finds the
# differences, and each component lists the ones it means next to its policy.
OMITTED = "omitted"        # the official policy grants the action, ours does not
ADDED = "added"            # ours grants an action the official policy does not
CONDITIONS = "conditions"  # both grant it, under different conditions
RESOURCES = "resources"    # ours grants it on a resource outside the official ones


@dataclass(frozen=True)
class Difference:
    """A deliberate difference from the official policy: these actions, this kind, and why."""
    kind: str
    actions: tuple[str, ...]
    reason: str
