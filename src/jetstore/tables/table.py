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
- A unique index never holds two records with the same non-NULL key (checked at write time
  against the transaction's view, and again at commit against the latest state).
- Every leaf entry fits the B+tree's entry limit: values that would not are moved out of the
  record into long-value chunks, largest first; a record that still does not fit raises
  `RecordTooBig`, and a key that does not fit raises `KeyTooBig`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, cast

from jetstore.errors import (
    DatabaseCorrupted,
    InvalidParameter,
    KeyDuplicate,
    KeyTooBig,
    RecordNotFound,
    RecordTooBig,
)
from jetstore.pages.btree import LEAF_ENTRY_OVERHEAD, MAX_KEY_SIZE, max_entry_size
from jetstore.tables.catalog import long_value_key, long_value_prefix, object_prefix
from jetstore.tables.keys import KeyInput, encode_key, prefix_successor
from jetstore.tables.records import LongValueRef, RecordCodec
from jetstore.tables.schema import ColumnType, IndexDef, TableDef

_LV_KEY_EXTRA = 4 + 2 + 4  # lv object id, column, chunk number


class TreeView(Protocol):
    """What a table needs from its transaction: reads and writes of the private tree view."""

    page_size: int

    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...

    def iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]: ...

    def add_unique_check(self, prefix: bytes, own_key: bytes) -> None: ...


def _as_tuple(key: object) -> tuple[Any, ...]:
    if isinstance(key, tuple):
        return key
    if isinstance(key, list):
        return tuple(key)
    return (key,)


class Table:
    """Records of one table inside one transaction. Obtain it with `Transaction.table(name)`."""

    def __init__(self, view: TreeView, table_def: TableDef, codec: RecordCodec) -> None:
        self._view = view
        self.definition = table_def
        self._codec = codec
        self._prefix = object_prefix(table_def.table_id)
        self._index_prefixes = {
            index.name: object_prefix(index_id)
            for index, index_id in zip(table_def.indexes, table_def.index_ids, strict=True)
        }
        self._max_entry = max_entry_size(view.page_size)
        self._lv_columns = [
            (i, column.name, column.type is ColumnType.TEXT)
            for i, column in enumerate(table_def.columns)
            if column.type in (ColumnType.TEXT, ColumnType.BYTES)
        ]
        self._pk_names = table_def.primary_key

    @property
    def name(self) -> str:
        return self.definition.name

    # ----------------------------------------------------------------- keys

    def _encode_pk(self, key: object) -> bytes:
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
        if len(encoded) + 4 > MAX_KEY_SIZE:
            raise KeyTooBig(
                f"primary key of table {self.name!r} encodes to {len(encoded)} bytes; "
                f"the limit is {MAX_KEY_SIZE - 4 - _LV_KEY_EXTRA}"
            )
        return encoded

    def _index_entry(self, index: IndexDef, record: Mapping[str, object], pk: bytes) -> bytes:
        values = [cast(KeyInput, record[name]) for name in index.columns]
        key = self._index_prefixes[index.name] + encode_key(values) + pk
        if len(key) > MAX_KEY_SIZE:
            raise KeyTooBig(
                f"index {index.name!r} of table {self.name!r}: the entry key encodes to "
                f"{len(key)} bytes; the limit is {MAX_KEY_SIZE}"
            )
        return key

    def _unique_prefix(self, index: IndexDef, record: Mapping[str, object]) -> bytes | None:
        values = [cast(KeyInput, record[name]) for name in index.columns]
        if not index.unique or any(v is None for v in values):
            return None  # NULLs never collide, as in SQL
        return self._index_prefixes[index.name] + encode_key(values)

    # ----------------------------------------------------------------- reads

    def get(self, key: object) -> dict[str, object] | None:
        """The record with primary key `key` (a value, or a tuple for compound keys)."""
        pk = self._encode_pk(key)
        raw = self._view.get(self._prefix + pk)
        return None if raw is None else self._materialize(pk, raw)

    def __contains__(self, key: object) -> bool:
        return self._view.get(self._prefix + self._encode_pk(key)) is not None

    def _materialize(self, pk: bytes, raw: bytes) -> dict[str, object]:
        record = self._codec.decode(raw)
        for position, name, _is_text in self._lv_columns:
            value = record.get(name)
            if isinstance(value, LongValueRef):
                record[name] = self._read_long_value(pk, position, value)
        return record

    def _read_long_value(self, pk: bytes, column: int, ref: LongValueRef) -> str | bytes:
        prefix = long_value_prefix(self.definition.lv_id, pk, column)
        parts = [chunk for _key, chunk in self._view.iterate(prefix, prefix_successor(prefix))]
        data = b"".join(parts)
        if len(data) != ref.length:
            raise DatabaseCorrupted(
                f"long value of column {self.definition.columns[column].name!r} in table "
                f"{self.name!r} has {len(data)} bytes, its record says {ref.length}",
                hint="run `jetstore integrity` on the database",
            )
        return data.decode("utf-8", "surrogatepass") if ref.is_text else data

    def scan(
        self,
        index: str | None = None,
        start: object = None,
        stop: object = None,
        reverse: bool = False,
    ) -> Iterator[dict[str, object]]:
        """Records in key order of the primary key or of `index`, from `start` (inclusive) to
        `stop` (exclusive); either may be a partial key (a tuple prefix of the key columns).
        """
        if index is None:
            prefix = self._prefix
        else:
            self.definition.index(index)  # IndexNotFound for an unknown name
            prefix = self._index_prefixes[index]
        low = prefix if start is None else prefix + encode_key(list(_as_tuple(start)))
        high = (
            prefix_successor(prefix) if stop is None else prefix + encode_key(list(_as_tuple(stop)))
        )
        view = self._view
        if index is None:
            plen = len(prefix)
            for key, raw in view.iterate(low, high, reverse):
                yield self._materialize(key[plen:], raw)
        else:
            table_prefix = self._prefix
            for _key, pk in view.iterate(low, high, reverse):
                record_raw = view.get(table_prefix + pk)
                if record_raw is None:
                    raise DatabaseCorrupted(
                        f"index {index!r} of table {self.name!r} points to a missing record",
                        hint="run `jetstore integrity` on the database",
                    )
                yield self._materialize(pk, record_raw)

    def __iter__(self) -> Iterator[dict[str, object]]:
        return self.scan()

    # ----------------------------------------------------------------- writes

    def insert(self, record: Mapping[str, object]) -> None:
        """Add a record; `KeyDuplicate` if its primary key or a unique index key exists."""
        checked = self.definition.validate_record(record)
        pk = self._encode_pk([checked[name] for name in self._pk_names])
        key = self._prefix + pk
        view = self._view
        if view.get(key) is not None:
            raise KeyDuplicate(
                f"table {self.name!r} already has a record with primary key "
                f"{self._describe_key(checked)}"
            )
        self._write_record(key, pk, checked, old=None)

    def update(self, key: object, changes: Mapping[str, object]) -> dict[str, object]:
        """Change some columns of the record with primary key `key`; returns the new record.

        Changing primary-key columns moves the record (its old key disappears).
        """
        pk = self._encode_pk(key)
        view = self._view
        raw = view.get(self._prefix + pk)
        if raw is None:
            raise RecordNotFound(
                f"table {self.name!r} has no record with primary key {_as_tuple(key)!r}"
            )
        old = self._materialize(pk, raw)
        self.definition.validate_record(changes, partial=True)
        merged = {**old, **changes}
        checked = self.definition.validate_record(merged)
        new_pk = self._encode_pk([checked[name] for name in self._pk_names])
        if new_pk != pk:
            if view.get(self._prefix + new_pk) is not None:
                raise KeyDuplicate(
                    f"table {self.name!r} already has a record with primary key "
                    f"{self._describe_key(checked)}"
                )
            self._remove_record(pk, old, self._codec.decode(raw))
            self._write_record(self._prefix + new_pk, new_pk, checked, old=None)
        else:
            self._write_record(self._prefix + pk, pk, checked, old=(old, self._codec.decode(raw)))
        return dict(checked)

    def delete(self, key: object) -> None:
        """Remove the record with primary key `key`; `RecordNotFound` if there is none."""
        pk = self._encode_pk(key)
        raw = self._view.get(self._prefix + pk)
        if raw is None:
            raise RecordNotFound(
                f"table {self.name!r} has no record with primary key {_as_tuple(key)!r}"
            )
        self._remove_record(pk, self._materialize(pk, raw), self._codec.decode(raw))

    def upsert(self, record: Mapping[str, object]) -> None:
        """Insert the record, or replace every column of the existing one with the same key."""
        checked = self.definition.validate_record(record)
        pk = self._encode_pk([checked[name] for name in self._pk_names])
        raw = self._view.get(self._prefix + pk)
        if raw is None:
            self._write_record(self._prefix + pk, pk, checked, old=None)
        else:
            old = self._materialize(pk, raw)
            self._write_record(self._prefix + pk, pk, checked, old=(old, self._codec.decode(raw)))

    # ----------------------------------------------------------------- internals

    def _describe_key(self, record: Mapping[str, object]) -> str:
        return repr(tuple(record[name] for name in self._pk_names))

    def _write_record(
        self,
        key: bytes,
        pk: bytes,
        record: dict[str, object],
        old: tuple[dict[str, object], dict[str, object]] | None,
    ) -> None:
        view = self._view
        # Unique indexes first, so a violation leaves the view unchanged.
        for index in self.definition.indexes:
            unique = self._unique_prefix(index, record)
            if unique is None:
                continue
            if old is not None and self._unique_prefix(index, old[0]) == unique:
                continue
            for other_key, other_pk in view.iterate(unique, prefix_successor(unique)):
                if other_pk != pk:
                    raise KeyDuplicate(
                        f"unique index {index.name!r} of table {self.name!r} already has "
                        f"key {tuple(record[c] for c in index.columns)!r} (other record "
                        f"in the way; entry {other_key.hex()[:32]}…)"
                    )
        # Index entries: remove stale ones, add new ones.
        for index in self.definition.indexes:
            entry = self._index_entry(index, record, pk)
            if old is not None:
                old_entry = self._index_entry(index, old[0], pk)
                if old_entry == entry:
                    continue
                view.delete(old_entry)
            view.put(entry, pk)
            unique = self._unique_prefix(index, record)
            if unique is not None:
                view.add_unique_check(unique, entry)
        # Long values: drop the old chunks of every text/bytes column, write new ones.
        stored = dict(record)
        if old is not None:
            for position, name, _is_text in self._lv_columns:
                if isinstance(old[1].get(name), LongValueRef):
                    self._delete_long_value(pk, position)
        encoded = self._codec.encode(stored)
        limit = self._max_entry - LEAF_ENTRY_OVERHEAD - len(key)
        if len(encoded) > limit:
            candidates = sorted(
                (
                    (len(value), position, name, is_text)
                    for position, name, is_text in self._lv_columns
                    if isinstance(value := stored.get(name), str | bytes)
                ),
                reverse=True,
            )
            for _size, position, name, is_text in candidates:
                value = stored[name]
                assert isinstance(value, str | bytes)
                data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
                self._write_long_value(pk, position, data)
                stored[name] = LongValueRef(position, len(data), is_text)
                encoded = self._codec.encode(stored)
                if len(encoded) <= limit:
                    break
            if len(encoded) > limit:
                raise RecordTooBig(
                    f"a record of table {self.name!r} needs {len(encoded)} bytes even with its "
                    f"text and bytes values stored apart; a page of {self._view.page_size} "
                    f"bytes holds at most {limit}",
                    hint="use a larger page_size or fewer/smaller non-text columns",
                )
        view.put(key, encoded)

    def _remove_record(
        self, pk: bytes, record: dict[str, object], stored: dict[str, object]
    ) -> None:
        view = self._view
        for index in self.definition.indexes:
            view.delete(self._index_entry(index, record, pk))
        for position, name, _is_text in self._lv_columns:
            if isinstance(stored.get(name), LongValueRef):
                self._delete_long_value(pk, position)
        view.delete(self._prefix + pk)

    def _chunk_size(self, pk: bytes) -> int:
        key_size = len(pk) + _LV_KEY_EXTRA
        return self._max_entry - LEAF_ENTRY_OVERHEAD - key_size

    def _write_long_value(self, pk: bytes, column: int, data: bytes) -> None:
        size = self._chunk_size(pk)
        lv_id = self.definition.lv_id
        put = self._view.put
        view = memoryview(data)
        for chunk, start in enumerate(range(0, len(data), size)):
            put(long_value_key(lv_id, pk, column, chunk), bytes(view[start : start + size]))

    def _delete_long_value(self, pk: bytes, column: int) -> None:
        prefix = long_value_prefix(self.definition.lv_id, pk, column)
        keys = [key for key, _ in self._view.iterate(prefix, prefix_successor(prefix))]
        for key in keys:
            self._view.delete(key)


def key_values(key: object) -> Sequence[object]:
    return _as_tuple(key)
