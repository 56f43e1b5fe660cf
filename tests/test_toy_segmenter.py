"""Training the toy world's segmenter: the loss falls, a killed run resumes to the same weights,
the exported folder loads as a Segmenter, and the mIoU evaluation matches a brute-force count.

Training runs on a stand-in data source (blocks of class colours) that compiles in a
fraction of the toy world's time; the network, loss, augmentation and loop are the real ones.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.toyworld import evaluate, world
from jaxdissect.training import loop
from jaxdissect.training import segmenter as seg_train

RES = 32
N_CLASSES = len(world.CLASS_NAMES)
TINY = seg_train.SegmenterTrainConfig(
    depths=(1, 1, 1, 1), stem_width=8, base_width=8, fpn_dim=16, ppm_scales=(1,), input_size=RES,
    resolution=RES, batch_size=8, steps=12, learning_rate=1e-2, warmup_steps=1,
    checkpoint_every=4, log_every=4)
KILLED_AT = 8
PALETTE = np.random.default_rng(0).uniform(-0.9, 0.9, (N_CLASSES, 3)).astype(np.float32)


def colour_blocks(key, n):
    """Labels 1..10 on a 4x4 grid of 8-pixel blocks; each class painted its palette colour."""
    blocks = jax.random.randint(key, (n, 4, 4), 1, N_CLASSES)
    labels = jnp.repeat(jnp.repeat(blocks, RES // 4, axis=1), RES // 4, axis=2)
    return jnp.asarray(PALETTE)[labels], labels


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """TINY trained without interruption: (workdir, segmenter, state)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    segmenter, state = seg_train.train(TINY, workdir, colour_blocks, world.label_meta())
    return workdir, segmenter, state


def host(tree):
    return jax.tree.map(np.asarray, tree)


def test_training_lowers_the_loss_on_a_fixed_batch(straight_run):
    _, segmenter, trained = straight_run
    images, labels = colour_blocks(jax.random.PRNGKey(99), 16)

    def loss(state):
        v = state["variables"]
        return float(seg_train.batch_loss(segmenter, v["params"], v["batch_stats"], images, labels)[0])

    before, after = loss(seg_train.init_state(TINY, segmenter)), loss(trained)
    assert int(trained["step"]) == TINY.steps
    assert after < 0.9 * before, (before, after)


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_parameters(straight_run, tmp_path, monkeypatch):
    save = loop.Checkpoints.save

    def save_then_die(self, step, state):
        save(self, step, state)
        if step == KILLED_AT:
            raise Killed

    monkeypatch.setattr(loop.Checkpoints, "save", save_then_die)
    with pytest.raises(Killed):
        seg_train.train(TINY, str(tmp_path), colour_blocks, world.label_meta())
    monkeypatch.setattr(loop.Checkpoints, "save", save)
    assert loop.Checkpoints(str(tmp_path)).latest_step() == KILLED_AT
    _, resumed = seg_train.train(TINY, str(tmp_path), colour_blocks, world.label_meta())
    assert int(resumed["step"]) == TINY.steps
    jax.tree.map(np.testing.assert_array_equal, host(resumed), host(straight_run[2]))


@pytest.fixture(scope="module")
def exported(straight_run, tmp_path_factory):
    """The straight run exported as a model folder and loaded back: (folder, segmenter, params)."""
    _, segmenter, state = straight_run
    folder = str(tmp_path_factory.mktemp("export") / "segmenter")
    seg_train.export(TINY, segmenter, state, folder, world.label_meta(), "colour blocks")
    loaded, params = Segmenter.from_model_folder(folder)
    return folder, loaded, params


def test_exported_folder_loads_and_segments_like_the_trained_state(straight_run, exported):
    _, segmenter, state = straight_run
    folder, loaded, params = exported
    assert loaded == segmenter  # same network, label space and segsizes
    assert loaded.labels == world.CLASS_NAMES and loaded.segsizes == (RES,)
    plain, _ = Segmenter.from_model_folder(folder)
    assert plain.config == segmenter.config and plain.labels == world.CLASS_NAMES
    images, labels = colour_blocks(jax.random.PRNGKey(5), 3)
    maps = np.asarray(loaded.segment(params, images))
    assert maps.shape == (3, 1, RES, RES) and maps.dtype == np.int32
    assert maps.min() >= 0 and maps.max() < N_CLASSES
    np.testing.assert_array_equal(maps, np.asarray(segmenter.segment(state["variables"], images)))
    assert (maps[:, 0] == np.asarray(labels)).mean() > 1.5 / (N_CLASSES - 1)  # better than chance


def brute_force_iou(predicted, labels):
    iou = []
    for c in range(1, N_CLASSES):
        union = np.sum((predicted == c) | (labels == c))
        iou.append(np.sum((predicted == c) & (labels == c)) / union if union else np.nan)
    return np.array(iou)


def test_segmenter_miou_matches_brute_force_counts(exported):
    _, segmenter, params = exported
    n, batch, seed = 6, 4, 3
    result = evaluate.segmenter_miou(segmenter, params, seed, n=n, batch_size=batch, resolution=RES)
    predicted, labels = [], []
    for i in range(2):
        batch_images, batch_labels = world.render(evaluate.eval_batch_key(seed, i), batch, RES)
        predicted.append(np.asarray(segmenter.segment(params, batch_images))[:, 0])
        labels.append(np.asarray(batch_labels))
    expected = brute_force_iou(np.concatenate(predicted)[:n], np.concatenate(labels)[:n])
    assert list(result["iou"]) == list(world.CLASS_NAMES[1:])
    np.testing.assert_allclose(list(result["iou"].values()), expected, rtol=1e-12)
    assert result["miou"] == pytest.approx(np.nanmean(expected), rel=1e-12)
    assert 0.0 < result["miou"] < 1.0
