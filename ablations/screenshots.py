"""``python -m ablations.screenshots``: the HParams views of TensorBoard as images.

The code is `ablations.report.screenshots`; this module only forwards to its `main`, so that the documented command
keeps working.
"""

import sys

from ablations.report.screenshots import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
