"""The alpha search: which units of a layer cause a class (design section 1).

Maximises ACE(alpha) - l2 * |alpha|^2 over alpha in [0, 1]^U with Adam,
clamping alpha to [0, 1] after every step (batches sharded across all
devices). The ACE is one of two objectives (`region`):

- 'location' (the reference's): on fixed training corpora chosen first
  (jaxdissect.causal.corpus), ablation at each present sample's cell where
  the class is most present and insertion at each candidate sample's best
  cell (jaxdissect.causal.location). Step t takes the next `batch_size`
  samples of each corpus, which is walked in a fresh random order every
  pass (an epoch), the order depending only on (seed, pass);
- 'image': on a fresh batch of samples per step, ablation at every cell the
  class touches and insertion at every other cell at once
  (jaxdissect.causal.ace). Its optimum turns much of the image into the
  class.

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
from jaxdissect.causal import corpus as corpus_lib
from jaxdissect.causal import location
from jaxdissect.causal.ace import causal_effect
from jaxdissect.errors import UserError
from jaxdissect.training.loop import Checkpoints, MetricLog

REGIONS = ("location", "image")


@dataclasses.dataclass(frozen=True)
class AlphaSearchSettings:
    layer: str
    class_index: int
    steps: int = 500
    batch_size: int = 20
    learning_rate: float = 0.01
    l2: float = 0.005
    seed: int = 2
    downsample: int = 1
    region: str = "location"
    probes: int = 5
    search_samples: int = 10000
    train_samples: int = 1000
    eval_samples: int = 200
    checkpoint_every: int = 50
    log_every: int = 10


def initial_alpha(iou, strategy="iou"):
    """Starting alpha from the units' IoU with the class: scaled to [0, 1] ('iou') or all 0.5 ('constant')."""
    iou = np.asarray(iou, np.float32)
    if strategy == "constant":
        return np.full_like(iou, 0.5)
    return np.clip(iou / max(float(iou.max()), 1e-9), 0.0, 1.0)


def _effect(generator, g_params, segmenter, s_params, settings, alpha, value, batch):
    """The settings' objective (a dict with 'ace') on `batch` (see `training_batch`)."""
    if settings.region == "image":
        z = parallel.latents_at(settings.seed, batch["index"], generator.latent_size)
        return causal_effect(generator, g_params, segmenter, s_params, settings.layer, alpha, value,
                             settings.class_index, z, settings.downsample)
    return location.location_effect(generator, g_params, segmenter, s_params, settings.layer, alpha, value,
                                    settings.class_index, settings.seed, batch, settings.downsample)


@functools.lru_cache(maxsize=None)
def _step_fn(generator, segmenter, settings):
    """(optax optimizer, jit step(state, g_params, s_params, value, batch) -> (state, metrics))."""
    if settings.region not in REGIONS:
        raise UserError(f"--ace_region={settings.region}: expected one of {', '.join(REGIONS)}")
    opt = optax.adam(settings.learning_rate)

    def loss(alpha, g_params, s_params, value, batch):
        effect = _effect(generator, g_params, segmenter, s_params, settings, alpha, value, batch)
        return -effect["ace"] + settings.l2 * jnp.sum(jnp.square(alpha)), effect

    def step(state, g_params, s_params, value, batch):
        (value_loss, effect), grad = jax.value_and_grad(loss, has_aux=True)(state["alpha"], g_params, s_params,
                                                                            value, batch)
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


def epoch_positions(seed, stream, length, start, count):
    """(count,) positions in a corpus of `length` samples of draws [start, start + count) of a walk
    through it in a fresh random order every pass; pass e's order depends only on (seed, stream, e)."""
    draws = np.arange(start, start + count)
    orders = {e: np.random.default_rng([seed, stream, e]).permutation(length) for e in set(draws // length)}
    return np.array([orders[d // length][d % length] for d in draws], np.int64)


def training_batch(settings, corpus, step):
    """Step `step`'s batch as a dict of batch-sharded (batch_size,) int32 arrays: the image objective's
    'index' (fresh samples), or the location objective's present and candidate samples and cells."""
    b = settings.batch_size
    start = step * b
    if settings.region == "image":
        return {"index": parallel.global_indices(start, b, start + b)}
    batch = {}
    for stream, kind in enumerate(("present", "candidate")):
        index, cell = getattr(corpus, f"{kind}_index"), getattr(corpus, f"{kind}_cell")
        at = epoch_positions(settings.seed, stream, len(index), start, b)
        for name, values in ((f"{kind}_index", index[at]), (f"{kind}_cell", cell[at])):
            batch[name] = parallel.global_batch((b,), np.int32, lambda i, j, v=values: v[i:j])
    return batch


def featuremap_size(generator, g_params, layer):
    """(H, W) of the generator's featuremap at `layer`."""
    z = jax.ShapeDtypeStruct((1, generator.latent_size), jnp.float32)
    return jax.eval_shape(lambda z: generator.h(g_params, z, (layer,))[layer], z).shape[1:3]


def training_corpus(generator, g_params, segmenter, s_params, settings, value, workdir):
    """The Corpus the search trains on (read back on resume); the image objective uses only its
    presence-weighted value, so only its present part is built. `value` None: the candidates are
    probed with the presence-weighted value."""
    return corpus_lib.load_or_build(generator, g_params, segmenter, s_params, settings, value, workdir,
                                    featuremap_size(generator, g_params, settings.layer),
                                    candidates=settings.region == "location")


def search(generator, g_params, segmenter, s_params, settings, value, alpha0, workdir, corpus=None):
    """Runs (or resumes) the search; returns the final alpha (U,) as numpy. `value` (U,) is the insertion
    value; `corpus` the location objective's training corpora (built here if None)."""
    opt, step = _step_fn(generator, segmenter, settings)
    if corpus is None and settings.region == "location":
        corpus = training_corpus(generator, g_params, segmenter, s_params, settings, value, workdir)
    checkpoints = Checkpoints(workdir)
    state = jax.device_put(checkpoints.restore(initial_state(opt, alpha0)), parallel.replicated())
    log = MetricLog(workdir, settings.steps, "alpha search") if jax.process_index() == 0 else None
    value = jnp.asarray(value, jnp.float32)
    t = int(state["step"])
    while t < settings.steps:
        batch = training_batch(settings, corpus, t)
        state, metrics = parallel.one_program_at_a_time(step(state, g_params, s_params, value, batch))
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
