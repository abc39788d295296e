"""Parser fuzzing by mutation (issue 6, item 6): real files, damaged every way, decode to a
value or a `JetError` subclass, never another exception, never a hang.

The seeds are the bytes of a real instance (built once per module: a database with an index
and long values, several log generations, the checkpoint file, an online backup set) and the
format modules' own encoders. Hypothesis mutates them: bit flips, truncations, splices (a
piece of another seed or of the input itself inserted or pasted over), runs of random bytes,
zeroed or duplicated ranges, appended bytes. Half of the mutated blocks are *resealed*: their
checksum is recomputed after the damage (a buggy writer, or a collision), so the decoders'
field checks behind the CRC are reached too. Decoders:

- database header copies (`decode_db_header`, `choose_db_header`, `peek_page_size`);
- page images (`decode_page`, `verify_page`; `jetstore.pages.btree.decode_node` for the
  node payloads behind the page envelope);
- checkpoint files (`decode_checkpoint_copy`, `read_checkpoint_file`);
- log file headers (`decode_log_header`);
- log frames (`decode_frame`, `find_next_valid_frame`: these return a frame or None and never
  raise; a frame they return lies inside the buffer and ends after it starts, so a reader's
  loop over them always advances);
- log records (`decode_record`, `gather_commit_operations`, `decode_commit_header`,
  `commit_time_us`);
- backup manifests (`manifest.json` bytes through `read_manifest`; resealed ones get their
  `crc32c:` checksum recomputed over the mutated document, so `Manifest.from_dict` sees
  every kind of malformed field).

Hang guard: hypothesis runs without deadlines here (the `jetstore` profile in
`tests/conftest.py`: the machines are shared), so each decoder call runs under a 10-second
`SIGALRM` that turns a hang into a failure naming the decoder. The example counts are modest
in `make test` (about 10 s for the module) and multiplied by 10 in `make soak`
(`JETSTORE_SOAK=1`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jetstore
from jetstore.backup.backupset import MANIFEST_NAME, manifest_checksum, read_manifest
from jetstore.errors import InvalidBackup, JetError
from jetstore.format.checkpoint import (
    CHECKPOINT_COPY_SIZE,
    decode_checkpoint_copy,
    read_checkpoint_file,
)
from jetstore.format.common import PAGE_SIZES, PREFIX_SIZE, FileType, Signature, encode_block
from jetstore.format.dbheader import choose_db_header, decode_db_header, peek_page_size
from jetstore.format.logframe import (
    FRAME_HEADER_SIZE,
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    decode_frame,
    encode_frame,
    find_next_valid_frame,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.logrecords import (
    OP_DELETE,
    OP_PUT,
    commit_time_us,
    decode_commit_header,
    decode_record,
    encode_commit,
    encode_create_database,
    encode_shutdown,
    encode_start,
    gather_commit_operations,
)
from jetstore.format.page import PAGE_HEADER_SIZE, decode_page, verify_page
from jetstore.pages.btree import decode_node

PAGE_SIZE = 4096
EXAMPLES = 1000 * (10 if os.environ.get("JETSTORE_SOAK") else 1)
HANG_SECONDS = 10

T = TypeVar("T")


# ----------------------------------------------------------------- the seeds


class Corpus:
    """Bytes of a real instance and of a backup set of it."""

    def __init__(self, root: str) -> None:
        directory = os.path.join(root, "inst")
        instance = jetstore.open(directory, page_size=PAGE_SIZE, log_file_size=64 * 1024)
        db = instance.database("main", create=True)
        db.create_table(
            "items",
            [("id", "int"), ("grp", "int"), ("note", "text"), ("blob", "bytes")],
            primary_key="id",
            indexes=[("by_grp", ["grp"])],
        )
        for batch in range(8):
            with db.transaction() as txn:
                table = txn.table("items")
                for key in range(batch * 40, (batch + 1) * 40):
                    blob = bytes([key % 251]) * (5000 if key % 37 == 0 else 30)
                    table.insert({"id": key, "grp": key % 7, "note": f"n{key}" * 9, "blob": blob})
            if batch % 3 == 2:
                instance.checkpoint()
        with db.transaction() as txn:
            for key in range(0, 320, 5):
                txn.table("items").delete(key)
        instance.backup(os.path.join(root, "set"), kind="full")
        for key in range(10_000, 10_040):  # small records, and a roll between them
            with db.transaction() as txn:
                txn.table("items").insert({"id": key, "grp": 1, "note": "after", "blob": b"x"})
            if key == 10_020:
                instance.log.roll()
        instance.close()
        data = _read(os.path.join(directory, "main.edb"))
        self.db_headers = [data[:PAGE_SIZE], data[PAGE_SIZE : 2 * PAGE_SIZE]]
        self.pages = [
            (pgno, data[pgno * PAGE_SIZE : (pgno + 1) * PAGE_SIZE])
            for pgno in range(2, len(data) // PAGE_SIZE)
            if any(data[pgno * PAGE_SIZE : (pgno + 1) * PAGE_SIZE])
        ]
        self.checkpoint = _read(os.path.join(directory, "edb.chk"))
        self.logs = [
            _read(os.path.join(directory, name))
            for name in sorted(os.listdir(directory))
            if name.startswith("edb") and name.endswith(".log") and name != "edbtmp.log"
        ]
        self.records = [record for log in self.logs for record in _records(log)]
        self.manifest = _read(os.path.join(root, "set", MANIFEST_NAME))
        assert len(self.pages) > 20 and len(self.logs) >= 2 and len(self.records) > 10


def _read(path: str) -> bytes:
    with open(path, "rb") as source:
        return source.read()


def _records(log: bytes) -> Iterator[bytes]:
    """The reassembled records of one log file."""
    header = decode_log_header(log[:LOG_HEADER_SIZE], path="edb.log")
    offset = header.data_start
    parts: list[bytes] = []
    while True:
        frame = decode_frame(log, offset, header.generation)
        if frame is None:
            return
        offset = frame.next_offset
        if frame.kind == KIND_FULL:
            yield bytes(frame.payload)
        elif frame.kind == KIND_FIRST:
            parts = [bytes(frame.payload)]
        elif frame.kind == KIND_MIDDLE:
            parts.append(bytes(frame.payload))
        else:
            yield b"".join([*parts, bytes(frame.payload)])
            parts = []


_ROOT: list[str] = []


@functools.cache
def corpus() -> Corpus:
    root = tempfile.mkdtemp(prefix="jetstore-fuzz-")
    _ROOT.append(root)
    return Corpus(root)


@pytest.fixture(scope="module", autouse=True)
def _corpus_cleanup() -> Iterator[None]:
    yield
    for root in _ROOT:
        shutil.rmtree(root, ignore_errors=True)
    _ROOT.clear()
    corpus.cache_clear()


# ----------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, others: list[bytes] | None = None) -> bytes:
    """`seed` damaged by one to four mutations."""
    data = bytearray(seed)
    pool = others or [seed]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["flip", "flip", "truncate", "splice", "paste", "random", "zero", "dup", "extend"]
            )
        )
        size = len(data)
        at = draw(st.integers(0, size)) if size else 0
        if kind == "flip" and size:
            bit = draw(st.integers(0, size * 8 - 1))
            data[bit // 8] ^= 1 << (bit % 8)
        elif kind == "truncate":
            data = data[:at]
        elif kind in ("splice", "paste"):
            source = draw(st.sampled_from(pool))
            start = draw(st.integers(0, len(source)))
            piece = source[start : start + draw(st.integers(0, 600))]
            if kind == "splice":
                data[at:at] = piece
            else:
                data[at : at + len(piece)] = piece
        elif kind == "random":
            data[at : at + draw(st.integers(0, 64))] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "zero":
            length = draw(st.integers(1, 512))
            data[at : at + length] = bytes(len(data[at : at + length]))
        elif kind == "dup" and size:
            length = draw(st.integers(1, 256))
            data[at:at] = data[max(0, at - length) : at]
        elif kind == "extend":
            data += draw(st.binary(max_size=128))
    return bytes(data)


def reseal_block(data: bytes, fit: bool = False) -> bytes:
    """A header block (database header, log header, checkpoint copy) with its CRC32C
    recomputed over what its block size field covers (as far as the bytes go); with `fit`,
    the block size field is first set to the length of `data` (a block written whole, of
    the wrong size)."""
    if len(data) < PREFIX_SIZE:
        return data
    if fit:
        data = data[:16] + struct.pack("<I", len(data)) + data[20:]
    (stored_size,) = struct.unpack_from("<I", data, 16)
    end = min(stored_size, len(data))
    crc = google_crc32c.value(data[4:end])
    return struct.pack("<I", crc) + data[4:]


def reseal_page(pgno: int, data: bytes) -> bytes:
    """A page with its CRC32C (seeded with the page number) recomputed."""
    if len(data) < 4:
        return data
    crc = google_crc32c.extend(google_crc32c.value(struct.pack("<Q", pgno)), data[4:])
    return struct.pack("<I", crc) + data[4:]


class DecoderHang(Exception):
    pass


@contextmanager
def hang_guard(what: str) -> Iterator[None]:
    def alarm(_signum: int, _frame: FrameType | None) -> None:
        raise DecoderHang(f"{what} did not return within {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def decodes(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`fn(*args)`: its value, or None for a `JetError`; any other exception (or a hang)
    propagates and fails the example."""
    with hang_guard(getattr(fn, "__name__", repr(fn))):
        try:
            return fn(*args, **kwargs)
        except JetError:
            return None


fuzz = settings(max_examples=EXAMPLES)


# ----------------------------------------------------------------- database headers and pages


@st.composite
def db_header_bytes(draw: st.DrawFn) -> bytes:
    c = corpus()
    data = draw(mutated(draw(st.sampled_from(c.db_headers)), [*c.db_headers, c.checkpoint]))
    reseal = draw(st.sampled_from(["no", "crc", "fit"]))
    return data if reseal == "no" else reseal_block(data, fit=reseal == "fit")


@fuzz
@given(db_header_bytes(), st.data())
def test_database_header_copies(data: bytes, more: st.DataObject) -> None:
    header = decodes(decode_db_header, data, path="main.edb", copy=1)
    assert header is None or header.page_size == len(data)
    other = more.draw(st.sampled_from([*corpus().db_headers, data[::-1], b""]))
    decodes(choose_db_header, data, other, path="main.edb")
    decodes(choose_db_header, other, data, path="main.edb")
    size = peek_page_size(data)
    assert size is None or size in PAGE_SIZES


def test_database_header_block_shorter_than_its_fields() -> None:
    """Found by the fuzzer: a header block whose checksum verifies but which is too short to
    hold the header fields raised `struct.error` (now `DatabaseCorrupted`)."""
    for size in (PREFIX_SIZE + 1, PREFIX_SIZE + 40, 300):
        block = encode_block(FileType.DATABASE, b"\x01" * (size - PREFIX_SIZE), size)
        with pytest.raises(JetError, match="too short"):
            decode_db_header(block, path="main.edb")
        with pytest.raises(JetError):
            choose_db_header(block, block, path="main.edb")


@st.composite
def page_bytes(draw: st.DrawFn) -> tuple[int, bytes]:
    c = corpus()
    pgno, seed = draw(st.sampled_from(c.pages))
    data = draw(mutated(seed, [p for _, p in c.pages[:40]]))
    if draw(st.booleans()):
        data = reseal_page(pgno, data)
    return pgno, data


@fuzz
@given(page_bytes())
def test_page_images(page: tuple[int, bytes]) -> None:
    pgno, data = page
    decoded = decodes(decode_page, pgno, data, path="main.edb", page_size=PAGE_SIZE)
    if decoded is not None:
        assert len(decoded.payload) <= PAGE_SIZE - PAGE_HEADER_SIZE
    decodes(verify_page, pgno, data, path="main.edb")
    decodes(decode_page, pgno + 1, data)
    node = decodes(decode_node, pgno, data, path="main.edb", page_size=PAGE_SIZE)
    if node is not None:
        assert node.pgno == pgno


# ----------------------------------------------------------------- checkpoint file


@st.composite
def checkpoint_bytes(draw: st.DrawFn) -> bytes:
    c = corpus()
    data = bytearray(draw(mutated(c.checkpoint, [c.checkpoint, *c.db_headers])))
    if draw(st.booleans()):
        for copy in (0, 1):
            start = copy * CHECKPOINT_COPY_SIZE
            block = reseal_block(
                bytes(data[start : start + CHECKPOINT_COPY_SIZE]), fit=draw(st.booleans())
            )
            data[start : start + len(block)] = block
    return bytes(data)


@fuzz
@given(checkpoint_bytes())
def test_checkpoint_files(data: bytes) -> None:
    decodes(read_checkpoint_file, data, path="edb.chk")
    for copy in (0, 1):
        block = data[copy * CHECKPOINT_COPY_SIZE : (copy + 1) * CHECKPOINT_COPY_SIZE]
        decodes(decode_checkpoint_copy, block, path="edb.chk", copy=copy)


# ----------------------------------------------------------------- logs


@st.composite
def log_header_bytes(draw: st.DrawFn) -> bytes:
    c = corpus()
    heads = [log[:LOG_HEADER_SIZE] for log in c.logs]
    data = draw(mutated(draw(st.sampled_from(heads)), [*heads, c.checkpoint]))
    reseal = draw(st.sampled_from(["no", "crc", "fit"]))
    return data if reseal == "no" else reseal_block(data, fit=reseal == "fit")


@fuzz
@given(log_header_bytes())
def test_log_file_headers(data: bytes) -> None:
    header = decodes(decode_log_header, data, path="edb.log")
    assert header is None or header.generation > 0


@st.composite
def log_file_bytes(draw: st.DrawFn) -> tuple[int, bytes]:
    """A log file with damage in its frame area (and the generation to read it as); some
    frames are resealed after the damage so that damaged payloads decode as frames."""
    c = corpus()
    log = draw(st.sampled_from(c.logs))
    generation = decode_log_header(log[:LOG_HEADER_SIZE], path="edb.log").generation
    body = draw(mutated(log[LOG_HEADER_SIZE : LOG_HEADER_SIZE + 16384], c.logs))
    data = log[:LOG_HEADER_SIZE] + body
    if draw(st.booleans()):
        frames = []
        offset = LOG_HEADER_SIZE
        while offset + FRAME_HEADER_SIZE <= len(data) and len(frames) < 64:
            (length_kind,) = struct.unpack_from("<I", data, offset + 12)
            length = length_kind & ((1 << 30) - 1)
            if offset + FRAME_HEADER_SIZE + length > len(data) or length > 16384:
                break
            frames.append((offset, length_kind, length))
            offset += (FRAME_HEADER_SIZE + length + 7) // 8 * 8
        buffer = bytearray(data)
        for start, length_kind, length in frames:
            payload = bytes(buffer[start + FRAME_HEADER_SIZE : start + FRAME_HEADER_SIZE + length])
            (durable,) = struct.unpack_from("<I", buffer, start + 8)
            frame, _ = encode_frame(generation, start, durable, length_kind >> 30, payload)
            buffer[start : start + FRAME_HEADER_SIZE + length] = frame[: FRAME_HEADER_SIZE + length]
        data = bytes(buffer)
    return generation, data


@fuzz
@given(log_file_bytes(), st.integers(-16, 20000), st.integers(0, 5))
def test_log_frames(log: tuple[int, bytes], start: int, base_pages: int) -> None:
    generation, data = log
    # decode_frame / find_next_valid_frame never raise: a frame or None.
    with hang_guard("decode_frame"):
        offset, frames = LOG_HEADER_SIZE, 0
        while (frame := decode_frame(data, offset, generation)) is not None:
            assert frame.offset == offset and frame.next_offset > offset
            assert frame.offset + FRAME_HEADER_SIZE + len(frame.payload) <= len(data)
            offset, frames = frame.next_offset, frames + 1
            for record in _frame_records(frame.kind, bytes(frame.payload)):
                decodes(decode_record, record)
        later = find_next_valid_frame(data, offset, generation)
        assert later is None or (later.offset > offset and later.offset % 8 == offset % 8)
        decode_frame(data, start, generation)
        decode_frame(data, start, generation ^ 1)
        base = base_pages * 512
        decode_frame(data[base:], start, generation, base)
        find_next_valid_frame(data[base:], max(start, base), generation, base)


def _frame_records(kind: int, payload: bytes) -> list[bytes]:
    return [payload] if kind in (KIND_FULL, KIND_LAST) else []


def _commits() -> list[bytes]:
    operations = [
        (OP_PUT, b"\0\0\0\1key", b"value" * 20),
        (OP_DELETE, b"\0\0\0\1gone", None),
        (OP_PUT, b"", b""),
    ]
    return [
        encode_commit(1, 77, 1_700_000_000_000_000, operations),
        encode_commit(2, 1, 0, []),
        encode_create_database(1, PAGE_SIZE, Signature.new().random, 5, "main"),
        encode_create_database(3, 8192, bytes(16), 0, "nàme"),
        encode_shutdown(1),
        encode_start(2),
    ]


@st.composite
def record_bytes(draw: st.DrawFn) -> bytes:
    seeds = [*corpus().records[:200], *_commits()]
    return draw(mutated(draw(st.sampled_from(seeds)), seeds))


@fuzz
@given(record_bytes())
def test_log_records(data: bytes) -> None:
    decodes(decode_record, data)
    changes: dict[bytes, bytes | None] = {}
    gathered = decodes(gather_commit_operations, data, changes)
    assert gathered is None or min(gathered) >= 0
    decodes(decode_commit_header, data)
    decodes(commit_time_us, data)


# ----------------------------------------------------------------- backup manifests


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def manifest_bytes(draw: st.DrawFn) -> bytes:
    """manifest.json damaged as bytes (nested in arrays or objects, too), or as a document
    (a field removed, replaced by any JSON value, a file or image entry changed the same way)
    and resealed with its checksum recomputed, so that the field checks behind the checksum
    are reached."""
    seed = corpus().manifest
    if draw(st.booleans()):
        data = draw(mutated(seed, [seed, b"[" * 600, b'{"a":' * 120]))
        if draw(st.booleans()):  # nested (deeper than the recursion limit, at the top)
            depth = draw(st.integers(1, 3000))
            opener = draw(st.sampled_from([b"[", b'{"k":']))
            data = opener * depth + data + (b"]" if opener == b"[" else b"}") * depth
        return data
    document = json.loads(seed)
    document.pop("checksum")
    targets: list[dict[str, Any]] = [document, *document["files"], *document["images"]]
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(targets))
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    text = json.dumps({**document, "checksum": manifest_checksum(document)})
    return text.encode("utf-8")


@settings(max_examples=EXAMPLES // 2)
@given(manifest_bytes())
def test_backup_manifests(data: bytes) -> None:
    directory = tempfile.mkdtemp(prefix="jetstore-fuzz-manifest-")
    try:
        with open(os.path.join(directory, MANIFEST_NAME), "wb") as out:
            out.write(data)
        manifest = decodes(read_manifest, directory)
        assert manifest is None or manifest.path == directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_deeply_nested_manifest_is_invalid_backup() -> None:
    """Found by the fuzzer: JSON nested deeper than the interpreter's recursion limit made
    `read_manifest` raise `RecursionError` (now `InvalidBackup`)."""
    directory = tempfile.mkdtemp(prefix="jetstore-fuzz-manifest-")
    try:
        for data in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000):
            with open(os.path.join(directory, MANIFEST_NAME), "wb") as out:
                out.write(data)
            with pytest.raises(InvalidBackup, match="not valid JSON"):
                read_manifest(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
