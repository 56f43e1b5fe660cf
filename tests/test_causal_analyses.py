"""The causal analyses (ablation curves, insertion in context, tracing, artifact units) and the
ace/ablate/insert/trace/artifacts modes, against brute force and a planted causal unit."""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import parallel, stats
from jaxdissect.causal import ablation, artifacts, concept, context, tracing
from jaxdissect.models.proggan import ProGAN

sys.path.insert(0, os.path.dirname(__file__))
from cli_helpers import assert_one_line_error, run_main  # noqa: E402
import planted  # noqa: E402
from tiny_models import (numpy_params, write_tiny_discriminator, write_tiny_generator,  # noqa: E402
                         write_tiny_segmenter)



@pytest.fixture(scope="module")
def planted_world():
    gen, seg = planted.PlantedGenerator(), planted.PlantedSegmenter()
    return gen, gen.init(), seg


def thing_pixels(images):
    """Brute-force count of the planted segmenter's 'thing' pixels per image."""
    return (np.asarray(images)[..., 0] > 0).sum(axis=(1, 2))


# ---------------------------------------------------------------------------
# Ablation curves

def test_ablation_counts_equal_brute_force_and_the_planted_unit_removes_everything(planted_world):
    gen, params, seg = planted_world
    samples, seed = 10, 5
    sets = np.zeros((3, planted.UNITS), np.float32)
    sets[1, planted.PLANTED_UNIT] = 1
    sets[2, [0, 1, 5]] = 1
    got = ablation.class_pixels(gen, params, seg, None, "layer", sets, planted.THING, seed, samples, batch_size=4)
    r = np.asarray(gen.h(params, parallel.latents(seed, 0, samples, planted.LATENT), ("layer",))["layer"])
    expect = []
    for alpha in sets:
        edited = r.copy()
        for u in np.flatnonzero(alpha):
            edited[..., u] = 0.0
        expect.append(thing_pixels(gen.f(params, jnp.asarray(edited), "layer")).sum())
    np.testing.assert_array_equal(got, expect)
    assert expect[0] > 100 and expect[1] == 0 and expect[2] == expect[0]


@pytest.mark.parametrize("region", ["location", "image"])
def test_ablation_curves_planted_vs_random_units(planted_world, region):
    gen, params, seg = planted_world
    ranking = [planted.PLANTED_UNIT] + [u for u in range(planted.UNITS) if u != planted.PLANTED_UNIT]
    counts, draws = [1, 2, 3], 6
    result = ablation.ablation_curves(gen, params, seg, None, "layer", planted.THING, {"planted": ranking},
                                      counts, draws, seed=7, samples=12, batch_size=4, region=region)
    assert result["curves"]["planted"] == [1.0, 1.0, 1.0]
    # A random set removes every 'thing' pixel if it holds the planted unit and none otherwise.
    randoms = ablation.random_rankings(7, draws, planted.UNITS)
    expect = [[float(planted.PLANTED_UNIT in r[:n]) for n in counts] for r in randoms]
    np.testing.assert_allclose(result["random"]["draws"], expect, atol=1e-12)
    np.testing.assert_allclose(result["random"]["mean"], np.mean(expect, axis=0), atol=1e-12)
    assert result["pixels_before" if region == "image" else "shares_before"] > 0


def brute_force_location_removal(gen, params, seed, samples, unit_set):
    """The reference's ablation evaluation as a loop: each cell where 'thing' covers any pixel ablated on
    its own (the units of `unit_set` zeroed there), its share of that cell read back; 1 - after / before."""
    r = np.asarray(gen.h(params, parallel.latents(seed, 0, samples, planted.LATENT), ("layer",))["layer"])

    def cell_shares(featuremaps):
        thing = np.asarray(gen.f(params, jnp.asarray(featuremaps), "layer"))[..., 0] > 0       # (N, 32, 32)
        return thing.reshape(len(thing), 8, 4, 8, 4).mean(axis=(2, 4))                       # 4x4 pixels a cell

    shares = cell_shares(r)
    before = after = 0.0
    for i, row, col in zip(*np.nonzero(shares > 0)):
        edited = r[i:i + 1].copy()
        edited[0, row, col, unit_set] = 0.0
        before += shares[i, row, col]
        after += cell_shares(edited)[0, row, col]
    return 1.0 - after / before


def test_location_ablation_equals_a_loop_over_present_cells_off_the_grid():
    """The default ('location') ablates one present cell at a time and reads that cell; off the grid the
    planted unit leaves its neighbours' spill-over, so it removes less than all, and the image-wide
    ablation (which removes all) is a different answer."""
    gen, seg = planted.OffGridGenerator(), planted.PlantedSegmenter()
    params = gen.init()
    ranking = [planted.PLANTED_UNIT, 0, 1, 2, 4, planted.GLOBAL_UNIT]
    seed, samples, counts = 9, 5, [1, 3]
    result = ablation.ablation_curves(gen, params, seg, None, "layer", planted.THING, {"planted": ranking}, counts,
                                      0, seed, samples, batch_size=4)
    expect = [brute_force_location_removal(gen, params, seed, samples, ranking[:n]) for n in counts]
    np.testing.assert_allclose(result["curves"]["planted"], expect, atol=1e-6)
    assert result["region"] == "location" and result["present_cells"] > 20
    assert 0.3 < expect[0] < 0.95
    image = ablation.ablation_curves(gen, params, seg, None, "layer", planted.THING, {"planted": ranking}, counts,
                                     0, seed, samples, batch_size=4, region="image")
    assert image["curves"]["planted"][0] == 1.0


def test_effect_ranking_equals_each_unit_ablated_alone_in_a_loop():
    """Off the grid every unit has its own one-cell effect: the ranking's figures equal the loop's for
    each unit alone, the planted unit first, and over the whole image only the planted unit removes any."""
    gen, seg = planted.OffGridGenerator(), planted.PlantedSegmenter()
    params = gen.init()
    seed, samples = 9, 5
    ranking, effects = ablation.effect_ranking(gen, params, seg, None, "layer", planted.THING, seed, samples,
                                               batch_size=4)
    expect = [brute_force_location_removal(gen, params, seed, samples, [u]) for u in range(planted.UNITS)]
    np.testing.assert_allclose(effects, expect, atol=1e-6)
    assert ranking[0] == planted.PLANTED_UNIT and sorted(ranking) == list(range(planted.UNITS))
    assert all(effects[a] >= effects[b] for a, b in zip(ranking, ranking[1:]))
    ranking, effects = ablation.effect_ranking(gen, params, seg, None, "layer", planted.THING, seed, samples,
                                               batch_size=4, region="image")
    expect = np.zeros(planted.UNITS)
    expect[planted.PLANTED_UNIT] = 1.0
    np.testing.assert_array_equal(effects, expect)
    assert ranking == [planted.PLANTED_UNIT] + [u for u in range(planted.UNITS) if u != planted.PLANTED_UNIT]


# ---------------------------------------------------------------------------
# Insertion in context

def test_insertion_sweep_equals_a_loop_over_positions(planted_world):
    gen, params, seg = planted_world
    seed, samples, units = 4, 2, [planted.PLANTED_UNIT, 1]
    value = np.full(planted.UNITS, 2.0, np.float32)
    got = context.insertion_sweep(gen, params, seg, None, "layer", units, value, planted.THING, seed, samples,
                                  chunk=5)                                # 64 positions: chunks padded
    for i in range(samples):
        r = np.asarray(gen.h(params, parallel.latents(seed, i, i + 1, planted.LATENT), ("layer",))["layer"])
        base_image = gen.f(params, jnp.asarray(r), "layer")
        before = thing_pixels(base_image)[0]
        base_score = float(np.mean(seg.class_score(None, base_image, planted.THING)[0]))
        labels = np.asarray(seg.segment(None, base_image))[0, 0]
        for y in range(8):
            for x in range(8):
                edited = r.copy()
                edited[0, y, x, units] = 2.0
                image = gen.f(params, jnp.asarray(edited), "layer")
                assert got["pixels_added"][i, y, x] == thing_pixels(image)[0] - before
                score = float(np.mean(seg.class_score(None, image, planted.THING)[0]))
                np.testing.assert_allclose(got["score_change"][i, y, x], score - base_score, atol=1e-6)
                block = labels[2 * y:2 * y + 2, 2 * x:2 * x + 2].ravel()
                assert got["context"][i, y, x] == np.bincount(block).argmax()
    assert got["image_pixels"] == 256
    # The planted unit can only add 'thing' where there is none yet: by context, stuff > 0 = thing.
    groups = {g["class"]: g for g in context.effect_by_context(got["pixels_added"], got["score_change"],
                                                             got["context"], planted.LABELS)}
    assert groups["stuff"]["mean_pixels_added"] == pytest.approx(4.0) and groups["thing"]["mean_pixels_added"] == 0
    assert groups["stuff"]["positions"] + groups["thing"]["positions"] == samples * 64


SWEEP_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import jax, planted
from jaxdissect.causal import context
assert jax.device_count() == {devices}
gen, seg = planted.OffGridGenerator(), planted.PlantedSegmenter()
got = context.insertion_sweep(gen, gen.init(), seg, None, "layer", [planted.PLANTED_UNIT, 1], np.full(6, 2.0),
                              planted.THING, 4, 2, chunk=5)
np.savez({out!r}, **{{k: got[k] for k in ("pixels_added", "score_change", "context", "pixels_before")}})
"""


def test_insertion_sweep_same_on_one_and_eight_devices(tmp_path):
    import subprocess
    runs = []
    for devices in (1, 8):                 # chunks of 5 positions on 1 device, of 8 on 8 devices
        out = tmp_path / f"sweep{devices}.npz"
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        script = SWEEP_SCRIPT.format(tests=os.path.dirname(__file__), devices=devices, out=str(out))
        subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
        runs.append(dict(np.load(out)))
    assert runs[0]["pixels_added"].max() > 0
    for key in ("pixels_added", "context", "pixels_before"):
        np.testing.assert_array_equal(runs[0][key], runs[1][key])
    np.testing.assert_allclose(runs[0]["score_change"], runs[1]["score_change"], atol=1e-6)


# ---------------------------------------------------------------------------
# Tracing

def test_tracing_normalisation_equals_brute_force(planted_world):
    _, _, seg = planted_world
    gen = ProGAN((16, 16, 16, 8, 8))                      # layer4 is 8x8x16; output 32x32
    params = numpy_params(gen.init)
    units, value, seed, samples = [2, 7, 9], np.linspace(0.5, 3.0, 16).astype(np.float32), 6, 2
    later = tracing.later_layers(gen, "layer4")
    assert later == ("layer5", "layer6", "layer7", "layer8", "output_32x32")
    got = context.insertion_sweep(gen, params, seg, None, "layer4", units, value, planted.THING, seed, samples,
                                  chunk=16, capture=later)
    run_later = jax.jit(lambda r: gen.f(params, r, "layer4", capture=later))
    featuremap = jax.jit(lambda z: gen.h(params, z, "layer4")["layer4"])
    changes = {name: np.zeros((samples, 8, 8, gen.featuremap_shape(name)[-1])) for name in later}
    norm_sum = {name: 0.0 for name in later}
    added = np.zeros((samples, 8, 8))
    for i in range(samples):
        r = np.asarray(featuremap(parallel.latents(seed, i, i + 1, 16)))
        base_image, base = run_later(jnp.asarray(r))
        for name in later:
            norm_sum[name] = norm_sum[name] + np.abs(np.asarray(base[name], np.float64)[0]).mean(axis=(0, 1))
        for y in range(8):
            for x in range(8):
                edited = r.copy()
                edited[0, y, x, units] = value[units]
                image, out = run_later(jnp.asarray(edited))
                added[i, y, x] = thing_pixels(image)[0] - thing_pixels(base_image)[0]
                for name in later:
                    diff = np.abs(np.asarray(out[name], np.float64) - np.asarray(base[name], np.float64))[0]
                    changes[name][i, y, x] = diff.mean(axis=(0, 1))
    np.testing.assert_array_equal(got["pixels_added"], added)
    effects = tracing.normalised_effects(got["changes"], got["activation"])
    for name in later:
        np.testing.assert_allclose(got["changes"][name], changes[name], rtol=1e-3, atol=1e-5)  # float32 maps
        norm = norm_sum[name] / samples
        live = norm > 0
        expect = (changes[name][..., live] / norm[live]).mean(axis=-1)
        np.testing.assert_allclose(effects[name], expect, rtol=1e-3)
    summary = tracing.trace_summary(effects, got["pixels_added"], 1024, 0.002)
    shown = added > 0.002 * 1024
    assert summary["insertions"] == {"visible": int(shown.sum()), "invisible": int((~shown).sum())}
    for k, name in enumerate(later):
        expect_all = (changes[name][..., norm_sum[name] > 0] / (norm_sum[name][norm_sum[name] > 0] / samples)).mean(-1)
        assert summary["all"][k] == pytest.approx(expect_all.mean(), rel=1e-3)
        if shown.any():
            assert summary["visible"][k] == pytest.approx(expect_all[shown].mean(), rel=1e-3)


# ---------------------------------------------------------------------------
# Artifact units

def test_frechet_distance_against_scipy_and_closed_forms():
    scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy gives the independent matrix square root")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 6)), rng.standard_normal((30, 6)) @ rng.standard_normal((6, 6))
    mu1, cov1 = artifacts.gaussian(a)
    mu2, cov2 = artifacts.gaussian(b + 0.7)
    root = scipy_linalg.sqrtm(cov1 @ cov2).real
    expect = np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root)
    assert artifacts.frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expect, rel=1e-9)
    np.testing.assert_allclose(artifacts.gaussian(a)[1], np.cov(a.T))
    # Diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2; identical Gaussians: 0.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    assert artifacts.frechet_distance(np.zeros(3), np.diag(s1), np.ones(3), np.diag(s2)) == pytest.approx(
        3 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2))
    assert artifacts.frechet_distance(mu1, cov1, mu1, cov1) == pytest.approx(0.0, abs=1e-9)


class ThingCounter:
    """A stand-in discriminator whose 'realism' is minus the share of 'thing' in the image."""

    def apply(self, params, images):
        return -jnp.mean((images[..., 0] + 1) / 2, axis=(1, 2))


def test_discriminator_ranking_puts_the_planted_unit_first(planted_world):
    gen, params, _ = planted_world
    rise = artifacts.rank_by_discriminator(gen, params, ThingCounter(), None, "layer", planted.UNITS, seed=3,
                                           samples=8, batch_size=4)
    r = np.asarray(gen.h(params, parallel.latents(3, 0, 8, planted.LATENT), ("layer",))["layer"])
    realism = lambda fm: float(np.mean(-(np.asarray(gen.f(params, jnp.asarray(fm), "layer"))[..., 0] + 1) / 2))
    for u in range(planted.UNITS):
        edited = r.copy()
        edited[..., u] = 0
        assert rise[u] == pytest.approx(realism(edited) - realism(r), abs=1e-6)
    assert np.argmax(rise) == planted.PLANTED_UNIT and rise[planted.PLANTED_UNIT] > 0.1


# ---------------------------------------------------------------------------
# Insertion values

def test_class_quantile_is_the_lowest_edge_with_the_tail_share_at_most_one_minus_q():
    rng = np.random.default_rng(1)
    units, classes, bins = 3, 4, 16
    class_pixels = np.array([0, 50, 200, 31])
    # Each unit bins every pixel of a class once: joint[u, c] sums to class_pixels[c].
    joint = np.stack([np.stack([rng.multinomial(n, rng.dirichlet(np.ones(bins))) for n in class_pixels])
                      for _ in range(units)]).astype(np.int32)
    lo, hi = np.array([-1.0, 0.0, 2.0], np.float32), np.array([1.0, 3.0, 2.5], np.float32)
    js = stats.joint_init(lo, hi, classes, bins)._replace(joint=joint, marginal=joint.sum(axis=1),
                                                          class_pixels=class_pixels, pixels=281)
    for q in (0.5, 0.9, 0.99):
        got = concept.class_quantile(js, 2, q)
        for u in range(units):
            assert got[u] == pytest.approx(brute_quantile_edge(joint[u, 2], lo[u], hi[u], np.arange(bins), q),
                                           rel=1e-6)


def brute_quantile_edge(hist, lo, hi, cell_bin, q):
    """The lowest bin edge (the top edge: hi) with at most a (1 - q) share of the histogram at or above it;
    bin j's edge is the lower edge of its first cell among the len(cell_bin) equal cells of [lo, hi]."""
    bins = len(hist)
    j = next(j for j in range(bins + 1) if hist[j:].sum() <= (1 - q) * hist.sum())
    return lo + (hi - lo) / len(cell_bin) * np.flatnonzero(cell_bin == j)[0] if j < bins else hi


# ---------------------------------------------------------------------------
# The modes, end to end through main.py on tiny random models





@pytest.fixture(scope="module")
def dissection(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    write_tiny_generator(str(root / "gen"))
    write_tiny_segmenter(str(root / "seg"))
    write_tiny_discriminator(str(root / "disc"))
    outdir = str(root / "run")
    result = run_main("--mode=dissect", f"--generator={root / 'gen'}", f"--segmenter={root / 'seg'}",
                      f"--outdir={outdir}", "--layers=layer4", "--samples=16", "--batch_size=8", "--bins=32",
                      "--top_k=2", "--report_images=1")
    assert result.returncode == 0, result.stderr
    return outdir, str(root)


SMALL_SEARCH = ("--ace_steps=3", "--ace_batch_size=2", "--ace_search_samples=16", "--ace_train_samples=8",
                "--insert_value=mean")


@pytest.fixture(scope="module")
def ace_run(dissection):
    outdir, _ = dissection
    result = run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tree", *SMALL_SEARCH, "--top_n=3")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "ace", "tree", "ace.json")) as f:
        return json.load(f)


def test_ace_json_contract(dissection, ace_run):
    outdir, _ = dissection
    record = ace_run
    assert (record["layer"], record["class"], record["class_index"], record["top_n"]) == ("layer4", "tree", 3, 3)
    alpha = np.asarray(record["alpha"])
    assert alpha.shape == (8,) and np.all((alpha >= 0) & (alpha <= 1))
    iou = np.load(os.path.join(outdir, "stats", "layer4.npz"))["reference_iqr_iou"][:, 3]  # the tie-break
    assert record["ranking"] == sorted(range(8), key=lambda u: (-alpha[u], -iou[u], u))
    assert record["causal_units"] == record["ranking"][:3]
    assert record["alpha_zero"] == int(np.sum(alpha == 0))
    assert record["settings"]["region"] == "location" and record["settings"]["l2"] == 0.005
    with np.load(os.path.join(outdir, "stats", "layer4.npz")) as data:   # 'mean': act_sum / class pixels
        expect = data["act_sum"][:, 3] / data["class_pixels"][3]
    np.testing.assert_allclose(record["value"], expect, rtol=1e-6)
    np.testing.assert_allclose(np.load(os.path.join(outdir, "ace", "tree", "alpha.npy")), alpha, atol=1e-6)
    assert [c["step"] for c in record["loss_curve"]] == [3] and "ace" in record["loss_curve"][0]
    assert record["settings"]["seed"] == 2 and record["settings"]["learning_rate"] == 0.01
    assert "<svg" in open(os.path.join(outdir, "ace", "tree", "ace.svg")).read()
    # The held-out evaluation (numbers checked against numpy in test_intervention): 8 units, so top 10 and
    # top 20 are all 8; the held-out samples are the next of each ranking, apart from the training ones.
    evaluation = record["evaluation"]
    with np.load(os.path.join(outdir, "ace", "tree", "corpus.npz")) as corpus:
        assert evaluation["present_samples"] == len(corpus["eval_present_index"]) > 0
        assert evaluation["candidate_samples"] == len(corpus["eval_candidate_index"])
        assert not set(corpus["eval_present_index"]) & set(corpus["present_index"])
    assert list(evaluation["unit_sets"]) == ["top_8", "top_8_weighted"]
    for measures in evaluation["unit_sets"].values():
        assert set(measures) == {"ablated_cell", "ablated_image", "inserted_cell"}
        assert all(0 <= x <= 1 for v in measures.values() for x in v)
    assert evaluation["unit_sets"]["top_8"]["ablated_cell"][0] > 0
    # A finished search resumes to the same answer; other settings in the same folder are refused.
    again = run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tree", *SMALL_SEARCH, "--top_n=2")
    assert again.returncode == 0, again.stderr
    with open(os.path.join(outdir, "ace", "tree", "ace.json")) as f:
        resumed = json.load(f)
    assert resumed["alpha"] == record["alpha"] and resumed["causal_units"] == record["ranking"][:2]
    other = run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tree", *SMALL_SEARCH, "--ace_l2=0.5")
    assert_one_line_error(other, "different alpha search")


def test_insertion_values_from_the_dissection(dissection):
    from jaxdissect.dissection.results import Dissection
    from jaxdissect.errors import UserError
    outdir, _ = dissection
    with np.load(os.path.join(outdir, "stats", "layer4.npz")) as data:
        joint, lo, hi, cell_bin = data["joint"], data["bin_lo"], data["bin_hi"], data["cell_bin"]
        mean = data["act_sum"][:, 3] / data["class_pixels"][3]
    d = Dissection(outdir)
    np.testing.assert_allclose(concept.insertion_values(d, "layer4", 3, "mean"), mean, rtol=1e-6)
    got = concept.insertion_values(d, "layer4", 3, "quantile", 0.9)
    expect = [brute_quantile_edge(joint[u, 3], float(lo[u]), float(hi[u]), cell_bin[u], 0.9)
              for u in range(len(got))]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    with pytest.raises(UserError, match="never appears"):                     # label 0 is 'no label'
        concept.insertion_values(d, "layer4", 0, "mean")


def test_ablate_mode(dissection, ace_run):
    outdir, _ = dissection
    result = run_main("--mode=ablate", f"--dissection={outdir}", "--class_name=tree", "--ablate_counts=1,3,8,40",
                      "--random_draws=2", "--eval_samples=6", "--batch_size=4", "--rankings=ace,iou,effect",
                      "--effect_samples=3")
    assert result.returncode == 0, result.stderr
    assert "skipping --ablate_counts [40]" in result.stdout
    with open(os.path.join(outdir, "ablate", "tree", "ablation.json")) as f:
        curves = json.load(f)
    assert curves["counts"] == [1, 3, 8] and set(curves["curves"]) == {"ace", "iou", "effect"}
    assert curves["units"]["ace"] == ace_run["ranking"]
    effects = curves["effects"]["removed"]
    assert curves["effects"]["samples"] == 3 and len(effects) == 8
    assert [effects[u] for u in curves["units"]["effect"]] == sorted(effects, reverse=True)
    # n = 8 is every unit: the same set for every ranking and draw.
    at_all = [curves["curves"][name][2] for name in ("ace", "iou", "effect")]
    at_all += [draw[2] for draw in curves["random"]["draws"]]
    assert max(at_all) - min(at_all) < 1e-12
    assert os.path.isfile(os.path.join(outdir, "ablate", "tree", "ablation.svg"))


def test_insert_and_trace_modes(dissection, ace_run):
    outdir, _ = dissection
    common = [f"--dissection={outdir}", "--class_name=tree", "--context_samples=1", "--position_chunk=32",
              "--top_n=2"]
    result = run_main("--mode=insert", *common)
    assert result.returncode == 0, result.stderr
    folder = os.path.join(outdir, "insert", "tree")
    with open(os.path.join(folder, "insert.json")) as f:
        summary = json.load(f)
    maps = np.load(os.path.join(folder, "insert_maps.npz"))
    assert summary["units"] == ace_run["ranking"][:2] and maps["pixels_added"].shape == (1, 8, 8)
    assert sum(g["positions"] for g in summary["by_context"]) == 64
    assert summary["mean_pixels_added"] == pytest.approx(float(maps["pixels_added"].mean()))
    assert open(os.path.join(folder, "insert.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    result = run_main("--mode=trace", *common, "--visible_fraction=0.01")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "trace", "tree", "trace.json")) as f:
        trace = json.load(f)
    assert trace["layers"] == ["layer5", "layer6", "output_16x16"] and trace["heatmap_layer"] == "layer6"
    assert sum(trace["insertions"].values()) == 64 and all(v > 0 for v in trace["all"])
    effects = np.load(os.path.join(outdir, "trace", "tree", "trace_maps.npz"))
    assert effects["effect_layer6"].shape == (1, 8, 8)
    assert trace["all"][1] == pytest.approx(float(effects["effect_layer6"].mean()), rel=1e-6)


def test_artifacts_mode(dissection, tmp_path):
    outdir, root = dissection
    reference = np.random.default_rng(0).uniform(-1, 1, (12, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "real.npy", reference)
    result = run_main("--mode=artifacts", f"--dissection={outdir}", f"--discriminator={root}/disc", "--top_n=2",
                      f"--reference={tmp_path / 'real.npy'}", "--eval_samples=12", "--artifact_random_sets=2",
                      "--rank_samples=4", "--batch_size=4", "--frechet_dims=6")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "artifacts", "layer4", "artifacts.json")) as f:
        report = json.load(f)
    rise = np.asarray(report["realism_rise"])
    assert report["source"] == "discriminator" and report["units"] == list(np.argsort(-rise, kind="stable")[:2])
    assert len(report["frechet"]["random"]) == 2 and report["frechet"]["original"] > 0
    assert report["frechet_dims"] == 6 and report["frechet"]["original_spread"] > 0
    assert report["realism"]["original"] is not None
    assert os.path.isfile(os.path.join(outdir, "artifacts", "layer4", "artifacts.svg"))


def test_feature_map_is_orthonormal_and_halves_spread_is_their_std():
    q = artifacts.feature_map(40, 6)
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-12)
    np.testing.assert_array_equal(artifacts.feature_map(4, 6), np.eye(4))
    features = np.random.default_rng(2).standard_normal((30, 3))
    mu, cov = np.zeros(3), np.eye(3)
    rng = np.random.default_rng(5)
    halves = [artifacts.frechet_distance(*artifacts.gaussian(features[rng.permutation(30)[:15]]), mu, cov)
              for _ in range(4)]
    assert artifacts.spread_over_halves(features, mu, cov, draws=4, seed=5) == pytest.approx(np.std(halves))


def test_bad_inputs_give_one_line_errors(dissection, tmp_path):
    outdir, root = dissection
    assert_one_line_error(run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tre"),
                          "unknown class 'tre'", "did you mean tree")
    assert_one_line_error(run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tree", "--layer=layer9"),
                          "layer9", "dissected: layer4")
    assert_one_line_error(run_main("--mode=ace", f"--dissection={outdir}", "--class_name=tree", "--ace_probes=65"),
                          "--ace_probes=65")
    assert_one_line_error(run_main("--mode=ablate", f"--dissection={outdir}", "--class_name=sky"),
                          "ace.json", "--mode=ace")
    assert_one_line_error(run_main("--mode=ablate", f"--dissection={outdir}", "--class_name=tree",
                                   "--rankings=iou,best"), "--rankings=iou,best", "ace, iou, effect")
    assert_one_line_error(run_main("--mode=ablate", f"--dissection={outdir}", "--class_name=tree",
                                   "--rankings=effect", "--effect_samples=0"), "--effect_samples=0")
    assert_one_line_error(run_main("--mode=ablate", f"--dissection={outdir}", "--class_name=tree",
                                   "--rankings=effect", "--effect_seed=3"), "--effect_seed=3 equals --eval_seed")
    (tmp_path / "units.json").write_text("[0, 2]")
    units = f"--artifact_units={tmp_path / 'units.json'}"
    artifacts_mode = ("--mode=artifacts", f"--dissection={outdir}", units, "--frechet_dims=2", "--eval_samples=4")
    assert_one_line_error(run_main(*artifacts_mode), "--reference is required")          # not a toy-world generator
    np.save(tmp_path / "small.npy", np.zeros((4, 3, 8, 8), np.float32))
    assert_one_line_error(run_main(*artifacts_mode, f"--reference={tmp_path / 'small.npy'}"), "--reference=",
                          "(N, 3, 16, 16)")
    np.save(tmp_path / "bytes.npy", np.full((4, 3, 16, 16), 255.0, np.float32))
    assert_one_line_error(run_main(*artifacts_mode, f"--reference={tmp_path / 'bytes.npy'}"), "--reference=",
                          "expected images in [-1, 1]")
    assert_one_line_error(run_main(*artifacts_mode[:-1], "--eval_samples=3"), "--eval_samples=3")
    (tmp_path / "units.json").write_text("[0, 99]")
    assert_one_line_error(run_main("--mode=artifacts", f"--dissection={outdir}",
                                   f"--artifact_units={tmp_path / 'units.json'}"), "units.json", "[0, 8)")
