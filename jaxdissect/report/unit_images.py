"""Top-activating samples of each unit with its thresholded region outlined."""
import functools
import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxdissect import parallel
from jaxdissect.segmentation.resample import bilinear_matrix

OUTLINE = np.array([255, 230, 0], np.uint8)


@functools.lru_cache(maxsize=None)
def _images_and_maps(generator, layer):
    def fn(params, z):
        images, maps = generator(params, z, capture=(layer,))
        return images, maps[layer].astype(jnp.float32)
    return jax.jit(fn)


def render_samples(generator, params, layer, seed, indices, batch_size):
    """Images (n, R, R, 3) uint8 and featuremaps (n, H, W, U) of global samples `indices`.

    Featuremaps stay at the layer's resolution (memory); `upsample` one unit's map when drawing.
    """
    indices = np.asarray(indices)
    fn = _images_and_maps(generator, layer)
    images, maps = [], []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - len(chunk))])
        z = np.concatenate([parallel.latents(seed, int(i), int(i) + 1, generator.latent_size) for i in padded])
        image, fmap = fn(params, z)
        images.append(to_bytes(np.asarray(image, np.float32)[:len(chunk)]))
        maps.append(np.asarray(fmap)[:len(chunk)])
    return np.concatenate(images), np.concatenate(maps)


def to_bytes(images):
    """Images nominally in [-1, 1] -> uint8, as the original tools round them."""
    return np.rint(np.clip((np.asarray(images, np.float64) + 1) / 2 * 255, 0, 255)).astype(np.uint8)


def upsample(unit_map, size):
    """One unit's (H, W) map upsampled bilinearly to `size`, as the dissection upsamples it."""
    rows = bilinear_matrix(unit_map.shape[0], size[0])
    cols = bilinear_matrix(unit_map.shape[1], size[1])
    return rows @ np.asarray(unit_map, np.float64) @ cols.T


def outline(mask):
    """Pixels of `mask` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def annotate(image, activation, threshold):
    """The image with the region activation > threshold outlined and the rest dimmed."""
    mask = activation > threshold if threshold is not None else np.zeros(activation.shape, bool)
    shown = np.where(mask[..., None], image, (image * 0.55).astype(np.uint8))
    shown[outline(mask)] = OUTLINE
    return shown


def unit_strip(images, activations, threshold, gap=2):
    """Annotated images side by side, as JPEG bytes."""
    tiles = [annotate(img, act, threshold) for img, act in zip(images, activations)]
    height, width = tiles[0].shape[:2]
    strip = np.full((height, len(tiles) * (width + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        strip[:, i * (width + gap):i * (width + gap) + width] = tile
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def layer_strips(render, layer, units, shown, batch_size):
    """{unit: JPEG strip} for the unit summaries `units` of dissect.json (first `shown` top samples);
    `render(layer, indices, batch_size)` -> (uint8 images or None, featuremaps) draws them (a source's
    `render`, jaxdissect.dissection.sources); no strips when there are no images."""
    wanted = sorted({i for u in units for i in u["top_samples"][:shown]})
    if not wanted:
        return {}
    images, maps = render(layer, wanted, batch_size)
    if images is None:
        return {}
    row = {index: k for k, index in enumerate(wanted)}
    strips = {}
    for u in units:
        rows = [row[i] for i in u["top_samples"][:shown]]
        activations = [upsample(maps[r, :, :, u["unit"]], images.shape[1:3]) for r in rows]
        strips[u["unit"]] = unit_strip(images[rows], activations, u["threshold"])
    return strips
