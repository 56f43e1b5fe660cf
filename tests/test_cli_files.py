"""main.py's refusals on the shipped toy models: one-line errors for bad flags and inputs and for
file-system failures (missing, not a folder, read-only, full), nothing left half-written, no silent
overwrites. (generate -> segment on the toy models: tests/test_readme.py, which runs the README's.)"""
import contextlib
import os

import numpy as np
import pytest

from cli_helpers import REPO, assert_refused, listing, run_main, tmpfs

TOY = os.path.join(REPO, "weights", "toy")
GENERATOR, SEGMENTER = f"--generator={TOY}/generator", f"--segmenter={TOY}/segmenter"


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    folder = tmp_path_factory.mktemp("latents")
    z = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    np.save(folder / "z64.npy", z)
    z[1, 5] = np.nan
    np.save(folder / "nan.npy", z[:4])
    return folder


@contextlib.contextmanager
def read_only_folder(path):
    """An empty folder this user cannot write in: a read-only tmpfs as root, else mode 555."""
    if os.geteuid() == 0:
        with tmpfs(path, "ro,size=64k") as folder:
            yield folder
    else:
        os.makedirs(path)
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)


def test_bad_flags_and_inputs_are_one_line(latents, tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "labels.json").write_text('{"object": []}')
    np.save(tmp_path / "inf.npy", np.full((1, 3, 8, 8), np.inf, np.float32))
    z = f"--z={latents / 'z64.npy'}"
    cases = [
        (["--mode=dance"], ["unknown --mode=dance; modes: ablate, ace, artifacts, dissect, dissect_arrays, generate"]),
        (["--mode=dissect", "--samples=many"], ["flag --samples=many: invalid literal for int()"]),
        (["--mode=dissect", "--sample=10"], ["Unknown command line flag 'sample'"]),
        (["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={tmp_path}/run", "--layers="],
         ["--layers is empty"]),
        (["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={tmp_path}/run", "--min_iou=nan"],
         ["--min_iou=nan: must be a finite number"]),
        (["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={tmp_path}/run", "--layers=layer4,"],
         ["--layers=layer4,: has an empty item"]),
        (["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={tmp_path}/run", "layer4"],
         ["unexpected arguments: layer4"]),
        (["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={tmp_path}/a_file"],
         [f"--outdir={tmp_path}/a_file: {tmp_path}/a_file is not a folder"]),
        (["--mode=generate", GENERATOR, f"--z={latents / 'nan.npy'}", f"--out={tmp_path}/g.npz"],
         ["nan.npy: latent 1 holds nan"]),
        (["--mode=generate", GENERATOR, z, f"--out={tmp_path}/a_file/g.npz"],
         [f"--out={tmp_path}/a_file/g.npz: {tmp_path}/a_file is not a folder"]),
        (["--mode=generate", GENERATOR, z, f"--out={tmp_path}/g.npz", f"--png_dir={tmp_path}/a_file"],
         [f"--png_dir={tmp_path}/a_file: {tmp_path}/a_file is not a folder"]),
        (["--mode=generate", GENERATOR, z, f"--out={tmp_path}/labels.json"],
         ["labels.json: exists and is not a --mode=generate output; give --overwrite"]),
        (["--mode=segment", SEGMENTER, f"--images={tmp_path}/inf.npy", f"--out={tmp_path}/s.npz"],
         ["inf.npy: image 0 holds inf"]),
        (["--mode=segment", SEGMENTER, f"--images={tmp_path}/missing.npz", f"--out={tmp_path}/s.npz"],
         ["missing.npz: no such file"]),
    ]
    for args, fragments in cases:
        assert_refused(args, fragments, tmp_path)


def test_read_only_and_full_file_systems_are_one_line_and_leave_nothing(latents, tmp_path):
    z = f"--z={latents / 'z64.npy'}"
    with read_only_folder(tmp_path / "ro") as ro:
        assert_refused(["--mode=generate", GENERATOR, z, f"--out={ro}/g.npz"],
                       [f"--out={ro}/g.npz: cannot write in {ro}"], tmp_path)
        assert_refused(["--mode=dissect", "--flagfile=configs/toy.cfg", f"--outdir={ro}/run"],
                       [f"--outdir={ro}/run: cannot write in {ro}"], tmp_path)
        assert_refused(["--mode=report", f"--outdir={ro}"], [f"--outdir={ro}: cannot write in {ro}"], tmp_path)
    with tmpfs(tmp_path / "full", "size=128k") as full:
        assert_refused(["--mode=generate", GENERATOR, z, f"--out={full}/g.npz", f"--png_dir={full}/png"],
                       [f"{full}/png: No space left on device"], tmp_path)


def test_an_output_of_ours_is_replaced_and_a_foreign_one_only_with_overwrite(latents, tmp_path):
    np.savez(tmp_path / "g.npz", image=np.zeros((1, 3, 8, 8), np.float32))   # an older generate output
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "000099.png").write_text("an older run's")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "holiday.jpg").write_text("mine")
    z = f"--z={latents / 'z64.npy'}"
    pngs = [f"{i:06d}.png" for i in range(64)]
    done = run_main("--mode=generate", GENERATOR, z, f"--out={tmp_path}/g.npz", f"--png_dir={tmp_path}/png")
    assert done.returncode == 0, done.stderr[-3000:]
    assert listing(tmp_path / "png") == pngs
    assert_refused(["--mode=generate", GENERATOR, z, f"--out={tmp_path}/g.npz", f"--png_dir={tmp_path}/pictures"],
                   ["--png_dir", "holiday.jpg", "give --overwrite"], tmp_path)
    done = run_main("--mode=generate", GENERATOR, z, f"--out={tmp_path}/notes.txt", f"--png_dir={tmp_path}/pictures",
                    "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("g.npz", "notes.txt"):
        with np.load(tmp_path / name) as g:
            assert g["image"].shape == (64, 3, 64, 64)
    assert listing(tmp_path / "pictures") == pngs
    assert listing(tmp_path) == sorted(["g.npz", "notes.txt", "png", "pictures", *[f"png/{p}" for p in pngs],
                                        *[f"pictures/{p}" for p in pngs]])
