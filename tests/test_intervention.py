"""Interventions, ACE and the alpha search against brute force and a planted causal unit."""
import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import parallel
from jaxdissect.causal import ace, location, search
from jaxdissect.causal import corpus as corpus_lib
from jaxdissect.intervention import Intervention, ablate, identity, insert, unit_indicator
from jaxdissect.models.proggan import ProGAN

sys.path.insert(0, os.path.dirname(__file__))
import planted  # noqa: E402

SIZES = (16, 16, 16, 8, 8)  # 32x32 output; layer4 is 8x8


@pytest.fixture(scope="module")
def tiny():
    gen = ProGAN(SIZES)
    params = gen.init(jax.random.PRNGKey(0))
    z = jax.random.normal(jax.random.PRNGKey(1), (3, SIZES[0]))
    return gen, params, z


def test_empty_set_and_zero_mask_are_the_identity(tiny):
    gen, params, z = tiny
    plain, _ = gen(params, z)
    for edit in (identity(16), ablate(jnp.zeros(16)), ablate(jnp.ones(16), jnp.zeros((3, 8, 8))),
                 insert(jnp.ones(16), 5.0 * jnp.ones(16), jnp.zeros((8, 8)))):
        edited, _ = gen(params, z, edits={"layer4": edit})
        np.testing.assert_array_equal(edited, plain)


def test_indicator_alpha_is_the_discrete_edit(tiny):
    gen, params, z = tiny
    r = np.asarray(gen.h(params, z, "layer4")["layer4"])
    units = [2, 5, 11]
    mask = np.zeros((3, 8, 8), np.float32)
    mask[:, 2:5, 1:7] = 1
    value = np.arange(16, dtype=np.float32) + 0.5
    expect_ablated, expect_inserted = r.copy(), r.copy()
    for u in units:
        expect_ablated[..., u] = np.where(mask > 0, 0.0, r[..., u])
        expect_inserted[..., u] = np.where(mask > 0, value[u], r[..., u])
    alpha = unit_indicator(units, 16)
    np.testing.assert_array_equal(ablate(alpha, mask)(jnp.asarray(r)), expect_ablated)
    np.testing.assert_array_equal(insert(alpha, value, mask)(jnp.asarray(r)), expect_inserted)


def affected_region(gen, layer, cell):
    """Pixels of the image a change at one cell of `layer` can reach, by propagating through the blocks."""
    start = gen.layer_index(layer) + 1
    spec = gen.specs[start - 1]
    region = np.zeros((spec.resolution, spec.resolution), bool)
    region[cell] = True
    for s in gen.specs[start:]:
        if s.upsample:
            region = region.repeat(2, axis=0).repeat(2, axis=1)
        for _ in range(s.padding):  # a k x k conv with padding (k-1)/2 spreads by one cell per padding step
            grown = region.copy()
            grown[1:] |= region[:-1]
            grown[:-1] |= region[1:]
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
            region = grown
    return region


def test_insertion_at_one_position_changes_only_its_receptive_field(tiny):
    gen, params, z = tiny
    mask = np.zeros((8, 8), np.float32)
    mask[3, 5] = 1
    plain, _ = gen(params, z)
    edited, _ = gen(params, z, edits={"layer4": insert(jnp.ones(16), 4.0 * jnp.ones(16), mask)})
    changed = np.any(np.abs(np.asarray(edited) - np.asarray(plain)) > 0, axis=(0, 3))
    region = affected_region(gen, "layer4", (3, 5))
    assert changed.any() and not (changed & ~region).any()
    assert changed.sum() > 0.5 * region.sum()


def test_edits_vmap_over_unit_sets_without_recompiling(tiny):
    gen, params, z = tiny
    traces = {"n": 0}

    @jax.jit
    def render(alpha):
        traces["n"] += 1
        return gen(params, z, edits={"layer4": ablate(alpha)})[0]
    sets = jnp.stack([unit_indicator([u], 16) for u in range(4)])
    singles = [render(sets[i]) for i in range(4)]
    assert traces["n"] == 1  # changing the unit set does not retrace
    batched = jax.vmap(render)(sets)
    for i in range(4):
        np.testing.assert_allclose(batched[i], singles[i], atol=1e-5)


def test_edits_at_two_layers_compose(tiny):
    gen, params, z = tiny
    e4 = ablate(unit_indicator([1, 2], 16))
    e6 = insert(unit_indicator([0], 8), jnp.full(8, 3.0))
    both, _ = gen(params, z, edits={"layer4": e4, "layer6": e6})
    r4 = e4(gen.h(params, z, "layer4")["layer4"])
    _, captured = gen.f(params, r4, "layer4", capture=("layer6",))
    manual = gen.f(params, e6(captured["layer6"]), "layer6")
    np.testing.assert_allclose(both, manual, atol=1e-6)


@pytest.fixture(scope="module")
def planted_world():
    gen, seg = planted.PlantedGenerator(), planted.PlantedSegmenter()
    return gen, gen.init(), seg


def brute_force_ace(gen, params, seg, alpha, value, class_index, z):
    """The ACE with explicit loops over samples, cells and pixels (numpy)."""
    r = np.asarray(gen.h(params, z, ("layer",))["layer"])
    ins_sum = ins_n = abl_sum = abl_n = 0.0
    for n in range(len(z)):
        image = gen.f(params, jnp.asarray(r[n:n + 1]), "layer")
        _, pixels = seg.class_score(None, image, class_index)
        pixels = np.asarray(pixels[0])                      # 16x16, cells are 2x2 pixel blocks
        present = np.zeros((8, 8))
        for i in range(8):
            for j in range(8):
                present[i, j] = pixels[2 * i:2 * i + 2, 2 * j:2 * j + 2].any()
        ablated, inserted = r[n].copy(), r[n].copy()
        for i in range(8):
            for j in range(8):
                for u in range(r.shape[-1]):
                    if present[i, j]:
                        ablated[i, j, u] *= 1 - alpha[u]
                    else:
                        inserted[i, j, u] = (1 - alpha[u]) * inserted[i, j, u] + alpha[u] * value[u]
        s_abl = np.asarray(seg.class_score(None, gen.f(params, jnp.asarray(ablated[None]), "layer"), class_index)[0][0])
        s_ins = np.asarray(seg.class_score(None, gen.f(params, jnp.asarray(inserted[None]), "layer"), class_index)[0][0])
        for y in range(16):
            for x in range(16):
                if present[y // 2, x // 2]:
                    abl_sum, abl_n = abl_sum + s_abl[y, x], abl_n + 1
                else:
                    ins_sum, ins_n = ins_sum + s_ins[y, x], ins_n + 1
    return ins_sum / ins_n - abl_sum / abl_n


def test_ace_equals_brute_force(planted_world):
    gen, params, seg = planted_world
    z = jax.random.normal(jax.random.PRNGKey(3), (4, planted.LATENT))
    alpha = np.array([0.0, 0.3, 0.0, 1.0, 0.5, 0.0], np.float32)
    value = np.full(planted.UNITS, 2.0, np.float32)
    got = ace.causal_effect(gen, params, seg, None, "layer", jnp.asarray(alpha), jnp.asarray(value),
                            planted.THING, z)
    np.testing.assert_allclose(float(got["ace"]), brute_force_ace(gen, params, seg, alpha, value, planted.THING, z),
                               rtol=1e-5)
    assert float(got["ace"]) > 0.8  # the planted unit really draws the class


def test_alpha_search_recovers_the_planted_unit(planted_world, tmp_path):
    gen, params, seg = planted_world
    settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, steps=40, batch_size=8,
                                          learning_rate=0.05, l2=0.01, checkpoint_every=20, region="image")
    alpha = search.search(gen, params, seg, None, settings, np.full(planted.UNITS, 2.0),
                          search.initial_alpha(np.zeros(planted.UNITS), "constant"), str(tmp_path))
    assert search.ranking(alpha, np.zeros(planted.UNITS))[0] == planted.PLANTED_UNIT
    assert alpha[planted.PLANTED_UNIT] > 0.9
    assert np.all(np.delete(alpha, planted.PLANTED_UNIT) < 0.45)


# ---------------------------------------------------------------------------
# The location objective, on a world drawn off the featuremap's grid

@pytest.fixture(scope="module")
def off_grid():
    gen, seg = planted.OffGridGenerator(), planted.PlantedSegmenter()
    return gen, gen.init(), seg


def cell_means(maps):
    """(8, 8) means of the 4x4 pixel blocks of a (32, 32) map, in float64."""
    return np.asarray(maps, np.float64).reshape(8, 4, 8, 4).mean(axis=(1, 3))


SEED = 7


def featuremaps(gen, params, index):
    """(N, 8, 8, U) featuremaps of global samples `index` of SEED, as numpy."""
    z = parallel.latents(SEED, 0, int(max(index)) + 1, planted.LATENT)[np.asarray(index)]
    return np.array(gen.h(params, jnp.asarray(z), ("layer",))["layer"])


def thing_pixels(gen, params, featuremap):
    """(32, 32) the segmenter's 'thing' mask of the image drawn from one featuremap (8, 8, U)."""
    images = gen.f(params, jnp.asarray(featuremap[None]), "layer")
    return np.asarray(planted.PlantedSegmenter().class_score(None, images, planted.THING)[1][0])


def thing_score_at(gen, params, featuremap, cell):
    """The soft 'thing' score averaged over flat cell `cell` of the image drawn from `featuremap`."""
    images = gen.f(params, jnp.asarray(featuremap[None]), "layer")
    score = planted.PlantedSegmenter().class_score(None, images, planted.THING)[0][0]
    return cell_means(score).ravel()[cell]


def brute_force_location_effect(gen, params, alpha, value, batch):
    """The location objective, one sample at a time in numpy."""
    ablations, insertions = [], []
    for n, p in zip(batch["present_index"], batch["present_cell"]):
        r = featuremaps(gen, params, [n])[0]
        r.reshape(64, -1)[p] *= 1 - alpha
        ablations.append(thing_score_at(gen, params, r, p))
    for n, q in zip(batch["candidate_index"], batch["candidate_cell"]):
        r = featuremaps(gen, params, [n])[0]
        r.reshape(64, -1)[q] = (1 - alpha) * r.reshape(64, -1)[q] + alpha * value
        insertions.append(thing_score_at(gen, params, r, q))
    return np.mean(insertions) - np.mean(ablations)


def test_location_objective_equals_brute_force_off_the_grid(off_grid):
    gen, params, _ = off_grid
    batch = {"present_index": np.array([0, 3, 5, 9]), "present_cell": np.array([10, 27, 27, 63]),
             "candidate_index": np.array([40, 41, 47, 50]), "candidate_cell": np.array([0, 18, 33, 46])}
    alpha = np.array([0.2, 0.3, 0.0, 0.8, 0.5, 0.6], np.float32)
    value = np.linspace(1.0, 2.5, planted.UNITS).astype(np.float32)
    got = location.location_effect(gen, params, planted.PlantedSegmenter(), None, "layer", jnp.asarray(alpha),
                                   jnp.asarray(value), planted.THING, SEED,
                                   {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()})
    np.testing.assert_allclose(float(got["ace"]), brute_force_location_effect(gen, params, alpha, value, batch),
                               rtol=1e-5)


def brute_force_top(scores, count, skip=0):
    """Indices of the positive scores ranked skip .. skip + count - 1 by size (ties: lower index first),
    ascending."""
    ranked = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    return sorted(ranked[skip:skip + count])


def brute_force_corpus(gen, params, value, settings):
    """(present indices, cells, presence-weighted value, candidate indices, cells, and the held-out
    evaluation corpora: present indices, cells, candidate indices, cells) in numpy loops."""
    n = settings.search_samples
    r = featuremaps(gen, params, range(2 * n))
    shares = np.stack([cell_means(thing_pixels(gen, params, r[i])).ravel() for i in range(2 * n)])
    weighted = sum(r[i].reshape(64, -1)[c] * shares[i, c] for i in range(n) for c in range(64))
    presence_value = weighted / shares[:n].sum()
    present = brute_force_top(shares[:n].max(axis=1), settings.train_samples)
    present_cells = [int(np.argmax(shares[i])) for i in present]
    popularity = np.bincount(present_cells, minlength=64).astype(np.float32)
    probes = np.asarray(location.draw_probes(settings.seed, jnp.arange(n, 2 * n), location.probe_weights(
        jnp.asarray(popularity)), settings.probes))
    best_gain, best_cell = [], []
    for i in range(n, 2 * n):
        before = thing_pixels(gen, params, r[i]).sum()
        gains = []
        for q in probes[i - n]:
            edited = r[i].copy()
            edited.reshape(64, -1)[q] = value
            gains.append(0 if shares[i, q] > 0 else int(thing_pixels(gen, params, edited).sum()) - int(before))
        best_gain.append(max(gains))
        best_cell.append(int(probes[i - n][int(np.argmax(gains))]))
    candidates = brute_force_top(best_gain, settings.train_samples)
    eval_present = brute_force_top(shares[:n].max(axis=1), settings.eval_samples, settings.train_samples)
    eval_candidates = brute_force_top(best_gain, settings.eval_samples, settings.train_samples)
    return (present, present_cells, presence_value, [n + i for i in candidates],
            [best_cell[i] for i in candidates], eval_present, [int(np.argmax(shares[i])) for i in eval_present],
            [n + i for i in eval_candidates], [best_cell[i] for i in eval_candidates])


def test_corpora_equal_brute_force_off_the_grid(off_grid, tmp_path):
    gen, params, seg = off_grid
    settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, batch_size=8, seed=SEED,
                                          search_samples=40, train_samples=30, eval_samples=6)
    # GLOBAL_UNIT at 40 paints the whole image from any one cell, so every probe gains about alike and the
    # rule that skips cells already showing the class picks the candidate cell.
    value = np.full(planted.UNITS, 2.0, np.float32)
    value[planted.GLOBAL_UNIT] = 40.0
    got = search.training_corpus(gen, params, seg, None, settings, value, str(tmp_path))
    (present, present_cells, presence_value, candidates, candidate_cells, eval_present, eval_present_cells,
     eval_candidates, eval_candidate_cells) = brute_force_corpus(gen, params, value, settings)
    assert got.present_index.tolist() == present and got.present_cell.tolist() == present_cells
    assert got.eval_present_index.tolist() == eval_present and got.eval_present_cell.tolist() == eval_present_cells
    assert got.eval_candidate_index.tolist() == eval_candidates
    assert got.eval_candidate_cell.tolist() == eval_candidate_cells
    assert len(eval_present) == 6 and not set(eval_present) & set(present)
    np.testing.assert_allclose(got.presence_value, presence_value, rtol=1e-5)
    assert got.candidate_index.tolist() == candidates and got.candidate_cell.tolist() == candidate_cells
    assert len(present) == 30 and len(set(present_cells)) > 1 and len(candidates) > 1
    # Off the grid, the cell where the class is most present is not always the first cell it touches.
    first_touched = [int(np.flatnonzero(cell_means(thing_pixels(gen, params, r)) > 0)[0])
                     for r in featuremaps(gen, params, present)]
    assert any(p != t for p, t in zip(present_cells, first_touched))
    # A resumed search reads the saved corpora back instead of searching again.
    again = search.training_corpus(gen, params, seg, None, dataclasses.replace(settings, search_samples=4),
                                   value, str(tmp_path))
    assert again.present_index.tolist() == present


def test_probe_draws_are_distinct_and_follow_the_weights():
    weights = jnp.asarray(np.random.default_rng(1).uniform(0.1, 1.0, (4, 4)), jnp.float32)
    probes = np.asarray(location.draw_probes(3, jnp.arange(200), weights, 5))
    assert all(len(set(row)) == 5 for row in probes)
    first = np.asarray(location.draw_probes(3, jnp.arange(40000), weights, 1))[:, 0]
    share = np.bincount(first, minlength=16) / len(first)
    expect = np.asarray(weights).ravel() / float(np.sum(weights))
    np.testing.assert_allclose(share, expect, atol=0.01)          # 4 standard errors at 40,000 draws


def location_and_image_alphas(gen, params, seg, workdir, steps=40, **kw):
    alphas = {}
    for region in ("location", "image"):
        settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, steps=steps, batch_size=8,
                                              learning_rate=0.05, region=region, search_samples=64,
                                              train_samples=32, **kw)
        alphas[region] = search.search(gen, params, seg, None, settings, np.full(planted.UNITS, 2.0),
                                       np.full(planted.UNITS, 0.5), os.path.join(workdir, region))
    return alphas


def test_location_search_finds_the_drawing_unit_where_the_image_objective_takes_the_global_one(off_grid, tmp_path):
    gen, params, seg = off_grid
    alphas = location_and_image_alphas(gen, params, seg, str(tmp_path))
    location_alpha, image_alpha = alphas["location"], alphas["image"]
    assert search.ranking(location_alpha, np.zeros(planted.UNITS))[0] == planted.PLANTED_UNIT
    assert location_alpha[planted.PLANTED_UNIT] > 0.9 and np.all(np.delete(location_alpha, planted.PLANTED_UNIT) < 0.2)
    assert image_alpha[planted.GLOBAL_UNIT] > 0.9                 # it turns the whole image into the class


class Killed(Exception):
    pass


def test_search_killed_and_resumed_equals_an_uninterrupted_run(off_grid, tmp_path, monkeypatch):
    gen, params, seg = off_grid
    settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, steps=8, batch_size=8,
                                          learning_rate=0.02, search_samples=64, train_samples=32,
                                          checkpoint_every=3)
    run = lambda workdir: search.search(gen, params, seg, None, settings, np.full(planted.UNITS, 2.0),
                                        np.linspace(0.2, 0.7, planted.UNITS), str(workdir))
    whole = run(tmp_path / "whole")
    save = search.Checkpoints.save

    def save_then_die(self, step, state):
        save(self, step, state)
        if step == 3:
            raise Killed()
    monkeypatch.setattr(search.Checkpoints, "save", save_then_die)
    with pytest.raises(Killed):
        run(tmp_path / "killed")
    monkeypatch.setattr(search.Checkpoints, "save", save)
    np.testing.assert_array_equal(run(tmp_path / "killed"), whole)
    assert 0 < whole.min() and whole.max() < 1                    # every unit still inside the clamp


def test_ranking_breaks_ties_by_iou_then_unit():
    alpha = np.array([0.0, 0.5, 0.0, 0.5, 0.0, 1.0, 0.0])
    iou = np.array([0.1, 0.2, 0.3, 0.2, 0.1, 0.0, 0.3])
    expect = sorted(range(len(alpha)), key=lambda u: (-alpha[u], -iou[u], u))
    assert list(search.ranking(alpha, iou)) == expect == [5, 1, 3, 2, 6, 0, 4]


DEVICE_SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
import jax, planted
from jaxdissect.causal import search
assert jax.device_count() == {devices}
gen, seg = planted.OffGridGenerator(), planted.PlantedSegmenter()
alphas = {{}}
for region in ("location", "image"):
    settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, steps=6, batch_size=8,
                                          learning_rate=0.05, region=region, search_samples=64,
                                          train_samples=32)
    alphas[region] = search.search(gen, gen.init(), seg, None, settings, np.full(planted.UNITS, 2.0),
                                   np.linspace(0.2, 0.7, planted.UNITS), {workdir!r} + region)
np.savez({out!r}, **alphas)
"""


def test_alpha_search_same_on_one_and_eight_devices(tmp_path):
    alphas = []
    for devices in (1, 8):
        out = tmp_path / f"alpha{devices}.npz"
        script = DEVICE_SCRIPT.format(tests=os.path.dirname(__file__), devices=devices,
                                      workdir=str(tmp_path / f"w{devices}"), out=str(out))
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
        alphas.append(dict(np.load(out)))
    for region in ("location", "image"):
        assert np.ptp(alphas[0][region]) > 0.1                     # the search moved alpha
        np.testing.assert_allclose(alphas[0][region], alphas[1][region], atol=1e-6)


def test_intervention_is_a_pytree():
    edit = insert(unit_indicator([0], 3), jnp.ones(3), jnp.ones((2, 2)))
    leaves = jax.tree.leaves(edit)
    assert len(leaves) == 3 and isinstance(edit, Intervention)


def test_held_out_evaluation_equals_brute_force_off_the_grid(off_grid):
    """The reference's evaluation of an alpha: each unit set ablated at the held-out present samples' cells
    (read there) and everywhere (the whole image), and inserted at the candidate cells, in hard pixels."""
    gen, params, seg = off_grid
    settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, batch_size=4, seed=SEED)
    none = np.zeros(0, np.int32)
    corpus = corpus_lib.Corpus(
        present_index=none, present_cell=none, candidate_index=none, candidate_cell=none,
        presence_value=np.zeros(planted.UNITS, np.float32), popularity=np.zeros(64),
        eval_present_index=np.array([1, 4, 6, 9, 11], np.int32), eval_present_cell=np.array([27, 10, 35, 44, 63]),
        eval_candidate_index=np.array([40, 43], np.int32), eval_candidate_cell=np.array([0, 18]))
    alpha = np.array([0.2, 0.3, 0.0, 0.9, 0.5, 0.6], np.float32)
    ranking = search.ranking(alpha, np.zeros(planted.UNITS))
    value = np.linspace(1.0, 2.5, planted.UNITS).astype(np.float32)
    got = location.evaluate(gen, params, seg, None, settings, alpha, ranking, value, corpus)
    sets = location.evaluation_sets(alpha, ranking)
    assert list(sets) == ["top_6", "top_6_weighted"] and got["present_samples"] == 5

    def share(featuremap):
        return cell_means(thing_pixels(gen, params, featuremap)).ravel()
    for name, w in sets.items():
        expect = {k: np.zeros(2) for k in ("ablated_cell", "ablated_image", "inserted_cell")}
        for n, c in zip(corpus.eval_present_index, corpus.eval_present_cell):
            r = featuremaps(gen, params, [n])[0]
            at_cell, everywhere = r.copy(), r * (1 - w)
            at_cell.reshape(64, -1)[c] *= 1 - w
            expect["ablated_cell"] += [share(r)[c], share(at_cell)[c]]
            expect["ablated_image"] += [share(r).mean(), share(everywhere).mean()]
        for n, c in zip(corpus.eval_candidate_index, corpus.eval_candidate_cell):
            r = featuremaps(gen, params, [n])[0]
            inserted = r.copy()
            inserted.reshape(64, -1)[c] = (1 - w) * r.reshape(64, -1)[c] + w * value
            expect["inserted_cell"] += [share(r)[c], share(inserted)[c]]
        for k, v in expect.items():
            np.testing.assert_allclose(got["unit_sets"][name][k], v / (2 if k == "inserted_cell" else 5),
                                       atol=1e-6, err_msg=(name, k))
    # The planted unit draws the thing: switching the units off at a present cell removes some of it.
    top = got["unit_sets"]["top_6"]
    assert top["ablated_cell"][1] < top["ablated_cell"][0] and top["ablated_image"][1] == 0
