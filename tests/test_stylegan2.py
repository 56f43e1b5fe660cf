"""StyleGAN2: golden parity with both original codes, the h/f split, noise, and the converter's refusals.

Fixtures: tests/fixtures/stylegan2 (README there). Tolerances from the
fixtures' README section 6: float32 upstream is within 2.1e-6 of float64 on
the small models and 1.05e-5 on the 256x256 image.

Cost: 31 s of CPU for the file (68 s wall on the 2-core machine under load
average 11), mostly compiling; the 256x256 test alone 10 s.
"""
import dataclasses
import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import pth_writer as pw
import seeded_stylegan2
from jaxdissect.errors import UserError
from jaxdissect.intervention import ablate, unit_indicator
from jaxdissect.io import nvidia_pickle, pth
from jaxdissect.models import stylegan2
from jaxdissect.models.load import load_generator
from jaxdissect.models.stylegan2 import StyleGAN2
from jaxdissect.models.stylegan2_convert import (convert, expected_shapes, infer_architecture, nvidia_names,
                                                 params_from_state_dict)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "stylegan2")
SOURCES = {"rosinality": "rosinality_small.pt", "nvidia": "network-snapshot-small.pkl"}
ATOL, FULL_ATOL = 2e-5, 5e-5


def fixture(name):
    return os.path.join(FIXTURES, name)


def golden_key(fmt, name):
    """Our name (b8.conv0, b8.torgb.style, ...) as the golden of `fmt` stores it (fixtures README 3-5)."""
    base, style = (name[:-len(".style")], True) if name.endswith(".style") else (name, False)
    if fmt == "nvidia":
        return f"synthesis.{base}" + (".affine" if style else "")
    block, layer = base.split(".")
    level = int(np.log2(int(block[1:]))) - 3  # b8 -> 0
    if layer == "torgb":
        key = "to_rgb1" if block == "b4" else f"to_rgbs.{level}"
    else:
        key = "conv1" if block == "b4" else f"convs.{2 * level + int(layer[-1])}"
    return key + (".conv.modulation" if style else "")


def nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2)) if np.ndim(x) == 4 else np.asarray(x)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{format: (model, params)} of both small fixtures, run with the stored noise maps."""
    out = {}
    for fmt, name in SOURCES.items():
        dst = str(tmp_path_factory.mktemp(fmt) / "generator")
        convert(fixture(name), dst, noise="const")
        out[fmt] = load_generator(dst)
    return out


def max_error(fmt, model, params, psi):
    """{name: max |ours - golden|} over the image and, truncated, every layer and style."""
    golden = np.load(fixture(f"golden_{fmt}_small.npz"))
    model = dataclasses.replace(model, truncation_psi=psi)
    names = model.layer_names + model.style_names if psi != 1 else ()
    image, captured = jax.jit(lambda p, z: model(p, z, capture=names))(params, golden["z"])
    errors = {name: np.abs(nchw(captured[name]) - golden[golden_key(fmt, name)]).max() for name in names}
    errors["image"] = np.abs(nchw(image) - golden["image" if psi != 1 else "image_psi1"]).max()
    return errors


@pytest.mark.parametrize("psi", [0.7, 1.0])
@pytest.mark.parametrize("fmt", list(SOURCES))
def test_small_models_match_the_original_code(converted, fmt, psi):
    model, params = converted[fmt]
    errors = max_error(fmt, model, params, psi)
    assert len(errors) == (1 + 7 + 11 if psi != 1 else 1)  # the goldens hold layers of the truncated run only
    assert max(errors.values()) < ATOL, errors


def undemodulated_conv(x, kernel, style, up):
    y = stylegan2.conv(x * style[:, None, None, :], kernel, up)
    return stylegan2.blur(y, (1, 1)) if up else y


@pytest.mark.parametrize("variant", ["noise off", "demodulation off", "no clamp", "no truncation"])
def test_parity_fails_for_a_wrong_port(converted, monkeypatch, variant):
    """The parity test above catches a port that gets any of these wrong."""
    model, params = converted["nvidia"]
    golden = np.load(fixture("golden_nvidia_small.npz"))
    if variant == "noise off":
        model = dataclasses.replace(model, noise="none")
    elif variant == "demodulation off":
        monkeypatch.setattr(stylegan2, "modulated_conv", undemodulated_conv)
    elif variant == "no clamp":
        model = dataclasses.replace(model, conv_clamp=None)
    psi = 1.0 if variant == "no truncation" else 0.7
    image, _ = jax.jit(dataclasses.replace(model, truncation_psi=psi))(params, golden["z"])
    assert np.abs(nchw(image) - golden["image"]).max() > 100 * ATOL


def test_unclamped_nvidia_model_matches_image_noclamp(converted):
    model, params = converted["nvidia"]
    golden = np.load(fixture("golden_nvidia_small.npz"))
    image, _ = jax.jit(dataclasses.replace(model, conv_clamp=None, truncation_psi=0.7))(params, golden["z"])
    np.testing.assert_allclose(nchw(image), golden["image_noclamp"], rtol=0, atol=ATOL)


# ---------------------------------------------------------------- the full 256x256 configuration

def test_full_256_model_matches_the_original_code():
    """About 10 s: 0.5 s to regenerate the 30M weights, then compiling and running one image."""
    golden = np.load(fixture("golden_rosinality_full256.npz"))
    state_dict = nvidia_names(seeded_stylegan2.full_state_dict())
    state_dict["mapping.w_avg"] = golden["latent_avg"]
    model = StyleGAN2(512, 512, 8, seeded_stylegan2.CHANNELS, truncation_psi=0.7, noise="const")
    params = params_from_state_dict(state_dict, model)
    image, captured = jax.jit(lambda p, z: model(p, z, capture=("b8.conv1",)))(params, golden["z"])
    np.testing.assert_allclose(nchw(captured["b8.conv1"]), golden["convs.1"], rtol=0, atol=FULL_ATOL)
    np.testing.assert_allclose(nchw(image), golden["image"], rtol=0, atol=FULL_ATOL)


# ---------------------------------------------------------------- the generator API

def test_h_f_and_edits_agree_with_the_whole_generator(converted):
    model, params = converted["rosinality"]
    model = dataclasses.replace(model, noise="random", truncation_psi=0.7)
    z = np.load(fixture("golden_rosinality_small.npz"))["z"]
    layer, style = "b16.conv0", "b16.conv1.style"

    @jax.jit
    def run(params, z, edit):
        image, captured = model(params, z, capture=(layer,))
        r = model.h(params, z, (layer, style))
        edited, _ = model(params, z, edits={layer: edit})
        restyled, _ = model(params, z, edits={style: ablate(unit_indicator([1], 20))})
        return (image, captured[layer], r[layer], r[style], model.f(params, r[layer], layer, z),
                edited, model.f(params, edit(r[layer]), layer, z), restyled)

    edit = ablate(unit_indicator([0, 3], 20))
    image, captured, r, s, f_image, edited, f_edited, restyled = run(params, z, edit)
    np.testing.assert_array_equal(r, captured)
    assert r.shape == (3, *model.featuremap_shape(layer)) and s.shape == (3, *model.featuremap_shape(style))
    assert s.shape == (3, 20)
    np.testing.assert_allclose(f_image, image, rtol=0, atol=1e-6)
    np.testing.assert_allclose(f_edited, edited, rtol=0, atol=1e-6)
    assert np.abs(edited - image).max() > 1e-2 and np.abs(restyled - image).max() > 1e-2
    with pytest.raises(ValueError, match="unknown layer 'b16.torgb'"):
        jax.eval_shape(lambda params, z: model.h(params, z, "b16.torgb"), params, z)


def test_random_noise_depends_only_on_the_latent(converted):
    model, params = converted["nvidia"]
    z = np.load(fixture("golden_nvidia_small.npz"))["z"]
    run = jax.jit(lambda params, z, noise: dataclasses.replace(model, noise=noise)(params, z)[0],
                  static_argnums=2)
    together = run(params, z, "random")
    alone = run(params, np.concatenate([z[1:2], z[1:2], z[1:2]]), "random")
    np.testing.assert_allclose(alone[0], together[1], rtol=0, atol=1e-6)
    again = run(params, z[::-1], "random")
    np.testing.assert_allclose(again[::-1], together, rtol=0, atol=1e-6)
    assert np.abs(run(params, z, "const") - together).max() > 1e-2  # fresh maps, not the stored ones
    keys = jax.random.key_data(stylegan2.noise_keys(np.concatenate([z[:1], z])))
    assert (keys[0] == keys[1]).all() and not (keys[1] == keys[2]).all()


def test_converted_folder_records_the_architecture_and_options(tmp_path):
    meta = convert(fixture(SOURCES["nvidia"]), str(tmp_path / "g"), truncation_psi=0.5)
    on_disk = json.loads((tmp_path / "g" / "meta.json").read_text())
    assert on_disk == json.loads(json.dumps(meta))
    assert {k: on_disk[k] for k in ("kind", "z_dim", "w_dim", "mapping_layers", "channels", "conv_clamp",
                                    "truncation_psi", "noise", "resolution")} == {
        "kind": "stylegan2", "z_dim": 64, "w_dim": 64, "mapping_layers": 2, "channels": [32, 32, 32, 16],
        "conv_clamp": 1.5, "truncation_psi": 0.5, "noise": "random", "resolution": 32}
    assert [layer["name"] for layer in on_disk["layers"]] == [
        "b4.conv1", "b8.conv0", "b8.conv1", "b16.conv0", "b16.conv1", "b32.conv0", "b32.conv1"]
    assert on_disk["layers"][3]["shape"] == [16, 16, 32]
    assert on_disk["source"]["format"] == "nvidia" and on_disk["source"]["w_avg"] == "stored mapping.w_avg"
    assert on_disk["source"]["init_kwargs"]["synthesis_kwargs"] == {
        "channel_base": 512, "channel_max": 32, "num_fp16_res": 2, "conv_clamp": 1.5}
    model, _ = load_generator(str(tmp_path / "g"))
    assert model.latent_size == 64 and model.resolution == 32 and model.image_range == (-1.0, 1.0)


# ---------------------------------------------------------------- the converter's inputs and refusals

@pytest.mark.parametrize("config", ["stylegan2_1024", "paper256"])
def test_released_nvidia_layouts_are_understood(config):
    """The G_ema key/shape tables of NVIDIA's released configurations map onto the port exactly."""
    with open(fixture("released_nvidia_configs.json")) as f:
        spec = json.load(f)[config]
    shapes = {key: tuple(shape) for key, shape in spec["keys"]}
    z_dim, w_dim, mapping_layers, channels = infer_architecture(
        {key: np.broadcast_to(np.float32(0), shape) for key, shape in shapes.items()})
    assert (z_dim, w_dim, mapping_layers) == (512, 512, spec["G_kwargs"]["mapping_kwargs"]["num_layers"])
    assert channels == list(spec["channels"].values())
    model = StyleGAN2(z_dim, w_dim, mapping_layers, tuple(channels))
    assert model.num_ws == spec["num_ws"] and model.resolution == spec["G_kwargs"]["img_resolution"]
    assert expected_shapes(model) == {k: v for k, v in shapes.items() if not k.endswith("resample_filter")}


def rosinality_arrays():
    checkpoint = pth.load(fixture(SOURCES["rosinality"]))
    return checkpoint["g_ema"], checkpoint["latent_avg"]


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_rosinality_training_checkpoint_with_namespace(converted, tmp_path, layout):
    """train.py's checkpoints hold an argparse.Namespace, which torch's safe loader refuses; G is not used.
    Both torch.save layouts (zip, and the legacy one of torch < 1.6) are read."""
    g_ema, _ = rosinality_arrays()
    noisy_g = {k: v + np.float32(0.01) for k, v in g_ema.items()}
    args = pw.Build(pw.NewObject(pw.Global("argparse", "Namespace")), {"size": 32, "n_mlp": 2, "iter": 10})
    g = pw.OrderedDict({k: pw.contiguous(f"g{i}", v) for i, (k, v) in enumerate(noisy_g.items())})
    obj = {"g": g, "d": pw.OrderedDict({}), "g_ema": pw.state_dict(g_ema),
           "args": args, "ada_aug_p": 0.0}
    src = tmp_path / "000010.pt"
    src.write_bytes(pw.zip_bytes(obj) if layout == "zip" else pw.legacy_bytes(obj))
    meta = convert(str(src), str(tmp_path / "g"), noise="const")
    assert meta["source"]["w_avg"].startswith("computed: mean w of 4096 latents")
    model, params = load_generator(str(tmp_path / "g"))
    expected_model, expected = converted["rosinality"]
    for name in ("b4.conv1", "b32.torgb", "mapping"):
        jax.tree.map(np.testing.assert_array_equal, params["params"][name], expected["params"][name])
    # The computed average is close to the stored one (made the same way from other latents).
    assert np.abs(params["params"]["w_avg"] - expected["params"]["w_avg"]).max() < 0.1


def test_nvidia_pickle_g_ema_not_g(converted):
    """G differs from G_ema by 0.01 noise in the fixture: parity above already proves G_ema was read."""
    snapshot = nvidia_pickle.load(fixture(SOURCES["nvidia"]))
    g = nvidia_pickle.state_dict(snapshot["G"], "pkl")
    _, params = converted["nvidia"]
    assert np.abs(g["synthesis.b4.conv1.weight"].transpose(2, 3, 1, 0)
                  - params["params"]["b4.conv1"]["weight"]).max() > 1e-3


MARKER = "code_ran.txt"


def pickle_with_live_module_src(marker):
    """The real fixture pickle with its embedded networks.py replaced by code that writes `marker`
    (same byte length, so the pickle's frames stay valid)."""
    data = open(fixture(SOURCES["nvidia"]), "rb").read()
    start = data.find(b"# Copyright (c) 2021, NVIDIA")
    length = int.from_bytes(data[start - 4:start], "little")
    payload = f"open({str(marker)!r}, 'w').write('ran')\n".encode()
    payload += b"#" * (length - len(payload))
    return data[:start] + payload + data[start + length:]


class NvidiaLikeUnpickler(pickle.Unpickler):
    """What loading through NVIDIA's persistence module does with module_src: exec it."""

    def find_class(self, module, name):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return lambda meta: exec(meta["module_src"], {})
        if module.startswith(("collections", "numpy", "dnnlib")):
            return dict if name == "EasyDict" else super().find_class(module, name)
        return lambda *args: None


def test_embedded_code_is_never_run(tmp_path):
    marker = tmp_path / MARKER
    src = tmp_path / "network-snapshot-live.pkl"
    src.write_bytes(pickle_with_live_module_src(marker))
    NvidiaLikeUnpickler(open(src, "rb")).load()
    assert marker.exists()  # the payload is live under upstream-style loading
    marker.unlink()
    convert(str(src), str(tmp_path / "g"))  # the same tensors: converts, runs nothing
    assert not marker.exists()


def test_pickle_that_runs_code_on_load_is_refused(tmp_path):
    marker = tmp_path / MARKER
    payload = pw.Call(pw.Global("builtins", "exec"), (f"open({str(marker)!r}, 'w').write('ran')",))
    src = tmp_path / "evil.pkl"
    src.write_bytes(pw.pickle_bytes({"G_ema": payload}))
    pickle.loads(src.read_bytes())
    assert marker.exists()  # live under plain pickle
    marker.unlink()
    done = subprocess.run([sys.executable, os.path.join(REPO, "convert", "stylegan2.py"), "--src", str(src),
                           "--dst", str(tmp_path / "g")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {src}: refusing to load network pickle: it references the global builtins.exec, which a plain "
        "tensor checkpoint never needs (it could run code)"]
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == ["evil.pkl"]


@pytest.mark.parametrize("case", ["text", "no G_ema", "conditional", "kwargs disagree", "missing key",
                                  "wrong shape", "plain state dict", "tensorflow"])
def test_other_files_are_refused_in_one_line(tmp_path, monkeypatch, case):
    g_ema, latent_avg = rosinality_arrays()
    src = tmp_path / "model.pkl"
    if case == "text":
        src.write_text("hello")
        expected = "not a network pickle (nor a torch.save file)"
    elif case == "no G_ema":
        src.write_bytes(pickle.dumps({"G": 1}))
        expected = "not a stylegan2-ada network pickle (no G_ema network; found 'G')"
    elif case == "conditional":
        src.write_bytes(open(fixture(SOURCES["nvidia"]), "rb").read())
        kwargs = nvidia_pickle.Module.init_kwargs
        monkeypatch.setattr(nvidia_pickle.Module, "init_kwargs", lambda self: {**kwargs(self), "c_dim": 5})
        expected = "G_ema has c_dim = 5; only unconditional StyleGAN2 generators with c_dim = 0 are supported"
    elif case == "kwargs disagree":
        src.write_bytes(open(fixture(SOURCES["nvidia"]), "rb").read())
        kwargs = nvidia_pickle.Module.init_kwargs
        monkeypatch.setattr(nvidia_pickle.Module, "init_kwargs", lambda self: {**kwargs(self), "img_resolution": 64})
        expected = "constructor argument img_resolution=64, but the tensors are for 32"
    elif case == "missing key":
        del g_ema["conv1.noise.weight"]
        src.write_bytes(pw.zip_bytes({"g_ema": pw.state_dict(g_ema), "latent_avg": pw.contiguous("x", latent_avg)}))
        expected = "missing key 'synthesis.b4.conv1.noise_strength' (for channels [32, 24, 20, 16])"
    elif case == "wrong shape":
        g_ema["conv1.noise.weight"] = np.zeros((2,), np.float32)
        src.write_bytes(pw.zip_bytes({"g_ema": pw.state_dict(g_ema), "latent_avg": pw.contiguous("x", latent_avg)}))
        expected = "key 'synthesis.b4.conv1.noise_strength' has shape (2,), expected ()"
    elif case == "plain state dict":
        src.write_bytes(pw.zip_bytes(pw.state_dict({"layer1.conv.weight": np.zeros((2, 2), np.float32)})))
        expected = "no 'g_ema' generator in this checkpoint (it holds keys 'layer1.conv.weight')"
    else:
        src.write_bytes(pickle.dumps(0)[:2] + b"cdnnlib.tflib.network\nNetwork\n)\x81.")
        expected = ("a TensorFlow StyleGAN/StyleGAN2 pickle; convert it to PyTorch with "
                    "stylegan2-ada-pytorch's legacy.py first")
    with pytest.raises(UserError) as e:
        convert(str(src), str(tmp_path / "g"))
    assert str(e.value) == f"{src}: {expected}"
    assert os.listdir(tmp_path) == ["model.pkl"]
