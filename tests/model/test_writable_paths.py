"""The pods' root filesystems are read-only (infra.pods): compiling and serving must write only
where the pods have writable volumes. Checked on the tiny model on CPU, in a fresh interpreter
(import-time writes count too), with HOME, TMPDIR and HF_HOME set as the pods set them.

An audit hook sees every write Python itself makes (open for writing, mkdir, rename, remove);
writes made inside C or Rust code (torch.save, safetensors) are not seen, and go to the paths
the program hands them. The Neuron compiler and runtime only run on Neuron hosts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from model.keys import CompileOptions

# Writable in every container; /dev/shm is a memory-backed emptyDir in both pods.
DEVICES = ("/dev/null", "/dev/shm")

PROBE = r"""
import json, os, sys, tempfile
config = json.loads(sys.argv[1])
outside = []
current = []

def audit(event, args):
    if not current:
        return
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
        paths = [(path, None)] if writing else []
    elif event in ("os.mkdir", "os.remove", "os.rmdir"):
        paths = [(args[0], args[-1])]
    elif event == "os.rename":
        paths = [(args[0], args[2]), (args[1], args[3])]
    else:
        return
    for path, dir_fd in paths:
        if isinstance(path, int):
            continue
        # shutil.rmtree removes by name relative to a directory descriptor (-1: none).
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd not in (None, -1) else os.getcwd()
        path = os.path.normpath(os.path.join(base, os.fsdecode(path)))
        # Python ignores a bytecode cache it cannot write.
        if "__pycache__" in path.split(os.sep):
            continue
        if not any(path == root or path.startswith(root + os.sep) for root in config["writable"][current[0]]):
            outside.append(f"{current[0]}: {event} {path}")

sys.addaudithook(audit)

def phase(name, tmpdir):
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = None
    current[:] = [name]

phase("compile", config["scratch"])
os.environ["HF_HOME"] = config["hf_home"]
from model.build import ensure_compiled
from model.keys import CompileOptions
from common.shapes import parse_shape
options = dict(config["options"], shape=parse_shape(config["options"]["shape"]))
artifact = ensure_compiled(CompileOptions(**options), config["graphs"], config["scratch"])
phase("serve", config["local"])
from model.runtime import load_generator
load_generator(artifact).generate("a photo of a dog", 1, 3.5, seed=0)
print(json.dumps(outside))
"""


def test_compiling_and_serving_write_only_to_the_pods_writable_volumes(
    tiny_compile_options: CompileOptions, tmp_path: Path
) -> None:
    home, scratch, graphs, local = (tmp_path / name for name in ("tmp", "scratch", "graphs", "local"))
    for directory in (home, scratch, graphs, local):
        directory.mkdir()
    options = {**asdict(tiny_compile_options), "shape": str(tiny_compile_options.shape)}
    config = {
        "options": options, "scratch": str(scratch), "graphs": str(graphs), "local": str(local),
        "hf_home": str(scratch / "huggingface"),
        # As infra.pods mounts them: the compile Job's /tmp, scratch and graph volume; the
        # serving pod's /tmp and local artifact volume (its graph volume is read-only).
        "writable": {"compile": [str(home), str(scratch), str(graphs), *DEVICES],
                     "serve": [str(home), str(local), *DEVICES]},
    }
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[2])}
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config)], env=environment, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
