"""`check_integrity`: the logical and physical check of a database file (esentutl /g).

This module owns the definition of a *consistent* database file. Read-only; it opens the file
itself (`OfflineDatabase`), never through an instance, and refuses a database that was not
shut down cleanly (`DatabaseDirtyShutdown`, -550): its latest state is in the logs.

What is checked, each failure becoming a `Problem` with its page, table and key:

1. **Header**: both copies valid and equal (a damaged or older copy is a warning: the next
   open rewrites it); the file holds the `page_count` pages the header claims.
2. **B+tree**, walked from the header's root in key order: every page verifies (CRC32C with
   its page number) and is a branch or a leaf; no page is reached twice; child pointers lie
   inside the database; keys strictly ascend inside each page and across pages; every key
   lies inside the range its parent's separators give it; all leaves at one depth (balance);
   no empty non-root page, no entry over the size limit; no page newer than the header's
   checkpoint. Pages under the minimum fill are reported as a warning (fill sanity).
3. **Free space**: the free-list chain from the header is readable, holds only free-list
   pages, has no loop; ``tree pages + free-list entries + chain pages == page_count - 2``;
   the header's free page count is the number of entries; no page is both used and free, or
   free twice.
4. **Catalog**: every table definition decodes (chunked ones too), object ids are distinct,
   the next free object id is above every id in use; every entry belongs to a known object.
5. **Records**: each decodes with its table's schema and its primary key is the one it is
   stored under.
6. **Indexes**: every record has exactly its index entries (value = the primary key), every
   index entry belongs to a record, unique indexes hold no duplicate.
7. **Long values**: every reference has all its chunks (numbered from 0, lengths adding up
   to the reference's length); every chunk belongs to a reference (no orphan chunks).

The walk streams: entries are checked in key order as the leaves are read (the catalog,
object 0, comes first). Memory holds the expected and found index entries and long-value
references (about the size of the indexes), not the records.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final

from jetstore.errors import DatabaseCorrupted, JetError
from jetstore.format.dbheader import HEADER_COPIES, DatabaseHeader
from jetstore.format.page import PageType, decode_page, payload_capacity
from jetstore.io.files import FileSystem
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    check_page_crc,
    child_ref,
    decode_node,
    iterate,
    max_entry_size,
    min_fill,
    ref_crc,
    ref_pgno,
)
from jetstore.tables.catalog import CATALOG_ID, object_prefix
from jetstore.tables.keys import prefix_successor
from jetstore.tables.records import LongValueRef, RecordCodec
from jetstore.tables.schema import TableDef
from jetstore.tools.dbfile import (
    CatalogView,
    ObjectOwner,
    OfflineDatabase,
    decode_catalog,
    describe_key,
    object_id_of,
    object_owners,
    page_checkpoint_seq,
    refuse_if_open,
    require_clean,
)
from jetstore.tools.layout import (
    assemble_long_value,
    index_entries,
    long_value_range,
    long_value_refs,
    parse_long_value_key,
    primary_key_bytes,
)

__all__ = ["MAX_PROBLEMS", "IntegrityReport", "Problem", "TableCounts", "check_integrity"]

#: Problems kept in a report; more are only counted (`IntegrityReport.more_problems`).
MAX_PROBLEMS: Final = 1000


@dataclass(frozen=True)
class Problem:
    """One thing wrong. `area`: header, tree, space, catalog, record, index, long_value."""

    area: str
    message: str
    pgno: int | None = None
    table: str | None = None
    key: str | None = None
    severity: str = "error"  # or "warning": worth knowing, not an inconsistency

    def as_dict(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "severity": self.severity,
            "message": self.message,
            "page": self.pgno,
            "table": self.table,
            "key": self.key,
        }

    def __str__(self) -> str:
        where = []
        if self.pgno is not None:
            where.append(f"page {self.pgno}")
        if self.table is not None:
            where.append(f"table {self.table!r}")
        if self.key is not None:
            where.append(f"key {self.key}")
        prefix = f"[{', '.join(where)}] " if where else ""
        return f"{self.severity}: {self.area}: {prefix}{self.message}"


@dataclass
class TableCounts:
    records: int = 0
    index_entries: dict[str, int] = field(default_factory=dict)
    long_values: int = 0
    long_value_chunks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "index_entries": dict(self.index_entries),
            "long_values": self.long_values,
            "long_value_chunks": self.long_value_chunks,
        }


@dataclass
class IntegrityReport:
    path: str
    page_size: int = 0
    page_count: int = 0
    state: str = ""
    depth: int = 0
    branch_pages: int = 0
    leaf_pages: int = 0
    entries: int = 0
    free_pages: int = 0
    free_list_pages: int = 0
    tables: dict[str, TableCounts] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    more_problems: int = 0
    pages_read: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems) + self.more_problems

    @property
    def warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    @property
    def tree_pages(self) -> int:
        return self.branch_pages + self.leaf_pages

    def errors_in(self, area: str) -> bool:
        return any(p.area == area and p.severity == "error" for p in self.problems)

    def add(self, problem: Problem) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)
        else:
            self.more_problems += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "state": self.state,
            "page_size": self.page_size,
            "page_count": self.page_count,
            "tree": {
                "depth": self.depth,
                "branch_pages": self.branch_pages,
                "leaf_pages": self.leaf_pages,
                "entries": self.entries,
            },
            "space": {
                "tree_pages": self.tree_pages,
                "free_pages": self.free_pages,
                "free_list_pages": self.free_list_pages,
            },
            "tables": {name: counts.as_dict() for name, counts in sorted(self.tables.items())},
            "errors": self.errors,
            "warnings": self.warnings,
            "problems": [p.as_dict() for p in self.problems],
            "more_problems": self.more_problems,
            "pages_read": self.pages_read,
            "seconds": round(self.seconds, 3),
        }


def check_integrity(
    path: str | os.PathLike[str],
    *,
    fs: FileSystem | None = None,
    require_clean_state: bool = True,
    check_open: bool = True,
) -> IntegrityReport:
    """Check the database file at `path` (see the module docstring); never writes.

    Raises `DatabaseDirtyShutdown` for a database not shut down cleanly (unless
    `require_clean_state` is False), `InstanceNameInUse` when an instance has its directory
    open (unless `check_open` is False), and the header errors of `choose_db_header` when
    neither header copy is usable. Everything else found is a `Problem` in the report.
    """
    fs = fs or FileSystem()
    started = time.monotonic()
    full = os.path.abspath(os.fspath(path))
    if check_open:
        refuse_if_open(fs, os.path.dirname(full), what="an integrity check")
    with OfflineDatabase(fs, full) as db:
        header = db.header
        if require_clean_state:
            require_clean(header, db.path, what="an integrity check")
        report = IntegrityReport(
            path=db.path,
            page_size=db.page_size,
            page_count=header.page_count,
            state=header.state.name.lower(),
        )
        for problem in db.header_problems:
            report.add(Problem("header", problem, severity="warning"))
        if db.file_pages < header.page_count:
            report.add(
                Problem(
                    "header",
                    f"the file holds {db.file_pages} whole pages but the header says "
                    f"{header.page_count}: the file was truncated",
                )
            )
        checker = _LogicalChecker(db, report)
        tree_pages = _walk_tree(db, header, report, checker)
        checker.finish()
        _check_space(db, header, report, tree_pages)
        if db.reread_header() != header:
            report.add(
                Problem(
                    "header",
                    "the database header changed while it was being checked (an instance "
                    "opened it?): the results may be mixed; run the check again",
                )
            )
        report.pages_read = db.pages_read
    report.seconds = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- the tree


def _walk_tree(
    db: OfflineDatabase, header: DatabaseHeader, report: IntegrityReport, checker: _LogicalChecker
) -> set[int]:
    """Walk the tree in key order; returns every page it uses (those that verified)."""
    seen: dict[int, int | None] = {}  # page -> the parent it was reached from
    used: set[int] = set()
    if header.root_pgno == 0:
        return used
    page_size = db.page_size
    capacity = payload_capacity(page_size)
    fill = min_fill(page_size)
    max_entry = max_entry_size(page_size)
    leaf_depth: int | None = None
    last_key: bytes | None = None
    last_leaf: int | None = None
    underfull: list[tuple[int, int]] = []
    # (child reference, depth, low bound inclusive, high bound exclusive, parent)
    stack: list[tuple[int, int, bytes | None, bytes | None, int | None]] = [
        (child_ref(header.root_pgno, header.root_crc), 1, None, None, None)
    ]
    while stack:
        ref, depth, lo, hi, parent = stack.pop()
        pgno = ref_pgno(ref)
        whence = "the header's root" if parent is None else f"branch page {parent}"
        if not HEADER_COPIES <= pgno < header.page_count:
            report.add(
                Problem(
                    "tree",
                    f"{whence} points to page {pgno}, outside the database (pages "
                    f"{HEADER_COPIES}..{header.page_count - 1})",
                    pgno=parent,
                )
            )
            continue
        if pgno in seen:
            report.add(
                Problem(
                    "tree",
                    f"page {pgno} is reached twice: from {whence} and from "
                    f"{'the root' if seen[pgno] is None else f'page {seen[pgno]}'}",
                    pgno=pgno,
                )
            )
            continue
        seen[pgno] = parent
        data = db.read_page(pgno)
        try:
            if len(data) != page_size:
                raise _short_page(db, pgno)
            node = decode_node(
                pgno, data, path=db.path, page_size=page_size, expected_crc=ref_crc(ref)
            )
        except JetError as exc:
            report.add(
                Problem("tree", f"{exc.ese_name}: {exc.detail} (reached from {whence})", pgno=pgno)
            )
            continue
        used.add(pgno)
        seq = page_checkpoint_seq(data)
        if seq > header.checkpoint_seq:
            report.add(
                Problem(
                    "tree",
                    f"page was written by checkpoint {seq}, after the header's checkpoint "
                    f"{header.checkpoint_seq}: a write the header does not know of",
                    pgno=pgno,
                )
            )
        keys = node.keys
        ordered = all(a < b for a, b in pairwise(keys))
        if not ordered:
            report.add(Problem("tree", "keys are not in strictly ascending order", pgno=pgno))
        if keys and ((lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)):
            report.add(
                Problem(
                    "tree",
                    "keys lie outside the range its parent's separators give it",
                    pgno=pgno,
                    key=describe_key(keys[0][4:]),
                )
            )
        if node.nbytes > capacity:
            report.add(Problem("tree", f"payload of {node.nbytes} bytes exceeds a page", pgno=pgno))
        if parent is not None and node.nbytes < fill:
            underfull.append((pgno, node.nbytes))
        if node.leaf:
            report.leaf_pages += 1
            if leaf_depth is None:
                leaf_depth = depth
            elif depth != leaf_depth:
                report.add(
                    Problem(
                        "tree",
                        f"leaf at depth {depth}, other leaves are at depth {leaf_depth}: the "
                        "tree is not balanced",
                        pgno=pgno,
                    )
                )
            if not keys and parent is not None:
                report.add(Problem("tree", "empty leaf below the root", pgno=pgno))
            for key, value in zip(keys, node.values, strict=True):
                if LEAF_ENTRY_OVERHEAD + len(key) + len(value) > max_entry:
                    report.add(
                        Problem(
                            "tree",
                            f"an entry of {len(key) + len(value)} bytes exceeds the limit",
                            pgno=pgno,
                            key=describe_key(key[4:]),
                        )
                    )
            if keys and last_key is not None and keys[0] <= last_key:
                report.add(
                    Problem(
                        "tree",
                        f"first key is not above the last key of the previous leaf "
                        f"(page {last_leaf})",
                        pgno=pgno,
                    )
                )
            report.entries += len(keys)
            if keys and ordered:
                if last_key is None or keys[0] > last_key:
                    checker.feed(pgno, keys, node.values)
                last_key = keys[-1]
                last_leaf = pgno
        else:
            report.branch_pages += 1
            bounds = [lo, *keys, hi]
            children = node.children
            for i in range(len(children) - 1, -1, -1):
                child = children[i]
                assert isinstance(child, int)
                stack.append((child, depth + 1, bounds[i], bounds[i + 1], pgno))
    report.depth = leaf_depth or 0
    if underfull:
        emptiest = min(underfull, key=lambda item: item[1])
        report.add(
            Problem(
                "tree",
                f"{len(underfull)} page(s) are filled below the minimum of {fill} bytes "
                f"(emptiest: page {emptiest[0]}, {emptiest[1]} bytes); `jetstore compact` "
                "packs them",
                pgno=emptiest[0],
                severity="warning",
            )
        )
    return used


def _short_page(db: OfflineDatabase, pgno: int) -> JetError:
    return DatabaseCorrupted(
        f"'{db.path}' ends inside page {pgno}: the file was truncated", path=db.path
    )


# --------------------------------------------------------------------------- free space


def _check_space(
    db: OfflineDatabase, header: DatabaseHeader, report: IntegrityReport, tree: set[int]
) -> None:
    chain: list[int] = []
    free: list[int] = []
    pgno = header.freelist_pgno
    expected_crc = header.freelist_crc
    referrer = "the database header"
    broken = False
    while pgno:
        if pgno in chain or not HEADER_COPIES <= pgno < header.page_count:
            report.add(
                Problem(
                    "space",
                    f"the free-list chain {'loops back to' if pgno in chain else 'points to'} "
                    f"page {pgno}" + ("" if pgno in chain else ", outside the database"),
                    pgno=chain[-1] if chain else None,
                )
            )
            broken = True
            break
        chain.append(pgno)
        try:
            data = db.read_page(pgno)
            page = decode_page(pgno, data, path=db.path, page_size=db.page_size)
            check_page_crc(pgno, data, expected_crc, path=db.path, referrer=referrer)
        except JetError as exc:
            report.add(Problem("space", f"free-list page: {exc.ese_name}: {exc.detail}", pgno=pgno))
            broken = True
            break
        if page.page_type != PageType.FREE_LIST:
            report.add(
                Problem(
                    "space",
                    f"the free-list chain reaches a {page.page_type.name} page",
                    pgno=pgno,
                )
            )
            broken = True
            break
        payload = bytes(page.payload)
        if len(payload) != 8 + 8 * page.count:
            report.add(Problem("space", "free-list page payload length is wrong", pgno=pgno))
            broken = True
            break
        next_ref = int.from_bytes(payload[:8], "little")
        free.extend(
            int.from_bytes(payload[8 + 8 * i : 16 + 8 * i], "little") for i in range(page.count)
        )
        referrer = f"free-list page {pgno}"
        pgno, expected_crc = ref_pgno(next_ref), ref_crc(next_ref)
    report.free_pages = len(free)
    report.free_list_pages = len(chain)
    if not broken and header.free_page_count != len(free):
        report.add(
            Problem(
                "space",
                f"the header counts {header.free_page_count} free pages, the free list holds "
                f"{len(free)}",
            )
        )
    free_set: set[int] = set()
    for page_number in free:
        if not HEADER_COPIES <= page_number < header.page_count:
            report.add(
                Problem(
                    "space", "the free list names a page outside the database", pgno=page_number
                )
            )
        elif page_number in free_set:
            report.add(Problem("space", "the page is listed free twice", pgno=page_number))
        elif page_number in tree:
            report.add(
                Problem("space", "the page is used by the tree and listed free", pgno=page_number)
            )
        elif page_number in chain:
            report.add(
                Problem(
                    "space",
                    "the free-list page lists itself (or a chain page) free",
                    pgno=page_number,
                )
            )
        free_set.add(page_number)
    for page_number in chain:
        if page_number in tree:
            report.add(
                Problem("space", "a free-list page is also used by the tree", pgno=page_number)
            )
    if broken or report.errors_in("tree"):
        return  # the accounting cannot balance with part of the tree or chain unread
    accounted = len(tree) + len(free) + len(chain)
    if accounted != header.page_count - HEADER_COPIES:
        lost = sorted(set(range(HEADER_COPIES, header.page_count)) - tree - free_set - set(chain))
        detail = f"; pages neither used nor free: {lost[:10]}" if lost else ""
        report.add(
            Problem(
                "space",
                f"space does not add up: {len(tree)} tree pages + {len(free)} free-list entries "
                f"+ {len(chain)} free-list pages = {accounted}, but the database has "
                f"{header.page_count - HEADER_COPIES} pages after the header copies{detail}",
            )
        )


# --------------------------------------------------------------------------- logical


class _LogicalChecker:
    """Checks the entries of the tree, fed in key order, against the catalog (see 4.-7.)."""

    def __init__(self, db: OfflineDatabase, report: IntegrityReport) -> None:
        self._db = db
        self._report = report
        self._catalog_entries: list[tuple[bytes, bytes]] = []
        self._catalog: CatalogView | None = None
        self._owners: dict[int, ObjectOwner] = {}
        self._defs: dict[str, TableDef] = {}
        self._codecs: dict[str, RecordCodec] = {}
        # object id -> [entries, first key] of entries no table owns
        self._orphans: dict[int, list[Any]] = {}
        # index id -> entry key -> pk (what the records imply / what the index holds)
        self._expected_index: dict[int, dict[bytes, bytes]] = {}
        self._found_index: dict[int, dict[bytes, bytes]] = {}
        self._unique_seen: dict[int, dict[bytes, bytes]] = {}
        # (lv id, pk, column) -> length (references) / [chunks, bytes, next chunk, problem]
        self._expected_lv: dict[tuple[int, bytes, int], int] = {}
        self._found_lv: dict[tuple[int, bytes, int], list[Any]] = {}
        self._pgno = 0

    def _add(self, area: str, message: str, *, table: str | None, key: str | None) -> None:
        self._report.add(Problem(area, message, pgno=self._pgno, table=table, key=key))

    def feed(self, pgno: int, keys: Iterable[bytes], values: Iterable[bytes]) -> None:
        self._pgno = pgno
        for key, value in zip(keys, values, strict=True):
            object_id = object_id_of(key)
            if object_id == CATALOG_ID:
                self._catalog_entries.append((key, value))
                continue
            self._load_catalog()
            owner = self._owners.get(object_id) if object_id is not None else None
            if owner is None:
                entry = self._orphans.setdefault(-1 if object_id is None else object_id, [0, key])
                entry[0] += 1
                continue
            if owner.role == "records":
                self._record(owner.table, key, value)
            elif owner.role == "index":
                assert object_id is not None
                self._found_index.setdefault(object_id, {})[key] = value
            else:
                self._chunk(owner.table, key, value)

    def _load_catalog(self) -> None:
        if self._catalog is not None:
            return
        catalog = decode_catalog(self._catalog_entries)
        self._catalog = catalog
        for message, key in catalog.problems:
            self._report.add(Problem("catalog", message, key="0x" + key.hex()))
        self._defs = catalog.tables
        self._owners = object_owners(catalog.tables)
        for name, table_def in catalog.tables.items():
            self._codecs[name] = RecordCodec(table_def)
            self._report.tables[name] = TableCounts(
                index_entries={index.name: 0 for index in table_def.indexes}
            )
        self._catalog_entries = []

    # ----------------------------------------------------------------- entries

    def _read_long_value(
        self, table_def: TableDef, pk: bytes, column: int, ref: LongValueRef
    ) -> str | bytes:
        prefix = long_value_range(table_def, pk, column)
        chunks: list[tuple[int, bytes]] = []
        for key, value in iterate(self._db, self._db.root(), prefix, prefix_successor(prefix)):
            parsed = parse_long_value_key(key)
            if parsed is not None:
                chunks.append((parsed[2], value))
        data, problem = assemble_long_value(chunks, ref)
        if data is None:
            raise DatabaseCorrupted(f"long value of column {column}: {problem}")
        return data

    def _record(self, table: str, key: bytes, value: bytes) -> None:
        table_def = self._defs[table]
        pk = key[4:]
        shown = describe_key(pk)
        counts = self._report.tables[table]
        counts.records += 1
        try:
            record = self._codecs[table].decode(value)
        except JetError as exc:
            self._add("record", f"the record does not decode: {exc.detail}", table=table, key=shown)
            return

        def read(column: int, ref: LongValueRef) -> str | bytes:
            return self._read_long_value(table_def, pk, column, ref)

        try:
            stored_pk = primary_key_bytes(table_def, record, read)
        except JetError as exc:
            self._add("record", f"primary key unreadable: {exc.detail}", table=table, key=shown)
            stored_pk = pk
        if stored_pk != pk:
            self._add(
                "record",
                f"the record's key columns say {describe_key(stored_pk)}, it is stored under "
                f"{shown}",
                table=table,
                key=shown,
            )
        for position, ref in long_value_refs(table_def, record):
            if ref.lv_id != position:
                self._add(
                    "long_value",
                    f"the reference in column {table_def.columns[position].name!r} names "
                    f"column position {ref.lv_id}",
                    table=table,
                    key=shown,
                )
            self._expected_lv[(table_def.lv_id, pk, position)] = ref.length
        try:
            entries = index_entries(table_def, record, pk, read)
        except JetError as exc:
            self._add(
                "index",
                f"index entries cannot be computed: {exc.detail}",
                table=table,
                key=shown,
            )
            return
        for index_id, (entry, unique) in entries.items():
            self._expected_index.setdefault(index_id, {})[entry] = pk
            if unique is not None:
                seen = self._unique_seen.setdefault(index_id, {})
                other = seen.get(unique)
                if other is not None:
                    self._add(
                        "index",
                        f"unique index {self._owners[index_id].index!r}: the record has the "
                        f"same key as record {describe_key(other)}",
                        table=table,
                        key=shown,
                    )
                else:
                    seen[unique] = pk

    def _chunk(self, table: str, key: bytes, value: bytes) -> None:
        parsed = parse_long_value_key(key)
        if parsed is None:
            self._add(
                "long_value", "a long-value key is too short", table=table, key="0x" + key.hex()
            )
            return
        pk, column, chunk = parsed
        self._report.tables[table].long_value_chunks += 1
        object_id = object_id_of(key)
        assert object_id is not None
        state = self._found_lv.setdefault((object_id, pk, column), [0, 0, 0, None])
        if chunk != state[2] and state[3] is None:
            state[3] = f"chunk {state[2]} is missing (next found: {chunk})"
        state[0] += 1
        state[1] += len(value)
        state[2] = chunk + 1

    # ----------------------------------------------------------------- end

    def finish(self) -> None:
        self._load_catalog()
        report = self._report
        for object_id, (count, first) in sorted(self._orphans.items()):
            report.add(
                Problem(
                    "catalog",
                    f"{count} entr{'y' if count == 1 else 'ies'} of object id {object_id}, which "
                    "no table in the catalog owns (a table whose catalog entry was lost?)",
                    key="0x" + bytes(first).hex(),
                )
            )
        for index_id in sorted(set(self._expected_index) | set(self._found_index)):
            owner = self._owners[index_id]
            table = owner.table
            expected = self._expected_index.get(index_id, {})
            found = self._found_index.get(index_id, {})
            report.tables[table].index_entries[owner.index or ""] = len(found)
            prefix_length = len(object_prefix(index_id))
            for entry, pk in expected.items():
                got = found.get(entry)
                if got is None:
                    report.add(
                        Problem(
                            "index",
                            f"index {owner.index!r} has no entry for the record",
                            table=table,
                            key=describe_key(pk),
                        )
                    )
                elif got != pk:
                    report.add(
                        Problem(
                            "index",
                            f"index {owner.index!r} entry's value names {describe_key(got)}",
                            table=table,
                            key=describe_key(pk),
                        )
                    )
            for entry, pk in found.items():
                if entry not in expected:
                    report.add(
                        Problem(
                            "index",
                            f"index {owner.index!r} has an entry "
                            f"{describe_key(entry[prefix_length:])} that matches no record "
                            f"(it names record {describe_key(pk)})",
                            table=table,
                            key=describe_key(pk),
                        )
                    )
        for lv_key, length in self._expected_lv.items():
            lv_id, pk, column = lv_key
            owner = self._owners[lv_id]
            table_def = self._defs[owner.table]
            name = table_def.columns[column].name if column < len(table_def.columns) else column
            state = self._found_lv.pop(lv_key, None)
            if state is None:
                problem = "has no chunk at all"
            elif state[3] is not None:
                problem = state[3]
            elif state[1] != length:
                problem = f"has {state[1]} bytes in {state[0]} chunk(s), the record says {length}"
            else:
                report.tables[owner.table].long_values += 1
                continue
            report.add(
                Problem(
                    "long_value",
                    f"the long value of column {name!r} {problem}",
                    table=owner.table,
                    key=describe_key(pk),
                )
            )
        for (lv_id, pk, column), state in sorted(self._found_lv.items()):
            owner = self._owners[lv_id]
            report.add(
                Problem(
                    "long_value",
                    f"{state[0]} orphan long-value chunk(s) of column position {column}: no "
                    "record refers to them",
                    table=owner.table,
                    key=describe_key(pk),
                )
            )
