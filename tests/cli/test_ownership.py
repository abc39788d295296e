"""Files the offline commands create in an instance directory, run as root in a directory
owned by another user: they must be that user's, or the instance's owner can no longer open
(or replace) them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import RunJson

if os.geteuid() != 0:
    pytest.skip("giving a file to another user needs root", allow_module_level=True)

#: An owner nobody on the machine is likely to be (root may give files to any number).
UID, GID = 54321, 54322


def give_away(directory: Path) -> None:
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            os.lchown(Path(root) / name, UID, GID)
    os.chown(directory, UID, GID)


def not_theirs(directory: Path) -> list[str]:
    wrong = []
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            info = (Path(root) / name).lstat()
            if (info.st_uid, info.st_gid) != (UID, GID):
                wrong.append(
                    f"{Path(root, name).relative_to(directory)} {info.st_uid}:{info.st_gid}"
                )
    return sorted(wrong)


def test_recover_as_root_leaves_every_file_to_the_directorys_owner(
    crashed: Path, run_json: RunJson
) -> None:
    # Defect: the log generation, checkpoint and event log recovery wrote were root's.
    give_away(crashed)
    before = set(os.listdir(crashed))
    code, _document = run_json("recover", crashed)
    assert code == 0
    assert set(os.listdir(crashed)) - before  # it did create files
    assert not_theirs(crashed) == []


def test_repair_and_compact_as_root_leave_their_files_to_the_directorys_owner(
    closed: Path, run_json: RunJson
) -> None:
    give_away(closed)
    code, _document = run_json("compact", closed / "main.edb", "--keep-original")
    assert code == 0
    assert not_theirs(closed) == []
    code, document = run_json("repair", closed / "main.edb", "--accept-data-loss")
    assert code == 0 and document["result"]["moved_logs_to"]
    assert not_theirs(closed) == []
