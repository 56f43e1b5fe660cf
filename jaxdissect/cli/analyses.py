"""The paper's causal analyses of a dissected generator, each writing JSON and figures.

    python main.py --mode=ablate    --dissection=runs/toy --class_name=tree     # ablation curves
    python main.py --mode=insert    --dissection=runs/toy --class_name=door     # insertion in context
    python main.py --mode=trace     --dissection=runs/toy --class_name=door     # effects on later layers
    python main.py --mode=artifacts --dissection=runs/toy --discriminator=weights/toy/discriminator

ablate, insert and trace read the class's causal units from
DISSECTION/ace/CLASS/ace.json (--mode=ace; or --ace=FILE). Outputs go to
DISSECTION/MODE/CLASS (artifacts: DISSECTION/artifacts/LAYER) unless --outdir
is given with --dissection. Held-out samples come from --eval_seed, apart
from the dissection's and the search's seeds.
"""
import json
import os

import numpy as np
from absl import flags

from jaxdissect.cli import register
from jaxdissect.cli.causal import ace_path, check_flags, open_study, output_dir, top_n
from jaxdissect.cli.common import FLAGS, write_run_record
from jaxdissect.errors import UserError

flags.DEFINE_string("ace", None, "ablate/insert/trace: the class's ace.json (default: DISSECTION/ace/CLASS/ace.json).")
flags.DEFINE_integer("eval_seed", 3, "ablate/insert/trace/artifacts: latent seed of the held-out samples.")
flags.DEFINE_integer("eval_samples", 200, "ablate/artifacts: held-out samples measured per unit set (artifacts: "
                     "and real images; Fréchet distances shrink with more samples, so compare them at equal counts).")
flags.DEFINE_list("ablate_counts", ["1", "2", "5", "10", "20", "40"], "ablate: sizes n of the ablated top-n "
                  "unit sets (sizes above the layer's unit count are skipped).")
flags.DEFINE_list("rankings", ["ace", "iou"], "ablate: unit rankings to ablate from: 'ace' (alpha, from "
                  "ace.json), 'iou' (the dissection) and/or 'effect' (each unit ablated on its own, as "
                  "--ablate_region says, on --effect_samples samples of --effect_seed; costs a unit count of "
                  "ablations per sample or present cell).")
flags.DEFINE_integer("effect_seed", 4, "ablate, --rankings=effect: latent seed of the samples the units are "
                     "ranked on (must differ from --eval_seed, where the ranking is measured).")
flags.DEFINE_integer("effect_samples", 64, "ablate, --rankings=effect: samples the units are ranked on.")
flags.DEFINE_enum("ablate_region", "location", ["location", "image"], "ablate: 'location' (the original's "
                  "evaluation): every featuremap cell the class touches is ablated on its own and the class's share "
                  "of that cell read back; 'image': the units are zeroed at every cell at once and the class's "
                  "pixels counted over the whole image.")
flags.DEFINE_integer("random_draws", 5, "ablate: random rankings whose top-n sets form the baseline.")
flags.DEFINE_integer("context_samples", 8, "insert/trace: samples in which the units are inserted at every position.")
flags.DEFINE_integer("position_chunk", 64, "insert/trace: positions edited per batch (memory vs speed).")
flags.DEFINE_float("visible_fraction", 0.005, "trace: an insertion is visible when the class gains more than this "
                   "share of the image's pixels.")
flags.DEFINE_string("artifact_units", None, "artifacts: the units to ablate: a JSON list or .npy of unit indices.")
flags.DEFINE_string("discriminator", None, "artifacts: a discriminator folder (kind proggan_discriminator); "
                    "without --artifact_units its top --top_n units by realism gain are ablated.")
flags.DEFINE_string("reference", None, "artifacts: the real images: an .npy (N, 3, R, R) or generate-mode .npz "
                    "('image') of images in [-1, 1] at the generator's resolution R, or 'toyworld' (scenes rendered "
                    "at R; the default, and only allowed, for generators trained on the toy world).")
flags.DEFINE_integer("frechet_dims", 64, "artifacts: dimensions of the features the Fréchet distance compares (the "
                     "encoder's pooled last stage through a fixed random orthonormal map); --eval_samples must be at "
                     "least twice this.")
flags.DEFINE_integer("artifact_random_sets", 20, "artifacts: random unit sets of the same size (the baseline).")
flags.DEFINE_integer("rank_samples", 64, "artifacts: samples per unit when ranking units by the discriminator.")


def causal_study(kind):
    """(study with models, ace.json record, output folder) for a mode that uses the causal units."""
    from jaxdissect.causal import concept
    study = open_study(load_models=False)
    path = FLAGS.ace or ace_path(study)
    record = concept.read_ace(path, FLAGS.layer, study.class_name)
    study = open_study(layer=record["layer"])
    return study, record, output_dir(kind, study.class_name)


def unit_set(record):
    """The causal units: the first --top_n of ace.json's ranking (default: ace.json's top_n)."""
    n = FLAGS.top_n if FLAGS["top_n"].present else record["top_n"]
    check_flags(("top_n", 1 <= n <= len(record["ranking"])))
    return [int(u) for u in record["ranking"][:n]]


def save_outputs(outdir, name, result, svg=None, png=None, arrays=None):
    """OUTDIR/NAME.json, .svg, .png and _maps.npz (those given) and run.json, from process 0."""
    import jax

    from jaxdissect.io import files
    if jax.process_index() != 0:
        return
    files.save_json(os.path.join(outdir, f"{name}.json"), result)
    if svg is not None:
        files.save_text(os.path.join(outdir, f"{name}.svg"), str(svg))
    if png is not None:
        with files.atomic_open(os.path.join(outdir, f"{name}.png"), "wb") as f:
            f.write(png)
    if arrays is not None:
        files.save_npz(os.path.join(outdir, f"{name}_maps.npz"), arrays)
    write_run_record(outdir)
    print(f"wrote {os.path.join(outdir, name + '.json')}")


# ---------------------------------------------------------------------------
# Ablation curves

RANKINGS = ("ace", "iou", "effect")


def ablation_figure(result, class_name, layer):
    from jaxdissect.report import charts
    counts = result["counts"]
    series = [{"name": f"top n by {name}", "x": counts, "y": curve} for name, curve in result["curves"].items()]
    random = result["random"]
    if random["mean"]:
        mean, std = np.asarray(random["mean"]), np.asarray(random["std"])
        series.append({"name": f"random ({len(random['draws'])} draws)", "x": counts, "y": mean,
                       "low": mean - std, "high": mean + std, "colour": "#999999"})
    where = "one cell at a time" if result["region"] == "location" else "over the whole image"
    return charts.line_chart(series, title=f"'{class_name}' pixels removed by ablating n units of {layer} ({where})",
                             x_label="units ablated (n)", y_label="share of class pixels removed", log_x=True)


@register("ablate", "Ablation curves: share of a class's pixels removed by ablating the top-n units.")
def run_ablate():
    from jaxdissect.causal import ablation
    rankings = {}
    unknown = [r for r in FLAGS.rankings if r not in RANKINGS]
    if unknown or not FLAGS.rankings:
        raise UserError(f"--rankings={','.join(FLAGS.rankings)}: expected one or more of {', '.join(RANKINGS)}")
    try:
        counts = sorted({int(c) for c in FLAGS.ablate_counts})
    except ValueError:
        raise UserError(f"--ablate_counts={','.join(FLAGS.ablate_counts)}: expected integers") from None
    check_flags(("eval_samples", FLAGS.eval_samples >= 1), ("random_draws", FLAGS.random_draws >= 0),
                ("batch_size", FLAGS.batch_size >= 1), ("effect_samples", FLAGS.effect_samples >= 1))
    if "effect" in FLAGS.rankings and FLAGS.effect_seed == FLAGS.eval_seed:
        raise UserError(f"--effect_seed={FLAGS.effect_seed} equals --eval_seed: the units would be ranked on the "
                        "samples they are measured on")
    if "ace" in FLAGS.rankings:
        study, record, outdir = causal_study("ablate")
        rankings["ace"] = record["ranking"]
    else:
        study = open_study()
        outdir = output_dir("ablate", study.class_name)
    if "iou" in FLAGS.rankings:
        rankings["iou"] = [int(u) for u in study.dissection.units_for(study.class_name, study.layer)]
    n_units = ablation.layer_units(study.generator, study.g_params, study.layer)
    skipped = [c for c in counts if not 1 <= c <= n_units]
    counts = [c for c in counts if 1 <= c <= n_units]
    if not counts:
        raise UserError(f"--ablate_counts: no size between 1 and the {n_units} units of {study.layer}")
    if skipped:
        print(f"note: skipping --ablate_counts {skipped}: {study.layer} has {n_units} units")
    effects = {}
    if "effect" in FLAGS.rankings:
        rankings["effect"], unit_effects = ablation.effect_ranking(
            study.generator, study.g_params, study.segmenter, study.s_params, study.layer, study.class_index,
            FLAGS.effect_seed, FLAGS.effect_samples, FLAGS.batch_size, study.downsample, FLAGS.ablate_region)
        effects = {"effects": {"seed": FLAGS.effect_seed, "samples": FLAGS.effect_samples,
                               "removed": unit_effects.tolist()}}
    result = ablation.ablation_curves(study.generator, study.g_params, study.segmenter, study.s_params, study.layer,
                                      study.class_index, rankings, counts, FLAGS.random_draws, FLAGS.eval_seed,
                                      FLAGS.eval_samples, FLAGS.batch_size, study.downsample, FLAGS.ablate_region)
    result = {"layer": study.layer, "class": study.class_name, "samples": FLAGS.eval_samples,
              "seed": FLAGS.eval_seed, "units": {name: r[:max(counts)] for name, r in rankings.items()}, **result,
              **effects}
    save_outputs(outdir, "ablation", result, ablation_figure(result, study.class_name, study.layer))
    for name, curve in result["curves"].items():
        print(f"{name:>6}: " + "  ".join(f"n={n}: {f:.3f}" for n, f in zip(counts, curve)))
    if result["random"]["mean"]:
        print("random: " + "  ".join(f"n={n}: {f:.3f}" for n, f in zip(counts, result["random"]["mean"])))


# ---------------------------------------------------------------------------
# Insertion in context and tracing

def sweep(study, record, units, capture=()):
    from jaxdissect.causal import context
    check_flags(("context_samples", FLAGS.context_samples >= 1), ("position_chunk", FLAGS.position_chunk >= 1))
    return context.insertion_sweep(study.generator, study.g_params, study.segmenter, study.s_params, study.layer,
                                   units, np.asarray(record["value"], np.float32), study.class_index,
                                   FLAGS.eval_seed, FLAGS.context_samples, FLAGS.position_chunk, study.downsample,
                                   capture)


def heat_tile(values, image, vmax):
    """The image dimmed, with `values` (H, W) >= 0 drawn over it as heat."""
    from jaxdissect.report import charts
    from jaxdissect.report.unit_images import to_bytes
    size = image.shape[0]
    heat = charts.upscale(charts.heat_colours(np.clip(values, 0, None), vmax), size).astype(np.float64)
    return np.rint(0.35 * to_bytes(image) + 0.65 * heat).astype(np.uint8)


def insertion_grid(study, sweep_result, units, record, shown=4):
    """PNG rows per sample: the image, the pixels-added map over it, the insertion at the best position."""
    from jaxdissect.causal import context
    from jaxdissect.report import charts
    from jaxdissect.report.unit_images import to_bytes
    added = sweep_result["pixels_added"]
    vmax = max(float(added.max()), 1.0)
    rows = []
    for i in range(min(shown, len(added))):
        image = sweep_result["images"][i]
        best = int(np.argmax(added[i]))
        edited = context.inserted_image(study.generator, study.g_params, study.layer, units, record["value"],
                                        FLAGS.eval_seed, i, best)
        rows.append([to_bytes(image), heat_tile(added[i], image, vmax), to_bytes(edited)])
    return charts.png_bytes(charts.image_grid(rows))


@register("insert", "Insertion in context: a class's causal units inserted at every position, effect by context.")
def run_insert():
    from jaxdissect.causal import context
    from jaxdissect.report import charts
    study, record, outdir = causal_study("insert")
    units = unit_set(record)
    result = sweep(study, record, units)
    groups = context.effect_by_context(result["pixels_added"], result["score_change"], result["context"],
                                       study.dissection.labels)
    summary = {"layer": study.layer, "class": study.class_name, "units": units, "seed": FLAGS.eval_seed,
               "samples": FLAGS.context_samples, "image_pixels": result["image_pixels"],
               "mean_pixels_added": float(result["pixels_added"].mean()),
               "mean_score_change": float(result["score_change"].mean()),
               "by_context": groups,
               "pixels_added_map": result["pixels_added"].mean(axis=0).round(4).tolist(),
               "pixels_before": result["pixels_before"].tolist()}
    svg = charts.bar_chart([g["class"] for g in groups], [g["mean_pixels_added"] for g in groups],
                           title=f"'{study.class_name}' pixels added by inserting {len(units)} units at one "
                                 f"{study.layer} position, by the class there",
                           y_label="mean class pixels added", notes=[g["positions"] for g in groups],
                           width=max(640, 90 + 46 * len(groups) + 150))
    save_outputs(outdir, "insert", summary, svg, insertion_grid(study, result, units, record),
                 {k: result[k] for k in ("pixels_added", "score_change", "context", "pixels_before")})
    for g in groups[:8]:
        print(f"{g['class']:>12}: {g['mean_pixels_added']:8.2f} pixels added ({g['positions']} positions)")


@register("trace", "Tracing: how inserting a class's causal units changes every later layer (normalised).")
def run_trace():
    from jaxdissect.causal import tracing
    from jaxdissect.report import charts
    from jaxdissect.report.unit_images import to_bytes
    check_flags(("visible_fraction", 0 <= FLAGS.visible_fraction < 1))
    study, record, outdir = causal_study("trace")
    units = unit_set(record)
    later = tracing.later_layers(study.generator, study.layer)
    if not later:
        raise UserError(f"--layer={study.layer}: no later layer to trace")
    result = sweep(study, record, units, capture=later)
    effects = tracing.normalised_effects(result["changes"], result["activation"])
    summary = tracing.trace_summary(effects, result["pixels_added"], result["image_pixels"], FLAGS.visible_fraction)
    hidden = [name for name in later if name.startswith("layer")] or list(later)
    summary = {"layer": study.layer, "class": study.class_name, "units": units, "seed": FLAGS.eval_seed,
               "samples": FLAGS.context_samples, "visible_fraction": FLAGS.visible_fraction, **summary,
               "heatmap_layer": hidden[-1], "heatmap": effects[hidden[-1]].mean(axis=0).round(5).tolist()}
    x = list(range(len(later)))
    series = [{"name": f"{key} ({summary['insertions'][key]})", "x": x, "y": summary[key]}
              for key in ("visible", "invisible") if summary["insertions"][key]]
    svg = charts.line_chart(series,
                            title=f"change of later layers when '{study.class_name}' units of {study.layer} are "
                                  "inserted at one position", x_label="layer",
                            y_label="mean |change| / mean |activation|", x_ticks=list(zip(x, later)),
                            width=max(640, 60 * len(later) + 220))
    vmax = max(float(effects[hidden[-1]].max()), 1e-12)
    rows = [[to_bytes(image), heat_tile(effects[hidden[-1]][i], image, vmax)]
            for i, image in enumerate(result["images"][:4])]
    save_outputs(outdir, "trace", summary, svg, charts.png_bytes(charts.image_grid(rows)),
                 {"pixels_added": result["pixels_added"], **{f"effect_{name}": e for name, e in effects.items()}})
    for name, v, nv in zip(later, summary["visible"], summary["invisible"]):
        print(f"{name:>14}: visible {v if v is None else round(v, 4)}  invisible {nv if nv is None else round(nv, 4)}")


# ---------------------------------------------------------------------------
# Artifact units

def read_unit_file(path, n_units):
    """Unit indices from a JSON list or an .npy file, checked against the layer's `n_units`."""
    if not os.path.isfile(path):
        raise UserError(f"--artifact_units={path}: no such file")
    try:
        if path.endswith(".npy"):
            units = np.load(path).ravel().tolist()
        else:
            with open(path) as f:
                units = json.load(f)
        units = [int(u) for u in units]
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"--artifact_units={path}: not a JSON list or .npy of unit indices ({e})") from None
    if not units or len(set(units)) != len(units) or not all(0 <= u < n_units for u in units):
        raise UserError(f"--artifact_units={path}: need distinct unit indices in [0, {n_units})")
    return units


def trained_on_toy_world(folder):
    """Whether the generator in `folder` records that it was trained on the toy world."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return json.load(f).get("source", {}).get("trained_on") == "jaxdissect toy world"
    except (OSError, ValueError, AttributeError):
        return False


def reference_features(study, samples):
    from jaxdissect.causal import artifacts
    resolution = study.generator.resolution
    path = FLAGS.reference or ("toyworld" if trained_on_toy_world(FLAGS.generator) else None)
    if path is None:
        raise UserError(f"--reference is required: {FLAGS.generator} is not a toy-world generator, so real images "
                        "of its own world are needed (an .npy or .npz of images)")
    if path == "toyworld":
        if not trained_on_toy_world(FLAGS.generator):
            raise UserError(f"--reference=toyworld: {FLAGS.generator} was not trained on the toy world; give real "
                            "images of its own world")
        return artifacts.toy_world_features(study.segmenter, study.s_params, FLAGS.eval_seed, samples, resolution,
                                            FLAGS.batch_size)
    if not os.path.isfile(path):
        raise UserError(f"--reference={path}: no such file (or use 'toyworld')")
    try:
        images = np.load(path)
        images = images["image"] if path.endswith(".npz") else images
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--reference={path}: not an .npy or generate-mode .npz of images ({e})") from None
    if images.ndim != 4 or images.shape[1:] != (3, resolution, resolution):
        raise UserError(f"--reference={path}: images of shape {images.shape}, expected (N, 3, {resolution}, "
                        f"{resolution}) for this generator")
    low, high = float(images.min()), float(images.max())
    if low < -1.001 or high > 1.001:
        raise UserError(f"--reference={path}: values in [{low:.3g}, {high:.3g}], expected images in [-1, 1]")
    return artifacts.image_features(study.segmenter, study.s_params, np.transpose(images, (0, 2, 3, 1)),
                                    FLAGS.batch_size)


def artifacts_figure(result, layer):
    from jaxdissect.report import charts
    names = ["original", f"{len(result['units'])} units ablated", "random sets ablated"]
    panels = []
    for key, label in (("frechet", "Fréchet distance to real (lower is better)"),
                       ("realism", "discriminator logit (higher is more realistic)")):
        row = result[key]
        if row["original"] is None:
            continue
        panels.append(charts.bar_chart(names, [row["original"], row["ablated"], row["random_mean"]],
                                       errors=[0.0, 0.0, row["random_std"]], title=f"{label}, {layer}",
                                       y_label=key, colours=["#bab0ac", "#e15759", "#4e79a7"], width=520))
    return charts.stack(panels)


def before_after_grid(study, units, n_units, shown=6):
    """PNG: generated samples (top row) and the same with the units ablated (bottom row)."""
    import jax

    from jaxdissect import parallel
    from jaxdissect.intervention import ablate, unit_indicator
    from jaxdissect.report import charts
    from jaxdissect.report.unit_images import to_bytes
    generator, layer = study.generator, study.layer

    @jax.jit
    def both(g_params, z, alpha):
        r = generator.h(g_params, z, (layer,))[layer]
        return generator.f(g_params, r, layer, z), generator.f(g_params, ablate(alpha)(r), layer, z)
    z = parallel.latents(FLAGS.eval_seed, 0, shown, generator.latent_size)
    rows = both(study.g_params, z, unit_indicator(units, n_units))
    return charts.png_bytes(charts.image_grid([list(to_bytes(row)) for row in rows]))


@register("artifacts", "Artifact units: image quality (Fréchet distance, discriminator) with a unit set ablated.")
def run_artifacts():
    from jaxdissect.causal import ablation, artifacts
    check_flags(("frechet_dims", FLAGS.frechet_dims >= 1), ("eval_samples", FLAGS.eval_samples >= 2 * FLAGS.frechet_dims),
                ("artifact_random_sets", FLAGS.artifact_random_sets >= 1),
                ("rank_samples", FLAGS.rank_samples >= 1), ("batch_size", FLAGS.batch_size >= 1))
    if not FLAGS.artifact_units and not FLAGS.discriminator:
        raise UserError("--mode=artifacts needs --artifact_units=FILE or --discriminator=DIR")
    study = open_study(need_class=False)
    outdir = output_dir("artifacts", study.layer)
    n_units = ablation.layer_units(study.generator, study.g_params, study.layer)
    discriminator = d_params = None
    if FLAGS.discriminator:
        discriminator, d_params = artifacts.load_discriminator(FLAGS.discriminator, study.generator.resolution)
    result = {"layer": study.layer, "samples": FLAGS.eval_samples, "seed": FLAGS.eval_seed,
              "reference": FLAGS.reference or "toyworld", "frechet_dims": FLAGS.frechet_dims}
    if FLAGS.artifact_units:
        units = read_unit_file(FLAGS.artifact_units, n_units)
        result["source"] = os.path.abspath(FLAGS.artifact_units)
    else:
        # Ranked on other samples (seed + 1) than those the sets are judged on.
        rise = artifacts.rank_by_discriminator(study.generator, study.g_params, discriminator, d_params, study.layer,
                                               n_units, FLAGS.eval_seed + 1, FLAGS.rank_samples, FLAGS.batch_size)
        units = [int(u) for u in np.argsort(-rise, kind="stable")[:top_n(n_units)]]
        result.update(source="discriminator", realism_rise=rise.round(6).tolist())
    result["units"] = units
    indicator = lambda us: np.eye(n_units, dtype=np.float32)[us].sum(axis=0)
    rng = np.random.default_rng(FLAGS.eval_seed)
    sets = {"original": np.zeros(n_units, np.float32), "ablated": indicator(units)}
    sets.update({f"random{i}": indicator(rng.choice(n_units, len(units), replace=False))
                 for i in range(FLAGS.artifact_random_sets)})
    reference = reference_features(study, FLAGS.eval_samples)
    scores = artifacts.compare_unit_sets(study.generator, study.g_params, study.segmenter, study.s_params,
                                         study.layer, sets, reference, FLAGS.eval_seed, FLAGS.eval_samples,
                                         FLAGS.batch_size, FLAGS.frechet_dims, discriminator, d_params)
    for key in ("frechet", "realism"):
        randoms = [scores[name][key] for name in sets if name.startswith("random")]
        have = randoms[0] is not None
        result[key] = {"original": scores["original"][key], "ablated": scores["ablated"][key],
                       "random_mean": float(np.mean(randoms)) if have else None,
                       "random_std": float(np.std(randoms)) if have else None,
                       "random": randoms}
    result["frechet"].update({f"{name}_spread": scores[name]["frechet_spread"] for name in ("original", "ablated")})
    save_outputs(outdir, "artifacts", result, artifacts_figure(result, study.layer),
                 before_after_grid(study, units, n_units))
    f = result["frechet"]
    print(f"Fréchet distance ({FLAGS.frechet_dims} dimensions): original {f['original']:.4g} "
          f"(± {f['original_spread']:.2g} over random halves), {len(units)} units ablated {f['ablated']:.4g} "
          f"(± {f['ablated_spread']:.2g}), random sets {f['random_mean']:.4g} ± {f['random_std']:.4g}")
