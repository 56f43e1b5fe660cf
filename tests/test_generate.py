"""--mode=generate: latents validation, batching with padding, npz and PNG outputs, CLI."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdissect.cli.generate import generate, image_bytes, read_latents
from jaxdissect.errors import UserError
from jaxdissect.models.load import load_generator
from jaxdissect.models.proggan_convert import convert

import cli_helpers  # noqa: E402  (tests/ is on sys.path)



@pytest.fixture(scope="module")
def generator_dir(fixtures_dir, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("models") / "small")
    convert(os.path.join(fixtures_dir, "proggan", "small", "small_wrapped.pth"), dst)
    return dst


def latents(n, seed=5):
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def test_read_latents(tmp_path):
    good = tmp_path / "z.npy"
    np.save(good, latents(3).astype(np.float64))
    z = read_latents(str(good), 64)
    assert z.dtype == np.float32 and z.shape == (3, 64)
    np.testing.assert_array_equal(z, latents(3))
    np.save(tmp_path / "wrong_width.npy", latents(3)[:, :63])
    np.save(tmp_path / "one_dim.npy", latents(1)[0])
    np.save(tmp_path / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((3, 64), np.int32))
    np.savez(tmp_path / "several.npz", a=latents(3))
    (tmp_path / "text.npy").write_text("not numpy")
    cases = {"missing.npy": "no such file", "wrong_width.npy": "shape (3, 63), expected (N, 64)",
             "one_dim.npy": "shape (64,)", "empty.npy": "N >= 1", "ints.npy": "dtype int32",
             "several.npz": "several arrays", "text.npy": "not a .npy"}
    for name, fragment in cases.items():
        with pytest.raises(UserError) as e:
            read_latents(str(tmp_path / name), 64)
        assert fragment in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


def test_batches_with_padding_equal_one_batch(generator_dir):
    model, params = load_generator(generator_dir)
    z = latents(5)
    outputs = generate(model, params, z, capture=("layer4", "layer1"), batch_size=2)
    image, layers = jax.jit(lambda p, z: model(p, z, capture=("layer4", "layer1")))(params, z)
    assert set(outputs) == {"image", "layer4", "layer1"}
    assert outputs["layer4"].shape == (5, 64, 8, 8) and outputs["image"].dtype == np.float32
    np.testing.assert_allclose(outputs["image"], np.transpose(image, (0, 3, 1, 2)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs["layer4"], np.transpose(layers["layer4"], (0, 3, 1, 2)),
                               rtol=0, atol=1e-5)


def test_unknown_capture_layer_lists_the_valid_ones(generator_dir):
    model, params = load_generator(generator_dir)
    with pytest.raises(UserError) as e:
        generate(model, params, latents(2), capture=("layer9",))
    assert "'layer9'" in str(e.value) and "layer1, layer2" in str(e.value) and "output_32x32" in str(e.value)


def test_image_bytes():
    # (x + 1) / 2 * 255, clipped to [0, 255], rounded to nearest (ties to even).
    x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.5, 0.3], np.float32).reshape(1, 1, 1, 7)
    expected = [0, 0, 128, 191, 255, 255, 166]  # 127.5 -> 128, 191.25 -> 191, 165.75 -> 166
    assert image_bytes(np.repeat(x, 3, axis=1))[0, 0, :, 0].tolist() == expected


def run_main(*args):
    return cli_helpers.run_main("--mode=generate", *args, timeout=300)


def test_command_line(generator_dir, tmp_path):
    z = latents(3)
    np.save(tmp_path / "z.npy", z)
    out, pngs = tmp_path / "out" / "g.npz", tmp_path / "pngs"
    done = run_main(f"--generator={generator_dir}", f"--z={tmp_path / 'z.npy'}", f"--out={out}",
                    "--capture=layer4", "--batch_size=2", f"--png_dir={pngs}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(out.parent) == ["g.npz"]  # no temporary left beside it
    saved = np.load(out)
    model, params = load_generator(generator_dir)
    direct = generate(model, params, z, capture=("layer4",), batch_size=3)
    assert sorted(saved.files) == ["image", "layer4"]
    for name in saved.files:
        np.testing.assert_allclose(saved[name], direct[name], rtol=0, atol=1e-5, err_msg=name)
    assert sorted(os.listdir(pngs)) == ["000000.png", "000001.png", "000002.png"]
    for i in range(3):
        pixels = np.asarray(Image.open(pngs / f"{i:06d}.png"))
        assert pixels.shape == (32, 32, 3)
        # Bytes computed from the image in the npz (it may differ from `direct` by 1e-5).
        np.testing.assert_array_equal(pixels, image_bytes(saved["image"])[i])

    done = run_main(f"--generator={generator_dir}", f"--z={tmp_path / 'z.npy'}",
                    f"--out={tmp_path / 'bad.npz'}", "--capture=layer4,layer99")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: --capture: unknown layer 'layer99'; valid layers: layer1, layer2, layer3, "
        "layer4, layer5, layer6, layer7, layer8, output_32x32")
    assert not (tmp_path / "bad.npz").exists()
