"""The README's commands run as written: every ```bash block (slow modes with reduced flags, outputs
under a temporary runs/ folder) and every ```python block, in order."""
import os
import re
import shlex
import subprocess
import sys
import urllib.request

import numpy as np

from cli_helpers import REPO, run_main
from jaxdissect.toyworld import fidelity

# Commands not run here, with the reason.
NOT_RUN = {"pip install": "installs the package", "python -m pytest": "the test suite itself",
           "python convert/": "needs the released .pth files", "configs/church.cfg": "needs the converted church models"}
# Flags appended to slow modes (a later flag wins over the flagfile's).
REDUCED = {"dissect": ["--samples=256"],
           "ace": ["--ace_steps=2", "--ace_batch_size=4", "--ace_search_samples=16", "--ace_train_samples=8"],
           "ablate": ["--eval_samples=8", "--random_draws=1", "--ablate_counts=1,2"],
           "insert": ["--context_samples=1"], "trace": ["--context_samples=1"]}


def readme_blocks(language):
    with open(os.path.join(REPO, "README.md")) as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), re.S)


def bash_commands():
    """Every command of the README's bash blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def runnable(words):
    """`words` with the slow modes' flags reduced (the toy flagfile's dissection to layer4), and the toy
    flagfile's --outdir spelled out (so that `localised` moves it)."""
    mode = next((w.split("=", 1)[1] for w in words if w.startswith("--mode=")), None)
    extra = REDUCED.get(mode, [])
    if "--flagfile=configs/toy.cfg" in words:
        extra = extra + (["--layers=layer4"] if mode == "dissect" else []) + ["--outdir=runs/toy"]
    return words + extra


def localised(words, runs):
    """Every 'runs/' in `words` pointing into the temporary folder `runs`."""
    return [w.replace("runs/", runs + "/") for w in words]


def check_paint(words):
    """Starts the paint command, reads /api/info from it, stops it."""
    process = subprocess.Popen([sys.executable, *words[1:], "--port=0"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        for line in process.stdout:
            output += line
            if "open http://" in line:
                url = line.split("open ")[1].split()[0]
                with urllib.request.urlopen(url + "api/info", timeout=60) as response:
                    assert response.status == 200
                return
        raise AssertionError(f"paint did not start: {output}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def check_generate_and_segment(runs, outputs):
    """The generate -> segment example: progress shown, images beyond [-1, 1] taken, the class names inside
    the .npz (not beside it), and >= 90% of the door pixels found on or directly below building pixels."""
    for mode in ("generate", "segment"):
        assert f"{mode} [" in outputs[mode] and "512/512 images" in outputs[mode], outputs[mode]
    written = os.listdir(runs)
    assert {"classes.npz", "samples.npz", "z.npy"} <= set(written) and "labels.json" not in written, written
    with np.load(os.path.join(runs, "samples.npz")) as samples:
        assert samples["image"].min() < -1 and samples["image"].max() > 1
    with np.load(os.path.join(runs, "classes.npz")) as saved:
        names = list(saved["names"])
        on_building, doors = fidelity.door_context(saved["segmentation"][:, 0], names.index("door"),
                                                   names.index("building"))
    assert doors > 1000 and on_building / doors >= 0.9, (on_building, doors)


def test_every_bash_command_of_the_readme_runs(tmp_path):
    runs = str(tmp_path / "runs")
    os.makedirs(runs)
    ran, outputs = [], {}
    for words in bash_commands():
        line = " ".join(words)
        if any(marker in line for marker in NOT_RUN):
            continue
        assert words[:2] in (["python", "main.py"], ["python", "-c"]), f"README command not covered: {line}"
        args = localised(runnable(words), runs)
        if "--mode=paint" in args:
            check_paint(args)
        elif words[1] == "-c":
            subprocess.run([sys.executable, *args[1:]], cwd=REPO, check=True)
        else:
            result = run_main(*args[2:])
            assert result.returncode == 0, (line, result.stderr[-3000:])
            outputs[args[2].split("=")[1]] = result.stderr
        ran.append(line)
    assert len(ran) >= 10, ran
    check_generate_and_segment(runs, outputs)


def test_every_python_block_of_the_readme_runs():
    for block in readme_blocks("python"):
        subprocess.run([sys.executable, "-c", block], cwd=REPO, check=True, timeout=300)
