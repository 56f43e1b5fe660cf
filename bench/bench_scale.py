"""Throughput of every stage, for the toy and the full-size configuration, on this machine's devices.

    python bench/bench_scale.py [--configs=toy,full] [--reps=3]
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/bench_scale.py   # 8 simulated CPU devices

Configurations:
- toy: the shipped weights/toy generator (64x64) and segmenter (or, where they
  are missing, seeded models of the same shapes); layers layer4,layer6,
  segmentation at 32x32 (downsample 2), as configs/toy.cfg.
- full: a seeded 256x256 ProGAN of the released LSUN widths and a seeded
  unified-parsing UPerNet ResNet-50 (336 objects, 26 materials, 5 part
  heads), segmenting at 128x128 (downsample 2), layer4, as configs/church.cfg.
  Speed does not depend on the weights' values.

Stages, each batch sharded over every device and timed after compilation:
generator (z to image), segmenter (image to class maps, preprocessing and
merge included), generator+segmenter (what the dissection runs per batch),
the full dissection (`engine.collect_statistics`: calibration, statistics,
no checkpoints or report) and one alpha-search step (forward and backward
through generator and segmenter for the ablated and the inserted images,
Adam update).

For each: samples/s (best of --reps timed calls, median beside; for the
dissection one timed run), GFLOP per sample counted from the traced program
(2 x output elements x contraction length over every convolution and
matmul, backward passes included; elementwise work and the statistics'
counting are left out), and the achieved GFLOP/s as a fraction of the peak
measured in the same run: float32 2048x2048 matmuls, one per device, all
devices at once.
"""
import argparse
import dataclasses
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from bench_ace import search_step
from measure import function_flops, machine_line, peak_gflops, rate_line, time_calls
from jaxdissect import parallel
from jaxdissect.dissection import engine, sources
from jaxdissect.models.load import load_generator
from jaxdissect.models.proggan import ProGAN
from jaxdissect.segmentation import upernet
from jaxdissect.segmentation.segmenter import Segmenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from tiny_models import numpy_params  # noqa: E402  (seeded weights without compiling jax.random)

KARRAS_LSUN_256 = (512, 512, 512, 512, 512, 256, 128, 64)
TOY_SIZES = (128, 128, 128, 32, 16, 8)
UPP_PART_SIZES = (2, 24, 15, 13, 11)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    layers: tuple
    batch_size: int            # generator, segmenter and dissection batches
    ace_batch_size: int
    downsample: int
    dissect_samples: int


def upp_resnet50_segmenter():
    """A seeded unified-parsing UPerNet ResNet-50 with placeholder class names (the real vocabulary's sizes)."""
    owners = ["sky", "building", "person", "owner4", "owner5"]
    objects = ["-"] + owners + [f"object{i}" for i in range(len(owners) + 1, 336)]
    labels = {"object": objects, "material": ["-"] + [f"material{i}" for i in range(1, 26)],
              "object_part": {o: [f"{o}-part{j}" for j in range(n)] for o, n in zip(owners, UPP_PART_SIZES)}}
    config = upernet.UPerNetConfig("upp", n_object=336, n_material=26, n_scene=365, part_sizes=UPP_PART_SIZES)
    params = upernet.init_params(config, jax.random.key(0))
    return Segmenter.create(config, labels), jax.tree.map(jnp.asarray, params)


def models(config_name):
    """(generator, g_params, segmenter, s_params, where the weights come from)."""
    if config_name == "full":
        generator = ProGAN(KARRAS_LSUN_256)
        segmenter, s_params = upp_resnet50_segmenter()
        return generator, numpy_params(generator.init), segmenter, s_params, "seeded"
    path = os.path.join(ROOT, "weights", "toy", "generator")
    if os.path.isdir(path):
        generator, g_params = load_generator(path)
        source = "weights/toy"
    else:
        generator = ProGAN(TOY_SIZES)
        g_params, source = numpy_params(generator.init), "seeded generator, weights/toy segmenter"
    segmenter, s_params = Segmenter.from_model_folder(os.path.join(ROOT, "weights", "toy", "segmenter"))
    return generator, g_params, segmenter, s_params, source


def device_multiple(n):
    """n rounded up to a multiple of the device count."""
    m = parallel.batch_multiple()
    return -(-n // m) * m


def bench_config(config, reps, peak):
    generator, g_params, segmenter, s_params, source = models(config.name)
    batch, layers = device_multiple(config.batch_size), config.layers
    print(f"\n{config.name}: {generator.resolution}x{generator.resolution} ProGAN {list(generator.sizes)}, "
          f"UPerNet {segmenter.config.variant} depths {list(segmenter.config.depths)} ({source}); "
          f"batch {batch}, layers {','.join(layers)}, downsample {config.downsample}")
    z = parallel.global_latents(0, 0, batch, generator.latent_size)
    generate = jax.jit(lambda p, z: generator(p, z)[0])
    segment = jax.jit(lambda p, x: segmenter.segment(p, x, config.downsample))

    def forward(gp, sp, z):
        images, maps = generator(gp, z, capture=layers)
        return segmenter.segment(sp, images, config.downsample), maps
    forward = jax.jit(forward)
    images = generate(g_params, z)
    stages = [("generator", generate, (g_params, z)), ("segmenter", segment, (s_params, images)),
              ("generator+segmenter", forward, (g_params, s_params, z))]
    flops = {}
    for name, fn, args in stages:
        started = time.perf_counter()
        jax.block_until_ready(fn(*args))
        compile_s = time.perf_counter() - started
        flops[name] = function_flops(fn, *args) / batch
        print(rate_line(name, batch, time_calls(fn, args, reps), flops[name], peak) +
              f"  (first call {compile_s:.1f} s)", flush=True)
    bench_dissection(config, generator, g_params, segmenter, s_params, flops["generator+segmenter"], peak)
    bench_alpha_search(config, generator, g_params, segmenter, s_params, reps, peak)


def bench_dissection(config, generator, g_params, segmenter, s_params, flops, peak):
    batch = device_multiple(config.batch_size)
    settings = engine.DissectSettings(layers=config.layers, samples=config.dissect_samples, batch_size=batch,
                                      downsample=config.downsample, calibration_samples=batch,
                                      checkpoint_every=10 ** 9)
    source = sources.GeneratedSamples(generator, g_params, segmenter, s_params, config.layers, config.downsample,
                                      settings.seed)
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as outdir:
        small = dataclasses.replace(settings, samples=batch)
        engine.collect_statistics(source, small, warm)       # compile
        started = time.perf_counter()
        engine.collect_statistics(source, settings, outdir)
        seconds = time.perf_counter() - started
    print(rate_line(f"dissection ({config.dissect_samples} samples)", config.dissect_samples, [seconds],
                    flops, peak), flush=True)


def bench_alpha_search(config, generator, g_params, segmenter, s_params, reps, peak):
    batch = device_multiple(config.ace_batch_size)
    step, state, value, batch_at = search_step(generator, segmenter, config.layers[0], 1, batch, config.downsample)
    index = batch_at(0)
    flops = function_flops(step, state, g_params, s_params, value, index) / batch
    started = time.perf_counter()
    state, metrics = step(state, g_params, s_params, value, index)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - started

    def one_step():
        nonlocal state
        state, metrics = step(state, g_params, s_params, value, index)
        return metrics
    times = time_calls(one_step, (), reps)
    print(rate_line(f"alpha-search step (batch {batch})", batch, times, flops, peak) +
          f"  = {1 / min(times):.2f} steps/s  (first call {compile_s:.1f} s)", flush=True)


CONFIGS = {"toy": Config("toy", ("layer4", "layer6"), 64, 16, 2, 1024),
           "full": Config("full", ("layer4",), 8, 2, 2, 16)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="toy,full", help="comma-separated: toy, full")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--toy_dissect_samples", type=int, default=CONFIGS["toy"].dissect_samples)
    parser.add_argument("--full_dissect_samples", type=int, default=CONFIGS["full"].dissect_samples)
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown configuration {unknown[0]!r}; use toy and/or full")
    print(machine_line())
    peak = peak_gflops()
    print(f"peak: float32 2048x2048 matmul on every device at once: {peak:.1f} GFLOP/s")
    for name in names:
        samples = getattr(args, f"{name}_dissect_samples")
        bench_config(dataclasses.replace(CONFIGS[name], dissect_samples=samples), args.reps, peak)


if __name__ == "__main__":
    main()
