"""Online backup sessions: what a backup copies from a running instance, streamed and checked.

`Instance.begin_backup(kind)` starts a `BackupSession`. The session lists its files, database
images first (`jetstore.backup.image`), then log generations (`jetstore.backup.logcopy`);
`read(file)` streams one as verified chunks; `complete()` or `abort()` ends it.

| kind | images | log generations (to the roll) | on complete |
| --- | --- | --- | --- |
| full | yes, at a fresh checkpoint | from the images' checkpoint | "last full"; truncates |
| copy | as full | as full | nothing |
| incremental | no | after the last full or incremental | "last incremental"; truncates |
| differential | no | after the last full | "last differential" |

The log is rolled when the log list is first asked for (after the images), so the backup
holds every transaction acknowledged before that moment; by a thread of its own, out of a
Ctrl-C's reach (`_roll_out_of_reach`). Truncation (circular logging off)
deletes the closed generations below min(durable checkpoint file, every database header's
checkpoint, the first generation this backup copied).

Invariants:
- One session per instance at a time (`BackupInProgress`, -505, for a second one).
- Every handle a session opens is registered under its own owner
  (`<instance owner>/backup-<id>`); `_end()` closes them all with one `close_owner` call, is
  idempotent, and runs on every way out: complete, abort, a failed read, the context manager's
  exit, instance close (which aborts the backup and records event 152). An interrupt (Ctrl-C)
  in it skips none of its releases (pins, handles, the instance's running-backup slot:
  `release_all`), and none lands between the registration as the running backup and the
  `begin_backup` code that ends the session on failure.
- The instance keeps a session's `BackupHold` (its pins, its handles' owner, its first
  generation), not the session: a session the application drops without `complete()` or
  `abort()` is released at the instance's next safe point (event 154 and a ResourceWarning),
  as a dropped file or instance is; it does not pin pages, keep logs or refuse every later
  backup until the instance closes.
- While a session runs, the pages its images copy are pinned (never reused) and the log
  generations it copies are kept (circular deletion stops below its first generation).
- Only `complete()`, after every listed file was streamed to its end, records history or
  deletes logs; a failed or aborted backup changes nothing on disk. An interrupt (Ctrl-C) in
  a history header write makes the write again and is raised once the backup completed.
- `started_us` is taken once the starting point is fixed (images pinned, first generation
  chosen): the images hold no commit after it, so a restore to a later time is always
  possible; to an earlier one only when no commit the images hold is later (the restore
  reads that from the set's logs: `jetstore.backup.restore._check_images_at`).
"""

from __future__ import annotations

import enum
import functools
import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jetstore.backup.image import DatabaseImage
from jetstore.backup.logcopy import read_log_header, stream_generation
from jetstore.errors import (
    BackupAbortByServer,
    BackupInProgress,
    InstanceUnavailable,
    InvalidBackup,
    InvalidBackupSequence,
    InvalidParameter,
    JetError,
    MissingFullBackup,
    MissingLogFile,
)
from jetstore.format.common import ENGINE_VERSION, FORMAT_VERSION, Signature, now_us
from jetstore.format.dbheader import BackupInfo, DatabaseHeader
from jetstore.format.filenames import CURRENT_LOG, database_file_name, generation_log_name
from jetstore.format.logheader import LogFileHeader
from jetstore.format.positions import LogPosition
from jetstore.io.files import File
from jetstore.io.handles import release_all
from jetstore.io.threads import run_out_of_reach

if TYPE_CHECKING:
    from jetstore.instance.database import Database
    from jetstore.instance.instance import Instance
    from jetstore.io.handles import HandleRegistry
    from jetstore.pages.pagefile import DatabaseFile

#: Size of the chunks `read` yields (the last one of a file may be shorter).
CHUNK_SIZE = 1024 * 1024
_session_ids = itertools.count(1)


class BackupKind(enum.StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    COPY = "copy"

    @classmethod
    def parse(cls, value: str | BackupKind) -> BackupKind:
        try:
            return cls(value)
        except ValueError:
            raise InvalidParameter(
                f"unknown backup kind {value!r}",
                hint=f"use one of {', '.join(k.value for k in cls)}",
            ) from None


@dataclass(frozen=True)
class BackupFile:
    """One file of a backup: a database image or a log generation."""

    name: str  # its name in the backup set and in a restored instance directory
    kind: str  # "database" or "log"
    size: int  # bytes `read` yields for it
    database: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class ImageInfo:
    """What a backup says about one database image."""

    name: str
    db_id: int
    signature: Signature
    page_size: int
    page_count: int
    checkpoint: LogPosition
    generation_min_required: int


@dataclass
class BackupResult:
    """What a completed backup holds (the manifest of a backup set is built from it)."""

    session: int
    kind: BackupKind
    instance: str
    log_signature: Signature
    log_file_size: int
    page_size: int
    generation_low: int
    generation_high: int
    started_us: int
    completed_us: int
    images: list[ImageInfo]
    files: list[BackupFile]
    databases: list[str]  # every database attached when the backup began
    engine_version: str = ENGINE_VERSION
    format_version: int = FORMAT_VERSION
    truncated: list[int] = field(default_factory=list)
    bytes_streamed: int = 0


@dataclass
class _Image:
    db: Database
    pin: int
    header: DatabaseHeader
    image: DatabaseImage | None = None


class BackupHold:
    """What a running backup holds on its instance: the images' page pins, the handles
    registered under its owner, and the log generations from `first_generation` on (circular
    deletion and log truncation stop below it).

    The instance keeps this object in place of the session, which it references only weakly,
    so that a session the application drops without `complete()` or `abort()` does not hold
    all that until the instance closes: its pinned pages would never be reused (the file
    grows), its logs never deleted (the log volume fills) and every later backup refused
    (`BackupInProgress`). The session's finalizer marks the hold `gone` and wakes the
    background thread; it takes no lock, does no I/O and warns of nothing, because the
    collector runs finalizers wherever an allocation triggers it, inside engine code holding
    locks too (see `jetstore.instance.unclosed`). The instance releases a gone hold at its
    next safe point: its background round, a backup starting, an attach or detach, close.
    """

    def __init__(self, session: BackupSession, wake: Callable[[], None]) -> None:
        self.id = session.id
        self.kind = session.kind
        self.owner = session.owner
        #: Every pin taken for the session's images, by file: each token is here before
        #: its pin is in force (`DatabaseFile.pin(taking=...)`), so an interrupt as a pin
        #: returns, before the image holding it is listed, cannot leave it behind.
        self.pins: list[tuple[DatabaseFile, list[int]]] = []
        self.first_generation: int | None = None
        self._dropped = False
        self._session = weakref.ref(session)
        self._finalizer = weakref.finalize(session, self._on_dropped, wake)

    @property
    def session(self) -> BackupSession | None:
        return self._session()

    @property
    def gone(self) -> bool:
        """The session object was collected without ending. Its weak reference is cleared
        before the finalizer runs (which another thread may see first): either says so."""
        return self._dropped or self._session() is None

    def _on_dropped(self, wake: Callable[[], None]) -> None:
        self._dropped = True
        wake()

    def release(self, registry: HandleRegistry) -> None:
        """Unpin the images and close every handle of the session (called once: by the
        session's `_end`, or by the instance for a gone session)."""
        self._finalizer.detach()
        for file, tokens in self.pins:
            for token in tokens:
                file.unpin(token)
        registry.close_owner(self.owner)

    def describe(self) -> dict[str, Any]:
        session = self.session
        if session is not None:
            return session.describe()
        return {
            "session": self.id,
            "kind": self.kind.value,
            "state": "dropped without complete() or abort(); being released",
            "first_generation": self.first_generation,
        }


class BackupSession:
    """One running backup. Use as a context manager: leaving it without `complete()` aborts."""

    def __init__(self, instance: Instance, kind: BackupKind) -> None:
        self.id = next(_session_ids)
        self.instance = instance
        self.kind = kind
        self.owner = f"{instance.owner}/backup-{self.id}"
        self.started_us = now_us()
        self.state = "starting"  # starting -> running -> completed | aborted | failed
        self.error: JetError | None = None
        #: Why `abort()` ended the session (the instance closing, the caller, ...): every
        #: later call on the session says it, not only the event.
        self.abort_reason: str | None = None
        self.bytes_streamed = 0
        self.last_generation: int | None = None
        self._images: list[_Image] = []
        self._databases: list[Database] = []
        self._log_files: list[BackupFile] | None = None
        self._streamed: set[str] = set()
        self._result: BackupResult | None = None
        self._lock = threading.RLock()
        self.progress: Callable[[BackupFile, int], None] | None = None
        self.hold = BackupHold(self, instance.wake_background)

    @property
    def first_generation(self) -> int | None:
        """The first log generation the backup copies (None until it started)."""
        return self.hold.first_generation

    # ----------------------------------------------------------------- start

    def _start(self) -> None:
        """Called by `Instance.begin_backup` once the session is registered.

        Runs under the session lock, as `_end` does: an `abort()` from another thread (the
        instance closing: `Instance.close` aborts the running backup) waits until the start
        is over and then releases everything it opened, or it came first and the start
        refuses to go on (`BackupAbortByServer`). Without that, a close landing while the
        images were being opened ended the session, then the start opened an image under the
        ended session's owner (a handle nobody would close) and marked it running again.
        """
        with self._lock:
            if self.state != "starting":
                raise BackupAbortByServer(
                    f"backup {self.id} of '{self.instance.directory}' was {self.state} before "
                    f"it started{self._why()}",
                    hint="start the backup again once the instance is open",
                )
            self._start_locked()

    def _start_locked(self) -> None:
        instance = self.instance
        kind = self.kind
        if kind in (BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL):
            if instance.options.circular_logging:
                raise InvalidBackup(
                    f"{_article(kind)} {kind.value} backup needs every log generation since "
                    "the last full "
                    "backup, and circular logging deletes them",
                    hint="take a full backup, or reopen the instance with circular_logging=False",
                )
        else:
            # A fresh checkpoint keeps the log part of the backup short (out of a Ctrl-C's
            # reach: interrupted, a checkpoint fails the instance).
            instance.checkpoint_out_of_reach()
        with instance.checkpoint_guard():
            self._databases = instance.attached_databases()
            # Generations before the newest one on disk are archived files; the log's current
            # generation may be ahead of it in memory only (a lazy commit that did not fit
            # closed the previous one), and its predecessor is then still edb.log, not yet
            # archived: it must not count as gone. The flush rolls the log on disk first.
            instance.log.flush()
            current = instance.log.durable_position.generation
            if kind in (BackupKind.FULL, BackupKind.COPY):
                for db in self._databases:
                    tokens: list[int] = []
                    self.hold.pins.append((db.file, tokens))
                    token, header = db.file.pin(taking=tokens)
                    self._images.append(_Image(db, token, header))
                low = min(
                    (image.header.checkpoint_position.generation for image in self._images),
                    default=current,
                )
                low = max(1, low)
            else:
                low = self._generation_after_previous()
            missing = [
                g
                for g in range(low, current)
                if not instance.fs.exists(os.path.join(instance.directory, generation_log_name(g)))
            ]
            if missing:
                raise MissingLogFile(
                    f"{_article(kind)} {kind.value} backup needs log generations "
                    f"{low}-{current - 1}, but "
                    f"{generation_log_name(missing[0])} is gone from '{instance.directory}'",
                    hint="take a full backup (a later backup or `logs remove` deleted the "
                    "logs this one would continue from)",
                    path=os.path.join(instance.directory, generation_log_name(missing[0])),
                )
            self.hold.first_generation = low  # from here on circular logging keeps them
            # The backup's starting point is fixed now: the images (pinned above, at the
            # checkpoint just taken) hold every commit of their checkpoint, and a writer may
            # have committed since the session was created. A restore to a time before this
            # moment could get a state with later commits, so `started_us` is taken here.
            self.started_us = now_us()
        for image in self._images:
            path = image.db.file.path
            # Plain `open` (not `fs.opening`): a Ctrl-C as it returns leaves the file under
            # the session's owner, and `begin_backup` fails the session on any way out, whose
            # `_end` closes that owner at once. The same holds for the opens in `read`'s
            # generators below: `read` fails the session on any exception but GeneratorExit.
            file = instance.fs.open(path, owner=self.owner, writable=False)
            image.image = DatabaseImage(file, image.header, path=path)
        self.state = "running"

    def _generation_after_previous(self) -> int:
        if not self._databases:
            raise MissingFullBackup(
                f"instance '{self.instance.directory}' has no database to take "
                f"{_article(self.kind)} {self.kind.value} backup of",
                hint="create a database and take a full backup first",
            )
        lows: list[int] = []
        for db in self._databases:
            header = db.file.header
            full = header.last_full_backup
            if full.is_none:
                raise MissingFullBackup(
                    f"database {db.name!r} has no full backup for {_article(self.kind)} "
                    f"{self.kind.value} backup "
                    "to follow",
                    hint="take a full backup first",
                    path=db.file.path,
                )
            previous = full
            if self.kind is BackupKind.INCREMENTAL:
                incremental = header.last_incremental_backup
                if (
                    not incremental.is_none
                    and incremental.generation_high > previous.generation_high
                ):
                    previous = incremental
            lows.append(previous.generation_high + 1)
        return min(lows)

    # ----------------------------------------------------------------- files

    def database_files(self) -> list[BackupFile]:
        return [
            BackupFile(
                database_file_name(image.db.name),
                "database",
                image.image.size if image.image is not None else 0,
                database=image.db.name,
            )
            for image in self._images
        ]

    def log_files(self) -> list[BackupFile]:
        """The log generations of the backup. The first call rolls the log: the backup ends
        there (every transaction acknowledged before it is in these files)."""
        with self._lock:
            self._check_running()
            if self._log_files is None:
                try:
                    high, interrupted = self._roll_out_of_reach()
                except JetError as exc:
                    self._fail(exc)
                    raise
                low = self.first_generation
                assert low is not None
                self.last_generation = high
                files = []
                for generation in range(low, high + 1):
                    name = generation_log_name(generation)
                    size = self.instance.options.log_file_size
                    try:
                        size = self.instance.fs.size(os.path.join(self.instance.directory, name))
                    except JetError as exc:
                        self._fail(exc)
                        raise
                    files.append(BackupFile(name, "log", size, generation=generation))
                self._log_files = files
                if interrupted is not None:
                    raise interrupted  # the roll is made and the list taken: it stands
            return list(self._log_files)

    def _roll_out_of_reach(self) -> tuple[int, BaseException | None]:
        """`LogWriter.roll` run by a thread of its own (`run_out_of_reach`); returns the
        closed generation and an interrupt that arrived while it ran.

        The roll is a flush that renames: interrupted (Ctrl-C), it cannot be made again as a
        flush within a generation is (`LogWriter._write_chunks`), and the log writer fails
        for good, so the whole instance stopped accepting updates over a Ctrl-C meant for
        the backup. The thread is registered under the session's owner: a session that ends
        meanwhile (the instance closing) joins it.
        """
        return run_out_of_reach(
            self.instance.registry, self.owner, "jetstore-backup-roll", self.instance.log.roll
        )

    def files(self) -> Iterator[BackupFile]:
        """Every file, in the order a backup copies them (the log list comes last, see
        `log_files`)."""
        yield from self.database_files()
        yield from self.log_files()

    def read(self, file: BackupFile) -> Iterator[bytes]:
        """The contents of `file` as verified chunks. A failed check or read ends the whole
        backup (state failed, nothing recorded) and raises the error naming its place."""
        self._check_running()
        try:
            if file.kind == "database":
                source = self._image_for(file)
                chunks = source.chunks()
            else:
                chunks = self._log_chunks(file)
            for chunk in chunks:
                if self.state != "running":
                    raise self._aborted_error()
                self.bytes_streamed += len(chunk)
                self.instance.backup_bytes_streamed += len(chunk)
                # Hand the GIL over between chunks: checking a chunk is CPU work in Python,
                # and a committer waiting for the GIL would otherwise wait a whole switch
                # interval after each of its fsyncs (see bench W8).
                time.sleep(0)
                yield chunk
        except JetError as exc:
            if self.state != "running":
                raise self._aborted_error() from exc
            self._fail(exc)
            raise
        except GeneratorExit:
            raise
        except BaseException as exc:
            if self.state == "running":
                self._fail(BackupAbortByServer(f"backup stopped by {type(exc).__name__}"))
            raise
        self._streamed.add(file.name)

    def _image_for(self, file: BackupFile) -> DatabaseImage:
        for image in self._images:
            if database_file_name(image.db.name) == file.name and image.image is not None:
                return image.image
        raise InvalidParameter(f"{file.name!r} is not a database file of backup {self.id}")

    def _log_chunks(self, file: BackupFile) -> Iterator[bytes]:
        log_files = self._log_files or []
        if file.generation is None or file not in log_files:
            raise InvalidParameter(
                f"{file.name!r} is not a log file of backup {self.id}",
                hint="take the file list from `log_files()`",
            )
        generation = file.generation
        directory = self.instance.directory
        path = os.path.join(directory, file.name)
        successor = self._successor_header(generation + 1)
        handle = self.instance.fs.open(path, owner=self.owner, writable=False)
        try:
            yield from _rechunk(
                stream_generation(
                    handle,
                    path,
                    generation=generation,
                    signature=self.instance.log.signature,
                    successor=successor,
                )
            )
        finally:
            handle.close()

    def _successor_header(self, generation: int) -> LogFileHeader:
        """The header of `generation` (archived, or still the current log file)."""
        directory = self.instance.directory
        for _attempt in range(3):
            for name in (generation_log_name(generation), CURRENT_LOG):
                path = os.path.join(directory, name)
                try:
                    handle: File = self.instance.fs.open(path, owner=self.owner, writable=False)
                except JetError:
                    continue
                try:
                    header = read_log_header(handle, path)
                finally:
                    handle.close()
                if header.generation == generation:
                    return header
        raise MissingLogFile(
            f"log generation {generation}, which records where generation {generation - 1} "
            f"ends, is not in '{directory}'",
            hint="a log file was removed while the backup ran; take the backup again",
            path=os.path.join(directory, generation_log_name(generation)),
        )

    # ----------------------------------------------------------------- end

    def unread_files(self) -> list[str]:
        """Files listed but not yet read to their end (rolls the log, see `log_files`)."""
        return [
            f.name
            for f in [*self.database_files(), *self.log_files()]
            if f.name not in self._streamed
        ]

    def result(self) -> BackupResult:
        """What the backup holds, once every file was read: for a backup set's manifest,
        written (and made durable) before `complete()` deletes any log."""
        with self._lock:
            self._check_running()
            unread = self.unread_files()
            if unread:
                raise InvalidBackupSequence(
                    f"backup {self.id} is not finished: {len(unread)} file(s) were not read to "
                    f"the end ({', '.join(unread[:3])}{', ...' if len(unread) > 3 else ''})",
                    hint="read every file of `files()` first, or `abort()`",
                )
            if self._result is None:
                low = self.first_generation
                high = self.last_generation
                assert low is not None and high is not None
                instance = self.instance
                self._result = BackupResult(
                    session=self.id,
                    kind=self.kind,
                    instance=instance.directory,
                    log_signature=instance.log.signature,
                    log_file_size=instance.options.log_file_size,
                    page_size=instance.options.page_size,
                    generation_low=low,
                    generation_high=high,
                    started_us=self.started_us,
                    completed_us=now_us(),
                    images=[
                        ImageInfo(
                            image.db.name,
                            image.header.db_id,
                            image.header.db_signature,
                            image.header.page_size,
                            image.header.page_count,
                            image.header.checkpoint_position,
                            image.header.generation_min_required,
                        )
                        for image in self._images
                    ],
                    files=[*self.database_files(), *self.log_files()],
                    databases=[db.name for db in self._databases],
                    bytes_streamed=self.bytes_streamed,
                )
            return self._result

    def complete(self) -> BackupResult:
        """End the backup successfully: record it in the database headers (not for a copy)
        and, for full and incremental backups without circular logging, delete the log
        generations it makes unnecessary. Every listed file must have been read to its end."""
        with self._lock:
            instance = self.instance
            try:
                result = self.result()
                if instance.state.value != "open":
                    raise InstanceUnavailable(
                        f"backup {self.id} cannot complete: instance '{instance.directory}' "
                        f"is {instance.state.value}",
                        hint="take the backup again once the instance is open",
                    )
            except JetError as exc:
                if self.state in ("completed", "failed"):
                    raise  # what it recorded was said when it ended
                # Said in the error, not left to the reader to infer: a backup set already
                # written (`write_backup_set`, the control client) is kept on this error,
                # and its owner must know whether the instance's history names it.
                raise type(exc)(
                    f"{exc.detail}; nothing was recorded and no log was deleted",
                    hint=exc.hint,
                    path=exc.path,
                ) from exc
            low, high = result.generation_low, result.generation_high
            try:
                interrupted = self._record_history(low, high, result.completed_us)
            except _HistoryWriteFailed as failed:
                # A header write that fails stops the instance like any other (D9): what
                # reached the header copies is unknown.
                instance.fail(failed.cause)
                self._fail(failed.error, outcome=None)  # its error says what was recorded
                raise failed.error from failed.cause
            try:
                if self.kind in (BackupKind.FULL, BackupKind.INCREMENTAL):
                    # Never raises an error: a log that cannot be deleted stays (event 142),
                    # as with circular logging; the backup is complete either way.
                    result.truncated = instance.truncate_logs_after_backup(low)
            finally:
                # Recorded, so completed, even when an interrupt (Ctrl-C) cuts the deletion
                # short: ended by the caller's abort instead, it was counted and announced
                # as "aborted, nothing recorded" while the headers named it.
                self._end("completed")
                instance.events.emit(
                    "backup_completed",
                    f"{self.kind.value} backup {self.id} completed: log generations "
                    f"{low}-{high}, {len(self._images)} database image(s), "
                    f"{self.bytes_streamed} bytes"
                    + (
                        f"; deleted log generations {result.truncated[0]}-{result.truncated[-1]}"
                        if result.truncated
                        else ""
                    ),
                    session=self.id,
                    kind=self.kind.value,
                    generation_low=low,
                    generation_high=high,
                    bytes=self.bytes_streamed,
                    truncated=result.truncated,
                )
            if interrupted is not None:
                # A Ctrl-C while a header recorded the backup, raised once the backup is
                # complete (every header records it): the caller asked to stop, not to lose it.
                raise interrupted
            return result

    def _record_history(self, low: int, high: int, completed: int) -> BaseException | None:
        """Write the backup into the history of every database's header; returns an
        interrupt deferred until the backup is complete.

        A header write interrupted by a BaseException other than an Exception (Ctrl-C, most
        often while it syncs) is written again, as the log writer does for an interrupted
        flush: the same changes, so the header's state is known again and the backup is
        recorded. The interrupt is returned, for `complete()` to raise once the session
        ended completed. Failed before, the session claimed the header of the interrupted
        database "unknown" though the instance served on, and its in-memory header (which
        the next checkpoint writes) did not hold what the first copy on disk might.
        """
        if self.kind is BackupKind.COPY:
            return None
        deferred: BaseException | None = None
        recorded: list[str] = []
        databases = list(self._databases)
        if self.kind is BackupKind.FULL:
            # A database created while the backup ran (attach is refused meanwhile) is in
            # it: its whole life is in the logs from the backup's first generation on, so a
            # restore recreates it, and the logs an incremental copies next continue it.
            # Unrecorded, the next incremental was refused for want of a full backup.
            databases += [
                db for db in self.instance.attached_databases() if db not in self._databases
            ]
        # An interrupt that lands between two writes (none half done) is deferred too, and
        # the loop goes on from the first database not recorded; escaping, it ended the
        # session as aborted ("nothing recorded") while the headers before named it. A
        # second one fails the session saying which headers hold the backup.
        pending = list(databases)
        between: BaseException | None = None
        while True:
            try:
                while pending:
                    interrupted = self._record_one(pending[0], low, high, completed, recorded)
                    deferred = deferred or interrupted
                    pending.pop(0)
                return deferred or between
            except Exception:
                raise
            except BaseException as exc:
                if self.state != "running":
                    raise  # `_record_one` failed the session, saying what is recorded
                if between is None:
                    between = exc
                    continue
                held = (
                    f"the header(s) of {', '.join(repr(n) for n in recorded)} record it, "
                    "no other does"
                    if recorded
                    else "no header records it"
                )
                self._fail(
                    BackupAbortByServer(
                        f"{self.kind.value} backup {self.id} of '{self.instance.directory}' "
                        f"was interrupted twice ({type(exc).__name__}) while it was being "
                        f"recorded: {held}; no log was deleted",
                        hint="take a new full backup before any incremental or differential "
                        "one: the instance's record of this backup is not reliable",
                    ),
                    outcome=None,
                )
                raise

    def _record_one(
        self, db: Database, low: int, high: int, completed: int, recorded: list[str]
    ) -> BaseException | None:
        """Write the backup into the history of `db`'s header (`_record_history`); returns
        the interrupt of a write made again, and adds `db` to `recorded`."""
        if db.file.closed or db.name in recorded:
            return None  # detached while the backup ran; or written before an interrupt
        position = LogPosition(low, 0)
        for image in self._images:
            if image.db is db:
                position = image.header.checkpoint_position
        info = BackupInfo(low, high, position, completed)
        field_name = {
            BackupKind.FULL: "last_full_backup",
            BackupKind.INCREMENTAL: "last_incremental_backup",
            BackupKind.DIFFERENTIAL: "last_differential_backup",
        }[self.kind]
        changes: dict[str, Any] = {field_name: info}
        if self.kind is BackupKind.FULL:
            # A new full backup starts a new chain: older incrementals and differentials
            # do not apply on top of it.
            changes["last_incremental_backup"] = BackupInfo.NONE
            changes["last_differential_backup"] = BackupInfo.NONE
        deferred: BaseException | None = None
        try:
            try:
                db.file.write_header(**changes)
            except Exception:
                raise
            except BaseException as interrupt:
                db.file.write_header(**changes)
                deferred = interrupt
        except JetError as exc:
            raise _HistoryWriteFailed(self._history_error(exc, db, recorded), exc) from exc
        except BaseException as exc:
            # A second interrupt, in the write made again (or any other exception):
            # ended by the caller's abort instead, the session was announced as
            # "nothing recorded" while earlier headers named it.
            self._fail(
                BackupAbortByServer(
                    f"{self.kind.value} backup {self.id} of '{self.instance.directory}' "
                    f"was interrupted ({type(exc).__name__}) while it was being recorded: "
                    f"{_history_held(db, recorded)}; no log was deleted",
                    hint="take a new full backup before any incremental or differential "
                    "one: the instance's record of this backup is not reliable",
                    path=db.file.path,
                ),
                outcome=None,
            )
            raise
        recorded.append(db.name)
        return deferred

    def _history_error(self, exc: JetError, db: Database, recorded: list[str]) -> JetError:
        """`exc` (the failed header write of `db`), saying what the instance's backup history
        now holds and what state the instance is in: the caller keeps a written set on it."""
        held = _history_held(db, recorded)
        steps = exc.hint.rstrip(". ") if exc.hint else "close the instance and open it again"
        return type(exc)(
            f"{self.kind.value} backup {self.id} of '{self.instance.directory}' could not be "
            f"recorded: writing the backup history into the header of '{db.file.path}' failed "
            f"({exc.brief()}); {held}; no log was deleted, and the instance stopped accepting "
            "updates",
            hint=f"{steps}; once it is open again, take a new full backup before any "
            "incremental or differential one: its record of this backup is not reliable",
            path=db.file.path,
        )

    def abort(self, reason: str = "aborted by the caller") -> None:
        """End the backup without recording anything (idempotent)."""
        with self._lock:
            if self.state in ("completed", "aborted", "failed"):
                return
            self.abort_reason = reason
            self._end("aborted")
        self.instance.events.emit(
            "backup_aborted",
            f"{self.kind.value} backup {self.id} aborted: {reason}; nothing was recorded and no "
            "log was deleted",
            session=self.id,
            kind=self.kind.value,
            reason=reason,
            bytes=self.bytes_streamed,
        )

    def _fail(
        self,
        error: JetError,
        *,
        outcome: str | None = "nothing was recorded and no log was deleted",
    ) -> None:
        with self._lock:
            if self.state in ("completed", "aborted", "failed"):
                return
            self.error = error
            self._end("failed")
        self.instance.events.emit(
            "backup_failed",
            f"{self.kind.value} backup {self.id} failed: {error.brief()}"
            + (f"; {outcome}" if outcome else ""),
            session=self.id,
            kind=self.kind.value,
            error=error.name,
            code=error.code,
            path=error.path,
        )

    def _end(self, state: str) -> None:
        """Release everything the session holds (idempotent: only the first call acts)."""
        with self._lock:
            if self.state in ("completed", "aborted", "failed"):
                return
            self.state = state
            # Every step, whatever an earlier one raised: this runs once (the state says
            # ended), so a pin, a file or the instance's running-backup slot skipped by a
            # Ctrl-C would stay for the life of the instance.
            release_all(
                functools.partial(self.hold.release, self.instance.registry),
                functools.partial(self.instance.backup_ended, self),
            )

    def _check_running(self) -> None:
        if self.state == "running":
            return
        if self.state == "failed" and self.error is not None:
            raise InvalidBackupSequence(
                f"backup {self.id} failed ({self.error.name}: {self.error.detail})",
                hint="start a new backup",
            )
        raise InvalidBackupSequence(
            f"backup {self.id} is {self.state}{self._why()}",
            hint="start a new backup with begin_backup"
            + (" once the instance is open again" if self._instance_gone() else ""),
        )

    def _why(self) -> str:
        """' (the reason)' of an aborted session, or ''."""
        return f" ({self.abort_reason})" if self.abort_reason else ""

    def _instance_gone(self) -> bool:
        return self.instance.state.value != "open"

    def _aborted_error(self) -> JetError:
        if self.state == "failed" and self.error is not None:
            return InvalidBackupSequence(
                f"backup {self.id} failed ({self.error.name}: {self.error.detail})",
                hint="start a new backup",
            )
        return BackupAbortByServer(
            f"backup {self.id} was {self.state} while a file was being read{self._why()}",
            hint="start the backup again"
            + (" once the instance is open again" if self._instance_gone() else ""),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.id,
            "kind": self.kind.value,
            "state": self.state,
            "started_us": self.started_us,
            "first_generation": self.first_generation,
            "last_generation": self.last_generation,
            "bytes_streamed": self.bytes_streamed,
            "handles": self.instance.registry.total(self.owner),
        }

    def __enter__(self) -> BackupSession:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.state in ("starting", "running"):
            self.abort(
                "left the session without complete()"
                if exc is None
                else f"an exception ended the session ({type(exc).__name__})"
            )


def _history_held(db: Database, recorded: list[str]) -> str:
    """What the backup history holds after the header write of `db` went wrong, the headers
    of `recorded` written before it."""
    if recorded:
        return (
            f"the header(s) of {', '.join(repr(n) for n in recorded)} record it, whether "
            f"that of {db.name!r} does is unknown"
        )
    return f"whether the header of {db.name!r} records it is unknown, no other does"


class _HistoryWriteFailed(Exception):
    """A backup-history header write failed (`_record_history`): `error` says what the
    history holds; `cause` is the write's own error, which fails the instance."""

    def __init__(self, error: JetError, cause: JetError) -> None:
        super().__init__(error)
        self.error = error
        self.cause = cause


def _rechunk(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Regroup a stream of pieces into CHUNK_SIZE chunks (the last one may be shorter)."""
    pending: list[bytes] = []
    size = 0
    for piece in chunks:
        pending.append(piece)
        size += len(piece)
        if size >= CHUNK_SIZE:
            data = b"".join(pending)
            for start in range(0, len(data) - CHUNK_SIZE + 1, CHUNK_SIZE):
                yield data[start : start + CHUNK_SIZE]
            rest = data[len(data) - len(data) % CHUNK_SIZE :]
            pending = [rest] if rest else []
            size = len(rest)
    if pending:
        yield b"".join(pending)


def begin_backup(instance: Instance, kind: str | BackupKind) -> BackupSession:
    """Start a backup of `instance` (see `Instance.begin_backup`)."""
    parsed = BackupKind.parse(kind)
    session = BackupSession(instance, parsed)
    try:
        instance.backup_started(session)  # raises BackupInProgress if one runs
        session._start()
    except BaseException as exc:
        # Inside the `try` even when refused: an interrupt right after `backup_started`
        # returned would leave the session the instance's running backup, never ended, and
        # every later backup refused.
        if instance.backup_session is session:
            error = exc if isinstance(exc, JetError) else BackupAbortByServer(str(exc))
            session._fail(error)
        raise
    instance.events.emit(
        "backup_started",
        f"{parsed.value} backup {session.id} started: {len(session._images)} database "
        f"image(s), log generations from {session.first_generation}",
        session=session.id,
        kind=parsed.value,
        first_generation=session.first_generation,
    )
    return session


__all__ = [
    "BackupFile",
    "BackupHold",
    "BackupInProgress",
    "BackupKind",
    "BackupResult",
    "BackupSession",
    "ImageInfo",
    "begin_backup",
]


def _article(kind: BackupKind) -> str:
    """The indefinite article for a backup kind's name in messages."""
    return "an" if kind.value[:1] in "aeiou" else "a"
