"""A PNG contact sheet of toy-world scenes, each beside its colour-coded labels.

    python -m jaxdissect.toyworld.preview OUT.png [--seed=0] [--count=64]         # renders, exact labels
    python -m jaxdissect.toyworld.preview OUT.png --generator=weights/toy/generator \
        [--segmenter=weights/toy/segmenter]     # generated samples (latent seed --seed), segmented
"""
import argparse

import jax
import numpy as np
from PIL import Image

from jaxdissect.toyworld.world import CLASS_NAMES, render

# One display colour per class (RGB 0-255), index-aligned with CLASS_NAMES.
LABEL_COLOURS = np.array([
    [0, 0, 0],        # -
    [70, 130, 255],   # sky
    [255, 255, 255],  # cloud
    [40, 200, 40],    # grass
    [150, 150, 150],  # road
    [0, 90, 0],       # tree
    [255, 200, 0],    # building
    [220, 0, 0],      # roof
    [200, 0, 220],    # dome
    [120, 60, 0],     # door
    [0, 240, 240],    # window
], np.uint8)
assert len(LABEL_COLOURS) == len(CLASS_NAMES)


def preview_grid(images, labels, columns=8, overlay=0.6):
    """uint8 grid: each scene next to a copy blended with its label colours (images in [-1, 1], NHWC)."""
    rgb = np.round((np.asarray(images) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    tinted = ((1 - overlay) * rgb + overlay * LABEL_COLOURS[np.asarray(labels)]).astype(np.uint8)
    pairs = np.concatenate([rgb, tinted], axis=2)  # (N, R, 2R, 3)
    n, h, w, _ = pairs.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, pair in enumerate(pairs):
        r, c = divmod(i, columns)
        sheet[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = pair
    return sheet


def generated_samples(generator_path, segmenter_path, seed, count):
    """(images, labels) of generated samples 0..count-1 of latent seed `seed`, labelled by the segmenter."""
    from jaxdissect import parallel
    from jaxdissect.models.load import load_generator
    from jaxdissect.segmentation.segmenter import Segmenter
    generator, g_params = load_generator(generator_path)
    segmenter, s_params = Segmenter.from_model_folder(segmenter_path)
    images, _ = generator(g_params, parallel.latents(seed, 0, count, generator.latent_size))
    return images, segmenter.segment(s_params, images)[:, 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the PNG to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--generator", help="a generator folder: show its samples instead of renders")
    parser.add_argument("--segmenter", default="weights/toy/segmenter", help="labels the generated samples")
    args = parser.parse_args()
    if args.generator:
        images, labels = generated_samples(args.generator, args.segmenter, args.seed, args.count)
    else:
        images, labels = render(jax.random.PRNGKey(args.seed), args.count)
    Image.fromarray(preview_grid(images, labels)).save(args.out)


if __name__ == "__main__":
    main()
