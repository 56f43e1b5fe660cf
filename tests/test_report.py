"""Report pieces: unit maps drawn as the dissection sees them, outlines, charts, escaping."""
import re

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


def crafted_summary():
    """Two layers whose names, labels, categories and paths carry markup, with one unit each."""
    attack = '<script>alert(1)</script>'
    unit = {"unit": 0, "label": f"door{attack}", "category": f'part"><img src=x onerror=alert(2)>', "iou": 0.3,
            "iqr": 0.1, "agreement": 0.9, "threshold": 1.0, "interpretable": True,
            "runner_up": f"roof{attack}", "runner_up_score": 0.05}
    layer = {"units": 1, "interpretable_units": 1,
             "labels": {unit["label"]: {"category": unit["category"], "units": 1}}, "unit": [unit]}
    settings = {"samples": 10, "seed": 1, "readout": "reference", "rule": "iqr", "min_iou": 0.05, "min_iqr": 0.01,
                "min_agreement": 0.75, "downsample": 1}
    return {"settings": settings, "label_score": "max_iqr",
            "layers": {f"layer4{attack}": layer, "layer6": layer}}, attack


def test_report_escapes_input_texts_has_unique_ids_and_right_plurals():
    summary, attack = crafted_summary()
    page = html.render_report(summary, {}, {"generator": f"/models/{attack}"})
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert len(ids) == len(set(ids)) == 4, ids        # two layer headings, two unit cards
    assert "1 units" not in page
    assert "1 of 1 unit interpretable" in page and "0 units below the cut-offs" in page
    assert ": 1 unit</title>" in page
    assert "runner-up: roof&lt;script&gt;" in page and "(max IQR 0.050)" in page


def test_bar_chart_shrinks_to_its_container():
    svg = html.bar_chart([("tree", "object", 7)], width=900)
    assert re.search(r'<svg class="chart" width="900" height="\d+" viewBox="0 0 900 \d+"', svg), svg
    assert "svg.chart{max-width:100%;height:auto}" in html.STYLE
