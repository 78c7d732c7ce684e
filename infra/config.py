"""The stack config schema: every key, its default and its rule, validated before any resource exists.

`load_stack_config` takes the raw Pulumi config (``namespace:key`` -> string, objects as JSON)
and returns a typed `StackConfig`, or raises `ConfigError` naming the key, the bad value and
what is allowed. `CONFIG_KEYS` is what docs/config.md documents (see infra.config_reference).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pulumi

from infra import catalog, sizing, versions
from infra.naming import PROJECT, graphs_bucket_prefix, stack_resource_name
from model.shapes import DTYPES, MAX_TEXT_LENGTH, Shape, parse_dtype, parse_shape

CAPACITY_TYPES = ("on-demand", "spot", "reserved")
MAX_REPLICAS = 100
_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_SYSTEM_INSTANCE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# registry/repository@sha256:<digest>: a tag can move, a digest cannot.
_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+@sha256:[0-9a-f]{64}$")
# HuggingFace access tokens: "hf_" and letters and digits.
_HF_TOKEN = re.compile(r"^hf_[A-Za-z0-9]{30,}$")
_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:(?P<region>[a-z0-9-]+):[0-9]{12}:certificate/[0-9a-f-]{36}$")
# IAM role ARNs, path included: EKS access entries take the role itself, not an assumed-role session.
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]{1,64})$")
_SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:(?P<region>[a-z0-9-]+):[0-9]{12}:[A-Za-z0-9_-]{1,256}$")
# Prometheus keeps its data on an emptyDir of a system node, whose root volume is EKS's default 20 GiB.
MAX_PROMETHEUS_STORAGE_GI = 8
# EKS accepts at most this many public access CIDR blocks.
MAX_PUBLIC_ACCESS_CIDRS = 40
OPEN_TO_ALL = "0.0.0.0/0"
# S3 general purpose bucket names: 3-63 lowercase letters, digits, dots and hyphens, alphanumeric at both ends.
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# Every AWS name the stack name goes into, and its length limit. IAM roles and everything else are
# named by Pulumi from the resource name plus a random suffix, whatever the stack.
STACK_NAME_LIMITS: tuple[tuple[str, Callable[[str], str], int], ...] = (
    ("the EKS cluster name", stack_resource_name, 100),
    ("Karpenter's SQS interruption queue, named after the cluster", stack_resource_name, 80),
    ("the ECR repository", stack_resource_name, 256),
    # S3 bucket names hold 63 characters; Pulumi's `bucket_prefix` leaves 26 for its unique suffix.
    ("the graph bucket's prefix", graphs_bucket_prefix, 37),
)
# What S3 bucket names (lowercase, no underscores), EKS cluster names (no dots) and ECR repository
# names (no repeated separators) all accept.
_STACK_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class StackNameError(pulumi.RunError):
    """The Pulumi stack name cannot name every AWS resource it is part of; printed without a traceback."""


def validate_stack_name(stack: str) -> None:
    """Refuse, before anything is created, a stack name that some AWS name it feeds would reject."""
    what, name, limit = min(STACK_NAME_LIMITS, key=lambda entry: entry[2] - len(entry[1]("")))
    longest = limit - len(name(""))
    if not (_STACK_NAME.match(stack) and len(stack) <= longest):
        raise StackNameError(
            f"stack name {stack!r} is not allowed: lowercase letters and digits, words joined by single "
            f"hyphens, at most {longest} characters ({what} {name('<stack>')!r} is limited to {limit})")


class SecretText(str):
    """A config value Pulumi holds as a secret (`pulumi config set --secret`): never echoed in messages."""


class ConfigError(pulumi.RunError):
    """A stack config value is not allowed; Pulumi prints the message without a traceback."""

    def __init__(self, key: str, value: object, allowed: str):
        shown = json.dumps(value) if not isinstance(value, str) else repr(value)
        super().__init__(f"config {key}: {shown} is not allowed: {allowed}")
        self.key = key


@dataclass(frozen=True)
class ModelSource:
    id: str
    revision: str
    max_text_length: int


@dataclass(frozen=True)
class NeuronPool:
    family: str
    instance_types: tuple[str, ...]
    capacity_types: tuple[str, ...]
    max_devices: int

    @property
    def valid_device_counts(self) -> tuple[int, ...]:
        return catalog.valid_device_counts(self.family, self.instance_types)

    @property
    def cores_per_device(self) -> int:
        return catalog.cores_per_device(self.family)


@dataclass(frozen=True)
class CompileSettings:
    pool: str
    devices: int  # what tensor_parallel needs (infra.sizing), unless extra_devices_reason says why more
    tensor_parallel: int
    timeout_minutes: int
    extra_devices_reason: str | None = None


@dataclass(frozen=True)
class ServingSettings:
    pool: str
    devices: int  # as CompileSettings.devices
    replicas: int
    max_replicas: int
    queue_size: int
    request_timeout_seconds: int
    extra_devices_reason: str | None = None


@dataclass(frozen=True)
class ExistingVpc:
    vpc_id: str
    private_subnet_ids: tuple[str, ...]
    public_subnet_ids: tuple[str, ...]


@dataclass(frozen=True)
class NetworkSettings:
    cidr: str
    availability_zones: int


@dataclass(frozen=True)
class SystemNodes:
    instance_type: str
    min_size: int
    desired_size: int
    max_size: int


@dataclass(frozen=True)
class IngressSettings:
    """Without a certificate the load balancer is internal: nothing is published over plain HTTP."""

    certificate_arn: str | None = None
    internal: bool = True


@dataclass(frozen=True)
class ClusterAccess:
    # EKS's own default, kept so that `pulumi up` works from any machine; the program warns about it.
    public_access_cidrs: list[str] = field(default_factory=lambda: [OPEN_TO_ALL])
    private_endpoint_only: bool = False
    admin_role_arns: list[str] = field(default_factory=list)

    @property
    def open_to_all(self) -> bool:
        return not self.private_endpoint_only and OPEN_TO_ALL in self.public_access_cidrs


@dataclass(frozen=True)
class MonitoringSettings:
    retention_days: int = 7
    storage_gi: int = 4
    # Where Alertmanager sends alerts; without it they are only visible in Alertmanager itself.
    alert_topic_arn: str | None = None

    @property
    def alert_topic_region(self) -> str | None:
        match = _SNS_TOPIC_ARN.match(self.alert_topic_arn) if self.alert_topic_arn else None
        return match["region"] if match else None


@dataclass(frozen=True)
class GraphCacheSettings:
    # Compiled graphs cost hours of accelerator time each: by default they outlive the stack.
    retain_on_destroy: bool = True
    # An existing cache bucket (another stack's) to use instead of creating one.
    bucket: str | None = None


@dataclass(frozen=True)
class StackConfig:
    region: str
    kubernetes_version: str
    model: ModelSource
    dtype: str
    neuron_pools: dict[str, NeuronPool]
    compile: CompileSettings
    serving: ServingSettings
    shapes: tuple[Shape, ...]
    network: NetworkSettings
    existing_vpc: ExistingVpc | None
    system_nodes: SystemNodes
    image_uri: str | None = None
    ingress: IngressSettings = IngressSettings()
    graph_cache: GraphCacheSettings = GraphCacheSettings()
    cluster: ClusterAccess = ClusterAccess()
    monitoring: MonitoringSettings = MonitoringSettings()
    # Never printed; equal configs deploy the same things whichever token fetches the weights.
    hf_token: SecretText = field(default=SecretText(""), repr=False, compare=False)

    @property
    def serving_pool(self) -> NeuronPool:
        return self.neuron_pools[self.serving.pool]

    @property
    def compile_pool(self) -> NeuronPool:
        return self.neuron_pools[self.compile.pool]

    @property
    def compile_plan(self) -> sizing.CompilePlan:
        """Workers compiling at once and the memory they need (validation made sure one fits)."""
        plan = sizing.compile_plan(self.compile_pool.instance_types, self.compile.devices,
                                   self.compile.tensor_parallel, self.dtype)
        assert plan is not None, "load_stack_config refuses a compile pool without room for one worker"
        return plan


@dataclass(frozen=True)
class ConfigKey:
    """One documented key: docs/config.md lists exactly these. A key the program cannot do without
    has a rule starting "required" (its default, if any, is that of the fields it may leave out)."""

    name: str
    default: object
    rule: str

    @property
    def full_name(self) -> str:
        """The key as the stack file spells it: project keys are namespaced."""
        return _key(self.name)


def _key(name: str) -> str:
    return name if ":" in name else f"{PROJECT}:{name}"


_DERIVED_DEVICES = ("the fewest the Neuron scheduler extension places on the pool (trn1, trn1n, trn2: 1, 4, 8, 16; "
                    "inf2: any) with a NeuronCore per compile.tensorParallel rank")

CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey("aws:region", None, "required; an AWS region such as us-west-2"),
    ConfigKey("kubernetesVersion", "1.33", f"one of {', '.join(versions.KUBERNETES_RELEASES)}"),
    ConfigKey("model", {"id": "black-forest-labs/FLUX.1-dev", "maxTextLength": 128},
              "required; {id, revision (40-hex commit, required), maxTextLength (1-512)}"),
    ConfigKey("dtype", "bfloat16", f"one of {', '.join(DTYPES)}"),
    ConfigKey("neuronPools", None,
              "required; map of family (" + ", ".join(catalog.NEURON_FAMILIES)
              + ") -> {instanceTypes (of that family; default all), capacityTypes "
              f"({', '.join(CAPACITY_TYPES)}; default [on-demand]), maxDevices (NodePool limit, required)}}"),
    ConfigKey("compile", {"timeoutMinutes": 360},
              "required; {pool (a neuronPools family with an instance type whose memory holds one compile worker), "
              "tensorParallel (" + ", ".join(map(str, sizing.tensor_parallel_degrees()))
              + ": divides the attention heads (" + sizing.sharded_heads()
              + "), and large enough that one rank per NeuronCore fits the serving pool's HBM), devices (default: " + _DERIVED_DEVICES + "), extraDevicesReason "
              "(why devices exceeds that default; required then, refused otherwise), timeoutMinutes (10-1440)}"),
    ConfigKey("serving", {"replicas": 1, "queueSize": 4, "requestTimeoutSeconds": 120},
              "required; {pool (a neuronPools family), devices (default: " + _DERIVED_DEVICES
              + "), extraDevicesReason (as compile's), replicas (1-100), maxReplicas (replicas-100; default "
              "replicas), queueSize (0-64), requestTimeoutSeconds (1-3600)}"),
    ConfigKey("shapes", None, "required; non-empty list of distinct shapes 'HxW' (height x width), "
              "each side a multiple of 16 in 64-2048"),
    ConfigKey("network", {"cidr": "10.0.0.0/16", "availabilityZones": 3},
              "{cidr (IPv4 /16-/20), availabilityZones (2-3)}; ignored with existingVpc"),
    ConfigKey("existingVpc", None, "optional {vpcId, privateSubnetIds (>=2), publicSubnetIds (>=2)}"),
    ConfigKey("systemNodes", {"instanceType": "m7i.xlarge", "minSize": 2, "desiredSize": 2, "maxSize": 4},
              "{instanceType, minSize (1-10), desiredSize (min-max), maxSize (min-10)}"),
    ConfigKey("image", None,
              "optional {uri}: a prebuilt image pinned by digest, 'registry/repository@sha256:<64 hex>'; "
              "without it `pulumi up` builds serving/Dockerfile and pushes it to the stack's ECR repository"),
    ConfigKey("hfToken", None,
              "required; a secret (`pulumi config set --secret hfToken hf_...`): a HuggingFace access token "
              "that can read the model, 'hf_' then letters and digits; only compile Jobs receive it"),
    ConfigKey("ingress", None,
              "optional {certificateArn (an ACM certificate ARN in the stack's region: HTTPS on 443, HTTP only "
              "redirects to it), internal (true: an internal load balancer, reachable from the VPC only; default "
              "true without certificateArn, false with it; false requires certificateArn: no internet-facing "
              "load balancer without TLS)}"),
    ConfigKey("graphCache", {"retainOnDestroy": True},
              "{retainOnDestroy (true: `pulumi destroy` leaves the bucket and its graphs, and `scripts/destroy` "
              "sets graphCache.bucket to it so the next `up` reuses them; false: destroy deletes the bucket "
              "with every object), bucket (optional: an existing graph-cache bucket in the stack's region, "
              "e.g. another stack's `graphsBucket` output, used instead of creating one and never deleted "
              "by this stack; not with retainOnDestroy false)}"),
    ConfigKey("cluster", {"publicAccessCidrs": [OPEN_TO_ALL], "privateEndpointOnly": False, "adminRoleArns": []},
              f"{{publicAccessCidrs (1-{MAX_PUBLIC_ACCESS_CIDRS} IPv4 CIDRs that may reach the public API endpoint; "
              f"{OPEN_TO_ALL}, the default, draws a warning on every `up`), privateEndpointOnly (true: no public "
              "endpoint at all, `pulumi up` and kubectl must run from inside the VPC; not with publicAccessCidrs), "
              "adminRoleArns (IAM role ARNs granted cluster admin through EKS access entries, each role name once)}"),
    ConfigKey("monitoring", {"retentionDays": 7, "storageGi": 4},
              f"{{retentionDays (1-30: how long Prometheus keeps samples), storageGi (1-{MAX_PROMETHEUS_STORAGE_GI}: "
              "the size of its data volume, an emptyDir on a system node; it keeps 80% of that at most), "
              "alertTopicArn (optional: an SNS topic ARN Alertmanager publishes every alert to; without it "
              "alerts are only visible in Alertmanager)}"),
)
_KNOWN = {key.full_name for key in CONFIG_KEYS}


class _Reader:
    """Reads one config value with a key path for messages."""

    def __init__(self, raw: Mapping[str, Any]):
        self._raw = raw

    def text(self, name: str, default: object = None) -> object:
        """The value as given: scalar keys stay strings ("1.30" is not the number 1.3)."""
        full = _key(name)
        text = self._raw.get(full)
        if text is None:
            if default is None:
                raise ConfigError(full, None, _rule(name))
            return default
        return text

    def value(self, name: str, default: object = None) -> object:
        """The value with objects and lists decoded from JSON."""
        text = self.text(name, default)
        if not isinstance(text, str):
            return text
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text


def _rule(name: str) -> str:
    return next(key.rule for key in CONFIG_KEYS if key.name == name)


def _check(key: str, value: object, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)


def _int(key: str, value: object, low: int, high: int, allowed: str = "") -> int:
    _check(key, value, isinstance(value, int) and not isinstance(value, bool) and low <= value <= high,
           allowed or f"an integer from {low} to {high}")
    return value  # type: ignore[return-value]


def _object(key: str, value: object, allowed_fields: tuple[str, ...]) -> dict:
    _check(key, value, isinstance(value, dict), f"an object with fields {', '.join(allowed_fields)}")
    unknown = sorted(set(value) - set(allowed_fields))  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", value[unknown[0]],  # type: ignore[index]
                          f"unknown field; allowed fields are {', '.join(allowed_fields)}")
    return value  # type: ignore[return-value]


def _string_list(key: str, value: object, pattern: re.Pattern[str], minimum: int, what: str) -> tuple[str, ...]:
    ok = isinstance(value, list) and len(value) >= minimum and all(
        isinstance(item, str) and pattern.match(item) for item in value)
    _check(key, value, ok, f"a list of at least {minimum} {what}")
    return tuple(value)  # type: ignore[arg-type]


def _parsed(key: str, value: object, parse: Callable[[object], Any]) -> Any:
    try:
        return parse(value)
    except ValueError as error:
        raise ConfigError(key, value, str(error).split(": expected ", 1)[-1]) from None


def _model(reader: _Reader) -> ModelSource:
    key = _key("model")
    merged = {"id": "black-forest-labs/FLUX.1-dev", "maxTextLength": 128,
              **_object(key, reader.value("model"), ("id", "revision", "maxTextLength"))}
    _check(f"{key}.id", merged["id"], isinstance(merged["id"], str) and merged["id"].count("/") == 1,
           "a HuggingFace model id 'owner/name'")
    revision = merged.get("revision")
    _check(f"{key}.revision", revision, isinstance(revision, str) and bool(_REVISION.match(revision)),
           "the 40-hex commit of the model revision (pinned so graphs never go stale)")
    return ModelSource(merged["id"], revision,  # type: ignore[arg-type]
                       _int(f"{key}.maxTextLength", merged["maxTextLength"], 1, MAX_TEXT_LENGTH))


def _pools(reader: _Reader) -> dict[str, NeuronPool]:
    key = _key("neuronPools")
    raw = reader.value("neuronPools")
    _check(key, raw, isinstance(raw, dict) and bool(raw),
           "a non-empty map keyed by family: " + ", ".join(catalog.NEURON_FAMILIES))
    pools = {}
    for family, settings in raw.items():  # type: ignore[union-attr]
        path = f"{key}.{family}"
        _check(path, family, family in catalog.NEURON_FAMILIES,
               "a Neuron family: " + ", ".join(catalog.NEURON_FAMILIES))
        settings = _object(path, settings, ("instanceTypes", "capacityTypes", "maxDevices"))
        family_types = [instance.name for instance in catalog.NEURON_FAMILIES[family]]
        instance_types = settings.get("instanceTypes", family_types)
        _check(f"{path}.instanceTypes", instance_types,
               isinstance(instance_types, list) and bool(instance_types)
               and all(name in family_types for name in instance_types),
               f"a non-empty list of {family} types: {', '.join(family_types)}")
        capacity_types = settings.get("capacityTypes", ["on-demand"])
        _check(f"{path}.capacityTypes", capacity_types,
               isinstance(capacity_types, list) and bool(capacity_types)
               and all(kind in CAPACITY_TYPES for kind in capacity_types),
               f"a non-empty list of capacity types: {', '.join(CAPACITY_TYPES)}")
        _check(f"{path}.maxDevices", settings.get("maxDevices"), "maxDevices" in settings,
               "required: the NodePool's limit on Neuron devices")
        pools[family] = NeuronPool(family, tuple(instance_types), tuple(capacity_types),
                                   _int(f"{path}.maxDevices", settings["maxDevices"], 1, 4096))
    return pools


def _pool_ref(key: str, value: object, pools: dict[str, NeuronPool]) -> NeuronPool:
    _check(key, value, isinstance(value, str) and value in pools,
           "one of the configured neuronPools: " + ", ".join(pools))
    return pools[value]  # type: ignore[index]


def _tensor_parallel(key: str, value: object, serving_pool: NeuronPool, dtype: str) -> int:
    degrees = sizing.tensor_parallel_degrees()
    _check(key, value, value in degrees and not isinstance(value, bool),
           f"one of {', '.join(map(str, degrees))}: a divisor of every sharded component's attention heads "
           f"(FLUX.1-dev: {sizing.sharded_heads()})")
    fitting = sizing.fitting_tensor_parallel(serving_pool.family, dtype)
    per_core = sizing.hbm_bytes_per_core(value, dtype) / sizing.GIB  # type: ignore[arg-type]
    _check(key, value, value in fitting,
           f"{' or '.join(map(str, fitting)) or 'no degree'} on {serving_pool.family} in {dtype} "
           f"(at {value} ranks, one per NeuronCore, core 0 would need {per_core:.1f} GiB of its "
           f"{catalog.HBM_GIB_PER_CORE[serving_pool.family]} GiB HBM)")
    return value  # type: ignore[return-value]


def _devices(section: str, settings: dict, pool: NeuronPool, tensor_parallel: int) -> tuple[int, str | None]:
    """The section's device count (derived from tensorParallel unless given) and the reason for more."""
    key, reason_key = f"{section}.devices", f"{section}.extraDevicesReason"
    needed = sizing.devices_for(pool.family, pool.instance_types, tensor_parallel)
    largest = max(catalog.instance(name).devices for name in pool.instance_types) * pool.cores_per_device
    _check(f"{section}.pool", pool.family, needed is not None,
           f"a pool with room for compile.tensorParallel {tensor_parallel} (a NeuronCore per rank): "
           f"{', '.join(pool.instance_types)} have at most {largest}")
    value = settings.get("devices", needed)
    counts = pool.valid_device_counts
    _check(key, value, value in counts and not isinstance(value, bool),
           f"a device count that schedules on {pool.family} ({', '.join(pool.instance_types)}): "
           + ", ".join(map(str, counts)))
    cores = value * pool.cores_per_device
    _check(key, value, cores >= tensor_parallel,
           f"enough NeuronCores for compile.tensorParallel {tensor_parallel}: "
           f"{value} {pool.family} devices have {cores}")
    reason = settings.get("extraDevicesReason")
    _check(reason_key, reason, reason is None or (isinstance(reason, str) and bool(reason.strip())),
           "a sentence saying why the pod needs more devices than its tensor-parallel ranks")
    _check(key, value, value == needed or reason is not None,
           f"{needed} {pool.family} devices hold compile.tensorParallel {tensor_parallel} (one rank per NeuronCore); "
           f"a larger count needs {reason_key} saying why")
    _check(reason_key, reason, reason is None or value != needed,
           f"only with {key} above the {needed} that compile.tensorParallel {tensor_parallel} needs")
    _check(key, value, value <= pool.max_devices, f"at most the pool's maxDevices ({pool.max_devices})")
    return value, reason  # type: ignore[return-value]


def _compile(settings: dict, pool: NeuronPool, tensor_parallel: int, dtype: str) -> CompileSettings:
    key = _key("compile")
    devices, reason = _devices(key, settings, pool, tensor_parallel)
    plan = sizing.compile_plan(pool.instance_types, devices, tensor_parallel, dtype)
    _check(f"{key}.pool", pool.family, plan is not None,
           f"a pool with an instance type of at least {sizing.compile_host_gib_needed(tensor_parallel, dtype)} GiB: "
           "one compile worker builds the whole transformer")
    return CompileSettings(pool.family, devices, tensor_parallel,
                           _int(f"{key}.timeoutMinutes", settings["timeoutMinutes"], 10, 1440), reason)


def _serving(settings: dict, pool: NeuronPool, tensor_parallel: int) -> ServingSettings:
    key = _key("serving")
    devices, reason = _devices(key, settings, pool, tensor_parallel)
    replicas = _int(f"{key}.replicas", settings["replicas"], 1, MAX_REPLICAS)
    max_replicas = _int(f"{key}.maxReplicas", settings.get("maxReplicas", replicas), replicas, MAX_REPLICAS,
                        f"an integer from serving.replicas ({replicas}) to {MAX_REPLICAS}")
    return ServingSettings(pool.family, devices, replicas, max_replicas,
                           _int(f"{key}.queueSize", settings["queueSize"], 0, 64),
                           _int(f"{key}.requestTimeoutSeconds", settings["requestTimeoutSeconds"], 1, 3600), reason)


_COMPILE_FIELDS = ("pool", "devices", "extraDevicesReason", "tensorParallel", "timeoutMinutes")
_SERVING_FIELDS = ("pool", "devices", "extraDevicesReason", "replicas", "maxReplicas", "queueSize",
                   "requestTimeoutSeconds")


def _shapes(reader: _Reader) -> tuple[Shape, ...]:
    key = _key("shapes")
    raw = reader.value("shapes")
    _check(key, raw, isinstance(raw, list) and bool(raw), "a non-empty list of shapes 'HxW'")
    shapes = tuple(_parsed(f"{key}[{index}]", text, parse_shape) for index, text in enumerate(raw))  # type: ignore[arg-type]
    for index, shape in enumerate(shapes):
        _check(f"{key}[{index}]", str(shape), shape not in shapes[:index], "each shape once")
    return shapes


def _network(reader: _Reader) -> NetworkSettings:
    key = _key("network")
    settings = {"cidr": "10.0.0.0/16", "availabilityZones": 3,
                **_object(key, reader.value("network", {}), ("cidr", "availabilityZones"))}
    try:
        network = ipaddress.IPv4Network(settings["cidr"])
    except (ValueError, TypeError):
        network = None
    _check(f"{key}.cidr", settings["cidr"], network is not None and 16 <= network.prefixlen <= 20,
           "an IPv4 network from /16 to /20, e.g. 10.0.0.0/16")
    return NetworkSettings(settings["cidr"], _int(f"{key}.availabilityZones", settings["availabilityZones"], 2, 3))


def _existing_vpc(reader: _Reader) -> ExistingVpc | None:
    key = _key("existingVpc")
    raw = reader.value("existingVpc", {})
    if raw == {}:
        return None
    settings = _object(key, raw, ("vpcId", "privateSubnetIds", "publicSubnetIds"))
    _check(f"{key}.vpcId", settings.get("vpcId"), bool(_VPC_ID.match(str(settings.get("vpcId")))),
           "a VPC id such as vpc-0123456789abcdef0")
    return ExistingVpc(
        settings["vpcId"],
        _string_list(f"{key}.privateSubnetIds", settings.get("privateSubnetIds"), _SUBNET_ID, 2, "subnet ids"),
        _string_list(f"{key}.publicSubnetIds", settings.get("publicSubnetIds"), _SUBNET_ID, 2, "subnet ids"),
    )


def _system_nodes(reader: _Reader) -> SystemNodes:
    key = _key("systemNodes")
    settings = {"instanceType": "m7i.xlarge", "minSize": 2, "desiredSize": 2, "maxSize": 4, **_object(
        key, reader.value("systemNodes", {}), ("instanceType", "minSize", "desiredSize", "maxSize"))}
    instance_type = settings["instanceType"]
    _check(f"{key}.instanceType", instance_type,
           isinstance(instance_type, str) and bool(_SYSTEM_INSTANCE.match(instance_type))
           and catalog.family_of(instance_type) not in catalog.NEURON_FAMILIES,
           "a general-purpose EC2 instance type such as m7i.xlarge (not a Neuron type)")
    min_size = _int(f"{key}.minSize", settings["minSize"], 1, 10)
    max_size = _int(f"{key}.maxSize", settings["maxSize"], min_size, 10,
                    f"an integer from systemNodes.minSize ({min_size}) to 10")
    desired = _int(f"{key}.desiredSize", settings["desiredSize"], min_size, max_size,
                   f"an integer from systemNodes.minSize ({min_size}) to systemNodes.maxSize ({max_size})")
    return SystemNodes(instance_type, min_size, desired, max_size)


def _image_uri(reader: _Reader) -> str | None:
    key = _key("image")
    settings = _object(key, reader.value("image", {}), ("uri",))
    uri = settings.get("uri")
    _check(f"{key}.uri", uri, uri is None or (isinstance(uri, str) and bool(_IMAGE_BY_DIGEST.match(uri))),
           "an image pinned by digest, 'registry/repository@sha256:<64 hex>' (a tag can move)")
    return uri


def _ingress(reader: _Reader, region: str) -> IngressSettings:
    key = _key("ingress")
    settings = _object(key, reader.value("ingress", {}), ("certificateArn", "internal"))
    arn = settings.get("certificateArn")
    match = _CERTIFICATE_ARN.match(arn) if isinstance(arn, str) else None
    _check(f"{key}.certificateArn", arn, arn is None or (match is not None and match["region"] == region),
           f"an ACM certificate ARN in {region} (a load balancer uses certificates of its own region), "
           f"arn:aws:acm:{region}:<account>:certificate/<id>")
    internal = settings.get("internal", arn is None)
    _check(f"{key}.internal", internal, isinstance(internal, bool), "true or false")
    _check(f"{key}.internal", internal, internal or arn is not None,
           f"true without {key}.certificateArn: an internet-facing load balancer serves HTTPS only")
    return IngressSettings(arn, internal)


def _graph_cache(reader: _Reader) -> GraphCacheSettings:
    key = _key("graphCache")
    settings = {"retainOnDestroy": True,
                **_object(key, reader.value("graphCache", {}), ("retainOnDestroy", "bucket"))}
    _check(f"{key}.retainOnDestroy", settings["retainOnDestroy"], isinstance(settings["retainOnDestroy"], bool),
           "true or false")
    bucket = settings.get("bucket")
    _check(f"{key}.bucket", bucket,
           bucket is None or (isinstance(bucket, str) and bool(_BUCKET_NAME.match(bucket))),
           "an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending "
           "with a letter or digit")
    _check(f"{key}.retainOnDestroy", settings["retainOnDestroy"], bucket is None or settings["retainOnDestroy"],
           "true with graphCache.bucket: that bucket is not this stack's to delete")
    return GraphCacheSettings(settings["retainOnDestroy"], bucket)


def _cluster(reader: _Reader) -> ClusterAccess:
    key = _key("cluster")
    settings = _object(key, reader.value("cluster", {}), ("publicAccessCidrs", "privateEndpointOnly", "adminRoleArns"))
    private = settings.get("privateEndpointOnly", False)
    _check(f"{key}.privateEndpointOnly", private, isinstance(private, bool), "true or false")
    cidrs = settings.get("publicAccessCidrs")
    _check(f"{key}.publicAccessCidrs", cidrs, not (private and cidrs is not None),
           "unset with privateEndpointOnly true: there is no public endpoint to open")
    cidrs = [OPEN_TO_ALL] if cidrs is None else cidrs
    _check(f"{key}.publicAccessCidrs", cidrs,
           isinstance(cidrs, list) and 1 <= len(cidrs) <= MAX_PUBLIC_ACCESS_CIDRS
           and all(isinstance(cidr, str) and _is_ipv4_network(cidr) for cidr in cidrs),
           f"a list of 1 to {MAX_PUBLIC_ACCESS_CIDRS} IPv4 networks such as 203.0.113.0/24 (host bits zero)")
    arns = settings.get("adminRoleArns", [])
    _check(f"{key}.adminRoleArns", arns,
           isinstance(arns, list) and all(isinstance(arn, str) and _ROLE_ARN.match(arn) for arn in arns),
           "a list of IAM role ARNs, arn:aws:iam::<account>:role/<name>")
    names = [_ROLE_ARN.match(arn)["name"] for arn in arns]  # type: ignore[index]
    for index, name in enumerate(names):
        _check(f"{key}.adminRoleArns[{index}]", arns[index], name not in names[:index],
               "each role name once (it names the access entry)")
    return ClusterAccess([] if private else cidrs, private, arns)


def admin_role_name(arn: str) -> str:
    """The role's name, without its path: what names the role's access entry."""
    return _ROLE_ARN.match(arn)["name"]  # type: ignore[index]


def _is_ipv4_network(text: str) -> bool:
    try:
        ipaddress.IPv4Network(text)
    except ValueError:
        return False
    return True


def _monitoring(reader: _Reader) -> MonitoringSettings:
    key = _key("monitoring")
    settings = {"retentionDays": 7, "storageGi": 4,
                **_object(key, reader.value("monitoring", {}), ("retentionDays", "storageGi", "alertTopicArn"))}
    topic = settings.get("alertTopicArn")
    _check(f"{key}.alertTopicArn", topic,
           topic is None or (isinstance(topic, str) and bool(_SNS_TOPIC_ARN.match(topic))),
           "an SNS topic ARN, arn:aws:sns:<region>:<account>:<topic>")
    return MonitoringSettings(_int(f"{key}.retentionDays", settings["retentionDays"], 1, 30),
                              _int(f"{key}.storageGi", settings["storageGi"], 1, MAX_PROMETHEUS_STORAGE_GI), topic)


def _hf_token(reader: _Reader) -> SecretText:
    key = _key("hfToken")
    token = reader.text("hfToken")
    # The value itself is never shown: a token pasted in plain text is still a token.
    if not isinstance(token, SecretText):
        raise ConfigError(key, "[not shown]", "a secret: set it with `pulumi config set --secret hfToken hf_...`")
    if not _HF_TOKEN.match(token):
        raise ConfigError(key, "[secret]", "a HuggingFace access token, 'hf_' then letters and digits")
    return token


def load_stack_config(raw: Mapping[str, Any]) -> StackConfig:
    """Validate the raw config of one stack; the first problem raises ConfigError."""
    for full_key in sorted(raw):
        if full_key.startswith(f"{PROJECT}:"):
            shown = "[secret]" if isinstance(raw[full_key], SecretText) else raw[full_key]
            _check(full_key, shown, full_key in _KNOWN, "unknown key; known keys are " + ", ".join(sorted(_KNOWN)))
    reader = _Reader(raw)
    region = reader.text("aws:region")
    _check("aws:region", region, isinstance(region, str) and bool(_REGION.match(region)),
           "an AWS region such as us-west-2")
    kubernetes_version = reader.text("kubernetesVersion", "1.33")
    _check(_key("kubernetesVersion"), kubernetes_version,
           isinstance(kubernetes_version, str) and kubernetes_version in versions.KUBERNETES_RELEASES,
           "one of " + ", ".join(versions.KUBERNETES_RELEASES) + " (the minors whose add-ons are pinned)")
    model = _model(reader)
    dtype = _parsed(_key("dtype"), reader.text("dtype", "bfloat16"), parse_dtype)
    pools = _pools(reader)
    compile_key, serving_key = _key("compile"), _key("serving")
    compile_raw = {"timeoutMinutes": 360, **_object(compile_key, reader.value("compile"), _COMPILE_FIELDS)}
    serving_raw = {"replicas": 1, "queueSize": 4, "requestTimeoutSeconds": 120,
                   **_object(serving_key, reader.value("serving"), _SERVING_FIELDS)}
    compile_pool = _pool_ref(f"{compile_key}.pool", compile_raw.get("pool"), pools)
    serving_pool = _pool_ref(f"{serving_key}.pool", serving_raw.get("pool"), pools)
    # One degree for both: the graphs are compiled for the ranks that serve them.
    tensor_parallel = _tensor_parallel(f"{compile_key}.tensorParallel", compile_raw.get("tensorParallel"),
                                       serving_pool, dtype)
    return StackConfig(
        region=region,  # type: ignore[arg-type]
        kubernetes_version=kubernetes_version,
        model=model,
        dtype=dtype,
        neuron_pools=pools,
        compile=_compile(compile_raw, compile_pool, tensor_parallel, dtype),
        serving=_serving(serving_raw, serving_pool, tensor_parallel),
        shapes=_shapes(reader),
        network=_network(reader),
        existing_vpc=_existing_vpc(reader),
        system_nodes=_system_nodes(reader),
        image_uri=_image_uri(reader),
        ingress=_ingress(reader, region),  # type: ignore[arg-type]
        graph_cache=_graph_cache(reader),
        cluster=_cluster(reader),
        monitoring=_monitoring(reader),
        hf_token=_hf_token(reader),
    )


def raw_pulumi_config() -> dict[str, Any]:
    """Every config key of the running stack, as Pulumi hands them to the program; secrets as SecretText."""
    raw = {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    secret = set(pulumi.runtime.config.get_config_secret_keys_env())
    return {key: SecretText(value) if key in secret or pulumi.runtime.config.is_config_secret(key) else value
            for key, value in raw.items()}
