"""Backup sets written from online sessions (`write_backup_set`, `Instance.backup`).

Round trips for every kind, compressed and not; the manifest read back and its tampering
detected; `read_backup_file` checking size and CRC32C; the destination rules; and the
failure contract: a fault injected into any destination operation leaves no partial set, no
backup history, every log file in place, and the handle registry and the process's open
descriptors exactly where they were.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

import jetstore
from interrupting import interrupt_as_open_returns
from jetstore.backup.backupset import (
    MANIFEST_NAME,
    PARTIAL_MARKER,
    PARTIAL_SUFFIX,
    Manifest,
    manifest_checksum,
    read_backup_file,
    read_manifest,
    write_backup_set,
)
from jetstore.errors import DiskFull, FileNotFound, InvalidBackup, InvalidPath, JetError
from jetstore.errors import ReadVerifyFailure as ReadVerify
from jetstore.format.dbheader import BackupInfo
from jetstore.io.files import FileSystem, IOEvent
from jetstore.io.handles import HandleRegistry

OPTIONS: dict[str, Any] = {"log_file_size": 64 * 1024, "checkpoint_interval": 1e6}


def commit(db: jetstore.Database, start: int, count: int, width: int = 1500) -> None:
    for i in range(start, start + count):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": f"{i}:" + "v" * width})


def make_instance(path: Path, **options: Any) -> jetstore.Instance:
    inst = jetstore.open(path, **{**OPTIONS, **options})
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    commit(db, 0, 40)
    return inst


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def log_files(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.startswith("edb") and n.endswith(".log"))


def quiet(inst: jetstore.Instance) -> None:
    """Wait until the log writer's preparer is not creating `edbtmp.log` (it opens and
    closes handles of its own while it works)."""
    deadline = time.monotonic() + 10
    while inst.log._prepare_state == "preparing" and time.monotonic() < deadline:
        time.sleep(0.01)


def baseline_of(inst: jetstore.Instance) -> tuple[dict[str, int], int]:
    quiet(inst)
    return inst.registry.counts(), open_fds()


def settle(inst: jetstore.Instance, baseline: dict[str, int], fds: int) -> None:
    """With the preparer quiet, the handles and descriptors are exactly the baseline."""
    quiet(inst)
    assert inst.registry.counts() == baseline
    assert open_fds() == fds


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[jetstore.Instance]:
    instance = make_instance(tmp_path / "live")
    yield instance
    instance.close()


def content(path: Path, manifest: Manifest, name: str) -> bytes:
    registry = HandleRegistry("test")
    entry = manifest.file(name)
    data = b"".join(read_backup_file(path, entry, fs=FileSystem(registry), owner="t"))
    assert registry.total() == 0
    return data


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize("kind", ["full", "incremental", "differential", "copy"])
def test_round_trip(inst: jetstore.Instance, tmp_path: Path, kind: str, compress: bool) -> None:
    db = inst.database("main")
    if kind in ("incremental", "differential"):
        inst.backup(tmp_path / "base", kind="full")
        commit(db, 40, 80)  # several generations
    before = db.file.header
    baseline, fds = baseline_of(inst)
    dest = tmp_path / "set"
    seen: list[tuple[int, int, str]] = []
    manifest = inst.backup(
        dest, kind=kind, compress=compress, progress=lambda d, t, n: seen.append((d, t, n))
    )
    settle(inst, baseline, fds)

    assert manifest.kind == kind and not manifest.offline
    assert manifest.path == str(dest)
    assert manifest.source == inst.directory
    assert manifest.log_signature == inst.log.signature
    assert manifest.compression == ("zstd" if compress else "none")
    assert manifest.logs == "included"
    generations = list(range(manifest.generation_low, manifest.generation_high + 1))
    assert manifest.generations == generations and generations
    if kind in ("full", "copy"):
        assert [f.name for f in manifest.database_files] == ["main.edb"]
        image = manifest.images[0]
        assert image.name == "main" and image.signature == db.file.header.db_signature
        assert manifest.generation_low <= image.checkpoint.generation
    else:
        assert manifest.images == [] and manifest.database_files == []
        assert len(generations) >= 2
    assert manifest.databases == ["main"]
    assert not os.path.exists(str(dest) + PARTIAL_SUFFIX)
    stored = sorted(os.listdir(dest))
    expected = sorted([MANIFEST_NAME, *(f.stored_name for f in manifest.files)])
    assert stored == expected
    for entry in manifest.files:
        assert entry.stored_name == entry.name + (".zst" if compress else "")
        assert os.path.getsize(dest / entry.stored_name) == entry.stored_size
        if compress and entry.kind == "log":
            assert entry.stored_size < entry.size

    # The manifest reads back equal, and every file's content matches size and CRC32C.
    again = read_manifest(dest)
    assert again == manifest
    assert read_manifest(dest / MANIFEST_NAME) == manifest
    for entry in manifest.files:
        data = content(dest, manifest, entry.name)
        assert len(data) == entry.size
        assert int(google_crc32c.value(data)) == entry.crc32c
    # Log copies are the source frames up to the recorded end (the source may be gone
    # after truncation only for generations below this backup).
    last = manifest.log_files[-1]
    source = Path(inst.directory) / last.name
    data = content(dest, manifest, last.name)
    assert source.read_bytes()[:4096] == data[:4096]

    verification = jetstore.verify_backup(dest)
    assert verification.ok, verification.problems

    # Progress: monotonic, ends at the total, names every file.
    assert seen and seen[-1][0] == seen[-1][1] == manifest.total_size
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert {n for _d, _t, n in seen if n} == {f.name for f in manifest.files}

    header = db.file.header
    field = {
        "full": "last_full_backup",
        "incremental": "last_incremental_backup",
        "differential": "last_differential_backup",
    }.get(kind)
    if field is None:  # copy: no history
        assert header.last_full_backup == before.last_full_backup
        assert header.last_incremental_backup == before.last_incremental_backup
    else:
        info: BackupInfo = getattr(header, field)
        assert (info.generation_low, info.generation_high) == (
            manifest.generation_low,
            manifest.generation_high,
        )
    counters = inst.counters()
    assert counters["backup_sessions_active"] == 0


def test_empty_directory_is_a_valid_destination(inst: jetstore.Instance, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    manifest = inst.backup(dest)
    assert jetstore.verify_backup(dest).ok
    assert manifest.path == str(dest)


def test_write_backup_set_with_an_explicit_session(inst: jetstore.Instance, tmp_path: Path) -> None:
    with inst.begin_backup("copy") as session:
        manifest = write_backup_set(session, tmp_path / "nested" / "deeper" / "set")
        assert session.state == "completed"
    assert jetstore.verify_backup(manifest.path).ok


# --------------------------------------------------------------------------- destination


def test_non_empty_destination_is_refused_before_anything(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "other").write_text("x")
    before = inst.database("main").file.header.last_full_backup
    with pytest.raises(InvalidPath, match="not empty"):
        inst.backup(dest)
    assert os.listdir(dest) == ["other"]
    assert not os.path.exists(str(dest) + PARTIAL_SUFFIX)
    assert inst.database("main").file.header.last_full_backup == before
    assert inst.counters()["backups_aborted"] == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidPath, match="not a directory"):
        inst.backup(tmp_path / "file")


def test_a_mount_point_destination_is_refused_before_anything(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The set is written next to DEST and renamed over it: an empty mount point (a freshly
    # mounted backup volume) cannot be replaced so. It failed only at the end, with EBUSY as
    # FileAccessDenied and a hint about permissions and the instance lock.
    dest = tmp_path / "volume"
    dest.mkdir()
    ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(dest) or ismount(p))
    before = inst.database("main").file.header.last_full_backup
    with pytest.raises(InvalidPath, match="mount point") as refused:
        inst.backup(dest)
    assert str(dest / "NAME") in refused.value.hint
    assert not os.path.exists(str(dest) + PARTIAL_SUFFIX) and os.listdir(dest) == []
    assert inst.database("main").file.header.last_full_backup == before
    inst.backup(dest / "full")
    assert jetstore.verify_backup(dest / "full").ok


@pytest.mark.parametrize("to", ["empty-directory", "nothing"])
def test_a_symbolic_link_destination_is_refused_before_anything(
    inst: jetstore.Instance, tmp_path: Path, to: str
) -> None:
    # Defect: a link to an empty directory (or to none) passed the checks; every file was
    # copied, then the rename of DEST.partial over the link failed with ENOTDIR, said as "a
    # parent of DEST.partial is a file", and the work was thrown away.
    real = tmp_path / "real"
    if to == "empty-directory":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InvalidPath, match="symbolic link") as refused:
        inst.backup(link)
    assert refused.value.path == str(link)
    assert str(real) in refused.value.hint
    assert not os.path.exists(str(link) + PARTIAL_SUFFIX)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert inst.database("main").file.header.last_full_backup.is_none
    assert inst.counters()["backups_failed"] + inst.counters()["backups_aborted"] <= 1
    inst.backup(real)
    assert jetstore.verify_backup(link).ok


def test_leftover_partial_directory(inst: jetstore.Instance, tmp_path: Path) -> None:
    dest = tmp_path / "set"
    partial = Path(str(dest) + PARTIAL_SUFFIX)
    partial.mkdir()
    (partial / "main.edb").write_bytes(b"half")
    with pytest.raises(InvalidPath, match="not left by an interrupted backup"):
        inst.backup(dest)
    assert (partial / "main.edb").exists()
    # Marked: an interrupted backup's, or a running one's. The marker does not tell them
    # apart, so it used to be removed and the backup ran on: a second backup to DEST deleted
    # the first one's files while it wrote them (or both wrote into one directory).
    (partial / PARTIAL_MARKER).write_bytes(b"")
    with pytest.raises(InvalidPath, match="another backup to") as refused:
        inst.backup(dest)
    assert refused.value.path == str(partial)
    assert str(partial) in refused.value.detail and "no backup" in refused.value.hint
    assert (partial / "main.edb").read_bytes() == b"half"
    assert not dest.exists()
    assert inst.database("main").file.header.last_full_backup.is_none
    shutil.rmtree(partial)  # what the hint says to do
    inst.backup(dest)
    assert jetstore.verify_backup(dest).ok


def test_a_partial_directory_made_after_the_checks_is_left_to_whoever_made_it(
    tmp_path: Path,
) -> None:
    # The staging directory was made with makedirs(exist_ok): one that another backup to
    # DEST created between this one's checks and its creation was taken over, both backups
    # writing into one directory (and the first failure deleting the other's work).
    dest = tmp_path / "set"
    partial = Path(str(dest) + PARTIAL_SUFFIX)

    def another_backup_starts(event: IOEvent) -> None:
        if event.op == "mkdir" and event.path == str(partial) and not partial.exists():
            partial.mkdir()
            (partial / PARTIAL_MARKER).write_bytes(b"")
            (partial / "main.edb").write_bytes(b"the other backup's image")

    inst = make_instance(tmp_path / "live", filesystem=FileSystem(hook=another_backup_starts))
    try:
        with pytest.raises(InvalidPath, match="another backup to"):
            inst.backup(dest)
        assert (partial / "main.edb").read_bytes() == b"the other backup's image"
        assert not dest.exists()
    finally:
        inst.close()


# --------------------------------------------------------------------------- manifest


def test_manifest_tampering_is_detected(inst: jetstore.Instance, tmp_path: Path) -> None:
    dest = tmp_path / "set"
    inst.backup(dest)
    path = dest / MANIFEST_NAME
    original = path.read_text()
    document = json.loads(original)
    assert document["checksum"] == manifest_checksum(
        {k: v for k, v in document.items() if k != "checksum"}
    )

    document["files"][0]["size"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidBackup, match="fails its checksum") as caught:
        read_manifest(dest)
    assert caught.value.path == str(path)
    verification = jetstore.verify_backup(dest)
    assert not verification.ok
    assert [(p.file, p.error) for p in verification.problems] == [(MANIFEST_NAME, "InvalidBackup")]

    path.write_text(original.replace('"kind": "full"', '"kind": "fulL"'))
    with pytest.raises(InvalidBackup, match="checksum"):
        read_manifest(dest)
    path.write_text("{not json")
    with pytest.raises(InvalidBackup, match="not valid JSON"):
        read_manifest(dest)
    path.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InvalidBackup, match="not a jetstore backup manifest"):
        read_manifest(dest)
    # A manifest whose checksum is right but whose fields are not (a foreign writer).
    body = {k: v for k, v in json.loads(original).items() if k != "checksum"}
    del body["files"]
    path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
    with pytest.raises(InvalidBackup, match="malformed"):
        read_manifest(dest)
    # The version is read only under a valid checksum: damaged, it is damage; sealed, it is a
    # version this engine does not read.
    body = {k: v for k, v in json.loads(original).items() if k != "checksum"}
    path.write_text(original.replace('"manifest_version": 1', '"manifest_version": 2'))
    with pytest.raises(InvalidBackup, match="fails its checksum"):
        read_manifest(dest)
    body["manifest_version"] = 2
    path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
    with pytest.raises(InvalidBackup, match="manifest version 2 is not supported"):
        read_manifest(dest)
    path.unlink()
    with pytest.raises(FileNotFound, match=MANIFEST_NAME):
        read_manifest(dest)
    with pytest.raises(FileNotFound, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def _all_files(root: Path) -> list[str]:
    return sorted(os.path.join(d, n) for d, _dirs, names in os.walk(root) for n in names)


@pytest.mark.parametrize("field", ["name", "stored_name"])
@pytest.mark.parametrize("bad", ["../escaped.log", "ABSOLUTE", "..", "a/b.log", ""])
def test_a_manifest_file_name_with_path_parts_is_refused(
    inst: jetstore.Instance, tmp_path: Path, field: str, bad: str
) -> None:
    """Defect: a manifest file entry's `name` and `stored_name` were taken as they were, and
    both are joined to a directory: restore wrote the file `name` says with
    `os.path.join(staging, name)`, so a name like `../x` (a damaged or foreign manifest whose
    CRC32C checksum is right: it is no signature) created a file outside the restore target,
    left there after the restore failed; `stored_name` read a file outside the set. Such a
    manifest is malformed: nothing is read or written through it."""
    dest = tmp_path / "sets" / "set"
    inst.backup(dest)
    if bad == "ABSOLUTE":
        bad = str(tmp_path / "elsewhere" / "escaped.log")  # inside the test's directory
    path = dest / MANIFEST_NAME
    body = {k: v for k, v in json.loads(path.read_text()).items() if k != "checksum"}
    entry = next(f for f in body["files"] if f["kind"] == "log")
    if field == "stored_name" and bad.endswith("escaped.log"):
        # Make the outside file exist, so that only the name check can refuse it.
        outside = os.path.normpath(os.path.join(str(dest), bad))
        assert outside.startswith(str(tmp_path))
        os.makedirs(os.path.dirname(outside), exist_ok=True)
        with open(outside, "wb") as out:
            out.write((dest / entry["stored_name"]).read_bytes())
    entry[field] = bad
    path.write_text(json.dumps({**body, "checksum": manifest_checksum(body)}))
    with pytest.raises(InvalidBackup, match="malformed") as caught:
        read_manifest(dest)
    assert "plain file name" in str(caught.value)
    before = _all_files(tmp_path)
    with pytest.raises(InvalidBackup):
        jetstore.restore(dest, tmp_path / "sets" / "restored")
    assert _all_files(tmp_path) == before  # nothing written anywhere
    assert not jetstore.verify_backup(dest).ok


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_read_backup_file_checks_content(
    inst: jetstore.Instance, tmp_path: Path, compress: bool
) -> None:
    dest = tmp_path / "set"
    manifest = inst.backup(dest, compress=compress)
    entry = manifest.file("main.edb")
    stored = dest / entry.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x10
    stored.write_bytes(bytes(data))
    registry = HandleRegistry("test")
    fs = FileSystem(registry)
    with pytest.raises(ReadVerify) as caught:
        for _chunk in read_backup_file(dest, entry, fs=fs, owner="t"):
            pass
    assert entry.stored_name in str(caught.value)
    assert registry.total() == 0
    # A truncated file is refused before the first byte.
    stored.write_bytes(bytes(data[:-1]))
    with pytest.raises(ReadVerify, match="its manifest says"):
        next(iter(read_backup_file(dest, entry, fs=fs, owner="t")))
    assert registry.total() == 0
    stored.unlink()
    with pytest.raises(FileNotFound, match=entry.stored_name):
        next(iter(read_backup_file(dest, entry, fs=fs, owner="t")))
    assert registry.total() == 0


def test_a_reader_interrupted_as_its_file_opens_leaves_it_closed(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    # Defect: the stored file was opened as `file = fs.open(...)` before the `try` that
    # closes it: a Ctrl-C as open returned left it open under the caller's owner.
    dest = tmp_path / "set"
    manifest = inst.backup(dest)
    registry = HandleRegistry("test")
    reader = read_backup_file(dest, manifest.file("main.edb"), fs=FileSystem(registry), owner="t")
    with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns("main.edb"):
        next(reader)
    assert registry.total() == 0


def test_abandoned_reader_releases_its_handle(inst: jetstore.Instance, tmp_path: Path) -> None:
    dest = tmp_path / "set"
    manifest = inst.backup(dest)
    registry = HandleRegistry("test")
    reader = read_backup_file(dest, manifest.file("main.edb"), fs=FileSystem(registry), owner="t")
    next(reader)
    assert registry.total() == 1
    reader.close()
    assert registry.total() == 0


# --------------------------------------------------------------------------- faults


class FaultHook:
    """Fails the `nth` destination operation `op` (under the backup's directories) with
    ENOSPC (EIO for operations that do not write)."""

    def __init__(self, root: str, op: str, nth: int) -> None:
        self.root = root
        self.op = op
        self.nth = nth
        self.seen = 0
        self.fired = False

    def __call__(self, event: IOEvent) -> None:
        if self.fired or event.op != self.op:
            return
        inside = event.path.startswith(self.root) or (
            event.op == "fsync_dir" and event.path == os.path.dirname(self.root)
        )
        if not inside:
            return
        self.seen += 1
        if self.seen == self.nth:
            self.fired = True
            code = errno.ENOSPC if self.op in ("write", "create") else errno.EIO
            raise OSError(code, os.strerror(code))


FAULTS = [
    ("mkdir", 1),
    ("create", 1),  # the partial marker
    ("create", 2),  # the image
    ("write", 1),  # first chunk of the image
    ("write", 2),  # the log copy
    ("fsync", 1),
    ("create", 4),  # the manifest
    ("write", 3),  # the manifest
    ("fsync", 3),  # the manifest
    ("unlink", 1),  # the marker
    ("fsync_dir", 2),  # the partial directory
    ("rename", 1),
    ("fsync_dir", 3),  # the parent, after the rename
]


@pytest.mark.parametrize(("op", "nth"), FAULTS, ids=[f"{op}{n}" for op, n in FAULTS])
def test_destination_fault_changes_nothing(tmp_path: Path, op: str, nth: int) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    dest = backups / "set"
    hook = FaultHook(str(dest), op, nth)
    hook.fired = True  # armed after the warm-up
    inst = make_instance(tmp_path / "live", filesystem=FileSystem(hook=hook))
    try:
        db = inst.database("main")
        inst.backup(backups / "warm-up")  # the first full backup, and a roll, are behind us
        commit(db, 40, 40)
        history = db.file.header
        logs = log_files(Path(inst.directory))
        baseline, fds = baseline_of(inst)
        hook.fired = False
        with pytest.raises(JetError) as caught:
            inst.backup(dest, compress=(nth % 2 == 0))
        assert hook.fired, "the fault was not reached"
        error = caught.value
        assert not isinstance(error, OSError)
        if op in ("write", "create"):
            assert isinstance(error, DiskFull)
        assert error.path is not None
        assert not dest.exists()
        assert not os.path.exists(str(dest) + PARTIAL_SUFFIX)
        assert sorted(os.listdir(backups)) == ["warm-up"]
        header = db.file.header
        assert header.last_full_backup == history.last_full_backup
        assert header.last_incremental_backup == history.last_incremental_backup
        assert set(logs) <= set(log_files(Path(inst.directory)))  # nothing deleted
        settle(inst, baseline, fds)
        counters = inst.counters()
        assert counters["backup_sessions_active"] == 0
        assert counters["backups_completed"] == 1
        assert counters["backups_aborted"] + counters["backups_failed"] == 1
        # The instance is fine and the next backup works.
        commit(db, 80, 5)
        manifest = inst.backup(dest)
        assert jetstore.verify_backup(dest).ok
        assert db.file.header.last_full_backup.generation_high == manifest.generation_high
    finally:
        inst.close()


def test_source_read_failure_aborts_and_cleans_up(tmp_path: Path) -> None:
    """A failure on the source side (a read of the database file) ends the same way."""
    state = {"armed": False}

    def hook(event: IOEvent) -> None:
        if state["armed"] and event.op == "read" and event.path.endswith("main.edb"):
            state["armed"] = False
            raise OSError(errno.EIO, "injected")

    inst = make_instance(tmp_path / "live", filesystem=FileSystem(hook=hook))
    try:
        baseline, fds = baseline_of(inst)
        state["armed"] = True
        dest = tmp_path / "set"
        with pytest.raises(JetError) as caught:
            inst.backup(dest)
        assert caught.value.name == "DiskIO"
        assert not dest.exists() and not os.path.exists(str(dest) + PARTIAL_SUFFIX)
        settle(inst, baseline, fds)
        assert inst.database("main").file.header.last_full_backup.is_none
    finally:
        inst.close()


def test_interrupt_in_progress_callback_aborts(inst: jetstore.Instance, tmp_path: Path) -> None:
    baseline, fds = baseline_of(inst)

    def stop(done: int, total: int, name: str) -> None:
        if done:
            raise KeyboardInterrupt

    dest = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        inst.backup(dest, progress=stop)
    assert not dest.exists() and not os.path.exists(str(dest) + PARTIAL_SUFFIX)
    settle(inst, baseline, fds)
    assert inst.database("main").file.header.last_full_backup.is_none
    callback: Callable[[int, int, str], None] = lambda d, t, n: None  # noqa: E731
    inst.backup(dest, progress=callback)
    assert jetstore.verify_backup(dest).ok


def test_rmdir_goes_through_the_hook(tmp_path: Path) -> None:
    """`FileSystem.rmdir` (added for removing a partial set) is hooked and never raises a
    bare OSError."""
    seen: list[str] = []

    def hook(event: IOEvent) -> None:
        seen.append(event.op)
        if event.path.endswith("fail"):
            raise OSError(errno.EIO, "injected")

    fs = FileSystem(HandleRegistry("test"), hook)
    (tmp_path / "gone").mkdir()
    fs.rmdir(str(tmp_path / "gone"))
    assert seen == ["rmdir"] and not (tmp_path / "gone").exists()
    (tmp_path / "fail").mkdir()
    with pytest.raises(JetError) as caught:
        fs.rmdir(str(tmp_path / "fail"))
    assert caught.value.name == "DiskIO" and not isinstance(caught.value, OSError)
    with pytest.raises(FileNotFound):
        fs.rmdir(str(tmp_path / "nothing"))


def test_a_failed_history_write_keeps_the_set_and_says_what_was_recorded(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`complete()` failing after the set was published raised the header write's bare
    error: it named neither the set (kept, whole, restorable) nor what the instance's
    history held (here: one database's header records the backup, the other's may not)."""
    from jetstore.errors import DiskIO
    from jetstore.pages.pagefile import DatabaseFile

    other = inst.database("other", create=True)
    other.create_table("t", [("k", "int")], primary_key="k")
    write_header = DatabaseFile.write_header
    failing = other.file

    def failing_history(self: DatabaseFile, **changes: Any) -> Any:
        if self is failing and "last_full_backup" in changes:
            raise DiskIO(f"write failed on '{self.path}': [Errno 5] Input/output error")
        return write_header(self, **changes)

    monkeypatch.setattr(DatabaseFile, "write_header", failing_history)
    baseline, fds = baseline_of(inst)
    logs = log_files(tmp_path / "live")
    dest = tmp_path / "set"
    with pytest.raises(DiskIO) as failed:
        inst.backup(dest)
    error = failed.value
    assert error.path == str(dest)
    assert f"the full backup set '{dest}' is complete and durable" in error.detail
    assert "the header(s) of 'main' record it" in error.detail
    assert f"'{failing.path}'" in error.detail and "'other' does is unknown" in error.detail
    assert "no log was deleted" in error.detail and "stopped accepting updates" in error.detail
    assert f"keep '{dest}'" in error.hint and "take a new full backup" in error.hint
    assert inst.state.value == "failed"
    assert set(logs) - {"edbtmp.log"} <= set(log_files(tmp_path / "live"))  # none deleted
    settle(inst, baseline, fds)
    assert jetstore.verify_backup(dest).ok
    [event] = [e for e in inst.events.recent(50) if e["name"] == "backup_failed"]
    assert "nothing was recorded" not in event["message"]
