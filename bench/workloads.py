"""Workloads W1-W8 (and W2C) and the worker process that runs them against one peer.

`run.py` starts one worker per peer (`python bench/workloads.py worker PEER DIR`) and sends it
one JSON command per line on stdin; the worker answers each with one line on stdout that starts
with `@@BENCH ` (anything else a library prints is passed through). A worker keeps its store
open between commands, so W4/W5 read what W3 loaded and W1/W2/W2C/W6 commit into the loaded
database, as in perf-baselines.md; `run.py` alternates the peers workload by workload.

W2C is W2 (durable single-row commits from N threads) with one more thread in the same process
checkpointing the peer back to back for the whole measured period (jetstore:
`instance.checkpoint()`, sqlite3: `PRAGMA wal_checkpoint(PASSIVE)` on a connection of its own):
a CPU-bound thread delays every group-commit hand-back under the GIL, and W2C shows by how
much. lmdb has no checkpoint, so its W2C is a plain W2 (reported as "no checkpoint").

Data (perf-baselines.md): keys are 16 bytes, the first 8 a scrambled 64-bit counter
(splitmix64's finaliser, a bijection, so inserts arrive in random key order and never collide),
the last 8 the counter itself; values are random bytes (incompressible). Each workload draws
its counters from its own range (`SPACE_*`), so no two workloads write the same key.

Timing: only the operations are timed. Keys are computed before the clock starts (bulk
workloads) or inside the loop for every peer alike (commit workloads, where one commit costs
far more than one key); after the clock stops the worker calls the peer's `settle()` (jetstore:
a checkpoint) so no deferred work of one peer runs during another peer's measurement, and
reports how long that took.

W7 (jetstore only): a child process (`python bench/workloads.py w7-load DIR BYTES SEED`) opens
an instance with checkpoints disabled (huge `checkpoint_depth` and `checkpoint_interval`),
commits 1,000-row transactions until the log holds the requested bytes, prints what it wrote
and SIGKILLs itself right after its last durable commit. The worker then times `jetstore.open()`
(soft recovery plus the checkpoint that open writes): replay MB/s = log bytes appended by the
child / open seconds. The events file splits that time into replay and checkpoint, and a full
scan afterwards checks that every committed row came back.

W8 (jetstore only): online backup throughput. An instance is loaded with 4 KiB rows until its
database file holds `backup_mib`, checkpointed; then (1) a plain copy of the database file
(read, write, fsync: the physical limit on this machine, from the same page cache), (2) a
writer thread's durable single-row commits for a few seconds with no backup (idle latency),
(3) `instance.backup()` of a full backup set while that writer keeps committing. Figure:
backup MB/s (bytes of the set / seconds), next to the copy's MB/s, and the writer's commit
latency p99 during the backup against idle. The set is verified and its commits counted.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from peers import JETSTORE_OPTIONS, Peer, make_peer

PROTOCOL_PREFIX = "@@BENCH "
KEY_SIZE = 16
SMALL_VALUE = 100
LARGE_VALUE = 4096
MB = 1_000_000
W7_BATCH_ROWS = 1000

# Counter ranges (bits 40 and up): one per workload, one per W2 thread.
SPACE_BULK = 0
SPACE_W1 = 1 << 40
SPACE_W2 = 2 << 40  # thread t uses SPACE_W2 + (t << 32): up to 256 threads in the space
SPACE_W6 = 3 << 40
SPACE_W7 = 4 << 40
SPACE_W8 = 5 << 40
SPACE_W2C = 6 << 40  # thread t uses SPACE_W2C + (t << 32)
W8_VALUE = 4000
W8_BATCH_ROWS = 2000

_MASK = (1 << 64) - 1
_KEY = struct.Struct(">QQ")

WORKLOADS = ("W1", "W2", "W2C", "W3", "W4", "W5", "W6", "W7", "W8")
TITLES = {
    "W1": "durable 1-row commits, 1 thread",
    "W2": "durable 1-row commits, N threads",
    "W2C": "durable 1-row commits, N threads, checkpoint running",
    "W3": "bulk load, 1 txn, random order",
    "W4": "random point reads, warm",
    "W5": "full ordered scan",
    "W6": "durable 4 KiB commits, 1 thread",
    "W7": "log replay after crash",
    "W8": "online full backup, writer running",
}
UNITS = {
    "W1": "commits/s",
    "W2": "commits/s",
    "W2C": "commits/s",
    "W3": "rows/s",
    "W4": "reads/s",
    "W5": "rows/s",
    "W6": "commits/s",
    "W7": "MB/s",
    "W8": "MB/s",
}


class BenchError(Exception):
    """A workload found something wrong (missing rows, a failed thread, no data loaded)."""

    def __init__(self, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


# --------------------------------------------------------------------------- data


def scramble(counter: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers that looks random."""
    z = (counter + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def make_key(counter: int) -> bytes:
    return _KEY.pack(scramble(counter), counter)


def key_blob(counters: Iterator[int] | range) -> bytes:
    """Keys of `counters`, concatenated (16 bytes each): cheap to hold, cheap to slice."""
    pack, mix = _KEY.pack, scramble
    return b"".join([pack(mix(c), c) for c in counters])


def bulk_rows(keys: bytes, value_size: int, seed: int) -> Iterator[tuple[bytes, bytes]]:
    """(key, random value) pairs for every key in `keys`, values drawn 4,096 at a time."""
    rnd = random.Random(seed)
    count = len(keys) // KEY_SIZE
    chunk = 4096
    for base in range(0, count, chunk):
        m = min(chunk, count - base)
        values = rnd.randbytes(m * value_size)
        offset = base * KEY_SIZE
        for j in range(m):
            k = offset + j * KEY_SIZE
            v = j * value_size
            yield keys[k : k + KEY_SIZE], values[v : v + value_size]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return float("nan")


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "median_us": percentile(ordered, 0.5) * 1e6,
        "p99_us": percentile(ordered, 0.99) * 1e6,
        "max_us": (ordered[-1] if ordered else float("nan")) * 1e6,
    }


def dir_bytes(path: str) -> int:
    """Bytes allocated on disk under `path` (st_blocks, so preallocated files count)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


# --------------------------------------------------------------------------- worker state


@dataclass
class WorkerState:
    peer_name: str
    directory: str
    peer: Peer | None = None
    open_s: float = 0.0
    rows_loaded: int = 0  # W3 loaded counters SPACE_BULK + [0, rows_loaded)
    rows_total: int = 0  # every row in the store

    def ensure_open(self) -> Peer:
        if self.peer is None:
            peer = make_peer(self.peer_name, os.path.join(self.directory, self.peer_name))
            os.makedirs(peer.directory, exist_ok=True)
            start = time.perf_counter()
            peer.open()
            self.open_s = time.perf_counter() - start
            self.peer = peer
        return self.peer


Params = dict[str, Any]
Result = dict[str, Any]


# --------------------------------------------------------------------------- commit workloads


def _commit_loop(
    write: Callable[[bytes, bytes], None],
    space: int,
    value_size: int,
    seconds: float,
    seed: int,
    start_at: float | None = None,
) -> tuple[int, list[float], float, float]:
    """Durable single-row commits until `seconds` have passed; (count, latencies, t0, t1)."""
    rnd = random.Random(seed)
    randbytes, clock, pack, mix = rnd.randbytes, time.perf_counter, _KEY.pack, scramble
    latencies: list[float] = []
    append = latencies.append
    counter = space
    t0 = clock() if start_at is None else start_at
    deadline = t0 + seconds
    now = t0
    while now < deadline:
        key = pack(mix(counter), counter)
        value = randbytes(value_size)
        before = clock()
        write(key, value)
        now = clock()
        append(now - before)
        counter += 1
    return counter - space, latencies, t0, now


def _commit_result(commits: int, latencies: list[float], elapsed: float, value_size: int) -> Result:
    rate = commits / elapsed if elapsed > 0 else 0.0
    return {
        "value": rate,
        "commits": commits,
        "seconds": elapsed,
        "mb_per_s": rate * (KEY_SIZE + value_size) / MB,
        **latency_summary(latencies),
    }


def w1_commits(state: WorkerState, params: Params) -> Result:
    peer = state.ensure_open()
    with peer.writer() as write:
        commits, lat, t0, t1 = _commit_loop(
            write, SPACE_W1, SMALL_VALUE, params["commit_seconds"], params["seed"] + 1
        )
    state.rows_total += commits
    return _commit_result(commits, lat, t1 - t0, SMALL_VALUE)


def w6_commits(state: WorkerState, params: Params) -> Result:
    peer = state.ensure_open()
    with peer.writer() as write:
        commits, lat, t0, t1 = _commit_loop(
            write, SPACE_W6, LARGE_VALUE, params["commit_seconds"], params["seed"] + 6
        )
    state.rows_total += commits
    return _commit_result(commits, lat, t1 - t0, LARGE_VALUE)


def w2_commits(state: WorkerState, params: Params) -> Result:
    return _threaded_commits(state, params, "w2", SPACE_W2, params["seed"] + 20, checkpoint=False)


def w2c_commits(state: WorkerState, params: Params) -> Result:
    """W2 with a checkpoint thread running for the whole measured period (see the module doc)."""
    return _threaded_commits(state, params, "w2c", SPACE_W2C, params["seed"] + 40, checkpoint=True)


def _threaded_commits(
    state: WorkerState, params: Params, name: str, space: int, seed: int, checkpoint: bool
) -> Result:
    """`threads` writer threads run `_commit_loop` at once (thread i on counters
    `space + (i << 32)`); with `checkpoint` and a peer that has one, one more thread calls the
    peer's checkpoint back to back from the common start until every writer is done."""
    peer = state.ensure_open()
    threads: int = params["threads"]
    seconds: float = params["commit_seconds"]
    checkpointing = checkpoint and peer.CHECKPOINT is not None
    barrier = threading.Barrier(threads + 1 + (1 if checkpointing else 0))
    outcomes: list[tuple[int, list[float], float, float] | None] = [None] * threads
    failures: list[str] = []
    checkpoint_failures: list[str] = []
    stop = threading.Event()
    durations: list[float] = []  # of each checkpoint the checkpoint thread completed
    outputs: list[object] = []  # what each returned (peer-specific, see checkpoint_summary)

    def run(index: int) -> None:
        started = False
        try:
            with peer.writer() as write:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    return  # another thread failed before the start: that failure is reported
                started = True
                outcomes[index] = _commit_loop(
                    write,
                    space + (index << 32),
                    SMALL_VALUE,
                    seconds,
                    seed + index,
                )
        except BaseException:
            failures.append(f"thread {index}:\n{traceback.format_exc()}")
            if not started:  # once past the barrier, aborting it could fail a waking thread
                barrier.abort()

    def checkpoint_loop() -> None:
        clock = time.perf_counter
        started = False
        try:
            with peer.checkpointer() as run_checkpoint:
                try:
                    barrier.wait()
                except threading.BrokenBarrierError:
                    return  # a writer failed before the start: that failure is reported
                started = True
                while not stop.is_set():
                    before = clock()
                    output = run_checkpoint()
                    durations.append(clock() - before)
                    outputs.append(output)
        except BaseException:
            checkpoint_failures.append(f"checkpoint thread:\n{traceback.format_exc()}")
            if not started:  # once past the barrier, aborting it could fail a waking writer
                barrier.abort()

    workers = [
        threading.Thread(target=run, args=(i,), name=f"bench-{name}-{i}") for i in range(threads)
    ]
    checkpointer = threading.Thread(target=checkpoint_loop, name=f"bench-{name}-checkpoint")
    stats_before = peer.stats() if checkpointing else {}
    if checkpointing:
        checkpointer.start()
    for worker in workers:
        worker.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for worker in workers:
        worker.join()
    stop.set()
    if checkpointing:
        checkpointer.join()
    stats_after = peer.stats() if checkpointing else {}
    done = [o for o in outcomes if o is not None]
    commits = sum(o[0] for o in done)
    state.rows_total += commits
    if failures or checkpoint_failures:
        what = [f"{len(failures)} of {threads} writer threads failed"] if failures else []
        if checkpoint_failures:
            what.append("the checkpoint thread failed")
        raise BenchError(
            f"{' and '.join(what)} ({commits} commits done before)",
            remote_traceback="\n".join(checkpoint_failures + failures),
        )
    latencies = [x for o in done for x in o[1]]
    elapsed = max(o[3] for o in done) - min(o[2] for o in done)
    result = _commit_result(commits, latencies, elapsed, SMALL_VALUE)
    result["threads"] = threads
    result["per_thread_commits"] = [o[0] for o in done]
    if checkpoint:
        result.update(_checkpointer_result(peer, durations, outputs))
        if checkpointing:
            delta = _numeric_delta(stats_before, stats_after)
            for key in ("checkpoints", "pages_written"):
                if key in delta:
                    result[f"checkpointer_engine_{key}"] = delta[key]
    return result


def _checkpointer_result(peer: Peer, durations: list[float], outputs: list[object]) -> Result:
    """What W2C's checkpoint thread did, for the report (`checkpointer` None: no thread)."""
    if peer.CHECKPOINT is None:
        return {"checkpointer": None, "checkpointer_note": f"{peer.name} has no checkpoint"}
    ordered = sorted(durations)
    return {
        "checkpointer": peer.CHECKPOINT,
        "checkpointer_calls": len(durations),
        "checkpointer_seconds": sum(durations),
        "checkpointer_median_ms": percentile(ordered, 0.5) * 1e3 if ordered else None,
        "checkpointer_max_ms": ordered[-1] * 1e3 if ordered else None,
        **peer.checkpoint_summary(outputs),
    }


# --------------------------------------------------------------------------- data workloads


def w3_bulk_load(state: WorkerState, params: Params) -> Result:
    peer = state.ensure_open()
    n: int = params["n"]
    keys = key_blob(range(SPACE_BULK, SPACE_BULK + n))
    rows = bulk_rows(keys, SMALL_VALUE, params["seed"] + 3)
    start = time.perf_counter()
    peer.bulk_load(rows)
    elapsed = time.perf_counter() - start
    state.rows_loaded = n
    state.rows_total += n
    return {
        "value": n / elapsed,
        "rows": n,
        "seconds": elapsed,
        "mb_per_s": n * (KEY_SIZE + SMALL_VALUE) / elapsed / MB,
    }


def _need_rows(state: WorkerState, workload: str) -> None:
    if state.rows_loaded <= 0:
        raise BenchError(
            f"{workload} needs the rows W3 loads, and W3 did not load any in this worker "
            "(not selected with --only, failed, or the worker was restarted)"
        )


def _count_rows(rows_iter: Any) -> int:
    count = 0
    for _row in rows_iter:
        count += 1
    return count


def w4_point_reads(state: WorkerState, params: Params) -> Result:
    peer = state.ensure_open()
    _need_rows(state, "W4")
    n_reads: int = params["n"]
    rnd = random.Random(params["seed"] + 4)
    loaded = state.rows_loaded
    keys = key_blob(SPACE_BULK + rnd.randrange(loaded) for _ in range(n_reads))
    # Warm up (untimed, every peer alike): one full scan brings every page into the cache.
    warm_start = time.perf_counter()
    with peer.scanner() as rows:
        warm_rows = _count_rows(rows)
    warm_s = time.perf_counter() - warm_start
    missing = 0
    with peer.reader() as get:
        start = time.perf_counter()
        for offset in range(0, len(keys), KEY_SIZE):
            if get(keys[offset : offset + KEY_SIZE]) is None:
                missing += 1
        elapsed = time.perf_counter() - start
    if missing:
        raise BenchError(f"{missing} of {n_reads} point reads of loaded keys found nothing")
    return {
        "value": n_reads / elapsed,
        "reads": n_reads,
        "seconds": elapsed,
        "warmup_scan_s": warm_s,
        "warmup_rows": warm_rows,
    }


def w5_scan(state: WorkerState, params: Params) -> Result:
    peer = state.ensure_open()
    _need_rows(state, "W5")
    with peer.scanner() as rows:
        start = time.perf_counter()
        count = _count_rows(rows)
        elapsed = time.perf_counter() - start
    if count != state.rows_total:
        raise BenchError(
            f"the scan returned {count} rows; the store should hold {state.rows_total}"
        )
    return {
        "value": count / elapsed,
        "rows": count,
        "seconds": elapsed,
        "mb_per_s": count * (KEY_SIZE + SMALL_VALUE) / elapsed / MB,
    }


# --------------------------------------------------------------------------- W7


def w7_load_main(directory: str, target_bytes: int, seed: int) -> None:
    """Child of W7: fill the log without a checkpoint, report, then die without shutdown."""
    import jetstore

    # Checkpoints off: by log volume, by time, and by dirty pages (half of cache_size starts
    # one; ~2 bytes of dirty pages a byte of log here), so that the whole log is replayed.
    options = dict(
        JETSTORE_OPTIONS,
        checkpoint_depth=1 << 40,
        checkpoint_interval=1e9,
        cache_size=max(int(JETSTORE_OPTIONS["cache_size"]), 8 * target_bytes),
    )
    instance = jetstore.open(directory, **options)
    db = instance.database("bench", create=True)
    db.create_table("kv", [("k", "bytes"), ("v", "bytes")], primary_key="k")
    rnd = random.Random(seed)
    rows = commits = 0
    start = time.perf_counter()
    while instance.log.bytes_appended < target_bytes:
        keys = key_blob(range(SPACE_W7 + rows, SPACE_W7 + rows + W7_BATCH_ROWS))
        with db.transaction() as txn:
            insert = txn.table("kv").insert
            for key, value in bulk_rows(keys, SMALL_VALUE, rnd.getrandbits(32)):
                insert({"k": key, "v": value})
        rows += W7_BATCH_ROWS
        commits += 1
    elapsed = time.perf_counter() - start
    counters = instance.counters()
    report = {
        "rows": rows,
        "commits": commits,
        "load_s": elapsed,
        "log_bytes_appended": counters["log_bytes_appended"],
        "log_records": counters["log_records"],
        "log_end": counters["log_end"],
        "log_durable": counters["log_durable"],
        "checkpoint_durable": counters["checkpoint_durable"],
        "checkpoints": counters["checkpoints"],
        "peak_rss_mib": peak_rss_mib(),
    }
    sys.stdout.write(json.dumps(report) + "\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _event_times(directory: str, names: tuple[str, ...], since_us: int) -> dict[str, int]:
    """time_us of the first event of each name at or after `since_us` in events.jsonl."""
    found: dict[str, int] = {}
    path = os.path.join(directory, "events.jsonl")
    try:
        with open(path, encoding="utf-8", errors="replace") as events:
            for line in events:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                name, when = event.get("name"), event.get("time_us")
                if name in names and isinstance(when, int) and when >= since_us:
                    found.setdefault(name, when)
    except OSError:
        pass
    return found


def w7_replay(state: WorkerState, params: Params) -> Result:
    if state.peer_name != "jetstore":
        raise BenchError("W7 measures jetstore's log replay only")
    import jetstore

    directory = os.path.join(state.directory, "w7")
    target = int(params["replay_bytes"])
    command = [sys.executable, os.path.abspath(__file__), "w7-load", directory, str(target)]
    command.append(str(params["seed"] + 7))
    child = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert child.stdout is not None
    output = child.stdout.read()
    _pid, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    lines = output.decode("utf-8", "replace").strip().splitlines()
    if child.returncode != -signal.SIGKILL or not lines:
        raise BenchError(
            f"the W7 loader ended with status {child.returncode} instead of SIGKILL after its "
            f"report; its output: {output[-2000:]!r}"
        )
    loaded = json.loads(lines[-1])
    if not str(loaded["checkpoint_durable"]).startswith("00000001:"):
        raise BenchError(
            f"the W7 loader checkpointed (durable checkpoint {loaded['checkpoint_durable']}): "
            "recovery would replay only part of its log"
        )
    log_files = [n for n in os.listdir(directory) if n.endswith(".log")]
    log_disk = sum(os.path.getsize(os.path.join(directory, n)) for n in log_files)

    since_us = time.time_ns() // 1000
    start = time.perf_counter()
    instance = jetstore.open(directory, **JETSTORE_OPTIONS)
    open_s = time.perf_counter() - start
    rss_after_open = peak_rss_mib()
    try:
        recovery = instance.recovery
        replayed = recovery.replayed if recovery is not None else -1
        txn = instance.database("bench").transaction()
        try:
            rows = _count_rows(txn.table("kv").scan())
        finally:
            txn.rollback()
    finally:
        close_start = time.perf_counter()
        instance.close()
        close_s = time.perf_counter() - close_start
    if rows != loaded["rows"]:
        raise BenchError(
            f"after recovery the table holds {rows} rows; the loader committed {loaded['rows']} "
            f"durably before it was killed"
        )
    events = _event_times(directory, ("recovery_finished", "instance_started"), since_us)
    replay_s = checkpoint_s = None
    if "recovery_finished" in events:
        replay_s = (events["recovery_finished"] - since_us) / 1e6
        if "instance_started" in events:
            checkpoint_s = (events["instance_started"] - events["recovery_finished"]) / 1e6
    log_bytes = int(loaded["log_bytes_appended"])
    return {
        "value": log_bytes / open_s / MB,
        "log_bytes": log_bytes,
        "log_files": len(log_files),
        "log_files_bytes": log_disk,
        "open_s": open_s,
        "replay_s": replay_s,
        "open_checkpoint_s": checkpoint_s,
        "replay_only_mb_per_s": log_bytes / replay_s / MB if replay_s else None,
        "records_replayed": replayed,
        "rows_recovered": rows,
        "close_s": close_s,
        "recovery_start": str(recovery.start) if recovery is not None else None,
        "loader": loaded,
        "loader_peak_rss_mib": usage.ru_maxrss / 1024.0,
        "peak_rss_after_open_mib": rss_after_open,
    }


# --------------------------------------------------------------------------- W8


def _copy_file(source: str, target: str) -> int:
    """Plain copy, 1 MiB at a time, then fsync: what copying these bytes costs at best."""
    copied = 0
    with open(source, "rb") as reader, open(target, "wb") as writer:
        while True:
            chunk = reader.read(1 << 20)
            if not chunk:
                break
            writer.write(chunk)
            copied += len(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return copied


def w8_backup(state: WorkerState, params: Params) -> Result:
    if state.peer_name != "jetstore":
        raise BenchError("W8 measures jetstore's online backup only")
    import jetstore

    directory = os.path.join(state.directory, "w8")
    target = int(params["backup_bytes"])
    instance = jetstore.open(directory, **JETSTORE_OPTIONS)
    try:
        db = instance.database("bench", create=True)
        db.create_table("kv", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        path = db.file.path
        rnd = random.Random(params["seed"] + 8)
        rows = 0
        load_start = time.perf_counter()
        while os.path.getsize(path) < target:
            keys = key_blob(range(SPACE_W8 + rows, SPACE_W8 + rows + W8_BATCH_ROWS))
            with db.transaction() as txn:
                insert = txn.table("kv").insert
                for key, value in bulk_rows(keys, W8_VALUE, rnd.getrandbits(32)):
                    insert({"k": key, "v": value})
            rows += W8_BATCH_ROWS
            instance.checkpoint()
        load_s = time.perf_counter() - load_start
        db_bytes = os.path.getsize(path)

        copy_start = time.perf_counter()
        copied = _copy_file(path, os.path.join(state.directory, "w8-plain-copy.edb"))
        copy_s = time.perf_counter() - copy_start
        os.unlink(os.path.join(state.directory, "w8-plain-copy.edb"))

        seconds = float(params["w8_idle_seconds"])

        def write(key: bytes, value: bytes) -> None:
            with db.transaction() as txn:
                txn.table("kv").insert({"k": key, "v": value})

        idle_commits, idle_lat, t0, t1 = _commit_loop(
            write, SPACE_W8 + (1 << 36), SMALL_VALUE, seconds, params["seed"] + 80
        )
        during: list[float] = []
        stop = threading.Event()
        failures: list[BaseException] = []

        def writer() -> None:
            rnd_w = random.Random(params["seed"] + 81)
            n = SPACE_W8 + (2 << 36)
            try:
                while not stop.is_set():
                    key = _KEY.pack(scramble(n), n)
                    value = rnd_w.randbytes(SMALL_VALUE)
                    before = time.perf_counter()
                    write(key, value)
                    during.append(time.perf_counter() - before)
                    n += 1
            except BaseException as exc:  # reported below
                failures.append(exc)

        thread = threading.Thread(target=writer, name="w8-writer")
        thread.start()
        dest = os.path.join(state.directory, "w8-set")
        try:
            backup_start = time.perf_counter()
            manifest = instance.backup(dest, kind="full")
            backup_s = time.perf_counter() - backup_start
        finally:
            stop.set()
            thread.join()
        if failures:
            raise BenchError(f"the W8 writer failed during the backup: {failures[0]!r}")
        backup_bytes = sum(f.size for f in manifest.files)
        verification = jetstore.verify_backup(dest)
        if not verification.ok:
            raise BenchError(f"the W8 backup set does not verify: {verification.as_dict()}")
    finally:
        instance.close()
    idle = latency_summary(idle_lat)
    busy = latency_summary(during)
    backup_rate = backup_bytes / backup_s / MB
    copy_rate = copied / copy_s / MB
    return {
        "value": backup_rate,
        "backup_bytes": backup_bytes,
        "backup_s": backup_s,
        "database_bytes": db_bytes,
        "plain_copy_mb_per_s": copy_rate,
        "backup_vs_copy": backup_rate / copy_rate if copy_rate else None,
        "rows_loaded": rows,
        "load_s": load_s,
        "idle_commits": idle_commits,
        "idle_commits_per_s": idle_commits / (t1 - t0) if t1 > t0 else None,
        "commits_during_backup": len(during),
        "commits_per_s_during_backup": len(during) / backup_s if backup_s else None,
        "idle_p99_us": idle["p99_us"],
        "during_p99_us": busy["p99_us"],
        "idle_median_us": idle["median_us"],
        "during_median_us": busy["median_us"],
        "peak_rss_mib": peak_rss_mib(),
    }


RUNNERS: dict[str, Callable[[WorkerState, Params], Result]] = {
    "W1": w1_commits,
    "W2": w2_commits,
    "W2C": w2c_commits,
    "W3": w3_bulk_load,
    "W4": w4_point_reads,
    "W5": w5_scan,
    "W6": w6_commits,
    "W7": w7_replay,
    "W8": w8_backup,
}


# --------------------------------------------------------------------------- worker


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(PROTOCOL_PREFIX + json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


def _numeric_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        key: after[key] - before.get(key, 0)
        for key in after
        if isinstance(after[key], int | float) and isinstance(before.get(key, 0), int | float)
    }


def run_command(state: WorkerState, workload: str, params: Params) -> Result:
    runner = RUNNERS[workload]
    touches_store = workload != "W7"
    stats_before: dict[str, Any] = {}
    if touches_store:
        stats_before = state.ensure_open().stats()
    result = runner(state, params)
    if touches_store and state.peer is not None:
        settle = state.peer.settle()
        result["settle"] = settle
        stats = state.peer.stats()
        if stats:
            result["engine"] = _numeric_delta(stats_before, stats)
        if workload == "W3" and "checkpoint_s" in settle:
            total = result["seconds"] + settle["checkpoint_s"]
            result["rows_per_s_incl_checkpoint"] = result["rows"] / total
        result["disk_bytes"] = dir_bytes(state.peer.directory)
    result["peak_rss_mib"] = peak_rss_mib()
    result["rss_mib"] = current_rss_mib()
    return result


def worker_main(peer_name: str, directory: str) -> int:
    state = WorkerState(peer_name, directory)
    describe: dict[str, Any] = {}
    try:
        describe = make_peer(peer_name, directory).describe()
    except Exception as exc:
        describe = {"error": repr(exc)}
    _send({"ready": True, "pid": os.getpid(), "peak_rss_mib": peak_rss_mib(), "peer": describe})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("op") == "quit":
            reply: dict[str, Any] = {"ok": True, "closed": True}
            try:
                if state.peer is not None:
                    start = time.perf_counter()
                    state.peer.close()
                    reply["close_s"] = time.perf_counter() - start
            except BaseException as exc:
                reply = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()}
            reply["peak_rss_mib"] = peak_rss_mib()
            _send(reply)
            return 0
        workload = command["workload"]
        try:
            result = run_command(state, workload, command["params"])
            if state.open_s:
                result.setdefault("open_s", state.open_s)
            _send({"ok": True, "result": result})
        except BaseException as exc:
            text = traceback.format_exc()
            remote = getattr(exc, "remote_traceback", None)
            if remote:
                text = f"{text}\n--- failing thread(s) ---\n{remote}"
            _send(
                {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": text,
                    "peak_rss_mib": peak_rss_mib(),
                }
            )
            if not isinstance(exc, Exception):
                raise
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "worker":
        return worker_main(argv[1], argv[2])
    if len(argv) == 4 and argv[0] == "w7-load":
        w7_load_main(argv[1], int(argv[2]), int(argv[3]))
        return 0
    sys.stderr.write(
        "usage: workloads.py worker PEER DIR | workloads.py w7-load DIR BYTES SEED\n"
        "(started by bench/run.py; run that instead)\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
