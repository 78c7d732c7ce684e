"""The stack's CloudWatch dashboard, and the agent that brings the serving metrics to CloudWatch for it.

Per shape, one row: generation requests by status, their latency p50/p95, the wait for the pipeline,
replicas against serving.maxReplicas, NeuronCore utilisation and memory, and the state of the compile Jobs it
waits for: its graphs Job and the stack's weights Job.

How the serving metrics get there. They are Prometheus metrics; the CloudWatch agent scrapes Prometheus
endpoints and writes what it keeps as embedded-metric-format (EMF) log events, from which CloudWatch Logs
makes the metrics ("Container Insights Prometheus" in the CloudWatch docs). The agent keeps counters
(as deltas per scrape), gauges and summaries, and drops histograms and untyped series
(amazon-cloudwatch-agent, plugins/inputs/prometheus/metrics_filter.go): so it cannot read Prometheus's
federation (untyped) nor the servers' latency histograms; the servers export the recent quantiles as
summaries for it (serving/metrics.py), and it scrapes them and kube-state-metrics itself.

The agent is an AmazonCloudWatchAgent resource of the amazon-cloudwatch-observability add-on's operator
(its CRD: planning/data/), in deployment mode, one replica on the system nodes, on the pod network (not the
host's, as the add-on's own agents): the serving pods' NetworkPolicy admits it by its labels, as it admits
Prometheus, and nothing else new (infra/network_policy.py). Its own service account and role: it may
write log streams of one log group, the one this component creates with the stack's retention, and
nothing else (no metric API: CloudWatch Logs extracts the metrics). It reads pods in the workload
namespace (discovery) through a Role there, and kube-state-metrics through its Service.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from common import endpoints
from common.shapes import Shape
from infra import iam, versions
from infra.monitoring import KUBE_STATE_METRICS_TARGET
from infra.naming import COMPILE, METRICS_NAMESPACE, SERVE, SYSTEM_NODE_LABEL, WEIGHTS_JOB_PREFIX, workload_name
from infra.observability import CONTAINER_INSIGHTS, container_insights_log_group
from infra.options import after, children

# The custom resource the add-on's operator turns into the agent's Deployment.
AGENT_API_VERSION = "cloudwatch.aws.amazon.com/v1alpha1"
AGENT_KIND = "AmazonCloudWatchAgent"
AGENT_NAME = "flux-metrics-agent"
AGENT_SERVICE_ACCOUNT = AGENT_NAME
# The operator copies the resource's labels onto its pods (its manifestutils.Labels): the NetworkPolicy selects this.
AGENT_LABELS = {"flux-neuron.io/role": "metrics-agent"}
# Where the agent writes its EMF log events: Container Insights' group for Prometheus metrics.
PROMETHEUS_LOG_KIND = "prometheus"
# The namespace of the serving metrics in CloudWatch.
METRIC_NAMESPACE = "flux-neuron"
SCRAPE_INTERVAL = "60s"
SERVING_JOB = "flux-serving"
KUBE_STATE_METRICS_JOB = "flux-kube-state-metrics"
# The dimension every serving metric carries, from the workload's name: flux-serve-<shape>.
SHAPE_DIMENSION = "shape"
# The compile Jobs' dimension, from the Job's name: graphs-<shape> (flux-compile-<shape>-<key>) or weights
# (flux-weights-<key>, one per stack: every shape waits for it).
COMPILE_DIMENSION = "compile"
WEIGHTS_COMPILE = "weights"
CLUSTER_DIMENSION = "ClusterName"  # the agent's cluster_name label
STATUS_DIMENSION = "status"
QUANTILE_DIMENSION = "quantile"
QUANTILES = ("0.5", "0.95")

# kube-state-metrics families the dashboard reads (its horizontalpodautoscalers and jobs collectors,
# infra.monitoring): gauges.
CURRENT_REPLICAS = "kube_horizontalpodautoscaler_status_current_replicas"
MAX_REPLICAS = "kube_horizontalpodautoscaler_spec_max_replicas"
COMPILE_STATES = {"running": "kube_job_status_active", "succeeded": "kube_job_status_succeeded",
                  "failed": "kube_job_status_failed"}
# Container Insights' NeuronCore metrics of a container (dimensions ClusterName, Namespace, PodName, ContainerName:
# PodName is the workload's name), from the add-on's agent and neuron-monitor. Source: the CloudWatch docs,
# "Enhanced Container Insights (Classic) metric reference", AWS Neuron; amazon-cloudwatch-agent's metric
# declarations (container_neuroncore_utilization, container_neuroncore_memory_usage_total).
NEURONCORE_UTILIZATION = "container_neuroncore_utilization"
NEURONCORE_MEMORY = "container_neuroncore_memory_usage_total"

# What the agent keeps of each job, and with which dimensions it makes metrics of them.
SERVING_METRICS = {
    f"{endpoints.REQUESTS_METRIC}_total": (CLUSTER_DIMENSION, SHAPE_DIMENSION, STATUS_DIMENSION),
    endpoints.GENERATION_LATENCY_RECENT_METRIC: (CLUSTER_DIMENSION, SHAPE_DIMENSION, QUANTILE_DIMENSION),
    endpoints.QUEUE_WAIT_RECENT_METRIC: (CLUSTER_DIMENSION, SHAPE_DIMENSION, QUANTILE_DIMENSION),
    endpoints.QUEUE_DEPTH_METRIC: (CLUSTER_DIMENSION, SHAPE_DIMENSION),
}
KUBE_STATE_METRICS = {
    **{name: (CLUSTER_DIMENSION, SHAPE_DIMENSION) for name in (CURRENT_REPLICAS, MAX_REPLICAS)},
    **{name: (CLUSTER_DIMENSION, COMPILE_DIMENSION) for name in COMPILE_STATES.values()},
}
PERIOD_S = 60


def _label_from(label: str, pattern: str, target: str, replacement: str = "$1") -> dict:
    return {"source_labels": [label], "regex": pattern, "target_label": target, "replacement": replacement}


def graphs_compile(shape: Shape | str) -> str:
    return f"graphs-{shape}"


def _serving_series() -> str:
    """The serving series the agent keeps, as a regex over `<name>;<route>` (RE2, anchored): the request
    counter of the generation routes only (probes and scrapes are not traffic), the others whole."""
    requests = f"{endpoints.REQUESTS_METRIC}_total"
    routes = "|".join(re.escape(route) for route in endpoints.GENERATION_ROUTES)
    others = "|".join(sorted(name for name in SERVING_METRICS if name != requests))
    return f"{requests};(?:{routes})|(?:{others});.*"


def scrape_config(workload_namespace: str) -> dict:
    """The agent's Prometheus configuration: the serving pods, as Prometheus scrapes them
    (infra.monitoring), and kube-state-metrics; each cut to what the dashboard reads, with the shape
    as a label."""
    serve_prefix, compile_prefix = workload_name(SERVE, ""), workload_name(COMPILE, "")
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": "10s"},
        "scrape_configs": [
            {"job_name": SERVING_JOB, "metrics_path": endpoints.METRICS,
             "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [workload_namespace]}}],
             "relabel_configs": [
                 {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "action": "keep",
                  "regex": SERVE},
                 {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "http"},
                 _label_from("__meta_kubernetes_pod_label_app_kubernetes_io_instance", f"{serve_prefix}(.+)",
                             SHAPE_DIMENSION)],
             "metric_relabel_configs": [
                 {"source_labels": ["__name__", "route"], "action": "keep", "regex": _serving_series()}]},
            {"job_name": KUBE_STATE_METRICS_JOB, "honor_labels": True,
             "static_configs": [{"targets": [KUBE_STATE_METRICS_TARGET]}],
             "metric_relabel_configs": [
                 {"source_labels": ["__name__"], "action": "keep", "regex": "|".join(sorted(KUBE_STATE_METRICS))},
                 _label_from("horizontalpodautoscaler", f"{serve_prefix}(.+)", SHAPE_DIMENSION),
                 _label_from("job_name", rf"{compile_prefix}(\d+x\d+)-.+", COMPILE_DIMENSION, graphs_compile("$1")),
                 _label_from("job_name", f"{WEIGHTS_JOB_PREFIX}-.+", COMPILE_DIMENSION, WEIGHTS_COMPILE),
                 # Only this stack's workloads: the series that got a shape or a compile.
                 {"source_labels": [SHAPE_DIMENSION, COMPILE_DIMENSION], "action": "keep", "regex": ".+;.*|;.+"}]},
        ],
    }


def agent_config(cluster_name: str, region: str) -> dict:
    """The agent's own configuration: its Prometheus input, and the metrics EMF makes of what it keeps."""
    declarations = [
        {"source_labels": ["job"], "label_matcher": f"^{job}$", "dimensions": [list(dimensions)],
         "metric_selectors": [f"^{re.escape(name)}$" for name, named in metrics.items() if named == dimensions]}
        for job, metrics in ((SERVING_JOB, SERVING_METRICS), (KUBE_STATE_METRICS_JOB, KUBE_STATE_METRICS))
        for dimensions in dict.fromkeys(metrics.values())
    ]
    return {
        # The pod network cannot reach the instance metadata (hop limit 1, infra.iam): the region is given.
        "agent": {"region": region},
        "logs": {"metrics_collected": {"prometheus": {
            "cluster_name": cluster_name,
            "log_group_name": container_insights_log_group(cluster_name, PROMETHEUS_LOG_KIND),
            "emf_processor": {"metric_namespace": METRIC_NAMESPACE, "metric_declaration_dedup": True,
                              "metric_declaration": declarations},
        }}},
    }


def _metric(namespace: str, name: str, dimensions: dict[str, str], **options) -> list:
    """A dashboard metric line: namespace, name, then each dimension's name and value, then its options."""
    line: list = [namespace, name]
    for dimension, value in dimensions.items():
        line += [dimension, value]
    return [*line, options] if options else line


def _graph(title: str, metrics: list, x: int, y: int, region: str, **properties) -> dict:
    return {"type": "metric", "x": x, "y": y, "width": 8, "height": 6,
            "properties": {"title": title, "region": region, "view": "timeSeries", "period": PERIOD_S,
                           "metrics": metrics, **properties}}


def shape_widgets(cluster_name: str, region: str, namespace: str, shape: Shape, row: int) -> list[dict]:
    """One shape's row: a heading, then six graphs."""
    serving = {CLUSTER_DIMENSION: cluster_name, SHAPE_DIMENSION: str(shape)}
    top = row * 13
    requests_by_status = (
        f"SEARCH('{{{METRIC_NAMESPACE},{CLUSTER_DIMENSION},{SHAPE_DIMENSION},{STATUS_DIMENSION}}} "
        f"MetricName=\"{endpoints.REQUESTS_METRIC}_total\" {CLUSTER_DIMENSION}=\"{cluster_name}\" "
        f"{SHAPE_DIMENSION}=\"{shape}\"', 'Sum', {PERIOD_S})")

    def quantiles(name: str, what: str) -> list:
        return [_metric(METRIC_NAMESPACE, name, {**serving, QUANTILE_DIMENSION: quantile},
                        stat="Maximum", label=f"{what} p{float(quantile) * 100:g}")
                for quantile in QUANTILES]

    pod = {CLUSTER_DIMENSION: cluster_name, "Namespace": namespace, "PodName": workload_name(SERVE, shape),
           "ContainerName": SERVE}
    return [
        {"type": "text", "x": 0, "y": top, "width": 24, "height": 1,
         "properties": {"markdown": f"## {shape} (HxW): {workload_name(SERVE, shape)}"}},
        _graph("Generation requests by status (a minute)", [[{"expression": requests_by_status, "id": "requests",
                                                                "label": "status"}]],
               0, top + 1, region, stat="Sum"),
        _graph("Latency, queueing included (slowest pod's last 5 minutes)",
               quantiles(endpoints.GENERATION_LATENCY_RECENT_METRIC, "latency"), 8, top + 1, region,
               yAxis={"left": {"label": "seconds", "showUnits": False}}),
        _graph("Wait for the pipeline", [
            *quantiles(endpoints.QUEUE_WAIT_RECENT_METRIC, "wait"),
            _metric(METRIC_NAMESPACE, endpoints.QUEUE_DEPTH_METRIC, serving, stat="Maximum", label="queued",
                    yAxis="right")], 16, top + 1, region),
        _graph("Replicas against serving.maxReplicas", [
            _metric(METRIC_NAMESPACE, CURRENT_REPLICAS, serving, stat="Maximum", label="replicas"),
            _metric(METRIC_NAMESPACE, MAX_REPLICAS, serving, stat="Maximum", label="maxReplicas")],
               0, top + 7, region),
        _graph("NeuronCores (Container Insights)", [
            _metric(CONTAINER_INSIGHTS, NEURONCORE_UTILIZATION, pod, stat="Average", label="utilisation %"),
            _metric(CONTAINER_INSIGHTS, NEURONCORE_MEMORY, pod, stat="Average", label="memory bytes",
                    yAxis="right")], 8, top + 7, region),
        _graph("Compile Jobs it waits for", [
            _metric(METRIC_NAMESPACE, name, {CLUSTER_DIMENSION: cluster_name, COMPILE_DIMENSION: compile},
                    stat="Maximum", label=f"{what} {state}")
            for what, compile in (("graphs", graphs_compile(shape)), ("weights", WEIGHTS_COMPILE))
            for state, name in COMPILE_STATES.items()], 16, top + 7, region),
    ]


def dashboard_body(cluster_name: str, region: str, namespace: str, shapes: list[Shape]) -> str:
    widgets = [widget for row, shape in enumerate(shapes)
               for widget in shape_widgets(cluster_name, region, namespace, shape, row)]
    return json.dumps({"widgets": widgets}, sort_keys=True)


def dashboard_url(region: str, name: str) -> str:
    return f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards/dashboard/{name}"


@dataclass
class DashboardArgs:
    name: str
    cluster_name: pulumi.Input[str]
    region: str
    shapes: list[Shape]
    workload_namespace: pulumi.Input[str]
    log_retention_days: int


class Dashboard(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and the add-on whose operator runs the agent through `opts`."""

    dashboard_name: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(self, name: str, args: DashboardArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Dashboard", name, None, opts)
        in_cluster = children(self, opts)
        cluster_name = pulumi.Output.from_input(args.cluster_name)
        namespace = pulumi.Output.from_input(args.workload_namespace)
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-{PROMETHEUS_LOG_KIND}",
            name=cluster_name.apply(lambda cluster: container_insights_log_group(cluster, PROMETHEUS_LOG_KIND)),
            retention_in_days=args.log_retention_days, opts=pulumi.ResourceOptions(parent=self))
        # Log streams of this one group; CloudWatch Logs makes the metrics of their EMF events.
        role = iam.pod_identity_role(f"{name}-agent", parent=self, inline_policy=iam.policy_document([
            {"Sid": "WriteMetricLogEvents", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
             "Resource": log_group.arn.apply(lambda arn: f"{arn}:log-stream:*")},
            {"Sid": "FindItsLogStream", "Effect": "Allow", "Action": "logs:DescribeLogStreams",
             "Resource": log_group.arn.apply(lambda arn: f"{arn}:*")}]))
        association = iam.pod_identity_association(
            f"{name}-agent", role_arn=role.arn, cluster_name=args.cluster_name, namespace=METRICS_NAMESPACE,
            service_account=AGENT_SERVICE_ACCOUNT, parent=self)
        account = k8s.core.v1.ServiceAccount(
            AGENT_SERVICE_ACCOUNT, metadata={"name": AGENT_SERVICE_ACCOUNT, "namespace": METRICS_NAMESPACE},
            opts=in_cluster)
        # Discovery of the serving pods: read pods, in the workload namespace only.
        reader = k8s.rbac.v1.Role(
            AGENT_NAME, metadata={"name": AGENT_NAME, "namespace": namespace},
            rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}], opts=in_cluster)
        binding = k8s.rbac.v1.RoleBinding(
            AGENT_NAME, metadata={"name": AGENT_NAME, "namespace": namespace},
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT_NAME},
            subjects=[{"kind": "ServiceAccount", "name": AGENT_SERVICE_ACCOUNT, "namespace": METRICS_NAMESPACE}],
            opts=in_cluster)
        k8s.apiextensions.CustomResource(
            AGENT_NAME, api_version=AGENT_API_VERSION, kind=AGENT_KIND,
            metadata={"name": AGENT_NAME, "namespace": METRICS_NAMESPACE, "labels": AGENT_LABELS},
            spec=pulumi.Output.all(cluster_name, namespace).apply(
                lambda values: agent_spec(values[0], args.region, values[1])),
            opts=after(in_cluster, log_group, association, account, reader, binding))
        self.dashboard_name = pulumi.Output.from_input(args.name)
        dashboard = aws.cloudwatch.Dashboard(
            name, dashboard_name=args.name,
            dashboard_body=pulumi.Output.all(cluster_name, namespace).apply(
                lambda values: dashboard_body(values[0], args.region, values[1], args.shapes)),
            opts=pulumi.ResourceOptions(parent=self))
        self.url = dashboard.dashboard_name.apply(lambda dashboard_name: dashboard_url(args.region, dashboard_name))
        self.register_outputs({"dashboard_name": dashboard.dashboard_name, "url": self.url})


def agent_spec(cluster_name: str, region: str, workload_namespace: str) -> dict:
    """The AmazonCloudWatchAgent's spec: a Deployment of one agent on a system node, on the pod network,
    without capabilities or privilege escalation."""
    return {
        "mode": "deployment",
        "replicas": 1,
        "hostNetwork": False,
        "image": versions.CLOUDWATCH_AGENT_IMAGE,
        "serviceAccount": AGENT_SERVICE_ACCOUNT,
        "nodeSelector": SYSTEM_NODE_LABEL,
        "config": json.dumps(agent_config(cluster_name, region), sort_keys=True),
        "prometheus": {"config": scrape_config(workload_namespace)},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
