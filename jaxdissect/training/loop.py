"""The pieces every training run shares: resumable checkpoints, metric logs, progress."""
import glob
import json
import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdissect.checkpoint import orbax_writes
from jaxdissect.io import files


class Checkpoints:
    """Keeps the latest training states under WORKDIR/checkpoints (orbax).

    Saves are synchronous: a failed one (e.g. on a full disk) raises an
    OSError naming the checkpoints folder and leaves no partial checkpoint
    behind; the earlier checkpoints stay, so a rerun resumes from the last.
    (Orbax's background saves, on such a failure, leave threads writing
    that hold the process up to minutes at exit.)
    """

    def __init__(self, workdir, keep=2):
        self.folder = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(self.folder, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state):
        """Saves `state` as `step`; returns once it is written."""
        try:
            with orbax_writes(self.folder):
                self.manager.save(step, args=ocp.args.StandardSave(state))
                # Nothing of the save (finalising, deleting older steps) may still run beside the caller's
                # next programs: on several processes that could interleave collectives differently.
                self.manager.wait_until_finished()
        except Exception:
            for unfinished in glob.glob(os.path.join(self.folder, "*" + ocp.path.atomicity.TMP_DIR_SUFFIX + "*")):
                shutil.rmtree(unfinished, ignore_errors=True)
            raise

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
        record = {"step": step, "time": now, **metrics}
        files.append_line(self.path, json.dumps(record))
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"[{self.name}] step {step}/{self.total_steps} {self.speed(step, now, items_per_step)} {shown}",
              file=sys.stderr, flush=True)

    def speed(self, step, now, items_per_step):
        """'R items/s eta M min', counted from the first logged step (which has none yet)."""
        if step == self.first_step:
            return "(rate and eta from the next log)"
        rate = (step - self.first_step) / max(now - self.started, 1e-9)
        return f"{rate * items_per_step:.1f} items/s eta {(self.total_steps - step) / rate / 60:.1f} min"
