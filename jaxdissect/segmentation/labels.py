"""Label spaces of the segmenters: class numbers, names and categories.

A segmentation is an int map whose values are class numbers of one shared
label space; class 0 is always '-' ("no prediction"). This module builds
those label spaces from a segmenter's label metadata. It is plain Python (no
JAX): the tables it builds are static data for the merging code in
`jaxdissect.segmentation.segmenter`.

Two kinds:

- `UppLabelSpace`: the unified-parsing segmenter ("upp"), whose object,
  material and part heads are merged into one numbering the way GAN
  Dissection's wrapper does it (see `upp_label_space`).
- `FlatLabelSpace`: a single-head segmenter (ADE20K, the toy world's), whose
  classes are numbered as they are, after a '-' class when the model has none.
"""
import dataclasses
from typing import Optional, Sequence, Tuple

from jaxdissect.errors import UserError

NO_LABEL = "-"
SEGDIVS = ("undivided", "quad")
# The owners whose parts the upp wrapper uses, in the order of its channel 2 logic.
PART_OWNERS = ("sky", "building", "person")
# Quad division suffixes; object `o` divided by suffix k (1-based) is o + k * (n_object - 1).
QUAD_SUFFIXES = ("t", "l", "b", "r")
UPP_CATEGORIES = ("object", "part", "material")

Label = Tuple[str, str]  # (name, category)


@dataclasses.dataclass(frozen=True)
class UppLabelSpace:
    """The upp wrapper's numbering of objects, divided objects, materials and parts.

    Class numbers: 0 = '-'; objects 1..n_object-1; with quad, object `o`'s
    quarter k (t, l, b, r for k = 1..4) is `o + k*(n_object-1)`; then
    material m (1..n_material-1) is `m + material_offset`; then the part names.

    Attributes:
      n_object, n_material: head sizes, '-' included.
      divmult: 1 for segdiv 'undivided', 5 for 'quad'.
      owner_objects: the object numbers of PART_OWNERS.
      owner_slots: where each of PART_OWNERS sits in the decoder's part list
        (all owners, sorted by object number).
      decoder_part_sizes: the length of each owner's part list, in that order.
      part_index: per owner, the class number of each of its part channels.
      labels: (name, category) per class number.
    """
    n_object: int
    n_material: int
    divmult: int
    owner_objects: Tuple[int, ...]
    owner_slots: Tuple[int, ...]
    decoder_part_sizes: Tuple[int, ...]
    part_index: Tuple[Tuple[int, ...], ...]
    labels: Tuple[Label, ...]
    categories: Tuple[str, ...] = UPP_CATEGORIES

    @property
    def segdiv(self):
        return "quad" if self.divmult > 1 else "undivided"

    @property
    def material_offset(self):
        """Material m has class number m + material_offset."""
        return (self.n_object - 1) * self.divmult

    @property
    def num_classes(self):
        return len(self.labels)

    @property
    def num_channels(self):
        """Channels of a segmentation: object, material, part (+ top/bottom, left/right)."""
        return 5 if self.divmult > 1 else 3


@dataclasses.dataclass(frozen=True)
class FlatLabelSpace:
    """One head; model channel c is class number c + channel_shift.

    channel_shift is 1 when the model has no '-' channel (ADE20K's 150
    classes start with 'wall'), so that 0 still means "no prediction".
    """
    labels: Tuple[Label, ...]
    categories: Tuple[str, ...]
    channel_shift: int

    @property
    def num_classes(self):
        return len(self.labels)

    @property
    def num_channels(self):
        return 1


def upp_label_space(labels_json, segdiv):
    """Builds the upp numbering from labels.json (keys object, material, object_part).

    Part numbers: for each owner in PART_OWNERS order, through its part
    list, a part name that is also an object name ('-', 'door', 'window', ...)
    takes that object's number; any other name takes the next new number
    (from `material_offset + n_material`), in order of first appearance, a
    repeated name reusing its number.
    """
    if segdiv not in SEGDIVS:
        raise UserError(f"segdiv={segdiv!r}: must be one of {', '.join(SEGDIVS)}")
    for key in ("object", "material", "object_part"):
        if key not in labels_json:
            raise UserError(f"upp labels: missing key {key!r}")
    objects = list(labels_json["object"])
    materials = list(labels_json["material"])
    object_part = labels_json["object_part"]
    for owner in PART_OWNERS:
        if owner not in object_part:
            raise UserError(f"upp labels: 'object_part' has no part list for {owner!r}")
    for owner in object_part:
        if owner not in objects:
            raise UserError(f"upp labels: part owner {owner!r} is not in 'object'")
    for key, names in (("object", objects), ("material", materials)):
        if not names or names[0] != NO_LABEL:
            raise UserError(f"upp labels: {key!r} must start with {NO_LABEL!r}")

    divmult = len(QUAD_SUFFIXES) + 1 if segdiv == "quad" else 1
    object_number = {name: i for i, name in enumerate(objects)}
    first_part_number = (len(objects) - 1) * divmult + len(materials)
    part_number = {}
    part_index = []
    for owner in PART_OWNERS:
        numbers = []
        for name in object_part[owner]:
            if name in object_number:
                numbers.append(object_number[name])
            else:
                numbers.append(part_number.setdefault(name, first_part_number + len(part_number)))
        part_index.append(tuple(numbers))

    owners_sorted = sorted(object_part, key=object_number.get)
    return UppLabelSpace(
        n_object=len(objects),
        n_material=len(materials),
        divmult=divmult,
        owner_objects=tuple(object_number[owner] for owner in PART_OWNERS),
        owner_slots=tuple(owners_sorted.index(owner) for owner in PART_OWNERS),
        decoder_part_sizes=tuple(len(object_part[owner]) for owner in owners_sorted),
        part_index=tuple(part_index),
        labels=tuple(_upp_labels(objects, materials, list(part_number), divmult > 1)))


def _upp_labels(objects, materials, part_names, quad):
    labels = [(name, "object") for name in objects]
    if quad:
        labels += [(f"{name}-{suffix}", "part") for suffix in QUAD_SUFFIXES for name in objects[1:]]
    labels += [(name, "material") for name in materials[1:]]
    labels += [(name, "part") for name in part_names]
    return labels


def flat_label_space(names: Sequence[str], categories: Optional[Sequence[str]] = None):
    """Label space of a single-head segmenter with class `names` (one per channel).

    `categories` gives each class's category (default 'object'). When
    names[0] is not '-', a '-' class is put in front and every channel moves
    up by one; it takes the category of the first class.
    """
    names = [str(n) for n in names]
    categories = ["object"] * len(names) if categories is None else [str(c) for c in categories]
    if not names:
        raise UserError("segmenter labels: the list of class names is empty")
    if len(categories) != len(names):
        raise UserError(f"segmenter labels: {len(names)} names but {len(categories)} categories")
    shift = 0 if names[0] == NO_LABEL else 1
    if shift:
        names, categories = [NO_LABEL] + names, categories[:1] + categories
    labels = tuple(zip(names, categories))
    return FlatLabelSpace(labels=labels, categories=tuple(dict.fromkeys(categories)),
                          channel_shift=shift)


def flat_label_space_from_meta(labels_meta):
    """`flat_label_space` from a model's meta["labels"]: a list of names, or
    {"names": [...], "categories": [...]}."""
    if isinstance(labels_meta, dict):
        if "names" not in labels_meta:
            raise UserError("segmenter labels: missing key 'names'")
        return flat_label_space(labels_meta["names"], labels_meta.get("categories"))
    return flat_label_space(labels_meta)
