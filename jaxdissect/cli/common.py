"""Flags shared by several modes, and helpers to validate them."""
import os

from absl import flags

from jaxdissect.errors import UserError
from jaxdissect.segmentation.labels import SEGDIVS

flags.DEFINE_string("generator", None, "Converted generator folder (from convert/proggan.py or weights/toy/generator).")
flags.DEFINE_string("segmenter", None, "Converted segmenter folder (from convert/upernet.py or weights/toy/segmenter).")
flags.DEFINE_string("outdir", None, "Output folder of the run.")
flags.DEFINE_integer("batch_size", 8, "Samples per batch (split across all devices).")
flags.DEFINE_integer("seed", 1, "Global random seed; results do not depend on the device count.")
flags.DEFINE_string("dissection", None, "ace, analyses, paint: a finished dissection folder (default: --outdir, "
                    "so the dissection's flagfile works as is).")
flags.DEFINE_string("out", None, "generate, segment: the .npz file to write.")
flags.DEFINE_integer("downsample", 1, "Segmentations are (H // downsample, W // downsample) for H x W images.")
flags.DEFINE_enum("segdiv", "undivided", SEGDIVS,
                  "'quad' adds the upp segmenter's top/bottom and left/right object quarters as classes.")

FLAGS = flags.FLAGS


def require(*names):
    """Raises UserError naming the first of the flags `names` that is unset."""
    for name in names:
        if FLAGS[name].value in (None, ""):
            raise UserError(f"--{name} is required for --mode={FLAGS.mode}")


def dissection_dir():
    """The finished dissection a mode reads: --dissection, else --outdir (the dissection's flagfile)."""
    folder = FLAGS.dissection or FLAGS.outdir
    if not folder:
        raise UserError(f"--dissection is required for --mode={FLAGS.mode} (a finished dissection folder)")
    return folder


def existing_file(flag_name):
    path = FLAGS[flag_name].value
    if not os.path.isfile(path):
        raise UserError(f"--{flag_name}={path}: no such file")
    return path


def run_record():
    """What reproduces a run: the exact flags, software versions and devices."""
    import platform

    import flax
    import jax
    import numpy as np
    import optax
    return {"command": "python main.py " + " ".join(FLAGS[name].serialize() for name in sorted(_set_flags())),
            "flags": {name: _jsonable(FLAGS[name].value) for name in sorted(_set_flags())},
            "versions": {"python": platform.python_version(), "jax": jax.__version__,
                         "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__},
            "devices": {"platform": jax.devices()[0].platform, "count": jax.device_count(),
                        "processes": jax.process_count()}}


def write_run_record(outdir):
    """Writes OUTDIR/run.json (see `run_record`) from process 0."""
    import jax

    from jaxdissect.io import files
    if jax.process_index() == 0:
        files.save_json(os.path.join(outdir, "run.json"), run_record())


def _set_flags():
    """Flags given on the command line or in a flagfile (plus --mode)."""
    return [name for name in FLAGS if FLAGS[name].present and name not in ("flagfile", "verbosity")]


def _jsonable(value):
    return list(value) if isinstance(value, (list, tuple)) else value


flags.DEFINE_string("coordinator", None, "Multi-host: address:port of process 0's coordinator (e.g. 10.0.0.1:1234). "
                    "With --num_processes and --process_id; on TPU VMs and SLURM use --distributed=auto instead.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (hosts) in the run.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0 .. num_processes-1.")
flags.DEFINE_enum("distributed", "off", ["off", "auto", "manual"],
                  "Multi-host: 'auto' lets JAX detect the cluster (TPU VM slices, SLURM); 'manual' uses "
                  "--coordinator/--num_processes/--process_id (set implicitly when --coordinator is given).")


def init_distributed():
    """Joins the multi-host run the flags describe (before any JAX computation)."""
    import jax
    mode = "manual" if FLAGS.coordinator and FLAGS.distributed == "off" else FLAGS.distributed
    if mode == "off":
        return
    if mode == "auto":
        jax.distributed.initialize()
        return
    require("coordinator", "num_processes", "process_id")
    if not 0 <= FLAGS.process_id < FLAGS.num_processes:
        raise UserError(f"--process_id={FLAGS.process_id}: must be in 0 .. {FLAGS.num_processes - 1}")
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts need a collectives backend
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator, num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
