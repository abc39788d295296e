"""Soft recovery: bring every database of an instance directory up to the end of the log.

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

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jetstore.errors import (
    AttachedDatabaseMismatch,
    BadLogSignature,
    DatabaseLogSetMismatch,
    FileNotFound,
    InvalidLogSequence,
    JetError,
    LogFileCorrupt,
    LogSequenceChecksumMismatch,
    MissingLogFile,
    RequiredLogFilesMissing,
)
from jetstore.format.checkpoint import CheckpointState, read_checkpoint_file
from jetstore.format.common import Signature, format_time_us, now_us
from jetstore.format.dbheader import NO_BACKUP_HISTORY, DatabaseHeader, DatabaseState
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    TEMP_LOG,
    database_file_name,
    generation_log_name,
    parse_database_file_name,
    parse_generation_log_name,
)
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    CreateDatabaseRecord,
    commit_time_us,
    decode_commit_header,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.log.reader import LogInventory, LogRecordEntry, LogScanner, take_inventory
from jetstore.log.writer import LogTail
from jetstore.pages.pagefile import CREATING_SUFFIX, DatabaseFile

if TYPE_CHECKING:
    from jetstore.instance.database import Database
    from jetstore.instance.instance import Instance


@dataclass
class DataLoss:
    """What a recovery with `accept_data_loss` could not replay, and where the logs went."""

    reason: str
    stopped_at: LogPosition | None
    databases: list[str]
    moved_logs_to: str | None = None


@dataclass(frozen=True)
class RestoreRequest:
    """Recovery of a restored directory: where replay stops (None: the end of the log)."""

    stop_generation: int | None = None
    stop_time_us: int | None = None

    def stops_before(self, entry: LogRecordEntry) -> bool:
        if self.stop_generation is not None and entry.end.generation > self.stop_generation:
            return True
        if self.stop_time_us is not None and record_type(entry.payload) == RECORD_COMMIT:
            return commit_time_us(entry.payload, entry.start) > self.stop_time_us
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


def read_checkpoint(instance: Instance, notes: list[str]) -> CheckpointState | None:
    path = os.path.join(instance.directory, CHECKPOINT_FILE)
    fs = instance.fs
    if not fs.exists(path):
        if any(name.endswith((".log", ".edb")) for name in fs.listdir(instance.directory)):
            notes.append(f"no checkpoint file ({CHECKPOINT_FILE}); the database headers decide")
        return None
    try:
        data = fs.read_file(path, owner=instance.owner)
        state, problems = read_checkpoint_file(data, path=path)
    except JetError as exc:
        notes.append(f"checkpoint file ignored: {exc.detail or exc}")
        return None
    notes.extend(problems)
    return state


def open_database_files(instance: Instance) -> dict[str, DatabaseFile]:
    files: dict[str, DatabaseFile] = {}
    try:
        for name in instance.fs.listdir(instance.directory):
            if name.endswith(CREATING_SUFFIX):
                # A creation cut short: the file holds no data (recovery re-creates the
                # database from its log record).
                instance.fs.unlink(os.path.join(instance.directory, name))
                continue
            db_name = parse_database_file_name(name)
            if db_name is None:
                continue
            path = os.path.join(instance.directory, name)
            files[db_name] = DatabaseFile.open(
                instance.fs,
                path,
                owner=instance.owner,
                cache_pages=instance.cache_pages,
                writable=True,
            )
    except BaseException:
        for file in files.values():
            file.close()
        raise
    return files


def _is_dirty(header: DatabaseHeader) -> bool:
    return header.state is not DatabaseState.CLEAN


def _required_range(header: DatabaseHeader) -> tuple[int, int]:
    low = header.checkpoint_position.generation
    high = max(header.generation_max_required, low)
    return low, high


def _missing_message(
    name: str, header: DatabaseHeader, missing: list[int], inventory: LogInventory
) -> str:
    low, high = _required_range(header)
    files = ", ".join(generation_log_name(g) for g in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return (
        f"database {name!r} needs log generations {low}-{high} "
        f"({generation_log_name(low)} to {generation_log_name(high)}) to recover, but "
        f"{files}{more} are missing; {inventory.describe_present()}"
    )


_OPTIONS_HINT = (
    "restore the missing log files, or restore from backup; or, accepting the loss of what "
    "they held, `jetstore recover DIR --accept-data-loss` brings every database to the last "
    "point the present logs allow (`jetstore logs verify DIR` shows what is present)"
)


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
    says what was lost.
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
    losses: list[tuple[str, str]] = []
    notes = outcome.notes
    fs = instance.fs
    checkpoint = read_checkpoint(instance, notes)
    inventory = take_inventory(fs, instance.directory, owner=instance.owner)
    notes.extend(inventory.problems)

    # The stream's signature: the logs are the stream; the checkpoint file only a hint.
    lowest = inventory.lowest
    stream_signature: Signature | None = None
    if lowest is not None:
        log_header = inventory.files[lowest].header
        assert log_header is not None
        stream_signature = log_header.log_signature
    if checkpoint is not None and stream_signature is not None:
        if checkpoint.log_signature != stream_signature:
            notes.append(
                f"checkpoint file ignored: it belongs to log stream {checkpoint.log_signature}, "
                f"the logs present are stream {stream_signature}"
            )
            checkpoint = None
        elif checkpoint.checkpoint_position.generation not in inventory.files:
            notes.append(
                f"checkpoint file ignored: it points to generation "
                f"{checkpoint.checkpoint_position.generation}, which is not present"
            )
            checkpoint = None
    outcome.checkpoint = checkpoint

    dirty: dict[str, DatabaseHeader] = {}
    for name, file in files.items():
        header = file.header
        if header.log_signature.is_none:
            continue
        if stream_signature is None or header.log_signature != stream_signature:
            if _is_dirty(header):
                if stream_signature is None:
                    low, high = _required_range(header)
                    if accept_data_loss:
                        losses.append((name, f"no log files are present (needed {low}-{high})"))
                        continue
                    raise MissingLogFile(
                        f"database {name!r} was not shut down cleanly and needs log generations "
                        f"{low}-{high}, but no log files are present in '{instance.directory}'",
                        hint=_OPTIONS_HINT,
                        path=file.path,
                    )
                raise DatabaseLogSetMismatch(
                    f"database {name!r} belongs to log stream {header.log_signature}, but the "
                    f"logs in '{instance.directory}' are stream {stream_signature}",
                    hint="put the database next to its own log files, or restore from backup",
                    path=file.path,
                )
            continue  # a clean database may join a new stream
        if _is_dirty(header):
            dirty[name] = header

    for name, header in dirty.items():
        low, high = _required_range(header)
        missing = inventory.missing(low, high)
        if missing:
            if accept_data_loss:
                losses.append((name, _missing_message(name, header, missing, inventory)))
                continue
            error = MissingLogFile if low in missing else RequiredLogFilesMissing
            raise error(
                _missing_message(name, header, missing, inventory),
                hint=_OPTIONS_HINT,
                path=os.path.join(instance.directory, generation_log_name(missing[0])),
            )

    if checkpoint is not None:
        for attached in checkpoint.attached:
            if attached.name not in files:
                notes.append(
                    f"database {attached.name!r} listed in the checkpoint file has no file; "
                    "it must be re-created by the log or it is reported missing"
                )

    members = [f for f in files.values() if f.header.log_signature == stream_signature]
    if (
        checkpoint is not None
        and not members
        and all(attached.name in files for attached in checkpoint.attached)
    ):
        # Every database the checkpoint lists is here but none belongs to this stream any
        # more (set apart by a data-loss repair, or joined elsewhere): the old logs are only
        # needed to continue the chain, so only the newest generation is read.
        notes.append(
            "no database belongs to the log stream in this directory any more; only its "
            "newest generation is read"
        )
        checkpoint = None
    candidates = [h.checkpoint_position for h in dirty.values()]
    if checkpoint is not None:
        candidates.append(checkpoint.checkpoint_position)
    highest = inventory.highest
    if highest is None:
        outcome.signature = None
        instance.attach_recovered(files, outcome)
        if losses:
            _settle_data_loss(instance, outcome, losses, None, dirty)
        return outcome
    if not candidates:
        candidates.append(LogPosition(highest, 0))
    start = min(candidates)
    outcome.start = start
    outcome.signature = stream_signature
    outcome.needed = bool(dirty)

    # Databases become live objects now; replay applies to their in-memory trees only.
    databases = instance.attach_recovered(files, outcome)
    # Only databases of this log stream receive its records. A database stamped with another
    # stream (or none: repaired after data loss, or a clean copy from another instance)
    # shares nothing with these logs, even if its id collides with one of them.
    by_id: dict[int, Database] = {
        db.db_id: db
        for db in databases.values()
        if db.file.header.log_signature == stream_signature
    }
    foreign_ids = {db.db_id for db in databases.values() if db.db_id not in by_id}
    pending_create: dict[int, CreateDatabaseRecord] = {}
    pending_ops: dict[int, list[tuple[LogPosition, bytes]]] = {}
    scanner = LogScanner(fs, inventory, owner=instance.owner, signature=stream_signature)
    last_good: LogPosition | None = None
    try:
        for entry in scanner.records(start):
            if restore is not None and restore.stops_before(entry):
                outcome.restore_stopped = True
                break
            _replay_entry(
                instance, entry, by_id, foreign_ids, pending_create, pending_ops, files, outcome
            )
            last_good = entry.end
    except (
        MissingLogFile,
        LogFileCorrupt,
        InvalidLogSequence,
        LogSequenceChecksumMismatch,
        BadLogSignature,
    ) as exc:
        if not accept_data_loss:
            raise
        losses.append(("*", f"replay stopped at {last_good or start}: {exc.detail or exc}"))
    for db in databases.values():
        db.finish_replay()
    result = scanner.result
    outcome.generations = list(result.generations)
    outcome.tail = result.tail
    outcome.torn_tail = result.torn_position
    notes.extend(result.notes)
    tail_generation = result.tail.generation if result.tail is not None else 0
    scan_stopped = any(name == "*" for name, _ in losses)
    for name, header in dirty.items():
        if scan_stopped or outcome.restore_stopped:
            break  # the scan error already says where the usable log ends; a restore
            # stopped on purpose, and its images are consistent at their checkpoints
        if header.generation_max_required > tail_generation:
            missing = list(range(tail_generation + 1, header.generation_max_required + 1))
            if accept_data_loss:
                losses.append((name, _missing_message(name, header, missing, inventory)))
                continue
            raise RequiredLogFilesMissing(
                _missing_message(name, header, missing, inventory),
                hint=_OPTIONS_HINT,
                path=os.path.join(instance.directory, generation_log_name(missing[0])),
            )
    if stream_signature is not None:
        for file in files.values():
            if file.header.log_signature.is_none and _is_dirty(file.header):
                raise FileNotFound(f"database '{file.path}' has no log stream")
    unmatched = set(creating) - {create.name for create in pending_create.values()}
    if unmatched:
        name = sorted(unmatched)[0]
        raise AttachedDatabaseMismatch(
            f"database file {creating[name].path!r} was being created, but the log holds no "
            "record of its creation",
            hint="move the file away (it holds no data), then open the instance",
            path=creating[name].path,
        )
    for db_id, create in pending_create.items():
        partial = creating.pop(create.name, None)
        if partial is not None:
            partial.close()
            instance.fs.unlink(partial.path)
        db = instance.create_database_file(create)
        for end, payload in pending_ops[db_id]:
            db.apply_replayed(payload, end)
        db.finish_replay()
        outcome.created.append(create.name)
    if inventory.interrupted_roll is not None:
        # Finish the roll the crash cut short: the new generation's file (header only) takes
        # the current log's name, as the second rename would have done.
        fs.rename(inventory.interrupted_roll.path, os.path.join(instance.directory, CURRENT_LOG))
        fs.fsync_directory(instance.directory, owner=instance.owner)
    if losses:
        _settle_data_loss(instance, outcome, losses, last_good, dirty)
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
    dirty: dict[str, DatabaseHeader],
) -> None:
    """Make the recovered state stand on its own, then set the unusable logs aside.

    Order matters for a crash in the middle: first every database is written (pages, then
    both header copies: clean, no log stream, marked repaired), so it needs no log at all;
    only then are the old logs moved into `lost-logs-<time>/` and a new log stream starts.
    """
    databases = instance.attached_databases()
    now = now_us()
    # Every database that lost data is marked repaired: those replay reached (`dirty`) and
    # those set aside before replay (named in `losses`, e.g. when no log is left at all).
    repaired = set(dirty) | {name for name, _ in losses}
    for db in databases:
        root, position, _epoch = db.published
        plan = db.file.plan_checkpoint(root, position)
        db.file.write_checkpoint_pages(plan)
        header = db.file.header
        db.file.header_for_plan(
            plan,
            state=DatabaseState.CLEAN,
            log_signature=Signature.NONE,
            generation_min_required=0,
            generation_max_required=0,
            repair_count=header.repair_count + (1 if db.name in repaired else 0),
            last_repair_time=now if db.name in repaired else header.last_repair_time,
            # The generations the history names belong to the stream being set aside.
            **NO_BACKUP_HISTORY,
        )
        db.file.write_header(checkpoint_position=LogPosition.MIN)
        db.file.finish_checkpoint(plan, None)
        db.rebase_position(LogPosition.MIN)
    moved = _move_logs_aside(instance)
    affected = sorted({name for name, _ in losses if name != "*"} | set(dirty))
    reasons = list(dict.fromkeys(reason for _, reason in losses))  # each once, in order
    outcome.data_loss = DataLoss(
        reason="; ".join(reasons),
        stopped_at=stopped_at,
        databases=affected,
        moved_logs_to=moved,
    )
    outcome.signature = None
    outcome.tail = None
    outcome.checkpoint = None
    outcome.needed = True


def _move_logs_aside(instance: Instance) -> str | None:
    fs = instance.fs
    names = [
        name
        for name in fs.listdir(instance.directory)
        if name in (CURRENT_LOG, TEMP_LOG, CHECKPOINT_FILE)
        or parse_generation_log_name(name) is not None
    ]
    if not names:
        return None
    stamp = format_time_us(now_us()).replace(":", "").replace("-", "")
    target = os.path.join(instance.directory, f"lost-logs-{stamp}")
    fs.makedirs(target)
    for name in names:
        fs.rename(os.path.join(instance.directory, name), os.path.join(target, name))
    fs.fsync_directory(target, owner=instance.owner)
    fs.fsync_directory(instance.directory, owner=instance.owner)
    return target


def _replay_entry(
    instance: Instance,
    entry: LogRecordEntry,
    by_id: dict[int, Database],
    foreign_ids: set[int],
    pending_create: dict[int, CreateDatabaseRecord],
    pending_ops: dict[int, list[tuple[LogPosition, bytes]]],
    files: dict[str, DatabaseFile],
    outcome: RecoveryOutcome,
) -> None:
    """Apply one record found in the log (or remember it for a database still to create)."""
    payload = entry.payload
    if record_type(payload) == RECORD_COMMIT:
        database_id, _count = decode_commit_header(payload, entry.start)
        db = by_id.get(database_id)
        if db is None:
            if database_id in foreign_ids and database_id not in pending_create:
                outcome.skipped += 1
                return
            if database_id in pending_create:
                pending_ops[database_id].append((entry.end, payload))
                outcome.replayed += 1
                return
            raise AttachedDatabaseMismatch(
                f"the log at {entry.start} holds changes for database id "
                f"{database_id}, but no database file in '{instance.directory}' "
                f"has that id",
                hint="put the missing database file back, or restore from backup",
            )
        if entry.start >= db.file.header.checkpoint_position:
            db.apply_replayed(payload, entry.end)
            outcome.replayed += 1
            outcome.needed = True
        else:
            outcome.skipped += 1
        return
    record = decode_record(payload, entry.start)
    if isinstance(record, CreateDatabaseRecord):
        existing = by_id.get(record.database_id)
        if existing is not None:
            if existing.file.header.db_signature.random != record.signature_random:
                raise AttachedDatabaseMismatch(
                    f"database file {existing.file.path!r} has id {record.database_id} "
                    "but is not the database the log created with that id",
                    hint="move the foreign database file away, or restore from backup",
                    path=existing.file.path,
                )
            return
        if record.name in files:
            if files[record.name].header.db_id in foreign_ids:
                return  # created in this stream, since set apart from it (see by_id)
            raise AttachedDatabaseMismatch(
                f"database file for {record.name!r} exists with another id than the log "
                f"created it with ({record.database_id})",
                path=os.path.join(instance.directory, database_file_name(record.name)),
            )
        pending_create[record.database_id] = record
        pending_ops[record.database_id] = []
        outcome.needed = True
