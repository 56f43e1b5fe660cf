"""Timing, FLOP counting and the machine's measured peak, shared by the benchmark scripts."""
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdissect import parallel


def machine_line():
    device = jax.devices()[0]
    return (f"jax {jax.__version__}; {jax.device_count()} x {device.platform} ({device.device_kind}) in "
            f"{jax.process_count()} process(es); {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")


def time_calls(function, args, reps):
    """Seconds per call of `function(*args)`, one per repetition (call it once before, to compile)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return times


def best_and_median(times):
    """The best time (the least disturbed by other processes on a shared machine) and the median."""
    return min(times), statistics.median(times)


def _subjaxprs(eqn):
    for value in eqn.params.values():
        if isinstance(value, jax.extend.core.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jax.extend.core.Jaxpr):
            yield value


def traced_flops(jaxpr):
    """2 x output elements x contraction length, summed over every convolution and dot_general of
    `jaxpr` and its sub-jaxprs (a loop body counts once); elementwise work is left out."""
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


def function_flops(function, *args):
    """`traced_flops` of `function(*args)` (arrays or ShapeDtypeStructs)."""
    return traced_flops(jax.make_jaxpr(function)(*args).jaxpr)


def peak_gflops(size=2048, reps=10):
    """GFLOP/s of float32 size x size matmuls, one per device, run at once over every device."""
    devices = jax.device_count()
    sharding = NamedSharding(parallel.batch_mesh(), P(parallel.BATCH))
    rng = np.random.default_rng(0)
    a = jax.device_put(rng.standard_normal((devices, size, size), np.float32), sharding)
    b = jax.device_put(rng.standard_normal((devices, size, size), np.float32), sharding)
    matmul = jax.jit(lambda a, b: jnp.einsum("dij,djk->dik", a, b)).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    return 2 * devices * size ** 3 / min(time_calls(matmul, (a, b), reps)) / 1e9


def rate_line(name, samples, times, flops_per_sample, peak, unit="samples"):
    """One printed row: rate (best; median), GFLOP per sample, achieved GFLOP/s and fraction of `peak`."""
    best, median = best_and_median(times)
    achieved = flops_per_sample * samples / best / 1e9
    return (f"  {name:<26} {samples / best:9.2f} {unit}/s (median {samples / median:8.2f})  "
            f"{flops_per_sample / 1e9:8.3f} GFLOP/{unit[:-1]}  {achieved:7.1f} GFLOP/s = "
            f"{achieved / peak:5.2f} of peak")
