import os
import shutil
import tempfile

import pytest

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")


@pytest.fixture(scope="session")
def shared_dir():
    """The fixtures folder shipped beside the repo (tests only; the product never reads it)."""
    if not os.path.isdir(SHARED):
        pytest.fail(f"{SHARED} not found: the golden fixtures must sit beside the repo")
    return os.path.abspath(SHARED)


def pytest_configure(config):
    """One XLA compilation cache for this test session's main.py subprocesses (see cli_helpers.run_main):
    runs that compile the same program (e.g. a training step and the toy world inside it) compile it once."""
    os.environ["JAXDISSECT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxdissect-tests-xla-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop("JAXDISSECT_TEST_XLA_CACHE", ""), ignore_errors=True)
