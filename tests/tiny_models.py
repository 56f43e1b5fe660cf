"""Tiny random model folders (a 16x16 ProGAN and a small flat UPerNet) for fast CLI tests."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.checkpoint import save_model
from jaxdissect.models.proggan import ProGAN
from jaxdissect.segmentation import upernet

TINY_SIZES = (16, 16, 8, 8)
TINY_LABELS = {"names": ["-", "sky", "grass", "tree", "door"],
               "categories": ["", "object", "object", "object", "part"]}


def numpy_params(init, *args, seed=0):
    """Variables shaped like `init(key, *args)`: kernels ~ N(0, 1), everything else 0, drawn with numpy.

    Like the Flax initializers of the ProGAN-style models, without compiling
    jax.random (seconds on CPU, eagerly or under jit).
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: (rng.standard_normal(leaf.shape) if jax.tree_util.keystr(path).endswith("['kernel']")
                            else np.zeros(leaf.shape)).astype(leaf.dtype), shapes)


def write_tiny_generator(dst, seed=0):
    model = ProGAN(TINY_SIZES)
    save_model(dst, numpy_params(model.init, seed=seed), model.meta({"tiny": "random weights for tests"}))
    return model


def write_tiny_segmenter(dst, seed=0):
    config = upernet.UPerNetConfig("ade20k", depths=(1, 1, 1, 1), stem_width=8, base_width=8, fpn_dim=16,
                                   n_class=len(TINY_LABELS["names"]))
    params = upernet.init_params(config, jax.random.PRNGKey(seed), (16, 16))
    save_model(dst, params, {"kind": "upernet", "config": config.to_json(), "labels": TINY_LABELS,
                             "source": {"tiny": "random weights for tests"}})
    return config


def write_tiny_discriminator(dst, seed=0):
    """A random discriminator folder for the tiny generator's 16x16 images (kind proggan_discriminator)."""
    from jaxdissect.models.discriminator import ProGANDiscriminator
    widths = list(TINY_SIZES[1:])
    params = numpy_params(ProGANDiscriminator(tuple(widths)).init, jnp.zeros((4, 16, 16, 3)), seed=seed)
    save_model(dst, params, {"kind": "proggan_discriminator", "widths": widths,
                             "source": {"tiny": "random weights for tests"}})
