"""Dissection statistics and measures against brute-force numpy, a planted unit, resume and devices."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import stats
from jaxdissect.dissection import engine, measures, results, sources
from jaxdissect.segmentation import resample

sys.path.insert(0, os.path.dirname(__file__))
import planted  # noqa: E402

BINS = 64


def random_case(seed, n=10, hw=12, units=5, classes=4, k=2):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, hw, hw, units)).astype(np.float32)
    acts[..., 0] += 1.5 * (np.arange(hw)[None, :, None] > hw // 2)       # a unit that likes the bottom
    seg = rng.integers(0, classes, (n, k, hw, hw)).astype(np.int32)
    seg[:, 1] = np.where(rng.random((n, hw, hw)) < 0.3, seg[:, 0], seg[:, 1])  # repeated labels
    seg[:, 0] = np.where(np.arange(hw)[None, :, None] > hw // 2, 1, seg[:, 0])   # class 1 at the bottom
    return acts, seg


def run_stats(acts, seg, classes, batch=4, lo=None, hi=None, bins=BINS, label_category=None):
    """Streams the case in batches of `batch` (last one padded); `bins` over [lo, hi] (default: min, max);
    `label_category` (C,) numbers each class's category (default: one category)."""
    n, _, _, units = acts.shape
    rs = stats.range_init(units, 3)
    for start in range(0, n, batch):
        a, idx = pad_batch(acts, start, batch)
        rs = stats.range_update(rs, a, idx)
    lo = rs.minimum if lo is None else lo
    hi = rs.maximum if hi is None else hi
    label_category = np.zeros(classes, np.int32) if label_category is None else np.asarray(label_category)
    js = stats.joint_init(lo, hi, classes, bins, int(label_category.max()) + 1)
    for start in range(0, n, batch):
        a, idx = pad_batch(acts, start, batch)
        s, _ = pad_batch(seg, start, batch)
        js = stats.joint_update(js, a, s, idx, jnp.asarray(label_category))
    return jax.tree.map(np.asarray, rs), jax.tree.map(np.asarray, js)


def pad_batch(x, start, batch):
    part = x[start:start + batch]
    index = np.arange(start, start + len(part), dtype=np.int32)
    pad = batch - len(part)
    if pad:
        part = np.concatenate([part, np.repeat(part[:1], pad, axis=0)])
        index = np.concatenate([index, -np.ones(pad, np.int32)])
    return jnp.asarray(part), jnp.asarray(index)


def brute_bins(acts, lo, hi):
    """The documented binning, in numpy: equal bins over [lo, hi], float32 arithmetic."""
    width = np.where(hi > lo, (hi - lo) / np.float32(BINS), np.float32(1)).astype(np.float32)
    return np.clip(np.floor((acts - lo) / width), 0, BINS - 1).astype(np.int64)


def brute_class_masks(seg, classes):
    """(n, h, w, C): pixel carries class c in any channel; class 0 ('no label') never counts."""
    masks = np.stack([np.any(seg == c, axis=1) for c in range(classes)], axis=-1)
    masks[..., 0] = False
    return masks


@pytest.mark.parametrize("calibrated", [False, True])
def test_streaming_stats_equal_brute_force(calibrated):
    """Histograms are exact, also when the bin range comes from a subset (values beyond it clamp)."""
    classes = 4
    acts, seg = random_case(0)
    lo = hi = None
    if calibrated:
        lo, hi = acts[:3].min(axis=(0, 1, 2)) + 0.5, acts[:3].max(axis=(0, 1, 2)) - 0.5
    rs, js = run_stats(acts, seg, classes, lo=lo, hi=hi)
    np.testing.assert_array_equal(rs.minimum, acts.min(axis=(0, 1, 2)))
    np.testing.assert_array_equal(rs.maximum, acts.max(axis=(0, 1, 2)))
    peaks = acts.max(axis=(1, 2))
    np.testing.assert_array_equal(rs.top_index, np.argsort(-peaks, axis=0, kind="stable")[:3])
    np.testing.assert_array_equal(rs.top_value, -np.sort(-peaks, axis=0)[:3])
    b = brute_bins(acts, js.lo, js.hi)
    masks = brute_class_masks(seg, classes)
    for u in range(acts.shape[-1]):
        np.testing.assert_array_equal(js.marginal[u], np.bincount(b[..., u].ravel(), minlength=BINS))
        for c in range(classes):
            expect = np.bincount(b[..., u][masks[..., c]], minlength=BINS)
            np.testing.assert_array_equal(js.joint[u, c], expect)
            np.testing.assert_allclose(js.act_sum[u, c], acts[..., u][masks[..., c]].sum(), rtol=1e-5)
    np.testing.assert_array_equal(js.class_pixels, masks.sum(axis=(0, 1, 2)))
    assert js.pixels == acts[..., 0].size
    np.testing.assert_array_equal(js.category_marginal[:, 0], js.marginal)     # one category: all images
    assert js.category_pixels[0] == js.pixels


def test_category_and_raw_histograms_equal_brute_force():
    """With two categories, each category's histogram counts exactly the pixels of the images that show
    one of its classes (label 0 shows category 0, as in the original); the raw histogram counts every
    featuremap cell once."""
    classes, label_category = 4, np.array([0, 0, 1, 1], np.int32)
    acts, seg = random_case(6, n=9)
    seg[:3] = np.where(seg[:3] >= 2, 1, seg[:3])             # samples 0-2 show no class of category 1
    seg[3, 0] = np.where(seg[3, 0] == 0, 1, seg[3, 0])       # sample 3 has no '-' pixel in channel 0
    rs, js = run_stats(acts, seg, classes, label_category=label_category)
    b = brute_bins(acts, rs.minimum, rs.maximum)
    present = np.stack([np.any(seg == c, axis=(1, 2, 3)) for c in range(classes)], axis=-1)   # (n, C)
    present[:, 0] = np.any(seg[:, 0] == 0, axis=(1, 2))
    shows = np.stack([present[:, label_category == k].any(axis=1) for k in range(2)], axis=-1)  # (n, K)
    assert not shows[:3, 1].all() and shows[:, 1].any()
    for k in range(2):
        assert js.category_pixels[k] == shows[:, k].sum() * acts.shape[1] * acts.shape[2]
        for u in range(acts.shape[-1]):
            expect = np.bincount(b[shows[:, k], ..., u].ravel(), minlength=BINS)
            np.testing.assert_array_equal(js.category_marginal[u, k], expect)
    for u in range(acts.shape[-1]):
        np.testing.assert_array_equal(js.raw_marginal[u], np.bincount(b[..., u].ravel(), minlength=BINS))
    assert js.raw_cells == acts[..., 0].size


def test_class_pixel_counts_are_exact_integers():
    """Class pixel counts stay exact past 2**24 pixels per batch, where float32 cannot hold odd counts."""
    labels = np.full((1, 1, 4200, 4100), 2, np.int32)
    labels[0, 0, :4199] = 1
    labels[0, 0, 4199, 0] = 1                                 # 4199 * 4100 + 1 = 17,215,901 pixels of class 1
    expect = [0, 4199 * 4100 + 1, 4100 - 1]
    assert int(np.float32(expect[1])) != expect[1]
    js = stats.joint_init(jnp.zeros(1), jnp.ones(1), 3, 4)
    js = stats.joint_update(js, jnp.zeros((1, 2, 2, 1)), jnp.asarray(labels), jnp.zeros(1, jnp.int32),
                            jnp.zeros(3, jnp.int32))
    np.testing.assert_array_equal(np.asarray(js.class_pixels), expect)
    assert int(js.pixels) == 4200 * 4100


@pytest.mark.parametrize("size_in,size_out", [((5, 5), (12, 12)), ((8, 6), (32, 24)), ((12, 12), (5, 7))])
def test_channel_major_resize_equals_float64_bilinear(size_in, size_out):
    """The histograms' upsampling, (N, H, W, C) -> (C, N, h, w), against the PyTorch weights in float64."""
    x = np.random.default_rng(3).standard_normal((3,) + size_in + (4,)).astype(np.float32)
    rows, cols = resample.bilinear_matrix(size_in[0], size_out[0]), resample.bilinear_matrix(size_in[1], size_out[1])
    expect = np.einsum("ih,jw,nhwc->cnij", rows, cols, x.astype(np.float64))
    got = resample.resize_bilinear_channel_major(jnp.asarray(x), size_out)
    np.testing.assert_allclose(np.asarray(got), expect, rtol=0, atol=1e-5)


@pytest.mark.parametrize("matrix", [resample.bilinear_matrix(6, 9), resample.bilinear_matrix(6, 9).T[:, :6],
                                    resample.adaptive_avg_matrix(6, 2)], ids=["two taps", "dense", "pooling"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_resampling_equals_tensordot(matrix, axis):
    """Two-tap (gathers) and dense (einsum) matrices along any axis of a 3-D array, against float64 numpy."""
    shape = [6, 6, 6]
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    expect = np.moveaxis(np.tensordot(matrix, x.astype(np.float64), axes=(1, axis)), 0, axis)
    got = resample._apply_axis(jnp.asarray(x), matrix, axis, jax.lax.Precision.HIGHEST)
    np.testing.assert_allclose(np.asarray(got), expect, rtol=0, atol=1e-5)


@pytest.mark.parametrize("chunk_entries,bins", [(None, BINS), (300, BINS), (None, 300)])
def test_upsampled_histograms_equal_brute_force(monkeypatch, chunk_entries, bins):
    """A 5x5 featuremap against 12x12 labels: the histograms count the bilinearly upsampled activations.

    The reference upsamples in float64 numpy; an entry may fall in the
    neighbouring bin only if its value lies within 1e-5 of a bin edge. With
    chunk_entries=300 each batch is counted one sample at a time; 300 bins
    do not fit the 8-bit bin indices that 64 use.
    """
    if chunk_entries is not None:
        monkeypatch.setattr(stats, "SCATTER_CHUNK_ENTRIES", chunk_entries)
        stats._sharded.cache_clear()
    classes = 4
    acts, seg = random_case(5, n=7, hw=12)
    small = acts[:, ::3, ::3][:, :4]                        # any 4x4 map; numbers need not relate
    small = np.concatenate([small, small[:, :1]], axis=1)[:, :, :4]
    small = np.concatenate([small, small[:, :, :1]], axis=2)  # (n, 5, 5, U)
    lo, hi = small.min(axis=(0, 1, 2)), small.max(axis=(0, 1, 2))
    _, js = run_stats(small, seg, classes, lo=lo, hi=hi, bins=bins)
    stats._sharded.cache_clear()
    rows, cols = resample.bilinear_matrix(5, 12), resample.bilinear_matrix(5, 12)
    up = np.einsum("ih,jw,nhwu->niju", rows, cols, small.astype(np.float64))
    width = (hi.astype(np.float64) - lo) / bins
    position = (up - lo) / width
    b = np.clip(np.floor(position), 0, bins - 1).astype(np.int64)
    near_edge = np.abs(position - np.round(position)) < 1e-5 / width
    masks = brute_class_masks(seg, classes)
    for u in range(small.shape[-1]):
        slack = int(near_edge[..., u].sum())
        assert np.abs(js.marginal[u] - np.bincount(b[..., u].ravel(), minlength=bins)).sum() <= 2 * slack
        for c in range(classes):
            expect = np.bincount(b[..., u][masks[..., c]], minlength=bins)
            assert np.abs(js.joint[u, c] - expect).sum() <= 2 * slack
            assert js.joint[u, c].sum() == masks[..., c].sum()


def brute_counts(a_bins, mask, j):
    above = a_bins >= j
    return above.sum(), (above & mask).sum(), mask.sum(), mask.size


def brute_iqr(both, above, s, n):
    p = np.array([[both, above - both], [s - both, n - above - s + both]], np.float64) / n
    px, py = p.sum(axis=1), p.sum(axis=0)
    mi = sum(p[i, j] * np.log(p[i, j] / (px[i] * py[j])) for i in range(2) for j in range(2) if p[i, j] > 0)
    h = -sum(p[i, j] * np.log(p[i, j]) for i in range(2) for j in range(2) if p[i, j] > 0)
    return mi / h if h > 0 else 0.0


def test_quantile_rule_equals_brute_force():
    classes, q = 4, 0.9
    acts, seg = random_case(1)
    rs, js = run_stats(acts, seg, classes)
    rule = measures.quantile_rule(js, q)
    b = brute_bins(acts, rs.minimum, rs.maximum)
    masks = brute_class_masks(seg, classes)
    n = acts[..., 0].size
    for u in range(acts.shape[-1]):
        fractions = np.array([(b[..., u] >= j).sum() / n for j in range(BINS + 1)])
        j = int(np.argmax(fractions <= 1 - q))            # lowest edge with <= 10% at or above it
        assert fractions[j] <= 1 - q < fractions[j - 1]
        width = (rs.maximum[u] - rs.minimum[u]) / BINS
        np.testing.assert_allclose(rule["threshold"][u, 0], rs.minimum[u] + j * width, rtol=1e-6)
        for c in range(classes):
            above, both, s, _ = brute_counts(b[..., u], masks[..., c], j)
            assert rule["intersection"][u, c] == both
            assert rule["union"][u, c] == above + s - both
            np.testing.assert_allclose(rule["iou"][u, c], both / (above + s - both), rtol=1e-12)
            np.testing.assert_allclose(rule["iqr"][u, c], brute_iqr(both, above, s, n), rtol=1e-9, atol=1e-12)


def test_iqr_rule_equals_brute_force_search():
    classes, levels, smallest = 4, 20, 1e-2
    acts, seg = random_case(2)
    rs, js = run_stats(acts, seg, classes)
    rule = measures.iqr_rule(js, levels, smallest, min_agreement=0.6)
    b = brute_bins(acts, rs.minimum, rs.maximum)
    masks = brute_class_masks(seg, classes)
    n = acts[..., 0].size
    found_any = False
    for u in range(acts.shape[-1]):
        width = (rs.maximum[u] - rs.minimum[u]) / BINS
        fractions = np.array([(b[..., u] >= j).sum() / n for j in range(BINS + 1)])
        for c in range(classes):
            best = None
            for f in np.logspace(np.log10(smallest), 0, levels):
                j = int(np.argmax(fractions <= f))
                t = rs.minimum[u] + j * width if j < BINS else rs.maximum[u]
                above, both, s, _ = brute_counts(b[..., u], masks[..., c], j)
                agree = (n - above - s + 2 * both) / n
                if agree > 0.6 and t > 0:
                    r = brute_iqr(both, above, s, n)
                    if best is None or r > best[0]:
                        best = (r, t, both / (above + s - both))
            if best is None:
                assert np.isnan(rule["threshold"][u, c]) and rule["iou"][u, c] == 0
            else:
                found_any = True
                np.testing.assert_allclose(rule["iqr"][u, c], best[0], rtol=1e-9)
                np.testing.assert_allclose(rule["threshold"][u, c], best[1], rtol=1e-6)
                np.testing.assert_allclose(rule["iou"][u, c], best[2], rtol=1e-9)
    assert found_any


def test_thresholds_match_direct_comparison():
    """Counts at a reported threshold agree with `act >= threshold` (up to values within an ulp of it)."""
    acts, seg = random_case(3)
    rs, js = run_stats(acts, seg, 4)
    rule = measures.quantile_rule(js, 0.8)
    masks = brute_class_masks(seg, 4)
    for u in range(acts.shape[-1]):
        above = acts[..., u] >= rule["threshold"][u, 1]
        assert abs(int((above & masks[..., 1]).sum()) - rule["intersection"][u, 1]) <= 2


def planted_settings(**kw):
    base = dict(layers=("layer",), samples=120, batch_size=16, checkpoint_every=2,
                checkpoint_minutes=0, bins=128, top_k=5)
    base.update(kw)
    return engine.DissectSettings(**base)


def planted_source(settings):
    gen = planted.PlantedGenerator()
    return sources.GeneratedSamples(gen, gen.init(), planted.PlantedSegmenter(), None, settings.layers,
                                    settings.downsample, settings.seed)


@pytest.mark.parametrize("readout", ["reference", "paper"])
def test_planted_unit_is_found(tmp_path, readout):
    settings = planted_settings(readout=readout)
    collected = engine.collect_statistics(planted_source(settings), settings, str(tmp_path))
    summary = results.summarize(collected, settings, planted.LABELS, planted.CATEGORIES)
    units = summary["layers"]["layer"]["unit"]
    hit = units[planted.PLANTED_UNIT]
    assert hit["label"] == "thing" and hit["iou"] > 0.9 and hit["interpretable"]
    others = [u for u in units if u["unit"] != planted.PLANTED_UNIT]
    assert all(not u["interpretable"] for u in others)
    assert max(u["iou"] for u in others) < 0.3
    _, label_category = sources.category_numbers(planted.CATEGORIES)
    for rule in ("paper_quantile", "reference_quantile"):
        quantile = results.all_matrices(collected["layer"], settings, label_category)[f"{rule}_iou"]
        assert np.argmax(quantile[:, planted.THING]) == planted.PLANTED_UNIT


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("sketch_seed", [None, 3])
def test_killed_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, sketch_seed):
    """With --original_sketch_seed, the replayed sketch (kept on the host, beside the checkpoints)
    resumes too."""
    settings = planted_settings(samples=100, original_sketch_seed=sketch_seed)
    whole = engine.collect_statistics(planted_source(settings), settings, str(tmp_path / "whole"))

    real_fold = engine._fold_batch
    calls = {"n": 0, "die_at": 4}     # the main pass's 4th batch, after a checkpoint at the 2nd

    def counting_fold(*args):
        calls["n"] += 1
        if calls["n"] == calls["die_at"]:
            raise Interrupt()
        return real_fold(*args)
    monkeypatch.setattr(engine, "_fold_batch", counting_fold)
    with pytest.raises(Interrupt):
        engine.collect_statistics(planted_source(settings), settings, str(tmp_path / "resumed"))
    calls.update(n=0, die_at=None)
    resumed = engine.collect_statistics(planted_source(settings), settings, str(tmp_path / "resumed"))
    assert calls["n"] == 7 - 2        # 7 batches of 16 for 100 samples; the first 2 were checkpointed
    jax.tree.map(np.testing.assert_array_equal, tuple(whole["layer"]), tuple(resumed["layer"]))
    assert (whole["layer"].raw_sketch is None) == (sketch_seed is None)


def test_checkpoints_wait_for_checkpoint_minutes(tmp_path, monkeypatch):
    """Every --checkpoint_every batches a checkpoint is considered and written only once
    --checkpoint_minutes have passed since the last: with 25 s a batch and 1 minute, the main pass's
    7 batches save after the 4th alone (besides the saves ending the calibration and the run)."""
    settings = planted_settings(samples=100, checkpoint_every=2, checkpoint_minutes=1.0)
    clock = {"now": 0.0}
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock["now"])
    real_fold, real_save, saved_at = engine._fold_batch, engine._Run.save, []

    def slow_fold(*args):
        clock["now"] += 25.0
        return real_fold(*args)

    def recording_save(run, state):
        saved_at.append((int(state["phase"]), int(state["next_sample"])))
        return real_save(run, state)
    monkeypatch.setattr(engine, "_fold_batch", slow_fold)
    monkeypatch.setattr(engine._Run, "save", recording_save)
    engine.collect_statistics(planted_source(settings), settings, str(tmp_path))
    assert saved_at == [(3, 0), (3, 64), (4, 100)]


def test_calibration_featuremaps_are_computed_once_when_they_fit(tmp_path, monkeypatch):
    """The bin placement reuses the range pass's featuremaps (one model pass over the calibration
    samples, not two) and places the same bins as when they are too large to keep and are recomputed."""
    settings = planted_settings(samples=100, calibration_samples=48)
    runs = {}
    for kept_bytes in (engine.CALIBRATION_KEPT_BYTES, 0):
        monkeypatch.setattr(engine, "CALIBRATION_KEPT_BYTES", kept_bytes)
        source, calls = planted_source(settings), []
        real_featuremaps = source.featuremaps
        source.featuremaps = lambda start, index: calls.append(start) or real_featuremaps(start, index)
        runs[kept_bytes] = engine.collect_statistics(source, settings, str(tmp_path / str(kept_bytes)))["layer"]
        assert calls == [0, 16, 32] * (1 if kept_bytes else 2)
    kept, recomputed = runs.values()
    jax.tree.map(np.testing.assert_array_equal, tuple(kept), tuple(recomputed))


def test_other_run_in_same_folder_is_refused(tmp_path):
    from jaxdissect.errors import UserError
    settings = planted_settings(samples=32)
    engine.collect_statistics(planted_source(settings), settings, str(tmp_path))
    with pytest.raises(UserError, match="different dissection"):
        engine.collect_statistics(planted_source(settings), planted_settings(samples=48), str(tmp_path))


DEVICE_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import jax, planted
from jaxdissect.dissection import engine, sources
assert jax.device_count() == {devices}
gen = planted.PlantedGenerator()
seg = planted.PlantedSegmenter(label_categories=("", "object", "part"))   # two categories: every histogram
settings = engine.DissectSettings(layers=("layer",), samples=100, batch_size=16, bins=128, top_k=5)
source = sources.GeneratedSamples(gen, gen.init(), seg, None, settings.layers, 1, settings.seed)
(rs, js, _), = engine.collect_statistics(source, settings, {outdir!r}).values()
np.savez({out!r}, **rs._asdict(), **js._asdict())
"""


def run_on_devices(devices, tmp_path):
    out = tmp_path / f"stats{devices}.npz"
    script = DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), devices=devices,
                                  outdir=str(tmp_path / f"run{devices}"), out=str(out))
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    return dict(np.load(out))


def test_one_and_eight_devices_agree(tmp_path):
    one, eight = run_on_devices(1, tmp_path), run_on_devices(8, tmp_path)
    for key in one:
        if key == "act_sum":
            np.testing.assert_allclose(one[key], eight[key], rtol=1e-5)
        else:
            np.testing.assert_array_equal(one[key], eight[key], err_msg=key)
