"""The recovery plan: what opening an instance directory would do, worked out read-only.

This module owns `plan_recovery` (the engine side of `jetstore diagnose DIR`) and its result
types. It answers "what will `jetstore.open(DIR)` do?" without opening anything for writing:
succeed without replaying anything (clean), succeed by soft recovery from generation X
(replaying X-Y), refuse because logs are missing or damaged (and what `accept_data_loss`
would then keep), or refuse for a reason no option fixes (a database of another log stream,
an unreadable database header, a log record for a database that is not there).

Invariants:
- Read-only: files are opened read-only, nothing is written, renamed or deleted, no lock is
  kept (the instance lock and each database file's lock are only probed). A database file
  locked by another instance (reached through a hard link or symlink) makes the verdict
  "in-use", as for the directory's own lock: its files change while it runs, and recovering
  here would write to that instance's open database. `tests/cli/test_diagnose.py` hashes every file
  before and after.
- Same decisions as `jetstore.instance.recovery`, by construction: `_simulate` reads the same
  facts in the same order (the checkpoint file, the log inventory from `take_inventory`, every
  `*.edb` header as `DatabaseFile.open` reads it with `choose_db_header`) and hands them to
  the same functions of `jetstore.instance.recoverydecisions` (`decide_start`,
  `RecordMatcher` over the same `LogScanner` chain scan, `check_after_scan`). It only counts
  where recovery writes. Where recovery raises, the plan names the same error class
  (`RecoveryPlan.error`; a refusal of the decisions also has recovery's detail, hint and
  path); where it succeeds, the plan has none.
  `tests/cli/test_diagnose.py` checks the two agree on every state of the recovery matrix.
- Log damage is judged as `logs verify`, `dump logs` and `checksum` judge it
  (`verify_logs_as_recovery_needs`): damage only in generations recovery no longer reads is a
  warning (`logs.ok` stays true, a note lists it), damage it reads an error.
- A refusal is simulated a second time with `accept_data_loss`, to say what that option would
  keep (where replay stops, which databases are affected) or that it would not help.
- What the plan does not see: damaged B+tree pages that replay would read (`jetstore checksum`
  checks pages), and failures of the write path after replay (disk full, permissions).
"""

from __future__ import annotations

import errno
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from jetstore.errors import (
    FileAccessDenied,
    InvalidDatabaseVersion,
    InvalidPath,
    JetError,
    from_os_error,
)
from jetstore.format.common import PAGE_SIZES, Signature, format_time_us
from jetstore.format.dbheader import (
    PEEK_SIZE,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    peek_page_size,
)
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    generation_log_name,
    parse_database_file_name,
)
from jetstore.format.positions import LogPosition
from jetstore.instance.recoverydecisions import (
    SCAN_STOPS,
    CheckpointReading,
    HeaderOnDisk,
    RecordMatcher,
    RecoveryStart,
    RefusalKind,
    Refused,
    check_after_scan,
    check_one_name_per_file,
    databases_losing_data,
    decide_start,
    is_dirty,
    misnamed_for_missing,
    read_checkpoint,
    read_pending_data_loss,
    required_range,
    scan_stop_generation,
    scan_stop_loss,
    stream_signature,
    too_many_to_list,
)
from jetstore.io.files import FileSystem
from jetstore.io.handles import use_owner
from jetstore.io.locking import (
    HOLDER_INSTANCE,
    describe_lock_holder,
    file_lock_holder,
    is_locked,
    lock_holder_pid,
    lock_holder_role,
    read_lock_holder,
)
from jetstore.log.reader import LogInventory, LogScanner, take_inventory
from jetstore.log.verify import LogProblem, LogVerification, require_log_directory, verify_logs
from jetstore.pages.pagefile import CREATING_SUFFIX

__all__ = [
    "CheckpointFacts",
    "DataLossPlan",
    "DatabaseFacts",
    "LogsNeeded",
    "RecoveryPlan",
    "Verdict",
    "logs_needed",
    "plan_recovery",
    "verify_logs_as_recovery_needs",
]

#: "move-away": a file or directory is in the way (a directory under a log's or a database's
#: name, a second file with a database's id): nothing is lost, moving it lets the open go on.
#: "other-release": an intact file of another format version (a database, the checkpoint
#: file): the release that wrote it opens it. Neither is advice to restore from backup.
Verdict = Literal[
    "clean", "recoverable", "data-loss", "restore", "move-away", "other-release", "in-use"
]


@dataclass
class DatabaseFacts:
    """One `*.edb` file as recovery sees it."""

    name: str
    file: str
    header: DatabaseHeader | None
    header_problems: list[str] = field(default_factory=list)
    error: JetError | None = None
    #: "clean", "dirty", "just created", "being restored", or "unreadable".
    state: str = "unreadable"
    #: "this stream", "another stream", "no stream".
    stream: str = "no stream"
    required: tuple[int, int] | None = None  # generations a dirty database needs
    #: The files holding `required` (`edb.log` for the current generation).
    required_files: list[str] | None = None
    missing: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        header = self.header
        return {
            "name": self.name,
            "file": self.file,
            "state": self.state,
            "stream": self.stream,
            "db_id": None if header is None else header.db_id,
            "checkpoint_position": None if header is None else str(header.checkpoint_position),
            "required": None if self.required is None else list(self.required),
            "required_files": self.required_files,
            "missing": self.missing,
            "missing_files": [generation_log_name(g) for g in self.missing],
            "header_problems": self.header_problems,
            "error": None if self.error is None else _error_dict(self.error),
        }


@dataclass
class CheckpointFacts:
    """The checkpoint file and what recovery does with it."""

    #: "valid", "missing", "damaged", "foreign", "stale", "set aside", "not needed".
    status: str
    position: LogPosition | None = None
    used: bool = False
    reason: str | None = None
    problems: list[str] = field(default_factory=list)
    #: Why ignoring it is safe (or None when it is used or does not matter).
    safe_because: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "position": None if self.position is None else str(self.position),
            "used": self.used,
            "reason": self.reason,
            "problems": self.problems,
            "safe_because": self.safe_because,
        }


@dataclass
class DataLossPlan:
    """What `jetstore.open(..., accept_data_loss=True)` would keep, or why it would not help."""

    possible: bool
    stopped_at: LogPosition | None = None  # where replay stops (None: before any record)
    databases: list[str] = field(default_factory=list)  # set apart from the stream
    recovered_to: dict[str, str] = field(default_factory=dict)  # database -> position text
    reason: str | None = None
    error: JetError | None = None  # what even a data-loss recovery would raise

    def as_dict(self) -> dict[str, Any]:
        return {
            "possible": self.possible,
            "stopped_at": None if self.stopped_at is None else str(self.stopped_at),
            "databases": self.databases,
            "recovered_to": self.recovered_to,
            "reason": self.reason,
            "error": None if self.error is None else _error_dict(self.error),
        }


@dataclass
class RecoveryPlan:
    """The verdict on an instance directory, with the facts it stands on."""

    directory: str
    verdict: Verdict
    summary: str
    next_commands: list[str] = field(default_factory=list)
    #: What `jetstore.open(directory)` would raise (None: it would succeed).
    error: JetError | None = None
    open_by_pid: int | None = None
    signature: Signature | None = None
    generations: list[int] = field(default_factory=list)
    start: LogPosition | None = None
    end: LogPosition | None = None
    replay_generations: tuple[int, int] | None = None
    records_to_replay: int = 0
    records_skipped: int = 0
    torn_tail: LogPosition | None = None
    databases: list[DatabaseFacts] = field(default_factory=list)
    to_create: list[str] = field(default_factory=list)
    checkpoint: CheckpointFacts | None = None
    data_loss: DataLossPlan | None = None
    logs: LogVerification | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Opening succeeds without losing anything."""
        return self.verdict in ("clean", "recoverable")

    def as_dict(self) -> dict[str, Any]:
        logs = self.logs
        return {
            "directory": self.directory,
            "verdict": self.verdict,
            "ok": self.ok,
            "summary": self.summary,
            "next_commands": self.next_commands,
            "open_error": None if self.error is None else _error_dict(self.error),
            "open_by_pid": self.open_by_pid,
            "log_signature": None if self.signature is None else _signature(self.signature),
            "generations": _runs(self.generations),
            "start": None if self.start is None else str(self.start),
            "end": None if self.end is None else str(self.end),
            "replay_generations": (
                None if self.replay_generations is None else list(self.replay_generations)
            ),
            "records_to_replay": self.records_to_replay,
            "records_skipped": self.records_skipped,
            "torn_tail": None if self.torn_tail is None else str(self.torn_tail),
            "databases": [db.as_dict() for db in self.databases],
            "to_create": self.to_create,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.as_dict(),
            "data_loss": None if self.data_loss is None else self.data_loss.as_dict(),
            "logs": None
            if logs is None
            else {
                "ok": logs.ok,
                "first_generation": logs.first_generation,
                "last_generation": logs.last_generation,
                "missing": logs.missing,
                "errors": [p.as_dict() for p in logs.errors],
                "warnings": [p.as_dict() for p in logs.problems if p.severity == "warning"],
                "recovery_needs": logs.as_dict()["recovery_needs"],
            },
            "notes": self.notes,
        }


def _error_dict(error: JetError) -> dict[str, Any]:
    return {
        "name": error.name,
        "code": error.code,
        "category": error.category,
        "detail": error.detail,
        "path": error.path,
    }


def _signature(signature: Signature) -> str:
    if signature.is_none:
        return "none"
    return f"{signature.random.hex()}@{format_time_us(signature.time_us)}"


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for value in sorted(values):
        if runs and runs[-1][1] + 1 == value:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return runs


def _runs_text(values: list[int]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(values))


# --------------------------------------------------------------------------- facts


def _read_database(fs: FileSystem, path: str, name: str, owner: str) -> DatabaseFacts:
    """The header as `DatabaseFile.open` reads it (read-only; a bad copy is not rewritten)."""
    facts = DatabaseFacts(name, os.path.basename(path), None)
    try:
        with fs.opened(path, owner=owner, writable=False) as file:
            page_size = peek_page_size(file.pread(4096, 0))
            if page_size is None:
                for size in sorted(PAGE_SIZES):
                    if peek_page_size(file.pread(PEEK_SIZE, size)) == size:
                        page_size = size
                        break
                else:
                    page_size = 8192
            copy0 = file.pread(page_size, 0)
            copy1 = file.pread(page_size, page_size)
        header, problems = choose_db_header(copy0, copy1, path=path)
    except JetError as exc:
        facts.error = exc
        return facts
    facts.header = header
    facts.header_problems = problems
    facts.state = header.state.name.lower().replace("_", " ")
    return facts


@dataclass
class _Simulation:
    notes: list[str] = field(default_factory=list)
    checkpoint: CheckpointFacts | None = None
    signature: Signature | None = None
    start: LogPosition | None = None
    tail_end: LogPosition | None = None
    torn_tail: LogPosition | None = None
    read_generations: list[int] = field(default_factory=list)
    replayed: int = 0
    skipped: int = 0
    needed: bool = False
    created: list[str] = field(default_factory=list)
    losses: list[tuple[str, str]] = field(default_factory=list)
    last_good: LogPosition | None = None
    applied: dict[str, LogPosition] = field(default_factory=dict)
    dirty: list[str] = field(default_factory=list)
    #: The decisions the simulation acted on (None until `decide_start` ran).
    decided: RecoveryStart | None = None
    #: The generation a scan that stopped (accepting data loss) could not read through.
    stopped_in: int | None = None
    #: Records read from `start` on.
    scanned: int = 0


def _checkpoint_facts(reading: CheckpointReading, decided: RecoveryStart) -> CheckpointFacts:
    state = reading.state
    return CheckpointFacts(
        decided.checkpoint_status,
        position=None if state is None else state.checkpoint_position,
        used=decided.checkpoint_status == "valid",
        reason=decided.checkpoint_reason,
        problems=list(reading.problems),
    )


def _simulate(
    fs: FileSystem,
    directory: str,
    owner: str,
    inventory: LogInventory,
    databases: list[DatabaseFacts],
    *,
    accept_data_loss: bool,
) -> _Simulation:
    """`recovery._recover` without the writes: the same decisions (`recoverydecisions`), acted
    on by counting. Raises `Refused` where recovery raises."""
    sim = _Simulation()
    # `open_database_files`: two names of one file refuse the open before any file opens.
    check_one_name_per_file(
        fs,
        {
            db_name: os.path.join(directory, f.file)
            for f in databases
            if (db_name := parse_database_file_name(f.file)) is not None
        },
    )
    # DatabaseFile.open: an unreadable header fails the open before recovery starts.
    for facts in databases:
        if facts.error is not None:
            # A directory (a FIFO) under a database file's name has no header to lose.
            kind: RefusalKind = "not-a-file" if isinstance(facts.error, InvalidPath) else "header"
            raise Refused(facts.error, kind, database=facts.name)
    on_disk = {
        f.name: HeaderOnDisk(os.path.join(directory, f.file), f.header)
        for f in databases
        if f.header is not None
    }
    creating = {n: d for n, d in on_disk.items() if d.header.state is DatabaseState.JUST_CREATED}
    files = {n: d for n, d in on_disk.items() if n not in creating}

    reading = read_checkpoint(fs, directory, owner)
    decided = decide_start(reading, inventory, files, directory, accept_data_loss=accept_data_loss)
    sim.notes.extend(decided.notes)
    sim.checkpoint = _checkpoint_facts(reading, decided)
    sim.losses.extend(decided.losses)
    sim.dirty = list(decided.dirty)
    sim.decided = decided
    start = decided.start
    if start is None:
        return sim
    sim.start = start
    sim.signature = decided.signature
    sim.needed = bool(decided.dirty)

    matcher = RecordMatcher(files, decided)
    scanner = LogScanner(fs, inventory, owner=owner, signature=decided.signature)
    scan_stopped = False
    try:
        for entry in scanner.records(start):
            sim.scanned += 1
            found = matcher.match(entry)
            if found is not None:
                if found.kind == "apply":
                    sim.applied[found.name] = entry.end
                matcher.count(found)
            sim.last_good = entry.end
    except SCAN_STOPS as exc:
        if not accept_data_loss:
            raise Refused(exc, "scan", position=sim.last_good or start) from None
        sim.losses.append(scan_stop_loss(exc, sim.last_good, start))
        scan_stopped = True
        sim.stopped_in = scan_stop_generation(scanner.result, start)
    matcher.finish()
    sim.losses.extend(matcher.losses)
    sim.replayed, sim.skipped = matcher.replayed, matcher.skipped
    sim.needed = sim.needed or matcher.needed
    result = scanner.result
    sim.read_generations = [g for g, _records in result.generations]
    sim.torn_tail = result.torn_position
    if result.tail is not None:
        sim.tail_end = LogPosition(result.tail.generation, result.tail.end_offset)
    sim.notes.extend(result.notes)
    sim.created = [create.name for create in matcher.pending_create.values()]
    sim.losses.extend(
        check_after_scan(
            decided, files, creating, sim.created, result.tail, replay_stopped=scan_stopped
        )
    )
    return sim


# --------------------------------------------------------------------------- logs needed


@dataclass(frozen=True)
class LogsNeeded:
    """The first log generation soft recovery would read, and what sets it.

    `first_generation` is None when nothing trustworthy says where recovery starts (no valid
    checkpoint file and no database of the log stream, a database header that cannot be
    read, or a directory recovery would refuse anyway): every generation then counts as
    needed.
    """

    first_generation: int | None
    reason: str


def logs_needed(fs: FileSystem, directory: str, *, owner: str) -> LogsNeeded:
    """Where recovery of `directory` would start reading the log (read-only).

    The same decision as recovery's (`decide_start` on the same facts `_simulate` reads):
    the lowest of the valid checkpoint file's position, the checkpoint positions of the
    databases that are not clean and the positions of the clean databases of the stream
    that replay brings forward. Generations below it are never read by recovery, so damage
    there cannot stop it (`jetstore logs verify` reports it as a warning).
    """
    databases: list[DatabaseFacts] = []
    for name in sorted(fs.listdir(directory)):
        db_name = parse_database_file_name(name)
        if db_name is not None and not name.endswith(CREATING_SUFFIX):
            databases.append(_read_database(fs, os.path.join(directory, name), db_name, owner))
    for facts in databases:
        if facts.error is not None:
            return LogsNeeded(
                None,
                f"the header of {facts.file} cannot be read ({facts.error.name}): nobody can "
                "tell which log generations it needs, so every one counts as needed",
            )
    files = {
        f.name: HeaderOnDisk(os.path.join(directory, f.file), f.header)
        for f in databases
        if f.header is not None and f.header.state is not DatabaseState.JUST_CREATED
    }
    try:
        reading = read_checkpoint(fs, directory, owner)
        inventory = take_inventory(fs, directory, owner=owner)
        decided = decide_start(reading, inventory, files, directory, accept_data_loss=False)
    except Refused as refused:
        return LogsNeeded(
            None,
            f"recovery would refuse this directory ({refused.error.name}: "
            f"{refused.error.detail or refused.error}), so every generation counts as needed",
        )
    start = decided.start
    if start is None:
        return LogsNeeded(None, "there is no log file")
    # In this order, so that the reason given is the plainest one that sets the start.
    candidates: list[tuple[LogPosition, str]] = []
    checkpoint = decided.checkpoint
    if decided.checkpoint_status == "valid" and checkpoint is not None:
        candidates.append(
            (
                checkpoint.checkpoint_position,
                f"the checkpoint file ({CHECKPOINT_FILE}) is at {checkpoint.checkpoint_position}",
            )
        )
    if decided.checkpoint_status == "set aside":
        candidates.append(
            (
                start,
                "no database belongs to this log stream any more: recovery reads only its "
                "newest generation",
            )
        )
    for name, header in decided.dirty.items():
        candidates.append(
            (
                header.checkpoint_position,
                f"database {name!r} was not shut down cleanly and needs the log from its "
                f"checkpoint at {header.checkpoint_position}",
            )
        )
    for name, header in decided.behind.items():
        candidates.append(
            (
                header.checkpoint_position,
                f"database {name!r} was shut down cleanly at {header.checkpoint_position}; "
                "recovery reads the log from there (in case its file is an older copy)",
            )
        )
    reasons = [reason for position, reason in candidates if position == start]
    if not reasons:
        # Recovery would start at the newest generation only because nothing names an
        # earlier one (no checkpoint file, no database of the stream): not proof enough.
        why = decided.checkpoint_reason or f"there is no {CHECKPOINT_FILE}"
        return LogsNeeded(
            None,
            f"neither a checkpoint file nor a database of this log stream says where recovery "
            f"starts ({why}), so every generation counts as needed",
        )
    return LogsNeeded(start.generation, reasons[0])


def verify_logs_as_recovery_needs(
    fs: FileSystem, directory: str | os.PathLike[str], *, owner: str, records: bool = True
) -> LogVerification:
    """`verify_logs` of `directory` told where recovery starts reading (`logs_needed`).

    The one way the offline tools (`logs verify`, `dump logs`, `checksum`, `diagnose`) tell
    damage recovery would meet (an error) from damage in generations it no longer reads (a
    warning marked `needed: false`), so they cannot disagree with each other or with recovery.
    Raises what `verify_logs` raises for a directory that cannot be used. `records`: as
    `verify_logs` takes it (False: checksums only).
    """
    path = os.fspath(directory)
    require_log_directory(fs, path)  # before `logs_needed` lists it: the same error as verify
    needs = logs_needed(fs, path, owner=owner)
    return verify_logs(
        fs,
        path,
        owner=owner,
        needed_from=needs.first_generation,
        needed_reason=needs.reason,
        records=records,
    )


# --------------------------------------------------------------------------- the plan


def plan_recovery(
    directory: str | os.PathLike[str],
    *,
    fs: FileSystem | None = None,
    owner: str = "diagnose",
    command: str = "jetstore",
) -> RecoveryPlan:
    """What `jetstore.open(directory)` would do, and what to run next (never writes).

    `command` is how the next commands are spelled (`jetstore` by default). The directory
    must exist (`FileNotFound`, `InvalidPath` otherwise: `FileSystem.require_directory`).
    """
    fs = fs if fs is not None else FileSystem()
    path = os.path.abspath(os.fspath(directory))
    fs.require_directory(
        path, what="instance directory", hint="give the directory that holds the instance"
    )
    owner = use_owner(owner)
    try:
        return _plan(fs, path, owner, command)
    finally:
        fs.registry.close_owner(owner)


def _plan(fs: FileSystem, path: str, owner: str, command: str) -> RecoveryPlan:
    quoted = _quote(path)
    if is_locked(fs, path):
        pid = read_lock_holder(fs, path)
        role = lock_holder_role(fs, path)
        if role is None or role == HOLDER_INSTANCE:
            steps = [f"{command} status {quoted}", f"{command} counters {quoted}"]
        else:
            # A compact, repair, offline backup or restore: no instance serves counters
            # (`counters` is refused), and the diagnosis is worth having once it has ended.
            steps = [
                f"{command} status {quoted}",
                f"{command} diagnose {quoted}   (again, once {role} has ended)",
            ]
        return RecoveryPlan(
            path,
            "in-use",
            f"the instance is held by {describe_lock_holder(fs, path)}: it is live, and its "
            "files change while it is held (a database shows as dirty while open); nothing "
            "needs recovering now",
            steps,
            open_by_pid=pid,
        )
    names = fs.listdir(path)
    for name in names:
        if parse_database_file_name(name) is None:
            continue
        file_path = os.path.join(path, name)
        holder = file_lock_holder(fs, file_path, owner=owner)
        if holder is not None:
            summary = (
                f"database file {name} is open for writing by {holder}, another instance "
                "(this directory reaches its file through a hard link or symbolic link): it "
                "changes while that instance runs, and opening or recovering this directory "
                "(even accepting data loss) is refused rather than write to it"
            )
            return RecoveryPlan(
                path,
                "in-use",
                summary,
                [
                    f"{command} diagnose {quoted}   (again, once that instance is closed)",
                    f"{command} dump header {_quote(file_path)}",
                ],
                error=FileAccessDenied(
                    f"database file '{file_path}' is in use by {holder}",
                    hint="close that instance first; never give one database file to two "
                    "instances at once (copy it instead of linking it)",
                    path=file_path,
                ),
                open_by_pid=lock_holder_pid(fs, file_path),
            )
    notes: list[str] = []
    databases: list[DatabaseFacts] = []
    for name in names:
        if name.endswith(CREATING_SUFFIX):
            creating = os.path.join(path, name)
            if fs.is_directory(creating):
                # The open fails to delete it (`open_database_files`): refused as it refuses.
                error = from_os_error(
                    IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)),
                    op="delete",
                    path=creating,
                )
                databases.append(DatabaseFacts(name, name, None, error=error))
                continue
            notes.append(
                f"{name} is a database creation cut short; opening deletes it (it holds no "
                "data) and re-creates the database from its log record"
            )
            continue
        db_name = parse_database_file_name(name)
        if db_name is not None:
            databases.append(_read_database(fs, os.path.join(path, name), db_name, owner))
    inventory = take_inventory(fs, path, owner=owner)
    # Judged as `logs verify`, `dump logs` and `checksum` judge it: damage only in generations
    # recovery no longer reads is a warning, so `logs.ok` means the same in all four.
    logs = verify_logs_as_recovery_needs(fs, path, owner=owner)
    plan = RecoveryPlan(
        path,
        "clean",
        "",
        databases=databases,
        generations=inventory.generations,
        logs=logs,
        notes=notes,
    )
    stream = stream_signature(inventory)
    for facts in databases:
        header = facts.header
        if header is None:
            continue
        if header.log_signature.is_none:
            facts.stream = "no stream"
        elif stream is not None and header.log_signature == stream:
            facts.stream = "this stream"
        else:
            facts.stream = "another stream" if stream is not None else "its own (no logs)"
        for problem in facts.header_problems:
            notes.append(f"{facts.file}: {problem} (opening rewrites it from the good copy)")
        if is_dirty(header) and header.state is not DatabaseState.JUST_CREATED:
            facts.required = required_range(header)
            facts.missing = inventory.missing(*facts.required)
            if facts.required[0] >= 1:
                facts.required_files = [
                    os.path.basename(inventory.files[g].path)
                    if g in inventory.files
                    else generation_log_name(g)
                    for g in facts.required
                ]

    # The open finishes a data-loss recovery it finds cut short, as if accepting the loss.
    pending = read_pending_data_loss(fs, path, owner)
    try:
        sim = _simulate(fs, path, owner, inventory, databases, accept_data_loss=bool(pending))
    except Refused as refused:
        plan.error = refused.error
        _refusal(fs, plan, path, owner, inventory, refused, command)
        _log_damage_not_read(plan, command)
        return plan
    _success(plan, sim, command)
    if _too_many_to_list(plan, sim, command):
        _log_damage_not_read(plan, command)
        return plan
    if pending is not None:
        plan.verdict = "recoverable"
        plan.summary = (
            f"opening finishes a recovery that accepted data loss and was cut short before "
            f"it set every log aside (its record: '{pending.path}'; the loss: "
            f"{'; '.join(pending.reasons)}): it moves the remaining logs there, reports the "
            "loss and starts a new log stream"
        )
        plan.next_commands = [f"{command} recover {_quote(path)}"]
    _log_damage_not_read(plan, command)
    return plan


def _apply_sim(plan: RecoveryPlan, sim: _Simulation) -> None:
    plan.checkpoint = sim.checkpoint
    plan.signature = sim.signature
    plan.start = sim.start
    plan.end = sim.tail_end
    plan.torn_tail = sim.torn_tail
    plan.records_to_replay = sim.replayed
    plan.records_skipped = sim.skipped
    plan.to_create = sim.created
    if sim.read_generations:
        plan.replay_generations = (min(sim.read_generations), max(sim.read_generations))
    plan.notes.extend(sim.notes)


def _success(plan: RecoveryPlan, sim: _Simulation, command: str) -> None:
    _apply_sim(plan, sim)
    quoted = _quote(plan.directory)
    checkpoint = sim.checkpoint
    needed = sim.needed or bool(sim.created)
    if checkpoint is not None:
        _explain_checkpoint(checkpoint, sim, needed)
    if needed:
        plan.verdict = "recoverable"
        first, last = plan.replay_generations or (0, 0)
        span = f"generation {first}" if first == last else f"generations {first}-{last}"
        what = [f"{sim.replayed} committed transaction(s)"]
        if sim.created:
            what.append(f"re-creates {', '.join(sim.created)}")
        plan.summary = (
            f"soft recovery will succeed from generation {first} at {sim.start} "
            f"(replays {span}: {'; '.join(what)})"
        )
        if plan.torn_tail is not None:
            plan.summary += f"; the newest log's torn tail at {plan.torn_tail} is discarded"
        plan.next_commands = [
            f"{command} recover {quoted}",
            f"{command} recover {quoted} --into COPY   (to keep the files as they are)",
        ]
        plan.notes.append(
            "pages are not read by this check: replay reads the B+tree pages it changes "
            f"(`{command} checksum {quoted}` verifies every page)"
        )
    else:
        plan.verdict = "clean"
        plan.summary = "clean; no logs needed: every database was shut down cleanly"
        if not plan.databases:
            plan.summary = "clean; no database and nothing to replay"
        plan.next_commands = []


def _too_many_to_list(plan: RecoveryPlan, sim: _Simulation, command: str) -> bool:
    """The open's refusal of more databases than the checkpoint file lists
    (`recoverydecisions.too_many_to_list`), said as the open says it; True if it refuses.

    The open refuses before writing when every database is clean and no record follows
    where recovery starts; otherwise it recovers first (every database written clean, the
    checkpoint file at the end of the log), then refuses."""
    names = {
        facts.name
        for facts in plan.databases
        if facts.header is not None and facts.header.state is not DatabaseState.JUST_CREATED
    }
    error = too_many_to_list(plan.directory, sorted(names | set(sim.created)))
    if error is None:
        return False
    quoted = _quote(plan.directory)
    plan.error = error
    plan.verdict = "move-away"
    detail = (error.detail or str(error)).rstrip(".")
    if sim.scanned or sim.needed or sim.created:
        plan.summary = (
            f"{detail}: opening recovers every database first (it writes them clean, and the "
            f"checkpoint file at the end of the log), then refuses; after that, {error.hint}"
        )
        plan.next_commands = [
            f"{command} recover {quoted}   (refused once it has written every database clean)",
            f"{command} diagnose {quoted}   (again: it names the files to move out)",
        ]
    else:
        plan.summary = f"{detail}: {error.hint}"
        plan.next_commands = [f"{command} diagnose {quoted}   (again, once they are moved out)"]
    return True


def _explain_checkpoint(checkpoint: CheckpointFacts, sim: _Simulation, needed: bool) -> None:
    if checkpoint.used:
        return
    if not sim.dirty:
        checkpoint.safe_because = (
            "no database needs recovery: every header is clean, so nothing depends on where "
            "replay starts"
        )
        return
    checkpoint.safe_because = (
        "every database that needs recovery names its own starting point in its header "
        f"(lowest: {sim.start}), and every generation those headers require is present; the "
        "checkpoint file is only a hint"
    )


def _log_damage_not_read(plan: RecoveryPlan, command: str) -> None:
    """A note on log damage that opening does not meet, in the words of `logs verify`."""
    logs = plan.logs
    if logs is None:
        return
    quoted = _quote(plan.directory)
    unneeded = [p for p in logs.problems if p.needed is False and p.severity == "warning"]
    if unneeded:
        first = logs.needed_from
        why = f": {logs.needed_reason}" if logs.needed_reason else ""
        plan.notes.append(
            f"log damage that recovery does not read: {_problems_text(unneeded)}. Recovery "
            f"starts reading at generation {first}{why}; opening does not read what lies "
            f"below, so this damage is a warning, not an error (`{command} logs verify "
            f"{quoted}` shows all of it; `{command} logs removable {quoted}` lists the "
            "generations `logs remove --unneeded` deletes; an older backup can no longer be "
            "rolled forward through them)"
        )
    if plan.error is not None or logs.needed_from is not None:
        return
    # Nothing durable says where recovery starts (no checkpoint file, no database of the
    # stream), so every generation counts as needed and damage below this replay is an
    # error there too; opening now does not read it, which the verdict already reflects.
    first_read = plan.replay_generations[0] if plan.replay_generations else None
    below = [
        p
        for p in logs.errors
        if first_read is None or (p.generation is not None and p.generation < first_read)
    ]
    if below:
        start = f"generation {first_read}" if first_read is not None else "no generation"
        plan.notes.append(
            f"log damage that opening now does not read (it reads from {start}): "
            f"{_problems_text(below)}; `{command} logs verify {quoted}` counts it as errors "
            f"because {logs.needed_reason or 'nothing says where recovery starts'}"
        )


def _problems_text(problems: list[LogProblem]) -> str:
    where = ", ".join(f"{p.file_name or '?'} ({p.error or p.check})" for p in problems[:3])
    return where if len(problems) <= 3 else f"{where} and {len(problems) - 3} more"


def _refusal(
    fs: FileSystem,
    plan: RecoveryPlan,
    path: str,
    owner: str,
    inventory: LogInventory,
    refused: Refused,
    command: str,
) -> None:
    quoted = _quote(path)
    error = refused.error
    # The facts gathered before the refusal (checkpoint, start) come from a run that
    # accepts data loss; if that run is refused too, no option helps.
    try:
        loss_sim = _simulate(fs, path, owner, inventory, plan.databases, accept_data_loss=True)
    except Refused as again:
        plan.data_loss = DataLossPlan(
            False,
            reason=f"even accepting data loss, opening fails: {again.error.name}",
            error=again.error,
        )
        loss_sim = None
    if loss_sim is not None:
        _apply_sim(plan, loss_sim)
        assert loss_sim.decided is not None  # `_simulate` returns only after `decide_start`
        affected = databases_losing_data(
            loss_sim.losses,
            loss_sim.decided,
            stopped_in=loss_sim.stopped_in,
            brought_forward=loss_sim.applied,
            created=loss_sim.created,
        )
        recovered_to: dict[str, str] = {}
        for facts in plan.databases:
            header = facts.header
            if header is None or facts.name not in affected:
                continue
            applied = loss_sim.applied.get(facts.name)
            recovered_to[facts.name] = str(applied or header.checkpoint_position)
        plan.data_loss = DataLossPlan(
            True,
            stopped_at=loss_sim.last_good,
            databases=affected,
            recovered_to=recovered_to,
            reason="; ".join(dict.fromkeys(reason for _n, reason in loss_sim.losses)),
        )
        plan.verdict = "data-loss"
        target = loss_sim.last_good
        to = (
            f"position {target}"
            if target is not None
            else ", ".join(f"{n} to {p}" for n, p in recovered_to.items()) or "their checkpoints"
        )
        if refused.kind == "missing":
            gens = refused.missing
            files = ", ".join(generation_log_name(g) for g in gens[:4])
            more = f" and {len(gens) - 4} more" if len(gens) > 4 else ""
            what = (
                f"generation{'s' if len(gens) != 1 else ''} {_runs_text(gens)} "
                f"missing ({files}{more})"
            )
            if refused.database is not None:
                what = f"{what}, needed by database {refused.database!r}"
        else:
            what = _damage_text(plan, refused)
        misnamed = (
            misnamed_for_missing(refused.missing, inventory) if refused.kind == "missing" else []
        )
        if misnamed:
            # The commits are most likely all there, under a name the engine never reads:
            # putting the name right loses nothing, where the options below lose them.
            renames = ", ".join(f"{os.path.basename(m.path)} to {m.right_name}" for m in misnamed)
            plan.summary = (
                f"{what}; {', '.join(os.path.basename(m.path) for m in misnamed)} may hold "
                f"{'it' if len(refused.missing) == 1 else 'them'} but is misnamed, so it is "
                f"not read: rename {renames}, then open again; otherwise restore from "
                f"backup, or recover with data loss to {to} (what was committed after that "
                "is lost)"
            )
            plan.next_commands = [
                *(
                    f"mv -n {_quote(m.path)} {_quote(os.path.join(path, m.right_name))}"
                    for m in misnamed
                ),
                f"{command} diagnose {quoted}   (again, once renamed)",
            ]
            if plan.checkpoint is not None:
                _explain_checkpoint(plan.checkpoint, loss_sim, True)
            return
        if refused.kind == "unreadable":
            # Nothing needs the file: the option sets the logs aside, it loses no change.
            plan.summary = (
                f"{(error.detail or str(error)).rstrip('.')}: put back an intact copy of it, "
                "or recover with --accept-data-loss, which sets every log aside and begins "
                "a new log stream (no database loses a change; take a full backup afterwards)"
            )
        else:
            plan.summary = (
                f"{what}: restore from backup, or recover with data loss to {to} "
                "(what was committed after that is lost)"
            )
        plan.next_commands = [
            f"{command} logs verify {quoted}",
            f"{command} restore SET... --to NEW_DIR --logs-from {quoted}",
            f"{command} recover {quoted} --accept-data-loss",
        ]
        if plan.checkpoint is not None:
            _explain_checkpoint(plan.checkpoint, loss_sim, True)
        return
    plan.verdict = "restore"
    name = refused.database
    if refused.kind == "foreign":
        plan.summary = (
            f"database {name!r} belongs to another log stream than the logs in this directory: "
            "put it next to its own log files (then recover there), or restore it from backup"
        )
    elif refused.kind == "header" and isinstance(error, InvalidDatabaseVersion):
        # Intact, only another engine's: "restore from backup" would throw away a good file.
        plan.verdict = "other-release"
        plan.summary = (
            f"database {name!r} is intact but of another format version "
            f"({(error.detail or str(error)).rstrip('.')}): open it with the jetstore release "
            "that wrote it and take its tables across (export there, import here), or "
            "restore a backup taken with this engine"
        )
    elif refused.kind == "header":
        plan.summary = (
            f"the header of database {name!r} is unreadable (both copies: "
            f"{error.name}): restore the database from backup"
        )
    elif refused.kind == "duplicate-id":
        plan.verdict = "move-away"
        plan.summary = (
            f"two database files carry the same id in this log stream "
            f"({(error.detail or str(error)).rstrip('.')}): move the one that is not the "
            "instance's out of the directory (the checkpoint file lists the instance's), then "
            "open again; attach it afterwards to keep it under an id of its own"
        )
        plan.next_commands = [
            f"{command} dump checkpoint {_quote(os.path.join(path, CHECKPOINT_FILE))}",
            f"{command} dump header {_quote(os.path.join(path, str(name) + '.edb'))}",
        ]
        return
    elif refused.kind in ("not-a-file", "same-file"):
        # Nothing is damaged or lost: a stray directory (or special file) takes a log's name.
        plan.verdict = "move-away"
        plan.summary = f"{(error.detail or str(error)).rstrip('.')}: {error.hint or ''}".rstrip(
            ": "
        )
        plan.next_commands = [f"{command} diagnose {quoted}   (again, once it is moved away)"]
        return
    elif refused.kind == "newer-version":
        plan.verdict = "other-release"
        plan.summary = (
            f"a newer jetstore used this directory ({(error.detail or str(error)).rstrip('.')}): "
            "open it with that release"
        )
        plan.next_commands = [f"{command} dump checkpoint {_quote(error.path or path)}"]
        return
    elif refused.kind == "no-stream":
        plan.summary = (
            f"database {name!r} is not shut down cleanly but is bound to no log stream: "
            "restore it from backup"
        )
    else:
        plan.summary = (
            f"the files do not belong together ({error.name}: "
            f"{(error.detail or str(error)).rstrip('.')}): put the missing or foreign database "
            "file back in place, or restore from backup"
        )
    plan.next_commands = [
        f"{command} dump header {_quote(os.path.join(path, name + '.edb'))}"
        if name is not None
        else f"{command} status {quoted}",
        f"{command} restore SET... --to NEW_DIR",
    ]


def _damage_text(plan: RecoveryPlan, refused: Refused) -> str:
    """Where the scan broke, in the verifier's words when it found the same place."""
    error = refused.error
    after = refused.position.generation if refused.position is not None else 0
    logs = plan.logs
    found = [
        p
        for p in (logs.errors if logs is not None else [])
        if p.generation is not None and p.generation >= after and p.check != "missing"
    ]
    if found:
        first = found[0]
        where = (
            str(first.position) if first.position is not None else f"generation {first.generation}"
        )
        return (
            f"the log is damaged at {where} ({first.file_name}: {first.error}; opening "
            f"fails with {error.name})"
        )
    detail = (error.detail or str(error)).rstrip(".")
    return f"the log cannot be read after {refused.position} ({error.name}: {detail})"


def _quote(path: str) -> str:
    return shlex.quote(path)
