"""UPerNet segmenters (ResNet encoder + pyramid-pooling FPN decoder) in Flax.

Two variants share the code:

* `upp`: the unified-perceptual-parsing model used by GAN Dissection, with
  four heads (object, part, material, scene) and Precise-RoI whole-map
  pooling in the pyramid pooling module;
* `ade20k`: the ADE20K model of the semantic-segmentation project, with
  AdaptiveAvgPool in the pyramid pooling module and a single 150-class head.

Arrays are NHWC. `variables` is the Flax variables dict
`{"params": ..., "batch_stats": ...}`; its tree mirrors the PyTorch state
dicts (`params/decoder/fpn_out/0/0/0/kernel` is `fpn_out.0.0.0.weight` of the
decoder file), see `params_from_state_dicts`.

Public functions are pure and jitted with the (hashable) config static:
`logits`, `train_logits`, `features`, `train_outputs`, `infer`, plus the
post-processing `log_softmax_outputs` and `probabilities`.
"""
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxdissect.checkpoint import load_model
from jaxdissect.errors import UserError
from jaxdissect.segmentation.resample import adaptive_avg_pool, prroi_pool_whole_map, resize_bilinear
from jaxdissect.segmentation.resnet import ConvBN, ResNetEncoder, conv

VARIANTS = ("upp", "ade20k")


@dataclasses.dataclass(frozen=True)
class UPerNetConfig:
    """Architecture of a UPerNet segmenter; hashable, so usable as a static jit arg.

    The encoder has len(depths) stages of Bottlenecks with planes
    base_width * 2**k (outputs 4x that); the stem ends with 2*stem_width
    channels. `part_sizes` (upp) are the per-owner part-list lengths in
    ascending owner object index, each counting its '-' entry.
    """
    variant: str
    depths: tuple = (3, 4, 6, 3)
    stem_width: int = 64
    base_width: int = 64
    fpn_dim: int = 512
    ppm_scales: tuple = (1, 2, 3, 6)
    n_object: int = 0
    n_material: int = 0
    n_scene: int = 0
    part_sizes: tuple = ()
    n_class: int = 0
    dtype: Any = jnp.float32

    def __post_init__(self):
        for name in ("depths", "ppm_scales", "part_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "upp":
            counts = dict(n_object=self.n_object, n_material=self.n_material,
                          n_scene=self.n_scene, part_sizes=min(self.part_sizes, default=0))
        else:
            counts = dict(n_class=self.n_class)
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"UPerNetConfig({self.variant}) needs a positive {name}")

    def to_json(self):
        """The architecture as a JSON-able dict (the compute dtype is a runtime choice)."""
        fields = dataclasses.asdict(self)
        del fields["dtype"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    @classmethod
    def from_json(cls, fields, dtype=jnp.float32):
        return cls(**fields, dtype=dtype)


class WrappedConvBN(nn.Module):
    """A ConvBN inside a one-element PyTorch Sequential: its params sit under "0"."""
    features: int
    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        return ConvBN(self.features, self.kernel_size, dtype=self.dtype, name="0")(x, train)


class ConvBNList(nn.Module):
    """A PyTorch ModuleList of conv-BN-ReLU blocks: block "i" applied to input i."""
    features: int
    kernel_size: int
    wrapped: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs, train=False):
        block = WrappedConvBN if self.wrapped else ConvBN
        return [block(self.features, self.kernel_size, dtype=self.dtype, name=str(i))(x, train)
                for i, x in enumerate(xs)]


class ClassifierHead(nn.Module):
    """"0": 3x3 conv-BN-ReLU, [global mean], then a 1x1 conv with bias.

    The classifier's PyTorch index is "1", or "2" after the pooling layer.
    Returns (hidden features, logits).
    """
    hidden: int
    n_classes: int
    global_pool: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        hidden = ConvBN(self.hidden, 3, dtype=self.dtype, name="0")(x, train)
        x = jnp.mean(hidden, axis=(1, 2), keepdims=True) if self.global_pool else hidden
        classifier = conv(self.n_classes, 1, use_bias=True, dtype=self.dtype,
                          name="2" if self.global_pool else "1")
        return hidden, classifier(x)


class UPerNetDecoder(nn.Module):
    """Pyramid pooling on the last stage, FPN top-down path, fusion and heads.

    Returns raw logits at the resolution of the first stage: upp
    {object, material, scene (N, n_scene), part: tuple per owner}; ade20k {object}.
    """
    config: UPerNetConfig

    @nn.compact
    def __call__(self, conv_outs, train=False):
        cfg, dtype = self.config, self.config.dtype
        conv5 = conv_outs[-1]
        pool = prroi_pool_whole_map if cfg.variant == "upp" else adaptive_avg_pool
        pooled = [pool(conv5, (s, s)) for s in cfg.ppm_scales]
        for scale, p in zip(cfg.ppm_scales, pooled):
            self.sow("intermediates", f"ppm_pooled_{scale}", p)
        branches = ConvBNList(cfg.fpn_dim, 1, dtype=dtype, name="ppm_conv")(
            [resize_bilinear(p, conv5.shape[1:3]) for p in pooled], train)
        top = ConvBN(cfg.fpn_dim, 3, dtype=dtype, name="ppm_last_conv")(
            jnp.concatenate([conv5, *branches], axis=-1), train)

        laterals = ConvBNList(cfg.fpn_dim, 1, dtype=dtype, name="fpn_in")(conv_outs[:-1], train)
        # The top-down path carries the running sum, not the fpn_out outputs.
        sums = [None] * len(laterals)
        running = top
        for i in reversed(range(len(laterals))):
            running = resize_bilinear(running, laterals[i].shape[1:3]) + laterals[i]
            sums[i] = running
        pyramid = ConvBNList(cfg.fpn_dim, 3, wrapped=True, dtype=dtype, name="fpn_out")(sums, train)
        pyramid.append(top)
        for level, p in enumerate(pyramid, 2):
            self.sow("intermediates", f"P{level}", p)
        finest = pyramid[0].shape[1:3]
        fusion_input = jnp.concatenate([resize_bilinear(p, finest) for p in pyramid], axis=-1)

        if cfg.variant == "ade20k":
            fusion, logits = ClassifierHead(cfg.fpn_dim, cfg.n_class, dtype=dtype,
                                            name="conv_last")(fusion_input, train)
            self.sow("intermediates", "fusion", fusion)
            return {"object": logits}

        fusion = ConvBN(cfg.fpn_dim, 3, dtype=dtype, name="conv_fusion")(fusion_input, train)
        self.sow("intermediates", "fusion", fusion)

        def head(name, n_classes, x, global_pool=False):
            return ClassifierHead(cfg.fpn_dim, n_classes, global_pool, dtype, name=name)(x, train)[1]

        scene = head("scene_head", cfg.n_scene, top, global_pool=True)
        part = head("part_head", sum(cfg.part_sizes), fusion)
        return {
            "object": head("object_head", cfg.n_object, fusion),
            "material": head("material_head", cfg.n_material, pyramid[0]),
            "scene": scene.reshape(scene.shape[0], -1),
            "part": tuple(jnp.split(part, np.cumsum(cfg.part_sizes)[:-1], axis=-1)),
        }


class UPerNet(nn.Module):
    """Encoder ("encoder") + decoder ("decoder"); returns float32 raw logits."""
    config: UPerNetConfig

    @nn.compact
    def __call__(self, x, train=False):
        cfg = self.config
        stem, conv_outs = ResNetEncoder(cfg.depths, cfg.stem_width, cfg.base_width, cfg.dtype,
                                        name="encoder")(x, train)
        self.sow("intermediates", "stem", stem)
        for i, c in enumerate(conv_outs):
            self.sow("intermediates", f"conv_out{i}", c)
        logits = UPerNetDecoder(cfg, name="decoder")(conv_outs, train)
        return jax.tree.map(lambda a: a.astype(jnp.float32), logits)


# ----------------------------------------------------------------------------
# Pure functions of (config, variables, x).

def variable_shapes(config):
    """The variables' tree of jax.ShapeDtypeStruct (traced only, nothing computed)."""
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(UPerNet(config).init, jax.random.PRNGKey(0), x)


def init_params(config, rng, input_hw=None):
    """Fresh variables ({"params", "batch_stats"}) drawn from the PRNG key `rng`.

    Conv kernels are He-normal (variance 2 / fan_in), classifiers (the convs
    with a bias) LeCun-normal (1 / fan_in); BN is the identity. The draws use
    numpy seeded from the key: per-shape JAX random programs take longer to
    compile than the whole network. Parameter shapes do not depend on the
    input size; `input_hw` is accepted for symmetry with Flax's init.
    """
    del input_hw
    generator = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    flat = traverse_util.flatten_dict(variable_shapes(config))
    classifiers = {path[:-1] for path in flat if path[0] == "params" and path[-1] == "bias"
                   and path[:-1] + ("kernel",) in flat}
    initial = {}
    for path, leaf in flat.items():
        name = path[-1]
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            gain = 1.0 if path[:-1] in classifiers else 2.0
            value = generator.standard_normal(leaf.shape) * math.sqrt(gain / fan_in)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        initial[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(initial)


@functools.partial(jax.jit, static_argnames=("config",))
def logits(config, variables, x):
    """Raw logits at native resolution (1/4 of the input), BN on running statistics."""
    return UPerNet(config).apply(variables, x)


@functools.partial(jax.jit, static_argnames=("config",))
def train_logits(config, variables, x):
    """Logits with BN on batch statistics; returns (logits, updated batch_stats).

    The running averages follow Flax's rule: new = 0.9 * old + 0.1 * batch
    statistic (PyTorch's momentum 0.1), with the biased batch variance.
    """
    out, updates = UPerNet(config).apply(variables, x, train=True, mutable=["batch_stats"])
    return out, updates["batch_stats"]


@functools.partial(jax.jit, static_argnames=("config",))
def features(config, variables, x):
    """Returns (logits, intermediates) from one pass.

    Intermediates: stem (after the max-pool), conv_out0..3, ppm_pooled_{s}
    (pooled, before resizing), P2..P4 (fpn_out outputs), P5 (PPM output) and
    fusion (the fusion conv; conv_last.0 in ade20k).
    """
    out, state = UPerNet(config).apply(variables, x, mutable=["intermediates"])
    flat = traverse_util.flatten_dict(state["intermediates"])
    return out, {path[-1]: value[0] for path, value in flat.items()}


def log_softmax_outputs(config, raw):
    """The training branch: log_softmax per head (per owner for parts), native resolution."""
    del config
    return jax.tree.map(lambda a: jax.nn.log_softmax(a, axis=-1), raw)


def probabilities(config, raw, seg_size):
    """The inference branch: logit maps resized (bilinear) to seg_size, then softmax.

    Each owner's part logits are resized and softmaxed on their own (upstream
    resizes all part channels at once, the same numbers: resizing is per
    channel); the scene is a plain softmax.
    """
    seg_size = tuple(seg_size)
    maps = {k: v for k, v in raw.items() if k != "scene"}
    probs = jax.tree.map(lambda a: jax.nn.softmax(resize_bilinear(a, seg_size), axis=-1), maps)
    if config.variant == "upp":
        probs["scene"] = jax.nn.softmax(raw["scene"], axis=-1)
    return probs


@functools.partial(jax.jit, static_argnames=("config",))
def train_outputs(config, variables, x):
    """Upstream's training branch (use_softmax=False): see `log_softmax_outputs`."""
    return log_softmax_outputs(config, logits(config, variables, x))


@functools.partial(jax.jit, static_argnames=("config", "seg_size"))
def _infer(config, variables, x, seg_size):
    return probabilities(config, logits(config, variables, x), seg_size)


def infer(config, variables, x, seg_size):
    """Class probabilities at seg_size (h, w), NHWC; see `probabilities`.

    `x` is the preprocessed model input (N, H, W, 3).
    """
    return _infer(config, variables, x, tuple(int(s) for s in seg_size))


# ----------------------------------------------------------------------------
# PyTorch state dicts.

# SyncBN training buffers and BN step counters: present in the files, unused in eval.
IGNORED_SUFFIXES = ("num_batches_tracked", "_tmp_running_mean", "_tmp_running_var",
                    "_running_iter")
# (Flax collection, leaf) -> PyTorch parameter/buffer name.
TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
              ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}


def torch_layout(config):
    """{flax variable path: (part, torch key, torch shape)} for every variable.

    part is "encoder" or "decoder" (which state dict holds the key); conv
    kernels are HWIO in Flax and OIHW in PyTorch.
    """
    layout = {}
    for path, leaf in traverse_util.flatten_dict(variable_shapes(config)).items():
        collection, part, *modules, name = path
        shape = leaf.shape
        if name == "kernel":
            shape = (shape[3], shape[2], shape[0], shape[1])
        layout[path] = (part, ".".join([*modules, TORCH_LEAF[collection, name]]), tuple(shape))
    return layout


def _is_ignored(key):
    return key.rsplit(".", 1)[-1] in IGNORED_SUFFIXES


def params_from_state_dicts(config, encoder_sd, decoder_sd, source_names=None):
    """Flax variables from the encoder and decoder state dicts (numpy arrays).

    Raises KeyError on a missing or unexpected key and ValueError on a wrong
    shape, naming the state dict (`source_names["encoder"]`, default
    "encoder"; the same for the decoder), the key and both shapes.
    """
    state_dicts = {"encoder": encoder_sd, "decoder": decoder_sd}
    names = _source_names(source_names)
    layout = torch_layout(config)
    for part, sd in state_dicts.items():
        expected = {key for p, key, _ in layout.values() if p == part}
        unexpected = sorted(k for k in sd if k not in expected and not _is_ignored(k))
        if unexpected:
            raise KeyError(f"{names[part]}: unexpected key {unexpected[0]!r}"
                           + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    flat = {}
    for path, (part, key, shape) in layout.items():
        if key not in state_dicts[part]:
            raise KeyError(f"{names[part]}: missing key {key!r}")
        value = np.asarray(state_dicts[part][key])
        if value.shape != shape:
            raise ValueError(f"{names[part]}: key {key!r} has shape {value.shape}, expected {shape}")
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{names[part]}: key {key!r} holds {value.dtype} values, "
                             "expected a floating-point tensor")
        value = value.astype(np.float32)
        if path[-1] == "kernel":
            value = np.ascontiguousarray(value.transpose(2, 3, 1, 0))
        flat[path] = value
    return traverse_util.unflatten_dict(flat)


def _source_names(source_names):
    return {"encoder": "encoder", "decoder": "decoder", **(source_names or {})}


def _out_channels(sd, key, source_name):
    """Output channels of the conv weight `key` (O of OIHW)."""
    if key not in sd:
        raise KeyError(f"{source_name}: missing key {key!r}")
    shape = tuple(np.shape(sd[key]))
    if len(shape) != 4:
        raise ValueError(f"{source_name}: key {key!r} has shape {shape}, expected a conv "
                         "weight (out, in, kh, kw)")
    return shape[0]


def _count_indices(sd, key_format):
    """How many consecutive i = 0, 1, ... have key_format.format(i) in sd."""
    n = 0
    while key_format.format(n) in sd:
        n += 1
    return n


def config_from_state_dicts(variant, encoder_sd, decoder_sd, part_sizes=(),
                            ppm_scales=(1, 2, 3, 6), dtype=jnp.float32, source_names=None):
    """The UPerNetConfig whose shapes match the state dicts.

    Depths, widths and class counts come from the weights. What the weights
    cannot tell is passed in: the pooling scales (only their number is
    checked) and, for upp, the per-owner part sizes (from labels.json; their
    sum is checked against the part head). Errors as `params_from_state_dicts`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    names = _source_names(source_names)
    encoder, decoder = names["encoder"], names["decoder"]
    depths = []
    while _count_indices(encoder_sd, f"layer{len(depths) + 1}.{{}}.conv1.weight"):
        depths.append(_count_indices(encoder_sd, f"layer{len(depths) + 1}.{{}}.conv1.weight"))
    if not depths:
        raise KeyError(f"{encoder}: missing key 'layer1.0.conv1.weight'")
    n_branches = _count_indices(decoder_sd, "ppm_conv.{}.0.weight")
    if n_branches != len(ppm_scales):
        raise ValueError(f"{decoder}: {n_branches} pyramid pooling branches (ppm_conv.*), "
                         f"expected {len(ppm_scales)} for scales {tuple(ppm_scales)}")
    fields = dict(
        variant=variant, depths=tuple(depths), ppm_scales=tuple(ppm_scales), dtype=dtype,
        stem_width=_out_channels(encoder_sd, "conv1.weight", encoder),
        base_width=_out_channels(encoder_sd, "layer1.0.conv1.weight", encoder),
        fpn_dim=_out_channels(decoder_sd, "ppm_last_conv.0.weight", decoder))
    if variant == "ade20k":
        return UPerNetConfig(n_class=_out_channels(decoder_sd, "conv_last.1.weight", decoder),
                             **fields)
    n_parts = _out_channels(decoder_sd, "part_head.1.weight", decoder)
    if sum(part_sizes) != n_parts:
        raise ValueError(f"{decoder}: part_head.1.weight has {n_parts} output channels, "
                         f"but the owners' part lists have {sum(part_sizes)} entries "
                         f"{tuple(part_sizes)}")
    return UPerNetConfig(
        n_object=_out_channels(decoder_sd, "object_head.1.weight", decoder),
        n_material=_out_channels(decoder_sd, "material_head.1.weight", decoder),
        n_scene=_out_channels(decoder_sd, "scene_head.2.weight", decoder),
        part_sizes=tuple(part_sizes), **fields)


# ----------------------------------------------------------------------------
# Model folders (written by convert/upernet.py or the toy-world trainer).

MODEL_KIND = "upernet"


def load_segmenter_model(path, dtype=jnp.float32):
    """Reads a segmenter model folder; returns (UPerNetConfig, variables, meta).

    meta["config"] is `UPerNetConfig.to_json()`; meta["labels"] the class
    names (labels.json content for upp, a list of names for single-head models).
    """
    variables, meta = load_model(path, kind=MODEL_KIND)
    try:
        config = UPerNetConfig.from_json(meta["config"], dtype)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: meta.json has no valid 'config' ({e})") from None
    expected = {p: leaf.shape for p, leaf in traverse_util.flatten_dict(variable_shapes(config)).items()}
    found = {p: np.shape(leaf) for p, leaf in traverse_util.flatten_dict(variables).items()}
    if expected != found:
        raise UserError(f"{path}: the stored parameters do not match the architecture in meta.json")
    return config, variables, meta
