"""Bin placement (jaxdissect.bins) against brute-force numpy on heavy-tailed activations."""
import jax.numpy as jnp
import numpy as np

from jaxdissect import bins, stats
from jaxdissect.dissection import engine, measures

CELLS, BINS = bins.CELLS, 256
FRACTIONS = measures.iqr_levels(100, 1e-3)


def heavy_tailed(seed, shape):
    """Mostly small values and a long upper tail (a lognormal: the top 1e-5 is ~80x the median)."""
    return np.random.default_rng(seed).lognormal(0.0, 1.0, shape).astype(np.float32)


def cell_counts(values, lo, hi, cells):
    """Brute-force histogram over `cells` equal cells of [lo, hi] (float32 arithmetic, ends clamped)."""
    width = np.float32((hi - lo) / cells)
    cell = np.clip(np.floor((values - np.float32(lo)) / width), 0, cells - 1).astype(int)
    return np.bincount(cell, minlength=cells)


def worst_tail_error(values, edges):
    """Max over FRACTIONS of |tail above the nearest edge / tail above the exact quantile - 1|."""
    ordered = np.sort(values.astype(np.float64))
    tail_above = lambda levels: 1.0 - np.searchsorted(ordered, levels, side="left") / len(ordered)
    edge_tails = tail_above(edges)
    exact = tail_above(np.quantile(ordered, 1.0 - FRACTIONS))
    nearest = np.argmin(np.abs(np.log(np.maximum(edge_tails, 1e-12))[None] - np.log(FRACTIONS)[:, None]), axis=1)
    return np.max(np.abs(edge_tails[nearest] / exact - 1.0))


def test_placed_bins_resolve_every_tail_fraction_that_equal_bins_miss():
    values = heavy_tailed(0, 200_000)
    lo, hi = float(values.min()), float(values.max())
    table = bins.tail_cell_bins(cell_counts(values, lo, hi, CELLS)[None], BINS)[0]
    assert table[0] == 0 and np.all(np.diff(table.astype(int)) >= 0)
    np.testing.assert_array_equal(np.unique(table), np.arange(BINS))                 # every bin used
    placed = bins.threshold_values([lo], [hi], table[None])[0, :-1]
    equal = bins.threshold_values([lo], [hi], bins.equal_cell_bins(1, BINS))[0, :-1]
    assert worst_tail_error(values, placed) < 0.05
    assert worst_tail_error(values, equal) > 0.1                                      # equal widths miss it


def test_histograms_with_placed_bins_equal_brute_force():
    """Streaming counts under a placed table are the brute-force counts of cell -> table[cell], and the
    threshold value of bin j counts exactly the activations at or above it."""
    acts = heavy_tailed(1, (6, 4, 4, 3))
    lo, hi = acts.min(axis=(0, 1, 2)), acts.max(axis=(0, 1, 2))
    table = np.stack([bins.tail_cell_bins(cell_counts(acts[..., u].ravel(), lo[u], hi[u], CELLS)[None], BINS)[0]
                      for u in range(3)])
    seg = np.random.default_rng(2).integers(0, 3, (6, 1, 8, 8)).astype(np.int32)
    state = stats.joint_init(lo, hi, 3, BINS, cell_bin=table)
    state = stats.joint_update(state, jnp.asarray(acts), jnp.asarray(seg), jnp.arange(6, dtype=jnp.int32),
                               jnp.zeros(3, jnp.int32))
    upsampled = np.asarray(stats.resize_bilinear_channel_major(jnp.asarray(acts), (8, 8)))   # (U, n, 8, 8)
    thresholds = bins.threshold_values(lo, hi, table)
    for u in range(3):
        width = np.float32((hi[u] - lo[u]) / CELLS)
        cell = np.clip(np.floor((upsampled[u] - lo[u]) / width), 0, CELLS - 1).astype(int)
        expected = np.bincount(table[u][cell].ravel(), minlength=BINS)
        np.testing.assert_array_equal(np.asarray(state.marginal[u]), expected)
        at_or_above = (upsampled[u].ravel()[:, None] >= thresholds[u, None, :-1]).sum(axis=0)
        np.testing.assert_array_equal(measures.suffix_counts(expected)[:-1], at_or_above)


def test_level_edges_are_the_iqr_rules_default_levels():
    defaults = engine.DissectSettings(layers=())
    np.testing.assert_allclose(bins.LEVEL_FRACTIONS,
                               measures.iqr_levels(defaults.iqr_levels, defaults.iqr_smallest_fraction), rtol=1e-12)
