"""The metric pipeline and alerting of the cluster: one Prometheus scraping the serving pods and
kube-state-metrics and evaluating the alert rules, Alertmanager sending what fires to the
configured SNS topic (with its Pod Identity role), and prometheus-adapter serving the
autoscalers' metric (infra.pods) from Prometheus."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import iam, versions
from infra.cluster import PERSISTENT_STORAGE_CLASS
from infra.config import MonitoringSettings
from infra.options import after, children
from infra.naming import (
    ACTIVATOR, COMPILE, METRICS_NAMESPACE, SERVE, SYSTEM_NODE_LABEL, WEIGHTS_JOB_PREFIX, workload_name,
)
from infra.pods import AUTOSCALING_METRIC, PLATFORM_CPU_SELECTOR
from common import endpoints

PROMETHEUS_RELEASE = "prometheus"
PROMETHEUS_SERVICE = f"{PROMETHEUS_RELEASE}-server"
PROMETHEUS_URL = f"http://{PROMETHEUS_SERVICE}.{METRICS_NAMESPACE}.svc"
SCRAPE_INTERVAL = "15s"
# Alerting: kube-state-metrics reports on Jobs, pods, Deployments (the activator) and autoscalers; the alert
# rules read it and the servers' own metrics; Alertmanager sends what fires to the configured SNS topic.
KUBE_STATE_METRICS_COLLECTORS = ["jobs", "pods", "deployments", "horizontalpodautoscalers"]
KUBE_STATE_METRICS_TARGET = f"{PROMETHEUS_RELEASE}-kube-state-metrics.{METRICS_NAMESPACE}.svc:8080"
ALERTMANAGER_SERVICE_ACCOUNT = f"{PROMETHEUS_RELEASE}-alertmanager"
ALERT_RECEIVER = "alert-topic"
# Generation requests answered 5xx, or refused with 429 (queue full), as a share of all of them.
ERROR_RATIO = 0.05
REJECTED_RATIO = 0.1
# A compile Job this far into compile.timeoutMinutes is likely to be stopped by its deadline.
COMPILE_STUCK_SHARE = 0.8
# Latency p95 (queueing included) this close to serving.requestTimeoutSeconds: requests start to time out.
LATENCY_TIMEOUT_SHARE = 0.8
# Requests that wait for the pipeline this share of the timeout leave little time to generate: capacity is short.
QUEUE_WAIT_TIMEOUT_SHARE = 0.5
UNSCHEDULED_MINUTES = 15
# Without the activator no serving pod starts: a new pod, a scale-up, a replacement stay gated.
ACTIVATOR_DOWN_MINUTES = 10
# Prometheus runs on a node Karpenter starts in its volume's zone (below): the release waits for that node too.
PROMETHEUS_RELEASE_TIMEOUT_SECONDS = 900
# Runtime errors of a shape's pipelines (device or Neuron runtime failures, serving/health.py) that go on
# this long: longer than the rate's window, so one burst the pod recovered from pages nobody, while a
# device that stays broken (its self-tests fail every 30 s) does.
RUNTIME_ERRORS_WINDOW = "5m"
RUNTIME_ERRORS_FOR = "10m"
# A pod out of the load balancer for runtime errors this long has not recovered by its self-tests.
UNREADY_ON_ERRORS_FOR = "5m"
# Kept below the data volume's size, so Prometheus deletes old blocks before the volume fills up.
RETENTION_SHARE_OF_STORAGE = 0.8


def _alert(name: str, expr: str, duration: str, severity: str, summary: str) -> dict:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def alert_rules(namespace: str, compile_timeout_minutes: int, request_timeout_seconds: int) -> list[dict]:
    """What pages someone: compiles that failed or will, pods without a node, shapes out of capacity,
    failing or refused generations, latency near the timeout, pods whose readiness flaps, and Neuron
    runtime errors (the servers' own count: this Prometheus does not scrape neuron-monitor, whose
    execution errors the CloudWatch observability add-on collects, infra.observability)."""
    in_namespace = f'namespace="{namespace}"'
    compile_jobs = f'{in_namespace},job_name=~"({workload_name(COMPILE, "")}|{WEIGHTS_JOB_PREFIX}-).+"'
    generations = f'{in_namespace},route=~"{endpoints.GENERATE}|{endpoints.OPENAI_IMAGES}"'
    requests = f"{endpoints.REQUESTS_METRIC}_total"

    def share(status: str) -> str:
        return (f'sum by (workload) (rate({requests}{{{generations},status=~"{status}"}}[5m])) '
                f'/ sum by (workload) (rate({requests}{{{generations}}}[5m]))')

    stuck_seconds = int(compile_timeout_minutes * 60 * COMPILE_STUCK_SHARE)
    slow_seconds = request_timeout_seconds * LATENCY_TIMEOUT_SHARE
    waiting_seconds = request_timeout_seconds * QUEUE_WAIT_TIMEOUT_SHARE
    return [
        _alert("CompileJobFailed", f'kube_job_failed{{{compile_jobs},condition="true"}} == 1', "0m", "critical",
               "{{ $labels.job_name }} failed: its shape cannot serve until the compile is retried "
               "(docs/workloads.md, Retry a failed compile)"),
        _alert("CompileJobStuck",
               f"(time() - kube_job_status_start_time{{{compile_jobs}}}) > {stuck_seconds} "
               f"and on (namespace, job_name) kube_job_status_active{{{compile_jobs}}} > 0", "0m", "warning",
               f"{{{{ $labels.job_name }}}} has run for {COMPILE_STUCK_SHARE:.0%} of compile.timeoutMinutes; "
               "its deadline stops it at 100%"),
        # Unschedulable, not merely unscheduled: a serving pod gated while its artifacts compile waits by design.
        _alert("PodUnschedulable", f"kube_pod_status_unschedulable{{{in_namespace}}} == 1",
               f"{UNSCHEDULED_MINUTES}m", "warning",
               f"{{{{ $labels.pod }}}} has had no node for {UNSCHEDULED_MINUTES} minutes: NodePool limit, "
               "instance quota or no capacity in its zones"),
        _alert("ActivatorDown",
               f'kube_deployment_status_replicas_available{{{in_namespace},deployment="{ACTIVATOR}"}} < 1',
               f"{ACTIVATOR_DOWN_MINUTES}m", "critical",
               f"{ACTIVATOR} has not run for {ACTIVATOR_DOWN_MINUTES} minutes: no serving pod starts (new, scaled up "
               "or replaced) until it does"),
        _alert("AutoscalerAtMax",
               f"kube_horizontalpodautoscaler_status_current_replicas{{{in_namespace}}} "
               f">= kube_horizontalpodautoscaler_spec_max_replicas{{{in_namespace}}}", "15m", "warning",
               "{{ $labels.horizontalpodautoscaler }} is at serving.maxReplicas: more load queues, then gets 429"),
        _alert("GenerationErrors", f"{share('5..')} > {ERROR_RATIO}", "10m", "critical",
               f"over {ERROR_RATIO:.0%} of generations of {{{{ $labels.workload }}}} fail with 5xx"),
        _alert("GenerationsRejected", f"{share('429')} > {REJECTED_RATIO}", "10m", "warning",
               f"over {REJECTED_RATIO:.0%} of generations of {{{{ $labels.workload }}}} are refused: "
               "the queue is full"),
        _alert("GenerationLatencyHigh",
               f"histogram_quantile(0.95, sum by (workload, le) "
               f"(rate({endpoints.LATENCY_METRIC}_bucket{{{generations}}}[10m]))) > {slow_seconds:g}", "15m",
               "warning",
               f"p95 of generations of {{{{ $labels.workload }}}}, queueing included, is within "
               f"{1 - LATENCY_TIMEOUT_SHARE:.0%} of serving.requestTimeoutSeconds"),
        _alert("QueueWaitHigh",
               f"histogram_quantile(0.95, sum by (workload, le) "
               f"(rate({endpoints.QUEUE_WAIT_METRIC}_bucket{{{in_namespace}}}[10m]))) > {waiting_seconds:g}", "15m",
               "warning",
               f"p95 of the wait for the pipeline of {{{{ $labels.workload }}}} is over "
               f"{QUEUE_WAIT_TIMEOUT_SHARE:.0%} of serving.requestTimeoutSeconds: add replicas or raise maxReplicas"),
        _alert("ReadinessFlapping", f'changes(kube_pod_status_ready{{{in_namespace},condition="true"}}[30m]) > 3',
               "0m", "warning",
               "{{ $labels.pod }} went in and out of the load balancer more than 3 times in 30 minutes"),
        _alert("NeuronRuntimeErrors",
               f"sum by (workload) (rate({endpoints.RUNTIME_ERRORS_METRIC}_total{{{in_namespace}}}"
               f"[{RUNTIME_ERRORS_WINDOW}])) > 0", RUNTIME_ERRORS_FOR, "critical",
               f"the pipelines of {{{{ $labels.workload }}}} have kept failing with runtime errors (device or Neuron "
               f"runtime) for {RUNTIME_ERRORS_FOR}: see the pods' logs and their nodes' AcceleratedHardwareReady"),
        _alert("PodUnreadyOnRuntimeErrors",
               f"max by (workload, pod) ({endpoints.UNREADY_ON_ERRORS_METRIC}{{{in_namespace}}}) == 1",
               UNREADY_ON_ERRORS_FOR, "warning",
               f"{{{{ $labels.pod }}}} has been out of the load balancer for runtime errors for "
               f"{UNREADY_ON_ERRORS_FOR}; its liveness probe restarts it once its self-tests fail"),
    ]


def alertmanager_config(monitoring: MonitoringSettings) -> dict:
    """Every alert to the configured SNS topic (signed with the Pod Identity role), or to no one."""
    receiver: dict = {"name": ALERT_RECEIVER}
    if monitoring.alert_topic_arn:
        receiver["sns_configs"] = [{"topic_arn": monitoring.alert_topic_arn, "send_resolved": True,
                                    "sigv4": {"region": monitoring.alert_topic_region}}]
    return {
        "receivers": [receiver],
        "route": {"receiver": ALERT_RECEIVER, "group_by": ["alertname", "workload", "job_name"],
                  "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"},
    }


def prometheus_values(namespace: str, monitoring: MonitoringSettings, compile_timeout_minutes: int,
                      request_timeout_seconds: int) -> dict:
    """A single Prometheus that scrapes the serving pods (for the autoscalers and the alerts) and
    kube-state-metrics (for the alerts), with Alertmanager."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "action": "keep",
         "regex": SERVE},
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "http"},
        # The adapter maps series to pods through these two labels.
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        # The alerts aggregate a shape's pods: flux-serve-<shape>.
        {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"], "target_label": "workload"},
    ]
    storage_gi = monitoring.storage_gi
    return {
        "alertmanager": {
            "enabled": True,
            "nodeSelector": SYSTEM_NODE_LABEL,
            "serviceAccount": {"create": True, "name": ALERTMANAGER_SERVICE_ACCOUNT},
            # Silences do not survive a restart of Alertmanager: its chart (1.17) claims volumes through a
            # StatefulSet template, whose claims outlive `helm uninstall` and would leave a volume behind.
            "persistence": {"enabled": False},
            "config": alertmanager_config(monitoring),
        },
        "kube-state-metrics": {"enabled": True, "nodeSelector": SYSTEM_NODE_LABEL,
                               "collectors": KUBE_STATE_METRICS_COLLECTORS,
                               "namespaces": namespace},
        "prometheus-node-exporter": {"enabled": False},
        "prometheus-pushgateway": {"enabled": False},
        "server": {
            # An EBS volume of its own: samples survive a restart or a replaced node. The volume lives in one
            # zone and binds the pod there; one pod at a time, so an update stops the old pod before the new
            # one attaches the volume. On the cpu NodePool, not the system nodes: Karpenter starts a node in the
            # volume's zone whenever none is left there (it launches for a pod's volume topology), where a
            # system node group of fewer nodes than zones could leave the pod Pending for good.
            "nodeSelector": PLATFORM_CPU_SELECTOR,
            "persistentVolume": {"enabled": True, "size": f"{storage_gi}Gi",
                                 "storageClass": PERSISTENT_STORAGE_CLASS, "accessModes": ["ReadWriteOnce"]},
            "replicaCount": 1,
            "strategy": {"type": "Recreate"},
            "retention": f"{monitoring.retention_days}d",
            "retentionSize": f"{int(storage_gi * RETENTION_SHARE_OF_STORAGE * 1024)}MB",
            "global": {"scrape_interval": SCRAPE_INTERVAL},
        },
        "serverFiles": {
            "prometheus.yml": {"scrape_configs": [
                {"job_name": "flux-serving", "metrics_path": endpoints.METRICS,
                 "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
                 "relabel_configs": relabel},
                # Its own namespace, pod and job_name labels are the objects', not the scrape target's.
                {"job_name": "kube-state-metrics", "honor_labels": True,
                 "static_configs": [{"targets": [KUBE_STATE_METRICS_TARGET]}]},
            ]},
            "alerting_rules.yml": {"groups": [{"name": "flux-neuron", "rules": alert_rules(
                namespace, compile_timeout_minutes, request_timeout_seconds)}]},
        },
    }


def adapter_values() -> dict:
    """The custom metrics API over Prometheus: one metric, outstanding requests per serving pod."""
    labels = "{<<.LabelMatchers>>}"
    return {
        "prometheus": {"url": PROMETHEUS_URL, "port": 80},
        "nodeSelector": SYSTEM_NODE_LABEL,
        "rules": {"default": False, "custom": [{
            # The servers export these (serving/metrics.py); the adapter serves their sum per pod to the HPA.
            "seriesQuery": f'{endpoints.QUEUE_DEPTH_METRIC}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{endpoints.QUEUE_DEPTH_METRIC}$", "as": AUTOSCALING_METRIC},
            "metricsQuery": f"sum({endpoints.QUEUE_DEPTH_METRIC}{labels} + {endpoints.IN_FLIGHT_METRIC}{labels}) by (<<.GroupBy>>)",
        }]},
    }



@dataclass
class MonitoringArgs:
    settings: MonitoringSettings
    # The namespace of the serving pods and compile Jobs it scrapes and alerts on.
    workload_namespace: pulumi.Input[str]
    # compile.timeoutMinutes and serving.requestTimeoutSeconds: the alert thresholds are shares of them.
    compile_timeout_minutes: int
    request_timeout_seconds: int
    cluster_name: pulumi.Input[str]


# These resources were children of the Workloads component "workloads" until the monitoring stack
# became its own component: aliases to that parent keep `pulumi up` from replacing them.
FORMER_PARENT_NAME = "workloads"
FORMER_PARENT_TYPE = "flux-neuron:infra:Workloads"


class Monitoring(pulumi.ComponentResource):
    """Give it the cluster's Kubernetes provider and what its pods wait for through `opts`."""

    # What the autoscalers read their metric through: they wait for these.
    autoscaling_metrics: list[pulumi.Resource]
    # The Prometheus release, up once its server runs.
    prometheus: pulumi.Resource

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Monitoring", name, None, opts)
        former_parent = pulumi.create_urn(FORMER_PARENT_NAME, FORMER_PARENT_TYPE,
                                          parent=pulumi.runtime.get_root_resource())
        self._former_parent_aliases = [pulumi.Alias(parent=former_parent)]
        in_cluster = after(children(self, opts), aliases=self._former_parent_aliases)
        namespace = pulumi.Output.from_input(args.workload_namespace)
        alerting = self._alert_publisher(args)
        prometheus = k8s.helm.v3.Release(
            PROMETHEUS_RELEASE, name=PROMETHEUS_RELEASE, chart="prometheus",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO}, version=versions.PROMETHEUS_CHART_VERSION,
            namespace=METRICS_NAMESPACE, create_namespace=True, timeout=PROMETHEUS_RELEASE_TIMEOUT_SECONDS,
            values=namespace.apply(lambda workload_namespace: prometheus_values(
                workload_namespace, args.settings, args.compile_timeout_minutes, args.request_timeout_seconds)),
            opts=after(in_cluster, *alerting))
        adapter = k8s.helm.v3.Release(
            "prometheus-adapter", name="prometheus-adapter", chart="prometheus-adapter",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO},
            version=versions.PROMETHEUS_ADAPTER_CHART_VERSION, namespace=METRICS_NAMESPACE,
            values=adapter_values(), opts=after(in_cluster, prometheus))
        self.autoscaling_metrics = [prometheus, adapter]
        self.prometheus = prometheus
        self.register_outputs({})

    def _alert_publisher(self, args: MonitoringArgs) -> list[pulumi.Resource]:
        """Alertmanager's right to publish to the alert topic (Pod Identity); nothing without a topic."""
        topic = args.settings.alert_topic_arn
        if topic is None:
            pulumi.log.warn("config monitoring.alertTopicArn is not set: alerts fire in Alertmanager only, "
                            "nobody is notified")
            return []
        role = iam.pod_identity_role(
            "alertmanager", parent=self, aliases=self._former_parent_aliases,
            inline_policy=iam.policy_document([
                {"Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": topic}]))
        return [iam.pod_identity_association(
            "alertmanager", role_arn=role.arn, cluster_name=args.cluster_name, namespace=METRICS_NAMESPACE,
            service_account=ALERTMANAGER_SERVICE_ACCOUNT, parent=self, aliases=self._former_parent_aliases)]
