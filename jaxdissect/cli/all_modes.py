"""Imports every mode module so that each registers itself and its flags."""
# One import per mode module, e.g.:
# from jaxdissect.cli import generate  # noqa: F401
from jaxdissect.cli import generate  # noqa: F401
from jaxdissect.cli import train_toy  # noqa: F401
from jaxdissect.cli import segment  # noqa: F401
