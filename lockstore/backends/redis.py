"""Moved to :mod:`lockstore.remote.redis`: this name is kept for code written against lockstore 0.1."""

from __future__ import annotations

import warnings

from ..remote.redis import *  # noqa: F403
from ..remote.redis import __all__  # noqa: F401

warnings.warn(
    "lockstore.backends.redis moved to lockstore.remote.redis; import it from there",
    DeprecationWarning,
    stacklevel=2,
)
