"""A class's causal units as a file: the `ace.json` contract, and the values units are inserted at.

`ace.json` (written by --mode=ace into DISSECTION/ace/CLASS/) holds:

    layer, class, class_index   where and what was searched
    alpha        (U,) the search's final unit weights in [0, 1]
    alpha_zero   how many of them are exactly 0 (their order in the ranking is only the tie-break)
    ranking      (U,) units by decreasing alpha, then decreasing IoU with the class, then unit index
    top_n, causal_units   n and the first n units of the ranking
    value        (U,) the value each unit of the layer is set to when inserted
    settings     everything that produced it (search, insertion value, models)
    loss_curve   [{step, loss, ace, insertion, ablation}] from the search's log
    evaluation   the reference's held-out evaluation (--ace_region=location; else null): the
                 sample counts and, for each unit set (top_N: the top N units switched fully;
                 top_N_weighted: at their alpha), the class's mean share [before, after] at the
                 cells ablated ('ablated_cell'), over whole images ablated everywhere
                 ('ablated_image') and at the cells inserted into ('inserted_cell'); see
                 jaxdissect.causal.location.evaluate

Readers (the analyses here, GAN Paint) take `causal_units` and `value[u]`
for each of them. The insertion value `k` of the design is one of:

- 'mean' (the reference's choice): the unit's mean upsampled activation over
  the pixels of the class, from the dissection's per-class activation sums;
- 'quantile': the unit's `q`-quantile (e.g. 0.99) among the pixels of the
  class, from the dissection's per-class histogram: the lowest bin edge with
  at most a (1 - q) share of the class's pixels at or above it, so within one
  bin of the exact conditional quantile. A high quantile inserts a unit at the
  strength it reaches where the class is most clearly present.
"""
import json
import os

import numpy as np

from jaxdissect.dissection import measures
from jaxdissect.dissection.results import read_statistics
from jaxdissect.errors import UserError
from jaxdissect.io import files

INSERT_VALUES = ("mean", "quantile")


def class_quantile(joint_stats, class_index, quantile):
    """(U,) each unit's `quantile` activation among the pixels of class `class_index` (a bin edge)."""
    tail = measures.suffix_counts(joint_stats.joint[:, class_index, :])            # (U, B + 1)
    j = measures.tail_bin(tail, int(joint_stats.class_pixels[class_index]), 1.0 - quantile)
    edges = measures.threshold_values(joint_stats)                                  # (U, B + 1)
    return np.take_along_axis(edges, j[:, None], axis=1)[:, 0]


def insertion_values(dissection, layer, class_index, how="mean", quantile=0.99):
    """(U,) float32 value each unit of `layer` is set to when inserting class `class_index` (see module doc)."""
    if how not in INSERT_VALUES:
        raise UserError(f"--insert_value={how}: expected one of {', '.join(INSERT_VALUES)}")
    joint_stats = read_statistics(dissection.outdir, layer).joint
    if int(joint_stats.class_pixels[class_index]) == 0:
        raise UserError(f"class {dissection.labels[class_index]!r} never appears in the samples of "
                        f"{dissection.outdir}; its units have no insertion value")
    if how == "mean":
        return np.asarray(dissection.mean_activation(layer)[:, class_index], np.float32)
    if not 0 < quantile < 1:
        raise UserError(f"--insert_quantile={quantile}: must be in (0, 1)")
    return class_quantile(joint_stats, class_index, quantile).astype(np.float32)


def read_loss_curve(workdir):
    """[{step, loss, ace, ...}] from the search's metrics.jsonl, one entry per step (a resumed run's last)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    by_step = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                by_step[record["step"]] = {k: v for k, v in record.items() if k != "time"}
    return [by_step[step] for step in sorted(by_step)]


def ace_record(layer, class_name, class_index, alpha, ranking, top_n, value, settings, loss_curve,
               evaluation=None):
    """The ace.json content (see module doc)."""
    ranking = [int(u) for u in ranking]
    return {"layer": layer, "class": class_name, "class_index": int(class_index),
            "alpha": [round(float(a), 6) for a in alpha], "alpha_zero": int(np.sum(np.asarray(alpha) == 0)),
            "ranking": ranking, "top_n": int(top_n),
            "causal_units": ranking[:top_n], "value": [float(v) for v in value],
            "settings": settings, "loss_curve": loss_curve, "evaluation": evaluation}


def evaluation_summary(evaluation):
    """ace.json's held-out evaluation as lines of text."""
    lines = [f"held-out evaluation ({evaluation['present_samples']} samples to ablate, "
             f"{evaluation['candidate_samples']} to insert into): the class's mean share, before -> after"]
    for name, measures in evaluation["unit_sets"].items():
        lines.append(f"  {name:>16}: " + "; ".join(f"{k.replace('_', ' ')} {v[0]:.3f} -> {v[1]:.3f}"
                                                   for k, v in measures.items()))
    return "\n".join(lines)


def write_ace(outdir, record):
    files.save_json(os.path.join(outdir, "ace.json"), record)
    with files.atomic_open(os.path.join(outdir, "alpha.npy"), "wb") as f:
        np.save(f, np.asarray(record["alpha"], np.float32))


def read_ace(path, layer=None, class_name=None):
    """An ace.json as a dict, checked; UserError naming the file if missing, malformed or for another
    layer or class than asked."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such ace.json; run --mode=ace for this class first (or give --ace)")
    try:
        with open(path) as f:
            record = json.load(f)
        units = len(record["alpha"])
        ok = (len(record["value"]) == units and sorted(record["ranking"]) == list(range(units))
              and record["causal_units"] == record["ranking"][:record["top_n"]])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: not a readable ace.json ({type(e).__name__}: {e})") from None
    if not ok:
        raise UserError(f"{path}: inconsistent ace.json (alpha, value, ranking and causal_units disagree)")
    for key, wanted in (("layer", layer), ("class", class_name)):
        if wanted is not None and record[key] != wanted:
            raise UserError(f"{path} is for {key} {record[key]!r}, not {wanted!r}")
    return record
