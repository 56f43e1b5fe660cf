"""The Segmenter: images in, class maps and differentiable class scores out.

`Segmenter` wraps a UPerNet (`jaxdissect.segmentation.upernet`) the way GAN
Dissection's segmenter wrappers do:

    segment(params, images)  = merge(vote(infer(preprocess(images))))

- `preprocess`: images NHWC in [-1, 1] to the model's input (upp: pixel units,
  BGR, mean subtracted, no std; single-head models: ImageNet-normalised RGB).
- the multi-scale vote (`probabilities`): the input is area-averaged to each
  of `segsizes`, the model runs with the output size `image size //
  downsample`, and the probabilities are summed over scales.
- the merge (`merge_upp_segmentation`, `merge_flat_segmentation`): turns the
  probability dict into int class maps of one shared label space
  (`jaxdissect.segmentation.labels`).

The merges and class scores are functions of the probability dict alone, so
they can be checked without the network. Everything is jnp with static
shapes and per-sample work, so `segment` and `class_score` jit once per
batch shape and `class_score` is differentiable with respect to the images.

Sharding the batch across devices: under a mesh whose batch axis is Auto,
jit them with batch-sharded images; under an Explicit axis (the default of
`jax.make_mesh`), wrap them in `jax.shard_map` over the batch axis (the
gathers and the components loop have no explicit-sharding rules; no
collectives are needed).
"""
import dataclasses
import functools
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import UserError
from jaxdissect.segmentation import resample, upernet
from jaxdissect.segmentation.labels import (FlatLabelSpace, UppLabelSpace,
                                            flat_label_space_from_meta, upp_label_space)

UPP_BGR_MEAN = np.array([102.9801, 115.9465, 122.7717], np.float32)
IMAGENET_RGB_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_RGB_STD = np.array([0.229, 0.224, 0.225], np.float32)

LabelSpace = Union[UppLabelSpace, FlatLabelSpace]


# ---------------------------------------------------------------------------
# Connected components (for the quad division)

_NEIGHBOURS_8 = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _shifted(x, dy, dx, fill):
    """y[i, j] = x[i + dy, j + dx], or `fill` outside the map."""
    h, w = x.shape
    padded = jnp.pad(x, 1, constant_values=fill)
    return padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def component_roots(labelmap):
    """For each non-zero pixel of a (h, w) int map, the raster index of the
    first pixel of its component; h*w on zero (background) pixels.

    Components: 8-connected pixels of equal value. Every pixel starts with its
    own raster index; each step takes the minimum over equal-valued neighbours
    and then follows that index once more (pointer jumping, which shortens
    long chains), until nothing changes. Labels only ever point to earlier
    pixels of the same component, so the fixed point is the component's
    minimum index.
    """
    h, w = labelmap.shape
    size = h * w
    foreground = labelmap != 0
    start = jnp.where(foreground, jnp.arange(size, dtype=jnp.int32).reshape(h, w), size)
    same_value = [_shifted(labelmap, dy, dx, 0) == labelmap for dy, dx in _NEIGHBOURS_8]

    def step(roots):
        best = roots
        for (dy, dx), same in zip(_NEIGHBOURS_8, same_value):
            best = jnp.minimum(best, jnp.where(same, _shifted(roots, dy, dx, size), size))
        best = jnp.where(foreground, best, size)
        return jnp.append(best.ravel(), size)[best]

    def body(state):
        roots, _ = state
        new = step(roots)
        return new, jnp.any(new != roots)

    # One step before the loop, so that the carry derives from the data
    # (its "changed" flag then also has the data's per-device type in shard_map).
    first = step(start)
    roots, _ = jax.lax.while_loop(lambda state: state[1], body, (first, jnp.any(first != start)))
    return roots


def connected_components(labelmap):
    """Labels the 8-connected, equal-valued components of a (h, w) int map.

    Returns (ids, count): ids (h, w) int32 numbers the components 1..count in
    raster order of their first pixel and is 0 on zero pixels (background),
    like skimage.morphology.label(labelmap, connectivity=2).
    """
    roots = component_roots(labelmap)
    size = labelmap.size
    is_root = (roots == jnp.arange(size, dtype=jnp.int32).reshape(labelmap.shape)).ravel()
    rank = jnp.cumsum(is_root, dtype=jnp.int32)
    ids = jnp.where(roots < size, rank[jnp.minimum(roots, size - 1)], 0)
    return ids, rank[-1]


def quad_channels(objects, step):
    """The quad channels (top/bottom, left/right) of one (h, w) object map.

    Each component of `objects` is split at the middle of its bounding box:
    rows above `(top + bottom + 1) // 2` add `step` (suffix t), the others
    `3*step` (b); columns left of `(left + right + 1) // 2` add `2*step` (l),
    the others `4*step` (r). As in the reference wrapper, the last component
    in raster order is skipped, and skipped or background pixels are 0.
    """
    ids, count = connected_components(objects)
    h, w = objects.shape
    rows, cols = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
    flat_ids = ids.ravel()

    def bounds(coord):
        low = jax.ops.segment_min(coord.ravel(), flat_ids, num_segments=h * w + 1)
        high = jax.ops.segment_max(coord.ravel(), flat_ids, num_segments=h * w + 1)
        return ((low + high + 1) // 2)[ids]

    visited = (ids > 0) & (ids < count)
    top_bottom = objects + jnp.where(rows < bounds(rows), step, 3 * step)
    left_right = objects + jnp.where(cols < bounds(cols), 2 * step, 4 * step)
    return jnp.where(visited, top_bottom, 0), jnp.where(visited, left_right, 0)


# ---------------------------------------------------------------------------
# Merging probabilities into class maps and class scores

def _argmax(probs):
    return jnp.argmax(probs, axis=-1).astype(jnp.int32)


def _channel(probs, index):
    """probs[..., index] for a traced scalar index."""
    return jax.lax.dynamic_index_in_dim(probs, index, axis=probs.ndim - 1, keepdims=False)


def merge_upp_segmentation(space: UppLabelSpace, probs):
    """(N, 3 or 5, h, w) int32 class maps from the upp probabilities.

    `probs`: 'object' (N, h, w, n_object), 'material' (N, h, w, n_material),
    'part': one (N, h, w, n_k) array per owner of PART_OWNERS, in that order.
    Channels: 0 the object argmax; 1 the material (0 where material '-');
    2 the owner's part where the object argmax is that owner, else 0; with
    quad, 3 and 4 from `quad_channels`.
    """
    objects = _argmax(probs["object"])
    material = _argmax(probs["material"])
    material = jnp.where(material == 0, 0, material + space.material_offset)
    parts = jnp.zeros_like(objects)
    for owner, numbers, part_probs in zip(space.owner_objects, space.part_index, probs["part"]):
        part_numbers = jnp.asarray(numbers, jnp.int32)[_argmax(part_probs)]
        parts = jnp.where(objects == owner, part_numbers, parts)
    channels = [objects, material, parts]
    if space.divmult > 1:
        channels += jax.vmap(functools.partial(quad_channels, step=space.n_object - 1))(objects)
    return jnp.stack(channels, axis=1)


def upp_class_score(space: UppLabelSpace, probs, classnum):
    """(score, mask), each (N, h, w), of one class number (a traced int is fine).

    A material: its probability, and where it is the material argmax.
    Otherwise the object probability (objects only), plus, for each owner
    whose part list holds the class, that part's probability (a sum, which
    can exceed 1); the mask is the union of "object argmax is the class" and
    "object argmax is the owner and part argmax is the class".
    """
    classnum = jnp.asarray(classnum, jnp.int32)
    material_index = classnum - space.material_offset
    is_material = (material_index > 0) & (material_index < space.n_material)
    material_probs = probs["material"]
    material_score = _channel(material_probs, jnp.clip(material_index, 0, space.n_material - 1))
    material_mask = _argmax(material_probs) == material_index

    objects = _argmax(probs["object"])
    is_object = classnum < space.n_object
    object_score = _channel(probs["object"], jnp.clip(classnum, 0, space.n_object - 1))
    score = jnp.where(is_object, object_score, 0.0)
    mask = is_object & (objects == classnum)
    for owner, numbers, part_probs in zip(space.owner_objects, space.part_index, probs["part"]):
        matches = jnp.asarray(numbers, jnp.int32) == classnum
        local, present = jnp.argmax(matches), jnp.any(matches)
        score = score + jnp.where(present, _channel(part_probs, local), 0.0)
        mask = mask | (present & (objects == owner) & (_argmax(part_probs) == local))
    return (jnp.where(is_material, material_score, score),
            jnp.where(is_material, material_mask, mask))


def merge_flat_segmentation(space: FlatLabelSpace, probs):
    """(N, 1, h, w) int32: the argmax class number of a single-head segmenter."""
    return (_argmax(probs["object"]) + space.channel_shift)[:, None]


def flat_class_score(space: FlatLabelSpace, probs, classnum):
    """(score, mask): the class's probability, and where it is the argmax."""
    classnum = jnp.asarray(classnum, jnp.int32)
    channel = classnum - space.channel_shift
    n_channels = probs["object"].shape[-1]
    score = _channel(probs["object"], jnp.clip(channel, 0, n_channels - 1))
    score = jnp.where(channel >= 0, score, 0.0)
    return score, _argmax(probs["object"]) == channel


# ---------------------------------------------------------------------------
# The Segmenter

@dataclasses.dataclass(frozen=True)
class Segmenter:
    """A UPerNet segmenter with its label space; hashable, so it can be a
    static argument of `jax.jit`. All methods are pure; parameters are passed
    explicitly.

    Attributes:
      config: the network's `upernet.UPerNetConfig`.
      label_space: `UppLabelSpace` for variant 'upp', else `FlatLabelSpace`.
      segsizes: square input sizes of the multi-scale vote; () means one
        scale at the images' own size.
    """
    config: "upernet.UPerNetConfig"
    label_space: LabelSpace
    segsizes: Tuple[int, ...] = ()

    @classmethod
    def create(cls, config, labels_meta, segdiv="undivided", segsizes=()):
        """Builds the label space from a model's meta["labels"] and checks it
        against the network's head sizes."""
        if config.variant == "upp":
            space = upp_label_space(labels_meta, segdiv)
            _check_upp_heads(config, space)
        else:
            if segdiv != "undivided":
                raise UserError(f"segdiv={segdiv!r}: only upp segmenters can divide objects")
            space = flat_label_space_from_meta(labels_meta)
            if space.num_classes - space.channel_shift != config.n_class:
                raise UserError(f"segmenter labels: {space.num_classes - space.channel_shift} "
                                f"names for a model with {config.n_class} classes")
        return cls(config, space, tuple(int(s) for s in segsizes))

    @classmethod
    def from_model_folder(cls, path, segdiv="undivided", segsizes=None):
        """Loads a converted segmenter folder; returns (segmenter, params).

        `segsizes` defaults to the folder's meta.json "segsizes" (the input
        scales the model was trained for; the toy segmenter's is [128]), else
        one scale at the images' own size.
        """
        config, params, meta = upernet.load_segmenter_model(path)
        if "labels" not in meta:
            raise UserError(f"{path}: meta.json has no 'labels'")
        if segsizes is None:
            segsizes = meta.get("segsizes", ())
        try:
            return cls.create(config, meta["labels"], segdiv, segsizes), params
        except UserError as e:
            raise UserError(f"{path}: {e}") from None

    @property
    def is_upp(self):
        return isinstance(self.label_space, UppLabelSpace)

    @property
    def labels(self):
        """The name of each class number."""
        return tuple(name for name, _ in self.label_space.labels)

    @property
    def label_categories(self):
        """The category of each class number."""
        return tuple(category for _, category in self.label_space.labels)

    @property
    def categories(self):
        """The category names."""
        return self.label_space.categories

    @property
    def num_classes(self):
        return self.label_space.num_classes

    @property
    def num_channels(self):
        """K of the (N, K, h, w) segmentations."""
        return self.label_space.num_channels

    def preprocess(self, images):
        """Images NHWC in [-1, 1] to the network's input, in the reference's float32 op order."""
        x = (images.astype(jnp.float32) + 1) / 2
        if self.is_upp:
            return _rounded(x * 255)[..., ::-1] - UPP_BGR_MEAN
        return (x - IMAGENET_RGB_MEAN) / IMAGENET_RGB_STD

    def probabilities(self, params, images, downsample=1):
        """The multi-scale vote: probabilities summed over `segsizes`, at
        (H // downsample, W // downsample). Returns the dict the merges read."""
        x = self.preprocess(images)
        height, width = x.shape[1:3]
        seg_shape = (height // downsample, width // downsample)
        scales = [(s, s) for s in self.segsizes] or [(height, width)]
        total = None
        for scale in scales:
            scaled = x if scale == (height, width) else resample.adaptive_avg_pool(x, scale)
            out = self._used_outputs(upernet.infer(self.config, params, scaled, seg_shape))
            total = out if total is None else jax.tree.map(jnp.add, total, out)
        return total

    def _used_outputs(self, out):
        if self.is_upp:
            return {"object": out["object"], "material": out["material"],
                    "part": tuple(out["part"][slot] for slot in self.label_space.owner_slots)}
        return {"object": out["object"]}

    def merge(self, probs):
        """Class maps (N, K, h, w) int32 from `probabilities`' output."""
        if self.is_upp:
            return merge_upp_segmentation(self.label_space, probs)
        return merge_flat_segmentation(self.label_space, probs)

    def segment(self, params, images, downsample=1):
        """Class maps (N, K, h, w) int32 of images NHWC in [-1, 1]."""
        return self.merge(self.probabilities(params, images, downsample))

    def class_score(self, params, images, classnum, downsample=1):
        """(score, mask), each (N, h, w), of class number `classnum`.

        `classnum` may be a traced int, so one compiled function serves every
        class; the score is differentiable with respect to `images`.
        """
        probs = self.probabilities(params, images, downsample)
        if self.is_upp:
            return upp_class_score(self.label_space, probs, classnum)
        return flat_class_score(self.label_space, probs, classnum)


def _rounded(x):
    """x, rounded to float32 before whatever consumes it.

    XLA contracts a multiply followed by an add into one fused multiply-add,
    which rounds once; the reference rounds the product first. A select the
    compiler cannot remove (x == x is False only for NaN, which it keeps)
    stands between the two.
    """
    return jnp.where(x == x, x, jnp.nan)


def _check_upp_heads(config, space):
    if (space.n_object, space.n_material) != (config.n_object, config.n_material):
        raise UserError(f"upp labels: {space.n_object} objects and {space.n_material} materials "
                        f"for a model with {config.n_object} and {config.n_material}")
    if space.decoder_part_sizes != tuple(config.part_sizes):
        raise UserError(f"upp labels: part lists of sizes {space.decoder_part_sizes} for a "
                        f"model with part heads {tuple(config.part_sizes)}")
