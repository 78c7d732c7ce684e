"""Credential-free plan: render a stack offline, check the rendering, write it as reviewable YAML.

    python -m infra.plan --stack dev --out plans      # writes plans/dev/ (and its capacity.md)
    python -m infra.plan --stack all --check          # exits 1 with a report if any check fails

The rendering is the real program run under mocks (`infra.offline`). What gets written is
deterministic (sorted, mock values derived from names, secrets redacted), so a diff of
`plans/` in a pull request is exactly the change in desired state.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pulumi
import yaml

from infra import capacity, versions
from infra.naming import NEURON_SCHEDULER_NAME, NODEPOOL_LABEL
from infra.offline import Registered, Rendering, run_program, stack_names
from infra.validate import (
    SchemaNotFound, ami_alias_problems, iam_policy_problems, is_karpenter, karpenter_rule_problems,
    karpenter_schema_problems, kube_scheduler_tag_problems, kubernetes_schema_problems,
)

REFRESH_COMMAND = "python -m infra.plan --stack all --out plans"

# How Pulumi marks a secret value inside resource inputs.
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
REDACTED = "[secret]"
# The image tag hashes the build context (model/, serving/): shown as a placeholder so that a code
# change does not churn the plan; the image is rebuilt on deploy either way, and pods pin its digest.
SOURCE_TAG = re.compile(r":src-[0-9a-f]{20}\b")
SOURCE_TAG_SHOWN = ":src-<hash of the build context>"

KARPENTER_CEL_RULES = "Karpenter CEL rules"
PUBLISHED_VERSIONS = "Published versions"
# The check families, in report order.
CHECKS = ("Kubernetes schemas", "Karpenter CRD schemas", "IAM policies", "Cross-references", "Security posture",
          KARPENTER_CEL_RULES, PUBLISHED_VERSIONS)

POLICY_INPUTS = {
    "aws:iam/rolePolicy:RolePolicy": "policy",
    "aws:iam/policy:Policy": "policy",
    "aws:s3/bucketPolicy:BucketPolicy": "policy",
    "aws:sqs/queuePolicy:QueuePolicy": "policy",
}
# Namespaces every EKS cluster has before the program creates anything.
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
DEFAULT_SCHEDULER = "default-scheduler"
NEURON_CHART = "neuron-helm-chart"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
# Env var names that carry credentials: their value must come from a Secret, never a literal.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


@dataclass(frozen=True, order=True)
class Problem:
    check: str
    message: str


# --- secrets -------------------------------------------------------------------------------------

def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def _unwrap(value: Any, secret: Any = None) -> Any:
    """`value` with every Pulumi secret replaced by its value (secret=None) or by `secret`.

    A secret map keeps its keys (a Secret's `stringData` shows which keys it holds, not their values).
    """
    if is_secret(value):
        if secret is None:
            return _unwrap(value.get("value"))
        return {key: secret for key in value["value"]} if isinstance(value.get("value"), dict) else secret
    if isinstance(value, dict):
        return {key: _unwrap(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_unwrap(item, secret) for item in value]
    return value


def declared(resource: Registered) -> dict[str, Any]:
    """A Kubernetes object as the program declared it, Pulumi's secret markers kept."""
    return {key: value for key, value in resource.inputs.items() if not key.startswith("__")}


def revealed(value: Any) -> Any:
    return _unwrap(value)


def redacted(value: Any) -> Any:
    return _unwrap(value, REDACTED)


# --- rendering to files --------------------------------------------------------------------------

def _dump(document: Any, sort_keys: bool = True) -> str:
    text = yaml.safe_dump(document, sort_keys=sort_keys, default_flow_style=False, allow_unicode=True, width=120)
    return SOURCE_TAG.sub(SOURCE_TAG_SHOWN, text)


def _readable(value: Any) -> Any:
    """Keys sorted, and JSON documents passed as strings (IAM policies, event patterns) shown as
    structure, so a diff shows the changed statement rather than one changed line of JSON."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return _readable(json.loads(value))
        except ValueError:
            return value
    if isinstance(value, dict):
        return {key: _readable(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_readable(item) for item in value]
    return value


def _name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def kubernetes_path(obj: dict[str, Any], resource_name: str) -> str:
    metadata = obj.get("metadata") or {}
    # Without metadata.name, Pulumi names the object after the resource (plus a random suffix).
    parts = [obj["kind"].lower(), metadata.get("namespace"), metadata.get("name") or resource_name]
    return "kubernetes/" + "-".join(part for part in parts if part) + ".yaml"


def render_files(rendering: Rendering) -> dict[str, str]:
    """The rendering as files (relative path -> text): the same bytes on every run."""
    kubernetes = {resource.urn for resource in rendering.kubernetes_objects()}
    files: dict[str, str] = {}
    tree = []
    for resource in sorted(rendering.resources, key=lambda r: (r.type, r.name, r.urn)):
        entry: dict[str, Any] = {"type": resource.type, "name": resource.name}
        if resource.parent and "::pulumi:pulumi:Stack::" not in resource.parent:
            entry["parent"] = _name_of(resource.parent)
        if resource.retain_on_delete:
            entry["retainOnDelete"] = True
        if resource.urn in kubernetes:
            obj = redacted(declared(resource))
            path = kubernetes_path(obj, resource.name)
            if path in files:
                raise ValueError(f"two Kubernetes objects render to {path}")
            files[path] = _dump(obj)
            entry["manifest"] = path
        elif resource.inputs:
            entry["inputs"] = _readable(redacted(resource.inputs))
        tree.append(entry)
    # Each entry reads type, name, parent, then what it declares.
    files["resources.yaml"] = _dump(tree, sort_keys=False)
    outputs = {name: REDACTED if name in rendering.secret_outputs else _readable(redacted(value))
               for name, value in rendering.outputs.items()}
    files["outputs.yaml"] = _dump(outputs)
    return dict(sorted(files.items()))


def write_plan(rendering: Rendering, out: Path) -> Path:
    """Write the rendering under out/<stack>/, replacing the YAML a previous run left there."""
    directory = out / rendering.stack
    for stale in [*directory.glob("*.yaml"), *directory.glob("kubernetes/*.yaml")]:
        stale.unlink()
    for relative, text in render_files(rendering).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (directory / capacity.FILENAME).write_text(capacity.table(rendering))
    return directory


# --- checks --------------------------------------------------------------------------------------

def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    metadata = obj.get("metadata") or {}
    return obj["kind"], metadata.get("namespace", ""), metadata.get("name", "")


def _where(obj: dict[str, Any]) -> str:
    kind, namespace, name = _key(obj)
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


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
        templates.append(PodTemplate(obj, _key(obj)[1] or "default",
                                     (template.get("metadata") or {}).get("labels") or {}, template.get("spec") or {}))
    return templates


class _Objects:
    """Declared Kubernetes objects, looked up by kind, namespace and name."""

    def __init__(self, objects: list[dict[str, Any]]):
        self.all = objects
        self._by_key = {_key(obj): obj for obj in objects}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._by_key.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.all if obj["kind"] == kind]


def kubernetes_version(rendering: Rendering) -> str:
    """The cluster's minor, as the program asks EKS for it."""
    [cluster] = rendering.of_type("eks:index:Cluster")
    return revealed(cluster.inputs["version"])


def _schema_problems(objects: list[dict[str, Any]], version: str) -> list[Problem]:
    problems = []
    for obj in objects:
        check = CHECKS[1] if is_karpenter(obj) else CHECKS[0]
        problems += [Problem(check, text) for text in _object_schema_problems(json.dumps(obj, sort_keys=True), version)]
    return problems


@functools.lru_cache(maxsize=4096)
def _object_schema_problems(obj_json: str, version: str) -> tuple[str, ...]:
    """Schema findings of one object, cached by its content: kubernetes_validate reads its schema files
    on every call, which would dominate checking the same objects again (tests, several stacks)."""
    obj = json.loads(obj_json)
    try:
        if is_karpenter(obj):
            return tuple(karpenter_schema_problems(obj))
        return tuple(kubernetes_schema_problems(obj, version))
    except SchemaNotFound as error:
        return (str(error),)


def _cel_problems(objects: list[dict[str, Any]]) -> list[Problem]:
    return [Problem(KARPENTER_CEL_RULES, text) for obj in objects if is_karpenter(obj)
            for text in _object_rule_problems(json.dumps(obj, sort_keys=True))]


@functools.lru_cache(maxsize=4096)
def _object_rule_problems(obj_json: str) -> tuple[str, ...]:
    """CEL findings of one object, cached by its content like the schema findings."""
    obj = json.loads(obj_json)
    try:
        return tuple(karpenter_rule_problems(obj))
    except SchemaNotFound:  # reported once, by the Karpenter CRD schemas check
        return ()


def _neuron_scheduler_tags(rendering: Rendering) -> list[tuple[str, str]]:
    """(release, kube-scheduler image tag) of every neuron-helm-chart release."""
    tags = []
    for release in rendering.of_type(HELM_RELEASE):
        inputs = revealed(release.inputs)
        if inputs.get("chart", "").endswith("/" + NEURON_CHART):
            image = (((inputs.get("values") or {}).get("scheduler") or {}).get("customScheduler") or {}).get("image")
            tags.append((release.name, (image or {}).get("tag", "(chart default)")))
    return tags


def _published_version_problems(rendering: Rendering, objects: _Objects) -> list[Problem]:
    """What the stack pulls and boots exists in the published release data, and fits together."""
    minor = kubernetes_version(rendering)
    found = [f"Release {name}: {text}" for name, tag in _neuron_scheduler_tags(rendering)
             for text in kube_scheduler_tag_problems(tag, minor)]
    for node_class in objects.of_kind("EC2NodeClass"):
        for term in node_class.get("spec", {}).get("amiSelectorTerms", []):
            if "alias" in term:
                found += [f"{_where(node_class)}: {text}"
                          for text in ami_alias_problems(term["alias"], versions.NEURON_SDK_VERSION)]
    # The other pinned minors too (this stack's is checked above, as rendered): a stack may move to one.
    for pinned_minor, pins in sorted(versions.KUBERNETES_RELEASES.items()):
        if pinned_minor == minor:
            continue
        found += [f"infra/versions.py KUBERNETES_RELEASES[{pinned_minor!r}]: {text}"
                  for text in kube_scheduler_tag_problems(pins["kube-scheduler"], pinned_minor)]
    return [Problem(PUBLISHED_VERSIONS, text) for text in found]


def _iam_problems(rendering: Rendering) -> list[Problem]:
    problems = []
    for type_, key in POLICY_INPUTS.items():
        for resource in rendering.of_type(type_):
            policy = revealed(resource.inputs[key])
            document = json.loads(policy) if isinstance(policy, str) else policy
            where = f"{type_.rsplit(':', 1)[-1]} {resource.name}"
            problems += [Problem(CHECKS[2], f"{where}: {text}") for text in iam_policy_problems(document)]
            problems += [Problem(CHECKS[2], f"{where}: {text}") for text in _wildcard_actions(document)]
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


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for toleration in tolerations:
        exists = toleration.get("operator", "Equal") == "Exists"
        key_matches = toleration.get("key") == taint["key"] or (not toleration.get("key") and exists)
        effect_matches = not toleration.get("effect") or toleration["effect"] == taint.get("effect")
        value_matches = exists or toleration.get("value", "") == taint.get("value", "")
        if key_matches and effect_matches and value_matches:
            return True
    return False


def _selected_nodepools(spec: dict[str, Any]) -> list[str]:
    """NodePools a pod must land on: its nodeSelector, or a required node affinity `In` term."""
    names = []
    if NODEPOOL_LABEL in (spec.get("nodeSelector") or {}):
        names.append(spec["nodeSelector"][NODEPOOL_LABEL])
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms", []):
        for expression in term.get("matchExpressions", []):
            if expression.get("key") == NODEPOOL_LABEL and expression.get("operator") == "In":
                names += expression.get("values", [])
    return names


def _secret_keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def _neuron_scheduler_installed(rendering: Rendering) -> bool:
    for release in rendering.of_type(HELM_RELEASE):
        inputs = revealed(release.inputs)
        scheduler = (inputs.get("values") or {}).get("scheduler") or {}
        if (inputs.get("chart", "").endswith("/" + NEURON_CHART) and scheduler.get("enabled")
                and (scheduler.get("customScheduler") or {}).get("fullnameOverride") == NEURON_SCHEDULER_NAME):
            return True
    return False


def _pod_reference_problems(pod: PodTemplate, objects: _Objects, rendering: Rendering) -> list[str]:
    where, namespace, spec = _where(pod.owner), pod.namespace, pod.spec
    found = []

    def need(kind: str, name: str, key: str | None = None, optional: bool = False):
        obj = objects.get(kind, namespace, name)
        if obj is None and not optional:
            found.append(f"{where}: {kind} {name!r} does not exist in namespace {namespace}")
        elif obj is not None and key is not None and kind == "Secret" and key not in _secret_keys(obj):
            found.append(f"{where}: Secret {name!r} has no key {key!r}")
        elif obj is not None and key is not None and kind == "ConfigMap" and key not in (obj.get("data") or {}):
            found.append(f"{where}: ConfigMap {name!r} has no key {key!r}")

    for volume in spec.get("volumes", []):
        if "persistentVolumeClaim" in volume:
            need("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if "secret" in volume:
            source = volume["secret"]
            need("Secret", source["secretName"], optional=source.get("optional", False))
            for item in source.get("items", []):
                need("Secret", source["secretName"], item["key"], optional=source.get("optional", False))
        if "configMap" in volume:
            source = volume["configMap"]
            need("ConfigMap", source["name"], optional=source.get("optional", False))
            for item in source.get("items", []):
                need("ConfigMap", source["name"], item["key"], optional=source.get("optional", False))
    for container in pod.containers():
        for variable in container.get("env", []):
            source = variable.get("valueFrom") or {}
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                need("Secret", ref["name"], ref["key"], optional=ref.get("optional", False))
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                need("ConfigMap", ref["name"], ref["key"], optional=ref.get("optional", False))
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                need("Secret", source["secretRef"]["name"], optional=source["secretRef"].get("optional", False))
            if "configMapRef" in source:
                need("ConfigMap", source["configMapRef"]["name"],
                     optional=source["configMapRef"].get("optional", False))
    for pull_secret in spec.get("imagePullSecrets", []):
        need("Secret", pull_secret["name"])
    # Kubernetes creates the `default` ServiceAccount in every namespace.
    if spec.get("serviceAccountName", "default") != "default":
        need("ServiceAccount", spec["serviceAccountName"])

    scheduler = spec.get("schedulerName", DEFAULT_SCHEDULER)
    if scheduler not in (DEFAULT_SCHEDULER, NEURON_SCHEDULER_NAME):
        found.append(f"{where}: schedulerName {scheduler!r} is neither {DEFAULT_SCHEDULER!r} "
                     f"nor the Neuron scheduler {NEURON_SCHEDULER_NAME!r}")
    elif scheduler == NEURON_SCHEDULER_NAME and not _neuron_scheduler_installed(rendering):
        found.append(f"{where}: schedulerName {scheduler!r} but no {NEURON_CHART} release installs that scheduler")

    for pool_name in _selected_nodepools(spec):
        pool = objects.get("NodePool", "", pool_name)
        if pool is None:
            found.append(f"{where}: NodePool {pool_name!r} does not exist")
            continue
        for taint in pool["spec"]["template"]["spec"].get("taints", []):
            if not _tolerates(spec.get("tolerations", []), taint):
                found.append(f"{where}: does not tolerate taint {taint['key']}:{taint.get('effect')} "
                             f"of NodePool {pool_name!r}")
    return found


def _selected(selector: dict[str, str], namespace: str, pods: list[PodTemplate]) -> list[PodTemplate]:
    return [pod for pod in pods if pod.namespace == namespace and selector.items() <= pod.labels.items()]


def _port_names(pod: PodTemplate) -> set[str]:
    return {port["name"] for container in pod.containers() for port in container.get("ports", []) if "name" in port}


def _reference_problems(objects: _Objects, pods: list[PodTemplate], rendering: Rendering) -> list[Problem]:
    found = []
    for pod in pods:
        found += _pod_reference_problems(pod, objects, rendering)
    namespaces = BUILTIN_NAMESPACES | {_key(obj)[2] for obj in objects.of_kind("Namespace")}
    namespaces |= {revealed(release.inputs).get("namespace") for release in rendering.of_type(HELM_RELEASE)
                   if release.inputs.get("createNamespace")}
    for obj in objects.all:
        if _key(obj)[1] and _key(obj)[1] not in namespaces:
            found.append(f"{_where(obj)}: namespace {_key(obj)[1]!r} is not declared")
    for claim in objects.of_kind("PersistentVolumeClaim"):
        volume_name = claim["spec"].get("volumeName")
        volume = objects.get("PersistentVolume", "", volume_name) if volume_name else None
        if volume_name and volume is None:
            found.append(f"{_where(claim)}: PersistentVolume {volume_name!r} does not exist")
        elif volume is not None:
            claim_ref = volume["spec"].get("claimRef") or {}
            if (claim_ref.get("namespace"), claim_ref.get("name")) != _key(claim)[1:]:
                found.append(f"{_where(claim)}: PersistentVolume {volume_name!r} is reserved for "
                             f"{claim_ref.get('namespace')}/{claim_ref.get('name')}")
    for pool in objects.of_kind("NodePool"):
        ref = pool["spec"]["template"]["spec"].get("nodeClassRef") or {}
        if objects.get(ref.get("kind", ""), "", ref.get("name", "")) is None:
            found.append(f"{_where(pool)}: {ref.get('kind')} {ref.get('name')!r} does not exist")
    for service in objects.of_kind("Service"):
        selector = service["spec"].get("selector")
        selected = _selected(selector, _key(service)[1], pods) if selector else []
        if selector and not selected:
            found.append(f"{_where(service)}: selector {selector} matches no pod")
        for port in service["spec"].get("ports", []) if selected else []:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in _port_names(pod) for pod in selected):
                found.append(f"{_where(service)}: targetPort {target!r} is not a named port of the pods it selects")
    for budget in objects.of_kind("PodDisruptionBudget"):
        selector = (budget["spec"].get("selector") or {}).get("matchLabels") or {}
        if not _selected(selector, _key(budget)[1], pods):
            found.append(f"{_where(budget)}: selector {selector} matches no pod")
    for autoscaler in objects.of_kind("HorizontalPodAutoscaler"):
        target = autoscaler["spec"]["scaleTargetRef"]
        if objects.get(target["kind"], _key(autoscaler)[1], target["name"]) is None:
            found.append(f"{_where(autoscaler)}: scale target {target['kind']} {target['name']!r} does not exist")
    for ingress in objects.of_kind("Ingress"):
        found += _ingress_problems(ingress, objects)
    return [Problem(CHECKS[3], text) for text in found]


def _ingress_problems(ingress: dict[str, Any], objects: _Objects) -> list[str]:
    spec = ingress["spec"]
    backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
    backends += [path["backend"] for rule in spec.get("rules", []) for path in (rule.get("http") or {}).get("paths", [])]
    found = []
    for backend in backends:
        if "service" not in backend:
            continue
        name, port = backend["service"]["name"], backend["service"].get("port") or {}
        service = objects.get("Service", _key(ingress)[1], name)
        if service is None:
            found.append(f"{_where(ingress)}: backend Service {name!r} does not exist")
        elif not any(port.get("number") == p.get("port") or (port.get("name") and port["name"] == p.get("name"))
                     for p in service["spec"].get("ports", [])):
            found.append(f"{_where(ingress)}: backend Service {name!r} has no port {port}")
    return found


def _security_problems(rendering: Rendering, pods: list[PodTemplate]) -> list[Problem]:
    found = []
    for pod in pods:
        # Host namespaces and host paths reach the node as surely as privileged mode does.
        found += [f"{_where(pod.owner)}: uses {field}" for field in HOST_NAMESPACES if pod.spec.get(field)]
        found += [f"{_where(pod.owner)}: mounts host path {volume['hostPath'].get('path')}"
                  for volume in pod.spec.get("volumes", []) if "hostPath" in volume]
        for container in pod.containers():
            where = f"{_where(pod.owner)} container {container.get('name')!r}"
            if "@sha256:" not in container.get("image", ""):
                found.append(f"{where}: image {container.get('image')!r} is not pinned by digest")
            context = container.get("securityContext") or {}
            if context.get("privileged"):
                found.append(f"{where}: runs privileged")
            if context.get("allowPrivilegeEscalation") is not False:
                found.append(f"{where}: allowPrivilegeEscalation is not false")
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (resources.get(bound) or {})]
                if missing:
                    found.append(f"{where}: no {bound} for {', '.join(missing)}")
            secret_dirs = _secret_mount_paths(pod.spec, container)
            for variable in container.get("env", []):
                if "value" in variable and SECRET_ENV_NAME.search(variable["name"]) and not any(
                        variable["value"].startswith(f"{directory}/") for directory in secret_dirs):
                    found.append(f"{where}: env {variable['name']} is a literal; take it from a secretKeyRef")
    for resource in rendering.kubernetes_objects():
        obj = declared(resource)
        if obj.get("kind") == "Secret":
            for field in ("data", "stringData"):
                # Either the whole map is a Pulumi secret or each of its values must be.
                values = {} if is_secret(obj.get(field)) else obj.get(field) or {}
                for key, value in values.items():
                    if not is_secret(value):
                        found.append(f"{_where(obj)}: {field}.{key} is plaintext in the program "
                                     "(take it from a secret config value)")
        elif _contains_secret(obj):
            found.append(f"{_where(revealed(obj))}: a secret value is written into the object "
                         "(reference a Secret instead)")
    return [Problem(CHECKS[4], text) for text in found]


def _secret_mount_paths(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Where the container mounts Secret volumes: a variable naming a file there points at a secret, holds none."""
    secret_volumes = {volume["name"] for volume in spec.get("volumes", []) if "secret" in volume}
    return [mount["mountPath"].rstrip("/") for mount in container.get("volumeMounts", [])
            if mount["name"] in secret_volumes]


def _contains_secret(value: Any) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, dict):
        return any(_contains_secret(item) for item in value.values())
    if isinstance(value, list):
        return any(_contains_secret(item) for item in value)
    return False


def check(rendering: Rendering) -> list[Problem]:
    """Every problem of the rendering, by check then message."""
    objects = [revealed(declared(resource)) for resource in rendering.kubernetes_objects()]
    pods = pod_templates(objects)
    problems = _schema_problems(objects, kubernetes_version(rendering))
    problems += _iam_problems(rendering)
    problems += _reference_problems(_Objects(objects), pods, rendering)
    problems += _security_problems(rendering, pods)
    problems += _cel_problems(objects)
    problems += _published_version_problems(rendering, _Objects(objects))
    return sorted(set(problems), key=lambda p: (CHECKS.index(p.check), p.message))


def report(rendering: Rendering, problems: list[Problem]) -> str:
    objects = rendering.kubernetes_objects()
    pods = pod_templates([revealed(declared(resource)) for resource in objects])
    scope = (f"{len(rendering.resources)} resources, {len(objects)} Kubernetes objects, {len(pods)} pod templates, "
             f"Kubernetes {kubernetes_version(rendering)}")
    if not problems:
        return f"{rendering.stack}: clean ({scope})"
    lines = [f"{rendering.stack}: {len(problems)} problem(s) ({scope})"]
    for name in CHECKS:
        found = [problem.message for problem in problems if problem.check == name]
        if found:
            lines.append(f"  {name}:")
            lines += [f"    - {message}" for message in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, choices=[*stack_names(), "all"])
    parser.add_argument("--out", type=Path, help="write the rendering under OUT/<stack>/")
    parser.add_argument("--check", action="store_true", help="validate the rendering; exit 1 on any problem")
    args = parser.parse_args(argv)
    if not args.out and not args.check:
        parser.error("nothing to do: pass --out DIR, --check, or both")
    failed = False
    for stack in stack_names() if args.stack == "all" else [args.stack]:
        try:
            rendering = run_program(stack)
        except pulumi.RunError as error:  # a config the program rejects: its one-line message, no traceback
            print(f"{stack}: {error}")
            failed = True
            continue
        if args.out:
            print(f"{stack}: wrote {write_plan(rendering, args.out)}")
        if args.check:
            problems = check(rendering)
            print(report(rendering, problems))
            failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
