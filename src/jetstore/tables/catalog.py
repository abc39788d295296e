"""The catalog and the key layout of everything a database's single B+tree holds.

Every key starts with a 4-byte big-endian object id, so each object is one contiguous key
range and a range scan of one object never touches another:

| object | key | value |
| --- | --- | --- |
| catalog (id 0) | `00000000 'T' name(utf-8)` | encoded `TableDef` |
| catalog (id 0) | `00000000 'N'` | next free object id (u32 big-endian) |
| table data | `table_id pk` | encoded record |
| secondary index | `index_id index_key pk` | `pk` (the record's encoded primary key) |
| long values | `lv_id pk column(u16) chunk(u32)` | one chunk of a long text/bytes value |

`pk` and `index_key` are `jetstore.tables.keys.encode_key` encodings. Putting `pk` at the end
of index keys makes every index entry unique, so unique and non-unique indexes share one
layout; uniqueness is checked by scanning the `index_id index_key` prefix.

Catalog entries are ordinary tree entries: creating a table is a write in a transaction,
logged and replayed like data, and invisible to other transactions until it commits.
"""

from __future__ import annotations

import struct
from typing import Final

from jetstore.tables.schema import TableDef, decode_table_def, encode_table_def

CATALOG_ID: Final = 0
FIRST_OBJECT_ID: Final = 1
_OBJECT = struct.Struct(">I")
CATALOG_PREFIX: Final = _OBJECT.pack(CATALOG_ID)
TABLE_ENTRY_PREFIX: Final = CATALOG_PREFIX + b"T"
NEXT_OBJECT_ID_KEY: Final = CATALOG_PREFIX + b"N"
_LV_SUFFIX = struct.Struct(">HI")


def object_prefix(object_id: int) -> bytes:
    return _OBJECT.pack(object_id)


def table_entry_key(name: str) -> bytes:
    return TABLE_ENTRY_PREFIX + name.encode("utf-8")


def table_name_from_key(key: bytes) -> str:
    return key[len(TABLE_ENTRY_PREFIX) :].decode("utf-8")


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
    "TABLE_ENTRY_PREFIX",
    "TableDef",
    "decode_next_object_id",
    "decode_table_def",
    "encode_next_object_id",
    "encode_table_def",
    "long_value_key",
    "long_value_prefix",
    "object_prefix",
    "table_entry_key",
    "table_name_from_key",
]
