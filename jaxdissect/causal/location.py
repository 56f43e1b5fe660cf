"""The alpha search's objective at single cells (--ace_region=location, the reference's objective).

For each sample of a batch, with r = h(z) at the layer and S (H, W) the
segmenter's soft class score averaged over each featuremap cell:

- present cell p: the cell where S is largest (the first in raster order
  among equals). A sample where no pixel is labelled the class has none and
  adds nothing to the ablation term;
- candidate cell q: of `probes` cells drawn without replacement, with
  probability proportional to `probe_weights` (how much of each cell the
  class covers on average, plus a tenth of the mean so that every cell can be
  drawn), the one where inserting every unit at its value raises S most;
- ablation: S at p of f(r with the units scaled by (1 - alpha) at p only);
- insertion: S at q of f(r with (1 - alpha) r + alpha value at q only).

The objective is (sum of insertions - sum of ablations) / N. Each term looks
at one cell, so no unit gains by turning the whole image into the class, as
it does when every other cell is edited at once (ace.causal_effect, the
'image' objective).
"""
import functools

import jax
import jax.numpy as jnp

from jaxdissect import parallel
from jaxdissect.causal.ace import cell_fraction
from jaxdissect.intervention import ablate, insert

PROBE_STREAM = 1  # the probe draw's random stream, apart from the latent of the same sample


def cell_scores(segmenter, s_params, images, class_index, downsample, fm_size):
    """((N, H, W) soft class score averaged over each featuremap cell, (N,) 1 where any pixel is the class)."""
    score, pixels = segmenter.class_score(s_params, images, class_index, downsample)
    return cell_fraction(score, fm_size), jnp.any(pixels, axis=(1, 2)).astype(jnp.float32)


def cell_masks(cells, fm_size):
    """(N, H, W) one-hot masks of flat cell indices `cells` (N,)."""
    height, width = fm_size
    return jax.nn.one_hot(cells, height * width, dtype=jnp.float32).reshape(-1, height, width)


def at_cells(maps, cells):
    """(N,) the maps (N, H, W) read at flat cell indices (N,)."""
    return jnp.take_along_axis(maps.reshape(len(maps), -1), cells[:, None], axis=1)[:, 0]


def present_cells(scores):
    """(N,) flat index of each sample's cell with the largest score (the first among equals)."""
    return jnp.argmax(scores.reshape(len(scores), -1), axis=1)


def probe_weights(presence):
    """(H, W) drawing weights of the probe cells from the class's mean share of each cell (H, W)."""
    return presence + 0.1 * jnp.mean(presence)


def draw_probes(seed, index, weights, probes):
    """(N, probes) distinct flat cells per sample, drawn without replacement with probability proportional
    to `weights` (H, W) (Gumbel top-k); sample i's draw depends only on (seed, i)."""
    key = jax.random.PRNGKey(seed)
    log_weights = jnp.log(weights.ravel())

    def one(i):
        noise = jax.random.gumbel(jax.random.fold_in(jax.random.fold_in(key, i), PROBE_STREAM), log_weights.shape)
        return jax.lax.top_k(log_weights + noise, probes)[1]
    return jax.vmap(one)(index.astype(jnp.uint32))


def candidate_cells(run_from, score_of, r, base_scores, value, probes):
    """(N,) per sample, the probe cell (of `probes` (N, P)) where inserting every unit at `value` (U,)
    raises the cell's score most. `run_from(r)` makes images, `score_of(images)` their cell scores."""
    every_unit = jnp.ones(r.shape[-1], jnp.float32)

    def rise(cells):
        edited = insert(every_unit, value, cell_masks(cells, r.shape[1:3]))(r)
        return at_cells(score_of(run_from(edited)), cells) - at_cells(base_scores, cells)
    rises = jax.vmap(rise, in_axes=1, out_axes=1)(probes)                        # (N, P)
    return jnp.take_along_axis(probes, jnp.argmax(rises, axis=1)[:, None], axis=1)[:, 0]


def location_effect(generator, g_params, segmenter, s_params, layer, alpha, value, class_index, z, index,
                    presence, seed, probes=5, downsample=1):
    """{'ace' (the objective), 'insertion', 'ablation', 'present'} of unit weights `alpha` (U,) for the
    samples `index` (N,) with latents `z`; `presence` (H, W) is the class's mean share of each cell."""
    r = jax.lax.stop_gradient(generator.h(g_params, z, (layer,))[layer])
    fm_size = r.shape[1:3]
    run_from = lambda edited: generator.f(g_params, edited, layer, z)
    score_of = lambda images: cell_scores(segmenter, s_params, images, class_index, downsample, fm_size)[0]
    base_scores, has_class = cell_scores(segmenter, s_params, run_from(r), class_index, downsample, fm_size)
    present = present_cells(base_scores)
    drawn = draw_probes(seed, index, probe_weights(presence), probes)
    candidates = candidate_cells(run_from, score_of, r, base_scores, value, drawn)
    ablation = at_cells(score_of(run_from(ablate(alpha, cell_masks(present, fm_size))(r))), present)
    insertion = at_cells(score_of(run_from(insert(alpha, value, cell_masks(candidates, fm_size))(r))), candidates)
    n = len(z)
    return {"ace": (jnp.sum(insertion) - jnp.sum(has_class * ablation)) / n,
            "insertion": jnp.mean(insertion),
            "ablation": jnp.sum(has_class * ablation) / jnp.maximum(jnp.sum(has_class), 1.0),
            "present": jnp.mean(has_class)}


@functools.lru_cache(maxsize=None)
def _presence_sum_fn(generator, segmenter, layer, downsample):
    """jit (total, g_params, s_params, seed, index, class_index) -> total + the class's share of each cell,
    summed over samples `index`. The running total is an argument, so that every operation of the loop
    is one compiled program (eager operations between programs on a multi-process mesh can deadlock)."""
    def fn(total, g_params, s_params, seed, index, class_index):
        z = parallel.latents_at(seed, index, generator.latent_size)
        r = generator.h(g_params, z, (layer,))[layer]
        _, pixels = segmenter.class_score(s_params, generator.f(g_params, r, layer, z), class_index, downsample)
        shares = cell_fraction(pixels, r.shape[1:3])
        return total + jnp.sum(jnp.where((index >= 0)[:, None, None], shares, 0.0), axis=0)
    return jax.jit(fn, donate_argnums=0)


def class_presence(generator, g_params, segmenter, s_params, layer, class_index, seed, samples, batch_size,
                   downsample=1):
    """(H, W) the class's mean share of each featuremap cell over samples [0, samples) of `seed`, as numpy."""
    add = _presence_sum_fn(generator, segmenter, layer, downsample)
    z = jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32)
    cells = jax.eval_shape(lambda z: generator.h(g_params, z, (layer,))[layer], z).shape[1:3]
    total = jax.device_put(jnp.zeros(cells, jnp.float32), parallel.replicated())
    for start in range(0, samples, batch_size):
        total = parallel.one_program_at_a_time(
            add(total, g_params, s_params, seed, parallel.global_indices(start, batch_size, samples), class_index))
    return parallel.to_host(total) / samples
