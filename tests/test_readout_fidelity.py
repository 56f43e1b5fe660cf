"""The default read-out gives the original GAN Dissection tool's unit labels on the same inputs.

tests/fixtures/dissection (see its README) holds 300 toy samples' layer4
featuremaps and segmentations, the original code's dissect.json on them
(three randomised iqr runs, one with the toy's object/part categories, one
top-1% quantile run) and an exact float64 reference. The samples go through
`--mode=dissect_arrays` as a user's arrays would, and `--mode=report`
switches rule and read-out from the saved statistics.
"""
import collections
import json
import os

import numpy as np
import pytest

from jaxdissect import bins
from jaxdissect.dissection import measures

from cli_helpers import run_main as run_cli
from jaxdissect.dissection.original_sketch import original_levels

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dissection")


def original(name):
    with open(os.path.join(FIXTURES, "original", f"{name}.json")) as f:
        return json.load(f)["units"]


@pytest.fixture(scope="module")
def samples():
    """The fixture samples; layer4 is stored as its 4 byte planes (compresses a third better), exactly."""
    with np.load(os.path.join(FIXTURES, "samples.npz")) as data:
        planes, shape = data["layer4_byte_planes"], tuple(data["layer4_shape"])
        return {"layer4": np.ascontiguousarray(planes.T).view("<f4").reshape(shape),
                "seg": data["seg"].astype(np.int32), "labels": data["labels"], "categories": data["categories"]}


def run_main(*args):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def write_arrays(path, samples, with_categories):
    arrays = {"layer4": samples["layer4"], "segmentation": samples["seg"], "labels": samples["labels"]}
    if with_categories:
        arrays["categories"] = samples["categories"]
    np.savez(path, **arrays)
    return str(path)


def dissect(tmp, name, samples, with_categories, *flags):
    """dissect.json of --mode=dissect_arrays on the fixture samples (thresholds searched on all 300)."""
    outdir = tmp / name
    arrays = write_arrays(tmp / f"{name}.npz", samples, with_categories)
    run_main("--mode=dissect_arrays", f"--arrays={arrays}", f"--outdir={outdir}", "--batch_size=60", *flags)
    return outdir


def relabel(outdir, *flags):
    run_main("--mode=report", f"--outdir={outdir}", *flags)
    return read_units(outdir)


def read_units(outdir):
    with open(os.path.join(outdir, "dissect.json")) as f:
        return json.load(f)["layers"]["layer4"]["unit"]


def agreement(ours, theirs):
    """Fraction of units given the original's label, and the mean |IoU difference| over those units."""
    same = [(u, o) for u, o in zip(ours, theirs) if u["label"] == o["iou_label"]]
    return len(same) / len(theirs), float(np.mean([abs(u["iou"] - o["iou"]) for u, o in same]))


def interpretable_counts(units, label_key, flag_key):
    return collections.Counter(u[label_key] for u in units if u[flag_key])


def assert_like_original(ours, theirs, min_agreement):
    agree, iou_gap = agreement(ours, theirs)
    assert agree >= min_agreement, agree
    assert iou_gap <= 0.01, iou_gap
    assert abs(sum(u["interpretable"] for u in ours) - sum(o["interp"] for o in theirs)) <= 2
    mine, orig = interpretable_counts(ours, "label", "interpretable"), interpretable_counts(theirs, "iou_label",
                                                                                          "interp")
    for label in set(mine) | set(orig):
        assert abs(mine[label] - orig[label]) <= 1, (label, mine[label], orig[label])


@pytest.fixture(scope="module")
def one_category(tmp_path_factory, samples):
    return dissect(tmp_path_factory.mktemp("fidelity"), "one_category", samples, False)


def test_iqr_labels_match_the_original(one_category):
    units = read_units(one_category)
    for run in ("iqr_s0", "iqr_s1", "iqr_s2"):
        assert_like_original(units, original(run), 0.97)


def test_iqr_labels_with_categories_match_the_original(tmp_path, samples):
    units = read_units(dissect(tmp_path, "categories", samples, True))
    assert_like_original(units, original("iqr_toycats_s0"), 0.97)


def test_quantile_labels_match_the_original(one_category):
    """Labels agree; the interpretable count matches the exact top-1% computation (the original's
    randomised sketch puts its levels at 0.85% instead of 1% on these samples, so it finds fewer:
    see the next test)."""
    units = relabel(one_category, "--rule=quantile", "--readout=reference")
    agree, iou_gap = agreement(units, original("q01_s0"))
    assert agree >= 0.95 and iou_gap <= 0.01
    exact = np.load(os.path.join(FIXTURES, "exact_reference.npz"))["q_iou_raw"][:, 1:]
    assert abs(sum(u["interpretable"] for u in units) - int((exact.max(axis=1) > 0.05).sum())) <= 2


def test_replayed_sketch_gives_the_original_runs_quantile_labels(tmp_path, samples):
    """With --original_sketch_seed=0 (the q01 run's seed), the dissection replays the original's sketch:
    the same labels, the same interpretable count and per-class counts as that run; a relabel keeps the
    replayed levels."""
    outdir = dissect(tmp_path, "replayed", samples, False, "--original_sketch_seed=0", "--rule=quantile")
    theirs = original("q01_s0")
    assert_like_original(read_units(outdir), theirs, 0.95)
    assert sum(u["interpretable"] for u in read_units(outdir)) == sum(o["interp"] for o in theirs)
    relabel(outdir, "--rule=iqr")
    assert_like_original(relabel(outdir, "--rule=quantile"), theirs, 0.95)


def bilinear_rows(n_in, n_out):
    """(n_out, n_in) weights of bilinear upsampling with half-pixel centres and border clamping."""
    source = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    rows = np.zeros((n_out, n_in))
    np.add.at(rows, (np.arange(n_out), low), 1 - (source - low))
    np.add.at(rows, (np.arange(n_out), high), source - low)
    return rows


def scores_at_levels(samples, levels):
    """Brute-force float64 IoU and IQR of [upsampled act > level] against every class: (U, C) each."""
    seg = samples["seg"][:, 0]
    rows = bilinear_rows(samples["layer4"].shape[1], seg.shape[1])
    upsampled = np.einsum("ai,bj,niju->nabu", rows, rows, samples["layer4"].astype(np.float64))
    active = (upsampled > levels).reshape(-1, len(levels)).astype(np.float64)
    truth = (seg.reshape(-1)[:, None] == np.arange(len(samples["labels"]))).astype(np.float64)
    both, act, lab, n = active.T @ truth, active.sum(0)[:, None], truth.sum(0)[None], len(truth)
    cells = [both / n, (act - both) / n, (lab - both) / n, (n - act - lab + both) / n]
    plogp = lambda p: np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    joint = -sum(plogp(c) for c in cells)
    marginals = -sum(plogp(a + b) for a, b in [(cells[0], cells[1]), (cells[2], cells[3]),
                                               (cells[0], cells[2]), (cells[1], cells[3])])
    iqr = np.nan_to_num((marginals - joint) / joint)
    return both / (act + lab - both), iqr


def interpretable_by_iou(iou, iqr, min_iou=0.05, min_iqr=0.01):
    """The original's quantile-rule read-out: class of best IoU (not '-'), IQR and IoU above the bars."""
    label = np.argmax(iou[:, 1:], axis=1) + 1
    at = np.arange(len(label))
    return int(np.sum((iou[at, label] > min_iou) & (iqr[at, label] > min_iqr)))


def test_quantile_count_sits_within_the_originals_own_spread(one_category, samples):
    """The original's interpretable count under the quantile rule is a draw of its randomised sketch.

    A numpy model of the sketch (jaxdissect/dissection/original_sketch.py) under the original's torch seed gives its
    q01_s0 levels to float noise, and brute-force counting at those levels gives its count exactly;
    over sketch seeds 0..9 the original's count spans 7..22. Ours, at the exact top 1%, lies within."""
    theirs = original("q01_s0")
    levels = original_levels(samples["layer4"], 0.01, seed=0)
    np.testing.assert_allclose(levels, [o["level"] for o in theirs], rtol=0, atol=1e-4)
    iou, iqr = scores_at_levels(samples, levels)
    assert interpretable_by_iou(iou, iqr) == sum(o["interp"] for o in theirs)
    np.testing.assert_allclose(iou[:, 1:].max(axis=1), [o["iou"] for o in theirs], rtol=0, atol=1e-6)
    spread = [interpretable_by_iou(*scores_at_levels(samples, original_levels(samples["layer4"], 0.01, s)))
              for s in range(10)]
    units = relabel(one_category, "--rule=quantile", "--readout=reference")
    assert min(spread) <= sum(u["interpretable"] for u in units) <= max(spread), spread
    assert max(spread) - min(spread) >= 10, spread


def test_bins_resolve_every_iqr_level(one_category, samples):
    """Issue #16 item 4 on real featuremaps: for each unit, the histogram edge nearest each of the iqr
    rule's 100 tail fractions (1e-3..1) has a tail within 5% of the exact level's, and no unit loses more
    than 10% of its distinct levels (equal-width bins over [min, max] miss 5% on 50 of these units)."""
    with np.load(os.path.join(one_category, "stats", "layer4.npz")) as data:
        joint = {name: data[name] for name in ("marginal", "bin_lo", "bin_hi", "cell_bin")}
    thresholds = bins.threshold_values(joint["bin_lo"], joint["bin_hi"], joint["cell_bin"])
    tail = measures.suffix_counts(joint["marginal"])
    fractions = measures.iqr_levels(100, 1e-3)
    nearest = measures.nearest_tail_bin(tail, int(tail[0, 0]), fractions)               # (U, L)
    rows = bilinear_rows(samples["layer4"].shape[1], samples["seg"].shape[2])
    upsampled = np.einsum("ai,bj,niju->unab", rows, rows, samples["layer4"].astype(np.float64))
    for u, values in enumerate(upsampled.reshape(upsampled.shape[0], -1)):
        ordered = np.sort(values)
        tail_above = lambda levels: 1.0 - np.searchsorted(ordered, levels, side="left") / len(ordered)
        exact = np.quantile(ordered, 1.0 - fractions)
        error = tail_above(thresholds[u, nearest[u]]) / tail_above(exact) - 1.0
        assert np.max(np.abs(error)) < 0.05, (u, np.max(np.abs(error)))
        assert len(np.unique(nearest[u])) >= 0.9 * len(np.unique(exact)), u


def test_paper_readout_does_not_match_the_original(one_category):
    """The paper-text read-out is a different reading: the fidelity checks above tell them apart."""
    units = relabel(one_category, "--rule=iqr", "--readout=paper")
    agree, _ = agreement(units, original("iqr_s0"))
    assert agree < 0.8
    assert sum(u["interpretable"] for u in units) > sum(o["interp"] for o in original("iqr_s0")) + 10
    relabel(one_category, "--rule=iqr", "--readout=reference")


def test_iqr_maxima_match_the_exact_reference(one_category):
    """The IQR maxima (per unit and class) within 0.005 of float64 numpy without histograms, and the IoU
    there for classes whose maximum is above 0.01 (the rest are flat: their argmax level is arbitrary),
    with at most 3% of them past 0.005 (the maximum sits between two histogram edges); labels agree
    except where the two best classes' exact maxima are within 1% of each other."""
    exact = np.load(os.path.join(FIXTURES, "exact_reference.npz"))
    with np.load(os.path.join(one_category, "stats", "layer4.npz")) as data:
        max_iqr = data["reference_iqr_label_score"]
        iou_at_max = data["reference_iqr_own_level_iou"]
    np.testing.assert_allclose(max_iqr[:, 1:], exact["iqr_iqr"][:, 1:], rtol=0, atol=0.005)
    clear = exact["iqr_iqr"][:, 1:] > 0.01
    iou_gap = np.abs(iou_at_max[:, 1:][clear] - exact["iqr_iou"][:, 1:][clear])
    assert np.mean(iou_gap > 0.005) <= 0.03 and iou_gap.max() < 0.015, np.sort(iou_gap)[-8:]
    top_two = np.sort(exact["iqr_iqr"][:, 1:], axis=1)[:, -2:]
    ambiguous = top_two[:, 0] > 0.99 * top_two[:, 1]
    labels = np.argmax(max_iqr, axis=1)
    assert np.all((labels == np.argmax(exact["iqr_iqr"], axis=1)) | ambiguous)
