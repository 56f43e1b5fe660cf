"""The paper's causal claims in miniature, measured on the toy world through main.py.

    python bench/toy_claims.py [--ace_region=location] [--insert_value=presence] [--ace_steps=500]
        [--ace_batch_size=20] [--ace_search_samples=10000] [--ace_train_samples=1000] [--door_ace_steps=N]
        [--door_ace_batch_size=N] [--ablate_region=location] [--eval_samples=200] [--effect_samples=64]
        [--context_samples=8]
        [--root=runs/claims]
        [--summary=FILE]

Runs, through the command line a user would type:

1. the toy dissection of --layer (--flagfile, configs/toy.cfg: 10,000 samples);
2. the alpha search for 'tree' and for 'door' at --layer (`--mode=ace`;
   --door_ace_steps and --door_ace_batch_size give the door search its own
   length);
3. ablation of the top-20 alpha-ranked tree units, the top-20 IoU-ranked
   ones, unless --effect_samples=0 the top 20 by their own effect (each unit
   ablated alone on --effect_samples other samples) and 20 random units, on
   held-out samples (`--mode=ablate`; by default the original's evaluation,
   one present cell at a time);
4. door units inserted at every position of held-out samples, the effect
   grouped by the class already there (`--mode=insert`);
5. unless --no-trace, the tracing of that insertion through the later layers
   (`--mode=trace`).

Each step runs in its own folder under --root, named by the step and a hash
of its flags (those of the steps it reads included, and the flagfile's
text), so a changed flag reruns exactly the steps it affects and a rerun with
the same flags reuses every output. Then it prints each claim with its
measured figure and PASS/FAIL, and writes them to --summary (JSON):

- ablating the top-20 alpha-ranked tree units removes >= 50% of tree pixels;
  20 random units remove <= 10% (mean over the random draws);
- door pixels added per insertion on buildings >= 3x those in the sky, with
  the sky figure measured on at least MIN_SKY_POSITIONS positions (every
  context class is printed with its figure and position count);
- the tracing plot's path and its per-layer figures;
- each search's held-out evaluation (ace.json's 'evaluation'), printed.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

from jaxdissect.causal.concept import evaluation_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_SKY_POSITIONS = 100
DONE = "step_flags.json"


def main_py(*flags):
    """Runs `python main.py FLAGS` from the repository root; stops on failure."""
    command = [sys.executable, os.path.join(ROOT, "main.py"), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT)
    print(f"  ({time.time() - started:.0f} s)", flush=True)


def step_folder(root, name, flags, flagfile_text):
    """ROOT/NAME-HASH, HASH a digest of `flags` (which hold the paths of the steps read, themselves keyed)
    and of the flagfile's text."""
    digest = hashlib.sha256(json.dumps([name, flagfile_text, *flags]).encode()).hexdigest()[:12]
    return os.path.join(root, f"{name}-{digest}")


def run_step(root, flagfile, name, *flags):
    """Runs main.py with --flagfile, `flags` and --outdir=the step's folder, unless a finished run with the
    same flags is there; returns the folder."""
    with open(flagfile) as f:
        flags = (f"--flagfile={flagfile}", *flags)
        folder = step_folder(root, name, flags, f.read())
    marker = os.path.join(folder, DONE)
    if not os.path.isfile(marker):
        main_py(*flags, f"--outdir={folder}")
        with open(marker, "w") as f:
            json.dump(list(flags), f)
    return folder


def load(path):
    with open(path) as f:
        return json.load(f)


def verdict(ok):
    return "PASS" if ok else "FAIL"


def ablation_claims(ablation):
    n = ablation["counts"].index(20)
    by_alpha, by_random = ablation["curves"]["ace"][n], ablation["random"]["mean"][n]
    by_iou = ablation["curves"]["iou"][n] if "iou" in ablation["curves"] else None
    by_effect = ablation["curves"]["effect"][n] if "effect" in ablation["curves"] else None
    return {"tree_removed_by_alpha": by_alpha, "tree_removed_by_iou": by_iou, "tree_removed_by_effect": by_effect,
            "tree_removed_by_random": by_random,
            "random_draws": len(ablation["random"]["draws"]),
            "alpha_pass": by_alpha >= 0.5, "random_pass": by_random <= 0.1}


def door_claims(insertion):
    """The door-context verdict: buildings >= 3x sky, the sky measured on >= MIN_SKY_POSITIONS positions."""
    groups = {g["class"]: g for g in insertion["by_context"]}
    wall, sky = groups.get("building"), groups.get("sky")
    on_wall = wall["mean_pixels_added"] if wall else None
    in_sky = sky["mean_pixels_added"] if sky else None
    sky_positions = sky["positions"] if sky else 0
    ok = (wall is not None and sky_positions >= MIN_SKY_POSITIONS and on_wall > 0
          and on_wall >= 3 * max(in_sky, 0.0))
    return {"door_by_context": insertion["by_context"], "door_on_building": on_wall, "door_in_sky": in_sky,
            "sky_positions": sky_positions, "door_pass": ok}


def print_claims(claims, layer):
    print(f"\nThe paper's claims on the toy world ({layer}, --ace_region={claims['ace_region']}, "
          f"--insert_value={claims['insert_value']}, --ablate_region={claims['ablate_region']}):")
    print(f"  ablating the top-20 alpha-ranked tree units removes {claims['tree_removed_by_alpha']:.1%} of tree "
          f"pixels (target >= 50%): {verdict(claims['alpha_pass'])}")
    print(f"  ablating 20 random units removes {claims['tree_removed_by_random']:.1%} on average over "
          f"{claims['random_draws']} draws (target <= 10%): {verdict(claims['random_pass'])}")
    if claims["tree_removed_by_iou"] is not None:
        print(f"  (top-20 IoU-ranked units remove {claims['tree_removed_by_iou']:.1%})")
    if claims["tree_removed_by_effect"] is not None:
        print(f"  (the 20 units of largest effect alone remove {claims['tree_removed_by_effect']:.1%})")
    print(f"  alpha exactly 0: {claims['alpha_zero']['tree']} tree and {claims['alpha_zero']['door']} door units")
    for name, evaluation in claims["ace_evaluation"].items():
        if evaluation:
            print(f"  {name}: the original's evaluation of the search on its held-out samples")
            print("    " + evaluation_summary(evaluation).replace("\n", "\n    "))
    print("  door pixels added by one insertion, by the class at the position:")
    for g in claims["door_by_context"]:
        print(f"    {g['class']:>10}: {g['mean_pixels_added']:7.3f} ({g['positions']} positions)")
    on_wall, in_sky = claims["door_on_building"], claims["door_in_sky"]
    print(f"  buildings {on_wall} vs sky {in_sky} on {claims['sky_positions']} sky positions (target >= 3x, "
          f"sky on >= {MIN_SKY_POSITIONS} positions): {verdict(claims['door_pass'])}")


def print_trace(trace_folder):
    trace = load(os.path.join(trace_folder, "trace.json"))
    print(f"  tracing: {os.path.join(trace_folder, 'trace.svg')} "
          f"({trace['insertions']['visible']} visible, {trace['insertions']['invisible']} invisible insertions)")
    for name, visible, invisible in zip(trace["layers"], trace["visible"], trace["invisible"]):
        fmt = lambda v: "   -  " if v is None else f"{v:.4f}"
        print(f"    {name:>10}: visible {fmt(visible)}  invisible {fmt(invisible)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/claims", help="folder of every step's outputs")
    parser.add_argument("--summary", help="the claims as JSON (default: ROOT/claims-REGION-INSERTVALUE.json)")
    parser.add_argument("--flagfile", default="configs/toy.cfg")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--dissect_samples", type=int, help="samples of the dissection (default: the flagfile's)")
    parser.add_argument("--ace_region", default="location", choices=["location", "image"])
    parser.add_argument("--ace_steps", type=int, default=500)
    parser.add_argument("--ace_batch_size", type=int, default=20)
    parser.add_argument("--door_ace_steps", type=int, help="the door search's steps (default: --ace_steps)")
    parser.add_argument("--door_ace_batch_size", type=int, help="the door search's batch (default: --ace_batch_size)")
    parser.add_argument("--ace_lr", type=float, default=0.01)
    parser.add_argument("--ace_search_samples", type=int, default=10000)
    parser.add_argument("--ace_train_samples", type=int, default=1000)
    parser.add_argument("--insert_value", default="presence", choices=["presence", "mean", "quantile"])
    parser.add_argument("--ablate_region", default="location", choices=["location", "image"])
    parser.add_argument("--eval_samples", type=int, default=200)
    parser.add_argument("--random_draws", type=int, default=5)
    parser.add_argument("--effect_samples", type=int, default=64,
                        help="samples on which each unit's own effect ranks the units (0: no effect ranking)")
    parser.add_argument("--context_samples", type=int, default=8)
    parser.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    root = os.path.abspath(os.path.join(ROOT, args.root))
    flagfile = os.path.join(ROOT, args.flagfile)
    samples = [f"--samples={args.dissect_samples}"] if args.dissect_samples else []
    dissection = run_step(root, flagfile, "dissect", "--mode=dissect", f"--layers={args.layer}", *samples)
    common = [f"--dissection={dissection}", f"--layer={args.layer}"]
    length = {"tree": (args.ace_steps, args.ace_batch_size),
              "door": (args.door_ace_steps or args.ace_steps, args.door_ace_batch_size or args.ace_batch_size)}
    ace = {name: run_step(root, flagfile, f"ace-{name}", "--mode=ace", *common, f"--class_name={name}",
                          f"--ace_region={args.ace_region}", f"--ace_steps={steps}", f"--ace_batch_size={batch}",
                          f"--ace_lr={args.ace_lr}", f"--ace_search_samples={args.ace_search_samples}",
                          f"--ace_train_samples={args.ace_train_samples}",
                          f"--insert_value={args.insert_value}")
           for name, (steps, batch) in length.items()}
    ace_json = {name: os.path.join(folder, "ace.json") for name, folder in ace.items()}
    effect = ["--rankings=ace,iou,effect", f"--effect_samples={args.effect_samples}"] if args.effect_samples else []
    ablate = run_step(root, flagfile, "ablate-tree", "--mode=ablate", *common, "--class_name=tree",
                      f"--ace={ace_json['tree']}", "--ablate_counts=20", f"--ablate_region={args.ablate_region}",
                      f"--eval_samples={args.eval_samples}",
                      f"--random_draws={args.random_draws}", *effect)
    insert = run_step(root, flagfile, "insert-door", "--mode=insert", *common, "--class_name=door",
                      f"--ace={ace_json['door']}", f"--context_samples={args.context_samples}")
    claims = {"ace_region": args.ace_region, "insert_value": args.insert_value, "ablate_region": args.ablate_region,
              "ace_steps_and_batch": {name: list(v) for name, v in length.items()},
              "eval_samples": args.eval_samples, "context_samples": args.context_samples,
              "alpha_zero": {name: load(path)["alpha_zero"] for name, path in ace_json.items()},
              "ace_evaluation": {name: load(path).get("evaluation") for name, path in ace_json.items()},
              "folders": {"dissection": dissection, **{f"ace_{k}": v for k, v in ace.items()},
                          "ablate": ablate, "insert": insert},
              **ablation_claims(load(os.path.join(ablate, "ablation.json"))),
              **door_claims(load(os.path.join(insert, "insert.json")))}
    print_claims(claims, args.layer)
    if args.trace:
        trace = run_step(root, flagfile, "trace-door", "--mode=trace", *common, "--class_name=door",
                         f"--ace={ace_json['door']}", f"--context_samples={args.context_samples}")
        claims["folders"]["trace"] = trace
        print_trace(trace)
    summary = args.summary or os.path.join(
        root, f"claims-{args.ace_region}-{args.insert_value}-{args.ablate_region}.json")
    os.makedirs(os.path.dirname(os.path.abspath(summary)), exist_ok=True)
    with open(summary, "w") as f:
        json.dump(claims, f, indent=1)
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()
