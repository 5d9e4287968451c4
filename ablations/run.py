"""``python -m ablations.run``: run every trial of a suite, resumably, and report mean +- std over seeds.

With no arguments it runs the notebook's study (suite ``notebook``: nine specs, 5 epochs, batch 128, seeds 0,1,2) on
the machine's devices and leaves TensorBoard logs, ``results.md/.csv`` and plots under ``logs/notebook/``.

Scheduling: with ``--parallel N`` (default: one per GPU, 1 on CPU) N worker processes take trials from a queue,
each pinned to its own device (``CUDA_VISIBLE_DEVICES``; on CPU, torch threads = cores / N). With
``--strategy ddp --devices D`` each trial is data-parallel over D devices instead (one trial at a time; every
process runs this same command, as Lightning's launcher does). ``--num-nodes`` passes through to Lightning
multi-node DDP; ``--shard K/N`` runs the K-th of N disjoint parts of the trial list, for job arrays.
``--engine ray`` runs each trial as a Ray task instead, on a local Ray or the cluster at ``--ray-address``
(`ablations.ray_engine`).

Exit status: 0 when every trial is done, 1 when any failed (listed at the end), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

from ablations.ray_engine import (TrialResources, available_cpus, check_address, check_supported, import_ray,
                                  run_trials_ray)
from ablations.suite import SuiteError, Trial, available_suites, expand_trials, load_suite, shard
from ablations.trial import RunOptions, run_trial


def quiet_lightning() -> None:
    """Sweeps print their own progress: drop Lightning's per-Trainer banners and deprecation chatter."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `low`, with a message naming the bad value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} must list distinct integers >= 0, e.g. 0,1,2")
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
    if text == "auto":
        return text
    return _positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ablations.run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Shipped suites: {', '.join(available_suites())}. Exit status: 0 all done, 1 a trial failed, "
               "2 bad arguments.")
    what = parser.add_argument_group("what to run")
    what.add_argument("--suite", default="notebook",
                      help="shipped suite name or path of a suite .yaml (default: notebook; seed is an alias)")
    what.add_argument("--only", nargs="+", metavar="NAME", help="run just these specs of the suite")
    what.add_argument("--shard", type=_shard, metavar="K/N", help="run the K-th of N disjoint parts of the trials")
    what.add_argument("--dry-run", action="store_true", help="print one line per trial (spec, seed); train nothing")
    what.add_argument("--force", action="store_true", help="rerun trials that already have a matching result")
    settings = parser.add_argument_group("training settings (override the suite's)")
    settings.add_argument("--epochs", type=_positive_int)
    settings.add_argument("--batch-size", type=_positive_int, help="images per step (per device under DDP)")
    settings.add_argument("--seeds", type=_seeds, metavar="0,1,2", help="comma-separated seeds")
    settings.add_argument("--val-size", type=_non_negative_int, help="training images held out for validation")
    settings.add_argument("--split-seed", type=_non_negative_int, help="seed of the train/validation split")
    settings.add_argument("--limit-train", type=_positive_int, metavar="N",
                          help="train on the first N images of the training split")
    settings.add_argument("--lr", type=float, help="Adam learning rate")
    settings.add_argument("--lr-decay", type=float, help="Keras time decay: lr / (1 + decay * step)")
    settings.add_argument("--precision", help="Lightning precision: 32-true (default), bf16-mixed, 16-mixed")
    where = parser.add_argument_group("data and output")
    where.add_argument("--data-dir", help="an existing folder with cifar-10-batches-py/ or cifar-10-batches-bin/ "
                                          "(default: $LIT_CIFAR_DATA or ./data); CIFAR-10 is downloaded into it "
                                          "(checksum-verified) if it holds neither")
    where.add_argument("--logdir", default="logs", help="TensorBoard root; trials go to LOGDIR/SUITE/SPEC/seed=S/")
    hardware = parser.add_argument_group("devices and scheduling")
    hardware.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: auto)")
    hardware.add_argument("--devices", type=_devices, default=None,
                          help="with --strategy: devices per trial; without: how many GPUs the trials are spread "
                               "over (default: all)")
    hardware.add_argument("--parallel", type=_positive_int,
                          help="trials at once (default: one per GPU; 1 on CPU, measured fastest on 2 cores)")
    hardware.add_argument("--strategy", default=None, help="Lightning strategy per trial, e.g. ddp")
    hardware.add_argument("--compile", action="store_true", help="torch.compile each trial's network")
    hardware.add_argument("--num-nodes", type=_positive_int, default=1, help="nodes per trial (Lightning DDP)")
    hardware.add_argument("--engine", choices=("local", "ray"), default="local",
                          help="local: worker processes on this machine (default); ray: one Ray task per trial, "
                               "each asking for the share of a machine --parallel implies")
    hardware.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                          help="Ray cluster to join, host:port (default: $RAY_ADDRESS, else a local Ray)")
    hardware.add_argument("--max-retries", type=_non_negative_int, default=2,
                          help="--engine ray: times a trial whose worker or node died is run again (default: 2)")
    return parser


def _gpu_count(accelerator: str) -> int:
    import torch

    return torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0


def _check_inputs(args: argparse.Namespace, trials: list[Trial]) -> None:
    """Fail fast, before any training, on data or output problems (raises ValueError / DatasetError)."""
    from lit_cifar import CIFAR10DataModule
    from lit_cifar.data import default_data_dir

    logdir = Path(args.logdir)
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        probe = logdir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--logdir {logdir} is not writable: {error.strerror}") from None
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data-dir {args.data_dir} is not an existing folder")
    data_dir = Path(args.data_dir) if args.data_dir is not None else default_data_dir()
    if data_dir.exists() and not os.access(data_dir, os.R_OK | os.X_OK):
        raise ValueError(f"--data-dir {data_dir} is not readable")
    s = trials[0].settings
    dm = CIFAR10DataModule(str(data_dir), val_size=s.val_size, split_seed=s.split_seed, batch_size=s.batch_size,
                           limit_train=s.limit_train, normalize="none")
    dm.prepare_data()  # downloads once here, not in every worker
    dm.setup()  # reads every file: a missing or truncated one, or a too-large --limit-train, stops us now


def _init_worker(slots: Any, threads: int) -> None:
    """Pin this worker process to one device: a GPU of its own, or its share of the CPU threads."""
    quiet_lightning()
    slot = slots.get()
    if slot is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot)
    import torch

    torch.set_num_threads(threads)


def run_trials(trials: list[Trial], options: RunOptions, parallel: int, gpus: int) -> list[dict[str, Any]]:
    """Run `trials` one at a time in this process, or `parallel` at once in worker processes.

    Trials that another sweep is running ("busy") are retried at the end, waiting for their lock: each ends up
    done here or there, and no trial ever runs twice at the same time.
    """
    from tqdm import tqdm

    bar = tqdm(total=len(trials), desc="trials", unit="trial", file=sys.stderr, dynamic_ncols=True,
               disable=parallel == 1 and len(trials) <= 1)
    statuses: dict[int, dict[str, Any]] = {}
    pending, wait = list(range(len(trials))), False
    pool = None
    if parallel > 1:
        context = get_context("spawn")
        slots = context.Manager().Queue()
        for i in range(parallel):
            slots.put(i % gpus if gpus else None)
        pool = ProcessPoolExecutor(parallel, mp_context=context, initializer=_init_worker,
                                   initargs=(slots, max(1, (os.cpu_count() or 1) // parallel)))
    try:
        while pending:
            if pool is None:
                outcomes = ((i, run_trial(trials[i], options, wait)) for i in pending)
            else:
                futures = {pool.submit(run_trial, trials[i], options, wait): i for i in pending}
                outcomes = ((futures[f], f.result()) for f in as_completed(futures))
            for i, status in outcomes:
                statuses[i] = status
                if status["status"] != "busy":
                    bar.update()
                bar.set_postfix_str(status["trial"])
            pending = [i for i in pending if statuses[i]["status"] == "busy"]
            wait = True
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        bar.close()
    return [statuses[i] for i in range(len(trials))]


def _ray_resources(gpus: int, parallel: int) -> dict[str, float]:
    """The Ray resources of one trial: the share of this machine a local worker would get."""
    share = TrialResources.share(gpus, parallel, available_cpus())
    return {"gpus_per_trial": share.gpus, "cpus_per_trial": share.cpus}


def main(argv: Optional[list[str]] = None) -> int:
    quiet_lightning()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        suite = load_suite(args.suite)
        settings = suite.settings.override(epochs=args.epochs, batch_size=args.batch_size, seeds=args.seeds,
                                           val_size=args.val_size, split_seed=args.split_seed,
                                           limit_train=args.limit_train, lr=args.lr, lr_decay=args.lr_decay,
                                           precision=args.precision)
        devices = args.devices if isinstance(args.devices, int) else 1
        data_parallel = devices * args.num_nodes if args.strategy else 1
        trials = expand_trials(suite, settings, only=args.only, data_parallel=data_parallel)
        if args.shard:
            trials = shard(trials, *args.shard)
    except (SuiteError, ValueError) as error:
        parser.error(str(error))
    gpus = _gpu_count(args.accelerator)
    if not args.strategy and isinstance(args.devices, int) and gpus:
        gpus = min(gpus, args.devices)  # spread the trials over the first --devices GPUs
    if args.strategy and args.parallel not in (None, 1):
        parser.error(f"--parallel {args.parallel} with --strategy {args.strategy}: a data-parallel trial uses "
                     "all --devices, so trials run one at a time; drop --parallel or --strategy")
    parallel = 1 if args.strategy else (args.parallel or max(1, gpus))
    if args.dry_run:
        for trial in trials:
            print(f"{trial.spec} seed={trial.seed}")
        return 0
    try:
        if args.engine == "ray":
            check_supported(trials, RunOptions(strategy=args.strategy or "auto", num_nodes=args.num_nodes))
            import_ray()
            check_address(args.ray_address)
        _check_inputs(args, trials)
    except Exception as error:  # noqa: BLE001 - any input problem is reported the same way, before training
        parser.error(str(error))
    options = RunOptions(data_dir=args.data_dir, logdir=args.logdir, accelerator=args.accelerator,
                         devices=args.devices if args.strategy else 1, strategy=args.strategy or "auto",
                         num_nodes=args.num_nodes, progress_bar=parallel == 1 and sys.stderr.isatty(),
                         force=args.force, compile=args.compile)
    start = time.perf_counter()
    resources = _ray_resources(gpus, parallel)
    how = (f"{parallel} at a time" if args.engine == "local" else "Ray tasks of {cpus_per_trial} CPUs and "
           "{gpus_per_trial} GPUs".format(**resources))
    print(f"suite {suite.name}: {len(trials)} trials, {how}, logs in {args.logdir}/{suite.name}", file=sys.stderr)
    if args.engine == "ray":
        statuses = run_trials_ray(trials, options, address=args.ray_address, max_retries=args.max_retries,
                                  **resources)
    else:
        statuses = run_trials(trials, options, parallel, gpus)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return 0
    from ablations.report import write_report

    table = write_report(Path(args.logdir) / suite.name)
    print(table)
    counts = {s: sum(1 for x in statuses if x["status"] == s) for s in ("done", "skipped", "failed")}
    print(f"{counts['done']} trained, {counts['skipped']} already done, {counts['failed']} failed in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    failed = [s for s in statuses if s["status"] == "failed"]
    for status in failed:
        print(f"FAILED {status['trial']}: {status['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
