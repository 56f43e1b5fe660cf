"""Speed of the upp UPerNet segmenter (ResNet-50, four heads) at 256x256 on this machine.

    python bench/bench_segmenter.py [--batch_sizes=1,8] [--reps=3] [--size=256]

Times `upernet.infer` (network, logits resized to the input size, softmax)
per batch size after compilation, and prints images/s, the FLOPs per image
counted from the traced program (2 * output size * contraction length for
every convolution and einsum; BN, ReLU, softmax left out) beside XLA's own
count, and the achieved GFLOP/s as a fraction of a 2048x2048 float32 matmul
timed in the same run. Rates use the best repetition (the least disturbed by
other processes); the median is printed beside. Weights are seeded random
numbers drawn with numpy (`upernet.init_params`): speed does not depend on them.
"""
import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp

from bench_generator import matmul_gflops, time_calls, xla_flops
from jaxdissect.segmentation import upernet

# The unified-parsing heads: 336 objects, 26 materials, 365 scenes, 5 part owners.
UPP_RESNET50 = upernet.UPerNetConfig("upp", n_object=336, n_material=26, n_scene=365,
                                     part_sizes=(2, 24, 15, 13, 11))


def _subjaxprs(eqn):
    for value in eqn.params.values():
        if isinstance(value, jax.extend.core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jax.extend.core.Jaxpr):
            yield value


def traced_flops(jaxpr):
    """2 * (output elements) * (contraction length) over every conv and dot_general."""
    total = 0
    for eqn in jaxpr.eqns:
        out_size = math.prod(eqn.outvars[0].aval.shape)
        if eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            total += 2 * out_size * math.prod(rhs) // rhs[out_features_dim]
        elif eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * out_size * math.prod(lhs[d] for d in lhs_contract)
        for sub in _subjaxprs(eqn):
            total += traced_flops(sub)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", default="1,8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    config = UPP_RESNET50
    variables = jax.tree.map(jnp.asarray, upernet.init_params(config, jax.random.key(0)))
    size = (args.size, args.size)
    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    x1 = jnp.zeros((1, *size, 3), jnp.float32)
    analytic = traced_flops(
        jax.make_jaxpr(lambda v, x: upernet.infer(config, v, x, size))(variables, x1).jaxpr)
    print(f"upp UPerNet ResNet-50 {size[0]}x{size[1]}: {analytic / 1e9:.1f} GFLOP/image "
          "counted from the traced convs and einsums")
    peak = matmul_gflops()
    print(f"2048x2048 float32 matmul: {peak:.1f} GFLOP/s")

    segment = jax.jit(lambda v, x: upernet.infer(config, v, x, size))
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = 50.0 * jax.random.normal(jax.random.key(batch), (batch, *size, 3), jnp.float32)
        start = time.perf_counter()
        compiled = segment.lower(variables, x).compile()
        compile_seconds = time.perf_counter() - start
        jax.block_until_ready(compiled(variables, x))
        times = time_calls(compiled, (variables, x), args.reps)
        xla = xla_flops(compiled)
        xla_text = f"{xla / batch / 1e9:.1f}" if xla else "n/a"
        achieved = analytic * batch / min(times) / 1e9
        print(f"batch {batch}: {batch / min(times):.3f} images/s (best of {args.reps}; "
              f"median {batch / statistics.median(times):.3f}; compile {compile_seconds:.1f} s); "
              f"GFLOP/image traced {analytic / 1e9:.1f}, XLA {xla_text}; "
              f"{achieved:.1f} GFLOP/s = {achieved / peak:.2f} of the matmul rate")


if __name__ == "__main__":
    main()
