"""Record codec: the byte form of one row, stored as the value of its primary-key B+tree entry.

This module owns that byte form. It is pure (no I/O) and knows nothing about which values the
table layer moves to the long-value store: it stores and returns a ``LongValueRef`` wherever
the table layer put one in a text or bytes column.

Invariants
----------
1. ``codec.decode(codec.encode(r)) == r`` for every record ``r`` validated by
   ``TableDef.validate_record`` (or with a LongValueRef in a text/bytes column), except that
   an aware datetime comes back as the same instant in UTC.
2. A record written under a table definition with fewer columns (columns appended later)
   decodes under the longer definition, the missing trailing columns taking their default.
3. ``decode`` of any byte string either returns a record whose values have the types of its
   columns or raises ``DatabaseCorrupted`` (naming the record's primary key when the caller
   gives it, and how to find and drop damaged records); no other exception escapes it.
4. The generated decoders (``fast_decode``, ``decode_many``) remember record layouts as
   ``struct`` formats (a bounded memo per codec); a remembered layout is used only when every
   header, tag and length field of a record matches it, so every result is the one the
   sequential decoder gives.
5. ``fast_encode`` and ``encode_inline`` never copy into a record text and bytes values that
   no page's leaf entry could hold (more than ``INLINE_VALUE_MAX`` bytes, a text measured
   in characters, which it takes at least as many bytes as): they say so (``OVERSIZED``,
   None) without encoding the text, and the table layer moves the values out first, each
   text encoded once (an ``EncodedText`` in a text column is copied as it is).

Byte format (little-endian)
---------------------------
::

    u8   version (1)
    u16  column count N (the table definition's column count when written)
    N times, in table-definition order: u8 tag, then the value
      0x00 NULL        nothing
      0x01 INT         i64
      0x02 FLOAT       f64 (IEEE-754 binary64)
      0x03 BOOL        u8: 0 False, 1 True
      0x04 DATETIME    i64 microseconds since 1970-01-01T00:00Z (a naive value taken as UTC),
                       u8 flag: 0 naive, 1 aware (decoded with tzinfo=UTC)
      0x05 TEXT        u32 byte length, UTF-8 (``surrogatepass``)
      0x06 BYTES       u32 byte length, the bytes
      0x07 LONG VALUE  u64 lv_id, u64 length, u8 is_text (must match the column: 1 for text)

A tag must fit its column's type (NULL and LONG VALUE aside, exactly one tag per type), N may
not exceed the current definition's column count, and nothing may follow the last column.
NULL decodes in any column: NOT NULL is a rule for writes (``validate_record``), and a column
made NOT NULL later must not turn old rows into "corruption".
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter

from jetstore.errors import DatabaseCorrupted, InvalidParameter, RecordTooBig
from jetstore.tables.keys import (
    MAX_DATETIME_MICROS,
    MIN_DATETIME_MICROS,
    datetime_to_micros,
    describe_encoded_key,
    micros_to_datetime,
)
from jetstore.tables.schema import ColumnType, TableDef

__all__ = [
    "INLINE_VALUE_MAX",
    "OVERSIZED",
    "RECORD_VERSION",
    "EncodedText",
    "LongValueRef",
    "RecordCodec",
]

RECORD_VERSION = 1

TAG_NULL = 0x00
TAG_INT = 0x01
TAG_FLOAT = 0x02
TAG_BOOL = 0x03
TAG_DATETIME = 0x04
TAG_TEXT = 0x05
TAG_BYTES = 0x06
TAG_LONG_VALUE = 0x07

_TAG_FOR_TYPE: dict[ColumnType, int] = {
    ColumnType.INT: TAG_INT,
    ColumnType.FLOAT: TAG_FLOAT,
    ColumnType.BOOL: TAG_BOOL,
    ColumnType.DATETIME: TAG_DATETIME,
    ColumnType.TEXT: TAG_TEXT,
    ColumnType.BYTES: TAG_BYTES,
}

_HEADER = struct.Struct("<BH")
_TAG_I64 = struct.Struct("<Bq")
_TAG_F64 = struct.Struct("<Bd")
_TAG_I64_FLAG = struct.Struct("<BqB")
_TAG_U32 = struct.Struct("<BI")
_TAG_LV = struct.Struct("<BQQB")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_I64_FLAG = struct.Struct("<qB")
_U32 = struct.Struct("<I")
_LV = struct.Struct("<QQB")

_VAR_TYPES = (ColumnType.TEXT, ColumnType.BYTES)

#: Longest text (in characters) or bytes value `fast_encode` and `encode_inline` copy into a
#: record: a longer one could not be stored inline on any page size (the leaf entry of the
#: largest page holds half of it), and copying a value of up to 64 MiB into a record only to
#: throw the record away cost as much as storing the value. A text is measured before it is
#: encoded, by its characters (at most its UTF-8 bytes), so that one moved out of the record
#: is encoded once, for its chunks, not also to be measured.
INLINE_VALUE_MAX = 1 << 15


class _Oversized(bytes):
    """The type of `OVERSIZED`."""

    __slots__ = ()

    def __len__(self) -> int:
        # Longer than any entry: a caller comparing the record's length with what its leaf
        # entry holds (the fast insert) takes it as too long to keep inline, at no extra cost.
        return 1 << 62


#: What `fast_encode` returns, instead of the record, for a record it would encode (every
#: column of exactly its type) but whose text and bytes values encode to more than
#: `INLINE_VALUE_MAX` bytes together (a text counted in characters). It holds no bytes and is
#: never stored: its length says "too long to keep inline".
OVERSIZED: bytes = _Oversized()

_NO_BOUND = 1 << 62
# What the generated encoder may raise for a record it does not take (the general path then
# raises the precise error).
_FAST_ENCODE_REFUSALS = (KeyError, TypeError, struct.error, UnicodeEncodeError, AttributeError)

_B_NULL = bytes([TAG_NULL])
_B_FALSE = bytes([TAG_BOOL, 0])
_B_TRUE = bytes([TAG_BOOL, 1])


@dataclass(frozen=True, slots=True)
class EncodedText:
    """A text value already encoded to UTF-8 (``surrogatepass``), which `RecordCodec.encode`
    copies into a text column as it is: the table layer encodes a text it may move out of
    the record once, and measures and stores those bytes."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LongValueRef:
    """Stands in a record for a text/bytes value kept in the table's long-value store."""

    lv_id: int
    length: int
    is_text: bool


class RecordCodec:
    """Encoder/decoder of the records of one table definition; build once, use many times."""

    __slots__ = (
        "_decode_many",
        "_decode_plan",
        "_encode_plan",
        "_fast_decode",
        "_fast_encode",
        "_header",
        "_ncolumns",
        "table_def",
    )

    def __init__(self, table_def: TableDef) -> None:
        self.table_def = table_def
        cols = table_def.columns
        self._ncolumns = len(cols)
        self._header = _HEADER.pack(RECORD_VERSION, len(cols))
        self._encode_plan = tuple((c.name, _TAG_FOR_TYPE[c.type]) for c in cols)
        self._decode_plan = tuple(
            (c.name, _TAG_FOR_TYPE[c.type], c.type is ColumnType.TEXT, c.default) for c in cols
        )
        self._fast_decode, self._fast_encode, self._decode_many = _compile_fast_paths(table_def)

    def encode(self, record: Mapping[str, object]) -> bytes:
        """Encode a validated record (every column present, values of the column types).

        Raises InvalidParameter for a missing column or a value the format cannot hold, and
        RecordTooBig for an inline text/bytes value of 4 GiB or more.
        """
        try:
            fast = self._fast_encode(record)
        except _FAST_ENCODE_REFUSALS:
            fast = None
        if fast is not None and fast is not OVERSIZED:
            return fast
        return self._encode_general(record, _NO_BOUND)  # type: ignore[return-value]

    def encode_inline(self, record: Mapping[str, object]) -> bytes | None:
        """`encode`, or None when a text value has more than `INLINE_VALUE_MAX` characters
        or a bytes value more bytes, or (every column of exactly its type) its text and bytes
        values do together: the record could not be stored inline, and the values are not
        copied (nor a text encoded) into one first."""
        try:
            fast = self._fast_encode(record)
        except _FAST_ENCODE_REFUSALS:
            fast = None
        if fast is not None:
            return None if fast is OVERSIZED else fast
        return self._encode_general(record, INLINE_VALUE_MAX)

    def _encode_general(self, record: Mapping[str, object], bound: int) -> bytes | None:
        """`encode` column by column; None for a text or bytes value longer than `bound`."""
        parts = [self._header]
        append = parts.append
        name = ""
        v: object = None
        tag = TAG_NULL
        try:
            for name, tag in self._encode_plan:
                v = record[name]
                if v is None:
                    append(_B_NULL)
                elif tag == TAG_INT:
                    append(_TAG_I64.pack(TAG_INT, v))
                elif tag == TAG_TEXT:
                    if type(v) is str:
                        if len(v) > bound:
                            return None  # at least as many bytes: not encoded to measure
                        raw = v.encode("utf-8", "surrogatepass")
                        append(_TAG_U32.pack(TAG_TEXT, len(raw)))
                        append(raw)
                    else:
                        append(_encode_lv(v, True))
                elif tag == TAG_BYTES:
                    if type(v) is bytes:
                        if len(v) > bound:
                            return None
                        append(_TAG_U32.pack(TAG_BYTES, len(v)))
                        append(v)
                    else:
                        append(_encode_lv(v, False))
                elif tag == TAG_FLOAT:
                    append(_TAG_F64.pack(TAG_FLOAT, v))
                elif tag == TAG_BOOL:
                    append(_B_TRUE if v else _B_FALSE)
                else:
                    if not isinstance(v, datetime):
                        raise TypeError("not a datetime")
                    aware = v.tzinfo is not None and v.utcoffset() is not None
                    append(_TAG_I64_FLAG.pack(TAG_DATETIME, datetime_to_micros(v), aware))
        except KeyError:
            raise InvalidParameter(
                f"record for table {self.table_def.name!r} lacks column {name!r}",
                hint="validate records with TableDef.validate_record before encoding",
            ) from None
        except struct.error as exc:
            # Only the u32 length of an inline str/bytes value can overflow.
            if tag in (TAG_TEXT, TAG_BYTES) and isinstance(v, (str, bytes, bytearray, memoryview)):
                raise RecordTooBig(
                    f"value of column {name!r} of table {self.table_def.name!r} is 4 GiB or "
                    "more; store it as a long value"
                ) from None
            raise InvalidParameter(
                f"column {name!r} of table {self.table_def.name!r}: cannot encode value ({exc})"
            ) from None
        except (TypeError, AttributeError) as exc:
            raise InvalidParameter(
                f"column {name!r} of table {self.table_def.name!r}: cannot encode value ({exc})",
                hint="validate records with TableDef.validate_record before encoding",
            ) from None
        return b"".join(parts)

    def decode(
        self, data: bytes | bytearray | memoryview, pk: bytes | None = None
    ) -> dict[str, object]:
        """Decode a record (stored under encoded primary key `pk`, which the error names);
        anything malformed raises DatabaseCorrupted."""
        if type(data) is not bytes:
            data = bytes(data)
        try:
            fast = self._fast_decode(data)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            fast = None
        if fast is not None:
            return fast
        return self._decode_general(data, pk=pk)

    @property
    def fast_decode(self) -> Callable[[bytes], dict[str, object] | None]:
        """The generated decoder of the common record: a dict, or None when the record needs
        the general path; it may raise IndexError, struct.error or UnicodeDecodeError on
        malformed input, which callers treat as "general path"."""
        return self._fast_decode

    @property
    def fast_encode(self) -> Callable[[Mapping[str, object]], bytes | None]:
        """The generated encoder of the common record: the bytes `encode` returns, or None
        when the record is not every column with a non-NULL value of exactly its type
        (then it may also raise, for a missing column or a value out of range), or
        `OVERSIZED` when it is, but its text and bytes values take more than
        `INLINE_VALUE_MAX` together, a text counted in characters (then it encodes none)."""
        return self._fast_encode

    @property
    def decode_many(self) -> Callable[[list[bytes]], list[dict[str, object] | None]]:
        """`fast_decode` of each of a non-empty list of records (a leaf's worth, say), in one
        call: the records of one layout are split by C-level passes. It may raise what
        `fast_decode` raises, for the whole list."""
        return self._decode_many

    def decode_plain(self, data: bytes, pk: bytes | None = None) -> tuple[dict[str, object], bool]:
        """`decode`; the flag is False when it certainly holds no `LongValueRef`."""
        try:
            fast = self._fast_decode(data)
        except (IndexError, struct.error, UnicodeDecodeError, ValueError):
            fast = None
        if fast is not None:
            return fast, False
        return self._decode_general(data, pk=pk), True

    def encoded_texts(self, data: bytes) -> dict[str, bytes]:
        """The UTF-8 bytes of each text value stored inline in record `data`, as they are in
        it (by column name): the table layer moving values out of a record it encoded takes
        them from there rather than encoding them again."""
        record = self._decode_general(data, raw_text=True)
        return {
            name: value
            for name, _, is_text, _ in self._decode_plan
            if is_text and type(value := record[name]) is bytes
        }

    def _decode_general(
        self, data: bytes, raw_text: bool = False, pk: bytes | None = None
    ) -> dict[str, object]:
        n = len(data)
        if n < 3:
            raise self._corrupt(data, pk, 0, "shorter than the record header")
        version, count = _HEADER.unpack_from(data)
        if version != RECORD_VERSION:
            raise self._corrupt(data, pk, 0, f"unknown record version {version}")
        if count > self._ncolumns:
            raise self._corrupt(
                data, pk, 1, f"{count} columns but the table has only {self._ncolumns}"
            )
        out: dict[str, object] = {}
        plan = self._decode_plan
        pos = 3
        try:
            for i in range(count):
                name, expected, is_text, _ = plan[i]
                tag = data[pos]
                pos += 1
                if tag == TAG_NULL:
                    out[name] = None
                    continue
                if tag != expected:
                    if tag == TAG_LONG_VALUE and expected in (TAG_TEXT, TAG_BYTES):
                        lv_id, length, flag = _LV.unpack_from(data, pos)
                        if flag != is_text:
                            raise self._corrupt(
                                data, pk, pos, f"long value flag of column {name!r}"
                            )
                        out[name] = LongValueRef(lv_id, length, is_text)
                        pos += 17
                        continue
                    raise self._corrupt(data, pk, pos - 1, f"tag 0x{tag:02x} in column {name!r}")
                if tag == TAG_INT:
                    out[name] = _I64.unpack_from(data, pos)[0]
                    pos += 8
                elif tag in (TAG_TEXT, TAG_BYTES):
                    length = _U32.unpack_from(data, pos)[0]
                    pos += 4
                    end = pos + length
                    if end > n:
                        raise self._corrupt(data, pk, pos, f"value of column {name!r} overruns")
                    if tag == TAG_TEXT and not raw_text:
                        out[name] = data[pos:end].decode("utf-8", "surrogatepass")
                    else:
                        out[name] = data[pos:end]
                    pos = end
                elif tag == TAG_FLOAT:
                    out[name] = _F64.unpack_from(data, pos)[0]
                    pos += 8
                elif tag == TAG_BOOL:
                    b = data[pos]
                    if b > 1:
                        raise self._corrupt(data, pk, pos, f"bool byte {b} in column {name!r}")
                    out[name] = b == 1
                    pos += 1
                else:
                    micros, flag = _I64_FLAG.unpack_from(data, pos)
                    if flag > 1 or not MIN_DATETIME_MICROS <= micros <= MAX_DATETIME_MICROS:
                        raise self._corrupt(data, pk, pos, f"datetime in column {name!r}")
                    out[name] = micros_to_datetime(micros, flag == 1)
                    pos += 9
        except (struct.error, IndexError):
            raise self._corrupt(data, pk, pos, "truncated") from None
        except UnicodeDecodeError:
            raise self._corrupt(data, pk, pos, "invalid UTF-8 in a text column") from None
        if pos != n:
            raise self._corrupt(data, pk, pos, f"{n - pos} trailing bytes")
        # Columns appended to the table after this record was written.
        for i in range(count, self._ncolumns):
            name, _, _, default = plan[i]
            out[name] = default
        return out

    def _corrupt(self, data: bytes, pk: bytes | None, pos: int, what: str) -> DatabaseCorrupted:
        record = "record" if pk is None else f"record with primary key {describe_encoded_key(pk)}"
        return DatabaseCorrupted(
            f"malformed {record} of table {self.table_def.name!r} at byte {pos} of "
            f"{len(data)}: {what}",
            hint="run `jetstore integrity` on the database file to list the damaged records; "
            "`jetstore repair --accept-data-loss` drops them (or restore a backup)",
        )


def _encode_lv(v: object, is_text: bool) -> bytes:
    if type(v) is LongValueRef:
        if v.is_text != is_text:
            raise TypeError("long value reference of the wrong kind (text vs bytes)")
        return _TAG_LV.pack(TAG_LONG_VALUE, v.lv_id, v.length, v.is_text)
    if is_text and type(v) is EncodedText:
        return _TAG_U32.pack(TAG_TEXT, len(v.data)) + v.data
    if is_text and isinstance(v, str):
        raw = str(v).encode("utf-8", "surrogatepass")
        return _TAG_U32.pack(TAG_TEXT, len(raw)) + raw
    if not is_text and isinstance(v, (bytes, bytearray, memoryview)):
        raw = bytes(v)
        return _TAG_U32.pack(TAG_BYTES, len(raw)) + raw
    raise TypeError(f"{type(v).__name__} is not a {'text' if is_text else 'bytes'} value")


#: Record layouts (per codec) that the struct-based decoders remember; see `_compile_fast_paths`.
_MAX_LAYOUTS = 64
_STRUCT_CODES = {ColumnType.INT: "q", ColumnType.FLOAT: "d"}


def _compile_fast_paths(
    table_def: TableDef,
) -> tuple[
    Callable[[bytes], dict[str, object] | None],
    Callable[[Mapping[str, object]], bytes | None],
    Callable[[list[bytes]], list[dict[str, object] | None]],
]:
    """Straight-line decoders and encoder for the common record of one table definition.

    They handle only records written with the current column count, every column non-NULL
    and stored inline (no long value), and return None for anything else, which then takes
    the general path (which also produces the precise corruption error). Generating the code
    once per table removes the per-column dispatch from the hottest loops of the engine
    (point reads, scans, bulk loads).

    For a table whose columns are all int, float, text or bytes, the decoders also remember
    up to `_MAX_LAYOUTS` record layouts (the byte lengths of the text and bytes values) by
    record length, each as one `struct` format: a record of a known length is then split by
    one C call, and taken only if every header, tag and length field read that way equals the
    layout's (anything else goes the sequential way), so the result is the same as the
    sequential decoder's. `decode_many` applies this to a whole leaf of records of one layout
    at once: the records are joined and split by two structs (every header, tag and length
    field, checked against the layout's; then the values), also remembered, up to
    `_MAX_LAYOUTS`, by (record length, record count). Each record is first checked to have
    the layout's length, so the fields read are each record's own.
    """
    cols = table_def.columns
    env: dict[str, object] = {
        "HEADER": _HEADER.pack(RECORD_VERSION, len(cols)),
        "I64": _I64.unpack_from,
        "F64": _F64.unpack_from,
        "U32": _U32.unpack_from,
        "I64F": _I64_FLAG.unpack_from,
        "P_I64": _TAG_I64.pack,
        "P_F64": _TAG_F64.pack,
        "P_U32": _TAG_U32.pack,
        "P_I64F": _TAG_I64_FLAG.pack,
        "to_dt": micros_to_datetime,
        "from_dt": datetime_to_micros,
        "MIN_US": MIN_DATETIME_MICROS,
        "MAX_US": MAX_DATETIME_MICROS,
        "B_TRUE": _B_TRUE,
        "B_FALSE": _B_FALSE,
        "datetime": datetime,
        "Struct": struct.Struct,
        "itemgetter": itemgetter,
        "LAYOUTS": {},
        "BATCHES": {},
        "MAX_LAYOUTS": _MAX_LAYOUTS,
        "OVERSIZED": OVERSIZED,
    }
    layouts = all(c.type in _STRUCT_CODES or c.type in _VAR_TYPES for c in cols)
    dec = [
        "def slow_decode(data):" if layouts else "def fast_decode(data):",
        "    if data[:3] != HEADER:",
        "        return None",
        "    p = 3",
    ]
    enc = ["def fast_encode(r):"]
    parts = ["HEADER"]
    var_lengths: list[str] = []  # the encoder's locals holding text and bytes lengths
    texts: list[str] = []  # the encoder's text locals, encoded once the record fits
    # The struct form of a layout: the format, and the expression of each value in the
    # unpacked tuple `t`. Each column's meta fields (its tag and length; the record header
    # too for the first) are read as one bytes field, so a layout is checked by comparing
    # one bytes object a column with the bytes it must hold (`meta_bytes`).
    fmt = ["'<"]
    meta_size = 3
    meta_bytes = ["HEADER"]
    meta_fields: list[int] = []
    lengths: list[str] = []
    values: list[str] = []
    field = 0
    # The batch form, for `n` records of one layout joined: one struct reads every header,
    # tag and length (the payloads skipped), another every value (the rest skipped).
    batch_meta_fmt = ["BH"]
    batch_meta_values = [str(RECORD_VERSION), str(len(cols))]
    batch_values_fmt = ["3x"]
    batch_values: list[str] = []
    meta_checks: list[str] = []
    for i, c in enumerate(cols):
        tag = _TAG_FOR_TYPE[c.type]
        v = f"v{i}"
        dec.append(f"    if data[p] != {tag}:")
        dec.append("        return None")
        enc.append(f"    {v} = r[{c.name!r}]")
        if c.type is ColumnType.INT:
            dec += [f"    {v} = I64(data, p + 1)[0]", "    p += 9"]
            enc += [f"    if type({v}) is not int:", "        return None"]
            parts.append(f"P_I64({tag}, {v})")
        elif c.type is ColumnType.FLOAT:
            dec += [f"    {v} = F64(data, p + 1)[0]", "    p += 9"]
            enc += [f"    if type({v}) is not float:", "        return None"]
            parts.append(f"P_F64({tag}, {v})")
        elif c.type is ColumnType.BOOL:
            dec += [
                f"    {v} = data[p + 1]",
                f"    if {v} > 1:",
                "        return None",
                f"    {v} = {v} == 1",
                "    p += 2",
            ]
            enc += [f"    if type({v}) is not bool:", "        return None"]
            parts.append(f"(B_TRUE if {v} else B_FALSE)")
        elif c.type is ColumnType.DATETIME:
            dec += [
                f"    {v}, f{i} = I64F(data, p + 1)",
                f"    if f{i} > 1 or not MIN_US <= {v} <= MAX_US:",
                "        return None",
                f"    {v} = to_dt({v}, f{i} == 1)",
                "    p += 10",
            ]
            enc += [
                f"    if type({v}) is not datetime:",
                "        return None",
                f"    a{i} = {v}.tzinfo is not None and {v}.utcoffset() is not None",
            ]
            parts.append(f"P_I64F({tag}, from_dt({v}), a{i})")
        else:
            text = c.type is ColumnType.TEXT
            dec += [f"    n{i} = U32(data, p + 1)[0]", "    p += 5", f"    e{i} = p + n{i}"]
            if text:
                dec.append(f"    {v} = data[p:e{i}].decode('utf-8', 'surrogatepass')")
                enc += [f"    if type({v}) is not str:", "        return None"]
                texts.append(f"{v}")
            else:
                dec.append(f"    {v} = data[p:e{i}]")
                enc += [f"    if type({v}) is not bytes:", "        return None"]
            dec.append(f"    p = e{i}")
            enc.append(f"    n{i} = len({v})")
            var_lengths.append(f"n{i}")
            parts.append(f"P_U32({tag}, n{i})")
            parts.append(v)
        if layouts:
            meta_fields.append(field)
            batch_meta_values.append(str(tag))
            decode = ".decode('utf-8', 'surrogatepass')" if c.type is ColumnType.TEXT else ""
            batch_values.append(f"b{i}{decode}")
            if c.type in _STRUCT_CODES:
                code = _STRUCT_CODES[c.type]
                fmt.append(f"{meta_size + 1}s{code}")
                meta_bytes.append(f"bytes(({tag},))")
                batch_meta_fmt.append("B8x")
                batch_values_fmt.append(f"x{code}")
            else:
                fmt.append(f"{meta_size + 5}s" + "{n" + str(i) + "}s")
                meta_bytes.append(f"P_U32({tag}, n{i})")
                batch_meta_fmt.append("BI{n" + str(i) + "}x")
                batch_values_fmt.append("5x{n" + str(i) + "}s")
                batch_meta_values.append(f"n{i}")
                lengths.append(f"n{i}")
            values.append(f"t[{field + 1}]{decode}")
            field += 2
            # The column's meta bytes (after the header, for the first), as learned.
            meta_checks.append(" + ".join(meta_bytes))
            meta_bytes = []
            meta_size = 0
    dec += ["    if p != len(data):", "        return None"]
    record = "{" + ", ".join(f"{c.name!r}: v{i}" for i, c in enumerate(cols)) + "}"
    if layouts:
        dec += [
            "    if len(LAYOUTS) < MAX_LAYOUTS:",
            "        learn(" + "".join(f"{n}, " for n in lengths) + "p)",
        ]
    dec.append("    return " + record)
    packed = "(" + ", ".join(parts) + ",)"
    if var_lengths:
        # One sum and one comparison on the common path (a record that large cannot be
        # inline on any page either), a text measured in characters before it is encoded.
        # Not copied, the parts are still packed: a value out of range raises here as it
        # does above, for the general path's precise error.
        enc.append(f"    if {' + '.join(var_lengths)} <= {INLINE_VALUE_MAX}:")
        for v in texts:
            n = "n" + v[1:]
            enc.append(f"        {v} = {v}.encode('utf-8', 'surrogatepass')")
            enc.append(f"        {n} = len({v})")
        enc.append(f"        return b''.join({packed})")
        enc.append(f"    {packed}")
        enc.append("    return OVERSIZED")
    else:
        enc.append(f"    return b''.join({packed})")
    code = "\n".join(dec) + "\n\n" + "\n".join(enc) + "\n"
    if layouts:
        built = "{" + ", ".join(f"{c.name!r}: {x}" for c, x in zip(cols, values, strict=True)) + "}"
        batch_built = (
            "{"
            + ", ".join(f"{c.name!r}: {x}" for c, x in zip(cols, batch_values, strict=True))
            + "}"
        )
        names = "".join(f"b{i}, " for i in range(len(cols)))
        # META(t) of a record of the layout: one bytes object a column, a tuple of them for
        # several columns (itemgetter of one index gives the item itself).
        expected = "(" + ", ".join(meta_checks) + ",)" if len(cols) > 1 else meta_checks[0]
        code += "\n".join(
            [
                "",
                "def learn(" + "".join(f"{n}, " for n in lengths) + "size):",
                "    LAYOUTS[size] = (",
                "        Struct(f" + "".join(fmt) + "').unpack,",
                "        " + expected + ",",
                "        f'" + "".join(batch_meta_fmt) + "',",
                "        f'" + "".join(batch_values_fmt) + "',",
                "        (" + ", ".join(batch_meta_values) + ",),",
                "    )",
                "",
                f"META = itemgetter({', '.join(map(str, meta_fields))})",
                "",
                "def fast_decode(data):",
                "    layout = LAYOUTS.get(len(data))",
                "    if layout is not None:",
                "        t = layout[0](data)",
                "        if META(t) == layout[1]:",
                "            return " + built,
                "    return slow_decode(data)",
                "",
                "def decode_many(values):",
                "    n = len(values)",
                "    size = len(values[0])",
                "    layout = LAYOUTS.get(size)",
                "    if layout is not None and list(map(len, values)).count(size) == n:",
                "        batch = BATCHES.get((size, n))",
                "        if batch is None and len(BATCHES) < MAX_LAYOUTS:",
                "            batch = BATCHES[size, n] = (",
                "                Struct('<' + layout[2] * n).unpack,",
                "                Struct('<' + layout[3] * n).unpack,",
                "                layout[4] * n,",
                "            )",
                "        if batch is not None:",
                "            blob = b''.join(values)",
                "            if batch[0](blob) == batch[2]:",
                "                it = iter(batch[1](blob))",
                "                return [",
                "                    " + batch_built,
                "                    for " + names + "in zip(" + "it, " * len(cols) + ")",
                "                ]",
                "        else:",
                "            ts = list(map(layout[0], values))",
                "            if list(map(META, ts)).count(layout[1]) == n:",
                "                return [" + built + " for t in ts]",
                "    return list(map(fast_decode, values))",
                "",
            ]
        )
    else:
        code += "\ndef decode_many(values):\n    return list(map(fast_decode, values))\n"
    exec(compile(code, f"<record codec of {table_def.name}>", "exec"), env)
    return env["fast_decode"], env["fast_encode"], env["decode_many"]  # type: ignore[return-value]
