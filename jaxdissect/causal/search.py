"""The alpha search: which units of a layer cause a class (design section 1).

Maximises ACE(alpha) - l2 * |alpha|^2 over alpha in [0, 1]^U with Adam,
clamping alpha to [0, 1] after every step, on a fresh batch of samples per
step (sample i's latent depends only on (seed, i), batches sharded across
all devices). The ACE is one of two objectives (`region`):

- 'location' (the reference's): ablation at each sample's cell where the
  class is most present, insertion at one candidate cell per sample
  (jaxdissect.causal.location); the candidates are drawn by where the class
  usually is, measured first on `prior_samples` samples;
- 'image': ablation at every cell the class touches and insertion at every
  other cell at once (jaxdissect.causal.ace). Its optimum turns much of the
  image into the class.

Units ranked by alpha (ties: by IoU with the class, then by index) are the
causal ranking; its top n the causal set. Resumable from checkpoints in
`workdir`, Adam's state included.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect import parallel
from jaxdissect.causal import location
from jaxdissect.causal.ace import causal_effect
from jaxdissect.errors import UserError
from jaxdissect.training.loop import Checkpoints, MetricLog

REGIONS = ("location", "image")


@dataclasses.dataclass(frozen=True)
class AlphaSearchSettings:
    layer: str
    class_index: int
    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 0.01
    l2: float = 0.005
    seed: int = 2
    downsample: int = 1
    region: str = "location"
    probes: int = 5
    prior_samples: int = 512
    checkpoint_every: int = 50
    log_every: int = 10


def initial_alpha(iou, strategy="iou"):
    """Starting alpha from the units' IoU with the class: scaled to [0, 1] ('iou') or all 0.5 ('constant')."""
    iou = np.asarray(iou, np.float32)
    if strategy == "constant":
        return np.full_like(iou, 0.5)
    return np.clip(iou / max(float(iou.max()), 1e-9), 0.0, 1.0)


def _effect(generator, g_params, segmenter, s_params, settings, alpha, value, index, presence):
    """The settings' objective (a dict with 'ace') for the samples `index`."""
    z = parallel.latents_at(settings.seed, index, generator.latent_size)
    if settings.region == "image":
        return causal_effect(generator, g_params, segmenter, s_params, settings.layer, alpha, value,
                             settings.class_index, z, settings.downsample)
    return location.location_effect(generator, g_params, segmenter, s_params, settings.layer, alpha, value,
                                    settings.class_index, z, index, presence, settings.seed, settings.probes,
                                    settings.downsample)


@functools.lru_cache(maxsize=None)
def _step_fn(generator, segmenter, settings):
    """(optax optimizer, jit step(state, g_params, s_params, value, presence, index) -> (state, metrics))."""
    if settings.region not in REGIONS:
        raise UserError(f"--ace_region={settings.region}: expected one of {', '.join(REGIONS)}")
    opt = optax.adam(settings.learning_rate)

    def loss(alpha, g_params, s_params, value, presence, index):
        effect = _effect(generator, g_params, segmenter, s_params, settings, alpha, value, index, presence)
        return -effect["ace"] + settings.l2 * jnp.sum(jnp.square(alpha)), effect

    def step(state, g_params, s_params, value, presence, index):
        (value_loss, effect), grad = jax.value_and_grad(loss, has_aux=True)(state["alpha"], g_params, s_params,
                                                                            value, presence, index)
        updates, opt_state = opt.update(grad, state["opt"], state["alpha"])
        alpha = jnp.clip(optax.apply_updates(state["alpha"], updates), 0.0, 1.0)
        metrics = {"loss": value_loss, **effect}
        return {"alpha": alpha, "opt": opt_state, "step": state["step"] + 1}, metrics

    return opt, jax.jit(step)


def initial_state(opt, alpha0):
    """The search's state at step 0, placed as the step's outputs are (so that step 2 does not recompile)."""
    alpha0 = jnp.asarray(alpha0, jnp.float32)
    state = {"alpha": alpha0, "opt": opt.init(alpha0), "step": jnp.zeros((), jnp.int32)}
    return jax.device_put(state, parallel.replicated())


def class_presence(generator, g_params, segmenter, s_params, settings):
    """(H, W) where the class usually is (the location objective's probe weights), replicated; the
    image objective does not use it (a 0)."""
    if settings.region == "image":
        return jax.device_put(jnp.zeros((), jnp.float32), parallel.replicated())
    presence = location.class_presence(generator, g_params, segmenter, s_params, settings.layer,
                                       settings.class_index, settings.seed, settings.prior_samples,
                                       settings.batch_size, settings.downsample)
    if not float(presence.sum()) > 0:
        raise UserError(f"the class never appears in the {settings.prior_samples} samples the search draws its "
                        "candidate cells from; raise --ace_prior_samples or pick another class")
    return jax.device_put(jnp.asarray(presence), parallel.replicated())


def search(generator, g_params, segmenter, s_params, settings, value, alpha0, workdir):
    """Runs (or resumes) the search; returns the final alpha (U,) as numpy."""
    opt, step = _step_fn(generator, segmenter, settings)
    checkpoints = Checkpoints(workdir)
    state = jax.device_put(checkpoints.restore(initial_state(opt, alpha0)), parallel.replicated())
    presence = class_presence(generator, g_params, segmenter, s_params, settings)
    log = MetricLog(workdir, settings.steps, "alpha search") if jax.process_index() == 0 else None
    value = jnp.asarray(value, jnp.float32)
    t = int(state["step"])
    while t < settings.steps:
        start = t * settings.batch_size
        index = parallel.global_indices(start, settings.batch_size, start + settings.batch_size)
        state, metrics = parallel.one_program_at_a_time(step(state, g_params, s_params, value, presence, index))
        t += 1
        if log and (t % settings.log_every == 0 or t == settings.steps):
            log.log(t, metrics, settings.batch_size)
        if t % settings.checkpoint_every == 0 or t == settings.steps:
            checkpoints.save(t, state)
    return parallel.to_host(state["alpha"])


def ranking(alpha, iou):
    """Units by decreasing alpha; equal alphas by decreasing IoU with the class (`iou`, (U,)), then by
    increasing unit index."""
    alpha, iou = np.asarray(alpha), np.asarray(iou)
    return np.lexsort((np.arange(len(alpha)), -iou, -alpha))
