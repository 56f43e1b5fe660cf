"""UPerNet state dicts for tests, as numpy arrays keyed like the PyTorch files.

`seeded_state_dicts` rebuilds the seeded weights of fixtures/upernet from
their keys files, following its README section 2: one numpy Generator,
consumed over every encoder entry and then every decoder entry in the listed
order, each rule drawing float64 and casting to float32. Every array is
checked against the sha256 recorded in the keys file. `seeded_images` rebuilds
the goldens' two input images from their README section 3 recipe.

`random_state_dicts` makes small random ones for any config (the keys come
from `upernet.torch_layout`, so they test conversion mechanics, not naming).
"""
import hashlib
import json
import math
import os

import numpy as np

from jaxdissect.segmentation import upernet

# Each rule: (rng, shape, fan_in) -> array (float64 or final dtype).
RULES = {
    "conv_he": lambda rng, shape, fan_in: rng.standard_normal(size=shape) * math.sqrt(2.0 / fan_in),
    "conv_he_x0.2": lambda rng, shape, fan_in: (
        rng.standard_normal(size=shape) * (math.sqrt(2.0 / fan_in) * 0.2)),
    "conv_head": lambda rng, shape, fan_in: rng.standard_normal(size=shape) * math.sqrt(1.0 / fan_in),
    "head_bias": lambda rng, shape, fan_in: rng.normal(0.0, 0.05, size=shape),
    "bn_weight": lambda rng, shape, fan_in: rng.uniform(0.8, 1.2, size=shape),
    "bn_bias": lambda rng, shape, fan_in: rng.normal(0.0, 0.05, size=shape),
    "bn_running_mean": lambda rng, shape, fan_in: rng.normal(0.0, 0.05, size=shape),
    "bn_running_var": lambda rng, shape, fan_in: rng.uniform(0.8, 1.25, size=shape),
    "bn_running_var_x8192": lambda rng, shape, fan_in: rng.uniform(0.8, 1.25, size=shape) * 8192.0,
    "zeros_int64": lambda rng, shape, fan_in: np.zeros(shape, np.int64),
    "const_zeros_f32": lambda rng, shape, fan_in: np.zeros(shape, np.float32),
    "const_ones_f32": lambda rng, shape, fan_in: np.ones(shape, np.float32),
}

KEYS_FILES = {"upp": ("keys_encoder.json", "keys_decoder.json"),
              "ade20k": ("keys_ade20k_encoder.json", "keys_ade20k_decoder.json")}


def _draw(rng, rule, shape):
    fan_in = math.prod(shape[1:]) if len(shape) == 4 else None
    value = RULES[rule](rng, tuple(shape), fan_in)
    return value if value.dtype == np.int64 else value.astype(np.float32)


def _sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"))
                          .tobytes()).hexdigest()


def seeded_state_dicts(fixtures_dir, variant):
    """(encoder_sd, decoder_sd) of `variant` ('upp' or 'ade20k'); raises on any sha256 mismatch."""
    specs = []
    for name in KEYS_FILES[variant]:
        with open(os.path.join(fixtures_dir, name)) as f:
            specs.append(json.load(f))
    rng = np.random.default_rng(specs[0]["seed"])
    state_dicts = []
    for spec in specs:
        sd = {}
        for key, shape, rule in spec["entries"]:
            sd[key] = _draw(rng, rule, shape)
            if _sha256(sd[key]) != spec["sha256"][key]:
                raise AssertionError(f"{variant}: regenerated {key!r} does not match its sha256")
        state_dicts.append(sd)
    return tuple(state_dicts)


# sha256 of the goldens' `images` array (float32, little-endian, C order).
IMAGES_SHA256 = "cd94f7786af6fbfe6e9e660d3d0ab898255b1b9267032a8f0e6cf9d6acf2fd99"


def _upsample_axis(a, size, axis):
    """Linear interpolation of `axis` to `size` (half-pixel centres, edges clamped)."""
    n = a.shape[axis]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    shape = [1] * a.ndim
    shape[axis] = size
    weight = (src - i0).reshape(shape)
    return np.take(a, i0, axis) * (1 - weight) + np.take(a, i1, axis) * weight


def seeded_images():
    """The (2, 3, 128, 128) float32 RGB images in [-1, 1] that every golden was computed on."""
    rng = np.random.default_rng(3)
    octaves = [rng.standard_normal((2, 3, s, s)) for s in (4, 8, 16)]
    up = lambda a: _upsample_axis(_upsample_axis(a, 128, 2), 128, 3)
    field = up(octaves[0]) + 0.5 * up(octaves[1]) + 0.25 * up(octaves[2])
    rows = np.linspace(1, -1, 128)[None, None, :, None]
    tint = np.array([0.2, 0.5, 1.0])[None, :, None, None]
    images = np.tanh(0.8 * field + 0.8 * rows * tint).astype(np.float32)
    if _sha256(images) != IMAGES_SHA256:
        raise AssertionError("regenerated images do not match their sha256")
    return images


def random_state_dicts(config, seed=0, sync_bn_buffers=False):
    """Encoder and decoder state dicts with the keys and shapes of `config`."""
    rng = np.random.default_rng(seed)
    state_dicts = {"encoder": {}, "decoder": {}}
    for part, key, shape in upernet.torch_layout(config).values():
        value = rng.standard_normal(shape).astype(np.float32) * 0.3
        if key.endswith("running_var"):
            value = np.abs(value) + 0.5
        state_dicts[part][key] = value
        if key.endswith("running_var"):
            prefix = key[:-len("running_var")]
            state_dicts[part][prefix + "num_batches_tracked"] = np.zeros((), np.int64)
            if sync_bn_buffers:
                state_dicts[part][prefix + "_tmp_running_mean"] = np.zeros(shape, np.float32)
                state_dicts[part][prefix + "_tmp_running_var"] = np.ones(shape, np.float32)
                state_dicts[part][prefix + "_running_iter"] = np.ones((1,), np.float32)
    return state_dicts["encoder"], state_dicts["decoder"]
