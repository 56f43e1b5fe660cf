"""Ablation curves: the share of a class's pixels removed by switching off the top-n units of a ranking.

For a unit set U, on held-out samples, in one of two ways (`region`):

- 'location' (the reference's ablation evaluation): every featuremap cell
  where the class covers any pixel is ablated on its own, U zeroed at that
  cell only, and the class's share of that cell is read back;

      removed(U) = 1 - sum over cells of (share after) / sum of (share before)

- 'image': U is zeroed at every cell at once, and the class's pixels are
  counted over the whole image;

      removed(U) = 1 - (class pixels after) / (class pixels before)

Both pool over the samples (sums, not a mean of per-image ratios). Curves
compare the top-n units by alpha (the causal ranking), by IoU (the
dissection's ranking), by each unit's own effect (`effect_ranking`, measured
on other samples) and random units, for several n. A unit set is an
alpha indicator, so one compiled function serves every n and ranking.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.causal.location import at_cells, cell_masks, hard_cell_shares
from jaxdissect.intervention import ablate
from jaxdissect.progress import Progress


@functools.lru_cache(maxsize=None)
def _featuremap_fn(generator, layer):
    return jax.jit(lambda g_params, z: generator.h(g_params, z, (layer,))[layer])


@functools.lru_cache(maxsize=None)
def class_pixels_fn(generator, segmenter, layer, downsample):
    """jit (g_params, s_params, r, z, alpha, class_index) -> (N,) class pixels per image with `alpha` ablated
    (`r` is the layer's featuremap of latents `z`)."""
    def fn(g_params, s_params, r, z, alpha, class_index):
        images = generator.f(g_params, ablate(alpha)(r), layer, z)
        _, mask = segmenter.class_score(s_params, images, class_index, downsample)
        return jnp.sum(mask, axis=(1, 2), dtype=jnp.int32)
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def cell_shares_fn(generator, segmenter, layer, downsample):
    """jit (g_params, s_params, r, z, cells, alpha, class_index) -> (N,) the class's share of cell `cells[i]`
    of the image made with `alpha` ablated at that cell only (`r` is the layer's featuremap of latents `z`)."""
    def fn(g_params, s_params, r, z, cells, alpha, class_index):
        edit = ablate(alpha, cell_masks(cells, r.shape[1:3]))
        return at_cells(hard_cell_shares(generator, g_params, segmenter, s_params, layer, class_index, downsample,
                                         r, z, edit), cells)
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def all_cell_shares_fn(generator, segmenter, layer, downsample):
    """jit (g_params, s_params, z, class_index) -> (N, H * W) the class's share of every featuremap cell."""
    def fn(g_params, s_params, z, class_index):
        r = generator.h(g_params, z, (layer,))[layer]
        return hard_cell_shares(generator, g_params, segmenter, s_params, layer, class_index, downsample, r, z)
    return jax.jit(fn)


def layer_units(generator, g_params, layer):
    """U, the number of units of `layer`."""
    z = jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32)
    return jax.eval_shape(_featuremap_fn(generator, layer), g_params, z).shape[-1]


def top_sets(ranking, counts, n_units):
    """(len(counts), U) indicators of the first n units of `ranking` for each n of `counts`."""
    sets = np.zeros((len(counts), n_units), np.float32)
    for i, n in enumerate(counts):
        sets[i, np.asarray(ranking[:n], np.int64)] = 1.0
    return sets


def random_rankings(seed, draws, n_units):
    """`draws` random orders of the units; the top n of draw d is a random n-unit set."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n_units) for _ in range(draws)]


def class_pixels(generator, g_params, segmenter, s_params, layer, unit_sets, class_index, seed, samples,
                 batch_size, downsample=1):
    """(S,) total class pixels over samples [0, samples) of `seed` with each of `unit_sets` (S, U) ablated."""
    parallel.check_batch_size(batch_size)
    featuremap = _featuremap_fn(generator, layer)
    count = class_pixels_fn(generator, segmenter, layer, downsample)
    unit_sets = jnp.asarray(unit_sets, jnp.float32)
    totals = np.zeros(len(unit_sets), np.int64)
    progress = Progress(f"ablation ({len(unit_sets)} unit sets)", samples)
    for start in range(0, samples, batch_size):
        z = parallel.global_latents(seed, start, batch_size, generator.latent_size)
        valid = np.arange(start, start + batch_size) < samples
        r = featuremap(g_params, z)
        for i in range(len(unit_sets)):
            pixels = parallel.to_host(count(g_params, s_params, r, z, unit_sets[i], class_index))
            totals[i] += int(np.sum(pixels[valid]))
        progress.update(min(start + batch_size, samples))
    return totals


def present_cells(generator, g_params, segmenter, s_params, layer, class_index, seed, samples, batch_size,
                  downsample=1):
    """(sample (M,), cell (M,), share (M,)): each featuremap cell of samples [0, samples) of `seed` where
    the class covers any pixel, as a sample index, a flat cell index and the class's share of the cell."""
    parallel.check_batch_size(batch_size)
    shares_fn = all_cell_shares_fn(generator, segmenter, layer, downsample)
    shares = []
    progress = Progress("cells the class covers", samples)
    for start in range(0, samples, batch_size):
        z = parallel.global_latents(seed, start, batch_size, generator.latent_size)
        shares.append(parallel.to_host(shares_fn(g_params, s_params, z, class_index)))
        progress.update(min(start + batch_size, samples))
    shares = np.concatenate(shares)[:samples]
    sample, cell = np.nonzero(shares > 0)
    return sample, cell, shares[sample, cell]


def cell_shares(generator, g_params, segmenter, s_params, layer, unit_sets, class_index, seed, sample, cell,
                batch_size, downsample=1):
    """(S,) the class's share of cell `cell[i]` of sample `sample[i]`, summed over i, with each of
    `unit_sets` (S, U) ablated at that cell only (one image per cell and unit set)."""
    parallel.check_batch_size(batch_size)
    featuremap = _featuremap_fn(generator, layer)
    shares_fn = cell_shares_fn(generator, segmenter, layer, downsample)
    unit_sets = jnp.asarray(unit_sets, jnp.float32)
    totals = np.zeros(len(unit_sets), np.float64)
    progress = Progress(f"ablation, one cell at a time ({len(unit_sets)} unit sets)", len(sample), unit="cells")
    for start in range(0, len(sample), batch_size):
        stop = min(start + batch_size, len(sample))
        z = parallel.latents_at(seed, parallel.global_rows(sample, start, batch_size, -1), generator.latent_size)
        r = featuremap(g_params, z)
        cells = parallel.global_rows(cell, start, batch_size, 0)
        for i in range(len(unit_sets)):
            shares = parallel.to_host(shares_fn(g_params, s_params, r, z, cells, unit_sets[i], class_index))
            totals[i] += np.sum(shares[:stop - start], dtype=np.float64)
        progress.update(stop)
    return totals


def removed_fraction(before, after):
    """1 - after / before (0 when the class never appears)."""
    before = np.asarray(before, np.float64)
    return np.where(before > 0, 1.0 - np.asarray(after, np.float64) / np.maximum(before, 1), 0.0)


def removal_totals(generator, g_params, segmenter, s_params, layer, unit_sets, class_index, seed, samples,
                   batch_size, downsample=1, region="location"):
    """(before, after (S,), record): the class's total with nothing ablated and with each of `unit_sets`
    (S, U) ablated as `region` says (see the module's docstring), over samples [0, samples) of `seed`.

    Totals are pixels ('image') or summed cell shares ('location'); `record`
    names them for the JSON ('pixels_before', or 'present_cells' and
    'shares_before').
    """
    if region == "image":
        sets = np.concatenate([np.zeros((1, np.shape(unit_sets)[1]), np.float32), unit_sets])
        totals = class_pixels(generator, g_params, segmenter, s_params, layer, sets, class_index, seed, samples,
                              batch_size, downsample)
        return totals[0], totals[1:], {"pixels_before": int(totals[0])}
    if region == "location":     # before: the unedited shares present_cells reads
        sample, cell, share = present_cells(generator, g_params, segmenter, s_params, layer, class_index, seed,
                                            samples, batch_size, downsample)
        before = np.sum(share, dtype=np.float64)
        after = cell_shares(generator, g_params, segmenter, s_params, layer, unit_sets, class_index, seed, sample,
                            cell, batch_size, downsample)
        return before, after, {"present_cells": len(sample), "shares_before": float(before)}
    raise ValueError(f"unknown ablation region {region!r}")


def effect_ranking(generator, g_params, segmenter, s_params, layer, class_index, seed, samples, batch_size,
                   downsample=1, region="location"):
    """(ranking, effects (U,)): each unit ablated on its own, as `region` says, over samples [0, samples) of
    `seed`; `effects` is the share of the class each removes, `ranking` the units by it, most first, equal
    effects by unit index.

    A baseline between the dissection's IoU (no intervention) and the alpha
    search (units chosen jointly): the units that matter most one by one.
    """
    n_units = layer_units(generator, g_params, layer)
    before, after, _ = removal_totals(generator, g_params, segmenter, s_params, layer,
                                      np.eye(n_units, dtype=np.float32), class_index, seed, samples, batch_size,
                                      downsample, region)
    effects = removed_fraction(before, after)
    return np.lexsort((np.arange(n_units), -effects)).tolist(), effects


def ablation_curves(generator, g_params, segmenter, s_params, layer, class_index, rankings, counts,
                    random_draws, seed, samples, batch_size, downsample=1, region="location"):
    """Removed fraction for the top n of each ranking and of `random_draws` random rankings, ablated as
    `region` says (see the module's docstring).

    `rankings`: {name: units best first}. Returns {'region', 'counts',
    'curves': {name: [fraction per n]}, 'random': {'draws', 'mean', 'std'}},
    and the totals the fractions come from: 'pixels_before' and
    'pixels_after' {name: [per n]} (image), or 'present_cells',
    'shares_before' and 'shares_after' (location).
    """
    n_units = layer_units(generator, g_params, layer)
    randoms = random_rankings(seed, random_draws, n_units)
    sets = np.concatenate([np.zeros((0, n_units), np.float32)]
                          + [top_sets(r, counts, n_units) for r in list(rankings.values()) + randoms])
    before, after, record = removal_totals(generator, g_params, segmenter, s_params, layer, sets, class_index,
                                           seed, samples, batch_size, downsample, region)
    unit = "pixels" if region == "image" else "shares"
    after = after.reshape(-1, len(counts))
    fractions = removed_fraction(before, after)
    named = {name: fractions[i].tolist() for i, name in enumerate(rankings)}
    draws = fractions[len(rankings):]
    random = {"draws": draws.tolist(), "mean": draws.mean(axis=0).tolist() if random_draws else [],
              "std": draws.std(axis=0).tolist() if random_draws else []}
    return {"region": region, "counts": list(counts), **record,
            f"{unit}_after": {name: after[i].tolist() for i, name in enumerate(rankings)},
            "curves": named, "random": random}
