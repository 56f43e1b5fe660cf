"""Model folders: an orbax checkpoint of parameters plus a JSON of metadata.

A model folder looks like::

    DIR/params/      orbax StandardCheckpointer tree (numpy arrays)
    DIR/meta.json    what the model is (architecture, labels, provenance)

Writes are atomic: everything goes to a hidden sibling folder that is renamed
onto DIR only once complete, so a failed conversion never leaves a partial DIR.
A file-system failure of an orbax write (e.g. a full disk) is raised as one
OSError naming the folder written (`orbax_writes`), and orbax's own reports of
it from its threads are silenced, so that main.py prints it as one line.
"""
import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile

import numpy as np
import orbax.checkpoint as ocp

from jaxdissect.errors import UserError
from jaxdissect.io import files

META_FILE = "meta.json"
PARAMS_DIR = "params"


@contextlib.contextmanager
def atomic_directory(dst, replace=False):
    """Yields a temporary folder beside `dst`, renamed onto `dst` on success.

    Refuses to replace an existing non-empty `dst` unless `replace`; then the
    old folder is swapped out only once the new one is complete. On any
    exception the temporary folder is removed and `dst` is left untouched.
    """
    dst = os.path.abspath(dst)
    if not replace and os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
        raise UserError(f"{dst}: already exists and is not empty; choose a new destination")
    parent = os.path.dirname(dst)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.partial-", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model folder is for everyone to read
        retired = tmp + ".replaced"
        if os.path.lexists(dst):
            os.rename(dst, retired)
        os.rename(tmp, dst)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise files.named_failure(e, dst, tmp) or e


@contextlib.contextmanager
def orbax_writes(path):
    """Runs orbax writes under the folder `path`: a file-system failure in them is raised as an OSError
    naming `path` (orbax raises tensorstore's as a ValueError, and logs it from its threads first)."""
    _silence_reported_failures()
    try:
        yield
    except Exception as e:
        raise files.named_failure(e, path, path) or e


def _is_closed_loop_callback(unraisable):
    """True for the error a tensorstore callback meets when orbax has closed a failed write's event loop."""
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed" and unraisable.object is None


class _ReportedFailureRecords(logging.Filter):
    """Drops log records (with tracebacks) of file-system failures: orbax's threads log one several times
    (through absl, and asyncio for its tasks) before `orbax_writes` raises it anyway."""

    def filter(self, record):
        return not (record.exc_info and files.os_error_code(record.exc_info[1]) is not None)


@functools.cache
def _silence_reported_failures():
    """Silences orbax's reports of the failures `orbax_writes` raises: its log records, and the
    'Event loop is closed' that tensorstore's callbacks raise (unraisable) once orbax has closed a
    failed write's event loop."""
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(_ReportedFailureRecords())
    report = sys.unraisablehook

    def unraisable_hook(unraisable):
        if not _is_closed_loop_callback(unraisable):
            report(unraisable)
    sys.unraisablehook = unraisable_hook


def folder_id(path):
    """Identifies a model folder by its meta.json (which records its source's sha256)."""
    with open(os.path.join(path, META_FILE), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_params(path, params):
    """Writes a pytree of arrays as an orbax checkpoint at `path` (absolute), synchronously (orbax's
    background writer, on a failure, leaves threads writing that hold the process up at exit)."""
    params = _to_numpy(params)
    with orbax_writes(path), ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(os.path.abspath(path), args=ocp.args.StandardSave(params))


def read_params(path):
    """Reads an orbax checkpoint written by `write_params` as numpy arrays."""
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.abspath(path))


def save_model(dst, params, meta, replace=False):
    """Writes a model folder atomically (see module docstring); `replace` swaps out an existing one."""
    with atomic_directory(dst, replace) as tmp:
        write_params(os.path.join(tmp, PARAMS_DIR), params)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)


def load_model(path, kind=None):
    """Reads a model folder; returns (params, meta).

    `kind`, when given, must equal meta["kind"] (e.g. "proggan", "upernet").
    """
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such model folder")
    if not os.path.isfile(meta_path):
        raise UserError(f"{path}: not a converted model folder (no {META_FILE}); "
                        "convert the weights first with the scripts in convert/")
    with open(meta_path) as f:
        meta = json.load(f)
    if kind is not None and meta.get("kind") != kind:
        raise UserError(f"{path}: holds a {meta.get('kind')!r} model, expected {kind!r}")
    params = read_params(os.path.join(path, PARAMS_DIR))
    return params, meta


def _to_numpy(tree):
    import jax
    return jax.tree.map(np.asarray, tree)
