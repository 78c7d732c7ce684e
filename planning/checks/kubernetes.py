"""Kubernetes schemas: every core object the program declares is valid for the OpenAPI schemas of the
cluster's Kubernetes minor (kubernetes-validate, strict: unknown fields are problems)."""

from __future__ import annotations

import functools
import json
from typing import Any

import kubernetes_validate

from planning.checks.objects import Problem, SchemaNotFound, is_cloudwatch_agent, is_karpenter, where

FAMILY = "Kubernetes schemas"


def kubernetes_schema_problems(obj: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Problems of a core Kubernetes object against the OpenAPI schemas of that Kubernetes minor."""
    try:
        kubernetes_validate.validate(obj, f"{kubernetes_version}.0", strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where(obj, '?')}: {error.message} at {'/'.join(map(str, error.path)) or '(root)'}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        raise SchemaNotFound(f"{where(obj, '?')}: no Kubernetes {kubernetes_version} schema ({error})") from None
    return []


def problems(objects: list[dict[str, Any]], version: str) -> list[Problem]:
    # Custom resources have their CRD's check (karpenter, cloudwatch_agent).
    return [Problem(FAMILY, text) for obj in objects if not is_karpenter(obj) and not is_cloudwatch_agent(obj)
            for text in _object_problems(json.dumps(obj, sort_keys=True), version)]


@functools.lru_cache(maxsize=4096)
def _object_problems(obj_json: str, version: str) -> tuple[str, ...]:
    """Schema findings of one object, cached by its content: kubernetes_validate reads its schema files
    on every call, which would dominate checking the same objects again (tests, several stacks)."""
    try:
        return tuple(kubernetes_schema_problems(json.loads(obj_json), version))
    except SchemaNotFound as error:
        return (str(error),)
