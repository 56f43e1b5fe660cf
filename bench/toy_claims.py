"""The paper's causal claims in miniature, measured on the toy world through main.py.

    python bench/toy_claims.py [--dissection=runs/toy] [--layer=layer4] [--eval_samples=200] [--ace_steps=300]
        [--insert_value=quantile]

Runs, through the command line a user would type (each step skipped when its
output already exists, so a second run only prints):

1. the toy dissection (configs/toy.cfg) if --dissection has none;
2. the alpha search for 'tree' and for 'door' at --layer (`--mode=ace`);
3. ablation of the top-20 alpha-ranked tree units vs 20 random units on
   held-out samples (`--mode=ablate`);
4. door units inserted at every position of held-out samples, the effect
   grouped by the class already there (`--mode=insert`);
5. the tracing of that insertion through the later layers (`--mode=trace`).

Then prints each claim with its measured figure and PASS/FAIL:
- ablating 20 alpha-ranked units removes >= 50% of tree pixels; 20 random
  units remove <= 10% (mean over the random draws);
- door pixels added per insertion on building walls >= 3x those in the sky;
- the tracing plot's path and its per-layer figures.

Units are inserted at their 0.99 quantile on the class's pixels by default
(`--insert_value=quantile`); at the reference's mean activation a door
insertion at one 8x8 cell of the toy GAN adds less than one door pixel
anywhere (the README gives both).
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_py(*flags):
    """Runs `python main.py FLAGS` from the repository root; stops on failure."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def load(path):
    with open(path) as f:
        return json.load(f)


def ensure(path, *flags):
    """Runs main.py with `flags` unless `path` already exists; returns the JSON at `path`."""
    if not os.path.exists(path):
        main_py(*flags)
    return load(path)


def verdict(ok):
    return "PASS" if ok else "FAIL"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dissection", default="runs/toy")
    parser.add_argument("--flagfile", default="configs/toy.cfg")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--eval_samples", type=int, default=200)
    parser.add_argument("--context_samples", type=int, default=8)
    parser.add_argument("--random_draws", type=int, default=5)
    parser.add_argument("--ace_steps", type=int, default=300)
    parser.add_argument("--insert_value", default="quantile", help="mean or quantile (see --helpfull of main.py)")
    args = parser.parse_args()
    dissection = os.path.join(ROOT, args.dissection)
    # The causal modes read the dissection in --outdir and write under it (OUTDIR/ace/tree/...).
    common = [f"--flagfile={os.path.join(ROOT, args.flagfile)}", f"--outdir={dissection}", f"--layer={args.layer}"]
    ensure(os.path.join(dissection, "dissect.json"), "--mode=dissect", *common[:2])
    for name in ("tree", "door"):
        ensure(os.path.join(dissection, "ace", name, "ace.json"), "--mode=ace", f"--class_name={name}",
               f"--ace_steps={args.ace_steps}", f"--insert_value={args.insert_value}", *common)
    ablation = ensure(os.path.join(dissection, "ablate", "tree", "ablation.json"), "--mode=ablate",
                      "--class_name=tree", "--ablate_counts=20", f"--eval_samples={args.eval_samples}",
                      f"--random_draws={args.random_draws}", *common)
    insertion = ensure(os.path.join(dissection, "insert", "door", "insert.json"), "--mode=insert",
                       "--class_name=door", f"--context_samples={args.context_samples}", *common)
    trace_json = os.path.join(dissection, "trace", "door", "trace.json")
    trace = ensure(trace_json, "--mode=trace", "--class_name=door", f"--context_samples={args.context_samples}",
                   *common)

    print(f"\nThe paper's claims on the toy world ({args.layer}; held-out seed {ablation['seed']}):")
    n = ablation["counts"].index(20)
    by_alpha, by_random = ablation["curves"]["ace"][n], ablation["random"]["mean"][n]
    print(f"  ablating the top-20 alpha-ranked tree units removes {by_alpha:.1%} of tree pixels "
          f"(target >= 50%): {verdict(by_alpha >= 0.5)}")
    print(f"  ablating 20 random units removes {by_random:.1%} on average over {len(ablation['random']['draws'])} "
          f"draws (target <= 10%): {verdict(by_random <= 0.1)}")
    if "iou" in ablation["curves"]:
        print(f"  (top-20 IoU-ranked units remove {ablation['curves']['iou'][n]:.1%})")
    groups = {g["class"]: g for g in insertion["by_context"]}
    wall, sky = groups.get("building"), groups.get("sky")
    if wall and sky:
        on_wall, in_sky = wall["mean_pixels_added"], sky["mean_pixels_added"]
        ratio = f"{on_wall / in_sky:.1f}x" if in_sky > 0 else "none in the sky"
        print(f"  inserting {len(insertion['units'])} door units at one position adds {on_wall:.2f} door pixels "
              f"on buildings ({wall['positions']} positions) vs {in_sky:.2f} in the sky ({sky['positions']} "
              f"positions): {ratio} (target >= 3x): {verdict(on_wall > 0 and on_wall >= 3 * max(in_sky, 0))}")
    else:
        print(f"  insertion: no {'building' if not wall else 'sky'} positions among the samples: FAIL")
    print(f"  tracing: {trace_json.replace('.json', '.svg')} "
          f"({trace['insertions']['visible']} visible, {trace['insertions']['invisible']} invisible insertions)")
    for name, visible, invisible in zip(trace["layers"], trace["visible"], trace["invisible"]):
        fmt = lambda v: "   -  " if v is None else f"{v:.4f}"
        print(f"    {name:>10}: visible {fmt(visible)}  invisible {fmt(invisible)}")


if __name__ == "__main__":
    main()
