"""A fresh clone passes its fixture-backed tests with nothing beside it.

Clones this repository's HEAD into an empty temporary folder (no shared/
or anything else beside it) and runs there a subset of the tests that read
tests/fixtures: together they open every kind of fixture file (the three
.pth files, both ProGAN goldens and recipes, the UPerNet labels, goldens,
seeded weights and images, the dissection samples and the original tool's
labels). About 45 s on this project's 2-core CPU.
"""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE_TESTS = (
    "tests/test_pth_reader.py::test_fixture_files_hold_the_same_weights",
    "tests/test_convert_proggan.py::test_converted_small_model_matches_golden",
    "tests/test_convert_proggan.py::test_infer_sizes_of_the_full_configurations",
    "tests/test_proggan.py::test_full_model_matches_golden",
    "tests/test_segmenter.py::test_upp_label_space_matches_wrapper",
    "tests/test_segmenter.py::test_upp_merge_reproduces_wrapper_segmentation",
    "tests/test_segmenter.py::test_upp_class_score_reproduces_predict_single_class",
    "tests/test_segmenter.py::test_flat_merge_and_class_score",
    "tests/test_segmenter.py::test_ade_preprocess_matches",
    "tests/test_segmenter.py::test_segment_end_to_end_on_seeded_weights",
    "tests/test_upernet.py::test_prroi_weights_match_readme_table",
    "tests/test_readout_fidelity.py::test_iqr_labels_match_the_original",
)


def git(*args, cwd=REPO):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def clone(tmp_path):
    """A clone of HEAD in an otherwise empty folder."""
    if shutil.which("git") is None or not os.path.exists(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    head = git("rev-parse", "HEAD").strip()
    dst = tmp_path / "jaxdissect"
    git("clone", "--quiet", "--no-checkout", REPO, str(dst))
    git("checkout", "--quiet", head, cwd=dst)
    assert os.listdir(tmp_path) == ["jaxdissect"]
    return dst


def test_fixture_backed_tests_pass_in_a_fresh_clone(clone):
    env = dict(os.environ, PYTHONPATH=str(clone))  # the clone's package, not this checkout's
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           *FIXTURE_TESTS], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-1000:]
