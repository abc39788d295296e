"""Column, index and table definitions, record validation, and their catalog encoding.

This module owns what a table *is*: its typed columns, primary key, secondary indexes and the
object ids under which its rows, index entries and long values live in the database's B+tree.
It is pure (no I/O); the catalog code stores ``encode_table_def`` bytes and reads them back
with ``decode_table_def``.

Invariants
----------
1. A ``TableDef`` that exists is valid: names follow the name rules, column and index names
   are unique, the primary key and every index name existing columns, every primary key column
   is NOT NULL (forced, since a key column cannot be NULL), object ids are distinct and in
   ``1 .. 2**32-1`` (0 is the catalog), and ``index_ids`` parallels ``indexes``. Both
   construction paths (``make_table_def``, ``decode_table_def``) go through that check.
2. ``validate_record`` returns only values the record codec and key codec accept: ints in the
   signed 64-bit range (never bool), floats as ``float``, bytes-like values as ``bytes``,
   datetimes whose UTC instant is representable, None only in nullable columns.
3. ``decode_table_def(encode_table_def(t)) == t``, and the encoding is deterministic (the same
   definition always gives the same bytes). Definitions are equal exactly when they encode
   alike: a float default compares by its stored form (-0.0 is not 0.0, NaN equals NaN), so
   a cache keyed by an equal definition (`Database.codec_for`) serves the right defaults.

Names (tables, columns, indexes): 1 to 64 ASCII letters, digits or underscores, not starting
with a digit; compared case-sensitively.

FLOAT columns may be key columns. NaN is then a legal key value that sorts after +inf and
equals itself as a key (all NaNs are one key), unlike in Python, and -0.0 and 0.0 are two
distinct keys.

Catalog encoding
----------------
Compact JSON (``sort_keys``, no whitespace, ASCII only), UTF-8::

    {"columns": [{"default": D, "name": s, "nullable": b, "type": s}, ...],
     "indexes": [{"columns": [s, ...], "id": n, "name": s, "unique": b}, ...],
     "lv_id": n, "name": s, "primary_key": [s, ...], "table_id": n, "version": 1}

A default ``D`` is encoded according to its column's type, so it needs no tag of its own:
null for None, a JSON int / string / bool for int / text / bool, ``float.hex()`` for float
(exact, and covers inf and nan), lowercase hex for bytes, and ``{"aware": b, "us": n}``
(microseconds since the Unix epoch in UTC) for datetime.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from jetstore.errors import (
    ColumnDuplicate,
    ColumnIndexed,
    ColumnNotFound,
    DatabaseCorrupted,
    IndexDuplicate,
    IndexNotFound,
    InvalidColumnType,
    InvalidParameter,
    JetError,
    NullInvalid,
)
from jetstore.tables.keys import datetime_as_read, datetime_to_micros, micros_to_datetime

__all__ = [
    "MAX_COLUMNS",
    "MAX_NAME_LENGTH",
    "MAX_OBJECT_ID",
    "TABLE_DEF_VERSION",
    "Column",
    "ColumnType",
    "IndexDef",
    "TableDef",
    "decode_table_def",
    "encode_table_def",
    "make_table_def",
]

MAX_NAME_LENGTH = 64
# The record format stores the column count in 16 bits.
MAX_COLUMNS = 0xFFFF
# Object ids are the 4-byte big-endian key prefix; 0 is the catalog.
MAX_OBJECT_ID = 0xFFFFFFFF
TABLE_DEF_VERSION = 1

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ColumnType(StrEnum):
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    BYTES = "bytes"
    BOOL = "bool"
    DATETIME = "datetime"


_TYPE_ALIASES: dict[str, ColumnType] = {
    "integer": ColumnType.INT,
    "double": ColumnType.FLOAT,
    "str": ColumnType.TEXT,
    "string": ColumnType.TEXT,
    "binary": ColumnType.BYTES,
    "blob": ColumnType.BYTES,
    "boolean": ColumnType.BOOL,
    "timestamp": ColumnType.DATETIME,
}


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidParameter(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidParameter(
            f"{kind} name {name!r} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not name.isascii() or _NAME_RE.fullmatch(name) is None:
        raise InvalidParameter(
            f"{kind} name {name!r} is not valid",
            hint="use ASCII letters, digits and underscores, not starting with a digit",
        )
    return name


def _normalize_type(value: object) -> ColumnType:
    if isinstance(value, ColumnType):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        try:
            return ColumnType(key)
        except ValueError:
            if key in _TYPE_ALIASES:
                return _TYPE_ALIASES[key]
    raise InvalidParameter(
        f"unknown column type {value!r}",
        hint="use one of: " + ", ".join(t.value for t in ColumnType),
    )


class _Mismatch(Exception):
    """A value of the wrong Python type; turned into InvalidColumnType with context."""


class _OutOfRange(Exception):
    """A value of the right type that the codecs cannot store; becomes InvalidParameter."""


def _check_int(v: object) -> object:
    if type(v) is int:
        if v < _INT_MIN or v > _INT_MAX:
            raise _OutOfRange(f"{v} is outside the signed 64-bit range")
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return _check_int(int(v))
    raise _Mismatch


def _check_float(v: object) -> object:
    if type(v) is float:
        return v
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            raise _OutOfRange(f"{v} is too large for a float") from None
    raise _Mismatch


def _check_text(v: object) -> object:
    if type(v) is str:
        return v
    if isinstance(v, str):
        return str(v)
    raise _Mismatch


def _check_bytes(v: object) -> object:
    if type(v) is bytes:
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise _Mismatch


def _check_bool(v: object) -> object:
    if isinstance(v, bool):
        return bool(v)
    raise _Mismatch


def _check_datetime(v: object) -> object:
    if isinstance(v, datetime):
        try:
            datetime_to_micros(v)
        except InvalidParameter as exc:
            raise _OutOfRange(exc.detail) from None
        return v
    raise _Mismatch


_CHECKERS: dict[ColumnType, Callable[[object], object]] = {
    ColumnType.INT: _check_int,
    ColumnType.FLOAT: _check_float,
    ColumnType.TEXT: _check_text,
    ColumnType.BYTES: _check_bytes,
    ColumnType.BOOL: _check_bool,
    ColumnType.DATETIME: _check_datetime,
}


@dataclass(frozen=True, init=False, eq=False)
class Column:
    """A typed column. ``type`` accepts a ColumnType or its (case-insensitive) name.

    Two columns are equal when they are stored alike (invariant 3): a float default compares
    as the catalog stores it (``float.hex()``), so -0.0 and 0.0 are two defaults (old records
    read each as itself, and a definition cached under one must not serve the other) and
    every NaN is one (a definition with a NaN default equals its decoded copy). A datetime
    default is kept as a stored value reads (``keys.datetime_as_read``: aware in UTC, fold
    0), which is all the catalog keeps of it, so ``==`` (which ignores fold) cannot make two
    definitions equal that old records would read differently.
    """

    name: str
    type: ColumnType
    nullable: bool
    default: object

    def __init__(
        self,
        name: str,
        type: ColumnType | str,
        nullable: bool = True,
        default: object = None,
    ) -> None:
        _check_name("column", name)
        ctype = _normalize_type(type)
        if not isinstance(nullable, bool):
            raise InvalidParameter(f"nullable of column {name!r} must be a bool")
        if default is not None:
            try:
                default = _CHECKERS[ctype](default)
            except _Mismatch:
                raise InvalidParameter(
                    f"default {default!r} of column {name!r} is not a {ctype.value} value"
                ) from None
            except _OutOfRange as exc:
                raise InvalidParameter(f"default of column {name!r}: {exc}") from None
            if isinstance(default, datetime):
                # As the catalog stores it and as every read returns a stored datetime: an
                # aware one in UTC, fold 0 (a record written before the column was added
                # reads this very object, and must read what a stored value reads).
                default = datetime_as_read(default)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "type", ctype)
        object.__setattr__(self, "nullable", nullable)
        object.__setattr__(self, "default", default)

    def _identity(self) -> tuple[object, ...]:
        default = self.default
        stored = ("float", default.hex()) if isinstance(default, float) else ("value", default)
        return (self.name, self.type, self.nullable, stored)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Column):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


@dataclass(frozen=True, init=False)
class IndexDef:
    """A secondary index over one or more columns: a list or tuple of names in key order, or a
    str for one column."""

    name: str
    columns: tuple[str, ...]
    unique: bool

    def __init__(self, name: str, columns: str | Sequence[str], unique: bool = False) -> None:
        _check_name("index", name)
        cols = _column_names(f"the columns of index {name!r}", columns)
        if not cols:
            raise InvalidParameter(f"index {name!r} must name at least one column")
        if len(set(cols)) != len(cols):
            raise InvalidParameter(f"index {name!r} names a column twice: {list(cols)}")
        if not isinstance(unique, bool):
            raise InvalidParameter(f"unique of index {name!r} must be a bool")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "unique", unique)


def _column_names(what: str, value: object) -> tuple[str, ...]:
    """A key's column names, in key order, from a name or an ordered sequence of names.

    Anything else is InvalidParameter: a set (its order, which would be the key's order,
    is arbitrary), a mapping, a non-iterable (None, a number), or an element not a str.
    """
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise InvalidParameter(
            f"{what} must be a column name or a list of column names in key order, "
            f"got {type(value).__name__} {value!r:.80}"
        )
    for c in value:
        if not isinstance(c, str):
            raise InvalidParameter(f"{what} must be column names, got {c!r:.80}")
    return tuple(value)


def _check_object_id(what: str, value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_OBJECT_ID:
        raise InvalidParameter(f"{what} must be an int in 1..{MAX_OBJECT_ID}, got {value!r}")
    return value


@dataclass(frozen=True)
class TableDef:
    """A validated table definition (see the module invariants); build it with make_table_def."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    indexes: tuple[IndexDef, ...]
    table_id: int
    lv_id: int
    index_ids: tuple[int, ...]
    # Lookup tables derived from the fields above; not part of equality or the encoding.
    _positions: dict[str, int] = field(init=False, repr=False, compare=False)
    _checks: tuple[tuple[str, Column, Callable[[object], object]], ...] = field(
        init=False, repr=False, compare=False
    )
    _index_by_name: dict[str, IndexDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_name("table", self.name)
        columns = tuple(self.columns)
        if not columns:
            raise InvalidParameter(f"table {self.name!r} must have at least one column")
        if len(columns) > MAX_COLUMNS:
            raise InvalidParameter(f"table {self.name!r} has more than {MAX_COLUMNS} columns")
        positions: dict[str, int] = {}
        for i, col in enumerate(columns):
            if not isinstance(col, Column):
                raise InvalidParameter(f"table {self.name!r}: {col!r} is not a Column")
            if col.name in positions:
                raise ColumnDuplicate(f"column {col.name!r} appears twice in table {self.name!r}")
            positions[col.name] = i

        pk = tuple(self.primary_key)
        if not pk:
            raise InvalidParameter(f"table {self.name!r} needs a primary key")
        if len(set(pk)) != len(pk):
            raise InvalidParameter(f"primary key of table {self.name!r} repeats a column: {pk}")
        for c in pk:
            if c not in positions:
                raise ColumnNotFound(
                    f"primary key column {c!r} is not a column of table {self.name!r}"
                )
        # A key column cannot hold NULL, so NOT NULL is implied rather than demanded.
        cols = list(columns)
        for c in pk:
            col = cols[positions[c]]
            if col.nullable:
                cols[positions[c]] = Column(col.name, col.type, False, col.default)
        columns = tuple(cols)

        indexes = tuple(self.indexes)
        index_by_name: dict[str, IndexDef] = {}
        for idx in indexes:
            if not isinstance(idx, IndexDef):
                raise InvalidParameter(f"table {self.name!r}: {idx!r} is not an IndexDef")
            if idx.name in index_by_name:
                raise IndexDuplicate(f"index {idx.name!r} appears twice in table {self.name!r}")
            for c in idx.columns:
                if c not in positions:
                    raise ColumnNotFound(
                        f"index {idx.name!r} names column {c!r}, "
                        f"which is not a column of table {self.name!r}"
                    )
            index_by_name[idx.name] = idx

        index_ids = tuple(self.index_ids)
        if len(index_ids) != len(indexes):
            raise InvalidParameter(
                f"table {self.name!r} has {len(indexes)} indexes but {len(index_ids)} index ids"
            )
        ids = [_check_object_id("table_id", self.table_id), _check_object_id("lv_id", self.lv_id)]
        ids.extend(_check_object_id("index id", i) for i in index_ids)
        if len(set(ids)) != len(ids):
            raise InvalidParameter(f"object ids of table {self.name!r} are not distinct: {ids}")

        set_ = object.__setattr__
        set_(self, "columns", columns)
        set_(self, "primary_key", pk)
        set_(self, "indexes", indexes)
        set_(self, "index_ids", index_ids)
        set_(self, "_positions", positions)
        set_(self, "_checks", tuple((c.name, c, _CHECKERS[c.type]) for c in columns))
        set_(self, "_index_by_name", index_by_name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    # Names are looked up only when they are strings: hashing anything else runs the caller's
    # code (a list is unhashable, a datetime's hash asks its tzinfo), and no name is anything
    # else.

    def column(self, name: str) -> Column:
        """The column called ``name``; ColumnNotFound if there is none."""
        return self.columns[self.column_index(name)]

    def column_index(self, name: str) -> int:
        """Position of column ``name`` in ``columns`` (and in encoded records)."""
        position = self._positions.get(name) if isinstance(name, str) else None
        if position is None:
            raise ColumnNotFound(f"column {name!r} not found in table {self.name!r}")
        return position

    def index(self, name: str) -> IndexDef:
        """The secondary index called ``name``; IndexNotFound if there is none."""
        index = self._index_by_name.get(name) if isinstance(name, str) else None
        if index is None:
            raise IndexNotFound(f"index {name!r} not found in table {self.name!r}")
        return index

    def index_id(self, name: str) -> int:
        """Object id of the secondary index called ``name``."""
        return self.index_ids[self.indexes.index(self.index(name))]

    # Schema changes of an existing table (`Transaction.create_index` and the rest): each
    # returns a new, validated definition and leaves this one as it is. Every other field,
    # the object ids of the table, its long values and its other indexes included, stays.

    def _changed(
        self,
        columns: tuple[Column, ...] | None = None,
        indexes: tuple[IndexDef, ...] | None = None,
        index_ids: tuple[int, ...] | None = None,
    ) -> TableDef:
        return TableDef(
            name=self.name,
            columns=self.columns if columns is None else columns,
            primary_key=self.primary_key,
            indexes=self.indexes if indexes is None else indexes,
            table_id=self.table_id,
            lv_id=self.lv_id,
            index_ids=self.index_ids if index_ids is None else index_ids,
        )

    def with_index(self, index: IndexDef, index_id: int) -> TableDef:
        """This definition plus `index` (stored under object id `index_id`), last.

        IndexDuplicate if the table has an index of that name; ColumnNotFound if the index
        names a column the table lacks.
        """
        if index.name in self._index_by_name:
            raise IndexDuplicate(
                f"table {self.name!r} already has an index {index.name!r}",
                hint="choose another name, or drop the existing index first",
            )
        return self._changed(indexes=(*self.indexes, index), index_ids=(*self.index_ids, index_id))

    def without_index(self, name: str) -> TableDef:
        """This definition without the index called `name` (IndexNotFound if none)."""
        position = self.indexes.index(self.index(name))
        return self._changed(
            indexes=self.indexes[:position] + self.indexes[position + 1 :],
            index_ids=self.index_ids[:position] + self.index_ids[position + 1 :],
        )

    def with_column(self, column: Column) -> TableDef:
        """This definition plus `column`, appended after the existing ones (so records written
        before decode under the new definition, the new column reading its default).

        ColumnDuplicate if the table has a column of that name.
        """
        if column.name in self._positions:
            raise ColumnDuplicate(
                f"table {self.name!r} already has a column {column.name!r}",
                hint="choose another name, or drop the existing column first",
            )
        return self._changed(columns=(*self.columns, column))

    def without_column(self, name: str) -> TableDef:
        """This definition without column `name`; later columns move down one position.

        ColumnNotFound if there is none; ColumnIndexed if it is a primary key column or a
        column of a secondary index (the key or index would lose a column).
        """
        position = self.column_index(name)
        if name in self.primary_key:
            raise ColumnIndexed(
                f"column {name!r} is part of the primary key {list(self.primary_key)} of "
                f"table {self.name!r} and cannot be dropped",
                hint="a primary key cannot change: create a new table without the column and "
                "copy the rows over",
            )
        users = [index.name for index in self.indexes if name in index.columns]
        if users:
            raise ColumnIndexed(
                f"column {name!r} of table {self.name!r} is used by index(es) "
                f"{', '.join(map(repr, users))} and cannot be dropped",
                hint="drop those indexes first (Transaction.drop_index), then the column",
            )
        return self._changed(columns=self.columns[:position] + self.columns[position + 1 :])

    def validate_record(
        self, record: Mapping[str, object], *, partial: bool = False
    ) -> dict[str, object]:
        """Type-check ``record`` and return it normalised, in column order.

        Missing columns get their default (NullInvalid when that is None for a NOT NULL
        column) unless ``partial``, in which case only the given columns are returned (for
        updates). Unknown column: ColumnNotFound; None in a NOT NULL column: NullInvalid;
        wrong type: InvalidColumnType; right type but not storable (an int beyond 64 bits, a
        datetime outside the UTC range): InvalidParameter, as is a ``record`` that is not a
        mapping of column names to values.
        """
        if type(record) is not dict and not isinstance(record, Mapping):
            raise InvalidParameter(
                f"a record of table {self.name!r} must be a mapping of column names to values, "
                f"got {type(record).__name__} {record!r:.80}",
                hint="pass a dict such as {'column': value, ...}",
            )
        out: dict[str, object] = {}
        matched = 0
        for name, col, check in self._checks:
            if name in record:
                matched += 1
                value = record[name]
                if value is None:
                    if not col.nullable:
                        raise NullInvalid(f"column {name!r} of table {self.name!r} cannot be NULL")
                    out[name] = None
                    continue
                try:
                    out[name] = check(value)
                except _Mismatch:
                    raise InvalidColumnType(
                        f"column {name!r} of table {self.name!r} is {col.type.value}, "
                        f"got {type(value).__name__} {value!r:.80}"
                    ) from None
                except _OutOfRange as exc:
                    raise InvalidParameter(
                        f"column {name!r} of table {self.name!r}: {exc}"
                    ) from None
            elif not partial:
                if col.default is None and not col.nullable:
                    raise NullInvalid(
                        f"column {name!r} of table {self.name!r} cannot be NULL "
                        "and has no default, so it must be given"
                    )
                out[name] = col.default
        if matched != len(record):
            unknown = sorted(repr(k) for k in record if k not in self._positions)
            raise ColumnNotFound(
                f"table {self.name!r} has no column {', '.join(unknown)}",
                hint="columns are: " + ", ".join(self.column_names),
            )
        return out

    def primary_key_of(self, record: Mapping[str, object]) -> tuple[Any, ...]:
        """The primary key tuple of a validated record, in key column order."""
        try:
            return tuple([record[c] for c in self.primary_key])
        except KeyError as exc:
            raise InvalidParameter(
                f"record lacks primary key column {exc.args[0]!r} of table {self.name!r}"
            ) from None

    def index_key_of(self, index: IndexDef, record: Mapping[str, object]) -> tuple[Any, ...]:
        """The values of ``index``'s columns in a validated record (without the primary key)."""
        try:
            return tuple([record[c] for c in index.columns])
        except KeyError as exc:
            raise InvalidParameter(
                f"record lacks column {exc.args[0]!r} of index {index.name!r} "
                f"of table {self.name!r}"
            ) from None


ColumnSpec = Column | Sequence[Any] | Mapping[str, Any]
IndexSpec = IndexDef | Sequence[Any] | Mapping[str, Any]


def _column_from_spec(spec: object) -> Column:
    if isinstance(spec, Column):
        return spec
    if isinstance(spec, Mapping):
        extra = set(spec) - {"name", "type", "nullable", "default"}
        if extra or "name" not in spec or "type" not in spec:
            raise InvalidParameter(
                f"column dict {dict(spec)!r} must have 'name' and 'type' "
                "and may have 'nullable' and 'default', nothing else"
            )
        return Column(spec["name"], spec["type"], spec.get("nullable", True), spec.get("default"))
    if isinstance(spec, (tuple, list)) and 2 <= len(spec) <= 4:
        return Column(*spec)
    raise InvalidParameter(
        f"cannot make a column from {spec!r}",
        hint="give a Column, (name, type), (name, type, nullable) or a dict",
    )


def _index_from_spec(spec: object) -> IndexDef:
    if isinstance(spec, IndexDef):
        return spec
    if isinstance(spec, Mapping):
        extra = set(spec) - {"name", "columns", "unique"}
        if extra or "name" not in spec or "columns" not in spec:
            raise InvalidParameter(
                f"index dict {dict(spec)!r} must have 'name' and 'columns' "
                "and may have 'unique', nothing else"
            )
        return IndexDef(spec["name"], spec["columns"], spec.get("unique", False))
    if isinstance(spec, (tuple, list)) and 2 <= len(spec) <= 3:
        return IndexDef(*spec)
    raise InvalidParameter(
        f"cannot make an index from {spec!r}",
        hint="give an IndexDef, (name, columns), (name, columns, unique) or a dict",
    )


def make_table_def(
    name: str,
    columns: Iterable[ColumnSpec],
    primary_key: str | Sequence[str],
    indexes: Iterable[IndexSpec] = (),
    *,
    table_id: int,
    lv_id: int,
    index_ids: Sequence[int] = (),
) -> TableDef:
    """Build a validated TableDef from user-friendly input.

    ``columns``: Column objects, ``(name, type)`` / ``(name, type, nullable)`` tuples or dicts
    with keys name, type, nullable, default. ``primary_key``: a column name or a list or
    tuple of them, in key order. ``indexes``: IndexDef objects, ``(name, columns)`` /
    ``(name, columns, unique)`` tuples or dicts with keys name, columns, unique (``columns``
    also a name or a list or tuple of them). ``index_ids`` parallels ``indexes``.
    Primary key columns become NOT NULL. Bad input raises InvalidParameter, ColumnDuplicate,
    IndexDuplicate or ColumnNotFound (a key or index naming a missing column).
    """
    if isinstance(columns, (str, bytes, Mapping, set, frozenset)) or not isinstance(
        columns, Iterable
    ):
        raise InvalidParameter(
            "columns must be a sequence of column specifications, "
            f"got {type(columns).__name__} {columns!r:.80}"
        )
    if isinstance(indexes, (str, bytes, Mapping)) or not isinstance(indexes, Iterable):
        raise InvalidParameter(
            "indexes must be a sequence of index specifications, "
            f"got {type(indexes).__name__} {indexes!r:.80}"
        )
    pk = _column_names("the primary key", primary_key)
    return TableDef(
        name=name,
        columns=tuple(_column_from_spec(c) for c in columns),
        primary_key=pk,
        indexes=tuple(_index_from_spec(i) for i in indexes),
        table_id=table_id,
        lv_id=lv_id,
        index_ids=tuple(index_ids),
    )


def _encode_default(ctype: ColumnType, value: object) -> object:
    if value is None:
        return None
    if ctype is ColumnType.FLOAT:
        assert isinstance(value, float)
        return value.hex()
    if ctype is ColumnType.BYTES:
        assert isinstance(value, bytes)
        return value.hex()
    if ctype is ColumnType.DATETIME:
        assert isinstance(value, datetime)
        aware = value.tzinfo is not None and value.utcoffset() is not None
        return {"aware": aware, "us": datetime_to_micros(value)}
    return value


def _decode_default(ctype: ColumnType, raw: object) -> object:
    if raw is None:
        return None
    if ctype is ColumnType.FLOAT:
        if not isinstance(raw, str):
            raise ValueError("float default must be a hex string")
        return float.fromhex(raw)
    if ctype is ColumnType.BYTES:
        if not isinstance(raw, str):
            raise ValueError("bytes default must be a hex string")
        return bytes.fromhex(raw)
    if ctype is ColumnType.DATETIME:
        if not isinstance(raw, dict) or set(raw) != {"aware", "us"}:
            raise ValueError("datetime default must be {aware, us}")
        us, aware = raw["us"], raw["aware"]
        if type(us) is not int or type(aware) is not bool:
            raise ValueError("bad datetime default")
        return micros_to_datetime(us, aware)
    # JSON gives back int, str and bool as they were; Column re-checks the type.
    return raw


def encode_table_def(t: TableDef) -> bytes:
    """Deterministic catalog encoding of a table definition (see the module docstring)."""
    doc = {
        "version": TABLE_DEF_VERSION,
        "name": t.name,
        "table_id": t.table_id,
        "lv_id": t.lv_id,
        "primary_key": list(t.primary_key),
        "columns": [
            {
                "name": c.name,
                "type": c.type.value,
                "nullable": c.nullable,
                "default": _encode_default(c.type, c.default),
            }
            for c in t.columns
        ],
        "indexes": [
            {"name": i.name, "columns": list(i.columns), "unique": i.unique, "id": oid}
            for i, oid in zip(t.indexes, t.index_ids, strict=True)
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def decode_table_def(data: bytes) -> TableDef:
    """Inverse of encode_table_def. Anything malformed raises DatabaseCorrupted."""
    try:
        doc = json.loads(bytes(data).decode("ascii"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("version") != TABLE_DEF_VERSION:
            raise ValueError(f"unsupported table definition version {doc.get('version')!r}")
        columns = []
        for c in doc["columns"]:
            ctype = _normalize_type(c["type"])
            columns.append(
                Column(c["name"], ctype, c["nullable"], _decode_default(ctype, c["default"]))
            )
        indexes = [IndexDef(i["name"], i["columns"], i["unique"]) for i in doc["indexes"]]
        index_ids = [i["id"] for i in doc["indexes"]]
        pk = doc["primary_key"]
        if not isinstance(pk, list):
            raise ValueError("primary_key must be a list")
        return TableDef(
            name=doc["name"],
            columns=tuple(columns),
            primary_key=tuple(pk),
            indexes=tuple(indexes),
            table_id=doc["table_id"],
            lv_id=doc["lv_id"],
            index_ids=tuple(index_ids),
        )
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
        JetError,
    ) as exc:
        if isinstance(exc, DatabaseCorrupted):
            raise
        what = exc.detail if isinstance(exc, JetError) else exc  # not its code and hint again
        raise DatabaseCorrupted(f"malformed table definition in the catalog: {what}") from exc
