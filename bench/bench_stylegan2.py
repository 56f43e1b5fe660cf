"""Forward speed of the full 256x256 StyleGAN2 (rosinality config-f), beside the original code when available.

    python bench/bench_stylegan2.py [--batch=4] [--reps=5] [--rosinality_src=DIR]

The weights are the seeded ones of the parity test (tests/seeded_stylegan2.py;
speed does not depend on their values). Prints images/s (best of --reps
timed calls, median beside), GFLOP per image traced from the program
(2 x output elements x contraction length over every convolution and
matmul; the upsampling convs are traced as convs over zero-inserted inputs,
whose zero taps are not counted), and the achieved GFLOP/s as a fraction of the peak measured in the
same run (float32 2048x2048 matmuls), for the stored noise maps ("const",
as the original's randomize_noise=False) and the per-sample noise
("random", the converter's default).

With torch importable and --rosinality_src pointing at a clone of
rosinality/stylegan2-pytorch, the original Generator runs the same weights,
latents and batch on the same CPU threads, timed alternately with ours; the
script prints both rates, their ratio and the largest image difference.
Its CUDA ops are stubbed at import as in the fixtures' README (their CPU
paths are plain PyTorch).
"""
import argparse
import dataclasses
import importlib.util
import math
import os
import sys
import time

import jax
import numpy as np

from measure import _subjaxprs, machine_line, peak_gflops, rate_line, time_calls, traced_flops
from jaxdissect.models.stylegan2 import StyleGAN2
from jaxdissect.models.stylegan2_convert import nvidia_names, params_from_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import seeded_stylegan2  # noqa: E402

PSI = 0.7


def zero_tap_flops(jaxpr):
    """The part of `traced_flops` that multiplies the zeros inserted by input-dilated convolutions
    (the stride-2 transposed convs): of their traced FLOPs only 1 / (dilation product) are real taps."""
    total = 0
    for eqn in jaxpr.eqns:
        is_conv = eqn.primitive.name == "conv_general_dilated"
        dilation = math.prod(eqn.params["lhs_dilation"] or (1,)) if is_conv else 1
        if dilation > 1:
            total += traced_flops(jax.extend.core.Jaxpr([], eqn.invars, eqn.outvars, [eqn])) * (1 - 1 / dilation)
        for sub in _subjaxprs(eqn):
            total += zero_tap_flops(sub)
    return total


def ours(weights, latent_avg):
    state_dict = nvidia_names(weights)
    state_dict["mapping.w_avg"] = latent_avg
    model = StyleGAN2(512, 512, 8, seeded_stylegan2.CHANNELS, truncation_psi=PSI, noise="const")
    return model, params_from_state_dict(state_dict, model)


def rosinality_generator(src, weights, latent_avg):
    """The original Generator(256, 512, 8, channel_multiplier=2) with `weights`, and its call."""
    import torch
    import torch.utils.cpp_extension
    torch.utils.cpp_extension.load = lambda *args, **kwargs: None  # CUDA kernels; CPU paths need none
    sys.path.insert(0, os.path.abspath(src))
    import model as rosinality_model
    generator = rosinality_model.Generator(256, 512, 8, channel_multiplier=2).eval()
    generator.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    average = torch.from_numpy(latent_avg)

    def run(z):
        with torch.no_grad():
            image, _ = generator([torch.from_numpy(z)], truncation=PSI, truncation_latent=average,
                                 randomize_noise=False)
        return image.numpy()
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rosinality_src", help="a clone of rosinality/stylegan2-pytorch (needs torch)")
    args = parser.parse_args()
    if args.rosinality_src and importlib.util.find_spec("torch") is None:
        sys.exit("--rosinality_src needs torch (pip install torch) to run the original code")
    if args.rosinality_src and not os.path.isfile(os.path.join(args.rosinality_src, "model.py")):
        sys.exit(f"--rosinality_src={args.rosinality_src}: no model.py there (a clone of rosinality/stylegan2-pytorch)")
    print(machine_line())
    weights = seeded_stylegan2.full_state_dict()
    latent_avg = np.random.default_rng(7).standard_normal(512).astype(np.float32) * 0.1
    model, params = ours(weights, latent_avg)
    z = np.random.default_rng(2).standard_normal((args.batch, 512)).astype(np.float32)
    peak = peak_gflops()
    print(f"peak {peak:.1f} GFLOP/s; StyleGAN2 256x256 config-f, batch {args.batch}")
    for noise in ("const", "random"):
        variant = dataclasses.replace(model, noise=noise)
        generate = jax.jit(lambda p, z: variant(p, z)[0])
        start = time.perf_counter()
        jax.block_until_ready(generate(params, z))
        compile_s = time.perf_counter() - start
        jaxpr = jax.make_jaxpr(lambda p, z: variant(p, z)[0])(params, z[:1]).jaxpr
        traced = traced_flops(jaxpr)
        flops = traced - zero_tap_flops(jaxpr)
        print(f"  traced {traced / 1e9:.1f} GFLOP/image, of which {flops / 1e9:.1f} real taps (used below)")
        print(rate_line(f"forward, noise={noise}", args.batch, time_calls(generate, (params, z), args.reps),
                        flops, peak, unit="images") + f"  (first call {compile_s:.1f} s)")
    if args.rosinality_src:
        compare(args, generate_const(model, params), rosinality_generator(args.rosinality_src, weights, latent_avg), z)


def generate_const(model, params):
    generate = jax.jit(lambda p, z: model(p, z)[0])
    return lambda z: np.asarray(generate(params, z))


def compare(args, jax_run, torch_run, z):
    """Alternate timed calls of both; best of --reps each."""
    import torch
    torch.set_num_threads(os.cpu_count())
    ours_image, theirs_image = jax_run(z), torch_run(z)
    times = {"jax": [], "torch": []}
    for _ in range(args.reps):
        for name, run in (("jax", jax_run), ("torch", torch_run)):
            start = time.perf_counter()
            run(z)
            times[name].append(time.perf_counter() - start)
    rate = {name: args.batch / min(t) for name, t in times.items()}
    difference = np.abs(np.transpose(ours_image, (0, 3, 1, 2)) - theirs_image).max()
    print(f"  original rosinality code (torch {torch.__version__}, {torch.get_num_threads()} threads): "
          f"{rate['torch']:.2f} images/s; ours {rate['jax']:.2f} images/s; ratio {rate['jax'] / rate['torch']:.2f}; "
          f"max |image difference| {difference:.2e}")


if __name__ == "__main__":
    main()
