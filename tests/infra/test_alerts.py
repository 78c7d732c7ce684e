"""Alerts (issue 13, item 3): the rules the Prometheus release carries, checked and unit-tested with the
real promtool against synthetic series, and the Alertmanager config checked with the real amtool."""

import json
import re
import subprocess

import pytest
import yaml
from prometheus_client import generate_latest

from infra.config import ConfigError, load_stack_config
from infra.naming import ACTIVATOR, COMPILE, METRICS_NAMESPACE, WORKLOAD_NAMESPACE, workload_name
from planning.offline import manifest, run_program, stack_file_config, with_overrides
from infra.monitoring import (
    ALERTMANAGER_SERVICE_ACCOUNT, COMPILE_STUCK_SHARE, KUBE_STATE_METRICS_COLLECTORS, LATENCY_TIMEOUT_SHARE,
    QUEUE_WAIT_TIMEOUT_SHARE,
)
from common import endpoints
from serving.health import HealthPolicy, RuntimeHealth
from serving.metrics import Metrics

RELEASE = "kubernetes:helm.sh/v3:Release"
MONITORING = "flux-neuron:monitoring"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:flux-alerts"
# Which kube-state-metrics collector exports a metric family.
COLLECTOR_OF = {"kube_job_": "jobs", "kube_pod_": "pods", "kube_deployment_": "deployments",
                "kube_horizontalpodautoscaler_": "horizontalpodautoscalers"}


def prometheus(rendering):
    return next(r for r in rendering.of_type(RELEASE) if r.inputs["name"] == "prometheus")


def rules(rendering):
    (group,) = prometheus(rendering).inputs["values"]["serverFiles"]["alerting_rules.yml"]["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def test_the_rules_cover_what_must_page_someone(rendering):
    assert set(rules(rendering)) == {
        "CompileJobFailed", "CompileJobStuck", "PodUnschedulable", "AutoscalerAtMax", "GenerationErrors",
        "GenerationsRejected", "GenerationLatencyHigh", "QueueWaitHigh", "ReadinessFlapping", "NeuronRuntimeErrors",
        "PodUnreadyOnRuntimeErrors", "ActivatorDown"}


def test_promtool_accepts_the_rule_file(rendering, tmp_path):
    values = prometheus(rendering).inputs["values"]
    path = tmp_path / "alerting_rules.yml"
    path.write_text(yaml.safe_dump(values["serverFiles"]["alerting_rules.yml"]))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_read_only_series_that_are_exported_and_scraped(rendering):
    metrics = Metrics()
    metrics.requests.labels(endpoints.GENERATE, "200").inc()
    metrics.latency.labels(endpoints.GENERATE, "2xx").observe(1)
    metrics.queue_wait_seconds.observe(1)
    RuntimeHealth(HealthPolicy(), metrics)  # what every server exports from its start
    exported = set(re.findall(r"^(\w+)[{ ]", generate_latest(metrics.registry).decode(), re.M))
    values = prometheus(rendering).inputs["values"]
    collectors = values["kube-state-metrics"]["collectors"]
    assert values["kube-state-metrics"]["enabled"] is True and collectors == KUBE_STATE_METRICS_COLLECTORS
    jobs = {job["job_name"]: job for job in values["serverFiles"]["prometheus.yml"]["scrape_configs"]}
    (target,) = jobs["kube-state-metrics"]["static_configs"][0]["targets"]
    assert target == f"prometheus-kube-state-metrics.{METRICS_NAMESPACE}.svc:8080"
    relabelled = {rule.get("target_label") for rule in jobs["flux-serving"]["relabel_configs"]}
    for name, rule in rules(rendering).items():
        for metric in re.findall(r"\b(flux_\w+|kube_\w+)\{", rule["expr"]):
            if metric.startswith("flux_"):
                assert metric in exported, (name, metric)
            else:
                assert next(c for prefix, c in COLLECTOR_OF.items() if metric.startswith(prefix)) in collectors
        for label in re.findall(r"by \(([\w, ]+)\)", rule["expr"]):
            assert set(label.replace(" ", "").split(",")) - {"le"} <= relabelled, (name, label)


def test_the_compile_rules_select_every_compile_job(rendering):
    selector = re.search(r'job_name=~"([^"]+)"', rules(rendering)["CompileJobFailed"]["expr"])[1]
    jobs = [manifest(r)["metadata"]["name"] for r in rendering.of_type("kubernetes:batch/v1:Job")]
    assert jobs and all(re.fullmatch(selector, job) for job in jobs)
    assert not re.fullmatch(selector, workload_name("serve", "1024x576"))


def test_thresholds_follow_the_stack_config(rendering, stack_config):
    found = rules(rendering)
    stuck = int(stack_config.compile.timeout_minutes * 60 * COMPILE_STUCK_SHARE)
    assert f") > {stuck} and" in found["CompileJobStuck"]["expr"]
    slow = stack_config.serving.request_timeout_seconds * LATENCY_TIMEOUT_SHARE
    assert found["GenerationLatencyHigh"]["expr"].endswith(f"> {slow:g}")
    waiting = stack_config.serving.request_timeout_seconds * QUEUE_WAIT_TIMEOUT_SHARE
    assert found["QueueWaitHigh"]["expr"].endswith(f"> {waiting:g}")


def _series(name, labels, values):
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_the_rules_fire_on_what_they_name_and_only_then(rendering, stack_config, tmp_path):
    """promtool's rule unit tests: synthetic series in, the alerts that fire at a given time out.
    Annotations are left out of the copy under test (they only describe)."""
    groups = prometheus(rendering).inputs["values"]["serverFiles"]["alerting_rules.yml"]["groups"]
    bare = [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
            for group in groups]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": bare}))
    ns = {"namespace": WORKLOAD_NAMESPACE}
    compile_job, other_job = workload_name(COMPILE, "1024x576"), "backup"
    serve, quiet = workload_name("serve", "1024x576"), workload_name("serve", "256x144")
    stuck_minutes = int(stack_config.compile.timeout_minutes * COMPILE_STUCK_SHARE) + 2
    long_wait = str(stack_config.serving.request_timeout_seconds * 10)

    def requests(workload, route, status, per_minute):
        return _series("flux_http_requests_total", {**ns, "workload": workload, "route": route, "status": status},
                       f"0+{per_minute}x40")

    def bucket(workload, le, per_minute):
        return _series("flux_http_request_duration_seconds_bucket",
                       {**ns, "workload": workload, "route": endpoints.GENERATE, "le": le}, f"0+{per_minute}x40")

    def waited(workload, le, per_minute):
        return _series(f"{endpoints.QUEUE_WAIT_METRIC}_bucket", {**ns, "workload": workload, "le": le},
                       f"0+{per_minute}x40")

    def alert(name, severity, **labels):
        return {"exp_labels": {"alertname": name, "severity": severity, **labels}}

    tests = [
        {"interval": "1m", "input_series": [
            _series("kube_job_failed", {**ns, "job_name": compile_job, "condition": "true"}, "0 0 1 1 1"),
            _series("kube_job_failed", {**ns, "job_name": other_job, "condition": "true"}, "1 1 1 1 1"),
            # p1 could not be scheduled; gated (a serving pod waiting for its artifacts) is not scheduled either,
            # but the scheduler has not tried: that is no alert.
            _series("kube_pod_status_unschedulable", {**ns, "pod": "p1"}, "1+0x20"),
            _series("kube_pod_status_scheduled", {**ns, "pod": "p1", "condition": "false"}, "1+0x20"),
            _series("kube_pod_status_unschedulable", {**ns, "pod": "gated"}, "0+0x20"),
            _series("kube_pod_status_scheduled", {**ns, "pod": "gated", "condition": "false"}, "1+0x20"),
            _series("kube_deployment_status_replicas_available", {**ns, "deployment": ACTIVATOR}, "1 1 0+0x20"),
            _series("kube_horizontalpodautoscaler_status_current_replicas",
                    {**ns, "horizontalpodautoscaler": serve}, "2+0x20"),
            _series("kube_horizontalpodautoscaler_spec_max_replicas", {**ns, "horizontalpodautoscaler": serve},
                    "2+0x20"),
            _series("kube_horizontalpodautoscaler_status_current_replicas",
                    {**ns, "horizontalpodautoscaler": quiet}, "1+0x20"),
            _series("kube_horizontalpodautoscaler_spec_max_replicas", {**ns, "horizontalpodautoscaler": quiet},
                    "2+0x20"),
            _series("kube_pod_status_ready", {**ns, "pod": "flapping", "condition": "true"}, "1 0 1 0 1 0 1 0 1 0"),
            _series("kube_pod_status_ready", {**ns, "pod": "steady", "condition": "true"}, "1+0x10"),
        ], "alert_rule_test": [
            {"eval_time": "1m", "alertname": "CompileJobFailed", "exp_alerts": []},
            {"eval_time": "4m", "alertname": "CompileJobFailed",
             "exp_alerts": [alert("CompileJobFailed", "critical", job_name=compile_job, condition="true", **ns)]},
            {"eval_time": "10m", "alertname": "PodUnschedulable", "exp_alerts": []},
            {"eval_time": "16m", "alertname": "PodUnschedulable",
             "exp_alerts": [alert("PodUnschedulable", "warning", pod="p1", **ns)]},
            {"eval_time": "10m", "alertname": "ActivatorDown", "exp_alerts": []},
            {"eval_time": "13m", "alertname": "ActivatorDown",
             "exp_alerts": [alert("ActivatorDown", "critical", deployment=ACTIVATOR, **ns)]},
            {"eval_time": "16m", "alertname": "AutoscalerAtMax",
             "exp_alerts": [alert("AutoscalerAtMax", "warning", horizontalpodautoscaler=serve, **ns)]},
            {"eval_time": "9m", "alertname": "ReadinessFlapping",
             "exp_alerts": [alert("ReadinessFlapping", "warning", pod="flapping", condition="true", **ns)]},
        ]},
        {"interval": "1m", "input_series": [
            # 10% of the big shape's generations fail and 20% are refused; the other shape answers 503
            # on /readyz only (a pod warming up), which is no generation error.
            requests(serve, endpoints.GENERATE, "200", 7), requests(serve, endpoints.GENERATE, "500", 1),
            requests(serve, endpoints.OPENAI_IMAGES, "429", 2),
            requests(quiet, endpoints.GENERATE, "200", 10), requests(quiet, endpoints.READYZ, "503", 50),
            # Every generation of the big shape takes 10-160 s, of the other under 10 s.
            bucket(serve, "10", 0), bucket(serve, "160", 10), bucket(serve, "+Inf", 10),
            bucket(quiet, "10", 10), bucket(quiet, "160", 10), bucket(quiet, "+Inf", 10),
            # The big shape's requests wait longer than the timeout for the pipeline, the other's under 1 s.
            waited(serve, "1", 0), waited(serve, long_wait, 10), waited(serve, "+Inf", 10),
            waited(quiet, "1", 10), waited(quiet, long_wait, 10), waited(quiet, "+Inf", 10),
        ], "alert_rule_test": [
            {"eval_time": "20m", "alertname": "GenerationErrors",
             "exp_alerts": [alert("GenerationErrors", "critical", workload=serve)]},
            {"eval_time": "20m", "alertname": "GenerationsRejected",
             "exp_alerts": [alert("GenerationsRejected", "warning", workload=serve)]},
            {"eval_time": "30m", "alertname": "GenerationLatencyHigh",
             "exp_alerts": [alert("GenerationLatencyHigh", "warning", workload=serve)]},
            {"eval_time": "30m", "alertname": "QueueWaitHigh",
             "exp_alerts": [alert("QueueWaitHigh", "warning", workload=serve)]},
        ]},
        {"interval": "1m", "input_series": [
            # The big shape's device stays broken: a failed self-test every 30 s. The other had one burst
            # of 3 errors (then recovered), which is no page.
            _series(f"{endpoints.RUNTIME_ERRORS_METRIC}_total",
                    {**ns, "workload": serve, "pod": "p1", "during": "self_test"}, "0+2x30"),
            _series(f"{endpoints.RUNTIME_ERRORS_METRIC}_total",
                    {**ns, "workload": quiet, "pod": "p2", "during": "generation"}, "0 3+0x30"),
            _series(endpoints.UNREADY_ON_ERRORS_METRIC, {**ns, "workload": serve, "pod": "p1"}, "1+0x30"),
            _series(endpoints.UNREADY_ON_ERRORS_METRIC, {**ns, "workload": quiet, "pod": "p2"}, "0 1 1 0+0x30"),
        ], "alert_rule_test": [
            {"eval_time": "5m", "alertname": "NeuronRuntimeErrors", "exp_alerts": []},
            {"eval_time": "20m", "alertname": "NeuronRuntimeErrors",
             "exp_alerts": [alert("NeuronRuntimeErrors", "critical", workload=serve)]},
            {"eval_time": "3m", "alertname": "PodUnreadyOnRuntimeErrors", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "PodUnreadyOnRuntimeErrors",
             "exp_alerts": [alert("PodUnreadyOnRuntimeErrors", "warning", workload=serve, pod="p1")]},
        ]},
        {"interval": "10m", "input_series": [
            _series("kube_job_status_start_time", {**ns, "job_name": compile_job}, f"0+0x{stuck_minutes // 10 + 1}"),
            _series("kube_job_status_active", {**ns, "job_name": compile_job}, f"1+0x{stuck_minutes // 10 + 1}"),
            _series("kube_job_status_start_time", {**ns, "job_name": workload_name(COMPILE, "256x144")},
                    f"0+0x{stuck_minutes // 10 + 1}"),
            _series("kube_job_status_active", {**ns, "job_name": workload_name(COMPILE, "256x144")},
                    f"0+0x{stuck_minutes // 10 + 1}"),
        ], "alert_rule_test": [
            {"eval_time": f"{stuck_minutes - 10}m", "alertname": "CompileJobStuck", "exp_alerts": []},
            {"eval_time": f"{stuck_minutes // 10 * 10 + 10}m", "alertname": "CompileJobStuck",
             "exp_alerts": [alert("CompileJobStuck", "warning", job_name=compile_job, **ns)]},
        ]},
    ]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"], "tests": tests}))
    result = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def alertmanager_config(rendering):
    return prometheus(rendering).inputs["values"]["alertmanager"]["config"]


def test_without_a_topic_alerts_stay_in_alertmanager(rendering, tmp_path):
    config = alertmanager_config(rendering)
    (receiver,) = config["receivers"]
    assert receiver == {"name": config["route"]["receiver"]}
    assert not [r for r in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                if r.inputs["serviceAccount"] == ALERTMANAGER_SERVICE_ACCOUNT]


def test_with_a_topic_every_alert_is_published_there_by_alertmanager_alone(tmp_path):
    rendering = run_program("dev", {MONITORING: {"alertTopicArn": TOPIC}})
    config = alertmanager_config(rendering)
    (path := tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (receiver,) = config["receivers"]
    assert config["route"]["receiver"] == receiver["name"]
    assert receiver["sns_configs"] == [{"topic_arn": TOPIC, "send_resolved": True, "sigv4": {"region": "eu-west-1"}}]
    values = prometheus(rendering).inputs["values"]["alertmanager"]
    (association,) = [r for r in rendering.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
                      if r.inputs["serviceAccount"] == values["serviceAccount"]["name"]]
    assert association.inputs["namespace"] == prometheus(rendering).inputs["namespace"]
    assert association.urn in prometheus(rendering).dependencies
    role = next(r for r in rendering.of_type("aws:iam/role:Role") if r.outputs["arn"] == association.inputs["roleArn"])
    policy = next(r for r in rendering.of_type("aws:iam/rolePolicy:RolePolicy") if r.inputs["role"] == role.id)
    assert json.loads(policy.inputs["policy"])["Statement"] == [
        {"Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": TOPIC}]


def test_prometheus_keeps_what_the_config_sizes(tmp_path):
    server = prometheus(run_program("dev", {MONITORING: {"retentionDays": 14, "storageGi": 50}})).inputs["values"]
    server = server["server"]
    assert server["retention"] == "14d"
    assert server["persistentVolume"]["size"] == "50Gi"
    assert int(server["retentionSize"].removesuffix("MB")) < 50 * 1024


BAD_MONITORING = {
    "topic-not-an-arn": ({"alertTopicArn": "flux-alerts"}, "flux-neuron:monitoring.alertTopicArn", "'flux-alerts'",
                         "an SNS topic ARN"),
    "storage-too-large": ({"storageGi": 201}, "flux-neuron:monitoring.storageGi", "201",
                          "an integer from 1 to 200"),
    "no-retention": ({"retentionDays": 0}, "flux-neuron:monitoring.retentionDays", "0", "an integer from 1 to 30"),
}


@pytest.mark.parametrize(("monitoring", "key", "shown", "allowed"), BAD_MONITORING.values(), ids=BAD_MONITORING)
def test_a_bad_monitoring_config_names_the_key_the_value_and_what_is_allowed(monitoring, key, shown, allowed):
    with pytest.raises(ConfigError) as raised:
        load_stack_config(with_overrides(stack_file_config("dev")[0], {MONITORING: monitoring}))
    assert raised.value.key == key
    assert str(raised.value).startswith(f"config {key}: {shown} is not allowed: {allowed}")
