"""`jetstore demo`: kill a committing process with SIGKILL, reopen, prove nothing was lost.

This module owns the demo end to end, in both of its processes:

* the parent (`demo_command` / `run_demo`) creates an instance with small logs and a small
  checkpoint depth (so log rolls and checkpoints happen during the run), loads a few hundred
  orders in one transaction, starts the child, reads its acknowledgements, sends SIGKILL
  mid-stream, reopens the instance (soft recovery runs) and checks the result;
* the child (`python -m jetstore.cli.demo --child DIR ...`, `child_main`) opens the instance
  and commits forever. Each transaction inserts one order and increments its customer's
  counter row, with a durable commit; ``ACK <n> <order_id>`` is printed and flushed only
  after ``commit()`` returned, so every line the parent reads is a durability promise.

What the parent checks after recovery:

* every acknowledged order is present with exactly the content the child wrote (the content
  is a pure function of the seed and the order id, so the parent recomputes it);
* no partial transaction is visible: for every customer the counter equals the number of that
  customer's orders (by primary key and through the secondary index);
* the child's orders present form one gap-free run (commits are durable in log order), and at
  most one more than acknowledged survived: the child is single-threaded, so only the commit
  in flight at the kill can be durable without its acknowledgement;
* no OS handle is left open after the instance is closed.

The child protocol (one line each, on the child's stdout): ``READY <pid>``, then any number of
``ACK <n> <order_id>`` and ``STAT <json counters>``. Anything on the child's stderr is shown
when the child dies on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

import jetstore
from jetstore.cli.output import (
    ExitCode,
    command_errors,
    discard_closed_output,
    finish,
    json_option,
    report_usage,
    stdout_console,
)
from jetstore.errors import JetError
from jetstore.io.files import FileSystem

__all__ = ["child_main", "demo_command", "expected_order", "run_demo"]

# Small logs and a small checkpoint depth: a two-second run rolls the log many times and
# checkpoints several times, so recovery starts from a real checkpoint, not from the start.
INSTANCE_OPTIONS: Final[dict[str, Any]] = {
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 128 * 1024,
    "checkpoint_interval": 0.5,
}
DATABASE: Final = "main"
INITIAL_ORDERS: Final = 300
CUSTOMERS: Final = ("ada", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
_WORDS: Final = (
    "blue", "crate", "express", "fragile", "gift", "keep", "dry", "return", "bulk", "spare",
    "urgent", "label", "pallet", "sample", "invoice", "signed", "fresh", "left", "door", "ok",
)  # fmt: skip
#: Roughly one order in 25 carries a note too large for its record (stored as a long value).
_LONG_NOTE_EVERY: Final = 25

#: The child is single-threaded: only the commit in flight at the kill can be durable
#: without an acknowledgement. One more is tolerated if the kill cut an ACK line in half.
MAX_UNACKNOWLEDGED: Final = 1
DEFAULT_KILL_AFTER: Final = (1.5, 2.5)  # seconds after READY, drawn from the seed
READY_TIMEOUT: Final = 20.0  # seconds for the child to import jetstore and open the instance
CHILD_MAX_SECONDS: Final = 120.0  # the child stops by itself if it was never killed
STAT_EVERY: Final = 20  # acknowledgements between two STAT lines


# --------------------------------------------------------------------------- shared


def expected_order(seed: int, order_id: int) -> dict[str, object]:
    """The order with id `order_id` of the run with `seed`: the child writes it, the parent
    recomputes it to check the content after recovery (no side channel needed)."""
    # A str seed is hashed with SHA-512 by random.Random: stable across processes and
    # independent of PYTHONHASHSEED.
    rng = random.Random(f"jetstore-demo:{seed}:{order_id}")
    customer = rng.choice(CUSTOMERS)
    amount = round(rng.uniform(1.0, 999.0), 2)
    note = " ".join(rng.choices(_WORDS, k=rng.randint(1, 10)))
    if rng.randrange(_LONG_NOTE_EVERY) == 0:
        note += " " + "".join(rng.choices("abcdefghij", k=rng.randint(3000, 9000)))
    return {"id": order_id, "customer": customer, "amount": amount, "note": note}


def _open_instance(directory: str) -> jetstore.Instance:
    return jetstore.open(directory, **INSTANCE_OPTIONS)


def _handles_open(instance: jetstore.Instance) -> int:
    handles: dict[str, int] = instance.counters()["handles"]
    return sum(handles.values())


# --------------------------------------------------------------------------- child


def child_main(argv: Sequence[str] | None = None) -> int:
    """The committing child: ``python -m jetstore.cli.demo --child DIR --seed S --first-id N``."""
    parser = argparse.ArgumentParser(prog="python -m jetstore.cli.demo")
    parser.add_argument("--child", required=True, metavar="DIR")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=CHILD_MAX_SECONDS)
    args = parser.parse_args(argv)
    try:
        _child_loop(args.child, args.seed, args.first_id, args.max_seconds)
    except BrokenPipeError:
        # The parent went away: nobody is left to acknowledge to. The instance is closed
        # (`_child_loop`); a quiet exit, with the status the `jetstore` command ends with
        # when its reader goes away.
        discard_closed_output()
        return int(ExitCode.OUTPUT_CLOSED)
    except jetstore.JetError as exc:
        print(f"child: {exc}", file=sys.stderr, flush=True)
        return int(ExitCode.INTERNAL)
    return 0


def _child_loop(directory: str, seed: int, first_id: int, max_seconds: float) -> None:
    instance = _open_instance(directory)
    try:
        _commit_until_killed(instance, seed, first_id, max_seconds)
    finally:
        # Never killed (the parent is gone: EPIPE on an acknowledgement, or stuck): shut
        # down cleanly rather than leave the instance to the exit hook or run forever.
        instance.close()


def _commit_until_killed(
    instance: jetstore.Instance, seed: int, first_id: int, max_seconds: float
) -> None:
    out = sys.stdout
    deadline = time.monotonic() + max_seconds
    db = instance.database(DATABASE)
    out.write(f"READY {os.getpid()}\n")
    out.flush()
    order_id = first_id
    acknowledged = 0
    while time.monotonic() < deadline:
        order = expected_order(seed, order_id)
        txn = db.transaction()
        try:
            txn.table("orders").insert(order)
            customers = txn.table("customers")
            row = customers.get(order["customer"])
            if row is None:
                raise jetstore.errors.RecordNotFound(f"no counter row for {order['customer']}")
            count = row["orders"]
            assert isinstance(count, int)
            customers.update(order["customer"], {"orders": count + 1})
            txn.commit(lazy=False)  # returns when durable: only then may we acknowledge
        except BaseException:
            txn.rollback()
            raise
        acknowledged += 1
        out.write(f"ACK {acknowledged} {order_id}\n")
        if acknowledged % STAT_EVERY == 1:
            out.write(f"STAT {json.dumps(_child_stats(instance))}\n")
        out.flush()
        order_id += 1


def _child_stats(instance: jetstore.Instance) -> dict[str, Any]:
    counters = instance.counters()
    return {
        key: counters[key]
        for key in ("log_generation", "log_rolls", "checkpoints", "commits", "checkpoint_durable")
    }


# --------------------------------------------------------------------------- parent


@dataclass
class ChildRun:
    """What the parent saw of the child: acknowledgements, last statistics, how it ended."""

    pid: int = 0
    ready: bool = False
    acknowledged: list[int] = field(default_factory=list)  # order ids, in ack order
    stats: dict[str, Any] = field(default_factory=dict)
    killed: bool = False
    kill_reason: str = ""
    seconds_to_kill: float = 0.0
    returncode: int | None = None
    stderr: str = ""
    cut_line: bool = False  # the last line had no newline (cut by the kill)
    protocol_errors: list[str] = field(default_factory=list)

    @property
    def killed_mid_stream(self) -> bool:
        """The run went as planned: ready, committing, then ended by our SIGKILL."""
        return self.ready and self.killed and self.returncode == -signal.SIGKILL


@dataclass
class Check:
    name: str
    value: object
    expected: str
    ok: bool


def _setup(directory: str, seed: int) -> int:
    """Create the database, both tables, and load the first orders; returns handles left open."""
    instance = _open_instance(directory)
    try:
        db = instance.database(DATABASE, create=True)
        db.create_table(
            "orders",
            [("id", "int"), ("customer", "text"), ("amount", "float"), ("note", "text")],
            primary_key="id",
            indexes=[("by_customer", ["customer"])],
        )
        db.create_table(
            "customers", [("customer", "text"), ("orders", "int")], primary_key="customer"
        )
        counts: Counter[str] = Counter()
        with db.transaction() as txn:  # one transaction, durable at exit
            orders = txn.table("orders")
            for order_id in range(1, INITIAL_ORDERS + 1):
                order = expected_order(seed, order_id)
                orders.insert(order)
                counts[str(order["customer"])] += 1
            customers = txn.table("customers")
            for customer in CUSTOMERS:
                customers.insert({"customer": customer, "orders": counts[customer]})
    finally:
        instance.close()
    return _handles_open(instance)


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    # A thread, not select(): portable, and the parent's loop stays a simple timed get().
    for raw in iter(stream.readline, b""):
        lines.put(raw)
    lines.put(None)


def _child_argv(directory: str, seed: int) -> list[str]:
    # A separate interpreter, not fork(): the child shares nothing with the parent but files.
    return [
        sys.executable,
        "-m",
        "jetstore.cli.demo",
        "--child",
        directory,
        "--seed",
        str(seed),
        "--first-id",
        str(INITIAL_ORDERS + 1),
    ]


def _run_child(
    directory: str,
    seed: int,
    kill_after: float,
    max_acks: int | None,
    on_ack: Callable[[int], None],
) -> ChildRun:
    run = ChildRun()
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            _child_argv(directory, seed),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr_file,
        )
        run.pid = process.pid
        try:
            assert process.stdout is not None
            lines: queue.Queue[bytes | None] = queue.Queue()
            reader = threading.Thread(
                target=_read_lines, args=(process.stdout, lines), name="demo-child-reader"
            )
            reader.daemon = True  # never keeps the CLI alive if the child hangs on to the pipe
            reader.start()
            _follow_child(process, lines, run, kill_after, max_acks, on_ack)
            run.returncode = process.wait(timeout=30)
            reader.join(timeout=10)
            # Lines written before the kill are still in the pipe: every one is a promise.
            _drain(lines, run, on_ack)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
            stderr_file.seek(0)
            run.stderr = stderr_file.read().decode("utf-8", "replace")
    return run


def _follow_child(
    process: subprocess.Popen[bytes],
    lines: queue.Queue[bytes | None],
    run: ChildRun,
    kill_after: float,
    max_acks: int | None,
    on_ack: Callable[[int], None],
) -> None:
    """Read acknowledgements until it is time to kill (or the child died by itself)."""
    started = time.monotonic()
    ready_at: float | None = None
    while True:
        now = time.monotonic()
        if ready_at is None and now - started > READY_TIMEOUT:
            run.kill_reason = f"the ready timeout ({READY_TIMEOUT:g} s)"
            break
        if ready_at is not None and now - ready_at >= kill_after:
            run.kill_reason = f"{kill_after:.2f} s"
            break
        if max_acks is not None and len(run.acknowledged) >= max_acks:
            run.kill_reason = f"{max_acks} acknowledgements"
            break
        try:
            raw = lines.get(timeout=0.02)
        except queue.Empty:
            continue
        if raw is None:  # EOF before the kill: the child died by itself
            run.returncode = process.wait()
            return
        _parse(raw, run, on_ack)
        if run.ready and ready_at is None:
            ready_at = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        run.killed = True
    run.seconds_to_kill = time.monotonic() - (ready_at if ready_at is not None else started)


def _drain(lines: queue.Queue[bytes | None], run: ChildRun, on_ack: Callable[[int], None]) -> None:
    while True:
        try:
            raw = lines.get_nowait()
        except queue.Empty:
            return
        if raw is not None:
            _parse(raw, run, on_ack)


def _parse(raw: bytes, run: ChildRun, on_ack: Callable[[int], None]) -> None:
    if not raw.endswith(b"\n"):
        # Written in part when the kill came: not an acknowledgement, but its commit may be
        # durable, so one more unacknowledged survivor is allowed (see MAX_UNACKNOWLEDGED).
        run.cut_line = b"ACK".startswith(raw[:3])
        return
    text = raw.decode("utf-8", "replace").strip()
    kind, _, rest = text.partition(" ")
    try:
        if kind == "ACK":
            number, order_id = (int(part) for part in rest.split())
            if number != len(run.acknowledged) + 1:
                run.protocol_errors.append(f"ACK {number} after {len(run.acknowledged)} acks")
            run.acknowledged.append(order_id)
            on_ack(len(run.acknowledged))
        elif kind == "STAT":
            run.stats = json.loads(rest)
        elif kind == "READY":
            run.ready = True
        else:
            run.protocol_errors.append(f"unexpected line from the child: {text[:80]!r}")
    except ValueError:
        run.protocol_errors.append(f"malformed line from the child: {text[:80]!r}")


@dataclass
class Verification:
    replayed: int = 0
    recovery_start: str | None = None
    torn_tail: str | None = None
    recovery_notes: list[str] = field(default_factory=list)
    recovery_seconds: float = 0.0
    found: int = 0
    missing: list[int] = field(default_factory=list)
    wrong_content: list[int] = field(default_factory=list)
    orders_total: int = 0
    unacknowledged: list[int] = field(default_factory=list)
    gaps: int = 0
    partial: dict[str, dict[str, int]] = field(default_factory=dict)
    index_mismatches: dict[str, dict[str, int]] = field(default_factory=dict)
    log_generation: int = 0
    handles_after_close: int = 0


def _verify(
    directory: str, seed: int, acknowledged: Sequence[int], progress: Progress
) -> Verification:
    first_child_id = INITIAL_ORDERS + 1
    result = Verification()
    started = time.monotonic()
    instance = _open_instance(directory)  # soft recovery runs here
    result.recovery_seconds = time.monotonic() - started
    try:
        outcome = instance.recovery
        if outcome is not None:
            result.replayed = outcome.replayed
            result.recovery_start = str(outcome.start) if outcome.start is not None else None
            result.torn_tail = str(outcome.torn_tail) if outcome.torn_tail is not None else None
            result.recovery_notes = list(outcome.notes)
        result.log_generation = int(instance.counters()["log_generation"])
        db = instance.database(DATABASE)
        acked = set(acknowledged)
        with db.transaction() as txn:  # reads only: commits nothing
            orders = txn.table("orders")
            task = progress.add_task("Checking acknowledged orders", total=len(acknowledged))
            for done, order_id in enumerate(acknowledged, 1):
                row = orders.get(order_id)
                if row is None:
                    result.missing.append(order_id)
                elif row != expected_order(seed, order_id):
                    result.wrong_content.append(order_id)
                if done % 256 == 0 or done == len(acknowledged):
                    progress.update(task, completed=done)

            task = progress.add_task("Checking counters and index", total=len(CUSTOMERS) + 1)
            by_key: Counter[str] = Counter()
            child_ids: list[int] = []
            for row in orders.scan():
                by_key[str(row["customer"])] += 1
                row_id = row["id"]
                assert isinstance(row_id, int)
                if row_id >= first_child_id:
                    child_ids.append(row_id)
                    if row_id not in acked:
                        result.unacknowledged.append(row_id)
                        if row != expected_order(seed, row_id):
                            result.wrong_content.append(row_id)
            result.orders_total = sum(by_key.values())
            progress.advance(task)
            counters = {str(r["customer"]): r["orders"] for r in txn.table("customers").scan()}
            for customer in CUSTOMERS:
                # Text keys sort byte-wise: every key starting with `customer` and nothing
                # else lies in [customer, customer + "\0").
                through_index = sum(
                    1
                    for _ in orders.scan(
                        index="by_customer", start=(customer,), stop=(customer + "\x00",)
                    )
                )
                counter = counters.get(customer)
                if counter != by_key[customer]:
                    result.partial[customer] = {
                        "counter": -1 if not isinstance(counter, int) else counter,
                        "orders": by_key[customer],
                    }
                if through_index != by_key[customer]:
                    result.index_mismatches[customer] = {
                        "index": through_index,
                        "orders": by_key[customer],
                    }
                progress.advance(task)
        result.found = len(acknowledged) - len(result.missing)
        # Commits become durable in log order, so the child's orders present must be
        # first_child_id, first_child_id + 1, ... without a hole.
        if child_ids:
            result.gaps = (max(child_ids) - first_child_id + 1) - len(child_ids)
    finally:
        instance.close()
    result.handles_after_close = _handles_open(instance)
    return result


def _checks(run: ChildRun, found: Verification, setup_handles: int) -> list[Check]:
    allowed = MAX_UNACKNOWLEDGED + (1 if run.cut_line else 0)
    if run.killed_mid_stream:
        child_value = f"SIGKILL after {run.seconds_to_kill:.2f} s"
    elif not run.ready:
        child_value = f"never ready ({run.kill_reason or f'exit code {run.returncode}'})"
    else:
        child_value = f"exit code {run.returncode}"
    return [
        Check("child killed mid-stream", child_value, "SIGKILL", run.killed_mid_stream),
        Check("acknowledged commits", len(run.acknowledged), "> 0", len(run.acknowledged) > 0),
        Check(
            "acknowledged orders found",
            found.found,
            str(len(run.acknowledged)),
            found.found == len(run.acknowledged),
        ),
        Check("missing", len(found.missing), "0", not found.missing),
        Check("wrong content", len(found.wrong_content), "0", not found.wrong_content),
        Check("partial transactions", len(found.partial), "0", not found.partial),
        Check("index mismatches", len(found.index_mismatches), "0", not found.index_mismatches),
        Check("gaps in commit order", found.gaps, "0", found.gaps == 0),
        Check(
            "committed, not acknowledged",
            len(found.unacknowledged),
            f"<= {allowed}",
            len(found.unacknowledged) <= allowed,
        ),
        Check("protocol errors", len(run.protocol_errors), "0", not run.protocol_errors),
        Check(
            "handles open after close",
            found.handles_after_close + setup_handles,
            "0",
            found.handles_after_close + setup_handles == 0,
        ),
    ]


def run_demo(
    directory: str,
    *,
    seed: int,
    kill_after: float,
    max_acks: int | None,
    console: Console,
    show_progress: bool,
) -> tuple[bool, dict[str, Any]]:
    """The whole demo in `directory` (must be empty or absent); returns (ok, JSON result)."""
    started = time.monotonic()
    say = console.print if show_progress else _quiet
    say(Text.assemble(("jetstore demo", "bold"), f"  instance {directory}  seed {seed}"))
    setup_handles = _setup(directory, seed)
    say(f"  created tables orders (index by_customer) and customers in database {DATABASE!r}")
    say(f"  loaded {INITIAL_ORDERS} orders in one transaction")

    with _progress(console, show_progress, bar=False) as progress:
        task = progress.add_task("Child committing durable transactions", total=None)
        run = _run_child(
            directory,
            seed,
            kill_after,
            max_acks,
            lambda n: progress.update(task, completed=n) if n % 64 == 0 else None,
        )
        progress.update(task, completed=len(run.acknowledged))
    if run.killed:
        say(f"  SIGKILL sent to child {run.pid} after {run.kill_reason}")
        say(f"  acknowledged (durable) commits: {len(run.acknowledged)}")
    else:
        say(Text(f"  the child {run.pid} ended by itself (exit code {run.returncode})", "red"))

    with _progress(console, show_progress, bar=True) as progress:
        found = _verify(directory, seed, run.acknowledged, progress)
    say(
        f"  reopened: recovery replayed {found.replayed} record(s) "
        f"in {found.recovery_seconds * 1000:.0f} ms"
    )

    checks = _checks(run, found, setup_handles)
    ok = all(check.ok for check in checks)
    result: dict[str, Any] = {
        "directory": directory,
        "seed": seed,
        "kill_after": round(kill_after, 3),
        "max_acks": max_acks,
        "child": {
            "pid": run.pid,
            "ready": run.ready,
            "killed": run.killed,
            "kill_reason": run.kill_reason,
            "seconds_to_kill": round(run.seconds_to_kill, 3),
            "returncode": run.returncode,
            "stderr": "" if run.killed_mid_stream else run.stderr[-4000:],
            "protocol_errors": run.protocol_errors[:20],
        },
        "acknowledged": len(run.acknowledged),
        "records_found": found.found,
        "missing": len(found.missing),
        "missing_ids": found.missing[:100],
        "wrong_content": len(found.wrong_content),
        "wrong_content_ids": found.wrong_content[:100],
        "partial": len(found.partial),
        "partial_customers": found.partial,
        "index_mismatches": found.index_mismatches,
        "gaps": found.gaps,
        "unacknowledged_committed": len(found.unacknowledged),
        "orders_total": found.orders_total,
        "log_generations": found.log_generation,
        "log_rolls": run.stats.get("log_rolls", 0),
        "checkpoints": run.stats.get("checkpoints", 0),
        "recovery": {
            "replayed": found.replayed,
            "start": found.recovery_start,
            "torn_tail": found.torn_tail,
            "seconds": round(found.recovery_seconds, 3),
            "notes": found.recovery_notes,
        },
        "handles_after_close": found.handles_after_close + setup_handles,
        "seconds": round(time.monotonic() - started, 3),
        "checks": [
            {"name": c.name, "value": c.value, "expected": c.expected, "ok": c.ok} for c in checks
        ],
    }
    if show_progress:
        _print_summary(console, result, checks, run)
    return ok, result


def _quiet(*_args: object, **_kwargs: object) -> None:
    return None


@contextlib.contextmanager
def _progress(console: Console, enabled: bool, *, bar: bool) -> Iterator[Progress]:
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if bar:
        columns += [BarColumn(), MofNCompleteColumn()]
    else:
        columns += [TextColumn("[bold]{task.completed}[/] acknowledged")]
    columns.append(TimeElapsedColumn())
    # disable=True still hands out a working Progress, so the code paths stay the same.
    with Progress(*columns, console=console, disable=not enabled) as progress:
        yield progress


def _print_summary(
    console: Console, result: dict[str, Any], checks: list[Check], run: ChildRun
) -> None:
    facts = Table(title="Crash and recovery", show_header=False, title_justify="left")
    facts.add_column(style="bold")
    facts.add_column(justify="right")
    facts.add_row("orders after recovery", str(result["orders_total"]))
    facts.add_row("log generations", str(result["log_generations"]))
    facts.add_row("log rolls (child)", str(result["log_rolls"]))
    facts.add_row("checkpoints (child)", str(result["checkpoints"]))
    facts.add_row("records replayed by recovery", str(result["recovery"]["replayed"]))
    facts.add_row("recovery started at", str(result["recovery"]["start"]))
    facts.add_row("torn log tail", str(result["recovery"]["torn_tail"] or "none"))
    facts.add_row("demo time", f"{result['seconds']:.1f} s")
    console.print(facts)

    table = Table(title="Checks", title_justify="left")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    table.add_column("", justify="center")
    for check in checks:
        mark = Text("ok", "green") if check.ok else Text("FAILED", "bold red")
        table.add_row(check.name, Text(str(check.value)), check.expected, mark)
    console.print(table)

    if not run.killed_mid_stream and run.stderr.strip():
        console.print(Text("child stderr:", "bold red"))
        console.print(Text(run.stderr.strip()[-4000:]))
    failed = [c.name for c in checks if not c.ok]
    if failed:
        console.print(Text(f"{len(failed)} check(s) failed: {', '.join(failed)}", "bold red"))
    else:
        console.print(
            Text(
                "Every acknowledged transaction survived SIGKILL, and nothing partial did.",
                "bold green",
            )
        )


# --------------------------------------------------------------------------- command


class _Seconds(click.FloatRange):
    """click's FloatRange, NaN refused: NaN compares false with both bounds, so it passed, and
    the demo never killed its child ("now - ready >= nan" is never true)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds (0 < x <= 60)", param, ctx)
        return seconds


@click.command(
    "demo",
    short_help="Crash a committing process with SIGKILL and verify recovery.",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Instance directory (must be empty or absent). Kept afterwards. "
    "Default: a temporary directory, removed at the end.",
)
@click.option(
    "--transactions",
    "max_acks",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Kill the child after N acknowledged commits (if the delay has not passed first).",
)
@click.option(
    "--kill-after",
    type=_Seconds(min=0.0, min_open=True, max=60.0),
    default=None,
    metavar="SECONDS",
    help="Kill the child this long after it is ready. Default: random in 1.5-2.5 s.",
)
@click.option("--seed", type=int, default=None, help="Seed for the order contents and the delay.")
@click.option("--keep", is_flag=True, help="Keep the temporary directory.")
@json_option
@command_errors("demo")
def demo_command(
    directory: str | None,
    max_acks: int | None,
    kill_after: float | None,
    seed: int | None,
    keep: bool,
    as_json: bool,
) -> None:
    """Commit from a child process, SIGKILL it mid-stream, reopen, and check every
    acknowledged transaction survived and no partial one is visible.

    Exits 0 when every check passed, 1 otherwise.
    """
    if seed is None:
        seed = random.SystemRandom().randrange(1, 1 << 31)
    if kill_after is None:
        kill_after = random.Random(seed).uniform(*DEFAULT_KILL_AFTER)
    temporary = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="jetstore-demo-")
    else:
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and os.listdir(directory):
            code = report_usage(
                f"--dir {directory} is not empty; the demo creates a new instance there",
                command="demo",
                as_json=as_json,
            )
            raise click.exceptions.Exit(int(code))
    console = stdout_console()
    ok = False
    try:
        ok, result = run_demo(
            directory,
            seed=seed,
            kill_after=kill_after,
            max_acks=max_acks,
            console=console,
            show_progress=not as_json,
        )
    finally:
        # A failed run keeps its files: they are the evidence.
        if temporary and ok and not keep:
            with contextlib.suppress(JetError):
                FileSystem().remove_tree(directory)
        elif not as_json:
            console.print(f"  files kept in {directory}")
    result["kept"] = not (temporary and ok and not keep)
    finish("demo", as_json=as_json, ok=ok, result=result)


if __name__ == "__main__":
    sys.exit(child_main())
