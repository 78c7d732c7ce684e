"""The preview-cost bench runs end to end (its numbers are not checked: no timed assertions)."""

import re

from bench.previews import main


def test_bench_prints_both_p50s_their_ratio_and_the_previews_share(tiny_artifact_dir, capsys):
    assert main(["--graphs", str(tiny_artifact_dir), "--steps", "4", "--iterations", "2"]) == 0
    output = capsys.readouterr().out
    assert "plain request (no listener)" in output and "streamed, 3 previews" in output
    assert re.search(r"streamed / plain: \d+\.\d{4}", output)
    assert re.search(r"the 3 previews themselves: [\d.]+ ms a generation = [\d.]+% of the plain p50", output)
