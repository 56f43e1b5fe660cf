"""--mode=dissect_arrays: a user's own featuremaps and segmentations, through the dissection's engine."""
import json
import os

import numpy as np
import pytest

from cli_helpers import REPO, assert_one_line_error, run_main
from jaxdissect.errors import UserError
from jaxdissect.io import arrays

TOY = os.path.join(REPO, "weights", "toy")


def toy_arrays(tmp_path, samples, seed, layer, downsample):
    """The arrays of the dissection's samples 0..N-1 as a user gets them: `generate --capture` and `segment`
    through main.py, then assembled (featuremaps NCHW -> NHWC, the class names as `labels`)."""
    from jaxdissect import parallel
    np.save(tmp_path / "z.npy", parallel.latents(seed, 0, samples, 128))
    for args in (["--mode=generate", f"--generator={TOY}/generator", f"--z={tmp_path / 'z.npy'}",
                  f"--capture={layer}", f"--out={tmp_path / 'generated.npz'}", "--batch_size=32"],
                 ["--mode=segment", f"--segmenter={TOY}/segmenter", f"--images={tmp_path / 'generated.npz'}",
                  f"--downsample={downsample}", f"--out={tmp_path / 'classes.npz'}", "--batch_size=32"]):
        result = run_main(*args)
        assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "generated.npz") as generated, np.load(tmp_path / "classes.npz") as classes:
        return {layer: np.moveaxis(generated[layer], 1, -1), "images": generated["image"],
                "segmentation": classes["segmentation"], "labels": classes["names"],
                "categories": classes["categories"]}


def test_dissect_and_dissect_arrays_agree_on_the_same_samples(tmp_path):
    """The generator's own dissection and a dissection of its arrays (written by generate and segment) give
    the same dissect.json: the same labels, flags and top samples, numbers within 1e-5 (the featuremaps
    come from two different compiled programs, which may round their last bits differently)."""
    common = ["--layers=layer4", "--samples=64", "--batch_size=32", "--seed=3", "--downsample=2"]
    direct = run_main("--mode=dissect", f"--generator={TOY}/generator", f"--segmenter={TOY}/segmenter",
                      f"--outdir={tmp_path / 'direct'}", *common)
    assert direct.returncode == 0, direct.stderr
    path = tmp_path / "toy.npz"
    np.savez(path, **toy_arrays(tmp_path, 64, 3, "layer4", 2))
    from_arrays = run_main("--mode=dissect_arrays", f"--arrays={path}", f"--outdir={tmp_path / 'arrays'}",
                           *common)
    assert from_arrays.returncode == 0, from_arrays.stderr
    summaries = [json.load(open(tmp_path / name / "dissect.json")) for name in ("direct", "arrays")]
    for summary in summaries:
        summary["settings"].pop("seed")         # latents are the arrays' own business
    assert_same_up_to_rounding(summaries[0], summaries[1])
    assert sum(u["interpretable"] for u in summaries[0]["layers"]["layer4"]["unit"]) > 0
    report = open(tmp_path / "arrays" / "report.html").read()
    assert report.count("data:image/jpeg") > 0       # unit strips drawn from the arrays' images


def assert_same_up_to_rounding(a, b, where="dissect.json"):
    """Equal JSON values, floats within 1e-5."""
    assert type(a) is type(b) or {type(a), type(b)} <= {int, float}, where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_up_to_rounding(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_up_to_rounding(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-5, (where, a, b)
    else:
        assert a == b, (where, a, b)


def small_case(n=4):
    rng = np.random.default_rng(0)
    return {"layerA": rng.standard_normal((n, 2, 2, 3)).astype(np.float32),
            "segmentation": rng.integers(0, 3, (n, 1, 4, 4)).astype(np.int32),
            "labels": np.array(["-", "a", "b"])}


@pytest.mark.parametrize("change,fragments", [
    (lambda a: a.pop("segmentation"), ["no 'segmentation' array"]),
    (lambda a: a.pop("labels"), ["no 'labels' array"]),
    (lambda a: a.update(segmentation=a["segmentation"][:, 0]), ["'segmentation'", "(N, K, H, W) integers"]),
    (lambda a: a.update(segmentation=a["segmentation"].astype(np.float32)), ["'segmentation'", "integers"]),
    (lambda a: a.update(layerA=a["layerA"][:3]), ["'layerA'", "N = 4"]),
    (lambda a: a.update(layerA=a["layerA"].astype(np.int32)), ["'layerA'", "floats"]),
    (lambda a: a["segmentation"].__setitem__((1, 0, 0, 0), 3), ["values outside 0..2"]),
    (lambda a: a["layerA"].__setitem__((2, 0, 0, 0), np.nan), ["'layerA'", "NaN", "first in row 2"]),
    (lambda a: a.update(categories=np.array(["x", "y"])), ["'categories'", "3 names"]),
    (lambda a: a.update(images=np.zeros((4, 1, 4, 4), np.float32)), ["'images'", "(N, 3, H, W)"]),
    (lambda a: a.update(labels=np.array(["-"])), ["'labels'", "at least 2"]),
])
def test_bad_arrays_are_refused_in_one_line(tmp_path, change, fragments):
    case = small_case()
    change(case)
    path = tmp_path / "bad.npz"
    np.savez(path, **case)
    with pytest.raises(UserError) as error:
        arrays.open_arrays(str(path))
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_uncompressed_npz_and_npy_folders_are_memory_mapped(tmp_path):
    case = small_case()
    np.savez(tmp_path / "plain.npz", **case)
    np.savez_compressed(tmp_path / "packed.npz", **case)
    (tmp_path / "folder").mkdir()
    for name, value in case.items():
        np.save(tmp_path / "folder" / f"{name}.npy", value)
    plain, packed, folder = (arrays.open_arrays(str(tmp_path / name)) for name in ("plain.npz", "packed.npz",
                                                                                   "folder"))
    assert isinstance(plain.layers["layerA"], np.memmap) and isinstance(folder.layers["layerA"], np.memmap)
    for opened in (plain, packed, folder):
        np.testing.assert_array_equal(opened.layers["layerA"], case["layerA"])
        np.testing.assert_array_equal(opened.segmentation, case["segmentation"])
        assert opened.labels == ("-", "a", "b") and opened.categories == ("object",) * 3


def test_cli_refusals_are_one_line_and_leave_nothing(tmp_path):
    case = small_case()
    case["layerA"][0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", **case)
    outdir = tmp_path / "out"
    assert_one_line_error(run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'bad.npz'}",
                                   f"--outdir={outdir}"), "'layerA'", "NaN or infinite")
    assert not outdir.exists()
    np.savez(tmp_path / "good.npz", **small_case())
    assert_one_line_error(run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'good.npz'}",
                                   f"--outdir={outdir}", "--layers=layerB"), "no array 'layerB'", "layerA")
    assert_one_line_error(run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'good.npz'}",
                                   f"--outdir={outdir}", "--samples=5"), "--samples=5", "only 4")
    assert_one_line_error(run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'missing.npz'}",
                                   f"--outdir={outdir}"), "--arrays=", "no such file")
    assert_one_line_error(run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'good.npz'}",
                                   f"--outdir={tmp_path}"), "holds files that are not a dissection's")


def test_statistics_of_an_older_version_are_refused_in_one_line(tmp_path):
    """Statistics saved with equal-width bins (no `cell_bin` table) cannot be relabelled: one line."""
    np.savez(tmp_path / "good.npz", **small_case())
    outdir = tmp_path / "out"
    result = run_main("--mode=dissect_arrays", f"--arrays={tmp_path / 'good.npz'}", f"--outdir={outdir}",
                      "--batch_size=2", "--bins=8")
    assert result.returncode == 0, result.stderr
    stats_path = outdir / "stats" / "layerA.npz"
    with np.load(stats_path) as data:
        older = {name: data[name] for name in data.files if name != "cell_bin"}
    np.savez(stats_path, **older)
    assert_one_line_error(run_main("--mode=report", f"--outdir={outdir}", "--readout=paper"),
                          str(stats_path), "older jaxdissect")
