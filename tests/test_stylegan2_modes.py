"""Every main.py mode on a StyleGAN2 folder: the small rosinality fixture (32x32, random noise) converted, a
tiny random segmenter, each mode run briefly; numbers checked against the model run in this process."""
import json
import os
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_helpers import run_main
from jaxdissect import parallel
from jaxdissect.models.load import load_generator
from jaxdissect.models.stylegan2_convert import convert
from jaxdissect.paint.masks import encode_mask
from jaxdissect.segmentation.segmenter import Segmenter
from test_paint import paint_server
from tiny_models import write_tiny_segmenter

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "stylegan2", "rosinality_small.pt")
LAYER, SEED, EVAL_SEED = "b16.conv0", 4, 6


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(dissection folder, models folder, the class studied): a finished dissection of b16.conv0."""
    root = tmp_path_factory.mktemp("stylegan2_modes")
    convert(FIXTURE, str(root / "gen"))
    write_tiny_segmenter(str(root / "seg"))
    outdir = str(root / "run")
    result = run_main("--mode=dissect", f"--generator={root / 'gen'}", f"--segmenter={root / 'seg'}",
                      f"--outdir={outdir}", f"--layers={LAYER},b32.conv1", "--samples=16", "--batch_size=8",
                      "--bins=32", "--top_k=2", "--report_images=1", f"--seed={SEED}")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "dissect.json")) as f:
        fractions = json.load(f)["class_pixel_fraction"]
    return outdir, str(root), max(fractions, key=fractions.get)


def test_dissect_and_report(study):
    outdir, root, _ = study
    generator, params = load_generator(os.path.join(root, "gen"))
    with open(os.path.join(outdir, "dissect.json")) as f:
        units = json.load(f)["layers"][LAYER]["unit"]
    z = parallel.latents(SEED, 0, 16, generator.latent_size)
    r = jax.jit(lambda p, z: generator.h(p, z, LAYER)[LAYER])(params, z)
    peaks = np.asarray(r).max(axis=(1, 2))
    assert len(units) == peaks.shape[1] == 20
    for unit in units:
        assert unit["top_samples"] == np.argsort(-peaks[:, unit["unit"]], kind="stable")[:2].tolist()
    result = run_main("--mode=report", f"--outdir={outdir}", "--readout=paper", "--report_images=1")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "dissect.json")) as f:
        assert json.load(f)["readout"] == "paper"


@pytest.fixture(scope="module")
def ace(study):
    outdir, _, class_name = study
    result = run_main("--mode=ace", f"--dissection={outdir}", f"--class_name={class_name}", f"--layer={LAYER}",
                      "--ace_steps=2", "--ace_batch_size=2", "--ace_search_samples=8", "--ace_train_samples=4", "--top_n=3")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "ace", class_name, "ace.json")) as f:
        return json.load(f)


def test_ace_ablate_insert_trace(study, ace):
    outdir, root, class_name = study
    assert ace["layer"] == LAYER and len(ace["alpha"]) == 20 and len(ace["causal_units"]) == 3
    ablate = ["--mode=ablate", f"--dissection={outdir}", f"--class_name={class_name}", "--ablate_counts=1,20",
              "--random_draws=1", "--eval_samples=4", "--batch_size=4", f"--eval_seed={EVAL_SEED}"]
    curves = {}
    for region in ("image", "location"):
        result = run_main(*ablate, f"--ablate_region={region}")
        assert result.returncode == 0, result.stderr
        with open(os.path.join(outdir, "ablate", class_name, "ablation.json")) as f:
            curves[region] = json.load(f)
    # n = 20 is every unit of the layer: the class pixels of f(0) with each sample's own latents.
    generator, params = load_generator(os.path.join(root, "gen"))
    segmenter, s_params = Segmenter.from_model_folder(os.path.join(root, "seg"))
    z = parallel.latents(EVAL_SEED, 0, 4, generator.latent_size)
    class_index = segmenter.labels.index(class_name)
    off_where = lambda mask: {LAYER: lambda r: r * (1 - mask[..., None])}
    class_mask = jax.jit(lambda p, s, z, mask: segmenter.class_score(s, generator(p, z, edits=off_where(mask))[0],
                                                                     class_index)[1])
    count = lambda off: int(jnp.sum(class_mask(params, s_params, z, jnp.full((4, 1, 1), off))))
    image = curves["image"]
    assert image["pixels_before"] == count(0.0)
    assert image["pixels_after"]["ace"][1] == image["pixels_after"]["iou"][1] == count(1.0)
    # One cell at a time: every cell the class touches zeroed on its own, its share read back.
    height, width = generator.featuremap_shape(LAYER)[:2]
    cell_shares = lambda mask: np.asarray(mask, np.float64).reshape(
        len(mask), height, mask.shape[1] // height, width, mask.shape[2] // width).mean(axis=(2, 4)).reshape(len(mask), -1)
    before = cell_shares(class_mask(params, s_params, z, jnp.zeros((4, 1, 1))))
    after = 0.0
    for i, cell in zip(*np.nonzero(before > 0)):
        one_cell = jax.nn.one_hot(cell, height * width).reshape(1, height, width)
        after += cell_shares(class_mask(params, s_params, z[i:i + 1], one_cell))[0, cell]
    location = curves["location"]
    assert location["present_cells"] == np.count_nonzero(before) > 0
    np.testing.assert_allclose(location["shares_before"], before.sum(), rtol=1e-6)
    np.testing.assert_allclose(location["shares_after"]["ace"][1], after, rtol=1e-6)
    np.testing.assert_allclose(location["curves"]["iou"][1], 1 - after / before.sum(), atol=1e-6)
    common = [f"--dissection={outdir}", f"--class_name={class_name}", "--context_samples=1", "--position_chunk=128",
              "--top_n=2"]
    result = run_main("--mode=insert", *common)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "insert", class_name, "insert.json")) as f:
        assert sum(g["positions"] for g in json.load(f)["by_context"]) == 16 * 16
    result = run_main("--mode=trace", *common)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "trace", class_name, "trace.json")) as f:
        trace = json.load(f)
    assert trace["layers"] == ["b16.conv1", "b32.conv0", "b32.conv1"] and trace["heatmap_layer"] == "b32.conv1"
    assert all(v > 0 for v in trace["all"])


def test_artifacts(study, tmp_path):
    outdir, _, _ = study
    np.save(tmp_path / "real.npy", np.random.default_rng(0).uniform(-1, 1, (8, 3, 32, 32)).astype(np.float32))
    (tmp_path / "units.json").write_text("[0, 5, 7]")
    result = run_main("--mode=artifacts", f"--dissection={outdir}", f"--layer={LAYER}",
                      f"--artifact_units={tmp_path / 'units.json'}", f"--reference={tmp_path / 'real.npy'}",
                      "--eval_samples=8", "--frechet_dims=2", "--artifact_random_sets=1", "--batch_size=4")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "artifacts", LAYER, "artifacts.json")) as f:
        report = json.load(f)
    assert report["units"] == [0, 5, 7] and report["frechet"]["original"] > 0
    assert report["frechet"]["ablated"] != report["frechet"]["original"]


def test_paint(study, ace):
    outdir, _, class_name = study
    with paint_server(outdir) as url:
        with urllib.request.urlopen(url + "/api/concepts", timeout=30) as response:
            concepts = json.load(response)
        assert {"name": class_name, "layer": LAYER, "n_units": 3, "origin": "ace"} in concepts
        images = []
        for strokes in ([], [{"mode": "remove", "concept": class_name, "strength": 1.0,
                              "mask": encode_mask(np.ones((32, 32), bool))}]):
            body = json.dumps({"sample": 1, "strokes": strokes}).encode()
            request = urllib.request.Request(url + "/api/render", body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                images.append(json.load(response)["image"])
    assert images[0] != images[1]


def test_generate_captures_featuremaps_and_styles(study, tmp_path):
    _, root, _ = study
    generator, params = load_generator(os.path.join(root, "gen"))
    z = parallel.latents(9, 0, 3, generator.latent_size)
    np.save(tmp_path / "z.npy", z)
    result = run_main("--mode=generate", f"--generator={root}/gen", f"--z={tmp_path / 'z.npy'}",
                      f"--out={tmp_path / 'out.npz'}", f"--capture={LAYER},b16.conv1.style", "--batch_size=2")
    assert result.returncode == 0, result.stderr
    image, captured = jax.jit(lambda p, z: generator(p, z, capture=(LAYER, "b16.conv1.style")))(params, z)
    out = np.load(tmp_path / "out.npz")
    assert out["b16.conv1.style"].shape == (3, *generator.featuremap_shape("b16.conv1.style")) == (3, 20)
    np.testing.assert_allclose(out["b16.conv1.style"], captured["b16.conv1.style"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[LAYER], np.transpose(captured[LAYER], (0, 3, 1, 2)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["image"], np.transpose(image, (0, 3, 1, 2)), rtol=0, atol=1e-5)
