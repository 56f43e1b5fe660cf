"""Atomic file writes: a reader never sees a half-written output. Path checks for outputs.

Each writer writes a hidden temporary file (or folder) beside the target and
renames it onto the target only when complete; on any error the temporary
is removed.
"""
import contextlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from jaxdissect.errors import UserError


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
    except BaseException as e:
        os.unlink(tmp)
        raise named_failure(e, path, tmp) or e


@contextlib.contextmanager
def atomic_folder(path):
    """Yields an empty temporary folder beside `path` that replaces `path` (and all it held) on success."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".old", dir=parent)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise named_failure(e, path, tmp) or e


def os_error_code(error):
    """The errno of a file-system failure: an OSError's, or the OS error code that tensorstore (orbax's
    writer) puts in the text of its ValueError; None for any other error."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"os_error_code='(\d+)'", str(error)) if isinstance(error, ValueError) else None
    return int(found[1]) if found else None


def named_failure(error, path, inside):
    """`error` as an OSError naming `path` if it is a file-system failure (e.g. a full disk) that names no
    file or a file under `inside` (a temporary about to be removed); else None."""
    code = os_error_code(error)
    filename = getattr(error, "filename", None)
    if code is None or (filename is not None and not _is_under(str(filename), inside)):
        return None
    return OSError(code, os.strerror(code), path)


def _is_under(name, folder):
    name, folder = os.path.abspath(name), os.path.abspath(folder)
    return name == folder or name.startswith(folder + os.sep)


def save_npz(path, arrays, compressed=False):
    with atomic_open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def save_json(path, value):
    with atomic_open(path) as f:
        json.dump(value, f, indent=1)


def save_text(path, text):
    with atomic_open(path) as f:
        f.write(text)


def append_line(path, line):
    """Appends `line` and a newline to the file `path`; if that fails (e.g. on a full disk), the file is
    cut back to what it held and the OSError names `path`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(fd, data):]
        except OSError as e:
            os.ftruncate(fd, size)
            raise named_failure(e, path, path) or e
    finally:
        os.close(fd)


def check_writable_folder(path, flag, value=None):
    """UserError naming --flag=value (default: `path`) unless the folder `path` exists or can be made,
    and can be written to.

    Creates nothing: it probes the nearest existing folder on the way with a temporary file.
    """
    given = f"--{flag}={path if value is None else value}"
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{given}: {existing} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".jaxdissect-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{given}: cannot write in {existing} ({e.strerror})") from None


def npz_holds(path, keys):
    """True if `path` is an .npz file holding every array named in `keys`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return isinstance(data, np.lib.npyio.NpzFile) and set(keys) <= set(data.files)
    except Exception:  # np.load raises several types for files of other kinds
        return False


def load_npy(path, flag):
    """The one array of a .npy file; UserError naming --flag for a missing, unreadable or .npz file.

    Never unpickles (a .npy of Python objects is refused).
    """
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


def load_array(path, flag, key):
    """A .npy file's array, or the array `key` of an .npz file; UserError naming --flag otherwise."""
    if not path.endswith(".npz"):
        return load_npy(path, flag)
    if not os.path.isfile(path):
        raise UserError(f"--{flag}={path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise UserError(f"--{flag}={path}: no '{key}' array (it holds {', '.join(data.files) or 'none'})")
            return data[key]
    except UserError:
        raise
    except Exception as e:  # np.load raises several types for a non-.npz file
        raise UserError(f"--{flag}={path}: not an .npz file ({type(e).__name__}: {e})") from None
