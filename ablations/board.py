"""``python -m ablations.board``: TensorBoard runs rebuilt from result.json.

The code is `ablations.report.board`; this module only forwards to its `main`, so that the documented command
keeps working.
"""

import sys

from ablations.report.board import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
