"""Turns collected statistics into unit labels, writes them, and reads them back.

Files in a dissection folder:
- `stats/LAYER.npz`: the raw streaming statistics (jaxdissect.stats) and the
  (unit, class) matrices of both read-outs and both threshold rules:
  `{readout}_{rule}_{measure}` for readout in reference, paper, rule in iqr,
  quantile and measure in iou, iqr, agreement, threshold, intersection,
  union, label_score (the measure that picks labels).
- `dissect.json`: settings (the read-out among them), label names and
  categories, class pixel fractions, and per layer and unit its label under
  the chosen read-out and rule with its figures and the runner-up label.
"""
import dataclasses
import json
import os

import numpy as np

from jaxdissect import stats
from jaxdissect.dissection import readout, sources
from jaxdissect.errors import UserError
from jaxdissect.io import files

RULES = ("iqr", "quantile")
# Settings that only change how the statistics are read (see `pipeline.relabel`).
READOUT_SETTINGS = ("readout", "rule", "quantile", "iqr_levels", "iqr_smallest_fraction", "iqr_min_agreement",
                    "min_iou", "min_iqr", "min_agreement")


def all_matrices(layer_stats, settings, label_category):
    """{f"{readout}_{rule}_{measure}": (U, C) array} for both read-outs and both threshold rules."""
    matrices = {}
    for name in readout.READOUTS:
        for rule in RULES:
            _, by_measure = readout.read_units(layer_stats, dataclasses.replace(settings, readout=name, rule=rule),
                                               label_category)
            matrices.update({f"{name}_{rule}_{m}": by_measure[m] for m in readout.MEASURES})
    return matrices


def write_statistics(outdir, collected, settings, label_categories):
    """Writes stats/LAYER.npz for every layer (raw statistics and every read-out's matrices)."""
    os.makedirs(os.path.join(outdir, "stats"), exist_ok=True)
    _, label_category = sources.category_numbers(label_categories)
    for layer, layer_stats in collected.items():
        arrays = {**layer_stats.range._asdict(), **{f"bin_{k}" if k in ("lo", "hi") else k: v
                                                    for k, v in layer_stats.joint._asdict().items()}}
        if layer_stats.raw_sketch is not None:
            arrays.update(raw_sketch_values=layer_stats.raw_sketch[0], raw_sketch_weights=layer_stats.raw_sketch[1])
        arrays.update(all_matrices(layer_stats, settings, label_category))
        files.save_npz(os.path.join(outdir, "stats", f"{layer}.npz"), arrays, compressed=True)


def read_statistics(outdir, layer):
    """The `stats.LayerStatistics` of a layer from stats/LAYER.npz."""
    path = os.path.join(outdir, "stats", f"{layer}.npz")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no statistics for layer {layer!r}; run --mode=dissect first")
    with np.load(path) as data:
        if "cell_bin" not in data:
            raise UserError(f"{path} was written by an older jaxdissect (equal-width bins); rerun --mode=dissect "
                            "in a new --outdir")
        raw_sketch = (data["raw_sketch_values"], data["raw_sketch_weights"]) if "raw_sketch_values" in data else None
        return stats.LayerStatistics(
            stats.RangeStats(*(data[f] for f in stats.RangeStats._fields)),
            stats.JointStats(*(data[f"bin_{f}" if f in ("lo", "hi") else f] for f in stats.JointStats._fields)),
            raw_sketch)


def summarize(collected, settings, label_names, categories):
    """The dissect.json content: per layer and unit, the label under `settings.readout` and `.rule`."""
    layers = {}
    class_fraction = None
    _, label_category = sources.category_numbers(categories)
    for layer, layer_stats in collected.items():
        range_stats, joint_stats = layer_stats.range, layer_stats.joint
        best, _ = readout.read_units(layer_stats, settings, label_category)
        units = []
        for u in range(len(best["label"])):
            label, runner_up = int(best["label"][u]), int(best["runner_up"][u])
            units.append({
                "unit": u, "label": label_names[label], "category": categories[label],
                "iou": _num(best["iou"][u]), "iqr": _num(best["iqr"][u]),
                "agreement": _num(best["agreement"][u]), "threshold": _num(best["threshold"][u]),
                "interpretable": bool(best["interpretable"][u]),
                "runner_up": label_names[runner_up], "runner_up_score": _num(best["runner_up_score"][u]),
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
    return {"settings": _jsonable(dataclasses.asdict(settings)), "readout": settings.readout,
            "label_score": label_score_name(settings),
            "labels": list(label_names), "categories": list(categories),
            "class_pixel_fraction": {label_names[c]: _num(class_fraction[c])
                                     for c in range(1, len(label_names))},
            "layers": layers}


def label_score_name(settings):
    """The measure that picks each unit's label (and ranks its runner-up)."""
    return "max_iqr" if (settings.readout, settings.rule) == ("reference", "iqr") else "iou"


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
        if "readout" not in self.summary.get("settings", {}):
            raise UserError(f"{path} was written by an older jaxdissect (no --readout); rerun --mode=dissect "
                            "into a new --outdir")
        self.labels = self.summary["labels"]
        self.categories = self.summary["categories"]
        self.rule = self.summary["settings"]["rule"]
        self.readout = self.summary["settings"]["readout"]

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

    def matrix(self, layer, measure, rule=None, readout=None):
        """(U, C) matrix of `measure` (iou, iqr, agreement, threshold, ..., label_score) under `rule` and
        `readout` (default: the dissection's own)."""
        with np.load(self._stats_path(layer)) as data:
            return data[f"{readout or self.readout}_{rule or self.rule}_{measure}"]

    def units_for(self, name, layer, rule=None, readout=None):
        """Units of `layer` ranked by their IoU with class `name`, best first."""
        scores = self.matrix(layer, "iou", rule, readout)[:, self.class_index(name)]
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
