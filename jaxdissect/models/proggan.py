"""Progressive GAN generator (the GAN Dissection release), as a Flax module.

Layout conventions of the library: featuremaps and images are NHWC (units on
the last axis); latents are (N, C). Files written for users are NCHW, the
original tools' layout, converted at the boundary.

The paper's split `G(z) = f(h(z))` is exposed by `ProGAN`, a
jaxdissect.models.generator.Generator: `h(params, z, layers)` runs up to the
deepest requested layer and returns the named featuremaps, `f(params, r,
layer)` runs only the rest from a (possibly edited) featuremap (the latents
the protocol passes are not needed), and `__call__` runs the whole generator
with optional edits applied to any layers' outputs. All are pure functions
of (params, inputs), so they compose with jit, vmap and grad.
"""
import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models.generator import Edit, Generator


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One block of the generator: pixel norm, optional 2x upsample, conv, WScale, act."""
    name: str
    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int
    upsample: bool
    gain: float
    activation: bool
    resolution: int

    @property
    def scale(self):
        """WScale multiplier gain / sqrt(C_in), applied to the conv output."""
        return self.gain / math.sqrt(self.in_channels)


def layer_specs(sizes):
    """The blocks of a generator with channel table `sizes` (see fixtures README).

    sizes[0] is the latent size, sizes[1] the channels at 4x4 and sizes[k]
    the channels at resolution 2**(k+1). There are 2*len(sizes)-2 hidden
    layers and an output layer named output_RxR with R = 2**len(sizes).
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least a latent size and one stage, got {sizes}")
    hidden_gain = lambda k: math.sqrt(2.0) / k
    specs = [LayerSpec("layer1", sizes[0], sizes[1], 4, 3, False, hidden_gain(4), True, 4),
             LayerSpec("layer2", sizes[1], sizes[1], 3, 1, False, hidden_gain(3), True, 4)]
    for stage in range(2, len(sizes)):
        cin, cout, res = sizes[stage - 1], sizes[stage], 2 ** (stage + 1)
        n = 2 * stage - 1
        specs.append(LayerSpec(f"layer{n}", cin, cout, 3, 1, True, hidden_gain(3), True, res))
        specs.append(LayerSpec(f"layer{n + 1}", cout, cout, 3, 1, False, hidden_gain(3), True, res))
    res = 2 ** len(sizes)
    specs.append(LayerSpec(f"output_{res}x{res}", sizes[-1], 3, 1, 0, False, 1.0, False, res))
    return tuple(specs)


def pixel_norm(x, eps=1e-8):
    """x / sqrt(mean over channels of x^2 + eps), per sample and pixel."""
    return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def upsample_nearest_2x(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ProGANBlock(nn.Module):
    """Pixel norm -> [nearest 2x] -> conv (no bias) -> * scale + bias -> [LeakyReLU 0.2].

    Parameters: `kernel` (kh, kw, C_in, C_out), HWIO; `bias` (C_out,).
    """
    spec: LayerSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        s = self.spec
        kernel = self.param("kernel", nn.initializers.normal(1.0),
                            (s.kernel_size, s.kernel_size, s.in_channels, s.out_channels))
        bias = self.param("bias", nn.initializers.zeros, (s.out_channels,))
        x = pixel_norm(x.astype(self.dtype))
        if s.upsample:
            x = upsample_nearest_2x(x)
        precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
        y = jax.lax.conv_general_dilated(
            x, kernel.astype(self.dtype), window_strides=(1, 1),
            padding=[(s.padding, s.padding)] * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
        # Two float32 ops, scale rounded to the compute dtype, as upstream.
        y = y * jnp.asarray(s.scale, self.dtype) + bias.astype(self.dtype)
        if s.activation:
            y = jnp.where(y >= 0, y, y * jnp.asarray(0.2, self.dtype))
        return y


class ProgressiveGeneratorModule(nn.Module):
    """Runs blocks [start, stop) of the generator; see `ProGAN` for the API."""
    sizes: Sequence[int]
    output_tanh: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, start=0, stop=None, capture=(), edits=None):
        specs = layer_specs(self.sizes)
        stop = len(specs) if stop is None else stop
        edits = edits or {}
        if start == 0:
            x = x.reshape(x.shape[0], 1, 1, x.shape[-1])
        captured = {}
        for spec in specs[start:stop]:
            x = ProGANBlock(spec, self.dtype, name=spec.name)(x)
            if spec.name in edits:
                x = edits[spec.name](x)
            if spec.name in capture:
                captured[spec.name] = x
        if stop == len(specs) and self.output_tanh:
            x = jnp.clip(x, -1.0, 1.0)  # upstream's "tanh" option is a Hardtanh
        return x, captured


@dataclasses.dataclass(frozen=True)
class ProGAN(Generator):
    """A Progressive GAN generator architecture (jaxdissect.models.generator's protocol); hashable.

    Every method is a pure function of `params` (the Flax variables dict,
    `{"params": {...}}`) and arrays. Images come out NHWC in the compute
    dtype, nominally in [-1, 1] but not clamped (as upstream). `f` is a
    true split: it runs only the layers after the split.
    """
    sizes: tuple
    output_tanh: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))

    @classmethod
    def from_meta(cls, meta, dtype=jnp.float32):
        return cls(tuple(meta["sizes"]), bool(meta.get("output_tanh", False)), dtype)

    @property
    def specs(self):
        return layer_specs(self.sizes)

    @property
    def layer_names(self):
        return tuple(s.name for s in self.specs)

    @property
    def latent_size(self):
        return self.sizes[0]

    @property
    def resolution(self):
        return 2 ** len(self.sizes)

    def meta(self, source):
        """The meta.json of a model folder holding this generator; `source` says where it came from."""
        return {"kind": "proggan", "sizes": list(self.sizes), "resolution": self.resolution,
                "output_tanh": self.output_tanh,
                "layers": [{"name": name, "shape": list(self.featuremap_shape(name))}
                           for name in self.layer_names],
                "source": source}

    def featuremap_shape(self, layer):
        """(H, W, C) of a layer's output."""
        spec = self.specs[self.layer_index(layer)]
        return (spec.resolution, spec.resolution, spec.out_channels)

    @property
    def module(self):
        return ProgressiveGeneratorModule(self.sizes, self.output_tanh, self.dtype)

    def init(self, rng):
        z = jnp.zeros((1, self.latent_size), jnp.float32)
        return self.module.init(rng, z)

    def f(self, params, r, layer, z=None, edits: Mapping[str, Edit] = None, capture=()):
        """Runs only the layers after `layer` on its featuremap `r` (the latents `z` are not needed).

        With `capture`, returns (image, {later layer: featuremap}) instead.
        """
        start = self.layer_index(layer) + 1
        image, captured = self.module.apply(params, r, start=start, capture=tuple(capture),
                                            edits=edits)
        return (image, captured) if capture else image


def params_from_state_dict(state_dict, sizes):
    """Maps an upstream state dict (modern names, OIHW numpy) to Flax variables.

    Raises KeyError (missing or unexpected keys) or ValueError (wrong shape,
    non-float dtype) with a one-line message naming the key; the converter
    turns those into user errors.
    """
    specs = layer_specs(sizes)
    expected = {}
    for s in specs:
        expected[f"{s.name}.conv.weight"] = (s.out_channels, s.in_channels, s.kernel_size, s.kernel_size)
        expected[f"{s.name}.wscale.b"] = (s.out_channels,)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        problems = [f"{what} {_first_keys(keys)}" for what, keys in
                    (("missing key", missing), ("unexpected key", unexpected)) if keys]
        raise KeyError(f"{'; '.join(problems)} (for sizes {[int(s) for s in sizes]})")
    for key, shape in expected.items():
        value = state_dict[key]
        got = tuple(np.shape(value))
        if got != shape:
            raise ValueError(f"key {key!r} has shape {got}, expected {shape}")
        if not jnp.issubdtype(np.asarray(value).dtype, jnp.floating):
            raise ValueError(f"key {key!r} has dtype {np.asarray(value).dtype}, "
                             "expected a floating-point tensor")
    params = {}
    for s in specs:
        params[s.name] = {
            "kernel": np.ascontiguousarray(np.transpose(np.asarray(state_dict[f"{s.name}.conv.weight"], np.float32), (2, 3, 1, 0))),
            "bias": np.asarray(state_dict[f"{s.name}.wscale.b"], np.float32),
        }
    return {"params": params}


def _first_keys(keys, shown=3):
    """'a', 'b', 'c' (and 4 more): a short quotation of a list of keys."""
    text = ", ".join(repr(k) for k in keys[:shown])
    return text + (f" (and {len(keys) - shown} more)" if len(keys) > shown else "")
