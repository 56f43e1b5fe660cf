"""The deep-stem ResNet encoder of the UPerNet segmenters, as Flax modules.

Module names mirror the PyTorch state-dict keys, so a key such as
`layer1.0.downsample.1.running_mean` is the Flax variable
`batch_stats/layer1/0/downsample/1/mean`: conversion is a transpose of the
conv kernels (OIHW -> HWIO) and a renaming of the leaves (see
`jaxdissect.segmentation.upernet.params_from_state_dicts`).

BatchNorm uses its running statistics (`train=False`) unless asked to use
batch statistics, in which case the `batch_stats` collection must be mutable.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdissect.segmentation.resample import precision_for

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: keeps 0.9 of the old average (PyTorch momentum 0.1)


def conv(features, kernel_size, stride=1, use_bias=False, dtype=jnp.float32, name=None):
    """A square conv with PyTorch's symmetric padding (kernel_size // 2 on each side)."""
    pad = kernel_size // 2
    return nn.Conv(features, (kernel_size, kernel_size), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), use_bias=use_bias, dtype=dtype,
                   precision=precision_for(dtype), name=name)


def batch_norm(train, dtype, name):
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                        dtype=dtype, name=name)


class ConvBN(nn.Module):
    """conv (no bias) -> BN [-> ReLU], named like a PyTorch Sequential: "0" conv, "1" BN."""
    features: int
    kernel_size: int
    stride: int = 1
    relu: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        x = conv(self.features, self.kernel_size, self.stride, dtype=self.dtype, name="0")(x)
        x = batch_norm(train, self.dtype, "1")(x)
        return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels), plus the residual, then ReLU."""
    planes: int
    stride: int
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        residual = x
        for i, (features, size, stride) in enumerate(
                [(self.planes, 1, 1), (self.planes, 3, self.stride), (4 * self.planes, 1, 1)], 1):
            x = conv(features, size, stride, dtype=self.dtype, name=f"conv{i}")(x)
            x = batch_norm(train, self.dtype, f"bn{i}")(x)
            if i < 3:
                x = nn.relu(x)
        if self.downsample:
            residual = ConvBN(4 * self.planes, 1, self.stride, relu=False, dtype=self.dtype,
                              name="downsample")(residual, train)
        return nn.relu(x + residual)


class Stage(nn.Module):
    """`depth` Bottlenecks named "0", "1", ...; the first one strides and downsamples."""
    planes: int
    depth: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        for i in range(self.depth):
            first = i == 0
            needs_projection = first and (self.stride != 1 or x.shape[-1] != 4 * self.planes)
            x = Bottleneck(self.planes, self.stride if first else 1, needs_projection,
                           self.dtype, name=str(i))(x, train)
        return x


class ResNetEncoder(nn.Module):
    """Deep stem (three 3x3 convs, the first with stride 2; 2*stem_width channels out),
    3x3/2 max-pool, then stages of planes base_width * 2**k with strides 1, 2, 2, 2.

    Returns the stem (after the max-pool) and the list of stage outputs.
    """
    depths: Sequence[int] = (3, 4, 6, 3)
    stem_width: int = 64
    base_width: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        x = x.astype(self.dtype)
        stem_channels = (self.stem_width, self.stem_width, 2 * self.stem_width)
        for i, features in enumerate(stem_channels, 1):
            x = conv(features, 3, 2 if i == 1 else 1, dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(batch_norm(train, self.dtype, f"bn{i}")(x))
        stem = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        outputs = []
        x = stem
        for k, depth in enumerate(self.depths):
            x = Stage(self.base_width * 2 ** k, depth, 1 if k == 0 else 2, self.dtype,
                      name=f"layer{k + 1}")(x, train)
            outputs.append(x)
        return stem, outputs
