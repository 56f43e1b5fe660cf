"""Resizing and pooling as exact separable matrices built from static shapes.

Every resampling step of the UPerNet segmenters is linear and separable, so it
is one (out, in) matrix per spatial axis, computed once in float64 numpy at
trace time and applied axis by axis (an einsum, or two gathers for the
two-tap rows of bilinear resizing). This reproduces the PyTorch
operators exactly, including the cases where library resizers differ
(`jax.image.resize` antialiases when downsampling; PyTorch's bilinear
interpolation does not).

Arrays are NHWC; the matrices act on axes 1 (rows) and 2 (columns).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) weights of F.interpolate(mode='bilinear', align_corners=False).

    Output sample d reads source coordinate (d + 0.5) * n_in / n_out - 0.5,
    clamped at 0, and mixes its two neighbours linearly (the upper one
    clamped at n_in - 1). No antialiasing, also when n_out < n_in.
    """
    weights = np.zeros((n_out, n_in))
    for d in range(n_out):
        src = max((d + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        weights[d, i0] += 1.0 - frac
        weights[d, i1] += frac
    return weights


@functools.lru_cache(maxsize=None)
def adaptive_avg_matrix(n_in, n_out):
    """(n_out, n_in) weights of AdaptiveAvgPool: bin i is the plain mean of
    samples floor(i*n_in/n_out) .. ceil((i+1)*n_in/n_out) - 1."""
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        start = (i * n_in) // n_out
        stop = -((-(i + 1) * n_in) // n_out)
        weights[i, start:stop] = 1.0 / (stop - start)
    return weights


def _hat_antiderivative(u):
    """Integral from -inf to u of the linear-interpolation hat max(0, 1 - |t|)."""
    u = np.clip(u, -1.0, 1.0)
    return np.where(u <= 0, 0.5 * (u + 1.0) ** 2, 1.0 - 0.5 * (1.0 - u) ** 2)


@functools.lru_cache(maxsize=None)
def prroi_whole_map_matrix(n_in, n_out):
    """(n_out, n_in) axis weights of Precise RoI pooling over the whole map.

    The ROI spans [0, n_in] in sample coordinates (sample x sits at x) and is
    cut into n_out bins of width n_in / n_out. Each bin is the average of the
    bilinear interpolant over the bin; the interpolant is zero beyond the last
    sample, so bins reaching past n_in - 1 lose mass and pooled size 1 gives
    weights [0.5, 1, ..., 1] / n_in. Weight of sample x in bin j:
    (1 / width) * integral over the bin of max(0, 1 - |t - x|) dt.
    """
    width = n_in / n_out
    lo = np.arange(n_out)[:, None] * width
    hi = lo + width
    x = np.arange(n_in)[None, :]
    return (_hat_antiderivative(hi - x) - _hat_antiderivative(lo - x)) / width


def apply_separable(x, row_matrix, col_matrix, precision=None):
    """out[n, i, j, c] = sum_{h, w} row[i, h] * col[j, w] * x[n, h, w, c]."""
    return _apply_axis(_apply_axis(x, row_matrix, 1, precision), col_matrix, 2, precision)


# Matrices with at most this many nonzeros per row are applied as gathers.
_MAX_TAPS = 2


def _apply_axis(x, matrix, axis, precision):
    """out[.., i, ..] = sum_h matrix[i, h] * x[.., h, ..] along `axis`.

    Sparse matrices (bilinear resizing: two taps per output sample) become a
    weighted sum of two gathers, an elementwise expression the compiler fuses
    into whatever consumes the result; dense ones (pooling) an einsum. Both
    add the same nonzero products.
    """
    taps = max(int(np.count_nonzero(matrix, axis=1).max()), 1)
    if taps > _MAX_TAPS:
        dims = "abcdefgh"[:x.ndim]
        source, result = dims[:axis] + "y" + dims[axis + 1:], dims[:axis] + "z" + dims[axis + 1:]
        return jnp.einsum(f"zy,{source}->{result}", jnp.asarray(matrix, x.dtype), x, precision=precision)
    index = np.argsort(matrix == 0, axis=1, kind="stable")[:, :taps]          # nonzero columns first
    weight = np.take_along_axis(matrix, index, axis=1)
    shape = [1] * x.ndim
    shape[axis] = matrix.shape[0]
    terms = [jnp.asarray(weight[:, t], x.dtype).reshape(shape) * jnp.take(x, index[:, t], axis=axis)
             for t in range(taps)]
    return functools.reduce(jnp.add, terms)


def precision_for(dtype):
    """Full float32 accuracy on accelerators (CPUs always have it); bfloat16 runs natively."""
    return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None


def resize_bilinear(x, size):
    """Bilinear resize of NHWC `x` to `size` = (h, w), as PyTorch with align_corners=False."""
    (h_in, w_in), (h_out, w_out) = x.shape[1:3], size
    if (h_in, w_in) == (h_out, w_out):
        return x
    if (h_in, w_in) == (1, 1):
        return jnp.broadcast_to(x, (x.shape[0], h_out, w_out, x.shape[3]))
    return apply_separable(x, bilinear_matrix(h_in, h_out), bilinear_matrix(w_in, w_out),
                           precision_for(x.dtype))


def resize_bilinear_channel_major(x, size):
    """`resize_bilinear(x, size)` laid out channel-major: (N, H, W, C) -> (C, N, h, w).

    The small input is transposed, not the large output: each channel's
    upsampled pixels then lie together, so consumers that work channel by
    channel (each unit's histogram bins, looked up in that unit's table and
    counted into that unit's block) stay within one channel's data.
    """
    (h_in, w_in), (h_out, w_out), precision = x.shape[1:3], size, precision_for(x.dtype)
    x = jnp.transpose(x, (3, 0, 1, 2))
    if (h_in, w_in) == (h_out, w_out):
        return x
    x = _apply_axis(x, bilinear_matrix(h_in, h_out), 2, precision)
    return _apply_axis(x, bilinear_matrix(w_in, w_out), 3, precision)


def resize_bilinear_transpose(y, size):
    """The transpose (adjoint) of `resize_bilinear` from `size` = (H, W) to y's size: (N, h, w, C) -> (N, H, W, C).

    sum(resize_bilinear(x, (h, w)) * y) == sum(x * resize_bilinear_transpose(y, (H, W))).
    """
    (h, w), (h_in, w_in) = y.shape[1:3], size
    return apply_separable(y, bilinear_matrix(h_in, h).T, bilinear_matrix(w_in, w).T, precision_for(y.dtype))


def adaptive_avg_pool(x, size):
    """AdaptiveAvgPool2d(size) of NHWC `x` (area averaging for integer ratios)."""
    (h_in, w_in), (h_out, w_out) = x.shape[1:3], size
    return apply_separable(x, adaptive_avg_matrix(h_in, h_out),
                           adaptive_avg_matrix(w_in, w_out), precision_for(x.dtype))


def prroi_pool_whole_map(x, size):
    """PrRoIPool2D(size, size, 1.0) of NHWC `x` with the ROI (0, 0, W, H)."""
    (h_in, w_in), (h_out, w_out) = x.shape[1:3], size
    return apply_separable(x, prroi_whole_map_matrix(h_in, h_out),
                           prroi_whole_map_matrix(w_in, w_out), precision_for(x.dtype))
