"""A full log disk: reserve logs let the log roll once more, updates are refused with
LogDiskFull (-529), reads go on, and after space is freed a reopen restores normal service
with every acknowledged commit. Injected ENOSPC always runs; a real small tmpfs is used where
mounting is permitted (root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import JetError, LogDiskFull
from jetstore.format.filenames import generation_log_name
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.io import FileSystem, IOEvent

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024, "page_size": 4096}


def setup(instance: jetstore.Instance) -> jetstore.Database:
    db = instance.database("main", create=True)
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    return db


def ids(instance: jetstore.Instance) -> set[int]:
    with instance.database("main").transaction() as txn:
        return {row["id"] for row in txn.table("t").scan()}


def commit_until_refused(
    db: jetstore.Database, start: int, limit: int
) -> tuple[list[int], JetError]:
    acked: list[int] = []
    for i in range(start, start + limit):
        try:
            with db.transaction() as txn:
                txn.table("t").insert({"id": i, "v": "x" * 500})
        except JetError as exc:
            return acked, exc
        acked.append(i)
    pytest.fail("the disk never filled up")


def test_injected_full_log_volume_uses_a_reserve_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = {"on": False}

    def hook(event: IOEvent) -> None:
        # Like a full volume: writes that would allocate new blocks (extend a file) fail;
        # overwrites of preallocated log files still work.
        if (
            full["on"]
            and event.op == "write"
            and event.offset + event.size > os.path.getsize(event.path)
        ):
            raise OSError(28, "No space left on device")

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **OPTIONS)
    db = setup(instance)
    acked: list[int] = []
    for i in range(200):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "x" * 500})
        acked.append(i)
    full["on"] = True
    more, error = commit_until_refused(db, 200, 20_000)
    acked += more
    assert isinstance(error, LogDiskFull) and error.code == -529
    assert instance.counters()["reserve_logs_used"] >= 1
    assert set(acked) <= ids(instance)  # reads go on
    with pytest.raises(LogDiskFull), db.transaction() as txn:
        txn.table("t").insert({"id": 10**6, "v": "refused"})
    # The final checkpoint needs new pages (copy-on-write), which a full volume may refuse:
    # close then reports it, still releases everything, and the log keeps every commit.
    try:
        instance.close()
    except JetError as exc:
        assert exc.code in (-1808, -529, -1090)
    assert instance.registry.total() == 0
    full["on"] = False
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        assert set(acked) <= ids(instance)
        db = instance.database("main")
        with db.transaction() as txn:
            txn.table("t").insert({"id": 10**6, "v": "back to normal"})
        names = os.listdir(tmp_path)
        assert "edbres00001.jrs" in names and "edbres00002.jrs" in names
    # The event file is on the full volume too: the event reaches the Python logger anyway.
    assert any("log_disk_full" in record.getMessage() for record in caplog.records)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.mark.parametrize("size_kib", [1536, 2560, 4096])
def test_real_full_disk_on_a_small_tmpfs(small_tmpfs: Path, size_kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size_kib}k", str(small_tmpfs)], check=True)
    directory = small_tmpfs / "instance"
    instance = jetstore.open(directory, **OPTIONS)
    db = setup(instance)
    acked, error = commit_until_refused(db, 0, 100_000)
    assert acked, "some commits must fit"
    assert isinstance(error, JetError)  # LogDiskFull, or the instance stopped after ENOSPC
    try:
        assert set(acked) <= ids(instance)  # what was acknowledged is readable
    except JetError:
        pass  # a failed instance may refuse even reads of unpublished state
    try:
        instance.close()
    except JetError:
        pass  # a final checkpoint may not fit either; the log has everything
    assert instance.registry.total() == 0
    # Free space, reopen: normal service, nothing acknowledged lost.
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    with jetstore.open(directory, **OPTIONS) as instance:
        assert set(acked) <= ids(instance)
        with instance.database("main").transaction() as txn:
            txn.table("t").insert({"id": 10**6, "v": "space again"})


def test_low_log_volume_is_reported_once_until_space_comes_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event 144 comes at the roll that finds less than `log_disk_low_files` log files of
    free space, once; it is armed again when space comes back."""
    free = {"bytes": 1 << 40}
    with jetstore.open(tmp_path / "i", log_disk_low_files=4, **OPTIONS) as instance:
        monkeypatch.setattr(instance.fs, "free_bytes", lambda path: free["bytes"])
        db = setup(instance)

        def roll_a_few(start: int) -> None:
            first = instance.log.current_generation
            i = start
            while instance.log.current_generation < first + 3:
                with db.transaction() as txn:
                    txn.table("t").insert({"id": i, "v": "x" * 2000})
                i += 1

        def low_events() -> list[dict[str, object]]:
            import json

            lines = (tmp_path / "i" / "events.jsonl").read_text().splitlines()
            return [e for e in map(json.loads, lines) if e["name"] == "log_disk_low"]

        roll_a_few(0)
        assert low_events() == [] and instance.counters()["log_disk_low"] is False
        free["bytes"] = 3 * 64 * 1024  # under 4 log files
        roll_a_few(10_000)
        events = low_events()
        assert len(events) == 1 and events[0]["id"] == 144
        assert events[0]["fields"]["free_bytes"] == 3 * 64 * 1024
        counters = instance.counters()
        assert counters["log_disk_low"] is True
        assert counters["log_disk_free_bytes"] == 3 * 64 * 1024
        free["bytes"] = 1 << 40
        roll_a_few(20_000)
        free["bytes"] = 1024
        roll_a_few(30_000)
        assert len(low_events()) == 2


def _one_refused_log_allocation() -> FileSystem:
    """A file system on which the first write growing `edbtmp.log` (the open preparing its
    first log file) fails with ENOSPC, and every later one succeeds."""
    full = {"on": True}

    def hook(event: IOEvent) -> None:
        if (
            full["on"]
            and event.op == "write"
            and event.path.endswith("edbtmp.log")
            and event.offset + event.size > os.path.getsize(event.path)
        ):
            full["on"] = False
            raise OSError(28, "No space left on device")

    return FileSystem(hook=hook)


def test_a_reserve_log_taken_while_the_instance_opens_is_reported(tmp_path: Path) -> None:
    """The first log file of an open is prepared before the instance is ready: a reserve
    log taken there is reported (event 143) like one taken later, not only counted."""
    jetstore.open(tmp_path, **OPTIONS).close()
    with jetstore.open(tmp_path, filesystem=_one_refused_log_allocation(), **OPTIONS) as instance:
        assert instance.counters()["reserve_logs_used"] == 1
        with pytest.raises(LogDiskFull):
            setup(instance)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    full_events = [e for e in events if e["name"] == "log_disk_full"]
    assert [(e["id"], e["fields"]["reserve"]) for e in full_events] == [(143, 1)]


def test_a_generation_made_from_a_reserve_log_says_so_in_its_header(tmp_path: Path) -> None:
    """Bit 1 of a log header's flags marks the generation that a reserve log became (what
    `dump logs` shows): the operator can tell which generations the full volume forced."""
    jetstore.open(tmp_path, **OPTIONS).close()
    with jetstore.open(tmp_path, filesystem=_one_refused_log_allocation(), **OPTIONS) as instance:
        from_reserve = instance.log.current_generation
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        normal = instance.log.current_generation
        names = {from_reserve: generation_log_name(from_reserve), normal: "edb.log"}
        flags = {
            generation: decode_log_header(
                (tmp_path / name).read_bytes()[:LOG_HEADER_SIZE], path=name
            ).reserve_log
            for generation, name in names.items()
        }
    assert flags == {from_reserve: True, normal: False}


def _volume_of(directory: Path, free: int) -> FileSystem:
    """A file system whose volume holds what `directory` holds now plus `free` bytes: a write
    growing a file past that fails with ENOSPC, as on a full disk (a truncation or a deletion
    gives space back). The event log is left out of the count (it is bounded, and its lines
    vary in length)."""

    def used() -> int:
        return sum(
            entry.stat().st_size
            for entry in os.scandir(directory)
            if entry.is_file() and not entry.name.startswith("events")
        )

    capacity = used() + free

    def hook(event: IOEvent) -> None:
        if event.op == "write" and os.path.dirname(event.path) == str(directory):
            grows = event.offset + event.size - os.path.getsize(event.path)
            if grows > 0 and used() + grows > capacity:
                raise OSError(28, "No space left on device")

    return FileSystem(hook=hook)


@pytest.mark.parametrize(("free", "joining"), [(0, False), (100_000, False), (0, True)])
def test_failed_opens_on_a_full_volume_leave_no_log_generation_behind(
    tmp_path: Path, free: int, joining: bool
) -> None:
    """Every open starts a new generation (D7). An open whose recovery checkpoint then failed
    on a full volume left it behind: a log file of space never given back (taking a reserve
    log when the volume was full), and each retry took another one until the volume was
    full. A failed open that wrote nothing naming its generation now takes it back."""
    options = {**OPTIONS, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}
    instance = jetstore.open(tmp_path, **options)
    db = setup(instance)
    for i in range(400):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "x" * 500})
    instance.simulate_crash()
    if joining:
        # A clean database joining at open: the open logs its ATTACH record in the new
        # generation before the checkpoint fails.
        with jetstore.open(tmp_path / "elsewhere", **options) as elsewhere:
            elsewhere.database("joiner", create=True)
            os.rename(elsewhere.detach("joiner"), tmp_path / "joiner.edb")
        shutil.rmtree(tmp_path / "elsewhere")

    def files() -> dict[str, int]:
        return {
            entry.name: entry.stat().st_size
            for entry in os.scandir(tmp_path)
            if entry.is_file() and not entry.name.startswith("events")
        }

    def logs() -> dict[str, int]:
        """The generations and the reserve logs (`edbtmp.log` is prepared ahead of use)."""
        return {name: size for name, size in files().items() if name.endswith((".log", ".jrs"))}

    before = logs()
    del before["edbtmp.log"]
    used = sum(files().values())
    filesystem = _volume_of(tmp_path, free)
    for _attempt in range(4):
        with pytest.raises(JetError) as refused:
            jetstore.open(tmp_path, filesystem=filesystem, **options)
        assert refused.value.code == -1808  # DiskFull: the recovery checkpoint's pages
        after = logs()
        after.pop("edbtmp.log", None)
        assert after == before
        assert sum(files().values()) <= used + free
    with jetstore.open(tmp_path, **options) as instance:
        assert ids(instance) == set(range(400))
        assert (
            instance.log.current_generation
            == max(int(name[3:11], 16) for name in before if name.startswith("edb0")) + 2
        )
        assert instance.databases() == (["joiner", "main"] if joining else ["main"])


@pytest.mark.parametrize("joining", [False, True])
def test_a_generation_taken_back_halfway_is_finished_by_the_next_open(
    tmp_path: Path, joining: bool
) -> None:
    """Taking a failed open's generation back undoes the roll's two renames in reverse order:
    stopped between them (here the second one fails), the directory is what a crash inside
    a roll leaves (no `edb.log`, `edbtmp.log` the next generation with no record), which the
    next open finishes; nothing acknowledged is lost."""
    options = {**OPTIONS, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}
    instance = jetstore.open(tmp_path, **options)
    db = setup(instance)
    for i in range(50):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "x" * 500})
    instance.simulate_crash()
    if joining:  # its ATTACH record, in the generation taken back, is blanked first
        with jetstore.open(tmp_path / "elsewhere", **options) as elsewhere:
            elsewhere.database("joiner", create=True)
            os.rename(elsewhere.detach("joiner"), tmp_path / "joiner.edb")
        shutil.rmtree(tmp_path / "elsewhere")

    def hook(event: IOEvent) -> None:
        if event.op == "write" and event.path.endswith("main.edb"):
            raise OSError(28, "No space left on device")
        second_take_back_rename = event.op == "rename" and not event.path.endswith("edbtmp.log")
        if second_take_back_rename and event.target.endswith(os.sep + "edb.log"):
            raise OSError(5, "injected EIO")

    with pytest.raises(JetError):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **options)
    names = os.listdir(tmp_path)
    assert "edb.log" not in names and "edbtmp.log" in names
    with jetstore.open(tmp_path, **options) as instance:
        assert ids(instance) == set(range(50))
        assert any("cut short" in note for note in instance.recovery.notes)
        assert instance.databases() == (["joiner", "main"] if joining else ["main"])
