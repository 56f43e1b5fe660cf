import os

import pytest

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")


@pytest.fixture(scope="session")
def shared_dir():
    """The fixtures folder shipped beside the repo (tests only; the product never reads it)."""
    if not os.path.isdir(SHARED):
        pytest.fail(f"{SHARED} not found: the golden fixtures must sit beside the repo")
    return os.path.abspath(SHARED)
