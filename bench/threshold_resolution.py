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

from jaxdissect import bins as bins_module
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


def batches(maps, size=16):
    for start in range(0, len(maps), size):
        yield jnp.asarray(maps[start:start + size]), jnp.arange(start, min(start + size, len(maps)), dtype=jnp.int32)


def placed_bins(maps, seg_size, bins, lo, hi, calibration_samples):
    """The dissection's bin table, placed from the first calibration samples as its calibration does."""
    cells = jnp.zeros((maps.shape[-1], bins_module.CELLS), jnp.int32)
    for chunk, index in batches(maps[:calibration_samples]):
        cells = stats.cell_update(cells, chunk, index, lo, hi, (seg_size, seg_size))
    return bins_module.tail_cell_bins(np.asarray(cells), bins)


def histogram(maps, seg_size, bins, placed, calibration_samples):
    """The dissection's marginal histogram of the upsampled maps (its own binning code, equal-width
    bins over [min, max] or `placed` ones) and its JointStats."""
    ranges = stats.range_init(maps.shape[-1], 1)
    for chunk, index in batches(maps[:calibration_samples]):
        ranges = stats.range_update(ranges, chunk, index)
    cell_bin = placed_bins(maps, seg_size, bins, ranges.minimum, ranges.maximum, calibration_samples) if placed \
        else None
    joint = stats.joint_init(ranges.minimum, ranges.maximum, 1, bins, cell_bin=cell_bin)
    for chunk, index in batches(maps):
        joint = stats.joint_update(joint, chunk, jnp.zeros((len(chunk), 1, seg_size, seg_size), jnp.int32), index,
                                   jnp.zeros(1, jnp.int32))
    return jax.tree.map(np.asarray, joint)


def unit_figures(maps, seg_size, joint, fractions):
    """Per unit: the share of the exact distinct levels kept as distinct edges, and the max relative
    error of the tail fraction above the chosen edges against the one above the exact levels."""
    rows, cols = bilinear_matrix(maps.shape[1], seg_size), bilinear_matrix(maps.shape[2], seg_size)
    tail = measures.suffix_counts(joint.marginal)
    total = int(tail[0, 0])
    chosen = measures.nearest_tail_bin(tail, total, fractions)                       # (U, L)
    edges = np.take_along_axis(measures.threshold_values(joint), chosen, axis=1)
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
    parser.add_argument("--calibration_samples", type=int, default=512,
                        help="samples that fix the range and place the bins (the dissection's default)")
    args = parser.parse_args()
    if args.keys:
        generator, params = seeded_progan(args.keys)
    else:
        from jaxdissect.models.load import load_generator
        generator, params = load_generator(args.generator)
    maps = featuremaps(generator, params, args.layer, args.samples)
    fractions = measures.iqr_levels(100, 1e-3)
    print(f"{args.layer}: {maps.shape[-1]} units, {args.samples} samples upsampled to {args.seg_size}x"
          f"{args.seg_size}, {args.bins} bins, range (and placement) from the first "
          f"{min(args.calibration_samples, args.samples)}")
    for placed in (False, True):
        joint = histogram(maps, args.seg_size, args.bins, placed, args.calibration_samples)
        kept, worst = unit_figures(maps, args.seg_size, joint, fractions)
        print(f"{'placed (the dissection)' if placed else 'equal-width over [min, max]'}:")
        print(f"  share of the exact distinct levels kept: min {kept.min():.2f}, median {np.median(kept):.2f}; "
              f"units losing > 10% of their levels: {(kept < 0.9).sum()}")
        print(f"  max relative tail-fraction error per unit: median {np.median(worst):.3f}, "
              f"95th percentile {np.percentile(worst, 95):.3f}, max {worst.max():.3f}; "
              f"units past 5%: {(worst > 0.05).sum()}")


if __name__ == "__main__":
    main()
