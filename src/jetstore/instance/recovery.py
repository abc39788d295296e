"""Soft recovery: bring every database of an instance directory up to the end of the log.

This module owns the acting side of recovery: opening the database files, replaying records
into them, creating the databases the log re-creates, finishing an interrupted roll, and
settling a data loss or a restore. What to do is decided in
`jetstore.instance.recoverydecisions`, the same code `jetstore diagnose` reports from; this
module makes no decision of its own about errors, losses, notes or the start position.

Runs at every open, before anything is written:

1. Read the checkpoint file (a hint: missing, damaged, foreign or pointing at a generation
   that no longer exists is noted and ignored), take the log inventory, open every `*.edb`.
2. Decide the log stream's signature and check every database belongs to it
   (`DatabaseLogSetMismatch` for a dirty database of another stream).
3. The start position is the lowest of the valid checkpoint file's position and the
   checkpoint positions in the headers of the databases that are not cleanly shut down.
   The headers are the authority: the generations they require must exist
   (`MissingLogFile` / `RequiredLogFilesMissing`, naming the range and what is present).
4. Scan the log from the start, verifying the whole chain (`jetstore.log.reader`); apply each
   committed record to its database if it starts at or after that database's own checkpoint
   position; create databases whose creation record is replayed but whose file is missing.
5. After the scan, check the log reaches every generation the headers say holds their
   commits (`RequiredLogFilesMissing` if the end of the log is gone).

Steps 1 to 3 are `decide_start`, the matching in 4 is `RecordMatcher`, 5 is
`check_after_scan`; a refusal there (`Refused`) is raised as the `JetError` it carries.

Restore (`jetstore.backup.restore`) runs the same recovery on a directory of copied images
and logs with a `RestoreRequest`: replay may stop at a generation or a commit time, and the
result is settled into databases that stand alone (clean, no log stream, backup history
cleared), the copied logs removed, so the restored instance starts a log stream of its own
and can never be mixed up with the original's logs or backups.

Every check happens before the first write: a recovery that fails leaves every file as it
found it. Replay is idempotent: the page file only changes at the checkpoint that follows,
so a crash during recovery just means recovery runs again from the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jetstore.errors import JetError
from jetstore.format.common import Signature, format_time_us, now_us
from jetstore.format.dbheader import NO_BACKUP_HISTORY, DatabaseState
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATA_LOSS_PENDING,
    DATA_LOSS_RECORD,
    LOST_LOGS_PREFIX,
    TEMP_LOG,
    parse_database_file_name,
    parse_generation_log_name,
    unused_time_stamp,
)
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    RECORD_CREATE_DATABASE,
    CreateDatabaseRecord,
    commit_time_us,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.instance.database import gather_replayable
from jetstore.instance.recoverydecisions import (
    SCAN_STOPS,
    PendingDataLoss,
    RecordMatcher,
    RecoveryStart,
    Refused,
    check_after_scan,
    check_one_name_per_file,
    databases_losing_data,
    decide_start,
    read_checkpoint,
    read_pending_data_loss,
    scan_stop_generation,
    scan_stop_loss,
    too_many_to_list,
)
from jetstore.io.handles import release_all, use_owner
from jetstore.log.reader import LogRecordEntry, LogScanner, take_inventory
from jetstore.log.writer import LogTail
from jetstore.pages.pagefile import CREATING_SUFFIX, DatabaseFile

if TYPE_CHECKING:
    from jetstore.format.checkpoint import CheckpointState
    from jetstore.instance.instance import Instance


@dataclass
class DataLoss:
    """What a recovery with `accept_data_loss` could not replay, and where the logs went.

    `databases` are those that lost data (`databases_losing_data`); `recovered_completely`
    the attached databases that got every record they needed; `without_file` those of
    `databases` that had no file to recover (their logged changes went aside with the logs).
    """

    reason: str
    stopped_at: LogPosition | None
    databases: list[str]
    moved_logs_to: str | None = None
    recovered_completely: list[str] = field(default_factory=list)
    without_file: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The loss in one message: event 113's, and what a command says whose open
        finished a data-loss repair (so the two never tell it differently)."""
        complete = (
            f"; {', '.join(self.recovered_completely)} lost nothing (every record "
            "they needed was replayed)"
            if self.recovered_completely
            else ""
        )
        brought = [name for name in self.databases if name not in self.without_file]
        fileless = (
            f"; {', '.join(self.without_file)} had no file to recover (the changes the "
            "logs held for them were set aside with the logs)"
            if self.without_file
            else ""
        )
        return (
            f"recovery accepted data loss: {self.reason}; databases "
            f"{', '.join(brought) or 'none'} were brought to the last consistent "
            f"point the logs allowed ({self.stopped_at or 'their checkpoint'})"
            f"{fileless}{complete}; "
            f"the old logs were moved to {self.moved_logs_to or 'nowhere (none present)'} "
            "and a new log stream begins"
        )


@dataclass(frozen=True)
class RestoreRequest:
    """Recovery of a restored directory: where replay stops (None: the end of the log)."""

    stop_generation: int | None = None
    stop_time_us: int | None = None

    def stops_before(self, entry: LogRecordEntry) -> bool:
        if self.stop_generation is not None and entry.end.generation > self.stop_generation:
            return True
        if self.stop_time_us is not None:
            kind = record_type(entry.payload)
            if kind == RECORD_COMMIT:
                return commit_time_us(entry.payload, entry.start) > self.stop_time_us
            if kind == RECORD_CREATE_DATABASE:
                # A database created after the stop time did not exist then: its creation
                # (stamped under the commit lock right before it is appended, as a commit
                # is) stops replay like a later commit. Applied, it left an empty database
                # the instance never had at that time.
                record = decode_record(entry.payload, entry.start)
                assert isinstance(record, CreateDatabaseRecord)
                return record.signature_time_us > self.stop_time_us
        return False


@dataclass
class RecoveryOutcome:
    signature: Signature | None = None
    tail: LogTail | None = None
    start: LogPosition | None = None
    replayed: int = 0
    skipped: int = 0
    needed: bool = False
    created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint: CheckpointState | None = None
    torn_tail: LogPosition | None = None
    data_loss: DataLoss | None = None
    generations: list[tuple[int, int]] = field(default_factory=list)
    restored_to: LogPosition | None = None  # restore: the end of the last record replayed
    restore_stopped: bool = False  # restore: replay stopped before the end of the log
    #: (database, log position) of each database file the log detached during replay: it
    #: is recovered as it was there (`RecordMatcher`).
    detached: list[tuple[str, LogPosition]] = field(default_factory=list)
    #: restore: (database, log position) of each database attached after the backup (its
    #: records skipped, it has no image).
    not_restored: list[tuple[str, LogPosition]] = field(default_factory=list)
    #: Databases the log detached whose file is not here (`RecordMatcher.left`): the
    #: checkpoint file may list them still; they are not missing.
    left: list[str] = field(default_factory=list)


def open_database_files(instance: Instance) -> dict[str, DatabaseFile]:
    """Open every `NAME.edb` of the instance directory (deleting creations cut short); on
    any way out but success none stays open.

    The files open under a sub-owner of this call's own, closed with them on failure: a
    Ctrl-C as an open returned, before its file was stored, left it open and locked under
    the instance's owner, for the instance's final cleanup alone to close (as in
    `Instance.attach`). The sub-owner stays theirs once opened: `close_owner` of the
    instance's owner reaches it."""
    names = instance.fs.listdir(instance.directory)
    paths = {
        db_name: os.path.join(instance.directory, name)
        for name in names
        if (db_name := parse_database_file_name(name)) is not None
    }
    try:
        check_one_name_per_file(instance.fs, paths)
    except Refused as refused:
        raise refused.error from None
    files: dict[str, DatabaseFile] = {}
    scope = use_owner(instance.owner)
    try:
        for name in names:
            if name.endswith(CREATING_SUFFIX):
                # A creation cut short: the file holds no data (recovery re-creates the
                # database from its log record).
                instance.fs.unlink(os.path.join(instance.directory, name))
                continue
            db_name = parse_database_file_name(name)
            if db_name is None:
                continue
            path = os.path.join(instance.directory, name)
            # A damaged header copy is rewritten only once recovery accepted every file
            # (`repair_header_copies`): a refused open leaves the files as it found them.
            files[db_name] = instance.open_database_file(path, owner=scope, repair=False)
    except BaseException:
        # The error that stopped the opens is the one reported, not a failed close.
        with contextlib.suppress(Exception):
            release_all(
                *(file.close for file in files.values()),
                lambda: instance.registry.close_owner(scope),
            )
        raise
    return files


def _refuse_beyond_the_checkpoint_list(
    instance: Instance, files: Mapping[str, DatabaseFile]
) -> None:
    """`TooManyOpenDatabases` before anything is written when the checkpoint file cannot
    list the database files of the directory, every one clean and the log holding no record
    from where recovery starts (files moved out then stay out: a record of one after that
    point, its creation above all, would bring it back). Otherwise recovery goes on: the
    open's final checkpoint writes every database clean and a checkpoint file at the end of
    the log listing all but the files to move out, then refuses (`Instance`); the next open
    refuses here."""
    error = too_many_to_list(instance.directory, list(files))
    if error is not None:
        raise error


def repair_header_copies(files: Mapping[str, DatabaseFile]) -> None:
    """Rewrite each damaged header copy from the good one (event 132 says so at open).

    Called once recovery's checks have passed, before anything else is written: a
    writable open used to rewrite the copy at once, so a database recovery then refused
    (another log stream, missing logs, ...) had been modified all the same."""
    for file in files.values():
        file.repair_header()


def recover(
    instance: Instance,
    files: dict[str, DatabaseFile],
    *,
    accept_data_loss: bool = False,
    restore: RestoreRequest | None = None,
) -> RecoveryOutcome:
    """Replay the log into the opened `files`; registers every database with `instance`.

    With `accept_data_loss`, missing or damaged logs do not stop recovery: every database is
    brought to the last consistent point the logs present allow (replay stops at the first gap
    or damage; the page file of a copy-on-write database is consistent at its checkpoint by
    itself), the old logs are moved aside and a new log stream begins; `outcome.data_loss`
    says what was lost and which databases lost it (the others are recovered completely).
    """
    # A database whose creation was cut short (its header still says "just created", no log
    # stream yet) is re-created from its CREATE_DATABASE record, which is always durable
    # before the file is made and always after the durable checkpoint.
    creating = {
        name: file
        for name, file in files.items()
        if file.header.state is DatabaseState.JUST_CREATED
    }
    for name in creating:
        del files[name]
    try:
        return _recover(instance, files, creating, accept_data_loss, restore)
    except Refused as refused:
        # What blocked is spelled out for the diagnosis; open() reports the error alone.
        raise refused.error from None
    finally:
        for file in creating.values():
            file.close()


def _recover(
    instance: Instance,
    files: dict[str, DatabaseFile],
    creating: dict[str, DatabaseFile],
    accept_data_loss: bool,
    restore: RestoreRequest | None = None,
) -> RecoveryOutcome:
    outcome = RecoveryOutcome()
    notes = outcome.notes
    fs = instance.fs
    # A loss accepted and recorded by an open that failed before it set every log aside is
    # still accepted: this open finishes that repair (and reports it) whatever it was asked.
    pending = read_pending_data_loss(fs, instance.directory, instance.owner)
    accept_data_loss = accept_data_loss or pending is not None
    reading = read_checkpoint(fs, instance.directory, instance.owner)
    inventory = take_inventory(fs, instance.directory, owner=instance.owner)
    decided = decide_start(
        reading, inventory, files, instance.directory, accept_data_loss=accept_data_loss
    )
    notes.extend(decided.notes)
    outcome.checkpoint = decided.checkpoint
    losses = list(decided.losses)
    dirty = decided.dirty
    start = decided.start
    if start is None:
        outcome.signature = None
        if not losses and pending is None:
            _refuse_beyond_the_checkpoint_list(instance, files)
        repair_header_copies(files)
        instance.attach_recovered(files, outcome)
        if losses or pending is not None:
            _settle_data_loss(
                instance, outcome, losses, None, decided, stopped_in=None, pending=pending
            )
        return outcome
    outcome.start = start
    outcome.signature = decided.signature
    outcome.needed = bool(dirty)

    # Databases become live objects now; replay applies to their in-memory trees only.
    databases = instance.attach_recovered(files, outcome)
    matcher = RecordMatcher(files, decided, restoring=restore is not None)
    pending_ops: dict[int, list[tuple[LogPosition, LogPosition, bytes]]] = {}
    scanner = LogScanner(fs, inventory, owner=instance.owner, signature=decided.signature)
    last_good: LogPosition | None = None
    scan_stopped = False
    stopped_in: int | None = None  # the generation a stopped scan could not read through
    brought_forward: set[str] = set()  # databases records were applied to
    scanned = 0  # records read from `start` on
    try:
        for entry in scanner.records(start):
            scanned += 1
            if restore is not None and restore.stops_before(entry):
                outcome.restore_stopped = True
                break
            found = matcher.match(entry)
            if found is not None:
                if found.kind == "apply":
                    databases[found.name].apply_replayed(entry.payload, entry.start, entry.end)
                    brought_forward.add(found.name)
                elif found.kind == "create":
                    pending_ops[found.database_id] = []
                elif found.kind == "pending":
                    # Applied after the scan, once the file is made: checked now, so that a
                    # bad record stops the scan here (or refuses) before any file is made.
                    create = matcher.pending_create[found.database_id]
                    gather_replayable(entry.payload, entry.start, create.page_size, create.name)
                    pending_ops[found.database_id].append((entry.start, entry.end, entry.payload))
                matcher.count(found)
            last_good = entry.end
    except SCAN_STOPS as exc:
        if not accept_data_loss:
            raise
        losses.append(scan_stop_loss(exc, last_good, start))
        scan_stopped = True
        stopped_in = scan_stop_generation(scanner.result, start)
    matcher.finish()
    losses.extend(matcher.losses)
    notes.extend(matcher.notes)
    outcome.detached = list(matcher.detached)
    outcome.not_restored = list(matcher.not_restored)
    outcome.left = sorted(matcher.left)
    outcome.replayed = matcher.replayed
    outcome.skipped = matcher.skipped
    outcome.needed = outcome.needed or matcher.needed
    for db in databases.values():
        db.finish_replay()
    result = scanner.result
    outcome.generations = list(result.generations)
    outcome.tail = result.tail
    outcome.torn_tail = result.torn_position
    notes.extend(result.notes)
    pending_create = matcher.pending_create
    losses.extend(
        check_after_scan(
            decided,
            files,
            creating,
            [create.name for create in pending_create.values()],
            result.tail,
            replay_stopped=scan_stopped or outcome.restore_stopped,
        )
    )
    if not (scanned or outcome.needed or pending_create or losses or pending or restore):
        _refuse_beyond_the_checkpoint_list(instance, files)
    # Every check passed: the first write to a database file.
    repair_header_copies(files)
    for db_id, create in pending_create.items():
        partial = creating.pop(create.name, None)
        if partial is not None:
            partial.close()
            instance.fs.unlink(partial.path)
        db = instance.create_database_file(create)
        for start_at, end, payload in pending_ops[db_id]:
            db.apply_replayed(payload, start_at, end)
        db.finish_replay()
        outcome.created.append(create.name)
    if inventory.interrupted_roll is not None:
        # Finish the roll the crash cut short: the new generation's file (header only) takes
        # the current log's name, as the second rename would have done.
        fs.rename(inventory.interrupted_roll.path, os.path.join(instance.directory, CURRENT_LOG))
        fs.fsync_directory(instance.directory, owner=instance.owner)
    if losses or pending is not None:
        _settle_data_loss(
            instance,
            outcome,
            losses,
            last_good,
            decided,
            stopped_in=stopped_in,
            brought_forward=brought_forward,
            created=[create.name for create in pending_create.values()],
            pending=pending,
        )
    elif restore is not None:
        _settle_restored(instance, outcome, last_good)
    return outcome


def _settle_restored(
    instance: Instance, outcome: RecoveryOutcome, stopped_at: LogPosition | None
) -> None:
    """End a restore: every database written clean and bound to no log stream (pages, then
    both header copies), backup history cleared; then the copied logs and checkpoint file
    are deleted. A crash in between leaves databases that need no log: recovery at the next
    open starts a new stream either way."""
    for db in instance.attached_databases():
        root, position, _epoch = db.published
        plan = db.file.plan_checkpoint(root, position)
        db.file.write_checkpoint_pages(plan)
        db.file.header_for_plan(
            plan,
            state=DatabaseState.CLEAN,
            log_signature=Signature.NONE,
            generation_min_required=0,
            generation_max_required=0,
            generation_max_committed=0,
            last_consistent_position=LogPosition.MIN,
            last_consistent_time=now_us(),
            **NO_BACKUP_HISTORY,
        )
        db.file.write_header(checkpoint_position=LogPosition.MIN)
        db.file.finish_checkpoint(plan, None)
        db.rebase_position(LogPosition.MIN)
    fs = instance.fs
    for name in fs.listdir(instance.directory):
        if name in (CURRENT_LOG, TEMP_LOG, CHECKPOINT_FILE) or (
            parse_generation_log_name(name) is not None
        ):
            fs.unlink(os.path.join(instance.directory, name))
    fs.fsync_directory(instance.directory, owner=instance.owner)
    outcome.restored_to = stopped_at
    outcome.signature = None
    outcome.tail = None
    outcome.checkpoint = None
    outcome.needed = True


def _settle_data_loss(
    instance: Instance,
    outcome: RecoveryOutcome,
    losses: list[tuple[str, str]],
    stopped_at: LogPosition | None,
    decided: RecoveryStart,
    *,
    stopped_in: int | None,
    brought_forward: Collection[str] = (),
    created: Collection[str] = (),
    pending: PendingDataLoss | None = None,
) -> None:
    """Make the recovered state stand on its own, then set the unusable logs aside.

    Order matters for a failure or a crash in the middle: first the loss is recorded in
    `lost-logs-<time>/` (`data-loss.pending.json`, synced), then every database is written
    (pages, then both header copies: clean, no log stream; those that lost data marked
    repaired), so it needs no log at all; only then are the old logs moved there, the record
    renamed `data-loss.json`, and a new log stream starts. Until that rename, every open
    finishes this repair from the record (`read_pending_data_loss`) and reports its loss:
    rewritten databases next to the old logs are never taken for a stream to continue.
    """
    databases = instance.attached_databases()
    # Only the databases that lost data are marked repaired (`databases_losing_data`: named
    # in `losses`, or needing what lies past where a stopped scan ended); the others got
    # every record they needed and are recovered completely.
    affected = databases_losing_data(
        losses,
        decided,
        stopped_in=stopped_in,
        brought_forward=brought_forward,
        created=created,
    )
    reasons = [reason for _, reason in losses]
    without_file = {name for name in affected if name not in {db.name for db in databases}}
    if pending is not None:
        affected = sorted({*affected, *pending.databases})
        reasons[:0] = pending.reasons
        stopped_at = pending.stopped_at or stopped_at
        without_file.update(pending.without_file)
    now = pending.time_us if pending is not None and not pending.unreadable else now_us()
    repaired = set(affected)
    reasons = list(dict.fromkeys(reasons))  # each once, in order
    loss = DataLoss(
        reason="; ".join(reasons),
        stopped_at=stopped_at,
        databases=affected,
        # An unreadable record cannot tell which databases the interrupted repair found
        # losing data (it may have rewritten them already): none is said to have lost nothing.
        recovered_completely=[]
        if pending is not None and pending.unreadable
        else sorted(db.name for db in databases if db.name not in repaired),
        without_file=sorted(without_file),
    )
    target = _record_data_loss(instance, loss, reasons, now, pending)
    for db in databases:
        root, position, _epoch = db.published
        plan = db.file.plan_checkpoint(root, position)
        db.file.write_checkpoint_pages(plan)
        header = db.file.header
        # A database the interrupted repair already stamped keeps its count.
        counted = db.name in repaired and header.last_repair_time != now
        db.file.header_for_plan(
            plan,
            state=DatabaseState.CLEAN,
            log_signature=Signature.NONE,
            generation_min_required=0,
            generation_max_required=0,
            repair_count=header.repair_count + (1 if counted else 0),
            last_repair_time=now if db.name in repaired else header.last_repair_time,
            # The generations the history names belong to the stream being set aside.
            **NO_BACKUP_HISTORY,
        )
        db.file.write_header(checkpoint_position=LogPosition.MIN)
        db.file.finish_checkpoint(plan, None)
        db.rebase_position(LogPosition.MIN)
    loss.moved_logs_to = _move_logs_aside(instance, target)
    outcome.data_loss = loss
    outcome.signature = None
    outcome.tail = None
    outcome.checkpoint = None
    outcome.needed = True


def _record_data_loss(
    instance: Instance,
    loss: DataLoss,
    reasons: list[str],
    now: int,
    pending: PendingDataLoss | None,
) -> str:
    """Write `loss` durably into its `lost-logs-<time>/` (the interrupted repair's, if any)
    as `data-loss.pending.json`; returns that directory."""
    fs = instance.fs
    if pending is not None:
        target = pending.directory
    else:
        stamp = unused_time_stamp(
            now,
            lambda stamp: fs.exists(os.path.join(instance.directory, LOST_LOGS_PREFIX + stamp)),
        )
        target = os.path.join(instance.directory, LOST_LOGS_PREFIX + stamp)
        fs.makedirs(target)
    stopped = loss.stopped_at
    record = {
        "format": "jetstore-data-loss",
        "time_us": now,
        "time": format_time_us(now),
        "reasons": reasons,
        "stopped_at": None if stopped is None else [stopped.generation, stopped.offset],
        "databases": loss.databases,
        "without_file": loss.without_file,
        "recovered_completely": loss.recovered_completely,
    }
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    path = os.path.join(target, DATA_LOSS_PENDING)
    try:
        fs.write_new_file(path, [text.encode()], owner=instance.owner)
        fs.fsync_directory(target, owner=instance.owner)
        fs.fsync_directory(instance.directory, owner=instance.owner)
    except BaseException:
        if pending is None:
            # The directory made here holds no record: the loss is not accepted (nothing
            # was written to a database yet), and the next open makes a directory of its
            # own. Left behind, each failed open (a full volume) added an empty
            # `lost-logs-<time>/` that looked like the record of a repair.
            with contextlib.suppress(JetError):
                if not fs.exists(path):
                    for name in fs.listdir(target):
                        fs.unlink(os.path.join(target, name))
                    fs.rmdir(target)
        raise
    return target


def _move_logs_aside(instance: Instance, target: str) -> str:
    """Move the logs and checkpoint file into `target`, then mark the repair finished."""
    fs = instance.fs
    for name in fs.listdir(instance.directory):
        if name in (CURRENT_LOG, TEMP_LOG, CHECKPOINT_FILE) or (
            parse_generation_log_name(name) is not None
        ):
            fs.rename(os.path.join(instance.directory, name), os.path.join(target, name))
    fs.fsync_directory(instance.directory, owner=instance.owner)
    fs.rename(os.path.join(target, DATA_LOSS_PENDING), os.path.join(target, DATA_LOSS_RECORD))
    fs.fsync_directory(target, owner=instance.owner)
    return target
