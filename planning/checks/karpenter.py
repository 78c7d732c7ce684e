"""Karpenter CRD schemas and Karpenter CEL rules: every NodePool and EC2NodeClass is valid for the
pinned Karpenter release's CRDs (planning/data/), first the OpenAPI part, then each CEL rule
(`x-kubernetes-validations`) evaluated as the API server does on create (planning.cel)."""

from __future__ import annotations

import functools
import json
from typing import Any

from infra import versions
from planning import DATA, cel
from planning.checks.objects import Problem, SchemaNotFound, crd_schema_problems, crd_schemas, is_karpenter, where

SCHEMA_FAMILY = "Karpenter CRD schemas"
CEL_FAMILY = "Karpenter CEL rules"
KARPENTER_CRDS = DATA / f"karpenter-crds-v{versions.KARPENTER_VERSION}"


@functools.cache
def _karpenter_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    return crd_schemas(KARPENTER_CRDS.glob("*.yaml"))


def _karpenter_schema(obj: dict[str, Any]) -> dict[str, Any]:
    schema = _karpenter_schemas().get((obj.get("apiVersion"), obj.get("kind")))
    if schema is None:
        raise SchemaNotFound(f"{where(obj, '?')}: no CRD for {obj.get('apiVersion')} {obj.get('kind')}")
    return schema


def karpenter_schema_problems(obj: dict[str, Any]) -> list[str]:
    """Problems of a Karpenter object against the OpenAPI part of the pinned release's CRD schema."""
    return crd_schema_problems(obj, _karpenter_schemas())


def karpenter_rule_problems(obj: dict[str, Any]) -> list[str]:
    """The CEL rules (`x-kubernetes-validations`) of the pinned release's CRD schema that the object,
    being created, fails or that could not be evaluated."""
    return [f"{where(obj, '?')}: {problem}" for problem in cel.rule_problems(_karpenter_schema(obj), obj)]


def problems(objects: list[dict[str, Any]]) -> list[Problem]:
    """Both families' findings on the Karpenter objects."""
    found = []
    for obj in objects:
        if is_karpenter(obj):
            obj_json = json.dumps(obj, sort_keys=True)
            found += [Problem(SCHEMA_FAMILY, text) for text in _object_schema_problems(obj_json)]
            found += [Problem(CEL_FAMILY, text) for text in _object_rule_problems(obj_json)]
    return found


@functools.lru_cache(maxsize=4096)
def _object_schema_problems(obj_json: str) -> tuple[str, ...]:
    """Schema findings of one object, cached by its content (tests and several stacks check the same objects)."""
    try:
        return tuple(karpenter_schema_problems(json.loads(obj_json)))
    except SchemaNotFound as error:
        return (str(error),)


@functools.lru_cache(maxsize=4096)
def _object_rule_problems(obj_json: str) -> tuple[str, ...]:
    """CEL findings of one object, cached by its content like the schema findings."""
    obj = json.loads(obj_json)
    try:
        return tuple(karpenter_rule_problems(obj))
    except SchemaNotFound:  # reported once, by the Karpenter CRD schemas check
        return ()
