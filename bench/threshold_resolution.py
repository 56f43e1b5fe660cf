"""How finely the dissection's histograms resolve the iqr rule's candidate thresholds, per unit.

    python bench/threshold_resolution.py --keys=PATH/keys.json [--samples=200] [--seg_size=64] [--bins=256]
    python bench/threshold_resolution.py --generator=weights/toy/generator --layer=layer4 --seg_size=32

The iqr rule searches 100 levels of each unit's upsampled activation, at
upper-tail fractions logspaced 1e-3..1. The histograms only count at bin
edges, so each level becomes the edge nearest its fraction. Against the
exact levels (float64 quantiles of the upsampled maps, as the original
estimates them), this prints over the units of the layer: how many distinct
candidate thresholds the histogram keeps of the exact ones (a unit losing
more than 10% loses resolution), and the relative error of the tail
fraction above each chosen edge against the tail fraction above the exact
level. The generator is either a converted model folder or the
seeded full-size ProGAN rebuilt from a fixture's keys.json recipe (one
PCG64 stream of float32 normal draws in key order; `normal_times_0.1` for
biases).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import parallel, stats
from jaxdissect.dissection import measures
from jaxdissect.segmentation.resample import bilinear_matrix


def seeded_progan(keys_path):
    from jaxdissect.models.proggan import ProGAN, params_from_state_dict
    from jaxdissect.models.proggan_convert import infer_sizes
    with open(keys_path) as f:
        keys = json.load(f)
    rng = np.random.default_rng(keys["seed"])
    weights = {}
    for key, shape, rule in keys["params"]:
        draw = rng.standard_normal(tuple(shape), dtype=np.float32)
        weights[key] = {"normal": draw, "normal_times_0.1": draw * np.float32(0.1)}[rule]
    model = ProGAN(tuple(infer_sizes(weights)))
    return model, params_from_state_dict(weights, model.sizes)


def featuremaps(generator, params, layer, samples, batch_size=16):
    h = jax.jit(lambda z: generator.h(params, z, (layer,))[layer])
    return np.concatenate([np.asarray(h(parallel.latents(1, start, min(start + batch_size, samples),
                                                         generator.latent_size)), np.float32)
                           for start in range(0, samples, batch_size)])


def histogram(maps, seg_size, bins):
    """The dissection's marginal histogram of the upsampled maps (its own binning code), and lo, hi."""
    ranges = stats.range_update(stats.range_init(maps.shape[-1], 1), jnp.asarray(maps),
                                jnp.arange(len(maps), dtype=jnp.int32))
    joint = stats.joint_init(ranges.minimum, ranges.maximum, 1, bins)
    labels = jnp.zeros((len(maps), 1, seg_size, seg_size), jnp.int32)
    for start in range(0, len(maps), 16):
        chunk = jnp.asarray(maps[start:start + 16])
        joint = stats.joint_update(joint, chunk, labels[start:start + 16],
                                   jnp.arange(start, start + len(chunk), dtype=jnp.int32), jnp.zeros(1, jnp.int32))
    return np.asarray(joint.marginal), np.asarray(joint.lo), np.asarray(joint.hi)


def unit_figures(maps, seg_size, marginal, lo, hi, fractions):
    """Per unit: the share of the exact distinct levels kept as distinct edges, and the max relative
    error of the tail fraction above the chosen edges against the one above the exact levels."""
    rows, cols = bilinear_matrix(maps.shape[1], seg_size), bilinear_matrix(maps.shape[2], seg_size)
    tail = measures.suffix_counts(marginal)
    total = int(tail[0, 0])
    chosen = measures.nearest_tail_bin(tail, total, fractions)                       # (U, L)
    edges = np.take_along_axis(measures.threshold_values(lo, hi, marginal.shape[1]), chosen, axis=1)
    kept, worst = [], []
    for u in range(maps.shape[-1]):
        up = np.einsum("ih,nhw,jw->nij", rows, maps[..., u].astype(np.float64), cols).ravel()
        ordered = np.sort(up)
        tail_above = lambda levels: 1.0 - np.searchsorted(ordered, levels, side="left") / len(ordered)
        exact = np.quantile(ordered, 1.0 - fractions)
        kept.append(len(np.unique(chosen[u])) / len(np.unique(exact)))
        worst.append(np.max(np.abs(tail_above(edges[u]) / tail_above(exact) - 1.0)))
    return np.array(kept), np.array(worst)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", help="a seeded ProGAN recipe (keys.json)")
    parser.add_argument("--generator", help="or a converted generator folder")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seg_size", type=int, default=64, help="the segmentation's side (upsampled size)")
    parser.add_argument("--bins", type=int, default=256)
    args = parser.parse_args()
    if args.keys:
        generator, params = seeded_progan(args.keys)
    else:
        from jaxdissect.models.load import load_generator
        generator, params = load_generator(args.generator)
    maps = featuremaps(generator, params, args.layer, args.samples)
    marginal, lo, hi = histogram(maps, args.seg_size, args.bins)
    fractions = measures.iqr_levels(100, 1e-3)
    kept, worst = unit_figures(maps, args.seg_size, marginal, lo, hi, fractions)
    print(f"{args.layer}: {maps.shape[-1]} units, {args.samples} samples upsampled to {args.seg_size}x"
          f"{args.seg_size}, {args.bins} bins")
    print(f"share of the exact distinct levels kept: min {kept.min():.2f}, median {np.median(kept):.2f}; "
          f"units losing > 10% of their levels: {(kept < 0.9).sum()}")
    print(f"max relative tail-fraction error per unit: median {np.median(worst):.3f}, "
          f"95th percentile {np.percentile(worst, 95):.3f}, max {worst.max():.3f}; "
          f"units past 5%: {(worst > 0.05).sum()}")


if __name__ == "__main__":
    main()
