"""--mode=dissect (the main job), --mode=dissect_arrays (featuremaps a user already has) and
--mode=report (relabel and redraw a finished dissection).

    python main.py --mode=dissect --flagfile=configs/toy.cfg
    python main.py --mode=dissect_arrays --arrays=acts.npz --outdir=runs/mine
    python main.py --mode=report --outdir=runs/toy --readout=paper --min_iou=0.04

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
flags.DEFINE_integer("bins", 256, "dissect: histogram bins per unit (2..4096), placed from the calibration "
                     "samples (an edge at each iqr level, the rest by value and tail fraction); thresholds are bin "
                     "edges, so a quantile threshold is within one bin of the exact quantile and every count at it "
                     "is exact.")
flags.DEFINE_integer("top_k", 12, "dissect: samples kept per unit, by peak activation.")
flags.DEFINE_integer("report_images", 8, "dissect/report: top samples shown per unit in report.html.")
flags.DEFINE_enum("readout", "reference", ["reference", "paper"],
                  "dissect/report: how labels are read from the statistics: 'reference' (the original GAN "
                  "Dissection code: label = class of highest IQR, one threshold per unit, interpretable at "
                  "IQR > --min_iqr and IoU > --min_iou, per-category counting, raw-featuremap quantiles) or "
                  "'paper' (the paper's text: label = class of highest IoU, each class at its own threshold, "
                  "interpretable at IoU > --min_iou and agreement > --min_agreement).")
flags.DEFINE_enum("rule", "iqr", ["iqr", "quantile"],
                  "dissect/report: threshold rule for the labels: 'iqr' (the paper: maximise I/H over the "
                  "unit's upper-tail levels) or 'quantile' (NetDissect: the unit's top --quantile).")
flags.DEFINE_float("quantile", 0.99, "dissect/report: quantile of the 'quantile' rule (0.99 = top 1%).")
flags.DEFINE_integer("iqr_levels", 100, "dissect/report: candidate thresholds searched by the 'iqr' rule.")
flags.DEFINE_float("iqr_smallest_fraction", 1e-3, "dissect/report: the 'iqr' candidates are the unit's "
                   "upper-tail quantiles at fractions logspaced from this to 1.")
flags.DEFINE_float("iqr_min_agreement", 0.8, "dissect/report: 'iqr' only considers thresholds where unit and "
                   "class agree on more than this fraction of pixels.")
flags.DEFINE_float("min_iou", 0.05, "dissect/report: a unit is interpretable above this IoU with its best "
                   "class (paper: 0.05; the later code used 0.04).")
flags.DEFINE_float("min_iqr", 0.01, "dissect/report, --readout=reference: ... and above this IQR at the unit's "
                   "threshold (the original code's 0.01).")
flags.DEFINE_float("min_agreement", 0.75, "dissect/report, --readout=paper: ... and above this pixel agreement "
                   "(paper: 0.75).")
flags.DEFINE_string("arrays", None, "dissect_arrays: an .npz file (or a folder of .npy files) of featuremaps "
                    "(N, h, w, U) named by layer, 'segmentation' (N, K, H, W) int, 'labels', optional "
                    "'categories' and 'images' (N, 3, H, W) in [-1, 1]; see README.")
flags.DEFINE_integer("checkpoint_every", 20, "dissect: batches between considering a checkpoint of the running "
                     "statistics (one is written once --checkpoint_minutes have passed since the last).")
flags.DEFINE_float("checkpoint_minutes", 2.0, "dissect: least minutes of work between two checkpoints of the "
                   "running statistics (0: at every --checkpoint_every batches); a killed run loses at most about "
                   "this much.")
flags.DEFINE_integer("original_sketch_seed", None, "dissect: for --rule=quantile under --readout=reference, "
                     "replay the original tool's randomised quantile sketch of the raw featuremaps as one of its "
                     "runs after torch.manual_seed(SEED) has it (its levels, and so its interpretable count, move "
                     "with the seed); unset: the exact quantile from the streamed histogram. See README.")


def settings_from_flags():
    from jaxdissect import bins
    from jaxdissect.dissection.engine import DissectSettings
    checks = [("samples", FLAGS.samples >= 1), ("batch_size", FLAGS.batch_size >= 1),
              ("bins", 2 <= FLAGS.bins <= bins.CELLS), ("top_k", FLAGS.top_k >= 1),
              ("downsample", FLAGS.downsample >= 1),
              ("quantile", 0 < FLAGS.quantile < 1), ("iqr_levels", FLAGS.iqr_levels >= 2),
              ("iqr_smallest_fraction", 0 < FLAGS.iqr_smallest_fraction <= 1),
              ("checkpoint_every", FLAGS.checkpoint_every >= 1), ("checkpoint_minutes", FLAGS.checkpoint_minutes >= 0),
              ("original_sketch_seed", FLAGS.original_sketch_seed is None or 0 <= FLAGS.original_sketch_seed < 2 ** 32)]
    for name, ok in checks:
        if not ok:
            raise UserError(f"--{name}={FLAGS[name].value}: out of range")
    return DissectSettings(
        layers=tuple(FLAGS.layers), samples=FLAGS.samples, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
        downsample=FLAGS.downsample, bins=FLAGS.bins, top_k=FLAGS.top_k, readout=FLAGS.readout, rule=FLAGS.rule,
        quantile=FLAGS.quantile, iqr_levels=FLAGS.iqr_levels,
        iqr_smallest_fraction=FLAGS.iqr_smallest_fraction, iqr_min_agreement=FLAGS.iqr_min_agreement,
        min_iou=FLAGS.min_iou, min_iqr=FLAGS.min_iqr, min_agreement=FLAGS.min_agreement,
        checkpoint_every=FLAGS.checkpoint_every, checkpoint_minutes=FLAGS.checkpoint_minutes,
        original_sketch_seed=FLAGS.original_sketch_seed)


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


def check_dissection_outdir():
    """--outdir must be writable, and empty or a dissection's own folder (resumed or re-read)."""
    check_writable_folder(FLAGS.outdir, "outdir")
    if os.path.isdir(FLAGS.outdir) and os.listdir(FLAGS.outdir) and not os.path.exists(
            os.path.join(FLAGS.outdir, "statistics_key.json")):
        example = sorted(os.listdir(FLAGS.outdir))[0]
        raise UserError(f"--outdir={FLAGS.outdir} holds files that are not a dissection's (e.g. {example}); "
                        "use a new or empty folder")


def run_info():
    return {"arrays": FLAGS.arrays} if FLAGS.mode == "dissect_arrays" else {"generator": FLAGS.generator,
                                                                            "segmenter": FLAGS.segmenter}


def print_summary(result):
    for layer in result.layers:
        summary = result.summary["layers"][layer]
        print(f"{layer}: {summary['interpretable_units']}/{summary['units']} interpretable units, "
              f"{len(summary['labels'])} labels")
    print(f"wrote {os.path.join(FLAGS.outdir, 'report.html')}")


@register("dissect", "Dissect generator layers: label every unit with the class it matches (the main job).")
def run_dissect():
    from jaxdissect.dissection import pipeline, sources
    from jaxdissect.checkpoint import folder_id
    from jaxdissect.models.load import generator_id
    require("generator", "segmenter", "outdir")
    check_dissection_outdir()
    settings = settings_from_flags()
    generator, g_params = load_generator_flag()
    check_layers(generator, settings.layers)
    segmenter, s_params = load_segmenter_flag()
    ids = {"generator": generator_id(FLAGS.generator), "segmenter": folder_id(FLAGS.segmenter),
           "segdiv": FLAGS.segdiv}
    source = sources.GeneratedSamples(generator, g_params, segmenter, s_params, settings.layers,
                                      settings.downsample, settings.seed)
    result = pipeline.dissect(source, settings, FLAGS.outdir, run_info(), FLAGS.report_images, ids)
    write_run_record(FLAGS.outdir)
    print_summary(result)


def array_source(layers=None):
    """The --arrays source of `layers` (default: --layers when given, else every featuremap array)."""
    from jaxdissect.dissection import sources
    from jaxdissect.io import arrays
    require("arrays")
    data = arrays.open_arrays(FLAGS.arrays)
    if layers is None:
        layers = tuple(FLAGS.layers) if FLAGS["layers"].present else tuple(data.layers)
    for name in layers:
        if name not in data.layers:
            raise UserError(f"--layers: no array {name!r} in {FLAGS.arrays}; featuremap arrays: "
                            f"{', '.join(data.layers)}")
    return sources.ArraySamples(data, layers)


def file_id(path):
    """Identifies an arrays file or folder by its names, sizes and modification times."""
    paths = [os.path.join(path, f) for f in sorted(os.listdir(path))] if os.path.isdir(path) else [path]
    return hashlib.sha256(json.dumps([(os.path.basename(p), os.path.getsize(p), os.path.getmtime(p))
                                      for p in paths]).encode()).hexdigest()


@register("dissect_arrays", "Dissect featuremaps you already have (--arrays: any model's activations with "
          "their segmentations), with the same statistics, read-outs and report as --mode=dissect.")
def run_dissect_arrays():
    import dataclasses

    from jaxdissect.dissection import pipeline
    require("arrays", "outdir")
    check_dissection_outdir()
    source = array_source()
    settings = settings_from_flags()
    samples = FLAGS.samples if FLAGS["samples"].present else source.sample_limit
    settings = dataclasses.replace(settings, layers=source.layers, samples=samples)
    result = pipeline.dissect(source, settings, FLAGS.outdir, run_info(), FLAGS.report_images,
                              {"arrays": file_id(FLAGS.arrays)})
    write_run_record(FLAGS.outdir)
    print_summary(result)


@register("report", "Relabel a finished dissection with new --readout/--rule/--min_iou/... and rebuild "
          "report.html (no model pass).")
def run_report():
    from jaxdissect.dissection import pipeline, results
    from jaxdissect.report import unit_images
    require("outdir")
    check_writable_folder(FLAGS.outdir, "outdir")
    settings_from_flags()  # validates the read-out flags
    previous = results.Dissection(FLAGS.outdir)
    if FLAGS.arrays or recorded_flag(FLAGS.outdir, "mode") == "dissect_arrays":
        if not FLAGS.arrays:
            FLAGS.arrays = recorded_flag(FLAGS.outdir, "arrays")
        render = array_source(previous.layers).render
    else:
        for name in ("generator", "segmenter"):
            if not FLAGS[name].present:
                FLAGS[name].value = recorded_flag(FLAGS.outdir, name)
        generator, g_params = load_generator_flag()
        seed = previous.settings().seed

        def render(layer, indices, batch_size):
            return unit_images.render_samples(generator, g_params, layer, seed, indices, batch_size)
    readout = {name: FLAGS[name].value for name in results.READOUT_SETTINGS if FLAGS[name].present}
    result = pipeline.relabel(FLAGS.outdir, render, readout, run_info(), FLAGS.report_images)
    print(f"relabelled {', '.join(result.layers)}; wrote {os.path.join(FLAGS.outdir, 'report.html')}")
