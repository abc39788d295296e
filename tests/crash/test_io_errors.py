"""An I/O error at every call of a shortened workload (issue 6, item 4).

A small workload (a database, a table with a secondary index and a counter table, ten
transactions of inserts, updates and deletes, one with a 10 KB long value, a rolled-back
transaction, at least one log roll, two explicit checkpoints, an online full backup after
transaction 7 (`Instance.backup` into a set next to the instance directory: it rolls the log,
reads the database and the logs, writes and publishes the set, records its history in the
header and truncates the logs), a clean close) runs in-process through
`FileSystem(hook=Injector)`. A first run only counts the I/O calls the hook sees: N.
Then, for a call index i, the workload runs again with a fault injected:

- mode `once`: call i fails, every other call succeeds;
- mode `from`: call i and every call after it fail (the disk is gone);

with EIO, plus ENOSPC when call i is a write and EACCES when it is an open or a create. Each
run is checked:

1. every failing API call raises a `JetError` subclass (never a bare `OSError`, never another
   exception type), and no commit returns while a fault hit a write or sync of the log during
   it (a failed durable commit is never acknowledged);
2. failures are sticky (design D9): once a write or sync of the log or of a page file failed
   (the brief's case: fsync/fdatasync of the log), no later commit is acknowledged;
3. nothing is left behind: the instance's handle registry is empty, no engine thread remains,
   the process has as many open file descriptors as before;
4. reopening without the fault recovers: the content equals the workload's state after its last
   acknowledged step (or after one unacknowledged step that followed it, if that one reached
   the disk), every transaction's invariants hold (each group's counter row equals the number
   and the amount sum of its items; a scan by the secondary index returns exactly the records
   of a scan by primary key; the rolled-back row is absent), the instance closes cleanly, and
   then every database file passes `check_integrity` (tree, free space, records against
   indexes, long values; every run, no sampling: ~7 ms a file);
5. the backup (`check_backup`): no handle of the backup session left in the registry and no
   descriptor on the set once `backup()` returned or raised; failed before its set was durable
   (the fault at or before the directory sync after the rename of `DEST.partial`): nothing
   recorded (header history, `backups_completed`) and no log deleted; failed later (in
   `complete()`) or succeeded: the set at DEST verifies (`verify_backup`) and only
   generations below its first one were deleted; a single fault in the backup's own calls
   (anything on the set, a read of the database or a log) leaves the instance open and the
   later commits acknowledged.

A failed header history write in the backup's `complete()` fails the instance like any other
header write (D9): `test_failed_backup_history_write_fails_the_instance` pins it down.

A second sweep starts from a crashed instance (transactions 0-5, one checkpoint, then
`simulate_crash`): the faults hit the recovering open (log and page reads, replay, the recovery
checkpoint), two more transactions and close (no backup in this phase).

Determinism: the log writer prepares the next log file on a background thread. The hook makes
every other thread wait while a preparation is under way (it reads the writer's
`_prepare_state`), so the preparer's calls always come right after the call that requested
them and the call numbering is the same in every run. The workload is short, so the default
run covers every call index (EIO, ENOSPC on writes, EACCES on opens and creates); `make soak`
(`-m soak`) adds ENOSPC and EACCES at every call. `JETSTORE_SEED` seeds the workload's values.

Reproducing a failure: the summary names seed, call index, mode, errno, op and path; rerun with
`JETSTORE_SEED=<seed> JETSTORE_IO_POINTS=<index>[,<index>...]` to check exactly those indexes
(every mode and errno).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

import jetstore
from jetstore.backup.backupset import read_manifest
from jetstore.backup.verify import verify_backup
from jetstore.errors import JetError
from jetstore.io.files import FileSystem, IOEvent

from .consistency import integrity_problems

OPTIONS: dict[str, Any] = {
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 64 * 1024,
    "page_size": 4096,
}
GROUPS = 3
DEFAULT_SEED = 20260406
SEED = int(os.environ.get("JETSTORE_SEED", DEFAULT_SEED))
PREPARER = "jetstore-log-preparer"
ROLLED_BACK_ID = 10**6
BACKUP_AFTER = 7  # the online full backup runs after this transaction and its checkpoint
BACKUP_SET = "backup-set"  # its destination, next to the instance directory
LOG_NAME = re.compile(r"^edb([0-9A-F]{8})?\.log$")
STICKY_OPS = frozenset({"write", "fsync", "fdatasync"})
SYNC_OPS = frozenset({"fsync", "fdatasync"})

Item = tuple[int, int, str]  # grp, amount, note
Canonical = tuple[Any, ...] | None


# ----------------------------------------------------------------- fault injection


@dataclass(frozen=True)
class Fault:
    index: int  # 1-based call index
    mode: str  # "once" or "from"
    err: int

    def __str__(self) -> str:
        return f"call {self.index} {self.mode} {errno.errorcode[self.err]}"


@dataclass(frozen=True)
class Injected:
    index: int
    op: str
    path: str
    thread: str
    in_instance: bool = True  # the path is in the instance directory
    in_backup: bool = False  # the path is the backup set (DEST, DEST.partial) or in it

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def on_log(self) -> bool:
        return LOG_NAME.match(self.name) is not None

    @property
    def on_page_file(self) -> bool:
        return self.name.endswith(".edb")

    @property
    def sticky(self) -> bool:
        """D9: a failed write or sync of the log or of a page file (or header) fails the
        instance. (The backup set holds files of the same names: not the instance's.)"""
        return self.in_instance and self.op in STICKY_OPS and (self.on_log or self.on_page_file)

    @property
    def backup_own(self) -> bool:
        """A call of the backup's own that must not stop the instance: anything on the
        backup set, or a read (the session's reads of the database and the logs)."""
        return self.in_backup or (self.in_instance and self.op == "read")

    @property
    def log_sync(self) -> bool:
        return self.op in SYNC_OPS and self.on_log

    def __str__(self) -> str:
        return f"#{self.index} {self.op} {self.name} ({self.thread})"


class Injector:
    """The file system hook: numbers every call, records it, fails the chosen ones."""

    def __init__(self, fault: Fault | None = None) -> None:
        self.fault = fault
        self.instance_dir = ""  # set by the workload; paths are traced relative to its parent
        self.lock = threading.Lock()
        self.calls = 0
        self.trace: list[tuple[str, str, str]] = []  # op, file name, thread
        self.injected: list[Injected] = []
        self.waits_timed_out = 0

    def _writer(self) -> Any:
        """The log writer using this hook, found through its preparer thread."""
        for thread in threading.enumerate():
            if thread.name != PREPARER:
                continue
            managed = getattr(getattr(thread, "_target", None), "__self__", None)
            writer = getattr(getattr(managed, "_target", None), "__self__", None)
            if getattr(getattr(writer, "_fs", None), "hook", None) is self:
                return writer
        return None

    def _wait_for_preparer(self) -> None:
        writer = self._writer()
        if writer is None:
            return
        deadline = time.monotonic() + 10.0
        while getattr(writer, "_prepare_state", "idle") == "preparing":
            if time.monotonic() > deadline:
                self.waits_timed_out += 1
                return
            time.sleep(0.0002)

    def __call__(self, event: IOEvent) -> None:
        thread = threading.current_thread().name
        if thread != PREPARER:
            self._wait_for_preparer()
        with self.lock:
            self.calls += 1
            index = self.calls
            self.trace.append((event.op, self._name(event.path), thread))
            fault = self.fault
            if fault is None:
                return
            if index == fault.index or (fault.mode == "from" and index > fault.index):
                in_instance = os.path.dirname(event.path) == self.instance_dir
                self.injected.append(
                    Injected(
                        index,
                        event.op,
                        event.path,
                        thread,
                        in_instance,
                        _in_backup_set(event.path, self.instance_dir),
                    )
                )
                raise OSError(fault.err, os.strerror(fault.err))

    def _name(self, path: str) -> str:
        """`inst/edb.log`, `backup-set.partial/main.edb`, `.` (the scratch directory): the
        same in every run (the scratch directory's own name is random)."""
        if not self.instance_dir:
            return os.path.basename(path)
        return os.path.relpath(path, os.path.dirname(self.instance_dir))


def _in_backup_set(path: str, instance_dir: str) -> bool:
    """Whether `path` is the workload's backup set (DEST or DEST.partial) or inside it."""
    if not instance_dir:
        return False
    return _under_set(path, os.path.join(os.path.dirname(instance_dir), BACKUP_SET))


def _under_set(path: str, dest: str) -> bool:
    return any(path == d or path.startswith(d + os.sep) for d in (dest, dest + ".partial"))


# ----------------------------------------------------------------- the workload


def _text(key: int, length: int) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(alphabet[(key * 7 + i * 13) % len(alphabet)] for i in range(length))


@dataclass
class Model:
    database: bool = False
    tables: bool = False
    items: dict[int, Item] = field(default_factory=dict)

    def copy(self) -> Model:
        return Model(self.database, self.tables, dict(self.items))

    def counters(self) -> dict[int, tuple[int, int]]:
        out = {}
        for grp in range(GROUPS):
            amounts = [a for g, a, _ in self.items.values() if g == grp]
            out[grp] = (len(amounts), sum(amounts))
        return out

    def canonical(self) -> Canonical:
        if not self.database:
            return None
        if not self.tables:
            return ((), ())
        items = tuple(sorted((k, *v) for k, v in self.items.items()))
        counters = tuple((g, n, t) for g, (n, t) in sorted(self.counters().items()))
        return (items, counters)


Action = tuple[str, int, Item | None]  # ("put" | "delete", id, new value)


def _insert(rng: random.Random, step: int, count: int, note_len: int) -> list[Action]:
    out: list[Action] = []
    for j in range(count):
        key = step * 100 + j
        out.append(("put", key, (key % GROUPS, rng.randrange(1000), _text(key, note_len))))
    return out


LONG_ID = 150  # inserted by transaction 1 (10 KB note: a long value)


def plan(number: int, model: Model) -> list[Action]:
    """The actions of data transaction `number`, given the acknowledged state `model`.

    Keys are fixed per transaction (never reused) and the choice of victims depends only on
    the model, so a transaction that failed does not shift the ones after it."""
    rng = random.Random(f"{SEED}:{number}")
    live = sorted(k for k in model.items if k != LONG_ID)
    actions: list[Action] = []

    def update(key: int, grp: int | None = None, amount: int | None = None, note: str = "") -> None:
        old_grp, old_amount, old_note = model.items[key]
        new = (
            old_grp if grp is None else grp,
            old_amount if amount is None else amount,
            note or old_note,
        )
        actions.append(("put", key, new))

    if number == 0:
        actions += _insert(rng, 1, 4, 1500)
    elif number == 1:
        actions += _insert(rng, 2, 2, 900)
        actions.append(("put", LONG_ID, (0, 7, _text(LONG_ID, 10_240))))
    elif number == 2:
        for key in live[:2]:
            update(key, amount=rng.randrange(1000))
    elif number == 3:
        if live:
            key = live[0]
            update(key, grp=(model.items[key][0] + 1) % GROUPS, note=_text(key + 1, 700))
        if len(live) > 1:
            actions.append(("delete", live[-1], None))
    elif number == 4:
        actions += _insert(rng, 5, 5, 2000)
    elif number == 5:
        if LONG_ID in model.items:
            update(LONG_ID, note=_text(LONG_ID + 2, 10_500))
        else:
            actions.append(("put", LONG_ID, (0, 9, _text(LONG_ID + 3, 10_400))))
    elif number == 6:
        for key in live[1:3]:
            actions.append(("delete", key, None))
        actions += _insert(rng, 7, 2, 1800)
    elif number == 7:
        actions += _insert(rng, 8, 6, 2500)
    elif number == 8:
        for key in live[-3:]:
            update(key, amount=rng.randrange(1000))
    elif number == 9:
        if LONG_ID in model.items:
            actions.append(("delete", LONG_ID, None))
        actions += _insert(rng, 10, 2, 1200)
    if not actions:  # earlier transactions failed: every transaction still changes something
        actions += _insert(rng, 20 + number, 1, 300)
    return actions


def apply(model: Model, actions: list[Action]) -> Model:
    out = model.copy()
    for kind, key, value in actions:
        if kind == "put":
            assert value is not None
            out.items[key] = value
        else:
            out.items.pop(key, None)
    return out


@dataclass
class Call:
    """One API call of the workload and what came of it."""

    name: str
    first: int  # hook calls before it started
    last: int = 0  # hook calls when it ended
    error: BaseException | None = None
    injected: list[Injected] = field(default_factory=list)


@dataclass
class Step:
    """One unit of the workload that may change the durable state."""

    name: str
    after: Canonical  # the oracle state if it took effect
    acked: bool = False
    committed: bool = False  # the durable call (commit, create) was reached
    first: int = 0  # hook calls before its durable call


@dataclass
class BackupRecord:
    """The online backup of the workload and what the instance looked like around it."""

    call: Call
    dest: str
    closed_logs_before: set[str]
    closed_logs_after: set[str]
    history_before: Any = None  # the database header's last_full_backup
    history_after: Any = None
    completed_before: int = 0  # instance.backups_completed
    completed_after: int = 0
    state_after: str = ""  # the instance's state right after the call
    backup_handles: list[str] = field(default_factory=list)  # registry, after the call
    set_fds: list[str] = field(default_factory=list)  # descriptors on the set, after the call
    truncated: list[int] = field(default_factory=list)  # fault-free: generations deleted


@dataclass
class Run:
    fault: Fault | None
    injector: Injector
    backup: BackupRecord | None = None
    backup_durable_at: int = 0  # call index (reference run) after which the set is durable
    calls: list[Call] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    instance: Any = None
    counters: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: int = 0
    initial: Model = field(default_factory=Model)  # the durable state before the run

    def check(self, ok: bool, problem: str) -> None:
        self.checks += 1
        if not ok:
            self.problems.append(problem)


class Workload:
    def __init__(self, directory: str, run: Run, backup: bool = True) -> None:
        self.directory = directory
        self.run = run
        self.backup_enabled = backup
        run.injector.instance_dir = directory
        self.model = Model()
        self.instance: Any = None
        self.db: Any = None

    def call(self, name: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
        injector = self.run.injector
        record = Call(name, injector.calls)
        self.run.calls.append(record)
        try:
            result = fn()
            ok = True
        except BaseException as exc:
            record.error = exc
            result, ok = None, False
        record.last = injector.calls
        record.injected = [f for f in injector.injected if record.first < f.index <= record.last]
        return ok, result

    def step(self, name: str, after: Model, durable: Callable[[], Any]) -> bool:
        step = Step(name, after.canonical(), first=self.run.injector.calls)
        self.run.steps.append(step)
        step.committed = True
        ok, result = self.call(name, durable)
        if ok:
            step.acked = True
            self.model = after
            if name.endswith("commit"):
                # Every transaction changes something: None would mean nothing was logged.
                self.run.check(result is not None, f"check 1: {name} returned {result!r}")
        return ok

    def run_all(self, numbers: range = range(10), crash: bool = False) -> None:
        """The workload; with `crash`, it stops as a killed process would (no close)."""
        ok, instance = self.call(
            "open",
            lambda: jetstore.open(
                self.directory, filesystem=FileSystem(hook=self.run.injector), **OPTIONS
            ),
        )
        if not ok:
            return
        self.instance = self.run.instance = instance
        if not self.model.database:
            created = Model(database=True)
            self.step("create database", created, lambda: instance.database("main", create=True))
        ok, self.db = self.call("database", lambda: instance.database("main"))
        if ok:
            if not self.model.tables:
                self.schema()
            for number in numbers:
                self.transaction(number)
                if number == 3:
                    self.rolled_back()
                if number in (3, 7):
                    self.call(f"checkpoint after t{number}", instance.checkpoint)
                if number == BACKUP_AFTER and self.backup_enabled:
                    self.backup()
        ok, counters = self.call("counters", instance.counters)
        if ok:
            self.run.counters = counters
        if crash:
            instance.simulate_crash()
        else:
            self.call("close", instance.close)

    def backup(self) -> None:
        """An online full backup (`Instance.backup`: a `begin_backup` session streamed into a
        backup set next to the instance directory; `complete()` records it in the database
        header and truncates the logs), with what it changed recorded around it."""
        instance = self.instance
        dest = os.path.join(os.path.dirname(self.directory), BACKUP_SET)
        before = _closed_logs(self.directory)
        history = self._history()
        completed = instance.backups_completed
        self.call("backup", lambda: instance.backup(dest, kind="full"))
        after = _closed_logs(self.directory)
        self.run.backup = BackupRecord(
            call=self.run.calls[-1],
            dest=dest,
            closed_logs_before=before,
            closed_logs_after=after,
            history_before=history,
            history_after=self._history(),
            completed_before=completed,
            completed_after=instance.backups_completed,
            state_after=instance.state.value,
            backup_handles=[
                f"{h.owner}: {h.description}"
                for h in instance.registry.open_handles()
                if "/backup-" in h.owner
            ],
            set_fds=_fds_under(dest),
            truncated=sorted(int(name[3:11], 16) for name in before - after),
        )

    def _history(self) -> Any:
        """The database's last full backup as its header (in memory) says."""
        try:
            return self.instance.database("main").file.header.last_full_backup
        except JetError:
            return None

    def schema(self) -> None:
        db = self.db
        ok, txn = self.call("schema: begin", db.transaction)
        if not ok:
            return

        def build() -> None:
            txn.create_table(
                "items",
                [("id", "int"), ("grp", "int"), ("amount", "int"), ("note", "text")],
                primary_key="id",
                indexes=[("by_grp", ["grp"])],
            )
            txn.create_table("counters", [("grp", "int"), ("n", "int"), ("total", "int")], "grp")
            for grp in range(GROUPS):
                txn.table("counters").insert({"grp": grp, "n": 0, "total": 0})

        after = self.model.copy()
        after.tables = True
        self.finish("schema", txn, build, after)

    def transaction(self, number: int) -> None:
        db = self.db
        actions = plan(number, self.model)
        after = apply(self.model, actions)
        ok, txn = self.call(f"t{number}: begin", db.transaction)
        if not ok:
            return
        before = self.model

        def build() -> None:
            items = txn.table("items")
            groups = set()
            for kind, key, value in actions:
                if kind == "delete":
                    items.delete(key)
                    groups.add(before.items[key][0])
                    continue
                assert value is not None
                grp, amount, note = value
                if key in before.items:
                    items.update(key, {"grp": grp, "amount": amount, "note": note})
                    groups.add(before.items[key][0])
                else:
                    items.insert({"id": key, "grp": grp, "amount": amount, "note": note})
                groups.add(grp)
            counters = txn.table("counters")
            totals = after.counters()
            for grp in sorted(groups):
                n, total = totals[grp]
                counters.update(grp, {"n": n, "total": total})

        self.finish(f"t{number}", txn, build, after)

    def finish(self, name: str, txn: Any, build: Callable[[], None], after: Model) -> None:
        ok, _ = self.call(f"{name}: changes", build)
        if not ok:
            self.call(f"{name}: rollback", txn.rollback)
            return
        self.step(f"{name}: commit", after, txn.commit)

    def rolled_back(self) -> None:
        ok, txn = self.call("rollback: begin", self.db.transaction)
        if not ok:
            return
        row = {"id": ROLLED_BACK_ID, "grp": 0, "amount": 1, "note": "never"}
        self.call("rollback: insert", lambda: txn.table("items").insert(row))
        self.call("rollback", txn.rollback)


# ----------------------------------------------------------------- reading the state back


def read_state(instance: Any) -> tuple[Canonical, list[str]]:
    problems: list[str] = []
    if "main" not in instance.databases():
        return None, problems
    db = instance.database("main")
    names = sorted(db.table_names())
    if not names:
        return ((), ()), problems
    if names != ["counters", "items"]:
        return (("tables", tuple(names)),), [f"partial schema: tables {names}"]
    with db.transaction() as txn:
        table = txn.table("items")
        rows = list(table.scan())
        by_index = list(table.scan(index="by_grp"))
        per_group = {
            g: list(table.scan(index="by_grp", start=(g,), stop=(g + 1,))) for g in range(GROUPS)
        }
        counter_rows = list(txn.table("counters").scan())
        txn.rollback()
    expected_index = sorted(rows, key=lambda r: (r["grp"], r["id"]))
    if by_index != expected_index:
        problems.append(
            f"index scan ({len(by_index)} rows) differs from the primary-key scan ({len(rows)})"
        )
    for grp, members in per_group.items():
        if members != [r for r in expected_index if r["grp"] == grp]:
            problems.append(f"index range of group {grp} differs from the records of the group")
    counters = tuple((r["grp"], r["n"], r["total"]) for r in counter_rows)
    for grp, n, total in counters:
        amounts = [r["amount"] for r in rows if r["grp"] == grp]
        if n != len(amounts) or total != sum(amounts):  # type: ignore[arg-type]
            problems.append(
                f"partial transaction: counter of group {grp} says n={n} total={total}, the "
                f"items say n={len(amounts)} total={sum(amounts)}"  # type: ignore[arg-type]
            )
    if any(r["id"] == ROLLED_BACK_ID for r in rows):
        problems.append("the rolled-back transaction is visible")
    items = tuple(sorted((r["id"], r["grp"], r["amount"], r["note"]) for r in rows))
    return (items, counters), problems


def _short(state: Canonical) -> str:
    if state is None:
        return "no database"
    if len(state) == 2 and isinstance(state[0], tuple):
        return f"{len(state[0])} items"
    return repr(state)[:80]


# ----------------------------------------------------------------- one run and its checks


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _fds_under(dest: str) -> list[str]:
    """The paths of this process's open descriptors on the backup set `dest` (or on
    `dest.partial`) or in it."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if _under_set(target, dest):
            found.append(target)
    return found


def _closed_logs(directory: str) -> set[str]:
    """The closed log generations' file names in an instance directory."""
    try:
        names = os.listdir(directory)
    except OSError:
        return set()
    return {n for n in names if LOG_NAME.match(n) and n != "edb.log"}


def _settle_threads(target: int) -> int:
    deadline = time.monotonic() + 2.0
    while threading.active_count() > target and time.monotonic() < deadline:
        time.sleep(0.005)
    return threading.active_count()


@contextmanager
def _scratch(base: str) -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="ioerr-", dir=base)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Template:
    """A crashed instance (dirty databases, logs to replay) to start the recovery phase from."""

    directory: str
    model: Model


def make_template(base: str) -> Template:
    """Run transactions 0-5 (one checkpoint) and stop as a killed process would."""
    directory = os.path.join(tempfile.mkdtemp(prefix="ioerr-template-", dir=base), "inst")
    run = Run(None, Injector())
    workload = Workload(directory, run, backup=False)
    workload.run_all(range(6), crash=True)
    assert not run.problems and all(c.error is None for c in run.calls), run.calls
    return Template(directory, workload.model)


def execute(
    base: str, fault: Fault | None, template: Template | None = None, durable_at: int = 0
) -> Run:
    """One run of the workload (fresh), or of its recovery phase (from `template`: a
    recovering open, transactions 6-7, a checkpoint, close), with `fault` injected.
    `durable_at`: the call after which the backup set is durable (see `backup_durable_at`)."""
    threads, fds = threading.active_count(), _fd_count()
    run = Run(fault, Injector(fault), backup_durable_at=durable_at)
    with _scratch(base) as directory:
        workload = Workload(os.path.join(directory, "inst"), run)
        if template is None:
            workload.run_all()
        else:
            workload.backup_enabled = False  # the recovery phase is about recovery's calls
            shutil.copytree(template.directory, workload.directory)
            workload.model = run.initial = template.model
            workload.run_all(range(6, 8))
        if run.instance is not None:
            try:
                run.instance.close()  # idempotent; after a failure it still releases all
            except JetError:
                pass
            except BaseException as exc:
                run.problems.append(f"check 3: close() raised {type(exc).__name__}: {exc}")
            total = run.instance.registry.total()
            run.check(total == 0, f"check 3: {total} handle(s) left in the registry after close")
        after_threads = _settle_threads(threads)
        run.check(
            after_threads == threads,
            f"check 3: {after_threads - threads} thread(s) left behind: "
            f"{sorted(t.name for t in threading.enumerate())}",
        )
        after_fds = _fd_count()
        run.check(after_fds == fds, f"check 3: {after_fds - fds} file descriptor(s) left open")
        check_calls(run)
        check_sticky(run)
        check_backup(run)
        if fault is not None:
            check_recovery(run, workload.directory, threads, fds)
    return run


def check_calls(run: Run) -> None:
    """Check 1: failures are JetErrors; a commit never returns over a failed log write."""
    for call in run.calls:
        error = call.error
        run.check(
            error is None or isinstance(error, JetError),
            f"check 1: {call.name} raised {type(error).__name__} (not a JetError): {error}",
        )
        if error is not None:
            continue
        lost = [f for f in call.injected if f.on_log and f.op in STICKY_OPS]
        run.check(
            not lost or not call.name.endswith("commit"),
            f"check 1: {call.name} returned although {', '.join(map(str, lost))} failed",
        )
        fatal = [f for f in call.injected if f.sticky]
        if fatal and not call.name.endswith("commit") and run.instance is not None:
            state = run.instance.state.value
            run.check(
                state in ("failed", "closed"),
                f"check 1: {call.name} returned although {', '.join(map(str, fatal))} failed, "
                f"and the instance is {state!r}",
            )
            if call.name.startswith("checkpoint"):
                run.notes.append("checkpoint() returned normally; the instance is failed")


def check_sticky(run: Run) -> None:
    """Check 2: no commit is acknowledged after a sticky fault (log sync, D9 writes)."""
    first = next((f for f in run.injector.injected if f.sticky), None)
    if first is None:
        return
    kind = "log sync" if first.log_sync else "write/sync (D9)"
    for step in run.steps:
        if step.acked and step.first >= first.index:
            run.check(
                False,
                f"check 2: {step.name} acknowledged after the {kind} failure {first}",
            )
    run.checks += 1


def check_backup(run: Run) -> None:
    """Check 5: the online backup (`Instance.backup`) under a fault.

    - nothing of the backup stays open once `backup()` returned or raised: no handle of a
      backup session's owner in the registry, no descriptor on the set (/proc/self/fd);
    - a backup that failed before its set was durable (the fault at or before the directory
      sync after `DEST.partial` was renamed to DEST, or no fault of its own) recorded nothing
      (the header's last full backup, `backups_completed`) and deleted no log;
    - a backup that failed later (in `complete()`: the header history write, the truncation)
      left a whole set at DEST (`verify_backup`), and deleted only generations below the set's
      first one;
    - a backup that succeeded although a fault hit it (or in the fault-free run) wrote a set
      that verifies;
    - a single fault in the backup's own calls (anything on the set; a read of the database
      or a log) leaves the instance open and acknowledging commits (D9 is for the instance's
      own log and header writes)."""
    record = run.backup
    if record is None:
        return
    call = record.call
    where = f"backup ({call.error!r})" if call.error is not None else "backup (succeeded)"
    run.check(
        not record.backup_handles,
        f"check 5: {where}: handles of the backup left in the registry: {record.backup_handles}",
    )
    run.check(
        not record.set_fds, f"check 5: {where}: descriptors left on the set: {record.set_fds}"
    )
    deleted = sorted(record.closed_logs_before - record.closed_logs_after)
    first = call.injected[0] if call.injected else None
    durable = first is not None and 0 < run.backup_durable_at < first.index
    if call.error is not None and not durable:
        run.check(
            record.history_after == record.history_before
            and record.completed_after == record.completed_before,
            f"check 5: {where} failed before its set was durable but was recorded: header "
            f"{record.history_before} -> {record.history_after}, backups_completed "
            f"{record.completed_before} -> {record.completed_after}",
        )
        run.check(not deleted, f"check 5: {where} failed but deleted logs {deleted}")
    elif call.error is not None or call.injected or run.fault is None:
        problems = _set_problems(record.dest, deleted)
        run.check(not problems, f"check 5: {where}: {problems}")
    once = run.fault is not None and run.fault.mode == "once"
    if once and first is not None and all(f.backup_own for f in call.injected):
        run.check(
            record.state_after == "open",
            f"check 5: {where}: a fault in the backup's own I/O ({first}) left the "
            f"instance {record.state_after!r}",
        )
        later = [s for s in run.steps if s.first >= call.last]
        run.check(
            bool(later) and all(s.acked for s in later),
            f"check 5: {where}: commits after a fault in the backup's own I/O ({first}) "
            f"were not acknowledged: {[s.name for s in later if not s.acked]}",
        )


def _set_problems(dest: str, deleted: list[str]) -> str:
    """'' when DEST is a whole backup set (it verifies) and every log generation in `deleted`
    lies below its first generation."""
    try:
        verification = verify_backup(dest)
        manifest = read_manifest(dest)
    except JetError as exc:
        return f"the set at {dest} cannot be read: {type(exc).__name__}: {exc}"
    if not verification.ok:
        return f"the set does not verify: {[str(p) for p in verification.problems][:3]}"
    low = manifest.generation_low
    above = [name for name in deleted if int(name[3:11], 16) >= low]
    if above:
        return f"logs {above} were deleted although the set starts at generation {low}"
    return ""


def backup_durable_at(trace: list[tuple[str, str, str]]) -> int:
    """The index of the call after which the backup set of a run is durable: the directory
    sync that follows the rename of `DEST.partial` to DEST (0 if the run takes no backup)."""
    renamed = next(
        (
            i
            for i, (op, name, _) in enumerate(trace, 1)
            if op == "rename" and name == BACKUP_SET + ".partial"
        ),
        None,
    )
    if renamed is None:
        return 0
    return next(i for i, (op, _, _) in enumerate(trace, 1) if i > renamed and op == "fsync_dir")


def check_recovery(run: Run, directory: str, threads: int, fds: int) -> None:
    """Check 4: reopen without the fault; acknowledged commits present, nothing partial."""
    acked = [i for i, s in enumerate(run.steps) if s.acked]
    last = acked[-1] if acked else -1
    expected: Canonical = run.steps[last].after if acked else run.initial.canonical()
    # An unacknowledged step after the last acknowledged one may have reached the disk.
    allowed = {
        _key(expected): "the last acknowledged step",
        **{_key(s.after): f"unacknowledged {s.name}" for s in run.steps[last + 1 :] if s.committed},
    }
    if not acked and not os.path.exists(os.path.join(directory, "main.edb")):
        allowed.setdefault(_key(((), ())), "database creation")
    try:
        instance = jetstore.open(directory, **OPTIONS)
    except BaseException as exc:
        run.check(False, f"check 4: reopen failed: {type(exc).__name__}: {exc}")
        return
    try:
        state, problems = read_state(instance)
        run.check(not problems, f"check 4: invariants: {problems}")
        run.check(
            _key(state) in allowed,
            f"check 4: recovered {_short(state)}; expected {_short(expected)} (after "
            f"{len(acked)} acknowledged step(s)) or one of {len(allowed) - 1} unacknowledged",
        )
    except BaseException as exc:
        run.check(False, f"check 4: reading the recovered state: {type(exc).__name__}: {exc}")
    try:
        instance.close()
        run.check(True, "")
    except BaseException as exc:
        run.check(False, f"check 4: close after recovery: {type(exc).__name__}: {exc}")
    else:
        found, checked = integrity_problems(directory)
        run.checks += checked
        run.check(not found, f"check 4: recovered database files: {found}")
    total = instance.registry.total()
    run.check(total == 0, f"check 4: {total} handle(s) left after the recovered close")
    run.check(_settle_threads(threads) == threads, "check 4: thread left after recovery")
    run.check(_fd_count() == fds, "check 4: file descriptor left after recovery")


def _key(state: Canonical) -> str:
    return repr(state)


# ----------------------------------------------------------------- the sweep


def faults_at(index: int, op: str, soak: bool = False) -> list[Fault]:
    """EIO; ENOSPC for a write, EACCES for an open or create (soak: all three for every op)."""
    errs = [errno.EIO]
    if op == "write" or soak:
        errs.append(errno.ENOSPC)
    if op in ("open", "create") or soak:
        errs.append(errno.EACCES)
    return [Fault(index, mode, err) for mode in ("once", "from") for err in errs]


@dataclass
class Summary:
    n: int
    runs: int = 0
    injected: int = 0
    checks: int = 0
    failures: list[str] = field(default_factory=list)
    failed_runs: int = 0
    notes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, run: Run, trace: list[tuple[str, str, str]]) -> None:
        self.runs += 1
        self.injected += len(run.injector.injected)
        self.checks += run.checks
        for note in run.notes:
            self.notes[note] = self.notes.get(note, 0) + 1
        if run.problems:
            self.failed_runs += 1
            assert run.fault is not None
            op, name, thread = trace[run.fault.index - 1]
            first = run.injector.injected[0] if run.injector.injected else None
            for problem in run.problems:
                self.failures.append(
                    f"[seed {SEED}, {run.fault}: {op} {name} ({thread}); first fault "
                    f"{first}] {problem}"
                )

    def report(self) -> str:
        lines = [
            f"I/O errors: N={self.n} calls, {self.runs} runs, {self.injected} faults injected, "
            f"{self.checks} checks, {self.failed_runs} failed run(s), {len(self.failures)} "
            f"failure(s), {self.seconds:.1f}s"
        ]
        lines += [f"  note: {note} x{count}" for note, count in sorted(self.notes.items())]
        lines += [f"  {failure}" for failure in self.failures[:40]]
        return "\n".join(lines)


def _base(tmp_path: Any) -> str:
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(prefix="jetstore-ioerr-", dir=shm)
    return str(tmp_path)


@pytest.fixture
def base(tmp_path: Any) -> Iterator[str]:
    path = _base(tmp_path)
    try:
        yield path
    finally:
        if path != str(tmp_path):
            shutil.rmtree(path, ignore_errors=True)


def count_calls(base: str, template: Template | None = None) -> Run:
    run = execute(base, None, template)
    assert not run.problems, run.problems
    assert all(c.error is None for c in run.calls), [
        (c.name, c.error) for c in run.calls if c.error
    ]
    assert run.injector.waits_timed_out == 0
    return run


def sweep(base: str, soak: bool = False, template: Template | None = None) -> Summary:
    """Count the calls of a fault-free run, then inject a fault at each chosen call."""
    trace = count_calls(base, template).injector.trace
    durable_at = backup_durable_at(trace)
    summary = Summary(len(trace))
    start = time.monotonic()
    for index in choose(len(trace), soak):
        for fault in faults_at(index, trace[index - 1][0], soak):
            summary.add(execute(base, fault, template, durable_at), trace)
    summary.seconds = time.monotonic() - start
    print("\n" + summary.report())
    return summary


def choose(n: int, soak: bool) -> list[int]:
    """Every call index (the workload is short enough); JETSTORE_IO_POINTS picks some."""
    points = os.environ.get("JETSTORE_IO_POINTS")
    if points:
        return sorted({int(p) for p in points.split(",") if p.strip()} & set(range(1, n + 1)))
    return list(range(1, n + 1))


# ----------------------------------------------------------------- tests


def test_reference_run_counts_calls(base: str) -> None:
    """The fault-free run: the workload rolls the log, checkpoints twice (plus the ones of open
    and close), closes cleanly, and its call numbering is the same every time."""
    first = count_calls(base)
    second = count_calls(base)
    assert first.injector.trace == second.injector.trace
    assert first.counters["log_rolls"] >= 1, first.counters
    assert first.counters["checkpoints"] >= 3, first.counters
    assert len(first.steps) == 12 and all(s.acked for s in first.steps)
    assert any(len(v[2]) >= 10_000 for v in first_model_items(first))
    ops = {op for op, _, _ in first.injector.trace}
    assert {"create", "write", "fdatasync", "rename", "fsync_dir"} <= ops
    # The online backup ran inside the workload: it read the database and the logs, wrote
    # the set, published it, recorded itself and truncated the logs.
    backup = first.backup
    assert backup is not None and backup.call.error is None, backup
    assert backup.truncated and backup.completed_after == backup.completed_before + 1, backup
    assert backup.history_before.is_none and not backup.history_after.is_none, backup
    assert {"read", "unlink", "mkdir"} <= ops
    backup_calls = first.injector.trace[backup.call.first : backup.call.last]
    names = {name.split(os.sep)[0] for _, name, _ in backup_calls}
    assert {"inst", BACKUP_SET + ".partial", "."} <= names, names
    assert 0 < backup_durable_at(first.injector.trace) <= backup.call.last
    print(f"backup: {len(backup_calls)} calls, deleted generations {backup.truncated}")
    print(f"\nN={first.injector.calls} I/O calls, ops {sorted(ops)}")


def first_model_items(run: Run) -> list[Item]:
    """Every item value the workload's steps ever held (the long value among them)."""
    values: list[Item] = []
    for step in run.steps:
        if step.after is not None and len(step.after) == 2 and step.after[0]:
            values += [tuple(item[1:]) for item in step.after[0]]  # type: ignore[misc]
    return values


def test_io_error_at_every_call(base: str) -> None:
    """Fresh instance: a fault at every call of the workload, once and from then on."""
    summary = sweep(base)
    assert summary.runs > 0
    assert not summary.failures, summary.report()


def test_io_error_at_every_call_of_recovery(base: str) -> None:
    """Crashed instance: a fault at every call of the recovering open (reads of the logs and the
    page file included), two more transactions, a checkpoint and close."""
    summary = sweep(base, template=make_template(base))
    assert summary.runs > 0
    assert not summary.failures, summary.report()


def test_failed_backup_history_write_fails_the_instance(base: str) -> None:
    """D9 for the backup's own header write: once the set is durable, `complete()` writes
    the backup history into the database header; if that write fails, the instance must be
    FAILED and acknowledge no later commit (like any other failed header write)."""
    trace = count_calls(base).injector.trace
    durable = backup_durable_at(trace)
    index = next(
        i
        for i, (op, name, _) in enumerate(trace, 1)
        if i > durable and op == "write" and name == "inst/main.edb"
    )
    run = execute(base, Fault(index, "once", errno.EIO), durable_at=durable)
    record = run.backup
    assert record is not None and isinstance(record.call.error, JetError), record
    later = [s.name for s in run.steps if s.first >= record.call.last and s.acked]
    assert record.state_after == "failed" and not later, (record.state_after, later)


@pytest.mark.soak
def test_io_error_every_errno_at_every_call(base: str) -> None:
    """Soak: EIO, ENOSPC and EACCES at every call, fresh and recovering."""
    for template in (None, make_template(base)):
        summary = sweep(base, soak=True, template=template)
        assert not summary.failures, summary.report()
