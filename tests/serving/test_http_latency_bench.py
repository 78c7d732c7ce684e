"""The latency bench runs end to end (its numbers are not checked: no timed assertions)."""

from bench.http_latency import main


def test_bench_prints_both_p50s_and_their_ratio(tiny_artifact_dir, capsys):
    assert main(["--graphs", str(tiny_artifact_dir), "--steps", "1", "--iterations", "2"]) == 0
    output = capsys.readouterr().out
    assert "in-process generate" in output
    assert "HTTP POST /generate" in output
    assert "HTTP / in-process p50 ratio:" in output
