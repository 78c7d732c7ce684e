"""Pins against the published release data committed under planning/data/published/."""

import pytest

from common.image import NEURON_SDK_VERSION
from infra import versions
from planning.checks import published


def test_the_committed_data_holds_what_its_sources_list():
    assert published.required_neuron_drivers()["2.31.1"] == "2.29.0.0"
    assert published.published_ami_neuron_drivers()["v20250915"] == "2.23.9.0"
    assert published.published_ami_neuron_drivers()["v20260714"] == "2.29.0.0"
    tags = published.published_kube_scheduler_tags()
    assert [tag for tag in tags if tag.startswith("v1.34.")][-1] == "v1.34.9-eks-1-34-21"


@pytest.mark.parametrize("minor", sorted(versions.KUBERNETES_RELEASES))
def test_every_pinned_kube_scheduler_tag_is_published_for_its_minor(minor):
    assert published.kube_scheduler_tag_problems(versions.KUBERNETES_RELEASES[minor]["kube-scheduler"], minor) == []


@pytest.mark.parametrize("minor", sorted(versions.KUBERNETES_RELEASES))
def test_the_ami_alias_pinned_per_minor_ships_the_driver_the_pinned_sdk_needs(minor):
    alias = versions.KUBERNETES_RELEASES[minor]["al2023-ami-alias"]
    assert published.ami_alias_problems(alias, NEURON_SDK_VERSION) == []


@pytest.mark.parametrize("alias, sdk, problem", [
    ("al2023@latest", "2.31.1", "AMI alias 'al2023@latest' is not a pinned al2023 release with a published Neuron "
                                "driver (al2023-ami-neuron-driver.txt); use al2023@<release>"),
    ("bottlerocket@v1.40.0", "2.31.1", "AMI alias 'bottlerocket@v1.40.0' is not a pinned al2023 release with a "
                                       "published Neuron driver (al2023-ami-neuron-driver.txt); use al2023@<release>"),
    ("al2023@v20260714", "2.99.0", "Neuron SDK 2.99.0 has no published driver requirement (neuron-sdk-driver.txt)"),
    ("al2023@v20260625", "2.31.1", "AMI alias 'al2023@v20260625' ships Neuron driver 2.28.0.0, older than the "
                                   "2.29.0.0 that Neuron SDK 2.31.1 needs (first release with it: al2023@v20260714)"),
])
def test_an_alias_without_a_published_new_enough_driver_is_a_problem(alias, sdk, problem):
    assert published.ami_alias_problems(alias, sdk) == [problem]
