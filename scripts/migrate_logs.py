"""Bring every result.json under the given folders (default: ``logs``) up to what the harness now reads, once.

Each result gets, where it has none:

- ``checksum``: `ablations.store.content_checksum` of its content (a result without one is not trusted);
- ``levels``: {factor: label} of its cell, from its suite when that is a shipped suite (`Trial.levels`);
- with ``--data-dir DIR``, ``fingerprints["data"]``: the fingerprint of the built-in dataset it names, read in DIR
  (`ablations.custom.builtin_fingerprint`), so that a rerun on other data is refused. Give it only the folder the
  results were trained on.

Nothing else changes (the key order and indentation of `ablations.store.write_result`); a result that has all of
these is left as it is, so running it again changes nothing. A result that is not valid JSON is named and left
alone.

    PYTHONPATH=$PWD python scripts/migrate_logs.py --data-dir ../shared/data logs/replication logs/factorial
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any, Optional

from ablations.custom import builtin_fingerprint
from ablations.store import CHECKSUM_KEY, RESULT_FILE, write_result
from ablations.suite import SuiteError, available_suites, expand_trials, load_suite


@functools.lru_cache(maxsize=None)
def _suite_levels(name: str) -> dict[str, dict[str, str]]:
    """{spec: its levels} of a shipped suite; empty for another."""
    if name not in available_suites():
        return {}
    try:
        suite = load_suite(name)
    except SuiteError:
        return {}
    return {str(t.spec): t.levels() for t in expand_trials(suite, suite.settings)}


def migrated(result: dict[str, Any], root: Path, data_dir: Optional[Path]) -> dict[str, Any]:
    """`result` with what it lacks added (its checksum is written by `write_result`)."""
    new = {k: v for k, v in result.items() if k != CHECKSUM_KEY}
    if "levels" not in new and "cell" not in new:  # a cell's levels need its suite file, not shipped
        new["levels"] = _suite_levels(str(new.get("suite"))).get(str(new.get("spec")), {})
    data = (new.get("settings") or {}).get("data", "cifar10")
    fingerprints = dict(new.get("fingerprints") or {})
    if data_dir is not None and "data" not in fingerprints and isinstance(data, str):
        found = builtin_fingerprint(data, data_dir, root)
        if found is not None:
            new["fingerprints"] = {**fingerprints, "data": found}
    return new


def migrate(root: Path, data_dir: Optional[Path] = None) -> tuple[int, int, list[str]]:
    """(results changed, results left as they were, unreadable files) under `root`."""
    changed, kept, unreadable = 0, 0, []
    for path in sorted(root.rglob(RESULT_FILE)):
        if path.is_symlink():
            unreadable.append(f"{path} (a symlink)")
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            unreadable.append(f"{path} ({error})")
            continue
        if not isinstance(result, dict):
            unreadable.append(f"{path} (not a mapping)")
            continue
        new = migrated(result, root, data_dir)
        if CHECKSUM_KEY in result and new == {k: v for k, v in result.items() if k != CHECKSUM_KEY}:
            kept += 1
        else:
            write_result(path, new)
            changed += 1
    return changed, kept, unreadable


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/migrate_logs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", type=Path, default=[Path("logs")])
    parser.add_argument("--data-dir", type=Path, help="the data the results were trained on (records its fingerprint)")
    args = parser.parse_args(argv)
    missing = [str(r) for r in [*args.roots, *([args.data_dir] if args.data_dir else [])] if not r.is_dir()]
    if missing:
        print(f"migrate_logs: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    status = 0
    for root in args.roots:
        changed, kept, unreadable = migrate(root, args.data_dir)
        print(f"{root}: {changed} result(s) migrated, {kept} already were")
        for line in unreadable:
            print(f"unreadable, left alone: {line}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
