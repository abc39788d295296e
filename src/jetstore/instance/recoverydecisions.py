"""The decisions of soft recovery, made once for the recovery that acts on them and the
diagnosis that reports them.

This module owns everything `jetstore.open` decides about an instance directory before it
writes: what the checkpoint file is worth (`read_checkpoint`, then `decide_start`: kept, or
ignored as foreign, stale or set aside), which log stream the directory holds, which databases
need replay, from which position and which generations they require (`decide_start`), which
database each log record goes to (`RecordMatcher`), what a scan stopped early costs
(`scan_stop_loss`), and the checks once the scan has reached the end of the log
(`check_after_scan`). `jetstore.instance.recovery` acts on these decisions (replays, creates
databases, settles a data loss); `jetstore.instance.diagnosis` only counts and reports them
(`jetstore diagnose`). Neither makes a decision of its own, so the two cannot disagree.

Invariants:
- Read-only: the checkpoint file is the only file read here, and nothing is written. The other
  facts come from the caller, each read its own way (recovery opens `DatabaseFile`s for
  writing, diagnosis peeks at headers read-only; both scan with `LogScanner`).
- A refusal raises `Refused`: its `error` is exactly the `JetError` `jetstore.open` raises
  (class, detail, hint, path); `kind`, `database`, `missing` and `position` say what blocked,
  for the diagnosis's plain words (so it never works them out again). Recovery raises
  `error` alone.
- One order, the first failing check refuses: a checkpoint file of a newer format version
  (`read_checkpoint`), each stamped database against the log stream
  (dirty of another stream, or dirty with no log at all), two databases of the stream with
  one id, the generations each dirty header requires, an unreadable log file the stream would
  write over (`_overwritten_if_continued`), (the caller's scan, which may refuse
  with `SCAN_STOPS`), the generations required beyond the end of the log, a dirty database
  bound to no stream, a database being created that the log never created.
- Database ids are unique among the stream's databases; a clean database joining it whose id
  is taken is noted here and renumbered by `Instance` before its header is first written.
- With `accept_data_loss`, a missing or unreadable generation is a loss `(database, reason)`
  (database "*" for a scan that stopped) instead of a refusal; the reason texts are the ones
  recovery reports in `DataLoss.reason`. A refusal no option fixes refuses either way.
  Which databases the loss touches is `databases_losing_data`: those a loss names, and for a
  scan that stopped in generation S (`scan_stop_generation`) the databases not shut down
  cleanly whose header requires S or later, and the clean older copies replay was bringing
  forward. Every other database got every record it needed and is recovered completely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from jetstore.errors import (
    AttachedDatabaseMismatch,
    BadLogSignature,
    BadLogVersion,
    ConsistentTimeMismatch,
    DatabaseLogSetMismatch,
    DatabaseSignInUse,
    FileNotFound,
    InvalidLogSequence,
    InvalidPath,
    JetError,
    LogFileCorrupt,
    LogFileSizeMismatch,
    LogSequenceChecksumMismatch,
    MissingLogFile,
    RequiredLogFilesMissing,
    TooManyOpenDatabases,
)
from jetstore.format.checkpoint import (
    ATTACH_AREA_SIZE,
    AttachedDatabase,
    CheckpointState,
    attached_size,
    read_checkpoint_file,
)
from jetstore.format.common import Signature
from jetstore.format.dbheader import DatabaseHeader, DatabaseState
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATA_LOSS_PENDING,
    LOST_LOGS_PREFIX,
    database_file_name,
    generation_log_name,
    parse_generation_log_name,
)
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    AttachDatabaseRecord,
    CreateDatabaseRecord,
    DetachDatabaseRecord,
    decode_commit_header,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem
from jetstore.log.reader import (
    GenerationFile,
    LogInventory,
    LogRecordEntry,
    MisnamedLog,
    ScanResult,
)
from jetstore.log.writer import LogTail

__all__ = [
    "SCAN_STOPS",
    "CheckpointReading",
    "CheckpointStatus",
    "DatabaseOnDisk",
    "HeaderOnDisk",
    "RecordMatch",
    "RecordMatcher",
    "RecoveryStart",
    "RefusalKind",
    "Refused",
    "check_after_scan",
    "check_one_name_per_file",
    "databases_losing_data",
    "decide_start",
    "is_dirty",
    "misnamed_for_missing",
    "names_to_move_out",
    "read_checkpoint",
    "required_range",
    "scan_stop_generation",
    "scan_stop_loss",
    "stream_signature",
    "too_many_to_list",
]

#: The scan errors a recovery with `accept_data_loss` turns into a stop instead of a refusal.
SCAN_STOPS: tuple[type[JetError], ...] = (
    MissingLogFile,
    LogFileCorrupt,
    LogFileSizeMismatch,
    InvalidLogSequence,
    LogSequenceChecksumMismatch,
    BadLogSignature,
)

#: "unreadable": a log file that cannot be read lies where the stream would write next;
#: "not-a-file": a directory or special file lies there, under a log file's name (or
#: where the log writer prepares its next file: `LogInventory.in_the_way`);
#: "missing": generations are missing; "foreign": a dirty database of another log stream;
#: "no-stream": a dirty database bound to no stream; "mismatch": database files and log do not
#: belong together; "scan": the chain scan failed; "header": a database header is unreadable
#: (the last two are found by the caller, which reads the files).
RefusalKind = Literal[
    "missing",
    "foreign",
    "no-stream",
    "mismatch",
    "scan",
    "header",
    "duplicate-id",
    "unreadable",
    "not-a-file",
    "same-file",
    "newer-version",
]

#: "valid" (kept), "missing", "damaged" (as read); "foreign", "stale", "set aside" (ignored by
#: `decide_start`).
CheckpointStatus = Literal["valid", "missing", "damaged", "foreign", "stale", "set aside"]

_OPTIONS_HINT = (
    "restore the missing log files, or restore from backup; or, accepting the loss of what "
    "they held, `jetstore recover DIR --accept-data-loss` brings every database to the last "
    "point the present logs allow (`jetstore logs verify DIR` shows what is present)"
)


class Refused(Exception):
    """Recovery refuses: `error` is what `jetstore.open` raises, the rest what blocked it."""

    def __init__(
        self,
        error: JetError,
        kind: RefusalKind,
        *,
        database: str | None = None,
        missing: list[int] | None = None,
        position: LogPosition | None = None,
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.kind: RefusalKind = kind
        self.database = database
        self.missing: list[int] = [] if missing is None else missing
        self.position = position


class DatabaseOnDisk(Protocol):
    """A database file as the decisions see it (`DatabaseFile` is one)."""

    @property
    def path(self) -> str: ...

    @property
    def header(self) -> DatabaseHeader: ...


@dataclass(frozen=True)
class HeaderOnDisk:
    """A database file's path and header, read without opening it for writing."""

    path: str
    header: DatabaseHeader


def names_to_move_out(names: Collection[str]) -> list[str]:
    """The fewest databases of `names` whose removal lets the checkpoint file list the rest
    (the longest names first); empty when all fit."""
    excess = attached_size([AttachedDatabase(0, name, Signature.NONE) for name in names])
    excess -= ATTACH_AREA_SIZE
    chosen: list[str] = []
    for name in sorted(names, key=lambda name: (-len(name.encode()), name)):
        if excess <= 0:
            break
        chosen.append(name)
        excess -= attached_size([AttachedDatabase(0, name, Signature.NONE)])
    return chosen


def too_many_to_list(directory: str, names: Collection[str]) -> TooManyOpenDatabases | None:
    """`TooManyOpenDatabases` (-1027) when the checkpoint file cannot list the databases
    `names` of the instance in `directory`, else None.

    Creating or attaching such a database is refused, but a directory may hold more: one
    made by an older jetstore (which created them, then failed at every checkpoint, and at
    every open after it), or clean files put into it. The open refused it with
    `InvalidParameter` from the checkpoint file's encoder ("check the value named in the
    message"). The open now recovers such a directory (its final checkpoint writes every
    database clean and a checkpoint file listing all but `names_to_move_out`), then
    refuses with this error, and refuses again before writing anything until the files
    are moved out.
    """
    size = attached_size([AttachedDatabase(0, name, Signature.NONE) for name in names])
    if size <= ATTACH_AREA_SIZE:
        return None
    move = names_to_move_out(names)
    examples = ", ".join(f"'{database_file_name(name)}'" for name in move[:3])
    return TooManyOpenDatabases(
        f"instance '{directory}' holds {len(names)} databases, more than the checkpoint "
        f"file ({CHECKPOINT_FILE}) can list: it lists every attached database in "
        f"{ATTACH_AREA_SIZE} bytes (30 plus the name's length each), and these need {size} "
        "(a directory made by an older jetstore, which created them, or database files put "
        "into it)",
        hint="every database file here is clean (none needs a log of this instance), so "
        f"moving one out loses nothing: move at least {len(move)} "
        f"database file(s) out of the instance directory ({examples}"
        f"{', ...' if len(move) > 3 else ''}: the checkpoint file does not list "
        f"{'them' if len(move) > 1 else 'it'}), then open it again; attach them to another "
        "instance (Instance.attach) to use them. A file moved out that the checkpoint file "
        "lists is reported missing (event 135) by the next open",
        path=directory,
    )


def check_one_name_per_file(fs: FileSystem, paths: Mapping[str, str]) -> None:
    """`Refused` (DatabaseSignInUse) when two database names of the directory (`paths`, by
    database name) are one file: a hard link or a symbolic link to another database file.

    Checked before any file is opened: the open of the second name met the first's lock,
    taken by the very instance opening, and was refused as "in use by" that instance,
    "close it first". The extra name is the one to remove, never a copy to attach.
    """
    seen: dict[tuple[int, int], str] = {}
    for name in sorted(paths):
        identity = fs.file_identity(paths[name])
        if identity is None:
            continue  # the open says what is wrong with it
        first = seen.setdefault(identity, name)
        if first == name:
            continue
        # The symbolic link is the extra name; between hard links, the later one.
        extra, kept = (first, name) if fs.is_symbolic_link(paths[first]) else (name, first)
        raise Refused(
            DatabaseSignInUse(
                f"'{paths[extra]}' and '{paths[kept]}' are one database file under two names "
                f"(a {'symbolic' if fs.is_symbolic_link(paths[extra]) else 'hard'} link): "
                "opened as two databases, its log records could not be told apart",
                hint=f"remove the name '{paths[extra]}' (the file stays under "
                f"'{paths[kept]}'), then open again; it is not a copy to attach: both names "
                "are the same database",
                path=paths[extra],
            ),
            "same-file",
            database=extra,
        )


def is_dirty(header: DatabaseHeader) -> bool:
    return header.state is not DatabaseState.CLEAN


def required_range(header: DatabaseHeader) -> tuple[int, int]:
    """The generations a dirty database needs: from its checkpoint to the newest it names."""
    low = header.checkpoint_position.generation
    return low, max(header.generation_max_required, low)


def stream_signature(inventory: LogInventory) -> Signature | None:
    """The log stream of a directory: the lowest generation's (the logs are the stream; the
    checkpoint file is only a hint). The rule is `jetstore.log.reader.stream_signature_of`,
    which the offline log tools apply too."""
    return inventory.stream_signature()


def _missing_message(
    name: str, header: DatabaseHeader, missing: list[int], inventory: LogInventory
) -> str:
    low, high = required_range(header)
    shown = ", ".join(str(g) for g in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    which = f"generation {shown} is" if len(missing) == 1 else f"generations {shown}{more} are"
    return (
        f"database {name!r} needs log generations {low}-{high} "
        f"({generation_log_name(low)} to {generation_log_name(high)}, or {CURRENT_LOG} for "
        f"the newest) to recover, but {which} missing: "
        f"{'; '.join(_why_missing(missing[:5], inventory))}; {inventory.describe_present()}"
    )


def _why_missing(missing: list[int], inventory: LogInventory) -> list[str]:
    """What the directory holds instead of each of the `missing` generations: a file named
    for another generation that holds it (misnamed or swapped files), a file under its name
    that cannot be read, the current log (`edb.log`, where the newest generation is written
    under no number) unreadable or absent, or nothing at all. A bare "missing" sent users to
    look for a file that was there all along."""
    holding = {
        entry.holds_generation: entry
        for entry in inventory.unreadable
        if entry.holds_generation is not None
    }
    unreadable = {
        entry.generation: entry
        for entry in inventory.unreadable
        if entry.holds_generation is None and not entry.is_current
    }
    current = next((entry for entry in inventory.unreadable if entry.is_current), None)
    current_present = current is not None or any(f.is_current for f in inventory.files.values())
    newest = inventory.highest
    misnamed = misnamed_for_missing(missing, inventory)
    by_header = {m.generation: m for m in misnamed if m.generation is not None}
    reasons: list[str] = []
    for generation in missing:
        name = generation_log_name(generation)
        entry = holding.get(generation)
        if generation in by_header:
            reasons.append(
                f"{name} is not there, but {os.path.basename(by_header[generation].path)} "
                f"holds generation {generation} (its header says so) under a name that is "
                f"no log file's ({_LOG_NAMES}), so it is not read"
            )
        elif entry is not None:
            reasons.append(
                f"{os.path.basename(entry.path)} holds generation {generation} (its header "
                f"says so) under the name of generation {entry.generation}"
            )
        elif generation in unreadable:
            reasons.append(f"{name} cannot be read ({_error_text(unreadable[generation])})")
        elif newest is None or generation > newest:
            # The newest generation is written as edb.log: that is the file to look at.
            if current is not None:
                reasons.append(
                    f"{name} is not there and {CURRENT_LOG}, where the newest generation is "
                    f"written, cannot be read ({_error_text(current)})"
                )
            elif not current_present:
                reasons.append(f"neither {name} nor {CURRENT_LOG} is there")
            else:
                reasons.append(f"{name} is not there")
        else:
            reasons.append(f"{name} is not there")
    reasons.extend(
        f"{os.path.basename(m.path)} may hold it, but it is misnamed ({_LOG_NAMES}), so it is "
        "not read"
        for m in misnamed
        if m.generation is None
    )
    return reasons


#: How a log file is named; a misnamed one is never read (`filenames.misnamed_log_name`).
_LOG_NAMES = f"a log file is named {CURRENT_LOG} or edb + 8 upper-case hex digits + .log"


def misnamed_for_missing(missing: Collection[int], inventory: LogInventory) -> list[MisnamedLog]:
    """The misnamed log files (`LogInventory.misnamed`) that may hold one of the `missing`
    generations: by their header, when it reads as the directory's stream; by their name
    when it does not (`EDB.LOG` for a generation after the newest present)."""
    stream = inventory.stream_signature()
    newest = inventory.highest or 0
    found: list[MisnamedLog] = []
    for m in inventory.misnamed:
        if m.header is not None:
            if m.header.generation in missing and stream in (None, m.header.log_signature):
                found.append(m)
            continue
        named = parse_generation_log_name(m.right_name)
        if named in missing or (named is None and any(g > newest for g in missing)):
            found.append(m)
    return found


def _overwritten_if_continued(inventory: LogInventory) -> list[GenerationFile]:
    """The unreadable log files the stream would write over if it went on: an unreadable
    `edb.log` (the name every new generation is written under), and an unreadable
    `edbXXXXXXXX.log` numbered above every readable generation (a later roll archives a new
    generation under its name). Set apart before the stream continues, or refused: never
    destroyed without a word. An unreadable file below the newest readable generation is
    never written over and only refuses where a database needs it."""
    newest = inventory.highest or 0
    return [
        entry for entry in inventory.unreadable if entry.is_current or entry.generation > newest
    ]


def _error_text(entry: GenerationFile) -> str:
    error = entry.error
    if error is None:
        return "unreadable"
    return f"{error.name}: {error.detail or error}"


def _missing_hint(missing: list[int], inventory: LogInventory) -> str:
    """`_OPTIONS_HINT`, led by the renames that would put misnamed files back."""
    renames = [
        (os.path.basename(entry.path), generation_log_name(entry.holds_generation))
        for entry in inventory.unreadable
        if entry.holds_generation is not None and entry.holds_generation in missing
    ]
    renames.extend(
        (os.path.basename(m.path), m.right_name) for m in misnamed_for_missing(missing, inventory)
    )
    if not renames:
        return _OPTIONS_HINT
    steps = ", ".join(f"{old} to {new}" for old, new in renames)
    return (
        f"rename each misnamed file to the name of the generation it holds ({steps}; through "
        f"a temporary name where two files swap names), then open again; otherwise " + _OPTIONS_HINT
    )


# --------------------------------------------------------------------------- before the scan


@dataclass(frozen=True)
class CheckpointReading:
    """The checkpoint file as read: a hint, never an authority."""

    state: CheckpointState | None  # None: missing or damaged
    status: Literal["valid", "missing", "damaged"]
    reason: str | None = None
    notes: tuple[str, ...] = ()  # what recovery reports about it
    problems: tuple[str, ...] = ()  # a damaged copy of a valid file


def read_checkpoint(fs: FileSystem, directory: str, owner: str) -> CheckpointReading:
    """`edb.chk` of `directory`; missing or damaged is a status, never an error. A newer
    engine's file refuses (`Refused`, `BadLogVersion`): it is not this engine's to replace."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not fs.exists(path):
        notes: tuple[str, ...] = ()
        if any(name.endswith((".log", ".edb")) for name in fs.listdir(directory)):
            notes = (f"no checkpoint file ({CHECKPOINT_FILE}); the database headers decide",)
        return CheckpointReading(None, "missing", f"there is no {CHECKPOINT_FILE}", notes)
    try:
        state, problems = read_checkpoint_file(fs.read_file(path, owner=owner), path=path)
    except BadLogVersion as exc:
        # A newer engine's file (`newer_checkpoint_error`): ignoring it like a damaged one
        # would write this engine's checkpoint over it at the end of the open.
        raise Refused(exc, "newer-version") from None
    except JetError as exc:
        return CheckpointReading(
            None,
            "damaged",
            f"{exc.name}: {exc.detail or exc}",
            (f"checkpoint file ignored: {exc.detail or exc}",),
        )
    return CheckpointReading(state, "valid", None, tuple(problems), tuple(problems))


@dataclass(frozen=True)
class PendingDataLoss:
    """A loss a recovery accepted and recorded, whose logs it did not finish setting aside.

    The record is written into `lost-logs-<time>/` before the databases are rewritten, so
    the loss the user accepted outlives a failure after it: the next open (plain or not)
    finishes that repair into the same directory and reports the recorded loss with
    whatever it finds now. `time_us` is the repair time stamped into the databases the
    loss touched (one already stamped is not counted twice).
    """

    path: str  # the record: <lost-logs dir>/data-loss.pending.json
    time_us: int
    reasons: tuple[str, ...]
    stopped_at: LogPosition | None
    databases: tuple[str, ...]
    without_file: tuple[str, ...]

    @property
    def directory(self) -> str:
        return os.path.dirname(self.path)

    @property
    def unreadable(self) -> bool:
        """The record could not be read (`read_pending_data_loss` then gives no time): the
        loss is known, not which databases it touched."""
        return self.time_us == 0


def read_pending_data_loss(fs: FileSystem, directory: str, owner: str) -> PendingDataLoss | None:
    """The interrupted data-loss repair of `directory`, if any (the newest one).

    A record that cannot be read (cut short by a crash while it was written, before any
    database was changed) is still an accepted loss, reported as such.
    """
    for name in sorted(fs.listdir(directory), reverse=True):
        if not name.startswith(LOST_LOGS_PREFIX):
            continue
        path = os.path.join(directory, name, DATA_LOSS_PENDING)
        if not fs.exists(path):
            continue
        try:
            fields = json.loads(fs.read_file(path, owner=owner))
            stopped = fields["stopped_at"]
            return PendingDataLoss(
                path,
                int(fields["time_us"]),
                tuple(str(reason) for reason in fields["reasons"]),
                None if stopped is None else LogPosition(int(stopped[0]), int(stopped[1])),
                tuple(str(n) for n in fields["databases"]),
                tuple(str(n) for n in fields["without_file"]),
            )
        except (JetError, ValueError, TypeError, KeyError, IndexError):
            return PendingDataLoss(
                path,
                0,
                (f"an accepted data loss whose record '{path}' cannot be read",),
                None,
                (),
                (),
            )
    return None


@dataclass
class RecoveryStart:
    """What recovery decided before the scan, and the facts it decided from."""

    directory: str
    inventory: LogInventory
    accept_data_loss: bool
    #: The checkpoint file's state unless ignored as foreign or stale (it may still be set
    #: aside for the start position: `checkpoint_status`).
    checkpoint: CheckpointState | None = None
    checkpoint_status: CheckpointStatus = "missing"
    checkpoint_reason: str | None = None
    signature: Signature | None = None  # the log stream; None: no log present
    dirty: dict[str, DatabaseHeader] = field(default_factory=dict)  # of this stream
    #: Clean databases of this stream older than the checkpoint file (an older copy of the
    #: file put back): replay brings them forward from their own position (`_older_copies`).
    behind: dict[str, DatabaseHeader] = field(default_factory=dict)
    #: Those of `behind` the checkpoint file proves older copies (it lists them at a later
    #: position): records after their position are to be expected.
    older_copies: set[str] = field(default_factory=set)
    #: Older copies whose log is gone, kept as they are under `accept_data_loss`: the scan
    #: gives them none of the records after their position.
    kept_as_copies: set[str] = field(default_factory=set)
    losses: list[tuple[str, str]] = field(default_factory=list)
    start: LogPosition | None = None  # None: no log present, nothing to scan
    #: In recovery's order: the checkpoint file's, the log inventory's, then the decisions'.
    notes: list[str] = field(default_factory=list)


def decide_start(
    reading: CheckpointReading,
    inventory: LogInventory,
    files: Mapping[str, DatabaseOnDisk],
    directory: str,
    *,
    accept_data_loss: bool,
) -> RecoveryStart:
    """The log stream, the dirty databases and where replay starts; `Refused` where `open`
    refuses (`accept_data_loss` turns missing generations into losses).

    `files` are the databases that are not being created (those wait for their creation
    record: `check_after_scan`).
    """
    decided = RecoveryStart(directory, inventory, accept_data_loss)
    notes, losses = decided.notes, decided.losses
    notes.extend(reading.notes)
    notes.extend(inventory.problems)
    decided.checkpoint_status, decided.checkpoint_reason = reading.status, reading.reason
    checkpoint = reading.state
    signature = stream_signature(inventory)
    decided.signature = signature
    if checkpoint is not None and signature is not None:
        if checkpoint.log_signature != signature:
            notes.append(
                f"checkpoint file ignored: it belongs to log stream {checkpoint.log_signature}, "
                f"the logs present are stream {signature}"
            )
            decided.checkpoint_status = "foreign"
            decided.checkpoint_reason = "it belongs to another log stream than the logs present"
            checkpoint = None
        elif checkpoint.checkpoint_position.generation not in inventory.files:
            generation = checkpoint.checkpoint_position.generation
            notes.append(
                f"checkpoint file ignored: it points to generation {generation}, which is "
                "not present"
            )
            decided.checkpoint_status = "stale"
            decided.checkpoint_reason = (
                f"it points to generation {generation}, which is not present"
            )
            checkpoint = None
    decided.checkpoint = checkpoint

    dirty = decided.dirty
    for name, file in files.items():
        header = file.header
        if header.log_signature.is_none:
            continue
        if signature is None or header.log_signature != signature:
            if is_dirty(header):
                low, high = required_range(header)
                if signature is None:
                    # No readable log, which is not the same as none: say what lies there
                    # instead (an edb.log of another format version, a damaged one, nothing).
                    needed = list(range(low, high + 1))
                    why = "; ".join(_why_missing(needed[:5], inventory))
                    if accept_data_loss:
                        losses.append((name, f"no readable log file ({why}; needed {low}-{high})"))
                        continue
                    raise Refused(
                        MissingLogFile(
                            f"database {name!r} was not shut down cleanly and needs log "
                            f"generations {low}-{high}, but no log file in '{directory}' can "
                            f"be read: {why}",
                            hint=_missing_hint(needed, inventory),
                            path=file.path,
                        ),
                        "missing",
                        database=name,
                        missing=list(range(low, high + 1)),
                    )
                raise Refused(
                    DatabaseLogSetMismatch(
                        f"database {name!r} belongs to log stream {header.log_signature}, but "
                        f"the logs in '{directory}' are stream {signature}",
                        hint="put the database next to its own log files, or restore from backup",
                        path=file.path,
                    ),
                    "foreign",
                    database=name,
                )
            continue  # a clean database may join a new stream
        if is_dirty(header):
            dirty[name] = header

    _check_ids(files, signature, notes)
    _older_copies(decided, files, checkpoint)

    for name, header in dirty.items():
        low, high = required_range(header)
        missing = inventory.missing(low, high)
        if missing:
            message = _missing_message(name, header, missing, inventory)
            if accept_data_loss:
                losses.append((name, message))
                continue
            error = MissingLogFile if low in missing else RequiredLogFilesMissing
            raise Refused(
                error(
                    message,
                    hint=_missing_hint(missing, inventory),
                    path=os.path.join(directory, generation_log_name(missing[0])),
                ),
                "missing",
                database=name,
                missing=missing,
            )

    overwritten = _overwritten_if_continued(inventory)
    for entry in overwritten:
        if isinstance(entry.error, InvalidPath):
            # A directory (a FIFO, a device) under a log file's name holds no log: setting
            # every log aside for it (accept_data_loss) or "an intact copy" would be wrong
            # ways out; moving it away is the one (its error says so), loss accepted or not.
            raise Refused(entry.error, "not-a-file")
    if inventory.in_the_way:
        raise Refused(inventory.in_the_way[0], "not-a-file")
    if overwritten:
        what = "; ".join(
            f"{os.path.basename(entry.path)} cannot be read ({_error_text(entry)})"
            for entry in overwritten
        )
        message = (
            f"{what}: no database needs what it holds to recover, but the log stream would go on "
            "under its name and destroy it (and a restore could then replay the new generation "
            "in place of the old one)"
        )
        if accept_data_loss:
            # No database loses anything: the logs are set aside and a new stream begins.
            losses.append(("*", f"{message}; the logs were set aside"))
        else:
            raise Refused(
                LogFileCorrupt(
                    message,
                    hint="put back an intact copy of the file; or, if it is not needed (every "
                    "database was shut down cleanly, or needs only the generations before "
                    "it), `jetstore recover DIR --accept-data-loss` sets every log aside into "
                    "lost-logs-<time>/ and begins a new log stream (no database loses a "
                    "change; take a full backup afterwards)",
                    path=overwritten[0].path,
                ),
                "unreadable",
            )

    if checkpoint is not None:
        for attached in checkpoint.attached:
            if attached.name not in files:
                renamed = [
                    name
                    for name, file in files.items()
                    if file.header.db_id == attached.db_id
                    and not attached.signature.is_none
                    and file.header.db_signature == attached.signature
                ]
                if renamed:
                    notes.append(
                        f"database {attached.name!r} listed in the checkpoint file is file "
                        f"{database_file_name(renamed[0])} now (the same database, renamed "
                        f"while the instance was closed): it opens as {renamed[0]!r}"
                    )
                    continue
                notes.append(
                    f"database {attached.name!r} listed in the checkpoint file has no file; "
                    "it must be re-created by the log or it is reported missing"
                )

    members = [f for f in files.values() if f.header.log_signature == signature]
    if (
        checkpoint is not None
        and not members
        and all(
            attached.name in files
            and files[attached.name].header.db_signature == attached.signature
            for attached in checkpoint.attached
        )
    ):
        # Every database the checkpoint lists is here but none belongs to this stream any
        # more (set apart by a data-loss repair, or joined elsewhere): the old logs are only
        # needed to continue the chain, so only the newest generation is read.
        notes.append(
            "no database belongs to the log stream in this directory any more; only its "
            "newest generation is read"
        )
        decided.checkpoint_status = "set aside"
        decided.checkpoint_reason = "no database belongs to its log stream any more"
        checkpoint = None
    highest = inventory.highest
    if highest is None:
        return decided
    # The headers are the authority; a kept checkpoint file can only start replay earlier.
    candidates = [h.checkpoint_position for h in dirty.values()]
    candidates += [h.checkpoint_position for h in decided.behind.values()]
    if checkpoint is not None:
        candidates.append(checkpoint.checkpoint_position)
    decided.start = min(candidates) if candidates else LogPosition(highest, 0)
    return decided


def _older_copies(
    decided: RecoveryStart,
    files: Mapping[str, DatabaseOnDisk],
    checkpoint: CheckpointState | None,
) -> None:
    """Clean databases of the stream whose file may be an older copy put back.

    A clean database of the stream holds every change up to its position and none after: a
    log record for it after its position means the file was replaced by an older copy. Replay
    must then start at its position, or it would skip the changes in between and apply the
    later ones on top (a database that never existed). So a clean database whose log from
    its position is present starts replay no later than there (`behind`; for a database that
    is not a copy this changes nothing: the last clean shutdown wrote every header and the
    checkpoint file at one position). Where that log is gone, the checkpoint file is the
    evidence: every checkpoint writes each attached database's header before the file, so a
    database it lists (same id and signature) is never clean at an earlier position unless
    it is a copy: `Refused` (ConsistentTimeMismatch), or a loss under `accept_data_loss` (it
    stays as the copy left it). Without that evidence the scan refuses at the first record
    for it (`RecordMatcher`).
    """
    if decided.signature is None:
        return
    listed = set() if checkpoint is None else {(a.db_id, a.signature) for a in checkpoint.attached}
    inventory = decided.inventory
    for name in sorted(files):
        file = files[name]
        header = file.header
        if header.log_signature != decided.signature or is_dirty(header):
            continue
        position = header.checkpoint_position
        low = max(position.generation, 1)
        high = inventory.highest
        missing = inventory.missing(low, high) if high is not None and low <= high else [low]
        older = (
            checkpoint is not None
            and (header.db_id, header.db_signature) in listed
            and position < checkpoint.checkpoint_position
        )
        if not missing:
            decided.behind[name] = header
            if older:
                assert checkpoint is not None
                decided.older_copies.add(name)
                decided.notes.append(
                    f"database {name!r} is older than the instance's checkpoint (clean at "
                    f"{position}, the checkpoint file is at {checkpoint.checkpoint_position}): "
                    "an older copy of its file; replay brings it forward from there"
                )
            continue
        if not older:
            continue
        assert checkpoint is not None
        gone = ", ".join(generation_log_name(g) for g in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        message = (
            f"database {name!r} ('{file.path}') is clean at log position {position}, older than "
            f"the instance's checkpoint at {checkpoint.checkpoint_position}: the file was "
            f"replaced by an older copy, and the log files that would bring it forward "
            f"({gone}{more}) are gone"
        )
        if decided.accept_data_loss:
            decided.losses.append((name, message))
            decided.kept_as_copies.add(name)
            continue
        raise Refused(
            ConsistentTimeMismatch(message, hint=_OLDER_COPY_HINT, path=file.path),
            "missing",
            database=name,
            missing=missing,
        )


_OLDER_COPY_HINT = (
    "put the database file the instance last wrote back in place, or restore from backup; "
    "`jetstore recover DIR --accept-data-loss` keeps the older copy as it is (what was "
    "committed after it is lost)"
)


def _check_ids(
    files: Mapping[str, DatabaseOnDisk], signature: Signature | None, notes: list[str]
) -> None:
    """Database ids route log records: within the stream they must be unique.

    Two members with one id (a copy of a database file made inside the instance directory, or
    two files stamped alike by hand) make the log ambiguous: `Refused` (DatabaseSignInUse).
    A clean database joining the stream keeps its id unless a member or a database joining
    before it (in name order) has it; then `Instance` gives it a new one before the first
    checkpoint writes its header (noted here, so the diagnosis says it too).
    """
    taken: dict[int, str] = {}
    joining: list[str] = []
    for name in sorted(files):
        header = files[name].header
        if signature is None or header.log_signature != signature:
            joining.append(name)
            continue
        other = taken.setdefault(header.db_id, name)
        if other != name:
            raise Refused(
                DatabaseSignInUse(
                    f"databases {other!r} ('{files[other].path}') and {name!r} "
                    f"('{files[name].path}') both carry database id {header.db_id} in the log "
                    "stream of this directory: its records cannot be told apart",
                    path=files[name].path,
                ),
                "duplicate-id",
                database=name,
            )
    for name in joining:
        db_id = files[name].header.db_id
        other = taken.setdefault(db_id, name)
        if other != name:
            notes.append(
                f"database {name!r} joins this log stream under a new id: its id {db_id} "
                f"is database {other!r}'s"
            )


# --------------------------------------------------------------------------- the scan


@dataclass(frozen=True)
class RecordMatch:
    """What a log record means for database `name` (`database_id`).

    "apply": a committed record to apply to it; "skip": a committed record it already holds
    (before its checkpoint) or that is not for it (a database set apart from this stream);
    "create": its creation record, the database has no file (it is created once the scan is
    over; the records kept for it start again); "pending": a committed record to keep for it
    until then.
    """

    kind: Literal["apply", "skip", "create", "pending"]
    name: str
    database_id: int


class RecordMatcher:
    """Which database each record of the scan belongs to, and the counts recovery reports.

    Only databases of this log stream receive its records. A database set apart from the
    stream (clean and bound to none: detached, or repaired after data loss) may have left
    records of its own before it was set apart: they are skipped. But a record whose id
    belongs to no database of the stream is refused (AttachedDatabaseMismatch) when the file
    with that id cannot have written it: one stamped with another log stream (a copy from
    another instance), or one whose signature is not that of the database the checkpoint
    file lists under the id. The record's own database is then missing, and skipping it
    would lose committed changes without a word.

    Ids are reused (a new database gets the highest attached id + 1), so an id names a
    database only between the records that bind it: CREATE_DATABASE and ATTACH_DATABASE
    bind it, DETACH_DATABASE ends the binding. After the DETACH record of a database with a
    file here (signature equal), that file is final: no later record of its id is applied to
    it, whichever database has the id next (a backup image rolled forward over later logs is
    restored as it was at its detach). After an ATTACH record binding an id to a database
    that has no file here, its records are skipped with a note in a restore (`restoring`:
    the database was attached after the backup, which does not hold it) and refused
    otherwise (AttachedDatabaseMismatch, or a loss under `accept_data_loss`), never applied
    to another database's file. Logs written before these records existed have none: there
    the ids are taken as the files say, as before. Where such logs continue with this
    engine's (an instance upgraded in place), an ATTACH record of the very database a file
    here was bound to before it (same id and signature) says that it left without a DETACH
    record and came back: the file is final there, as at a DETACH followed by that ATTACH.
    """

    def __init__(
        self,
        files: Mapping[str, DatabaseOnDisk],
        decided: RecoveryStart,
        *,
        restoring: bool = False,
    ) -> None:
        self._files = files
        self._directory = decided.directory
        self._start = decided.start
        self._kept_as_copies = decided.kept_as_copies
        self._by_id: dict[int, str] = {
            file.header.db_id: name
            for name, file in files.items()
            if file.header.log_signature == decided.signature
        }
        self._foreign: dict[int, str] = {
            file.header.db_id: name
            for name, file in files.items()
            if file.header.db_id not in self._by_id
        }
        checkpoint = decided.checkpoint
        #: Database signatures of the checkpoint file's attached databases, by id.
        self._listed = (
            {}
            if checkpoint is None
            else {attached.db_id: attached for attached in checkpoint.attached}
        )
        self._accept_data_loss = decided.accept_data_loss
        #: Under `accept_data_loss`: databases whose file is missing (or is another
        #: database), whose records are dropped instead of refused; one loss each.
        self.losses: list[tuple[str, str]] = []
        self._lost_ids: set[int] = set()
        #: Creation records replayed for databases without a file, by database id.
        self.pending_create: dict[int, CreateDatabaseRecord] = {}
        self.replayed = 0
        self.skipped = 0
        self.needed = False  # a record is applied or a database created
        self._restoring = restoring
        #: Ids whose binding a DETACH or ATTACH record changed so that no file here has it:
        #: id -> (what, database name, log position of the record); `what` is "detached"
        #: (no database has the id) or "attached" (a database without a file here has it).
        self._rebound: dict[int, tuple[Literal["detached", "attached"], str, LogPosition]] = {}
        #: What the binding records did to the files and the skipped records (for reports).
        self.notes: list[str] = []
        #: (database name, position) of each file made final by its DETACH record.
        self.detached: list[tuple[str, LogPosition]] = []
        #: (database name, position) of each database attached without a file here.
        self.not_restored: list[tuple[str, LogPosition]] = []
        #: Databases the log detached last, with no file of theirs here (moved away after
        #: their detach): by name, the position of the DETACH record. The checkpoint file
        #: may still list them (it could not be written after the detach); not missing.
        self.left: dict[str, LogPosition] = {}
        self._noted_skips: set[tuple[int, LogPosition]] = set()
        #: The database (signature's random part) each id names at the scan's point, as the
        #: checkpoint file lists it and the binding records change it: a file here that
        #: is that database under another id now (detached, then attached again) holds
        #: the id's records before its own checkpoint (`_held_by_rebound_file`).
        self._binding: dict[int, bytes] = {
            db_id: attached.signature.random for db_id, attached in self._listed.items()
        }
        #: Refusals held back until the end of the scan (`finish`): records of an id whose
        #: database has no file here are its own if the log detaches it later (it was
        #: detached and its file moved away while replay starts before the detach), with
        #: the database the id named then (`_binding`; b"" when the scan does not know).
        self._deferred: dict[int, tuple[Refused, bytes]] = {}
        #: Ids an ATTACH record bound to a file here that is set apart now (`_match_attach`):
        #: their records, up to the next record binding the id, are in that file already.
        self._set_apart_since: dict[int, str] = {}

    def match(self, entry: LogRecordEntry) -> RecordMatch | None:
        """What `entry` means for which database (None: for none, e.g. not a commit or a
        creation); `Refused` ("mismatch") when the files and the log do not belong together.
        The caller acts on it, then `count`s it."""
        payload = entry.payload
        if record_type(payload) == RECORD_COMMIT:
            database_id, _count = decode_commit_header(payload, entry.start)
            name = self._by_id.get(database_id)
            if name is None and database_id in self._set_apart_since:
                return RecordMatch("skip", self._set_apart_since[database_id], database_id)
            if name is None and database_id in self._rebound:
                return self._match_rebound(database_id, entry.start)
            if name is None:
                foreign = self._foreign.get(database_id)
                if foreign is not None and database_id not in self.pending_create:
                    try:
                        self._check_set_apart(foreign, database_id, entry.start)
                    except Refused as refused:
                        return self._lose_or_refuse(refused, database_id)
                    return RecordMatch("skip", foreign, database_id)
                create = self.pending_create.get(database_id)
                if create is not None:
                    return RecordMatch("pending", create.name, database_id)
                held = self._held_by_rebound_file(database_id, entry.start)
                if held is not None:
                    return RecordMatch("skip", held, database_id)
                listed = self._listed.get(database_id)
                owner = f" ({listed.name!r} in the checkpoint file)" if listed else ""
                unowned = Refused(
                    AttachedDatabaseMismatch(
                        f"the log at {entry.start} holds changes for database id "
                        f"{database_id}{owner}, but no database file in "
                        f"'{self._directory}' has that id",
                        hint="put the missing database file back, or restore from backup; "
                        "`jetstore recover DIR --accept-data-loss` recovers the other "
                        "databases and drops this one's changes",
                    ),
                    "mismatch",
                    position=entry.start,
                )
                # The database the id names may be detached further on (its file then left
                # with these changes): decided at its DETACH record or at the end.
                self._deferred.setdefault(
                    database_id, (unowned, self._binding.get(database_id, b""))
                )
                return RecordMatch("skip", listed.name if listed else "", database_id)
            # Records before a database's own checkpoint are already in its pages.
            header = self._files[name].header
            if entry.start < header.checkpoint_position or name in self._kept_as_copies:
                return RecordMatch("skip", name, database_id)
            if self._start is not None and header.checkpoint_position < self._start:
                # Only an older copy of a clean database's file gets here (`_older_copies`
                # starts replay at every other clean database's position): what changed
                # between its position and the start of the scan is out of reach.
                raise Refused(
                    ConsistentTimeMismatch(
                        f"database {name!r} ('{self._files[name].path}') is clean at log "
                        f"position {header.checkpoint_position}, but the log holds a change "
                        f"to it at {entry.start}: the file was replaced by an older copy, and "
                        f"the log from its position is gone (replay starts at {self._start})",
                        hint="put the database file the instance last wrote back in place, "
                        "or restore from backup",
                        path=self._files[name].path,
                    ),
                    "mismatch",
                    database=name,
                    position=entry.start,
                )
            return RecordMatch("apply", name, database_id)
        record = decode_record(payload, entry.start)
        if isinstance(record, CreateDatabaseRecord | DetachDatabaseRecord | AttachDatabaseRecord):
            self._set_apart_since.pop(record.database_id, None)
            self.left.pop(record.name, None)  # bound again, or (below) detached again
        if isinstance(record, CreateDatabaseRecord):
            self._rebound.pop(record.database_id, None)
            self._binding[record.database_id] = record.signature_random
            return self._match_create(record, entry.start)
        if isinstance(record, DetachDatabaseRecord):
            bound = self._binding.pop(record.database_id, b"")
            deferred = self._deferred.get(record.database_id)
            # The database detached here is the one the held-back records' id named then
            # (not rebound in between), when the scan knew it or not.
            if deferred is not None and deferred[1] == bound in (b"", record.signature_random):
                del self._deferred[record.database_id]
                self.notes.append(
                    f"database {record.name!r} (id {record.database_id}), detached at log "
                    f"position {entry.start}, has no file here: its changes before its "
                    "detach left with its file"
                )
            self._match_detach(record, entry.start)
        elif isinstance(record, AttachDatabaseRecord):
            self._binding[record.database_id] = record.signature_random
            self._match_attach(record, entry.start)
        return None

    def finish(self) -> None:
        """At the end of the scan: the records held back (`_deferred`) whose database the
        log did not detach are refused (or a loss under `accept_data_loss`)."""
        deferred, self._deferred = self._deferred, {}
        for database_id, (refused, _bound) in deferred.items():
            self._lose_or_refuse(refused, database_id)

    def _held_by_rebound_file(self, database_id: int, at: LogPosition) -> str | None:
        """The file here that already holds a record of `database_id` at `at`, though it
        has another id now: the database the id named there (`_binding`), detached and
        attached again since (ids are reused and a database attached gets a new one), with
        its checkpoint after `at`. Replay meets such records when it starts before the
        detach (the checkpoint file could not be written for a while)."""
        signature = self._binding.get(database_id)
        if signature is None:
            return None
        for name, file in self._files.items():
            header = file.header
            if header.db_signature.random == signature and at < header.checkpoint_position:
                return name
        return None

    def _bound_file(self, database_id: int, signature_random: bytes) -> str | None:
        """The database of this stream that has `database_id` here, if it is the one with
        that signature."""
        name = self._by_id.get(database_id)
        if name is not None and self._files[name].header.db_signature.random == signature_random:
            return name
        return None

    def _bound_before(self, name: str, at: LogPosition) -> bool:
        """File `name` was bound to its id before `at` (its checkpoint is not later): a file
        whose checkpoint lies after `at` joined the stream again since (attached, or joined
        at an open) and its records from its checkpoint on are its own."""
        return self._files[name].header.checkpoint_position <= at

    def _end_binding(self, database_id: int, at: LogPosition, why: str) -> None:
        """The file bound to `database_id` receives no record from `at` on."""
        name = self._by_id.pop(database_id)
        self.detached.append((name, at))
        self.notes.append(
            f"database {name!r} (id {database_id}) {why} at log position {at}: it is "
            f"recovered as it was there; later records of id {database_id} are not its own"
        )

    def _match_detach(self, record: DetachDatabaseRecord, at: LogPosition) -> None:
        database_id = record.database_id
        name = self._bound_file(database_id, record.signature_random)
        if name is not None and not self._bound_before(name, at):
            return
        if name is not None:
            self._end_binding(database_id, at, "was detached")
            self._rebound[database_id] = ("detached", name, at)
            return
        pending = self.pending_create.get(database_id)
        if pending is not None and pending.signature_random == record.signature_random:
            self._rebound[database_id] = ("detached", pending.name, at)
            if not self._restoring:
                # Soft recovery: its file left the directory after its detach (moved to
                # another instance, say). Re-created from the log, a second copy of it came
                # back here (replay starts before the detach when no database is left).
                del self.pending_create[database_id]
                self.left[record.name] = at
                self.notes.append(
                    f"database {pending.name!r} (id {database_id}) was detached at log "
                    f"position {at} and its file is not here: it is not re-created (its "
                    "changes left with its file)"
                )
                return
            # Created from the log in this replay, then detached: it is still created, as
            # it was at its detach; later records of the id are not kept for it.
            self.notes.append(
                f"database {pending.name!r} (id {database_id}), created after the images, was "
                f"detached at log position {at}: it is recovered as it was there"
            )
            return
        if database_id not in self._by_id:
            # A database without a file here (not restored, or set apart): the id is free.
            self._rebound[database_id] = ("detached", record.name, at)
            if record.name not in self._files:
                self.left[record.name] = at

    def _match_attach(self, record: AttachDatabaseRecord, at: LogPosition) -> None:
        database_id = record.database_id
        own = self._bound_file(database_id, record.signature_random)
        if own is not None and not self._bound_before(own, at):
            self._rebound.pop(database_id, None)
            return  # its own file is here: its records after its checkpoint are applied
        if own is not None:
            # Its file here was bound before this attach of the same database: the database
            # left the instance in between without a DETACH record (an engine older than
            # these records detached it: an instance upgraded in place) and came back, maybe
            # changed. As after a DETACH, the file is final here, and the records from here
            # on continue the database as it came back, not this file.
            self._end_binding(
                database_id, at, "left the instance (no DETACH record) and was attached again"
            )
            self._rebound[database_id] = ("attached", record.name, at)
            return
        bound = self._by_id.get(database_id)
        if bound is not None:
            if not self._bound_before(bound, at):
                return  # bound again after this attach: its records from there are its own
            # The file with this id is another database, whose detach the log does not hold
            # (written before DETACH records existed): it left the instance before this.
            self._end_binding(database_id, at, "left the instance (another database took its id)")
        if bound is None:
            for name, file in self._files.items():
                header = file.header
                if header.log_signature.is_none and (
                    header.db_signature.random == record.signature_random
                ):
                    # Its file is here, set apart from the stream since (detached again and
                    # left in the directory): it holds what the log has for it from here to
                    # its detach. Replay meets this when it starts before the attach (the
                    # checkpoint file could not be written for a while).
                    self._rebound.pop(database_id, None)
                    self._set_apart_since[database_id] = name
                    return
        self._rebound[database_id] = ("attached", record.name, at)

    def _match_rebound(self, database_id: int, at: LogPosition) -> RecordMatch:
        """A commit of an id whose binding a DETACH or ATTACH record changed (`_rebound`)."""
        what, name, bound_at = self._rebound[database_id]
        if what == "attached" and self._restoring:
            if (database_id, bound_at) not in self._noted_skips:
                self._noted_skips.add((database_id, bound_at))
                self.not_restored.append((name, bound_at))
                if any(detached == name for detached, _at in self.detached):
                    # Its file may have changed while it was detached: what the log holds
                    # from its attach on does not continue the image.
                    self.notes.append(
                        f"database {name!r} was attached again at log position {bound_at} "
                        f"(id {database_id}): it is restored as it was at its detach; its "
                        f"changes in the later logs (from {at} on) are not restored"
                    )
                else:
                    self.notes.append(
                        f"database {name!r} attached at log position {bound_at} (id "
                        f"{database_id}) is not in the backup: its changes in the later logs "
                        f"(from {at} on) are not restored"
                    )
            return RecordMatch("skip", name, database_id)
        if what == "attached":
            detail = (
                f"the log at {at} holds changes for database {name!r} (id {database_id}, "
                f"attached at {bound_at}), but no database file in '{self._directory}' is "
                "that database"
            )
        else:
            detail = (
                f"the log at {at} holds changes for database id {database_id}, which database "
                f"{name!r} left at its detach at {bound_at}, and the log does not say which "
                "database had the id next (it joined without an ATTACH record: at an "
                "open, or by an older engine)"
            )
        refused = Refused(
            AttachedDatabaseMismatch(
                detail,
                hint="put the database file that belongs to this instance back in place, "
                "or restore from backup; `jetstore recover DIR --accept-data-loss` "
                "recovers the other databases and drops this one's changes",
            ),
            "mismatch",
            database=name,
            position=at,
        )
        if what == "attached":
            # Detached further on, its file left with these changes (moved away): decided
            # at its DETACH record or at the end of the scan (`_deferred`).
            self._deferred.setdefault(database_id, (refused, self._binding.get(database_id, b"")))
            return RecordMatch("skip", name, database_id)
        return self._lose_or_refuse(refused, database_id)

    def _lose_or_refuse(self, refused: Refused, database_id: int) -> RecordMatch:
        """A record whose database is not here: `refused`, or under `accept_data_loss` a
        loss (once per database) and the record skipped, so that the other databases are
        still recovered in full."""
        if not self._accept_data_loss:
            raise refused
        listed = self._listed.get(database_id)
        name = listed.name if listed is not None else f"database id {database_id}"
        if database_id not in self._lost_ids:
            self._lost_ids.add(database_id)
            detail = (refused.error.detail or str(refused.error)).rstrip(". ")
            self.losses.append((name, f"{detail}; its changes in the log were dropped"))
        return RecordMatch("skip", name, database_id)

    def _check_set_apart(self, name: str, database_id: int, at: LogPosition) -> None:
        """`Refused` unless database `name`, not of this stream, can have written a record
        for `database_id` at `at` before it was set apart (see the class)."""
        file = self._files[name]
        header = file.header
        listed = self._listed.get(database_id)
        if not header.log_signature.is_none:
            why = f"it belongs to log stream {header.log_signature} (a copy from another instance?)"
        elif listed is not None and listed.signature != header.db_signature:
            why = f"the checkpoint file lists database {listed.name!r} under that id, not this file"
        else:
            return
        owner = f" ({listed.name!r} in the checkpoint file)" if listed is not None else ""
        raise Refused(
            AttachedDatabaseMismatch(
                f"the log at {at} holds changes for database id {database_id}{owner}, but the "
                f"file with that id, '{file.path}', is another database: {why}; the database "
                "the log changes is missing",
                hint="put the database file that belongs to this instance back in place (move "
                "this one away), or restore from backup",
                path=file.path,
            ),
            "mismatch",
            database=name,
            position=at,
        )

    def count(self, found: RecordMatch) -> None:
        """Count a record once it is acted on: one recovery fails to apply (it does not
        decode) is neither replayed nor skipped."""
        if found.kind == "skip":
            self.skipped += 1
            return
        if found.kind in ("apply", "pending"):
            self.replayed += 1
        if found.kind in ("apply", "create"):
            self.needed = True

    def _match_create(self, record: CreateDatabaseRecord, at: LogPosition) -> RecordMatch | None:
        existing = self._by_id.get(record.database_id)
        if existing is not None:
            file = self._files[existing]
            if file.header.db_signature.random != record.signature_random:
                if not self._bound_before(existing, at):
                    # The file took the id after this record (ids are reused once a
                    # database is detached): this is the creation of the id's earlier
                    # database, whose records lie before the file's checkpoint and are
                    # skipped as such. Replay reaches it when the checkpoint file could not
                    # be written for a while (its position is older than the detach).
                    return None
                raise Refused(
                    AttachedDatabaseMismatch(
                        f"database file {file.path!r} has id {record.database_id} "
                        "but is not the database the log created with that id",
                        hint="move the foreign database file away, or restore from backup",
                        path=file.path,
                    ),
                    "mismatch",
                    database=existing,
                    position=at,
                )
            return None
        if record.name in self._files:
            if self._files[record.name].header.db_id in self._foreign:
                return None  # created in this stream, since set apart from it
            header = self._files[record.name].header
            if header.log_signature.is_none and header.db_signature.random == (
                record.signature_random
            ):
                return None  # the same: set apart since (its id went to another database)
            if not self._bound_before(record.name, at):
                # The file took the name (with another id) after this record: this is the
                # creation of an earlier database of that name, detached since (the file is
                # that database attached again under a new id, or another one). Records of
                # the old id are matched by the database it names (`_held_by_rebound_file`,
                # or held back until its DETACH record: `_deferred`).
                return None
            if self._restoring and any(name == record.name for name, _ in self.detached):
                # A restore: the file is the backup's image of a database the log detached
                # (final there), and a new database took its name later. One file per name:
                # the image stays as it was at its detach and the new database is not
                # restored (its records skipped, reported), as one attached after the
                # backup. Refused, the restore failed after copying every file, with a
                # message about a foreign file to move away.
                self._rebound[record.database_id] = ("attached", record.name, at)
                self._noted_skips.add((record.database_id, at))
                self.not_restored.append((record.name, at))
                self.notes.append(
                    f"database {record.name!r} created at log position {at} (id "
                    f"{record.database_id}) after the backup's database of that name was "
                    "detached is not restored: the name is the detached one's, restored as "
                    "it was at its detach"
                )
                return None
            raise Refused(
                AttachedDatabaseMismatch(
                    f"database file for {record.name!r} exists with another id than the log "
                    f"created it with ({record.database_id})",
                    path=os.path.join(self._directory, database_file_name(record.name)),
                ),
                "mismatch",
                database=record.name,
                position=at,
            )
        earlier = self.pending_create.get(record.database_id)
        if earlier is not None:
            # Created from the log, detached, and its id given to this one: one database per
            # id is created from the log, the last.
            self.notes.append(
                f"database {earlier.name!r} (id {record.database_id}), created and detached "
                f"after the images, is not recovered: database {record.name!r} took its id "
                f"at log position {at}"
            )
        self.pending_create[record.database_id] = record
        return RecordMatch("create", record.name, record.database_id)


def scan_stop_loss(
    exc: JetError, last_good: LogPosition | None, start: LogPosition
) -> tuple[str, str]:
    """The loss when a scan with `accept_data_loss` stops at one of `SCAN_STOPS`."""
    return "*", f"replay stopped at {last_good or start}: {exc.detail or exc}"


def scan_stop_generation(result: ScanResult, start: LogPosition) -> int:
    """The generation a scan that stopped at one of `SCAN_STOPS` could not read through: the
    one after the last generation it finished (every record before it was yielded)."""
    if result.tail is not None:
        return result.tail.generation + 1
    return max(start.generation, 1)


def databases_losing_data(
    losses: Collection[tuple[str, str]],
    decided: RecoveryStart,
    *,
    stopped_in: int | None,
    brought_forward: Collection[str] = (),
    created: Collection[str] = (),
) -> list[str]:
    """The databases a recovery with `accept_data_loss` does not bring fully up to date.

    Each database a loss names (its generations missing, its file missing, an older copy
    kept as it is, ...), and, when the scan stopped in generation `stopped_in` (a "*" loss):

    - each database not shut down cleanly whose header requires `stopped_in` or a later
      generation: what lies from there on is unknown, and any of its commits may be there. One
      whose header requires only earlier generations got every record it needed (every
      acknowledged commit lies in a generation its header requires: the log roll raises
      `generation_max_required` before a commit in the new generation is acknowledged);
    - each clean database of the stream that replay was bringing forward from its position
      (`decided.behind`) with evidence that it is an older copy: records were applied to it
      (`brought_forward`), or the checkpoint file lists it at a later position
      (`decided.older_copies`); its later records may lie past the stop. Without such
      evidence a clean database has no record after its position (an open marks every
      header dirty before the database can be changed) and lost nothing;
    - each database replay re-created from its CREATE_DATABASE record (`created`: no file,
      or one cut short): every change it ever had is in the log from that record on, with
      no header to say where they end, so those past the stop are unknown.

    Every database no loss names is recovered completely when the scan did not stop.
    """
    affected = {name for name, _reason in losses if name != "*"}
    if stopped_in is not None:
        affected.update(
            name
            for name, header in decided.dirty.items()
            if required_range(header)[1] >= stopped_in
        )
        affected.update(
            name
            for name in decided.behind
            if name in decided.older_copies or name in brought_forward
        )
        affected.update(created)
    return sorted(affected)


# --------------------------------------------------------------------------- after the scan


def check_after_scan(
    decided: RecoveryStart,
    files: Mapping[str, DatabaseOnDisk],
    creating: Mapping[str, DatabaseOnDisk],
    created: Collection[str],
    tail: LogTail | None,
    *,
    replay_stopped: bool,
) -> list[tuple[str, str]]:
    """The checks once the scan has ended at `tail`; `Refused` where `open` refuses, else the
    losses they add under `accept_data_loss`.

    `created` names the databases whose creation record the scan replayed; `replay_stopped`
    says the scan ended early (a scan error, already a loss; or a restore stopped on purpose,
    whose images are consistent at their checkpoints), so the end of the log is not where the
    headers' required generations should be looked for.
    """
    losses: list[tuple[str, str]] = []
    tail_generation = tail.generation if tail is not None else 0
    for name, header in decided.dirty.items():
        if replay_stopped:
            break
        if header.generation_max_required > tail_generation:
            missing = list(range(tail_generation + 1, header.generation_max_required + 1))
            message = _missing_message(name, header, missing, decided.inventory)
            if decided.accept_data_loss:
                losses.append((name, message))
                continue
            raise Refused(
                RequiredLogFilesMissing(
                    message,
                    hint=_missing_hint(missing, decided.inventory),
                    path=os.path.join(decided.directory, generation_log_name(missing[0])),
                ),
                "missing",
                database=name,
                missing=missing,
            )
    if decided.signature is not None:
        for name, file in files.items():
            if file.header.log_signature.is_none and is_dirty(file.header):
                raise Refused(
                    FileNotFound(f"database '{file.path}' has no log stream"),
                    "no-stream",
                    database=name,
                )
    unmatched = set(creating) - set(created)
    if unmatched:
        name = sorted(unmatched)[0]
        path = creating[name].path
        raise Refused(
            AttachedDatabaseMismatch(
                f"database file {path!r} was being created, but the log holds no record of "
                "its creation",
                hint="move the file away (it holds no data), then open the instance",
                path=path,
            ),
            "mismatch",
            database=name,
        )
    return losses
