"""Recorder and CrashSimulator: the persistence model of `jetstore.io.recording`.

Each test runs a few real file operations through `FileSystem(hook=Recorder())`, then
materialises crash states and looks at what survived.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from jetstore.io.files import FileSystem, IOEvent
from jetstore.io.recording import (
    BASIC_VARIANTS,
    SECTOR_SIZE,
    CrashSimulator,
    DataVariant,
    DirVariant,
    RecordedOp,
    Recorder,
    Variant,
    audit_entry_syncs,
    load_recording,
    save_recording,
)

OWNER = "recording-test"
ALL_VARIANTS = [
    *BASIC_VARIANTS,
    *(Variant(d, r, seed) for d in DataVariant for r in DirVariant for seed in (1, 2, 3)),
]


def record(root: Path, work: Callable[[FileSystem, str], None]) -> tuple[CrashSimulator, Recorder]:
    root.mkdir(exist_ok=True)
    recorder = Recorder()
    work(FileSystem(hook=recorder), str(root))
    return CrashSimulator(recorder.ops, str(root)), recorder


class States:
    """Materialises crash states under one scratch directory and reads them back."""

    def __init__(self, sim: CrashSimulator, scratch: Path) -> None:
        self.sim = sim
        self.scratch = scratch
        self.count = 0

    def files(self, prefix: int, variant: Variant) -> dict[str, bytes]:
        self.count += 1
        target = self.scratch / f"state{self.count}"
        self.sim.materialise(prefix, str(target), variant)
        return {name: (target / name).read_bytes() for name in sorted(os.listdir(target))}


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "states"
    path.mkdir()
    return path


def create_synced(fs: FileSystem, root: str, name: str, data: bytes) -> None:
    with fs.open(os.path.join(root, name), owner=OWNER, create=True) as f:
        f.pwrite(data, 0)
        f.fsync()
    fs.fsync_directory(root)


# ----------------------------------------------------------------- the recorder


def test_recorder_indexes_copies_and_chains(tmp_path: Path) -> None:
    seen: list[str] = []
    recorder = Recorder(lambda event: seen.append(event.op))
    fs = FileSystem(hook=recorder)
    buf = bytearray(b"abcd")
    with fs.open(str(tmp_path / "f"), owner=OWNER, create=True) as f:
        f.pwrite(buf, 0)
        buf[:] = b"XXXX"  # the recording keeps its own copy
        assert f.pread(4, 0) == b"abcd"
        f.fdatasync()
    fs.fsync_directory(str(tmp_path))
    ops = recorder.ops
    assert [op.op for op in ops] == ["create", "write", "fdatasync", "fsync_dir"]
    assert [op.index for op in ops] == [0, 1, 2, 3]
    assert ops[1].data == b"abcd" and ops[1].size == 4
    assert "read" in seen  # the chained hook sees everything; reads are not recorded
    assert recorder.mark() == len(recorder) == 4
    assert recorder.sync_points() == [2, 3]
    assert ops[3].thread == threading.current_thread().name


def test_recorder_does_not_record_an_operation_the_chain_refused(tmp_path: Path) -> None:
    def refuse_fsync(event: IOEvent) -> None:
        if event.op == "fsync":
            raise OSError(5, "injected")

    recorder = Recorder(refuse_fsync, record_reads=True)
    fs = FileSystem(hook=recorder)
    with fs.open(str(tmp_path / "f"), owner=OWNER, create=True) as f:
        f.pwrite(b"x", 0)
        f.pread(1, 0)
        with pytest.raises(Exception, match="injected"):
            f.fsync()
    assert [op.op for op in recorder.ops] == ["create", "write", "read"]
    recorder.enabled = False
    fs.fsync_directory(str(tmp_path))
    assert len(recorder) == 3


def test_recorder_is_thread_safe() -> None:
    recorder = Recorder()

    def work() -> None:
        for _ in range(500):
            recorder(IOEvent("fsync", "/x"))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [op.index for op in recorder.ops] == list(range(2000))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    ops = [
        RecordedOp(0, "create", "/r/a"),
        RecordedOp(1, "write", "/r/a", 7, 3, b"\x00\xffz", thread="t"),
        RecordedOp(2, "rename", "/r/a", target="/r/b"),
    ]
    save_recording(ops, str(tmp_path / "rec"))
    assert load_recording(str(tmp_path / "rec")) == ops
    (tmp_path / "bad").write_bytes(b"nope")
    with pytest.raises(ValueError):
        load_recording(str(tmp_path / "bad"))


# ----------------------------------------------------------------- file data


def test_synced_write_survives_every_variant(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"durable" * 100)
        with fs.open(os.path.join(root, "b"), owner=OWNER, create=True) as f:
            f.pwrite(b"other", 0)  # something unsynced around it

    sim, _ = record(tmp_path / "root", work)
    states = States(sim, scratch)
    for point in [p for p in sim.crash_points() if p > 4]:  # after a's directory sync
        for variant in ALL_VARIANTS:
            assert states.files(point, variant)["a"] == b"durable" * 100, (point, variant)


def test_unsynced_write_survives_only_when_persisted(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"old-old-")
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.pwrite(b"NEW", 0)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    for dirs in DirVariant:
        assert states.files(end, Variant(DataVariant.NONE, dirs))["a"] == b"old-old-"
        assert states.files(end, Variant(DataVariant.ALL, dirs))["a"] == b"NEW-old-"
        torn = states.files(end, Variant(DataVariant.TORN, dirs))["a"]
        assert torn != b"NEW-old-" and torn[3:] == b"-old-"
    subsets = {
        states.files(end, Variant(DataVariant.SUBSET, DirVariant.APPLY, s))["a"] for s in range(20)
    }
    assert subsets == {b"old-old-", b"NEW-old-"}
    # Before the write was issued, no variant can show it.
    for variant in ALL_VARIANTS:
        assert states.files(end - 1, variant)["a"] == b"old-old-"


def test_sync_makes_the_writes_before_it_durable(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"")
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.pwrite(b"one", 0)
            f.pwrite(b"two", 3)
            f.fdatasync()
            f.pwrite(b"three", 6)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    sync = [op.index for op in recorder.ops if op.op == "fdatasync"][-1]
    assert states.files(sync, Variant(DataVariant.NONE, DirVariant.REVERT))["a"] == b""
    assert states.files(sync + 1, Variant(DataVariant.NONE, DirVariant.REVERT))["a"] == b"onetwo"
    end = len(recorder)
    assert states.files(end, Variant(DataVariant.NONE, DirVariant.APPLY))["a"] == b"onetwo"
    assert states.files(end, Variant(DataVariant.ALL, DirVariant.APPLY))["a"] == b"onetwothree"


def test_subset_applies_writes_in_random_order(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"....")
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.pwrite(b"AA", 0)
            f.pwrite(b"BB", 1)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    seen = {
        states.files(len(recorder), Variant(DataVariant.SUBSET, DirVariant.APPLY, seed))["a"]
        for seed in range(40)
    }
    # neither, either, both in order, both out of order (an older page version written last)
    assert seen == {b"....", b"AA..", b".BB.", b"ABB.", b"AAB."}


def test_torn_write_damages_only_the_last_unsynced_write(tmp_path: Path, scratch: Path) -> None:
    first = bytes(range(256)) * 8  # 2048 bytes
    last = b"\xee" * (3 * SECTOR_SIZE + 100)

    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"\x11" * 8192)
        create_synced(fs, root, "b", b"")
        with fs.open(os.path.join(root, "b"), owner=OWNER) as f:
            f.pwrite(first, 0)
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.pwrite(last, 700)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    kinds = set()
    for seed in range(30):
        files = states.files(len(recorder), Variant(DataVariant.TORN, DirVariant.APPLY, seed))
        assert files["b"] == first  # the earlier unsynced write persisted whole
        a = files["a"]
        assert len(a) == 8192
        assert a[:700] == b"\x11" * 700 and a[700 + len(last) :] == b"\x11" * (
            8192 - 700 - len(last)
        )
        torn = a[700 : 700 + len(last)]
        # Pieces between the file's sector boundaries (1024, 1536, 2048): a prefix of them
        # persisted whole, every later one is damaged (zeros or garbage), at least one.
        cuts = [0, 1024 - 700, 1536 - 700, 2048 - 700, len(last)]
        intact = [torn[lo:hi] == last[lo:hi] for lo, hi in itertools.pairwise(cuts)]
        kept = intact.index(False)
        assert not any(intact[kept:])
        for lo, hi in itertools.pairwise(cuts[kept:]):
            kinds.add("zeros" if torn[lo:hi] == bytes(hi - lo) else "garbage")
    assert kinds == {"zeros", "garbage"}


def test_truncate_follows_the_durability_of_writes(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"0123456789")
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.truncate(4)
            f.truncate(6)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    assert states.files(end, Variant(DataVariant.NONE, DirVariant.APPLY))["a"] == b"0123456789"
    assert states.files(end, Variant(DataVariant.ALL, DirVariant.APPLY))["a"] == b"0123\0\0"


# ----------------------------------------------------------------- directory entries


def test_created_file_without_directory_sync_may_vanish(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        with fs.open(os.path.join(root, "new"), owner=OWNER, create=True) as f:
            f.pwrite(b"data", 0)
            f.fsync()  # the data is durable, the name is not

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    assert "new" not in states.files(end, Variant(DataVariant.ALL, DirVariant.REVERT))
    assert states.files(end, Variant(DataVariant.NONE, DirVariant.APPLY)) == {"new": b"data"}
    seen = {
        "new" in states.files(end, Variant(DataVariant.ALL, DirVariant.SUBSET, seed))
        for seed in range(20)
    }
    assert seen == {True, False}


def test_directory_sync_makes_the_name_durable(tmp_path: Path, scratch: Path) -> None:
    sim, recorder = record(tmp_path / "root", lambda fs, root: create_synced(fs, root, "a", b"x"))
    states = States(sim, scratch)
    for variant in ALL_VARIANTS:
        assert states.files(len(recorder), variant) == {"a": b"x"}


def test_rename_without_directory_sync_may_revert(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "target", b"old target")
        create_synced(fs, root, "tmp", b"new content")
        fs.rename(os.path.join(root, "tmp"), os.path.join(root, "target"))

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    reverted = {"target": b"old target", "tmp": b"new content"}
    assert states.files(end, Variant(DataVariant.ALL, DirVariant.REVERT)) == reverted
    assert states.files(end, Variant(DataVariant.ALL, DirVariant.APPLY)) == {
        "target": b"new content"
    }
    seen = {
        tuple(states.files(end, Variant(DataVariant.ALL, DirVariant.SUBSET, seed)))
        for seed in range(20)
    }
    assert seen == {("target", "tmp"), ("target",)}


def test_unlink_without_directory_sync_may_revert(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "gone", b"still here")
        fs.unlink(os.path.join(root, "gone"))

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    assert states.files(end, Variant(DataVariant.NONE, DirVariant.REVERT)) == {
        "gone": b"still here"
    }
    assert states.files(end, Variant(DataVariant.NONE, DirVariant.APPLY)) == {}


def test_dir_mask_applies_exactly_the_chosen_changes_in_order(
    tmp_path: Path, scratch: Path
) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "log", b"generation 1")
        with fs.open(os.path.join(root, "next"), owner=OWNER, create=True) as f:  # change 0
            f.pwrite(b"generation 2", 0)
            f.fsync()
        fs.rename(os.path.join(root, "log"), os.path.join(root, "log.1"))  # change 1
        fs.rename(os.path.join(root, "next"), os.path.join(root, "log"))  # change 2

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    end = len(recorder)
    assert sim.unsynced_entry_changes(end) == 3

    def names(mask: int) -> dict[str, bytes]:
        return states.files(end, Variant(DataVariant.ALL, DirVariant.SUBSET, 0, mask))

    assert names(0b000) == {"log": b"generation 1"}
    assert names(0b011) == {"log.1": b"generation 1", "next": b"generation 2"}
    assert names(0b111) == {"log.1": b"generation 1", "log": b"generation 2"}
    # The second rename without the first replaces the old generation (POSIX allows it).
    assert names(0b101) == {"log": b"generation 2"}
    # A rename whose source name was never persisted cannot persist.
    assert names(0b100) == {"log": b"generation 1"}


def test_rename_across_directories_needs_both_directory_syncs(
    tmp_path: Path, scratch: Path
) -> None:
    def work(fs: FileSystem, root: str) -> None:
        fs.makedirs(os.path.join(root, "sub"))
        create_synced(fs, root, "a", b"x")
        fs.rename(os.path.join(root, "a"), os.path.join(root, "sub", "a"))
        fs.fsync_directory(os.path.join(root, "sub"))

    sim, recorder = record(tmp_path / "root", work)
    target = scratch / "s"
    sim.materialise(len(recorder), str(target), Variant(DataVariant.ALL, DirVariant.REVERT))
    # The new entry is durable (sub was synced), the old one too (root was not): both names.
    assert (target / "a").read_bytes() == (target / "sub" / "a").read_bytes() == b"x"


# ----------------------------------------------------------------- the simulator itself


def test_crash_points_and_replay_in_any_order(tmp_path: Path, scratch: Path) -> None:
    sim, recorder = record(tmp_path / "root", lambda fs, root: create_synced(fs, root, "a", b"x"))
    ops = [op.op for op in recorder.ops]
    assert ops == ["create", "write", "fsync", "fsync_dir"]
    assert sim.sync_points() == [2, 3]
    assert sim.crash_points() == [2, 3, 4]
    states = States(sim, scratch)
    variant = Variant(DataVariant.NONE, DirVariant.REVERT)
    assert states.files(4, variant) == {"a": b"x"}
    assert states.files(3, variant) == {}  # going back replays from the start
    assert states.files(0, Variant(DataVariant.ALL, DirVariant.APPLY)) == {}
    with pytest.raises(ValueError):
        sim.materialise(5, str(scratch / "x"), variant)
    (scratch / "full").mkdir()
    (scratch / "full" / "f").write_bytes(b"")
    with pytest.raises(ValueError):
        sim.materialise(4, str(scratch / "full"), variant)


def test_pristine_files_are_durable(tmp_path: Path, scratch: Path) -> None:
    pristine = tmp_path / "pristine"
    (pristine / "d").mkdir(parents=True)
    (pristine / "old").write_bytes(b"before")
    (pristine / "d" / "deep").write_bytes(b"deep")
    root = tmp_path / "root"
    shutil.copytree(pristine, root)  # the pristine copy is taken before the workload runs
    recorder = Recorder()
    fs = FileSystem(hook=recorder)
    with fs.open(str(root / "old"), owner=OWNER) as f:
        f.pwrite(b"AFTER!", 0)
    fs.unlink(str(root / "d" / "deep"))
    sim = CrashSimulator(recorder.ops, str(root), str(pristine))
    target = scratch / "s"
    sim.materialise(len(recorder), str(target), Variant(DataVariant.NONE, DirVariant.REVERT))
    assert (target / "old").read_bytes() == b"before"
    assert (target / "d" / "deep").read_bytes() == b"deep"  # the unlink was not synced
    applied = scratch / "applied"
    sim.materialise(len(recorder), str(applied), Variant(DataVariant.ALL, DirVariant.APPLY))
    assert (applied / "old").read_bytes() == b"AFTER!"
    assert os.listdir(applied / "d") == []
    assert not sim.anomalies


def test_anomalies_are_reported_not_raised(scratch: Path) -> None:
    ops = [
        RecordedOp(0, "write", "/nonexistent/missing", 0, 1, b"x"),
        RecordedOp(1, "fsync", "/elsewhere/f"),
        RecordedOp(
            2, "rename", "/nonexistent/nothing", target="/nonexistent/b"
        ),  # a failed rename: skipped
        RecordedOp(3, "unlink", "/nonexistent/nothing"),
    ]
    sim = CrashSimulator(ops, "/nonexistent")
    state = sim.materialise(4, str(scratch / "s"), Variant(DataVariant.ALL, DirVariant.APPLY))
    assert state.files == {}
    assert len(sim.anomalies) == 2
    assert "no such file" in sim.anomalies[0] and "outside the root" in sim.anomalies[1]
    with pytest.raises(ValueError):
        CrashSimulator([RecordedOp(3, "fsync", "/elsewhere/a")], "/nonexistent")


def test_crash_state_describes_itself(tmp_path: Path, scratch: Path) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"x" * 2000)
        with fs.open(os.path.join(root, "a"), owner=OWNER) as f:
            f.pwrite(b"y" * 1500, 100)

    sim, recorder = record(tmp_path / "root", work)
    state = sim.materialise(
        len(recorder), str(scratch / "s"), Variant(DataVariant.TORN, DirVariant.APPLY, 3)
    )
    assert state.unsynced_data_ops == 1 and state.persisted_data_ops == 0
    assert state.torn is not None and "write a [100, 1600)" in state.torn
    assert "data=torn" in state.describe() and state.files == {"a": 2000}


# ----------------------------------------------------------------- audit


def test_audit_flags_an_entry_change_not_synced_before_the_acknowledgement(tmp_path: Path) -> None:
    acks: list[int] = []

    def work(fs: FileSystem, root: str) -> None:
        recorder = fs.hook
        assert isinstance(recorder, Recorder)
        create_synced(fs, root, "good", b"x")
        acks.append(recorder.mark())
        with fs.open(os.path.join(root, "bad"), owner=OWNER, create=True) as f:
            f.pwrite(b"y", 0)
            f.fsync()
        acks.append(recorder.mark())  # acknowledged before the directory sync below
        fs.fsync_directory(root)
        with fs.open(os.path.join(root, "scratch"), owner=OWNER, create=True):
            pass
        fs.rename(os.path.join(root, "good"), os.path.join(root, "renamed"))

    sim, _ = record(tmp_path / "root", work)
    findings = audit_entry_syncs(sim, acks, lambda name: name != "scratch")
    assert [(f.rule, sim.ops[f.index].op) for f in findings] == [
        ("entry-sync", "create"),
        ("entry-sync", "rename"),
    ]
    assert "acknowledgement at mark" in findings[0].message
    assert "end of the recording" in findings[1].message


def test_a_link_is_a_second_name_that_is_durable_once_its_directory_is_synced(
    tmp_path: Path, scratch: Path
) -> None:
    def work(fs: FileSystem, root: str) -> None:
        create_synced(fs, root, "a", b"data")
        fs.link(os.path.join(root, "a"), os.path.join(root, "b"))
        fs.fsync_directory(root)

    sim, recorder = record(tmp_path / "root", work)
    states = States(sim, scratch)
    link = next(op.index for op in recorder.ops if op.op == "link")
    assert recorder.ops[link].describe() == f"#{link} link a -> b"
    none = Variant(DataVariant.NONE, DirVariant.REVERT)
    assert states.files(link + 1, none) == {"a": b"data"}
    assert states.files(link + 1, Variant(DataVariant.NONE, DirVariant.APPLY)) == {
        "a": b"data",
        "b": b"data",
    }
    assert states.files(link + 2, none) == {"a": b"data", "b": b"data"}
