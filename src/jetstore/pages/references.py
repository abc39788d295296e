"""Lost-write (and lost-page) detection over a page file read in file order (design D12).

The engine checks a page against its parent's reference as it reads it (`decode_node` with
`expected_crc`). Offline checkers that read a database file (or a backup image) sequentially,
without walking the tree, use `PageReferences` instead: they `add` every page that verified
and mark every all-zero page `blank` as they go, then `problems(header)` follows the header's
references (root, branches, the free-list chain) and names every reachable page that verified
but is not the image its referrer was written with (a lost write), and every reachable page
that is all zeros (a page the tree needs that was never written there, or was zeroed: alone,
such a page looks like an unused one).

Invariants:
- Only pages added (they verified: checksum with their page number) or marked blank are
  judged; a page that did not verify has been reported by its reader already, and what lies
  below it is not followed (its references cannot be trusted).
- A page whose image does not match is reported and not descended into: its references are
  those of an older tree.
- Memory: 5 bytes per page of the file, plus the child references of branch pages (8 bytes
  per child) and the link of each free-list page.
- Pure: no I/O; the pages given are only read.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Final

from jetstore.errors import JetError, PageNotInitialized, ReadLostFlushVerifyFailure
from jetstore.format.dbheader import DatabaseHeader
from jetstore.format.page import PAGE_HEADER_SIZE, PageType
from jetstore.pages.btree import child_ref, page_crc_of, ref_crc, ref_pgno

__all__ = ["PageReferences", "ReferenceProblem"]

_VERIFIED: Final = 1
_BLANK: Final = 2


@dataclass(frozen=True)
class ReferenceProblem:
    """A reachable page that is not the image its referrer names: another valid image (a
    lost write, `found_crc` set) or all zeros (`found_crc` None)."""

    pgno: int
    referrer: str
    expected_crc: int
    found_crc: int | None

    @property
    def error(self) -> type[JetError]:
        return PageNotInitialized if self.found_crc is None else ReadLostFlushVerifyFailure

    def describe(self) -> str:
        if self.found_crc is None:
            return (
                f"page {self.pgno} is all zeros, but {self.referrer} names it as a page written "
                f"with checksum {self.expected_crc:#010x}: the page was lost, zeroed or never "
                "written where it belongs"
            )
        return (
            f"page {self.pgno} verifies but is not the image {self.referrer} was written with "
            f"(checksum {self.found_crc:#010x}, expected {self.expected_crc:#010x}): a write "
            "of this page was lost or the page was overwritten with an older copy"
        )


class PageReferences:
    """The CRC of every verified page of a file, and the references its pages hold."""

    def __init__(self, pages: int) -> None:
        self._status = bytearray(pages)
        self._crcs = array("I", bytes(4 * pages))
        self._children: dict[int, bytes] = {}
        self._links: dict[int, int] = {}

    def add(self, pgno: int, page: bytes, page_type: PageType, entries: int) -> None:
        """Record a page that verified (`verify_page`) with its type and entry count."""
        if not 0 <= pgno < len(self._status):
            return
        self._status[pgno] = _VERIFIED
        self._crcs[pgno] = page_crc_of(page)
        start = PAGE_HEADER_SIZE
        if page_type is PageType.BRANCH:
            self._children[pgno] = page[start : start + 8 * (entries + 1)]
        elif page_type is PageType.FREE_LIST:
            self._links[pgno] = int.from_bytes(page[start : start + 8], "little")

    def blank(self, pgno: int) -> None:
        """Record an all-zero page (`PageNotInitialized` from `verify_page`)."""
        if 0 <= pgno < len(self._status):
            self._status[pgno] = _BLANK

    def problems(self, header: DatabaseHeader) -> list[ReferenceProblem]:
        """Every page reachable from `header` that is not the image referenced, in the order
        found (the tree first, then the free-list chain)."""
        status = self._status
        seen = bytearray(len(status))
        found: list[ReferenceProblem] = []
        # (reference, who holds it); popped last first, so the root goes on last.
        stack: list[tuple[int, str]] = []
        if header.freelist_pgno:
            stack.append(
                (child_ref(header.freelist_pgno, header.freelist_crc), "the database header")
            )
        if header.root_pgno:
            stack.append((child_ref(header.root_pgno, header.root_crc), "the database header"))
        while stack:
            ref, referrer = stack.pop()
            pgno = ref_pgno(ref)
            if pgno >= len(status) or not status[pgno] or seen[pgno]:
                continue
            seen[pgno] = 1
            expected = ref_crc(ref)
            if status[pgno] == _BLANK:
                found.append(ReferenceProblem(pgno, referrer, expected, None))
                continue
            crc = self._crcs[pgno]
            if crc != expected:
                found.append(ReferenceProblem(pgno, referrer, expected, crc))
                continue
            directory = self._children.get(pgno)
            if directory is not None:
                holder = f"branch page {pgno}"
                refs = struct.unpack(f"<{len(directory) // 8}Q", directory)
                stack.extend((child, holder) for child in reversed(refs))
            link = self._links.get(pgno)
            if link:
                stack.append((link, f"free-list page {pgno}"))
        return found
