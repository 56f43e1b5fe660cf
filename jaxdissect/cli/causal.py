"""--mode=ace: find the units that cause a class (the alpha search), from a finished dissection.

    python main.py --mode=ace --dissection=runs/toy --class_name=tree [--layer=layer4]
    python main.py --mode=ace --flagfile=configs/toy.cfg --class_name=tree   # the flagfile's --outdir is the dissection

Writes DISSECTION/ace/CLASS/ace.json (the causal ranking, the top --top_n
units and their insertion values; the format is described in
jaxdissect.causal.concept), alpha.npy, ace.svg (alpha sorted, loss curve),
run.json, and the search's checkpoints and metrics.jsonl, so a killed run
resumes where it stopped. The generator, segmenter and --downsample default
to the dissection's. --ace_region picks the objective: 'location' (the
reference's, jaxdissect.causal.location) or 'image' (jaxdissect.causal.ace).

Also the helpers every causal mode shares (`open_study`, `ace_path`).
"""
import dataclasses
import json
import os

import numpy as np
from absl import flags

from jaxdissect.cli import register
from jaxdissect.cli.common import FLAGS, dissection_dir, write_run_record
from jaxdissect.cli.dissect import load_generator_flag, load_segmenter_flag, recorded_flag
from jaxdissect.errors import UserError

flags.DEFINE_string("class_name", None, "ace/ablate/insert/trace: the class to study, e.g. tree.")
flags.DEFINE_string("layer", None, "ace/ablate/insert/trace/artifacts: the generator layer (default: ace.json's "
                    "layer if there is one, else the dissection's first layer).")
flags.DEFINE_integer("ace_steps", 500, "ace: Adam steps of the alpha search (the reference's: 10 passes over "
                     "1,000 training samples, 20 per step).")
flags.DEFINE_integer("ace_batch_size", 20, "ace: samples per step (the reference's 20; a multiple of the device "
                     "count): with --ace_region=location, that many of each training corpus; with image, a fresh "
                     "batch. Also the batch of the corpus search.")
flags.DEFINE_float("ace_lr", 0.01, "ace: Adam learning rate (the reference's 0.01).")
flags.DEFINE_float("ace_l2", 0.005, "ace: weight of the L2 penalty on alpha, per sample (the reference's 0.005; "
                   "smaller: larger causal sets).")
flags.DEFINE_enum("ace_region", "location", ["location", "image"],
                  "ace: the objective. 'location' (the reference's): per sample, ablate at the cell where the class "
                  "is most present and insert at one candidate cell, each scored at its cell. 'image': ablate at "
                  "every cell the class touches and insert at every other cell at once, scored over those pixels "
                  "(its optimum turns much of the image into the class).")
flags.DEFINE_integer("ace_probes", 5, "ace, --ace_region=location: cells probed per sample to pick its candidate "
                     "cell (drawn where the class is usually most present).")
flags.DEFINE_integer("ace_search_samples", 10000, "ace: samples looked through for each training corpus (the "
                     "reference's 10,000): those where the class is most present, and, with --ace_region=location, "
                     "the next as many for those where inserting the units adds the class most.")
flags.DEFINE_integer("ace_train_samples", 1000, "ace, --ace_region=location: size of each training corpus (the "
                     "reference's 1,000).")
flags.DEFINE_integer("ace_eval_samples", 200, "ace, --ace_region=location: held-out samples of each corpus (the "
                     "next of each ranking, the reference's 200) on which the final alpha is evaluated, as the "
                     "reference does, into ace.json's 'evaluation' (0: none).")
flags.DEFINE_integer("ace_seed", 2, "ace: latent seed of the search's samples (keep it apart from the "
                     "dissection's --seed and the analyses' --eval_seed).")
flags.DEFINE_enum("alpha_init", "iou", ["iou", "constant"],
                  "ace: starting alpha: the units' IoU with the class scaled to [0, 1], or 0.5 for every unit.")
flags.DEFINE_integer("top_n", 20, "ace/insert/trace/artifacts: size of the unit set (the paper: 20 of 512; "
                     "by default at most the layer's unit count).")
flags.DEFINE_enum("insert_value", "presence", ["presence", "mean", "quantile"],
                  "ace: value a unit is inserted at: 'presence' = its featuremap's mean over the cells of the "
                  "--ace_search_samples samples, weighted by the class's share of each cell (the reference's), "
                  "'mean' = its mean upsampled activation on the class's pixels in the dissection, 'quantile' = "
                  "its --insert_quantile activation on them.")
flags.DEFINE_float("insert_quantile", 0.99, "ace: the quantile of --insert_value=quantile.")


@dataclasses.dataclass
class Study:
    """What a causal mode works on: a dissection, a layer, a class and the models."""
    dissection: object
    layer: str
    class_name: str
    class_index: int
    downsample: int
    generator: object = None
    g_params: object = None
    segmenter: object = None
    s_params: object = None


def output_dir(kind, name):
    """--outdir when a --dissection is given too, else DISSECTION/kind/name; UserError if not writable."""
    from jaxdissect.io.files import check_writable_folder
    if FLAGS.dissection and FLAGS.outdir:
        check_writable_folder(FLAGS.outdir, "outdir")
        return FLAGS.outdir
    folder = os.path.join(dissection_dir(), kind, name.replace(os.sep, "_"))
    check_writable_folder(folder, "dissection" if FLAGS.dissection else "outdir")
    return folder


def ace_path(study):
    return os.path.join(dissection_dir(), "ace", study.class_name.replace(os.sep, "_"), "ace.json")


def open_study(need_class=True, layer=None, load_models=True):
    """Reads the dissection, checks --class_name and the layer (`layer`, or --layer, or the first
    dissected one), then loads the models (defaults: those the dissection recorded)."""
    from jaxdissect.dissection.results import Dissection
    folder = dissection_dir()
    dissection = Dissection(folder)
    class_name, class_index = FLAGS.class_name, None
    if need_class:
        if not class_name:
            raise UserError(f"--class_name is required for --mode={FLAGS.mode}")
        class_index = dissection.class_index(class_name)
    layer = FLAGS.layer or layer or dissection.layers[0]
    if layer not in dissection.layers:
        raise UserError(f"--layer={layer}: not dissected in {folder}; dissected: {', '.join(dissection.layers)}")
    downsample = FLAGS.downsample if FLAGS["downsample"].present else dissection.summary["settings"]["downsample"]
    study = Study(dissection, layer, class_name, class_index, int(downsample))
    if load_models:
        use_recorded_models(folder)
        study.generator, study.g_params = load_generator_flag()
        study.segmenter, study.s_params = load_segmenter_flag()
        if tuple(study.segmenter.labels) != tuple(dissection.labels):
            raise UserError(f"--segmenter={FLAGS.segmenter}: its labels differ from those of {folder}; "
                            "use the segmenter (and --segdiv) the dissection ran with")
    return study


def use_recorded_models(folder):
    """--generator, --segmenter and --segdiv from the dissection's run.json unless given."""
    for name in ("generator", "segmenter"):
        if not FLAGS[name].present:
            FLAGS[name].value = recorded_flag(folder, name)
    record = os.path.join(folder, "run.json")
    if not FLAGS["segdiv"].present and os.path.isfile(record):
        with open(record) as f:
            FLAGS.segdiv = json.load(f)["flags"].get("segdiv", FLAGS.segdiv)


def top_n(n_units):
    """--top_n, or its default capped at the layer's `n_units` units."""
    n = FLAGS.top_n if FLAGS["top_n"].present else min(FLAGS.top_n, n_units)
    check_flags(("top_n", 1 <= n <= n_units))
    return n


def check_flags(*checks):
    """Raises UserError naming the first flag whose check fails."""
    for name, ok in checks:
        if not ok:
            raise UserError(f"--{name}={FLAGS[name].value}: out of range")


def guard_outdir(outdir, key, what):
    """Refuses to resume a run in `outdir` that was started with another `key`; records `key` otherwise."""
    from jaxdissect.io import files
    path = os.path.join(outdir, f"{what}_key.json")
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f) != key:
                raise UserError(f"{outdir} holds a different {what.replace('_', ' ')} (other models, class, "
                                "layer or settings); use another --outdir or delete it")
    else:
        files.save_json(path, key)


def ace_figure(record):
    """ace.svg: alpha of every unit, sorted, with the top n marked; the loss curve."""
    from jaxdissect.report import charts
    alpha = np.sort(np.asarray(record["alpha"]))[::-1]
    ranks = np.arange(1, len(alpha) + 1)
    n = record["top_n"]
    panels = [charts.line_chart(
        [{"name": "alpha", "x": ranks, "y": alpha}, {"name": f"top {n}", "x": ranks[:n], "y": alpha[:n]}],
        title=f"alpha of the {len(alpha)} units of {record['layer']} for '{record['class']}', sorted",
        x_label="rank", y_label="alpha", y_range=(0.0, 1.0))]
    curve = record["loss_curve"]
    if curve:
        steps = [c["step"] for c in curve]
        panels.append(charts.line_chart(
            [{"name": key, "x": steps, "y": [c[key] for c in curve]} for key in ("loss", "ace", "insertion", "ablation")
             if key in curve[0]],
            title="alpha search (per logged step, on that step's batch)", x_label="step", y_label="value"))
    return charts.stack(panels)


def featuremap_cells(study):
    """H * W of the study's layer."""
    from jaxdissect.causal.search import featuremap_size
    height, width = featuremap_size(study.generator, study.g_params, study.layer)
    return height * width


def insertion_value_and_corpus(study, settings, outdir):
    """(the --insert_value (U,), the search's training corpus or None): the corpus is built when the
    objective trains on it or the value comes from it."""
    from jaxdissect.causal import concept, search
    value = None
    if FLAGS.insert_value != "presence":
        value = concept.insertion_values(study.dissection, study.layer, study.class_index, FLAGS.insert_value,
                                         FLAGS.insert_quantile)
    if value is not None and settings.region == "image":
        return value, None
    corpus = search.training_corpus(study.generator, study.g_params, study.segmenter, study.s_params, settings, value,
                                    outdir)
    return (corpus.presence_value if value is None else value), corpus


@register("ace", "Find a class's causal units (the alpha search) from a dissection; writes ace.json.")
def run_ace():
    import jax

    from jaxdissect import parallel
    from jaxdissect.causal import concept, location, search
    from jaxdissect.io import files
    from jaxdissect.checkpoint import folder_id
    from jaxdissect.models.load import generator_id
    study = open_study()
    units = study.dissection.matrix(study.layer, "iou").shape[0]
    check_flags(("ace_steps", FLAGS.ace_steps >= 1), ("ace_lr", FLAGS.ace_lr > 0), ("ace_l2", FLAGS.ace_l2 >= 0),
                ("ace_batch_size", FLAGS.ace_batch_size >= 1 and FLAGS.ace_batch_size % parallel.batch_multiple() == 0),
                ("ace_search_samples", FLAGS.ace_search_samples >= 1),
                ("ace_train_samples", FLAGS.ace_train_samples >= 1), ("ace_eval_samples", FLAGS.ace_eval_samples >= 0),
                ("ace_probes", 1 <= FLAGS.ace_probes <= featuremap_cells(study)))
    n = top_n(units)
    outdir = output_dir("ace", study.class_name)
    iou = study.dissection.matrix(study.layer, "iou")[:, study.class_index]
    alpha0 = search.initial_alpha(iou, FLAGS.alpha_init)
    settings = search.AlphaSearchSettings(
        layer=study.layer, class_index=study.class_index, steps=FLAGS.ace_steps, batch_size=FLAGS.ace_batch_size,
        learning_rate=FLAGS.ace_lr, l2=FLAGS.ace_l2, seed=FLAGS.ace_seed, downsample=study.downsample,
        region=FLAGS.ace_region, probes=FLAGS.ace_probes, search_samples=FLAGS.ace_search_samples,
        train_samples=FLAGS.ace_train_samples, eval_samples=FLAGS.ace_eval_samples)
    recorded = {**dataclasses.asdict(settings), "alpha_init": FLAGS.alpha_init, "insert_value": FLAGS.insert_value,
                "insert_quantile": FLAGS.insert_quantile, "dissection": os.path.abspath(dissection_dir()),
                "generator": FLAGS.generator, "segmenter": FLAGS.segmenter, "segdiv": FLAGS.segdiv}
    if jax.process_index() == 0:
        os.makedirs(outdir, exist_ok=True)
        guard_outdir(outdir, {**recorded, "generator": generator_id(FLAGS.generator),
                              "segmenter": folder_id(FLAGS.segmenter)}, "alpha_search")
    value, corpus = insertion_value_and_corpus(study, settings, outdir)
    if corpus is not None and settings.region == "location":
        print(f"training corpora: {len(corpus.present_index)} samples to ablate, {len(corpus.candidate_index)} to "
              f"insert into (of {settings.search_samples} each)")
    alpha = search.search(study.generator, study.g_params, study.segmenter, study.s_params, settings, value, alpha0,
                          outdir, corpus)
    order = search.ranking(alpha, iou)
    evaluation = None
    if settings.region == "location" and settings.eval_samples:
        evaluation = location.evaluate(study.generator, study.g_params, study.segmenter, study.s_params, settings,
                                       alpha, order, value, corpus)
    record = concept.ace_record(study.layer, study.class_name, study.class_index, alpha, order, n, value, recorded,
                                concept.read_loss_curve(outdir), evaluation)
    if jax.process_index() == 0:
        concept.write_ace(outdir, record)
        files.save_text(os.path.join(outdir, "ace.svg"), str(ace_figure(record)))
        write_run_record(outdir)
    last = record["loss_curve"][-1] if record["loss_curve"] else {}
    print(f"{study.class_name} at {study.layer}: top {n} causal units "
          f"{record['causal_units']} (alpha {alpha[record['causal_units'][0]]:.3f} .. "
          f"{alpha[record['causal_units'][-1]]:.3f}); {record['alpha_zero']} of {units} alpha are 0; "
          f"last ACE {last.get('ace', float('nan')):.4f}")
    if evaluation:
        print(concept.evaluation_summary(evaluation))
    print(f"wrote {os.path.join(outdir, 'ace.json')}")
