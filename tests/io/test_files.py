"""FileSystem and File: round trips, the hook on every operation, OS errors as JetErrors."""

from __future__ import annotations

import array
import errno
import gc
import os
import signal
import sys
from pathlib import Path
from types import FrameType

import pytest

from interrupting import stop_interval_timer
from jetstore.errors import (
    DiskFull,
    DiskIO,
    FileAccessDenied,
    FileAlreadyExists,
    FileNotFound,
    InstanceUnavailable,
    InvalidPath,
    JetError,
)
from jetstore.io import files as files_module
from jetstore.io.files import File, FileSystem, IOEvent
from jetstore.io.handles import HandleKind, HandleRegistry

OWNER = "test"


class Recorder:
    """A hook that records every event and can inject one OSError for a given op."""

    def __init__(self) -> None:
        self.events: list[IOEvent] = []
        self.datas: list[bytes | None] = []
        self.fail_op: str | None = None
        self.fail_errno = errno.EIO

    def __call__(self, event: IOEvent) -> None:
        self.events.append(event)
        self.datas.append(None if event.data is None else bytes(event.data))
        if event.op == self.fail_op:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))

    def ops(self) -> list[str]:
        return [e.op for e in self.events]


@pytest.fixture
def registry() -> HandleRegistry:
    return HandleRegistry("files-test")


@pytest.fixture
def hook() -> Recorder:
    return Recorder()


@pytest.fixture
def fs(registry: HandleRegistry, hook: Recorder) -> FileSystem:
    return FileSystem(registry, hook)


def no_handles(registry: HandleRegistry) -> bool:
    return registry.total() == 0


# ----------------------------------------------------------------- open, create, exclusive


def test_open_create_counts_file_handle_and_close_releases(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    path = str(tmp_path / "a")
    f = fs.open(path, owner="inst/a", create=True)
    assert isinstance(f, File)
    assert os.path.exists(path)
    assert f.writable and not f.closed and f.path == path
    assert registry.counts("inst")[HandleKind.FILE.value] == 1
    assert registry.counts("inst/a")[HandleKind.FILE.value] == 1
    fd = f.fd
    os.fstat(fd)  # the descriptor is open
    f.close()
    assert f.closed
    assert no_handles(registry)
    with pytest.raises(OSError):
        os.fstat(fd)  # and really closed
    f.close()  # idempotent
    assert registry.closed_total == 1


def test_context_manager_closes(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    path = str(tmp_path / "a")
    with fs.open(path, owner=OWNER, create=True) as f:
        assert registry.total(OWNER) == 1
    assert f.closed
    assert no_handles(registry)

    with pytest.raises(RuntimeError), fs.open(path, owner=OWNER) as g:
        raise RuntimeError("inside")
    assert g.closed
    assert no_handles(registry)


def test_open_missing_without_create_is_file_not_found(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    path = str(tmp_path / "missing")
    with pytest.raises(FileNotFound) as info:
        fs.open(path, owner=OWNER)
    err = info.value
    assert err.code == -1811
    assert path in str(err)
    assert err.path == path
    assert err.errno == errno.ENOENT
    assert isinstance(err.__cause__, OSError)
    assert not os.path.exists(path)
    assert no_handles(registry)


def test_exclusive_create_refuses_existing_file(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    path = str(tmp_path / "x")
    with fs.open(path, owner=OWNER, create=True, exclusive=True) as f:
        f.pwrite(b"keep", 0)
    with pytest.raises(JetError) as info:
        fs.open(path, owner=OWNER, create=True, exclusive=True)
    assert isinstance(info.value, FileAlreadyExists) and info.value.code == -1814
    assert "already exists" in info.value.detail
    assert info.value.errno == errno.EEXIST
    assert path in str(info.value)
    assert isinstance(info.value.__cause__, FileExistsError)
    assert no_handles(registry)
    # create without exclusive opens the existing file and does not truncate it
    with fs.open(path, owner=OWNER, create=True) as f:
        assert f.pread(4, 0) == b"keep"


def test_read_only_open_cannot_write(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    path = str(tmp_path / "ro")
    fs.write_new_file(path, [b"data"], owner=OWNER)
    with fs.open(path, owner=OWNER, writable=False) as f:
        assert not f.writable
        assert f.pread(4, 0) == b"data"
        with pytest.raises(JetError) as info:
            f.pwrite(b"zz", 0)
        assert isinstance(info.value.__cause__, OSError)
    with open(path, "rb") as raw:
        assert raw.read() == b"data"
    assert no_handles(registry)


# ----------------------------------------------------------------- pread / pwrite


def test_pread_pwrite_round_trip_at_offsets(fs: FileSystem, tmp_path) -> None:
    path = str(tmp_path / "rw")
    with fs.open(path, owner=OWNER, create=True) as f:
        f.pwrite(b"hello", 0)
        f.pwrite(b"world", 100)
        f.pwrite(bytearray(b"XY"), 1)
        f.pwrite(memoryview(b"__abc__")[2:5], 50)
        assert f.size() == 105
        assert f.pread(5, 0) == b"hXYlo"
        assert f.pread(5, 100) == b"world"
        assert f.pread(3, 50) == b"abc"
        assert f.pread(10, 5) == bytes(10)  # the hole reads as zeros
        assert f.pread(0, 3) == b""
        big = os.urandom(70_000)
        f.pwrite(big, 4096)
        assert f.pread(len(big), 4096) == big
        assert f.size() == 4096 + len(big)
    with open(path, "rb") as raw:
        content = raw.read()
    assert content[:5] == b"hXYlo"
    assert content[50:53] == b"abc"
    assert content[100:105] == b"world"
    assert content[4096:] == big


def test_pread_past_end_is_short(fs: FileSystem, tmp_path) -> None:
    path = str(tmp_path / "short")
    with fs.open(path, owner=OWNER, create=True) as f:
        f.pwrite(b"0123456789", 0)
        assert f.pread(100, 0) == b"0123456789"
        assert f.pread(100, 7) == b"789"
        assert f.pread(5, 10) == b""
        assert f.pread(5, 1000) == b""


def test_pread_keeps_reading_after_a_short_read(
    fs: FileSystem, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "r")
    payload = bytes(range(256)) * 4
    fs.write_new_file(path, [payload], owner=OWNER)
    real_pread = os.pread

    def stingy_pread(fd: int, size: int, offset: int) -> bytes:
        return real_pread(fd, min(size, 7), offset)

    with fs.open(path, owner=OWNER, writable=False) as f:
        monkeypatch.setattr(os, "pread", stingy_pread)
        assert f.pread(len(payload), 0) == payload
        assert f.pread(100, len(payload) - 10) == payload[-10:]


def test_pwrite_completes_a_short_write(
    fs: FileSystem, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "w")
    payload = os.urandom(1000)
    real_pwrite = os.pwrite

    def stingy_pwrite(fd: int, data, offset: int) -> int:
        return real_pwrite(fd, bytes(memoryview(data)[:13]), offset)

    with fs.open(path, owner=OWNER, create=True) as f:
        monkeypatch.setattr(os, "pwrite", stingy_pwrite)
        f.pwrite(payload, 5)
        monkeypatch.undo()
        assert f.pread(1005, 0) == bytes(5) + payload


def test_pwrite_without_progress_raises_disk_full(
    fs: FileSystem, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "w")
    real_pwrite = os.pwrite
    calls = []

    def stuck_pwrite(fd: int, data, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            return real_pwrite(fd, bytes(memoryview(data)[:3]), offset)
        return 0

    with fs.open(path, owner=OWNER, create=True) as f:
        monkeypatch.setattr(os, "pwrite", stuck_pwrite)
        with pytest.raises(DiskFull) as info:
            f.pwrite(b"abcdefgh", 0)
        monkeypatch.undo()
    assert path in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_pwrite_memoryview_of_wide_items_reports_bytes(
    fs: FileSystem, hook: Recorder, tmp_path
) -> None:
    data = memoryview(array.array("I", [1, 2, 3, 4]))
    assert data.nbytes == 16
    with fs.open(str(tmp_path / "m"), owner=OWNER, create=True) as f:
        f.pwrite(data, 0)
        assert f.pread(16, 0) == data.tobytes()
    write = next(e for e in hook.events if e.op == "write")
    assert write.size == 16


# ----------------------------------------------------------------- the hook


def test_hook_sees_every_operation(fs: FileSystem, hook: Recorder, tmp_path) -> None:
    base = str(tmp_path)
    sub = os.path.join(base, "sub", "deeper")
    a = os.path.join(sub, "a")
    b = os.path.join(sub, "b")
    payload = b"payload-bytes"

    fs.makedirs(sub)
    f = fs.open(a, owner=OWNER, create=True)
    f.pwrite(payload, 40)
    f.pwrite(bytearray(b"ba"), 2)
    f.pwrite(memoryview(b"mv"), 4)
    assert f.pread(len(payload), 40) == payload
    f.fdatasync()
    f.fsync()
    f.truncate(20)
    f.close()
    g = fs.open(a, owner=OWNER)
    g.close()
    fs.rename(a, b)
    fs.fsync_directory(sub)
    fs.unlink(b)

    assert hook.ops() == [
        "mkdir",
        "create",
        "write",
        "write",
        "write",
        "read",
        "fdatasync",
        "fsync",
        "truncate",
        "open",
        "rename",
        "fsync_dir",
        "unlink",
    ]
    ev = hook.events
    assert ev[0].path == sub
    assert ev[1].path == a
    assert (ev[2].path, ev[2].offset, ev[2].size, hook.datas[2]) == (a, 40, len(payload), payload)
    assert (ev[3].offset, ev[3].size, hook.datas[3]) == (2, 2, b"ba")
    assert (ev[4].offset, ev[4].size, hook.datas[4]) == (4, 2, b"mv")
    assert (ev[5].path, ev[5].offset, ev[5].size, ev[5].data) == (a, 40, len(payload), None)
    assert ev[6].path == a and ev[7].path == a
    assert (ev[8].path, ev[8].size) == (a, 20)
    assert ev[9].path == a
    assert (ev[10].path, ev[10].target) == (a, b)
    assert ev[11].path == sub
    assert ev[12].path == b
    assert not os.path.exists(a) and not os.path.exists(b)


def test_hook_sees_the_operation_before_it_happens(fs: FileSystem, tmp_path) -> None:
    path = str(tmp_path / "f")
    seen: list[tuple[str, bool, int]] = []

    def hook(event: IOEvent) -> None:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        seen.append((event.op, os.path.exists(path), size))

    fs.hook = hook
    with fs.open(path, owner=OWNER, create=True) as f:
        f.pwrite(b"abc", 0)
        f.truncate(1)
    fs.unlink(path)
    assert seen == [
        ("create", False, -1),
        ("write", True, 0),
        ("truncate", True, 3),
        ("unlink", True, 1),
    ]


def test_read_file_and_write_new_file_go_through_hook(
    fs: FileSystem, hook: Recorder, registry: HandleRegistry, tmp_path
) -> None:
    path = str(tmp_path / "new")
    with open(path, "wb") as raw:
        raw.write(b"old content that is longer")
    fs.write_new_file(path, [b"abc", b"", b"defg"], owner=OWNER)
    # Written under another name and renamed over: a failure never leaves it cut short.
    ops = ["create", "truncate", "write", "write", "write", "fsync", "rename"]
    assert hook.ops() == ops
    assert {e.path for e in hook.events if e.op != "rename"} == {path + ".new"}
    assert hook.events[-1].target == path and not os.path.exists(path + ".new")
    assert [(e.offset, e.size) for e in hook.events if e.op == "write"] == [(0, 3), (3, 0), (3, 4)]
    assert hook.events[1].size == 0
    with open(path, "rb") as raw:
        assert raw.read() == b"abcdefg"  # replaced, not overwritten in place

    hook.events.clear()
    fs.write_new_file(path, [b"xy"], owner=OWNER, sync=False)
    assert "fsync" not in hook.ops() and "fdatasync" not in hook.ops()

    hook.events.clear()
    assert fs.read_file(path, owner=OWNER) == b"xy"
    assert hook.ops() == ["open", "read"]
    assert no_handles(registry)
    assert registry.opened_total == registry.closed_total == 3


def test_read_file_with_limit(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    path = str(tmp_path / "r")
    fs.write_new_file(path, [b"0123456789"], owner=OWNER)
    assert fs.read_file(path, owner=OWNER) == b"0123456789"
    assert fs.read_file(path, owner=OWNER, limit=4) == b"0123"
    assert fs.read_file(path, owner=OWNER, limit=0) == b""
    assert fs.read_file(path, owner=OWNER, limit=1000) == b"0123456789"
    with pytest.raises(FileNotFound):
        fs.read_file(str(tmp_path / "none"), owner=OWNER)
    assert no_handles(registry)


ERRNO_CASES = [
    (errno.EIO, DiskIO, -1022),
    (errno.ENOSPC, DiskFull, -1808),
    (errno.EACCES, FileAccessDenied, -1032),
    (errno.ENOENT, FileNotFound, -1811),
]

OPS = [
    "create",
    "open",
    "read",
    "write",
    "fdatasync",
    "fsync",
    "truncate",
    "rename",
    "unlink",
    "fsync_dir",
    "mkdir",
]


def run_op(fs: FileSystem, op: str, tmp_path) -> str:
    """Perform `op` through `fs`; returns the path the op is about."""
    base = str(tmp_path)
    existing = os.path.join(base, "existing")
    if not os.path.exists(existing):
        with open(existing, "wb") as raw:
            raw.write(b"0123456789")
    if op == "create":
        path = os.path.join(base, "created")
        fs.open(path, owner=OWNER, create=True).close()
        return path
    if op == "open":
        fs.open(existing, owner=OWNER).close()
        return existing
    if op == "rename":
        fs.rename(existing, os.path.join(base, "renamed"))
        return existing
    if op == "unlink":
        fs.unlink(existing)
        return existing
    if op == "fsync_dir":
        fs.fsync_directory(base)
        return base
    if op == "mkdir":
        path = os.path.join(base, "newdir")
        fs.makedirs(path)
        return path
    hook = fs.hook
    fs.hook = None
    f = fs.open(existing, owner=OWNER)
    fs.hook = hook
    try:
        if op == "read":
            f.pread(4, 2)
        elif op == "write":
            f.pwrite(b"zz", 3)
        elif op == "fdatasync":
            f.fdatasync()
        elif op == "fsync":
            f.fsync()
        elif op == "truncate":
            f.truncate(2)
        else:  # pragma: no cover
            raise AssertionError(op)
    finally:
        f.close()
    return existing


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("err_no", "cls", "code"), ERRNO_CASES)
def test_hook_fault_becomes_jet_error(
    op: str, err_no: int, cls: type[JetError], code: int, tmp_path, registry: HandleRegistry
) -> None:
    hook = Recorder()
    hook.fail_op = op
    hook.fail_errno = err_no
    fs = FileSystem(registry, hook)
    before = {name: (tmp_path / name).exists() for name in ("created", "renamed", "newdir")}
    with pytest.raises(JetError) as info:
        run_op(fs, op, tmp_path)
    err = info.value
    assert type(err) is cls
    assert err.code == code
    assert err.errno == err_no
    assert not isinstance(err, OSError)
    assert isinstance(err.__cause__, OSError)
    assert err.__cause__.errno == err_no
    failing = next(e for e in hook.events if e.op == op)
    assert failing.path in str(err)
    assert err.path == failing.path
    # The hook runs before the operation: an injected fault means it did not happen.
    after = {name: (tmp_path / name).exists() for name in ("created", "renamed", "newdir")}
    assert after == before
    assert (tmp_path / "existing").exists()
    if op in ("write", "truncate"):
        assert (tmp_path / "existing").read_bytes() == b"0123456789"
    assert no_handles(registry)


def test_hook_oserror_without_errno_is_disk_io(fs: FileSystem, tmp_path) -> None:
    def hook(event: IOEvent) -> None:
        raise OSError("injected")

    fs.hook = hook
    path = str(tmp_path / "f")
    with pytest.raises(DiskIO) as info:
        fs.open(path, owner=OWNER, create=True)
    assert path in str(info.value)
    assert "injected" in str(info.value)


def test_real_os_errors_become_jet_errors(fs: FileSystem, tmp_path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFound) as info:
        fs.rename(missing, str(tmp_path / "target"))
    assert missing in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)

    with pytest.raises(FileNotFound) as info:
        fs.unlink(missing)
    assert missing in str(info.value)

    with pytest.raises(FileNotFound):
        fs.fsync_directory(missing)
    with pytest.raises(FileNotFound):
        fs.listdir(missing)
    with pytest.raises(FileNotFound):
        fs.size(missing)

    # A file where a directory is needed.
    afile = str(tmp_path / "afile")
    fs.write_new_file(afile, [b"x"], owner=OWNER)
    with pytest.raises(JetError) as info:
        fs.makedirs(os.path.join(afile, "sub"))
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(JetError):
        fs.open(os.path.join(afile, "sub"), owner=OWNER, create=True)


def test_permission_denied_is_file_access_denied(fs: FileSystem, tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path = str(tmp_path / "locked")
    fs.write_new_file(path, [b"x"], owner=OWNER)
    os.chmod(path, 0o400)
    with pytest.raises(FileAccessDenied) as info:
        fs.open(path, owner=OWNER, writable=True)
    assert path in str(info.value)
    assert info.value.code == -1032


def test_directory_helpers(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    base = str(tmp_path)
    fs.makedirs(os.path.join(base, "d"))
    fs.makedirs(os.path.join(base, "d"))  # exist_ok
    fs.write_new_file(os.path.join(base, "b"), [b"12345"], owner=OWNER)
    fs.write_new_file(os.path.join(base, "a"), [b""], owner=OWNER)
    assert fs.listdir(base) == ["a", "b", "d"]
    assert fs.is_directory(os.path.join(base, "d"))
    assert not fs.is_directory(os.path.join(base, "b"))
    assert not fs.is_directory(os.path.join(base, "zz"))
    assert fs.exists(os.path.join(base, "b"))
    assert not fs.exists(os.path.join(base, "zz"))
    assert fs.size(os.path.join(base, "b")) == 5
    fs.rename(os.path.join(base, "b"), os.path.join(base, "a"))  # replaces
    assert fs.listdir(base) == ["a", "d"]
    assert fs.size(os.path.join(base, "a")) == 5
    fs.fsync_directory(base)
    assert no_handles(registry)
    # fsync_directory registered and closed a directory handle
    assert registry.opened_total == registry.closed_total


def test_fsync_directory_counts_a_directory_handle_while_open(tmp_path) -> None:
    registry = HandleRegistry("t")
    seen: list[dict[str, int]] = []
    real_fsync = os.fsync

    def spying_fsync(fd: int) -> None:
        seen.append(registry.counts("fsync-dir"))
        real_fsync(fd)

    fs = FileSystem(registry)
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "fsync", spying_fsync)
    try:
        fs.fsync_directory(str(tmp_path))
    finally:
        mp.undo()
    assert seen and seen[0][HandleKind.DIRECTORY.value] == 1
    assert registry.total() == 0


def test_with_registry_keeps_hook_and_counts_elsewhere(
    fs: FileSystem, hook: Recorder, registry: HandleRegistry, tmp_path
) -> None:
    other = HandleRegistry("other")
    fs2 = fs.with_registry(other)
    assert fs2.hook is fs.hook
    assert fs2.registry is other
    f = fs2.open(str(tmp_path / "w"), owner=OWNER, create=True)
    assert other.total(OWNER) == 1
    assert registry.total() == 0
    f.close()
    assert other.total() == 0
    assert hook.ops() == ["create"]
    assert fs.registry is registry


def test_default_registry_when_none_given() -> None:
    from jetstore.io.handles import DEFAULT_REGISTRY

    assert FileSystem().registry is DEFAULT_REGISTRY
    assert FileSystem().hook is None


def test_every_open_file_is_counted(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    files = [fs.open(str(tmp_path / f"f{i}"), owner=f"o/{i % 3}", create=True) for i in range(9)]
    assert registry.counts("o")[HandleKind.FILE.value] == 9
    assert registry.counts("o/1")[HandleKind.FILE.value] == 3
    files[0].close()
    files[0].close()
    assert registry.total("o") == 8
    assert registry.close_owner("o") == []
    assert all(f.closed for f in files)
    assert no_handles(registry)
    assert registry.opened_total == registry.closed_total == 9


def test_close_failure_is_a_jet_error(fs: FileSystem, tmp_path) -> None:
    path = str(tmp_path / "f")
    f = fs.open(path, owner=OWNER, create=True)
    os.close(f.fd)  # the OS will now fail the close (EBADF), as NFS may with EIO
    with pytest.raises(JetError) as info:
        f.close()
    assert path in str(info.value)


def test_use_after_close_never_touches_another_file(fs: FileSystem, tmp_path) -> None:
    a = fs.open(str(tmp_path / "a"), owner=OWNER, create=True)
    a.close()
    b_path = str(tmp_path / "b")
    fs.write_new_file(b_path, [b"precious"], owner=OWNER)
    with fs.open(b_path, owner=OWNER) as b:
        try:
            with pytest.raises(JetError):
                a.pwrite(b"CLOBBER!", 0)
        finally:
            assert b.pread(8, 0) == b"precious"


@pytest.mark.parametrize("writable", [True, False])
def test_open_refuses_a_directory_as_a_path_error(
    fs: FileSystem, registry: HandleRegistry, tmp_path, writable: bool
) -> None:
    path = str(tmp_path / "edbtmp.log")
    os.mkdir(path)
    with pytest.raises(InvalidPath) as info:
        fs.open(path, owner=OWNER, create=writable, writable=writable)
    err = info.value
    assert err.errno == errno.EISDIR
    assert f"'{path}' is a directory, where the engine keeps a file" in err.detail
    assert "Move the directory" in err.hint and "SMART" not in str(err)
    assert no_handles(registry)


def test_makedirs_on_a_file_and_under_a_file_are_path_errors(fs: FileSystem, tmp_path) -> None:
    path = tmp_path / "afile"
    path.write_bytes(b"")
    with pytest.raises(InvalidPath, match="is a file, where the engine needs a directory"):
        fs.makedirs(str(path))
    with pytest.raises(InvalidPath, match=r"a parent of .* is a file, not a directory"):
        fs.makedirs(str(path / "x"))


def test_symlink_loop_is_a_path_error(fs: FileSystem, tmp_path) -> None:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(InvalidPath, match="loop of symbolic links") as info:
        fs.open(str(loop), owner=OWNER)
    assert info.value.errno == errno.ELOOP


def test_genuine_io_error_stays_disk_io(tmp_path) -> None:
    def hook(event: IOEvent) -> None:
        if event.op == "fsync":
            raise OSError(errno.EIO, "Input/output error")

    fs = FileSystem(HandleRegistry("t"), hook)
    with fs.open(str(tmp_path / "f"), owner=OWNER, create=True) as f, pytest.raises(DiskIO):
        f.fsync()


def test_path_problem_tells_deleted_moved_and_replaced_files(fs: FileSystem, tmp_path) -> None:
    path = tmp_path / "main.edb"
    path.write_bytes(b"data")
    link = tmp_path / "link.edb"
    link.symlink_to(path)
    with fs.open(str(path), owner="t") as file, fs.open(str(link), owner="t") as through_link:
        assert file.path_problem() is None
        assert through_link.path_problem() is None  # a symlink names the same file
        os.rename(path, tmp_path / "moved.edb")
        assert file.path_problem() == "was moved or renamed away (nothing is at its path now)"
        (tmp_path / "other.edb").write_bytes(b"other")
        os.rename(tmp_path / "other.edb", path)
        assert file.path_problem() == "was replaced by another file"
        os.unlink(tmp_path / "moved.edb")
        assert file.path_problem() == "was deleted"
    with pytest.raises(JetError):
        file.path_problem()  # closed: never touch a descriptor number that may be reused


# ----------------------------------------------------------------- interrupts while opening


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def interrupt_register_once(monkeypatch: pytest.MonkeyPatch, *, after: bool) -> list[bool]:
    """Ctrl-C at `HandleRegistry.register`: at its entry (`after=False`: nothing registered)
    or just after it returned (`after=True`: registered, the caller never saw the handle)."""
    original = HandleRegistry.register
    fired: list[bool] = []

    def register(self: HandleRegistry, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fired:
            return original(self, *args, **kwargs)
        fired.append(True)
        if after:
            original(self, *args, **kwargs)
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(HandleRegistry, "register", register)
    return fired


@pytest.mark.parametrize("call", ["open", "fsync_directory"])
def test_an_interrupt_before_registration_closes_the_descriptor(
    fs: FileSystem, registry: HandleRegistry, tmp_path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A KeyboardInterrupt between `os.open` and the registration of its descriptor lost
    the descriptor: open for the life of the process, counted nowhere."""
    before = open_fds()
    fired = interrupt_register_once(monkeypatch, after=False)
    with pytest.raises(KeyboardInterrupt):
        if call == "open":
            fs.open(str(tmp_path / "a"), owner=OWNER, create=True)
        else:
            fs.fsync_directory(str(tmp_path), owner=OWNER)
    assert fired == [True]
    assert open_fds() == before
    assert no_handles(registry)


def test_an_interrupt_after_registration_leaves_the_descriptor_to_its_owner(
    fs: FileSystem, registry: HandleRegistry, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registered, then interrupted before the caller got the file: the owner's cleanup
    closes it, once (the opener must not close it too: the number may be reused)."""
    before = open_fds()
    interrupt_register_once(monkeypatch, after=True)
    with pytest.raises(KeyboardInterrupt):
        fs.open(str(tmp_path / "a"), owner=OWNER, create=True)
    assert registry.counts(OWNER)["file"] == 1
    assert open_fds() == before + 1
    reused = fs.open(str(tmp_path / "b"), owner="other", create=True)
    registry.close_owner(OWNER)
    assert open_fds() == before + 1
    reused.pwrite(b"still open", 0)  # the other file's number was not closed by anyone
    reused.close()
    assert open_fds() == before and no_handles(registry)


def test_an_interrupt_in_the_open_s_fstat_closes_the_descriptor(
    fs: FileSystem, registry: HandleRegistry, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = open_fds()

    def fstat(fd: int) -> os.stat_result:
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(KeyboardInterrupt):
        fs.open(str(tmp_path / "a"), owner=OWNER, create=True)
    monkeypatch.undo()
    assert open_fds() == before
    assert no_handles(registry)


def test_an_interrupt_while_a_database_file_lock_is_registered_leaves_no_holder(
    fs: FileSystem, registry: HandleRegistry, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt before `lock_file` registered the lock left its holder in the table of
    locked files for good: every later opener of that file, even once it was closed, was
    told this holder had it."""
    from jetstore.io import locking

    file = fs.open(str(tmp_path / "a.edb"), owner=OWNER, create=True)
    info = file.stat()
    interrupt_register_once(monkeypatch, after=False)
    with pytest.raises(KeyboardInterrupt):
        locking.lock_file(fs, file, owner=OWNER, holder="instance 'x'", what="database file")
    monkeypatch.undo()
    assert (info.st_dev, info.st_ino) not in locking._HELD
    file.close()
    assert locking.lock_holder_pid(fs, str(tmp_path / "a.edb")) is None


class Interrupted(KeyboardInterrupt):
    pass


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_interrupts_at_any_point_of_open_and_close_leave_no_descriptor_behind(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    """A timer raises an exception from a signal handler every few dozen microseconds, at
    whatever point of an open or a close the main thread has reached (KeyboardInterrupt
    arrives so). Every descriptor is then registered (its owner's cleanup closes it) or
    closed: none is left open and counted nowhere."""
    from jetstore.io import handles as handles_module

    before = open_fds()
    path = str(tmp_path / "a")
    where = {files_module.__file__, handles_module.__file__}
    armed = False
    fired = 0

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal armed, fired
        if armed and sys._getframe(1).f_code.co_filename in where:
            armed = False  # one interrupt per round: none in the test's own bookkeeping
            fired += 1
            raise Interrupted

    callbacks = gc.callbacks[:]
    gc.callbacks.clear()  # an interrupt in a gc callback would only be reported unraisable
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1e-4, 2.3e-5)
        for _ in range(1_000):
            try:
                armed = True
                fs.open(path, owner=OWNER, create=True).close()
                armed = False
            except Interrupted:
                pass
    finally:
        armed = False
        stop_interval_timer(previous)
        gc.callbacks[:] = callbacks
    assert fired > 100  # the rounds were indeed interrupted, many times
    registry.close_owner(OWNER)
    assert open_fds() == before
    assert no_handles(registry)


@pytest.mark.parametrize("call", ["open", "fsync_directory"])
def test_an_interrupt_as_os_open_returns_closes_the_descriptor(
    fs: FileSystem, registry: HandleRegistry, tmp_path, call: str
) -> None:
    """CPython runs a signal handler when a call returns, before its result is stored: with
    `fd = os.open(...)` a Ctrl-C there lost the number. A profile function raising
    KeyboardInterrupt at the first C call of the io layer that returns with one more
    descriptor open reproduces that moment exactly."""
    before = open_fds()
    fired: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if (
            event == "c_return"
            and not fired
            and frame.f_code.co_filename == files_module.__file__
            and open_fds() > before
        ):
            fired.append(arg.__name__)
            raise KeyboardInterrupt("Ctrl-C")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "open":
                fs.open(str(tmp_path / "a"), owner=OWNER, create=True)
            else:
                fs.fsync_directory(str(tmp_path), owner=OWNER)
    finally:
        sys.setprofile(None)
    assert fired
    assert open_fds() == before
    assert no_handles(registry)
    assert fired == ["extend"]  # the number was in the opener's list when it came


@pytest.mark.parametrize("call", ["read_file", "write_new_file", "is_locked"])
def test_an_interrupt_as_a_short_use_s_open_returns_leaves_no_file_open(
    fs: FileSystem, registry: HandleRegistry, tmp_path, call: str
) -> None:
    """`with fs.open(...) as f` (and `f = fs.open(...)` before a `try`): a Ctrl-C as `open`
    returned, the file registered but not yet taken by the `with`, left it open under an
    owner nobody cleans up (a peek's, a probe's) for the life of the process."""
    from jetstore.io import locking

    target = tmp_path / "a"
    target.write_bytes(b"content")
    (tmp_path / "jetstore.lock").write_bytes(b"")
    before = open_fds()
    fired: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        # The table itself: `total()` takes the registry lock, which `register` may hold.
        if event == "c_return" and not fired and registry._handles:
            fired.append(frame.f_code.co_name)
            raise KeyboardInterrupt("Ctrl-C")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            if call == "read_file":
                fs.read_file(str(target), owner=OWNER)
            elif call == "write_new_file":
                fs.write_new_file(str(target), [b"new"], owner=OWNER)
            else:
                locking.is_locked(fs, str(tmp_path))
    finally:
        sys.setprofile(None)
    assert fired
    assert no_handles(registry)
    assert open_fds() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_as_root_what_is_created_takes_the_owner_of_its_directory(tmp_path: Path) -> None:
    # Defect: root running a tool in a service's directory left root's files there.
    uid, gid = 54321, 54322
    os.chown(tmp_path, uid, gid)
    kept = tmp_path / "kept"
    kept.write_bytes(b"x")  # root's, before: an existing file keeps its owner
    fs = FileSystem(HandleRegistry("t"))
    with fs.opened(str(tmp_path / "new"), owner="t", create=True):
        pass
    with fs.opened(str(kept), owner="t", create=True):
        pass
    fs.mkdir(str(tmp_path / "one"))
    fs.makedirs(str(tmp_path / "two" / "three"))
    owners = {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in tmp_path.rglob("*")}
    assert owners == {
        "new": (uid, gid),
        "kept": (0, 0),
        "one": (uid, gid),
        "two": (uid, gid),
        "three": (uid, gid),
    }


def test_hook_sees_links_and_every_removal_of_a_tree(
    fs: FileSystem, hook: Recorder, tmp_path
) -> None:
    # `swap_into_place` keeps the old database under a second name, and a failed copy or
    # restore is removed as a tree: made with `os`/`shutil` calls, the crash recorder and
    # fault injection never saw them.
    base = str(tmp_path / "tree")
    a = os.path.join(base, "a")
    fs.makedirs(os.path.join(base, "sub"))
    fs.write_new_file(a, [b"x"], owner=OWNER)
    fs.write_new_file(os.path.join(base, "sub", "b"), [b"y"], owner=OWNER)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"k")
    os.symlink(outside, os.path.join(base, "sub", "link"))
    hook.events.clear()

    fs.link(a, os.path.join(base, "a2"))
    assert os.path.samefile(a, os.path.join(base, "a2"))
    fs.remove_tree(base)

    assert not os.path.lexists(base)
    assert (outside / "keep").read_bytes() == b"k"  # a symlink is removed, not followed
    assert (hook.events[0].op, hook.events[0].path, hook.events[0].target) == (
        "link",
        a,
        os.path.join(base, "a2"),
    )
    removed = sorted((e.op, os.path.relpath(e.path, base)) for e in hook.events[1:])
    assert removed == [
        ("rmdir", "."),
        ("rmdir", "sub"),
        ("unlink", "a"),
        ("unlink", "a2"),
        ("unlink", os.path.join("sub", "b")),
        ("unlink", os.path.join("sub", "link")),
    ]


def test_a_tree_removal_goes_on_past_a_failure_and_reports_it(
    fs: FileSystem, hook: Recorder, tmp_path
) -> None:
    base = tmp_path / "tree"
    (base / "sub").mkdir(parents=True)
    (base / "a").write_bytes(b"x")
    (base / "sub" / "b").write_bytes(b"y")
    hook.fail_op = "rmdir"
    with pytest.raises(DiskIO) as caught:
        fs.remove_tree(str(base))
    assert str(base / "sub") in str(caught.value)
    assert sorted(os.listdir(base)) == ["sub"] and os.listdir(base / "sub") == []
    (base / "c").write_bytes(b"c")
    with pytest.raises(FileAlreadyExists):
        fs.link(str(base / "c"), str(base / "sub"))


def test_opening_keeps_the_file_unless_the_block_raises(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    path = str(tmp_path / "f")
    with fs.opening(path, owner=OWNER, create=True) as kept:
        kept.pwrite(b"x", 0)
    assert kept.pread(1, 0) == b"x" and registry.total() == 1
    assert registry.close_owner(OWNER) == [] and registry.total() == 0  # a sub-owner's
    with pytest.raises(KeyboardInterrupt), fs.opening(path, owner=OWNER) as dropped:
        raise KeyboardInterrupt
    assert registry.total() == 0
    with pytest.raises(InstanceUnavailable):
        dropped.pread(1, 0)


def test_a_symbolic_link_to_nothing_is_named_as_one(fs: FileSystem, tmp_path) -> None:
    # Defect: "open failed: No such file or directory" for a path `ls` shows: the operator
    # looked for a missing file, not at where the link points.
    link = tmp_path / "main.edb"
    os.symlink(tmp_path / "moved" / "main.edb", link)
    with pytest.raises(FileNotFound) as caught:
        fs.open(str(link), owner=OWNER, writable=False)
    assert f"is a symbolic link to '{tmp_path / 'moved' / 'main.edb'}'" in str(caught.value)
    assert "put the file back" in str(caught.value)
    with pytest.raises(FileNotFound, match="No such file") as plain:
        fs.open(str(tmp_path / "absent"), owner=OWNER, writable=False)
    assert "symbolic link" not in str(plain.value)
