"""Report pieces: unit maps drawn as the dissection sees them, outlines, charts."""
import jax.numpy as jnp
import numpy as np

from jaxdissect.report import html, unit_images
from jaxdissect.segmentation.resample import resize_bilinear


def test_unit_map_upsampled_like_the_dissection():
    unit_map = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    expect = np.asarray(resize_bilinear(jnp.asarray(unit_map)[None, :, :, None], (64, 64)))[0, :, :, 0]
    np.testing.assert_allclose(unit_images.upsample(unit_map, (64, 64)), expect, atol=1e-6)


def test_outline_is_the_border_of_a_region():
    mask = np.zeros((7, 7), bool)
    mask[1:5, 2:6] = True
    border = mask.copy()
    border[2:4, 3:5] = False
    np.testing.assert_array_equal(unit_images.outline(mask), border)


def test_bar_chart_lists_every_label_with_its_count():
    svg = html.bar_chart([("tree", "object", 7), ("door", "part", 2)])
    assert svg.startswith("<svg") and "tree" in svg and ">7<" in svg and "door" in svg and ">2<" in svg
