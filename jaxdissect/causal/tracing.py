"""Tracing an insertion through later layers (the paper's figure 9).

An insertion at one position of `layer` changes every later featuremap. For
a later layer L with channels v, the change caused by one insertion is

    effect_L = mean over channels v of ( mean over positions |r'_L,v - r_L,v| ) / norm_L,v
    norm_L,v = mean |r_L,v| over the unedited samples and positions (its L1 magnitude)

so each channel's change is measured in units of its own typical size
(channels with norm 0 are left out). The insertions come from
`jaxdissect.causal.context.insertion_sweep(..., capture=later layers)` and
are split into those with a visible effect (the class's pixels grow by more
than a threshold share of the image) and the others.
"""
import numpy as np


def later_layers(generator, layer):
    """The names of every layer after `layer`, output included."""
    names = generator.layer_names
    return tuple(names[names.index(layer) + 1:])


def channel_norms(activation):
    """{layer: (U_L,)} mean |activation| per channel from per-sample means {layer: (N, U_L)}."""
    return {name: np.mean(a, axis=0) for name, a in activation.items()}


def normalised_effects(changes, activation):
    """{layer: (N, H, W)} the effect of each insertion on each later layer (see module doc)."""
    effects = {}
    for name, change in changes.items():
        norm = channel_norms(activation)[name]
        live = norm > 0
        effects[name] = np.mean(change[..., live] / norm[live], axis=-1)
    return effects


def visible(pixels_added, image_pixels, visible_fraction):
    """(N, H, W) bool: insertions that added more than `visible_fraction` of the image's pixels to the class."""
    return np.asarray(pixels_added) > visible_fraction * image_pixels


def trace_summary(effects, pixels_added, image_pixels, visible_fraction):
    """Per later layer, the mean of `normalised_effects` over all insertions and over the visible and
    invisible ones.

    Returns {'layers', 'all', 'visible', 'invisible' (lists aligned with
    'layers'; None where a group is empty), 'insertions': {'visible', 'invisible'}}.
    """
    shown = visible(pixels_added, image_pixels, visible_fraction)
    mean = lambda e, where: float(e[where].mean()) if where.any() else None
    layers = list(effects)
    return {"layers": layers,
            "all": [float(effects[name].mean()) for name in layers],
            "visible": [mean(effects[name], shown) for name in layers],
            "invisible": [mean(effects[name], ~shown) for name in layers],
            "insertions": {"visible": int(shown.sum()), "invisible": int((~shown).sum())}}
