"""A table as seen from inside one transaction: records as dicts, indexes, long values, cursors.

The `Table` turns record operations into B+tree operations on the transaction's private view
(`TreeView`), following the key layout of `jetstore.tables.catalog`:
- insert: record entry, one entry per secondary index, long-value chunks for text/bytes values
  too large to keep in the record;
- update: the same, removing index entries and chunks whose keys or values changed;
- delete: removes all of them.

Invariants:
- A record and all its index entries and chunks change together, in one transaction, so every
  committed state has each index entry matching its record and vice versa.
- A write either fails before changing anything or changes everything: every check that can
  fail (unique indexes, key and record sizes, the long values it removes being whole) runs
  before the first B+tree operation, so a caught `KeyDuplicate`, `KeyTooBig`, `RecordTooBig`
  or `DatabaseCorrupted` leaves the transaction as it was.
- A unique index never holds two records with the same non-NULL key (checked at write time
  against the transaction's view, and again at commit against the latest state).
- Every leaf entry fits the B+tree's entry limit: values that would not are moved out of the
  record into long-value chunks, largest first; a record that still does not fit raises
  `RecordTooBig`, and a key that does not fit raises `KeyTooBig`. An encoded primary key is
  at most `MAX_PRIMARY_KEY_SIZE` bytes (1014), so that its long-value chunk keys fit too. An
  index entry's key holds the 4-byte index id, the encoded index key and the encoded primary
  key, within `MAX_KEY_SIZE` (1024): index key + primary key <= 1020 bytes (the entry, which
  holds the primary key again as its value, is the tighter bound on 4 KiB pages only:
  index key + 2 x primary key <= 2022). So a primary key near the limit leaves no room for
  index entries: at 1014 bytes only a NULL or a bool (1, 2 bytes) fits, not an int (9).
- A scan reads the transaction's view as of the moment `scan()` was called (records, index
  entries and long values alike): writes made while iterating neither break it nor show up in
  it. Scan bounds are checked and converted like column values, so ``start=5`` on a float
  key means 5.0. It reads a leaf at a time, but yields each record only while the
  transaction is active.
- An insert of a dict giving every column a value of exactly its type, into a table without
  secondary indexes, skips `validate_record` (the record is valid as given) and writes its
  entry with one `put_new` (or, when it is too large to keep inline, its entry and long-value
  chunks as `_store` does); it stores exactly what the general path would, and anything else
  (including a duplicate) goes the general path, which raises the precise error.
- `get` of a lone bytes key encodes it inline, and a transaction that has written nothing
  and is still in the state it opened the table in is read straight from its snapshot's tree
  (the lookup `Transaction.table` handed over); the result is what the general path
  (`encode_key`, `Transaction.get`) gives, and anything else takes that path.
- Reading, comparing or removing a long value never makes a transaction that holds gathered
  writes apply them to its private tree: its chunks are then read by key (chunk 0, 1, ... up
  to the first absent one), as a record is, not by a range read of the value's prefix.
- Nor does a unique index's check of a write (`TreeView.unique_entries`): it reads the
  snapshot's entries under the index key and the entries the transaction put there, which
  the table registers (`add_unique_check`) and writes with ``raw=False``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, cast, overload

from jetstore.errors import (
    DatabaseCorrupted,
    InvalidParameter,
    KeyDuplicate,
    KeyTooBig,
    ObjectNotFound,
    RecordNotFound,
    RecordTooBig,
    VersionStoreOutOfMemory,
)
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    MAX_KEY_SIZE,
    Node,
    max_entry_size,
    paired_entry_size,
)
from jetstore.pages.pointindex import PointReadIndex
from jetstore.tables.catalog import (
    describe_key,
    long_value_key,
    long_value_prefix,
    object_prefix,
)
from jetstore.tables.keys import (
    KEY_BYTES_TAG,
    KEY_NUL,
    KEY_NUL_ESCAPED,
    KEY_TERMINATOR,
    KeyInput,
    datetime_as_read,
    decode_key,
    describe_encoded_key,
    encode_key,
    prefix_successor,
    single_key_encoder,
    tuple_prefix_stop,
)
from jetstore.tables.records import OVERSIZED, EncodedText, LongValueRef, RecordCodec
from jetstore.tables.schema import Column, ColumnType, IndexDef, TableDef

_LV_KEY_EXTRA = 4 + 2 + 4  # lv object id, column, chunk number
_LV_SUFFIX = struct.Struct(">HI")  # a long-value chunk key ends with column, chunk number
#: Bytes a transaction charges per operation on top of its key and value (its memory bound).
OPERATION_OVERHEAD = 16
#: Longest encoded primary key: its long-value chunk keys must stay within MAX_KEY_SIZE.
MAX_PRIMARY_KEY_SIZE = MAX_KEY_SIZE - _LV_KEY_EXTRA


class Stateful(Protocol):
    """Something with a `state` (a transaction)."""

    @property
    def state(self) -> object: ...


class ReadView(Protocol):
    """Reads of one state of a transaction's tree."""

    def get(self, key: bytes) -> bytes | None: ...

    def iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def chunks(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """`iterate`'s entries a leaf at a time, as (keys, values) lists."""
        ...

    def check_active(self) -> None:
        """Raise `NotInTransaction` once the transaction ended."""
        ...

    @property
    def transaction(self) -> Stateful:
        """The transaction read: its `state` changes (once, for good) when it ends."""
        ...

    def items(self, start: bytes | None, stop: bytes | None) -> list[tuple[bytes, bytes]]:
        """Every entry in ``[start, stop)``, read at once (the view may change afterwards)."""
        ...

    @property
    def gathering(self) -> bool:
        """Whether it holds writes that a range read would first apply to its private tree
        (point reads take them from the write map as they are)."""
        ...


class SnapshotSource(Protocol):
    """A transaction whose point reads `Table.get` may take straight from its snapshot while
    it is in the state it had when the table was opened and holds no writes."""

    @property
    def state(self) -> object: ...

    @property
    def operations(self) -> Mapping[bytes, bytes | None]:
        """Its writes (key -> value, None for a delete); empty: it reads its snapshot as is."""
        ...

    @property
    def snapshot_root(self) -> Node | None: ...


#: What a transaction hands `Table` for direct point reads: itself, the lookup of its
#: snapshot's tree (`DatabaseFile.lookup`: root, key -> value) and that file's point-read
#: index (`get` probes it inline, as `lookup` would first).
Snapshot = tuple[SnapshotSource, Callable[[Node | None, bytes], bytes | None], PointReadIndex]
_NO_POINTS = PointReadIndex(enabled=False)


class TreeView(ReadView, Protocol):
    """What a table needs from its transaction: reads and writes of the private tree view."""

    page_size: int

    def put(self, key: bytes, value: bytes, raw: bool = True) -> None:
        """``raw=False``: the table's own write (its unique index entries registered)."""
        ...

    def delete(self, key: bytes) -> None: ...

    def add_unique_check(self, prefix: bytes, own_key: bytes) -> None:
        """Register `own_key`, an entry just put under unique index key `prefix`."""
        ...

    def unique_entries(self, prefix: bytes, stop: bytes) -> list[tuple[bytes, bytes]]:
        """`items(prefix, stop)` for one key of a unique index, which, while every entry put
        under it is registered, leaves gathered writes gathered."""
        ...

    def put_new(self, key: bytes, value: bytes, raw: bool = True) -> bool:
        """`put` unless `key` is present (then False, and nothing changes)."""
        ...

    def contains(self, key: bytes) -> bool:
        """``get(key) is not None`` as a one-off probe (a write's duplicate check): it
        leaves no trace in the structures that speed up repeated reads."""
        ...

    def frozen(self) -> ReadView:
        """The view as it is now, unaffected by later writes (for lazy iteration)."""
        ...


def _as_tuple(key: object) -> tuple[Any, ...]:
    if isinstance(key, tuple):
        return key
    if isinstance(key, list):
        return tuple(key)
    return (key,)


@dataclass(frozen=True, slots=True)
class _OldRecord:
    """What replacing or removing a stored record must undo."""

    pk: bytes
    entries: dict[str, bytes]  # index name -> index entry key
    long_values: dict[int, LongValueRef]  # column position -> its long value
    values: Mapping[str, object] | None  # the materialized record, when it was read


_NO_REFS: Mapping[int, object] = {}
_NO_TEXTS: Mapping[str, bytes] = {}
_STR_BYTES = (str, bytes)  # `isinstance` checks a tuple faster than `str | bytes`
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_FAST_KEY_TYPES = {ColumnType.INT: int, ColumnType.TEXT: str, ColumnType.BYTES: bytes}


class TableShape:
    """What a `Table` derives from its definition, computed once per definition."""

    __slots__ = (
        "bytes_head",
        "datetime_columns",
        "definition",
        "fast_insert",
        "fast_pk",
        "full_key",
        "index_columns",
        "index_prefixes",
        "lv_columns",
        "max_entry",
        "pk_columns",
        "pk_names",
        "prefix",
    )

    def __init__(self, table_def: TableDef, page_size: int) -> None:
        self.definition = table_def
        self.prefix = object_prefix(table_def.table_id)
        self.index_prefixes = {
            index.name: object_prefix(index_id)
            for index, index_id in zip(table_def.indexes, table_def.index_ids, strict=True)
        }
        self.max_entry = max_entry_size(page_size)
        self.lv_columns = [
            (i, column.name, column.type is ColumnType.TEXT)
            for i, column in enumerate(table_def.columns)
            if column.type in (ColumnType.TEXT, ColumnType.BYTES)
        ]
        self.pk_names = table_def.primary_key
        self.pk_columns = tuple(table_def.column(name) for name in self.pk_names)
        self.datetime_columns = tuple(
            column.name for column in table_def.columns if column.type is ColumnType.DATETIME
        )
        self.index_columns = frozenset(c for index in table_def.indexes for c in index.columns)
        # A one-column key of int, text or bytes is encoded without the general validation
        # when the value already has exactly that type (the common point read and insert).
        self.fast_pk: type | None = (
            _FAST_KEY_TYPES.get(self.pk_columns[0].type) if len(self.pk_columns) == 1 else None
        )
        # The record entry's whole key (table prefix + primary key) of such a value, or None
        # when the value needs the general path.
        self.full_key: Callable[[object], bytes | None] = (
            _no_full_key
            if self.fast_pk is None
            else single_key_encoder(self.prefix, self.fast_pk, MAX_PRIMARY_KEY_SIZE)
        )
        # A one-column bytes key's entry key starts with this (`Table.get` encodes it inline).
        self.bytes_head: bytes | None = (
            self.prefix + KEY_BYTES_TAG if self.fast_pk is bytes else None
        )
        # Inserts of exactly-typed records skip validation (see `Table.insert`) when the
        # table has no secondary index to maintain.
        self.fast_insert = self.fast_pk is not None and not table_def.indexes


def _no_full_key(key: object) -> None:
    return None


def _no_lookup(root: Node | None, key: bytes) -> None:
    return None  # never called: `Table.get` reads the snapshot only when it was handed one


class Table:
    """Records of one table inside one transaction. Obtain it with `Transaction.table(name)`."""

    __slots__ = (
        "_active",
        "_bytes_head",
        "_bytes_limit",
        "_codec",
        "_datetime_columns",
        "_dropped",
        "_fast_decode",
        "_fast_encode",
        "_fast_pk",
        "_full_key",
        "_index_columns",
        "_index_prefixes",
        "_lookup",
        "_lv_columns",
        "_max_entry",
        "_ncolumns",
        "_pk_columns",
        "_pk_names",
        "_points",
        "_prefix",
        "_root",
        "_snapshot",
        "_view",
        "definition",
    )

    def __init__(
        self,
        view: TreeView,
        table_def: TableDef,
        codec: RecordCodec,
        shape: TableShape | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        if shape is None or shape.definition is not table_def:
            shape = TableShape(table_def, view.page_size)
        self._view = view
        self.definition = table_def
        self._codec = codec
        self._dropped = False
        # Everything derived from the definition is computed once per table (TableShape),
        # not once per transaction: a transaction is often a single-row commit.
        self._prefix = shape.prefix
        self._index_prefixes = shape.index_prefixes
        self._max_entry = shape.max_entry
        self._lv_columns = shape.lv_columns
        self._pk_names = shape.pk_names
        self._pk_columns = shape.pk_columns
        self._datetime_columns = shape.datetime_columns
        self._index_columns = shape.index_columns
        self._fast_pk = shape.fast_pk
        self._full_key = shape.full_key
        self._fast_decode = codec.fast_decode
        # The generated encoder when inserts may skip validation, else None.
        self._fast_encode = codec.fast_encode if shape.fast_insert else None
        self._ncolumns = len(table_def.columns)
        # Direct point reads (see `get`): the transaction, its state now (active: only an
        # active transaction opens tables), its snapshot's root and the lookup of its tree.
        self._snapshot: SnapshotSource | None = None
        self._active: object = None
        self._root: Node | None = None
        self._lookup: Callable[[Node | None, bytes], bytes | None] = _no_lookup
        self._points = _NO_POINTS
        if snapshot is not None:
            self._snapshot, self._lookup, self._points = snapshot
            self._active = self._snapshot.state
            self._root = self._snapshot.snapshot_root
        # A one-column bytes key is encoded inline by `get` up to this entry-key length (the
        # longest `full_key` accepts); None once the table is dropped.
        self._bytes_head = shape.bytes_head
        self._bytes_limit = MAX_PRIMARY_KEY_SIZE + len(self._prefix)

    @property
    def name(self) -> str:
        return self.definition.name

    def redefine(self, table_def: TableDef, codec: RecordCodec, shape: TableShape) -> None:
        """The transaction changed this table's definition (an index or column added or
        dropped): from now on this object reads and writes by the new one, so a reference the
        caller kept cannot write records that miss the new index or have the old layout.
        Direct snapshot reads end (the transaction has writes now)."""
        Table.__init__(self, self._view, table_def, codec, shape, None)

    def mark_dropped(self) -> None:
        """The table was dropped in this transaction: every later use raises ObjectNotFound
        (a write would otherwise leave entries under object ids no table owns)."""
        self._dropped = True
        self._bytes_head = None  # `get` then takes the general path, which raises
        self.release_snapshot()

    def release_snapshot(self) -> None:
        """Its transaction ended (or it was dropped): hold no node of the snapshot. `get`
        reads it only while the transaction is in the state the table was opened in."""
        self._root = None

    def _check_usable(self) -> None:
        if self._dropped:
            raise ObjectNotFound(f"table {self.name!r} was dropped in this transaction")

    # ----------------------------------------------------------------- keys

    def _encode_pk(self, key: object) -> bytes:
        if self._dropped:
            self._check_usable()
        fast = self._fast_pk
        if (
            fast is not None
            and type(key) is fast
            and (fast is not int or _INT_MIN <= key <= _INT_MAX)  # type: ignore[operator]
        ):
            encoded = encode_key((key,))  # type: ignore[arg-type]
            if len(encoded) <= MAX_PRIMARY_KEY_SIZE:
                return encoded
        values = _as_tuple(key)
        if len(values) != len(self._pk_names):
            raise InvalidParameter(
                f"table {self.name!r} has a primary key of {len(self._pk_names)} column(s) "
                f"{self._pk_names}, got {len(values)} value(s)"
            )
        checked = self.definition.validate_record(
            dict(zip(self._pk_names, values, strict=True)), partial=True
        )
        encoded = encode_key([cast(KeyInput, checked[name]) for name in self._pk_names])
        if len(encoded) > MAX_PRIMARY_KEY_SIZE:
            raise KeyTooBig(
                f"primary key of table {self.name!r} encodes to {len(encoded)} bytes; "
                f"the limit is {MAX_PRIMARY_KEY_SIZE}"
            )
        return encoded

    def _encode_checked_pk(self, checked: Mapping[str, object]) -> bytes:
        """The primary key of a record that `validate_record` already checked."""
        if self._dropped:
            self._check_usable()
        encoded = encode_key([cast(KeyInput, checked[name]) for name in self._pk_names])
        if len(encoded) > MAX_PRIMARY_KEY_SIZE:
            raise KeyTooBig(
                f"primary key of table {self.name!r} encodes to {len(encoded)} bytes; "
                f"the limit is {MAX_PRIMARY_KEY_SIZE}"
            )
        return encoded

    def _index_entry(self, index: IndexDef, record: Mapping[str, object], pk: bytes) -> bytes:
        values = [cast(KeyInput, record[name]) for name in index.columns]
        prefix = self._index_prefixes[index.name]
        index_key = encode_key(values)
        key = prefix + index_key + pk
        if len(key) > MAX_KEY_SIZE or LEAF_ENTRY_OVERHEAD + len(key) + len(pk) > self._max_entry:
            raise self._index_entry_too_big(index, len(prefix), len(index_key), len(pk))
        return key

    def _index_entry_too_big(
        self, index: IndexDef, prefix: int, index_key: int, pk: int
    ) -> KeyTooBig:
        """KeyTooBig for an index entry, saying that the record's primary key is part of it:
        a primary key near MAX_PRIMARY_KEY_SIZE leaves little or no room for the index key,
        which a message naming only the index would not explain."""
        # The entry's key is index id + index key + primary key, within MAX_KEY_SIZE; the
        # entry also holds the primary key as its value, within the page's entry limit (the
        # tighter bound on 4 KiB pages only).
        by_entry = self._max_entry - LEAF_ENTRY_OVERHEAD - pk
        limit = min(MAX_KEY_SIZE, by_entry)
        room = limit - prefix - pk
        detail = (
            f"index {index.name!r} of table {self.name!r}: the entry's key would be "
            f"{prefix + index_key + pk} bytes, the limit is {limit}. An index entry's key "
            f"holds the index id ({prefix} bytes), the encoded index key ({index_key} "
            f"bytes) and the record's encoded primary key ({pk} bytes), so the primary key's "
            "length counts: "
            + (
                f"with this primary key the index key may be at most {room} bytes"
                if room >= 1
                else "with this primary key no index key fits (a NULL takes 1 byte)"
            )
        )
        if by_entry < MAX_KEY_SIZE:
            detail += (
                f" (the entry holds the primary key again as its value and must fit "
                f"{self._max_entry} bytes on this page size)"
            )
        return KeyTooBig(
            detail,
            hint=(
                "index shorter values, or give the table a shorter primary key (a short id, "
                "with the long natural key in a column of its own): a primary key near "
                f"the most a record allows ({MAX_PRIMARY_KEY_SIZE} bytes encoded) leaves "
                "no room for index entries; with pages of 8 KiB or more the index key and the "
                f"primary key together may take {MAX_KEY_SIZE - len(object_prefix(0))} bytes"
            ),
        )

    @staticmethod
    def _unique_prefix(
        index: IndexDef, record: Mapping[str, object], entry: bytes, pk: bytes
    ) -> bytes | None:
        """The key of unique index `index` in its entry `entry` for `record` (stored under
        `pk`): the entry without its primary key, not encoded again; None if the index is
        not unique or the key holds a NULL."""
        if not index.unique:
            return None
        for name in index.columns:
            if record[name] is None:
                return None  # NULLs never collide, as in SQL
        return entry[: len(entry) - len(pk)]

    def _encode_bound(self, prefix: bytes, columns: Sequence[Column], bound: object) -> bytes:
        """A scan bound: a value or a tuple prefix of `columns`, checked like column values."""
        values = _as_tuple(bound)
        if len(values) > len(columns):
            raise InvalidParameter(
                f"scan bound {bound!r} of table {self.name!r} has {len(values)} values; the key "
                f"has {len(columns)} column(s): {[c.name for c in columns]}"
            )
        checked: list[KeyInput] = []
        for column, value in zip(columns, values, strict=False):
            if value is None:
                checked.append(None)  # NULL sorts first; a legal bound for any column
            else:
                normalized = self.definition.validate_record({column.name: value}, partial=True)
                checked.append(cast(KeyInput, normalized[column.name]))
        return prefix + encode_key(checked)

    # ----------------------------------------------------------------- reads

    def get(self, key: object) -> dict[str, object] | None:
        """The record with primary key `key` (a value, or a tuple for compound keys)."""
        # The hottest read, kept to one call per layer: a lone bytes key is encoded here
        # (`single_key_encoder`'s bytes case), a transaction with no writes of its own reads
        # its snapshot's tree directly (what `Transaction.get` does then), and the record is
        # decoded by its remembered layout. Anything else takes the general calls.
        head = self._bytes_head
        if head is not None and type(key) is bytes:
            if 0 in key:  # `0 in`: a bytes needle costs a failed int conversion first
                full = head + key.replace(KEY_NUL, KEY_NUL_ESCAPED) + KEY_TERMINATOR
            else:
                full = head + key + KEY_TERMINATOR
            if len(full) > self._bytes_limit:
                full = self._prefix + self._encode_pk(key)  # raises KeyTooBig
        else:
            encoded = self._full_key(key)
            if encoded is None or self._dropped:
                encoded = self._prefix + self._encode_pk(key)
            full = encoded
        txn = self._snapshot
        raw: bytes | None
        if txn is not None and txn.state is self._active and not txn.operations:
            # `DatabaseFile.lookup`'s first step inline: the point-read index, when its
            # readers are to probe it for this snapshot's tree (`probe`) and no commit
            # changed it during the probe.
            points = self._points
            version = points.version
            root = self._root
            raw = points.entries.get(full) if root is points.probe else None
            if raw is not None and points.version == version:
                points.hits += 1
            else:
                raw = self._lookup(root, full)
        else:
            raw = self._view.get(full)
        if raw is None:
            return None
        try:
            record = self._fast_decode(raw)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            record = None
        if record is None:  # not the common record: the general path
            return self._materialize(self._view, full[len(self._prefix) :], raw)
        return record

    def __contains__(self, key: object) -> bool:
        full = self._full_key(key)
        if full is None or self._dropped:
            full = self._prefix + self._encode_pk(key)
        return self._view.get(full) is not None

    def _materialize(
        self,
        view: ReadView,
        pk: bytes,
        raw: bytes,
        codec: RecordCodec | None = None,
        lv_columns: list[tuple[int, str, bool]] | None = None,
    ) -> dict[str, object]:
        """The record `raw` stored under `pk`, its long values read from `view`. `codec` and
        `lv_columns`: the layout of the definition `view` was read under, when it is not the
        table's current one (a scan begun before a schema change of this transaction)."""
        record, may_hold_long_values = (self._codec if codec is None else codec).decode_plain(
            raw, pk
        )
        if may_hold_long_values:
            self._load_long_values(view, pk, record, lv_columns)
        return record

    def _load_long_values(
        self,
        view: ReadView,
        pk: bytes,
        record: dict[str, object],
        lv_columns: list[tuple[int, str, bool]] | None = None,
    ) -> None:
        """Replace each `LongValueRef` of `record` (stored under `pk`) by its value."""
        for position, name, _is_text in self._lv_columns if lv_columns is None else lv_columns:
            value = record.get(name)
            if isinstance(value, LongValueRef):
                record[name] = self._read_long_value(view, pk, position, value)

    def _read_long_value(
        self, view: ReadView, pk: bytes, column: int, ref: LongValueRef
    ) -> str | bytes:
        data = self._read_long_bytes(view, pk, column, ref)
        return data.decode("utf-8", "surrogatepass") if ref.is_text else data

    def _read_long_bytes(self, view: ReadView, pk: bytes, column: int, ref: LongValueRef) -> bytes:
        return b"".join([chunk for _key, chunk in self._long_value_entries(view, pk, column, ref)])

    def _long_value_entries(
        self, view: ReadView, pk: bytes, column: int, ref: LongValueRef, writing: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """The chunk entries of long value `ref` of column `column` of record `pk`, checked
        to add up to its length: DatabaseCorrupted (naming the record and the first missing
        chunk) otherwise, before the caller reads or removes any of them, so that a write over
        a damaged value is refused whole rather than half done."""
        if view.gathering:
            entries = list(self._chunks_by_key(view, pk, column))
        else:
            prefix = long_value_prefix(self.definition.lv_id, pk, column)
            entries = view.items(prefix, prefix_successor(prefix))
        size = sum([len(chunk) for _key, chunk in entries])
        if size != ref.length:
            raise self._damaged_long_value(pk, column, ref, entries, size, writing)
        return entries

    def _damaged_long_value(
        self,
        pk: bytes,
        column: int,
        ref: LongValueRef,
        entries: list[tuple[bytes, bytes]],
        size: int,
        writing: bool,
    ) -> DatabaseCorrupted:
        numbers = [_LV_SUFFIX.unpack_from(key, len(key) - _LV_SUFFIX.size)[1] for key, _ in entries]
        gap = next((n for n, number in enumerate(numbers) if number != n), len(numbers))
        if gap < len(numbers) or size < ref.length:
            what = f"chunk {gap} is missing"
        else:
            what = "its chunks hold more than that"
        return DatabaseCorrupted(
            f"long value of column {self.definition.columns[column].name!r} of the record "
            f"with primary key {describe_encoded_key(pk)} in table {self.name!r} is damaged: "
            f"{what} ({len(entries)} chunk(s) of {size} bytes found, its record says "
            f"{ref.length} bytes)"
            + ("; the write was refused, nothing changed" if writing else ""),
            hint="run `jetstore integrity` on the database to list the damage; "
            "`jetstore repair --accept-data-loss` drops the records whose long value is "
            "incomplete (or restore a backup)",
        )

    def scan(
        self,
        index: str | None = None,
        start: object = None,
        stop: object = None,
        reverse: bool = False,
    ) -> Iterator[dict[str, object]]:
        """Records in key order of the primary key or of `index`, from `start` (inclusive) to
        `stop` (exclusive); either may be a partial key (a tuple prefix of the key columns;
        for an index, the index columns followed by the primary key columns).

        The range is always ``start <= key < stop``: `reverse` walks the same range from its
        top down, so ``scan(start=1, stop=3, reverse=True)`` yields 2 then 1, and a range with
        ``start >= stop`` is empty. A partial bound stands for its tuple, which sorts before
        every key it begins: ``stop=(3,)`` excludes every key starting with 3. NULL sorts
        before every value (forwards and backwards alike): ``start=None`` / ``stop=None`` mean
        no bound, while ``(None,)`` is the bound NULL, so ``stop=(None,)`` yields nothing and
        ``start=(None,), stop=(v,)`` yields the NULLs and the values below `v`.

        The scan reads the transaction's view as of this call: writes made while iterating
        do not show up in it and do not disturb it.
        """
        self._check_usable()
        if index is None:
            prefix = self._prefix
            columns = self._pk_columns
        else:
            index_def = self.definition.index(index)  # IndexNotFound for an unknown name
            prefix = self._index_prefixes[index]
            columns = (
                *(self.definition.column(c) for c in index_def.columns),
                *self._pk_columns,
            )
        low = prefix if start is None else self._encode_bound(prefix, columns, start)
        high = (
            prefix_successor(prefix) if stop is None else self._encode_bound(prefix, columns, stop)
        )
        # The layout (codec, long-value columns) is passed in now, not read when the
        # generator's body first runs: the frozen view holds the records as written under the
        # definition of this moment, and a schema change later in this transaction
        # re-initialises this object for the new one (`redefine`), whose codec misreads them
        # (after drop_column: DatabaseCorrupted, a column count above the table's).
        return self._scan(
            self._view.frozen(),
            index,
            low,
            high,
            reverse,
            self._codec,
            self._lv_columns,
        )

    def _scan(
        self,
        view: ReadView,
        index: str | None,
        low: bytes,
        high: bytes | None,
        reverse: bool,
        codec: RecordCodec,
        lv_columns: list[tuple[int, str, bool]],
    ) -> Iterator[dict[str, object]]:
        table_prefix = self._prefix
        plen = len(table_prefix)
        if index is None:
            # The scan loop of the engine: a leaf of records is decoded by one call to the
            # generated decoder (the common record: no NULL, no long value); anything else
            # takes the general path, record by record.
            decode_many = codec.decode_many
            materialize = self._materialize
            check = view.check_active
            # Every record is yielded only while the transaction is active: its state is
            # compared (cheaply) with the state it had when the scan began, and once it
            # changed check_active raises NotInTransaction.
            txn = view.transaction
            active = txn.state
            for keys, values in view.chunks(low, high, reverse):
                try:
                    records = decode_many(values)
                except (IndexError, struct.error, UnicodeDecodeError):
                    records = [None] * len(values)
                if None not in records:
                    for record in records:
                        if txn.state is not active:
                            check()
                        yield record  # type: ignore[misc]
                    continue
                for key, value, plain in zip(keys, values, records, strict=True):
                    check()
                    yield (
                        plain
                        if plain is not None
                        else materialize(view, key[plen:], value, codec, lv_columns)
                    )
            return
        for key, value in view.iterate(low, high, reverse):
            pk = value
            raw = view.get(table_prefix + pk)
            if raw is None:
                raise DatabaseCorrupted(
                    f"{describe_key(key, [self.definition])} points to a missing record",
                    hint="run `jetstore integrity` on the database file to list the damage; "
                    "`jetstore repair --accept-data-loss` rebuilds the indexes from the "
                    "records (or restore a backup)",
                )
            yield self._materialize(view, pk, raw, codec, lv_columns)

    def __iter__(self) -> Iterator[dict[str, object]]:
        return self.scan()

    # ----------------------------------------------------------------- writes

    def insert(self, record: Mapping[str, object]) -> None:
        """Add a record; `KeyDuplicate` if its primary key or a unique index key exists."""
        fast_encode = self._fast_encode
        if fast_encode is not None and type(record) is dict and not self._dropped:
            # A record giving every column a value of exactly its type (no NULL) is valid
            # as it is: `validate_record` would return it unchanged, and the generated
            # encoder refuses (None, or an exception) anything else. Without secondary
            # indexes, a record that fits its entry inline is then one new tree entry.
            # Anything unusual, including a duplicate key, takes the general path below,
            # which raises the precise error.
            try:
                encoded = fast_encode(record)
            except Exception:
                encoded = None
            if encoded is not None and len(record) == self._ncolumns:
                key = self._full_key(record[self._pk_names[0]])
                if key is not None:
                    if len(encoded) + len(key) + LEAF_ENTRY_OVERHEAD <= self._max_entry:
                        if self._view.put_new(key, encoded, False):
                            return
                    elif not self._view.contains(key):
                        # Too large to keep inline: a new record with long values, stored
                        # as `_store` stores the general path's (which would find nothing
                        # more to check: no indexes, and `record` is what validation gives).
                        self._store_new(key, record, encoded)
                        return
        checked = self.definition.validate_record(record)
        pk = self._encode_checked_pk(checked)
        if self._view.contains(self._prefix + pk):
            raise KeyDuplicate(
                f"table {self.name!r} already has a record with primary key "
                f"{self._describe_key(checked)}"
            )
        self._store(pk, checked, None)

    @overload
    def update(
        self, key: object, changes: Mapping[str, object], *, returning: Literal[True] = True
    ) -> dict[str, object]: ...

    @overload
    def update(
        self, key: object, changes: Mapping[str, object], *, returning: Literal[False]
    ) -> None: ...

    @overload
    def update(
        self, key: object, changes: Mapping[str, object], *, returning: bool
    ) -> dict[str, object] | None: ...

    def update(
        self, key: object, changes: Mapping[str, object], *, returning: bool = True
    ) -> dict[str, object] | None:
        """Change some columns of the record with primary key `key`; returns the new record
        (as `get` would return it), or None with ``returning=False``.

        Changing primary-key columns moves the record (its old key disappears). A long value
        the update does not change, too large to be kept in the record, stays where it is:
        it is not rewritten, and read only to return the new record (``returning=False``
        reads nothing but the record and what its indexes need).
        """
        pk = self._encode_pk(key)
        view = self._view
        raw = view.get(self._prefix + pk)
        if raw is None:
            raise RecordNotFound(
                f"table {self.name!r} has no record with primary key {_as_tuple(key)!r}"
            )
        changed = self.definition.validate_record(changes, partial=True)
        old, refs = self._materialize_for_update(pk, raw, changed)
        checked = self.definition.validate_record({**old, **changed})
        new_pk = self._encode_pk([checked[name] for name in self._pk_names])
        if new_pk != pk and view.contains(self._prefix + new_pk):
            raise KeyDuplicate(
                f"table {self.name!r} already has a record with primary key "
                f"{self._describe_key(checked)}"
            )
        if refs and new_pk != pk:
            # Chunk keys hold the primary key: a moved record's long values move with it.
            for position, (name, ref) in refs.items():
                old[name] = checked[name] = self._read_long_value(view, pk, position, ref)
            refs = {}
        for name, ref in refs.values():
            checked[name] = ref
        # A new value longer than any entry: the record is not encoded with it inline first.
        # (Checked here, not in `_store`: an insert's values are rarely that long.)
        try_inline = True
        for value in changed.values():
            if isinstance(value, _STR_BYTES) and len(value) > self._max_entry:
                try_inline = False
        self._store(new_pk, checked, self._old_record(pk, raw, old), refs, try_inline)
        if not returning:
            return None
        for position, (name, ref) in refs.items():
            checked[name] = self._read_long_value(view, pk, position, ref)
        return self._as_read(checked)

    def _materialize_for_update(
        self, pk: bytes, raw: bytes, changed: Mapping[str, object]
    ) -> tuple[dict[str, object], dict[int, tuple[str, LongValueRef]]]:
        """The stored record `raw` under `pk` with the long values an update changing
        `changed` needs read: those an index or the primary key reads, and those it keeps
        that could be stored inline. Each value it keeps as it is (column position -> name
        and reference) holds an empty value of its type in the record instead: one too large
        to be stored inline whatever the other columns hold, so the updated record refers to
        it as the stored one did. A value `changed` replaces is left out (its chunks are
        deleted by key, and read only to compare it with a new value of the same length:
        `_unchanged_long_values`)."""
        record, may_hold_long_values = self._codec.decode_plain(raw, pk)
        refs: dict[int, tuple[str, LongValueRef]] = {}
        if not may_hold_long_values:
            return record, refs
        inline_limit = self._max_entry - LEAF_ENTRY_OVERHEAD - len(self._prefix) - len(pk)
        for position, name, is_text in self._lv_columns:
            ref = record.get(name)
            if not isinstance(ref, LongValueRef):
                continue
            if name in self._index_columns or name in self._pk_names:
                # Needed as it is: for the index entries to remove, or for the primary key
                # (on small pages one can be stored apart, and too long to be inline).
                record[name] = self._read_long_value(self._view, pk, position, ref)
            elif name in changed:
                del record[name]
            elif ref.length > inline_limit:
                refs[position] = (name, ref)
                record[name] = "" if is_text else b""
            else:
                record[name] = self._read_long_value(self._view, pk, position, ref)
        return record, refs

    def delete(self, key: object) -> None:
        """Remove the record with primary key `key`; `RecordNotFound` if there is none."""
        pk = self._encode_pk(key)
        view = self._view
        raw = view.get(self._prefix + pk)
        if raw is None:
            raise RecordNotFound(
                f"table {self.name!r} has no record with primary key {_as_tuple(key)!r}"
            )
        old = self._old_record(pk, raw, None)
        chunks = self._long_value_keys(old)
        for entry in old.entries.values():
            view.delete(entry)
        for chunk in chunks:
            view.delete(chunk)
        view.delete(self._prefix + pk)

    def upsert(self, record: Mapping[str, object]) -> None:
        """Insert the record, or replace every column of the existing one with the same key."""
        checked = self.definition.validate_record(record)
        pk = self._encode_pk([checked[name] for name in self._pk_names])
        raw = self._view.get(self._prefix + pk)
        self._store(pk, checked, None if raw is None else self._old_record(pk, raw, None))

    # ----------------------------------------------------------------- internals

    def _as_read(self, record: dict[str, object]) -> dict[str, object]:
        """`record` as a read returns it: aware datetimes in UTC (the same instant), every
        datetime with fold 0 (`keys.datetime_as_read`)."""
        out = dict(record)
        for name in self._datetime_columns:
            value = out[name]
            if isinstance(value, datetime) and (
                value.fold or type(value) is not datetime or value.utcoffset() is not None
            ):
                out[name] = datetime_as_read(value)
        return out

    def _describe_key(self, record: Mapping[str, object]) -> str:
        return repr(tuple(record[name] for name in self._pk_names))

    def _old_record(self, pk: bytes, raw: bytes, record: Mapping[str, object] | None) -> _OldRecord:
        """The index entries and long-value columns of the stored record `raw` under `pk`.

        `record` is its materialized form when the caller has it; otherwise only the long
        values of indexed columns are read.
        """
        stored = self._codec.decode(raw, pk)
        long_values = {
            position: ref
            for position, name, _is_text in self._lv_columns
            if isinstance(ref := stored.get(name), LongValueRef)
        }
        values = record
        if record is None:
            record = dict(stored)
            for position, name, _is_text in self._lv_columns:
                ref = stored.get(name)
                if isinstance(ref, LongValueRef) and name in self._index_columns:
                    record[name] = self._read_long_value(self._view, pk, position, ref)
        entries = {
            index.name: self._index_entry_unchecked(index, record, pk)
            for index in self.definition.indexes
        }
        return _OldRecord(pk, entries, long_values, values)

    def _unchanged_long_values(
        self, pk: bytes, long_values: list[tuple[int, bytes]], old: _OldRecord | None
    ) -> set[int]:
        """Columns whose new long value equals the old one under the same key: their chunks
        stay as they are (an update of another column does not rewrite, or log, them)."""
        kept: set[int] = set()
        if old is None or old.pk != pk:
            return kept
        names = self.definition.columns
        for position, data in long_values:
            ref = old.long_values.get(position)
            if ref is None or ref.length != len(data):
                continue
            known = None if old.values is None else old.values.get(names[position].name)
            if isinstance(known, str):
                same = known.encode("utf-8", "surrogatepass") == data
            elif isinstance(known, bytes):
                same = known == data
            else:
                same = self._long_value_is(pk, position, ref, data)
            if same:
                kept.add(position)
        return kept

    def _long_value_is(self, pk: bytes, column: int, ref: LongValueRef, data: bytes) -> bool:
        """Whether long value `ref` (as `_read_long_bytes` reads it) is `data`, of the same
        length: compared chunk by chunk where the chunks lie, up to the first difference,
        rather than joined into a copy of the whole value first."""
        view = self._view
        runs: Iterable[Iterable[bytes]]
        if view.gathering:
            runs = [(chunk for _key, chunk in self._chunks_by_key(view, pk, column))]
        else:
            prefix = long_value_prefix(self.definition.lv_id, pk, column)
            runs = (chunks for _keys, chunks in view.chunks(prefix, prefix_successor(prefix)))
        whole = memoryview(data)
        offset = 0
        for chunks in runs:
            for chunk in chunks:
                end = offset + len(chunk)
                if end <= ref.length and whole[offset:end] != chunk:
                    return False
                offset = end
        if offset != ref.length:
            self._read_long_bytes(self._view, pk, column, ref)  # raises DatabaseCorrupted
        return True

    def _index_entry_unchecked(
        self, index: IndexDef, record: Mapping[str, object], pk: bytes
    ) -> bytes:
        values = [cast(KeyInput, record[name]) for name in index.columns]
        return self._index_prefixes[index.name] + encode_key(values) + pk

    def _store(
        self,
        pk: bytes,
        record: dict[str, object],
        old: _OldRecord | None,
        refs: Mapping[int, object] = _NO_REFS,
        try_inline: bool = True,
    ) -> None:
        """Write `record` under `pk`, replacing `old` (which may live under another key).
        `refs`: the columns of `old` whose long values `record` refers to as they are (an
        update that keeps them, under the same key). `try_inline`: as `_encode_stored` takes it.

        Phase 1 checks everything that can fail without touching the view; phase 2 writes.
        """
        view = self._view
        key = self._prefix + pk
        indexes = self.definition.indexes
        if old is None and not indexes:
            # A new record of a table without secondary indexes: nothing to check or undo.
            self._store_new(key, record, None)
            return
        old_entries = old.entries if old is not None else {}
        own_pks = {pk} if old is None else {pk, old.pk}
        # Phase 1: index entries (KeyTooBig), unique indexes (KeyDuplicate), the record's
        # stored form (RecordTooBig).
        entries = {index.name: self._index_entry(index, record, pk) for index in indexes}
        uniques: list[tuple[bytes, bytes]] = []  # (index key, entry) to register once written
        for index in indexes:
            entry = entries[index.name]
            unique = self._unique_prefix(index, record, entry, pk)
            if unique is None or old_entries.get(index.name) == entry:
                continue
            uniques.append((unique, entry))
            for _other_key, other_pk in view.unique_entries(unique, tuple_prefix_stop(unique)):
                if other_pk not in own_pks:
                    raise KeyDuplicate(
                        f"unique index {index.name!r} of table {self.name!r} already has "
                        f"key {tuple(record[c] for c in index.columns)!r}, in the record with "
                        f"primary key {describe_encoded_key(other_pk)}",
                        hint="use another value, or change or delete that record first; "
                        "nothing was written",
                    )
        encoded, long_values = self._encode_stored(key, record, None, try_inline)
        kept = self._unchanged_long_values(pk, long_values, old)
        kept.update(refs)
        removed = [] if old is None else self._long_value_keys(old, kept)
        # Phase 2: remove what the old record had and the new one does not, then write.
        if old is not None:
            for name, entry in old_entries.items():
                if entries[name] != entry:
                    view.delete(entry)
            for chunk in removed:
                view.delete(chunk)
            if old.pk != pk:
                view.delete(self._prefix + old.pk)
        for index in indexes:
            entry = entries[index.name]
            if old_entries.get(index.name) == entry:
                continue
            view.put(entry, pk, False)
        for unique, entry in uniques:
            view.add_unique_check(unique, entry)
        for position, data in long_values:
            if position not in kept:
                self._write_long_value(pk, position, data)
        view.put(key, encoded, False)

    def _store_new(self, key: bytes, record: dict[str, object], encoded: bytes | None) -> None:
        """Write a new record (no old one, no secondary indexes) under the entry key `key`;
        `encoded` is `record` already encoded whole, if the caller has it."""
        encoded, long_values = self._encode_stored(key, record, encoded)
        if long_values:
            pk = key[len(self._prefix) :]
            for position, data in long_values:
                self._write_long_value(pk, position, data)
        self._view.put(key, encoded, False)

    def _encode_stored(
        self,
        key: bytes,
        record: dict[str, object],
        encoded: bytes | None = None,
        try_inline: bool = True,
    ) -> tuple[bytes, list[tuple[int, bytes]]]:
        """The record entry's value, and the (column, data) long values it refers to
        (`encoded`: `record` already encoded whole, or `OVERSIZED`, if the caller has it
        (the fast insert); without it, `encode_inline` copies no value too long for any
        entry into a record; not `try_inline`:
        the caller knows a value too long for the entry, so `record` is not encoded whole
        into an entry that could not hold it, a copy of up to 64 MiB thrown away)."""
        limit = self._max_entry - LEAF_ENTRY_OVERHEAD - len(key)
        long_values: list[tuple[int, bytes]] = []
        if encoded is None and try_inline:
            encoded = self._codec.encode_inline(record)  # None: a value too long for any entry
        if encoded is not None and len(encoded) <= limit:
            return encoded, long_values
        stored = dict(record)
        # Each text is encoded once: taken from the record as encoded when it was (the
        # encoders measure a text by its characters, and encode none they refuse), and the
        # bytes are what the record holds while it stays inline and what its chunks hold.
        texts = (
            self._codec.encoded_texts(encoded)
            if encoded is not None and encoded is not OVERSIZED
            else _NO_TEXTS
        )
        # Largest first by the bytes stored (UTF-8 for text), not by characters: the value
        # moved out is the one that frees most of the entry.
        candidates: list[tuple[int, int, str, bool, bytes]] = []
        for position, name, is_text in self._lv_columns:
            value = stored.get(name)
            if isinstance(value, str):
                value = texts.get(name) or value.encode("utf-8", "surrogatepass")
                stored[name] = EncodedText(value)
            elif not isinstance(value, bytes):
                continue
            candidates.append((len(value), position, name, is_text, value))
        candidates.sort(reverse=True)
        last = len(candidates) - 1
        for n, (size, position, name, is_text, data) in enumerate(candidates):
            long_values.append((position, data))
            stored[name] = LongValueRef(position, size, is_text)
            if n < last and candidates[n + 1][0] > limit:
                # The next value alone is too long for the entry: a record holding it would
                # be thrown away.
                continue
            encoded = self._codec.encode(stored)
            if len(encoded) <= limit:
                return encoded, long_values
        assert encoded is not None  # skipped above only for a value it then moved out
        raise RecordTooBig(
            f"a record of table {self.name!r} needs {len(encoded)} bytes even with its "
            f"text and bytes values stored apart; a page of {self._view.page_size} "
            f"bytes holds at most {limit}",
            hint="use a larger page_size or fewer/smaller non-text columns",
        )

    def _chunk_size(self, pk: bytes) -> int:
        # Two chunk entries fill a leaf to the bulk target: a long value written in one
        # transaction takes ~1.1x its size in pages. Chunks of a full entry (half a page)
        # left one chunk a leaf, twice the value's size. Readers join whatever chunks they
        # find, so values written with the older size read the same.
        key_size = len(pk) + _LV_KEY_EXTRA
        return paired_entry_size(self._view.page_size) - LEAF_ENTRY_OVERHEAD - key_size

    def _write_long_value(self, pk: bytes, column: int, data: bytes) -> None:
        put = self._view.put
        for key, chunk in self._long_value_chunks(pk, column, data):
            put(key, chunk, False)

    def _long_value_chunks(
        self, pk: bytes, column: int, data: bytes
    ) -> Iterator[tuple[bytes, bytes]]:
        """The chunk entries holding long value `data` of column `column` of record `pk`.

        As few chunks as `_chunk_size` allows, of even sizes (within a byte of each other):
        a remainder chunk of a few bytes could not share a leaf with its neighbours' full
        chunks, and a value of 1.1 chunks would take two half-empty leaves.
        """
        count = -(-len(data) // self._chunk_size(pk))
        base, longer = divmod(len(data), count) if count else (0, 0)
        lv_id = self.definition.lv_id
        view = memoryview(data)
        start = 0
        for chunk in range(count):
            end = start + base + (chunk < longer)
            yield long_value_key(lv_id, pk, column, chunk), bytes(view[start:end])
            start = end

    def _long_value_keys(self, old: _OldRecord, keep: set[int] | None = None) -> list[bytes]:
        """The chunk keys of the long values of `old` not in `keep`, for phase 2 of a write
        to delete: read (and checked complete) before anything is written."""
        return [
            key
            for position, ref in old.long_values.items()
            if keep is None or position not in keep
            for key, _ in self._long_value_entries(self._view, old.pk, position, ref, True)
        ]

    def _chunks_by_key(
        self, view: ReadView, pk: bytes, column: int
    ) -> Iterator[tuple[bytes, bytes]]:
        """The chunk entries of long value `column` of record `pk`, read one key at a time:
        chunk 0, 1, ... up to the first absent one (every writer numbers them from 0 without a
        gap, whatever their size). For a transaction holding gathered writes: a range read
        would apply them to its private tree first, and a record's read between inserts then
        cost each insert a path copy of its own instead of its share of one bulk merge."""
        lv_id = self.definition.lv_id
        get = view.get
        chunk = 0
        while True:
            key = long_value_key(lv_id, pk, column, chunk)
            value = get(key)
            if value is None:
                return
            yield key, value
            chunk += 1

    # ----------------------------------------------------------------- schema changes

    def index_entries(self, index_name: str, budget: int) -> list[tuple[bytes, bytes]]:
        """Every entry of index `index_name` for the table's records in the view as it is now,
        in key order, as (entry key, primary key): exactly what inserting each record writes
        (NULLs included, long values read). Nothing is written.

        KeyDuplicate if the index is unique and two records share a key without NULL (the
        message names the values and both primary keys); KeyTooBig for an entry too large;
        VersionStoreOutOfMemory once the entries would charge more than `budget` bytes.
        """
        self._check_usable()
        index = self.definition.index(index_name)
        view = self._view.frozen()
        prefix = self._prefix
        plen = len(prefix)
        index_prefix = self._index_prefixes[index.name]
        codec = self._codec
        decode_many, decode = codec.decode_many, codec.decode
        columns = index.columns
        lv_positions = [
            (position, name) for position, name, _is_text in self._lv_columns if name in columns
        ]
        # The entry key's bound, as `_index_entry` checks it for one record.
        max_key = MAX_KEY_SIZE
        max_entry = self._max_entry - LEAF_ENTRY_OVERHEAD
        seen: dict[bytes, bytes] | None = {} if index.unique else None
        entries: list[tuple[bytes, bytes]] = []
        append = entries.append
        used = 0
        for keys, values in view.chunks(prefix, prefix_successor(prefix)):
            try:
                records = decode_many(values)
            except (IndexError, struct.error, UnicodeDecodeError, ValueError):
                records = [None] * len(values)
            for key, raw, plain in zip(keys, values, records, strict=True):
                pk = key[plen:]
                record: Mapping[str, object]
                if plain is not None:
                    record = plain  # the common record: no NULL, no long value
                else:
                    record = full = decode(raw, pk)
                    for position, name in lv_positions:
                        ref = full.get(name)
                        if isinstance(ref, LongValueRef):
                            full[name] = self._read_long_value(view, pk, position, ref)
                key_values = [record[name] for name in columns]
                head = index_prefix + encode_key(key_values)  # type: ignore[arg-type]
                entry = head + pk
                if len(entry) > max_key or len(entry) + len(pk) > max_entry:
                    self._index_entry(index, record, pk)  # raises the precise KeyTooBig
                if seen is not None and None not in key_values:
                    # NULLs never collide (as `_unique_prefix` says); otherwise the entry
                    # without its primary key is the whole key, byte for byte.
                    other = seen.setdefault(head, pk)
                    if other != pk:
                        raise KeyDuplicate(
                            f"unique index {index.name!r} of table {self.name!r} cannot be "
                            f"built: the records with primary keys {decode_key(other)!r} and "
                            f"{decode_key(pk)!r} both have key {tuple(key_values)!r} "
                            f"(columns {list(columns)})",
                            hint="change or delete the duplicates first, or create the index "
                            "without unique=True; nothing was written",
                        )
                append((entry, pk))
                used += len(entry) + len(pk) + OPERATION_OVERHEAD
            if used > budget:
                raise VersionStoreOutOfMemory(
                    f"building index {index.name!r} of table {self.name!r} writes more "
                    f"than the {budget} bytes left under the transaction's bound "
                    f"({len(entries)} entries so far); nothing was written",
                    hint="open the instance with a larger max_transaction_bytes (the "
                    "build is one transaction), or create a new table with the index and "
                    "copy the rows over in several smaller transactions",
                )
        entries.sort()
        return entries

    def entries_without_column(
        self, name: str, codec: RecordCodec, shape: TableShape, budget: int
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes], list[tuple[bytes, bytes]]]:
        """What dropping column `name` changes, for the definition `shape` describes and whose
        records `codec` encodes: (record entries rewritten without it, long-value chunk keys
        to delete, chunk entries to write). Later columns move down one position, so their
        long-value references and chunk keys are renumbered. Nothing is written.

        A record stored before columns were appended decodes with their defaults, which the
        rewrite then stores: when that makes its entry too large (a long text default), its
        largest values move to long-value chunks as an insert's would (so every entry still
        fits the B+tree's limit).

        VersionStoreOutOfMemory once the changes would charge more than `budget` bytes.
        """
        self._check_usable()
        position = self.definition.column_index(name)
        view = self._view.frozen()
        prefix = self._prefix
        decode = self._codec.decode
        encode = codec.encode
        rewriter = Table(self._view, shape.definition, codec, shape)
        used = 0

        def charge(amount: int) -> None:
            nonlocal used
            used += amount + OPERATION_OVERHEAD
            if used > budget:
                raise VersionStoreOutOfMemory(
                    f"dropping column {name!r} of table {self.name!r} rewrites each of its "
                    f"records in this transaction, more than the {budget} bytes left under "
                    "its bound; nothing was written",
                    hint="open the instance with a larger max_transaction_bytes (the rewrite "
                    "is one transaction)",
                )

        records: list[tuple[bytes, bytes]] = []
        # Chunks of values the rewrite moves out of their record (new positions: no chunk of
        # the record is there, as the value was inline), written after the deletes below.
        moved: list[tuple[bytes, bytes]] = []
        limit = self._max_entry - LEAF_ENTRY_OVERHEAD
        for keys, values in view.chunks(prefix, prefix_successor(prefix)):
            for key, raw in zip(keys, values, strict=True):
                record = decode(raw, key[len(prefix) :])
                del record[name]
                for column, column_name, _is_text in self._lv_columns:
                    ref = record.get(column_name)
                    if column > position and isinstance(ref, LongValueRef):
                        record[column_name] = LongValueRef(column - 1, ref.length, ref.is_text)
                encoded = encode(record)
                if len(encoded) > limit - len(key):
                    encoded, long_values = rewriter._encode_stored(key, record, encoded)
                    pk = key[len(prefix) :]
                    for column, data in long_values:
                        for chunk_key, chunk in rewriter._long_value_chunks(pk, column, data):
                            moved.append((chunk_key, chunk))
                            charge(len(chunk_key) + len(chunk))
                records.append((key, encoded))
                charge(len(key) + len(encoded))
        deleted: list[bytes] = []
        lv_prefix = object_prefix(self.definition.lv_id)
        for key, value in view.iterate(lv_prefix, prefix_successor(lv_prefix)):
            column, chunk = _LV_SUFFIX.unpack_from(key, len(key) - _LV_SUFFIX.size)
            if column < position:
                continue
            deleted.append(key)
            charge(len(key))
            if column > position:
                new_key = key[: len(key) - _LV_SUFFIX.size] + _LV_SUFFIX.pack(column - 1, chunk)
                moved.append((new_key, value))
                charge(len(new_key) + len(value))
        return records, deleted, moved


def key_values(key: object) -> Sequence[object]:
    return _as_tuple(key)
