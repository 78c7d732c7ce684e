"""Published versions: what the stack pulls and boots exists in the release data committed under
planning/data/published/ (each file names its source), and fits together."""

from __future__ import annotations

import functools
from pathlib import Path

from common.image import NEURON_SDK_VERSION
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
# The only AMI family whose Neuron driver per release is in the committed data.
NEURON_AMI_FAMILY = "al2023"


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


def _numeric(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


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


def ami_alias_problems(alias: str, sdk_version: str) -> list[str]:
    """Why the AMI an alias resolves to cannot run the Neuron SDK (empty if it can), from the committed data."""
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
    return []


def _neuron_scheduler_tags(rendering: Rendering) -> list[tuple[str, str]]:
    """(release, kube-scheduler image tag) of every neuron-helm-chart release."""
    tags = []
    for release in rendering.of_type(HELM_RELEASE):
        inputs = reveal(release.inputs)
        if inputs.get("chart", "").endswith("/" + NEURON_CHART):
            image = (((inputs.get("values") or {}).get("scheduler") or {}).get("customScheduler") or {}).get("image")
            tags.append((release.name, (image or {}).get("tag", "(chart default)")))
    return tags


def problems(rendering: Rendering, objects: Objects) -> list[Problem]:
    """What the stack pulls and boots exists in the published release data, and fits together."""
    minor = kubernetes_version(rendering)
    found = [f"Release {name}: {text}" for name, tag in _neuron_scheduler_tags(rendering)
             for text in kube_scheduler_tag_problems(tag, minor)]
    for node_class in objects.of_kind("EC2NodeClass"):
        for term in node_class.get("spec", {}).get("amiSelectorTerms", []):
            if "alias" in term:
                found += [f"{where(node_class)}: {text}"
                          for text in ami_alias_problems(term["alias"], NEURON_SDK_VERSION)]
    # The other pinned minors too (this stack's is checked above, as rendered): a stack may move to one.
    for pinned_minor, pins in sorted(versions.KUBERNETES_RELEASES.items()):
        if pinned_minor == minor:
            continue
        found += [f"infra/versions.py KUBERNETES_RELEASES[{pinned_minor!r}]: {text}"
                  for text in kube_scheduler_tag_problems(pins["kube-scheduler"], pinned_minor)]
    return [Problem(FAMILY, text) for text in found]
