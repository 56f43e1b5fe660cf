"""A whole dissection in one call: statistics, labels, files and the report."""
import dataclasses

import jax

from jaxdissect import parallel
from jaxdissect.dissection import engine, results
from jaxdissect.report import html, unit_images


def dissect(source, settings, outdir, run_info=None, report_images=8, model_ids=None):
    """Runs (or resumes) the dissection of `source` (jaxdissect.dissection.sources) into `outdir`;
    returns its `results.Dissection`.

    Writes stats/LAYER.npz, dissect.json and report.html (process 0 only).
    """
    collected = engine.collect_statistics(source, settings, outdir, model_ids)
    if jax.process_index() == 0:
        results.write_statistics(outdir, collected, settings, source.label_categories)
        summary = results.summarize(collected, settings, source.labels, source.label_categories)
        write_summary_and_report(outdir, summary, source.render, settings, run_info, report_images)
    parallel.wait_for_all_processes("dissection written")
    return results.Dissection(outdir)


def relabel(outdir, render, readout, run_info=None, report_images=8):
    """Recomputes labels, matrices and the report from saved statistics, with the read-out settings in
    `readout` (e.g. {"readout": "paper", "min_iou": 0.04}) changed; `render` draws the unit images (the
    `render` of the dissection's source)."""
    previous = results.Dissection(outdir)
    settings = previous.settings()
    unknown = set(readout) - set(results.READOUT_SETTINGS)
    if unknown:
        raise ValueError(f"not read-out settings: {sorted(unknown)}")
    settings = dataclasses.replace(settings, **readout)
    collected = {layer: results.read_statistics(outdir, layer) for layer in previous.layers}
    results.write_statistics(outdir, collected, settings, previous.categories)
    summary = results.summarize(collected, settings, previous.labels, previous.categories)
    write_summary_and_report(outdir, summary, render, settings, run_info, report_images)
    return results.Dissection(outdir)


def write_summary_and_report(outdir, summary, render, settings, run_info, report_images):
    results.write_summary(outdir, summary)
    strips = {layer: unit_images.layer_strips(render, layer, summary["layers"][layer]["unit"], report_images,
                                              settings.batch_size)
              for layer in summary["layers"]}
    html.write_report(outdir, summary, strips, run_info or {})
