"""Log verification (ESE's `eseutil /ml`): check every log file of a directory, report it all.

This module owns `verify_logs` and its result types (`LogVerification`, `GenerationReport`,
`LogProblem`). It is the diagnostic twin of `jetstore.log.reader.LogScanner`: the scanner
stops at the first problem because recovery must; the verifier keeps going and reports every
problem it finds, each with the generation, the file name and the byte offset it concerns.

Invariants:
- Read-only: files are opened read-only and nothing is ever written, renamed or deleted.
- Damage is a finding, never an exception: a file that cannot be opened, read or decoded is a
  reported problem. Only an unusable directory raises (`FileNotFound`, `InvalidPath`, or the
  error the operating system gave for listing it).
- One log file is held in memory at a time (at most its `log_file_size` bytes), and the one
  record being reassembled (see "every reassembled record decodes" below). `edbtmp.log`
  (prepared, not yet part of the log) and the reserve logs are not examined.
- Frames, headers and checksums are decoded by `jetstore.format` (`decode_log_header`,
  `decode_frame`, `find_next_valid_frame`, `accumulate`); nothing here re-implements a codec.

What is checked (the error class named in a problem is the one recovery would raise):
- each file's header decodes (`LogFileCorrupt`, `BadLogVersion`, `FileInvalidType`: status
  "unreadable") and its generation matches its name (`LogGenerationMismatch`);
- each file's size equals its header's `log_file_size` (`LogFileSizeMismatch`): the rule
  recovery applies too (`jetstore.format.logheader.log_file_length_problem`);
- every file carries the stream's signature (`BadLogSignature` for the others): the lowest
  generation's, the rule recovery applies (`jetstore.log.reader.stream_signature_of`), not
  the one most files carry: recovery reads its own stream from the lowest file on and
  refuses at the first foreign one, however many there are;
- generations are contiguous from the lowest to the highest present (`MissingLogFile`, one
  problem per gap naming the missing files);
- the chain links: each header's `previous_generation_created_time` equals the previous
  file's creation time (`InvalidLogSequence`); its `previous_generation_end` is exactly where
  the previous file's valid frames end (`LogFileCorrupt`, reported in the previous file at
  the offset where its frames stop); its `previous_generation_checksum` equals their running
  checksum (`LogSequenceChecksumMismatch`);
- every frame verifies. In a closed generation every byte below the recorded end had been
  synced, so each bad frame there is corruption (reported, then verification resumes at the
  next valid frame). In the newest generation the tail rule applies: a bad frame at X is
  corruption if any later valid frame has `durable_before` > X (reported, then resumed),
  otherwise X is the end of the log and whatever lies beyond is a torn tail (severity "info",
  or "warning" when valid frames lie beyond it: nothing proves they were synced, and recovery
  discards them);
- records reassemble (FULL, or FIRST … MIDDLE … LAST): a record interrupted inside a
  generation or a continuation frame without a beginning is `LogFileCorrupt`. Records are
  counted in the generation where they end.
- every reassembled record decodes, by the decoder recovery's refusal comes from
  (`jetstore.format.logrecords.check_record`: `decode_record`'s checks, a COMMIT's
  operations walked, not built): an unknown type, a field cut short, an operation running
  past the end, trailing bytes are `LogFileCorrupt` (check "record"), reported in the file
  where the record starts at the record's offset, the first one of each generation only
  (a frame with a valid checksum around bad bytes is a writer's bug, or a newer engine's
  record type: one report per generation says where recovery stops). Nothing is built from
  the records (no tree, no operation list); a record spanning generations is gathered frame
  by frame, so memory is one log file plus the one record being gathered.

Severities: "error" means recovery would refuse these logs (or lose acknowledged data);
"warning" means something unusual that recovery tolerates; "info" is a normal consequence of
a crash. `LogVerification.ok` is true when there is no error.

What recovery needs: the caller may say where recovery starts reading (`needed_from`, the
generation `jetstore.instance.diagnosis.logs_needed` works out from the checkpoint file and
the database headers, exactly as recovery decides it). A problem that concerns only
generations below it (damage, a size or header problem, a gap, a broken link from the
generation before it) cannot stop recovery: it is reported as a "warning" with `needed`
false, and a message that says so and that the file can be removed; the generation's status
stays "damaged"/"unreadable". That includes a file of another log stream below it: recovery
never reads it (the lowest generation, which sets the stream's signature, is never such a
file, by that rule). Without `needed_from` (nothing says where recovery starts) every
generation counts as needed: `needed` is None and every problem keeps its severity.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from jetstore.errors import (
    BadLogSignature,
    InvalidLogSequence,
    JetError,
    LogFileCorrupt,
    LogFileSizeMismatch,
    LogGenerationMismatch,
    LogSequenceChecksumMismatch,
    MissingLogFile,
)
from jetstore.format.common import Signature, format_time_us
from jetstore.format.filenames import (
    CURRENT_LOG,
    generation_log_name,
    parse_generation_log_name,
)
from jetstore.format.logframe import (
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_NAMES,
    Frame,
    accumulate,
    decode_frame,
    find_next_valid_frame,
)
from jetstore.format.logheader import (
    LOG_HEADER_SIZE,
    LogFileHeader,
    decode_log_header,
    log_file_length_problem,
)
from jetstore.format.logrecords import check_record
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem
from jetstore.log.reader import stream_signature_of

__all__ = [
    "SCHEMA_VERSION",
    "GenerationReport",
    "GenerationStatus",
    "LogProblem",
    "LogVerification",
    "Severity",
    "require_log_directory",
    "verify_logs",
]

#: Version of the `as_dict()` layout; bumped on any incompatible change of its keys.
SCHEMA_VERSION: Final = 1

Severity = Literal["error", "warning", "info"]
GenerationStatus = Literal["ok", "torn-tail", "damaged", "unreadable"]

_SEVERITY_RANK: Final[dict[str, int]] = {"error": 0, "warning": 1, "info": 2}

# Offsets of log header fields named in problems (layout: `jetstore.format.logheader`).
_HEADER_GENERATION: Final = 20
_HEADER_SIGNATURE: Final = 24
_HEADER_PREV_CREATED: Final = 56
_HEADER_PREV_END: Final = 64
_HEADER_PREV_CHECKSUM: Final = 68

# How many missing file names a gap lists before it abbreviates.
_MAX_NAMES_LISTED: Final = 8


@dataclass(frozen=True, slots=True)
class LogProblem:
    """One finding. `error`/`code` name the ESE error recovery would raise (None for notes).

    `check` is a stable short name of the check that found it: "directory", "header",
    "read", "generation-name", "size", "signature", "duplicate", "missing", "current-log",
    "sequence", "frame", "end", "checksum", "torn-tail", "records", "record" (a reassembled
    record that does not decode).
    """

    severity: Severity
    check: str
    error: str | None
    code: int | None
    generation: int | None
    offset: int | None
    file_name: str | None
    message: str
    #: Whether recovery reads the generation(s) the problem concerns: None when unknown
    #: (no `needed_from` given, or the problem concerns no generation).
    needed: bool | None = None

    @property
    def position(self) -> LogPosition | None:
        """The log position the problem concerns, when it has both a generation and offset."""
        if self.generation is None or self.offset is None:
            return None
        return LogPosition(self.generation, self.offset)

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "check": self.check,
            "error": self.error,
            "code": self.code,
            "generation": self.generation,
            "offset": self.offset,
            "file_name": self.file_name,
            "message": self.message,
            "needed": self.needed,
        }


@dataclass(frozen=True, slots=True)
class GenerationReport:
    """What one log file holds and what is wrong with it.

    `generation` is the header's (or, for an unreadable `edbXXXXXXXX.log`, the name's; None
    for an unreadable `edb.log`). `records` counts the records that end in this generation,
    `frames` its valid frames, `end_offset` where its valid frames end (None when its frames
    were not verified: unreadable or foreign files).
    """

    generation: int | None
    file_name: str
    size: int | None
    log_file_size: int | None
    created_time: int | None
    signature: str | None
    records: int
    frames: int
    end_offset: int | None
    status: GenerationStatus
    problems: list[LogProblem] = field(default_factory=list)
    #: Whether recovery reads this generation (None: unknown, see `verify_logs`).
    needed: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "file_name": self.file_name,
            "size": self.size,
            "log_file_size": self.log_file_size,
            "created_time": self.created_time,
            "created": None if self.created_time is None else format_time_us(self.created_time),
            "signature": self.signature,
            "records": self.records,
            "frames": self.frames,
            "end_offset": self.end_offset,
            "status": self.status,
            "needed": self.needed,
            "problems": [p.as_dict() for p in self.problems],
        }


@dataclass(frozen=True, slots=True)
class LogVerification:
    """The result of `verify_logs`: every log file, every problem, the verdict."""

    directory: str
    generations: list[GenerationReport]
    problems: list[LogProblem]
    #: The stream's signature (the lowest generation's, as recovery takes it), None when no
    #: header was readable.
    signature: str | None = None
    #: The first generation recovery reads (None: unknown, every generation counts as
    #: needed), and what sets it (or why it is unknown).
    needed_from: int | None = None
    needed_reason: str | None = None

    @property
    def ok(self) -> bool:
        """No error-severity problem: recovery can use these logs as they are."""
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[LogProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def first_generation(self) -> int | None:
        known = self._known_generations()
        return known[0] if known else None

    @property
    def last_generation(self) -> int | None:
        known = self._known_generations()
        return known[-1] if known else None

    @property
    def missing(self) -> list[int]:
        """Generations between the lowest and the highest present that have no file."""
        known = self._known_generations()
        if not known:
            return []
        present = set(known)
        return [g for g in range(known[0], known[-1] + 1) if g not in present]

    @property
    def missing_files(self) -> list[str]:
        return [generation_log_name(g) for g in self.missing]

    def _known_generations(self) -> list[int]:
        return sorted({r.generation for r in self.generations if r.generation is not None})

    def _file_name_of(self, generation: int) -> str:
        for report in self.generations:
            if report.generation == generation:
                return report.file_name
        return generation_log_name(generation)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (`jetstore logs verify DIR --json`); keys are stable snake_case."""
        counts: Counter[str] = Counter(p.severity for p in self.problems)
        return {
            "schema": SCHEMA_VERSION,
            "directory": self.directory,
            "ok": self.ok,
            "signature": self.signature,
            "first_generation": self.first_generation,
            "last_generation": self.last_generation,
            "missing": self.missing,
            "missing_files": self.missing_files,
            "counts": {severity: counts[severity] for severity in _SEVERITY_RANK},
            "recovery_needs": {
                "first_generation": self.needed_from,
                "first_file": None
                if self.needed_from is None
                else self._file_name_of(self.needed_from),
                "reason": self.needed_reason,
            },
            "generations": [g.as_dict() for g in self.generations],
            "problems": [p.as_dict() for p in self.problems],
        }


def verify_logs(
    fs: FileSystem,
    directory: str | os.PathLike[str],
    *,
    owner: str = "verify",
    needed_from: int | None = None,
    needed_reason: str | None = None,
    records: bool = True,
) -> LogVerification:
    """Verify every log file of `directory` and report every problem (never writes).

    `needed_from`: the first generation recovery reads, and `needed_reason` what sets it
    (or why it is unknown); problems that concern only generations below it are warnings
    (see the module docstring). None: every generation counts as needed.

    `records=False` checks checksums only (`jetstore checksum`, esentutl /k): headers,
    frames, the chain between generations; the records inside verified frames are neither
    reassembled nor decoded (checks "records" and "record": `logs verify`'s), though still
    counted.

    Raises only when the directory itself cannot be used: `FileNotFound` if it does not
    exist, `InvalidPath` if it is not a directory, or the error listing it gave.
    """
    return _Verifier(fs, os.fspath(directory), owner, needed_from, needed_reason, records).run()


def require_log_directory(fs: FileSystem, directory: str) -> None:
    """What `verify_logs` raises for a `directory` it cannot verify: `FileNotFound` if it does
    not exist, `InvalidPath` if it is not a directory."""
    fs.require_directory(
        directory, what="log directory", hint="give the instance directory that holds edb.log"
    )


# --------------------------------------------------------------------------- implementation


def _signature_text(signature: Signature) -> str:
    return f"{signature.random.hex()}@{format_time_us(signature.time_us)}"


@dataclass
class _Entry:
    """Working state of one log file while it is verified."""

    name: str
    path: str
    name_generation: int | None  # None for edb.log
    size: int | None = None
    header: LogFileHeader | None = None
    unreadable: bool = False
    #: Header readable, generation known, same stream, not a duplicate: part of the chain.
    usable: bool = False
    verified: bool = False
    records: int = 0
    frames: int = 0
    end_offset: int | None = None
    checksum: int = 0
    #: The frames verified without damage up to their end (the running checksum is complete).
    clean: bool = False
    #: The valid frames reach the end the next generation records (records may continue).
    reached_end: bool = False
    torn: bool = False
    #: Start of a record still open at the end of the frames (continues in the next file).
    open_record: LogPosition | None = None
    #: That record's bytes so far and the file it starts in; taken (and dropped from here)
    #: by the next generation's scan, so no more than one record is held.
    open_record_data: bytearray | None = None
    open_record_entry: _Entry | None = None

    @property
    def generation(self) -> int | None:
        return self.header.generation if self.header is not None else self.name_generation

    @property
    def is_current(self) -> bool:
        return self.name_generation is None


@dataclass
class _Carry:
    """Record state handed from one generation to the next."""

    open_record: LogPosition | None = None
    #: The previous generation could not be verified: a first frame may continue a record
    #: whose beginning is not available.
    unknown_before: bool = True
    #: The open record's bytes so far and the file it starts in (None: not known).
    record_data: bytearray | None = None
    record_entry: _Entry | None = None


#: The checks of the records inside verified frames (skipped with `records=False`).
_RECORD_CHECKS: Final = frozenset({"records", "record"})


class _Verifier:
    def __init__(
        self,
        fs: FileSystem,
        directory: str,
        owner: str,
        needed_from: int | None = None,
        needed_reason: str | None = None,
        records: bool = True,
    ) -> None:
        self._fs = fs
        self._directory = directory
        self._owner = owner
        self._needed_from = needed_from
        self._needed_reason = needed_reason
        #: Whether the records inside the verified frames are checked (see `verify_logs`).
        self._records = records
        #: Problems turned from errors into warnings: they concern no generation recovery
        #: needs (their generation's status still says damaged).
        self._unneeded: set[int] = set()
        self._problems: list[LogProblem] = []
        self._entries: list[_Entry] = []
        self._stream_signature: Signature | None = None
        #: Generations in which an undecodable record was reported (the first one only).
        self._undecodable_in: set[int] = set()

    # ----------------------------------------------------------------- reporting

    def _report(
        self,
        severity: Severity,
        check: str,
        error: type[JetError] | None,
        message: str,
        *,
        generation: int | None,
        offset: int | None,
        file_name: str | None,
        concerns: int | Literal["same"] | None = "same",
    ) -> None:
        """Record a problem. `concerns` is the newest generation the problem concerns
        ("same": `generation`; a broken link concerns the generation before the one whose
        header records it, a gap its last missing generation)."""
        if not self._records and check in _RECORD_CHECKS:
            return
        last = generation if concerns == "same" else concerns
        needed = self._is_needed(last)
        unneeded = severity == "error" and needed is False
        if unneeded:
            assert last is not None and self._needed_from is not None
            severity = "warning"
            message = f"{message}; {self._unneeded_note(last, file_name, check)}"
        problem = LogProblem(
            severity=severity,
            check=check,
            error=None if error is None else error.name,
            code=None if error is None else error.code,
            generation=generation,
            offset=offset,
            file_name=file_name,
            message=message,
            needed=needed,
        )
        if unneeded:
            self._unneeded.add(id(problem))
        self._problems.append(problem)

    def _is_needed(self, generation: int | None) -> bool | None:
        """Whether recovery reads `generation` (None: unknown, or no generation)."""
        if self._needed_from is None or generation is None:
            return None
        return generation >= self._needed_from

    def _unneeded_note(self, generation: int, file_name: str | None, check: str) -> str:
        first = self._needed_from
        why = f": {self._needed_reason}" if self._needed_reason else ""
        needs = (
            f"recovery no longer needs generation {generation} (it starts reading at "
            f"generation {first}{why}), so this is a warning, not an error"
        )
        if check == "missing":
            return (
                f"{needs}: nothing has to be put back, but a restore of an older backup cannot "
                "roll forward across the gap"
            )
        what = file_name or generation_log_name(generation)
        if check == "signature":
            # Harmless only while a generation of the stream lies below it: were it the
            # lowest left, recovery would take its signature for the stream's.
            return (
                f"{needs}: move {what} out of the directory (`jetstore logs remove DIR "
                "--unneeded` deletes it with the other generations recovery no longer needs); "
                "were it the lowest generation left, recovery would take its signature for the "
                "stream's and refuse the logs"
            )
        return (
            f"{needs}: {what} can be removed (`jetstore logs removable {self._directory}` "
            "lists what `jetstore logs remove DIR --unneeded` deletes), but a restore of an "
            "older backup cannot roll forward through it"
        )

    def _report_on(
        self,
        entry: _Entry,
        severity: Severity,
        check: str,
        error: type[JetError] | None,
        message: str,
        *,
        offset: int | None,
        concerns: int | Literal["same"] | None = "same",
    ) -> None:
        self._report(
            severity,
            check,
            error,
            message,
            generation=entry.generation,
            offset=offset,
            file_name=entry.name,
            concerns=concerns,
        )

    # ----------------------------------------------------------------- driver

    def run(self) -> LogVerification:
        directory = self._directory
        fs = self._fs
        require_log_directory(fs, directory)
        names = fs.listdir(directory)
        for name in names:
            generation = parse_generation_log_name(name)
            if generation is None and name != CURRENT_LOG:
                continue
            entry = _Entry(name, os.path.join(directory, name), generation)
            self._read_header(entry)
            self._entries.append(entry)
        if not self._entries:
            self._report(
                "warning",
                "directory",
                MissingLogFile,
                f"no log files ({CURRENT_LOG}, edbXXXXXXXX.log) in '{directory}'",
                generation=None,
                offset=None,
                file_name=None,
            )
            return self._result()
        self._check_duplicates()
        self._check_signatures()
        self._check_missing()
        self._verify_chain()
        return self._result()

    # ----------------------------------------------------------------- headers

    def _read_header(self, entry: _Entry) -> None:
        try:
            with self._fs.opened(entry.path, owner=self._owner, writable=False) as file:
                entry.size = file.size()
                data = file.pread(LOG_HEADER_SIZE, 0)
            header = decode_log_header(data, path=entry.path)
        except JetError as exc:
            entry.unreadable = True
            self._report_on(
                entry,
                "error",
                "header",
                type(exc),
                f"{entry.name}: the log file header cannot be read: {exc.detail or exc}",
                offset=0,
            )
            return
        entry.header = header
        if entry.name_generation is not None and header.generation != entry.name_generation:
            self._report(
                "error",
                "generation-name",
                LogGenerationMismatch,
                f"{entry.name} is named for generation {entry.name_generation} but its header "
                f"says generation {header.generation}; it is left out of the chain",
                generation=entry.name_generation,
                offset=_HEADER_GENERATION,
                file_name=entry.name,
            )
            entry.header = None  # the name decides where the file sits; its header is wrong
            return
        entry.usable = True
        size = entry.size or 0
        size_problem = log_file_length_problem(entry.name, header, size)
        if size_problem is not None:
            self._report_on(
                entry,
                "error",
                "size",
                LogFileSizeMismatch,
                size_problem,
                offset=min(size, header.log_file_size),
            )

    def _check_duplicates(self) -> None:
        by_generation: dict[int, list[_Entry]] = {}
        for entry in self._entries:
            if entry.usable and entry.header is not None:
                by_generation.setdefault(entry.header.generation, []).append(entry)
        for generation, entries in by_generation.items():
            if len(entries) < 2:
                continue
            # Like the reader, the current log (edb.log) is the one the stream goes on with.
            keep = next((e for e in entries if e.is_current), entries[0])
            for entry in entries:
                if entry is keep:
                    continue
                entry.usable = False
                self._report_on(
                    entry,
                    "error",
                    "duplicate",
                    InvalidLogSequence,
                    f"{entry.name} and {keep.name} both hold generation {generation}; "
                    f"{entry.name} is left out of the chain",
                    offset=_HEADER_GENERATION,
                )

    def _check_signatures(self) -> None:
        usable = [e for e in self._entries if e.usable and e.header is not None]
        # Duplicates are already out of the chain: one entry per generation, as in recovery.
        by_generation = {e.header.generation: e for e in usable if e.header is not None}
        stream = stream_signature_of(
            {g: e.header for g, e in by_generation.items() if e.header is not None}
        )
        if stream is None:
            return
        self._stream_signature = stream
        lowest = by_generation[min(by_generation)]
        for entry in usable:
            assert entry.header is not None
            if entry.header.log_signature == stream:
                continue
            entry.usable = False
            message = (
                f"{entry.name} (generation {entry.header.generation}) belongs to another log "
                f"stream than {lowest.name} (generation {lowest.generation}), the lowest "
                "generation present, whose signature recovery takes for the stream's: "
                f"signature {entry.header.log_signature}, the stream's is {stream}; its frames "
                "are not verified"
            )
            # Below where recovery starts, the note `_report` appends says to move it away
            # (and why that is safe): the advice is given once, there.
            if self._is_needed(entry.header.generation) is not False:
                message += (
                    f". Move {entry.name} out of the directory, or, if {lowest.name} is the "
                    "stray file, move that one"
                )
            self._report_on(
                entry, "error", "signature", BadLogSignature, message, offset=_HEADER_SIGNATURE
            )

    def _check_missing(self) -> None:
        known = sorted({e.generation for e in self._entries if e.generation is not None})
        if not any(e.is_current for e in self._entries) and known:
            newest = known[-1]
            self._report(
                "warning",
                "current-log",
                None,
                f"there is no {CURRENT_LOG}: the newest generation present is {newest} "
                f"({generation_log_name(newest)}); a log roll was interrupted by a crash, or "
                "the newest log files are gone (a database header that needs a later "
                "generation shows which)",
                generation=None,
                offset=None,
                file_name=CURRENT_LOG,
            )
        if not known:
            return
        present = set(known)
        gap: list[int] = []
        for generation in range(known[0], known[-1] + 2):
            if generation <= known[-1] and generation not in present:
                gap.append(generation)
                continue
            if gap:
                self._report_gap(gap, before=gap[0] - 1, after=generation)
                gap = []

    def _report_gap(self, gap: list[int], *, before: int, after: int) -> None:
        names = [generation_log_name(g) for g in gap]
        if len(names) > _MAX_NAMES_LISTED:
            listed = f"{names[0]} … {names[-1]} ({len(names)} files)"
        else:
            listed = ", ".join(names)
        what = "generation" if len(gap) == 1 else "generations"
        span = str(gap[0]) if len(gap) == 1 else f"{gap[0]}-{gap[-1]}"
        self._report(
            "error",
            "missing",
            MissingLogFile,
            f"log {what} {span} missing between generation {before} and {after}: {listed}",
            generation=gap[0],
            offset=None,
            file_name=names[0],
            concerns=gap[-1],
        )

    # ----------------------------------------------------------------- chain and frames

    def _verify_chain(self) -> None:
        chain: dict[int, _Entry] = {}
        for entry in self._entries:
            if entry.usable and entry.header is not None:
                chain[entry.header.generation] = entry
        known = [e.generation for e in self._entries if e.generation is not None]
        highest = max(known) if known else 0
        # An unreadable edb.log is a newer generation whose number is unknown.
        newest_known = not any(e.is_current and e.generation is None for e in self._entries)
        carry = _Carry()
        for generation in sorted(chain):
            entry = chain[generation]
            header = entry.header
            assert header is not None
            previous = chain.get(generation - 1)
            linked = previous is not None and self._check_link(entry, header, previous)
            if not linked or previous is None or not previous.reached_end:
                carry = _Carry()
            successor = chain.get(generation + 1)
            expected_end: int | None = None
            if successor is not None:
                expected_end = self._recorded_end(entry, header, successor)
            newest = generation == highest and newest_known
            self._verify_frames(entry, header, expected_end, newest=newest, carry=carry)
            carry = _Carry(
                entry.open_record,
                unknown_before=False,
                record_data=entry.open_record_data,
                record_entry=entry.open_record_entry,
            )
            entry.open_record_data = entry.open_record_entry = None

    def _recorded_end(self, entry: _Entry, header: LogFileHeader, successor: _Entry) -> int | None:
        """Where `successor`'s header says `entry`'s frames end, if it links to `entry`."""
        link = successor.header
        assert link is not None
        if link.previous_generation_created_time != header.created_time:
            return None  # reported by the successor's link check
        end = link.previous_generation_end
        if end < header.data_start:
            return None  # reported by the successor's link check
        return end

    def _check_link(self, entry: _Entry, header: LogFileHeader, previous: _Entry) -> bool:
        """Check `entry`'s link to `previous` (verified just before); True when it links."""
        prev_header = previous.header
        assert prev_header is not None
        generation = header.generation
        if header.previous_generation_created_time != prev_header.created_time:
            self._report_on(
                entry,
                "error",
                "sequence",
                InvalidLogSequence,
                f"{entry.name} (generation {generation}) does not follow {previous.name}: it "
                f"records the previous generation's creation time as "
                f"{_time(header.previous_generation_created_time)}, {previous.name} was created "
                f"{_time(prev_header.created_time)} (a log file of another run or restore is "
                "mixed in)",
                offset=_HEADER_PREV_CREATED,
                concerns=generation - 1,
            )
            return False
        if header.previous_generation_end < prev_header.data_start:
            self._report_on(
                entry,
                "error",
                "end",
                LogFileCorrupt,
                f"{entry.name} (generation {generation}) records that generation "
                f"{generation - 1} ends at offset {header.previous_generation_end}, before its "
                f"data start {prev_header.data_start}",
                offset=_HEADER_PREV_END,
                concerns=generation - 1,
            )
            return False
        if previous.clean and header.previous_generation_checksum != previous.checksum:
            self._report_on(
                entry,
                "error",
                "checksum",
                LogSequenceChecksumMismatch,
                f"the frames of {previous.name} (generation {generation - 1}) do not match the "
                f"running checksum recorded in {entry.name} (generation {generation}): "
                f"{previous.checksum:#010x} computed, {header.previous_generation_checksum:#010x} "
                "recorded (a log file was altered or replaced)",
                offset=_HEADER_PREV_CHECKSUM,
                concerns=generation - 1,
            )
        return True

    def _verify_frames(
        self,
        entry: _Entry,
        header: LogFileHeader,
        expected_end: int | None,
        *,
        newest: bool,
        carry: _Carry,
    ) -> None:
        try:
            with self._fs.opened(entry.path, owner=self._owner, writable=False) as file:
                data = file.pread(min(file.size(), header.log_file_size), 0)
        except JetError as exc:
            entry.unreadable = True
            self._report_on(
                entry,
                "error",
                "read",
                type(exc),
                f"{entry.name}: cannot be read: {exc.detail or exc}",
                offset=None,
            )
            return
        scan = _FrameScan(self, entry, header, data, expected_end, newest=newest, carry=carry)
        scan.run()
        entry.verified = True

    # ----------------------------------------------------------------- result

    def _result(self) -> LogVerification:
        problems = sorted(self._problems, key=_problem_order)
        reports: list[GenerationReport] = []
        for entry in sorted(self._entries, key=_entry_order):
            own = [p for p in problems if p.file_name == entry.name]
            header = entry.header
            status: GenerationStatus
            if entry.unreadable:
                status = "unreadable"
            elif any(p.severity == "error" or id(p) in self._unneeded for p in own):
                status = "damaged"
            elif entry.torn:
                status = "torn-tail"
            else:
                status = "ok"
            reports.append(
                GenerationReport(
                    generation=entry.generation,
                    file_name=entry.name,
                    size=entry.size,
                    log_file_size=None if header is None else header.log_file_size,
                    created_time=None if header is None else header.created_time,
                    signature=None if header is None else _signature_text(header.log_signature),
                    records=entry.records,
                    frames=entry.frames,
                    end_offset=entry.end_offset if entry.verified else None,
                    status=status,
                    problems=own,
                    needed=None
                    if self._needed_from is None or entry.generation is None
                    else entry.generation >= self._needed_from,
                )
            )
        stream = self._stream_signature
        return LogVerification(
            directory=self._directory,
            generations=reports,
            problems=problems,
            signature=None if stream is None else _signature_text(stream),
            needed_from=self._needed_from,
            needed_reason=self._needed_reason,
        )


class _FrameScan:
    """Verifies the frames of one generation and reassembles its records."""

    def __init__(
        self,
        verifier: _Verifier,
        entry: _Entry,
        header: LogFileHeader,
        data: bytes,
        expected_end: int | None,
        *,
        newest: bool,
        carry: _Carry,
    ) -> None:
        self._v = verifier
        self._entry = entry
        self._header = header
        self._data = data
        self._generation = header.generation
        self._expected_end = expected_end
        self._newest = newest
        self._open_record = carry.open_record
        self._record_data = carry.record_data
        self._record_entry = carry.record_entry
        self._unknown_before = carry.unknown_before
        self._limit = min(len(data), header.log_file_size)
        self._damaged = False

    def _error(self, check: str, error: type[JetError], message: str, offset: int) -> None:
        self._v._report_on(self._entry, "error", check, error, message, offset=offset)

    def run(self) -> None:
        entry = self._entry
        expected_end = self._expected_end
        bound = self._limit if expected_end is None else min(expected_end, self._limit)
        offset = self._header.data_start
        while True:
            frame = decode_frame(self._data, offset, self._generation) if offset < bound else None
            if frame is not None and frame.next_offset <= bound:
                self._take(frame)
                offset = frame.next_offset
                continue
            resume = (
                self._stop_in_closed(offset, frame, expected_end)
                if expected_end is not None
                else self._stop_at_tail(offset)
            )
            if resume is None:
                break
            offset = resume
        entry.end_offset = offset
        entry.reached_end = expected_end is not None and offset == expected_end
        entry.clean = not self._damaged and (expected_end is None or entry.reached_end)
        if expected_end is not None and offset == expected_end:
            self._beyond_recorded_end(expected_end)
        if self._open_record is not None and self._newest and not self._damaged:
            self._v._report_on(
                entry,
                "info",
                "records",
                None,
                f"the record starting at {self._open_record} is incomplete at the end of the "
                "log (it was never acknowledged; recovery ignores it)",
                offset=self._open_record.offset
                if self._open_record.generation == self._generation
                else None,
            )
        entry.open_record = self._open_record
        if self._open_record is not None:
            entry.open_record_data = self._record_data
            entry.open_record_entry = self._record_entry

    # frames

    def _take(self, frame: Frame) -> None:
        entry = self._entry
        entry.frames += 1
        entry.checksum = accumulate(entry.checksum, frame.crc)
        position = LogPosition(self._generation, frame.offset)
        at_start = frame.offset == self._header.data_start
        kind = frame.kind
        if kind in (KIND_FULL, KIND_FIRST):
            if self._open_record is not None:
                if at_start and self._open_record.generation < self._generation:
                    self._v._report_on(
                        entry,
                        "info",
                        "records",
                        None,
                        f"the record starting at {self._open_record} never got its end: a "
                        f"crash cut it off and generation {self._generation} starts with a "
                        "new record (it was never acknowledged)",
                        offset=frame.offset,
                    )
                else:
                    self._error(
                        "records",
                        LogFileCorrupt,
                        f"in {entry.name}: the record starting at {self._open_record} is "
                        f"interrupted by a new record at {position}",
                        frame.offset,
                    )
            self._drop_record()
            if kind == KIND_FULL:
                entry.records += 1
                self._decode(frame.payload, position, entry)
            else:
                self._open_record = position
                self._record_data = bytearray(frame.payload)
                self._record_entry = entry
            return
        if self._open_record is None:
            if not (at_start and self._unknown_before):
                self._error(
                    "records",
                    LogFileCorrupt,
                    f"in {entry.name}: {KIND_NAMES[kind]} frame at {position} continues a "
                    "record that has no beginning",
                    frame.offset,
                )
            # Otherwise the record began in a generation that is gone or unusable.
            return
        data = self._record_data
        if data is not None:
            data += frame.payload
        if kind == KIND_LAST:
            entry.records += 1
            if data is not None and self._record_entry is not None:
                self._decode(data, self._open_record, self._record_entry)
            self._drop_record()

    def _drop_record(self) -> None:
        self._open_record = None
        self._record_data = self._record_entry = None

    def _decode(self, record: bytes | bytearray, start: LogPosition, owner: _Entry) -> None:
        """Decode a whole record as recovery would (`check_record`); report the first one of
        a generation that does not decode, in the file where it starts."""
        undecodable_in = self._v._undecodable_in
        if start.generation in undecodable_in or not self._v._records:
            return
        try:
            check_record(record, start)
        except LogFileCorrupt as exc:
            undecodable_in.add(start.generation)
            self._v._report_on(
                owner,
                "error",
                "record",
                LogFileCorrupt,
                f"in {owner.name}: {exc.detail} ({len(record)} bytes; recovery stops at it; "
                f"only the first such record of a generation is reported). {exc.hint}",
                offset=start.offset,
            )

    def _next_valid(self, offset: int, bound: int) -> Frame | None:
        frame = find_next_valid_frame(self._data, offset, self._generation)
        if frame is None or frame.next_offset > bound:
            return None
        return frame

    def _stop_in_closed(self, offset: int, frame: Frame | None, expected_end: int) -> int | None:
        """Valid frames stop at `offset` in a closed generation; where to resume, if at all."""
        if offset == expected_end:
            return None
        entry = self._entry
        self._damaged = True
        successor = generation_log_name(self._generation + 1)
        if frame is not None:
            self._error(
                "end",
                LogFileCorrupt,
                f"in {entry.name}: the frame at {LogPosition(self._generation, offset)} runs "
                f"past offset {expected_end}, where {successor} records that this generation "
                "ends",
                offset,
            )
            return None
        bound = min(expected_end, self._limit)
        later = self._next_valid(offset, bound)
        if later is None and len(self._data) < expected_end:
            self._error(
                "end",
                LogFileCorrupt,
                f"{entry.name} ends at offset {len(self._data)}, but {successor} records that "
                f"its frames run up to offset {expected_end}: the frames from "
                f"{LogPosition(self._generation, offset)} on are lost (the file was truncated)",
                offset,
            )
            return None
        resumes = (
            f"; valid frames resume at offset {later.offset}"
            if later is not None
            else "; no valid frame follows before that end"
        )
        self._error(
            "frame",
            LogFileCorrupt,
            f"damaged log data at {LogPosition(self._generation, offset)} in {entry.name} "
            f"(a closed generation: {successor} records that its frames run up to offset "
            f"{expected_end}){resumes}",
            offset,
        )
        self._drop_record()
        self._unknown_before = False
        return None if later is None else later.offset

    def _stop_at_tail(self, offset: int) -> int | None:
        """Valid frames stop at `offset` with no recorded end: apply the tail rule."""
        entry = self._entry
        if offset >= self._limit:
            return None
        first_later = self._next_valid(offset, self._limit)
        proof = first_later
        while proof is not None and proof.durable_before <= offset:
            proof = self._next_valid(proof.offset, self._limit)
        position = LogPosition(self._generation, offset)
        if first_later is not None and proof is not None:
            self._damaged = True
            self._error(
                "frame",
                LogFileCorrupt,
                f"damaged log data at {position} in {entry.name}: the frame at offset "
                f"{proof.offset} shows every byte below {proof.durable_before} had been "
                f"synced; valid frames resume at offset {first_later.offset}",
                offset,
            )
            self._drop_record()
            self._unknown_before = False
            return first_later.offset
        if first_later is None and self._data.count(0, offset, self._limit) == self._limit - offset:
            return None  # zeros: the clean end of the log
        entry.torn = True
        if first_later is not None:
            detail = (
                f"valid frames from offset {first_later.offset} lie beyond it, but no frame "
                "proves they had been synced: recovery discards them"
            )
        else:
            detail = "the bytes beyond it are the remains of an interrupted write"
        if self._newest:
            severity: Severity = "info" if first_later is None else "warning"
            message = f"torn tail: the log ends at {position} in {entry.name}; {detail}"
        else:
            severity = "warning"
            message = (
                f"{entry.name}: valid frames stop at {position} and the next generation cannot "
                f"confirm where this one ends, so damage cannot be told from a torn write; "
                f"{detail}"
            )
        self._v._report_on(entry, severity, "torn-tail", None, message, offset=offset)
        return None

    def _beyond_recorded_end(self, end: int) -> None:
        """Bytes after a closed generation's recorded end: leftovers of a torn write."""
        if end >= self._limit:
            return
        entry = self._entry
        if decode_frame(self._data, end, self._generation) is not None:
            self._error(
                "end",
                LogFileCorrupt,
                f"in {entry.name}: a valid frame at offset {end} continues past the end that "
                f"{generation_log_name(self._generation + 1)} records for this generation",
                end,
            )
            return
        if self._data.count(0, end, self._limit) != self._limit - end:
            self._v._report_on(
                entry,
                "info",
                "torn-tail",
                None,
                f"{entry.name}: bytes after the recorded end (offset {end}) are the remains of "
                "a write interrupted by a crash before the next generation began; they are not "
                "part of the log",
                offset=end,
            )


def _time(time_us: int) -> str:
    return f"{format_time_us(time_us)} ({time_us})"


def _problem_order(problem: LogProblem) -> tuple[int, int]:
    # Stable sort: problems of one place keep the order they were found in.
    generation = problem.generation if problem.generation is not None else 1 << 33
    offset = problem.offset if problem.offset is not None else -1
    return (generation, offset)


def _entry_order(entry: _Entry) -> tuple[int, str]:
    generation = entry.generation
    return (generation if generation is not None else 1 << 33, entry.name)
