"""Which closed log generations may be deleted: the rule that makes the seed failure impossible.

The seed (Exchange KB Q176239): circular logging deleted a log file that the checkpoint file on
disk still named, because another program held the checkpoint file and the engine deleted by
its in-memory checkpoint; after a crash the database would not start (-1811). Here a closed
generation G may be deleted only when all of these hold:

- G < the generation of the **durable** checkpoint file (the last one written and synced; a
  checkpoint that could not be written does not count),
- G < the checkpoint generation in **every** attached database's durable header,
- G < the oldest generation a running backup still needs (when one runs),
- G is at least `margin` (2) generations below the lowest of those,

and deletions go in ascending order and stop at the first failure, so what remains is always a
contiguous run of generations ending at the current log. The function here is pure: the caller
supplies the durable values, so tests can check the rule without any I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DELETION_MARGIN = 2


@dataclass(frozen=True)
class DeletionLimit:
    """The first generation that must be kept, and what set it (for events and diagnosis)."""

    keep_from: int
    reason: str


def deletion_limit(
    *,
    checkpoint_file_generation: int | None,
    header_generations: Iterable[tuple[str, int]],
    backup_generation: int | None = None,
    margin: int = DELETION_MARGIN,
) -> DeletionLimit:
    """The lowest generation that must be kept; everything below it may be deleted.

    `checkpoint_file_generation` is the generation of the durable checkpoint file (None when
    no checkpoint file was ever written durably: then nothing may be deleted).
    `header_generations` are (database name, checkpoint generation of its durable header).
    """
    if checkpoint_file_generation is None:
        return DeletionLimit(0, "no durable checkpoint file yet")
    limit = checkpoint_file_generation
    reason = f"the checkpoint file names generation {checkpoint_file_generation}"
    for name, generation in header_generations:
        if generation < limit:
            limit = generation
            reason = f"database {name!r} requires generation {generation}"
    if backup_generation is not None and backup_generation < limit:
        limit = backup_generation
        reason = f"a running backup needs generation {backup_generation}"
    return DeletionLimit(max(0, limit - margin), reason)


def deletable(present: Iterable[int], limit: DeletionLimit) -> list[int]:
    """The present generations below `limit.keep_from`, ascending (the order they must be
    deleted in, stopping at the first failure)."""
    return sorted(g for g in present if g < limit.keep_from)
