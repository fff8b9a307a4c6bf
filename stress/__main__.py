"""``python -m stress``: run the stress harness."""

from __future__ import annotations

import sys

from stress.run import main

if __name__ == "__main__":
    sys.exit(main())
