"""Runs a dissection: one streaming pass over the samples of a source, resumable.

A short calibration (featuremaps alone, of the first `calibration_samples`
samples) fixes each unit's histogram range [lo, hi] (its observed min and
max there), then, from a fine histogram of the same samples' upsampled
featuremaps, where its bins lie (jaxdissect.bins: edges at the iqr levels'
tail fractions, so heavy tails keep their resolution). The featuremaps of
the first pass are kept for the second while they fit in
CALIBRATION_KEPT_BYTES; otherwise (or after a resume) they are computed
again. The main pass then
reads every sample's featuremaps and labels and folds each batch into fixed-shape states (jaxdissect.stats): every
unit's range and top-k samples, and histograms of its activation against
every class and label category. Memory does not grow with the sample count,
and the states are checkpointed so a killed run resumes.

The samples come from a source (jaxdissect.dissection.sources): a generator
and a segmenter, or arrays a user already has; the engine is the same.
"""
import dataclasses
import functools
import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import bins, parallel, stats
from jaxdissect.dissection import original_sketch, sources
from jaxdissect.errors import UserError
from jaxdissect.io import files
from jaxdissect.progress import Progress
from jaxdissect.training.loop import Checkpoints

# Settings that change the statistics; the others only change how they are read.
STATISTICS_SETTINGS = ("layers", "samples", "seed", "downsample", "bins", "top_k", "calibration_samples",
                       "original_sketch_seed")
# The calibration's featuremaps are kept between its two passes up to this size (float32, all its samples and
# layers, summed over the devices).
CALIBRATION_KEPT_BYTES = 2 ** 30
# Bumped when the statistics' content changes, so that a folder holding older statistics is refused.
STATISTICS_VERSION = 3


@dataclasses.dataclass(frozen=True)
class DissectSettings:
    layers: tuple
    samples: int = 10000
    batch_size: int = 32
    seed: int = 1
    downsample: int = 1
    bins: int = 256
    top_k: int = 12
    calibration_samples: int = 512
    readout: str = "reference"
    rule: str = "iqr"
    quantile: float = 0.99
    iqr_levels: int = 100
    iqr_smallest_fraction: float = 1e-3
    iqr_min_agreement: float = 0.8
    min_iou: float = 0.05
    min_iqr: float = 0.01
    min_agreement: float = 0.75
    # A checkpoint is considered every `checkpoint_every` batches and written when `checkpoint_minutes` of
    # work have passed since the last one (0: at every consideration).
    checkpoint_every: int = 20
    checkpoint_minutes: float = 2.0
    # Replays the original tool's randomised quantile sketch of the raw featuremaps under this torch seed
    # (jaxdissect.dissection.original_sketch); None: the quantile rule reads the streamed histogram.
    original_sketch_seed: int = None

    @property
    def calibrated_samples(self):
        """How many samples the calibration passes read (the first ones)."""
        return min(self.calibration_samples, self.samples)

    def statistics_key(self, model_ids):
        return {"settings": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in dataclasses.asdict(self).items() if k in STATISTICS_SETTINGS},
                "models": model_ids, "statistics_version": STATISTICS_VERSION}


@functools.partial(jax.jit, keep_unused=True)
def _samples_done(index, folded):
    """The last sample index + 1, once the states `folded` exist: a tiny program that waits for them
    (kept arguments are waited for even when unused)."""
    return jnp.max(index) + 1


def _each_layer(layers, update):
    """{layer: update(layer)}, each layer's compiled program dispatched on its own (on several processes
    each finishes before the next is dispatched: parallel.one_program_at_a_time)."""
    return {name: parallel.one_program_at_a_time(update(name)) for name in layers}


def _fold_batch(states, seg, maps, index, label_category):
    """{'range', 'joint'} states with samples `index` folded in: two compiled programs per layer.

    The source's forward and these folds are separate programs; nothing
    waits on the host between batches. On CPU, separate programs per layer
    ran about 2.5% faster than one program holding every layer's folds (the
    toy dissection, alternated runs): XLA's CPU runtime overlaps them.
    """
    layers = tuple(states["joint"])
    return {"range": _each_layer(layers, lambda name: stats.range_update(states["range"][name], maps[name], index)),
            "joint": _each_layer(layers, lambda name: stats.joint_update(states["joint"][name], maps[name], seg,
                                                                          index, label_category))}


class _Run:
    """The checkpointed state of one dissection in `outdir`."""

    def __init__(self, outdir, key):
        self.outdir = outdir
        self.key_path = os.path.join(outdir, "statistics_key.json")
        if os.path.exists(self.key_path):
            with open(self.key_path) as f:
                if json.load(f) != key:
                    raise UserError(f"{outdir} holds a different dissection (other models or settings); "
                                    "use a new --outdir")
        elif jax.process_index() == 0:
            files.save_json(self.key_path, key)
        self.checkpoints = Checkpoints(outdir)
        self.sketch_folder = os.path.join(outdir, "sketches")
        self.sketches = None      # RawSketches, saved with every checkpoint when set

    def restore(self, template):
        return self.checkpoints.restore(template)

    def restore_sketches(self, step, sketches):
        """Keeps `sketches` (new) or, once checkpoint `step` exists, the sketches saved with it."""
        if step > 0:
            path = os.path.join(self.sketch_folder, f"{step}.npz")
            if not os.path.isfile(path):
                raise UserError(f"{path} is missing: the sketches of checkpoint {step} cannot be resumed; "
                                "use a new --outdir")
            with np.load(path) as arrays:
                sketches = RawSketches.from_arrays(dict(arrays))
        self.sketches = sketches

    def save(self, state):
        """Checkpoints `state` (and the host-side sketches, written first, under the same step)."""
        state["saves"] = state["saves"] + 1
        step = int(state["saves"])
        sketches = self.sketches
        if sketches is not None:
            sketches.flush()            # on every process: a gather across hosts
        if sketches is not None and jax.process_index() == 0:
            os.makedirs(self.sketch_folder, exist_ok=True)
            files.save_npz(os.path.join(self.sketch_folder, f"{step}.npz"), sketches.to_arrays())
        # Every leaf global and replicated, so that all processes write one checkpoint together.
        self.checkpoints.save(step, jax.device_put(state, parallel.replicated()))
        if sketches is not None and jax.process_index() == 0:
            kept = {f"{s}.npz" for s in self.checkpoints.manager.all_steps()}
            for path in glob.glob(os.path.join(self.sketch_folder, "*.npz")):
                if os.path.basename(path) not in kept:
                    os.remove(path)


class RawSketches:
    """The original's quantile sketch of each layer's raw featuremap (--original_sketch_seed), fed on
    the host in sample order.

    A batch is read back one batch late (`feed` takes the previous one), so
    the copy to the host does not wait for the batch just dispatched.
    """

    def __init__(self, sketches):
        self.sketches = sketches
        self._pending = None

    @classmethod
    def new(cls, units, seed):
        return cls({name: original_sketch.QuantileSketch(u, seed) for name, u in units.items()})

    def feed(self, maps, index):
        self.flush()
        self._pending = ({name: maps[name] for name in self.sketches}, index)

    def flush(self):
        if self._pending is None:
            return
        maps, index = self._pending
        valid = parallel.to_host(index) >= 0
        for name, sketch in self.sketches.items():
            values = parallel.to_host(maps[name])[valid]
            sketch.add(values.reshape(-1, values.shape[-1]))
        self._pending = None

    def summaries(self):
        self.flush()
        return {name: sketch.summary() for name, sketch in self.sketches.items()}

    def to_arrays(self):
        """The sketches' states (the batch still pending must be flushed first)."""
        assert self._pending is None
        return {f"{name}/{key}": value for name, sketch in self.sketches.items()
                for key, value in sketch.to_arrays().items()}

    @classmethod
    def from_arrays(cls, arrays):
        layers = dict.fromkeys(key.rsplit("/", 1)[0] for key in arrays)
        return cls({name: original_sketch.QuantileSketch.from_arrays(
            {key.rsplit("/", 1)[1]: value for key, value in arrays.items() if key.rsplit("/", 1)[0] == name})
            for name in layers})


def collect_statistics(source, settings, outdir, model_ids=None):
    """Runs (or resumes) calibration and the main pass over `source` (jaxdissect.dissection.sources);
    returns {layer: (RangeStats, JointStats)} as numpy."""
    layers = tuple(settings.layers)
    if settings.batch_size % parallel.batch_multiple():
        raise UserError(f"--batch_size={settings.batch_size} must be a multiple of the "
                        f"{parallel.batch_multiple()} devices")
    if source.sample_limit is not None and settings.samples > source.sample_limit:
        raise UserError(f"--samples={settings.samples}: only {source.sample_limit} samples are available")
    seg_shape, shapes = source.shapes()
    pixels = settings.samples * seg_shape[2] * seg_shape[3]
    if pixels >= 2 ** 31:
        raise UserError(f"{settings.samples} samples at {seg_shape[2]}x{seg_shape[3]} pixels exceed the "
                        "int32 pixel counters; use fewer --samples or a larger --downsample")
    categories, label_category = sources.category_numbers(source.label_categories)
    units = {name: shapes[name][-1] for name in layers}

    def joint_init(lo, hi, cell_bin):
        return stats.joint_init(lo, hi, len(source.labels), settings.bins, len(categories), cell_bin)
    state = {"phase": jnp.int32(1), "next_sample": jnp.int32(0), "saves": jnp.int32(0),
             "calibration": {name: stats.range_init(units[name], 1) for name in layers},
             "cells": {name: jnp.zeros((units[name], bins.CELLS), jnp.int32) for name in layers},
             "range": {name: stats.range_init(units[name], settings.top_k) for name in layers},
             "joint": {name: joint_init(jnp.zeros(units[name]), jnp.ones(units[name]),
                                        bins.equal_cell_bins(units[name], settings.bins, bins.CELLS))
                       for name in layers}}
    run = _Run(outdir, settings.statistics_key(model_ids or {}))
    state = jax.device_put(run.restore(state), parallel.replicated())
    if settings.original_sketch_seed is not None:
        run.restore_sketches(int(state["saves"]), RawSketches.new(units, settings.original_sketch_seed))
    kept = {}   # {start: featuremaps} of the range pass, for the bin placement
    calibration_bytes = settings.calibrated_samples * sum(
        4 * int(np.prod(shapes[name][1:])) for name in layers)
    if int(state["phase"]) == 1:
        state = _range_pass(source, settings, state, run, kept if calibration_bytes <= CALIBRATION_KEPT_BYTES
                            else None)
    if int(state["phase"]) == 2:
        state = _bin_placement_pass(source, settings, state, run, seg_shape[2:], joint_init, kept)
    if int(state["phase"]) == 3:
        state = _main_pass(source, settings, state, run, jnp.asarray(label_category))
    raw_sketches = run.sketches.summaries() if run.sketches is not None else dict.fromkeys(layers)
    return {name: stats.LayerStatistics(jax.tree.map(parallel.to_host, state["range"][name]),
                                        jax.tree.map(parallel.to_host, state["joint"][name]), raw_sketches[name])
            for name in layers}


def _passes(settings, state, run, label, samples, step):
    """Calls `step(state, start, index) -> (state, samples done)` over the remaining batches of samples
    [0, samples).

    Progress shows finished batches: before reporting a batch, the loop
    waits for it while the next one is already queued, so the device never
    idles and the rate and eta are true (on several processes, each batch
    finishes first: `parallel.one_program_at_a_time`).

    The state is checkpointed at every `checkpoint_every`-th batch by which
    `checkpoint_minutes` have passed since the last checkpoint (process 0's
    clock decides for all): a save drains the device's queue and costs as
    much as several toy batches, and more with large statistics.
    """
    start = int(state["next_sample"])
    progress = Progress(label, samples, start=start)
    batches, queued, last_save = 0, None, time.monotonic()
    while start < samples:
        state, done = parallel.one_program_at_a_time(
            step(state, start, parallel.global_indices(start, settings.batch_size, samples)))
        start = min(start + settings.batch_size, samples)
        state["next_sample"] = jnp.int32(start)
        if queued is not None:
            progress.update(int(queued))
        queued = done
        batches += 1
        if batches % settings.checkpoint_every == 0 and start < samples and parallel.process_zero_decides(
                time.monotonic() - last_save >= 60 * settings.checkpoint_minutes):
            run.save(state)
            last_save = time.monotonic()
    if queued is not None:
        progress.update(int(queued))
    return state


def _range_pass(source, settings, state, run, kept):
    """Fixes every unit's histogram range from the first calibration samples (not checkpointed at its
    end: a run killed before the bins are placed redoes this short pass); their featuremaps go into the
    dict `kept` by batch start, unless it is None."""
    def step(state, start, index):
        maps = source.featuremaps(start, index)
        if kept is not None:
            kept[start] = maps
        state["calibration"] = _each_layer(settings.layers, lambda name: stats.range_update(
            state["calibration"][name], maps[name], index))
        return state, _samples_done(index, state["calibration"])
    state = _passes(settings, state, run, "calibration (unit ranges)", settings.calibrated_samples, step)
    state.update(phase=jnp.int32(2), next_sample=jnp.int32(0))
    return state


def _bin_placement_pass(source, settings, state, run, size, joint_init, kept):
    """Places every unit's bins from a fine histogram of the same calibration samples, upsampled (their
    featuremaps taken from the dict `kept` by batch start where they are in it)."""
    ranges = state["calibration"]

    def step(state, start, index):
        maps = kept.pop(start) if start in kept else source.featuremaps(start, index)
        state["cells"] = _each_layer(settings.layers, lambda name: stats.cell_update(
            state["cells"][name], maps[name], index, ranges[name].minimum, ranges[name].maximum, size))
        return state, _samples_done(index, state["cells"])
    state = _passes(settings, state, run, "calibration (bin placement)", settings.calibrated_samples, step)
    state["joint"] = {name: joint_init(ranges[name].minimum, ranges[name].maximum,
                                       bins.tail_cell_bins(parallel.to_host(state["cells"][name]), settings.bins))
                      for name in settings.layers}
    state.update(phase=jnp.int32(3), next_sample=jnp.int32(0))
    run.save(state)
    return state


def _main_pass(source, settings, state, run, label_category):
    def step(state, start, index):
        seg, maps = source.labelled_featuremaps(start, index)
        state.update(_fold_batch(state, seg, maps, index, label_category))
        if run.sketches is not None:
            run.sketches.feed(maps, index)
        return state, _samples_done(index, (state["range"], state["joint"]))
    state = _passes(settings, state, run, "dissection (units x classes)", settings.samples, step)
    state.update(phase=jnp.int32(4))
    run.save(state)
    return state
