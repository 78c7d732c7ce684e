"""The pods of a stack, as pure data: the weights Job's spec, and per shape the graphs Job's, the serving
Deployment's and its autoscaler's, with what they are built from (host shares, probes, security contexts,
volumes); the activator's Deployment (infra/activation.py). infra/workloads.py declares them; tests build them
directly."""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

import pulumi

from infra import catalog, disruption, sizing
from infra.cluster import PERSISTENT_STORAGE_CLASS
from infra.cold_start import scale_up_period_seconds, startup_probe_seconds
from infra.config import CompileSettings, ModelSource, NeuronPool, ServingSettings, StackConfig
from infra.image import REPO_ROOT
from infra.naming import (
    ACTIVATE, ACTIVATOR, CAPACITY_TYPE_LABEL, COMPILE, COMPILE_SERVICE_ACCOUNT, CPU_NODEPOOL, HF_TOKEN_SECRET,
    HF_TOKEN_SECRET_KEY, NEURON_DEVICE_RESOURCE, NEURON_FAMILY_LABEL, NEURON_TAINT_EFFECT, NEURON_TAINT_KEY,
    NODEPOOL_LABEL, ON_DEMAND, SERVE, SERVE_SERVICE_ACCOUNT, WEIGHTS_JOB_PREFIX, component_labels,
    workload_labels, workload_name,
)
from common.adapters import adapter_argument
from common.image import CONTAINER_UID, NEURON_DLC_IMAGE, NEURON_SDK_VERSION
from common.neuron import LOGICAL_CORE_SIZE_ENV, NXDI, TRN2_LOGICAL_CORE_SIZE, compile_api
from common.artifacts import (
    COMPILE_CODE_VERSION, EXIT_USAGE, MODEL_LIBRARIES, READERS_ENV, WEIGHTS_FORMAT_VERSION, readers_for_cpus,
)
from common.shapes import Shape
from common import activation, endpoints

GRAPHS_MOUNT = "/graphs"
SCRATCH_MOUNT = "/scratch"
# load_generator verifies each artifact file while copying it into TMPDIR, then loads from there.
# That copy is the graphs' one cache on the node (the read-only graph volume has none, see
# docs/cold-start.md): memory-backed, so writing it costs no disk bandwidth and no node disk that
# Karpenter does not see; it counts against the pod's memory limit. One artifact plus a quarter
# (local_artifact_gib).
LOCAL_ARTIFACT_MOUNT = "/var/lib/flux-neuron"
LOCAL_ARTIFACT_SHARE = 1.25
# The serving container's own writes on disk: logs and the libraries' caches under HOME.
SERVING_EPHEMERAL_STORAGE_GIB = 10
# A publishing Job's own writes on the node's disk: logs, and /tmp. Its scratch is a volume of its own.
JOB_EPHEMERAL_STORAGE_GIB = 2
# A pod gets this part of its devices' share of the host's CPU (and a serving pod of its memory);
# the rest is for the kubelet's reservations and the node daemons (device plugin, Mountpoint,
# CloudWatch agent, CNI). A compile pod's memory comes from the sizing model instead.
HOST_SHARE = 0.7
# Compiling starts only once Karpenter has a node up and the multi-GB image is pulled.
COMPILE_START_MINUTES = 30
# How long a finished Job stays for its logs (and scripts/status).
FINISHED_JOB_TTL_SECONDS = 7 * 24 * 3600
PROBE_PERIOD_SECONDS = 10
# Disruptions no longer spend retries and bad options never retry (the podFailurePolicy below), so what
# is left is a failure of the compile itself: one retry covers a transient one (a download or S3 error);
# a second would most likely fail again, after hours of compiling.
COMPILE_RETRIES = 1
# The metric the autoscalers read, per serving pod: infra.monitoring's adapter serves it.
AUTOSCALING_METRIC = "flux_requests_outstanding"
# One generation at a time per pod: one outstanding request per pod is a full pod with no queue.
OUTSTANDING_PER_POD = 1


@dataclass(frozen=True)
class WorkloadSettings:
    """The stack settings the pods are built from: the model, its dtype, the compile and serving settings with
    their pools (compile_pool None: device-less on the cpu NodePool), and the zones serving pods spread over."""

    model: ModelSource
    dtype: str
    compile: CompileSettings
    compile_pool: NeuronPool | None
    serving: ServingSettings
    serving_pool: NeuronPool
    zones: int
    # Whether new nodes restore the image-cache snapshot fast (coldStart.fastSnapshotRestore): the scale-up period.
    fast_snapshot_restore: bool = False

    @classmethod
    def of(cls, config: StackConfig) -> WorkloadSettings:
        return cls(model=config.model, dtype=config.dtype, compile=config.compile, compile_pool=config.compile_pool,
                   serving=config.serving, serving_pool=config.serving_pool, zones=config.zone_count,
                   fast_snapshot_restore=config.cold_start.fast_snapshot_restore)

    @property
    def compile_api(self) -> str:
        """How the graphs and weights are made (common.neuron): decided by where they run, serving.pool's family."""
        return compile_api(self.serving.pool)

    @property
    def ranks(self) -> sizing.Ranks:
        """The ranks the graphs run on, one per (logical) NeuronCore of a serving pod."""
        return self.compile.ranks(self.serving.pool)

    @property
    def graphs_job_size(self) -> sizing.PodSize:
        """A graphs Job's CPU and memory (infra.sizing): on the cpu NodePool, or on the Neuron compile pool with
        at least its devices' CPU share."""
        memory = sizing.compile_memory_bytes(self.dtype, self.compile.tensor_parallel, self.ranks.world)
        if self.compile_pool is None:
            return sizing.cpu_pod_size(memory)
        size = sizing.neuron_compile_size(self.compile_pool.instance_types, self.compile.devices, memory,  # type: ignore[arg-type]
                                          host_share(self.compile_pool, self.compile.devices).cpu)  # type: ignore[arg-type]
        assert size is not None, "load_stack_config refuses a compile pool without memory for one compile"
        return size

    @property
    def weights_job_size(self) -> sizing.PodSize:
        return sizing.cpu_pod_size(sizing.weights_memory_bytes(self.dtype, self.compile.tensor_parallel,
                                                               self.ranks.world))

    @property
    def publishing_instance_types(self) -> tuple[str, ...]:
        """What the pods that write the graph volume run on: the weights Job's type and the graphs Jobs'."""
        graphs = (self.graphs_job_size.instance_type,) if self.compile_pool is None else self.compile_pool.instance_types
        return (self.weights_job_size.instance_type, *graphs)


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


def local_artifact_gib(settings: WorkloadSettings) -> int:
    """The serving pod's in-memory copy of what it reads (sizing.artifact_bytes: on trn2 every rank's files, NxD
    Inference replicating CLIP and the VAE decoder on each), plus a quarter."""
    return math.ceil(sizing.artifact_bytes(settings.dtype, settings.ranks) / sizing.GIB * LOCAL_ARTIFACT_SHARE)


def startup_failure_threshold(pool: NeuronPool, shape: Shape) -> int:
    """Startup probes before the kubelet restarts a server: the cold-start budget's in-container part."""
    return math.ceil(startup_probe_seconds(pool.instance_types, shape) / PROBE_PERIOD_SECONDS)


def rollout_minutes(pool: NeuronPool, shape: Shape) -> int:
    """A rollout waits for a node and the image pull (as a compile does), then the startup window."""
    return COMPILE_START_MINUTES + math.ceil(startup_probe_seconds(pool.instance_types, shape) / 60)


def model_args(settings: WorkloadSettings) -> list[str]:
    """The options every `model.compile` run of the stack takes (the weights Job, each graphs Job, each resolve).

    `--target` is where the graphs run (the serving pool), whichever pool compiles them. On trn2 (NxD Inference's
    Flux application) both data-parallel degrees too, 1 included: both are fields of its keys.
    """
    degrees = ["--context-parallel", str(settings.compile.context_parallel),
               "--cfg-parallel", str(settings.compile.cfg_parallel)] if settings.compile_api == NXDI else []
    return ["--model", settings.model.id, "--revision", settings.model.revision,
            "--backend", "neuron", "--target", settings.serving.pool,
            "--tp-degree", str(settings.compile.tensor_parallel), *degrees, "--dtype", settings.dtype,
            "--max-text-length", str(settings.model.max_text_length)]


def neuron_env(settings: WorkloadSettings) -> list[dict]:
    """What every process of the stack's compile API needs in its environment: on trn2 the logical NeuronCore
    config compiler and runtime must agree on (the trn2 backend sets the same value, and refuses another)."""
    if settings.compile_api != NXDI:
        return []
    return [{"name": LOGICAL_CORE_SIZE_ENV, "value": str(TRN2_LOGICAL_CORE_SIZE)}]


def artifact_key_args(settings: WorkloadSettings, shape: Shape) -> list[str]:
    """The options that make up a shape's graphs key, the same for compiling, resolving and serving."""
    return ["--shape", str(shape), *model_args(settings)]


def adapter_args(settings: WorkloadSettings) -> list[str]:
    """The stack's LoRA adapters as `model.compile` and the server take them: part of the weights key only, so the
    weights Job, the resolve and the servers pass them and the graphs Jobs do not."""
    return [argument for adapter in settings.model.adapters for argument in ("--lora", adapter_argument(adapter))]


def served_args(settings: WorkloadSettings, shape: Shape) -> list[str]:
    """What a shape's serving pods load: its graphs, and the weights with the stack's adapters merged."""
    return [*artifact_key_args(settings, shape), *adapter_args(settings)]


def resolve_args(settings: WorkloadSettings, shape: Shape) -> list[str]:
    """`model.compile --resolve` for a shape: exit 0 once its graphs and the weights its pods load are published."""
    return [*served_args(settings, shape), "--out", GRAPHS_MOUNT, "--resolve"]


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


def _toolchain() -> dict:
    """The DLC and its SDK, and the model libraries' pins on top of it: part of every key."""
    return {"dlc": NEURON_DLC_IMAGE, "sdk": NEURON_SDK_VERSION,
            "libraries": model_library_pins(RUNTIME_REQUIREMENTS.read_text())}


def _key_hash(decided_by: dict) -> str:
    return hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()[:ARTIFACT_KEY_DIGITS]


def artifact_key(settings: WorkloadSettings, shape: Shape) -> str:
    """A short, stable hash of what decides a shape's graphs, known at deploy time: the key options
    (artifact_key_args), the toolchain (the DLC and its SDK, and the model libraries' pins on top of
    it) and COMPILE_CODE_VERSION. It names the shape's graphs Job (compile_job_name), so Pulumi runs
    a new Job exactly when the graphs change, and never for an image that changed elsewhere.

    The runtime's key, model.compile.cache_key (read from the image the pod runs: what the compile
    names its artifact by and the serving pods wait for), is the authority; this one only names Jobs.
    Anything that changes model.compile's key must change this one, or a new key gets no Job to
    publish it and its serving pods stay gated (tests/infra/test_compile_jobs.py holds the two side by
    side). A prebuilt image (`image.uri`) must therefore be built FROM NEURON_DLC_IMAGE with
    serving/requirements.txt, as serving/Dockerfile does.
    """
    key_args = artifact_key_args(settings, shape)
    return _key_hash({"options": dict(zip(key_args[::2], key_args[1::2])), "toolchain": _toolchain(),
                      "compile_code_version": COMPILE_CODE_VERSION})


def compile_job_name(settings: WorkloadSettings, shape: Shape) -> str:
    """`flux-compile-1024x576-<artifact key>`: the graphs Job's Kubernetes and Pulumi name, a DNS
    label short enough for the `job-name` label on its pods for every allowed shape."""
    return f"{workload_name(COMPILE, shape)}-{artifact_key(settings, shape)}"


def weights_key(settings: WorkloadSettings) -> str:
    """A short, stable hash of what decides the stack's weights: the model and its revision, the adapters merged
    into them, the dtype, the backend and TP degree, the compile API (common.neuron.compile_api of the serving
    family: NxD Inference shards for trn2, ModelBuilder elsewhere) with, on trn2, the context and CFG degrees, the
    toolchain and WEIGHTS_FORMAT_VERSION; not the shape, the target itself or the text length, which only the graphs
    depend on. Everything the runtime's weights key holds is here (a superset only reruns a Job that finds them
    published), so a new weights key always gets its Job (tests/infra/test_compile_jobs.py holds the two side by
    side)."""
    # Adapters only when there are some, and ModelBuilder's weights named as they were before NxD Inference's
    # existed (no field for it): a stack keeps the weights Job it had before either existed. NxD Inference's add the
    # API and its degrees, so moving a stack to or from trn2 names a new Job, as the runtime's key changes with them.
    adapters = {"loras": [adapter.key() for adapter in settings.model.adapters]} if settings.model.adapters else {}
    nxdi = {"implementation": NXDI, "context_parallel": settings.compile.context_parallel,
            "cfg_parallel": settings.compile.cfg_parallel} if settings.compile_api == NXDI else {}
    return _key_hash({"model": settings.model.id, "revision": settings.model.revision, "dtype": settings.dtype,
                      **adapters, "backend": "neuron", "tp_degree": settings.compile.tensor_parallel, **nxdi,
                      "toolchain": _toolchain(), "weights_format_version": WEIGHTS_FORMAT_VERSION})


def weights_job_name(settings: WorkloadSettings) -> str:
    """`flux-weights-<weights key>`: one per stack, shared by every shape."""
    return f"{WEIGHTS_JOB_PREFIX}-{weights_key(settings)}"


WEIGHTS_LABELS = {**component_labels(COMPILE), "app.kubernetes.io/instance": WEIGHTS_JOB_PREFIX}


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


def _resources(share: HostShare, ephemeral_storage_gib: int, devices: int = 0) -> dict:
    # Requests equal limits: Guaranteed QoS, so the kubelet never evicts a pod holding accelerators or hours of
    # compiling. Local disk is only requested, so Karpenter picks nodes with room for it.
    # Whole devices (aws.amazon.com/neuron), not aws.amazon.com/neuroncore: the TP degrees that fit
    # FLUX.1-dev fill whole devices on trn1/inf2 (2 cores each), so no core idles (on trn2, 4
    # logical cores per device, TP 2 would idle 2: capacity.md shows idle cores); the scheduler
    # extension's placement rules (trn1: 1, 4, 8 or 16 devices; inf2: contiguous) are stated in
    # devices; Karpenter sizes nodes by the devices EC2 reports per type; and the NodePool `limits`
    # (infra/karpenter.py) count the same resource. The container sees only the granted devices'
    # cores, and the TP ranks take them in order.
    limits = {**({NEURON_DEVICE_RESOURCE: str(devices)} if devices else {}), **share.resources()}
    return {"requests": {**limits, "ephemeral-storage": f"{ephemeral_storage_gib}Gi"}, "limits": limits}


def _scratch_volume(gib: int) -> dict:
    """The Job's scratch: a gp3 volume of its own, created with its pod and deleted with it (a generic ephemeral
    volume of the encrypted StorageClass), so its size never competes with the node's disk, whichever family
    (inf2 has no instance store) or CPU type runs the Job."""
    return {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": PERSISTENT_STORAGE_CLASS,
        "resources": {"requests": {"storage": f"{gib}Gi"}}}}}}


# The parts of a publishing Job's spec that follow the image alone, which infra/workloads.py tells
# Pulumi to ignore: a new image whose key is unchanged leaves the Job as it is.
COMPILE_JOB_IMAGE_FIELDS = ("spec.template.spec.containers[0].image",)
# The cpu NodePool's nodes of the family the device-less Jobs are sized for, on-demand: an interruption would
# lose hours of compiling.
CPU_COMPILE_SELECTOR = {NODEPOOL_LABEL: CPU_NODEPOOL, "karpenter.k8s.aws/instance-family": catalog.CPU_COMPILE_FAMILY,
                        CAPACITY_TYPE_LABEL: ON_DEMAND}


def _publishing_job_spec(settings: WorkloadSettings, labels: dict[str, str], what: list[str], size: sizing.PodSize,
                         scratch_gib: int, placement: dict, devices: int, image: pulumi.Input[str],
                         claim: pulumi.Input[str], reads_gated: bool) -> dict:
    """A Job that runs `model.compile` with the stack's model options and `what` (`--weights`, or `--shape S
    --graphs-only`), and publishes to the graph volume: its retries, deadline and scratch, and the HF token if it
    `reads_gated` repositories."""
    share = HostShare(size.cpu, size.memory_gib)
    token_env = [{"name": HF_TOKEN_PATH_ENV, "value": f"{HF_TOKEN_MOUNT}/{HF_TOKEN_SECRET_KEY}"}] if reads_gated else []
    token_mount = [{"name": HF_TOKEN_VOLUME["name"], "mountPath": HF_TOKEN_MOUNT, "readOnly": True}] if reads_gated \
        else []
    container = {
        "name": COMPILE,
        "image": image,
        # The image's entrypoint serves; the DLC's own would never exit after a command. `--cpus` bounds torch's
        # and the compiler's threads to the pod's CPU limit.
        "command": ["python", "-m", "model.compile", *model_args(settings), "--out", GRAPHS_MOUNT,
                    "--scratch", f"{SCRATCH_MOUNT}/work", "--cpus", str(size.cpu), *what],
        "env": [
            *token_env,
            {"name": "HF_HOME", "value": f"{SCRATCH_MOUNT}/huggingface"},
            # Temporary files of the compiler and libraries go to scratch, not the small /tmp.
            {"name": "TMPDIR", "value": SCRATCH_MOUNT},
            HOME_ENV,
            *neuron_env(settings),
        ],
        "resources": _resources(share, JOB_EPHEMERAL_STORAGE_GIB, devices),
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT},
                         {"name": "scratch", "mountPath": SCRATCH_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         TMP_VOLUME_MOUNT, *token_mount],
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
        # A retry starts only once the failed pod is gone, so two never hold a node's resources at once.
        "podReplacementPolicy": "Failed",
        "activeDeadlineSeconds": settings.compile.timeout_minutes * 60,
        "ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS,
        "template": {
            "metadata": {"labels": labels,
                         # Karpenter must not consolidate a node away under an hours-long compile.
                         "annotations": {"karpenter.sh/do-not-disrupt": "true"}},
            "spec": {
                **placement,
                "restartPolicy": "Never",
                "serviceAccountName": COMPILE_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [_claim_volume("graphs", claim, read_only=False), _scratch_volume(scratch_gib),
                            _shm_volume(share.memory_gib), TMP_VOLUME, *([HF_TOKEN_VOLUME] if reads_gated else [])],
            },
        },
    }


def compile_job_spec(settings: WorkloadSettings, shape: Shape, image: pulumi.Input[str], claim: pulumi.Input[str],
                     scheduler_name: str) -> dict:
    """A shape's graphs Job: compiles and publishes its graphs only (never the weights: the weights Job does), on
    the cpu NodePool device-less, or on devices of the serving family."""
    pool = settings.compile_pool
    if pool is None:
        placement: dict = {"nodeSelector": CPU_COMPILE_SELECTOR}
        devices = 0
    else:
        # A Spot interruption would lose hours of compiling.
        placement, devices = _neuron_pod_placement(pool.family, scheduler_name, on_demand_only=True), \
            settings.compile.devices
    return _publishing_job_spec(settings, workload_labels(COMPILE, shape), ["--shape", str(shape), "--graphs-only"],
                                settings.graphs_job_size, sizing.graphs_scratch_gib(), placement, devices or 0,
                                image, claim, reads_gated=settings.model.gated)


def weights_job_spec(settings: WorkloadSettings, image: pulumi.Input[str], claim: pulumi.Input[str]) -> dict:
    """The stack's weights Job: downloads the checkpoint and the adapters, merges them and publishes the shards,
    device-less on the cpu NodePool, once for every shape."""
    return _publishing_job_spec(
        settings, WEIGHTS_LABELS, ["--weights", *adapter_args(settings)], settings.weights_job_size,
        sizing.weights_scratch_gib(settings.dtype, settings.compile.tensor_parallel, settings.ranks.world),
        {"nodeSelector": CPU_COMPILE_SELECTOR}, 0, image, claim, reads_gated=settings.model.needs_hf_token)


def publish_limit_seconds(settings: WorkloadSettings) -> int:
    """Past its node start and its deadline, a Job can no longer publish what it compiles."""
    return (COMPILE_START_MINUTES + settings.compile.timeout_minutes) * 60


def deployment_deadline_minutes(settings: WorkloadSettings, shape: Shape) -> int:
    """How long a Deployment's new pods may take to become available: they stay gated until their key is
    published (a new key's compile runs meanwhile), then roll out. Past it the Deployment reports
    ProgressDeadlineExceeded; nothing waits for it (Pulumi does not await the Deployment)."""
    return publish_limit_seconds(settings) // 60 + rollout_minutes(settings.serving_pool, shape)


def serving_share(settings: WorkloadSettings, host: HostShare) -> HostShare:
    """A serving pod's CPU is its devices' share of the host (`host`); its memory that share or, when
    more, what it holds while it loads (sizing.serving_memory_gib): the verified copy of its artifact
    in memory, the graphs loaded from it, /dev/shm and the process."""
    needed = sizing.serving_memory_gib(settings.dtype, local_artifact_gib(settings), shm_gib(host.memory_gib),
                                       settings.ranks)
    return HostShare(host.cpu, max(host.memory_gib, needed))


ZONE_KEY = "topology.kubernetes.io/zone"
HOSTNAME_KEY = "kubernetes.io/hostname"


def zone_min_domains(replicas: int, zones: int) -> int | None:
    """minDomains of the zone spread: all zones but one (and no more than the replicas), when that is at least 2.

    The scheduler counts only zones that already have a node of the pool, so without it the first replicas of a
    shape all land on the first node that becomes Ready, in one zone. With it, while fewer zones than minDomains
    have nodes the global minimum counts as 0, so at most one pod per zone until pods span that many zones
    (Karpenter, which honours minDomains, starts nodes in the others). One zone short of all: a zone lost in an
    outage still leaves enough zones for the spread to place every replica. With two zones that would be one, which
    is no rule: the risk of a first placement in one zone is then accepted (docs/upgrades.md, "Disruptions")."""
    domains = min(replicas, zones - 1)
    return domains if domains >= 2 else None


def serving_spread(replicas: int, zones: int, labels: dict[str, str]) -> list[dict]:
    """A shape's pods spread over zones and nodes.

    With more than one replica, the zones are a hard rule (DoNotSchedule): a zone outage or the
    loss of one Spot pool then takes at most its share, where ScheduleAnyway would let every replica
    land in one zone; minDomains (zone_min_domains) keeps the first replicas from starting in one.
    Nodes stay a preference: a node holding several replicas of a shape is better than replicas left Pending.
    """
    hard = replicas > 1
    min_domains = zone_min_domains(replicas, zones) if hard else None
    zone = {"maxSkew": 1, "topologyKey": ZONE_KEY, "whenUnsatisfiable": "DoNotSchedule" if hard else "ScheduleAnyway",
            **({"minDomains": min_domains} if min_domains else {}), "labelSelector": {"matchLabels": labels}}
    host = {"maxSkew": 1, "topologyKey": HOSTNAME_KEY, "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels}}
    return [zone, host]


def serving_deployment_spec(settings: WorkloadSettings, shape: Shape, image: pulumi.Input[str],
                            read_only_claim: pulumi.Input[str], scheduler_name: str) -> dict:
    pool = settings.serving_pool
    share = host_share(pool, settings.serving.devices)  # type: ignore[arg-type]
    labels = workload_labels(SERVE, shape)
    http_get = {"port": "http", "path": endpoints.READYZ}
    server = {
        "name": SERVE,
        "image": image,
        "command": ["python", "-m", "serving", "--host", "0.0.0.0", "--port", str(endpoints.DEFAULT_PORT),
                    "--graphs-root", GRAPHS_MOUNT, *served_args(settings, shape),
                    "--queue-size", str(settings.serving.queue_size),
                    "--request-timeout", str(settings.serving.request_timeout_seconds),
                    # Failing generations take the pod out of the load balancer (docs/serving.md, Runtime errors).
                    "--unready-after-errors", str(endpoints.UNREADY_AFTER_RUNTIME_ERRORS)],
        "env": [HOME_ENV, {"name": "TMPDIR", "value": LOCAL_ARTIFACT_MOUNT},
                {"name": READERS_ENV, "value": str(readers_for_cpus(share.cpu))}, *neuron_env(settings)],
        "ports": [{"name": "http", "containerPort": endpoints.DEFAULT_PORT, "protocol": "TCP"}],
        # Startup: graphs loaded and warmed; until then liveness and readiness wait.
        "startupProbe": {"httpGet": http_get, "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5,
                         "failureThreshold": startup_failure_threshold(pool, shape)},
        "readinessProbe": {"httpGet": http_get, "periodSeconds": PROBE_PERIOD_SECONDS, "timeoutSeconds": 5,
                           "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"port": "http", "path": endpoints.HEALTHZ}, "periodSeconds": 20,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": disruption.DEREGISTRATION_SECONDS}}},
        "resources": _resources(serving_share(settings, share), SERVING_EPHEMERAL_STORAGE_GIB,
                                settings.serving.devices),  # type: ignore[arg-type]
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         {"name": "local-artifact", "mountPath": LOCAL_ARTIFACT_MOUNT},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         TMP_VOLUME_MOUNT],
    }
    return {
        # No `replicas`: the HPA owns the count (from serving.replicas up), a re-apply must not reset it.
        "selector": {"matchLabels": labels},
        # A new pod must be serving before an old one goes: accelerator capacity is slow to come back.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": sizing.ROLLOUT_SURGE, "maxUnavailable": 0}},
        # A new key's pods stay gated while it compiles: the deadline covers that too.
        "progressDeadlineSeconds": deployment_deadline_minutes(settings, shape) * 60,
        "template": {
            # What the activator resolves before it lifts the gate (common/activation.py).
            "metadata": {"labels": labels, "annotations": {
                activation.RESOLVE_ARGS_ANNOTATION: json.dumps(resolve_args(settings, shape))}},
            "spec": {
                # Created gated: no node, no device, until the activator sees the graphs and weights published.
                "schedulingGates": [{"name": activation.GATE}],
                **_neuron_pod_placement(pool.family, scheduler_name),
                "serviceAccountName": SERVE_SERVICE_ACCOUNT,
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                # Deregistered, then the admitted requests finish before the process exits: within the
                # Spot notice where the pool allows Spot (config refuses a request timeout that is not).
                "terminationGracePeriodSeconds": disruption.serving_grace_seconds(
                    settings.serving.request_timeout_seconds),
                "topologySpreadConstraints": serving_spread(settings.serving.replicas, settings.zones, labels),
                "containers": [server],
                "volumes": [_claim_volume("graphs", read_only_claim, read_only=True),
                            {"name": "local-artifact",
                             "emptyDir": {"medium": "Memory", "sizeLimit": f"{local_artifact_gib(settings)}Gi"}},
                            _shm_volume(share.memory_gib), TMP_VOLUME],
            },
        },
    }


# The activator (common/activation.py): a small pod, always on, next to Prometheus on the cpu NodePool. Its
# resolves start Python without torch: a few tens of MB.
ACTIVATOR_RESOURCES = HostShare(cpu=1, memory_gib=1)
ACTIVATOR_HEARTBEAT = f"{TMP_MOUNT}/activator-heartbeat"
SERVICE_ACCOUNT_TOKEN_SECONDS = 3600
ACTIVATOR_SELECTOR = ",".join(f"{key}={value}" for key, value in component_labels(SERVE).items())
PLATFORM_CPU_SELECTOR = {NODEPOOL_LABEL: CPU_NODEPOOL, CAPACITY_TYPE_LABEL: ON_DEMAND}


def activator_deployment_spec(image: pulumi.Input[str], read_write_claim: pulumi.Input[str],
                              namespace: pulumi.Input[str]) -> dict:
    """One activator: it lists the gated serving pods, resolves their artifacts through the read-write graph
    volume (mounted read-only: the serving volume caches metadata forever, so an early lookup there could
    remember "no manifest" after it is published), and lifts the gates of the published."""
    labels = component_labels(ACTIVATE)
    alive = {"exec": {"command": ["python", "-m", "common.activation", "--alive", ACTIVATOR_HEARTBEAT]},
             "periodSeconds": activation.RESOLVE_INTERVAL_SECONDS, "timeoutSeconds": 10, "failureThreshold": 3}
    container = {
        "name": ACTIVATE,
        "image": image,
        "command": ["python", "-m", "common.activation", "--namespace", namespace, "--selector", ACTIVATOR_SELECTOR,
                    "--heartbeat", ACTIVATOR_HEARTBEAT],
        "env": [HOME_ENV],
        "resources": _resources(ACTIVATOR_RESOURCES, JOB_EPHEMERAL_STORAGE_GIB),
        # Alive: a pass ended within the last few intervals (each pass rewrites the heartbeat).
        "livenessProbe": alive,
        "readinessProbe": alive,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "graphs-published", "mountPath": GRAPHS_MOUNT, "readOnly": True},
                         {"name": "kube-api-access", "mountPath": str(activation.SERVICE_ACCOUNT_DIR),
                          "readOnly": True},
                         TMP_VOLUME_MOUNT],
    }
    return {
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "nodeSelector": PLATFORM_CPU_SELECTOR,
                "serviceAccountName": ACTIVATOR,
                # The one pod of the stack that calls the API: its token is mounted explicitly, short-lived, and
                # its Role allows listing and patching pods of this namespace (infra/activation.py).
                "automountServiceAccountToken": False,
                "securityContext": _pod_security(),
                "containers": [container],
                "volumes": [_claim_volume("graphs-published", read_write_claim, read_only=True),
                            {"name": "kube-api-access", "projected": {"sources": [
                                {"serviceAccountToken": {"path": "token",
                                                         "expirationSeconds": SERVICE_ACCOUNT_TOKEN_SECONDS}},
                                {"configMap": {"name": "kube-root-ca.crt",
                                               "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
                            TMP_VOLUME],
            },
        },
    }


def autoscaler_spec(settings: WorkloadSettings, shape: Shape, deployment_name: str) -> dict:
    scale_up_period = scale_up_period_seconds(settings.serving_pool.instance_types, shape,
                                              settings.fast_snapshot_restore)
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

