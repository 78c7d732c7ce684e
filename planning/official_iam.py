"""The official IAM policies of the controllers the program installs, and how a policy differs from them.

The comparison is per action: the set of conditions under which a policy grants an action must equal
the official one's, and every resource it grants the action on must lie within the official resources
(narrowing to one region, account or VPC is expected). How statements group actions does not matter.
Each difference a component means to keep is an `infra.iam.Difference` listed next to its policy.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import yaml

from infra import versions
from infra.iam import ADDED, CONDITIONS, OMITTED, RESOURCES, Difference
from planning import DATA

OFFICIAL = DATA / "official"
KARPENTER_CLOUDFORMATION = OFFICIAL / f"karpenter-v{versions.KARPENTER_VERSION}-cloudformation.yaml"
LOAD_BALANCER_CONTROLLER_POLICY = (
    OFFICIAL / f"aws-load-balancer-controller-v{versions.AWS_LOAD_BALANCER_CONTROLLER_APP_VERSION}-iam_policy.json")
CLOUDFORMATION_MANAGED_POLICY = "AWS::IAM::ManagedPolicy"
SUBSTITUTION = re.compile(r"\$\{([^}]+)\}")

@dataclass(frozen=True)
class Found:
    """One difference found: the action, its kind, and what differs."""
    action: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.action}: {self.detail}"


# --- reading the official documents ----------------------------------------------------------------

class CloudFormationLoader(yaml.SafeLoader):
    """A YAML loader that reads CloudFormation's short intrinsic tags (!Sub, !Ref, !GetAtt, ...) as
    the long form ({"Fn::Sub": ...}, {"Ref": ...})."""


def _intrinsic(loader: CloudFormationLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def substitute(template: str, values: dict[str, str]) -> str:
    """A `!Sub` string with each `${Name}` replaced by values[Name]."""
    def value_of(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"no value for ${{{match.group(1)}}}; known: {', '.join(sorted(values))}")
        return values[match.group(1)]
    return SUBSTITUTION.sub(value_of, template)


def karpenter_controller_policy(values: dict[str, str]) -> dict[str, Any]:
    """Every statement of the official CloudFormation's controller policies (its AWS::IAM::ManagedPolicy
    resources), with `${...}` substituted from `values` (AWS::Partition, AWS::Region, AWS::AccountId,
    ClusterName, KarpenterNodeRole.Arn, KarpenterInterruptionQueue.Arn)."""
    template = yaml.load(KARPENTER_CLOUDFORMATION.read_text(), Loader=CloudFormationLoader)
    statements = []
    for resource in template["Resources"].values():
        if resource["Type"] == CLOUDFORMATION_MANAGED_POLICY:
            document = resource["Properties"]["PolicyDocument"]["Fn::Sub"]
            statements += json.loads(substitute(document, values))["Statement"]
    return {"Version": "2012-10-17", "Statement": statements}


def load_balancer_controller_policy() -> dict[str, Any]:
    return json.loads(LOAD_BALANCER_CONTROLLER_POLICY.read_text())


# --- comparing --------------------------------------------------------------------------------------

def as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def canonical_conditions(statement: dict[str, Any]) -> str:
    """A statement's conditions in one canonical form (single values as lists, lists sorted)."""
    canonical = {operator: {key: sorted(map(str, as_list(value))) for key, value in block.items()}
                 for operator, block in (statement.get("Condition") or {}).items()}
    return json.dumps(canonical, sort_keys=True)


def _grants(policy: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Allowed action -> its conditions (canonical) -> the resources granted under them."""
    grants: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    statements = policy["Statement"]
    for statement in [statements] if isinstance(statements, dict) else statements:
        if statement.get("Effect") != "Allow":
            continue
        for action in as_list(statement["Action"]):
            grants[action][canonical_conditions(statement)] += as_list(statement["Resource"])
    return grants


def _within(resource: str, patterns: list[str]) -> bool:
    """Whether an ARN (pattern) lies within one of the official ARN patterns."""
    return any(fnmatch.fnmatchcase(resource, pattern) for pattern in patterns)


def policy_differences(ours: dict[str, Any], official: dict[str, Any]) -> list[Found]:
    """Every difference between two policies' Allow statements, per action, sorted."""
    mine, theirs = _grants(ours), _grants(official)
    found = [Found(action, OMITTED, "granted by the official policy, not by this one")
             for action in theirs.keys() - mine.keys()]
    found += [Found(action, ADDED, "granted by this policy, not by the official one")
              for action in mine.keys() - theirs.keys()]
    for action in mine.keys() & theirs.keys():
        if set(mine[action]) != set(theirs[action]):
            found.append(Found(action, CONDITIONS, f"conditions {sorted(mine[action])} differ from the official "
                                                   f"{sorted(theirs[action])}"))
        every_official = [resource for resources in theirs[action].values() for resource in resources]
        for conditions, resources in mine[action].items():
            # Under the same conditions, within those official resources; otherwise within any of them.
            allowed = theirs[action].get(conditions, every_official)
            found += [Found(action, RESOURCES, f"resource {resource!r} is outside the official {sorted(allowed)}")
                      for resource in resources if not _within(resource, allowed)]
    return sorted(found, key=lambda f: (f.action, f.kind, f.detail))


def unexplained(found: list[Found], deliberate: tuple[Difference, ...]) -> list[Found]:
    """The differences no deliberate Difference lists. Resource differences are never deliberate:
    a resource outside the official ones is broader than the controller needs."""
    listed = {(difference.kind, action) for difference in deliberate for action in difference.actions
              if difference.kind != RESOURCES}
    return [difference for difference in found if (difference.kind, difference.action) not in listed]


def stale(found: list[Found], deliberate: tuple[Difference, ...]) -> list[tuple[str, str]]:
    """Listed (kind, action) pairs that are no longer a difference: the list must not outlive the reasons."""
    present = {(difference.kind, difference.action) for difference in found}
    return sorted((difference.kind, action) for difference in deliberate for action in difference.actions
                  if (difference.kind, action) not in present)
