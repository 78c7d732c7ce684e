"""Checks on what the program renders: Kubernetes schemas, Karpenter CRD schemas and their CEL rules,
IAM policy lint, pins against published release data.

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

from infra import cel, versions

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
    ("AllowZonalShiftStatusReadOnly", "RESOURCE_STAR"):
        "parliament's action database lists only load balancers as resources of arc-zonal-shift:GetManagedResource "
        "(EKS clusters came later); as in Karpenter's official policy, arc-zonal-shift:ResourceIdentifier limits it "
        "to this cluster",
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


def _karpenter_schema(obj: dict[str, Any]) -> dict[str, Any]:
    schema = _karpenter_schemas().get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        raise SchemaNotFound(f"{_where(obj)}: no CRD for {obj.get('apiVersion')} {obj.get('kind')}")
    return schema


def karpenter_schema_problems(obj: dict[str, Any]) -> list[str]:
    """Problems of a Karpenter object against the OpenAPI part of the pinned release's CRD schema."""
    schema = _karpenter_schema(obj)
    validator = jsonschema.Draft7Validator(schema)
    return [f"{_where(obj)}: {error.message} at {'/'.join(map(str, error.absolute_path)) or '(root)'}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


def karpenter_rule_problems(obj: dict[str, Any]) -> list[str]:
    """The CEL rules (`x-kubernetes-validations`) of the pinned release's CRD schema that the object,
    being created, fails or that could not be evaluated."""
    return [f"{_where(obj)}: {problem}" for problem in cel.rule_problems(_karpenter_schema(obj), obj)]


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


# --- pins against published release data -----------------------------------------------------------

PUBLISHED = Path(__file__).parent / "schemas" / "published"
KUBE_SCHEDULER_TAGS = PUBLISHED / "kube-scheduler-tags.txt"
AMI_NEURON_DRIVERS = PUBLISHED / "al2023-ami-neuron-driver.txt"
SDK_NEURON_DRIVERS = PUBLISHED / "neuron-sdk-driver.txt"
# The only AMI family whose Neuron driver per release is in the committed data.
NEURON_AMI_FAMILY = "al2023"


def _records(path: Path) -> list[list[str]]:
    """The data lines of a committed data file (its `#` lines name the source), split on whitespace."""
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def published_kube_scheduler_tags() -> tuple[str, ...]:
    """Every published kube-scheduler tag, in release order."""
    return tuple(image.split(":", 1)[1] for [image] in _records(KUBE_SCHEDULER_TAGS))


@functools.cache
def published_ami_neuron_drivers() -> dict[str, str]:
    """AMI release (`v20260714`) -> the Neuron driver version its AL2023 Neuron variant ships."""
    return {release: driver.removesuffix("-dkms") for release, driver in _records(AMI_NEURON_DRIVERS)}


@functools.cache
def required_neuron_drivers() -> dict[str, str]:
    """Neuron SDK version -> the oldest Neuron driver it works with."""
    return dict(_records(SDK_NEURON_DRIVERS))


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def kube_scheduler_tag_problems(tag: str, minor: str) -> list[str]:
    """Why a kube-scheduler tag is no published EKS Distro release of that Kubernetes minor (empty if it is)."""
    published = published_kube_scheduler_tags()
    of_minor = [known for known in published if known.startswith(f"v{minor}.")]
    latest = f"; the latest published {minor} tag is {of_minor[-1]!r}" if of_minor else ""
    if not tag.startswith(f"v{minor}."):
        return [f"kube-scheduler tag {tag!r} is not a Kubernetes {minor} release{latest}"]
    if tag not in published:
        return [f"kube-scheduler tag {tag!r} is in no published EKS Distro release "
                f"({KUBE_SCHEDULER_TAGS.name}){latest}"]
    return []


def ami_alias_problems(alias: str, sdk_version: str) -> list[str]:
    """Why the AMI an alias resolves to cannot run the Neuron SDK (empty if it can), from the committed data."""
    family, _, release = alias.partition("@")
    drivers = published_ami_neuron_drivers()
    required = required_neuron_drivers().get(sdk_version)
    if required is None:
        return [f"Neuron SDK {sdk_version} has no published driver requirement ({SDK_NEURON_DRIVERS.name})"]
    if family != NEURON_AMI_FAMILY or release not in drivers:
        return [f"AMI alias {alias!r} is not a pinned {NEURON_AMI_FAMILY} release with a published Neuron driver "
                f"({AMI_NEURON_DRIVERS.name}); use {NEURON_AMI_FAMILY}@<release>"]
    if _numeric(drivers[release]) < _numeric(required):
        newer = sorted(r for r, driver in drivers.items() if _numeric(driver) >= _numeric(required))
        first = f" (first release with it: {NEURON_AMI_FAMILY}@{newer[0]})" if newer else ""
        return [f"AMI alias {alias!r} ships Neuron driver {drivers[release]}, older than the {required} that "
                f"Neuron SDK {sdk_version} needs{first}"]
    return []
