"""Moved to :mod:`lockstore.web.stripes`: this name is kept for code written against lockstore 0.1."""

from __future__ import annotations

import warnings

from .web.stripes import *  # noqa: F403
from .web.stripes import __all__  # noqa: F401

warnings.warn(
    "lockstore.stripes moved to lockstore.web.stripes; import it from there", DeprecationWarning, stacklevel=2
)
