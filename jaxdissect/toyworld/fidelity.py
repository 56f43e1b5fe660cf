"""How faithfully a generator reproduces the toy world, measured with the toy segmenter.

- Class pixel shares: the share of each class in the segmenter's maps of
  generated images beside its share in the maps of renders (both measured
  the same way, so the segmenter's own errors cancel).
- Fréchet distance between generated images and renders in the segmenter
  encoder's pooled feature space, beside the same distance between two
  independent sets of renders (the floor the sample size allows).
- Door context: the fraction of door pixels on a wall, i.e. whose nearest
  non-door pixel above them in their column is building.
"""
import numpy as np

import jax

from jaxdissect import parallel
from jaxdissect.causal.artifacts import frechet_distance, gaussian, pooled_features
from jaxdissect.toyworld import world
from jaxdissect.toyworld.evaluate import eval_batch_key

GENERATED_SEED = 31337


def door_context(labels, door=world.DOOR, building=world.BUILDING):
    """(door pixels whose nearest non-door pixel above is `building`, door pixels) in (N, H, W) maps."""
    labels = np.asarray(labels)
    above = np.zeros_like(labels)       # label of the nearest non-door pixel above, per pixel
    current = np.zeros(labels[:, 0].shape, labels.dtype)
    for y in range(labels.shape[1]):
        above[:, y] = current
        current = np.where(labels[:, y] != door, labels[:, y], current)
    doors = labels == door
    return int(np.sum(doors & (above == building))), int(np.sum(doors))


def _measure(segmenter, s_params, images_batches):
    """(class pixel counts (C,), pooled features (N, D), door context counts) over batches of images."""
    segment = jax.jit(lambda images: (segmenter.segment(s_params, images)[:, 0],
                                      pooled_features(segmenter, s_params, images)))
    counts = np.zeros(len(segmenter.labels), np.int64)
    features, on_wall, doors = [], 0, 0
    for images in images_batches:
        labels, pooled = segment(images)
        labels = np.asarray(labels)
        counts += np.bincount(labels.ravel(), minlength=len(counts))
        features.append(np.asarray(pooled))
        wall, total = door_context(labels)
        on_wall, doors = on_wall + wall, doors + total
    return counts, np.concatenate(features), (on_wall, doors)


def _renders(seed, n, batch_size):
    for b in range(n // batch_size):
        yield world.render(eval_batch_key(seed, b), batch_size)[0]


def _generated(generator, g_params, seed, n, batch_size):
    run = jax.jit(lambda z: generator(g_params, z)[0])
    for start in range(0, n - batch_size + 1, batch_size):
        yield run(parallel.latents(seed, start, start + batch_size, generator.latent_size))


def generator_fidelity(generator, g_params, segmenter, s_params, n=2000, batch_size=100, seed=GENERATED_SEED):
    """Every figure of the module docstring, on n generated images and 2 x n renders."""
    gen_counts, gen_features, gen_doors = _measure(segmenter, s_params,
                                                   _generated(generator, g_params, seed, n, batch_size))
    world_counts, world_features, world_doors = _measure(segmenter, s_params, _renders(seed, n, batch_size))
    _, other_features, _ = _measure(segmenter, s_params, _renders(seed + 1, n, batch_size))
    gen_share, world_share = gen_counts / gen_counts.sum(), world_counts / world_counts.sum()
    return {
        "classes": {name: {"generated_share": float(gen_share[c]), "world_share": float(world_share[c]),
                           "relative_difference": float(abs(gen_share[c] - world_share[c]) /
                                                        max(world_share[c], 1e-12))}
                    for c, name in enumerate(segmenter.labels) if c > 0},
        "frechet_generated_vs_world": frechet_distance(*gaussian(gen_features), *gaussian(world_features)),
        "frechet_world_vs_world": frechet_distance(*gaussian(other_features), *gaussian(world_features)),
        "door_context_generated": gen_doors[0] / max(gen_doors[1], 1),
        "door_context_world": world_doors[0] / max(world_doors[1], 1),
        "samples": n,
    }
