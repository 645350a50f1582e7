"""``python -m worker_runtime ...``: the runtime's commands without the operator's entry point.

Used in worker images that do not install the console script, and by the subprocess tests.
"""

from __future__ import annotations

import sys

from worker_runtime import cli

if __name__ == "__main__":
    sys.exit(cli.main())
