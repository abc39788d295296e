"""Backup set verification: check everything a backup set's manifest promises, report it all.

This module owns `verify_backup` and its result types (`BackupVerification`, `BackupProblem`,
`FileReport`). What is checked, each failure reported with the file, the byte offset or page
and the error recovery or restore would raise:

- the manifest: present, a jetstore backup manifest, its checksum (`read_manifest`);
- every listed file: present (`FileNotFound`), its stored size, the size and CRC32C of its
  content after decompression (`ReadVerifyFailure`);
- every database image: both header pages decode and agree (`choose_db_header`), the header's
  database signature, log signature, page size and page count match the manifest, the file is
  exactly page_count pages; every page that is not all zeros verifies with its page number
  (`verify_page`: checksum, misplaced page, page type); every page the header's references
  reach is the image they name (`ReadLostFlushVerifyFailure`, or `PageNotInitialized` for an
  all-zero page they reach; design D12); an offline image must be clean;
- every log file: its header decodes, names the generation the manifest says and the set's
  log signature, and its size is the stream's log file size; its frames verify up to where they
  end, their padding is zero and every byte after the last frame is zero (a copy holds zeros
  past the recorded end, so anything else is damage); each generation G+1's header links to G
  (`previous_generation_created_time`, `_end`, `_checksum`, as `jetstore.log.reader` checks);
- the generations are contiguous from `generation_low` to `generation_high` (`MissingLogFile`)
  and, for full and copy backups, cover every image's checkpoint generation; every image has
  its database file and every database file its image.

Invariants:
- Read-only: nothing in the set is written, renamed or deleted.
- Damage is a finding, never an exception: only a backup set directory that does not exist
  (or is not a directory) raises. Every handle is closed before `verify_backup` returns.
- One log file (at most the stream's log file size) and one page are held in memory at a time,
  plus what the reference walk keeps (`jetstore.pages.references`: about 5 bytes a page).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Final

from jetstore.backup.backupset import (
    MANIFEST_NAME,
    Manifest,
    ManifestFile,
    ManifestImage,
    manifest_path,
    read_backup_file,
    read_manifest,
)
from jetstore.backup.session import BackupKind
from jetstore.errors import (
    BadLogSignature,
    DatabaseCorrupted,
    DatabaseDirtyShutdown,
    DatabaseLogSetMismatch,
    FileNotFound,
    InvalidBackup,
    InvalidLogSequence,
    JetError,
    LogFileCorrupt,
    LogFileSizeMismatch,
    LogGenerationMismatch,
    LogSequenceChecksumMismatch,
    MissingLogFile,
)
from jetstore.format.dbheader import HEADER_COPIES, DatabaseHeader, DatabaseState, choose_db_header
from jetstore.format.filenames import generation_log_name
from jetstore.format.logframe import FRAME_HEADER_SIZE, accumulate, decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE, LogFileHeader, decode_log_header
from jetstore.format.page import verify_page
from jetstore.io.files import FileSystem
from jetstore.io.handles import use_owner
from jetstore.pages.references import PageReferences

__all__ = ["BackupProblem", "BackupVerification", "FileReport", "verify_backup"]

#: Problems reported per file before the rest are summed up in one line.
MAX_PROBLEMS_PER_FILE: Final = 20


@dataclass(frozen=True)
class BackupProblem:
    """One thing wrong with a backup set."""

    file: str | None  # the file's name in the set (None: the set as a whole)
    offset: int | None  # byte offset in the file's content
    page: int | None  # page number in a database image
    error: str  # the ESE error name, e.g. "ReadVerifyFailure"
    code: int
    message: str

    @classmethod
    def of(
        cls,
        error: JetError,
        *,
        file: str | None,
        offset: int | None = None,
        page: int | None = None,
    ) -> BackupProblem:
        return cls(file, offset, page, error.name, error.code, error.detail or str(error))

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "offset": self.offset,
            "page": self.page,
            "error": self.error,
            "code": self.code,
            "message": self.message,
        }


@dataclass
class FileReport:
    """What was found in one file of the set."""

    name: str
    stored_name: str
    kind: str
    size: int
    status: str = "ok"  # "ok", "damaged" or "missing"
    pages: int = 0  # database images: pages verified (not all zeros)
    frames: int = 0  # log files: frames verified
    end_offset: int | None = None  # log files: where the frames end

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stored_name": self.stored_name,
            "kind": self.kind,
            "size": self.size,
            "status": self.status,
            "pages": self.pages,
            "frames": self.frames,
            "end_offset": self.end_offset,
        }


@dataclass
class BackupVerification:
    """The result of `verify_backup`: `ok` when no problem was found."""

    path: str
    manifest: Manifest | None = None
    problems: list[BackupProblem] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(
        self,
        error: JetError,
        *,
        file: str | None,
        offset: int | None = None,
        page: int | None = None,
    ) -> None:
        self.problems.append(BackupProblem.of(error, file=file, offset=offset, page=page))

    def as_dict(self) -> dict[str, Any]:
        manifest = self.manifest
        return {
            "path": self.path,
            "ok": self.ok,
            "manifest": None if manifest is None else manifest.to_dict(),
            "kind": None if manifest is None else manifest.kind.value,
            "offline": None if manifest is None else manifest.offline,
            "generations": [] if manifest is None else manifest.generations,
            "files": [f.as_dict() for f in self.files],
            "problems": [p.as_dict() for p in self.problems],
        }


@dataclass
class _LogFacts:
    header: LogFileHeader
    end: int
    checksum: int


def verify_backup(
    path: str | os.PathLike[str], *, fs: FileSystem | None = None
) -> BackupVerification:
    """Check the backup set at `path` (its directory or its manifest) against its manifest.

    Raises only when `path` does not exist or is not a directory (`FileNotFound`,
    `InvalidPath`); everything else is a problem in the result.
    """
    fs = fs if fs is not None else FileSystem()
    directory, _manifest_file = manifest_path(path)
    fs.require_directory(
        directory,
        what="backup set",
        hint="give the directory a backup was written to (`jetstore backup --to DEST`)",
    )
    owner = use_owner(f"verify-backup:{directory}")
    result = BackupVerification(directory)
    try:
        try:
            manifest = read_manifest(directory, fs=fs)
        except JetError as exc:
            result.add(exc, file=MANIFEST_NAME)
            return result
        result.manifest = manifest
        _Verifier(fs, owner, manifest, result).run()
    finally:
        fs.registry.close_owner(owner)
    return result


class _Verifier:
    def __init__(
        self, fs: FileSystem, owner: str, manifest: Manifest, result: BackupVerification
    ) -> None:
        self.fs = fs
        self.owner = owner
        self.manifest = manifest
        self.result = result
        self.logs: dict[int, _LogFacts] = {}
        self.images = {image.name: image for image in manifest.images}

    def problem(
        self,
        error: JetError,
        *,
        file: str | None,
        offset: int | None = None,
        page: int | None = None,
    ) -> None:
        self.result.add(error, file=file, offset=offset, page=page)

    def run(self) -> None:
        manifest = self.manifest
        for entry in manifest.files:
            report = FileReport(entry.name, entry.stored_name, entry.kind, entry.size)
            self.result.files.append(report)
            before = len(self.result.problems)
            self._check_file(entry, report)
            if len(self.result.problems) > before and report.status == "ok":
                report.status = "damaged"
        self._check_structure()

    # ---------------------------------------------------------- one file

    def _check_file(self, entry: ManifestFile, report: FileReport) -> None:
        checker: _ImageChecker | _LogChecker
        if entry.kind == "database":
            checker = _ImageChecker(self, entry, report)
        else:
            checker = _LogChecker(self, entry, report)
        fed = 0
        try:
            for chunk in read_backup_file(self.manifest.path, entry, fs=self.fs, owner=self.owner):
                checker.feed(chunk)
                fed += len(chunk)
        except FileNotFound as exc:
            report.status = "missing"
            self.problem(exc, file=entry.name)
            return
        except JetError as exc:
            self.problem(exc, file=entry.name, offset=fed if fed < entry.size else None)
        if fed:
            checker.finish()

    # ---------------------------------------------------------- the set

    def _check_structure(self) -> None:
        manifest = self.manifest
        name = MANIFEST_NAME
        generations = sorted(manifest.generations)
        if len(set(generations)) != len(generations):
            self.problem(InvalidBackup("the manifest lists a log generation twice"), file=name)
        if manifest.logs == "included":
            low, high = manifest.generation_low, manifest.generation_high
            if not generations or low < 1 or high < low:
                self.problem(
                    MissingLogFile(
                        f"the manifest promises log generations {low}-{high} but lists "
                        f"{len(generations)} log file(s)"
                    ),
                    file=name,
                )
            else:
                # From the gaps between the listed generations, never by walking the range:
                # it is the manifest's word, and a damaged one may claim 2**40 generations.
                for start, end in _missing_runs(generations, low, high):
                    names = generation_log_name(start) + (
                        "" if start == end else f" to {generation_log_name(end)}"
                    )
                    self.problem(
                        MissingLogFile(
                            f"log generation{'s' if start != end else ''} "
                            f"{start}{'' if start == end else f'-{end}'} ({names}) of the "
                            f"range {low}-{high} {'is' if start == end else 'are'} not in "
                            "the backup set"
                        ),
                        file=generation_log_name(start),
                    )
                extra = [g for g in generations if not low <= g <= high]
                if extra:
                    self.problem(
                        InvalidBackup(
                            f"log generation(s) {', '.join(map(str, extra))} lie outside the "
                            f"manifest's range {low}-{high}"
                        ),
                        file=name,
                    )
                self._check_links(generations)
                if manifest.kind in (BackupKind.FULL, BackupKind.COPY):
                    for image in manifest.images:
                        needed = image.checkpoint.generation
                        if not low <= needed <= high:
                            self.problem(
                                MissingLogFile(
                                    f"the image of {image.name!r} replays from log generation "
                                    f"{needed} ({image.checkpoint}), outside the set's "
                                    f"generations {low}-{high}"
                                ),
                                file=f"{image.name}.edb",
                            )
        elif generations:
            self.problem(
                InvalidBackup(
                    f"the manifest says the set holds no log, but lists {len(generations)}"
                ),
                file=name,
            )
        elif not manifest.offline:
            self.problem(
                MissingLogFile("an online backup set must hold log generations"), file=name
            )
        if manifest.kind in (BackupKind.INCREMENTAL, BackupKind.DIFFERENTIAL) and (
            manifest.images or manifest.database_files
        ):
            self.problem(
                InvalidBackup(
                    f"an {manifest.kind.value} backup holds no database image, but this "
                    "manifest lists some"
                ),
                file=name,
            )
        files = {f.database for f in manifest.database_files}
        for image in manifest.images:
            if image.name not in files:
                self.problem(
                    InvalidBackup(f"the manifest lists image {image.name!r} without its file"),
                    file=name,
                )
        for entry in manifest.database_files:
            if entry.database not in self.images:
                self.problem(
                    InvalidBackup(
                        f"{entry.name} has no image entry (signature, page count) in the manifest"
                    ),
                    file=entry.name,
                )

    def _check_links(self, generations: list[int]) -> None:
        for generation in generations:
            previous = self.logs.get(generation - 1)
            current = self.logs.get(generation)
            if previous is None or current is None:
                continue
            header = current.header
            name = generation_log_name(generation)
            if header.previous_generation_created_time != previous.header.created_time:
                self.problem(
                    InvalidLogSequence(
                        f"{name} (generation {generation}) does not follow generation "
                        f"{generation - 1}: it records the previous file's creation time as "
                        f"{header.previous_generation_created_time}, the file in the set has "
                        f"{previous.header.created_time}"
                    ),
                    file=name,
                )
                continue
            if header.previous_generation_end != previous.end:
                self.problem(
                    LogFileCorrupt(
                        f"generation {generation - 1} ends at offset {previous.end} in the set "
                        f"but generation {generation} records its end as "
                        f"{header.previous_generation_end}"
                    ),
                    file=generation_log_name(generation - 1),
                    offset=min(previous.end, header.previous_generation_end),
                )
            elif header.previous_generation_checksum != previous.checksum:
                self.problem(
                    LogSequenceChecksumMismatch(
                        f"the frames of generation {generation - 1} do not match the checksum "
                        f"recorded in {name} (generation {generation})"
                    ),
                    file=generation_log_name(generation - 1),
                )


def _runs(values: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for value in values:
        if runs and runs[-1][1] == value - 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    return runs


def _missing_runs(present: list[int], low: int, high: int) -> list[tuple[int, int]]:
    """The runs of `low`-`high` that the sorted `present` lacks (at most one more than it
    has elements, whatever the range's size)."""
    runs: list[tuple[int, int]] = []
    following = low
    for value in present:
        if value < following or value > high:
            continue
        if value > following:
            runs.append((following, value - 1))
        following = value + 1
    if following <= high:
        runs.append((following, high))
    return runs


class _Capped:
    """Per-file problem reporting, capped at MAX_PROBLEMS_PER_FILE."""

    def __init__(self, verifier: _Verifier, entry: ManifestFile) -> None:
        self.verifier = verifier
        self.entry = entry
        self.count = 0

    def problem(
        self, error: JetError, *, offset: int | None = None, page: int | None = None
    ) -> None:
        self.count += 1
        if self.count <= MAX_PROBLEMS_PER_FILE:
            self.verifier.problem(error, file=self.entry.name, offset=offset, page=page)

    def close(self) -> None:
        hidden = self.count - MAX_PROBLEMS_PER_FILE
        if hidden > 0:
            self.verifier.problem(
                DatabaseCorrupted(f"{hidden} more problem(s) in {self.entry.name} not listed"),
                file=self.entry.name,
            )


class _ImageChecker(_Capped):
    def __init__(self, verifier: _Verifier, entry: ManifestFile, report: FileReport) -> None:
        super().__init__(verifier, entry)
        self.report = report
        self.image: ManifestImage | None = (
            verifier.images.get(entry.database) if entry.database is not None else None
        )
        self.page_size = self.image.page_size if self.image is not None else 0
        if self.page_size <= 0:
            self.page_size = verifier.manifest.page_size
        if self.page_size <= 0:
            # A manifest (checksum right: a foreign or edited writer) that gives no page size:
            # the pages cannot be cut out of the file (it would divide by zero). A finding,
            # and `feed` skips the page checks.
            self.problem(
                InvalidBackup(
                    f"the manifest gives no page size for {entry.name}: its pages cannot be "
                    "checked",
                    hint="the backup set's manifest is damaged; use another set",
                ),
                offset=0,
            )
        self.pending = bytearray()
        self.pgno = 0
        self.header_pages: list[bytes] = []
        self.header: DatabaseHeader | None = None
        self.references: PageReferences | None = None

    def feed(self, chunk: bytes) -> None:
        size = self.page_size
        if size <= 0:
            return  # reported in __init__
        self.pending += chunk
        whole = len(self.pending) - len(self.pending) % size
        if whole == 0:
            return
        data = bytes(self.pending[:whole])
        del self.pending[:whole]
        for start in range(0, whole, size):
            self._page(data[start : start + size])

    def _page(self, page: bytes) -> None:
        pgno = self.pgno
        self.pgno += 1
        name = self.entry.name
        if pgno < HEADER_COPIES:
            self.header_pages.append(page)
            if len(self.header_pages) == HEADER_COPIES:
                self._header()
            return
        if page.count(0) == len(page):
            # A free page of the image (never read, written before it is used), unless a
            # reference reaches it: the walk in `finish` tells.
            if self.references is not None:
                self.references.blank(pgno)
            return
        try:
            _data, page_type, entries, _seq, _length = verify_page(
                pgno, page, path=name, page_size=self.page_size
            )
        except JetError as exc:
            self.problem(exc, offset=pgno * self.page_size, page=pgno)
        else:
            self.report.pages += 1
            if self.references is not None:
                self.references.add(pgno, page, page_type, entries)

    def _header(self) -> None:
        name = self.entry.name
        try:
            header, notes = choose_db_header(*self.header_pages, path=name)
        except JetError as exc:
            self.problem(exc, offset=0, page=0)
            return
        self.header = header
        self.references = PageReferences(header.page_count)
        for note in notes:
            self.problem(DatabaseCorrupted(f"{name}: {note}"), offset=0, page=0)
        image = self.image
        manifest = self.verifier.manifest
        if image is None:
            return
        if header.db_signature != image.signature:
            self.problem(
                DatabaseLogSetMismatch(
                    f"the header of {name} carries database signature {header.db_signature}, "
                    f"the manifest says {image.signature}: the file is another database"
                ),
                offset=0,
                page=0,
            )
        if header.log_signature != image.log_signature or (
            not manifest.offline and header.log_signature != manifest.log_signature
        ):
            self.problem(
                DatabaseLogSetMismatch(
                    f"the header of {name} belongs to log stream {header.log_signature}, the "
                    f"manifest says {image.log_signature}"
                ),
                offset=0,
                page=0,
            )
        if header.page_size != image.page_size or header.page_count != image.page_count:
            self.problem(
                DatabaseCorrupted(
                    f"the header of {name} says {header.page_count} pages of "
                    f"{header.page_size} bytes, the manifest {image.page_count} of "
                    f"{image.page_size}"
                ),
                offset=0,
                page=0,
            )
        if header.checkpoint_position != image.checkpoint:
            self.problem(
                DatabaseCorrupted(
                    f"the header of {name} replays from {header.checkpoint_position}, the "
                    f"manifest says {image.checkpoint}"
                ),
                offset=0,
                page=0,
            )
        if image.clean and header.state is not DatabaseState.CLEAN:
            self.problem(
                DatabaseDirtyShutdown(
                    f"the image {name} of an offline backup is not in clean shutdown state "
                    f"({header.state.name})"
                ),
                offset=0,
                page=0,
            )

    def finish(self) -> None:
        name = self.entry.name
        if self.pending:
            self.problem(
                DatabaseCorrupted(
                    f"{name} ends {len(self.pending)} bytes into page {self.pgno}: not a whole "
                    f"number of {self.page_size}-byte pages"
                ),
                offset=self.pgno * self.page_size,
                page=self.pgno,
            )
        if self.image is not None and self.pgno != self.image.page_count:
            self.problem(
                DatabaseCorrupted(
                    f"{name} holds {self.pgno} pages, the manifest says {self.image.page_count}"
                )
            )
        if self.header is not None and self.references is not None:
            for problem in self.references.problems(self.header):
                self.problem(
                    problem.error(f"{name}: {problem.describe()}", path=name),
                    offset=problem.pgno * self.page_size,
                    page=problem.pgno,
                )
        self.close()


class _LogChecker(_Capped):
    def __init__(self, verifier: _Verifier, entry: ManifestFile, report: FileReport) -> None:
        super().__init__(verifier, entry)
        self.report = report
        self.data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def finish(self) -> None:
        try:
            self._check(bytes(self.data))
        finally:
            self.data = bytearray()
            self.close()

    def _check(self, data: bytes) -> None:
        entry = self.entry
        name = entry.name
        manifest = self.verifier.manifest
        try:
            header = decode_log_header(data[:LOG_HEADER_SIZE], path=name)
        except JetError as exc:
            self.problem(exc, offset=0)
            return
        generation = entry.generation
        if generation is not None and header.generation != generation:
            self.problem(
                LogGenerationMismatch(
                    f"{name} holds generation {header.generation}, the manifest says {generation}"
                ),
                offset=0,
            )
            return
        if header.log_signature != manifest.log_signature:
            self.problem(
                BadLogSignature(
                    f"{name} belongs to log stream {header.log_signature}, the set's stream is "
                    f"{manifest.log_signature}"
                ),
                offset=0,
            )
        if len(data) != header.log_file_size or (
            manifest.log_file_size and header.log_file_size != manifest.log_file_size
        ):
            self.problem(
                LogFileSizeMismatch(
                    f"{name} is {len(data)} bytes, its header says {header.log_file_size} and "
                    f"the manifest {manifest.log_file_size}"
                )
            )
        limit = min(len(data), header.log_file_size)
        offset = header.data_start
        checksum = 0
        frames = 0
        while offset < limit:
            frame = decode_frame(data, offset, header.generation)
            if frame is None or frame.next_offset > limit:
                break
            padding = data[offset + FRAME_HEADER_SIZE + len(frame.payload) : frame.next_offset]
            if padding.count(0) != len(padding):
                self.problem(
                    LogFileCorrupt(
                        f"the padding after the log record at offset {offset} of {name} is not zero"
                    ),
                    offset=offset,
                )
            checksum = accumulate(checksum, frame.crc)
            frames += 1
            offset = frame.next_offset
        self.report.frames = frames
        self.report.end_offset = offset
        if data.count(0, offset, limit) != limit - offset:
            self.problem(
                LogFileCorrupt(
                    f"{name} has data after its last valid frame, at offset {offset}: a log "
                    "record there fails its checksum (a backup copy holds zeros past a "
                    "generation's end)"
                ),
                offset=offset,
            )
        self.verifier.logs[header.generation] = _LogFacts(header, offset, checksum)
