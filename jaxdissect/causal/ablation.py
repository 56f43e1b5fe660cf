"""Ablation curves: the share of a class's pixels removed by switching off the top-n units of a ranking.

For a unit set U, on held-out samples, with U ablated at every position (as
the reference did):

    removed(U) = 1 - (class pixels after) / (class pixels before)

pooled over the samples (sums of counts, not a mean of per-image ratios).
Curves compare the top-n units by alpha (the causal ranking), by IoU (the
dissection's ranking) and random units, for several n. A unit set is an
alpha indicator, so one compiled function serves every n and ranking.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.errors import UserError
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
    if batch_size % parallel.batch_multiple():
        raise UserError(f"batch size {batch_size} must be a multiple of the {parallel.batch_multiple()} devices")
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


def removed_fraction(before, after):
    """1 - after / before (0 when the class never appears)."""
    before = np.asarray(before, np.float64)
    return np.where(before > 0, 1.0 - np.asarray(after, np.float64) / np.maximum(before, 1), 0.0)


def ablation_curves(generator, g_params, segmenter, s_params, layer, class_index, rankings, counts,
                    random_draws, seed, samples, batch_size, downsample=1):
    """Removed fraction for the top n of each ranking and of `random_draws` random rankings.

    `rankings`: {name: units best first}. Returns {'counts', 'pixels_before',
    'curves': {name: [fraction per n]}, 'random': {'draws', 'mean', 'std'}}.
    """
    n_units = layer_units(generator, g_params, layer)
    randoms = random_rankings(seed, random_draws, n_units)
    sets = [np.zeros((1, n_units), np.float32)]                                    # nothing ablated
    sets += [top_sets(r, counts, n_units) for r in list(rankings.values()) + randoms]
    totals = class_pixels(generator, g_params, segmenter, s_params, layer, np.concatenate(sets), class_index,
                          seed, samples, batch_size, downsample)
    before, after = totals[0], totals[1:].reshape(-1, len(counts))
    fractions = removed_fraction(before, after)
    named = {name: fractions[i].tolist() for i, name in enumerate(rankings)}
    draws = fractions[len(rankings):]
    random = {"draws": draws.tolist(), "mean": draws.mean(axis=0).tolist() if random_draws else [],
              "std": draws.std(axis=0).tolist() if random_draws else []}
    return {"counts": list(counts), "pixels_before": int(before),
            "pixels_after": {name: after[i].tolist() for i, name in enumerate(rankings)},
            "curves": named, "random": random}
