"""The paper's causal claims in miniature on the shipped toy models (weights/toy), through bench/toy_claims.py
with the default objective (--ace_region=location), fixed seeds and reduced samples.

The tree search makes 450 Adam steps of 2 samples: an Adam step moves each
alpha by about the learning rate (0.01) at most, and the units of highest IoU
start at alpha near 1 yet add trees when ablated (the top 20 by IoU: -106%),
so they need a few hundred steps to leave the top 20. Measured: 60 steps of 8
samples remove 29% of tree pixels, 160 of 4 48%, 300 of 4 51%, 450 of 2 55%.
The margin is thin: with the insertion values scaled by 1 +- 1e-6 (float
noise, to which the search's gradient is sensitive; see the README's Scale
section) 450 steps of 2 remove 51.3% and 52.0%, and 600 steps of 2 50.7% to
53.8%, so another CPU or XLA build may land under the bar. Since the
dissection's bins are placed by tail fraction (its IoUs, which start the
alphas, moved by about 0.002), the same search removes 47.5%: the tree claim
is an expected failure again.
The door claim holds after 60 steps of 8, the door search's length here.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINIATURE = ["--dissect_samples=1024", "--ace_steps=450", "--ace_batch_size=2", "--door_ace_steps=60",
             "--door_ace_batch_size=8", "--ace_prior_samples=256",
             "--eval_samples=64", "--random_draws=3", "--context_samples=6", "--no-trace"]


@pytest.fixture(scope="module")
def claims(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    summary = root / "claims.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if "JAXDISSECT_TEST_XLA_CACHE" in env:
        env["JAX_COMPILATION_CACHE_DIR"] = env["JAXDISSECT_TEST_XLA_CACHE"]
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "toy_claims.py"), f"--root={root}",
                             f"--summary={summary}", *MINIATURE], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(summary) as f:
        return json.load(f)


@pytest.mark.xfail(strict=True, reason="47.5% here since the dissection's bins are placed by tail fraction (the "
                                       "IoU that starts each alpha moved slightly); 54.6% with equal-width bins")
def test_top_20_alpha_tree_units_remove_half_the_trees(claims):
    assert claims["ace_region"] == "location"
    assert claims["tree_removed_by_alpha"] >= 0.5


def test_20_random_units_remove_at_most_a_tenth(claims):
    assert claims["tree_removed_by_random"] <= 0.1


def test_doors_go_on_buildings_not_in_the_sky(claims):
    assert claims["sky_positions"] >= 100
    assert claims["door_on_building"] > 0
    assert claims["door_on_building"] >= 3 * max(claims["door_in_sky"], 0.0)
