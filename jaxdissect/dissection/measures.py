"""Unit-class measures computed from the streaming histograms (numpy, float64).

Notation for a unit u, a class c and a threshold t (a bin edge):
A = pixels with act >= t, S = pixels of class c, I = pixels of both,
N = all pixels. Then IoU = I / (A + S - I), agreement = (N - A - S + 2I) / N
(the fraction of pixels where "act >= t" and "is c" agree), and IQR is the
information quality ratio I(act>=t ; c) / H(act>=t, c) of that 2x2 joint
distribution.

Thresholds are bin edges of the histograms (see jaxdissect.stats), so every
count here is exact for the threshold reported. A quantile threshold is the
lowest edge with at most the requested fraction of pixels at or above it: its
true tail fraction is within one bin's mass of the requested one.
"""
import numpy as np

from jaxdissect import bins as _bins


def suffix_counts(hist):
    """counts[..., j] = sum of hist[..., j:], with a final 0 column for j = bins."""
    hist = np.asarray(hist, np.int64)
    tail = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([tail, np.zeros(hist.shape[:-1] + (1,), np.int64)], axis=-1)


def threshold_values(stats):
    """(U, bins + 1) threshold value of every bin index j of a JointStats (edge j; j = bins is hi)."""
    return _bins.threshold_values(stats.lo, stats.hi, stats.cell_bin)


def tail_bin(marginal_tail, total, fraction):
    """Lowest j with at most `fraction` of the pixels at or above edge j; (U, ...) for arrays of fractions."""
    fraction = np.asarray(fraction, np.float64)
    allowed = fraction[..., None] * total                                           # (..., 1)
    ok = marginal_tail[:, None, :] <= allowed[None]                                 # (U, F, B+1)
    return np.argmax(ok, axis=-1).reshape((marginal_tail.shape[0],) + fraction.shape)


def nearest_tail_bin(marginal_tail, total, fraction):
    """The edge j whose tail fraction (pixels at or above it) is nearest `fraction`: `tail_bin` or the
    edge below it. The nearest edge is the histogram's best estimate of the exact quantile."""
    upper = tail_bin(marginal_tail, total, fraction)
    lower = np.maximum(upper - 1, 0)
    units = marginal_tail.shape[0]
    tail = lambda j: np.take_along_axis(marginal_tail, j.reshape(units, -1), axis=1).reshape(j.shape) / total
    fraction = np.asarray(fraction, np.float64)
    return np.where(np.abs(tail(lower) - fraction) < np.abs(tail(upper) - fraction), lower, upper)


def nearest_edge(edges, levels):
    """(U,) index j of the edge in `edges` (U, B + 1) nearest each unit's value in `levels` (U,)."""
    upper = np.array([np.searchsorted(e, v) for e, v in zip(edges, levels)]).clip(0, edges.shape[1] - 1)
    lower = np.maximum(upper - 1, 0)
    gap = lambda j: np.abs(np.take_along_axis(edges, j[:, None], axis=1)[:, 0] - levels)
    return np.where(gap(lower) <= gap(upper), lower, upper)


def counts_at(stats, bins_index):
    """A (U, ...) and I (U, C, ...) at threshold bin indices `bins_index` (U, ...)."""
    marginal_tail = suffix_counts(stats.marginal)                                   # (U, B+1)
    joint_tail = suffix_counts(stats.joint)                                         # (U, C, B+1)
    flat = bins_index.reshape(bins_index.shape[0], -1)
    above = np.take_along_axis(marginal_tail, flat, axis=1).reshape(bins_index.shape)
    both = np.take_along_axis(joint_tail, flat[:, None, :].repeat(joint_tail.shape[1], 1), axis=2)
    return above, both.reshape(joint_tail.shape[:2] + bins_index.shape[1:])


def iou(both, above, class_pixels):
    union = above + class_pixels - both
    return np.where(union > 0, both / np.maximum(union, 1), 0.0)


def agreement(both, above, class_pixels, total):
    return (total - above - class_pixels + 2 * both) / total


def information_quality_ratio(both, above, class_pixels, total):
    """I(X;Y) / H(X,Y) for X = [act >= t], Y = [pixel is c], from counts (broadcasting)."""
    p11 = both / total
    p10 = (above - both) / total
    p01 = (class_pixels - both) / total
    return iqr_of_cells(p11, p10, p01, 1.0 - p11 - p10 - p01)


def iqr_of_cells(p11, p10, p01, p00, mutual_mask=True):
    """I(X;Y) / H(X,Y) of the 2x2 joint distribution with cells p[x][y] (broadcasting); 0 where H = 0.

    The marginals are the cells' row and column sums. The mutual information
    is clamped at 0 and zeroed where `mutual_mask` is False.
    """
    px = (p11 + p10, p01 + p00)
    py = (p11 + p01, p10 + p00)
    cells = ((p11, 0, 0), (p10, 0, 1), (p01, 1, 0), (p00, 1, 1))
    mutual = sum(_xlogy(p, p / np.maximum(px[i] * py[j], 1e-300)) for p, i, j in cells)
    mutual = np.where(mutual_mask, np.maximum(mutual, 0.0), 0.0)
    entropy = -sum(_xlogy(p, p) for p, _, _ in cells)
    return np.where(entropy > 0, mutual / np.maximum(entropy, 1e-300), 0.0)


def _xlogy(x, y):
    x = np.maximum(x, 0.0)
    return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


def quantile_rule(stats, quantile):
    """Per unit threshold at its top `quantile` (e.g. 0.99: top 1%), independent of the class."""
    total = int(stats.pixels)
    j = tail_bin(suffix_counts(stats.marginal), total, 1.0 - quantile)             # (U,)
    above, both = counts_at(stats, j)                                               # (U,), (U, C)
    s = np.asarray(stats.class_pixels, np.int64)[None, :]
    above = above[:, None]
    threshold = np.take_along_axis(threshold_values(stats), j[:, None], axis=1)
    return {"threshold": np.broadcast_to(threshold, both.shape).copy(),
            "intersection": both, "union": above + s - both,
            "iou": iou(both, above, s), "iqr": information_quality_ratio(both, above, s, total),
            "agreement": agreement(both, above, s, total)}


def iqr_levels(levels, smallest_fraction):
    """Tail fractions searched by the iqr rule: logspaced from `smallest_fraction` to 1."""
    return np.logspace(np.log10(smallest_fraction), 0.0, levels)


def iqr_rule(stats, levels=100, smallest_fraction=1e-3, min_agreement=0.8):
    """Per (unit, class) threshold maximising IQR over the unit's upper-tail levels.

    A level is eligible where its threshold is > 0 and the unit agrees with
    the class on more than `min_agreement` of the pixels; a (unit, class) with
    no eligible level gets IoU 0 and threshold NaN.
    """
    total = int(stats.pixels)
    j = tail_bin(suffix_counts(stats.marginal), total, iqr_levels(levels, smallest_fraction))  # (U, L)
    above, both = counts_at(stats, j)                                                # (U, L), (U, C, L)
    s = np.asarray(stats.class_pixels, np.int64)[None, :, None]
    above = above[:, None, :]
    value = np.take_along_axis(threshold_values(stats), j, axis=1)[:, None, :]       # (U, 1, L)
    ratio = information_quality_ratio(both, above, s, total)
    agree = agreement(both, above, s, total)
    eligible = (agree > min_agreement) & (value > 0)
    best = np.argmax(np.where(eligible, ratio, -np.inf), axis=-1)[..., None]        # (U, C, 1)
    found = np.take_along_axis(eligible, best, axis=-1)[..., 0]
    pick = lambda a: np.take_along_axis(np.broadcast_to(a, ratio.shape), best, axis=-1)[..., 0]
    union = pick(above + s - both)
    return {"threshold": np.where(found, pick(value), np.nan),
            "intersection": np.where(found, pick(both), 0), "union": np.where(found, union, 0),
            "iou": np.where(found, pick(iou(both, above, s)), 0.0),
            "iqr": np.where(found, pick(ratio), 0.0),
            "agreement": np.where(found, pick(agree), 0.0)}


def best_labels(rule, min_iou, min_agreement):
    """Each unit's best class, its figures, and whether it is interpretable.

    Class 0 ('-') is never a best class, but is what a unit with IoU 0 with
    every class gets.
    """
    scores = np.asarray(rule["iou"], np.float64).copy()
    scores[:, 0] = 0.0
    label = np.argmax(scores, axis=1)  # 0 where every class scores 0
    take = lambda key: np.take_along_axis(np.asarray(rule[key]), label[:, None], axis=1)[:, 0]
    best = {key: take(key) for key in ("iou", "iqr", "agreement", "threshold")}
    best["label"] = label
    best["interpretable"] = (best["iou"] > min_iou) & (best["agreement"] > min_agreement)
    return best
