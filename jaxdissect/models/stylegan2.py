"""StyleGAN2 generator (config-f, skip architecture), as a Flax module.

One port serves both released formats, NVIDIA's stylegan2-ada-pytorch pickles
and rosinality's stylegan2-pytorch checkpoints (see
jaxdissect.models.stylegan2_convert); names follow NVIDIA's layout:

    mapping             z -> w: 2nd-moment normalisation, then fc0, fc1, ...
    b4.conv1            the 4x4 conv on the learned constant
    bR.conv0, bR.conv1  the two convs of block R (conv0 upsamples 2x)
    bR.torgb            the block's 1x1 conv to RGB, added to the upsampled image

Every conv output is a dissectable layer (`layer_names`). Every conv and
torgb also has a style vector, the per-channel modulation computed from w,
named `LAYER.style` (N, C_in): it can be captured and edited like a
featuremap (`style_names`). Featuremaps are NHWC; images are NHWC, nominally
in [-1, 1] but not clamped (as upstream).

Noise (`noise`): "random" draws every noise map from a key derived from the
sample's latent z, so a sample's noise depends only on its z, and so only on
(seed, index) like the latent itself (jaxdissect.parallel); "const" uses the
maps stored with the weights (upstream's noise_mode='const' /
randomize_noise=False, the parity goldens); "none" adds none.

Truncation: w' = w_avg + psi * (w - w_avg) on the first `truncation_cutoff`
ws (all if None), with the stored average w_avg; psi = 1 is no truncation.

Everything runs in float32 (`dtype`): released ada models run their highest
resolutions in float16, but parity is against their force_fp32 outputs.
"""
import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models.generator import Generator

NOISE_MODES = ("random", "const", "none")
STYLE = ".style"
# The 4x4 low-pass filter of both codes is outer(k, k) / 64 with k = [1, 3, 3, 1], applied
# with gain 4 (= up^2) when upsampling: per axis, the taps k / 4.
UPSAMPLE_TAPS = (0.25, 0.75, 0.75, 0.25)
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """A synthesis layer: a modulated 3x3 conv ("conv") or 1x1 conv to RGB ("torgb")."""
    name: str
    kind: str
    in_channels: int
    out_channels: int
    resolution: int
    up: bool
    w_index: int  # which of the broadcast ws gives its style


def layer_specs(channels):
    """The synthesis layers in run order, for `channels` at resolutions 4, 8, ..., R.

    Conv j (counting from 0) takes its style from ws[j], the torgb after it from ws[j + 1].
    """
    specs = [LayerSpec("b4.conv1", "conv", channels[0], channels[0], 4, False, 0),
             LayerSpec("b4.torgb", "torgb", channels[0], 3, 4, False, 1)]
    for k in range(1, len(channels)):
        res, cin, cout, j = 4 * 2 ** k, channels[k - 1], channels[k], 2 * k - 1
        specs += [LayerSpec(f"b{res}.conv0", "conv", cin, cout, res, True, j),
                  LayerSpec(f"b{res}.conv1", "conv", cout, cout, res, False, j + 1),
                  LayerSpec(f"b{res}.torgb", "torgb", cout, 3, res, False, j + 2)]
    return tuple(specs)


def matmul(a, b):
    """a @ b at full float32 precision on every backend (no TF32 / bf16 passes)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def normalize_2nd_moment(x, eps=1e-8):
    """x * rsqrt(mean over features of x^2 + eps), per sample."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def lrelu_gain(x):
    """LeakyReLU(0.2) times sqrt(2), the gain both codes use."""
    return jnp.where(x >= 0, x, x * 0.2) * math.sqrt(2.0)


def fir_axis(x, axis, pad):
    """Filters `x` along `axis` with UPSAMPLE_TAPS after zero padding pad = (before, after)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths)
    n = x.shape[axis] - len(UPSAMPLE_TAPS) + 1
    return sum(tap * jax.lax.slice_in_dim(x, t, t + n, axis=axis) for t, tap in enumerate(UPSAMPLE_TAPS))


def blur(x, pad):
    """The separable 4x4 FIR (gain 4) over H and W of an NHWC array."""
    return fir_axis(fir_axis(x, 1, pad), 2, pad)


def zero_insert_2x(x):
    """(N, H, W, C) -> (N, 2H, 2W, C) with x at even positions and zeros elsewhere."""
    n, h, w, c = x.shape
    y = jnp.zeros((n, h, 2, w, 2, c), x.dtype).at[:, :, 0, :, 0, :].set(x)
    return y.reshape(n, 2 * h, 2 * w, c)


def upsample_image(img):
    """The skip branch's 2x upsampling: zero insertion, then the FIR with padding (2, 1)."""
    return blur(zero_insert_2x(img), (2, 1))


def conv(x, kernel, up):
    """3x3 cross-correlation, zero padding 1; with `up`, PyTorch's stride-2 transposed conv
    (out[2y + k] += x[y] * w[k]), i.e. (H, W) -> (2H + 1, 2W + 1)."""
    if up:
        return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), [(2, 2), (2, 2)],
                                            lhs_dilation=(2, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision=HIGHEST)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), [(1, 1), (1, 1)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)


def modulated_conv(x, kernel, style, up):
    """The modulated, demodulated 3x3 conv, with the upsampling FIR when `up`.

    Equal to convolving with the per-sample weight w[n] = kernel * style[n]
    (over input channels), each output filter scaled to unit norm:
    the input is scaled by the style, the output by rsqrt(sum w[n]^2 + 1e-8).
    """
    y = conv(x * style[:, None, None, :], kernel, up)
    demod = jax.lax.rsqrt(matmul(jnp.square(style), jnp.sum(jnp.square(kernel), axis=(0, 1))) + 1e-8)
    y = y * demod[:, None, None, :]
    return blur(y, (1, 1)) if up else y


def noise_keys(z):
    """One PRNG key per sample, a hash of the bits of its latent z (N, D)."""
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(z).astype(jnp.float32), jnp.uint32)
    position = jnp.arange(bits.shape[-1], dtype=jnp.uint32)
    mix = lambda odd: jnp.sum(bits * (2 * position + 1) * jnp.uint32(odd), axis=-1, dtype=jnp.uint32)
    data = jnp.stack([mix(0x9E3779B1), mix(0x85EBCA77)], axis=-1)
    return jax.vmap(lambda d: jax.random.wrap_key_data(d, impl="threefry2x32"))(data)


def random_noise(keys, specs, dtype):
    """{conv name: (N, R, R) noise maps}: one standard normal draw per sample key, cut into the maps."""
    convs = [s for s in specs if s.kind == "conv"]
    sizes = [s.resolution ** 2 for s in convs]
    flat = jax.vmap(lambda key: jax.random.normal(key, (sum(sizes),), dtype))(keys)
    offsets = np.cumsum([0] + sizes)
    return {s.name: flat[:, a:b].reshape(-1, s.resolution, s.resolution)
            for s, a, b in zip(convs, offsets[:-1], offsets[1:])}


class Affine(nn.Module):
    """The style of a layer: s = w (A / sqrt(w_dim)) + b. `weight` is (w_dim, C_in)."""
    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, w):
        weight = self.param("weight", nn.initializers.normal(1.0), (w.shape[-1], self.channels))
        bias = self.param("bias", nn.initializers.ones, (self.channels,))
        return matmul(w, weight.astype(self.dtype) * (1 / math.sqrt(w.shape[-1]))) + bias.astype(self.dtype)


class SynthesisLayer(nn.Module):
    """Modulated conv -> noise -> bias, LeakyReLU * sqrt(2) -> [clamp]; or, for torgb,
    a 1x1 conv with style / sqrt(C_in) and no demodulation -> bias -> [clamp].

    Parameters: `weight` (kh, kw, C_in, C_out) HWIO, `bias` (C_out,), `affine`;
    convs also `noise_strength` () and `noise_const` (R, R).
    """
    spec: LayerSpec
    conv_clamp: Optional[float] = None
    dtype: Any = jnp.float32

    def setup(self):
        s = self.spec
        size = 3 if s.kind == "conv" else 1
        self.affine = Affine(s.in_channels, self.dtype)
        self.weight = self.param("weight", nn.initializers.normal(1.0), (size, size, s.in_channels, s.out_channels))
        self.bias = self.param("bias", nn.initializers.zeros, (s.out_channels,))
        if s.kind == "conv":
            self.noise_strength = self.param("noise_strength", nn.initializers.zeros, ())
            self.noise_const = self.param("noise_const", nn.initializers.normal(1.0), (s.resolution, s.resolution))

    def style(self, w):
        return self.affine(w)

    def __call__(self, x, style, noise):
        """`noise`: (N or 1, R, R) maps to add (times noise_strength), or None."""
        weight, bias = self.weight.astype(self.dtype), self.bias.astype(self.dtype)
        if self.spec.kind == "torgb":
            y = matmul(x * (style * (1 / math.sqrt(self.spec.in_channels)))[:, None, None, :], weight[0, 0]) + bias
        else:
            y = modulated_conv(x, weight, style, self.spec.up)
            if noise is not None:
                y = y + self.noise_strength.astype(self.dtype) * noise[..., None].astype(self.dtype)
            y = lrelu_gain(y + bias)
        if self.conv_clamp is not None:
            y = jnp.clip(y, -self.conv_clamp, self.conv_clamp)
        return y


class FullyConnected(nn.Module):
    """x (W * lr / sqrt(in)) + b * lr, then LeakyReLU * sqrt(2): a mapping layer with its
    learning-rate multiplier `lr` folded in. `weight` is (in, out), stored unscaled."""
    features: int
    lr: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.normal(1.0 / self.lr), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = matmul(x, weight.astype(self.dtype) * (self.lr / math.sqrt(x.shape[-1])))
        return lrelu_gain(x + bias.astype(self.dtype) * self.lr)


class MappingNetwork(nn.Module):
    """z -> w: the 2nd-moment normalisation, then `num_layers` FullyConnected, fc0, fc1, ..."""
    w_dim: int
    num_layers: int
    lr: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        x = normalize_2nd_moment(z.astype(self.dtype))
        for i in range(self.num_layers):
            x = FullyConnected(self.w_dim, self.lr, self.dtype, name=f"fc{i}")(x)
        return x


class StyleGAN2Module(nn.Module):
    """Runs the generator up to layer index `stop` (all if None); see `StyleGAN2` for the API."""
    config: "StyleGAN2"

    @nn.compact
    def __call__(self, z, stop=None, capture=(), edits=None):
        cfg, edits, captured = self.config, edits or {}, {}
        specs = cfg.specs[:stop]
        w = MappingNetwork(cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr, cfg.dtype, name="mapping")(z)
        w_avg = self.param("w_avg", nn.initializers.zeros, (cfg.w_dim,)).astype(cfg.dtype)
        ws = jnp.repeat(w[:, None, :], cfg.num_ws, axis=1)
        if cfg.truncation_psi != 1:
            cut = cfg.num_ws if cfg.truncation_cutoff is None else cfg.truncation_cutoff
            ws = ws.at[:, :cut].set(w_avg + cfg.truncation_psi * (ws[:, :cut] - w_avg))
        noise = random_noise(noise_keys(z), cfg.specs, cfg.dtype) if cfg.noise == "random" else {}

        def run(name, value):
            value = edits[name](value) if name in edits else value
            if name in capture:
                captured[name] = value
            return value

        const = self.param("const", nn.initializers.normal(1.0), (4, 4, cfg.channels[0])).astype(cfg.dtype)
        x, img = jnp.broadcast_to(const, (z.shape[0], *const.shape)), None
        for spec in specs:
            layer = SynthesisLayer(spec, cfg.conv_clamp, cfg.dtype, name=spec.name)
            style = run(spec.name + STYLE, layer.style(ws[:, spec.w_index]))
            if spec.kind == "torgb":
                y = layer(x, style, None)
                img = y if img is None else upsample_image(img) + y
            else:
                maps = layer.noise_const[None] if cfg.noise == "const" else noise.get(spec.name)
                x = run(spec.name, layer(x, style, maps))
        return (img if stop is None else None), captured


@dataclasses.dataclass(frozen=True)
class StyleGAN2(Generator):
    """A StyleGAN2 generator architecture and how it is run (jaxdissect.models.generator's protocol).

    `channels` are the feature channels at resolutions 4, 8, ..., `resolution`.
    Methods are pure functions of `params` (the Flax variables dict) and arrays.
    `f` is the protocol's default, which needs the latents z: the layers after
    the split take their styles and noise from z, and the image accumulated
    by the earlier blocks' torgbs; under jit, what only fed the split layer
    is not computed. Styles (`style_names`) can be captured and edited like
    featuremaps.
    """
    z_dim: int
    w_dim: int
    mapping_layers: int
    channels: tuple
    conv_clamp: Optional[float] = None
    mapping_lr: float = 0.01
    truncation_psi: float = 1.0
    truncation_cutoff: Optional[int] = None
    noise: str = "random"
    dtype: Any = jnp.float32

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {self.noise!r}")

    ARCHITECTURE = ("z_dim", "w_dim", "mapping_layers", "channels", "conv_clamp", "mapping_lr")
    OPTIONS = ("truncation_psi", "truncation_cutoff", "noise")

    @classmethod
    def from_meta(cls, meta, dtype=jnp.float32):
        return cls(**{k: meta[k] for k in cls.ARCHITECTURE + cls.OPTIONS}, dtype=dtype)

    def meta(self, source):
        """The meta.json of a model folder holding this generator; `source` says where it came from."""
        fields = {k: getattr(self, k) for k in self.ARCHITECTURE + self.OPTIONS}
        return {"kind": "stylegan2", **fields, "channels": list(self.channels), "resolution": self.resolution,
                "layers": [{"name": name, "shape": list(self.featuremap_shape(name))} for name in self.layer_names],
                "source": source}

    @property
    def specs(self):
        return layer_specs(self.channels)

    @property
    def latent_size(self):
        return self.z_dim

    @property
    def resolution(self):
        return 4 * 2 ** (len(self.channels) - 1)

    @property
    def num_ws(self):
        return 2 * len(self.channels)

    @property
    def layer_names(self):
        """The conv outputs, in run order: the featuremaps to dissect."""
        return tuple(s.name for s in self.specs if s.kind == "conv")

    @property
    def style_names(self):
        """The style vectors of every conv and torgb, (N, C_in) each: capture and edit targets."""
        return tuple(s.name + STYLE for s in self.specs)

    def featuremap_shape(self, layer):
        """(H, W, C) of a layer's output; (C_in,) of a style."""
        spec = self.specs[self.layer_index(layer)]
        if layer.endswith(STYLE):
            return (spec.in_channels,)
        return (spec.resolution, spec.resolution, spec.out_channels)

    def layer_index(self, name):
        """The run-order position of a layer or style; ValueError naming the valid ones if unknown."""
        names = [s.name for s in self.specs]
        base = name[:-len(STYLE)] if name.endswith(STYLE) else name
        if base not in names or (base == name and name not in self.layer_names):
            raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(self.layer_names)}; "
                             f"styles: {', '.join(self.style_names)}")
        return names.index(base)

    @property
    def module(self):
        return StyleGAN2Module(self)

    def init(self, rng):
        return self.module.init(rng, jnp.zeros((1, self.z_dim), jnp.float32))

    def mapping(self, params, z):
        """w (N, w_dim) of latents z, before truncation."""
        module = MappingNetwork(self.w_dim, self.mapping_layers, self.mapping_lr, self.dtype)
        return module.apply({"params": params["params"]["mapping"]}, z)
