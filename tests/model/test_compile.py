"""The compile pipeline on the tiny model: what it publishes (weights once, graphs per shape), when it
recompiles, how it races, what it logs."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import xxhash

import model.artifacts
import model.build
import model.keys
from common import progress
from common.artifacts import COMPILE_CODE_VERSION, WEIGHTS_FORMAT_VERSION
from common.shapes import Shape
from model.artifacts import ATTEMPTS_DIR, HASH_FIELD, MANIFEST_NAME, ArtifactError, read_manifest
from model.build import CompileProcessDied, ensure_compiled, ensure_graphs, ensure_weights
from model.components import COMPONENTS, PIPELINE_CONFIG_NAME, TRANSFORMER, WEIGHTS_CONFIG_NAME, GraphSpec
from model.keys import (
    WEIGHTS_DIR, CompileOptions, artifact_name, graphs_dir, graphs_key, weights_dir, weights_key, weights_name,
)
from model.runtime import load_generator, published_weights_dir
from model.sources import TinySource

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a directory with its bytes and modification time."""
    return {
        path.relative_to(directory).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.rglob("*")
        if path.is_file()
    }


def _attempt(artifact_dir: Path) -> Path:
    return artifact_dir / read_manifest(artifact_dir)["attempt"]


def _copy_root(artifact_dir: Path, root: Path) -> Path:
    """A copy of the graphs' whole root (the graphs and their weights) under `root`; the graphs' copy."""
    shutil.copytree(artifact_dir.parent, root, dirs_exist_ok=True)
    return root / artifact_dir.name


@pytest.mark.parametrize("kind", ["graphs", "weights"])
def test_published_artifacts_have_manifests_matching_their_files(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, kind: str
) -> None:
    manifest = read_manifest(tiny_artifact_dir)
    artifact_dir = tiny_artifact_dir if kind == "graphs" else published_weights_dir(tiny_artifact_dir, manifest)
    manifest = read_manifest(artifact_dir)
    attempt_dir = _attempt(artifact_dir)
    on_disk = {path.relative_to(attempt_dir).as_posix() for path in attempt_dir.rglob("*") if path.is_file()}
    assert on_disk == {entry["path"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        data = (attempt_dir / entry["path"]).read_bytes()
        assert len(data) == entry["size"]
        assert xxhash.xxh3_128(data).hexdigest() == entry[HASH_FIELD]
    key = graphs_key(tiny_compile_options) if kind == "graphs" else weights_key(tiny_compile_options)
    assert manifest["key"] == key
    name = artifact_name(key) if kind == "graphs" else weights_name(key)
    assert manifest["artifact"] == artifact_dir.name == name
    installed = {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers")}
    assert installed.items() <= manifest["key"]["toolchain"].items()
    assert installed.items() <= manifest["versions"].items()
    assert manifest["timings"]["copy_s"] >= 0


def test_the_graphs_name_the_weights_they_take_which_live_under_the_same_root(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions
) -> None:
    manifest = read_manifest(tiny_artifact_dir)
    assert manifest["weights"] == {"artifact": weights_name(weights_key(tiny_compile_options)),
                                   "key": weights_key(tiny_compile_options)}
    assert published_weights_dir(tiny_artifact_dir, manifest) == tiny_artifact_dir.parent / WEIGHTS_DIR / \
        manifest["weights"]["artifact"]
    assert weights_dir(tiny_compile_options, tiny_artifact_dir.parent)[0] == published_weights_dir(
        tiny_artifact_dir, manifest)


def test_the_graphs_hold_everything_serving_needs_but_the_weights(tiny_artifact_dir: Path) -> None:
    attempt_dir = _attempt(tiny_artifact_dir)
    pipeline = json.loads((attempt_dir / PIPELINE_CONFIG_NAME).read_text())
    assert pipeline["shape"] == "128x96"
    assert pipeline["max_text_length"] == 32
    assert {name: spec["files"] for name, spec in pipeline["graphs"].items()} == {
        name: [f"{name}/model.pt"] for name in COMPONENTS
    }
    for required in ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/tokenizer.json"):
        assert (attempt_dir / required).is_file()
    assert json.loads((attempt_dir / "scheduler/scheduler_config.json").read_text())["use_dynamic_shifting"]
    weights_attempt = _attempt(published_weights_dir(tiny_artifact_dir, read_manifest(tiny_artifact_dir)))
    weights = json.loads((weights_attempt / WEIGHTS_CONFIG_NAME).read_text())["components"]
    assert {component: entry["files"] for component, entry in weights.items()} == {
        component: [f"{component}/tp0_sharded_checkpoint.safetensors"] for component in COMPONENTS}
    assert {component: entry["layout"] for component, entry in weights.items()} == pipeline["weights_layouts"]
    graph_bytes = sum(path.stat().st_size for path in attempt_dir.rglob("model.pt"))
    weight_bytes = sum(path.stat().st_size for path in weights_attempt.rglob("*.safetensors"))
    assert graph_bytes < weight_bytes / 10, "the graphs carry no weights"


def test_a_second_shape_compiles_graphs_only_and_publishes_no_weights(
    tiny_compile_options: CompileOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published, shardings = [], []
    real_publish, real_shard = model.build.publish, model.build._shard_weights_into
    monkeypatch.setattr(model.build, "publish",
                        lambda staged, artifact_dir, manifest: published.append(artifact_dir)
                        or real_publish(staged, artifact_dir, manifest))
    monkeypatch.setattr(model.build, "_shard_weights_into",
                        lambda *args: shardings.append(args) or real_shard(*args))
    first = ensure_compiled(tiny_compile_options, tmp_path)
    second_shape = dataclasses.replace(tiny_compile_options, shape=Shape(64, 80))
    second = ensure_compiled(second_shape, tmp_path)

    weights = weights_dir(tiny_compile_options, tmp_path)[0]
    assert len(shardings) == 1, "the checkpoint is sharded once for both shapes"
    assert published == [weights, first, second], "the weights are uploaded once"
    assert read_manifest(first)["weights"] == read_manifest(second)["weights"]
    for graphs, shape in ((first, tiny_compile_options.shape), (second, second_shape.shape)):
        image = load_generator(graphs).generate("a cat", 1, 3.5, seed=0)
        assert (image.height, image.width) == (shape.height, shape.width)


def test_a_second_compile_of_published_keys_is_a_no_op(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _tree(tiny_artifact_dir.parent)

    def must_not_run(*args, **kwargs):
        raise AssertionError("compiled although the artifacts are published")

    monkeypatch.setattr(model.build, "_compile_graphs_into", must_not_run)
    monkeypatch.setattr(model.build, "_shard_weights_into", must_not_run)
    with caplog.at_level(logging.INFO, logger="model.build"):
        assert ensure_compiled(tiny_compile_options, tiny_artifact_dir.parent) == tiny_artifact_dir
    assert _tree(tiny_artifact_dir.parent) == before
    events = [record.fields for record in caplog.records if hasattr(record, "fields")]
    assert [(event["event"], event["kind"]) for event in events] == [
        (progress.ALREADY_PUBLISHED, progress.WEIGHTS), (progress.ALREADY_PUBLISHED, progress.GRAPHS)]


def test_graphs_and_weights_compile_apart_and_load_together(tiny_compile_options: CompileOptions,
                                                            tmp_path: Path) -> None:
    graphs = ensure_graphs(tiny_compile_options, tmp_path)
    weights = weights_dir(tiny_compile_options, tmp_path)[0]
    assert not weights.exists(), "--graphs-only publishes no weights"
    with pytest.raises(ArtifactError, match="not published"):
        load_generator(graphs)
    assert ensure_weights(tiny_compile_options, tmp_path) == weights
    assert load_generator(graphs).generate("a cat", 1, 3.5, seed=0).size == (96, 128)


def test_weights_other_graphs_take_are_refused_by_name(tiny_artifact_dir: Path, tiny_compile_options: CompileOptions,
                                                       tmp_path: Path) -> None:
    bfloat16 = dataclasses.replace(tiny_compile_options, dtype="bfloat16")
    other = ensure_weights(bfloat16, tmp_path)
    with pytest.raises(ArtifactError, match=rf"^{other.name} does not hold the weights {tiny_artifact_dir.name}'s "
                                            r"text_encoder graph takes"):
        load_generator(tiny_artifact_dir, weights_dir=other)


def test_half_written_directory_is_redone_in_a_fresh_attempt_without_touching_the_old(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, tmp_path: Path
) -> None:
    # A compile that died after copying its files but before writing the manifest.
    artifact_dir = _copy_root(tiny_artifact_dir, tmp_path)
    old_attempt = read_manifest(artifact_dir)["attempt"]
    (artifact_dir / MANIFEST_NAME).unlink()
    before = _tree(artifact_dir)

    assert ensure_compiled(tiny_compile_options, tmp_path) == artifact_dir

    new_attempt = read_manifest(artifact_dir)["attempt"]
    assert new_attempt != old_attempt
    after = _tree(artifact_dir)
    assert {path: after[path] for path in before} == before
    assert load_generator(artifact_dir).shape == tiny_compile_options.shape


def test_interrupted_publish_leaves_no_manifest_and_the_rerun_publishes(
    tiny_compile_options: CompileOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = model.artifacts._copy_new_file
    copied = []

    def copy_then_crash(source: Path, destination: Path):
        if len(copied) == 3:
            raise OSError("disk full")
        copied.append(destination)
        return real_copy(source, destination)

    monkeypatch.setattr(model.artifacts, "_copy_new_file", copy_then_crash)
    with pytest.raises(OSError, match="disk full"):
        ensure_compiled(tiny_compile_options, tmp_path)
    weights = weights_dir(tiny_compile_options, tmp_path)[0]
    assert not (weights / MANIFEST_NAME).exists()
    broken = _tree(weights)

    monkeypatch.setattr(model.artifacts, "_copy_new_file", real_copy)
    artifact_dir = ensure_compiled(tiny_compile_options, tmp_path)
    assert {path: content for path, content in _tree(weights).items() if path in broken} == broken
    assert len(list((weights / ATTEMPTS_DIR).iterdir())) == 2
    load_generator(artifact_dir)


def test_concurrent_compiles_of_one_key_publish_one_complete_artifact(
    tiny_compile_options: CompileOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold both compiles at each manifest write, so both race for it after copying everything.
    both_copied = threading.Barrier(2, timeout=60)
    real_write = model.artifacts._write_new_file

    def write_when_both_are_ready(path: Path, data: bytes) -> None:
        both_copied.wait()
        real_write(path, data)

    monkeypatch.setattr(model.artifacts, "_write_new_file", write_when_both_are_ready)
    results, errors = [], []

    def compile_once() -> None:
        try:
            results.append(ensure_compiled(tiny_compile_options, tmp_path))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=compile_once) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(set(results)) == 1
    for artifact_dir in (results[0], weights_dir(tiny_compile_options, tmp_path)[0]):
        attempts = sorted((artifact_dir / ATTEMPTS_DIR).iterdir())
        assert len(attempts) == 2
        assert read_manifest(artifact_dir)["attempt"] in {f"{ATTEMPTS_DIR}/{path.name}" for path in attempts}
    load_generator(results[0])


def test_progress_events_count_every_step_each_component_in_a_process_of_its_own(
    tiny_compile_options: CompileOptions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = dataclasses.replace(tiny_compile_options, shape=Shape(64, 64), max_text_length=8)
    with caplog.at_level(logging.INFO, logger="model.build"):
        ensure_graphs(small, tmp_path)
    events = [record.fields for record in caplog.records if hasattr(record, "fields")]
    assert [event["event"] for event in events] == [progress.STARTED] + [
        progress.STEP_STARTED, progress.STEP_FINISHED] * len(COMPONENTS) + [progress.PUBLISHED]
    assert events[0]["steps"] == list(COMPONENTS)
    assert events[0]["artifact"] == events[-1]["artifact"] == graphs_dir(small, tmp_path)[0].name
    finished = [event for event in events if event["event"] == progress.STEP_FINISHED]
    assert [(event["step"], event["index"], event["count"]) for event in finished] == [
        (component, index, len(COMPONENTS)) for index, component in enumerate(COMPONENTS, 1)]
    pids = {event["pid"] for event in finished}
    assert len(pids) == len(COMPONENTS) and os.getpid() not in pids


def die_like_the_out_of_memory_killer(weights: bool) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_component_process_is_one_clear_error(tiny_compile_options: CompileOptions, tmp_path: Path) -> None:
    spec = GraphSpec(TRANSFORMER, die_like_the_out_of_memory_killer, ())
    with pytest.raises(CompileProcessDied, match="^the process running compile_component for transformer died"):
        model.build._in_own_process(model.build.compile_component, "cpu", spec, tmp_path / TRANSFORMER,
                                    tmp_path / "work", model.build._settings(tiny_compile_options, None, TinySource()))


def test_a_compile_that_fails_says_so_in_an_event(tiny_compile_options: CompileOptions, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    def run_out_of_disk(*args):
        raise OSError("No space left on device\nmore detail")

    monkeypatch.setattr(model.build, "_compile_graphs_into", run_out_of_disk)
    with caplog.at_level(logging.INFO, logger="model.build"), pytest.raises(OSError):
        ensure_graphs(tiny_compile_options, tmp_path)
    (failed,) = [record.fields for record in caplog.records if getattr(record, "fields", {}).get("event") == "failed"]
    assert failed == {"event": progress.FAILED, "kind": progress.GRAPHS, "error": "No space left on device"}


def _neuron(**changes) -> CompileOptions:
    base = CompileOptions(
        model="black-forest-labs/FLUX.1-dev",
        revision=COMMIT_A,
        shape=Shape(1024, 576),
        dtype="bfloat16",
        backend="neuron",
        tp_degree=8,
        max_text_length=512,
        target="trn1",
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "changes, graphs_change, weights_change",
    [
        ({"shape": Shape(576, 1024)}, True, False),
        ({"target": "inf2"}, True, False),
        ({"max_text_length": 256}, True, False),
        ({"revision": COMMIT_B}, True, True),
        ({"model": "someone/FLUX.1-dev-finetune"}, True, True),
        ({"dtype": "float32"}, True, True),
        ({"tp_degree": 4}, True, True),
    ],
    ids=["shape", "target", "text-length", "revision", "model", "dtype", "tp"],
)
def test_what_changes_the_graphs_and_what_the_weights(neuron_distributions, changes: dict, graphs_change: bool,
                                                      weights_change: bool) -> None:
    baseline, changed = _neuron(), _neuron(**changes)
    assert artifact_name(graphs_key(baseline)) == artifact_name(graphs_key(_neuron()))
    assert (artifact_name(graphs_key(changed)) != artifact_name(graphs_key(baseline))) == graphs_change
    assert (weights_name(weights_key(changed)) != weights_name(weights_key(baseline))) == weights_change


def test_the_installed_toolchain_is_part_of_both_keys(neuron_distributions, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    graphs, weights = graphs_key(_neuron()), weights_key(_neuron())
    assert neuron_distributions.items() <= graphs["toolchain"].items()
    assert weights["toolchain"]["neuronx-distributed"] == neuron_distributions["neuronx-distributed"]
    assert "neuronx-cc" not in weights["toolchain"], "the weights are cut by NxD, not compiled"
    versions = dict(neuron_distributions, **{"neuronx-cc": "2.27.0.0"})
    monkeypatch.setattr(model.keys, "installed_versions",
                        lambda names: {name: versions.get(name) or importlib.metadata.version(name) for name in names})
    assert graphs_key(_neuron()) != graphs and weights_key(_neuron()) == weights


def test_the_code_versions_are_part_of_their_keys(neuron_distributions, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs, weights = artifact_name(graphs_key(_neuron())), weights_name(weights_key(_neuron()))
    monkeypatch.setattr(model.keys, "COMPILE_CODE_VERSION", COMPILE_CODE_VERSION + 1)
    assert artifact_name(graphs_key(_neuron())) != graphs
    assert weights_name(weights_key(_neuron())) == weights
    monkeypatch.setattr(model.keys, "WEIGHTS_FORMAT_VERSION", WEIGHTS_FORMAT_VERSION + 1)
    assert weights_name(weights_key(_neuron())) != weights


def test_directory_names_are_readable(neuron_distributions) -> None:
    assert artifact_name(graphs_key(_neuron())).startswith(
        "black-forest-labs-FLUX.1-dev-aaaaaaaaaaaa-1024x576-bfloat16-neuron-trn1-tp8-")
    assert weights_name(weights_key(_neuron())).startswith("black-forest-labs-FLUX.1-dev-aaaaaaaaaaaa-bfloat16-neuron-tp8-")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"revision": None}, "full 40-character commit hash"),
        ({"revision": "main"}, "full 40-character commit hash"),
        ({"target": None}, "needs --target"),
        ({"tp_degree": 0}, "at least 1"),
        ({"max_text_length": 513}, "outside 1..512"),
        ({"dtype": "float16"}, "not a supported dtype"),
        ({"backend": "gpu"}, "unknown backend"),
        ({"shape": "1024x576"}, "must be a Shape"),
        ({"backend": "cpu", "tp_degree": 2, "target": None}, "cpu backend"),
        ({"model": "tiny", "revision": COMMIT_A}, "takes no --revision"),
    ],
)
def test_options_that_could_not_compile_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _neuron(**changes)


def test_graphs_need_a_shape() -> None:
    with pytest.raises(ValueError, match="one image shape: give --shape"):
        graphs_key(_neuron(shape=None, backend="cpu", target=None, tp_degree=1))
