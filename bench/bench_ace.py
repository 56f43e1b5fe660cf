"""Speed of the alpha search (--mode=ace) on this machine, and its agreement on 1 vs 8 devices.

    python bench/bench_ace.py [--generator=weights/toy/generator --segmenter=weights/toy/segmenter]
        [--layer=layer4] [--class_index=1] [--batch_size=16] [--steps=20] [--downsample=1] [--ace_region=location]

Without --generator/--segmenter it uses tiny random models (tests/tiny_models.py).
Prints the compile time of one search step (forward and backward through
generator and segmenter, for both the ablated and the inserted images) and
then steps/s and samples/s over --steps steps, on batches made as the search
makes them (for the location objective, from a corpus of random cells:
speed does not depend on which). Then it runs a 6-step search (its corpora
searched in 256 samples) on 1 and on 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count, each in its own process)
and prints the largest |alpha difference|, beside how far the objective's
gradient moves on one device when the insertion values are perturbed by
1e-7 (relative): the float noise the device count also brings. Insertion
values are 1 for every unit and alpha starts at 0.5: speed does not depend
on them.
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
from jaxdissect.causal import corpus as corpus_lib
from jaxdissect.causal import search
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


def synthetic_corpus(generator, layer, samples, seed=0):
    """A Corpus of `samples` present and candidate samples at random cells (speed does not depend on
    which), so that the step is timed without the corpus search."""
    height, width, units = generator.featuremap_shape(layer)
    rng = np.random.default_rng(seed)
    cells = lambda: rng.integers(0, height * width, samples).astype(np.int32)
    none = np.zeros(0, np.int32)
    return corpus_lib.Corpus(np.arange(samples, dtype=np.int32), cells(), np.arange(samples, 2 * samples,
                             dtype=np.int32), cells(), np.ones(units, np.float32), np.ones(height * width),
                             none, none, none, none)


def search_step(generator, segmenter, layer, class_index, batch_size, downsample, region="location"):
    """(the search's jitted step (state, g_params, s_params, value, batch) of objective `region`, a starting
    state placed as search.search places it, insertion values, batch_at(t): step t's batch as the search
    makes it, from a synthetic corpus for the location objective)."""
    settings = search.AlphaSearchSettings(layer=layer, class_index=class_index, batch_size=batch_size,
                                          downsample=downsample, region=region)
    opt, step = search._step_fn(generator, segmenter, settings)
    units = generator.featuremap_shape(layer)[-1]
    corpus = synthetic_corpus(generator, layer, 1000)
    return (step, search.initial_state(opt, jnp.full((units,), 0.5, jnp.float32)), jnp.ones((units,), jnp.float32),
            lambda t: search.training_batch(settings, corpus, t))


def step_rate(args, generator, g_params, segmenter, s_params):
    """(compile + first step seconds, steps/s after it) of the search's jitted step."""
    step, state, value, batch_at = search_step(generator, segmenter, args.layer, args.class_index,
                                               args.batch_size, args.downsample, args.ace_region)
    started = time.time()
    state, metrics = step(state, g_params, s_params, value, batch_at(0))
    jax.block_until_ready(metrics)
    compile_s = time.time() - started
    started = time.time()
    for t in range(1, args.steps + 1):
        state, metrics = step(state, g_params, s_params, value, batch_at(t))
    jax.block_until_ready(metrics)
    return compile_s, args.steps / (time.time() - started)


def gradient_sensitivity(args, generator, g_params, segmenter, s_params, relative=1e-7):
    """max |d objective / d alpha| change, over one batch, when every insertion value is scaled by
    (1 + relative noise): the search's gradient is not a smooth function of the featuremap at float
    resolution (leaky ReLU and max-pool kinks), so float noise of this size can move it far more than
    itself."""
    settings = search.AlphaSearchSettings(layer=args.layer, class_index=args.class_index,
                                          batch_size=args.batch_size, downsample=args.downsample,
                                          region=args.ace_region)
    units = generator.featuremap_shape(args.layer)[-1]
    batch = search.training_batch(settings, synthetic_corpus(generator, args.layer, 1000), 0)

    @jax.jit
    def grad(value):
        ace = lambda alpha: search._effect(generator, g_params, segmenter, s_params, settings, alpha, value,
                                           batch)["ace"]
        return jax.grad(ace)(jnp.linspace(0.2, 0.8, units))
    value = jnp.ones(units)
    noise = jax.random.normal(jax.random.PRNGKey(0), value.shape)
    return (float(jnp.max(jnp.abs(grad(value * (1 + relative * noise)) - grad(value)))),
            float(jnp.max(jnp.abs(grad(value)))))


def six_step_alpha(args, workdir):
    """The worker: a 6-step search from a fixed start; saves alpha to WORKDIR/alpha.npy."""
    generator, g_params = load_generator(args.generator)
    segmenter, s_params = Segmenter.from_model_folder(args.segmenter)
    units = generator.featuremap_shape(args.layer)[-1]
    settings = search.AlphaSearchSettings(layer=args.layer, class_index=args.class_index, steps=6,
                                          batch_size=args.batch_size, downsample=args.downsample,
                                          region=args.ace_region, search_samples=256, train_samples=64)
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
        print(f"objective's gradient on 1 device, insertion values x (1 + 1e-7 noise): max |change| = {change:.2e} "
              f"(max |gradient| {size:.2e})")


if __name__ == "__main__":
    main()
