"""Converts StyleGAN2 checkpoints of both released formats into a jaxdissect model folder.

* NVIDIA stylegan2-ada-pytorch `.pkl` snapshots: read with
  jaxdissect.io.nvidia_pickle (no embedded code runs); the generator is
  `G_ema` (the moving average that upstream's generate.py uses), never `G`.
  The clamp `conv_clamp` is read from its layers; w_avg is `mapping.w_avg`.
* rosinality stylegan2-pytorch `.pt` checkpoints (torch.save, zip or legacy):
  `g_ema` with `latent_avg` (convert_weight.py's layout) or a training
  checkpoint {g, d, g_ema, ..., args}; `args` (an argparse.Namespace) is read
  as plain data. Without a stored `latent_avg`, w_avg is computed as the mean
  w of AVERAGE_SAMPLES seeded latents, as upstream's generate.py does.

rosinality keys are first renamed to NVIDIA's (fixtures README section 5,
the key table), then one strict mapping checks every key and shape and
builds the Flax parameters.
"""
import json
import os
import pickle
import re
import zipfile
from typing import NamedTuple, Optional

import jax
import numpy as np

from jaxdissect.checkpoint import save_model
from jaxdissect.errors import UserError
from jaxdissect.io import nvidia_pickle, pth
from jaxdissect.models.proggan_convert import file_sha256
from jaxdissect.models.stylegan2 import StyleGAN2

FIR = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64  # both codes' filter, before its gain
AVERAGE_SAMPLES, AVERAGE_SEED = 4096, 0


class Checkpoint(NamedTuple):
    """What a reader found: the NVIDIA-named state dict and what the tensors do not say."""
    state_dict: dict
    w_avg_source: Optional[str]   # None: no stored average w, compute it
    conv_clamp: Optional[float] = None
    mapping_lr: float = 0.01
    init_kwargs: Optional[dict] = None


class _Namespace:
    """Stand-in for argparse.Namespace: pickle sets its attributes, nothing runs."""


# ------------------------------------------------------------------ rosinality -> NVIDIA names

def _rosinality_conv_prefix(key):
    """'conv1' -> 'synthesis.b4.conv1'; 'convs.M' -> 'synthesis.bR.conv{M % 2}', R = 2^(M // 2 + 3)."""
    if key == "conv1":
        return "synthesis.b4.conv1"
    m = int(key.split(".")[1])
    return f"synthesis.b{2 ** (m // 2 + 3)}.conv{m % 2}"


_STYLED_CONV = re.compile(r"(conv1|convs\.\d+)\.(conv\.weight|conv\.modulation\.weight|conv\.modulation\.bias|"
                          r"noise\.weight|activate\.bias|conv\.blur\.kernel)")
_TO_RGB = re.compile(r"(to_rgb1|to_rgbs\.\d+)\.(conv\.weight|conv\.modulation\.weight|conv\.modulation\.bias|"
                     r"bias|upsample\.kernel)")
_CONV_SUFFIX = {"conv.weight": "weight", "conv.modulation.weight": "affine.weight",
                "conv.modulation.bias": "affine.bias", "noise.weight": "noise_strength", "activate.bias": "bias",
                "conv.blur.kernel": "resample_filter", "bias": "bias", "upsample.kernel": "resample_filter"}


def nvidia_name(key):
    """The NVIDIA name of a rosinality generator key (unknown keys unchanged, for the strict check)."""
    if m := re.fullmatch(r"style\.(\d+)\.(weight|bias)", key):
        return f"mapping.fc{int(m.group(1)) - 1}.{m.group(2)}"
    if key == "input.input":
        return "synthesis.b4.const"
    if m := re.fullmatch(r"noises\.noise_(\d+)", key):
        j = int(m.group(1))
        return _rosinality_conv_prefix("conv1" if j == 0 else f"convs.{j - 1}") + ".noise_const"
    if m := _STYLED_CONV.fullmatch(key):
        return _rosinality_conv_prefix(m.group(1)) + "." + _CONV_SUFFIX[m.group(2)]
    if m := _TO_RGB.fullmatch(key):
        block = 4 if m.group(1) == "to_rgb1" else 2 ** (int(m.group(1).split(".")[1]) + 3)
        return f"synthesis.b{block}.torgb.{_CONV_SUFFIX[m.group(2)]}"
    return key


# rosinality's layout of a tensor -> NVIDIA's: (name suffix, rosinality's extra axes, what to do).
_RELAYOUT = [(("conv0.weight", "conv1.weight", "torgb.weight"), lambda v: v.ndim == 5 and v.shape[0] == 1,
              lambda v: v[0]),
             (("b4.const",), lambda v: v.ndim == 4 and v.shape[0] == 1, lambda v: v[0]),
             (("noise_const",), lambda v: v.ndim == 4 and v.shape[:2] == (1, 1), lambda v: v[0, 0]),
             (("noise_strength",), lambda v: v.shape == (1,), lambda v: v.reshape(())),
             (("torgb.bias",), lambda v: v.ndim == 4 and v.shape[0] == 1 and v.shape[2:] == (1, 1),
              lambda v: v.reshape(-1)),
             (("resample_filter",), lambda v: True, lambda v: v / 4)]


def nvidia_names(state_dict):
    """A rosinality generator state dict with NVIDIA's key names and shapes.

    Leading 1-axes are dropped (conv weights, the const input, noise maps and
    strengths, the torgb bias), FIR buffers divided by 4 (rosinality stores
    them with their gain). Unknown keys and unexpected shapes are kept, for
    the strict check to report.
    """
    out = {}
    for key, value in state_dict.items():
        name = nvidia_name(key)
        for suffixes, applies, relayout in _RELAYOUT:
            if name.endswith(suffixes) and applies(value):
                value = relayout(value)
        out[name] = value
    return out


# ------------------------------------------------------------------ NVIDIA names -> Flax params

def infer_architecture(state_dict):
    """(z_dim, w_dim, mapping_layers, channels) read from the shapes of an NVIDIA-named state dict."""
    blocks = sorted({int(m.group(1)) for m in map(re.compile(r"synthesis\.b(\d+)\.").match, state_dict) if m})
    fcs = sorted({int(m.group(1)) for m in map(re.compile(r"mapping\.fc(\d+)\.weight").fullmatch, state_dict) if m})
    if not blocks or not fcs or "synthesis.b4.conv1.weight" not in state_dict:
        raise KeyError("no 'synthesis.b4.conv1.weight' and 'mapping.fc0.weight': not a StyleGAN2 generator")
    if blocks != [4 * 2 ** k for k in range(len(blocks))]:
        raise KeyError(f"synthesis blocks {blocks} are not 4, 8, 16, ...")
    channels = []
    for res in blocks:
        key = f"synthesis.b{res}.conv1.weight"
        if key not in state_dict or np.ndim(state_dict[key]) != 4:
            raise KeyError(f"missing key {key!r} (a 4-d conv weight)")
        channels.append(int(np.shape(state_dict[key])[0]))
    z_dim = int(np.shape(state_dict["mapping.fc0.weight"])[-1])
    w_dim = int(np.shape(state_dict["synthesis.b4.conv1.affine.weight"])[-1])
    return z_dim, w_dim, len(fcs), channels


def expected_shapes(model):
    """{NVIDIA key: shape} of every tensor the model reads, FIR buffers included."""
    shapes = {"mapping.w_avg": (model.w_dim,), "synthesis.b4.const": (model.channels[0], 4, 4)}
    for i in range(model.mapping_layers):
        shapes[f"mapping.fc{i}.weight"] = (model.w_dim, model.z_dim if i == 0 else model.w_dim)
        shapes[f"mapping.fc{i}.bias"] = (model.w_dim,)
    for spec in model.specs:
        key = f"synthesis.{spec.name}."
        size = 3 if spec.kind == "conv" else 1
        shapes[key + "weight"] = (spec.out_channels, spec.in_channels, size, size)
        shapes[key + "bias"] = (spec.out_channels,)
        shapes[key + "affine.weight"] = (spec.in_channels, model.w_dim)
        shapes[key + "affine.bias"] = (spec.in_channels,)
        if spec.kind == "conv":
            shapes[key + "noise_strength"] = ()
            shapes[key + "noise_const"] = (spec.resolution, spec.resolution)
    return shapes


def _is_filter(key):
    return key.endswith("resample_filter")


def check_state_dict(state_dict, model):
    """Raises KeyError / ValueError (one line, naming the key) unless every expected tensor is there
    with its shape, nothing else is, and every FIR buffer is the standard [1, 3, 3, 1] filter."""
    expected = expected_shapes(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and not _is_filter(k)]
    if missing or unexpected:
        problems = [f"{what} {_first_keys(keys)}" for what, keys in
                    (("missing key", missing), ("unexpected key", unexpected)) if keys]
        raise KeyError(f"{'; '.join(problems)} (for channels {list(model.channels)})")
    for key, shape in expected.items():
        value = np.asarray(state_dict[key])
        if value.shape != shape:
            raise ValueError(f"key {key!r} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"key {key!r} has dtype {value.dtype}, expected a floating-point tensor")
    for key in filter(_is_filter, state_dict):
        if np.shape(state_dict[key]) != FIR.shape or not np.allclose(state_dict[key], FIR, rtol=0, atol=1e-7):
            raise ValueError(f"key {key!r} is not the standard [1, 3, 3, 1] filter (not supported)")


def params_from_state_dict(state_dict, model):
    """Flax variables of `model` from a checked NVIDIA-named state dict (OIHW -> HWIO, (out, in) -> (in, out))."""
    check_state_dict(state_dict, model)
    f32 = lambda key: np.asarray(state_dict[key], np.float32)
    params = {"w_avg": f32("mapping.w_avg"),
              "const": np.ascontiguousarray(f32("synthesis.b4.const").transpose(1, 2, 0)),
              "mapping": {f"fc{i}": {"weight": np.ascontiguousarray(f32(f"mapping.fc{i}.weight").T),
                                     "bias": f32(f"mapping.fc{i}.bias")} for i in range(model.mapping_layers)}}
    for spec in model.specs:
        key = f"synthesis.{spec.name}."
        layer = {"weight": np.ascontiguousarray(f32(key + "weight").transpose(2, 3, 1, 0)),
                 "bias": f32(key + "bias"),
                 "affine": {"weight": np.ascontiguousarray(f32(key + "affine.weight").T),
                            "bias": f32(key + "affine.bias")}}
        if spec.kind == "conv":
            layer["noise_strength"] = f32(key + "noise_strength")
            layer["noise_const"] = f32(key + "noise_const")
        params[spec.name] = layer
    return {"params": params}


def _first_keys(keys, shown=3):
    text = ", ".join(repr(k) for k in keys[:shown])
    return text + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")


# ------------------------------------------------------------------ reading the two formats

def is_torch_save(path):
    """True for torch.save files (zip, or legacy: a pickle of the magic number first)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(16).startswith(pickle.dumps(pth.LEGACY_MAGIC, protocol=2)[:-1])


def read_rosinality(path):
    """The `Checkpoint` of a rosinality .pt (no clamp, no constructor arguments)."""
    obj = pth.load(path, extra_globals={("argparse", "Namespace"): _Namespace})
    if isinstance(obj, dict) and "g_ema" in obj:
        generator, latent_avg = obj["g_ema"], obj.get("latent_avg")
    elif isinstance(obj, dict) and "style.1.weight" in obj:
        generator, latent_avg = obj, None
    else:
        what = f"keys {_first_keys(list(obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise UserError(f"{path}: no 'g_ema' generator in this checkpoint (it holds {what})")
    if not isinstance(generator, dict) or not all(isinstance(v, np.ndarray) for v in generator.values()):
        raise UserError(f"{path}: 'g_ema' is not a state dict of tensors")
    state_dict = nvidia_names(generator)
    if latent_avg is not None:
        state_dict["mapping.w_avg"] = np.asarray(latent_avg).reshape(-1)
        return Checkpoint(state_dict, "stored latent_avg")
    return Checkpoint(state_dict, None)


def read_nvidia(path):
    """The `Checkpoint` of an NVIDIA network pickle's G_ema."""
    obj = nvidia_pickle.load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("G_ema"), nvidia_pickle.Module):
        keys = _first_keys(list(obj)) if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"{path}: not a stylegan2-ada network pickle (no G_ema network; found {keys})")
    g_ema = obj["G_ema"]
    kwargs = g_ema.init_kwargs()
    layers = nvidia_pickle.modules(g_ema)
    checks = [("class", g_ema.class_name, "Generator"), ("c_dim", kwargs.get("c_dim", 0), 0),
              ("img_channels", kwargs.get("img_channels", 3), 3)]
    for name, module in layers.items():
        if "architecture" in module.state:
            checks.append((f"{name}.architecture", module.state["architecture"], "skip"))
        if "activation" in module.state:
            want = "linear" if name.endswith("affine") else "lrelu"
            checks.append((f"{name}.activation", module.state["activation"], want))
    for what, got, want in checks:
        if got != want:
            raise UserError(f"{path}: G_ema has {what} = {got!r}; only unconditional StyleGAN2 generators "
                            f"with {what} = {want!r} are supported")
    clamps = {module.state.get("conv_clamp") for module in layers.values() if "conv_clamp" in module.state}
    if len(clamps) > 1:
        raise UserError(f"{path}: layers with different conv_clamp values {sorted(map(str, clamps))}")
    clamp = clamps.pop() if clamps else None
    lr = float(kwargs.get("mapping_kwargs", {}).get("lr_multiplier", 0.01))
    return Checkpoint(nvidia_pickle.state_dict(g_ema, path), "stored mapping.w_avg",
                      None if clamp is None else float(clamp), lr, kwargs)


def check_kwargs(kwargs, **inferred):
    """Raises ValueError if a constructor argument disagrees with what the tensors' shapes say."""
    for name, value in inferred.items():
        if name in kwargs and kwargs[name] != value:
            raise ValueError(f"constructor argument {name}={kwargs[name]!r}, but the tensors are for {value}")


def average_w(model, params):
    """The mean w of AVERAGE_SAMPLES latents drawn with numpy's default_rng(AVERAGE_SEED)."""
    z = np.random.default_rng(AVERAGE_SEED).standard_normal((AVERAGE_SAMPLES, model.z_dim)).astype(np.float32)
    return np.asarray(jax.jit(model.mapping)(params, z), np.float32).mean(axis=0)


def convert(src, dst, truncation_psi=1.0, noise="random"):
    """Reads the StyleGAN2 checkpoint `src` (either format) and writes the model folder `dst`;
    returns its meta. Raises UserError naming `src` on anything wrong; nothing is written then."""
    if not os.path.isfile(src):
        raise UserError(f"{src}: no such file")
    fmt = "rosinality" if is_torch_save(src) else "nvidia"
    read = read_rosinality if fmt == "rosinality" else read_nvidia
    state_dict, w_avg_source, clamp, mapping_lr, kwargs = read(src)
    try:
        z_dim, w_dim, mapping_layers, channels = infer_architecture(state_dict)
        check_kwargs(kwargs or {}, z_dim=z_dim, w_dim=w_dim, img_resolution=4 * 2 ** (len(channels) - 1))
        model = StyleGAN2(z_dim, w_dim, mapping_layers, tuple(channels), clamp, mapping_lr,
                          truncation_psi=float(truncation_psi), noise=noise)
        if w_avg_source is None:
            state_dict["mapping.w_avg"] = np.zeros((w_dim,), np.float32)
        params = params_from_state_dict(state_dict, model)
    except (KeyError, ValueError) as e:
        raise UserError(f"{src}: {e.args[0]}") from None
    if w_avg_source is None:
        params["params"]["w_avg"] = average_w(model, params)
        w_avg_source = f"computed: mean w of {AVERAGE_SAMPLES} latents of numpy default_rng({AVERAGE_SEED})"
    source = {"file": os.path.basename(src), "sha256": file_sha256(src), "format": fmt, "w_avg": w_avg_source}
    if kwargs is not None:
        source["init_kwargs"] = json.loads(json.dumps(kwargs, default=str))
    meta = model.meta(source)
    try:
        save_model(dst, params, meta)
    except OSError as e:
        raise UserError(f"{dst}: cannot write the model folder ({e})") from None
    return meta
