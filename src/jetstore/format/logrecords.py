"""Log record payloads: what one (reassembled) log record says.

Every record starts with a type byte. All integers are little-endian.

```
COMMIT (1): one committed transaction on one database
  u8  type = 1
  u32 database id
  u64 transaction id
  u64 commit time (microseconds since the epoch, UTC)
  u32 operation count
  operations, each:
    u8  op (1 = PUT, 2 = DELETE)
    u16 key length, key bytes
    PUT only: u32 value length, value bytes

CREATE_DATABASE (2): a database was created in this instance
  u8  type = 2
  u32 database id
  u32 page size
  16s database signature random bytes, u64 signature time
  u16 name length, name (utf-8; a name `is_valid_database_name` accepts, and for CREATE a
  page size of `PAGE_SIZES`: anything else is no record this engine wrote)

SHUTDOWN (3), START (4): reserved for later use (a clean shutdown, an open); decoded, never
  written by this engine
  u8  type = 3 or 4
  u64 time

DETACH_DATABASE (5): a database left the instance (`Instance.detach`, after its final
  checkpoint; durable before detach returns). Records for its id after this one are never
  its own: the id may be given to another database.
  u8  type = 5
  u32 database id
  16s database signature random bytes, u64 signature time
  u16 name length, name (utf-8)

ATTACH_DATABASE (6): a database file joined the instance (`Instance.attach`; durable before
  the database is usable). Records for its id after this one are this database's.
  u8  type = 6
  (then as DETACH_DATABASE)
```

A reader meets only the record types it knows: an unknown type is `LogFileCorrupt` naming
the position and the type (never skipped, never guessed at). Types 5 and 6 add to format
version 2: logs without attach or detach are byte for byte what older engines write, and an
older engine stops at the first attach/detach record with "unknown record type".

Records carry B+tree operations (keys and values as the tree stores them), so replay never
re-runs table logic. A COMMIT names each key once, so the order of its operations does not
change what replay makes of it: a transaction whose writes were applied to its tree in one
pass lists them in key order (`encode_commit_ordered`; replay's sort of the gathered keys
then finds long ascending runs), any other in the order the keys were first written.
Decoding anything malformed raises `LogFileCorrupt`, naming the position.
`gather_commit_operations` (replay) decodes runs of same-shaped operations with cached
structs; it yields exactly what `decode_record` yields, and a bounded cache (`_RUNS`) keeps a
log of ever-new lengths from growing it.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from itertools import compress, repeat
from operator import countOf, itemgetter, ne
from typing import Final, NamedTuple, cast

from jetstore.errors import LogFileCorrupt
from jetstore.format.common import PAGE_SIZES
from jetstore.format.filenames import is_valid_database_name
from jetstore.format.positions import LogPosition

RECORD_COMMIT: Final = 1
RECORD_CREATE_DATABASE: Final = 2
RECORD_SHUTDOWN: Final = 3
RECORD_START: Final = 4
RECORD_DETACH_DATABASE: Final = 5
RECORD_ATTACH_DATABASE: Final = 6

OP_PUT: Final = 1
OP_DELETE: Final = 2

_COMMIT_HEAD = struct.Struct("<BIQQI")
_COMMIT_ONE_PUT = struct.Struct("<BIQQIBH")  # a commit head, then its only operation's (a PUT)
_PUT_HEAD = struct.Struct("<BH")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
#: The way out of a record that cannot be decoded. Its frame's checksum held (the bytes are as
#: written): `jetstore logs verify` names the first such record of each generation
#: (`check_record`), and the record's own listing shows it.
UNDECODABLE_RECORD_HINT: Final = (
    "The log's frames are intact; the record itself is not one this engine reads. Run "
    "`jetstore dump logs DIR --records` to see it and the records around it. An unknown "
    "record type means a newer engine wrote it: open the instance with that engine. "
    "Otherwise restore the database from a backup, or `jetstore recover --accept-data-loss "
    "DIR` keeps the transactions before this record"
)
_CREATE_HEAD = struct.Struct("<BII16sQ")
_TIMED = struct.Struct("<BQ")
_BINDING_HEAD = struct.Struct("<BI16sQ")

#: Structs of a whole PUT operation by (key length, value length), for `encode_commit_changes`;
#: emptied when it grows past the bound (a workload of ever-new shapes gains nothing from it).
_PUT_SHAPES: dict[tuple[int, int], struct.Struct] = {}
_PUT_SHAPES_MAX: Final = 4096
#: Operations from which a commit record is written into one buffer of its exact size rather
#: than joined from a part per operation (`_encode_operations`).
BUFFERED_RECORD_OPERATIONS: Final = 4096

# An operation: (OP_PUT, key, value) or (OP_DELETE, key, None).
Operation = tuple[int, bytes, bytes | None]


@dataclass(frozen=True, slots=True)
class CommitRecord:
    database_id: int
    transaction_id: int
    time_us: int
    operations: list[Operation]


@dataclass(frozen=True, slots=True)
class CreateDatabaseRecord:
    database_id: int
    page_size: int
    signature_random: bytes
    signature_time_us: int
    name: str


@dataclass(frozen=True, slots=True)
class ShutdownRecord:
    time_us: int


@dataclass(frozen=True, slots=True)
class StartRecord:
    time_us: int


@dataclass(frozen=True, slots=True)
class DetachDatabaseRecord:
    """Database `name` (id, signature) left the instance here (RECORD_DETACH_DATABASE)."""

    database_id: int
    signature_random: bytes
    signature_time_us: int
    name: str


@dataclass(frozen=True, slots=True)
class AttachDatabaseRecord:
    """Database `name` (signature) joined the instance here under `database_id`
    (RECORD_ATTACH_DATABASE)."""

    database_id: int
    signature_random: bytes
    signature_time_us: int
    name: str


LogRecord = (
    CommitRecord
    | CreateDatabaseRecord
    | ShutdownRecord
    | StartRecord
    | DetachDatabaseRecord
    | AttachDatabaseRecord
)


def encode_commit(
    database_id: int, transaction_id: int, time_us: int, operations: list[Operation]
) -> bytes:
    parts: list[bytes] = [
        _COMMIT_HEAD.pack(RECORD_COMMIT, database_id, transaction_id, time_us, len(operations))
    ]
    append = parts.append
    put_head = _PUT_HEAD.pack
    u32 = _U32.pack
    for op, key, value in operations:
        append(put_head(op, len(key)))
        append(key)
        if op == OP_PUT:
            assert value is not None
            append(u32(len(value)))
            append(value)
    return b"".join(parts)


def encode_commit_changes(
    database_id: int, transaction_id: int, time_us: int, changes: dict[bytes, bytes | None]
) -> bytes | bytearray:
    """`encode_commit` of a transaction's change map (key -> value, None for a delete), in the
    map's order: byte for byte the record `encode_commit` makes of the same operations as
    tuples, without building the tuples (every commit takes this path). A bytearray from
    `BUFFERED_RECORD_OPERATIONS` operations on (see `_encode_operations`)."""
    count = len(changes)
    if count == 1:
        # A single-row commit: header and operation head in one `struct` call.
        ((key, value),) = changes.items()
        if value is not None:
            return b"".join(
                (
                    _COMMIT_ONE_PUT.pack(
                        RECORD_COMMIT,
                        database_id,
                        transaction_id,
                        time_us,
                        1,
                        OP_PUT,
                        len(key),
                    ),
                    key,
                    _U32.pack(len(value)),
                    value,
                )
            )
    return _encode_operations(
        database_id, transaction_id, time_us, count, changes.keys(), changes.values()
    )


def encode_commit_ordered(
    database_id: int,
    transaction_id: int,
    time_us: int,
    keys: list[bytes],
    values: list[bytes | None],
) -> bytes | bytearray:
    """`encode_commit` of operations given as parallel lists (a transaction's writes in key
    order, see `Transaction.operations_in_key_order`).

    Replay gathers every record's operations into one map and sorts its keys; records whose
    operations are in key order give that sort long ascending runs (about half its cost for
    large transactions) and leave the entries in memory in runs of key order.
    """
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys and {len(values)} values")
    return _encode_operations(database_id, transaction_id, time_us, len(keys), keys, values)


def _put_struct(key_length: int, value_length: int) -> struct.Struct:
    """The struct of a whole PUT of these lengths: large transactions repeat a few shapes,
    and one call per operation is about a third cheaper than four."""
    shapes = _PUT_SHAPES
    if len(shapes) >= _PUT_SHAPES_MAX:
        shapes.clear()
    found = shapes[key_length, value_length] = struct.Struct(f"<BH{key_length}sI{value_length}s")
    return found


def _encode_operations(
    database_id: int,
    transaction_id: int,
    time_us: int,
    count: int,
    keys: Collection[bytes],
    values: Collection[bytes | None],
) -> bytes | bytearray:
    """The record of `count` operations (`keys[i]` gets `values[i]`, None: deleted).

    From `BUFFERED_RECORD_OPERATIONS` operations on, the record is written into one
    bytearray of its exact size and returned as is: joining a part per operation held every
    operation twice at the peak (the parts, then the record), several hundred MB for a
    million-row transaction, where the log writer takes the bytearray without a copy.
    """
    head = _COMMIT_HEAD.pack(RECORD_COMMIT, database_id, transaction_id, time_us, count)
    shape_of = _PUT_SHAPES.get
    if count >= BUFFERED_RECORD_OPERATIONS:
        deletes = countOf(values, None)
        # `filter(None, ...)` drops the deletes, and empty values, which add no bytes.
        size = (
            len(head)
            + 3 * count
            + sum(map(len, keys))
            + 4 * (count - deletes)
            + sum(map(len, filter(None, values)))
        )
        buffer = bytearray(size)
        buffer[: len(head)] = head
        pos = len(head)
        delete_head = _PUT_HEAD.pack_into
        for key, value in zip(keys, values, strict=True):
            if value is None:
                delete_head(buffer, pos, OP_DELETE, len(key))
                pos += 3
                buffer[pos : pos + len(key)] = key
                pos += len(key)
            else:
                key_length, value_length = len(key), len(value)
                put = shape_of((key_length, value_length)) or _put_struct(key_length, value_length)
                put.pack_into(buffer, pos, OP_PUT, key_length, key, value_length, value)
                pos += put.size
        if pos != size:
            raise ValueError(f"the operations took {pos} bytes of a {size}-byte record")
        return buffer
    parts: list[bytes] = [head]
    append = parts.append
    put_head = _PUT_HEAD.pack
    for key, value in zip(keys, values, strict=True):
        if value is None:
            append(put_head(OP_DELETE, len(key)))
            append(key)
        else:
            key_length, value_length = len(key), len(value)
            put = shape_of((key_length, value_length)) or _put_struct(key_length, value_length)
            append(put.pack(OP_PUT, key_length, key, value_length, value))
    return b"".join(parts)


def encode_create_database(
    database_id: int, page_size: int, signature_random: bytes, signature_time_us: int, name: str
) -> bytes:
    raw = name.encode("utf-8")
    return (
        _CREATE_HEAD.pack(
            RECORD_CREATE_DATABASE, database_id, page_size, signature_random, signature_time_us
        )
        + _U16.pack(len(raw))
        + raw
    )


def _encode_binding(
    kind: int, database_id: int, signature_random: bytes, signature_time_us: int, name: str
) -> bytes:
    if len(signature_random) != 16:
        raise ValueError(f"a signature's random part is 16 bytes, not {len(signature_random)}")
    raw = name.encode("utf-8")
    return (
        _BINDING_HEAD.pack(kind, database_id, signature_random, signature_time_us)
        + _U16.pack(len(raw))
        + raw
    )


def encode_detach_database(
    database_id: int, signature_random: bytes, signature_time_us: int, name: str
) -> bytes:
    return _encode_binding(
        RECORD_DETACH_DATABASE, database_id, signature_random, signature_time_us, name
    )


def encode_attach_database(
    database_id: int, signature_random: bytes, signature_time_us: int, name: str
) -> bytes:
    return _encode_binding(
        RECORD_ATTACH_DATABASE, database_id, signature_random, signature_time_us, name
    )


def encode_shutdown(time_us: int) -> bytes:
    return _TIMED.pack(RECORD_SHUTDOWN, time_us)


def encode_start(time_us: int) -> bytes:
    return _TIMED.pack(RECORD_START, time_us)


def decode_record(data: bytes, position: LogPosition | None = None) -> LogRecord:
    """Decode one reassembled record; `position` only names the place in errors."""
    try:
        kind = data[0]
        if kind == RECORD_COMMIT:
            return _decode_commit(data)
        if kind == RECORD_CREATE_DATABASE:
            _, db_id, page_size, sig, sig_time = _CREATE_HEAD.unpack_from(data, 0)
            (name_length,) = _U16.unpack_from(data, _CREATE_HEAD.size)
            start = _CREATE_HEAD.size + 2
            raw = data[start : start + name_length]
            if len(raw) != name_length or start + name_length != len(data):
                raise ValueError("bad name length")
            if page_size not in PAGE_SIZES:
                raise ValueError(f"page size {page_size} is not one of {sorted(PAGE_SIZES)}")
            name = _database_name(raw)
            return CreateDatabaseRecord(db_id, page_size, sig, sig_time, name)
        if kind in (RECORD_SHUTDOWN, RECORD_START):
            if len(data) != _TIMED.size:
                raise ValueError("bad length")
            _, time_us = _TIMED.unpack_from(data, 0)
            return ShutdownRecord(time_us) if kind == RECORD_SHUTDOWN else StartRecord(time_us)
        if kind in (RECORD_DETACH_DATABASE, RECORD_ATTACH_DATABASE):
            _, db_id, sig, sig_time = _BINDING_HEAD.unpack_from(data, 0)
            (name_length,) = _U16.unpack_from(data, _BINDING_HEAD.size)
            start = _BINDING_HEAD.size + 2
            raw = data[start : start + name_length]
            if len(raw) != name_length or start + name_length != len(data):
                raise ValueError("bad name length")
            cls = DetachDatabaseRecord if kind == RECORD_DETACH_DATABASE else AttachDatabaseRecord
            return cls(db_id, sig, sig_time, _database_name(raw))
        raise ValueError(
            f"unknown record type {kind} (a newer engine's record? the log file header names "
            "the engine that wrote it)"
        )
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise _undecodable(exc, position) from exc


def _database_name(raw: bytes) -> str:
    """The name of a CREATE, ATTACH or DETACH record: one the engine accepts
    (`is_valid_database_name`), since every record is written with such a name. Replay
    makes a file of it: another name (a NUL, a "/", "..") would reach the file system."""
    name = raw.decode("utf-8")
    if not is_valid_database_name(name):
        raise ValueError(f"database name {name!r} is not one this engine makes")
    return name


def _undecodable(exc: Exception, position: LogPosition | None) -> LogFileCorrupt:
    where = f" at log position {position}" if position is not None else ""
    return LogFileCorrupt(f"undecodable log record{where}: {exc}", hint=UNDECODABLE_RECORD_HINT)


def check_record(data: bytes | bytearray, position: LogPosition | None = None) -> int:
    """Decode one reassembled record as `decode_record` does, keeping nothing of it; returns
    its type. `LogFileCorrupt` (decode_record's) when it does not decode.

    For `jetstore logs verify`, which decodes every record of a log: a COMMIT's operations
    are walked over a view of `data` (the record may be a bytearray the frames were
    gathered into), never listed, so a record of millions of operations costs no more
    memory than its bytes."""
    kind = record_type(data)
    if kind != RECORD_COMMIT:
        # The other types are small by format (a u16-long name at most).
        decode_record(data if isinstance(data, bytes) else bytes(data), position)
        return kind
    try:
        view = memoryview(data)
        _COMMIT_HEAD.unpack_from(view, 0)
        deque(_commit_operations(view), maxlen=0)
    except (struct.error, ValueError) as exc:
        raise _undecodable(exc, position) from exc
    return kind


def _decode_commit(data: bytes) -> CommitRecord:
    _, db_id, txn_id, time_us, _count = _COMMIT_HEAD.unpack_from(data, 0)
    # Keys and values are slices of `data`: bytes here.
    operations = cast("list[Operation]", list(_commit_operations(data)))
    return CommitRecord(db_id, txn_id, time_us, operations)


def _commit_operations(
    data: bytes | memoryview,
) -> Iterator[tuple[int, bytes | memoryview, bytes | memoryview | None]]:
    """The operations of a COMMIT record, one at a time, keys and values slices of `data`;
    raises (struct.error, ValueError) at the first malformed one, or after the last when
    bytes trail it. Lazy, and over a view without copies, so that `check_record` walks a
    record of millions of operations, or one 64 MiB value, without a second copy of it."""
    (count,) = _U32.unpack_from(data, _COMMIT_HEAD.size - 4)
    pos = _COMMIT_HEAD.size
    put_head = _PUT_HEAD.unpack_from
    u32 = _U32.unpack_from
    end = len(data)
    for _ in range(count):
        op, key_length = put_head(data, pos)
        pos += 3
        key = data[pos : pos + key_length]
        pos += key_length
        if op == OP_PUT:
            (value_length,) = u32(data, pos)
            pos += 4
            value = data[pos : pos + value_length]
            pos += value_length
            if pos > end:
                raise ValueError("operation runs past the end of the record")
            yield (OP_PUT, key, value)
        elif op == OP_DELETE:
            if pos > end:
                raise ValueError("operation runs past the end of the record")
            yield (OP_DELETE, key, None)
        else:
            raise ValueError(f"unknown operation {op}")
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes after the last operation")


def record_type(data: bytes | bytearray) -> int:
    """The type byte of a reassembled record (0 for an empty one)."""
    return data[0] if data else 0


def _commit_head(data: bytes, position: LogPosition | None) -> tuple[int, int, int, int]:
    """(database id, transaction id, commit time, operation count) of a COMMIT record."""
    try:
        kind, db_id, txn_id, time_us, count = _COMMIT_HEAD.unpack_from(data, 0)
    except struct.error as exc:
        where = f" at log position {position}" if position is not None else ""
        raise LogFileCorrupt(
            f"undecodable commit record{where}: {exc}", hint=UNDECODABLE_RECORD_HINT
        ) from exc
    if kind != RECORD_COMMIT:
        raise LogFileCorrupt(f"record at {position} is not a commit record")
    return db_id, txn_id, time_us, count


def decode_commit_header(data: bytes, position: LogPosition | None = None) -> tuple[int, int]:
    """(database id, operation count) of a COMMIT record, without decoding its operations."""
    db_id, _txn_id, _time_us, count = _commit_head(data, position)
    return db_id, count


def commit_time_us(data: bytes, position: LogPosition | None = None) -> int:
    """The commit time of a COMMIT record (microseconds since the epoch, UTC)."""
    return _commit_head(data, position)[2]


class GatheredCommit(NamedTuple):
    """What `gather_commit_operations` saw besides the changes it gathered."""

    size: int  #: bytes of every key and value
    longest_key: int  #: the longest key of a PUT (0: no PUT)
    longest_put: int  #: the most key + value bytes of one PUT (0: no PUT)


def gather_commit_operations(
    data: bytes, changes: dict[bytes, bytes | None], position: LogPosition | None = None
) -> GatheredCommit:
    """Decode a COMMIT record's operations straight into `changes` (key -> value, None for a
    delete; later records overwrite earlier ones). Returns the bytes of keys and values and
    the widths of its widest PUT, taken per shape as it decodes (replay checks them against
    the tree's entry limits without another pass over the changes).

    The replay of a long log spends most of its time here. Operations often come in runs of
    one shape (op, key length, value length: rows of one table with fixed-size columns), and
    a run is decoded by C code: one `iter_unpack` of a header-only struct finds where the run
    ends, a second one yields its (key, value) pairs straight into the dict. An operation of
    another shape than the one before it is decoded on its own; after `_SINGLES_LIMIT` of
    those in a row (variable lengths, or alternating shapes such as a row and its index
    entry) the rest of the record goes through the plain per-operation loop, so such records
    cost what they cost before the runs existed and make no structs. On malformed input,
    operations before the bad one may already be in `changes`.
    """
    try:
        kind, _db_id, _txn_id, _time_us, remaining = _COMMIT_HEAD.unpack_from(data, 0)
        if kind != RECORD_COMMIT:
            raise ValueError(f"record type {kind} is not a commit")
        pos = _COMMIT_HEAD.size
        end = len(data)
        size = 0
        put_head = _PUT_HEAD.unpack_from
        u32 = _U32.unpack_from
        last_op = last_key_length = last_value_length = -1
        longest_key = longest_put = 0
        singles = 0
        while remaining:
            op, key_length = put_head(data, pos)
            if op == OP_PUT:
                (value_length,) = u32(data, pos + 3 + key_length)
            elif op == OP_DELETE:
                value_length = -4  # no length field and no value: the width below is 3 + key
            else:
                raise ValueError(f"unknown operation {op}")
            width = 7 + key_length + value_length
            following = pos + width
            if following > end:
                raise ValueError("operation runs past the end of the record")
            if op != last_op or key_length != last_key_length or value_length != last_value_length:
                # Another shape than the operation before: this one alone. A shape that does
                # not repeat right away seldom repeats (variable-length values), so a run
                # starts only on the second operation of a shape.
                if singles == _SINGLES_LIMIT:
                    size, pos, longest_key, longest_put = _gather_plain(
                        data, pos, remaining, changes, size, longest_key, longest_put
                    )
                    break
                singles += 1
                last_op, last_key_length, last_value_length = op, key_length, value_length
                key = data[pos + 3 : pos + 3 + key_length]
                if op == OP_PUT:
                    changes[key] = data[pos + 7 + key_length : following]
                    size += key_length + value_length
                    # A shape is checked once, here: the run that may follow repeats it.
                    if key_length > longest_key:
                        longest_key = key_length
                    if key_length + value_length > longest_put:
                        longest_put = key_length + value_length
                else:
                    changes[key] = None
                    size += key_length
                pos = following
                remaining -= 1
                continue
            singles = 0
            count = _gather_run(data, pos, width, min(remaining, (end - pos) // width), changes)
            size += count * (key_length + value_length if op == OP_PUT else key_length)
            pos += count * width
            remaining -= count
        if pos != end:
            raise ValueError(f"the operations end at byte {pos} of a {end}-byte record")
        return GatheredCommit(size, longest_key, longest_put)
    except (struct.error, IndexError, ValueError) as exc:
        where = f" at log position {position}" if position is not None else ""
        raise LogFileCorrupt(
            f"undecodable commit record{where}: {exc}", hint=UNDECODABLE_RECORD_HINT
        ) from exc


def _gather_run(
    data: bytes, pos: int, width: int, limit: int, changes: dict[bytes, bytes | None]
) -> int:
    """Gather the run of operations of the shape of the one at `pos` (of `width` bytes), at
    most `limit` (>= 1) of them, all known to fit in `data`; returns how many it took (>= 1).

    The run ends at the first operation whose header differs from the shape; every operation
    before it sits where the shape says, so its bytes are exactly what the per-operation
    decoding reads.
    """
    op, key_length = _PUT_HEAD.unpack_from(data, pos)
    shape: tuple[int, ...]
    if op == OP_PUT:
        shape = (op, key_length, width - 7 - key_length)
    else:
        shape = (op, key_length)
    run = _RUNS.get(shape)
    if run is None:
        run = _make_run(shape)
    heads, entries = run
    block = memoryview(data)[pos : pos + limit * width]
    count = next(compress(itertools.count(), map(ne, heads(block), repeat(shape))), limit)
    block = block[: count * width]
    if op == OP_PUT:
        # A PUT shape's entries struct yields (key, value) pairs.
        changes.update(cast("Iterator[tuple[bytes, bytes]]", entries(block)))
    else:
        changes.update(zip(map(_FIRST, entries(block)), repeat(None)))
    return count


def _gather_plain(
    data: bytes,
    pos: int,
    remaining: int,
    changes: dict[bytes, bytes | None],
    size: int,
    longest_key: int,
    longest_put: int,
) -> tuple[int, int, int, int]:
    """The per-operation loop over the `remaining` operations from `pos`: (size, end,
    longest PUT key, longest PUT key + value)."""
    put_head = _PUT_HEAD.unpack_from
    u32 = _U32.unpack_from
    end = len(data)
    for _ in range(remaining):
        op, key_length = put_head(data, pos)
        pos += 3
        key = data[pos : pos + key_length]
        pos += key_length
        if op == OP_PUT:
            (value_length,) = u32(data, pos)
            pos += 4
            changes[key] = data[pos : pos + value_length]
            pos += value_length
            size += key_length + value_length
            if key_length > longest_key:
                longest_key = key_length
            if key_length + value_length > longest_put:
                longest_put = key_length + value_length
        elif op == OP_DELETE:
            changes[key] = None
            size += key_length
        else:
            raise ValueError(f"unknown operation {op}")
        if pos > end:
            raise ValueError("operation runs past the end of the record")
    return size, pos, longest_key, longest_put


# Per operation shape: iter_unpack of (header fields only, every key and value skipped) and
# of (key, value) or (key,). Bounded: a log of ever-new lengths cannot grow it without end.
_RunStructs = tuple[
    Callable[[memoryview], Iterator[tuple[int, ...]]],
    Callable[[memoryview], Iterator[tuple[bytes, ...]]],
]
_RUNS: dict[tuple[int, ...], _RunStructs] = {}
_RUNS_LIMIT: Final = 512
# Operations decoded alone in a row after which a record is taken for one without runs.
_SINGLES_LIMIT: Final = 16
_FIRST = itemgetter(0)


def _make_run(shape: tuple[int, ...]) -> _RunStructs:
    if len(shape) == 3:
        _, key_length, value_length = shape
        heads = struct.Struct(f"<BH{key_length}xI{value_length}x")
        entries = struct.Struct(f"<3x{key_length}s4x{value_length}s")
    else:
        _, key_length = shape
        heads = struct.Struct(f"<BH{key_length}x")
        entries = struct.Struct(f"<3x{key_length}s")
    if len(_RUNS) >= _RUNS_LIMIT:
        _RUNS.clear()
    run: _RunStructs = (heads.iter_unpack, entries.iter_unpack)
    _RUNS[shape] = run
    return run
