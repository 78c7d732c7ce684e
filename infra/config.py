"""The stack config schema: every key, its default and its rule, validated before any resource exists.

The schema is a set of frozen pydantic models, declared once: each field holds its type, default,
bounds and the text a message gives when it is refused; each top-level key's description is its
rule in docs/config.md; rules across fields are the models' validators. `load_stack_config` takes
the raw Pulumi config (``namespace:key`` -> string, objects as JSON) and returns a `StackConfig`,
or raises `ConfigError` naming the key, the bad value and what is allowed (pydantic's first error,
translated). `CONFIG_KEYS`, derived from `StackConfig`, is what docs/config.md documents (see
planning.config_reference).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Mapping

import pulumi
from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr, ValidationError,
    ValidationInfo, ValidatorFunctionWrapHandler, WrapValidator, field_validator, model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError, PydanticUndefined

from infra import catalog, disruption, regions, sizing, versions
from infra.naming import CPU_NODEPOOL, ON_DEMAND, PROJECT, SPOT, graphs_bucket_prefix, stack_resource_name
from common.adapters import COMMIT, MERGING_FAMILIES, REPOSITORY, SCALE_RULE, WEIGHT_FILE, Adapter, allowed_scale
from common.neuron import DATA_PARALLEL_DEGREES, NXDI, NXDI_TEXT_LENGTH, TRN2, compile_api
from common.shapes import DTYPES, MAX_TEXT_LENGTH, Shape, parse_dtype, parse_shape

# Karpenter launches into a capacity reservation only when the EC2NodeClass selects it (its ReservedCapacity
# feature gate, on by default since v1.6); the pools share one EC2NodeClass, whose
# capacityReservationSelectorTerms the CRD caps at this many.
RESERVED = "reserved"
CAPACITY_TYPES = (ON_DEMAND, SPOT, RESERVED)
MAX_CAPACITY_RESERVATIONS = 30
_CAPACITY_RESERVATION_ID = re.compile(r"^cr-[0-9a-z]+$")
MAX_REPLICAS = 100
# A bound on a Neuron pool's device limit that only a typo reaches: 256 trn1.32xlarge.
MAX_DEVICES = 4096
_VPC_ID = re.compile(r"^vpc-[0-9a-f]{8,17}$")
_SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_ZONE_NAME = re.compile(r"^[a-z]{2}-[a-z]+-\d[a-z]$")
_SYSTEM_INSTANCE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
# registry/repository@sha256:<digest>: a tag can move, a digest cannot.
_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9.-]*(:[0-9]+)?(/[a-z0-9][a-z0-9._-]*)+@sha256:[0-9a-f]{64}$")
# HuggingFace access tokens: "hf_" and letters and digits.
_HF_TOKEN = re.compile(r"^hf_[A-Za-z0-9]{30,}$")
_CERTIFICATE_ARN = re.compile(r"^arn:aws[a-z-]*:acm:(?P<region>[a-z0-9-]+):[0-9]{12}:certificate/[0-9a-f-]{36}$")
# IAM role ARNs, path included: EKS access entries take the role itself, not an assumed-role session.
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]{1,64})$")
_SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:(?P<region>[a-z0-9-]+):[0-9]{12}:[A-Za-z0-9_-]{1,256}$")
# Prometheus keeps its data on a gp3 volume of its own (infra.cluster's StorageClass); a few serving pods
# and kube-state-metrics at 15 s fill well under a GiB a day, so this bounds a typo, not a need.
MAX_PROMETHEUS_STORAGE_GI = 200
# The retention periods CloudWatch Logs accepts (PutRetentionPolicy), in days; "never expire" is left out.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                      2922, 3288, 3653)
# EKS accepts at most this many public access CIDR blocks.
MAX_PUBLIC_ACCESS_CIDRS = 40
OPEN_TO_ALL = "0.0.0.0/0"
# ECR repository names (CreateRepository's pattern), at most 256 characters.
_ECR_REPOSITORY = re.compile(r"^(?=.{2,256}$)(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*$")
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


def validate_project_name(project: str) -> None:
    """AWS names are `<PROJECT>-<stack>` and config keys `<PROJECT>:<key>`: refuse a Pulumi project named
    otherwise, whose names would silently be another project's (and whose stack files no key would match)."""
    if project != PROJECT:
        raise StackNameError(
            f"Pulumi project {project!r} is not allowed: this program names its AWS resources {PROJECT}-<stack> "
            f"and reads config keys {PROJECT}:<key> (PROJECT in infra/naming.py): name the project {PROJECT} in "
            "Pulumi.yaml, or rename PROJECT and the stack files' keys with it, so two projects never share names")


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


def _key(name: str) -> str:
    return name if ":" in name else f"{PROJECT}:{name}"


# ---- How a field says what it allows ------------------------------------------------------------
# Every field's rule lives on the field: its type and bounds for pydantic, and `allowed`, the text a
# message gives when pydantic refuses the value (or `missing`, when it is left out). A field that is
# `whole` is judged as one value: a bad item names the list, as the rule is about the list.


def _rule(allowed: str, *, missing: str | None = None, whole: bool = False, **field: Any) -> Any:
    return Field(**field, json_schema_extra={"allowed": allowed, "missing": missing or allowed, "whole": whole})


def _integer(low: int, high: int, **field: Any) -> Any:
    return _rule(f"an integer from {low} to {high}", ge=low, le=high, **field)


_AS_GIVEN = object()


def _not_allowed(allowed: str, *at: str | int, value: object = _AS_GIVEN) -> PydanticCustomError:
    """A rule a validator enforces: `at` names the field (or item) below the value validated, if the rule is
    about that one, and `value` what to show when it is not the value as given."""
    shown = {} if value is _AS_GIVEN else {"value": value}
    return PydanticCustomError("not_allowed", "{allowed}", {"allowed": allowed, "at": at, **shown})


def _that(check: Callable[[Any], bool]) -> AfterValidator:
    """The field's own rule, for what its type cannot say."""
    def validate(value: Any) -> Any:
        if not check(value):
            raise ValueError("not allowed")
        return value
    return AfterValidator(validate)


def _parsed_by(parse: Callable[[object], Any], parsed_type: type | None = None) -> PlainValidator:
    """Parsed by the function the runtime uses too; its error says what is allowed."""
    def validate(value: object) -> Any:
        if parsed_type is not None and isinstance(value, parsed_type):
            return value
        try:
            return parse(value)
        except ValueError as error:
            raise _not_allowed(str(error).split(": expected ", 1)[-1]) from None
    return PlainValidator(validate)


def _from_earlier(field: str, name: str, high: int) -> WrapValidator:
    """An integer from the value of a field validated before it (spelt `name` in messages) to `high`."""
    def validate(value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        low = info.data.get(field)
        if low is None:  # refused itself: that error comes first
            return handler(value)
        allowed = f"an integer from {name} ({low}) to {high}"
        try:
            number = handler(value)
        except ValidationError:
            raise _not_allowed(allowed) from None
        if not low <= number <= high:
            raise _not_allowed(allowed)
        return number
    return WrapValidator(validate)


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda text: bool(pattern.match(text))


def _is_ipv4_network(text: str) -> bool:
    try:
        ipaddress.IPv4Network(text)
    except ValueError:
        return False
    return True


def _cidr_in_range(text: str) -> bool:
    return _is_ipv4_network(text) and 16 <= ipaddress.IPv4Network(text).prefixlen <= 20


class _Section(BaseModel):
    """A config object: camelCase fields as the stack file spells them, snake_case attributes, frozen."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel,
                              validate_by_name=True, validate_by_alias=True)

    def __init__(self, /, *values: Any, **fields: Any) -> None:
        """Fields by position too, in their order, as the dataclasses these models replaced took them."""
        super().__init__(**dict(zip(type(self).model_fields, values)), **fields)

    @classmethod
    def user_fields(cls) -> tuple[str, ...]:
        """The fields a stack file may set, as it spells them."""
        return tuple(field.alias or name for name, field in cls.model_fields.items() if not field.exclude)


_TRUE_OR_FALSE = "true or false"
_SCHEDULES_ON = "a device count that schedules on {family} ({types}): {counts}"
_FAMILY = "a Neuron family: " + ", ".join(catalog.NEURON_FAMILIES)
_DERIVED_DEVICES = ("the fewest the Neuron scheduler extension places on the pool (trn1, trn1n, trn2: 1, 4, 8, 16; "
                    "inf2: any) with a NeuronCore per rank: compile.tensorParallel ranks, on trn2 (4 logical "
                    "NeuronCores per device) twice that with contextParallel or cfgParallel 2")


def _neuron_family(family: str) -> str:
    if family not in catalog.NEURON_FAMILIES:
        raise _not_allowed(_FAMILY)
    return family


def _family_types(family: object) -> tuple[str, ...]:
    return tuple(instance.name for instance in catalog.NEURON_FAMILIES.get(family, ()))  # type: ignore[call-overload]


# How many adapters one stack merges: each is a download and a pass over the weights in the weights Job.
MAX_LORAS = 8
_GATED = ("true or false: whether the HuggingFace repository is gated (its files need an accepted license and a "
          "token); hfToken is then required, and only the Jobs that read a gated repository mount it")


_SCALE = f"{SCALE_RULE}: the update is added as scale x (alpha / rank) x BA (diffusers' fuse_lora lora_scale)"


def _adapter_scale(scale: object) -> float:
    if not allowed_scale(scale):
        raise _not_allowed(_SCALE)
    return float(scale)  # type: ignore[arg-type]


class LoraSource(_Section):
    """A LoRA adapter merged into the weights the stack serves (common/adapters.py, model/adapters.py)."""

    id: Annotated[StrictStr, _that(_matches(REPOSITORY))] = _rule(
        "a HuggingFace repository id 'owner/name'", missing="required: the adapter's HuggingFace repository id")
    revision: Annotated[StrictStr, _that(_matches(COMMIT))] = _rule(
        "the 40-hex commit of the adapter's repository (pinned so the weights never go stale)")
    file: Annotated[StrictStr, _that(_matches(WEIGHT_FILE))] | None = _rule(
        "a .safetensors file of the repository, by its path there (required when the repository holds several)",
        default=None)
    scale: Annotated[float, PlainValidator(_adapter_scale)] = _rule(_SCALE)
    gated: StrictBool = _rule(_GATED, default=False)

    @property
    def adapter(self) -> Adapter:
        return Adapter(self.id, self.revision, self.scale, self.file)


class ModelSource(_Section):
    id: Annotated[StrictStr, _that(_matches(REPOSITORY))] = _rule(
        "a HuggingFace model id 'owner/name'", default="black-forest-labs/FLUX.1-dev")
    revision: Annotated[StrictStr, _that(_matches(COMMIT))] = _rule(
        "the 40-hex commit of the model revision (pinned so graphs never go stale)")
    max_text_length: StrictInt = _integer(1, MAX_TEXT_LENGTH, default=128)
    gated: StrictBool = _rule(_GATED, default=True)
    loras: tuple[LoraSource, ...] = _rule(
        f"a list of at most {MAX_LORAS} adapters, each repository file once", max_length=MAX_LORAS,
        default=())

    @field_validator("loras")
    @classmethod
    def _each_adapter_once(cls, loras: tuple[LoraSource, ...]) -> tuple[LoraSource, ...]:
        """An adapter listed twice is merged twice: one entry with the summed scale says that plainly."""
        for index, lora in enumerate(loras):
            if any((lora.id, lora.file) == (earlier.id, earlier.file) for earlier in loras[:index]):
                raise _not_allowed("each repository file once (scales add up: give one entry their sum)", index,
                                   "id", value=lora.id)
        return loras

    @property
    def adapters(self) -> tuple[Adapter, ...]:
        return tuple(lora.adapter for lora in self.loras)

    @property
    def needs_hf_token(self) -> bool:
        return self.gated or any(lora.gated for lora in self.loras)


class NeuronPool(_Section):
    # The neuronPools key the pool is configured under, not a field of its own.
    family: Annotated[str, AfterValidator(_neuron_family)] = Field(exclude=True)
    instance_types: tuple[StrictStr, ...] = _rule(
        "a non-empty list of the family's instance types", whole=True,
        default_factory=lambda fields: _family_types(fields.get("family")))
    capacity_types: Annotated[tuple[StrictStr, ...], _that(lambda kinds: all(kind in CAPACITY_TYPES for kind in kinds))] = (
        _rule(f"a non-empty list of capacity types: {', '.join(CAPACITY_TYPES)}", whole=True, min_length=1,
              default=("on-demand",)))
    max_devices: StrictInt = _integer(1, MAX_DEVICES, missing="required: the NodePool's limit on Neuron devices")
    # On-Demand Capacity Reservations (ODCRs, Capacity Blocks) of the pool's types that `reserved` launches into.
    capacity_reservation_ids: tuple[Annotated[StrictStr, _that(_matches(_CAPACITY_RESERVATION_ID))], ...] = _rule(
        f"a list of at most {MAX_CAPACITY_RESERVATIONS} capacity reservation ids such as cr-0123456789abcdef0",
        whole=True, max_length=MAX_CAPACITY_RESERVATIONS, default=())

    @model_validator(mode="after")
    def _reservations_with_reserved(self) -> NeuronPool:
        """`reserved` launches only into selected reservations, and selected ones serve only `reserved`."""
        reserved = RESERVED in self.capacity_types
        if reserved and not self.capacity_reservation_ids:
            raise _not_allowed(
                f"{RESERVED} only with capacityReservationIds: Karpenter launches into the capacity reservations "
                "the EC2NodeClass selects, and selects none without them", "capacityTypes",
                value=list(self.capacity_types))
        if self.capacity_reservation_ids and not reserved:
            raise _not_allowed(f"only with {RESERVED} in capacityTypes", "capacityReservationIds",
                               value=list(self.capacity_reservation_ids))
        return self

    @field_validator("instance_types", mode="wrap")
    @classmethod
    def _of_the_family(cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        family = info.data.get("family")
        family_types = _family_types(family)
        allowed = f"a non-empty list of {family} types: {', '.join(family_types)}"
        try:
            instance_types = handler(value)
        except ValidationError:
            raise _not_allowed(allowed) from None
        if not instance_types or not set(instance_types) <= set(family_types):
            raise _not_allowed(allowed)
        return instance_types

    @model_validator(mode="after")
    def _spot_over_an_on_demand_base(self) -> NeuronPool:
        if SPOT in self.capacity_types and ON_DEMAND not in self.capacity_types:
            raise _not_allowed(f"a list with {ON_DEMAND} too when it has {SPOT}: the pool's base (serving.replicas, "
                               f"the rollout surge, graphs Jobs compiling on it) runs on-demand, Spot only holds serving burst",
                               "capacityTypes", value=list(self.capacity_types))
        return self

    @property
    def allows_spot(self) -> bool:
        """Spot allowed: the family gets an on-demand base NodePool and a Spot NodePool for serving burst."""
        return SPOT in self.capacity_types

    @property
    def base_capacity_types(self) -> tuple[str, ...]:
        """The capacity types of the family's only NodePool, or of its base one when it allows Spot."""
        return tuple(kind for kind in self.capacity_types if kind != SPOT)

    @property
    def largest_node_devices(self) -> int:
        return max(catalog.instance(name).devices for name in self.instance_types)

    @property
    def valid_device_counts(self) -> tuple[int, ...]:
        return catalog.valid_device_counts(self.family, self.instance_types)

    @property
    def cores_per_device(self) -> int:
        return catalog.cores_per_device(self.family)

    @property
    def schedulable_counts(self) -> str:
        """What a device count on this pool may be, for messages."""
        return _SCHEDULES_ON.format(family=self.family, types=", ".join(self.instance_types),
                                    counts=", ".join(map(str, self.valid_device_counts)))


# Device-less compiles (NxD's ModelBuilder traces on the CPU and neuronx-cc compiles for a --target without a
# NeuronCore) run on the cpu NodePool: compile.pool `cpu`.
CPU_COMPILE_POOL = CPU_NODEPOOL
# StackConfig checks the pool and the devices against the configured pools.
_POOL = _rule("a configured neuronPools family")
_DEVICES = _rule("a device count that schedules on the pool", default=None)
_EXTRA_DEVICES_REASON = _rule("a sentence saying why the pod needs more devices than its tensor-parallel ranks",
                              default=None)
_TENSOR_PARALLEL = (f"one of {', '.join(map(str, sizing.tensor_parallel_degrees()))}: a divisor of every sharded "
                    f"component's attention heads (FLUX.1-dev: {sizing.sharded_heads()})")
_Reason = Annotated[StrictStr, _that(lambda reason: bool(reason.strip()))]
_DATA_PARALLEL = (f"{' or '.join(map(str, DATA_PARALLEL_DEGREES))}: NxD Inference's Flux application splits the "
                  "backbone in two at most")
_DataParallel = Annotated[StrictInt, _that(lambda degree: degree in DATA_PARALLEL_DEGREES)]


class CompileSettings(_Section):
    pool: StrictStr = _rule(f"{CPU_COMPILE_POOL} or serving.pool's family", default=CPU_COMPILE_POOL)
    # What tensor_parallel needs on the pool (infra.sizing), unless extra_devices_reason says why more;
    # StackConfig derives it when it is not given.
    devices: StrictInt | None = _DEVICES
    extra_devices_reason: _Reason | None = _EXTRA_DEVICES_REASON
    tensor_parallel: Annotated[StrictInt, _that(lambda degree: degree in sizing.tensor_parallel_degrees())] = (
        _rule(_TENSOR_PARALLEL))
    # trn2 only (NxD Inference's Flux application): the backbone's image and text tokens, or its true-CFG batch,
    # split over two groups of tensor_parallel ranks. StackConfig refuses either on another family.
    context_parallel: _DataParallel = _rule(_DATA_PARALLEL, default=1)
    cfg_parallel: _DataParallel = _rule(_DATA_PARALLEL, default=1)
    timeout_minutes: StrictInt = _integer(10, 1440, default=360)

    @model_validator(mode="after")
    def _context_or_cfg(self) -> CompileSettings:
        if self.context_parallel > 1 and self.cfg_parallel > 1:
            raise _not_allowed(f"1 with compile.contextParallel {self.context_parallel}: NxD Inference's Flux "
                               "application splits the backbone by context or by CFG, not both", "cfgParallel",
                               value=self.cfg_parallel)
        return self

    def ranks(self, family: str) -> sizing.Ranks:
        """The ranks the graphs run on when serving on `family`, one per (logical) NeuronCore."""
        return sizing.Ranks.of(family, self.tensor_parallel, self.context_parallel, self.cfg_parallel)

    @property
    def split_text(self) -> str | None:
        """The data-parallel split set, for messages: 'compile.contextParallel 2' (None: neither)."""
        if self.context_parallel > 1:
            return f"compile.contextParallel {self.context_parallel}"
        return f"compile.cfgParallel {self.cfg_parallel}" if self.cfg_parallel > 1 else None

    def ranks_text(self, family: str) -> str:
        """What decides the ranks, for messages: 'compile.tensorParallel 8', or on trn2 with a data-parallel split
        'the 8 ranks of compile.tensorParallel 4 x compile.contextParallel 2'."""
        count = self.ranks(family).count
        if count == self.tensor_parallel:
            return f"compile.tensorParallel {self.tensor_parallel}"
        return f"the {count} ranks of compile.tensorParallel {self.tensor_parallel} x {self.split_text}"


class ServingSettings(_Section):
    pool: StrictStr = _POOL
    devices: StrictInt | None = _DEVICES  # as compile's
    extra_devices_reason: _Reason | None = _EXTRA_DEVICES_REASON
    replicas: StrictInt = _integer(1, MAX_REPLICAS, default=1)
    max_replicas: Annotated[StrictInt, _from_earlier("replicas", "serving.replicas", MAX_REPLICAS)] = _rule(
        f"an integer from serving.replicas to {MAX_REPLICAS}", default_factory=lambda fields: fields.get("replicas"))
    queue_size: StrictInt = _integer(0, 64, default=4)
    request_timeout_seconds: StrictInt = _integer(1, 3600, default=120)



class ExistingVpc(_Section):
    vpc_id: Annotated[StrictStr, _that(_matches(_VPC_ID))] = _rule("a VPC id such as vpc-0123456789abcdef0")
    private_subnet_ids: tuple[Annotated[StrictStr, _that(_matches(_SUBNET_ID))], ...] = _rule(
        "a list of at least 2 subnet ids", whole=True, min_length=2)
    public_subnet_ids: tuple[Annotated[StrictStr, _that(_matches(_SUBNET_ID))], ...] = _rule(
        "a list of at least 2 subnet ids", whole=True, min_length=2)


class NetworkSettings(_Section):
    cidr: Annotated[StrictStr, _that(_cidr_in_range)] = _rule(
        "an IPv4 network from /16 to /20, e.g. 10.0.0.0/16", default="10.0.0.0/16")
    availability_zones: StrictInt = _integer(2, 3, default=3)
    # The zones themselves, once chosen: derived zones follow EC2's offerings at every `up`, and a zone
    # that starts offering a type earlier in name order would move subnets (docs/upgrades.md, "Zones").
    zones: tuple[Annotated[StrictStr, _that(_matches(_ZONE_NAME))], ...] | None = _rule(
        "a list of 2 or 3 distinct availability zone names of the region, e.g. [us-west-2b, us-west-2c]",
        whole=True, min_length=2, max_length=3, default=None)

    @model_validator(mode="after")
    def _zones_once_and_counted(self) -> NetworkSettings:
        if self.zones is None:
            return self
        if len(set(self.zones)) != len(self.zones):
            raise _not_allowed("a list of 2 or 3 distinct availability zone names of the region", "zones",
                               value=list(self.zones))
        if "availability_zones" in self.model_fields_set and self.availability_zones != len(self.zones):
            raise _not_allowed(f"unset, or the number of network.zones ({len(self.zones)})", "availabilityZones",
                               value=self.availability_zones)
        return self

    @property
    def zone_count(self) -> int:
        return len(self.zones) if self.zones is not None else self.availability_zones


class SystemNodes(_Section):
    instance_type: Annotated[StrictStr, _that(
        lambda name: bool(_SYSTEM_INSTANCE.match(name)) and catalog.family_of(name) not in catalog.NEURON_FAMILIES)] = (
        _rule("a general-purpose EC2 instance type such as m7i.xlarge (not a Neuron type)", default="m7i.xlarge"))
    min_size: StrictInt = _integer(1, 10, default=2)
    desired_size: StrictInt = _rule("an integer from systemNodes.minSize to systemNodes.maxSize", default=2)
    max_size: Annotated[StrictInt, _from_earlier("min_size", "systemNodes.minSize", 10)] = _rule(
        "an integer from systemNodes.minSize to 10", default=4, validate_default=True)

    @model_validator(mode="after")
    def _desired_within_the_bounds(self) -> SystemNodes:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise _not_allowed(f"an integer from systemNodes.minSize ({self.min_size}) to systemNodes.maxSize "
                               f"({self.max_size})", "desiredSize", value=self.desired_size)
        return self


def _retained_when_reused(reused_key: str, reused: str | None, retain_on_destroy: bool) -> None:
    """A resource named in config (`section.field`) already existed: destroy must leave it."""
    if reused is not None and not retain_on_destroy:
        raise _not_allowed(f"true with {reused_key}: that {reused_key.split('.')[1]} is not this stack's to delete",
                           "retainOnDestroy", value=retain_on_destroy)


class ImageSettings(_Section):
    uri: Annotated[StrictStr, _that(_matches(_IMAGE_BY_DIGEST))] | None = _rule(
        "an image pinned by digest, 'registry/repository@sha256:<64 hex>' (a tag can move)", default=None)
    # Built images are kept across `destroy`/`up` like the graph cache: the repository outlives the stack.
    retain_on_destroy: StrictBool = _rule(_TRUE_OR_FALSE, default=True)
    # An existing repository (this stack's, kept by an earlier destroy, or another stack's) to push to.
    repository: Annotated[StrictStr, _that(_matches(_ECR_REPOSITORY))] | None = _rule(
        "an ECR repository name in the stack's region: 2-256 lowercase letters, digits and single . _ - or / "
        "between them", default=None)

    @model_validator(mode="after")
    def _repository_only_when_building(self) -> ImageSettings:
        if self.repository is not None and self.uri is not None:
            raise _not_allowed("unset with image.uri: a prebuilt image is pushed nowhere", "repository",
                               value=self.repository)
        _retained_when_reused("image.repository", self.repository, self.retain_on_destroy)
        return self


class IngressSettings(_Section):
    """Without a certificate the load balancer is internal: nothing is published over plain HTTP."""

    # Checked against the stack's region by StackConfig.
    certificate_arn: StrictStr | None = _rule("an ACM certificate ARN in the stack's region", default=None)
    internal: StrictBool = _rule(_TRUE_OR_FALSE, default_factory=lambda fields: fields.get("certificate_arn") is None)

    @model_validator(mode="after")
    def _tls_when_internet_facing(self) -> IngressSettings:
        if not self.internal and self.certificate_arn is None:
            raise _not_allowed(f"true without {_key('ingress')}.certificateArn: an internet-facing load balancer "
                               "serves HTTPS only", "internal", value=self.internal)
        return self


class GraphCacheSettings(_Section):
    # Compiled graphs cost hours of accelerator time each: by default they outlive the stack.
    retain_on_destroy: StrictBool = _rule(_TRUE_OR_FALSE, default=True)
    # An existing cache bucket (another stack's) to use instead of creating one.
    bucket: Annotated[StrictStr, _that(_matches(_BUCKET_NAME))] | None = _rule(
        "an S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter "
        "or digit", default=None)

    @model_validator(mode="after")
    def _kept_when_not_ours(self) -> GraphCacheSettings:
        _retained_when_reused("graphCache.bucket", self.bucket, self.retain_on_destroy)
        return self


_PUBLIC_ACCESS_CIDRS = f"a list of 1 to {MAX_PUBLIC_ACCESS_CIDRS} IPv4 networks such as 203.0.113.0/24 (host bits zero)"


class ClusterAccess(_Section):
    # EKS's own default, kept so that `pulumi up` works from any machine; the program warns about it.
    # Empty with private_endpoint_only (see _no_public_endpoint).
    public_access_cidrs: list[Annotated[StrictStr, _that(_is_ipv4_network)]] = _rule(
        _PUBLIC_ACCESS_CIDRS, whole=True, max_length=MAX_PUBLIC_ACCESS_CIDRS, default_factory=lambda: [OPEN_TO_ALL])
    private_endpoint_only: StrictBool = _rule(_TRUE_OR_FALSE, default=False)
    admin_role_arns: list[Annotated[StrictStr, _that(_matches(_ROLE_ARN))]] = _rule(
        "a list of IAM role ARNs, arn:aws:iam::<account>:role/<name>", whole=True, default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_public_endpoint(cls, fields: Any) -> Any:
        """Without a public endpoint there are no CIDRs to open it to: set none, or be refused."""
        if not isinstance(fields, dict) or fields.get("privateEndpointOnly", fields.get("private_endpoint_only")) is not True:
            return fields
        cidrs = next((fields[name] for name in ("publicAccessCidrs", "public_access_cidrs") if name in fields), None)
        if cidrs is not None:
            raise _not_allowed("unset with privateEndpointOnly true: there is no public endpoint to open",
                               "publicAccessCidrs", value=cidrs)
        return {**fields, "publicAccessCidrs": []}

    @field_validator("admin_role_arns")
    @classmethod
    def _each_role_once(cls, arns: list[str]) -> list[str]:
        names = [admin_role_name(arn) for arn in arns]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _not_allowed("each role name once (it names the access entry)", index, value=arns[index])
        return arns

    @model_validator(mode="after")
    def _some_cidr_when_public(self) -> ClusterAccess:
        if not self.private_endpoint_only and not self.public_access_cidrs:
            raise _not_allowed(_PUBLIC_ACCESS_CIDRS, "publicAccessCidrs", value=self.public_access_cidrs)
        return self

    @property
    def open_to_all(self) -> bool:
        return not self.private_endpoint_only and OPEN_TO_ALL in self.public_access_cidrs


class MonitoringSettings(_Section):
    retention_days: StrictInt = _integer(1, 30, default=7)
    storage_gi: StrictInt = _integer(1, MAX_PROMETHEUS_STORAGE_GI, default=10)
    # Where Alertmanager sends alerts; without it they are only visible in Alertmanager itself.
    alert_topic_arn: Annotated[StrictStr, _that(_matches(_SNS_TOPIC_ARN))] | None = _rule(
        "an SNS topic ARN, arn:aws:sns:<region>:<account>:<topic>", default=None)

    @property
    def alert_topic_region(self) -> str | None:
        match = _SNS_TOPIC_ARN.match(self.alert_topic_arn) if self.alert_topic_arn else None
        return match["region"] if match else None


class ObservabilitySettings(_Section):
    # 30 days covers an incident found late in a sprint; audit logs kept longer belong in an archive.
    log_retention_days: Annotated[StrictInt, _that(lambda days: days in LOG_RETENTION_DAYS)] = _rule(
        "one of CloudWatch Logs' retention periods in days: " + ", ".join(map(str, LOG_RETENTION_DAYS)), default=30)


class ColdStartSettings(_Section):
    # Fast snapshot restore is billed per zone and hour while enabled (plans/<stack>/capacity.md): a choice,
    # not a default.
    fast_snapshot_restore: StrictBool = _rule(_TRUE_OR_FALSE, default=False)
    # An image-cache snapshot is rebuilt from the image in minutes of a small instance (infra/image_cache.py):
    # unlike the graph cache, nothing expensive is lost by deleting it with the stack.
    retain_snapshots_on_destroy: StrictBool = _rule(_TRUE_OR_FALSE, default=False)


def _hf_token(token: object) -> SecretText:
    # The value itself is never shown: a token pasted in plain text is still a token.
    if not isinstance(token, SecretText):
        raise _not_allowed("a secret: set it with `pulumi config set --secret hfToken hf_...`", value="[not shown]")
    if not _HF_TOKEN.match(token):
        raise _not_allowed("a HuggingFace access token, 'hf_' then letters and digits", value="[secret]")
    return token


_HF_TOKEN_RULE = (
    "required when model.gated or an adapter's gated is true, and then mounted only by the Jobs that read a gated "
    "repository (never by serving pods; unused otherwise); a secret (`pulumi config set --secret hfToken hf_...`, "
    "or `HF_TOKEN=hf_... scripts/deploy <stack>`): a HuggingFace access token that can read those repositories, "
    "'hf_' then letters and digits")


def _stack_key(rule: str, *, allowed: str | None = None, **field: Any) -> Any:
    """A key of the stack file: `rule` is what docs/config.md says of it, and what a missing required key gets;
    `allowed` what a refused value gets (objects say which fields they take)."""
    return Field(**field, description=rule, json_schema_extra={"allowed": allowed or rule, "missing": rule})


def _stack_key_alias(name: str) -> str:
    return _key(to_camel(name))


class StackConfig(BaseModel):
    """One stack's config, keyed as Pulumi hands it over (``namespace:key``); other namespaces are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=_stack_key_alias,
                              validate_by_name=True, validate_by_alias=True)

    region: Annotated[StrictStr, _that(lambda region: region in regions.REGIONS)] = _stack_key(
        "required; an AWS commercial region such as us-west-2 (infra/regions.py lists them)",
        allowed="an AWS commercial region: " + ", ".join(regions.REGIONS), alias="aws:region")
    kubernetes_version: Annotated[StrictStr, _that(lambda release: release in versions.KUBERNETES_RELEASES)] = (
        _stack_key(f"one of {', '.join(versions.KUBERNETES_RELEASES)}", default="1.33",
                   allowed=f"one of {', '.join(versions.KUBERNETES_RELEASES)} (the minors whose add-ons are pinned)"))
    model: ModelSource = _stack_key(
        "required; {id (a FLUX.1 text-to-image model in diffusers format: FLUX.1-dev and its derivatives, "
        "FLUX.1-schnell; its family, steps and guidance come from its own configs, docs/model.md), revision (40-hex "
        "commit, required), maxTextLength (1-512; at most 256 for FLUX.1-schnell's family), gated (default true: "
        "the compile Jobs mount hfToken to read it; false for an ungated repository such as FLUX.1-schnell), "
        f"loras (up to {MAX_LORAS} LoRA adapters merged into the served weights, each {{id, revision (40-hex "
        f"commit), file (a .safetensors file, when the repository holds several), scale ({SCALE_RULE}), gated "
        "(default false)}: a change publishes new weights, reuses every shape's graphs and rolls the serving pods "
        "onto them; trn1, trn1n and inf2 only)}")
    dtype: Annotated[str, _parsed_by(parse_dtype)] = _stack_key(f"one of {', '.join(DTYPES)}", default="bfloat16")
    neuron_pools: dict[Annotated[str, AfterValidator(_neuron_family)], NeuronPool] = _stack_key(
        "required; map of family (" + ", ".join(catalog.NEURON_FAMILIES)
        + ") -> {instanceTypes (of that family; default all), capacityTypes "
        f"({', '.join(CAPACITY_TYPES)}; default [on-demand]; {RESERVED} needs capacityReservationIds; "
        f"a Neuron compile.pool's must have {ON_DEMAND}; {SPOT} only "
        f"with {ON_DEMAND}, on serving.pool, and with serving.maxReplicas above serving.replicas: the family then "
        "gets an on-demand base NodePool holding every shape at serving.replicas plus its rollout surge and every "
        "graphs Job compiling on it, rounded up to whole nodes of its largest instance type, and a Spot NodePool "
        "with the rest of maxDevices for the serving pods above serving.replicas), maxDevices (the family's device "
        "limit, required; at least every shape at serving.maxReplicas plus its rollout surge, and every graphs Job "
        "compiling on the family), "
        "capacityReservationIds (with reserved only: ids cr-... of On-Demand Capacity Reservations or Capacity "
        f"Blocks for the pool's types in the stack's zones, each id once, at most {MAX_CAPACITY_RESERVATIONS} "
        "over all pools; Karpenter launches into them before on-demand or spot)}",
        allowed="a non-empty map keyed by family: " + ", ".join(catalog.NEURON_FAMILIES), min_length=1)
    compile: CompileSettings = _stack_key(
        f"required; {{pool ({CPU_COMPILE_POOL}, the default: device-less compiles on the cpu NodePool, sized by "
        "infra/sizing.py; or serving.pool's family, which then needs an instance type whose memory holds one "
        "compile; another family is refused: the graphs are compiled for serving.pool's; with serving.pool "
        f"{TRN2} it must be {TRN2}: NxD Inference's compile is not shown to run without a device), tensorParallel ("
        + ", ".join(map(str, sizing.tensor_parallel_degrees()))
        + ": divides the attention heads (" + sizing.sharded_heads()
        + "), and large enough that one rank per NeuronCore fits the serving pool's HBM; on trn2 24 GiB per "
        "logical NeuronCore must hold CLIP, the VAE decoder, T5 over all ranks, the transformer over "
        "tensorParallel and 2 GiB of activations), contextParallel and cfgParallel (trn2 only, default 1: 2 "
        "splits NxD Inference's Flux backbone by its image and text tokens, or by its true-CFG batch, over twice "
        "tensorParallel ranks; not both; contextParallel 2 needs every shape's image tokens even), devices "
        "(a Neuron compile.pool only; default: " + _DERIVED_DEVICES + "), extraDevicesReason "
        "(why devices exceeds that default; required then, refused otherwise), timeoutMinutes (10-1440: each "
        "Job's deadline)}")
    serving: ServingSettings = _stack_key(
        f"required; {{pool (a neuronPools family; {TRN2} serves through NxD Inference's Flux application, which "
        f"takes model.maxTextLength {NXDI_TEXT_LENGTH} only), devices (default: " + _DERIVED_DEVICES
        + "), extraDevicesReason (as compile's), replicas (1-100), maxReplicas (replicas-100; default "
        "replicas), queueSize (0-64), requestTimeoutSeconds (1-3600; at most "
        f"{disruption.MAX_SPOT_REQUEST_TIMEOUT_SECONDS} when serving.pool allows {SPOT}: a serving pod finishes "
        "its admitted requests within the Spot interruption notice)}")
    shapes: tuple[Annotated[Shape, _parsed_by(parse_shape, Shape)], ...] = _stack_key(
        "required; non-empty list of distinct shapes 'HxW' (height x width), each side a multiple of 16 in 64-2048",
        allowed="a non-empty list of shapes 'HxW'", min_length=1)
    network: NetworkSettings = _stack_key(
        "{cidr (IPv4 /16-/20), availabilityZones (2-3: the VPC takes that many zones, in name order, of those "
        "where EC2 offers an instance type of the serving pool and one of the compile pool; fewer such zones "
        "is refused), zones (optional: 2-3 zone names to keep, each held to the same rule; "
        "availabilityZones is then their number)}; ignored with existingVpc", default=NetworkSettings())
    existing_vpc: ExistingVpc | None = _stack_key(
        "optional {vpcId, privateSubnetIds (>=2, each in a zone where EC2 offers an instance type of the "
        "serving pool and one of the compile pool), publicSubnetIds (>=2)}", default=None)
    system_nodes: SystemNodes = _stack_key(
        "{instanceType, minSize (1-10), desiredSize (min-max), maxSize (min-10)}", default=SystemNodes())
    image: ImageSettings = _stack_key(
        "{uri (optional: a prebuilt image pinned by digest, 'registry/repository@sha256:<64 hex>'; without it "
        "`pulumi up` builds serving/Dockerfile and pushes it to the stack's ECR repository), retainOnDestroy "
        "(true: `pulumi destroy` leaves the repository and its images, and `scripts/destroy` sets "
        "image.repository to it so the next `up` pushes there again; false: destroy deletes it with every "
        "image), repository (optional: an existing ECR repository of the stack's region, e.g. one an earlier "
        "destroy kept, pushed to instead of creating one and never deleted by this stack; not with uri, not "
        "with retainOnDestroy false)}",
        default=ImageSettings())
    # Never printed.
    hf_token: Annotated[SecretText, PlainValidator(_hf_token)] | None = _stack_key(
        _HF_TOKEN_RULE, allowed="a secret HuggingFace access token, 'hf_' then letters and digits", default=None,
        repr=False)
    ingress: IngressSettings = _stack_key(
        "optional {certificateArn (an ACM certificate ARN in the stack's region: HTTPS on 443, HTTP only "
        "redirects to it), internal (true: an internal load balancer, reachable from the VPC only; default "
        "true without certificateArn, false with it; false requires certificateArn: no internet-facing "
        "load balancer without TLS)}", default=IngressSettings())
    graph_cache: GraphCacheSettings = _stack_key(
        "{retainOnDestroy (true: `pulumi destroy` leaves the bucket and its graphs, and `scripts/destroy` "
        "sets graphCache.bucket to it so the next `up` reuses them; false: destroy deletes the bucket "
        "with every object), bucket (optional: an existing graph-cache bucket in the stack's region, "
        "e.g. another stack's `graphsBucket` output, used instead of creating one and never deleted "
        "by this stack; not with retainOnDestroy false)}", default=GraphCacheSettings())
    cluster: ClusterAccess = _stack_key(
        f"{{publicAccessCidrs (1-{MAX_PUBLIC_ACCESS_CIDRS} IPv4 CIDRs that may reach the public API endpoint; "
        f"{OPEN_TO_ALL}, the default, draws a warning on every `up`), privateEndpointOnly (true: no public "
        "endpoint at all, `pulumi up` and kubectl must run from inside the VPC; not with publicAccessCidrs), "
        "adminRoleArns (IAM role ARNs granted cluster admin through EKS access entries, each role name once)}",
        default=ClusterAccess())
    monitoring: MonitoringSettings = _stack_key(
        f"{{retentionDays (1-30: how long Prometheus keeps samples), storageGi (1-{MAX_PROMETHEUS_STORAGE_GI}: "
        "the size of its data volume, an encrypted gp3 EBS volume that outlives the pod; it keeps 80% of that "
        "at most), alertTopicArn (optional: an SNS topic ARN Alertmanager publishes every alert to, and the "
        "CloudWatch alarms too when it is in the stack's region; without it alerts are only visible in "
        "Alertmanager and alarms in the CloudWatch console)}", default=MonitoringSettings())
    observability: ObservabilitySettings = _stack_key(
        "{logRetentionDays (one of CloudWatch Logs' periods: " + ", ".join(map(str, LOG_RETENTION_DAYS))
        + "; how long the EKS control-plane and Container Insights log groups keep events; `pulumi destroy` "
        "deletes the groups)}", default=ObservabilitySettings())
    cold_start: ColdStartSettings = _stack_key(
        "{fastSnapshotRestore (true: EBS fast snapshot restore of the image-cache snapshot in every zone of the "
        "stack, so a new Neuron node's image volume is fully initialized at launch; billed per zone and hour, "
        "plans/<stack>/capacity.md), retainSnapshotsOnDestroy (true: `scripts/destroy` leaves the image-cache "
        "snapshots, which the next `up` of the same image and AMI then uses instead of building; false: it deletes "
        "them)}", default=ColdStartSettings())

    @field_validator("neuron_pools", mode="before")
    @classmethod
    def _family_from_key(cls, pools: object) -> object:
        """Each pool is of the family it is configured under."""
        if not isinstance(pools, dict):
            return pools
        named = {}
        for family, settings in pools.items():
            if isinstance(settings, dict) and not isinstance(settings, NeuronPool):
                if "family" in settings:
                    raise _not_allowed(_unknown_field(NeuronPool), family, "family", value=settings["family"])
                settings = {**settings, "family": family}
            named[family] = settings
        return named

    @field_validator("compile", "serving", mode="wrap")
    @classmethod
    def _sized_for_its_pool(cls, value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """The pool is a configured one, and the pods' devices are derived from it and compile.tensorParallel."""
        pools: dict[str, NeuronPool] | None = info.data.get("neuron_pools")
        if pools is None or not isinstance(value, (dict, _Section)):  # that error comes first
            return handler(value)
        given = value.get("pool", CPU_COMPILE_POOL if info.field_name == "compile" else None) \
            if isinstance(value, dict) else value.pool
        if info.field_name == "compile" and given == CPU_COMPILE_POOL:
            return _device_less(handler(value))
        pool = pools.get(given) if isinstance(given, str) else None
        if pool is None:
            allowed = "one of the configured neuronPools: " + ", ".join(pools)
            raise _not_allowed(f"{CPU_COMPILE_POOL} or {allowed}" if info.field_name == "compile" else allowed,
                               "pool", value=given)
        try:
            settings = handler(value)
        except ValidationError as error:
            if error.errors()[0]["loc"][:1] == ("devices",):
                raise _not_allowed(pool.schedulable_counts, "devices", value=value.get("devices")) from None  # type: ignore[union-attr]
            raise
        compile_settings = settings if info.field_name == "compile" else info.data.get("compile")
        if compile_settings is None:  # refused itself: that error comes first
            return settings
        return _sized(_stack_key_alias(info.field_name), settings, pool, compile_settings)  # type: ignore[arg-type]

    @field_validator("existing_vpc", mode="before")
    @classmethod
    def _none_when_empty(cls, vpc: object) -> object:
        return None if vpc == {} else vpc

    @field_validator("shapes")
    @classmethod
    def _each_shape_once(cls, shapes: tuple[Shape, ...]) -> tuple[Shape, ...]:
        for index, shape in enumerate(shapes):
            if shape in shapes[:index]:
                raise _not_allowed("each shape once", index, value=str(shape))
        return shapes

    @field_validator("ingress", mode="wrap")
    @classmethod
    def _certificate_of_the_region(cls, value: object, handler: ValidatorFunctionWrapHandler,
                                   info: ValidationInfo) -> IngressSettings:
        region = info.data.get("region")
        if region is None:  # refused itself: that error comes first
            return handler(value)
        allowed = (f"an ACM certificate ARN in {region} (a load balancer uses certificates of its own region), "
                   f"arn:aws:acm:{region}:<account>:certificate/<id>")
        try:
            ingress = handler(value)
        except ValidationError as error:
            if error.errors()[0]["loc"][:1] == ("certificateArn",):
                raise _not_allowed(allowed, "certificateArn", value=value.get("certificateArn")) from None  # type: ignore[union-attr]
            raise
        match = _CERTIFICATE_ARN.match(ingress.certificate_arn) if ingress.certificate_arn is not None else None
        if ingress.certificate_arn is not None and not (match and match["region"] == region):
            raise _not_allowed(allowed, "certificateArn", value=ingress.certificate_arn)
        return ingress

    @model_validator(mode="after")
    def _compiles_for_its_own_family(self) -> StackConfig:
        """neuronx-cc compiles for serving.pool's family (--target); a Neuron node compiles only for its own family,
        and the cpu NodePool for any (device-less)."""
        if self.compile.pool not in (CPU_COMPILE_POOL, self.serving.pool):
            raise _not_allowed(
                f"{CPU_COMPILE_POOL} (a device-less compile on the cpu NodePool, the default) or {self.serving.pool}, "
                "the family serving.pool serves on: the graphs are compiled for that family, and a Neuron node "
                "compiles only for its own", _key("compile"), "pool", value=self.compile.pool)
        return self

    @model_validator(mode="after")
    def _nxd_inference_on_trn2(self) -> StackConfig:
        """trn2 serves through NxD Inference's Flux application (common.neuron.compile_api): its degrees exist only
        there, and it fixes the text length; its graphs compile on trn2 nodes, its context split halves the image's
        tokens. Each refused as the compile would refuse it, before anything is created."""
        family, settings = self.serving.pool, self.compile
        if compile_api(family) != NXDI:
            for field, degree in (("contextParallel", settings.context_parallel),
                                  ("cfgParallel", settings.cfg_parallel)):
                if degree > 1:
                    raise _not_allowed(f"1 on {family} (serving.pool): context and CFG parallelism split the backbone "
                                       f"of NxD Inference's Flux application, which serves on {TRN2} only",
                                       _key("compile"), field, value=degree)
            return self
        if self.model.max_text_length != NXDI_TEXT_LENGTH:
            raise _not_allowed(f"{NXDI_TEXT_LENGTH} with serving.pool {family}: NxD Inference's Flux application "
                               f"traces T5 for exactly {NXDI_TEXT_LENGTH} tokens", _key("model"), "maxTextLength",
                               value=self.model.max_text_length)
        if settings.pool == CPU_COMPILE_POOL:
            raise _not_allowed(f"{family} with serving.pool {family}: NxD Inference's Flux compile is verified here "
                               "only up to HLO generation, so whether it runs without a Neuron device is unshown; its "
                               f"graphs compile on {family} nodes", _key("compile"), "pool", value=settings.pool)
        if settings.context_parallel > 1:
            for index, shape in enumerate(self.shapes):
                if shape.image_tokens % settings.context_parallel:
                    raise _not_allowed(
                        f"a shape with an even image-token count with compile.contextParallel "
                        f"{settings.context_parallel}, which splits them in two: {shape} has {shape.image_tokens}",
                        _key("shapes"), index, value=str(shape))
        return self

    @model_validator(mode="after")
    def _fits_its_pools(self) -> StackConfig:
        """One degree for compiling and serving (the graphs are compiled for the ranks that serve them): its
        shards fit the serving pool's HBM, and a Neuron compile pool has the memory of one compile."""
        tensor_parallel, family = self.compile.tensor_parallel, self.serving_pool.family
        ranks = self.compile.ranks(family)
        data_parallel = ranks.count // tensor_parallel
        fitting = sizing.fitting_tensor_parallel(family, self.dtype, data_parallel)
        if tensor_parallel not in fitting and ranks.nxdi:
            per_core = sizing.hbm_bytes_per_core(tensor_parallel, self.dtype, ranks.world) / sizing.GIB
            split = "" if data_parallel == 1 else f" with {self.compile.split_text}"
            raise _not_allowed(
                f"{' or '.join(map(str, fitting)) or 'no degree'} on {family} in {self.dtype}{split} (at "
                f"{tensor_parallel}, each of the {ranks.count} ranks, one per logical NeuronCore, would hold "
                f"{per_core:.1f} GiB of its {catalog.HBM_GIB_PER_CORE[family]} GiB HBM: common.neuron's rule)",
                _key("compile"), "tensorParallel", value=tensor_parallel)
        if tensor_parallel not in fitting:
            per_core = sizing.hbm_bytes_per_core(tensor_parallel, self.dtype) / sizing.GIB
            raise _not_allowed(
                f"{' or '.join(map(str, fitting)) or 'no degree'} on {family} in {self.dtype} (at {tensor_parallel} "
                f"ranks, one per NeuronCore, core 0 would need {per_core:.1f} GiB of its "
                f"{catalog.HBM_GIB_PER_CORE[family]} GiB HBM)", _key("compile"), "tensorParallel", value=tensor_parallel)
        compile_pool = self.compile_pool
        memory = sizing.compile_memory_bytes(self.dtype, tensor_parallel, ranks.world)
        if compile_pool is not None and sizing.neuron_compile_size(
                compile_pool.instance_types, self.compile.devices, memory, 0) is None:  # type: ignore[arg-type]
            needed = math.ceil((memory + sizing.NODE_RESERVED_BYTES) / sizing.GIB)
            raise _not_allowed(
                f"{CPU_COMPILE_POOL}, or a pool with an instance type of at least {needed} GiB holding "
                f"compile.devices: one compile builds the transformer once and traces a rank of it (an estimate)",
                _key("compile"), "pool", value=self.compile.pool)
        return self

    @model_validator(mode="after")
    def _zones_of_the_region(self) -> StackConfig:
        """Listed zones exist in the stack's region (infra/regions.py): a typo is refused before EC2 is asked."""
        known = regions.zones(self.region)
        for index, zone in enumerate(self.network.zones or ()):
            if zone not in known:
                raise _not_allowed(f"an availability zone of {self.region}: {', '.join(known)}",
                                   _key("network"), "zones", index, value=zone)
        return self

    @model_validator(mode="after")
    def _on_demand_where_it_must_be(self) -> StackConfig:
        """Compile Jobs run on-demand only, so their pool has it; Spot holds serving burst, so only serving's pool
        may allow it, and only with pods above serving.replicas to hold."""
        compile_pool = self.compile_pool
        if compile_pool is not None and ON_DEMAND not in compile_pool.capacity_types:
            raise _not_allowed(f"a list with {ON_DEMAND}: compile.pool's Jobs run on-demand only (an interruption, "
                               "a Capacity Block's end among them, would lose hours of compiling)",
                               _key("neuronPools"), self.compile.pool,
                               "capacityTypes", value=list(compile_pool.capacity_types))
        for family, pool in self.neuron_pools.items():
            if not pool.allows_spot:
                continue
            if family != self.serving.pool:
                raise _not_allowed(f"no {SPOT} on a pool that serving.pool ({self.serving.pool}) does not name: Spot "
                                   "holds only serving burst", _key("neuronPools"), family, "capacityTypes",
                                   value=list(pool.capacity_types))
            if self.serving.max_replicas == self.serving.replicas:
                raise _not_allowed(f"no {SPOT} while serving.maxReplicas equals serving.replicas "
                                   f"({self.serving.replicas}): Spot holds only the pods above serving.replicas",
                                   _key("neuronPools"), family, "capacityTypes", value=list(pool.capacity_types))
        return self

    @model_validator(mode="after")
    def _drains_within_the_spot_notice(self) -> StackConfig:
        """A serving pod that Spot may hold finishes its admitted requests before the instance is reclaimed."""
        limit = disruption.MAX_SPOT_REQUEST_TIMEOUT_SECONDS
        if self.serving_pool.allows_spot and self.serving.request_timeout_seconds > limit:
            raise _not_allowed(
                f"at most {limit} while neuronPools.{self.serving.pool}.capacityTypes has {SPOT}: a serving pod's "
                f"grace ({disruption.DEREGISTRATION_SECONDS} s deregistration + the timeout + "
                f"{disruption.EXIT_SECONDS} s to exit) must end within the {disruption.SPOT_NOTICE_SECONDS} s Spot "
                f"interruption notice less {disruption.INTERRUPTION_REACTION_SECONDS} s for Karpenter to react",
                _key("serving"), "requestTimeoutSeconds", value=self.serving.request_timeout_seconds)
        return self

    def _device_parts(self, family: str, replicas: int, counted: str) -> list[tuple[int, str]]:
        """What the family's pools hold at once with `replicas` serving pods per shape (`counted` names
        that key): those pods plus the rollout surge, and every compile Job; with the text a message shows."""
        shapes, parts = len(self.shapes), []
        if self.serving.pool == family:
            parts.append((shapes * (replicas + sizing.ROLLOUT_SURGE) * self.serving.devices,  # type: ignore[operator]
                          f"{shapes} shapes x ({counted} {replicas} + {sizing.ROLLOUT_SURGE} rollout surge) x "
                          f"{self.serving.devices} devices"))
        if self.compile.pool == family:
            parts.append((shapes * self.compile.devices,  # type: ignore[operator]
                          f"{shapes} graphs Jobs x {self.compile.devices} devices"))
        return parts

    def on_demand_base_devices(self, family: str) -> int:
        """The device limit of the on-demand base NodePool of a family that allows Spot: every shape at
        serving.replicas plus its rollout surge and every compile Job, rounded up to whole nodes of the largest
        instance type (Karpenter counts a node's devices against the limit, so the last node must fit)."""
        node = self.neuron_pools[family].largest_node_devices
        needed = sum(devices for devices, _ in self._device_parts(family, self.serving.replicas, "serving.replicas"))
        return math.ceil(needed / node) * node

    def spot_burst_devices(self) -> int:
        """The devices of the serving pods above serving.replicas: what the Spot NodePool must hold."""
        return len(self.shapes) * (self.serving.max_replicas - self.serving.replicas) * self.serving.devices  # type: ignore[operator]

    def max_devices_needed(self, family: str) -> int:
        """The least maxDevices the family's pool may have (_pools_hold_their_pods)."""
        if self.neuron_pools[family].allows_spot:
            return self.on_demand_base_devices(family) + self.spot_burst_devices()
        return sum(devices for devices, _ in self._device_parts(family, self.serving.max_replicas,
                                                                 "serving.maxReplicas"))

    @model_validator(mode="after")
    def _pools_hold_their_pods(self) -> StackConfig:
        """Each family's device limit holds, at once, every shape at serving.maxReplicas plus its rollout
        surge and every shape's compile Job: Karpenter launches nothing past the limit, so a pod beyond it
        would stay Pending. Where the family allows Spot, the on-demand base holds serving.replicas, the
        surge and the compile Jobs, and the rest of the limit (the Spot pool's) the pods above them."""
        for family, pool in self.neuron_pools.items():
            needed = self.max_devices_needed(family)
            if needed <= pool.max_devices:
                continue
            if pool.allows_spot:
                base, burst = self.on_demand_base_devices(family), self.spot_burst_devices()
                counted = " + ".join(text for _, text in self._device_parts(
                    family, self.serving.replicas, "serving.replicas"))
                raise _not_allowed(
                    f"at least {needed}: the on-demand base {base} ({counted}, rounded up to whole "
                    f"{pool.largest_node_devices}-device nodes) + the Spot burst {burst} ({len(self.shapes)} "
                    f"shapes x (serving.maxReplicas {self.serving.max_replicas} - serving.replicas "
                    f"{self.serving.replicas}) x {self.serving.devices} devices)",
                    _key("neuronPools"), family, "maxDevices", value=pool.max_devices)
            parts = self._device_parts(family, self.serving.max_replicas, "serving.maxReplicas")
            raise _not_allowed(f"at least {needed}: {' + '.join(text for _, text in parts)}",
                               _key("neuronPools"), family, "maxDevices", value=pool.max_devices)
        return self

    @model_validator(mode="after")
    def _reservations_fit_the_node_class(self) -> StackConfig:
        """Every pool's reservations are selected by the one EC2NodeClass: each once, within the CRD's cap."""
        seen: list[str] = []
        for family, pool in self.neuron_pools.items():
            for index, reservation in enumerate(pool.capacity_reservation_ids):
                if reservation in seen or len(seen) == MAX_CAPACITY_RESERVATIONS:
                    raise _not_allowed(
                        f"each capacity reservation id once, at most {MAX_CAPACITY_RESERVATIONS} over all pools "
                        "(one EC2NodeClass selects them all)", _key("neuronPools"), family, "capacityReservationIds",
                        index, value=reservation)
                seen.append(reservation)
        return self

    @model_validator(mode="after")
    def _token_for_gated_repositories(self) -> StackConfig:
        if self.model.needs_hf_token and self.hf_token is None:
            gated = [self.model.id] * self.model.gated + [lora.id for lora in self.model.loras if lora.gated]
            raise _not_allowed(
                f"required: {', '.join(gated)} {'is' if len(gated) == 1 else 'are'} gated (model.gated, "
                "model.loras[].gated), so the Jobs that read them need a token: `pulumi config set --secret hfToken "
                "hf_...` or `HF_TOKEN=hf_... scripts/deploy <stack>`", _key("hfToken"), value=None)
        return self

    @model_validator(mode="after")
    def _adapters_merged_where_the_weights_are_ours(self) -> StackConfig:
        """On trn2 NxD Inference shards the checkpoint itself (model/backends/nxdi.py): no adapter is merged there."""
        if self.model.loras and self.serving.pool not in MERGING_FAMILIES:
            raise _not_allowed(f"no loras with serving.pool {self.serving.pool}: adapters are merged into the weights "
                               f"on {', '.join(MERGING_FAMILIES)} only (NxD Inference shards trn2's checkpoint itself)",
                               _key("model"), "loras", value=[lora.id for lora in self.model.loras])
        return self

    @property
    def serving_pool(self) -> NeuronPool:
        return self.neuron_pools[self.serving.pool]

    @property
    def compile_pool(self) -> NeuronPool | None:
        """The Neuron pool graphs compile on, or None for a device-less compile on the cpu NodePool."""
        return self.neuron_pools.get(self.compile.pool)

    @property
    def zone_count(self) -> int:
        """The zones the pods may spread over: the network's, or with an existing VPC the fewest its subnets can be
        in (2; their zones are known only from EC2 at deploy time)."""
        return self.network.zone_count if self.existing_vpc is None else 2

    @property
    def neuron_pools_in_use(self) -> tuple[NeuronPool, ...]:
        """The Neuron pools pods run on: serving's, and compile's if it is one."""
        return tuple({pool.family: pool for pool in (self.serving_pool, self.compile_pool) if pool}.values())


def _sized(section: str, settings: Any, pool: NeuronPool, compile_settings: CompileSettings) -> Any:
    """The section with its device count: derived from the pipeline's ranks (compile.tensorParallel, on trn2 times
    the context or CFG degree) unless given, and a reason for more."""
    reason_key = f"{section}.extraDevicesReason"
    ranks, what = compile_settings.ranks(pool.family).count, compile_settings.ranks_text(pool.family)
    needed = sizing.devices_for(pool.family, pool.instance_types, ranks)
    if needed is None:
        largest = max(catalog.instance(name).devices for name in pool.instance_types) * pool.cores_per_device
        raise _not_allowed(f"a pool with room for {what} (a NeuronCore per rank): "
                           f"{', '.join(pool.instance_types)} have at most {largest}", "pool", value=pool.family)
    devices = needed if settings.devices is None else settings.devices
    if devices not in pool.valid_device_counts:
        raise _not_allowed(pool.schedulable_counts, "devices", value=devices)
    cores = devices * pool.cores_per_device
    if cores < ranks:
        raise _not_allowed(f"enough NeuronCores for {what}: "
                           f"{devices} {pool.family} devices have {cores}", "devices", value=devices)
    reason = settings.extra_devices_reason
    if devices != needed and reason is None:
        raise _not_allowed(f"{needed} {pool.family} devices hold {what} (one rank "
                           f"per NeuronCore); a larger count needs {reason_key} saying why", "devices", value=devices)
    if reason is not None and devices == needed:
        raise _not_allowed(f"only with {section}.devices above the {needed} that {what} needs",
                           "extraDevicesReason", value=reason)
    if devices > pool.max_devices:
        raise _not_allowed(f"at most the pool's maxDevices ({pool.max_devices})", "devices", value=devices)
    return settings.model_copy(update={"devices": devices})


def _device_less(settings: CompileSettings) -> CompileSettings:
    """A compile on the cpu NodePool holds no Neuron device: a device count would be a mistake."""
    for field, name in (("devices", "devices"), ("extra_devices_reason", "extraDevicesReason")):
        if getattr(settings, field) is not None:
            raise _not_allowed(f"unset with compile.pool {CPU_COMPILE_POOL}: a device-less compile holds no Neuron "
                               "device", name, value=getattr(settings, field))
    return settings


def admin_role_name(arn: str) -> str:
    """The role's name, without its path: what names the role's access entry."""
    return _ROLE_ARN.match(arn)["name"]  # type: ignore[index]


def _unknown_field(section: type[_Section]) -> str:
    return f"unknown field; allowed fields are {', '.join(section.user_fields())}"


# ---- The documented keys --------------------------------------------------------------------------


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


def _documented_default(field: FieldInfo) -> object:
    """The field's default as the stack file would state it; for an object, that of the fields it may leave out
    with a default of their own (None: no default to document)."""
    section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, _Section) else None
    if section is None:
        return None if field.default is PydanticUndefined else field.default
    defaults = {}
    for name, sub in section.model_fields.items():
        if sub.exclude or sub.default_factory_takes_validated_data:
            continue
        default = sub.get_default(call_default_factory=True)
        if default is not None and default is not PydanticUndefined:
            defaults[sub.alias or name] = list(default) if isinstance(default, tuple) else default
    return defaults or None


CONFIG_KEYS: tuple[ConfigKey, ...] = tuple(
    ConfigKey(field.alias.removeprefix(f"{PROJECT}:"), _documented_default(field), field.description)  # type: ignore[union-attr, arg-type]
    for field in StackConfig.model_fields.values())
_KNOWN = {key.full_name for key in CONFIG_KEYS}


# ---- Reading the stack's config -------------------------------------------------------------------


def _decoded(text: object) -> object:
    """An object or list as Pulumi hands it over: JSON text (a scalar key stays a string: "1.30" is not 1.3)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _is_text(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, str)


def _annotated_section(annotation: object) -> tuple[type[_Section] | None, type[_Section] | None]:
    """The model a value of this annotation is (first), or the model of its items (second)."""
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation, None
    for argument in typing.get_args(annotation):
        if isinstance(argument, type) and issubclass(argument, _Section):
            return (argument, None) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (None, argument)
    return None, None


def _item(container: object, step: str | int) -> object:
    """What the stack file gives under a field, map key or list index (None: nothing)."""
    if isinstance(container, Mapping):
        return container.get(step)
    if isinstance(container, list) and isinstance(step, int) and step < len(container):
        return container[step]
    return None


def _config_error(error: ErrorDetails, given: Mapping[str, Any]) -> ConfigError:
    """Pydantic's error as a ConfigError: the key path as the stack file spells it, the value, what is allowed."""
    context = error.get("ctx") or {}
    steps = (*error["loc"], *context.get("at", ()))
    # Walking the path: the model whose fields the next step names, or the model of the items it indexes.
    section: type[BaseModel] | None = StackConfig
    items: type[_Section] | None = None
    field: FieldInfo | None = None
    key, value, whole, unknown_in = "", given, False, None
    for index, step in enumerate(steps):
        if step == "[key]":  # a map's key itself is refused
            value = steps[index - 1]
            break
        if section is not None:
            found = next((candidate for name, candidate in section.model_fields.items()
                          if step in (name, candidate.alias)), None)
            if found is None:
                unknown_in, key, value = section, f"{key}.{step}", error["input"]
                break
            field, alias = found, found.alias or str(step)
            key, value = f"{key}.{alias}" if key else alias, _item(value, alias)
            section, items = _annotated_section(field.annotation)
            whole = bool((field.json_schema_extra or {}).get("whole"))  # type: ignore[union-attr]
        elif whole and index < len(error["loc"]):  # pydantic refused an item: the rule is about the list
            break
        else:
            key += f"[{step}]" if isinstance(step, int) else f".{step}"
            section, items, whole, value = items, None, False, _item(value, step)
    rules: dict = (field.json_schema_extra or {}) if field is not None else {}  # type: ignore[assignment]
    if unknown_in is not None:
        allowed = _unknown_field(unknown_in)  # type: ignore[arg-type]
    elif "allowed" in context:
        allowed = context["allowed"]
    elif error["type"] == "missing":
        allowed = rules["missing"]
    elif section is not None and error["type"] in ("model_type", "model_attributes_type"):
        allowed = f"an object with fields {', '.join(section.user_fields())}"  # type: ignore[attr-defined]
    else:
        allowed = rules["allowed"]
    if "value" in context:
        value = context["value"]
    elif error["type"] == "missing":
        value = None
    elif not (whole or unknown_in or steps[-1] == "[key]"):
        value = error["input"]
    return ConfigError(key, value, allowed)


def _first(errors: list[ErrorDetails]) -> ErrorDetails:
    """The error a reader fixes first: an unknown field of an object before what its other fields say."""
    for error in errors:
        parent = error["loc"][:-1]
        if error["type"] == "extra_forbidden" and errors[0]["loc"][:len(parent)] == parent:
            return error
    return errors[0]


def load_stack_config(raw: Mapping[str, Any]) -> StackConfig:
    """Validate the raw config of one stack; the first problem raises ConfigError."""
    for full_key in sorted(raw):
        if full_key.startswith(f"{PROJECT}:") and full_key not in _KNOWN:
            shown = "[secret]" if isinstance(raw[full_key], SecretText) else raw[full_key]
            raise ConfigError(full_key, shown, "unknown key; known keys are " + ", ".join(sorted(_KNOWN)))
    text_keys = {field.alias for field in StackConfig.model_fields.values() if _is_text(field)}
    given = {key: value if key in text_keys else _decoded(value) for key, value in raw.items()}
    try:
        return StackConfig.model_validate(given)
    except ValidationError as error:
        raise _config_error(_first(error.errors()), given) from None


def raw_pulumi_config() -> dict[str, Any]:
    """Every config key of the running stack, as Pulumi hands them to the program; secrets as SecretText."""
    raw = {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    secret = set(pulumi.runtime.config.get_config_secret_keys_env())
    return {key: SecretText(value) if key in secret or pulumi.runtime.config.is_config_secret(key) else value
            for key, value in raw.items()}
