"""Add the ``checksum`` key to every result.json under the given folders that has none (default: ``logs``).

Results written before checksums existed carry no ``checksum``; the harness now treats such a result as a problem
(`ablations.store.read_result`), so the committed ones are migrated once with this script. It adds exactly
`ablations.store.content_checksum` of the content and changes nothing else (the key order and indentation of
`ablations.store.write_result`); a result that already has a checksum is left as it is, so running it again
changes nothing. A result that is not valid JSON is named and left alone.

    PYTHONPATH=$PWD python scripts/migrate_logs.py logs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ablations.store import CHECKSUM_KEY, RESULT_FILE, write_result


def migrate(root: Path) -> tuple[int, int, list[str]]:
    """(results migrated, results that already had a checksum, unreadable files) under `root`."""
    migrated, kept, unreadable = 0, 0, []
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
        elif CHECKSUM_KEY in result:
            kept += 1
        else:
            write_result(path, result)
            migrated += 1
    return migrated, kept, unreadable


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path("logs")]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"migrate_logs: error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    status = 0
    for root in roots:
        migrated, kept, unreadable = migrate(root)
        print(f"{root}: {migrated} result(s) given a checksum, {kept} already had one")
        for line in unreadable:
            print(f"unreadable, left alone: {line}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
