"""The toy generator against its world, measured with the toy segmenter (issue bars printed beside).

    python bench/toy_generator_metrics.py [--generator=weights/toy/generator]
        [--segmenter=weights/toy/segmenter] [--n=2000]

Bars: every class with >= 1% of the pixels in renders has a generated share
within 25% (relative) of its render share; >= 90% of generated door pixels
sit on a wall (their nearest non-door pixel above is building); the Fréchet
distance generated-vs-renders is printed beside renders-vs-renders; loading
the generator from disk and generating 64 images takes under 2 s once
compiled (timed after a first, compiling round in the same process).
"""
import argparse
import time

import jax

from jaxdissect import parallel
from jaxdissect.models.load import load_generator
from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.toyworld.fidelity import generator_fidelity


def load_and_generate_seconds(path, count=64):
    """Seconds to read the generator at `path` and generate `count` images (the second of two rounds,
    so that compilation is excluded)."""
    for _ in range(2):
        started = time.perf_counter()
        generator, g_params = load_generator(path)
        jax.block_until_ready(generator(g_params, parallel.latents(0, 0, count, generator.latent_size)))
        seconds = time.perf_counter() - started
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="weights/toy/generator")
    parser.add_argument("--segmenter", default="weights/toy/segmenter")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()
    seconds = load_and_generate_seconds(args.generator)
    print(f"load {args.generator} and generate 64 images: {seconds:.2f} s after compilation (bar < 2 s)")
    generator, g_params = load_generator(args.generator)
    segmenter, s_params = Segmenter.from_model_folder(args.segmenter)
    started = time.time()
    result = generator_fidelity(generator, g_params, segmenter, s_params, args.n, args.batch_size)
    print(f"{args.generator} vs the toy world, {args.n} samples each ({time.time() - started:.0f} s)")
    print(f"  {'class':10s} {'generated':>10s} {'world':>10s} {'rel.diff':>9s}")
    shares_ok = True
    for name, c in result["classes"].items():
        checked = c["world_share"] >= 0.01
        ok = c["relative_difference"] <= 0.25
        shares_ok &= ok or not checked
        mark = ("ok" if ok else "OFF") if checked else "(< 1%)"
        print(f"  {name:10s} {c['generated_share']:10.4f} {c['world_share']:10.4f} "
              f"{c['relative_difference']:9.3f} {mark}")
    print(f"class shares within 25%: {'yes' if shares_ok else 'no'}")
    print(f"Fréchet distance generated vs renders: {result['frechet_generated_vs_world']:.3f}; "
          f"renders vs renders: {result['frechet_world_vs_world']:.3f}")
    print(f"door pixels on a wall: generated {result['door_context_generated']:.3f} "
          f"(bar 0.90), renders {result['door_context_world']:.3f}")


if __name__ == "__main__":
    main()
