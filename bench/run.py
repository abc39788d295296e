"""`make bench`: jetstore against sqlite3 and lmdb, side by side, in one invocation.

Runs W1-W8 and W2C (see bench/README.md and workloads.py) on every selected peer, alternating
the peers workload by workload, prints a table of figures with jetstore/peer ratios and
PASS/MISS per target, then one `BENCH_JSON {...}` line with everything (grep for it).

Each peer lives in its own worker process (workloads.py), started fresh for every repeat, so
its peak RSS is its own: the worker reports ru_maxrss after every workload and this process
collects the worker's final rusage with os.wait4. W7 and W8 run in workers of their own.

Exit status: 0 when every cell was measured (MISSes included), 1 when a workload failed
(its cell reads ERROR and the error, traceback and a command to reproduce it are printed).

    .venv/bin/python bench/run.py [--quick] [--n N] [--commit-seconds S] [--repeat R]
        [--dir DIR] [--only W1,W3] [--peers jetstore,sqlite3,lmdb] [--replay-mib M] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

from peers import PEER_NAMES  # noqa: E402
from workloads import PROTOCOL_PREFIX, TITLES, UNITS, WORKLOADS  # noqa: E402

WORKLOADS_PY = os.path.join(BENCH_DIR, "workloads.py")
ENGINE = "jetstore"
BASELINE = "sqlite3"
# Order inside one repeat, as perf-baselines.md: load, reads, scan, then commits; W7, W8 last.
# W2C (W2 with a checkpoint thread running) comes right after W2.
ORDER = ("W3", "W4", "W5", "W1", "W2", "W2C", "W6", "W7", "W8")
COMMIT_WORKLOADS = ("W1", "W2", "W2C", "W6")
ENGINE_ONLY = {"W7", "W8"}
# Targets from issue #2: jetstore / sqlite3 in the same run; W7 in MB/s.
RATIO_TARGETS = {"W1": 1.3, "W2": 2.0, "W3": 1.0, "W4": 2.0, "W5": 1.0, "W6": 1.2}
ABSOLUTE_TARGETS = {"W7": 100.0}
# The issue sets no target of its own for W2C: it is judged against W2's, labelled as such.
BORROWED_TARGETS = {"W2C": "W2"}
# Table titles where TITLES (the JSON's) do not fit the 40-character column.
TABLE_TITLES = {"W2C": "W2 + checkpoint running, N threads"}


# --------------------------------------------------------------------------- workers


class WorkerFailed(Exception):
    """The worker process died or stopped answering."""


class Worker:
    """One worker process (`workloads.py worker PEER DIR`) and its line protocol."""

    def __init__(self, peer: str, directory: str, start_timeout: float = 120.0) -> None:
        self.peer = peer
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, WORKLOADS_PY, "worker", peer, directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            cwd=BENCH_DIR,
        )
        self._buffer = b""
        self.peak_rss_mib: float | None = None
        self.exit_status: int | None = None
        self.hello = self._read(start_timeout)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerFailed(f"cannot write to the {self.peer} worker: {exc}") from exc
        return self._read(timeout)

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if line.startswith(PROTOCOL_PREFIX):
                    reply: dict[str, Any] = json.loads(line[len(PROTOCOL_PREFIX) :])
                    return reply
                sys.stderr.write(f"[{self.peer} worker] {line}\n")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerFailed(f"no answer within {timeout:.0f} s; worker killed")
            ready, _, _ = select.select([fd], [], [], min(remaining, 5.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                status = self.reap()
                raise WorkerFailed(f"the {self.peer} worker exited (status {status})")
            self._buffer += chunk

    def reap(self, block: bool = True, timeout: float = 60.0) -> int | None:
        """Collect the exit status and the process's peak RSS (os.wait4)."""
        if self.exit_status is not None:
            return self.exit_status
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
            if pid == self.proc.pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.exit_status
                self.peak_rss_mib = usage.ru_maxrss / 1024.0
                return self.exit_status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def kill(self) -> None:
        if self.exit_status is None:
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap()

    def finish(self, timeout: float) -> dict[str, Any]:
        """Ask the worker to close its store and exit; returns its last answer."""
        if self.exit_status is not None:  # died or was killed: already reported
            return {"ok": True, "exited": self.exit_status}
        try:
            reply = self.request({"op": "quit"}, timeout)
        except WorkerFailed as exc:
            return {"ok": False, "error": str(exc)}
        finally:
            if self.proc.stdin is not None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
        if self.reap(block=False, timeout=timeout) is None:
            self.kill()
        return reply


# --------------------------------------------------------------------------- results


@dataclass
class Cell:
    """The runs of one workload on one peer."""

    values: list[float] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


@dataclass
class Report:
    args: argparse.Namespace
    peers: list[str]
    workloads: list[str]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    rss: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    describe: dict[str, Any] = field(default_factory=dict)

    def cell(self, workload: str, peer: str) -> Cell:
        return self.cells.setdefault((workload, peer), Cell())

    def ratio(self, workload: str, peer: str) -> float | None:
        """Median over repeats of jetstore/peer, each pair measured in the same repeat."""
        mine, theirs = self.cells.get((workload, ENGINE)), self.cells.get((workload, peer))
        if mine is None or theirs is None:
            return None
        by_repeat_mine = {r["repeat"]: r["value"] for r in mine.runs if "value" in r}
        ratios = [
            by_repeat_mine[r["repeat"]] / r["value"]
            for r in theirs.runs
            if "value" in r and r["value"] > 0 and r["repeat"] in by_repeat_mine
        ]
        return statistics.median(ratios) if ratios else None

    def target(self, workload: str) -> dict[str, Any] | None:
        borrowed = BORROWED_TARGETS.get(workload)
        if borrowed is not None:
            goal = RATIO_TARGETS[borrowed]
            got = self.ratio(workload, BASELINE)
            text = f">= {goal:g}x {BASELINE} ({borrowed})"
        elif workload in RATIO_TARGETS:
            goal = RATIO_TARGETS[workload]
            got = self.ratio(workload, BASELINE)
            text = f">= {goal:g}x {BASELINE}"
        elif workload in ABSOLUTE_TARGETS:
            goal = ABSOLUTE_TARGETS[workload]
            got = (
                self.cells[(workload, ENGINE)].median if (workload, ENGINE) in self.cells else None
            )
            text = f">= {goal:g} {UNITS[workload]}"
        else:
            return None
        if got is None:
            status = "ERROR" if self._failed(workload) else "n/a"
        else:
            status = "PASS" if got >= goal else "MISS"
        target = {"goal": goal, "measured": got, "text": text, "status": status}
        if borrowed is not None:
            target["borrowed_from"] = borrowed
        return target

    def _failed(self, workload: str) -> bool:
        return any(c.errors and not c.values for (w, _p), c in self.cells.items() if w == workload)


# --------------------------------------------------------------------------- running


def workload_params(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n": args.n,
        "commit_seconds": args.commit_seconds,
        "threads": args.threads,
        "replay_bytes": int(args.replay_mib * (1 << 20)),
        "backup_bytes": int(args.backup_mib * (1 << 20)),
        "w8_idle_seconds": args.commit_seconds,
        "seed": args.seed,
    }


def timeout_for(workload: str, args: argparse.Namespace) -> float:
    if args.timeout:
        return float(args.timeout)
    if workload in COMMIT_WORKLOADS:
        return 4 * float(args.commit_seconds) + 600.0  # the settle checkpoint may be slow
    if workload == "W7":
        return 1800.0 + float(args.replay_mib) * 10.0
    if workload == "W8":
        return 1800.0 + float(args.backup_mib) * 2.0
    return 600.0 + int(args.n) / 500.0


def reproduce_command(workload: str, peer: str, args: argparse.Namespace) -> str:
    only = f"W3,{workload}" if workload in ("W4", "W5") else workload
    parts = [
        ".venv/bin/python bench/run.py",
        f"--peers {peer}",
        f"--only {only}",
        f"--n {args.n}",
        f"--commit-seconds {args.commit_seconds:g}",
        f"--threads {args.threads}",
    ]
    if workload == "W7":
        parts.append(f"--replay-mib {args.replay_mib:g}")
    if workload == "W8":
        parts.append(f"--backup-mib {args.backup_mib:g}")
    return " ".join(parts)


def progress(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def run_repeat(report: Report, repeat: int, scratch: str) -> None:
    args = report.args
    params = workload_params(args)
    offset = repeat % len(report.peers)
    order = report.peers[offset:] + report.peers[:offset]
    base = os.path.join(scratch, f"repeat{repeat + 1}")
    workers: dict[str, Worker | None] = {}
    restarts: dict[str, int] = {}
    rss_rows: dict[str, dict[str, Any]] = {p: {"repeat": repeat + 1} for p in report.peers}

    def start(peer: str) -> Worker | None:
        n = restarts.get(peer, 0)
        directory = os.path.join(base, peer if n == 0 else f"{peer}-restart{n}")
        try:
            worker = Worker(peer, directory)
        except (WorkerFailed, OSError) as exc:
            record_error(report, "start", peer, repeat, f"worker did not start: {exc}", "", args)
            return None
        report.describe.setdefault(peer, worker.hello.get("peer", {}))
        rss_rows[peer].setdefault("start_mib", worker.hello.get("peak_rss_mib"))
        return worker

    def finish(peer: str) -> None:
        worker = workers.pop(peer, None)
        if worker is None:
            return
        reply = worker.finish(timeout=600.0)
        if not reply.get("ok"):
            record_error(
                report,
                "close",
                peer,
                repeat,
                f"closing the store failed: {reply.get('error')}",
                reply.get("traceback", ""),
                args,
            )
        rss_rows[peer]["close_s"] = reply.get("close_s")
        previous = rss_rows[peer].get("process_peak_mib") or 0.0
        rss_rows[peer]["process_peak_mib"] = max(previous, worker.peak_rss_mib or 0.0)

    shared = [w for w in ORDER if w in report.workloads and w not in ENGINE_ONLY]
    for workload in shared:
        for peer in order:
            if peer not in workers:
                workers[peer] = start(peer)
            worker = workers[peer]
            cell = report.cell(workload, peer)
            if worker is None:
                cell.errors.append("worker did not start")
                continue
            label = f"[repeat {repeat + 1}] {workload} {peer}"
            progress(f"{label}: running ...")
            try:
                reply = worker.request(
                    {"op": "run", "workload": workload, "params": params},
                    timeout_for(workload, args),
                )
            except WorkerFailed as exc:
                cell.errors.append(str(exc))
                record_error(report, workload, peer, repeat, str(exc), "", args)
                progress(f"{label}: ERROR {exc}; restarting the worker")
                finish(peer)  # reaps it; the next workload starts a fresh worker
                restarts[peer] = restarts.get(peer, 0) + 1
                continue
            if reply.get("ok"):
                result = reply["result"]
                result["repeat"] = repeat + 1
                cell.values.append(result["value"])
                cell.runs.append(result)
                rss_rows[peer][f"after_{workload}_mib"] = result.get("peak_rss_mib")
                progress(f"{label}: {format_value(result['value'])} {UNITS[workload]}")
            else:
                cell.errors.append(reply.get("error", "?"))
                record_error(
                    report,
                    workload,
                    peer,
                    repeat,
                    reply.get("error", "?"),
                    reply.get("traceback", ""),
                    args,
                )
                progress(f"{label}: ERROR {reply.get('error')}")
    for peer in list(workers):
        finish(peer)

    if "W7" in report.workloads and ENGINE in report.peers:
        reply, peak = run_engine_only(
            report,
            "W7",
            repeat,
            os.path.join(base, "w7"),
            params,
            f"loading ~{args.replay_mib:g} MiB of log, killing, reopening ...",
            lambda result: f"{format_value(result['value'])} MB/s",
        )
        if peak is not None:
            rss_rows[ENGINE]["w7_reopen_process_peak_mib"] = peak
            if reply.get("ok"):
                rss_rows[ENGINE]["w7_loader_process_peak_mib"] = reply["result"].get(
                    "loader_peak_rss_mib"
                )
    if "W8" in report.workloads and ENGINE in report.peers:
        _reply, peak = run_engine_only(
            report,
            "W8",
            repeat,
            os.path.join(base, "w8"),
            params,
            f"loading ~{args.backup_mib:g} MiB, then a full backup under load ...",
            lambda result: (
                f"{format_value(result['value'])} MB/s "
                f"(plain copy {format_value(result['plain_copy_mb_per_s'])} MB/s)"
            ),
        )
        if peak is not None:
            rss_rows[ENGINE]["w8_process_peak_mib"] = peak
    for peer, row in rss_rows.items():
        report.rss.setdefault(peer, []).append(row)


def run_engine_only(
    report: Report,
    workload: str,
    repeat: int,
    directory: str,
    params: dict[str, Any],
    announce: str,
    describe: Callable[[dict[str, Any]], str],
) -> tuple[dict[str, Any], float | None]:
    """Run a jetstore-only workload (W7, W8) in a worker of its own; returns the worker's
    reply and its peak RSS (None when it did not start)."""
    cell = report.cell(workload, ENGINE)
    label = f"[repeat {repeat + 1}] {workload} {ENGINE}"
    progress(f"{label}: {announce}")
    worker = None
    try:
        worker = Worker(ENGINE, directory)
        reply = worker.request(
            {"op": "run", "workload": workload, "params": params},
            timeout_for(workload, report.args),
        )
    except (WorkerFailed, OSError) as exc:
        reply = {"ok": False, "error": str(exc)}
    if reply.get("ok"):
        result = reply["result"]
        result["repeat"] = repeat + 1
        cell.values.append(result["value"])
        cell.runs.append(result)
        progress(f"{label}: {describe(result)}")
    else:
        cell.errors.append(reply.get("error", "?"))
        record_error(
            report,
            workload,
            ENGINE,
            repeat,
            reply.get("error", "?"),
            reply.get("traceback", ""),
            report.args,
        )
        progress(f"{label}: ERROR {reply.get('error')}")
    if worker is None:
        return reply, None
    worker.finish(timeout=600.0)
    return reply, worker.peak_rss_mib


def record_error(
    report: Report,
    workload: str,
    peer: str,
    repeat: int,
    error: str,
    trace: str,
    args: argparse.Namespace,
) -> None:
    report.errors.append(
        {
            "workload": workload,
            "peer": peer,
            "repeat": repeat + 1,
            "error": error,
            "traceback": trace,
            "reproduce": reproduce_command(workload, peer, args) if workload in WORKLOADS else None,
        }
    )


# --------------------------------------------------------------------------- context


def fdatasync_probe(directory: str, count: int = 500) -> dict[str, float]:
    """Median latency of 4 KiB overwrite + fdatasync of a preallocated file (disk context)."""
    path = os.path.join(directory, "fdatasync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        size = 4 << 20
        os.ftruncate(fd, size)
        os.write(fd, b"\0" * size)
        os.fsync(fd)
        block = os.urandom(4096)
        latencies = []
        for i in range(count):
            start = time.perf_counter()
            os.pwrite(fd, block, (i * 4096) % size)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    latencies.sort()
    return {
        "median_us": latencies[len(latencies) // 2] * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
    }


def machine_info(scratch: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "switch_interval_s": sys.getswitchinterval(),
    }
    try:
        info["fdatasync_4k_overwrite"] = fdatasync_probe(scratch)
    except OSError as exc:
        info["fdatasync_4k_overwrite"] = {"error": str(exc)}
    return info


# --------------------------------------------------------------------------- output


def print_table(report: Report, machine: dict[str, Any]) -> None:
    args = report.args
    peers = report.peers
    others = [p for p in peers if p != ENGINE] if ENGINE in peers else []
    probe = machine.get("fdatasync_4k_overwrite", {})
    print()
    print(
        f"jetstore bench: n={args.n:,} rows, commits {args.commit_seconds:g} s, "
        f"W2 threads={args.threads}, W7 log ~{args.replay_mib:g} MiB, "
        f"W8 database ~{args.backup_mib:g} MiB, repeat={args.repeat} "
        f"(medians), peers={','.join(peers)}"
    )
    print(
        f"machine: {machine['nproc']} CPUs, Python {machine['python']}, load avg at start "
        f"{machine['loadavg_start'][0]:.2f}, 4 KiB overwrite+fdatasync median "
        f"{probe.get('median_us', float('nan')):.0f} us"
    )
    header = f"{'workload':<40} {'unit':<10}"
    header += "".join(f" {p:>12}" for p in peers)
    header += "".join(f" {'jet/' + p:>12}" for p in others)
    header += f"  {'target':<18} status"
    print()
    print(header)
    print("-" * len(header))
    for workload in report.workloads:
        if workload in ENGINE_ONLY and ENGINE not in peers:
            continue
        title = f"{workload} {TABLE_TITLES.get(workload, TITLES[workload])}"
        if workload in ("W2", "W2C"):
            title = title.replace("N threads", f"{args.threads} threads")
        line = f"{title:<40} {UNITS[workload]:<10}"
        for peer in peers:
            cell = report.cells.get((workload, peer))
            if cell is None:
                text = "n/a" if workload in ENGINE_ONLY else "-"
            elif cell.median is not None:
                text = format_value(cell.median)
                if cell.errors:
                    text += "*"
            elif cell.errors:
                text = "ERROR"
            else:
                text = "-"
            line += f" {text:>12}"
        for peer in others:
            ratio = report.ratio(workload, peer)
            line += f" {(f'{ratio:.2f}x' if ratio is not None else '-'):>12}"
        target = report.target(workload)
        if target is not None and ENGINE in peers:
            line += f"  {target['text']:<18} {target['status']}"
        print(line)
    extra = report.cells.get(("W3", ENGINE))
    if extra is not None and extra.runs:
        incl = [
            r["rows_per_s_incl_checkpoint"] for r in extra.runs if "rows_per_s_incl_checkpoint" in r
        ]
        if incl:
            print(
                f"{'   W3 jetstore incl. its checkpoint':<40} {'rows/s':<10} "
                f"{format_value(statistics.median(incl)):>12}   (not a target; sqlite3's commit "
                f"already includes its WAL checkpoint)"
            )
    for peer in peers:
        cell = report.cells.get(("W2C", peer))
        if cell is not None and any(r.get("checkpointer", "") is None for r in cell.runs):
            print(
                f"{'   W2C ' + peer + ': no checkpoint':<40} {'':<10} ({peer} has no checkpoint: "
                f"its W2C is a second W2 run)"
            )
    print()
    print_details(report)
    print_rss(report)
    print_errors(report)


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(values) if values else None


def print_details(report: Report) -> None:
    print("details (medians over repeats):")
    for workload in report.workloads:
        for peer in report.peers:
            cell = report.cells.get((workload, peer))
            if cell is None or not cell.runs:
                continue
            runs = cell.runs
            parts: list[str] = []
            if workload in COMMIT_WORKLOADS:
                parts.append(f"commits {format_value(_median_of(runs, 'commits'))}")
                parts.append(f"latency median {format_value(_median_of(runs, 'median_us'))} us")
                parts.append(f"p99 {format_value(_median_of(runs, 'p99_us'))} us")
                parts.append(f"{format_value(_median_of(runs, 'mb_per_s'))} MB/s")
                if workload == "W2C":
                    parts.append(checkpointer_details(runs))
            elif workload in ("W3", "W5"):
                parts.append(f"{format_value(_median_of(runs, 'mb_per_s'))} MB/s")
                parts.append(f"{format_value(_median_of(runs, 'seconds'))} s")
            elif workload == "W4":
                parts.append(f"{format_value(_median_of(runs, 'seconds'))} s")
                parts.append(
                    f"warm-up scan {format_value(_median_of(runs, 'warmup_scan_s'))} s (untimed)"
                )
            elif workload == "W7":
                first = runs[-1]
                parts.append(f"log {first['log_bytes'] / 1e6:.1f} MB in {first['log_files']} files")
                parts.append(f"open {format_value(_median_of(runs, 'open_s'))} s")
                parts.append(f"of which replay {format_value(_median_of(runs, 'replay_s'))} s")
                parts.append(f"checkpoint {format_value(_median_of(runs, 'open_checkpoint_s'))} s")
                parts.append(
                    f"replay-only {format_value(_median_of(runs, 'replay_only_mb_per_s'))} MB/s"
                )
                parts.append(f"records replayed {first['records_replayed']:,}")
                parts.append(f"rows recovered {first['rows_recovered']:,}")
            elif workload == "W8":
                last = runs[-1]
                parts.append(
                    f"set {last['backup_bytes'] / 1e6:,.0f} MB in "
                    f"{format_value(_median_of(runs, 'backup_s'))} s"
                )
                parts.append(
                    f"plain copy of the database "
                    f"{format_value(_median_of(runs, 'plain_copy_mb_per_s'))} MB/s"
                )
                parts.append(f"backup/copy {format_value(_median_of(runs, 'backup_vs_copy'))}")
                parts.append(
                    f"writer p99 idle {format_value(_median_of(runs, 'idle_p99_us'))} us, "
                    f"during backup {format_value(_median_of(runs, 'during_p99_us'))} us"
                )
                parts.append(
                    f"commits/s idle {format_value(_median_of(runs, 'idle_commits_per_s'))}, "
                    f"during {format_value(_median_of(runs, 'commits_per_s_during_backup'))}"
                )
            settle = [r.get("settle", {}).get("checkpoint_s") for r in runs]
            settle_values = [s for s in settle if isinstance(s, float)]
            if settle_values:
                parts.append(f"checkpoint after {format_value(statistics.median(settle_values))} s")
            disk = _median_of(runs, "disk_bytes")
            if disk is not None:
                parts.append(f"on disk {disk / 1e6:,.0f} MB")
            engine = runs[-1].get("engine")
            if engine and workload in COMMIT_WORKLOADS and engine.get("log_flushes"):
                per_flush = engine.get("commits", 0) / engine["log_flushes"]
                parts.append(f"{per_flush:.2f} commits per log flush")
            print(f"  {workload} {peer:<9} " + ", ".join(parts))
    print()


def checkpointer_details(runs: list[dict[str, Any]]) -> str:
    """W2C's checkpoint thread, for the details line (medians over repeats)."""
    what = runs[-1].get("checkpointer")
    if what is None:
        note = runs[-1].get("checkpointer_note", "the peer has no checkpoint")
        return f"no checkpoint ({note}: plain W2)"
    parts = [
        f"checkpoint thread: {format_value(_median_of(runs, 'checkpointer_calls'))} x {what}",
        f"median {format_value(_median_of(runs, 'checkpointer_median_ms'))} ms",
        f"max {format_value(_median_of(runs, 'checkpointer_max_ms'))} ms",
    ]
    engine_checkpoints = _median_of(runs, "checkpointer_engine_checkpoints")
    pages = _median_of(runs, "checkpointer_engine_pages_written")
    if engine_checkpoints is not None and pages is not None:
        parts.append(
            f"engine counters: {format_value(engine_checkpoints)} checkpoints wrote "
            f"{format_value(pages)} pages"
        )
    frames = _median_of(runs, "checkpointer_wal_frames_max")
    if frames is not None:
        parts.append(f"WAL at most {format_value(frames)} frames")
    busy_results = _median_of(runs, "checkpointer_busy")
    if busy_results is not None:
        parts.append(f"{format_value(busy_results)} returned busy (another checkpoint running)")
    return ", ".join(parts)


def print_rss(report: Report) -> None:
    print("peak RSS (MiB; each peer in its own worker process, max over repeats):")
    keys = ["start_mib"] + [f"after_{w}_mib" for w in ORDER if w not in ENGINE_ONLY]
    keys += ["process_peak_mib", "w7_reopen_process_peak_mib", "w7_loader_process_peak_mib"]
    keys += ["w8_process_peak_mib"]
    labels = {
        "start_mib": "worker started (interpreter + imports)",
        "process_peak_mib": "whole worker process (os.wait4)",
        "w7_reopen_process_peak_mib": "W7 reopen (recovery) process",
        "w7_loader_process_peak_mib": "W7 loader process",
        "w8_process_peak_mib": "W8 backup process",
    }
    peers = report.peers
    print(f"  {'':<40}" + "".join(f" {p:>10}" for p in peers))
    for key in keys:
        values: list[str] = []
        seen = False
        for peer in peers:
            rows = report.rss.get(peer, [])
            found = [r[key] for r in rows if isinstance(r.get(key), int | float)]
            seen = seen or bool(found)
            values.append(f"{max(found):.0f}" if found else "-")
        if not seen:
            continue
        label = labels.get(key, f"after {key[len('after_') : -len('_mib')]} (cumulative peak)")
        print(f"  {label:<40}" + "".join(f" {v:>10}" for v in values))
    print()


def print_errors(report: Report) -> None:
    if not report.errors:
        print("errors: none")
        return
    print(f"errors: {len(report.errors)}")
    for error in report.errors:
        print(f"--- {error['workload']} on {error['peer']} (repeat {error['repeat']}): ")
        print(f"    {error['error']}")
        if error.get("reproduce"):
            print(f"    reproduce: {error['reproduce']}")
        if error.get("traceback"):
            for line in error["traceback"].rstrip().splitlines():
                print(f"    | {line}")
    print()


def json_report(report: Report, machine: dict[str, Any], elapsed: float) -> dict[str, Any]:
    args = report.args
    results: dict[str, Any] = {}
    for workload in report.workloads:
        entry: dict[str, Any] = {"title": TITLES[workload], "unit": UNITS[workload], "peers": {}}
        for peer in report.peers:
            cell = report.cells.get((workload, peer))
            if cell is None:
                continue
            entry["peers"][peer] = {
                "median": cell.median,
                "values": cell.values,
                "errors": cell.errors,
                "runs": cell.runs,
            }
        if ENGINE in report.peers:
            entry["ratios"] = {
                f"{ENGINE}/{p}": report.ratio(workload, p) for p in report.peers if p != ENGINE
            }
            entry["target"] = report.target(workload)
        results[workload] = entry
    machine = dict(machine, loadavg_end=os.getloadavg())
    return {
        "schema": 1,
        "config": {
            "n": args.n,
            "commit_seconds": args.commit_seconds,
            "threads": args.threads,
            "repeat": args.repeat,
            "replay_mib": args.replay_mib,
            "backup_mib": args.backup_mib,
            "quick": args.quick,
            "peers": report.peers,
            "workloads": report.workloads,
            "seed": args.seed,
        },
        "machine": machine,
        "peers": report.describe,
        "results": results,
        "rss_mib": report.rss,
        "errors": report.errors,
        "elapsed_s": elapsed,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="jetstore vs sqlite3 and lmdb, side by side (W1-W8, W2C); see bench/README.md"
    )
    parser.add_argument("--n", type=int, help="rows for W3/W4/W5 (default 1,000,000)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="n=100,000, 2 s commit workloads, 25 MiB of log for W7, 64 MiB for W8 (unless set "
        "explicitly)",
    )
    parser.add_argument("--commit-seconds", type=float, help="seconds per W1/W2/W2C/W6 (default 5)")
    parser.add_argument("--repeat", type=int, default=1, help="repeats; medians are reported")
    parser.add_argument("--dir", help="scratch directory (default: a new temporary directory)")
    parser.add_argument("--only", help="comma-separated workloads, e.g. W1,W3 (default: all)")
    parser.add_argument(
        "--peers", default=",".join(PEER_NAMES), help="comma-separated peers (default: all)"
    )
    parser.add_argument("--threads", type=int, default=4, help="writer threads for W2 and W2C")
    parser.add_argument("--replay-mib", type=float, help="log to replay in W7 (default 100)")
    parser.add_argument(
        "--backup-mib", type=float, help="database size backed up in W8 (default 1024)"
    )
    parser.add_argument("--timeout", type=float, help="seconds per workload before giving up")
    parser.add_argument("--seed", type=int, default=20261121, help="data seed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data")
    args = parser.parse_args(argv)
    if args.n is None:
        args.n = 100_000 if args.quick else 1_000_000
    if args.commit_seconds is None:
        args.commit_seconds = 2.0 if args.quick else 5.0
    if args.replay_mib is None:
        args.replay_mib = 25.0 if args.quick else 100.0
    if args.backup_mib is None:
        args.backup_mib = 64.0 if args.quick else 1024.0
    if args.n < 1 or args.commit_seconds <= 0 or args.repeat < 1 or args.threads < 1:
        parser.error("--n, --commit-seconds, --repeat and --threads must be positive")
    if args.threads > 256:
        # Each writer thread draws keys from a range of its own inside its workload's range.
        parser.error("--threads is at most 256")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in peers if p not in PEER_NAMES]
    if unknown or not peers:
        parser.error(f"unknown peer(s) {unknown}; known: {', '.join(PEER_NAMES)}")
    args.peer_list = list(dict.fromkeys(peers))
    if args.only:
        only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
        bad = [w for w in only if w not in WORKLOADS]
        if bad:
            parser.error(f"unknown workload(s) {bad}; known: {', '.join(WORKLOADS)}")
        args.workload_list = [w for w in WORKLOADS if w in only]
    else:
        args.workload_list = list(WORKLOADS)
    return args


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinity (a latency of a run without samples) as None: JSON
    has no such numbers, and a strict parser refuses the line."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dir:
        os.makedirs(args.dir, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="jetstore-bench-", dir=args.dir)
    else:
        scratch = tempfile.mkdtemp(prefix="jetstore-bench-")
    progress(f"scratch directory: {scratch}")
    started = time.perf_counter()
    report = Report(args, args.peer_list, args.workload_list)
    try:
        machine = machine_info(scratch)
        for repeat in range(args.repeat):
            run_repeat(report, repeat, scratch)
            if not args.keep:
                shutil.rmtree(os.path.join(scratch, f"repeat{repeat + 1}"), ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            progress(f"scratch data kept in {scratch}")
    elapsed = time.perf_counter() - started
    print_table(report, machine)
    print(f"elapsed {elapsed:.0f} s")
    line = json.dumps(
        _finite(json_report(report, machine, elapsed)),
        default=str,
        separators=(",", ":"),
        allow_nan=False,
    )
    print("BENCH_JSON " + line)
    sys.stdout.flush()
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
