"""The concepts a person can paint: a named set of units of one layer and the value each is set to.

Painting a concept on switches its units to their values inside the brush
mask (insertion); painting it off sets them to zero there (ablation).

A dissection folder provides them in two ways (and `--concepts` adds
ace.json files from elsewhere, such as the toy world's shipped ones):
- `ace/CLASS/ace.json` (written by --mode=ace): the class's causal units, as
  found by the alpha search, with their insertion values. Preferred.
- otherwise, for each class that labels at least one interpretable unit of
  the paint layer: its top units by IoU, valued at their mean activation on
  the class's pixels (the design's `k`).
"""
import dataclasses
import glob
import math
import os

from jaxdissect.causal.concept import read_ace
from jaxdissect.dissection.results import Dissection
from jaxdissect.errors import UserError


@dataclasses.dataclass(frozen=True)
class Concept:
    name: str
    layer: str
    units: tuple      # unit indices
    values: tuple     # per unit, the value painting the concept on sets it to
    origin: str       # "ace" (causal units) or "dissection" (top units by IoU)
    source: str       # the file it was read from, for messages


def load_concepts(outdir, layer=None, n_units=20, ace_files=()):
    """Concepts of a finished dissection, sorted by name; ACE results win over the IoU fallback, and
    the ace.json files in `ace_files` (e.g. weights/toy/concepts/*/ace.json) over the dissection's.

    `layer` is the fallback's layer (default: the first dissected layer) and
    `n_units` how many of its top units by IoU make a concept.
    """
    dissection = Dissection(outdir)
    concepts = {c.name: c for c in [*ace_concepts(outdir), *map(read_ace_concept, ace_files)]}
    for concept in dissection_concepts(dissection, layer or dissection.layers[0], n_units):
        concepts.setdefault(concept.name, concept)
    if not concepts:
        raise UserError(f"{outdir}: no concepts to paint: no ace/*/ace.json and no interpretable units "
                        f"in layer {layer or dissection.layers[0]!r} (try another --paint_layer)")
    return [concepts[name] for name in sorted(concepts)]


def ace_concepts(outdir):
    """One concept per `ace/*/ace.json`: its causal units with their insertion values."""
    return [read_ace_concept(path) for path in sorted(glob.glob(os.path.join(outdir, "ace", "*", "ace.json")))]


def read_ace_concept(path):
    """A Concept from one ace.json (format: jaxdissect.causal.concept): its causal units and their values."""
    record = read_ace(path)
    units = tuple(int(u) for u in record["causal_units"])
    values = tuple(float(record["value"][u]) for u in units)
    return checked(Concept(str(record["class"]), str(record["layer"]), units, values, "ace", path))


def dissection_concepts(dissection, layer, n_units):
    """Top `n_units` units of `layer` by IoU for each class labelling an interpretable unit there."""
    units = dissection.units(layer)
    classes = sorted({u["label"] for u in units if u["interpretable"]}, key=dissection.class_index)
    mean_activation = dissection.mean_activation(layer)
    source = os.path.join(dissection.outdir, "stats", f"{layer}.npz")
    concepts = []
    for name in classes:
        top = [int(u) for u in dissection.units_for(name, layer)[:n_units]]
        values = [float(mean_activation[u, dissection.class_index(name)]) for u in top]
        concepts.append(checked(Concept(name, layer, tuple(top), tuple(values), "dissection", source)))
    return concepts


def checked(concept):
    """The concept, if its unit list is non-empty and duplicate-free and its values are finite."""
    problem = None
    if not concept.units:
        problem = "has no units"
    elif len(set(concept.units)) != len(concept.units) or min(concept.units) < 0:
        problem = f"has repeated or negative unit indices {list(concept.units)}"
    elif not all(math.isfinite(v) for v in concept.values):
        problem = "has a non-finite value"
    if problem:
        raise UserError(f"{concept.source}: concept {concept.name!r} {problem}")
    return concept


def check_against(generator, concepts):
    """UserError naming the source if a concept's layer or units do not exist in `generator`."""
    for c in concepts:
        if c.layer not in generator.layer_names:
            raise UserError(f"{c.source}: concept {c.name!r} is on layer {c.layer!r}, which the generator "
                            f"does not have; its layers: {', '.join(generator.layer_names)}")
        width = generator.featuremap_shape(c.layer)[2]
        if max(c.units) >= width:
            raise UserError(f"{c.source}: concept {c.name!r} uses unit {max(c.units)} but {c.layer} has "
                            f"{width} units")
