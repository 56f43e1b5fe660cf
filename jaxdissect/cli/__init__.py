"""Command-line modes for main.py.

Each mode lives in its own module under jaxdissect/cli/, defines its own absl
flags at import (shared ones are in `common`), and registers a `run()` with
`@register`. `all_modes` imports every mode module so `--help` lists them all.
"""
MODES = {}


def register(name, help_text):
    """Decorator: makes `run()` reachable as `python main.py --mode=name`."""
    def decorate(run):
        MODES[name] = (help_text, run)
        return run
    return decorate
