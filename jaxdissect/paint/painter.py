"""Renders a generated sample with a list of brush strokes, with one compiled function for any strokes.

A stroke paints one concept on (`add`: its units pulled to their values),
off (`remove`: pulled to zero) or erases earlier paint (`erase`: every unit
pulled back to the layer's unedited activation), inside a brush mask drawn
at image resolution, with a strength in [0, 1] that scales alpha. At each
layer that has concepts the strokes become one edit: K `Intervention`s
stacked on a leading stroke axis, applied in order with `lax.scan`:

    r <- (1 - strength * unit_k * m_k) * r + strength * unit_k * m_k * target_k

where m_k is the fraction of each featuremap cell the stroke covers. Strokes
are padded to `max_strokes` with no-op strokes (alpha 0), so every request
has the same shapes and nothing recompiles; a stroke whose mask is empty
leaves the image unchanged bit for bit.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.causal.ace import cell_fraction
from jaxdissect.intervention import Intervention, unit_indicator
from jaxdissect.paint.concepts import check_against
from jaxdissect.report.unit_images import to_bytes

MODES = ("add", "remove", "erase")
PADDING = -1  # mode code of the no-op strokes that fill up to max_strokes


class Stroke(NamedTuple):
    concept: int        # index into the painter's concepts (ignored by erase)
    mode: str           # one of MODES
    strength: float     # in [0, 1]
    mask: np.ndarray    # (R, R) bool, image resolution


class StrokeArrays(NamedTuple):
    """Strokes padded to a fixed count: the arguments of the compiled renderer."""
    concept: np.ndarray   # (K,) int32
    mode: np.ndarray      # (K,) int32, index into MODES or PADDING
    strength: np.ndarray  # (K,) float32
    mask: np.ndarray      # (K, R, R) uint8


def pad_strokes(strokes, max_strokes, resolution):
    """StrokeArrays holding `strokes` followed by no-op strokes up to `max_strokes`."""
    if len(strokes) > max_strokes:
        raise ValueError(f"{len(strokes)} strokes; at most {max_strokes}")
    arrays = StrokeArrays(np.zeros(max_strokes, np.int32), np.full(max_strokes, PADDING, np.int32),
                          np.zeros(max_strokes, np.float32),
                          np.zeros((max_strokes, resolution, resolution), np.uint8))
    for k, stroke in enumerate(strokes):
        arrays.concept[k], arrays.mode[k] = stroke.concept, MODES.index(stroke.mode)
        arrays.strength[k], arrays.mask[k] = stroke.strength, stroke.mask
    return arrays


def apply_strokes(featuremap, alpha, mask, value, erase):
    """Applies K strokes (alpha (K, U), mask (K, H, W), value (K, U), erase (K,)) one after another.

    Each is an `Intervention`; an erasing one pulls towards `featuremap`
    itself (the layer's activation before any stroke) instead of `value`.
    """
    def apply(r, stroke):
        alpha_k, mask_k, value_k, erase_k = stroke
        target = jnp.where(erase_k, featuremap, value_k)
        return Intervention(alpha_k, mask_k, target)(r), None
    return jax.lax.scan(apply, featuremap, (alpha, mask, value, erase))[0]


class Painter:
    """Renders samples of `generator` edited with concept strokes.

    Samples are addressed by index: sample i's latent depends only on
    (seed, i), as in a dissection run with the same seed.
    """

    def __init__(self, generator, params, concepts, seed=1, max_strokes=64):
        check_against(generator, concepts)
        self.generator, self.params, self.concepts = generator, params, tuple(concepts)
        self.seed, self.max_strokes = seed, max_strokes
        self.layers = tuple(sorted({c.layer for c in concepts}, key=generator.layer_index))
        self.tables = {layer: self._concept_table(layer) for layer in self.layers}
        self.traces = 0  # how often the renderer was traced (compiled); tests check it stays 1
        self._render = jax.jit(self._render_strokes)

    @property
    def resolution(self):
        return self.generator.resolution

    def render(self, sample, strokes=()):
        """The sample as uint8 (R, R, 3) after applying `strokes` (a list of Stroke) in order."""
        z = parallel.latents(self.seed, sample, sample + 1, self.generator.latent_size)
        arrays = pad_strokes(strokes, self.max_strokes, self.resolution)
        image = self._render(self.params, z, self.tables, arrays)
        return to_bytes(np.asarray(image)[0])

    def _concept_table(self, layer):
        """(indicator, value), each (n_concepts, U): a concept's units and values at `layer`, 0 elsewhere."""
        width = self.generator.featuremap_shape(layer)[2]
        indicator = np.zeros((len(self.concepts), width), np.float32)
        value = np.zeros((len(self.concepts), width), np.float32)
        for i, c in enumerate(self.concepts):
            if c.layer == layer:
                indicator[i] = unit_indicator(c.units, width)
                value[i, list(c.units)] = c.values
        return jnp.asarray(indicator), jnp.asarray(value)

    def _render_strokes(self, params, z, tables, strokes):
        self.traces += 1
        add, erase = strokes.mode == MODES.index("add"), strokes.mode == MODES.index("erase")
        strength = jnp.where(strokes.mode == PADDING, 0.0, strokes.strength)[:, None]
        edits = {layer: functools.partial(self._layer_edit, tables[layer], strokes, add, erase, strength)
                 for layer in self.layers}
        image, _ = self.generator(params, z, edits=edits)
        return image

    def _layer_edit(self, table, strokes, add, erase, strength, featuremap):
        indicator, value = table
        alpha = strength * jnp.where(erase[:, None], 1.0, indicator[strokes.concept])
        mask = cell_fraction(strokes.mask, featuremap.shape[1:3])
        value = jnp.where(add[:, None], value[strokes.concept], 0.0)
        return apply_strokes(featuremap, alpha, mask, value, erase)
