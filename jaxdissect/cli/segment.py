"""--mode=segment: class maps of images from a .npy file.

    python main.py --mode=segment --segmenter=DIR --images=IMAGES.npy --out=OUT.npz \
        [--downsample=2] [--segdiv=undivided|quad] [--batch_size=8]

IMAGES.npy is float32 (N, 3, H, W) RGB in [-1, 1] (a generator's output).
OUT.npz holds `segmentation` (N, K, H // downsample, W // downsample) int32:
class numbers, K = 3 (object, material, part) or 5 (quad) for the unified
parsing segmenter, 1 for single-head segmenters. labels.json beside OUT
names each class number: {"names": [...], "categories": [...], "category_names": [...]}.
"""
import os

import jax
import numpy as np
from absl import flags

from jaxdissect import parallel
from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, existing_file, require
from jaxdissect.errors import UserError
from jaxdissect.io import files
from jaxdissect.segmentation.segmenter import Segmenter

flags.DEFINE_string("images", None, "segment: .npy file of images, float32 (N, 3, H, W) in [-1, 1].")

LABELS_FILE = "labels.json"
# Images may overshoot [-1, 1] by float rounding (e.g. a tanh output).
RANGE_SLACK = 1e-3


def read_images(path):
    """Loads a float32 (N, 3, H, W) .npy of images in [-1, 1]; UserError naming the problem."""
    images = files.load_npy(path, "images")
    if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
        raise UserError(f"--images={path}: shape {images.shape}, expected (N, 3, H, W) RGB")
    if images.dtype != np.float32:
        raise UserError(f"--images={path}: dtype {images.dtype}, expected float32")
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:
        raise UserError(f"--images={path}: values span [{low:g}, {high:g}], expected [-1, 1]")
    return images


def segment_images(segmenter, params, images, batch_size, downsample):
    """(N, K, h, w) int32 class maps of NCHW `images`, in fixed-size batches.

    Each batch is split across all devices (a mesh with an Auto axis: the
    compiler partitions the per-sample work); the last one is padded with
    zero images so that the jitted segmenter compiles once.
    """
    n_devices = parallel.batch_multiple()
    batch = -(-min(batch_size, len(images)) // n_devices) * n_devices
    per_sample = parallel.batch_sharding(4)
    params = jax.device_put(params, parallel.replicated())
    run = jax.jit(segmenter.segment, static_argnums=2)
    images = np.transpose(images, (0, 2, 3, 1))
    outputs = []
    for start in range(0, len(images), batch):
        block = images[start:start + batch]
        count = len(block)
        block = np.concatenate([block, np.zeros((batch - count, *block.shape[1:]), block.dtype)])
        out = run(params, jax.device_put(block, per_sample), downsample)
        outputs.append(np.asarray(out)[:count])
    return np.concatenate(outputs)


def labels_description(segmenter):
    return {"names": list(segmenter.labels), "categories": list(segmenter.label_categories),
            "category_names": list(segmenter.categories)}


@register("segment", "Segment images from a .npy file (NCHW in [-1, 1]) into class maps (.npz).")
def run():
    require("segmenter", "images", "out")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size}: must be at least 1")
    if FLAGS.downsample < 1:
        raise UserError(f"--downsample={FLAGS.downsample}: must be at least 1")
    if os.path.isdir(FLAGS.out):
        raise UserError(f"--out={FLAGS.out}: is a folder; give the .npz file to write")
    images = read_images(existing_file("images"))
    if min(images.shape[2:]) < FLAGS.downsample:
        raise UserError(f"--downsample={FLAGS.downsample}: larger than the images "
                        f"({images.shape[2]}x{images.shape[3]})")
    segmenter, params = Segmenter.from_model_folder(FLAGS.segmenter, FLAGS.segdiv)
    segmentation = segment_images(segmenter, params, images, FLAGS.batch_size, FLAGS.downsample)
    files.save_npz(FLAGS.out, {"segmentation": segmentation})
    labels_path = os.path.join(os.path.dirname(os.path.abspath(FLAGS.out)), LABELS_FILE)
    files.save_json(labels_path, labels_description(segmenter))
    print(f"wrote {FLAGS.out}: segmentation {segmentation.shape}; {labels_path}: "
          f"{segmenter.num_classes} classes")
