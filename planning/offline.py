"""Run the real Pulumi program offline: no credentials, no CLI, no plugins.

The program (`__main__.py`) runs under `pulumi.runtime.set_mocks` with a stack's real
`Pulumi.<stack>.yaml`. Every resource it registers is recorded with its inputs, parent and
dependencies, and the stack outputs are kept with their secretness. Tests and `python -m planning`
read what was recorded. The mocks answer like AWS would in shape (ids, ARNs, names), never
in content: assertions are about the program's wiring, not AWS behaviour. One answer has content
the program acts on, which zones offer which Neuron types (MOCK_OFFERED_LETTERS), so that the
choice of zones is exercised; it is illustrative, not AWS's real offering.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from infra import catalog, regions
from infra.config import ConfigError, SecretText, load_stack_config
from infra.naming import IMAGE_CACHE_KEY_TAG, IMAGE_CACHE_TAG, PROJECT
from planning.secrets import reveal

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
HF_TOKEN_KEY = f"{PROJECT}:hfToken"
# Stack files hold the real token encrypted (`secure:`), which only the CLI can decrypt: offline
# runs get this obviously fake one, as a secret like the real one.
PLACEHOLDER_HF_TOKEN = SecretText("hf_OfflinePlaceholderNotARealToken")


def stack_names() -> list[str]:
    return sorted(path.name[len("Pulumi."):-len(".yaml")] for path in REPO_ROOT.glob("Pulumi.*.yaml"))


def stack_file_config(stack: str) -> tuple[dict[str, str], list[str]]:
    """The config of Pulumi.<stack>.yaml as the CLI hands it to a program, and its secret keys.

    Secrets are SecretText (ciphertext: only the CLI decrypts them); the HF token, where the stack needs one, is
    the placeholder.
    """
    document = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text()) or {}
    raw, secret_keys = {}, []
    for key, value in (document.get("config") or {}).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.append(key)
            value = SecretText(value["secure"])
        raw[key] = value if isinstance(value, str) else json.dumps(value)
    if _needs_hf_token(raw):
        raw[HF_TOKEN_KEY] = PLACEHOLDER_HF_TOKEN
        if HF_TOKEN_KEY not in secret_keys:
            secret_keys.append(HF_TOKEN_KEY)
    return raw, secret_keys


def _needs_hf_token(raw: dict[str, Any]) -> bool:
    """Whether the stack needs a token (a gated model or adapter), as the program's own config check says: a user
    of an ungated stack has none."""
    try:
        load_stack_config(raw)
    except ConfigError as error:
        return error.key == HF_TOKEN_KEY
    return False


@dataclass(frozen=True)
class Registered:
    """One resource as the program registered it."""

    type: str
    name: str
    urn: str
    id: str
    parent: str
    custom: bool
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    dependencies: tuple[str, ...]
    provider: str
    custom_timeouts: dict[str, str] = field(default_factory=dict)
    # `pulumi destroy` (or a replacement) leaves the cloud resource in place.
    retain_on_delete: bool = False
    # Input paths whose changes Pulumi does not apply (`ignore_changes`).
    ignore_changes: tuple[str, ...] = ()
    delete_before_replace: bool = False
    # Input paths whose changes replace the resource rather than update it (`replace_on_changes`).
    replace_on_changes: tuple[str, ...] = ()


@dataclass
class Rendering:
    stack: str
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)

    def of_type(self, type_: str) -> list[Registered]:
        return [resource for resource in self.resources if resource.type == type_]

    def one(self, type_: str, name: str) -> Registered:
        matches = [resource for resource in self.of_type(type_) if resource.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources of type {type_} named {name}")
        return matches[0]

    def by_urn(self, urn: str) -> Registered:
        return next(resource for resource in self.resources if resource.urn == urn)

    def kubernetes_objects(self) -> list[Registered]:
        """Kubernetes objects the program declares (Helm releases install charts, not objects)."""
        return [resource for resource in self.resources
                if resource.type.startswith("kubernetes:") and resource.type != "kubernetes:helm.sh/v3:Release"
                and resource.type != "pulumi:providers:kubernetes"]


# Resource types whose ids AWS shapes (and CRD schemas check): prefix + 17 hex digits.
_EC2_ID_PREFIXES = {"aws:ec2/subnet:Subnet": "subnet", "aws:ec2/vpc:Vpc": "vpc",
                    "aws:ec2/securityGroup:SecurityGroup": "sg"}


def _ec2_id(prefix: str, name: str) -> str:
    return f"{prefix}-{hashlib.sha256(name.encode()).hexdigest()[:17]}"


# The zones that offer each Neuron family, shaped like EC2's answers: Trainium in fewer zones than
# Inferentia, trn2 in one or two. Which letters offer a family is illustrative (each account maps zone names to
# physical zones its own way, and EC2's offerings are asked at every `up`); the planning run relies only on
# the shape: dev's trn1 skips a zone, the trn2 stack's region (us-east-2) has trn2 in two of its three. The zones
# themselves are the region's real ones (infra/regions.py).
MOCK_OFFERED_LETTERS = {
    "us-east-1": {"trn1": "abcf", "trn1n": "af", "trn2": "f", "inf2": "abcdef"},
    "us-east-2": {"trn1": "abc", "trn1n": "b", "trn2": "ab", "inf2": "abc"},
    "us-west-2": {"trn1": "bcd", "trn1n": "d", "trn2": "d", "inf2": "abcd"},
}


def mock_zones(region: str) -> list[str]:
    """The region's available zones, as the mocks answer getAvailabilityZones."""
    return list(regions.zones(region))


def mock_offered_zones(region: str, instance_type: str) -> list[str]:
    """The zones the mocks say offer an instance type (a family's types are offered alike; CPU types in
    every zone)."""
    letters = MOCK_OFFERED_LETTERS.get(region, {}).get(catalog.family_of(instance_type))
    return mock_zones(region) if letters is None else [f"{region}{letter}" for letter in letters]


def mock_subnet_zone(region: str, subnet_id: str) -> str:
    """An existing subnet's zone: the one its id's last hex digit picks, so tests can choose it."""
    zones = mock_zones(region)
    return zones[int(subnet_id[-1], 16) % len(zones)]


class _Mocks(pulumi.runtime.Mocks):
    """Shapes of provider answers: enough for the program's wiring to resolve."""

    def __init__(self, stack: str, region: str):
        self.stack = stack
        self.region = region

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        inputs = dict(args.inputs)
        name = args.name
        state: dict[str, Any] = {**inputs}
        kind = args.typ
        if kind == "aws:iam/role:Role":
            role_name = inputs.get("name", f"{name}-role")
            state.update(name=role_name, arn=f"arn:aws:iam::{ACCOUNT_ID}:role/{role_name}")
        elif kind == "aws:iam/policy:Policy":
            state["arn"] = f"arn:aws:iam::{ACCOUNT_ID}:policy/{inputs.get('name', name)}"
        elif kind == "aws:sqs/queue:Queue":
            queue_name = inputs.get("name", name)
            state.update(name=queue_name, arn=f"arn:aws:sqs:{self.region}:{ACCOUNT_ID}:{queue_name}",
                         url=f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT_ID}/{queue_name}")
        elif kind == "aws:s3/bucket:Bucket":
            bucket = inputs.get("bucket", f"{name}-0a1b2c3d")
            state.update(bucket=bucket, arn=f"arn:aws:s3:::{bucket}")
        elif kind == "aws:cloudwatch/logGroup:LogGroup":
            # As the provider (v6 and later) reports it: no ":*" at the end.
            group = inputs.get("name", name)
            state.update(name=group, arn=f"arn:aws:logs:{self.region}:{ACCOUNT_ID}:log-group:{group}")
        elif kind == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com/{inputs.get('name', name)}"
        elif kind == "aws:ec2/launchTemplate:LaunchTemplate":
            # EC2 numbers a template's versions from 1, the first being the one created.
            state["latestVersion"] = 1
        elif kind == "eks:index:Cluster":
            state.update(self._cluster_outputs(inputs))
        elif kind == "docker-build:index:Image":
            digest = "sha256:" + hashlib.sha256(f"{self.stack}/{name}".encode()).hexdigest()
            state.update(digest=digest, ref=f"{inputs['tags'][0]}@{digest}")
        elif kind == "kubernetes:networking.k8s.io/v1:Ingress":
            # Internal load balancers' DNS names start with "internal-".
            internal = (inputs["metadata"].get("annotations") or {}).get("alb.ingress.kubernetes.io/scheme") == "internal"
            hostname = (f"{'internal-' if internal else ''}k8s-{inputs['metadata']['name']}-0a1b2c3d4e-123456789."
                        f"{self.region}.elb.amazonaws.com")
            state["status"] = {"loadBalancer": {"ingress": [{"hostname": hostname}]}}
        elif kind.startswith("aws:"):
            state.setdefault("name", name)
            state.setdefault("arn", f"arn:aws:{kind.split(':')[1].split('/')[0]}:{self.region}:{ACCOUNT_ID}:{name}")
        resource_id = _ec2_id(_EC2_ID_PREFIXES[kind], name) if kind in _EC2_ID_PREFIXES else f"{name}-id"
        return resource_id, state

    def _offerings(self, query: dict[str, Any]) -> dict[str, Any]:
        """One (type, zone) pair per offering of the types filtered on, as EC2 lists them."""
        if query.get("locationType") != "availability-zone":
            raise LookupError(f"the offline run answers instance type offerings by availability-zone, not {query}")
        types = [value for entry in query.get("filters", []) if entry["name"] == "instance-type"
                 for value in entry["values"]]
        pairs = [(name, zone) for name in types for zone in mock_offered_zones(self.region, name)]
        return {"id": self.region, "instanceTypes": [name for name, _ in pairs],
                "locations": [zone for _, zone in pairs], "locationTypes": ["availability-zone"] * len(pairs),
                "locationType": "availability-zone", "filters": query.get("filters", [])}

    def _snapshot_ids(self, query: dict[str, Any]) -> dict[str, Any]:
        """The stack's image-cache snapshot of the key filtered on, as the runbook (run by the association the
        lookup waits for) tagged it: one snapshot per key, its id derived from the key."""
        tags = {entry["name"]: entry["values"] for entry in query.get("filters", [])}
        key = tags.get(f"tag:{IMAGE_CACHE_KEY_TAG}")
        if query.get("owners") != ["self"] or tags.get(f"tag:{IMAGE_CACHE_TAG}") != [f"{PROJECT}-{self.stack}"] \
                or key is None or len(key) != 1:
            raise LookupError(f"the offline run answers snapshot lookups of the stack's one cache key, not {query}")
        return {"id": self.region, "ids": [_ec2_id("snap", key[0])], **query}

    @staticmethod
    def _cluster_outputs(inputs: dict[str, Any]) -> dict[str, Any]:
        """pulumi-eks is a remote component: under mocks it has no children, so model its outputs."""
        cluster_name = inputs["name"]
        kubeconfig = {"apiVersion": "v1", "kind": "Config", "clusters": [
            {"name": cluster_name, "cluster": {"server": f"https://{cluster_name}.eks.amazonaws.com"}}]}
        # As documented: without default security groups both ids are the one EKS creates.
        eks_created = _ec2_id("sg", f"{cluster_name}-eks")
        separate = not inputs.get("skipDefaultSecurityGroups")
        return {
            "kubeconfig": kubeconfig,
            "kubeconfigJson": json.dumps(kubeconfig),
            "nodeSecurityGroupId": _ec2_id("sg", f"{cluster_name}-nodes") if separate else eks_created,
            "clusterSecurityGroupId": _ec2_id("sg", f"{cluster_name}-cluster") if separate else eks_created,
        }

    def call(self, args: pulumi.runtime.MockCallArgs):
        token = args.token
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/deployer", "userId": "AIDA"}
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com"}
        if token == "aws:index/getRegion:getRegion":
            return {"name": self.region, "region": self.region}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": mock_zones(self.region), "zoneIds": []}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            return self._offerings(args.args)
        if token == "aws:ec2/getSubnet:getSubnet":
            # A /24 derived from the id: an existing VPC's subnets are looked up, never in config.
            digest = hashlib.sha256(args.args["id"].encode()).digest()
            return {"id": args.args["id"], "cidrBlock": f"10.{digest[0]}.{digest[1]}.0/24",
                    "availabilityZone": mock_subnet_zone(self.region, args.args["id"])}
        if token == "aws:ecr/getRepository:getRepository":
            repository = args.args["name"]
            return {"id": repository, "name": repository, "registryId": ACCOUNT_ID,
                    "arn": f"arn:aws:ecr:{self.region}:{ACCOUNT_ID}:repository/{repository}",
                    "repositoryUrl": f"{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com/{repository}"}
        if token == "aws:ebs/getSnapshotIds:getSnapshotIds":
            return self._snapshot_ids(args.args)
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "offline-ecr-password", "authorizationToken": "offline",
                    "proxyEndpoint": f"https://{ACCOUNT_ID}.dkr.ecr.{self.region}.amazonaws.com",
                    "expiresAt": "2100-01-01T00:00:00Z", "id": self.region}
        raise LookupError(f"the offline run has no answer for {token}")


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.registrations: list[tuple[Any, str]] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.registrations.append((request, response.urn))
        return response


def _plain(value: Any) -> Any:
    """Protobuf structs as plain Python, keeping Pulumi's secret markers.

    Protobuf carries every number as a double: whole numbers come back as ints, as declared.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def run_program(stack: str, overrides: dict[str, Any] | None = None) -> Rendering:
    """Run __main__.py for one stack (config overrides: key -> value, objects as Python).

    An override is a secret exactly when its value is a SecretText, as `pulumi config set --secret` makes it.
    """
    raw, secret_keys = stack_file_config(stack)
    overrides = overrides or {}
    secret_keys = [key for key in secret_keys if key not in overrides]
    secret_keys += [key for key, value in overrides.items() if isinstance(value, SecretText)]
    return contextvars.Context().run(_run_isolated, stack, with_overrides(raw, overrides), secret_keys)


def with_overrides(raw: dict[str, str], overrides: dict[str, Any]) -> dict[str, str]:
    """Raw config with keys changed as the CLI would hand them over: objects as JSON, None removes."""
    changed = dict(raw)
    for key, value in overrides.items():
        if value is None:
            changed.pop(key, None)
        else:
            changed[key] = value if isinstance(value, str) else json.dumps(value)
    return changed


def _run_isolated(stack: str, raw: dict[str, str], secret_keys: list[str]) -> Rendering:
    mocks = _Mocks(stack, raw.get("aws:region", "us-west-2"))
    monitor = _RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(raw, secret_keys)
    runpy.run_path(str(REPO_ROOT / "__main__.py"), run_name="__main__")
    exported = {name: pulumi.Output.from_input(value)
                for name, value in pulumi.runtime.settings.get_root_resource().outputs.items()}
    _sync_await(wait_for_rpcs())
    rendering = _rendering(stack, monitor)
    for name, output in exported.items():
        rendering.outputs[name] = _plain(_sync_await(output.future()))
        if _sync_await(output.is_secret()):
            rendering.secret_outputs.add(name)
    return rendering


def _rendering(stack: str, monitor: _RecordingMonitor) -> Rendering:
    from google.protobuf import json_format

    rendering = Rendering(stack)
    for request, urn in monitor.registrations:
        if request.type == "pulumi:pulumi:Stack":
            continue
        registration = monitor.resources.get(urn)
        rendering.resources.append(Registered(
            type=request.type, name=request.name, urn=urn, id=registration.id if registration else "",
            parent=request.parent, custom=request.custom,
            inputs=_plain(json_format.MessageToDict(request.object)),
            outputs=_plain(json.loads(json.dumps(registration.state if registration else {}, default=str))),
            dependencies=tuple(request.dependencies), provider=request.provider,
            custom_timeouts=_plain(json_format.MessageToDict(request.customTimeouts)),
            retain_on_delete=bool(request.retainOnDelete),
            ignore_changes=tuple(request.ignoreChanges), delete_before_replace=bool(request.deleteBeforeReplace),
            replace_on_changes=tuple(request.replaceOnChanges),
        ))
    return rendering


def declared(resource: Registered) -> dict[str, Any]:
    """A Kubernetes object as the program declared it, Pulumi's secret markers kept."""
    return {key: value for key, value in resource.inputs.items() if not key.startswith("__")}


def manifest(resource: Registered) -> dict[str, Any]:
    """A declared Kubernetes object as it would be applied (what `kubectl get -o yaml` shows of its spec)."""
    return reveal(declared(resource))
