"""Reads NVIDIA stylegan2-ada-pytorch network pickles without running the code they embed.

A snapshot `network-snapshot-*.pkl` is a pickle of {G, D, G_ema, ...}. Each
network module is stored as a call to
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta`
holds the module's class name, the whole Python source of its module
(`module_src`; unpickling it with pickle.load would exec it) and its
`state`, the module's `__dict__`: `_parameters`, `_buffers`, `_modules`
(child modules, stored the same way), the constructor's `_init_kwargs` and
plain attributes. Tensors are `_rebuild_tensor_v2` calls on storages that are
themselves complete legacy torch.save streams (`torch.storage._load_from_bytes`).

Here every global resolves to a local stand-in from an allow-list: a
persistent object becomes a `Module` record (never a class built from
`module_src`), storages are parsed by jaxdissect.io.pth, and any other
global is refused.
"""
import collections
import mmap
import os

import numpy as np

from jaxdissect.errors import UserError
from jaxdissect.io import pth


class Module:
    """What a pickled module leaves behind: its class name and its `__dict__` (`state`)."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise ValueError("a persistent object that is not a module")
        self.class_name = str(meta.get("class_name"))
        self.state = meta["state"]

    @property
    def children(self):
        return dict(self.state.get("_modules") or {})

    def init_kwargs(self):
        return dict(self.state.get("_init_kwargs") or {})


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict subclass)."""


def _numpy_scalar(dtype, data):
    """Stand-in for numpy's scalar reconstructor, numbers only."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise ValueError("a numpy scalar that is not a number")
    return np.frombuffer(data, dtype, count=1)[0]


def _allowed_globals(path):
    names = dict(pth.ALLOWED_GLOBALS)
    names[("collections", "OrderedDict")] = collections.OrderedDict
    names[("dnnlib.util", "EasyDict")] = _EasyDict
    names[("numpy", "dtype")] = np.dtype
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        names[(module, "scalar")] = _numpy_scalar
    names[("torch.storage", "_load_from_bytes")] = lambda data: pth.storage_from_bytes(data, path)
    names[("torch_utils.persistence", "_reconstruct_persistent_obj")] = Module
    return names


def load(path):
    """The top-level object of an NVIDIA network pickle: dicts, `Module`s, arrays (tensors)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file, not a network pickle")
    with open(path, "rb") as file:
        if file.read(1) != b"\x80":
            raise UserError(f"{path}: not a network pickle (nor a torch.save file)")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            return pth.unpickle(mapped, path, "network pickle", _allowed_globals(path))
        except UserError as e:
            if "global dnnlib.tflib" in str(e):
                raise UserError(f"{path}: a TensorFlow StyleGAN/StyleGAN2 pickle; convert it to PyTorch "
                                "with stylegan2-ada-pytorch's legacy.py first") from None
            raise


def state_dict(module, path, prefix=""):
    """{name: numpy array} of a `Module` tree in torch's state_dict order: a module's parameters,
    its persistent buffers, then each child's."""
    state = module.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    tensors = {**(state.get("_parameters") or {}),
               **{k: v for k, v in (state.get("_buffers") or {}).items() if k not in skipped}}
    out = {prefix + name: pth.materialize(value, path) for name, value in tensors.items() if value is not None}
    for name, child in module.children.items():
        if not isinstance(child, Module):
            raise UserError(f"{path}: submodule {prefix + name} is a {type(child).__name__}, not a network module")
        out.update(state_dict(child, path, f"{prefix}{name}."))
    for name, value in out.items():
        if not isinstance(value, np.ndarray):
            raise UserError(f"{path}: {name} is a {type(value).__name__}, not a tensor")
    return out


def modules(module, prefix=""):
    """{dotted name: Module} of a module and all its descendants ('' for the module itself)."""
    out = {prefix.rstrip("."): module}
    for name, child in module.children.items():
        if isinstance(child, Module):
            out.update(modules(child, f"{prefix}{name}."))
    return out
