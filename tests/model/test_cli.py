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

from common.artifacts import EXIT_NOT_PUBLISHED, EXIT_USAGE
from common.image import NEURON_DLC_IMAGE
from common.shapes import SHAPE_RULE
from model.artifacts import MANIFEST_NAME, read_manifest
from model.compile import EXIT_FAILED, main
from model.keys import CompileOptions
from model.runtime import load_generator

REPO = Path(__file__).resolve().parents[2]
TINY = ["--model", "tiny", "--backend", "cpu", "--max-text-length", "8"]
TINY_SMALL = [*TINY, "--shape", "64x64"]


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
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == [], "--resolve never compiles"


def test_resolve_waits_for_the_graphs_and_their_weights_in_a_process_without_torch(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    graphs_only, = _run_side_by_side([*TINY_SMALL, "--out", out, "--graphs-only"])
    assert graphs_only.returncode == 0, graphs_only.stderr
    # What a waiting pod runs in a loop: it must not pay for importing torch (or a Neuron package) each time.
    probe = ("import sys; from model.compile import main; code = main(sys.argv[1:]); "
             "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'torch_neuronx') if m in sys.modules); "
             "print(code, heavy)")
    resolve = [sys.executable, "-c", probe, *TINY_SMALL, "--out", out, "--resolve"]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    without_weights = subprocess.run(resolve, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60)
    assert without_weights.stdout.splitlines()[-1] == f"{EXIT_NOT_PUBLISHED} []", without_weights.stderr
    weights, = _run_side_by_side([*TINY, "--out", out, "--weights"])
    assert weights.returncode == 0, weights.stderr
    assert Path(_last_line(weights.stdout)).parent == tmp_path / "out" / "weights"
    with_weights = subprocess.run(resolve, cwd=REPO, env=environment, capture_output=True, text=True, timeout=60)
    assert with_weights.stdout.splitlines()[-1] == "0 []", with_weights.stderr


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
    assert all(json.loads(line) for line in first.stderr.splitlines()), "the log is JSON lines only"


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
        ([*TINY_SMALL, "--cpus", "0"], "'0' is not a whole number of at least 1"),
        ([*TINY_SMALL, "--weights"], "not allowed with argument --shape"),
        ([*TINY, "--weights", "--graphs-only"], "--graphs-only goes with --shape"),
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


def test_neuron_backend_without_the_neuron_sdk_is_one_clear_line(tmp_path: Path, capsys) -> None:
    # The Neuron packages are not installed here, as with PyPI's placeholder packages.
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


def test_cpus_reach_the_compile(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.build

    compiled = []
    monkeypatch.setattr(model.build, "ensure_compiled",
                        lambda options, out, scratch, cpus: compiled.append(cpus) or out)
    for extra, expected in (([], None), (["--cpus", "3"], 3)):
        code, _, err = _main([*TINY_SMALL, "--out", str(tmp_path), *extra], capsys)
        assert code == 0, err
        assert compiled[-1] == expected
