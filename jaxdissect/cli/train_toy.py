"""Modes that train the toy world's models (resumable: rerun the same command to continue)."""
import dataclasses
import json
import os

from absl import flags

from jaxdissect.checkpoint import save_model
from jaxdissect.cli import register
from jaxdissect.io.files import check_writable_folder

flags.DEFINE_string("workdir", None, "Training folder: checkpoints, metrics.jsonl and the exported model folders.")
flags.DEFINE_integer("train_steps", 20000, "Total optimiser steps of a training run (a resumed run continues to this).")
flags.DEFINE_integer("train_batch_size", 32, "Images per training step.")
flags.DEFINE_enum("gan_arch", "proggan", ["proggan", "stylegan2"],
                  "Architecture of the toy generator (GAN training); both train against the same ProGAN-style "
                  "discriminator, widths --gan_sizes[1:].")
flags.DEFINE_list("gan_sizes", ["128", "128", "128", "32", "16", "8"],
                  "Channel table of the toy generator: latent size (z, and w for a StyleGAN2), then channels at "
                  "4x4, 8x8, ...; the image is 4 * 2**(len - 2) pixels square.")
flags.DEFINE_integer("mapping_layers", 2, "StyleGAN2 only: fully connected layers of its mapping network z -> w.")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_float("r1_gamma", 0.2, "Weight of the R1 gradient penalty on real images (GAN training).")
flags.DEFINE_integer("train_seed", 0, "Seed of the initial weights and of the training data stream.")
flags.DEFINE_string("init_from", None,
                    "GAN training only: a folder with generator/ and discriminator/ model folders (e.g. weights/toy) "
                    "to fine-tune from, with fresh optimisers. Used when --workdir has no checkpoint yet.")
flags.DEFINE_list("favour_classes", [],
                  "GAN training only: CLASS:ODDS pairs (e.g. dome:3); real scenes showing CLASS are drawn ODDS "
                  "times as often, to rebalance classes the generator under-draws.")
flags.DEFINE_list("seg_depths", ["1", "1", "1", "1"], "Bottlenecks per ResNet stage of the toy segmenter.")
flags.DEFINE_integer("seg_fpn_dim", 64, "Channels of the toy segmenter's pyramid pooling and FPN.")
flags.DEFINE_list("seg_ppm_scales", ["1", "2", "4"], "Pooled sizes of the toy segmenter's pyramid pooling module.")
flags.DEFINE_integer("seg_input_size", 128, "Network input size of the toy segmenter (images are resampled to it).")

FLAGS = flags.FLAGS


@register("train_gan", "Train the toy world's generator (ProGAN or StyleGAN2) and discriminator (resumable).")
def run_train_gan():
    from jaxdissect.cli.common import require
    from jaxdissect.toyworld import world
    from jaxdissect.training import gan

    require("workdir")
    check_writable_folder(FLAGS.workdir, "workdir")
    config = gan.GANConfig(sizes=tuple(int(s) for s in FLAGS.gan_sizes), arch=FLAGS.gan_arch,
                           mapping_layers=FLAGS.mapping_layers, batch_size=FLAGS.train_batch_size,
                           steps=FLAGS.train_steps, learning_rate=FLAGS.learning_rate,
                           r1_gamma=FLAGS.r1_gamma, seed=FLAGS.train_seed)
    odds = class_odds(FLAGS.favour_classes, world.CLASS_NAMES)
    initial_state = None
    if FLAGS.init_from:
        initial_state = gan.state_from_models(config, *trained_gan(FLAGS.init_from, config))
    os.makedirs(FLAGS.workdir, exist_ok=True)
    resolution = config.generator.resolution
    if odds is None:
        sample_real = lambda key, n: world.render(key, n, resolution)[0]
    else:
        sample_real = lambda key, n: world.render_favouring(key, n, odds, resolution)[0]
    state = gan.train(config, FLAGS.workdir, sample_real, initial_state)
    lineage = {"init_from": FLAGS.init_from, "favour_classes": list(FLAGS.favour_classes)}
    export_gan(config, state, FLAGS.workdir, {k: v for k, v in lineage.items() if v})


def class_odds(pairs, class_names):
    """Per-class odds from CLASS:ODDS strings (1 for classes not named); None when `pairs` is empty."""
    from jaxdissect.errors import UserError

    if not pairs:
        return None
    odds = [1.0] * len(class_names)
    for pair in pairs:
        name, _, value = pair.partition(":")
        if name not in class_names[1:]:
            raise UserError(f"--favour_classes: unknown class {name!r}; the toy world has "
                            f"{', '.join(class_names[1:])}")
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"--favour_classes: {pair!r} is not CLASS:ODDS with a number for ODDS") from None
        if value <= 0:
            raise UserError(f"--favour_classes: odds must be positive, got {pair!r}")
        odds[class_names.index(name)] = value
    return odds


def trained_gan(folder, config):
    """(generator params, discriminator params) from FOLDER/generator and FOLDER/discriminator, checked
    against the architecture of `config` (--gan_arch, --gan_sizes, --mapping_layers)."""
    from jaxdissect.causal.artifacts import load_discriminator
    from jaxdissect.errors import UserError
    from jaxdissect.models.load import load_generator

    generator, g_params = load_generator(os.path.join(folder, "generator"))
    if generator != config.generator:
        raise UserError(f"--init_from={folder}: its generator is {describe_generator(generator)}, "
                        f"the flags ask for {describe_generator(config.generator)}")
    discriminator, d_params = load_discriminator(os.path.join(folder, "discriminator"),
                                                 config.generator.resolution)
    if tuple(discriminator.widths) != config.sizes[1:]:
        raise UserError(f"--init_from={folder}: its discriminator has widths {list(discriminator.widths)}, "
                        f"--gan_sizes asks for {list(config.sizes[1:])}")
    return g_params, d_params


def describe_generator(generator):
    """'ARCH sizes [...]' (and the mapping layers of a StyleGAN2), as the training flags name it."""
    from jaxdissect.models.stylegan2 import StyleGAN2

    if isinstance(generator, StyleGAN2):
        return (f"stylegan2 sizes {[generator.z_dim, *generator.channels]} "
                f"with {generator.mapping_layers} mapping layers")
    return f"proggan sizes {list(generator.sizes)}"


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


def export_gan(config, state, workdir, lineage):
    """Writes WORKDIR/generator (the EMA weights) and WORKDIR/discriminator as model folders.

    `lineage` (the --init_from folder and --favour_classes, when given) is recorded in their meta.json.
    """
    steps = int(state["step"])
    source = {"trained_on": "jaxdissect toy world", "steps": steps, "config": dataclasses.asdict(config),
              **lineage}
    g_params = state["g_ema"]
    if config.arch == "stylegan2":
        g_params, source["w_avg"] = with_average_w(config.generator, g_params)
    targets = {"generator": (g_params, config.generator.meta(source)),
               "discriminator": (state["d"], {"kind": "proggan_discriminator",
                                              "widths": list(config.sizes[1:]), "source": source})}
    for name, (params, meta) in targets.items():
        export(os.path.join(workdir, name), steps,
               lambda dst, replace, params=params, meta=meta: save_model(dst, params, meta, replace))


def with_average_w(generator, params):
    """A StyleGAN2's params with w_avg (used by truncation) set to its mean w, and how it was computed."""
    from jaxdissect.models.stylegan2_convert import AVERAGE_SAMPLES, AVERAGE_SEED, average_w

    params = {"params": {**params["params"], "w_avg": average_w(generator, params)}}
    return params, f"computed: mean w of {AVERAGE_SAMPLES} latents of numpy default_rng({AVERAGE_SEED})"


@register("train_segmenter", "Train the toy world's UPerNet segmenter on exact labels (resumable).")
def run_train_segmenter():
    from jaxdissect.cli.common import require
    from jaxdissect.toyworld import world
    from jaxdissect.training import segmenter

    require("workdir")
    check_writable_folder(FLAGS.workdir, "workdir")
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
