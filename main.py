"""jaxdissect entry point: python main.py --mode=MODE [--flagfile=configs/...] [flags].

`python main.py --help` lists every mode and flag.
"""
import sys

from absl import app, flags, logging

from jaxdissect import cli, progress
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
        print(f"error: unexpected arguments: {' '.join(argv[1:])} (flags are --name=value; see --help)",
              file=sys.stderr)
        return 2
    if FLAGS.mode not in cli.MODES:
        problem = "--mode is required" if FLAGS.mode is None else f"unknown --mode={FLAGS.mode}"
        print(f"error: {problem}; modes: {', '.join(sorted(cli.MODES))} (see --help)", file=sys.stderr)
        return 2
    try:
        common.validate_flags()
        common.init_distributed()
        cli.MODES[FLAGS.mode][1]()
    except UserError as e:
        print_error(str(e))
        return 2
    except OSError as e:  # a file-system failure no mode foresaw (e.g. a full disk): the path and the reason
        print_error(os_error_line(e))
        return 2
    return 0


def print_error(text):
    """'error: TEXT' on a line of its own (after an interrupted progress line)."""
    progress.end_line()
    print(f"error: {text}", file=sys.stderr)


def os_error_line(error):
    """'PATH: reason' for an OSError (both paths for a failed rename), else its text on one line."""
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    if paths and error.strerror:
        return f"{' -> '.join(map(str, paths))}: {error.strerror}"
    return " ".join(str(error).split())


def parse_flags(argv):
    """absl's flag parsing, with a bad flag (unknown, or a value of the wrong type) as one line and exit 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.modules["__main__"].__doc__ = __doc__ + "\nModes:\n" + mode_list()
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
