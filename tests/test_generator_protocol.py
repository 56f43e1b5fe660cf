"""The generator protocol and the Flax adapter: around the ProGAN module the adapter equals the hand-written
split bit for bit; a user's DCGAN defined here is dissected, ablated and painted through main.py and the paint
module with no other code (`--generator=tests/test_generator_protocol.py:dcgan`)."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_main
from jaxdissect import parallel
from jaxdissect.intervention import Intervention, ablate, unit_indicator
from jaxdissect.models.flax_adapter import FlaxGenerator
from jaxdissect.models.proggan import ProGAN
from tiny_models import numpy_params, write_tiny_segmenter

SIZES = (16, 16, 16, 8, 8)        # a 32x32 ProGAN
LATENT = 16


# ---------------------------------------------------------------- a user's own generator

class Up(nn.Module):
    """Nearest 2x upsampling, 3x3 conv, ReLU."""
    features: int

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        x = jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")
        return nn.relu(nn.Conv(self.features, (3, 3))(x))


class DCGAN(nn.Module):
    """z (N, 16) -> 4x4x32 -> 8x8x16 -> 16x16x8 -> 32x32 RGB in [0, 1]."""

    @nn.compact
    def __call__(self, z):
        x = nn.relu(nn.Dense(4 * 4 * 32, name="project")(z)).reshape(-1, 4, 4, 32)
        x = Up(16, name="up8")(x)
        x = Up(8, name="up16")(x)
        x = Up(8, name="up32")(x)
        return nn.sigmoid(nn.Conv(3, (3, 3), name="to_rgb")(x))


DCGAN_LAYERS = ("up8", "up16")


def dcgan():
    """The factory main.py calls: (generator, params)."""
    generator = FlaxGenerator(DCGAN(), layers=DCGAN_LAYERS, latent_size=LATENT, image_range=(0.0, 1.0))
    return generator, generator.init(jax.random.key(0))


def dcgan_from_up16(params, r):
    """The DCGAN's layers after up16, written out by hand: an independent run-from-layer, images in [-1, 1]."""
    p = params["params"]
    x = Up(8).apply({"params": p["up32"]}, r)
    return nn.sigmoid(nn.Conv(3, (3, 3)).apply({"params": p["to_rgb"]}, x)) * 2 - 1


def dcgan_featuremaps(params, z):
    """Every submodule's output by Flax's own capture_intermediates (not the adapter's interception)."""
    image, state = DCGAN().apply(params, z, capture_intermediates=True, mutable=["intermediates"])
    return image, {name: values["__call__"][0] for name, values in state["intermediates"].items()
                   if name in DCGAN_LAYERS}


# ---------------------------------------------------------------- the adapter around the ProGAN module

@pytest.fixture(scope="module")
def proggan():
    split = ProGAN(SIZES)
    adapter = FlaxGenerator(split.module, layers=split.layer_names, latent_size=LATENT,
                            method=lambda module, z: module(z)[0])
    return split, adapter, numpy_params(split.init)


def everything(generator, params, z):
    """Featuremaps, images and edits of `generator`, each from its own jitted program."""
    units = unit_indicator([1, 4, 9], 16)
    cell = jnp.zeros((1, 8, 8)).at[:, 2:5, 3:6].set(1.0)
    inserted = Intervention(units, cell, jnp.full(16, 3.0))
    run = lambda fn, *args: jax.block_until_ready(jax.jit(fn)(params, *args))
    h = run(lambda p, z: generator.h(p, z, ("layer3", "layer4", "layer6")), z)
    out = {f"h {k}": v for k, v in h.items()}
    out["image"], captured = run(lambda p, z: generator(p, z, capture=("layer4", "layer7")), z)
    out.update({f"capture {k}": v for k, v in captured.items()})
    out["f"] = run(lambda p, r, z: generator.f(p, r, "layer4", z), h["layer4"], z)
    out["f capture"] = run(lambda p, r, z: generator.f(p, r, "layer4", z, capture=("layer6",))[1]["layer6"],
                           h["layer4"], z)
    out["ablated"] = run(lambda p, z: generator(p, z, edits={"layer4": ablate(units)})[0], z)
    out["inserted"] = run(lambda p, z: generator(p, z, edits={"layer4": inserted})[0], z)
    out["f ablated"] = run(lambda p, r, z: generator.f(p, ablate(units)(r), "layer4", z), h["layer4"], z)
    out["h after edit"] = run(lambda p, z: generator.h(p, z, "layer6", edits={"layer4": inserted})["layer6"], z)
    return out


def test_adapter_around_the_proggan_module_equals_the_hand_written_split_bit_for_bit(proggan):
    split, adapter, params = proggan
    assert adapter.layer_names == split.layer_names and adapter.resolution == split.resolution == 32
    assert [adapter.featuremap_shape(n) for n in split.layer_names] == [split.featuremap_shape(n)
                                                                         for n in split.layer_names]
    z = parallel.latents(5, 0, 4, LATENT)
    want, got = everything(split, params, z), everything(adapter, params, z)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert np.abs(want["ablated"] - want["image"]).max() > 1e-2
    assert np.abs(want["inserted"] - want["image"]).max() > 1e-2


def compiled_flops(fn, *args):
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_adapter_h_and_f_compute_only_their_part_under_jit(proggan):
    """The adapter traces the whole generator for h and f; XLA drops the unused part, so the compiled
    programs cost what the hand-written split's cost."""
    split, adapter, params = proggan
    z = parallel.latents(5, 0, 4, LATENT)
    r = split.h(params, z, "layer4")["layer4"]
    costs = {name: (compiled_flops(lambda p, z: g.h(p, z, "layer4")["layer4"], params, z),
                    compiled_flops(lambda p, r, z: g.f(p, r, "layer4", z), params, r, z),
                    compiled_flops(lambda p, z: g(p, z)[0], params, z))
             for name, g in (("split", split), ("adapter", adapter))}
    assert costs["adapter"] == costs["split"]
    h, f, whole = costs["split"]
    assert h < 0.2 * whole and f < whole


def test_adapter_refuses_what_it_cannot_dissect():
    with pytest.raises(ValueError, match=r"unknown layer 'up64'; the module's submodules: project, up8/Conv_0, "
                                         r"up8, up16/Conv_0, up16, up32/Conv_0, up32, to_rgb"):
        FlaxGenerator(DCGAN(), layers=("up64",), latent_size=LATENT)
    with pytest.raises(ValueError, match=r"layer 'project' returns shape \(1, 512\); a layer must return a "
                                         r"featuremap"):
        FlaxGenerator(DCGAN(), layers=("project",), latent_size=LATENT)
    with pytest.raises(ValueError, match=r"arrays of shape \(1, 3\); expected square NHWC RGB images"):
        FlaxGenerator(nn.Dense(3), layers=(), latent_size=LATENT)

    class Twice(nn.Module):
        @nn.compact
        def __call__(self, z):
            up = Up(3, name="up")
            return up(up(jnp.repeat(z.reshape(-1, 4, 4, 1), 3, axis=-1)))

    generator = FlaxGenerator(Twice(), layers=("up",), latent_size=LATENT)
    with pytest.raises(ValueError, match="'up' is called more than once per forward"):
        generator(generator.init(jax.random.key(0)), jnp.zeros((1, LATENT)))


# ---------------------------------------------------------------- a user's DCGAN, end to end

FACTORY = f"{os.path.join('tests', 'test_generator_protocol.py')}:dcgan"


@pytest.fixture(scope="module")
def dcgan_dissection(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcgan")
    write_tiny_segmenter(str(root / "seg"))
    outdir = str(root / "run")
    result = run_main("--mode=dissect", f"--generator={FACTORY}", f"--segmenter={root / 'seg'}",
                      f"--outdir={outdir}", "--layers=up16,up8", "--samples=24", "--batch_size=8", "--bins=32",
                      "--top_k=3", "--report_images=1", "--seed=4")
    assert result.returncode == 0, result.stderr
    return outdir, str(root)


def test_dcgan_dissection_reads_the_featuremaps_flax_captures(dcgan_dissection):
    outdir, _ = dcgan_dissection
    with open(os.path.join(outdir, "dissect.json")) as f:
        summary = json.load(f)
    assert list(summary["layers"]) == ["up16", "up8"]      # the order of --layers
    assert [summary["layers"][n]["units"] for n in ("up8", "up16")] == [16, 8]
    generator, params = dcgan()
    image, maps = dcgan_featuremaps(params, parallel.latents(4, 0, 24, LATENT))
    assert generator.resolution == image.shape[1] == 32
    for name in ("up8", "up16"):
        peaks = np.asarray(maps[name]).max(axis=(1, 2))                     # (24, U) peak per sample and unit
        for unit in summary["layers"][name]["unit"]:
            order = np.argsort(-peaks[:, unit["unit"]], kind="stable")[:3]
            assert unit["top_samples"] == order.tolist(), (name, unit["unit"])
            np.testing.assert_allclose(unit["top_peaks"], peaks[order, unit["unit"]], rtol=1e-5)
    assert os.path.isfile(os.path.join(outdir, "report.html"))


def test_dcgan_ablation_and_paint_equal_a_hand_written_split(dcgan_dissection):
    from jaxdissect.dissection.results import Dissection
    from jaxdissect.paint.concepts import Concept
    from jaxdissect.paint.painter import Painter, Stroke
    from jaxdissect.report.unit_images import to_bytes
    outdir, _ = dcgan_dissection
    generator, params = dcgan()
    dissection = Dissection(outdir)
    label = dissection.units("up16")[0]["label"]
    units = [int(u) for u in dissection.units_for(label, "up16")[:3]]
    z = parallel.latents(4, 0, 2, LATENT)
    _, maps = dcgan_featuremaps(params, z)
    want = dcgan_from_up16(params, ablate(unit_indicator(units, 8))(maps["up16"]))
    got, _ = jax.jit(lambda p, z: generator(p, z, edits={"up16": ablate(unit_indicator(units, 8))}))(params, z)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert np.abs(got - dcgan_from_up16(params, maps["up16"])).max() > 1e-3
    # GAN Paint: removing the concept over the whole image is the same ablation.
    painter = Painter(generator, params, [Concept(label, "up16", tuple(units), (1.0,) * 3, "dissection", "test")],
                      seed=4, max_strokes=2)
    painted = painter.render(1, [Stroke(0, "remove", 1.0, np.ones((32, 32), bool))])
    assert np.abs(painted.astype(int) - to_bytes(np.asarray(want[1]))).max() <= 1
    assert (painted != painter.render(1)).any()


def test_dcgan_ablate_mode_counts_the_segmenters_pixels(dcgan_dissection):
    from jaxdissect.segmentation.segmenter import Segmenter
    outdir, root = dcgan_dissection
    dissection_label = json.load(open(os.path.join(outdir, "dissect.json")))["layers"]["up16"]["unit"][0]["label"]
    result = run_main("--mode=ablate", f"--dissection={outdir}", f"--class_name={dissection_label}",
                      "--layer=up16", "--rankings=iou", "--ablate_counts=1,8", "--random_draws=1",
                      "--eval_samples=8", "--batch_size=8", "--eval_seed=6", "--ablate_region=image")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(outdir, "ablate", dissection_label, "ablation.json")) as f:
        curves = json.load(f)
    segmenter, s_params = Segmenter.from_model_folder(os.path.join(root, "seg"))
    _, params = dcgan()
    images, maps = dcgan_featuremaps(params, parallel.latents(6, 0, 8, LATENT))
    class_index = segmenter.labels.index(dissection_label)
    count = lambda x: int(np.sum(segmenter.class_score(s_params, x, class_index)[1]))
    assert curves["pixels_before"] == count(images * 2 - 1)
    all_off = dcgan_from_up16(params, jnp.zeros_like(maps["up16"]))          # n = 8: every unit of up16
    assert curves["pixels_after"]["iou"][1] == count(all_off)


def test_factory_refusals_are_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("def not_a_pair():\n    return 3\n\n"
                                     "def not_a_generator():\n    return object(), {}\n\n"
                                     "def unknown_layer():\n"
                                     f"    import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
                                     "    from jaxdissect.models.flax_adapter import FlaxGenerator\n"
                                     "    from test_generator_protocol import DCGAN\n"
                                     "    return FlaxGenerator(DCGAN(), layers=('up64',), latent_size=16), {}\n")
    for spec, fragment in ((f"{tmp_path / 'nope.py'}:make", "cannot import"),
                           ("no_such_package.gans:make", "cannot import no_such_package.gans"),
                           (f"{tmp_path / 'bad.py'}:make", "has no function 'make'"),
                           (f"{tmp_path / 'bad.py'}:not_a_pair", "must return (generator, params); it returned a int"),
                           (f"{tmp_path / 'bad.py'}:not_a_generator", "the generator lacks latent_size, resolution"),
                           (f"{tmp_path / 'bad.py'}:unknown_layer", "unknown layer 'up64'")):
        result = run_main("--mode=generate", f"--generator={spec}", f"--z={tmp_path / 'z.npy'}",
                          f"--out={tmp_path / 'out.npz'}")
        assert_one_line_error(result, f"--generator={spec}", fragment)


def test_generate_mode_runs_the_factory(tmp_path):
    z = parallel.latents(9, 0, 3, LATENT)
    np.save(tmp_path / "z.npy", z)
    result = run_main("--mode=generate", f"--generator={FACTORY}", f"--z={tmp_path / 'z.npy'}",
                      f"--out={tmp_path / 'out.npz'}", "--capture=up8")
    assert result.returncode == 0, result.stderr
    generator, params = dcgan()
    image, maps = dcgan_featuremaps(params, z)
    out = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(out["image"], np.transpose(image * 2 - 1, (0, 3, 1, 2)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["up8"], np.transpose(maps["up8"], (0, 3, 1, 2)), rtol=0, atol=1e-6)
