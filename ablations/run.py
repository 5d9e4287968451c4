"""``python -m ablations.run``: run every trial of a suite, resumably, and report mean +- std over seeds.

With no arguments it runs the notebook's study (suite ``notebook``) into ``logs/notebook/``. The flags are the fields
of `ablations.plan.Request`, which plans the trials and checks them; under ``--strategy ddp`` Lightning starts the
other ranks, which run this same command, and rank 0 decides for all. Exit status: 0 all done, 1 a trial failed,
2 bad arguments, 130 / 143 stopped by SIGINT / SIGTERM (finished trials are kept and listed).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from ablations import adaptive, require_extra
from ablations import plan as planning
from ablations.engines import make_executor
from ablations.plan import Plan, Request
from ablations.signals import Interrupted, die_with_parent, interrupts, quiet_lightning
from ablations.status import TrialState, TrialStatus, is_finished, read_trial, write_report_or_say_why
from ablations.suite import RunOptions, available_suites

if TYPE_CHECKING:  # torch and Lightning are imported only once the arguments are checked
    from ablations.trial import Ranks

__all__ = ["build_parser", "main", "request_of", "run_plan"]


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage block is for ``--help``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line: a flag per `Request` field, in its group, then the seeds rules (`ablations.adaptive`)."""
    parser = Parser(
        prog="python -m ablations.run",
        allow_abbrev=False,  # --epoch is a typo, not --epochs
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Shipped suites: {', '.join(available_suites())}. Exit status: 0 all done, 1 a trial failed, "
        "2 bad arguments, 130/143 stopped by SIGINT/SIGTERM.",
    )
    groups: dict[str, Any] = {}
    for f in fields(Request):
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        options = {k: v for k, v in f.metadata.items() if k != "group"}
        groups[group].add_argument("--" + f.name.replace("_", "-"), default=f.default, **options)
    adaptive.add_arguments(parser)
    return parser


def request_of(args: argparse.Namespace) -> Request:
    """The parsed command line as the `Request` it asks for."""
    return Request(**{f.name: getattr(args, f.name) for f in fields(Request)})


def ddp_ranks(options: RunOptions) -> Ranks:
    """This process's `Ranks` of a data-parallel sweep, started once for all trials (Lightning reruns this command)."""
    from lightning.fabric import Fabric

    from ablations.trial import Ranks

    fabric = Fabric(
        accelerator=options.accelerator, devices=options.devices, num_nodes=options.num_nodes, strategy=options.strategy
    )
    fabric.launch()
    return Ranks(fabric.global_rank, functools.partial(fabric.broadcast, src=0))


def run_plan(plan: Plan, ranks: Optional[Ranks] = None) -> list[TrialStatus]:
    """Run the plan's trials on the executor it asks for: their final `TrialStatus`, in trial order."""
    executor = make_executor(
        plan.request.engine,
        parallel=plan.parallel,
        gpus=plan.gpus,
        ranks=ranks,
        ray_address=plan.ray_address,
        max_retries=plan.request.max_retries,
    )
    return executor.run(plan.trials, plan.options)


def summarize(plan: Plan, states: Sequence[TrialStatus], seconds: float) -> int:
    """Write and print the suite's report and the sweep's counts: 1 if a trial failed or no report was written."""
    from ablations.report import board
    from ablations.store import settings_key

    suite_dir = Path(plan.options.logdir) / plan.suite.name
    table, problem, unwritten = write_report_or_say_why(
        suite_dir,
        plan.reference,
        settings_key(plan.trials[0].hashed_settings(), tuple(k for k, _ in plan.trials[0].factor_levels)),
        plan.request.margin,
    )
    if table is not None:
        print(f"{table}\n\n{board.open_hint(suite_dir)}")
    count = {state: sum(s.state is state for s in states) for state in TrialState}
    print(
        f"{count[TrialState.DONE]} trained, {count[TrialState.SKIPPED]} already done, "
        f"{count[TrialState.FAILED]} failed in {seconds:.0f} s",
        file=sys.stderr,
    )
    failed = [s for s in states if s.state is TrialState.FAILED]
    for status in failed:
        print(f"FAILED {status.trial}: {status.error}", file=sys.stderr)
    if problem is not None:
        print(f"{'error' if unwritten else 'note'}: {problem}", file=sys.stderr)
    return 1 if failed or unwritten else 0


def report_interrupted(plan: Plan, stop: Interrupted) -> int:
    """Say what a signal left behind (finished trials, read from disk) and return 130 / 143."""
    finished = [t.name for t in plan.trials if is_finished(t, plan.options.logdir, warn=False)]
    print(
        f"{stop}: {len(finished)} of {len(plan.trials)} trials finished"
        f"{': ' + ', '.join(finished) if finished else ''}. No other trial left a result; rerun the same command "
        f"to continue, or `python -m ablations.report {Path(plan.options.logdir) / plan.suite.name}` for the "
        "table so far.",
        file=sys.stderr,
    )
    return stop.exit_status


def dry_run_lines(plan: Plan) -> list[str]:
    """``<cell> seed=<s>  <state>`` per trial: ``finished``, ``to run`` or ``finished with other <what changed>``."""
    lines = []
    for trial in plan.trials:
        old = read_trial(trial, plan.options.logdir)  # None if damaged: rerun
        changes = trial.changes(old) if old is not None else []
        state = "to run" if old is None else ("finished with other " + ", ".join(changes) if changes else "finished")
        lines.append(f"{trial.cell} seed={trial.seed}  {state}")
    return lines


def _prepare(parser: argparse.ArgumentParser, request: Request) -> Plan:
    """The checked plan of `request`; any input problem exits 2 here, before training."""
    try:
        return planning.prepare(request)
    except Exception as error:  # noqa: BLE001 - any input problem is reported the same way
        parser.error(str(error))


def main(argv: Optional[list[str]] = None) -> int:
    require_extra("python -m ablations.run")
    quiet_lightning()
    if int(os.environ.get("LOCAL_RANK", "0")) > 0:  # another rank of a data-parallel sweep: end with its launcher
        die_with_parent(os.getppid())
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # a seeds rule: rounds of this same run, see ablations.adaptive
        target = adaptive.target_of(args)
    except ValueError as error:
        parser.error(str(error))
    request = request_of(args)
    if target is not None:
        with interrupts():
            return adaptive.run_cli(
                args, target, lambda seeds: _prepare(parser, replace(request, seeds=seeds)), run_plan
            )
    plan = _prepare(parser, request)
    if not plan.trials:
        print(
            f"nothing to do: part {args.shard[0]}/{args.shard[1]} of the {plan.unsharded} trials is empty "
            "(more shards than trials)",
            file=sys.stderr,
        )
        return 0
    if args.dry_run:
        print("\n".join(dry_run_lines(plan)))
        return 0
    ranks = ddp_ranks(plan.options) if plan.options.strategy != "auto" else None
    rank = ranks.rank if ranks else 0
    if rank == 0:
        print(
            f"suite {plan.suite.name}: {len(plan.trials)} trials, {plan.parallel} at a time, logs in "
            f"{plan.options.logdir}/{plan.suite.name}",
            file=sys.stderr,
        )
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    start = time.perf_counter()
    try:
        with interrupts():
            statuses = run_plan(plan, ranks)
    except (Interrupted, SIGTERMException) as error:  # Lightning stops the other DDP ranks with SIGTERMException
        stop = error if isinstance(error, Interrupted) else Interrupted(signal.SIGTERM)
        return report_interrupted(plan, stop) if rank == 0 else stop.exit_status
    return summarize(plan, statuses, time.perf_counter() - start) if rank == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
