"""Insertion in context: the same units switched on at one featuremap position at a time.

For a sample with featuremap r (H, W, U) at `layer` and each position p, the
image x_p = f(r with the units set to their values at p only). Its effect is
the class's pixels (and mean class score) in x_p minus those in the unedited
image. Grouping positions by what the unedited image shows there (the
"context": the most frequent label of channel 0 of the segmentation within
the position's cell) gives the paper's figure 8, where door units make doors
on buildings but not in the sky or on trees.

Positions are processed `chunk` at a time as one batch of edited featuremaps
(batch row i edits position i of the chunk), so one compiled function serves
every sample and chunk. With `capture`, the mean |change| of each later
layer's featuremap per channel is measured too (jaxdissect.causal.tracing).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.intervention import insert, unit_indicator
from jaxdissect.progress import Progress
from jaxdissect.segmentation.resample import adaptive_avg_pool


def _run_from(generator, g_params, r, layer, capture):
    """(images, {later layer: featuremap}) from `layer`'s featuremap `r`."""
    if capture:
        return generator.f(g_params, r, layer, capture=capture)
    return generator.f(g_params, r, layer), {}


def context_classes(labels, fm_size, n_classes):
    """(N, H, W) most frequent label of each featuremap cell, from (N, h, w) int labels."""
    shares = adaptive_avg_pool(jax.nn.one_hot(labels, n_classes, dtype=jnp.float32), fm_size)  # (N, H, W, C)
    return jnp.argmax(shares, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _baseline_fn(generator, segmenter, layer, downsample, capture):
    """jit (g_params, s_params, z, class_index) -> the unedited sample's featuremap, class pixels, score,
    per-cell context and later featuremaps."""
    n_classes = len(segmenter.labels)

    def fn(g_params, s_params, z, class_index):
        r = generator.h(g_params, z, (layer,))[layer]
        images, later = _run_from(generator, g_params, r, layer, capture)
        score, mask = segmenter.class_score(s_params, images, class_index, downsample)
        labels = segmenter.segment(s_params, images, downsample)[:, 0]
        return {"r": r, "images": images, "mask": mask, "pixels": jnp.sum(mask, axis=(1, 2), dtype=jnp.int32),
                "score": jnp.mean(score, axis=(1, 2)), "context": context_classes(labels, r.shape[1:3], n_classes),
                "later": later}
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _sweep_fn(generator, segmenter, layer, downsample, capture):
    """jit (g_params, s_params, r (1, H, W, U), masks (k, H, W), alpha, value, class_index, later) ->
    per edited row: class pixels, mean score, and per later layer the mean |change| per channel."""
    def fn(g_params, s_params, r, masks, alpha, value, class_index, baseline_later):
        edited = insert(alpha, value, masks)(r)                                    # (k, H, W, U)
        images, later = _run_from(generator, g_params, edited, layer, capture)
        score, mask = segmenter.class_score(s_params, images, class_index, downsample)
        changes = {name: jnp.mean(jnp.abs(later[name] - baseline_later[name]), axis=(1, 2)) for name in capture}
        return {"pixels": jnp.sum(mask, axis=(1, 2), dtype=jnp.int32), "score": jnp.mean(score, axis=(1, 2)),
                "changes": changes}
    return jax.jit(fn)


def position_masks(start, chunk, height, width):
    """(chunk, H, W): row i is 1 at raster position start + i (all 0 past the last position)."""
    positions = np.arange(start, start + chunk)
    positions = np.where(positions < height * width, positions, -1)
    return jax.nn.one_hot(positions, height * width, dtype=jnp.float32).reshape(chunk, height, width)


def insertion_sweep(generator, g_params, segmenter, s_params, layer, units, value, class_index, seed, samples,
                    chunk=64, downsample=1, capture=()):
    """Inserts `units` (at `value`, (U,)) at every position of samples [0, samples) of `seed`, one at a time.

    Returns numpy arrays: 'pixels_added' and 'score_change' (N, H, W) (class
    pixels and mean class score of x_p minus the unedited image's),
    'context' (N, H, W) labels, 'pixels_before' (N,), 'image_pixels' (pixels
    of one segmentation), 'images' (N, R, R, 3) unedited; with `capture`,
    'changes' {layer: (N, H, W, U_L)} mean |change| per channel and
    'activation' {layer: (N, U_L)} the unedited mean |activation| per channel.
    """
    capture = tuple(capture)
    baseline = _baseline_fn(generator, segmenter, layer, downsample, capture)
    sweep = _sweep_fn(generator, segmenter, layer, downsample, capture)
    out = {key: [] for key in ("pixels_added", "score_change", "context", "pixels_before", "images")}
    changes = {name: [] for name in capture}
    activation = {name: [] for name in capture}
    progress = Progress("insertion at every position", samples)
    for i in range(samples):
        base = baseline(g_params, s_params, parallel.latents(seed, i, i + 1, generator.latent_size), class_index)
        _, height, width, n_units = base["r"].shape
        alpha = unit_indicator(units, n_units)
        rows = {"pixels": [], "score": [], **{name: [] for name in capture}}
        k = min(chunk, height * width)
        for start in range(0, height * width, k):
            result = sweep(g_params, s_params, base["r"], position_masks(start, k, height, width), alpha,
                           jnp.asarray(value, jnp.float32), class_index, base["later"])
            rows["pixels"].append(np.asarray(result["pixels"]))
            rows["score"].append(np.asarray(result["score"]))
            for name in capture:
                rows[name].append(np.asarray(result["changes"][name]))
        grid = lambda parts: np.concatenate(parts)[:height * width].reshape(height, width, *parts[0].shape[1:])
        out["pixels_added"].append(grid(rows["pixels"]).astype(np.int64) - int(base["pixels"][0]))
        out["score_change"].append(grid(rows["score"]) - float(base["score"][0]))
        out["context"].append(np.asarray(base["context"][0]))
        out["pixels_before"].append(int(base["pixels"][0]))
        out["images"].append(np.asarray(base["images"][0], np.float32))
        for name in capture:
            changes[name].append(grid(rows[name]))
            activation[name].append(np.mean(np.abs(np.asarray(base["later"][name][0], np.float64)), axis=(0, 1)))
        progress.update(i + 1)
    result = {key: np.stack(values) for key, values in out.items()}
    result["image_pixels"] = int(base["mask"].shape[1] * base["mask"].shape[2])
    if capture:
        result["changes"] = {name: np.stack(v) for name, v in changes.items()}
        result["activation"] = {name: np.stack(v) for name, v in activation.items()}
    return result


@functools.lru_cache(maxsize=None)
def _inserted_image_fn(generator, layer):
    def fn(g_params, z, alpha, value, position):
        r = generator.h(g_params, z, (layer,))[layer]
        height, width = r.shape[1:3]
        mask = jax.nn.one_hot(position, height * width, dtype=jnp.float32).reshape(1, height, width)
        return generator.f(g_params, insert(alpha, value, mask)(r), layer)
    return jax.jit(fn)


def inserted_image(generator, g_params, layer, units, value, seed, index, position):
    """(R, R, 3) image of sample `index` of `seed` with `units` inserted at raster position `position` only."""
    z = parallel.latents(seed, index, index + 1, generator.latent_size)
    alpha = unit_indicator(units, len(value))
    return np.asarray(_inserted_image_fn(generator, layer)(g_params, z, alpha, jnp.asarray(value, jnp.float32),
                                                           position)[0])


def effect_by_context(pixels_added, score_change, context, labels):
    """Mean effect of an insertion grouped by the context class at the inserted position, largest first.

    Returns [{'class', 'positions', 'mean_pixels_added', 'mean_score_change'}].
    """
    groups = []
    for c in np.unique(context):
        where = context == c
        groups.append({"class": labels[int(c)], "positions": int(where.sum()),
                       "mean_pixels_added": float(pixels_added[where].mean()),
                       "mean_score_change": float(score_change[where].mean())})
    return sorted(groups, key=lambda g: -g["mean_pixels_added"])
