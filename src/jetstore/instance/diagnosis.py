"""The recovery plan: what opening an instance directory would do, worked out read-only.

This module owns `plan_recovery` (the engine side of `jetstore diagnose DIR`) and its result
types. It answers "what will `jetstore.open(DIR)` do?" without opening anything for writing:
succeed without replaying anything (clean), succeed by soft recovery from generation X
(replaying X-Y), refuse because logs are missing or damaged (and what `accept_data_loss`
would then keep), or refuse for a reason no option fixes (a database of another log stream,
an unreadable database header, a log record for a database that is not there).

Invariants:
- Read-only: files are opened read-only, nothing is written, renamed or deleted, no lock is
  taken (the instance lock is only probed). `tests/cli/test_diagnose.py` hashes every file
  before and after.
- Same facts, same order as `jetstore.instance.recovery`: the checkpoint file (a hint; missing,
  damaged, foreign or stale is noted and ignored), the log inventory (`take_inventory`), every
  `*.edb` header (`choose_db_header`, as `DatabaseFile.open` reads it), the stream signature,
  the required ranges, the start position, then the same chain scan (`LogScanner`) with the
  same record-to-database matching, then the post-scan checks. Where recovery raises, the plan
  names the same error class (`RecoveryPlan.error`); where it succeeds, the plan has none.
  `_simulate` mirrors `recovery._recover` step by step and must change with it;
  `tests/cli/test_diagnose.py` checks the two agree on every state of the recovery matrix.
- A refusal is simulated a second time with `accept_data_loss`, to say what that option would
  keep (where replay stops, which databases are affected) or that it would not help.
- What the plan does not see: damaged B+tree pages that replay would read (`jetstore checksum`
  checks pages), and failures of the write path after replay (disk full, permissions).
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

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
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    CreateDatabaseRecord,
    decode_commit_header,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem
from jetstore.io.locking import is_locked, read_lock_holder
from jetstore.log.reader import LogInventory, LogRecordEntry, LogScanner, take_inventory
from jetstore.log.verify import LogVerification, verify_logs
from jetstore.pages.pagefile import CREATING_SUFFIX

__all__ = [
    "CheckpointFacts",
    "DataLossPlan",
    "DatabaseFacts",
    "RecoveryPlan",
    "Verdict",
    "plan_recovery",
]

Verdict = Literal["clean", "recoverable", "data-loss", "restore", "in-use"]

#: Errors a recovery with `accept_data_loss` turns into a stop (recovery._recover catches them).
_SCAN_STOPS = (
    MissingLogFile,
    LogFileCorrupt,
    InvalidLogSequence,
    LogSequenceChecksumMismatch,
    BadLogSignature,
)


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
            "required_files": (
                None
                if self.required is None or self.required[0] < 1
                else [generation_log_name(g) for g in self.required]
            ),
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


def _generations_text(values: list[int]) -> str:
    plural = "s" if len(values) != 1 else ""
    return f"generation{plural} {_runs_text(values)} {'are' if plural else 'is'}"


def _runs_text(values: list[int]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _runs(values))


# --------------------------------------------------------------------------- facts


def _read_database(fs: FileSystem, path: str, name: str, owner: str) -> DatabaseFacts:
    """The header as `DatabaseFile.open` reads it (read-only; a bad copy is not rewritten)."""
    facts = DatabaseFacts(name, os.path.basename(path), None)
    try:
        with fs.open(path, owner=owner, writable=False) as file:
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


def _is_dirty(header: DatabaseHeader) -> bool:
    return header.state is not DatabaseState.CLEAN


def _required_range(header: DatabaseHeader) -> tuple[int, int]:
    low = header.checkpoint_position.generation
    return low, max(header.generation_max_required, low)


@dataclass
class _Blocker:
    """Where a simulated recovery was refused (for the plain-words verdict)."""

    kind: str  # "missing", "scan", "foreign", "mismatch", "no-stream", "header"
    database: str | None = None
    missing: list[int] = field(default_factory=list)
    position: LogPosition | None = None


class _Refused(Exception):
    def __init__(self, error: JetError, blocker: _Blocker) -> None:
        super().__init__(str(error))
        self.error = error
        self.blocker = blocker


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


def _read_checkpoint(
    fs: FileSystem, directory: str, owner: str, names: list[str], notes: list[str]
) -> tuple[CheckpointState | None, CheckpointFacts]:
    """As `recovery.read_checkpoint`, plus what the operator should hear about it."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    if not fs.exists(path):
        if any(name.endswith((".log", ".edb")) for name in names):
            notes.append(f"no checkpoint file ({CHECKPOINT_FILE}); the database headers decide")
        return None, CheckpointFacts("missing", reason=f"there is no {CHECKPOINT_FILE}")
    try:
        data = fs.read_file(path, owner=owner)
        state, problems = read_checkpoint_file(data, path=path)
    except JetError as exc:
        notes.append(f"checkpoint file ignored: {exc.detail or exc}")
        return None, CheckpointFacts("damaged", reason=f"{exc.name}: {exc.detail or exc}")
    notes.extend(problems)
    facts = CheckpointFacts(
        "valid", position=state.checkpoint_position, used=True, problems=list(problems)
    )
    return state, facts


def _simulate(
    fs: FileSystem,
    directory: str,
    owner: str,
    names: list[str],
    inventory: LogInventory,
    databases: list[DatabaseFacts],
    *,
    accept_data_loss: bool,
) -> _Simulation:
    """`recovery._recover` without the writes. Raises `_Refused` where recovery raises."""
    sim = _Simulation()
    notes = sim.notes
    losses = sim.losses
    # DatabaseFile.open: an unreadable header fails the open before recovery starts.
    for facts in databases:
        if facts.error is not None:
            raise _Refused(facts.error, _Blocker("header", database=facts.name))
    headers = {f.name: f.header for f in databases if f.header is not None}
    creating = {n: h for n, h in headers.items() if h.state is DatabaseState.JUST_CREATED}
    files = {n: h for n, h in headers.items() if n not in creating}

    checkpoint, checkpoint_facts = _read_checkpoint(fs, directory, owner, names, notes)
    sim.checkpoint = checkpoint_facts
    notes.extend(inventory.problems)

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
            checkpoint_facts.status, checkpoint_facts.used = "foreign", False
            checkpoint_facts.reason = "it belongs to another log stream than the logs present"
            checkpoint = None
        elif checkpoint.checkpoint_position.generation not in inventory.files:
            generation = checkpoint.checkpoint_position.generation
            notes.append(
                f"checkpoint file ignored: it points to generation {generation}, which is "
                "not present"
            )
            checkpoint_facts.status, checkpoint_facts.used = "stale", False
            checkpoint_facts.reason = f"it points to generation {generation}, which is not present"
            checkpoint = None

    dirty: dict[str, DatabaseHeader] = {}
    for name, header in files.items():
        if header.log_signature.is_none:
            continue
        if stream_signature is None or header.log_signature != stream_signature:
            if _is_dirty(header):
                if stream_signature is None:
                    low, high = _required_range(header)
                    if accept_data_loss:
                        losses.append((name, f"no log files are present (needed {low}-{high})"))
                        continue
                    raise _Refused(
                        MissingLogFile(
                            f"database {name!r} was not shut down cleanly and needs log "
                            f"generations {low}-{high}, but no log files are present in "
                            f"'{directory}'"
                        ),
                        _Blocker("missing", database=name, missing=list(range(low, high + 1))),
                    )
                raise _Refused(
                    DatabaseLogSetMismatch(
                        f"database {name!r} belongs to log stream {header.log_signature}, but "
                        f"the logs in '{directory}' are stream {stream_signature}"
                    ),
                    _Blocker("foreign", database=name),
                )
            continue
        if _is_dirty(header):
            dirty[name] = header
    sim.dirty = list(dirty)

    for name, header in dirty.items():
        low, high = _required_range(header)
        missing = inventory.missing(low, high)
        if missing:
            if accept_data_loss:
                losses.append((name, f"{_generations_text(missing)} missing"))
                continue
            error = MissingLogFile if low in missing else RequiredLogFilesMissing
            raise _Refused(
                error(
                    f"database {name!r} needs log generations {low}-{high}, but "
                    f"{_runs_text(missing)} are missing; {inventory.describe_present()}"
                ),
                _Blocker("missing", database=name, missing=missing),
            )

    if checkpoint is not None:
        for attached in checkpoint.attached:
            if attached.name not in files:
                notes.append(
                    f"database {attached.name!r} listed in the checkpoint file has no file; "
                    "it must be re-created by the log or it is reported missing"
                )

    members = [n for n, h in files.items() if h.log_signature == stream_signature]
    if (
        checkpoint is not None
        and not members
        and all(attached.name in files for attached in checkpoint.attached)
    ):
        notes.append(
            "no database belongs to the log stream in this directory any more; only its "
            "newest generation is read"
        )
        checkpoint_facts.status, checkpoint_facts.used = "set aside", False
        checkpoint_facts.reason = "no database belongs to its log stream any more"
        checkpoint = None
    candidates = [h.checkpoint_position for h in dirty.values()]
    if checkpoint is not None:
        candidates.append(checkpoint.checkpoint_position)
    highest = inventory.highest
    if highest is None:
        sim.signature = None
        return sim
    if not candidates:
        candidates.append(LogPosition(highest, 0))
    start = min(candidates)
    sim.start = start
    sim.signature = stream_signature
    sim.needed = bool(dirty)

    by_id: dict[int, str] = {
        h.db_id: n for n, h in files.items() if h.log_signature == stream_signature
    }
    foreign_ids = {h.db_id for h in files.values() if h.db_id not in by_id}
    pending_create: dict[int, CreateDatabaseRecord] = {}
    scanner = LogScanner(fs, inventory, owner=owner, signature=stream_signature)
    try:
        for entry in scanner.records(start):
            _match_entry(sim, entry, files, by_id, foreign_ids, pending_create, directory)
            sim.last_good = entry.end
    except _SCAN_STOPS as exc:
        if not accept_data_loss:
            raise _Refused(exc, _Blocker("scan", position=sim.last_good or start)) from None
        losses.append(("*", f"replay stopped at {sim.last_good or start}: {exc.detail or exc}"))
    result = scanner.result
    sim.read_generations = [g for g, _records in result.generations]
    sim.torn_tail = result.torn_position
    if result.tail is not None:
        sim.tail_end = LogPosition(result.tail.generation, result.tail.end_offset)
    notes.extend(result.notes)
    tail_generation = result.tail.generation if result.tail is not None else 0
    scan_stopped = any(name == "*" for name, _ in losses)
    for name, header in dirty.items():
        if scan_stopped:
            break
        if header.generation_max_required > tail_generation:
            missing = list(range(tail_generation + 1, header.generation_max_required + 1))
            if accept_data_loss:
                losses.append((name, f"{_generations_text(missing)} missing"))
                continue
            raise _Refused(
                RequiredLogFilesMissing(
                    f"database {name!r} needs log generations up to "
                    f"{header.generation_max_required}, but the log ends in generation "
                    f"{tail_generation}"
                ),
                _Blocker("missing", database=name, missing=missing),
            )
    if stream_signature is not None:
        for name, header in files.items():
            if header.log_signature.is_none and _is_dirty(header):
                raise _Refused(
                    FileNotFound(f"database {name!r} has no log stream"),
                    _Blocker("no-stream", database=name),
                )
    unmatched = set(creating) - {create.name for create in pending_create.values()}
    if unmatched:
        name = sorted(unmatched)[0]
        raise _Refused(
            AttachedDatabaseMismatch(
                f"database file for {name!r} was being created, but the log holds no record "
                "of its creation"
            ),
            _Blocker("mismatch", database=name),
        )
    sim.created = [create.name for create in pending_create.values()]
    return sim


def _match_entry(
    sim: _Simulation,
    entry: LogRecordEntry,
    files: dict[str, DatabaseHeader],
    by_id: dict[int, str],
    foreign_ids: set[int],
    pending_create: dict[int, CreateDatabaseRecord],
    directory: str,
) -> None:
    """`recovery._replay_entry` without applying anything: count, match, refuse alike."""
    payload = entry.payload
    if record_type(payload) == RECORD_COMMIT:
        database_id, _count = decode_commit_header(payload, entry.start)
        name = by_id.get(database_id)
        if name is None:
            if database_id in foreign_ids and database_id not in pending_create:
                sim.skipped += 1
                return
            if database_id in pending_create:
                sim.replayed += 1
                return
            raise _Refused(
                AttachedDatabaseMismatch(
                    f"the log at {entry.start} holds changes for database id {database_id}, "
                    f"but no database file in '{directory}' has that id"
                ),
                _Blocker("mismatch", position=entry.start),
            )
        if entry.start >= files[name].checkpoint_position:
            sim.replayed += 1
            sim.needed = True
            sim.applied[name] = entry.end
        else:
            sim.skipped += 1
        return
    record = decode_record(payload, entry.start)
    if isinstance(record, CreateDatabaseRecord):
        existing = by_id.get(record.database_id)
        if existing is not None:
            if files[existing].db_signature.random != record.signature_random:
                raise _Refused(
                    AttachedDatabaseMismatch(
                        f"database file for {existing!r} has id {record.database_id} but is "
                        "not the database the log created with that id"
                    ),
                    _Blocker("mismatch", database=existing, position=entry.start),
                )
            return
        if record.name in files:
            if files[record.name].db_id in foreign_ids:
                return
            raise _Refused(
                AttachedDatabaseMismatch(
                    f"database file for {record.name!r} exists with another id than the log "
                    f"created it with ({record.database_id})"
                ),
                _Blocker("mismatch", database=record.name, position=entry.start),
            )
        pending_create[record.database_id] = record
        sim.needed = True


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
    try:
        return _plan(fs, path, owner, command)
    finally:
        fs.registry.close_owner(owner)


def _plan(fs: FileSystem, path: str, owner: str, command: str) -> RecoveryPlan:
    quoted = _quote(path)
    if is_locked(fs, path):
        pid = read_lock_holder(fs, path)
        who = f"process {pid}" if pid is not None else "another process"
        return RecoveryPlan(
            path,
            "in-use",
            f"the instance is open in {who}: it is live, and its files change while it runs "
            "(a database shows as dirty while open); nothing needs recovering now",
            [f"{command} status {quoted}", f"{command} counters {quoted}"],
            open_by_pid=pid,
        )
    names = fs.listdir(path)
    notes: list[str] = []
    databases: list[DatabaseFacts] = []
    for name in names:
        if name.endswith(CREATING_SUFFIX):
            notes.append(
                f"{name} is a database creation cut short; opening deletes it (it holds no "
                "data) and re-creates the database from its log record"
            )
            continue
        db_name = parse_database_file_name(name)
        if db_name is not None:
            databases.append(_read_database(fs, os.path.join(path, name), db_name, owner))
    inventory = take_inventory(fs, path, owner=owner)
    logs = verify_logs(fs, path, owner=owner)
    plan = RecoveryPlan(
        path,
        "clean",
        "",
        databases=databases,
        generations=inventory.generations,
        logs=logs,
        notes=notes,
    )
    stream: Signature | None = None
    if inventory.lowest is not None:
        first_header = inventory.files[inventory.lowest].header
        stream = None if first_header is None else first_header.log_signature
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
        if _is_dirty(header) and header.state is not DatabaseState.JUST_CREATED:
            facts.required = _required_range(header)
            facts.missing = inventory.missing(*facts.required)

    try:
        sim = _simulate(fs, path, owner, names, inventory, databases, accept_data_loss=False)
    except _Refused as refused:
        plan.error = refused.error
        _refusal(fs, plan, path, owner, names, inventory, refused, command)
        return plan
    _success(plan, sim, command)
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
    _log_damage_outside(plan, command)


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


def _log_damage_outside(plan: RecoveryPlan, command: str) -> None:
    logs = plan.logs
    if logs is None or logs.ok:
        return
    first = plan.replay_generations[0] if plan.replay_generations else None
    errors = [p for p in logs.errors if first is None or (p.generation or 0) < first]
    if errors:
        where = ", ".join(f"{p.file_name or '?'} ({p.error or 'problem'})" for p in errors[:3])
        plan.notes.append(
            f"log damage that recovery does not read (before where replay starts): {where}; "
            f"`{command} logs verify {_quote(plan.directory)}` shows all of it; a backup taken "
            "now would need those generations only if it went back that far"
        )


def _refusal(
    fs: FileSystem,
    plan: RecoveryPlan,
    path: str,
    owner: str,
    names: list[str],
    inventory: LogInventory,
    refused: _Refused,
    command: str,
) -> None:
    quoted = _quote(path)
    error, blocker = refused.error, refused.blocker
    # The facts gathered before the refusal (checkpoint, start) come from a run that
    # accepts data loss; if that run is refused too, no option helps.
    try:
        loss_sim = _simulate(
            fs, path, owner, names, inventory, plan.databases, accept_data_loss=True
        )
    except _Refused as again:
        plan.data_loss = DataLossPlan(
            False,
            reason=f"even accepting data loss, opening fails: {again.error.name}",
            error=again.error,
        )
        loss_sim = None
    if loss_sim is not None:
        _apply_sim(plan, loss_sim)
        affected = sorted({n for n, _ in loss_sim.losses if n != "*"} | set(loss_sim.dirty))
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
        if blocker.kind == "missing":
            gens = blocker.missing
            files = ", ".join(generation_log_name(g) for g in gens[:4])
            more = f" and {len(gens) - 4} more" if len(gens) > 4 else ""
            what = (
                f"generation{'s' if len(gens) != 1 else ''} {_runs_text(gens)} "
                f"missing ({files}{more})"
            )
            if blocker.database is not None:
                what = f"{what}, needed by database {blocker.database!r}"
        else:
            what = _damage_text(plan, error, blocker)
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
    name = blocker.database
    if blocker.kind == "foreign":
        plan.summary = (
            f"database {name!r} belongs to another log stream than the logs in this directory: "
            "put it next to its own log files (then recover there), or restore it from backup"
        )
    elif blocker.kind == "header":
        plan.summary = (
            f"the header of database {name!r} is unreadable (both copies: "
            f"{error.name}): restore the database from backup"
        )
    elif blocker.kind == "no-stream":
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


def _damage_text(plan: RecoveryPlan, error: JetError, blocker: _Blocker) -> str:
    """Where the scan broke, in the verifier's words when it found the same place."""
    after = blocker.position.generation if blocker.position is not None else 0
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
    return f"the log cannot be read after {blocker.position} ({error.name}: {detail})"


def _quote(path: str) -> str:
    return shlex.quote(path)
