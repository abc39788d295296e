"""The stores under test behind one small interface: jetstore, sqlite3 and lmdb.

Each adapter owns one store in one directory, inside the worker process that runs it (see
`workloads.py`): nothing else touches the store, and the worker's peak RSS is the peer's.
Every adapter offers the same operations, and the timed loops in `workloads.py` are shared,
so the harness's own per-operation cost is the same for every peer:

- `writer()`: a context giving a durable single-row commit function for the calling thread
  (sqlite3 opens one connection per thread, as its documentation requires);
- `bulk_load(items)`: one transaction/batch holding every row, durable when it returns;
- `reader()`: a context giving a point-lookup function on one read snapshot, ended on exit
  (perf-baselines.md's trap: a live read snapshot must not outlast the reads);
- `scanner()`: a context giving an iterator over every row in key order;
- `settle()`: brings the store to rest after a workload, so no deferred work of one peer runs
  during another peer's measurement (jetstore: an explicit checkpoint, timed and reported);
- `checkpointer()`: a context giving a function that runs one checkpoint from the calling
  thread (W2C's checkpoint thread; jetstore: `instance.checkpoint()`, sqlite3:
  `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its own). `CHECKPOINT` names it, and is
  None for a peer without a checkpoint (lmdb), whose W2C runs without that thread.

Settings follow planning's perf-baselines.md in shared/research: sqlite3 in WAL mode with
`synchronous=FULL`, a 512 MiB page cache, a `WITHOUT ROWID` table with a BLOB primary key and
autocommit statements; lmdb with `sync=True, metasync=True`; jetstore with the engine's
defaults except `cache_size` (512 MiB, like sqlite3's page cache), as the bench brief sets them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

Writer = Callable[[bytes, bytes], None]
Getter = Callable[[bytes], object]
Checkpointer = Callable[[], object]
Row = tuple[bytes, bytes]

MIB = 1 << 20

JETSTORE_OPTIONS: dict[str, Any] = {
    "log_file_size": 5 * MIB,
    "checkpoint_depth": 20 * MIB,
    "cache_size": 512 * MIB,
    "page_size": 8192,
}
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA cache_size=-524288",  # KiB: 512 MiB
)
SQLITE_BUSY_TIMEOUT_S = 60.0
LMDB_MAP_SIZE = 64 << 30  # address space only: the file grows as pages are written

PEER_NAMES = ("jetstore", "sqlite3", "lmdb")


class Peer:
    """One store in one directory. Subclasses implement every method."""

    name = "peer"
    # What W2C's checkpoint thread runs, for the report; None: the peer has no checkpoint.
    CHECKPOINT: str | None = None

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        raise NotImplementedError
        yield  # pragma: no cover

    def bulk_load(self, items: Iterable[Row]) -> None:
        raise NotImplementedError

    @contextmanager
    def reader(self) -> Iterator[Getter]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def scanner(self) -> Iterator[Iterable[object]]:
        raise NotImplementedError
        yield  # pragma: no cover

    @contextmanager
    def checkpointer(self) -> Iterator[Checkpointer]:
        """A function running one checkpoint from the calling thread (W2C); only for a peer
        whose `CHECKPOINT` is set. What it returns goes to `checkpoint_summary`."""
        raise NotImplementedError(f"{self.name} has no checkpoint")
        yield  # pragma: no cover

    def checkpoint_summary(self, outputs: list[object]) -> dict[str, Any]:
        """Peer-specific figures from what the checkpoint function returned (W2C)."""
        return {}

    def settle(self) -> dict[str, Any]:
        """Finish deferred work after a workload; returns what it did (for the report)."""
        return {}

    def stats(self) -> dict[str, Any]:
        """Engine counters worth reporting next to a workload's figure."""
        return {}

    def describe(self) -> dict[str, Any]:
        """Settings and versions (for the JSON report)."""
        return {}


class JetstorePeer(Peer):
    name = "jetstore"
    CHECKPOINT = "instance.checkpoint()"

    def __init__(self, directory: str, options: dict[str, Any] | None = None) -> None:
        super().__init__(directory)
        self.options = dict(JETSTORE_OPTIONS if options is None else options)
        self._instance: Any = None
        self._db: Any = None

    def open(self) -> None:
        import jetstore

        self._instance = jetstore.open(self.directory, **self.options)
        self._db = self._instance.database("bench", create=True)
        if "kv" not in self._db.table_names():
            self._db.create_table("kv", [("k", "bytes"), ("v", "bytes")], primary_key="k")

    def close(self) -> None:
        if self._instance is not None:
            instance, self._instance, self._db = self._instance, None, None
            instance.close()

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        db = self._db

        def write(key: bytes, value: bytes) -> None:
            with db.transaction() as txn:
                txn.table("kv").insert({"k": key, "v": value})

        yield write

    def bulk_load(self, items: Iterable[Row]) -> None:
        with self._db.transaction() as txn:
            insert = txn.table("kv").insert
            for key, value in items:
                insert({"k": key, "v": value})

    @contextmanager
    def reader(self) -> Iterator[Getter]:
        txn = self._db.transaction()
        try:
            yield txn.table("kv").get
        finally:
            txn.rollback()

    @contextmanager
    def scanner(self) -> Iterator[Iterable[object]]:
        txn = self._db.transaction()
        try:
            yield txn.table("kv").scan()
        finally:
            txn.rollback()

    @contextmanager
    def checkpointer(self) -> Iterator[Checkpointer]:
        yield self._instance.checkpoint

    def settle(self) -> dict[str, Any]:
        start = time.perf_counter()
        self._instance.checkpoint()
        return {"checkpoint_s": time.perf_counter() - start}

    def stats(self) -> dict[str, Any]:
        counters = self._instance.counters()
        keys = (
            "log_bytes_appended",
            "log_flushes",
            "log_rolls",
            "commits",
            "checkpoints",
            "cache_hits",
            "cache_misses",
            "pages_read",
            "pages_written",
            "write_conflicts",
        )
        return {key: counters.get(key) for key in keys}

    def describe(self) -> dict[str, Any]:
        import jetstore

        return {"version": jetstore.__version__, "options": self.options}


class SqlitePeer(Peer):
    name = "sqlite3"
    CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.path = os.path.join(directory, "bench.sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=SQLITE_BUSY_TIMEOUT_S)
        for pragma in SQLITE_PRAGMAS:
            conn.execute(pragma).fetchall()
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "sqlite3 peer is not open"
        return self._conn

    def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._conn = self._connect()
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID"
        )

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        # One connection per thread: the worker's own connection in the main thread.
        own = threading.current_thread() is threading.main_thread()
        conn = self.conn if own else self._connect()
        execute = conn.execute
        sql = "INSERT INTO kv (k, v) VALUES (?, ?)"

        def write(key: bytes, value: bytes) -> None:
            execute(sql, (key, value))

        try:
            yield write
        finally:
            if not own:
                conn.close()

    @contextmanager
    def checkpointer(self) -> Iterator[Checkpointer]:
        # A connection of its own (the calling thread is not the worker's main thread).
        conn = self._connect()
        execute = conn.execute
        sql = "PRAGMA wal_checkpoint(PASSIVE)"

        def checkpoint() -> object:
            # (busy, frames in the WAL, frames of the WAL already copied to the database)
            return execute(sql).fetchone()

        try:
            yield checkpoint
        finally:
            conn.close()

    def checkpoint_summary(self, outputs: list[object]) -> dict[str, Any]:
        rows = [r for r in outputs if isinstance(r, tuple) and len(r) == 3]
        return {
            "checkpointer_busy": sum(1 for r in rows if r[0]),
            "checkpointer_wal_frames_max": max((r[1] for r in rows), default=None),
        }

    def bulk_load(self, items: Iterable[Row]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO kv (k, v) VALUES (?, ?)", items)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def reader(self) -> Iterator[Getter]:
        cursor = self.conn.cursor()
        execute, fetchone = cursor.execute, cursor.fetchone
        sql = "SELECT v FROM kv WHERE k = ?"

        def get(key: bytes) -> object:
            execute(sql, (key,))
            row = fetchone()
            return None if row is None else row[0]

        try:
            yield get
        finally:
            cursor.close()

    @contextmanager
    def scanner(self) -> Iterator[Iterable[object]]:
        cursor = self.conn.execute("SELECT k, v FROM kv ORDER BY k")
        try:
            yield cursor
        finally:
            cursor.close()

    def describe(self) -> dict[str, Any]:
        return {
            "version": sqlite3.sqlite_version,
            "pragmas": list(SQLITE_PRAGMAS),
            "table": "kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID",
            "busy_timeout_s": SQLITE_BUSY_TIMEOUT_S,
            "statements": "autocommit (isolation_level=None); bulk load in BEGIN/COMMIT",
        }


class LmdbPeer(Peer):
    name = "lmdb"

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self._env: Any = None

    def open(self) -> None:
        import lmdb

        self._env = lmdb.open(
            self.directory,
            map_size=LMDB_MAP_SIZE,
            sync=True,
            metasync=True,
            max_readers=126,
            lock=True,
        )

    def close(self) -> None:
        if self._env is not None:
            env, self._env = self._env, None
            env.close()

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        env = self._env

        def write(key: bytes, value: bytes) -> None:
            with env.begin(write=True) as txn:
                txn.put(key, value)

        yield write

    def bulk_load(self, items: Iterable[Row]) -> None:
        with self._env.begin(write=True) as txn:
            txn.cursor().putmulti(items)

    @contextmanager
    def reader(self) -> Iterator[Getter]:
        txn = self._env.begin()
        try:
            yield txn.get
        finally:
            txn.abort()

    @contextmanager
    def scanner(self) -> Iterator[Iterable[object]]:
        txn = self._env.begin()
        cursor = txn.cursor()
        try:
            yield iter(cursor)
        finally:
            cursor.close()
            txn.abort()

    def describe(self) -> dict[str, Any]:
        import lmdb

        return {
            "version": ".".join(map(str, lmdb.version())),
            "binding": lmdb.__version__,
            "options": {"sync": True, "metasync": True, "map_size": LMDB_MAP_SIZE},
        }


def make_peer(name: str, directory: str) -> Peer:
    if name == "jetstore":
        return JetstorePeer(directory)
    if name == "sqlite3":
        return SqlitePeer(directory)
    if name == "lmdb":
        return LmdbPeer(directory)
    raise ValueError(f"unknown peer {name!r} (known: {', '.join(PEER_NAMES)})")
