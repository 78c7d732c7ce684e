"""bench.compile_work: the old design's work against the new one, measured on the tiny model and counted for
FLUX.1-dev from the sizing model (untimed: the numbers are checked for what they must be, not how fast)."""

from __future__ import annotations

from bench import compile_work
from common.shapes import Shape
from infra import sizing
from infra.config import load_stack_config
from infra.pods import WorkloadSettings
from planning.offline import stack_file_config


def test_the_tiny_model_publishes_its_weights_once_where_the_old_design_put_them_in_every_shape() -> None:
    published = compile_work.measured_tiny((Shape(64, 64), Shape(64, 80)))
    assert len(published.graphs) == 2 and published.weights > 10 * max(published.graphs), "graphs hold no weights"
    assert published.old - published.new == published.weights, "the second shape uploads no weights"


def test_flux_dev_counts_one_build_and_one_compile_per_component_and_shape_against_one_per_rank() -> None:
    config = load_stack_config(stack_file_config("dev")[0])
    settings, shapes = WorkloadSettings.of(config), tuple(config.shapes)
    old, new = compile_work.flux_dev(settings, shapes)
    tp = settings.compile.tensor_parallel
    per_shape_old = sum(tp if component.sharded else 1 for component in sizing.FLUX_DEV)
    assert (old.builds, old.compiles) == (len(shapes) * per_shape_old,) * 2
    assert new.compiles == len(shapes) * len(sizing.FLUX_DEV)
    assert new.builds == new.compiles + len(sizing.FLUX_DEV), "plus the weights Job's one load of each"
    assert old.published_gb == len(shapes) * sizing.artifact_bytes(settings.dtype) / compile_work.GB
    assert new.cpu_hours < old.cpu_hours and new.published_gb < old.published_gb
