"""``python -m ablations.compare``: one suite run twice, compared spec by spec.

The code is `ablations.report.compare`; this module only forwards to its `main`, so that the documented command
keeps working.
"""

import sys

from ablations.report.compare import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
