"""Loads generators as ready-to-run models: converted model folders (see jaxdissect.checkpoint), or a
user's own generator through a factory function (`module.path:factory` or `file.py:factory`)."""
import functools
import hashlib
import importlib
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.checkpoint import folder_id, load_model
from jaxdissect.errors import UserError
from jaxdissect.models.flax_adapter import AdapterError
from jaxdissect.models.proggan import ProGAN
from jaxdissect.models.stylegan2 import StyleGAN2

GENERATORS = {"proggan": ProGAN, "stylegan2": StyleGAN2}
PROTOCOL = ("latent_size", "resolution", "layer_names", "featuremap_shape", "layer_index", "h", "f")


def load_generator(path, dtype=jnp.float32):
    """Reads a generator folder (ProGAN or StyleGAN2), or calls a factory (`is_factory_spec`); returns
    (model, params), a folder's params as `dtype` jax arrays.

    float64 needs `jax_enable_x64`. Raises UserError if the folder is not a
    generator or its parameters do not fit the architecture in its meta.
    """
    if is_factory_spec(path):
        return generator_from_factory(path)
    params, meta = load_model(path)
    if meta.get("kind") not in GENERATORS:
        raise UserError(f"{path}: holds a {meta.get('kind')!r} model, expected a generator "
                        f"({', '.join(map(repr, GENERATORS))})")
    try:
        model = GENERATORS[meta["kind"]].from_meta(meta, dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: meta.json does not describe a {meta['kind']} generator ({e})") from None
    expected = jax.eval_shape(model.init, jax.random.key(0))
    got_structure, want_structure = jax.tree.structure(params), jax.tree.structure(expected)
    if got_structure != want_structure:
        raise UserError(f"{path}: parameters do not match the architecture in meta.json")
    for (key, got), want in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(expected)):
        if got.shape != want.shape:
            raise UserError(f"{path}: parameter {jax.tree_util.keystr(key)} has shape "
                            f"{got.shape}, meta.json's architecture needs {want.shape}")
    return model, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def is_factory_spec(spec):
    """Whether `spec` names a factory function (`module.path:name`, `file.py:name`) rather than a folder."""
    return ":" in spec and not os.path.isdir(spec)


@functools.lru_cache(maxsize=None)
def generator_from_factory(spec):
    """(generator, params) returned by the factory function `spec` names, called once per process.

    `file.py:name` imports the file with its folder on sys.path (as running
    it would); `module.path:name` imports an installed module or one on
    PYTHONPATH. The generator must follow jaxdissect.models.generator's
    protocol, e.g. a `FlaxGenerator` around the user's flax module.
    """
    where, _, name = spec.rpartition(":")
    try:
        module = _import_file(where) if where.endswith(".py") else importlib.import_module(where)
    except (ImportError, OSError) as e:
        raise UserError(f"--generator={spec}: cannot import {where} ({e})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"--generator={spec}: {where} has no function {name!r}")
    try:
        made = factory()
    except AdapterError as e:
        raise UserError(f"--generator={spec}: {e}") from None
    if not (isinstance(made, tuple) and len(made) == 2):
        raise UserError(f"--generator={spec}: the factory must return (generator, params); it returned "
                        f"a {type(made).__name__}")
    missing = [attr for attr in PROTOCOL if not hasattr(made[0], attr)]
    if missing:
        raise UserError(f"--generator={spec}: the generator lacks {', '.join(missing)} (the protocol: "
                        "jaxdissect.models.generator)")
    return made


def _import_file(path):
    if not os.path.isfile(path):
        raise OSError(f"no such file {path}")
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator_id(spec):
    """What identifies a generator when a run resumes: a folder's `folder_id`, or a factory's spec with
    the bytes of the parameters it returns."""
    if is_factory_spec(spec):
        digest = hashlib.sha256()
        _, params = generator_from_factory(spec)
        digest.update(f"{spec}\n{jax.tree.structure(params)}".encode())
        for leaf in jax.tree.leaves(params):
            leaf = np.asarray(leaf)
            digest.update(f"{leaf.dtype}{leaf.shape}".encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
        return digest.hexdigest()
    return folder_id(spec)
