import os
import shutil
import tempfile

import pytest

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.fixture(scope="session")
def fixtures_dir():
    """tests/fixtures: the golden fixtures the tests read (see its README.md)."""
    return FIXTURES


def pytest_configure(config):
    """One XLA compilation cache for this test session's main.py subprocesses (see cli_helpers.run_main):
    runs that compile the same program (e.g. a training step and the toy world inside it) compile it once."""
    os.environ["JAXDISSECT_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxdissect-tests-xla-cache-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ.pop("JAXDISSECT_TEST_XLA_CACHE", ""), ignore_errors=True)
