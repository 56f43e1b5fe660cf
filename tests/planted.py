"""A synthetic generator and segmenter with a planted answer, for dissection and intervention tests.

The generator maps z to a featuremap "layer" (N, 8, 8, U) whose units are
random linear functions of z, except unit PLANTED_UNIT, which is a scaled
copy of a hidden mask. Its "image" is the mask (and its complement) upsampled
to 16x16, and the segmenter reads class THING back from the image, so unit
PLANTED_UNIT should be labelled THING with IoU near 1 and the random units
should not.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

LABELS = ("-", "thing", "stuff")
CATEGORIES = ("", "object", "object")
THING, STUFF = 1, 2
PLANTED_UNIT = 3
UNITS = 6
LATENT = 16


@dataclasses.dataclass(frozen=True)
class PlantedGenerator:
    latent_size: int = LATENT
    units: int = UNITS

    def init(self, seed=0):
        rng = np.random.default_rng(seed)
        return {"w": jnp.asarray(rng.standard_normal((LATENT, 4 * 4 * (self.units + 1))) / 4, jnp.float32)}

    def _layer(self, params, z):
        base = (z @ params["w"]).reshape(z.shape[0], 4, 4, self.units + 1)
        base = jnp.repeat(jnp.repeat(base, 2, axis=1), 2, axis=2)       # (N, 8, 8, U + 1), blocky
        mask = (base[..., -1] > 0.3).astype(jnp.float32)
        layer = base[..., :-1].at[..., PLANTED_UNIT].set(2.0 * mask + 0.05 * base[..., 0])
        return layer

    def _render(self, layer):
        """Channel 0 is a soft step of the planted unit at 1.0 (differentiable, for the alpha search)."""
        mask = jax.nn.sigmoid(8.0 * (layer[..., PLANTED_UNIT] - 1.0))
        image = jnp.stack([mask, 1 - mask, jnp.zeros_like(mask)], axis=-1) * 2 - 1
        return jnp.repeat(jnp.repeat(image, 2, axis=1), 2, axis=2)       # (N, 16, 16, 3)

    def h(self, params, z, layers, edits=None):
        return {"layer": self._layer(params, z)}

    def f(self, params, r, layer, z=None, edits=None):
        return self._render(r)

    def __call__(self, params, z, edits=None, capture=()):
        layer = self._layer(params, z)
        if edits and "layer" in edits:
            layer = edits["layer"](layer)
        return self._render(layer), ({"layer": layer} if "layer" in capture else {})


@dataclasses.dataclass(frozen=True)
class PlantedSegmenter:
    labels: tuple = LABELS
    label_categories: tuple = CATEGORIES

    def segment(self, params, images, downsample=1):
        thing = images[..., 0] > 0
        seg = jnp.where(thing, THING, STUFF).astype(jnp.int32)[:, None]
        return seg[:, :, ::downsample, ::downsample]

    def class_score(self, params, images, class_index, downsample=1):
        thing = (images[..., ::downsample, ::downsample, 0] + 1) / 2
        score = jnp.where(class_index == THING, thing, 1 - thing)
        return score, score > 0.5


GLOBAL_UNIT = 5


@dataclasses.dataclass(frozen=True)
class OffGridGenerator(PlantedGenerator):
    """The planted world drawn off the featuremap's grid, with a unit that acts on the whole image.

    The image is 32x32: each cell of the 8x8 featuremap is a 4x4 pixel block,
    shifted by one pixel down and right, so a 'thing' cell covers 9 pixels of
    its own cell and 3 or 1 of its neighbours'; the class's share of a cell
    takes the values 0, 1/16, 3/16, 1/4, 9/16, 3/4 and 1, and the cell where a
    thing is most present is not its first touched one. Unit GLOBAL_UNIT
    draws 'thing' everywhere once its mean over the featuremap passes 1:
    inserting it at every other cell pays (the image objective), at one
    cell it does nothing (the location objective).
    """

    def _render(self, layer):
        planted = jnp.repeat(jnp.repeat(layer[..., PLANTED_UNIT], 4, axis=1), 4, axis=2)     # (N, 32, 32)
        planted = jnp.pad(planted, ((0, 0), (1, 0), (1, 0)), mode="edge")[:, :32, :32]
        local = jax.nn.sigmoid(8.0 * (planted - 1.0))
        everywhere = jax.nn.sigmoid(8.0 * (jnp.mean(layer[..., GLOBAL_UNIT], axis=(1, 2)) - 1.0))
        thing = 1 - (1 - local) * (1 - everywhere[:, None, None])
        return jnp.stack([thing, 1 - thing, jnp.zeros_like(thing)], axis=-1) * 2 - 1
