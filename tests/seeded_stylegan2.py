"""The seeded full 256x256 StyleGAN2 (rosinality config-f) of tests/fixtures/stylegan2, regenerated from its rule."""
import hashlib
import json
import os

import numpy as np

KEYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "stylegan2", "full256_keys.json")
RULES = {"normal": lambda a: a, "normal_times_100": lambda a: a * np.float32(100),
         "normal_times_10": lambda a: a * np.float32(10), "normal_times_0.1": lambda a: a * np.float32(0.1),
         "one_plus_0.1normal": lambda a: np.float32(1) + a * np.float32(0.1)}
CHANNELS = (512, 512, 512, 512, 512, 256, 128)  # at 4, 8, ..., 256


def full_state_dict(keys_path=KEYS):
    """The rosinality state dict: one PCG64 stream, float32 draws in state-dict order, each times its
    rule's factor; FIR buffers are the module's own outer([1,3,3,1])/16 and draw nothing. Checks the
    sha256 of all drawn tensors."""
    with open(keys_path) as f:
        spec = json.load(f)
    rng, weights, digest = np.random.default_rng(spec["seed"]), {}, hashlib.sha256()
    for key, shape, rule in spec["params"]:
        if rule == "fixed":
            weights[key] = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16
            continue
        weights[key] = RULES[rule](rng.standard_normal(tuple(shape), dtype=np.float32))
        digest.update(weights[key].astype("<f4").tobytes())
    if digest.hexdigest() != spec["sha256_all_concatenated_non_fixed"]:
        raise AssertionError("regenerated weights do not match the fixture's sha256")
    return weights
