"""The paper's causal claims in miniature on the shipped toy models (weights/toy), through bench/toy_claims.py
with the default objective (--ace_region=location), fixed seeds and reduced steps and samples.

About 2.5 CPU-minutes. The tree claim does not hold in miniature (the README
gives the figures; at full settings it holds): it is an expected failure
that turns into a failure the day it passes, so that the README is updated.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MINIATURE = ["--dissect_samples=1024", "--ace_steps=60", "--ace_batch_size=8", "--ace_prior_samples=256",
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


@pytest.mark.xfail(strict=True, reason="measured -16.9% with 60 steps of 8 samples (35.7% with 200); "
                                       "55.4% at full settings (300 steps of 16)")
def test_top_20_alpha_tree_units_remove_half_the_trees(claims):
    assert claims["ace_region"] == "location"
    assert claims["tree_removed_by_alpha"] >= 0.5


def test_20_random_units_remove_at_most_a_tenth(claims):
    assert claims["tree_removed_by_random"] <= 0.1


def test_doors_go_on_buildings_not_in_the_sky(claims):
    assert claims["sky_positions"] >= 100
    assert claims["door_on_building"] > 0
    assert claims["door_on_building"] >= 3 * max(claims["door_in_sky"], 0.0)
