"""What runs on the Neuron nodes, per configured shape: a compile Job that publishes the shape's
graphs to the cache, then a Deployment serving them with its Service, PodDisruptionBudget and
HorizontalPodAutoscaler. Shared by all shapes: the HF token Secret, one ServiceAccount per role,
and the metric pipeline (Prometheus and its adapter) the autoscalers read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, versions
from infra.cold_start import ARTIFACT_GB, scale_up_period_seconds, startup_probe_seconds
from infra.config import NeuronPool, StackConfig
from infra.naming import (
    COMPILE, COMPILE_SERVICE_ACCOUNT, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY, METRICS_NAMESPACE,
    NEURON_DEVICE_RESOURCE, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY, NODEPOOL_LABEL, SERVE, SERVE_SERVICE_ACCOUNT,
    SYSTEM_NODE_LABEL, neuron_nodepool, workload_labels, workload_name,
)
from infra.storage import CONTAINER_UID
from model.artifacts import EXIT_NOT_PUBLISHED, READERS_ENV, readers_for_cpus
from model.shapes import Shape
from serving import endpoints

GRAPHS_MOUNT = "/graphs"
SCRATCH_MOUNT = "/scratch"
# The FLUX.1-dev download (~34 GB), the traced graphs and the compiler's work files.
SCRATCH_SIZE = "200Gi"
# load_generator verifies each artifact file while copying it into TMPDIR, then loads from there.
# That copy is the graphs' one cache on the node (the read-only graph volume has none, see
# docs/cold-start.md): memory-backed, so writing it costs no disk bandwidth and no node disk that
# Karpenter does not see; it counts against the pod's memory limit. One artifact plus a quarter.
LOCAL_ARTIFACT_MOUNT = "/var/lib/flux-neuron"
LOCAL_ARTIFACT_SIZE = f"{math.ceil(ARTIFACT_GB * 1e9 / 2**30 * 1.25)}Gi"
# The serving container's own writes on disk: logs and the libraries' caches under HOME.
SERVING_EPHEMERAL_STORAGE = "10Gi"
# A pod gets this part of its devices' share of the host; the rest is for the kubelet's
# reservations and the node daemons (device plugin, Mountpoint, CloudWatch agent, CNI).
HOST_SHARE = 0.7
# Compiling starts only once Karpenter has a node up and the multi-GB image is pulled.
COMPILE_START_MINUTES = 30
# How long a finished Job stays for its logs.
FINISHED_JOB_TTL_SECONDS = 7 * 24 * 3600
PROBE_PERIOD_SECONDS = 10
# What `model.compile --resolve` exits with while the key is not published yet.
RESOLVE_INTERVAL_SECONDS = 30
# Retries `"$@"` (the resolve command) until it says published; any other failure stops the pod.
WAIT_SCRIPT = ('while :; do "$@"; status=$?; [ "$status" -eq 0 ] && exit 0; '
               f'[ "$status" -eq {EXIT_NOT_PUBLISHED} ] || exit "$status"; sleep {RESOLVE_INTERVAL_SECONDS}; done')
# The ALB stops sending to a terminating pod only after it deregisters it.
DEREGISTRATION_SECONDS = 15

# serving/metrics.py exports these per server; the adapter serves their sum per pod to the HPA.
QUEUE_DEPTH_METRIC = "flux_queue_depth"
IN_FLIGHT_METRIC = "flux_generations_in_flight"
AUTOSCALING_METRIC = "flux_requests_outstanding"
# One generation at a time per pod: one outstanding request per pod is a full pod with no queue.
OUTSTANDING_PER_POD = 1
PROMETHEUS_RELEASE = "prometheus"
PROMETHEUS_URL = f"http://{PROMETHEUS_RELEASE}-server.{METRICS_NAMESPACE}.svc"
SCRAPE_INTERVAL = "15s"


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


CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
# The image's user may differ from the uid above: libraries need a writable home for their caches.
HOME_ENV = {"name": "HOME", "value": "/tmp"}


def _shm_volume(memory_gib: int) -> dict:
    # Tensor-parallel ranks exchange tensors through /dev/shm; it counts against the memory limit.
    return {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{max(1, memory_gib // 4)}Gi"}}


def _claim_volume(name: str, claim: str, read_only: bool) -> dict:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}


def _neuron_resources(devices: int, share: HostShare, ephemeral_storage: str) -> dict:
    # Requests equal limits: Guaranteed QoS, so the kubelet never evicts a pod holding accelerators.
    # Local disk is only requested, so Karpenter picks nodes with room for it.
    limits = {NEURON_DEVICE_RESOURCE: str(devices), **share.resources()}
    return {"requests": {**limits, "ephemeral-storage": ephemeral_storage}, "limits": limits}


def compile_job_spec(config: StackConfig, shape: Shape, image: pulumi.Input[str], claim: pulumi.Input[str],
                     scheduler_name: str) -> dict:
    pool = config.compile_pool
    share = host_share(pool, config.compile.devices)
    resources = _neuron_resources(config.compile.devices, share, ephemeral_storage=SCRATCH_SIZE)
    labels = workload_labels(COMPILE, shape)
    container = {
        "name": COMPILE,
        "image": image,
        # The image's entrypoint serves; the DLC's own would never exit after a command.
        "command": ["python", "-m", "model.compile", *artifact_key_args(config, shape),
                    "--out", GRAPHS_MOUNT, "--scratch", f"{SCRATCH_MOUNT}/work"],
        "env": [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": HF_TOKEN_SECRET_KEY}}},
            {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
            HOME_ENV,
        ],
        "resources": resources,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT},
                         {"name": "scratch", "mountPath": SCRATCH_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"}],
    }
    return {
        # A failed compile of the same inputs fails again: one retry covers a lost node, no more.
        "backoffLimit": 1,
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
                            _shm_volume(share.memory_gib)],
            },
        },
    }


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
        "command": ["sh", "-c", WAIT_SCRIPT, "wait-for-graphs",
                    "python", "-m", "model.compile", "--resolve", *key_args, "--out", GRAPHS_MOUNT],
        "env": [HOME_ENV],
        # Equal requests and limits here too, or the pod loses its Guaranteed QoS.
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "500m", "memory": "1Gi"}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs-published", "mountPath": GRAPHS_MOUNT, "readOnly": True}],
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
        "resources": _neuron_resources(config.serving.devices, share,
                                       ephemeral_storage=SERVING_EPHEMERAL_STORAGE),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         {"name": "local-artifact", "mountPath": LOCAL_ARTIFACT_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"}],
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
                            _shm_volume(share.memory_gib)],
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


def prometheus_values(namespace: str) -> dict:
    """A single Prometheus that scrapes the serving pods only: it feeds the autoscalers, nothing else."""
    relabel = [
        {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"], "action": "keep",
         "regex": SERVE},
        {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "action": "keep", "regex": "http"},
        # The adapter maps series to pods through these two labels.
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
    ]
    return {
        "alertmanager": {"enabled": False},
        "kube-state-metrics": {"enabled": False},
        "prometheus-node-exporter": {"enabled": False},
        "prometheus-pushgateway": {"enabled": False},
        "server": {
            "nodeSelector": SYSTEM_NODE_LABEL,
            # Autoscaling reads the last minutes only: nothing worth a volume.
            "persistentVolume": {"enabled": False},
            "retention": "6h",
            "global": {"scrape_interval": SCRAPE_INTERVAL},
        },
        "serverFiles": {"prometheus.yml": {"scrape_configs": [{
            "job_name": "flux-serving",
            "metrics_path": endpoints.METRICS,
            "kubernetes_sd_configs": [{"role": "pod", "namespaces": {"names": [namespace]}}],
            "relabel_configs": relabel,
        }]}},
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
        prometheus = k8s.helm.v3.Release(
            PROMETHEUS_RELEASE, name=PROMETHEUS_RELEASE, chart="prometheus",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO}, version=versions.PROMETHEUS_CHART_VERSION,
            namespace=METRICS_NAMESPACE, create_namespace=True, values=namespace.apply(prometheus_values),
            opts=opts)
        adapter = k8s.helm.v3.Release(
            "prometheus-adapter", name="prometheus-adapter", chart="prometheus-adapter",
            repository_opts={"repo": versions.PROMETHEUS_CHART_REPO},
            version=versions.PROMETHEUS_ADAPTER_CHART_VERSION, namespace=METRICS_NAMESPACE,
            values=adapter_values(),
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[*args.depends_on, prometheus]))
        return [prometheus, adapter]
