"""Checks on what the program renders: Kubernetes schemas, Karpenter CRD schemas, IAM policy lint.

Each check returns readable problems (empty when clean), so tests and `infra.plan --check`
report the same findings.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from infra import versions

KARPENTER_CRDS = Path(__file__).parent / "schemas" / f"karpenter-crds-v{versions.KARPENTER_VERSION}"

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
    ("TagNewLoadBalancers", "UNKNOWN_CONDITION_FOR_ACTION"):
        "elasticloadbalancing:CreateAction (tag-on-create, in the ELB service authorization reference) is newer "
        "than parliament's action database; it limits the load balancer controller's AddTags to resources it creates",
}


class SchemaNotFound(LookupError):
    pass


def kubernetes_schema_problems(obj: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Problems of a core Kubernetes object against the OpenAPI schemas of that Kubernetes minor."""
    try:
        kubernetes_validate.validate(obj, f"{kubernetes_version}.0", strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{_where(obj)}: {error.message} at {'/'.join(map(str, error.path)) or '(root)'}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        raise SchemaNotFound(f"{_where(obj)}: no Kubernetes {kubernetes_version} schema ({error})") from None
    return []


@functools.cache
def _karpenter_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(KARPENTER_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def is_karpenter(obj: dict[str, Any]) -> bool:
    return obj.get("apiVersion", "").split("/")[0] in ("karpenter.sh", "karpenter.k8s.aws")


def karpenter_schema_problems(obj: dict[str, Any]) -> list[str]:
    """Problems of a Karpenter object against the pinned release's CRD schema."""
    schema = _karpenter_schemas().get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        raise SchemaNotFound(f"{_where(obj)}: no CRD for {obj.get('apiVersion')} {obj.get('kind')}")
    validator = jsonschema.Draft7Validator(schema)
    return [f"{_where(obj)}: {error.message} at {'/'.join(map(str, error.absolute_path)) or '(root)'}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


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


def _where(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    namespace = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{obj.get('kind', '?')} {namespace}{metadata.get('name', '?')}"
