"""Fixtures shared by the tests: the tiny model (model, serving), the Neuron SDK's distributions as the image
records them (model, infra), and the real stacks' renderings (infra, planning)."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest

from infra.config import load_stack_config
from model.build import ensure_compiled
from model.keys import CompileOptions
from common.shapes import Shape
from planning.offline import run_program, stack_file_config, stack_names

STACKS = stack_names()


@pytest.fixture(scope="session")
def tiny_compile_options() -> CompileOptions:
    """The tiny model on CPU: non-square (catches height/width swaps), float32 (exact against
    eager), a short text length (fast). Compiling it takes a few seconds."""
    return CompileOptions(
        model="tiny",
        revision=None,
        shape=Shape(height=128, width=96),
        dtype="float32",
        backend="cpu",
        tp_degree=1,
        max_text_length=32,
        target=None,
    )


@pytest.fixture(scope="session")
def tiny_artifact_dir(tmp_path_factory: pytest.TempPathFactory, tiny_compile_options: CompileOptions) -> Path:
    """A published artifact directory of the tiny model. Treat it as read-only: copy it to damage it."""
    return ensure_compiled(tiny_compile_options, tmp_path_factory.mktemp("artifacts"))


@pytest.fixture(scope="session", params=STACKS)
def stack(request) -> str:
    return request.param


_renderings = {}


@pytest.fixture(scope="session")
def rendering(stack):
    """The real program's rendering of one real stack file (cached: each run takes seconds)."""
    if stack not in _renderings:
        _renderings[stack] = run_program(stack)
    return _renderings[stack]


@pytest.fixture(scope="session")
def stack_config(stack):
    return load_stack_config(stack_file_config(stack)[0])


@pytest.fixture
def constructed_resources(monkeypatch) -> list[str]:
    """The types of the Pulumi resources constructed from here on, in order (a program that refuses
    its config must stop before any resource beyond the stack exists)."""
    constructed: list[str] = []
    construct = pulumi.Resource.__init__

    def recording(self, type_, name, *args, **kwargs):
        constructed.append(type_)
        construct(self, type_, name, *args, **kwargs)

    monkeypatch.setattr(pulumi.Resource, "__init__", recording)
    return constructed


# The versions in the Neuron DLC of SDK 2.31.1 (../shared/reference/neuron-flux-apis.md).
NEURON_DISTRIBUTIONS = {"torch-neuronx": "2.9.0.2.15.32035", "neuronx-distributed": "0.19.28492",
                        "neuronx-cc": "2.26.6360.0"}
# And NxD Inference, which the trn2 backend's keys record besides them (model.keys.NXDI_TOOLCHAIN).
NXDI_DISTRIBUTIONS = {"neuronx-distributed-inference": "0.10.18399"}


@pytest.fixture(scope="session")
def neuron_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site-packages folder holding the neuron backends' distributions as pip would record them (their
    metadata, not their code: see tests/model/neuron_standins.py)."""
    site = tmp_path_factory.mktemp("site-packages")
    for name, version in {**NEURON_DISTRIBUTIONS, **NXDI_DISTRIBUTIONS}.items():
        info = Path(site, f"{name.replace('-', '_')}-{version}.dist-info")
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return site


@pytest.fixture
def neuron_distributions(neuron_site: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The neuron backend's distributions installed, so keys resolve as in the image."""
    monkeypatch.syspath_prepend(str(neuron_site))
    return NEURON_DISTRIBUTIONS
