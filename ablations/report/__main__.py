"""``python -m ablations.report SUITE_DIR [--reference SPEC] [--margin M]`` (also ``lit-cifar-report``): write a
suite's report (`ablations.report.report`) and print its table.

Exit status: 0 written (or, in a folder this process cannot write, shown only), 1 it could not be written (a full
disk: said in one line), 2 a bad folder, ``--reference`` or ``--margin``, or the harness's extra missing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

from ablations import require_extra

PROG = "python -m ablations.report"


def main(argv: Optional[list[str]] = None) -> int:
    require_extra(PROG)
    from ablations.report.report import DEFAULT_REFERENCE, write_report
    from ablations.rules import MARGIN, check_margin
    from ablations.status import disk_full, report_problem

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("suite_dir", type=Path, help="a suite's folder under the logdir, e.g. logs/notebook")
    parser.add_argument(
        "--reference",
        metavar="SPEC",
        help=f"the spec every other is compared with (default: {DEFAULT_REFERENCE}, or the suite's "
        "first spec if it has no pixel)",
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
        return _fail(f"--{error}")
    if not args.suite_dir.is_dir():
        return _fail(f"{args.suite_dir} is not a folder: give a suite's folder under the logdir, e.g. logs/notebook")
    try:
        print(write_report(args.suite_dir, args.reference, margin=args.margin))
    except ValueError as error:
        return _fail(str(error))
    except OSError as error:
        if disk_full(error) or os.access(args.suite_dir, os.W_OK):
            print(f"error: {report_problem(error, args.suite_dir)}", file=sys.stderr)
            return 1
        return _show_read_only(args.suite_dir, args.reference, args.margin)
    return 0


def _show_read_only(suite_dir: Path, reference: Optional[str], margin: float) -> int:
    """A suite folder this process cannot write (a read-only copy, another user's): print its table, write nothing."""
    from ablations.report.report import build_report, report_text

    report = build_report(suite_dir, reference, margin=margin)
    for problem in report.problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(report_text(report))
    print(
        f"note: {suite_dir} is not writable: the table is shown, results.md and the charts are not rewritten",
        file=sys.stderr,
    )
    return 0


def _fail(message: str) -> NoReturn:
    """A bad folder or --reference: one line on stderr, exit status 2 (as argparse, without the usage block)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
