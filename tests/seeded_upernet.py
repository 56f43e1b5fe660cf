"""Rebuilds the seeded UPerNet state dicts of fixtures/upernet from their keys files.

Follows fixtures/upernet/README.md section 2: one numpy Generator, consumed
over every encoder entry and then every decoder entry in the listed order,
each rule drawing float64 and casting to float32. Every array is checked
against the sha256 recorded in the keys file.
"""
import hashlib
import json
import math
import os

import numpy as np

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
