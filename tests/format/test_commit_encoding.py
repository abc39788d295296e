"""The commit path's encoders agree byte for byte with the general ones they stand in for:
`encode_commit_changes` (a change map) and `encode_commit_ordered` (parallel key and value
lists) with `encode_commit` (operation tuples), and
`encode_frame_header`/`frame_padding` with `encode_frame`."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.format.logframe import (
    FRAME_ALIGN,
    FRAME_HEADER_SIZE,
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    decode_frame,
    encode_frame,
    encode_frame_header,
    encode_frame_parts,
    frame_padding,
)
from jetstore.format.logrecords import (
    BUFFERED_RECORD_OPERATIONS,
    OP_DELETE,
    OP_PUT,
    CommitRecord,
    decode_record,
    encode_commit,
    encode_commit_changes,
    encode_commit_ordered,
)

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
CHANGES = st.dictionaries(
    st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=2000)), max_size=20
)


def as_operations(changes: dict[bytes, bytes | None]) -> list[tuple[int, bytes, bytes | None]]:
    return [
        (OP_DELETE, key, None) if value is None else (OP_PUT, key, value)
        for key, value in changes.items()
    ]


@settings(max_examples=300)
@given(db=U32, txn=U64, time_us=U64, changes=CHANGES)
def test_change_map_encodes_like_operation_tuples(
    db: int, txn: int, time_us: int, changes: dict[bytes, bytes | None]
) -> None:
    data = encode_commit_changes(db, txn, time_us, changes)
    operations = as_operations(changes)
    assert data == encode_commit(db, txn, time_us, operations)
    assert decode_record(data) == CommitRecord(db, txn, time_us, operations)


@settings(max_examples=200)
@given(db=U32, txn=U64, time_us=U64, changes=CHANGES)
def test_ordered_operations_encode_like_operation_tuples(
    db: int, txn: int, time_us: int, changes: dict[bytes, bytes | None]
) -> None:
    keys = sorted(changes)
    data = encode_commit_ordered(db, txn, time_us, keys, [changes[key] for key in keys])
    operations = sorted(as_operations(changes), key=lambda operation: operation[1])
    assert data == encode_commit(db, txn, time_us, operations)
    assert decode_record(data) == CommitRecord(db, txn, time_us, operations)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 300))
def test_large_records_are_written_into_one_buffer_byte_for_byte(seed: int, extra: int) -> None:
    """From BUFFERED_RECORD_OPERATIONS operations on, both encoders write the record into one
    bytearray of its exact size (no part per operation, no join): the same bytes as the
    general encoder, with deletes, empty values and many shapes."""
    rng = random.Random(seed)
    changes: dict[bytes, bytes | None] = {}
    while len(changes) < BUFFERED_RECORD_OPERATIONS + extra:
        key = rng.randbytes(rng.choice([0, 1, 16, 40, 300]))
        roll = rng.random()
        changes[key] = (
            None if roll < 0.2 else b"" if roll < 0.3 else rng.randbytes(rng.choice([1, 100, 2000]))
        )
    data = encode_commit_changes(7, 8, 9, changes)
    assert isinstance(data, bytearray)
    operations = as_operations(changes)
    assert data == encode_commit(7, 8, 9, operations)
    keys = sorted(changes)
    ordered = encode_commit_ordered(7, 8, 9, keys, [changes[key] for key in keys])
    assert isinstance(ordered, bytearray)
    assert ordered == encode_commit(7, 8, 9, sorted(operations, key=lambda operation: operation[1]))
    assert decode_record(bytes(data)) == CommitRecord(7, 8, 9, operations)


@settings(max_examples=200)
@given(db=U32, txn=U64, time_us=U64, key=st.binary(max_size=65535), value=st.binary(max_size=9000))
def test_single_put_encodes_like_operation_tuples(
    db: int, txn: int, time_us: int, key: bytes, value: bytes
) -> None:
    # The one-operation PUT shortcut (one `struct` call for the head) and the general loop.
    assert encode_commit_changes(db, txn, time_us, {key: value}) == encode_commit(
        db, txn, time_us, [(OP_PUT, key, value)]
    )


@settings(max_examples=100)
@given(
    db=U32,
    txn=U64,
    time_us=U64,
    changes=st.dictionaries(
        st.binary(max_size=40), st.binary(max_size=300), min_size=64, max_size=300
    ),
    delete=st.booleans(),
)
def test_bulk_change_maps_encode_like_operation_tuples(
    db: int, txn: int, time_us: int, changes: dict[bytes, bytes | None], delete: bool
) -> None:
    # From 64 operations, a map of puts is encoded by C-level passes; one delete sends it
    # back to the general loop. Both must give `encode_commit`'s bytes.
    if delete:
        changes[next(iter(changes))] = None
    data = encode_commit_changes(db, txn, time_us, changes)
    operations = as_operations(changes)
    assert data == encode_commit(db, txn, time_us, operations)
    assert decode_record(data) == CommitRecord(db, txn, time_us, operations)


def test_edge_change_maps() -> None:
    for changes in ({}, {b"": None}, {b"": b""}, {b"k": None}, {b"a": b"1", b"b": None}):
        assert encode_commit_changes(1, 2, 3, changes) == encode_commit(
            1, 2, 3, as_operations(changes)
        )
    # The order of the map is the order of the record (insertion order, not key order).
    record = decode_record(encode_commit_changes(1, 2, 3, {b"z": b"1", b"a": b"2", b"m": None}))
    assert isinstance(record, CommitRecord)
    assert [key for _op, key, _value in record.operations] == [b"z", b"a", b"m"]


@settings(max_examples=300)
@given(
    generation=st.integers(1, 2**32 - 1),
    offset=st.integers(0, 2**28).map(lambda n: n * FRAME_ALIGN),
    durable=U32,
    kind=st.sampled_from([KIND_FULL, KIND_FIRST, KIND_MIDDLE, KIND_LAST]),
    payload=st.binary(max_size=5000),
)
def test_frame_header_and_padding_make_the_frame(
    generation: int, offset: int, durable: int, kind: int, payload: bytes
) -> None:
    header, crc = encode_frame_header(generation, offset, durable, kind, payload)
    frame, frame_crc = encode_frame(generation, offset, durable, kind, payload)
    assert len(header) == FRAME_HEADER_SIZE
    assert header + payload + frame_padding(len(payload)) == frame
    assert crc == frame_crc
    assert encode_frame_parts(generation, offset, durable, kind, payload) == (
        header,
        frame_padding(len(payload)),
        crc,
    )
    decoded = decode_frame(frame, offset, generation, base=offset)
    assert decoded is not None and decoded.payload == payload and decoded.crc == crc


def test_frame_padding_depends_on_the_length_modulo_the_alignment() -> None:
    for length in range(64):
        padding = frame_padding(length)
        assert padding == bytes(len(padding))
        assert (FRAME_HEADER_SIZE + length + len(padding)) % FRAME_ALIGN == 0
        assert len(padding) < FRAME_ALIGN
        assert padding == frame_padding(length % FRAME_ALIGN)


def test_many_operation_shapes() -> None:
    # A PUT is packed by a struct for its (key length, value length), kept in a bounded
    # cache: more shapes than it keeps (it is emptied and refilled) still encode exactly.
    from jetstore.format import logrecords

    changes = {i.to_bytes(2, "big") * (1 + i % 40): b"v" * (i % 211) for i in range(9000)}
    for _ in range(2):
        data = encode_commit_changes(1, 2, 3, changes)
        assert data == encode_commit(1, 2, 3, as_operations(changes))
        assert len(logrecords._PUT_SHAPES) <= logrecords._PUT_SHAPES_MAX
