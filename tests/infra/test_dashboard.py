"""The stack's CloudWatch dashboard (issue 22, item 3) and the agent that feeds it, as the real program renders
them for every stack file under the planning mocks. The dashboard body is parsed, and every metric it names
is traced back: to what the stack's agent makes metrics of (its EMF declarations, the series its scrape
keeps) and to a source that exports it in a type the agent keeps (the servers' own registry, the
kube-state-metrics collectors the stack enables); or to Container Insights' documented NeuronCore metrics.
CloudWatch itself (whether the agent really writes there) only runs on AWS."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from common import endpoints
from infra.dashboard import (
    AGENT_KIND, AGENT_LABELS, AGENT_SERVICE_ACCOUNT, COMPILE_DIMENSION, COMPILE_STATES, CURRENT_REPLICAS,
    KUBE_STATE_METRICS_JOB, MAX_REPLICAS, METRIC_NAMESPACE, NEURONCORE_MEMORY, NEURONCORE_UTILIZATION, SERVING_JOB,
    WEIGHTS_COMPILE, dashboard_url, graphs_compile,
)
from infra.monitoring import KUBE_STATE_METRICS_COLLECTORS
from infra.naming import METRICS_NAMESPACE, SERVE, SYSTEM_NODE_LABEL, WORKLOAD_NAMESPACE, workload_name
from infra.observability import CONTAINER_INSIGHTS
from planning.offline import manifest
from serving.metrics import Metrics

DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
AGENT = f"kubernetes:cloudwatch.aws.amazon.com/v1alpha1:{AGENT_KIND}"
ADDON = "aws:eks/addon:Addon"
# kube-state-metrics families by the collector that exports them (all gauges).
COLLECTOR_OF = {"kube_job_": "jobs", "kube_horizontalpodautoscaler_": "horizontalpodautoscalers"}
# The documented dimensions of Container Insights' per-container NeuronCore metrics.
NEURONCORE_DIMENSIONS = {"ClusterName", "Namespace", "PodName", "ContainerName"}
# What the CloudWatch agent makes metrics of: it drops histograms and untyped series.
KEPT_TYPES = {"counter", "gauge", "summary"}


@dataclass(frozen=True)
class MetricRef:
    namespace: str
    name: str
    dimensions: tuple[tuple[str, str], ...]  # (name, value); the value "" for a SEARCH's free dimension


def widgets(rendering) -> list[dict]:
    (dashboard,) = rendering.of_type(DASHBOARD)
    return json.loads(dashboard.inputs["dashboardBody"])["widgets"]


def metric_refs(widget: dict) -> list[MetricRef]:
    refs = []
    for line in widget.get("properties", {}).get("metrics", []):
        if isinstance(line[0], dict):  # an expression: SEARCH('{namespace,dim,...} MetricName="..." dim="v"')
            search = re.fullmatch(r"SEARCH\('\{([^}]+)\} MetricName=\"([^\"]+)\"((?: \w+=\"[^\"]*\")*)', '\w+', \d+\)",
                                  line[0]["expression"])
            assert search, line
            namespace, *dimension_names = search[1].split(",")
            fixed = dict(re.findall(r'(\w+)="([^"]*)"', search[3]))
            refs.append(MetricRef(namespace, search[2], tuple((d, fixed.get(d, "")) for d in dimension_names)))
        else:
            values = [item for item in line if not isinstance(item, dict)]
            namespace, name, *pairs = values
            refs.append(MetricRef(namespace, name, tuple(zip(pairs[::2], pairs[1::2]))))
    return refs


def agent(rendering) -> dict:
    (resource,) = rendering.of_type(AGENT)
    return manifest(resource)


def declarations(rendering) -> list[dict]:
    config = json.loads(agent(rendering)["spec"]["config"])
    return config["logs"]["metrics_collected"]["prometheus"]["emf_processor"]["metric_declaration"]


def scrape_jobs(rendering) -> dict[str, dict]:
    return {job["job_name"]: job for job in agent(rendering)["spec"]["prometheus"]["config"]["scrape_configs"]}


def kept_by_scrape(job: dict, name: str) -> bool:
    """Whether the job's first metric_relabel keep rule passes series `name` (on a generation route)."""
    rule = job["metric_relabel_configs"][0]
    assert rule["action"] == "keep"
    values = {"__name__": name, "route": endpoints.GENERATE}
    return re.fullmatch(rule["regex"], ";".join(values[label] for label in rule["source_labels"])) is not None


def serving_types() -> dict[str, str]:
    """Every family a server exports, and its type, after a request and a queue wait were observed."""
    metrics = Metrics()
    metrics.requests.labels(endpoints.GENERATE, "200").inc()
    metrics.generation_latency_recent.observe(1)
    metrics.queue_wait_recent.observe(1)
    families = text_string_to_metric_families(generate_latest(metrics.registry).decode())
    return {family.name if family.type != "counter" else f"{family.name}_total": family.type for family in families}


def test_every_metric_the_dashboard_names_is_one_the_stack_emits(rendering):
    cluster = rendering.outputs["clusterName"]
    exported = serving_types()
    jobs = scrape_jobs(rendering)
    refs = [ref for widget in widgets(rendering) for ref in metric_refs(widget)]
    assert refs
    for ref in refs:
        dimensions = dict(ref.dimensions)
        assert dimensions["ClusterName"] == cluster, ref
        if ref.namespace == CONTAINER_INSIGHTS:
            assert ref.name in (NEURONCORE_UTILIZATION, NEURONCORE_MEMORY) and set(dimensions) == NEURONCORE_DIMENSIONS
            assert dimensions["Namespace"] == WORKLOAD_NAMESPACE and dimensions["ContainerName"] == SERVE
            continue
        assert ref.namespace == METRIC_NAMESPACE, ref
        # The agent makes this metric, with exactly these dimensions, of a job's series...
        (declaration,) = [d for d in declarations(rendering)
                          if any(re.fullmatch(selector, ref.name) for selector in d["metric_selectors"])
                          and set(dimensions) in map(set, d["dimensions"])]
        job = re.fullmatch(r"\^(.+)\$", declaration["label_matcher"])[1]
        # ... which its scrape keeps ...
        assert kept_by_scrape(jobs[job], ref.name), ref
        # ... and which a source exports in a type the agent keeps.
        if job == SERVING_JOB:
            assert exported[ref.name] in KEPT_TYPES, (ref.name, exported[ref.name])
        else:
            assert job == KUBE_STATE_METRICS_JOB
            assert next(c for prefix, c in COLLECTOR_OF.items() if ref.name.startswith(prefix)) in (
                KUBE_STATE_METRICS_COLLECTORS)


def test_each_shape_has_its_row_of_every_view(rendering, stack_config):
    views = {"Generation requests by status", "Latency", "Wait for the pipeline", "Replicas against",
             "NeuronCores", "Compile Jobs"}
    for shape in stack_config.shapes:
        row = [widget for widget in widgets(rendering) if any(
            dict(ref.dimensions).get("shape") == str(shape) or dict(ref.dimensions).get("PodName") == workload_name(
                SERVE, shape) or dict(ref.dimensions).get(COMPILE_DIMENSION) == graphs_compile(shape)
            for ref in metric_refs(widget))]
        titles = {widget["properties"]["title"] for widget in row}
        assert {view for view in views if any(title.startswith(view) for title in titles)} == views, shape
        names = {ref.name for widget in row for ref in metric_refs(widget)}
        assert {CURRENT_REPLICAS, MAX_REPLICAS, *COMPILE_STATES.values(), NEURONCORE_UTILIZATION,
                NEURONCORE_MEMORY, endpoints.GENERATION_LATENCY_RECENT_METRIC,
                endpoints.QUEUE_WAIT_RECENT_METRIC, f"{endpoints.REQUESTS_METRIC}_total"} <= names
    assert {widget["properties"]["region"] for widget in widgets(rendering) if widget["type"] == "metric"} == {
        rendering.outputs["region"]}


def test_the_dashboard_s_name_and_link_are_stack_outputs(rendering):
    (dashboard,) = rendering.of_type(DASHBOARD)
    assert rendering.outputs["dashboard"] == dashboard.inputs["dashboardName"] == rendering.outputs["clusterName"]
    assert rendering.outputs["dashboardUrl"] == dashboard_url(rendering.outputs["region"], rendering.outputs["dashboard"])
    assert rendering.outputs["dashboardUrl"].startswith(f"https://{rendering.outputs['region']}.console.aws.amazon.com/")


def test_the_agent_is_a_pod_network_deployment_on_a_system_node_after_the_add_on_that_runs_it(rendering):
    resource = agent(rendering)
    assert resource["metadata"]["namespace"] == METRICS_NAMESPACE
    assert AGENT_LABELS.items() <= resource["metadata"]["labels"].items()
    spec = resource["spec"]
    assert (spec["mode"], spec["replicas"], spec["hostNetwork"]) == ("deployment", 1, False)
    assert spec["nodeSelector"] == SYSTEM_NODE_LABEL and spec["serviceAccount"] == AGENT_SERVICE_ACCOUNT
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    (addon,) = [a for a in rendering.of_type(ADDON) if a.inputs["addonName"] == "amazon-cloudwatch-observability"]
    (cr,) = rendering.of_type(AGENT)
    assert addon.urn in cr.dependencies


def test_the_agent_may_write_one_log_group_and_read_pods_of_one_namespace(rendering):
    cluster = rendering.outputs["clusterName"]
    group = f"/aws/containerinsights/{cluster}/prometheus"
    (log_group,) = [g for g in rendering.of_type("aws:cloudwatch/logGroup:LogGroup") if g.inputs["name"] == group]
    config = json.loads(agent(rendering)["spec"]["config"])["logs"]["metrics_collected"]["prometheus"]
    assert config["log_group_name"] == group and config["cluster_name"] == cluster
    (association,) = [a for a in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                      if a.inputs["serviceAccount"] == AGENT_SERVICE_ACCOUNT]
    assert association.inputs["namespace"] == METRICS_NAMESPACE
    (role,) = [r for r in rendering.of_type("aws:iam/role:Role") if r.outputs["arn"] == association.inputs["roleArn"]]
    policies = [json.loads(p.inputs["policy"]) for p in rendering.of_type("aws:iam/rolePolicy:RolePolicy")
                if p.inputs["role"] == role.outputs.get("id", f"{role.name}-id")]
    assert not [a for a in rendering.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.inputs["role"] == role.outputs["name"]], "no managed policy"
    (policy,) = policies
    granted = {(action, statement["Resource"]) for statement in policy["Statement"]
               for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])}
    arn = log_group.outputs["arn"]
    assert granted == {("logs:CreateLogStream", f"{arn}:log-stream:*"), ("logs:PutLogEvents", f"{arn}:log-stream:*"),
                       ("logs:DescribeLogStreams", f"{arn}:*")}
    (role_object,) = [manifest(r) for r in rendering.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role")
                      if manifest(r)["metadata"]["name"] == "flux-metrics-agent"]
    assert role_object["metadata"]["namespace"] == WORKLOAD_NAMESPACE
    assert role_object["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def _relabelled(rules: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus's relabelling of one series (replace and keep, the actions the agent's rules use; regexes
    anchored, source labels joined by ';'): its labels after, or None when a keep rule drops it."""
    labels = dict(labels)
    for rule in rules:
        value = ";".join(labels.get(label, "") for label in rule["source_labels"])
        match = re.fullmatch(rule["regex"], value)
        if rule.get("action", "replace") == "keep":
            if match is None:
                return None
        elif match is not None:
            labels[rule["target_label"]] = match.expand(rule["replacement"].replace("$1", r"\1"))
    return labels


def test_every_compile_job_of_the_stack_is_on_the_row_of_each_shape_that_waits_for_it(rendering, stack_config):
    """The Jobs' names, as kube-state-metrics labels their series, relabelled by the agent's rules: each gets
    the compile dimension the dashboard reads, the weights Job on every shape's row, a graphs Job on its own."""
    rules = scrape_jobs(rendering)[KUBE_STATE_METRICS_JOB]["metric_relabel_configs"]
    compiles = {}
    for job in rendering.of_type("kubernetes:batch/v1:Job"):
        name = manifest(job)["metadata"]["name"]
        labels = _relabelled(rules, {"__name__": COMPILE_STATES["succeeded"], "job_name": name})
        assert labels is not None, name
        compiles[name] = labels[COMPILE_DIMENSION]
    assert sorted(compiles.values()) == sorted([WEIGHTS_COMPILE, *map(graphs_compile, stack_config.shapes)])
    assert _relabelled(rules, {"__name__": COMPILE_STATES["succeeded"], "job_name": "someone-elses-job"}) is None
    for shape in stack_config.shapes:
        (widget,) = [w for w in widgets(rendering) if any(
            dict(ref.dimensions).get(COMPILE_DIMENSION) == graphs_compile(shape) for ref in metric_refs(w))]
        read = {(ref.name, dict(ref.dimensions)[COMPILE_DIMENSION]) for ref in metric_refs(widget)}
        assert read == {(state, compile) for state in COMPILE_STATES.values()
                        for compile in (graphs_compile(shape), WEIGHTS_COMPILE)}


@pytest.mark.parametrize(("series", "kept"), [
    ((f"{endpoints.REQUESTS_METRIC}_total", endpoints.GENERATE), True),
    ((f"{endpoints.REQUESTS_METRIC}_total", endpoints.OPENAI_IMAGES), True),
    ((f"{endpoints.REQUESTS_METRIC}_total", endpoints.HEALTHZ), False),
    ((f"{endpoints.LATENCY_METRIC}_bucket", endpoints.GENERATE), False),
    ((endpoints.QUEUE_WAIT_RECENT_METRIC, ""), True),
    (("process_cpu_seconds_total", ""), False),
])
def test_the_agent_keeps_only_the_generation_traffic_and_what_the_dashboard_reads(rendering, series, kept):
    rule = scrape_jobs(rendering)[SERVING_JOB]["metric_relabel_configs"][0]
    assert (re.fullmatch(rule["regex"], ";".join(series)) is not None) == kept
