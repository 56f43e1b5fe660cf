"""A replay of the randomised quantile sketch behind the original tool's `quantile` rule.

The original GAN Dissection code estimates each unit's top-quantile level of
its raw featuremap with a streaming KLL-style sketch (its `RunningQuantile`,
resolution 1024, fed the raw featuremap cells in sample order). Written here
from its description, not its code. The sketch compacts a full buffer by
sorting it and keeping every other value from a random offset, and one
random bit serves all units at once, so its errors are shared by every unit
of a layer: one run's levels can sit at a 0.85% tail for every unit, and its
interpretable count moves with the seed (7 to 22 over seeds 0-9 on the
fixture samples, against 12 at the exact top 1%).

`--original_sketch_seed=S` replays it, so that a dissection matches an
original run made after `torch.manual_seed(S)`: torch's CPU generator is the
Mersenne Twister of `numpy.random.RandomState(S)`; the sketch's bits are the
low bits of its successive 32-bit outputs, after the two that the original's
data loader draws first for its own seed.
"""
import math

import numpy as np

from jaxdissect.errors import UserError

RESOLUTION = 1024
# The smallest buffer the sketch makes; the original caps it at 128 values.
SMALLEST_BUFFER = 128
# 32-bit outputs torch's data loader draws before the sketch's first bit.
LOADER_DRAWS = 2
# Random bits drawn from the generator at a time.
BITS_PER_DRAW = 1 << 14


class TorchBits:
    """The sketch's random bits under `torch.manual_seed(seed)`, drawn lazily; `used` of them so far."""

    def __init__(self, seed, used=0, skip=LOADER_DRAWS):
        self.seed = seed
        self._state = np.random.RandomState(seed)
        self._draw(skip)
        self._bits, self._next, self.used = np.zeros(0, np.uint8), 0, 0
        for _ in range(used):           # a resumed sketch: the bits it has used already
            self()

    def _draw(self, count):
        # With the full 32-bit range, each value is exactly one 32-bit output of the Mersenne Twister.
        return self._state.randint(0, 2 ** 32, size=count, dtype=np.uint32)

    def __call__(self):
        if self._next == len(self._bits):
            self._bits, self._next = (self._draw(BITS_PER_DRAW) & 1).astype(np.uint8), 0
        self._next += 1
        self.used += 1
        return int(self._bits[self._next - 1])


def _with_extremes(extremes, values):
    """(U, 2) each unit's [min, max] of `extremes` and of `values` (U, n)."""
    if not values.shape[1]:
        return extremes
    return np.stack([np.minimum(extremes[:, 0], values.min(axis=1)),
                     np.maximum(extremes[:, 1], values.max(axis=1))], axis=1)


class QuantileSketch:
    """Buffers of sorted-and-halved values per level; a value at level i stands for 2**i inputs."""

    def __init__(self, units, seed, resolution=RESOLUTION):
        self.resolution = resolution
        self.random_bit = TorchBits(seed)
        self.buffers = [np.zeros((units, resolution), np.float32)]
        self.filled = [0]
        self.extremes = np.stack([np.full(units, np.inf), np.full(units, -np.inf)], axis=1)

    def add(self, values):
        """Feeds values (n, units), in sample order."""
        start = 0
        while start < len(values):
            if self.filled[0] == self.buffers[0].shape[1]:
                self._compact()
            take = min(self.buffers[0].shape[1] - self.filled[0], len(values) - start)
            self.buffers[0][:, self.filled[0]:self.filled[0] + take] = values[start:start + take].T
            self.filled[0] += take
            start += take

    def summary(self):
        """(values (U, M) float32, weights (M,) float64): every value the sketch keeps, with the number of
        inputs it stands for, plus each unit's min and max at weight 0 (see `quantile`)."""
        extremes = _with_extremes(self.extremes, self.buffers[0][:, :self.filled[0]])
        values = np.concatenate([extremes.astype(np.float32)] + [b[:, :f] for b, f in zip(self.buffers, self.filled)],
                                axis=1)
        weights = np.concatenate([np.zeros(2)] + [np.full(f, 2.0 ** i) for i, f in enumerate(self.filled)])
        return values, weights

    def to_arrays(self):
        """The sketch's whole state as named arrays (a checkpoint); `from_arrays` restores it."""
        arrays = {f"buffer{i}": b for i, b in enumerate(self.buffers)}
        arrays.update(filled=np.array(self.filled), extremes=self.extremes,
                      bits=np.array([self.random_bit.seed, self.random_bit.used]))
        return arrays

    @classmethod
    def from_arrays(cls, arrays):
        seed, used = (int(v) for v in arrays["bits"])
        sketch = cls(arrays["buffer0"].shape[0], seed)
        sketch.random_bit = TorchBits(seed, used)
        sketch.filled = [int(f) for f in arrays["filled"]]
        sketch.buffers = [np.array(arrays[f"buffer{i}"], np.float32) for i in range(len(sketch.filled))]
        sketch.extremes = np.array(arrays["extremes"], np.float64)
        return sketch

    def _halve(self, level):
        """Level `level`'s values sorted, every other one kept from a random offset."""
        values = np.sort(self.buffers[level][:, :self.filled[level]], axis=1)
        self.extremes = _with_extremes(self.extremes, values)
        return values[:, self.random_bit()::2]

    def _room_needed(self, level):
        return -(-self.buffers[level - 1].shape[1] // 2) if level else 1

    def _compact(self):
        """Pushes halved values up the levels until level 0 has room; adds a level when the top is full."""
        level = 0
        while self.buffers[level].shape[1] - self.filled[level] < self._room_needed(level):
            if level + 1 == len(self.buffers):
                self._add_level()
                return
            kept = self._halve(level)
            start = self.filled[level + 1]
            self.buffers[level + 1][:, start:start + kept.shape[1]] = kept
            self.filled[level], self.filled[level + 1] = 0, start + kept.shape[1]
            level += 1

    def _add_level(self):
        """A new, smaller level-0 buffer; every old level moves one level up, so each one's values
        either move back down (when they fit) or are halved where they are."""
        capacity = math.ceil(self.resolution * 0.67 ** len(self.buffers))
        if capacity < 2:
            inputs = sum(f * 2 ** i for i, f in enumerate(self.filled))
            raise UserError(f"--original_sketch_seed: after {inputs} values per unit the original's sketch "
                            "starts subsampling, which is not replayed; use fewer --samples")
        capacity = max(SMALLEST_BUFFER, -8 * (-capacity // 8))
        self.buffers.insert(0, np.zeros((self.buffers[0].shape[0], capacity), np.float32))
        self.filled.insert(0, 0)
        for level in range(1, len(self.buffers)):
            count = self.filled[level]
            if count == 0:
                continue
            below = self.filled[level - 1]
            if self.buffers[level - 1].shape[1] - (count + below) >= self._room_needed(level - 1):
                self.buffers[level - 1][:, below:below + count] = self.buffers[level][:, :count]
                self.filled[level - 1], self.filled[level] = below + count, 0
            else:
                kept = self._halve(level)
                self.buffers[level][:, :kept.shape[1]] = kept
                self.filled[level] = kept.shape[1]


def quantile(values, weights, q):
    """Each unit's q-quantile from a sketch's `summary()`: linear interpolation over the values' weight
    midpoints, as the original reads its sketch."""
    order = np.argsort(values, axis=1, kind="stable")
    values, weights = np.take_along_axis(values, order, axis=1), weights[order]
    midpoints = (np.cumsum(weights, axis=1) - weights / 2) / weights.sum(axis=1, keepdims=True)
    return np.array([np.interp(q, m, v) for m, v in zip(midpoints, values)])


def original_levels(featuremaps, tail, seed):
    """The original's `quantile` levels for featuremaps (N, h, w, U) under torch seed `seed`."""
    sketch = QuantileSketch(featuremaps.shape[-1], seed)
    sketch.add(featuremaps.reshape(-1, featuremaps.shape[-1]))
    return quantile(*sketch.summary(), 1.0 - tail)
