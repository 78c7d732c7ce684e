"""The activator (common/activation.py): serving pods created gated start once their artifacts are published,
and only then. The Kubernetes API is a stand-in HTTP server on 127.0.0.1 that lists pods and applies JSON patches
the way the API server does (a failed `test` refuses the whole patch); the resolver is a stand-in script answering
with the exit status `model.compile --resolve` gives (0 published, 3 not yet, anything else a failure)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from common import activation
from common.activation import GATE, RESOLVE_ARGS_ANNOTATION, Activator, KubernetesApi, is_alive
from common.artifacts import EXIT_NOT_PUBLISHED

NAMESPACE = "flux"
SELECTOR = "app.kubernetes.io/component=serve"
OTHER_GATE = {"name": "example.com/other"}


def pod(name: str, shape: str | None, gates=({"name": GATE},), deleting=False, annotation=None) -> dict:
    args = ["--shape", shape, "--model", "m", "--out", "/graphs", "--resolve"] if shape else None
    metadata = {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/component": "serve"},
                "annotations": {RESOLVE_ARGS_ANNOTATION: annotation if annotation is not None else json.dumps(args)}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": metadata, "spec": {"schedulingGates": [dict(gate) for gate in gates]}}


class FakeApiServer:
    """Pods by name; GET lists them (checking the selector and the token), PATCH applies a JSON patch atomically."""

    def __init__(self, token_file: Path):
        self.pods: dict[str, dict] = {}
        self.patches: list[str] = []
        self.tokens: list[str] = []
        self.token_file = token_file
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                server.tokens.append(self.headers["Authorization"])
                assert url.path == f"/api/v1/namespaces/{NAMESPACE}/pods"
                assert parse_qs(url.query)["labelSelector"] == [SELECTOR]
                self._answer(200, {"items": list(server.pods.values())})

            def do_PATCH(self):
                name = urlparse(self.path).path.rsplit("/", 1)[1]
                assert self.headers["Content-Type"] == activation.JSON_PATCH
                operations = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                target = server.pods.get(name)
                if target is None:
                    return self._answer(404, {"reason": "NotFound"})
                for operation in operations:
                    assert operation["path"] == "/spec/schedulingGates"
                    if operation["op"] == "test" and target["spec"]["schedulingGates"] != operation["value"]:
                        return self._answer(422, {"reason": "Invalid", "message": "test operation failed"})
                for operation in operations:
                    if operation["op"] == "replace":
                        target["spec"]["schedulingGates"] = operation["value"]
                server.patches.append(name)
                self._answer(200, target)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def gated(self) -> set[str]:
        return {name for name, item in self.pods.items()
                if any(gate["name"] == GATE for gate in item["spec"]["schedulingGates"])}

    def close(self):
        self.http.shutdown()
        self.http.server_close()


RESOLVER = """
import json, os, sys
answers = json.load(open(sys.argv[1]))
shape = sys.argv[sys.argv.index("--shape") + 1]
with open(sys.argv[2], "a") as calls:
    calls.write(shape + "\\n")
answer = answers[shape]
if answer == "killed":
    os.kill(os.getpid(), 9)
print("python -m model.compile: error: " + str(answer), file=sys.stderr)
sys.exit(answer)
"""


@pytest.fixture
def cluster(tmp_path):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    server = FakeApiServer(token)
    yield server
    server.close()


@pytest.fixture
def resolver(tmp_path):
    """(answers by shape, calls made): the resolve exits with answers[shape]."""
    script, answers, calls = tmp_path / "resolve.py", tmp_path / "answers.json", tmp_path / "calls"
    script.write_text(RESOLVER)
    calls.touch()
    table: dict = {}

    def command(**by_shape):
        table.update(by_shape)
        answers.write_text(json.dumps(table))
        return (sys.executable, str(script), str(answers), str(calls))

    command.calls = lambda: calls.read_text().split()
    return command


def activator(cluster, resolve_command, **cadence) -> Activator:
    """An activator that resolves a key on every pass unless `cadence` says otherwise."""
    return Activator(KubernetesApi(cluster.url, cluster.token_file), NAMESPACE, SELECTOR, resolve_command,
                     **{"resolve_every": 0, **cadence})


def test_pods_of_a_published_key_start_and_the_others_stay_gated(cluster, resolver, caplog):
    caplog.set_level(logging.INFO)
    cluster.pods = {"a1": pod("a1", "1024x576", gates=({"name": GATE}, OTHER_GATE)), "a2": pod("a2", "1024x576"),
                    "b1": pod("b1", "256x144")}
    run = activator(cluster, resolver(**{"1024x576": 0, "256x144": EXIT_NOT_PUBLISHED}))
    assert run.run_once() == 2
    assert cluster.gated() == {"b1"}
    # Another gate is kept: the activator lifts its own only.
    assert cluster.pods["a1"]["spec"]["schedulingGates"] == [OTHER_GATE]
    # One resolve per key, whatever the number of pods waiting for it.
    assert sorted(resolver.calls()) == ["1024x576", "256x144"]
    waiting = [record for record in caplog.records if getattr(record, "fields", {}).get("activation") == "waiting"]
    assert [record.fields["pods"] for record in waiting] == [["b1"]]


def test_a_key_that_gets_published_later_starts_its_pods_on_the_next_pass_and_is_not_resolved_again(cluster, resolver):
    cluster.pods = {"b1": pod("b1", "256x144")}
    run = activator(cluster, resolver(**{"256x144": EXIT_NOT_PUBLISHED}))
    assert run.run_once() == 0 and cluster.gated() == {"b1"}
    resolver(**{"256x144": 0})
    assert run.run_once() == 1 and cluster.gated() == set()
    # A scale-up later: a new pod of the key, started without another resolve.
    cluster.pods["b2"] = pod("b2", "256x144")
    assert run.run_once() == 1 and cluster.gated() == set()
    assert resolver.calls() == ["256x144", "256x144"]


def test_an_unpublished_key_is_resolved_again_only_after_its_interval_a_published_one_s_pods_start_at_once(
        cluster, resolver):
    now = [0.0]
    cluster.pods = {"a1": pod("a1", "1024x576"), "b1": pod("b1", "256x144")}
    run = activator(cluster, resolver(**{"1024x576": 0, "256x144": EXIT_NOT_PUBLISHED}),
                    resolve_every=activation.RESOLVE_INTERVAL_SECONDS, clock=lambda: now[0])
    assert run.run_once() == 1 and cluster.gated() == {"b1"}
    resolver(**{"256x144": 0})
    cluster.pods["a2"] = pod("a2", "1024x576")  # a scale-up of the published key
    now[0] += activation.INTERVAL_SECONDS
    assert run.run_once() == 1 and cluster.gated() == {"b1"}, "the scale-up starts at the next pass"
    assert sorted(resolver.calls()) == ["1024x576", "256x144"], "the unpublished key waits for its interval"
    now[0] = activation.RESOLVE_INTERVAL_SECONDS
    assert run.run_once() == 1 and cluster.gated() == set()
    assert activation.INTERVAL_SECONDS < activation.RESOLVE_INTERVAL_SECONDS


@pytest.mark.parametrize("answer", [1, 2, 137, "killed"])
def test_a_failing_resolve_is_neither_not_yet_nor_published(cluster, resolver, caplog, answer):
    """An out-of-memory kill, a crash, bad options: the pods stay gated, the failure is logged with what the
    resolve said, and the next pass asks again."""
    cluster.pods = {"a1": pod("a1", "1024x576")}
    run = activator(cluster, resolver(**{"1024x576": answer}))
    assert run.run_once() == 0 and run.run_once() == 0
    assert cluster.gated() == {"a1"} and cluster.patches == []
    assert resolver.calls() == ["1024x576", "1024x576"]
    failed = [record.fields for record in caplog.records
              if getattr(record, "fields", {}).get("activation") == "resolve_failed"]
    assert len(failed) == 2 and failed[0]["pods"] == ["a1"]
    assert failed[0]["status"] == (-9 if answer == "killed" else answer)
    assert failed[0]["error"] == ("" if answer == "killed" else f"python -m model.compile: error: {answer}")


def test_a_pod_whose_gates_changed_since_they_were_listed_is_left_for_the_next_pass(cluster, resolver, monkeypatch):
    cluster.pods = {"a1": pod("a1", "1024x576")}
    run = activator(cluster, resolver(**{"1024x576": 0}))
    listed = run.api.gated_pods
    # The pod gains a gate between the list and the patch: the patch's test fails, nothing is changed.
    def stale_list(namespace, selector):
        pods = listed(namespace, selector)
        cluster.pods["a1"]["spec"]["schedulingGates"].append(OTHER_GATE)
        return pods

    monkeypatch.setattr(run.api, "gated_pods", stale_list)
    assert run.run_once() == 0 and cluster.gated() == {"a1"}
    monkeypatch.setattr(run.api, "gated_pods", listed)
    assert run.run_once() == 1 and cluster.pods["a1"]["spec"]["schedulingGates"] == [OTHER_GATE]


def test_pods_being_deleted_ungated_or_without_resolve_arguments_are_left_alone(cluster, resolver, caplog):
    cluster.pods = {"gone": pod("gone", "1024x576", deleting=True), "running": pod("running", "1024x576", gates=()),
                    "bare": pod("bare", None, annotation=""), "junk": pod("junk", None, annotation='["--shape"]')}
    run = activator(cluster, resolver(**{"1024x576": 0}))
    assert run.run_once() == 0 and cluster.patches == [] and resolver.calls() == []
    assert {record.fields.get("pod") for record in caplog.records if record.levelname == "ERROR"} == {"bare", "junk"}


def test_the_token_is_read_again_for_every_call(cluster, resolver):
    """The kubelet rotates the projected token: the activator never keeps an old one."""
    cluster.pods = {}
    run = activator(cluster, resolver())
    run.run_once()
    cluster.token_file.write_text("rotated-token\n")
    run.run_once()
    assert cluster.tokens == ["Bearer first-token", "Bearer rotated-token"]


def test_the_probe_is_alive_while_passes_end(tmp_path):
    heartbeat = tmp_path / "heartbeat"
    assert not is_alive(heartbeat)
    heartbeat.touch()
    assert is_alive(heartbeat, interval=1)
    # A pass may spend a whole resolve timeout on one key: that is no reason to restart.
    busy = time.time() - activation.RESOLVE_TIMEOUT_SECONDS
    os.utime(heartbeat, (busy, busy))
    assert is_alive(heartbeat)
    old = time.time() - activation.stale_after_seconds(activation.INTERVAL_SECONDS) - 1
    os.utime(heartbeat, (old, old))
    assert not is_alive(heartbeat)
    with pytest.raises(SystemExit) as exited:
        activation.main(["--alive", str(heartbeat)])
    assert exited.value.code == 1


def test_the_in_cluster_api_is_the_kubernetes_service_over_tls_with_the_projected_token(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    cafiles = []
    monkeypatch.setattr(activation.ssl, "create_default_context", lambda cafile: cafiles.append(cafile))
    api = KubernetesApi.in_cluster()
    assert api.base_url == "https://[fd00::1]:443"
    assert api.token_file == activation.SERVICE_ACCOUNT_DIR / "token"
    assert cafiles == [str(activation.SERVICE_ACCOUNT_DIR / "ca.crt")]
