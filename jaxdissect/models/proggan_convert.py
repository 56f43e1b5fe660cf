"""Converts a GAN Dissection ProGAN `.pth` state dict into a jaxdissect model folder.

The rules follow the upstream loader (fixtures/proggan/README.md sections 2-3):
unwrap `{"state_dict": ...}`, rename old `features.N.*` / `output.*` keys,
infer `sizes` from the layer shapes, then load strictly (every expected key
present with its exact shape, nothing else).
"""
import hashlib
import os
import re

from jaxdissect.checkpoint import save_model
from jaxdissect.errors import UserError
from jaxdissect.io.pth import load_state_dict
from jaxdissect.models.proggan import ProGAN, params_from_state_dict

_OLD_FEATURE_KEY = re.compile(r"features\.(\d+)\.(.+)")


def modern_names(state_dict):
    """Renames old keys: `features.{i}.*` -> `layer{i+1}.*`, `output.*` -> `output_RxR.*`.

    Applies only when `features.0.conv.weight` is present (as upstream). R is
    4 * 2**((n - 1) // 2) for n feature layers. Other keys are kept as they
    are, so that the strict load reports them.
    """
    if "features.0.conv.weight" not in state_dict:
        return state_dict
    feature_layers = {m.group(1) for m in map(_OLD_FEATURE_KEY.fullmatch, state_dict) if m}
    r = 4 * 2 ** ((len(feature_layers) - 1) // 2)
    renamed = {}
    for key, value in state_dict.items():
        match = _OLD_FEATURE_KEY.fullmatch(key)
        if match:
            key = f"layer{int(match.group(1)) + 1}.{match.group(2)}"
        elif key.startswith("output."):
            key = f"output_{r}x{r}." + key[len("output."):]
        renamed[key] = value
    return renamed


def infer_sizes(state_dict):
    """The `sizes` table of a modern-named state dict, read as upstream does.

    Scans layer1, layer2, ... until a `layerN.conv.weight` is missing:
    layer1 gives the latent size (its input channels), and every odd-numbered
    layer (layer1, layer3, ...) gives its output channels.
    """
    sizes = []
    n = 1
    while f"layer{n}.conv.weight" in state_dict:
        key = f"layer{n}.conv.weight"
        shape = tuple(state_dict[key].shape)
        if len(shape) != 4:
            raise ValueError(f"key {key!r} has shape {shape}, expected a conv weight "
                             "(out, in, kh, kw)")
        if n == 1:
            sizes.append(shape[1])
        if n % 2 == 1:
            sizes.append(shape[0])
        n += 1
    if not sizes:
        raise KeyError("no key 'layer1.conv.weight' (nor old-style 'features.0.conv.weight'): "
                       "not a ProGAN generator state dict")
    return sizes


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert(src, dst):
    """Reads the ProGAN checkpoint `src` and writes the model folder `dst`; returns its meta.

    Raises UserError naming `src` (and the key) on anything wrong; nothing
    is written at `dst` then.
    """
    state_dict = modern_names(load_state_dict(src))
    try:
        sizes = infer_sizes(state_dict)
        params = params_from_state_dict(state_dict, sizes)
    except (KeyError, ValueError) as e:
        raise UserError(f"{src}: {e.args[0]}") from None
    model = ProGAN(tuple(sizes))
    meta = model.meta({"file": os.path.basename(src), "sha256": file_sha256(src)})
    try:
        save_model(dst, params, meta)
    except OSError as e:
        raise UserError(f"{dst}: cannot write the model folder ({e})") from None
    return meta
