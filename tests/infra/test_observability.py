"""Observability (issue 13, items 3 and 7): the log groups EKS and Container Insights write, created by the
stack with the configured retention before anything writes them; CloudWatch alarms routed to the alert
topic; Prometheus on an encrypted EBS volume of its own. Under the planning mocks: AWS itself (whether
EKS and the add-on really write there, what the alarms see) cannot run here."""

import pytest

from infra import versions
from infra.cluster import EBS_CSI_ADDON, EBS_CSI_SERVICE_ACCOUNT, PERSISTENT_STORAGE_CLASS
from infra.config import LOG_RETENTION_DAYS, ConfigError, load_stack_config
from infra.monitoring import PROMETHEUS_URL
from infra.naming import METRICS_NAMESPACE
from planning.offline import manifest, run_program, stack_file_config, with_overrides

LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
ADDON = "aws:eks/addon:Addon"
RELEASE = "kubernetes:helm.sh/v3:Release"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
OBSERVABILITY = "flux-neuron:observability"
MONITORING = "flux-neuron:monitoring"


def addon(rendering, addon_name):
    (found,) = [r for r in rendering.of_type(ADDON) if r.inputs["addonName"] == addon_name]
    return found


def release(rendering, name):
    return next(r for r in rendering.of_type(RELEASE) if r.inputs["name"] == name)


def log_groups(rendering):
    return {group.inputs["name"]: group for group in rendering.of_type(LOG_GROUP)}


def topic_in(region):
    return f"arn:aws:sns:{region}:123456789012:flux-alerts"


# ---- Log groups ------------------------------------------------------------------------------------


def test_the_stack_owns_every_log_group_eks_and_container_insights_write(rendering):
    cluster = rendering.outputs["clusterName"]
    # prometheus: the metrics agent of the dashboard writes it (infra.dashboard).
    assert set(log_groups(rendering)) == {
        f"/aws/eks/{cluster}/cluster",
        *(f"/aws/containerinsights/{cluster}/{kind}"
          for kind in ("application", "dataplane", "host", "performance", "prometheus"))}
    # Destroy removes them with the stack.
    assert not any(group.retain_on_delete for group in rendering.of_type(LOG_GROUP))


def test_the_groups_exist_before_the_services_that_would_create_them(rendering):
    groups = log_groups(rendering)
    cluster = rendering.outputs["clusterName"]
    assert groups[f"/aws/eks/{cluster}/cluster"].urn in rendering.one("eks:index:Cluster", "cluster").dependencies
    agent = addon(rendering, "amazon-cloudwatch-observability")
    insights = [group.urn for name, group in groups.items()
                if name.startswith("/aws/containerinsights/") and not name.endswith("/prometheus")]
    assert set(insights) <= set(agent.dependencies)
    metrics_agent = rendering.one("kubernetes:cloudwatch.aws.amazon.com/v1alpha1:AmazonCloudWatchAgent",
                                  "flux-metrics-agent")
    assert groups[f"/aws/containerinsights/{cluster}/prometheus"].urn in metrics_agent.dependencies


def test_log_retention_is_a_production_default_and_configurable(rendering):
    assert {group.inputs["retentionInDays"] for group in rendering.of_type(LOG_GROUP)} == {30}
    kept = run_program("dev", {OBSERVABILITY: {"logRetentionDays": 90}})
    assert {group.inputs["retentionInDays"] for group in kept.of_type(LOG_GROUP)} == {90}


@pytest.mark.parametrize("days", [0, 10, 4000, "30"])
def test_a_retention_cloudwatch_refuses_names_the_key_the_value_and_the_allowed_periods(days):
    with pytest.raises(ConfigError) as raised:
        load_stack_config(with_overrides(stack_file_config("dev")[0], {OBSERVABILITY: {"logRetentionDays": days}}))
    key = f"{OBSERVABILITY}.logRetentionDays"
    assert raised.value.key == key
    shown = repr(days) if isinstance(days, str) else str(days)
    assert str(raised.value) == (f"config {key}: {shown} is not allowed: one of CloudWatch Logs' retention periods "
                                 f"in days: {', '.join(map(str, LOG_RETENTION_DAYS))}")


# ---- Alarms ----------------------------------------------------------------------------------------


def alarms(rendering):
    return {alarm.name.removeprefix("observability-"): alarm.inputs for alarm in rendering.of_type(ALARM)}


def test_the_alarms_watch_what_prometheus_cannot_see_of_this_cluster(rendering):
    cluster = rendering.outputs["clusterName"]
    queue = release(rendering, "karpenter").inputs["values"]["settings"]["interruptionQueue"]
    service, namespace = PROMETHEUS_URL.removeprefix("http://").split(".")[:2]
    found = {name: (alarm["namespace"], alarm["metricName"], alarm["dimensions"])
             for name, alarm in alarms(rendering).items()}
    assert found == {
        "prometheus-down": ("ContainerInsights", "service_number_of_running_pods",
                            {"ClusterName": cluster, "Namespace": namespace, "Service": service}),
        "nodes-failing": ("ContainerInsights", "cluster_failed_node_count", {"ClusterName": cluster}),
        "karpenter-interruptions-unread": ("AWS/SQS", "ApproximateAgeOfOldestMessage", {"QueueName": queue}),
        "neuron-execution-errors": ("ContainerInsights", "node_neuron_execution_errors_total",
                                    {"ClusterName": cluster}),
    }
    assert namespace == METRICS_NAMESPACE


def test_an_absent_signal_pages_exactly_where_it_means_something_is_down(rendering):
    """Prometheus's Service without pods, or Container Insights silent: breaching. An empty queue, or no
    Neuron node: nothing to report."""
    missing = {name: alarm["treatMissingData"] for name, alarm in alarms(rendering).items()}
    assert missing == {"prometheus-down": "breaching", "nodes-failing": "breaching",
                       "karpenter-interruptions-unread": "notBreaching", "neuron-execution-errors": "notBreaching"}


def test_an_alarm_starts_once_what_it_watches_is_installed(rendering):
    """A first `up` must not page for a Prometheus, an agent or a Karpenter that is still starting."""
    watched = {addon(rendering, "amazon-cloudwatch-observability").urn, release(rendering, "prometheus").urn,
               release(rendering, "karpenter").urn}
    for alarm in rendering.of_type(ALARM):
        assert watched <= set(alarm.dependencies), alarm.name


def test_without_a_topic_the_alarms_notify_nobody(rendering):
    for name, alarm in alarms(rendering).items():
        assert not alarm.get("alarmActions") and not alarm.get("okActions"), name


def test_the_alarms_notify_the_alert_topic_of_the_stack_region(stack, stack_config):
    topic = topic_in(stack_config.region)
    for name, alarm in alarms(run_program(stack, {MONITORING: {"alertTopicArn": topic}})).items():
        assert alarm["alarmActions"] == alarm["okActions"] == [topic], name


def test_a_topic_of_another_region_leaves_the_alarms_silent_and_says_so(caplog):
    topic = topic_in("eu-west-1")
    rendering = run_program("dev", {MONITORING: {"alertTopicArn": topic}})
    for name, alarm in alarms(rendering).items():
        assert not alarm.get("alarmActions"), name
    assert f"config monitoring.alertTopicArn: {topic} is not in us-west-2" in caplog.text


# ---- Persistent Prometheus ---------------------------------------------------------------------------


def test_the_ebs_csi_driver_is_pinned_and_uses_pod_identity_with_the_scoped_managed_policy(rendering, stack_config):
    driver = addon(rendering, EBS_CSI_ADDON)
    assert driver.inputs["addonVersion"] == versions.KUBERNETES_RELEASES[stack_config.kubernetes_version][EBS_CSI_ADDON]
    (association,) = driver.inputs["podIdentityAssociations"]
    assert association["serviceAccount"] == EBS_CSI_SERVICE_ACCOUNT
    role = next(r for r in rendering.of_type("aws:iam/role:Role") if r.outputs["arn"] == association["roleArn"])
    attached = [a.inputs["policyArn"] for a in rendering.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
                if a.inputs["role"] == role.outputs["name"]]
    assert attached == ["arn:aws:iam::aws:policy/AmazonEBSCSIDriverPolicyV2"]
    agent = addon(rendering, "eks-pod-identity-agent")
    assert agent.urn in driver.dependencies


def test_prometheus_keeps_its_samples_on_an_encrypted_gp3_volume_of_its_zone(rendering, stack_config):
    storage_class = rendering.one(STORAGE_CLASS, PERSISTENT_STORAGE_CLASS)
    spec = manifest(storage_class)
    assert spec["provisioner"] == "ebs.csi.aws.com"
    assert spec["parameters"] == {"type": "gp3", "encrypted": "true"}
    assert spec["volumeBindingMode"] == "WaitForFirstConsumer" and spec["reclaimPolicy"] == "Delete"
    assert addon(rendering, EBS_CSI_ADDON).urn in storage_class.dependencies
    prometheus = release(rendering, "prometheus")
    server = prometheus.inputs["values"]["server"]
    assert server["persistentVolume"] == {"enabled": True, "size": f"{stack_config.monitoring.storage_gi}Gi",
                                          "storageClass": spec["metadata"]["name"], "accessModes": ["ReadWriteOnce"]}
    assert "emptyDir" not in server
    # One pod, stopped before the next attaches the volume.
    assert server["replicaCount"] == 1 and server["strategy"] == {"type": "Recreate"}
    assert storage_class.urn in prometheus.dependencies
