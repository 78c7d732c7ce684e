"""The compile pipeline on the tiny model: what it publishes, when it recompiles, how it races."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import pytest
import xxhash

import model.artifacts
import model.compile
from model.artifacts import ATTEMPTS_DIR, HASH_FIELD, MANIFEST_NAME, read_manifest
from model.backends import CpuBackend
from model.compile import (
    COMPILE_CODE_VERSION,
    CompileOptions,
    CompileProcessDied,
    artifact_name,
    cache_key,
    ensure_compiled,
    resolve_artifact_dir,
)
from model.components import COMPONENTS, PIPELINE_CONFIG_NAME, TRANSFORMER, GraphSpec
from model.runtime import load_generator
from common.shapes import Shape

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def _tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under a directory with its bytes and modification time."""
    return {
        path.relative_to(directory).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.rglob("*")
        if path.is_file()
    }


def _copy_artifact(artifact_dir: Path, root: Path) -> Path:
    return Path(shutil.copytree(artifact_dir, root / artifact_dir.name))


def test_published_artifact_has_a_manifest_matching_its_files(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions
) -> None:
    manifest = read_manifest(tiny_artifact_dir)
    attempt_dir = tiny_artifact_dir / manifest["attempt"]
    on_disk = {path.relative_to(attempt_dir).as_posix() for path in attempt_dir.rglob("*") if path.is_file()}
    assert on_disk == {entry["path"] for entry in manifest["files"]}
    for entry in manifest["files"]:
        data = (attempt_dir / entry["path"]).read_bytes()
        assert len(data) == entry["size"]
        assert xxhash.xxh3_128(data).hexdigest() == entry[HASH_FIELD]
    assert manifest["key"] == cache_key(tiny_compile_options, CpuBackend().toolchain_versions())
    assert manifest["artifact"] == tiny_artifact_dir.name == artifact_name(manifest["key"])
    installed = {name: importlib.metadata.version(name) for name in ("torch", "diffusers", "transformers")}
    assert installed.items() <= manifest["key"]["toolchain"].items()
    assert installed.items() <= manifest["versions"].items()
    assert manifest["versions"]["tokenizers"] == importlib.metadata.version("tokenizers")
    assert set(manifest["timings"]["graphs_s"]) == set(COMPONENTS)
    assert manifest["timings"]["copy_s"] >= 0


def test_artifact_holds_everything_serving_needs(tiny_artifact_dir: Path) -> None:
    attempt_dir = tiny_artifact_dir / read_manifest(tiny_artifact_dir)["attempt"]
    pipeline = json.loads((attempt_dir / PIPELINE_CONFIG_NAME).read_text())
    assert pipeline["shape"] == "128x96"
    assert pipeline["max_text_length"] == 32
    assert {name: spec["files"] for name, spec in pipeline["graphs"].items()} == {
        name: [f"{name}/model.pt"] for name in COMPONENTS
    }
    for required in ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/tokenizer.json"):
        assert (attempt_dir / required).is_file()
    assert json.loads((attempt_dir / "scheduler/scheduler_config.json").read_text())["use_dynamic_shifting"]


def test_resolve_points_at_the_published_directory(tiny_artifact_dir: Path, tiny_compile_options: CompileOptions):
    assert resolve_artifact_dir(tiny_compile_options, tiny_artifact_dir.parent) == tiny_artifact_dir


def test_second_compile_of_the_same_key_is_a_no_op(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _tree(tiny_artifact_dir)

    def must_not_compile(*args, **kwargs):
        raise AssertionError("compiled although the artifact is published")

    monkeypatch.setattr(model.compile, "_compile_into", must_not_compile)
    assert ensure_compiled(tiny_compile_options, tiny_artifact_dir.parent) == tiny_artifact_dir
    assert _tree(tiny_artifact_dir) == before


def test_half_written_directory_is_redone_in_a_fresh_attempt_without_touching_the_old(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, tmp_path: Path
) -> None:
    # A compile that died after copying its files but before writing the manifest.
    artifact_dir = _copy_artifact(tiny_artifact_dir, tmp_path)
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
    artifact_dir = resolve_artifact_dir(tiny_compile_options, tmp_path)
    assert not (artifact_dir / MANIFEST_NAME).exists()
    with pytest.raises(model.artifacts.ArtifactError, match="not published"):
        load_generator(artifact_dir)
    broken = _tree(artifact_dir)

    monkeypatch.setattr(model.artifacts, "_copy_new_file", real_copy)
    assert ensure_compiled(tiny_compile_options, tmp_path) == artifact_dir
    assert {path: content for path, content in _tree(artifact_dir).items() if path in broken} == broken
    assert len(list((artifact_dir / ATTEMPTS_DIR).iterdir())) == 2
    load_generator(artifact_dir)


def test_concurrent_compiles_of_one_key_publish_one_complete_artifact(
    tiny_compile_options: CompileOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hold both compiles at the manifest write, so both race for it after copying everything.
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
    artifact_dir = results[0]
    attempts = sorted((artifact_dir / ATTEMPTS_DIR).iterdir())
    assert len(attempts) == 2
    assert read_manifest(artifact_dir)["attempt"] in {f"{ATTEMPTS_DIR}/{path.name}" for path in attempts}
    load_generator(artifact_dir)


def test_each_component_compiles_in_a_process_of_its_own(
    tiny_compile_options: CompileOptions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small = dataclasses.replace(tiny_compile_options, shape=Shape(64, 64), max_text_length=8)
    with caplog.at_level(logging.INFO, logger="model.compile"):
        load_generator(ensure_compiled(small, tmp_path))
    compiled = [re.match(r"compiled (\S+) in process (\d+) ", record.getMessage()) for record in caplog.records]
    pids = {match[1]: int(match[2]) for match in compiled if match}
    assert set(pids) == set(COMPONENTS)
    assert len(set(pids.values())) == len(COMPONENTS)
    assert os.getpid() not in pids.values()


def die_like_the_out_of_memory_killer() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_component_compile_is_one_clear_error(tiny_compile_options: CompileOptions, tmp_path: Path) -> None:
    spec = GraphSpec(TRANSFORMER, die_like_the_out_of_memory_killer, ())
    with pytest.raises(CompileProcessDied, match="^the process compiling transformer died without a result"):
        model.compile._compile_in_own_process(spec, tmp_path / TRANSFORMER, tmp_path / "work", tiny_compile_options)


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


TOOLCHAIN = {"torch": "2.9.0", "torch-neuronx": "2.9.0.2.15.32035", "neuronx-cc": "2.26.6360.0"}


@pytest.mark.parametrize(
    "options, toolchain",
    [
        (_neuron(shape=Shape(576, 1024)), TOOLCHAIN),
        (_neuron(revision=COMMIT_B), TOOLCHAIN),
        (_neuron(dtype="float32"), TOOLCHAIN),
        (_neuron(tp_degree=4), TOOLCHAIN),
        (_neuron(target="inf2"), TOOLCHAIN),
        (_neuron(max_text_length=256), TOOLCHAIN),
        (_neuron(model="someone/FLUX.1-dev-finetune"), TOOLCHAIN),
        (_neuron(), {**TOOLCHAIN, "neuronx-cc": "2.27.0.0"}),
        (CompileOptions("black-forest-labs/FLUX.1-dev", COMMIT_A, Shape(1024, 576), max_text_length=512), TOOLCHAIN),
    ],
    ids=["shape", "revision", "dtype", "tp", "target", "text-length", "model", "compiler", "backend"],
)
def test_any_key_change_changes_the_directory(options: CompileOptions, toolchain: dict) -> None:
    baseline = artifact_name(cache_key(_neuron(), TOOLCHAIN))
    assert artifact_name(cache_key(_neuron(), TOOLCHAIN)) == baseline
    assert artifact_name(cache_key(options, toolchain)) != baseline


def test_max_parallel_compilations_bounds_memory_and_is_no_part_of_the_key() -> None:
    assert cache_key(_neuron(max_parallel_compilations=2), TOOLCHAIN) == cache_key(_neuron(), TOOLCHAIN)


def test_compile_code_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline = artifact_name(cache_key(_neuron(), TOOLCHAIN))
    monkeypatch.setattr(model.compile, "COMPILE_CODE_VERSION", COMPILE_CODE_VERSION + 1)
    assert artifact_name(cache_key(_neuron(), TOOLCHAIN)) != baseline


def test_directory_name_is_readable() -> None:
    name = artifact_name(cache_key(_neuron(), TOOLCHAIN))
    assert name.startswith("black-forest-labs-FLUX.1-dev-aaaaaaaaaaaa-1024x576-bfloat16-neuron-trn1-tp8-")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"revision": None}, "full 40-character commit hash"),
        ({"revision": "main"}, "full 40-character commit hash"),
        ({"target": None}, "needs --target"),
        ({"tp_degree": 0}, "at least 1"),
        ({"max_parallel_compilations": 0}, "--max-parallel-compilations 0 must be at least 1"),
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
