"""`compact_database`: offline defragmentation of a database file (esentutl /d).

This module owns the compaction procedure:

1. Hold the instance directory lock (`jetstore.lock`) for the whole run: no instance can open
   the directory meanwhile (`InstanceNameInUse` if one has it open now).
2. The database must be clean (`DatabaseDirtyShutdown`, -550: run `jetstore recover`).
3. Preflight: the free space of the file system must hold the live data (tree pages) plus a
   margin, else `DiskFull` naming both numbers; `NAME.edb.precompact` must not exist when
   the original is to be kept.
4. Every entry of the tree is read in key order (each page verified) and a new tree is built
   bottom-up into `NAME.edb.compacting` (`jetstore.tools.rebuild`), with the same header
   otherwise: database signature, db id, log signature binding, checkpoint position, backup
   history, repair count. A compacted database is the same database, only denser.
5. The new file is synced and checked with `check_integrity`; a failure removes it and
   leaves the original as it was.
6. Swap: with `keep_original` the original is first hard-linked as `NAME.edb.precompact`;
   then `NAME.edb.compacting` is renamed over `NAME.edb` (atomic) and the directory synced.
   At every instant `NAME.edb` is the old file or the new one, whole. A `NAME.edb` that is a
   symbolic link is rewritten where it points (the temporary and kept files next to it): the
   link stays.

A leftover `NAME.edb.compacting` (an earlier run that was interrupted) is removed first; it
never holds the only copy of anything. So is a `NAME.edb.precompact` that is the database file
itself (a run killed between its link and its rename): another one is refused.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from jetstore.errors import (
    DatabaseCorrupted,
    DatabaseDuplicate,
    DiskFull,
    JetError,
)
from jetstore.io.files import FileSystem
from jetstore.pages.btree import iterate
from jetstore.tools.dbfile import OfflineDatabase, exclusive_directory, require_clean
from jetstore.tools.integrity import IntegrityReport, check_integrity
from jetstore.tools.rebuild import swap_into_place, write_database_file

__all__ = [
    "COMPACTING_SUFFIX",
    "PRECOMPACT_SUFFIX",
    "CompactResult",
    "compact_database",
    "required_space",
]

COMPACTING_SUFFIX: Final = ".compacting"
PRECOMPACT_SUFFIX: Final = ".precompact"
#: Space kept free beyond the live data: at least this many bytes ...
_MARGIN_MIN: Final = 1 << 20
#: ... or this fraction of the live data.
_MARGIN_FRACTION: Final = 0.1


@dataclass
class CompactResult:
    path: str
    pages_before: int
    pages_after: int
    bytes_before: int
    bytes_after: int
    free_pages_before: int
    entries: int
    kept_original: str | None
    integrity: IntegrityReport
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "pages_before": self.pages_before,
            "pages_after": self.pages_after,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "free_pages_before": self.free_pages_before,
            "entries": self.entries,
            "kept_original": self.kept_original,
            "integrity": {
                "ok": self.integrity.ok,
                "depth": self.integrity.depth,
                "tree_pages": self.integrity.tree_pages,
                "problems": [p.as_dict() for p in self.integrity.problems],
            },
            "seconds": round(self.seconds, 3),
        }


def required_space(live_bytes: int) -> int:
    """Free bytes compaction needs for a database of `live_bytes` of tree pages."""
    return live_bytes + max(_MARGIN_MIN, int(live_bytes * _MARGIN_FRACTION))


def compact_database(
    path: str | os.PathLike[str],
    *,
    keep_original: bool = False,
    fs: FileSystem | None = None,
    free_bytes: Callable[[str], int] | None = None,
) -> CompactResult:
    """Compact the database file at `path` in place (see the module docstring).
    `free_bytes`: how the free space of a directory's file system is read (default
    `FileSystem.free_bytes`, whose failure is the JetError naming the directory)."""
    fs = fs or FileSystem()
    free_bytes = free_bytes or fs.free_bytes
    started = time.monotonic()
    full = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(full)
    # A database linked from another volume is rewritten where it lives: a rename over the
    # link would put the new file in its place and leave the real one there, stale.
    target = os.path.realpath(full)
    temporary = target + COMPACTING_SUFFIX
    original = target + PRECOMPACT_SUFFIX
    with exclusive_directory(fs, directory, what="compaction"):
        with OfflineDatabase(fs, full) as db:
            header = db.header
            require_clean(header, db.path, what="compaction")
            if keep_original and fs.exists(original) and _same_file(original, target):
                # A second name of the database itself, left by a run killed between its
                # link and its rename: no kept original, nothing is lost with it.
                fs.unlink(original)
            if keep_original and fs.exists(original):
                raise DatabaseDuplicate(
                    f"'{original}' already exists (the original kept by an earlier compaction)",
                    hint="move or delete it, or run without --keep-original",
                    path=original,
                )
            live_pages = header.page_count - header.free_page_count
            live = live_pages * header.page_size
            need = required_space(live)
            available = free_bytes(os.path.dirname(target))
            if available < need:
                raise DiskFull(
                    f"compacting '{full}' needs about {need} bytes free in "
                    f"'{os.path.dirname(target)}' (its live data, {live} bytes, plus a "
                    f"margin); only {available} are free",
                    hint="free some space on that file system, then run the command again",
                    path=os.path.dirname(target),
                )
            if fs.exists(temporary):
                fs.unlink(temporary)
            counter = _Counter()
            written = write_database_file(
                fs,
                temporary,
                dataclasses.replace(header),
                counter.wrap(iterate(db, db.root())),
                like=target,
            )
        try:
            report = check_integrity(temporary, fs=fs, check_open=False)
            if not report.ok:
                first = next(p for p in report.problems if p.severity == "error")
                raise DatabaseCorrupted(
                    f"the compacted copy '{temporary}' failed its integrity check "
                    f"({report.errors} problem(s); first: {first}); '{full}' was not changed",
                    hint="run `jetstore integrity` on the database; this is a bug in jetstore "
                    "if the original passes",
                    path=temporary,
                )
            swap_into_place(fs, temporary, target, keep_as=original if keep_original else None)
        except BaseException:
            if fs.exists(temporary):
                try:
                    fs.unlink(temporary)
                except JetError:
                    pass
            raise
    return CompactResult(
        path=full,
        pages_before=header.page_count,
        pages_after=written.page_count,
        bytes_before=header.page_count * header.page_size,
        bytes_after=written.page_count * written.page_size,
        free_pages_before=header.free_page_count,
        entries=counter.count,
        kept_original=original if keep_original else None,
        integrity=report,
        seconds=time.monotonic() - started,
    )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def wrap(self, items: Any) -> Any:
        for item in items:
            self.count += 1
            yield item
