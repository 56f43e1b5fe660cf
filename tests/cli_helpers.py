"""Running main.py as a user would, and checking its one-line errors."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, devices=None, timeout=600):
    """`python main.py ARGS` from the repo root; `devices` simulates that many CPU devices."""
    env = dict(os.environ)
    if "JAXDISSECT_TEST_XLA_CACHE" in env:      # set by conftest for the whole session
        env["JAX_COMPILATION_CACHE_DIR"] = env["JAXDISSECT_TEST_XLA_CACHE"]
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run([sys.executable, os.path.join(REPO, "main.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)


def assert_one_line_error(result, *fragments):
    """Exit code 2, no traceback, and a last stderr line 'error: ...' containing every fragment."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    for fragment in fragments:
        assert fragment in last, last
