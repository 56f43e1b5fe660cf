"""The toy-world training modes through main.py (tiny settings), and that every mode is run by some test."""
import glob
import json
import os
import re

import jax
import numpy as np

from cli_helpers import REPO, run_main
from jaxdissect import cli
from jaxdissect.checkpoint import read_params
from jaxdissect.cli import all_modes  # noqa: F401  (registers the modes)
from jaxdissect.models.load import load_generator
from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.toyworld import world

TINY_GAN = ("--mode=train_gan", "--gan_sizes=16,16,8,8", "--train_batch_size=4")


def exported_step(folder):
    with open(os.path.join(folder, "meta.json")) as f:
        return json.load(f)["source"]["steps"]


def test_train_gan_resumes_to_the_same_weights_and_replaces_its_export(tmp_path):
    resumed, straight = str(tmp_path / "resumed"), str(tmp_path / "straight")
    first = run_main(*TINY_GAN, f"--workdir={resumed}", "--train_steps=2")
    assert first.returncode == 0, first.stderr
    assert exported_step(os.path.join(resumed, "generator")) == 2
    more = run_main(*TINY_GAN, f"--workdir={resumed}", "--train_steps=3")
    assert more.returncode == 0, more.stderr
    assert exported_step(os.path.join(resumed, "generator")) == 3          # the step-2 export was replaced
    assert exported_step(os.path.join(resumed, "discriminator")) == 3
    again = run_main(*TINY_GAN, f"--workdir={resumed}", "--train_steps=3")
    assert again.returncode == 0 and "holds step 3 already" in again.stdout, again.stdout
    assert run_main(*TINY_GAN, f"--workdir={straight}", "--train_steps=3").returncode == 0

    for name in ("generator", "discriminator"):
        a = read_params(os.path.join(resumed, name, "params"))
        b = read_params(os.path.join(straight, name, "params"))
        jax.tree.map(np.testing.assert_array_equal, a, b)
    generator, params = load_generator(os.path.join(resumed, "generator"))
    images, _ = generator(params, np.zeros((2, generator.latent_size), np.float32))
    assert images.shape == (2, 16, 16, 3) and np.all(np.isfinite(images))
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f][-1] == 3


def test_train_segmenter_exports_a_segmenter_the_library_loads(tmp_path):
    workdir = str(tmp_path / "seg")
    result = run_main("--mode=train_segmenter", f"--workdir={workdir}", "--train_steps=2", "--train_batch_size=4",
                      "--seg_fpn_dim=8", "--seg_ppm_scales=1,2", "--seg_input_size=32")
    assert result.returncode == 0, result.stderr
    assert exported_step(os.path.join(workdir, "segmenter")) == 2
    segmenter, params = Segmenter.from_model_folder(os.path.join(workdir, "segmenter"))
    assert segmenter.labels == tuple(world.CLASS_NAMES)
    images, _ = world.render(jax.random.PRNGKey(0), 2, 64)
    labels = np.asarray(segmenter.segment(params, images))
    assert labels.shape == (2, 1, 64, 64) and labels.min() >= 0 and labels.max() < len(world.CLASS_NAMES)


def test_every_mode_is_run_through_main_by_some_test():
    run = set()
    for path in glob.glob(os.path.join(REPO, "tests", "*.py")):
        with open(path) as f:
            run.update(re.findall(r"--mode=([a-z_]+)", f.read()))
    assert set(cli.MODES) <= run, sorted(set(cli.MODES) - run)
