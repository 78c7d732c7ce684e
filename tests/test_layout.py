"""The import rules of the layout (docs/architecture.md), checked on the sources.

- `common/` holds the facts the others share: standard library only, importing nothing of the repository.
- `model/` and `serving/` are what the image runs: they import nothing of the deploy program (`infra/`).
- `planning` reads the deploy program; `__main__.py`, `infra/` and every other package never import it.
  Only the tests and the benchmarks (`tests/`, `bench/`, no packages) do.
"""

import ast
import re
import subprocess
import sys

import pytest

from common.neuron import NEURON_FAMILIES
from infra import catalog
from planning.offline import REPO_ROOT

TOOLING = "planning"
SHARED = "common"
RUNTIME = ("model", "serving")
PACKAGES = sorted(init.parent for init in REPO_ROOT.glob("*/__init__.py"))
REPOSITORY_PACKAGES = {package.name for package in PACKAGES}


def sources(*names: str) -> list:
    return sorted(path for name in names for path in (REPO_ROOT / name).rglob("*.py"))


def imported_modules(source: str) -> set[str]:
    """Every module a source file imports, at any depth (function-level imports too)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def imports_any(source: str, packages: set[str]) -> set[str]:
    return {module for module in imported_modules(source) if module.split(".")[0] in packages}


def offenders(paths, packages: set[str]) -> list[str]:
    return [f"{path.relative_to(REPO_ROOT)}: {', '.join(sorted(imports_any(path.read_text(), packages)))}"
            for path in paths if imports_any(path.read_text(), packages)]


@pytest.mark.parametrize("source, expected", [
    ("from planning.offline import run_program", {"planning.offline", "planning.offline.run_program"}),
    ("import planning.checks", {"planning.checks"}),
    ("def f():\n    from planning import secrets", {"planning", "planning.secrets"}),
    ("from infra import planning_notes", set()),
    ("import planningtools", set()),
])
def test_the_rule_sees_every_form_of_import(source, expected):
    assert imports_any(source, {TOOLING}) == expected


def test_the_program_and_the_runtime_import_nothing_from_planning():
    assert {SHARED, "infra", *RUNTIME} <= REPOSITORY_PACKAGES
    deployed = [REPO_ROOT / "__main__.py", *sources(*(REPOSITORY_PACKAGES - {TOOLING}))]
    assert offenders(deployed, {TOOLING}) == [], "the deploy program and the runtime must not need the tooling"


def test_the_runtime_imports_nothing_of_the_deploy_program():
    assert offenders(sources(*RUNTIME), {"infra", TOOLING}) == [], "model/ and serving/ share facts through common/"


def test_the_shared_facts_need_only_the_standard_library():
    shared = sources(SHARED)
    assert shared
    foreign = [f"{path.relative_to(REPO_ROOT)}: {module}" for path in shared
               for module in imported_modules(path.read_text())
               if module.split(".")[0] not in sys.stdlib_module_names | {SHARED, "__future__"}]
    assert foreign == []


def test_the_node_pools_offer_exactly_the_families_the_compile_targets():
    assert tuple(catalog.NEURON_FAMILIES) == NEURON_FAMILIES


# A path of one developer's machine: a folder work, home, Users or root at the filesystem's root (not such a name
# inside a path, as in a pod's scratch work directory).
MACHINE_PATH = re.compile(r"(^|[^\w.~/-])/(work|home|Users|root)/")


# NxD's per-rank tracing and loading, unsupported since Neuron 2.27 (we pin 2.31.1): ModelBuilder replaced them.
# Spelled in parts so this file does not name them either.
RETIRED_NEURON_API = re.compile("parallel_model_" + "(trace|load)")


def repository_lines(pattern: re.Pattern) -> list[str]:
    """Every line of the repository's text files (tracked or new, not ignored) that the pattern matches."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    found = []
    for name in listed:
        path = REPO_ROOT / name
        if not path.is_file() or path.suffix in (".png", ".gz"):
            continue
        text = path.read_text(errors="replace")
        found += [f"{name}:{number}" for number, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    return found


def test_no_file_names_a_path_of_a_developers_machine():
    """A reader's checkout is elsewhere: the shared reference is ../shared/reference/ beside the clone."""
    assert repository_lines(MACHINE_PATH) == []


def test_no_file_names_the_tracing_api_neuron_retired():
    assert repository_lines(RETIRED_NEURON_API) == []
