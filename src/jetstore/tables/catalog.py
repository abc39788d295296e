"""The catalog and the key layout of everything a database's single B+tree holds.

Every key starts with a 4-byte big-endian object id, so each object is one contiguous key
range and a range scan of one object never touches another:

| object | key | value |
| --- | --- | --- |
| catalog (id 0) | `00000000 'T' name(utf-8)` | encoded `TableDef` |
| catalog (id 0) | `00000000 'N'` | next free object id (u32 big-endian) |
| catalog (id 0) | `00000000 'D' name(utf-8) 00 chunk(u32 BE)` | chunk of a large `TableDef` |
| table data | `table_id pk` | encoded record |
| secondary index | `index_id index_key pk` | `pk` (the record's encoded primary key) |
| long values | `lv_id pk column(u16) chunk(u32)` | one chunk of a long text/bytes value |

`pk` and `index_key` are `jetstore.tables.keys.encode_key` encodings. Putting `pk` at the end
of index keys makes every index entry unique, so unique and non-unique indexes share one
layout; uniqueness is checked by scanning the entries that start with the whole
`index_id index_key` (up to `keys.tuple_prefix_stop` of it: a byte prefix alone would also
take a text or bytes value followed by NUL bytes for the same value).

A table definition is stored in its `'T'` entry when the entry fits the B+tree's entry limit.
A larger one (a table with many columns) is split into `'D'` chunks and its `'T'` entry holds
`00 length(u32 big-endian) chunk count(u32 big-endian)` instead; an encoded definition is JSON
and starts with `{`, so the leading 00 byte tells the two forms apart. Names cannot contain a 00
byte, so `'D' name 00` is the chunk prefix of exactly one table.

Catalog entries are ordinary tree entries: creating a table, or changing its definition
(`Transaction.create_index`, `drop_index`, `add_column`, `drop_column`: the `'T'` entry and its
chunks rewritten, a new index taking the next object id), is a write in a transaction, logged
and replayed like data, and invisible to other transactions until it commits.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from jetstore.errors import DatabaseCorrupted, JetError
from jetstore.pages.btree import LEAF_ENTRY_OVERHEAD, max_entry_size
from jetstore.tables.keys import decode_key
from jetstore.tables.schema import TableDef, decode_table_def, encode_table_def

CATALOG_ID: Final = 0
FIRST_OBJECT_ID: Final = 1
_OBJECT = struct.Struct(">I")
CATALOG_PREFIX: Final = _OBJECT.pack(CATALOG_ID)
TABLE_ENTRY_PREFIX: Final = CATALOG_PREFIX + b"T"
NEXT_OBJECT_ID_KEY: Final = CATALOG_PREFIX + b"N"
TABLE_DEF_CHUNK_PREFIX: Final = CATALOG_PREFIX + b"D"
_LV_SUFFIX = struct.Struct(">HI")
_CHUNK_NUMBER = struct.Struct(">I")
_CHUNKED = struct.Struct(">BII")  # 00, total length, chunk count
_CHUNKED_MARK = 0


def object_prefix(object_id: int) -> bytes:
    return _OBJECT.pack(object_id)


def _name_bytes(name: str) -> bytes:
    # Stored names are ASCII (`schema` refuses anything else), but a lookup may be handed any
    # str: one with a lone surrogate must find nothing, not raise UnicodeEncodeError.
    return name.encode("utf-8", "surrogatepass")


def table_entry_key(name: str) -> bytes:
    return TABLE_ENTRY_PREFIX + _name_bytes(name)


def table_name_from_key(key: bytes) -> str:
    return key[len(TABLE_ENTRY_PREFIX) :].decode("utf-8")


def table_def_chunk_prefix(name: str) -> bytes:
    """Prefix of the chunk entries of table `name`'s definition (see the module docstring)."""
    return TABLE_DEF_CHUNK_PREFIX + _name_bytes(name) + b"\x00"


def table_def_chunk_key(name: str, chunk: int) -> bytes:
    return table_def_chunk_prefix(name) + _CHUNK_NUMBER.pack(chunk)


def table_def_entries(name: str, encoded: bytes, page_size: int) -> list[tuple[bytes, bytes]]:
    """The catalog entries storing table `name`'s encoded definition on `page_size` pages."""
    entry_key = table_entry_key(name)
    limit = max_entry_size(page_size) - LEAF_ENTRY_OVERHEAD
    if len(entry_key) + len(encoded) <= limit:
        return [(entry_key, encoded)]
    size = limit - len(table_def_chunk_key(name, 0))
    chunks = [encoded[start : start + size] for start in range(0, len(encoded), size)]
    return [
        (entry_key, _CHUNKED.pack(_CHUNKED_MARK, len(encoded), len(chunks))),
        *((table_def_chunk_key(name, i), chunk) for i, chunk in enumerate(chunks)),
    ]


def chunked_table_def(value: bytes) -> tuple[int, int] | None:
    """(length, chunk count) when a `'T'` entry's value says the definition is chunked."""
    if not value or value[0] != _CHUNKED_MARK:
        return None
    if len(value) != _CHUNKED.size:
        raise DatabaseCorrupted(f"malformed chunked table definition entry ({value.hex()})")
    _mark, length, count = _CHUNKED.unpack(value)
    return int(length), int(count)


def join_table_def_chunks(name: str, value: bytes, chunks: list[bytes]) -> bytes:
    """The encoded definition from its `'T'` entry `value` and its chunks, in key order."""
    shape = chunked_table_def(value)
    if shape is None:
        return value
    length, count = shape
    data = b"".join(chunks)
    if len(chunks) != count or len(data) != length:
        raise DatabaseCorrupted(
            f"the definition of table {name!r} should have {count} chunk(s) of {length} bytes "
            f"in all; the catalog holds {len(chunks)} chunk(s) of {len(data)} bytes",
            hint="run `jetstore integrity` on the database",
        )
    return data


def describe_key(key: bytes, tables: Iterable[TableDef]) -> str:
    """What the tree entry `key` is, in words, for error messages: a catalog entry, or the
    record, index entry or long-value chunk of one of `tables` (with its key values).

    A key of no table in `tables` is named by its bytes. Never raises.
    """
    try:
        return _describe(key, tables)
    except (JetError, ValueError, IndexError, struct.error):
        return f"the entry with key {_hex(key)}"


def _describe(key: bytes, tables: Iterable[TableDef]) -> str:
    if key.startswith(TABLE_ENTRY_PREFIX):
        return f"the definition of table {table_name_from_key(key)!r}"
    if key == NEXT_OBJECT_ID_KEY:
        return "the catalog's next object id (another table was created)"
    if key.startswith(TABLE_DEF_CHUNK_PREFIX):
        name = key[len(TABLE_DEF_CHUNK_PREFIX) : key.index(0, len(TABLE_DEF_CHUNK_PREFIX))]
        return f"the definition of table {name.decode('utf-8')!r}"
    object_id = int(_OBJECT.unpack_from(key)[0])
    rest = key[_OBJECT.size :]
    for t in tables:
        if object_id == t.table_id:
            return f"the record with primary key {decode_key(rest)!r} of table {t.name!r}"
        if object_id == t.lv_id:
            pk = decode_key(rest[: -_LV_SUFFIX.size])
            return f"a long value of the record with primary key {pk!r} of table {t.name!r}"
        for index, index_id in zip(t.indexes, t.index_ids, strict=True):
            if object_id == index_id:
                values = decode_key(rest)
                width = len(index.columns)
                return (
                    f"the entry for key {values[:width]!r} (primary key {values[width:]!r}) of "
                    f"index {index.name!r} of table {t.name!r}"
                )
    return f"the entry with key {_hex(key)}"


def _hex(key: bytes) -> str:
    return key.hex() if len(key) <= 32 else key[:32].hex() + "…"


def encode_next_object_id(value: int) -> bytes:
    return _OBJECT.pack(value)


def decode_next_object_id(value: bytes | None) -> int:
    return FIRST_OBJECT_ID if value is None else int(_OBJECT.unpack(value)[0])


def long_value_prefix(lv_id: int, pk: bytes, column: int) -> bytes:
    return _OBJECT.pack(lv_id) + pk + _LV_SUFFIX.pack(column, 0)[:2]


def long_value_key(lv_id: int, pk: bytes, column: int, chunk: int) -> bytes:
    return _OBJECT.pack(lv_id) + pk + _LV_SUFFIX.pack(column, chunk)


__all__ = [
    "CATALOG_ID",
    "CATALOG_PREFIX",
    "FIRST_OBJECT_ID",
    "NEXT_OBJECT_ID_KEY",
    "TABLE_DEF_CHUNK_PREFIX",
    "TABLE_ENTRY_PREFIX",
    "TableDef",
    "chunked_table_def",
    "decode_next_object_id",
    "decode_table_def",
    "describe_key",
    "encode_next_object_id",
    "encode_table_def",
    "join_table_def_chunks",
    "long_value_key",
    "long_value_prefix",
    "object_prefix",
    "table_def_chunk_key",
    "table_def_chunk_prefix",
    "table_def_entries",
    "table_entry_key",
    "table_name_from_key",
]
