"""Running main.py as a user would, and checking its one-line errors; real file-system failures for it."""
import contextlib
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r".* \[[# ]+\] \d+/\d+ |\[[\w ]+\] step \d+/\d+ ")   # progress bars, training logs


def run_main(*args, devices=None, timeout=600):
    """`python main.py ARGS` from the repo root; `devices` simulates that many CPU devices."""
    env = dict(os.environ)                      # with conftest's compilation cache
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


def listing(folder):
    """Every path under `folder`, hidden ones included."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, dirs, names in os.walk(folder) for name in dirs + names)


def assert_refused(args, fragments, folder):
    """main.py ARGS: exit code 2, one stderr line (besides progress bars) naming every fragment, `folder`
    unchanged."""
    before = listing(folder)
    result = run_main(*args)
    assert_one_line_error(result, *fragments)
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS.match(line)]
    assert len(lines) == 1, result.stderr
    assert listing(folder) == before


@contextlib.contextmanager
def tmpfs(path, options):
    """A tmpfs mounted at `path` with mount `options` (root only; skips otherwise)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def full_disk(path, free, holding=None):
    """A tmpfs at `path` holding a copy of the folder `holding` (if given), with only `free` bytes left
    (rounded up to whole pages, at least one): writes beyond that fail with ENOSPC, a real full disk."""
    with tmpfs(path, "size=64m") as disk:
        if holding:
            shutil.copytree(holding, disk, dirs_exist_ok=True)
        stat = os.statvfs(disk)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        size = max(used + free, stat.f_frsize)     # a tmpfs of size 0 would be unlimited
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
        yield str(disk)
