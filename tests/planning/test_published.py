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


def test_the_neuron_chart_pinned_is_the_one_of_the_sdks_components_and_has_every_value_set():
    """Chart 1.9.0 ships the SDK 2.31 device plugin and scheduler extension; the chart pinned before (1.5.0) has no
    published values here, so no check could hold it to the SDK."""
    from infra.neuron import chart_values

    chart = published.published_neuron_charts()[versions.NEURON_CHART_VERSION]
    assert chart.sdk == "2.31.0" and chart.tags["devicePlugin.image.tag"] == "2.31.0.0"
    for minor in versions.KUBERNETES_RELEASES:
        assert published.neuron_chart_problems(versions.NEURON_CHART_VERSION, chart_values(minor),
                                               NEURON_SDK_VERSION) == []
    assert published.neuron_chart_problems("1.5.0", chart_values("1.33"), NEURON_SDK_VERSION) == [
        "neuron-helm-chart 1.5.0 has no published values (neuron-helm-chart-values.txt); published: 1.9.0"]


def test_a_value_the_chart_does_not_have_or_a_chart_of_another_sdk_is_a_problem():
    values = {"scheduler": {"enabled": True, "customScheduler": {"imageTag": "v1.33.7-eks-1-33-23"},
                            "nodeSelector": {"any-label": "x"}}}
    assert published.neuron_chart_problems("1.9.0", values, "2.31.1") == [
        "sets scheduler.customScheduler.imageTag, which neuron-helm-chart 1.9.0's values do not have (the chart "
        "would ignore it)"]
    assert published.neuron_chart_problems("1.9.0", {}, "2.32.0") == [
        "neuron-helm-chart 1.9.0 ships devicePlugin.image.tag 2.31.0.0, not a component of Neuron SDK 2.32.0",
        "neuron-helm-chart 1.9.0 ships scheduler.image.tag 2.31.0.0, not a component of Neuron SDK 2.32.0"]


@pytest.mark.parametrize("minor", sorted(versions.KUBERNETES_RELEASES))
def test_the_mountpoint_addon_pinned_per_minor_has_the_fixes_the_stack_relies_on(minor):
    assert published.mountpoint_addon_problems(versions.KUBERNETES_RELEASES[minor]["aws-mountpoint-s3-csi-driver"]) == []


@pytest.mark.parametrize("version, problems", [
    # The pin before: workloads sharing a Mountpoint Pod (serving pods of one node) could wait forever.
    ("v2.1.0-eksbuild.1", ["aws-mountpoint-s3-csi-driver v2.1.0-eksbuild.1 predates v2.3.0, the first release with "
                           "the fix shared-pod-attachment-wait (mountpoint-s3-csi-driver-releases.txt)",
                           "aws-mountpoint-s3-csi-driver v2.1.0-eksbuild.1 predates v2.5.0, the first release with "
                           "the fix workload-first-eviction (mountpoint-s3-csi-driver-releases.txt)"]),
    ("v2.3.0-eksbuild.1", ["aws-mountpoint-s3-csi-driver v2.3.0-eksbuild.1 predates v2.5.0, the first release with "
                           "the fix workload-first-eviction (mountpoint-s3-csi-driver-releases.txt)"]),
    ("v2.5.0-eksbuild.1", []),
    ("v2.9.9-eksbuild.1", ["aws-mountpoint-s3-csi-driver v2.9.9-eksbuild.1 is no published release of the driver "
                           "(mountpoint-s3-csi-driver-releases.txt)"]),
])
def test_a_mountpoint_addon_without_a_fix_or_unpublished_is_a_problem(version, problems):
    assert published.mountpoint_addon_problems(version) == problems


def test_the_drivers_that_support_each_family_are_the_manifest_s():
    """neuron-driver-families.txt: trn2 from the driver of Neuron 2.21.0; trn1n runs trn1's; the SDK's own driver
    (neuron-sdk-driver.txt, from its release notes) is the one the manifest lists for it."""
    assert published.first_driver_for("trn2") == "2.19.64.0"
    assert published.first_driver_for("trn1n") == published.first_driver_for("trn1") == "2.5.41.0"
    assert published.first_driver_for("inf2") == "2.7.33.0"
    assert published.first_driver_for("p5") is None
    releases = {release: driver for release, driver, _ in published.published_driver_families()}
    assert releases[NEURON_SDK_VERSION] == published.required_neuron_drivers()[NEURON_SDK_VERSION]


@pytest.mark.parametrize("minor", sorted(versions.KUBERNETES_RELEASES))
def test_the_pinned_ami_alias_drives_every_neuron_family_the_stacks_may_launch(minor):
    alias = versions.KUBERNETES_RELEASES[minor]["al2023-ami-alias"]
    assert published.ami_alias_problems(alias, NEURON_SDK_VERSION, ("inf2", "trn1", "trn1n", "trn2")) == []


def test_an_ami_whose_driver_predates_a_family_is_a_problem_for_stacks_launching_it(monkeypatch):
    """An SDK old enough for the AMI of v20241205 (driver 2.18.20.0), which no trn2 driver predates: trn2 is refused,
    trn1 is not."""
    monkeypatch.setattr(published, "required_neuron_drivers", lambda: {"2.20.2": "2.18.20.0"})
    assert published.ami_alias_problems("al2023@v20241205", "2.20.2", ("trn1",)) == []
    assert published.ami_alias_problems("al2023@v20241205", "2.20.2", ("trn1", "trn2")) == [
        "AMI alias 'al2023@v20241205' ships Neuron driver 2.18.20.0, older than 2.19.64.0, the first that supports "
        "trn2 (neuron-driver-families.txt)"]
