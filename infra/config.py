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

from infra import catalog, versions
from infra.naming import PROJECT
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
        return catalog.instance(self.instance_types[0]).cores_per_device


@dataclass(frozen=True)
class CompileSettings:
    pool: str
    devices: int
    tensor_parallel: int
    timeout_minutes: int


@dataclass(frozen=True)
class ServingSettings:
    pool: str
    devices: int
    replicas: int
    max_replicas: int
    queue_size: int
    request_timeout_seconds: int


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
    # Never printed; equal configs deploy the same things whichever token fetches the weights.
    hf_token: SecretText = field(default=SecretText(""), repr=False, compare=False)

    @property
    def serving_pool(self) -> NeuronPool:
        return self.neuron_pools[self.serving.pool]

    @property
    def compile_pool(self) -> NeuronPool:
        return self.neuron_pools[self.compile.pool]


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
              "required; {pool (a neuronPools family), devices (valid for the pool), tensorParallel "
              "(1-32, at most the devices' cores), timeoutMinutes (10-1440)}"),
    ConfigKey("serving", {"replicas": 1, "queueSize": 4, "requestTimeoutSeconds": 120},
              "required; {pool (a neuronPools family), devices (valid for the pool, enough cores for "
              "compile.tensorParallel), replicas (1-100), maxReplicas (replicas-100; default replicas), "
              "queueSize (0-64), requestTimeoutSeconds (1-3600)}"),
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


def _devices(key: str, value: object, pool: NeuronPool) -> int:
    counts = pool.valid_device_counts
    _check(key, value, value in counts and not isinstance(value, bool),
           f"a device count that schedules on {pool.family} ({', '.join(pool.instance_types)}): "
           + ", ".join(map(str, counts)))
    _check(key, value, value <= pool.max_devices,
           f"at most the pool's maxDevices ({pool.max_devices})")
    return value  # type: ignore[return-value]


def _compile(reader: _Reader, pools: dict[str, NeuronPool]) -> CompileSettings:
    key = _key("compile")
    settings = {"timeoutMinutes": 360, **_object(
        key, reader.value("compile"), ("pool", "devices", "tensorParallel", "timeoutMinutes"))}
    pool = _pool_ref(f"{key}.pool", settings.get("pool"), pools)
    devices = _devices(f"{key}.devices", settings.get("devices"), pool)
    tensor_parallel = _int(f"{key}.tensorParallel", settings.get("tensorParallel"), 1, 32)
    cores = devices * pool.cores_per_device
    _check(f"{key}.tensorParallel", tensor_parallel, tensor_parallel <= cores,
           f"at most the NeuronCores of compile.devices: {devices} {pool.family} devices have {cores}")
    return CompileSettings(pool.family, devices, tensor_parallel,
                           _int(f"{key}.timeoutMinutes", settings["timeoutMinutes"], 10, 1440))


def _serving(reader: _Reader, pools: dict[str, NeuronPool], tensor_parallel: int) -> ServingSettings:
    key = _key("serving")
    settings = {"replicas": 1, "queueSize": 4, "requestTimeoutSeconds": 120, **_object(
        key, reader.value("serving"),
        ("pool", "devices", "replicas", "maxReplicas", "queueSize", "requestTimeoutSeconds"))}
    pool = _pool_ref(f"{key}.pool", settings.get("pool"), pools)
    devices = _devices(f"{key}.devices", settings.get("devices"), pool)
    cores = devices * pool.cores_per_device
    _check(f"{key}.devices", devices, cores >= tensor_parallel,
           f"enough NeuronCores for compile.tensorParallel {tensor_parallel}: {devices} {pool.family} devices "
           f"have {cores}")
    replicas = _int(f"{key}.replicas", settings["replicas"], 1, MAX_REPLICAS)
    max_replicas = _int(f"{key}.maxReplicas", settings.get("maxReplicas", replicas), replicas, MAX_REPLICAS,
                        f"an integer from serving.replicas ({replicas}) to {MAX_REPLICAS}")
    return ServingSettings(pool.family, devices, replicas, max_replicas,
                           _int(f"{key}.queueSize", settings["queueSize"], 0, 64),
                           _int(f"{key}.requestTimeoutSeconds", settings["requestTimeoutSeconds"], 1, 3600))


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
    compile_settings = _compile(reader, pools)
    return StackConfig(
        region=region,  # type: ignore[arg-type]
        kubernetes_version=kubernetes_version,
        model=model,
        dtype=dtype,
        neuron_pools=pools,
        compile=compile_settings,
        serving=_serving(reader, pools, compile_settings.tensor_parallel),
        shapes=_shapes(reader),
        network=_network(reader),
        existing_vpc=_existing_vpc(reader),
        system_nodes=_system_nodes(reader),
        image_uri=_image_uri(reader),
        ingress=_ingress(reader, region),  # type: ignore[arg-type]
        hf_token=_hf_token(reader),
    )


def raw_pulumi_config() -> dict[str, Any]:
    """Every config key of the running stack, as Pulumi hands them to the program; secrets as SecretText."""
    raw = {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    secret = set(pulumi.runtime.config.get_config_secret_keys_env())
    return {key: SecretText(value) if key in secret or pulumi.runtime.config.is_config_secret(key) else value
            for key, value in raw.items()}
