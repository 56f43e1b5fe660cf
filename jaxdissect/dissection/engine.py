"""Runs a dissection: two streaming passes over generated samples, resumable.

Pass 1 (generator only) finds each unit's activation range and its top-k
samples; pass 2 (generator and segmenter) histograms every unit's upsampled
activation against every class over bins spanning that range. Both passes
fold batches into fixed-shape states (jaxdissect.stats), so memory does not
grow with the sample count, and checkpoint them so a killed run resumes.

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
import numpy as np

from jaxdissect import parallel, stats
from jaxdissect.errors import UserError
from jaxdissect.progress import Progress
from jaxdissect.segmentation.resample import resize_bilinear
from jaxdissect.training.loop import Checkpoints

# Settings that change the statistics; the others only change how they are read.
STATISTICS_SETTINGS = ("layers", "samples", "seed", "downsample", "bins", "top_k")


@dataclasses.dataclass(frozen=True)
class DissectSettings:
    layers: tuple
    samples: int = 10000
    batch_size: int = 32
    seed: int = 1
    downsample: int = 1
    bins: int = 256
    top_k: int = 12
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


@functools.lru_cache(maxsize=None)
def _featuremaps_fn(generator, layers):
    return jax.jit(lambda params, z: generator.h(params, z, layers))


@functools.lru_cache(maxsize=None)
def _labelled_featuremaps_fn(generator, segmenter, layers, downsample):
    """(g_params, s_params, z) -> ({layer: featuremap upsampled to the segmentation}, labels)."""
    def fn(g_params, s_params, z):
        images, maps = generator(g_params, z, capture=layers)
        seg = segmenter.segment(s_params, images, downsample)
        size = seg.shape[2:]
        return {name: resize_bilinear(maps[name].astype(jnp.float32), size) for name in layers}, seg
    return jax.jit(fn)


def sample_batch(seed, start, batch_size, samples, latent_size):
    """Global batch of latents for samples [start, start + batch_size) and their indices (-1: padding)."""
    z = parallel.global_batch((batch_size, latent_size), np.float32,
                              lambda a, b: parallel.latents(seed, start + a, start + b, latent_size))
    index = parallel.global_batch((batch_size,), np.int32,
                                  lambda a, b: np.where(np.arange(start + a, start + b) < samples,
                                                        np.arange(start + a, start + b), -1))
    return z, index


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
            os.makedirs(outdir, exist_ok=True)
            with open(self.key_path, "w") as f:
                json.dump(key, f, indent=1)
        self.checkpoints = Checkpoints(outdir)

    def restore(self, template):
        return self.checkpoints.restore(template)

    def save(self, state):
        self.checkpoints.save(int(state["phase"]) * (1 << 30) + int(state["next_sample"]), state)


def collect_statistics(generator, g_params, segmenter, s_params, settings, outdir, model_ids=None):
    """Runs (or resumes) both passes; returns {layer: (RangeStats, JointStats)} as numpy."""
    layers = tuple(settings.layers)
    if settings.batch_size % parallel.batch_multiple():
        raise UserError(f"--batch_size={settings.batch_size} must be a multiple of the "
                        f"{parallel.batch_multiple()} devices")
    shapes = jax.eval_shape(_featuremaps_fn(generator, layers), g_params,
                            jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32))
    seg_shape = jax.eval_shape(_labelled_featuremaps_fn(generator, segmenter, layers, settings.downsample),
                               g_params, s_params,
                               jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32))[1].shape
    pixels = settings.samples * seg_shape[2] * seg_shape[3]
    if pixels >= 2 ** 31:
        raise UserError(f"{settings.samples} samples at {seg_shape[2]}x{seg_shape[3]} pixels exceed the "
                        "int32 pixel counters; use fewer --samples or a larger --downsample")
    classes = len(segmenter.labels)
    state = {"phase": jnp.int32(1), "next_sample": jnp.int32(0),
             "range": {name: stats.range_init(shapes[name].shape[-1], settings.top_k) for name in layers},
             "joint": {name: stats.joint_init(shapes[name].shape[-1], classes, settings.bins) for name in layers}}
    run = _Run(outdir, settings.statistics_key(model_ids or {}))
    state = run.restore(state)
    state = jax.device_put(state, parallel.replicated())
    if int(state["phase"]) == 1:
        state = _range_pass(generator, g_params, settings, state, run)
    if int(state["phase"]) == 2:
        state = _joint_pass(generator, g_params, segmenter, s_params, settings, state, run)
    return {name: (jax.tree.map(parallel.to_host, state["range"][name]),
                   jax.tree.map(parallel.to_host, state["joint"][name])) for name in layers}


def _passes(settings, state, run, label, step):
    """Calls `step(state, z, index)` over the remaining batches of the current phase."""
    start = int(state["next_sample"])
    progress = Progress(label, settings.samples, start=start)
    batches = 0
    while start < settings.samples:
        z, index = sample_batch(settings.seed, start, settings.batch_size, settings.samples,
                                step.latent_size)
        state = step(state, z, index)
        start = min(start + settings.batch_size, settings.samples)
        state["next_sample"] = jnp.int32(start)
        progress.update(start)
        batches += 1
        if batches % settings.checkpoint_every == 0 and start < settings.samples:
            run.save(state)
    return state


def _range_pass(generator, g_params, settings, state, run):
    featuremaps = _featuremaps_fn(generator, tuple(settings.layers))

    def step(state, z, index):
        maps = featuremaps(g_params, z)
        state["range"] = {name: stats.range_update(state["range"][name], maps[name], index)
                          for name in settings.layers}
        return state
    step.latent_size = generator.latent_size
    state = _passes(settings, state, run, "pass 1/2 (unit ranges)", step)
    state.update(phase=jnp.int32(2), next_sample=jnp.int32(0))
    run.save(state)
    return state


def _joint_pass(generator, g_params, segmenter, s_params, settings, state, run):
    labelled = _labelled_featuremaps_fn(generator, segmenter, tuple(settings.layers), settings.downsample)

    def step(state, z, index):
        maps, seg = labelled(g_params, s_params, z)
        state["joint"] = {name: stats.joint_update(state["joint"][name], maps[name], seg, index,
                                                   state["range"][name].minimum, state["range"][name].maximum)
                          for name in settings.layers}
        return state
    step.latent_size = generator.latent_size
    state = _passes(settings, state, run, "pass 2/2 (unit-class histograms)", step)
    state.update(phase=jnp.int32(3))
    run.save(state)
    return state
