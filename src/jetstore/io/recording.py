"""Record a workload's file operations; build the file-system states a power loss could leave.

`Recorder` is an `IOHook` (see `jetstore.io.files`): it keeps every operation the engine issues
(with a copy of the bytes of each write) under a monotonically increasing index, and may be
chained in front of another hook. `CrashSimulator` replays a recording on top of a pristine copy
of the starting directory (usually empty) and writes into a fresh directory the state the disk
could hold after a power loss at any point of the recording: SQLite's crash VFS (`src/test6.c`),
RocksDB's `FaultInjectionTestFS` and ALICE's persistence model, reduced to what the engine's
durability argument needs. `audit_entry_syncs` checks a recording for entry changes of relied-on
files that no directory fsync made durable before the next acknowledgement (ALICE-style).

Terms:
- A *crash point* (or prefix) `p`, 0 <= p <= len(ops), is the moment after the operations with
  index < p were issued and before operation p; `p = len(ops)` is the end of the recording.
- A *sync point* is an operation `fsync`, `fdatasync` or `fsync_dir`. `crash_points()` gives,
  for every sync point `i`, the prefix `i` (just before the sync: the most unsynced data) and
  `i + 1` (just after it), plus the end of the recording.
- A commit acknowledged when `len(recorder) == a` must be present in every state of a crash
  point `p >= a`: the operations it waited for all have an index below `a`.

What is modelled:
- Files are inodes; a directory maps names to inodes. Renames move inodes, so a write through a
  path reaches the inode that path names at that moment of the recording.
- Per inode: the *durable* content (as of its last `fsync`/`fdatasync`; both sync the data and
  the size) and the *unsynced* operations since then, in order: writes and truncates. A size
  change (a truncate or a write past the end) follows the same durability as a write.
- Per directory: the *durable* entries (as of its last `fsync_dir`) and the *unsynced* entry
  changes since then, in order: create, rename (within the directory), unlink. A rename across
  directories is an unlink in the source directory plus a create in the target directory, each
  durable with its own directory. Syncing a file does not make its directory entry durable.
- Unsynced data, one choice per state (`DataVariant`): NONE (none persisted), ALL (all, in
  order), SUBSET (each unsynced operation persisted with probability 1/2, seeded, applied per
  inode in a random order: a page written back, re-dirtied and not written again), TORN (every
  unsynced operation persisted except the last unsynced write of the whole state, of which a
  sector-aligned prefix persisted and each later 512-byte sector piece holds garbage or zeros).
- Unsynced directory entries (`DirVariant`): REVERT (all reverted: a created file is absent, a
  renamed file is back under its old name, an unlinked file is still there with its content),
  APPLY (all applied), SUBSET (each change applied with probability 1/2, seeded, or exactly the
  changes named by `Variant.dir_mask`; changes are applied in order and one that no longer
  applies, such as a rename whose source entry was not persisted, is skipped).
- Inodes are never freed: a file whose unlink reverted comes back with its content.

What is not modelled (limits):
- No reordering across a sync: everything before an `fsync` of a file is durable after it,
  whatever the variant; no lost or misdirected writes of synced data; no media errors.
- Powersafe overwrite (SQLite's PSOW): a torn write damages only the bytes it was writing, never
  the rest of a sector it shares with older data; only one write per state is torn.
- `mkdir` is durable at once; file modes, times, hard links, xattrs and free space are ignored.
- An operation is recorded before it runs (that is when the hook sees it), so one that then
  failed is recorded anyway: the model skips what cannot apply (a rename or unlink of a missing
  name, a create of an existing name); a write or sync that failed counts as done. A write or
  sync through a path naming no file, or an operation outside the root, is an *anomaly*
  (listed in `CrashSimulator.anomalies`), never an exception.
- Threads: operations are ordered as their hooks were called. Two threads racing between the
  hook and the system call may have run in the other order; durability conclusions hold for
  operations ordered by the program (a sync and what was written before it in the same thread).
"""

from __future__ import annotations

import enum
import json
import os
import random
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from jetstore.io.files import IOEvent, IOHook

SYNC_OPS = frozenset({"fsync", "fdatasync", "fsync_dir"})
FILE_SYNC_OPS = frozenset({"fsync", "fdatasync"})
DATA_OPS = frozenset({"write", "truncate"})
ENTRY_OPS = frozenset({"create", "rename", "link", "unlink"})
SECTOR_SIZE = 512

_MAGIC = b"JETSTORE-RECORDING-1\n"
_NO_DATA = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class RecordedOp:
    """One recorded operation. `data` is a private copy of a write's bytes, else None."""

    index: int
    op: str
    path: str
    offset: int = 0
    size: int = 0
    data: bytes | None = None
    target: str = ""
    thread: str = ""

    @property
    def is_sync(self) -> bool:
        return self.op in SYNC_OPS

    def describe(self) -> str:
        name = os.path.basename(self.path)
        if self.op == "write":
            return f"#{self.index} write {name} [{self.offset}, {self.offset + self.size})"
        if self.op == "truncate":
            return f"#{self.index} truncate {name} to {self.size}"
        if self.op in ("rename", "link"):
            return f"#{self.index} {self.op} {name} -> {os.path.basename(self.target)}"
        return f"#{self.index} {self.op} {self.path if self.op == 'fsync_dir' else name}"


class Recorder:
    """An `IOHook` that records every operation, then lets it proceed.

    `chain` is called first: if it raises (an injected fault), the operation does not happen
    and is not recorded. Reads are recorded only with `record_reads=True` (they change nothing).
    Thread-safe: indexes are assigned under a lock, in the order the hooks are called.
    Set `enabled = False` to pause recording (the chained hook is still called).
    """

    def __init__(self, chain: IOHook | None = None, *, record_reads: bool = False) -> None:
        self._chain = chain
        self._record_reads = record_reads
        self._lock = threading.Lock()
        self._ops: list[RecordedOp] = []
        self.enabled = True

    def __call__(self, event: IOEvent) -> None:
        chain = self._chain
        if chain is not None:
            chain(event)
        if not self.enabled or (event.op == "read" and not self._record_reads):
            return
        data = None if event.data is None else bytes(event.data)
        thread = threading.current_thread().name
        with self._lock:
            self._ops.append(
                RecordedOp(
                    len(self._ops),
                    event.op,
                    event.path,
                    event.offset,
                    event.size,
                    data,
                    event.target,
                    thread,
                )
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def mark(self) -> int:
        """The index the next operation will get (= the number recorded so far)."""
        return len(self)

    @property
    def ops(self) -> list[RecordedOp]:
        """A copy of the operations recorded so far, in index order."""
        with self._lock:
            return list(self._ops)

    def sync_points(self) -> list[int]:
        return sync_points(self.ops)


def sync_points(ops: Iterable[RecordedOp]) -> list[int]:
    """Indexes of the sync operations (fsync, fdatasync, fsync_dir)."""
    return [op.index for op in ops if op.op in SYNC_OPS]


def save_recording(ops: Sequence[RecordedOp], path: str) -> None:
    """Write `ops` to `path` (to reproduce a failure later with `load_recording`)."""
    with open(path, "wb") as out:
        out.write(_MAGIC)
        for op in ops:
            meta = json.dumps(
                [op.index, op.op, op.path, op.offset, op.size, op.target, op.thread]
            ).encode("utf-8")
            out.write(struct.pack("<I", len(meta)))
            out.write(meta)
            if op.data is None:
                out.write(struct.pack("<I", _NO_DATA))
            else:
                out.write(struct.pack("<I", len(op.data)))
                out.write(op.data)


def load_recording(path: str) -> list[RecordedOp]:
    with open(path, "rb") as source:
        raw = source.read()
    if not raw.startswith(_MAGIC):
        raise ValueError(f"{path} is not a jetstore recording")
    ops: list[RecordedOp] = []
    pos = len(_MAGIC)
    while pos < len(raw):
        (meta_len,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        index, op, op_path, offset, size, target, thread = json.loads(raw[pos : pos + meta_len])
        pos += meta_len
        (data_len,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        data: bytes | None = None
        if data_len != _NO_DATA:
            data = raw[pos : pos + data_len]
            pos += data_len
        ops.append(RecordedOp(index, op, op_path, offset, size, data, target, thread))
    return ops


# ----------------------------------------------------------------- variants


class DataVariant(enum.Enum):
    """What became of the unsynced writes and truncates."""

    NONE = "none"
    ALL = "all"
    SUBSET = "subset"
    TORN = "torn"


class DirVariant(enum.Enum):
    """What became of the unsynced directory entry changes."""

    REVERT = "revert"
    APPLY = "apply"
    SUBSET = "subset"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way the unsynced state may have reached the disk. `seed` drives every random choice
    (with the crash point); `dir_mask` picks the applied entry changes of DirVariant.SUBSET
    exactly (bit i = the i-th unsynced change in recording order, over all directories).
    """

    data: DataVariant
    dirs: DirVariant
    seed: int = 0
    dir_mask: int | None = None

    def __str__(self) -> str:
        mask = "" if self.dir_mask is None else f"/mask={self.dir_mask:#x}"
        return f"data={self.data.value},dirs={self.dirs.value}{mask},seed={self.seed}"


BASIC_VARIANTS: tuple[Variant, ...] = tuple(
    Variant(data, dirs) for data in DataVariant for dirs in DirVariant
)


@dataclass(slots=True)
class CrashState:
    """What `CrashSimulator.materialise` wrote, for reports."""

    prefix: int
    variant: Variant
    directory: str
    files: dict[str, int] = field(default_factory=dict)  # relative path -> size
    unsynced_data_ops: int = 0
    persisted_data_ops: int = 0
    unsynced_entry_changes: int = 0
    applied_entry_changes: int = 0
    torn: str | None = None  # description of the torn write, if any

    def describe(self) -> str:
        text = (
            f"crash point {self.prefix} [{self.variant}]: data {self.persisted_data_ops}/"
            f"{self.unsynced_data_ops} unsynced ops persisted, entries "
            f"{self.applied_entry_changes}/{self.unsynced_entry_changes} applied"
        )
        return text + (f", torn {self.torn}" if self.torn else "")


# ----------------------------------------------------------------- the model


@dataclass(slots=True)
class _Inode:
    ident: int
    durable: bytearray
    unsynced: list[RecordedOp] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EntryChange:
    """A change of a directory's entries (`directory` relative to the root, "" = the root)."""

    index: int
    directory: str
    kind: str  # "create", "rename" (within `directory`), "unlink"
    name: str
    inode: int
    target: str = ""  # new name of a rename


def _apply_data(buf: bytearray, op: RecordedOp) -> None:
    if op.op == "truncate":
        if op.size < len(buf):
            del buf[op.size :]
        else:
            buf.extend(bytes(op.size - len(buf)))
        return
    assert op.data is not None
    _write_at(buf, op.offset, op.data)


def _write_at(buf: bytearray, offset: int, data: bytes) -> None:
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _apply_entry(entries: dict[str, int], change: EntryChange) -> bool:
    """Apply one entry change to `entries` if it still applies; True if it did."""
    if change.kind == "create":
        entries[change.name] = change.inode
        return True
    if entries.get(change.name) != change.inode:
        return False
    del entries[change.name]
    if change.kind == "rename":
        entries[change.target] = change.inode
    return True


class _Model:
    """The file system after a prefix of the recording: durable and unsynced parts."""

    def __init__(self) -> None:
        self.inodes: dict[int, _Inode] = {}
        self.durable: dict[str, dict[str, int]] = {"": {}}
        self.current: dict[str, dict[str, int]] = {"": {}}
        self.unsynced: dict[str, list[EntryChange]] = {"": []}
        self.history: list[EntryChange] = []  # every entry change so far, in order
        self.position = 0

    def change(self, change: EntryChange) -> None:
        self.unsynced[change.directory].append(change)
        self.history.append(change)

    def new_inode(self, content: bytes = b"") -> _Inode:
        inode = _Inode(len(self.inodes), bytearray(content))
        self.inodes[inode.ident] = inode
        return inode

    def add_directory(self, rel: str) -> None:
        while True:
            if rel not in self.current:
                self.current[rel] = {}
                self.durable[rel] = {}
                self.unsynced[rel] = []
            if not rel:
                return
            rel = os.path.dirname(rel)


class CrashSimulator:
    """Replays a recording over a pristine directory; materialises crash states.

    `root` is the directory the recorded paths live in (as the engine named it); `pristine`
    is a copy of its contents before the first recorded operation (None: it was empty). Calls
    with increasing crash points replay the recording incrementally.
    """

    def __init__(
        self,
        ops: Sequence[RecordedOp],
        root: str,
        pristine: str | None = None,
        *,
        sector_size: int = SECTOR_SIZE,
    ) -> None:
        self.ops = list(ops)
        for position, op in enumerate(self.ops):
            if op.index != position:
                raise ValueError(f"operation {position} has index {op.index}: not a recording")
        self.root = os.path.abspath(root)
        self._real_root = os.path.realpath(root)
        self.pristine = pristine
        self.sector_size = sector_size
        self.anomalies: list[str] = []
        self._anomaly_seen: set[int] = set()
        self._model = self._initial_model()

    # ----------------------------------------------------------------- recording facts

    def sync_points(self) -> list[int]:
        return sync_points(self.ops)

    def crash_points(self) -> list[int]:
        """Just before and just after every sync point, and the end, ascending."""
        points = {len(self.ops)}
        for index in self.sync_points():
            points.add(index)
            points.add(index + 1)
        return sorted(points)

    def relative(self, path: str) -> str | None:
        """`path` relative to the root ("" for the root itself), None if outside it."""
        for base, candidate in (
            (self.root, os.path.abspath(path)),
            (self._real_root, os.path.realpath(path)),
        ):
            rel = os.path.relpath(candidate, base)
            if rel == ".":
                return ""
            if rel != ".." and not rel.startswith(".." + os.sep):
                return rel
        return None

    # ----------------------------------------------------------------- replay

    def _initial_model(self) -> _Model:
        model = _Model()
        if self.pristine is None:
            return model
        for dirpath, dirnames, filenames in os.walk(self.pristine):
            rel_dir = os.path.relpath(dirpath, self.pristine)
            rel_dir = "" if rel_dir == "." else rel_dir
            model.add_directory(rel_dir)
            for name in sorted(dirnames):
                model.add_directory(os.path.join(rel_dir, name))
            for name in sorted(filenames):
                with open(os.path.join(dirpath, name), "rb") as source:
                    inode = model.new_inode(source.read())
                model.current[rel_dir][name] = inode.ident
                model.durable[rel_dir][name] = inode.ident
        return model

    def _anomaly(self, op: RecordedOp, text: str) -> None:
        if op.index not in self._anomaly_seen:
            self._anomaly_seen.add(op.index)
            self.anomalies.append(f"{op.describe()}: {text}")

    def _split(self, op: RecordedOp, path: str) -> tuple[str, str] | None:
        rel = self.relative(path)
        if rel is None or rel == "":
            self._anomaly(op, f"path {path!r} is outside the root {self.root!r}")
            return None
        return os.path.dirname(rel), os.path.basename(rel)

    def _resolve(self, op: RecordedOp) -> _Inode | None:
        where = self._split(op, op.path)
        if where is None:
            return None
        directory, name = where
        ident = self._model.current.get(directory, {}).get(name)
        if ident is None:
            self._anomaly(op, "no such file at this point of the recording")
            return None
        return self._model.inodes[ident]

    def _advance(self, prefix: int) -> _Model:
        if not 0 <= prefix <= len(self.ops):
            raise ValueError(f"crash point {prefix} is outside 0..{len(self.ops)}")
        if prefix < self._model.position:
            self._model = self._initial_model()
        model = self._model
        for op in self.ops[model.position : prefix]:
            self._apply(model, op)
            model.position = op.index + 1
        return model

    def _apply(self, model: _Model, op: RecordedOp) -> None:
        kind = op.op
        if kind in DATA_OPS:
            inode = self._resolve(op)
            if inode is not None:
                inode.unsynced.append(op)
        elif kind in FILE_SYNC_OPS:
            inode = self._resolve(op)
            if inode is not None:
                for pending in inode.unsynced:
                    _apply_data(inode.durable, pending)
                inode.unsynced.clear()
        elif kind == "fsync_dir":
            rel = self.relative(op.path)
            if rel is None or rel not in model.current:
                self._anomaly(op, "no such directory")
                return
            model.durable[rel] = dict(model.current[rel])
            model.unsynced[rel] = []
        elif kind == "mkdir":
            rel = self.relative(op.path)
            if rel is None:
                self._anomaly(op, "directory outside the root")
                return
            model.add_directory(rel)
        elif kind == "create":
            where = self._split(op, op.path)
            if where is None:
                return
            directory, name = where
            entries = model.current.get(directory)
            if entries is None:
                return  # the create failed: no such directory
            if name not in entries:
                inode = model.new_inode()
                entries[name] = inode.ident
                model.change(EntryChange(op.index, directory, "create", name, inode.ident))
        elif kind == "unlink":
            where = self._split(op, op.path)
            if where is None:
                return
            directory, name = where
            ident = model.current.get(directory, {}).pop(name, None)
            if ident is not None:
                model.change(EntryChange(op.index, directory, "unlink", name, ident))
        elif kind == "rename":
            self._rename(model, op)
        elif kind == "link":
            self._link(model, op)
        # "open" and "read" change nothing.

    def _split_pair(self, op: RecordedOp) -> tuple[tuple[str, str], tuple[str, str]] | None:
        """(directory, name) of a rename's or link's source and of its target, or None when
        either lies outside the recorded tree (each such path noted as an anomaly)."""
        source = self._split(op, op.path)
        target = self._split(op, op.target)
        if source is None or target is None:
            return None
        return source, target

    def _link(self, model: _Model, op: RecordedOp) -> None:
        pair = self._split_pair(op)
        if pair is None:
            return
        (src_dir, src_name), (dst_dir, dst_name) = pair
        ident = model.current.get(src_dir, {}).get(src_name)
        entries = model.current.get(dst_dir)
        if ident is None or entries is None or dst_name in entries:
            return  # the link failed
        # A second name of the same inode: a crash state that keeps it gets the same contents.
        entries[dst_name] = ident
        model.change(EntryChange(op.index, dst_dir, "create", dst_name, ident))

    def _rename(self, model: _Model, op: RecordedOp) -> None:
        pair = self._split_pair(op)
        if pair is None:
            return
        (src_dir, src_name), (dst_dir, dst_name) = pair
        ident = model.current.get(src_dir, {}).get(src_name)
        if ident is None or dst_dir not in model.current:
            return  # the rename failed
        if (src_dir, src_name) == (dst_dir, dst_name):
            return
        del model.current[src_dir][src_name]
        model.current[dst_dir][dst_name] = ident
        if src_dir == dst_dir:
            model.change(EntryChange(op.index, src_dir, "rename", src_name, ident, dst_name))
        else:
            model.change(EntryChange(op.index, src_dir, "unlink", src_name, ident))
            model.change(EntryChange(op.index, dst_dir, "create", dst_name, ident))

    # ----------------------------------------------------------------- queries

    def entry_changes(self, prefix: int | None = None) -> list[EntryChange]:
        """Every directory entry change up to `prefix` (default: the whole recording)."""
        model = self._advance(len(self.ops) if prefix is None else prefix)
        return list(model.history)

    def unsynced_entry_changes(self, prefix: int) -> int:
        """How many directory entry changes are unsynced at `prefix` (for dir_mask sweeps)."""
        model = self._advance(prefix)
        return sum(len(changes) for changes in model.unsynced.values())

    def unsynced_data_ops(self, prefix: int) -> int:
        model = self._advance(prefix)
        return sum(len(inode.unsynced) for inode in model.inodes.values())

    # ----------------------------------------------------------------- materialise

    def materialise(self, prefix: int, target: str, variant: Variant) -> CrashState:
        """Write the state after a power loss at crash point `prefix` into `target` (created
        if needed, must be empty) and describe it.
        """
        model = self._advance(prefix)
        rng = random.Random(f"{variant.seed}:{prefix}:{variant}")
        os.makedirs(target, exist_ok=True)
        if os.listdir(target):
            raise ValueError(f"materialise target {target!r} is not empty")
        state = CrashState(prefix, variant, target)
        directories = self._entries(model, variant, rng, state)
        needed = sorted({ident for entries in directories.values() for ident in entries.values()})
        contents = self._contents(model, needed, variant, rng, state)
        for rel_dir in sorted(directories):
            os.makedirs(os.path.join(target, rel_dir), exist_ok=True)
        for rel_dir, entries in sorted(directories.items()):
            for name, ident in sorted(entries.items()):
                rel = os.path.join(rel_dir, name)
                with open(os.path.join(target, rel), "wb") as out:
                    out.write(contents[ident])
                state.files[rel] = len(contents[ident])
        return state

    def _entries(
        self, model: _Model, variant: Variant, rng: random.Random, state: CrashState
    ) -> dict[str, dict[str, int]]:
        changes = sorted(
            (change for pending in model.unsynced.values() for change in pending),
            key=lambda c: (c.index, c.kind != "unlink"),
        )
        state.unsynced_entry_changes = len(changes)
        if variant.dirs is DirVariant.APPLY:
            state.applied_entry_changes = len(changes)
            return {rel: dict(entries) for rel, entries in model.current.items()}
        result = {rel: dict(entries) for rel, entries in model.durable.items()}
        if variant.dirs is DirVariant.REVERT:
            return result
        chosen: set[int] = set()
        for number, _change in enumerate(changes):
            mask = variant.dir_mask
            if (mask is None and rng.random() < 0.5) or (mask is not None and mask >> number & 1):
                chosen.add(number)
        for number, change in enumerate(changes):
            if number in chosen and _apply_entry(result[change.directory], change):
                state.applied_entry_changes += 1
        return result

    def _contents(
        self,
        model: _Model,
        needed: list[int],
        variant: Variant,
        rng: random.Random,
        state: CrashState,
    ) -> dict[int, bytes]:
        inodes = [model.inodes[ident] for ident in needed]
        state.unsynced_data_ops = sum(len(inode.unsynced) for inode in inodes)
        torn: RecordedOp | None = None
        if variant.data is DataVariant.TORN:
            writes = [op for inode in inodes for op in inode.unsynced if op.op == "write"]
            torn = max(writes, key=lambda op: op.index, default=None)
        contents: dict[int, bytes] = {}
        for inode in inodes:
            buf = bytearray(inode.durable)
            if variant.data is DataVariant.NONE:
                chosen: list[RecordedOp] = []
            elif variant.data is DataVariant.SUBSET:
                chosen = [op for op in inode.unsynced if rng.random() < 0.5]
                rng.shuffle(chosen)
            else:
                chosen = list(inode.unsynced)
            for op in chosen:
                if op is torn:
                    state.torn = self._tear(buf, op, rng)
                else:
                    _apply_data(buf, op)
                    state.persisted_data_ops += 1
            contents[inode.ident] = bytes(buf)
        return contents

    def _tear(self, buf: bytearray, op: RecordedOp, rng: random.Random) -> str:
        """Persist a sector-aligned prefix of `op`; each later sector piece: garbage or zeros."""
        assert op.data is not None
        start, end = op.offset, op.offset + len(op.data)
        sector = self.sector_size
        cuts = [start, *range((start // sector + 1) * sector, end, sector), end]
        keep = rng.randrange(len(cuts) - 1)  # pieces kept whole; at least one is damaged
        _write_at(buf, start, op.data[: cuts[keep] - start])
        damage: list[str] = []
        for low, high in zip(cuts[keep:], cuts[keep + 1 :], strict=False):
            garbage = rng.random() < 0.5
            _write_at(buf, low, rng.randbytes(high - low) if garbage else bytes(high - low))
            damage.append("g" if garbage else "0")
        return (
            f"{op.describe()}: {cuts[keep] - start} of {end - start} bytes persisted, then "
            f"{len(damage)} damaged piece(s) {''.join(damage)}"
        )


# ----------------------------------------------------------------- trace audit


@dataclass(frozen=True, slots=True)
class AuditFinding:
    rule: str
    index: int
    message: str


def audit_entry_syncs(
    simulator: CrashSimulator,
    acknowledgements: Sequence[int],
    relied_on: Callable[[str], bool],
) -> list[AuditFinding]:
    """ALICE-style rule: every entry change (create, rename, unlink; from the simulator's
    replay, so opening an existing file is no create) of a file the program relies on
    (`relied_on(name)`; for a rename either name) is followed by an `fsync_dir` of its
    directory before the first acknowledgement after it (`acknowledgements`: recorder marks,
    see `Recorder.mark`), or before the end of the recording when none follows.
    """
    ops = simulator.ops
    acks = sorted(acknowledgements)
    dir_syncs: dict[str, list[int]] = {}
    for op in ops:
        if op.op == "fsync_dir":
            rel = simulator.relative(op.path)
            if rel is not None:
                dir_syncs.setdefault(rel, []).append(op.index)
    findings: list[AuditFinding] = []
    for change in simulator.entry_changes():
        if not (relied_on(change.name) or (change.target and relied_on(change.target))):
            continue
        deadline = next((a for a in acks if a > change.index), len(ops))
        syncs = dir_syncs.get(change.directory, [])
        if any(change.index < s < deadline for s in syncs):
            continue
        findings.append(
            AuditFinding(
                "entry-sync",
                change.index,
                f"{ops[change.index].describe()} ({change.kind} in "
                f"'{change.directory or '.'}') is not followed by an fsync of that directory "
                + (
                    f"before the acknowledgement at mark {deadline}"
                    if deadline < len(ops)
                    else "before the end of the recording"
                ),
            )
        )
    return findings
