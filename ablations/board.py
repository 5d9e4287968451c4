"""``python -m ablations.board rebuild SUITE_DIR...``: TensorBoard runs rebuilt from result.json.

The code is `ablations.report.rebuild`; this module only forwards to its `main`, so that the documented command
keeps working.
"""

import sys

from ablations.report.rebuild import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
