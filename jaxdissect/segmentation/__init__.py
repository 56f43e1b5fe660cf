"""Semantic segmenters: the UPerNet networks and the Segmenter that merges
their heads into one label space.

- `upernet`, `resnet`, `resample`: the networks (unified parsing "upp" and
  ADE20K), as pure functions of (config, params, input).
- `labels`: label spaces (class numbers, names, categories), plain Python.
- `segmenter`: `Segmenter` (import it from there): images in [-1, 1] to
  class maps and differentiable class scores.
"""
