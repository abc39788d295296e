"""A Ctrl-C that lands as `FileSystem.open` returns, before a `with` took the file, must not
leave the file open in the engine either: the checkpoint file's write, a backup set's
manifest, log verification, diagnosis and a restore's plain copies open through
`FileSystem.opened` (`jetstore.io.files`), whose `finally` is entered before the open."""

from __future__ import annotations

from pathlib import Path

import pytest

import jetstore
from interrupting import interrupt_as_open_returns
from jetstore.backup.backupset import MANIFEST_NAME
from jetstore.backup.restore import _read_plain
from jetstore.format.filenames import CHECKPOINT_FILE
from jetstore.instance.diagnosis import _read_database
from jetstore.io.files import FileSystem
from jetstore.io.handles import HandleRegistry
from jetstore.log.verify import verify_logs
from jetstore.pages.pagefile import CREATING_SUFFIX

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_interval": 1e6}


def _instance(path: Path) -> jetstore.Instance:
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    with db.transaction() as txn:
        txn.table("kv").insert({"k": 1, "v": "one"})
    return inst


def _open_paths(registry: HandleRegistry, suffix: str) -> list[str]:
    return [h.description for h in registry.open_handles() if h.description.endswith(suffix)]


@pytest.mark.parametrize("suffix", [CHECKPOINT_FILE, MANIFEST_NAME])
def test_an_instance_leaves_no_file_open(tmp_path: Path, suffix: str) -> None:
    inst = _instance(tmp_path / "live")
    try:
        with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns(suffix):
            if suffix == CHECKPOINT_FILE:
                inst.checkpoint()
            else:
                inst.backup(tmp_path / "set")
        # Still open, the instance's own cleanup has not run: the file must be closed now.
        assert _open_paths(inst.registry, suffix) == []
    finally:
        inst.close()


@pytest.mark.parametrize("site", ["logs verify", "diagnosis", "restore copy"])
def test_a_reader_leaves_no_file_open(tmp_path: Path, site: str) -> None:
    _instance(tmp_path / "live").close()
    registry = HandleRegistry("interrupted-open")
    fs = FileSystem(registry)
    live = tmp_path / "live"
    suffix = ".log" if site == "logs verify" else "main.edb"
    with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns(suffix):
        if site == "logs verify":
            verify_logs(fs, live)
        elif site == "diagnosis":
            _read_database(fs, str(live / "main.edb"), "main", "t")
        else:
            list(_read_plain(fs, str(live / "main.edb"), "t"))
    assert [h.description for h in registry.open_handles()] == []


@pytest.mark.parametrize("site", ["create", "attach"])
def test_a_database_interrupted_as_its_file_opens_is_not_left_open(
    tmp_path: Path, site: str
) -> None:
    # Defect: `DatabaseFile.create`/`open` opened as `file = fs.open(...)` before the `try`
    # that closes it: a Ctrl-C as the open returned left the file open in the instance
    # until it closed.
    inst = _instance(tmp_path / "live")
    try:
        if site == "create":
            suffix = "new.edb" + CREATING_SUFFIX
            with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns(suffix):
                inst.database("new", create=True)
        else:
            other = jetstore.open(tmp_path / "other", **OPTIONS)
            other.database("extra", create=True)
            other.detach("extra")
            other.close()
            source = tmp_path / "other" / "extra.edb"
            suffix = "extra.edb"
            with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns(suffix):
                inst.attach(source)
        assert _open_paths(inst.registry, suffix) == []
        if site == "attach":
            assert inst.attach(source).name == "extra"
    finally:
        inst.close()
