"""`jetstore.restore`: chains of backup sets, surviving logs, stop points, and every refusal
happening before anything is written."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

import jetstore
import jetstore.backup.restore as restore_module
from jetstore.backup.offline import backup_offline
from jetstore.backup.restore import STAGING_SUFFIX, plan_restore
from jetstore.errors import (
    DiskIO,
    EndingRestoreLogTooLow,
    FileAccessDenied,
    GivenLogFileHasBadSignature,
    GivenLogFileIsNotContiguous,
    InvalidBackup,
    InvalidLogSequence,
    InvalidParameter,
    InvalidPath,
    JetError,
    LogFileCorrupt,
    MissingRestoreLogFiles,
    ReadVerifyFailure,
)
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.filenames import generation_log_name
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem


def _open(path: Path, **options: Any) -> jetstore.Instance:
    options.setdefault("log_file_size", 64 * 1024)
    return jetstore.open(path, **options)


class Writer:
    """Commits rows one per transaction and remembers where each commit ended."""

    def __init__(self, inst: jetstore.Instance) -> None:
        self.inst = inst
        self.db = inst.database("main", create=True)
        if "kv" not in self.db.table_names():
            self.db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
        self.ends: dict[int, LogPosition] = {}
        self.times: dict[int, float] = {}
        self.next = 0

    def commit(self, count: int, *, width: int = 200) -> None:
        for _ in range(count):
            i = self.next
            with self.db.transaction() as txn:
                txn.table("kv").insert({"k": i, "v": f"{i}:" + "r" * width})
            self.ends[i] = self.inst.log.end_position
            self.times[i] = time.time()
            self.next += 1


def _rows(inst: jetstore.Instance) -> dict[int, str]:
    with inst.database("main").transaction() as txn:
        return {r["k"]: r["v"] for r in txn.table("kv").scan()}


def _restored_rows(target: Path) -> dict[int, str]:
    with jetstore.open(target) as inst:
        assert inst.recovery is not None and not inst.recovery.needed
        return _rows(inst)


def test_full_then_incrementals_then_surviving_logs_equal_the_live_state(tmp_path: Path) -> None:
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(100)
    sets = [tmp_path / "full"]
    inst.backup(sets[0], kind="full")
    for n in range(3):
        writer.commit(150)
        sets.append(tmp_path / f"inc{n}")
        inst.backup(sets[-1], kind="incremental")
    writer.commit(200)  # only in the surviving logs
    expected = _rows(inst)
    inst.simulate_crash()  # the damaged instance: its page file is not trusted, its logs are

    result = jetstore.restore(sets, tmp_path / "restored", logs_from=live)
    assert result.executed and result.replayed > 0
    assert not (tmp_path / ("restored" + STAGING_SUFFIX)).exists()
    assert _restored_rows(tmp_path / "restored") == expected

    # Without the surviving logs: exactly what the last incremental held.
    jetstore.restore(sets, tmp_path / "restored-sets-only")
    rows = _restored_rows(tmp_path / "restored-sets-only")
    assert set(rows) == set(range(550))


def test_differential_restore(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(50)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(50)
    inst.backup(tmp_path / "diff1", kind="differential")
    writer.commit(50)
    inst.backup(tmp_path / "diff2", kind="differential")
    expected = _rows(inst)
    inst.close()
    jetstore.restore([tmp_path / "full", tmp_path / "diff2"], tmp_path / "restored")
    assert _restored_rows(tmp_path / "restored") == expected
    with pytest.raises(InvalidBackup, match="one differential"):
        plan_restore(
            [tmp_path / "full", tmp_path / "diff1", tmp_path / "diff2"], tmp_path / "other"
        )


def test_a_gap_or_a_foreign_set_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(50)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300)
    inst.backup(tmp_path / "inc1", kind="incremental")
    writer.commit(300)
    inst.backup(tmp_path / "inc2", kind="incremental")
    inst.close()
    other = _open(tmp_path / "other")
    other_writer = Writer(other)
    other_writer.commit(20)
    other.backup(tmp_path / "other-full", kind="full")
    other_writer.commit(20)
    other.backup(tmp_path / "other-inc", kind="incremental")
    other.close()

    target = tmp_path / "restored"
    with pytest.raises(GivenLogFileIsNotContiguous) as gap:
        jetstore.restore([tmp_path / "full", tmp_path / "inc2"], target)
    assert "generations" in str(gap.value) and gap.value.code == -556
    assert not target.exists()
    assert not Path(str(target) + STAGING_SUFFIX).exists()
    with pytest.raises(GivenLogFileHasBadSignature) as foreign:
        jetstore.restore([tmp_path / "full", tmp_path / "other-inc"], target)
    assert "other-inc" in str(foreign.value)
    assert not target.exists()
    with pytest.raises(InvalidBackup):
        jetstore.restore([tmp_path / "inc1"], target)
    with pytest.raises(InvalidBackup):
        jetstore.restore([tmp_path / "full", tmp_path / "other-full"], target)
    # The plan alone (dry run) writes nothing either.
    result = jetstore.restore(
        [tmp_path / "full", tmp_path / "inc1", tmp_path / "inc2"], target, dry_run=True
    )
    assert not result.executed and not target.exists()
    assert any("incremental" in line for line in result.plan.describe())


def _damage_log_header(path: Path) -> None:
    with open(path, "r+b") as file:
        file.seek(10)
        file.write(b"\xff\xff\xff")


def test_an_unreadable_or_missing_surviving_log_is_refused_unless_the_stop_is_before_it(
    tmp_path: Path,
) -> None:
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(600, width=600)
    inst.simulate_crash()
    current = max(end.generation for end in writer.ends.values())
    assert current >= 5
    full = tmp_path / "full"

    def restored_through(target: Path, stop: int) -> None:
        rows = _restored_rows(target)
        for key, end in writer.ends.items():
            if end.generation < stop or key < 20:
                assert key in rows, key
            if end.generation > stop:
                assert key not in rows, key

    # The current log unreadable: its commits are not left out silently.
    _damage_log_header(live / "edb.log")
    with pytest.raises(MissingRestoreLogFiles, match=re.escape("edb.log")) as unreadable:
        plan_restore(full, tmp_path / "x", logs_from=live)
    assert f"--until-generation {current - 1}" in str(unreadable.value)
    jetstore.restore(full, tmp_path / "before-current", logs_from=live, until=current - 1)
    restored_through(tmp_path / "before-current", current - 1)

    # An archived generation unreadable: named, and a stop before it restores.
    middle = current - 2
    _damage_log_header(live / generation_log_name(middle))
    middle_name = re.escape(generation_log_name(middle))
    with pytest.raises(MissingRestoreLogFiles, match=middle_name) as damaged:
        plan_restore(full, tmp_path / "x", logs_from=live, until=current - 1)
    assert f"--until-generation {middle - 1}" in str(damaged.value)
    jetstore.restore(full, tmp_path / "before-middle", logs_from=live, until=middle - 1)
    restored_through(tmp_path / "before-middle", middle - 1)

    # The same generation missing: a gap inside the surviving logs, said as such.
    os.unlink(live / generation_log_name(middle))
    with pytest.raises(GivenLogFileIsNotContiguous, match="surviving logs") as gap:
        plan_restore(full, tmp_path / "x", logs_from=live, until=current - 1)
    message = str(gap.value)
    assert generation_log_name(middle) in message
    assert f"--until-generation {middle - 1}" in message
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("how", ["upper-case", "digits", "current-upper-case"])
def test_misnamed_surviving_logs_are_named_with_the_right_name(tmp_path: Path, how: str) -> None:
    # Defect: a surviving log under a name the engine does not read (EDB00000003.LOG,
    # edb3.log) was ignored without a word: the refusal of the gap it left did not say why
    # the file was not taken, and a misnamed current log (EDB.LOG) silently ended the
    # restore a generation early, its commits lost.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300, width=600)
    expected = _rows(inst)
    inst.simulate_crash()
    full = tmp_path / "full"
    first = plan_restore(full, tmp_path / "x", logs_from=live).surviving_logs[0]
    middle = first + 1
    right = generation_log_name(middle) if how != "current-upper-case" else "edb.log"
    wrong = {
        "upper-case": right.upper(),
        "digits": f"edb{middle:X}.log",
        "current-upper-case": "EDB.LOG",
    }[how]
    os.rename(live / right, live / wrong)
    with pytest.raises(JetError) as refused:
        plan_restore(full, tmp_path / "x", logs_from=live)
    assert isinstance(refused.value, GivenLogFileIsNotContiguous | MissingRestoreLogFiles)
    assert wrong in refused.value.detail
    assert f"rename {wrong} to {right}" in refused.value.hint
    os.rename(live / wrong, live / right)
    jetstore.restore(full, tmp_path / "restored", logs_from=live)
    assert _restored_rows(tmp_path / "restored") == expected


@pytest.mark.parametrize("how", ["last-set-generation-damaged", "last-set-generation-gone", "gap"])
def test_an_unreadable_newest_surviving_log_is_not_left_out_after_incrementals(
    tmp_path: Path, how: str
) -> None:
    # Defect: an unreadable edb.log stood for the generation after the newest *readable*
    # surviving file. With that one below the sets' end (the sets' last generation damaged
    # too, or already deleted), edb.log was taken for a generation the sets held and the
    # restore ended at the sets, its commits left out without a word. Likewise an unreadable
    # archived file after a gap did not count as surviving logs: they "ended" at the gap.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    writer.commit(300 if how == "gap" else 5, width=600)
    inst.simulate_crash()
    sets = [tmp_path / "full", tmp_path / "inc"]
    high = plan_restore(sets, tmp_path / "x").generation_high
    if how == "gap":
        os.unlink(live / generation_log_name(high + 2))
        _damage_log_header(live / generation_log_name(high + 3))
        os.unlink(live / "edb.log")
        error: type[JetError] = GivenLogFileIsNotContiguous
        named, stop = generation_log_name(high + 2), high + 1
    else:
        if how == "last-set-generation-damaged":
            _damage_log_header(live / generation_log_name(high))
        else:
            os.unlink(live / generation_log_name(high))
        _damage_log_header(live / "edb.log")
        error, named, stop = MissingRestoreLogFiles, "edb.log", high
    with pytest.raises(error, match=re.escape(named)) as refused:
        plan_restore(sets, tmp_path / "x", logs_from=live)
    assert f"--until-generation {stop}" in str(refused.value)
    jetstore.restore(sets, tmp_path / "restored", logs_from=live, until=stop)
    rows = _restored_rows(tmp_path / "restored")
    assert {key for key, end in writer.ends.items() if end.generation <= stop} <= set(rows)
    assert all(writer.ends[key].generation <= stop + 1 for key in rows)


def test_surviving_logs_of_a_copy_that_ran_on_by_itself_are_refused_before_copying(
    tmp_path: Path,
) -> None:
    # Defect: a copy of the instance directory that ran on by itself has the same log stream
    # (signature, generation numbers) but another history. The plan accepted its logs; replay
    # refused them only once everything was copied, naming a file in the staging directory it
    # then deleted ('<target>.restoring/edb00000002.log'), with "restore it from backup".
    live = tmp_path / "live"
    inst = _open(live)
    Writer(inst).commit(20)
    inst.close()
    shutil.copytree(live, tmp_path / "copy")
    with _open(live) as inst:
        inst.backup(tmp_path / "full", kind="full")
    inst = _open(tmp_path / "copy")
    other = Writer(inst)
    other.next = 1000
    other.commit(300, width=600)
    inst.simulate_crash()
    target = tmp_path / "restored"
    with pytest.raises(InvalidLogSequence, match="does not continue") as refused:
        jetstore.restore(tmp_path / "full", target, logs_from=tmp_path / "copy")
    first = plan_restore(tmp_path / "full", tmp_path / "x").generation_high + 1
    assert refused.value.path == str(tmp_path / "copy" / generation_log_name(first))
    assert "--logs-from" in str(refused.value)
    assert sorted(os.listdir(tmp_path)) == ["copy", "full", "live"]
    # Its own logs continue the backup.
    jetstore.restore(tmp_path / "full", target, logs_from=live)
    assert set(_restored_rows(target)) == set(range(20))


def test_surviving_logs_set_aside_by_a_recovery_accepting_data_loss_are_pointed_to(
    tmp_path: Path,
) -> None:
    # Defect: once `accept_data_loss` set the logs aside (an unreadable edb.log the stream
    # would write over: refused with LogFileCorrupt, then accepted) and began a new stream,
    # `--logs-from` the instance directory was refused as another instance's, with the advice
    # to "name the directory of the instance the backup was taken of", which it was.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300, width=600)
    inst.close()
    current = max(end.generation for end in writer.ends.values())
    _damage_log_header(live / "edb.log")
    with pytest.raises(LogFileCorrupt, match=re.escape("edb.log")):
        _open(live)
    with _open(live, accept_data_loss=True) as inst:
        assert inst.recovery is not None and inst.recovery.data_loss is not None
        aside = inst.recovery.data_loss.moved_logs_to
    assert aside is not None
    with pytest.raises(GivenLogFileHasBadSignature, match="set aside") as refused:
        plan_restore(tmp_path / "full", tmp_path / "x", logs_from=live)
    assert f"--logs-from {aside}" in str(refused.value)
    # There, the unreadable edb.log is named, and a stop before it restores the rest.
    with pytest.raises(MissingRestoreLogFiles, match=re.escape("edb.log")):
        plan_restore(tmp_path / "full", tmp_path / "x", logs_from=aside)
    target = tmp_path / "restored"
    jetstore.restore(tmp_path / "full", target, logs_from=aside, until=current - 1)
    rows = _restored_rows(target)
    assert {k for k, end in writer.ends.items() if end.generation < current} <= set(rows)
    assert all(writer.ends[k].generation <= current for k in rows)


def test_a_surviving_log_of_another_format_version_is_not_called_damaged(tmp_path: Path) -> None:
    # Defect: an edb.log written by an engine of another format version (an instance
    # upgraded in place after the backup) was refused with the advice to put "a good copy"
    # of it back, as if damaged; there is none: the way out is an engine that reads it.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(50)
    inst.simulate_crash()
    with open(live / "edb.log", "r+b") as file:
        header = bytearray(file.read(4096))
        struct.pack_into("<H", header, 14, FORMAT_VERSION + 1)
        struct.pack_into("<I", header, 0, google_crc32c.value(bytes(header[4:])))
        file.seek(0)
        file.write(header)
    with pytest.raises(MissingRestoreLogFiles, match="BadLogVersion") as refused:
        plan_restore(tmp_path / "full", tmp_path / "x", logs_from=live)
    assert refused.value.path == str(live / "edb.log")
    hint = refused.value.hint or ""
    assert "another format version" in hint and "good copy" not in hint
    assert "--until-generation" in hint


def test_damage_replay_finds_in_a_surviving_log_names_that_file_and_a_stop_before_it(
    tmp_path: Path,
) -> None:
    # Defect: damaged records inside a closed surviving generation (its header intact) are
    # found by replay in the staging directory. The error named the copy there
    # ('<target>.restoring/edb00000003.log', deleted as the restore failed) and said "restore
    # it from backup", which is what was being done.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300, width=600)
    inst.simulate_crash()
    surviving = plan_restore(tmp_path / "full", tmp_path / "x", logs_from=live).surviving_logs
    damaged = surviving[1]
    with open(live / generation_log_name(damaged), "r+b") as file:
        file.seek(3 * 4096)
        file.write(b"\xff" * 64)
    target = tmp_path / "restored"
    with pytest.raises(JetError) as failed:
        jetstore.restore(tmp_path / "full", target, logs_from=live)
    message = str(failed.value)
    assert failed.value.path == str(live / generation_log_name(damaged))
    assert STAGING_SUFFIX not in message
    assert f"--until-generation {damaged - 1}" in message
    assert sorted(os.listdir(tmp_path)) == ["full", "live"]
    jetstore.restore(tmp_path / "full", target, logs_from=live, until=damaged - 1)
    rows = _restored_rows(target)
    assert {k for k, end in writer.ends.items() if end.generation < damaged} <= set(rows)


def test_surviving_logs_from_a_directory_with_no_later_log_are_not_ignored(
    tmp_path: Path,
) -> None:
    # Defect: `--logs-from` a directory holding no log after the sets (a wrong directory, or
    # the database directory where the logs are kept elsewhere) was ignored without a word:
    # the restore ended at the sets, the surviving commits lost while asked for.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    writer.commit(300, width=600)
    inst.simulate_crash()
    sets = [tmp_path / "full", tmp_path / "inc"]
    wrong = tmp_path / "databases"
    wrong.mkdir()
    shutil.copy(live / "main.edb", wrong / "main.edb")
    with pytest.raises(MissingRestoreLogFiles, match="no log file") as refused:
        plan_restore(sets, tmp_path / "x", logs_from=wrong)
    high = plan_restore(sets, tmp_path / "x").generation_high
    assert "without --logs-from" in str(refused.value)
    # A stop inside the sets never needed them.
    plan_restore(sets, tmp_path / "x", logs_from=wrong, until=high)
    last = max(key for key, end in writer.ends.items() if end.generation < high)
    plan_restore(sets, tmp_path / "x", logs_from=wrong, until=_moment(writer.times[last]))
    assert not (tmp_path / "x").exists()


def test_restoring_over_a_live_or_non_empty_directory_is_refused(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    try:
        with pytest.raises(FileAccessDenied, match="open instance"):
            jetstore.restore(tmp_path / "full", tmp_path / "live")
    finally:
        inst.close()
    with pytest.raises(InvalidPath, match="not empty"):
        jetstore.restore(tmp_path / "full", tmp_path / "live")
    (tmp_path / "empty").mkdir()
    jetstore.restore(tmp_path / "full", tmp_path / "empty")
    assert len(_restored_rows(tmp_path / "empty")) == 10


def test_surviving_logs_of_an_open_instance_are_refused_naming_its_process(
    tmp_path: Path,
) -> None:
    # The refusal of a live --logs-from did not name the process holding the lock, as the
    # refusal of a live target (and the instance lock's own error) does.
    live = tmp_path / "live"
    inst = _open(live)
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    try:
        with pytest.raises(FileAccessDenied, match="open instance") as refused:
            jetstore.restore(tmp_path / "full", tmp_path / "restored", logs_from=live)
        assert f"process {os.getpid()}" in refused.value.detail
        assert refused.value.path == str(live)
        with pytest.raises(FileAccessDenied, match=f"process {os.getpid()}"):
            plan_restore(tmp_path / "full", tmp_path / "restored", logs_from=live)
    finally:
        inst.close()
    assert not (tmp_path / "restored").exists()
    # A dry run writes nothing, not even this process's pid into the instance's lock file.
    (live / "jetstore.lock").write_text("12345\n")
    jetstore.restore(tmp_path / "full", tmp_path / "restored", logs_from=live, dry_run=True)
    assert (live / "jetstore.lock").read_text() == "12345\n"


def test_the_surviving_log_directory_stays_locked_while_the_restore_copies_from_it(
    tmp_path: Path,
) -> None:
    # Defect: the lock of --logs-from was only probed while planning: an instance opened
    # there afterwards (a restart of the damaged instance) ran recovery and wrote (or
    # deleted) the logs the restore was copying. The restore now holds the directory lock
    # from its plan to its end.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(10)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(100)
    expected = _rows(inst)
    inst.simulate_crash()
    refusals: list[JetError] = []

    def an_instance_starts_there(done: int, total: int, name: str) -> None:
        if refusals:
            return
        try:
            _open(live).close()
        except FileAccessDenied as exc:
            refusals.append(exc)
        else:
            refusals.append(JetError("the instance opened"))

    jetstore.restore(
        tmp_path / "full", tmp_path / "restored", logs_from=live, progress=an_instance_starts_there
    )
    assert len(refusals) == 1 and isinstance(refusals[0], FileAccessDenied)
    assert str(os.getpid()) in refusals[0].detail
    assert _restored_rows(tmp_path / "restored") == expected
    # Released at the end: the instance opens (and recovers) now.
    with _open(live) as reopened:
        assert _rows(reopened) == expected


@pytest.mark.parametrize("existed", [True, False], ids=["empty-target", "no-target"])
def test_a_target_that_gains_a_file_during_the_restore_is_refused_as_a_path(
    tmp_path: Path, existed: bool
) -> None:
    # Defect: the target is checked empty by the plan, but when a file appeared in it while
    # the files were copied and replayed (another process, an operator), the final rmdir (or
    # rename) failed with ENOTEMPTY, reported as DiskIO (-1022) telling the operator to check
    # the disk's SMART data and cabling. It is a path problem, said as the backup set's
    # publish says it: InvalidPath naming the target, the intruder left alone.
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    target = tmp_path / "target"
    if existed:
        target.mkdir()

    def intrude(done: int, total: int, name: str) -> None:
        target.mkdir(exist_ok=True)
        (target / "intruder").write_text("not the restore's")

    with pytest.raises(InvalidPath, match="no longer empty") as caught:
        jetstore.restore(tmp_path / "full", target, progress=intrude)
    assert caught.value.path == str(target)
    assert os.listdir(target) == ["intruder"]
    assert not Path(str(target) + STAGING_SUFFIX).exists()


@pytest.mark.parametrize("to", ["empty-directory", "nothing"])
def test_a_symbolic_link_as_target_is_refused_before_anything_is_written(
    tmp_path: Path, to: str
) -> None:
    # Defect: a link to an empty directory (or to none) passed the plan; the files were
    # copied and replayed, then the final rmdir (or rename) over the link failed with
    # ENOTDIR, said as "a parent of the target is a file".
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    real = tmp_path / "real"
    if to == "empty-directory":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InvalidPath, match="symbolic link") as refused:
        plan_restore(tmp_path / "full", link)
    assert refused.value.path == str(link)
    assert f"--to {real}" in str(refused.value)
    with pytest.raises(InvalidPath, match="symbolic link"):
        jetstore.restore(tmp_path / "full", link)
    assert not Path(str(link) + STAGING_SUFFIX).exists()
    assert link.is_symlink() and os.readlink(link) == str(real)
    jetstore.restore(tmp_path / "full", real)
    assert len(_restored_rows(link)) == 10


def test_a_staging_directory_made_after_the_plan_is_left_to_whoever_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: the staging directory was created with makedirs(exist_ok): one that another
    # restore into the same target made after this one's plan checked was taken over. The
    # first exclusive file create failed, and the cleanup deleted the other restore's work
    # (or, with other file names, this restore renamed its files into the target).
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    target = tmp_path / "target"
    staging = Path(str(target) + STAGING_SUFFIX)
    planned = restore_module.plan_restore

    def plan_then_another_restore_starts(*args: Any, **kwargs: Any) -> Any:
        plan = planned(*args, **kwargs)
        staging.mkdir()
        (staging / "main.edb").write_bytes(b"the other restore's copy")
        return plan

    monkeypatch.setattr(restore_module, "plan_restore", plan_then_another_restore_starts)
    with pytest.raises(InvalidPath, match="another restore") as refused:
        jetstore.restore(tmp_path / "full", target)
    assert refused.value.path == str(staging)
    assert (staging / "main.edb").read_bytes() == b"the other restore's copy"
    assert not target.exists()


@pytest.mark.parametrize("existed", [True, False], ids=["empty-target", "no-target"])
def test_a_restore_failing_after_its_rename_leaves_the_target_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existed: bool
) -> None:
    # Defect: a failure after the staging directory was renamed to the target (the sync of
    # the target's parent: the rename is not known to be durable; or Ctrl-C there) left the
    # restored instance at the target while the restore reported failure: a retry was then
    # refused ("not empty"), and docs/cli.md promises nothing is left at DIR. As a backup
    # set's publish does, the rename is undone.
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    target = tmp_path / "target"
    if existed:
        target.mkdir()
    sync = FileSystem.fsync_directory

    def parent_sync_fails(self: FileSystem, path: str, **kwargs: Any) -> None:
        if path == str(tmp_path) and (target / "main.edb").exists():
            raise DiskIO("injected: the parent's sync failed", path=path)
        sync(self, path, **kwargs)

    monkeypatch.setattr(FileSystem, "fsync_directory", parent_sync_fails)
    with pytest.raises(DiskIO, match="injected"):
        jetstore.restore(tmp_path / "full", target)
    monkeypatch.setattr(FileSystem, "fsync_directory", sync)
    assert not Path(str(target) + STAGING_SUFFIX).exists()
    if existed:
        assert target.is_dir() and os.listdir(target) == []
    else:
        assert not target.exists()
    jetstore.restore(tmp_path / "full", target)  # the retry works
    assert len(_restored_rows(target)) == 10


def test_a_mount_point_as_target_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restore is built next to the target and renamed over it: an (empty) mount point
    # cannot be replaced so, and the work was lost at the end with a bare OSError (EBUSY).
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    volume = tmp_path / "volume"
    volume.mkdir()
    ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(volume) or ismount(p))
    with pytest.raises(InvalidPath, match="mount point") as refused:
        jetstore.restore(tmp_path / "full", volume)
    assert str(volume / "NAME") in refused.value.hint
    assert not Path(str(volume) + STAGING_SUFFIX).exists() and not any(volume.iterdir())
    jetstore.restore(tmp_path / "full", volume / "restored")
    assert len(_restored_rows(volume / "restored")) == 10


def test_a_manifest_claiming_a_huge_generation_range_is_refused_without_enumerating_it(
    tmp_path: Path,
) -> None:
    # Defect: the plan compared the set's log files with `list(range(low, high + 1))`: a
    # manifest (checksum right: a foreign or damaged writer) claiming generations up to
    # 0xFFFFFFFF or 2**40 made it allocate until MemoryError (or the process was killed for
    # its memory), and 10**30 raised a bare OverflowError. The set is refused as
    # MissingRestoreLogFiles, the missing generations named as ranges (InvalidBackup when
    # the generation is above the highest a log file name holds).
    import json

    from jetstore.backup.backupset import MANIFEST_NAME, manifest_checksum

    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    manifest = inst.backup(tmp_path / "full", kind="full")
    inst.close()
    path = tmp_path / "full" / MANIFEST_NAME
    body = {k: v for k, v in json.loads(path.read_text()).items() if k != "checksum"}
    body["generation_high"] = 0xFFFFFFFF
    path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
    with pytest.raises(MissingRestoreLogFiles) as caught:
        plan_restore(tmp_path / "full", tmp_path / "restored")
    assert f"{manifest.generation_high + 1}-{0xFFFFFFFF}" in caught.value.detail
    for high in (2**40, 10**30):
        body["generation_high"] = high
        path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
        with pytest.raises(InvalidBackup, match="above the highest log generation"):
            plan_restore(tmp_path / "full", tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_a_set_of_another_format_version_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """The manifest records the on-disk format version of the set's files: a set written in
    another (version 1, before D12's page references) is refused from its manifest, naming
    the version and the engine that wrote it, before any file is copied."""
    import json

    from jetstore.backup.backupset import MANIFEST_NAME, manifest_checksum

    inst = _open(tmp_path / "live")
    Writer(inst).commit(3)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    path = tmp_path / "full" / MANIFEST_NAME
    body = {k: v for k, v in json.loads(path.read_text()).items() if k != "checksum"}
    body["format_version"] = 1
    path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
    with pytest.raises(InvalidBackup) as caught:
        jetstore.restore(tmp_path / "full", tmp_path / "restored")
    assert "format version 1" in caught.value.detail
    assert body["engine_version"] in str(caught.value)
    assert not (tmp_path / "restored").exists()
    assert not (tmp_path / f"restored{STAGING_SUFFIX}").exists()


def test_stop_at_a_generation(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(600)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    generations = sorted({end.generation for end in writer.ends.values()})
    stop = generations[len(generations) // 2]
    jetstore.restore([tmp_path / "full", tmp_path / "inc"], tmp_path / "restored", until=stop)
    rows = _restored_rows(tmp_path / "restored")
    # Commits that ended in a generation after the stop are gone; the earlier ones are there
    # (a commit ending exactly at a generation's start offset is the only ambiguous case).
    for key, end in writer.ends.items():
        if end.generation <= stop - 1 or (key < 20):
            assert key in rows, key
        if end.generation > stop:
            assert key not in rows, key
    with pytest.raises(EndingRestoreLogTooLow):
        plan_restore([tmp_path / "full", tmp_path / "inc"], tmp_path / "x", until=0)
    with pytest.raises(JetError, match="end at generation"):
        plan_restore([tmp_path / "full", tmp_path / "inc"], tmp_path / "x", until=10_000)


def test_stop_at_a_time(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(10)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(30)
    time.sleep(0.05)
    moment = datetime.now(UTC)
    time.sleep(0.05)
    writer.commit(30)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    jetstore.restore([tmp_path / "full", tmp_path / "inc"], tmp_path / "restored", until=moment)
    assert set(_restored_rows(tmp_path / "restored")) == set(range(40))
    with pytest.raises(EndingRestoreLogTooLow):
        plan_restore(
            [tmp_path / "full", tmp_path / "inc"],
            tmp_path / "x",
            until=datetime(2000, 1, 1, tzinfo=UTC),
        )


def test_a_stop_time_before_the_images_were_taken_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A commit acknowledged after the backup call began but before its checkpoint is in the
    # images: a stop time before that commit cannot be reached, and restoring to it must be
    # refused, not yield a state holding the later commit.
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(5)
    moments: list[datetime] = []
    checkpoint = inst.checkpoint

    def checkpoint_after_a_commit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.01)
        moments.append(datetime.now(UTC))
        time.sleep(0.01)
        writer.commit(1)  # as a concurrent writer would, while the backup starts
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(inst, "checkpoint", checkpoint_after_a_commit)
    inst.backup(tmp_path / "full", kind="full")
    monkeypatch.setattr(inst, "checkpoint", checkpoint)
    writer.commit(3)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    sets = [tmp_path / "full", tmp_path / "inc"]
    with pytest.raises(EndingRestoreLogTooLow, match="images"):
        jetstore.restore(sets, tmp_path / "early", until=moments[0])
    assert not (tmp_path / "early").exists()
    jetstore.restore(sets, tmp_path / "restored", until=datetime.now(UTC))
    assert set(_restored_rows(tmp_path / "restored")) == set(range(9))


def test_a_restored_instance_has_its_own_log_stream(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    Writer(inst).commit(30)
    inst.backup(tmp_path / "full", kind="full")
    original = inst.log.signature
    inst.close()
    jetstore.restore(tmp_path / "full", tmp_path / "restored")
    with jetstore.open(tmp_path / "restored") as restored:
        assert restored.log.signature != original
        header = restored.database("main").file.header
        assert header.last_full_backup.is_none  # a new chain starts with a new full backup
        writer = Writer(restored)
        writer.next = 1000
        writer.commit(5)
        restored.backup(tmp_path / "restored-full", kind="full")
        writer.commit(5)
        restored.backup(tmp_path / "restored-inc", kind="incremental")
    with pytest.raises(GivenLogFileHasBadSignature):
        plan_restore([tmp_path / "full", tmp_path / "restored-inc"], tmp_path / "x")


def test_a_damaged_backup_file_fails_the_restore_and_leaves_nothing(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    Writer(inst).commit(100)
    inst.backup(tmp_path / "full", kind="full")
    inst.close()
    image = tmp_path / "full" / "main.edb"
    data = bytearray(image.read_bytes())
    data[3 * 8192 + 200] ^= 0xFF
    image.write_bytes(bytes(data))
    target = tmp_path / "restored"
    with pytest.raises(JetError):
        jetstore.restore(tmp_path / "full", target)
    assert not target.exists()
    assert not Path(str(target) + STAGING_SUFFIX).exists()
    assert sorted(os.listdir(tmp_path)) == ["full", "live"]


@pytest.mark.parametrize("cut", ["image", "log"])
def test_a_set_cut_short_is_refused_before_anything_is_written(tmp_path: Path, cut: str) -> None:
    # Defect: a set file of another size than its manifest says (a partial copy of the set)
    # was found only while copied: a dry run accepted the set, and the restore copied every
    # file before it first. The plan refuses it now, naming the file.
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    sets = [tmp_path / "full", tmp_path / "inc"]
    assert len(list((tmp_path / "inc").glob("edb*.log"))) > 1
    victim = tmp_path / "full" / "main.edb"
    if cut == "log":
        victim = sorted((tmp_path / "inc").glob("edb*.log"))[-1]
    with open(victim, "r+b") as file:
        file.truncate(os.path.getsize(victim) - 4096)
    with pytest.raises(ReadVerifyFailure, match="manifest says") as refused:
        jetstore.restore(sets, tmp_path / "restored", dry_run=True)
    assert refused.value.path == str(victim)
    with pytest.raises(ReadVerifyFailure):
        jetstore.restore(sets, tmp_path / "restored", progress=_no_copy)
    assert not (tmp_path / "restored").exists()


def _no_copy(done: int, total: int, name: str) -> None:
    raise AssertionError(f"{name} was copied before the set was refused")


# --------------------------------------------------------------------------- time stops


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _crashed_with_a_gap(tmp_path: Path, how: str = "missing") -> tuple[Writer, Path, Path, int]:
    """A full backup, then commits over several generations in the surviving logs, a crash,
    and one surviving generation lost (or its header damaged: `how`) in the middle. Returns
    (writer, full, live, gap)."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(600, width=600)
    inst.simulate_crash()
    current = max(end.generation for end in writer.ends.values())
    gap = current - 2
    assert gap > min(end.generation for key, end in writer.ends.items() if key >= 20) + 1
    if how == "missing":
        os.unlink(live / generation_log_name(gap))
    else:
        _damage_log_header(live / generation_log_name(gap))
    return writer, tmp_path / "full", live, gap


@pytest.mark.parametrize("how", ["missing", "unreadable"])
def test_a_stop_time_before_a_gap_in_the_surviving_logs_restores(tmp_path: Path, how: str) -> None:
    """`--until-time T` with a generation missing from (or unreadable in) the surviving
    logs: when a commit after T lies before the gap, replay stops there and never reaches
    the gap, so every commit at or before T is restored and none after it; exactly as with a
    generation stop before the gap, which was already allowed."""
    writer, full, live, gap = _crashed_with_a_gap(tmp_path, how)
    # The last commit that ends two generations before the gap: the one after it (a later
    # time) also lies before the gap.
    last = max(key for key, end in writer.ends.items() if end.generation == gap - 2)
    stop = _moment(writer.times[last])
    plan = plan_restore(full, tmp_path / "x", logs_from=live, until=stop)
    assert plan.generation_high == gap - 1
    assert not (tmp_path / "x").exists()
    result = jetstore.restore(full, tmp_path / "restored", logs_from=live, until=stop)
    assert result.stopped_early
    assert set(_restored_rows(tmp_path / "restored")) == set(range(last + 1))


def test_a_stop_time_inside_the_sets_restores_when_the_surviving_logs_start_after_a_gap(
    tmp_path: Path,
) -> None:
    """Defect: a gap right at the start of the surviving logs (the generation after the sets
    gone) refused every time stop, also one that a commit in the sets' logs proves replay
    stops before the gap, which a gap later in the surviving logs allows (D11)."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    writer.commit(300, width=600)
    inst.simulate_crash()
    sets = [tmp_path / "full", tmp_path / "inc"]
    high = plan_restore(sets, tmp_path / "x").generation_high
    os.unlink(live / generation_log_name(high + 1))
    with pytest.raises(GivenLogFileIsNotContiguous, match="missing") as refused:
        plan_restore(sets, tmp_path / "x", logs_from=live)
    assert f"--until-generation {high}" in str(refused.value)
    assert refused.value.path == str(live / generation_log_name(high + 1))
    last = max(key for key, end in writer.ends.items() if end.generation == high - 1)
    stop = _moment(writer.times[last])
    jetstore.restore(sets, tmp_path / "restored", logs_from=live, until=stop)
    assert set(_restored_rows(tmp_path / "restored")) == set(range(last + 1))


def test_a_stop_time_not_proven_before_a_gap_is_refused(tmp_path: Path) -> None:
    """Every commit before the gap is at or before T: the missing generation may hold
    commits at or before T too, which replay would skip without a word. Refused, naming the
    gap and the nearest stops that can be honored."""
    writer, full, live, gap = _crashed_with_a_gap(tmp_path)
    before_gap = max(key for key, end in writer.ends.items() if end.generation < gap)
    for stop in (_moment(writer.times[before_gap]), datetime.now(UTC)):
        with pytest.raises(GivenLogFileIsNotContiguous) as refused:
            plan_restore(full, tmp_path / "x", logs_from=live, until=stop)
        message = str(refused.value)
        assert generation_log_name(gap) in message
        assert "no commit after" in message
        assert f"--until-generation {gap - 1}" in message
        assert "--until-time " in message
    # The suggested time is honored: the last commit before the gap is the first one after
    # it, so everything before that commit is restored.
    suggested = re.search(r"--until-time ([0-9T:.\-]+Z)", str(refused.value))
    assert suggested is not None
    moment = datetime.fromisoformat(suggested.group(1).replace("Z", "+00:00"))
    jetstore.restore(full, tmp_path / "suggested", logs_from=live, until=moment)
    assert set(_restored_rows(tmp_path / "suggested")) == set(range(before_gap))
    assert not (tmp_path / "x").exists()


def test_a_stop_time_between_the_images_last_commit_and_their_pin_restores(
    tmp_path: Path,
) -> None:
    """The images hold every commit up to their checkpoint and none after: a stop time after
    their last commit but before the backup pinned them is a state they reflect exactly."""
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(5)
    time.sleep(0.05)
    quiet = datetime.now(UTC)  # after the last commit, before the backup
    time.sleep(0.05)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(3)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    sets = [tmp_path / "full", tmp_path / "inc"]
    result = jetstore.restore(sets, tmp_path / "restored", until=quiet)
    assert result.executed
    assert set(_restored_rows(tmp_path / "restored")) == set(range(5))
    # Before the images' last commit it is still refused, saying which stop works.
    with pytest.raises(EndingRestoreLogTooLow) as early:
        plan_restore(sets, tmp_path / "x", until=_moment(writer.times[3]))
    message = str(early.value)
    assert "already hold a commit" in message
    suggested = re.search(r"--until-time ([0-9T:.\-]+Z)", message)
    assert suggested is not None
    moment = datetime.fromisoformat(suggested.group(1).replace("Z", "+00:00"))
    assert _moment(writer.times[3]) < moment <= _moment(writer.times[4])
    jetstore.restore(sets, tmp_path / "earliest", until=moment)
    assert set(_restored_rows(tmp_path / "earliest")) == set(range(5))


def test_a_database_created_after_the_stop_time_is_not_restored(tmp_path: Path) -> None:
    """Defect: replay stopped at the first *commit* later than T only, so the creation of a
    database after T (its record carries the time it was made, stamped like a commit's) was
    applied when it came before that commit, or when no commit followed: the restored
    instance held an empty database it did not have at T. And the images of a full backup
    taken after such a creation were accepted for a T before it. Now a creation later than
    T stops replay like a commit, and counts for the images' bound."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(3)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(2)
    time.sleep(0.02)
    moment = datetime.now(UTC)
    time.sleep(0.02)
    inst.database("later", create=True)  # after T, and no commit after it
    inst.simulate_crash()

    result = jetstore.restore(
        tmp_path / "full", tmp_path / "restored", logs_from=live, until=moment
    )
    assert result.stopped_early
    with jetstore.open(tmp_path / "restored") as restored:
        assert restored.databases() == ["main"]
        assert set(_rows(restored)) == set(range(5))

    # A full backup whose images hold that database cannot be taken back before it.
    again = _open(live)
    again.backup(tmp_path / "full2", kind="full")
    again.close()
    with pytest.raises(EndingRestoreLogTooLow, match="images"):
        plan_restore(tmp_path / "full2", tmp_path / "x", until=moment)


def test_an_offline_set_rolls_forward_over_logs_whose_first_generations_are_gone(
    tmp_path: Path,
) -> None:
    """Defect: an offline set (no log) with `logs_from` expected the surviving logs from
    generation 1, so once a backup had truncated the first generations (which its clean
    images never need: they are consistent at the close that preceded it) the restore was
    refused as a gap. Now the surviving logs are taken from the generation of the images'
    consistent point."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(100, width=2000)
    inst.backup(tmp_path / "full", kind="full")  # truncates the generations before it
    writer.commit(100, width=2000)
    inst.backup(tmp_path / "inc", kind="incremental")
    assert not (live / generation_log_name(1)).exists()
    inst.close()
    backup_offline(live, tmp_path / "offline")
    inst = _open(live)
    writer.inst, writer.db = inst, inst.database("main")
    writer.commit(50)
    expected = _rows(inst)
    inst.simulate_crash()
    jetstore.restore(tmp_path / "offline", tmp_path / "restored", logs_from=live)
    assert _restored_rows(tmp_path / "restored") == expected


def test_a_stop_time_before_an_offline_set_was_taken_is_told_by_the_surviving_logs(
    tmp_path: Path,
) -> None:
    """Defect: an offline set holds no log, so a stop time before it was taken was refused
    even with `logs_from`, whose generation of the images' consistent point shows their last
    commit: the images are the state at any time from that commit on."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(19)
    time.sleep(0.01)
    early = datetime.now(UTC)  # before the images' last commit
    time.sleep(0.01)
    writer.commit(1)
    time.sleep(0.02)
    quiet = datetime.now(UTC)  # after the images' last commit, before the backup
    time.sleep(0.02)
    inst.close()
    backup_offline(live, tmp_path / "offline")
    inst = _open(live)
    writer.inst, writer.db = inst, inst.database("main")
    writer.commit(30)
    inst.simulate_crash()
    offline = tmp_path / "offline"
    with pytest.raises(EndingRestoreLogTooLow, match="--logs-from"):
        plan_restore(offline, tmp_path / "x", until=quiet)
    jetstore.restore(offline, tmp_path / "restored", logs_from=live, until=quiet)
    assert set(_restored_rows(tmp_path / "restored")) == set(range(20))
    # Before the images' last commit: refused, the earliest stop they allow named.
    with pytest.raises(EndingRestoreLogTooLow, match="already hold a commit") as refused:
        plan_restore(offline, tmp_path / "x", logs_from=live, until=early)
    assert "--until-time" in refused.value.hint
    assert not (tmp_path / "x").exists()


def test_an_offline_set_whose_first_surviving_log_is_unreadable_is_not_told_to_stop_before_it(
    tmp_path: Path,
) -> None:
    """Defect: with an offline set, the surviving logs start at the generation of the images'
    consistent point; when that file was unreadable (or missing), the refusal advised
    `--until-generation` one below it, a stop the images are already past (refused with
    EndingRestoreLogTooLow). The way out there is a restore of the images alone."""
    live = tmp_path / "live"
    inst = _open(live)
    Writer(inst).commit(20)
    inst.close()
    backup_offline(live, tmp_path / "offline")
    inst = _open(live)
    writer = Writer(inst)
    writer.next = 20
    writer.commit(50)
    inst.simulate_crash()
    first = plan_restore(tmp_path / "offline", tmp_path / "x", logs_from=live).surviving_logs[0]
    name = "edb.log" if not (live / generation_log_name(first)).exists() else None
    _damage_log_header(live / (name or generation_log_name(first)))
    with pytest.raises(MissingRestoreLogFiles) as refused:
        plan_restore(tmp_path / "offline", tmp_path / "x", logs_from=live)
    message = str(refused.value)
    assert f"--until-generation {first - 1}" not in message
    assert "without --logs-from" in message
    jetstore.restore(tmp_path / "offline", tmp_path / "restored")
    assert set(_restored_rows(tmp_path / "restored")) == set(range(20))


def test_a_generation_stop_does_not_copy_or_check_the_set_logs_after_it(tmp_path: Path) -> None:
    """Defect: `--until-generation N` still copied (and checked) every log of the sets after
    N, so one damaged (or cut) log file after the stop failed the restore: the generations
    before it, which the stop asked for, could not be restored from that set at all."""
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    sets = [tmp_path / "full", tmp_path / "inc"]
    plan = plan_restore(sets, tmp_path / "x")
    stop = plan.generation_high - 1
    last_log = tmp_path / "inc" / generation_log_name(plan.generation_high)
    before_last = tmp_path / "inc" / generation_log_name(stop)
    with open(last_log, "r+b") as file:
        file.seek(5000)
        file.write(b"\xff" * 16)
    with pytest.raises(JetError):
        jetstore.restore(sets, tmp_path / "all")
    result = jetstore.restore(sets, tmp_path / "restored", until=stop)
    assert all(step.generation is None or step.generation <= stop for step in result.plan.steps)
    rows = set(_restored_rows(tmp_path / "restored"))
    assert rows == {k for k, end in writer.ends.items() if end.generation <= stop}
    # A file cut short after the stop is no reason to refuse either.
    with open(last_log, "r+b") as file:
        file.truncate(4096)
    jetstore.restore(sets, tmp_path / "restored-again", until=stop)
    with open(before_last, "r+b") as file:
        file.truncate(4096)
    with pytest.raises(ReadVerifyFailure):
        plan_restore(sets, tmp_path / "x", until=stop)


def test_a_directory_whose_logs_a_repair_set_aside_points_to_them(tmp_path: Path) -> None:
    """Defect: after `jetstore repair` moved the logs into `lost-logs-<time>/` (no new
    stream yet), `--logs-from` the instance directory was refused as holding no log, with
    no word of where they went, which the same refusal says for a new stream's logs."""
    from jetstore.tools.repair import repair_database

    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(100, width=600)
    expected = _rows(inst)
    inst.close()
    report = repair_database(live / "main.edb", accept_data_loss=True)
    aside = report.moved_logs_to
    assert aside is not None and not (live / "edb.log").exists()
    with pytest.raises(MissingRestoreLogFiles, match="set aside") as refused:
        plan_restore(tmp_path / "full", tmp_path / "x", logs_from=live)
    assert f"--logs-from {aside}" in str(refused.value)
    jetstore.restore(tmp_path / "full", tmp_path / "restored", logs_from=aside)
    assert _restored_rows(tmp_path / "restored") == expected


def test_an_opener_refused_by_a_restore_holding_its_logs_is_told_it_is_a_restore(
    tmp_path: Path,
) -> None:
    # Defect: the lock file held only a pid, so while a restore held --logs-from an Instance
    # opened there in the same process was told "already open by this process, through
    # another Instance object", and a restore in another process that the directory was
    # "an open instance": both sent the operator after an instance that does not exist.
    live = tmp_path / "live"
    inst = _open(live)
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    inst.simulate_crash()
    other_restore = (
        "import jetstore\n"
        "try:\n"
        f"    jetstore.restore({str(tmp_path / 'full')!r}, {str(tmp_path / 'other')!r}, "
        f"logs_from={str(live)!r})\n"
        "except jetstore.errors.FileAccessDenied as exc:\n"
        "    print(exc.detail)\n"
    )
    refusals: list[str] = []

    def others_open_there(done: int, total: int, name: str) -> None:
        if refusals:
            return
        with pytest.raises(FileAccessDenied) as refused:
            _open(live)
        refusals.append(refused.value.detail or "")
        child = subprocess.run(
            [sys.executable, "-c", other_restore],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == 0, child.stderr
        refusals.append(child.stdout)

    jetstore.restore(
        tmp_path / "full", tmp_path / "restored", logs_from=live, progress=others_open_there
    )
    same_process, other_process = refusals
    assert (
        f"a restore copying its logs (restore --logs-from) in this process (process {os.getpid()})"
        in (same_process)
    )
    assert "Instance object" not in same_process and "open instance" not in same_process
    assert f"a restore copying its logs (restore --logs-from) (process {os.getpid()})" in (
        other_process
    )
    assert "open instance" not in other_process
    assert not (tmp_path / "other").exists()
    # The instance's own lock names it as one, once the restore let go.
    with _open(live), pytest.raises(FileAccessDenied, match="open instance in this process"):
        _open(live)


def test_a_target_inside_a_set_or_the_surviving_logs_is_refused_by_the_api_too(
    tmp_path: Path,
) -> None:
    # Defect: only the command line refused a target inside a backup set or inside the
    # --logs-from directory; `jetstore.restore(FULL, FULL / "restored")` built the restored
    # instance inside the set (deleting the old set deleted the restore with it), and one
    # inside the damaged instance's directory nested an instance in it.
    live = tmp_path / "live"
    inst = _open(live)
    writer = Writer(inst)
    writer.commit(10)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(20)
    inst.simulate_crash()
    full = tmp_path / "full"
    before = sorted(os.listdir(full)), sorted(os.listdir(live))
    for target, logs_from in (
        (full / "restored", None),
        (full / "sub" / "restored", None),
        (live / "restored", live),
    ):
        for dry_run in (True, False):
            with pytest.raises(InvalidPath, match="inside") as refused:
                jetstore.restore(full, target, logs_from=logs_from, dry_run=dry_run)
            assert refused.value.path == str(target)
            assert "directory of its own" in refused.value.hint
    assert (sorted(os.listdir(full)), sorted(os.listdir(live))) == before
    jetstore.restore(full, tmp_path / "restored", logs_from=live)
    assert len(_restored_rows(tmp_path / "restored")) == 30


def test_a_set_listed_twice_or_of_an_older_chain_is_told_to_be_left_out(tmp_path: Path) -> None:
    # Defect: an incremental whose generations the sets before it already hold (the same set
    # named twice, or one taken before the full backup given) was refused with the advice for
    # a gap, "add the missing incremental backups": there is nothing to add, one is to go.
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(10)
    inst.backup(tmp_path / "full1", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc1", kind="incremental")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "full2", kind="full")
    inst.close()
    full1, inc1, full2 = tmp_path / "full1", tmp_path / "inc1", tmp_path / "full2"
    for sets, why, way_out in (
        ([full1, inc1, inc1], "named twice", "name it once"),
        ([full2, inc1], "taken before", f"leave {inc1} out"),
    ):
        with pytest.raises(GivenLogFileIsNotContiguous) as refused:
            jetstore.restore(sets, tmp_path / "restored", dry_run=True)
        assert refused.value.path == str(inc1)
        assert why in str(refused.value)
        assert "add the missing" not in refused.value.hint
        assert way_out in refused.value.hint


def test_a_generation_stop_restores_from_a_set_missing_a_log_after_it(tmp_path: Path) -> None:
    # Defect: `--until-generation N` kept a set whose log after N was damaged or cut short
    # from being refused, but not one whose log after N was missing: the restore was refused
    # ("copy the whole backup set again"), without a word of the stop that avoids it.
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(20)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(300, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    sets = [tmp_path / "full", tmp_path / "inc"]
    plan = plan_restore(sets, tmp_path / "x")
    stop = plan.generation_high - 1
    (tmp_path / "inc" / generation_log_name(plan.generation_high)).unlink()
    with pytest.raises(MissingRestoreLogFiles) as refused:
        jetstore.restore(sets, tmp_path / "all")
    assert f"--until-generation {stop}" in refused.value.hint
    jetstore.restore(sets, tmp_path / "restored", until=stop)
    rows = set(_restored_rows(tmp_path / "restored"))
    assert rows == {k for k, end in writer.ends.items() if end.generation <= stop}


def test_an_incremental_after_a_copy_backup_is_told_to_go_with_its_full_backup(
    tmp_path: Path,
) -> None:
    # Defect: a copy backup with the incremental (or differential) taken after it was
    # refused saying the incremental was taken before the copy, or to add missing backups:
    # incrementals follow the last full (or incremental) backup, never a copy.
    inst = _open(tmp_path / "live")
    writer = Writer(inst)
    writer.commit(10)
    inst.backup(tmp_path / "full", kind="full")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "copy", kind="copy")
    writer.commit(150, width=600)
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    with pytest.raises(GivenLogFileIsNotContiguous) as refused:
        jetstore.restore([tmp_path / "copy", tmp_path / "inc"], tmp_path / "restored")
    message = str(refused.value)
    assert "never a copy backup" in message, message
    assert "taken before" not in message and "add the missing" not in message, message
    assert "the full backup it follows" in refused.value.hint, message
    jetstore.restore([tmp_path / "full", tmp_path / "inc"], tmp_path / "restored")
    assert len(_restored_rows(tmp_path / "restored")) == 310


def test_restoring_over_a_live_instance_is_told_the_way_that_works(tmp_path: Path) -> None:
    # Defect: the refusal of a live instance's directory as the target said to "close that
    # instance first", after which the same restore was refused as "not empty": a restore
    # never replaces an instance's files.
    inst = _open(tmp_path / "live")
    Writer(inst).commit(10)
    inst.backup(tmp_path / "full", kind="full")
    try:
        with pytest.raises(FileAccessDenied, match="open instance") as refused:
            jetstore.restore(tmp_path / "full", tmp_path / "live")
    finally:
        inst.close()
    hint = refused.value.hint
    assert "close that instance (or wait for that restore or tool to end) first" not in hint
    assert "restore into a new or empty directory" in hint
    assert "move its directory away" in hint


@pytest.mark.parametrize("given", [None, b"/backups/full", 7])
def test_backup_sets_given_as_no_path_or_list_are_refused_as_a_parameter(
    tmp_path: Path, given: Any
) -> None:
    # Defect: `jetstore.restore(None, ...)` failed with a bare TypeError ("'NoneType' object
    # is not iterable"), and a bytes path was read as a list of numbers ("not int 47").
    with pytest.raises(InvalidParameter) as refused:
        jetstore.restore(given, tmp_path / "restored")
    assert "backup set" in str(refused.value)
    assert "int 47" not in str(refused.value)
    assert not (tmp_path / "restored").exists()
