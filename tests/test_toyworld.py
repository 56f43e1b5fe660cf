"""The toy world: determinism, shapes, class balance and the layout rules, checked on rendered labels."""
import json

import jax
import numpy as np
import pytest

from jaxdissect import toyworld
from jaxdissect.toyworld.preview import preview_grid
from jaxdissect.toyworld.world import BUILDING, CLOUD, DOOR, GRASS, ROAD, SKY, TREE, WINDOW

BATCH = 256
RES = 64


@pytest.fixture(scope="module")
def key():
    return jax.random.PRNGKey(7)


@pytest.fixture(scope="module")
def batch(key):
    images, labels = toyworld.render(key, BATCH, RES)
    return np.asarray(images), np.asarray(labels)


@pytest.fixture(scope="module")
def layouts(key):
    return jax.tree.map(np.asarray, toyworld.sample_layouts(key, BATCH, RES))


draw = jax.jit(toyworld.draw_layouts, static_argnames="resolution")


def test_label_meta_is_json_and_matches_classes():
    meta = json.loads(json.dumps(toyworld.label_meta()))
    assert meta["names"] == list(toyworld.CLASS_NAMES)
    assert meta["categories"] == list(toyworld.CATEGORIES)
    assert meta["names"][0] == "-" and meta["categories"][0] == ""
    parts = {n for n, c in zip(meta["names"], meta["categories"]) if c == "part"}
    assert parts == {"roof", "dome", "door", "window"}
    assert set(meta["categories"][1:]) == {"object", "part"}


def test_shapes_dtypes_and_range(batch):
    images, labels = batch
    assert images.shape == (BATCH, RES, RES, 3) and images.dtype == np.float32
    assert labels.shape == (BATCH, RES, RES) and labels.dtype == np.int32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels.min() >= 1 and labels.max() < len(toyworld.CLASS_NAMES)  # '-' is never drawn
    assert images.std() > 0.2  # not a flat image


def test_deterministic_from_key(key, batch):
    images, labels = toyworld.render(key, BATCH, RES)
    np.testing.assert_array_equal(np.asarray(images), batch[0])
    np.testing.assert_array_equal(np.asarray(labels), batch[1])
    other_images, other_labels = toyworld.render(jax.random.fold_in(key, 1), BATCH, RES)
    assert (np.asarray(other_labels) != batch[1]).mean() > 0.2
    assert np.abs(np.asarray(other_images) - batch[0]).mean() > 0.1
    # Scenes in a batch differ from one another.
    assert (batch[1][0] != batch[1][1]).mean() > 0.05


def test_render_draws_the_sampled_layouts(layouts, batch):
    images, labels = draw(layouts, resolution=RES)
    np.testing.assert_array_equal(np.asarray(labels), batch[1])
    np.testing.assert_allclose(np.asarray(images), batch[0], atol=1e-6)


def test_every_class_appears_with_a_sane_share(batch):
    labels = batch[1]
    share = np.bincount(labels.ravel(), minlength=len(toyworld.CLASS_NAMES)) / labels.size
    bounds = {"sky": (0.25, 0.55), "grass": (0.2, 0.5), "cloud": (0.01, 0.1), "road": (0.01, 0.1),
              "tree": (0.02, 0.1), "building": (0.04, 0.2), "roof": (0.005, 0.05), "dome": (0.003, 0.05),
              "door": (0.005, 0.05), "window": (0.005, 0.05)}
    for name, (low, high) in bounds.items():
        value = share[toyworld.CLASS_NAMES.index(name)]
        assert low <= value <= high, (name, value)


def _rows(labels):
    return np.broadcast_to(np.arange(labels.shape[1])[None, :, None], labels.shape)


def test_sky_and_clouds_lie_above_the_ground_in_every_column(batch, layouts):
    labels = batch[1]
    rows = _rows(labels)
    upper = np.isin(labels, [SKY, CLOUD])
    ground = np.isin(labels, [GRASS, ROAD])
    lowest_upper = np.where(upper, rows, -1).max(axis=1)
    highest_ground = np.where(ground, rows, RES).min(axis=1)
    assert (lowest_upper < highest_ground).all()
    horizon = layouts["horizon"][:, None, None]
    assert (rows[upper] < np.broadcast_to(horizon, labels.shape)[upper]).all()
    assert (rows[ground] >= np.broadcast_to(horizon, labels.shape)[ground]).all()
    assert (labels == CLOUD).any(axis=(1, 2)).mean() > 0.5


def test_clouds_float_above_the_roofs_when_there_is_room(batch, layouts):
    labels = batch[1]
    b = layouts["buildings"]
    roof_top = np.where(b["present"], b["top"] - b["roof_height"], RES).min(axis=1)
    roomy = roof_top >= 14
    assert roomy.sum() > 50
    cloud_rows = np.where(labels == CLOUD, _rows(labels), -1).max(axis=(1, 2))
    assert (cloud_rows[roomy] < roof_top[roomy]).all()


def _wall_boxes(layouts, scene):
    b = layouts["buildings"]
    return [(b["x0"][scene, i], b["x1"][scene, i], b["top"][scene, i], b["base"][scene, i])
            for i in range(b["present"].shape[1]) if b["present"][scene, i]]


def _inside_any_box(ys, xs, boxes):
    inside = np.zeros(ys.shape, bool)
    for x0, x1, top, base in boxes:
        inside |= (xs >= x0) & (xs < x1) & (ys >= top) & (ys < base)
    return inside


def test_doors_and_windows_lie_on_walls(batch, layouts):
    labels = batch[1]
    b = layouts["buildings"]
    for scene in range(BATCH):
        walls = _wall_boxes(layouts, scene)
        doors = [(b["door_x0"][scene, i], b["door_x1"][scene, i], b["door_top"][scene, i], b["base"][scene, i])
                 for i in range(b["present"].shape[1]) if b["present"][scene, i]]
        for cls, boxes in ((DOOR, walls), (DOOR, doors), (WINDOW, walls)):
            ys, xs = np.nonzero(labels[scene] == cls)
            assert _inside_any_box(ys, xs, boxes).all(), (scene, cls)


def test_door_geometry(layouts):
    b = layouts["buildings"]
    present = b["present"]
    door_w = (b["door_x1"] - b["door_x0"])[present]
    door_h = (b["base"] - b["door_top"])[present]
    assert door_w.min() >= 4 and door_h.min() >= 6
    assert (b["door_x0"] >= b["x0"])[present].all() and (b["door_x1"] <= b["x1"])[present].all()
    assert (b["door_top"] > b["top"])[present].all()
    assert (b["window_w"] >= 3)[present].all() and (b["window_h"] >= 3)[present].all()
    width = (b["x1"] - b["x0"])[present]
    assert width.min() >= 14 and width.max() <= 30


def _isolate(layouts, kind, index):
    """The same scenes with every building and tree removed except `kind`[index]."""
    isolated = jax.tree.map(np.copy, layouts)
    for other in ("buildings", "trees"):
        keep = np.zeros_like(layouts[other]["present"])
        if other == kind:
            keep[:, index] = layouts[kind]["present"][:, index]
        isolated[other]["present"] = keep
    return isolated


@pytest.mark.parametrize("kind", ["buildings", "trees"])
def test_buildings_and_trees_stand_on_the_ground(layouts, kind):
    """Drawn alone, each object's lowest row is directly above ground pixels, below the horizon."""
    labels = np.asarray(draw(_isolate(layouts, kind, 0), resolution=RES)[1])
    object_classes = [TREE] if kind == "trees" else [BUILDING, DOOR]
    present = layouts[kind]["present"][:, 0]
    assert present.sum() > 50
    for scene in np.nonzero(present)[0]:
        mask = np.isin(labels[scene], object_classes)
        ys, xs = np.nonzero(mask)
        lowest = ys.max()
        assert lowest == layouts[kind]["base"][scene, 0] - 1
        assert lowest >= layouts["horizon"][scene]
        below = labels[scene, lowest + 1, xs[ys == lowest]]
        assert np.isin(below, [GRASS, ROAD]).all(), scene


def test_preview_grid_shape(batch):
    sheet = preview_grid(batch[0][:10], batch[1][:10], columns=4)
    assert sheet.shape == (3 * (RES + 2), 4 * (2 * RES + 2), 3) and sheet.dtype == np.uint8
    # The left copy is the image itself, converted back to 0-255.
    np.testing.assert_allclose(sheet[:RES, :RES], (batch[0][0] + 1) * 127.5, atol=0.51)
