"""Flags shared by several modes, and helpers to validate them."""
import math
import os

from absl import flags

from jaxdissect.errors import UserError
from jaxdissect.segmentation.labels import SEGDIVS

flags.DEFINE_string("generator", None, "Converted generator folder (from convert/proggan.py, convert/stylegan2.py or "
                    "weights/toy/generator), or your own: module.path:factory or file.py:factory, a function "
                    "returning (generator, params) (README: Bring your own generator).")
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
flags.DEFINE_boolean("overwrite", False, "generate, segment: replace an existing --out or --png_dir that "
                     "is not one of this tool's outputs (ours are replaced without it).")

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


def validate_flags():
    """UserError for values no mode accepts: a float that is not finite, an emptied list flag
    (one whose default is not empty) and an empty item in a list (`--layers=layer4,`)."""
    for name in sorted(set(FLAGS)):
        flag = FLAGS[name]
        if not flag.present:
            continue
        if isinstance(flag.value, float) and not math.isfinite(flag.value):
            raise UserError(f"--{name}={flag.value}: must be a finite number")
        if isinstance(flag.value, list):
            if not flag.value and flag.default:
                raise UserError(f"--{name} is empty; give at least one value (default: {','.join(flag.default)})")
            if "" in flag.value:
                raise UserError(f"--{name}={','.join(flag.value)}: has an empty item")


def check_output_file(flag_name, keys):
    """UserError unless --FLAG's file can be written: not a folder, its folder writable, and if it exists
    one of ours (an .npz holding `keys`) or --overwrite is given."""
    from jaxdissect.io import files
    path = FLAGS[flag_name].value
    if os.path.isdir(path):
        raise UserError(f"--{flag_name}={path}: is a folder; give the .npz file to write")
    files.check_writable_folder(os.path.dirname(os.path.abspath(path)), flag_name, path)
    if os.path.lexists(path) and not FLAGS.overwrite and not files.npz_holds(path, keys):
        raise UserError(f"--{flag_name}={path}: exists and is not a --mode={FLAGS.mode} output; "
                        "give --overwrite to replace it")


def check_output_folder(flag_name, is_ours):
    """UserError unless --FLAG's folder can be written and, if it holds files, `is_ours(name)` holds for
    each of them or --overwrite is given."""
    from jaxdissect.io import files
    path = FLAGS[flag_name].value
    files.check_writable_folder(path, flag_name)
    if os.path.isdir(path) and not FLAGS.overwrite:
        foreign = sorted(name for name in os.listdir(path) if not is_ours(name))
        if foreign:
            raise UserError(f"--{flag_name}={path}: holds files not written by --mode={FLAGS.mode} "
                            f"(e.g. {foreign[0]}); give --overwrite to replace the folder")


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
