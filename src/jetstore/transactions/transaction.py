"""Transactions: a snapshot to read, a private write set, and the commit pipeline's input.

Lifecycle (one state per transaction, checked by every operation):

    ACTIVE --commit()--> COMMITTED          (changes logged, published, durable unless lazy)
       |  \\--rollback() / exception in `with` / commit failure--> ROLLED_BACK
       |  \\--commit failure after its record reached the log--> IN_DOUBT
       \\--write set over its memory bound--> ROLLED_BACK (VersionStoreOutOfMemory)

A schema change (`create_index`, `drop_index`, `add_column`, `drop_column`) and `drop_table`
measure what they would write before writing it: over the bound they raise
VersionStoreOutOfMemory and the transaction stays ACTIVE, as it was (its other changes kept,
the change not begun).

IN_DOUBT is the honest answer when a commit fails after its record was appended to the log
and the instance fails with it (an interrupt between the append and the publication, or a
failed log flush under a durable commit): whether the commit survives depends on whether the
record reaches the disk before the process ends, so only reopening tells. `commit_position`
then names the record (when known), so the application can look for its effect after the
reopen. A commit interrupted while it waits for its flush on an instance that goes on serving
stays COMMITTED: its flush is completed and the changes are visible, as a lazy commit's are.

Invariants:
- A transaction reads the database as of its start (its snapshot root) plus its own writes;
  it never blocks and is never blocked by other transactions.
- Its writes go to a private copy-on-write mutation of its snapshot: nothing is shared, logged
  or written to a page file before commit, so a rollback just drops the private tree (the log
  is redo-only: no undo is ever needed).
- `operations` records, per key, the last value written (or None for a delete): exactly the
  B+tree operations the commit record will carry. Point reads look there first, then in the
  snapshot; the private tree is brought up to date (in key order, in bulk when the writes are
  many) only when a range read or the commit needs it. Until then the pending writes are
  `operations` itself. A unique index's check (`unique_entries`) is not such a range read
  while every entry put under a unique index is registered in `unique_checks` (by its index
  key); a write of the raw API (``raw=True``) or an index built here may not be, and the
  check then reads the private tree.
- The memory bound (`max_transaction_bytes`) counts what the transaction holds: key + value
  + 16 bytes for the latest write of each key in `operations`, not every write made.
- The private tree is built on the snapshot's nodes as they were: once a checkpoint assigned
  pages to the snapshot's dirty nodes (its plan epoch moved), the commit builds it again from
  `operations` (`rebase`, when nothing was committed since the snapshot) or replays them.
  Its dirty nodes are counted (`dirty_nodes`) for the database's dirty-page bound.
- An iterator over the private tree stays valid while the transaction keeps writing: the
  first write after an iterator (or a `frozen` view) was handed out moves the private tree to
  a new epoch, so the nodes the iterator holds are copied, not changed in place. An iterator
  yields the tree as it was when it was created.
- `catalog_written` is set once any write below the first object id (a catalog entry) has
  reached the private tree; every write does before the commit (`prepare_commit`), so the
  commit knows whether the database's cached table definitions stay valid.
- Nothing is read for a finished transaction: every read, including the next step of an
  iterator handed out before, raises `NotInTransaction` (its snapshot's pages may be reused
  once it ended). A transaction still open when its instance closes is rolled back then
  (`Database.close_transactions`), and says so. Once ended, neither it nor its tables, views
  or iterators hold a node of its snapshot or private tree (`_release_trees`): an
  application keeping one of them does not keep old tree versions in memory.
- The raw tree API (`get`, `put`, `delete`, `iterate`, `chunks`, `items`, and a `frozen`
  view's reads) takes keys and bounds as bytes (bytes-like values are converted); anything
  else is `InvalidParameter`, never a `TypeError` from inside the tree.
"""

from __future__ import annotations

import enum
import functools
import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from jetstore.errors import (
    InvalidParameter,
    NotInTransaction,
    NullInvalid,
    ObjectNotFound,
    TableDuplicate,
    VersionStoreOutOfMemory,
)
from jetstore.format.positions import LogPosition
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    MAX_KEY_SIZE,
    Mutation,
    Node,
    count_dirty_nodes,
    iterate,
    iterate_chunks,
    lookup,
    max_entry_size,
    merge_sorted_columns,
)
from jetstore.pages.collector import building_in_bulk
from jetstore.tables.catalog import (
    FIRST_OBJECT_ID,
    NEXT_OBJECT_ID_KEY,
    TABLE_ENTRY_PREFIX,
    chunked_table_def,
    decode_next_object_id,
    describe_key,
    encode_next_object_id,
    join_table_def_chunks,
    object_prefix,
    table_def_chunk_prefix,
    table_def_entries,
    table_entry_key,
    table_name_from_key,
)
from jetstore.tables.keys import prefix_successor
from jetstore.tables.schema import (
    Column,
    ColumnType,
    IndexDef,
    TableDef,
    encode_table_def,
    make_table_def,
)
from jetstore.tables.table import OPERATION_OVERHEAD, Table

if TYPE_CHECKING:
    from jetstore.instance.database import Database

_EPOCHS = itertools.count(1)
_OP_OVERHEAD = OPERATION_OVERHEAD  # bytes charged per operation on top of key and value


def next_epoch() -> int:
    return next(_EPOCHS)


class TransactionState(enum.Enum):
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled back"
    IN_DOUBT = "in doubt"


_ACTIVE = TransactionState.ACTIVE
_ABSENT = object()
_BULK_MIN = 4096  # gathered writes below this are applied by path copies
_CATALOG_END = object_prefix(FIRST_OBJECT_ID)  # every catalog key sorts below it
_CATALOG_CACHE_MAX = 256  # cached table definitions per database (it is cleared when full)
_max_entry_size = functools.cache(max_entry_size)


class Transaction:
    """One transaction on one database. Use it as a context manager:

    ``with db.transaction() as txn: txn.table("t").insert({...})`` commits on normal exit and
    rolls back if the block raises.
    """

    # Slots: a single-row commit creates one transaction and reads its attributes a few dozen
    # times; slots make both cheaper than an instance dict.
    __slots__ = (
        "__weakref__",
        "_applied_bytes",
        "_bytes",
        "_db",
        "_dirty",
        "_dirty_absolute",
        "_file",
        "_iterators_out",
        "_key_order",
        "_limit",
        "_max_entry",
        "_pending",
        "_tables",
        "_threshold",
        "_unregistered",
        "_views",
        "catalog_written",
        "commit_position",
        "dropped_table_ids",
        "id",
        "mutation",
        "operations",
        "page_size",
        "plan_epoch",
        "redefined",
        "schema_keys",
        "snapshot_position",
        "snapshot_root",
        "state",
        "unique_checks",
    )

    def __init__(
        self,
        database: Database,
        transaction_id: int,
        snapshot_root: Node | None,
        snapshot_position: LogPosition,
        plan_epoch: int,
    ) -> None:
        self._db = database
        self._file = database.file
        self.id = transaction_id
        self.snapshot_root = snapshot_root
        self.snapshot_position = snapshot_position
        self.plan_epoch = plan_epoch
        self.state = TransactionState.ACTIVE
        self.page_size = database.page_size
        self.mutation: Mutation | None = None
        self.operations: dict[bytes, bytes | None] = {}
        # Writes not yet applied to `mutation` (applied in key order when a range read or the
        # commit needs the tree). None until the first application: then every operation is
        # pending, and `operations` itself serves (one dict store per write, not two).
        self._pending: dict[bytes, bytes | None] | None = None
        self._applied_bytes = 0  # `_bytes` when the pending writes were last applied
        # Every operation's key in key order, from an application by path copies that covered
        # all of `operations`: see `operations_in_key_order`.
        self._key_order: list[bytes] | None = None
        self._max_entry = _max_entry_size(database.page_size)
        # Unique index entries the table layer wrote (the index key's prefix -> the entry
        # keys written under it), checked again at commit against what others committed since
        # the snapshot: once an entry, however often it was written (a value toggled back and
        # forth). Keyed by prefix so that a write's own check finds them without a range read
        # of the private tree (`unique_entries`).
        self.unique_checks: dict[bytes, tuple[bytes, ...]] = {}
        # Set once an entry may have been put outside the table layer's writes (the raw API,
        # an index built by `create_index`): one under a unique index would be missing from
        # `unique_checks`, so `unique_entries` then reads the private tree.
        self._unregistered = False
        # The catalog entry of every table this transaction opened, and its definition as
        # read: a commit that wrote under the table's object ids conflicts with a concurrent
        # drop or re-creation of it (a read alone does not: see `Database._check_conflicts`).
        self.schema_keys: dict[bytes, TableDef] = {}
        # The catalog entry of every table whose definition this transaction changed (an
        # index or column added or dropped), and its definition before the first change: the
        # commit conflicts with any write to the table committed after the snapshot (a new
        # index would miss it, a rewrite would undo it: see `Database._check_conflicts`).
        self.redefined: dict[bytes, TableDef] = {}
        # The table id of every table this transaction dropped: once it commits, the
        # database forgets their codecs (ids are never reused, so nothing else would).
        self.dropped_table_ids: list[int] = []
        # Set when a write below the first object id (a catalog entry) reaches the private
        # tree: the commit then invalidates the database's cache of table definitions.
        self.catalog_written = False
        self.commit_position: LogPosition | None = None
        # Bytes of every write so far, each key + value + `_OP_OVERHEAD` (only grows: see
        # `operations_in_key_order`). What the transaction holds is less when writes replaced
        # its own earlier ones: it is counted (`_held`) only once `_bytes` passes
        # `_threshold`, the bound plus what the last count found replaced, so that a write
        # pays one addition and one comparison, not a dict lookup for the value it replaces.
        self._bytes = 0
        self._limit = database.max_transaction_bytes
        self._threshold = self._limit
        self._iterators_out = False
        self._tables: dict[str, Table] = {}
        # Every frozen view and guarded iterator handed out that is still alive: each holds
        # nodes of this transaction's trees, which it lets go when the transaction ends.
        self._views: weakref.WeakSet[FrozenView | _Guarded[Any]] | None = None
        # Dirty nodes of the private tree beyond the snapshot's, from mutations replaced
        # since (the current one counts its own: `dirty_nodes`); after a bulk merge rebuilt
        # the tree, all of its dirty nodes (`_dirty_absolute`).
        self._dirty = 0
        self._dirty_absolute = False

    # ----------------------------------------------------------------- state

    def _check_active(self) -> None:
        if self.state is not TransactionState.ACTIVE:
            if self._db.closed and self.state is TransactionState.ROLLED_BACK:
                raise NotInTransaction(
                    f"transaction {self.id} on database {self._db.name!r} was rolled back: "
                    "its instance was closed (or the database detached) while it was open",
                    hint="commit or roll back every transaction before closing the instance; "
                    "open the instance again and start a new transaction",
                )
            if self.state is TransactionState.IN_DOUBT:
                where = (
                    f"ending at log position {self.commit_position}"
                    if self.commit_position is not None
                    else "at a log position not known"
                )
                raise NotInTransaction(
                    f"transaction {self.id} is in doubt: its commit record ({where}) was "
                    "handed to the log, then the instance failed",
                    hint="close the instance and open it again: recovery replays the log, and "
                    "the commit is there if its record reached the disk",
                )
            raise NotInTransaction(
                f"transaction {self.id} is {self.state.value}; start a new one",
                hint="a transaction can be used only until it commits or rolls back",
            )

    @property
    def is_active(self) -> bool:
        return self.state is TransactionState.ACTIVE

    @property
    def database(self) -> Database:
        return self._db

    @property
    def size(self) -> int:
        """Bytes of private changes held (what the memory bound is checked against): key +
        value + 16 bytes for the latest write of each key (counted: a pass over them)."""
        return self._held()

    def _held(self) -> int:
        """What `size` says, counted now; moves `_threshold` to where the bound is reached
        by the writes to come if none of them replaces another."""
        operations = self.operations
        held = (
            sum(map(len, operations))
            + sum(map(len, filter(None, operations.values())))
            + _OP_OVERHEAD * len(operations)
        )
        self._threshold = self._limit + self._bytes - held
        return held

    # ----------------------------------------------------------------- TreeView

    def get(self, key: bytes, fill: bool = True) -> bytes | None:
        """The value of `key` in this transaction's view. ``fill=False``: a one-off probe
        (`contains`), which leaves the point-read index and the leaf's dict alone."""
        if self.state is not _ACTIVE:
            self._check_active()
        if type(key) is not bytes:
            key = _raw_key(key)
        # The transaction's view is its snapshot with `operations` applied: a point read needs
        # no private tree, so writes can be gathered and applied in bulk (see `_apply_pending`).
        operations = self.operations
        if operations:
            value = operations.get(key, _ABSENT)
            if value is not _ABSENT:
                return value  # type: ignore[return-value]
        return self._file.lookup(self.snapshot_root, key, fill)

    def contains(self, key: bytes) -> bool:
        """``get(key) is not None`` for a write's duplicate check: a probe of a key that is
        usually absent, read once. It neither fills the point-read index nor gives the leaf
        an `index` dict (`DatabaseFile.lookup` with ``fill=False``): filling them there made
        a load of new records index a leaf per insert, work and memory no read asked for."""
        return self.get(key, fill=False) is not None

    def iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Entries with ``start <= key < stop`` (None: unbounded) as of this call, lazily."""
        start, stop = _raw_bounds(start, stop)
        return self.frozen().iterate(start, stop, reverse)

    def chunks(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """`iterate`'s entries a leaf at a time, as (keys, values) lists."""
        start, stop = _raw_bounds(start, stop)
        return self.frozen().chunks(start, stop, reverse)

    def check_active(self) -> None:
        """Raise `NotInTransaction` unless the transaction is active."""
        if self.state is not _ACTIVE:
            self._check_active()

    @property
    def transaction(self) -> Transaction:
        return self

    @property
    def gathering(self) -> bool:
        """Whether writes are gathered that a range read (`items`, `iterate`, `frozen`)
        would first apply to the private tree; point reads take them as they are."""
        return bool(self.operations if self._pending is None else self._pending)

    def items(self, start: bytes | None, stop: bytes | None) -> list[tuple[bytes, bytes]]:
        """Entries with ``start <= key < stop``, read at once (no iterator stays out)."""
        self._check_active()
        start, stop = _raw_bounds(start, stop)
        return list(iterate(self._db.file, self._current_root(), start, stop))

    def frozen(self) -> FrozenView:
        """A read-only view of the transaction's tree as it is now, unaffected by later writes."""
        self._check_active()
        root = self._current_root()
        if self.mutation is not None:
            self._iterators_out = True
        view = FrozenView(self, root)
        self._track(view)
        return view

    def _track(self, view: FrozenView | _Guarded[Any]) -> None:
        """Let `view` go of its nodes when the transaction ends (see `_release_trees`)."""
        views = self._views
        if views is None:
            views = self._views = weakref.WeakSet()
        views.add(view)

    def _release_trees(self) -> None:
        """The transaction ended: drop every reference it, its tables and the views and
        iterators it handed out hold to its snapshot and private tree, so that an
        application keeping any of them (a `with` block's name) does not keep old tree
        versions alive. Each of them raises `NotInTransaction` before reading anyway."""
        self.snapshot_root = None
        self.mutation = None
        for table in self._tables.values():
            table.release_snapshot()
        self._tables.clear()
        views = self._views
        if views is not None:
            self._views = None
            for view in list(views):
                view.release()

    def _current_root(self) -> Node | None:
        self._apply_pending()
        mutation = self.mutation
        return self.snapshot_root if mutation is None else mutation.root

    def _apply_pending(self) -> None:
        """Bring the private tree up to date with the gathered writes, in key order.

        Many writes relative to the tree (a bulk load) rebuild it in one streaming merge
        (about 1 µs an entry); a few are applied by copy-on-write path copies.
        """
        whole = self._pending is None
        pending = self.operations if whole else self._pending
        if not pending:
            return
        store = self._db.file
        mutation = self.mutation
        if mutation is None:
            mutation = self.mutation = Mutation(store, self.snapshot_root, next_epoch(), [])
        elif self._iterators_out:
            # Nodes an iterator may still hold must not change: continue in a new epoch.
            self._dirty += mutation.dirtied
            mutation = self.mutation = Mutation(store, mutation.root, next_epoch(), mutation.freed)
            self._iterators_out = False
        keys = sorted(pending)
        if keys[0] < _CATALOG_END:
            self.catalog_written = True  # every write passes here before its commit
        if len(keys) >= _BULK_MIN and (self._bytes - self._applied_bytes) * 4 >= (
            store.page_count * store.page_size if mutation.root is not None else 0
        ):
            epoch = next_epoch()
            freed = mutation.freed
            # The merge allocates hundreds of thousands of lists with no cycles: the cyclic
            # collector pauses for it (`building_in_bulk`).
            with building_in_bulk():
                # Keys from a dict, sorted: unique and ascending; `put` checked every entry.
                values = list(map(pending.__getitem__, keys))
                root = merge_sorted_columns(store, mutation.root, keys, values, epoch, freed)
            mutation = self.mutation = Mutation(store, root, epoch, freed)
            self._dirty, self._dirty_absolute = count_dirty_nodes(root), True
            # Not kept for the commit record: encoding a bulk load in key order would visit
            # its entries in an order random in memory (measured ~0.5 µs a row more).
            whole = False
        else:
            put, delete = mutation.put, mutation.delete
            for key in keys:
                value = pending[key]
                if value is None:
                    delete(key)
                else:
                    put(key, value)
        self._pending = {}
        self._applied_bytes = self._bytes
        self._key_order = keys if whole else None

    def prepare_commit(self) -> None:
        """Build the private tree before the commit lock is taken (the fast path publishes it)."""
        self._apply_pending()

    def rebase(self, plan_epoch: int) -> None:
        """A checkpoint assigned pages to the snapshot's dirty nodes, and nothing was committed
        since the snapshot: drop the private tree (built on them while they were dirty) so
        that `prepare_commit` builds it again from `operations`, as for a transaction that
        began after that checkpoint's plan (whose snapshot is this one, now written). The
        commit can then take the fast path instead of replaying every write under the commit
        lock beside the private tree, which for a bulk load doubled its memory and held up
        every other committer meanwhile.
        """
        self.plan_epoch = plan_epoch
        if self.mutation is None:
            return  # nothing applied yet: every write is still pending
        self.mutation = None
        self._pending = None  # every operation is pending again
        self._applied_bytes = 0
        self._key_order = None
        self._iterators_out = False  # they hold nodes of the dropped tree: never changed now
        self._dirty, self._dirty_absolute = 0, False

    def dirty_nodes(self) -> tuple[bool, int]:
        """(absolute, count): how many more dirty nodes the private tree has than its
        snapshot, or, when `absolute`, how many it has (a bulk merge rebuilt it)."""
        mutation = self.mutation
        count = self._dirty + (mutation.dirtied if mutation is not None else 0)
        return self._dirty_absolute, count

    def operations_in_key_order(self) -> tuple[list[bytes], list[bytes | None]] | None:
        """Every operation's key and value, in key order, or None if that is not at hand.

        At hand when one application of the gathered writes covered all of `operations` and
        nothing was written since: every write adds to `_bytes`, which nothing lowers, and
        `operations` never loses a key, so unchanged `_bytes` means unchanged keys and
        values.
        """
        keys = self._key_order
        if keys is None or self._bytes != self._applied_bytes:
            return None
        return keys, list(map(self.operations.__getitem__, keys))

    def _charge(self, amount: int) -> None:
        self._bytes += amount
        if self._bytes <= self._threshold:
            return
        size = self._held()
        if size > self._limit:
            self._abort()
            raise VersionStoreOutOfMemory(
                f"transaction {self.id} holds {size} bytes of changes, more than its bound of "
                f"{self._limit} bytes; it was rolled back and left nothing behind",
                hint="split the work into smaller transactions, or open the instance with a "
                "larger max_transaction_bytes",
            )

    def put(self, key: bytes, value: bytes, raw: bool = True) -> None:
        """Write `value` under `key`. ``raw=False``: a write of the table layer, which
        registers its unique index entries (`add_unique_check`), or of a catalog entry."""
        if self.state is not _ACTIVE:
            self._check_active()
        if raw:
            self._unregistered = True
        if (
            type(key) is not bytes
            or type(value) is not bytes
            or len(key) > MAX_KEY_SIZE
            or len(key) + len(value) + LEAF_ENTRY_OVERHEAD > self._max_entry
        ):
            # Checked now, not when the gathered writes are applied, so the caller sees the
            # B+tree's own error (InvalidParameter) for an entry it would refuse.
            Mutation(self._db.file, None, next_epoch(), []).put(key, value)
            key, value = bytes(key), bytes(value)
        self.operations[key] = value
        pending = self._pending
        if pending is not None:
            pending[key] = value
        self._bytes += len(key) + len(value) + _OP_OVERHEAD
        if self._bytes > self._threshold:
            self._charge(0)

    def put_new(self, key: bytes, value: bytes, raw: bool = True) -> bool:
        """`put` unless `key` is present (then False, and nothing changes)."""
        if self.state is not _ACTIVE:
            self._check_active()
        if raw:
            self._unregistered = True
        size = len(key) + len(value)
        if (
            type(key) is not bytes
            or type(value) is not bytes
            or len(key) > MAX_KEY_SIZE
            or size + LEAF_ENTRY_OVERHEAD > self._max_entry
        ):
            Mutation(self._db.file, None, next_epoch(), []).put(key, value)  # as `put` does
            key, value = bytes(key), bytes(value)
        operations = self.operations
        current = operations.get(key, _ABSENT)
        if current is _ABSENT:
            if self._file.lookup(self.snapshot_root, key, fill=False) is not None:
                return False
        elif current is not None:
            return False
        operations[key] = value
        pending = self._pending
        if pending is not None:
            pending[key] = value
        self._bytes += size + _OP_OVERHEAD
        if self._bytes > self._threshold:
            self._charge(0)
        return True

    def delete(self, key: bytes) -> None:
        self._check_active()
        if type(key) is not bytes:
            key = _raw_key(key)
        operations = self.operations
        current = operations.get(key, _ABSENT)
        if current is None:
            return  # deleted already
        # A key only this transaction wrote keeps its delete (None) all the same: the
        # commit writes it, so a concurrent writer of the key conflicts with it.
        if current is _ABSENT and self._file.lookup(self.snapshot_root, key) is None:
            return
        operations[key] = None
        pending = self._pending
        if pending is not None:
            pending[key] = None
        self._charge(len(key) + _OP_OVERHEAD)

    def add_unique_check(self, prefix: bytes, own_key: bytes) -> None:
        checks = self.unique_checks
        own = checks.get(prefix)
        if own is None:
            checks[prefix] = (own_key,)
        elif own_key not in own:
            checks[prefix] = (*own, own_key)

    def unique_entries(self, prefix: bytes, stop: bytes) -> list[tuple[bytes, bytes]]:
        """`items(prefix, stop)` for the entries of one key of a unique index (`prefix`: the
        index key, `stop`: its `tuple_prefix_stop`), without applying gathered writes to the
        private tree: the snapshot's entries there, less those this transaction deleted or
        with the value it wrote, plus the entries it put there, all of which the table layer
        registered (`unique_checks`) unless something was put outside it. A range read of
        the view would apply every gathered write by path copies of its own, one insert at a
        time, where the commit would have merged them in bulk."""
        if self._unregistered or not self.gathering:
            return self.items(prefix, stop)
        self._check_active()
        operations = self.operations
        found: dict[bytes, bytes] = {}
        for key, value in iterate(self._file, self.snapshot_root, prefix, stop):
            own = operations.get(key, value)
            if own is not None:
                found[key] = own
        for key in self.unique_checks.get(prefix, ()):
            own = operations[key]
            if own is not None:
                found[key] = own
        return sorted(found.items())

    # ----------------------------------------------------------------- tables

    def table(self, name: str) -> Table:
        """The table `name` as this transaction sees it (`ObjectNotFound` if absent)."""
        if self.state is not _ACTIVE:
            self._check_active()
        if type(name) is not str and not isinstance(name, str):
            # No table has such a name, and hashing it would run the caller's code (a list
            # is unhashable, a datetime's hash asks its tzinfo).
            self._no_table(name)
        table = self._tables.get(name)
        if table is not None:
            return table
        # Before its first write a transaction sees exactly its snapshot's catalog, which the
        # database caches for every snapshot since the last catalog change: no tree lookup
        # and no decoding for the table of a single-row commit.
        cache = (
            self._db.catalog_cache(self.snapshot_position)
            if not self.operations and type(name) is str
            else None
        )
        if cache is not None:
            entry = cache.get(name)
            if entry is not None:
                entry_key, table_def, codec, shape = entry
                table = Table(
                    self, table_def, codec, shape, (self, self._file.lookup, self._file.point_index)
                )
                self._tables[name] = table
                self.schema_keys[entry_key] = table_def
                return table
        raw = self._read_table_def(name)
        if raw is None:
            self._no_table(name)
        table_def = self._db.table_def_from_bytes(raw)
        codec, shape = self._db.shape_for(table_def)
        table = Table(
            self, table_def, codec, shape, (self, self._file.lookup, self._file.point_index)
        )
        self._tables[name] = table
        # Writing through this table relies on its definition: a concurrent drop or
        # re-creation committed first makes this transaction's commit a WriteConflict.
        entry_key = table_entry_key(name)
        self.schema_keys[entry_key] = table_def
        if cache is not None:
            if len(cache) >= _CATALOG_CACHE_MAX:
                cache.clear()
            cache[name] = (entry_key, table_def, codec, shape)
        return table

    def _no_table(self, name: object) -> NoReturn:
        raise ObjectNotFound(
            f"database {self._db.name!r} has no table {name!r}",
            hint="create it with Database.create_table, or check the name "
            f"(tables: {', '.join(self.table_names()) or 'none'})",
        )

    def describe_key(self, key: bytes) -> str:
        """The tree entry `key` in words (its table, index and key values when it belongs to
        a table this transaction opened), for error messages."""
        return describe_key(key, self.schema_keys.values())

    def _read_table_def(self, name: str) -> bytes | None:
        """The encoded definition of table `name` (joined from its chunks), or None."""
        raw = self.get(table_entry_key(name))
        if raw is None or chunked_table_def(raw) is None:
            return raw
        prefix = table_def_chunk_prefix(name)
        chunks = [value for _key, value in self.items(prefix, prefix_successor(prefix))]
        return join_table_def_chunks(name, raw, chunks)

    def table_names(self) -> list[str]:
        return [
            table_name_from_key(key)
            for key, _ in self.items(TABLE_ENTRY_PREFIX, prefix_successor(TABLE_ENTRY_PREFIX))
        ]

    def create_table(
        self,
        name: str,
        columns: object,
        primary_key: object,
        indexes: object = (),
    ) -> TableDef:
        """Create a table in this transaction (visible to others once it commits).

        A primary key encodes to at most `MAX_PRIMARY_KEY_SIZE` (1014) bytes. Every index
        entry holds the record's primary key as well as the index key, which together may
        take 1020 bytes with the default 8 KiB pages (fewer on 4 KiB pages): a table with
        indexes needs primary keys well below the limit (at 1014 bytes not even an int
        index key fits), or its inserts fail with `KeyTooBig`, which says so.

        Every creation takes the catalog's next object ids: of two transactions creating
        tables (the same name or not) at once, the later commit is a `WriteConflict`
        (`Database.create_table` retries it, and then finds a table of the same name there).
        """
        self._check_active()
        if not isinstance(name, str):
            raise InvalidParameter(f"table name must be a string, got {name!r}")
        if self.get(table_entry_key(name)) is not None:
            raise TableDuplicate(f"database {self._db.name!r} already has a table {name!r}")
        index_list = _index_list(indexes)
        next_id = decode_next_object_id(self.get(NEXT_OBJECT_ID_KEY))
        table_id, lv_id = next_id, next_id + 1
        index_ids = tuple(range(next_id + 2, next_id + 2 + len(index_list)))
        table_def = make_table_def(
            name,
            columns,  # type: ignore[arg-type]
            primary_key,  # type: ignore[arg-type]
            index_list,
            table_id=table_id,
            lv_id=lv_id,
            index_ids=index_ids,
        )
        self.put(NEXT_OBJECT_ID_KEY, encode_next_object_id(next_id + 2 + len(index_list)), False)
        for key, value in table_def_entries(name, encode_table_def(table_def), self.page_size):
            self.put(key, value, False)
        return table_def

    def drop_table(self, name: str) -> None:
        """Remove a table and all its records, indexes and long values.

        Transactions with older snapshots go on reading the table as of their snapshot; one
        of them that writes to it fails its commit with `WriteConflict` (its writes would be
        orphans), one that only read it commits its other writes. A table whose entries
        exceed what is left of the transaction's bound is VersionStoreOutOfMemory before the
        first delete, and the transaction stays as it was.
        """
        table = self.table(name)
        definition = table.definition
        entry_key = table_entry_key(name)
        ranges = [
            (prefix, prefix_successor(prefix))
            for prefix in (
                *(
                    object_prefix(object_id)
                    for object_id in (definition.table_id, definition.lv_id, *definition.index_ids)
                ),
                table_def_chunk_prefix(name),
            )
        ]
        # Checked before the first delete, as a schema change is: over the bound, the
        # transaction stays as it was (and usable) rather than rolling back.
        budget = self._limit - self._held() - (len(entry_key) + _OP_OVERHEAD)
        keys = self._keys_within(ranges, budget)
        if keys is None:
            # The generic hint (smaller transactions) cannot apply to one drop: say what does.
            raise VersionStoreOutOfMemory(
                f"dropping table {name!r} deletes each of its entries in this transaction, "
                f"more than the {max(budget, 0)} bytes left under its bound of {self._limit} "
                "bytes; nothing was written and the transaction is still usable",
                hint="delete the table's records in several smaller transactions first, then "
                "drop it; or open the instance with a larger max_transaction_bytes"
                + self._own_changes_hint("drop the table"),
            )
        keys.append(entry_key)
        self._delete_existing(keys)
        # The drop deletes the entries its snapshot holds: a write to the table committed
        # after the snapshot is not among them and would stay behind, an orphan under the
        # dropped object ids. So the commit conflicts with it, as a schema change does
        # (`Database._check_redefined`).
        self.redefined.setdefault(entry_key, definition)
        self._tables.pop(name, None)
        self.dropped_table_ids.append(definition.table_id)
        table.mark_dropped()

    # ----------------------------------------------------------------- schema changes
    #
    # Each changes an existing table's definition in this transaction, logged like data:
    # the new catalog entry and every entry the change adds or removes are ordinary writes.
    # Every check that can fail runs before the first write, so a failure (KeyDuplicate,
    # KeyTooBig, ColumnIndexed, VersionStoreOutOfMemory of the change itself ...) leaves the
    # transaction as it was. Concurrency: the commit is a WriteConflict if another
    # transaction committed a write to the table after this one's snapshot, and a
    # transaction with an older snapshot that writes to the table and commits after this
    # one is a WriteConflict (`Database._check_conflicts`).

    def create_index(
        self,
        table: str,
        name: str,
        columns: str | list[str] | tuple[str, ...],
        unique: bool = False,
    ) -> TableDef:
        """Add a secondary index to table `table` and build it from the table's records as
        this transaction sees them; returns the new definition.

        The index holds exactly the entries it would hold had it been defined at
        `create_table` (NULLs included; a unique index lets NULLs repeat). A unique index over
        records that share a key fails with KeyDuplicate naming the values and the records.
        The entries are gathered, sorted and written as one batch (applied to the tree by the
        bulk merge when they are many): their size counts toward the transaction's bound.
        """
        self._check_active()
        t = self.table(table)
        old = t.definition
        index = IndexDef(name, columns, unique)
        next_id = decode_next_object_id(self.get(NEXT_OBJECT_ID_KEY))
        new = old.with_index(index, next_id)
        definition = self._definition_writes(new)
        next_entry = (NEXT_OBJECT_ID_KEY, encode_next_object_id(next_id + 1))
        reserved = self._definition_cost(old, definition) + _writes_size([next_entry])
        codec, shape = self._db.shape_for(new)
        builder = Table(self, new, codec, shape)
        try:
            entries = builder.index_entries(name, self._limit - self._held() - reserved)
        except VersionStoreOutOfMemory as exc:
            exc.hint += self._own_changes_hint("create the index")
            raise
        self.put(*next_entry, False)
        self._write_definition(old, definition)
        self._put_checked(entries)
        self._redefine(t, old, new)
        return new

    def drop_index(self, table: str, name: str) -> TableDef:
        """Remove secondary index `name` of table `table` and all its entries; returns the
        new definition (IndexNotFound if there is no such index).

        The deletes count toward the transaction's bound: over it, VersionStoreOutOfMemory
        before the first of them, and the transaction stays as it was (as `create_index`).
        """
        self._check_active()
        t = self.table(table)
        old = t.definition
        index_id = old.index_id(name)
        new = old.without_index(name)
        definition = self._definition_writes(new)
        start = object_prefix(index_id)
        # Every check before the first write, as `create_index` does: over the bound, the
        # transaction stays as it was (and usable) rather than rolling back.
        budget = self._limit - self._held() - self._definition_cost(old, definition)
        keys = self._keys_within([(start, prefix_successor(start))], budget)
        if keys is None:
            raise VersionStoreOutOfMemory(
                f"dropping index {name!r} of table {table!r} deletes each of its entries in "
                f"this transaction, more than the {max(budget, 0)} bytes left under its bound "
                f"of {self._limit} bytes; nothing was written and the transaction is still "
                "usable",
                hint="open the instance with a larger max_transaction_bytes (the drop is one "
                "transaction: an index cannot be dropped in parts)"
                + self._own_changes_hint("drop the index"),
            )
        self._delete_existing(keys)
        self._write_definition(old, definition)
        self._redefine(t, old, new)
        return new

    def add_column(
        self,
        table: str,
        name: str,
        type: ColumnType | str,
        nullable: bool = True,
        default: object = None,
    ) -> TableDef:
        """Append a column to table `table`; returns the new definition.

        No record is rewritten: a record written before reads `default` (None: NULL) in the
        new column, as the record format promises for columns appended later. A NOT NULL
        column needs a default (NullInvalid otherwise), which the existing records then hold.
        """
        self._check_active()
        t = self.table(table)
        old = t.definition
        column = Column(name, type, nullable, default)
        if not column.nullable and column.default is None:
            raise NullInvalid(
                f"column {name!r} added to table {old.name!r} is NOT NULL but has no default, "
                "so the records already there would hold NULL in it",
                hint="give the column a default, or add it as nullable",
            )
        new = old.with_column(column)
        definition = self._definition_writes(new)
        left = self._limit - self._held()
        if self._definition_cost(old, definition) > left:
            # Only the definition is written, but a transaction near its bound must not roll
            # back for it: refused first, as the other schema changes are.
            raise VersionStoreOutOfMemory(
                f"adding column {name!r} to table {old.name!r} writes the table's definition, "
                f"more than the {max(left, 0)} bytes left under the transaction's bound of "
                f"{self._limit} bytes; nothing was written and the transaction is still usable",
                hint="open the instance with a larger max_transaction_bytes"
                + self._own_changes_hint("add the column"),
            )
        self._write_definition(old, definition)
        self._redefine(t, old, new)
        return new

    def drop_column(self, table: str, name: str) -> TableDef:
        """Remove column `name` from table `table`; returns the new definition.

        Every record is rewritten without it (later columns move down one position, their
        long values with them). A primary key column or a column of a secondary index is
        ColumnIndexed (drop the indexes first).
        """
        self._check_active()
        t = self.table(table)
        old = t.definition
        new = old.without_column(name)
        definition = self._definition_writes(new)
        codec, shape = self._db.shape_for(new)
        try:
            records, deleted, moved = t.entries_without_column(
                name,
                codec,
                shape,
                self._limit - self._held() - self._definition_cost(old, definition),
            )
        except VersionStoreOutOfMemory as exc:
            exc.hint += self._own_changes_hint("drop the column")
            raise
        self._put_checked(records)
        self._delete_existing(deleted)
        self._put_checked(moved)
        self._write_definition(old, definition)
        self._redefine(t, old, new)
        return new

    def _definition_writes(self, definition: TableDef) -> list[tuple[bytes, bytes]]:
        """The catalog entries holding `definition` (its `'T'` entry, and chunks if large)."""
        return table_def_entries(definition.name, encode_table_def(definition), self.page_size)

    def _write_definition(self, old: TableDef, entries: list[tuple[bytes, bytes]]) -> None:
        """Replace table `old`'s catalog entries by `entries` (chunks it no longer needs go)."""
        prefix = table_def_chunk_prefix(old.name)
        keep = {key for key, _value in entries}
        for key, _value in self.items(prefix, prefix_successor(prefix)):
            if key not in keep:
                self.delete(key)
        for key, value in entries:
            self.put(key, value, False)

    def _put_checked(self, entries: list[tuple[bytes, bytes]]) -> None:
        """Write entries the table layer already checked against the entry limit, in one
        step (charged together: over the bound, the transaction rolls back as for `put`)."""
        self._unregistered = True  # an index's entries too (`create_index`), unregistered
        operations = self.operations
        size = 0
        for key, value in entries:
            operations[key] = value
            size += len(key) + len(value) + _OP_OVERHEAD
        if self._pending is not None:
            self._pending.update(entries)
        self._charge(size)

    def _delete_existing(self, keys: list[bytes]) -> None:
        """Delete `keys`, each present in the transaction's view, charged together."""
        operations = self.operations
        pending = self._pending
        for key in keys:
            operations[key] = None
            if pending is not None:
                pending[key] = None
        self._charge(sum(len(key) + _OP_OVERHEAD for key in keys))

    def _definition_cost(self, old: TableDef, entries: list[tuple[bytes, bytes]]) -> int:
        """What `_write_definition(old, entries)` charges: its puts, and the deletes of the
        chunks of `old` that `entries` no longer holds (a definition that shrank)."""
        prefix = table_def_chunk_prefix(old.name)
        keep = {key for key, _value in entries}
        stale = sum(
            len(key) + _OP_OVERHEAD
            for key, _value in self.items(prefix, prefix_successor(prefix))
            if key not in keep
        )
        return _writes_size(entries) + stale

    def _keys_within(
        self, ranges: list[tuple[bytes, bytes | None]], budget: int
    ) -> list[bytes] | None:
        """Every key in `ranges` of the transaction's view, or None once deleting them would
        charge more than `budget` bytes. Nothing is written, so a caller over the bound can
        refuse with the transaction as it was; the keys gathered never exceed the bound."""
        if budget < 0:
            return None
        keys: list[bytes] = []
        used = 0
        view = self.frozen()
        for start, stop in ranges:
            for chunk, _values in view.chunks(start, stop):
                keys += chunk
                used += sum(map(len, chunk)) + len(chunk) * _OP_OVERHEAD
                if used > budget:
                    return None
        return keys

    def _own_changes_hint(self, what: str) -> str:
        """The hint's addition when this transaction's own earlier changes took part of the
        bound: doing the change in a transaction of its own leaves it the whole bound."""
        held = self._held()
        if not held:
            return ""
        return (
            f"; this transaction already holds {held} bytes of other changes: commit "
            f"them first and {what} in a transaction of its own"
        )

    def _redefine(self, table: Table, old: TableDef, new: TableDef) -> None:
        """`table` (and every later `table(name)` in this transaction) now follows `new`."""
        entry_key = table_entry_key(new.name)
        self.redefined.setdefault(entry_key, old)
        self.schema_keys[entry_key] = new
        codec, shape = self._db.shape_for(new)
        table.redefine(new, codec, shape)

    # ----------------------------------------------------------------- end

    def commit(self, lazy: bool = False) -> LogPosition | None:
        """Make the changes visible and durable (lazy: durable soon, returns at once).

        Returns the commit record's end position, or None for a transaction that changed
        nothing. On `WriteConflict`, `KeyDuplicate` or any failure before its record reached
        the log the transaction is rolled back; a failure after that which fails the instance
        leaves it IN_DOUBT (reopen the instance to learn the outcome).
        """
        if self.state is not _ACTIVE:
            self._check_active()
        try:
            position = self._db.commit_transaction(self, lazy=lazy)
        except BaseException:
            if self.state is TransactionState.ACTIVE:
                self._abort()
            raise
        return position

    def _finish_in_doubt(self, position: LogPosition | None) -> None:
        """The commit failed after its record reached the log and the instance failed: only a
        reopen tells whether it survived (see the module docstring)."""
        if position is not None:
            self.commit_position = position
        self._drop_changes(TransactionState.IN_DOUBT)

    def rollback(self) -> None:
        """Drop every change (nothing was logged or written, so there is nothing to undo)."""
        if self.state is TransactionState.ACTIVE:
            self._abort()

    def _abort(self) -> None:
        self._drop_changes(TransactionState.ROLLED_BACK)

    def _drop_changes(self, state: TransactionState) -> None:
        """End the transaction in `state` without publishing anything of it."""
        self.state = state
        self.operations = {}
        self._pending = {}
        self._key_order = None
        self.unique_checks = {}
        self._release_trees()
        self._db.end_transaction(self)

    def _finish_committed(self, position: LogPosition | None) -> None:
        self.state = TransactionState.COMMITTED
        self.commit_position = position
        # The writes are in the published tree and the log now: an application that keeps
        # the committed transaction (a `with` block's name) must not keep them, up to the
        # whole bound, beside what `cache_size` bounds.
        self.operations = {}
        self._pending = {}
        self._key_order = None
        self.unique_checks = {}
        self._release_trees()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.state is not TransactionState.ACTIVE:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def __del__(self) -> None:
        # An abandoned transaction must not pin old pages forever.
        try:
            if self.state is TransactionState.ACTIVE:
                self._abort()
        except Exception:
            pass


def _index_list(indexes: object) -> list[Any]:
    """`create_table`'s indexes as a list: any iterable of index specs, as `Database.create_table`
    takes (a generator included), but not a lone string, bytes or mapping, whose iteration
    would make nonsense specs out of its characters or keys."""
    if indexes is None:
        return []
    if isinstance(indexes, str | bytes | bytearray | Mapping) or not isinstance(indexes, Iterable):
        raise InvalidParameter(
            f"indexes must be a list of index specs, got {type(indexes).__name__} {indexes!r}"
        )
    return list(indexes)


class FrozenView:
    """One state of a transaction's tree (`Transaction.frozen`): reads only, while it is active.

    The nodes under `root` never change (the transaction moves to a new epoch before its next
    write), so reads through this view see exactly that state. `check_active` raises
    `NotInTransaction` once the transaction ended (a scan calls it before each record).
    """

    __slots__ = ("__weakref__", "_root", "_txn", "check_active", "transaction")

    def __init__(self, txn: Transaction, root: Node | None) -> None:
        self._txn = txn
        self._root = root
        self.check_active = txn._check_active
        self.transaction = txn

    def release(self) -> None:
        """The transaction ended: hold none of its nodes (every read raises from now on)."""
        self._root = None

    def get(self, key: bytes) -> bytes | None:
        txn = self._txn
        txn._check_active()
        if type(key) is not bytes:
            key = _raw_key(key)
        return lookup(txn.database.file, self._root, key)

    @property
    def gathering(self) -> bool:
        return False  # one state of the tree: its range reads apply nothing

    def items(self, start: bytes | None, stop: bytes | None) -> list[tuple[bytes, bytes]]:
        txn = self._txn
        txn._check_active()
        start, stop = _raw_bounds(start, stop)
        return list(iterate(txn.database.file, self._root, start, stop))

    def iterate(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        txn = self._txn
        txn._check_active()
        start, stop = _raw_bounds(start, stop)
        return _guarded(txn, iterate(txn.database.file, self._root, start, stop, reverse))

    def chunks(
        self, start: bytes | None, stop: bytes | None, reverse: bool = False
    ) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """What `iterate` yields, a leaf at a time (see `jetstore.pages.btree.iterate_chunks`)."""
        txn = self._txn
        txn._check_active()
        start, stop = _raw_bounds(start, stop)
        return _guarded(txn, iterate_chunks(txn.database.file, self._root, start, stop, reverse))


_T = TypeVar("_T")


def _writes_size(entries: list[tuple[bytes, bytes]]) -> int:
    """What writing `entries` charges against the transaction's bound."""
    return sum(len(key) + len(value) + _OP_OVERHEAD for key, value in entries)


def _raw_key(key: object) -> bytes:
    """A key of the raw tree API given as something other than `bytes`: a bytes-like value as
    bytes (as `put` takes it), anything else InvalidParameter rather than a TypeError from
    deep inside the tree."""
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise InvalidParameter(
        f"key must be bytes, not {type(key).__name__}",
        hint="the raw tree API (get, put, delete, iterate) takes byte strings; "
        "use Transaction.table(name) for records",
    )


def _raw_bounds(start: object, stop: object) -> tuple[bytes | None, bytes | None]:
    """Range bounds of the raw tree API: None (unbounded) or keys, as `_raw_key` takes them."""
    return (
        start if start is None or type(start) is bytes else _raw_key(start),
        stop if stop is None or type(stop) is bytes else _raw_key(stop),
    )


def _guarded(txn: Transaction, entries: Iterator[_T]) -> Iterator[_T]:
    """`entries`, checking before each step that `txn` is still active."""
    guarded = _Guarded(txn._check_active, entries)
    txn._track(guarded)
    return guarded


class _Guarded(Iterator[_T]):
    """An iterator over a transaction's tree that checks before each step that the
    transaction is still active, and lets go of the tree (its inner iterator holds a path of
    nodes) when the transaction ends, however long the application keeps it."""

    __slots__ = ("__weakref__", "_check", "_entries")

    def __init__(self, check: Callable[[], None], entries: Iterator[_T]) -> None:
        self._check = check
        self._entries: Iterator[_T] | None = entries

    def __next__(self) -> _T:
        self._check()
        entries = self._entries
        if entries is None:  # the transaction ended since the check
            self._check()
            raise StopIteration
        return next(entries)

    def release(self) -> None:
        self._entries = None
