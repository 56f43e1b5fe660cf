"""Trains a toy generator, ProGAN architecture (no progressive growing) or
StyleGAN2 (`GANConfig.arch`), against a ProGAN-style discriminator:
non-saturating logistic loss, lazy R1 penalty, Adam(β1=0, β2=0.99) and an
exponential moving average of the generator. A StyleGAN2 is trained without
style mixing or path length regularisation, with its per-sample noise.

Real images come from `sample_real(key, batch_size) -> (N, R, R, 3)`, called
inside the jitted step (the toy world renders on the fly). Runs resume from
the latest checkpoint in `workdir`.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdissect.models.discriminator import ProGANDiscriminator
from jaxdissect.models.proggan import ProGAN
from jaxdissect.models.stylegan2 import StyleGAN2
from jaxdissect.training.loop import Checkpoints, MetricLog


ARCHS = ("proggan", "stylegan2")


@dataclasses.dataclass(frozen=True)
class GANConfig:
    """`sizes`: the latent size (z, and w for a StyleGAN2), then the channels at 4x4, 8x8, ...;
    `mapping_layers` only for a StyleGAN2."""
    sizes: tuple = (128, 128, 128, 64, 32, 16)
    arch: str = "proggan"
    mapping_layers: int = 2
    batch_size: int = 32
    steps: int = 20000
    learning_rate: float = 2e-3
    r1_gamma: float = 1.0
    r1_every: int = 8
    ema_half_life_images: int = 10000
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")

    @property
    def generator(self):
        if self.arch == "stylegan2":
            return StyleGAN2(z_dim=self.sizes[0], w_dim=self.sizes[0], mapping_layers=self.mapping_layers,
                             channels=self.sizes[1:])
        return ProGAN(self.sizes)

    @property
    def discriminator(self):
        return ProGANDiscriminator(self.sizes[1:])


def adam(config):
    return optax.adam(config.learning_rate, b1=0.0, b2=0.99, eps=1e-8)


def init_state(config):
    """Fresh training state: both networks, their optimisers, the generator EMA."""
    kg, kd = jax.random.split(jax.random.PRNGKey(config.seed))
    res = config.generator.resolution
    return state_from_models(config, config.generator.init(kg),
                             config.discriminator.init(kd, jnp.zeros((1, res, res, 3))))


def state_from_models(config, g_params, d_params):
    """A training state that starts from trained networks (fine-tuning): fresh optimisers, step 0, and the
    generator's EMA starting at the generator itself."""
    opt = adam(config)
    return {"step": jnp.zeros((), jnp.int32), "g": g_params, "g_ema": jax.tree.map(jnp.copy, g_params),
            "d": d_params, "g_opt": opt.init(g_params), "d_opt": opt.init(d_params)}


def make_train_step(config, sample_real: Callable):
    """Returns jitted `step(state, with_r1) -> (state, metrics)`."""
    gen, disc, opt = config.generator, config.discriminator, adam(config)
    n = config.batch_size
    ema_decay = 0.5 ** (n / config.ema_half_life_images)

    def fake_images(g_params, key):
        z = jax.random.normal(key, (n, gen.latent_size))
        return gen(g_params, z)[0]

    def d_loss(d_params, g_params, real, key, with_r1):
        fake = fake_images(g_params, key)
        real_logits, real_vjp = jax.vjp(lambda x: disc.apply(d_params, x), real)
        loss = jnp.mean(jax.nn.softplus(disc.apply(d_params, fake))) + jnp.mean(jax.nn.softplus(-real_logits))
        metrics = {"d_loss": loss, "d_real": jnp.mean(real_logits)}
        if with_r1:
            (grad_real,) = real_vjp(jnp.ones_like(real_logits))
            r1 = jnp.mean(jnp.sum(jnp.square(grad_real), axis=(1, 2, 3)))
            loss = loss + 0.5 * config.r1_gamma * config.r1_every * r1
            metrics["r1"] = r1
        return loss, metrics

    def g_loss(g_params, d_params, key):
        fake_logits = disc.apply(d_params, fake_images(g_params, key))
        return jnp.mean(jax.nn.softplus(-fake_logits))

    def step(state, with_r1):
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), state["step"])
        k_real, k_fake_d, k_fake_g = jax.random.split(key, 3)
        real = sample_real(k_real, n)
        d_grads, metrics = jax.grad(d_loss, has_aux=True)(state["d"], state["g"], real, k_fake_d, with_r1)
        d_updates, d_opt = opt.update(d_grads, state["d_opt"], state["d"])
        d_params = optax.apply_updates(state["d"], d_updates)
        gl, g_grads = jax.value_and_grad(g_loss)(state["g"], d_params, k_fake_g)
        g_updates, g_opt = opt.update(g_grads, state["g_opt"], state["g"])
        g_params = optax.apply_updates(state["g"], g_updates)
        g_ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["g_ema"], g_params)
        metrics["g_loss"] = gl
        new_state = {"step": state["step"] + 1, "g": g_params, "g_ema": g_ema, "d": d_params,
                     "g_opt": g_opt, "d_opt": d_opt}
        return new_state, metrics

    return jax.jit(step, static_argnums=1, donate_argnums=0)


def train(config, workdir, sample_real, initial_state=None):
    """Runs (or resumes) training until `config.steps`; returns the final state.

    Without a checkpoint in `workdir`, starts from `initial_state` (default: fresh networks).
    """
    checkpoints = Checkpoints(workdir)
    state = checkpoints.restore(initial_state if initial_state is not None else init_state(config))
    step_fn = make_train_step(config, sample_real)
    log = MetricLog(workdir, config.steps, "gan")
    step = int(state["step"])
    while step < config.steps:
        state, metrics = step_fn(state, step % config.r1_every == 0)
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            log.log(step, metrics, config.batch_size)
        if step % config.checkpoint_every == 0 or step == config.steps:
            checkpoints.save(step, state)
    return state
