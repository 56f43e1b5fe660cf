"""Insertion in context: the same units switched on at one featuremap position at a time.

For a sample with featuremap r (H, W, U) at `layer` and each position p, the
image x_p = f(r with the units set to their values at p only). Its effect is
the class's pixels (and mean class score) in x_p minus those in the unedited
image. Grouping positions by what the unedited image shows there (the
"context": the most frequent label of channel 0 of the segmentation within
the position's cell) gives the paper's figure 8, where door units make doors
on buildings but not in the sky or on trees.

Positions are processed `chunk` at a time as one batch of edited featuremaps
(one row per position) sharded over the devices, so one compiled function
serves every sample and chunk and each device computes its share. With `capture`, the mean |change| of each later
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


def _run_from(generator, g_params, r, layer, z, capture):
    """(images, {later layer: featuremap}) from `layer`'s featuremaps `r` (k, H, W, U), all edits of the one
    sample of latent `z` (1, latent)."""
    z = jnp.broadcast_to(z, (r.shape[0], z.shape[1]))
    if capture:
        return generator.f(g_params, r, layer, z, capture=capture)
    return generator.f(g_params, r, layer, z), {}


def context_classes(labels, fm_size, n_classes):
    """(N, H, W) most frequent label of each featuremap cell, from (N, h, w) int labels."""
    shares = adaptive_avg_pool(jax.nn.one_hot(labels, n_classes, dtype=jnp.float32), fm_size)  # (N, H, W, C)
    return jnp.argmax(shares, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=None)
def _unedited_fn(generator, segmenter, layer, downsample, capture):
    """jit (g_params, s_params, z (1, latent), class_index) -> the unedited sample: its class pixels and mean
    class score, image, context, later featuremaps and their mean |activation| per channel."""
    n_classes = len(segmenter.labels)

    def fn(g_params, s_params, z, class_index):
        r = generator.h(g_params, z, (layer,))[layer]                              # (1, H, W, U)
        images, later = _run_from(generator, g_params, r, layer, z, capture)
        score, mask = segmenter.class_score(s_params, images, class_index, downsample)
        labels = segmenter.segment(s_params, images, downsample)[:, 0]
        return {"pixels_before": jnp.sum(mask, dtype=jnp.int32), "score": jnp.mean(score),
                "image_pixels": mask[0].size, "image": images[0],
                "context": context_classes(labels, r.shape[1:3], n_classes)[0], "later": later,
                "activation": {name: jnp.mean(jnp.abs(later[name][0]), axis=(0, 1)) for name in capture}}
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _edits_fn(generator, segmenter, layer, downsample, capture):
    """jit (g_params, s_params, z (1, latent), masks (k, H, W), alpha, value, class_index, unedited) -> the
    effects of the k edits of the sample (see `insertion_sweep`), each against `unedited` (`_unedited_fn`).

    The masks are sharded over the devices, so each computes the edits of its rows.
    """
    def fn(g_params, s_params, z, masks, alpha, value, class_index, unedited):
        r = generator.h(g_params, z, (layer,))[layer]                              # (1, H, W, U)
        images, later = _run_from(generator, g_params, insert(alpha, value, masks)(r), layer, z, capture)
        score, mask = segmenter.class_score(s_params, images, class_index, downsample)
        return {"pixels_added": jnp.sum(mask, axis=(1, 2), dtype=jnp.int32) - unedited["pixels_before"],
                "score_change": jnp.mean(score, axis=(1, 2)) - unedited["score"],
                "changes": {name: jnp.mean(jnp.abs(later[name] - unedited["later"][name]), axis=(1, 2))
                            for name in capture}}
    return jax.jit(fn)


def position_masks(start, chunk, height, width):
    """(chunk, H, W): row i is 1 at raster position start + i (all 0 past the last position)."""
    positions = np.arange(start, start + chunk)
    rows = np.zeros((chunk, height * width), np.float32)
    inside = positions < height * width
    rows[np.flatnonzero(inside), positions[inside]] = 1.0
    return rows.reshape(chunk, height, width)


def insertion_sweep(generator, g_params, segmenter, s_params, layer, units, value, class_index, seed, samples,
                    chunk=64, downsample=1, capture=()):
    """Inserts `units` (at `value`, (U,)) at every position of samples [0, samples) of `seed`, one at a time.

    Positions go `chunk` at a time (rounded up to a multiple of the device
    count) as one batch sharded over the devices; each process computes only
    its devices' rows. Returns numpy arrays: 'pixels_added' and
    'score_change' (N, H, W) (class pixels and mean class score of x_p minus
    the unedited image's), 'context' (N, H, W) labels, 'pixels_before' (N,),
    'image_pixels' (pixels of one segmentation), 'images' (N, R, R, 3)
    unedited; with `capture`, 'changes' {layer: (N, H, W, U_L)} mean |change|
    per channel and 'activation' {layer: (N, U_L)} the unedited mean
    |activation| per channel.
    """
    capture = tuple(capture)
    unedited_fn = _unedited_fn(generator, segmenter, layer, downsample, capture)
    edits_fn = _edits_fn(generator, segmenter, layer, downsample, capture)
    z_shape = jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32)
    height, width, n_units = jax.eval_shape(lambda z: generator.h(g_params, z, (layer,))[layer], z_shape).shape[1:]
    alpha, value = unit_indicator(units, n_units), jnp.asarray(value, jnp.float32)
    devices = parallel.batch_multiple()
    k = -(-min(chunk, height * width) // devices) * devices
    per_sample = []
    progress = Progress("insertion at every position", samples)
    for i in range(samples):
        z = jax.device_put(parallel.latents(seed, i, i + 1, generator.latent_size), parallel.replicated())
        unedited = unedited_fn(g_params, s_params, z, class_index)
        chunks = []
        for start in range(0, height * width, k):
            masks = parallel.global_batch((k, height, width), np.float32,
                                          lambda a, b, start=start: position_masks(start + a, b - a, height, width))
            edits = edits_fn(g_params, s_params, z, masks, alpha, value, class_index, unedited)
            chunks.append(jax.tree.map(parallel.to_host, edits))
        per_sample.append({**_join_chunks(chunks, height, width),
                           **jax.device_get({key: unedited[key] for key in
                                             ("pixels_before", "image_pixels", "image", "context", "activation")})})
        progress.update(i + 1)
    result = {key: np.stack([s[key] for s in per_sample])
              for key in ("pixels_added", "score_change", "context", "pixels_before")}
    result["images"] = np.stack([np.asarray(s["image"], np.float32) for s in per_sample])
    result["image_pixels"] = int(per_sample[0]["image_pixels"])
    if capture:
        result["changes"] = {name: np.stack([s["changes"][name] for s in per_sample]) for name in capture}
        result["activation"] = {name: np.stack([s["activation"][name] for s in per_sample]) for name in capture}
    return result


def _join_chunks(chunks, height, width):
    """One sample's chunk results as (H, W, ...) maps (padding rows dropped)."""
    grid = lambda parts: np.concatenate(parts)[:height * width].reshape(height, width, *parts[0].shape[1:])
    return {"pixels_added": grid([c["pixels_added"] for c in chunks]).astype(np.int64),
            "score_change": grid([c["score_change"] for c in chunks]),
            "changes": {name: grid([c["changes"][name] for c in chunks]) for name in chunks[0]["changes"]}}


@functools.lru_cache(maxsize=None)
def _inserted_image_fn(generator, layer):
    def fn(g_params, z, alpha, value, position):
        r = generator.h(g_params, z, (layer,))[layer]
        height, width = r.shape[1:3]
        mask = jax.nn.one_hot(position, height * width, dtype=jnp.float32).reshape(1, height, width)
        return generator.f(g_params, insert(alpha, value, mask)(r), layer, z)
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
