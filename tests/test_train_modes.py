"""The toy-world training modes through main.py (tiny settings), and that every mode is run by some test."""
import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_helpers import REPO, assert_one_line_error, run_main
from jaxdissect import cli
from jaxdissect.checkpoint import read_params
from jaxdissect.cli import all_modes, train_toy  # noqa: F401  (all_modes registers the modes)
from jaxdissect.errors import UserError
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


def test_train_gan_fine_tunes_from_a_model_folder(tmp_path):
    """--init_from starts from the folder's generator and discriminator: at step 0 the export equals them."""
    source, tuned = str(tmp_path / "source"), str(tmp_path / "tuned")
    assert run_main(*TINY_GAN, f"--workdir={source}", "--train_steps=0", "--train_seed=5").returncode == 0
    start = run_main(*TINY_GAN, f"--workdir={tuned}", "--train_steps=0", f"--init_from={source}")
    assert start.returncode == 0, start.stderr
    for name in ("generator", "discriminator"):
        a = read_params(os.path.join(source, name, "params"))
        b = read_params(os.path.join(tuned, name, "params"))
        jax.tree.map(np.testing.assert_array_equal, a, b)
    more = run_main(*TINY_GAN, f"--workdir={tuned}", "--train_steps=1", f"--init_from={source}",
                    "--favour_classes=dome:3,door:2")
    assert more.returncode == 0, more.stderr
    assert exported_step(os.path.join(tuned, "generator")) == 1

    wider = run_main("--mode=train_gan", "--gan_sizes=16,16,8,4", "--train_batch_size=4",
                     f"--workdir={tmp_path / 'wider'}", "--train_steps=1", f"--init_from={source}")
    assert_one_line_error(wider, "--init_from", "[16, 16, 8, 8]", "[16, 16, 8, 4]")


def test_favour_classes_flag_is_checked():
    odds = train_toy.class_odds(["dome:3", "door:0.5"], world.CLASS_NAMES)
    assert odds[world.DOME] == 3 and odds[world.DOOR] == 0.5 and odds.count(1.0) == len(odds) - 2
    assert train_toy.class_odds([], world.CLASS_NAMES) is None
    for bad, fragment in (("moon:2", "unknown class 'moon'"), ("dome", "not CLASS:ODDS"),
                          ("dome:0", "must be positive")):
        with pytest.raises(UserError, match=fragment):
            train_toy.class_odds([bad], world.CLASS_NAMES)


def test_favoured_scenes_are_drawn_more_often():
    """A planted pool: 300 of 1,000 one-pixel 'scenes' show class 2. Drawing 100 with odds k for class 2
    picks them with the share of a weighted draw without replacement, computed here by simulation in numpy."""
    labels = np.ones((1000, 1, 1), np.int32)
    labels[:300] = 2
    odds = [1.0, 1.0, 1.0]

    def share(k, seed):
        odds[2] = k
        picked = np.asarray(world.favoured_picks(jax.random.PRNGKey(seed), jnp.asarray(labels), 100, odds))
        assert len(set(picked.tolist())) == 100
        return np.mean(labels[picked, 0, 0] == 2)

    rng = np.random.default_rng(0)
    for k in (1.0, 4.0, 0.25):
        weights = np.where(labels[:, 0, 0] == 2, k, 1.0)
        expected = np.mean([np.mean(labels[rng.choice(1000, 100, replace=False, p=weights / weights.sum()),
                                           0, 0] == 2) for _ in range(400)])
        measured = np.mean([share(k, seed) for seed in range(40)])
        assert abs(measured - expected) < 0.02, (k, measured, expected)


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
