"""Converts UPerNet encoder + decoder `.pth` state dicts into a segmenter model folder.

The architecture (depths, widths, class counts) is read from the weight
shapes; the labels say what the classes are:

* `upp` (unified perceptual parsing) needs its labels.json (keys object,
  material, scene, object_part, part): the part head's channels are split
  per owner object in ascending object index, which only the labels tell.
  Every name list must match its head's channel count.
* `ade20k` labels are optional (generic names `class_0` ... otherwise):
  a JSON list of names, a JSON {"names": [...], "categories": [...]}, or a
  CSV with a header row and a `Name` column (semantic-segmentation's
  object150_info.csv; only the first of `;`-separated synonyms is kept).

meta.json: {"kind": "upernet", "config": UPerNetConfig.to_json(),
"labels": labels.json content (upp) or the names (ade20k), "source": files
and sha256}. Load the folder with `upernet.load_segmenter_model`.
"""
import csv
import json
import os

from jaxdissect.checkpoint import save_model
from jaxdissect.errors import UserError
from jaxdissect.io.pth import load_state_dict
from jaxdissect.models.proggan_convert import file_sha256
from jaxdissect.segmentation import upernet
from jaxdissect.segmentation.labels import upp_label_space

UPP_HEADS = (("object", "n_object", "object_head.1.weight"),
             ("material", "n_material", "material_head.1.weight"),
             ("scene", "n_scene", "scene_head.2.weight"))


def read_upp_labels(path):
    """labels.json of the upp model; returns (labels, part_sizes in decoder order)."""
    labels = _read_json(path)
    if not isinstance(labels, dict):
        raise UserError(f"{path}: expected a JSON object with keys object, material, scene, "
                        "object_part")
    if "scene" not in labels:
        raise UserError(f"{path}: missing key 'scene'")
    try:
        space = upp_label_space(labels, "undivided")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return labels, space.decoder_part_sizes


def read_ade_labels(path):
    """Class names (list), or {"names", "categories"}, from a JSON or CSV file."""
    if path.lower().endswith(".csv"):
        return _read_csv_names(path)
    labels = _read_json(path)
    names = labels.get("names") if isinstance(labels, dict) else labels
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: expected a JSON list of class names or "
                        '{"names": [...], "categories": [...]}')
    return labels


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the labels ({e.strerror})") from None
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _read_csv_names(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"{path}: cannot read the labels ({e.strerror})") from None
    if not rows or "Name" not in rows[0]:
        raise UserError(f"{path}: expected a CSV with a header row and a 'Name' column")
    return [row["Name"].split(";")[0].strip() for row in rows]


def _label_count(labels):
    return len(labels["names"] if isinstance(labels, dict) else labels)


def check_upp_labels(labels, config, labels_path, decoder_path):
    for key, field, weight in UPP_HEADS:
        names, channels = len(labels[key]), getattr(config, field)
        if names != channels:
            raise UserError(f"{labels_path}: {names} {key} names, but {decoder_path} has "
                            f"{channels} {key} channels ({weight})")


def convert(encoder, decoder, dst, variant, labels=None):
    """Reads the two checkpoints (and labels), writes the model folder `dst`; returns its meta.

    Raises UserError naming the file (and key) on anything wrong; nothing is
    written at `dst` then.
    """
    if variant not in upernet.VARIANTS:
        raise UserError(f"--variant={variant!r}: must be one of {', '.join(upernet.VARIANTS)}")
    if variant == "upp" and labels is None:
        raise UserError("--labels is required for variant upp: labels.json tells how the "
                        "part head's channels split per object")
    label_data, part_sizes = read_upp_labels(labels) if variant == "upp" else (None, ())
    if variant == "ade20k" and labels is not None:
        label_data = read_ade_labels(labels)
    encoder_sd, decoder_sd = load_state_dict(encoder), load_state_dict(decoder)
    sources = {"encoder": encoder, "decoder": decoder}
    try:
        config = upernet.config_from_state_dicts(variant, encoder_sd, decoder_sd, part_sizes,
                                                 source_names=sources)
        params = upernet.params_from_state_dicts(config, encoder_sd, decoder_sd,
                                                 source_names=sources)
    except (KeyError, ValueError) as e:
        raise UserError(e.args[0]) from None
    if variant == "upp":
        check_upp_labels(label_data, config, labels, decoder)
    elif label_data is None:
        label_data = [f"class_{i}" for i in range(config.n_class)]
    elif _label_count(label_data) != config.n_class:
        raise UserError(f"{labels}: {_label_count(label_data)} class names, but {decoder} has "
                        f"{config.n_class} classes (conv_last.1.weight)")
    meta = {"kind": upernet.MODEL_KIND, "config": config.to_json(), "labels": label_data,
            "source": {role: _describe(path) for role, path in
                       (("encoder", encoder), ("decoder", decoder), ("labels", labels))
                       if path is not None}}
    try:
        save_model(dst, params, meta)
    except OSError as e:
        raise UserError(f"{dst}: cannot write the model folder ({e})") from None
    return meta


def _describe(path):
    return {"file": os.path.basename(path), "sha256": file_sha256(path)}
