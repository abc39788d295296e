"""A database attached to an instance: its page file, its published tree, its transactions.

Invariants:
- `_published` is one tuple (root, position, plan epoch), replaced whole under the instance's
  commit lock: a reader takes a consistent snapshot with one attribute read.
- The tree published at position P holds exactly the commits for this database whose records
  end at or before P (in log order): commits are applied and published in the order their
  records were appended, under the commit lock.
- A commit interrupted between its log record and the end of its publication (an exception
  such as KeyboardInterrupt from a signal handler) fails the instance (D9): the log and the
  published tree disagree until recovery replays the log.
- A commit conflicts (`WriteConflict`, -1102) when another transaction committed a change to
  one of its keys after its snapshot; the later committer fails, the earlier one wins. A
  transaction that wrote under a table's object ids also conflicts with any change of that
  table's definition committed after its snapshot (a drop or re-creation: its writes would be
  orphans; an index or column added or dropped: it did not maintain the index, or wrote the
  old record layout); one that only read the table does not. A transaction that changed a
  table's definition conflicts with every write to that table committed after its snapshot
  (`_check_redefined`: its build or rewrite missed it). The error names the entry
  (`Transaction.describe_key`) or the table.
- Catalog entries (table definitions) change only through `commit_transaction` once
  transactions exist (replay happens before the first one), so the definitions cached for
  snapshots since the last catalog change (`catalog_cache`) are those the tree holds.
- Every open transaction is registered with its snapshot position; pages a commit frees are
  reused only after every older snapshot ended (see `jetstore.pages.pagefile`).
- `dirty_nodes` is the number of never-written nodes of the published tree (what the next
  checkpoint writes), kept under the commit lock from each commit's `Mutation.dirtied` (or
  counted after a bulk merge) and set to 0 when a checkpoint assigns them pages
  (`bump_plan_epoch`). They are held in memory outside the node cache until written: the
  instance checkpoints early, and makes committers wait, when they grow past `cache_size`.
- When the instance closes (`close_transactions`) every transaction still open is rolled
  back: its next use, a step of its iterators included, raises `NotInTransaction` saying the
  instance closed, and no new one begins (its file is closed). A committing transaction is
  open until its publication and no longer after it: it leaves the registry under the
  commit lock, where the close's own step that stops commits (`_closing`) is taken. One
  rolled back while its commit waited for that lock (a detach holding it) is refused
  under the lock (`NotInTransaction`), never logged after the database's DETACH record.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from jetstore.errors import (
    DatabaseNotFound,
    JetError,
    KeyDuplicate,
    LogFileCorrupt,
    WriteConflict,
)
from jetstore.format.common import now_us
from jetstore.format.logrecords import (
    UNDECODABLE_RECORD_HINT,
    encode_commit_changes,
    encode_commit_ordered,
    gather_commit_operations,
)
from jetstore.format.positions import LogPosition
from jetstore.io import forks
from jetstore.pages.btree import (
    Mutation,
    Node,
    count_dirty_nodes,
    iterate,
    merge_sorted_columns,
    oversized_entry,
)
from jetstore.pages.pagefile import DatabaseFile
from jetstore.tables.catalog import NEXT_OBJECT_ID_KEY, TABLE_ENTRY_PREFIX
from jetstore.tables.keys import tuple_prefix_stop
from jetstore.tables.records import RecordCodec
from jetstore.tables.schema import ColumnType, TableDef, decode_table_def
from jetstore.tables.table import TableShape
from jetstore.transactions.transaction import Transaction, TransactionState, next_epoch

if TYPE_CHECKING:
    from jetstore.instance.instance import Instance

CachedTable = tuple[bytes, TableDef, RecordCodec, TableShape]
_TXN_IDS = itertools.count(1)
_REPLAY_BATCH_BYTES = 256 * 1024 * 1024
# Definitions of one table whose codec and shape stay cached: two are common (transactions
# begun before and after a schema change), a few more cover a burst of changes while older
# readers run; a bound keeps a table changed many times from holding every old codec.
_DEFINITIONS_PER_TABLE = 4
# Definitions decoded from the catalog kept by their encoding: at most this many, and this
# many bytes of encodings (the decoded objects take ~4x that: D17).
_DEFINITIONS_MAX = 1025
_DEFINITIONS_MAX_BYTES = 8 * 1024 * 1024
#: How many times a `Database` schema change convenience (`create_table`, `create_index` and
#: the rest) runs its change before it gives up on the WriteConflicts of concurrent commits.
SCHEMA_CHANGE_ATTEMPTS = 5


def _pause_writes_hint(during: str) -> str:
    """The way out when a change of an existing table kept conflicting with writes to it."""
    return (
        f"pause the application's writes to the table while {during}, or try again when the "
        "table is less busy; nothing of the change was committed"
    )


def gather_replayable(
    payload: bytes, start: LogPosition, page_size: int, name: str
) -> tuple[dict[bytes, bytes | None], int]:
    """The changes of the COMMIT record at `start` for database `name` (pages of
    `page_size`), and their bytes: `gather_commit_operations`, then the tree's entry limits.

    The engine refuses an entry too large for its tree before it logs it, so a record with
    one is no record it wrote: `LogFileCorrupt` at the record's position (recovery with
    accept_data_loss stops before it), not the tree's InvalidParameter from a later batch.
    Recovery calls this for records of a database it re-creates too, as the scan meets
    them, before any file is made."""
    record: dict[bytes, bytes | None] = {}
    size, longest_key, longest_put = gather_commit_operations(payload, record, start)
    problem = oversized_entry(record, page_size, longest_key, longest_put)
    if problem is not None:
        raise LogFileCorrupt(
            f"undecodable commit record at log position {start}: it holds a change database "
            f"{name!r} cannot hold ({problem.detail})",
            hint=UNDECODABLE_RECORD_HINT,
        )
    return record, size


class Database:
    """One `NAME.edb` attached to an `Instance`. Obtain it with `Instance.database(name)`."""

    def __init__(
        self,
        instance: Instance,
        name: str,
        db_id: int,
        file: DatabaseFile,
        position: LogPosition,
    ) -> None:
        self._instance = instance
        self.name = name
        self.db_id = db_id
        self.file = file
        self.page_size = file.page_size
        self.max_transaction_bytes = instance.options.max_transaction_bytes
        self._published: tuple[Node | None, LogPosition, int] = (file.root(), position, 0)
        file.point_index.enabled = instance.options.point_read_index
        file.point_index.reset(self._published[0])
        self.dirty_nodes = 0
        self._active: dict[int, LogPosition] = {}
        # The open transactions themselves, weakly (an abandoned one must still be collected
        # and end itself): rolled back when the instance closes.
        self._live: dict[int, weakref.ref[Transaction]] = {}
        self._closed = False
        # Re-entrant: an abandoned transaction may be collected (and end itself) while this
        # thread holds the lock.
        self._active_lock = threading.RLock()
        self._recent: dict[bytes, LogPosition] = {}
        self._recent_log: deque[tuple[LogPosition, list[bytes]]] = deque()
        self._defs: dict[bytes, TableDef] = {}
        self._defs_bytes = 0  # the encodings `_defs` is keyed by (`table_def_from_bytes`)
        # Record codecs and table shapes by table id, the most recently built first, at most
        # `_DEFINITIONS_PER_TABLE` each (see `shape_for`). Each tuple is replaced whole, never
        # changed in place, so a thread reading one meanwhile sees a consistent one.
        self._codecs: dict[int, tuple[tuple[TableDef, RecordCodec], ...]] = {}
        self._shapes: dict[int, tuple[tuple[TableDef, RecordCodec, TableShape], ...]] = {}
        # (position of the last commit that changed a catalog entry, table name -> (entry key,
        # definition, codec, shape) as every snapshot at or after it sees them). Replaced
        # whole, before the commit is published, when a commit changes the catalog.
        self._catalog: tuple[LogPosition, dict[str, CachedTable]] = (LogPosition.MIN, {})
        self.commits = 0
        self.conflicts = 0
        self._replay: dict[bytes, bytes | None] = {}
        self._replay_bytes = 0
        self._replay_end: LogPosition | None = None

    # ----------------------------------------------------------------- public API

    def transaction(self) -> Transaction:
        """Begin a transaction reading the database as of now."""
        self._instance.check_open()
        txn_id = next(_TXN_IDS)
        with self._active_lock:
            if self._closed:
                self._refuse_closed()
            # Registered before the snapshot is read: a concurrent commit either sees us
            # (and keeps its keys for our conflict check) or is already in our snapshot.
            active = self._active
            active[txn_id] = LogPosition.MIN
            root, position, plan_epoch = self._published
            active[txn_id] = position
            txn = Transaction(self, txn_id, root, position, plan_epoch)
            self._live[txn_id] = weakref.ref(txn)
        return txn

    def create_table(
        self,
        name: str,
        columns: object,
        primary_key: object,
        indexes: object = (),
    ) -> TableDef:
        """Create a table in a transaction of its own (schema changes are logged like data).

        Key sizes as `Transaction.create_table` says: a primary key of at most 1014 encoded
        bytes, and with indexes, index key + primary key at most 1020 bytes (8 KiB pages).

        Concurrent creations of tables (the same name or not) all take the catalog's next
        object id, so the later commit is a WriteConflict; it is retried on a new snapshot
        rather than reported, at most `SCHEMA_CHANGE_ATTEMPTS` (5) attempts, with the same
        specifications (a one-shot iterator of columns or indexes is read once, before the
        first attempt). When every attempt conflicts, the WriteConflict raised says how many
        were made, as the schema change conveniences do (`_schema_change`).
        """
        if isinstance(columns, Iterator):
            columns = list(columns)
        if isinstance(indexes, Iterator):
            indexes = list(indexes)
        return self._schema_change(
            f"creating table {name!r}",
            lambda txn: txn.create_table(name, columns, primary_key, indexes),
            conflicts=(
                "another table or index created meanwhile: each creation takes the catalog's "
                f"next object id; or table {name!r} created or dropped meanwhile"
            ),
            hint="create the application's tables and indexes one at a time (or before the "
            "concurrent work that creates others starts), or try again; nothing of the "
            "change was committed",
        )

    def drop_table(self, name: str) -> None:
        with self.transaction() as txn:
            txn.drop_table(name)

    # Schema changes of an existing table, each in a transaction of its own. A write to the
    # table committed after the change's snapshot makes its commit a WriteConflict (an index
    # build missed the write, a rewrite would undo it); the change is then done again on a
    # new snapshot, which holds that write, at most `SCHEMA_CHANGE_ATTEMPTS` times in all.

    def create_index(
        self,
        table: str,
        name: str,
        columns: str | list[str] | tuple[str, ...],
        unique: bool = False,
    ) -> TableDef:
        """`Transaction.create_index` in a transaction of its own, retried on a conflict.

        A write to the table committed while the index is built makes the commit a
        WriteConflict. The call then starts again on a new snapshot, which holds that write,
        and builds the whole index again from the records (a failed attempt leaves nothing:
        its entries were only in its own transaction, rolled back). Each attempt costs a full
        build, about 10 µs a record. At most `SCHEMA_CHANGE_ATTEMPTS` (5) attempts, one after
        the other with no pause; when every one conflicts, the last WriteConflict is raised
        saying how many were made: pause the writes to the table while the index is built
        (a table written all the time never leaves a build that long without a write), or
        try again when it is less busy.
        """
        return self._schema_change(
            f"creating index {name!r} of table {table!r}",
            lambda txn: txn.create_index(table, name, columns, unique),
            hint=_pause_writes_hint("the index is built"),
        )

    def drop_index(self, table: str, name: str) -> TableDef:
        """`Transaction.drop_index` in a transaction of its own, retried on a conflict as
        `create_index` is."""
        return self._schema_change(
            f"dropping index {name!r} of table {table!r}",
            lambda txn: txn.drop_index(table, name),
            hint=_pause_writes_hint("the index is dropped"),
        )

    def add_column(
        self,
        table: str,
        name: str,
        type: ColumnType | str,
        nullable: bool = True,
        default: object = None,
    ) -> TableDef:
        """`Transaction.add_column` in a transaction of its own, retried on a conflict as
        `create_index` is."""
        return self._schema_change(
            f"adding column {name!r} to table {table!r}",
            lambda txn: txn.add_column(table, name, type, nullable, default),
            hint=_pause_writes_hint("the column is added"),
        )

    def drop_column(self, table: str, name: str) -> TableDef:
        """`Transaction.drop_column` in a transaction of its own, retried on a conflict as
        `create_index` is (each attempt rewrites every record again)."""
        return self._schema_change(
            f"dropping column {name!r} of table {table!r}",
            lambda txn: txn.drop_column(table, name),
            hint=_pause_writes_hint("the column is dropped"),
        )

    def _schema_change(
        self,
        what: str,
        change: Callable[[Transaction], TableDef],
        *,
        hint: str,
        conflicts: str = "a write to the table, or another change of its definition",
    ) -> TableDef:
        """Run `change` in a transaction of its own, again on a WriteConflict, at most
        `SCHEMA_CHANGE_ATTEMPTS` times. The final error names the change (`what`), what its
        attempts conflicted with (`conflicts`) and the way out (`hint`)."""
        for attempt in range(1, SCHEMA_CHANGE_ATTEMPTS + 1):
            try:
                with self.transaction() as txn:
                    return change(txn)
            except WriteConflict as exc:
                if attempt == SCHEMA_CHANGE_ATTEMPTS:
                    # A new error rather than the last conflict as is: that one names a key
                    # and says nothing of the attempts before it; it stays the cause.
                    raise WriteConflict(
                        f"{what} gave up after {attempt} attempts: each conflicted with a "
                        f"commit made while it ran ({conflicts}), and each started over on a "
                        f"new snapshot; the last conflict: {exc.detail}",
                        hint=hint,
                    ) from exc
        raise AssertionError("unreachable")

    def table_names(self) -> list[str]:
        with self.transaction() as txn:
            return txn.table_names()

    @property
    def position(self) -> LogPosition:
        """Log position of the last commit applied to this database."""
        return self._published[1]

    @property
    def root(self) -> Node | None:
        return self._published[0]

    @property
    def published(self) -> tuple[Node | None, LogPosition, int]:
        return self._published

    def active_transactions(self) -> int:
        return len(self._active)

    def oldest_snapshot(self) -> LogPosition | None:
        with self._active_lock:
            return min(self._active.values()) if self._active else None

    # ----------------------------------------------------------------- schema cache

    def table_def_from_bytes(self, raw: bytes) -> TableDef:
        """The definition encoded as `raw`, one object per encoding while it stays cached:
        at most `_DEFINITIONS_MAX` of them and `_DEFINITIONS_MAX_BYTES` of encodings (the
        cache is emptied when either is reached). By count alone, a table of many columns
        changed over and over kept every version of its definition (D17)."""
        defs = self._defs
        table_def = defs.get(raw)
        if table_def is None:
            table_def = decode_table_def(raw)
            size = len(raw)
            if len(defs) >= _DEFINITIONS_MAX or self._defs_bytes + size > _DEFINITIONS_MAX_BYTES:
                defs.clear()
                self._defs_bytes = 0
            defs[raw] = table_def
            self._defs_bytes += size
        return table_def

    def shape_for(self, table_def: TableDef) -> tuple[RecordCodec, TableShape]:
        """The codec and derived layout of a table definition, built once per definition.

        Kept per table for the last `_DEFINITIONS_PER_TABLE` definitions built, not only the
        last one: transactions open at once may hold different definitions of one table (one
        begun before an `add_column` committed, one after, and the adding transaction's own),
        and one slot per table made each of them rebuild what the other had just replaced. A
        shape is found by identity (a `Table` requires the very definition object its shape
        was built from; definitions read from the catalog are one object per encoding, see
        `table_def_from_bytes`); the codec by equality (`codec_for`).
        """
        table_id = table_def.table_id
        cached = self._shapes.get(table_id, ())
        for entry in cached:
            if entry[0] is table_def:
                return entry[1], entry[2]
        codec = self.codec_for(table_def)
        shape = TableShape(table_def, self.page_size)
        self._shapes[table_id] = ((table_def, codec, shape), *cached[: _DEFINITIONS_PER_TABLE - 1])
        return codec, shape

    def catalog_cache(self, snapshot: LogPosition) -> dict[str, CachedTable] | None:
        """The cache of table definitions valid for a transaction that reads the snapshot at
        `snapshot` and wrote nothing yet, or None if its snapshot predates the last catalog
        change. Such a transaction may read and fill it (`Transaction.table`).

        Sound because `_catalog` is replaced before `_published` (under the commit lock): a
        snapshot taken after a catalog change finds the new cache; a reader holding the old
        one took its snapshot before that change, when the old cache was still right.
        """
        position, cache = self._catalog
        return cache if snapshot >= position else None

    def codec_for(self, table_def: TableDef) -> RecordCodec:
        """The record codec of a table definition, one per equal definition (definitions are
        equal exactly when they encode alike, defaults included: `schema` invariant 3), for
        the last `_DEFINITIONS_PER_TABLE` definitions of each table (as `shape_for`)."""
        table_id = table_def.table_id
        cached = self._codecs.get(table_id, ())
        for entry in cached:
            if entry[0] is table_def or entry[0] == table_def:
                return entry[1]
        codec = RecordCodec(table_def)
        self._codecs[table_id] = ((table_def, codec), *cached[: _DEFINITIONS_PER_TABLE - 1])
        return codec

    # ----------------------------------------------------------------- commit pipeline

    def end_transaction(self, txn: Transaction) -> None:
        with self._active_lock:
            self._active.pop(txn.id, None)
            self._live.pop(txn.id, None)

    def commit_transaction(self, txn: Transaction, *, lazy: bool) -> LogPosition | None:
        instance = self._instance
        if instance.pid != forks.PID:
            # Before any lock (a forked child may have inherited it held) and before the log:
            # the log and the files are the parent's (`jetstore.io.forks`).
            raise instance.forked_error()
        operations = txn.operations
        if not operations:
            txn._finish_committed(None)
            self.end_transaction(txn)
            if not lazy:
                # A durable commit, even of nothing, returns only once everything it could
                # have seen is durable: lazy commits before it must not be lost after it.
                # Not `needs_flush()`, which is False once the log failed: a lazy commit
                # whose flush failed is lost, and the wait raises the log's failure.
                log = self._instance.log
                seen = log.end_position
                if log.durable_position < seen:
                    self._instance.wait_durable(seen)
            return None
        log = instance.log
        _root, position, plan_epoch = self._published
        if plan_epoch != txn.plan_epoch and position == txn.snapshot_position:
            # Only a checkpoint's plan since the snapshot: build the private tree again on the
            # written snapshot, outside the lock, rather than replay every write under it.
            txn.rebase(plan_epoch)
        txn.prepare_commit()  # the private tree is built outside the commit lock
        ordered = txn.operations_in_key_order() if len(operations) > 1 else None
        with instance.commit_lock:
            instance.check_writable()
            if txn.state is not TransactionState.ACTIVE:
                # Rolled back while it waited for the lock: a detach holding it closed the
                # database (`close_transactions`). Committed anyway, its record followed the
                # DETACH record in the log and the detached file never had it.
                txn._check_active()
            root, position, plan_epoch = self._published
            mutation = txn.mutation
            # Nothing committed since the snapshot (every commit moves the position, even one
            # that leaves the tree as it was), and no checkpoint assigned pages meanwhile.
            fast = (
                position == txn.snapshot_position
                and plan_epoch == txn.plan_epoch
                and mutation is not None
            )
            if fast:
                assert mutation is not None
                new_root, freed = mutation.root, mutation.freed
                absolute, dirtied = txn.dirty_nodes()
                dirty = dirtied if absolute else self.dirty_nodes + dirtied
            else:
                self._check_conflicts(txn)
                self._check_unique(txn, root)
                # The private tree was built on an older root: not kept beside the replay.
                mutation = txn.mutation = None
                replay = Mutation(self.file, root, next_epoch(), [])
                for key, value in operations.items():
                    if value is None:
                        replay.delete(key)
                    else:
                        replay.put(key, value)
                new_root, freed = replay.root, replay.freed
                dirty = self.dirty_nodes + replay.dirtied
            # In key order when at hand (replay sorts runs faster), else as first written.
            if ordered is None:
                payload = encode_commit_changes(self.db_id, txn.id, now_us(), operations)
            else:
                payload = encode_commit_ordered(self.db_id, txn.id, now_us(), *ordered)
            appended = log.records_appended
            end: LogPosition | None = None
            try:
                end = log.append(payload)
                if txn.catalog_written:
                    self._catalog = (end, {})  # before publishing: see `catalog_cache`
                for table_id in txn.dropped_table_ids:
                    # A transaction reading the table from an older snapshot builds them
                    # again if it needs them (a cache); kept, they leaked a table's worth
                    # of codec per dropped table, as ids are never reused.
                    self._shapes.pop(table_id, None)
                    self._codecs.pop(table_id, None)
                # Before publishing: a reader of the new tree finds the index describing it.
                self.file.point_index.advance(root, new_root, operations)
                self._published = (new_root, end, plan_epoch)
                dirtied_bytes = (dirty - self.dirty_nodes) * self.page_size
                self.dirty_nodes = dirty
                if freed:
                    self.file.note_freed(end, freed)
                if len(self._active) > 1 or self._recent_log:
                    self._remember_writes(txn, end, operations.keys())
            except BaseException as exc:
                # Interrupted (KeyboardInterrupt from a signal handler) between the log and
                # the tree: the log holds a commit the published tree or the conflict check
                # may not know. Serving on would lose it at a clean close, or let a later
                # commit overwrite it unchecked: stop accepting updates; reopening replays it.
                # (Every record is appended under the commit lock: the count tells.)
                if log.records_appended != appended:
                    instance.commit_interrupted(txn.id, exc)
                    txn._finish_in_doubt(end)
                raise
            self.commits += 1
            instance.note_commit(len(payload), dirtied_bytes)
            # No longer open, before the lock is free: a close (whose final checkpoint writes
            # this commit) rolls back the transactions still registered, and one that found
            # this one there said ROLLED_BACK of a durable commit.
            self.end_transaction(txn)
        txn._finish_committed(end)
        if not lazy:
            try:
                instance.wait_durable(end)
            except JetError:
                # The flush under this commit failed and failed the instance: the record may
                # or may not be on disk (a partial write), so the outcome is only known after
                # a reopen. (An interrupt while waiting leaves it COMMITTED: the instance
                # completes the flush and serves on.)
                txn.state = TransactionState.IN_DOUBT
                raise
        instance.write_back()  # back-pressure: a checkpoint first when dirty pages are too many
        return end

    def _check_conflicts(self, txn: Transaction) -> None:
        recent = self._recent
        if not recent:
            return
        snapshot = txn.snapshot_position
        for key in txn.operations:
            changed = recent.get(key)
            if changed is not None and changed > snapshot:
                if key == NEXT_OBJECT_ID_KEY:
                    # Both created tables: name the table when both created the same one.
                    key, changed = self._same_table_created(txn, snapshot) or (key, changed)
                self.conflicts += 1
                raise WriteConflict(
                    f"transaction {txn.id} on database {self.name!r} changed "
                    f"{txn.describe_key(key)}, which another transaction committed at log "
                    f"position {changed}, after this transaction's snapshot ({snapshot})",
                    hint="retry the transaction: it was rolled back",
                )
        # A table dropped or re-created after the snapshot: a conflict only for a transaction
        # that wrote under its object ids (those writes would be orphans, or land in the new
        # table unchecked); one that only read it read its snapshot, as snapshot isolation
        # promises, and commits.
        written: set[int] | None = None
        for entry_key, definition in txn.schema_keys.items():
            changed = recent.get(entry_key)
            if changed is None or changed <= snapshot:
                continue
            if written is None:
                written = {int.from_bytes(key[:4], "big") for key in txn.operations}
            objects = {definition.table_id, definition.lv_id, *definition.index_ids}
            if written.isdisjoint(objects):
                continue
            self.conflicts += 1
            raise WriteConflict(
                f"transaction {txn.id} on database {self.name!r} wrote to table "
                f"{definition.name!r}, whose definition another transaction changed (dropped, "
                f"re-created, or an index or column added or dropped) at log position "
                f"{changed}, after this transaction's snapshot ({snapshot})",
                hint="retry the transaction: it was rolled back",
            )
        if txn.redefined:
            self._check_redefined(txn, snapshot)

    def _check_redefined(self, txn: Transaction, snapshot: LogPosition) -> None:
        """A transaction that changed a table's definition conflicts with every write to the
        table committed after its snapshot: its index build did not see that write, or its
        rewrite of the records would undo it.

        Every commit made while this transaction was open is in `_recent_log` (it was open,
        so the commit saw another open transaction and kept its keys) and stays there while
        this snapshot is open: the newest entries are searched back to the snapshot. This
        costs the schema change's commit alone; other commits do nothing more.
        """
        owners: dict[int, TableDef] = {}
        for definition in txn.redefined.values():
            for object_id in (definition.table_id, definition.lv_id, *definition.index_ids):
                owners[object_id] = definition
        for position, keys in reversed(self._recent_log):
            if position <= snapshot:
                break
            for key in keys:
                owner = owners.get(int.from_bytes(key[:4], "big"))
                if owner is None:
                    continue
                self.conflicts += 1
                raise WriteConflict(
                    f"transaction {txn.id} on database {self.name!r} changed the definition "
                    f"of table {owner.name!r}, to which another transaction committed a "
                    f"write at log position {position}, after this transaction's snapshot "
                    f"({snapshot}): the change did not see it",
                    hint="retry the transaction (it was rolled back): it then sees every "
                    "committed write",
                )

    def _same_table_created(
        self, txn: Transaction, snapshot: LogPosition
    ) -> tuple[bytes, LogPosition] | None:
        """A table definition entry `txn` wrote that another commit changed after `snapshot`."""
        for key in txn.operations:
            if key.startswith(TABLE_ENTRY_PREFIX):
                changed = self._recent.get(key)
                if changed is not None and changed > snapshot:
                    return key, changed
        return None

    def _check_unique(self, txn: Transaction, root: Node | None) -> None:
        operations = txn.operations
        for prefix, own_keys in txn.unique_checks.items():
            for own_key in own_keys:
                if operations.get(own_key) is None:
                    continue  # the entry was removed again later in the transaction
                for key, _ in iterate(self.file, root, prefix, tuple_prefix_stop(prefix)):
                    if key == own_key or (key in operations and operations[key] is None):
                        continue
                    raise KeyDuplicate(
                        f"a concurrent transaction committed {txn.describe_key(key)} in "
                        f"database {self.name!r} first; this transaction wrote "
                        f"{txn.describe_key(own_key)}, the same key of that unique index",
                        hint="the transaction was rolled back; retry it",
                    )

    def _remember_writes(
        self, txn: Transaction, position: LogPosition, keys: Iterable[bytes]
    ) -> None:
        """Keep written keys while an older snapshot could still commit over them."""
        if len(self._active) <= 1 and not self._recent_log:
            return  # nobody else could conflict, and nothing is kept from before
        with self._active_lock:
            others = [p for tid, p in self._active.items() if tid != txn.id]
        recent, log = self._recent, self._recent_log
        if others:
            key_list = list(keys)
            for key in key_list:
                recent[key] = position
            log.append((position, key_list))
        oldest = min(others) if others else None
        while log and (oldest is None or log[0][0] <= oldest):
            old_position, old_keys = log.popleft()
            for key in old_keys:
                if recent.get(key) == old_position:
                    del recent[key]

    # ----------------------------------------------------------------- recovery

    def apply_replayed(self, payload: bytes, start: LogPosition, end: LogPosition) -> None:
        """Take the committed record at `start` (ending at `end`) found in the log (recovery;
        single-threaded). An undecodable record is named by `start`, as `logs verify` and
        `dump logs --records` name it.

        Changes are gathered (last write per key wins, in log order) and applied in key order
        by `finish_replay`, or earlier when a lot has gathered: far cheaper than one
        copy-on-write mutation per record, and the resulting tree holds the same entries.
        """
        changes = self._replay
        before = len(changes)
        # Into a scratch map first: a record that turns out undecodable halfway (recovery with
        # accept_data_loss then stops before it) must leave none of its operations behind.
        record, size = gather_replayable(payload, start, self.page_size, self.name)
        changes.update(record)
        self._replay_bytes += size + 32 * (len(changes) - before)
        self._replay_end = end
        if self._replay_bytes >= _REPLAY_BATCH_BYTES:
            self.finish_replay()

    def finish_replay(self) -> None:
        """Apply the gathered replayed changes to the tree and publish it."""
        changes, end = self._replay, self._replay_end
        if not changes or end is None:
            return
        root, _position, plan_epoch = self._published
        freed: list[int] = []
        tree_bytes = self.file.page_count * self.page_size if root is not None else 0
        if self._replay_bytes * 4 >= tree_bytes:
            # Many changes relative to the tree: rebuild it bottom-up in one streaming merge
            # (about 1 µs per entry) instead of copying paths change by change.
            # Keys from a dict, sorted: unique and ascending, as merge_sorted_columns needs.
            # The entries lie in memory in log order, not key order: the merge makes the new
            # leaves' page payloads as it builds them (`images`), while a batch of entries
            # is in the CPU caches, so the checkpoint that ends recovery writes them without
            # another pass over the entries. The epoch is this merge's alone, as `images`
            # requires.
            keys = sorted(changes)
            values = list(map(changes.__getitem__, keys))
            new_root = merge_sorted_columns(
                self.file, root, keys, values, next_epoch(), freed, images=True
            )
            self.dirty_nodes = count_dirty_nodes(new_root)
        else:
            mutation = Mutation(self.file, root, next_epoch(), freed)
            for key in sorted(changes):
                value = changes[key]
                if value is None:
                    mutation.delete(key)
                else:
                    mutation.put(key, value)
            new_root = mutation.root
            self.dirty_nodes += mutation.dirtied
        self.file.point_index.reset(new_root)
        self._published = (new_root, end, plan_epoch)
        self.file.note_freed(end, freed)
        self._replay = {}
        self._replay_bytes = 0

    def rebase_position(self, position: LogPosition) -> None:
        """After recovery with data loss the database starts over on a new log stream."""
        root, _position, plan_epoch = self._published
        self._published = (root, position, plan_epoch)

    def bump_plan_epoch(self) -> None:
        """A checkpoint assigned pages to every dirty node: transactions that copied nodes
        before must build their tree again (`Transaction.rebase`) or replay."""
        root, position, plan_epoch = self._published
        self._published = (root, position, plan_epoch + 1)
        self.dirty_nodes = 0

    def _refuse_closed(self) -> None:
        instance = self._instance
        instance.check_open()  # the instance closed (meanwhile): says so
        raise DatabaseNotFound(
            f"database {self.name!r} was detached from instance '{instance.directory}'; this "
            "Database object can no longer be used",
            hint="attach the file again (Instance.attach) and use the Database it returns",
            path=self.file.path,
        )

    @property
    def closed(self) -> bool:
        """True once its instance closed it (or it was detached)."""
        return self._closed

    def close_transactions(self) -> None:
        """Roll back every transaction still open (the instance closes, or the database is
        detached); none begins after this."""
        with self._active_lock:
            self._closed = True
            live = [ref() for ref in self._live.values()]
            self._active.clear()
            self._live.clear()
        for txn in live:
            if txn is not None:
                txn._abort()
