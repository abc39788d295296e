"""Order-preserving encoding of key tuples (primary keys and secondary index keys).

This module owns the byte form of every key the tables layer puts into the B+tree *after* the
4-byte object-id prefix (the prefix itself belongs to the table layer). It is pure: no I/O, no
schema knowledge.

Invariants
----------
1. **Order.** For tuples ``a`` and ``b`` whose i-th elements have the same type or are None,
   ``encode_key(a) < encode_key(b)`` (bytewise) exactly when ``a < b``, where None sorts before
   every value and a tuple that is a prefix of another sorts first. Two refinements the Python
   order does not define: ``-0.0`` sorts just before ``0.0`` (they encode differently), and NaN
   (every NaN, canonicalised) sorts after ``+inf``. A naive and an aware datetime of the same
   instant are different keys (the naive one first), as they are unequal in Python.
2. **Prefix.** ``encode_key(t[:k])`` is a byte prefix of ``encode_key(t)``: every element is
   self-delimiting and the encoding is a plain concatenation. So a range scan over all tuples
   starting with ``p`` is ``[encode_key_prefix(p), tuple_prefix_stop(encode_key_prefix(p)))``.
   Not up to ``prefix_successor`` of it: a str or bytes value's encoding is also a byte prefix
   of the encoding of that value followed by NUL bytes (``"a"`` is ``40 61 00``, ``"a\x00"``
   is ``40 61 00 FF 00``), and that range would hold those tuples too.
3. **Round trip.** ``decode_key(encode_key(t)) == t``, with bytes-like values coming back as
   ``bytes``, aware datetimes as the same instant in UTC, naive datetimes as naive, every
   datetime with ``fold`` 0 (``datetime_as_read``).

Byte format, one element after another, each starting with a type tag byte
---------------------------------------------------------------------------
=========  ====  ==========================================================================
type       tag   payload
=========  ====  ==========================================================================
None       0x00  none
bool       0x10  1 byte: 0x00 False, 0x01 True
int        0x20  8 bytes big-endian, value + 2**63 (two's complement with the sign bit
                 flipped); only the signed 64-bit range is accepted
float      0x30  8 bytes big-endian IEEE-754 binary64; sign bit set for non-negative values,
                 all bits inverted for negative ones; NaN is first replaced by 0x7FF8000000000000
str        0x40  UTF-8 (``surrogatepass``, which keeps code point order), each 0x00 written as
                 0x00 0xFF, then a terminating 0x00
bytes      0x50  the bytes, each 0x00 written as 0x00 0xFF, then a terminating 0x00
datetime   0x60  8 bytes big-endian, microseconds since 1970-01-01T00:00Z + 2**63, then 1 flag
                 byte: 0x00 naive (taken as UTC), 0x01 aware
=========  ====  ==========================================================================

The escape scheme is FoundationDB's tuple layer: inside a str/bytes payload every 0x00 is
followed by 0xFF, while the terminator 0x00 is followed by the next tag (all tags are < 0xFF)
or by the end of the key, so the terminator is unambiguous and a shorter string sorts first.
The datetime flag byte departs from "microseconds only": without it a naive datetime could not
come back naive. It only breaks ties between equal instants, so it does not disturb the order.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from jetstore.errors import DatabaseCorrupted, InvalidParameter

__all__ = [
    "MAX_DATETIME_MICROS",
    "MIN_DATETIME_MICROS",
    "KeyInput",
    "KeyValue",
    "datetime_as_read",
    "datetime_to_micros",
    "decode_key",
    "describe_encoded_key",
    "encode_key",
    "encode_key_prefix",
    "micros_to_datetime",
    "prefix_successor",
    "single_key_encoder",
    "tuple_prefix_stop",
]

KeyValue = None | bool | int | float | str | bytes | datetime
# What encode_key also accepts: bytes-like values are encoded (and decoded) as bytes.
KeyInput = KeyValue | bytearray | memoryview

TAG_NONE = 0x00
TAG_BOOL = 0x10
TAG_INT = 0x20
TAG_FLOAT = 0x30
TAG_STR = 0x40
TAG_BYTES = 0x50
TAG_DATETIME = 0x60

_SIGN = 1 << 63
_MASK64 = (1 << 64) - 1
_CANONICAL_NAN_BITS = 0x7FF8000000000000
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1

_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_TAG_U64 = struct.Struct(">BQ")
_TAG_U64_FLAG = struct.Struct(">BQB")
_U64_FLAG = struct.Struct(">QB")

_B_NONE = bytes([TAG_NONE])
_B_FALSE = bytes([TAG_BOOL, 0])
_B_TRUE = bytes([TAG_BOOL, 1])
_B_STR = bytes([TAG_STR])
_B_BYTES = bytes([TAG_BYTES])
_NUL = b"\x00"
# `0 in data` tests for a NUL byte: on CPython 3.11 `_NUL in data` first tries the needle as an
# integer, and that failed conversion (a formatted TypeError, then cleared) costs ~0.2 µs, more
# than the rest of encoding a short key.
_NUL_BYTE = 0
_NUL_ESCAPED = b"\x00\xff"
# Above every tag byte, so `encoded + _TUPLE_STOP` bounds the extensions of a tuple.
_TUPLE_STOP = b"\xff"
_TERMINATOR = b"\x00"

_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
# An aware datetime near datetime.min/max can denote an instant whose UTC form is not
# representable; such values are refused on the way in so that decoding can never overflow.
MIN_DATETIME_MICROS = (datetime.min - _EPOCH_NAIVE) // _ONE_MICROSECOND
MAX_DATETIME_MICROS = (datetime.max - _EPOCH_NAIVE) // _ONE_MICROSECOND


def datetime_to_micros(value: datetime) -> int:
    """Microseconds since the Unix epoch; a naive datetime is taken as UTC.

    Raises InvalidParameter when the instant cannot be represented as a UTC datetime, or when
    its tzinfo gives no valid UTC offset.
    """
    try:
        if value.tzinfo is None or value.utcoffset() is None:
            micros = (value - _EPOCH_NAIVE) // _ONE_MICROSECOND
        else:
            micros = (value - _EPOCH_UTC) // _ONE_MICROSECOND
    except Exception as exc:
        # Only the zone's own code can fail here (datetime refuses an offset of a day or more
        # or of the wrong type; a tzinfo's utcoffset may raise anything): the value is then
        # no instant at all, which is the caller's to fix, not a failure of the engine.
        zone = type(value.tzinfo).__name__
        raise InvalidParameter(
            f"datetime {value.replace(tzinfo=None).isoformat()} in zone {zone} has no valid UTC "
            f"offset: {type(exc).__name__}: {exc}",
            hint="give a naive datetime, or an aware one whose tzinfo returns a timedelta "
            "of less than a day from utcoffset()",
        ) from None
    if micros < MIN_DATETIME_MICROS or micros > MAX_DATETIME_MICROS:
        raise InvalidParameter(f"datetime {value!r} is outside the representable UTC range")
    return micros


def micros_to_datetime(micros: int, aware: bool) -> datetime:
    """Inverse of datetime_to_micros: naive, or aware in UTC. OverflowError if out of range."""
    if aware:
        return _EPOCH_UTC + timedelta(microseconds=micros)
    return _EPOCH_NAIVE + timedelta(microseconds=micros)


def datetime_as_read(value: datetime) -> datetime:
    """`value` as reading it back gives it after it was stored (as a key or in a record): the
    same instant, naive when given naive, else aware in UTC, a plain `datetime` with `fold`
    0. Neither format keeps `fold`: a naive value is taken as UTC, where no wall time
    repeats, and an aware value's fold has done its only work once it chose the instant
    (its UTC offset at a repeated wall time). Used where a value is handed back without
    being read (a column default, the record `update` returns), so it matches a read."""
    return micros_to_datetime(datetime_to_micros(value), _is_aware(value))


def _is_aware(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() is not None


def _escape(raw: bytes) -> bytes:
    if _NUL_BYTE in raw:
        return raw.replace(_NUL, _NUL_ESCAPED) + _TERMINATOR
    return raw + _TERMINATOR


def encode_key(values: Sequence[KeyInput]) -> bytes:
    """Encode a key tuple so that bytewise order equals tuple order (see the module docstring).

    Raises InvalidParameter for an unsupported type, an int outside the signed 64-bit range or
    a datetime whose UTC instant is not representable.
    """
    out: list[bytes] = []
    append = out.append
    for v in values:
        # Exact type checks first: they are the common case and much cheaper than isinstance;
        # bool must not take the int branch (it is a subclass of int).
        if type(v) is int:
            if v < _INT_MIN or v > _INT_MAX:
                raise InvalidParameter(f"integer key value {v} is outside the signed 64-bit range")
            append(_TAG_U64.pack(TAG_INT, v + _SIGN))
        elif type(v) is str:
            append(_B_STR)
            append(_escape(v.encode("utf-8", "surrogatepass")))
        elif v is None:
            append(_B_NONE)
        elif type(v) is bytes:
            append(_B_BYTES)
            append(_escape(v))
        else:
            append(_encode_other(v))
    return b"".join(out)


def _encode_other(v: object) -> bytes:
    if isinstance(v, bool):
        return _B_TRUE if v else _B_FALSE
    if isinstance(v, int):
        if v < _INT_MIN or v > _INT_MAX:
            raise InvalidParameter(f"integer key value {v} is outside the signed 64-bit range")
        return _TAG_U64.pack(TAG_INT, int(v) + _SIGN)
    if isinstance(v, float):
        return _TAG_U64.pack(TAG_FLOAT, _float_bits(v))
    if isinstance(v, str):
        return _B_STR + _escape(str(v).encode("utf-8", "surrogatepass"))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _B_BYTES + _escape(bytes(v))
    if isinstance(v, datetime):
        return _TAG_U64_FLAG.pack(TAG_DATETIME, datetime_to_micros(v) + _SIGN, _is_aware(v))
    raise InvalidParameter(
        f"unsupported key value type {type(v).__name__}",
        hint="key values are None, bool, int, float, str, bytes or datetime",
    )


def _float_bits(v: float) -> int:
    if v != v:
        # Every NaN payload and sign maps to one pattern so equal keys have equal bytes.
        bits = _CANONICAL_NAN_BITS
    else:
        bits = _U64.unpack(_F64.pack(v))[0]
    # Negative floats order backwards as unsigned ints, so invert them entirely; non-negative
    # ones only need to move above every negative one.
    return bits ^ _MASK64 if bits & _SIGN else bits | _SIGN


#: The bytes-key encoding's parts, for a caller that inlines `single_key_encoder`'s bytes case
#: (`Table.get`): ``head + KEY_BYTES_TAG + v.replace(KEY_NUL, KEY_NUL_ESCAPED) + KEY_TERMINATOR``.
KEY_BYTES_TAG = _B_BYTES
KEY_NUL = _NUL
KEY_NUL_ESCAPED = _NUL_ESCAPED
KEY_TERMINATOR = _TERMINATOR


def single_key_encoder(head: bytes, kind: type, max_size: int) -> Callable[[object], bytes | None]:
    """A fast ``head + encode_key((v,))`` for a one-element key of type `kind` (int, str or
    bytes): the function returns None, instead of raising, when ``type(v) is not kind``, the
    value is out of range, or the encoding (without `head`) exceeds `max_size` bytes; callers
    then take the general path, which raises the precise error."""
    if kind is bytes:
        bytes_head = head + _B_BYTES

        def encode_bytes(v: object) -> bytes | None:
            if type(v) is not bytes:
                return None
            if _NUL_BYTE in v:
                v = v.replace(_NUL, _NUL_ESCAPED)
            if len(v) + 2 > max_size:
                return None
            return bytes_head + v + _TERMINATOR

        return encode_bytes
    if kind is str:
        str_head = head + _B_STR

        def encode_str(v: object) -> bytes | None:
            if type(v) is not str:
                return None
            raw = v.encode("utf-8", "surrogatepass")
            if _NUL_BYTE in raw:
                raw = raw.replace(_NUL, _NUL_ESCAPED)
            if len(raw) + 2 > max_size:
                return None
            return str_head + raw + _TERMINATOR

        return encode_str
    if kind is int:
        pack = struct.Struct(f">{len(head)}sBQ").pack

        def encode_int(v: object) -> bytes | None:
            if type(v) is not int or not _INT_MIN <= v <= _INT_MAX or max_size < 9:
                return None
            return pack(head, TAG_INT, v + _SIGN)

        return encode_int
    raise InvalidParameter(f"no single-key encoder for {kind.__name__}")


def encode_key_prefix(values: Sequence[KeyInput]) -> bytes:
    """Encode a partial key (the leading columns of a key).

    Identical to encode_key: the encoding of a tuple is a byte prefix of the encoding of every
    tuple that extends it, so this is the lower bound of a prefix range scan and
    ``tuple_prefix_stop`` of it is the exclusive upper bound.
    """
    return encode_key(values)


def tuple_prefix_stop(encoded: bytes) -> bytes:
    """The exclusive upper bound of the keys that start with the tuple encoded as `encoded`
    (``encoded + FF``): the keys in ``[encoded, encoded + FF)`` are exactly the tuple itself
    and its extensions by further elements, each of which starts with a tag byte below 0xFF.

    ``prefix_successor(encoded)`` is too far when the tuple ends in a str or bytes value:
    the encoding of that value followed by NUL bytes continues with FF (``"a"`` is
    ``40 61 00``, ``"a\x00"`` is ``40 61 00 FF 00``) and would be taken for an equal value.
    """
    return encoded + _TUPLE_STOP


def _corrupt(data: bytes, pos: int, what: str) -> DatabaseCorrupted:
    return DatabaseCorrupted(f"malformed key at byte {pos} of {len(data)}: {what} ({data.hex()})")


def _unescape_at(data: bytes, pos: int) -> tuple[bytes, int]:
    """Return (payload, position after the terminator) for an escaped string starting at pos."""
    start = pos
    find = data.find
    n = len(data)
    while True:
        i = find(_NUL, pos)
        if i < 0:
            raise _corrupt(data, start, "unterminated string")
        if i + 1 < n and data[i + 1] == 0xFF:
            pos = i + 2
            continue
        raw = data[start:i]
        if _NUL_BYTE in raw:
            raw = raw.replace(_NUL_ESCAPED, _NUL)
        return raw, i + 1


def describe_encoded_key(data: bytes) -> str:
    """A key read from the tree as its values, for an error message; its bytes when it does
    not decode (a message about a damaged entry must not fail in turn)."""
    try:
        return repr(decode_key(data))
    except DatabaseCorrupted:
        return data.hex()


def decode_key(data: bytes | bytearray | memoryview) -> tuple[KeyValue, ...]:
    """Decode a key written by encode_key. Malformed input raises DatabaseCorrupted."""
    if type(data) is not bytes:
        data = bytes(data)
    out: list[KeyValue] = []
    append = out.append
    pos = 0
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        if tag == TAG_INT:
            if pos + 8 > n:
                raise _corrupt(data, pos, "truncated integer")
            append(_U64.unpack_from(data, pos)[0] - _SIGN)
            pos += 8
        elif tag == TAG_STR:
            raw, pos = _unescape_at(data, pos)
            try:
                append(raw.decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError as exc:
                raise _corrupt(data, pos, "invalid UTF-8") from exc
        elif tag == TAG_NONE:
            append(None)
        elif tag == TAG_BYTES:
            raw, pos = _unescape_at(data, pos)
            append(raw)
        elif tag == TAG_FLOAT:
            if pos + 8 > n:
                raise _corrupt(data, pos, "truncated float")
            bits = _U64.unpack_from(data, pos)[0]
            bits = bits ^ _SIGN if bits & _SIGN else bits ^ _MASK64
            append(_F64.unpack(_U64.pack(bits))[0])
            pos += 8
        elif tag == TAG_BOOL:
            if pos >= n or data[pos] > 1:
                raise _corrupt(data, pos, "bad boolean")
            append(data[pos] == 1)
            pos += 1
        elif tag == TAG_DATETIME:
            if pos + 9 > n:
                raise _corrupt(data, pos, "truncated datetime")
            biased, flag = _U64_FLAG.unpack_from(data, pos)
            micros = biased - _SIGN
            if flag > 1 or not MIN_DATETIME_MICROS <= micros <= MAX_DATETIME_MICROS:
                raise _corrupt(data, pos, "bad datetime")
            append(micros_to_datetime(micros, flag == 1))
            pos += 9
        else:
            raise _corrupt(data, pos - 1, f"unknown type tag 0x{tag:02x}")
    return tuple(out)


def prefix_successor(prefix: bytes | bytearray | memoryview) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``.

    Trailing 0xFF bytes cannot be incremented, so they are dropped and the byte before them is
    incremented. Returns None when there is no such string (prefix empty or all 0xFF): the scan
    then runs to the end of the key space.
    """
    stripped = bytes(prefix).rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
