"""Copy the committed suites' report charts into ``docs/img/results/`` for the documentation site (mkdocs reads
only ``docs/``); the README links the charts under ``logs/`` itself. Run after rebuilding a committed report:

    python scripts/docs_figures.py
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The committed suites (logs/README.md) and the name their charts get on the site.
SUITES = {
    "replication/notebook": "replication",
    "factorial/full": "factorial",
    "factorial-half/full": "factorial-half",
    "factorial-quarter/full": "factorial-quarter",
    "precision/32-true/notebook": "precision-32-true",
    "precision/bf16-mixed/notebook": "precision-bf16-mixed",
    "gpu-h200/notebook": "gpu-h200-notebook",
    "gpu-h200/full": "gpu-h200-full",
}


def main() -> int:
    target = REPO / "docs" / "img" / "results"
    target.mkdir(parents=True, exist_ok=True)
    for suite, name in SUITES.items():
        for chart in sorted((REPO / "logs" / suite).glob("*.png")):
            shutil.copyfile(chart, target / f"{name}-{chart.name}")
    print(f"copied into {target.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
