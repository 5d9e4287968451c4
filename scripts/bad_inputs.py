"""The bad-input table of ``python -m ablations.run``: every case must exit 2 with one line on stderr, create nothing
on disk, and, unless it needs torch (a model build, Lightning's device checks, reading the data), answer before
torch is imported, in under a second.

Each case runs in a fresh process with its own new ``--logdir`` under a scratch folder (synthetic data: no CIFAR-10
needed). Prints one row per case that breaks a rule, then the counts (docs/reliability.md quotes them)::

    PYTHONPATH=$PWD python scripts/bad_inputs.py            # every case
    PYTHONPATH=$PWD python scripts/bad_inputs.py --no-torch  # only those that must answer before torch
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_S = 1.0  # what a refusal that needs no torch may take, start-up included
RUN = (  # python -m ablations.run, saying at the end whether torch was imported
    "import sys\nfrom ablations.run import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
    "    print('torch imported:', 'torch' in sys.modules, file=sys.__stdout__)\n    raise\n"
)
SUITES = {  # suite files with one problem each, named in CASES as @name
    "bad_yaml": "name: x\nspecs: [baseline\n",
    "bad_spec_yaml": "name: x\nspecs: [pixle]\n",
    "escaping_yaml": "name: ../../x\nspecs: [baseline]\n",
    "wordy_notebook_yaml": "name: x\nspecs: [{spec: pixel, notebook: high}]\n",
    "unknown_key_yaml": "name: x\nspecs: [baseline]\nsetings: {epochs: 1}\n",
    "bad_setting_yaml": "name: x\nspecs: [baseline]\nsettings: {epochs: 0}\n",
    "no_specs_yaml": "name: x\n",
    "list_yaml": "- baseline\n",
}
# (arguments, whether the answer may need torch); @name is a file or folder made by `scratch`
CASES: list[tuple[list[str], bool]] = [
    *[(["--epochs", v], False) for v in ("x", "0", "-3", "1.5", "")],
    *[(["--batch-size", v], False) for v in ("0", "-64", "abc")],
    *[(["--seeds", v], False) for v in ("x", "4294967296", "-1", "0,0", ",", "1e3")],
    *[(["--val-size", v], False) for v in ("0", "x")],
    *[(["--split-seed", v], False) for v in ("-1", "99999999999999999999", "4294967296", "x")],
    *[(["--limit-train", v], False) for v in ("0", "x")],
    *[(["--lr", v], False) for v in ("0", "-1", "inf", "nan", "x")],
    *[(["--lr-decay", v], False) for v in ("-1", "inf", "x")],
    *[(["--precision", v], False) for v in ("8-bit", "")],
    *[(["--shard", v], False) for v in ("3/2", "0/2", "x", "1/0", "1/2/3")],
    *[(["--parallel", v], False) for v in ("0", "-2", "x")],
    *[(["--devices", v], False) for v in ("0", "x")],
    *[(["--num-nodes", v], False) for v in ("0", "2")],
    (["--parallel", "2", "--strategy", "ddp"], False),
    (["--strategy", "nonsense"], False),
    (["--engine", "nonsense"], False),
    *[(["--max-retries", v], False) for v in ("-1", "x")],
    (["--epoch", "2"], False),
    (["--seed", "3"], False),
    (["--only"], False),
    *[
        (["--only", v], False)
        for v in ("pixle", "pixel+bogus", "l2=abc", "l2=-0.1", "dropout=1", "maxnorm=0", "pixel+channel", "bn+bn")
    ],
    (["--only", "pixel+bn+l2=0.5"], False),
    (["--suite", "nope"], False),
    *[(["--suite", f"@{name}"], False) for name in SUITES],
    (["--suite", "@binary"], False),
    (["--suite", "@folder"], False),
    (["--reference", "pixle"], False),
    (["--reference", "pixel+l2=0.5"], False),
    (["--bogus"], False),
    (["positional"], False),
    (["--data-dir", "@absent"], False),
    (["--data-dir", "@file"], False),
    (["--logdir", "@file/logs"], False),
    (["--logdir", "/proc/logs"], False),
    (["--logdir", "@symlinked"], False),
    (["--min-seeds", "4"], False),
    (["--max-seeds", "4"], False),
    (["--target-ci", "0"], False),
    (["--target-ci", "x"], False),
    (["--target-ci", "0.01", "--seeds", "0,1"], False),
    (["--target-ci", "0.01", "--shard", "1/2"], False),
    (["--target-ci", "0.01", "--strategy", "ddp"], False),
    (["--target-ci", "0.01", "--min-seeds", "1"], False),
    (["--target-ci", "0.01", "--min-seeds", "5", "--max-seeds", "3"], False),
    (["--model", "no.such.Module"], False),
    (["--model", "{not json"], False),
    (["--data", "no.such.DataModule"], False),
    (["--optimizer", "no.such.Optimizer"], False),
    (["--logger", "bogus"], False),
    (["--pack", "abc"], False),
    (["--pack", "0"], False),
    (["--optimizer", "torch.optim.NoSuchOptimizer"], True),
    (["--model", "torch.nn.Linear"], True),
    (["--engine", "ray", "--strategy", "ddp"], True),
    (["--engine", "ray", "--ray-address", "no-port"], True),
    (["--accelerator", "nonsense"], True),
    (["--accelerator", "gpu"], True),
    (["--devices", "4"], True),
    (["--precision", "16-mixed", "--accelerator", "cpu"], True),
    (["--data-dir", "@missing"], True),
    (["--data-dir", "@truncated"], True),
    (["--data-dir", "@empty"], True),
    (["--limit-train", "100000"], True),
    (["--val-size", "100000"], True),
]


@dataclass(frozen=True)
class Outcome:
    args: list[str]
    needs_torch: bool
    status: int
    lines: int
    seconds: float
    torch: bool
    created: list[str]
    message: str

    @property
    def problems(self) -> list[str]:
        found = []
        if self.status != 2:
            found.append(f"exit {self.status}")
        if self.lines != 1:
            found.append(f"{self.lines} lines")
        if self.created:
            found.append(f"created {', '.join(self.created)}")
        if not self.needs_torch and self.torch:
            found.append("imported torch")
        if not self.needs_torch and self.seconds >= FAST_S:
            found.append(f"{self.seconds:.2f} s")
        return found


def scratch(root: Path) -> dict[str, str]:
    """The files and folders the cases name: good synthetic data, broken copies, bad suite files."""
    sys.path.insert(0, str(REPO))
    from tests.synthetic import write_synthetic_cifar

    places = {"data": str(write_synthetic_cifar(root / "data", layouts=("bin",)))}
    missing = write_synthetic_cifar(root / "missing", layouts=("bin",))
    (missing / "cifar-10-batches-bin/data_batch_3.bin").unlink()
    truncated = write_synthetic_cifar(root / "truncated", layouts=("bin",))
    with open(truncated / "cifar-10-batches-bin/test_batch.bin", "r+b") as f:
        f.truncate(3073 * 10 - 7)
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    (root / "suites").mkdir()
    (root / "elsewhere").mkdir()
    (root / "linked").mkdir()
    (root / "linked" / "notebook").symlink_to(root / "elsewhere")
    for name, text in SUITES.items():
        (root / f"{name}.yaml").write_text(text)
    places.update(
        missing=str(missing),
        truncated=str(truncated),
        empty=str(root / "empty"),
        absent=str(root / "absent"),
        file=str(root / "a_file"),
        binary=str(root / "binary.yaml"),
        folder=str(root / "suites"),
        symlinked=str(root / "linked"),
        **{name: str(root / f"{name}.yaml") for name in SUITES},
    )
    return places


def run_case(args: list[str], needs_torch: bool, places: dict[str, str], root: Path, n: int) -> Outcome:
    args = [re.sub(r"@(\w+)", lambda m: places[m.group(1)], a) for a in args]
    where = root / f"case{n}"
    where.mkdir()
    before = {str(p) for p in root.rglob("*") if "case" not in p.name}
    defaults = ["--data-dir", places["data"], "--logdir", str(where / "logs"), "--seeds", "0", "--val-size", "100"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, *defaults, *args], cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    created = [p.name for p in where.iterdir()] + sorted(
        str(p) for p in root.rglob("*") if "case" not in p.name and str(p) not in before
    )
    return Outcome(
        args,
        needs_torch,
        done.returncode,
        len(done.stderr.splitlines()),
        seconds,
        "torch imported: True" in done.stdout,
        created,
        done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "",
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-torch", action="store_true", help="only the cases that must answer before torch")
    options = parser.parse_args(argv)
    cases = [(args, torch) for args, torch in CASES if not (options.no_torch and torch)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        places = scratch(root)
        outcomes = [run_case(args, torch, places, root, n) for n, (args, torch) in enumerate(cases)]
    failed = [o for o in outcomes if o.problems]
    for o in failed:
        print(f"{' '.join(o.args)}: {'; '.join(o.problems)}: {o.message}")
    fast = [o for o in outcomes if not o.needs_torch]
    slowest = max((o.seconds for o in fast), default=0.0)
    print(
        f"{len(outcomes)} cases: {sum(o.status == 2 for o in outcomes)} exit 2, "
        f"{sum(o.lines == 1 for o in outcomes)} answer in one line, {sum(not o.created for o in outcomes)} create "
        f"nothing; {len(fast)} need no torch: {sum(not o.torch for o in fast)} answer before importing it, "
        f"{sum(o.seconds < FAST_S for o in fast)} in under {FAST_S:g} s (slowest {slowest:.2f} s); "
        f"{len(outcomes) - len(fast)} need torch (slowest "
        f"{max((o.seconds for o in outcomes if o.needs_torch), default=0.0):.1f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
