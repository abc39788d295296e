"""The log reader: which generations exist, whether they chain, and the records they hold.

Read-only: nothing here writes, renames or deletes (diagnose and dump rely on that).

A file that looks like a log file but is misnamed (`EDB.LOG`, `edb0000000a.log`: see
`filenames.misnamed_log_name`) is never read as part of the chain; `take_inventory` lists it
apart (`LogInventory.misnamed`, with the name its header gives it) so that recovery, diagnose
and restore can name it where a generation is missing, instead of saying nothing of it.

Chain verification (each failure stops reading with ESE's error, naming the generation):
- every file's header is valid (`LogFileCorrupt`) and its generation matches its name
  (`LogGenerationMismatch`); every generation carries the stream's signature (`BadLogSignature`).
  The stream's signature is the lowest generation's (`stream_signature_of`): recovery,
  diagnose, `logs verify`, `dump logs` and `checksum` all take it from there, so no tool
  calls a generation foreign that recovery reads as the stream's, or the other way round;
- every file read is exactly as long as its header's `log_file_size` (`LogFileSizeMismatch`,
  after the records before the damage were read; the rule the verifier applies too,
  `log_file_length_problem`): log files are written in full before use, so a short newest
  file is a cut, never a torn tail;
- generations are contiguous (`MissingLogFile`, naming the missing file);
- each header's `previous_generation_created_time` equals the previous file's creation time
  (`InvalidLogSequence`), and its `previous_generation_end` / `previous_generation_checksum`
  equal where the previous file's frames really end and their running checksum
  (`LogFileCorrupt` / `LogSequenceChecksumMismatch`);
- a bad frame inside a closed generation is corruption (`LogFileCorrupt` with its position);
  in the newest generation a bad frame is the end of the log (a torn last flush) unless a later
  valid frame proves the bytes had been synced before (then it is corruption).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from jetstore.errors import (
    BadLogSignature,
    InvalidLogSequence,
    InvalidPath,
    JetError,
    LogFileCorrupt,
    LogFileSizeMismatch,
    LogGenerationMismatch,
    LogSequenceChecksumMismatch,
    MissingLogFile,
)
from jetstore.format.common import Signature
from jetstore.format.filenames import (
    CURRENT_LOG,
    LOST_LOGS_PREFIX,
    TEMP_LOG,
    generation_log_name,
    misnamed_log_name,
    parse_generation_log_name,
    parse_reserve_log_name,
)
from jetstore.format.logframe import (
    FRAME_HEADER_SIZE,
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
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
from jetstore.format.positions import LogPosition
from jetstore.io.files import FileSystem
from jetstore.log.writer import LogTail


@dataclass
class GenerationFile:
    """One log file found on disk and what its header says (or why it cannot be read)."""

    generation: int
    path: str
    is_current: bool
    size: int
    header: LogFileHeader | None
    error: JetError | None = None
    #: A file whose header names another generation than its name (`error` is then
    #: LogGenerationMismatch, `header` None): the generation it really holds.
    holds_generation: int | None = None


@dataclass(frozen=True)
class MisnamedLog:
    """A file that looks like a log file but is not named as one (`misnamed_log_name`:
    `EDB.LOG`, `edb0000000a.log`, `edb3.log`). It is never read as a log; it is listed so
    that a refusal for a missing generation can name it, and the name to give it."""

    path: str
    #: `edb.log` for a current log's name in another case; else the generation its header
    #: holds (the name's own digits may be decimal, or wrong), or, unreadable, the name's.
    right_name: str
    header: LogFileHeader | None  # None: it does not read as a log file

    @property
    def generation(self) -> int | None:
        return self.header.generation if self.header is not None else None


@dataclass
class LogInventory:
    """Every log file of an instance directory, by generation."""

    directory: str
    files: dict[int, GenerationFile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unreadable: list[GenerationFile] = field(default_factory=list)
    #: `edbtmp.log` standing for the current log of a roll cut short between its renames
    #: (`take_inventory`); recovery finishes the roll by renaming it to `edb.log`.
    interrupted_roll: GenerationFile | None = None
    misnamed: list[MisnamedLog] = field(default_factory=list)
    #: `edbtmp.log` or a reserve log that is no regular file (a directory), as the error
    #: opening it gives: the log writer fails on it as it prepares its next file, after
    #: recovery has written; recovery refuses it before (`decide_start`).
    in_the_way: list[JetError] = field(default_factory=list)

    @property
    def generations(self) -> list[int]:
        return sorted(self.files)

    @property
    def lowest(self) -> int | None:
        return min(self.files) if self.files else None

    @property
    def highest(self) -> int | None:
        return max(self.files) if self.files else None

    def missing(self, first: int, last: int) -> list[int]:
        return [g for g in range(first, last + 1) if g not in self.files]

    def stream_signature(self) -> Signature | None:
        """The log stream of the directory (`stream_signature_of`); None: no log present."""
        return stream_signature_of(
            {g: f.header for g, f in self.files.items() if f.header is not None}
        )

    def describe_present(self) -> str:
        gens = self.generations
        if not gens:
            return "no log generations are present"
        runs: list[str] = []
        start = prev = gens[0]
        for g in [*gens[1:], -1]:
            if g != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
                start = g
            prev = g
        return "generations present: " + ", ".join(runs)


def stream_signature_of(headers: Mapping[int, LogFileHeader]) -> Signature | None:
    """The signature of the log stream `headers` (by generation) make up: the lowest
    generation's. None when there is none.

    `headers` are the files that can be part of the chain: header readable, generation as
    the name says, `edb.log` rather than an archived file of the same generation
    (`take_inventory`'s rules). The lowest generation is where the stream's history starts;
    every later generation must carry its signature, and the checkpoint file and the database
    headers are checked against it, never the other way round (they are hints about where
    replay starts, not about which files are the log). A count of files decides nothing: a
    directory with more foreign files than its own still recovers from its own lowest file
    onwards, or refuses at the first foreign one.
    """
    if not headers:
        return None
    return headers[min(headers)].log_signature


def set_aside_logs_of(
    fs: FileSystem, directory: str, signatures: Collection[Signature], *, owner: str
) -> str | None:
    """The newest `lost-logs-<time>/` of `directory` holding a log file of one of the log
    streams `signatures`, else None.

    Recovery with data loss and repair move the logs there and start a new stream in
    `directory`: a restore rolling forward from the old stream finds its logs there, and a
    repair run again after a move that failed half-way moves the rest of the stream into
    the same directory rather than split it over two.
    """
    candidates = sorted(
        (name for name in fs.listdir(directory) if name.startswith(LOST_LOGS_PREFIX)),
        reverse=True,
    )
    for name in candidates:
        path = os.path.join(directory, name)
        if not fs.is_directory(path):
            continue
        inventory = take_inventory(fs, path, owner=owner)
        if any(
            entry.header is not None and entry.header.log_signature in signatures
            for entry in inventory.files.values()
        ):
            return path
    return None


def take_inventory(fs: FileSystem, directory: str, *, owner: str) -> LogInventory:
    """List the log files of `directory` and read their headers (never writes)."""
    inventory = LogInventory(directory)
    names = fs.listdir(directory) if fs.is_directory(directory) else []
    for name in names:
        generation = parse_generation_log_name(name)
        path = os.path.join(directory, name)
        if name == TEMP_LOG or parse_reserve_log_name(name) is not None:
            try:
                fs.read_file(path, owner=owner, limit=0)
            except InvalidPath as exc:
                inventory.in_the_way.append(exc)
            except JetError:
                pass  # the writer reports what else is wrong, as it replaces the file
            continue
        if generation is None and name != CURRENT_LOG:
            misnamed = _misnamed(fs, path, owner=owner)
            if misnamed is not None:
                inventory.misnamed.append(misnamed)
                inventory.problems.append(
                    f"{name} looks like a log file but is misnamed, and so is not read "
                    f"(the name to give it: {misnamed.right_name})"
                )
            continue
        entry = _read_header(fs, path, generation, owner=owner)
        if entry.header is None:
            inventory.unreadable.append(entry)
            inventory.problems.append(f"{name}: {entry.error}")
            continue
        if entry.generation in inventory.files:
            other = inventory.files[entry.generation]
            inventory.problems.append(
                f"{name} and {os.path.basename(other.path)} both hold generation {entry.generation}"
            )
            if not entry.is_current:
                continue
        inventory.files[entry.generation] = entry
    if CURRENT_LOG not in names and TEMP_LOG in names:
        interrupted = _interrupted_roll(fs, directory, inventory, owner=owner)
        if interrupted is not None:
            inventory.files[interrupted.generation] = interrupted
            inventory.interrupted_roll = interrupted
            inventory.problems.append(
                f"a roll to generation {interrupted.generation} was cut short between its two "
                f"renames: {TEMP_LOG} (the new generation's header, no record) takes the place "
                f"of {CURRENT_LOG}"
            )
    return inventory


def _misnamed(fs: FileSystem, path: str, *, owner: str) -> MisnamedLog | None:
    right = misnamed_log_name(os.path.basename(path))
    if right is None or fs.is_directory(path):
        return None  # a directory is no log file, whatever its name
    try:
        header: LogFileHeader | None = decode_log_header(
            fs.read_file(path, owner=owner, limit=LOG_HEADER_SIZE), path=path
        )
    except JetError:
        header = None  # a directory, a short or foreign file: named by what its name says
    if header is not None and right != CURRENT_LOG:
        right = generation_log_name(header.generation)
    return MisnamedLog(path, right, header)


def _interrupted_roll(
    fs: FileSystem, directory: str, inventory: LogInventory, *, owner: str
) -> GenerationFile | None:
    """`edbtmp.log` as the current log when a roll stopped between archiving `edb.log` and
    renaming `edbtmp.log` to it: its header is the generation after the newest archived one,
    linked to it (signature, previous creation time), and no frame follows it (a roll writes
    the header and syncs it before either rename; records go in only after both)."""
    newest = inventory.highest
    if newest is None:
        return None
    path = os.path.join(directory, TEMP_LOG)
    entry = _read_header(fs, path, None, owner=owner)
    header, previous = entry.header, inventory.files[newest].header
    if header is None or previous is None or header.generation != newest + 1:
        return None
    if (
        header.log_signature != previous.log_signature
        or header.previous_generation_created_time != previous.created_time
    ):
        return None
    data = fs.read_file(path, owner=owner, limit=LOG_HEADER_SIZE + FRAME_HEADER_SIZE)
    if any(data[LOG_HEADER_SIZE:]):
        return None  # something after the header: not a roll cut short before its records
    return entry


def _read_header(
    fs: FileSystem, path: str, generation_from_name: int | None, *, owner: str
) -> GenerationFile:
    is_current = generation_from_name is None
    try:
        size = fs.size(path)
        data = fs.read_file(path, owner=owner, limit=LOG_HEADER_SIZE)
        header = decode_log_header(data, path=path)
    except JetError as exc:
        return GenerationFile(generation_from_name or 0, path, is_current, 0, None, exc)
    if generation_from_name is not None and header.generation != generation_from_name:
        error = LogGenerationMismatch(
            f"'{path}' is named for generation {generation_from_name} but its header says "
            f"{header.generation}",
            path=path,
        )
        return GenerationFile(
            generation_from_name, path, False, size, None, error, holds_generation=header.generation
        )
    return GenerationFile(header.generation, path, is_current, size, header)


@dataclass(frozen=True, slots=True)
class LogRecordEntry:
    """One complete record: where it starts, where the next one may start, its bytes."""

    start: LogPosition
    end: LogPosition
    payload: bytes


@dataclass
class ScanResult:
    """Filled in while scanning: where the stream ends and what was noticed on the way."""

    tail: LogTail | None = None
    torn_tail: bool = False
    torn_position: LogPosition | None = None
    records: int = 0
    signature: Signature | None = None
    first_generation: int | None = None
    notes: list[str] = field(default_factory=list)
    #: (generation, records that end in it) for every generation read, in order.
    generations: list[tuple[int, int]] = field(default_factory=list)


class LogScanner:
    """Reads records from `start` to the end of the stream, verifying the whole chain.

    Every generation from `start.generation` to the newest one is read from its first frame
    (so running checksums are complete), but only records starting at or after `start` are
    yielded. After iteration, `result.tail` says where the stream ends.
    """

    def __init__(
        self,
        fs: FileSystem,
        inventory: LogInventory,
        *,
        owner: str,
        signature: Signature | None = None,
    ) -> None:
        self._fs = fs
        self._inventory = inventory
        self._owner = owner
        self._signature = signature
        self.result = ScanResult()

    def records(self, start: LogPosition) -> Iterator[LogRecordEntry]:
        inventory = self._inventory
        highest = inventory.highest
        if highest is None:
            return
        first = max(start.generation, 1)
        if first > highest:
            if first == highest + 1 and start.offset <= LOG_HEADER_SIZE:
                # The start is the very beginning of a generation that was never created.
                return
            raise MissingLogFile(
                f"log generation {first} ({generation_log_name(first)}) is needed from "
                f"position {start} but the newest generation present is {highest}",
                hint="restore from backup; `jetstore logs verify DIR` shows which logs are present",
            )
        self.result.first_generation = first
        prev_header: LogFileHeader | None = None
        prev_end = 0
        prev_checksum = 0
        partial: list[bytes] | None = None
        partial_start = LogPosition.MIN
        signature = self._signature
        for generation in range(first, highest + 1):
            entry = inventory.files.get(generation)
            if entry is None or entry.header is None:
                name = generation_log_name(generation)
                raise MissingLogFile(
                    f"log generation {generation} ({name}) is missing; "
                    f"{inventory.describe_present()}",
                    hint="restore the missing file or restore from backup; "
                    "`jetstore logs verify DIR` shows what is present",
                    path=os.path.join(inventory.directory, name),
                )
            header = entry.header
            records_before = self.result.records
            if signature is None:
                signature = header.log_signature
                self.result.signature = signature
            elif header.log_signature != signature:
                raise BadLogSignature(
                    f"'{entry.path}' (generation {generation}) belongs to another log stream "
                    f"(signature {header.log_signature}, expected {signature})",
                    hint="move the foreign log file out of the instance directory",
                    path=entry.path,
                )
            if prev_header is not None:
                self._check_link(entry, header, prev_header, prev_end, prev_checksum)
            next_entry = inventory.files.get(generation + 1)
            expected_end = (
                next_entry.header.previous_generation_end
                if next_entry is not None and next_entry.header is not None
                else None
            )
            is_newest = generation == highest
            data = self._fs.read_file(entry.path, owner=self._owner)
            offset = header.data_start
            checksum = 0
            limit = min(len(data), header.log_file_size)
            if expected_end is not None and not is_newest:
                limit = min(limit, expected_end)
            first_frame_in_gen = True
            while offset < limit:
                frame = decode_frame(data, offset, generation)
                if frame is None or frame.next_offset > limit:
                    break
                checksum = accumulate(checksum, frame.crc)
                kind = frame.kind
                position = LogPosition(generation, offset)
                if kind in (KIND_FULL, KIND_FIRST):
                    if partial is not None:
                        if not first_frame_in_gen:
                            raise LogFileCorrupt(
                                f"record at {partial_start} is interrupted by a new record at "
                                f"{position} in '{entry.path}'",
                                path=entry.path,
                            )
                        # A record cut off by a crash at the end of the previous generation
                        # was never acknowledged; the stream went on with a new generation.
                        self.result.notes.append(
                            f"incomplete record at {partial_start} was abandoned by a crash"
                        )
                        partial = None
                    if kind == KIND_FULL:
                        if position >= start:
                            self.result.records += 1
                            yield LogRecordEntry(
                                position, LogPosition(generation, frame.next_offset), frame.payload
                            )
                    else:
                        partial = [frame.payload]
                        partial_start = position
                elif partial is None:
                    if position >= start and not first_frame_in_gen:
                        raise LogFileCorrupt(
                            f"continuation frame at {position} in '{entry.path}' has no beginning",
                            path=entry.path,
                        )
                    # Continuation of a record that began before `start`: not ours to replay.
                elif kind == KIND_MIDDLE:
                    partial.append(frame.payload)
                else:
                    assert kind == KIND_LAST
                    partial.append(frame.payload)
                    if partial_start >= start:
                        self.result.records += 1
                        yield LogRecordEntry(
                            partial_start,
                            LogPosition(generation, frame.next_offset),
                            b"".join(partial),
                        )
                    partial = None
                first_frame_in_gen = False
                offset = frame.next_offset
            end_of_frames = offset
            size_problem = log_file_length_problem(os.path.basename(entry.path), header, len(data))
            if size_problem is not None:
                # Checked before the torn-tail rule: a file cut short may end in what looks
                # like a torn flush (or in nothing at all), but no crash makes one.
                self._refuse_size(entry, size_problem, LogPosition(generation, end_of_frames))
            if is_newest:
                # An all-zero rest (a fresh preallocated file) holds no frame and nothing torn:
                # counting zeros is ~10x faster than searching them for the generation.
                if end_of_frames < min(len(data), header.log_file_size) and _has_nonzero(
                    data, end_of_frames
                ):
                    later = find_next_valid_frame(data, end_of_frames, generation)
                    proof = later
                    while proof is not None and proof.durable_before <= end_of_frames:
                        # Any later frame may prove the bytes were synced, not only the first.
                        proof = find_next_valid_frame(data, proof.offset, generation)
                    if proof is not None:
                        raise LogFileCorrupt(
                            f"damaged log data at {LogPosition(generation, end_of_frames)} in "
                            f"'{entry.path}': later frames show it had been written safely",
                            hint="restore from backup, or `jetstore recover --accept-data-loss` "
                            "to stop at the last good record",
                            path=entry.path,
                        )
                    # Something is written past the last valid frame: a torn last flush.
                    self.result.torn_tail = True
                    self.result.torn_position = LogPosition(generation, end_of_frames)
            elif expected_end is not None and end_of_frames != expected_end:
                raise LogFileCorrupt(
                    f"log generation {generation} ('{entry.path}') has valid frames only up to "
                    f"offset {end_of_frames}, but generation {generation + 1} records that it "
                    f"holds data up to offset {expected_end}",
                    hint="the file is damaged: restore it from backup",
                    path=entry.path,
                )
            prev_header = header
            prev_end = end_of_frames
            prev_checksum = checksum
            self.result.generations.append((generation, self.result.records - records_before))
            self.result.tail = LogTail(
                generation=generation,
                created_time=header.created_time,
                end_offset=end_of_frames,
                checksum=checksum,
                is_current_file=entry.is_current,
            )

    def _refuse_size(self, entry: GenerationFile, problem: str, read_to: LogPosition) -> NoReturn:
        """A log file of another size than its header records: damage, not a torn tail.

        Its frames up to the damage were yielded (each verifies on its own), so a recovery
        that accepts the data loss stops at `read_to`, as for any other damage.
        """
        raise LogFileSizeMismatch(
            f"'{entry.path}': {problem}. Log files are written at their full size before "
            f"they are used, so no crash leaves one like this: it was cut or badly copied. "
            f"Its records are readable up to {read_to}; whatever the log held after that "
            "(acknowledged commits among it) is lost unless the complete file is put back",
            hint="put the complete file back (from where it was copied, or restore from "
            "backup); or, accepting the loss of what it held after "
            f"{read_to}, `jetstore recover {self._inventory.directory} --accept-data-loss` "
            "brings every database to the last record before the damage "
            f"(`jetstore logs verify {self._inventory.directory}` lists every problem)",
            path=entry.path,
        )

    def _check_link(
        self,
        entry: GenerationFile,
        header: LogFileHeader,
        prev_header: LogFileHeader,
        prev_end: int,
        prev_checksum: int,
    ) -> None:
        generation = header.generation
        if header.previous_generation_created_time != prev_header.created_time:
            raise InvalidLogSequence(
                f"'{entry.path}' (generation {generation}) does not follow generation "
                f"{generation - 1}: it records the previous file's creation time as "
                f"{header.previous_generation_created_time}, the file present has "
                f"{prev_header.created_time}",
                hint="a log file from another run or another restore is mixed in; "
                "remove the foreign files or restore from backup",
                path=entry.path,
            )
        if header.previous_generation_end != prev_end:
            raise LogFileCorrupt(
                f"generation {generation - 1} ends at offset {prev_end} but generation "
                f"{generation} records its end as {header.previous_generation_end}",
                path=entry.path,
            )
        if header.previous_generation_checksum != prev_checksum:
            raise LogSequenceChecksumMismatch(
                f"the frames of generation {generation - 1} do not match the checksum "
                f"recorded in '{entry.path}' (generation {generation})",
                hint="a log file was altered or replaced; restore from backup",
                path=entry.path,
            )


def _has_nonzero(data: bytes, offset: int) -> bool:
    return data.count(0, offset) != len(data) - offset


def scan_to_end(
    fs: FileSystem,
    inventory: LogInventory,
    start: LogPosition,
    *,
    owner: str,
    signature: Signature | None = None,
) -> tuple[list[LogRecordEntry], ScanResult]:
    """Convenience: every record from `start` in a list, and the scan result."""
    scanner = LogScanner(fs, inventory, owner=owner, signature=signature)
    records = list(scanner.records(start))
    return records, scanner.result
