"""Consistency checks shared by the crash and fault suites."""

from __future__ import annotations

import os

from jetstore.errors import JetError
from jetstore.format.filenames import parse_database_file_name
from jetstore.tools.integrity import check_integrity


def integrity_problems(directory: str) -> tuple[list[str], int]:
    """`check_integrity` (`jetstore.tools.integrity`: tree order and balance, free space
    accounting, records against indexes, long values) on every database file of a cleanly
    closed instance directory. Returns its errors (warnings are not inconsistencies) and the
    number of files checked."""
    problems: list[str] = []
    checked = 0
    for name in sorted(os.listdir(directory)):
        if parse_database_file_name(name) is None:
            continue
        checked += 1
        try:
            report = check_integrity(os.path.join(directory, name))
        except JetError as exc:
            problems.append(f"integrity check of {name} refused: {type(exc).__name__}: {exc}")
            continue
        errors = [str(p) for p in report.problems if p.severity == "error"]
        if not report.ok:
            problems.append(
                f"integrity check of {name}: {report.errors} error(s): " + "; ".join(errors[:3])
            )
    return problems, checked
