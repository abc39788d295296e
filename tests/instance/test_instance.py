"""Instance lifecycle: files in the directory, the exclusive lock, options, clean shutdown,
several databases on one log stream, checkpoints, counters and handles."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import google_crc32c
import pytest

import jetstore
from interrupting import interrupt_once
from jetstore.errors import (
    DatabaseNotFound,
    FileAccessDenied,
    InstanceUnavailable,
    InternalError,
    InvalidDatabaseVersion,
    InvalidParameter,
    InvalidPath,
    JetError,
    TooManyOpenDatabases,
)
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.dbheader import DatabaseState, choose_db_header
from jetstore.instance.instance import InstanceState
from jetstore.io import FileSystem, IOEvent

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}


def header_of(path: Path):
    data = path.read_bytes()
    size = 8192
    header, problems = choose_db_header(data[:size], data[size : 2 * size], path=str(path))
    assert problems == []
    return header


def fill(db: jetstore.Database, n: int, start: int = 0) -> None:
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(start, start + n):
            table.insert({"id": i, "v": f"value {i}" * 10})


def count(db: jetstore.Database) -> int:
    with db.transaction() as txn:
        return sum(1 for _ in txn.table("t").scan())


def test_directory_holds_the_expected_files(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        fill(instance.database("main", create=True), 2000)
        names = set(os.listdir(tmp_path))
        assert {"edb.chk", "edb.log", "main.edb", "events.jsonl", "jetstore.lock"} <= names
        assert "edbres00001.jrs" in names and "edbres00002.jrs" in names
        assert any(n.startswith("edb000000") and n.endswith(".log") for n in names)
        for name in names:
            if name.startswith("edb0"):
                assert name[3:11] == name[3:11].upper()


@pytest.mark.parametrize(
    ("version", "copies"),
    [(1, (0, 1)), (FORMAT_VERSION + 1, (0, 1)), (FORMAT_VERSION + 1, (0,))],
)
def test_a_database_of_another_format_version_is_refused_at_open_and_left_as_it_is(
    tmp_path: Path, version: int, copies: tuple[int, ...]
) -> None:
    """Format version 1 (before D12's page references) or a newer one is refused with
    InvalidDatabaseVersion naming the file and the version, not called damaged; nothing in
    the directory changes. A newer copy 0 beside a copy 1 of this format (a newer engine
    writes copy 0 first) refuses too: rewriting it from copy 1 would undo a newer engine's
    write, as the checkpoint file's rule says (D6)."""
    with jetstore.open(tmp_path, **SMALL) as instance:
        fill(instance.database("main", create=True), 10)
    path = tmp_path / "main.edb"
    data = bytearray(path.read_bytes())
    for copy in copies:
        start = copy * 8192
        struct.pack_into("<H", data, start + 14, version)
        crc = google_crc32c.value(bytes(data[start + 4 : start + 8192]))
        struct.pack_into("<I", data, start, crc)
    path.write_bytes(bytes(data))
    before = {name: (tmp_path / name).read_bytes() for name in ("main.edb", "edb.log", "edb.chk")}
    with pytest.raises(InvalidDatabaseVersion) as info:
        jetstore.open(tmp_path, **SMALL)
    assert info.value.code == -1209
    assert f"format version {version}" in str(info.value) and "main.edb" in str(info.value)
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_second_opener_in_same_process_is_refused(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL):
        with pytest.raises(FileAccessDenied) as info:
            jetstore.open(tmp_path, **SMALL)
        assert str(os.getpid()) in str(info.value)
        assert info.value.code == -1032


def test_second_opener_in_other_process_is_refused_naming_the_pid(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL):
        script = (
            "import sys, jetstore\n"
            "try:\n"
            "    jetstore.open(sys.argv[1])\n"
            "except jetstore.errors.FileAccessDenied as e:\n"
            "    print(e); sys.exit(7)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
        )
        assert result.returncode == 7, result.stderr
        assert str(os.getpid()) in result.stdout
    # Once closed, the directory opens again.
    with jetstore.open(tmp_path, **SMALL):
        pass


def test_a_forked_child_cannot_use_the_instance_and_leaves_the_parents_alone(
    tmp_path: Path,
) -> None:
    """A child forked while the instance is open shares its descriptors and flock locks: it
    is refused every use, and its close() (here: leaving the `with` block, as `sys.exit` in a
    careless child does) used to checkpoint the parent's databases, release the parent's
    directory lock (another process could then open the directory under the parent) and
    remove its control socket."""
    with jetstore.open(tmp_path, **SMALL) as instance:
        db = instance.database("main", create=True)
        fill(db, 10)
        before_fork = db.transaction()
        before_fork.table("t").insert({"id": 100, "v": "written before the fork"})
        chk = (tmp_path / "edb.chk").read_bytes()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it was told, then leave the with block
            code = 1
            try:
                os.close(read_end)
                outcomes = []
                for attempt in (
                    db.transaction,
                    before_fork.commit,
                    lambda: instance.database("other", create=True),
                    instance.checkpoint,
                    lambda: instance.backup(tmp_path / "set"),
                ):
                    try:
                        attempt()
                        outcomes.append("done")
                    except InstanceUnavailable as exc:
                        outcomes.append("refused" if str(os.getppid()) in str(exc) else str(exc))
                    except BaseException as exc:  # reported to the parent
                        outcomes.append(repr(exc))
                instance.close()
                outcomes.append(f"handles {instance.registry.total()}")
                os.write(write_end, ";".join(outcomes).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
        assert report == "refused;refused;refused;refused;refused;handles 0"
        # The parent's lock is still held, its socket is there, nothing was checkpointed.
        with pytest.raises(FileAccessDenied):
            jetstore.open(tmp_path, **SMALL)
        assert (tmp_path / "jetstore.sock").exists()
        assert (tmp_path / "edb.chk").read_bytes() == chk
        assert not (tmp_path / "other.edb").exists()
        before_fork.commit()
        instance.checkpoint()
    with jetstore.open(tmp_path, **SMALL) as again:
        assert again.recovery is not None and again.recovery.replayed == 0
        assert count(again.database("main")) == 11


def test_clean_shutdown_marks_headers_clean_and_needs_no_logs(tmp_path: Path) -> None:
    instance = jetstore.open(tmp_path, **SMALL)
    fill(instance.database("main", create=True), 500)
    while_open = header_of(tmp_path / "main.edb")
    assert while_open.state is DatabaseState.DIRTY
    assert while_open.generation_min_required > 0
    instance.close()
    closed = header_of(tmp_path / "main.edb")
    assert closed.state is DatabaseState.CLEAN
    assert (closed.generation_min_required, closed.generation_max_required) == (0, 0)
    assert closed.last_consistent_position == closed.checkpoint_position
    state, problems = read_checkpoint_file((tmp_path / "edb.chk").read_bytes(), path="edb.chk")
    assert problems == []
    assert state.checkpoint_position == closed.checkpoint_position
    assert [a.name for a in state.attached] == ["main"]
    with jetstore.open(tmp_path, **SMALL) as again:
        assert again.recovery is not None and again.recovery.replayed == 0
        assert count(again.database("main")) == 500


def test_close_releases_every_handle_and_is_idempotent(tmp_path: Path) -> None:
    instance = jetstore.open(tmp_path, **SMALL)
    fill(instance.database("main", create=True), 3000)
    counts = instance.counters()["handles"]
    # The directory lock and the database file's (design D13).
    assert counts["lock"] == 2 and counts["thread"] >= 1 and counts["file"] >= 2
    instance.close()
    instance.close()
    assert instance.registry.total() == 0
    with pytest.raises(InstanceUnavailable):
        instance.database("main")


def _writes_instance_stopped(event: IOEvent) -> bool:
    """The event log write of `instance_stopped`: close(), its final checkpoint done, about
    to release everything."""
    return (
        event.op == "write"
        and event.path.endswith("events.jsonl")
        and event.data is not None
        and b"instance_stopped" in bytes(event.data)
    )


def test_two_threads_closing_at_once_get_one_clean_shutdown(tmp_path: Path) -> None:
    """A second close() while the first was finishing ran a final checkpoint of its own on
    the files the first one was closing: `InvalidParameter` "file ... used after it was
    closed: a bug in the caller". It now waits for the first one and returns."""
    stopping, resume = threading.Event(), threading.Event()
    second_checkpoints, resume_second = threading.Event(), threading.Event()
    threads: dict[str, threading.Thread] = {}

    def hook(event: IOEvent) -> None:
        if _writes_instance_stopped(event) and not stopping.is_set():
            # The first close, its final checkpoint done, stops before releasing anything.
            stopping.set()
            resume.wait(30)
        elif threading.current_thread() is threads.get("second") and event.op == "fdatasync":
            second_checkpoints.set()  # the old code: a checkpoint in the second close
            resume_second.wait(30)

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    fill(instance.database("main", create=True), 500)
    errors: list[BaseException] = []

    def close() -> None:
        try:
            instance.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads["first"] = threading.Thread(target=close)
    threads["first"].start()
    assert stopping.wait(30)
    threads["second"] = threading.Thread(target=close)
    threads["second"].start()
    second_checkpoints.wait(1.0)  # never set now: the second close waits for the first
    resume.set()
    threads["first"].join()
    resume_second.set()
    threads["second"].join()
    assert errors == []
    assert instance.registry.total() == 0
    assert threading.active_count() == 1
    with jetstore.open(tmp_path, **SMALL) as again:
        assert again.recovery is not None and again.recovery.replayed == 0
        assert count(again.database("main")) == 500


def test_a_checkpoint_asked_once_another_thread_closed_the_instance_says_it_is_closed(
    tmp_path: Path,
) -> None:
    """Defect: `checkpoint()` of an instance another thread had closed returned the last
    durable position, as if it had written a checkpoint, where every other call says the
    instance is closed (InstanceUnavailable). A thread checkpointing in a loop went on
    "checkpointing" a closed instance, without a word."""
    instance = jetstore.open(tmp_path, **SMALL)
    fill(instance.database("main", create=True), 50)
    closer = threading.Thread(target=instance.close)
    closer.start()
    closer.join(10)
    assert instance.state is InstanceState.CLOSED
    with pytest.raises(InstanceUnavailable, match="is closed") as info:
        instance.checkpoint()
    assert "jetstore.open" in (info.value.hint or "")


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter):
        jetstore.open(tmp_path, page_size=1000)
    with pytest.raises(InvalidParameter):
        jetstore.open(tmp_path, log_file_size=1000)
    with pytest.raises(InvalidParameter) as info:
        jetstore.open(tmp_path, no_such_option=1)
    assert "no_such_option" in str(info.value)
    # Wrong types are refused by name, never a bare TypeError from a comparison.
    for name, value in (
        ("log_file_size", {"log_file_size": 65536}),
        ("page_size", "8192"),
        ("circular_logging", 1),
        ("cache_size", True),
        ("checkpoint_interval", "30"),
    ):
        with pytest.raises(InvalidParameter, match=name):
            jetstore.open(tmp_path, **{name: value})
    # NaN passed `<= 0` (a lazy_flush_interval of NaN made the background thread spin), and a
    # lazy_flush_interval beyond threading.TIMEOUT_MAX killed it: no checkpoint ran again.
    for name, value in (
        ("lazy_flush_interval", math.nan),
        ("lazy_flush_interval", 1e300),
        ("lazy_flush_interval", math.inf),
        ("checkpoint_interval", math.nan),
        ("checkpoint_warning_interval", math.nan),
        ("checkpoint_interval", -1.0),
    ):
        with pytest.raises(InvalidParameter, match=name):
            jetstore.open(tmp_path, **{name: value})
    # cache_size is a byte budget for databases of any page size: 16 pages of the smallest
    # page size is the floor, whatever page_size (new databases' size) says.
    with pytest.raises(InvalidParameter, match="cache_size"):
        jetstore.open(tmp_path, cache_size=16 * 4096 - 1)
    with jetstore.open(tmp_path, page_size=32768, cache_size=16 * 4096) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")
        with db.transaction() as txn:
            txn.table("t").insert({"id": 1})
    # A refused open leaves no handle and no lock behind.
    with jetstore.open(tmp_path, **SMALL):
        pass


def test_cache_size_bounds_the_cache_of_every_database_together(tmp_path: Path) -> None:
    # cache_size is the instance's: each database's node cache held up to cache_size (counted
    # in pages of the page_size option), so 4 databases held 4x, and a database of 32 KiB
    # pages 4x more bytes again.
    cache_size = 256 * 8192  # above the floors: 16 pages of each cache
    with jetstore.open(tmp_path, **SMALL, cache_size=cache_size) as instance:
        names = ["a", "b", "c"]
        for name in names:
            fill(instance.database(name, create=True), 20000)
    with jetstore.open(tmp_path, page_size=32768, **SMALL) as instance:
        fill(instance.database("big", create=True), 20000)
    with jetstore.open(tmp_path, **SMALL, cache_size=cache_size) as instance:
        for name in [*names, "big"]:
            db = instance.database(name)
            with db.transaction() as txn:
                assert sum(1 for _ in txn.table("t").scan()) == 20000
        files = [instance.database(name).file for name in [*names, "big"]]
        held = sum(len(file.cache) * file.page_size for file in files)
        assert held <= cache_size
        assert instance.counters()["cache_misses"] > 0


def test_unknown_database_needs_create(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        with pytest.raises(DatabaseNotFound):
            instance.database("nope")
        with pytest.raises(InvalidParameter):
            instance.database("../evil", create=True)
        # Names that are not strings: a bare TypeError from the lookup before the check.
        for name in (None, [], 1, b"a"):
            for create in (False, True):
                with pytest.raises(InvalidParameter, match="must be a string"):
                    instance.database(name, create=create)  # type: ignore[arg-type]


def test_several_databases_share_one_log_stream(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        a = instance.database("a", create=True)
        b = instance.database("b", create=True)
        for i in range(5):
            fill(a, 100, start=i * 100)
            fill(b, 50, start=i * 50)
        instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert sorted(instance.databases()) == ["a", "b"]
        assert count(instance.database("a")) == 500
        assert count(instance.database("b")) == 250
        ha = header_of(tmp_path / "a.edb")
        hb = header_of(tmp_path / "b.edb")
        assert ha.log_signature == hb.log_signature
        assert ha.db_signature != hb.db_signature


def test_checkpoint_by_volume_happens_in_background(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        db = instance.database("main", create=True)
        before = instance.checkpoints
        for i in range(40):
            fill(db, 50, start=i * 50)
        deadline = __import__("time").monotonic() + 10
        while instance.checkpoints <= before + 1 and __import__("time").monotonic() < deadline:
            __import__("time").sleep(0.05)
        assert instance.checkpoints > before + 1
        counters = instance.counters()
        assert counters["checkpoint_durable"] is not None
        assert counters["pages_written"] > 0


def test_checkpoint_by_time(tmp_path: Path) -> None:
    import time

    with jetstore.open(tmp_path, checkpoint_interval=0.2, **SMALL) as instance:
        db = instance.database("main", create=True)
        fill(db, 10)
        before = instance.checkpoints
        deadline = time.monotonic() + 10
        while instance.checkpoints == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert instance.checkpoints > before


def test_pages_are_reused_after_checkpoints(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, page_size=4096, **SMALL) as instance:
        db = instance.database("main", create=True)
        fill(db, 2000)
        instance.checkpoint()
        size_after_load = os.path.getsize(tmp_path / "main.edb")
        for _round in range(10):
            with db.transaction() as txn:
                table = txn.table("t")
                for i in range(0, 2000, 3):
                    table.update(i, {"v": f"changed {_round} {i}" * 10})
            instance.checkpoint()
        growth = os.path.getsize(tmp_path / "main.edb") / size_after_load
        assert growth < 3.0, f"freed pages are not reused (file grew {growth:.1f}x)"


def test_counters_report_log_and_handles(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        fill(instance.database("main", create=True), 1000)
        counters = instance.counters()
        for key in (
            "handles",
            "log_generation",
            "log_bytes_appended",
            "commits",
            "checkpoints",
            "checkpoint_lag_generations",
        ):
            assert key in counters
        assert counters["commits"] >= 2
        assert counters["log_rolls"] >= 1


def test_lock_probe_reports_the_holder(tmp_path: Path) -> None:
    from jetstore.io import FileSystem, HandleRegistry
    from jetstore.io.locking import is_locked, read_lock_holder

    registry = HandleRegistry("probe")
    fs = FileSystem(registry)
    assert not is_locked(fs, str(tmp_path))
    with jetstore.open(tmp_path, **SMALL):
        assert is_locked(fs, str(tmp_path))
        assert read_lock_holder(fs, str(tmp_path)) == os.getpid()
    assert not is_locked(fs, str(tmp_path))
    assert registry.total() == 0


def test_event_log_records_the_lifecycle(tmp_path: Path) -> None:
    from jetstore.instance.events import read_events
    from jetstore.io import FileSystem

    with jetstore.open(tmp_path, **SMALL) as instance:
        fill(instance.database("main", create=True), 100)
        instance.checkpoint()
    names = [event["name"] for event in read_events(FileSystem(), str(tmp_path / "events.jsonl"))]
    for expected in (
        "instance_started",
        "database_created",
        "checkpoint_written",
        "instance_stopped",
    ):
        assert expected in names
    assert names.index("instance_started") < names.index("instance_stopped")


def test_error_events_carry_the_code_in_three_forms(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    locked = {"on": False}

    def hook(event: IOEvent) -> None:
        if locked["on"] and event.path.endswith("edb.chk"):
            raise PermissionError(13, "held")

    with jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL) as instance:
        fill(instance.database("main", create=True), 10)
        locked["on"] = True
        instance.checkpoint()
        locked["on"] = False
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["name"] == "checkpoint_file_write_failed"]
    assert failed and failed[0]["fields"]["code_forms"] == [-1032, 4294966264, "0xfffffbf8"]
    assert all(e["instance"] == str(tmp_path) for e in events)
    records = [
        r for r in caplog.records if getattr(r, "event_name", "") == "checkpoint_file_write_failed"
    ]
    assert records and records[0].event_id == 121  # type: ignore[attr-defined]


def test_durable_commit_of_nothing_makes_earlier_lazy_commits_durable(tmp_path: Path) -> None:
    # Found by the model-based test: lazy commit, then a durable commit that changed nothing,
    # then a crash. The durable commit promised everything it could see.
    options = dict(SMALL, lazy_flush_interval=60.0)
    instance = jetstore.open(tmp_path, **options)
    db = instance.database("main", create=True)
    fill(db, 1)
    with db.transaction() as txn:
        txn.table("t").insert({"id": 7, "v": "lazy"})
        txn.commit(lazy=True)
    with db.transaction() as txn:
        assert txn.table("t").get(7) is not None
        txn.commit()  # nothing to write; must still wait for the lazy commit
    instance.simulate_crash()
    with (
        jetstore.open(tmp_path, **options) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert txn.table("t").get(7) == {"id": 7, "v": "lazy"}


def test_durable_commit_of_nothing_after_a_lazy_commit_whose_flush_failed_fails(
    tmp_path: Path,
) -> None:
    """The background flush of a lazy commit failed (the log is failed for good): a durable
    commit that saw the lazy commit cannot promise it, and says so, instead of returning as
    if everything it could see were durable (the lazy commit is gone after a reopen)."""
    failing = {"on": False}

    def hook(event: IOEvent) -> None:
        if failing["on"] and event.op == "write" and event.path.endswith("edb.log"):
            raise OSError(5, "Input/output error")

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    db = instance.database("main", create=True)
    fill(db, 1)
    failing["on"] = True
    with db.transaction() as txn:
        txn.table("t").insert({"id": 7, "v": "lazy"})
        txn.commit(lazy=True)
    deadline = time.monotonic() + 5
    while instance.log.failed is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert instance.log.failed is not None  # the background's lazy flush failed
    txn = db.transaction()
    assert txn.table("t").get(7) is not None
    with pytest.raises(JetError) as info:
        txn.commit()  # nothing to write; what it saw is not durable
    assert info.value.code in (-1022, -510)
    with contextlib.suppress(JetError):
        instance.close()
    with (
        jetstore.open(tmp_path, **SMALL) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert txn.table("t").get(7) is None


def test_a_database_the_checkpoint_file_cannot_list_is_refused_before_it_is_logged(
    tmp_path: Path,
) -> None:
    """The checkpoint file lists every attached database in 3,966 bytes (30 plus the name
    each). One more database than fits used to be logged and created, then every checkpoint
    failed the instance, and every later open too (recovery replays the creation): the
    directory could no longer be opened at all."""
    names = [f"db{i:02d}_" + "x" * 58 for i in range(60)]
    directory = tmp_path / "instance"
    with jetstore.open(directory, **SMALL) as instance:
        created = 0
        with pytest.raises(TooManyOpenDatabases) as info:
            for name in names:
                instance.database(name, create=True)
                created += 1
        assert info.value.code == -1027
        assert "edb.chk" in str(info.value) and "detach" in info.value.hint
        assert 30 < created < 60 and instance.state is InstanceState.OPEN
        assert names[created] not in instance.databases()
        # Attaching is refused the same way, and the file stays where it was.
        with jetstore.open(tmp_path / "other", **SMALL) as other:
            other.database(names[created], create=True)
            detached = other.detach(names[created])
        with pytest.raises(TooManyOpenDatabases):
            instance.attach(detached)
        assert os.path.exists(detached)
        instance.checkpoint()
        fill(instance.database(names[0]), 3)
    with jetstore.open(directory, **SMALL) as instance:
        assert instance.databases() == sorted(names[:created])
        assert not (directory / f"{names[created]}.edb").exists()


def test_a_directory_with_more_databases_than_the_checkpoint_file_lists_says_what_to_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older jetstore created databases beyond what edb.chk can list: every checkpoint,
    and every open after it, failed with InvalidParameter from the checkpoint file's
    encoder ("check the value named in the message"), each open leaving a log generation
    behind. Now the open recovers the databases (its checkpoint writes them clean, and
    edb.chk at the end of the log listing the others) and refuses with TooManyOpenDatabases
    naming the files to move out; the next open refuses before it writes anything; with
    those files moved out, it opens, and the log does not bring them back."""
    from jetstore.instance.events import read_event_log
    from jetstore.instance.instance import Instance

    with jetstore.open(tmp_path / "seed", **SMALL) as seed:
        fill(seed.database("seed", create=True), 5)
        seed_file = Path(seed.detach("seed"))
    directory = tmp_path / "instance"
    directory.mkdir()
    names = [f"db{i:02d}_" + "x" * 58 for i in range(42)]  # 93 bytes each: 42 fit
    for name in names:
        (directory / f"{name}.edb").write_bytes(seed_file.read_bytes())
    with jetstore.open(directory, **SMALL) as instance:
        assert len(instance.databases()) == 42
        # What an older jetstore let through: two more databases, written to, then a crash.
        monkeypatch.setattr(Instance, "_refuse_beyond_the_checkpoint_list", lambda *_: None)
        extra = [f"extra{i}_" + "y" * 57 for i in range(2)]  # 94 bytes each
        for name in extra:
            fill(instance.database(name, create=True), 50)
        fill(instance.database(names[0]), 20, start=100)
        instance.simulate_crash()
    monkeypatch.undo()

    def files() -> dict[str, bytes]:
        return {
            entry.name: Path(entry.path).read_bytes()
            for entry in os.scandir(directory)
            if entry.name not in ("events.jsonl", "jetstore.lock")
        }

    with pytest.raises(TooManyOpenDatabases) as refused:
        jetstore.open(directory, **SMALL)
    error = refused.value
    assert error.code == -1027 and "44 databases" in error.detail and "edb.chk" in error.detail
    assert "loses nothing" in error.hint and "move at least 2 database file(s) out" in error.hint
    assert all(f"'{name}.edb'" in error.hint for name in extra)
    for name in [*names, *extra]:
        assert header_of(directory / f"{name}.edb").state is DatabaseState.CLEAN
    before = files()
    with pytest.raises(TooManyOpenDatabases):
        jetstore.open(directory, **SMALL)
    assert files() == before  # refused before anything was written
    aside = tmp_path / "aside"
    aside.mkdir()
    for name in extra:
        os.rename(directory / f"{name}.edb", aside / f"{name}.edb")
    for _ in range(2):
        with jetstore.open(directory, **SMALL) as instance:
            assert sorted(instance.databases()) == names
            assert count(instance.database(names[0])) == 25
    events = read_event_log(FileSystem(), str(directory))
    assert not [e for e in events if e["name"] == "database_missing"]
    with jetstore.open(tmp_path / "other", **SMALL) as other:
        assert count(other.attach(aside / f"{extra[0]}.edb")) == 50


# --------------------------------------------------------------------------- operator's paths


def test_empty_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidPath, match="path is empty") as info:
        jetstore.open("", **SMALL)
    assert "'.'" in info.value.hint
    assert os.listdir(tmp_path) == []  # nothing created in the current directory


@pytest.mark.parametrize("path", [None, 5, b"/tmp/x"])
def test_a_value_that_is_no_str_path_is_refused_with_the_engine_error(path: object) -> None:
    # A bare TypeError escaped from os.fspath (None, a number) or from the NUL check (bytes).
    with pytest.raises(jetstore.errors.InvalidParameter, match="instance directory path must"):
        jetstore.open(path, **SMALL)  # type: ignore[arg-type]


def test_a_path_with_a_nul_byte_is_a_path_error(tmp_path: Path) -> None:
    # The OS API raises a bare ValueError ("embedded null byte") for it, before any OSError.
    with pytest.raises(InvalidPath, match="NUL") as info:
        jetstore.open(str(tmp_path / "a\x00b"), **SMALL)
    assert "instance directory" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_regular_file_as_instance_directory_is_a_path_error(tmp_path: Path) -> None:
    path = tmp_path / "afile"
    path.write_bytes(b"")
    with pytest.raises(InvalidPath, match="is a file, not a directory") as info:
        jetstore.open(path, **SMALL)
    assert str(path) in str(info.value) and "SMART" not in str(info.value)
    with pytest.raises(InvalidPath, match=r"a parent of .* is a file"):
        jetstore.open(path / "below", **SMALL)


@pytest.mark.parametrize("name", ["junk.edb", "edbtmp.log", "jetstore.lock"])
def test_directory_where_the_engine_keeps_a_file(tmp_path: Path, name: str) -> None:
    instance_dir = tmp_path / "i"
    jetstore.open(instance_dir, **SMALL).close()
    target = instance_dir / name
    if target.exists():
        target.unlink()
    target.mkdir()
    with pytest.raises(InvalidPath) as info:
        jetstore.open(instance_dir, **SMALL)
    err = info.value
    assert f"'{target}' is a directory, where the engine keeps a file" in err.detail
    assert "Move the directory" in err.hint
    assert "SMART" not in str(err) and "cabling" not in str(err)
    target.rmdir()
    jetstore.open(instance_dir, **SMALL).close()  # once it is moved away, all is well


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("path", ["/proc", "/proc/jetstore-no-such-instance"])
def test_special_file_system_cannot_hold_an_instance(path: str) -> None:
    with pytest.raises((InvalidPath, FileAccessDenied)) as info:
        jetstore.open(path, **SMALL)
    text = str(info.value)
    assert "cannot hold an instance" in text
    assert "backup" not in text  # no "restore from a backup" for an instance never made


def test_unwritable_directory_cannot_hold_an_instance(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: a mode 0555 directory stays writable, so no refusal to provoke"
        )
    locked = tmp_path / "ro"
    locked.mkdir(mode=0o555)
    with pytest.raises(FileAccessDenied, match="cannot hold an instance") as info:
        jetstore.open(locked, **SMALL)
    assert "backup" not in str(info.value)


def test_an_unexpected_error_in_the_background_round_fails_the_instance_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (any non-JetError) in a background round used to end the thread in silence:
    lazy commits stopped being flushed and checkpoints stopped while the instance took
    commits. It now fails the instance with InternalError (event 102); the lazy commit made
    before is flushed at close and survives."""
    from jetstore.instance.instance import Instance

    original = Instance._background_round
    armed = threading.Event()
    hit = threading.Event()

    def round_with_a_bug(self: Instance) -> None:
        if armed.is_set():
            hit.set()
            raise ZeroDivisionError("injected bug")
        original(self)

    monkeypatch.setattr(Instance, "_background_round", round_with_a_bug)
    inst = jetstore.open(tmp_path, lazy_flush_interval=0.01)
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int")], primary_key="id")
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1})
        txn.commit(lazy=True)
    armed.set()
    assert hit.wait(10)
    for _ in range(1000):
        if inst.state.value == "failed":
            break
        threading.Event().wait(0.01)
    assert inst.state.value == "failed"
    assert isinstance(inst.failure, InternalError)
    assert "ZeroDivisionError" in str(inst.failure)
    with pytest.raises(JetError) as refused, db.transaction() as txn:
        txn.table("t").insert({"id": 2})
    assert "background thread" in str(refused.value)
    inst.close()
    # Read after close, which joins the background thread: it sets FAILED before it writes
    # the event, so reading at FAILED raced the write.
    events = (tmp_path / "events.jsonl").read_text()
    assert '"instance_failed"' in events and "injected bug" in events
    monkeypatch.undo()
    with jetstore.open(tmp_path) as reopened, reopened.database("main").transaction() as txn:
        assert [row["id"] for row in txn.table("t").scan()] == [1]


@pytest.mark.parametrize("op", ["write", "fdatasync"])
def test_an_interrupt_during_a_checkpoints_page_writes_fails_the_instance(
    tmp_path: Path, op: str
) -> None:
    """Ctrl-C while an explicit checkpoint wrote the page file used to leave the instance
    serving, with the plan's page numbers given to nodes never written: the next checkpoint
    (the clean close) took them as written and named them in the header, and the database no
    longer opened (PageNotInitialized, page 3 blank). The interrupt now fails the instance;
    the reopen replays the log and every acknowledged commit is there."""
    armed = [False]

    def hook(event: IOEvent) -> None:
        if armed[0] and event.op == op and event.path.endswith("main.edb"):
            armed[0] = False
            raise KeyboardInterrupt("Ctrl-C")

    inst = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook))
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "str")], primary_key="id")
    inst.checkpoint()
    with db.transaction() as txn:
        for i in range(300):
            txn.table("t").insert({"id": i, "v": "x" * 50})
    armed[0] = True
    with pytest.raises(KeyboardInterrupt):
        inst.checkpoint()
    assert not armed[0]
    assert inst.state.value == "failed"
    with pytest.raises(JetError, match="checkpoint was interrupted"), db.transaction() as txn:
        txn.table("t").insert({"id": 1000})
    inst.close()
    with jetstore.open(tmp_path) as inst, inst.database("main").transaction() as txn:
        assert [row["id"] for row in txn.table("t").scan()] == list(range(300))


def test_a_database_created_during_a_log_roll_requires_no_generation_not_on_disk(
    tmp_path: Path,
) -> None:
    """Defect: `database(create=True)` wrote the new header requiring the log's current
    generation in memory. A roll of another thread (a backup's `log.roll()`) that had closed
    the generation in memory but not yet on disk made the header require a generation a
    crash left unwritten: the instance then refused to start (RequiredLogFilesMissing) with
    nothing acknowledged lost. Here the roll stops at its first write (the process dies
    there) once the database was created."""
    rolling, created = threading.Event(), threading.Event()
    roller: dict[str, threading.Thread | None] = {"thread": None}

    def hook(event: IOEvent) -> None:
        name = os.path.basename(event.path)
        if roller["thread"] is None and event.op == "create" and name.startswith("new.edb"):
            thread = threading.Thread(target=roll_log)
            roller["thread"] = thread
            thread.start()
            assert rolling.wait(5)  # the generation is closed in memory, not on disk
        elif roller["thread"] is threading.current_thread() and event.op == "write":
            rolling.set()
            created.wait(5)
            raise OSError(5, "injected: the process dies here")

    def roll_log() -> None:
        try:
            instance.log.roll()
        except JetError:
            pass

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), log_file_size=64 * 1024)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int")], primary_key="id")
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1})
    instance.database("new", create=True)
    created.set()
    thread = roller["thread"]
    assert thread is not None
    thread.join(5)
    instance.simulate_crash()
    with jetstore.open(tmp_path, log_file_size=64 * 1024) as reopened:
        assert reopened.databases() == ["main", "new"]
        with reopened.database("main").transaction() as txn:
            assert [row["id"] for row in txn.table("t").scan()] == [1]


def test_a_checkpoint_called_while_the_instance_closes_leaves_it_clean(tmp_path: Path) -> None:
    """Defect: `Instance.checkpoint()` of another thread that got the checkpoint lock after
    close()'s final checkpoint ran a checkpoint of its own: it wrote every header DIRTY again
    (and a checkpoint file) after the clean ones, so a close that reported a clean shutdown
    left databases that need the logs and recovery (a detached copy of the file was then
    refused as dirty), or it wrote into the files close() was releasing. A checkpoint asked
    for while the instance closes is now left to the final one."""
    stopping, resume = threading.Event(), threading.Event()

    def hook(event: IOEvent) -> None:
        if _writes_instance_stopped(event) and not stopping.is_set():
            # close(), its final checkpoint done, stops before releasing anything.
            stopping.set()
            resume.wait(30)

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    fill(instance.database("main", create=True), 50)
    errors: list[BaseException] = []

    def run(call) -> None:  # type: ignore[no-untyped-def]
        try:
            call()
        except BaseException as exc:  # reported below
            errors.append(exc)

    closer = threading.Thread(target=run, args=(instance.close,))
    closer.start()
    assert stopping.wait(30)
    other = threading.Thread(target=run, args=(instance.checkpoint,))
    other.start()
    other.join(5)
    resume.set()
    closer.join(30)
    assert not other.is_alive() and not closer.is_alive()
    assert errors == []
    assert header_of(tmp_path / "main.edb").state is DatabaseState.CLEAN
    with jetstore.open(tmp_path, **SMALL) as again:
        assert again.recovery is not None and not again.recovery.needed
        assert count(again.database("main")) == 50


@pytest.mark.parametrize(
    ("op", "suffix"),
    [("write", "main.edb.creating"), ("fsync", "main.edb.creating"), ("fsync_dir", "")],
)
def test_a_database_file_whose_creation_fails_after_its_record_fails_the_instance(
    tmp_path: Path, op: str, suffix: str
) -> None:
    """The CREATE record is durable before the file is made (recovery re-creates it). A
    failed write or sync of the new file left the instance serving without the database:
    after a failed directory sync every `create=True` logged one more CREATE record of the
    name and was refused (DatabaseDuplicate: "open it with create=False", which found no
    database). D9: a page file's write or sync failing fails the instance; reopening
    recovers the database from its record."""
    armed = {"on": False, "renamed": False}

    def hook(event: IOEvent) -> None:
        if not armed["on"]:
            return
        if event.op == "rename" and event.path.endswith("main.edb.creating"):
            armed["renamed"] = True
        if event.op == op and event.path.endswith(suffix) and (suffix or armed["renamed"]):
            armed["on"] = False
            raise OSError(5, "Input/output error")

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook))
    other = instance.database("other", create=True)
    armed["on"] = True
    with pytest.raises(JetError) as info:
        instance.database("main", create=True)
    assert info.value.code == -1022 and str(tmp_path) in str(info.value)
    assert instance.state is InstanceState.FAILED
    with pytest.raises(JetError):
        other.create_table("t", [("id", "int")], primary_key="id")
    instance.close()
    assert instance.registry.total() == 0
    with jetstore.open(tmp_path) as reopened:
        assert reopened.databases() == ["main", "other"]
        db = reopened.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")


def test_a_database_file_whose_close_fails_still_releases_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close(2) can report a failed write (EIO on a network file system); the descriptor is
    gone either way. That error stopped `close()` halfway: the instance stayed 'open' with
    its directory lock and event log held, and the directory could not be opened again."""
    instance = jetstore.open(tmp_path)
    db = instance.database("main", create=True)
    fill(db, 10)
    target = db.file._file.fd
    real_close = os.close

    def close(fd: int) -> None:
        real_close(fd)
        if fd == target:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "close", close)
    with pytest.raises(JetError) as info:
        instance.close()
    monkeypatch.undo()
    assert info.value.code == -1022 and "main.edb" in str(info.value)
    assert instance.state is InstanceState.CLOSED
    assert instance.registry.total() == 0
    with jetstore.open(tmp_path) as reopened:
        assert count(reopened.database("main")) == 10


def test_a_sync_failure_reported_to_a_roll_stops_a_checkpoint_of_the_same_file(
    tmp_path: Path,
) -> None:
    """fsyncgate: the kernel reports a failed writeback once, to whichever sync of the open
    file comes first. A roll's header sync that failed while a checkpoint's page writes
    waited for their own sync got the error meant for those pages; the checkpoint's sync
    then succeeded and wrote headers naming pages that may never have reached the disk.
    After one failed sync of an open file, no later sync of it may count as success."""
    in_sync, resume = threading.Event(), threading.Event()
    checkpointer = "checkpointer"

    def hook(event: IOEvent) -> None:
        if event.op != "fdatasync" or not event.path.endswith("main.edb") or not armed:
            return
        if threading.current_thread().name == checkpointer:
            if not in_sync.is_set():
                in_sync.set()
                resume.wait(10)
        else:  # the roll's header sync: the pages' writeback error is reported here
            raise OSError(5, "Input/output error")

    armed = False
    options = dict(SMALL, checkpoint_depth=1 << 30, checkpoint_interval=3600.0)
    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **options)
    db = instance.database("main", create=True)
    fill(db, 20)
    instance.checkpoint()
    before = header_of(tmp_path / "main.edb").checkpoint_position
    fill(db, 20, start=20)  # dirty pages for the next checkpoint
    outcome: list[object] = []

    def run_checkpoint() -> None:
        try:
            outcome.append(instance.checkpoint())
        except JetError as exc:
            outcome.append(exc)

    armed = True
    thread = threading.Thread(target=run_checkpoint, name=checkpointer)
    thread.start()
    try:
        assert in_sync.wait(10)
        generation = instance.log.current_generation
        with pytest.raises(JetError) as info:
            for i in range(1000, 1100):
                with db.transaction() as txn:
                    txn.table("t").insert({"id": i, "v": "x" * 3000})
        # The roll's own committer gets the header's error (D9); had the background
        # thread led that flush, the log's failure.
        assert info.value.code in (-1022, -510)
        assert instance.log.current_generation > generation
    finally:
        resume.set()
        thread.join(10)
    assert isinstance(outcome[0], JetError), outcome
    # Copy 0 may hold the failed roll's header (it names the old tree); neither names the
    # checkpoint's pages.
    data = (tmp_path / "main.edb").read_bytes()
    header, _problems = choose_db_header(data[:8192], data[8192:16384], path="main.edb")
    assert header.checkpoint_position == before
    instance.close()
    with jetstore.open(tmp_path) as reopened:
        assert count(reopened.database("main")) >= 40


def _wait_threads(target: int) -> int:
    deadline = time.monotonic() + 5
    while threading.active_count() > target and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


@pytest.mark.parametrize(
    "where",
    [
        "background thread join",
        "control socket thread join",
        "control socket stop",
        "final checkpoint",
        "database file close",
        "event log close",
        "directory lock release",
        "a file's closer",
    ],
)
def test_a_close_interrupted_anywhere_is_finished_by_the_next_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C during close() (a signal handler raising KeyboardInterrupt between two
    bytecodes) stopped the release where it landed: `close_owner` caught only Exception, the
    handles after it stayed open, a descriptor or the directory lock was held for good, and
    a second close() ran a final checkpoint on released files (InstanceUnavailable) or did
    nothing. Now the release goes on past the interrupt, which is raised at the end, and a
    second close() finishes whatever it left."""
    from jetstore.control.server import ControlServer, socket_path
    from jetstore.instance.events import EventLog
    from jetstore.io.files import File
    from jetstore.io.locking import DirectoryLock, is_locked
    from jetstore.pages.pagefile import DatabaseFile

    armed = [False]
    fired: list[bool] = []

    def hook(event: IOEvent) -> None:
        if armed[0] and not fired and event.op == "fdatasync" and event.path.endswith("main.edb"):
            fired.append(True)
            raise KeyboardInterrupt("Ctrl-C")

    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    fill(instance.database("main", create=True), 100)
    if where == "background thread join":
        fired = interrupt_once(
            monkeypatch,
            threading.Thread,
            "join",
            lambda thread, *_: thread.name == "jetstore-background",
        )
    elif where == "control socket thread join":
        # The socket file was left behind: the next opener took it for a dead process's.
        fired = interrupt_once(
            monkeypatch,
            threading.Thread,
            "join",
            lambda thread, *_: thread.name == "jetstore-control",
        )
    elif where == "control socket stop":
        # At its very entry: the instance had already let go of the server.
        fired = interrupt_once(monkeypatch, ControlServer, "stop")
    elif where == "final checkpoint":
        armed[0] = True
    elif where == "database file close":
        fired = interrupt_once(monkeypatch, DatabaseFile, "close")
    elif where == "event log close":
        fired = interrupt_once(monkeypatch, EventLog, "close")
    elif where == "directory lock release":
        fired = interrupt_once(monkeypatch, DirectoryLock, "release")
    else:  # the directory fsync's file, opened by the final checkpoint, closed last
        fired = interrupt_once(monkeypatch, File, "_close_fd")
    with pytest.raises(KeyboardInterrupt):
        instance.close()
    assert fired == [True]  # the interrupt was delivered where intended
    monkeypatch.undo()
    instance.close()
    assert instance.state.value == "closed"
    assert instance.counters()["handles"] == dict.fromkeys(
        ["file", "directory", "lock", "thread", "socket"], 0
    )
    assert instance.registry.total() == 0
    assert not is_locked(FileSystem(), str(tmp_path))
    assert not os.path.exists(socket_path(str(tmp_path)))
    assert _wait_threads(threads) == threads
    assert len(os.listdir("/proc/self/fd")) == fds
    with jetstore.open(tmp_path, **SMALL) as again:
        assert count(again.database("main")) == 100


@pytest.mark.parametrize("where", ["clean header", "detach record sync", "clean header twice"])
def test_a_detach_interrupted_after_it_began_writing_completes_or_fails_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C in `detach` once its clean header or its DETACH record was written (only a
    JetError was handled there) left the database attached and serving: its next commits
    were logged after its detach, and after a crash the instance no longer opened
    (AttachedDatabaseMismatch: the log holds changes for the id the database left). Then
    the interrupt failed the instance, even where the detach was known done: a clean header
    write it interrupted is made again, and the log writer completes a flush interrupted
    while it synced, so the DETACH record is durable. Such a detach now completes (the
    database is gone from the instance, which serves on) and the interrupt follows; one
    not known done (the header write interrupted again) still fails the instance, and the
    reopen recovers every acknowledged commit."""
    from jetstore.pages.pagefile import DatabaseFile

    armed = [False]
    fired: list[bool] = []

    def hook(event: IOEvent) -> None:
        if armed[0] and not fired and event.op == "fdatasync" and event.path.endswith(".log"):
            fired.append(True)
            raise KeyboardInterrupt("Ctrl-C")

    inst = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    db = inst.database("main", create=True)
    fill(db, 10)
    other = inst.database("other", create=True)
    fill(other, 5)
    if where.startswith("clean header"):
        write_header = DatabaseFile.write_header

        def interrupted(self: DatabaseFile, **fields):  # type: ignore[no-untyped-def]
            write_header(self, **fields)
            if fields.get("state") is DatabaseState.CLEAN and (
                not fired or where == "clean header twice"
            ):
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")

        monkeypatch.setattr(DatabaseFile, "write_header", interrupted)
    else:
        armed[0] = True
    with pytest.raises(KeyboardInterrupt):
        inst.detach("main")
    monkeypatch.undo()
    if where == "clean header twice":
        assert fired == [True, True]
        assert inst.state.value == "failed"
        with pytest.raises(JetError, match="detach of database 'main' was interrupted"):
            fill(db, 1, start=100)
    else:
        assert fired == [True]
        assert inst.state.value == "open" and inst.databases() == ["other"]
        assert db.file.closed
        assert db.file.header.state is DatabaseState.CLEAN
        fill(other, 1, start=100)  # the instance serves on
        names = [e["name"] for e in inst.events.recent(20)]
        assert "database_detached" in names and "instance_failed" not in names
    inst.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as again:
        # The detached file is still in the directory: clean, it joins at the open.
        assert count(again.database("main")) == 10
        assert count(again.database("other")) == (5 if where == "clean header twice" else 6)


@pytest.mark.parametrize("where", ["lock release", "transactions ended"])
def test_a_detach_interrupted_while_it_closes_the_file_leaves_it_closed_and_unlocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Ctrl-C while a detached database's file released its lock skipped the close of the
    file: it stayed open, and locked, until the instance closed, and the detached file could
    not be attached anywhere else meanwhile. So did one as the database's transactions were
    ended, once it had left the instance, before its file closed."""
    from jetstore.instance.database import Database
    from jetstore.io.locking import FileLock, file_lock_holder

    inst = jetstore.open(tmp_path / "a", **SMALL)
    try:
        fill(inst.database("main", create=True), 10)
        inst.database("other", create=True)
        if where == "lock release":
            fired = interrupt_once(monkeypatch, FileLock, "release")
        else:
            fired = interrupt_once(monkeypatch, Database, "close_transactions", after=True)
        with pytest.raises(KeyboardInterrupt):
            inst.detach("main")
        monkeypatch.undo()
        assert fired == [True]
        path = str(tmp_path / "a" / "main.edb")
        # (A created file's handle keeps the name it was created under, `main.edb.creating`.)
        assert [h for h in inst.registry.open_handles() if h.description.startswith(path)] == []
        assert file_lock_holder(FileSystem(), path) is None
        assert inst.databases() == ["other"]
        with jetstore.open(tmp_path / "b", **SMALL) as other:
            os.rename(path, tmp_path / "b" / "main.edb")
            assert count(other.attach(tmp_path / "b" / "main.edb")) == 10
    finally:
        inst.close()


def test_an_open_interrupted_while_the_control_socket_starts_leaves_no_socket_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C once the control socket was bound (its start handled only Exception) left
    the socket file in the directory after the failed open released everything else: the
    next opener took it for one left by a process that died."""
    from jetstore.control.server import ControlServer, socket_path

    bind = ControlServer._bind

    def interrupted(self: ControlServer) -> bool:
        bind(self)
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(ControlServer, "_bind", interrupted)
    threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
    with pytest.raises(KeyboardInterrupt):
        jetstore.open(tmp_path, **SMALL)
    monkeypatch.undo()
    assert not os.path.exists(socket_path(str(tmp_path)))
    assert _wait_threads(threads) == threads
    assert len(os.listdir("/proc/self/fd")) == fds
    with jetstore.open(tmp_path, **SMALL) as again:
        events = (tmp_path / "events.jsonl").read_text()
        assert "replaced a stale socket file" not in events
        assert again.counters()["state"] == "open"


def test_an_open_interrupted_as_the_control_socket_is_bound_leaves_no_socket_file(
    tmp_path: Path,
) -> None:
    """Ctrl-C as `bind` returned, before the socket file's inode was recorded: the closer
    did not know the file was ours and left it, for the next opener to take for a dead
    process's."""
    from jetstore.control.server import ControlServer, socket_path

    fired: list[bool] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if (
            event == "c_return"
            and not fired
            and frame.f_code is ControlServer._bind.__code__
            and getattr(arg, "__name__", "") == "bind"
        ):
            fired.append(True)
            raise KeyboardInterrupt("Ctrl-C")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            jetstore.open(tmp_path, **SMALL)
    finally:
        sys.setprofile(None)
    assert fired == [True]
    assert not os.path.exists(socket_path(str(tmp_path)))


def test_the_state_is_failed_as_soon_as_the_log_writer_failed(tmp_path: Path) -> None:
    """A flush interrupted twice (the sync, then its retry) fails the log writer for good,
    and the interrupt goes to the committer, not a JetError the instance records: the
    instance said OPEN (state, counters) until the next update asked the log. It says FAILED
    at once now, with the writer's failure and event 102."""
    armed = [0]

    def hook(event: IOEvent) -> None:
        if event.op == "fdatasync" and event.path.endswith("edb.log") and armed[0]:
            armed[0] -= 1
            raise KeyboardInterrupt("injected")

    inst = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    try:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")
        armed[0] = 2
        with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
            txn.table("t").insert({"id": 1})
        assert inst.log.failed is not None
        assert inst.state is InstanceState.FAILED
        assert inst.counters()["state"] == "failed"
        assert inst.failure is inst.log.failed
        assert [e["name"] for e in inst.events.recent()][-1] == "instance_failed"
    finally:
        inst.close()


def test_a_log_preparer_that_died_of_a_bug_is_named_by_the_commit_and_event_102(
    tmp_path: Path,
) -> None:
    # The commit that needed the next log file said "the log file preparer thread stopped",
    # and so did event 102: the cause was nowhere.
    armed = {"on": False}

    def hook(event: IOEvent) -> None:
        preparing = threading.current_thread().name == "jetstore-log-preparer"
        if armed["on"] and preparing and event.op == "write":
            raise ZeroDivisionError("injected bug")

    inst = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    try:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "bytes")], primary_key="id")
        assert inst.log.wait_prepared()
        armed["on"] = True
        with pytest.raises(JetError) as failed:
            for i in range(20):
                with db.transaction() as txn:
                    txn.table("t").insert({"id": i, "v": b"x" * 30_000})
        assert "injected bug" in str(failed.value)
        assert inst.state is InstanceState.FAILED
        event = [e for e in inst.events.recent() if e["name"] == "instance_failed"][-1]
        assert "ZeroDivisionError('injected bug')" in event["message"]
    finally:
        armed["on"] = False
        inst.close()


def test_two_threads_seeing_the_log_failed_at_once_record_it_once(tmp_path: Path) -> None:
    """Every look at `state` records a failure the log writer keeps (the application's
    threads, the background round): two that looked together both passed the OPEN check in
    `_fail` and both wrote event 102. The first one records it; the other says FAILED."""
    from typing import Any

    from jetstore.errors import LogWriteFail
    from jetstore.instance.instance import Instance

    inst = jetstore.open(tmp_path, control_socket=False, lazy_flush_interval=3600)
    paused, go = threading.Event(), threading.Event()
    code = Instance._fail.__code__

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        # Hold the first thread in `_fail` where it records the failure, until the second
        # one's look ended.
        if event == "line" and "self._failure = error" in _source_line(frame):
            paused.set()
            go.wait(5)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    def first() -> None:
        sys.settrace(tracer)
        try:
            inst.state  # noqa: B018 - the look records the failure
        finally:
            sys.settrace(None)

    try:
        inst.log._failed = LogWriteFail("injected")  # as a flush interrupted twice leaves it
        looker = threading.Thread(target=first)
        looker.start()
        assert paused.wait(5)
        assert inst.state is InstanceState.FAILED
        go.set()
        looker.join(5)
        failed = [e for e in inst.events.recent() if e["name"] == "instance_failed"]
        assert len(failed) == 1, failed
    finally:
        go.set()
        inst.close()


def _source_line(frame: FrameType) -> str:
    import linecache

    return linecache.getline(frame.f_code.co_filename, frame.f_lineno)


def test_the_failure_is_named_as_soon_as_the_log_writer_failed(tmp_path: Path) -> None:
    # `failure` said None after the log writer failed until something looked at `state`
    # (the background round does every `lazy_flush_interval`).
    inst = jetstore.open(tmp_path, control_socket=False, lazy_flush_interval=3600)
    try:
        inst.database("main", create=True)
        from jetstore.errors import LogWriteFail

        inst.log._failed = LogWriteFail("injected")  # as a flush interrupted twice leaves it
        assert inst.failure is inst.log.failed
        assert inst.state is InstanceState.FAILED
    finally:
        inst.close()
