"""--mode=segment: class maps of images from a .npy file or a generate-mode .npz.

    python main.py --mode=segment --segmenter=DIR --images=IMAGES.npy --out=OUT.npz \
        [--downsample=2] [--segdiv=undivided|quad] [--batch_size=8]

IMAGES is float (N, 3, H, W) RGB, nominally in [-1, 1] (a generator's output;
like the original segmenter, values outside it are taken as they are), in a
.npy or as the `image` array of the .npz written by --mode=generate.
OUT.npz holds `segmentation` (N, K, H // downsample, W // downsample) int32:
class numbers, K = 3 (object, material, part) or 5 (quad) for the unified
parsing segmenter, 1 for single-head segmenters; and the strings naming
them: `names` (per class number), `categories` (per class number) and
`category_names` (per head).
"""
import jax
import numpy as np
from absl import flags

from jaxdissect import parallel
from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, check_output_file, require
from jaxdissect.errors import UserError
from jaxdissect.io import files
from jaxdissect.progress import Progress
from jaxdissect.segmentation.segmenter import Segmenter

flags.DEFINE_string("images", None, "segment: images, float (N, 3, H, W) RGB, nominally in [-1, 1]: a .npy, "
                    "or the .npz of --mode=generate (its 'image' array).")


def read_images(path):
    """Loads float (N, 3, H, W) images as float32 from a .npy or a generate .npz; UserError naming the problem."""
    images = files.load_array(path, "images", "image")
    if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
        raise UserError(f"--images={path}: shape {images.shape}, expected (N, 3, H, W) RGB")
    if images.dtype.kind != "f":
        raise UserError(f"--images={path}: dtype {images.dtype}, expected float32 or float64")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        bad = np.argwhere(~np.isfinite(images))[0]
        raise UserError(f"--images={path}: image {bad[0]} holds {images[tuple(bad)]} (every value must be finite)")
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
    progress = Progress("segment", len(images), unit="images")
    for start in range(0, len(images), batch):
        block = images[start:start + batch]
        count = len(block)
        block = np.concatenate([block, np.zeros((batch - count, *block.shape[1:]), block.dtype)])
        out = run(params, jax.device_put(block, per_sample), downsample)
        outputs.append(np.asarray(out)[:count])
        progress.update(start + count)
    return np.concatenate(outputs)


def label_arrays(segmenter):
    """The strings naming the class numbers, as arrays for the output .npz."""
    return {"names": np.array(segmenter.labels, str), "categories": np.array(segmenter.label_categories, str),
            "category_names": np.array(segmenter.categories, str)}


@register("segment", "Segment images (a .npy, or generate's .npz; NCHW) into class maps (.npz).")
def run():
    require("segmenter", "images", "out")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size}: must be at least 1")
    if FLAGS.downsample < 1:
        raise UserError(f"--downsample={FLAGS.downsample}: must be at least 1")
    check_output_file("out", ["segmentation"])
    images = read_images(FLAGS.images)
    if min(images.shape[2:]) < FLAGS.downsample:
        raise UserError(f"--downsample={FLAGS.downsample}: larger than the images "
                        f"({images.shape[2]}x{images.shape[3]})")
    segmenter, params = Segmenter.from_model_folder(FLAGS.segmenter, FLAGS.segdiv)
    segmentation = segment_images(segmenter, params, images, FLAGS.batch_size, FLAGS.downsample)
    files.save_npz(FLAGS.out, {"segmentation": segmentation, **label_arrays(segmenter)})
    print(f"wrote {FLAGS.out}: segmentation {segmentation.shape}, {segmenter.num_classes} classes")
