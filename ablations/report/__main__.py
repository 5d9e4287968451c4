"""``python -m ablations.report SUITE_DIR``: `ablations.report.report.main`."""

import sys

from ablations.report.report import main

sys.exit(main())
