"""What the report finds in a suite's result.json files beyond means: specs with identical numbers (and why), the
factorial design behind the specs, the last epoch's diagnostics, and results that mix code versions or machines.

Every reader tolerates fields that older results lack. Torch-free.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable
from typing import Any, Optional

import pandas as pd

from ablations.report.stats import Factor, FactorialFit, factorial_effects
from ablations.rules import MARGIN
from lit_cifar.spec import RegularizationSpec

# The numbers two trials of the same seed must share to count as identical.
IDENTITY_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")
MAXNORM_RESCALED = "train/maxnorm_rescaled"  # fraction of the regularized layers' rows max-norm rescaled
# Logged per epoch; the report shows the last epoch's mean over seeds.
DIAGNOSTICS = {
    MAXNORM_RESCALED: "max-norm: fraction of rows rescaled",
    "val/bn_mean_gap": "BN: mean gap (running σ)",
    "val/bn_std_ratio": "BN: batch σ / running σ",
}
ENVIRONMENT_KEYS = {
    "code_version": "code versions",
    "git_commit": "git commits",
    "source_sha256": "source code",
    "cpu_threads": "CPU thread counts",
}
RESPONSE = "test_acc"


def _fingerprints(results: Iterable[dict[str, Any]]) -> dict[str, dict[int, tuple]]:
    """{spec: {seed: the identity metrics}}."""
    table: dict[str, dict[int, tuple]] = {}
    for r in results:
        table.setdefault(r["spec"], {})[r["seed"]] = tuple(r["metrics"].get(k) for k in IDENTITY_METRICS)
    return table


def _why_identical(first: dict[str, Any], second: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """Why two specs gave the same numbers, from the fields they differ in and what the trials logged."""
    a, b = first.get("spec_fields", {}), second.get("spec_fields", {})
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ == ["max_norm"]:
        cap = a.get("max_norm") or b.get("max_norm")
        rescaled = [e[MAXNORM_RESCALED] for r in runs for e in r.get("history", []) if MAXNORM_RESCALED in e]
        if rescaled and not any(rescaled):
            return f"the max-norm cap ({cap}) never rescaled a row ({MAXNORM_RESCALED} = 0 in every epoch)"
        return (
            f"they differ only in the max-norm cap ({cap}), so it never acted: no unit's incoming weights "
            "reached that norm in these runs"
        )
    if differ:
        return f"they differ only in {', '.join(differ)}, which changed no computation in these runs"
    return "their spec fields are the same"


def identical_specs(results: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(spec, earlier spec, why)`` for every spec whose numbers equal an earlier spec's for every seed both ran
    (in suite order)."""
    ordered = sorted(results, key=lambda r: (r.get("order", 0), r["spec"]))
    specs = list(dict.fromkeys(r["spec"] for r in ordered))
    prints = _fingerprints(ordered)
    found: list[tuple[str, str, str]] = []
    matched: set[str] = set()
    for earlier, later in itertools.combinations(specs, 2):
        if later in matched or prints[earlier] != prints[later]:
            continue
        first, second = (next(r for r in ordered if r["spec"] == s) for s in (earlier, later))
        runs = [r for r in ordered if r["spec"] in (earlier, later)]
        found.append((later, earlier, _why_identical(first, second, runs)))
        matched.add(later)
    return found


def _level(name: str, value: Any) -> str:
    """A spec field's value as its spec token (``bn``, ``dropout=0.5``); ``off`` for the field's default."""
    try:
        token = str(RegularizationSpec(**{name: value}))
    except (TypeError, ValueError):
        return f"{name}={value}"
    return "off" if token == "baseline" else token


def _sort_key(value: Any) -> tuple:
    return (value not in (None, False, 0, "none"), str(type(value)), 0 if value is None else value)


def factorial_frame(results: list[dict[str, Any]]) -> Optional[tuple[pd.DataFrame, list[Factor]]]:
    """The trials as a table of their varying spec fields (as level names) and test accuracy, with the factors;
    None when fewer than two fields vary (nothing factorial to estimate)."""
    fields = [r.get("spec_fields") or {} for r in results]
    known = [f.name for f in dataclasses.fields(RegularizationSpec)]  # in the spec's canonical order
    names = [n for n in dict.fromkeys(known + [k for f in fields for k in f]) if any(n in f for f in fields)]
    values = {n: sorted({f.get(n) for f in fields}, key=_sort_key) for n in names}
    varying = [n for n in names if len(values[n]) > 1]
    if len(varying) < 2:
        return None
    factors = [Factor(n, tuple(_level(n, v) for v in values[n])) for n in varying]
    frame = pd.DataFrame({n: [_level(n, f.get(n)) for f in fields] for n in varying})
    frame[RESPONSE] = [r["metrics"]["test/acc"] for r in results]
    return frame, factors


def factorial_analysis(results: list[dict[str, Any]], margin: float = MARGIN) -> Optional[FactorialFit]:
    """Main effects and two-factor interactions on test accuracy, when the specs vary in two fields or more;
    verdicts at `margin`."""
    design = factorial_frame(results)
    if design is None:
        return None
    frame, factors = design
    return factorial_effects(frame, factors, RESPONSE, margin=margin)


def diagnostics(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{spec: {diagnostic: last epoch's value, mean over seeds}} for the `DIAGNOSTICS` any trial logged."""
    table: dict[str, dict[str, list[float]]] = {}
    for r in sorted(results, key=lambda r: (r.get("order", 0), r["spec"])):
        last = (r.get("history") or [{}])[-1]
        for key, label in DIAGNOSTICS.items():
            if key in last and not math.isnan(last[key]):
                table.setdefault(r["spec"], {}).setdefault(label, []).append(last[key])
    return {spec: {k: statistics.fmean(v) for k, v in values.items()} for spec, values in table.items()}


def mixed_environment(results: list[dict[str, Any]]) -> list[str]:
    """A note for every `ENVIRONMENT_KEYS` entry on which the results disagree or that some results lack."""
    notes = []
    for key, what in ENVIRONMENT_KEYS.items():
        values = [(r.get("environment") or {}).get(key) for r in results]
        known = [v for v in values if v is not None]
        distinct = sorted(set(map(str, known)))
        if len(distinct) > 1:
            counts = ", ".join(f"{v} ({sum(str(k) == v for k in known)} trials)" for v in distinct)
            notes.append(f"the results mix {what}: {counts}; compare them with care")
        if known and len(known) < len(values):
            notes.append(
                f"{len(values) - len(known)} of {len(values)} results do not record their {key} (written by older code)"
            )
    return notes
