"""The UPerNet converter (convert/upernet.py) and loader: round trips and refusals.

The .pth files are written with tests/pth_writer.py from small random state
dicts (the seeded full-size weights' key names are covered by test_upernet).
"""
import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import pth_writer as pw
from jaxdissect.errors import UserError
from jaxdissect.segmentation import upernet
from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.segmentation.upernet_convert import convert
from seeded_upernet import random_state_dicts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "convert", "upernet.py")


def load_script():
    """convert/upernet.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location("convert_upernet_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# Owners deliberately not in object-index order in the JSON (sky 1, building 2, person 3).
SMALL_LABELS = {
    "object": ["-", "sky", "building", "person", "car"],
    "material": ["-", "wood", "glass"],
    "scene": ["-", "street", "kitchen", "forest"],
    "object_part": {"person": ["-", "head"], "sky": ["-", "cloud"],
                    "building": ["-", "door", "roof"]},
    "part": ["-", "head", "cloud", "door", "roof"],
}
SMALL_UPP = upernet.UPerNetConfig("upp", depths=(1, 1, 2, 1), stem_width=8, base_width=8,
                                  fpn_dim=16, n_object=5, n_material=3, n_scene=4,
                                  part_sizes=(2, 3, 2))
SMALL_ADE = upernet.UPerNetConfig("ade20k", depths=(2, 1, 1, 1), stem_width=4, base_width=4,
                                  fpn_dim=8, n_class=3)


def write_pth(path, arrays, legacy=False):
    obj = pw.state_dict(arrays)
    path.write_bytes(pw.legacy_bytes(obj) if legacy else pw.zip_bytes(obj))
    return str(path)


def write_json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def assert_same_tree(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_upp_round_trip(tmp_path):
    encoder_sd, decoder_sd = random_state_dicts(SMALL_UPP)
    encoder = write_pth(tmp_path / "encoder.pth", encoder_sd)
    decoder = write_pth(tmp_path / "decoder.pth", decoder_sd, legacy=True)
    labels = write_json(tmp_path / "labels.json", SMALL_LABELS)
    dst = str(tmp_path / "upp")
    assert load_script().main(["--encoder", encoder, "--decoder", decoder, "--labels", labels,
                                "--variant", "upp", "--dst", dst]) == 0

    config, variables, meta = upernet.load_segmenter_model(dst)
    assert config == SMALL_UPP
    assert_same_tree(variables, upernet.params_from_state_dicts(SMALL_UPP, encoder_sd, decoder_sd))
    assert meta["kind"] == "upernet" and meta["labels"] == SMALL_LABELS
    assert meta["source"] == {role: {"file": os.path.basename(path), "sha256": sha256(path)}
                              for role, path in (("encoder", encoder), ("decoder", decoder),
                                                 ("labels", labels))}
    # The wrapper accepts the folder: its label space agrees with the heads.
    segmenter, _ = Segmenter.from_model_folder(dst)
    assert segmenter.label_space.decoder_part_sizes == (2, 3, 2)


def test_ade_round_trip_with_sync_bn_buffers_and_labels(tmp_path):
    encoder_sd, decoder_sd = random_state_dicts(SMALL_ADE, sync_bn_buffers=True)
    encoder = write_pth(tmp_path / "encoder.pth", encoder_sd)
    decoder = write_pth(tmp_path / "decoder.pth", decoder_sd)

    meta = convert(encoder, decoder, str(tmp_path / "generic"), "ade20k")
    assert meta["labels"] == ["class_0", "class_1", "class_2"]
    config, variables, _ = upernet.load_segmenter_model(str(tmp_path / "generic"))
    assert config == SMALL_ADE
    assert_same_tree(variables, upernet.params_from_state_dicts(SMALL_ADE, encoder_sd, decoder_sd))

    csv_file = tmp_path / "object150_info.csv"
    csv_file.write_text("Idx,Ratio,Train,Val,Name\n1,0.15,11664,1172,wall\n"
                        "2,0.10,6046,612,building;edifice\n3,0.09,8265,796,sky\n")
    meta = convert(encoder, decoder, str(tmp_path / "csv"), "ade20k", str(csv_file))
    assert meta["labels"] == ["wall", "building", "sky"]
    named = {"names": ["a", "b", "c"], "categories": ["stuff", "thing", "thing"]}
    meta = convert(encoder, decoder, str(tmp_path / "json"), "ade20k",
                   write_json(tmp_path / "names.json", named))
    assert meta["labels"] == named
    segmenter, _ = Segmenter.from_model_folder(str(tmp_path / "json"))
    assert segmenter.labels == ("-", "a", "b", "c")


def edited(arrays, drop=(), add=None):
    out = {k: v for k, v in arrays.items() if k not in drop}
    out.update(add or {})
    return out


def refusal_cases():
    """(name, variant, encoder arrays or bytes, decoder arrays, labels, fragments of the error)."""
    enc, dec = random_state_dicts(SMALL_UPP)
    ade_enc, ade_dec = random_state_dicts(SMALL_ADE)
    fewer_objects = dict(SMALL_LABELS, object=SMALL_LABELS["object"][:-1])
    more_parts = dict(SMALL_LABELS, object_part=dict(SMALL_LABELS["object_part"],
                                                     car=["-", "wheel"]))
    conv2 = "layer1.0.conv2.weight"
    return [
        ("missing_key", "upp", edited(enc, drop=["layer1.0.bn2.running_mean"]), dec, SMALL_LABELS,
         ["encoder.pth", "missing key 'layer1.0.bn2.running_mean'"]),
        ("unexpected_key", "upp", enc, edited(dec, add={"aux.weight": np.zeros(3, np.float32)}),
         SMALL_LABELS, ["decoder.pth", "unexpected key 'aux.weight'"]),
        ("wrong_shape", "upp", edited(enc, add={conv2: np.zeros((8, 8, 3, 1), np.float32)}), dec,
         SMALL_LABELS, ["encoder.pth", f"'{conv2}'", "(8, 8, 3, 1)", "(8, 8, 3, 3)"]),
        ("int_weights", "upp", edited(enc, add={conv2: enc[conv2].astype(np.int64)}), dec,
         SMALL_LABELS, [f"'{conv2}'", "int64", "floating"]),
        ("bad_pickle", "upp", np.random.default_rng(0).bytes(3000), dec, SMALL_LABELS,
         ["encoder.pth"]),
        ("labels_fewer_objects", "upp", enc, dec, fewer_objects,
         ["labels.json", "4 object names", "5 object channels", "object_head.1.weight"]),
        ("labels_more_parts", "upp", enc, dec, more_parts,
         ["part_head.1.weight has 7 output channels", "9 entries"]),
        ("labels_not_json", "upp", enc, dec, "{not json", ["labels.json", "not valid JSON"]),
        ("no_labels_upp", "upp", enc, dec, None, ["--labels is required"]),
        ("upp_weights_as_ade", "ade20k", enc, dec, None,
         ["decoder.pth", "missing key 'conv_last.1.weight'"]),
        ("ade_label_count", "ade20k", ade_enc, ade_dec, ["wall", "floor"],
         ["labels.json", "2 class names", "3 classes"]),
    ]


@pytest.mark.parametrize("case", refusal_cases(), ids=lambda case: case[0])
def test_bad_inputs_fail_with_one_line_and_leave_nothing(tmp_path, case):
    name, variant, encoder_data, decoder_data, labels, fragments = case
    sources = tmp_path / "sources"
    sources.mkdir()
    if isinstance(encoder_data, bytes):
        (sources / "encoder.pth").write_bytes(encoder_data)
        encoder = str(sources / "encoder.pth")
    else:
        encoder = write_pth(sources / "encoder.pth", encoder_data)
    decoder = write_pth(sources / "decoder.pth", decoder_data)
    if isinstance(labels, str):
        (sources / "labels.json").write_text(labels)
    labels_path = None if labels is None else (
        str(sources / "labels.json") if isinstance(labels, str)
        else write_json(sources / "labels.json", labels))
    with pytest.raises(UserError) as e:
        convert(encoder, decoder, str(tmp_path / "out"), variant, labels_path)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert sorted(os.listdir(tmp_path)) == ["sources"]


def test_missing_file_and_existing_destination(tmp_path):
    encoder_sd, decoder_sd = random_state_dicts(SMALL_ADE)
    encoder = write_pth(tmp_path / "encoder.pth", encoder_sd)
    decoder = write_pth(tmp_path / "decoder.pth", decoder_sd)
    with pytest.raises(UserError, match="nope.pth: no such file"):
        convert(str(tmp_path / "nope.pth"), decoder, str(tmp_path / "out"), "ade20k")
    with pytest.raises(UserError, match="missing.json: cannot read the labels"):
        convert(encoder, decoder, str(tmp_path / "out"), "ade20k", str(tmp_path / "missing.json"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        convert(encoder, decoder, str(tmp_path / "out"), "ade20k")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


def test_command_line_error_is_one_line(tmp_path):
    encoder_sd, decoder_sd = random_state_dicts(SMALL_ADE)
    encoder = write_pth(tmp_path / "encoder.pth", edited(encoder_sd, drop=["bn3.bias"]))
    decoder = write_pth(tmp_path / "decoder.pth", decoder_sd)
    done = subprocess.run(
        [sys.executable, SCRIPT, "--encoder", encoder,
         "--decoder", decoder, "--variant", "ade20k", "--dst", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {encoder}: missing key 'bn3.bias'"]
    assert not os.path.exists(tmp_path / "out")
