"""The in-process backup session (`Instance.begin_backup`): what it copies, what it pins, what
it records and deletes, and that every way out leaves no handle behind."""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.backup.session import BackupKind, BackupSession
from jetstore.errors import (
    BackupAbortByServer,
    BackupInProgress,
    InvalidBackup,
    InvalidBackupSequence,
    JetError,
    LogFileCorrupt,
    MissingFullBackup,
    MissingLogFile,
    ReadVerifyFailure,
)
from jetstore.format.filenames import generation_log_name
from jetstore.instance.events import EVENTS

ROOT = Path(__file__).resolve().parents[2]


def _open(path: Path, **options: Any) -> jetstore.Instance:
    options.setdefault("log_file_size", 64 * 1024)
    return jetstore.open(path, **options)


def _load(inst: jetstore.Instance, first: int, count: int, *, width: int = 200) -> None:
    db = inst.database("main", create=True)
    if "kv" not in db.table_names():
        db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(first, first + count):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": f"{i}:" + "x" * width})


def _rows(inst: jetstore.Instance) -> dict[int, str]:
    db = inst.database("main")
    with db.transaction() as txn:
        return {r["k"]: r["v"] for r in txn.table("kv").scan()}


def _copy(session: BackupSession, dest: Path) -> list[str]:
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for file in session.files():
        with open(dest / file.name, "wb") as out:
            size = 0
            for chunk in session.read(file):
                out.write(chunk)
                size += len(chunk)
        assert size == file.size, file
        names.append(file.name)
    return names


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _handles(inst: jetstore.Instance) -> dict[str, int]:
    """Open handles by kind, once the log's next file is not being prepared (the preparer
    holds a handle of its own while it works, independently of any backup)."""
    assert inst.log.wait_prepared()
    return inst.registry.counts()


def _open_from_copies(target: Path, *sets: Path) -> jetstore.Instance:
    target.mkdir()
    for source in sets:
        for name in os.listdir(source):
            shutil.copy(source / name, target / name)
    return jetstore.open(target)


def test_full_backup_copies_a_consistent_image_and_the_logs_to_the_roll(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 300)
        baseline = _handles(inst)
        with inst.begin_backup("full") as session:
            names = _copy(session, tmp_path / "set")
            result = session.complete()
        assert names[0] == "main.edb"
        assert names[1:] == [
            generation_log_name(g) for g in range(result.generation_low, result.generation_high + 1)
        ]
        assert _handles(inst) == baseline
        counters = inst.counters()
        assert counters["backups_completed"] == 1
        assert counters["backup_sessions_active"] == 0
        assert counters["backup_bytes_streamed"] == result.bytes_streamed > 0
        expected = _rows(inst)
        header = inst.database("main").file.header
        assert header.last_full_backup.generation_low == result.generation_low
        assert header.last_full_backup.generation_high == result.generation_high
    finally:
        inst.close()
    restored = _open_from_copies(tmp_path / "restored", tmp_path / "set")
    try:
        assert _rows(restored) == expected
    finally:
        restored.close()


def test_image_stays_consistent_while_writers_and_checkpoints_run(tmp_path: Path) -> None:
    """Pages the image copies are pinned: commits and checkpoints during the copy (which free
    and reuse pages) must not change what the image reads."""
    inst = _open(tmp_path / "live", checkpoint_depth=64 * 1024)
    stop = threading.Event()
    acknowledged: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        db = inst.database("main")
        i = 10_000
        try:
            while not stop.is_set():
                with db.transaction() as txn:
                    table = txn.table("kv")
                    table.insert({"k": i, "v": "w" * 300})
                    table.delete(i - 10_000)  # frees pages of the old tree
                acknowledged.append(i)
                i += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        _load(inst, 0, 2000, width=300)
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            with inst.begin_backup("full") as session:
                dest = tmp_path / "set"
                dest.mkdir()
                for file in session.database_files():
                    with open(dest / file.name, "wb") as out:
                        for chunk in session.read(file):
                            out.write(chunk)
                            inst.checkpoint()  # free and reuse pages mid-copy
                # Everything acknowledged so far must be in the backup.
                before_roll = list(acknowledged)
                for file in session.log_files():
                    with open(dest / file.name, "wb") as out:
                        for chunk in session.read(file):
                            out.write(chunk)
                session.complete()
        finally:
            stop.set()
            thread.join()
        assert not errors
        assert len(before_roll) > 0
    finally:
        inst.close()
    restored = _open_from_copies(tmp_path / "restored", tmp_path / "set")
    try:
        rows = _rows(restored)
        for key in before_roll:
            assert key in rows
            assert key - 10_000 not in rows
    finally:
        restored.close()


def test_incremental_and_differential_chains_restore_to_the_live_state(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 100)
        with inst.begin_backup("full") as session:
            _copy(session, tmp_path / "full")
            session.complete()
        _load(inst, 100, 100)
        with inst.begin_backup("differential") as session:
            _copy(session, tmp_path / "diff")
            diff = session.complete()
        _load(inst, 200, 100)
        with inst.begin_backup("incremental") as session:
            _copy(session, tmp_path / "inc1")
            inc1 = session.complete()
        _load(inst, 300, 100)
        inst.checkpoint()  # the checkpoint moves past what the differential would need
        with inst.begin_backup("incremental") as session:
            _copy(session, tmp_path / "inc2")
            inc2 = session.complete()
        assert inc2.generation_low == inc1.generation_high + 1
        assert diff.truncated == []
        expected = _rows(inst)
        # The second incremental truncated what the differential would continue from.
        with pytest.raises(MissingLogFile, match="take a full backup"):
            inst.begin_backup("differential")
    finally:
        inst.close()
    restored = _open_from_copies(
        tmp_path / "r1", tmp_path / "full", tmp_path / "inc1", tmp_path / "inc2"
    )
    try:
        assert _rows(restored) == expected
    finally:
        restored.close()


def test_copy_backup_records_nothing_and_truncates_nothing(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 400)
        logs_before = sorted(
            n for n in os.listdir(inst.directory) if re.fullmatch(r"edb[0-9A-F]{8}\.log", n)
        )
        with inst.begin_backup("copy") as session:
            _copy(session, tmp_path / "set")
            result = session.complete()
        assert result.truncated == []
        header = inst.database("main").file.header
        assert header.last_full_backup.is_none
        logs_after = {
            n for n in os.listdir(inst.directory) if re.fullmatch(r"edb[0-9A-F]{8}\.log", n)
        }
        assert set(logs_before) <= logs_after
        with pytest.raises(MissingFullBackup):
            inst.begin_backup("incremental")
    finally:
        inst.close()


def test_full_backup_truncates_logs_below_the_checkpoint(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 600, width=600)
        archived = [g for g in range(1, inst.log.current_generation)]
        assert len(archived) > 3
        with inst.begin_backup("full") as session:
            _copy(session, tmp_path / "set")
            result = session.complete()
        assert result.truncated, "a full backup with the checkpoint far ahead deletes old logs"
        for generation in result.truncated:
            assert generation < result.generation_low
            assert not (Path(inst.directory) / generation_log_name(generation)).exists()
        removable = inst.removable_logs()
        assert removable["backed_up_through"] == result.generation_high
    finally:
        inst.close()
    # The instance still recovers and opens with what is left.
    with jetstore.open(tmp_path / "live") as again:
        assert len(_rows(again)) == 600


def test_one_backup_at_a_time_and_kinds_refused(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 10)
        with pytest.raises(MissingFullBackup):
            inst.begin_backup("incremental")
        with pytest.raises(jetstore.errors.InvalidParameter):
            inst.begin_backup("weekly")
        with inst.begin_backup("full") as session:
            with pytest.raises(BackupInProgress) as info:
                inst.begin_backup("copy")
            assert info.value.code == -505
        assert session.state == "aborted"
        inst.begin_backup("copy").abort()
    finally:
        inst.close()
    circular = _open(tmp_path / "circ", circular_logging=True)
    try:
        _load(circular, 0, 10)
        with pytest.raises(InvalidBackup) as refused:
            circular.begin_backup("incremental")
        assert refused.value.code == -526
        with pytest.raises(InvalidBackup):
            circular.begin_backup("differential")
    finally:
        circular.close()


def test_abort_and_context_exit_change_nothing_and_release_every_handle(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 400)
        baseline_handles = _handles(inst)
        baseline_fds = _fds()
        logs_before = sorted(os.listdir(inst.directory))
        for way_out in ("abort", "exit", "exception", "abandon", "incomplete"):
            session = inst.begin_backup("full")
            files = list(session.database_files())
            chunks = session.read(files[0])
            next(chunks)  # a file is open mid-stream
            assert inst.registry.total(session.owner) >= 1
            if way_out == "abort":
                session.abort("test")
            elif way_out == "exit":
                with session:
                    pass
            elif way_out == "exception":
                with pytest.raises(RuntimeError), session:
                    raise RuntimeError("boom")
            elif way_out == "abandon":
                chunks.close()
                session.abort()
            else:
                with pytest.raises(InvalidBackupSequence, match="not read to the end"):
                    session.complete()
                session.abort()
            assert session.state == "aborted"
            with pytest.raises((BackupAbortByServer, InvalidBackupSequence, StopIteration)):
                next(chunks)
            session.abort()  # idempotent
            assert _handles(inst) == baseline_handles, way_out
            assert _fds() == baseline_fds, way_out
        header = inst.database("main").file.header
        assert header.last_full_backup.is_none
        after = sorted(os.listdir(inst.directory))
        assert [n for n in logs_before if n.endswith(".log") and n not in after] == []
        assert inst.counters()["backups_aborted"] == 5
    finally:
        inst.close()


def test_instance_close_aborts_a_running_backup(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    _load(inst, 0, 100)
    session = inst.begin_backup("full")
    chunks = session.read(session.database_files()[0])
    next(chunks)
    inst.close()
    assert session.state == "aborted"
    with pytest.raises((BackupAbortByServer, InvalidBackupSequence)):
        next(chunks)
    assert inst.registry.total() == 0
    events = (Path(inst.directory) / "events.jsonl").read_text()
    assert '"backup_aborted"' in events and "closing" in events


def test_a_damaged_page_fails_the_backup_naming_it(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live", cache_size=16 * 8192)
    try:
        _load(inst, 0, 300)
        inst.checkpoint()
        db = inst.database("main")
        header = db.file.header
        victim = header.root_pgno
        with open(db.file.path, "r+b") as raw:
            raw.seek(victim * header.page_size + 100)
            byte = raw.read(1)
            raw.seek(victim * header.page_size + 100)
            raw.write(bytes([byte[0] ^ 0xFF]))
        baseline = _handles(inst)
        with pytest.raises(JetError) as info:
            session = inst.begin_backup("full")
            _copy(session, tmp_path / "set")
        assert isinstance(info.value, ReadVerifyFailure) or "page" in str(info.value)
        assert f"page {victim}" in str(info.value)
        assert _handles(inst) == baseline
        assert inst.backup_session is None
        assert db.file.header.last_full_backup.is_none
        assert inst.counters()["backups_failed"] == 1
    finally:
        inst.simulate_crash()


def test_a_damaged_log_frame_fails_the_backup_naming_its_position(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 300)
        session = inst.begin_backup("copy")
        for file in session.database_files():
            for _chunk in session.read(file):
                pass
        logs = session.log_files()
        victim = Path(inst.directory) / logs[0].name
        with open(victim, "r+b") as raw:
            raw.seek(4096 + 40)
            byte = raw.read(1)
            raw.seek(4096 + 40)
            raw.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(LogFileCorrupt) as info:
            for _chunk in session.read(logs[0]):
                pass
        assert logs[0].name in str(info.value)
        assert session.state == "failed"
        with pytest.raises(InvalidBackupSequence, match="failed"):
            session.complete()
    finally:
        inst.simulate_crash()


def test_circular_logging_keeps_what_a_running_backup_copies(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live", circular_logging=True, checkpoint_depth=64 * 1024)
    try:
        _load(inst, 0, 50)
        session = inst.begin_backup("full")
        first = session.first_generation
        assert first is not None
        _load(inst, 50, 1500)  # many rolls and checkpoints: circular deletion runs
        inst.checkpoint()
        assert (Path(inst.directory) / generation_log_name(first)).exists()
        _copy(session, tmp_path / "set")
        result = session.complete()
        assert result.truncated == []  # circular logging deletes by itself
        inst.checkpoint()
        inst.checkpoint()
        assert not (Path(inst.directory) / generation_log_name(first)).exists()
        expected = _rows(inst)
    finally:
        inst.close()
    restored = _open_from_copies(tmp_path / "restored", tmp_path / "set")
    try:
        assert _rows(restored) == expected
    finally:
        restored.close()


def test_every_event_is_documented() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    for event_id, (name, level) in EVENTS.items():
        assert f"| {event_id} | {name} | {level} |" in text, name


def _close_generation_lazily(inst: jetstore.Instance, first: int) -> int:
    """Lazy commits until one does not fit the current generation: the log's current
    generation then moves on in memory only (nothing flushed). Returns the next key."""
    db = inst.database("main")
    generation = inst.log.current_generation
    key = first
    while inst.log.current_generation == generation:
        txn = db.transaction()
        txn.table("kv").insert({"k": key, "v": f"{key}:" + "y" * 9_000})
        txn.commit(lazy=True)
        key += 1
    assert inst.log.durable_position.generation == generation
    return key


def test_incremental_after_a_lazy_commit_closed_the_generation(tmp_path: Path) -> None:
    # The generation before the log's current one may still be edb.log (the roll is in
    # memory only): an incremental or differential backup must not call it gone.
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 50)
        with inst.begin_backup("full") as session:
            _copy(session, tmp_path / "full")
            session.complete()
        key = _close_generation_lazily(inst, 50)
        with inst.begin_backup("incremental") as session:
            _copy(session, tmp_path / "inc")
            session.complete()
        key = _close_generation_lazily(inst, key)
        with inst.begin_backup("differential") as session:
            _copy(session, tmp_path / "diff")
            session.complete()
        expected = _rows(inst)
    finally:
        inst.close()
    for name, chain in (("r1", ("full", "inc")), ("r2", ("full", "diff"))):
        restored = _open_from_copies(tmp_path / name, *(tmp_path / c for c in chain))
        try:
            rows = _rows(restored)
        finally:
            restored.close()
        if name == "r2":
            assert rows == expected
        else:
            assert set(rows) < set(expected) and all(expected[k] == v for k, v in rows.items())


def test_a_close_while_the_backup_starts_leaves_no_handle_and_no_running_session(
    tmp_path: Path,
) -> None:
    # Another thread closes the instance while `begin_backup` opens the database image:
    # the close aborted the session, then the start opened the image under the ended
    # session's owner (a descriptor nobody closed) and marked the session running again.
    from jetstore.io.files import FileSystem, IOEvent

    closer: list[threading.Thread] = []
    armed = threading.Event()
    live = tmp_path / "live"

    def hook(event: IOEvent) -> None:
        if armed.is_set() and event.op == "open" and event.path.endswith("main.edb"):
            armed.clear()
            thread = threading.Thread(target=inst.close)
            closer.append(thread)
            thread.start()
            thread.join(1.0)  # the old code let the close finish here

    inst = _open(live, filesystem=FileSystem(hook=hook))
    fds = _fds()
    _load(inst, 0, 50)
    armed.set()
    try:
        session = inst.begin_backup("full")
    except BackupAbortByServer:
        session = None
    assert closer, "the image was not opened"
    closer[0].join(30)
    assert not closer[0].is_alive()
    assert inst.state.value == "closed"
    if session is not None:
        assert session.state == "aborted"
        with pytest.raises((BackupAbortByServer, InvalidBackupSequence)):
            next(session.read(session.database_files()[0]))
    assert inst.registry.counts() == {k: 0 for k in inst.registry.counts()}
    assert _fds() <= fds


def test_a_session_aborted_before_it_starts_refuses_to_start(tmp_path: Path) -> None:
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 20)
        baseline = _handles(inst)
        session = BackupSession(inst, BackupKind.FULL)
        inst.backup_started(session)
        session.abort("test")
        with pytest.raises(BackupAbortByServer, match="before it started"):
            session._start()
        assert inst.backup_session is None
        assert _handles(inst) == baseline
        assert inst.database("main").file.pins == 0
    finally:
        inst.close()


def test_a_backup_ended_by_the_instance_closing_says_so_at_its_next_call(tmp_path: Path) -> None:
    # It used to say only "backup N is aborted", and to start a new backup: on a closed
    # instance. The reason the event gave is in the error now, and the way out fits.
    inst = _open(tmp_path / "live")
    _load(inst, 0, 20)
    session = inst.begin_backup("full")
    chunks = session.read(session.database_files()[0])
    next(chunks)
    inst.close()
    with pytest.raises(InvalidBackupSequence, match="the instance is closing") as info:
        session.log_files()
    assert "once the instance is open again" in (info.value.hint or "")
    with pytest.raises(BackupAbortByServer, match="the instance is closing"):
        next(chunks)


def _wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _drop_a_session_mid_stream(inst: jetstore.Instance, *, cycle: bool = False) -> tuple[int, int]:
    """Start a full backup, open its first file mid-stream, drop every reference to it
    (without complete() or abort()); returns its id and first generation. `cycle`: the
    session sits in a reference cycle, so only the cyclic collector frees it."""
    session = inst.begin_backup("full")
    chunks = session.read(session.database_files()[0])
    next(chunks)
    assert inst.registry.total(session.owner) >= 1
    assert inst.database("main").file.pins == 1
    if cycle:
        session.progress = lambda _file, _done, keep=session: None  # session -> itself
    ident, first = session.id, session.first_generation
    assert first is not None
    del chunks, session
    gc.collect()
    return ident, first


def test_a_dropped_session_is_released_and_the_next_backup_runs(tmp_path: Path) -> None:
    """A session dropped without complete() or abort() used to keep its pins, its handles
    and its logs until the instance closed, and every later backup got BackupInProgress."""
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 300)
        baseline_handles = _handles(inst)
        for cycle in (False, True):
            # Released by the background thread (woken by the finalizer) or by the next
            # backup's start, whichever comes first; either warns before the start returns.
            aborted = inst.counters()["backups_aborted"]
            with pytest.warns(ResourceWarning, match="backup .* dropped") as caught:
                ident, _first = _drop_a_session_mid_stream(inst, cycle=cycle)
                session = inst.begin_backup("full")  # not BackupInProgress
                assert _wait_for(lambda n=aborted + 1: inst.counters()["backups_aborted"] == n)
            assert f"backup {ident} " in str(caught[0].message)
            _copy(session, tmp_path / f"set-{cycle}")
            session.complete()
            assert inst.database("main").file.pins == 0
            assert _handles(inst) == baseline_handles
        assert inst.counters()["backups_aborted"] == 2
        events = [
            json.loads(line)
            for line in (Path(inst.directory) / "events.jsonl").read_text().splitlines()
        ]
        dropped = [e for e in events if e["name"] == "backup_not_ended"]
        assert [e["id"] for e in dropped] == [154, 154]
        assert "without complete() or abort()" in dropped[0]["message"]
        assert EVENTS[154] == ("backup_not_ended", "warning")
    finally:
        inst.close()
    restored = _open_from_copies(tmp_path / "restored", tmp_path / "set-True")
    try:
        assert len(_rows(restored)) == 300
    finally:
        restored.close()


def test_the_background_round_releases_a_dropped_session(tmp_path: Path) -> None:
    """With no later backup to notice it, the background thread releases the dropped
    session: its pins and handles go, and circular logging deletes the logs it kept."""
    inst = _open(
        tmp_path / "live",
        circular_logging=True,
        checkpoint_depth=64 * 1024,
        lazy_flush_interval=0.05,
    )
    try:
        _load(inst, 0, 50)
        baseline_handles = _handles(inst)
        with pytest.warns(ResourceWarning):
            _ident, first = _drop_a_session_mid_stream(inst)
            assert _wait_for(lambda: inst.counters()["backups_aborted"] == 1)
        assert inst.backup_session is None
        assert inst.database("main").file.pins == 0
        assert _handles(inst) == baseline_handles
        _load(inst, 50, 1500)  # rolls and checkpoints: circular deletion runs
        inst.checkpoint()
        inst.checkpoint()
        assert min(_generations(inst)) > first
    finally:
        inst.close()


def test_a_dropped_session_does_not_refuse_detach_or_close(tmp_path: Path) -> None:
    # No timed background round: only the finalizer's wake-up races the detach and close.
    inst = _open(tmp_path / "live", lazy_flush_interval=3600)
    try:
        _load(inst, 0, 50)
        with pytest.warns(ResourceWarning):
            _drop_a_session_mid_stream(inst)
            path = inst.detach("main")  # not BackupInProgress
            assert _wait_for(lambda: inst.counters()["backups_aborted"] == 1)
        assert inst.counters()["backup_sessions_active"] == 0
        inst.attach(path)
        with pytest.warns(ResourceWarning):
            _drop_a_session_mid_stream(inst)
            inst.close()  # releases it if the background did not, then closes as usual
    finally:
        inst.close()
    assert inst.registry.total() == 0
    reopened = _open(tmp_path / "live")
    try:
        assert len(_rows(reopened)) == 50
    finally:
        reopened.close()


def _generations(inst: jetstore.Instance) -> list[int]:
    return [
        int(name[3:11], 16)
        for name in os.listdir(inst.directory)
        if re.fullmatch(r"edb[0-9A-F]{8}\.log", name)
    ]


def test_an_abort_interrupted_while_it_releases_still_ends_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while an ending session released its pins (or closed its files) stopped the
    release there, after the session was already marked ended: the pins stayed (their pages
    never reused), and the instance kept it as its running backup, so every later backup
    was refused (BackupInProgress) until the instance was reopened."""
    from jetstore.pages.pagefile import DatabaseFile

    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 100)
        baseline_handles, baseline_fds = _handles(inst), _fds()
        session = inst.begin_backup("full")
        chunks = session.read(session.database_files()[0])
        next(chunks)
        unpin = DatabaseFile.unpin
        fired: list[bool] = []

        def interrupted_unpin(self: DatabaseFile, token: int) -> None:
            if not fired:
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")
            unpin(self, token)

        monkeypatch.setattr(DatabaseFile, "unpin", interrupted_unpin)
        with pytest.raises(KeyboardInterrupt):
            session.abort("test")
        monkeypatch.undo()
        assert fired == [True]
        assert session.state == "aborted"
        assert inst.database("main").file.pins == 0
        assert _handles(inst) == baseline_handles
        assert _fds() == baseline_fds
        assert inst.counters()["backup_sessions_active"] == 0
        inst.begin_backup("full").abort()  # the next backup is not refused
        assert inst.counters()["backups_aborted"] == 2
    finally:
        inst.close()


def test_an_interrupt_right_after_a_backup_is_registered_leaves_no_running_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`begin_backup` registered the session as the instance's running backup before its
    `try`: Ctrl-C landing between the two left a session nobody held, never ended, and
    every later backup was refused (BackupInProgress) until the instance was reopened."""
    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 20)
        baseline = _handles(inst)
        started = jetstore.Instance.backup_started

        def interrupted(self: jetstore.Instance, session: BackupSession) -> None:
            started(self, session)
            raise KeyboardInterrupt("Ctrl-C")

        monkeypatch.setattr(jetstore.Instance, "backup_started", interrupted)
        with pytest.raises(KeyboardInterrupt):
            inst.begin_backup("full")
        monkeypatch.undo()
        assert inst.backup_session is None
        assert _handles(inst) == baseline
        inst.begin_backup("full").abort()  # not refused
        assert inst.database("main").file.pins == 0
    finally:
        inst.close()


def test_a_second_complete_does_not_deny_what_the_first_recorded(tmp_path: Path) -> None:
    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 20)
        with inst.begin_backup("full") as session:
            _copy(session, tmp_path / "set")
            session.complete()
            with pytest.raises(InvalidBackupSequence) as again:
                session.complete()
        assert "completed" in str(again.value)
        assert "nothing was recorded" not in str(again.value)
        assert not inst.database("main").file.header.last_full_backup.is_none


@pytest.mark.parametrize("where", ["deleting logs", "writing the second header"])
def test_a_ctrl_c_while_complete_records_the_backup_ends_it_for_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A Ctrl-C inside `complete()` once headers named the backup (in the log truncation, or
    between two databases' history writes) left the session running, and the `with` block's
    exit aborted it: counted aborted, announced "nothing was recorded and no log was
    deleted" (event 152) while the headers named the backup. Cut in the truncation it is
    completed (recorded); cut in a header's history write, and again in the write made once
    more, it failed, saying which headers hold it."""
    from jetstore.instance.instance import Instance
    from jetstore.pages.pagefile import DatabaseFile

    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 40)
        other = inst.database("other", create=True)
        other.create_table("t", [("k", "int")], primary_key="k")
        if where == "deleting logs":

            def interrupted(self: Instance, first_copied: int) -> list[int]:
                raise KeyboardInterrupt

            monkeypatch.setattr(Instance, "truncate_logs_after_backup", interrupted)
        else:
            write_header = DatabaseFile.write_header

            def interrupted_header(self: DatabaseFile, **changes: Any) -> Any:
                if self is other.file and "last_full_backup" in changes:
                    raise KeyboardInterrupt
                return write_header(self, **changes)

            monkeypatch.setattr(DatabaseFile, "write_header", interrupted_header)
        baseline, fds = _handles(inst), _fds()
        with pytest.raises(KeyboardInterrupt):
            inst.backup(tmp_path / "set")
        monkeypatch.undo()
        names = [e["name"] for e in inst.events.recent(50)]
        assert "backup_aborted" not in names
        counters = inst.counters()
        assert counters["backup_sessions_active"] == 0 and counters["backups_aborted"] == 0
        assert not inst.database("main").file.header.last_full_backup.is_none
        if where == "deleting logs":
            assert counters["backups_completed"] == 1 and "backup_completed" in names
        else:
            assert counters["backups_failed"] == 1
            [failed] = [e for e in inst.events.recent(50) if e["name"] == "backup_failed"]
            assert (
                "interrupted (KeyboardInterrupt) while it was being recorded" in (failed["message"])
            )
            assert "the header(s) of 'main' record it" in failed["message"]
            assert "nothing was recorded" not in failed["message"]
        assert _handles(inst) == baseline and _fds() == fds
        assert jetstore.verify_backup(tmp_path / "set").ok
        inst.backup(tmp_path / "again")  # no session left running


@pytest.mark.parametrize("where", ["before the write", "in its sync", "as the write returns"])
def test_a_ctrl_c_during_a_history_header_write_completes_the_backup_then_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A Ctrl-C while `complete()` wrote a database's header history (its sync is most of
    the write) failed the backup, "whether the header of 'other' records it is unknown", while
    the instance served on with an in-memory header that did not hold what the first copy on
    disk might. The write is made again, as the log writer does for an interrupted flush: the
    backup completes, every header records it, and the interrupt reaches the caller after."""
    from interrupting import interrupt_once
    from jetstore.io.files import File
    from jetstore.pages.pagefile import DatabaseFile

    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 40)
        other = inst.database("other", create=True)
        other.create_table("t", [("k", "int")], primary_key="k")

        write_header = DatabaseFile.write_header
        in_history: list[bool] = []
        fired: list[bool] = []

        def patched(self: DatabaseFile, **changes: Any) -> Any:
            if self is not other.file or "last_full_backup" not in changes or in_history:
                return write_header(self, **changes)
            in_history.append(True)
            if where == "before the write":
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")
            header = write_header(self, **changes)
            if where == "as the write returns":
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")
            return header

        monkeypatch.setattr(DatabaseFile, "write_header", patched)
        if where == "in its sync":
            fired = interrupt_once(
                monkeypatch,
                File,
                "fdatasync",
                lambda f: bool(in_history) and f.path == other.file.path,
            )
        with pytest.raises(KeyboardInterrupt):
            inst.backup(tmp_path / "set")
        monkeypatch.undo()
        assert fired == [True]
        counters = inst.counters()
        assert counters["backups_completed"] == 1 and counters["backups_failed"] == 0
        assert counters["backup_sessions_active"] == 0
        names = [e["name"] for e in inst.events.recent(50)]
        assert "backup_completed" in names and "backup_failed" not in names
        for db in (inst.database("main"), other):
            assert not db.file.header.last_full_backup.is_none
        assert inst.state.value == "open"
        _load(inst, 40, 5)  # serving
        assert jetstore.verify_backup(tmp_path / "set").ok
        inst.backup(tmp_path / "incremental", kind="incremental")  # follows the full one
    with _open(tmp_path / "i") as again:
        # What the headers hold on disk, not only in memory.
        for name in ("main", "other"):
            assert not again.database(name).file.header.last_full_backup.is_none


def test_a_ctrl_c_between_two_history_writes_completes_the_backup_then_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C landing between two databases' history writes (none half done) escaped
    `complete()` with the session still running: the `with` block's exit aborted it, event
    152 said "nothing was recorded" while the first header named the backup. The loop goes
    on, the backup completes, and the interrupt reaches the caller after."""
    from jetstore.pages.pagefile import DatabaseFile

    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 40)
        other = inst.database("other", create=True)
        other.create_table("t", [("k", "int")], primary_key="k")
        main = inst.database("main")
        closed = DatabaseFile.closed
        fired: list[bool] = []

        def interrupted(self: DatabaseFile) -> bool:
            # Asked before each history write: once the first header records the backup.
            if self is other.file and not fired and not main.file.header.last_full_backup.is_none:
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")
            return bool(closed.fget(self))  # type: ignore[attr-defined]

        monkeypatch.setattr(DatabaseFile, "closed", property(interrupted))
        with pytest.raises(KeyboardInterrupt):
            inst.backup(tmp_path / "set")
        monkeypatch.undo()
        assert fired == [True]
        counters = inst.counters()
        assert counters["backups_completed"] == 1 and counters["backups_aborted"] == 0
        names = [e["name"] for e in inst.events.recent(50)]
        assert "backup_completed" in names and "backup_aborted" not in names
        for db in (main, other):
            assert not db.file.header.last_full_backup.is_none
        inst.backup(tmp_path / "incremental", kind="incremental")


def test_a_ctrl_c_during_the_backups_log_roll_leaves_the_instance_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C during the roll that ends a backup's logs (`log_files`: a flush that renames,
    which the log writer cannot make again as it does a flush within a generation) failed
    the log writer, and with it the whole instance: every later update was refused until a
    reopen. The roll runs out of the interrupt's reach (a real SIGINT to the main thread,
    sent as the roll archives edb.log); it completes, the instance serves on, and the
    interrupt reaches the caller once the log list is taken."""
    from interrupting import ctrl_c_to_the_main_thread
    from jetstore.format.filenames import CURRENT_LOG
    from jetstore.io.files import FileSystem

    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 60)
        session = inst.begin_backup("full")
        dest = tmp_path / "set"
        dest.mkdir()
        for file in session.database_files():
            (dest / file.name).write_bytes(b"".join(session.read(file)))
        with (
            ctrl_c_to_the_main_thread(
                monkeypatch,
                FileSystem,
                "rename",
                lambda fs, source, target: os.path.basename(source) == CURRENT_LOG,
            ) as sent,
            pytest.raises(KeyboardInterrupt),
        ):
            session.log_files()
        assert sent == [True]
        assert inst.log.failed is None and inst.state.value == "open"
        _load(inst, 60, 5)  # serving
        for file in session.log_files():  # the roll was made: the list stands
            (dest / file.name).write_bytes(b"".join(session.read(file)))
        result = session.complete()
        assert result.generation_high == session.last_generation
        assert inst.counters()["backups_completed"] == 1
    finally:
        inst.close()
    restored = _open_from_copies(tmp_path / "restored", dest)
    try:
        assert len(_rows(restored)) == 60
    finally:
        restored.close()


def test_a_ctrl_c_in_a_backups_first_checkpoint_leaves_the_instance_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C (a real SIGINT to the main thread) during the checkpoint a full backup
    starts with failed the whole instance (an interrupted checkpoint cannot be finished).
    It runs out of the interrupt's reach: it completes, the backup is not started, the
    interrupt reaches the caller, and the instance serves on."""
    from interrupting import ctrl_c_to_the_main_thread
    from jetstore.pages.pagefile import DatabaseFile

    inst = _open(tmp_path / "live")
    try:
        _load(inst, 0, 30)
        checkpoints = inst.checkpoints
        with (
            ctrl_c_to_the_main_thread(
                monkeypatch,
                DatabaseFile,
                "write_checkpoint_pages",
                # Not a checkpoint of the background thread's own.
                lambda *args: threading.current_thread().name != "jetstore-background",
            ) as sent,
            pytest.raises(KeyboardInterrupt),
        ):
            inst.begin_backup("full")
        assert sent == [True]
        assert inst.checkpoints == checkpoints + 1  # it completed
        assert inst.state.value == "open" and inst.log.failed is None
        assert inst.backup_session is None and inst.database("main").file.pins == 0
        _load(inst, 30, 5)  # serving
        inst.backup(tmp_path / "set")
    finally:
        inst.close()
    assert jetstore.verify_backup(tmp_path / "set").ok


@pytest.mark.parametrize("after", [False, True], ids=["in the pin", "as the pin returns"])
def test_a_ctrl_c_as_an_image_is_pinned_leaves_no_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    """A Ctrl-C as `DatabaseFile.pin` returned (its token not yet in the session's images)
    left the pin for the life of the instance: the pages it held were never reused again."""
    from interrupting import interrupt_once
    from jetstore.pages.pagefile import DatabaseFile

    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 20)
        db = inst.database("main")
        fired = interrupt_once(monkeypatch, DatabaseFile, "pin", after=after)
        with pytest.raises(KeyboardInterrupt):
            inst.begin_backup("full")
        assert fired == [True]
        assert db.file.pins == 0
        assert inst.counters()["backup_sessions_active"] == 0
        with inst.begin_backup("full") as session:
            assert db.file.pins == 1
            session.abort()
        assert db.file.pins == 0


def test_an_incremental_follows_a_full_backup_during_which_a_database_was_created(
    tmp_path: Path,
) -> None:
    """A database created while a full backup ran is in that backup (its creation record is
    in the backup's logs: restoring the set recreates it), but only the databases attached
    at the start had the backup recorded: the next incremental was refused with
    MissingFullBackup for the new one, "take a full backup first", though one was taken."""
    from jetstore.backup.restore import restore

    with _open(tmp_path / "i") as inst:
        _load(inst, 0, 30)
        created: list[jetstore.Database] = []

        def create_midway(done: int, total: int, name: str) -> None:
            if name == "main.edb" and not created:  # the images stream: the start is past
                new = inst.database("new", create=True)
                new.create_table("t", [("k", "int")], primary_key="k")
                with new.transaction() as txn:
                    txn.table("t").insert({"k": 1})
                created.append(new)

        inst.backup(tmp_path / "full", progress=create_midway)
        [new] = created
        full = inst.database("main").file.header.last_full_backup
        recorded = new.file.header.last_full_backup
        assert (recorded.generation_low, recorded.generation_high) == (
            full.generation_low,
            full.generation_high,
        )
        with new.transaction() as txn:
            txn.table("t").insert({"k": 2})
        _load(inst, 30, 10)
        inst.backup(tmp_path / "inc", "incremental")
        expected = _rows(inst)
    restore([str(tmp_path / "full"), str(tmp_path / "inc")], str(tmp_path / "r"))
    with _open(tmp_path / "r") as restored:
        assert _rows(restored) == expected
        with restored.database("new").transaction() as txn:
            assert sorted(r["k"] for r in txn.table("t").scan()) == [1, 2]
