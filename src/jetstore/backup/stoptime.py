"""Where a restore's time stop falls in its logs: the commit times the plan needs, read-only.

This module owns reading the commit records of the log files a restore will copy (the backup
sets' files, decompressed and checked against their manifests, and surviving log files as
they are), before anything is written, for two questions of
`jetstore.backup.restore.plan_restore` about `--until-time T`:

- `images_commit_bound`: the latest commit time the full set's images can hold. They hold
  every commit whose record starts before their checkpoint position and none after (a
  copy-on-write image is its pinned header's tree), so a state at T is theirs exactly when
  no commit before that position is later than T.
- `first_commit_after`: the first complete commit later than T. Replay to T stops there,
  before anything after it is read: a gap or an unreadable file after it is never reached.

Invariants:
- Read-only; at most two log files in memory at a time (one, and the next for its header).
- Frames are read as `jetstore.log.reader.LogScanner` reads them: from the header's data
  start, up to where the next generation's header says this one ends (or, without a next
  generation, up to the first frame that does not decode); records are reassembled across
  generations, a record cut off at the end of a generation is dropped when the next one
  starts with a new record, and only complete COMMIT records count (and CREATE_DATABASE
  records, at their signature time: a database made after a stop time did not exist then).
  Damaged frames are not reported here: reading stops at them, as replay does (which then
  reports them, and the restore fails and leaves nothing), so a commit found here is one
  replay reaches first. A header that does not decode raises its `JetError` (the sets'
  files are checked against their manifests while read; unreadable surviving files are
  never given).
- Commit times are stamped under the commit lock right before the record is appended, so
  they do not decrease in log order, unless the wall clock stepped back (then, as for replay
  itself, a time stop means "up to the first commit stamped later than T"). The last commit
  before a position is therefore the latest one before it.
- A generation's `created_time` is taken when the log rolls to it on disk, after every record
  of the generations before it was appended: no commit in an earlier generation is later.

`link_problem` answers a third question: whether one file continues the one before it as
replay will check it (`LogScanner._check_link`: the creation time, end and frame checksum the
later header records for the earlier generation), where the two come from different places.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from jetstore.format.logframe import (
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    accumulate,
    decode_frame,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, LogFileHeader, decode_log_header
from jetstore.format.logrecords import (
    RECORD_COMMIT,
    RECORD_CREATE_DATABASE,
    CreateDatabaseRecord,
    commit_time_us,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition

__all__ = [
    "CommitSeen",
    "ImagesBound",
    "LogSource",
    "commits",
    "first_commit_after",
    "images_commit_bound",
    "link_problem",
]


@dataclass(frozen=True)
class LogSource:
    """One log generation a restore copies: its number, how to read it, its name."""

    generation: int
    read: Callable[[], bytes]
    name: str


@dataclass(frozen=True)
class CommitSeen:
    """A complete COMMIT record: where it starts and ends, and its commit time."""

    start: LogPosition
    end: LogPosition
    time_us: int


@dataclass(frozen=True)
class ImagesBound:
    """The latest commit time the images can hold (`time_us`), and what says so: the last
    commit before their checkpoint (`commit`), or, when none lies in the logs given, the
    creation time of the generation their checkpoint is in (`commit` None)."""

    time_us: int
    checkpoint: LogPosition
    commit: CommitSeen | None


def commits(sources: Sequence[LogSource]) -> Iterator[CommitSeen]:
    """The complete COMMIT records of `sources` (ascending, contiguous generations), in log
    order (see the module docstring for how frames are read)."""
    partial: list[bytes] | None = None
    partial_start = LogPosition.MIN
    next_data: tuple[bytes, LogFileHeader] | None = None
    for index, source in enumerate(sources):
        if next_data is not None:
            data, header = next_data
        else:
            data = source.read()
            header = decode_log_header(data[:LOG_HEADER_SIZE], path=source.name)
        next_data = None
        limit = min(len(data), header.log_file_size)
        if index + 1 < len(sources):
            successor = sources[index + 1]
            following = successor.read()
            following_header = decode_log_header(following[:LOG_HEADER_SIZE], path=successor.name)
            next_data = (following, following_header)
            limit = min(limit, following_header.previous_generation_end)
        generation = source.generation
        offset = header.data_start
        while offset < limit:
            frame = decode_frame(data, offset, generation)
            if frame is None or frame.next_offset > limit:
                break
            position = LogPosition(generation, offset)
            end = LogPosition(generation, frame.next_offset)
            kind = frame.kind
            if kind in (KIND_FULL, KIND_FIRST):
                partial = None  # one cut off by a crash (or damage replay will report)
                if kind == KIND_FULL:
                    seen = _commit(position, end, frame.payload)
                    if seen is not None:
                        yield seen
                else:
                    partial, partial_start = [frame.payload], position
            elif partial is not None and kind == KIND_MIDDLE:
                partial.append(frame.payload)
            elif partial is not None and kind == KIND_LAST:
                partial.append(frame.payload)
                seen = _commit(partial_start, end, b"".join(partial))
                partial = None
                if seen is not None:
                    yield seen
            # A continuation without its beginning: a record that began before the first
            # source, or damage replay will report; either way not one replay completes.
            offset = frame.next_offset
        if next_data is not None and offset != limit:
            return  # a closed generation whose frames stop short: replay refuses here


def _commit(start: LogPosition, end: LogPosition, payload: bytes) -> CommitSeen | None:
    if not payload:
        return None
    kind = record_type(payload)
    if kind == RECORD_CREATE_DATABASE:
        # A database's creation counts as a commit at its signature time (stamped under the
        # commit lock right before it is appended): replay stops at one later than the stop
        # time (`RestoreRequest.stops_before`), and images holding one cannot be taken back
        # before it. Left out, a stop time between it and the last commit before it gave a
        # database the instance did not have then.
        record = decode_record(payload, start)
        assert isinstance(record, CreateDatabaseRecord)
        return CommitSeen(start, end, record.signature_time_us)
    if kind != RECORD_COMMIT:
        return None
    return CommitSeen(start, end, commit_time_us(payload, start))


def images_commit_bound(sources: Sequence[LogSource], checkpoint: LogPosition) -> ImagesBound:
    """The latest commit time images checkpointed at `checkpoint` can hold.

    `sources` start at the generation of the earliest image checkpoint (a full set's
    `generation_low`). The bound is the time of the last commit that starts before
    `checkpoint`, or, when none lies in `sources` before it, the creation time of the first
    source: every commit of an earlier generation is no later than that.
    """
    wanted = [s for s in sources if s.generation <= checkpoint.generation]
    if not wanted:
        raise ValueError(f"no log generation up to the images' checkpoint at {checkpoint}")
    last: CommitSeen | None = None
    for seen in commits(wanted):
        if seen.start >= checkpoint:
            break
        last = seen
    if last is not None:
        return ImagesBound(last.time_us, checkpoint, last)
    first = wanted[0]
    header = decode_log_header(first.read()[:LOG_HEADER_SIZE], path=first.name)
    return ImagesBound(header.created_time, checkpoint, None)


def first_commit_after(
    sources: Sequence[LogSource], time_us: int
) -> tuple[CommitSeen | None, CommitSeen | None]:
    """The first complete commit of `sources` later than `time_us` (None: there is none),
    and the last commit before it (or, when there is none after, the last of all)."""
    last: CommitSeen | None = None
    for seen in commits(sources):
        if seen.time_us > time_us:
            return seen, last
        last = seen
    return None, last


def link_problem(previous: LogSource, following: LogSource) -> str | None:
    """Why `following` (generation n + 1) does not continue `previous` (generation n) as
    replay reads them, or None when it does. Two histories of one stream (a copy of the
    instance directory that ran on by itself) share the signature and the generation numbers;
    only these links tell them apart."""
    data = previous.read()
    header = decode_log_header(data[:LOG_HEADER_SIZE], path=previous.name)
    successor = decode_log_header(following.read()[:LOG_HEADER_SIZE], path=following.name)
    generation = previous.generation
    if successor.previous_generation_created_time != header.created_time:
        return (
            f"it records generation {generation} as created at "
            f"{successor.previous_generation_created_time}, {previous.name} was created at "
            f"{header.created_time}"
        )
    recorded_end = successor.previous_generation_end
    limit = min(len(data), header.log_file_size, recorded_end)
    offset = header.data_start
    checksum = 0
    while offset < limit:
        frame = decode_frame(data, offset, generation)
        if frame is None or frame.next_offset > limit:
            break
        checksum = accumulate(checksum, frame.crc)
        offset = frame.next_offset
    if offset != recorded_end:
        return (
            f"it records that generation {generation} holds records up to offset "
            f"{recorded_end}, {previous.name} holds them up to offset {offset}"
        )
    if checksum != successor.previous_generation_checksum:
        return (
            f"it records another checksum for the records of generation {generation} than "
            f"those of {previous.name}"
        )
    return None
