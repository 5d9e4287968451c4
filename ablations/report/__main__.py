"""``python -m ablations.report SUITE_DIR [--reference SPEC] [--margin M]`` (``lit-cifar-report``): write a suite's
report and print its table. Exit status: 0 written (or, in a folder this process cannot write, shown only), 1 not
written (e.g. a full disk), 2 a bad folder, ``--reference`` or ``--margin``, or the harness's extra missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from ablations import require_extra

PROG = "python -m ablations.report"


def main(argv: Optional[list[str]] = None) -> int:
    require_extra(PROG)
    from ablations.report.report import DEFAULT_REFERENCE, build_report, report_text, write_report
    from ablations.rules import MARGIN, check_margin
    from ablations.status import disk_full, report_problem

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("suite_dir", type=Path, help="a suite's folder under the logdir, e.g. logs/notebook")
    parser.add_argument(
        "--reference",
        metavar="SPEC",
        help=f"the spec every other is compared with (default: {DEFAULT_REFERENCE}, else the suite's first spec)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=MARGIN,
        help=f"equivalence margin in test accuracy: a difference within ±margin is 'equivalent' (default {MARGIN})",
    )
    args = parser.parse_args(argv)
    try:
        check_margin(args.margin)
    except ValueError as error:
        parser.exit(2, f"{PROG}: error: --{error}\n")
    if not args.suite_dir.is_dir():
        parser.exit(2, f"{PROG}: error: {args.suite_dir} is not a folder: give a suite's folder, e.g. logs/notebook\n")
    try:
        print(write_report(args.suite_dir, args.reference, margin=args.margin))
    except ValueError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    except OSError as error:
        if disk_full(error) or os.access(args.suite_dir, os.W_OK):
            print(f"error: {report_problem(error, args.suite_dir)}", file=sys.stderr)
            return 1
        print(report_text(build_report(args.suite_dir, args.reference, margin=args.margin)))  # shown, not written
        print(f"note: {args.suite_dir} is not writable: the table is shown, nothing is rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
