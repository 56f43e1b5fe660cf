"""Streaming statistics of unit activations: fixed-shape pytree states updated by
jitted, batch-sharded reductions.

Two states cover everything dissection needs:

* `RangeStats` (featuremaps only): each unit's min and max and its top-k
  samples by peak activation.
* `JointStats` (featuremaps, upsampled to the segmentation inside, and the
  segmentation): for every unit, a histogram of its activation over `bins`
  bins of a fixed range [lo, hi] (values outside fall in the end bins; the
  bins are groups of equal cells, see jaxdissect.bins), over all pixels
  (`marginal`), over the pixels of each class
  (`joint`) and over the pixels of the images showing each label category
  (`category_marginal`, the original tool's per-category counting); a
  histogram of the raw featuremap values before upsampling (`raw_marginal`,
  for the original's quantile rule); per-class and per-category pixel counts;
  per (unit, class) activation sums.

A third, `cell_counts`, is the calibration's histogram over the cells that
places the bins.

Every threshold the method needs is a bin edge in [lo, hi], and "act >= edge"
is exactly "bin >= j", so counts at every threshold follow exactly from
suffix sums of the histograms, whatever the sample count; memory is
O(units * classes * bins). Updates run under `shard_map` over the
mesh's batch axis: each device reduces its own rows, then a psum / pmax /
all-gather combines them, so 1 or 8 devices give identical integer counts.
"""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxdissect import bins as _bins
from jaxdissect import parallel
from jaxdissect.segmentation.resample import resize_bilinear_channel_major, resize_bilinear_transpose


class RangeStats(NamedTuple):
    minimum: jax.Array      # (U,) float32
    maximum: jax.Array      # (U,)
    top_value: jax.Array    # (k, U) peak activations, best first
    top_index: jax.Array    # (k, U) int32 global sample indices (-1: none yet)


class JointStats(NamedTuple):
    lo: jax.Array           # (U,) float32: lower end of the binned range
    hi: jax.Array           # (U,) upper end
    cell_bin: jax.Array     # (U, cells) uint: the bin of each of `cells` equal cells of [lo, hi]
    joint: jax.Array        # (U, C, B) int32: pixels of class c with act in bin b
    marginal: jax.Array     # (U, B) int32: pixels with act in bin b
    class_pixels: jax.Array  # (C,) int32: pixels carrying class c (any label channel)
    act_sum: jax.Array      # (U, C) float32: sum of act over pixels of class c
    pixels: jax.Array       # () int32: pixels seen
    category_marginal: jax.Array  # (U, K, B) int32: pixels of images showing category k with act in bin b
    category_pixels: jax.Array    # (K,) int32: pixels of images showing category k
    raw_marginal: jax.Array  # (U, B) int32: featuremap cells (before upsampling) with act in bin b
    raw_cells: jax.Array     # () int32: featuremap cells seen


class LayerStatistics(NamedTuple):
    """Everything a dissection collects about one layer (as numpy once collected)."""
    range: RangeStats
    joint: JointStats
    # The replayed original quantile sketch of the raw featuremap (--original_sketch_seed), as its
    # summary (values (U, M), weights (M,)), or None (jaxdissect.dissection.original_sketch).
    raw_sketch: tuple = None


def range_init(units, top_k):
    return RangeStats(jnp.full((units,), jnp.inf), jnp.full((units,), -jnp.inf),
                      jnp.full((top_k, units), -jnp.inf), jnp.full((top_k, units), -1, jnp.int32))


def joint_init(lo, hi, classes, bins, categories=1, cell_bin=None):
    """Empty histograms over `bins` bins of [lo, hi] (per unit), for `classes` classes in
    `categories` label categories; `cell_bin` (U, cells) places the bins (default: equal widths).

    lo and hi are copied: updates donate the state's buffers.
    """
    lo, hi = jnp.array(lo, jnp.float32, copy=True), jnp.array(hi, jnp.float32, copy=True)
    units = lo.shape[0]
    cell_bin = _bins.equal_cell_bins(units, bins) if cell_bin is None else cell_bin
    if categories > MAX_CATEGORIES:
        raise ValueError(f"{categories} label categories; at most {MAX_CATEGORIES} are supported")
    return JointStats(lo, hi, jnp.array(cell_bin, copy=True), jnp.zeros((units, classes, bins), jnp.int32),
                      jnp.zeros((units, bins), jnp.int32),
                      jnp.zeros((classes,), jnp.int32), jnp.zeros((units, classes), jnp.float32),
                      jnp.zeros((), jnp.int32), jnp.zeros((units, categories, bins), jnp.int32),
                      jnp.zeros((categories,), jnp.int32), jnp.zeros((units, bins), jnp.int32),
                      jnp.zeros((), jnp.int32))


# Images are told apart by the set of label categories they show (one histogram block per set), so the
# number of categories is bounded: 2 ** MAX_CATEGORIES blocks at most.
MAX_CATEGORIES = 6


def distinct_labels(seg):
    """(N, K, h, w) label channels -> (N, h, w, K) with repeats of a label at a pixel set to 0.

    A pixel can carry the same class in two channels (e.g. a door both as an
    object and as a building part); it must count once.
    """
    seg = jnp.moveaxis(seg, 1, -1)
    keep = [seg[..., 0]]
    for k in range(1, seg.shape[-1]):
        repeat = jnp.any(seg[..., k:k + 1] == seg[..., :k], axis=-1)
        keep.append(jnp.where(repeat, 0, seg[..., k]))
    return jnp.stack(keep, axis=-1)


def _range_increment(state, acts, sample_index):
    """Local (per-device) pass-1 reduction, combined across the batch axis.

    Rows with sample_index < 0 are padding and are ignored.
    """
    valid = (sample_index >= 0)[:, None, None]
    flat = acts.astype(jnp.float32).reshape(acts.shape[0], -1, acts.shape[-1])
    minimum = jax.lax.pmin(jnp.minimum(state.minimum, jnp.where(valid, flat, jnp.inf).min(axis=(0, 1))),
                           parallel.BATCH)
    maximum = jax.lax.pmax(jnp.maximum(state.maximum, jnp.where(valid, flat, -jnp.inf).max(axis=(0, 1))),
                           parallel.BATCH)
    peak = jnp.where(valid[:, 0], flat.max(axis=1), -jnp.inf)
    peak = jax.lax.all_gather(peak, parallel.BATCH, tiled=True)                    # (N, U), sample order
    index = jax.lax.all_gather(sample_index, parallel.BATCH, tiled=True)          # (N,)
    values = jnp.concatenate([state.top_value, peak], axis=0)                     # earlier samples first
    indices = jnp.concatenate([state.top_index, jnp.broadcast_to(index[:, None], peak.shape)], axis=0)
    k = state.top_value.shape[0]
    top_value, order = jax.lax.top_k(values.T, k)                                 # ties: lower position first
    top_index = jnp.take_along_axis(indices.T, order, axis=1)
    return RangeStats(minimum, maximum, top_value.T, top_index.T)


# Entries per scatter-add. A batch is histogrammed a chunk of samples at a time, so that a chunk's bin
# indices are still in cache when they are counted (twice as fast on CPU as one batch-wide scatter).
SCATTER_CHUNK_ENTRIES = 2 ** 20


def _chunk_rows(rows, entries_per_row):
    """The largest divisor of `rows` whose chunk has at most SCATTER_CHUNK_ENTRIES entries (at least 1)."""
    limit = max(SCATTER_CHUNK_ENTRIES // entries_per_row, 1)
    return max(d for d in range(1, rows + 1) if rows % d == 0 and d <= limit)


def _count_binned(featuremap, offset, set_offset, to_bin, bins, slots):
    """Counts of (unit, slot, bin) over a batch, as a flat (U * slots * bins + 1,) int32 vector.

    The featuremap (n, H, W, U) is upsampled (bilinear) to the size of
    `offset` (n, h, w, K) and binned by `to_bin` (unit-major activations
    (U, ...) into an unsigned dtype that holds 0..bins-1); `offset` holds
    slot * bins for each pixel and label channel, or -1 where nothing must
    count; those entries go to the extra last position. `set_offset` (n,)
    adds one more entry per pixel of a sample, at its slot * bins, where it
    is >= 0.

    The bins of the whole batch are computed first, in one fused loop, in
    the narrowest integer type (for 256 bins a quarter of the memory traffic
    of int32); a scan then counts them a chunk of samples at a time.
    Everything is unit-major: each unit's bin table is read, and its block
    of counts written, by one long run of its own pixels, so both stay in
    cache (on CPU a fifth faster than pixel-major). A chunk without any
    `set_offset` skips that entry (its scatter is one entry per pixel and
    channel shorter).
    """
    n, _, _, units = featuremap.shape
    size, channels = offset.shape[1:3], offset.shape[3]
    unused = units * slots * bins
    unit_offset = (jnp.arange(units, dtype=jnp.int32) * (slots * bins))[:, None, None, None, None]
    rows = _chunk_rows(n, size[0] * size[1] * units * (channels + 1))

    def chunk_bins(maps):                                                          # (r, H, W, U) -> (U, r, h, w)
        return to_bin(resize_bilinear_channel_major(maps, size))

    def scatter(counts, b, offsets):                                  # b (U, r, h, w), offsets (r, h, w, K)
        index = jnp.where(offsets >= 0, unit_offset + offsets + b[..., None].astype(jnp.int32), unused)
        return counts.at[index.reshape(-1)].add(1, mode="promise_in_bounds")

    def add_chunk(counts, chunk):
        b, offsets, sets = chunk
        with_sets = jnp.concatenate([offsets, jnp.broadcast_to(sets[:, None, None, None], offsets.shape[:3] + (1,))],
                                    axis=-1)
        return jax.lax.cond(jnp.any(sets >= 0), lambda c: scatter(c, b, with_sets), lambda c: scatter(c, b, offsets),
                            counts), None

    chunks = (jax.vmap(chunk_bins)(featuremap.reshape((n // rows, rows) + featuremap.shape[1:])),
              offset.reshape((n // rows, rows) + offset.shape[1:]), set_offset.reshape(n // rows, rows))
    counts, _ = jax.lax.scan(add_chunk, jnp.zeros(unused + 1, jnp.int32), chunks)
    return counts


def _class_counts(labels, counted, classes):
    """(n, C) int32 pixels of each class in each sample (label 0 included, from channel 0)."""
    sample = jnp.broadcast_to(jnp.arange(labels.shape[0])[:, None, None, None], labels.shape)
    return jnp.zeros((labels.shape[0], classes), jnp.int32).at[sample, labels].add(counted.astype(jnp.int32))


def category_sets(categories):
    """(2**K, K) 0/1 int32: whether category k belongs to category set s (bit k of s)."""
    sets = np.arange(2 ** categories)[:, None]
    return jnp.asarray((sets >> np.arange(categories)[None, :]) & 1, jnp.int32)


def _shown_category_set(class_counts, label_category, categories):
    """(n,) int32: the set of label categories each sample shows, as bits (bit k: category k)."""
    shown = (class_counts > 0).astype(jnp.int32) @ jax.nn.one_hot(label_category, categories, dtype=jnp.int32)
    return jnp.sum(jnp.minimum(shown, 1) << jnp.arange(categories, dtype=jnp.int32), axis=1)


def _unit_histogram(featuremap, valid, to_bin, bins, size):
    """(U, bins) int32 histogram of each unit's activations, the featuremap (n, H, W, U) upsampled to
    `size` (its own size: the raw cells), rows with `valid` False skipped."""
    n, units = featuremap.shape[0], featuremap.shape[-1]
    offset = jnp.broadcast_to(jnp.where(valid, 0, -1)[:, None, None, None], (n,) + tuple(size) + (1,))
    counts = _count_binned(featuremap, offset, jnp.full(n, -1), to_bin, bins, 1)
    return counts[:-1].reshape(units, bins)


def _joint_increment(state, featuremap, seg, sample_index, label_category):
    """Local histograms of a featuremap (n, H, W, U), upsampled (bilinear) to the labels' size, against
    the labels (n, K, h, w); `label_category` (C,) is each class's category number.

    Rows with sample_index < 0 are padding and count zero. Label 0 means "no
    label": its joint, class_pixels and act_sum entries stay 0 (but, like
    any class, it shows its category: the original tool counts it so).

    One scatter of constant ones does all the upsampled counting. Label
    channel 0 labels every pixel exactly once (0 included), so its counts,
    summed over classes, are the marginal histogram; the other channels are
    scattered into a second block of class slots and added to the joint
    afterwards. With several label categories, every pixel of an image that
    does not show them all also counts once in the block of its image's
    category set; the images showing every category are the rest of the
    marginal; the histograms of the images showing each category follow.

    The per-class activation sums use sum(up(r) * onehot) = sum(r * up^T(onehot)):
    the class maps are pulled back to the featuremap's resolution (the
    transpose of the upsampling) instead of contracting every upsampled pixel.
    All counts are integer sums, exact whatever the batch size.
    """
    units, classes, bins = state.joint.shape
    categories = state.category_pixels.shape[0]
    featuremap = featuremap.astype(jnp.float32)
    labels = distinct_labels(seg)                                                  # (n, h, w, K)
    valid = sample_index >= 0                                                      # (n,)
    channels = labels.shape[-1]
    image_pixels = labels.shape[1] * labels.shape[2]
    class_blocks = min(channels, 2)
    slot = labels + classes * jnp.minimum(jnp.arange(channels), 1)                 # channel >= 1: 2nd block
    counted = valid[:, None, None, None] & jnp.concatenate(
        [jnp.ones_like(labels[..., :1], bool), labels[..., 1:] > 0], axis=-1)
    offset = jnp.where(counted, slot * bins, -1)
    class_counts = _class_counts(labels, counted, classes)                        # (n, C)
    shown_set = _shown_category_set(class_counts, label_category, categories)     # (n,)
    slots = classes * class_blocks
    set_offset = jnp.full(labels.shape[0], -1, jnp.int32)
    if categories > 1:
        # Samples showing every category count in the extra slots of their category set; those of the
        # full set are the rest (the marginal minus the others), so most samples add no entry.
        full_set = 2 ** categories - 1
        set_offset = jnp.where(valid & (shown_set != full_set), (slots + shown_set) * bins, -1)
        slots += full_set
        order = jnp.argsort(set_offset < 0, stable=True)         # samples with a set entry first: fewer chunks
        featuremap_rows, offset, set_offset = featuremap[order], offset[order], set_offset[order]
    else:
        featuremap_rows = featuremap
    to_bin = functools.partial(_bins.bin_index, lo=state.lo, hi=state.hi, cell_bin=state.cell_bin)
    blocks = _count_binned(featuremap_rows, offset, set_offset, to_bin, bins, slots)
    blocks = blocks[:-1].reshape(units, slots, bins)
    per_class = blocks[:, :classes * class_blocks].reshape(units, class_blocks, classes, bins)
    marginal = per_class[:, 0].sum(axis=1)                                         # channel 0 over classes
    joint = per_class.sum(axis=1).at[:, 0].set(0)
    pixels = jnp.sum(valid) * image_pixels
    if categories > 1:
        partial_sets = blocks[:, classes * class_blocks:]                          # (U, 2**K - 1, B)
        by_set = jnp.concatenate([partial_sets, (marginal - partial_sets.sum(axis=1))[:, None]], axis=1)
        sets = category_sets(categories)                                           # (2**K, K)
        category_marginal = jnp.einsum("usb,sk->ukb", by_set, sets)
        category_pixels = jnp.sum(valid[:, None] * sets[shown_set], axis=0) * image_pixels
    else:
        category_marginal, category_pixels = marginal[:, None, :], pixels[None]
    labelled = counted * (labels > 0)
    onehot = jnp.sum(jax.nn.one_hot(labels, classes, dtype=jnp.float32) * labelled[..., None], axis=-2)
    class_weights = resize_bilinear_transpose(onehot, featuremap.shape[1:3])      # (n, H, W, C)
    act_sum = jnp.einsum("nhwu,nhwc->uc", featuremap, class_weights, precision=jax.lax.Precision.HIGHEST)
    raw = _unit_histogram(featuremap, valid, to_bin, bins, featuremap.shape[1:3])
    counts = (joint, marginal, class_counts.sum(axis=0).at[0].set(0), act_sum, pixels, category_marginal,
              category_pixels, raw, jnp.sum(valid) * featuremap.shape[1] * featuremap.shape[2])
    counts = jax.lax.psum(counts, parallel.BATCH)
    totals = jax.tree.map(jnp.add, tuple(state)[3:], counts)
    return JointStats(state.lo, state.hi, state.cell_bin, *totals)


def _cell_increment(cell_counts, featuremap, sample_index, lo, hi, size):
    """Local (U, cells) histogram of the featuremap (n, H, W, U) upsampled to `size`, over the equal
    cells of [lo, hi]; rows with sample_index < 0 are padding."""
    cells = cell_counts.shape[1]
    to_cell = lambda maps: _bins.cell_index(maps, lo, hi, cells).astype(_bins.smallest_uint(cells - 1))
    counts = _unit_histogram(featuremap.astype(jnp.float32), sample_index >= 0, to_cell, cells, size)
    return cell_counts + jax.lax.psum(counts, parallel.BATCH)


@functools.lru_cache(maxsize=None)
def _sharded(fn, batch_args):
    """jit(shard_map(fn)): the state (first arg) replicated, the next `batch_args` batch-sharded."""
    def specs(args):
        return (P(),) + (P(parallel.BATCH),) * batch_args + (P(),) * (args - 1 - batch_args)
    nargs = fn.__code__.co_argcount
    mapped = jax.shard_map(fn, mesh=parallel.batch_mesh(), in_specs=specs(nargs), out_specs=P(),
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=0)


def range_update(state, acts, sample_index):
    """Folds a batch of featuremaps (N, H, W, U) of samples `sample_index` (N,) into `state`."""
    return _sharded(_range_increment, 2)(state, acts, sample_index)


def cell_update(cell_counts, featuremap, sample_index, lo, hi, size):
    """Folds featuremaps (N, H, W, U), upsampled to `size` (h, w), into the (U, cells) calibration
    histogram over the equal cells of [lo, hi]."""
    return _cell_update_fn(tuple(size))(cell_counts, featuremap, sample_index, lo, hi)


@functools.lru_cache(maxsize=None)
def _cell_update_fn(size):
    def increment(cell_counts, featuremap, sample_index, lo, hi):
        return _cell_increment(cell_counts, featuremap, sample_index, lo, hi, size)
    return _sharded(increment, 2)


def joint_update(state, featuremap, seg, sample_index, label_category):
    """Folds featuremaps (N, H, W, U), upsampled to the segmentations (N, K, h, w), into `state`;
    `label_category` (C,) int32 is the category number of each class."""
    return _sharded(_joint_increment, 3)(state, featuremap, seg, sample_index, label_category)
