"""The CloudWatch agent that feeds the dashboard (infra.dashboard), an AmazonCloudWatchAgent resource: valid
for the OpenAPI part of that CRD in the pinned amazon-cloudwatch-observability add-on's chart (planning/data/),
whose operator turns it into the agent's Deployment."""

from __future__ import annotations

import functools
import json
from typing import Any

from infra import versions
from planning import DATA
from planning.checks.objects import Problem, SchemaNotFound, crd_schema_problems, crd_schemas, is_cloudwatch_agent

FAMILY = "CloudWatch agent CRD schema"
CRDS = DATA / f"amazon-cloudwatch-observability-{versions.CLOUDWATCH_OBSERVABILITY_CHART_VERSION}"


def problems(objects: list[dict[str, Any]]) -> list[Problem]:
    return [Problem(FAMILY, text) for obj in objects if is_cloudwatch_agent(obj)
            for text in _object_problems(json.dumps(obj, sort_keys=True))]


@functools.lru_cache(maxsize=256)
def _object_problems(obj_json: str) -> tuple[str, ...]:
    try:
        return tuple(crd_schema_problems(json.loads(obj_json), crd_schemas(CRDS.glob("*.yaml"))))
    except SchemaNotFound as error:
        return (str(error),)
