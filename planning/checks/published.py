"""Published versions: what the stack pulls and boots exists in the release data committed under
planning/data/published/ (each file names its source), and fits together."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

from common.image import NEURON_SDK_VERSION
from common.neuron import NEURON_FAMILIES
from infra import versions
from planning import DATA
from planning.checks.objects import HELM_RELEASE, NEURON_CHART, Objects, Problem, kubernetes_version, where
from planning.offline import Rendering
from planning.secrets import reveal

FAMILY = "Published versions"

PUBLISHED = DATA / "published"
KUBE_SCHEDULER_TAGS = PUBLISHED / "kube-scheduler-tags.txt"
AMI_NEURON_DRIVERS = PUBLISHED / "al2023-ami-neuron-driver.txt"
SDK_NEURON_DRIVERS = PUBLISHED / "neuron-sdk-driver.txt"
DRIVER_FAMILIES = PUBLISHED / "neuron-driver-families.txt"
NEURON_CHART_VALUES = PUBLISHED / "neuron-helm-chart-values.txt"
MOUNTPOINT_RELEASES = PUBLISHED / "mountpoint-s3-csi-driver-releases.txt"
# The only AMI family whose Neuron driver per release is in the committed data.
NEURON_AMI_FAMILY = "al2023"
# Families that run another family's driver packages (DRIVER_FAMILIES says why).
DRIVER_PACKAGE_FAMILY = {"trn1n": "trn1"}
# The Mountpoint CSI driver fixes the stack relies on (MOUNTPOINT_RELEASES says what each is).
REQUIRED_MOUNTPOINT_FIXES = ("shared-pod-attachment-wait", "workload-first-eviction")
ADDON = "aws:eks/addon:Addon"
INSTANCE_FAMILY = "karpenter.k8s.aws/instance-family"
MOUNTPOINT_ADDON = "aws-mountpoint-s3-csi-driver"


def _records(path: Path) -> list[list[str]]:
    """The data lines of a committed data file (its `#` lines name the source), split on whitespace."""
    return [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@functools.cache
def published_kube_scheduler_tags() -> tuple[str, ...]:
    """Every published kube-scheduler tag, in release order."""
    return tuple(image.split(":", 1)[1] for [image] in _records(KUBE_SCHEDULER_TAGS))


@functools.cache
def published_ami_neuron_drivers() -> dict[str, str]:
    """AMI release (`v20260714`) -> the Neuron driver version its AL2023 Neuron variant ships."""
    return {release: driver.removesuffix("-dkms") for release, driver in _records(AMI_NEURON_DRIVERS)}


@functools.cache
def required_neuron_drivers() -> dict[str, str]:
    """Neuron SDK version -> the oldest Neuron driver it works with."""
    return dict(_records(SDK_NEURON_DRIVERS))


@functools.cache
def published_driver_families() -> tuple[tuple[str, str, frozenset[str]], ...]:
    """(Neuron SDK release, the driver it ships, the instance families that driver supports), newest first."""
    return tuple((release, driver, frozenset(families)) for release, driver, *families in _records(DRIVER_FAMILIES))


def first_driver_for(family: str) -> str | None:
    """The oldest published Neuron driver that supports an instance family (None: none does)."""
    package_family = DRIVER_PACKAGE_FAMILY.get(family, family)
    drivers = [driver for _, driver, families in published_driver_families() if package_family in families]
    return min(drivers, key=_numeric) if drivers else None


@dataclass(frozen=True)
class PublishedChart:
    sdk: str                 # the Neuron SDK whose components it ships
    tags: dict[str, str]     # value path -> the component image tag it sets
    paths: frozenset[str]    # every value path of its values.yaml
    open_paths: frozenset[str] = frozenset()  # mappings whose keys the user chooses (nodeSelector)

    def has(self, path: str) -> bool:
        return path in self.paths or any(path.startswith(f"{open_path}.") for open_path in self.open_paths)


@functools.cache
def published_neuron_charts() -> dict[str, PublishedChart]:
    """neuron-helm-chart version -> what its published values hold."""
    charts: dict[str, PublishedChart] = {}
    version = ""
    for record in _records(NEURON_CHART_VALUES):
        if record[0] == "chart":
            version = record[1]
            charts[version] = PublishedChart(record[3], {}, frozenset())
        elif record[0] == "tag":
            charts[version].tags[record[1]] = record[2]
        else:
            chart = charts[version]
            charts[version] = replace(chart, paths=chart.paths | {record[1]},
                                      open_paths=chart.open_paths | ({record[1]} if record[2:] == ["{}"] else set()))
    return charts


@functools.cache
def published_mountpoint_releases() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The Mountpoint CSI driver's releases in order, each with the fixes it is the first to have."""
    return tuple((release, tuple(fixes)) for release, *fixes in _records(MOUNTPOINT_RELEASES))


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _sdk_minor(version: str) -> tuple[int, ...]:
    return _numeric(version)[:2]


def value_paths(values: dict, prefix: str = "") -> list[str]:
    """Every key path a Helm values mapping sets: a mapping's own path and each key below it."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(value, dict):
            paths += value_paths(value, f"{path}.")
    return paths


def neuron_chart_problems(version: str, values: dict, sdk_version: str) -> list[str]:
    """Why a neuron-helm-chart version, with these values, does not fit the Neuron SDK (empty if it does): its
    published values must have every key set, and its components must be the SDK's."""
    chart = published_neuron_charts().get(version)
    if chart is None:
        return [f"neuron-helm-chart {version} has no published values ({NEURON_CHART_VALUES.name}); published: "
                f"{', '.join(published_neuron_charts())}"]
    found = [f"sets {path}, which neuron-helm-chart {version}'s values do not have (the chart would ignore it)"
             for path in value_paths(values) if not chart.has(path)]
    for path, tag in sorted(chart.tags.items()):
        if _sdk_minor(tag) != _sdk_minor(sdk_version):
            found.append(f"neuron-helm-chart {version} ships {path} {tag}, not a component of Neuron SDK {sdk_version}")
    return found


def mountpoint_addon_problems(addon_version: str) -> list[str]:
    """Why a Mountpoint CSI add-on version lacks a fix the stack relies on (empty if it has them all)."""
    release = addon_version.split("-eksbuild", 1)[0]
    releases = published_mountpoint_releases()
    order = [name for name, _ in releases]
    if release not in order:
        return [f"{MOUNTPOINT_ADDON} {addon_version} is no published release of the driver ({MOUNTPOINT_RELEASES.name})"]
    found = []
    for fix in REQUIRED_MOUNTPOINT_FIXES:
        first = next(name for name, fixes in releases if fix in fixes)
        if order.index(release) < order.index(first):
            found.append(f"{MOUNTPOINT_ADDON} {addon_version} predates {first}, the first release with the fix "
                         f"{fix} ({MOUNTPOINT_RELEASES.name})")
    return found


def kube_scheduler_tag_problems(tag: str, minor: str) -> list[str]:
    """Why a kube-scheduler tag is no published EKS Distro release of that Kubernetes minor (empty if it is)."""
    published = published_kube_scheduler_tags()
    of_minor = [known for known in published if known.startswith(f"v{minor}.")]
    latest = f"; the latest published {minor} tag is {of_minor[-1]!r}" if of_minor else ""
    if not tag.startswith(f"v{minor}."):
        return [f"kube-scheduler tag {tag!r} is not a Kubernetes {minor} release{latest}"]
    if tag not in published:
        return [f"kube-scheduler tag {tag!r} is in no published EKS Distro release "
                f"({KUBE_SCHEDULER_TAGS.name}){latest}"]
    return []


def ami_alias_problems(alias: str, sdk_version: str, families: tuple[str, ...] = ()) -> list[str]:
    """Why the AMI an alias resolves to cannot run the Neuron SDK, or drive the Neuron instance families the stack's
    NodePools launch (empty if it can), from the committed data."""
    family, _, release = alias.partition("@")
    drivers = published_ami_neuron_drivers()
    required = required_neuron_drivers().get(sdk_version)
    if required is None:
        return [f"Neuron SDK {sdk_version} has no published driver requirement ({SDK_NEURON_DRIVERS.name})"]
    if family != NEURON_AMI_FAMILY or release not in drivers:
        return [f"AMI alias {alias!r} is not a pinned {NEURON_AMI_FAMILY} release with a published Neuron driver "
                f"({AMI_NEURON_DRIVERS.name}); use {NEURON_AMI_FAMILY}@<release>"]
    if _numeric(drivers[release]) < _numeric(required):
        newer = sorted(r for r, driver in drivers.items() if _numeric(driver) >= _numeric(required))
        first = f" (first release with it: {NEURON_AMI_FAMILY}@{newer[0]})" if newer else ""
        return [f"AMI alias {alias!r} ships Neuron driver {drivers[release]}, older than the {required} that "
                f"Neuron SDK {sdk_version} needs{first}"]
    found = []
    for family in families:
        oldest = first_driver_for(family)
        if oldest is None:
            found.append(f"no published Neuron driver supports {family} ({DRIVER_FAMILIES.name})")
        elif _numeric(drivers[release]) < _numeric(oldest):
            found.append(f"AMI alias {alias!r} ships Neuron driver {drivers[release]}, older than {oldest}, the first "
                         f"that supports {family} ({DRIVER_FAMILIES.name})")
    return found


def _neuron_chart_releases(rendering: Rendering) -> list[tuple[str, str, dict]]:
    """(release, chart version, values) of every neuron-helm-chart release."""
    return [(release.name, inputs.get("version", "(latest)"), inputs.get("values") or {})
            for release in rendering.of_type(HELM_RELEASE)
            for inputs in (reveal(release.inputs),) if inputs.get("chart", "").endswith("/" + NEURON_CHART)]


def _neuron_scheduler_tag(values: dict) -> str:
    image = ((values.get("scheduler") or {}).get("customScheduler") or {}).get("image")
    return (image or {}).get("tag", "(chart default)")


def problems(rendering: Rendering, objects: Objects) -> list[Problem]:
    """What the stack pulls and boots exists in the published release data, and fits together."""
    minor = kubernetes_version(rendering)
    found = []
    for name, version, values in _neuron_chart_releases(rendering):
        found += [f"Release {name}: {text}" for text in kube_scheduler_tag_problems(_neuron_scheduler_tag(values), minor)]
        found += [f"Release {name}: {text}" for text in neuron_chart_problems(version, values, NEURON_SDK_VERSION)]
    for addon in rendering.of_type(ADDON):
        if addon.inputs.get("addonName") == MOUNTPOINT_ADDON:
            found += [f"Addon {addon.name}: {text}" for text in mountpoint_addon_problems(addon.inputs["addonVersion"])]
    # The Neuron families the NodePools launch (every NodePool uses the one EC2NodeClass).
    families = tuple(sorted({family for pool in objects.of_kind("NodePool")
                             for term in pool["spec"]["template"]["spec"]["requirements"]
                             if term["key"] == INSTANCE_FAMILY for family in term["values"]
                             if family in NEURON_FAMILIES}))
    for node_class in objects.of_kind("EC2NodeClass"):
        for term in node_class.get("spec", {}).get("amiSelectorTerms", []):
            if "alias" in term:
                found += [f"{where(node_class)}: {text}"
                          for text in ami_alias_problems(term["alias"], NEURON_SDK_VERSION, families)]
    # The other pinned minors too (this stack's is checked above, as rendered): a stack may move to one.
    for pinned_minor, pins in sorted(versions.KUBERNETES_RELEASES.items()):
        if pinned_minor == minor:
            continue
        found += [f"infra/versions.py KUBERNETES_RELEASES[{pinned_minor!r}]: {text}"
                  for text in (*kube_scheduler_tag_problems(pins["kube-scheduler"], pinned_minor),
                               *mountpoint_addon_problems(pins[MOUNTPOINT_ADDON]))]
    return [Problem(FAMILY, text) for text in found]
