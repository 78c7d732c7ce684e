"""Security posture: no host namespaces or host paths, images pinned by digest, no privileged
containers or privilege escalation, requests and limits, credentials never literal, Secret values
always Pulumi secrets and never written into other objects."""

from __future__ import annotations

import re
from typing import Any

from planning.checks.objects import PodTemplate, Problem, where
from planning.offline import Rendering, declared
from planning.secrets import contains_secret, is_secret, reveal

FAMILY = "Security posture"

HOST_NAMESPACES = ("hostNetwork", "hostPID", "hostIPC")
# Env var names that carry credentials: their value must come from a Secret, never a literal.
SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.I)


def problems(rendering: Rendering, pods: list[PodTemplate]) -> list[Problem]:
    found = []
    for pod in pods:
        # Host namespaces and host paths reach the node as surely as privileged mode does.
        found += [f"{where(pod.owner)}: uses {field}" for field in HOST_NAMESPACES if pod.spec.get(field)]
        found += [f"{where(pod.owner)}: mounts host path {volume['hostPath'].get('path')}"
                  for volume in pod.spec.get("volumes", []) if "hostPath" in volume]
        for container in pod.containers():
            subject = f"{where(pod.owner)} container {container.get('name')!r}"
            if "@sha256:" not in container.get("image", ""):
                found.append(f"{subject}: image {container.get('image')!r} is not pinned by digest")
            context = container.get("securityContext") or {}
            if context.get("privileged"):
                found.append(f"{subject}: runs privileged")
            if context.get("allowPrivilegeEscalation") is not False:
                found.append(f"{subject}: allowPrivilegeEscalation is not false")
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if r not in (resources.get(bound) or {})]
                if missing:
                    found.append(f"{subject}: no {bound} for {', '.join(missing)}")
            secret_dirs = _secret_mount_paths(pod.spec, container)
            for variable in container.get("env", []):
                if "value" in variable and SECRET_ENV_NAME.search(variable["name"]) and not any(
                        variable["value"].startswith(f"{directory}/") for directory in secret_dirs):
                    found.append(f"{subject}: env {variable['name']} is a literal; take it from a secretKeyRef")
    for resource in rendering.kubernetes_objects():
        obj = declared(resource)
        if obj.get("kind") == "Secret":
            for field in ("data", "stringData"):
                # Either the whole map is a Pulumi secret or each of its values must be.
                values = {} if is_secret(obj.get(field)) else obj.get(field) or {}
                for key, value in values.items():
                    if not is_secret(value):
                        found.append(f"{where(obj)}: {field}.{key} is plaintext in the program "
                                     "(take it from a secret config value)")
        elif contains_secret(obj):
            found.append(f"{where(reveal(obj))}: a secret value is written into the object "
                         "(reference a Secret instead)")
    return [Problem(FAMILY, text) for text in found]


def _secret_mount_paths(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """Where the container mounts Secret volumes: a variable naming a file there points at a secret, holds none."""
    secret_volumes = {volume["name"] for volume in spec.get("volumes", []) if "secret" in volume}
    return [mount["mountPath"].rstrip("/") for mount in container.get("volumeMounts", [])
            if mount["name"] in secret_volumes]
