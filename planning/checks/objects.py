"""What every check family reads: the declared objects, the pods they run, how a finding is named."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

from planning.offline import Rendering
from planning.secrets import reveal

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
NEURON_CHART = "neuron-helm-chart"


@dataclass(frozen=True, order=True)
class Problem:
    """One finding: the family that found it (a name in planning.checks.CHECKS) and what is wrong."""

    check: str
    message: str


class SchemaNotFound(LookupError):
    pass


def object_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or {}
    return obj["kind"], metadata.get("namespace", ""), metadata.get("name", "")


def where(obj: dict[str, Any], unnamed: str = "") -> str:
    """How a finding names the object: `Kind namespace/name`, or `Kind name` outside namespaces."""
    metadata = obj.get("metadata") or {}
    namespace = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{obj.get('kind', '?')} {namespace}{metadata.get('name', unnamed)}"


@dataclass(frozen=True)
class PodTemplate:
    owner: dict[str, Any]
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.spec.get("initContainers", [])
        yield from self.spec.get("containers", [])


def pod_templates(objects: list[dict[str, Any]]) -> list[PodTemplate]:
    """Every pod the objects would run, whatever kind of workload declares it."""
    templates = []
    for obj in objects:
        kind, spec = obj["kind"], obj.get("spec") or {}
        if kind == "Pod":
            template = {"metadata": obj.get("metadata", {}), "spec": spec}
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = spec.get("template", {})
        elif kind == "CronJob":
            template = spec.get("jobTemplate", {}).get("spec", {}).get("template", {})
        else:
            continue
        templates.append(PodTemplate(obj, object_key(obj)[1] or "default",
                                     (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {}))
    return templates


class Objects:
    """Declared Kubernetes objects, looked up by kind, namespace and name."""

    def __init__(self, objects: list[dict[str, Any]]):
        self.all = objects
        self._by_key = {object_key(obj): obj for obj in objects}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._by_key.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.all if obj["kind"] == kind]


def kubernetes_version(rendering: Rendering) -> str:
    """The cluster's minor, as the program asks EKS for it."""
    [cluster] = rendering.of_type("eks:index:Cluster")
    return reveal(cluster.inputs["version"])


def is_karpenter(obj: dict[str, Any]) -> bool:
    return obj.get("apiVersion", "").split("/")[0] in ("karpenter.sh", "karpenter.k8s.aws")


def is_cloudwatch_agent(obj: dict[str, Any]) -> bool:
    return obj.get("apiVersion", "").split("/")[0] == "cloudwatch.aws.amazon.com"


def crd_schemas(paths: Iterator[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the OpenAPI schema of that version, of each CRD file."""
    schemas = {}
    for path in sorted(paths):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def crd_schema_problems(obj: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Problems of a custom resource against the OpenAPI part of its CRD (SchemaNotFound without one)."""
    schema = schemas.get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        raise SchemaNotFound(f"{where(obj, '?')}: no CRD for {obj.get('apiVersion')} {obj.get('kind')}")
    validator = jsonschema.Draft7Validator(schema)
    return [f"{where(obj, '?')}: {error.message} at {'/'.join(map(str, error.absolute_path)) or '(root)'}"
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
