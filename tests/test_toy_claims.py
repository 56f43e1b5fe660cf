"""The paper's causal claims in miniature on the shipped toy models (weights/toy), through bench/toy_claims.py
with the defaults (the original's: --ace_region=location search, --ablate_region=location evaluation), fixed
seeds and reduced samples: each training corpus is the best 128 of 512 samples, 60 Adam steps of 8 samples
of each.

The random-unit and door claims hold (the door claim only here: at full
settings the presence-weighted insertion value adds no doors; see the
README). The tree claim does not, here or at the original's full settings:
ablated one cell at a time, as the original evaluates it, the top 20
alpha-ranked tree units remove 14.4% of the tree there (4.8% at full
settings; the top 60 of 128 remove 31%); zeroed over the whole image they
add trees (99% here, 108% at full settings). The search works at its own
cells (the tree score left there falls from 0.93 to 0.27 with the continuous
alpha), but the toy GAN draws its trees with many units at once: 41 of 128
end at alpha = 1 at full settings, and the 20 units that remove the most
tree on their own (`--rankings=effect`) remove 41.7% together, so no
ranking we know of reaches the bar one cell at a time on this GAN. The
README gives the figures; the test marks the claim as an expected failure,
so that it says so the day the claim starts to hold.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINIATURE = ["--dissect_samples=1024", "--ace_search_samples=512", "--ace_train_samples=128", "--ace_steps=60",
             "--ace_batch_size=8", "--eval_samples=64", "--random_draws=3", "--context_samples=6", "--effect_samples=0",
             "--no-trace"]


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    summary = root / "claims.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "toy_claims.py"), f"--root={root}",
                             f"--summary={summary}", *MINIATURE], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(summary) as f:
        return json.load(f)


@pytest.mark.xfail(strict=True, reason="on the toy GAN the top 20 alpha tree units, ablated one cell at a time, "
                                       "remove 14.4% of the tree there (4.8% at full settings)")
def test_top_20_alpha_tree_units_remove_half_the_trees(claims):
    assert claims["ace_region"] == "location" and claims["ablate_region"] == "location"
    assert claims["tree_removed_by_alpha"] >= 0.5


def test_20_random_units_remove_at_most_a_tenth(claims):
    assert claims["tree_removed_by_random"] <= 0.1


def test_doors_go_on_buildings_not_in_the_sky(claims):
    assert claims["sky_positions"] >= 100
    assert claims["door_on_building"] > 0
    assert claims["door_on_building"] >= 3 * max(claims["door_in_sky"], 0.0)
