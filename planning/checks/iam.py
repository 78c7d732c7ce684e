"""IAM policies: `parliament` findings on every identity and resource policy the program declares, minus
the justified ones, and any Allow of every action of a service."""

from __future__ import annotations

import json
import warnings
from typing import Any

from planning.checks.objects import Problem
from planning.offline import Rendering
from planning.secrets import reveal

FAMILY = "IAM policies"

POLICY_INPUTS = {
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/policy:Policy": "policy",
    "aws:s3/bucketPolicy:BucketPolicy": "policy",
    "aws:sqs/queuePolicy:QueuePolicy": "policy",
}
# Parliament findings we accept, each for a reason it cannot see. Keyed by (statement Sid, issue).
JUSTIFIED_IAM_FINDINGS = {
    ("AllowScopedEC2InstanceAccessActions", "RESOURCE_MISMATCH"):
        "RunInstances/CreateFleet also need instance, fleet and network-interface ARNs; those are granted "
        "in AllowScopedEC2InstanceActionsWithTags, under tag conditions (parliament reads one statement at a time)",
    ("AllowScopedEC2LaunchTemplateAccessActions", "RESOURCE_MISMATCH"):
        "the launch-template part of RunInstances/CreateFleet, split out to require the cluster's tags",
    ("AllowScopedEC2InstanceActionsWithTags", "RESOURCE_MISMATCH"):
        "the resources RunInstances/CreateFleet create, split out to require the cluster's request tags",
    ("AllowSSMReadActions", "RESOURCE_MISMATCH"):
        "AWS public parameters (/aws/service/*) belong to no account, so their ARN has an empty account field",
    ("AllowZonalShiftStatusReadOnly", "RESOURCE_STAR"):
        "parliament's action database lists only load balancers as resources of arc-zonal-shift:GetManagedResource "
        "(EKS clusters came later); as in Karpenter's official policy, arc-zonal-shift:ResourceIdentifier limits it "
        "to this cluster",
    # The image-cache runbook's role (infra/image_cache.py): each action split by resource, so the tag
    # conditions apply to what the build creates or owns, not to the AMI, subnet, group or AWS's own document.
    ("LaunchFromTheAmiIntoTheBuildNetwork", "RESOURCE_MISMATCH"):
        "the AMI, subnet and security-group part of RunInstances; the instance, volume and network interface it "
        "creates are granted in LaunchOnlyTaggedBuilders, under the stack's request tag",
    ("LaunchOnlyTaggedBuilders", "RESOURCE_MISMATCH"):
        "the resources RunInstances creates, split out to require the stack's cache tag on each",
    ("SnapshotBuilderVolumes", "RESOURCE_MISMATCH"):
        "the volume part of CreateSnapshot, split out to require the stack's tag on the volume; the snapshot part "
        "is CreateTaggedSnapshots, under the request tag",
    ("CreateTaggedSnapshots", "RESOURCE_MISMATCH"):
        "the snapshot part of CreateSnapshot (snapshot ARNs have no account); the volume part is "
        "SnapshotBuilderVolumes",
    ("ResolveTheNodeAmi", "RESOURCE_MISMATCH"):
        "AWS public parameters (/aws/service/*) belong to no account, so their ARN has an empty account field",
    ("RunTheBuildDocument", "RESOURCE_MISMATCH"):
        "AWS-owned SSM documents (AWS-RunShellScript) belong to no account, so their ARN has an empty account field",
    ("RunTheBuildOnBuildersOnly", "RESOURCE_MISMATCH"):
        "the instance part of SendCommand, split out to require the stack's tag on the instance; the document part "
        "is RunTheBuildDocument",
    ("TagNewLoadBalancers", "UNKNOWN_CONDITION_FOR_ACTION"):
        "elasticloadbalancing:CreateAction (tag-on-create, in the ELB service authorization reference) is newer "
        "than parliament's action database; it limits the load balancer controller's AddTags to resources it creates",
}


def iam_policy_problems(policy: str | dict[str, Any]) -> list[str]:
    """Parliament findings on an identity or resource policy, minus the justified ones."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # parliament imports the deprecated pkg_resources
        from parliament import analyze_policy_string

    document = json.loads(policy) if isinstance(policy, str) else policy
    statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
    problems = []
    # One statement at a time, so each finding is attributed to a Sid.
    for statement in statements:
        single = json.dumps({"Version": document.get("Version", "2012-10-17"), "Statement": [statement]})
        for finding in analyze_policy_string(single).findings:
            if (statement.get("Sid"), finding.issue) not in JUSTIFIED_IAM_FINDINGS:
                problems.append(f"{statement.get('Sid', '(no Sid)')}: {finding.issue} {finding.detail}")
    return problems


def problems(rendering: Rendering) -> list[Problem]:
    problems = []
    for type_, key in POLICY_INPUTS.items():
        for resource in rendering.of_type(type_):
            policy = reveal(resource.inputs[key])
            document = json.loads(policy) if isinstance(policy, str) else policy
            where = f"{type_.rsplit(':', 1)[-1]} {resource.name}"
            problems += [Problem(FAMILY, f"{where}: {text}") for text in iam_policy_problems(document)]
            problems += [Problem(FAMILY, f"{where}: {text}") for text in _wildcard_actions(document)]
    return problems


def _wildcard_actions(document: dict[str, Any]) -> list[str]:
    """Allow statements granting every action of a service: parliament reports `*` alone as nothing at all."""
    statements = document["Statement"] if isinstance(document["Statement"], list) else [document["Statement"]]
    found = []
    for statement in statements:
        actions = statement.get("Action", [])
        for action in [actions] if isinstance(actions, str) else actions:
            if statement.get("Effect") == "Allow" and (action == "*" or action.endswith(":*")):
                found.append(f"{statement.get('Sid', '(no Sid)')}: allows every action ({action})")
    return found
