"""weights/toy/MANIFEST.json: how each shipped toy model was made, and a sha256 of every file.

    python -m jaxdissect.toyworld.manifest --weights=weights/toy --model=segmenter \\
        --workdir=runs/toy_seg --command="python main.py --mode=train_segmenter ..." \\
        --metrics='{"miou": 0.966}'

Each call records (or replaces) one model's entry: the training command, its
seed and steps (from the model's meta.json), the training wall-clock (from
the run's metrics.jsonl), the given metrics; then rehashes every file under
the weights folder. A model fine-tuned from the shipped one (its meta.json
names an `init_from`) keeps the entry of the model it started from, under
"fine_tuned_from".
"""
import argparse
import hashlib
import json
import os

import numpy as np

from jaxdissect.io import files

MANIFEST = "MANIFEST.json"


def file_hashes(folder):
    """{relative path: sha256} of every file below `folder` except the manifest itself."""
    hashes = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel != MANIFEST:
                with open(path, "rb") as f:
                    hashes[rel] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(hashes.items()))


def wall_clock_minutes(workdir, pause_seconds=600):
    """Minutes of training from the run's logged steps, leaving out pauses between resumed runs
    (gaps between consecutive log lines longer than `pause_seconds`)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        times = np.array([json.loads(line)["time"] for line in f if line.strip()])
    gaps = np.diff(times)
    return round(float(gaps[gaps <= pause_seconds].sum()) / 60, 1)


def record(weights, model, command, workdir, metrics):
    with open(os.path.join(weights, model, "meta.json")) as f:
        source = json.load(f)["source"]
    entry = {"command": command, "steps": source.get("steps"),
             "seed": source.get("config", {}).get("seed"), "wall_clock_minutes": wall_clock_minutes(workdir),
             "metrics": metrics}
    path = os.path.join(weights, MANIFEST)
    manifest = {"models": {}}
    if os.path.isfile(path):
        with open(path) as f:
            manifest = json.load(f)
    if source.get("init_from"):
        previous = manifest["models"].get(model, {})
        entry["fine_tuned_from"] = (previous.get("fine_tuned_from") if previous.get("command") == command
                                    else previous)
    manifest["models"][model] = entry
    manifest["files"] = file_hashes(weights)
    manifest["total_bytes"] = sum(os.path.getsize(os.path.join(weights, p)) for p in manifest["files"])
    files.save_json(path, manifest)
    return manifest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="weights/toy")
    parser.add_argument("--model", required=True, help="model folder name under --weights")
    parser.add_argument("--workdir", required=True, help="the training run's folder (metrics.jsonl)")
    parser.add_argument("--command", required=True, help="the training command, as run")
    parser.add_argument("--metrics", default="{}", help="JSON object of measured figures")
    args = parser.parse_args()
    manifest = record(args.weights, args.model, args.command, args.workdir, json.loads(args.metrics))
    print(f"{os.path.join(args.weights, MANIFEST)}: {len(manifest['files'])} files, "
          f"{manifest['total_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
