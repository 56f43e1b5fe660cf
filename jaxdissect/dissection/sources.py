"""Where a dissection's samples come from: a generator and a segmenter, or arrays a user already has.

The engine (jaxdissect.dissection.engine) reads every sample through one of
these, so both kinds of dissection share the same statistics, checkpoints
and outputs. A source gives, for a batch of global sample indices (a
batch-sharded int32 array, -1 for padding rows past the last sample):

- `featuremaps(start, index)`: {layer: (N, h, w, U)} (the calibration pass);
- `labelled_featuremaps(start, index)`: (labels (N, K, H, W), featuremaps);
- `render(layer, indices)`: uint8 images (n, H, W, 3) or None, and the
  featuremaps (n, h, w, U) of a few samples, for the report;

and describes itself with `layers`, `labels`, `label_categories`,
`sample_limit` (None: unbounded) and `shapes()`.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.report import unit_images


def category_numbers(label_categories):
    """(category names, (C,) category number of each class) as the original tool numbers them.

    The categories are those of classes 1.. in order of first appearance; a
    class whose category is not among them (class 0, '-', usually) gets
    category 0.
    """
    names = tuple(dict.fromkeys(c for c in label_categories[1:]))
    names = names or ("",)
    return names, np.array([names.index(c) if c in names else 0 for c in label_categories], np.int32)


class GeneratedSamples:
    """Samples of a generator (sample i from latent i of `seed`) labelled by a segmenter.

    The generator follows jaxdissect.models.generator's protocol (here:
    `latent_size`, `h` and `__call__` with `capture`); the
    segmenter any hashable object with `segment(params, images, downsample)`
    -> (N, K, h, w) labels, `labels` and `label_categories` (a `Segmenter`).
    """

    sample_limit = None

    def __init__(self, generator, g_params, segmenter, s_params, layers, downsample, seed):
        self.generator, self.g_params = generator, g_params
        self.segmenter, self.s_params = segmenter, s_params
        self.layers, self.downsample, self.seed = tuple(layers), downsample, seed
        self.labels = tuple(segmenter.labels)
        self.label_categories = tuple(segmenter.label_categories)

    def shapes(self):
        """(labels shape, {layer: featuremap shape}) of one sample."""
        z = jax.ShapeDtypeStruct((1, self.generator.latent_size), jnp.float32)
        seg, maps = jax.eval_shape(functools.partial(_labelled, self.generator, self.segmenter, self.layers,
                                                     self.downsample), self.g_params, self.s_params, z)
        return seg.shape, {name: maps[name].shape for name in self.layers}

    def featuremaps(self, start, index):
        return _featuremaps_fn(self.generator, self.layers)(self.g_params, self.seed, index)

    def labelled_featuremaps(self, start, index):
        return _labelled_fn(self.generator, self.segmenter, self.layers, self.downsample)(
            self.g_params, self.s_params, self.seed, index)

    def render(self, layer, indices, batch_size):
        return unit_images.render_samples(self.generator, self.g_params, layer, self.seed, indices, batch_size)


def _labelled(generator, segmenter, layers, downsample, g_params, s_params, z):
    images, maps = generator(g_params, z, capture=layers)
    return segmenter.segment(s_params, images, downsample), maps


@functools.lru_cache(maxsize=None)
def _featuremaps_fn(generator, layers):
    """jit (g_params, seed, index) -> featuremaps of samples `index` (latents made on the device)."""
    def fn(g_params, seed, index):
        return generator.h(g_params, parallel.latents_at(seed, index, generator.latent_size), layers)
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _labelled_fn(generator, segmenter, layers, downsample):
    """jit (g_params, s_params, seed, index) -> (labels, featuremaps) of samples `index`."""
    def fn(g_params, s_params, seed, index):
        z = parallel.latents_at(seed, index, generator.latent_size)
        return _labelled(generator, segmenter, layers, downsample, g_params, s_params, z)
    return jax.jit(fn)


class ArraySamples:
    """Samples held in arrays (see jaxdissect.io.arrays): featuremaps (N, h, w, U) per layer, labels
    (N, K, H, W) and optionally images (N, 3, H, W) in [-1, 1]. Each process reads only the rows of its
    own devices."""

    def __init__(self, arrays, layers):
        self.arrays = arrays
        self.layers = tuple(layers)
        self.labels = tuple(arrays.labels)
        self.label_categories = tuple(arrays.categories)
        self.sample_limit = arrays.samples

    def shapes(self):
        return ((1,) + self.arrays.segmentation.shape[1:],
                {name: (1,) + self.arrays.layers[name].shape[1:] for name in self.layers})

    def _rows(self, array, start, index, dtype):
        """The batch-sharded rows [start, start + len(index)) of `array` (rows past the end repeat row 0;
        their index is -1, so they count nothing)."""
        def rows(a, b):
            wanted = np.arange(start + a, start + b)
            return np.asarray(array[np.where(wanted < self.sample_limit, wanted, 0)], dtype)
        return parallel.global_batch((index.shape[0],) + array.shape[1:], dtype, rows)

    def featuremaps(self, start, index):
        return {name: self._rows(self.arrays.layers[name], start, index, np.float32) for name in self.layers}

    def labelled_featuremaps(self, start, index):
        return self._rows(self.arrays.segmentation, start, index, np.int32), self.featuremaps(start, index)

    def render(self, layer, indices, batch_size):
        indices = np.asarray(indices)
        maps = np.asarray(self.arrays.layers[layer][indices], np.float32)
        if self.arrays.images is None:
            return None, maps
        images = np.moveaxis(np.asarray(self.arrays.images[indices], np.float32), 1, -1)
        return unit_images.to_bytes(images), maps
