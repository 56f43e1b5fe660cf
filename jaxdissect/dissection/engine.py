"""Runs a dissection: one streaming pass over generated samples, resumable.

A short calibration (the generator alone on the first
`calibration_samples` samples) fixes each unit's histogram range [lo, hi]
(its observed min and max there). The main pass then runs generator and
segmenter on every sample and folds each batch into fixed-shape states
(jaxdissect.stats): every unit's range and top-k samples, and histograms of
its upsampled activation against every class. Memory does not grow with the
sample count, and the states are checkpointed so a killed run resumes.

The generator is any hashable object with `latent_size`, `h(params, z,
layers)` and `__call__(params, z, capture=layers)` (a `ProGAN`); the
segmenter any hashable object with `segment(params, images, downsample)` ->
(N, K, h, w) labels and `labels` (class names; a `Segmenter`).
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp

from jaxdissect import parallel, stats
from jaxdissect.errors import UserError
from jaxdissect.io import files
from jaxdissect.progress import Progress
from jaxdissect.training.loop import Checkpoints

# Settings that change the statistics; the others only change how they are read.
STATISTICS_SETTINGS = ("layers", "samples", "seed", "downsample", "bins", "top_k", "calibration_samples")


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
    rule: str = "iqr"
    quantile: float = 0.99
    iqr_levels: int = 100
    iqr_smallest_fraction: float = 1e-3
    iqr_min_agreement: float = 0.8
    min_iou: float = 0.05
    min_agreement: float = 0.75
    checkpoint_every: int = 20

    def statistics_key(self, model_ids):
        return {"settings": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in dataclasses.asdict(self).items() if k in STATISTICS_SETTINGS},
                "models": model_ids}


def labelled_featuremaps(generator, segmenter, layers, downsample, g_params, s_params, z):
    """(labels (N, K, h, w), {layer: featuremap}) of latents z."""
    images, maps = generator(g_params, z, capture=layers)
    return segmenter.segment(s_params, images, downsample), maps


@functools.lru_cache(maxsize=None)
def _calibration_step_fn(generator, layers):
    """jit (ranges, g_params, seed, index) -> (ranges with the featuremaps of samples `index` folded in,
    samples done: the last index + 1)."""
    def step(ranges, g_params, seed, index):
        maps = generator.h(g_params, parallel.latents_at(seed, index, generator.latent_size), layers)
        return {name: stats.range_update(ranges[name], maps[name], index) for name in layers}, jnp.max(index) + 1
    return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _main_step_fn(generator, segmenter, layers, downsample):
    """({'range', 'joint'}, g_params, s_params, seed, index) -> (the states with samples `index` folded
    in, samples done: the last index + 1).

    Two compiled programs per batch, latents included, so nothing waits on
    the host between batches: the models, then the statistics. On CPU the
    pair ran about 4% faster than one program holding both (the toy
    dissection, alternated runs).
    """
    @jax.jit
    def forward(g_params, s_params, seed, index):
        z = parallel.latents_at(seed, index, generator.latent_size)
        return labelled_featuremaps(generator, segmenter, layers, downsample, g_params, s_params, z)

    @functools.partial(jax.jit, donate_argnums=0)
    def fold(states, seg, maps, index):
        return {"range": {name: stats.range_update(states["range"][name], maps[name], index) for name in layers},
                "joint": {name: stats.joint_update(states["joint"][name], maps[name], seg, index)
                          for name in layers}}, jnp.max(index) + 1

    def step(states, g_params, s_params, seed, index):
        seg, maps = forward(g_params, s_params, seed, index)
        return fold(states, seg, maps, index)
    return step


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

    def restore(self, template):
        return self.checkpoints.restore(template)

    def save(self, state, wait=True):
        state["saves"] = state["saves"] + 1
        # A copy (the next updates donate the state's buffers while a background save may still read
        # it), every leaf global and replicated, so that all processes write one checkpoint together.
        snapshot = jax.device_put(state, parallel.replicated(), may_alias=False)
        self.checkpoints.save(int(state["saves"]), snapshot, wait)


def collect_statistics(generator, g_params, segmenter, s_params, settings, outdir, model_ids=None):
    """Runs (or resumes) calibration and the main pass; returns {layer: (RangeStats, JointStats)} as numpy."""
    layers = tuple(settings.layers)
    if settings.batch_size % parallel.batch_multiple():
        raise UserError(f"--batch_size={settings.batch_size} must be a multiple of the "
                        f"{parallel.batch_multiple()} devices")
    z = jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32)
    seg_shape, shapes = jax.eval_shape(functools.partial(labelled_featuremaps, generator, segmenter, layers,
                                                         settings.downsample), g_params, s_params, z)
    seg_shape = seg_shape.shape
    pixels = settings.samples * seg_shape[2] * seg_shape[3]
    if pixels >= 2 ** 31:
        raise UserError(f"{settings.samples} samples at {seg_shape[2]}x{seg_shape[3]} pixels exceed the "
                        "int32 pixel counters; use fewer --samples or a larger --downsample")
    units = {name: shapes[name].shape[-1] for name in layers}
    state = {"phase": jnp.int32(1), "next_sample": jnp.int32(0), "saves": jnp.int32(0),
             "calibration": {name: stats.range_init(units[name], 1) for name in layers},
             "range": {name: stats.range_init(units[name], settings.top_k) for name in layers},
             "joint": {name: stats.joint_init(jnp.zeros(units[name]), jnp.ones(units[name]),
                                              len(segmenter.labels), settings.bins) for name in layers}}
    run = _Run(outdir, settings.statistics_key(model_ids or {}))
    state = jax.device_put(run.restore(state), parallel.replicated())
    try:
        if int(state["phase"]) == 1:
            state = _calibration_pass(generator, g_params, settings, state, run)
        if int(state["phase"]) == 2:
            state = _main_pass(generator, g_params, segmenter, s_params, settings, state, run)
    finally:
        run.checkpoints.wait()   # also when interrupted: no save left half-written behind the caller's back
    return {name: (jax.tree.map(parallel.to_host, state["range"][name]),
                   jax.tree.map(parallel.to_host, state["joint"][name])) for name in layers}


def _passes(settings, state, run, label, samples, step):
    """Calls `step(state, index) -> (state, samples done)` over the remaining batches of samples [0, samples).

    Progress shows finished batches: before reporting a batch, the loop
    waits for it while the next one is already queued, so the device never
    idles and the rate and eta are true.
    """
    start = int(state["next_sample"])
    progress = Progress(label, samples, start=start)
    batches, queued = 0, None
    while start < samples:
        state, done = step(state, parallel.global_indices(start, settings.batch_size, samples))
        start = min(start + settings.batch_size, samples)
        state["next_sample"] = jnp.int32(start)
        if queued is not None:
            progress.update(int(queued))
        queued = done
        batches += 1
        if batches % settings.checkpoint_every == 0 and start < samples:
            run.save(state, wait=False)   # written while the next batches run
    if queued is not None:
        progress.update(int(queued))
    return state


def _calibration_pass(generator, g_params, settings, state, run):
    """Fixes every unit's histogram range from the first calibration samples."""
    fold = _calibration_step_fn(generator, tuple(settings.layers))

    def step(state, index):
        state["calibration"], done = fold(state["calibration"], g_params, settings.seed, index)
        return state, done
    samples = min(settings.calibration_samples, settings.samples)
    state = _passes(settings, state, run, "calibration (unit ranges)", samples, step)
    state["joint"] = {name: stats.joint_init(state["calibration"][name].minimum,
                                             state["calibration"][name].maximum,
                                             state["joint"][name].joint.shape[1], settings.bins)
                      for name in settings.layers}
    state.update(phase=jnp.int32(2), next_sample=jnp.int32(0))
    run.save(state)
    return state


def _main_pass(generator, g_params, segmenter, s_params, settings, state, run):
    fold = _main_step_fn(generator, segmenter, tuple(settings.layers), settings.downsample)

    def step(state, index):
        folded, done = fold({"range": state["range"], "joint": state["joint"]}, g_params, s_params, settings.seed,
                            index)
        state.update(folded)
        return state, done
    state = _passes(settings, state, run, "dissection (units x classes)", settings.samples, step)
    state.update(phase=jnp.int32(3))
    run.save(state)
    return state
