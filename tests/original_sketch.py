"""A numpy model of the randomised quantile sketch behind the original tool's `quantile` rule.

The original GAN Dissection code estimates each unit's top-1% level with a
streaming KLL-style sketch (its `RunningQuantile`, resolution 1024, fed the
raw featuremap cells in sample order). Written here from its description,
not its code, to explain a test figure: the sketch compacts a full buffer by
sorting it and keeping every other value from a random offset, and one
random bit serves all units at once, so its errors are shared by every unit
of a layer. One run's levels can sit at a 0.85% tail for every unit, and its
interpretable count moves with the seed.

Its random bits are those of torch's CPU generator: `torch.manual_seed(s)`
seeds the same Mersenne Twister as `numpy.random.RandomState(s)`; the bits
are the low bits of successive 32-bit outputs, refilled 1024 at a time, and
the original's data loader draws one 64-bit seed (two outputs) first.
"""
import math

import numpy as np

RESOLUTION = 1024
# The smallest buffer the sketch makes; the original caps it at 128 values.
SMALLEST_BUFFER = 128
# 32-bit outputs torch's data loader draws before the sketch's first bit.
LOADER_DRAWS = 2


class TorchBits:
    """The sketch's random bits under `torch.manual_seed(seed)`."""

    def __init__(self, seed, skip=LOADER_DRAWS, count=1 << 16):
        outputs = np.random.RandomState(seed).randint(0, 2 ** 32, size=skip + count, dtype=np.uint32)
        self.bits = (outputs[skip:] & 1).astype(int)
        self.next = 0

    def __call__(self):
        self.next += 1
        return self.bits[self.next - 1]


class QuantileSketch:
    """Buffers of sorted-and-halved values per level; a value at level i stands for 2**i inputs."""

    def __init__(self, units, random_bit, resolution=RESOLUTION):
        self.resolution = resolution
        self.random_bit = random_bit
        self.buffers = [np.zeros((units, resolution), np.float32)]
        self.filled = [0]
        self.extremes = np.stack([np.full(units, np.inf), np.full(units, -np.inf)], axis=1)

    def add(self, values):
        """values (n, units), in sample order."""
        start = 0
        while start < len(values):
            if self.filled[0] == self.buffers[0].shape[1]:
                self._compact()
            take = min(self.buffers[0].shape[1] - self.filled[0], len(values) - start)
            self.buffers[0][:, self.filled[0]:self.filled[0] + take] = values[start:start + take].T
            self.filled[0] += take
            start += take

    def quantile(self, q):
        """Each unit's q-quantile: linear interpolation over the values' weight midpoints."""
        self._see_extremes(self.buffers[0][:, :self.filled[0]])
        values = np.concatenate([self.extremes] + [b[:, :f] for b, f in zip(self.buffers, self.filled)], axis=1)
        weights = np.concatenate([np.zeros(2)] + [np.full(f, 2.0 ** i) for i, f in enumerate(self.filled)])
        order = np.argsort(values, axis=1, kind="stable")
        values, weights = np.take_along_axis(values, order, axis=1), weights[order]
        midpoints = (np.cumsum(weights, axis=1) - weights / 2) / weights.sum(axis=1, keepdims=True)
        return np.array([np.interp(q, m, v) for m, v in zip(midpoints, values)])

    def _see_extremes(self, values):
        if values.shape[1]:
            self.extremes[:, 0] = np.minimum(self.extremes[:, 0], values.min(axis=1))
            self.extremes[:, 1] = np.maximum(self.extremes[:, 1], values.max(axis=1))

    def _halve(self, level):
        """Level `level`'s values sorted, every other one kept from a random offset."""
        values = np.sort(self.buffers[level][:, :self.filled[level]], axis=1)
        self._see_extremes(values)
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
        assert capacity >= 2, "the sketch would start subsampling: not modelled"
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


def original_levels(featuremaps, tail, seed):
    """The original's `quantile` levels for featuremaps (N, h, w, U) under torch seed `seed`."""
    sketch = QuantileSketch(featuremaps.shape[-1], TorchBits(seed))
    sketch.add(featuremaps.reshape(-1, featuremaps.shape[-1]))
    return sketch.quantile(1.0 - tail)
