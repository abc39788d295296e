"""The offline paths of the admin commands on what disks and operators leave behind: a
damaged first header copy, a directory that is no instance, a lock file held by a tool."""

from __future__ import annotations

from pathlib import Path

from .conftest import RunJson


def test_offline_backup_takes_the_page_size_from_copy_1_when_copy_0_is_damaged(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    with (closed / "main.edb").open("r+b") as file:
        file.seek(4)
        file.write(bytes(16))  # copy 0's magic and page size: it cannot say its page size
    dest = tmp_path / "set"
    code, document = run_json("backup", closed, "--to", dest)
    assert code == 0, document
    (image,) = document["result"]["images"]
    assert image["page_size"] == 8192
    code, document = run_json("verify-backup", dest)
    assert code == 0, document
