"""`write_database_file`: a new, dense database file from sorted tree entries.

This module owns how the tools (compact, repair) lay out a database they rebuild: the tree is
built bottom-up (`jetstore.pages.btree.build_tree`: leaves about 90 % full, then the branch
levels), its pages numbered from 2 in the order `dirty_nodes_postorder` gives (sibling leaves
ascending, every child before its parent), written in runs, then both header copies, then one
fsync. There is no free page and no free list: ``page_count == 2 + tree pages``.

Invariants:
- The file is created under the name it is given and must not exist (the caller writes to a
  temporary name and renames it into place after checking it).
- Every page carries the header's `checkpoint_seq` (never newer than the header).
- Every parent and the header name the exact image of each page they reach (D12): a node's
  CRC is taken as it is encoded, before its parent is.
- On any failure the partial file is removed; nothing else is touched.
- A file that is to replace another (`like`) has its permission bits and owner from the
  start.

`swap_into_place` puts such a checked file in the place of the database: the old file first
hard-linked under the name that keeps it, then the rename (atomic), then the directory sync.
A swap that failed (or was interrupted) before the rename removes that link again: it would
be the live file under a second name, not a kept copy (the next open writes through it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable
from typing import Final

from jetstore.errors import JetError
from jetstore.format.dbheader import HEADER_COPIES, DatabaseHeader, encode_db_header
from jetstore.io.files import FileSystem
from jetstore.pages.btree import build_tree, dirty_nodes_postorder, encode_node, page_crc_of
from jetstore.tools.dbfile import OWNER

__all__ = ["swap_into_place", "write_database_file"]

#: Pages written per write call.
_RUN_PAGES: Final = 256


def write_database_file(
    fs: FileSystem,
    path: str,
    header: DatabaseHeader,
    items: Iterable[tuple[bytes, bytes]],
    *,
    owner: str = OWNER,
    like: str | None = None,
) -> DatabaseHeader:
    """Write a database file at `path` holding `items` (sorted, unique keys) under `header`.

    Only the tree and space fields of `header` are replaced (root, free list, page count);
    `header_seq` is raised by one. Returns the header written. The file is synced. With
    `like` (the file it is to replace), it takes that file's permission bits and owner before
    any data is written.
    """
    page_size = header.page_size
    seq = max(header.checkpoint_seq, 1)
    root = build_tree(items, page_size, epoch=1)
    nodes = dirty_nodes_postorder(root)
    with fs.opened(path, owner=owner, create=True, exclusive=True) as file:
        try:
            if like is not None:
                file.take_access_of(like)
            next_pgno = HEADER_COPIES
            run: list[bytes] = []
            run_start = next_pgno
            for node, _parent, _index in nodes:
                node.pgno = next_pgno
                data = encode_node(node, page_size, next_pgno, seq)
                node.page_crc = page_crc_of(data)
                run.append(data)
                next_pgno += 1
                if len(run) >= _RUN_PAGES:
                    file.pwrite(b"".join(run), run_start * page_size)
                    run_start += len(run)
                    run = []
            if run:
                file.pwrite(b"".join(run), run_start * page_size)
            written = dataclasses.replace(
                header,
                header_seq=header.header_seq + 1,
                checkpoint_seq=seq,
                root_pgno=0 if root is None else (root.pgno or 0),
                root_crc=0 if root is None else (root.page_crc or 0),
                freelist_pgno=0,
                freelist_crc=0,
                free_page_count=0,
                page_count=next_pgno,
            )
            encoded = encode_db_header(written)
            file.pwrite(encoded * HEADER_COPIES, 0)
            file.fsync()
        except BaseException:
            file.close()
            if fs.exists(path):
                fs.unlink(path)
            raise
    return written


def swap_into_place(fs: FileSystem, temporary: str, target: str, *, keep_as: str | None) -> None:
    """Rename `temporary` over `target` and sync the directory; with `keep_as` (a name that
    does not exist) the old `target` stays reachable there (see the module docstring)."""
    try:
        if keep_as is not None:
            fs.link(target, keep_as)
        fs.rename(temporary, target)
        fs.fsync_directory(os.path.dirname(target))
    except BaseException:
        # Judged by the files, not by a flag: an interrupt may come between a call's return
        # and the next statement. While `temporary` exists, `target` is still the old file.
        if keep_as is not None and fs.exists(temporary) and fs.exists(keep_as):
            with contextlib.suppress(JetError):
                fs.unlink(keep_as)
        raise
