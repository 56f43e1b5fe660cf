"""The generator protocol: what dissection, interventions, the alpha search and GAN Paint need of a generator.

A generator is a hashable object (a frozen dataclass: it is a static jit
argument and a cache key) whose methods are pure functions of `params` (a
pytree) and arrays, so they compose with jit, vmap and grad:

    latent_size             z is (N, latent_size), drawn N(0, I) per (seed, index) by jaxdissect.parallel
                            (a model with another prior maps that normal draw itself, first thing)
    resolution              images are (N, resolution, resolution, 3), NHWC
    image_range             (-1, 1): images nominally in [-1, 1], what the segmenters and pictures expect
    layer_names             the dissectable featuremaps, in run order
    featuremap_shape(name)  (H, W, U) of a layer's output (units last)
    layer_index(name)       a layer's run-order position; ValueError naming the valid layers if unknown
    __call__(params, z, edits={name: fn}, capture=names) -> (image, {name: featuremap})
    h(params, z, layers, edits=None) -> {name: featuremap}           run to a layer (the paper's r = h(z))
    f(params, r, layer, z, edits=None, capture=()) -> image          run from a layer (x = f(r)); with
                                                                     `capture`, (image, {later name: featuremap})

An edit is a function of a layer's output featuremap returning one of the
same shape (jaxdissect.intervention). `f` takes the latents as well as the
featuremap: a generator whose later layers read z too (StyleGAN2's styles
and noise) needs them; a plain feed-forward one ignores them.

`Generator` implements `__call__`, `h` and `f` from one method, `run`; the
ProGAN and StyleGAN2 ports and `jaxdissect.models.flax_adapter.FlaxGenerator`
(any flax.linen generator, by naming its submodules) subclass it.
"""
from typing import Callable, Mapping

import jax

Edit = Callable[[jax.Array], jax.Array]


class Generator:
    """Base class of the generators: `__call__`, `h` and `f` on top of `run`.

    A subclass is a frozen dataclass giving `latent_size`, `resolution`,
    `layer_names`, `featuremap_shape`, `init(rng)` (parameters of the right
    structure, for loading) and either a Flax `module` whose `apply(params,
    z, stop=, capture=, edits=)` follows `run`'s contract, or its own `run`.
    """

    image_range = (-1.0, 1.0)

    def layer_index(self, name):
        """The run-order position of layer `name`; ValueError naming the valid layers if unknown."""
        if name not in self.layer_names:
            raise ValueError(f"unknown layer {name!r}; valid layers: {', '.join(self.layer_names)}")
        return self.layer_names.index(name)

    def run(self, params, z, stop, capture, edits):
        """(image, {name: value for name in capture}), with `edits` applied to those layers' outputs.

        `stop` is None (the whole generator) or 1 + the `layer_index` of the
        deepest layer wanted (a generator may stop there; the image is then
        not used).
        """
        return self.module.apply(params, z, stop=stop, capture=capture, edits=edits)

    def __call__(self, params, z, edits: Mapping[str, Edit] = None, capture=()):
        """The whole generator: returns (image, {name: featuremap for name in capture})."""
        capture = tuple(capture)
        for name in capture + tuple(edits or {}):
            self.layer_index(name)
        return self.run(params, z, None, capture, edits)

    def h(self, params, z, layers, edits: Mapping[str, Edit] = None):
        """Runs up to the deepest of `layers`; returns {layer: featuremap}."""
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        stop = 1 + max(self.layer_index(name) for name in layers)
        return self.run(params, z, stop, layers, edits)[1]

    def f(self, params, r, layer, z, edits: Mapping[str, Edit] = None, capture=()):
        """The image of latents `z` with `layer`'s output replaced by `r`.

        The layers before `layer` are traced but only what feeds the later
        layers by another path is used: under jit, XLA drops the rest as dead
        code. With `capture`, returns (image, {name: featuremap}) instead.
        """
        edits = {**(edits or {}), layer: lambda _: r}
        image, captured = self(params, z, edits=edits, capture=capture)
        return (image, captured) if capture else image
