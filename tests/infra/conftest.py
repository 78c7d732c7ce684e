import pytest

from infra.config import load_stack_config
from infra.offline import run_program, stack_file_config, stack_names

STACKS = stack_names()


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
