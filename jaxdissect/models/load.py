"""Loads converted model folders (see jaxdissect.checkpoint) as ready-to-run models."""
import jax
import jax.numpy as jnp

from jaxdissect.checkpoint import load_model
from jaxdissect.errors import UserError
from jaxdissect.models.proggan import ProGAN


def load_generator(path, dtype=jnp.float32):
    """Reads a ProGAN folder; returns (ProGAN, params) with params as `dtype` jax arrays.

    float64 needs `jax_enable_x64`. Raises UserError if the folder is not a
    ProGAN model or its parameters do not fit the architecture in its meta.
    """
    params, meta = load_model(path, kind="proggan")
    model = ProGAN.from_meta(meta, dtype)
    expected = jax.eval_shape(model.init, jax.random.key(0))
    got_structure, want_structure = jax.tree.structure(params), jax.tree.structure(expected)
    if got_structure != want_structure:
        raise UserError(f"{path}: parameters do not match the architecture in meta.json "
                        f"(sizes {list(model.sizes)})")
    for (key, got), want in zip(jax.tree.leaves_with_path(params), jax.tree.leaves(expected)):
        if got.shape != want.shape:
            raise UserError(f"{path}: parameter {jax.tree_util.keystr(key)} has shape "
                            f"{got.shape}, meta.json's sizes need {want.shape}")
    return model, jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
