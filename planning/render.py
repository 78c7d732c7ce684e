"""A rendering as reviewable files: the resource tree, every Kubernetes object as YAML, the stack
outputs, and the capacity table. Deterministic (sorted, mock values derived from names, secrets
redacted), so a diff of plans/ in a pull request is exactly the change in desired state.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from planning import capacity
from planning.offline import Rendering, declared
from planning.secrets import REDACTED, redact

# The image tag hashes the build context (model/, serving/): shown as a placeholder so that a code
# change does not churn the plan; the image is rebuilt on deploy either way, and pods pin its digest.
SOURCE_TAG = re.compile(r":src-[0-9a-f]{20}\b")
SOURCE_TAG_SHOWN = ":src-<hash of the build context>"


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
            obj = redact(declared(resource))
            path = kubernetes_path(obj, resource.name)
            if path in files:
                raise ValueError(f"two Kubernetes objects render to {path}")
            files[path] = _dump(obj)
            entry["manifest"] = path
        elif resource.inputs:
            entry["inputs"] = _readable(redact(resource.inputs))
        tree.append(entry)
    # Each entry reads type, name, parent, then what it declares.
    files["resources.yaml"] = _dump(tree, sort_keys=False)
    outputs = {name: REDACTED if name in rendering.secret_outputs else _readable(redact(value))
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
