"""``python -m ablations.run``: run every trial of a suite, resumably, and report mean +- std over seeds.

With no arguments it runs the notebook's study (suite ``notebook``: nine specs, 5 epochs, batch 128, seeds 0,1,2) and
leaves TensorBoard logs, ``results.md/.csv`` and plots under ``logs/notebook/``. ``--parallel N`` runs N trials at
once, each on its own device; ``--strategy ddp --devices D`` trains each trial over D devices (Lightning starts the
other ranks, which run this same command; rank 0 decides for all); ``--shard K/N`` runs the K-th of N parts of the
trials; ``--engine ray`` runs them as Ray tasks. The flags are read into an `ablations.plan.Request`; what the
trials are and the checks before any trains are `ablations.plan`.

Exit status: 0 when every trial is done (or there is nothing to do), 1 when any failed (listed at the end), 2 for
bad arguments, 130 / 143 when stopped by SIGINT / SIGTERM (finished trials are kept and listed).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

from ablations import adaptive, require_extra
from ablations import plan as planning
from ablations.engines import ENGINES, make_executor
from ablations.plan import Plan, Request
from ablations.quiet import quiet_lightning
from ablations.rules import Rule, integer, margin_arg
from ablations.signals import Interrupted, die_with_parent, interrupts
from ablations.status import TrialState, TrialStatus
from ablations.suite import SETTING_RULES, RunOptions, available_suites
from ablations.trust import write_report_or_say_why

if TYPE_CHECKING:  # torch and Lightning are imported only once the arguments are checked
    from ablations.trial import Ranks

__all__ = ["build_parser", "main", "make_plan", "request_of", "run_plan"]

STRATEGIES = ("ddp",)  # per-trial data parallelism; Lightning's launcher re-runs this command on every rank
RAY_ADVICE = 'pip install -e ".[ray]"'


def _flag(convert: Callable[[str], Any], rule: Rule) -> Callable[[str], Any]:
    """An argparse type: `convert` reads the text and `rule` judges the value (a setting's flag uses the suite
    file's rule, `ablations.suite.SETTING_RULES`, so both accept the same values), each naming the bad text."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if convert is int else 'a number'}"
            ) from None
        problem = rule(value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text} {problem}")
        return value

    return parse


def _setting(name: str, convert: Callable[[str], Any] = int) -> Callable[[str], Any]:
    return _flag(convert, SETTING_RULES[name])


def _at_least(low: int) -> Callable[[str], int]:
    return _flag(int, integer(low))


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    problem = SETTING_RULES["seeds"](seeds)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}, e.g. 0,1,2")
    return seeds


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form K/N, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be between 1 and N")
    return k, n


def _devices(text: str) -> Any:
    return text if text == "auto" else _at_least(1)(text)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (the usage block is for ``--help``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m ablations.run",
        allow_abbrev=False,  # --epoch is a typo, not --epochs
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Shipped suites: {', '.join(available_suites())}. Exit status: 0 all done, 1 a trial failed, "
        "2 bad arguments, 130/143 stopped by SIGINT/SIGTERM.",
    )
    _what_arguments(parser)
    _setting_arguments(parser)
    where = parser.add_argument_group("data and output")
    where.add_argument(
        "--data-dir",
        help="an existing folder with cifar-10-batches-py/ or cifar-10-batches-bin/ "
        "(default: $LIT_CIFAR_DATA or ./data); CIFAR-10 is downloaded into it "
        "(checksum-verified) if it holds neither",
    )
    where.add_argument("--logdir", default="logs", help="TensorBoard root; trials go to LOGDIR/SUITE/SPEC/seed=S/")
    _hardware_arguments(parser)
    _tree_arguments(parser)
    adaptive.add_arguments(parser)  # --until-answered, --target-ci, --min-seeds, --max-seeds
    return parser


def _what_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--suite",
        default="notebook",
        help="shipped suite name or path of a suite .yaml (default: notebook)",
    )
    what.add_argument("--only", nargs="+", metavar="NAME", help="run just these specs of the suite")
    what.add_argument("--shard", type=_shard, metavar="K/N", help="run the K-th of N disjoint parts of the trials")
    what.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything a run checks, then print one line per trial (cell, seed, finished / to run / "
        "finished with other settings); trains and downloads nothing",
    )
    what.add_argument("--force", action="store_true", help="rerun trials that already have a matching result")
    what.add_argument(
        "--reference",
        metavar="SPEC",
        help="spec every other is compared with in the report (default: pixel, else the first)",
    )
    what.add_argument(
        "--margin",
        type=margin_arg,
        help="the equivalence margin in test accuracy (default 0.01) of the report's verdicts and of "
        "--until-answered: a difference within ±margin is 'equivalent'",
    )


def _setting_arguments(parser: argparse.ArgumentParser) -> None:
    settings = parser.add_argument_group("training settings (override the suite's)")
    settings.add_argument("--epochs", type=_setting("epochs"))
    settings.add_argument("--batch-size", type=_setting("batch_size"), help="images per step (per device under DDP)")
    settings.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="comma-separated seeds")
    settings.add_argument(
        "--val-size", type=_setting("val_size"), help="training images held out for validation (at least 1)"
    )
    settings.add_argument("--split-seed", type=_setting("split_seed"), help="seed of the train/validation split")
    settings.add_argument(
        "--limit-train",
        type=_setting("limit_train"),
        metavar="N",
        help="train on the first N images of the training split",
    )
    settings.add_argument("--lr", type=_setting("lr", float), help="Adam learning rate")
    settings.add_argument(
        "--lr-decay", type=_setting("lr_decay", float), help="Keras time decay: lr / (1 + decay * step)"
    )
    settings.add_argument("--precision", help="Lightning precision: 32-true (default), bf16-mixed, 16-mixed")


def _tree_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model, data and outputs (override the suite's)")
    group.add_argument(
        "--model",
        metavar="CLASS_PATH|JSON",
        help='the network: a class path (mypkg.nets.ResNet18) or JSON {"class_path": ..., "init_args": {...}} '
        "(default: the suite's, else the notebook's CNN)",
    )
    group.add_argument(
        "--data",
        metavar="NAME|CLASS_PATH|JSON",
        help="cifar10 or cifar100 (official layouts, downloaded if absent), or a LightningDataModule's class path "
        "or JSON (default: the suite's, else cifar10)",
    )
    group.add_argument(
        "--optimizer",
        metavar="CLASS_PATH|JSON",
        help="optimizer instead of the built-in Adam, e.g. torch.optim.SGD or JSON with init_args (lr: --lr)",
    )
    group.add_argument("--save-model", action="store_true", help="keep each trial's final checkpoint as model.ckpt")
    group.add_argument(
        "--logger",
        action="append",
        choices=("csv", "mlflow", "wandb"),
        help="also log to this Lightning logger (repeatable); TensorBoard is always written",
    )


def _hardware_arguments(parser: argparse.ArgumentParser) -> None:
    hardware = parser.add_argument_group("devices and scheduling")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: auto)")
    hardware.add_argument(
        "--devices",
        type=_devices,
        default=None,
        help="with --strategy: devices per trial (default: all GPUs, or 1 on CPU); without: how "
        "many GPUs the trials are spread over (default: all)",
    )
    hardware.add_argument("--parallel", type=_at_least(1), help="trials at once (default: one per GPU; 1 on CPU)")
    hardware.add_argument("--strategy", choices=STRATEGIES, help="data-parallel training of each trial")
    hardware.add_argument("--compile", action="store_true", help="torch.compile each trial's network")
    hardware.add_argument("--num-nodes", type=_at_least(1), default=1, help="nodes per trial (Lightning DDP)")
    hardware.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help=f"local: this machine's processes (default); ray: Ray tasks ({RAY_ADVICE})",
    )
    hardware.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)",
    )
    hardware.add_argument(
        "--max-retries",
        type=_at_least(0),
        default=2,
        help="--engine ray: reruns of a trial whose worker or node died (default: 2)",
    )


def request_of(args: argparse.Namespace) -> Request:
    """The parsed command line as the values `ablations.plan` plans from (the flags `Request` has a field for)."""
    return Request(**{f.name: getattr(args, f.name) for f in fields(Request)})


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan of a parsed command line (`ablations.plan.make_plan` of its values); ValueError as that."""
    return planning.make_plan(request_of(args))


def ddp_ranks(options: RunOptions) -> Ranks:
    """Start and connect the processes of a data-parallel sweep, once for all its trials: Lightning's launcher
    re-runs this command for every other local rank (torchrun or SLURM start them themselves). Returns this
    process's `Ranks`: rank 0 decides every trial, the others follow."""
    from lightning.fabric import Fabric

    from ablations.trial import Ranks

    fabric = Fabric(
        accelerator=options.accelerator, devices=options.devices, num_nodes=options.num_nodes, strategy=options.strategy
    )
    fabric.launch()
    return Ranks(fabric.global_rank, functools.partial(fabric.broadcast, src=0))


def run_plan(plan: Plan, ranks: Optional[Ranks] = None) -> list[TrialStatus]:
    """Run the plan's trials on the executor it asks for (`ablations.engines.make_executor`): their final
    `TrialStatus` (DONE, SKIPPED or FAILED), in trial order; under DDP rank 0 decides every trial for all ranks."""
    executor = make_executor(
        plan.engine,
        parallel=plan.parallel,
        gpus=plan.gpus,
        ranks=ranks,
        ray_address=plan.ray_address,
        max_retries=plan.max_retries,
    )
    return executor.run(plan.trials, plan.options)


def summarize(plan: Plan, states: Sequence[TrialStatus], seconds: float) -> int:
    """Write and print the suite's report (of this sweep's settings) and the sweep's counts; 1 if a trial failed or
    the report could not be written (e.g. a full disk: said, with the counts and the failed trials), else 0."""
    from ablations.report import board
    from ablations.store import settings_key

    suite_dir = Path(plan.options.logdir) / plan.suite.name
    table, problem, unwritten = write_report_or_say_why(
        suite_dir,
        plan.reference,
        settings_key(plan.trials[0].hashed_settings(), plan.trials[0].factors),
        plan.margin,
    )
    if table is not None:
        print(f"{table}\n\n{board.open_hint(suite_dir)}")
    counts = {state: sum(1 for s in states if s.state is state) for state in TrialState}
    print(
        f"{counts[TrialState.DONE]} trained, {counts[TrialState.SKIPPED]} already done, "
        f"{counts[TrialState.FAILED]} failed in {seconds:.0f} s",
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
    from ablations.status import is_finished

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
    """``<cell> seed=<s>  <state>`` per trial: ``finished``, ``to run``, or ``finished with other <what changed>``
    (a run refuses those without --force)."""
    from ablations.status import read_trial

    lines = []
    for trial in plan.trials:
        try:
            old = read_trial(trial, plan.options.logdir)
        except ValueError:
            old = None  # damaged: rerun
        changes = trial.changes(old) if old is not None else []
        state = "to run" if old is None else ("finished with other " + ", ".join(changes) if changes else "finished")
        lines.append(f"{trial.cell} seed={trial.seed}  {state}")
    return lines


def _prepare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    """Plan and check everything that can be checked before training; bad arguments exit 2 here."""
    try:
        made = planning.prepare(request_of(args))
    except Exception as error:  # noqa: BLE001 - any input problem is reported the same way, before training
        parser.error(str(error))
    return made


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
    if target is not None:
        with interrupts():
            return adaptive.run_cli(
                args,
                target,
                lambda seeds: _prepare(parser, argparse.Namespace(**{**vars(args), "seeds": seeds})),
                run_plan,
            )
    plan = _prepare(parser, args)
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
