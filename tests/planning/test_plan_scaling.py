"""`python -m bench.plan_scaling` runs as the README writes it (issue 18): at a small size here, on dev, whose
trn1 pool holds fewer shapes than the benchmark plans, so the benchmark raises maxDevices to what they need."""

import re
import subprocess
import sys

from bench.plan_scaling import overrides
from infra.config import load_stack_config
from planning.offline import REPO_ROOT, stack_file_config, with_overrides


def test_the_benchmark_plans_and_checks_each_count_cleanly():
    result = subprocess.run([sys.executable, "-m", "bench.plan_scaling", "--counts", "2", "4"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if re.match(r"^\s+\d+\s+\d+\s", line)]
    assert [row[0] for row in rows] == ["2", "4"] and all(len(row) == 7 for row in rows), result.stdout
    # Two shapes more are two graphs Jobs, Deployments, Services, PodDisruptionBudgets and autoscalers more.
    assert int(rows[1][1]) - int(rows[0][1]) == 2 * 5


def test_more_shapes_than_a_pool_holds_get_the_devices_they_need_and_no_more():
    raw = stack_file_config("dev")[0]
    config = load_stack_config(with_overrides(raw, overrides("dev", 12)))
    # 12 shapes x (2 replicas + 1 surge) x 4 devices: what the config asks of the pool, exactly.
    assert config.neuron_pools["trn1"].max_devices == config.max_devices_needed("trn1") == 12 * 3 * 4
    # The stack's own limit where it is enough.
    assert load_stack_config(with_overrides(raw, overrides("dev", 2))).neuron_pools["trn1"].max_devices == 48
