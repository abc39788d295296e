"""An operation that releases its handles by owner (`close_owner`) must release only its
own: with a fixed owner label, the first of two concurrent uses to end closed the files the
other was still reading (`jetstore.io.handles.use_owner`)."""

from __future__ import annotations

from pathlib import Path

import pytest

import jetstore
from jetstore.backup.offline import backup_offline
from jetstore.backup.verify import verify_backup
from jetstore.instance.diagnosis import plan_recovery
from jetstore.io.files import FileSystem
from jetstore.io.handles import HandleRegistry
from jetstore.tools.checksum import checksum_path


@pytest.mark.parametrize("use", ["diagnose", "checksum", "verify-backup", "offline-backup"])
def test_a_use_leaves_the_files_of_another_use_with_the_same_owner_open(
    tmp_path: Path, use: str
) -> None:
    live = tmp_path / "live"
    inst = jetstore.open(live, log_file_size=64 * 1024)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int")], primary_key="k")
    inst.backup(tmp_path / "set")
    inst.close()
    fs = FileSystem(HandleRegistry("owner-per-use"))
    owner = {
        "diagnose": "diagnose",
        "checksum": "checksum",
        "verify-backup": f"verify-backup:{tmp_path / 'set'}",
        # A second offline backup of the directory, refused by its lock, closed the first
        # one's lock and files on its way out.
        "offline-backup": f"offline-backup:{live}",
    }[use]
    # Another use of the same label, under way in another thread: its file is open.
    other = fs.open(str(live / "main.edb"), owner=owner, writable=False)
    if use == "diagnose":
        plan_recovery(live, fs=fs)
    elif use == "checksum":
        checksum_path(live, fs=fs)
    elif use == "verify-backup":
        verify_backup(tmp_path / "set", fs=fs)
    else:
        backup_offline(live, tmp_path / "offline", filesystem=fs)
    assert other.pread(16, 0)  # still open: not closed by this use's cleanup
    other.close()
    assert fs.registry.total() == 0
