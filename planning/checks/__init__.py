"""The checks of a rendering, one module per family. Each family returns readable problems (empty when
clean), so tests and `python -m planning --check` report the same findings.

    kubernetes   Kubernetes schemas
    karpenter    Karpenter CRD schemas, Karpenter CEL rules
    cloudwatch_agent  CloudWatch agent CRD schema
    iam          IAM policies
    references   Cross-references
    security     Security posture
    published    Published versions
"""

from __future__ import annotations

from planning.checks import cloudwatch_agent, iam, karpenter, kubernetes, published, references, security
from planning.checks.objects import Objects, Problem, kubernetes_version, pod_templates
from planning.offline import Rendering, manifest

# The check families, in report order.
CHECKS = (kubernetes.FAMILY, karpenter.SCHEMA_FAMILY, cloudwatch_agent.FAMILY, iam.FAMILY, references.FAMILY, security.FAMILY,
          karpenter.CEL_FAMILY, published.FAMILY)


def check(rendering: Rendering) -> list[Problem]:
    """Every problem of the rendering, by check then message."""
    objects = [manifest(resource) for resource in rendering.kubernetes_objects()]
    pods = pod_templates(objects)
    problems = kubernetes.problems(objects, kubernetes_version(rendering))
    problems += karpenter.problems(objects)
    problems += cloudwatch_agent.problems(objects)
    problems += iam.problems(rendering)
    problems += references.problems(Objects(objects), pods, rendering)
    problems += security.problems(rendering, pods)
    problems += published.problems(rendering, Objects(objects))
    return sorted(set(problems), key=lambda p: (CHECKS.index(p.check), p.message))


def report(rendering: Rendering, problems: list[Problem]) -> str:
    """What `--check` prints of one stack: its scope, then the problems grouped by family."""
    objects = rendering.kubernetes_objects()
    pods = pod_templates([manifest(resource) for resource in objects])
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
