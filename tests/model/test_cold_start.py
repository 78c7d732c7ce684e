"""The cold-start read path around load_generator, and bench.cold_start run end to end (tiny, untimed)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench import cold_start
from model.artifacts import read_manifest
from model.backends import WEIGHTS_FILE
from model.components import COMPONENTS, TENSOR_PARALLEL_COMPONENTS, WEIGHTS_CONFIG_NAME
from model.runtime import STAGING_PREFIX, load_generator, published_weights_dir

HOLD_LOCK = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); " \
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"


def test_copies_a_killed_process_left_are_removed_and_copies_in_use_kept(
    tiny_artifact_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    abandoned, in_use = tmp_path / f"{STAGING_PREFIX}abandoned", tmp_path / f"{STAGING_PREFIX}in-use"
    for directory in (abandoned, in_use):
        directory.mkdir()
        (directory / "transformer.pt").write_bytes(b"graph")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(in_use)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        first = load_generator(tiny_artifact_dir)
        second = load_generator(tiny_artifact_dir)
        assert not abandoned.exists()
        assert in_use.exists()
        # Both generators' own copies stay while they live.
        copies = {path.name for path in tmp_path.glob(f"{STAGING_PREFIX}*")} - {in_use.name}
        assert len(copies) == 2
        assert first.manifest == second.manifest == read_manifest(tiny_artifact_dir)
    finally:
        holder.kill()
        holder.wait()


def test_the_synthetic_artifact_has_the_real_weights_layout(tiny_artifact_dir: Path, tmp_path: Path):
    staged = tmp_path / "staged"
    sizes = cold_start.stage_synthetic_artifact(staged, size_gb=0.01, tp_degree=4)
    files = {path.relative_to(staged).as_posix() for path in staged.rglob("*") if path.is_file()}
    ranks = {component: 4 if component in TENSOR_PARALLEL_COMPONENTS else 1 for component in COMPONENTS}
    assert files == {WEIGHTS_CONFIG_NAME} | {f"{component}/{WEIGHTS_FILE.format(rank=rank)}"
                                             for component, count in ranks.items() for rank in range(count)}
    published = read_manifest(published_weights_dir(tiny_artifact_dir, read_manifest(tiny_artifact_dir)))
    assert {entry["path"] for entry in published["files"]} == {WEIGHTS_CONFIG_NAME} | {
        f"{component}/{WEIGHTS_FILE.format(rank=0)}" for component in COMPONENTS}, "the real one, at TP 1"
    assert sizes["transformer"] > sizes["text_encoder_2"] > sizes["text_encoder"] > 0


def test_bench_prints_both_sides_and_the_ratio(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    # Dropping the page cache would slow everything else on the machine: the test runs warm.
    monkeypatch.setattr(cold_start, "drop_page_cache", lambda: False)
    assert cold_start.main(["--size-gb", "0.01", "--rounds", "1", "--work", str(tmp_path), "--local",
                            str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "raw sequential read" in output and "verified load" in output
    assert "both read from the page cache (warm)" in output
    assert "verified load / raw read ratio" in output.splitlines()[-1]
