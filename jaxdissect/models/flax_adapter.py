"""Any flax.linen generator as a dissectable `Generator`, by naming its submodules.

    gen = FlaxGenerator(MyGAN(), layers=("block2", "block3"), latent_size=64)
    image, maps = gen(params, z, capture=("block2",), edits={"block3": ablate(units)})

A layer is the output of one call of a submodule, named by its path in the
module tree, '/'-joined (`"block2"`, `"decoder/up1"`). No hand-written split:
every method runs the user's module whole under `flax.linen.intercept_methods`,
which sees each submodule's `__call__` return, records the named ones
(capture), replaces them by an edit of themselves (edits), and, for
run-from-layer `f`, by the given featuremap. So `h` and `f` trace the whole
generator: under jit, XLA drops what their result does not depend on (the
layers after the deepest one `h` returns; what only fed the layer `f`
replaces); run eagerly, those parts are computed and thrown away.
"""
import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.models.generator import Generator


class AdapterError(ValueError):
    """A FlaxGenerator's module or layer names do not fit the protocol (main.py reports it in one line)."""


def submodule_name(module):
    """The '/'-joined path of a bound module in its tree ('' for the root)."""
    return "/".join(module.path)


def intercepted_apply(module, params, z, method, on_output):
    """`module.apply(params, z, method=method)` with every submodule's `__call__` result passed through
    `on_output(name, value)`, which returns the value the caller continues with."""
    def intercept(next_fun, args, kwargs, context):
        value = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not context.module.path:
            return value
        return on_output(submodule_name(context.module), value)

    with nn.intercept_methods(intercept):
        return module.apply(params, z, method=method)


@dataclasses.dataclass(frozen=True)
class FlaxGenerator(Generator):
    """A flax.linen generator, dissectable at the submodules named in `layers`.

    `module.apply(params, z, method=method)` (default method: `__call__`)
    must map latents (N, latent_size) to images (N, R, R, 3), NHWC, with
    values nominally in `image_range` (rescaled to [-1, 1] here). Each layer's
    submodule must be called once per forward and return a featuremap
    (N, H, W, U). Construction traces the module once, abstractly, and
    refuses unknown layers, naming the submodules there are.
    """
    module: nn.Module
    layers: tuple
    latent_size: int
    image_range: tuple = (-1.0, 1.0)
    method: Optional[Callable] = None

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "image_range", tuple(float(v) for v in self.image_range))
        image, outputs = self.shapes
        if len(image) != 4 or image[1] != image[2] or image[3] != 3:
            raise AdapterError(f"the module makes arrays of shape {image}; expected square NHWC RGB images "
                               "(N, R, R, 3)")
        unknown = [name for name in self.layers if name not in outputs]
        if unknown:
            raise AdapterError(f"unknown layer {unknown[0]!r}; the module's submodules: {', '.join(outputs)}")
        flat = [name for name in self.layers if len(outputs[name]) != 4]
        if flat:
            raise AdapterError(f"layer {flat[0]!r} returns shape {outputs[flat[0]]}; a layer must return a "
                               "featuremap (N, H, W, U)")

    @functools.cached_property
    def shapes(self):
        """(image shape, {submodule name: output shape} in call order) of one latent, traced abstractly."""
        outputs = {}

        def record(name, value):
            outputs.setdefault(name, tuple(getattr(value, "shape", ())))
            return value

        def forward(z):
            params = self.module.init(jax.random.key(0), z, method=self.method)
            return intercepted_apply(self.module, params, z, self.method, record)

        image = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, self.latent_size), jnp.float32))
        return tuple(image.shape), outputs

    @property
    def layer_names(self):
        """`layers` in the order the forward calls them."""
        order = list(self.shapes[1])
        return tuple(sorted(self.layers, key=order.index))

    @property
    def resolution(self):
        return self.shapes[0][1]

    def featuremap_shape(self, layer):
        """(H, W, U) of a layer's output."""
        self.layer_index(layer)
        return self.shapes[1][layer][1:]

    def init(self, rng):
        return self.module.init(rng, jnp.zeros((1, self.latent_size), jnp.float32), method=self.method)

    def run(self, params, z, stop, capture, edits):
        """The module whole (`stop` is ignored: under jit the unused rest is dead code)."""
        edits, captured = edits or {}, {}

        def on_output(name, value):
            if name not in self.layers:
                return value
            if name in captured:
                raise AdapterError(f"layer {name!r} is called more than once per forward; name a submodule "
                                   "that is called once")
            value = edits[name](value) if name in edits else value
            captured[name] = value
            return value

        image = intercepted_apply(self.module, params, z, self.method, on_output)
        low, high = self.image_range
        if (low, high) != (-1.0, 1.0):
            image = (image - low) * (2.0 / (high - low)) - 1.0
        return image, {name: captured[name] for name in capture}
