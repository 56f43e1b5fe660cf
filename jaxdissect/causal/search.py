"""The alpha search: which units of a layer cause a class (design section 1).

Maximises ACE(alpha) - l2 * |alpha|^2 over alpha in [0, 1]^U with Adam,
clamping alpha to [0, 1] after every step, on a fresh batch of samples per
step (sample i's latent depends only on (seed, i), batches sharded across
all devices). Units ranked by alpha are the causal ranking; its top n the
causal set. Resumable from checkpoints in `workdir`.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect import parallel
from jaxdissect.causal.ace import causal_effect
from jaxdissect.training.loop import Checkpoints, MetricLog


@dataclasses.dataclass(frozen=True)
class AlphaSearchSettings:
    layer: str
    class_index: int
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 0.01
    l2: float = 0.01
    seed: int = 2
    downsample: int = 1
    checkpoint_every: int = 50
    log_every: int = 10


def initial_alpha(iou, strategy="iou"):
    """Starting alpha from the units' IoU with the class: scaled to [0, 1] ('iou') or all 0.5 ('constant')."""
    iou = np.asarray(iou, np.float32)
    if strategy == "constant":
        return np.full_like(iou, 0.5)
    return np.clip(iou / max(float(iou.max()), 1e-9), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _step_fn(generator, segmenter, settings):
    opt = optax.adam(settings.learning_rate)

    def loss(alpha, g_params, s_params, value, z):
        effect = causal_effect(generator, g_params, segmenter, s_params, settings.layer, alpha, value,
                               settings.class_index, z, settings.downsample)
        return -effect["ace"] + settings.l2 * jnp.sum(jnp.square(alpha)), effect

    def step(state, g_params, s_params, value, index):
        z = parallel.latents_at(settings.seed, index, generator.latent_size)
        (value_loss, effect), grad = jax.value_and_grad(loss, has_aux=True)(state["alpha"], g_params, s_params,
                                                                            value, z)
        updates, opt_state = opt.update(grad, state["opt"], state["alpha"])
        alpha = jnp.clip(optax.apply_updates(state["alpha"], updates), 0.0, 1.0)
        metrics = {"loss": value_loss, **effect}
        return {"alpha": alpha, "opt": opt_state, "step": state["step"] + 1}, metrics

    return opt, jax.jit(step)


def search(generator, g_params, segmenter, s_params, settings, value, alpha0, workdir):
    """Runs (or resumes) the search; returns the final alpha (U,) as numpy."""
    opt, step = _step_fn(generator, segmenter, settings)
    alpha0 = jnp.asarray(alpha0, jnp.float32)
    state = {"alpha": alpha0, "opt": opt.init(alpha0), "step": jnp.zeros((), jnp.int32)}
    checkpoints = Checkpoints(workdir)
    # Placed as the step's outputs are, so that the second step does not compile again.
    state = jax.device_put(checkpoints.restore(state), parallel.replicated())
    log = MetricLog(workdir, settings.steps, "alpha search") if jax.process_index() == 0 else None
    value = jnp.asarray(value, jnp.float32)
    t = int(state["step"])
    while t < settings.steps:
        start = t * settings.batch_size
        index = parallel.global_indices(start, settings.batch_size, start + settings.batch_size)
        state, metrics = step(state, g_params, s_params, value, index)
        t += 1
        if log and (t % settings.log_every == 0 or t == settings.steps):
            log.log(t, metrics, settings.batch_size)
        if t % settings.checkpoint_every == 0 or t == settings.steps:
            checkpoints.save(t, state)
    return parallel.to_host(state["alpha"])


def ranking(alpha):
    """Units by decreasing alpha (ties: lower unit first)."""
    return np.argsort(-np.asarray(alpha), kind="stable")
