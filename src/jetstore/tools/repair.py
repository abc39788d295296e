"""`repair_database`: salvage what a damaged database file still holds (esentutl /p).

This module owns the last-resort repair. Without `accept_data_loss` it only reports what a
repair would keep and drop (nothing is written, the instance directory is only probed), and
whether the real run would be refused, the file being a backup set's image or by a database
beside this one (`would_refuse`, see **Replace**); with it, the salvaged data replaces the
database.

**Salvage.** Only pages the header's tree reaches are authoritative: copy-on-write leaves
older versions of pages in free pages, and those must not win over the tree. So:

1. The tree is walked from the header's root. A page that fails to verify (CRC32C with its
   page number), is of the wrong kind, is reached twice, holds keys out of order or outside
   the range its parent's separators give it, marks that key range *damaged*; every leaf that
   verifies gives its entries (authoritative).
2. Only if some range is damaged (or both header copies are unusable: then everything is),
   every page of the file is read and the leaves that verify, are not part of the walked
   tree and were written no later than the header's checkpoint become *candidates*. In
   descending checkpoint-sequence order, a candidate gives each of its keys that lies in a
   damaged range and inside no span (first to last key) of a newer candidate; then its own
   span is claimed. The newest copy of a key range decides, so a key deleted later is not
   brought back by an older copy of its page (except from a gap between newer spans).
   A file whose first block is an intact header of another jetstore file (a log, the
   checkpoint file) has lost no header: it is refused (`FileInvalidType`), nothing changed.
3. Logical salvage over the merged entries: the catalog is decoded (a table whose definition
   is lost loses its entries: reported by object id); each record must decode with its
   table's schema, be stored under its own primary key and have every long value complete
   (all chunks, lengths adding up), else it is dropped and reported with its key; unique
   index duplicates (possible when an old copy of a record came back) drop the later record.
   Index entries are rebuilt from the kept records (entries that were lost are not a loss);
   index entries and long-value chunks naming no record show records that were lost, and
   are reported as such.

**Replace** (only with `accept_data_loss`, holding the instance directory lock): every other
database of the directory must be clean (the logs are moved aside, and with them the changes
a dirty one still needs: `DatabaseDirtyShutdown` naming it), and so must be seen to be: one
whose header cannot be read (an EIO, a permission, a volume its link points to is not
mounted) may be dirty, and is refused with its read error naming it. A directory or a FIFO
under a database's name holds no database and is passed over. The salvaged entries are written
densely into `NAME.edb.repairing` (`jetstore.tools.rebuild`) under a new header: a new
database signature (it is not the same database any more), clean, bound to no log stream,
backup history cleared, `repair_count + 1`. It is checked with `check_integrity`; the damaged
file is kept as `NAME.edb.damaged-<time>` (a hard link), the new one renamed over `NAME.edb`
(where a symbolic link `NAME.edb` points, as compaction does), the directory synced. Just
before that swap, the instance's log files and checkpoint file are moved into
`lost-logs-<time>/` (the convention of recovery with data loss) so that nothing can ever be
replayed into the repaired database, and the next open starts a new log stream. In that
order a failure or a kill at any point leaves the damaged file in place (its logs perhaps
moved aside: running the repair again finishes, moving the rest of that log stream into the
same directory, `_interrupted_move`) or the repaired one without the old logs;
never the repaired file next to logs that name the damaged one, which no open accepts.

**A pending data loss.** When a data-loss recovery recorded its loss but did not finish
setting its logs aside (`lost-logs-<time>/data-loss.pending.json`, design D6), the repair
finishes it instead of starting a second set-aside: the logs go into that directory, the
record is renamed `data-loss.json` once the repaired file is in place, and the report
carries the recorded loss (`finished_data_loss`). Left pending, the next open would finish
it again and raise the repaired database's count a second time. The repaired database's
count takes each loss once: the repair, and the recorded loss if the interrupted recovery
had not yet stamped it. When the record names the database, its repair time is the record's
(recovery's own test of "already stamped"): a kill after the swap and before the rename
leaves the record for the next open, which finishes it and reports the loss without
counting it again.

Memory holds every salvaged entry (the whole database): repair is a last resort.
"""

from __future__ import annotations

import contextlib
import os
import time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from jetstore.backup.backupset import refuse_backup_set
from jetstore.errors import (
    BadLogVersion,
    DatabaseCorrupted,
    DatabaseDirtyShutdown,
    FileInvalidType,
    JetError,
    ReadVerifyFailure,
)
from jetstore.format.common import (
    FileType,
    Signature,
    decode_block,
    format_time_us,
    identify_file,
    now_us,
)
from jetstore.format.dbheader import (
    HEADER_COPIES,
    DatabaseHeader,
    DatabaseState,
)
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATA_LOSS_RECORD,
    LOST_LOGS_PREFIX,
    TEMP_LOG,
    parse_database_file_name,
    parse_generation_log_name,
    unused_time_stamp,
)
from jetstore.format.page import PAGE_SIZES, PageType, verify_page
from jetstore.format.positions import LogPosition
from jetstore.instance.recoverydecisions import PendingDataLoss, read_pending_data_loss
from jetstore.io.files import FileSystem
from jetstore.log.reader import set_aside_logs_of, take_inventory
from jetstore.pages.btree import Node, child_ref, decode_node, ref_crc, ref_pgno
from jetstore.tables.catalog import (
    CATALOG_ID,
    FIRST_OBJECT_ID,
    NEXT_OBJECT_ID_KEY,
    encode_next_object_id,
    encode_table_def,
    table_def_entries,
)
from jetstore.tables.records import LongValueRef, RecordCodec
from jetstore.tables.schema import TableDef
from jetstore.tools.dbfile import (
    OWNER,
    OfflineDatabase,
    decode_catalog,
    describe_key,
    exclusive_directory,
    object_id_of,
    object_owners,
    page_checkpoint_seq,
    refuse_if_open,
)
from jetstore.tools.integrity import check_integrity
from jetstore.tools.layout import (
    LongValueReader,
    assemble_long_value,
    index_entries,
    long_value_refs,
    parse_long_value_key,
    primary_key_bytes,
)
from jetstore.tools.rebuild import swap_into_place, write_database_file

__all__ = ["REPAIRING_SUFFIX", "RepairReport", "TableSalvage", "repair_database"]

REPAIRING_SUFFIX: Final = ".repairing"
#: Keys listed per table and kind in a report; more are only counted.
_LIST_LIMIT: Final = 100


@dataclass
class TableSalvage:
    """What repair keeps and drops of one table."""

    records_kept: int = 0
    dropped: list[dict[str, str]] = field(default_factory=list)
    records_dropped: int = 0
    #: Primary keys of records that are gone, known only from their index entries or chunks.
    lost_known: list[str] = field(default_factory=list)
    records_lost_known: int = 0
    records_from_old_pages: int = 0
    index_entries_rebuilt: int = 0
    index_entries_dropped: int = 0

    def drop(self, key: bytes, reason: str) -> None:
        self.records_dropped += 1
        if len(self.dropped) < _LIST_LIMIT:
            self.dropped.append({"key": describe_key(key), "reason": reason})

    def as_dict(self) -> dict[str, Any]:
        return {
            "records_kept": self.records_kept,
            "records_dropped": self.records_dropped,
            "dropped": list(self.dropped),
            "records_lost_known": self.records_lost_known,
            "lost_known": list(self.lost_known),
            "records_from_old_pages": self.records_from_old_pages,
            "index_entries_rebuilt": self.index_entries_rebuilt,
            "index_entries_dropped": self.index_entries_dropped,
        }


@dataclass
class RepairReport:
    path: str
    applied: bool = False
    header_lost: str | None = None
    was_dirty: bool = False
    damaged_pages: list[dict[str, Any]] = field(default_factory=list)
    pages_scanned: int = 0
    old_pages_used: int = 0
    entries_salvaged: int = 0
    entries_from_old_pages: int = 0
    tables: dict[str, TableSalvage] = field(default_factory=dict)
    lost_tables: list[str] = field(default_factory=list)
    lost_objects: list[dict[str, int]] = field(default_factory=list)
    catalog_problems: list[str] = field(default_factory=list)
    pages_before: int = 0
    pages_after: int | None = None
    kept_damaged: str | None = None
    moved_logs_to: str | None = None
    #: The loss of an interrupted data-loss recovery this repair finished (its record).
    finished_data_loss: dict[str, Any] | None = None
    #: Report only: the error the run with `accept_data_loss` would stop at before changing
    #: anything (a dirty or unreadable database beside this one), as `JetError.as_dict`.
    would_refuse: dict[str, Any] | None = None
    db_signature: str | None = None
    integrity_ok: bool | None = None
    seconds: float = 0.0

    @property
    def data_lost(self) -> bool:
        return bool(
            self.header_lost
            or self.was_dirty
            or self.damaged_pages
            or self.lost_tables
            or self.lost_objects
            or any(t.records_dropped or t.records_lost_known for t in self.tables.values())
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "applied": self.applied,
            "data_lost": self.data_lost,
            "header_lost": self.header_lost,
            "was_dirty": self.was_dirty,
            "damaged_pages": list(self.damaged_pages),
            "pages_scanned": self.pages_scanned,
            "old_pages_used": self.old_pages_used,
            "entries_salvaged": self.entries_salvaged,
            "entries_from_old_pages": self.entries_from_old_pages,
            "tables": {name: t.as_dict() for name, t in sorted(self.tables.items())},
            "lost_tables": list(self.lost_tables),
            "lost_objects": list(self.lost_objects),
            "catalog_problems": list(self.catalog_problems),
            "pages_before": self.pages_before,
            "pages_after": self.pages_after,
            "kept_damaged": self.kept_damaged,
            "moved_logs_to": self.moved_logs_to,
            "finished_data_loss": self.finished_data_loss,
            "would_refuse": self.would_refuse,
            "db_signature": self.db_signature,
            "integrity_ok": self.integrity_ok,
            "seconds": round(self.seconds, 3),
        }


def repair_database(
    path: str | os.PathLike[str],
    *,
    accept_data_loss: bool = False,
    fs: FileSystem | None = None,
) -> RepairReport:
    """Salvage the database file at `path`; replace it only with `accept_data_loss`."""
    fs = fs or FileSystem()
    started = time.monotonic()
    full = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(full)
    report = RepairReport(path=full)
    if not accept_data_loss:
        refuse_if_open(fs, directory, what="repair")
        # Said here, not first learnt from the real run: a report promising a repair that
        # the run then refuses sent the operator back without the reason or the way out.
        # The run's refusals in its order: a backup set (`exclusive_directory`), then a
        # neighbour that still needs the logs.
        try:
            refuse_backup_set(fs, directory, what="repair")
            _refuse_dirty_neighbours(fs, directory, full)
        except JetError as refusal:
            report.would_refuse = refusal.as_dict()
        with _open(fs, full, report) as db:
            _salvage(db, report)
        report.seconds = time.monotonic() - started
        return report
    with exclusive_directory(fs, directory, what="repair"):
        _refuse_dirty_neighbours(fs, directory, full)
        pending = read_pending_data_loss(fs, directory, OWNER)
        with _open(fs, full, report) as db:
            entries = _salvage(db, report)
            old = db.header
        # A database linked from another volume is rewritten where it lives (see compact).
        target = os.path.realpath(full)
        stamp = _unused_stamp(fs, directory, target)
        aside = (
            pending.directory
            if pending is not None
            else _interrupted_move(fs, directory)
            or os.path.join(directory, LOST_LOGS_PREFIX + stamp)
        )
        temporary = target + REPAIRING_SUFFIX
        if fs.exists(temporary):
            fs.unlink(temporary)
        signature = Signature.new()
        header = _repaired_header(old, full, signature, pending)
        written = write_database_file(fs, temporary, header, iter(entries), like=target)
        del entries
        try:
            check = check_integrity(temporary, fs=fs, check_open=False)
            report.integrity_ok = check.ok
            if not check.ok:
                first = next(p for p in check.problems if p.severity == "error")
                raise DatabaseCorrupted(
                    f"the repaired copy '{temporary}' failed its integrity check ({first}); "
                    f"'{full}' was not changed",
                    hint="this is a bug in jetstore: keep both files and report it",
                    path=temporary,
                )
            # The logs go first: a repaired file next to the logs of the damaged one is
            # refused by every open (their records name a database the checkpoint file
            # knows with the old signature), while a damaged file whose logs were moved
            # aside is only the state a second run of the repair starts from.
            report.moved_logs_to = _logs_aside(fs, directory, aside, full)
            damaged = f"{target}.damaged-{stamp}"
            swap_into_place(fs, temporary, target, keep_as=damaged)
            if pending is not None:
                report.finished_data_loss = _finish_pending(fs, pending)
        except BaseException:
            if fs.exists(temporary):
                with contextlib.suppress(JetError):
                    fs.unlink(temporary)
            raise
        report.kept_damaged = damaged
        report.applied = True
        report.pages_after = written.page_count
        report.db_signature = f"{signature.random.hex()}@{format_time_us(signature.time_us)}"
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- setup


@contextlib.contextmanager
def _open(fs: FileSystem, path: str, report: RepairReport) -> Iterator[OfflineDatabase]:
    try:
        db = OfflineDatabase(fs, path)
    except (ReadVerifyFailure, FileInvalidType, DatabaseCorrupted) as exc:
        if isinstance(exc, FileInvalidType):
            _refuse_other_file_type(fs, path)
        # Both header copies are unusable: every page is a candidate, the whole key space
        # is "damaged".
        report.header_lost = exc.detail or exc.description
        page_size = _guess_page_size(fs, path)
        name = parse_database_file_name(os.path.basename(path)) or ""
        size = fs.size(path)
        header = DatabaseHeader(
            page_size=page_size,
            state=DatabaseState.CLEAN,
            page_count=max(size // page_size, HEADER_COPIES),
            checkpoint_seq=(1 << 64) - 1,
            name=name[:64],
        )
        db = OfflineDatabase(fs, path, header=header)
    try:
        report.was_dirty = db.header.state is not DatabaseState.CLEAN
        report.pages_before = db.header.page_count
        yield db
    finally:
        db.close()


def _refuse_other_file_type(fs: FileSystem, path: str) -> None:
    """FileInvalidType if the file starts with an intact header block of another jetstore
    file (a log, a checkpoint file, a manifest): that is what it is, not a database whose
    header copies were lost. Rebuilding it would write an empty database in its place, and
    the run would first move the instance's logs aside, this file among them when it is one."""
    data = fs.read_file(path, owner=OWNER, limit=max(PAGE_SIZES))
    found = identify_file(data)
    if found is None or found is FileType.DATABASE:
        return
    with contextlib.suppress(ReadVerifyFailure):  # a damaged block may be our own header
        try:
            decode_block(data, found, path=path, what="first block", error=ReadVerifyFailure)
        except BadLogVersion:
            pass  # intact, of another format version: still a log
        raise FileInvalidType(
            f"'{path}' is a jetstore {found.name.lower().replace('_', ' ')} file (its first "
            "block is intact), not a "
            "database file; repair rebuilds database files only, nothing was changed",
            hint="give the NAME.edb file of the database to repair; `jetstore checksum "
            "PATH` says what a file is",
            path=path,
        )


def _guess_page_size(fs: FileSystem, path: str) -> int:
    """The page size whose pages verify most often among the first pages of the file."""
    best, best_count = 8192, 0
    with fs.opened(path, owner="jetstore-tools", writable=False) as file:
        for size in sorted(PAGE_SIZES):
            count = 0
            for pgno in range(HEADER_COPIES, HEADER_COPIES + 16):
                data = file.pread(size, pgno * size)
                if len(data) != size:
                    break
                with contextlib.suppress(JetError):
                    verify_page(pgno, data, page_size=size)
                    count += 1
            if count > best_count:
                best, best_count = size, count
    return best


def _refuse_dirty_neighbours(fs: FileSystem, directory: str, target: str) -> None:
    """DatabaseDirtyShutdown if another database of the directory still needs the logs."""
    for name in fs.listdir(directory):
        path = os.path.join(directory, name)
        if path == target or parse_database_file_name(name) is None:
            continue
        if fs.is_directory(path) or fs.special_kind(path) is not None:
            continue  # no database lives there (the open refuses it by name, D6)
        try:
            with OfflineDatabase(fs, path) as other:
                state = other.header.state
        except JetError as exc:
            # Its header may say dirty: moving the logs would then lose its commits since
            # its checkpoint, and an EIO or a permission can be gone by the next open.
            raise _restated(
                exc,
                f"repair moves the log files of '{directory}' aside, and cannot tell whether "
                f"database '{path}' of the same instance still needs them: its header cannot "
                f"be read ({exc.detail}); nothing was changed",
                hint=f"make '{path}' readable and run the repair again; if its header is "
                f"damaged, repair it first (`jetstore repair {path}`), or move it out of "
                f"'{directory}' and keep its logs with it",
                path=path,
            ) from exc
        if state is not DatabaseState.CLEAN:
            raise DatabaseDirtyShutdown(
                f"database '{path}' in the same instance directory is in state "
                f"{state.name.lower()}: repair moves the log files aside, and it still needs "
                "them",
                hint=f"run `jetstore recover {directory}` first (move '{target}' out of the "
                "directory if recovery fails on it), then repair",
                path=path,
            )


def _unused_stamp(fs: FileSystem, directory: str, target: str) -> str:
    """The time that names the kept damaged file and the logs' directory, made unique: a
    second repair within the same second must neither fail on the first one's kept file nor
    rename its logs over the ones the first moved aside."""
    return unused_time_stamp(
        now_us(),
        lambda stamp: (
            fs.exists(f"{target}.damaged-{stamp}")
            or fs.exists(os.path.join(directory, LOST_LOGS_PREFIX + stamp))
        ),
    )


def _interrupted_move(fs: FileSystem, directory: str) -> str | None:
    """The `lost-logs-<time>/` an earlier repair began to move this directory's log stream
    into before it failed: the rest goes there too, so that the stream is not split over
    two directories (a restore reading the set-aside logs takes one)."""
    here = take_inventory(fs, directory, owner=OWNER).files.values()
    signatures = {entry.header.log_signature for entry in here if entry.header is not None}
    return set_aside_logs_of(fs, directory, signatures, owner=OWNER) if signatures else None


def _unstamped_loss(old: DatabaseHeader, pending: PendingDataLoss | None) -> bool:
    """Whether the interrupted recovery's recorded loss names this database but was not yet
    stamped into it (recovery's own test: its repair time is the record's)."""
    return (
        pending is not None
        and old.name in pending.databases
        and old.last_repair_time != pending.time_us
    )


def _finish_pending(fs: FileSystem, pending: PendingDataLoss) -> dict[str, Any]:
    """Rename the record `data-loss.json`, as the recovery that wrote it would have: every
    log is in its directory now, and no open is to finish (and count) that loss again."""
    record = os.path.join(pending.directory, DATA_LOSS_RECORD)
    try:
        fs.rename(pending.path, record)
        fs.fsync_directory(pending.directory)
    except JetError as exc:
        raise _restated(
            exc,
            f"repair put the repaired database in place but could not finish the pending "
            f"data-loss record '{pending.path}' ({exc.detail})",
            hint="the next open of the instance finishes it and reports the recorded loss "
            "(counted once: the repaired database carries it); nothing else is to be done",
            path=exc.path,
        ) from exc
    return {
        "record": record,
        "reasons": list(pending.reasons),
        "stopped_at": None if pending.stopped_at is None else str(pending.stopped_at),
        "databases": list(pending.databases),
        "without_file": list(pending.without_file),
    }


def _repaired_header(
    old: DatabaseHeader, path: str, signature: Signature, pending: PendingDataLoss | None
) -> DatabaseHeader:
    now = now_us()
    repaired_at = now
    if pending is not None and old.name in pending.databases:
        # Its count takes the recorded loss: its repair time is the record's, which tells
        # an open finishing that record (a kill before `_finish_pending`) it is counted.
        repaired_at = pending.time_us
    name = old.name or (parse_database_file_name(os.path.basename(path)) or "")[:64]
    return DatabaseHeader(
        page_size=old.page_size,
        state=DatabaseState.CLEAN,
        db_id=old.db_id,
        db_signature=signature,
        log_signature=Signature.NONE,
        checkpoint_position=LogPosition.MIN,
        last_consistent_time=now,
        created_time=old.created_time or now,
        checkpoint_seq=1,
        repair_count=old.repair_count + 1 + (1 if _unstamped_loss(old, pending) else 0),
        last_repair_time=repaired_at,
        name=name,  # and no backup history (the defaults): the history named old logs
    )


def _logs_aside(fs: FileSystem, directory: str, aside: str, target: str) -> str | None:
    """`_move_logs_aside`, its failure saying what was done and the way out."""
    try:
        return _move_logs_aside(fs, directory, aside)
    except JetError as exc:
        raise _restated(
            exc,
            f"repair could not move the log and checkpoint files of '{directory}' into "
            f"'{aside}' ({exc.detail}); '{target}' was not changed, the files already "
            "moved are there",
            hint="remove the cause, then run the repair again: it moves the remaining ones "
            f"(or move the files of '{aside}' back to keep the database as it was)",
            path=exc.path,
        ) from exc


def _restated(exc: JetError, message: str, *, hint: str, path: str | None) -> JetError:
    """`exc` said in repair's terms, keeping its error (name, number) and its errno."""
    failure = type(exc)(message, hint=hint, path=path)
    failure.errno = exc.errno
    return failure


def _move_logs_aside(fs: FileSystem, directory: str, target: str) -> str | None:
    """Move the log and checkpoint files into `target`, a `lost-logs-<time>/` (recovery's
    convention)."""
    names = [
        name
        for name in fs.listdir(directory)
        if name in (CURRENT_LOG, TEMP_LOG, CHECKPOINT_FILE)
        or parse_generation_log_name(name) is not None
    ]
    if not names:
        return None
    fs.makedirs(target)
    for name in names:
        fs.rename(os.path.join(directory, name), os.path.join(target, name))
    fs.fsync_directory(target)
    fs.fsync_directory(directory)
    return target


# --------------------------------------------------------------------------- physical


class _Ranges:
    """Disjoint key intervals; `add` merges, `contains` bisects. None bounds are open."""

    def __init__(self, closed: bool) -> None:
        self._closed = closed  # [lo, hi] (claimed spans) or [lo, hi) (damaged ranges)
        self._los: list[bytes] = []
        self._his: list[bytes | None] = []

    def __bool__(self) -> bool:
        return bool(self._los)

    def contains(self, key: bytes) -> bool:
        i = bisect_right(self._los, key) - 1
        if i < 0:
            return False
        hi = self._his[i]
        return hi is None or key < hi or (self._closed and key == hi)

    def overlaps(self, lo: bytes, hi: bytes) -> bool:
        """Whether [lo, hi] meets an interval."""
        if self.contains(lo):
            return True
        i = bisect_right(self._los, lo)
        return i < len(self._los) and self._los[i] <= hi

    def add(self, lo: bytes, hi: bytes | None) -> None:
        i = bisect_right(self._los, lo)
        # merge with the left neighbour when it reaches lo
        if i > 0 and (self._his[i - 1] is None or self._his[i - 1] >= lo):  # type: ignore[operator]
            i -= 1
            lo = self._los[i]
            hi = None if hi is None or self._his[i] is None else max(hi, self._his[i])  # type: ignore[type-var]
            del self._los[i], self._his[i]
        while i < len(self._los) and (hi is None or self._los[i] <= hi):
            other = self._his[i]
            hi = None if hi is None or other is None else max(hi, other)
            del self._los[i], self._his[i]
        self._los.insert(i, lo)
        self._his.insert(i, hi)


def _salvage(db: OfflineDatabase, report: RepairReport) -> list[tuple[bytes, bytes]]:
    """Every salvaged entry, sorted, after the logical salvage (see the module docstring)."""
    header = db.header
    entries: dict[bytes, bytes] = {}
    damaged = _Ranges(closed=False)
    used: set[int] = set()
    if report.header_lost is not None:
        damaged.add(b"", None)
    elif header.root_pgno:
        _walk(db, header, entries, damaged, used, report)
    old_keys: set[bytes] = set()
    if damaged:
        old_keys = _scan_old_pages(db, header, entries, damaged, used, report)
    items = sorted(entries.items())
    report.entries_salvaged = len(items)
    return _logical(db, items, report, old_keys)


def _walk(
    db: OfflineDatabase,
    header: DatabaseHeader,
    entries: dict[bytes, bytes],
    damaged: _Ranges,
    used: set[int],
    report: RepairReport,
) -> None:
    seen: set[int] = set()
    # (child reference, parent page, low bound inclusive, high bound exclusive)
    stack: list[tuple[int, int | None, bytes | None, bytes | None]] = [
        (child_ref(header.root_pgno, header.root_crc), None, None, None)
    ]
    while stack:
        ref, parent, lo, hi = stack.pop()
        pgno = ref_pgno(ref)
        reason: str | None = None
        node: Node | None = None
        if not HEADER_COPIES <= pgno < header.page_count or pgno in seen:
            reason = "outside the database" if pgno not in seen else "reached twice"
        else:
            seen.add(pgno)
            data = db.read_page(pgno)
            try:
                node = decode_node(
                    pgno, data, path=db.path, page_size=db.page_size, expected_crc=ref_crc(ref)
                )
            except JetError as exc:
                reason = f"{exc.ese_name}: {exc.detail}"
            if node is not None:
                keys = node.keys
                if any(a >= b for a, b in pairwise(keys)):
                    reason = "keys out of order"
                elif keys and (
                    (lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)
                ):
                    reason = "keys outside the range its parent gives it"
        if reason is not None or node is None:
            report.damaged_pages.append(
                {
                    "page": pgno,
                    "parent": parent,
                    "reason": reason or "unreadable",
                    "range": [_show(lo), _show(hi)],
                }
            )
            damaged.add(lo or b"", hi)
            continue
        used.add(pgno)
        if node.leaf:
            entries.update(zip(node.keys, node.values, strict=True))
        else:
            bounds = [lo, *node.keys, hi]
            for i in range(len(node.children) - 1, -1, -1):
                child = node.children[i]
                assert isinstance(child, int)
                stack.append((child, pgno, bounds[i], bounds[i + 1]))


def _show(key: bytes | None) -> str | None:
    return None if key is None else "0x" + key[:48].hex()


def _scan_old_pages(
    db: OfflineDatabase,
    header: DatabaseHeader,
    entries: dict[bytes, bytes],
    damaged: _Ranges,
    used: set[int],
    report: RepairReport,
) -> set[bytes]:
    """Fill the damaged ranges from leaves outside the tree; returns the keys taken."""
    taken: set[bytes] = set()
    limit = max(db.file_pages, header.page_count)
    candidates: list[tuple[int, int, list[bytes], list[bytes]]] = []
    for pgno in range(HEADER_COPIES, limit):
        if pgno in used:
            continue
        data = db.read_page(pgno)
        report.pages_scanned += 1
        if len(data) != db.page_size:
            break
        try:
            _page, ptype, _n, seq, _plen = verify_page(pgno, data, page_size=db.page_size)
            if ptype != PageType.LEAF or seq > header.checkpoint_seq:
                continue
            node = decode_node(pgno, data, page_size=db.page_size)
        except JetError:
            continue
        keys = node.keys
        if not keys or any(a >= b for a, b in pairwise(keys)):
            continue
        if not damaged.overlaps(keys[0], keys[-1]):
            continue
        candidates.append((page_checkpoint_seq(data), pgno, keys, node.values))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    claimed = _Ranges(closed=True)
    for _seq, _pgno, keys, values in candidates:
        took = 0
        for key, value in zip(keys, values, strict=True):
            if damaged.contains(key) and not claimed.contains(key) and key not in entries:
                entries[key] = value
                taken.add(key)
                took += 1
        claimed.add(keys[0], keys[-1])
        if took:
            report.old_pages_used += 1
            report.entries_from_old_pages += took
    return taken


# --------------------------------------------------------------------------- logical


def _logical(
    db: OfflineDatabase,
    items: list[tuple[bytes, bytes]],
    report: RepairReport,
    old_keys: set[bytes],
) -> list[tuple[bytes, bytes]]:
    catalog_entries = [(k, v) for k, v in items if object_id_of(k) == CATALOG_ID]
    catalog = decode_catalog(catalog_entries)
    report.catalog_problems = [
        f"{message} (key 0x{key.hex()})" for message, key in catalog.problems
    ]
    report.lost_tables = list(catalog.lost)
    # Catalog problems (duplicate ids) leave the tables sharing ids out: keep the first.
    tables = dict(catalog.tables)
    owners = object_owners(tables)
    records: dict[str, list[tuple[bytes, bytes]]] = {name: [] for name in tables}
    chunks: dict[tuple[int, bytes, int], list[tuple[int, bytes, bytes]]] = {}
    found_index: dict[int, dict[bytes, bytes]] = {}
    orphans: dict[int, int] = {}
    max_object = FIRST_OBJECT_ID - 1
    for key, value in items:
        object_id = object_id_of(key)
        if object_id is None:
            orphans[-1] = orphans.get(-1, 0) + 1
            continue
        max_object = max(max_object, object_id)
        if object_id == CATALOG_ID:
            continue
        owner = owners.get(object_id)
        if owner is None:
            orphans[object_id] = orphans.get(object_id, 0) + 1
        elif owner.role == "records":
            records[owner.table].append((key, value))
        elif owner.role == "index":
            found_index.setdefault(object_id, {})[key] = value
        else:
            parsed = parse_long_value_key(key)
            if parsed is not None:
                pk, column, number = parsed
                chunks.setdefault((object_id, pk, column), []).append((number, key, value))
    report.lost_objects = [
        {"object_id": object_id, "entries": count} for object_id, count in sorted(orphans.items())
    ]
    out: list[tuple[bytes, bytes]] = []
    for name, table_def in sorted(tables.items()):
        salvage = report.tables[name] = TableSalvage()
        out.extend(_salvage_table(table_def, records[name], chunks, found_index, salvage))
        salvage.records_from_old_pages = sum(key in old_keys for key, _ in records[name])
        out.extend(table_def_entries(name, encode_table_def(table_def), db.page_size))
    next_id = max(catalog.next_object_id or FIRST_OBJECT_ID, max_object + 1)
    if tables or max_object >= FIRST_OBJECT_ID:
        out.append((NEXT_OBJECT_ID_KEY, encode_next_object_id(next_id)))
    out.sort()
    return out


def _reader(values: dict[int, str | bytes]) -> LongValueReader:
    def read(position: int, _ref: LongValueRef) -> str | bytes:
        return values[position]

    return read


def _salvage_table(
    table_def: TableDef,
    records: list[tuple[bytes, bytes]],
    chunks: dict[tuple[int, bytes, int], list[tuple[int, bytes, bytes]]],
    found_index: dict[int, dict[bytes, bytes]],
    salvage: TableSalvage,
) -> list[tuple[bytes, bytes]]:
    codec = RecordCodec(table_def)
    out: list[tuple[bytes, bytes]] = []
    unique_seen: dict[bytes, bytes] = {}
    kept_pks: set[bytes] = set()
    rebuilt: set[bytes] = set()
    for key, raw in records:
        pk = key[4:]
        try:
            record = codec.decode(raw)
        except JetError as exc:
            salvage.drop(pk, f"the record does not decode: {exc.detail}")
            continue
        values: dict[int, str | bytes] = {}
        lost: str | None = None
        for position, ref in long_value_refs(table_def, record):
            parts = sorted(chunks.get((table_def.lv_id, pk, position), []))
            value, problem = assemble_long_value([(n, v) for n, _k, v in parts], ref)
            if value is None:
                lost = f"long value of column {table_def.columns[position].name!r} lost: {problem}"
                break
            values[position] = value
        read = _reader(values)
        if lost is not None:
            salvage.drop(pk, lost)
            continue
        try:
            if primary_key_bytes(table_def, record, read) != pk:
                salvage.drop(pk, "the record is stored under another record's key")
                continue
            entries = index_entries(table_def, record, pk, read)
        except JetError as exc:
            salvage.drop(pk, f"its key values do not encode: {exc.detail}")
            continue
        duplicate = next(
            (
                unique
                for _entry, unique in entries.values()
                if unique is not None and unique in unique_seen
            ),
            None,
        )
        if duplicate is not None:
            salvage.drop(
                pk,
                f"a unique index key is also held by record {describe_key(unique_seen[duplicate])}"
                " (an older copy came back)",
            )
            continue
        for _entry, unique in entries.values():
            if unique is not None:
                unique_seen[unique] = pk
        salvage.records_kept += 1
        kept_pks.add(pk)
        out.append((key, raw))
        for position in values:
            out.extend((k, v) for _n, k, v in sorted(chunks[(table_def.lv_id, pk, position)]))
        for index_id, (entry, _unique) in entries.items():
            out.append((entry, pk))
            rebuilt.add(entry)
            if entry not in found_index.get(index_id, {}):
                salvage.index_entries_rebuilt += 1
    known_lost: set[bytes] = set()
    dropped_pks = {key[4:] for key, _ in records} - kept_pks
    for index_id in table_def.index_ids:
        for entry, pk in found_index.get(index_id, {}).items():
            if entry not in rebuilt:
                salvage.index_entries_dropped += 1
                if pk not in kept_pks and pk not in dropped_pks:
                    known_lost.add(pk)
    for lv_id, pk, _column in chunks:
        if lv_id == table_def.lv_id and pk not in kept_pks and pk not in dropped_pks:
            known_lost.add(pk)
    salvage.records_lost_known = len(known_lost)
    salvage.lost_known = [describe_key(pk) for pk in sorted(known_lost)[:_LIST_LIMIT]]
    return out
