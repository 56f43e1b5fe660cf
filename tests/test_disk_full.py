"""A full disk (a real ENOSPC: a tmpfs with only so many bytes left) while main.py writes checkpoints or
outputs: exit code 2, one line naming the path, no traceback, and nothing half-written left behind."""
import errno
import os
import subprocess

import numpy as np
import pytest

from cli_helpers import PROGRESS, assert_one_line_error, assert_refused, full_disk, listing, run_main
from tiny_models import write_tiny_generator, write_tiny_segmenter

PAGE = os.sysconf("SC_PAGE_SIZE")
NO_SPACE = "No space left on device"


def pages(path):
    """The bytes a tmpfs allocates for the file `path`."""
    return -(-os.path.getsize(path) // PAGE) * PAGE


def contents(folder):
    """{path under `folder`: its bytes (None for a folder)}."""
    found = {}
    for name in listing(folder):
        path = os.path.join(folder, name)
        found[name] = None if os.path.isdir(path) else open(path, "rb").read()
    return found


def assert_one_line_failure(result, path):
    """Exit code 2, no traceback, and besides progress bars only 'error: PATH: No space left on device'."""
    assert_one_line_error(result, f"{path}: {NO_SPACE}")
    lines = [line for line in result.stderr.strip().splitlines()     # a '\r' progress update splits off ''
             if line.strip() and not PROGRESS.match(line)]
    assert lines == [f"error: {path}: {NO_SPACE}"], result.stderr


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_tiny_generator(str(root / "gen"))
    write_tiny_segmenter(str(root / "seg"))
    return [f"--generator={root / 'gen'}", f"--segmenter={root / 'seg'}"]


# Small statistics, a larger report (8 top samples of each of the 8 units, the default --report_images).
DISSECT = ["--mode=dissect", "--layers=layer4", "--samples=16", "--batch_size=8", "--bins=8", "--top_k=8"]


@pytest.fixture(scope="module")
def dissection(models, tmp_path_factory):
    outdir = str(tmp_path_factory.mktemp("dissection") / "run")
    result = run_main(*DISSECT, *models, f"--outdir={outdir}")
    assert result.returncode == 0, result.stderr
    return outdir


def test_dissect_stops_at_a_checkpoint_and_resumes_from_the_last_one_once_there_is_room(dissection, models, tmp_path):
    """Room for about two checkpoints (one per batch here): the run stops at a checkpoint that does not
    fit, keeps only finished ones (which survive depends on when the older are deleted), and resumes
    from the newest."""
    last = os.path.join(dissection, "checkpoints", max(os.listdir(os.path.join(dissection, "checkpoints")), key=int))
    one_checkpoint = sum(pages(os.path.join(root, name)) for root, _, names in os.walk(last) for name in names)
    command = [*DISSECT, *models, f"--outdir={tmp_path}/disk/run", "--checkpoint_every=1",
               "--checkpoint_minutes=0"]
    with full_disk(tmp_path / "disk", free=2 * one_checkpoint) as disk:
        assert_one_line_failure(run_main(*command), f"{disk}/run/checkpoints")
        kept = sorted(os.listdir(os.path.join(disk, "run", "checkpoints")), key=int)
        assert kept and set(kept) <= {"1", "2", "3"}, kept   # 1, 2: mid-calibration (8 of 16); 3: calibrated
        subprocess.run(["mount", "-o", "remount,size=64m", disk], check=True)
        again = run_main(*command)
        assert again.returncode == 0, again.stderr
        assert ("resuming at sample 8 of 16" in again.stderr) == (kept[-1] != "3"), (kept, again.stderr)


@pytest.mark.parametrize("failing", ["stats/layer4.npz", "report.html"])
def test_report_stops_at_each_output_and_keeps_the_previous_ones(dissection, tmp_path, failing):
    """--mode=report rewrites the statistics, dissect.json and report.html with the same sizes, each
    replacing its previous copy: room for the statistics, but not for the report, fails at the report."""
    npz, json_, html = (pages(os.path.join(dissection, name)) for name in ("stats/layer4.npz", "dissect.json",
                                                                          "report.html"))
    assert max(npz, json_) < html
    free = {"stats/layer4.npz": 0, "report.html": max(npz, json_)}[failing]
    with full_disk(tmp_path / "disk", free, holding=dissection) as disk:
        before = contents(disk)
        assert_one_line_failure(run_main("--mode=report", f"--outdir={disk}"),
                                f"{disk}/{failing}")
        assert contents(disk) == before


def test_ace_stops_at_a_checkpoint_of_its_search(dissection, tmp_path):
    with full_disk(tmp_path / "disk", free=3 * PAGE) as disk:     # the key, the training corpora, the metrics
        result = run_main("--mode=ace", f"--dissection={dissection}", f"--outdir={disk}/ace", "--class_name=tree",
                          "--ace_steps=2", "--ace_batch_size=2", "--ace_search_samples=8", "--ace_train_samples=4",
                          "--top_n=2")
        assert_one_line_failure(result, f"{disk}/ace/checkpoints")
        assert listing(disk) == ["ace", "ace/alpha_search_key.json", "ace/checkpoints", "ace/corpus.npz",
                                 "ace/metrics.jsonl"]


def test_generate_and_segment_outputs_are_not_half_written(models, tmp_path):
    z = tmp_path / "z.npy"
    np.save(z, np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((8, 3, 16, 16), np.float32))
    with full_disk(tmp_path / "disk", free=PAGE) as disk:
        assert_refused(["--mode=generate", models[0], f"--z={z}", f"--out={disk}/g.npz"],
                       [f"{disk}/g.npz: {NO_SPACE}"], disk)
        assert_refused(["--mode=segment", models[1], f"--images={images}", f"--out={disk}/s.npz"],
                       [f"{disk}/s.npz: {NO_SPACE}"], disk)


def test_a_metrics_line_that_does_not_fit_is_cut_back(tmp_path):
    from jaxdissect.io import files
    with full_disk(tmp_path / "disk", free=PAGE) as disk:
        path = os.path.join(disk, "metrics.jsonl")
        files.append_line(path, "x" * (PAGE - 100))
        with pytest.raises(OSError) as failure:
            files.append_line(path, "y" * 200)
        assert (failure.value.errno, failure.value.filename) == (errno.ENOSPC, path)
        assert open(path).read() == "x" * (PAGE - 100) + "\n"


def test_a_model_folder_that_does_not_fit_is_not_left(tmp_path, capfd):
    from jaxdissect.checkpoint import save_model
    params = {f"w{i}": np.zeros((64, 256 * (i + 1)), np.float32) for i in range(6)}   # several writes at once
    with full_disk(tmp_path / "disk", free=5 * PAGE) as disk:
        with pytest.raises(OSError) as failure:
            save_model(os.path.join(disk, "model"), params, {"kind": "test"})
        assert (failure.value.errno, failure.value.filename) == (errno.ENOSPC, os.path.join(disk, "model"))
        assert listing(disk) == []
    assert capfd.readouterr().err == ""   # orbax's threads logged nothing of it, nor met a closed event loop
