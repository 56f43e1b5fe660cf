"""--mode=generate: images (and chosen featuremaps) of a generator for given latents.

    python main.py --mode=generate --generator=DIR --z=Z.npy --out=OUT.npz \
        [--capture=layer4,layer6] [--batch_size=8] [--png_dir=DIR]

OUT.npz holds `image` (N, 3, R, R) and one (N, C, H, W) array per captured
layer (a StyleGAN2 style `LAYER.style`: (N, C)), float32, in the original
tools' NCHW layout. The .npz and the PNG folder appear together, complete,
or not at all.
"""
import contextlib
import os
import re

import jax
import numpy as np
from absl import flags
from PIL import Image

from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, check_output_file, check_output_folder, require
from jaxdissect.errors import UserError
from jaxdissect.io import files
from jaxdissect.models.load import load_generator
from jaxdissect.progress import Progress

flags.DEFINE_string("z", None, "generate: .npy file of latents, float, shape (N, latent_size).")
flags.DEFINE_list("capture", [], "generate: layers whose featuremaps to save too, e.g. layer4,layer6.")
flags.DEFINE_string("png_dir", None, "generate: also write each image as DIR/NNNNNN.png (replacing the folder).")

PNG_NAME = re.compile(r"\d{6}\.png")


def read_latents(path, latent_size):
    """Loads an (N, latent_size) float .npy as float32; UserError naming the problem."""
    z = files.load_npy(path, "z")
    if z.ndim != 2 or z.shape[1] != latent_size or z.shape[0] == 0:
        raise UserError(f"--z={path}: shape {z.shape}, expected (N, {latent_size}) with N >= 1")
    if z.dtype.kind != "f":
        raise UserError(f"--z={path}: dtype {z.dtype}, expected float32 or float64")
    z = z.astype(np.float32)
    if not np.isfinite(z).all():
        bad = np.argwhere(~np.isfinite(z))[0]
        raise UserError(f"--z={path}: latent {bad[0]} holds {z[tuple(bad)]} (every value must be finite)")
    return z


def generate(model, params, z, capture=(), batch_size=8):
    """Runs the generator over `z` in fixed-size batches; returns NCHW float32 arrays.

    The last batch is padded with zeros so that every call has the same shape
    and the jitted generator compiles once.
    """
    for name in capture:
        try:
            model.layer_index(name)
        except ValueError as e:
            raise UserError(f"--capture: {e}") from None
    batch = min(batch_size, len(z))
    run = jax.jit(lambda params, z: model(params, z, capture=tuple(capture)))
    chunks = {name: [] for name in ("image", *capture)}
    progress = Progress("generate", len(z), unit="images")
    for start in range(0, len(z), batch):
        block = z[start:start + batch]
        count = len(block)
        block = np.concatenate([block, np.zeros((batch - count, z.shape[1]), z.dtype)])
        image, captured = run(params, block)
        for name, value in [("image", image), *captured.items()]:
            value = np.asarray(value, np.float32)[:count]
            chunks[name].append(np.transpose(value, (0, 3, 1, 2)) if value.ndim == 4 else value)
        progress.update(start + count)
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def image_bytes(images):
    """NCHW images nominally in [-1, 1] -> NHWC uint8, as the original tools round them."""
    scaled = np.clip((np.asarray(images, np.float64) + 1) / 2 * 255, 0, 255)
    return np.rint(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def save_pngs(folder, images):
    for i, pixels in enumerate(image_bytes(images)):
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:06d}.png"))


@register("generate", "Generate images (and layer featuremaps) for latents from a .npy file.")
def run():
    require("generator", "z", "out")
    check_output_file("out", ["image"])
    if FLAGS.png_dir:
        check_output_folder("png_dir", PNG_NAME.fullmatch)
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size}: must be at least 1")
    model, params = load_generator(FLAGS.generator)
    z = read_latents(FLAGS.z, model.latent_size)
    arrays = generate(model, params, z, FLAGS.capture, FLAGS.batch_size)
    with files.atomic_folder(FLAGS.png_dir) if FLAGS.png_dir else contextlib.nullcontext() as png_dir:
        if png_dir:
            save_pngs(png_dir, arrays["image"])
        files.save_npz(FLAGS.out, arrays)
    print(f"wrote {FLAGS.out}: {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")
