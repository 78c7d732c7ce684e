"""Serving pods start only once their artifacts are published: the facts the deploy program and the activator
share, and the activator itself (`python -m common.activation`).

Every serving pod (infra/pods.py) is created with the scheduling gate GATE. Kubernetes does not schedule a
gated pod and Karpenter starts no node for it (it provisions only for pods the scheduler found unschedulable),
so a pod whose graphs or weights are still compiling holds no Neuron device. The pod's annotation
RESOLVE_ARGS_ANNOTATION holds the arguments of `python -m model.compile --resolve` for its artifacts.

The activator, one small pod per stack, lists the gated serving pods every INTERVAL_SECONDS, runs each distinct
resolve (one not yet published at most every RESOLVE_INTERVAL_SECONDS), and lifts the gate from the pods whose
resolve exits 0 (graphs and weights published). Exit
EXIT_NOT_PUBLISHED is "not yet": they stay gated. Any other exit (bad options, a crash, an out-of-memory kill) is
an error: it is logged with the resolve's last line and retried next time, never taken for "not yet" or for
"published". A key once published stays so (artifacts are immutable), so it is resolved once per activator run.
This serves every way a gated pod appears: a first deploy, a rollout to a new key (the surge pod waits gated
while the old pods serve), an autoscaler's scale-up, a pod replaced after its node went.

Standard library only: it runs from the serving image, from Python alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from common.artifacts import EXIT_NOT_PUBLISHED
from common.logs import configure_json_logging

GATE = "flux-neuron.io/artifacts-published"
RESOLVE_ARGS_ANNOTATION = "flux-neuron.io/resolve-args"
# How often gated pods are looked for: a pod of a key already seen published (a scale-up, a replaced pod) waits at
# most this long for its gate, before anything else of its cold start (infra/cold_start.py). Listing one
# namespace's pods by label is a cheap call.
INTERVAL_SECONDS = 5
# How often a key not yet published is resolved again: each resolve starts a Python process and reads the volume,
# and a compile takes hours, so a pod waits at most this long past its publication.
RESOLVE_INTERVAL_SECONDS = 30
# A resolve reads one manifest or two through Mountpoint; one that takes longer than this is failing.
RESOLVE_TIMEOUT_SECONDS = 120
RESOLVER = (sys.executable, "-m", "model.compile")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
JSON_PATCH = "application/json-patch+json"

log = logging.getLogger("activator")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class KubernetesApi:
    """The two calls the activator makes: list the gated pods, lift one pod's gate."""

    def __init__(self, base_url: str, token_file: Path | None = None, ca_file: Path | None = None):
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    @classmethod
    def in_cluster(cls) -> KubernetesApi:
        """The API server through its Service, with the pod's projected service account token (re-read on every
        call: the kubelet rotates it)."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", SERVICE_ACCOUNT_DIR / "token", SERVICE_ACCOUNT_DIR / "ca.crt")

    def _call(self, method: str, path: str, body: object = None, content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), content_type
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")[:300]) from None

    def gated_pods(self, namespace: str, selector: str) -> list[dict]:
        """The pods the selector names that carry GATE and are not being deleted."""
        query = urllib.parse.urlencode({"labelSelector": selector})
        pods = self._call("GET", f"/api/v1/namespaces/{namespace}/pods?{query}").get("items", [])
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")
                and any(gate.get("name") == GATE for gate in pod["spec"].get("schedulingGates") or [])]

    def lift_gate(self, pod: dict) -> None:
        """Remove GATE from the pod, only if its gates are still those read (a JSON patch `test`), keeping any other
        gate (Kubernetes allows removing gates, never adding them)."""
        gates = pod["spec"]["schedulingGates"]
        metadata = pod["metadata"]
        self._call("PATCH", f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}", [
            {"op": "test", "path": "/spec/schedulingGates", "value": gates},
            {"op": "replace", "path": "/spec/schedulingGates", "value": [g for g in gates if g.get("name") != GATE]},
        ], content_type=JSON_PATCH)


def resolve_args(pod: dict) -> tuple[str, ...] | None:
    """The resolve arguments a pod carries, or None when its annotation is not a `--resolve` argument list."""
    text = (pod["metadata"].get("annotations") or {}).get(RESOLVE_ARGS_ANNOTATION)
    try:
        args = json.loads(text) if text else None
    except ValueError:
        return None
    if not (isinstance(args, list) and "--resolve" in args and all(isinstance(arg, str) for arg in args)):
        return None
    return tuple(args)


class Activator:
    def __init__(self, api: KubernetesApi, namespace: str, selector: str, resolver: tuple[str, ...] = RESOLVER,
                 resolve_every: float = RESOLVE_INTERVAL_SECONDS, clock=time.monotonic):
        self.api, self.namespace, self.selector, self.resolver = api, namespace, selector, resolver
        self.resolve_every, self.clock = resolve_every, clock
        self.published: set[tuple[str, ...]] = set()
        # When each key not (yet) published was last resolved.
        self.resolved_at: dict[tuple[str, ...], float] = {}

    def _resolve(self, args: tuple[str, ...]) -> tuple[int, str]:
        """The resolve's exit status and its last stderr line (what failed)."""
        try:
            done = subprocess.run([*self.resolver, *args], capture_output=True, text=True,
                                  timeout=RESOLVE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            return -1, f"no answer within {RESOLVE_TIMEOUT_SECONDS} s"
        lines = done.stderr.strip().splitlines()
        return done.returncode, lines[-1] if lines else ""

    def run_once(self) -> int:
        """One pass: resolve what the gated pods wait for, lift the gates of the published; how many it lifted."""
        waiting: dict[tuple[str, ...], list[dict]] = {}
        for pod in self.api.gated_pods(self.namespace, self.selector):
            args = resolve_args(pod)
            if args is None:
                log.error("pod %s has no valid %s annotation: it stays gated", pod["metadata"]["name"],
                          RESOLVE_ARGS_ANNOTATION, extra={"fields": {"pod": pod["metadata"]["name"]}})
                continue
            waiting.setdefault(args, []).append(pod)
        lifted = 0
        for args, pods in waiting.items():
            names = [pod["metadata"]["name"] for pod in pods]
            if args not in self.published:
                if self.clock() - self.resolved_at.get(args, -self.resolve_every) < self.resolve_every:
                    continue  # asked lately: not yet again
                self.resolved_at[args] = self.clock()
                status, last_line = self._resolve(args)
                if status == EXIT_NOT_PUBLISHED:
                    log.info("not published yet: %d pod(s) stay gated", len(pods),
                             extra={"fields": {"activation": "waiting", "pods": names, "resolve": list(args)}})
                    continue
                if status != 0:
                    log.error("resolve failed (exit %d): %s", status, last_line, extra={"fields": {
                        "activation": "resolve_failed", "pods": names, "resolve": list(args), "status": status,
                        "error": last_line}})
                    continue
                self.published.add(args)
            for pod in pods:
                try:
                    self.api.lift_gate(pod)
                except ApiError as error:  # deleted, or its gates changed since listed: the next pass sees it again
                    log.warning("could not lift the gate of %s: %s", pod["metadata"]["name"], error)
                    continue
                lifted += 1
                log.info("published: lifted the gate of %s", pod["metadata"]["name"],
                         extra={"fields": {"activation": "lifted", "pod": pod["metadata"]["name"]}})
        return lifted


# A heartbeat older than this many intervals, on top of the longest single step of a pass (a resolve that times
# out), means passes stopped ending: the liveness probe restarts the pod.
STALE_AFTER_INTERVALS = 4


def stale_after_seconds(interval: float) -> float:
    return STALE_AFTER_INTERVALS * interval + RESOLVE_TIMEOUT_SECONDS


def is_alive(heartbeat: Path, interval: float = INTERVAL_SECONDS) -> bool:
    """Whether a pass ended recently (the probe's question)."""
    try:
        return time.time() - heartbeat.stat().st_mtime < stale_after_seconds(interval)
    except FileNotFoundError:
        return False


def run(activator: Activator, heartbeat: Path, interval: float) -> None:
    while True:
        try:
            activator.run_once()
        except (ApiError, OSError) as error:  # the API server restarting, a network blip: try again next pass
            log.error("listing gated pods failed: %s", error)
        else:
            heartbeat.touch()
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m common.activation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--alive", type=Path, metavar="HEARTBEAT",
                        help="exit 0 if the activator writing HEARTBEAT ended a pass lately, 1 if not (its probe)")
    parser.add_argument("--namespace")
    parser.add_argument("--selector", help="label selector of the serving pods")
    parser.add_argument("--heartbeat", type=Path, help="file touched after every pass that could list the pods")
    parser.add_argument("--interval", type=float, default=INTERVAL_SECONDS, help="seconds between passes")
    args = parser.parse_args(argv)
    if args.alive is not None:
        sys.exit(0 if is_alive(args.alive, args.interval) else 1)
    if not (args.namespace and args.selector and args.heartbeat):
        parser.error("--namespace, --selector and --heartbeat are required to run the activator")
    configure_json_logging()
    run(Activator(KubernetesApi.in_cluster(), args.namespace, args.selector), args.heartbeat, args.interval)


if __name__ == "__main__":
    main()
