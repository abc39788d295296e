"""Checksum verification of jetstore files (esentutl /k): every page, every log block, both
checkpoint copies, each bad one reported with where it is.

This module owns `checksum_path` and its result types (`ChecksumReport`, `FileCheck`,
`ChecksumProblem`). PATH is a database file, a log file, a checkpoint file, an instance
directory (every such file in it) or a backup set (delegated to `jetstore.verify_backup`).

Invariants:
- Read-only: every file is opened read-only; nothing is written, renamed or deleted, and the
  instance lock is only probed.
- Damage is a finding, never an exception. Only a PATH that cannot be used raises
  (`FileNotFound`, `InvalidPath`, `FileInvalidType` for a file that is no jetstore file).
- Codecs are `jetstore.format`'s (`decode_db_header`, `verify_page`, `decode_checkpoint_copy`,
  `decode_log_header`, `decode_frame`) and log files go through `verify_logs` (the whole
  chain: frames, torn tail vs damage, links between generations; the stream's signature is
  the lowest generation's, as recovery takes it); nothing re-implements them.
- Checksums only: the records inside log frames whose checksums hold are not reassembled or
  decoded (`verify_logs(records=False)`); a record recovery would refuse there is `jetstore
  logs verify`'s finding, not a bad block.
- Log damage is judged as `jetstore logs verify` judges it, by the same function
  (`jetstore.instance.diagnosis.verify_logs_as_recovery_needs`): a bad block in a generation
  recovery no longer reads is a "warning" (the report stays ok; the file's status stays
  "damaged"/"unreadable", with `needed` false), a bad block recovery would read an "error".
- Classification of database pages: pages 0 and 1 are the header copies; every other page
  is verified with its page number (`verify_page`, so a misplaced page is caught); then the
  references of the durable header are followed (root, branches, free-list chain: D12) and a
  page that verifies but is not the image its referrer was written with is a lost write
  (`ReadLostFlushVerifyFailure`), and an all-zero page the tree or the chain needs is
  `PageNotInitialized`. That walk needs a still file: it is skipped, with a note, for a
  database whose instance is open; otherwise an
  all-zero page is *unused*, not damage; a page at or past the header's `page_count` is
  *beyond the end* (no durable header reaches it: a crash after a checkpoint wrote pages but
  before its header did leaves such pages) and is never counted as damage; pages the header
  counts but the file does not hold are damage (the file was cut short).
- Severity "error" is a bad page or block (the report is not ok); "warning" is something
  recovery repairs or tolerates (an older header or checkpoint copy, a torn log tail with
  valid frames past it, a missing log generation: no block of it is bad, `jetstore diagnose`
  says what it means for recovery; a bad block in a log generation recovery no longer reads);
  "info" is normal (a torn tail, pages beyond the end).
- Memory: a database is read `CHUNK_BYTES` at a time; one log file is held at a time; the
  reference walk keeps what `jetstore.pages.references` says (about 5 bytes a page).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from jetstore.backup.backupset import MANIFEST_NAME
from jetstore.backup.verify import verify_backup
from jetstore.errors import (
    BadLogVersion,
    CheckpointCorrupt,
    DatabaseCorrupted,
    FileInvalidType,
    FileNotFound,
    InvalidDatabaseVersion,
    JetError,
    LogFileCorrupt,
    PageNotInitialized,
)
from jetstore.format.checkpoint import (
    CHECKPOINT_COPIES,
    CHECKPOINT_COPY_SIZE,
    CHECKPOINT_FILE_SIZE,
    CheckpointState,
    decode_checkpoint_copy,
)
from jetstore.format.common import PAGE_SIZES, FileType, identify_file
from jetstore.format.dbheader import (
    PEEK_SIZE,
    DatabaseHeader,
    decode_db_header,
    peek_page_size,
)
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATABASE_SUFFIX,
    EVENT_LOG,
    EVENT_LOG_PREVIOUS,
    LOCK_FILE,
    parse_generation_log_name,
)
from jetstore.format.logframe import decode_frame, find_next_valid_frame
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.page import PageType, verify_page
from jetstore.instance.diagnosis import verify_logs_as_recovery_needs
from jetstore.io.files import FileSystem
from jetstore.io.handles import use_owner
from jetstore.io.locking import is_locked, lock_holder_role, read_lock_holder
from jetstore.log.verify import LogProblem
from jetstore.pages.references import PageReferences
from jetstore.tools.compact import COMPACTING_SUFFIX, PRECOMPACT_SUFFIX

__all__ = [
    "CHUNK_BYTES",
    "ChecksumProblem",
    "ChecksumReport",
    "FileCheck",
    "ProgressCallback",
    "Severity",
    "checksum_path",
]

Severity = Literal["error", "warning", "info"]
#: Called as (description, units done, units in total) while a file is read.
ProgressCallback = Callable[[str, int, int], None]

#: Bytes of a database file read at a time.
CHUNK_BYTES: Final = 1 << 20
#: `verify_logs` checks whose errors are about files, not the bytes in them.
_NOT_BLOCK_DAMAGE: Final = frozenset({"missing", "directory"})
#: Header copies of a database file (pages 0 and 1).
_HEADER_PAGES: Final = 2


@dataclass(frozen=True, slots=True)
class ChecksumProblem:
    """One bad (or noteworthy) page or block, with where it is and ESE's error for it."""

    severity: Severity
    file: str
    kind: str  # "database", "log", "checkpoint", "backup"
    location: str  # "page 17", "header copy 1 (page 1)", "generation 2 offset 0x1040", ...
    error: str | None  # ESE error name without JET_err ("ReadVerifyFailure")
    code: int | None
    message: str
    page: int | None = None
    copy: int | None = None
    generation: int | None = None
    offset: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "file": self.file,
            "kind": self.kind,
            "location": self.location,
            "error": self.error,
            "ese_name": None if self.error is None else f"JET_err{self.error}",
            "code": self.code,
            "message": self.message,
            "page": self.page,
            "copy": self.copy,
            "generation": self.generation,
            "offset": self.offset,
        }


@dataclass
class FileCheck:
    """What was checked in one file and what was found."""

    path: str
    kind: str  # "database", "log", "checkpoint", "backup"
    status: str = "ok"  # "ok", "damaged", "unreadable"
    size: int = 0
    #: database: page_size, page_count (header), pages (in the file), verified, unused,
    #: beyond_end, bad, header_copies_ok, and per type (branch, leaf, free_list);
    #: log: generation, frames, records, end_offset, log_status; checkpoint: copies_ok.
    counts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "file": os.path.basename(self.path),
            "kind": self.kind,
            "status": self.status,
            "size": self.size,
            **self.counts,
        }


@dataclass
class ChecksumReport:
    """The result of `checksum_path`: `ok` when no page or block is bad."""

    path: str
    kind: str  # "database", "log", "checkpoint", "instance", "backup"
    files: list[FileCheck] = field(default_factory=list)
    problems: list[ChecksumProblem] = field(default_factory=list)
    not_checked: list[dict[str, str]] = field(default_factory=list)
    open_by_pid: int | None = None
    open_elsewhere: bool = False
    #: What holds the directory lock, in its lock file's words (`HOLDER_INSTANCE`, "an
    #: offline tool (compact)", ...); None when nobody does or the file gives no words.
    held_by: str | None = None

    @property
    def bad(self) -> list[ChecksumProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "ok": self.ok,
            "bad": len(self.bad),
            "open_elsewhere": self.open_elsewhere,
            "open_by_pid": self.open_by_pid,
            "held_by": self.held_by,
            "files": [f.as_dict() for f in self.files],
            "problems": [p.as_dict() for p in self.problems],
            "not_checked": self.not_checked,
        }


# --------------------------------------------------------------------------- entry point


#: What `_page` returns for an all-zero page.
_UNUSED: Final = "unused"


def checksum_path(
    path: str | os.PathLike[str],
    *,
    fs: FileSystem | None = None,
    owner: str = "checksum",
    progress: ProgressCallback | None = None,
) -> ChecksumReport:
    """Verify every page and block of PATH (a file, an instance directory or a backup set)."""
    fs = fs if fs is not None else FileSystem()
    target = os.path.abspath(os.fspath(path))
    if not fs.exists(target):
        raise FileNotFound(
            f"'{target}' does not exist",
            hint="give the path of a database, log or checkpoint file, an instance directory "
            "or a backup set",
            path=target,
        )
    owner = use_owner(owner)
    try:
        if fs.is_directory(target):
            if fs.exists(os.path.join(target, MANIFEST_NAME)):
                return _backup(fs, target)
            return _instance(fs, target, owner, progress)
        kind = _file_kind(fs, target, owner)
        if kind == "backup":
            return _backup(fs, os.path.dirname(target))
        report = ChecksumReport(target, kind)
        directory = os.path.dirname(target)
        if kind == "database" and is_locked(fs, directory):
            _held(fs, report, directory)
        _check_file(fs, report, target, kind, owner, progress)
        return report
    finally:
        fs.registry.close_owner(owner)


def _file_kind(fs: FileSystem, path: str, owner: str) -> str:
    """What a file is: its block prefix says; when the prefix is damaged, its name."""
    data = fs.read_file(path, owner=owner, limit=64)
    found = identify_file(data)
    if found is FileType.DATABASE:
        return "database"
    if found is FileType.LOG:
        return "log"
    if found is FileType.CHECKPOINT:
        return "checkpoint"
    if found is FileType.BACKUP_MANIFEST or os.path.basename(path) == MANIFEST_NAME:
        return "backup"
    name = os.path.basename(path)
    if name.endswith(DATABASE_SUFFIX):
        return "database"
    if name.endswith(".log"):
        return "log"
    if name.endswith(".chk"):
        return "checkpoint"
    raise FileInvalidType(
        f"'{path}' is not a jetstore database, log or checkpoint file (its first block names "
        "no jetstore file type, and its name does not say either)",
        hint="give a *.edb, *.log or edb.chk file, an instance directory or a backup set",
        path=path,
    )


def _check_file(
    fs: FileSystem,
    report: ChecksumReport,
    path: str,
    kind: str,
    owner: str,
    progress: ProgressCallback | None,
) -> None:
    if kind == "database":
        report.files.append(_database(fs, report, path, owner, progress))
    elif kind == "checkpoint":
        report.files.append(_checkpoint(fs, report, path, owner))
    else:
        _logs(fs, report, os.path.dirname(path), owner, only=os.path.basename(path))


# --------------------------------------------------------------------------- directories


def _instance(
    fs: FileSystem, directory: str, owner: str, progress: ProgressCallback | None
) -> ChecksumReport:
    report = ChecksumReport(directory, "instance")
    if is_locked(fs, directory):
        _held(fs, report, directory)
    names = sorted(fs.listdir(directory))
    for name in names:
        path = os.path.join(directory, name)
        if fs.is_directory(path):
            report.not_checked.append({"file": name, "reason": "a directory"})
        elif name.endswith(DATABASE_SUFFIX):
            report.files.append(_database(fs, report, path, owner, progress))
        elif name == CHECKPOINT_FILE:
            report.files.append(_checkpoint(fs, report, path, owner))
        elif name == CURRENT_LOG or parse_generation_log_name(name) is not None:
            continue  # all logs at once below: the chain links generations
        else:
            report.not_checked.append({"file": name, "reason": _why_not_checked(name)})
    if any(name == CURRENT_LOG or parse_generation_log_name(name) for name in names):
        _logs(fs, report, directory, owner, only=None)
    return report


def _held(fs: FileSystem, report: ChecksumReport, directory: str) -> None:
    """Someone holds the directory lock: its files may change while they are read."""
    report.open_elsewhere = True
    report.open_by_pid = read_lock_holder(fs, directory)
    report.held_by = lock_holder_role(fs, directory)


def _why_not_checked(name: str) -> str:
    # The files the engine and its tools leave next to the instance's own are named for what
    # they are: "not a database, log or checkpoint file" called a database a compact kept (or
    # a repair set aside) foreign, and sent the operator to find out where it came from.
    if name.endswith(".log") or name.endswith(".jrs"):
        return "prepared ahead of use (not part of the log yet)"
    if name.endswith(".creating"):
        return "a database creation cut short (recovery deletes it)"
    stem, dot, suffix = name.rpartition(".")
    if dot and stem.endswith(DATABASE_SUFFIX):
        if f".{suffix}" == PRECOMPACT_SUFFIX:
            return (
                f"the original of {stem} that `jetstore compact --keep-original` kept: not "
                f"part of the instance; `jetstore checksum {name}` checks it, delete it "
                "once the compacted database is trusted"
            )
        if f".{suffix}" == COMPACTING_SUFFIX:
            return (
                f"a compact of {stem} that is running or was cut short: not part of the "
                "instance; the next `jetstore compact` removes it"
            )
        if suffix.startswith("damaged-"):
            return (
                f"the damaged original of {stem} that `jetstore repair` replaced and kept: "
                "not part of the instance"
            )
    if name in (EVENT_LOG, EVENT_LOG_PREVIOUS):
        return "the instance's event log, read by `jetstore events`"
    if name == LOCK_FILE:
        return "the instance directory's lock file"
    return "not a database, log or checkpoint file"


def _backup(fs: FileSystem, directory: str) -> ChecksumReport:
    """A backup set: `verify_backup` checks it against its manifest (pages, frames, CRCs)."""
    report = ChecksumReport(directory, "backup")
    verification = verify_backup(directory, fs=fs)
    for file in verification.files:
        report.files.append(
            FileCheck(
                os.path.join(directory, file.stored_name),
                file.kind,
                status=file.status,
                size=file.size,
                counts={"pages": file.pages, "frames": file.frames, "end_offset": file.end_offset},
            )
        )
    for problem in verification.problems:
        where = []
        if problem.page is not None:
            where.append(f"page {problem.page}")
        if problem.offset is not None:
            where.append(f"offset 0x{problem.offset:X}")
        report.problems.append(
            ChecksumProblem(
                "error",
                problem.file or MANIFEST_NAME,
                "backup",
                ", ".join(where) or "the file",
                problem.error,
                problem.code,
                problem.message,
                page=problem.page,
                offset=problem.offset,
            )
        )
    return report


# --------------------------------------------------------------------------- database


def _problem(
    report: ChecksumReport,
    severity: Severity,
    path: str,
    kind: str,
    location: str,
    error: JetError | type[JetError] | None,
    message: str,
    **where: int | None,
) -> None:
    report.problems.append(
        ChecksumProblem(
            severity,
            path,
            kind,
            location,
            None if error is None else error.name,
            None if error is None else error.code,
            message,
            **where,
        )
    )


def _database(
    fs: FileSystem,
    report: ChecksumReport,
    path: str,
    owner: str,
    progress: ProgressCallback | None,
) -> FileCheck:
    check = FileCheck(path, "database")
    counts: dict[str, Any] = {
        "page_size": None,
        "page_count": None,
        "pages": 0,
        "verified": 0,
        "unused": 0,
        "beyond_end": 0,
        "bad": 0,
        "header_copies_ok": 0,
        "branch": 0,
        "leaf": 0,
        "free_list": 0,
        "lost_writes": 0,
        "referenced_blank": 0,
    }
    check.counts = counts
    try:
        file = fs.open(path, owner=owner, writable=False)
    except JetError as exc:
        check.status = "unreadable"
        _problem(report, "error", path, "database", "the file", exc, exc.detail or str(exc))
        return check
    with file:
        size = check.size = file.size()
        page_size = peek_page_size(file.pread(PEEK_SIZE, 0))
        if page_size is None:
            for candidate in sorted(PAGE_SIZES):
                if peek_page_size(file.pread(PEEK_SIZE, candidate)) == candidate:
                    page_size = candidate
                    break
        if page_size is None:
            check.status = "unreadable"
            _problem(
                report,
                "error",
                path,
                "database",
                "header copies (pages 0 and 1)",
                DatabaseCorrupted,
                "neither header copy says the page size: the file cannot be read as pages",
            )
            return check
        counts["page_size"] = page_size
        headers = _header_copies(report, path, file.pread(2 * page_size, 0), page_size)
        counts["header_copies_ok"] = sum(h is not None for h in headers)
        valid = [h for h in headers if h is not None]
        chosen = max(valid, key=lambda h: h.header_seq) if valid else None
        page_count = chosen.page_count if chosen is not None else None
        counts["page_count"] = page_count
        pages_in_file = size // page_size
        counts["pages"] = pages_in_file
        if size % page_size:
            _problem(
                report,
                "warning",
                path,
                "database",
                f"bytes {pages_in_file * page_size}-{size - 1}",
                None,
                f"the file ends with a partial page of {size % page_size} bytes",
            )
        if page_count is not None and pages_in_file < page_count:
            _problem(
                report,
                "error",
                path,
                "database",
                f"pages {pages_in_file}-{page_count - 1}",
                DatabaseCorrupted,
                f"the header counts {page_count} pages but the file holds {pages_in_file}: "
                "it was cut short",
                page=pages_in_file,
            )
            counts["bad"] += page_count - pages_in_file
        per_chunk = max(1, CHUNK_BYTES // page_size)
        description = f"pages of {os.path.basename(path)}"
        pages = PageReferences(pages_in_file)
        pgno = _HEADER_PAGES
        while pgno < pages_in_file:
            count = min(per_chunk, pages_in_file - pgno)
            chunk = file.pread(count * page_size, pgno * page_size)
            for index in range(count):
                page = chunk[index * page_size : (index + 1) * page_size]
                found = _page(report, path, pgno + index, page, page_size, page_count, counts)
                if isinstance(found, tuple):
                    pages.add(pgno + index, page, *found)
                elif found == _UNUSED:
                    pages.blank(pgno + index)
            pgno += count
            if progress is not None:
                progress(description, pgno, pages_in_file)
    if chosen is not None:
        if report.open_elsewhere:
            _problem(
                report,
                "info",
                path,
                "database",
                "page references",
                None,
                f"{report.held_by or 'an open instance'} holds the directory, so pages may "
                "be rewritten while they are read: the check that every page is the image its "
                "parent names (lost writes) was skipped; run it again once that has ended "
                "(or check a backup)",
            )
        else:
            _references(report, path, chosen, pages, counts)
    if counts["bad"] or counts["header_copies_ok"] == 0:
        check.status = _unusable_status(report, path, InvalidDatabaseVersion)
    return check


def _unusable_status(report: ChecksumReport, path: str, version_error: type[JetError]) -> str:
    """ "unreadable" when every error of `path` is `version_error` (another engine's intact
    blocks: not damage, as every reader of them says), else "damaged"."""
    errors = {p.error for p in report.problems if p.file == path and p.severity == "error"}
    return "unreadable" if errors == {version_error.name} else "damaged"


def _header_copies(
    report: ChecksumReport, path: str, data: bytes, page_size: int
) -> list[DatabaseHeader | None]:
    headers: list[DatabaseHeader | None] = []
    for copy in range(_HEADER_PAGES):
        block = data[copy * page_size : (copy + 1) * page_size]
        try:
            headers.append(decode_db_header(block, path=path, copy=copy))
        except JetError as exc:
            headers.append(None)
            _problem(
                report,
                "error",
                path,
                "database",
                f"header copy {copy} (page {copy})",
                exc,
                exc.detail or str(exc),
                page=copy,
                copy=copy,
            )
    h0, h1 = headers
    if h0 is not None and h1 is not None and h0 != h1:
        older = 0 if h0.header_seq < h1.header_seq else 1
        if h0.header_seq == h1.header_seq:
            older = 1
            message = "both header copies have the same header_seq but differ"
        else:
            message = (
                f"header copy {older} is older (header_seq {min(h0.header_seq, h1.header_seq)}) "
                f"than copy {1 - older}: an update was interrupted; opening rewrites it"
            )
        _problem(
            report,
            "warning",
            path,
            "database",
            f"header copy {older} (page {older})",
            None,
            message,
            page=older,
            copy=older,
        )
    return headers


def _page(
    report: ChecksumReport,
    path: str,
    pgno: int,
    page: bytes,
    page_size: int,
    page_count: int | None,
    counts: dict[str, Any],
) -> tuple[PageType, int] | str | None:
    """Verify one page: its (type, entry count) when it verifies, `_UNUSED` when it is all
    zeros, None when it is damaged."""
    beyond = page_count is not None and pgno >= page_count
    if beyond:
        counts["beyond_end"] += 1
    try:
        _data, page_type, entries, _seq, _length = verify_page(
            pgno, page, path=path, page_size=page_size
        )
    except PageNotInitialized:
        counts["unused"] += 1
        return _UNUSED
    except JetError as exc:
        if beyond:
            _problem(
                report,
                "info",
                path,
                "database",
                f"page {pgno} (beyond the end)",
                exc,
                f"page {pgno} lies beyond the header's page count ({page_count}) and does not "
                f"verify ({exc.detail or exc}); no header reaches it, so it is not damage",
                page=pgno,
            )
            return None
        counts["bad"] += 1
        _bad_page(report, path, pgno, page_size, exc, exc.detail or str(exc))
        return None
    counts["verified"] += 1
    if page_type is PageType.BRANCH:
        counts["branch"] += 1
    elif page_type is PageType.LEAF:
        counts["leaf"] += 1
    elif page_type is PageType.FREE_LIST:
        counts["free_list"] += 1
    return page_type, entries


def _bad_page(
    report: ChecksumReport,
    path: str,
    pgno: int,
    page_size: int,
    error: JetError | type[JetError],
    message: str,
) -> None:
    """A damaged database page: an error located by page number and byte offset."""
    _problem(
        report,
        "error",
        path,
        "database",
        f"page {pgno}",
        error,
        message,
        page=pgno,
        offset=pgno * page_size,
    )


def _references(
    report: ChecksumReport,
    path: str,
    header: DatabaseHeader,
    pages: PageReferences,
    counts: dict[str, Any],
) -> None:
    """Report every page the durable header's references reach that is not the image they
    name (D12): a lost write, or a blank page where the tree needs one."""
    for problem in pages.problems(header):
        if problem.found_crc is None:
            counts["referenced_blank"] += 1
        else:
            counts["lost_writes"] += 1
        counts["bad"] += 1
        _bad_page(report, path, problem.pgno, header.page_size, problem.error, problem.describe())


# --------------------------------------------------------------------------- checkpoint


def _checkpoint(fs: FileSystem, report: ChecksumReport, path: str, owner: str) -> FileCheck:
    check = FileCheck(path, "checkpoint", counts={"copies_ok": 0, "copies": []})
    try:
        data = fs.read_file(path, owner=owner, limit=CHECKPOINT_FILE_SIZE + 1)
    except JetError as exc:
        check.status = "unreadable"
        _problem(report, "error", path, "checkpoint", "the file", exc, exc.detail or str(exc))
        return check
    check.size = len(data)
    states: list[CheckpointState | None] = []
    for copy in range(CHECKPOINT_COPIES):
        start = copy * CHECKPOINT_COPY_SIZE
        block = data[start : start + CHECKPOINT_COPY_SIZE]
        location = f"copy {copy} (offset {start})"
        try:
            if len(block) < CHECKPOINT_COPY_SIZE:
                raise CheckpointCorrupt(
                    f"checkpoint copy {copy} is {'missing' if not block else 'incomplete'}: "
                    f"the file is {len(data)} bytes, {CHECKPOINT_FILE_SIZE} expected",
                    path=path,
                )
            state = decode_checkpoint_copy(block, path=path, copy=copy)
        except JetError as exc:
            states.append(None)
            check.counts["copies"].append({"copy": copy, "valid": False, "error": exc.name})
            _problem(
                report,
                "error",
                path,
                "checkpoint",
                location,
                exc,
                exc.detail or str(exc),
                copy=copy,
                offset=start,
            )
            continue
        states.append(state)
        check.counts["copies"].append({"copy": copy, "valid": True, "seq": state.seq})
    check.counts["copies_ok"] = sum(s is not None for s in states)
    s0, s1 = states
    if s0 is not None and s1 is not None and s0 != s1:
        older = 0 if s0.seq < s1.seq else 1
        _problem(
            report,
            "warning",
            path,
            "checkpoint",
            f"copy {older} (offset {older * CHECKPOINT_COPY_SIZE})",
            None,
            f"checkpoint copy {older} differs from copy {1 - older} (seq {s0.seq} and "
            f"{s1.seq}): the last checkpoint write was interrupted; the next one rewrites it",
            copy=older,
        )
    if len(data) > CHECKPOINT_FILE_SIZE:
        _problem(
            report,
            "warning",
            path,
            "checkpoint",
            f"bytes from {CHECKPOINT_FILE_SIZE}",
            None,
            f"the file is longer than {CHECKPOINT_FILE_SIZE} bytes; the rest is ignored",
        )
    if check.counts["copies_ok"] < CHECKPOINT_COPIES:
        check.status = _unusable_status(report, path, BadLogVersion)
    return check


# --------------------------------------------------------------------------- logs


def _logs(
    fs: FileSystem, report: ChecksumReport, directory: str, owner: str, *, only: str | None
) -> None:
    """Every log of `directory` through `verify_logs` (only the file `only`'s findings when
    given); a log file whose name is no log name is checked on its own (`_lone_log`)."""
    if only is not None and only != CURRENT_LOG and parse_generation_log_name(only) is None:
        report.files.append(_lone_log(fs, report, os.path.join(directory, only), owner))
        return
    # Checksums only (esentutl /k): a record that does not decode inside frames whose
    # checksums hold is no bad block; `logs verify` reports it.
    verification = verify_logs_as_recovery_needs(fs, directory, owner=owner, records=False)
    for generation in verification.generations:
        if only is not None and generation.file_name != only:
            continue
        bad = any(p.severity == "error" for p in generation.problems)
        # Damage recovery no longer reads is only a warning, but the file is still damaged.
        unneeded = generation.needed is False and generation.status in ("damaged", "unreadable")
        report.files.append(
            FileCheck(
                os.path.join(directory, generation.file_name),
                "log",
                status="ok"
                if not (bad or unneeded)
                else ("unreadable" if generation.status == "unreadable" else "damaged"),
                size=generation.size or 0,
                counts={
                    "generation": generation.generation,
                    "frames": generation.frames,
                    "records": generation.records,
                    "end_offset": generation.end_offset,
                    "log_status": generation.status,
                    "needed": generation.needed,
                },
            )
        )
    for problem in verification.problems:
        if only is not None and problem.file_name != only:
            continue
        _log_problem(report, directory, problem)


def _log_problem(report: ChecksumReport, directory: str, problem: LogProblem) -> None:
    where: list[str] = []
    if problem.generation is not None:
        where.append(f"generation {problem.generation}")
    if problem.offset is not None:
        where.append(f"offset 0x{problem.offset:X}")
    position = problem.position
    if position is not None:
        where.append(f"position {position}")
    severity = problem.severity
    message = problem.message
    if problem.check in _NOT_BLOCK_DAMAGE and severity == "error":
        # A missing file is no bad block; recovery's view of it is `jetstore diagnose`'s.
        severity = "warning"
        message = f"{message} (not a checksum failure: `jetstore diagnose` says what it means)"
    report.problems.append(
        ChecksumProblem(
            severity,
            os.path.join(directory, problem.file_name) if problem.file_name else directory,
            "log",
            ", ".join(where) or "the log stream",
            problem.error,
            problem.code,
            message,
            generation=problem.generation,
            offset=problem.offset,
        )
    )


def _lone_log(fs: FileSystem, report: ChecksumReport, path: str, owner: str) -> FileCheck:
    """A log file outside the naming scheme: its header and frames, read as a newest
    generation (no successor says where it ends: a bad frame is its end unless a later frame
    proves those bytes were synced)."""
    check = FileCheck(path, "log")
    try:
        data = fs.read_file(path, owner=owner)
        header = decode_log_header(data[:LOG_HEADER_SIZE], path=path)
    except JetError as exc:
        check.status = "unreadable"
        _problem(report, "error", path, "log", "header (offset 0)", exc, exc.detail or str(exc))
        return check
    check.size = len(data)
    generation = header.generation
    offset = header.data_start
    limit = min(len(data), header.log_file_size)
    frames = 0
    while offset < limit:
        frame = decode_frame(data, offset, generation)
        if frame is None or frame.next_offset > limit:
            break
        frames += 1
        offset = frame.next_offset
    check.counts = {"generation": generation, "frames": frames, "end_offset": offset}
    later = find_next_valid_frame(data, offset, generation) if offset < limit else None
    while later is not None and later.durable_before <= offset:
        later = find_next_valid_frame(data, later.offset, generation)
    if later is not None:
        check.status = "damaged"
        _problem(
            report,
            "error",
            path,
            "log",
            f"generation {generation}, offset 0x{offset:X}",
            LogFileCorrupt,
            f"the frame at offset {offset} is damaged: a later frame (offset {later.offset}) "
            "shows these bytes had been synced",
            generation=generation,
            offset=offset,
        )
    return check
