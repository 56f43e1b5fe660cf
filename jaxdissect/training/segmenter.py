"""Trains a small single-head UPerNet (the `ade20k` variant) on rendered scenes with exact labels.

Batches come from `sample_batch(key, batch_size) -> (images (N, R, R, 3) in
[-1, 1], labels (N, R, R) int)`, called inside the jitted step (the toy world
renders on the fly). Each step:

1. renders a batch and perturbs the images (`augment`: colour jitter, blur,
   noise), so that the segmenter also labels a GAN's blurrier, noisier,
   colour-shifted samples;
2. feeds them through exactly the input path of `Segmenter.probabilities`
   with one scale: `Segmenter.preprocess`, then area resampling to
   `input_size` (a larger input_size upsamples, which puts the logits, at a
   quarter of the input size, closer to the pixel grid: 16x16 logits cannot
   draw a 64x64 image's 3-pixel windows);
3. resizes the native logits bilinearly to R x R, as inference does, and
   takes the pixel-wise cross-entropy against the exact labels;
4. updates with AdamW (warmup then cosine decay; no decay on BN and biases).

Data keys are `fold_in(PRNGKey(seed), step)`, so a resumed run sees the
same batches as an uninterrupted one. Runs resume from the latest
checkpoint in `workdir`. The trained model folder records
`segsizes = [input_size]`: build its Segmenter with those.
"""
import dataclasses
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdissect.checkpoint import save_model
from jaxdissect.segmentation import resample, upernet
from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.training.loop import Checkpoints, MetricLog


@dataclasses.dataclass(frozen=True)
class SegmenterTrainConfig:
    """Network size, input size and optimisation of a segmenter training run.

    `augment_fraction` of the images per batch are perturbed, the rest stay clean.
    """
    depths: tuple = (1, 1, 1, 1)
    stem_width: int = 16
    base_width: int = 16
    fpn_dim: int = 64
    ppm_scales: tuple = (1, 2, 4)
    input_size: int = 128
    resolution: int = 64
    batch_size: int = 32
    steps: int = 2500
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    augment_fraction: float = 0.5
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25

    def __post_init__(self):
        for name in ("depths", "ppm_scales"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))

    def network(self, n_class):
        return upernet.UPerNetConfig(
            "ade20k", depths=self.depths, stem_width=self.stem_width, base_width=self.base_width,
            fpn_dim=self.fpn_dim, ppm_scales=self.ppm_scales, n_class=n_class)


def make_segmenter(config, labels_meta):
    """The Segmenter a run trains: one class per name of `labels_meta` (a '-' first)."""
    return Segmenter.create(config.network(len(labels_meta["names"])), labels_meta,
                            segsizes=(config.input_size,))


# ---------------------------------------------------------------------------
# Augmentation

def _gaussian_taps(sigma, radius=2):
    """(2*radius + 1,) normalised Gaussian weights; sigma near 0 gives the identity."""
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 0.05)) ** 2)
    return weights / weights.sum()


def _blur_axis(image, taps, axis):
    """Separable-filter pass of one (H, W, C) image along `axis`, edges repeated."""
    radius = (taps.shape[0] - 1) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = jnp.pad(image, pad, mode="edge")
    size = image.shape[axis]
    return sum(w * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k, w in enumerate(taps))


def _augment_one(key, image, strength):
    """One (H, W, 3) image in [-1, 1], perturbed with magnitudes scaled by `strength` (0 = none)."""
    keys = jax.random.split(key, 7)
    x = (image + 1) / 2
    u = lambda k, shape=(): jax.random.uniform(k, shape, minval=-1.0, maxval=1.0) * strength
    grey = jnp.mean(x, axis=-1, keepdims=True)
    x = grey + (x - grey) * (1 + 0.3 * u(keys[0]))  # saturation
    x = x * (1 + 0.12 * u(keys[1], (3,)))  # per-channel gain: colour shift
    mean = jnp.mean(x)
    x = mean + (x - mean) * (1 + 0.25 * u(keys[2])) + 0.08 * u(keys[3])  # contrast, brightness
    taps = _gaussian_taps(strength * jax.random.uniform(keys[4], maxval=1.2))
    x = _blur_axis(_blur_axis(x, taps, 0), taps, 1)
    noise_std = strength * jax.random.uniform(keys[5], maxval=0.04)
    x = x + noise_std * jax.random.normal(keys[6], x.shape)
    return jnp.clip(x, 0.0, 1.0) * 2 - 1


def augment(key, images, fraction):
    """Perturbs about `fraction` of the images (N, H, W, 3) in [-1, 1]: colour, blur, noise."""
    n = images.shape[0]
    pick_key, image_key = jax.random.split(key)
    strength = jax.random.bernoulli(pick_key, fraction, (n,)).astype(jnp.float32)
    return jax.vmap(_augment_one)(jax.random.split(image_key, n), images, strength)


# ---------------------------------------------------------------------------
# Training

def model_input(segmenter, images):
    """The network input of `segmenter.probabilities` for its (single) scale."""
    x = segmenter.preprocess(images)
    (size,) = segmenter.segsizes
    return x if x.shape[1:3] == (size, size) else resample.adaptive_avg_pool(x, (size, size))


def pixel_cross_entropy(logits, labels):
    """Mean cross-entropy of (N, H, W, C) logits against (N, H, W) int labels."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


def batch_loss(segmenter, params, batch_stats, images, labels):
    """Cross-entropy of a batch with BN on batch statistics; returns (loss, (new batch_stats, pixel accuracy))."""
    x = model_input(segmenter, images)
    out, new_stats = upernet.train_logits(segmenter.config, {"params": params, "batch_stats": batch_stats}, x)
    # Bilinearly to the labels' size, as `Segmenter.probabilities` resizes at inference.
    logits = resample.resize_bilinear(out["object"], labels.shape[1:3])
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return pixel_cross_entropy(logits, labels), (new_stats, accuracy)


def optimiser(config):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, config.warmup_steps, max(config.steps, config.warmup_steps + 1),
        end_value=config.learning_rate * 0.01)
    decay_mask = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: path[-1].key == "kernel", params)
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask), schedule


def init_state(config, segmenter):
    variables = upernet.init_params(segmenter.config, jax.random.PRNGKey(config.seed))
    variables = jax.tree.map(jnp.asarray, variables)
    opt, _ = optimiser(config)
    return {"step": jnp.zeros((), jnp.int32), "variables": variables,
            "opt": opt.init(variables["params"])}


@functools.partial(jax.jit, static_argnames=("config", "segmenter", "sample_batch"),
                   donate_argnames="state")
def train_step(state, config, segmenter, sample_batch: Callable):
    """One optimiser step; returns (state, metrics). Compiled once per (config, segmenter, sampler)."""
    opt, schedule = optimiser(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), state["step"])
    data_key, augment_key = jax.random.split(key)
    images, labels = sample_batch(data_key, config.batch_size)
    images = augment(augment_key, images, config.augment_fraction)
    variables = state["variables"]
    (loss, (batch_stats, accuracy)), grads = jax.value_and_grad(batch_loss, argnums=1, has_aux=True)(
        segmenter, variables["params"], variables["batch_stats"], images, labels.astype(jnp.int32))
    updates, opt_state = opt.update(grads, state["opt"], variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    metrics = {"loss": loss, "pixel_accuracy": accuracy, "learning_rate": schedule(state["step"])}
    new_state = {"step": state["step"] + 1, "opt": opt_state,
                 "variables": {"params": params, "batch_stats": batch_stats}}
    return new_state, metrics


def restore_latest(config, workdir, labels_meta):
    """(segmenter, the latest training state in `workdir`, or a fresh one)."""
    segmenter = make_segmenter(config, labels_meta)
    return segmenter, Checkpoints(workdir).restore(init_state(config, segmenter))


def train(config, workdir, sample_batch, labels_meta):
    """Runs (or resumes) training until `config.steps`; returns (segmenter, final state)."""
    segmenter, state = restore_latest(config, workdir, labels_meta)
    checkpoints = Checkpoints(workdir)
    log = MetricLog(workdir, config.steps, "segmenter")
    step = int(state["step"])
    while step < config.steps:
        state, metrics = train_step(state, config, segmenter, sample_batch)
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            log.log(step, metrics, config.batch_size)
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoints.save(step, state)
    return segmenter, state


def export(config, segmenter, state, dst, labels_meta, trained_on, replace=False):
    """Writes the trained variables as a segmenter model folder (meta as convert/upernet.py's)."""
    source = {"trained_on": trained_on, "steps": int(state["step"]),
              "config": dataclasses.asdict(config)}
    meta = {"kind": upernet.MODEL_KIND, "config": segmenter.config.to_json(), "labels": labels_meta,
            "segsizes": list(segmenter.segsizes), "source": source}
    save_model(os.path.abspath(dst), state["variables"], meta, replace)
    return meta
