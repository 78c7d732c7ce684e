"""The pods of a shape, as pure data: the compile Job's spec, the serving Deployment's and its
autoscaler's, with what they are built from (host shares, probes, security contexts, volumes).
infra/workloads.py declares them; tests build them directly."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

import pulumi

from infra import catalog, disruption, sizing
from infra.cold_start import ARTIFACT_GB, scale_up_period_seconds, startup_probe_seconds
from infra.config import CompileSettings, ModelSource, NeuronPool, ServingSettings, StackConfig
from infra.image import REPO_ROOT
from infra.naming import (
    CAPACITY_TYPE_LABEL, COMPILE, COMPILE_SERVICE_ACCOUNT, HF_TOKEN_SECRET, HF_TOKEN_SECRET_KEY,
    NEURON_DEVICE_RESOURCE, NEURON_FAMILY_LABEL, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY, ON_DEMAND, SERVE,
    SERVE_SERVICE_ACCOUNT, workload_labels, workload_name,
)
from common.image import CONTAINER_UID, NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from common.artifacts import (
    COMPILE_CODE_VERSION, EXIT_NOT_PUBLISHED, EXIT_USAGE, MODEL_LIBRARIES, READERS_ENV, readers_for_cpus,
)
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
# `sh -c WAIT_SCRIPT wait-for-graphs LIMIT_SECONDS COMPILE_JOB_NAME RESOLVE_COMMAND...`: retries the resolve
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
# The metric the autoscalers read, per serving pod: infra.monitoring's adapter serves it.
AUTOSCALING_METRIC = "flux_requests_outstanding"
# One generation at a time per pod: one outstanding request per pod is a full pod with no queue.
OUTSTANDING_PER_POD = 1


@dataclass(frozen=True)
class WorkloadSettings:
    """The stack settings the pods are built from: the model, its dtype, and the compile and serving
    settings with their pools (and the compile's worker plan, infra.sizing)."""

    model: ModelSource
    dtype: str
    compile: CompileSettings
    compile_pool: NeuronPool
    compile_plan: sizing.CompilePlan
    serving: ServingSettings
    serving_pool: NeuronPool
    # Whether new nodes restore the image-cache snapshot fast (coldStart.fastSnapshotRestore): the scale-up period.
    fast_snapshot_restore: bool = False

    @classmethod
    def of(cls, config: StackConfig) -> WorkloadSettings:
        return cls(model=config.model, dtype=config.dtype, compile=config.compile, compile_pool=config.compile_pool,
                   compile_plan=config.compile_plan, serving=config.serving, serving_pool=config.serving_pool,
                   fast_snapshot_restore=config.cold_start.fast_snapshot_restore)


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


def artifact_key_args(settings: WorkloadSettings, shape: Shape) -> list[str]:
    """The options that make up the artifact key, the same for compiling, waiting and serving.

    `--target` is where the graphs run (the serving pool), whichever pool compiles them.
    """
    return ["--shape", str(shape), "--model", settings.model.id, "--revision", settings.model.revision,
            "--backend", "neuron", "--target", settings.serving.pool,
            "--tp-degree", str(settings.compile.tensor_parallel), "--dtype", settings.dtype,
            "--max-text-length", str(settings.model.max_text_length)]


# The pins the image installs on top of the DLC (serving/Dockerfile): those of MODEL_LIBRARIES are
# part of the artifact key.
RUNTIME_REQUIREMENTS = REPO_ROOT / "serving" / "requirements.txt"
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+)")
# Hex digits of the artifact key in a Job's name: 40 bits, so two keys of one shape share a name
# with odds of about one in 10^12.
ARTIFACT_KEY_DIGITS = 10


def _distribution(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def model_library_pins(requirements: str) -> dict[str, str]:
    """The versions a requirements file pins (`name==version`) for MODEL_LIBRARIES; a library it does
    not pin is the DLC's, so NEURON_DLC_IMAGE stands for it."""
    wanted = {_distribution(name) for name in MODEL_LIBRARIES}
    pins = {}
    for line in requirements.splitlines():
        match = _PIN.match(line.strip())
        if match and _distribution(match.group(1)) in wanted:
            pins[_distribution(match.group(1))] = match.group(2)
    return pins


def artifact_key(settings: WorkloadSettings, shape: Shape) -> str:
    """A short, stable hash of what decides a shape's graphs, known at deploy time: the key options
    (artifact_key_args), the toolchain (the DLC and its SDK, and the model libraries' pins on top of
    it) and COMPILE_CODE_VERSION. It names the shape's compile Job (compile_job_name), so Pulumi runs
    a new Job exactly when the graphs change, and never for an image that changed elsewhere.

    The runtime's key, model.compile.cache_key (read from the image the pod runs: what the compile
    names its artifact by and the serving pods wait for), is the authority; this one only names Jobs.
    Anything that changes model.compile's key must change this one, or a new key gets no Job to
    publish it and its serving pods wait until they give up (tests/infra/test_compile_jobs.py holds
    the two side by side). A prebuilt image (`image.uri`) must therefore be built FROM
    NEURON_DLC_IMAGE with serving/requirements.txt, as serving/Dockerfile does.
    """
    key_args = artifact_key_args(settings, shape)
    decided_by = {
        "options": dict(zip(key_args[::2], key_args[1::2])),
        "toolchain": {"dlc": NEURON_DLC_IMAGE, "sdk": NEURON_SDK_VERSION,
                      "libraries": model_library_pins(RUNTIME_REQUIREMENTS.read_text())},
        "compile_code_version": COMPILE_CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:ARTIFACT_KEY_DIGITS]


def compile_job_name(settings: WorkloadSettings, shape: Shape) -> str:
    """`flux-compile-1024x576-<artifact key>`: the compile Job's Kubernetes and Pulumi name, a DNS
    label short enough for the `job-name` label on its pods for every allowed shape."""
    return f"{workload_name(COMPILE, shape)}-{artifact_key(settings, shape)}"


def _neuron_pod_placement(family: str, scheduler_name: str, on_demand_only: bool = False) -> dict:
    """On the family's nodes, whichever of its NodePools Karpenter launches them from (the on-demand base
    first, then Spot where the family allows it); only on on-demand ones if `on_demand_only`."""
    capacity = {CAPACITY_TYPE_LABEL: ON_DEMAND} if on_demand_only else {}
    return {
        # Only the Neuron scheduler extension places multi-device requests on contiguous devices.
        "schedulerName": scheduler_name,
        "nodeSelector": {NEURON_FAMILY_LABEL: family, **capacity},
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


def compile_share(settings: WorkloadSettings) -> HostShare:
    """The compile pod's CPU share, and the memory its tensor-parallel workers need (infra.sizing):
    workers at once x (the whole transformer each builds + neuronx-cc), e.g. dev:
    8 x (22.2 GiB bfloat16 transformer + 24 GiB) = 370 GiB of trn1.32xlarge's 512 GiB."""
    return HostShare(host_share(settings.compile_pool, settings.compile.devices).cpu, settings.compile_plan.memory_gib)


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


# The parts of a compile Job's spec that follow the image alone, which infra/workloads.py tells
# Pulumi to ignore: a new image whose artifact key is unchanged leaves the Job as it is.
COMPILE_JOB_IMAGE_FIELDS = ("spec.template.spec.containers[0].image",)


def compile_job_spec(settings: WorkloadSettings, shape: Shape, image: pulumi.Input[str], claim: pulumi.Input[str],
                     scheduler_name: str) -> dict:
    pool = settings.compile_pool
    share = compile_share(settings)
    resources = _neuron_resources(settings.compile.devices, share, ephemeral_storage=SCRATCH_SIZE)
    labels = workload_labels(COMPILE, shape)
    container = {
        "name": COMPILE,
        "image": image,
        # The image's entrypoint serves; the DLC's own would never exit after a command.
        "command": ["python", "-m", "model.compile", *artifact_key_args(settings, shape),
                    "--out", GRAPHS_MOUNT, "--scratch", f"{SCRATCH_MOUNT}/work",
                    "--max-parallel-compilations", str(settings.compile_plan.concurrency)],
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
        "activeDeadlineSeconds": settings.compile.timeout_minutes * 60,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": {
            "metadata": {"labels": labels,
                         # Karpenter must not consolidate a node away under an hours-long compile.
                         "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
            "spec": {
                # A Spot interruption would lose hours of compiling.
                **_neuron_pod_placement(pool.family, scheduler_name, on_demand_only=True),
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


def wait_for_graphs_limit_seconds(settings: WorkloadSettings) -> int:
    """Past its node start and its deadline, the shape's compile Job cannot publish the artifact any more."""
    return (COMPILE_START_MINUTES + settings.compile.timeout_minutes) * 60


def deployment_deadline_minutes(settings: WorkloadSettings, shape: Shape) -> int:
    """How long a Deployment's new pods may take to become available: they wait for their key's graphs
    (a new key's compile runs meanwhile, the Deployment does not wait for the Job), then roll out."""
    return wait_for_graphs_limit_seconds(settings) // 60 + rollout_minutes(settings.serving_pool.family, shape)


def serving_share(settings: WorkloadSettings, host: HostShare) -> HostShare:
    """A serving pod's CPU is its devices' share of the host (`host`); its memory that share or, when
    more, what it holds while it loads (sizing.serving_memory_gib): the verified copy of its artifact
    in memory, the graphs loaded from it, /dev/shm and the process."""
    needed = sizing.serving_memory_gib(settings.dtype, LOCAL_ARTIFACT_GIB, shm_gib(host.memory_gib))
    return HostShare(host.cpu, max(host.memory_gib, needed))


ZONE_KEY = "topology.kubernetes.io/zone"
HOSTNAME_KEY = "kubernetes.io/hostname"


def serving_spread(replicas: int, labels: dict[str, str]) -> list[dict]:
    """A shape's pods spread over zones and nodes.

    With more than one replica, the zones are a hard rule (DoNotSchedule): a zone outage or the
    loss of one Spot pool then takes at most its share, where ScheduleAnyway would let every replica
    land in one zone. Karpenter launches nodes in the zone a pending pod needs. No minDomains: it
    would count a zone that has lost its nodes as an empty domain and keep replicas Pending during
    that very outage, instead of placing them in the zones that are up. Nodes stay a preference: a
    node holding several replicas of a shape is better than replicas left Pending.
    """
    zone_rule = "DoNotSchedule" if replicas > 1 else "ScheduleAnyway"
    return [{"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": rule, "labelSelector": {"matchLabels": labels}}
            for key, rule in ((ZONE_KEY, zone_rule), (HOSTNAME_KEY, "ScheduleAnyway"))]


def serving_deployment_spec(settings: WorkloadSettings, shape: Shape, image: pulumi.Input[str],
                            read_only_claim: pulumi.Input[str], read_write_claim: pulumi.Input[str],
                            scheduler_name: str) -> dict:
    pool = settings.serving_pool
    share = host_share(pool, settings.serving.devices)
    labels = workload_labels(SERVE, shape)
    key_args = artifact_key_args(settings, shape)
    http_get = {"port": "http", "path": endpoints.READYZ}
    # Waits through the read-write volume, mounted read-only: the serving volume caches metadata
    # forever, so an early lookup there could remember "no manifest" after it is published.
    wait_for_graphs = {
        "name": "wait-for-graphs",
        "image": image,
        "command": ["sh", "-c", WAIT_SCRIPT, "wait-for-graphs", str(wait_for_graphs_limit_seconds(settings)),
                    compile_job_name(settings, shape),
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
                    "--queue-size", str(settings.serving.queue_size),
                    "--request-timeout", str(settings.serving.request_timeout_seconds),
                    # Failing generations take the pod out of the load balancer (docs/serving.md, Runtime errors).
                    "--unready-after-errors", str(endpoints.UNREADY_AFTER_RUNTIME_ERRORS)],
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
        "lifecycle": {"preStop": {"sleep": {"seconds": disruption.DEREGISTRATION_SECONDS}}},
        "resources": _neuron_resources(settings.serving.devices, serving_share(settings, share),
                                       ephemeral_storage=SERVING_EPHEMERAL_STORAGE),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         {"name": "local-artifact", "mountPath": LOCAL_ARTIFACT_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         TMP_VOLUME_MOUNT],
    }
    spread = serving_spread(settings.serving.replicas, labels)
    return {
        # No `replicas`: the HPA owns the count (from serving.replicas up), a re-apply must not reset it.
        "selector": {"matchLabels": labels},
        # A new pod must be serving before an old one goes: accelerator capacity is slow to come back.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": sizing.ROLLOUT_SURGE, "maxUnavailable": 0}},
        # Pods waiting in wait-for-graphs make no progress: the deadline covers that wait too.
        "progressDeadlineSeconds": deployment_deadline_minutes(settings, shape) * 60,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                **_neuron_pod_placement(pool.family, scheduler_name),
                "serviceAccountName": SERVE_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                # Deregistered, then the admitted requests finish before the process exits: within the
                # Spot notice where the pool allows Spot (config refuses a request timeout that is not).
                "terminationGracePeriodSeconds": disruption.serving_grace_seconds(
                    settings.serving.request_timeout_seconds),
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


def autoscaler_spec(settings: WorkloadSettings, shape: Shape, deployment_name: str) -> dict:
    scale_up_period = scale_up_period_seconds(settings.serving_pool.family, shape, settings.fast_snapshot_restore)
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
        "minReplicas": settings.serving.replicas,
        "maxReplicas": settings.serving.max_replicas,
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

