"""Restore of a backup an older engine took (before DETACH_DATABASE and ATTACH_DATABASE
records), rolled forward over logs that engine and this one wrote: an instance upgraded in
place between the backup and the restore (`older_engine` in `tests/older_engine.py`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jetstore
from older_engine import Rows, binding_records, older_engine, read_rows, write_rows

OPTIONS: dict[str, Any] = {"log_file_size": 64 * 1024}


#: The workload of `tests/older_engine.py` with shorter values than the crash tests'.
_write = functools.partial(write_rows, width=20)


def _restored(directory: Path) -> Rows:
    with jetstore.open(directory, **OPTIONS) as inst:
        assert inst.recovery is not None and not inst.recovery.needed
        return read_rows(inst)


def _guest(directory: Path, model: Rows) -> Path:
    """A clean `guest.edb` from another instance, ready to attach."""
    other = jetstore.open(directory, **OPTIONS)
    _write(other, model, "guest", range(0, 5), "g")
    path = Path(other.detach("guest"))
    other.close()
    return path


def test_restore_of_an_older_engines_backup_over_the_logs_of_both_engines(
    tmp_path: Path,
) -> None:
    """Every database of the backup (one the older engine created, one it attached without
    an ATTACH record) and one it created after the backup come back with every commit of
    both parts, from a full backup alone and with an incremental one this engine took."""
    live = tmp_path / "live"
    model: Rows = {}
    with older_engine():
        inst = jetstore.open(live, **OPTIONS)
        _write(inst, model, "main", range(0, 30), "a")
        inst.attach(_guest(tmp_path / "elsewhere", model))
        _write(inst, model, "guest", range(5, 20), "g", delete=2)
        inst.backup(tmp_path / "full")
        _write(inst, model, "main", range(20, 60), "b", delete=4)
        _write(inst, model, "guest", range(15, 40), "h", delete=6)
        _write(inst, model, "fresh", range(0, 10), "f")  # created after the backup
        inst.simulate_crash()
    assert binding_records(live) == []

    inst = jetstore.open(live, **OPTIONS)  # this engine: recovers the older engine's crash
    _write(inst, model, "main", range(50, 90), "c", delete=8)
    _write(inst, model, "guest", range(35, 60), "i", delete=9)
    _write(inst, model, "fresh", range(5, 15), "e", delete=1)
    assert read_rows(inst) == model
    inst.simulate_crash()
    assert binding_records(live) == []  # nothing joined or left: no binding record either
    first = jetstore.restore(tmp_path / "full", tmp_path / "restored", logs_from=live)
    assert (first.detached, first.not_restored) == ([], [])
    assert _restored(tmp_path / "restored") == model

    # This engine detaches 'fresh' (a DETACH record; the incremental backup needs every
    # database to have a full one) and takes an incremental backup over the older engine's.
    inst = jetstore.open(live, **OPTIONS)
    Path(inst.detach("fresh")).rename(tmp_path / "fresh.edb")
    inst.backup(tmp_path / "incremental", kind="incremental")
    _write(inst, model, "main", range(85, 95), "d")
    _write(inst, model, "guest", range(0, 3), "j")
    inst.close()
    jetstore.restore(
        [tmp_path / "full", tmp_path / "incremental"], tmp_path / "again", logs_from=live
    )
    assert _restored(tmp_path / "again") == model  # 'fresh' as it was at its detach


def test_restore_across_a_detach_by_the_older_engine_and_a_join_at_the_upgrade(
    tmp_path: Path,
) -> None:
    """The older engine detached 'other' after the backup (no DETACH record); it changed
    elsewhere, came back while the instance was closed, and joined the stream at the first
    open of this engine (an ATTACH record of its own signature). The image is restored as
    it was when it left, as after a logged detach and attach
    (`test_restore_across_detach_and_reattach_of_the_same_database`): what the log holds
    from the join on continues the file as it came back, not the image. It used to be
    applied to the image, which then held the rows written after the join without those
    written elsewhere: a state the database never had."""
    live = tmp_path / "live"
    model: Rows = {}
    with older_engine():
        inst = jetstore.open(live, **OPTIONS)
        _write(inst, model, "main", range(0, 10), "m")
        _write(inst, model, "other", range(0, 10), "o")
        inst.backup(tmp_path / "full")
        _write(inst, model, "other", range(10, 15), "o", delete=0)
        at_detach = dict(model["other"])
        Path(inst.detach("other")).rename(tmp_path / "other.edb")
        _write(inst, model, "main", range(10, 15), "m")
        inst.close()
    elsewhere = jetstore.open(tmp_path / "elsewhere", **OPTIONS)
    elsewhere.attach(tmp_path / "other.edb")
    _write(elsewhere, model, "other", range(100, 105), "x")
    Path(elsewhere.detach("other")).rename(live / "other.edb")
    elsewhere.close()

    inst = jetstore.open(live, **OPTIONS)  # this engine: 'other' joins, logged
    _write(inst, model, "other", range(200, 203), "n", delete=1)
    _write(inst, model, "main", range(15, 20), "m")
    assert read_rows(inst) == model
    inst.close()
    joined = [record for _gen, record in binding_records(live)]
    assert [(type(r).__name__, r.name) for r in joined] == [("AttachDatabaseRecord", "other")]

    result = jetstore.restore(tmp_path / "full", tmp_path / "restored", logs_from=live)
    assert [name for name, _at in result.detached] == ["other"]
    assert [name for name, _at in result.not_restored] == ["other"]
    assert any("'other'" in note and "attached again" in note for note in result.notes)
    assert _restored(tmp_path / "restored") == {"main": model["main"], "other": at_detach}
