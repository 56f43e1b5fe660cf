"""Modes that train the toy world's models (resumable: rerun the same command to continue)."""
import dataclasses
import json
import os

from absl import flags

from jaxdissect.checkpoint import save_model
from jaxdissect.cli import register

flags.DEFINE_string("workdir", None, "Training folder: checkpoints, metrics.jsonl and the exported model folders.")
flags.DEFINE_integer("train_steps", 20000, "Total optimiser steps of a training run (a resumed run continues to this).")
flags.DEFINE_integer("train_batch_size", 32, "Images per training step.")
flags.DEFINE_list("gan_sizes", ["128", "128", "128", "32", "16", "8"],
                  "ProGAN channel table of the toy generator: latent size, then channels at 4x4, 8x8, ...")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_float("r1_gamma", 0.2, "Weight of the R1 gradient penalty on real images (GAN training).")
flags.DEFINE_integer("train_seed", 0, "Seed of the initial weights and of the training data stream.")
flags.DEFINE_list("seg_depths", ["1", "1", "1", "1"], "Bottlenecks per ResNet stage of the toy segmenter.")
flags.DEFINE_integer("seg_fpn_dim", 64, "Channels of the toy segmenter's pyramid pooling and FPN.")
flags.DEFINE_list("seg_ppm_scales", ["1", "2", "4"], "Pooled sizes of the toy segmenter's pyramid pooling module.")
flags.DEFINE_integer("seg_input_size", 128, "Network input size of the toy segmenter (images are resampled to it).")

FLAGS = flags.FLAGS


@register("train_gan", "Train the toy world's ProGAN generator and discriminator (resumable).")
def run_train_gan():
    from jaxdissect.cli.common import require
    from jaxdissect.toyworld import world
    from jaxdissect.training import gan

    require("workdir")
    config = gan.GANConfig(sizes=tuple(int(s) for s in FLAGS.gan_sizes), batch_size=FLAGS.train_batch_size,
                           steps=FLAGS.train_steps, learning_rate=FLAGS.learning_rate,
                           r1_gamma=FLAGS.r1_gamma, seed=FLAGS.train_seed)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    state = gan.train(config, FLAGS.workdir, lambda key, n: world.render(key, n, config.generator.resolution)[0])
    export_gan(config, state, FLAGS.workdir)


def exported_steps(dst):
    """The training step recorded in the model folder `dst`, or None when there is none."""
    try:
        with open(os.path.join(dst, "meta.json")) as f:
            return json.load(f)["source"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def export(dst, steps, write):
    """Calls `write(dst, replace=True)` unless `dst` already holds the export of step `steps`.

    A resumed run that trains further replaces its older export.
    """
    if exported_steps(dst) == steps:
        print(f"{dst} holds step {steps} already")
        return
    write(dst, replace=True)
    print(f"exported {dst} (step {steps})")


def export_gan(config, state, workdir):
    """Writes WORKDIR/generator (the EMA weights) and WORKDIR/discriminator as model folders."""
    steps = int(state["step"])
    source = {"trained_on": "jaxdissect toy world", "steps": steps, "config": dataclasses.asdict(config)}
    targets = {"generator": (state["g_ema"], config.generator.meta(source)),
               "discriminator": (state["d"], {"kind": "proggan_discriminator",
                                              "widths": list(config.sizes[1:]), "source": source})}
    for name, (params, meta) in targets.items():
        export(os.path.join(workdir, name), steps,
               lambda dst, replace, params=params, meta=meta: save_model(dst, params, meta, replace))


@register("train_segmenter", "Train the toy world's UPerNet segmenter on exact labels (resumable).")
def run_train_segmenter():
    from jaxdissect.cli.common import require
    from jaxdissect.toyworld import world
    from jaxdissect.training import segmenter

    require("workdir")
    config = segmenter.SegmenterTrainConfig(
        depths=tuple(int(d) for d in FLAGS.seg_depths), fpn_dim=FLAGS.seg_fpn_dim,
        ppm_scales=tuple(int(s) for s in FLAGS.seg_ppm_scales), input_size=FLAGS.seg_input_size,
        batch_size=FLAGS.train_batch_size, steps=FLAGS.train_steps,
        learning_rate=FLAGS.learning_rate, seed=FLAGS.train_seed)
    os.makedirs(FLAGS.workdir, exist_ok=True)
    labels_meta = world.label_meta()
    model, state = segmenter.train(config, FLAGS.workdir,
                                   lambda key, n: world.render(key, n, config.resolution), labels_meta)
    export(os.path.join(FLAGS.workdir, "segmenter"), int(state["step"]),
           lambda dst, replace: segmenter.export(config, model, state, dst, labels_meta, "jaxdissect toy world",
                                                 replace))
