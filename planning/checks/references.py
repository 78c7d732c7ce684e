"""Cross-references: what the declared objects name exists and fits (claims, Secrets and their keys,
ConfigMaps, ServiceAccounts, namespaces, schedulers, NodePools and their taints, Service selectors and
ports, disruption budgets, autoscaler targets, Ingress backends)."""

from __future__ import annotations

import re
from typing import Any

from infra.naming import NEURON_SCHEDULER_NAME, NODEPOOL_LABEL
from planning.checks.objects import HELM_RELEASE, NEURON_CHART, Objects, PodTemplate, Problem, object_key, where
from planning.offline import Rendering
from planning.secrets import reveal

FAMILY = "Cross-references"

# Namespaces every EKS cluster has before the program creates anything.
BUILTIN_NAMESPACES = {"default", "kube-system", "kube-public", "kube-node-lease"}
DEFAULT_SCHEDULER = "default-scheduler"


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for toleration in tolerations:
        exists = toleration.get("operator", "Equal") == "Exists"
        key_matches = toleration.get("key") == taint["key"] or (not toleration.get("key") and exists)
        effect_matches = not toleration.get("effect") or toleration["effect"] == taint.get("effect")
        value_matches = exists or toleration.get("value", "") == taint.get("value", "")
        if key_matches and effect_matches and value_matches:
            return True
    return False


def node_labels(pool: dict[str, Any]) -> dict[str, set[str]]:
    """The labels a NodePool's nodes carry (template labels, `In` requirements, its own name), by key."""
    template = pool["spec"]["template"]
    labels = {key: {value} for key, value in ((template.get("metadata") or {}).get("labels") or {}).items()}
    for requirement in template["spec"].get("requirements", []):
        if requirement.get("operator") == "In":
            labels.setdefault(requirement["key"], set(requirement.get("values", [])))
    labels[NODEPOOL_LABEL] = {pool["metadata"]["name"]}
    return labels


# Karpenter's well-known label of an instance family (`m7i`), which it derives from the type: a pool that does
# not list families launches those its category and generation requirements allow.
INSTANCE_FAMILY_LABEL = "karpenter.k8s.aws/instance-family"
_FAMILY = re.compile(r"^(?P<category>[a-z]+)(?P<generation>\d+)[a-z-]*$")


def _allows_family(pool: dict[str, Any], family: str) -> bool:
    """Whether a NodePool's category and generation requirements let Karpenter launch this family."""
    match = _FAMILY.match(family)
    if match is None:
        return False
    derived = {"karpenter.k8s.aws/instance-category": match["category"],
               "karpenter.k8s.aws/instance-generation": match["generation"]}
    for requirement in pool["spec"]["template"]["spec"].get("requirements", []):
        value, operator, values = derived.get(requirement["key"]), requirement["operator"], requirement.get("values", [])
        if value is None:
            continue
        if (operator == "In" and value not in values) or (operator == "NotIn" and value in values) \
                or (operator == "Gt" and not int(value) > int(values[0])) \
                or (operator == "Lt" and not int(value) < int(values[0])):
            return False
    return True


def pool_accepts(pool: dict[str, Any], key: str, values: set[str]) -> bool:
    """Whether a NodePool launches nodes whose label `key` has one of `values`."""
    labels = node_labels(pool)
    if key == INSTANCE_FAMILY_LABEL and key not in labels:
        return any(_allows_family(pool, family) for family in values)
    return bool(values & labels.get(key, set()))


def _selected_nodepools(spec: dict[str, Any], objects: Objects) -> list[str] | None:
    """The NodePools whose nodes a pod's nodeSelector or required node affinity `In` terms accept; None when
    it selects on no label a NodePool sets (the pod does not run on Karpenter's nodes)."""
    wanted = {key: {value} for key, value in (spec.get("nodeSelector") or {}).items()}
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms", []):
        for expression in term.get("matchExpressions", []):
            if expression.get("operator") == "In":
                wanted[expression["key"]] = set(expression.get("values", []))
    pool_keys = {NODEPOOL_LABEL} | {key for pool in objects.of_kind("NodePool")
                                    for key in ((pool["spec"]["template"].get("metadata") or {}).get("labels") or {})}
    if not wanted.keys() & pool_keys:
        return None
    return [pool["metadata"]["name"] for pool in objects.of_kind("NodePool")
            if all(pool_accepts(pool, key, values) for key, values in wanted.items())]


def _secret_keys(secret: dict[str, Any]) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def _neuron_scheduler_installed(rendering: Rendering) -> bool:
    for release in rendering.of_type(HELM_RELEASE):
        inputs = reveal(release.inputs)
        scheduler = (inputs.get("values") or {}).get("scheduler") or {}
        if (inputs.get("chart", "").endswith("/" + NEURON_CHART) and scheduler.get("enabled")
                and (scheduler.get("customScheduler") or {}).get("fullnameOverride") == NEURON_SCHEDULER_NAME):
            return True
    return False


def _pod_reference_problems(pod: PodTemplate, objects: Objects, rendering: Rendering) -> list[str]:
    subject, namespace, spec = where(pod.owner), pod.namespace, pod.spec
    found = []

    def need(kind: str, name: str, key: str | None = None, optional: bool = False):
        obj = objects.get(kind, namespace, name)
        if obj is None and not optional:
            found.append(f"{subject}: {kind} {name!r} does not exist in namespace {namespace}")
        elif obj is not None and key is not None and kind == "Secret" and key not in _secret_keys(obj):
            found.append(f"{subject}: Secret {name!r} has no key {key!r}")
        elif obj is not None and key is not None and kind == "ConfigMap" and key not in (obj.get("data") or {}):
            found.append(f"{subject}: ConfigMap {name!r} has no key {key!r}")

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
        found.append(f"{subject}: schedulerName {scheduler!r} is neither {DEFAULT_SCHEDULER!r} "
                     f"nor the Neuron scheduler {NEURON_SCHEDULER_NAME!r}")
    elif scheduler == NEURON_SCHEDULER_NAME and not _neuron_scheduler_installed(rendering):
        found.append(f"{subject}: schedulerName {scheduler!r} but no {NEURON_CHART} release installs that scheduler")

    pool_names = _selected_nodepools(spec, objects)
    if pool_names == []:
        found.append(f"{subject}: no NodePool launches nodes its node selection accepts")
    for pool_name in pool_names or []:
        pool = objects.get("NodePool", "", pool_name)
        for taint in pool["spec"]["template"]["spec"].get("taints", []):
            if not _tolerates(spec.get("tolerations", []), taint):
                found.append(f"{subject}: does not tolerate taint {taint['key']}:{taint.get('effect')} "
                             f"of NodePool {pool_name!r}")
    return found


def _selected(selector: dict[str, str], namespace: str, pods: list[PodTemplate]) -> list[PodTemplate]:
    return [pod for pod in pods if pod.namespace == namespace and selector.items() <= pod.labels.items()]


def _port_names(pod: PodTemplate) -> set[str]:
    return {port["name"] for container in pod.containers() for port in container.get("ports", []) if "name" in port}


def problems(objects: Objects, pods: list[PodTemplate], rendering: Rendering) -> list[Problem]:
    found = []
    for pod in pods:
        found += _pod_reference_problems(pod, objects, rendering)
    namespaces = BUILTIN_NAMESPACES | {object_key(obj)[2] for obj in objects.of_kind("Namespace")}
    namespaces |= {reveal(release.inputs).get("namespace") for release in rendering.of_type(HELM_RELEASE)
                   if release.inputs.get("createNamespace")}
    for obj in objects.all:
        if object_key(obj)[1] and object_key(obj)[1] not in namespaces:
            found.append(f"{where(obj)}: namespace {object_key(obj)[1]!r} is not declared")
    for claim in objects.of_kind("PersistentVolumeClaim"):
        volume_name = claim["spec"].get("volumeName")
        volume = objects.get("PersistentVolume", "", volume_name) if volume_name else None
        if volume_name and volume is None:
            found.append(f"{where(claim)}: PersistentVolume {volume_name!r} does not exist")
        elif volume is not None:
            claim_ref = volume["spec"].get("claimRef") or {}
            if (claim_ref.get("namespace"), claim_ref.get("name")) != object_key(claim)[1:]:
                found.append(f"{where(claim)}: PersistentVolume {volume_name!r} is reserved for "
                             f"{claim_ref.get('namespace')}/{claim_ref.get('name')}")
    for pool in objects.of_kind("NodePool"):
        ref = pool["spec"]["template"]["spec"].get("nodeClassRef") or {}
        if objects.get(ref.get("kind", ""), "", ref.get("name", "")) is None:
            found.append(f"{where(pool)}: {ref.get('kind')} {ref.get('name')!r} does not exist")
    for service in objects.of_kind("Service"):
        selector = service["spec"].get("selector")
        selected = _selected(selector, object_key(service)[1], pods) if selector else []
        if selector and not selected:
            found.append(f"{where(service)}: selector {selector} matches no pod")
        for port in service["spec"].get("ports", []) if selected else []:
            target = port.get("targetPort")
            if isinstance(target, str) and not any(target in _port_names(pod) for pod in selected):
                found.append(f"{where(service)}: targetPort {target!r} is not a named port of the pods it selects")
    for budget in objects.of_kind("PodDisruptionBudget"):
        selector = (budget["spec"].get("selector") or {}).get("matchLabels") or {}
        if not _selected(selector, object_key(budget)[1], pods):
            found.append(f"{where(budget)}: selector {selector} matches no pod")
    for autoscaler in objects.of_kind("HorizontalPodAutoscaler"):
        target = autoscaler["spec"]["scaleTargetRef"]
        if objects.get(target["kind"], object_key(autoscaler)[1], target["name"]) is None:
            found.append(f"{where(autoscaler)}: scale target {target['kind']} {target['name']!r} does not exist")
    for ingress in objects.of_kind("Ingress"):
        found += _ingress_problems(ingress, objects)
    return [Problem(FAMILY, text) for text in found]


def _ingress_problems(ingress: dict[str, Any], objects: Objects) -> list[str]:
    spec = ingress["spec"]
    backends = [spec["defaultBackend"]] if "defaultBackend" in spec else []
    backends += [path["backend"] for rule in spec.get("rules", []) for path in (rule.get("http") or {}).get("paths", [])]
    found = []
    for backend in backends:
        if "service" not in backend:
            continue
        name, port = backend["service"]["name"], backend["service"].get("port") or {}
        service = objects.get("Service", object_key(ingress)[1], name)
        if service is None:
            found.append(f"{where(ingress)}: backend Service {name!r} does not exist")
        elif not any(port.get("number") == p.get("port") or (port.get("name") and port["name"] == p.get("name"))
                     for p in service["spec"].get("ports", [])):
            found.append(f"{where(ingress)}: backend Service {name!r} has no port {port}")
    return found
