"""The replay of the original tool's quantile sketch (jaxdissect.dissection.original_sketch).

Its fidelity to the original is checked on the fixture run in
test_readout_fidelity.py; here, its pieces against independent references.
"""
import numpy as np

from jaxdissect.dissection import original_sketch


def test_bits_are_the_low_bits_of_the_mersenne_twister_after_the_loader_draws():
    outputs = np.random.RandomState(5).randint(0, 2 ** 32, size=2 + 40000, dtype=np.uint32)
    bits = original_sketch.TorchBits(5)
    assert [bits() for _ in range(40000)] == list(outputs[2:] & 1)
    resumed = original_sketch.TorchBits(5, used=17000)
    assert [resumed() for _ in range(3000)] == list(outputs[2 + 17000:2 + 20000] & 1)


def test_a_sketch_that_never_compacts_gives_the_midpoint_quantiles():
    values = np.random.RandomState(0).standard_normal((1000, 3)).astype(np.float32)
    sketch = original_sketch.QuantileSketch(3, seed=0)
    sketch.add(values)
    for q in (0.01, 0.5, 0.99):
        np.testing.assert_allclose(original_sketch.quantile(*sketch.summary(), q),
                                   np.quantile(values.astype(np.float64), q, axis=0, method="hazen"), rtol=1e-6)


def test_a_checkpointed_and_resumed_sketch_equals_one_fed_at_once():
    values = np.random.RandomState(1).gamma(2.0, size=(40000, 4)).astype(np.float32)
    whole = original_sketch.QuantileSketch(4, seed=2)
    whole.add(values)
    assert len(whole.buffers) >= 4 and whole.random_bit.used > 20      # several levels, many compactions
    first = original_sketch.QuantileSketch(4, seed=2)
    first.add(values[:13331])
    resumed = original_sketch.QuantileSketch.from_arrays(first.to_arrays())
    resumed.add(values[13331:])
    for a, b in zip(whole.summary(), resumed.summary()):
        np.testing.assert_array_equal(a, b)
    level = original_sketch.quantile(*whole.summary(), 0.99)
    tail = (values > level).mean(axis=0)
    assert np.all(np.abs(tail - 0.01) < 0.003), tail       # a sketch, near the exact quantile
