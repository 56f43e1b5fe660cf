"""Interventions on a featuremap, as pure functions (pytrees) the generator applies.

One formula covers the paper's ablation, insertion and their continuous form:

    r' = (1 - alpha * mask) * r + alpha * mask * value

with `alpha` (U,) the weight of each unit (an indicator vector for a discrete
unit set), `mask` the positions, broadcastable to (N, H, W) (1 = edit here),
and `value` (U,) what a unit is set to (0 ablates, k inserts). With alpha =
1[U] and mask = 1[P] this is x_a = f(0, r_~U,P) for value 0 and x_i =
f(k, r_~U,P) for value k; with alpha in [0, 1] it is the design's x_a', x_i'.

Edits are pytrees of arrays, so changing the unit set, the mask or the values
never recompiles a jitted function, and they vmap (e.g. over many unit sets
or positions). Pass them to a generator as `edits={layer: edit}`; several
layers take several edits in one call.
"""
import flax.struct
import jax.numpy as jnp


@flax.struct.dataclass
class Intervention:
    alpha: jnp.ndarray   # (U,) in [0, 1]: how much each unit is edited
    mask: jnp.ndarray    # broadcastable to (N, H, W): where (1) and how much
    value: jnp.ndarray   # (U,) the value each edited unit is pulled to

    def __call__(self, featuremap):
        weight = (self.alpha * jnp.asarray(self.mask, jnp.float32)[..., None]).astype(featuremap.dtype)
        # This form is exact at weight 0 (r) and weight 1 (value).
        return (1 - weight) * featuremap + weight * self.value.astype(featuremap.dtype)


def unit_indicator(units, n_units):
    """(n_units,) float vector with 1 at the given unit indices."""
    return jnp.zeros((n_units,), jnp.float32).at[jnp.asarray(units, jnp.int32)].set(1.0)


def ablate(alpha, mask=1.0):
    """Sets the units weighted by `alpha` to zero where `mask` is 1 (everywhere by default)."""
    alpha = jnp.asarray(alpha, jnp.float32)
    return Intervention(alpha, jnp.asarray(mask, jnp.float32), jnp.zeros_like(alpha))


def insert(alpha, value, mask=1.0):
    """Sets the units weighted by `alpha` to `value` (U,) where `mask` is 1."""
    alpha = jnp.asarray(alpha, jnp.float32)
    return Intervention(alpha, jnp.asarray(mask, jnp.float32), jnp.broadcast_to(jnp.asarray(value, jnp.float32),
                                                                              alpha.shape))


def identity(n_units):
    """The intervention that changes nothing (alpha = 0)."""
    return ablate(jnp.zeros((n_units,), jnp.float32))
