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
    """One XLA compilation cache for this test session and every process it starts (xdist workers,
    main.py runs, bench scripts and multi-host workers inherit the environment): a program compiled once,
    e.g. a training step or the toy world inside it, is read back by every later process that needs it.
    Every program is kept, however fast it compiled: a main.py run compiles about 150 small ones (measured:
    a tiny train_gan run takes 9 s with all of them cached, 18 s with only those over JAX's 1 s default)."""
    if hasattr(config, "workerinput"):      # an xdist worker: its controller has set the cache up
        return
    cache = tempfile.mkdtemp(prefix="jaxdissect-tests-xla-cache-")
    config.xla_cache = cache
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "xla_cache", ""), ignore_errors=True)
