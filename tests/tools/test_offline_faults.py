"""The offline tools under faults: an unwritable directory, a failed write or rename, an
interruption. The original database must stay whole and usable, and each failure must be a
`JetError` that says what is wrong."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

import jetstore
from interrupting import interrupt_as_call_returns, interrupt_as_open_returns
from jetstore.errors import (
    DiskIO,
    FileAccessDenied,
    InstanceNameInUse,
    InvalidPath,
    JetError,
)
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import FileSystem, IOEvent
from jetstore.io.handles import HandleKind, HandleRegistry
from jetstore.tools import repair
from jetstore.tools.compact import compact_database
from jetstore.tools.integrity import check_integrity
from jetstore.tools.repair import repair_database

from .conftest import read_all


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def failing(op: str, name: str, number: int) -> FileSystem:
    """A file system whose `op` on a file called `name` fails with `number`."""

    def hook(event: IOEvent) -> None:
        if event.op == op and os.path.basename(event.path) == name:
            raise OSError(number, os.strerror(number))

    return FileSystem(hook=hook)


@pytest.mark.parametrize("number", [errno.EACCES, errno.EROFS])
def test_an_unwritable_directory_is_not_reported_as_an_open_instance(
    closed: Path, number: int
) -> None:
    # Root may write anywhere, so the read-only directory is injected: creating the lock
    # file fails as it does on a read-only mount or without write permission.
    path = closed / "main.edb"
    before = digest(path)
    fs = failing("create", LOCK_FILE, number)
    for run in (
        lambda: compact_database(path, fs=fs),
        lambda: repair_database(path, accept_data_loss=True, fs=fs),
    ):
        with pytest.raises(FileAccessDenied) as caught:
            run()
        assert not isinstance(caught.value, InstanceNameInUse)
        assert "holds its lock" not in str(caught.value)
        assert str(closed) in str(caught.value) and "writ" in str(caught.value)
    assert digest(path) == before


def test_a_failed_swap_leaves_no_kept_copy_behind(closed: Path) -> None:
    # The kept copy is a hard link: left behind after the swap failed, it is the live file
    # under another name (the next open writes it too), and it blocks the next
    # `compact --keep-original`.
    path = closed / "main.edb"
    before = digest(path)
    with pytest.raises(DiskIO):
        compact_database(
            path, keep_original=True, fs=failing("rename", "main.edb.compacting", errno.EIO)
        )
    with pytest.raises(DiskIO):
        repair_database(
            path, accept_data_loss=True, fs=failing("rename", "main.edb.repairing", errno.EIO)
        )
    assert sorted(p.name for p in closed.glob("main.edb*")) == ["main.edb"]
    assert digest(path) == before
    result = compact_database(path, keep_original=True)
    assert result.kept_original is not None and digest(Path(result.kept_original)) == before


def test_a_failed_link_of_the_kept_copy_is_seen_and_leaves_the_original(closed: Path) -> None:
    # The kept copy was linked with `os.link`, which the I/O hook (fault injection, the crash
    # recorder) never saw: a link failing on the disk could not be tested at all.
    path = closed / "main.edb"
    before = digest(path)
    with pytest.raises(DiskIO, match=r"link failed on .*main\.edb"):
        compact_database(path, keep_original=True, fs=failing("link", "main.edb", errno.EIO))
    assert sorted(p.name for p in closed.glob("main.edb*")) == ["main.edb"]
    assert digest(path) == before


@pytest.mark.parametrize("suffix", ["main.edb", "main.edb.compacting"])
def test_a_compaction_interrupted_as_a_file_opens_leaves_no_file_open(
    closed: Path, suffix: str
) -> None:
    # Defect: the reader and the new file were opened as `file = fs.open(...)` before the
    # `try` that closes them: a Ctrl-C as open returned left them open in the process.
    registry = HandleRegistry("interrupted-compaction")
    path = closed / "main.edb"
    before = digest(path)
    with pytest.raises(KeyboardInterrupt), interrupt_as_open_returns(suffix):
        compact_database(path, fs=FileSystem(registry))
    assert [h.description for h in registry.open_handles()] == []
    assert digest(path) == before
    assert compact_database(path).pages_after > 0


@pytest.mark.parametrize("at", ["open", "register"])
def test_a_directory_lock_interrupted_as_it_is_taken_is_released(closed: Path, at: str) -> None:
    # Defect: the lock file was opened, and its lock registered, before the `try` that
    # releases them: a Ctrl-C as either returned left the file open, and after the
    # registration the directory locked, until the process ended (the instance refused
    # "already open by this process").
    registry = HandleRegistry("interrupted-lock")
    if at == "open":
        interrupt = interrupt_as_open_returns(LOCK_FILE)
    else:
        interrupt = interrupt_as_call_returns(
            HandleRegistry.register, lambda args: args["kind"] is HandleKind.LOCK
        )
    with pytest.raises(KeyboardInterrupt), interrupt:
        compact_database(closed / "main.edb", fs=FileSystem(registry))
    assert [h.description for h in registry.open_handles()] == []
    jetstore.open(closed).close()


def test_two_repairs_in_the_same_second_keep_both_damaged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kept file and the logs' directory are named after the time to the second: a second
    # run in that second (a script running the repair again) failed on the first one's link,
    # saying that the database "already exists".
    with jetstore.open(tmp_path, page_size=4096) as instance:
        db = instance.database("main", create=True)
        db.create_table("kv", [("k", "int")], primary_key="k")
        with db.transaction() as txn:
            txn.table("kv").insert({"k": 1})
    monkeypatch.setattr(repair, "now_us", lambda: 1_800_000_000_000_000)
    first = repair.repair_database(tmp_path / "main.edb", accept_data_loss=True)
    with jetstore.open(tmp_path, page_size=4096):
        pass  # a new log stream, to be moved aside by the second repair
    second = repair.repair_database(tmp_path / "main.edb", accept_data_loss=True)
    assert first.kept_damaged != second.kept_damaged
    assert first.moved_logs_to != second.moved_logs_to
    assert first.moved_logs_to is not None and second.moved_logs_to is not None
    for kept in (first.kept_damaged, second.kept_damaged, first.moved_logs_to):
        assert kept is not None and os.path.exists(kept)
    assert {"edb.chk", "edb.log"} <= set(os.listdir(first.moved_logs_to))


def crashed_with_changes_in_the_log(directory: Path) -> int:
    """A database that crashed with committed changes after its last checkpoint: the log
    holds records for it that recovery would replay. Returns the rows it holds on disk."""
    instance = jetstore.open(directory, page_size=4096)
    db = instance.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "bytes")], primary_key="k")
    with db.transaction() as txn:
        for i in range(300):
            txn.table("kv").insert({"k": i, "v": bytes(40)})
    instance.checkpoint()
    with db.transaction() as txn:
        for i in range(300, 400):
            txn.table("kv").insert({"k": i, "v": bytes(40)})
    instance.simulate_crash()
    return 300


def rows(directory: Path) -> int:
    with (
        jetstore.open(directory, page_size=4096) as instance,
        instance.database("main").transaction() as txn,
    ):
        return sum(1 for _ in txn.table("kv").scan())


class Counting:
    """A hook that fails the `at`-th operation other than a read (0: none), counting them."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, event: IOEvent) -> None:
        # A log header read only to see which lost-logs directory holds the stream is no
        # failure of the repair: an unreadable log is set aside like the others. Nor is the
        # inventory's probe of a reserve log (is it a regular file?): the log writer, which
        # replaces the file, reports what else is wrong with it.
        if event.op == "read" or (event.op == "open" and event.path.endswith((".log", ".jrs"))):
            return
        self.calls += 1
        if self.calls == self.at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_repair_that_fails_anywhere_leaves_the_damaged_database_or_the_repaired_one(
    tmp_path: Path,
) -> None:
    # Repair of a crashed database discards what its logs hold, so it moves them aside; a
    # failure (or a kill) between putting the repaired file in place and moving the logs left
    # a database that no open accepts (the log's changes name a database the checkpoint file
    # knows with another signature), the hint saying to put the damaged file back.
    template = tmp_path / "template"
    salvaged = crashed_with_changes_in_the_log(template)
    total = Counting(0)
    repair_database(
        shutil.copytree(template, tmp_path / "count") / "main.edb",
        accept_data_loss=True,
        fs=FileSystem(hook=total),
    )
    for at in range(1, total.calls + 1):
        work = shutil.copytree(template, tmp_path / f"at{at}")
        before = digest(work / "main.edb")
        with pytest.raises(JetError):
            repair_database(
                work / "main.edb", accept_data_loss=True, fs=FileSystem(hook=Counting(at))
            )
        if digest(work / "main.edb") != before:
            assert rows(work) == salvaged, f"failure at operation {at}"  # the repair is whole
        else:
            assert not list(work.glob("main.edb.*")), f"failure at operation {at}"
        # and the way out of any failure: run the repair again
        repair_database(work / "main.edb", accept_data_loss=True)
        assert rows(work) == salvaged


def test_a_pipe_given_as_the_database_is_refused_at_once(tmp_path: Path) -> None:
    # A FIFO without a writer blocked the open forever; a pipe with one (`<(zcat db.gz)`)
    # failed at the first positional read as a disk error ("check the cabling").
    fifo = tmp_path / "main.edb"
    os.mkfifo(fifo)
    outcomes: list[BaseException | None] = []

    def run() -> None:
        try:
            check_integrity(fifo)
            outcomes.append(None)
        except BaseException as exc:  # handed to the test's thread
            outcomes.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(5)
    if worker.is_alive():  # unblock it: a writer lets the blocked open return
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("opening a FIFO as the database blocked")
    assert len(outcomes) == 1 and isinstance(outcomes[0], InvalidPath), outcomes
    assert "FIFO" in str(outcomes[0]) and str(fifo) in str(outcomes[0])


@pytest.mark.parametrize("tool", ["compact", "repair"])
def test_the_rebuilt_file_keeps_the_permissions_and_owner_of_the_original(
    closed: Path, tool: str
) -> None:
    # The new file was created 0644 by the user running the tool: a database kept 0600 came
    # back readable by everyone, and one owned by the service's user (the tool run as root)
    # came back root's, which the service could then not open for writing.
    path = closed / "main.edb"
    path.chmod(0o600)
    owner = 65534 if os.geteuid() == 0 else os.geteuid()
    os.chown(path, owner, -1)
    before = path.stat()
    if tool == "compact":
        compact_database(path)
    else:
        repair_database(path, accept_data_loss=True)
    after = path.stat()
    assert after.st_ino != before.st_ino  # a new file
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


@pytest.mark.parametrize("tool", ["compact", "repair"])
def test_a_database_linked_from_another_directory_is_rewritten_where_it_lives(
    closed: Path, tmp_path: Path, expected: dict[str, object], tool: str
) -> None:
    # NAME.edb a symbolic link to the file on another volume: the rename replaced the link by
    # the new file, in the instance directory, and left the real file where the link pointed,
    # stale: putting the link back would have taken the database back in time.
    volume = tmp_path / "volume"
    volume.mkdir()
    real = volume / "main.edb"
    (closed / "main.edb").rename(real)
    (closed / "main.edb").symlink_to(real)
    before = real.stat().st_ino
    if tool == "compact":
        result = compact_database(closed / "main.edb", keep_original=True)
        kept = result.kept_original
    else:
        kept = repair_database(closed / "main.edb", accept_data_loss=True).kept_damaged
    assert (closed / "main.edb").is_symlink() and (closed / "main.edb").resolve() == real
    assert real.stat().st_ino != before
    assert kept is not None and Path(kept).parent == volume
    assert Path(kept).stat().st_ino == before
    assert sorted(p.name for p in closed.glob("main.edb*")) == ["main.edb"]
    assert read_all(closed) == expected


def test_a_kept_copy_left_by_a_killed_compaction_does_not_block_the_next_one(
    closed: Path,
) -> None:
    # Killed between the hard link and the rename, a compaction leaves NAME.edb.precompact
    # as a second name of the database itself, not a kept original: running it again with
    # --keep-original was refused as if an earlier compaction had kept one.
    path = closed / "main.edb"
    os.link(path, closed / "main.edb.precompact")
    before = digest(path)
    result = compact_database(path, keep_original=True)
    assert result.kept_original is not None and digest(Path(result.kept_original)) == before
    assert digest(path) != before


def test_a_repair_run_again_after_a_failed_move_keeps_the_logs_in_one_directory(
    tmp_path: Path,
) -> None:
    # A repair whose move of the logs failed half-way says "run the repair again: it moves
    # the remaining ones". The second run named a directory of its own, so the stream was
    # split in two (generations 1-2 in one, the rest in the other), and a restore rolling
    # forward from the set-aside logs (`--logs-from`) found only the newest directory's part.
    with jetstore.open(tmp_path, page_size=4096, log_file_size=64 * 1024) as instance:
        db = instance.database("main", create=True)
        db.create_table("kv", [("k", "int"), ("v", "bytes")], primary_key="k")
        for i in range(40):
            with db.transaction() as txn:
                txn.table("kv").insert({"k": i, "v": bytes(3000)})
    logs = sorted(name for name in os.listdir(tmp_path) if name.endswith(".log"))
    assert len([name for name in logs if name.startswith("edb0")]) >= 2
    moved: list[str] = []

    def hook(event: IOEvent) -> None:
        if event.op == "rename" and "lost-logs" in event.target:
            if len(moved) == 2:
                raise OSError(errno.EIO, "injected: the third move fails")
            moved.append(event.path)

    with pytest.raises(DiskIO):
        repair_database(tmp_path / "main.edb", accept_data_loss=True, fs=FileSystem(hook=hook))
    report = repair_database(tmp_path / "main.edb", accept_data_loss=True)
    holding = [
        name
        for name in os.listdir(tmp_path)
        if name.startswith("lost-logs-") and os.listdir(tmp_path / name)
    ]
    assert holding == [os.path.basename(report.moved_logs_to or "")]
    assert set(logs) <= set(os.listdir(tmp_path / holding[0]))


def test_the_report_says_an_unreadable_neighbour_would_refuse_the_repair(
    tmp_path: Path,
) -> None:
    instance = jetstore.open(tmp_path, page_size=4096)
    instance.database("main", create=True)
    instance.database("other", create=True)
    instance.close()
    report = repair_database(tmp_path / "main.edb", fs=failing("open", "other.edb", errno.EIO))
    assert not report.applied and not report.data_lost
    refusal = report.would_refuse
    assert refusal is not None and refusal["name"] == "DiskIO"
    assert refusal["path"] == str(tmp_path / "other.edb")
    assert "cannot be read" in refusal["message"]


@pytest.mark.parametrize(
    ("number", "error"), [(errno.EIO, DiskIO), (errno.EACCES, FileAccessDenied)]
)
def test_a_neighbour_whose_header_cannot_be_read_stops_the_repair_moving_the_logs(
    tmp_path: Path, number: int, error: type[JetError]
) -> None:
    # An unreadable neighbour was skipped ("recovery will say"), then its logs were moved
    # aside: one that could not be read only for a moment (an EIO, a permission) and was
    # dirty lost its acknowledged commits since its checkpoint.
    instance = jetstore.open(tmp_path, page_size=4096)
    instance.database("main", create=True)
    other = instance.database("other", create=True)
    other.create_table("kv", [("k", "int")], primary_key="k")
    instance.checkpoint()
    with other.transaction() as txn:
        txn.table("kv").insert({"k": 7})
    instance.simulate_crash()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(error) as caught:
        repair_database(
            tmp_path / "main.edb", accept_data_loss=True, fs=failing("open", "other.edb", number)
        )
    message = str(caught.value)
    assert str(tmp_path / "other.edb") in message and "log" in message
    assert caught.value.hint and "other.edb" in caught.value.hint
    assert sorted(os.listdir(tmp_path)) == before
    with (
        jetstore.open(tmp_path, page_size=4096) as again,
        again.database("other").transaction() as txn,
    ):
        assert [row["k"] for row in txn.table("kv").scan()] == [7]
