"""A Progressive-GAN-style discriminator, used to train the toy generator.

It mirrors the generator: equalized learning rate (weights drawn N(0, 1) and
scaled at run time), LeakyReLU 0.2, 2x average pooling between resolutions,
a minibatch standard deviation feature at 4x4 and a dense head. It also gives
the artifact-unit analysis a realism score for toy images.
"""
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def leaky_relu(x):
    return jnp.where(x >= 0, x, 0.2 * x)


class EqualizedConv(nn.Module):
    """Conv with its He scale applied at run time, 'SAME' padding, with bias."""
    features: int
    kernel_size: int = 3
    gain: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x):
        k, cin = self.kernel_size, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        pad = (k - 1) // 2
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), [(pad, pad)] * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y * (self.gain / math.sqrt(cin * k * k)) + bias


class EqualizedDense(nn.Module):
    features: int
    gain: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ kernel * (self.gain / math.sqrt(x.shape[-1])) + bias


def minibatch_stddev(x, group_size=4):
    """Appends one channel: the mean over features of the std over a sample group."""
    n, h, w, c = x.shape
    g = min(group_size, n)
    if n % g:
        g = 1
    y = x.reshape(g, n // g, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)            # (n/g, h, w, c)
    feature = jnp.mean(std, axis=(1, 2, 3))              # (n/g,)
    feature = jnp.tile(feature, g)[:, None, None, None]  # sample i is in group i % (n/g)
    return jnp.concatenate([x, jnp.broadcast_to(feature, (n, h, w, 1))], axis=-1)


class ProGANDiscriminator(nn.Module):
    """Image (N, R, R, 3) -> realism logit (N,).

    `widths[k]` is the channel count at resolution 4 * 2**k, so
    len(widths) = log2(R) - 1; pass the generator's sizes[1:].
    """
    widths: Sequence[int]

    @nn.compact
    def __call__(self, images):
        widths = list(self.widths)
        x = leaky_relu(EqualizedConv(widths[-1], 1, name="from_rgb")(images))
        for k in range(len(widths) - 1, 0, -1):
            x = leaky_relu(EqualizedConv(widths[k], name=f"conv{k}a")(x))
            x = leaky_relu(EqualizedConv(widths[k - 1], name=f"conv{k}b")(x))
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        x = minibatch_stddev(x)
        x = leaky_relu(EqualizedConv(widths[0], name="conv0")(x))
        x = leaky_relu(EqualizedDense(widths[0], name="dense")(x.reshape(x.shape[0], -1)))
        return EqualizedDense(1, gain=1.0, name="logit")(x)[:, 0]
