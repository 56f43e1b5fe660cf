"""Each unit's histogram bins: `cells` equal cells over its range [lo, hi], grouped into `bins` bins.

A table `cell_bin` (U, cells) gives the bin of every cell: non-decreasing,
starting at 0, every bin at least one cell. A bin's lower edge is the lower
edge of its first cell, so "act >= edge" is exactly "bin >= j" and every
threshold is an edge. With as many cells as bins and `cell_bin` the
identity, bins are equal-width (`equal_cell_bins`).

Equal-width bins lose the upper tail of heavy-tailed units: on the seeded
full-size ProGAN, 256 of them over [min, max] miss the tail fractions the
iqr rule searches (1e-3..1) by more than 5% on 24 of 512 units. The
dissection therefore places them (`tail_cell_bins`) from a calibration
histogram over CELLS cells: an edge at each of the iqr rule's default tail
fractions, the others evenly in a blend of value and log tail fraction (down
to TAIL_SMALLEST).
"""
import heapq

import jax.numpy as jnp
import numpy as np

# Cells of the calibration histogram and of the dissection's bin tables.
CELLS = 4096
# The smallest tail fraction the bin edges are placed for (ten times below the iqr rule's 1e-3).
TAIL_SMALLEST = 1e-4
# The iqr rule's default levels (100 tail fractions logspaced 1e-3..1: DissectSettings.iqr_levels and
# .iqr_smallest_fraction): each gets an edge of its own.
LEVEL_FRACTIONS = np.logspace(-3.0, 0.0, 100)
# Weight of the log tail fraction in the coordinate the bins split evenly (the rest: value).
TAIL_SHARE = 0.5


def smallest_uint(largest):
    """The narrowest unsigned integer dtype holding 0..largest."""
    return next(dtype for dtype in (np.uint8, np.uint16, np.uint32) if largest <= np.iinfo(dtype).max)


def equal_cell_bins(units, bins, cells=None):
    """(U, cells) table of equal-width bins (cells defaults to bins: the identity)."""
    cells = bins if cells is None else cells
    table = np.arange(cells, dtype=np.int64) * bins // cells
    return np.broadcast_to(table.astype(smallest_uint(bins - 1)), (units, cells)).copy()


def cell_index(acts, lo, hi, cells):
    """Cell of each activation among `cells` equal cells over [lo, hi]; `acts` is unit-major (U, ...),
    lo and hi (U,). Values outside fall in the end cells."""
    lo, hi = (jnp.reshape(v, v.shape + (1,) * (acts.ndim - 1)) for v in (lo, hi))
    width = jnp.where(hi > lo, (hi - lo) / cells, 1.0)
    return jnp.clip(jnp.floor((acts - lo) / width), 0, cells - 1).astype(jnp.int32)


def bin_index(acts, lo, hi, cell_bin):
    """Bin of each activation (U, ...) under the table `cell_bin` (U, cells), in its dtype."""
    units, cells = cell_bin.shape
    cell = cell_index(acts, lo, hi, cells)
    flat = jnp.take_along_axis(cell_bin, cell.reshape(units, -1), axis=1, mode="promise_in_bounds")
    return flat.reshape(cell.shape)


def threshold_values(lo, hi, cell_bin):
    """(U, bins + 1) float64: the lower edge of every bin, then hi (the threshold above every bin)."""
    lo, hi, cell_bin = np.asarray(lo, np.float64), np.asarray(hi, np.float64), np.asarray(cell_bin)
    units, cells = cell_bin.shape
    bins = int(cell_bin.max()) + 1
    width = np.where(hi > lo, (hi - lo) / cells, 1.0)
    first_cell = np.stack([np.searchsorted(cell_bin[u], np.arange(bins)) for u in range(units)])
    return np.concatenate([lo[:, None] + width[:, None] * first_cell, hi[:, None]], axis=1)


def tail_cell_bins(cell_counts, bins):
    """(U, cells) table placing `bins` bins from a calibration histogram `cell_counts` (U, cells).

    One edge sits at the cell nearest each of LEVEL_FRACTIONS (an evenly
    spread subset of them when they would take over half the bins); the other
    bins are equal steps of a coordinate that blends position in value
    (weight 1 - TAIL_SHARE) with log tail fraction down to TAIL_SMALLEST
    (weight TAIL_SHARE): fine where the tail thins, never coarse in value.
    Where edges coincide, the widest bins are split to keep `bins` bins.
    """
    cell_counts = np.asarray(cell_counts, np.float64)
    units, cells = cell_counts.shape
    if cells < bins:
        raise ValueError(f"{cells} cells cannot hold {bins} bins")
    levels = LEVEL_FRACTIONS[np.unique(np.linspace(0, len(LEVEL_FRACTIONS) - 1, min(len(LEVEL_FRACTIONS), bins // 2))
                                       .round().astype(int))]
    tail = np.cumsum(cell_counts[:, ::-1], axis=1)[:, ::-1] / np.maximum(cell_counts.sum(axis=1, keepdims=True), 1)
    log_tail = np.minimum(np.log(np.maximum(tail, TAIL_SMALLEST)) / np.log(TAIL_SMALLEST), 1.0)
    blend = (1 - TAIL_SHARE) * np.arange(cells) / cells + TAIL_SHARE * log_tail       # (U, cells), from 0
    steps = bins - len(levels)
    step = np.minimum(np.floor(blend * steps), steps - 1)
    table = np.empty((units, cells), smallest_uint(bins - 1))
    for u in range(units):
        starts = np.union1d(np.flatnonzero(np.diff(step[u], prepend=-1)), _nearest_tail_cells(tail[u], levels))
        starts = _split_widest(starts, cells, bins)
        table[u] = np.searchsorted(starts, np.arange(cells), side="right") - 1
    return table


def _nearest_tail_cells(tail, fractions):
    """For each fraction, the cell whose tail (share at or above it) is nearest in ratio."""
    below = np.minimum(np.searchsorted(-tail, -fractions, side="right"), len(tail) - 1)
    above = np.maximum(below - 1, 0)
    ratio = lambda cell: np.abs(np.log(np.maximum(tail[cell], 1e-300) / fractions))
    return np.where(ratio(below) < ratio(above), below, above)


def _split_widest(starts, cells, bins):
    """Sorted bin starts (0 first) grown to exactly `bins` by halving the widest bin, one at a time (of
    equally wide ones, the first)."""
    starts = [int(s) for s in np.unique(np.concatenate([[0], starts]))]
    widest_first = [(start - end, start) for start, end in zip(starts, starts[1:] + [cells])]
    heapq.heapify(widest_first)
    while len(starts) < bins:
        negative_width, start = heapq.heappop(widest_first)
        middle = start + (-negative_width) // 2
        heapq.heappush(widest_first, (start - middle, start))
        heapq.heappush(widest_first, (middle + negative_width - start, middle))
        starts.append(middle)
    return np.sort(starts)
