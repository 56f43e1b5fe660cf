"""Imports every mode module so that each registers itself and its flags."""
# flake8: noqa: F401
from jaxdissect.cli import generate  # noqa: F401
from jaxdissect.cli import train_toy  # noqa: F401
from jaxdissect.cli import segment  # noqa: F401
from jaxdissect.cli import dissect  # noqa: F401
from jaxdissect.cli import paint  # noqa: F401
from jaxdissect.cli import causal  # noqa: F401
from jaxdissect.cli import analyses  # noqa: F401
