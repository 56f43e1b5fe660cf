"""--mode=dissect (the main job) and --mode=report (relabel and redraw a finished dissection).

    python main.py --mode=dissect --flagfile=configs/toy.cfg
    python main.py --mode=report --outdir=runs/toy --min_iou=0.04 --generator=...

OUTDIR gets dissect.json (per layer and unit: label, IoU, threshold, ...),
stats/LAYER.npz (raw statistics and both rules' unit-class matrices),
report.html, run.json (flags and versions) and the checkpoints that let a
killed run resume where it stopped.
"""
import hashlib
import json
import os

from absl import flags

from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, require, write_run_record
from jaxdissect.errors import UserError
from jaxdissect.io.files import check_writable_folder

flags.DEFINE_list("layers", ["layer4"], "dissect: generator layers to dissect (one pass serves them all).")
flags.DEFINE_integer("samples", 10000, "dissect: number of generated samples.")
flags.DEFINE_integer("bins", 256, "dissect: histogram bins per unit; thresholds are bin edges, so a quantile "
                     "threshold is within one bin of the exact quantile and every count at it is exact.")
flags.DEFINE_integer("top_k", 12, "dissect: samples kept per unit, by peak activation.")
flags.DEFINE_integer("report_images", 8, "dissect/report: top samples shown per unit in report.html.")
flags.DEFINE_enum("rule", "iqr", ["iqr", "quantile"],
                  "dissect/report: threshold rule for the labels: 'iqr' (the paper: per unit and class, "
                  "maximise I/H) or 'quantile' (NetDissect: the unit's top --quantile).")
flags.DEFINE_float("quantile", 0.99, "dissect/report: quantile of the 'quantile' rule (0.99 = top 1%).")
flags.DEFINE_integer("iqr_levels", 100, "dissect/report: candidate thresholds searched by the 'iqr' rule.")
flags.DEFINE_float("iqr_smallest_fraction", 1e-3, "dissect/report: the 'iqr' candidates are the unit's "
                   "upper-tail quantiles at fractions logspaced from this to 1.")
flags.DEFINE_float("iqr_min_agreement", 0.8, "dissect/report: 'iqr' only considers thresholds where unit and "
                   "class agree on more than this fraction of pixels.")
flags.DEFINE_float("min_iou", 0.05, "dissect/report: a unit is interpretable above this IoU with its best "
                   "class (paper: 0.05; the later code used 0.04).")
flags.DEFINE_float("min_agreement", 0.75, "dissect/report: ... and above this pixel agreement (paper: 0.75).")
flags.DEFINE_integer("checkpoint_every", 20, "dissect: batches between checkpoints of the running statistics.")


def settings_from_flags():
    from jaxdissect.dissection.engine import DissectSettings
    checks = [("samples", FLAGS.samples >= 1), ("batch_size", FLAGS.batch_size >= 1),
              ("bins", FLAGS.bins >= 2), ("top_k", FLAGS.top_k >= 1), ("downsample", FLAGS.downsample >= 1),
              ("quantile", 0 < FLAGS.quantile < 1), ("iqr_levels", FLAGS.iqr_levels >= 1),
              ("iqr_smallest_fraction", 0 < FLAGS.iqr_smallest_fraction <= 1),
              ("checkpoint_every", FLAGS.checkpoint_every >= 1)]
    for name, ok in checks:
        if not ok:
            raise UserError(f"--{name}={FLAGS[name].value}: out of range")
    return DissectSettings(
        layers=tuple(FLAGS.layers), samples=FLAGS.samples, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        downsample=FLAGS.downsample, bins=FLAGS.bins, top_k=FLAGS.top_k, rule=FLAGS.rule,
        quantile=FLAGS.quantile, iqr_levels=FLAGS.iqr_levels,
        iqr_smallest_fraction=FLAGS.iqr_smallest_fraction, iqr_min_agreement=FLAGS.iqr_min_agreement,
        min_iou=FLAGS.min_iou, min_agreement=FLAGS.min_agreement, checkpoint_every=FLAGS.checkpoint_every)


def load_generator_flag():
    from jaxdissect.models.load import load_generator
    require("generator")
    return load_generator(FLAGS.generator)


def load_segmenter_flag():
    from jaxdissect.segmentation.segmenter import Segmenter
    require("segmenter")
    return Segmenter.from_model_folder(FLAGS.segmenter, FLAGS.segdiv)


def check_layers(generator, layers):
    for name in layers:
        if name not in generator.layer_names:
            raise UserError(f"--layers: unknown layer {name!r}; valid layers: {', '.join(generator.layer_names)}")


def folder_id(path):
    """Identifies a model folder by its meta.json (which records its source's sha256)."""
    with open(os.path.join(path, "meta.json"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def recorded_flag(outdir, name):
    """A flag of the run recorded in OUTDIR/run.json."""
    path = os.path.join(outdir, "run.json")
    if not os.path.isfile(path):
        raise UserError(f"{outdir}: no run.json; is it a finished dissection? (or give --{name})")
    with open(path) as f:
        value = json.load(f)["flags"].get(name)
    if value is None:
        raise UserError(f"{path} does not record --{name}; give it")
    return value


def run_info():
    return {"generator": FLAGS.generator, "segmenter": FLAGS.segmenter}


@register("dissect", "Dissect generator layers: label every unit with the class it matches (the main job).")
def run_dissect():
    from jaxdissect.dissection import pipeline
    require("generator", "segmenter", "outdir")
    check_writable_folder(FLAGS.outdir, "outdir")
    settings = settings_from_flags()
    generator, g_params = load_generator_flag()
    check_layers(generator, settings.layers)
    segmenter, s_params = load_segmenter_flag()
    ids = {"generator": folder_id(FLAGS.generator), "segmenter": folder_id(FLAGS.segmenter),
           "segdiv": FLAGS.segdiv}
    result = pipeline.dissect(generator, g_params, segmenter, s_params, settings, FLAGS.outdir,
                              run_info(), FLAGS.report_images, ids)
    write_run_record(FLAGS.outdir)
    for layer in result.layers:
        summary = result.summary["layers"][layer]
        print(f"{layer}: {summary['interpretable_units']}/{summary['units']} interpretable units, "
              f"{len(summary['labels'])} labels")
    print(f"wrote {os.path.join(FLAGS.outdir, 'report.html')}")


@register("report", "Relabel a finished dissection with new --rule/--min_iou/... and rebuild report.html.")
def run_report():
    from jaxdissect.dissection import pipeline, results
    require("outdir")
    check_writable_folder(FLAGS.outdir, "outdir")
    settings_from_flags()  # validates the read-out flags
    for name in ("generator", "segmenter"):
        if not FLAGS[name].present:
            FLAGS[name].value = recorded_flag(FLAGS.outdir, name)
    generator, g_params = load_generator_flag()
    readout = {name: FLAGS[name].value for name in results.READOUT_SETTINGS if FLAGS[name].present}
    result = pipeline.relabel(FLAGS.outdir, generator, g_params, readout, run_info(), FLAGS.report_images)
    print(f"relabelled {', '.join(result.layers)}; wrote {os.path.join(FLAGS.outdir, 'report.html')}")
