"""Speed of the ProGAN generator at 256x256 (Karras LSUN widths) on this machine.

    python bench/bench_generator.py [--batch_sizes=1,8] [--reps=3]

Prints images/s per batch size (after compilation), the FLOPs per image
counted from the layer specs (2*k*k*Cin*Cout*H*W per conv; pixel norm, bias
and activations are left out) beside XLA's own count, and the achieved
GFLOP/s as a fraction of a 2048x2048 float32 matmul timed in the same run.
Rates use the best repetition (the least disturbed by other processes on a
shared machine); the median is printed beside. Weights are seeded random
numbers: speed does not depend on their values.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.models.proggan import ProGAN

KARRAS_LSUN_256 = (512, 512, 512, 512, 512, 256, 128, 64)


def seeded_params(model, seed=0):
    """Flax variables for `model`: kernels ~ N(0, 1), biases ~ 0.1 N(0, 1), drawn with numpy."""
    rng = np.random.default_rng(seed)
    params = {}
    for s in model.specs:
        params[s.name] = {
            "kernel": rng.standard_normal((s.kernel_size, s.kernel_size, s.in_channels, s.out_channels),
                                          dtype=np.float32),
            "bias": rng.standard_normal((s.out_channels,), dtype=np.float32) * np.float32(0.1),
        }
    return jax.tree.map(jnp.asarray, {"params": params})


def conv_flops_per_image(model):
    """Multiply-adds of every conv, counted as 2 FLOPs, over its output pixels."""
    return sum(2 * s.kernel_size ** 2 * s.in_channels * s.out_channels * s.resolution ** 2
               for s in model.specs)


def xla_flops(compiled):
    """XLA's FLOP estimate of a compiled computation, or None if it gives none."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return analysis.get("flops") if analysis else None


def time_calls(function, args, reps):
    """Seconds per call, one per repetition (the caller has already warmed it up)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(size=2048, reps=10):
    a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    return 2 * size ** 3 / min(time_calls(matmul, (a, b), reps)) / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    model = ProGAN(KARRAS_LSUN_256)
    params = seeded_params(model)
    analytic = conv_flops_per_image(model)
    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"ProGAN {model.resolution}x{model.resolution} sizes {list(model.sizes)}: "
          f"{analytic / 1e9:.2f} GFLOP/image counted from the conv specs")
    peak = matmul_gflops()
    print(f"2048x2048 float32 matmul: {peak:.1f} GFLOP/s")

    generate = jax.jit(lambda params, z: model(params, z)[0])
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        z = jax.random.normal(jax.random.key(batch), (batch, model.latent_size), jnp.float32)
        start = time.perf_counter()
        compiled = generate.lower(params, z).compile()
        compile_seconds = time.perf_counter() - start
        jax.block_until_ready(compiled(params, z))
        times = time_calls(compiled, (params, z), args.reps)
        xla = xla_flops(compiled)
        xla_text = f"{xla / batch / 1e9:.2f}" if xla else "n/a"
        achieved = analytic * batch / min(times) / 1e9
        print(f"batch {batch}: {batch / min(times):.2f} images/s (best of {args.reps}; "
              f"median {batch / statistics.median(times):.2f}; compile {compile_seconds:.1f} s); "
              f"GFLOP/image analytic {analytic / 1e9:.2f}, XLA {xla_text}; "
              f"{achieved:.1f} GFLOP/s = {achieved / peak:.2f} of the matmul rate")


if __name__ == "__main__":
    main()
