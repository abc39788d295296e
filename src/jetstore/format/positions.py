"""`LogPosition`: a point in the transaction log stream, totally ordered.

A position is (generation, offset): the generation number of a log file and a byte offset
inside it. Positions compare first by generation, then by offset, so "earlier in the log"
is plain `<`. ESE calls this an LGPOS. `LogPosition.MIN` is below every real position.
"""

from __future__ import annotations

import struct
from typing import ClassVar, NamedTuple

_PACKED = struct.Struct("<II")


class _Position(NamedTuple):
    generation: int
    offset: int


class LogPosition(_Position):
    """A position in the log: `generation` (log file number) and `offset` (byte in that file)."""

    __slots__ = ()

    MIN: ClassVar[LogPosition]
    SIZE: ClassVar[int] = _PACKED.size

    def pack(self) -> bytes:
        return _PACKED.pack(self.generation, self.offset)

    @classmethod
    def unpack_from(cls, data: bytes | memoryview, offset: int = 0) -> LogPosition:
        generation, log_offset = _PACKED.unpack_from(data, offset)
        return cls(generation, log_offset)

    def __str__(self) -> str:
        return f"{self.generation:08X}:{self.offset:08X}"


LogPosition.MIN = LogPosition(0, 0)
