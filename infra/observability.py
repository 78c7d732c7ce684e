"""Container Insights through the amazon-cloudwatch-observability add-on, which also collects
NeuronCore utilisation, device memory and execution errors once the device plugin runs; the log
groups it writes, with the configured retention; and the CloudWatch alarms on what Prometheus
cannot see: itself gone, nodes failing, Karpenter not reading its interruption queue, Neuron
execution errors while nobody scrapes."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import iam, versions
from infra.config import MonitoringSettings, ObservabilitySettings
from infra.monitoring import PROMETHEUS_SERVICE
from infra.naming import METRICS_NAMESPACE
from infra.options import children

ADDON = "amazon-cloudwatch-observability"
AGENT_SERVICE_ACCOUNT = "cloudwatch-agent"
# The groups the add-on writes to, /aws/containerinsights/<cluster>/<kind>: Fluent Bit's application,
# dataplane and host logs (its chart's values.yaml, log_group_name) and the agent's performance log events
# (the Container Insights performance log reference). On AL2023 nodes dataplane and host stay empty.
CONTAINER_INSIGHTS_LOGS = ("application", "dataplane", "host", "performance")
CONTAINER_INSIGHTS = "ContainerInsights"
# Karpenter long-polls its queue and deletes what it handled: a message a minute old is one nobody
# reads, and a Spot interruption gives two minutes' notice.
UNREAD_INTERRUPTION_SECONDS = 60


def container_insights_log_group(cluster_name: str, kind: str) -> str:
    return f"/aws/containerinsights/{cluster_name}/{kind}"


@dataclass(frozen=True)
class Alarm:
    """One CloudWatch alarm on one metric; `missing_data` says what no data at all means."""

    name: str
    description: str
    namespace: str
    metric: str
    dimensions: dict[str, pulumi.Input[str]]
    statistic: str
    comparison: str
    threshold: float
    period_seconds: int
    evaluation_periods: int
    missing_data: str


def alarms(cluster_name: pulumi.Input[str], interruption_queue_name: pulumi.Input[str]) -> list[Alarm]:
    """What must page someone even when Prometheus or the cluster is down: CloudWatch sees it from outside."""
    cluster = {"ClusterName": cluster_name}
    return [
        # ContainerInsights service_number_of_running_pods, dimensions [Service, Namespace, ClusterName]
        # (the CloudWatch agent's Container Insights metric declarations). No data: no running pod behind
        # the Service, or no agent reporting: either way nobody evaluates the alert rules.
        Alarm("prometheus-down",
              f"Prometheus ({METRICS_NAMESPACE}/{PROMETHEUS_SERVICE}) has no running pod: no alert rule is "
              "evaluated and the autoscalers have no metric",
              CONTAINER_INSIGHTS, "service_number_of_running_pods",
              {"Service": PROMETHEUS_SERVICE, "Namespace": METRICS_NAMESPACE, **cluster},
              "Maximum", "LessThanThreshold", 1, 60, 5, "breaching"),
        # ContainerInsights cluster_failed_node_count, dimension [ClusterName] (Container Insights metrics for
        # Amazon EKS: a node is failed while it reports any node condition). The agent publishes it every
        # minute, 0 included: no data means the agent or the cluster is gone.
        Alarm("nodes-failing", "nodes of the cluster report a node condition (NotReady, pressure), or Container "
              "Insights stopped reporting", CONTAINER_INSIGHTS, "cluster_failed_node_count", cluster,
              "Maximum", "GreaterThanThreshold", 0, 300, 3, "breaching"),
        # AWS/SQS ApproximateAgeOfOldestMessage, dimension [QueueName] (Amazon SQS metrics, one-minute
        # periods). No messages, no data: nothing to act on.
        Alarm("karpenter-interruptions-unread",
              f"interruption events wait over {UNREAD_INTERRUPTION_SECONDS} s in Karpenter's queue: Karpenter is "
              "not running, and Spot interruptions and instance retirements reach pods without a drain",
              "AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": interruption_queue_name},
              "Maximum", "GreaterThanThreshold", UNREAD_INTERRUPTION_SECONDS, 60, 3, "notBreaching"),
        # ContainerInsights node_neuron_execution_errors_total, dimension [ClusterName] (the CloudWatch agent's
        # AWS Neuron metric declarations; the sum of the generic, numerical, transient, model, runtime and
        # hardware errors). No Neuron node, no data.
        Alarm("neuron-execution-errors", "NeuronCores of the cluster fail executions in two 5-minute periods in "
              "a row: a device or runtime fault returns 500 to generations", CONTAINER_INSIGHTS,
              "node_neuron_execution_errors_total", cluster,
              "Sum", "GreaterThanThreshold", 0, 300, 2, "notBreaching"),
    ]


@dataclass
class ObservabilityArgs:
    cluster_name: pulumi.Input[str]
    kubernetes_version: str
    region: str
    settings: ObservabilitySettings
    # The alarms notify monitoring.alertTopicArn, Alertmanager's receiver.
    monitoring: MonitoringSettings
    interruption_queue_name: pulumi.Input[str]
    # What the alarms watch, installed: an alarm created before it would page for what is still starting.
    watched: list[pulumi.Resource]


class Observability(pulumi.ComponentResource):
    """Give it what the add-on waits for through `opts`."""

    def __init__(self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Observability", name, None, opts)
        cluster_name = pulumi.Output.from_input(args.cluster_name)
        # Declared before the add-on, so its agents write into groups with a retention that destroy deletes,
        # instead of creating them without one.
        log_groups = [
            aws.cloudwatch.LogGroup(
                f"{name}-{kind}",
                name=cluster_name.apply(lambda cluster, kind=kind: container_insights_log_group(cluster, kind)),
                retention_in_days=args.settings.log_retention_days, opts=pulumi.ResourceOptions(parent=self))
            for kind in CONTAINER_INSIGHTS_LOGS
        ]
        agent_role = iam.pod_identity_role(
            f"{name}-agent", parent=self,
            managed_policies=("CloudWatchAgentServerPolicy",))
        self.addon = aws.eks.Addon(
            name, cluster_name=args.cluster_name, addon_name=ADDON,
            addon_version=versions.KUBERNETES_RELEASES[args.kubernetes_version][ADDON],
            pod_identity_associations=[{"role_arn": agent_role.arn, "service_account": AGENT_SERVICE_ACCOUNT}],
            resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE",
            opts=pulumi.ResourceOptions.merge(children(self, opts), pulumi.ResourceOptions(depends_on=log_groups)))
        actions = self._alarm_actions(args)
        for alarm in alarms(cluster_name, args.interruption_queue_name):
            aws.cloudwatch.MetricAlarm(
                f"{name}-{alarm.name}", alarm_description=alarm.description, namespace=alarm.namespace,
                metric_name=alarm.metric, dimensions=alarm.dimensions, statistic=alarm.statistic,
                comparison_operator=alarm.comparison, threshold=alarm.threshold, period=alarm.period_seconds,
                evaluation_periods=alarm.evaluation_periods, treat_missing_data=alarm.missing_data,
                alarm_actions=actions, ok_actions=actions,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.addon, *args.watched]))
        self.register_outputs({"addon": self.addon.addon_name})

    @staticmethod
    def _alarm_actions(args: ObservabilityArgs) -> list[str]:
        """Alertmanager's SNS topic, which an alarm can notify only in its own region; otherwise the alarms
        show in the CloudWatch console and notify nobody (as Alertmanager does without a topic)."""
        topic = args.monitoring.alert_topic_arn
        if topic is None:
            return []
        if args.monitoring.alert_topic_region != args.region:
            pulumi.log.warn(f"config monitoring.alertTopicArn: {topic} is not in {args.region}, and CloudWatch "
                            "alarms notify topics of their own region only: the alarms notify nobody")
            return []
        return [topic]
