"""Reading a database file offline, without an instance: what the admin tools share.

This module owns:

* `OfflineDatabase`: a `NAME.edb` opened read-only, its header chosen from the two copies
  (`choose_db_header`), and a `NodeStore` that reads and verifies pages straight from the
  file (CRC32C with the page number, via `decode_node`) through a small cache of decoded
  nodes;
* the refusals every tool applies before trusting a file: an instance has the directory open
  (`refuse_if_open`: `InstanceNameInUse`), the database was not shut down cleanly
  (`require_clean`: `DatabaseDirtyShutdown`, -550, telling to run `jetstore recover`);
* `exclusive_directory`: the instance directory lock, held while a tool rewrites a file;
* `decode_catalog`: the table definitions from the catalog entries (object 0), with every
  problem found instead of the first;
* `object_owners` and `describe_key`: which table object an object id is, and how a key is
  shown to an operator.

Invariants:
- Nothing here writes to a database file; `exclusive_directory` only creates `jetstore.lock`.
- A node handed out by `OfflineDatabase.load` was verified for the page number it was read
  from; nothing decoded from an unverified page is returned.
- `decode_catalog` never raises for bad entries: each becomes a problem, the table it
  concerns is left out.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from jetstore.errors import (
    CorruptionError,
    DatabaseCorrupted,
    DatabaseDirtyShutdown,
    FileAccessDenied,
    FileNotFound,
    InstanceNameInUse,
    InvalidPath,
    JetError,
    PageNotInitialized,
)
from jetstore.format.dbheader import (
    HEADER_COPIES,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    peek_page_size,
)
from jetstore.format.filenames import LOCK_FILE
from jetstore.format.page import PAGE_SIZES
from jetstore.io.files import File, FileSystem
from jetstore.io.locking import (
    HOLDER_INSTANCE,
    acquire_directory_lock,
    describe_lock_holder,
    is_locked,
    lock_holder_role,
)
from jetstore.pages.btree import Node, child_ref, decode_node, ref_crc, ref_pgno
from jetstore.tables.catalog import (
    CATALOG_PREFIX,
    NEXT_OBJECT_ID_KEY,
    TABLE_DEF_CHUNK_PREFIX,
    TABLE_ENTRY_PREFIX,
    chunked_table_def,
    decode_next_object_id,
    join_table_def_chunks,
)
from jetstore.tables.keys import decode_key
from jetstore.tables.schema import TableDef, decode_table_def

__all__ = [
    "OWNER",
    "CatalogView",
    "ObjectOwner",
    "OfflineDatabase",
    "decode_catalog",
    "describe_key",
    "exclusive_directory",
    "object_id_of",
    "object_owners",
    "page_checkpoint_seq",
    "refuse_if_open",
    "require_clean",
]

#: Handle owner label of everything the tools open.
OWNER: Final = "jetstore-tools"
_CACHE_NODES: Final = 512
_U32_BE = struct.Struct(">I")
_SEQ = struct.Struct("<Q")
#: Offset of the checkpoint sequence in the page envelope (`jetstore.format.page`).
_SEQ_OFFSET: Final = 16


def page_checkpoint_seq(data: bytes) -> int:
    """The checkpoint sequence field of a page image (only meaningful once it verified)."""
    return int(_SEQ.unpack_from(data, _SEQ_OFFSET)[0])


def object_id_of(key: bytes) -> int | None:
    """The 4-byte big-endian object id a tree key starts with (None if shorter)."""
    if len(key) < 4:
        return None
    return int(_U32_BE.unpack_from(key, 0)[0])


def describe_key(key: bytes) -> str:
    """A key (primary key or index key bytes, without object id) as the operator reads it."""
    try:
        return repr(decode_key(key))
    except JetError:
        return "0x" + key.hex()


class OfflineDatabase:
    """A database file opened read-only, its header chosen; a `NodeStore` over its pages."""

    def __init__(
        self,
        fs: FileSystem,
        path: str,
        *,
        owner: str = OWNER,
        header: DatabaseHeader | None = None,
    ) -> None:
        """Open `path` read-only. `header`, when given, is used instead of the file's own
        (repair of a file whose two header copies are both unusable)."""
        self.fs = fs
        self.path = os.path.abspath(path)
        if not fs.exists(self.path):
            raise FileNotFound(
                f"database file '{self.path}' does not exist",
                hint="give the path of a NAME.edb file",
                path=self.path,
            )
        if fs.is_directory(self.path):
            raise InvalidPath(
                f"'{self.path}' is a directory, not a database file",
                hint="give the path of a NAME.edb file inside the instance directory",
                path=self.path,
            )
        with fs.opening(self.path, owner=owner, writable=False) as file:
            self._file: File = file
            self.file_size = file.size()
            if header is not None:
                self.page_size = header.page_size
                problems: list[str] = []
            else:
                self.page_size = self._page_size()
                copy0 = file.pread(self.page_size, 0)
                copy1 = file.pread(self.page_size, self.page_size)
                header, problems = choose_db_header(copy0, copy1, path=self.path)
        self.header: DatabaseHeader = header
        self.header_problems: list[str] = problems
        self._cache: OrderedDict[int, Node] = OrderedDict()
        self.pages_read = 0

    def _page_size(self) -> int:
        size = peek_page_size(self._file.pread(4096, 0))
        if size is not None:
            return size
        for candidate in sorted(PAGE_SIZES):
            with contextlib.suppress(JetError):
                if peek_page_size(self._file.pread(candidate, candidate)) == candidate:
                    return candidate
        return 8192  # choose_db_header then says what is wrong with both copies

    # ----------------------------------------------------------------- pages

    @property
    def page_count(self) -> int:
        return self.header.page_count

    @property
    def file_pages(self) -> int:
        """Whole pages present in the file (may exceed `page_count`)."""
        return self.file_size // self.page_size

    def read_page(self, pgno: int) -> bytes:
        self.pages_read += 1
        return self._file.pread(self.page_size, pgno * self.page_size)

    def load(self, ref: int) -> Node:
        """The verified node a child reference names (`NodeStore` protocol), checked against
        the image the reference records (a lost write is `ReadLostFlushVerifyFailure`)."""
        pgno = ref_pgno(ref)
        node = self._cache.get(pgno)
        if node is not None:
            self._cache.move_to_end(pgno)
            return node
        if not HEADER_COPIES <= pgno < self.page_count:
            raise PageNotInitialized(
                f"page {pgno} of '{self.path}' is outside the database (pages "
                f"{HEADER_COPIES}..{self.page_count - 1} are in use)",
                hint="the database is damaged: run `jetstore integrity` on it",
                path=self.path,
            )
        data = self.read_page(pgno)
        if len(data) != self.page_size:
            raise DatabaseCorrupted(
                f"'{self.path}' ends inside page {pgno} (the header says {self.page_count} "
                "pages): the file was truncated",
                hint="restore the database from a backup, or `jetstore repair` it",
                path=self.path,
            )
        try:
            node = decode_node(
                pgno, data, path=self.path, page_size=self.page_size, expected_crc=ref_crc(ref)
            )
        except CorruptionError as exc:
            # The engine's way out (look at the logs, restore) is an instance's: offline, the
            # file is all there is, and the tools that deal with its damage are named.
            damaged = type(exc)(
                exc.detail,
                hint=f"`jetstore integrity {self.path}` lists every damaged page; restore the "
                f"database from a backup, or `jetstore repair {self.path}` salvages the rest",
                path=exc.path,
            )
            damaged.errno = exc.errno
            raise damaged from exc
        self._cache[pgno] = node
        if len(self._cache) > _CACHE_NODES:
            self._cache.popitem(last=False)
        return node

    def root(self) -> Node | None:
        pgno = self.header.root_pgno
        return None if pgno == 0 else self.load(child_ref(pgno, self.header.root_crc))

    def reread_header(self) -> DatabaseHeader:
        """The header as it is on disk now (to notice a writer that came meanwhile)."""
        copy0 = self._file.pread(self.page_size, 0)
        copy1 = self._file.pread(self.page_size, self.page_size)
        return choose_db_header(copy0, copy1, path=self.path)[0]

    def close(self) -> None:
        self._file.close()
        self._cache.clear()

    def __enter__(self) -> OfflineDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- refusals


def refuse_if_open(fs: FileSystem, directory: str, *, what: str) -> None:
    """InstanceNameInUse if a process holds the lock of the instance in `directory`."""
    if is_locked(fs, directory):
        raise _in_use(fs, directory, what)


def _in_use(fs: FileSystem, directory: str, what: str) -> InstanceNameInUse:
    role = lock_holder_role(fs, directory)
    return InstanceNameInUse(
        f"the instance in '{directory}' is in use: {describe_lock_holder(fs, directory)} "
        f"holds its lock ({LOCK_FILE}); "
        f"{what} needs the database file to itself",
        hint="close the instance (or stop that process) and run the command again"
        if role is None or role == HOLDER_INSTANCE
        # A compact, repair, offline backup or restore has no instance to close.
        else f"wait for {role} to end (or stop that process), then run the command again",
        path=os.path.join(directory, LOCK_FILE),
    )


@contextlib.contextmanager
def exclusive_directory(fs: FileSystem, directory: str, *, what: str) -> Iterator[None]:
    """Hold the instance directory lock: no instance can open the directory meanwhile.
    A backup set is refused (InvalidPath): the tools that take the lock rewrite files."""
    from jetstore.backup.backupset import refuse_backup_set

    refuse_backup_set(fs, directory, what=what)
    lock_path = os.path.join(directory, LOCK_FILE)
    # A database file on its own (a copy, a folder that is no instance) has no lock file:
    # the one this run creates is removed again, so that the folder is left as it was found.
    created = not fs.exists(lock_path)
    try:
        lock = acquire_directory_lock(
            fs, directory, owner=OWNER, holder=f"an offline tool ({what})"
        )
    except FileAccessDenied as exc:
        if exc.errno is None:
            raise _in_use(fs, directory, what) from None
        # An OS refusal (a read-only mount, no write permission), not a lock holder: "the
        # instance is open" would send the operator after a process that does not exist.
        raise FileAccessDenied(
            f"{what} cannot write in '{directory}': {exc.detail}; this process may not "
            "create files there (permissions, or a read-only file system)",
            hint="make the directory writable for this process, or copy the instance "
            "directory somewhere writable and run the command on the copy",
            path=exc.path or directory,
        ) from exc
    try:
        yield
    finally:
        if created:
            lock.release_removing_file(fs)
        else:
            lock.release()


def require_clean(header: DatabaseHeader, path: str, *, what: str) -> None:
    """DatabaseDirtyShutdown unless the header says the database was shut down cleanly."""
    if header.state is not DatabaseState.CLEAN:
        raise DatabaseDirtyShutdown(
            f"database '{path}' is in state {header.state.name.lower()}, not clean: its "
            f"latest changes are in the log files, so {what} would not see them",
            hint=f"run `jetstore recover {os.path.dirname(path) or '.'}` first (it replays the "
            "logs and shuts the database down cleanly), then run this command again",
            path=path,
        )


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class ObjectOwner:
    """What an object id is: a table's records, its long values or one of its indexes."""

    table: str
    role: str  # "records", "long values" or "index"
    index: str | None = None


@dataclass
class CatalogView:
    """The table definitions decoded from the catalog entries, and what was wrong."""

    tables: dict[str, TableDef] = field(default_factory=dict)
    next_object_id: int | None = None
    #: (message, catalog key) for every entry that could not be used.
    problems: list[tuple[str, bytes]] = field(default_factory=list)
    #: Names of tables whose definition could not be decoded.
    lost: list[str] = field(default_factory=list)


def decode_catalog(entries: list[tuple[bytes, bytes]]) -> CatalogView:
    """Decode the catalog from its entries (object 0, in key order)."""
    view = CatalogView()
    chunks: dict[str, list[tuple[bytes, bytes]]] = {}
    table_values: dict[str, tuple[bytes, bytes]] = {}
    for key, value in entries:
        if key == NEXT_OBJECT_ID_KEY:
            if len(value) != 4:
                view.problems.append(("the next-object-id entry is malformed", key))
            else:
                view.next_object_id = decode_next_object_id(value)
        elif key.startswith(TABLE_ENTRY_PREFIX):
            try:
                name = key[len(TABLE_ENTRY_PREFIX) :].decode("utf-8")
            except UnicodeDecodeError:
                view.problems.append(("a table entry's name is not UTF-8", key))
                continue
            table_values[name] = (key, value)
        elif key.startswith(TABLE_DEF_CHUNK_PREFIX):
            rest = key[len(TABLE_DEF_CHUNK_PREFIX) :]
            if len(rest) < 5 or rest[-5] != 0:
                view.problems.append(("a table definition chunk key is malformed", key))
                continue
            try:
                chunk_name = rest[:-5].decode("utf-8")
            except UnicodeDecodeError:
                view.problems.append(("a table definition chunk's name is not UTF-8", key))
                continue
            chunks.setdefault(chunk_name, []).append((key, value))
        elif key.startswith(CATALOG_PREFIX):
            view.problems.append(("unknown catalog entry", key))
    for name, (key, value) in sorted(table_values.items()):
        parts = chunks.pop(name, [])
        try:
            shape = chunked_table_def(value)
            if shape is None and parts:
                view.problems.append(
                    (f"table {name!r} has definition chunks but an unchunked entry", key)
                )
            numbers = [_U32_BE.unpack_from(k, len(k) - 4)[0] for k, _ in parts]
            if shape is not None and numbers != list(range(len(numbers))):
                raise DatabaseCorrupted(
                    f"the definition chunks of table {name!r} are numbered {numbers[:10]}"
                )
            encoded = join_table_def_chunks(name, value, [v for _, v in parts])
            table_def = decode_table_def(encoded)
            if table_def.name != name:
                raise DatabaseCorrupted(
                    f"the catalog entry of table {name!r} holds the definition of "
                    f"{table_def.name!r}"
                )
        except JetError as exc:
            view.problems.append((f"table {name!r}: {exc.detail or exc.description}", key))
            view.lost.append(name)
            continue
        view.tables[name] = table_def
    for name, parts in sorted(chunks.items()):
        view.problems.append(
            (f"{len(parts)} definition chunk(s) of table {name!r}, which has no entry", parts[0][0])
        )
    used: dict[int, str] = {}
    for name, table_def in sorted(view.tables.items()):
        for object_id in (table_def.table_id, table_def.lv_id, *table_def.index_ids):
            other = used.get(object_id)
            if other is not None:
                view.problems.append(
                    (
                        f"object id {object_id} is used by table {name!r} and table {other!r}",
                        TABLE_ENTRY_PREFIX + name.encode(),
                    )
                )
            used[object_id] = name
    if used and (view.next_object_id is None or view.next_object_id <= max(used)):
        view.problems.append(
            (
                f"the next free object id is {view.next_object_id}, but object ids up to "
                f"{max(used)} are in use (a new table would reuse one)",
                NEXT_OBJECT_ID_KEY,
            )
        )
    return view


def object_owners(tables: dict[str, TableDef]) -> dict[int, ObjectOwner]:
    """Object id -> what it is, for every table definition."""
    owners: dict[int, ObjectOwner] = {}
    for name, table_def in tables.items():
        owners.setdefault(table_def.table_id, ObjectOwner(name, "records"))
        owners.setdefault(table_def.lv_id, ObjectOwner(name, "long values"))
        for index, index_id in zip(table_def.indexes, table_def.index_ids, strict=True):
            owners.setdefault(index_id, ObjectOwner(name, "index", index.name))
    return owners
