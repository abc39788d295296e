"""Log record payloads: round trips of every record type, the fast commit path agrees with
the full decoder, and malformed input only ever raises LogFileCorrupt."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jetstore.errors import JetError, LogFileCorrupt
from jetstore.format.common import PAGE_SIZES
from jetstore.format.logrecords import (
    OP_DELETE,
    OP_PUT,
    RECORD_ATTACH_DATABASE,
    RECORD_COMMIT,
    RECORD_CREATE_DATABASE,
    RECORD_DETACH_DATABASE,
    RECORD_SHUTDOWN,
    RECORD_START,
    AttachDatabaseRecord,
    CommitRecord,
    CreateDatabaseRecord,
    DetachDatabaseRecord,
    GatheredCommit,
    ShutdownRecord,
    StartRecord,
    check_record,
    commit_time_us,
    decode_commit_header,
    decode_record,
    encode_attach_database,
    encode_commit,
    encode_create_database,
    encode_detach_database,
    encode_shutdown,
    encode_start,
    gather_commit_operations,
    record_type,
)
from jetstore.format.positions import LogPosition

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
KEYS = st.binary(min_size=0, max_size=300)
VALUES = st.binary(min_size=0, max_size=2000)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just(OP_PUT), KEYS, VALUES),
        st.tuples(st.just(OP_DELETE), KEYS, st.none()),
    ),
    max_size=20,
)
#: The names the engine makes databases with (`is_valid_database_name`).
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", fullmatch=True)

POSITION = LogPosition(0x2A, 0x1000)


def assert_gathered(result: GatheredCommit, operations: list) -> None:
    """`gather_commit_operations`'s sizes agree with the operations it decoded."""
    puts = [(k, v) for op, k, v in operations if op == OP_PUT and v is not None]
    assert result == (
        sum(len(k) + (len(v) if v is not None else 0) for _, k, v in operations),
        max((len(k) for k, _ in puts), default=0),
        max((len(k) + len(v) for k, v in puts), default=0),
    )


def apply(operations: list, changes: dict[bytes, bytes | None]) -> None:
    for op, key, value in operations:
        changes[key] = value if op == OP_PUT else None


def sample_records() -> list[bytes]:
    return [
        encode_commit(
            3,
            77,
            1_700_000_000_000_000,
            [
                (OP_PUT, b"alpha", b"one"),
                (OP_DELETE, b"beta", None),
                (OP_PUT, b"", b""),
                (OP_PUT, b"k" * 300, b"v" * 5000),
            ],
        ),
        encode_commit(1, 1, 0, []),
        encode_create_database(2, 8192, bytes(range(16)), 123456, "orders_2024"),
        encode_create_database(9, 4096, b"\xff" * 16, 0, "naive-data"),
        encode_shutdown(2**63),
        encode_start(5),
        encode_detach_database(2, bytes(range(16)), 123456, "other"),
        encode_attach_database(2, b"\xfe" * 16, 7, "naive-data"),
    ]


# ----------------------------------------------------------------- round trips


def test_type_bytes() -> None:
    assert (RECORD_COMMIT, RECORD_CREATE_DATABASE, RECORD_SHUTDOWN, RECORD_START) == (1, 2, 3, 4)
    assert (RECORD_DETACH_DATABASE, RECORD_ATTACH_DATABASE) == (5, 6)
    assert (OP_PUT, OP_DELETE) == (1, 2)
    records = sample_records()
    assert [record_type(r) for r in records] == [1, 1, 2, 2, 3, 4, 5, 6]
    assert record_type(b"") == 0


def test_commit_layout() -> None:
    data = encode_commit(0x01020304, 5, 6, [(OP_PUT, b"ab", b"xyz"), (OP_DELETE, b"c", None)])
    assert data == (
        struct.pack("<BIQQI", 1, 0x01020304, 5, 6, 2)
        + struct.pack("<BH", 1, 2)
        + b"ab"
        + struct.pack("<I", 3)
        + b"xyz"
        + struct.pack("<BH", 2, 1)
        + b"c"
    )


def test_commit_round_trip_examples() -> None:
    ops = [
        (OP_PUT, b"alpha", b"one"),
        (OP_DELETE, b"beta", None),
        (OP_PUT, b"", b""),
        (OP_DELETE, b"", None),
        (OP_PUT, b"k" * 65535, b"v" * 70000),
    ]
    record = decode_record(encode_commit(2**32 - 1, 2**64 - 1, 2**64 - 1, ops))
    assert record == CommitRecord(2**32 - 1, 2**64 - 1, 2**64 - 1, ops)
    assert decode_record(encode_commit(0, 0, 0, [])) == CommitRecord(0, 0, 0, [])


@settings(max_examples=150)
@given(db=U32, txn=U64, time_us=U64, operations=OPERATIONS)
def test_commit_round_trip(db: int, txn: int, time_us: int, operations: list) -> None:
    data = encode_commit(db, txn, time_us, operations)
    record = decode_record(data, POSITION)
    assert isinstance(record, CommitRecord)
    assert record == CommitRecord(db, txn, time_us, operations)
    assert decode_commit_header(data) == (db, len(operations))
    assert decode_commit_header(data, POSITION) == (db, len(operations))

    expected: dict[bytes, bytes | None] = {}
    apply(record.operations, expected)
    gathered: dict[bytes, bytes | None] = {}
    result = gather_commit_operations(data, gathered, POSITION)
    assert gathered == expected
    assert_gathered(result, operations)


@settings(max_examples=60)
@given(records=st.lists(st.tuples(U32, OPERATIONS), min_size=1, max_size=6))
def test_gather_over_many_records_is_last_write_wins(records: list) -> None:
    # Few distinct keys so that records overwrite each other.
    expected: dict[bytes, bytes | None] = {}
    gathered: dict[bytes, bytes | None] = {b"preexisting": b"kept"}  # keys here are <= 1 byte
    for db, operations in records:
        small_ops = [(op, key[:1], value) for op, key, value in operations]
        data = encode_commit(db, 1, 2, small_ops)
        record = decode_record(data)
        assert isinstance(record, CommitRecord)
        apply(record.operations, expected)
        gather_commit_operations(data, gathered)
    assert gathered.pop(b"preexisting") == b"kept"
    assert gathered == expected


def test_gather_last_write_wins_within_one_record() -> None:
    ops = [
        (OP_PUT, b"a", b"1"),
        (OP_PUT, b"b", b"2"),
        (OP_DELETE, b"a", None),
        (OP_PUT, b"b", b"3"),
        (OP_DELETE, b"c", None),
        (OP_PUT, b"c", b"4"),
    ]
    changes: dict[bytes, bytes | None] = {}
    assert (
        gather_commit_operations(encode_commit(1, 1, 1, ops), changes).size == 2 + 2 + 1 + 2 + 1 + 2
    )
    assert changes == {b"a": None, b"b": b"3", b"c": b"4"}


def test_create_database_layout() -> None:
    """docs/design.md, "Log records": u8 type 2, u32 database id, u32 page size, 16-byte
    signature random, u64 signature time, u16 name length, name (UTF-8)."""
    signature = bytes(range(16))
    data = encode_create_database(0x01020304, 8192, signature, 0x1122334455667788, "naïve")
    raw = "naïve".encode()
    assert data == (
        struct.pack("<BII16sQH", 2, 0x01020304, 8192, signature, 0x1122334455667788, len(raw)) + raw
    )


@settings(max_examples=100)
@given(
    db=U32,
    page_size=st.sampled_from(sorted(PAGE_SIZES)),
    signature=st.binary(min_size=16, max_size=16),
    sig_time=U64,
    name=NAMES,
)
def test_create_database_round_trip(
    db: int, page_size: int, signature: bytes, sig_time: int, name: str
) -> None:
    assume(len(name.encode("utf-8")) <= 65535)
    data = encode_create_database(db, page_size, signature, sig_time, name)
    assert record_type(data) == RECORD_CREATE_DATABASE
    assert decode_record(data, POSITION) == CreateDatabaseRecord(
        db, page_size, signature, sig_time, name
    )


@pytest.mark.parametrize("name", ["a", "orders", "_x-1", "x" * 64])
def test_create_database_names(name: str) -> None:
    data = encode_create_database(1, 8192, b"S" * 16, 99, name)
    record = decode_record(data)
    assert isinstance(record, CreateDatabaseRecord)
    assert record.name == name
    assert record.signature_random == b"S" * 16


@pytest.mark.parametrize(
    "name", ["", "naïve", "数据库", "emoji-🗄️", "x" * 65, "a/b", "..", "x\x00y", "1st"]
)
def test_names_the_engine_never_makes_are_corrupt(name: str) -> None:
    # Replay makes a file of the name: a NUL, "/" or ".." would reach the file system.
    for data in (
        encode_create_database(1, 8192, b"S" * 16, 99, name),
        encode_attach_database(1, b"S" * 16, 99, name),
        encode_detach_database(1, b"S" * 16, 99, name),
    ):
        err = assert_corrupt(decode_record, data, POSITION)
        assert "is not one this engine makes" in err.detail and str(POSITION) in err.detail


@pytest.mark.parametrize("page_size", [0, 3, 2048, 65536, 2**32 - 1])
def test_a_page_size_the_engine_does_not_have_is_corrupt(page_size: int) -> None:
    data = encode_create_database(1, page_size, b"S" * 16, 99, "main")
    err = assert_corrupt(decode_record, data, POSITION)
    assert f"page size {page_size}" in err.detail


def test_detach_and_attach_layout() -> None:
    signature = bytes(range(16))
    data = encode_detach_database(0x01020304, signature, 0x1122334455667788, "other")
    assert data == (
        struct.pack("<BI16sQ", 5, 0x01020304, signature, 0x1122334455667788)
        + struct.pack("<H", 5)
        + b"other"
    )
    attach = encode_attach_database(0x01020304, signature, 0x1122334455667788, "other")
    assert attach == b"\x06" + data[1:]


@settings(max_examples=100)
@given(db=U32, signature=st.binary(min_size=16, max_size=16), sig_time=U64, name=NAMES)
def test_detach_and_attach_round_trip(db: int, signature: bytes, sig_time: int, name: str) -> None:
    assume(len(name.encode("utf-8")) <= 65535)
    detach = encode_detach_database(db, signature, sig_time, name)
    assert record_type(detach) == RECORD_DETACH_DATABASE
    assert decode_record(detach, POSITION) == DetachDatabaseRecord(db, signature, sig_time, name)
    attach = encode_attach_database(db, signature, sig_time, name)
    assert record_type(attach) == RECORD_ATTACH_DATABASE
    assert decode_record(attach, POSITION) == AttachDatabaseRecord(db, signature, sig_time, name)


def test_binding_records_refuse_a_bad_signature_and_unknown_types_are_named() -> None:
    with pytest.raises(ValueError):
        encode_detach_database(1, bytes(15), 0, "x")
    err = assert_corrupt(decode_record, b"\x07" + bytes(40), POSITION)
    assert "unknown record type 7" in str(err)
    assert str(POSITION) in str(err)
    # Sent to the record's listing; `logs verify` reports it with this hint, not to itself.
    assert "dump logs DIR --records" in str(err) and "newer engine" in str(err)
    assert "logs verify" not in str(err)


@given(time_us=U64)
def test_shutdown_and_start_round_trip(time_us: int) -> None:
    assert decode_record(encode_shutdown(time_us)) == ShutdownRecord(time_us)
    assert decode_record(encode_start(time_us)) == StartRecord(time_us)
    assert len(encode_shutdown(time_us)) == 9
    assert record_type(encode_start(time_us)) == RECORD_START


# ----------------------------------------------------------------- malformed input


def assert_corrupt(call, *args) -> LogFileCorrupt:
    with pytest.raises(LogFileCorrupt) as info:
        call(*args)
    assert isinstance(info.value, JetError)
    return info.value


def test_specific_malformed_records() -> None:
    good_commit = encode_commit(1, 2, 3, [(OP_PUT, b"key", b"value")])
    cases = [
        b"",
        b"\x00",
        b"\x05rest",
        b"\xff" * 40,
        good_commit + b"\x00",  # trailing byte
        good_commit[:-1],  # value cut short
        encode_commit(1, 2, 3, [(3, b"k", None)]),  # unknown operation
        encode_shutdown(1) + b"\x00",
        encode_start(1)[:-1],
        encode_create_database(1, 4096, bytes(16), 0, "db") + b"x",
        encode_create_database(1, 4096, bytes(16), 0, "db")[:-1],
        encode_create_database(1, 4096, bytes(16), 0, "db")[:-2] + b"\xff\xfe",  # bad utf-8
        encode_detach_database(1, bytes(16), 0, "db") + b"x",
        encode_detach_database(1, bytes(16), 0, "db")[:-1],
        encode_attach_database(1, bytes(16), 0, "db")[:-2] + b"\xff\xfe",  # bad utf-8
    ]
    for data in cases:
        err = assert_corrupt(decode_record, data, POSITION)
        assert str(POSITION) in str(err)
        assert err.code == -501


def test_gather_and_header_reject_malformed_commits() -> None:
    good = encode_commit(1, 2, 3, [(OP_PUT, b"key", b"value"), (OP_DELETE, b"d", None)])
    for data in [b"", good[:10], good[:-1], good + b"\x00", good[:25]]:
        assert_corrupt(gather_commit_operations, data, {}, POSITION)
    for data in [b"", good[:24]]:
        err = assert_corrupt(decode_commit_header, data, POSITION)
        assert str(POSITION) in str(err)
    assert_corrupt(decode_commit_header, encode_start(1) + bytes(30))
    err = assert_corrupt(gather_commit_operations, good[:-1], {}, POSITION)
    assert str(POSITION) in str(err)


def check_only_corrupt(data: bytes) -> None:
    """The decoders either succeed or raise LogFileCorrupt, and agree with each other:
    `check_record` (`logs verify`) refuses exactly what `decode_record` refuses."""
    decoded = None
    try:
        decoded = decode_record(data, POSITION)
    except LogFileCorrupt:
        pass
    for copy in (data, bytearray(data)):
        try:
            kind = check_record(copy, POSITION)
        except LogFileCorrupt as exc:
            assert decoded is None, exc
            assert str(POSITION) in exc.detail
        else:
            assert decoded is not None and kind == record_type(data)
    try:
        commit_time_us(data, POSITION)
    except LogFileCorrupt:
        pass
    try:
        decode_commit_header(data, POSITION)
    except LogFileCorrupt:
        pass
    changes: dict[bytes, bytes | None] = {}
    try:
        gather_commit_operations(data, changes, POSITION)
    except LogFileCorrupt:
        assert not isinstance(decoded, CommitRecord)
    else:
        if record_type(data) == RECORD_COMMIT:
            assert isinstance(decoded, CommitRecord)
        if isinstance(decoded, CommitRecord):
            expected: dict[bytes, bytes | None] = {}
            apply(decoded.operations, expected)
            assert changes == expected


@settings(max_examples=300)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_log_file_corrupt(data: bytes) -> None:
    check_only_corrupt(data)


@settings(max_examples=300)
@given(kind=st.integers(1, 6), rest=st.binary(max_size=120))
def test_random_bytes_with_valid_type_only_raise_log_file_corrupt(kind: int, rest: bytes) -> None:
    check_only_corrupt(bytes([kind]) + rest)


def test_every_truncation_of_valid_records_is_corrupt() -> None:
    for data in sample_records():
        for cut in range(len(data)):
            truncated = data[:cut]
            assert_corrupt(decode_record, truncated, POSITION)
            if record_type(data) == RECORD_COMMIT:
                assert_corrupt(gather_commit_operations, truncated, {}, POSITION)
                if cut < 25:
                    assert_corrupt(decode_commit_header, truncated, POSITION)
            check_only_corrupt(truncated)


def test_every_single_byte_mutation_only_raises_log_file_corrupt() -> None:
    small = [
        encode_commit(3, 77, 5, [(OP_PUT, b"ab", b"xyz"), (OP_DELETE, b"q", None)]),
        encode_create_database(2, 8192, bytes(range(16)), 1, "naive"),
        encode_shutdown(7),
        encode_start(8),
        encode_detach_database(2, bytes(range(16)), 1, "naive"),
        encode_attach_database(2, bytes(range(16)), 1, "db"),
    ]
    for data in small:
        for index in range(len(data)):
            for value in (0x00, 0x01, 0x02, 0x03, 0x04, 0x7F, 0x80, 0xC3, 0xFF):
                mutated = bytearray(data)
                mutated[index] = value
                check_only_corrupt(bytes(mutated))


@settings(max_examples=200)
@given(
    operations=OPERATIONS.filter(lambda ops: len(ops) > 0),
    data=st.data(),
)
def test_mutated_commits_only_raise_log_file_corrupt(operations: list, data) -> None:
    record = encode_commit(1, 2, 3, operations)
    index = data.draw(st.integers(0, len(record) - 1))
    value = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(record)))
    mutated = bytearray(record)
    mutated[index] = value
    check_only_corrupt(bytes(mutated))
    check_only_corrupt(bytes(mutated[:cut]))


@pytest.mark.parametrize("type_byte", [0, RECORD_CREATE_DATABASE, RECORD_SHUTDOWN, 5, 0xFF])
def test_gather_rejects_a_record_that_is_not_a_commit(type_byte: int) -> None:
    data = bytes([type_byte]) + encode_commit(1, 2, 3, [(OP_PUT, b"k", b"v")])[1:]
    assert_corrupt(decode_record, data, POSITION)
    assert_corrupt(decode_commit_header, data, POSITION)
    changes: dict[bytes, bytes | None] = {}
    assert_corrupt(gather_commit_operations, data, changes, POSITION)


# ----------------------------------------------------------------- runs of one shape
#
# `gather_commit_operations` decodes runs of operations of one shape (op, key length, value
# length) with cached structs; these records are made of such runs, broken at random places,
# so that runs start, end and resume at every kind of boundary.

RUN_KEYS = st.sampled_from([b"", b"k", b"key-27-bytes-long-exactly!!", b"\x00" * 28, b"z" * 29])
RUN_VALUES = st.sampled_from([b"", b"v", b"\x81" * 129, b"w" * 129, b"x" * 300])
RUN_OPERATION = st.one_of(
    st.tuples(st.just(OP_PUT), RUN_KEYS, RUN_VALUES),
    st.tuples(st.just(OP_DELETE), RUN_KEYS, st.none()),
)
RUN_OPERATIONS = st.lists(
    st.tuples(RUN_OPERATION, st.integers(1, 40), st.integers(0, 2**16 - 1)), max_size=8
).map(
    # Each (operation, repeat, salt): `repeat` operations of that shape whose keys differ.
    lambda runs: [
        (op, key[:-2] + ((salt + i) % 65536).to_bytes(2, "big") if len(key) >= 2 else key, value)
        for (op, key, value), repeat, salt in runs
        for i in range(repeat)
    ]
)


@settings(max_examples=200)
@given(operations=RUN_OPERATIONS)
def test_gather_runs_agree_with_the_full_decoder(operations: list) -> None:
    data = encode_commit(1, 2, 3, operations)
    record = decode_record(data, POSITION)
    assert isinstance(record, CommitRecord)
    assert record.operations == operations
    expected: dict[bytes, bytes | None] = {}
    apply(record.operations, expected)
    for _ in range(2):  # the second time every shape's structs are cached
        gathered: dict[bytes, bytes | None] = {}
        result = gather_commit_operations(data, gathered, POSITION)
        assert gathered == expected
        assert list(gathered) == list(expected)  # same insertion order: log order
        assert_gathered(result, operations)


@settings(max_examples=200)
@given(operations=RUN_OPERATIONS.filter(lambda ops: len(ops) > 0), data=st.data())
def test_mutated_or_cut_runs_only_raise_log_file_corrupt(operations: list, data) -> None:
    record = encode_commit(1, 2, 3, operations)
    gather_commit_operations(record, {})  # cache the shapes the mutated copies start from
    index = data.draw(st.integers(0, len(record) - 1))
    value = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(record)))
    mutated = bytearray(record)
    mutated[index] = value
    check_only_corrupt(bytes(mutated))
    check_only_corrupt(bytes(mutated[:cut]))
    check_only_corrupt(record[:cut])


def test_a_run_broken_by_one_operation_of_another_shape() -> None:
    # The replay benchmark's pattern: most keys one length, a few one byte longer.
    operations: list = []
    for i in range(300):
        key = b"k" * (27 + (i % 37 == 5)) + i.to_bytes(2, "big")
        operations.append((OP_PUT, key, bytes([i % 256]) * 129))
        if i % 50 == 49:
            operations.append((OP_DELETE, key, None))
    data = encode_commit(1, 2, 3, operations)
    expected: dict[bytes, bytes | None] = {}
    apply(operations, expected)
    for _ in range(2):
        gathered: dict[bytes, bytes | None] = {}
        gather_commit_operations(data, gathered)
        assert gathered == expected
    # A key length changed inside a run: the run ends there and the rest does not parse.
    broken = bytearray(data)
    second = 25 + 3 + 29 + 4 + 129  # the second operation's header
    assert broken[second : second + 3] == bytes([OP_PUT, 29, 0])
    broken[second + 1] = 30
    assert_corrupt(gather_commit_operations, bytes(broken), {}, POSITION)
    check_only_corrupt(bytes(broken))


def test_run_struct_cache_is_bounded() -> None:
    from jetstore.format import logrecords

    for length in range(logrecords._RUNS_LIMIT + 50):
        ops = [(OP_PUT, b"a", b"v" * length), (OP_PUT, b"b", b"v" * length)]
        changes: dict[bytes, bytes | None] = {}
        gather_commit_operations(encode_commit(1, 1, 1, ops), changes)
        assert changes == {b"a": b"v" * length, b"b": b"v" * length}
        assert len(logrecords._RUNS) <= logrecords._RUNS_LIMIT


def test_records_without_runs_take_the_plain_loop_and_make_no_structs() -> None:
    from jetstore.format import logrecords

    logrecords._RUNS.clear()
    # Alternating shapes (a row, then its index entry), then every value length different,
    # then a delete and a put cut short: all past the point where the plain loop takes over.
    operations: list = []
    for i in range(40):
        operations.append((OP_PUT, b"row" + bytes([i]), b"r" * 50))
        operations.append((OP_PUT, b"index" + bytes([i]), b"i" * 9))
    operations += [(OP_PUT, b"var" + bytes([i]), b"x" * i) for i in range(40)]
    operations += [(OP_DELETE, b"row" + bytes([3]), None), (OP_PUT, b"last", b"")]
    data = encode_commit(1, 2, 3, operations)
    expected: dict[bytes, bytes | None] = {}
    apply(operations, expected)
    gathered: dict[bytes, bytes | None] = {}
    result = gather_commit_operations(data, gathered, POSITION)
    assert gathered == expected
    assert_gathered(result, operations)
    assert logrecords._RUNS == {}
    for cut in range(25, len(data), 7):
        assert_corrupt(gather_commit_operations, data[:cut], {}, POSITION)
    bad_op = bytearray(data)
    bad_op[-3 - 4 - 4] = 7  # the last operation's op byte
    assert_corrupt(gather_commit_operations, bytes(bad_op), {}, POSITION)
    check_only_corrupt(bytes(bad_op))
