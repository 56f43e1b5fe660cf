"""The Segmenter: label numbering, merging, quad division, preprocessing and voting.

References: the upp wrapper's own outputs on seeded weights
(tests/fixtures/upernet: labelcats.json, wrapper_meta.json, golden_upp.npz,
golden_ade20k.npz), and brute-force numpy (flood fill, pooling loops).
"""
import collections
import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.checkpoint import save_model
from jaxdissect.cli.segment import read_images, segment_images
from jaxdissect.errors import UserError
from jaxdissect.segmentation import segmenter as seg
from jaxdissect.segmentation import resample, upernet
from jaxdissect.segmentation.labels import (PART_OWNERS, SEGDIVS, flat_label_space,
                                            flat_label_space_from_meta, upp_label_space)
from seeded_upernet import seeded_images, seeded_state_dicts
import cli_helpers

# predict_single_class goldens: tag -> class number (undivided numbering).
PSC_CLASSES = {"door": 137, "tree": 131, "sky": 11, "window": 163,
               "material_painted": 350, "part_roof": 366}


@pytest.fixture(scope="module")
def fixtures(fixtures_dir):
    return os.path.join(fixtures_dir, "upernet")


def _json(fixtures, name):
    with open(os.path.join(fixtures, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def labels_json(fixtures):
    return _json(fixtures, "labels.json")


@pytest.fixture(scope="module")
def golden_upp(fixtures):
    with np.load(os.path.join(fixtures, "golden_upp.npz")) as g:
        return dict(g)


@pytest.fixture(scope="module")
def golden_ade(fixtures):
    with np.load(os.path.join(fixtures, "golden_ade20k.npz")) as g:
        return dict(g)


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


def golden_head(golden, head, n_channels):
    """One head of the wrapper's probabilities as far as the merges and class scores
    read them (NHWC): its top probability at its argmax channel, the fixture's kept
    channels (those of the predict_single_class goldens), 0 elsewhere."""
    argmax = golden[f"inf_{head}_argmax"].astype(np.int64)
    probs = np.zeros((*argmax.shape, n_channels), np.float32)
    np.put_along_axis(probs, argmax[..., None], golden[f"inf_{head}_top"][..., None], axis=-1)
    if f"inf_{head}_channel_ids" in golden:
        probs[..., golden[f"inf_{head}_channel_ids"]] = nhwc(golden[f"inf_{head}_channels"])
    return probs


def golden_probabilities(golden, labels):
    """The wrapper's summed probabilities (one scale: the inference outputs), reduced as
    in `golden_head`: the same argmaxes and the same scores for the goldens' classes."""
    parts = tuple(golden_head(golden, f"part{k}_{owner}", len(labels["object_part"][owner]))
                  for k, owner in enumerate(PART_OWNERS))
    return {"object": golden_head(golden, "object", len(labels["object"])),
            "material": golden_head(golden, "material", len(labels["material"])), "part": parts}


@pytest.fixture(scope="module")
def upp_probs(golden_upp, labels_json):
    return golden_probabilities(golden_upp, labels_json)


def upp_config(labels_json):
    owners = sorted(labels_json["object_part"], key=labels_json["object"].index)
    return upernet.UPerNetConfig(
        "upp", n_object=len(labels_json["object"]), n_material=len(labels_json["material"]),
        n_scene=len(labels_json["scene"]),
        part_sizes=tuple(len(labels_json["object_part"][o]) for o in owners))


# ---------------------------------------------------------------------------
# Label spaces

@pytest.mark.parametrize("segdiv", SEGDIVS)
def test_upp_label_space_matches_wrapper(fixtures, labels_json, segdiv):
    space = upp_label_space(labels_json, segdiv)
    expected = _json(fixtures, "labelcats.json")[segdiv]
    meta = _json(fixtures, "wrapper_meta.json")[segdiv]
    assert [list(label) for label in space.labels] == expected["labelcats"]
    assert list(space.categories) == expected["categories"]
    assert space.num_classes == meta["num_classes"]
    assert space.divmult == meta["divmult"]
    assert list(space.owner_objects) == meta["objects_with_parts"]
    assert [list(p) for p in space.part_index] == [meta["part_index"][o] for o in PART_OWNERS]
    first_part = space.material_offset + space.n_material
    assert [space.labels[i][0] for i in range(first_part, space.num_classes)] == meta["part_names"]
    # The decoder's part channels are split by ascending owner object index.
    assert space.owner_slots == (0, 1, 2)
    assert space.decoder_part_sizes == (2, 24, 15, 13, 11)


def test_upp_owner_slots_follow_object_index_not_json_order(labels_json):
    """Renumbering the objects so that person comes first moves its part list first."""
    objects = list(labels_json["object"])
    sky, person = objects.index("sky"), objects.index("person")
    objects[sky], objects[person] = objects[person], objects[sky]
    space = upp_label_space(dict(labels_json, object=objects), "undivided")
    assert space.owner_objects == (person, 319, sky)
    assert space.owner_slots == (2, 1, 0)
    assert space.decoder_part_sizes == (15, 24, 2, 13, 11)


def test_upp_label_space_rejects_bad_labels(labels_json):
    with pytest.raises(UserError, match="segdiv"):
        upp_label_space(labels_json, "halves")
    with pytest.raises(UserError, match="object_part"):
        upp_label_space({k: v for k, v in labels_json.items() if k != "object_part"}, "quad")
    no_sky = {k: v for k, v in labels_json["object_part"].items() if k != "sky"}
    with pytest.raises(UserError, match="'sky'"):
        upp_label_space(dict(labels_json, object_part=no_sky), "quad")


def test_flat_label_space():
    ade = flat_label_space(["wall", "building", "sky"])
    assert ade.labels == (("-", "object"), ("wall", "object"), ("building", "object"),
                          ("sky", "object"))
    assert ade.channel_shift == 1 and ade.categories == ("object",)
    toy = flat_label_space_from_meta({"names": ["-", "sky", "door", "brick"],
                                      "categories": ["object", "object", "part", "material"]})
    assert toy.channel_shift == 0 and toy.num_classes == 4
    assert toy.labels[2] == ("door", "part")
    assert toy.categories == ("object", "part", "material")
    with pytest.raises(UserError, match="2 names but 1 categories"):
        flat_label_space(["-", "sky"], ["object"])


# ---------------------------------------------------------------------------
# Merging the golden probabilities

merge_upp = jax.jit(seg.merge_upp_segmentation, static_argnums=0)


@pytest.mark.parametrize("segdiv, key", [("undivided", "seg_undivided"), ("quad", "seg_quad")])
def test_upp_merge_reproduces_wrapper_segmentation(labels_json, upp_probs, golden_upp,
                                                   segdiv, key):
    out = np.asarray(merge_upp(upp_label_space(labels_json, segdiv), upp_probs))
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, golden_upp[key])


def test_upp_class_score_reproduces_predict_single_class(labels_json, upp_probs, golden_upp):
    space = upp_label_space(labels_json, "undivided")
    traces = []

    @jax.jit
    def score(probs, classnum):
        traces.append(1)
        return seg.upp_class_score(space, probs, classnum)

    for tag, classnum in PSC_CLASSES.items():
        s, mask = score(upp_probs, jnp.int32(classnum))
        np.testing.assert_allclose(np.asarray(s), golden_upp[f"psc_{tag}_score"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(mask), golden_upp[f"psc_{tag}_mask"])
    assert len(traces) == 1, "switching classes must not recompile"


def test_flat_merge_and_class_score(golden_ade):
    probs = {"object": nhwc(golden_ade["softmax_64_grid"])}
    space = flat_label_space([f"class_{i}" for i in range(150)])
    argmax = probs["object"].argmax(-1)
    out = np.asarray(seg.merge_flat_segmentation(space, probs))
    np.testing.assert_array_equal(out, (argmax + 1)[:, None])
    classnum = int(np.bincount(argmax.ravel()).argmax()) + 1
    s, mask = seg.flat_class_score(space, probs, jnp.int32(classnum))
    np.testing.assert_array_equal(np.asarray(s), probs["object"][..., classnum - 1])
    np.testing.assert_array_equal(np.asarray(mask), out[:, 0] == classnum)
    s, mask = seg.flat_class_score(space, probs, jnp.int32(0))
    assert not np.asarray(mask).any() and not np.asarray(s).any()


# ---------------------------------------------------------------------------
# Connected components and the quad division, against a flood fill

def flood_fill_components(labelmap):
    """Brute-force 8-connected equal-valued components, numbered in raster order."""
    h, w = labelmap.shape
    ids = np.zeros((h, w), np.int32)
    count = 0
    for i in range(h):
        for j in range(w):
            if labelmap[i, j] == 0 or ids[i, j]:
                continue
            count += 1
            ids[i, j] = count
            queue = collections.deque([(i, j)])
            while queue:
                y, x = queue.popleft()
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        v, u = y + dy, x + dx
                        if (0 <= v < h and 0 <= u < w and not ids[v, u]
                                and labelmap[v, u] == labelmap[y, x]):
                            ids[v, u] = count
                            queue.append((v, u))
    return ids, count


def quad_reference(objects, step):
    ids, count = flood_fill_components(objects)
    top_bottom, left_right = np.zeros_like(objects), np.zeros_like(objects)
    for c in range(1, count):  # the reference skips the last component
        ys, xs = np.nonzero(ids == c)
        vmid, hmid = (ys.min() + ys.max() + 1) // 2, (xs.min() + xs.max() + 1) // 2
        top_bottom[ys, xs] = objects[ys, xs] + np.where(ys < vmid, step, 3 * step)
        left_right[ys, xs] = objects[ys, xs] + np.where(xs < hmid, 2 * step, 4 * step)
    return top_bottom, left_right


def random_label_maps(rng, n, shape):
    dense = rng.integers(0, 3, (n // 2, *shape))
    sparse = (rng.random((n - n // 2, *shape)) < 0.35) * rng.integers(1, 3, (n - n // 2, *shape))
    return np.concatenate([dense, sparse]).astype(np.int32)


def serpentine(h, w):
    """One long snake of 1s whose far end is ~h*w/2 steps from its first pixel."""
    snake = np.zeros((h, w), np.int32)
    snake[::2] = 1
    for k, row in enumerate(range(1, h, 2)):
        snake[row, w - 1 if k % 2 == 0 else 0] = 1
    return snake


def test_connected_components_match_flood_fill():
    maps = list(random_label_maps(np.random.default_rng(0), 40, (12, 13)))
    checker = (np.indices((12, 13)).sum(0) % 2).astype(np.int32)
    maps += [checker, checker + 1]  # diagonal-only links; 1s and 2s interleaved
    diagonal = np.zeros((12, 13), np.int32)
    diagonal[np.arange(12), np.arange(12)] = 5
    diagonal[np.arange(11), np.arange(1, 12)] = 6
    maps.append(diagonal)
    ids, counts = jax.jit(jax.vmap(seg.connected_components))(jnp.asarray(np.stack(maps)))
    for m, got_ids, got_count in zip(maps, np.asarray(ids), np.asarray(counts)):
        want_ids, want_count = flood_fill_components(m)
        assert got_count == want_count
        np.testing.assert_array_equal(got_ids, want_ids)
    assert np.asarray(counts)[-3:].tolist() == [1, 2, 2]


def test_connected_components_long_chain():
    snake = serpentine(31, 17)
    ids, count = jax.jit(seg.connected_components)(jnp.asarray(snake))
    assert int(count) == 1
    np.testing.assert_array_equal(np.asarray(ids), snake)


def test_quad_channels_match_reference():
    maps = random_label_maps(np.random.default_rng(1), 20, (12, 13)) * 7
    tb, lr = jax.jit(jax.vmap(lambda m: seg.quad_channels(m, step=100)))(jnp.asarray(maps))
    for m, got_tb, got_lr in zip(maps, np.asarray(tb), np.asarray(lr)):
        want_tb, want_lr = quad_reference(m, 100)
        np.testing.assert_array_equal(got_tb, want_tb)
        np.testing.assert_array_equal(got_lr, want_lr)


# ---------------------------------------------------------------------------
# Preprocessing and the multi-scale vote

def test_upp_preprocess_is_bit_exact(labels_json, golden_upp):
    segmenter = seg.Segmenter.create(upp_config(labels_json), labels_json)
    x = jax.jit(segmenter.preprocess)(nhwc(seeded_images()))
    np.testing.assert_array_equal(np.asarray(x), nhwc(golden_upp["upp_input"]))


def test_ade_preprocess_matches(golden_ade):
    config = upernet.UPerNetConfig("ade20k", n_class=150)
    segmenter = seg.Segmenter.create(config, [f"class_{i}" for i in range(150)])
    x = np.asarray(jax.jit(segmenter.preprocess)(nhwc(seeded_images())))
    # XLA's float32 division is not always correctly rounded: allow one ulp.
    np.testing.assert_array_max_ulp(x, nhwc(golden_ade["ade_input"]), maxulp=1)


def area_average_loop(x, size):
    """AdaptiveAvgPool2d by its definition: plain means over
    rows floor(i*H/s)..ceil((i+1)*H/s)-1 and the same for columns; NHWC."""
    n, h, w, c = x.shape
    out = np.zeros((n, size, size, c))
    for i in range(size):
        for j in range(size):
            r0, r1 = (i * h) // size, -((-(i + 1) * h) // size)
            c0, c1 = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, i, j] = x[:, r0:r1, c0:c1].astype(np.float64).mean(axis=(1, 2))
    return out


def test_multiscale_vote_sums_area_averaged_scales(monkeypatch):
    """With a stand-in network that returns its input (zero-padded or cropped
    to seg_size), the vote is the sum of the pooled inputs over scales."""
    def fake_infer(config, params, x, seg_size):
        h, w = seg_size
        pad = max(0, h - x.shape[1]), max(0, w - x.shape[2])
        x = jnp.pad(x, ((0, 0), (0, pad[0]), (0, pad[1]), (0, 0)))
        return {"object": x[:, :h, :w] * params}

    monkeypatch.setattr(upernet, "infer", fake_infer)
    config = upernet.UPerNetConfig("ade20k", n_class=3)
    segsizes = (5, 4, 10, 3)
    segmenter = seg.Segmenter.create(config, ["a", "b", "c"], segsizes=segsizes)
    images = np.random.default_rng(2).uniform(-1, 1, (2, 10, 10, 3)).astype(np.float32)
    got = jax.jit(segmenter.probabilities, static_argnums=2)(2.0, images, 2)["object"]
    x = np.asarray(segmenter.preprocess(images))
    want = np.zeros((2, 5, 5, 3))
    for s in segsizes:
        pooled = x if s == 10 else area_average_loop(x, s)
        want[:, :min(s, 5), :min(s, 5)] += 2.0 * pooled[:, :5, :5]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-6)


def smooth_stand_in_network(config, params, x, seg_size):
    """A differentiable stand-in for upernet.infer: per-pixel softmax of a
    linear map of the pooled input; `params` holds one (3, n) matrix per head."""
    x = resample.adaptive_avg_pool(x, seg_size)
    head = lambda w: jax.nn.softmax(jnp.einsum("nhwc,ck->nhwk", x, w), axis=-1)
    return jax.tree.map(head, params)


def test_class_score_gradient_matches_finite_differences(monkeypatch, labels_json):
    monkeypatch.setattr(upernet, "infer", smooth_stand_in_network)
    segmenter = seg.Segmenter.create(upp_config(labels_json), labels_json, segsizes=(16, 12))
    rng = np.random.default_rng(3)
    weights = lambda n: (0.02 * rng.standard_normal((3, n))).astype(np.float32)
    params = {"object": weights(336), "material": weights(26),
              "part": tuple(weights(n) for n in segmenter.label_space.decoder_part_sizes)}
    images = rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    direction = rng.standard_normal(images.shape).astype(np.float32)

    def mean_score(images, classnum):
        return segmenter.class_score(params, images, classnum, downsample=2)[0].mean()

    gradient, value = jax.jit(jax.grad(mean_score)), jax.jit(mean_score)
    eps = 3e-3
    for classnum in (137, 350, 366, 11):  # object + building part, material, pure part, sky
        c = jnp.int32(classnum)
        analytic = float(np.sum(np.asarray(gradient(images, c)) * direction))
        numeric = (float(value(images + eps * direction, c))
                   - float(value(images - eps * direction, c))) / (2 * eps)
        assert analytic == pytest.approx(numeric, rel=1e-2), classnum


# ---------------------------------------------------------------------------
# End to end on the seeded upp weights

def test_segment_end_to_end_on_seeded_weights(fixtures, labels_json, golden_upp):
    """The wrapper's own run: segsizes [128] on 128x128 images, downsample 2.
    Pixels whose argmax gap is < 1e-4 may flip (README section 9)."""
    encoder_sd, decoder_sd = seeded_state_dicts(fixtures, "upp")
    space = upp_label_space(labels_json, "undivided")
    config = upernet.config_from_state_dicts("upp", encoder_sd, decoder_sd,
                                             space.decoder_part_sizes)
    params = upernet.params_from_state_dicts(config, encoder_sd, decoder_sd)
    segmenter = seg.Segmenter.create(config, labels_json, "undivided", segsizes=(128,))
    images = nhwc(seeded_images())

    out = np.asarray(segmenter.segment(params, images, downsample=2))
    stable = ~golden_upp["seg_fragile_gap_lt_1e-4"][:, None]
    assert out.shape == golden_upp["seg_undivided"].shape
    np.testing.assert_array_equal(np.where(stable, out, 0),
                                  np.where(stable, golden_upp["seg_undivided"], 0))

    score, mask = segmenter.class_score(params, images, jnp.int32(137), downsample=2)
    np.testing.assert_allclose(np.asarray(score), golden_upp["psc_door_score"], rtol=0, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(mask) & stable[:, 0],
                                  golden_upp["psc_door_mask"] & stable[:, 0])


# ---------------------------------------------------------------------------
# --mode=segment

def test_read_images(tmp_path):
    images = np.random.default_rng(4).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", images)
    np.testing.assert_array_equal(read_images(str(tmp_path / "good.npy")), images)
    # Any finite float images, as the original segmenter takes them (a generator without tanh overshoots).
    np.save(tmp_path / "f64.npy", images.astype(np.float64) * 3)
    assert read_images(str(tmp_path / "f64.npy")).dtype == np.float32
    np.testing.assert_array_equal(read_images(str(tmp_path / "f64.npy")), images * 3)
    np.savez(tmp_path / "generated.npz", image=images, layer4=images[:, :1])
    np.testing.assert_array_equal(read_images(str(tmp_path / "generated.npz")), images)
    np.save(tmp_path / "nhwc.npy", np.transpose(images, (0, 2, 3, 1)))
    np.save(tmp_path / "ints.npy", (images * 127).astype(np.int8))
    np.save(tmp_path / "nan.npy", np.where(images > 0.9, np.nan, images))
    np.savez(tmp_path / "several.npz", a=images)
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "text.npz").write_text("not numpy")
    cases = {"nhwc.npy": "shape (2, 8, 8, 3), expected (N, 3, H, W)", "ints.npy": "dtype int8",
             "nan.npy": "holds nan (every value must be finite)", "several.npz": "no 'image' array",
             "text.npy": "not a .npy", "text.npz": "not an .npz"}
    for name, fragment in cases.items():
        with pytest.raises(UserError) as e:
            read_images(str(tmp_path / name))
        assert fragment in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


def test_segment_images_batches_with_padding(monkeypatch):
    monkeypatch.setattr(upernet, "infer", smooth_stand_in_network)
    config = upernet.UPerNetConfig("ade20k", n_class=4)
    segmenter = seg.Segmenter.create(config, ["wall", "sky", "tree", "door"])
    params = {"object": np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)}
    images = np.random.default_rng(6).uniform(-1, 1, (5, 3, 12, 12)).astype(np.float32)
    out = segment_images(segmenter, params, images, batch_size=2, downsample=3)
    direct = segmenter.segment(params, np.transpose(images, (0, 2, 3, 1)), downsample=3)
    assert out.shape == (5, 1, 4, 4) and out.dtype == np.int32
    np.testing.assert_array_equal(out, np.asarray(direct))
    assert len(np.unique(out)) > 1 and out.min() >= 1


@pytest.fixture(scope="module")
def tiny_upp_dir(labels_json, tmp_path_factory):
    """A small random upp model folder (the real label space, narrow network)."""
    config = dataclasses.replace(upp_config(labels_json), depths=(1, 1, 1, 1), stem_width=8,
                                 base_width=8, fpn_dim=16)
    variables = upernet.init_params(config, jax.random.PRNGKey(7), (32, 32))
    dst = str(tmp_path_factory.mktemp("models") / "tiny_upp")
    save_model(dst, variables, {"kind": upernet.MODEL_KIND, "config": config.to_json(),
                                "labels": labels_json})
    return dst


def run_main(*args, devices=1):
    return cli_helpers.run_main("--mode=segment", *args, devices=devices, timeout=300)


def test_command_line_on_two_devices(tiny_upp_dir, fixtures, tmp_path):
    images = np.random.default_rng(8).uniform(-1, 1, (5, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "out" / "seg.npz"
    done = run_main(f"--segmenter={tiny_upp_dir}", f"--images={tmp_path / 'images.npy'}",
                    f"--out={out}", "--segdiv=quad", "--downsample=2", "--batch_size=3", devices=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(out.parent)) == ["seg.npz"]

    segmenter, params = seg.Segmenter.from_model_folder(tiny_upp_dir, "quad")
    direct = segmenter.segment(params, np.transpose(images, (0, 2, 3, 1)), downsample=2)
    with np.load(out) as saved:
        assert saved.files == ["segmentation", "names", "categories", "category_names"]
        assert saved["segmentation"].shape == (5, 5, 16, 16)
        np.testing.assert_array_equal(saved["segmentation"], np.asarray(direct))
        written = {name: saved[name].tolist() for name in saved.files[1:]}
    expected = _json(fixtures, "labelcats.json")["quad"]
    assert [list(pair) for pair in zip(written["names"], written["categories"])] == expected["labelcats"]
    assert written["category_names"] == expected["categories"]

    np.save(tmp_path / "ints.npy", np.zeros((2, 3, 8, 8), np.int32))
    done = run_main(f"--segmenter={tiny_upp_dir}", f"--images={tmp_path / 'ints.npy'}",
                    f"--out={tmp_path / 'bad.npz'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --images={tmp_path / 'ints.npy'}: dtype int32, expected float32 or float64")
    assert not (tmp_path / "bad.npz").exists()


def check_merges_in_shard_map(fixtures):
    """Run in a process with 2 devices: under a mesh with an Explicit batch
    axis, the merges run per device inside shard_map (the recipe for
    explicit meshes) and reproduce the goldens."""
    from jax.sharding import NamedSharding, PartitionSpec
    assert jax.device_count() == 2
    with open(os.path.join(fixtures, "labels.json")) as f:
        labels = json.load(f)
    space = upp_label_space(labels, "quad")
    with np.load(os.path.join(fixtures, "golden_upp.npz")) as g:
        golden = dict(g)
    mesh = jax.make_mesh((2,), ("batch",))
    batch = PartitionSpec("batch")
    with jax.set_mesh(mesh):
        probs = jax.device_put(golden_probabilities(golden, labels), NamedSharding(mesh, batch))
        merge = jax.shard_map(functools.partial(seg.merge_upp_segmentation, space),
                              in_specs=batch, out_specs=batch)
        np.testing.assert_array_equal(np.asarray(jax.jit(merge)(probs)), golden["seg_quad"])
        score = jax.shard_map(functools.partial(seg.upp_class_score, space),
                              in_specs=(batch, PartitionSpec()), out_specs=batch)
        s, mask = jax.jit(score)(probs, jnp.int32(137))
    np.testing.assert_array_equal(np.asarray(s), golden["psc_door_score"])
    np.testing.assert_array_equal(np.asarray(mask), golden["psc_door_mask"])


def test_merges_run_per_device_in_shard_map(fixtures):
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_segmenter; "
            "test_segmenter.check_merges_in_shard_map(sys.argv[2])")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__), fixtures],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
