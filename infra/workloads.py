"""What runs on the Neuron nodes, per configured shape: a compile Job that publishes the shape's
graphs to the cache, then a Deployment serving them with its Service, PodDisruptionBudget and
HorizontalPodAutoscaler. Shared by all shapes: the HF token Secret, one ServiceAccount per role,
and the metric pipeline (Prometheus and its adapter) the autoscalers read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, iam, sizing, versions
from infra.cold_start import ARTIFACT_GB, scale_up_period_seconds, startup_probe_seconds
from infra.config import NeuronPool, StackConfig
from infra.naming import (
    COMPILE, COMPILE_SERVICE_ACCOUNT, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, METRICS_NAMESPACE,
    NEURON_DEVICE_RESOURCE, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY, NODEPOOL_LABEL, SERVE, SERVE_SERVICE_ACCOUNT,
    SYSTEM_NODE_LABEL, neuron_nodepool, workload_labels, workload_name,
)
from common.image import CONTAINER_UID
from common.artifacts import EXIT_NOT_PUBLISHED, EXIT_USAGE, READERS_ENV, readers_for_cpus
from common.shapes import Shape
from common import endpoints

GRAPHS_MOUNT = "/graphs"
SCRATCH_MOUNT = "/scratch"
# The FLUX.1-dev download (~34 GB), the traced graphs and the compiler's work files.
SCRATCH_SIZE = "200Gi"
# load_generator verifies each artifact file while copying it into TMPDIR, then loads from there.
# That copy is the graphs' one cache on the node (the read-only graph volume has none, see
# docs/cold-start.md): memory-backed, so writing it costs no disk bandwidth and no node disk that
# Karpenter does not see; it counts against the pod's memory limit. One artifact plus a quarter.
LOCAL_ARTIFACT_MOUNT = "/var/lib/flux-neuron"
LOCAL_ARTIFACT_GIB = math.ceil(ARTIFACT_GB * 1e9 / 2**30 * 1.25)
LOCAL_ARTIFACT_SIZE = f"{LOCAL_ARTIFACT_GIB}Gi"
# The serving container's own writes on disk: logs and the libraries' caches under HOME.
SERVING_EPHEMERAL_STORAGE = "10Gi"
# A pod gets this part of its devices' share of the host's CPU (and a serving pod of its memory);
# the rest is for the kubelet's reservations and the node daemons (device plugin, Mountpoint,
# CloudWatch agent, CNI). A compile pod's memory comes from the sizing model instead.
HOST_SHARE = 0.7
# Compiling starts only once Karpenter has a node up and the multi-GB image is pulled.
COMPILE_START_MINUTES = 30
# How long a finished Job stays for its logs.
FINISHED_JOB_TTL_SECONDS = 7 * 24 * 3600
PROBE_PERIOD_SECONDS = 10
# How often the serving pods' wait loop asks whether the artifact is published.
RESOLVE_INTERVAL_SECONDS = 30
# `sh -c WAIT_SCRIPT wait-for-graphs LIMIT_SECONDS COMPILE_JOB RESOLVE_COMMAND...`: retries the resolve
# command while it exits EXIT_NOT_PUBLISHED, for at most LIMIT_SECONDS; any other failure stops the pod.
# Giving up fails the init container (the pod shows Init:Error, then retries with back-off).
WAIT_SCRIPT = (
    'limit=$1; job=$2; shift 2; deadline=$(($(date +%s) + limit)); '
    'while :; do "$@"; status=$?; [ "$status" -eq 0 ] && exit 0; '
    f'[ "$status" -eq {EXIT_NOT_PUBLISHED} ] || exit "$status"; '
    '[ "$(date +%s)" -lt "$deadline" ] || { echo "wait-for-graphs: gave up after ${limit}s: the artifact is still '
    'not published, and $job can no longer publish it: see kubectl describe job $job" >&2; '
    f'exit {EXIT_NOT_PUBLISHED}; }}; sleep {RESOLVE_INTERVAL_SECONDS}; done')
# Disruptions no longer spend retries and bad options never retry (the podFailurePolicy below), so what
# is left is a failure of the compile itself: one retry covers a transient one (a download or S3 error);
# a second would most likely fail again, after hours on a trn1.
COMPILE_RETRIES = 1
# The ALB stops sending to a terminating pod only after it deregisters it.
DEREGISTRATION_SECONDS = 15

# serving/metrics.py exports these per server; the adapter serves their sum per pod to the HPA.
QUEUE_DEPTH_METRIC = endpoints.QUEUE_DEPTH_METRIC
IN_FLIGHT_METRIC = endpoints.IN_FLIGHT_METRIC
AUTOSCALING_METRIC = "flux_requests_outstanding"
# One generation at a time per pod: one outstanding request per pod is a full pod with no queue.
OUTSTANDING_PER_POD = 1
PROMETHEUS_RELEASE = "prometheus"
PROMETHEUS_URL = f"http://{PROMETHEUS_RELEASE}-server.{METRICS_NAMESPACE}.svc"
SCRAPE_INTERVAL = "15s"
# Alerting: kube-state-metrics reports on Jobs, pods and autoscalers; the alert rules read it and the
# servers' own metrics; Alertmanager sends what fires to the configured SNS topic.
KUBE_STATE_METRICS_COLLECTORS = ["jobs", "pods", "horizontalpodautoscalers"]
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
# Kept below the data volume's size, so Prometheus deletes old blocks before the kubelet evicts it.
RETENTION_SHARE_OF_STORAGE = 0.8


@dataclass(frozen=True)
class HostShare:
    cpu: int
    memory_gib: int

    def resources(self) -> dict[str, str]:
        return {"cpu": str(self.cpu), "memory": f"{self.memory_gib}Gi"}


def host_share(pool: NeuronPool, devices: int) -> HostShare:
    """CPU and memory for a pod with `devices` on `pool`: its share of the leanest instance type it fits on."""
    fitting = [catalog.instance(name) for name in pool.instance_types if catalog.instance(name).devices >= devices]
    cpu = min(instance.vcpus / instance.devices for instance in fitting)
    memory = min(instance.memory_gib / instance.devices for instance in fitting)
    return HostShare(math.floor(cpu * devices * HOST_SHARE), math.floor(memory * devices * HOST_SHARE))


def startup_failure_threshold(family: str, shape: Shape) -> int:
    """Startup probes before the kubelet restarts a server: the cold-start budget's in-container part."""
    return math.ceil(startup_probe_seconds(family, shape) / PROBE_PERIOD_SECONDS)


def rollout_minutes(family: str, shape: Shape) -> int:
    """A rollout waits for a node and the image pull (as a compile does), then the startup window."""
    return COMPILE_START_MINUTES + math.ceil(startup_probe_seconds(family, shape) / 60)


def artifact_key_args(config: StackConfig, shape: Shape) -> list[str]:
    """The options that make up the artifact key, the same for compiling, waiting and serving.

    `--target` is where the graphs run (the serving pool), whichever pool compiles them.
    """
    return ["--shape", str(shape), "--model", config.model.id, "--revision", config.model.revision,
            "--backend", "neuron", "--target", config.serving.pool,
            "--tp-degree", str(config.compile.tensor_parallel), "--dtype", config.dtype,
            "--max-text-length", str(config.model.max_text_length)]


def _neuron_pod_placement(family: str, scheduler_name: str) -> dict:
    return {
        # Only the Neuron scheduler extension places multi-device requests on contiguous devices.
        "schedulerName": scheduler_name,
        "nodeSelector": {NODEPOOL_LABEL: neuron_nodepool(family)},
        "tolerations": [{"key": NEURON_TAINT_KEY, "operator": "Exists", "effect": NEURON_TAINT_EFFECT}],
    }


def _pod_security() -> dict:
    # The uid Mountpoint presents the graph files as theirs.
    return {"runAsNonRoot": True, "runAsUser": CONTAINER_UID, "runAsGroup": CONTAINER_UID,
            "fsGroup": CONTAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}}


# The root filesystem is read-only: every directory anything writes to is an emptyDir below.
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                      "readOnlyRootFilesystem": True}
TMP_MOUNT = "/tmp"
# Small files only (library caches, lock files): the large ones go to sized volumes (scratch, TMPDIR).
TMP_SIZE = "1Gi"
TMP_VOLUME = {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}
TMP_VOLUME_MOUNT = {"name": "tmp", "mountPath": TMP_MOUNT}
# The image's user may differ from the uid above: libraries need a writable home for their caches.
HOME_ENV = {"name": "HOME", "value": TMP_MOUNT}
# The HF token, a file of the Secret (never an environment variable): huggingface_hub (0.36:
# constants.HF_TOKEN_PATH, utils/_auth.py) reads the file this variable names. Owner-read only;
# the kubelet gives the pod's fsGroup read access too.
HF_TOKEN_PATH_ENV = "HF_TOKEN_PATH"
HF_TOKEN_MOUNT = "/var/run/secrets/flux-neuron/hf-token"
HF_TOKEN_FILE_MODE = 0o400
HF_TOKEN_VOLUME = {"name": "hf-token", "secret": {
    "secretName": HF_TOKEN_SECRET, "defaultMode": HF_TOKEN_FILE_MODE,
    "items": [{"key": HF_TOKEN_SECRET_KEY, "path": HF_TOKEN_SECRET_KEY}]}}


def shm_gib(memory_gib: int) -> int:
    # Tensor-parallel ranks exchange tensors through /dev/shm; it counts against the memory limit.
    return max(1, memory_gib // 4)


def _shm_volume(memory_gib: int) -> dict:
    return {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib(memory_gib)}Gi"}}


def _claim_volume(name: str, claim: str, read_only: bool) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def compile_share(config: StackConfig) -> HostShare:
    """The compile pod's CPU share, and the memory its tensor-parallel workers need (infra.sizing):
    workers at once x (the whole transformer each builds + neuronx-cc), e.g. dev:
    8 x (22.2 GiB bfloat16 transformer + 24 GiB) = 370 GiB of trn1.32xlarge's 512 GiB."""
    return HostShare(host_share(config.compile_pool, config.compile.devices).cpu, config.compile_plan.memory_gib)


def _neuron_resources(devices: int, share: HostShare, ephemeral_storage: str) -> dict:
    # Requests equal limits: Guaranteed QoS, so the kubelet never evicts a pod holding accelerators.
    # Local disk is only requested, so Karpenter picks nodes with room for it.
    # Whole devices (aws.amazon.com/neuron), not aws.amazon.com/neuroncore: the TP degrees that fit
    # FLUX.1-dev fill whole devices on trn1/inf2 (2 cores each), so no core idles (on trn2, 4
    # logical cores per device, TP 2 would idle 2: capacity.md shows idle cores); the scheduler
    # extension's placement rules (trn1: 1, 4, 8 or 16 devices; inf2: contiguous) are stated in
    # devices; Karpenter sizes nodes by the devices EC2 reports per type; and the NodePool `limits`
    # (infra/karpenter.py) count the same resource. The container sees only the granted devices'
    # cores, and the TP ranks take them in order.
    limits = {NEURON_DEVICE_RESOURCE: str(devices), **share.resources()}
    return {"requests": {**limits, "ephemeral-storage": ephemeral_storage}, "limits": limits}


def compile_job_spec(config: StackConfig, shape: Shape, image: pulumi.Input[str], claim: pulumi.Input[str],
                     scheduler_name: str) -> dict:
    pool = config.compile_pool
    share = compile_share(config)
    resources = _neuron_resources(config.compile.devices, share, ephemeral_storage=SCRATCH_SIZE)
    labels = workload_labels(COMPILE, shape)
    container = {
        "name": COMPILE,
        "image": image,
        # The image's entrypoint serves; the DLC's own would never exit after a command.
        "command": ["python", "-m", "model.compile", *artifact_key_args(config, shape),
                    "--out", GRAPHS_MOUNT, "--scratch", f"{SCRATCH_MOUNT}/work",
                    "--max-parallel-compilations", str(config.compile_plan.concurrency)],
        "env": [
            {"name": HF_TOKEN_PATH_ENV, "value": f"{HF_TOKEN_MOUNT}/{HF_TOKEN_SECRET_KEY}"},
            {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
            # Temporary files of the compiler and libraries go to scratch, not the small /tmp.
            {"name": "TMPDIR", "value": SCRATCH_MOUNT},
            HOME_ENV,
        ],
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT},
                         {"name": "scratch", "mountPath": SCRATCH_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         TMP_VOLUME_MOUNT,
                         {"name": HF_TOKEN_VOLUME["name"], "mountPath": HF_TOKEN_MOUNT, "readOnly": True}],
    }
    return {
        "backoffLimit": COMPILE_RETRIES,
        "podFailurePolicy": {"rules": [
            # Evicted, preempted, or its node gone (Spot, expiry, repair): not the compile's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            # Bad options fail the same way every time: fail now, not after another node start.
            {"action": "FailJob",
             "onExitCodes": {"containerName": COMPILE, "operator": "In", "values": [EXIT_USAGE]}},
        ]},
        # A retry starts only once the failed pod is gone, so two never hold the pool's devices at once.
        "podReplacementPolicy": "Failed",
        "activeDeadlineSeconds": config.compile.timeout_minutes * 60,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": {
            "metadata": {"labels": labels,
                         # Karpenter must not consolidate a node away under an hours-long compile.
                         "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
            "spec": {
                **_neuron_pod_placement(pool.family, scheduler_name),
                "restartPolicy": "Never",
                "serviceAccountName": COMPILE_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [_claim_volume("graphs", claim, read_only=False),
                            {"name": "scratch", "emptyDir": {"sizeLimit": SCRATCH_SIZE}},
                            _shm_volume(share.memory_gib), TMP_VOLUME, HF_TOKEN_VOLUME],
            },
        },
    }


def wait_for_graphs_limit_seconds(config: StackConfig) -> int:
    """Past its node start and its deadline, the shape's compile Job cannot publish the artifact any more."""
    return (COMPILE_START_MINUTES + config.compile.timeout_minutes) * 60


def serving_share(config: StackConfig, host: HostShare) -> HostShare:
    """A serving pod's CPU is its devices' share of the host (`host`); its memory that share or, when
    more, what it holds while it loads (sizing.serving_memory_gib): the verified copy of its artifact
    in memory, the graphs loaded from it, /dev/shm and the process."""
    needed = sizing.serving_memory_gib(config.dtype, LOCAL_ARTIFACT_GIB, shm_gib(host.memory_gib))
    return HostShare(host.cpu, max(host.memory_gib, needed))


def serving_deployment_spec(config: StackConfig, shape: Shape, image: pulumi.Input[str],
                            read_only_claim: pulumi.Input[str], read_write_claim: pulumi.Input[str],
                            scheduler_name: str) -> dict:
    pool = config.serving_pool
    share = host_share(pool, config.serving.devices)
    labels = workload_labels(SERVE, shape)
    key_args = artifact_key_args(config, shape)
    http_get = {"port": "http", "path": endpoints.READYZ}
    # Waits through the read-write volume, mounted read-only: the serving volume caches metadata
    # forever, so an early lookup there could remember "no manifest" after it is published.
    wait_for_graphs = {
        "name": "wait-for-graphs",
        "image": image,
        "command": ["sh", "-c", WAIT_SCRIPT, "wait-for-graphs", str(wait_for_graphs_limit_seconds(config)),
                    workload_name(COMPILE, shape),
                    "python", "-m", "model.compile", "--resolve", *key_args, "--out", GRAPHS_MOUNT],
        "env": [HOME_ENV],
        # Equal requests and limits here too, or the pod loses its Guaranteed QoS.
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs-published", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         TMP_VOLUME_MOUNT],
    }
    server = {
        "name": SERVE,
        "image": image,
        "command": ["python", "-m", "serving", "--host", "0.0.0.0", "--port", str(endpoints.DEFAULT_PORT),
                    "--graphs-root", GRAPHS_MOUNT, *key_args,
                    "--queue-size", str(config.serving.queue_size),
                    "--request-timeout", str(config.serving.request_timeout_seconds)],
        "env": [HOME_ENV, {"name": "TMPDIR", "value": LOCAL_ARTIFACT_MOUNT},
                {"name": READERS_ENV, "value": str(readers_for_cpus(share.cpu))}],
        "ports": [{"name": "http", "containerPort": endpoints.DEFAULT_PORT, "protocol": "TCP"}],
        # Startup: graphs loaded and warmed; until then liveness and readiness wait.
        "startupProbe": {"httpGet": http_get, "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5,
                         "failureThreshold": startup_failure_threshold(pool.family, shape)},
        "readinessProbe": {"httpGet": http_get, "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"port": "http", "path": endpoints.HEALTHZ}, "periodSeconds": 20,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": DEREGISTRATION_SECONDS}}},
        "resources": _neuron_resources(config.serving.devices, serving_share(config, share),
                                       ephemeral_storage=SERVING_EPHEMERAL_STORAGE),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         {"name": "local-artifact", "mountPath": LOCAL_ARTIFACT_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         TMP_VOLUME_MOUNT],
    }
    spread = [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": labels}}
              for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")]
    return {
        # No `replicas`: the HPA owns the count (from serving.replicas up), a re-apply must not reset it.
        "selector": {"matchLabels": labels},
        # A new pod must be serving before an old one goes: accelerator capacity is slow to come back.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "progressDeadlineSeconds": rollout_minutes(pool.family, shape) * 60,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                **_neuron_pod_placement(pool.family, scheduler_name),
                "serviceAccountName": SERVE_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                # Admitted requests finish before the process exits.
                "terminationGracePeriodSeconds": config.serving.request_timeout_seconds + DEREGISTRATION_SECONDS + 15,
                "topologySpreadConstraints": spread,
                "initContainers": [wait_for_graphs],
                "containers": [server],
                "volumes": [_claim_volume("graphs", read_only_claim, read_only=True),
                            _claim_volume("graphs-published", read_write_claim, read_only=True),
                            {"name": "local-artifact",
                             "emptyDir": {"medium": "Memory", "sizeLimit": LOCAL_ARTIFACT_SIZE}},
                            _shm_volume(share.memory_gib), TMP_VOLUME],
            },
        },
    }


def autoscaler_spec(config: StackConfig, shape: Shape, deployment_name: str) -> dict:
    scale_up_period = scale_up_period_seconds(config.serving_pool.family, shape)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
        "minReplicas": config.serving.replicas,
        "maxReplicas": config.serving.max_replicas,
        "metrics": [{"type": "Pods", "pods": {
            "metric": {"name": AUTOSCALING_METRIC},
            "target": {"type": "AverageValue", "averageValue": str(OUTSTANDING_PER_POD)}}}],
        "behavior": {
            # Pods added now serve only after a cold start on a new node (infra/cold_start.py): per
            # such period add one pod or double, whichever is more, so a burst is met within a few
            # periods without adding for load the pods still starting will take. Give up capacity
            # only after load has stayed low for a while.
            "scaleUp": {"stabilizationWindowSeconds": 60, "selectPolicy": "Max",
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": scale_up_period},
                                     {"type": "Percent", "value": 100, "periodSeconds": scale_up_period}]},
            "scaleDown": {"stabilizationWindowSeconds": 1800,
                          "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}]},
        },
    }


def _alert(name: str, expr: str, duration: str, severity: str, summary: str) -> dict:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def alert_rules(config: StackConfig, namespace: str) -> list[dict]:
    """What pages someone: compiles that failed or will, pods without a node, shapes out of capacity,
    failing or refused generations, latency near the timeout and pods whose readiness flaps."""
    in_namespace = f'namespace="{namespace}"'
    compile_jobs = f'{in_namespace},job_name=~"{workload_name(COMPILE, "")}.+"'
    generations = f'{in_namespace},route=~"{endpoints.GENERATE}|{endpoints.OPENAI_IMAGES}"'
    requests = f"{endpoints.REQUESTS_METRIC}_total"

    def share(status: str) -> str:
        return (f'sum by (workload) (rate({requests}{{{generations},status=~"{status}"}}[5m])) '
                f'/ sum by (workload) (rate({requests}{{{generations}}}[5m]))')

    stuck_seconds = int(config.compile.timeout_minutes * 60 * COMPILE_STUCK_SHARE)
    slow_seconds = config.serving.request_timeout_seconds * LATENCY_TIMEOUT_SHARE
    waiting_seconds = config.serving.request_timeout_seconds * QUEUE_WAIT_TIMEOUT_SHARE
    return [
        _alert("CompileJobFailed", f'kube_job_failed{{{compile_jobs},condition="true"}} == 1', "0m", "critical",
               "{{ $labels.job_name }} failed: its shape cannot serve until the compile is retried "
               "(docs/workloads.md, Retry a failed compile)"),
        _alert("CompileJobStuck",
               f"(time() - kube_job_status_start_time{{{compile_jobs}}}) > {stuck_seconds} "
               f"and on (namespace, job_name) kube_job_status_active{{{compile_jobs}}} > 0", "0m", "warning",
               f"{{{{ $labels.job_name }}}} has run for {COMPILE_STUCK_SHARE:.0%} of compile.timeoutMinutes; "
               "its deadline stops it at 100%"),
        _alert("PodUnschedulable", f'kube_pod_status_scheduled{{{in_namespace},condition="false"}} == 1',
               f"{UNSCHEDULED_MINUTES}m", "warning",
               f"{{{{ $labels.pod }}}} has had no node for {UNSCHEDULED_MINUTES} minutes: NodePool limit, "
               "instance quota or no capacity in its zones"),
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
    ]


def alertmanager_config(config: StackConfig) -> dict:
    """Every alert to the configured SNS topic (signed with the Pod Identity role), or to no one."""
    monitoring = config.monitoring
    receiver: dict = {"name": ALERT_RECEIVER}
    if monitoring.alert_topic_arn:
        receiver["sns_configs"] = [{"topic_arn": monitoring.alert_topic_arn, "send_resolved": True,
                                    "sigv4": {"region": monitoring.alert_topic_region}}]
    return {
        "receivers": [receiver],
        "route": {"receiver": ALERT_RECEIVER, "group_by": ["alertname", "workload", "job_name"],
                  "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"},
    }


def prometheus_values(namespace: str, config: StackConfig) -> dict:
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
    storage_gi = config.monitoring.storage_gi
    return {
        "alertmanager": {
            "enabled": True,
            "nodeSelector": SYSTEM_NODE_LABEL,
            "serviceAccount": {"create": True, "name": ALERTMANAGER_SERVICE_ACCOUNT},
            # No StorageClass in the cluster: silences do not survive a restart of Alertmanager.
            "persistence": {"enabled": False},
            "config": alertmanager_config(config),
        },
        "kube-state-metrics": {"enabled": True, "nodeSelector": SYSTEM_NODE_LABEL,
                               "collectors": KUBE_STATE_METRICS_COLLECTORS,
                               "namespaces": namespace},
        "prometheus-node-exporter": {"enabled": False},
        "prometheus-pushgateway": {"enabled": False},
        "server": {
            "nodeSelector": SYSTEM_NODE_LABEL,
            # No StorageClass in the cluster: an emptyDir of the configured size, lost with the pod.
            "persistentVolume": {"enabled": False},
            "emptyDir": {"sizeLimit": f"{storage_gi}Gi"},
            "retention": f"{config.monitoring.retention_days}d",
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
            "alerting_rules.yml": {"groups": [{"name": "flux-neuron", "rules": alert_rules(config, namespace)}]},
        },
    }


def adapter_values() -> dict:
    """The custom metrics API over Prometheus: one metric, outstanding requests per serving pod."""
    labels = "{<<.LabelMatchers>>}"
    return {
        "prometheus": {"url": PROMETHEUS_URL, "port": 80},
        "nodeSelector": SYSTEM_NODE_LABEL,
        "rules": {"default": False, "custom": [{
            "seriesQuery": f'{QUEUE_DEPTH_METRIC}{{namespace!="",pod!=""}}',
            "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
            "name": {"matches": f"^{QUEUE_DEPTH_METRIC}$", "as": AUTOSCALING_METRIC},
            "metricsQuery": f"sum({QUEUE_DEPTH_METRIC}{labels} + {IN_FLIGHT_METRIC}{labels}) by (<<.GroupBy>>)",
        }]},
    }


@dataclass
class WorkloadsArgs:
    config: StackConfig
    image_ref: pulumi.Input[str]
    hf_token: pulumi.Output[str]  # a secret Output
    namespace: pulumi.Input[str]
    read_write_claim: pulumi.Input[str]
    read_only_claim: pulumi.Input[str]
    scheduler_name: str
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]
    cluster_name: pulumi.Input[str]


class Workloads(pulumi.ComponentResource):
    services: dict[str, pulumi.Output[str]]  # shape -> Service name

    def __init__(self, name: str, args: WorkloadsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("flux-neuron:infra:Workloads", name, None, opts)
        config = args.config
        in_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)

        def metadata(object_name: str, labels: dict[str, str] | None = None) -> dict:
            return {"name": object_name, "namespace": args.namespace, **({"labels": labels} if labels else {})}

        secret = k8s.core.v1.Secret(
            HF_TOKEN_SECRET, metadata=metadata(HF_TOKEN_SECRET), type="Opaque",
            string_data={HF_TOKEN_SECRET_KEY: args.hf_token}, opts=in_cluster)
        accounts = [
            k8s.core.v1.ServiceAccount(account, metadata=metadata(account), automount_service_account_token=False,
                                       opts=in_cluster)
            for account in (COMPILE_SERVICE_ACCOUNT, SERVE_SERVICE_ACCOUNT)
        ]
        metrics = self._metric_pipeline(args)

        self.services = {}
        for shape in config.shapes:
            compile_name, serve_name = workload_name(COMPILE, shape), workload_name(SERVE, shape)
            job = k8s.batch.v1.Job(
                compile_name, metadata=metadata(compile_name, workload_labels(COMPILE, shape)),
                spec=compile_job_spec(config, shape, args.image_ref, args.read_write_claim, args.scheduler_name),
                opts=pulumi.ResourceOptions(
                    parent=self, provider=args.provider, depends_on=[*args.depends_on, secret, *accounts],
                    # A changed pod template replaces the Job: stop the old compile before the new one starts.
                    delete_before_replace=True,
                    # Pulumi waits for the Job to complete; the Job's own deadline fires first.
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{config.compile.timeout_minutes + COMPILE_START_MINUTES}m",
                        update=f"{config.compile.timeout_minutes + COMPILE_START_MINUTES}m")))
            rollout = rollout_minutes(config.serving_pool.family, shape)
            deployment = k8s.apps.v1.Deployment(
                serve_name, metadata=metadata(serve_name, workload_labels(SERVE, shape)),
                spec=serving_deployment_spec(config, shape, args.image_ref, args.read_only_claim,
                                             args.read_write_claim, args.scheduler_name),
                opts=pulumi.ResourceOptions(
                    parent=self, provider=args.provider, depends_on=[*args.depends_on, job, *accounts],
                    custom_timeouts=pulumi.CustomTimeouts(create=f"{rollout}m", update=f"{rollout}m")))
            labels = workload_labels(SERVE, shape)
            service = k8s.core.v1.Service(
                serve_name, metadata=metadata(serve_name, labels),
                spec={"type": "ClusterIP", "selector": labels,
                      "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
                opts=in_cluster)
            # Voluntary evictions (node drains, Karpenter) take one pod at a time; with one replica
            # a drain still proceeds instead of blocking forever.
            k8s.policy.v1.PodDisruptionBudget(
                serve_name, metadata=metadata(serve_name, labels),
                spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}}, opts=in_cluster)
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                serve_name, metadata=metadata(serve_name, labels),
                spec=autoscaler_spec(config, shape, serve_name),
                opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                            depends_on=[*args.depends_on, deployment, *metrics]))
            self.services[str(shape)] = service.metadata.name
        self.register_outputs({"services": self.services})

    def _metric_pipeline(self, args: WorkloadsArgs) -> list[k8s.helm.v3.Release]:
        opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        namespace = pulumi.Output.from_input(args.namespace)
        alerting = self._alert_publisher(args)
        prometheus = k8s.helm.v3.Release(
            PROMETHEUS_RELEASE, name=PROMETHEUS_RELEASE, chart="prometheus",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO}, version=versions.PROMETHEUS_CHART_VERSION,
            namespace=METRICS_NAMESPACE, create_namespace=True,
            values=namespace.apply(lambda name: prometheus_values(name, args.config)),
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=alerting)))
        adapter = k8s.helm.v3.Release(
            "prometheus-adapter", name="prometheus-adapter", chart="prometheus-adapter",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO},
            version=versions.PROMETHEUS_ADAPTER_CHART_VERSION, namespace=METRICS_NAMESPACE,
            values=adapter_values(),
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[*args.depends_on, prometheus]))
        return [prometheus, adapter]

    def _alert_publisher(self, args: WorkloadsArgs) -> list[pulumi.Resource]:
        """Alertmanager's right to publish to the alert topic (Pod Identity); nothing without a topic."""
        topic = args.config.monitoring.alert_topic_arn
        if topic is None:
            pulumi.log.warn("config monitoring.alertTopicArn is not set: alerts fire in Alertmanager only, "
                            "nobody is notified")
            return []
        role = iam.pod_identity_role(
            "alertmanager", parent=self,
            inline_policy=iam.policy_document([
                {"Sid": "PublishAlerts", "Effect": "Allow", "Action": "sns:Publish", "Resource": topic}]))
        return [iam.pod_identity_association(
            "alertmanager", role_arn=role.arn, cluster_name=args.cluster_name, namespace=METRICS_NAMESPACE,
            service_account=ALERTMANAGER_SERVICE_ACCOUNT, parent=self)]
