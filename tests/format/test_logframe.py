"""Log frames: round trips, the position and generation inside the crc, damage detection,
padding, and the search for the next valid frame."""

from __future__ import annotations

import struct

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.format.logframe import (
    FRAME_ALIGN,
    FRAME_HEADER_SIZE,
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    KIND_NAMES,
    Frame,
    accumulate,
    decode_frame,
    encode_frame,
    encode_frame_parts,
    find_next_valid_frame,
    max_payload_for,
    padded_size,
)

KINDS = [KIND_FULL, KIND_FIRST, KIND_MIDDLE, KIND_LAST]
U32 = st.integers(0, 2**32 - 1)
GENERATION = st.integers(1, 2**32 - 1)
ALIGNED_OFFSET = st.integers(0, (2**32 - 1) // FRAME_ALIGN - 1000).map(lambda n: n * FRAME_ALIGN)


def test_constants() -> None:
    assert FRAME_HEADER_SIZE == 16
    assert FRAME_ALIGN == 8
    assert (KIND_FULL, KIND_FIRST, KIND_MIDDLE, KIND_LAST) == (0, 1, 2, 3)
    assert KIND_NAMES == ("FULL", "FIRST", "MIDDLE", "LAST")


def test_layout_matches_the_documented_format() -> None:
    payload = b"hello"
    frame, crc = encode_frame(7, 4096, 1234, KIND_LAST, payload)
    assert len(frame) == 24
    stored_crc, gen, durable, length_kind = struct.unpack_from("<IIII", frame)
    assert stored_crc == crc
    assert gen == 7
    assert durable == 1234
    assert length_kind == len(payload) | (KIND_LAST << 30)
    assert frame[16:21] == payload
    assert frame[21:] == bytes(3)
    expected = google_crc32c.value(struct.pack("<II", 7, 4096) + frame[4:21])
    assert crc == expected


@settings(max_examples=200)
@given(
    generation=GENERATION,
    offset=ALIGNED_OFFSET,
    durable=U32,
    kind=st.sampled_from(KINDS),
    payload=st.binary(min_size=0, max_size=5000),
)
def test_round_trip(generation: int, offset: int, durable: int, kind: int, payload: bytes) -> None:
    frame, crc = encode_frame(generation, offset, durable, kind, payload)
    assert len(frame) == padded_size(len(payload))
    assert len(frame) % FRAME_ALIGN == 0
    assert frame[FRAME_HEADER_SIZE + len(payload) :] == bytes(len(frame) - 16 - len(payload))
    header, padding, crc2 = encode_frame_parts(generation, offset, durable, kind, payload)
    assert header + payload + padding == frame
    assert crc2 == crc
    assert len(header) == FRAME_HEADER_SIZE

    decoded = decode_frame(frame, offset, generation, base=offset)
    assert decoded == Frame(offset, kind, durable, payload, crc, offset + len(frame))

    # Inside a larger buffer with some other base.
    prefix = bytes(24)
    buf = prefix + frame + b"\xff" * 8
    base = offset - len(prefix)
    if base >= 0:
        assert decode_frame(buf, offset, generation, base=base) == decoded

    # The position and the generation are inside the crc.
    assert decode_frame(frame, offset + FRAME_ALIGN, generation, base=offset + FRAME_ALIGN) is None
    if offset >= FRAME_ALIGN:
        moved = offset - FRAME_ALIGN
        assert decode_frame(frame, moved, generation, base=moved) is None
    other_generation = generation + 1 if generation < 2**32 - 1 else generation - 1
    assert decode_frame(frame, offset, other_generation, base=offset) is None
    # ...even when the stored generation field is rewritten to match the other generation.
    forged = frame[:4] + struct.pack("<I", other_generation) + frame[8:]
    assert decode_frame(forged, offset, other_generation, base=offset) is None


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 15, 16, 17, 4095, 4096, 4097, 5000])
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_sizes(size: int, kind: int) -> None:
    payload = bytes((i * 31 + 7) & 0xFF for i in range(size))
    frame, crc = encode_frame(3, 4096, 100, kind, payload)
    frame_obj = decode_frame(frame, 4096, 3, base=4096)
    assert frame_obj is not None
    assert (frame_obj.kind, frame_obj.payload, frame_obj.crc) == (kind, payload, crc)
    assert frame_obj.next_offset == 4096 + len(frame)


def test_stale_frame_copied_elsewhere_is_rejected() -> None:
    frame, _ = encode_frame(5, 4096, 0, KIND_FULL, b"committed data")
    # The same bytes found at another offset of the same generation's file.
    area = bytes(64) + frame
    assert decode_frame(area, 4096 + 64, 5, base=4096) is None
    assert decode_frame(area[64:], 4096, 5, base=4096) is not None


def test_every_single_bit_flip_is_detected() -> None:
    payload = b"small frame!"  # 12 bytes: 28 used, 4 padding
    frame, _ = encode_frame(9, 8192, 4096, KIND_FIRST, payload)
    covered = FRAME_HEADER_SIZE + len(payload)
    original = decode_frame(frame, 8192, 9, base=8192)
    assert original is not None
    for byte in range(len(frame)):
        for bit in range(8):
            damaged = bytearray(frame)
            damaged[byte] ^= 1 << bit
            result = decode_frame(bytes(damaged), 8192, 9, base=8192)
            if byte < covered:
                assert result is None, (byte, bit)
            else:
                # padding is not part of the frame: never a *different* valid frame
                assert result is None or result == original, (byte, bit)


def test_truncated_frame_is_not_valid() -> None:
    frame, _ = encode_frame(2, 4096, 0, KIND_FULL, b"x" * 40)
    for cut in range(FRAME_HEADER_SIZE + 40):
        assert decode_frame(frame[:cut], 4096, 2, base=4096) is None
    assert decode_frame(frame[: FRAME_HEADER_SIZE + 40], 4096, 2, base=4096) is not None


def test_decode_outside_the_buffer_is_none() -> None:
    frame, _ = encode_frame(2, 4096, 0, KIND_FULL, b"abc")
    assert decode_frame(frame, 4000, 2, base=4096) is None  # before the buffer
    assert decode_frame(frame, 4096 + len(frame), 2, base=4096) is None  # after it
    assert decode_frame(b"", 0, 2) is None
    assert decode_frame(bytes(4096), 0, 2) is None


def test_zeros_are_not_a_frame_of_generation_zero_either() -> None:
    # an all-zero header has crc 0, which is not the crc of its fields
    assert decode_frame(bytes(64), 0, 0) is None
    assert decode_frame(bytes(64), 8, 0) is None


@pytest.mark.parametrize("payload_length", range(0, 40))
def test_padded_size(payload_length: int) -> None:
    size = padded_size(payload_length)
    assert size % FRAME_ALIGN == 0
    assert FRAME_HEADER_SIZE + payload_length <= size < FRAME_HEADER_SIZE + payload_length + 8
    frame, _ = encode_frame(1, 0, 0, KIND_FULL, bytes(payload_length))
    assert len(frame) == size


@given(space=st.integers(0, 1 << 24))
def test_max_payload_for_is_the_largest_that_fits(space: int) -> None:
    best = max_payload_for(space)
    if space >= padded_size(0):
        assert best >= 0
        assert padded_size(best) <= space < padded_size(best + 1)
    else:
        assert best < 0


def test_max_payload_for_examples() -> None:
    assert max_payload_for(16) == 0
    assert max_payload_for(23) == 0
    assert max_payload_for(24) == 8
    assert max_payload_for(4096) == 4080
    assert max_payload_for(8) <= 0
    assert max_payload_for(0) <= 0


def test_accumulate_is_order_sensitive_and_chains() -> None:
    crcs = [encode_frame(1, i * 32, 0, KIND_FULL, bytes([i]) * 10)[1] for i in range(3)]
    forward = 0
    for crc in crcs:
        forward = accumulate(forward, crc)
    backward = 0
    for crc in reversed(crcs):
        backward = accumulate(backward, crc)
    assert forward != backward
    assert accumulate(0, crcs[0]) != accumulate(0, crcs[1])
    assert accumulate(accumulate(0, crcs[0]), crcs[1]) != accumulate(
        accumulate(0, crcs[1]), crcs[0]
    )
    # deterministic and equal to a crc32c of the little-endian frame crcs in order
    expected = google_crc32c.value(b"".join(c.to_bytes(4, "little") for c in crcs))
    assert forward == expected
    assert accumulate(0, crcs[0]) != accumulate(1, crcs[0])


# ----------------------------------------------------------------- find_next_valid_frame


def build_area(parts: list[bytes]) -> bytes:
    for part in parts:
        assert len(part) % FRAME_ALIGN == 0
    return b"".join(parts)


def test_find_next_after_zeros_and_garbage() -> None:
    base = 4096
    garbage = bytes((i * 37 + 11) & 0xFF for i in range(96))
    zeros = bytes(4000)
    target_offset = base + len(garbage) + len(zeros)
    frame, _ = encode_frame(6, target_offset, 4096, KIND_FULL, b"after the damage")
    area = garbage + zeros + frame
    found = find_next_valid_frame(area, base, 6, base=base)
    assert found is not None
    assert found.offset == target_offset
    assert found.payload == b"after the damage"
    assert found.durable_before == 4096
    # Searching from just before the frame still finds it; from the frame itself it does not.
    assert find_next_valid_frame(area, target_offset - 8, 6, base=base) == found
    assert find_next_valid_frame(area, target_offset, 6, base=base) is None


def test_find_next_skips_frames_of_other_generations() -> None:
    base = 4096
    parts: list[bytes] = []
    offset = base
    for i in range(20):
        old, _ = encode_frame(5, offset, 0, KIND_FULL, b"old generation %d" % i)
        parts.append(old)
        offset += len(old)
    target_offset = offset
    new, _ = encode_frame(6, target_offset, 0, KIND_LAST, b"current")
    area = b"".join(parts) + new
    found = find_next_valid_frame(area, base, 6, base=base)
    assert found is not None and found.offset == target_offset and found.kind == KIND_LAST
    # and generation 5's frames are found when asked for generation 5
    five = find_next_valid_frame(area, base, 5, base=base)
    assert five is not None and five.offset > base


def test_find_next_skips_stale_frame_of_same_generation_at_wrong_position() -> None:
    base = 0
    stale, _ = encode_frame(6, 800, 0, KIND_FULL, b"stale copy")  # written for offset 800
    real_offset = 8 + len(stale)
    real, _ = encode_frame(6, real_offset, 0, KIND_FULL, b"real")
    area = bytes(8) + stale + real
    found = find_next_valid_frame(area, 0, 6, base=base)
    assert found is not None and found.offset == real_offset


def test_find_next_ignores_unaligned_generation_bytes() -> None:
    base = 0
    # generation bytes at an unaligned place, then a real frame
    noise = bytearray(64)
    noise[13:17] = (6).to_bytes(4, "little")
    noise[30:34] = (6).to_bytes(4, "little")
    frame, _ = encode_frame(6, 64, 0, KIND_FULL, b"aligned")
    found = find_next_valid_frame(bytes(noise) + frame, 0, 6, base=base)
    assert found is not None and found.offset == 64


def test_find_next_returns_none_without_a_valid_frame() -> None:
    assert find_next_valid_frame(bytes(8192), 0, 6) is None
    assert find_next_valid_frame(b"", 0, 6) is None
    garbage = bytes((i * 37 + 11) & 0xFF for i in range(8192))
    assert find_next_valid_frame(garbage, 0, 6) is None
    frames = b"".join(encode_frame(5, i * 32, 0, KIND_FULL, bytes(16))[0] for i in range(100))
    assert find_next_valid_frame(frames, 0, 6) is None
    # A damaged frame of the right generation is not valid either.
    frame, _ = encode_frame(6, 16, 0, KIND_FULL, b"damaged payload!")
    damaged = bytearray(bytes(16) + frame)
    damaged[40] ^= 0x01
    assert find_next_valid_frame(bytes(damaged), 0, 6) is None


@settings(max_examples=150)
@given(
    base=st.integers(0, 8000),
    gap_blocks=st.integers(1, 200),
    junk=st.binary(min_size=0, max_size=600),
    generation=GENERATION,
    payload=st.binary(max_size=200),
)
def test_find_next_property(
    base: int, gap_blocks: int, junk: bytes, generation: int, payload: bytes
) -> None:
    """`data` starts at any file offset `base`; frames are aligned in the file, not in data."""
    start = base - base % FRAME_ALIGN  # the aligned offset the search starts after
    target = start + gap_blocks * FRAME_ALIGN
    gap = target - base
    filler = (junk * (gap // max(len(junk), 1) + 1))[:gap] if junk else bytes(gap)
    frame, _ = encode_frame(generation, target, 0, KIND_MIDDLE, payload)
    area = filler + frame
    assert decode_frame(area, target, generation, base=base) is not None
    found = find_next_valid_frame(area, start, generation, base=base)
    assert found is not None
    # Junk could hold a valid frame only by a crc collision; the first one found is ours.
    assert found.offset == target
    assert found.payload == payload
    assert found.next_offset == target + len(frame)
    assert find_next_valid_frame(area, target, generation, base=base) is None
