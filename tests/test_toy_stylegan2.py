"""GAN training of a toy StyleGAN2 (--gan_arch=stylegan2): it learns, resumes bit for bit, and exports a
generator folder every mode loads."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

from cli_helpers import REPO, run_main
from jaxdissect import parallel
from jaxdissect.cli import train_toy
from jaxdissect.errors import UserError
from jaxdissect.models.load import load_generator
from jaxdissect.models.stylegan2 import StyleGAN2
from jaxdissect.models.stylegan2_convert import average_w
from jaxdissect.training import gan
from jaxdissect.training.loop import Checkpoints

TINY_SIZES = (8, 16, 8, 8)          # z and w of 8, channels at 4x4, 8x8, 16x16
SIZES_64 = "8,16,8,8,4,4"          # the same up to 64x64


def test_config_builds_a_stylegan2_with_the_flags_sizes():
    config = gan.GANConfig(sizes=TINY_SIZES, arch="stylegan2", mapping_layers=1)
    assert config.generator == StyleGAN2(z_dim=8, w_dim=8, mapping_layers=1, channels=(16, 8, 8))
    assert config.generator.resolution == 16
    assert tuple(config.discriminator.widths) == TINY_SIZES[1:]


def noise_images(key, n):
    """Stand-in real images: training here needs no toy world (whose renderer takes long to compile)."""
    return jax.random.uniform(key, (n, 16, 16, 3), minval=-1.0)


def test_training_moves_every_used_parameter_and_resumes_bit_for_bit(tmp_path):
    """3 steps: every generator parameter has moved except those random noise never reads (the stored noise
    maps) and the average w (set at export), every discriminator one has, the losses are finite; a run
    killed after its step-2 checkpoint and resumed reaches the same state bit for bit."""
    config = gan.GANConfig(sizes=TINY_SIZES, arch="stylegan2", mapping_layers=1, batch_size=4, steps=3,
                           r1_every=1, log_every=1, checkpoint_every=2)   # r1 at every step: one program
    start = jax.tree.map(np.array, gan.init_state(config))
    straight = gan.train(config, str(tmp_path / "straight"), noise_images)
    unchanged = {jax.tree_util.keystr(path) for path, a in jax.tree.leaves_with_path(start["g"])
                 if np.array_equal(a, leaf(straight["g"], path))}
    assert unchanged == {"['params']['w_avg']"} | {f"['params']['{name}']['noise_const']"
                                                    for name in config.generator.layer_names}, unchanged
    for path, a in jax.tree.leaves_with_path(start["d"]):
        assert not np.array_equal(a, leaf(straight["d"], path)), jax.tree_util.keystr(path)
    with open(tmp_path / "straight" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "d_real", "r1"))

    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "straight", killed)
    shutil.rmtree(killed / "checkpoints" / "3")
    assert os.listdir(killed / "checkpoints") == ["2"]
    resumed = gan.train(config, str(killed), noise_images)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(straight))


def test_a_run_stopped_early_exports_its_newest_checkpoint_when_rerun_to_that_step(tmp_path):
    """How the shipped toy StyleGAN2 was exported after its run was stopped: rerunning the command with
    --train_steps=the newest checkpoint's step trains nothing and writes that checkpoint's generator (its EMA
    weights, w_avg set) and discriminator, recording the step."""
    config = gan.GANConfig(sizes=TINY_SIZES, arch="stylegan2", mapping_layers=1, batch_size=4, steps=3,
                           r1_every=1, log_every=1, checkpoint_every=2)
    workdir = tmp_path / "stopped"
    gan.train(config, str(workdir), noise_images)
    shutil.rmtree(workdir / "checkpoints" / "3")                 # as if stopped after step 2's checkpoint
    saved = jax.device_get(Checkpoints(str(workdir)).restore(gan.init_state(config)))
    result = run_main("--mode=train_gan", "--gan_arch=stylegan2", "--gan_sizes=8,16,8,8", "--mapping_layers=1",
                      f"--workdir={workdir}", "--train_steps=2")
    assert result.returncode == 0, result.stderr
    assert os.listdir(workdir / "checkpoints") == ["2"]
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3]   # nothing trained, nothing logged
    generator, params = load_generator(str(workdir / "generator"))
    with open(workdir / "generator" / "meta.json") as f:
        assert json.load(f)["source"]["steps"] == 2
    for path, a in jax.tree.leaves_with_path(saved["g_ema"]):
        if jax.tree_util.keystr(path) != "['params']['w_avg']":
            np.testing.assert_array_equal(leaf(params, path), a)
    np.testing.assert_allclose(params["params"]["w_avg"], average_w(generator, params), rtol=1e-6)
    _, d_params = train_toy.trained_gan(str(workdir), gan.GANConfig(sizes=TINY_SIZES, arch="stylegan2",
                                                                    mapping_layers=1))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(d_params), saved["d"])


def leaf(tree, path):
    for key in path:
        tree = tree[key.key]
    return np.asarray(tree)


def test_a_64x64_export_generates_64x64_images_and_is_not_taken_for_a_proggan(tmp_path):
    """--train_steps=0 exports the initial networks, as a long run exports its own: a generator folder with
    w_avg set to the mean w."""
    workdir = str(tmp_path / "sg2")
    result = run_main("--mode=train_gan", "--gan_arch=stylegan2", f"--gan_sizes={SIZES_64}", "--mapping_layers=1",
                      f"--workdir={workdir}", "--train_steps=0")
    assert result.returncode == 0, result.stderr
    generator, params = load_generator(os.path.join(workdir, "generator"))
    assert generator == gan.GANConfig(sizes=(8, 16, 8, 8, 4, 4), arch="stylegan2", mapping_layers=1).generator
    w_avg = np.asarray(params["params"]["w_avg"])
    np.testing.assert_allclose(w_avg, average_w(generator, params), rtol=1e-6)
    assert np.abs(w_avg).max() > 0
    z = np.random.default_rng(0).standard_normal((2, generator.latent_size)).astype(np.float32)
    images, captured = jax.jit(lambda p, z: generator(p, z, capture=("b64.conv1",)))(params, z)
    assert images.shape == (2, 64, 64, 3) and np.all(np.isfinite(images))
    assert captured["b64.conv1"].shape == (2, 64, 64, 4)

    as_proggan = gan.GANConfig(sizes=(8, 16, 8, 8, 4, 4))
    with pytest.raises(UserError, match=re.escape("its generator is stylegan2 sizes [8, 16, 8, 8, 4, 4] with 1 "
                                                  "mapping layers, the flags ask for proggan sizes [8, 16, 8, 8, 4, 4]")):
        train_toy.trained_gan(workdir, as_proggan)


def test_the_shipped_toy_stylegan2_draws_64x64_scenes_with_the_proggans_unit_counts():
    """weights/toy/stylegan2/generator: a StyleGAN2 whose images are 64x64, finite and nominally in [-1, 1]
    (unclamped, as upstream: under 1% of the values beyond), and whose layers in configs/toy_stylegan2.cfg
    have the shapes of the toy ProGAN's layer4 and layer6, the layers they are compared with."""
    folder = os.path.join(REPO, "weights", "toy")
    generator, params = load_generator(os.path.join(folder, "stylegan2", "generator"))
    proggan, _ = load_generator(os.path.join(folder, "generator"))
    assert isinstance(generator, StyleGAN2) and generator.resolution == 64
    with open(os.path.join(REPO, "configs", "toy_stylegan2.cfg")) as f:
        flags = dict(line.strip().split("=", 1) for line in f if line.startswith("--"))
    assert flags["--generator"] == "weights/toy/stylegan2/generator"
    layers = flags["--layers"].split(",")
    assert [generator.featuremap_shape(name) for name in layers] == [proggan.featuremap_shape(name)
                                                                     for name in ("layer4", "layer6")]
    images, captured = generator(params, parallel.latents(1, 0, 8, generator.latent_size), capture=layers)
    images = np.asarray(images)
    assert images.shape == (8, 64, 64, 3) and np.all(np.isfinite(images))
    assert np.mean(np.abs(images) > 1) < 0.01
    assert [captured[name].shape[1:] for name in layers] == [generator.featuremap_shape(name) for name in layers]
