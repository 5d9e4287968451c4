"""`python -m ablations.report` on synthetic result.json files with known effects: tables with CIs, comparisons
with a reference, identical specs, factorial effects, environment notes, charts, and no torch."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ablations.report import write_report
from ablations.report.__main__ import main
from ablations.store import RESULT_FILE, TrialPaths, write_result
from lit_cifar.spec import RegularizationSpec
from tests.helpers import REPO


def fake_result(
    suite: str, spec: RegularizationSpec, seed: int, test_acc: float, order: int = 0, **extra: object
) -> dict:
    """A result.json as `ablations.trial` writes it, with the given test accuracy (other metrics follow it)."""
    settings = {
        "spec": str(spec),
        "seed": seed,
        "data_parallel": 1,
        "epochs": 2,
        "batch_size": 128,
        "val_size": 500,
        "split_seed": 0,
        "limit_train": 1000,
        "lr": 0.001,
        "lr_decay": 1e-6,
        "precision": "32-true",
    }
    metrics = {
        "train/loss": 1.0 - test_acc,
        "train/acc": test_acc + 0.1,
        "val/loss": 1.1 - test_acc,
        "val/acc": test_acc - 0.01,
        "test/loss": 1.2 - test_acc,
        "test/acc": test_acc,
    }
    history = [{"epoch": 0, "val/acc": test_acc / 2}, {"epoch": 1, "val/acc": test_acc - 0.01}]
    return {
        "suite": suite,
        "spec": str(spec),
        "spec_fields": spec.to_dict(),
        "seed": seed,
        "order": order,
        "notebook": None,
        "settings": settings,
        "settings_hash": f"{order:08d}{seed:08d}",
        "metrics": metrics,
        "history": history,
        "wall_time_s": 10.0,
        "train_images": 1000,
        "val_images": 500,
        "test_images": 10000,
        "environment": {"cpu_threads": 2},
        **extra,
    }


def write_results(suite_dir: Path, results: list[dict]) -> None:
    for result in results:
        paths = TrialPaths.of(suite_dir.parent, suite_dir.name, result["spec"], result["seed"])
        paths.folder.mkdir(parents=True, exist_ok=True)
        write_result(paths.result, result)


NOTEBOOKISH = {"baseline": 0.20, "pixel": 0.50, "pixel+bn": 0.50, "pixel+l1=0.01": 0.25}  # true means
SPREAD = (-0.004, 0.001, 0.003)  # per seed, the same for every spec


@pytest.fixture
def notebookish(tmp_path: Path) -> Path:
    """Four specs x three seeds with known means, and pixel+maxnorm=3 a bit-for-bit copy of pixel."""
    suite_dir = tmp_path / "demo"
    results = []
    for order, (text, mean) in enumerate(NOTEBOOKISH.items()):
        spec = RegularizationSpec.parse(text)
        results += [fake_result("demo", spec, seed, mean + SPREAD[(seed + order) % 3], order) for seed in range(3)]
    pixel = [r for r in results if r["spec"] == "pixel"]
    maxnorm = RegularizationSpec.parse("pixel+maxnorm=3")
    results += [
        {
            **r,
            "spec": str(maxnorm),
            "spec_fields": maxnorm.to_dict(),
            "order": 9,
            "history": [{**e, "train/maxnorm_rescaled": 0.0} for e in r["history"]],
        }
        for r in pixel
    ]
    write_results(suite_dir, results)
    return suite_dir


def test_table_has_cis_and_comparisons_with_pixel(notebookish: Path):
    table = write_report(notebookish)
    text = (notebookish / "results.md").read_text()
    assert all(part in text for part in table.split("\n\n"))  # what a sweep prints is in results.md
    assert "| spec | seeds | test acc | 95% CI | vs pixel |" in text
    assert "| pixel+l1=0.01 | 3 | 0.2500 ± 0.0036 | [0.2410, 0.2590] | -0.2500 |" in text
    rows = {r["spec"]: r for r in csv.DictReader(open(notebookish / "results.csv"))}
    assert {"verdict", "verdict_low", "verdict_high", "margin", "detectable"} <= set(rows["baseline"])
    assert rows["baseline"]["verdict"] == "worse" and rows["pixel+l1=0.01"]["verdict"] == "worse"
    assert rows["pixel+bn"]["verdict"] == "open"  # the same mean as pixel, seeds too few to call it equivalent
    assert float(rows["pixel+bn"]["verdict_low"]) < 0 < float(rows["pixel+bn"]["verdict_high"])
    assert float(rows["pixel+bn"]["detectable"]) > 0 and rows["pixel+bn"]["margin"] == "0.01"
    assert rows["pixel"]["verdict"] == ""  # the reference is not compared with itself
    assert "## Each spec against `pixel` (margin ±0.01)" in text
    assert "**worse**: baseline (-0.300), pixel+l1=0.01 (-0.250)" in text
    assert "**open**: pixel+bn (+0.000; could detect ±" in text


def test_the_margin_is_stated_and_changes_the_verdict(notebookish: Path):
    write_report(notebookish, margin=0.5)
    rows = {r["spec"]: r for r in csv.DictReader(open(notebookish / "results.csv"))}
    assert rows["pixel+bn"]["verdict"] == "equivalent" and rows["pixel+bn"]["margin"] == "0.5"
    assert "margin ±0.5" in (notebookish / "results.md").read_text()
    with pytest.raises(ValueError, match="margin -0.1"):
        write_report(notebookish, margin=-0.1)


def test_identical_specs_are_flagged_with_the_reason(notebookish: Path):
    write_report(notebookish)
    text = (notebookish / "results.md").read_text()
    assert "| pixel+maxnorm=3 (= pixel) | 3 |" in text
    assert (
        "`pixel+maxnorm=3` gave exactly the numbers of `pixel` for every seed: the max-norm cap (3.0) never "
        "rescaled a row (train/maxnorm_rescaled = 0 in every epoch)"
    ) in text
    rows = {r["spec"]: r for r in csv.DictReader(open(notebookish / "results.csv"))}
    assert rows["pixel+maxnorm=3"]["identical_to"] == "pixel" and rows["pixel+bn"]["identical_to"] == ""


def test_reference_is_settable_and_an_unknown_one_exits_2(notebookish: Path, capsys: pytest.CaptureFixture):
    assert main([str(notebookish), "--reference", "baseline"]) == 0
    assert "| spec | seeds | test acc | 95% CI | vs baseline |" in (notebookish / "results.md").read_text()
    with pytest.raises(SystemExit) as stop:
        main([str(notebookish), "--reference", "pixle"])
    assert stop.value.code == 2
    assert (
        "--reference 'pixle' is not a spec of these results; choose one of baseline, pixel" in capsys.readouterr().err
    )


def test_a_bad_margin_exits_2_in_one_line_and_writes_nothing(notebookish: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        main([str(notebookish), "--margin", "-0.01"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--margin -0.01" in err and len(err.strip().splitlines()) == 1
    assert not (notebookish / "results.md").exists()
    assert main([str(notebookish), "--margin", "0.02"]) == 0
    assert "margin ±0.02" in (notebookish / "results.md").read_text()


def test_without_pixel_the_first_spec_is_the_reference(tmp_path: Path):
    suite_dir = tmp_path / "nopixel"
    write_results(
        suite_dir,
        [
            fake_result("nopixel", RegularizationSpec.parse(s), seed, 0.3 + 0.01 * seed, i)
            for i, s in enumerate(["channel", "channel+bn"])
            for seed in (0, 1)
        ],
    )
    write_report(suite_dir)
    text = (suite_dir / "results.md").read_text()
    assert "vs channel |" in text and "reference spec: channel (the default, pixel, is not in these results)" in text


def test_mixed_code_versions_and_thread_counts_are_noted(tmp_path: Path):
    suite_dir = tmp_path / "mixed"
    spec = RegularizationSpec.parse("pixel")
    write_results(
        suite_dir,
        [
            fake_result("mixed", spec, 0, 0.5, environment={"cpu_threads": 2, "code_version": "0.1.0"}),
            fake_result("mixed", spec, 1, 0.5, environment={"cpu_threads": 8, "code_version": "0.2.0"}),
            fake_result("mixed", spec, 2, 0.5, environment={"cpu_threads": 8}),
        ],
    )  # older code: no code_version
    write_report(suite_dir)
    text = (suite_dir / "results.md").read_text()
    assert "the results mix code versions: 0.1.0 (1 trials), 0.2.0 (1 trials)" in text
    assert "the results mix CPU thread counts: 2 (1 trials), 8 (2 trials)" in text
    assert "1 of 3 results do not record their code_version (written by older code)" in text


FULLISH_EFFECTS = {"bn": 0.08, "dropout=0.5": -0.04}  # additive, plus noise; l2 has no effect


@pytest.fixture
def fullish(tmp_path: Path) -> Path:
    """A factorial suite: pixel x {bn} x {l2=0.01} x {dropout 0.25, 0.5}, two seeds, known effects."""
    suite_dir = tmp_path / "fullish"
    rng = np.random.default_rng(1)
    results = []
    for order, (bn, l2, dropout) in enumerate(itertools.product([False, True], [0.0, 0.01], [0.0, 0.25, 0.5])):
        spec = RegularizationSpec(normalize="pixel", batchnorm=bn, l2=l2, dropout=dropout)
        for seed in (0, 1):
            acc = 0.5 + 0.08 * bn - 0.04 * (dropout == 0.5) + rng.normal(0, 0.003)
            results.append(fake_result("fullish", spec, seed, acc, order))
    write_results(suite_dir, results)
    return suite_dir


def test_factorial_suite_gets_an_effects_table_csv_and_chart(fullish: Path):
    write_report(fullish)
    text = (fullish / "results.md").read_text()
    assert "## Factorial effects on test accuracy" in text and "every main effect and two-factor interaction" in text
    effects = {r["effect"]: r for r in csv.DictReader(open(fullish / "effects.csv"))}
    for name, value in {**FULLISH_EFFECTS, "l2=0.01": 0.0, "dropout=0.25": 0.0, "bn × dropout=0.5": 0.0}.items():
        row = effects[name]
        assert float(row["verdict_low"]) < value < float(row["verdict_high"]), name
        assert (row["verdict"] in ("better", "worse")) == (value != 0.0), name
        assert row["margin"] == "0.01" and int(row["family"]) > len(effects)  # the simple effects are in it
    assert effects["bn × l2=0.01"]["kind"] == "interaction" and effects["bn"]["kind"] == "main"
    assert (fullish / "effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_suite_of_chosen_specs_has_no_effects_table(notebookish: Path):
    write_report(notebookish)
    assert "Not estimated: the specs cover 5 of the 16 combinations of" in (notebookish / "results.md").read_text()
    assert not (notebookish / "effects.csv").exists() and not (notebookish / "effects.png").exists()


def test_results_without_newer_fields_still_report(tmp_path: Path):
    """Older result.json files lack spec_fields, environment and history entries: the report copes."""
    suite_dir = tmp_path / "old"
    old = [
        fake_result("old", RegularizationSpec.parse(s), seed, 0.4 + 0.01 * seed + 0.1 * i, i)
        for i, s in enumerate(["baseline", "pixel"])
        for seed in (0, 1)
    ]
    for result in old:
        del result["spec_fields"], result["environment"]
    write_results(suite_dir, old)
    assert "| pixel | 2 |" in write_report(suite_dir)


def test_report_imports_neither_torch_nor_pyplot(fullish: Path):
    code = (
        "import sys; from ablations.report import write_report; write_report(sys.argv[1]); "
        "assert 'torch' not in sys.modules, 'torch'; assert 'matplotlib.pyplot' not in sys.modules, 'pyplot'"
    )
    done = subprocess.run([sys.executable, "-c", code, str(fullish)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_charts_are_written_whole_and_the_tensorboard_run_holds_them(notebookish: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_report(notebookish)
    for name in ("results.png", "curves.png"):
        assert (notebookish / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(notebookish.glob(".*.tmp"))  # atomic writes leave no temporary file
    events = EventAccumulator(str(notebookish / "_report"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert events.Tags()["images"] == ["report/test_accuracy", "report/val_accuracy"]
    assert {e.width for tag in events.Tags()["images"] for e in events.Images(tag)} == {360}  # card-sized
    text = events.Tensors("report/results")[0].tensor_proto.string_val[0].decode()
    assert "| spec | seeds | test acc | 95% CI | vs pixel |" in text


def test_results_json_round_trip_is_unchanged_by_reporting(notebookish: Path):
    before = {p: p.read_bytes() for p in notebookish.glob(f"*/*/{RESULT_FILE}")}
    write_report(notebookish)
    assert {p: p.read_bytes() for p in notebookish.glob(f"*/*/{RESULT_FILE}")} == before
    assert json.loads(next(iter(before.values())))["suite"] == "demo"


@pytest.mark.parametrize("module", ["ablations.report.compare", "lit_cifar.runtime"])
def test_torch_free_modules_import_no_torch(module: str):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch'"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_large_suite_s_charts_show_the_reference_and_its_best_and_worst_cells(fullish: Path):
    from ablations.report.report import MAX_SHOWN, build_report, shown_rows

    report = build_report(fullish)
    shown, note = shown_rows(report)
    assert len(report.rows) > MAX_SHOWN and len(shown) == MAX_SHOWN
    assert "pixel" in {r.spec for r in shown} and "best and the" in note
    means = sorted(r.test_acc for r in report.rows if r.spec != "pixel" and not r.identical_to)
    assert max(means) in {r.test_acc for r in shown} and min(means) in {r.test_acc for r in shown}
