"""What a record implies in the tree: its index entries and its long-value chunks.

This module owns the rules the table layer (`jetstore.tables.table`) follows when it stores a
record, restated for the tools that check (`integrity`) and rebuild (`repair`) a tree without
a transaction: the index entry of a record is ``index_id index_key pk`` with value ``pk``; a
text/bytes value kept apart is a `LongValueRef` whose chunks are ``lv_id pk column chunk``,
numbered from 0, adding up to the reference's length.

Invariants: pure functions, no I/O; a long value an index needs is read through the
`LongValueReader` the caller gives (which may fail with a `JetError`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import cast

from jetstore.tables.catalog import long_value_prefix, object_prefix
from jetstore.tables.keys import KeyInput, encode_key
from jetstore.tables.records import LongValueRef
from jetstore.tables.schema import TableDef

__all__ = [
    "LongValueReader",
    "assemble_long_value",
    "index_entries",
    "long_value_range",
    "long_value_refs",
    "parse_long_value_key",
    "primary_key_bytes",
]

#: (column position, reference) -> the value (str or bytes).
LongValueReader = Callable[[int, LongValueRef], str | bytes]
_LV_SUFFIX = struct.Struct(">HI")


def long_value_refs(
    table_def: TableDef, record: Mapping[str, object]
) -> list[tuple[int, LongValueRef]]:
    """(column position, reference) of every value of `record` kept in long-value chunks."""
    return [
        (position, value)
        for position, column in enumerate(table_def.columns)
        if isinstance(value := record.get(column.name), LongValueRef)
    ]


def _resolved(
    table_def: TableDef, record: Mapping[str, object], names: Iterable[str], read: LongValueReader
) -> list[KeyInput]:
    values: list[KeyInput] = []
    for name in names:
        value = record.get(name)
        if isinstance(value, LongValueRef):
            value = read(table_def.column_index(name), value)
        values.append(cast(KeyInput, value))
    return values


def primary_key_bytes(
    table_def: TableDef, record: Mapping[str, object], read: LongValueReader
) -> bytes:
    """The encoded primary key of `record` (as stored after the table's object id)."""
    return encode_key(_resolved(table_def, record, table_def.primary_key, read))


def index_entries(
    table_def: TableDef, record: Mapping[str, object], pk: bytes, read: LongValueReader
) -> dict[int, tuple[bytes, bytes | None]]:
    """index id -> (entry key, unique prefix or None) for every secondary index of the table.

    The unique prefix (``index_id index_key``) is given for unique indexes when no key value
    is NULL (NULLs never collide).
    """
    out: dict[int, tuple[bytes, bytes | None]] = {}
    for index, index_id in zip(table_def.indexes, table_def.index_ids, strict=True):
        values = _resolved(table_def, record, index.columns, read)
        prefix = object_prefix(index_id) + encode_key(values)
        unique = prefix if index.unique and all(v is not None for v in values) else None
        out[index_id] = (prefix + pk, unique)
    return out


def parse_long_value_key(key: bytes) -> tuple[bytes, int, int] | None:
    """(pk, column, chunk) of a long-value chunk key, None if too short to be one."""
    if len(key) < 4 + _LV_SUFFIX.size:
        return None
    column, chunk = _LV_SUFFIX.unpack_from(key, len(key) - _LV_SUFFIX.size)
    return key[4 : len(key) - _LV_SUFFIX.size], int(column), int(chunk)


def assemble_long_value(
    chunks: list[tuple[int, bytes]], ref: LongValueRef
) -> tuple[str | bytes | None, str | None]:
    """The value from its (chunk number, data) pairs in key order, or (None, what is wrong)."""
    numbers = [number for number, _ in chunks]
    if numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
        return None, f"chunk(s) {missing[:5]} missing" if missing else "chunks out of order"
    data = b"".join(part for _, part in chunks)
    if len(data) != ref.length:
        return None, f"{len(data)} bytes in {len(chunks)} chunk(s), the record says {ref.length}"
    if ref.is_text:
        try:
            return data.decode("utf-8", "surrogatepass"), None
        except UnicodeDecodeError:
            return None, "the text is not valid UTF-8"
    return data, None


def long_value_range(table_def: TableDef, pk: bytes, column: int) -> bytes:
    """The key prefix of the chunks of one long value."""
    return long_value_prefix(table_def.lv_id, pk, column)
