"""`scripts/status` (planning/status.py): what a stack's compiles and serving pods are doing, from the Jobs' JSON
progress events. The events are recorded logs (tests/planning/compile_logs/, written by common/logs.py's formatter
with common/progress.py's events, at fixed times); the cluster is the dev stack's rendering under the mocks, its
Jobs and pods given the status a cluster would report, served by a stand-in `kubectl` (the lowest call)."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from common import activation, progress
from common.shapes import parse_shape
from infra import sizing
from infra.naming import ACTIVATOR, SERVE, workload_name
from infra.pods import WorkloadSettings, compile_job_name, weights_job_name
from planning import status
from infra.config import load_stack_config
from planning.offline import REPO_ROOT, manifest, run_program, stack_file_config

LOGS = Path(__file__).parent / "compile_logs"
# The recordings' first event.
RECORDED_AT = datetime(2026, 9, 1, 8, 0, tzinfo=timezone.utc)
JOB = "kubernetes:batch/v1:Job"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def recorded(name: str) -> list[str]:
    return (LOGS / f"{name}.jsonl").read_text().splitlines()


def events(name: str) -> list[dict]:
    return [event for event in map(progress.read_event, recorded(name)) if event is not None]


def test_the_recordings_are_what_the_compile_logs_carry():
    """Every event line has the fields common/progress.py promises; other lines (plain log lines, a library's
    text) are no events."""
    required = {progress.STARTED: {"kind", "artifact", "steps"}, progress.STEP_STARTED: {"kind", "step", "index", "count"},
                progress.STEP_FINISHED: {"kind", "step", "index", "count", "elapsed_s"},
                progress.PUBLISHED: {"kind", "artifact", "elapsed_s"}, progress.ALREADY_PUBLISHED: {"kind", "artifact"},
                progress.FAILED: {"kind", "error"}}
    for path in LOGS.glob("*.jsonl"):
        for event in events(path.stem):
            assert required[event[progress.EVENT_FIELD]] <= event.keys() and event["kind"] in progress.KINDS, path
    assert progress.read_event("WARNING: not JSON") is None
    assert len(events("graphs-compiling")) == len(recorded("graphs-compiling")) - 2


@pytest.mark.parametrize("seconds, text", [(30, "< 1 m"), (40 * 60, "40 m"), (72 * 60 + 59, "1 h 12 m"),
                                           (5 * 3600, "5 h 0 m")])
def test_durations_read_as_hours_and_minutes(seconds, text):
    assert status.duration(seconds) == text


def test_what_is_left_is_the_estimate_of_the_steps_to_come_scaled_by_the_finished_ones():
    state = status.progress_of(events("graphs-compiling"))
    assert (state.finished, state.current["step"]) == ({"text_encoder": 60.0, "text_encoder_2": 360.0}, "transformer")
    estimates = {"text_encoder": 10.0, "text_encoder_2": 200.0, "transformer": 3000.0, "vae_decoder": 100.0}
    scale = 420 / 210  # the finished steps took twice their estimates
    now = RECORDED_AT + timedelta(seconds=440 + 1000)  # the transformer started at 440 s
    assert status.seconds_left(state, estimates.__getitem__, now) == pytest.approx(
        (3000 * scale - 1000) + 100 * scale)
    # Past its scaled estimate, the running step counts nothing more.
    later = RECORDED_AT + timedelta(seconds=440 + 10000)
    assert status.seconds_left(state, estimates.__getitem__, later) == pytest.approx(100 * scale)


def test_a_retry_starts_over_and_a_failure_keeps_its_reason():
    assert status.progress_of(events("graphs-failed")).error == "text_encoder_2: neuronx-cc exited 137 (out of memory)"
    retried = status.progress_of(events("graphs-retried"))
    assert retried.error is None and retried.finished == {} and retried.current["step"] == "text_encoder"


# --- the dev stack's rendering as a cluster would report it ---------------------------------------------------

@pytest.fixture(scope="module")
def dev():
    config = load_stack_config(stack_file_config("dev")[0])
    return run_program("dev"), config, WorkloadSettings.of(config)


def job_object(rendering, name, conditions=()):
    job = copy.deepcopy(manifest(rendering.one(JOB, name)))
    job["kind"] = "Job"
    job["status"] = {"conditions": [{"type": kind, "status": "True", **extra} for kind, extra in conditions]}
    return job


def job_pod(job, phase="Running", node="ip-10-0-1-23"):
    labels = {**job["spec"]["template"]["metadata"]["labels"], status.JOB_NAME_LABEL: job["metadata"]["name"]}
    return {"kind": "Pod", "metadata": {"name": job["metadata"]["name"] + "-x", "labels": labels},
            "spec": {**({"nodeName": node} if node else {})}, "status": {"phase": phase}}


def serving_pods(rendering, shape, gated, ready):
    """The shape's Deployment's pods: `gated` still gated, `ready` of the others ready."""
    template = manifest(rendering.one(DEPLOYMENT, workload_name(SERVE, shape)))["spec"]["template"]
    pods = []
    for index in range(gated + ready):
        spec = copy.deepcopy(template["spec"])
        if index >= gated:
            spec.pop("schedulingGates")
        conditions = [{"type": "Ready", "status": "True"}] if index >= gated else []
        pods.append({"kind": "Pod", "metadata": {"name": f"{workload_name(SERVE, shape)}-{index}",
                                                 "labels": template["metadata"]["labels"]},
                     "spec": spec, "status": {"phase": "Running" if index >= gated else "Pending",
                                              "conditions": conditions}})
    return pods


def dev_cluster(rendering, settings):
    """Weights published; 1024x576 compiling (its transformer running for 1 h), its pod gated; 256x144 published
    and served; 512x512 failed, then waiting for a node for its retry."""
    weights = job_object(rendering, weights_job_name(settings), [("Complete", {})])
    big, small, square = (job_object(rendering, compile_job_name(settings, parse_shape(name)))
                          for name in ("1024x576", "256x144", "512x512"))
    small["status"]["conditions"] = [{"type": "Complete", "status": "True"}]
    objects = [weights, big, small, square, job_pod(weights, phase="Succeeded"), job_pod(big), job_pod(small,
               phase="Succeeded"), job_pod(square, phase="Pending", node=None),
               *serving_pods(rendering, "1024x576", gated=1, ready=0), *serving_pods(rendering, "256x144", 0, 1),
               *serving_pods(rendering, "512x512", gated=1, ready=0)]
    logs = {weights["metadata"]["name"]: recorded("weights-published"),
            big["metadata"]["name"]: recorded("graphs-compiling"),
            small["metadata"]["name"]: recorded("graphs-already-published"),
            square["metadata"]["name"]: recorded("graphs-failed")}
    return objects, logs


class RecordedKubectl(status.Kubectl):
    """kubectl's answers, from objects and recorded logs."""

    def __init__(self, objects, logs):
        super().__init__()
        self.answers, self.logs = objects, logs

    def _run(self, *args):
        if args[0] == "get":
            return json.dumps({"items": self.answers})
        return "\n".join(self.logs[args[1].removeprefix("job/")])


def test_the_report_gives_each_shape_its_compile_and_serving_state(dev):
    rendering, config, settings = dev
    objects, logs = dev_cluster(rendering, settings)
    now = RECORDED_AT + timedelta(hours=1, minutes=12)
    report = status.report("dev", RecordedKubectl(objects, logs), now)
    state = status.progress_of(events("graphs-compiling"))

    def estimate(step):
        return sizing.compile_step_seconds(sizing.step_component(step), 1024 // 16 * 576 // 16, 128)

    left = status.duration(status.seconds_left(state, estimate, now))
    assert report == [
        "weights: published",
        f"1024x576: compiling: transformer 3 of 4, 1 h 12 m, about {left} left; serving: waiting for graphs and weights",
        "256x144: published; serving: 1 of 1 ready",
        # A retry after a failure is Pending: the Job has not failed (one retry), its new pod waits for a node.
        "512x512: waiting for a node; serving: waiting for graphs and weights",
    ]


def test_a_failed_job_says_why_from_its_events_or_else_from_kubernetes(dev):
    rendering, _, settings = dev
    job = job_object(rendering, weights_job_name(settings), [("Failed", {"reason": "DeadlineExceeded",
                                                                        "message": "Job was active longer than "
                                                                                   "specified deadline"})])
    now = RECORDED_AT
    assert status.job_state(job, [job_pod(job, phase="Failed")], events("graphs-failed"), lambda step: 1.0, now,
                            "compiling") == "failed: text_encoder_2: neuronx-cc exited 137 (out of memory)"
    assert status.job_state(job, [], [], lambda step: 1.0, now, "compiling") == \
        "failed: Job was active longer than specified deadline"


def test_a_job_whose_pod_is_scheduled_but_not_running_is_starting(dev):
    rendering, _, settings = dev
    job = job_object(rendering, weights_job_name(settings))
    assert status.job_state(job, [job_pod(job, phase="Pending")], [], lambda step: 1.0, RECORDED_AT,
                            "sharding") == "starting: the image is being pulled"
    assert status.job_state(job, [job_pod(job)], [], lambda step: 1.0, RECORDED_AT, "sharding") == "sharding: downloading"
    assert status.job_state(None, [], [], lambda step: 1.0, RECORDED_AT, "sharding").startswith("no Job")


def test_serving_states(dev):
    rendering, _, _ = dev
    assert status.serving_state([]) == "no pod"
    assert status.serving_state(serving_pods(rendering, "256x144", gated=1, ready=2)) == \
        "2 of 3 ready, 1 waiting for graphs and weights"
    pods = serving_pods(rendering, "256x144", gated=0, ready=2)
    pods[1]["status"]["conditions"] = []
    assert status.serving_state(pods) == "1 of 2 ready"
    assert all(gate["name"] == activation.GATE for gate in serving_pods(rendering, "256x144", 1, 0)[0]["spec"][
        "schedulingGates"])


# --- scripts/status end to end, with stand-ins for pulumi, aws and kubectl -------------------------------------

STATUS = REPO_ROOT / "scripts" / "status"


def shifted(lines: list[str], to: datetime) -> list[str]:
    """A recording moved in time, so that its start is `to`."""
    moved = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            moved.append(line)
            continue
        record["time"] = (datetime.fromisoformat(record["time"]) - RECORDED_AT + to).isoformat()
        moved.append(json.dumps(record))
    return moved


def fake_tools(tmp_path, objects, logs):
    bin_dir, log_dir, calls = tmp_path / "bin", tmp_path / "logs", tmp_path / "calls"
    bin_dir.mkdir()
    log_dir.mkdir()
    (tmp_path / "objects.json").write_text(json.dumps({"items": objects}))
    for job, lines in logs.items():
        (log_dir / f"{job}.jsonl").write_text("\n".join(lines) + "\n")
    answers = {
        "pulumi": 'case "$*" in "stack output kubeconfig "*) echo \'{"kind": "Config"}\' ;; esac',
        "aws": "",
        "kubectl": f'case "$*" in\n  "-n flux get jobs,pods "*) cat {tmp_path}/objects.json ;;\n'
                   f'  "-n flux logs job/"*) job="${{4#job/}}"; cat "{log_dir}/$job.jsonl" ;;\n  *) exit 1 ;;\nesac',
    }
    for tool, answer in answers.items():
        fake = bin_dir / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $* KUBECONFIG=$KUBECONFIG" >> {calls}\n{answer}\n')
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return bin_dir, calls


def test_scripts_status_prints_the_report_with_the_stacks_kubeconfig(dev, tmp_path):
    rendering, _, settings = dev
    objects, logs = dev_cluster(rendering, settings)
    start = datetime.now(timezone.utc) - timedelta(minutes=50)
    logs = {job: shifted(lines, start) for job, lines in logs.items()}
    bin_dir, calls = fake_tools(tmp_path, objects, logs)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "PULUMI_CONFIG_PASSPHRASE": "x",
           "PYTHON": sys.executable}
    result = subprocess.run([str(STATUS), "dev"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "weights: published" and lines[2] == "256x144: published; serving: 1 of 1 ready"
    assert lines[1].startswith("1024x576: compiling: transformer 3 of 4, 50 m, about ")
    recorded_calls = calls.read_text().splitlines()
    assert recorded_calls[0].startswith("pulumi stack output kubeconfig --show-secrets --stack dev")
    kubeconfigs = {call.rsplit("KUBECONFIG=", 1)[1] for call in recorded_calls if call.startswith("kubectl")}
    assert len(kubeconfigs) == 1 and not Path(kubeconfigs.pop()).exists()  # the stack's, removed afterwards
    assert ACTIVATOR not in result.stdout
