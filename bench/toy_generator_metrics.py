"""The toy generator against its world, measured with the toy segmenter (issue bars printed beside).

    python bench/toy_generator_metrics.py [--generator=weights/toy/generator]
        [--segmenter=weights/toy/segmenter] [--n=2000]

Bars: every class with >= 1% of the pixels in renders has a generated share
within 25% (relative) of its render share; >= 90% of generated door pixels
sit on a wall (their nearest non-door pixel above is building); the Fréchet
distance generated-vs-renders is printed beside renders-vs-renders.
"""
import argparse
import time

from jaxdissect.models.load import load_generator
from jaxdissect.segmentation.segmenter import Segmenter
from jaxdissect.toyworld.fidelity import generator_fidelity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="weights/toy/generator")
    parser.add_argument("--segmenter", default="weights/toy/segmenter")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=100)
    args = parser.parse_args()
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
