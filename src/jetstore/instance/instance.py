"""The instance: one directory, one log stream, one checkpoint file, the databases attached.

State machine (every public call checks it):

    CLOSED --open()--> RECOVERING --recovery ok--> OPEN --close()--> CLOSED
                            |                        |
                            | recovery error         | fsync/write failure of the log, a
                            v                        v page file or a header
                         (raised; every handle     FAILED: every update and commit raises;
                          released, nothing         reads of already published data still
                          written)                  work; close() releases everything and
                                                    the next open recovers from the log

Invariants:
- Exclusive: the directory lock is held from open to close (`FileAccessDenied` otherwise).
- WAL rule: a checkpoint makes the log durable up to its position before writing any page.
- Checkpoint order: pages, sync, both header copies of every database, then the checkpoint
  file; the durable checkpoint value changes only after the checkpoint file was synced.
- Dirty pages (never-written nodes of the published trees, `_dirty_bytes`, counted in pages)
  start a checkpoint at half of `cache_size`, and a commit that leaves them at `cache_size` or
  more returns only after a checkpoint wrote them (`write_back`), so the memory they take is
  bounded by the cache budget as the cached clean pages are, and not only by the log volume
  between checkpoints (`checkpoint_depth`), which for small records spread over many leaves
  dirtied a page per record.
- `close()` is a clean shutdown: a final checkpoint marks every header clean (no logs needed);
  it releases every handle even when something fails or is interrupted (Ctrl-C) on the way,
  and a second `close()` after an interrupted one closes whatever was left.
- An instance belongs to the process that opened it. In a child forked from it (which shares
  its descriptors and flock locks) every use raises `InstanceUnavailable` before any lock is
  taken, and `close()` only lets go of the child's copies of the descriptors
  (`HandleRegistry.forget_owner`): no checkpoint, no unlock, no socket removed
  (`jetstore.io.forks`).
- Nothing but the application keeps an open instance alive: its threads (background, log
  preparer, control socket) reach it through `weak_self` only (the event log's delivery
  thread reaches nothing but the event log). When the application drops
  the last reference (to the instance and to every `Database`, `Transaction`, `Table` or
  backup session of it, each of which keeps it alive), `__del__` hands it to its own
  background thread, which shuts it down as `close()` does after a `ResourceWarning`
  (`jetstore.instance.unclosed`, which also closes the instances still open at interpreter
  exit). The finalizer itself takes no lock: the collector may run inside engine code.

Lock order (instance-wide): a thread holding one of these locks takes only locks below it,
so no two threads ever wait for each other in a cycle (`tests/instance/test_lock_order.py`
records every pair held together on every path and checks them against this list):

    _close_lock            close(), simulate_crash(), the shutdown of a dropped instance
    _round_lock            one background round (`unclosed.collect` takes it to look)
    BackupSession._lock    a backup's start checkpoints, its completion truncates the logs
    _checkpoint_lock       checkpoints (by depth, time, dirty bytes, a write-back, explicit,
                           final), `checkpoint_guard`, log removal, detach
    _backup_lock           the running backup's slot; attach and detach change the
                           database list under it
    commit_lock            commits, a checkpoint's plan, database create, attach, detach
    Database._active_lock  the open transactions of one database
    DatabaseFile._space_lock  free pages and pins (a plan allocates, a checkpoint releases)
    CacheBudget.lock       every node cache of the instance
    PointReadIndex.lock    taken under the budget's lock by the cache's drop, evict and
                           clear callbacks; nothing is taken under it (`fill` reads the
                           cache's dict without its lock), so a commit's `advance` under the
                           commit lock and a write-back's cache puts never wait in a cycle
    DatabaseFile._header_lock  one header write (I/O only)
    LogWriter._lock        appends and a flush's bookkeeping; a flush writes, syncs and rolls
                           with no lock held, and its roll's header writes (`_on_roll`) take
                           only header locks and the event log's, so a caller may wait for
                           the log (`wait_durable`) holding the commit lock
    EventLog._lock         one event written (its `logging` handlers run later, on the
                           event log's thread, holding no lock of this list)
    HandleRegistry._lock   the table of open handles

The log writer's waiter locks are each taken alone; the io layer's per-file locks (`File`)
are taken inside its system calls, below every lock here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import itertools
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jetstore.errors import (
    BackupInProgress,
    CheckpointDepthTooDeep,
    DatabaseDirtyShutdown,
    DatabaseDuplicate,
    DatabaseInUse,
    DatabaseNotFound,
    FileAccessDenied,
    FileNotFound,
    InstanceUnavailable,
    InternalError,
    InvalidParameter,
    InvalidPath,
    JetError,
    LogDiskFull,
    TooManyOpenDatabases,
)
from jetstore.format.checkpoint import (
    ATTACH_AREA_SIZE,
    AttachedDatabase,
    CheckpointState,
    attached_size,
    encode_checkpoint_copy,
)
from jetstore.format.common import PAGE_SIZES, Signature, now_us
from jetstore.format.dbheader import NO_BACKUP_HISTORY, DatabaseHeader, DatabaseState
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    RESERVE_LOG_COUNT,
    TEMP_LOG,
    database_file_name,
    generation_log_name,
    is_valid_database_name,
    parse_database_file_name,
    parse_generation_log_name,
    reserve_log_name,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.logrecords import (
    CreateDatabaseRecord,
    encode_attach_database,
    encode_create_database,
    encode_detach_database,
)
from jetstore.format.positions import LogPosition
from jetstore.instance import unclosed
from jetstore.instance.database import Database
from jetstore.instance.events import DEFAULT_EVENT_LOG_SIZE, EventLog
from jetstore.instance.recovery import (
    RecoveryOutcome,
    RestoreRequest,
    open_database_files,
    recover,
)
from jetstore.instance.recoverydecisions import names_to_move_out, too_many_to_list
from jetstore.io import forks
from jetstore.io.files import FileSystem, absolute_path
from jetstore.io.handles import HandleRegistry, release_all, use_owner
from jetstore.io.locking import HOLDER_INSTANCE, DirectoryLock, acquire_directory_lock
from jetstore.io.threads import ManagedThread, WeakOwner, run_out_of_reach
from jetstore.log.policy import DeletionLimit, deletable, deletion_limit
from jetstore.log.writer import LogConfig, LogTail, LogWriter
from jetstore.pages.cache import CacheBudget
from jetstore.pages.collector import building_in_bulk
from jetstore.pages.pagefile import CheckpointPlan, DatabaseFile

if TYPE_CHECKING:
    from jetstore.backup.backupset import Manifest, Progress
    from jetstore.backup.session import BackupHold, BackupKind, BackupSession
    from jetstore.control.server import ControlServer

MIB = 1024 * 1024


@dataclass(frozen=True)
class InstanceOptions:
    """Settings of an open instance (`jetstore.open(path, **options)`)."""

    circular_logging: bool = False
    log_file_size: int = 5 * MIB
    page_size: int = 8192
    checkpoint_depth: int = 20 * MIB
    checkpoint_interval: float = 30.0
    cache_size: int = 256 * MIB
    max_transaction_bytes: int = 1024 * MIB
    lazy_flush_interval: float = 0.05
    checkpoint_too_deep: int = 1024
    checkpoint_warning_interval: float = 60.0
    accept_data_loss: bool = False
    #: Serve the control socket `DIR/jetstore.sock` while open (`jetstore.control`).
    control_socket: bool = True
    #: Event 144 (log disk low) when the log volume's free space falls below this many log
    #: files at a roll (the reserve logs are extra). 0 turns the warning off.
    log_disk_low_files: int = 8
    #: Answer point reads of the latest tree from a hash of the leaves they reached
    #: (`jetstore.pages.pointindex`, design D18). False: every read descends the tree.
    point_read_index: bool = True
    #: Bytes at which the event log `events.jsonl` is renamed `events.1.jsonl` and a new one
    #: begins (`jetstore.instance.events`): at most about twice this on disk.
    event_log_size: int = DEFAULT_EVENT_LOG_SIZE

    def validate(self) -> None:
        if self.page_size not in PAGE_SIZES:
            raise InvalidParameter(
                f"page_size {self.page_size} is not supported",
                hint=f"use one of {sorted(PAGE_SIZES)}",
            )
        if self.checkpoint_depth < 64 * 1024:
            raise InvalidParameter("checkpoint_depth must be at least 64 KiB")
        # The budget is in bytes and shared by databases of any page size (`page_size` only
        # sets new databases'); each cache keeps 16 of its own pages whatever the budget.
        if self.cache_size < 16 * min(PAGE_SIZES):
            raise InvalidParameter(
                f"cache_size {self.cache_size} is below 16 pages of {min(PAGE_SIZES)} bytes",
                hint=f"give a cache_size of at least {16 * min(PAGE_SIZES)} bytes",
            )
        if self.max_transaction_bytes < 64 * 1024:
            raise InvalidParameter("max_transaction_bytes must be at least 64 KiB")
        for name in ("checkpoint_interval", "lazy_flush_interval", "checkpoint_warning_interval"):
            # `not > 0` also refuses NaN, which passed `<= 0` (lazy_flush_interval NaN: the
            # background thread spun). The background thread waits lazy_flush_interval: a
            # wait beyond threading.TIMEOUT_MAX killed it, and no checkpoint ran again.
            value = getattr(self, name)
            limit = threading.TIMEOUT_MAX if name == "lazy_flush_interval" else math.inf
            if not 0 < value <= limit:
                raise InvalidParameter(
                    f"{name} {value!r} is invalid",
                    hint=f"give {name} in seconds, more than 0"
                    + (f" and at most {limit:g}" if limit < math.inf else ""),
                )
        if self.event_log_size < 4096:
            raise InvalidParameter(
                f"event_log_size {self.event_log_size} is below 4096 bytes",
                hint="give the event log at least 4096 bytes a file (the default is "
                f"{DEFAULT_EVENT_LOG_SIZE})",
            )
        if self.log_disk_low_files < 0:
            raise InvalidParameter("log_disk_low_files must be 0 (off) or more")
        if self.checkpoint_too_deep < 4:
            raise InvalidParameter(
                "checkpoint_too_deep must be at least 4 generations",
                hint="it is the checkpoint lag, in log generations, at which updates are "
                "refused until the checkpoint file can be written again",
            )


class InstanceState(enum.Enum):
    RECOVERING = "recovering"
    OPEN = "open"
    FAILED = "failed"
    CLOSED = "closed"


class Instance:
    """An open instance directory. Use `jetstore.open(path, **options)` to get one."""

    def __init__(
        self,
        directory: str,
        options: InstanceOptions,
        filesystem: FileSystem | None = None,
    ) -> None:
        # CLOSED until `_open` begins: an instance whose construction was cut short (Ctrl-C)
        # is nothing to shut down, and its finalizer must not hand it over half built.
        self.state = InstanceState.CLOSED
        options.validate()
        self.directory = os.path.abspath(directory)
        self.options = options
        self.owner = f"instance:{self.directory}"
        #: Who holds this instance's database file locks, as a refused opener is told.
        self.lock_holder = f"instance '{self.directory}'"
        self.registry = HandleRegistry(self.owner)
        base = filesystem if filesystem is not None else FileSystem()
        self.fs = base.with_registry(self.registry)
        self.cache_pages = max(16, options.cache_size // options.page_size)
        #: cache_size is the instance's: the node caches of all its databases share it.
        self.cache_budget = CacheBudget(options.cache_size)
        #: The process that opened the instance (`jetstore.io.forks`): only it may use it.
        self.pid = forks.PID
        self._failure: JetError | None = None
        self._failing: dict[str, object] = {}  # `_fail`'s claim: the first failure only
        self.commit_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        # The thread holding `_checkpoint_lock` (its commits must not wait for a checkpoint).
        self._checkpoint_holder: int | None = None
        self._databases: dict[str, Database] = {}
        #: Names an attach holds from its checks to its end, each with the attach's token:
        #: another attach or a creation of the name is refused meanwhile (`attach`).
        self._attaching: dict[str, object] = {}
        self._lock: DirectoryLock | None = None
        self._events: EventLog | None = None
        self._log: LogWriter | None = None
        self._background: ManagedThread | None = None
        # What the background thread waits on: None wakes it early (a checkpoint is due, or
        # it is to stop); the instance itself, put there by its finalizer, is to be shut down
        # (`jetstore.instance.unclosed`). A SimpleQueue: its `put` takes no lock, so the
        # finalizer may call it wherever the collector runs.
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._wake_pending = False
        # Held by the background thread while a round holds the instance strongly: whoever
        # must see whether the application dropped it (`unclosed.collect`) takes it first.
        self._round_lock = threading.Lock()
        #: How the engine's threads reach this instance without keeping it alive.
        self.weak_self: WeakOwner[Instance] = WeakOwner(self)
        self._closed_event = threading.Event()
        self._closing = False
        # One close (or simulated crash) at a time: a second caller waits for the first to
        # finish instead of closing the files under its final checkpoint.
        self._close_lock = threading.RLock()
        self._bytes_since_checkpoint = 0
        # The generation this open started (D7) and the tail it follows, until the open
        # ends; and whether a header or the checkpoint file may name it (a checkpoint or a
        # roll began writing them): see `_take_back_open_generation`.
        self._open_roll: tuple[LogTail | None, int] | None = None
        self._generation_named = False
        #: Bytes of pages the next checkpoint writes (the dirty nodes' count, in pages).
        self._dirty_bytes = 0
        self.write_backs = 0
        self._last_checkpoint_time = time.monotonic()
        self.durable_checkpoint: LogPosition | None = None
        self.candidate_checkpoint: LogPosition | None = None
        self.checkpoint_file_error: JetError | None = None
        self._checkpoint_error_reported = 0.0
        self._depth_warned = False
        self.logs_deleted = 0
        self.log_delete_error: JetError | None = None
        self.checkpoints = 0
        self.commits = 0
        self.recovery: RecoveryOutcome | None = None
        self._disk_low_warned = False
        self.log_disk_free_bytes: int | None = None
        #: The running backup's hold (its session is referenced weakly: `BackupHold`).
        self._backup: BackupHold | None = None
        #: Set by `jetstore.backup.restore` before opening a restored directory.
        self.restore_request: RestoreRequest | None = None
        self._backup_lock = threading.Lock()
        self.backup_bytes_streamed = 0
        self.backups_completed = 0
        self.backups_aborted = 0
        self.backups_failed = 0
        self._control: ControlServer | None = None

    # ----------------------------------------------------------------- open

    def _open(self) -> None:
        self.state = InstanceState.RECOVERING
        try:
            self._lock = self._claim_directory()
            self._events = EventLog(
                self.fs,
                self.directory,
                owner=self.owner,
                max_bytes=self.options.event_log_size,
            )
            files = open_database_files(self)
            # Replay allocates millions of long-lived objects that hold no cycles: the
            # cyclic collector pauses for the replay (`building_in_bulk`).
            try:
                with building_in_bulk():
                    outcome = recover(
                        self,
                        files,
                        accept_data_loss=self.options.accept_data_loss,
                        restore=self.restore_request,
                    )
            except BaseException:
                for file in files.values():
                    file.close()
                raise
            self.recovery = outcome
            for note in outcome.notes:
                if note.startswith("checkpoint file ignored") or "no checkpoint file" in note:
                    self.events.emit("recovery_checkpoint_file_ignored", note)
            for name, at in outcome.detached:
                self.events.emit(
                    "recovery_database_detached",
                    f"replay reached the detach of database {name!r} at log position {at}: "
                    "it is recovered as it was there, later records of its id are another "
                    "database's",
                    database=name,
                    position=str(at),
                )
            for name, at in outcome.not_restored:
                self.events.emit(
                    "restore_database_not_restored",
                    f"database {name!r}, attached at log position {at} after the backup, is "
                    "not in the backup: its changes in the later logs were skipped",
                    database=name,
                    position=str(at),
                )
            for name, file in files.items():
                for problem in file.problems:
                    self.events.emit(
                        "database_header_repaired", problem, database=name, path=file.path
                    )
            if outcome.checkpoint is not None:
                self._checkpoint_seq = outcome.checkpoint.seq
                # What the checkpoint file on disk says is the durable checkpoint until a
                # newer one is written: log deletion and back-pressure start from it.
                self.durable_checkpoint = outcome.checkpoint.checkpoint_position
            if outcome.data_loss is not None:
                loss = outcome.data_loss
                self.events.emit(
                    "recovery_data_loss",
                    loss.describe(),
                    databases=loss.databases,
                    without_file=loss.without_file,
                    recovered_completely=loss.recovered_completely,
                    stopped_at=str(loss.stopped_at) if loss.stopped_at else None,
                    moved_logs_to=loss.moved_logs_to,
                )
            if outcome.needed:
                self.events.emit(
                    "recovery_started",
                    f"soft recovery from log position {outcome.start}",
                    start=str(outcome.start),
                )
                for generation, records in outcome.generations:
                    self.events.emit(
                        "recovery_generation_replayed",
                        f"log generation {generation} read: {records} record(s) end in it",
                        generation=generation,
                        records=records,
                    )
                self.events.emit(
                    "recovery_finished",
                    f"soft recovery replayed {outcome.replayed} committed transaction(s) "
                    f"from log position {outcome.start}",
                    replayed=outcome.replayed,
                    start=str(outcome.start),
                    created=outcome.created,
                    notes=outcome.notes,
                )
            signature = outcome.signature or Signature.new()
            self._log = LogWriter(
                self.fs,
                LogConfig(
                    self.directory,
                    self.options.log_file_size,
                    self.options.page_size,
                    self.options.circular_logging,
                    signature,
                ),
                owner=self.owner,
            )
            # The log preparer thread holds the writer, and the writer these callbacks:
            # weakly bound, so that the thread does not keep the instance alive. Bound
            # before `start`: the open's first log file may already be a reserve log, and
            # event 143 must say so then too.
            self._log.on_roll = self.weak_self.bind(Instance._on_roll)
            self._log.on_disk_full = self.weak_self.bind(Instance._on_disk_full)
            self._log.start(outcome.tail)
            self._open_roll = (outcome.tail, self._log.current_generation)
            joining = self._renumber_joining_databases(outcome)
            self._log_joining(joining)
            if outcome.checkpoint is not None:
                for attached in outcome.checkpoint.attached:
                    if attached.name not in self._databases and attached.name not in outcome.left:
                        # The checkpoint written below will not list it any more: this event
                        # is what is left of it.
                        old_path = os.path.join(self.directory, database_file_name(attached.name))
                        renamed = self._renamed_database(attached)
                        if renamed is not None:
                            # "Put the file back" would be wrong advice: it is here.
                            self.events.emit(
                                "database_missing",
                                f"database {attached.name!r} (id {attached.db_id}) was "
                                f"attached at the last checkpoint as '{old_path}'; that file "
                                f"is now '{renamed.file.path}' (the same database, renamed "
                                f"while the instance was closed) and is attached as "
                                f"{renamed.name!r}",
                                database=attached.name,
                                db_id=attached.db_id,
                                renamed_to=renamed.name,
                            )
                            continue
                        self.events.emit(
                            "database_missing",
                            f"database {attached.name!r} (id {attached.db_id}) was attached "
                            f"at the last checkpoint, but its file '{old_path}'"
                            " is missing; the instance opens without it",
                            database=attached.name,
                            db_id=attached.db_id,
                        )
            self._first_generation = self._log.current_generation
            # The first checkpoint marks every database attached (dirty) and, after a
            # recovery, writes the replayed changes: from here on, the logs before it are
            # not needed any more.
            self.state = InstanceState.OPEN
            if outcome.needed or too_many_to_list(self.directory, list(self._databases)):
                # Soft recovery ends like ESE's: the replayed changes are written and every
                # header is marked clean (nothing left to replay) before the instance is used.
                # With more databases than the checkpoint file lists, it refuses there (the
                # databases clean, the file naming the end of the log: see
                # `_write_checkpoint_file`).
                self.checkpoint(final=True)
            self.checkpoint(final=False)  # attach: headers dirty while the instance is open
            if self.failure is not None:
                raise self.failure
            self._background = ManagedThread(
                self.registry,
                self.owner,
                "jetstore-background",
                functools.partial(
                    _background_loop,
                    self.weak_self,
                    self._inbox,
                    self._round_lock,
                    self.options.lazy_flush_interval,
                ),
                wake=functools.partial(self._inbox.put, None),
            )
            for name, db in sorted(self._databases.items()):
                self.events.emit(
                    "database_attached",
                    f"database {name!r} attached",
                    database=name,
                    db_id=db.db_id,
                    path=db.file.path,
                )
            self.events.emit(
                "instance_started",
                f"instance '{self.directory}' is open at log generation "
                f"{self._log.current_generation}",
                databases=sorted(self._databases),
            )
            self._start_control()
            unclosed.track(self, self._round_lock)
            self._open_roll = None
        except BaseException:
            try:
                # The log closed first (its preparer stopped), then the generation taken
                # back while the directory lock is still held.
                release_all(self._close_log, self._take_back_open_generation)
            finally:
                try:
                    self._release_everything()
                finally:
                    self._mark_closed()
            raise

    def _take_back_open_generation(self) -> None:
        """Undo the roll of an open that failed (D7) when nothing depends on its generation:
        no header or checkpoint file write began (a checkpoint's page writes may have failed
        before them, the usual failure on a full volume), and it holds no record but the
        ATTACH records of databases joining at open, which are blanked. Each failed open
        used to leave a generation behind, a log file of space that is never given back, and
        on a full volume took a reserve log for it: repeated failing opens ate the volume.

        The renames of the roll are undone in reverse order, each synced: `edb.log` (the
        new generation, a header and no record) back to `edbtmp.log`, where it replaces the
        log file prepared meanwhile and is filled again by the next open's preparation; then
        the archived previous generation back to `edb.log`. A crash between the two leaves
        what a crash between the roll's two renames leaves, which recovery finishes. The
        next open rolls again from the same end. A reserve log the open used up is put
        back from the file taken back (a failed open on a full volume used to eat them).
        Anything unexpected (the files not as the roll left them, a failed rename) leaves
        the generation where it is, as before."""
        roll, self._open_roll = self._open_roll, None
        log = self._log
        if roll is None or log is None or self._generation_named:
            return
        tail, generation = roll
        end = log.end_position
        if end.generation != generation:
            return
        directory = self.directory
        current = os.path.join(directory, CURRENT_LOG)
        archived = (
            os.path.join(directory, generation_log_name(tail.generation))
            if tail is not None and tail.is_current_file
            else None
        )
        with contextlib.suppress(JetError):
            header = decode_log_header(
                self.fs.read_file(current, owner=self.owner, limit=LOG_HEADER_SIZE),
                path=current,
            )
            if header.generation != generation or header.log_signature != log.signature:
                return
            if archived is not None and not self.fs.exists(archived):
                return
            if end.offset > LOG_HEADER_SIZE:
                # The ATTACH records of the databases joining at open (`_log_joining`), the
                # only records an open appends: no header names this stream for them yet,
                # and the next open logs them again. Blanked first, so that the file is a
                # header and nothing more (what a crash between the renames below must
                # leave for recovery to take it as a roll cut short, and what a reserve log
                # must hold).
                with self.fs.opened(current, owner=self.owner) as file:
                    file.pwrite(bytes(end.offset - LOG_HEADER_SIZE), LOG_HEADER_SIZE)
                    file.fdatasync()
            temporary = os.path.join(directory, TEMP_LOG)
            self.fs.rename(current, temporary)
            self.fs.fsync_directory(directory, owner=self.owner)
            if archived is not None:
                self.fs.rename(archived, current)
                self.fs.fsync_directory(directory, owner=self.owner)
            # On a full volume the open took a reserve log for the file it prepared next
            # (which the rename above replaced): the file taken back, of the same size and
            # blank past its header, is a reserve log again.
            size = log.config.log_file_size
            for index in range(1, RESERVE_LOG_COUNT + 1):
                reserve = os.path.join(directory, reserve_log_name(index))
                if not self.fs.exists(reserve) or self.fs.size(reserve) != size:
                    if self.fs.size(temporary) == size:
                        self.fs.rename(temporary, reserve)
                        self.fs.fsync_directory(directory, owner=self.owner)
                    break

    def _claim_directory(self) -> DirectoryLock:
        """Create the instance directory if needed and take its lock.

        This is where a new instance begins, so a failure here is about the place, not about
        lost files: "restore from a backup" would be wrong advice for an instance that never
        existed. A path that is a file is InvalidPath; a directory the engine cannot create
        files in (a special file system like /proc, which answers ENOENT, or a read-only
        one) is InvalidPath or FileAccessDenied with a hint to choose another directory.
        """
        directory = self.directory
        if self.fs.exists(directory) and not self.fs.is_directory(directory):
            raise InvalidPath(
                f"'{directory}' is a file, not a directory: an instance is a directory of its own",
                hint="Give the instance directory: an existing one, or a path that does not "
                "exist yet (it is created).",
                path=directory,
            )
        if self.fs.exists(directory):
            from jetstore.backup.backupset import refuse_backup_set

            # Recovery would replay a set's logs into its images: the set would be lost.
            refuse_backup_set(
                self.fs,
                directory,
                what="opening it as an instance",
                restoring=self.restore_request is not None,
            )
        try:
            self.fs.makedirs(directory)
            return acquire_directory_lock(
                self.fs, directory, owner=self.owner, holder=HOLDER_INSTANCE
            )
        except FileNotFound as exc:
            raise InvalidPath(
                f"'{directory}' cannot hold an instance: {exc.detail}; the engine cannot "
                "create files there (a special file system such as /proc or /sys, or the "
                "directory was removed while opening)",
                hint="Choose an instance directory on a writable, ordinary file system.",
                path=exc.path or directory,
            ) from exc
        except FileAccessDenied as exc:
            if exc.errno is None:
                raise  # the lock is held by another opener: its message says by whom
            denied = FileAccessDenied(
                f"'{directory}' cannot hold an instance: {exc.detail}; this process may not "
                "create files there (permissions, or a read-only or special file system)",
                hint="Choose an instance directory this process can write to, or make this "
                "one writable for it.",
                path=exc.path or directory,
            )
            # Kept so that callers tell this from a lock held by another opener (errno None).
            denied.errno = exc.errno
            raise denied from exc

    def attach_recovered(
        self, files: Mapping[str, DatabaseFile], outcome: RecoveryOutcome
    ) -> dict[str, Database]:
        for name, file in files.items():
            if name not in self._databases:
                header = file.header
                self._databases[name] = Database(
                    self, name, header.db_id, file, header.checkpoint_position
                )
        return self._databases

    def _renamed_database(self, attached: AttachedDatabase) -> Database | None:
        """The database attached here under another name that is the one the checkpoint
        file lists as `attached` (same id and signature): its file was renamed while the
        instance was closed."""
        for db in self._databases.values():
            header = db.file.header
            if (
                db.name != attached.name
                and db.db_id == attached.db_id
                and not attached.signature.is_none
                and header.db_signature == attached.signature
            ):
                return db
        return None

    def _log_joining(self, joining: list[str]) -> None:
        """Log an ATTACH record for each database joining the stream at open, durable before
        the first checkpoint puts the stream's signature in its header (as `attach` does).

        Without it, the first records of a joining file's id followed the last ones of the
        database that had the id before (one detached, or whose file was moved away while
        the instance was closed), with nothing between them: a restore of an older image of
        that database over the later logs took the joining file's changes as its own.
        """
        end: LogPosition | None = None
        for name in joining:
            db = self._databases[name]
            signature = db.file.header.db_signature
            end = self.log.append(
                encode_attach_database(db.db_id, signature.random, signature.time_us, name)
            )
        if end is not None:
            self.wait_durable(end)

    def _renumber_joining_databases(self, outcome: RecoveryOutcome) -> list[str]:
        """Give a clean database joining the log stream at open an id no other has; returns
        the joining databases' names.

        Log records name their database by id, so ids are unique in an instance. The
        databases the log knows (its stream's, and those its creation records re-created)
        keep theirs; a clean file from elsewhere (another instance's, or set apart by a
        data-loss repair) keeps its own unless one of those, or a joining file before it in
        name order, has it (`recoverydecisions` notes which). Its new id reaches its header
        with the stream's signature in the first checkpoint, before any record can carry it;
        a crash before that leaves it a joining file again.
        """
        stream = self.log.signature
        known = set(outcome.created)
        databases = self._databases
        joining = [
            name
            for name in sorted(databases)
            if name not in known and databases[name].file.header.log_signature != stream
        ]
        taken = {db.db_id for name, db in databases.items() if name not in joining}
        for name in joining:
            db = databases[name]
            if db.db_id in taken:
                old_id = db.db_id
                db.db_id = max(d.db_id for d in databases.values()) + 1
                self.events.emit(
                    "database_renumbered",
                    f"database {name!r} joins this instance's log stream as id {db.db_id}: "
                    f"its id {old_id} belongs to another database here",
                    database=name,
                    old_id=old_id,
                    db_id=db.db_id,
                    path=db.file.path,
                )
            taken.add(db.db_id)
        return joining

    def create_database_file(self, record: CreateDatabaseRecord) -> Database:
        """Create a database's file from its creation record (creation or its replay)."""
        path = os.path.join(self.directory, database_file_name(record.name))
        signature = Signature(record.signature_random, record.signature_time_us)
        header = DatabaseHeader(
            page_size=record.page_size,
            state=DatabaseState.JUST_CREATED,
            db_id=record.database_id,
            db_signature=signature,
            log_signature=Signature.NONE,
            created_time=record.signature_time_us,
            name=record.name,
        )
        file = DatabaseFile.create(
            self.fs,
            path,
            header,
            owner=self.owner,
            cache_pages=self.cache_pages,
            cache_budget=self.cache_budget,
            holder=self.lock_holder,
        )
        db = Database(self, record.name, record.database_id, file, LogPosition.MIN)
        self._databases[record.name] = db
        return db

    def open_database_file(
        self,
        path: str,
        *,
        writable: bool = True,
        lock: bool | None = None,
        owner: str | None = None,
        repair: bool = True,
    ) -> DatabaseFile:
        """`DatabaseFile.open` of `path` with this instance's file system, owner (or `owner`,
        one of its sub-owners), node-cache budget and lock holder name (`lock` defaults to
        `writable`; `repair=False` leaves a damaged header copy for `repair_header`)."""
        return DatabaseFile.open(
            self.fs,
            path,
            owner=owner or self.owner,
            cache_pages=self.cache_pages,
            cache_budget=self.cache_budget,
            writable=writable,
            lock=lock,
            holder=self.lock_holder,
            repair=repair,
        )

    # ----------------------------------------------------------------- properties

    @property
    def state(self) -> InstanceState:
        """OPEN, FAILED, ... A log writer that failed on its own (a flush interrupted twice,
        an append interrupted halfway: the interrupt goes to its caller, not a failure the
        instance records) makes an open instance FAILED at the first look, with the writer's
        failure and event 102: it said OPEN until the next update asked the log."""
        state = self._state
        if state is InstanceState.OPEN:
            log = self._log
            failed = log.failed if log is not None else None
            if failed is not None:
                self._fail(failed)  # or another thread records it, at this moment
                return InstanceState.FAILED
        return state

    @state.setter
    def state(self, state: InstanceState) -> None:
        self._state = state

    @property
    def failure(self) -> JetError | None:
        """What made the instance FAILED (None while it is not); a log writer's own failure
        is named at the first look, as `state` says FAILED."""
        _ = self.state  # records a failure of the log writer not recorded yet
        return self._failure

    @property
    def log(self) -> LogWriter:
        log = self._log
        if log is None:
            raise InstanceUnavailable(f"instance '{self.directory}' is not open")
        return log

    @property
    def events(self) -> EventLog:
        assert self._events is not None
        return self._events

    def check_open(self) -> None:
        if self.pid != forks.PID:
            raise self.forked_error()
        if self._state is InstanceState.CLOSED:  # every transaction asks: not the property
            raise InstanceUnavailable(
                f"instance '{self.directory}' is closed", hint="open it again with jetstore.open"
            )

    def forked_error(self) -> InstanceUnavailable:
        """The refusal a child forked from the opening process gets for any use."""
        return InstanceUnavailable(
            f"instance '{self.directory}' was opened by process {self.pid}; this process "
            f"({forks.PID}) is a child forked from it and cannot use it: it shares the "
            "parent's open files and locks, and anything it wrote would damage the parent's "
            "instance",
            hint="open the instance in the process that uses it (in the child, after the "
            "parent closed it), or start workers with multiprocessing's 'spawn' method; in "
            "the child, close() only lets go of the inherited copy and leaves the parent's "
            "instance alone",
            path=self.directory,
        )

    def _check_depth(self) -> None:
        """Back-pressure, not data loss: while the checkpoint file cannot be written the logs
        it needs pile up; past `checkpoint_too_deep` generations updates are refused until it
        catches up (ESE's JET_errCheckpointDepthTooDeep)."""
        lag = self.checkpoint_lag_generations()
        limit = self.options.checkpoint_too_deep
        if lag >= limit:
            error = self.checkpoint_file_error
            if error is None:
                # Nothing stops the checkpoint: a large transaction moved the log on faster
                # than one could run. The background thread is at it (`_lag_due`).
                self.wake_background()
            raise CheckpointDepthTooDeep(
                f"the durable checkpoint is {lag} log generations behind the current log "
                f"(limit {limit}); updates are refused until it catches up"
                + (
                    f" (the checkpoint file cannot be written: {error})"
                    if error is not None
                    else " (a checkpoint is being written)"
                ),
                hint="make the checkpoint file (edb.chk) writable again — another program may "
                "hold it; the engine retries every second and updates resume by themselves"
                if error is not None
                else "retry in a moment: updates resume by themselves once the checkpoint "
                "is written",
            )
        if lag >= limit // 4 and not self._depth_warned:
            self._depth_warned = True
            self.events.emit(
                "checkpoint_depth_warning",
                f"the durable checkpoint is {lag} log generations behind (updates will be "
                f"refused at {limit})",
                lag_generations=lag,
                limit=limit,
            )

    def check_writable(self) -> None:
        """Raise unless updates are accepted now (every commit asks, under the commit lock)."""
        log = self._log
        if (
            self._state is InstanceState.OPEN
            and self.pid == forks.PID
            and log is not None
            and log.failed is None
            and not log.disk_full
            and not self._closing
        ):
            # The common case in a few attribute reads: the checkpoint lag is below the
            # warning threshold, so `_check_depth` would neither warn nor refuse.
            durable = self.durable_checkpoint
            base = durable.generation if durable is not None else self._first_generation
            if log.current_generation - base < self.options.checkpoint_too_deep // 4:
                return
        self._check_writable()

    def _check_writable(self) -> None:
        if self.pid != forks.PID:
            raise self.forked_error()
        if self.state is InstanceState.CLOSED:
            self.check_open()
        if self._closing:
            raise InstanceUnavailable(
                f"instance '{self.directory}' is shutting down; no more updates are accepted",
                hint="close() was called: start no more updates on this instance (open it "
                "again with jetstore.open once it is closed)",
            )
        if self.state is InstanceState.OPEN:
            log = self._log
            log_failure = log.failed if log is not None else None
            if log_failure is None:
                if log is not None and log.disk_full:
                    raise LogDiskFull(
                        f"the log volume of '{self.directory}' is full: the instance runs on its "
                        "reserve log; reads go on, updates are refused",
                        hint="free space on the log volume, then close and reopen the instance; "
                        "no acknowledged commit is lost",
                    )
                self._check_depth()
                return
            self._fail(log_failure)
        if self.state is InstanceState.FAILED:
            failure = self.failure
            reopen = (
                "close the instance and open it again; recovery replays every acknowledged "
                "commit from the log"
            )
            if failure is not None and failure.hint and "open it again" in failure.hint:
                # The failure's own way out already ends in the reopen: said twice, the
                # second would read as a further step.
                hint = failure.hint
            else:
                first = f"{failure.hint.rstrip('. ')}; then " if failure and failure.hint else ""
                hint = first + reopen
            raise InstanceUnavailable(
                "instance "
                f"'{self.directory}' stopped accepting updates after an error: "
                f"{failure.brief() if failure else 'unknown'}",
                hint=hint,
            ) from failure
        self.check_open()

    def commit_interrupted(self, txn_id: int, exc: BaseException) -> None:
        """A commit was interrupted after its record reached the log buffer and before its
        publication ended (`Database.commit_transaction`): stop accepting updates (D9)."""
        self._fail(
            InstanceUnavailable(
                f"the commit of transaction {txn_id} was interrupted ({type(exc).__name__}) "
                "after its log record was written and before the database showed it",
                hint="close the instance and open it again: recovery replays the log, that "
                "commit included",
            )
        )

    def fail(self, error: JetError) -> None:
        """Stop accepting updates after `error` (D9); for engine parts outside this module
        whose own writes of a page file or header failed (a backup's history write)."""
        self._fail(error)

    def _fail(self, error: JetError) -> None:
        if self._state in (InstanceState.OPEN, InstanceState.RECOVERING):
            # Claimed in one step (`dict.setdefault` runs no Python code): two threads that
            # passed the check together (two looks at `state` after the log failed) both
            # recorded the failure and wrote event 102 twice.
            claim = object()
            if self._failing.setdefault("by", claim) is not claim:
                return
            self._failure = error
            self.state = InstanceState.FAILED
            if self._events is not None:
                self._events.emit(
                    "instance_failed",
                    f"instance stopped accepting updates: {error}",
                    error=error.name,
                    code=error.code,
                )

    # ----------------------------------------------------------------- databases

    def database(self, name: str, create: bool = False) -> Database:
        """The attached database `name` (`NAME.edb`); with create=True, create it if absent."""
        self.check_open()
        if type(name) is not str:
            # Before the lookup: an unhashable name would fail it with a bare TypeError.
            raise InvalidParameter(
                f"a database name must be a string, not {type(name).__name__} {name!r}",
                hint="pass the name as str, for example instance.database('main')",
            )
        db = self._databases.get(name)
        if db is not None:
            return db
        if not is_valid_database_name(name):
            raise InvalidParameter(
                f"invalid database name {name!r}",
                hint="use letters, digits, '_' or '-', starting with a letter or '_' "
                "(at most 64 characters)",
            )
        if not create:
            path = os.path.join(self.directory, database_file_name(name))
            recovered = self.recovery
            listed = recovered.checkpoint if recovered is not None else None
            if (
                listed is not None
                and recovered is not None
                and name not in recovered.left  # the log detached it: moved away since
                and any(a.name == name for a in listed.attached)
            ):
                # Its file went missing while the instance was closed: say so, rather than
                # invite create=True, which would make a new, empty database in its place.
                for attached in listed.attached:
                    renamed = self._renamed_database(attached) if attached.name == name else None
                    if renamed is not None:
                        raise DatabaseNotFound(
                            f"database {name!r} was attached when the instance last "
                            f"checkpointed; its file was renamed while the instance was "
                            f"closed and it is attached as {renamed.name!r} "
                            f"('{renamed.file.path}')",
                            hint=f"use instance.database({renamed.name!r}); to give it its "
                            f"old name, close the instance and rename the file back to "
                            f"'{path}'",
                            path=path,
                        )
                raise FileNotFound(
                    f"database {name!r} was attached when the instance last checkpointed "
                    f"({CHECKPOINT_FILE} lists it), but its file '{path}' is missing",
                    hint="close the instance, put the database file back and open it again; "
                    "create=True would make a new, empty database under that name",
                    path=path,
                )
            raise DatabaseNotFound(
                f"instance '{self.directory}' has no database {name!r} "
                f"(databases: {', '.join(sorted(self._databases)) or 'none'})",
                hint="pass create=True to create it",
                path=path,
            )
        with self.commit_lock:
            self.check_writable()
            if name in self._databases:
                return self._databases[name]
            if name in self._attaching:
                # Its file may be in the directory already: creating it would fail the
                # instance (the file exists), or the attach's move would replace it.
                raise DatabaseDuplicate(
                    f"database {name!r} is being attached to instance '{self.directory}'",
                    hint="wait for the attach to end, then open the database without create",
                    path=os.path.join(self.directory, database_file_name(name)),
                )
            target = os.path.join(self.directory, database_file_name(name))
            if self.fs.exists(target):
                # Before the creation record: once it is logged, meeting the file fails the
                # instance (D9), every database with it.
                raise self._unattached_file(
                    target,
                    f"attach it to use the database it holds (instance.attach('{target}')), "
                    "or move it out of the instance directory to create a new, empty one",
                )
            self._refuse_beyond_the_checkpoint_list(name)
            db_id = max((d.db_id for d in self._databases.values()), default=0) + 1
            signature = Signature.new()
            record = CreateDatabaseRecord(
                db_id, self.options.page_size, signature.random, signature.time_us, name
            )
            end = self.log.append(
                encode_create_database(
                    db_id,
                    record.page_size,
                    record.signature_random,
                    record.signature_time_us,
                    name,
                )
            )
            # The creation is durable in the log before the file exists: if the file is
            # lost in a crash, recovery re-creates it from the record.
            self.wait_durable(end)
            try:
                # A failure from here on fails the instance (D9): the log says the database
                # exists while this instance has none, and the file may be half made (its
                # name not synced): serving on, each create=True logged the name again and
                # met the file. Reopening re-creates it from the record.
                db = self.create_database_file(record)
                db.file.write_header(
                    # The newest generation on disk, not the log's current one: a roll of
                    # another thread (a backup's `log.roll()`) may have closed it in memory
                    # only, and a header requiring a generation a crash leaves unwritten
                    # makes recovery refuse (RequiredLogFilesMissing) with nothing lost. That
                    # roll's flush raises the header itself (`_on_roll`: the database is
                    # attached already); raised, never lowered, should it have done so.
                    raise_max_required=self.log.durable_position.generation,
                    state=DatabaseState.DIRTY,
                    log_signature=self.log.signature,
                    checkpoint_position=end,
                    generation_min_required=end.generation,
                    generation_max_committed=end.generation,
                    last_attach_position=end,
                    last_attach_time=now_us(),
                )
            except JetError as exc:
                self._fail(exc)
                raise
            db._published = (None, end, 0)
            db.file.point_index.reset(None)
        self.events.emit("database_created", f"database {name!r} created", database=name)
        return db

    def databases(self) -> list[str]:
        return sorted(self._databases)

    def _refuse_beyond_the_checkpoint_list(self, name: str) -> None:
        """Refuse a new database `name` (under the commit lock, before anything is logged)
        when the checkpoint file could not list it with the attached ones: the next
        checkpoint would fail the instance, and every open after it, replaying the creation,
        would fail the same way."""
        listed = [
            AttachedDatabase(db.db_id, db.name, Signature.NONE) for db in self._databases.values()
        ]
        listed.append(AttachedDatabase(0, name, Signature.NONE))
        size = attached_size(listed)
        if size > ATTACH_AREA_SIZE:
            raise TooManyOpenDatabases(
                f"instance '{self.directory}' cannot take database {name!r}: the checkpoint "
                f"file ({CHECKPOINT_FILE}) lists every attached database in {ATTACH_AREA_SIZE} "
                f"bytes (30 plus the name's length each), and {len(listed)} databases with "
                f"these names need {size}",
                hint="detach a database the instance no longer needs, or give this one a "
                "shorter name",
            )

    def detach(self, name: str) -> str:
        """Detach database `name`: it is checkpointed, marked clean and bound to no log stream,
        so it needs no log of this instance any more and may be attached to another instance
        (`Instance.attach`). Returns the path of its file (it stays where it is).
        """
        self.check_writable()
        if isinstance(name, str) and is_valid_database_name(name) and name not in self._databases:
            # Not `database`'s refusal, whose way out is to create the database.
            raise DatabaseNotFound(
                f"instance '{self.directory}' has no database {name!r} to detach "
                f"(databases: {', '.join(sorted(self._databases)) or 'none'})",
                hint="check the name: Instance.databases() lists the attached databases",
                path=os.path.join(self.directory, database_file_name(name)),
            )
        db = self.database(name)
        self._refuse_during_backup("detach", name)
        if db.active_transactions():
            raise DatabaseInUse(
                f"database {name!r} has {db.active_transactions()} open transaction(s)",
                hint="commit or roll back every transaction of the database, then detach it",
            )
        for _attempt in range(5):
            self.checkpoint_out_of_reach()  # everything committed reaches its page file
            if db.closed or db.position <= db.file.header.checkpoint_position:
                break  # no commit since: the checkpoint's tree is the whole database
        # The backup lock around the removal: a backup registered before it sees the
        # database attached and is refused here; one registered after it finds it gone.
        # The checkpoint lock too: a checkpoint of another thread (the background one) that
        # planned this database would otherwise write its pages and dirty header into the
        # file after its clean header, or into the closed file (failing the instance).
        with self._holding_checkpoint_lock(), self._backup_lock, self.commit_lock:
            if db.closed:
                # Detached by another thread meanwhile: its clean header names no checkpoint
                # position, which the check below took for commits that came in.
                db._refuse_closed()
            self._refuse_during_backup("detach", name, locked=True)
            # Again under the commit lock: a close that began during the checkpoints above
            # (its `_closing` step) must not see a DETACH record logged after its final
            # checkpoint, or into a log it closed.
            self.check_writable()
            if db.active_transactions():
                raise DatabaseInUse(f"database {name!r} got a new transaction while detaching")
            if db.position > db.file.header.checkpoint_position:
                # A transaction committed after the last checkpoint: the clean header below
                # names the checkpoint's tree, which does not hold it, and the detached file
                # is never replayed from this log again: the acknowledged commit would be lost.
                raise DatabaseInUse(
                    f"database {name!r} received commits while it was being detached",
                    hint="stop the updates of the database, then detach it again",
                )
            clean: dict[str, Any] = dict(
                state=DatabaseState.CLEAN,
                log_signature=Signature.NONE,
                checkpoint_position=LogPosition.MIN,
                generation_min_required=0,
                generation_max_required=0,
                last_consistent_position=db.position,
                last_consistent_time=now_us(),
                # Its backup history names generations of this stream only.
                **NO_BACKUP_HISTORY,
            )
            # An interrupt (Ctrl-C) the detach completes despite, raised once it is done.
            interrupted: BaseException | None = None
            try:
                try:
                    db.file.write_header(**clean)
                except Exception:
                    raise
                except BaseException as exc:
                    # Most often in its sync: written again, the header's state is known
                    # (as the log writer makes an interrupted flush again).
                    interrupted = exc
                    db.file.write_header(**clean)
                # Logged after the final checkpoint and the clean header, durable before
                # detach returns: records of its id after this one belong to whatever
                # database gets the id next, and a roll-forward of an older image of this
                # database stops applying them here (see `RecordMatcher`).
                signature = db.file.header.db_signature
                detached_at = self.log.append(
                    encode_detach_database(db.db_id, signature.random, signature.time_us, name)
                )
                try:
                    self.wait_durable(detached_at)
                except Exception:
                    raise
                except BaseException as exc:
                    # The log writer completes a flush interrupted while it wrote or synced
                    # and raises the interrupt after it: the record is durable then, and the
                    # detach done (it used to fail the instance all the same).
                    log = self.log
                    if log.failed is not None or log.durable_position < detached_at:
                        raise
                    interrupted = interrupted or exc
            except JetError as exc:
                self._fail(exc)
                raise
            except BaseException as exc:
                # Interrupted (Ctrl-C) after the clean header or the DETACH record may have
                # been written, and not known to be done: serving the database on would log
                # its commits after its detach, and recovery would refuse them
                # (AttachedDatabaseMismatch). Stop accepting updates (D9); the reopen
                # settles it from the log.
                self._fail(
                    InstanceUnavailable(
                        f"the detach of database {name!r} was interrupted "
                        f"({type(exc).__name__}) while it wrote its clean header and its "
                        "detach record",
                        hint="close the instance and open it again: recovery replays every "
                        "acknowledged commit from the log, and the database is attached or "
                        "detached as the log says",
                    )
                )
                raise
            del self._databases[name]
            path = db.file.path
            # Each step whatever interrupts the other: a Ctrl-C as the transactions ended
            # left the detached file open and locked until the instance closed.
            release_all(db.close_transactions, db.file.close)
        # Said before the checkpoint, as attach does: the database is detached from here on
        # (clean header, DETACH record durable), even if that checkpoint is interrupted.
        self.events.emit("database_detached", f"database {name!r} detached", database=name)
        if interrupted is not None:
            raise interrupted  # the next checkpoint drops it from the checkpoint file
        # The checkpoint file no longer lists it.
        self._checkpoint_after(
            f"database {name!r} is detached (its clean header and its DETACH record are "
            f"durable; its file is '{path}')"
        )
        return path

    def _checkpoint_after(self, done: str) -> None:
        """The checkpoint that ends an attach or detach (`done` says what is done already):
        the checkpoint file then lists the databases as they are.

        A close of another thread that landed before it (its final checkpoint did, or
        does, what this one would; a simulated crash leaves it to recovery, which the log
        and the headers tell) is no failure of the attach or detach: it used to raise
        InstanceUnavailable ("closed"), and its caller took a change made for one refused.
        Any other error is raised saying what is done.
        """
        try:
            self.checkpoint_out_of_reach()
        except JetError as exc:
            if self.state is InstanceState.CLOSED or self._closing:
                return
            raise type(exc)(
                f"{done}, but the checkpoint after it failed: {exc.detail}",
                hint=exc.hint,
                path=exc.path,
            ) from exc

    def attach(self, path: str | os.PathLike[str]) -> Database:
        """Attach a cleanly shut down database file: it is moved into the instance directory
        (same file system), gets an id in this instance and joins its log stream.

        A database that was not shut down cleanly is refused (`DatabaseDirtyShutdown`): its
        changes are in the logs of the instance it came from; recover it there first.
        """
        self.check_writable()
        source = absolute_path(path, what="database file")
        file_name = os.path.basename(source)
        name = parse_database_file_name(file_name)
        if name is None:
            raise InvalidParameter(
                f"'{source}' is not a database file name (NAME.edb)",
                hint="the file must be named NAME.edb, NAME of letters, digits, '_' or '-' "
                "starting with a letter or '_' (at most 64 characters): rename it (the "
                "database takes that name here), then attach it",
                path=source,
            )
        if self.fs.is_symbolic_link(source):
            # The rename would move the link, not the file: the data stayed outside the
            # directory (its old place removed, the database was gone), or a relative link
            # broke on the way.
            real = os.path.realpath(source)
            raise InvalidPath(
                f"'{source}' is a symbolic link (to '{real}'): attach moves the database file "
                "itself into the instance directory, and would move only the link",
                hint=f"attach the file the link points to ('{real}'; rename it NAME.edb for "
                "another name), or replace the link with that file",
                path=source,
            )
        from jetstore.backup.backupset import refuse_backup_set

        # An image of a set is dirty by design: refused as such, its way out would be
        # "recover it with the logs of its instance", not the restore of the set.
        refuse_backup_set(self.fs, os.path.dirname(source), what="attaching one of its images")
        # The name is taken under the lock a creation holds, for the whole attach: two
        # attaches of one name (or of one file) both found NAME.edb free, and the second
        # rename replaced the file the first had moved there (or the loser "moved back" the
        # winner's file); a creation made the file between the check and the move.
        token = object()
        try:
            with self.commit_lock:
                attached = self._databases.get(name)
                if attached is not None and (
                    os.path.abspath(attached.file.path) == source
                    # The same file through another path (a directory link, `..`).
                    or self.fs.file_identity(attached.file.path)
                    == self.fs.file_identity(source)
                    is not None
                ):
                    raise DatabaseDuplicate(
                        f"'{source}' is database {name!r} of instance '{self.directory}', "
                        "attached already",
                        hint=f"use it: instance.database({name!r})",
                        path=source,
                    )
                if name in self._databases or self._attaching.setdefault(name, token) is not token:
                    raise DatabaseDuplicate(
                        f"instance '{self.directory}' already has a database {name!r}"
                        f"{'' if name in self._databases else ' (being attached)'}",
                        hint=f"detach that database first, or attach '{source}' under another "
                        "name (rename the file, NAME.edb)",
                        path=source,
                    )
            return self._attach_file(source, name)
        finally:
            release_all(functools.partial(self._end_attaching, name, token))

    @staticmethod
    def _unattached_file(path: str, hint: str) -> DatabaseDuplicate:
        """The refusal of a name whose file is in the directory but not attached."""
        return DatabaseDuplicate(
            f"'{path}' already exists, a file no database of the instance has open "
            "(not attached: a database detached here, or a file put there meanwhile)",
            hint=hint,
            path=path,
        )

    def _end_attaching(self, name: str, token: object) -> None:
        if self._attaching.get(name) is token:
            del self._attaching[name]

    def _attach_file(self, source: str, name: str) -> Database:
        """`attach` of `source` under `name`, which it has taken (`_attaching`)."""
        self._refuse_during_backup("attach", name)
        # Another name of a file attached here (a link) met the lock this very instance
        # holds, refused as "in use by" it with "close that instance first".
        identity = self.fs.file_identity(source)
        for attached, db in list(self._databases.items()):
            if identity is not None and self.fs.file_identity(db.file.path) == identity:
                raise DatabaseDuplicate(
                    f"'{source}' is database {attached!r} of this instance "
                    f"('{db.file.path}') under another name (a hard link or symbolic link)",
                    hint=f"it is attached already: use instance.database({attached!r})",
                    path=source,
                )
        target = os.path.join(self.directory, database_file_name(name))
        # Read-only but locked: a file another instance has open (its own, or one it reaches
        # through a link) is refused here, before it is moved (FileAccessDenied). The lock
        # is dropped with the probe; the writable open below takes it again, and a file
        # locked in between is refused there and moved back. Opened under a sub-owner of
        # its own, closed whatever happens: a Ctrl-C as the open returned, before `probe`
        # was assigned, left the file open and locked until the instance closed (a retried
        # attach was refused, the lock's holder being this instance).
        probe_owner = use_owner(self.owner)
        probe: DatabaseFile | None = None
        try:
            probe = self.open_database_file(source, writable=False, lock=True, owner=probe_owner)
            header = probe.header
        finally:
            release_all(
                probe.close if probe is not None else None,
                lambda: self.registry.close_owner(probe_owner),
            )
        if header.state is not DatabaseState.CLEAN:
            raise DatabaseDirtyShutdown(
                f"database '{source}' is in state {header.state.name.lower()}, not clean",
                hint="recover it with the log files of the instance it belongs to "
                "(`jetstore recover DIR`), then attach it",
                path=source,
            )
        if source != target and self.fs.exists(target):
            raise self._unattached_file(
                target,
                f"move '{target}' out of the instance directory (or attach it: "
                f"instance.attach('{target}')), or rename '{source}' to attach it under "
                "another name",
            )
        # Before the file moves (checked again under the lock): refused after it, the file
        # went into the instance directory and back, and a crash in between left it there,
        # to join the instance at the next open.
        with self.commit_lock:
            self._refuse_beyond_the_checkpoint_list(name)
        # The header written below requires the log's current generation, so that generation
        # must be on disk first: a lazy commit may have closed the previous one in memory
        # only, and a crash before the roll would leave a database requiring a generation
        # that never existed (the instance would refuse to start with nothing lost). Flushed
        # before the file moves, so that a failure here leaves it where it was.
        self.wait_durable(self.log.end_position)
        header_written = False
        interrupted: BaseException | None = None
        file: DatabaseFile | None = None
        # Its handles under a sub-owner, closed on failure: `file` is None still when a
        # Ctrl-C lands as the open returns (as for the probe).
        file_owner = use_owner(self.owner)
        try:
            if source != target:
                # Inside the try: a failed sync of either directory puts the file back too,
                # instead of leaving it where the next open would attach it silently.
                self.fs.rename(source, target)
                self.fs.fsync_directory(self.directory, owner=self.owner)
                self.fs.fsync_directory(os.path.dirname(source), owner=self.owner)
            # Inside the try: a refused open (another opener locked the file since the probe)
            # moves the file back like any other failure before its header is written. A
            # damaged header copy is not repaired here: the attach's own header write below
            # rewrites both copies, and a refused attach leaves the file as it was.
            file = self.open_database_file(target, owner=file_owner, repair=False)
            with self._backup_lock, self.commit_lock:
                self._refuse_during_backup("attach", name, locked=True)
                self.check_writable()
                self._refuse_beyond_the_checkpoint_list(name)
                db_id = max((d.db_id for d in self._databases.values()), default=0) + 1
                # The binding of the id to this database is logged and durable before the
                # database is usable (and before its header names this stream): records of
                # the id from here on are its own (see `RecordMatcher`). Its header's
                # checkpoint is just after the record.
                signature = file.header.db_signature
                end = self.log.append(
                    encode_attach_database(db_id, signature.random, signature.time_us, name)
                )
                self.wait_durable(end)
                header_written = True  # from here on the file may carry this instance's header
                bound: dict[str, Any] = dict(
                    state=DatabaseState.DIRTY,
                    db_id=db_id,
                    log_signature=self.log.signature,
                    checkpoint_position=end,
                    generation_min_required=end.generation,
                    generation_max_required=self.log.current_generation,
                    last_attach_position=end,
                    last_attach_time=now_us(),
                    name=name,
                    # Joining this stream: a history of the stream it left (a clean shutdown
                    # there keeps it; a detach clears it) named backups and generations that
                    # are not this stream's, which an incremental backup would "follow".
                    **NO_BACKUP_HISTORY,
                )
                try:
                    file.write_header(**bound)
                except Exception:
                    raise
                except BaseException as exc:
                    # An interrupt (Ctrl-C, most often in its sync): written again, the
                    # header's state is known, as the log writer makes an interrupted flush
                    # again; the attach completes and the interrupt follows (it used to
                    # fail the instance). A second one fails it below.
                    interrupted = exc
                    file.write_header(**bound)
                db = Database(self, name, db_id, file, end)
                self._databases[name] = db
        except BaseException as exc:
            registered = self._databases.get(name)
            if (
                not isinstance(exc, Exception)
                and file is not None
                and registered is not None
                and registered.file is file
            ):
                # Interrupted (Ctrl-C) once the database was attached, as the locks were
                # released: the attach is done and the database serves. Closing its file
                # and failing the instance left it listed with its file closed.
                db = registered
                interrupted = interrupted or exc
            else:
                self._undo_attach(exc, file, file_owner, source, target, header_written)
                raise
        # The header write above rewrote a damaged copy from the good one: said as an open
        # says it (event 132).
        for problem in file.problems:
            self.events.emit("database_header_repaired", problem, database=name, path=file.path)
        # Said before the checkpoint: the database is attached and serves from here on (its
        # header and ATTACH record are durable), even if that checkpoint is interrupted.
        self.events.emit(
            "database_attached",
            f"database {name!r} attached from '{source}'",
            database=name,
            db_id=db.db_id,
            path=db.file.path,
        )
        if interrupted is not None:
            raise interrupted  # the next checkpoint lists it in the checkpoint file
        # The checkpoint file lists it.
        self._checkpoint_after(
            f"database {name!r} is attached from '{source}' (its ATTACH record and its "
            f"header are durable; its file is '{db.file.path}')"
        )
        return db

    def _undo_attach(
        self,
        exc: BaseException,
        file: DatabaseFile | None,
        file_owner: str,
        source: str,
        target: str,
        header_written: bool,
    ) -> None:
        """What an attach that failed or was interrupted (`exc`) before it was done leaves:
        its file closed, and put back where it came from, or the instance failed once the
        header may bind it to this stream."""
        release_all(
            file.close if file is not None else None,
            lambda: self.registry.close_owner(file_owner),
        )
        if header_written:
            # The file may carry this stream's dirty header now (a failed sync leaves
            # its first copy unknown), requiring generations no checkpoint of this
            # instance protects: serving on, circular logging would delete them and the
            # next open refuse the instance (D9, as for every header write).
            self._fail(
                exc
                if isinstance(exc, JetError)
                else InstanceUnavailable(
                    f"attaching '{target}' was interrupted ({type(exc).__name__}) while "
                    "it wrote the database header",
                    hint="close the instance and open it again: recovery replays every "
                    "acknowledged commit from the log",
                    path=target,
                )
            )
        elif source != target:
            # Still the clean file it was: put it back, so that the next open of this
            # instance does not find a foreign database in its directory.
            with contextlib.suppress(JetError):
                self.fs.rename(target, source)
                self.fs.fsync_directory(os.path.dirname(source), owner=self.owner)
                self.fs.fsync_directory(self.directory, owner=self.owner)

    def _refuse_during_backup(self, action: str, name: str, *, locked: bool = False) -> None:
        """`BackupInProgress` (-505) if a backup session runs: `attach` and `detach` wait for
        it (as ESE's do).

        Invariant: the databases of a running backup stay the databases of the instance until
        it ends. A backup holds each database's image and the log from the image's checkpoint
        on, and log records name a database only by its id: a database detached while the
        backup ran had its pinned pages reused (the backup then failed calling the database
        damaged), and one attached meanwhile (its id maybe the detached one's) put records
        in the backup's logs that its restore either refused (no file has that id) or
        replayed into the wrong database. `locked`: the caller holds `_backup_lock`, so no
        backup can start until its change of the database list is made.
        """
        if not locked:
            self._release_dropped_backup()
        if locked:
            hold = self._backup
        else:
            with self._backup_lock:
                hold = self._backup
        if hold is None:
            return
        raise BackupInProgress(
            f"cannot {action} database {name!r} of '{self.directory}' while "
            f"{hold.kind.value} backup {hold.id} runs: the backup copies the databases "
            "attached when it began and the log records of each, by database id",
            hint=f"wait for the backup to complete (or abort it), then {action} the database",
        )

    def attached_databases(self) -> list[Database]:
        return [self._databases[name] for name in sorted(self._databases)]

    # ----------------------------------------------------------------- commit support

    def note_commit(self, nbytes: int, dirtied_bytes: int = 0) -> None:
        """A commit of `nbytes` of log changed the dirty pages by `dirtied_bytes` (under the
        commit lock): the background checkpoint starts at `checkpoint_depth` bytes of log or
        at half of `cache_size` of dirty pages, whichever comes first."""
        self.commits += 1
        self._bytes_since_checkpoint += nbytes
        self._dirty_bytes += dirtied_bytes
        if (
            self._bytes_since_checkpoint >= self.options.checkpoint_depth
            or self._dirty_bytes >= self.options.cache_size // 2
        ) and not self._wake_pending:
            self._wake_pending = True  # one wake a round, not one a commit until it runs
            self._inbox.put(None)

    def _lag_due(self) -> bool:
        """A checkpoint is due because the log ran an eighth of `checkpoint_too_deep`
        generations past the durable checkpoint. `checkpoint_depth` counts bytes and may be
        far more than that many generations (small log files, one large transaction):
        without this, updates were refused at the limit (`_check_depth`) with a writable
        checkpoint file until `checkpoint_interval` passed. Not while the checkpoint file
        cannot be written: the background thread retries that once a second. Asked at each
        flush that rolled (`_on_roll`), where the lag grows, not at every commit."""
        return self.checkpoint_file_error is None and self.checkpoint_lag_generations() >= max(
            1, self.options.checkpoint_too_deep // 8
        )

    def wake_background(self) -> None:
        """Wake the background thread for a round now (safe from a finalizer: one reentrant
        queue put, no lock)."""
        self._inbox.put(None)

    def write_back(self) -> None:
        """Back-pressure, called by a committer holding no lock: while the dirty pages reach
        `cache_size` (the background checkpoint started at half of it and has not caught up,
        or one commit dirtied that much), checkpoint before returning, as ESE's writers wait
        for the cache to be written back. Not within a `checkpoint_guard` of this thread.
        A failed checkpoint fails the instance (D9) as a background one does; the commit
        itself succeeded and returns normally."""
        if self._dirty_bytes < self.options.cache_size:
            return
        if self._checkpoint_holder == threading.get_ident():
            return
        self._checkpoint(final=False, raise_errors=False, write_back=True)

    def wait_durable(self, position: LogPosition) -> None:
        try:
            self.log.wait_durable(position)
        except JetError as exc:
            self._fail(exc)
            raise

    def _on_disk_full(self, reserve: int) -> None:
        self.events.emit(
            "log_disk_full",
            f"the log volume is full: reserve log {reserve} is in use; updates are refused "
            "until space is freed and the instance reopened (reads go on)",
            reserve=reserve,
        )

    def _on_roll(self, first: int, last: int) -> None:
        """Called by the log writer after a flush that started generations `first`..`last`,
        once its bytes are synced and before any commit in it is acknowledged.

        Every database header learns that logs up to `last` may hold its commits, so an
        acknowledged commit always lies in a generation its header requires: losing the newest
        log files is then detected (`RequiredLogFilesMissing`), never silent (D8). A failure
        here fails the flush (the commits waiting on it are not acknowledged).
        """
        self._generation_named = True
        for db in list(self._databases.values()):
            # Not a clean header: it needs no log (detach wrote it clean and bound to no
            # stream, and its DETACH record may be what started the generation, or a detach
            # of another thread writes it now): a required generation of this stream in it
            # would follow the file into another instance's stream, which then refuses to
            # start after a crash (RequiredLogFilesMissing).
            db.file.write_header(raise_max_required=last, unless_clean=True)
        for generation in range(first, last + 1):
            self.events.emit(
                "log_generation_started",
                f"log generation {generation} started",
                generation=generation,
            )
        self._check_log_disk_space()
        if self._lag_due():
            self.wake_background()

    def _check_log_disk_space(self) -> None:
        """Warn (event 144, once until space comes back) when the log volume runs low, so
        an operator can act before the reserve logs are needed (event 143)."""
        files = self.options.log_disk_low_files
        if files == 0:
            return
        threshold = files * self.options.log_file_size
        try:
            free = self.fs.free_bytes(self.directory)
        except JetError:
            return  # the warning is advice; the log write itself reports real trouble
        self.log_disk_free_bytes = free
        if free < threshold and not self._disk_low_warned:
            self._disk_low_warned = True
            self.events.emit(
                "log_disk_low",
                f"the log volume of '{self.directory}' has {free} bytes free, less than "
                f"{files} log files ({threshold} bytes); when it fills up the instance runs "
                "on its reserve logs and refuses updates",
                free_bytes=free,
                threshold_bytes=threshold,
            )
        elif free >= threshold:
            self._disk_low_warned = False

    # ----------------------------------------------------------------- checkpoint

    def checkpoint(self, *, final: bool = False) -> LogPosition | None:
        """Write every database's changes up to now to its page file, then the headers, then
        the checkpoint file. Returns the durable checkpoint position afterwards.

        A failed page or header write raises (and the instance stops accepting updates, D9);
        a checkpoint file that cannot be written does not (the durable value stays, event 121).
        A closed instance (by another thread too) is `InstanceUnavailable`: it returned the
        last durable position as if it had written a checkpoint.
        """
        self.check_open()
        if self.state is InstanceState.FAILED:
            self.check_writable()  # raises: say why the instance stopped
        return self._checkpoint(final=final, raise_errors=True)

    def checkpoint_out_of_reach(self) -> None:
        """`checkpoint()` by a thread of its own (`run_out_of_reach`), for the checkpoints of
        attach, detach and a backup's start: a Ctrl-C meant for them lands in the wait and is
        raised once the checkpoint completed. Interrupted itself, a checkpoint fails the
        instance (its plan gave pages that were never written, `_checkpoint`): a Ctrl-C that
        cancelled a detach stopped the whole instance accepting updates."""
        _position, interrupted = run_out_of_reach(
            self.registry, self.owner, "jetstore-checkpoint", self.checkpoint
        )
        if interrupted is not None:
            raise interrupted

    def _checkpoint(
        self, *, final: bool, raise_errors: bool, write_back: bool = False
    ) -> LogPosition | None:
        with self._holding_checkpoint_lock():
            if self.state is not InstanceState.OPEN:
                return self.durable_checkpoint
            if self._closing and not final:
                # close() runs the final checkpoint (or ran it: the files are being released).
                # Another one after it would write every header dirty again behind a clean
                # shutdown (or write into the files being closed).
                return self.durable_checkpoint
            if write_back:
                if self._dirty_bytes < self.options.cache_size:
                    return self.durable_checkpoint  # a checkpoint wrote them meanwhile
                self.write_backs += 1
            try:
                self._checkpoint_locked(final)
            except JetError as exc:
                self._fail(exc)
                if raise_errors:
                    raise
            except BaseException as exc:
                # Interrupted (KeyboardInterrupt from a signal handler, MemoryError) once the
                # plan may have given dirty nodes page numbers: the next checkpoint takes
                # them as written and names pages never written (a clean close left a
                # database that no longer opened). Stop accepting updates (D9); reopening
                # replays the log from the last durable header.
                self._fail(
                    InstanceUnavailable(
                        f"a checkpoint was interrupted ({type(exc).__name__}) while it wrote "
                        "the database files",
                        hint="close the instance and open it again: recovery replays every "
                        "acknowledged commit from the log",
                    )
                )
                raise
            return self.durable_checkpoint

    @contextmanager
    def _holding_checkpoint_lock(self) -> Iterator[None]:
        with self._checkpoint_lock:
            self._checkpoint_holder = threading.get_ident()
            try:
                yield
            finally:
                self._checkpoint_holder = None

    def _checkpoint_locked(self, final: bool) -> None:
        log = self.log
        with self.commit_lock:
            position = log.end_position
            plans: list[tuple[Database, CheckpointPlan]] = []
            for db in self._databases.values():
                plan = db.file.plan_checkpoint(db.root, position)
                if plan.dirty:
                    db.bump_plan_epoch()
                plans.append((db, plan))
            self._bytes_since_checkpoint = 0
            self._dirty_bytes = 0  # every dirty node has its page now
        self.candidate_checkpoint = position
        self._last_checkpoint_time = time.monotonic()
        log.wait_durable(position)  # WAL rule: the log first, then the pages
        # A database file or the current log deleted, moved or replaced behind the instance's
        # back takes every later write with it, silently (the open descriptor still works):
        # stop here, loudly (D9, D13), while the open files and the log still hold the data.
        # Two system calls per file per checkpoint; the commit path is not checked.
        for _db, _plan in plans:
            _db.file.check_path()
        log.check_current_file()
        for _db, plan in plans:
            _db.file.write_checkpoint_pages(plan)
        # The generation of the checkpoint's position, which the wait above made durable
        # (the log rolled to it on disk), not the log's current one: a commit appended since
        # may have closed that generation in memory only, and a header requiring a
        # generation a crash can leave unwritten would make recovery refuse the instance
        # (RequiredLogFilesMissing) with nothing acknowledged lost. Later generations are
        # required by the flushes that create them (`_on_roll`).
        generation = position.generation
        signature = log.signature
        self._generation_named = True  # the headers (then edb.chk) may name it from here on
        for db, plan in plans:
            header = db.file.header
            changes: dict[str, Any] = {
                "db_id": db.db_id,  # new only for a joining database: `_renumber_joining_databases`
                "log_signature": signature,
                "generation_max_committed": max(
                    header.generation_max_committed, db.position.generation
                ),
            }
            if final:
                changes.update(
                    state=DatabaseState.CLEAN,
                    generation_min_required=0,
                    generation_max_required=0,
                    last_consistent_position=position,
                    last_consistent_time=now_us(),
                )
            else:
                changes.update(
                    state=DatabaseState.DIRTY,
                    generation_min_required=position.generation,
                )
                if header.state is not DatabaseState.DIRTY:
                    changes.update(last_attach_position=position, last_attach_time=now_us())
            raise_to: int | None = None if final else generation
            if header.log_signature != signature:
                # Joining, its backup history is the stream's it left (as for `attach`).
                changes.update(NO_BACKUP_HISTORY)
            if not final and header.log_signature != signature:
                # Joining this stream (a clean file put into the directory): whatever its
                # header says it required belongs to the stream it left, and raised into
                # this one it would require generations that never existed here.
                changes["generation_max_required"] = generation
                raise_to = None
            db.file.header_for_plan(plan, raise_max_required=raise_to, **changes)
        for db, plan in plans:
            db.file.finish_checkpoint(plan, db.oldest_snapshot())
        self.checkpoints += 1
        self._write_checkpoint_file(position)
        self.events.emit(
            "checkpoint_written",
            f"checkpoint at log position {position}"
            + ("" if self.checkpoint_file_error is None else " (checkpoint file not updated)"),
            position=str(position),
            pages=sum(plan.pages_written for _db, plan in plans),
            final=final,
        )

    def _write_checkpoint_file(self, position: LogPosition) -> None:
        """Write both copies of `edb.chk`; the durable checkpoint moves only on success.

        Databases it cannot list (a directory an older jetstore filled, recovered by this
        open: creating or attaching one more is refused) are `TooManyOpenDatabases` saying
        which files to move out, not the encoder's `InvalidParameter`. After a final
        checkpoint (every header clean) the file is written first, listing all but those
        files: the next open starts at this position, so that the files moved out are not
        created again by the replay of their creation."""
        too_many = too_many_to_list(self.directory, list(self._databases))
        if too_many is not None:
            if all(db.file.header.state is DatabaseState.CLEAN for db in self._databases.values()):
                self._write_checkpoint_file_listing(
                    position, omit=set(names_to_move_out(list(self._databases)))
                )
            raise too_many
        self._write_checkpoint_file_listing(position)

    def _write_checkpoint_file_listing(
        self, position: LogPosition, *, omit: Collection[str] = ()
    ) -> None:
        path = os.path.join(self.directory, CHECKPOINT_FILE)
        previous = self._checkpoint_seq
        state = CheckpointState(
            seq=previous + 1,
            log_signature=self.log.signature,
            checkpoint_position=position,
            written_time=now_us(),
            circular_logging=self.options.circular_logging,
            log_file_size=self.options.log_file_size,
            page_size=self.options.page_size,
            attached=tuple(
                AttachedDatabase(db.db_id, db.name, db.file.header.db_signature)
                for db in sorted(self._databases.values(), key=lambda d: d.db_id)
                if db.name not in omit
            ),
        )
        encoded = encode_checkpoint_copy(state)
        try:
            created = not self.fs.exists(path)
            with self.fs.opened(path, owner=self.owner, create=created) as file:
                file.pwrite(encoded, 0)
                file.fdatasync()
                file.pwrite(encoded, len(encoded))
                file.fdatasync()
            if created:
                self.fs.fsync_directory(self.directory, owner=self.owner)
        except JetError as exc:
            now = time.monotonic()
            if (
                self.checkpoint_file_error is None
                or now - self._checkpoint_error_reported >= self.options.checkpoint_warning_interval
            ):
                self._checkpoint_error_reported = now
                self.events.emit(
                    "checkpoint_file_write_failed",
                    f"cannot write the checkpoint file: {exc.brief()}; the durable checkpoint "
                    f"stays at {self.durable_checkpoint} and no log it names will be deleted "
                    f"(checkpoint lag {self.checkpoint_lag_generations()} generation(s))"
                    f"{_what_to_do(exc)}",
                    error=exc.name,
                    code=exc.code,
                    path=path,
                    lag_generations=self.checkpoint_lag_generations(),
                )
            self.checkpoint_file_error = exc
            return
        if self.checkpoint_file_error is not None:
            self.events.emit(
                "checkpoint_file_write_recovered",
                f"the checkpoint file is writable again; checkpoint at {position}",
                path=path,
            )
        self.checkpoint_file_error = None
        self._checkpoint_seq = state.seq
        self.durable_checkpoint = position
        self._depth_warned = False
        if self.options.circular_logging:
            self._delete_old_logs()

    def _deletion_limit(self, *, margin: int | None = None) -> DeletionLimit:
        durable = self.durable_checkpoint
        backup = self._backup
        extra: dict[str, int] = {} if margin is None else {"margin": margin}
        # A copy taken in one step (`list` of a dict view runs no Python code): called with
        # the checkpoint lock only, while an attach may add to the table under the commit
        # lock, and iterating the live view then raised RuntimeError (dictionary changed
        # size), which failed the checkpoint and the instance.
        databases = list(self._databases.values())
        return deletion_limit(
            checkpoint_file_generation=None if durable is None else durable.generation,
            header_generations=[
                (db.name, db.file.header.checkpoint_position.generation) for db in databases
            ],
            backup_generation=backup.first_generation if backup is not None else None,
            **extra,
        )

    def _archived_generations(self) -> list[int]:
        present = []
        for name in self.fs.listdir(self.directory):
            generation = parse_generation_log_name(name)
            if generation is not None:
                present.append(generation)
        return present

    def _delete_old_logs(self) -> None:
        """Circular logging: delete the closed generations no durable state needs any more.

        Runs only right after the checkpoint file was written and synced (the durable value
        just moved), ascending, stopping at the first failure; see `jetstore.log.policy`.
        """
        limit = self._deletion_limit()
        victims, deleted, error = self._delete_below(limit)
        if not victims and error is None:
            return
        if error is not None and self.log_delete_error is None:
            self.events.emit(
                "log_delete_failed",
                f"circular logging {_deletion_failure(victims, deleted, error)}; the next "
                f"checkpoint tries again{_what_to_do(error)}",
                error=error.name,
            )
        self.log_delete_error = error
        if deleted:
            self._report_deleted("circular logging", deleted, limit.keep_from, limit.reason)

    def _delete_below(self, limit: DeletionLimit) -> tuple[list[int], list[int], JetError | None]:
        """Housekeeping after a durable checkpoint or a completed backup, never raising: the
        closed generations below `limit` found in the directory, those of them deleted
        (`_unlink_generations`), and the error that stopped it; a directory that cannot be
        listed deletes nothing (no victims, and the error)."""
        try:
            victims = deletable(self._archived_generations(), limit)
        except JetError as exc:
            return [], [], exc
        deleted, error = self._unlink_generations(victims)
        return victims, deleted, error

    def _unlink_generations(self, victims: list[int]) -> tuple[list[int], JetError | None]:
        """Delete closed generations in ascending order, stopping at the first failure, so
        what remains is always a contiguous run up to the current log, then sync the
        directory. Returns those deleted and the error that stopped it (or the failed
        sync's); the caller decides what the error means (`jetstore.log.policy`).

        A failed sync is an error like a failed unlink, never a failure of the instance:
        the checkpoint that allowed the deletion is durable already, and a deletion that did
        not reach the disk only lets logs nothing needs reappear after a crash."""
        deleted: list[int] = []
        error: JetError | None = None
        try:
            for generation in victims:
                self.fs.unlink(os.path.join(self.directory, generation_log_name(generation)))
                deleted.append(generation)
        except JetError as exc:
            error = exc
        if deleted:
            try:
                self.fs.fsync_directory(self.directory, owner=self.owner)
            except JetError as exc:
                error = error or exc
        return deleted, error

    def _report_deleted(
        self, what: str, deleted: list[int], keep_from: int, reason: str, **fields: Any
    ) -> None:
        self.logs_deleted += len(deleted)
        self.events.emit(
            "logs_deleted",
            f"{what} deleted log generations {deleted[0]}-{deleted[-1]} "
            f"(kept from {keep_from}: {reason})",
            first=deleted[0],
            last=deleted[-1],
            keep_from=keep_from,
            **fields,
        )

    def checkpoint_lag_generations(self) -> int:
        """Log generations between the durable checkpoint file and the current log."""
        log = self._log
        if log is None:
            return 0
        durable = self.durable_checkpoint
        base = durable.generation if durable is not None else self._first_generation
        return max(0, log.current_generation - base)

    def checkpoint_lag_bytes(self) -> int:
        log = self._log
        if log is None:
            return 0
        durable = self.durable_checkpoint
        end = log.end_position
        if durable is None:
            durable = LogPosition(self._first_generation, 0)
        size = self.options.log_file_size
        return max(0, (end.generation - durable.generation) * size + end.offset - durable.offset)

    def removable_logs(self) -> dict[str, Any]:
        """Which closed generations crash recovery no longer needs (the admin's question).

        `not_needed_for_recovery`: below every durable checkpoint (file and headers) with the
        margin kept; `covered_by_backup`: those also inside a completed backup (removing them
        loses no restore point). Without backups the second list is empty.
        """
        limit = self._deletion_limit()
        present = sorted(self._archived_generations())
        not_needed = deletable(present, limit)
        covered_to = self.backed_up_through()
        return {
            "keep_from": limit.keep_from,
            "reason": limit.reason,
            "present": present,
            "not_needed_for_recovery": not_needed,
            "covered_by_backup": [g for g in not_needed if g <= covered_to],
            "backed_up_through": covered_to,
        }

    def remove_logs(self, *, safe: bool = True, dry_run: bool = False) -> list[int]:
        """Delete closed log generations crash recovery no longer needs (`logs remove`).

        `safe` (the default): only those also covered by a completed full or incremental
        backup, so no restore point is lost. `safe=False`: every generation below the durable
        checkpoints (the backups taken so far can then no longer be rolled forward through
        them). Ascending, stopping at the first failure; never what a running backup copies.
        Returns the generations deleted (or that would be, with `dry_run`).
        """
        self.check_open()
        with self._checkpoint_lock:
            answer = self.removable_logs()
            victims: list[int] = answer["covered_by_backup" if safe else "not_needed_for_recovery"]
            if dry_run or not victims:
                return list(victims)
            deleted, error = self._unlink_generations(victims)
            if deleted:
                self._report_deleted(
                    f"logs remove ({'safe' if safe else 'not needed for recovery'})",
                    deleted,
                    answer["keep_from"],
                    answer["reason"],
                    safe=safe,
                )
            if error is not None:
                raise error  # the operator asked for it: say what could not be deleted
            return deleted

    def backed_up_through(self) -> int:
        """The highest generation every attached database has in a completed full or
        incremental backup (0 if any has none): logs up to it are in a backup set."""
        highest: list[int] = []
        # A copy taken in one step: log removal calls this holding only the checkpoint
        # lock, and an attach or detach of another thread changes the table meanwhile.
        for db in list(self._databases.values()):
            header = db.file.header
            full = header.last_full_backup
            if full.is_none:
                return 0
            high = full.generation_high
            incremental = header.last_incremental_backup
            if not incremental.is_none:
                high = max(high, incremental.generation_high)
            highest.append(high)
        return min(highest, default=0)

    # ----------------------------------------------------------------- backup

    def begin_backup(self, kind: str | BackupKind = "full") -> BackupSession:
        """Start an online backup (see `jetstore.backup.session`): a `BackupSession` that
        lists the files to copy and streams them verified; end it with `complete()` or
        `abort()` (leaving its `with` block without `complete()` aborts)."""
        from jetstore.backup.session import begin_backup

        return begin_backup(self, kind)

    def backup(
        self,
        dest: str | os.PathLike[str],
        kind: str | BackupKind = "full",
        progress: Progress | None = None,
        compress: bool = False,
    ) -> Manifest:
        """Take an online backup into the new backup set directory `dest` (which must not
        exist or be empty): `begin_backup(kind)`, then `jetstore.backup.backupset.
        write_backup_set`, which completes the session only once the set is durable."""
        from jetstore.backup.backupset import write_backup_set

        with self.begin_backup(kind) as session:
            return write_backup_set(session, dest, compress=compress, progress=progress)

    @property
    def backup_session(self) -> BackupSession | None:
        hold = self._backup
        return hold.session if hold is not None else None

    def backup_started(self, session: BackupSession) -> None:
        """Register `session` as the running backup (BackupInProgress if one runs)."""
        if self.state is InstanceState.FAILED:
            self.check_writable()  # raises: say why the instance stopped
        self.check_open()
        if self._closing:
            raise InstanceUnavailable(f"instance '{self.directory}' is shutting down")
        self._release_dropped_backup()
        with self._backup_lock:
            running = self._backup
            if running is not None:
                raise BackupInProgress(
                    f"backup {running.id} ({running.kind.value}) of '{self.directory}' is "
                    "still running; one backup at a time",
                    hint="wait for it to finish, or abort it",
                )
            self._backup = session.hold

    def backup_ended(self, session: BackupSession) -> None:
        """`session` ended (idempotent: it may run again after an interrupt, `release_all`)."""
        with self._backup_lock:
            if self._backup is not session.hold:
                return
            self._backup = None
            if session.state == "completed":
                self.backups_completed += 1
            elif session.state == "failed":
                self.backups_failed += 1
            else:
                self.backups_aborted += 1

    def _release_dropped_backup(self) -> None:
        """Release the hold of a backup session the application dropped without `complete()`
        or `abort()` (`BackupHold`): its pins and handles, and the log generations it kept.
        Called at safe points only, holding no engine lock: the warning runs the
        application's warning filters and hooks."""
        hold = self._backup
        if hold is None or not hold.gone:
            return
        with self._backup_lock:
            if self._backup is not hold:
                return  # another thread released it first
            try:
                hold.release(self.registry)
            finally:
                self._backup = None
        text = (
            f"{hold.kind.value} backup {hold.id} of '{self.directory}' was dropped without "
            "complete() or abort(); it is aborted: nothing was recorded and no log was deleted"
        )
        self.events.emit("backup_not_ended", text, session=hold.id, kind=hold.kind.value)
        unclosed.warn(
            text + " -- use `with instance.begin_backup(...) as session:` or end the session",
            self,
        )
        self.backups_aborted += 1  # last: a caller waiting on it sees the event and warning

    @contextmanager
    def checkpoint_guard(self) -> Iterator[None]:
        """Hold off checkpoints (and the log deletion that follows them) for a moment."""
        with self._holding_checkpoint_lock():
            yield

    def truncate_logs_after_backup(self, first_copied: int) -> list[int]:
        """After a completed full or incremental backup: delete the closed generations below
        min(durable checkpoint file, every header's checkpoint, `first_copied`). Nothing
        with circular logging (it deletes by itself). Returns the generations deleted."""
        if self.options.circular_logging:
            return []
        with self._checkpoint_lock:
            limit = self._deletion_limit(margin=0)
            if first_copied < limit.keep_from:
                limit = DeletionLimit(first_copied, f"the backup copied from {first_copied}")
            victims, deleted, error = self._delete_below(limit)
            if error is not None:
                # Deletion is housekeeping: what could not be deleted stays, in order, and
                # the next truncation or `logs remove` tries again (as circular logging does).
                self.log_delete_error = error
                self.events.emit(
                    "log_delete_failed",
                    f"backup truncation {_deletion_failure(victims, deleted, error)}"
                    f"{_what_to_do(error)}",
                    error=error.name,
                )
            if deleted:
                self._report_deleted("backup truncation", deleted, limit.keep_from, limit.reason)
            return deleted

    _checkpoint_seq = 0
    _first_generation = 0

    # ----------------------------------------------------------------- background

    def _background_round(self) -> None:
        """One round of the background thread (`_background_loop`): the lazy flush, and a
        checkpoint when one is due."""
        self._wake_pending = False
        if self.state is not InstanceState.OPEN:
            return
        self._release_dropped_backup()
        options = self.options
        log = self.log
        try:
            if log.needs_flush():
                log.flush()  # lazy commits become durable within the interval
        except JetError as exc:
            self._fail(exc)
            return
        due = (
            self._bytes_since_checkpoint >= options.checkpoint_depth
            or self._dirty_bytes >= options.cache_size // 2
            or self._lag_due()
        ) or (
            self._bytes_since_checkpoint > 0
            and time.monotonic() - self._last_checkpoint_time >= options.checkpoint_interval
        )
        if not due and self.checkpoint_file_error is not None:
            due = time.monotonic() - self._last_checkpoint_time >= 1.0
        if due:
            # The background never raises: a failure is recorded (FAILED state, event)
            # and the next API call reports it.
            self._checkpoint(final=False, raise_errors=False)

    # ----------------------------------------------------------------- counters

    def counters(self) -> dict[str, Any]:
        log = self._log
        durable = self.durable_checkpoint
        end = log.end_position if log is not None else None
        lag_generations = self.checkpoint_lag_generations()
        # One copy taken in one step (`list` of a dict view runs no Python code), iterated
        # below: no lock is held here, and an attach or detach of another thread changing the
        # live table between two steps made the iteration raise RuntimeError.
        databases = list(self._databases.values())
        caches = [db.file.cache for db in databases]
        points = [db.file.point_index for db in databases]
        backup = self._backup
        return {
            "state": self.state.value,
            "handles": self.registry.counts(),
            "handles_open": self.registry.total(),
            "log_generation": log.current_generation if log is not None else 0,
            "log_end": str(end) if end is not None else None,
            "log_durable": str(log.durable_position) if log is not None else None,
            "log_bytes_appended": log.bytes_appended if log is not None else 0,
            "log_records": log.records_appended if log is not None else 0,
            "log_flushes": log.flushes if log is not None else 0,
            "log_rolls": log.rolls if log is not None else 0,
            "log_disk_full": log.disk_full if log is not None else False,
            "reserve_logs_used": log.reserve_logs_used if log is not None else 0,
            "log_disk_free_bytes": self.log_disk_free_bytes,
            "log_disk_low": self._disk_low_warned,
            "commits": self.commits,
            "checkpoints": self.checkpoints,
            "checkpoint_durable": str(durable) if durable is not None else None,
            "checkpoint_candidate": (
                str(self.candidate_checkpoint) if self.candidate_checkpoint else None
            ),
            "checkpoint_lag_generations": lag_generations,
            "checkpoint_lag_bytes": self.checkpoint_lag_bytes(),
            "checkpoint_too_deep": self.options.checkpoint_too_deep,
            "circular_logging": self.options.circular_logging,
            "logs_deleted": self.logs_deleted,
            "log_delete_error": str(self.log_delete_error) if self.log_delete_error else None,
            "checkpoint_file_error": str(self.checkpoint_file_error)
            if self.checkpoint_file_error
            else None,
            "bytes_since_checkpoint": self._bytes_since_checkpoint,
            "dirty_bytes": self._dirty_bytes,
            "write_backs": self.write_backs,
            "cache_bytes": self.cache_budget.used,
            "cache_hits": sum(c.hits for c in caches),
            "cache_misses": sum(c.misses for c in caches),
            "point_index_entries": sum(len(p) for p in points),
            "point_index_hits": sum(p.hits for p in points),
            "point_index_fills": sum(p.fills for p in points),
            "pages_read": sum(db.file.pages_read for db in databases),
            "pages_written": sum(db.file.pages_written for db in databases),
            "write_conflicts": sum(db.conflicts for db in databases),
            "active_transactions": sum(db.active_transactions() for db in databases),
            "databases": sorted(db.name for db in databases),
            "backup_sessions_active": 1 if backup is not None else 0,
            "backup": backup.describe() if backup is not None else None,
            "backup_bytes_streamed": self.backup_bytes_streamed,
            "backups_completed": self.backups_completed,
            "backups_aborted": self.backups_aborted,
            "backups_failed": self.backups_failed,
        }

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        """Clean shutdown: final checkpoint (headers clean), then release every handle.

        In a child forked from the process that opened the instance it only lets go of the
        child's copies of the descriptors (`_let_go_in_child`): the instance is the parent's.
        """
        if self.pid != forks.PID:
            self._let_go_in_child()
            return
        events = self._events
        if events is not None and events.on_delivery_thread():
            # A `logging` handler's call (the event log's delivery thread). Another thread's
            # close waits, before it ends, for this thread's handlers to return
            # (`EventLog.close`): waiting for its lock here would deadlock, and that close
            # completes what this one asked for.
            if not self._close_lock.acquire(blocking=False):
                return
            try:
                self._close_held()
            finally:
                self._close_lock.release()
            return
        with self._close_lock:
            self._close_held()

    def _close_held(self) -> None:
        if self.state is not InstanceState.CLOSED:
            self._close()
        elif self.registry.total():
            # A close interrupted (Ctrl-C) while it released the handles gave back the
            # one it was closing (`Handle.close`): this close finishes the job.
            self.registry.close_owner(self.owner)

    def _close(self) -> None:
        """The final checkpoint, then release everything (`release_all`: a step interrupted
        by Ctrl-C runs once more). A final checkpoint that fails or is interrupted is not run
        again (the instance is FAILED: the next open recovers from the log); the release is
        never skipped, and the error or interrupt is raised once every handle is closed."""
        try:
            release_all(self._shut_down, self._release_everything)
        finally:
            # Closed even if the release was interrupted: a second close() must not run a
            # checkpoint on released files, only close what is left (see `close`).
            self._mark_closed()

    def _shut_down(self) -> None:
        """What a clean shutdown does before the release: the final checkpoint."""
        self._stop_control()  # first: no client may start anything while we shut down
        self._abort_backup("the instance is closing")
        if self._background is not None:
            self._background.close()
            self._background = None
        with self.commit_lock:
            self._closing = True  # no commit may slip in after the final checkpoint
        if self.state is InstanceState.OPEN:
            self.checkpoint(final=True)
            if self._events is not None and self.state is InstanceState.OPEN:
                self._events.emit(
                    "instance_stopped", f"instance '{self.directory}' shut down cleanly"
                )

    def simulate_crash(self) -> None:
        """Stop as a killed process would: no flush, no checkpoint, no clean header.

        Bytes already handed to the OS stay (as after a real process kill); log records
        appended but not yet flushed (lazy commits) are lost. For crash tests and the demo.
        """
        if self.pid != forks.PID:
            self._let_go_in_child()
            return
        with self._close_lock:
            if self.state is InstanceState.CLOSED:
                return
            self.state = InstanceState.FAILED
            if self._log is not None:
                self._log._failed = InstanceUnavailable("simulated crash")
            try:
                self._release_everything()
            finally:
                self._mark_closed()

    def _let_go_in_child(self) -> None:
        """Close a forked child's copy of the instance without touching the parent's: its
        descriptors are closed; no checkpoint, event, unlock, thread join or socket removal
        (each would act on the parent's files, locks or socket)."""
        self._control = None
        self._background = None
        self._backup = None
        self.registry.forget_owner(self.owner)
        self._mark_closed()

    def _mark_closed(self) -> None:
        self.state = InstanceState.CLOSED
        self._closed_event.set()
        unclosed.forget(self)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until the instance is closed (by anyone); True if it is."""
        return self._closed_event.wait(timeout)

    def close_unreferenced(self, why: str, *, wait: bool) -> None:
        """Shut down an instance the application did not close (`jetstore.instance.unclosed`):
        a ResourceWarning and event 103, then what `close()` does. Never raises a JetError:
        what failed is in the events, everything is released anyway, and the next open
        recovers. With `wait=False` (the instance's background thread) it returns at once if
        another thread is closing the instance: that one joins the background thread, which
        must not wait for it in turn."""
        taken: list[bool] = []
        try:
            # Taken and recorded in one step run from C (see `unclosed.collect`): after
            # `if not lock.acquire(...)`, a Ctrl-C landing as the call returned left the lock
            # held by this thread for good, and every close() of another thread waited.
            taken.extend(itertools.compress((True,), map(self._close_lock.acquire, (wait,))))
            if not taken or self.state is InstanceState.CLOSED:
                return
            unclosed.warn(unclosed.message(self), self)
            if self._events is not None:
                self._events.emit(
                    "instance_not_closed",
                    f"instance '{self.directory}' was not closed ({why}); shutting it down "
                    "as close() does",
                    why=why,
                    state=self.state.value,
                )
            try:
                self._close()
            except JetError as exc:
                unclosed.warn(
                    f"jetstore instance at {self.directory} could not be shut down cleanly "
                    f"({exc.brief()}); its handles are released and the next open recovers "
                    "from the log",
                    self,
                )
        finally:
            if taken:
                self._close_lock.release()

    def __del__(self) -> None:
        # The last reference is gone while the instance is open: hand it to its background
        # thread to be shut down (`jetstore.instance.unclosed`). Nothing more here: the
        # collector may run on any thread, inside engine code holding the locks a shutdown
        # takes. Resurrected by the hand-over; `__del__` does not run a second time.
        try:
            if sys.is_finalizing():
                return  # threads may be frozen already: the OS and soft recovery take over
        except Exception:
            return
        # `_state`, not `state`: a failed log makes that record the failure (an event: a
        # lock and I/O, which a finalizer must not do).
        if getattr(self, "_state", InstanceState.CLOSED) is InstanceState.CLOSED:
            return  # closed, or its open failed (or never began: __init__ raised)
        if self.pid != forks.PID:
            return  # a forked child's copy of the parent's instance: not ours to touch
        # The collector cleared the weak references before calling us: the threads and
        # callbacks that use them see the instance again while it shuts down.
        self.weak_self.rebind(self)
        unclosed.hand_off(self, self._background, self._inbox)

    def _abort_backup(self, reason: str) -> None:
        hold = self._backup
        session = hold.session if hold is not None else None
        if hold is not None and session is None:
            self._release_dropped_backup()
        if session is not None:
            try:
                session.abort(reason)
            except Exception:
                session._end("aborted")  # whatever the event log did, release the handles

    def _start_control(self) -> None:
        """Serve the control socket (never raises: a failure is event 162)."""
        if self.options.control_socket and self._control is None:
            from jetstore.control.server import ControlServer

            self._control = ControlServer.start(self)

    def _stop_control(self) -> None:
        """Stop the control socket: threads joined, sockets closed, socket file removed."""
        control, self._control = self._control, None
        if control is not None:
            control.stop()

    def _release_everything(self) -> None:
        """Release every handle of the instance. Each step runs even when an earlier one
        failed or was interrupted (Ctrl-C, `release_all`); the registry closes whatever the
        steps left. A file that could not be closed is such an error (close(2) may report a
        failed write, EIO on a network file system: the descriptor is gone all the same)."""
        release_all(
            self._stop_control,
            functools.partial(self._abort_backup, "the instance stopped"),
            self._close_background,
            self._close_log,
            *(
                functools.partial(self._close_database_file, db)
                for db in list(self._databases.values())
            ),
            self._events.close if self._events is not None else None,
            self._lock.release if self._lock is not None else None,
            self._close_remaining_handles,
        )

    def _close_remaining_handles(self) -> None:
        """Close whatever the steps before left registered; the first file that could not be
        closed is raised (the others are closed all the same)."""
        errors = self.registry.close_owner(self.owner)
        failure = next((error for error in errors if isinstance(error, JetError)), None)
        if failure is not None:
            raise failure

    def _close_background(self) -> None:
        if self._background is not None:
            try:
                self._background.close()
            except Exception:
                pass
            self._background = None

    def _close_log(self) -> None:
        if self._log is not None:
            try:
                self._log.close()
            except JetError:
                pass

    @staticmethod
    def _close_database_file(db: Database) -> None:
        try:
            db.close_transactions()
        finally:
            db.file.close()

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<jetstore.Instance {self.directory!r} {self.state.value}>"


def _background_loop(
    weak: WeakOwner[Instance],
    inbox: queue.SimpleQueue[object],
    round_lock: threading.Lock,
    interval: float,
    stop: threading.Event,
) -> None:
    """The instance's background thread: every `interval` (or when woken) a round of lazy
    flush and checkpoint (`Instance._background_round`); and the shutdown of the instance
    when its finalizer hands it over (`jetstore.instance.unclosed`).

    A function, not a method, and the instance is taken from `weak` for one round at a time,
    under `round_lock`: a running thread keeps what it references alive, and this one must
    not keep the instance alive once the application dropped it (`unclosed.collect` takes
    the lock to look between rounds).
    """
    while not stop.is_set():
        try:
            message = inbox.get(timeout=interval)
        except queue.Empty:
            message = None
        while message is None and not inbox.empty():  # only this thread takes from it
            message = inbox.get_nowait()
        if isinstance(message, Instance):
            # Between rounds this thread holds no engine lock: a safe place to shut down.
            message.close_unreferenced(unclosed.WHY_DROPPED, wait=False)
            return
        if stop.is_set():
            return
        with round_lock:
            if stop.is_set():
                return  # closed while this thread waited for the lock
            instance = weak.get()
            if instance is not None:
                try:
                    instance._background_round()
                except Exception as exc:
                    # Not a JetError (those are handled in the round): a bug, or MemoryError.
                    # Dying here in silence would stop lazy flushes and checkpoints while the
                    # instance went on taking commits, its log growing without end: stop
                    # accepting updates instead, loudly (event 102), and keep the thread for
                    # the shutdown hand-over.
                    instance.fail(
                        InternalError(
                            f"the background thread of instance '{instance.directory}' failed "
                            f"in a flush or checkpoint round: {exc!r}",
                            hint="close the instance and open it again (recovery replays the "
                            "log); report the message if it happens again",
                        )
                    )
            # Collected (its hand-over is on its way here) or not: nothing is held while
            # waiting.
            del instance


def _deletion_failure(victims: list[int], deleted: list[int], error: JetError) -> str:
    """What `Instance._delete_below` could not do, for a log_delete_failed event."""
    if not victims:
        return f"could not list the log files: {error.brief()}"
    if len(deleted) < len(victims):
        return (
            f"could not delete log generation {victims[len(deleted)]}: {error.brief()}; "
            "deletion stops there"
        )
    return (
        f"deleted log generations {deleted[0]}-{deleted[-1]} but could not sync the "
        f"directory: {error.brief()}; they may reappear after a crash (nothing needs them)"
    )


def _what_to_do(error: JetError) -> str:
    """The end of an event message that names `error` by `JetError.brief`: its hint."""
    return f". What to do: {error.hint}" if error.hint else ""


def open_instance(
    path: str | os.PathLike[str], *, filesystem: FileSystem | None = None, **options: Any
) -> Instance:
    fields = {f.name for f in dataclasses.fields(InstanceOptions)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InvalidParameter(
            f"unknown option(s) {', '.join(unknown)}",
            hint=f"valid options: {', '.join(sorted(fields))}",
        )
    _check_option_types(options)
    absolute_path(path, what="instance directory")  # refuses an empty path
    directory = os.fspath(path)
    if "log_file_size" not in options:
        existing = _existing_log_file_size(directory)
        if existing is not None:
            # An existing stream keeps its log file size unless the caller asks otherwise.
            options["log_file_size"] = existing
    instance = Instance(directory, InstanceOptions(**options), filesystem)
    try:
        instance._open()
    except FileAccessDenied as exc:
        # A lock this process holds (errno None: a lock, not a permission) may belong to an
        # instance the application dropped without closing it, still waiting for the cyclic
        # collector: collect, let it shut down, and try once more.
        if exc.errno is not None or not unclosed.reclaim():
            raise
        instance = Instance(directory, InstanceOptions(**options), filesystem)
        instance._open()
    return instance


def _check_option_types(options: dict[str, Any]) -> None:
    """InvalidParameter for an option of the wrong type: `validate` compares numbers, and a
    comparison with a str or a dict would surface as a bare TypeError."""
    for field in dataclasses.fields(InstanceOptions):
        if field.name not in options:
            continue
        value = options[field.name]
        default = field.default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
            expected = "True or False"
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
            expected = "an integer"
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            expected = "a number"
        if not ok:
            raise InvalidParameter(
                f"option {field.name}={value!r} is {type(value).__name__}, not {expected}",
                hint=f"pass {field.name} as {expected}",
            )


def _existing_log_file_size(directory: str) -> int | None:
    path = os.path.join(directory, CURRENT_LOG)
    try:
        data = FileSystem().read_file(path, owner="open-peek", limit=4096)
        return decode_log_header(data, path=path).log_file_size
    except JetError:
        return None
