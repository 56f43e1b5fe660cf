"""Atomic file writes: a reader never sees a half-written output.

Each writer writes a hidden temporary file beside the target and renames it
onto the target only when complete; on any error the temporary is removed.
"""
import contextlib
import json
import os
import tempfile

import numpy as np


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """Like open(path, mode), but the file appears at `path` only on success."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_npz(path, arrays, compressed=False):
    with atomic_open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def save_json(path, value):
    with atomic_open(path) as f:
        json.dump(value, f, indent=1)


def save_text(path, text):
    with atomic_open(path) as f:
        f.write(text)


def load_npy(path, flag):
    """The one array of a .npy file; UserError naming --flag for a missing, unreadable or .npz file.

    Never unpickles (a .npy of Python objects is refused).
    """
    from jaxdissect.errors import UserError
    if not os.path.isfile(path):
        raise UserError(f"--{flag}={path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as e:  # np.load raises several types for a non-.npy file
        raise UserError(f"--{flag}={path}: not a .npy array file ({type(e).__name__}: {e})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise UserError(f"--{flag}={path}: holds several arrays (an .npz); give one .npy array")
    return array
