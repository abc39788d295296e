"""Shared helpers of the control socket suites: an instance with data, raw protocol access,
and the resource baseline (fds, threads, registered handles) every test returns to."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jetstore
from jetstore.io.handles import DEFAULT_REGISTRY

LOG = 64 * 1024


def open_instance(path: Path, **options: Any) -> jetstore.Instance:
    options.setdefault("log_file_size", LOG)
    options.setdefault("cache_size", 2 * 1024 * 1024)
    return jetstore.open(path, **options)


def load(inst: jetstore.Instance, first: int, count: int, *, width: int = 200) -> None:
    db = inst.database("main", create=True)
    if "kv" not in db.table_names():
        db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(first, first + count):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": f"{i}:" + "x" * width})


def rows(inst: jetstore.Instance) -> dict[int, str]:
    with inst.database("main").transaction() as txn:
        return {r["k"]: r["v"] for r in txn.table("kv").scan()}


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def wait_idle(inst: jetstore.Instance, timeout: float = 20.0) -> None:
    """Until no backup session runs (a killed or hung-up client's session is aborted)."""
    wait_for(lambda: inst.counters()["backup_sessions_active"] == 0, "the backup to end", timeout)


@dataclass(frozen=True)
class Baseline:
    fds: int
    threads: int
    handles: dict[str, int]
    default_handles: dict[str, int]

    @classmethod
    def take(cls, inst: jetstore.Instance) -> Baseline:
        return cls(
            fds(), threading.active_count(), inst.registry.counts(), DEFAULT_REGISTRY.counts()
        )

    def wait(self, inst: jetstore.Instance, timeout: float = 20.0) -> None:
        """Until fds, threads and every registry count are exactly back at this baseline (a
        finished backup worker is joined by the server a moment after its last reply)."""
        deadline = time.monotonic() + timeout
        while True:
            current = Baseline.take(inst)
            if current == self:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not back at the baseline:\n  then {self}\n  now  {current}")
            time.sleep(0.01)


class Raw:
    """A raw protocol connection (bytes in, lines and frames out) for protocol tests."""

    def __init__(self, directory: Path, timeout: float = 20.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(str(directory / "jetstore.sock"))
                break
            except BlockingIOError:  # the listen backlog is full for a moment
                assert time.monotonic() < deadline
                time.sleep(0.005)
        self.buffer = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send((json.dumps(message) + "\n").encode())
        return self.line()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        if not data:
            return False
        self.buffer += data
        return True

    def line(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"connection closed; pending {bytes(self.buffer[:200])!r}")
        end = self.buffer.index(b"\n")
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        reply: dict[str, Any] = json.loads(line)
        return reply

    def exact(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError("connection closed mid-frame")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def frame(self) -> bytes | None:
        """One frame's data; None for the end-of-file frame."""
        (length,) = struct.unpack(">I", self.exact(4))
        if length == 0:
            return None
        assert length != 0xFFFFFFFF, self.line()
        return self.exact(length)

    def closed_by_server(self) -> bool:
        try:
            while self._fill():
                pass
        except OSError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()


AGENT = Path(__file__).with_name("backup_agent.py")


class Agent:
    """A backup client in its own process (`backup_agent.py`), driven over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(AGENT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = bytearray()
        ready = self.read(60)
        assert ready.get("ready"), ready

    def read(self, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"backup agent {self.proc.pid} said nothing in {timeout} s")
            readable, _, _ = select.select([self.proc.stdout], [], [], left)
            if readable:
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    raise AssertionError(f"backup agent exited with {self.proc.wait()}")
                self._buffer += data
        end = self._buffer.index(b"\n")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    def run(self, command: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        self.send(command)
        return self.read(timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close()

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
