"""Dissection speed and memory, measured side by side in one run.

    python bench/bench_dissect.py [--generator=weights/toy/generator] [--segmenter=weights/toy/segmenter]
        [--layers=layer4,layer6] [--samples=2000] [--batch_size=64] [--downsample=2]
        [--memory_samples=1000,10000 (empty: none)] [--rounds=2] [--checkpoint_minutes=2]

Prints samples/s of the generator+segmenter forward alone (the latents,
generator and segmenter calls the dissection makes, nothing else), samples/s
of the full dissection (calibration + statistics + checkpoints, no report),
each round's rates and ratio (a forward run, then a dissection), the best
rate of each over --rounds alternated rounds and their ratio, and the
median of the rounds' ratios (the target is >= 0.85: statistics cost at
most 15% on top of the models), then the peak
resident memory of whole dissections at each of --memory_samples (each in
its own process; flat is the target).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from jaxdissect import parallel
from jaxdissect.dissection import engine, sources
from jaxdissect.models.load import load_generator
from jaxdissect.segmentation.segmenter import Segmenter


def forward_rate(source, samples, batch_size):
    """Samples/s of the source's forward (latents, generator, segmenter: the dissection's own program)."""
    jax.block_until_ready(source.labelled_featuremaps(0, parallel.global_indices(0, batch_size, samples)))
    started = time.time()
    for start in range(0, samples, batch_size):
        out = source.labelled_featuremaps(start, parallel.global_indices(start, batch_size, samples))
    jax.block_until_ready(out)
    return -(-samples // batch_size) * batch_size / (time.time() - started)


def dissect_rate(source, settings):
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as outdir:
        small = engine.DissectSettings(**{**settings.__dict__, "samples": 2 * settings.batch_size,
                                          "calibration_samples": settings.batch_size})
        engine.collect_statistics(source, small, warm)  # compile
        started = time.time()
        engine.collect_statistics(source, settings, outdir)
        return settings.samples / (time.time() - started)


def peak_memory_mb(args, samples):
    """Peak RSS (MB) of a whole dissection of `samples` samples in a fresh process."""
    with tempfile.TemporaryDirectory() as outdir:
        command = [sys.executable, os.path.abspath(__file__), "--child", f"--generator={args.generator}",
                   f"--segmenter={args.segmenter}", f"--layers={args.layers}", f"--samples={samples}",
                   f"--batch_size={args.batch_size}", f"--downsample={args.downsample}", f"--outdir={outdir}",
                   f"--checkpoint_minutes={args.checkpoint_minutes}"]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="weights/toy/generator")
    parser.add_argument("--segmenter", default="weights/toy/segmenter")
    parser.add_argument("--layers", default="layer4,layer6")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--downsample", type=int, default=2)
    parser.add_argument("--memory_samples", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=2, help="forward and dissection runs, alternated; "
                        "the best rate of each is printed")
    parser.add_argument("--checkpoint_minutes", type=float, default=engine.DissectSettings.checkpoint_minutes,
                        help="the dissection's least minutes between checkpoints (0: every 20 batches, as the "
                        "code before this setting did)")
    parser.add_argument("--outdir")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    generator, g_params = load_generator(args.generator)
    segmenter, s_params = Segmenter.from_model_folder(args.segmenter)
    layers = tuple(args.layers.split(","))
    settings = engine.DissectSettings(layers=layers, samples=args.samples, batch_size=args.batch_size,
                                      downsample=args.downsample, checkpoint_minutes=args.checkpoint_minutes)
    source = sources.GeneratedSamples(generator, g_params, segmenter, s_params, layers, args.downsample,
                                      settings.seed)
    if args.child:
        engine.collect_statistics(source, settings, args.outdir)
        print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; layers {args.layers}; "
          f"batch {args.batch_size}; downsample {args.downsample}")
    forwards, fulls = [], []
    for i in range(args.rounds):   # alternated: a shared machine's slow spells hit both alike
        forwards.append(forward_rate(source, args.samples, args.batch_size))
        fulls.append(dissect_rate(source, settings))
        print(f"round {i + 1}: forward {forwards[-1]:7.1f}, dissection {fulls[-1]:7.1f} samples/s, "
              f"ratio {fulls[-1] / forwards[-1]:.3f}", flush=True)
    forward, full = max(forwards), max(fulls)
    print(f"generator+segmenter forward alone: {forward:8.1f} samples/s (best of {args.rounds})")
    print(f"full dissection ({args.samples} samples): {full:8.1f} samples/s (best of {args.rounds})")
    print(f"ratio dissection / forward: {full / forward:.3f} of the bests, "
          f"{np.median(np.asarray(fulls) / np.asarray(forwards)):.3f} the median round  (target >= 0.85)")
    for n in (int(s) for s in args.memory_samples.split(",") if s):
        print(f"peak memory, {n:6d} samples: {peak_memory_mb(args, n):8.0f} MB")


if __name__ == "__main__":
    main()
