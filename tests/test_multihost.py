"""Dissection (with the replayed original sketch), the alpha search and its held-out evaluation, the
insertion sweep and the ablation curves (one cell at a time) in 2 jax.distributed processes (2 CPU devices each, gloo
collectives on 127.0.0.1) give the results of a single process."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))

WORKER = """
import sys
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
import jax
if port != "single":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=process_id)
sys.path.insert(0, {tests!r})
import numpy as np, planted
from jaxdissect.causal import ablation, context, location, search
from jaxdissect.dissection import engine, sources
gen, seg = planted.PlantedGenerator(), planted.PlantedSegmenter()
settings = engine.DissectSettings(layers=("layer",), samples=100, batch_size=16, bins=128, top_k=5,
                                  checkpoint_every=2, checkpoint_minutes=0, original_sketch_seed=1)
source = sources.GeneratedSamples(gen, gen.init(), seg, None, settings.layers, 1, settings.seed)
(rs, js, (sketch_values, sketch_weights)), = engine.collect_statistics(source, settings, workdir + "/dissect").values()
ace_settings = search.AlphaSearchSettings(layer="layer", class_index=planted.THING, steps=6, batch_size=8,
                                          learning_rate=0.05, search_samples=32, train_samples=16, eval_samples=8)
alpha = search.search(gen, gen.init(), seg, None, ace_settings, np.full(planted.UNITS, 2.0),
                      np.linspace(0.2, 0.7, planted.UNITS), workdir + "/ace")
corpus = search.training_corpus(gen, gen.init(), seg, None, ace_settings, np.full(planted.UNITS, 2.0),
                                workdir + "/ace")
evaluation = location.evaluate(gen, gen.init(), seg, None, ace_settings, alpha, search.ranking(alpha, alpha),
                               np.full(planted.UNITS, 2.0), corpus)["unit_sets"]
sweep = context.insertion_sweep(gen, gen.init(), seg, None, "layer", [planted.PLANTED_UNIT, 1],
                                np.full(planted.UNITS, 2.0, np.float32), planted.THING, 4, 2, chunk=6)
off_grid = planted.OffGridGenerator()
curves = ablation.ablation_curves(off_grid, off_grid.init(), seg, None, "layer", planted.THING,
                                  {{"p": [planted.PLANTED_UNIT, 0, 1, 2, 4, 5]}}, [1, 2], 2, 9, 6, batch_size=4)
if process_id == 0:
    np.savez(workdir + "/result.npz", alpha=alpha, sketch_values=sketch_values, sketch_weights=sketch_weights,
             pixels_added=sweep["pixels_added"], score_change=sweep["score_change"],
             removed=curves["curves"]["p"], removed_random=curves["random"]["draws"],
             evaluation=[v for measures in evaluation.values() for v in measures.values()],
             **rs._asdict(), **js._asdict())
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_workers(workdir, processes, devices_per_process):
    script = WORKER.format(tests=TESTS)
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
    port = free_port() if processes > 1 else "single"
    workers = [subprocess.Popen([sys.executable, "-c", script, str(i), port, str(workdir)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(processes)]
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-3000:]
    return dict(np.load(workdir / "result.npz"))


def test_two_processes_equal_one(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = run_workers(tmp_path / "one", 1, 1)
    two = run_workers(tmp_path / "two", 2, 2)
    for key in one:
        if key in ("act_sum", "alpha", "score_change", "removed", "removed_random", "evaluation"):
            np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)


def test_main_py_dissection_in_two_processes_equals_one(tmp_path):
    """The README's multi-host flags: `main.py --mode=dissect --coordinator=... --num_processes=2
    --process_id=i` in two processes (2 devices each) writes the statistics and labels of one process.

    The models' float outputs differ in the last bits with the partitioning, so float statistics agree
    to float tolerance; the counts, and the labels drawn from them, exactly."""
    sys.path.insert(0, TESTS)
    from cli_helpers import REPO
    from tiny_models import write_tiny_generator, write_tiny_segmenter
    write_tiny_generator(str(tmp_path / "gen"))
    write_tiny_segmenter(str(tmp_path / "seg"))
    flags = ["--mode=dissect", f"--generator={tmp_path}/gen", f"--segmenter={tmp_path}/seg", "--layers=layer2,layer4",
             "--samples=24", "--batch_size=8", "--bins=32", "--top_k=3", "--report_images=1"]

    def main_py(outdir, devices, *extra):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        return subprocess.Popen([sys.executable, os.path.join(REPO, "main.py"), *flags, f"--outdir={outdir}",
                                 *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    port = free_port()
    runs = [main_py(tmp_path / "one", 1)]
    runs += [main_py(tmp_path / "two", 2, f"--coordinator=127.0.0.1:{port}", "--num_processes=2",
                     f"--process_id={i}") for i in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, "\n\n".join(output[-2000:] for output in outputs)
    for layer in ("layer2", "layer4"):
        one, two = (np.load(tmp_path / name / "stats" / f"{layer}.npz") for name in ("one", "two"))
        assert sorted(one.files) == sorted(two.files)
        for key in one.files:
            if one[key].dtype.kind == "f":   # the models' float rounding differs with the partitioning
                np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-6, err_msg=f"{layer} {key}")
            else:
                np.testing.assert_array_equal(one[key], two[key], err_msg=f"{layer} {key}")
    summaries = [json.loads((tmp_path / name / "dissect.json").read_text()) for name in ("one", "two")]
    for layer, one in summaries[0]["layers"].items():
        two = summaries[1]["layers"][layer]
        assert (one["labels"], one["interpretable_units"]) == (two["labels"], two["interpretable_units"])
        for a, b in zip(one["unit"], two["unit"]):
            exact = ("label", "category", "interpretable", "iou", "iqr", "agreement", "top_samples")
            assert {k: a[k] for k in exact} == {k: b[k] for k in exact}
            np.testing.assert_allclose([a["threshold"], *a["top_peaks"]], [b["threshold"], *b["top_peaks"]],
                                       rtol=1e-5)
    assert (tmp_path / "two" / "report.html").is_file()
