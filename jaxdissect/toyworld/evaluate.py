"""How well a segmenter labels the toy world: per-class IoU and mIoU on fresh renders.

Evaluation renders come from their own key stream,
`fold_in(fold_in(PRNGKey(seed), EVAL_STREAM), batch index)`. Training draws
its batches from `fold_in(PRNGKey(train_seed), step)` and splits those keys,
so the two streams never share a key (even when seed == train_seed), and the
default EVAL_SEED differs from every training seed in use as well.

IoU of class c: pixels where prediction and label are both c, over pixels
where either is c, counted over all evaluated images together. The mIoU is
the mean over the world's classes 1..K-1 ('-' is never drawn).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import UserError
from jaxdissect.toyworld import world

EVAL_SEED = 20190101
EVAL_STREAM = 0x7E57  # folded into the seed's key: keeps evaluation keys off the training stream


def eval_batch_key(seed, index):
    """The key of evaluation batch `index` for `seed`."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_STREAM), index)


def intersection_union(predicted, labels, n_classes, weights):
    """Per-class (intersection, union) pixel counts, (n_classes,) int32 each.

    `predicted`, `labels`: (N, H, W) ints in [0, n_classes); `weights`: (N,)
    0/1, which images count.
    """
    pixel_weights = jnp.broadcast_to(weights[:, None, None], labels.shape).ravel().astype(jnp.int32)
    count = lambda values: jnp.bincount(values.ravel(), pixel_weights, length=n_classes)
    intersection = count(jnp.where(predicted == labels, labels, n_classes))  # n_classes: dropped
    return intersection, count(predicted) + count(labels) - intersection


_batch_counts = jax.jit(intersection_union, static_argnames="n_classes")


def segmenter_miou(segmenter, params, seed=EVAL_SEED, n=2000, batch_size=100, resolution=64):
    """Per-class IoU and mIoU of `segmenter.segment` against exact labels on `n` fresh renders.

    Returns {"iou": {class name: IoU (nan if the class was neither drawn nor
    predicted)}, "miou": mean over the classes with a defined IoU, "n", "seed",
    "resolution"}. Renders batches of `batch_size` (the last one partly counted).
    """
    if segmenter.labels != world.CLASS_NAMES:
        raise UserError(f"segmenter classes {segmenter.labels} are not the toy world's {world.CLASS_NAMES}")
    intersection = union = np.zeros(segmenter.num_classes, np.int64)
    for index, start in enumerate(range(0, n, batch_size)):
        images, labels = world.render(eval_batch_key(seed, index), batch_size, resolution)
        predicted = segmenter.segment(params, images)[:, 0]
        counted = np.arange(batch_size) < n - start
        i, u = _batch_counts(predicted, labels, segmenter.num_classes, counted)
        intersection, union = intersection + np.asarray(i), union + np.asarray(u)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection[1:] / union[1:]
    return {"iou": dict(zip(world.CLASS_NAMES[1:], iou.tolist())), "miou": float(np.nanmean(iou)),
            "n": n, "seed": seed, "resolution": resolution}
