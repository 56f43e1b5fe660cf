"""jaxdissect entry point: python main.py --mode=MODE [--flagfile=configs/...] [flags].

`python main.py --help` lists every mode and flag.
"""
import sys

from absl import app, flags, logging

from jaxdissect import cli
from jaxdissect.cli import all_modes, common  # noqa: F401  (registers the modes and their flags)
from jaxdissect.errors import UserError

flags.DEFINE_string("mode", None, "What to run; one of the modes listed in --help.")
FLAGS = flags.FLAGS
for _module in [common] + [sys.modules[run.__module__] for _, run in cli.MODES.values()]:
    flags.adopt_module_key_flags(_module)  # so that --help lists every mode's flags


def mode_list():
    return "\n".join(f"  {name:16s} {text}" for name, (text, _) in sorted(cli.MODES.items()))


def main(argv):
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every step at INFO; --verbosity=0 shows it
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.mode not in cli.MODES:
        print(f"error: unknown --mode={FLAGS.mode}; valid modes:\n{mode_list()}", file=sys.stderr)
        return 2
    try:
        common.init_distributed()
        cli.MODES[FLAGS.mode][1]()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.modules["__main__"].__doc__ = __doc__ + "\nModes:\n" + mode_list()
    app.run(lambda argv: sys.exit(main(argv)))
