"""A database image: the page file as one durable header named it, streamed and verified.

An image is what a backup copies of a database (and what offline backup and restore write):
a file of `header.page_count` pages where

- pages 0 and 1 hold the image header, twice: the source header with only its free-list
  fields changed (state, checkpoint position and required generations stay, so opening the
  image next to the logs replays from the header's checkpoint, as soft recovery does);
- every page the header's tree reaches is the source page, byte for byte, checked as it is
  read: CRC32C with its page number (a misdirected write is caught), the exact image its
  parent (or the header, for the root) was written with (a lost write is caught, D12), and
  the page type the tree expects there (a leaf where a leaf must be);
- every other page is free in the image: the lowest of them hold a new free-list chain that
  lists the rest, which are zeros (never read: a free page is written before it is used).

Invariants:
- The source pages the tree reaches do not change while the image is read: the caller holds
  a pin on them (`DatabaseFile.pin`) or the database is not open anywhere.
- The tree is walked before the first byte is streamed (only branch pages are read for it:
  the leaves are the children of the lowest branch level, every leaf being at one depth), so
  the image size and free list are known up front and the pages then stream in file order.
- A page that fails a check stops the image with `ReadVerifyFailure`,
  `ReadLostFlushVerifyFailure` or `DatabaseCorrupted` naming the file and page: a backup is
  never completed over a damaged page.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Protocol

from jetstore.errors import DatabaseCorrupted
from jetstore.format.dbheader import HEADER_COPIES, DatabaseHeader, encode_db_header
from jetstore.format.page import PageType, verify_page
from jetstore.pages.btree import (
    check_page_crc,
    child_ref,
    decode_node,
    page_crc_of,
    ref_crc,
    ref_pgno,
)
from jetstore.pages.pagefile import chain_length, encode_free_list

#: Pages read from the source per read call while streaming.
RUN_PAGES = 128


class PageSource(Protocol):
    """Random-access page reads from the source file."""

    def pread(self, size: int, offset: int) -> bytes: ...


class DatabaseImage:
    """The image of one database at one header; `chunks()` streams it."""

    def __init__(self, source: PageSource, header: DatabaseHeader, *, path: str) -> None:
        self._source = source
        self.header = header
        self.path = path
        self.page_size = header.page_size
        self.page_count = header.page_count
        # page -> the CRC32C its parent (or the header) expects of it
        self._leaves: dict[int, int] = {}
        self._branches: dict[int, int] = {}
        self._walk()
        unreachable = [
            pgno
            for pgno in range(HEADER_COPIES, self.page_count)
            if pgno not in self._leaves and pgno not in self._branches
        ]
        chain_count = 0
        while (
            chain_count < len(unreachable)
            and chain_length(len(unreachable) - chain_count, self.page_size) > chain_count
        ):
            chain_count += 1
        self._chain = unreachable[:chain_count]
        self._free_entries = unreachable[chain_count:]
        self._generated = encode_free_list(
            self._chain, self._free_entries, self.page_size, header.checkpoint_seq
        )
        self.image_header = dataclasses.replace(
            header,
            freelist_pgno=self._chain[0] if self._chain else 0,
            freelist_crc=page_crc_of(self._generated[0][1]) if self._generated else 0,
            free_page_count=len(self._free_entries),
        )

    @property
    def size(self) -> int:
        return self.page_count * self.page_size

    @property
    def tree_pages(self) -> int:
        return len(self._leaves) + len(self._branches)

    def _read(self, pgno: int) -> bytes:
        return self._source.pread(self.page_size, pgno * self.page_size)

    def _walk(self) -> None:
        root = self.header.root_pgno
        if root == 0:
            return
        level = [child_ref(root, self.header.root_crc)]
        seen: set[int] = set()
        while level:
            # Find out whether this level is the leaf level from its first page.
            first_pgno = ref_pgno(level[0])
            first = self._read(first_pgno)
            _page, ptype, _count, _seq, _plen = verify_page(
                first_pgno, first, path=self.path, page_size=self.page_size
            )
            if ptype == PageType.LEAF:
                self._leaves.update((ref_pgno(ref), ref_crc(ref)) for ref in level)
                return
            next_level: list[int] = []
            for ref in level:
                pgno = ref_pgno(ref)
                if pgno in seen or not HEADER_COPIES <= pgno < self.page_count:
                    raise DatabaseCorrupted(
                        f"page {pgno} of '{self.path}' is reached twice or lies outside the "
                        f"database ({self.page_count} pages)",
                        hint="the database is damaged: restore it from a backup",
                        path=self.path,
                    )
                seen.add(pgno)
                node = decode_node(
                    pgno,
                    self._read(pgno),
                    path=self.path,
                    page_size=self.page_size,
                    expected_crc=ref_crc(ref),
                )
                if node.leaf:
                    raise DatabaseCorrupted(
                        f"page {pgno} of '{self.path}' is a leaf at a branch level of the tree",
                        hint="the database is damaged: restore it from a backup",
                        path=self.path,
                    )
                self._branches[pgno] = ref_crc(ref)
                next_level.extend(child for child in node.children if isinstance(child, int))
            level = next_level
        raise DatabaseCorrupted(f"the tree of '{self.path}' has no leaves", path=self.path)

    def chunks(self) -> Iterator[bytes]:
        """The image in file order, in pieces of up to `RUN_PAGES` pages, each verified."""
        page_size = self.page_size
        header_page = encode_db_header(self.image_header)
        yield header_page * HEADER_COPIES
        generated = dict(self._generated)
        zero = bytes(page_size)
        leaves = self._leaves
        branches = self._branches
        pgno = HEADER_COPIES
        while pgno < self.page_count:
            count = min(RUN_PAGES, self.page_count - pgno)
            data = self._source.pread(count * page_size, pgno * page_size)
            if len(data) != count * page_size:
                raise DatabaseCorrupted(
                    f"'{self.path}' ends inside page {pgno + len(data) // page_size}, but its "
                    f"header says it has {self.page_count} pages",
                    hint="the database file was truncated: restore it from a backup",
                    path=self.path,
                )
            out: list[bytes] = []
            for i in range(count):
                current = pgno + i
                if current in leaves or current in branches:
                    page = data[i * page_size : (i + 1) * page_size]
                    _page, ptype, _n, _seq, _plen = verify_page(
                        current, page, path=self.path, page_size=page_size
                    )
                    expected = PageType.LEAF if current in leaves else PageType.BRANCH
                    check_page_crc(
                        current,
                        page,
                        leaves[current] if current in leaves else branches[current],
                        path=self.path,
                    )
                    if ptype != expected:
                        raise DatabaseCorrupted(
                            f"page {current} of '{self.path}' is a {ptype.name} page where the "
                            f"tree expects a {expected.name} page",
                            hint="the database is damaged: restore it from a backup",
                            path=self.path,
                        )
                    out.append(page)
                else:
                    out.append(generated.get(current, zero))
            yield b"".join(out)
            pgno += count
