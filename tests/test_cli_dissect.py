"""main.py --mode=dissect / report end to end on tiny random models, and its refusals."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from cli_helpers import assert_one_line_error, run_main  # noqa: E402
from tiny_models import write_tiny_generator, write_tiny_segmenter  # noqa: E402





@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_generator(str(root / "gen"))
    write_tiny_segmenter(str(root / "seg"))
    return str(root / "gen"), str(root / "seg")


@pytest.fixture(scope="module")
def dissection(models, tmp_path_factory):
    gen, seg = models
    outdir = str(tmp_path_factory.mktemp("run") / "out")
    result = run_main("--mode=dissect", f"--generator={gen}", f"--segmenter={seg}", f"--outdir={outdir}",
                      "--layers=layer2,layer4", "--samples=24", "--batch_size=8", "--bins=32", "--top_k=3",
                      "--min_iou=0.0", "--min_agreement=0.0")
    assert result.returncode == 0, result.stderr
    return outdir, result


def test_dissect_writes_every_output(dissection):
    outdir, result = dissection
    with open(os.path.join(outdir, "dissect.json")) as f:
        summary = json.load(f)
    assert list(summary["layers"]) == ["layer2", "layer4"]
    assert summary["layers"]["layer4"]["units"] == 8 and len(summary["layers"]["layer2"]["unit"]) == 16
    assert summary["settings"]["samples"] == 24
    assert sorted(os.listdir(os.path.join(outdir, "stats"))) == ["layer2.npz", "layer4.npz"]
    with open(os.path.join(outdir, "report.html")) as f:
        page = f.read()
    assert "unit 0" in page and "data:image/jpeg;base64," in page
    with open(os.path.join(outdir, "run.json")) as f:
        record = json.load(f)
    assert record["flags"]["samples"] == 24 and record["versions"]["jax"]
    assert "report.html" in result.stdout


def test_report_mode_relabels_from_saved_statistics(dissection):
    outdir, _ = dissection
    result = run_main("--mode=report", f"--outdir={outdir}", "--rule=quantile", "--quantile=0.9")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "dissect.json")) as f:
        settings = json.load(f)["settings"]
    assert settings["rule"] == "quantile" and settings["quantile"] == 0.9 and settings["samples"] == 24




def test_unknown_layer_lists_valid_ones(models, tmp_path):
    gen, seg = models
    result = run_main("--mode=dissect", f"--generator={gen}", f"--segmenter={seg}",
                      f"--outdir={tmp_path / 'x'}", "--layers=layer99")
    assert_one_line_error(result, "layer99", "layer1, layer2")
    assert not os.path.exists(tmp_path / "x")


def test_missing_and_unconverted_model_folders(models, tmp_path):
    gen, seg = models
    missing = run_main("--mode=dissect", f"--generator={tmp_path / 'nope'}", f"--segmenter={seg}",
                       f"--outdir={tmp_path / 'x'}")
    assert_one_line_error(missing, "nope", "no such model folder")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "weights.pth").write_bytes(b"not converted")
    unconverted = run_main("--mode=dissect", f"--generator={tmp_path / 'raw'}", f"--segmenter={seg}",
                           f"--outdir={tmp_path / 'x'}")
    assert_one_line_error(unconverted, "convert")


def test_outdir_of_another_run_is_refused(models, dissection):
    gen, seg = models
    outdir, _ = dissection
    result = run_main("--mode=dissect", f"--generator={gen}", f"--segmenter={seg}", f"--outdir={outdir}",
                      "--layers=layer2,layer4", "--samples=40", "--batch_size=8", "--bins=32", "--top_k=3")
    assert_one_line_error(result, "different dissection")


def test_unknown_mode():
    result = run_main("--mode=dance")
    assert result.returncode == 2 and "unknown --mode=dance" in result.stderr and "dissect" in result.stderr
