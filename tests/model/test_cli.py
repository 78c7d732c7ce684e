"""`python -m model.compile` as the Kubernetes Jobs and pods call it: exit codes, last stdout line, one-line errors.

The contract itself runs in real subprocesses, independent ones side by side to keep the
suite fast; the many ways options can be wrong call main() in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.image import NEURON_DLC_IMAGE
from model.artifacts import MANIFEST_NAME, read_manifest
from model.compile import EXIT_FAILED, EXIT_NOT_PUBLISHED, EXIT_USAGE, CompileOptions, main
from model.runtime import load_generator
from common.shapes import SHAPE_RULE

REPO = Path(__file__).resolve().parents[2]
TINY_SMALL = ["--model", "tiny", "--backend", "cpu", "--shape", "64x64", "--max-text-length", "8"]


def _run_side_by_side(*argvs: list[str]) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "model.compile", *argv],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    results = []
    for argv, process in zip(argvs, processes):
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(argv, process.returncode, stdout, stderr))
    return results


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _options_argv(options: CompileOptions) -> list[str]:
    flags = {
        "--model": options.model,
        "--backend": options.backend,
        "--shape": str(options.shape),
        "--dtype": options.dtype,
        "--max-text-length": str(options.max_text_length),
    }
    return [part for flag, value in flags.items() for part in (flag, value)]


def test_resolve_and_recompile_of_a_published_artifact_and_clean_usage_errors(
    tiny_artifact_dir: Path, tiny_compile_options: CompileOptions, tmp_path: Path
) -> None:
    published = [*_options_argv(tiny_compile_options), "--out", str(tiny_artifact_dir.parent)]
    unpublished = [*TINY_SMALL, "--out", str(tmp_path)]
    resolved, recompiled, odd_shape, not_published = _run_side_by_side(
        [*published, "--resolve"],
        published,
        [*unpublished, "--shape", "65x64"],
        [*unpublished, "--resolve"],
    )
    assert (resolved.returncode, _last_line(resolved.stdout)) == (0, str(tiny_artifact_dir)), resolved.stderr
    assert (recompiled.returncode, _last_line(recompiled.stdout)) == (0, str(tiny_artifact_dir)), recompiled.stderr
    assert "already published" in recompiled.stderr

    assert odd_shape.returncode == EXIT_USAGE
    assert odd_shape.stdout == ""
    assert odd_shape.stderr.strip().splitlines() == [
        f"python -m model.compile: error: '65x64' has height 65: expected {SHAPE_RULE}"
    ]

    assert not_published.returncode == EXIT_NOT_PUBLISHED, not_published.stderr
    artifact_dir = Path(_last_line(not_published.stdout))
    assert artifact_dir.parent == tmp_path
    assert not artifact_dir.exists(), "--resolve never compiles"


def test_two_processes_compiling_one_key_publish_one_usable_artifact_and_print_it_last(tmp_path: Path) -> None:
    argv = [*TINY_SMALL, "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "scratch")]
    first, second = _run_side_by_side(argv, argv)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert _last_line(first.stdout) == _last_line(second.stdout)
    artifact_dir = Path(_last_line(first.stdout))
    assert artifact_dir.parent == tmp_path / "out"
    assert read_manifest(artifact_dir)["key"]["dtype"] == "bfloat16", "the default dtype"
    assert load_generator(artifact_dir).generate("a cat", 1, 3.5, seed=0).size == (64, 64)
    assert list((tmp_path / "scratch").iterdir()) == [], "compiler scratch is cleaned up"


def _main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "black-forest-labs/FLUX.1-dev", "--shape", "64x64"], "full 40-character commit hash"),
        ([*TINY_SMALL, "--target", "trn1"], "cpu backend"),
        ([*TINY_SMALL, "--tp-degree", "2"], "cpu backend"),
        ([*TINY_SMALL, "--max-text-length", "600"], "outside 1..512"),
        ([*TINY_SMALL, "--dtype", "float16"], "invalid choice"),
        ([*TINY_SMALL, "--backend", "neuron"], "needs --target"),
        ([*TINY_SMALL, "--max-parallel-compilations", "0"], "must be at least 1"),
        ([*TINY_SMALL, "--max-parallel-compilations", "two"], "invalid int value"),
    ],
)
def test_bad_options_are_one_usage_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    code, out, err = _main([*argv, "--out", str(tmp_path)], capsys)
    assert code == EXIT_USAGE
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_missing_out_is_a_usage_error(capsys) -> None:
    code, _, err = _main(TINY_SMALL, capsys)
    assert code == EXIT_USAGE and "--out" in err


def test_neuron_backend_without_the_neuron_sdk_is_one_clear_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes the import raise ImportError, as on this machine or with
    # PyPI's placeholder packages, even if a test elsewhere installed fakes.
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)
    for resolve in ([], ["--resolve"]):
        argv = [*TINY_SMALL, "--out", str(tmp_path), "--backend", "neuron", "--target", "trn1", *resolve]
        code, out, err = _main(argv, capsys)
        assert code == EXIT_FAILED
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and NEURON_DLC_IMAGE in err


def test_a_manifest_for_another_key_fails_cleanly(tmp_path: Path, capsys) -> None:
    _, out, _ = _main([*TINY_SMALL, "--out", str(tmp_path), "--resolve"], capsys)
    artifact_dir = Path(_last_line(out))
    artifact_dir.mkdir()
    (artifact_dir / MANIFEST_NAME).write_text(json.dumps({"format": 1, "key": {}, "attempt": "x", "files": []}))
    code, _, err = _main([*TINY_SMALL, "--out", str(tmp_path)], capsys)
    assert code == EXIT_FAILED
    assert "another key" in err.strip().splitlines()[-1]


def test_max_parallel_compilations_reaches_the_compile(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.compile

    compiled = []
    monkeypatch.setattr(model.compile, "ensure_compiled", lambda options, out, scratch: compiled.append(options) or out)
    for extra, expected in (([], None), (["--max-parallel-compilations", "3"], 3)):
        code, _, err = _main([*TINY_SMALL, "--out", str(tmp_path), *extra], capsys)
        assert code == 0, err
        assert compiled[-1].max_parallel_compilations == expected
