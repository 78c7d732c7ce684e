"""How far a deployed stack's compiles have got, and whether its shapes serve: `scripts/status STACK`, which runs
`python -m planning.status --stack STACK` with the stack's kubeconfig.

One line for the weights, then one per shape:

    weights: published
    1024x576: compiling: transformer 3 of 4, 1 h 12 m, about 40 m left; serving: waiting for graphs and weights
    256x144: published; serving: 1 of 1 ready
    512x512: failed: <what the compile said>; serving: waiting for graphs and weights
    576x1024: waiting for a node; serving: waiting for graphs and weights

The Jobs are found by the names the program gives them (infra/pods.py, from the stack file), their progress in
their logs: the JSON events of common/progress.py. "about ... left" is the sizing model's estimate of the steps to
come (infra/sizing.py), scaled by how long the finished ones took against their estimate. kubectl is the only
way in: it reads the objects and the logs of namespace `flux`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from common import activation, progress
from infra import sizing
from infra.config import load_stack_config
from infra.naming import PROJECT, SERVE, WORKLOAD_NAMESPACE, workload_name
from infra.pods import WorkloadSettings, compile_job_name, weights_job_name
from planning.offline import stack_file_config, stack_names

WORKLOADS = f"app.kubernetes.io/part-of={PROJECT}"
JOB_NAME_LABEL = "job-name"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def duration(seconds: float) -> str:
    """`1 h 12 m`, `40 m`, `< 1 m`."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return "< 1 m"
    return f"{minutes // 60} h {minutes % 60} m" if minutes >= 60 else f"{minutes} m"


@dataclass
class Progress:
    """What a Job's events say, the last attempt's: the steps, those finished, the one running."""

    steps: list[str] = field(default_factory=list)
    started: datetime | None = None
    finished: dict[str, float] = field(default_factory=dict)  # step -> seconds it took
    current: dict | None = None                               # the last step_started not finished yet
    published: bool = False
    error: str | None = None


def progress_of(events: list[dict]) -> Progress:
    """The progress of the last attempt the events record (a retry starts again with `started`)."""
    state = Progress()
    for event in events:
        kind = event[progress.EVENT_FIELD]
        if kind == progress.STARTED:
            state = Progress(steps=list(event["steps"]), started=_time(event["time"]))
        elif kind == progress.STEP_STARTED:
            state.current = event
        elif kind == progress.STEP_FINISHED:
            state.finished[event["step"]] = event["elapsed_s"]
            state.current = None
        elif kind in (progress.PUBLISHED, progress.ALREADY_PUBLISHED):
            state.published = True
        elif kind == progress.FAILED:
            state.error = event["error"]
    return state


def seconds_left(state: Progress, estimates: Callable[[str], float], now: datetime) -> float:
    """The estimates of the steps still to come, the running one less its time so far, scaled by how the finished
    steps compared with theirs."""
    estimated = sum(estimates(step) for step in state.finished)
    scale = sum(state.finished.values()) / estimated if state.finished and estimated else 1.0
    current = state.current["step"] if state.current else None
    left = sum(estimates(step) for step in state.steps if step not in state.finished and step != current) * scale
    if state.current is not None:
        running = (now - _time(state.current["time"])).total_seconds()
        left += max(0.0, estimates(current) * scale - running)
    return left


def _condition(job: dict, kind: str) -> dict | None:
    return next((condition for condition in (job.get("status") or {}).get("conditions") or []
                 if condition["type"] == kind and condition["status"] == "True"), None)


def _unscheduled(pod: dict) -> bool:
    return not pod["spec"].get("nodeName")


def job_state(job: dict | None, pods: list[dict], events: list[dict], estimates: Callable[[str], float],
              now: datetime, verb: str) -> str:
    """One Job's state in words: published, failed: why, waiting for a node, starting, or `verb`: its progress."""
    if job is None:
        return "no Job: it finished over a week ago (its Job is gone), or `pulumi up` has not run"
    state = progress_of(events)
    failed = _condition(job, "Failed")
    if failed is not None:
        return f"failed: {state.error or failed.get('message') or failed.get('reason')}"
    if state.published or _condition(job, "Complete") is not None:
        return "published"
    active = [pod for pod in pods if pod["status"].get("phase") in ("Pending", "Running")]
    if not active or all(_unscheduled(pod) for pod in active):
        return "waiting for a node"
    if all(pod["status"].get("phase") == "Pending" for pod in active):
        return "starting: the image is being pulled"
    if state.started is None:
        return f"{verb}: downloading"
    parts = []
    if state.current is not None:
        parts.append(f"{state.current['step']} {state.current['index']} of {state.current['count']}")
    parts.append(duration((now - state.started).total_seconds()))
    parts.append(f"about {duration(seconds_left(state, estimates, now))} left")
    return f"{verb}: {', '.join(parts)}"


def serving_state(pods: list[dict]) -> str:
    """A shape's serving pods: ready, starting, or gated (waiting for their artifacts)."""
    live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
    if not live:
        return "no pod"
    gated = [pod for pod in live if any(gate.get("name") == activation.GATE
                                        for gate in pod["spec"].get("schedulingGates") or [])]
    ready = [pod for pod in live if any(condition["type"] == "Ready" and condition["status"] == "True"
                                        for condition in pod["status"].get("conditions") or [])]
    if len(gated) == len(live):
        return "waiting for graphs and weights"
    if len(ready) == len(live):
        return f"{len(ready)} of {len(live)} ready"
    waiting = f", {len(gated)} waiting for graphs and weights" if gated else ""
    return f"{len(ready)} of {len(live)} ready{waiting}"


class Kubectl:
    """The cluster as kubectl shows it: the stack's Jobs and pods, and a Job's log."""

    def __init__(self, namespace: str = WORKLOAD_NAMESPACE):
        self.namespace = namespace

    def _run(self, *args: str) -> str:
        done = subprocess.run(["kubectl", "-n", self.namespace, *args], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def objects(self) -> list[dict]:
        return json.loads(self._run("get", "jobs,pods", "-l", WORKLOADS, "-o", "json"))["items"]

    def events(self, job: str) -> list[dict]:
        """The progress events in the log of a Job's (latest) pod."""
        lines = self._run("logs", f"job/{job}", "--tail=-1").splitlines()
        return [event for event in map(progress.read_event, lines) if event is not None]


def report(stack: str, cluster: Kubectl, now: datetime) -> list[str]:
    config = load_stack_config(stack_file_config(stack)[0])
    settings = WorkloadSettings.of(config)
    objects = cluster.objects()
    jobs = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "Job"}
    pods = [obj for obj in objects if obj["kind"] == "Pod"]

    def state(name: str, estimates: Callable[[str], float], verb: str) -> str:
        job_pods = [pod for pod in pods if (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == name]
        events = cluster.events(name) if name in jobs and job_pods else []
        return job_state(jobs.get(name), job_pods, events, estimates, now, verb)

    def shard(step: str) -> float:
        return sizing.shard_step_seconds(sizing.step_component(step), config.dtype, config.compile.tensor_parallel,
                                         settings.ranks.world)

    lines = [f"weights: {state(weights_job_name(settings), shard, 'sharding')}"]
    for shape in config.shapes:
        def compile_time(step: str, shape=shape) -> float:
            return sizing.compile_step_seconds(sizing.step_component(step), shape.image_tokens,
                                               config.model.max_text_length)

        serving = [pod for pod in pods
                   if (pod["metadata"].get("labels") or {}).get(INSTANCE_LABEL) == workload_name(SERVE, shape)]
        lines.append(f"{shape}: {state(compile_job_name(settings, shape), compile_time, 'compiling')}; "
                     f"serving: {serving_state(serving)}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m planning.status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, choices=stack_names())
    args = parser.parse_args(argv)
    print("\n".join(report(args.stack, Kubectl(), datetime.now(timezone.utc))))


if __name__ == "__main__":
    main()
