"""The wire format of a brush mask: a bitmap at image resolution, packed 8 pixels a byte, in base64.

Pixels are row-major, most significant bit first (numpy's `packbits`), so an
R x R mask is R*R/8 bytes: 8 KiB for a 256 x 256 image, before base64.
"""
import base64
import binascii

import numpy as np


def packed_length(resolution):
    """Characters of the base64 text of an R x R mask."""
    n_bytes = (resolution * resolution + 7) // 8
    return 4 * ((n_bytes + 2) // 3)


def encode_mask(mask):
    """(R, R) bool -> base64 text."""
    return base64.b64encode(np.packbits(np.asarray(mask, bool).reshape(-1)).tobytes()).decode("ascii")


def decode_mask(text, resolution):
    """base64 text -> (R, R) bool; ValueError with a one-line reason if it is not an R x R mask."""
    if len(text) != packed_length(resolution):
        raise ValueError(f"mask has {len(text)} base64 characters; a {resolution}x{resolution} "
                         f"mask has {packed_length(resolution)}")
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("mask is not valid base64") from None
    bits = np.unpackbits(np.frombuffer(packed, np.uint8))
    return bits[:resolution * resolution].reshape(resolution, resolution).astype(bool)
