"""The toy generator's fidelity measures against brute force and the world itself."""
import jax
import numpy as np

from jaxdissect.toyworld import fidelity, world


def brute_door_context(labels, door, building):
    on_wall = doors = 0
    for n, y, x in zip(*np.nonzero(labels == door)):
        doors += 1
        above = y - 1
        while above >= 0 and labels[n, above, x] == door:
            above -= 1
        on_wall += above >= 0 and labels[n, above, x] == building
    return on_wall, doors


def test_door_context_equals_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.choice([1, 6, 9, 9, 3], size=(5, 12, 9))
    assert fidelity.door_context(labels, door=9, building=6) == brute_door_context(labels, 9, 6)


def test_rendered_doors_are_on_walls():
    _, labels = world.render(jax.random.PRNGKey(5), 128)
    on_wall, doors = fidelity.door_context(np.asarray(labels))
    assert doors > 1000 and on_wall / doors > 0.95  # the rest are doors partly hidden by trees
