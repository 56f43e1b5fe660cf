"""The average causal effect (ACE) of a unit set on a class over whole images, differentiable in alpha
(the alpha search's --ace_region=image objective; jaxdissect.causal.location has the reference's).

For a batch of samples, with r = h(z) at `layer` and c the class:
- present positions P_c: featuremap cells where c covers any pixel in the
  segmentation of the unedited image, so that an ablation reaches the whole
  object, its edges included (cells only mostly covered left the edges to
  redraw it: on the toy GAN the top-20 tree units found that way removed 11%
  of tree pixels, against 73% with every touched cell); candidate positions:
  the others;
- x_a = f(r with the units ablated at P_c), x_i = f(r with the units set to
  `value` at the candidates);
- ACE = E[s_c(x_i) over candidate pixels] - E[s_c(x_a) over present pixels],
  each expectation pooled over samples and pixels, s_c the segmenter's soft
  class score. With a 0/1 alpha this is the design's eq. 5; with alpha in
  [0, 1] it is the alpha search's objective (before the L2 penalty).
"""
import jax
import jax.numpy as jnp

from jaxdissect.intervention import ablate, insert
from jaxdissect.segmentation.resample import adaptive_avg_pool


def cell_fraction(pixel_mask, size):
    """Fraction of each featuremap cell covered by a (N, h, w) pixel mask, at `size` = (H, W)."""
    return adaptive_avg_pool(pixel_mask.astype(jnp.float32)[..., None], size)[..., 0]


def nearest_resize(mask, size):
    """(N, H, W) -> (N, h, w), each pixel taking the cell it falls in."""
    (H, W), (h, w) = mask.shape[1:3], size
    rows = (jnp.arange(h) * H) // h
    cols = (jnp.arange(w) * W) // w
    return mask[:, rows][:, :, cols]


def class_regions(segmenter, s_params, images, class_index, downsample, fm_size):
    """(present cells (N, H, W) 0/1, candidate cells (N, H, W) 0/1) of class c in `images`."""
    _, present_pixels = segmenter.class_score(s_params, images, class_index, downsample)
    present = (cell_fraction(present_pixels, fm_size) > 0).astype(jnp.float32)
    return present, 1.0 - present


def pooled_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-9)


def causal_effect(generator, g_params, segmenter, s_params, layer, alpha, value, class_index, z, downsample=1):
    """{'ace', 'insertion', 'ablation'} for unit weights `alpha` (U,) and insertion values `value` (U,)."""
    r = jax.lax.stop_gradient(generator.h(g_params, z, (layer,))[layer])
    images = generator.f(g_params, r, layer, z)
    present, candidates = class_regions(segmenter, s_params, images, class_index, downsample, r.shape[1:3])
    ablated = generator.f(g_params, ablate(alpha, present)(r), layer, z)
    inserted = generator.f(g_params, insert(alpha, value, candidates)(r), layer, z)
    score_ablated, _ = segmenter.class_score(s_params, ablated, class_index, downsample)
    score_inserted, _ = segmenter.class_score(s_params, inserted, class_index, downsample)
    size = score_ablated.shape[1:3]
    ablation = pooled_mean(score_ablated, nearest_resize(present, size))
    insertion = pooled_mean(score_inserted, nearest_resize(candidates, size))
    return {"ace": insertion - ablation, "insertion": insertion, "ablation": ablation}
