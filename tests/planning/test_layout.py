"""The import direction: `planning` reads the deploy program, the deploy program never imports `planning`.

`__main__.py` and `infra/` are what `pulumi up` runs, `model/` and `serving/` what the image runs: none
of them, nor any other package beside them, may need the offline tooling (its mocks, checks or data).
Only the tests and the benchmarks (`tests/`, `bench/`, no packages) import it.
"""

import ast

import pytest

from planning.offline import REPO_ROOT

TOOLING = "planning"
PACKAGES = sorted(init.parent for init in REPO_ROOT.glob("*/__init__.py") if init.parent.name != TOOLING)
DEPLOYED = sorted([REPO_ROOT / "__main__.py", *(path for package in PACKAGES for path in package.rglob("*.py"))])


def imported_modules(source: str) -> set[str]:
    """Every module a source file imports, at any depth (function-level imports too)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def imports_tooling(source: str) -> bool:
    return any(module == TOOLING or module.startswith(f"{TOOLING}.") for module in imported_modules(source))


@pytest.mark.parametrize("source, expected", [
    ("from planning.offline import run_program", True),
    ("import planning.checks", True),
    ("def f():\n    from planning import secrets", True),
    ("from infra import planning_notes", False),
    ("import planningtools", False),
])
def test_the_rule_sees_every_form_of_import(source, expected):
    assert imports_tooling(source) is expected


def test_the_program_and_the_runtime_import_nothing_from_planning():
    assert {"infra", "model", "serving"} <= {package.name for package in PACKAGES}
    offenders = [str(path.relative_to(REPO_ROOT)) for path in DEPLOYED if imports_tooling(path.read_text())]
    assert offenders == [], f"importing {TOOLING}: {', '.join(offenders)} (the deploy program must not need the tooling)"

