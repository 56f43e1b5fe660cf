"""The pieces every training run shares: resumable checkpoints, metric logs, progress."""
import json
import os
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpoints:
    """Keeps the latest training states under WORKDIR/checkpoints (orbax)."""

    def __init__(self, workdir, keep=2):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, wait=True):
        """Saves `state` as `step`. With wait=False the files are written in the background (orbax
        copies the arrays first, so they may be donated right after); the next save waits for it."""
        self.manager.save(step, args=ocp.args.StandardSave(state))
        if wait:
            self.manager.wait_until_finished()

    def wait(self):
        """Returns once every background save has been written."""
        self.manager.wait_until_finished()

    def restore(self, template):
        """The latest state, shaped like `template`; `template` itself if there is none."""
        step = self.manager.latest_step()
        if step is None:
            return template
        return self.manager.restore(step, args=ocp.args.StandardRestore(template))


class MetricLog:
    """Appends one JSON object per logged step to WORKDIR/metrics.jsonl and prints progress."""

    def __init__(self, workdir, total_steps, name):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self.name = name
        self.started = time.time()
        self.first_step = None

    def log(self, step, metrics, items_per_step):
        metrics = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        now = time.time()
        if self.first_step is None:
            self.first_step, self.started = step, now
        done = step - self.first_step
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
        record = {"step": step, "time": now, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{self.name}] step {step}/{self.total_steps} {rate * items_per_step:.1f} items/s "
              f"eta {eta / 60:.1f} min {shown}", file=sys.stderr, flush=True)
