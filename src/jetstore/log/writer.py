"""The log writer: generations, preallocated files, crash-safe rolls and group commit.

Lifecycle of the files (all in the instance directory):

    edbtmp.log  --prepared ahead by a background thread: created at full size, zero-filled, synced
        |        roll: write the new generation's header, sync,
        |              rename edb.log -> edbXXXXXXXX.log, rename edbtmp.log -> edb.log,
        v              fsync the directory, then start preparing the next edbtmp.log
    edb.log     --frames are appended; a flush overwrites preallocated bytes and fdatasyncs

Invariants:
- Positions are assigned at `append` time, under the writer's lock, in log order; a record
  that does not fit in the current generation continues in the next one (FIRST ... LAST).
- Group commit (leader/follower): the first waiter that finds no flush under way becomes the
  leader, takes every appended byte, writes and syncs it with no lock held, and wakes the
  waiters it covered plus one it did not (the next leader). Appends continue while the leader
  does I/O; a waiter is woken only when a flush covers it or it is to lead the next one.
  When the last flush woke several committers, the next leader yields the GIL once before
  taking its batch, so that they join it (larger groups when Python, not the disk, is the
  bottleneck).
- A generation is rolled only after its data is synced, so only the newest generation can end
  with a torn frame.
- An exception that interrupts `wait_durable` at any line (KeyboardInterrupt from a signal
  handler) never strands other committers: before its batch is taken it leaves the queue,
  after the batch was written it finishes the flush's bookkeeping, in between it fails the
  writer (sticky, below).
- A failed write, sync or roll makes the writer fail for good (sticky, like SQLite's pager ERROR
  state): nothing appended after it is ever acknowledged; the instance must be reopened, and
  recovery replays what reached the disk.
- `edb.log` deleted, moved or replaced while open (its descriptor still takes writes, which
  vanish at close) fails the writer the same way: checked before every roll archives it and
  at every checkpoint (`check_current_file`), never per commit.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import threading
import time
from _thread import LockType
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google_crc32c

from jetstore.errors import (
    DiskFull,
    InvalidParameter,
    JetError,
    LogDiskFull,
    LogSequenceEnd,
    LogWriteFail,
)
from jetstore.format.common import Signature, now_us
from jetstore.format.filenames import (
    CURRENT_LOG,
    RESERVE_LOG_COUNT,
    TEMP_LOG,
    generation_log_name,
    reserve_log_name,
)
from jetstore.format.logframe import (
    FRAME_ALIGN,
    FRAME_HEADER_SIZE,
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    accumulate,
    encode_frame_header,
    encode_frame_parts,
    frame_padding,
    max_payload_for,
)
from jetstore.format.logheader import (
    LOG_HEADER_SIZE,
    LogFileFlags,
    LogFileHeader,
    encode_log_header,
)
from jetstore.format.positions import LogPosition
from jetstore.io.files import File, FileSystem
from jetstore.io.threads import ManagedThread

MIN_LOG_FILE_SIZE = 64 * 1024
MAX_LOG_FILE_SIZE = 1024 * 1024 * 1024
DATA_START = LOG_HEADER_SIZE
_ZERO_CHUNK = bytes(1024 * 1024)
_allocate_lock = _thread.allocate_lock
_sleep = time.sleep
_crc_extend = google_crc32c.extend
# `LogPosition(generation, offset)` without the NamedTuple's Python-level `__new__`.
_new_position = tuple.__new__
_ALIGN_DOWN = -FRAME_ALIGN
_ALIGN_LOW = FRAME_ALIGN - 1
# `frame_padding(n)` by n mod FRAME_ALIGN (the header is a multiple of FRAME_ALIGN).
_PADDING = tuple(frame_padding(n) for n in range(FRAME_ALIGN))
_NO_CLOSED: dict[int, tuple[int, int]] = {}
_NO_WAITERS: list[LockType] = []


@dataclass(frozen=True)
class LogTail:
    """Where an existing log stream ends: what a new generation's header must link to."""

    generation: int
    created_time: int
    end_offset: int
    checksum: int
    is_current_file: bool  # the newest generation is still named edb.log


@dataclass(frozen=True)
class LogConfig:
    directory: str
    log_file_size: int
    page_size: int
    circular_logging: bool
    signature: Signature

    def validate(self) -> None:
        size = self.log_file_size
        if size < MIN_LOG_FILE_SIZE or size > MAX_LOG_FILE_SIZE or size % 4096:
            raise InvalidParameter(
                f"log_file_size {size} is invalid",
                hint=f"use a multiple of 4096 between {MIN_LOG_FILE_SIZE} and "
                f"{MAX_LOG_FILE_SIZE} bytes",
            )


#: Called once per flush that rolled, with the first and the last generation it started, after
#: every byte of the flush is synced and before any commit in it is acknowledged.
RollCallback = Callable[[int, int], None]


class _DurableFlushFailure(Exception):
    """`on_roll` failed after the flush's records were synced: its commits are durable (the
    next open replays them) although none is acknowledged. The committers of that flush get
    `error`: the cause's own class (a database header that could not be written is not a log
    write failure) and a message that says so; later appends get the sticky LogWriteFail."""

    def __init__(self, original: JetError) -> None:
        super().__init__(str(original))
        self.original = original
        detail = (original.detail or original.description).rstrip(". ")
        self.error: JetError = type(original)(
            f"{detail}; the log records of the commits this flush was for had reached the "
            "disk: they are durable (the next open replays them) though not acknowledged, "
            "and the instance writes no more log",
            hint=f"{original.hint.rstrip('. ') + '; then ' if original.hint else ''}close and "
            "reopen the instance: recovery replays the log, those commits included",
            path=original.path,
        )


class LogWriter:
    """Appends records to the log stream and makes them durable, many committers per sync."""

    def __init__(self, fs: FileSystem, config: LogConfig, *, owner: str) -> None:
        config.validate()
        self._fs = fs
        self._config = config
        self._owner = owner
        self._lock = threading.Lock()
        self._file_size = config.log_file_size
        # Logical (append) state, guarded by _lock.
        self._gen = 0
        self._end = DATA_START
        self._gen_checksum = 0
        self._closed_gens: dict[int, tuple[int, int]] = {}
        # Each entry: [generation, offset, size, parts]; the parts are joined when written.
        self._pending: list[list[Any]] = []
        self._durable = LogPosition.MIN
        self._flushing = False
        # Callers blocked in `wait_durable` while a flush is under way: (target, a locked
        # lock the leader releases once). Guarded by _lock.
        self._waiters: list[tuple[LogPosition, LockType]] = []
        # The last flush woke other committers besides the next leader (see `wait_durable`).
        self._gather = False
        self._failed: JetError | None = None
        # Physical state, owned by whoever holds the flushing role.
        self._file: File | None = None
        self._file_gen = 0
        self._file_created = 0
        # Preparation of the next file, by a background thread.
        self._prepare_request = threading.Event()
        self._prepare_cond = threading.Condition()
        self._prepare_state = "idle"  # idle -> preparing -> ready -> idle (taken)
        self._prepared: File | None = None
        self._prepared_error: JetError | None = None
        self._prepared_reserve = False  # `_prepared` is a reserve log that took its place
        self._preparer: ManagedThread | None = None
        self.on_roll: RollCallback | None = None
        self.on_disk_full: Callable[[int], None] | None = None
        self.disk_full = False
        self.reserve_logs_used = 0
        # Counters.
        self.bytes_appended = 0
        self.records_appended = 0
        self.flushes = 0
        self.rolls = 0

    # ----------------------------------------------------------------- start / stop

    def start(self, tail: LogTail | None) -> None:
        """Open the stream: always begins a fresh generation after `tail` (or generation 1).

        Starting a new generation on every open means the previous newest file is never
        appended to again, so whatever lies beyond its valid end (a torn flush) can never be
        mistaken for data later: the new header records exactly where the old one ends.
        """
        self._preparer = ManagedThread(
            self._fs.registry,
            self._owner,
            "jetstore-log-preparer",
            self._prepare_loop,
            wake=self._prepare_request.set,
        )
        if tail is None:
            new_gen, prev_created, prev_end, prev_checksum = 1, 0, 0, 0
        else:
            if tail.generation >= 0xFFFFFFFF - 1:
                raise LogSequenceEnd(f"log generation {tail.generation:08X} is the last one")
            new_gen = tail.generation + 1
            prev_created, prev_end, prev_checksum = (
                tail.created_time,
                tail.end_offset,
                tail.checksum,
            )
        self._ensure_reserve_logs()
        self._file_gen = tail.generation if tail is not None else 0
        self._install_generation(
            new_gen,
            prev_created,
            prev_end,
            prev_checksum,
            archive_current=tail is not None and tail.is_current_file,
        )
        self._gen = new_gen
        self._end = DATA_START
        self._gen_checksum = 0
        self._durable = LogPosition(new_gen, DATA_START)

    def _ensure_reserve_logs(self) -> None:
        """Preallocate the reserve log files (ESE's res1/res2): space set aside so the engine
        can still reach a clean state when the log disk fills up."""
        created = False
        for index in range(1, RESERVE_LOG_COUNT + 1):
            path = os.path.join(self._config.directory, reserve_log_name(index))
            if self._fs.exists(path) and self._fs.size(path) == self._file_size:
                continue
            with self._fs.opened(path, owner=self._owner, create=True) as file:
                self._zero_fill(file)
            created = True
        if created:
            self._fs.fsync_directory(self._config.directory, owner=self._owner)

    def _zero_fill(self, file: File) -> None:
        file.truncate(0)
        offset = 0
        while offset < self._file_size:
            chunk = min(len(_ZERO_CHUNK), self._file_size - offset)
            file.pwrite(_ZERO_CHUNK[:chunk] if chunk < len(_ZERO_CHUNK) else _ZERO_CHUNK, offset)
            offset += chunk
        file.fdatasync()

    def close(self) -> None:
        """Flush what can be flushed, then release every handle (idempotent)."""
        try:
            if self._failed is None and self._file is not None:
                self.flush()
        finally:
            if self._preparer is not None:
                self._preparer.close()
                self._preparer = None
            if self._prepared is not None:
                self._prepared.close()
                self._prepared = None
            if self._file is not None:
                self._file.close()
                self._file = None

    # ----------------------------------------------------------------- state

    @property
    def end_position(self) -> LogPosition:
        with self._lock:
            return LogPosition(self._gen, self._end)

    @property
    def durable_position(self) -> LogPosition:
        return self._durable

    @property
    def current_generation(self) -> int:
        return self._gen

    @property
    def failed(self) -> JetError | None:
        return self._failed

    @property
    def signature(self) -> Signature:
        return self._config.signature

    @property
    def config(self) -> LogConfig:
        return self._config

    def _raise_failed(self) -> None:
        failed = self._failed
        assert failed is not None
        if isinstance(failed, LogDiskFull | LogWriteFail):
            raise type(failed)(failed.detail, hint=failed.hint, path=failed.path) from failed
        raise LogWriteFail(
            f"the log can no longer be written ({failed})",
            hint="the instance stopped logging after an I/O error; fix the cause, then close "
            "and reopen the instance (recovery replays what reached the disk)",
        ) from failed

    # ----------------------------------------------------------------- append

    def append(self, payload: bytes | bytearray) -> LogPosition:
        """Give `payload` its place in the log; returns the position just after it."""
        with self._lock:
            if self._failed is not None:
                self._raise_failed()
            gen = self._gen
            end = self._end
            length = len(payload)
            # `max_payload_for(space)`, inlined: the largest payload that fits what is left.
            if (
                0 < ((self._file_size - end) & _ALIGN_DOWN) - FRAME_HEADER_SIZE >= length
                and type(payload) is bytes
            ):
                # The common case, a record that fits the current generation: one FULL frame,
                # byte for byte what `_append_frames` would write.
                durable = self._durable
                header, crc = encode_frame_header(
                    gen,
                    end,
                    durable.offset if durable.generation == gen else DATA_START,
                    KIND_FULL,
                    payload,
                )
                padding = _PADDING[length & _ALIGN_LOW]
                size = FRAME_HEADER_SIZE + length + len(padding)
                pending = self._pending
                last = pending[-1] if pending else None
                try:
                    if last is not None and last[0] == gen and last[1] + last[2] == end:
                        last[2] += size
                        parts = last[3]
                    else:
                        parts = []
                        pending.append([gen, end, size, parts])
                    parts.append(header)
                    parts.append(payload)
                    if padding:
                        parts.append(padding)
                    # `accumulate`, inlined.
                    self._gen_checksum = _crc_extend(self._gen_checksum, crc.to_bytes(4, "little"))
                    end += size
                    self._end = end
                except BaseException as exc:
                    self._append_broken(exc)
                    raise
                self.bytes_appended += length
                self.records_appended += 1
                return _new_position(LogPosition, (gen, end))
            try:
                return self._append_frames(payload)
            except BaseException as exc:
                self._append_broken(exc)
                raise

    def _append_broken(self, exc: BaseException) -> None:
        """An append raised after it may have changed the pending bytes, the end or the
        generation's running checksum (KeyboardInterrupt from a signal handler between two
        updates, or `LogSequenceEnd` between two frames of a record): they may disagree, and
        flushing on would write a frame the chain link does not count (recovery would refuse
        the log). The writer fails instead; every record appended before is intact. Called
        with `_lock` held."""
        if self._failed is None:
            self._failed = (
                exc
                if isinstance(exc, JetError)
                else LogWriteFail(
                    f"appending a log record was interrupted ({type(exc).__name__}) halfway; "
                    "the log takes no more records",
                    hint="close and reopen the instance: recovery replays every record that "
                    "reached the disk (every acknowledged commit is among them)",
                )
            )

    def _append_frames(self, payload: bytes | bytearray) -> LogPosition:
        """`append` of a record that does not fit the rest of the current generation: FIRST,
        MIDDLE ... LAST frames across generations (or of a bytearray record). Called with
        `_lock` held.

        Each frame's piece is a view of `payload`, not a copy: a record of hundreds of MB
        used to be held twice until its flush (the record, and its pieces). The flush joins
        one generation's parts at a time."""
        done = 0
        total = len(payload)
        view = memoryview(payload)
        file_size = self._file_size
        while True:
            space = file_size - self._end
            capacity = max_payload_for(space)
            if capacity < 1:
                self._close_generation()
                continue
            take = min(capacity, total - done)
            last = done + take == total
            if done == 0:
                kind = KIND_FULL if last else KIND_FIRST
            else:
                kind = KIND_LAST if last else KIND_MIDDLE
            piece = view[done : done + take]
            durable = self._durable
            durable_before = durable.offset if durable.generation == self._gen else DATA_START
            header, padding, crc = encode_frame_parts(
                self._gen, self._end, durable_before, kind, piece
            )
            size = len(header) + len(piece) + len(padding)
            self._add_pending(self._gen, self._end, size, (header, piece, padding))
            self._gen_checksum = accumulate(self._gen_checksum, crc)
            self._end += size
            done += take
            if last:
                break
            self._close_generation()
        self.bytes_appended += len(payload)
        self.records_appended += 1
        return LogPosition(self._gen, self._end)

    def _add_pending(
        self, gen: int, offset: int, size: int, parts: tuple[bytes, bytes | memoryview, bytes]
    ) -> None:
        """Queue a frame for the next flush: contiguous frames of one generation share an
        entry whose parts are joined once, at write time (one copy of the data, not three)."""
        pending = self._pending
        if pending:
            last = pending[-1]
            if last[0] == gen and last[1] + last[2] == offset:
                last[3].extend(parts)
                last[2] += size
                return
        pending.append([gen, offset, size, list(parts)])

    def _close_generation(self) -> None:
        if self._gen >= 0xFFFFFFFF - 1:
            raise LogSequenceEnd(f"log generation {self._gen:08X} is the last one")
        self._closed_gens[self._gen] = (self._end, self._gen_checksum)
        self._gen += 1
        self._end = DATA_START
        self._gen_checksum = 0

    # ----------------------------------------------------------------- durability

    def wait_durable(self, target: LogPosition) -> None:
        """Return once everything before `target` is on stable storage (group commit).

        The first caller that finds no flush under way becomes the leader: it takes every
        appended byte, writes and syncs it with no lock held (appends go on meanwhile, into
        the next group), then wakes the waiters it covered and hands leadership to one waiter
        it did not cover. Every other caller waits on a lock of its own, released once by a
        leader: a wake-up is one C call, not a condition variable's Python, and a waiter the
        flush did not cover sleeps on instead of waking to wait again.
        """
        if self._durable >= target and self._failed is None:
            return
        lock = self._lock
        waiter: LockType | None = None
        leading = False
        # How far this call got, for an exception (KeyboardInterrupt from a signal handler
        # included) that may arrive between any two lines: before the batch is taken, it
        # leaves the queue (`_leave`); once taken, the writer fails (what was written is
        # unknown); once written, the flush's bookkeeping is finished (`_settle`). One
        # `try` covers it all, so there is no line where an exception escapes untreated and
        # leaves `_flushing` set, which would strand every committer for good.
        taken = written = False
        deferred: BaseException | None = None
        wake: list[LockType] = _NO_WAITERS
        end = LogPosition.MIN
        closed = _NO_CLOSED
        try:
            while True:
                with lock:
                    if self._failed is not None:
                        self._raise_failed()
                    if self._durable >= target:
                        return
                    if not self._flushing:
                        leading = True  # first: `_leave` then gives up a role it may hold
                        self._flushing = True
                        gather = self._gather
                        break
                    if waiter is None:
                        waiter = _allocate_lock()
                        waiter.acquire()
                    elif any(entry[1] is waiter for entry in self._waiters):
                        # Woken by `_settle` after an interrupted flush while queued again:
                        # never listed twice (a leader would release it twice).
                        self._waiters = [e for e in self._waiters if e[1] is not waiter]
                    self._waiters.append((target, waiter))
                # Released exactly once by the leader that removes it from `_waiters`; the
                # acquire re-arms it for another round.
                waiter.acquire()
            if gather:
                # The flush before woke other committers: hand them the GIL once, so that
                # they append (and then wait for this flush) before the batch is taken. One
                # sync then covers them, instead of this leader syncing alone and them next.
                _sleep(0)
            with lock:
                taken = True  # before the batch leaves `_pending`: from here on, fail
                chunks = self._pending
                self._pending = []
                end = _new_position(LogPosition, (self._gen, self._end))
                closed_gens = self._closed_gens
                closed = (
                    {g: info for g, info in closed_gens.items() if g < end.generation}
                    if closed_gens
                    else _NO_CLOSED
                )
            deferred = self._write_chunks(chunks, closed, end.generation)
            written = True
            with lock:
                if end > self._durable:
                    self._durable = end
                if closed:
                    for g in closed:
                        self._closed_gens.pop(g, None)
                self._flushing = False
                self.flushes += 1
                wake = self._take_waiters(self._durable) if self._waiters else _NO_WAITERS
                self._gather = len(wake) > 1
            for other in wake:
                other.release()
        except _DurableFlushFailure as durable:
            with lock:
                self._failed = durable.original
                self._flushing = False
                wake = self._take_waiters(None)
            for other in wake:
                other.release()
            raise durable.error from durable.original
        except JetError as exc:
            if not taken:
                self._leave(waiter, leading)
                raise
            with lock:
                if isinstance(exc, DiskFull):
                    self._failed = LogDiskFull(
                        f"the log volume is full ({exc.detail})",
                        hint="free space on the volume holding the logs, then reopen the "
                        "instance; no acknowledged commit is lost",
                        path=exc.path,
                    )
                else:
                    self._failed = exc
                self._flushing = False
                wake = self._take_waiters(None)
            for other in wake:
                other.release()
            self._raise_failed()
        except BaseException as exc:
            if not taken:
                self._leave(waiter, leading)
            elif written:
                self._settle(end, closed, wake)
            else:
                with lock:
                    self._failed = LogWriteFail(
                        f"a flush of the log was interrupted ({type(exc).__name__}) while "
                        "it wrote; whether its records reached the disk is unknown, so the "
                        "log takes no more records",
                        hint="close and reopen the instance: recovery replays every record "
                        "that reached the disk (the interrupted commits may or may not be "
                        "among them; every acknowledged one is)",
                    )
                    self._flushing = False
                    wake = self._take_waiters(None)
                for other in wake:
                    other.release()
            raise
        if deferred is not None:
            # An interrupt that arrived while this flush wrote, once the flush completed and
            # its committers were woken: the record of the commit it interrupted is durable.
            raise deferred

    def _settle(
        self, end: LogPosition, closed: dict[int, tuple[int, int]], woken: list[LockType]
    ) -> None:
        """Finish the bookkeeping of a flush that wrote and synced everything up to `end`
        but was interrupted before it ended (idempotent: any part may be done already).
        Every waiter is woken, those the interrupted bookkeeping may have taken off the queue
        without waking them included; a waiter woken twice only checks again."""
        with self._lock:
            if end > self._durable:
                self._durable = end
            for g in closed:
                self._closed_gens.pop(g, None)
            self._flushing = False
            queued = [lock for _target, lock in self._waiters]
            self._waiters = []
        for other in [*woken, *queued]:
            with contextlib.suppress(RuntimeError):  # released already
                other.release()

    def _leave(self, waiter: LockType | None, leading: bool) -> None:
        """`wait_durable` ends without a flush (its caller failed, or an exception such as
        KeyboardInterrupt arrived while it waited): make sure no other waiter is stranded.

        A leader that wrote nothing gives up the role (waking the next leader); a waiter
        leaves the queue, and if a leader's wake-up reached it already (it may have been
        chosen to lead the next flush) while no flush is under way, the first waiter left
        is woken to take over.
        """
        with self._lock:
            if leading:
                self._flushing = False
                wake = self._take_waiters(self._durable)
            else:
                self._waiters = [entry for entry in self._waiters if entry[1] is not waiter]
                wake = [self._waiters.pop(0)[1]] if self._waiters and not self._flushing else []
        for other in wake:
            other.release()

    def _take_waiters(self, durable: LogPosition | None) -> list[LockType]:
        """The waiters to wake after a flush ended (called with `_lock` held): those whose
        target is durable now, plus the first one that is not, which becomes the next leader
        (the others wait for a flush that covers them). `durable` None (the writer failed):
        all of them."""
        waiters = self._waiters
        if durable is None:
            self._waiters = []
            return [waiter for _target, waiter in waiters]
        wake: list[LockType] = []
        keep: list[tuple[LogPosition, LockType]] = []
        leader = False
        for entry in waiters:
            if entry[0] <= durable:
                wake.append(entry[1])
            elif not leader:
                leader = True
                wake.append(entry[1])
            else:
                keep.append(entry)
        self._waiters = keep
        return wake

    def flush(self) -> LogPosition:
        """Make everything appended so far durable; returns the durable position."""
        end = self.end_position
        self.wait_durable(end)
        return end

    def roll(self) -> int:
        """Close the current generation now, even if it is empty, and make it durable under
        its archived name; returns its number. Everything appended before the call lies in
        that generation or an earlier one (a backup's end point). Appenders wait only for
        this one flush."""
        with self._lock:
            if self._failed is not None:
                self._raise_failed()
            closed = self._gen
            self._close_generation()
            target = LogPosition(self._gen, self._end)
        self.wait_durable(target)
        return closed

    def check_current_file(self) -> None:
        """Fail the writer (sticky `LogWriteFail`) if `edb.log` no longer names the file it
        writes. The instance asks at every checkpoint; a flush under way is skipped (it owns
        the file, and a roll in it checks the file itself before archiving it)."""
        with self._lock:
            if self._failed is not None:
                self._raise_failed()
            if self._flushing or self._file is None:
                return
            error = self._lost_file_error(self._file)
            if error is not None:
                self._failed = error
                raise error

    def _lost_file_error(self, file: File) -> LogWriteFail | None:
        problem = file.path_problem()
        if problem is None:
            return None
        return LogWriteFail(
            f"the current log file '{file.path}' {problem} while the instance was writing it; "
            "commits acknowledged since its generation began are only in that open file",
            hint="do not close the instance yet: copy the open file back to "
            f"'{file.path}' from /proc/{os.getpid()}/fd/{file.fd} while this process runs, "
            "then close and reopen the instance (recovery replays it); never delete or replace "
            "log files of an open instance",
            path=file.path,
        )

    def needs_flush(self) -> bool:
        return self._durable < LogPosition(self._gen, self._end) and self._failed is None

    def _write_chunks(
        self, chunks: list[list[Any]], closed: dict[int, tuple[int, int]], end_generation: int
    ) -> BaseException | None:
        """Write and sync `chunks`, rolling as they need; returns a deferred interrupt.

        A flush within the current generation (the common case) that is interrupted by a
        BaseException other than an Exception (KeyboardInterrupt from a signal handler, most
        often while the sync runs) writes the same bytes at the same offsets again and syncs,
        which makes the outcome known, and returns the interrupt for the caller to raise once
        the flush's bookkeeping is done: the commit stays durable and the log serves on. A
        flush that rolls is not repeatable that way (renames); an interrupt there, or a
        second one here, propagates and fails the writer (`wait_durable`).
        """
        file = self._file
        if file is None:
            # The log was closed under this flush's leader (a simulated crash, or the
            # instance released, by another thread after the leader took its batch): the
            # batch is not durable, and its committers get the log's failure, not a bare
            # AssertionError.
            if self._failed is not None:
                self._raise_failed()
            raise LogWriteFail(
                "the log file was closed while a flush was under way; the commits of that "
                "flush are not durable",
                hint="close and reopen the instance (recovery replays what reached the disk)",
            )
        first_generation = self._file_gen
        if end_generation == first_generation:
            # Every chunk is in the current generation. The parts are kept until the chunks
            # are dropped (at most one generation's bytes), so the bytes can be written again.
            try:
                for _gen, offset, _size, parts in chunks:
                    file.pwrite(b"".join(parts), offset)
                file.fdatasync()
            except Exception:
                raise
            except BaseException as interrupt:
                for _gen, offset, _size, parts in chunks:
                    file.pwrite(b"".join(parts), offset)
                file.fdatasync()
                return interrupt
            return None
        for gen, offset, _size, parts in chunks:
            data = b"".join(parts)
            parts.clear()  # the joined copy is the only one kept while it is written
            while gen > self._file_gen:
                # Every byte of the current generation reaches the disk before the roll, so
                # only the newest generation can ever end with a torn frame.
                file.fdatasync()
                prev_end, prev_checksum = closed[self._file_gen]
                self._roll(prev_end, prev_checksum)
                file = self._file
                assert file is not None
            file.pwrite(data, offset)
        while end_generation > self._file_gen:
            # A roll with nothing written to the new generation yet (`roll`).
            file.fdatasync()
            prev_end, prev_checksum = closed[self._file_gen]
            self._roll(prev_end, prev_checksum)
            file = self._file
            assert file is not None
        file.fdatasync()
        callback = self.on_roll
        if self._file_gen > first_generation and callback is not None:
            # Once per flush, however many generations it started (a large transaction
            # crosses dozens): the databases' headers then require the newest one before any
            # commit of this flush is acknowledged, which is all D8 needs. A crash before it
            # leaves the header requiring less than the log holds: recovery replays what is
            # there; what a lost newer file held was never acknowledged.
            try:
                callback(first_generation + 1, self._file_gen)
            except JetError as exc:
                raise _DurableFlushFailure(exc) from exc
        return None

    # ----------------------------------------------------------------- rolls

    def _roll(self, prev_end: int, prev_checksum: int) -> None:
        new_gen = self._file_gen + 1
        self._install_generation(
            new_gen, self._file_created, prev_end, prev_checksum, archive_current=True
        )
        self.rolls += 1

    def _install_generation(
        self,
        generation: int,
        prev_created: int,
        prev_end: int,
        prev_checksum: int,
        *,
        archive_current: bool,
    ) -> None:
        directory = self._config.directory
        tmp, from_reserve = self._take_prepared()
        created = now_us()
        if created <= prev_created:
            created = prev_created + 1  # the chain link must be unique even if clocks step
        header = LogFileHeader(
            generation=generation,
            log_signature=self._config.signature,
            created_time=created,
            previous_generation_created_time=prev_created,
            previous_generation_end=prev_end,
            previous_generation_checksum=prev_checksum,
            log_file_size=self._file_size,
            data_start=DATA_START,
            page_size=self._config.page_size,
            flags=(
                (
                    LogFileFlags.CIRCULAR_LOGGING
                    if self._config.circular_logging
                    else LogFileFlags.NONE
                )
                | (LogFileFlags.RESERVE_LOG if from_reserve else LogFileFlags.NONE)
            ),
        )
        try:
            tmp.pwrite(encode_log_header(header), 0)
            tmp.fdatasync()
            current_path = os.path.join(directory, CURRENT_LOG)
            if archive_current and self._file is not None:
                # Archiving renames whatever is at `edb.log` now: if that is not the file
                # written (deleted or replaced), the generation would be lost or forged.
                lost = self._lost_file_error(self._file)
                if lost is not None:
                    raise lost
            if self._file is not None:
                self._file.close()
                self._file = None
            if archive_current:
                self._fs.rename(
                    current_path, os.path.join(directory, generation_log_name(self._file_gen))
                )
                # Directory changes may reach the disk in any order: without this sync, the
                # next rename could persist alone and replace generation N's only name.
                self._fs.fsync_directory(directory, owner=self._owner)
            self._fs.rename(os.path.join(directory, TEMP_LOG), current_path)
            self._fs.fsync_directory(directory, owner=self._owner)
        except BaseException:
            tmp.close()
            raise
        tmp.path = current_path
        self._file = tmp
        self._file_gen = generation
        self._file_created = created
        self._request_prepare()

    def _request_prepare(self) -> None:
        with self._prepare_cond:
            if self._prepare_state == "idle":
                self._prepare_state = "preparing"
                self._prepare_request.set()

    def wait_prepared(self, timeout: float = 10.0) -> bool:
        """Wait until no preparation of the next log file is under way (it holds one file
        handle while it works). For tests and tools that count handles; True if settled."""
        deadline = time.monotonic() + timeout
        with self._prepare_cond:
            while self._prepare_state == "preparing":
                left = deadline - time.monotonic()
                preparer = self._preparer
                if left <= 0 or preparer is None or not preparer.alive:
                    return False  # a preparer that ended will never settle it
                self._prepare_cond.wait(min(left, 0.1))
        return True

    def _take_prepared(self) -> tuple[File, bool]:
        """The prepared `edbtmp.log`, waiting for the preparer if it is still at work, and
        whether it is a reserve log that took its place.

        Only one preparation is ever under way and none starts until the previous file was
        taken and renamed, so the preparer never touches a file the roll is renaming.
        """
        preparer = self._preparer
        if preparer is None:
            raise LogWriteFail("the log writer is closed")
        self._request_prepare()
        with self._prepare_cond:
            while self._prepare_state == "preparing":
                self._prepare_cond.wait(0.5)
                if self._prepare_state == "preparing" and not preparer.alive:
                    raise LogWriteFail("the log file preparer thread stopped")
            error, file, from_reserve = (
                self._prepared_error,
                self._prepared,
                self._prepared_reserve,
            )
            self._prepared_error, self._prepared, self._prepared_reserve = None, None, False
            self._prepare_state = "idle"
        if error is not None:
            raise error
        assert file is not None
        return file, from_reserve

    def _prepare_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self._prepare_request.wait(0.2):
                continue
            self._prepare_request.clear()
            if stop.is_set():
                return
            file: File | None = None
            from_reserve = False
            error: JetError | None = None
            unexpected: BaseException | None = None
            try:
                file, from_reserve = self._prepare_file()
            except JetError as exc:
                error = exc
            except BaseException as exc:
                # Not an I/O error: a bug, MemoryError. The thread used to die of it, and the
                # roll that needed the file said only "the preparer thread stopped". The roll
                # gets an error naming it instead (the writer fails, and the instance with
                # it, event 102 saying why).
                unexpected = exc
                error = LogWriteFail(
                    "preparing the next log file "
                    f"'{os.path.join(self._config.directory, TEMP_LOG)}' failed: {exc!r}",
                    hint="close and reopen the instance (recovery replays what reached the "
                    "disk); report the message if it happens again",
                )
                error.__cause__ = exc
            with self._prepare_cond:
                self._prepared, self._prepared_error = file, error
                self._prepared_reserve = from_reserve
                self._prepare_state = "ready"
                self._prepare_cond.notify_all()
            if unexpected is not None and not isinstance(unexpected, Exception):
                raise unexpected  # SystemExit and the like end the thread, its error told

    def _prepare_file(self) -> tuple[File, bool]:
        """Create `edbtmp.log` at full size, every byte written once, synced; True with it
        when a reserve log took its place (its generation's header says so).

        Overwriting an already-written file later costs about half the sync time of an
        append that grows the file, which is what every commit pays. When the volume is full,
        a reserve log (preallocated at open) takes its place: the log can still roll, what
        was committed still reaches the disk and the instance can shut down cleanly, while
        new updates are refused (`disk_full`).
        """
        path = os.path.join(self._config.directory, TEMP_LOG)
        try:
            file = self._fs.open(path, owner=self._owner, create=True)
        except DiskFull:
            return self._take_reserve(path), True
        try:
            self._zero_fill(file)
        except DiskFull:
            file.close()
            return self._take_reserve(path), True
        except BaseException:
            file.close()
            raise
        return file, False

    def _take_reserve(self, tmp_path: str) -> File:
        for index in range(1, RESERVE_LOG_COUNT + 1):
            path = os.path.join(self._config.directory, reserve_log_name(index))
            if not self._fs.exists(path) or self._fs.size(path) != self._file_size:
                continue
            self._fs.rename(path, tmp_path)  # replaces the partial edbtmp.log, freeing it
            self._fs.fsync_directory(self._config.directory, owner=self._owner)
            self.reserve_logs_used += 1
            self.disk_full = True
            callback = self.on_disk_full
            if callback is not None:
                callback(index)
            return self._fs.open(tmp_path, owner=self._owner)
        raise LogDiskFull(
            f"the log volume of '{self._config.directory}' is full and both reserve logs are used",
            hint="free space on the log volume, then reopen the instance; no acknowledged "
            "commit is lost",
        )
