"""Loads converted model folders (see jaxdissect.checkpoint) as ready-to-run models."""
import jax
import jax.numpy as jnp

from jaxdissect.checkpoint import load_model
from jaxdissect.errors import UserError
from jaxdissect.models.proggan import ProGAN
from jaxdissect.models.stylegan2 import StyleGAN2

GENERATORS = {"proggan": ProGAN, "stylegan2": StyleGAN2}


def load_generator(path, dtype=jnp.float32):
    """Reads a generator folder (ProGAN or StyleGAN2); returns (model, params) with params as
    `dtype` jax arrays.

    float64 needs `jax_enable_x64`. Raises UserError if the folder is not a
    generator or its parameters do not fit the architecture in its meta.
    """
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
