"""Turns collected statistics into unit labels, writes them, and reads them back.

Files in a dissection folder:
- `stats/LAYER.npz`: the raw streaming statistics (jaxdissect.stats) and the
  (unit, class) matrices of both threshold rules: `{rule}_{measure}` for rule
  in iqr, quantile and measure in iou, iqr, agreement, threshold,
  intersection, union.
- `dissect.json`: settings, label names, class pixel fractions, and per layer
  and unit its best label under the chosen rule with its figures.
"""
import dataclasses
import json
import os

import numpy as np

from jaxdissect import stats
from jaxdissect.dissection import measures
from jaxdissect.errors import UserError
from jaxdissect.io import files

RULES = ("iqr", "quantile")
# Settings that only change how the statistics are read (see `pipeline.relabel`).
READOUT_SETTINGS = ("rule", "quantile", "iqr_levels", "iqr_smallest_fraction", "iqr_min_agreement",
                    "min_iou", "min_agreement")
MEASURES = ("iou", "iqr", "agreement", "threshold", "intersection", "union")


def rule_matrices(joint_stats, settings):
    """{rule: {measure: (U, C) array}} for both threshold rules."""
    return {"iqr": measures.iqr_rule(joint_stats, settings.iqr_levels, settings.iqr_smallest_fraction,
                                     settings.iqr_min_agreement),
            "quantile": measures.quantile_rule(joint_stats, settings.quantile)}


def write_statistics(outdir, collected, settings):
    """Writes stats/LAYER.npz for every layer (raw statistics and both rules' matrices)."""
    os.makedirs(os.path.join(outdir, "stats"), exist_ok=True)
    for layer, (range_stats, joint_stats) in collected.items():
        arrays = {**range_stats._asdict(), **{f"bin_{k}" if k in ("lo", "hi") else k: v
                                              for k, v in joint_stats._asdict().items()}}
        for rule, matrices in rule_matrices(joint_stats, settings).items():
            arrays.update({f"{rule}_{m}": matrices[m] for m in MEASURES})
        files.save_npz(os.path.join(outdir, "stats", f"{layer}.npz"), arrays, compressed=True)


def read_statistics(outdir, layer):
    """(RangeStats, JointStats) of a layer from stats/LAYER.npz."""
    path = os.path.join(outdir, "stats", f"{layer}.npz")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no statistics for layer {layer!r}; run --mode=dissect first")
    with np.load(path) as data:
        return (stats.RangeStats(*(data[f] for f in stats.RangeStats._fields)),
                stats.JointStats(*(data[f"bin_{f}" if f in ("lo", "hi") else f] for f in stats.JointStats._fields)))


def summarize(collected, settings, label_names, categories):
    """The dissect.json content: per layer and unit, the best label under `settings.rule`."""
    layers = {}
    class_fraction = None
    for layer, (range_stats, joint_stats) in collected.items():
        rules = rule_matrices(joint_stats, settings)
        best = measures.best_labels(rules[settings.rule], settings.min_iou, settings.min_agreement)
        units = []
        for u in range(len(best["label"])):
            label = int(best["label"][u])
            units.append({
                "unit": u, "label": label_names[label], "category": categories[label],
                "iou": _num(best["iou"][u]), "iqr": _num(best["iqr"][u]),
                "agreement": _num(best["agreement"][u]), "threshold": _num(best["threshold"][u]),
                "interpretable": bool(best["interpretable"][u]),
                "top_samples": [int(i) for i in range_stats.top_index[:, u] if i >= 0],
                "top_peaks": [_num(v) for v in range_stats.top_value[:, u] if np.isfinite(v)],
            })
        counts = {}
        for unit in units:
            if unit["interpretable"]:
                counts.setdefault(unit["label"], {"category": unit["category"], "units": 0})["units"] += 1
        layers[layer] = {"units": len(units), "interpretable_units": sum(u["interpretable"] for u in units),
                         "labels": counts, "unit": units}
        class_fraction = np.asarray(joint_stats.class_pixels, np.float64) / max(int(joint_stats.pixels), 1)
    return {"settings": _jsonable(dataclasses.asdict(settings)),
            "labels": list(label_names), "categories": list(categories),
            "class_pixel_fraction": {label_names[c]: _num(class_fraction[c])
                                     for c in range(1, len(label_names))},
            "layers": layers}


def write_summary(outdir, summary):
    files.save_json(os.path.join(outdir, "dissect.json"), summary)


class Dissection:
    """A finished dissection read back from its folder, for analyses in code."""

    def __init__(self, outdir):
        path = os.path.join(outdir, "dissect.json")
        if not os.path.isfile(path):
            raise UserError(f"{outdir}: no dissect.json; run --mode=dissect first")
        with open(path) as f:
            self.summary = json.load(f)
        self.outdir = outdir
        self.labels = self.summary["labels"]
        self.categories = self.summary["categories"]
        self.rule = self.summary["settings"]["rule"]

    @property
    def layers(self):
        return list(self.summary["layers"])

    def settings(self):
        """The `DissectSettings` the dissection was run with."""
        from jaxdissect.dissection.engine import DissectSettings
        saved = dict(self.summary["settings"], layers=tuple(self.summary["settings"]["layers"]))
        return DissectSettings(**saved)

    def units(self, layer):
        """Per-unit summaries (label, iou, threshold, top samples ...) of a layer."""
        return self.summary["layers"][self._layer(layer)]["unit"]

    def class_index(self, name):
        if name not in self.labels:
            close = [n for n in self.labels if name.lower() in n.lower() or n.lower() in name.lower()]
            hint = f"; did you mean {', '.join(close[:5])}?" if close else ""
            raise UserError(f"unknown class {name!r}{hint} (known: {', '.join(self.labels[1:21])}"
                            f"{' ...' if len(self.labels) > 21 else ''})")
        return self.labels.index(name)

    def matrix(self, layer, measure, rule=None):
        """(U, C) matrix of `measure` (iou, iqr, agreement, threshold, ...) under `rule`."""
        with np.load(self._stats_path(layer)) as data:
            return data[f"{rule or self.rule}_{measure}"]

    def units_for(self, name, layer, rule=None):
        """Units of `layer` ranked by their IoU with class `name`, best first."""
        scores = self.matrix(layer, "iou", rule)[:, self.class_index(name)]
        return np.argsort(-scores, kind="stable")

    def mean_activation(self, layer):
        """(U, C) mean upsampled activation of each unit over the pixels of each class."""
        with np.load(self._stats_path(layer)) as data:
            return data["act_sum"] / np.maximum(data["class_pixels"], 1)[None, :]

    def _layer(self, layer):
        if layer not in self.summary["layers"]:
            raise UserError(f"layer {layer!r} was not dissected in {self.outdir}; "
                            f"dissected: {', '.join(self.layers)}")
        return layer

    def _stats_path(self, layer):
        path = os.path.join(self.outdir, "stats", f"{self._layer(layer)}.npz")
        if not os.path.isfile(path):
            raise UserError(f"{path}: missing; the dissection in {self.outdir} is incomplete")
        return path


def _num(x):
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _jsonable(d):
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
