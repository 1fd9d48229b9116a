"""``python -m repux`` (and ``PythonSlicer -m repux``) runs the command line."""

from __future__ import annotations

import sys

from repux.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
