"""The database page file: header pair, page reads through the node cache, free space, and the
page side of a checkpoint.

File layout: page 0 and page 1 hold the two copies of the database header
(`jetstore.format.dbheader`); every other page is a B+tree branch or leaf, or a free-list page
(`jetstore.format.page` envelope). Free-list page payload: u64 reference to the next free-list
page (`jetstore.pages.btree.child_ref`: page number | page CRC32C << 32; 0 = last), then u64
page numbers (the page's entry count says how many).

Invariants:
- Copy-on-write: a checkpoint writes dirty nodes only to pages that no durable header and no
  open snapshot can reach: pages from `_free`, or new pages past the end of the file.
- Header writes go copy 0, sync, copy 1, sync; a torn write damages at most one copy and the
  reader takes the valid copy with the highest sequence number.
- A page freed by a commit at log position S (`note_freed`) becomes reusable only once the
  durable header is at a position >= S (the header no longer reaches it), no open
  snapshot is older than S (no reader reaches it) and no pin (`pin`: a running backup
  copying the tree of an older header) is older than S. Until then it waits in `_pending`.
- The persisted free list of a header lists exactly the pages free in that header's tree:
  the reusable pages, the pages freed at or before its checkpoint position, and the previous
  free-list chain; never a page the tree uses.
- A file shorter than one page, or ending before a page the header counts, is
  `DatabaseCorrupted` saying it is truncated (with the file's size), never a decoding error
  about the short read.
- Every page the header reaches is read through a reference naming its exact image (D12): the
  header holds the root's and the first free-list page's CRC32C, branches and free-list pages
  hold their successors'. A valid but different image of a page (a lost write) is
  `ReadLostFlushVerifyFailure`, never data. Page numbers stay within `MAX_PGNO` (32 bits).
- A file opened for writing (`create`, `open(writable=True)`) is locked exclusively
  (`jetstore.io.locking.lock_file`) before anything in it is read or written, and stays locked
  until `close()`: no two instances (another directory holding a hard link or symlink to it,
  in this process or another) ever write one database file. Read-only opens take no lock.
- `check_path` (at every checkpoint) fails loudly when the file was deleted, moved or replaced
  behind the instance's back: writes to it would succeed and vanish at close.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import struct
import threading
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from jetstore.errors import (
    DatabaseCorrupted,
    DatabaseDuplicate,
    FileNotFound,
    InstanceUnavailable,
    JetError,
    OutOfDatabaseSpace,
    PageNotInitialized,
    page_damage_hint,
)
from jetstore.format.dbheader import (
    HEADER_COPIES,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    encode_db_header,
    peek_page_size,
)
from jetstore.format.page import PageType, decode_page, encode_page, payload_capacity
from jetstore.format.positions import LogPosition
from jetstore.io.files import File, FileSystem
from jetstore.io.handles import release_all
from jetstore.io.locking import FileLock, lock_file
from jetstore.pages.btree import (
    MAX_PGNO,
    Node,
    check_page_crc,
    child_ref,
    decode_node,
    dirty_nodes_postorder,
    encode_node,
    leaf_get,
    leaf_search,
    node_ref,
    page_crc_of,
    ref_crc,
)
from jetstore.pages.cache import CacheBudget, NodeCache
from jetstore.pages.pointindex import PointReadIndex

_FREELIST_HEAD = struct.Struct("<Q")
#: Suffix of a database file being created (never opened as a database).
CREATING_SUFFIX = ".creating"
_U64 = struct.Struct("<Q")
#: Most pages a checkpoint writes with one call (and holds encoded at once).
_WRITE_BATCH = 256


@dataclass
class CheckpointPlan:
    """What one checkpoint writes for one database, decided under the commit lock."""

    position: LogPosition
    root: Node | None
    dirty: list[tuple[Node, Node | None, int]]
    checkpoint_seq: int
    chain: list[int]
    free_list: list[int]
    old_chain: list[int]
    page_count: int
    pages_written: int = 0
    #: CRC32C of the first free-list page once written (0 for an empty chain).
    freelist_crc: int = 0
    extra: dict[str, object] = field(default_factory=dict)


def truncated_hint(path: str) -> str:
    """What to do about a database file that ends before its pages do."""
    return (
        "The file was cut short (an interrupted copy, a full disk, or a truncation): restore "
        f"the database from a backup. If there is none, `jetstore repair '{path}'` reports "
        "what can be salvaged (and with --accept-data-loss keeps it)."
    )


class DatabaseFile:
    """One open `NAME.edb` file. Thread-safe: readers load pages while a checkpoint writes."""

    def __init__(
        self,
        fs: FileSystem,
        file: File,
        header: DatabaseHeader,
        *,
        cache_pages: int,
        cache_budget: CacheBudget | None = None,
        problems: list[str] | None = None,
        lock: FileLock | None = None,
    ) -> None:
        self._fs = fs
        self._file = file
        self._lock = lock
        self.path = file.path
        self.page_size = header.page_size
        self._header = header
        self.problems = problems or []
        # A header copy is still damaged on disk (`problems`): `repair_header` rewrites it,
        # and so does any header write.
        self.header_damaged = bool(self.problems)
        if cache_budget is not None:  # the instance's cache_size, in this file's pages
            cache_pages = cache_budget.limit // header.page_size
        self.cache = NodeCache(cache_pages, page_size=header.page_size, budget=cache_budget)
        self._cached = self.cache.nodes.get  # `lookup`'s inline cache hits
        # Describes no tree until the database publishing this file's trees resets it.
        self.point_index = PointReadIndex()
        self.cache.on_drop = self.point_index.forget
        self.cache.on_clear = self.point_index.clear
        self.cache.on_evict = self.point_index.evicted
        self._space_lock = threading.Lock()
        self._header_lock = threading.Lock()
        self._free: list[int] = []
        self._pending: deque[tuple[LogPosition, list[int]]] = deque()
        self._chain: list[int] = []
        self._page_count = header.page_count
        self._pins: dict[int, LogPosition] = {}
        self._next_pin = 1
        self.pages_read = 0
        self.pages_written = 0
        self._load_free_list()

    # ----------------------------------------------------------------- create / open

    @classmethod
    def create(
        cls,
        fs: FileSystem,
        path: str,
        header: DatabaseHeader,
        *,
        owner: str,
        cache_pages: int,
        cache_budget: CacheBudget | None = None,
        holder: str | None = None,
    ) -> DatabaseFile:
        if fs.exists(path):
            raise DatabaseDuplicate(
                f"database file '{path}' already exists",
                hint="open it with create=False, or choose another name",
                path=path,
            )
        header = dataclasses.replace(header, header_seq=1, page_count=HEADER_COPIES)
        # Built under a temporary name and renamed only once both header copies are synced:
        # a crash during creation never leaves a `NAME.edb` without a valid header (recovery
        # re-creates the database from its log record instead).
        temporary = path + CREATING_SUFFIX
        if fs.exists(temporary):
            fs.unlink(temporary)
        # `opening`, not `file = fs.open(...)` before a `try`: a Ctrl-C as the open returned
        # left the file open (and, in an instance, registered under its owner) until the
        # instance closed; `opening` closes it on every way out of the block but success.
        with fs.opening(temporary, owner=owner, create=True, exclusive=True) as file:
            lock: FileLock | None = None
            try:
                # Locked under its temporary name: the lock is the inode's, so it holds once
                # renamed.
                lock = lock_file(
                    fs, file, owner=owner, holder=holder or owner, what="database file"
                )
                encoded = encode_db_header(header)
                file.pwrite(encoded, 0)
                file.pwrite(encoded, header.page_size)
                file.fsync()
                fs.rename(temporary, path)
                fs.fsync_directory(os.path.dirname(path) or ".", owner=owner)
                file.path = path
                return cls(
                    fs, file, header, cache_pages=cache_pages, cache_budget=cache_budget, lock=lock
                )
            except BaseException:
                # Before the descriptor closes (`opening` closes it), while the fd is ours.
                release_all(lock.release if lock is not None else None)
                raise

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        path: str,
        *,
        owner: str,
        cache_pages: int,
        cache_budget: CacheBudget | None = None,
        writable: bool = True,
        lock: bool | None = None,
        holder: str | None = None,
        repair: bool = True,
    ) -> DatabaseFile:
        """Open `path`; `lock` (default: `writable`) takes the file's exclusive lock first,
        refused with `FileAccessDenied` naming the holder while another instance has it.
        `holder` names this opener in such a refusal (default: `owner`).

        A damaged header copy (`problems`) of a writable open is rewritten from the other one
        at once, unless `repair=False`: then the opener decides first whether it takes the
        file at all, and calls `repair_header` (or writes a header) only once it does, so
        that a file it refuses is left as it was."""
        # As in `create`: closed by `opening` if anything fails, a Ctrl-C as it opens too.
        with fs.opening(path, owner=owner, writable=writable) as file:
            held: FileLock | None = None
            try:
                if writable if lock is None else lock:
                    # Before the header is read: what another instance is writing is not read
                    # (or "repaired" below) as if it were ours.
                    held = lock_file(
                        fs, file, owner=owner, holder=holder or owner, what="database file"
                    )
                first = file.pread(4096, 0)
                page_size = peek_page_size(first)
                if page_size is None:
                    # The first copy cannot even say its page size: try every size for copy 1.
                    page_size = _guess_page_size(file) or 8192
                size = file.size()
                if size < page_size:
                    # Else both header copies fail on their own terms ("block size field says
                    # 8192, expected 5000"), which hides what happened: the file was cut short.
                    raise DatabaseCorrupted(
                        f"'{path}' is {size} bytes, shorter than one page ({page_size} bytes): "
                        "it is truncated",
                        hint=truncated_hint(path),
                        path=path,
                    )
                copy0 = file.pread(page_size, 0)
                copy1 = file.pread(page_size, page_size)
                header, problems = choose_db_header(copy0, copy1, path=path)
                db = cls(
                    fs,
                    file,
                    header,
                    cache_pages=cache_pages,
                    cache_budget=cache_budget,
                    problems=problems,
                    lock=held,
                )
                if repair and writable:
                    db.repair_header()
                return db
            except BaseException:
                # The lock before the descriptor closes (`opening` closes it).
                release_all(held.release if held is not None else None)
                raise

    def close(self) -> None:
        # Every step even when one is interrupted (Ctrl-C, `release_all`) or fails (close(2)
        # may report EIO; the descriptor is gone all the same): a database detached from an
        # instance that goes on must not stay open, or locked, until it closes.
        release_all(
            # Before the descriptor closes, while the fd is still ours.
            self._lock.release if self._lock is not None else None,
            self._file.close,
            self.cache.release,
        )

    @property
    def locked(self) -> bool:
        """True while this opener holds the file's exclusive lock."""
        return self._lock is not None and self._lock.held

    def check_path(self) -> None:
        """Raise `FileNotFound` if the file's path no longer names the file open here.

        A database file deleted (or replaced) while the instance has it open takes every
        later write with it: commits, checkpoints and a clean close all succeed, and the next
        open finds no database. Checked at every checkpoint (two system calls), so the
        instance stops (D9) while the data is still in the open file and the log.
        """
        problem = self._file.path_problem()
        if problem is None:
            return
        raise FileNotFound(
            f"database file '{self.path}' {problem} while the instance had it open; its "
            "changes since the last checkpoint are in the log, the rest only in the open file",
            hint=f"put the file back at '{self.path}' before the instance is closed: while "
            f"this process (pid {os.getpid()}) runs, its contents can be copied back from "
            f"/proc/{os.getpid()}/fd/{self._file.fd}; otherwise restore it from backup. Do "
            "not create a new database of that name: reopen the instance once the file is "
            "back, and recovery replays the log into it",
            path=self.path,
        )

    @property
    def closed(self) -> bool:
        return self._file.closed

    def _closed_error(self) -> InstanceUnavailable:
        return InstanceUnavailable(
            f"database file '{self.path}' was closed while it was still being read: its "
            "instance was closed (or the database detached)",
            hint="end every transaction and scan before closing the instance; open it again "
            "to read on",
            path=self.path,
        )

    # ----------------------------------------------------------------- header

    @property
    def header(self) -> DatabaseHeader:
        """The last header written (or read at open): the durable one."""
        return self._header

    def write_header(
        self,
        *,
        raise_max_required: int | None = None,
        unless_clean: bool = False,
        **changes: object,
    ) -> DatabaseHeader:
        """Write both header copies with `changes` applied to the durable header.

        `raise_max_required` raises `generation_max_required` to at least that generation and
        never lowers it: a log roll and a checkpoint may both write it, in either order.
        `unless_clean`: leave a clean header as it is (returned unwritten). Asked under the
        header lock, as the write is: a roll that asked before it wrote raised the required
        generation of the clean header a detach wrote in between.
        """
        with self._header_lock:
            if unless_clean and self._header.state is DatabaseState.CLEAN:
                return self._header
            if raise_max_required is not None:
                changes["generation_max_required"] = max(
                    self._header.generation_max_required, raise_max_required
                )
            header = dataclasses.replace(self._header, **changes)  # type: ignore[arg-type]
            return self._write_header_copies(header)

    def repair_header(self) -> bool:
        """Rewrite a header copy found damaged at open from the other one (both copies of
        the chosen header); True if one was rewritten, False if none needed it."""
        with self._header_lock:
            if not self.header_damaged:
                return False
            self._write_header_copies(self._header)
            return True

    def _write_header_copies(self, header: DatabaseHeader) -> DatabaseHeader:
        header = dataclasses.replace(header, header_seq=self._header.header_seq + 1)
        encoded = encode_db_header(header)
        self._file.pwrite(encoded, 0)
        self._file.fdatasync()
        self._file.pwrite(encoded, header.page_size)
        self._file.fdatasync()
        self._header = header
        self.header_damaged = False
        return header

    # ----------------------------------------------------------------- pages

    def load(self, ref: int) -> Node:
        """The node `ref` names (NodeStore protocol), from the cache or read and verified.

        A cached node is the image its page was last written or read with: the page's
        reference can only change when the page is freed, and freeing drops it from the cache.
        """
        pgno = ref & MAX_PGNO
        node = self.cache.get(pgno)
        if node is not None:
            return node
        if pgno < HEADER_COPIES or pgno >= self._page_count:
            raise PageNotInitialized(
                f"page {pgno} of '{self.path}' is outside the database "
                f"(pages {HEADER_COPIES}..{self._page_count - 1} are in use)",
                hint=page_damage_hint(self.path, "A reference in the tree is damaged. "),
                path=self.path,
            )
        try:
            data = self._read_page(pgno)
            node = decode_node(
                pgno, data, path=self.path, page_size=self.page_size, expected_crc=ref_crc(ref)
            )
        except JetError:
            if self._file.closed:
                # Closed under a reader (its instance closed): not a damaged page, and not
                # a bug of the caller's either.
                raise self._closed_error() from None
            raise
        self.pages_read += 1
        self.cache.put(pgno, node)
        return node

    def lookup(self, root: Node | None, key: bytes, fill: bool = True) -> bytes | None:
        """`jetstore.pages.btree.lookup` of `key` in this file's tree at `root` (same result).

        The point-read path. In the tree the database published last, a key whose leaf a
        point read reached before is answered by the point-read index (one hash probe, see
        `jetstore.pages.pointindex` for why that is exact); the first read reaching a written
        leaf of that tree adds the leaf's entries to it; after an eviction of the node cache,
        the next few reads descend instead, so that its CLOCK sees which leaves are read (see
        `jetstore.pages.pointindex`, invariant 6). Otherwise the tree is descended: a
        child found in the node cache is taken inline (the hit marked and counted as
        `NodeCache.get` does) instead of through `load` and `NodeCache.get`, two calls per
        tree level; anything else goes through `load`.

        `fill=False` (an insert's duplicate check: a one-off probe of a key that is usually
        absent) neither fills the index nor gives the leaf an `index` dict: it bisects.
        """
        node = root
        if node is None:
            return None
        points = self.point_index
        version = points.version
        if node is points.probe:
            value = points.entries.get(key)
            # Only if no commit changed the index meanwhile (its invariant 2).
            if value is not None and points.version == version:
                points.hits += 1
                return value
        # Read before the descent: a descent owed for an eviction this read itself causes
        # would record this (likely cold) read instead of a later one.
        owed = points.owed
        cached = self._cached
        hits = 0
        while not node.leaf:
            child = node.children[bisect_right(node.keys, key)]
            if type(child) is Node:
                node = child
            else:
                pgno = child & MAX_PGNO
                hit = cached(pgno)
                if hit is None:
                    node = self.load(child)
                else:
                    hit.referenced = True
                    hits += 1
                    node = hit
        if hits:
            self.cache.hits += hits
        if owed and root is points.root:
            points.descended()  # a sample for the cache's CLOCK (pointindex invariant 6)
        # The first read of the described tree to reach a written leaf adds its entries.
        if (
            fill
            and node.indexed_in != points.generation
            and root is points.root
            and node.pgno is not None
        ):
            points.fill(root, node, self.cache.nodes)
        # A leaf's own dict answers in one probe. A leaf whose entries are in the index (this
        # key is not, a commit is changing the index, or the read descended for the cache's
        # CLOCK) is bisected, as for a one-off probe: no dict of its own. Any other leaf as
        # `btree.lookup` reads it.
        index = node.index
        if index is not None:
            return index.get(key)
        if not fill:
            return leaf_search(node, key)
        if node.indexed_in == points.generation:
            value = leaf_search(node, key)
            if value is not None and root is points.root and key not in points.entries:
                # A key of a filled leaf of the tree described, missing from the index: a
                # leaf the cache dropped since took it out (`PointReadIndex.forget` removes
                # a dropped leaf's keys, which a copy of that leaf filled later shares).
                # Filled again, or the index would never answer this leaf's keys until it
                # is next emptied.
                points.fill(root, node, self.cache.nodes)
            return value
        return leaf_get(node, key)

    def root(self) -> Node | None:
        header = self._header
        pgno = header.root_pgno
        return None if pgno == 0 else self.load(child_ref(pgno, header.root_crc))

    def _read_page(self, pgno: int) -> bytes:
        """Page `pgno` as read; DatabaseCorrupted naming the file's size if the file ends
        before the page does (the header says the page exists: the file was truncated)."""
        data = self._file.pread(self.page_size, pgno * self.page_size)
        if len(data) < self.page_size:
            size = self._file.size()
            where = (
                "beyond the end of the file"
                if not data
                else f"cut short by the end of the file ({len(data)} of {self.page_size} bytes)"
            )
            raise DatabaseCorrupted(
                f"page {pgno} of '{self.path}' is {where} ({size} bytes; the database has "
                f"{self._page_count} pages of {self.page_size} bytes): the file is truncated",
                hint=truncated_hint(self.path),
                path=self.path,
            )
        return data

    def read_raw_page(self, pgno: int) -> bytes:
        return self._file.pread(self.page_size, pgno * self.page_size)

    @property
    def page_count(self) -> int:
        return self._page_count

    # ----------------------------------------------------------------- free space

    def _load_free_list(self) -> None:
        pgno = self._header.freelist_pgno
        expected_crc = self._header.freelist_crc
        referrer = "the database header"
        seen: set[int] = set()
        free: list[int] = []
        chain: list[int] = []
        while pgno:
            if pgno in seen or not HEADER_COPIES <= pgno < self._page_count:
                raise DatabaseCorrupted(
                    f"free-list chain of '{self.path}' is broken at page {pgno}",
                    hint=page_damage_hint(self.path, "The list of free pages is damaged. "),
                    path=self.path,
                )
            seen.add(pgno)
            chain.append(pgno)
            data = self._read_page(pgno)
            page = decode_page(pgno, data, path=self.path)
            check_page_crc(pgno, data, expected_crc, path=self.path, referrer=referrer)
            if page.page_type != PageType.FREE_LIST:
                raise DatabaseCorrupted(
                    f"page {pgno} of '{self.path}' should be a free-list page", path=self.path
                )
            payload = bytes(page.payload)
            # A page that verifies can still hold what no checkpoint writes (a bug, another
            # program): a payload not of its entry count was a bare struct.error, and an
            # entry naming a header copy or a page past the end was handed out by
            # `_allocate` (a node written over header copy 1).
            if len(payload) != _FREELIST_HEAD.size + _U64.size * page.count:
                raise DatabaseCorrupted(
                    f"free-list page {pgno} of '{self.path}' has a payload of {len(payload)} "
                    f"bytes for {page.count} entries",
                    hint=page_damage_hint(self.path, "The list of free pages is damaged. "),
                    path=self.path,
                )
            (next_ref,) = _FREELIST_HEAD.unpack_from(payload, 0)
            entries = struct.unpack_from(f"<{page.count}Q", payload, _FREELIST_HEAD.size)
            for entry in entries:
                if not HEADER_COPIES <= entry < self._page_count:
                    raise DatabaseCorrupted(
                        f"free-list page {pgno} of '{self.path}' lists page {entry}, outside "
                        f"the database (pages {HEADER_COPIES}..{self._page_count - 1})",
                        hint=page_damage_hint(self.path, "The list of free pages is damaged. "),
                        path=self.path,
                    )
            free.extend(entries)
            referrer = f"free-list page {pgno}"
            pgno, expected_crc = next_ref & MAX_PGNO, ref_crc(next_ref)
        heapq.heapify(free)
        self._free = free
        self._chain = chain

    def note_freed(self, position: LogPosition, pgnos: list[int]) -> None:
        """Pages a commit ending at `position` stopped using (see the module invariants)."""
        if pgnos:
            with self._space_lock:
                self._pending.append((position, list(pgnos)))

    def _allocate(self) -> int:
        if self._free:
            pgno = heapq.heappop(self._free)
            self.cache.discard(pgno)
            return pgno
        pgno = self._page_count
        if pgno > MAX_PGNO:
            raise OutOfDatabaseSpace(
                f"database '{self.path}' has reached its maximum of {MAX_PGNO + 1} pages",
                hint="delete data and run `jetstore compact`, or split the data over databases",
                path=self.path,
            )
        self._page_count += 1
        return pgno

    def pin(self, taking: list[int] | None = None) -> tuple[int, DatabaseHeader]:
        """Keep every page the durable header reaches from being reused until `unpin`.

        Returns (token, that header). Call it with no checkpoint in flight (the instance holds
        its checkpoint lock): pages the header reaches are then either in its tree or waiting
        in `_pending` at positions after the header's, and the pin holds those back.
        `taking` gets the token before the pin is in force: a caller interrupted (Ctrl-C) as
        this returns, its result lost, still finds the token there to `unpin`.
        """
        with self._space_lock:
            token = self._next_pin
            self._next_pin += 1
            if taking is not None:
                taking.append(token)
            header = self._header
            self._pins[token] = header.checkpoint_position
            return token, header

    def unpin(self, token: int) -> None:
        """End a pin (idempotent); its pages are released by the next checkpoint."""
        with self._space_lock:
            self._pins.pop(token, None)

    @property
    def pins(self) -> int:
        return len(self._pins)

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def pending_free_pages(self) -> int:
        return sum(len(p) for _, p in self._pending)

    # ----------------------------------------------------------------- checkpoint

    def plan_checkpoint(self, root: Node | None, position: LogPosition) -> CheckpointPlan:
        """Assign pages to the dirty nodes of `root` and lay out the free list.

        Called under the commit lock: no commit changes the tree or frees pages meanwhile.
        """
        with self._space_lock:
            dirty = dirty_nodes_postorder(root)
            for node, _parent, _index in dirty:
                node.pgno = self._allocate()
            freed_by_p = [p for s, pages in self._pending if s <= position for p in pages]
            old_chain = list(self._chain)
            per_page = free_list_capacity(self.page_size)
            chain: list[int] = []
            while len(chain) * per_page < len(self._free) + len(freed_by_p) + len(old_chain):
                chain.append(self._allocate())
            free_list = sorted([*self._free, *freed_by_p, *old_chain])
            return CheckpointPlan(
                position=position,
                root=root,
                dirty=dirty,
                checkpoint_seq=self._header.checkpoint_seq + 1,
                chain=chain,
                free_list=free_list,
                old_chain=old_chain,
                page_count=self._page_count,
            )

    def write_checkpoint_pages(self, plan: CheckpointPlan) -> None:
        """Write the plan's pages and sync them (outside the commit lock).

        The log must already be durable up to `plan.position` (WAL rule): the caller does it.

        Pages are written as they are encoded, a run of consecutive page numbers (at most
        `_WRITE_BATCH` pages) at a time: holding every image until the end doubled the
        memory of a large checkpoint (the dirty nodes, then as many page images again).
        `plan_checkpoint` numbers the dirty nodes in postorder from the lowest free page up,
        so the runs are as long as the free space allows.
        """
        page_size = self.page_size
        seq = plan.checkpoint_seq
        file = self._file
        # A file shorter than the pages its durable header counts was cut short: writing a
        # page past its end would leave a hole of zeros where the missing pages were, and a
        # later read of one would call it a blank page, not a truncated file (and the next
        # header would count the hole as written pages). Stop before writing anything.
        counted = self._header.page_count
        size = file.size()
        if size < counted * page_size:
            raise DatabaseCorrupted(
                f"'{self.path}' is {size} bytes, shorter than the {counted} pages of "
                f"{page_size} bytes its header counts: the file is truncated",
                hint=truncated_hint(self.path),
                path=self.path,
            )
        batch: list[bytes] = []
        batch_start = -1
        written = 0

        def add(pgno: int, data: bytes) -> None:
            nonlocal batch, batch_start, written
            if batch and (pgno != batch_start + len(batch) or len(batch) >= _WRITE_BATCH):
                file.pwrite(b"".join(batch), batch_start * page_size)
                batch = []
            if not batch:
                batch_start = pgno
            batch.append(data)
            written += 1

        # Children before parents (postorder): a parent's encoding takes each child's CRC.
        for node, _parent, _index in plan.dirty:
            pgno = node.pgno
            assert pgno is not None
            data = encode_node(node, page_size, pgno, seq)
            node.page_crc = page_crc_of(data)
            node.image = None  # written: the payload made by replay is not needed any more
            add(pgno, data)
        free_pages = encode_free_list(plan.chain, plan.free_list, page_size, seq)
        plan.freelist_crc = page_crc_of(free_pages[0][1]) if free_pages else 0
        for pgno, data in free_pages:
            add(pgno, data)
        if batch:
            file.pwrite(b"".join(batch), batch_start * page_size)
        file.fdatasync()
        plan.pages_written = written
        self.pages_written += written

    def finish_checkpoint(self, plan: CheckpointPlan, oldest_snapshot: LogPosition | None) -> None:
        """After the header naming `plan` is durable: release pages, swizzle, cache nodes."""
        with self._space_lock:
            for pgno in plan.old_chain:
                heapq.heappush(self._free, pgno)
            self._chain = list(plan.chain)
            limit = plan.position
            if oldest_snapshot is not None and oldest_snapshot < limit:
                limit = oldest_snapshot
            if self._pins:
                limit = min(limit, *self._pins.values())
            while self._pending and self._pending[0][0] <= limit:
                _, pages = self._pending.popleft()
                for pgno in pages:
                    self.cache.discard(pgno)
                    heapq.heappush(self._free, pgno)
        for node, _parent, _index in plan.dirty:
            if not node.leaf:
                children = node.children
                for i, child in enumerate(children):
                    if type(child) is Node and child.pgno is not None:
                        children[i] = node_ref(child)
            assert node.pgno is not None
            self.cache.put(node.pgno, node)

    def header_for_plan(
        self, plan: CheckpointPlan, *, raise_max_required: int | None = None, **changes: Any
    ) -> DatabaseHeader:
        """Write both header copies naming the plan's tree; returns the new durable header."""
        root = plan.root
        return self.write_header(
            raise_max_required=raise_max_required,
            root_pgno=0 if root is None else root.pgno,
            root_crc=0 if root is None else root.page_crc,
            freelist_pgno=plan.chain[0] if plan.chain else 0,
            freelist_crc=plan.freelist_crc,
            free_page_count=len(plan.free_list),
            page_count=plan.page_count,
            checkpoint_seq=plan.checkpoint_seq,
            checkpoint_position=plan.position,
            **changes,
        )

    def sync(self) -> None:
        self._file.fdatasync()


def free_list_capacity(page_size: int) -> int:
    """How many page numbers one free-list page holds."""
    return (payload_capacity(page_size) - _FREELIST_HEAD.size) // _U64.size


def chain_length(free_count: int, page_size: int) -> int:
    """Free-list pages needed to list `free_count` pages (the chain's own pages excluded)."""
    per_page = free_list_capacity(page_size)
    return -(-free_count // per_page)


def encode_free_list(
    chain: list[int], entries: list[int], page_size: int, checkpoint_seq: int
) -> list[tuple[int, bytes]]:
    """The free-list pages listing `entries` (ascending) in the pages `chain`, linked in
    order; returns (page number, page image) pairs in chain order (the first is the head, whose
    CRC the header records)."""
    per_page = free_list_capacity(page_size)
    pages: list[tuple[int, bytes]] = []
    next_ref = 0
    # Last page first: each page's link names its successor's exact image.
    for i in range(len(chain) - 1, -1, -1):
        pgno = chain[i]
        chunk = entries[i * per_page : (i + 1) * per_page]
        payload = _FREELIST_HEAD.pack(next_ref) + struct.pack(f"<{len(chunk)}Q", *chunk)
        data = encode_page(pgno, PageType.FREE_LIST, len(chunk), payload, page_size, checkpoint_seq)
        pages.append((pgno, data))
        next_ref = child_ref(pgno, page_crc_of(data))
    pages.reverse()
    return pages


def _guess_page_size(file: File) -> int | None:
    for size in (4096, 8192, 16384, 32768):
        data = file.pread(size, size)
        try:
            if len(data) == size and peek_page_size(data) == size:
                return size
        except JetError:
            continue
    return None
