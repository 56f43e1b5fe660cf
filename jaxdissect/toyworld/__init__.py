"""The toy world: procedural outdoor scenes with exact labels, the training data of the shipped toy models."""
from jaxdissect.toyworld.world import CATEGORIES, CLASS_NAMES, draw_layouts, label_meta, render, sample_layouts

__all__ = ["CATEGORIES", "CLASS_NAMES", "draw_layouts", "label_meta", "render", "sample_layouts"]
