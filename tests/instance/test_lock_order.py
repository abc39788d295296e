"""The engine's locks are taken in one global order (`jetstore.instance.instance`, "Lock
order"): every path that holds one lock while it takes another takes them in that order, so
no two threads can wait for each other in a cycle.

The locks of the engine's modules are replaced by recording ones, named after the attribute
they are created for (`instance.commit_lock`, `cache.lock`, ...), and every path the order
names runs once: commits lazy and durable, point reads, a commit larger than the cache
budget (its write-back checkpoint), checkpoints, a backup begun, streamed and completed,
counters through the control socket, detach, attach and close. Every pair of locks seen
held together must follow the documented order.
"""

from __future__ import annotations

import importlib
import linecache
import os
import re
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.control.client import connect

#: The documented order (`jetstore.instance.instance`), first taken first.
ORDER = [
    "instance._close_lock",
    "instance._round_lock",
    "session._lock",
    "instance._checkpoint_lock",
    "instance._backup_lock",
    "instance.commit_lock",
    "database._active_lock",
    "pagefile._space_lock",
    "cache.lock",
    "pointindex.lock",
    "pagefile._header_lock",
    "writer._lock",
    "events._lock",
    "handles._lock",
]
MODULES = [
    "jetstore.instance.instance",
    "jetstore.instance.database",
    "jetstore.instance.events",
    "jetstore.backup.session",
    "jetstore.pages.cache",
    "jetstore.pages.pointindex",
    "jetstore.pages.pagefile",
    "jetstore.log.writer",
    "jetstore.io.handles",
]
_ATTRIBUTE = re.compile(r"self\.(\w+)\s*(?::[^=]*)?=")


class Recorder:
    """The pairs (held, taken) of lock names seen, with where the first of each was taken."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], str] = {}
        self._held = threading.local()

    def held(self) -> list[RecordingLock]:
        stack: list[RecordingLock] | None = getattr(self._held, "stack", None)
        if stack is None:
            stack = self._held.stack = []
        return stack

    def factory(self, make: Callable[[], Any]) -> Callable[[], RecordingLock]:
        def create() -> RecordingLock:
            caller = sys._getframe(1)
            module = os.path.splitext(os.path.basename(caller.f_code.co_filename))[0]
            line = linecache.getline(caller.f_code.co_filename, caller.f_lineno)
            match = _ATTRIBUTE.search(line)
            name = f"{module}.{match.group(1) if match else f'line{caller.f_lineno}'}"
            return RecordingLock(self, make(), name)

        return create


class RecordingLock:
    def __init__(self, recorder: Recorder, inner: Any, name: str) -> None:
        self._recorder = recorder
        self._inner = inner
        self.name = name

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        stack = self._recorder.held()
        if self not in stack:  # a re-entry of an RLock is no new pair
            for other in stack:
                pair = (other.name, self.name)
                if pair not in self._recorder.pairs:
                    where = "".join(traceback_lines())
                    self._recorder.pairs[pair] = where
        taken: bool = self._inner.acquire(blocking, timeout)
        if taken:
            stack.append(self)
        return taken

    def release(self) -> None:
        stack = self._recorder.held()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self:
                del stack[i]
                break
        self._inner.release()

    def locked(self) -> bool:
        return bool(self._inner.locked())

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def traceback_lines() -> list[str]:
    import traceback

    return traceback.format_stack(limit=12)[:-3]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    shim = types.SimpleNamespace(
        **{name: getattr(threading, name) for name in dir(threading) if not name.startswith("__")}
    )
    shim.Lock = recorder.factory(threading.Lock)
    shim.RLock = recorder.factory(threading.RLock)
    for name in MODULES:
        monkeypatch.setattr(importlib.import_module(name), "threading", shim)
    yield recorder


def fill(db: jetstore.Database, start: int, count: int, size: int = 100) -> None:
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "bytes")], primary_key="id")
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(start, start + count):
            table.insert({"id": i, "v": bytes([i % 251]) * size})


def test_every_path_takes_the_engines_locks_in_the_documented_order(
    tmp_path: Path, recorder: Recorder
) -> None:
    options = {
        "log_file_size": 64 * 1024,
        "cache_size": 256 * 1024,
        "checkpoint_interval": 0.05,
        "lazy_flush_interval": 0.01,
    }
    home = tmp_path / "home"
    instance = jetstore.open(home, **options)
    try:
        main = instance.database("main", create=True)
        other = instance.database("other", create=True)
        fill(main, 0, 500)
        fill(other, 0, 100)
        for i in range(40):
            with main.transaction() as txn:
                txn.table("t").update(i * 7, {"v": b"x" * 50})
                txn.commit(lazy=i % 2 == 0)
        with main.transaction() as txn:
            for i in range(0, 500, 3):
                assert txn.table("t").get(i) is not None
        # Larger than the cache budget: the commit checkpoints before it returns. The
        # background round (due at half the budget) is held off, as `unclosed.collect`
        # does, so that it does not write the pages first.
        with instance._round_lock:
            fill(main, 10_000, 3000, size=200)
        assert instance.write_backs >= 1
        instance.checkpoint()
        with instance.begin_backup() as session:
            for file in session.files():
                for _chunk in session.read(file):
                    pass
            session.complete()
        with connect(home) as client:
            assert client.counters()["commits"] > 0
        path = instance.detach("other")
        instance.attach(path)
        instance.remove_logs(safe=False, dry_run=True)
    finally:
        instance.close()
    assert recorder.pairs, "no lock was recorded: the recording locks are not in place"
    unknown = {name for pair in recorder.pairs for name in pair} - set(ORDER)
    assert not unknown, f"locks missing from the documented order: {sorted(unknown)}"
    against = [
        f"{held} held while taking {taken}, at:\n{where}"
        for (held, taken), where in recorder.pairs.items()
        if ORDER.index(held) >= ORDER.index(taken)
    ]
    assert not against, "\n".join(against)
