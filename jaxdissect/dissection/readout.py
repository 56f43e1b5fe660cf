"""Unit labels read out of the streaming statistics, two ways (`--readout`).

`reference` (the default) reads them out as the original GAN Dissection
tool does (gandissect's dissection.py), so labels match its outputs and the
paper's figures on the same inputs:

- iqr rule: for every unit and class, the information quality ratio
  I/H of [act > level] vs [pixel is c] at the unit's upper-tail levels
  (fractions logspaced 1e-3..1 of the upsampled activations); 0 where the
  agreement is <= 0.8 or the level <= 0, at the last level (fraction 1), and
  for classes under 1e-3 of all pixels. The unit's label is the class of
  highest IQR; the unit gets ONE threshold, where that class's IQR peaks;
  every class's IoU and IQR are then counted at that one threshold.
- quantile rule: the unit's threshold is the top `quantile` of its RAW
  featuremap (cells before upsampling); the label is the class of highest
  IoU at it.
- Levels are the histogram edges nearest the requested tail fractions (the
  original estimates them with a randomised quantile sketch). For the
  quantile rule, a dissection run with `--original_sketch_seed` replays that
  sketch (jaxdissect.dissection.original_sketch) and its level's nearest
  edge is the threshold, as one original run under that seed has it.
- With several label categories, a class's "unit active" counts (and the
  pixel total of its 2x2 table) cover only the images that show the class's
  category (a part class is scored on images that show parts).
- interpretable: IQR > `min_iqr` (0.01) and IoU > `min_iou` (0.05) at the
  unit's threshold.

`paper` reads the paper's text literally (this project's first read-out):
every (unit, class) at its own threshold (the iqr rule's argmax of IQR, or
the unit's top quantile of its upsampled map), the label is the class of
highest IoU, and a unit is interpretable at IoU > `min_iou` and agreement >
`min_agreement` (0.75), over all images whatever the category.

Both return, per unit, the label, its IoU, IQR, agreement and threshold,
whether it is interpretable, and the runner-up class with its score (the
measure that picks labels: IQR for the reference iqr rule, IoU otherwise),
plus (unit, class) matrices of every measure (`own_level_iou`: each class's
IoU at its own best level, which only the reference iqr rule tells apart
from `iou`).
"""
import numpy as np

from jaxdissect.dissection import measures, original_sketch

READOUTS = ("reference", "paper")
MEASURES = ("iou", "iqr", "agreement", "threshold", "intersection", "union", "label_score", "own_level_iou")
# The original's IQR is 0 for classes under this fraction of all pixels (too few to trust).
RARE_CLASS_FRACTION = 1e-3


def read_units(layer_stats, settings, label_category):
    """(per-unit dict of (U,) arrays, {measure: (U, C) matrix}) of a layer's `stats.LayerStatistics` under
    `settings.readout` and `.rule`."""
    stats = layer_stats.joint
    if settings.readout == "paper":
        return _paper(stats, settings)
    if settings.rule == "iqr":
        return _reference_iqr(stats, settings, label_category)
    return _reference_quantile(stats, layer_stats.raw_sketch, settings, label_category)


def _paper(stats, settings):
    if settings.rule == "iqr":
        rule = measures.iqr_rule(stats, settings.iqr_levels, settings.iqr_smallest_fraction,
                                 settings.iqr_min_agreement)
    else:
        rule = measures.quantile_rule(stats, settings.quantile)
    matrices = {**rule, "label_score": rule["iou"], "own_level_iou": rule["iou"]}
    best = measures.best_labels(rule, settings.min_iou, settings.min_agreement)
    return {**best, **_runner_up(matrices["label_score"], best["label"])}, matrices


def _tails(stats):
    """Suffix counts (counts at or above each bin edge) of every histogram, and pixel totals."""
    return {"all": measures.suffix_counts(stats.marginal),                          # (U, B+1)
            "category": measures.suffix_counts(stats.category_marginal),            # (U, K, B+1)
            "class": measures.suffix_counts(stats.joint),                           # (U, C, B+1)
            "pixels": int(stats.pixels),
            "category_pixels": np.asarray(stats.category_pixels, np.int64),
            "class_pixels": np.asarray(stats.class_pixels, np.int64)}


def _at_bins(tail, bins):
    """tail (U, X, B+1) at bin indices `bins` (U, ...) -> (U, X, ...)."""
    flat = bins.reshape(bins.shape[0], 1, -1).repeat(tail.shape[1], axis=1)
    return np.take_along_axis(tail, flat, axis=2).reshape(tail.shape[:2] + bins.shape[1:])


def _reference_iqr(stats, settings, label_category):
    """The original's iqr rule: IQR at every level from per-category rates, then one threshold per unit."""
    tails = _tails(stats)
    fractions = measures.iqr_levels(settings.iqr_levels, settings.iqr_smallest_fraction)
    level_bins = measures.nearest_tail_bin(tails["all"], tails["pixels"], fractions)         # (U, L)
    level_values = np.take_along_axis(measures.threshold_values(stats), level_bins, axis=1)          # (U, L)
    total = tails["pixels"]
    truth = (tails["class_pixels"] / total)[None, :, None]                                   # (1, C, 1)
    above = _at_bins(tails["category"], level_bins)[:, label_category]                       # (U, C, L)
    predicted = above / tails["category_pixels"][label_category][None, :, None]
    both = _at_bins(tails["class"], level_bins) / total
    cells = [np.clip(c, 0.0, 1.0) for c in (both, predicted - both, truth - both, 1 - (truth + predicted - both))]
    ratio = measures.iqr_of_cells(*cells, mutual_mask=_trusted(truth, fractions))
    agreement = cells[0] + cells[3]
    ratio = np.where((agreement > settings.iqr_min_agreement) & (level_values[:, None, :] > 0), ratio, 0.0)
    best_level = np.argmax(ratio, axis=-1)                                                   # (U, C)
    at_best = lambda a: np.take_along_axis(a, best_level[..., None], axis=-1)[..., 0]
    max_iqr = at_best(ratio)
    label = np.argmax(max_iqr, axis=1)                                                       # (U,)
    unit_bin = level_bins[np.arange(len(label)), best_level[np.arange(len(label)), label]]
    units, matrices = _at_unit_threshold(stats, tails, unit_bin, label, max_iqr, label_category, settings)
    both_at_best = at_best(both)
    union_at_best = at_best(np.broadcast_to(truth, both.shape) + predicted) - both_at_best
    matrices["own_level_iou"] = both_at_best / (union_at_best + 1e-20)
    return units, matrices


def _trusted(truth, fractions):
    """Where the original keeps the mutual information: not at the last level (fraction 1, where the
    unit is 'active' everywhere) and not for classes under RARE_CLASS_FRACTION of the pixels."""
    not_last = np.arange(len(fractions)) < len(fractions) - 1
    return (truth >= RARE_CLASS_FRACTION) & not_last[None, None, :]


def _reference_quantile(stats, raw_sketch, settings, label_category):
    """The original's quantile rule: the top `quantile` of the raw featuremap (from the histogram, or
    from the replayed original sketch `raw_sketch` when there is one), then the best IoU there."""
    tails = _tails(stats)
    if raw_sketch is None:
        raw_tail = measures.suffix_counts(stats.raw_marginal)
        unit_bin = measures.nearest_tail_bin(raw_tail, int(stats.raw_cells), 1.0 - settings.quantile)  # (U,)
    else:
        levels = original_sketch.quantile(*raw_sketch, settings.quantile)
        unit_bin = measures.nearest_edge(measures.threshold_values(stats), levels)
    return _at_unit_threshold(stats, tails, unit_bin, None, None, label_category, settings)


def _at_unit_threshold(stats, tails, unit_bin, label, label_score, label_category, settings):
    """Every class counted at each unit's one threshold (bin `unit_bin`, (U,)), as the original's
    second pass does; `label` (U,) and `label_score` (U, C) given by the rule, else by IoU."""
    above = _at_bins(tails["category"], unit_bin[:, None])[:, label_category, 0]            # (U, C)
    total = tails["category_pixels"][label_category][None, :]                                 # (1, C)
    both = _at_bins(tails["class"], unit_bin[:, None])[..., 0]                               # (U, C)
    truth = tails["class_pixels"][None, :]
    union = above + truth - both
    iou = both / (union + 1e-20)
    cells = [c / total for c in (both, above - both, truth - both, total - union)]
    iqr = measures.iqr_of_cells(*cells)
    threshold = np.take_along_axis(measures.threshold_values(stats), unit_bin[:, None], axis=1)      # (U, 1)
    matrices = {"iou": iou, "iqr": iqr, "agreement": cells[0] + cells[3],
                "threshold": np.broadcast_to(threshold, iou.shape).copy(),
                "intersection": both, "union": union}
    matrices["label_score"] = iou if label_score is None else label_score
    matrices["own_level_iou"] = iou
    if label is None:
        label = np.argmax(iou, axis=1)
    pick = lambda m: np.take_along_axis(m, label[:, None], axis=1)[:, 0]
    best = {"label": label, "iou": pick(iou), "iqr": pick(iqr), "agreement": pick(matrices["agreement"]),
            "threshold": threshold[:, 0]}
    best["interpretable"] = (best["iqr"] > settings.min_iqr) & (best["iou"] > settings.min_iou)
    return {**best, **_runner_up(matrices["label_score"], label)}, matrices


def _runner_up(label_score, label):
    """The best class other than `label` (class 0, '-', excluded) and its score, per unit."""
    scores = np.asarray(label_score, np.float64).copy()
    scores[:, 0] = -np.inf
    scores[np.arange(len(label)), label] = -np.inf
    runner_up = np.argmax(scores, axis=1)
    return {"runner_up": runner_up, "runner_up_score": scores[np.arange(len(label)), runner_up]}
