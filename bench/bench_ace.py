"""Speed of the alpha search (--mode=ace) on this machine, and its agreement on 1 vs 8 devices.

    python bench/bench_ace.py [--generator=weights/toy/generator --segmenter=weights/toy/segmenter]
        [--layer=layer4] [--class_index=1] [--batch_size=16] [--steps=20] [--downsample=1] [--ace_region=location]

Without --generator/--segmenter it uses tiny random models (tests/tiny_models.py).
Prints the compile time of one search step (forward and backward through
generator and segmenter, for both the ablated and the inserted images) and
then steps/s and samples/s over --steps steps, each on a fresh batch of
latents as the search makes them. Then it runs the same 6-step search on 1 and
on 8 simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count,
each in its own process) and prints the largest |alpha difference|, beside
how far the objective's gradient moves on one device when the latents are
perturbed by 1e-7 (relative): the float noise the device count also brings.
Insertion values are 1 for every unit and alpha starts at 0.5: speed does
not depend on them.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel
from jaxdissect.causal import location, search
from jaxdissect.causal.ace import causal_effect
from jaxdissect.models.load import load_generator
from jaxdissect.segmentation.segmenter import Segmenter

HERE = os.path.dirname(os.path.abspath(__file__))


def models(args, tmp):
    """Loads --generator/--segmenter, or writes and loads the tiny random test models."""
    if not args.generator:
        sys.path.insert(0, os.path.join(HERE, "..", "tests"))
        from tiny_models import write_tiny_generator, write_tiny_segmenter
        args.generator, args.segmenter = os.path.join(tmp, "gen"), os.path.join(tmp, "seg")
        write_tiny_generator(args.generator)
        write_tiny_segmenter(args.segmenter)
    generator, g_params = load_generator(args.generator)
    segmenter, s_params = Segmenter.from_model_folder(args.segmenter)
    return generator, g_params, segmenter, s_params


def search_step(generator, segmenter, layer, class_index, batch_size, downsample, region="location"):
    """(the search's jitted step (state, g_params, s_params, value, index) of objective `region`, a
    starting state placed as search.search places it, insertion values). Probe cells are drawn uniformly
    (speed does not depend on where)."""
    height, width, units = generator.featuremap_shape(layer)
    settings = search.AlphaSearchSettings(layer=layer, class_index=class_index, batch_size=batch_size,
                                          downsample=downsample, region=region)
    opt, step = search._step_fn(generator, segmenter, settings)
    presence = jax.device_put(jnp.ones((height, width), jnp.float32), parallel.replicated())
    state = search.initial_state(opt, jnp.full((units,), 0.5, jnp.float32))
    return (lambda state, g_params, s_params, value, index: step(state, g_params, s_params, value, presence, index),
            state, jnp.ones((units,), jnp.float32))


def step_rate(args, generator, g_params, segmenter, s_params):
    """(compile + first step seconds, steps/s after it) of the search's jitted step."""
    step, state, value = search_step(generator, segmenter, args.layer, args.class_index, args.batch_size,
                                     args.downsample, args.ace_region)

    def batch(t):
        return parallel.global_indices(t * args.batch_size, args.batch_size, (t + 1) * args.batch_size)
    started = time.time()
    state, metrics = step(state, g_params, s_params, value, batch(0))
    jax.block_until_ready(metrics)
    compile_s = time.time() - started
    started = time.time()
    for t in range(1, args.steps + 1):
        state, metrics = step(state, g_params, s_params, value, batch(t))
    jax.block_until_ready(metrics)
    return compile_s, args.steps / (time.time() - started)


def gradient_sensitivity(args, generator, g_params, segmenter, s_params, relative=1e-7):
    """max |d objective / d alpha| change, over one batch, when every latent is scaled by (1 + relative noise):
    the search's gradient is not a smooth function of the featuremap at float resolution (leaky ReLU and
    max-pool kinks), so float noise of this size can move it far more than itself."""
    settings = search.AlphaSearchSettings(layer=args.layer, class_index=args.class_index,
                                          batch_size=args.batch_size, downsample=args.downsample,
                                          region=args.ace_region)
    units = generator.featuremap_shape(args.layer)[-1]
    presence = jnp.ones(generator.featuremap_shape(args.layer)[:2], jnp.float32)
    index = jnp.arange(args.batch_size)
    z = parallel.latents_at(settings.seed, index, generator.latent_size)

    @jax.jit
    def grad(z):
        def ace(alpha):
            if args.ace_region == "image":
                return causal_effect(generator, g_params, segmenter, s_params, args.layer, alpha, jnp.ones(units),
                                     args.class_index, z, args.downsample)["ace"]
            return location.location_effect(generator, g_params, segmenter, s_params, args.layer, alpha,
                                            jnp.ones(units), args.class_index, z, index, presence, settings.seed,
                                            settings.probes, args.downsample)["ace"]
        return jax.grad(ace)(jnp.linspace(0.2, 0.8, units))
    noise = jax.random.normal(jax.random.PRNGKey(0), z.shape)
    return float(jnp.max(jnp.abs(grad(z * (1 + relative * noise)) - grad(z)))), float(jnp.max(jnp.abs(grad(z))))


def six_step_alpha(args, workdir):
    """The worker: a 6-step search from a fixed start; saves alpha to WORKDIR/alpha.npy."""
    generator, g_params = load_generator(args.generator)
    segmenter, s_params = Segmenter.from_model_folder(args.segmenter)
    units = generator.featuremap_shape(args.layer)[-1]
    settings = search.AlphaSearchSettings(layer=args.layer, class_index=args.class_index, steps=6,
                                          batch_size=args.batch_size, downsample=args.downsample,
                                          region=args.ace_region)
    alpha = search.search(generator, g_params, segmenter, s_params, settings, np.ones(units),
                          np.linspace(0.2, 0.8, units), workdir)
    np.save(os.path.join(workdir, "alpha.npy"), alpha)


def device_agreement(args, tmp):
    """max |alpha(1 device) - alpha(8 devices)| after 6 steps, each run in its own process."""
    alphas = []
    for devices in (1, 8):
        workdir = os.path.join(tmp, f"devices{devices}")
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        command = [sys.executable, os.path.abspath(__file__), "--worker", workdir, f"--generator={args.generator}",
                   f"--segmenter={args.segmenter}", f"--layer={args.layer}", f"--class_index={args.class_index}",
                   f"--batch_size={args.batch_size}", f"--downsample={args.downsample}",
                   f"--ace_region={args.ace_region}"]
        started = time.time()
        subprocess.run(command, check=True, env=env, capture_output=True)
        print(f"  6 steps on {devices} device(s): {time.time() - started:.1f} s (with start-up and compile)")
        alphas.append(np.load(os.path.join(workdir, "alpha.npy")))
    return float(np.max(np.abs(alphas[0] - alphas[1])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator")
    parser.add_argument("--segmenter")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--class_index", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--ace_region", default="location", choices=["location", "image"],
                        help="the objective (see --mode=ace --helpfull)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return six_step_alpha(args, args.worker)
    if args.batch_size % 8:
        parser.error("--batch_size must be a multiple of 8 (the 8-device comparison splits it)")
    with tempfile.TemporaryDirectory() as tmp:
        generator, g_params, segmenter, s_params = models(args, tmp)
        print(f"generator {args.generator} ({generator.resolution}px), layer {args.layer} "
              f"{generator.featuremap_shape(args.layer)}, segmenter {args.segmenter}, batch {args.batch_size}, "
              f"{jax.device_count()} device(s)")
        compile_s, rate = step_rate(args, generator, g_params, segmenter, s_params)
        print(f"alpha search: compile + first step {compile_s:.1f} s; {rate:.2f} steps/s, "
              f"{rate * args.batch_size:.1f} samples/s over {args.steps} steps")
        diff = device_agreement(args, tmp)
        print(f"alpha after 6 steps, 1 vs 8 devices: max |difference| = {diff:.2e}")
        change, size = gradient_sensitivity(args, generator, g_params, segmenter, s_params)
        print(f"objective's gradient on 1 device, latents x (1 + 1e-7 noise): max |change| = {change:.2e} "
              f"(max |gradient| {size:.2e})")


if __name__ == "__main__":
    main()
