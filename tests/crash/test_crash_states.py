"""Power loss at every sync point of a reference workload (issue 6: G1, G2, G4), and at every
step of log deletion (issue 3).

A reference workload runs in-process with a `Recorder` on its file system. `CrashSimulator`
(`jetstore.io.recording`) then writes, for crash points around every sync point, the states a
power loss could leave (unsynced data dropped, kept, a random subset, the last write torn;
unsynced directory entries reverted, applied, a subset), and each state is opened with
`jetstore.open()` (soft recovery) and checked:

- it opens;
- the recovered content equals the workload's state after some prefix of its transactions,
  and that prefix holds every transaction acknowledged before the crash point and none that
  had not started: every acknowledged commit is present with its exact content and no
  partial transaction is visible;
- the transactions' invariants hold on their own (each group's counter row equals the number
  and the amount sum of the items in the group; a scan by the secondary index returns exactly
  the records of a scan by primary key, per group too);
- recovery run twice gives the same result (crash right after the first recovery, reopen,
  compare; then a clean close);
- a crash *during* recovery loses nothing (`test_crash_during_recovery`): for a sample of
  crash states (the latest one and others; more in `make soak`), the recovery itself runs
  under a recorder, and every sampled crash point of it (all in `make soak`), in every ordered
  variant, materialised over the crash state, recovers to exactly what the uninterrupted
  recovery gives and passes every check above;
- after that clean close, every database file passes `check_integrity`
  (`jetstore.tools.integrity`: tree order and balance, free space accounting, records against
  indexes, long values): any error fails the state, with its crash point and variant. Every
  checked state is checked, in the log-deletion and soak tests too (no sampling: the check
  takes ~7 ms on these small files, ~10 s of `make test` over ~2,200 states on 2 workers);
- before recovery touches the state (issue 3, `required_generation_problems`): every log
  generation from the lowest `generation_min_required` / checkpoint generation of the dirty
  database headers (`jetstore.format.dbheader`, the copy recovery would choose) up to the
  newest log present is present, and so is the generation a valid checkpoint file
  (`jetstore.format.checkpoint`) names: no generation a durable header needs is ever gone.

Directory entry changes are persisted in order in the main tests (none, a prefix, all: what a
file system with an ordered metadata journal, ext4 or xfs, can leave); every other subset, which
POSIX allows without a directory fsync, is explored by
`test_crash_states_unordered_directory_changes`. Known engine failures are kept out of the main
tests and each has a test of its own (both were fixed: see the tests below):
- `test_crash_while_creating_the_database`: the crash points between creating `main.edb` and
  syncing its first header that names the log stream.

Log deletion (issue 3): the reference workload never deletes a log (no circular logging, no
backup), so `test_crash_states_log_deletion` records two variants of it: `circular` (circular
logging, checkpoint depth of three generations: circular deletion, `Instance._delete_old_logs`,
after most checkpoints) and `backup` (three completed full backups streamed with `begin_backup`
to a directory outside the recording; `complete()` truncates the logs,
`Instance.truncate_logs_after_backup`). Every crash point of every deletion is checked: from
the `DELETION_MARGIN` sync points before its first unlink, after each unlink, around its
directory fsync, to the `DELETION_MARGIN` sync points after it, with the ordered and the
unordered directory variants together (a later unlink persisted, an earlier one not). The
soak test explores every crash point of both recordings.
`test_required_generation_check_sees_a_gone_generation` shows the invariant check reports a
generation removed by hand.

`test_trace_audit` runs an ALICE-style audit (G4) over the recording of each workload: directory
fsyncs after relied-on entry changes (rule A), log syncs before page batches (B), the exact WAL
rule (C), and no in-place overwrite of durable data larger than a sector relied on for
atomicity (D: header and checkpoint-file copies only with the other copy durable, pages only
where no durable header reaches, logs never).

Reproducing: a failure prints its crash point, variant and seed, and the recording is saved
with its acknowledgements (and the name of its workload); `JETSTORE_CRASH_RECORDING=<file>
JETSTORE_SEED=<seed> JETSTORE_CRASH_POINTS=<p,...>` re-checks exactly those states on that
recording (run the test of the same workload).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

import jetstore
from jetstore.errors import JetError
from jetstore.format.checkpoint import CHECKPOINT_COPY_SIZE, read_checkpoint_file
from jetstore.format.common import PAGE_SIZES
from jetstore.format.dbheader import (
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    decode_db_header,
    peek_page_size,
)
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    TEMP_LOG,
    generation_log_name,
    parse_database_file_name,
    parse_generation_log_name,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.page import PAGE_HEADER_SIZE
from jetstore.io.files import FileSystem
from jetstore.io.recording import (
    BASIC_VARIANTS,
    SECTOR_SIZE,
    AuditFinding,
    CrashSimulator,
    DataVariant,
    DirVariant,
    RecordedOp,
    Recorder,
    Variant,
    audit_entry_syncs,
    load_recording,
    save_recording,
)
from jetstore.pages.btree import (
    child_ref,
    decode_node,
    iterate,
    page_crc_of,
    ref_crc,
    ref_pgno,
)
from jetstore.tables.catalog import object_prefix
from jetstore.tools.dbfile import OfflineDatabase, decode_catalog
from jetstore.tools.rebuild import write_database_file

from .consistency import integrity_problems

PAGE_SIZE = 4096
LOG_FILE_SIZE = 64 * 1024
OPTIONS: dict[str, Any] = {
    "log_file_size": LOG_FILE_SIZE,
    "checkpoint_depth": 64 * 1024,
    "page_size": PAGE_SIZE,
}
GROUPS = 5
TRANSACTIONS = 320
DEFAULT_SEED = 20261206
# Default run: every crash point of the first HEAD, every point next to a directory sync, and a
# seeded sample of the rest, up to MAX_POINTS points; soak: every point, more variants.
HEAD = 120
MAX_POINTS = 400
WORKERS = 2
# Log deletion tests: crash points of this many sync points before and after each deletion.
DELETION_MARGIN = 2
INVARIANT_CHECKS = 4  # index == primary key, index per group, counters, no rolled-back row


@dataclass(frozen=True)
class Workload:
    """A variant of the reference workload: its instance options, and when it takes full
    backups (after the transactions of these numbers; each backup's `complete()` truncates)."""

    name: str
    options: dict[str, Any]
    transactions: int = TRANSACTIONS
    note_max: int = 600  # notes of the small inserts: 0 to this many characters
    backups: tuple[int, ...] = ()


MAIN = Workload("main", OPTIONS)
# Log deletion (issue 3). `circular`: circular logging (D5b), a small checkpoint depth of three
# generations (plus the explicit checkpoints) and longer notes, so about a dozen rolls and a
# deletion after most checkpoints. The depth is deliberately above the deletion margin (2): the
# previous durable checkpoint then lies in a generation the next deletion removes, so deleting
# ahead of the checkpoint file or the headers being durable leaves crash states missing a
# needed generation (checked by mutating the engine in a scratch run: both are caught).
# `backup`: no circular logging; three completed full backups, each truncating the logs (D10,
# margin 0: down to the backup's own checkpoint generation).
CIRCULAR = Workload(
    "circular",
    {**OPTIONS, "circular_logging": True, "checkpoint_depth": 3 * LOG_FILE_SIZE},
    transactions=560,
    note_max=1500,
)
BACKUP = Workload("backup", OPTIONS, backups=(70, 160, 250))
WORKLOADS = {w.name: w for w in (MAIN, CIRCULAR, BACKUP)}

Canonical = tuple[Any, ...] | None


# ----------------------------------------------------------------- the reference workload


def _text(key: int, length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[(key * 7 + i * 13) % len(alphabet)] for i in range(length))


@dataclass
class Model:
    """The workload's own view of the data: the oracle."""

    items: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # id -> grp, amount, note
    tables: bool = False
    database: bool = False

    def canonical(self) -> Canonical:
        if not self.database:
            return None
        if not self.tables:
            return ((), ())
        counters = []
        for grp in range(GROUPS):
            members = [v for v in self.items.values() if v[0] == grp]
            counters.append((grp, len(members), sum(v[1] for v in members)))
        items = tuple(sorted((k, *v) for k, v in self.items.items()))
        return (items, tuple(counters))


@dataclass
class Recording:
    ops: list[RecordedOp]
    root: str
    states: list[Canonical]  # states[j]: after the first j steps
    acks: list[int]  # acks[j - 1]: recorder mark when step j was acknowledged
    starts: list[int]  # starts[j - 1]: recorder mark when step j began committing
    notes: dict[str, Any]
    options: dict[str, Any] = field(default_factory=lambda: dict(OPTIONS))  # to reopen with

    def acknowledged(self, prefix: int) -> int:
        """Number of steps acknowledged before crash point `prefix`."""
        return sum(1 for a in self.acks if a <= prefix)

    def started(self, prefix: int) -> int:
        return sum(1 for s in self.starts if s < prefix)

    def save(self, path: str) -> None:
        save_recording(self.ops, path)
        with open(path + ".json", "w") as out:
            json.dump(
                {"root": self.root, "acks": self.acks, "starts": self.starts, "notes": self.notes},
                out,
            )


def take_backup(instance: jetstore.Instance, dest: str) -> list[int]:
    """A full backup streamed into `dest` with plain `open()` (outside the recorded file
    system and the instance directory: only the instance's own operations are recorded), then
    `complete()`, which truncates the logs. Returns the generations it deleted."""
    os.makedirs(dest)
    with instance.begin_backup("full") as session:
        for file in session.files():
            with open(os.path.join(dest, file.name), "wb") as out:
                for chunk in session.read(file):
                    out.write(chunk)
        return session.complete().truncated


def run_workload(directory: str, seed: int, workload: Workload = MAIN) -> Recording:
    """The reference workload; returns its recording, oracle states and acknowledgements."""
    rng = random.Random(seed)
    recorder = Recorder()
    model = Model()
    states: list[Canonical] = [model.canonical()]
    acks: list[int] = []
    starts: list[int] = []
    options = workload.options
    instance = jetstore.open(directory, filesystem=FileSystem(hook=recorder), **options)
    truncated: list[list[int]] = []

    def step(commit: Any) -> None:
        starts.append(recorder.mark())
        commit()
        acks.append(recorder.mark())
        states.append(model.canonical())

    def create_database() -> None:
        instance.database("main", create=True)
        model.database = True

    step(create_database)
    db = instance.database("main")

    txn = db.transaction()
    txn.create_table(
        "items",
        [("id", "int"), ("grp", "int"), ("amount", "int"), ("note", "text")],
        primary_key="id",
        indexes=[("by_grp", ["grp"])],
    )
    txn.create_table("counters", [("grp", "int"), ("n", "int"), ("total", "int")], "grp")
    for grp in range(GROUPS):
        txn.table("counters").insert({"grp": grp, "n": 0, "total": 0})
    model.tables = True
    step(txn.commit)

    next_id = 0
    checkpoints = 0
    long_id: int | None = None

    def bump(txn: Any, grp: int, dn: int, damount: int) -> None:
        counters = txn.table("counters")
        row = counters.get(grp)
        counters.update(grp, {"n": row["n"] + dn, "total": row["total"] + damount})

    def insert(txn: Any, note_len: int) -> int:
        nonlocal next_id
        key, next_id = next_id, next_id + 1
        grp, amount, note = key % GROUPS, rng.randrange(1000), _text(key, note_len)
        txn.table("items").insert({"id": key, "grp": grp, "amount": amount, "note": note})
        bump(txn, grp, 1, amount)
        model.items[key] = (grp, amount, note)
        return key

    for number in range(workload.transactions):
        txn = db.transaction()
        items = txn.table("items")
        live = sorted(model.items)
        kind = rng.random()
        if number == 40:
            long_id = insert(txn, 20_000)  # a long value (chunks in the long-value store)
        elif number == 90 and long_id is not None:
            grp, amount, _ = model.items[long_id]
            note = _text(long_id + 1, 21_000)
            items.update(long_id, {"note": note})
            model.items[long_id] = (grp, amount, note)
        elif number == 150:
            for _ in range(450):  # the large transaction: spans a log roll
                insert(txn, 150)
        elif number == 200 and long_id is not None:
            grp, amount, _ = model.items.pop(long_id)
            items.delete(long_id)
            bump(txn, grp, -1, -amount)
            long_id = insert(txn, 20_500)
        elif number % 37 == 5:
            txn.table("items").insert({"id": 10**9, "grp": 0, "amount": 1, "note": "never"})
            txn.rollback()  # never logged: must never appear
            continue
        elif kind < 0.45 or len(live) < 10:
            for _ in range(rng.randint(1, 3)):
                insert(txn, rng.randrange(0, workload.note_max))
        elif kind < 0.65:
            for key in rng.sample(live, 2):
                grp, amount, note = model.items[key]
                new_amount = rng.randrange(1000)
                items.update(key, {"amount": new_amount})
                bump(txn, grp, 0, new_amount - amount)
                model.items[key] = (grp, new_amount, note)
        elif kind < 0.8:
            key = rng.choice(live)  # move to another group: index entries change
            grp, amount, note = model.items[key]
            new_grp = (grp + rng.randint(1, GROUPS - 1)) % GROUPS
            new_note = note[: len(note) // 2]
            items.update(key, {"grp": new_grp, "note": new_note})
            bump(txn, grp, -1, -amount)
            bump(txn, new_grp, 1, amount)
            model.items[key] = (new_grp, amount, new_note)
        else:
            for key in rng.sample(live, rng.randint(1, 2)):
                if key == long_id:
                    continue
                grp, amount, _ = model.items.pop(key)
                items.delete(key)
                bump(txn, grp, -1, -amount)
        step(txn.commit)
        if number % 75 == 60:
            instance.checkpoint()
            checkpoints += 1
        if number in workload.backups:
            dest = os.path.join(os.path.dirname(directory), f"backup-{number}")
            truncated.append(take_backup(instance, dest))
    counters = instance.counters()
    instance.close()  # clean shutdown, recorded too
    notes = {
        "workload": workload.name,
        "seed": seed,
        "steps": len(acks),
        "log_rolls": counters["log_rolls"],
        "checkpoints": counters["checkpoints"],
        "explicit_checkpoints": checkpoints,
        "logs_deleted": counters["logs_deleted"],
        "deletion_batches": len(deletion_batches(recorder.ops)),
    }
    if workload.backups:
        notes["backup_truncated"] = truncated
    return Recording(recorder.ops, directory, states, acks, starts, notes, dict(options))


# ----------------------------------------------------------------- reading a recovered state


def read_state(instance: jetstore.Instance) -> tuple[Canonical, list[str]]:
    """The canonical content of an open instance and the invariant violations found."""
    problems: list[str] = []
    if "main" not in instance.databases():
        return None, problems
    db = instance.database("main")
    names = db.table_names()
    if "items" not in names and "counters" not in names:
        return ((), ()), problems
    if sorted(names) != ["counters", "items"]:
        return (("tables", tuple(names)),), [f"partial schema: tables {names}"]
    with db.transaction() as txn:
        items_table = txn.table("items")
        rows = list(items_table.scan())
        by_index = list(items_table.scan(index="by_grp"))
        counter_rows = list(txn.table("counters").scan())
        per_group = {
            g: list(items_table.scan(index="by_grp", start=(g,), stop=(g + 1,)))
            for g in range(GROUPS)
        }
        txn.rollback()
    items = tuple(sorted((r["id"], r["grp"], r["amount"], r["note"]) for r in rows))
    counters = tuple((r["grp"], r["n"], r["total"]) for r in counter_rows)
    expected_index = sorted(rows, key=lambda r: (r["grp"], r["id"]))
    if by_index != expected_index:
        problems.append(
            f"index scan ({len(by_index)} rows) differs from the primary-key scan ({len(rows)})"
        )
    for grp, members in per_group.items():
        if members != [r for r in expected_index if r["grp"] == grp]:
            problems.append(f"index range of group {grp} differs from the records of group {grp}")
    for group, n, total in counters:
        amounts = [cast(int, r["amount"]) for r in rows if r["grp"] == group]
        if n != len(amounts) or total != sum(amounts):
            problems.append(
                f"partial transaction: counter of group {group} says n={n} total={total}, the "
                f"items say n={len(amounts)} total={sum(amounts)}"
            )
    if any(r["id"] == 10**9 for r in rows):
        problems.append("a rolled-back transaction is visible")
    return (items, counters), problems


def _short(state: Canonical) -> str:
    if state is None:
        return "no database"
    if len(state) == 2:
        return f"{len(state[0])} items"
    return repr(state)[:80]


# ----------------------------------------------------------------- checking crash states


@dataclass
class Outcome:
    states: int = 0  # materialised
    duplicates: int = 0  # identical to a state already checked (same files, same acks)
    checked: int = 0
    checks: int = 0  # individual checks (opens, comparisons, invariants)
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, described
    seconds: float = 0.0

    def merge(self, other: Outcome) -> None:
        self.states += other.states
        self.duplicates += other.duplicates
        self.checked += other.checked
        self.checks += other.checks
        self.failed += other.failed
        self.failures.extend(other.failures)


def _digest(directory: str) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        h.update(name.encode() + b"\0")
        with open(os.path.join(directory, name), "rb") as source:
            h.update(hashlib.sha256(source.read()).digest())
    return h.hexdigest()


def _ordered_mask(sim: CrashSimulator, point: int, seed: int, k: int) -> int:
    """A random prefix of the unsynced entry changes (ordered, as a journaling file system
    persists them), as a `dir_mask`."""
    changes = sim.unsynced_entry_changes(point)
    kept = random.Random(f"{seed}:{point}:{k}").randint(0, changes)
    return (1 << kept) - 1


def ordered_variants(sim: CrashSimulator, point: int, seed: int, soak: bool) -> list[Variant]:
    """Variants with every data choice and ordered directory entry changes (a prefix of them
    persisted; see `unordered_variants` for the rest)."""
    chosen = [
        Variant(DataVariant.NONE, DirVariant.REVERT, seed),
        Variant(DataVariant.ALL, DirVariant.APPLY, seed),
        Variant(DataVariant.SUBSET, DirVariant.SUBSET, seed, _ordered_mask(sim, point, seed, 0)),
        Variant(DataVariant.TORN, DirVariant.APPLY, seed),
    ]
    if soak:
        chosen += [
            Variant(DataVariant.NONE, DirVariant.APPLY, seed),
            Variant(DataVariant.ALL, DirVariant.REVERT, seed),
            Variant(DataVariant.TORN, DirVariant.REVERT, seed),
        ]
        for k in range(1, 4):
            mask = _ordered_mask(sim, point, seed, k)
            chosen.append(Variant(DataVariant.SUBSET, DirVariant.SUBSET, seed + k, mask))
            chosen.append(Variant(DataVariant.TORN, DirVariant.SUBSET, seed + k, mask))
    changes = sim.unsynced_entry_changes(point)
    if 1 < changes <= 6:
        # Every ordered partial persistence of the entry changes, exactly.
        for kept in range(1, changes):
            chosen.append(Variant(DataVariant.ALL, DirVariant.SUBSET, seed, (1 << kept) - 1))
    return chosen


def unordered_variants(sim: CrashSimulator, point: int, seed: int, soak: bool) -> list[Variant]:
    """Directory entry changes persisted in any subset (POSIX promises no order without a
    directory fsync; ALICE's model): every subset that is not a prefix, then random ones."""
    changes = sim.unsynced_entry_changes(point)
    chosen = []
    if changes <= 6:
        prefixes = {(1 << kept) - 1 for kept in range(changes + 1)}
        for mask in range(1 << changes):
            if mask not in prefixes:
                chosen.append(Variant(DataVariant.ALL, DirVariant.SUBSET, seed, mask))
    for k in range(3 if soak else 1):
        chosen.append(Variant(DataVariant.SUBSET, DirVariant.SUBSET, seed + k))
    return chosen


def basic_variants(sim: CrashSimulator, point: int, seed: int, soak: bool) -> list[Variant]:
    """Every data variant with every directory variant (random subsets included)."""
    return [Variant(v.data, v.dirs, seed) for v in BASIC_VARIANTS]


VariantChooser = Callable[[CrashSimulator, int, int, bool], list[Variant]]


def _present_generations(directory: str, names: list[str]) -> set[int]:
    """The log generations present: the closed ones by name, the current one (`edb.log`) by
    its header (if it decodes; `edbtmp.log` is not a generation yet)."""
    present = {g for g in map(parse_generation_log_name, names) if g is not None}
    if CURRENT_LOG in names:
        path = os.path.join(directory, CURRENT_LOG)
        with open(path, "rb") as source:
            data = source.read(LOG_HEADER_SIZE)
        try:
            present.add(decode_log_header(data, path=path).generation)
        except JetError:
            pass
    return present


def _durable_header(path: str) -> DatabaseHeader | None:
    """The database header recovery will use (the valid copy with the higher seq), or None
    when neither copy is valid (the other checks judge such a state)."""
    with open(path, "rb") as source:
        data = source.read(2 * max(PAGE_SIZES))  # both header pages, whatever the page size
    page_size = peek_page_size(data) or PAGE_SIZE
    try:
        header, _ = choose_db_header(data[:page_size], data[page_size : 2 * page_size], path=path)
    except JetError:
        return None
    return header


def required_generation_problems(directory: str) -> tuple[list[str], int]:
    """Issue 3: no generation that a durable header needs is ever gone. Read from the crash
    state before recovery touches it: every generation from the lowest
    `generation_min_required` / checkpoint generation of the dirty database headers up to the
    newest log present is present, and so is the generation of a valid checkpoint file
    (deletion stops at min(checkpoint file, headers) - margin, D5b; backup truncation at
    that minimum, D10). Returns the problems and the number of checks made."""
    names = os.listdir(directory)
    present = _present_generations(directory, names)
    newest = max(present, default=0)
    problems: list[str] = []
    checks = 0
    for name in sorted(names):
        if parse_database_file_name(name) is None:
            continue
        header = _durable_header(os.path.join(directory, name))
        if header is None or header.state is not DatabaseState.DIRTY:
            continue
        checks += 1
        needs = [
            g
            for g in (header.generation_min_required, header.checkpoint_position.generation)
            if g > 0
        ]
        if not needs:
            continue
        low = min(needs)
        missing = [g for g in range(low, max(newest, low) + 1) if g not in present]
        if missing:
            problems.append(
                f"the durable header of {name} (generation_min_required "
                f"{header.generation_min_required}, checkpoint "
                f"{header.checkpoint_position}) needs generations {low}-{max(newest, low)} "
                f"but {_ranges(missing)} {'is' if len(missing) == 1 else 'are'} gone "
                f"(present: {_ranges(sorted(present))})"
            )
    if CHECKPOINT_FILE in names:
        path = os.path.join(directory, CHECKPOINT_FILE)
        with open(path, "rb") as source:
            data = source.read()
        try:
            checkpoint, _ = read_checkpoint_file(data, path=path)
        except JetError:
            checkpoint = None
        if checkpoint is not None:
            checks += 1
            generation = checkpoint.checkpoint_position.generation
            if generation > 0 and generation not in present:
                problems.append(
                    f"the checkpoint file (seq {checkpoint.seq}) names generation "
                    f"{generation}, which is gone (present: {_ranges(sorted(present))})"
                )
    return problems, checks


def _ranges(generations: list[int]) -> str:
    """`[1, 2, 3, 7]` as "1-3, 7"."""
    if not generations:
        return "none"
    parts: list[str] = []
    start = previous = generations[0]
    for g in [*generations[1:], None]:
        if g is not None and g == previous + 1:
            previous = g
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if g is not None:
            start = previous = g
    return ", ".join(parts)


def check_state(
    rec: Recording, directory: str, point: int, expected: Canonical | None = None
) -> tuple[list[str], int]:
    """Open a crash state twice; return what is wrong (empty: all good) and the number of
    checks made. With `expected`, the first recovery must give exactly that content (a state
    left by a crash during recovery recovers to what the interrupted recovery would have)."""
    lo, hi = rec.acknowledged(point), rec.started(point)
    problems, checks = required_generation_problems(directory)  # before recovery writes
    checks += 1
    try:
        instance = jetstore.open(directory, **rec.options)
    except Exception as exc:
        return [*problems, f"does not open: {type(exc).__name__}: {exc}"], checks
    try:
        first, found = read_state(instance)
        problems += found
        checks += INVARIANT_CHECKS
    finally:
        instance.simulate_crash()
    if expected is not None:
        checks += 1
        if first != expected:
            problems.append(
                f"recovered {_short(first)}, but the uninterrupted recovery gives "
                f"{_short(expected)}"
            )
    matches = [j for j, state in enumerate(rec.states) if state == first]
    checks += 2
    if not matches:
        problems.append(
            f"recovered content ({_short(first)}) equals no prefix of the workload "
            f"(acknowledged before the crash: {lo} steps)"
        )
    elif not any(lo <= j <= hi for j in matches):
        problems.append(
            f"recovered the state after step(s) {matches[:5]}, but {lo} step(s) were "
            f"acknowledged and {hi} had started before the crash point"
        )
    checks += 1
    try:
        instance = jetstore.open(directory, **rec.options)
    except Exception as exc:
        return [*problems, f"second recovery does not open: {type(exc).__name__}: {exc}"], checks
    try:
        second, more = read_state(instance)
    finally:
        instance.close()
    checks += 1
    if second != first:
        problems.append(f"second recovery differs: {_short(first)} then {_short(second)}")
    found, integrity_checks = integrity_problems(directory)
    checks += integrity_checks
    return problems + [p for p in more + found if p not in problems], checks


def explore(
    rec: Recording,
    points: list[int],
    seed: int,
    soak: bool,
    scratch: str,
    chooser: VariantChooser,
    max_failures: int = 20,
) -> Outcome:
    outcome = Outcome()
    start = time.monotonic()
    sim = CrashSimulator(rec.ops, rec.root)
    seen: set[tuple[str, int]] = set()
    for point in points:
        for variant in chooser(sim, point, seed, soak):
            target = tempfile.mkdtemp(dir=scratch)
            try:
                state = sim.materialise(point, target, variant)
                outcome.states += 1
                key = (_digest(target), rec.acknowledged(point))
                if key in seen:
                    outcome.duplicates += 1
                    continue
                seen.add(key)
                problems, checks = check_state(rec, target, point)
                outcome.checked += 1
                outcome.checks += checks
            finally:
                shutil.rmtree(target, ignore_errors=True)
            if problems:
                outcome.failed += 1
                if len(outcome.failures) < max_failures:
                    op = rec.ops[point].describe() if point < len(rec.ops) else "end"
                    outcome.failures.append(
                        f"{state.describe()} (next op {op}): " + "; ".join(problems)
                    )
    if sim.anomalies:
        outcome.failed += 1
        outcome.failures.append(f"simulator anomalies: {sim.anomalies[:5]}")
    outcome.seconds = time.monotonic() - start
    return outcome


# The recording reaches the forked workers by inheritance, not by pickling (it holds megabytes).
_SHARED: dict[str, Recording] = {}


def _explore_shard(args: tuple[list[int], int, bool, str, VariantChooser, int]) -> Outcome:
    points, seed, soak, scratch, chooser, max_failures = args
    return explore(_SHARED["recording"], points, seed, soak, scratch, chooser, max_failures)


def database_creation_window(ops: list[RecordedOp]) -> range:
    """Crash points between the creation of the database file and the sync of its first
    header naming the log stream (state DIRTY): see `test_crash_while_creating_the_database`."""
    create = next(
        op.index for op in ops if op.op == "create" and op.path.endswith((".edb", ".edb.creating"))
    )
    stamped = None
    for op in ops[create:]:
        if op.op == "write" and op.path.endswith(".edb") and op.offset == 0 and op.data:
            try:
                header = decode_db_header(op.data, path=op.path)
            except JetError:
                continue
            if not header.log_signature.is_none:
                stamped = op.index
        elif stamped is not None and op.op in ("fsync", "fdatasync") and op.path.endswith(".edb"):
            return range(create + 1, op.index + 1)
    raise AssertionError("the workload never stamps its database header")


def select_points(sim: CrashSimulator, seed: int, soak: bool, exclude: range) -> list[int]:
    points = [p for p in sim.crash_points() if p not in exclude]
    if soak or len(points) <= MAX_POINTS:
        return points
    must = set(points[:HEAD]) | {len(sim.ops)}
    for index in sim.sync_points():
        if sim.ops[index].op == "fsync_dir":
            must.update(p for p in (index, index + 1) if p not in exclude)
    rest = sorted(set(points) - must)
    room = max(0, MAX_POINTS - len(must))
    sample = random.Random(seed).sample(rest, min(room, len(rest)))
    return sorted(must | set(sample))


def deletion_batches(ops: list[RecordedOp]) -> list[tuple[int, int]]:
    """Every log deletion of a recording: (index of its first unlink of a generation file,
    index of the directory fsync that ends it, or of its last unlink if none follows)."""
    batches: list[tuple[int, int]] = []
    first: int | None = None
    last = 0
    for op in ops:
        if op.op == "unlink" and parse_generation_log_name(os.path.basename(op.path)):
            first = op.index if first is None else first
            last = op.index
        elif op.op == "fsync_dir" and first is not None:
            batches.append((first, op.index))
            first = None
    if first is not None:
        batches.append((first, last))
    return batches


def deletion_points(sim: CrashSimulator, margin: int) -> list[int]:
    """Every crash point of each log deletion: from the crash points of the `margin` sync
    points before its first unlink, through every prefix of its unlinks and its directory
    fsync, to the crash points of the `margin` sync points after it."""
    syncs = sim.sync_points()
    points: set[int] = set()
    for first, end in deletion_batches(sim.ops):
        points.update(range(first, end + 2))
        before = [i for i in syncs if i < first][-margin:] if margin else []
        after = [i for i in syncs if i > end][:margin]
        for index in before + after:
            points.update((index, index + 1))
    return sorted(p for p in points if p <= len(sim.ops))


def load_or_run(tmp_path: Path, seed: int, workload: Workload = MAIN) -> Recording:
    saved = os.environ.get("JETSTORE_CRASH_RECORDING")
    if not saved:
        return run_workload(str(tmp_path / "instance"), seed, workload)
    with open(saved + ".json") as source:
        meta = json.load(source)
    # The oracle states come from running the (deterministic) workload logic again.
    workload = WORKLOADS[meta["notes"].get("workload", workload.name)]
    fresh = run_workload(str(tmp_path / "instance"), meta["notes"]["seed"], workload)
    return Recording(
        load_recording(saved),
        meta["root"],
        fresh.states,
        meta["acks"],
        meta["starts"],
        meta["notes"],
        dict(workload.options),
    )


def run_crash_states(
    tmp_path: Path,
    *,
    soak: bool,
    chooser: VariantChooser,
    points_of: Callable[[CrashSimulator, Recording, int], list[int]],
    label: str,
    max_failures: int = 20,
    workload: Workload = MAIN,
) -> Outcome:
    seed = int(os.environ.get("JETSTORE_SEED", str(DEFAULT_SEED)))
    started = time.monotonic()
    rec = load_or_run(tmp_path, seed, workload)
    notes = rec.notes
    assert notes["log_rolls"] >= 4, notes
    assert notes["checkpoints"] >= 3 and notes["explicit_checkpoints"] >= 3, notes
    sim = CrashSimulator(rec.ops, rec.root)
    points = points_of(sim, rec, seed)
    wanted = os.environ.get("JETSTORE_CRASH_POINTS")
    if wanted:
        points = sorted(int(p) for p in wanted.split(","))
    scratch = str(tmp_path / "states")
    os.makedirs(scratch)
    shards = [points[k::WORKERS] for k in range(WORKERS)]
    _SHARED["recording"] = rec
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
            results = list(
                pool.map(
                    _explore_shard,
                    [(shard, seed, soak, scratch, chooser, max_failures) for shard in shards],
                )
            )
    finally:
        _SHARED.clear()
    total = Outcome()
    for result in results:
        total.merge(result)
    total.seconds = time.monotonic() - started
    print(
        f"\n{label}: {len(rec.ops)} ops recorded, {len(sim.sync_points())} sync points, "
        f"{len(sim.crash_points())} crash points, {len(points)} explored; "
        f"{total.states} states materialised, {total.duplicates} duplicates skipped, "
        f"{total.checked} states checked, {total.checks} checks, {total.failed} failure(s); "
        f"workload {notes}; seed {seed}; {total.seconds:.1f} s"
    )
    if total.failures:
        saved = str(tmp_path / "recording.bin")
        rec.save(saved)
        print(
            f"to reproduce: JETSTORE_CRASH_RECORDING={saved} JETSTORE_SEED={seed} "
            "JETSTORE_CRASH_POINTS=<crash point>"
        )
        for failure in total.failures:
            print("FAIL", failure)
    return total


def _main_points(soak: bool) -> Callable[[CrashSimulator, Recording, int], list[int]]:
    def points_of(sim: CrashSimulator, rec: Recording, seed: int) -> list[int]:
        window = database_creation_window(rec.ops)
        print(
            f"\ncrash points {window.start}-{window.stop - 1} (database creation) left to "
            "test_crash_while_creating_the_database (known engine bug)"
        )
        return select_points(sim, seed, soak, window)

    return points_of


def test_crash_states(tmp_path: Path) -> None:
    """G1 + G2: crash points around every sync point (sampled after the first HEAD), every
    data variant, ordered directory entry changes."""
    outcome = run_crash_states(
        tmp_path,
        soak=False,
        chooser=ordered_variants,
        points_of=_main_points(False),
        label="crash states",
    )
    assert outcome.checked > 500
    assert not outcome.failures, outcome.failures[:5]


@pytest.mark.soak
def test_crash_states_soak(tmp_path: Path) -> None:
    outcome = run_crash_states(
        tmp_path,
        soak=True,
        chooser=ordered_variants,
        points_of=_main_points(True),
        label="crash states (soak)",
    )
    assert not outcome.failures, outcome.failures[:5]


#: Crash states of the workload whose recovery is itself crashed (`make soak`: more), and
#: crash points of each recovery explored (all of them in `make soak`).
RECOVERY_STATES = 3
RECOVERY_POINTS = 24


def run_crash_during_recovery(tmp_path: Path, soak: bool) -> Outcome:
    """Crash states of the workload, each recovered under a recorder; then every (sampled)
    crash point of that recovery, materialised over the crash state, must recover to exactly
    what the uninterrupted recovery gives, and pass every check of `check_state`."""
    seed = int(os.environ.get("JETSTORE_SEED", str(DEFAULT_SEED)))
    started = time.monotonic()
    rng = random.Random(seed + 7)
    rec = load_or_run(tmp_path, seed, MAIN)
    sim = CrashSimulator(rec.ops, rec.root)
    window = database_creation_window(rec.ops)
    # Late points leave the most log to replay: recovery then replays, rolls a generation and
    # checkpoints; earlier ones are sampled too.
    candidates = [p for p in sim.crash_points() if p not in window and p > window.stop]
    count = RECOVERY_STATES * (4 if soak else 1)
    late = candidates[-max(1, len(candidates) // 4) :]
    originals = sorted(
        {candidates[-1], *rng.sample(late, min(count // 2, len(late)))}
        | set(rng.sample(candidates, min(count - count // 2 - 1, len(candidates))))
    )
    total = Outcome()
    recovery_ops = 0
    for number, point in enumerate(originals):
        base = tmp_path / f"recovery-{number}"
        state_dir, pristine, reference = base / "state", base / "pristine", base / "reference"
        os.makedirs(base)
        sim.materialise(point, str(state_dir), Variant(DataVariant.ALL, DirVariant.APPLY, seed))
        shutil.copytree(state_dir, pristine)
        shutil.copytree(state_dir, reference)
        instance = jetstore.open(str(reference), **rec.options)
        try:
            expected, _found = read_state(instance)
        finally:
            instance.close()
        recorder = Recorder()
        instance = jetstore.open(
            str(state_dir), filesystem=FileSystem(hook=recorder), **rec.options
        )
        instance.simulate_crash()
        ops = recorder.ops
        recovery_ops += len(ops)
        rsim = CrashSimulator(ops, str(state_dir), str(pristine))
        points = rsim.crash_points()
        if not soak and len(points) > RECOVERY_POINTS:
            points = sorted(rng.sample(points, RECOVERY_POINTS))
        for rpoint in points:
            for variant in ordered_variants(rsim, rpoint, seed, soak):
                target = tempfile.mkdtemp(dir=base)
                try:
                    crash = rsim.materialise(rpoint, target, variant)
                    total.states += 1
                    problems, checks = check_state(rec, target, point, expected)
                    total.checked += 1
                    total.checks += checks
                finally:
                    shutil.rmtree(target, ignore_errors=True)
                if problems:
                    total.failed += 1
                    if len(total.failures) < 20:
                        op = ops[rpoint].describe() if rpoint < len(ops) else "end"
                        total.failures.append(
                            f"workload crash point {point}, recovery {crash.describe()} "
                            f"(next op {op}): " + "; ".join(problems)
                        )
        if rsim.anomalies:
            total.failed += 1
            total.failures.append(f"recovery of point {point}: anomalies {rsim.anomalies[:5]}")
        shutil.rmtree(base, ignore_errors=True)
    total.seconds = time.monotonic() - started
    print(
        f"\ncrash during recovery: {len(originals)} workload crash states {originals}, "
        f"{recovery_ops} recovery ops recorded, {total.states} states materialised, "
        f"{total.checked} checked, {total.checks} checks, {total.failed} failure(s); "
        f"seed {seed}; {total.seconds:.1f} s"
    )
    for failure in total.failures:
        print("FAIL", failure)
    return total


def test_crash_during_recovery(tmp_path: Path) -> None:
    """Issue 6 item 2: a power loss during recovery (replay, the new generation, the recovery
    checkpoint) loses nothing: the next recovery gives what the interrupted one would have."""
    outcome = run_crash_during_recovery(tmp_path, soak=False)
    assert outcome.checked >= RECOVERY_STATES * 20
    assert not outcome.failures, outcome.failures[:5]


@pytest.mark.soak
def test_crash_during_recovery_soak(tmp_path: Path) -> None:
    outcome = run_crash_during_recovery(tmp_path, soak=True)
    assert not outcome.failures, outcome.failures[:5]


def test_crash_while_creating_the_database(tmp_path: Path) -> None:
    def points_of(sim: CrashSimulator, rec: Recording, seed: int) -> list[int]:
        return list(database_creation_window(rec.ops))

    outcome = run_crash_states(
        tmp_path,
        soak=False,
        chooser=basic_variants,
        points_of=points_of,
        label="database creation",
        max_failures=10_000,
    )
    # The file is built as NAME.edb.creating and renamed once its headers are synced; a
    # crash anywhere in between re-creates the database from its log record.
    assert not outcome.failures, outcome.failures[:5]


def test_crash_states_unordered_directory_changes(tmp_path: Path) -> None:
    """Directory entry changes persisted in any subset, at every directory sync point (found
    the roll's two renames relying on order; fixed by a directory fsync between them)."""

    def points_of(sim: CrashSimulator, rec: Recording, seed: int) -> list[int]:
        window = database_creation_window(rec.ops)
        return [
            index
            for index in sim.sync_points()
            if sim.ops[index].op == "fsync_dir" and index not in window
        ]

    outcome = run_crash_states(
        tmp_path,
        soak=False,
        chooser=unordered_variants,
        points_of=points_of,
        label="unordered directory changes",
    )
    assert not outcome.failures, outcome.failures[:5]


# ----------------------------------------------------------------- log deletion (issue 3)


def deletion_variants(sim: CrashSimulator, point: int, seed: int, soak: bool) -> list[Variant]:
    """The ordered variants, and the unordered ones (any subset of the unsynced entry
    changes: an unlink of a later generation persisted and an earlier one not) at once."""
    return ordered_variants(sim, point, seed, soak) + unordered_variants(sim, point, seed, soak)


def _deletion_points(soak: bool) -> Callable[[CrashSimulator, Recording, int], list[int]]:
    def points_of(sim: CrashSimulator, rec: Recording, seed: int) -> list[int]:
        batches = deletion_batches(rec.ops)
        assert len(batches) >= 3 and rec.notes["logs_deleted"] >= 5, rec.notes
        assert all(rec.notes.get("backup_truncated", [[0]])), rec.notes  # every backup deleted
        print(
            f"\nlog deletions (first unlink, directory fsync): {batches}; "
            f"{len(deletion_points(sim, DELETION_MARGIN))} crash points around them"
        )
        if not soak:
            return deletion_points(sim, DELETION_MARGIN)
        window = database_creation_window(rec.ops)
        every = set(sim.crash_points()) | set(deletion_points(sim, DELETION_MARGIN))
        return sorted(p for p in every if p not in window)

    return points_of


@pytest.mark.parametrize("name", ["circular", "backup"])
def test_crash_states_log_deletion(tmp_path: Path, name: str) -> None:
    """Issue 3: power loss at every step of every log deletion: circular deletion after a
    checkpoint (`circular`), truncation by a completed full backup (`backup`). Every crash
    point from the `DELETION_MARGIN` sync points before the first unlink to those after the
    directory fsync (each unlink included), with ordered and unordered directory changes: the
    state recovers with every acknowledged commit and no partial transaction, and no
    generation a durable database header or the checkpoint file needs is gone."""
    workload = WORKLOADS[name]
    outcome = run_crash_states(
        tmp_path,
        soak=False,
        chooser=deletion_variants,
        points_of=_deletion_points(False),
        label=f"log deletion ({name})",
        workload=workload,
    )
    assert outcome.checked > 150, outcome
    assert not outcome.failures, outcome.failures[:5]


@pytest.mark.soak
@pytest.mark.parametrize("name", ["circular", "backup"])
def test_crash_states_log_deletion_soak(tmp_path: Path, name: str) -> None:
    """Every crash point of the log-deletion workloads, more variants."""
    outcome = run_crash_states(
        tmp_path,
        soak=True,
        chooser=deletion_variants,
        points_of=_deletion_points(True),
        label=f"log deletion ({name}, soak)",
        workload=WORKLOADS[name],
    )
    assert not outcome.failures, outcome.failures[:5]


def test_required_generation_check_sees_a_gone_generation(tmp_path: Path) -> None:
    """The issue-3 invariant check itself: silent on an intact crashed instance, and names the
    generation when a log a dirty header needs, or the checkpoint file names, is removed."""
    directory = str(tmp_path / "instance")
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    instance.checkpoint()
    for key in range(3):
        with db.transaction() as txn:
            txn.table("t").insert({"id": key, "v": _text(key, 100)})
        instance.log.roll()
    instance.simulate_crash()
    names = os.listdir(directory)
    present = sorted(_present_generations(directory, names))
    assert len(present) >= 4, names
    problems, checks = required_generation_problems(directory)
    assert problems == [] and checks == 2  # one dirty header, one valid checkpoint file
    needed = present[0]
    os.unlink(os.path.join(directory, generation_log_name(needed)))
    problems, _ = required_generation_problems(directory)
    assert len(problems) == 2, problems
    assert f"needs generations {needed}-{present[-1]} but {needed} is gone" in problems[0]
    assert f"names generation {needed}, which is gone" in problems[1]


def test_integrity_check_of_a_state_sees_an_inconsistent_file(tmp_path: Path) -> None:
    """The integrity step of `check_state` itself: silent on a cleanly closed instance of the
    workload, and reports a database whose record lost its index entry (rewritten offline, so
    every page still verifies: only the logical check can see it)."""
    directory = str(tmp_path / "instance")
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    with db.transaction() as txn:
        for key in range(50):
            txn.table("t").insert({"id": key, "v": _text(key, 300)})
    instance.close()
    assert integrity_problems(directory) == ([], 1)
    path = os.path.join(directory, "main.edb")
    with OfflineDatabase(FileSystem(), path) as offline:
        items = dict(iterate(offline, offline.root()))
        header = offline.header
        catalog = decode_catalog([(k, v) for k, v in items.items() if k[:4] == bytes(4)])
    index_prefix = object_prefix(catalog.tables["t"].index_ids[0])
    del items[next(k for k in sorted(items) if k.startswith(index_prefix))]
    os.unlink(path)
    write_database_file(FileSystem(), path, header, sorted(items.items()))
    problems, checked = integrity_problems(directory)
    assert checked == 1 and len(problems) == 1, problems
    assert "integrity check of main.edb: 1 error(s): error: index: " in problems[0], problems


# ----------------------------------------------------------------- trace audit (G4)


def is_relied_on(name: str) -> bool:
    """Files whose directory entry the engine relies on after creating, renaming or deleting
    them: the log generations and edb.log, the checkpoint file, the databases.

    `edbtmp.log` is excluded: it is prepared ahead and relied on only once renamed to
    `edb.log`, and that rename is audited (a lost `edbtmp.log` entry costs a new preparation).
    """
    if name == TEMP_LOG:
        return False
    if name in (CURRENT_LOG, CHECKPOINT_FILE):
        return True
    return parse_generation_log_name(name) is not None or parse_database_file_name(name) is not None


def _is_log(path: str) -> bool:
    name = os.path.basename(path)
    return name in (CURRENT_LOG, TEMP_LOG) or parse_generation_log_name(name) is not None


def _is_database(path: str) -> bool:
    return parse_database_file_name(os.path.basename(path)) is not None


def _page_batches(ops: list[RecordedOp]) -> list[list[RecordedOp]]:
    """Runs of page writes (offset >= 2 pages) to one database file with no sync of that file
    between them: the pages of one checkpoint."""
    batches: list[list[RecordedOp]] = []
    open_batch: dict[str, list[RecordedOp]] = {}
    for op in ops:
        if not _is_database(op.path):
            continue
        if op.op == "write" and op.offset >= 2 * PAGE_SIZE:
            batch = open_batch.get(op.path)
            if batch is None:
                batch = open_batch[op.path] = []
                batches.append(batch)
            batch.append(op)
        elif op.op in ("fsync", "fdatasync"):
            open_batch.pop(op.path, None)
    return batches


def audit_log_before_pages(ops: list[RecordedOp]) -> list[AuditFinding]:
    """Rule B (the brief's approximation of the WAL rule): every batch of page writes of a
    database file is preceded, since the previous batch of that file, by a sync of a log
    file. Conservative: it cannot tell which log bytes the pages need (rule C does)."""
    findings = []
    previous: dict[str, int] = {}
    log_syncs = [op.index for op in ops if op.op in ("fsync", "fdatasync") and _is_log(op.path)]
    for batch in _page_batches(ops):
        first = batch[0]
        since = previous.get(first.path, -1)
        if not any(since < s < first.index for s in log_syncs):
            findings.append(
                AuditFinding(
                    "log-sync-before-pages",
                    first.index,
                    f"{first.describe()}: no log sync since the previous page batch (#{since})",
                )
            )
        previous[first.path] = batch[-1].index
    return findings


def audit_wal(ops: list[RecordedOp]) -> tuple[list[AuditFinding], int]:
    """Rule C (G4 d, the WAL rule, exact): the header a checkpoint writes after its page batch
    names its checkpoint position P; before the batch's first page write, the log file of
    generation P.generation must have had every frame write below P.offset synced.

    Log files are followed through renames; a file's generation comes from the header written
    at its offset 0; its frame writes are those after that header. Returns the findings and
    the number of batches checked.
    """
    file_of: dict[str, int] = {}  # path -> file id
    generation_of: dict[int, int] = {}
    written: dict[int, int] = {}  # file id -> end of the frame writes so far
    synced: dict[int, int] = {}  # file id -> end of the frame writes synced so far
    durable_at: dict[int, dict[int, int]] = {}  # op index -> generation -> synced end
    next_id = 0
    batches = _page_batches(ops)
    batch_starts = {batch[0].index: batch for batch in batches}
    for op in ops:
        if op.index in batch_starts:
            durable_at[op.index] = {
                generation_of[f]: synced.get(f, 0) for f in generation_of if f in synced
            }
        if not _is_log(op.path) and not (op.op == "rename" and _is_log(op.target)):
            continue
        if op.op == "create" and op.path not in file_of:
            file_of[op.path], next_id = next_id, next_id + 1
        elif op.op == "rename" and op.path in file_of:
            file_of[op.target] = file_of.pop(op.path)
        elif op.op == "unlink":
            file_of.pop(op.path, None)
        elif op.op == "write" and op.path in file_of and op.data is not None:
            ident = file_of[op.path]
            if op.offset == 0 and op.size == 4096:
                try:
                    generation_of[ident] = decode_log_header(op.data, path=op.path).generation
                    written[ident] = synced[ident] = 0
                except JetError:
                    pass
            elif ident in generation_of:
                written[ident] = max(written[ident], op.offset + op.size)
        elif op.op in ("fsync", "fdatasync") and op.path in file_of:
            ident = file_of[op.path]
            if ident in written:
                synced[ident] = written[ident]
    findings = []
    checked = 0
    for batch in batches:
        first = batch[0]
        header_write = next(
            (
                op
                for op in ops[batch[-1].index :]
                if op.op == "write" and op.path == first.path and op.offset == 0 and op.data
            ),
            None,
        )
        if header_write is None or header_write.data is None:
            continue
        position = decode_db_header(header_write.data, path=first.path).checkpoint_position
        durable = durable_at[first.index].get(position.generation)
        if durable is None:
            continue  # that generation was written before the recording began
        checked += 1
        if durable < position.offset:
            findings.append(
                AuditFinding(
                    "wal",
                    first.index,
                    f"{first.describe()}: the checkpoint's pages reach log position {position} "
                    f"but generation {position.generation} was synced only to {durable}",
                )
            )
    return findings, checked


@dataclass
class _FileImage:
    """One file of a recording as the audit follows it: what is durable, what is written."""

    durable: bytearray = field(default_factory=bytearray)
    current: bytearray = field(default_factory=bytearray)
    pending: list[tuple[int, int]] = field(default_factory=list)  # unsynced write ranges
    version: int = 0  # bumped at every sync (the durable content may have changed)


def _write_into(buf: bytearray, offset: int, data: bytes) -> None:
    if len(buf) < offset:
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _durable_tree_pages(image: bytes) -> set[int]:
    """Every page a durable header copy of a database image reaches: tree and free-list
    chain of each valid copy (D12 references, so an image that is not the one named stops
    the walk, as a reader would)."""
    reached: set[int] = set()
    page_size = peek_page_size(image[:4096]) if len(image) >= 4096 else None
    if page_size is None:
        return reached
    for copy in (0, 1):
        try:
            header = decode_db_header(image[copy * page_size : (copy + 1) * page_size], copy=copy)
        except JetError:
            continue
        stack = [child_ref(header.root_pgno, header.root_crc)] if header.root_pgno else []
        while stack:
            ref = stack.pop()
            pgno = ref_pgno(ref)
            page = image[pgno * page_size : (pgno + 1) * page_size]
            reached.add(pgno)
            try:
                node = decode_node(pgno, page, expected_crc=ref_crc(ref))
            except JetError:
                continue
            stack.extend(c for c in node.children if isinstance(c, int))
        pgno, crc = header.freelist_pgno, header.freelist_crc
        while pgno and pgno not in reached:
            reached.add(pgno)
            page = image[pgno * page_size : (pgno + 1) * page_size]
            if len(page) < page_size or page_crc_of(page) != crc:
                break
            link = int.from_bytes(page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + 8], "little")
            pgno, crc = ref_pgno(link), ref_crc(link)
    return reached


def audit_overwrites(ops: list[RecordedOp]) -> tuple[list[AuditFinding], dict[str, int]]:
    """Rule D (G4: no in-place overwrite larger than one sector is relied on for atomicity).

    Every write that overwrites durable non-zero bytes of a relied-on file (more than one
    sector of them) must be one the engine can lose half of:
    - a database or checkpoint-file copy (header copy 0 or 1, checkpoint copy 0 or 1): the
      other copy is durable and has no unsynced write, so a torn copy is survived;
    - a database page: no durable header copy reaches it (a free page, copy-on-write);
    - a log file: never (frames are appended after the durable end; a torn append is the
      torn tail, the acknowledged frames before it are not rewritten).
    Files are followed through renames. Returns the findings and counts by kind.
    """
    files: dict[str, _FileImage] = {}
    reachable: dict[int, tuple[int, set[int]]] = {}  # id(image) -> (version, pages)
    counts: Counter[str] = Counter()
    findings: list[AuditFinding] = []
    for op in ops:
        if op.op == "create":
            files.setdefault(op.path, _FileImage())
        elif op.op == "rename":
            moved = files.pop(op.path, None)
            if moved is not None:
                files[op.target] = moved
        elif op.op == "unlink":
            files.pop(op.path, None)
        elif op.op in ("fsync", "fdatasync"):
            image = files.get(op.path)
            if image is not None:
                image.durable = bytearray(image.current)
                image.pending.clear()
                image.version += 1
        elif op.op == "truncate":
            image = files.get(op.path)
            if image is not None:
                del image.current[op.size :]
                image.pending.append((op.size, 0))
        elif op.op == "write" and op.data is not None:
            image = files.setdefault(op.path, _FileImage())
            old = bytes(image.durable[op.offset : op.offset + op.size])
            overwritten = len(old) - old.count(0)
            name = os.path.basename(op.path)
            if op.size > SECTOR_SIZE and overwritten and (_is_log(op.path) or is_relied_on(name)):
                problem = _overwrite_problem(op, image, reachable)
                counts[problem[0]] += 1
                if problem[1]:
                    findings.append(AuditFinding("overwrite", op.index, problem[1]))
            _write_into(image.current, op.offset, op.data)
            image.pending.append((op.offset, op.size))
    return findings, dict(counts)


def _overwrite_problem(
    op: RecordedOp, image: _FileImage, reachable: dict[int, tuple[int, set[int]]]
) -> tuple[str, str]:
    """(kind of overwrite, what is wrong with it or '')."""
    name = os.path.basename(op.path)
    if _is_log(op.path):
        return "log", f"{op.describe()}: rewrites durable bytes of a log file in place"
    if name == CHECKPOINT_FILE or _is_database(op.path):
        copy_size = CHECKPOINT_COPY_SIZE
        if name != CHECKPOINT_FILE:
            copy_size = peek_page_size(bytes(image.durable[:4096])) or PAGE_SIZE
        copy = op.offset // copy_size
        if copy >= 2:  # a database page
            cached = reachable.get(id(image))
            if cached is None or cached[0] != image.version:
                cached = reachable[id(image)] = (
                    image.version,
                    _durable_tree_pages(bytes(image.durable)),
                )
            first, last = op.offset // copy_size, (op.offset + op.size - 1) // copy_size
            hit = sorted(p for p in range(first, last + 1) if p in cached[1])
            if hit:
                return "page", f"{op.describe()}: overwrites page(s) {hit} a durable header reaches"
            return "page", ""
        kind = "checkpoint copy" if name == CHECKPOINT_FILE else "header copy"
        if op.offset % copy_size or op.size > copy_size:
            return kind, f"{op.describe()}: a {kind} write that is not exactly one copy"
        other = (1 - copy) * copy_size
        other_bytes = bytes(image.durable[other : other + copy_size])
        if other_bytes.count(0) == len(other_bytes):
            return kind, f"{op.describe()}: overwrites {kind} {copy} with no durable other copy"
        if any(start < other + copy_size and start + size > other for start, size in image.pending):
            return kind, (
                f"{op.describe()}: overwrites {kind} {copy} while the other copy has an "
                "unsynced write (both may tear)"
            )
        return kind, ""
    return "other", ""


def _is_generation_unlink(op: RecordedOp) -> bool:
    return op.op == "unlink" and parse_generation_log_name(os.path.basename(op.path)) is not None


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_trace_audit(tmp_path: Path, name: str) -> None:
    """G4 over each reference workload's recording (main; circular logging; online backups
    with log truncation): entry changes of relied-on files are followed by a directory fsync
    before the next acknowledgement (rule A), page batches are preceded by a log sync (rule B)
    and never reach beyond the durable log (rule C), and no overwrite of durable data is
    relied on for atomicity (rule D)."""
    rec = run_workload(str(tmp_path / "instance"), DEFAULT_SEED, WORKLOADS[name])
    sim = CrashSimulator(rec.ops, rec.root)
    entry = audit_entry_syncs(sim, rec.acks, is_relied_on)
    # Deleting a log generation is not relied on for correctness: only generations nothing
    # needs are deleted, and one that comes back after a crash is ignored
    # (`test_crash_states_log_deletion` explores exactly those states). A commit of another
    # thread may be acknowledged between the unlinks and the directory fsync that ends the
    # deletion; the deletion must still end with one.
    entry = [f for f in entry if not _is_generation_unlink(rec.ops[f.index])]
    unsynced_deletions = [
        (first, end) for first, end in deletion_batches(rec.ops) if rec.ops[end].op != "fsync_dir"
    ]
    strict = audit_entry_syncs(sim, rec.acks, lambda name: is_relied_on(name) or name == TEMP_LOG)
    log_first = audit_log_before_pages(rec.ops)
    wal, wal_checked = audit_wal(rec.ops)
    overwrites, kinds = audit_overwrites(rec.ops)
    changes = [c for c in sim.entry_changes() if is_relied_on(c.name) or is_relied_on(c.target)]
    print(
        f"\ntrace audit: {len(rec.ops)} ops; rule A: {len(changes)} entry changes of relied-on "
        f"files, {len(entry)} finding(s) ({len(strict) - len(entry)} more if edbtmp.log "
        f"counted); rule B: {len(_page_batches(rec.ops))} page batches, {len(log_first)} "
        f"finding(s); rule C: {wal_checked} batches checked against the durable log, "
        f"{len(wal)} finding(s); rule D: in-place overwrites of durable data {kinds}, "
        f"{len(overwrites)} finding(s)"
    )
    for finding in entry + log_first + wal + overwrites:
        print("FINDING", finding)
    assert len(changes) >= 10 and wal_checked >= 3
    assert kinds.get("header copy", 0) >= 3 and kinds.get("page", 0) >= 1, kinds
    assert not entry and not log_first and not wal and not overwrites
    assert not unsynced_deletions, unsynced_deletions


def test_trace_audit_overwrite_rule_sees_violations(tmp_path: Path) -> None:
    """Rule D is not vacuous: synthetic recordings that rewrite durable log bytes, overwrite a
    header or checkpoint copy while the other copy is unsynced or absent, or overwrite a page
    the durable header reaches, each give exactly one finding of that kind."""
    instance = jetstore.open(str(tmp_path / "source"), **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    with db.transaction() as txn:
        for key in range(40):
            txn.table("t").insert({"id": key, "v": _text(key, 300)})
    instance.close()
    image = (tmp_path / "source" / "main.edb").read_bytes()
    header = decode_db_header(image[:PAGE_SIZE])
    root = tmp_path / "audit"

    def recording(*steps: tuple[str, str, int, bytes | None]) -> list[RecordedOp]:
        return [
            RecordedOp(index, op, str(root / name), offset, len(data or b""), data)
            for index, (op, name, offset, data) in enumerate(steps)
        ]

    frames = b"\x5a" * 8192
    cases = {
        "log": recording(
            ("create", "edb.log", 0, None),
            ("write", "edb.log", 4096, frames),
            ("fdatasync", "edb.log", 0, None),
            ("write", "edb.log", 8192, b"\x5b" * 1024),  # rewrites acknowledged frames
        ),
        "checkpoint copy": recording(
            ("create", CHECKPOINT_FILE, 0, None),
            ("write", CHECKPOINT_FILE, 0, b"\x01" * 4096 + b"\x02" * 4096),
            ("fsync", CHECKPOINT_FILE, 0, None),
            ("write", CHECKPOINT_FILE, 4096, b"\x03" * 4096),
            ("write", CHECKPOINT_FILE, 0, b"\x04" * 4096),  # copy 1 not synced yet
        ),
        "header copy": recording(
            ("create", "main.edb", 0, None),
            ("write", "main.edb", 0, image[:PAGE_SIZE]),  # copy 1 never written
            ("fsync", "main.edb", 0, None),
            ("write", "main.edb", 0, image[:PAGE_SIZE]),
        ),
        "page": recording(
            ("create", "main.edb", 0, None),
            ("write", "main.edb", 0, image),
            ("fsync", "main.edb", 0, None),
            ("write", "main.edb", header.root_pgno * PAGE_SIZE, b"\x07" * PAGE_SIZE),
        ),
    }
    for kind, ops in cases.items():
        findings, kinds = audit_overwrites(ops)
        assert set(kinds) == {kind}, (kind, kinds)
        assert [f.index for f in findings] == [len(ops) - 1], (kind, findings)
    # The same page write to a page no header reaches is a copy-on-write write: no finding.
    free = max(_durable_tree_pages(image)) + 1
    ops = recording(
        ("create", "main.edb", 0, None),
        ("write", "main.edb", 0, image + b"\x09" * PAGE_SIZE),
        ("fsync", "main.edb", 0, None),
        ("write", "main.edb", free * PAGE_SIZE, b"\x07" * PAGE_SIZE),
    )
    assert audit_overwrites(ops) == ([], {"page": 1})
