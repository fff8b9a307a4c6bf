"""Moved to :mod:`lockstore.remote.postgres`: this name is kept for code written against lockstore 0.1."""

from __future__ import annotations

import warnings

from ..remote.postgres import *  # noqa: F403
from ..remote.postgres import __all__  # noqa: F401

warnings.warn(
    "lockstore.backends.postgres moved to lockstore.remote.postgres; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
